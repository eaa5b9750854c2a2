//! Terminals that outlive their browsers (ADR 0025).
//!
//! A [`Terminal`] is one shell on an agent, held by the gateway: a task of its own (the *pump*) owns the agent
//! session, appends the shell's output to the terminal's buffer and ends the terminal (idle, maximum age, detach
//! timeout, shutdown, the agent leaving, the shell exiting). Browsers are [`Viewer`]s: each reads the output from its
//! own offset, so several browsers see all of it, and a browser that reconnects with the offset it received gets
//! exactly the bytes after it.
//!
//! **The buffer.** Output is numbered from 0 (the *offset*). The buffer keeps the most recent output: at least the
//! agent's window ([`RESERVED`], every terminal's own), up to `buffer` bytes with the part beyond the reserve taken
//! from a gateway-wide pool of `total` bytes. Output no viewer has received is never dropped: the agent is granted
//! credit only for room the buffer has, so with every browser gone the shell runs until the buffer is full and then
//! waits, like a terminal with scroll lock, until someone comes back (or the detach time runs out). Output every
//! attached viewer has received stays as long as there is room, for a browser whose connection dropped with bytes
//! in flight. A resume from an offset older than the buffer starts at the oldest point of the buffer where no escape
//! sequence or UTF-8 character is cut (a small parser follows the output to know them), says so, and resizes the PTY
//! so that full-screen programs repaint.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use domain::relay::{CloseReason, SessionCommand};
use domain::Email;
use store::EventMetadata;
use tokio::sync::{watch, Notify};

use crate::browser::CloseCode;
use crate::gateway::Gateway;
use crate::hub::{AgentConn, Control, Input, SessionHandle, ToBrowser};
use crate::mux::INITIAL_WINDOW;

/// Every terminal's own part of the buffer: the agent's window, which it may fill before any credit.
pub const RESERVED: usize = INITIAL_WINDOW as usize;
/// Browsers attached to one terminal at once, at most.
pub const MAX_VIEWERS: usize = 8;
/// A safe resume point is recorded at most every this many bytes of output.
const SAFE_POINT_SPACING: u64 = 4 * 1024;
/// The pump takes up to this many of its agent's messages at a time.
const PUMP_BATCH: usize = 64;

/// How long terminals wait for their browsers, and how much output they keep (settings `relay_detach_*` and
/// `relay_resume_buffer_*`).
#[derive(Debug, Clone)]
pub struct ResumeLimits {
    /// How long a terminal nobody is attached to keeps running; zero: it closes when its last browser leaves.
    pub detach_timeout: Duration,
    /// Output kept per terminal, in bytes (at least [`RESERVED`]).
    pub buffer: usize,
    /// Output kept by all terminals together beyond their reserves, in bytes.
    pub total: usize,
}

impl Default for ResumeLimits {
    fn default() -> Self {
        Self { detach_timeout: Duration::from_secs(300), buffer: 1024 * 1024, total: 256 * 1024 * 1024 }
    }
}

/// Why a terminal ended, and how its browsers' sockets close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// As recorded.
    pub reason: CloseReason,
    /// The close code and text browsers get.
    pub close: (u16, &'static str),
    /// Whether browsers first get the output still buffered for them (the shell exited, the agent left).
    pub drain: bool,
}

impl End {
    /// An end that closes every browser at once.
    fn now(reason: CloseReason, code: CloseCode, text: &'static str) -> Self {
        Self { reason, close: (code.code(), text), drain: false }
    }

    /// An end after which browsers first get the output still buffered for them.
    fn drained(reason: CloseReason, code: CloseCode, text: &'static str) -> Self {
        Self { drain: true, ..Self::now(reason, code, text) }
    }
}

/// What a viewer gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Output, starting at the viewer's offset.
    Bytes(Bytes),
    /// The shell exited with this status (after all its output).
    Exit(i32),
    /// The terminal ended.
    Ended(End),
}

/// Why a browser cannot attach to a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttachRefusal {
    /// No such open terminal, or not the caller's, or not in this workspace (not told apart).
    #[error("no such open session")]
    NoSuchSession,
    /// An offset past the output produced so far.
    #[error("offset past the output sent")]
    BadOffset,
    /// [`MAX_VIEWERS`] browsers are attached already.
    #[error("too many browsers on the session")]
    TooManyViewers,
}

/// The gateway-wide pool the buffers grow from beyond their reserves.
#[derive(Debug)]
struct Pool {
    limit: usize,
    used: AtomicUsize,
}

impl Pool {
    /// Takes up to `wanted` bytes; how many it got.
    fn take(&self, wanted: usize) -> usize {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let got = wanted.min(self.limit.saturating_sub(used));
            if got == 0 {
                return 0;
            }
            match self.used.compare_exchange_weak(used, used + got, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return got,
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Where the output stream is with respect to escape sequences and UTF-8: a resume may start only where it is in
/// `Ground` (a partial sequence would print junk or leave the browser's terminal in a strange mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Vt {
    /// Plain text, between characters.
    #[default]
    Ground,
    /// Inside a UTF-8 character, this many continuation bytes to go.
    Utf8(u8),
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes.
    EscapeIntermediate,
    /// Inside a control sequence (ESC `[`).
    Csi,
    /// Inside a string (OSC, DCS, SOS, PM, APC), ended by ST (ESC `\`) or, for OSC, BEL.
    String,
    /// ESC inside a string.
    StringEscape,
}

impl Vt {
    /// The state after `byte`.
    fn next(self, byte: u8) -> Vt {
        // CAN and SUB abort any sequence.
        if matches!(byte, 0x18 | 0x1a) {
            return Vt::Ground;
        }
        match self {
            Vt::Ground => Self::ground(byte),
            Vt::Utf8(left) => {
                if (0x80..=0xbf).contains(&byte) {
                    if left <= 1 {
                        Vt::Ground
                    } else {
                        Vt::Utf8(left - 1)
                    }
                } else {
                    // A broken character: the terminal shows a replacement and reads this byte afresh.
                    Self::ground(byte)
                }
            }
            Vt::Escape => Self::escape(byte),
            Vt::EscapeIntermediate => match byte {
                0x1b => Vt::Escape,
                0x20..=0x2f | 0x00..=0x17 | 0x19 | 0x1c..=0x1f => Vt::EscapeIntermediate,
                _ => Vt::Ground,
            },
            Vt::Csi => match byte {
                0x1b => Vt::Escape,
                0x40..=0x7e => Vt::Ground,
                _ => Vt::Csi,
            },
            Vt::String => match byte {
                0x07 => Vt::Ground,
                0x1b => Vt::StringEscape,
                _ => Vt::String,
            },
            Vt::StringEscape => match byte {
                b'\\' => Vt::Ground,
                // ESC ends the string and starts an escape sequence.
                _ => Self::escape(byte),
            },
        }
    }

    fn ground(byte: u8) -> Vt {
        match byte {
            0x1b => Vt::Escape,
            0xc2..=0xdf => Vt::Utf8(1),
            0xe0..=0xef => Vt::Utf8(2),
            0xf0..=0xf4 => Vt::Utf8(3),
            _ => Vt::Ground,
        }
    }

    fn escape(byte: u8) -> Vt {
        match byte {
            b'[' => Vt::Csi,
            b']' | b'P' | b'X' | b'^' | b'_' => Vt::String,
            0x1b => Vt::Escape,
            0x20..=0x2f => Vt::EscapeIntermediate,
            // C0 controls inside an escape sequence are executed and the sequence goes on.
            0x00..=0x17 | 0x19 | 0x1c..=0x1f => Vt::Escape,
            _ => Vt::Ground,
        }
    }

    /// The state after `bytes`.
    #[cfg(test)]
    fn feed(mut self, bytes: &[u8]) -> Vt {
        for &byte in bytes {
            self = self.next(byte);
        }
        self
    }
}

/// Where a viewer is in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    /// Output handed to its socket.
    sent: u64,
    /// Output its browser acknowledged having received, if it acknowledges (`ack` messages).
    acked: Option<u64>,
}

impl Position {
    fn at(offset: u64) -> Self {
        Self { sent: offset, acked: None }
    }

    /// Output before this offset the viewer no longer needs: what it acknowledged, or, for a browser that does not
    /// acknowledge, what was sent to it.
    fn kept_from(&self) -> u64 {
        self.acked.unwrap_or(self.sent)
    }
}

/// A terminal's buffer and the browsers reading it.
struct State {
    /// Output `[start, end)`.
    ring: VecDeque<u8>,
    start: u64,
    end: u64,
    /// The escape-sequence state at `end`.
    vt: Vt,
    /// Offsets in `[start, end]` where the stream was in `Ground`, oldest first.
    safe: VecDeque<u64>,
    /// Attached viewers: id → where each is.
    viewers: HashMap<u64, Position>,
    next_viewer: u64,
    /// When nobody is attached: where the last viewer's needs began (output after it is kept for its return).
    parked: u64,
    /// Times the last viewer left (the pump restarts the detach time at each, however they coalesce).
    departures: u64,
    /// The offset up to which the agent may send.
    granted: u64,
    /// Bytes taken from the pool.
    charged: usize,
    /// The shell's exit status and the offset it came at.
    exit: Option<(u64, i32)>,
    ended: Option<End>,
    last_activity: tokio::time::Instant,
    bytes_in: u64,
    /// The terminal's size, for the repaint after a resume that lost output.
    size: (u16, u16),
}

impl State {
    /// A terminal of `cols` × `rows` with no output yet; the agent starts with its window.
    fn new(cols: u16, rows: u16) -> Self {
        Self {
            ring: VecDeque::new(),
            start: 0,
            end: 0,
            vt: Vt::Ground,
            safe: VecDeque::new(),
            viewers: HashMap::new(),
            next_viewer: 0,
            parked: 0,
            departures: 0,
            granted: INITIAL_WINDOW as u64,
            charged: 0,
            exit: None,
            ended: None,
            last_activity: tokio::time::Instant::now(),
            bytes_in: 0,
            size: (cols.max(1), rows.max(1)),
        }
    }

    /// The offset below which output may be dropped: what every attached viewer has received.
    fn floor(&self) -> u64 {
        self.viewers.values().map(Position::kept_from).min().unwrap_or(self.parked)
    }

    /// Drops output before `offset` (never past the floor).
    fn evict_to(&mut self, offset: u64) {
        let offset = offset.min(self.floor()).min(self.end);
        if offset <= self.start {
            return;
        }
        self.ring.drain(..(offset - self.start) as usize);
        self.start = offset;
        while self.safe.front().is_some_and(|safe| *safe < offset) {
            self.safe.pop_front();
        }
    }

    /// Appends output the agent sent (within the credit it was granted).
    fn append(&mut self, bytes: &[u8]) {
        // Room for it, from output every viewer has received (credit never lets it reach further back).
        let over = (self.end + bytes.len() as u64 - self.start).saturating_sub(self.room());
        if over > 0 {
            self.evict_to(self.start + over);
        }
        // Safe points: offsets after which the stream is in `Ground`, one per `SAFE_POINT_SPACING` bytes at most.
        let mut due = self.safe.back().map_or(self.end, |last| last + SAFE_POINT_SPACING);
        if self.vt == Vt::Ground && self.end >= due {
            self.safe.push_back(self.end);
            due = self.end + SAFE_POINT_SPACING;
        }
        let mut vt = self.vt;
        for (at, &byte) in bytes.iter().enumerate() {
            vt = vt.next(byte);
            let offset = self.end + at as u64 + 1;
            if vt == Vt::Ground && offset >= due {
                self.safe.push_back(offset);
                due = offset + SAFE_POINT_SPACING;
            }
        }
        self.vt = vt;
        self.ring.extend(bytes);
        self.end += bytes.len() as u64;
        self.last_activity = tokio::time::Instant::now();
    }

    /// More credit for the agent, if the buffer has room for it; how many bytes to grant. The agent may have output
    /// up to `floor + buffer` outstanding, and never more than its window beyond what arrived; the room comes first
    /// from the terminal's reserve, then from the pool. Nothing is dropped here: output every viewer has received
    /// stays until output that needs its room arrives ([`State::append`]).
    fn grant(&mut self, limits: &ResumeLimits, pool: &Pool) -> u64 {
        let floor = self.floor();
        let buffer = limits.buffer.max(RESERVED) as u64;
        let mut target = (floor + buffer).min(self.end + INITIAL_WINDOW as u64);
        if target <= self.granted {
            return 0;
        }
        let beyond = ((target - floor) as usize).saturating_sub(RESERVED);
        if beyond > self.charged {
            self.charged += pool.take(beyond - self.charged);
        }
        target = target.min(floor + self.room());
        if target <= self.granted {
            return 0;
        }
        let credit = target - self.granted;
        self.granted = target;
        credit
    }

    /// The most output the buffer holds: its reserve and what it took from the pool.
    fn room(&self) -> u64 {
        (RESERVED + self.charged) as u64
    }

    /// Where a viewer asking for `requested` starts: there, or, when that output is gone, the oldest safe point
    /// still buffered (else the end).
    fn resume_point(&self, requested: u64) -> u64 {
        if requested >= self.start {
            return requested;
        }
        self.safe.iter().copied().find(|safe| *safe >= self.start).unwrap_or(self.end)
    }
}

/// One shell held by the gateway.
pub struct Terminal {
    /// The session's id.
    pub id: String,
    /// Whose.
    pub user: Email,
    /// Which workspace.
    pub workspace: String,
    state: Mutex<State>,
    /// Moves when output arrives, the shell exits or the terminal ends.
    changed: watch::Sender<u64>,
    /// Wakes the pump when viewers attach or leave or the terminal is ended from outside.
    wake: Notify,
    input: Input,
    control: Control,
    limits: ResumeLimits,
    pool: Arc<Pool>,
    metadata: EventMetadata,
}

impl Terminal {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify_viewers(&self) {
        self.changed.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Ends the terminal (the first end wins); its pump records it.
    pub fn end(&self, end: End) {
        {
            let mut state = self.lock();
            if state.ended.is_some() {
                return;
            }
            state.ended = Some(end);
        }
        self.notify_viewers();
        self.wake.notify_one();
    }

    fn attach(self: &Arc<Self>, requested: u64) -> Result<Viewer, AttachRefusal> {
        let mut state = self.lock();
        if state.ended.is_some() {
            return Err(AttachRefusal::NoSuchSession);
        }
        if requested > state.end {
            return Err(AttachRefusal::BadOffset);
        }
        if state.viewers.len() >= MAX_VIEWERS {
            return Err(AttachRefusal::TooManyViewers);
        }
        let cursor = state.resume_point(requested);
        let id = state.next_viewer;
        state.next_viewer += 1;
        state.viewers.insert(id, Position::at(cursor));
        let size = state.size;
        drop(state);
        self.wake.notify_one();
        if cursor > requested {
            // Output was lost: full-screen programs repaint on a size change (the same size is no change).
            let (cols, rows) = size;
            self.control.resize(cols, if rows > 1 { rows - 1 } else { rows + 1 });
            self.control.resize(cols, rows);
        }
        Ok(Viewer {
            terminal: self.clone(),
            id,
            cursor,
            requested,
            changed: self.changed.subscribe(),
            exit_sent: false,
            left: false,
        })
    }
}

/// One browser reading a terminal.
pub struct Viewer {
    terminal: Arc<Terminal>,
    id: u64,
    cursor: u64,
    requested: u64,
    changed: watch::Receiver<u64>,
    exit_sent: bool,
    left: bool,
}

impl Viewer {
    /// The terminal.
    pub fn terminal(&self) -> &Arc<Terminal> {
        &self.terminal
    }

    /// The offset of the next byte this viewer gets.
    pub fn offset(&self) -> u64 {
        self.cursor
    }

    /// Output it asked for that was no longer buffered: `Some(requested)` when it starts later than it asked.
    pub fn skipped_from(&self) -> Option<u64> {
        (self.cursor > self.requested).then_some(self.requested)
    }

    /// The next output (at most `limit` bytes), the shell's exit, or the terminal's end. Cancel-safe. Output is
    /// counted as received only by [`Viewer::received`].
    pub async fn next(&mut self, limit: usize) -> Output {
        loop {
            self.changed.borrow_and_update();
            {
                let state = self.terminal.lock();
                let forced = state.ended.filter(|end| !end.drain);
                if let Some(end) = forced {
                    return Output::Ended(end);
                }
                if self.cursor < state.end {
                    let from = (self.cursor - state.start) as usize;
                    let length = ((state.end - self.cursor) as usize).min(limit);
                    let (front, back) = state.ring.as_slices();
                    let mut bytes = BytesMut::with_capacity(length);
                    let to = from + length;
                    if from < front.len() {
                        bytes.extend_from_slice(&front[from..to.min(front.len())]);
                    }
                    if to > front.len() {
                        bytes.extend_from_slice(&back[from.saturating_sub(front.len())..to - front.len()]);
                    }
                    return Output::Bytes(bytes.freeze());
                }
                if let Some((at, code)) = state.exit {
                    if !self.exit_sent && at <= self.cursor {
                        self.exit_sent = true;
                        return Output::Exit(code);
                    }
                }
                if let Some(end) = state.ended {
                    return Output::Ended(end);
                }
            }
            if self.changed.changed().await.is_err() {
                return Output::Ended(End::now(CloseReason::AgentLost, CloseCode::AgentLost, "agent lost"));
            }
        }
    }

    /// The browser's socket took `bytes` of output: the buffer may drop them and the agent get credit.
    pub fn received(&mut self, bytes: usize) {
        self.cursor += bytes as u64;
        let sent = self.cursor;
        self.moved(|position| position.sent = sent);
    }

    /// The browser says it has received the output before `offset`: what it has not is kept for its reconnect,
    /// whatever was in flight when its connection dropped. A browser that acknowledges holds its terminal's output
    /// to at most the buffer beyond its acknowledgement. An offset past what was sent counts as what was sent; one
    /// behind an earlier acknowledgement changes nothing.
    pub fn acknowledge(&mut self, offset: u64) {
        self.moved(|position| {
            let offset = offset.min(position.sent);
            position.acked = Some(position.acked.map_or(offset, |acked| acked.max(offset)));
        });
    }

    /// Updates this viewer's position, then gives the agent the credit the room that made allows.
    fn moved(&self, update: impl FnOnce(&mut Position)) {
        let credit = {
            let mut state = self.terminal.lock();
            if let Some(position) = state.viewers.get_mut(&self.id) {
                update(position);
            }
            state.grant(&self.terminal.limits, &self.terminal.pool)
        };
        if credit > 0 {
            self.terminal.control.consumed(credit as usize);
        }
    }

    /// Keystrokes towards the shell.
    pub fn input(&self) -> Input {
        self.terminal.input.clone()
    }

    /// Counts input the browser sent (for the idle timeout and the session's record).
    pub fn typed(&self, bytes: usize) {
        let mut state = self.terminal.lock();
        state.bytes_in += bytes as u64;
        state.last_activity = tokio::time::Instant::now();
    }

    /// Resizes the terminal.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.terminal.lock().size = (cols, rows);
        self.terminal.control.resize(cols, rows);
    }

    /// Takes the viewer off its terminal; whether it was the last one.
    fn detach(&mut self) -> bool {
        if std::mem::replace(&mut self.left, true) {
            return false;
        }
        let last = {
            let mut state = self.terminal.lock();
            let position = state.viewers.remove(&self.id);
            if state.viewers.is_empty() {
                state.parked = position.map_or(self.cursor, |position| position.kept_from());
                state.departures += 1;
            }
            state.viewers.is_empty()
        };
        self.terminal.wake.notify_one();
        last
    }

    /// Takes the viewer off its terminal because its socket ended without closing the session. With nobody left,
    /// `why` ends the terminal (the firewall's verdict is not left for a reconnect to undo), as does a zero detach
    /// time; else it waits for a browser to come back. The offset reached, when the terminal is still open (the
    /// detach is then recorded).
    fn leave(mut self, why: Option<End>) -> Option<u64> {
        let last = self.detach();
        if last {
            if let Some(end) = why {
                self.terminal.end(end);
            } else if self.terminal.limits.detach_timeout.is_zero() {
                self.terminal.end(End { reason: CloseReason::ClientClosed, close: (1000, ""), drain: false });
            }
        }
        let open = self.terminal.lock().ended.is_none();
        open.then_some(self.cursor)
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.detach();
    }
}

/// The terminals the gateway holds, by session id.
pub struct Terminals {
    limits: ResumeLimits,
    pool: Arc<Pool>,
    live: Mutex<HashMap<String, Arc<Terminal>>>,
}

impl Terminals {
    /// None yet.
    pub fn new(limits: ResumeLimits) -> Self {
        let pool = Arc::new(Pool { limit: limits.total, used: AtomicUsize::new(0) });
        Self { limits, pool, live: Mutex::new(HashMap::new()) }
    }

    /// The open terminal `id`.
    pub fn get(&self, id: &str) -> Option<Arc<Terminal>> {
        self.live.lock().ok().and_then(|live| live.get(id).cloned())
    }
}

/// Who is opening or resuming a terminal, from where.
#[derive(Debug, Clone)]
pub struct Client {
    /// The ticket's user.
    pub user: Email,
    /// The workspace of the connection.
    pub workspace: String,
    /// The client's address, empty when unknown.
    pub client_ip: String,
    /// Its user agent (at most 256 characters).
    pub user_agent: String,
}

/// Why a terminal could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The agent did not open the session in time, or left.
    #[error("the agent did not open the session")]
    AgentDidNotOpen,
    /// The session could not be recorded.
    #[error("cannot record the session")]
    NotRecorded,
}

impl Gateway {
    /// Opens a terminal on `agent` for `client` and attaches it as the first viewer (recorded as the session's
    /// opening); its pump runs on a task of its own until the terminal ends.
    pub async fn open_terminal(
        self: &Arc<Self>,
        agent: &Arc<AgentConn>,
        client: &Client,
        cols: u16,
        rows: u16,
    ) -> Result<Viewer, OpenError> {
        let mut handle = agent.open_terminal(cols, rows);
        match tokio::time::timeout(Duration::from_secs(10), handle.recv()).await {
            Ok(Some(ToBrowser::Opened)) => {}
            _ => return Err(OpenError::AgentDidNotOpen),
        }
        let session_id = uuid::Uuid::new_v4().to_string();
        let metadata = EventMetadata::for_request(client.user.as_str(), session_id.clone());
        let open = SessionCommand::Open {
            session_id: session_id.clone(),
            user: client.user.clone(),
            workspace: client.workspace.clone(),
            agent: agent.id.clone(),
            client_ip: client.client_ip.clone(),
            user_agent: client.user_agent.clone(),
            kind: domain::relay::SessionKind::Terminal,
            port: None,
        };
        if let Err(error) = self.sessions.execute(&session_id, open, &metadata).await {
            tracing::warn!(%error, "cannot record a session");
            return Err(OpenError::NotRecorded);
        }
        self.session_opened(&session_id, &client.user);
        let limits = self.terminals.limits.clone();
        let terminal = Arc::new(Terminal {
            id: session_id.clone(),
            user: client.user.clone(),
            workspace: client.workspace.clone(),
            state: Mutex::new(State::new(cols, rows)),
            changed: watch::Sender::new(0),
            wake: Notify::new(),
            input: handle.input(),
            control: handle.control(),
            limits,
            pool: self.terminals.pool.clone(),
            metadata,
        });
        let viewer = terminal.attach(0).map_err(|_| OpenError::NotRecorded)?;
        if let Ok(mut live) = self.terminals.live.lock() {
            live.insert(session_id, terminal.clone());
        }
        tokio::spawn(pump(self.clone(), terminal, handle));
        Ok(viewer)
    }

    /// Attaches `client` to its open terminal `session_id` from output offset `offset` (recorded as a resume). The
    /// terminal must be the client's own and in the client's workspace: another user's session is answered as an
    /// unknown one.
    pub async fn resume_terminal(
        &self,
        session_id: &str,
        offset: u64,
        client: &Client,
    ) -> Result<Viewer, AttachRefusal> {
        let terminal = self
            .terminals
            .get(session_id)
            .filter(|terminal| terminal.user == client.user && terminal.workspace == client.workspace)
            .ok_or(AttachRefusal::NoSuchSession)?;
        let viewer = terminal.attach(offset)?;
        let command = SessionCommand::Resume {
            client_ip: client.client_ip.clone(),
            user_agent: client.user_agent.clone(),
            requested_offset: offset,
            offset: viewer.offset(),
        };
        if let Err(error) = Box::pin(self.sessions.execute_retrying(session_id, command, &terminal.metadata, 5)).await {
            tracing::warn!(%error, session = session_id, "cannot record a resume");
            return Err(AttachRefusal::NoSuchSession);
        }
        tracing::info!(session = session_id, user = %client.user, requested = offset, offset = viewer.offset(),
            "terminal session resumed");
        Ok(viewer)
    }

    /// A browser's socket ended without closing its session (see [`Viewer::leave`]); recorded while the session
    /// stays open.
    pub async fn detach_viewer(&self, viewer: Viewer, client_ip: &str, why: Option<End>) {
        let terminal = viewer.terminal.clone();
        let Some(offset) = viewer.leave(why) else { return };
        let command = SessionCommand::Detach { client_ip: client_ip.to_string(), offset };
        match Box::pin(self.sessions.execute_retrying(&terminal.id, command, &terminal.metadata, 5)).await {
            Ok(_) => tracing::info!(session = terminal.id, offset, "browser detached from its terminal session"),
            // The session closed meanwhile: its close is the record.
            Err(error) => tracing::debug!(%error, session = terminal.id, "a detach was not recorded"),
        }
    }
}

/// Runs a terminal: moves the agent's output into its buffer and ends it when its time comes, then records its end.
async fn pump(gateway: Arc<Gateway>, terminal: Arc<Terminal>, mut handle: SessionHandle) {
    let started = std::time::Instant::now();
    let limits = &gateway.limits;
    let mut inbox = Vec::new();
    let age = tokio::time::sleep(limits.max_age);
    let idle = tokio::time::sleep(limits.idle_timeout);
    let detach = tokio::time::sleep(Duration::MAX / 4);
    let shutdown = gateway.shutdown.cancelled();
    tokio::pin!(age, idle, detach, shutdown);
    let mut detached = false;
    let mut seen_departures = 0;
    let end = loop {
        if let Some(end) = terminal.lock().ended {
            break end;
        }
        tokio::select! {
            received = handle.recv_many(&mut inbox, PUMP_BATCH) => {
                let agent_lost = || End::drained(CloseReason::AgentLost, CloseCode::AgentLost, "agent lost");
                let mut ended = (received == 0).then(agent_lost);
                let credit = {
                    let mut state = terminal.lock();
                    for message in inbox.drain(..) {
                        match message {
                            ToBrowser::Data(bytes) => state.append(&bytes),
                            ToBrowser::Exit(code) => state.exit = Some((state.end, code)),
                            ToBrowser::Closed => {
                                ended = Some(End { reason: CloseReason::ClientClosed, close: (1000, ""), drain: true })
                            }
                            ToBrowser::AgentLost => ended = Some(agent_lost()),
                            ToBrowser::AgentRevoked => {
                                ended = Some(End::drained(
                                    CloseReason::AgentRevoked,
                                    CloseCode::AgentLost,
                                    "agent token revoked",
                                ))
                            }
                            ToBrowser::Opened => {}
                        }
                    }
                    state.grant(&terminal.limits, &terminal.pool)
                };
                if credit > 0 {
                    handle.consumed(credit as usize);
                }
                terminal.notify_viewers();
                if let Some(end) = ended {
                    terminal.end(end);
                }
            }
            _ = terminal.wake.notified() => {
                // A viewer came or went: the floor may have moved (the one holding the output back left, or one
                // attached at the end of a full buffer), and the agent may send what the room now allows.
                let (nobody, departures, credit) = {
                    let mut state = terminal.lock();
                    (state.viewers.is_empty(), state.departures, state.grant(&terminal.limits, &terminal.pool))
                };
                if credit > 0 {
                    handle.consumed(credit as usize);
                }
                // A browser that attached and left between two wake-ups is a new departure: the detach time
                // starts again from it.
                if nobody && (!detached || departures != seen_departures) {
                    detached = true;
                    seen_departures = departures;
                    let now = tokio::time::Instant::now();
                    detach.as_mut().reset(now.checked_add(terminal.limits.detach_timeout).unwrap_or(now + Duration::from_secs(86_400 * 365)));
                } else if !nobody {
                    detached = false;
                }
            }
            _ = &mut detach, if detached => {
                if terminal.lock().viewers.is_empty() {
                    terminal.end(End::now(CloseReason::DetachTimeout, CloseCode::GoingAway, "detach timeout"));
                }
                detached = false;
            }
            _ = &mut idle => {
                let deadline = terminal.lock().last_activity + limits.idle_timeout;
                if deadline <= tokio::time::Instant::now() {
                    terminal.end(End::now(CloseReason::IdleTimeout, CloseCode::IdleTimeout, "idle timeout"));
                } else {
                    idle.as_mut().reset(deadline);
                }
            }
            _ = &mut age => terminal.end(End::now(CloseReason::MaxAge, CloseCode::MaxAge, "maximum session age")),
            _ = &mut shutdown => terminal.end(End::now(CloseReason::Shutdown, CloseCode::GoingAway, "shutting down")),
        }
    };
    handle.close();
    if let Ok(mut live) = gateway.terminals.live.lock() {
        live.remove(&terminal.id);
    }
    let (bytes_in, bytes_out, charged) = {
        let mut state = terminal.lock();
        (state.bytes_in, state.end, std::mem::take(&mut state.charged))
    };
    terminal.pool.give(charged);
    let closed = SessionCommand::Close {
        bytes_in,
        bytes_out,
        duration_ms: started.elapsed().as_millis() as u64,
        reason: end.reason,
    };
    if let Err(error) = Box::pin(gateway.sessions.execute_retrying(&terminal.id, closed, &terminal.metadata, 5)).await {
        tracing::warn!(%error, session = terminal.id, "cannot record a session's end");
    }
    // A closed session takes no more commands.
    gateway.sessions.forget(&terminal.id);
    gateway.session_ended(&terminal.id);
    tracing::info!(session = terminal.id, reason = end.reason.as_str(), bytes_in, bytes_out, "terminal session closed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn state() -> State {
        State::new(80, 24)
    }

    #[test]
    fn the_parser_knows_where_sequences_and_characters_end() {
        let after = |bytes: &[u8]| Vt::Ground.feed(bytes);
        assert_eq!(after(b"plain text\r\n"), Vt::Ground);
        assert_eq!(after(b"\x1b"), Vt::Escape);
        assert_eq!(after(b"\x1b[1;3"), Vt::Csi);
        assert_eq!(after(b"\x1b[1;31m"), Vt::Ground);
        assert_eq!(after(b"\x1b[?1049h"), Vt::Ground);
        assert_eq!(after(b"\x1b]0;title"), Vt::String);
        assert_eq!(after(b"\x1b]0;title\x07"), Vt::Ground);
        assert_eq!(after(b"\x1b]8;;http://x\x1b"), Vt::StringEscape);
        assert_eq!(after(b"\x1b]8;;http://x\x1b\\"), Vt::Ground);
        assert_eq!(after(b"\x1bP1$r"), Vt::String);
        assert_eq!(after(b"\x1b(B"), Vt::Ground);
        assert_eq!(after(b"\x1b("), Vt::EscapeIntermediate);
        assert_eq!(after("é".as_bytes()), Vt::Ground);
        assert_eq!(after(&"é".as_bytes()[..1]), Vt::Utf8(1));
        assert_eq!(after(&"€".as_bytes()[..2]), Vt::Utf8(1));
        assert_eq!(after(&"🦀".as_bytes()[..1]), Vt::Utf8(3));
        assert_eq!(after("🦀".as_bytes()), Vt::Ground);
        // CAN aborts a sequence; a broken character is read afresh.
        assert_eq!(after(b"\x1b[12\x18"), Vt::Ground);
        assert_eq!(after(b"\xc3\x1b"), Vt::Escape);
    }

    #[test]
    fn unreceived_output_is_never_dropped_and_credit_follows_the_room() {
        let limits = ResumeLimits { detach_timeout: Duration::from_secs(1), buffer: 1024 * 1024, total: 1 << 30 };
        let pool = Pool { limit: limits.total, used: AtomicUsize::new(0) };
        let mut state = state();
        // Nobody attached, nobody received anything: the agent may fill the whole buffer and no more.
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        loop {
            while sent < state.granted {
                state.append(&chunk);
                sent += chunk.len() as u64;
            }
            if state.grant(&limits, &pool) == 0 {
                break;
            }
        }
        assert_eq!(state.end, 1024 * 1024);
        assert_eq!(state.start, 0, "nothing was received, so nothing was dropped");
        assert_eq!(pool.used.load(Ordering::Relaxed), 1024 * 1024 - RESERVED);
        // A viewer that received half: the agent gets the half back; the oldest half is dropped only as needed.
        state.viewers.insert(0, Position::at(512 * 1024));
        assert_eq!(state.granted, state.end);
        assert_eq!(state.grant(&limits, &pool), INITIAL_WINDOW as u64, "a window past the end");
        assert_eq!(state.start, 0, "received output stays until new output needs its room");
        state.append(&vec![b'y'; INITIAL_WINDOW as usize]);
        assert_eq!(state.start, 256 * 1024, "only the oldest output the room needed");
        assert_eq!(state.end - state.start, 1024 * 1024);
    }

    #[test]
    fn the_pool_caps_every_buffer_beyond_its_reserve() {
        let limits = ResumeLimits { detach_timeout: Duration::from_secs(1), buffer: 1024 * 1024, total: 100 };
        let pool = Pool { limit: limits.total, used: AtomicUsize::new(0) };
        let mut state = state();
        state.append(&vec![b'x'; RESERVED]);
        // Nobody received anything and the pool is almost empty: the agent gets 100 bytes, no more.
        assert_eq!(state.grant(&limits, &pool), 100);
        assert_eq!(state.grant(&limits, &pool), 0);
        // Once a viewer has it all, received output makes the room.
        state.viewers.insert(0, Position::at(RESERVED as u64));
        assert_eq!(state.grant(&limits, &pool), INITIAL_WINDOW as u64 - 100);
        assert_eq!(state.granted, state.end + INITIAL_WINDOW as u64);
        pool.give(state.charged);
        assert_eq!(pool.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_resume_past_the_buffer_starts_at_a_safe_point() {
        let mut state = state();
        // Colored lines: every line starts in the middle of nothing; the escape sequences are cut by eviction.
        let line = b"\x1b[32mgreen\x1b[0m and a long tail of plain text to fill the line quickly....\r\n";
        for _ in 0..2000 {
            state.append(line);
        }
        let end = state.end;
        state.viewers.insert(0, Position::at(end));
        state.evict_to(state.end / 2 + 3);
        let resumed = state.resume_point(0);
        assert!(resumed >= state.start && resumed < state.end);
        let from = (resumed - state.start) as usize;
        let rest: Vec<u8> = state.ring.iter().skip(from).copied().collect();
        // It starts where the stream was between sequences: replaying the rest from Ground ends in Ground and its
        // first byte begins a sequence or is plain.
        assert_eq!(Vt::Ground.feed(&rest), Vt::Ground);
        let whole: Vec<u8> = std::iter::repeat_n(line.as_slice(), 2000).flatten().copied().collect();
        assert_eq!(Vt::Ground.feed(&whole[..resumed as usize]), Vt::Ground);
        // An offset still buffered is served from there.
        assert_eq!(state.resume_point(state.start + 1), state.start + 1);
    }
}
