//! What can be asked of a blueprint. Every command names the acting admin, and every command but `Register` may
//! carry the version the admin last saw (`If-Match`).

use super::acl::{Acl, AclRule};
use super::values::{AiProvider, AiProviderSettings, ApiKeyChange, BlueprintDetails, SealedSecret, WorkspaceConfig};
use super::BlueprintState;
use crate::values::BlueprintKey;
use crate::Email;

/// A request to change a blueprint. Run it on the aggregate whose id is the blueprint's key.
// A command is built once per request and moved into the aggregate; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlueprintCommand {
    /// Register a blueprint under a key never used before; it starts in testing, open to every member, with the
    /// default workspace layout and no AI provider. (No `If-Match`: registering is "if none match" by nature.)
    Register {
        /// The key: the aggregate's id (`key.as_str()`), lower case ([`BlueprintKey::parse_new`]).
        key: BlueprintKey,
        /// The General tab.
        details: BlueprintDetails,
        /// The admin.
        by: Email,
    },
    /// Replace the General tab as a whole (only new workspaces see it); the same details again record nothing.
    UpdateDetails {
        /// The new details.
        details: BlueprintDetails,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Enable, disable or set testing; the current state again is refused.
    SetState {
        /// The new state.
        state: BlueprintState,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Add one access rule.
    AddAclRule {
        /// The rule.
        rule: AclRule,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Remove one access rule.
    RemoveAclRule {
        /// The rule.
        rule: AclRule,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Replace every access rule (none: open to every member); the same list again records nothing.
    ReplaceAcl {
        /// The new rules.
        acl: Acl,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Replace the Workspace tab as a whole; the same layout again records nothing.
    ConfigureWorkspace {
        /// The new layout.
        workspace: WorkspaceConfig,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Set (or replace) one AI provider's settings; settings equal to the stored ones record nothing.
    SetAiProvider {
        /// The settings, without a key.
        settings: AiProviderSettings,
        /// What happens to the stored key.
        api_key: ApiKeyChange,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Forget one AI provider, its key included; one not configured records nothing (providers are fixed slots).
    ClearAiProvider {
        /// The provider.
        provider: AiProvider,
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
    /// Key rotation: a provider's key under the key ring's new primary key. Refused when the stored ciphertext is
    /// no longer `from` (an admin replaced the key meanwhile), so a rewrap never overwrites a newer key. No
    /// `If-Match`: the `from` check is its precondition, and a rotation must not fail because an admin edited the
    /// layout meanwhile.
    RewrapAiKey {
        /// The provider.
        provider: AiProvider,
        /// The ciphertext the rewrap read.
        from: SealedSecret,
        /// The same key under the primary key.
        to: SealedSecret,
        /// The admin who asked, or `None` for the operator's command line.
        by: Option<Email>,
    },
    /// Remove the blueprint for good: no new workspaces, every later command refused, its key never registered
    /// again. Existing workspaces keep running.
    Remove {
        /// The admin.
        by: Email,
        /// Only if the blueprint is still at this version.
        if_version: Option<u64>,
    },
}
