//! Terminals that outlive their browsers (issue #16, ADR 0025), end to end: a real `gatehouse serve`, a real
//! `gatehouse agent` with real shells, WebSocket clients playing browsers that drop, resume and share a session.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::terminal::{
    close_code, connect, mint_agent_token, normal_close, read_until, setup, ticket, type_line, wait_for_workspace,
    Agent, Setup, Socket,
};
use common::{eventually, issue_token, Api, Server};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_tungstenite::tungstenite::Message;

/// What the gateway said before the output: `ready`, and `too_far_behind` if it came.
struct Attached {
    socket: Socket,
    ready: Value,
    behind: Option<Value>,
}

/// Authenticates with `ticket`, resuming `resume` = (session, offset) if given; the close code if refused.
async fn attach(server: &Server, workspace: &str, ticket: &str, resume: Option<(&str, u64)>) -> Result<Attached, u16> {
    let mut socket = connect(server, workspace).await;
    let mut auth = json!({"type": "auth", "ticket": ticket});
    if let Some((session, offset)) = resume {
        auth["session"] = json!(session);
        auth["offset"] = json!(offset);
    }
    socket.send(Message::Text(auth.to_string().into())).await.unwrap();
    let ready = loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("no answer to auth") {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "ready", "{text}");
                break message;
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    let mut behind = None;
    if resume.is_some() && ready["offset"].as_u64() != resume.map(|(_, offset)| offset) {
        // A resume that starts later than asked says so first.
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => behind = Some(serde_json::from_str(&text).unwrap()),
            other => panic!("expected too_far_behind, got {other:?}"),
        }
    }
    Ok(Attached { socket, ready, behind })
}

async fn fresh_ticket(api: &Api, token: &str, workspace: &str) -> String {
    let (status, issued) = ticket(api, token, workspace).await;
    assert_eq!(status, 201, "{issued}");
    issued["ticket"].as_str().unwrap().to_string()
}

/// Reads output into `received`, acknowledging every 64 KiB as a browser does, until `done` holds of it.
async fn read_acking(socket: &mut Socket, received: &mut Vec<u8>, base: u64, done: impl Fn(&[u8]) -> bool) {
    let mut acked = received.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(received) {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("output stopped") {
            Some(Ok(Message::Binary(bytes))) => received.extend_from_slice(&bytes),
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
        if received.len() - acked >= 64 * 1024 {
            acked = received.len();
            let ack = json!({"type": "ack", "offset": base + acked as u64});
            socket.send(Message::Text(ack.to_string().into())).await.unwrap();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// `seq 1 n` as a terminal shows it: lines end in CR LF.
fn seq_through_a_pty(n: u32) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\r\n").into_bytes()).collect()
}

/// Whether `at` falls after the ESC and up to the final byte of one of the CSI sequences in `stream`.
fn inside_a_sequence(stream: &[u8], at: usize) -> bool {
    let mut position = 0;
    while let Some(escape) = find(&stream[position..], b"\x1b[").map(|found| found + position) {
        let end = escape + 2 + stream[escape + 2..].iter().position(|byte| (0x40..=0x7e).contains(byte)).unwrap();
        if at > escape && at <= end {
            return true;
        }
        position = end + 1;
    }
    false
}

async fn session_row(api: &Api, admin: &str, session: &str) -> Value {
    let (status, sessions) = api.get("/api/v1/sessions?user=ada@example.com", Some(admin)).await;
    assert_eq!(status, 200, "{sessions}");
    sessions["items"].as_array().unwrap().iter().find(|item| item["id"] == session).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_terminal_resumes_byte_for_byte() {
    for db in TestDb::all("terminal_resume a_dropped_terminal_resumes_byte_for_byte").await {
        a_dropped_terminal_resumes_byte_for_byte_on(db).await;
    }
}

async fn a_dropped_terminal_resumes_byte_for_byte_on(db: TestDb) {
    let Setup { server, api, root, ada, agent: _agent } = setup(&db, &[]).await;
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { mut socket, ready, .. } = attach(&server, "ws-ada", &ticket, None).await.unwrap();
    assert_eq!(ready["offset"], 0);
    let session = ready["session"].as_str().unwrap().to_string();

    // 1.3 MB of output; the connection drops a third of the way in, with no close frame (a laptop lid, a
    // network that went away).
    type_line(&mut socket, "echo ST''ART; seq 1 200000; echo FIN''ISH\n").await;
    let mut received = Vec::new();
    read_acking(&mut socket, &mut received, 0, |seen| {
        find(seen, b"START\r\n").is_some_and(|start| seen.len() > start + 400_000)
    })
    .await;
    drop(socket);
    let detached = eventually(Duration::from_secs(10), || async {
        let row = session_row(&api, &root, &session).await;
        row["active"] == true && row["attached"] == 0 && row["detached_at"].is_string()
    })
    .await;
    assert!(detached, "the session is open, nobody attached: {}", session_row(&api, &root, &session).await);
    // The shell runs on meanwhile (it waits once its buffer is full).
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Back, from exactly the bytes received.
    let offset = received.len() as u64;
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { mut socket, ready, behind } =
        attach(&server, "ws-ada", &ticket, Some((&session, offset))).await.unwrap();
    assert_eq!((ready["session"].as_str(), ready["offset"].as_u64()), (Some(session.as_str()), Some(offset)));
    assert!(behind.is_none());
    read_acking(&mut socket, &mut received, 0, |seen| find(seen, b"FINISH\r\n").is_some()).await;

    // Nothing repeated, nothing lost: what lies between the markers is what `seq` writes to a terminal.
    let start = find(&received, b"START\r\n").unwrap() + b"START\r\n".len();
    let finish = find(&received, b"FINISH\r\n").unwrap();
    let expected = seq_through_a_pty(200_000);
    assert_eq!(finish - start, expected.len(), "the output's length");
    assert!(received[start..finish] == expected[..], "the output differs from a direct run");

    let resumed = eventually(Duration::from_secs(10), || async {
        let row = session_row(&api, &root, &session).await;
        row["attached"] == 1 && row["resumes"] == 1 && row["detached_at"].is_null()
    })
    .await;
    assert!(resumed, "{}", session_row(&api, &root, &session).await);
    // A close with 1000 ends it for good; its record counts every byte.
    socket.close(Some(normal_close())).await.unwrap();
    let closed = eventually(Duration::from_secs(10), || async {
        let row = session_row(&api, &root, &session).await;
        row["reason"] == "client_closed" && row["bytes_out"].as_u64() >= Some(received.len() as u64)
    })
    .await;
    assert!(closed, "{}", session_row(&api, &root, &session).await);
    // It cannot be resumed any more.
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    assert_eq!(attach(&server, "ws-ada", &ticket, Some((&session, 0))).await.err(), Some(4414));
}

#[tokio::test(flavor = "multi_thread")]
async fn resumes_that_cannot_be_served_get_documented_answers() {
    for db in TestDb::all("terminal_resume resumes_that_cannot_be_served").await {
        resumes_that_cannot_be_served_on(db).await;
    }
}

async fn resumes_that_cannot_be_served_on(db: TestDb) {
    // The smallest buffer: 256 KiB.
    let Setup { server, api, root, ada, agent: _agent } =
        setup(&db, &[("GATEHOUSE_RELAY_RESUME_BUFFER_BYTES", "1")]).await;
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let bob_agent_token = mint_agent_token(&api, &root, "ws-bob", "bob@example.com").await;
    let _bob_agent = Agent::start(&server, &bob_agent_token, "ws-bob");
    wait_for_workspace(&api, &bob, "ws-bob").await;

    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { mut socket, ready, .. } = attach(&server, "ws-ada", &ticket, None).await.unwrap();
    let session = ready["session"].as_str().unwrap().to_string();
    // Colored output, so that the buffer's oldest byte is likely inside an escape sequence.
    type_line(
        &mut socket,
        "for i in $(seq 1 30000); do printf '\\033[1;32m%05d\\033[0m line\\n' $i; done; echo DO''NE\n",
    )
    .await;
    let mut received = Vec::new();
    read_acking(&mut socket, &mut received, 0, |seen| find(seen, b"DONE\r\n").is_some()).await;
    assert!(received.len() > 600_000, "{}", received.len());
    drop(socket);

    // Someone else's session, a session that does not exist, an offset past the output: refused, each spending its
    // ticket, none disturbing the session.
    let root_ticket = fresh_ticket(&api, &root, "ws-ada").await;
    assert_eq!(attach(&server, "ws-ada", &root_ticket, Some((&session, 0))).await.err(), Some(4414), "the admin's");
    let bob_ticket = fresh_ticket(&api, &bob, "ws-bob").await;
    assert_eq!(attach(&server, "ws-bob", &bob_ticket, Some((&session, 0))).await.err(), Some(4414), "Bob's");
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    assert_eq!(attach(&server, "ws-ada", &ticket, Some(("no-such-session", 0))).await.err(), Some(4414));
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let future = received.len() as u64 + 1_000_000;
    assert_eq!(attach(&server, "ws-ada", &ticket, Some((&session, future))).await.err(), Some(4416));

    // From the beginning, long gone: told so, resumed at a point where nothing is cut, and what follows is
    // exactly the output from there.
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { mut socket, ready, behind } = attach(&server, "ws-ada", &ticket, Some((&session, 0))).await.unwrap();
    let behind = behind.expect("a too_far_behind message");
    let offset = ready["offset"].as_u64().unwrap();
    assert_eq!(behind, json!({"type": "too_far_behind", "requested": 0, "offset": offset}));
    assert!(offset > 0 && offset < received.len() as u64, "{offset}");
    assert!(received.len() as u64 - offset <= 256 * 1024 + 64 * 1024, "at most the buffer: {offset}");
    let tail = &received[offset as usize..];
    assert!(!inside_a_sequence(&received, offset as usize), "a resume inside a sequence: {:?}", &tail[..16]);
    let mut again = Vec::new();
    read_acking(&mut socket, &mut again, offset, |seen| seen.len() >= tail.len()).await;
    assert!(again[..tail.len()] == *tail, "the output from the resume point");

    // The shell is still the same one.
    type_line(&mut socket, "echo sa''me\n").await;
    read_until(&mut socket, "same", Duration::from_secs(20)).await;
    socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_browsers_share_one_terminal() {
    for db in TestDb::all("terminal_resume two_browsers_share_one_terminal").await {
        two_browsers_share_one_terminal_on(db).await;
    }
}

async fn two_browsers_share_one_terminal_on(db: TestDb) {
    let Setup { server, api, root, ada, agent: _agent } = setup(&db, &[]).await;
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { socket: mut first, ready, .. } = attach(&server, "ws-ada", &ticket, None).await.unwrap();
    let session = ready["session"].as_str().unwrap().to_string();
    type_line(&mut first, "echo on''e\n").await;
    read_until(&mut first, "one", Duration::from_secs(20)).await;

    // A second browser joins from the start: it sees what the first one saw, then both see everything.
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { socket: mut second, ready, behind } =
        attach(&server, "ws-ada", &ticket, Some((&session, 0))).await.unwrap();
    assert_eq!(ready["offset"], 0);
    assert!(behind.is_none());
    read_until(&mut second, "one", Duration::from_secs(20)).await;
    type_line(&mut second, "echo tw''o\n").await;
    read_until(&mut first, "two", Duration::from_secs(20)).await;
    read_until(&mut second, "two", Duration::from_secs(20)).await;
    let both = eventually(Duration::from_secs(10), || async {
        let row = session_row(&api, &root, &session).await;
        row["attached"] == 2 && row["resumes"] == 1
    })
    .await;
    assert!(both, "{}", session_row(&api, &root, &session).await);

    // One leaves (closing with another code than 1000 detaches): the other goes on.
    first.close(None).await.unwrap();
    type_line(&mut second, "echo thr''ee\n").await;
    read_until(&mut second, "three", Duration::from_secs(20)).await;
    let one = eventually(Duration::from_secs(10), || async {
        let row = session_row(&api, &root, &session).await;
        row["attached"] == 1 && row["active"] == true
    })
    .await;
    assert!(one, "{}", session_row(&api, &root, &session).await);
    // The shell exits: the browser gets its status and the session ends.
    type_line(&mut second, "exit 3\n").await;
    let mut exit = None;
    while exit.is_none() {
        match tokio::time::timeout(Duration::from_secs(20), second.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "exit" {
                    exit = Some(message["code"].clone());
                }
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(exit, Some(json!(3)));
    assert_eq!(close_code(&mut second, Duration::from_secs(10)).await, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_nobody_comes_back_to_closes_as_detach_timeout() {
    for db in TestDb::all("terminal_resume a_terminal_nobody_comes_back_to").await {
        a_terminal_nobody_comes_back_to_on(db).await;
    }
}

async fn a_terminal_nobody_comes_back_to_on(db: TestDb) {
    let Setup { server, api, root, ada, agent: _agent } =
        setup(&db, &[("GATEHOUSE_RELAY_DETACH_TIMEOUT_SECS", "1")]).await;
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { mut socket, ready, .. } = attach(&server, "ws-ada", &ticket, None).await.unwrap();
    let session = ready["session"].as_str().unwrap().to_string();
    type_line(&mut socket, "echo hi''there\n").await;
    read_until(&mut socket, "hithere", Duration::from_secs(20)).await;
    drop(socket);
    let closed = eventually(Duration::from_secs(15), || async {
        session_row(&api, &root, &session).await["reason"] == "detach_timeout"
    })
    .await;
    assert!(closed, "{}", session_row(&api, &root, &session).await);
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    assert_eq!(attach(&server, "ws-ada", &ticket, Some((&session, 0))).await.err(), Some(4414));

    // The firewall applies to a resume too: a blocked client keeps its ticket and gets 4003.
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    let Attached { socket, ready, .. } = attach(&server, "ws-ada", &ticket, None).await.unwrap();
    let session = ready["session"].as_str().unwrap().to_string();
    drop(socket);
    let body = json!({"rules": [{"action": "deny", "cidr": "127.0.0.0/8"}, {"action": "deny", "cidr": "::1/128"}],
        "default_action": "allow"});
    let (status, _, answer) = api.call(Method::PUT, "/api/v1/firewall", Some(&root), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    let ticket = fresh_ticket(&api, &ada, "ws-ada").await;
    assert_eq!(attach(&server, "ws-ada", &ticket, Some((&session, 0))).await.err(), Some(4003));
}
