//! Issue #16's benchmark: terminal resume (ADR 0025). Two figures, each beside a baseline measured in the same run:
//!
//! - **Resume time after a drop**: a browser attached to a shell that prints without end receives output, says how
//!   much it received (`ack`, then a `ping` whose `pong` shows the gateway has read it), and its connection drops (no close frame: the session detaches). Once the gateway
//!   has recorded the detach, the browser comes back: a new ticket, then `auth` with the session and the offset it
//!   received; measured from the ticket request to `ready` and to the first resumed byte. The baseline, interleaved
//!   round by round: opening a fresh session (ticket, `auth`, the shell's first byte, its prompt).
//! - **Gateway memory per detached session**: N sessions, each printing without end, are dropped after receiving a
//!   little; with nobody attached, each shell runs until its session's buffer (`relay_resume_buffer_bytes`) is full
//!   and waits. The gateway's RSS (`/proc/PID/status`) with N idle attached sessions, then with N full detached
//!   ones; then after they all closed as `detach_timeout` (a short `relay_detach_timeout_secs`), twice, to tell
//!   memory kept for reuse from a leak.
//!
//! Run: `cargo bench --bench terminal_resume` (`-- --quick`: 50 rounds and 10 sessions instead of 200 and 50;
//! `-- --cycles N`: N memory cycles instead of 2; `-- --only-memory`: the memory part alone).
//! Results go to stdout as Markdown (progress to stderr); docs/BENCHMARKS.md records them.
//!
//! The gateways are real `gatehouse serve` child processes (embedded SQLite in a temp dir), one per part so that the
//! memory part starts from a gateway that has done nothing else; the agents are real `gatehouse agent` child
//! processes running `/bin/sh`.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::terminal::{mint_agent_token, normal_close, type_line, wait_for_workspace, Agent, Socket};
use common::{children, eventually, issue_token, rss_kib, Api, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::percentile_ms;
use testkit::TestDb;
use tokio_tungstenite::tungstenite::Message;

const WORKSPACE: &str = "ws-resume";
const OWNER: &str = "ada@example.com";
/// What the shells print, without end (each line 76 bytes through the PTY).
const PRINTER: &str = "yes 'terminal resume bench: the quick brown fox jumps over the lazy dog 0123'\n";
/// A browser acknowledges what it received every this many bytes (as docs/API.md asks).
const ACK_EVERY: u64 = 64 * 1024;
/// What the browser receives between two drops.
const ROUND_BYTES: u64 = 64 * 1024;
/// The default `relay_resume_buffer_bytes`.
const DEFAULT_BUFFER: u64 = 1024 * 1024;
/// The gateway returns credit to the agent in batches of this many bytes (`relay::mux::CREDIT_BATCH`): a buffer
/// with room for `n` more bytes stops somewhere in its last batch, past `n - CREDIT_BATCH`.
const CREDIT_BATCH: u64 = 64 * 1024;

struct Config {
    rounds: usize,
    warm_up: usize,
    sessions: usize,
    detach_timeout_secs: u64,
}

/// A gateway, its agent and the tokens of the bench's users.
struct Setup {
    server: Server,
    api: Api,
    root: String,
    ada: String,
    agent: Agent,
    _db: TestDb,
}

async fn setup(env: &[(&str, &str)]) -> Setup {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "4h");
    let ada = issue_token(&db, OWNER, "member", "4h");
    let mut all = vec![("GATEHOUSE_LOG", "warn,gatehouse=info"), ("GATEHOUSE_RELAY_IDLE_TIMEOUT_SECS", "3600")];
    all.extend_from_slice(env);
    let server = Server::start(&db, &all);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, WORKSPACE, OWNER).await;
    let agent = Agent::start(&server, &agent_token, WORKSPACE);
    wait_for_workspace(&api, &ada, WORKSPACE).await;
    Setup { server, api, root, ada, agent, _db: db }
}

async fn ticket(api: &Api, token: &str) -> String {
    for attempt in 0..20 {
        let (status, body) = common::terminal::ticket(api, token, WORKSPACE).await;
        if status == 201 {
            return body["ticket"].as_str().unwrap().to_string();
        }
        eprintln!("ticket: {status} {body} (attempt {attempt})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no ticket");
}

/// Times of one attach, from the ticket request.
struct Timing {
    ticket: Duration,
    ready: Duration,
    first_byte: Duration,
}

/// An attached browser: its socket, session, and the output offset it has received.
struct Browser {
    socket: Socket,
    session: String,
    received: u64,
    acked: u64,
}

/// A new ticket, a WebSocket (Nagle off, as browsers), `auth` (resuming `resume` = (session, offset) if given),
/// until `ready` and the first byte of output. Panics on a refusal or a `too_far_behind`.
async fn attach_timed(setup: &Setup, resume: Option<(&str, u64)>) -> (Browser, Timing) {
    let start = Instant::now();
    let one_time = ticket(&setup.api, &setup.ada).await;
    let ticket_done = start.elapsed();
    let url = format!("{}/api/v1/workspaces/{WORKSPACE}/terminal", setup.server.base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.unwrap();
    let mut auth = json!({"type": "auth", "ticket": one_time});
    if let Some((session, offset)) = resume {
        auth["session"] = json!(session);
        auth["offset"] = json!(offset);
    }
    socket.send(Message::Text(auth.to_string().into())).await.unwrap();
    let (mut ready, mut session, mut offset) = (None, String::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("no output after auth") {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "ready", "{text}");
                ready = Some(start.elapsed());
                session = message["session"].as_str().unwrap().to_string();
                offset = message["offset"].as_u64().unwrap();
                if let Some((_, asked)) = resume {
                    assert_eq!(offset, asked, "the resume started elsewhere than asked");
                }
            }
            Some(Ok(Message::Binary(bytes))) => {
                let first_byte = start.elapsed();
                let ready = ready.expect("output before ready");
                let received = offset + bytes.len() as u64;
                let browser = Browser { socket, session, received, acked: offset };
                return (browser, Timing { ticket: ticket_done, ready, first_byte });
            }
            Some(Ok(Message::Close(frame))) => panic!("refused: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended after auth: {other:?}"),
        }
    }
}

/// Reads `bytes` more output, acknowledging every [`ACK_EVERY`] bytes, then acknowledges all of it.
async fn receive(browser: &mut Browser, bytes: u64) {
    let until = browser.received + bytes;
    while browser.received < until {
        match tokio::time::timeout(Duration::from_secs(60), browser.socket.next()).await.expect("output stopped") {
            Some(Ok(Message::Binary(chunk))) => browser.received += chunk.len() as u64,
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
        if browser.received - browser.acked >= ACK_EVERY {
            ack(browser).await;
        }
    }
    ack(browser).await;
    sync(browser).await;
}

/// Waits until the gateway has handled every message sent so far: a `ping`, answered in order. (While the gateway
/// hands output to a socket that does not take it, it does not read from it; an acknowledgement still unread when
/// the connection drops is lost with it.) The output that arrives meanwhile is received.
async fn sync(browser: &mut Browser) {
    browser.socket.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(60), browser.socket.next()).await.expect("no pong") {
            Some(Ok(Message::Binary(chunk))) => browser.received += chunk.len() as u64,
            Some(Ok(Message::Text(text))) if text.contains("pong") => return,
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn ack(browser: &mut Browser) {
    browser.acked = browser.received;
    let message = json!({"type": "ack", "offset": browser.acked});
    browser.socket.send(Message::Text(message.to_string().into())).await.unwrap();
}

/// The session's row in the sessions read model (among the open ones).
async fn session_row(setup: &Setup, session: &str) -> Value {
    let (status, sessions) = setup.api.get("/api/v1/sessions?active=true&limit=500", Some(&setup.root)).await;
    assert_eq!(status, 200, "{sessions}");
    sessions["items"].as_array().unwrap().iter().find(|item| item["id"] == session).cloned().unwrap_or(Value::Null)
}

/// Open sessions, as the read model shows them.
async fn active_sessions(setup: &Setup) -> Vec<Value> {
    let (status, sessions) = setup.api.get("/api/v1/sessions?active=true&limit=500", Some(&setup.root)).await;
    assert_eq!(status, 200, "{sessions}");
    sessions["items"].as_array().unwrap().clone()
}

/// Samples `pid`'s RSS every 500 ms until three samples in a row are within 0.5 % of one another (or `limit`
/// passes); the last sample and the time it took.
async fn settled_rss(pid: u32, limit: Duration) -> (u64, Duration) {
    let start = Instant::now();
    let mut samples = vec![rss_kib(pid)];
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(rss_kib(pid));
        let last = &samples[samples.len().saturating_sub(3)..];
        let (low, high) = (*last.iter().min().unwrap(), *last.iter().max().unwrap());
        if last.len() == 3 && (high - low) as f64 <= high as f64 * 0.005 || start.elapsed() > limit {
            return (*samples.last().unwrap(), start.elapsed());
        }
    }
}

/// Resume attempt without reading anything: `Ok(())` if `ready` came (the socket is then dropped at once), else the
/// close code.
async fn probe(setup: &Setup, session: &str, offset: u64) -> Result<(), u16> {
    let one_time = ticket(&setup.api, &setup.ada).await;
    let url = format!("{}/api/v1/workspaces/{WORKSPACE}/terminal", setup.server.base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let auth = json!({"type": "auth", "ticket": one_time, "session": session, "offset": offset});
    socket.send(Message::Text(auth.to_string().into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("no answer to auth") {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "ready", "{text}");
                return Ok(());
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

#[derive(Default)]
struct Latencies {
    fresh_ready: Vec<Duration>,
    fresh_first: Vec<Duration>,
    fresh_ticket: Vec<Duration>,
    resume_ready: Vec<Duration>,
    resume_first: Vec<Duration>,
    resume_ticket: Vec<Duration>,
}

/// Part (a): `rounds` drops and resumes of one printing session, each round beside a fresh session opened while it
/// is detached.
async fn resume_rounds(config: &Config) -> (Latencies, u64) {
    let setup = setup(&[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "1000")]).await;
    let (mut browser, _) = attach_timed(&setup, None).await;
    let session = browser.session.clone();
    type_line(&mut browser.socket, PRINTER).await;
    let mut latencies = Latencies::default();
    for round in 0..config.warm_up + config.rounds {
        receive(&mut browser, ROUND_BYTES).await;
        let offset = browser.received;
        // The connection drops: no close frame (the TCP connection goes, unread data and all).
        drop(browser);
        let detached = eventually(Duration::from_secs(30), || async {
            let row = session_row(&setup, &session).await;
            row["attached"] == 0 && row["resumes"] == round && row["detached_at"].is_string()
        })
        .await;
        assert!(detached, "round {round}: not recorded detached: {}", session_row(&setup, &session).await);

        // The baseline, while the printing session waits: a fresh session, closed for good after its prompt.
        let (mut fresh, timing) = attach_timed(&setup, None).await;
        fresh.socket.close(Some(normal_close())).await.unwrap();
        if round >= config.warm_up {
            latencies.fresh_ticket.push(timing.ticket);
            latencies.fresh_ready.push(timing.ready);
            latencies.fresh_first.push(timing.first_byte);
        }

        let (back, timing) = attach_timed(&setup, Some((&session, offset))).await;
        browser = back;
        if round >= config.warm_up {
            latencies.resume_ticket.push(timing.ticket);
            latencies.resume_ready.push(timing.ready);
            latencies.resume_first.push(timing.first_byte);
        }
        if (round + 1) % 50 == 0 {
            eprintln!("{} rounds", round + 1);
        }
    }
    let received = browser.received;
    browser.socket.close(Some(normal_close())).await.unwrap();
    (latencies, received)
}

/// Part (b), one cycle: RSS samples (KiB) and what was checked.
struct Cycle {
    before: u64,
    attached: u64,
    detached: u64,
    settle: Duration,
    closed: u64,
    agent_attached: u64,
    agent_detached: u64,
    full: usize,
    full_at_once: usize,
    probed: u64,
    timed_out: usize,
    close_wait: Duration,
    shells_left: usize,
}

async fn memory_cycle(setup: &Setup, config: &Config) -> Cycle {
    let gateway = setup.server.child.id();
    let agent = setup.agent.child.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(gateway);
    let mut browsers = Vec::new();
    for _ in 0..config.sessions {
        browsers.push(attach_timed(setup, None).await.0);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attached = rss_kib(gateway);
    let agent_attached = rss_kib(agent);

    // Each session prints; its browser receives 64 KiB, acknowledges it, and drops.
    let mut dropped = Vec::new();
    for mut browser in browsers {
        type_line(&mut browser.socket, PRINTER).await;
        receive(&mut browser, ROUND_BYTES).await;
        dropped.push((browser.session.clone(), browser.acked));
        drop(browser);
    }
    let dropped_at = Instant::now();
    let all_detached = eventually(Duration::from_secs(60), || async {
        let rows = active_sessions(setup).await;
        rows.len() == config.sessions && rows.iter().all(|row| row["attached"] == 0)
    })
    .await;
    assert!(all_detached, "not all recorded detached");
    // With nobody attached, each shell runs until its buffer is full: a few seconds, then RSS until it settles.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(dropped_at.elapsed())).await;
    let (detached, _) = settled_rss(gateway, Duration::from_secs(config.detach_timeout_secs / 4)).await;
    let settle = dropped_at.elapsed();
    let agent_detached = rss_kib(agent);

    // Each buffer fills to a buffer's worth past what its browser acknowledged, less the credit not yet returned
    // to the agent (under a batch), or more (credit granted before its first acknowledgement counted what was
    // handed to its socket). Until then a resume from `ack + buffer - batch` is past the output (4416, which
    // disturbs nothing); once one is served, that buffer was full. (The served one attaches and leaves at once:
    // the shell goes on until the buffer is full again, from where that browser left.)
    let (mut full, mut full_at_once) = (0, 0);
    for (session, acked) in &dropped {
        let deadline = Instant::now() + Duration::from_secs(config.detach_timeout_secs / 4);
        let mut first = true;
        while Instant::now() < deadline {
            if probe(setup, session, acked + DEFAULT_BUFFER - CREDIT_BATCH).await.is_ok() {
                full += 1;
                full_at_once += usize::from(first);
                break;
            }
            first = false;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (probed, _) = settled_rss(gateway, Duration::from_secs(10)).await;
    let active = active_sessions(setup).await.len();
    assert_eq!(active, config.sessions, "measured after some detach timeouts");

    // Nobody comes back: each closes as `detach_timeout`, its shell ends, its buffer goes back.
    let close_start = Instant::now();
    let all_closed = eventually(Duration::from_secs(config.detach_timeout_secs + 120), || async {
        active_sessions(setup).await.is_empty()
    })
    .await;
    assert!(all_closed, "sessions still open long after their detach timeout");
    let close_wait = close_start.elapsed();
    let (status, closed_rows) = setup.api.get("/api/v1/sessions?active=false&limit=500", Some(&setup.root)).await;
    assert_eq!(status, 200);
    let ids: Vec<&String> = dropped.iter().map(|(session, _)| session).collect();
    let timed_out = closed_rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| ids.iter().any(|id| row["id"] == id.as_str()) && row["reason"] == "detach_timeout")
        .count();
    let (closed, _) = settled_rss(gateway, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shells_left = children(agent).len();
    Cycle {
        before,
        attached,
        detached,
        settle,
        closed,
        agent_attached,
        agent_detached,
        full,
        full_at_once,
        probed,
        timed_out,
        close_wait,
        shells_left,
    }
}

fn row(name: &str, samples: &[Duration]) {
    let max = samples.iter().max().map_or(f64::NAN, |max| max.as_secs_f64() * 1000.0);
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
        samples.len(),
        percentile_ms(samples, 0.50),
        percentile_ms(samples, 0.90),
        percentile_ms(samples, 0.99),
        max
    );
}

fn minus(total: &[Duration], part: &[Duration]) -> Vec<Duration> {
    total.iter().zip(part).map(|(total, part)| total.saturating_sub(*part)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let only_memory = args.iter().any(|arg| arg == "--only-memory");
    let cycle_count = args
        .iter()
        .position(|arg| arg == "--cycles")
        .and_then(|at| args.get(at + 1))
        .and_then(|raw| raw.parse::<usize>().ok())
        .unwrap_or(2)
        .max(1);
    let config = if quick {
        Config { rounds: 50, warm_up: 5, sessions: 10, detach_timeout_secs: 45 }
    } else {
        Config { rounds: 200, warm_up: 10, sessions: 50, detach_timeout_secs: 60 }
    };

    let mut resume = None;
    if !only_memory {
        eprintln!("resume after a drop: {} rounds (+{} warm-up)…", config.rounds, config.warm_up);
        resume = Some(resume_rounds(&config).await);
    }

    eprintln!("memory: {} detached sessions, {cycle_count} cycles…", config.sessions);
    let limit = (config.sessions + 10).to_string();
    let detach = config.detach_timeout_secs.to_string();
    let setup =
        setup(&[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", &limit), ("GATEHOUSE_RELAY_DETACH_TIMEOUT_SECS", &detach)])
            .await;
    let mut cycles = Vec::new();
    for cycle in 0..cycle_count {
        eprintln!("cycle {}…", cycle + 1);
        cycles.push(memory_cycle(&setup, &config).await);
    }

    println!(
        "## Terminal resume ({} rounds, {} KiB received between drops; {} detached sessions)\n",
        config.rounds,
        ROUND_BYTES >> 10,
        config.sessions
    );
    if let Some((latencies, received)) = &resume {
        println!("| from the ticket request to … (ms) | n | p50 | p90 | p99 | max |");
        println!("|---|---:|---:|---:|---:|---:|");
        row("fresh session: `ready`", &latencies.fresh_ready);
        row("**fresh session: first byte (the prompt)**", &latencies.fresh_first);
        row("resume after a drop: `ready`", &latencies.resume_ready);
        row("**resume after a drop: first resumed byte**", &latencies.resume_first);
        row("of which the ticket (`POST …/tickets`), fresh", &latencies.fresh_ticket);
        row("of which the ticket, resume", &latencies.resume_ticket);
        row("fresh: WebSocket + `auth` → first byte", &minus(&latencies.fresh_first, &latencies.fresh_ticket));
        row("resume: WebSocket + `auth` → first byte", &minus(&latencies.resume_first, &latencies.resume_ticket));
        println!();
        let ratio = |p: f64| percentile_ms(&latencies.resume_first, p) / percentile_ms(&latencies.fresh_first, p);
        println!(
            "Resume / fresh session, to the first byte: p50 **{:.2}×**, p90 {:.2}×, p99 **{:.2}×**. Every resume \
         started exactly at the offset asked ({} bytes received over the run, no `too_far_behind`).\n",
            ratio(0.5),
            ratio(0.9),
            ratio(0.99),
            received
        );
    }

    let n = config.sessions as f64;
    println!(
        "| memory, {} sessions (buffer {} KiB, detach timeout {} s) | {} |",
        config.sessions,
        DEFAULT_BUFFER >> 10,
        config.detach_timeout_secs,
        (1..=cycles.len()).map(|cycle| format!("cycle {cycle}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---:|".repeat(cycles.len()));
    let each = |f: &dyn Fn(&Cycle) -> String| cycles.iter().map(f).collect::<Vec<_>>().join(" | ");
    println!("| gateway RSS before (KiB) | {} |", each(&|c| c.before.to_string()));
    println!(
        "| gateway RSS, {} idle attached sessions (KiB) | {} |",
        config.sessions,
        each(&|c| c.attached.to_string())
    );
    println!(
        "| gateway RSS, all detached, buffers full (KiB) | {} |",
        each(&|c| format!("{} (at {:.1} s after the last drop)", c.detached, c.settle.as_secs_f64()))
    );
    println!(
        "| **gateway KiB per detached session** (detached − attached) / N | {} |",
        each(&|c| format!("**{:.0}**", (c.detached as f64 - c.attached as f64) / n))
    );
    println!(
        "| … as a share of the buffer | {} |",
        each(&|c| format!("{:.2}×", (c.detached as f64 - c.attached as f64) / n / (DEFAULT_BUFFER >> 10) as f64))
    );
    println!(
        "| gateway KiB per detached session, from before (detached − before) / N | {} |",
        each(&|c| format!("{:.0}", (c.detached as f64 - c.before as f64) / n))
    );
    println!(
        "| buffers full when measured (a resume from ack + buffer − 64 KiB served at the first try) / in the end | {} |",
        each(&|c| format!("{}/{} / {}/{}", c.full_at_once, config.sessions, c.full, config.sessions))
    );
    println!(
        "| gateway RSS after those resumes (each attached and dropped at once; KiB) | {} |",
        each(&|c| c.probed.to_string())
    );
    println!(
        "| closed as `detach_timeout` (wait from the measurement to none open) | {} |",
        each(&|c| format!("{}/{} ({:.1} s)", c.timed_out, config.sessions, c.close_wait.as_secs_f64()))
    );
    println!("| gateway RSS after they closed (KiB) | {} |", each(&|c| c.closed.to_string()));
    println!(
        "| gateway RSS kept after close, per session (closed − before) / N (KiB) | {} |",
        each(&|c| format!("{:.0}", (c.closed as f64 - c.before as f64) / n))
    );
    println!(
        "| agent RSS attached / detached (KiB) | {} |",
        each(&|c| format!("{} / {}", c.agent_attached, c.agent_detached))
    );
    println!("| shells left after close | {} |", each(&|c| c.shells_left.to_string()));
    drop(setup);
}
