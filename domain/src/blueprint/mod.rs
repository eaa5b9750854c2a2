//! Blueprints: the templates workspaces are made from, their state, who may use them (ACL), how their workspaces
//! look, and the AI providers their workspaces use (shared/spec/portal.md §2.3–2.5, §2.17).
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
mod command;
mod error;
mod event;
mod template;
#[cfg(test)]
mod tests;
pub mod values;

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use acl::{Acl, AclRule, EmailDomain, MAX_ACL_RULES};
pub use catalog::{catalog_entry, CatalogEntry};
pub use command::BlueprintCommand;
pub use error::BlueprintError;
pub use event::BlueprintEvent;
pub use template::{
    sanitise, EmptyName, NameTemplate, TemplateValues, MAX_NAME_CHARS, MAX_TEMPLATE_CHARS, PLACEHOLDERS,
};
pub use values::{redact_url, url_secrets};
pub use values::{
    AiAuthMode, AiProvider, AiProviderSettings, ApiKey, ApiKeyChange, BlueprintDetails, BlueprintSource, ClusterName,
    Description, DisplayName, EndpointUrl, GitBranch, GitRepository, LastFour, LocalSource, ModelName, NamingTemplates,
    Port, ProjectMode, SealedSecret, ServiceName, Shell, ShellCommand, Tab, TabName, WorkspaceConfig,
};

pub use crate::values::BlueprintKey;
use crate::values::InvalidValue;
use crate::Email;

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

/// One blueprint. The default value is a key nobody registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Blueprint {
    key: Option<BlueprintKey>,
    details: Option<BlueprintDetails>,
    state: BlueprintState,
    acl: Acl,
    workspace: WorkspaceConfig,
    ai: BTreeMap<AiProvider, AiProviderSettings>,
    removed: bool,
    /// How many events have been applied: the aggregate's version, what an ETag names.
    version: u64,
}

impl Blueprint {
    /// Its key; `None` until registered.
    pub fn key(&self) -> Option<&BlueprintKey> {
        self.key.as_ref()
    }

    /// Whether it was ever registered (a removed blueprint was).
    pub fn is_registered(&self) -> bool {
        self.key.is_some()
    }

    /// Whether it was removed.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// The General tab; `None` until registered.
    pub fn details(&self) -> Option<&BlueprintDetails> {
        self.details.as_ref()
    }

    /// Its state.
    pub fn state(&self) -> BlueprintState {
        self.state
    }

    /// Its access rules.
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// The workspace layout.
    pub fn workspace(&self) -> &WorkspaceConfig {
        &self.workspace
    }

    /// The configured AI providers, in the chat's order of preference.
    pub fn ai_providers(&self) -> impl Iterator<Item = &AiProviderSettings> {
        self.ai.values()
    }

    /// One provider's settings.
    pub fn ai_provider(&self, provider: AiProvider) -> Option<&AiProviderSettings> {
        self.ai.get(&provider)
    }

    /// The provider the chat uses: the first enabled of Anthropic, OpenAI, Custom.
    pub fn chat_provider(&self) -> Option<&AiProviderSettings> {
        self.ai.values().find(|settings| settings.enabled())
    }

    /// The aggregate's version (0: never registered).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether its ACL lets `email` see and use it (state aside: that is [`Blueprint::catalog_entry`]'s).
    pub fn allows(&self, email: &Email) -> bool {
        self.acl.allows(email)
    }

    /// How it appears in `caller`'s catalog, if at all (the rule is [`catalog_entry`]).
    pub fn catalog_entry(&self, caller: &Email, is_admin: bool) -> Option<CatalogEntry> {
        if !self.is_registered() {
            return None;
        }
        catalog_entry(self.state, self.removed, &self.acl, caller, is_admin)
    }

    /// The key of a registered blueprint that takes commands, at the version the caller named if they named one.
    fn live(&self, if_version: Option<u64>) -> Result<BlueprintKey, BlueprintError> {
        let key = self.key.clone().ok_or(BlueprintError::NotRegistered)?;
        if self.removed {
            return Err(BlueprintError::Removed(key));
        }
        match if_version {
            Some(expected) if expected != self.version => {
                Err(BlueprintError::Stale { key, expected, actual: self.version })
            }
            _ => Ok(key),
        }
    }
}

impl Aggregate for Blueprint {
    const TYPE: &'static str = "blueprint";
    type Command = BlueprintCommand;
    type Event = BlueprintEvent;
    type Error = BlueprintError;
    type Services = ();

    // Every check comes before the first write: a refused command leaves the aggregate as it was.
    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            BlueprintCommand::Register { key, details, by } => {
                if let Some(existing) = &self.key {
                    return Err(if self.removed {
                        BlueprintError::KeyRetired(existing.clone())
                    } else {
                        BlueprintError::AlreadyRegistered(existing.clone())
                    });
                }
                BlueprintKey::parse_new(key.as_str()).map_err(BlueprintError::Invalid)?;
                BlueprintEvent::BlueprintRegistered { key, details, state: BlueprintState::Testing, by }
            }
            BlueprintCommand::UpdateDetails { details, by, if_version } => {
                self.live(if_version)?;
                if self.details.as_ref() == Some(&details) {
                    return Ok(());
                }
                BlueprintEvent::BlueprintDetailsUpdated { details, by }
            }
            BlueprintCommand::SetState { state, by, if_version } => {
                let key = self.live(if_version)?;
                if self.state == state {
                    return Err(BlueprintError::StateUnchanged { key, state });
                }
                BlueprintEvent::BlueprintStateChanged { from: self.state, to: state, by }
            }
            BlueprintCommand::AddAclRule { rule, by, if_version } => {
                self.live(if_version)?;
                if self.acl.contains(&rule) {
                    return Err(BlueprintError::DuplicateAclRule(rule));
                }
                if self.acl.rules().len() >= MAX_ACL_RULES {
                    return Err(BlueprintError::AclFull { max: MAX_ACL_RULES });
                }
                BlueprintEvent::BlueprintAclRuleAdded { rule, by }
            }
            BlueprintCommand::RemoveAclRule { rule, by, if_version } => {
                self.live(if_version)?;
                if !self.acl.contains(&rule) {
                    return Err(BlueprintError::UnknownAclRule(rule));
                }
                BlueprintEvent::BlueprintAclRuleRemoved { rule, by }
            }
            BlueprintCommand::ReplaceAcl { acl, by, if_version } => {
                self.live(if_version)?;
                if self.acl == acl {
                    return Ok(());
                }
                BlueprintEvent::BlueprintAclReplaced { acl, by }
            }
            BlueprintCommand::ConfigureWorkspace { workspace, by, if_version } => {
                self.live(if_version)?;
                if self.workspace == workspace {
                    return Ok(());
                }
                BlueprintEvent::BlueprintWorkspaceConfigured { workspace, by }
            }
            BlueprintCommand::SetAiProvider { settings, api_key, by, if_version } => {
                self.live(if_version)?;
                let provider = settings.provider();
                let current = self.ai.get(&provider);
                let api_key = match api_key {
                    ApiKeyChange::Keep => current.and_then(|stored| stored.api_key().cloned()),
                    ApiKeyChange::Replace(key) => Some(key),
                    ApiKeyChange::Remove => None,
                };
                let settings = settings.with_api_key(api_key);
                if settings.needs_api_key() && settings.api_key().is_none() {
                    return Err(BlueprintError::ApiKeyRequired(provider));
                }
                if current == Some(&settings) {
                    return Ok(());
                }
                BlueprintEvent::BlueprintAiProviderSet { settings, by }
            }
            BlueprintCommand::ClearAiProvider { provider, by, if_version } => {
                self.live(if_version)?;
                // A provider is a fixed slot: clearing an empty one is done already (records nothing).
                if !self.ai.contains_key(&provider) {
                    return Ok(());
                }
                BlueprintEvent::BlueprintAiProviderCleared { provider, by }
            }
            BlueprintCommand::RewrapAiKey { provider, from, to, by } => {
                self.live(None)?;
                let current = self.ai.get(&provider).ok_or(BlueprintError::AiProviderNotConfigured(provider))?;
                if current.api_key().map(|key| &key.sealed) != Some(&from) {
                    return Err(BlueprintError::RewrapSuperseded(provider));
                }
                BlueprintEvent::BlueprintAiKeyRewrapped { provider, sealed: to, by }
            }
            BlueprintCommand::Remove { by, if_version } => {
                self.live(if_version)?;
                BlueprintEvent::BlueprintRemoved { by }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            BlueprintEvent::BlueprintRegistered { key, details, state, .. } => {
                self.key = Some(key);
                self.details = Some(details);
                self.state = state;
            }
            BlueprintEvent::BlueprintDetailsUpdated { details, .. } => self.details = Some(details),
            BlueprintEvent::BlueprintStateChanged { to, .. } => self.state = to,
            BlueprintEvent::BlueprintAclRuleAdded { rule, .. } => {
                if !self.acl.contains(&rule) {
                    self.acl.push(rule);
                }
            }
            BlueprintEvent::BlueprintAclRuleRemoved { rule, .. } => self.acl.remove(&rule),
            BlueprintEvent::BlueprintAclReplaced { acl, .. } => self.acl = acl,
            BlueprintEvent::BlueprintWorkspaceConfigured { workspace, .. } => self.workspace = workspace,
            BlueprintEvent::BlueprintAiProviderSet { settings, .. } => {
                self.ai.insert(settings.provider(), settings);
            }
            BlueprintEvent::BlueprintAiProviderCleared { provider, .. } => {
                self.ai.remove(&provider);
            }
            BlueprintEvent::BlueprintAiKeyRewrapped { provider, sealed, .. } => {
                if let Some(settings) = self.ai.remove(&provider) {
                    let api_key = settings.api_key().map(|key| ApiKey { sealed, last_four: key.last_four.clone() });
                    self.ai.insert(provider, settings.with_api_key(api_key));
                }
            }
            BlueprintEvent::BlueprintRemoved { .. } => self.removed = true,
        }
    }
}
