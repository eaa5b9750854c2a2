//! Blueprints: the templates workspaces are made from, their state, who may use them (ACL), how their workspaces
//! look, and the AI providers their workspaces use (shared/spec/portal.md §2.3–2.5, §2.17).
//!
//! This commit holds the values and pure rules; the aggregate follows.
//!
//! One aggregate per blueprint, its id the blueprint's key (ADR 0017). No rule spans blueprints except that keys are
//! unique, and the event store gives that for free: an aggregate id names one stream, so registering a taken key is
//! refused on the stream's state, and two admins registering one key at once both append sequence 1, of which the
//! unique `(aggregate_type, aggregate_id, sequence)` key lets one commit (the other gets a conflict). Admin edits of
//! different blueprints never contend, and a catalog or launch check loads one small stream.
//!
//! Lifecycle: registered in `testing` → `enabled` / `disabled` / `testing`, any to any, each change an event →
//! removed (a tombstone: every later command is refused, and the key is never registered again, because workspaces,
//! publish requests and trust rules keep naming it).

mod acl;
mod catalog;
mod template;
pub mod values;

use serde::{Deserialize, Serialize};

pub use acl::{Acl, AclRule, EmailDomain, MAX_ACL_RULES};
pub use catalog::{catalog_entry, CatalogEntry};
pub use template::{sanitise, EmptyName, NameTemplate, TemplateValues, MAX_NAME_CHARS, PLACEHOLDERS};
pub use values::{
    AiAuthMode, AiProvider, AiProviderSettings, ApiKey, ApiKeyChange, BlueprintDetails, BlueprintSource, ClusterName,
    Description, DisplayName, EndpointUrl, GitBranch, GitRepository, LastFour, LocalSource, ModelName, NamingTemplates,
    Port, ProjectMode, SealedSecret, ServiceName, Shell, ShellCommand, Tab, TabName, WorkspaceConfig,
};

pub use crate::values::BlueprintKey;
use crate::values::InvalidValue;

/// Who may launch a blueprint's workspaces (see [`catalog_entry`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlueprintState {
    /// Listed as "coming soon"; only admins launch it. Where every blueprint starts.
    #[default]
    Testing,
    /// Listed and launchable for everyone the ACL allows.
    Enabled,
    /// Not listed; nobody launches it. Existing workspaces are unaffected.
    Disabled,
}

impl BlueprintState {
    /// The stable lower-case name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BlueprintState::Testing => "testing",
            BlueprintState::Enabled => "enabled",
            BlueprintState::Disabled => "disabled",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "testing" => Ok(BlueprintState::Testing),
            "enabled" => Ok(BlueprintState::Enabled),
            "disabled" => Ok(BlueprintState::Disabled),
            _ => Err(InvalidValue::new("state", "one of testing, enabled and disabled")),
        }
    }
}
