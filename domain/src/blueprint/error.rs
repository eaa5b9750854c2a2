//! Why a blueprint refuses a command.

use super::acl::AclRule;
use super::values::AiProvider;
use super::BlueprintState;
use crate::values::{BlueprintKey, InvalidValue};

/// A blueprint rule that a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlueprintError {
    /// No blueprint is registered under this key (the aggregate has no events).
    #[error("no such blueprint")]
    NotRegistered,
    /// A blueprint is registered under this key.
    #[error("blueprint {0} is already registered")]
    AlreadyRegistered(BlueprintKey),
    /// The key belonged to a blueprint that was removed; keys are never reused.
    #[error("blueprint key {0} belonged to a removed blueprint and cannot be registered again")]
    KeyRetired(BlueprintKey),
    /// The blueprint was removed: it takes no more commands.
    #[error("blueprint {0} was removed")]
    Removed(BlueprintKey),
    /// The blueprint changed since the version the caller named.
    #[error("blueprint {key} is at version {actual}, not {expected}")]
    Stale {
        /// The blueprint.
        key: BlueprintKey,
        /// The version the caller named.
        expected: u64,
        /// The blueprint's version.
        actual: u64,
    },
    /// The blueprint is in that state already.
    #[error("blueprint {key} is {} already", state.as_str())]
    StateUnchanged {
        /// The blueprint.
        key: BlueprintKey,
        /// Its state.
        state: BlueprintState,
    },
    /// The rule is there already.
    #[error("the access rule {0} exists already")]
    DuplicateAclRule(AclRule),
    /// No such rule.
    #[error("there is no access rule {0}")]
    UnknownAclRule(AclRule),
    /// The blueprint has as many rules as it may.
    #[error("a blueprint has at most {max} access rules")]
    AclFull {
        /// The limit.
        max: usize,
    },
    /// The provider has no settings to clear.
    #[error("AI provider {0} is not configured")]
    AiProviderNotConfigured(AiProvider),
    /// The provider would be enabled with the organisation's key and there is none.
    #[error("AI provider {0} is enabled with auth mode api_key, so it needs an API key")]
    ApiKeyRequired(AiProvider),
    /// A rewrap found another ciphertext than the one it read: the key changed meanwhile.
    #[error("the API key of AI provider {0} changed since the rewrap read it")]
    RewrapSuperseded(AiProvider),
    /// A value in the command is refused (the field says which).
    #[error("{0}")]
    Invalid(InvalidValue),
}

impl BlueprintError {
    /// The field a refusal is about, for the API's `invalid_field` problems.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            BlueprintError::Invalid(invalid) => Some(invalid.field),
            BlueprintError::ApiKeyRequired(_) => Some("ai.api_key"),
            BlueprintError::AclFull { .. } => Some("acl"),
            _ => None,
        }
    }
}
