//! What happened to a blueprint. **API Boundary:** these are stored; see the crate docs.
//!
//! Every event names the admin (`by`). Fields added after an event type was first stored carry serde defaults, so
//! older events still read; unknown fields are ignored, so events of a newer version read too.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::acl::{Acl, AclRule};
use super::values::{AiProvider, AiProviderSettings, BlueprintDetails, SealedSecret, WorkspaceConfig};
use super::BlueprintState;
use crate::values::BlueprintKey;
use crate::Email;

/// A change to one blueprint.
// Events are built once and moved; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlueprintEvent {
    /// An admin registered the blueprint. Its ACL is open, its layout the default, it has no AI provider.
    BlueprintRegistered {
        /// Its key (the aggregate id).
        key: BlueprintKey,
        /// The General tab.
        details: BlueprintDetails,
        /// The state it started in (testing; stated so that the event keeps its meaning if that default changes).
        #[serde(default)]
        state: BlueprintState,
        /// The admin.
        by: Email,
    },
    /// An admin replaced the General tab.
    BlueprintDetailsUpdated {
        /// The new details.
        details: BlueprintDetails,
        /// The admin.
        by: Email,
    },
    /// An admin changed the state.
    BlueprintStateChanged {
        /// Before.
        from: BlueprintState,
        /// After.
        to: BlueprintState,
        /// The admin.
        by: Email,
    },
    /// An admin added an access rule.
    BlueprintAclRuleAdded {
        /// The rule.
        rule: AclRule,
        /// The admin.
        by: Email,
    },
    /// An admin removed an access rule.
    BlueprintAclRuleRemoved {
        /// The rule.
        rule: AclRule,
        /// The admin.
        by: Email,
    },
    /// An admin replaced every access rule (an empty list: open to every member).
    BlueprintAclReplaced {
        /// The rules now.
        acl: Acl,
        /// The admin.
        by: Email,
    },
    /// An admin replaced the workspace layout.
    BlueprintWorkspaceConfigured {
        /// The layout now.
        workspace: WorkspaceConfig,
        /// The admin.
        by: Email,
    },
    /// An admin set one AI provider's settings. They are the whole of them, the stored key included, sealed (the
    /// same ciphertext again when the admin kept the key): no plaintext key ever enters an event.
    BlueprintAiProviderSet {
        /// The provider's settings now.
        settings: AiProviderSettings,
        /// The admin.
        by: Email,
    },
    /// An admin cleared one AI provider, its key included.
    BlueprintAiProviderCleared {
        /// The provider.
        provider: AiProvider,
        /// The admin.
        by: Email,
    },
    /// A key rotation re-encrypted a provider's key under the new primary key; the key itself did not change.
    BlueprintAiKeyRewrapped {
        /// The provider.
        provider: AiProvider,
        /// The new ciphertext.
        sealed: SealedSecret,
        /// The admin who asked; `None` for the command line.
        #[serde(default)]
        by: Option<Email>,
    },
    /// An admin removed the blueprint. Final.
    BlueprintRemoved {
        /// The admin.
        by: Email,
    },
}

impl DomainEvent for BlueprintEvent {
    fn event_type(&self) -> String {
        match self {
            BlueprintEvent::BlueprintRegistered { .. } => "BlueprintRegistered",
            BlueprintEvent::BlueprintDetailsUpdated { .. } => "BlueprintDetailsUpdated",
            BlueprintEvent::BlueprintStateChanged { .. } => "BlueprintStateChanged",
            BlueprintEvent::BlueprintAclRuleAdded { .. } => "BlueprintAclRuleAdded",
            BlueprintEvent::BlueprintAclRuleRemoved { .. } => "BlueprintAclRuleRemoved",
            BlueprintEvent::BlueprintAclReplaced { .. } => "BlueprintAclReplaced",
            BlueprintEvent::BlueprintWorkspaceConfigured { .. } => "BlueprintWorkspaceConfigured",
            BlueprintEvent::BlueprintAiProviderSet { .. } => "BlueprintAiProviderSet",
            BlueprintEvent::BlueprintAiProviderCleared { .. } => "BlueprintAiProviderCleared",
            BlueprintEvent::BlueprintAiKeyRewrapped { .. } => "BlueprintAiKeyRewrapped",
            BlueprintEvent::BlueprintRemoved { .. } => "BlueprintRemoved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}
