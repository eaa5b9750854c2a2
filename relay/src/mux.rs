//! Many sessions over one agent connection: binary WebSocket frames `[kind: u8][session: u32 BE][body]`.
//!
//! Each session has its own flow-control window in each direction: a sender may have at most the window's bytes of
//! `Data` outstanding, and the receiver returns `Credit` as it consumes them. So one slow browser fills only its own
//! window; the other sessions on the same agent connection keep flowing.

/// Largest `Data` body, in bytes.
pub const MAX_DATA: usize = 64 * 1024;
/// The window each side starts a session with, in bytes.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// A receiver may hold back up to this much consumed credit before returning it in one `Credit` frame (a sender can
/// always send at least `INITIAL_WINDOW - CREDIT_BATCH` bytes, more than a full [`MAX_DATA`] frame, so holding it
/// back never stalls a session). The gateway does so: returning credit per frame doubled its frames to the agent on a
/// busy session. The agent returns credit for each write to its PTY.
pub const CREDIT_BATCH: u32 = INITIAL_WINDOW / 4;

/// What a session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A shell in a PTY.
    Terminal,
    /// A TCP connection to a port of the workspace.
    Preview,
}

/// One multiplexed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Gateway → agent: open a session.
    Open {
        /// The session.
        session: u32,
        /// Terminal or preview.
        kind: SessionKind,
        /// Terminal columns (0 for previews).
        cols: u16,
        /// Terminal rows (0 for previews).
        rows: u16,
        /// The workspace port (0 for terminals).
        port: u16,
    },
    /// Agent → gateway: the session is open.
    Opened {
        /// The session.
        session: u32,
    },
    /// Bytes of a session, either way.
    Data {
        /// The session.
        session: u32,
        /// At most [`MAX_DATA`] bytes.
        bytes: Vec<u8>,
    },
    /// Gateway → agent: the terminal's size changed.
    Resize {
        /// The session.
        session: u32,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Either way: the receiver consumed `bytes` more; the sender may send that much more.
    Credit {
        /// The session.
        session: u32,
        /// Bytes granted.
        bytes: u32,
    },
    /// Agent → gateway: the shell exited.
    Exit {
        /// The session.
        session: u32,
        /// The exit status.
        code: i32,
    },
    /// Either way: the session is over.
    Close {
        /// The session.
        session: u32,
    },
    /// Gateway → agent: open a task session running the [`GitTask`](crate::task::GitTask) whose JSON is `body`
    /// (at most [`MAX_DATA`] bytes). The agent answers `Opened`, the outcome's JSON in `Data`, then `Close`.
    Task {
        /// The session.
        session: u32,
        /// The task, as JSON.
        body: Vec<u8>,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// Shorter than a header, or than the kind's body.
    #[error("truncated frame")]
    Truncated,
    /// A kind this version does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A `Data` body over [`MAX_DATA`], or trailing bytes after a fixed-size body.
    #[error("frame of {0} bytes is malformed or too large")]
    BadLength(usize),
    /// An unknown session kind in `Open`.
    #[error("unknown session kind {0}")]
    UnknownSessionKind(u8),
    /// More `Data` than the window allowed.
    #[error("session {session} sent {bytes} bytes with only {window} of window")]
    WindowExceeded {
        /// The session.
        session: u32,
        /// Bytes sent.
        bytes: usize,
        /// Window left.
        window: u32,
    },
}

impl Frame {
    /// The session the frame belongs to.
    pub fn session(&self) -> u32 {
        match self {
            Frame::Open { session, .. }
            | Frame::Opened { session }
            | Frame::Data { session, .. }
            | Frame::Resize { session, .. }
            | Frame::Credit { session, .. }
            | Frame::Exit { session, .. }
            | Frame::Close { session }
            | Frame::Task { session, .. } => *session,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let header = |kind: u8, body: usize| {
            let mut out = Vec::with_capacity(5 + body);
            out.push(kind);
            out.extend(self.session().to_be_bytes());
            out
        };
        match self {
            Frame::Open { kind, cols, rows, port, .. } => {
                let mut out = header(0x01, 7);
                out.push(match kind {
                    SessionKind::Terminal => 0u8,
                    SessionKind::Preview => 1u8,
                });
                out.extend(cols.to_be_bytes());
                out.extend(rows.to_be_bytes());
                out.extend(port.to_be_bytes());
                out
            }
            Frame::Opened { .. } => header(0x02, 0),
            Frame::Data { session, bytes } => Self::encode_data(*session, bytes),
            Frame::Resize { cols, rows, .. } => {
                let mut out = header(0x04, 4);
                out.extend(cols.to_be_bytes());
                out.extend(rows.to_be_bytes());
                out
            }
            Frame::Credit { bytes, .. } => {
                let mut out = header(0x05, 4);
                out.extend(bytes.to_be_bytes());
                out
            }
            Frame::Exit { code, .. } => {
                let mut out = header(0x06, 4);
                out.extend(code.to_be_bytes());
                out
            }
            Frame::Close { .. } => header(0x07, 0),
            Frame::Task { body, .. } => {
                let mut out = header(0x08, body.len());
                out.extend_from_slice(body);
                out
            }
        }
    }

    /// The wire form of `Data { session, bytes }`, built straight from a borrowed slice (one copy, no `Frame`).
    pub fn encode_data(session: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + bytes.len());
        out.push(0x03);
        out.extend(session.to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    /// Parses the wire form, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, MuxError> {
        let (&kind, rest) = bytes.split_first().ok_or(MuxError::Truncated)?;
        let session =
            u32::from_be_bytes(rest.get(..4).ok_or(MuxError::Truncated)?.try_into().map_err(|_| MuxError::Truncated)?);
        let body = &rest[4..];
        let fixed = |length: usize| -> Result<&[u8], MuxError> {
            match body.len().cmp(&length) {
                std::cmp::Ordering::Less => Err(MuxError::Truncated),
                std::cmp::Ordering::Greater => Err(MuxError::BadLength(bytes.len())),
                std::cmp::Ordering::Equal => Ok(body),
            }
        };
        let u16_at = |body: &[u8], at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        let u32_of = |body: &[u8]| u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        Ok(match kind {
            0x01 => {
                let body = fixed(7)?;
                let kind = match body[0] {
                    0 => SessionKind::Terminal,
                    1 => SessionKind::Preview,
                    other => return Err(MuxError::UnknownSessionKind(other)),
                };
                Frame::Open { session, kind, cols: u16_at(body, 1), rows: u16_at(body, 3), port: u16_at(body, 5) }
            }
            0x02 => {
                fixed(0)?;
                Frame::Opened { session }
            }
            0x03 => {
                if body.len() > MAX_DATA {
                    return Err(MuxError::BadLength(bytes.len()));
                }
                Frame::Data { session, bytes: body.to_vec() }
            }
            0x04 => {
                let body = fixed(4)?;
                Frame::Resize { session, cols: u16_at(body, 0), rows: u16_at(body, 2) }
            }
            0x05 => Frame::Credit { session, bytes: u32_of(fixed(4)?) },
            0x06 => Frame::Exit { session, code: u32_of(fixed(4)?) as i32 },
            0x07 => {
                fixed(0)?;
                Frame::Close { session }
            }
            0x08 => {
                if body.len() > MAX_DATA {
                    return Err(MuxError::BadLength(bytes.len()));
                }
                Frame::Task { session, body: body.to_vec() }
            }
            other => return Err(MuxError::UnknownKind(other)),
        })
    }
}

/// One direction of one session's flow control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    session: u32,
    available: u32,
}

impl Window {
    /// A window of [`INITIAL_WINDOW`] bytes.
    pub fn new(session: u32) -> Self {
        Self { session, available: INITIAL_WINDOW }
    }

    /// Bytes that may be sent now.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Accounts for `bytes` sent (or, on the receiving side, received); refuses a sender that overran the window.
    pub fn consume(&mut self, bytes: usize) -> Result<(), MuxError> {
        match u32::try_from(bytes).ok().filter(|bytes| *bytes <= self.available) {
            Some(bytes) => {
                self.available -= bytes;
                Ok(())
            }
            None => Err(MuxError::WindowExceeded { session: self.session, bytes, window: self.available }),
        }
    }

    /// Adds a credit. The window never grows past [`INITIAL_WINDOW`], so a confused peer cannot make the other side
    /// buffer without bound.
    pub fn grant(&mut self, bytes: u32) {
        self.available = self.available.saturating_add(bytes).min(INITIAL_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Open { session: 7, kind: SessionKind::Terminal, cols: 120, rows: 40, port: 0 },
            Frame::Open { session: 8, kind: SessionKind::Preview, cols: 0, rows: 0, port: 3000 },
            Frame::Opened { session: 7 },
            Frame::Data { session: 7, bytes: b"echo hello\r".to_vec() },
            Frame::Data { session: u32::MAX, bytes: vec![0xff; MAX_DATA] },
            Frame::Resize { session: 7, cols: 80, rows: 24 },
            Frame::Credit { session: 7, bytes: 4096 },
            Frame::Exit { session: 7, code: -1 },
            Frame::Close { session: 7 },
            Frame::Task { session: 9, body: br#"{"op":"diff"}"#.to_vec() },
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in every_kind() {
            assert_eq!(Frame::decode(&frame.encode()), Ok(frame.clone()), "{frame:?}");
        }
        assert_eq!(Frame::encode_data(9, b"ls\r"), Frame::Data { session: 9, bytes: b"ls\r".to_vec() }.encode());
        // The wire form is the contract: pin one of each kind.
        assert_eq!(Frame::Credit { session: 1, bytes: 258 }.encode(), [0x05, 0, 0, 0, 1, 0, 0, 1, 2]);
        assert_eq!(
            Frame::Open { session: 2, kind: SessionKind::Preview, cols: 1, rows: 2, port: 3 }.encode(),
            [0x01, 0, 0, 0, 2, 1, 0, 1, 0, 2, 0, 3]
        );
        assert_eq!(Frame::Exit { session: 3, code: -1 }.encode(), [0x06, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(Frame::Close { session: 4 }.encode(), [0x07, 0, 0, 0, 4]);
        assert_eq!(Frame::Task { session: 5, body: b"{}".to_vec() }.encode(), [0x08, 0, 0, 0, 5, b'{', b'}']);
    }

    #[test]
    fn malformed_frames_are_refused_and_never_panic() {
        assert_eq!(Frame::decode(&[]), Err(MuxError::Truncated));
        assert_eq!(Frame::decode(&[0x03, 0, 0]), Err(MuxError::Truncated));
        assert_eq!(Frame::decode(&[0x09, 0, 0, 0, 1]), Err(MuxError::UnknownKind(9)));
        assert_eq!(Frame::decode(&[0x01, 0, 0, 0, 1, 5, 0, 80, 0, 24, 0, 0]), Err(MuxError::UnknownSessionKind(5)));
        assert_eq!(Frame::decode(&[0x05, 0, 0, 0, 1, 0, 0]), Err(MuxError::Truncated));
        assert!(matches!(Frame::decode(&[0x07, 0, 0, 0, 1, 0]), Err(MuxError::BadLength(_))));
        let mut oversized = vec![0x03, 0, 0, 0, 1];
        oversized.extend(vec![0u8; MAX_DATA + 1]);
        assert!(matches!(Frame::decode(&oversized), Err(MuxError::BadLength(_))));
        // Every prefix of every valid frame either decodes or is refused; none panics.
        for frame in every_kind() {
            let bytes = frame.encode();
            for end in 0..bytes.len().min(64) {
                let _ = Frame::decode(&bytes[..end]);
            }
        }
    }

    #[test]
    fn a_window_refuses_overruns_and_caps_credit() {
        let mut window = Window::new(3);
        window.consume(INITIAL_WINDOW as usize - 10).unwrap();
        assert_eq!(window.consume(11), Err(MuxError::WindowExceeded { session: 3, bytes: 11, window: 10 }));
        window.grant(u32::MAX);
        assert_eq!(window.available(), INITIAL_WINDOW);
    }
}
