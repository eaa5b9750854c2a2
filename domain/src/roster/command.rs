//! What can be asked of the roster.

use super::Role;
use crate::Email;

/// A request to change the roster. The acting admin is part of the command so the events can name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterCommand {
    /// Make the configured bootstrap admin an admin; does nothing when they already are one.
    Bootstrap {
        /// The configured address.
        email: Email,
    },
    /// Invite someone; they stay pending until their first sign-in.
    Invite {
        /// Who is invited.
        email: Email,
        /// The role they will hold.
        role: Role,
        /// The admin inviting them.
        invited_by: Email,
    },
    /// Record a member's sign-in; the first one activates a pending member.
    SignIn {
        /// Who signed in.
        email: Email,
    },
    /// Give a member another role.
    ChangeRole {
        /// Whose role changes.
        email: Email,
        /// The new role.
        role: Role,
        /// The admin making the change.
        changed_by: Email,
        /// Only if the member is still at this version (an `If-Match`); `None` changes whatever the version.
        if_version: Option<u64>,
    },
    /// Remove a member.
    Remove {
        /// Who is removed.
        email: Email,
        /// The admin removing them.
        removed_by: Email,
        /// Only if the member is still at this version (an `If-Match`); `None` removes whatever the version.
        if_version: Option<u64>,
    },
}
