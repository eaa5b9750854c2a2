//! Issue #5's benchmark: the terminal relay (browser → gateway → agent → PTY → echo program and back) beside a
//! direct loopback TCP echo and a PTY-only echo, all measured in the same run.
//!
//! Run: `cargo bench --bench relay` (`-- --quick` moves 8 MiB instead of 32 MiB and does 500 keystrokes).
//! Results go to stdout as Markdown (progress to stderr); docs/BENCHMARKS.md records them.
//!
//! The gateway is a real `gatehouse serve` child process (embedded SQLite in a temp dir), so that its RSS is its own;
//! the agent is a real `gatehouse agent` child process whose "shell" is a script that puts its PTY in raw mode
//! without echo, prints a marker and `exec`s `cat`, so every byte sent comes back exactly once, unchanged.
//!
//! The relay's own ceiling is measured too: the same browser → gateway → agent connection path with an agent made
//! in this process that speaks the agent protocol and echoes without a PTY (a PTY alone runs at a tenth of loopback
//! TCP here), alternating with direct TCP so both see the same machine.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{children, gatehouse, issue_token, rss_kib, Api, Server};
use futures::{SinkExt, StreamExt};
use portable_pty::{native_pty_system, CommandBuilder, PtySize};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CHUNK: usize = 16 * 1024;
/// What the bench's WebSocket clients read at a time (as the agent; tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 64 * 1024;
const MARKER: &str = "ECHO-READY";
const WORKSPACE: &str = "ws-bench";
/// The workspace of the hand-made (no PTY) agent.
const HANDMADE: &str = "ws-handmade";
const OWNER: &str = "ada@example.com";

struct Config {
    bytes: usize,
    keystrokes: usize,
    sessions: usize,
    /// Alternating rounds of direct TCP and the relay ceiling.
    rounds: usize,
}

struct Memory {
    /// Gateway RSS (KiB): before, open, after close, second cycle open, second cycle after close.
    gateway: [u64; 5],
    agent: [u64; 2],
    agent_threads: [usize; 2],
    shells: usize,
    shells_pss: u64,
    shells_left: usize,
    open_elapsed: Duration,
    close_elapsed: Duration,
}

/// Proportional set size (shared pages divided among their users), from smaps_rollup.
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| tasks.count()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

/// Keystroke round trips, by path.
struct Latencies {
    tcp: Latency,
    pty: Latency,
    relay: Latency,
    ceiling: Latency,
}

/// Keystroke measurements take turns across the paths in this many rounds.
const LATENCY_ROUNDS: usize = 10;

struct Latency {
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn summarize(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    Latency {
        p50_us: percentile(&samples, 0.5),
        p99_us: percentile(&samples, 0.99),
        max_us: samples.last().unwrap().as_secs_f64() * 1e6,
    }
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

// ---------------------------------------------------------------- direct loopback TCP echo

async fn tcp_echo_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn tcp_throughput(addr: std::net::SocketAddr, total: usize) -> Duration {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let chunk = pattern(CHUNK);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(total - sent);
            write.write_all(&chunk[..n]).await.unwrap();
            sent += n;
        }
        write
    });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < total {
        let n = read.read(&mut buffer).await.unwrap();
        assert!(n > 0, "direct echo ended early");
        got += n;
    }
    let elapsed = start.elapsed();
    drop(writer.await.unwrap());
    elapsed
}

/// A plain TCP forwarder in front of `target` (what any relay adds at the least: a second hop through a user-space
/// process, here with `tokio::io::copy_bidirectional` and 64 KiB buffers, no framing, no multiplexing, no flow control of its own).
const GIB: f64 = (1u64 << 30) as f64;

async fn tcp_forwarder(target: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            inbound.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                outbound.set_nodelay(true).unwrap();
                let _ =
                    tokio::io::copy_bidirectional_with_sizes(&mut inbound, &mut outbound, 64 * 1024, 64 * 1024).await;
            });
        }
    });
    addr
}

/// CPU time (user + system) a process has used, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime 14 and stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

async fn tcp_latency(addr: std::net::SocketAddr, count: usize) -> Vec<Duration> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut samples = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..count {
        let key = b'a' + (i % 26) as u8;
        let start = Instant::now();
        stream.write_all(&[key]).await.unwrap();
        stream.read_exact(&mut byte).await.unwrap();
        samples.push(start.elapsed());
        assert_eq!(byte[0], key);
    }
    samples
}

// ---------------------------------------------------------------- PTY only (same script, no relay)

struct PtyEcho {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
}

fn pty_echo(script: &std::path::Path) -> PtyEcho {
    let pair = native_pty_system().openpty(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 }).unwrap();
    let child = pair.slave.spawn_command(CommandBuilder::new(script)).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let writer = pair.master.take_writer().unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(MARKER) {
        let n = reader.read(&mut buffer).unwrap();
        assert!(n > 0, "the PTY echo script ended");
        seen.extend_from_slice(&buffer[..n]);
    }
    PtyEcho { reader, writer, _master: pair.master, child }
}

fn pty_throughput(script: &std::path::Path, total: usize) -> Duration {
    let PtyEcho { mut reader, mut writer, _master, mut child } = pty_echo(script);
    let chunk = pattern(CHUNK);
    let start = Instant::now();
    let pump = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(total - sent);
            writer.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
        writer
    });
    let mut buffer = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < total {
        let n = reader.read(&mut buffer).unwrap();
        assert!(n > 0, "PTY echo ended early");
        got += n;
    }
    let elapsed = start.elapsed();
    drop(pump.join().unwrap());
    let _ = child.kill();
    elapsed
}

fn pty_latency(echo: &mut PtyEcho, count: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..count {
        let key = b'a' + (i % 26) as u8;
        let start = Instant::now();
        echo.writer.write_all(&[key]).unwrap();
        echo.writer.flush().unwrap();
        echo.reader.read_exact(&mut byte).unwrap();
        samples.push(start.elapsed());
        assert_eq!(byte[0], key);
    }
    samples
}

// ---------------------------------------------------------------- through the relay

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent made here (no PTY), speaking the real agent protocol: answers `Open` with `Opened` and the marker, and
/// echoes each `Data` back within its output window (the gateway's `Credit`s refill it), returning `Credit` for the
/// input as it echoes it, in batches of `CREDIT_BATCH` as the protocol allows. It writes the replies to all the
/// frames already received in one write (one flush per batch). (The real agent returns credit for each write to its
/// PTY and flushes each frame: this agent measures the gateway, not the agent.) Its socket has Nagle off, as the
/// real agent's has. It measures the relay's own ceiling: browser → gateway → agent connection and back, no PTY.
async fn handmade_agent(base: &str, token: &str, workspace: &str) -> tokio::task::JoinHandle<()> {
    use std::collections::{HashMap, VecDeque};

    use futures::FutureExt;
    use relay::mux::{Frame, CREDIT_BATCH, INITIAL_WINDOW};

    #[derive(Default)]
    struct Echo {
        window: u32,
        pending: VecDeque<Vec<u8>>,
        /// Input echoed whose credit is not yet returned (returned in batches of `CREDIT_BATCH`).
        due: u32,
    }

    let url = format!("{}/api/v1/agent/connect", base.replace("http://", "ws://"));
    // Writes keep tungstenite's default 128 KiB buffer: the replies to a batch are fed, then flushed at once.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let hello = json!({"type": "hello", "token": token, "workspace": workspace, "tags": {}});
    sink.send(Message::Text(hello.to_string().into())).await.unwrap();
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(Message::Close(frame))) => panic!("hand-made agent refused: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("hand-made agent: {other:?}"),
        }
    }
    tokio::spawn(async move {
        let mut sessions: HashMap<u32, Echo> = HashMap::new();
        // Applies one frame from the gateway; appends the replies it allows.
        let mut apply = |message: Message, out: &mut Vec<Frame>| -> bool {
            let Message::Binary(bytes) = message else { return true };
            let Ok(frame) = Frame::decode(&bytes) else { return false };
            let session = frame.session();
            match frame {
                Frame::Open { .. } => {
                    let marker = MARKER.as_bytes().to_vec();
                    sessions.insert(session, Echo { window: INITIAL_WINDOW - marker.len() as u32, ..Echo::default() });
                    out.push(Frame::Opened { session });
                    out.push(Frame::Data { session, bytes: marker });
                    return true;
                }
                Frame::Data { bytes, .. } => {
                    if let Some(echo) = sessions.get_mut(&session) {
                        echo.pending.push_back(bytes);
                    }
                }
                Frame::Credit { bytes, .. } => {
                    if let Some(echo) = sessions.get_mut(&session) {
                        echo.window = echo.window.saturating_add(bytes).min(INITIAL_WINDOW);
                    }
                }
                Frame::Close { .. } => {
                    sessions.remove(&session);
                    out.push(Frame::Close { session });
                    return true;
                }
                _ => return true,
            }
            if let Some(echo) = sessions.get_mut(&session) {
                while let Some(front) = echo.pending.front_mut() {
                    let take = front.len().min(echo.window as usize);
                    if take == 0 {
                        break;
                    }
                    let bytes: Vec<u8> = front.drain(..take).collect();
                    if front.is_empty() {
                        echo.pending.pop_front();
                    }
                    echo.window -= take as u32;
                    echo.due += take as u32;
                    if echo.due >= CREDIT_BATCH {
                        out.push(Frame::Credit { session, bytes: std::mem::take(&mut echo.due) });
                    }
                    out.push(Frame::Data { session, bytes });
                }
            }
            true
        };
        let mut out = Vec::new();
        while let Some(Ok(message)) = stream.next().await {
            let mut alive = apply(message, &mut out);
            while let Some(Some(Ok(message))) = stream.next().now_or_never() {
                alive &= apply(message, &mut out);
            }
            for frame in out.drain(..) {
                if sink.feed(Message::Binary(frame.encode().into())).await.is_err() {
                    return;
                }
            }
            if !alive || sink.flush().await.is_err() {
                return;
            }
        }
    })
}

/// An agent token for `workspace`, owned by the bench's builder.
async fn mint_agent_token(api: &Api, admin: &str, workspace: &str) -> String {
    let body = json!({"name": "bench agent", "workspace": workspace, "owner": OWNER});
    let (status, _, body) = api.call(Method::POST, "/api/v1/agent-tokens", Some(admin), Some(body)).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

async fn ticket(api: &Api, token: &str, workspace: &str) -> String {
    let path = format!("/api/v1/workspaces/{workspace}/tickets");
    for attempt in 0..20 {
        let (status, _, body) = api.call(Method::POST, &path, Some(token), Some(json!({"kind": "terminal"}))).await;
        if status == 201 {
            return body["ticket"].as_str().unwrap().to_string();
        }
        eprintln!("ticket: {status} {body} (attempt {attempt})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no ticket");
}

/// Opens an authenticated terminal and waits until the echo program is running (its marker has arrived).
async fn open(base: &str, api: &Api, token: &str, workspace: &str) -> Socket {
    let one_time = ticket(api, token, workspace).await;
    let url = format!("{}/api/v1/workspaces/{workspace}/terminal", base.replace("http://", "ws://"));
    // Browsers disable Nagle's algorithm on their sockets; so does this one. It sends (and flushes) one message at a
    // time, as a browser does: each is written at once, with no write buffer to fill first.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER).write_buffer_size(0);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.unwrap();
    socket.send(Message::Text(json!({"type": "auth", "ticket": one_time}).to_string().into())).await.unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.contains(MARKER) {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("no marker from the echo program") {
            Some(Ok(Message::Binary(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert!(message["type"] == "ready" || message["type"] == "pong", "{text}");
            }
            Some(Ok(Message::Close(frame))) => panic!("closed before the marker: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended before the marker: {other:?}"),
        }
    }
    socket
}

async fn relay_throughput(socket: Socket, total: usize) -> (Duration, Socket) {
    let (mut sink, mut stream) = socket.split();
    let chunk = pattern(CHUNK);
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let n = CHUNK.min(total - sent);
            sink.send(Message::Binary(chunk[..n].to_vec().into())).await.unwrap();
            sent += n;
        }
        sink
    });
    let mut got = 0;
    let mut frames = 0usize;
    while got < total {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("relay stalled for 30 s") {
            Some(Ok(Message::Binary(bytes))) => {
                got += bytes.len();
                frames += 1;
            }
            Some(Ok(Message::Close(frame))) => panic!("closed during throughput at {got} bytes: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended during throughput at {got} bytes: {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    eprintln!("relay throughput: {got} bytes in {frames} frames");
    let sink = writer.await.unwrap();
    (elapsed, sink.reunite(stream).unwrap())
}

async fn relay_latency(socket: &mut Socket, count: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let key = b'a' + (i % 26) as u8;
        let start = Instant::now();
        socket.send(Message::Binary(vec![key].into())).await.unwrap();
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    assert_eq!(bytes, vec![key]);
                    break;
                }
                Some(Ok(Message::Close(frame))) => panic!("closed during latency: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("socket ended during latency: {other:?}"),
            }
        }
        samples.push(start.elapsed());
    }
    samples
}

/// Opens `count` idle sessions (16 at a time), as many browsers would.
async fn open_many(base: &str, api: &Api, token: &str, count: usize) -> Vec<Socket> {
    let base = Arc::new(base.to_string());
    futures::stream::iter(0..count)
        .map(|_| {
            let (base, api, token) = (base.clone(), api.clone(), token.to_string());
            async move { open(&base, &api, &token, WORKSPACE).await }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Closes every socket, then waits until the gateway has recorded every session closed (each close is a store
/// commit; measuring RSS before they are all done counts live sessions as retained memory). Returns the time until
/// the sessions read model shows none active.
async fn close_all(sockets: Vec<Socket>, api: &Api, admin: &str) -> Duration {
    let closing = Instant::now();
    futures::stream::iter(sockets)
        .for_each_concurrent(64, |mut socket| async move {
            let _ = socket.close(None).await;
        })
        .await;
    let all_closed = common::eventually(Duration::from_secs(120), || async {
        let (status, body) = api.get("/api/v1/sessions?active=true&limit=1", Some(admin)).await;
        status == 200 && body["items"].as_array().is_some_and(|items| items.is_empty())
    })
    .await;
    assert!(all_closed, "sessions still active 120 s after their browsers closed");
    closing.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    // `--no-memory` skips the 1,000-session part; `--only-memory` does only it (for profiling the gateway: with
    // RELAY_BENCH_PAUSE_SECS set, the bench prints the gateway's pid and waits that long before opening sessions,
    // and as long again while they are open).
    let memory = !args.iter().any(|arg| arg == "--no-memory");
    let only_memory = args.iter().any(|arg| arg == "--only-memory");
    let pause = std::env::var("RELAY_BENCH_PAUSE_SECS").ok().and_then(|raw| raw.parse().ok()).map(Duration::from_secs);
    let config = if quick {
        Config { bytes: 8 << 20, keystrokes: 500, sessions: 1000, rounds: 3 }
    } else {
        Config { bytes: 32 << 20, keystrokes: 2000, sessions: 1000, rounds: 5 }
    };

    let scratch = tempfile::tempdir().unwrap();
    let script = scratch.path().join("echo.sh");
    std::fs::write(&script, format!("#!/bin/sh\nstty raw -echo\nprintf '{MARKER}'\nexec cat\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Direct baselines first, while nothing else runs.
    eprintln!("direct TCP echo…");
    let addr = tcp_echo_server().await;
    let _ = tcp_throughput(addr, 1 << 20).await; // warm-up
    let tcp_tp = tcp_throughput(addr, config.bytes).await;

    eprintln!("PTY-only echo…");
    let pty_tp = {
        let script = script.clone();
        let bytes = config.bytes;
        tokio::task::spawn_blocking(move || pty_throughput(&script, bytes)).await.unwrap()
    };

    eprintln!("starting gateway and agent…");
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "2h");
    let ada = issue_token(&db, OWNER, "member", "2h");
    let limit = (config.sessions + 100).to_string();
    let server = Server::start(
        &db,
        &[
            ("GATEHOUSE_LOG", "info,sqlx=warn"),
            ("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", &limit),
            ("GATEHOUSE_RELAY_IDLE_TIMEOUT_SECS", "3600"),
            ("GATEHOUSE_RELAY_AUTH_TIMEOUT_SECS", "60"),
        ],
    );
    let server_pid = server.child.id();
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, WORKSPACE).await;
    let agent = Agent {
        child: gatehouse()
            .args(["agent", "--server", &server.base, "--workspace", WORKSPACE])
            .env("GATEHOUSE_AGENT_TOKEN", &agent_token)
            .env("GATEHOUSE_AGENT_SHELL", &script)
            .env("GATEHOUSE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    };
    let agent_pid = agent.child.id();
    let listed = common::eventually(Duration::from_secs(30), || async {
        let (status, body) = api.get("/api/v1/agents", Some(&ada)).await;
        status == 200 && body["items"].as_array().unwrap().iter().any(|item| item["id"] == WORKSPACE)
    })
    .await;
    assert!(listed, "the agent never connected");

    let mut relay_figures = None;
    let mut ceiling_extra = None;
    if !only_memory {
        eprintln!("relay throughput (real agent, PTY)…");
        let socket = open(&server.base, &api, &ada, WORKSPACE).await;
        let (_, socket) = relay_throughput(socket, 1 << 20).await; // warm-up
        let (relay_tp, socket) = relay_throughput(socket, config.bytes).await;
        eprintln!("relay latency (real agent, PTY)…");
        let mut real = socket;

        // The relay's own ceiling: the same path with an agent that echoes without a PTY. Direct TCP and the relay
        // alternate, `rounds` times each, so that both see the same load from the rest of the machine; the medians
        // are compared.
        eprintln!("relay ceiling: hand-made echo agent (no PTY), alternating with direct TCP…");
        let token = mint_agent_token(&api, &root, HANDMADE).await;
        let task = handmade_agent(&server.base, &token, HANDMADE).await;
        let socket = open(&server.base, &api, &ada, HANDMADE).await;
        let (_, mut socket) = relay_throughput(socket, 1 << 20).await; // warm-up
        let (mut tcp_rounds, mut ceiling_rounds, mut forwarder_rounds) = (Vec::new(), Vec::new(), Vec::new());
        let forwarder = tcp_forwarder(addr).await;
        let gateway = server_pid.to_string();
        // CPU ticks: the bench process during direct TCP, during the forwarder, and bench and gateway during the
        // relay.
        let mut cpu = [0u64; 4];
        for _ in 0..config.rounds {
            let before = cpu_ticks("self");
            tcp_rounds.push(mib_per_s(config.bytes, tcp_throughput(addr, config.bytes).await));
            cpu[0] += cpu_ticks("self") - before;
            let before = cpu_ticks("self");
            forwarder_rounds.push(mib_per_s(config.bytes, tcp_throughput(forwarder, config.bytes).await));
            cpu[1] += cpu_ticks("self") - before;
            let (before, gateway_before) = (cpu_ticks("self"), cpu_ticks(&gateway));
            let (elapsed, back) = relay_throughput(socket, config.bytes).await;
            cpu[2] += cpu_ticks("self") - before;
            cpu[3] += cpu_ticks(&gateway) - gateway_before;
            socket = back;
            ceiling_rounds.push(mib_per_s(config.bytes, elapsed));
        }

        // Keystrokes: the four paths take turns, `LATENCY_ROUNDS` rounds of an equal share each, so that a burst of
        // noise on this shared machine falls on all of them alike (measured one after the other, a path's p99 was
        // sometimes ten times another run's).
        eprintln!("keystroke latency, {LATENCY_ROUNDS} interleaved rounds…");
        let mut pty = Some({
            let script = script.clone();
            tokio::task::spawn_blocking(move || pty_echo(&script)).await.unwrap()
        });
        let share = config.keystrokes / LATENCY_ROUNDS;
        let (mut tcp_samples, mut pty_samples, mut relay_samples, mut ceiling_samples) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..LATENCY_ROUNDS {
            tcp_samples.extend(tcp_latency(addr, share).await);
            let mut echo = pty.take().unwrap();
            let (echo, samples) = tokio::task::spawn_blocking(move || {
                let samples = pty_latency(&mut echo, share);
                (echo, samples)
            })
            .await
            .unwrap();
            pty = Some(echo);
            pty_samples.extend(samples);
            relay_samples.extend(relay_latency(&mut real, share).await);
            ceiling_samples.extend(relay_latency(&mut socket, share).await);
        }
        if let Some(mut echo) = pty {
            let _ = echo.child.kill();
        }
        real.close(None).await.unwrap();
        socket.close(None).await.unwrap();
        task.abort();
        let latency = Latencies {
            tcp: summarize(tcp_samples),
            pty: summarize(pty_samples),
            relay: summarize(relay_samples),
            ceiling: summarize(ceiling_samples),
        };
        relay_figures = Some((relay_tp, tcp_rounds, ceiling_rounds, latency));
        ceiling_extra = Some((forwarder_rounds, cpu, config.bytes as f64 * config.rounds as f64));
    }

    let mut memory_figures = None;
    if memory {
        if let Some(pause) = pause {
            eprintln!("gateway pid {server_pid}: pausing {} s before opening sessions", pause.as_secs());
            tokio::time::sleep(pause).await;
        }
        // Memory: 1,000 idle sessions.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let gateway_before = rss_kib(server_pid);
        let agent_before = rss_kib(agent_pid);
        let agent_threads_before = threads(agent_pid);
        eprintln!("opening {} idle sessions…", config.sessions);
        let start = Instant::now();
        let sockets = open_many(&server.base, &api, &ada, config.sessions).await;
        let open_elapsed = start.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let gateway_open = rss_kib(server_pid);
        let agent_open = rss_kib(agent_pid);
        let agent_threads_open = threads(agent_pid);
        let shells = children(agent_pid);
        let shells_pss: u64 = shells.iter().map(|pid| pss_kib(*pid)).sum();
        if let Some(pause) = pause {
            eprintln!("{} sessions open: pausing {} s", config.sessions, pause.as_secs());
            tokio::time::sleep(pause).await;
        }
        eprintln!("closing them…");
        let close_elapsed = close_all(sockets, &api, &root).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let gateway_after = rss_kib(server_pid);
        let shells_left = children(agent_pid).len();

        // A second cycle: does the gateway's RSS keep growing (a leak) or is the first cycle's memory reused?
        eprintln!("second cycle of {} sessions…", config.sessions);
        let sockets = open_many(&server.base, &api, &ada, config.sessions).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let gateway_open2 = rss_kib(server_pid);
        close_all(sockets, &api, &root).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let gateway_after2 = rss_kib(server_pid);
        memory_figures = Some(Memory {
            gateway: [gateway_before, gateway_open, gateway_after, gateway_open2, gateway_after2],
            agent: [agent_before, agent_open],
            agent_threads: [agent_threads_before, agent_threads_open],
            shells: shells.len(),
            shells_pss,
            shells_left,
            open_elapsed,
            close_elapsed,
        });
    }

    println!(
        "## Terminal relay ({} MiB in {} KiB chunks, {} keystrokes)\n",
        config.bytes >> 20,
        CHUNK >> 10,
        config.keystrokes
    );
    let tcp_mib = mib_per_s(config.bytes, tcp_tp);
    let pty_mib = mib_per_s(config.bytes, pty_tp);
    if let Some((relay_tp, tcp_rounds, ceiling_rounds, latency)) = &relay_figures {
        let relay_mib = mib_per_s(config.bytes, *relay_tp);
        let (tcp_median, ceiling_median) = (median(tcp_rounds.clone()), median(ceiling_rounds.clone()));
        let ceiling_ratio = ceiling_median / tcp_median;
        let rounds = |values: &[f64]| values.iter().map(|value| format!("{value:.0}")).collect::<Vec<_>>().join(", ");
        println!("| path | MiB/s | vs direct TCP | vs PTY only |");
        println!("|---|---:|---:|---:|");
        println!("| direct loopback TCP echo | {tcp_mib:.1} | 1.00× | — |");
        println!("| PTY + `cat` only (no relay) | {pty_mib:.1} | {:.2}× | 1.00× |", pty_mib / tcp_mib);
        println!(
            "| browser → relay → agent → PTY + `cat` → back | {relay_mib:.1} | {:.2}× | {:.2}× |",
            relay_mib / tcp_mib,
            relay_mib / pty_mib
        );
        println!();
        println!("Relay ceiling (no PTY), {} alternating rounds:\n", tcp_rounds.len());
        println!("| path | median MiB/s | rounds MiB/s | vs direct TCP |");
        println!("|---|---:|---|---:|");
        println!("| direct loopback TCP echo | {tcp_median:.1} | {} | 1.00× |", rounds(tcp_rounds));
        println!(
            "| browser → relay → hand-made echo agent (no PTY) → back | {ceiling_median:.1} | {} | **{ceiling_ratio:.2}×** |",
            rounds(ceiling_rounds)
        );
        if let Some((forwarder_rounds, cpu, total)) = &ceiling_extra {
            let forwarder_median = median(forwarder_rounds.clone());
            println!(
                "| direct TCP through a plain TCP forwarder (second hop, no framing) | {forwarder_median:.1} | {} | {:.2}× |",
                rounds(forwarder_rounds),
                forwarder_median / tcp_median
            );
            println!();
            println!(
                "Relay vs the plain forwarder: **{:.2}×**. CPU seconds per GiB echoed (user + system; 100 ticks/s): \
                 direct TCP, bench process (client and echo) {:.2}; forwarder, bench process (client, forwarder and \
                 echo) {:.2}; relay, bench process (browser and hand-made agent) {:.2} + gateway {:.2}.",
                ceiling_median / forwarder_median,
                cpu[0] as f64 / 100.0 / (total / GIB),
                cpu[1] as f64 / 100.0 / (total / GIB),
                cpu[2] as f64 / 100.0 / (total / GIB),
                cpu[3] as f64 / 100.0 / (total / GIB),
            );
        }
        println!();
        println!(
            "| keystroke round trip ({} interleaved rounds of {} each) | p50 µs | p99 µs | max µs |",
            LATENCY_ROUNDS,
            config.keystrokes / LATENCY_ROUNDS
        );
        println!("|---|---:|---:|---:|");
        let row = |name: &str, latency: &Latency| {
            println!("| {name} | {:.0} | {:.0} | {:.0} |", latency.p50_us, latency.p99_us, latency.max_us)
        };
        let Latencies { tcp, pty, relay, ceiling } = latency;
        row("direct loopback TCP", tcp);
        row("PTY + `cat` only", pty);
        row("through the relay (real agent, PTY)", relay);
        row("through the relay, hand-made echo agent (no PTY)", ceiling);
        println!(
            "| added by relay + PTY (relay − TCP) | {:.0} | {:.0} | — |",
            relay.p50_us - tcp.p50_us,
            relay.p99_us - tcp.p99_us
        );
        println!(
            "| added by relay + agent (relay − PTY only) | {:.0} | {:.0} | — |",
            relay.p50_us - pty.p50_us,
            relay.p99_us - pty.p99_us
        );
        println!(
            "| added by the gateway (hand-made − TCP) | {:.0} | {:.0} | — |",
            ceiling.p50_us - tcp.p50_us,
            ceiling.p99_us - tcp.p99_us
        );
        println!();
    }
    let mut per_session = None;
    if let Some(memory) = &memory_figures {
        let [gateway_before, gateway_open, gateway_after, gateway_open2, gateway_after2] = memory.gateway;
        let [agent_before, agent_open] = memory.agent;
        let n = config.sessions as f64;
        let per = (gateway_open as f64 - gateway_before as f64) / n;
        per_session = Some(per);
        let agent_per_session = (agent_open as f64 - agent_before as f64) / n;
        println!("| memory, {} idle sessions | value |", config.sessions);
        println!("|---|---:|");
        println!(
            "| gateway RSS before / open / 5 s after all recorded closed (KiB) | {gateway_before} / {gateway_open} / {gateway_after} |"
        );
        println!("| **gateway KiB per idle session** | **{per:.1}** |");
        println!(
            "| agent process RSS before / open (KiB) | {agent_before} / {agent_open} ({agent_per_session:.1} KiB per session) |"
        );
        println!("| agent threads before / open | {} / {} |", memory.agent_threads[0], memory.agent_threads[1]);
        println!("| gateway RSS, second cycle open / 5 s after all recorded closed (KiB) | {gateway_open2} / {gateway_after2} |");
        println!(
            "| shells (children of the agent) while open: count, total PSS KiB | {}, {} |",
            memory.shells, memory.shells_pss
        );
        println!("| shells left 5 s after closing | {} |", memory.shells_left);
        println!(
            "| time to open (ticket + WebSocket + auth + shell marker, 16 at a time) | {:.1} s |",
            memory.open_elapsed.as_secs_f64()
        );
        println!(
            "| time until all are recorded closed (read model shows none active) | {:.1} s |",
            memory.close_elapsed.as_secs_f64()
        );
        println!();
    }
    println!("| target | measured | verdict |");
    println!("|---|---:|---|");
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    if let Some((relay_tp, tcp_rounds, ceiling_rounds, latency)) = &relay_figures {
        let ceiling_ratio = median(ceiling_rounds.clone()) / median(tcp_rounds.clone());
        let relay_ratio = mib_per_s(config.bytes, *relay_tp) / tcp_mib;
        println!(
            "| throughput ≥ 0.5× direct: the relay (no PTY) | {ceiling_ratio:.2}× | {} |",
            verdict(ceiling_ratio >= 0.5)
        );
        println!(
            "| throughput ≥ 0.5× direct: relay + PTY (PTY alone {:.2}×) | {relay_ratio:.2}× | {} |",
            pty_mib / tcp_mib,
            verdict(relay_ratio >= 0.5)
        );
        let added = latency.relay.p99_us - latency.tcp.p99_us;
        println!("| added keystroke p99 ≤ 1 ms (relay + PTY − TCP) | {added:.0} µs | {} |", verdict(added <= 1000.0));
    }
    if let Some(per) = per_session {
        println!("| gateway ≤ 32 KiB per idle session (issue #12) | {per:.1} KiB | {} |", verdict(per <= 32.0));
    }

    drop(agent);
    drop(server);
}
