//! The terminal relay's facts: one-time tickets, agent tokens and terminal sessions.
//!
//! - [`Ticket`]: one aggregate per ticket, id = the hex SHA-256 of the ticket (the ticket itself is never stored).
//!   Redeeming is a command on it, so two racing redemptions conflict in the store and exactly one wins.
//!   A refused redemption is recorded on the aggregate of the hash presented (for an unknown ticket that aggregate
//!   holds nothing but refusals).
//! - [`AgentToken`]: one aggregate per agent token, id = the hex SHA-256 of the token.
//! - [`TerminalSession`]: one aggregate per session, id = the session's id.
//!
//! Times arrive in commands (the domain has no clock).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::Email;

/// Why a ticket redemption was refused. **API Boundary:** stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// No ticket with this hash was ever issued.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Already redeemed.
    Reused,
    /// Issued for another user, workspace or kind.
    Foreign,
}

impl RefusalReason {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unknown => "unknown",
            RefusalReason::Expired => "expired",
            RefusalReason::Reused => "reused",
            RefusalReason::Foreign => "foreign",
        }
    }
}

/// Commands on a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketCommand {
    /// Issue it.
    Issue {
        /// Hex SHA-256 of the ticket (also the aggregate id).
        ticket_hash: String,
        /// For whom.
        user: Email,
        /// For which workspace.
        workspace: String,
        /// `terminal` (or, later, `preview`).
        kind: String,
        /// Until when.
        expires_at: DateTime<Utc>,
    },
    /// Redeem it.
    Redeem {
        /// The workspace of the connection redeeming it.
        workspace: String,
        /// The kind of connection.
        kind: String,
        /// Now.
        now: DateTime<Utc>,
        /// The address of the client presenting it, when known (recorded on a refusal).
        client_ip: Option<String>,
    },
}

/// A ticket's events. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TicketEvent {
    /// A ticket was issued.
    TicketIssued {
        /// Hex SHA-256 of the ticket.
        ticket_hash: String,
        /// For whom.
        user: Email,
        /// For which workspace.
        workspace: String,
        /// Its kind.
        kind: String,
        /// Until when.
        expires_at: DateTime<Utc>,
    },
    /// It was redeemed (once).
    TicketRedeemed {
        /// The workspace.
        workspace: String,
    },
    /// A redemption was refused.
    TicketRefused {
        /// Why.
        reason: RefusalReason,
        /// The workspace the connection asked for.
        workspace: String,
        /// The address of the client that presented the ticket. Added after the first events were stored: those
        /// have no such field and read as `None` (as does a client whose address was unknown).
        #[serde(default)]
        client_ip: Option<String>,
    },
}

impl DomainEvent for TicketEvent {
    fn event_type(&self) -> String {
        match self {
            TicketEvent::TicketIssued { .. } => "TicketIssued",
            TicketEvent::TicketRedeemed { .. } => "TicketRedeemed",
            TicketEvent::TicketRefused { .. } => "TicketRefused",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why a ticket command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Issuing the same ticket twice.
    #[error("the ticket was already issued")]
    AlreadyIssued,
}

/// A one-time ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// Issued for whom (None: never issued).
    pub user: Option<Email>,
    /// Its workspace.
    pub workspace: String,
    /// Its kind.
    pub kind: String,
    /// Its expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Redeemed already.
    pub redeemed: bool,
    /// Events applied so far (the aggregate's version).
    pub version: u64,
    /// The version at which it was redeemed: a redeemer whose command committed that version won.
    pub redeemed_at: Option<u64>,
}

impl Ticket {
    /// Why a redemption would be refused now, if it would.
    pub fn refusal(&self, workspace: &str, kind: &str, now: DateTime<Utc>) -> Option<RefusalReason> {
        let Some(expires_at) = self.expires_at else { return Some(RefusalReason::Unknown) };
        if self.redeemed {
            Some(RefusalReason::Reused)
        } else if self.workspace != workspace || self.kind != kind {
            Some(RefusalReason::Foreign)
        } else if now >= expires_at {
            Some(RefusalReason::Expired)
        } else {
            None
        }
    }
}

impl Aggregate for Ticket {
    const TYPE: &'static str = "ticket";
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            TicketCommand::Issue { ticket_hash, user, workspace, kind, expires_at } => {
                if self.user.is_some() {
                    return Err(TicketError::AlreadyIssued);
                }
                sink.write(TicketEvent::TicketIssued { ticket_hash, user, workspace, kind, expires_at }, self).await;
            }
            TicketCommand::Redeem { workspace, kind, now, client_ip } => match self.refusal(&workspace, &kind, now) {
                Some(reason) => sink.write(TicketEvent::TicketRefused { reason, workspace, client_ip }, self).await,
                None => sink.write(TicketEvent::TicketRedeemed { workspace }, self).await,
            },
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            TicketEvent::TicketIssued { user, workspace, kind, expires_at, .. } => {
                self.user = Some(user);
                self.workspace = workspace;
                self.kind = kind;
                self.expires_at = Some(expires_at);
            }
            TicketEvent::TicketRedeemed { .. } => {
                self.redeemed = true;
                self.redeemed_at = Some(self.version);
            }
            TicketEvent::TicketRefused { .. } => {}
        }
    }
}

/// Commands on an agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTokenCommand {
    /// Mint it, bound to one workspace and the facts the control plane holds about it.
    Mint {
        /// A label for people.
        name: String,
        /// The only workspace an agent with this token may serve.
        workspace: String,
        /// The workspace's discovery tags (`RDE_OWNER_EMAIL`, `RDE_DISPLAY_NAME`, `BLUEPRINT_KEY`, …): what the
        /// gateway believes about the workspace, whatever its agent announces.
        tags: BTreeMap<String, String>,
        /// The admin minting it.
        by: Email,
    },
    /// Revoke it.
    Revoke {
        /// The admin revoking it.
        by: Email,
    },
}

/// An agent token's events. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentTokenEvent {
    /// Minted (its hash is the aggregate id).
    AgentTokenMinted {
        /// A label.
        name: String,
        /// By whom.
        by: Email,
        /// The workspace it is bound to. Tokens minted before tokens were bound have none (`None`) and are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        /// The workspace's discovery tags (absent in tokens minted before: empty).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        tags: BTreeMap<String, String>,
    },
    /// Revoked.
    AgentTokenRevoked {
        /// By whom.
        by: Email,
    },
}

impl DomainEvent for AgentTokenEvent {
    fn event_type(&self) -> String {
        match self {
            AgentTokenEvent::AgentTokenMinted { .. } => "AgentTokenMinted",
            AgentTokenEvent::AgentTokenRevoked { .. } => "AgentTokenRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why an agent token command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentTokenError {
    /// Minting a token twice.
    #[error("the agent token exists already")]
    Exists,
    /// Revoking a token that was never minted.
    #[error("no such agent token")]
    NotFound,
    /// Revoking twice.
    #[error("the agent token is revoked already")]
    AlreadyRevoked,
}

/// The discovery tags an agent token carries for its workspace. An agent's own announcement of one of these is
/// never believed: a token taken from one workspace must not make its holder the owner of another.
pub const RESERVED_TAGS: [&str; 4] = ["BLUEPRINT_PROJECT_ID", "BLUEPRINT_KEY", "RDE_OWNER_EMAIL", "RDE_DISPLAY_NAME"];

/// Why an agent may not connect with a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    /// Never minted, or revoked.
    #[error("the agent token is unknown or revoked")]
    Invalid,
    /// Minted before tokens were bound to a workspace: it serves none.
    #[error("the agent token is bound to no workspace (minted before tokens were bound): mint a new one")]
    Unbound,
    /// Bound to another workspace than the one announced.
    #[error("the agent token is bound to another workspace")]
    OtherWorkspace,
}

/// An agent token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentToken {
    /// Its label (None: never minted).
    pub name: Option<String>,
    /// The workspace it is bound to.
    pub workspace: Option<String>,
    /// The workspace's discovery tags.
    pub tags: BTreeMap<String, String>,
    /// Revoked.
    pub revoked: bool,
}

impl AgentToken {
    /// Whether an agent may connect with it.
    pub fn is_valid(&self) -> bool {
        self.name.is_some() && !self.revoked
    }

    /// Whether an agent announcing `workspace` may connect with it.
    pub fn admits(&self, workspace: &str) -> Result<(), AgentRefusal> {
        if !self.is_valid() {
            return Err(AgentRefusal::Invalid);
        }
        match &self.workspace {
            None => Err(AgentRefusal::Unbound),
            Some(bound) if bound != workspace => Err(AgentRefusal::OtherWorkspace),
            Some(_) => Ok(()),
        }
    }

    /// The tags a connected agent is known by: the token's discovery tags, and of the agent's own only those that
    /// are not reserved ([`RESERVED_TAGS`]).
    pub fn tags_for(&self, announced: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut tags: BTreeMap<String, String> =
            announced.into_iter().filter(|(key, _)| !RESERVED_TAGS.contains(&key.as_str())).collect();
        tags.extend(self.tags.iter().map(|(key, value)| (key.clone(), value.clone())));
        tags
    }
}

impl Aggregate for AgentToken {
    const TYPE: &'static str = "agent_token";
    type Command = AgentTokenCommand;
    type Event = AgentTokenEvent;
    type Error = AgentTokenError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            AgentTokenCommand::Mint { name, workspace, tags, by } => {
                if self.name.is_some() {
                    return Err(AgentTokenError::Exists);
                }
                let event = AgentTokenEvent::AgentTokenMinted { name, by, workspace: Some(workspace), tags };
                sink.write(event, self).await;
            }
            AgentTokenCommand::Revoke { by } => {
                if self.name.is_none() {
                    return Err(AgentTokenError::NotFound);
                }
                if self.revoked {
                    return Err(AgentTokenError::AlreadyRevoked);
                }
                sink.write(AgentTokenEvent::AgentTokenRevoked { by }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentTokenEvent::AgentTokenMinted { name, workspace, tags, .. } => {
                self.name = Some(name);
                self.workspace = workspace;
                self.tags = tags;
            }
            AgentTokenEvent::AgentTokenRevoked { .. } => self.revoked = true,
        }
    }
}

/// Why a session closed. **API Boundary:** stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The browser closed it (or the shell exited).
    ClientClosed,
    /// The agent disconnected.
    AgentLost,
    /// No traffic for the idle timeout.
    IdleTimeout,
    /// The session reached its maximum age.
    MaxAge,
    /// The gateway shut down.
    Shutdown,
    /// The IP firewall closed it.
    Firewall,
    /// Its agent's token was revoked, which disconnected the agent.
    AgentRevoked,
}

impl CloseReason {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::AgentLost => "agent_lost",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::MaxAge => "max_age",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Firewall => "firewall",
            CloseReason::AgentRevoked => "agent_revoked",
        }
    }
}

/// Commands on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// It opened.
    Open {
        /// Its id.
        session_id: String,
        /// Whose.
        user: Email,
        /// Which workspace.
        workspace: String,
        /// Which agent (its connection id).
        agent: String,
        /// The client's address.
        client_ip: String,
        /// The client's user agent.
        user_agent: String,
    },
    /// It closed.
    Close {
        /// Browser → agent bytes.
        bytes_in: u64,
        /// Agent → browser bytes.
        bytes_out: u64,
        /// How long it lasted.
        duration_ms: u64,
        /// Why.
        reason: CloseReason,
    },
}

/// A session's events. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEvent {
    /// Opened.
    SessionOpened {
        /// Its id.
        session_id: String,
        /// Whose.
        user: Email,
        /// Which workspace.
        workspace: String,
        /// Which agent.
        agent: String,
        /// The client's address.
        client_ip: String,
        /// The client's user agent.
        user_agent: String,
    },
    /// Closed.
    SessionClosed {
        /// Browser → agent bytes.
        bytes_in: u64,
        /// Agent → browser bytes.
        bytes_out: u64,
        /// How long it lasted.
        duration_ms: u64,
        /// Why.
        reason: CloseReason,
    },
}

impl DomainEvent for SessionEvent {
    fn event_type(&self) -> String {
        match self {
            SessionEvent::SessionOpened { .. } => "SessionOpened",
            SessionEvent::SessionClosed { .. } => "SessionClosed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why a session command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Opened twice.
    #[error("the session is open already")]
    AlreadyOpen,
    /// Closing a session never opened.
    #[error("the session was never opened")]
    NotOpen,
    /// Closing twice.
    #[error("the session is closed already")]
    AlreadyClosed,
}

/// A terminal session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSession {
    /// Opened.
    pub opened: bool,
    /// Closed.
    pub closed: bool,
}

impl Aggregate for TerminalSession {
    const TYPE: &'static str = "terminal_session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            SessionCommand::Open { session_id, user, workspace, agent, client_ip, user_agent } => {
                if self.opened {
                    return Err(SessionError::AlreadyOpen);
                }
                sink.write(
                    SessionEvent::SessionOpened { session_id, user, workspace, agent, client_ip, user_agent },
                    self,
                )
                .await;
            }
            SessionCommand::Close { bytes_in, bytes_out, duration_ms, reason } => {
                if !self.opened {
                    return Err(SessionError::NotOpen);
                }
                if self.closed {
                    return Err(SessionError::AlreadyClosed);
                }
                sink.write(SessionEvent::SessionClosed { bytes_in, bytes_out, duration_ms, reason }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::SessionOpened { .. } => self.opened = true,
            SessionEvent::SessionClosed { .. } => self.closed = true,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn issued(at: DateTime<Utc>) -> TicketEvent {
        TicketEvent::TicketIssued {
            ticket_hash: "ab".into(),
            user: Email::parse("ada@example.com").unwrap(),
            workspace: "ws-1".into(),
            kind: "terminal".into(),
            expires_at: at,
        }
    }

    fn redeem(workspace: &str, now: DateTime<Utc>) -> TicketCommand {
        TicketCommand::Redeem {
            workspace: workspace.into(),
            kind: "terminal".into(),
            now,
            client_ip: Some("2001:db8::7".into()),
        }
    }

    #[test]
    fn a_ticket_is_redeemed_once() {
        let expiry = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        TestFramework::<Ticket>::with(())
            .given(vec![issued(expiry)])
            .when(redeem("ws-1", now))
            .then_expect_events(vec![TicketEvent::TicketRedeemed { workspace: "ws-1".into() }]);
        TestFramework::<Ticket>::with(())
            .given(vec![issued(expiry), TicketEvent::TicketRedeemed { workspace: "ws-1".into() }])
            .when(redeem("ws-1", now))
            .then_expect_events(vec![TicketEvent::TicketRefused {
                reason: RefusalReason::Reused,
                workspace: "ws-1".into(),
                client_ip: Some("2001:db8::7".into()),
            }]);
    }

    #[test]
    fn expired_foreign_and_unknown_tickets_are_refused() {
        let expiry = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        let late = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        let refused = |reason, workspace: &str| {
            vec![TicketEvent::TicketRefused {
                reason,
                workspace: workspace.to_string(),
                client_ip: Some("2001:db8::7".into()),
            }]
        };
        TestFramework::<Ticket>::with(())
            .given(vec![issued(expiry)])
            .when(redeem("ws-1", late))
            .then_expect_events(refused(RefusalReason::Expired, "ws-1"));
        TestFramework::<Ticket>::with(())
            .given(vec![issued(expiry)])
            .when(redeem("ws-2", now))
            .then_expect_events(refused(RefusalReason::Foreign, "ws-2"));
        TestFramework::<Ticket>::with(())
            .given_no_previous_events()
            .when(redeem("ws-1", now))
            .then_expect_events(refused(RefusalReason::Unknown, "ws-1"));
    }

    #[test]
    fn refusals_stored_before_client_ips_were_recorded_still_read() {
        let old: TicketEvent =
            serde_json::from_str(r#"{"TicketRefused": {"reason": "unknown", "workspace": "ws-1"}}"#).unwrap();
        assert_eq!(
            old,
            TicketEvent::TicketRefused { reason: RefusalReason::Unknown, workspace: "ws-1".into(), client_ip: None }
        );
        let new = TicketEvent::TicketRefused {
            reason: RefusalReason::Expired,
            workspace: "ws-1".into(),
            client_ip: Some("2001:db8::7".into()),
        };
        let stored = serde_json::to_value(&new).unwrap();
        assert_eq!(stored["TicketRefused"]["client_ip"], "2001:db8::7");
        assert_eq!(serde_json::from_value::<TicketEvent>(stored).unwrap(), new);
        assert_eq!(new.event_version(), "1.0", "an optional field with a default needs no new version");
    }

    #[test]
    fn close_reasons_are_stored_by_their_stable_names() {
        let all = [
            CloseReason::ClientClosed,
            CloseReason::AgentLost,
            CloseReason::IdleTimeout,
            CloseReason::MaxAge,
            CloseReason::Shutdown,
            CloseReason::Firewall,
            CloseReason::AgentRevoked,
        ];
        for reason in all {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
        assert_eq!(serde_json::from_str::<CloseReason>("\"agent_revoked\"").unwrap(), CloseReason::AgentRevoked);
    }

    fn minted(workspace: Option<&str>, tags: &[(&str, &str)]) -> AgentTokenEvent {
        AgentTokenEvent::AgentTokenMinted {
            name: "a".into(),
            by: Email::parse("root@example.com").unwrap(),
            workspace: workspace.map(str::to_string),
            tags: tags.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
        }
    }

    fn token(events: Vec<AgentTokenEvent>) -> AgentToken {
        let mut token = AgentToken::default();
        for event in events {
            token.apply(event);
        }
        token
    }

    #[test]
    fn a_token_is_minted_bound_to_its_workspace_and_tags() {
        let by = Email::parse("root@example.com").unwrap();
        let tags: BTreeMap<String, String> = [("RDE_OWNER_EMAIL".to_string(), "ada@example.com".to_string())].into();
        TestFramework::<AgentToken>::with(())
            .given_no_previous_events()
            .when(AgentTokenCommand::Mint { name: "a".into(), workspace: "ws-1".into(), tags: tags.clone(), by })
            .then_expect_events(vec![minted(Some("ws-1"), &[("RDE_OWNER_EMAIL", "ada@example.com")])]);
        TestFramework::<AgentToken>::with(())
            .given(vec![minted(Some("ws-1"), &[])])
            .when(AgentTokenCommand::Mint {
                name: "b".into(),
                workspace: "ws-2".into(),
                tags,
                by: Email::parse("root@example.com").unwrap(),
            })
            .then_expect_error(AgentTokenError::Exists);
    }

    #[test]
    fn a_token_admits_only_its_own_workspace() {
        let bound = token(vec![minted(Some("ws-1"), &[])]);
        assert_eq!(bound.admits("ws-1"), Ok(()));
        assert_eq!(bound.admits("ws-2"), Err(AgentRefusal::OtherWorkspace));
        assert_eq!(bound.admits("WS-1"), Err(AgentRefusal::OtherWorkspace));
        // Minted before tokens were bound: serves no workspace at all.
        assert_eq!(token(vec![minted(None, &[])]).admits("ws-1"), Err(AgentRefusal::Unbound));
        assert_eq!(AgentToken::default().admits("ws-1"), Err(AgentRefusal::Invalid));
        let by = Email::parse("root@example.com").unwrap();
        let revoked = token(vec![minted(Some("ws-1"), &[]), AgentTokenEvent::AgentTokenRevoked { by }]);
        assert_eq!(revoked.admits("ws-1"), Err(AgentRefusal::Invalid));
    }

    #[test]
    fn an_agent_cannot_announce_the_facts_its_token_holds() {
        let bound = token(vec![minted(Some("ws-1"), &[("RDE_OWNER_EMAIL", "ada@example.com")])]);
        let announced: BTreeMap<String, String> = [
            ("RDE_OWNER_EMAIL", "eve@example.com"),
            ("BLUEPRINT_KEY", "web"),
            ("BLUEPRINT_PROJECT_ID", "p"),
            ("RDE_DISPLAY_NAME", "Eve's"),
            ("EDITOR", "vim"),
        ]
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
        let tags = bound.tags_for(announced);
        let expected: BTreeMap<String, String> = [("EDITOR", "vim"), ("RDE_OWNER_EMAIL", "ada@example.com")]
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        assert_eq!(tags, expected);
    }

    #[test]
    fn tokens_minted_before_binding_still_read() {
        let stored = r#"{"AgentTokenMinted":{"name":"old","by":"root@example.com"}}"#;
        let event: AgentTokenEvent = serde_json::from_str(stored).unwrap();
        let by = Email::parse("root@example.com").unwrap();
        assert_eq!(
            event,
            AgentTokenEvent::AgentTokenMinted { name: "old".into(), by, workspace: None, tags: BTreeMap::new() }
        );
        // A bound token's payload carries its workspace and tags; an unbound one's is as before.
        let json = serde_json::to_value(minted(Some("ws-1"), &[("BLUEPRINT_KEY", "web")])).unwrap();
        assert_eq!(json["AgentTokenMinted"]["workspace"], "ws-1");
        assert_eq!(json["AgentTokenMinted"]["tags"]["BLUEPRINT_KEY"], "web");
        let json = serde_json::to_value(minted(None, &[])).unwrap();
        assert_eq!(json.to_string(), r#"{"AgentTokenMinted":{"by":"root@example.com","name":"a"}}"#);
    }

    #[test]
    fn agent_tokens_mint_and_revoke_once() {
        let by = Email::parse("root@example.com").unwrap();
        TestFramework::<AgentToken>::with(())
            .given(vec![minted(Some("ws-1"), &[])])
            .when(AgentTokenCommand::Revoke { by: by.clone() })
            .then_expect_events(vec![AgentTokenEvent::AgentTokenRevoked { by: by.clone() }]);
        TestFramework::<AgentToken>::with(())
            .given_no_previous_events()
            .when(AgentTokenCommand::Revoke { by })
            .then_expect_error(AgentTokenError::NotFound);
    }
}
