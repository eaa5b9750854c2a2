//! The roster: the organisation's members and their roles, as one aggregate.
//!
//! Members live in one aggregate (id [`ROSTER_ID`]) rather than one aggregate each because the rule
//! "the last admin can be neither demoted nor removed" spans every member: inside one aggregate it is checked
//! and committed atomically, and two admins demoting each other at once cannot both succeed (one gets a conflict).
//! Roster changes are rare admin actions, so the single stream is no bottleneck.

mod command;
mod error;
mod event;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use command::RosterCommand;
pub use error::RosterError;
pub use event::RosterEvent;

use crate::Email;

/// The id of the organisation's single roster aggregate.
pub const ROSTER_ID: &str = "org";

/// What a member may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages the organisation: members, blueprints, approvals, firewall, settings.
    Admin,
    /// A builder: creates workspaces and asks to publish them.
    Member,
    /// Reads and verifies history; changes nothing.
    Auditor,
}

impl Role {
    /// The stable lower-case name used in events, tokens and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }
}

/// Whether an invited member has signed in yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberStatus {
    /// Invited; has not signed in.
    Pending,
    /// Has signed in at least once.
    Active,
}

/// One member as the roster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's role.
    pub role: Role,
    /// Pending until first sign-in.
    pub status: MemberStatus,
    /// The roster version (sequence number) of the event that last changed this member; what an ETag names.
    pub version: u64,
}

/// The organisation's members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    members: BTreeMap<Email, Member>,
    /// How many events have been applied: the aggregate's version.
    version: u64,
}

impl Roster {
    /// The member with this address, if any.
    pub fn member(&self, email: &Email) -> Option<&Member> {
        self.members.get(email)
    }

    /// How many members hold the admin role (pending or active).
    pub fn admin_count(&self) -> usize {
        self.members.values().filter(|member| member.role == Role::Admin).count()
    }

    fn require(&self, email: &Email) -> Result<&Member, RosterError> {
        self.members.get(email).ok_or_else(|| RosterError::UnknownMember(email.clone()))
    }

    fn check_version(&self, email: &Email, if_version: Option<u64>) -> Result<(), RosterError> {
        let actual = self.require(email)?.version;
        match if_version {
            Some(expected) if expected != actual => {
                Err(RosterError::StaleMember { email: email.clone(), expected, actual })
            }
            _ => Ok(()),
        }
    }

    fn is_last_admin(&self, email: &Email) -> bool {
        self.members.get(email).is_some_and(|member| member.role == Role::Admin) && self.admin_count() == 1
    }
}

impl Aggregate for Roster {
    const TYPE: &'static str = "roster";
    type Command = RosterCommand;
    type Event = RosterEvent;
    type Error = RosterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            RosterCommand::Bootstrap { email } => {
                // Idempotent: a restart with the same configured admin records nothing.
                if self.members.get(&email).is_some_and(|member| member.role == Role::Admin) {
                    return Ok(());
                }
                let event = match self.members.get(&email) {
                    Some(member) => {
                        RosterEvent::MemberRoleChanged { email, from: member.role, to: Role::Admin, changed_by: None }
                    }
                    None => RosterEvent::MemberInvited { email, role: Role::Admin, invited_by: None },
                };
                sink.write(event, self).await;
            }
            RosterCommand::Invite { email, role, invited_by } => {
                if self.members.contains_key(&email) {
                    return Err(RosterError::AlreadyMember(email));
                }
                sink.write(RosterEvent::MemberInvited { email, role, invited_by: Some(invited_by) }, self).await;
            }
            RosterCommand::SignIn { email } => {
                if self.require(&email)?.status == MemberStatus::Pending {
                    sink.write(RosterEvent::MemberActivated { email }, self).await;
                }
            }
            RosterCommand::ChangeRole { email, role, changed_by, if_version } => {
                self.check_version(&email, if_version)?;
                let current = self.require(&email)?.role;
                if current == role {
                    return Err(RosterError::RoleUnchanged { email, role });
                }
                if self.is_last_admin(&email) {
                    return Err(RosterError::LastAdmin(email));
                }
                let event =
                    RosterEvent::MemberRoleChanged { email, from: current, to: role, changed_by: Some(changed_by) };
                sink.write(event, self).await;
            }
            RosterCommand::Remove { email, removed_by, if_version } => {
                self.check_version(&email, if_version)?;
                if self.is_last_admin(&email) {
                    return Err(RosterError::LastAdmin(email));
                }
                sink.write(RosterEvent::MemberRemoved { email, removed_by }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        let version = self.version;
        match event {
            RosterEvent::MemberInvited { email, role, .. } => {
                self.members.insert(email, Member { role, status: MemberStatus::Pending, version });
            }
            RosterEvent::MemberActivated { email } => {
                if let Some(member) = self.members.get_mut(&email) {
                    member.status = MemberStatus::Active;
                    member.version = version;
                }
            }
            RosterEvent::MemberRoleChanged { email, to, .. } => {
                if let Some(member) = self.members.get_mut(&email) {
                    member.role = to;
                    member.version = version;
                }
            }
            RosterEvent::MemberRemoved { email, .. } => {
                self.members.remove(&email);
            }
        }
    }
}
