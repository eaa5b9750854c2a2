//! Terminal resume (ADR 0025) attacked through its real interface: a real `gatehouse serve`, real `gatehouse agent`s
//! with real shells, and WebSocket clients that resume what is not theirs, send offsets and acknowledgements that are
//! not what they received, crowd a session, and leave detached sessions to fill the gateway's buffers. Each attack
//! must get its documented answer (docs/API.md, "Sessions outlive their sockets"), never a panic or a hang, and the
//! sessions around it must go on as before.
//!
//! The last two tests showed defects found this way (a terminal frozen when its floor moved without credit), fixed
//! in relay/src/terminal.rs (the pump re-grants credit when a viewer comes or goes).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::terminal::{
    close_code, connect, mint_agent_token, normal_close, read_until, setup, ticket, type_line, wait_for_workspace,
    Agent, Setup, Socket,
};
use common::{eventually, issue_token, Api, Server};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_tungstenite::tungstenite::Message;

/// `relay_resume_buffer_bytes` at its minimum, and every terminal's own part of the buffer (the agent's window).
const RESERVED: u64 = 256 * 1024;
/// The gateway returns credit to the agent in batches of this many bytes (`relay::mux::CREDIT_BATCH`): a buffer
/// with room for `n` more bytes stops somewhere in the last batch, between `n - CREDIT_BATCH` and `n`.
const CREDIT_BATCH: u64 = RESERVED / 4;
/// The default `relay_resume_buffer_bytes`.
const BUFFER: u64 = 1024 * 1024;
/// Browsers on one session at once, at most (`relay::terminal::MAX_VIEWERS`).
const MAX_VIEWERS: usize = 8;
/// A shell command printing without end.
const PRINTER: &str = "yes 'hostile resume: 0123456789 abcdefghijklmnopqrstuvwxyz'\n";

/// A refusal: the close code and its reason text.
type Refusal = (u16, String);

/// What the gateway said before the output: `ready`, and `too_far_behind` if it came.
struct Attached {
    socket: Socket,
    ready: Value,
    behind: Option<Value>,
}

/// Sends `auth` (any text) as the first message; the socket after `ready`, or the close code and reason.
async fn auth_text(server: &Server, workspace: &str, auth: String) -> Result<(Socket, Value), Refusal> {
    let mut socket = connect(server, workspace).await;
    socket.send(Message::Text(auth.into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), socket.next()).await.expect("no answer to auth") {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "ready", "{text}");
                return Ok((socket, message));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, "".into())))
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// Authenticates with `ticket`, resuming `resume` = (session, offset) if given.
async fn attach(
    server: &Server,
    workspace: &str,
    ticket: &str,
    resume: Option<(&str, u64)>,
) -> Result<Attached, Refusal> {
    let mut auth = json!({"type": "auth", "ticket": ticket});
    if let Some((session, offset)) = resume {
        auth["session"] = json!(session);
        auth["offset"] = json!(offset);
    }
    let (mut socket, ready) = auth_text(server, workspace, auth.to_string()).await?;
    let mut behind = None;
    if resume.is_some() && ready["offset"].as_u64() != resume.map(|(_, offset)| offset) {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => behind = Some(serde_json::from_str(&text).unwrap()),
            other => panic!("expected too_far_behind, got {other:?}"),
        }
    }
    Ok(Attached { socket, ready, behind })
}

/// The close code of a refused attach (panics if it was served).
fn code(result: Result<Attached, Refusal>) -> u16 {
    match result {
        Ok(attached) => panic!("served: {}", attached.ready),
        Err((code, _)) => code,
    }
}

async fn fresh_ticket(api: &Api, token: &str, workspace: &str) -> String {
    let (status, issued) = ticket(api, token, workspace).await;
    assert_eq!(status, 201, "{issued}");
    issued["ticket"].as_str().unwrap().to_string()
}

/// A browser's view of its session: the output received from `base` on, and what it acknowledged.
struct Browser {
    socket: Socket,
    session: String,
    base: u64,
    received: Vec<u8>,
    acked: u64,
}

impl Browser {
    fn offset(&self) -> u64 {
        self.base + self.received.len() as u64
    }

    async fn ack(&mut self, offset: u64) {
        let message = json!({"type": "ack", "offset": offset});
        self.socket.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// Reads output, acknowledging every 64 KiB as a browser does, until `done` holds of what was received or
    /// `limit` passes; whether it held.
    async fn read_until(&mut self, limit: Duration, done: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.received) {
            let Ok(message) = tokio::time::timeout_at(deadline, self.socket.next()).await else { return false };
            match message {
                Some(Ok(Message::Binary(bytes))) => self.received.extend_from_slice(&bytes),
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
            if self.offset() - self.acked >= 64 * 1024 {
                self.acked = self.offset();
                self.ack(self.acked).await;
            }
        }
        true
    }

    /// Reads until `needle` has arrived (60 s at most).
    async fn read_to(&mut self, needle: &[u8]) {
        let found = self.read_until(Duration::from_secs(60), |seen| find(seen, needle).is_some()).await;
        assert!(found, "{:?} never arrived", String::from_utf8_lossy(needle));
    }

    /// Reads `bytes` more output (60 s at most), then acknowledges all it received.
    async fn read_more(&mut self, bytes: u64) {
        let until = self.received.len() as u64 + bytes;
        let got = self.read_until(Duration::from_secs(60), |seen| seen.len() as u64 >= until).await;
        assert!(got, "output stopped at {}", self.offset());
        self.acked = self.offset();
        self.ack(self.acked).await;
        self.sync().await;
    }

    /// Waits until the gateway has read every message sent so far (a `ping`, answered in order), receiving the
    /// output that arrives meanwhile. While the gateway hands output to a socket that does not take it, it does not
    /// read from it: an acknowledgement still unread when the connection drops is lost with it.
    async fn sync(&mut self) {
        self.socket.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(60), self.socket.next()).await.expect("no pong") {
                Some(Ok(Message::Binary(bytes))) => self.received.extend_from_slice(&bytes),
                Some(Ok(Message::Text(text))) if text.contains("pong") => return,
                Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    }
}

/// A new session of `token`'s in `workspace`, after `ready`.
async fn open(setup: &Setup, workspace: &str) -> Browser {
    let ticket = fresh_ticket(&setup.api, &setup.ada, workspace).await;
    let Attached { socket, ready, .. } = attach(&setup.server, workspace, &ticket, None).await.unwrap();
    let session = ready["session"].as_str().unwrap().to_string();
    Browser { socket, session, base: 0, received: Vec::new(), acked: 0 }
}

/// A new session whose browser acknowledges from the start (an acknowledgement of 0 first): the gateway keeps
/// its output to a buffer past the browser's acknowledgement from then on. (Until a browser's first acknowledgement
/// the gateway counts what it handed to the socket as received, and credit the agent got then stays granted.)
async fn open_acking(setup: &Setup) -> Browser {
    let mut browser = open(setup, "ws-ada").await;
    browser.ack(0).await;
    browser.sync().await;
    browser
}

/// Ada resumes `session` from `offset`, which must be served from there exactly.
async fn resume_exactly(setup: &Setup, session: &str, offset: u64) -> Browser {
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let Attached { socket, ready, behind } =
        attach(&setup.server, "ws-ada", &ticket, Some((session, offset))).await.unwrap();
    assert_eq!(ready["offset"].as_u64(), Some(offset), "{ready}");
    assert!(behind.is_none(), "{behind:?}");
    Browser { socket, session: session.to_string(), base: offset, received: Vec::new(), acked: offset }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// `seq 1 n` as a terminal shows it: lines end in CR LF.
fn seq_through_a_pty(n: u32) -> Vec<u8> {
    (1..=n).flat_map(|i| format!("{i}\r\n").into_bytes()).collect()
}

/// Checks that what follows `START\r\n` in `stream` is the start of `seq 1 …` through a PTY, unbroken.
fn assert_seq_prefix(stream: &[u8]) {
    let start = find(stream, b"START\r\n").expect("START") + b"START\r\n".len();
    let body = &stream[start..];
    let body = match find(body, b"FINISH\r\n") {
        Some(end) => &body[..end],
        None => body,
    };
    let mut expected = Vec::with_capacity(body.len() + 16);
    let mut i = 1u32;
    while expected.len() < body.len() {
        expected.extend_from_slice(format!("{i}\r\n").as_bytes());
        i += 1;
    }
    let same = body.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(same.is_none(), "the output differs from `seq` at byte {:?} after START", same);
}

async fn session_row(api: &Api, admin: &str, session: &str) -> Value {
    let (status, sessions) = api.get("/api/v1/sessions?user=ada@example.com&limit=500", Some(admin)).await;
    assert_eq!(status, 200, "{sessions}");
    sessions["items"].as_array().unwrap().iter().find(|item| item["id"] == session).cloned().unwrap_or(Value::Null)
}

/// Waits until the read model shows `session` with `attached` browsers (and, with none, detached).
async fn wait_attached(setup: &Setup, session: &str, attached: usize) {
    let reached = eventually(Duration::from_secs(20), || async {
        let row = session_row(&setup.api, &setup.root, session).await;
        row["active"] == true && row["attached"] == attached && (attached > 0 || row["detached_at"].is_string())
    })
    .await;
    assert!(reached, "never {attached} attached: {}", session_row(&setup.api, &setup.root, session).await);
}

/// Waits until the read model shows `session` open with one browser, resumed `resumes` times (refused attempts
/// are no resumes).
async fn wait_resumes(setup: &Setup, session: &str, resumes: usize) {
    let reached = eventually(Duration::from_secs(20), || async {
        let row = session_row(&setup.api, &setup.root, session).await;
        row["active"] == true && row["attached"] == 1 && row["resumes"] == resumes
    })
    .await;
    assert!(reached, "never {resumes} resumes: {}", session_row(&setup.api, &setup.root, session).await);
}

/// Waits until the read model shows `session` closed; its row.
async fn wait_closed(setup: &Setup, session: &str) -> Value {
    let closed = eventually(Duration::from_secs(30), || async {
        session_row(&setup.api, &setup.root, session).await["active"] == false
    })
    .await;
    let row = session_row(&setup.api, &setup.root, session).await;
    assert!(closed, "still open: {row}");
    row
}

/// A second workspace with its agent, owned by `owner`.
async fn workspace(setup: &Setup, token: &str, id: &str, owner: &str) -> Agent {
    let agent_token = mint_agent_token(&setup.api, &setup.root, id, owner).await;
    let agent = Agent::start(&setup.server, &agent_token, id);
    wait_for_workspace(&setup.api, token, id).await;
    agent
}

/// A resume attempt that must be refused with 4416 or served: `Ok(())` when served (the socket is dropped at once,
/// which detaches it again).
async fn probe(setup: &Setup, session: &str, offset: u64) -> Result<(), u16> {
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    match attach(&setup.server, "ws-ada", &ticket, Some((session, offset))).await {
        Ok(_) => Ok(()),
        Err((code, reason)) => {
            assert_eq!(code, 4416, "{reason}");
            Err(code)
        }
    }
}

// ------------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_is_not_the_callers_is_answered_as_one_that_does_not_exist() {
    for db in TestDb::all("resume_hostile a_session_that_is_not_the_callers").await {
        not_the_callers_on(db).await;
    }
}

async fn not_the_callers_on(db: TestDb) {
    let setup = setup(&db, &[]).await;
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let _bob_agent = workspace(&setup, &bob, "ws-bob", "bob@example.com").await;
    let _second_agent = workspace(&setup, &setup.ada, "ws-ada-2", "ada@example.com").await;

    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo be''fore\n").await;
    browser.read_to(b"before").await;
    let (session, offset) = (browser.session.clone(), browser.offset());
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;

    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let unknown = attach(&setup.server, "ws-ada", &ticket, Some(("no-such-session", 0))).await.err().unwrap();
    assert_eq!(unknown.0, 4414, "{unknown:?}");
    // Whoever asks, from wherever, with whatever offset (one Ada would get 4416 for too): the same answer, word for
    // word, as for a session that does not exist, and the ticket is spent.
    let strangers = [
        (&bob, "ws-bob", "Bob, from his workspace"),
        (&setup.root, "ws-ada", "an admin, from Ada's workspace"),
        (&setup.root, "ws-bob", "an admin, from Bob's workspace"),
        (&setup.ada, "ws-ada-2", "Ada, from another workspace of hers"),
    ];
    for (token, workspace, who) in strangers {
        for asked in [offset, 0, offset + 1, u64::MAX] {
            let ticket = fresh_ticket(&setup.api, token, workspace).await;
            let answer = attach(&setup.server, workspace, &ticket, Some((&session, asked))).await.err();
            assert_eq!(answer.as_ref(), Some(&unknown), "{who}, offset {asked}");
            let again = attach(&setup.server, workspace, &ticket, None).await.err().map(|refusal| refusal.0);
            assert_eq!(again, Some(4001), "{who}: the refused ticket is spent");
        }
    }
    // A ticket for Bob's workspace does not open Ada's terminal endpoint, session or not.
    let ticket = fresh_ticket(&setup.api, &bob, "ws-bob").await;
    assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, Some((&session, offset))).await), 4001);

    // None of it touched the session: Ada resumes exactly where she was, and nobody else's attempt counted.
    let mut browser = resume_exactly(&setup, &session, offset).await;
    type_line(&mut browser.socket, "echo af''ter\n").await;
    browser.read_to(b"after").await;
    wait_resumes(&setup, &session, 1).await;
    browser.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_that_are_not_offsets_get_their_close_codes() {
    for db in TestDb::all("resume_hostile offsets_that_are_not_offsets").await {
        offsets_on(db).await;
    }
}

async fn offsets_on(db: TestDb) {
    let setup = setup(&db, &[]).await;
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo be''fore\n").await;
    browser.read_to(b"before").await;
    let (session, offset) = (browser.session.clone(), browser.offset());
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;

    // Offsets past the output: 4416, whatever their size.
    for asked in [offset + 1, offset + BUFFER, u64::MAX / 2, u64::MAX] {
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        let answer = attach(&setup.server, "ws-ada", &ticket, Some((&session, asked))).await;
        assert_eq!(code(answer), 4416, "offset {asked}");
    }
    // `auth` messages that are not what the protocol says: 1002 (1009 over 4 KiB), before the ticket is looked at.
    let big = "0".repeat(5000);
    let cases: Vec<(String, u16)> = vec![
        (r#""offset":-1"#.into(), 1002),
        (r#""offset":"5""#.into(), 1002),
        (r#""offset":1.5"#.into(), 1002),
        (r#""offset":1e3"#.into(), 1002),
        (r#""offset":1e400"#.into(), 1002),
        (r#""offset":18446744073709551616"#.into(), 1002),
        (r#""offset":99999999999999999999999999999999999999"#.into(), 1002),
        (r#""offset":[1]"#.into(), 1002),
        (r#""offset":{"n":1}"#.into(), 1002),
        (r#""offset":true"#.into(), 1002),
        (format!(r#""offset":1,"offset":{offset}"#), 1002),
        (format!(r#""offset":{offset},"extra":1"#), 1002),
        (format!(r#""offset":{big}{offset}"#), 1009),
        (format!(r#""offset":{offset}{}"#, " ".repeat(5000)), 1009),
    ];
    for (field, expected) in cases {
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        let text = format!(r#"{{"type":"auth","ticket":"{ticket}","session":"{session}",{field}}}"#);
        let answer = auth_text(&setup.server, "ws-ada", text).await.err().map(|refusal| refusal.0);
        assert_eq!(answer, Some(expected), "{:.80}", field);
    }
    // An offset names the session it is in: without one, or with one that is not a string, 1002.
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    for field in [
        format!(r#""offset":{offset}"#),
        format!(r#""session":null,"offset":{offset}"#),
        format!(r#""session":42,"offset":{offset}"#),
        format!(r#""session":["{session}"],"offset":{offset}"#),
    ] {
        let text = format!(r#"{{"type":"auth","ticket":"{ticket}",{field}}}"#);
        let answer = auth_text(&setup.server, "ws-ada", text).await.err().map(|refusal| refusal.0);
        assert_eq!(answer, Some(1002), "{field}");
    }
    // Sessions that are strings but no session: 4414.
    for name in [String::new(), " ".into(), "x".repeat(3000), format!("{session} "), session.to_uppercase()] {
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, Some((&name, 0))).await), 4414, "{name:.40}");
    }
    // 900 KiB of `auth` (under `relay_max_frame_bytes`): refused by its size.
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let text = format!(
        r#"{{"type":"auth","ticket":"{ticket}","session":"{session}","offset":0,"x":"{}"}}"#,
        "y".repeat(900 * 1024)
    );
    assert_eq!(auth_text(&setup.server, "ws-ada", text).await.err().map(|refusal| refusal.0), Some(1009));

    // The session never noticed: served exactly from where it was left.
    let mut browser = resume_exactly(&setup, &session, offset).await;
    type_line(&mut browser.socket, "echo af''ter\n").await;
    browser.read_to(b"after").await;
    wait_resumes(&setup, &session, 1).await;
    browser.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledgements_that_lie_lose_nothing() {
    for db in TestDb::all("resume_hostile acknowledgements_that_lie").await {
        acknowledgements_on(db).await;
    }
}

async fn acknowledgements_on(db: TestDb) {
    let setup = setup(&db, &[]).await;
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo ST''ART; seq 1 1000000; echo FIN''ISH\n").await;
    browser.read_to(b"START\r\n").await;
    // Acknowledgements going backwards, repeated, at zero, one byte on: between the real ones, a thousand of them.
    for round in 0..4 {
        browser.read_more(64 * 1024).await;
        let real = browser.acked;
        for offset in [0, 1, real - 1, real / 2, real, real, real] {
            browser.ack(offset).await;
        }
        for _ in 0..250 {
            browser.ack(round).await;
        }
    }
    // The connection drops with the output in flight: the resume from what was received loses nothing, repeats
    // nothing.
    let (session, offset) = (browser.session.clone(), browser.offset());
    let mut received = std::mem::take(&mut browser.received);
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;
    let mut browser = resume_exactly(&setup, &session, offset).await;
    browser.read_to(b"FINISH\r\n").await;
    received.extend_from_slice(&browser.received);
    let start = find(&received, b"START\r\n").unwrap() + b"START\r\n".len();
    let finish = find(&received, b"FINISH\r\n").unwrap();
    assert!(received[start..finish] == seq_through_a_pty(1_000_000)[..], "the output differs from a direct run");

    // Acknowledgements past what was sent count as what was sent: the session goes on.
    for offset in [browser.offset() + 1, browser.offset() + BUFFER, u64::MAX] {
        browser.ack(offset).await;
    }
    type_line(&mut browser.socket, "echo sti''ll here\n").await;
    browser.read_to(b"still here").await;
    let offset = browser.offset();
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;
    // Quiet when it dropped, all of it received: the resume from there is exact.
    let mut browser = resume_exactly(&setup, &session, offset).await;
    type_line(&mut browser.socket, "echo ba''ck\n").await;
    browser.read_to(b"back").await;
    browser.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_acknowledgements_end_only_their_own_session() {
    for db in TestDb::all("resume_hostile malformed_acknowledgements").await {
        malformed_acknowledgements_on(db).await;
    }
}

async fn malformed_acknowledgements_on(db: TestDb) {
    let setup = setup(&db, &[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "50")]).await;
    // A bystander, attached the whole time.
    let mut bystander = open(&setup, "ws-ada").await;
    type_line(&mut bystander.socket, "echo by''stander\n").await;
    bystander.read_to(b"bystander").await;

    let padding = " ".repeat(5000);
    let cases: Vec<(String, u16)> = vec![
        (r#"{"type":"ack","offset":-1}"#.into(), 1002),
        (r#"{"type":"ack","offset":"64"}"#.into(), 1002),
        (r#"{"type":"ack","offset":1.5}"#.into(), 1002),
        (r#"{"type":"ack","offset":18446744073709551616}"#.into(), 1002),
        (r#"{"type":"ack"}"#.into(), 1002),
        (r#"{"type":"ack","offset":1,"session":"x"}"#.into(), 1002),
        (r#"["ack",1]"#.into(), 1002),
        (format!(r#"{{"type":"ack","offset":1{padding}}}"#), 1009),
    ];
    for (text, expected) in cases {
        let mut browser = open(&setup, "ws-ada").await;
        type_line(&mut browser.socket, "echo ea''ch\n").await;
        browser.read_to(b"each").await;
        let session = browser.session.clone();
        browser.socket.send(Message::Text(text.clone().into())).await.unwrap();
        assert_eq!(close_code(&mut browser.socket, Duration::from_secs(20)).await, expected, "{text:.60}");
        // A browser that breaks the protocol ends its session for good.
        let row = wait_closed(&setup, &session).await;
        assert_eq!(row["reason"], "client_closed", "{row}");
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, Some((&session, 0))).await), 4414, "{text:.60}");
    }
    // An acknowledgement instead of `auth`: 4000.
    let mut socket = connect(&setup.server, "ws-ada").await;
    socket.send(Message::Text(json!({"type": "ack", "offset": 0}).to_string().into())).await.unwrap();
    assert_eq!(close_code(&mut socket, Duration::from_secs(20)).await, 4000);

    // The bystander went on through all of it.
    type_line(&mut bystander.socket, "echo st''ill\n").await;
    bystander.read_to(b"still").await;
    assert_eq!(session_row(&setup.api, &setup.root, &bystander.session).await["active"], true);
    bystander.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crowd_of_resumes_gets_4028_past_eight_browsers_and_leaves_the_session_as_it_was() {
    for db in TestDb::all("resume_hostile a_crowd_of_resumes").await {
        crowd_on(db).await;
    }
}

async fn crowd_on(db: TestDb) {
    let setup = setup(&db, &[]).await;
    let mut first = open(&setup, "ws-ada").await;
    type_line(&mut first.socket, "echo on''e\n").await;
    first.read_to(b"one").await;
    let session = first.session.clone();

    for cycle in 0..2 {
        // Sixteen browsers at once: the session takes seven more, the rest get 4028, none waits for ever.
        let attempts = futures::future::join_all((0..16).map(|_| async {
            let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
            attach(&setup.server, "ws-ada", &ticket, Some((&session, 0))).await
        }))
        .await;
        let mut joined = Vec::new();
        let mut refused = Vec::new();
        for attempt in attempts {
            match attempt {
                Ok(attached) => joined.push(attached.socket),
                Err((code, _)) => refused.push(code),
            }
        }
        assert_eq!(joined.len(), MAX_VIEWERS - 1, "cycle {cycle}: refused {refused:?}");
        assert!(refused.iter().all(|code| *code == 4028), "cycle {cycle}: {refused:?}");
        // Each of them is a full browser of the session.
        type_line(&mut first.socket, &format!("echo cy''cle-{cycle}\n")).await;
        let marker = format!("cycle-{cycle}");
        for socket in &mut joined {
            read_until(socket, &marker, Duration::from_secs(20)).await;
        }
        first.read_to(marker.as_bytes()).await;
        // They all drop: the session is back to its one browser, and takes a crowd again.
        drop(joined);
        wait_attached(&setup, &session, 1).await;
    }
    type_line(&mut first.socket, "echo la''st\n").await;
    first.read_to(b"last").await;
    wait_resumes(&setup, &session, 2 * (MAX_VIEWERS - 1)).await;
    first.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn detached_sessions_hold_their_reserve_and_the_pool_no_more() {
    for db in TestDb::all("resume_hostile detached_sessions_hold_their_reserve").await {
        pool_on(db).await;
    }
}

async fn pool_on(db: TestDb) {
    // 1 MiB per session, but only 256 KiB to share beyond each one's own 256 KiB.
    let setup = setup(
        &db,
        &[
            ("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "50"),
            ("GATEHOUSE_RELAY_RESUME_BUFFER_TOTAL_BYTES", &RESERVED.to_string()),
        ],
    )
    .await;
    // The first session, alone, takes the whole pool: its shell fills its reserve and the pool, then waits. (Its
    // buffer takes from the pool as soon as it holds more than its reserve, so once it holds more than its reserve
    // and three quarters of the pool, it holds the whole pool.)
    let mut greedy = open(&setup, "ws-ada").await;
    type_line(&mut greedy.socket, PRINTER).await;
    greedy.read_more(64 * 1024).await;
    let (greedy_session, greedy_acked) = (greedy.session.clone(), greedy.acked);
    drop(greedy.socket);
    wait_attached(&setup, &greedy_session, 0).await;
    let full = eventually(Duration::from_secs(30), || async {
        assert_eq!(probe(&setup, &greedy_session, greedy_acked + 2 * RESERVED + 1).await, Err(4416));
        probe(&setup, &greedy_session, greedy_acked + 2 * RESERVED - CREDIT_BATCH).await.is_ok()
    })
    .await;
    assert!(full, "the first session never held its reserve and the pool");

    // More sessions, each dropped after 64 KiB: with the pool gone, each holds its reserve past what its browser
    // acknowledged, and no more (a resume one byte further is past the output, however long one waits).
    let mut dropped = Vec::new();
    for _ in 0..4 {
        let mut browser = open_acking(&setup).await;
        type_line(&mut browser.socket, "echo ST''ART; seq 1 20000000\n").await;
        browser.read_to(b"START\r\n").await;
        browser.read_more(64 * 1024).await;
        dropped.push((browser.session.clone(), browser.acked, std::mem::take(&mut browser.received)));
    }
    for (session, _, _) in &dropped {
        wait_attached(&setup, session, 0).await;
    }
    for _ in 0..10 {
        for (session, acked, _) in &dropped {
            assert_eq!(probe(&setup, session, acked + RESERVED + 1).await, Err(4416), "a buffer past its reserve");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A session of its own meanwhile runs as any other: all its output, exactly.
    let mut other = open(&setup, "ws-ada").await;
    type_line(&mut other.socket, "echo ST''ART; seq 1 100000; echo FIN''ISH\n").await;
    other.read_to(b"FINISH\r\n").await;
    assert_seq_prefix(&other.received);
    assert!(find(&other.received, b"100000\r\nFINISH\r\n").is_some(), "the end of the output");
    other.socket.close(Some(normal_close())).await.unwrap();

    // Each detached one resumes exactly from what it acknowledged, with all of its reserve there, and goes on.
    for (session, acked, before) in dropped {
        let mut browser = resume_exactly(&setup, &session, acked).await;
        browser.read_more(RESERVED + 64 * 1024).await;
        // What it had received up to its acknowledgement, then what the resume brought.
        let mut stream = before;
        stream.truncate(acked as usize);
        stream.extend_from_slice(&browser.received);
        assert_seq_prefix(&stream);
        browser.socket.close(Some(normal_close())).await.unwrap();
        wait_closed(&setup, &session).await;
    }

    // The first one ends: its share of the pool comes back, and a new detached session can take it.
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let Attached { socket: mut greedy, .. } =
        attach(&setup.server, "ws-ada", &ticket, Some((&greedy_session, 0))).await.unwrap();
    greedy.close(Some(normal_close())).await.unwrap();
    wait_closed(&setup, &greedy_session).await;
    let mut next = open(&setup, "ws-ada").await;
    type_line(&mut next.socket, PRINTER).await;
    next.read_more(64 * 1024).await;
    let (session, acked) = (next.session.clone(), next.acked);
    drop(next.socket);
    wait_attached(&setup, &session, 0).await;
    let refilled = eventually(Duration::from_secs(30), || async {
        probe(&setup, &session, acked + 2 * RESERVED - CREDIT_BATCH).await.is_ok()
    })
    .await;
    assert!(refilled, "the pool did not come back when the session holding it closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_that_ended_cannot_be_resumed() {
    for db in TestDb::all("resume_hostile sessions_that_ended").await {
        ended_on(db).await;
    }
}

/// Resumes of `session`, from the start, one byte on and the largest offset: all 4414.
async fn refused(setup: &Setup, session: &str) {
    for offset in [0, 1, u64::MAX] {
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        let answer = attach(&setup.server, "ws-ada", &ticket, Some((session, offset))).await;
        assert_eq!(code(answer), 4414, "offset {offset}");
    }
}

async fn ended_on(db: TestDb) {
    let mut setup = setup(&db, &[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "50")]).await;

    // The shell exits while nobody is attached.
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "sleep 1; exit 3\n").await;
    // Once the gateway has read the line (a connection that drops takes what it had not read with it).
    browser.sync().await;
    let session = browser.session.clone();
    drop(browser.socket);
    let row = wait_closed(&setup, &session).await;
    assert_eq!(row["reason"], "client_closed", "{row}");
    refused(&setup, &session).await;

    // The shell exits with a browser attached, which gets its status.
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "exit 4\n").await;
    let session = browser.session.clone();
    assert_eq!(close_code(&mut browser.socket, Duration::from_secs(20)).await, 1000);
    wait_closed(&setup, &session).await;
    refused(&setup, &session).await;

    // The agent goes away while the session is detached; another agent serves the workspace afterwards.
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo be''fore\n").await;
    browser.read_to(b"before").await;
    let session = browser.session.clone();
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;
    setup.agent.kill();
    let row = wait_closed(&setup, &session).await;
    assert_eq!(row["reason"], "agent_lost", "{row}");
    let agent_token = mint_agent_token(&setup.api, &setup.root, "ws-ada", "ada@example.com").await;
    setup.agent = Agent::start(&setup.server, &agent_token, "ws-ada");
    wait_for_workspace(&setup.api, &setup.ada, "ws-ada").await;
    refused(&setup, &session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_nobody_came_back_to_cannot_be_resumed() {
    for db in TestDb::all("resume_hostile a_session_nobody_came_back_to").await {
        nobody_came_back_on(db).await;
    }
}

async fn nobody_came_back_on(db: TestDb) {
    let setup = setup(&db, &[("GATEHOUSE_RELAY_DETACH_TIMEOUT_SECS", "1")]).await;
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo be''fore\n").await;
    browser.read_to(b"before").await;
    let session = browser.session.clone();
    drop(browser.socket);
    let row = wait_closed(&setup, &session).await;
    assert_eq!(row["reason"], "detach_timeout", "{row}");
    refused(&setup, &session).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_resuming_off_a_dropped_socket_ends_its_session() {
    for db in TestDb::all("resume_hostile with_resuming_off").await {
        resuming_off_on(db).await;
    }
}

async fn resuming_off_on(db: TestDb) {
    let setup = setup(&db, &[("GATEHOUSE_RELAY_DETACH_TIMEOUT_SECS", "0")]).await;
    let mut browser = open(&setup, "ws-ada").await;
    type_line(&mut browser.socket, "echo be''fore\n").await;
    browser.read_to(b"before").await;
    let (session, offset) = (browser.session.clone(), browser.offset());
    // A second browser may still join while the first is there.
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let Attached { socket: second, .. } =
        attach(&setup.server, "ws-ada", &ticket, Some((&session, offset))).await.unwrap();
    drop(browser.socket);
    wait_attached(&setup, &session, 1).await;
    // The last one drops: nothing waits for it.
    drop(second);
    let row = wait_closed(&setup, &session).await;
    assert_eq!(row["reason"], "client_closed", "{row}");
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, Some((&session, offset))).await), 4414);
}

#[tokio::test(flavor = "multi_thread")]
async fn detached_sessions_count_towards_the_users_limit_but_resuming_needs_no_room() {
    for db in TestDb::all("resume_hostile detached_sessions_count").await {
        limit_on(db).await;
    }
}

async fn limit_on(db: TestDb) {
    let setup = setup(&db, &[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "2")]).await;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let mut browser = open(&setup, "ws-ada").await;
        type_line(&mut browser.socket, "echo be''fore\n").await;
        browser.read_to(b"before").await;
        sessions.push((browser.session.clone(), browser.offset()));
        drop(browser.socket);
    }
    for (session, _) in &sessions {
        wait_attached(&setup, session, 0).await;
    }
    // Both detached: no third one.
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, None).await), 4029);
    // A resume is no new session, even several browsers on each.
    let mut browsers = Vec::new();
    for (session, offset) in &sessions {
        for _ in 0..2 {
            browsers.push(resume_exactly(&setup, session, *offset).await);
        }
    }
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    assert_eq!(code(attach(&setup.server, "ws-ada", &ticket, None).await), 4029);
    // One ends for good: room for a new one.
    let mut browser = browsers.remove(0);
    browser.socket.close(Some(normal_close())).await.unwrap();
    wait_closed(&setup, &sessions[0].0).await;
    let opened = eventually(Duration::from_secs(10), || async {
        let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
        attach(&setup.server, "ws-ada", &ticket, None).await.is_ok()
    })
    .await;
    assert!(opened, "no new session after one of two ended");
}

// ------------------------------------------------------------------------------------------------ defects, fixed

#[tokio::test(flavor = "multi_thread")]
async fn when_the_browser_holding_the_output_back_leaves_the_other_gets_the_rest() {
    for db in TestDb::all("resume_hostile when_the_browser_holding_the_output_back_leaves").await {
        holding_back_on(db).await;
    }
}

async fn holding_back_on(db: TestDb) {
    // The smallest buffer: 256 KiB.
    let setup = setup(&db, &[("GATEHOUSE_RELAY_RESUME_BUFFER_BYTES", "1")]).await;
    // A browser (a laptop about to sleep) acknowledges what it has, then stops reading.
    let mut laptop = open(&setup, "ws-ada").await;
    type_line(&mut laptop.socket, "echo he''llo\n").await;
    laptop.read_to(b"hello").await;
    let held = laptop.offset();
    laptop.ack(held).await;
    // A second browser (a desktop) joins and runs a command with more output than the buffer; it acknowledges
    // every 64 KiB as browsers do. The shell stops a buffer past the laptop's acknowledgement (scroll lock).
    let mut desktop = resume_exactly(&setup, &laptop.session, 0).await;
    desktop.read_to(b"hello").await;
    type_line(&mut desktop.socket, "echo ST''ART; seq 1 100000; echo FIN''ISH\n").await;
    let reached =
        desktop.read_until(Duration::from_secs(60), |seen| seen.len() as u64 > held + RESERVED - CREDIT_BATCH).await;
    assert!(reached, "the desktop did not get a buffer's worth");
    // The only wait on time: until the shell has stopped (it decides whether the defect shows, not whether a
    // correct gateway passes).
    if desktop.read_until(Duration::from_secs(2), |seen| seen.len() as u64 > held + RESERVED).await {
        panic!("more than a buffer past the laptop's acknowledgement: {}", desktop.offset());
    }
    // The laptop's connection drops: nothing holds the output back any more.
    let session = laptop.session.clone();
    drop(laptop.socket);
    wait_attached(&setup, &session, 1).await;
    let finished = desktop.read_until(Duration::from_secs(30), |seen| find(seen, b"FINISH\r\n").is_some()).await;
    assert!(
        finished,
        "the desktop's terminal froze at offset {} (the laptop had acknowledged {held})",
        desktop.offset()
    );
    assert_seq_prefix(&desktop.received);
    desktop.socket.close(Some(normal_close())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_too_far_behind_that_starts_at_the_end_of_a_full_buffer_gets_what_follows() {
    for db in TestDb::all("resume_hostile a_resume_too_far_behind_that_starts_at_the_end").await {
        end_of_full_buffer_on(db).await;
    }
}

async fn end_of_full_buffer_on(db: TestDb) {
    let setup = setup(&db, &[("GATEHOUSE_RELAY_RESUME_BUFFER_BYTES", "1")]).await;
    // Output that is all inside one escape string (an OSC that never ends) has no safe point to resume at: a resume
    // from too far back starts at the end of the buffer (documented). The browser acknowledges what it received and
    // drops; the shell, printing without end, fills the buffer and waits.
    let mut browser = open_acking(&setup).await;
    type_line(&mut browser.socket, "printf '\\033]0;'; yes\n").await;
    browser.read_more(RESERVED + 64 * 1024).await;
    let (session, acked) = (browser.session.clone(), browser.acked);
    drop(browser.socket);
    wait_attached(&setup, &session, 0).await;
    // The only wait on time: until the shell has stopped (it decides whether the defect shows, not whether a
    // correct gateway passes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(probe(&setup, &session, acked + RESERVED + 1).await, Err(4416), "more than a buffer");
    let ticket = fresh_ticket(&setup.api, &setup.ada, "ws-ada").await;
    let Attached { socket, ready, behind } =
        attach(&setup.server, "ws-ada", &ticket, Some((&session, 0))).await.unwrap();
    let offset = ready["offset"].as_u64().unwrap();
    assert_eq!(behind, Some(json!({"type": "too_far_behind", "requested": 0, "offset": offset})));
    assert!(offset > acked + RESERVED - CREDIT_BATCH, "not at the end of the buffer: {offset} (acknowledged {acked})");
    // The shell prints without end: output must come.
    let mut behind = Browser { socket, session: session.clone(), base: offset, received: Vec::new(), acked: offset };
    let more = behind.read_until(Duration::from_secs(30), |seen| !seen.is_empty()).await;
    assert!(more, "a browser resumed too far behind, at the end of the buffer ({offset}), got no output in 30 s");
    behind.socket.close(Some(normal_close())).await.unwrap();
}
