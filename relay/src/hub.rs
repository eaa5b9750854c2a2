//! The gateway's side of agent connections: which workspace has which connected agent, and the sessions each
//! agent connection carries.
//!
//! Transport-free: whoever owns an agent's WebSocket feeds decoded frames into [`AgentConn::handle_frame`] and writes
//! out the frames it receives from [`Hub::register`]'s receiver. Browser sessions talk to their agent through a
//! [`SessionHandle`].
//!
//! Flow control, per session: agent → browser, the agent may have [`INITIAL_WINDOW`] bytes outstanding; the gateway
//! returns `Credit` only once the browser's socket accepted the bytes ([`SessionHandle::consumed`]), in batches of
//! at least [`CREDIT_BATCH`] bytes. Browser →
//! agent, [`SessionHandle::send_input`] waits for credit, so a browser typing into a stuck shell stalls only itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};

use crate::mux::{Frame, MuxError, SessionKind, Window, CREDIT_BATCH, INITIAL_WINDOW, MAX_DATA};

/// What an agent sends a browser session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToBrowser {
    /// The agent opened the session.
    Opened,
    /// Terminal output.
    Data(Vec<u8>),
    /// The shell exited.
    Exit(i32),
    /// The agent closed the session.
    Closed,
    /// The agent disconnected.
    AgentLost,
    /// The agent was disconnected because its token was revoked.
    AgentRevoked,
}

/// Why a task gave no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The agent does not run tasks (it is older than this gateway).
    #[error("the workspace's agent is too old to run git tasks: restart the workspace")]
    Unsupported,
    /// The agent disconnected before answering.
    #[error("the workspace's agent disconnected before answering")]
    AgentLost,
    /// No answer within the task's time.
    #[error("the workspace's agent did not answer in time")]
    Timeout,
    /// The task or its answer is too large.
    #[error("the task or its answer is too large")]
    TooLarge,
    /// The answer is not an outcome.
    #[error("the workspace's agent answered with something that is not an outcome: {0}")]
    Malformed(String),
}

/// Refusal of an agent's registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace {0} already has a connected agent")]
pub struct WorkspaceTaken(pub String);

struct SessionSlot {
    to_browser: mpsc::UnboundedSender<ToBrowser>,
    input_credit: Arc<Semaphore>,
    output_window: Window,
    /// Output the browser accepted whose credit is not yet returned to the agent.
    unreturned: u32,
}

/// One connected agent.
pub struct AgentConn {
    /// The connection's id (as sessions record it).
    pub id: String,
    /// The workspace it serves.
    pub workspace: String,
    /// The tags it announced.
    pub tags: BTreeMap<String, String>,
    /// The protocol features it announced (`hello`'s `features`: [`crate::task::FEATURE_GIT`]).
    pub features: Vec<String>,
    to_agent: mpsc::UnboundedSender<Frame>,
    sessions: Mutex<HashMap<u32, SessionSlot>>,
    next_session: AtomicU32,
}

impl AgentConn {
    /// The owner tag (`RDE_OWNER_EMAIL`), if announced.
    pub fn owner(&self) -> Option<&str> {
        self.tags.get("RDE_OWNER_EMAIL").map(String::as_str)
    }

    /// Sessions open on this connection.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|sessions| sessions.len()).unwrap_or(0)
    }

    /// Applies one frame from the agent. An error means the agent broke the protocol (the caller closes it).
    /// Frames for unknown sessions are ignored (a session the gateway already closed).
    pub fn handle_frame(&self, frame: Frame) -> Result<(), MuxError> {
        self.handle_frames([frame])
    }

    /// Applies frames that arrived together, in order. Consecutive `Data` for one session reach its browser as one
    /// piece of output (of up to [`MAX_DATA`] bytes), so what the agent wrote together leaves for the browser as one
    /// message.
    pub fn handle_frames(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), MuxError> {
        let Ok(mut sessions) = self.sessions.lock() else { return Ok(()) };
        // Output gathered for one session, not yet handed to it.
        let mut gathered: Option<(u32, Vec<u8>)> = None;
        let flush = |gathered: &mut Option<(u32, Vec<u8>)>, sessions: &HashMap<u32, SessionSlot>| {
            if let Some((session, bytes)) = gathered.take() {
                if let Some(slot) = sessions.get(&session) {
                    let _ = slot.to_browser.send(ToBrowser::Data(bytes));
                }
            }
        };
        let mut outcome = Ok(());
        for frame in frames {
            let session = frame.session();
            if let Frame::Data { bytes, .. } = &frame {
                let Some(slot) = sessions.get_mut(&session) else { continue };
                if let Err(error) = slot.output_window.consume(bytes.len()) {
                    outcome = Err(error);
                    break;
                }
                match &mut gathered {
                    Some((gathering, output)) if *gathering == session && output.len() + bytes.len() <= MAX_DATA => {
                        output.extend_from_slice(bytes)
                    }
                    _ => {
                        flush(&mut gathered, &sessions);
                        if let Frame::Data { bytes, .. } = frame {
                            gathered = Some((session, bytes));
                        }
                    }
                }
                continue;
            }
            flush(&mut gathered, &sessions);
            Self::apply(&mut sessions, frame);
        }
        flush(&mut gathered, &sessions);
        outcome
    }

    /// Applies one frame other than `Data`.
    fn apply(sessions: &mut HashMap<u32, SessionSlot>, frame: Frame) {
        let session = frame.session();
        let Some(slot) = sessions.get_mut(&session) else { return };
        let message = match frame {
            Frame::Opened { .. } => ToBrowser::Opened,
            Frame::Data { bytes, .. } => ToBrowser::Data(bytes),
            Frame::Credit { bytes, .. } => {
                let room = (INITIAL_WINDOW as usize).saturating_sub(slot.input_credit.available_permits());
                slot.input_credit.add_permits((bytes as usize).min(room));
                return;
            }
            Frame::Exit { code, .. } => ToBrowser::Exit(code),
            Frame::Close { .. } => {
                let slot = sessions.remove(&session);
                if let Some(slot) = slot {
                    slot.input_credit.close();
                    let _ = slot.to_browser.send(ToBrowser::Closed);
                }
                return;
            }
            Frame::Open { .. } | Frame::Resize { .. } | Frame::Task { .. } => return,
        };
        let _ = slot.to_browser.send(message);
    }

    /// Opens a terminal session on this agent.
    pub fn open_terminal(self: &Arc<Self>, cols: u16, rows: u16) -> SessionHandle {
        self.open_session(|session| Frame::Open { session, kind: SessionKind::Terminal, cols, rows, port: 0 })
    }

    /// Opens a port-forward session to `port` on the agent's loopback interface (a preview's connection). Only for an
    /// agent that announced [`crate::forward::FEATURE_PREVIEW`].
    pub fn open_preview(self: &Arc<Self>, port: u16) -> SessionHandle {
        self.open_session(|session| Frame::Open { session, kind: SessionKind::Preview, cols: 0, rows: 0, port })
    }

    /// Registers a new session, with its windows, and sends the agent the frame that opens it.
    fn open_session(self: &Arc<Self>, opening: impl FnOnce(u32) -> Frame) -> SessionHandle {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (to_browser, from_agent) = mpsc::unbounded_channel();
        let input_credit = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(
                session,
                SessionSlot {
                    to_browser,
                    input_credit: input_credit.clone(),
                    output_window: Window::new(session),
                    unreturned: 0,
                },
            );
        }
        let _ = self.to_agent.send(opening(session));
        SessionHandle { session, conn: self.clone(), input_credit, from_agent, closed: false }
    }

    /// Whether the agent announced `feature`.
    pub fn supports(&self, feature: &str) -> bool {
        self.features.iter().any(|announced| announced == feature)
    }

    /// Opens a task session running `task` (its JSON at most [`MAX_DATA`] bytes, else `None`).
    fn open_task(self: &Arc<Self>, task: &crate::task::GitTask) -> Option<SessionHandle> {
        let body = serde_json::to_vec(task).ok().filter(|body| body.len() <= MAX_DATA)?;
        Some(self.open_session(|session| Frame::Task { session, body }))
    }

    /// Runs `task` on this agent and waits for its outcome, at most the task's own deadline. Dropping the future
    /// closes the session (the agent then kills its `git`).
    pub async fn run_task(
        self: &Arc<Self>,
        task: &crate::task::GitTask,
    ) -> Result<crate::task::TaskOutcome, TaskError> {
        if !self.supports(crate::task::FEATURE_GIT) {
            return Err(TaskError::Unsupported);
        }
        let mut handle = self.open_task(task).ok_or(TaskError::TooLarge)?;
        let collect = async {
            let mut collected = Vec::new();
            loop {
                match handle.recv().await {
                    Some(ToBrowser::Opened) | Some(ToBrowser::Exit(_)) => {}
                    Some(ToBrowser::Data(bytes)) => {
                        if collected.len() + bytes.len() > crate::task::MAX_OUTCOME_BYTES {
                            return Err(TaskError::TooLarge);
                        }
                        handle.consumed(bytes.len());
                        collected.extend_from_slice(&bytes);
                    }
                    Some(ToBrowser::Closed) => break,
                    Some(ToBrowser::AgentLost) | Some(ToBrowser::AgentRevoked) | None => {
                        return Err(TaskError::AgentLost)
                    }
                }
            }
            serde_json::from_slice(&collected).map_err(|error| TaskError::Malformed(error.to_string()))
        };
        let outcome = tokio::time::timeout(task.deadline(), collect).await.map_err(|_| TaskError::Timeout)?;
        handle.close();
        outcome
    }

    /// Tells every session why the agent left (`ToBrowser::AgentLost` or `ToBrowser::AgentRevoked`) and forgets it.
    fn gone(&self, why: ToBrowser) {
        if let Ok(mut sessions) = self.sessions.lock() {
            for (_, slot) in sessions.drain() {
                // The reason first: a session whose input is waiting for credit sees the closed window too.
                let _ = slot.to_browser.send(why.clone());
                slot.input_credit.close();
            }
        }
    }
}

/// A browser session's end of its agent.
pub struct SessionHandle {
    /// The session's number on the agent connection.
    pub session: u32,
    conn: Arc<AgentConn>,
    input_credit: Arc<Semaphore>,
    from_agent: mpsc::UnboundedReceiver<ToBrowser>,
    closed: bool,
}

impl SessionHandle {
    /// The agent connection.
    pub fn agent(&self) -> &Arc<AgentConn> {
        &self.conn
    }

    /// The next message from the agent (`None`: the channel is gone, treat as lost).
    pub async fn recv(&mut self) -> Option<ToBrowser> {
        self.from_agent.recv().await
    }

    /// Waits for the agent's next message, then appends it and up to `limit - 1` more that are already waiting to
    /// `inbox`; returns how many were appended (0: the channel is gone, treat as lost). Cancel-safe. Lets a session
    /// send the output that piled up while it was writing as one message.
    pub async fn recv_many(&mut self, inbox: &mut Vec<ToBrowser>, limit: usize) -> usize {
        self.from_agent.recv_many(inbox, limit).await
    }

    /// Why the agent went away, if it did: the first [`ToBrowser::AgentLost`] or [`ToBrowser::AgentRevoked`] already
    /// waiting (output queued before it is dropped). For a session whose input found the window closed.
    pub fn departure(&mut self) -> Option<ToBrowser> {
        while let Ok(message) = self.from_agent.try_recv() {
            if matches!(message, ToBrowser::AgentLost | ToBrowser::AgentRevoked) {
                return Some(message);
            }
        }
        None
    }

    /// Polls for the agent's next message (for [`crate::channel::Channel`]).
    pub(crate) fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<ToBrowser>> {
        self.from_agent.poll_recv(cx)
    }

    /// The window towards the agent (for [`crate::channel::Channel`]).
    pub(crate) fn credit(&self) -> Arc<Semaphore> {
        self.input_credit.clone()
    }

    /// Sends bytes the window already allowed (for [`crate::channel::Channel`]); `false` when the agent is gone.
    pub(crate) fn send_granted(&self, bytes: Vec<u8>) -> bool {
        self.conn.to_agent.send(Frame::Data { session: self.session, bytes }).is_ok()
    }

    /// Sends keystrokes, waiting for credit. `false` when the session or agent is gone.
    pub async fn send_input(&self, bytes: &[u8]) -> bool {
        let mut pending = bytes.to_vec();
        let input = self.input();
        while !pending.is_empty() {
            if input.send_front(&mut pending).await.is_none() {
                return false;
            }
        }
        true
    }

    /// The sending half for keystrokes (usable while [`SessionHandle::recv`] is pending).
    pub fn input(&self) -> Input {
        Input { session: self.session, conn: self.conn.clone(), credit: self.input_credit.clone() }
    }

    /// The browser accepted `bytes` of output: return them to the agent as credit (see [`Control::consumed`]).
    pub fn consumed(&self, bytes: usize) {
        self.control().consumed(bytes);
    }

    /// Resizes the terminal.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.control().resize(cols, rows);
    }

    /// The half that returns credit and resizes (usable while [`SessionHandle::recv`] is pending, from elsewhere).
    pub fn control(&self) -> Control {
        Control { session: self.session, conn: self.conn.clone() }
    }

    /// Closes the session on the agent (also done on drop).
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Ok(mut sessions) = self.conn.sessions.lock() {
                sessions.remove(&self.session);
            }
            let _ = self.conn.to_agent.send(Frame::Close { session: self.session });
        }
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.close();
    }
}

/// A session's credit and size towards its agent, for whoever consumes its output.
#[derive(Clone)]
pub struct Control {
    session: u32,
    conn: Arc<AgentConn>,
}

impl Control {
    /// `bytes` of output were consumed: return them to the agent as credit, once at least [`CREDIT_BATCH`] bytes
    /// are due (the window is granted here at the moment the credit is sent, so the gateway never counts on window
    /// the agent has not been given).
    pub fn consumed(&self, bytes: usize) {
        let due = match self.conn.sessions.lock() {
            Ok(mut sessions) => sessions.get_mut(&self.session).and_then(|slot| {
                slot.unreturned = slot.unreturned.saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
                (slot.unreturned >= CREDIT_BATCH).then(|| {
                    let due = std::mem::take(&mut slot.unreturned);
                    slot.output_window.grant(due);
                    due
                })
            }),
            Err(_) => None,
        };
        if let Some(bytes) = due {
            let _ = self.conn.to_agent.send(Frame::Credit { session: self.session, bytes });
        }
    }

    /// Resizes the terminal.
    pub fn resize(&self, cols: u16, rows: u16) {
        let _ = self.conn.to_agent.send(Frame::Resize { session: self.session, cols, rows });
    }
}

/// Keystrokes towards a session's agent.
#[derive(Clone)]
pub struct Input {
    session: u32,
    conn: Arc<AgentConn>,
    credit: Arc<Semaphore>,
}

impl Input {
    /// Sends the front of `pending` (at most [`MAX_DATA`] bytes) once the window allows it, and removes it from
    /// `pending`; when all of it fits in one chunk, the vector itself becomes the frame (no copy). Returns how many
    /// bytes were sent, `None` when the session or agent is gone. Cancel-safe: dropped before it completes, it has
    /// sent nothing (so it can be one branch of a `select!` that keeps forwarding output meanwhile).
    pub async fn send_front(&self, pending: &mut Vec<u8>) -> Option<usize> {
        let length = pending.len().min(MAX_DATA);
        let permit = self.credit.acquire_many(length as u32).await.ok()?;
        permit.forget();
        let bytes = if length == pending.len() { std::mem::take(pending) } else { pending.drain(..length).collect() };
        self.conn.to_agent.send(Frame::Data { session: self.session, bytes }).ok()?;
        Some(length)
    }
}

/// Every connected agent, by workspace.
#[derive(Default)]
pub struct Hub {
    agents: Mutex<HashMap<String, Arc<AgentConn>>>,
    next_id: AtomicU64,
    /// Moves whenever an agent registers or goes: answers that depend on which agents are connected (a workspace's
    /// status) are cached under it.
    epoch: AtomicU64,
}

impl Hub {
    /// A hub with no agents.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an agent for `workspace`; refused while another live agent holds it. The receiver yields the frames
    /// to write to the agent.
    pub fn register(
        &self,
        workspace: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(Arc<AgentConn>, mpsc::UnboundedReceiver<Frame>), WorkspaceTaken> {
        self.register_with(workspace, tags, Vec::new())
    }

    /// [`Hub::register`], with the protocol features the agent announced.
    pub fn register_with(
        &self,
        workspace: &str,
        tags: BTreeMap<String, String>,
        features: Vec<String>,
    ) -> Result<(Arc<AgentConn>, mpsc::UnboundedReceiver<Frame>), WorkspaceTaken> {
        let mut agents = self.agents.lock().map_err(|_| WorkspaceTaken(workspace.to_string()))?;
        if agents.contains_key(workspace) {
            return Err(WorkspaceTaken(workspace.to_string()));
        }
        let (to_agent, frames) = mpsc::unbounded_channel();
        let id = format!("agent-{}-{}", self.next_id.fetch_add(1, Ordering::Relaxed) + 1, workspace);
        let conn = Arc::new(AgentConn {
            id,
            workspace: workspace.to_string(),
            tags,
            features,
            to_agent,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU32::new(1),
        });
        agents.insert(workspace.to_string(), conn.clone());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Ok((conn, frames))
    }

    /// Forgets a disconnected agent and tells each of its sessions ([`ToBrowser::AgentLost`]).
    pub fn unregister(&self, conn: &Arc<AgentConn>) {
        self.forget(conn);
        conn.gone(ToBrowser::AgentLost);
    }

    /// Forgets an agent disconnected because its token was revoked and tells each of its sessions
    /// ([`ToBrowser::AgentRevoked`]).
    pub fn unregister_revoked(&self, conn: &Arc<AgentConn>) {
        self.forget(conn);
        conn.gone(ToBrowser::AgentRevoked);
    }

    fn forget(&self, conn: &Arc<AgentConn>) {
        if let Ok(mut agents) = self.agents.lock() {
            if agents.get(&conn.workspace).is_some_and(|current| Arc::ptr_eq(current, conn)) {
                agents.remove(&conn.workspace);
                self.epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// A number that moves whenever the set of connected agents changes.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The agent serving `workspace`.
    pub fn get(&self, workspace: &str) -> Option<Arc<AgentConn>> {
        self.agents.lock().ok().and_then(|agents| agents.get(workspace).cloned())
    }

    /// Every connected agent, ordered by workspace.
    pub fn list(&self) -> Vec<Arc<AgentConn>> {
        let mut all: Vec<_> = self.agents.lock().map(|agents| agents.values().cloned().collect()).unwrap_or_default();
        all.sort_by(|a, b| a.workspace.cmp(&b.workspace));
        all
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_workspace_has_one_agent_and_sessions_hear_it_leave() {
        let hub = Hub::new();
        let (conn, mut frames) = hub.register("ws-1", BTreeMap::new()).unwrap();
        assert!(hub.register("ws-1", BTreeMap::new()).is_err());
        let mut session = conn.open_terminal(80, 24);
        assert!(matches!(frames.recv().await, Some(Frame::Open { cols: 80, rows: 24, .. })));
        conn.handle_frame(Frame::Data { session: session.session, bytes: b"hi".to_vec() }).unwrap();
        assert_eq!(session.recv().await, Some(ToBrowser::Data(b"hi".to_vec())));
        // More output than the window is a protocol error.
        let too_much = Frame::Data { session: session.session, bytes: vec![0; MAX_DATA] };
        for _ in 0..(INITIAL_WINDOW as usize / MAX_DATA - 1) {
            conn.handle_frame(too_much.clone()).unwrap();
        }
        assert!(conn.handle_frame(too_much).is_err());
        hub.unregister(&conn);
        assert!(hub.get("ws-1").is_none());
        while let Some(message) = session.recv().await {
            if message == ToBrowser::AgentLost {
                break;
            }
        }
        assert!(!session.send_input(b"x").await);
        assert!(hub.register("ws-1", BTreeMap::new()).is_ok());
    }

    #[tokio::test]
    async fn output_that_arrives_together_reaches_its_session_as_one_piece() {
        let hub = Hub::new();
        let (conn, _frames) = hub.register("ws-1", BTreeMap::new()).unwrap();
        let mut one = conn.open_terminal(80, 24);
        let mut two = conn.open_terminal(80, 24);
        let data = |session: u32, bytes: &[u8]| Frame::Data { session, bytes: bytes.to_vec() };
        conn.handle_frames([
            data(one.session, b"ab"),
            data(one.session, b"cd"),
            data(two.session, b"xy"),
            data(one.session, b"ef"),
            Frame::Exit { session: one.session, code: 3 },
            data(one.session, b"gh"),
        ])
        .unwrap();
        // In order; runs of one session's output merge, an exit ends a run.
        assert_eq!(one.recv().await, Some(ToBrowser::Data(b"abcd".to_vec())));
        assert_eq!(one.recv().await, Some(ToBrowser::Data(b"ef".to_vec())));
        assert_eq!(one.recv().await, Some(ToBrowser::Exit(3)));
        assert_eq!(one.recv().await, Some(ToBrowser::Data(b"gh".to_vec())));
        assert_eq!(two.recv().await, Some(ToBrowser::Data(b"xy".to_vec())));
        // A piece is at most MAX_DATA bytes.
        conn.handle_frames([data(two.session, &vec![1; MAX_DATA - 1]), data(two.session, &[2, 3])]).unwrap();
        assert_eq!(two.recv().await, Some(ToBrowser::Data(vec![1; MAX_DATA - 1])));
        assert_eq!(two.recv().await, Some(ToBrowser::Data(vec![2, 3])));
        // A window overrun anywhere in the batch is a protocol error; what came before it is delivered.
        let full = (0..INITIAL_WINDOW as usize / MAX_DATA).map(|_| data(two.session, &vec![0; MAX_DATA]));
        assert!(conn.handle_frames(full.chain([data(two.session, b"!")])).is_err());
    }

    #[tokio::test]
    async fn sessions_hear_that_their_agent_was_revoked() {
        let hub = Hub::new();
        let (conn, _frames) = hub.register("ws-1", BTreeMap::new()).unwrap();
        let mut session = conn.open_terminal(80, 24);
        hub.unregister_revoked(&conn);
        assert!(hub.get("ws-1").is_none());
        // Input finds the window closed; the reason is waiting.
        assert!(!session.send_input(b"x").await);
        assert_eq!(session.departure(), Some(ToBrowser::AgentRevoked));
        assert_eq!(session.departure(), None);
        assert_eq!(session.recv().await, None);
    }

    #[tokio::test]
    async fn output_credit_goes_back_in_batches_and_never_stalls_the_agent() {
        let hub = Hub::new();
        let (conn, mut frames) = hub.register("ws-1", BTreeMap::new()).unwrap();
        let session = conn.open_terminal(80, 24);
        assert!(matches!(frames.recv().await, Some(Frame::Open { .. })));
        // The agent fills its whole window, then keeps going on credit: 4 MiB in all, never overrunning.
        let chunk = vec![7u8; 16 * 1024];
        let (mut window, mut credits) = (INITIAL_WINDOW as usize, 0);
        for _ in 0..256 {
            while window < chunk.len() {
                match frames.try_recv() {
                    Ok(Frame::Credit { bytes, .. }) => {
                        assert!(bytes >= CREDIT_BATCH);
                        window += bytes as usize;
                        credits += 1;
                    }
                    other => panic!("the agent would stall with {window} bytes of window: {other:?}"),
                }
            }
            conn.handle_frame(Frame::Data { session: session.session, bytes: chunk.clone() }).unwrap();
            window -= chunk.len();
            session.consumed(chunk.len());
        }
        while let Ok(Frame::Credit { bytes, .. }) = frames.try_recv() {
            window += bytes as usize;
            credits += 1;
        }
        // Every byte consumed came back, in batches of CREDIT_BATCH: 64 credits for 4 MiB, not 256.
        assert_eq!(window, INITIAL_WINDOW as usize);
        assert_eq!(credits, 256 * chunk.len() / CREDIT_BATCH as usize);
        // Less than a batch stays due: nothing is sent for a keystroke's echo.
        session.consumed(1);
        assert!(frames.try_recv().is_err());
    }
}
