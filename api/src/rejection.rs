//! How each domain rejection is reported: its [`ProblemCode`] (so its status) and, for a refused value, the field.
//! `From<CommandError<E>> for Problem` (in `problem.rs`) is the one conversion every route uses.

use domain::audit_access::AuditAccessError;
use domain::blueprint::BlueprintError;
use domain::firewall::FirewallError;
use domain::org::OrgError;
use domain::portal::PortalError;
use domain::publishing::PublishingError;
use domain::relay::{AgentTokenError, SessionError, TicketError};
use domain::roster::RosterError;
use domain::tags::TagError;
use domain::trust::TrustError;
use domain::workspace::WorkspaceError;

use crate::ProblemCode;

/// A domain rejection as the API reports it. Its `Display` is the problem's `detail`, so it must be safe to show.
pub trait Rejection: std::error::Error {
    /// The code, and so the status.
    fn code(&self) -> ProblemCode;

    /// The field a refused value came from (for `invalid_field`).
    fn field(&self) -> Option<&'static str> {
        None
    }
}

impl Rejection for RosterError {
    fn code(&self) -> ProblemCode {
        match self {
            RosterError::AlreadyMember(_) => ProblemCode::AlreadyMember,
            RosterError::UnknownMember(_) => ProblemCode::NotFound,
            RosterError::RoleUnchanged { .. } => ProblemCode::RoleUnchanged,
            RosterError::LastAdmin(_) => ProblemCode::LastAdmin,
            RosterError::StaleMember { .. } => ProblemCode::StaleVersion,
        }
    }
}

impl Rejection for PublishingError {
    fn code(&self) -> ProblemCode {
        match self {
            PublishingError::UnknownRequest(_) => ProblemCode::NotFound,
            // Request ids are new UUIDs: a duplicate is a retry racing its first attempt.
            PublishingError::DuplicateRequest(_) => ProblemCode::ConcurrentModification,
            PublishingError::NotPending { .. } => ProblemCode::RequestNotPending,
            PublishingError::RequestInFlight { .. } => ProblemCode::RequestInFlight,
            PublishingError::SubdomainTaken(_) => ProblemCode::SubdomainTaken,
            PublishingError::NotWorkspaceOwner(_) => ProblemCode::NotWorkspaceOwner,
            PublishingError::NotBuilder(_) => ProblemCode::Forbidden,
            PublishingError::SelfApproval => ProblemCode::SelfApproval,
            PublishingError::AlreadyApproved(_) => ProblemCode::AlreadyReviewed,
            PublishingError::ReasonRequired => ProblemCode::InvalidField,
            PublishingError::StaleRequest { .. } => ProblemCode::StaleVersion,
            // Only the expiry sweep expires requests, and only the service's own settings make the policy: no
            // caller can cause these, so they are the service's fault.
            PublishingError::NotDue(_) | PublishingError::InvalidPolicy => ProblemCode::Internal,
            PublishingError::NotDelivering(_) | PublishingError::NotFailed { .. } => ProblemCode::DeliveryNotFailed,
            // Only the publisher records delivery steps; it treats this one as "already done".
            PublishingError::WrongDeliveryStep { .. } => ProblemCode::ConcurrentModification,
        }
    }

    fn field(&self) -> Option<&'static str> {
        matches!(self, PublishingError::ReasonRequired).then_some("reason")
    }
}

impl Rejection for TrustError {
    fn code(&self) -> ProblemCode {
        match self {
            TrustError::DuplicateRule { .. } => ProblemCode::DuplicateTrustRule,
            // Rule ids are new UUIDs: a duplicate is a retry racing its first attempt.
            TrustError::DuplicateId(_) => ProblemCode::ConcurrentModification,
            TrustError::UnknownRule(_) => ProblemCode::NotFound,
        }
    }
}

impl Rejection for AgentTokenError {
    fn code(&self) -> ProblemCode {
        match self {
            AgentTokenError::Exists => ProblemCode::ConcurrentModification,
            AgentTokenError::NotFound => ProblemCode::NotFound,
            AgentTokenError::AlreadyRevoked => ProblemCode::ConcurrentModification,
        }
    }
}

impl Rejection for TicketError {
    fn code(&self) -> ProblemCode {
        match self {
            TicketError::AlreadyIssued => ProblemCode::ConcurrentModification,
        }
    }
}

impl Rejection for SessionError {
    fn code(&self) -> ProblemCode {
        ProblemCode::ConcurrentModification
    }
}

impl Rejection for FirewallError {
    fn code(&self) -> ProblemCode {
        match self {
            FirewallError::TooManyRules => ProblemCode::InvalidField,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            FirewallError::TooManyRules => Some("rules"),
        }
    }
}

impl Rejection for AuditAccessError {
    fn code(&self) -> ProblemCode {
        // Nothing refuses a read record; were it to happen, recording failed and the read does not go ahead.
        ProblemCode::Internal
    }
}

impl Rejection for BlueprintError {
    fn code(&self) -> ProblemCode {
        match self {
            BlueprintError::NotRegistered
            | BlueprintError::UnknownAclRule(_)
            | BlueprintError::AiProviderNotConfigured(_) => ProblemCode::NotFound,
            BlueprintError::AlreadyRegistered(_) => ProblemCode::BlueprintExists,
            BlueprintError::KeyRetired(_) => ProblemCode::BlueprintKeyRetired,
            BlueprintError::Removed(_) => ProblemCode::BlueprintRemoved,
            BlueprintError::StateUnchanged { .. } => ProblemCode::StateUnchanged,
            BlueprintError::DuplicateAclRule(_) => ProblemCode::DuplicateAclRule,
            BlueprintError::Stale { .. } => ProblemCode::StaleVersion,
            BlueprintError::RewrapSuperseded(_) => ProblemCode::ConcurrentModification,
            // Sent with `null`, the route refuses it first (422); here the key was kept and there is none.
            BlueprintError::ApiKeyRequired(_) => ProblemCode::ApiKeyRequired,
            BlueprintError::Invalid(_) | BlueprintError::AclFull { .. } => ProblemCode::InvalidField,
        }
    }

    fn field(&self) -> Option<&'static str> {
        BlueprintError::field(self)
    }
}

impl Rejection for OrgError {
    fn code(&self) -> ProblemCode {
        match self {
            OrgError::NotConfigured => ProblemCode::OrgNotConfigured,
            OrgError::Stale { .. } => ProblemCode::StaleVersion,
            OrgError::CredentialNotSet(_) => ProblemCode::NotFound,
            OrgError::RewrapSuperseded(_) => ProblemCode::ConcurrentModification,
        }
    }
}

impl Rejection for PortalError {
    fn code(&self) -> ProblemCode {
        match self {
            PortalError::Stale { .. } => ProblemCode::StaleVersion,
        }
    }
}

impl Rejection for WorkspaceError {
    fn code(&self) -> ProblemCode {
        match self {
            WorkspaceError::UnknownWorkspace(_) => ProblemCode::NotFound,
            // Ids are chosen by the API at random: a duplicate is a retry racing its first attempt.
            WorkspaceError::DuplicateWorkspace(_) => ProblemCode::ConcurrentModification,
            WorkspaceError::NameTaken(_) => ProblemCode::WorkspaceNameTaken,
            WorkspaceError::QuotaExceeded { .. } => ProblemCode::QuotaExceeded,
            WorkspaceError::AlreadyRunning(_) => ProblemCode::WorkspaceRunning,
            WorkspaceError::NotRunning(_) => ProblemCode::WorkspaceNotRunning,
            // The API addresses each owner's aggregate by the owner: no caller can cause this.
            WorkspaceError::WrongOwner(_) => ProblemCode::Internal,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            WorkspaceError::NameTaken(_) => Some("name"),
            _ => None,
        }
    }
}

impl Rejection for TagError {
    fn code(&self) -> ProblemCode {
        match self {
            TagError::UnknownTag(_) => ProblemCode::NotFound,
            // Ids are chosen by the API at random: a duplicate is a retry racing its first attempt.
            TagError::DuplicateTag(_) => ProblemCode::ConcurrentModification,
            TagError::NameTaken(_) => ProblemCode::TagNameTaken,
            TagError::TooManyTags => ProblemCode::TagLimitReached,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            TagError::NameTaken(_) => Some("name"),
            _ => None,
        }
    }
}
