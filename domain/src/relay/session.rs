//! Terminal sessions: one aggregate per session, id = the session's id.
//!
//! A session outlives the browser WebSockets attached to it (ADR 0025): it opens with its first browser; browsers
//! detach (their socket ended without closing the session) and attach again (a reconnect with the offset received,
//! or a second browser joining); it closes for good once, with its reason.

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
    /// Every browser detached and none came back within the detach time.
    DetachTimeout,
    /// Its user may no longer open the workspace (no longer its owner, an admin or a member): a preview, checked on
    /// every request.
    AccessRevoked,
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
            CloseReason::DetachTimeout => "detach_timeout",
            CloseReason::AccessRevoked => "access_revoked",
        }
    }
}

/// What a session carries. **API Boundary:** stored (events before previews existed have none: terminals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// A shell in a PTY.
    #[default]
    Terminal,
    /// A preview of a port of the workspace (one per preview cookie, however many requests it serves).
    Preview,
}

impl SessionKind {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Terminal => "terminal",
            SessionKind::Preview => "preview",
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
        /// Terminal or preview.
        kind: SessionKind,
        /// The workspace port a preview shows (`None` for terminals).
        port: Option<u16>,
    },
    /// A browser attached to the open session: it reconnected, or another browser joined.
    Resume {
        /// The client's address.
        client_ip: String,
        /// The client's user agent.
        user_agent: String,
        /// The output offset it asked to resume after.
        requested_offset: u64,
        /// The offset its output starts at: `requested_offset`, or later when that was no longer buffered.
        offset: u64,
    },
    /// A browser's socket ended without closing the session.
    Detach {
        /// The client's address.
        client_ip: String,
        /// Output bytes sent to it before it left (the offset it had reached).
        offset: u64,
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
        /// Terminal or preview (absent from events recorded before previews: terminals).
        #[serde(default)]
        kind: SessionKind,
        /// The workspace port a preview shows (`None` for terminals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
    },
    /// A browser attached to the open session (a reconnect, or another browser joining).
    SessionResumed {
        /// The client's address.
        client_ip: String,
        /// The client's user agent.
        user_agent: String,
        /// The output offset it asked to resume after.
        requested_offset: u64,
        /// The offset its output started at (later than `requested_offset` when that was no longer buffered).
        offset: u64,
    },
    /// A browser's socket ended; the session stayed open for the others, or for a reconnect.
    SessionDetached {
        /// The client's address.
        client_ip: String,
        /// The output offset sent to it before it left.
        offset: u64,
        /// Browsers still attached.
        attached: u32,
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
            SessionEvent::SessionResumed { .. } => "SessionResumed",
            SessionEvent::SessionDetached { .. } => "SessionDetached",
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
    /// Closing twice, or attaching to or detaching from a closed session.
    #[error("the session is closed already")]
    AlreadyClosed,
    /// Detaching a browser when none is attached.
    #[error("no browser is attached to the session")]
    NotAttached,
}

/// A terminal session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSession {
    /// Opened.
    pub opened: bool,
    /// Closed.
    pub closed: bool,
    /// Browsers attached now (the one that opened it counts).
    #[serde(default)]
    pub attached: u32,
}

impl TerminalSession {
    fn require_open(&self) -> Result<(), SessionError> {
        if !self.opened {
            Err(SessionError::NotOpen)
        } else if self.closed {
            Err(SessionError::AlreadyClosed)
        } else {
            Ok(())
        }
    }
}

impl Aggregate for TerminalSession {
    const TYPE: &'static str = "terminal_session";
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = SessionError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            SessionCommand::Open { session_id, user, workspace, agent, client_ip, user_agent, kind, port } => {
                if self.opened {
                    return Err(SessionError::AlreadyOpen);
                }
                sink.write(
                    SessionEvent::SessionOpened {
                        session_id,
                        user,
                        workspace,
                        agent,
                        client_ip,
                        user_agent,
                        kind,
                        port,
                    },
                    self,
                )
                .await;
            }
            SessionCommand::Resume { client_ip, user_agent, requested_offset, offset } => {
                self.require_open()?;
                sink.write(SessionEvent::SessionResumed { client_ip, user_agent, requested_offset, offset }, self)
                    .await;
            }
            SessionCommand::Detach { client_ip, offset } => {
                self.require_open()?;
                if self.attached == 0 {
                    return Err(SessionError::NotAttached);
                }
                let attached = self.attached - 1;
                sink.write(SessionEvent::SessionDetached { client_ip, offset, attached }, self).await;
            }
            SessionCommand::Close { bytes_in, bytes_out, duration_ms, reason } => {
                self.require_open()?;
                sink.write(SessionEvent::SessionClosed { bytes_in, bytes_out, duration_ms, reason }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::SessionOpened { .. } => {
                self.opened = true;
                self.attached = 1;
            }
            SessionEvent::SessionResumed { .. } => self.attached += 1,
            SessionEvent::SessionDetached { attached, .. } => self.attached = attached,
            SessionEvent::SessionClosed { .. } => {
                self.closed = true;
                self.attached = 0;
            }
        }
    }
}
