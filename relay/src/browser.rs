//! A browser's terminal WebSocket: JSON text frames for control, binary frames for terminal bytes.
//!
//! The first message must be `{"type": "auth", "ticket": "…"}`: tickets never travel in URLs, where proxies log them.
//! After it: binary frames are keystrokes (browser → gateway) or output (gateway → browser); text frames are
//! `resize` and `ping` from the browser, `ready`, `too_far_behind`, `pong` and `exit` from the gateway.
//!
//! A session outlives its socket (ADR 0025): `auth` may name a `session` to resume and the `offset` of output
//! received; the output continues from there. A browser ends its session for good by closing its socket with code
//! 1000; any other end detaches it.

use serde::{Deserialize, Serialize};

/// Largest text (control) frame a browser may send, in bytes.
pub const MAX_CONTROL_FRAME: usize = 4 * 1024;
/// Largest terminal dimension accepted in a resize.
pub const MAX_DIMENSION: u16 = 1000;

/// Why the gateway closes a browser's WebSocket. **API Boundary:** the numbers are documented in docs/API.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The service is shutting down (standard 1001).
    GoingAway = 1001,
    /// A frame the protocol does not allow: malformed JSON, an unknown type, a bad dimension (standard 1002).
    ProtocolError = 1002,
    /// A text frame that is not UTF-8 (standard 1007).
    InvalidPayload = 1007,
    /// A frame larger than the configured maximum (standard 1009).
    TooLarge = 1009,
    /// Something other than an `auth` message came first.
    TicketRequired = 4000,
    /// The ticket is malformed, unknown, expired, already used, or for another user, workspace or kind.
    TicketRefused = 4001,
    /// The IP firewall refuses the client, at connection or after a rule change.
    Firewall = 4003,
    /// No input or output for the idle timeout.
    IdleTimeout = 4008,
    /// The session reached its maximum age.
    MaxAge = 4009,
    /// The user already has the maximum number of sessions.
    TooManySessions = 4029,
    /// The workspace has no connected agent.
    WorkspaceUnavailable = 4404,
    /// The workspace's agent disconnected during the session.
    AgentLost = 4410,
    /// The session to resume is not open, or not the ticket user's, or not in this workspace.
    NoSuchSession = 4414,
    /// The offset to resume from is past the output the session produced.
    BadOffset = 4416,
    /// The session already has the maximum number of browsers attached.
    TooManyViewers = 4028,
}

impl CloseCode {
    /// The numeric close code.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// A control message from the browser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message: the one-time ticket.
    Auth {
        /// The ticket, as `POST /api/v1/workspaces/{id}/tickets` returned it.
        ticket: String,
        /// The open session to attach to (a reconnect, or a second browser); absent: a new session.
        #[serde(default)]
        session: Option<String>,
        /// With `session`: the output bytes already received; the output resumes after them (default 0).
        #[serde(default)]
        offset: Option<u64>,
    },
    /// The terminal's size changed.
    Resize {
        /// Columns, 1 to [`MAX_DIMENSION`].
        cols: u16,
        /// Rows, 1 to [`MAX_DIMENSION`].
        rows: u16,
    },
    /// Keepalive; answered with `pong`. (A struct variant, so that unknown fields are refused here too.)
    Ping {},
    /// The output received so far: the gateway may drop what comes before it, and keeps what comes after it for a
    /// reconnect (without acknowledgements it keeps what it had not yet sent when the connection dropped, so output
    /// in flight then may be beyond its reach). Send one every 64 KiB of output or so.
    Ack {
        /// Output bytes received since the session opened.
        offset: u64,
    },
}

/// A control message to the browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The session is open; binary frames flow from now on.
    Ready {
        /// The session's id, as the activity log shows it: keep it to resume.
        session: String,
        /// The output offset the binary frames that follow start at (0 for a new session).
        offset: u64,
    },
    /// The output asked for was no longer buffered: it resumes at `offset` (a point where no escape sequence or
    /// character is cut), and the terminal is resized so full-screen programs repaint.
    TooFarBehind {
        /// The offset asked for.
        requested: u64,
        /// Where the output resumes.
        offset: u64,
    },
    /// Answer to `ping`.
    Pong,
    /// The shell exited.
    Exit {
        /// Its exit status, when it had one.
        code: Option<i32>,
    },
}

/// Why a browser's text frame was refused, with the close code to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Over [`MAX_CONTROL_FRAME`] bytes.
    #[error("control frame of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not a control message this protocol knows.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// A resize outside 1..=[`MAX_DIMENSION`].
    #[error("terminal size {cols}x{rows} is out of range")]
    BadDimension {
        /// Columns asked for.
        cols: u16,
        /// Rows asked for.
        rows: u16,
    },
}

impl FrameError {
    /// The close code this error ends the connection with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TooLarge(_) => CloseCode::TooLarge,
            FrameError::Malformed(_) | FrameError::BadDimension { .. } => CloseCode::ProtocolError,
        }
    }
}

impl ClientMessage {
    /// Parses a text frame, enforcing the size limit and value ranges.
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        if text.len() > MAX_CONTROL_FRAME {
            return Err(FrameError::TooLarge(text.len()));
        }
        // serde's internally tagged enums also take a JSON array whose first element is the tag (`["ping"]`,
        // `["resize",80,24]`); the protocol's messages are objects (found by fuzzing, docs/FUZZING.md).
        if !text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
            return Err(FrameError::Malformed("a control message is a JSON object".into()));
        }
        let message: ClientMessage =
            serde_json::from_str(text).map_err(|error| FrameError::Malformed(error.to_string()))?;
        if let ClientMessage::Auth { session: None, offset: Some(_), .. } = message {
            return Err(FrameError::Malformed("an offset resumes a session: name the session".into()));
        }
        if let ClientMessage::Resize { cols, rows } = message {
            if !(1..=MAX_DIMENSION).contains(&cols) || !(1..=MAX_DIMENSION).contains(&rows) {
                return Err(FrameError::BadDimension { cols, rows });
            }
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_parse() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"auth","ticket":"abc"}"#),
            Ok(ClientMessage::Auth { ticket: "abc".into(), session: None, offset: None })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"auth","ticket":"abc","session":"s-1","offset":12345678901}"#),
            Ok(ClientMessage::Auth { ticket: "abc".into(), session: Some("s-1".into()), offset: Some(12345678901) })
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(ClientMessage::Resize { cols: 120, rows: 40 })
        );
        assert_eq!(ClientMessage::parse(r#"{"type":"ping"}"#), Ok(ClientMessage::Ping {}));
        assert_eq!(ClientMessage::parse(r#"{"type":"ack","offset":65536}"#), Ok(ClientMessage::Ack { offset: 65536 }));
        assert_eq!(ClientMessage::parse(" \t\r\n{\"type\":\"ping\"}\n"), Ok(ClientMessage::Ping {}));
    }

    #[test]
    fn bad_control_messages_name_their_close_code() {
        let cases = [
            (r#"{"type":"resize","cols":0,"rows":40}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"resize","cols":120,"rows":1001}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"resize","cols":-1,"rows":40}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"launch"}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"ping","extra":1}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"auth","ticket":"t","offset":3}"#.to_string(), CloseCode::ProtocolError),
            (r#"{"type":"auth","ticket":"t","session":"s","offset":-1}"#.to_string(), CloseCode::ProtocolError),
            ("not json".to_string(), CloseCode::ProtocolError),
            // Arrays, which serde takes for internally tagged enums (found by fuzzing: fuzz/regressions/).
            (r#"["ping"]"#.to_string(), CloseCode::ProtocolError),
            (r#" ["auth","abc"]"#.to_string(), CloseCode::ProtocolError),
            (r#"["resize",80,24]"#.to_string(), CloseCode::ProtocolError),
            (format!(r#"{{"type":"auth","ticket":"{}"}}"#, "a".repeat(MAX_CONTROL_FRAME)), CloseCode::TooLarge),
        ];
        for (text, code) in cases {
            assert_eq!(ClientMessage::parse(&text).map_err(|error| error.close_code()), Err(code), "{text:.60}");
        }
    }

    #[test]
    fn server_messages_have_a_stable_shape() {
        assert_eq!(
            serde_json::to_string(&ServerMessage::Ready { session: "s1".into(), offset: 7 }).unwrap(),
            r#"{"type":"ready","session":"s1","offset":7}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerMessage::TooFarBehind { requested: 1, offset: 9 }).unwrap(),
            r#"{"type":"too_far_behind","requested":1,"offset":9}"#
        );
        assert_eq!(
            serde_json::to_string(&ServerMessage::Exit { code: Some(0) }).unwrap(),
            r#"{"type":"exit","code":0}"#
        );
        assert_eq!(CloseCode::TicketRefused.code(), 4001);
    }
}
