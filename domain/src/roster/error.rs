//! Why the roster refuses a command.

use super::Role;
use crate::Email;

/// A roster rule that a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The address is already on the roster.
    #[error("{0} is already a member")]
    AlreadyMember(Email),
    /// The address is not on the roster.
    #[error("{0} is not a member")]
    UnknownMember(Email),
    /// The member already holds that role.
    #[error("{email} already has the role {}", role.as_str())]
    RoleUnchanged {
        /// The member.
        email: Email,
        /// The role they hold.
        role: Role,
    },
    /// The member changed since the version the caller named.
    #[error("{email} is at version {actual}, not {expected}")]
    StaleMember {
        /// The member.
        email: Email,
        /// The version the caller named.
        expected: u64,
        /// The member's version.
        actual: u64,
    },
    /// The organisation would be left without an admin.
    #[error("{0} is the last admin and can be neither demoted nor removed")]
    LastAdmin(Email),
}
