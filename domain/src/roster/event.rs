//! What happened to the roster. **API Boundary:** these are stored; see the crate docs.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::Role;
use crate::Email;

/// A change to the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RosterEvent {
    /// Someone was invited (or made the bootstrap admin) and is pending until first sign-in.
    MemberInvited {
        /// The invited address.
        email: Email,
        /// The role they hold.
        role: Role,
        /// The admin who invited them; `None` for the bootstrap admin from configuration.
        invited_by: Option<Email>,
    },
    /// A pending member signed in for the first time.
    MemberActivated {
        /// The member.
        email: Email,
    },
    /// A member's role changed from `from` to `to`.
    MemberRoleChanged {
        /// The member.
        email: Email,
        /// The role before.
        from: Role,
        /// The role after.
        to: Role,
        /// The admin who changed it; `None` when configuration did (bootstrap).
        changed_by: Option<Email>,
    },
    /// A member was removed.
    MemberRemoved {
        /// The former member.
        email: Email,
        /// The admin who removed them.
        removed_by: Email,
    },
}

impl DomainEvent for RosterEvent {
    fn event_type(&self) -> String {
        match self {
            RosterEvent::MemberInvited { .. } => "MemberInvited",
            RosterEvent::MemberActivated { .. } => "MemberActivated",
            RosterEvent::MemberRoleChanged { .. } => "MemberRoleChanged",
            RosterEvent::MemberRemoved { .. } => "MemberRemoved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}
