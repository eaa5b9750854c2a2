//! One-time tickets: one aggregate per ticket, id = the hex SHA-256 of the ticket (the ticket itself is never
//! stored). Redeeming is a command on it, so two racing redemptions conflict in the store and exactly one wins.

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
        /// `terminal` or `preview`.
        kind: String,
        /// The workspace port a preview ticket opens (`None` for terminals).
        port: Option<u16>,
        /// Until when.
        expires_at: DateTime<Utc>,
    },
    /// Redeem it.
    Redeem {
        /// The workspace of the connection redeeming it.
        workspace: String,
        /// The kind of connection.
        kind: String,
        /// The port a preview connection asks for (`None` for terminals).
        port: Option<u16>,
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
        /// The port a preview ticket opens (absent from terminal tickets and from those issued before previews).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
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
    /// The port it opens (preview tickets).
    #[serde(default)]
    pub port: Option<u16>,
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
    pub fn refusal(&self, workspace: &str, kind: &str, port: Option<u16>, now: DateTime<Utc>) -> Option<RefusalReason> {
        let Some(expires_at) = self.expires_at else { return Some(RefusalReason::Unknown) };
        if self.redeemed {
            Some(RefusalReason::Reused)
        } else if self.workspace != workspace || self.kind != kind || self.port != port {
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
            TicketCommand::Issue { ticket_hash, user, workspace, kind, port, expires_at } => {
                if self.user.is_some() {
                    return Err(TicketError::AlreadyIssued);
                }
                sink.write(TicketEvent::TicketIssued { ticket_hash, user, workspace, kind, port, expires_at }, self)
                    .await;
            }
            TicketCommand::Redeem { workspace, kind, port, now, client_ip } => {
                match self.refusal(&workspace, &kind, port, now) {
                    Some(reason) => sink.write(TicketEvent::TicketRefused { reason, workspace, client_ip }, self).await,
                    None => sink.write(TicketEvent::TicketRedeemed { workspace }, self).await,
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            TicketEvent::TicketIssued { user, workspace, kind, port, expires_at, .. } => {
                self.user = Some(user);
                self.workspace = workspace;
                self.kind = kind;
                self.port = port;
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
