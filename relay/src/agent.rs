//! The workspace agent: dials out to the gateway over one WebSocket, announces itself, and runs each session it is
//! asked to open: a shell in a real PTY, a git task, or a connection to a port of its own loopback interface (a
//! preview, [`crate::forward`]).
//!
//! Handshake: the agent's first message is the text frame [`Hello`] (its token travels there, never in the URL);
//! the gateway answers [`Welcome`] or closes with one of the [`close`] codes. Then binary [`Frame`]s flow both ways.
//! On any disconnection the agent ends its shells and reconnects with exponential backoff and jitter; a refused
//! token ends it.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use filedescriptor::FileDescriptor;
use futures::{SinkExt, StreamExt};
use portable_pty::{native_pty_system, ChildKiller, CommandBuilder, MasterPty, PtySize};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::mux::{Frame, SessionKind, INITIAL_WINDOW};

/// Close codes the gateway ends an agent's connection with. **API Boundary:** documented in docs/API.md.
pub mod close {
    /// The first message was not a valid `hello`, or did not come in time.
    pub const HELLO_REQUIRED: u16 = 4000;
    /// The agent token is unknown or revoked (at `hello`, or later when an admin revokes it while the agent is
    /// connected). The agent stops.
    pub const TOKEN_REFUSED: u16 = 4401;
    /// The agent token is bound to another workspace than the one announced (or, minted before tokens were bound,
    /// to none). The agent stops.
    pub const WORKSPACE_FORBIDDEN: u16 = 4403;
    /// Another live agent already serves the workspace.
    pub const WORKSPACE_TAKEN: u16 = 4409;
    /// A malformed frame or a window overrun.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
}

/// The agent's first message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "hello")]
pub struct Hello {
    /// The agent token.
    pub token: String,
    /// The workspace it serves.
    pub workspace: String,
    /// Its own tags. The discovery tags (`RDE_OWNER_EMAIL`, `RDE_DISPLAY_NAME`, `BLUEPRINT_KEY`,
    /// `BLUEPRINT_PROJECT_ID`) are taken from the agent token, never from here.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The protocol features it supports beyond terminals ([`crate::task::FEATURE_GIT`]); an older gateway ignores
    /// the field, an older agent sends none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl Hello {
    /// The gateway's parse of an agent's first message: a JSON object whose `type` is `"hello"`, with the fields
    /// above (serde alone ignores `type` when reading a struct, and reads an array as the struct's fields in order).
    pub fn parse(text: &str) -> Option<Hello> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        if value.get("type").and_then(serde_json::Value::as_str) != Some("hello") {
            return None;
        }
        serde_json::from_value(value).ok()
    }
}

/// The gateway's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "welcome")]
pub struct Welcome {
    /// The connection's id.
    pub agent: String,
}

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The gateway's base URL (`http(s)://` or `ws(s)://`).
    pub server: String,
    /// The agent token.
    pub token: String,
    /// The workspace served.
    pub workspace: String,
    /// Tags to announce.
    pub tags: BTreeMap<String, String>,
    /// The shell to run.
    pub shell: String,
    /// Where shells start (default: `$HOME`).
    pub dir: Option<std::path::PathBuf>,
    /// Whom the agent trusts for `wss://` (see [`tls_config`]).
    pub tls: Arc<rustls::ClientConfig>,
}

/// The TLS settings for `wss://`: the Mozilla roots (`webpki-roots`) plus the certificates of `extra_roots`, a PEM
/// bundle (an organisation's private CA, for a gateway whose certificate it signed). A bundle without one certificate,
/// or with one that is not a CA certificate rustls accepts as a root, is refused.
pub fn tls_config(extra_roots: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = extra_roots {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| AgentError::BadCaFile(error.to_string()))?;
        if certificates.is_empty() {
            return Err(AgentError::BadCaFile("no PEM certificate in it".into()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| AgentError::BadCaFile(error.to_string()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|error| AgentError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway refused the token.
    #[error("the gateway refused the agent token")]
    TokenRefused,
    /// The token is bound to another workspace (or to none).
    #[error("the agent token does not serve this workspace (it is bound to another one): mint one for this workspace")]
    WorkspaceForbidden,
    /// The server URL is not usable.
    #[error("bad server URL {0:?}")]
    BadUrl(String),
    /// The CA bundle given for `wss://` is not usable.
    #[error("bad CA file: {0}")]
    BadCaFile(String),
    /// TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
}

/// The WebSocket URL of the agent endpoint.
pub fn connect_url(server: &str) -> Result<String, AgentError> {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        return Err(AgentError::BadUrl(server.to_string()));
    };
    Ok(format!("{base}/api/v1/agent/connect"))
}

/// Runs the agent until its token is refused: connects, serves, reconnects with backoff.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let url = connect_url(&config.server)?;
    let mut failures: u32 = 0;
    loop {
        match serve_once(&config, &url).await {
            Ok(Outcome::TokenRefused) => return Err(AgentError::TokenRefused),
            Ok(Outcome::WorkspaceForbidden) => return Err(AgentError::WorkspaceForbidden),
            Ok(Outcome::Served) => {
                failures = 0;
                tracing::warn!("disconnected from the gateway; reconnecting");
            }
            Ok(Outcome::Refused(code)) => tracing::warn!(code, "the gateway refused the connection"),
            Err(error) => tracing::warn!(%error, "cannot reach the gateway"),
        }
        failures = failures.saturating_add(1);
        let base = 250u64.saturating_mul(1u64 << failures.min(7)).min(30_000);
        let jitter = rand::random::<u64>() % (base / 2 + 1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter)).await;
    }
}

enum Outcome {
    /// Was connected and welcomed, then lost the connection.
    Served,
    /// Closed before the welcome.
    Refused(u16),
    /// The token was refused.
    TokenRefused,
    /// The token does not serve the workspace.
    WorkspaceForbidden,
}

/// The agent's WebSocket settings. Reads: 64 KiB at a time (tungstenite 0.30 allocates its read buffer up front and
/// zero-fills its free part before every read, so a bigger buffer costs each keystroke; with 256 KiB a bench run had
/// a 1.2 ms keystroke p99, with 64 KiB 105 µs; 0.24 read 4 KiB at a time). Writes: frames gather in a buffer of up
/// to [`WRITE_BUFFER`] bytes; the writer flushes it whenever no more frames are queued, so nothing waits for it to
/// fill.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(64 * 1024).write_buffer_size(WRITE_BUFFER)
}

/// Frames are written to the socket once this many bytes are fed (or at the end of a batch).
const WRITE_BUFFER: usize = 64 * 1024;
/// The most frames the writer feeds before it flushes.
const WRITE_BATCH_FRAMES: usize = 64;

async fn serve_once(config: &AgentConfig, url: &str) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let request = url.into_client_request()?;
    // Nagle off: keystrokes and credits are small frames sent back to back (see src/app.rs, tcp_nodelay).
    let connector = tokio_tungstenite::Connector::Rustls(config.tls.clone());
    let (socket, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(websocket_config()), true, Some(connector))
            .await?;
    let (mut sink, mut stream) = socket.split();
    let hello = Hello {
        token: config.token.clone(),
        workspace: config.workspace.clone(),
        tags: config.tags.clone(),
        features: vec![crate::task::FEATURE_GIT.to_string(), crate::forward::FEATURE_PREVIEW.to_string()],
    };
    sink.send(Message::Text(serde_json::to_string(&hello)?.into())).await?;
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => {
                let welcome: Welcome = serde_json::from_str(&text)?;
                tracing::info!(agent = welcome.agent, workspace = config.workspace, "connected to the gateway");
                break;
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|frame| u16::from(frame.code)).unwrap_or(1005);
                return Ok(match code {
                    close::TOKEN_REFUSED => Outcome::TokenRefused,
                    close::WORKSPACE_FORBIDDEN => Outcome::WorkspaceForbidden,
                    code => Outcome::Refused(code),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.into()),
            None => return Ok(Outcome::Refused(1006)),
        }
    }

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Frame>();
    // Frames already queued (a shell's output and credits, several sessions') leave together: fed into the
    // WebSocket's write buffer, written when it holds `WRITE_BUFFER` bytes and flushed when the queue is empty, so a
    // lone keystroke's echo is still written at once.
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let mut fed = sink.feed(Message::Binary(frame.encode().into())).await.is_ok();
            let mut batch = 1;
            while fed && batch < WRITE_BATCH_FRAMES {
                let Ok(frame) = out_rx.try_recv() else { break };
                fed = sink.feed(Message::Binary(frame.encode().into())).await.is_ok();
                batch += 1;
            }
            if !fed || sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut sessions: HashMap<u32, Shell> = HashMap::new();
    let mut tasks: HashMap<u32, TaskSession> = HashMap::new();
    let mut forwards: HashMap<u32, crate::forward::Forward> = HashMap::new();
    let mut outcome = Outcome::Served;
    while let Some(message) = stream.next().await {
        let bytes = match message {
            Ok(Message::Binary(bytes)) => bytes,
            Ok(Message::Close(frame)) => {
                // The token was revoked while connected: stop, as when it is refused at `hello`.
                if frame.is_some_and(|frame| u16::from(frame.code) == close::TOKEN_REFUSED) {
                    outcome = Outcome::TokenRefused;
                }
                break;
            }
            Err(_) => break,
            Ok(_) => continue,
        };
        let frame = match Frame::decode(&bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "malformed frame from the gateway");
                break;
            }
        };
        match frame {
            Frame::Open { session, kind: SessionKind::Preview, port, .. } => {
                forwards.insert(session, crate::forward::Forward::spawn(session, port, &out_tx));
            }
            Frame::Open { session, kind: SessionKind::Terminal, cols, rows, .. } => {
                match Shell::spawn(&config.shell, config.dir.as_deref(), session, cols, rows, &out_tx) {
                    Ok(shell) => {
                        sessions.insert(session, shell);
                    }
                    Err(error) => {
                        tracing::warn!(%error, session, "cannot start a shell");
                        let _ = out_tx.send(Frame::Close { session });
                    }
                }
            }
            Frame::Data { session, bytes } => {
                if let Some(shell) = sessions.get(&session) {
                    let _ = shell.input.send(ToShell::Input(bytes));
                } else if let Some(forward) = forwards.get(&session) {
                    forward.input(bytes);
                }
            }
            Frame::Resize { session, cols, rows } => {
                if let Some(shell) = sessions.get(&session) {
                    let _ = shell.input.send(ToShell::Resize(cols, rows));
                }
            }
            Frame::Credit { session, bytes } => {
                if let Some(forward) = forwards.get(&session) {
                    forward.credit(bytes);
                }
                let window = sessions.get(&session).map(|shell| &shell.window);
                if let Some(window) = window.or_else(|| tasks.get(&session).map(|task| &task.window)) {
                    let room = (INITIAL_WINDOW as usize).saturating_sub(window.available_permits());
                    window.add_permits((bytes as usize).min(room));
                }
            }
            Frame::Close { session } => {
                if let Some(mut shell) = sessions.remove(&session) {
                    shell.kill();
                }
                if let Some(task) = tasks.remove(&session) {
                    task.abort.abort();
                }
                forwards.remove(&session);
            }
            Frame::Task { session, body } => {
                let task = TaskSession::spawn(session, &body, config.dir.as_deref(), &out_tx);
                tasks.insert(session, task);
            }
            Frame::Opened { .. } | Frame::Exit { .. } => {}
        }
        sessions.retain(|_, shell| !shell.finished());
        tasks.retain(|_, task| !task.abort.is_finished());
        forwards.retain(|_, forward| !forward.finished());
    }
    for (_, mut shell) in sessions.drain() {
        shell.kill();
    }
    for (_, task) in tasks.drain() {
        task.abort.abort();
    }
    forwards.clear();
    drop(out_tx);
    writer.abort();
    Ok(outcome)
}

/// One git task: its window towards the gateway, and its work (aborted when the gateway closes the session, which
/// kills its `git`).
struct TaskSession {
    window: Arc<Semaphore>,
    abort: tokio::task::AbortHandle,
}

impl TaskSession {
    fn spawn(session: u32, body: &[u8], dir: Option<&std::path::Path>, out: &mpsc::UnboundedSender<Frame>) -> Self {
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        let task = serde_json::from_slice::<crate::task::GitTask>(body);
        let dir = dir
            .map(std::path::Path::to_path_buf)
            .or_else(|| std::env::var_os("HOME").map(std::path::PathBuf::from))
            .unwrap_or_else(|| std::path::PathBuf::from("."));
        let (out, credit) = (out.clone(), window.clone());
        let _ = out.send(Frame::Opened { session });
        let work = tokio::spawn(async move {
            let outcome = match task {
                Ok(task) => {
                    tracing::info!(session, task = task.name(), "git task");
                    crate::git::run(&dir, task).await
                }
                Err(error) => crate::task::TaskOutcome::Failed {
                    kind: crate::task::FailureKind::BadTask,
                    message: format!("not a task this agent knows: {error}"),
                },
            };
            let bytes = serde_json::to_vec(&outcome).unwrap_or_default();
            for chunk in bytes.chunks(crate::mux::MAX_DATA) {
                // Within the window the gateway grants, as a shell's output.
                match credit.acquire_many(chunk.len() as u32).await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
                if out.send(Frame::Data { session, bytes: chunk.to_vec() }).is_err() {
                    return;
                }
            }
            let _ = out.send(Frame::Close { session });
        });
        Self { window, abort: work.abort_handle() }
    }
}

/// One shell in a PTY. Its I/O is a task on the agent's runtime: the PTY's master is non-blocking and registered
/// with the runtime's reactor, so a keystroke goes from the gateway's frame to the PTY, and the shell's output from
/// the PTY to the gateway, without crossing to another thread, and a session costs no OS thread.
struct Shell {
    input: mpsc::UnboundedSender<ToShell>,
    window: Arc<Semaphore>,
    killer: Box<dyn ChildKiller + Send + Sync>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

/// What the connection's reader hands a session's task.
enum ToShell {
    Input(Vec<u8>),
    Resize(u16, u16),
}

/// The PTY master's descriptor number, to duplicate it.
struct PtyFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for PtyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// The most a session reads from its PTY at a time.
const PTY_READ: usize = 16 * 1024;

impl Shell {
    fn spawn(
        shell: &str,
        dir: Option<&std::path::Path>,
        session: u32,
        cols: u16,
        rows: u16,
        out: &mpsc::UnboundedSender<Frame>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let pair = native_pty_system().openpty(PtySize {
            rows: rows.max(1),
            cols: cols.max(1),
            pixel_width: 0,
            pixel_height: 0,
        })?;
        let mut command = CommandBuilder::new(shell);
        command.env("TERM", "xterm-256color");
        // The agent's credential is not the shell's business.
        command.env_remove("GATEHOUSE_AGENT_TOKEN");
        match dir {
            Some(dir) => command.cwd(dir),
            None => {
                if let Ok(home) = std::env::var("HOME") {
                    command.cwd(home);
                }
            }
        }
        let child = pair.slave.spawn_command(command)?;
        drop(pair.slave);
        let killer = child.clone_killer();
        let master = pair.master;
        // A duplicate of the master's descriptor that the reactor watches: it shares the master's open file
        // description with the reader and writer below (duplicates too), so making it non-blocking makes them so.
        let mut watched = FileDescriptor::dup(&PtyFd(master.as_raw_fd().ok_or("the PTY has no file descriptor")?))?;
        watched.set_non_blocking(true)?;
        let reader = master.try_clone_reader()?;
        let writer = master.take_writer()?;
        // `AsyncFd::new` is deprecated because it lets safe code register a descriptor it does not own (tokio#8587);
        // here the `AsyncFd` owns the duplicate it registers, which closes only after it is deregistered.
        #[allow(deprecated)]
        let pty = tokio::io::unix::AsyncFd::new(watched)?;
        let window = Arc::new(Semaphore::new(INITIAL_WINDOW as usize));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // `Opened` goes out before the task starts, so it precedes the shell's first output.
        out.send(Frame::Opened { session })?;
        let (input, inputs) = mpsc::unbounded_channel();
        let io = ShellIo { session, pty, reader, writer, master, out: out.clone(), window: window.clone() };
        let finished = done.clone();
        let out = out.clone();
        tokio::spawn(async move {
            io.run(inputs).await;
            let code = tokio::task::spawn_blocking(move || {
                let mut child = child;
                child.wait().map(|status| status.exit_code() as i32).unwrap_or(-1)
            })
            .await
            .unwrap_or(-1);
            finished.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = out.send(Frame::Exit { session, code });
            let _ = out.send(Frame::Close { session });
        });
        Ok(Self { input, window, killer, done })
    }

    fn finished(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn kill(&mut self) {
        self.window.close();
        let _ = self.killer.kill();
    }
}

/// A session's PTY and where its bytes go.
struct ShellIo {
    session: u32,
    pty: tokio::io::unix::AsyncFd<FileDescriptor>,
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    master: Box<dyn MasterPty + Send>,
    out: mpsc::UnboundedSender<Frame>,
    window: Arc<Semaphore>,
}

impl ShellIo {
    /// Moves keystrokes into the PTY (returning credit for each write) and output out of it (within the window the
    /// gateway grants) until the shell's side closes, the session is closed, or the connection is gone.
    async fn run(mut self, mut inputs: mpsc::UnboundedReceiver<ToShell>) {
        let mut pending: Vec<u8> = Vec::new();
        let mut written = 0;
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            tokio::select! {
                message = inputs.recv(), if pending.is_empty() => match message {
                    Some(ToShell::Input(bytes)) => (pending, written) = (bytes, 0),
                    Some(ToShell::Resize(cols, rows)) => {
                        let size = PtySize { rows: rows.max(1), cols: cols.max(1), pixel_width: 0, pixel_height: 0 };
                        let _ = self.master.resize(size);
                    }
                    None => break,
                },
                ready = self.pty.writable(), if !pending.is_empty() => {
                    let Ok(mut ready) = ready else { break };
                    match ready.try_io(|_| self.writer.write(&pending[written..])) {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(count)) => {
                            written += count;
                            if written == pending.len() {
                                pending = Vec::new();
                            }
                            if self.out.send(Frame::Credit { session: self.session, bytes: count as u32 }).is_err() {
                                break;
                            }
                        }
                        Err(_would_block) => {}
                    }
                }
                // Output only while the window has room; when it has none, wait for the gateway's credit (the
                // permit is given back at once: it only signals that there is room again).
                permit = self.window.acquire(), if self.window.available_permits() == 0 => match permit {
                    Ok(permit) => drop(permit),
                    Err(_) => break,
                },
                ready = self.pty.readable(), if self.window.available_permits() > 0 => {
                    let Ok(mut ready) = ready else { break };
                    let room = self.window.available_permits().min(PTY_READ);
                    buffer.resize(room, 0);
                    match ready.try_io(|_| self.reader.read(&mut buffer)) {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(count)) => {
                            match self.window.try_acquire_many(count as u32) {
                                Ok(permit) => permit.forget(),
                                Err(_) => break,
                            }
                            let bytes = buffer[..count].to_vec();
                            if self.out.send(Frame::Data { session: self.session, bytes }).is_err() {
                                break;
                            }
                        }
                        Err(_would_block) => {}
                    }
                    // An idle session keeps no read buffer.
                    buffer = Vec::new();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_is_an_object_of_type_hello() {
        let hello = Hello::parse(r#"{"type":"hello","token":"t","workspace":"w","tags":{"EDITOR":"vim"}}"#).unwrap();
        assert_eq!((hello.token.as_str(), hello.workspace.as_str()), ("t", "w"));
        assert!(Hello::parse(r#"{"type":"hello","token":"t","workspace":"w"}"#).is_some(), "tags are optional");
        for refused in [
            r#"{"token":"t","workspace":"w"}"#,
            r#"{"type":"welcome","token":"t","workspace":"w"}"#,
            r#"{"type":7,"token":"t","workspace":"w"}"#,
            r#"["t","w",{"TAG":"v"}]"#,
            r#"{"type":"hello","token":"t"}"#,
            "not json",
        ] {
            assert!(Hello::parse(refused).is_none(), "{refused}");
        }
    }

    #[test]
    fn hello_and_welcome_round_trip() {
        let hello = Hello {
            token: "t".into(),
            workspace: "ws".into(),
            tags: BTreeMap::from([("RDE_OWNER_EMAIL".to_string(), "ada@example.com".to_string())]),
            features: vec!["git".into()],
        };
        let text = serde_json::to_string(&hello).unwrap_or_default();
        assert!(text.starts_with(r#"{"type":"hello","#), "{text}");
        assert_eq!(serde_json::from_str::<Hello>(&text).ok(), Some(hello));
        let welcome = serde_json::to_string(&Welcome { agent: "a".into() }).unwrap_or_default();
        assert_eq!(welcome, r#"{"type":"welcome","agent":"a"}"#);
        assert_eq!(serde_json::from_str::<Welcome>(&welcome).ok(), Some(Welcome { agent: "a".into() }));
    }

    #[test]
    fn urls_map_to_the_agent_endpoint() {
        assert_eq!(connect_url("http://h:1/").ok().as_deref(), Some("ws://h:1/api/v1/agent/connect"));
        assert_eq!(connect_url("https://h").ok().as_deref(), Some("wss://h/api/v1/agent/connect"));
        assert_eq!(connect_url("wss://h").ok().as_deref(), Some("wss://h/api/v1/agent/connect"));
        assert!(connect_url("ftp://h").is_err());
    }
}
