//! Terminal sessions: one aggregate per session, id = the session's id.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::Email;

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
