//! The terminal relay end to end: a real `gatehouse serve`, a real `gatehouse agent` child process with real shells
//! in PTYs, and WebSocket clients in the test playing the browser.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::{eventually, gatehouse, issue_token, Api, Server};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running `gatehouse agent`.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(server: &Server, token: &str, workspace: &str, owner: &str) -> Agent {
        let child = gatehouse()
            .args(["agent", "--server", &server.base, "--workspace", workspace, "--tag", "RDE_DISPLAY_NAME=Test"])
            .env("GATEHOUSE_AGENT_TOKEN", token)
            .env("RDE_OWNER_EMAIL", owner)
            .env("GATEHOUSE_LOG", "warn")
            .env("PS1", "$ ")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Agent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn mint_agent_token(api: &Api, admin: &str) -> String {
    let (status, _, body) =
        api.call(Method::POST, "/api/v1/agent-tokens", Some(admin), Some(json!({"name": "test agent"}))).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

async fn wait_for_workspace(api: &Api, token: &str, workspace: &str) {
    let listed = eventually(Duration::from_secs(30), || async {
        let (status, body) = api.get("/api/v1/workspaces", Some(token)).await;
        status == 200 && body["items"].as_array().unwrap().iter().any(|item| item["id"] == workspace)
    })
    .await;
    assert!(listed, "the workspace {workspace} never appeared");
}

async fn ticket(api: &Api, token: &str, workspace: &str) -> (u16, Value) {
    let path = format!("/api/v1/workspaces/{workspace}/tickets");
    let (status, _, body) = api.call(Method::POST, &path, Some(token), Some(json!({"kind": "terminal"}))).await;
    (status, body)
}

async fn connect(server: &Server, workspace: &str) -> Socket {
    let url = format!("{}/api/v1/workspaces/{workspace}/terminal", server.base.replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
}

/// Connects and authenticates; returns the socket after `ready`, or the close code.
async fn open(server: &Server, workspace: &str, ticket: &str) -> Result<Socket, u16> {
    let mut socket = connect(server, workspace).await;
    socket.send(Message::Text(json!({"type": "auth", "ticket": ticket}).to_string())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("no answer to auth") {
            Some(Ok(Message::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "ready", "{text}");
                return Ok(socket);
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// Reads output until `needle` appears; panics after `limit`.
async fn read_until(socket: &mut Socket, needle: &str, limit: Duration) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !seen.contains(needle) {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} never appeared in {seen:?}"));
        match message {
            Some(Ok(Message::Binary(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Ok(Message::Close(frame))) => panic!("closed ({frame:?}) before {needle:?}; saw {seen:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended before {needle:?}: {other:?}; saw {seen:?}"),
        }
    }
    seen
}

/// The close code the socket ends with (after any output).
async fn close_code(socket: &mut Socket, limit: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("socket was not closed") {
            Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)).unwrap_or(1005),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

async fn type_line(socket: &mut Socket, line: &str) {
    socket.send(Message::Binary(line.as_bytes().to_vec())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_types_into_a_real_shell_through_the_relay() {
    for db in TestDb::all("relay a_browser_types_into_a_real_shell_through_the_relay").await {
        a_browser_types_into_a_real_shell_through_the_relay_on(db).await;
    }
}

async fn a_browser_types_into_a_real_shell_through_the_relay_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);

    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    // Bob does not see Ada's workspace; the admin does.
    let (_, listed) = api.get("/api/v1/workspaces", Some(&bob)).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    let (_, listed) = api.get("/api/v1/workspaces", Some(&root)).await;
    assert_eq!(listed["items"][0]["owner"], "ada@example.com", "{listed}");

    let (status, issued) = ticket(&api, &ada, "ws-ada").await;
    assert_eq!(status, 201, "{issued}");
    let one_time = issued["ticket"].as_str().unwrap().to_string();
    assert_eq!(one_time.len(), 43, "32 bytes in base64url");
    let mut socket = open(&server, "ws-ada", &one_time).await.expect("the ticket opens a terminal");
    type_line(&mut socket, "echo hel''lo\n").await;
    read_until(&mut socket, "hello", Duration::from_secs(20)).await;

    socket.send(Message::Text(json!({"type": "resize", "cols": 100, "rows": 40}).to_string())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    type_line(&mut socket, "stty size\n").await;
    read_until(&mut socket, "40 100", Duration::from_secs(20)).await;

    socket.send(Message::Text(json!({"type": "ping"}).to_string())).await.unwrap();

    // The same ticket again: refused, however it is presented.
    assert_eq!(open(&server, "ws-ada", &one_time).await.err(), Some(4001), "a replayed ticket");
    // Garbage: refused.
    assert_eq!(open(&server, "ws-ada", "not-a-ticket").await.err(), Some(4001), "an unknown ticket");
    // Something other than auth first: 4000.
    let mut early = connect(&server, "ws-ada").await;
    early.send(Message::Text(json!({"type": "ping"}).to_string())).await.unwrap();
    assert_eq!(close_code(&mut early, Duration::from_secs(10)).await, 4000);

    // Bob cannot get a ticket for Ada's workspace, nor for one that is not connected.
    assert_eq!(ticket(&api, &bob, "ws-ada").await.0, 403);
    assert_eq!(ticket(&api, &bob, "ws-nowhere").await.0, 404);

    // The session is active (the read model follows the log within milliseconds), then closed by the client.
    let listed = eventually(Duration::from_secs(10), || async {
        let (status, sessions) = api.get("/api/v1/sessions?active=true&workspace=ws-ada", Some(&root)).await;
        assert_eq!(status, 200, "{sessions}");
        sessions["items"].as_array().unwrap().len() == 1 && sessions["items"][0]["user"] == "ada@example.com"
    })
    .await;
    assert!(listed, "the open session was not listed");
    socket.close(None).await.unwrap();
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions?user=ada@example.com", Some(&root)).await;
        sessions["items"][0]["reason"] == "client_closed" && sessions["items"][0]["bytes_in"].as_u64() > Some(10)
    })
    .await;
    assert!(recorded, "the session's close was not recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_and_expired_tickets_are_refused() {
    for db in TestDb::all("relay foreign_and_expired_tickets_are_refused").await {
        foreign_and_expired_tickets_are_refused_on(db).await;
    }
}

async fn foreign_and_expired_tickets_are_refused_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_TICKET_TTL_SECS", "3")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _ada_agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    let _bob_agent = Agent::start(&server, &agent_token, "ws-bob", "bob@example.com");
    wait_for_workspace(&api, &root, "ws-ada").await;
    wait_for_workspace(&api, &root, "ws-bob").await;

    // Bob's ticket for his own workspace does not open Ada's.
    let (_, bobs) = ticket(&api, &bob, "ws-bob").await;
    assert_eq!(open(&server, "ws-ada", bobs["ticket"].as_str().unwrap()).await.err(), Some(4001));
    // An expired ticket (TTL 3 s here).
    let (_, late) = ticket(&api, &ada, "ws-ada").await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(open(&server, "ws-ada", late["ticket"].as_str().unwrap()).await.err(), Some(4001));
    // A fresh one works, and only once even when two connections race with it.
    let (_, fresh) = ticket(&api, &ada, "ws-ada").await;
    let fresh = fresh["ticket"].as_str().unwrap().to_string();
    let (first, second) = tokio::join!(open(&server, "ws-ada", &fresh), open(&server, "ws-ada", &fresh));
    assert_eq!(first.is_ok() as u8 + second.is_ok() as u8, 1, "exactly one racing redemption wins");
    let refused = first.err().or(second.err());
    assert_eq!(refused, Some(4001));

    // A second agent for a workspace already served is refused; the first keeps serving.
    let mut intruder = Agent::start(&server, &agent_token, "ws-ada", "eve@example.com");
    let exited = eventually(Duration::from_secs(5), || {
        let status = intruder.child.try_wait().unwrap();
        async move { status.is_some() }
    })
    .await;
    assert!(!exited, "a refused agent keeps retrying with backoff");
    let (_, listed) = api.get("/api/v1/workspaces", Some(&root)).await;
    let owners: Vec<_> = listed["items"].as_array().unwrap().iter().map(|item| item["owner"].clone()).collect();
    assert_eq!(owners, vec![json!("ada@example.com"), json!("bob@example.com")]);
    intruder.kill();

    // A revoked agent token: the agent stops.
    let (_, _, minted) =
        api.call(Method::POST, "/api/v1/agent-tokens", Some(&root), Some(json!({"name": "short-lived"}))).await;
    let id = minted["id"].as_str().unwrap();
    let (status, _, _) = api.call(Method::DELETE, &format!("/api/v1/agent-tokens/{id}"), Some(&root), None).await;
    assert_eq!(status, 204);
    let mut revoked = Agent::start(&server, minted["token"].as_str().unwrap(), "ws-x", "ada@example.com");
    let stopped = eventually(Duration::from_secs(15), || {
        let status = revoked.child.try_wait().unwrap();
        async move { status.is_some_and(|status| !status.success()) }
    })
    .await;
    assert!(stopped, "an agent with a revoked token stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_agent_closes_sessions_as_agent_lost() {
    // Both backends (PostgreSQL when GATEHOUSE_TEST_DATABASE_URL is set).
    for db in TestDb::all("relay agent lost").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let agent_token = mint_agent_token(&api, &root).await;
        let mut agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
        wait_for_workspace(&api, &ada, "ws-ada").await;
        let (_, issued) = ticket(&api, &ada, "ws-ada").await;
        let mut socket = open(&server, "ws-ada", issued["ticket"].as_str().unwrap()).await.unwrap();
        type_line(&mut socket, "echo al''ive\n").await;
        read_until(&mut socket, "alive", Duration::from_secs(20)).await;

        agent.kill();
        assert_eq!(close_code(&mut socket, Duration::from_secs(20)).await, 4410);
        let recorded = eventually(Duration::from_secs(10), || async {
            let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-ada", Some(&root)).await;
            sessions["items"][0]["reason"] == "agent_lost" && sessions["items"][0]["active"] == false
        })
        .await;
        assert!(recorded, "SessionClosed with reason agent_lost");
        let gone = eventually(Duration::from_secs(10), || async {
            let (_, listed) = api.get("/api/v1/workspaces", Some(&ada)).await;
            listed["items"].as_array().unwrap().is_empty()
        })
        .await;
        assert!(gone, "a lost agent's workspace is no longer listed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_sessions_share_one_agent() {
    const SESSIONS: usize = 100;
    // SQLite only: a hundred shells and sessions take most of a minute on a small machine, and the relay's
    // multiplexing does not depend on the store; every other relay test runs on both backends.
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "110")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-many", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-many").await;
    let mut sockets = Vec::new();
    for _ in 0..SESSIONS {
        let (status, issued) = ticket(&api, &root, "ws-many").await;
        assert_eq!(status, 201, "{issued}");
        sockets.push(open(&server, "ws-many", issued["ticket"].as_str().unwrap()).await.unwrap());
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, mut socket)| {
            tokio::spawn(async move {
                type_line(&mut socket, &format!("echo mark''er-{index}-end\n")).await;
                let seen = read_until(&mut socket, &format!("marker-{index}-end"), Duration::from_secs(60)).await;
                for other in (0..SESSIONS).filter(|other| *other != index) {
                    assert!(!seen.contains(&format!("marker-{other}-end")), "session {index} saw {other}'s output");
                }
                socket
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for task in tasks {
        sockets.push(task.await.unwrap());
    }
    let listed = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions?active=true&limit=500", Some(&root)).await;
        sessions["items"].as_array().unwrap().len() == SESSIONS
    })
    .await;
    assert!(listed, "every open session is listed");
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_is_checked_on_every_relay_endpoint() {
    for db in TestDb::all("relay every_role_is_checked_on_every_relay_endpoint").await {
        every_role_is_checked_on_every_relay_endpoint_on(db).await;
    }
}

async fn every_role_is_checked_on_every_relay_endpoint_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-ada").await;

    let mint = || Some(json!({"name": "x"}));
    let ticket_body = || Some(json!({"kind": "terminal"}));
    let unknown_token = "0".repeat(64);
    // (method, path, body, [anonymous, ada (owner), bob (another member), admin, auditor])
    let cases: Vec<(Method, String, Option<Value>, [u16; 5])> = vec![
        (Method::POST, "/api/v1/agent-tokens".into(), mint(), [401, 403, 403, 201, 403]),
        (Method::DELETE, format!("/api/v1/agent-tokens/{unknown_token}"), None, [401, 403, 403, 404, 403]),
        (Method::GET, "/api/v1/workspaces".into(), None, [401, 200, 200, 200, 403]),
        (Method::POST, "/api/v1/workspaces/ws-ada/tickets".into(), ticket_body(), [401, 201, 403, 201, 403]),
        (Method::GET, "/api/v1/sessions".into(), None, [401, 403, 403, 200, 403]),
        (Method::GET, "/api/v1/relay/activity".into(), None, [401, 403, 403, 200, 200]),
        (Method::GET, "/api/v1/firewall".into(), None, [401, 403, 403, 200, 200]),
        (
            Method::PUT,
            "/api/v1/firewall".into(),
            Some(json!({"rules": [], "default_action": "allow"})),
            [401, 403, 403, 200, 403],
        ),
    ];
    for (method, path, body, expected) in cases {
        let callers = [None, Some(ada.as_str()), Some(bob.as_str()), Some(root.as_str()), Some(auditor.as_str())];
        for (caller, want) in callers.into_iter().zip(expected) {
            let (status, _, answer) = api.call(method.clone(), &path, caller, body.clone()).await;
            assert_eq!(status, want, "{method} {path} as {caller:?}: {answer}");
        }
    }
    // A foreign Origin is refused before the upgrade; the same request from the same host is upgraded.
    let upgrade = |origin: &str| {
        tokio_tungstenite::tungstenite::http::Request::builder()
            .uri(format!("{}/api/v1/workspaces/ws-ada/terminal", server.base.replace("http://", "ws://")))
            .header("Host", server.base.trim_start_matches("http://"))
            .header("Origin", origin)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    };
    assert!(tokio_tungstenite::connect_async(upgrade("https://evil.example")).await.is_err(), "a foreign Origin");
    // Plain HTTP requests to the WebSocket endpoints get problems, not bare errors.
    for path in ["/api/v1/workspaces/ws-ada/terminal", "/api/v1/agent/connect"] {
        let response = api.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{path}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_request", "{path}: {problem}");
    }
    let response =
        api.http.get(server.url("/api/v1/workspaces/ws-ada/terminal")).header("Origin", "https://evil.example");
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    assert!(tokio_tungstenite::connect_async(upgrade(&server.base)).await.is_ok(), "a same-host Origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_enforced_and_shutdown_records_every_open_session() {
    for db in TestDb::all("relay limits_are_enforced_and_shutdown_records_every_open_session").await {
        limits_are_enforced_and_shutdown_records_every_open_session_on(db).await;
    }
}

async fn limits_are_enforced_and_shutdown_records_every_open_session_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let limits = [
        ("GATEHOUSE_RELAY_IDLE_TIMEOUT_SECS", "2"),
        ("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "2"),
        ("GATEHOUSE_RELAY_MAX_FRAME_BYTES", "70000"),
        ("GATEHOUSE_RELAY_AUTH_TIMEOUT_SECS", "1"),
    ];
    let server = Server::start(&db, &limits);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    let open_one = || async {
        let (_, issued) = ticket(&api, &ada, "ws-ada").await;
        open(&server, "ws-ada", issued["ticket"].as_str().unwrap()).await
    };

    // No auth message in time: 4008.
    let mut silent = connect(&server, "ws-ada").await;
    assert_eq!(close_code(&mut silent, Duration::from_secs(10)).await, 4008);

    // An idle session is closed with 4008 and recorded as idle_timeout.
    let mut idle = open_one().await.unwrap();
    assert_eq!(close_code(&mut idle, Duration::from_secs(15)).await, 4008);
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions", Some(&root)).await;
        sessions["items"][0]["reason"] == "idle_timeout"
    })
    .await;
    assert!(recorded, "SessionClosed with reason idle_timeout");

    // An oversized frame: 1009.
    let mut big = open_one().await.unwrap();
    big.send(Message::Binary(vec![b'x'; 80_000])).await.unwrap();
    assert_eq!(close_code(&mut big, Duration::from_secs(10)).await, 1009);

    // At most two sessions for Ada; a third is refused with 4029.
    let mut first = open_one().await.unwrap();
    let mut second = open_one().await.unwrap();
    assert_eq!(open_one().await.err(), Some(4029));

    // SIGTERM: both sessions are closed with 1001 and recorded as shutdown.
    type_line(&mut first, "echo st''ill\n").await;
    read_until(&mut first, "still", Duration::from_secs(20)).await;
    server.send_sigterm();
    assert_eq!(close_code(&mut first, Duration::from_secs(20)).await, 1001);
    assert_eq!(close_code(&mut second, Duration::from_secs(20)).await, 1001);
    let mut server = server;
    assert!(server.wait(Duration::from_secs(30)).success());
    drop(server);
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    // The restarted server's projection catches up with the log.
    let recorded = eventually(Duration::from_secs(10), || async {
        let (status, sessions) = api.get("/api/v1/sessions?user=ada@example.com", Some(&root)).await;
        assert_eq!(status, 200, "{sessions}");
        let items = sessions["items"].as_array().unwrap();
        items.len() >= 2
            && items[..2].iter().all(|item| item["reason"] == "shutdown")
            && items.iter().all(|item| item["active"] == false)
    })
    .await;
    let (_, sessions) = api.get("/api/v1/sessions?user=ada@example.com", Some(&root)).await;
    assert!(recorded, "both sessions recorded as shutdown: {sessions}");
}

/// A session that keeps working is still closed at its maximum age: 4009, recorded as `max_age`.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_session_is_closed_at_its_maximum_age() {
    for db in TestDb::all("relay a_busy_session_is_closed_at_its_maximum_age").await {
        a_busy_session_is_closed_at_its_maximum_age_on(db).await;
    }
}

async fn a_busy_session_is_closed_at_its_maximum_age_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_MAX_SESSION_SECS", "2")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    let (_, issued) = ticket(&api, &ada, "ws-ada").await;
    let mut socket = open(&server, "ws-ada", issued["ticket"].as_str().unwrap()).await.unwrap();
    // Keep it busy (never idle) until it is closed.
    let started = std::time::Instant::now();
    let mut code = None;
    while started.elapsed() < Duration::from_secs(10) {
        type_line(&mut socket, "echo still-here\n").await;
        match tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                code = Some(u16::from(frame.code));
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            _ => {}
        }
    }
    assert_eq!(code, Some(4009), "closed at its maximum age");
    assert!(started.elapsed() >= Duration::from_millis(1500), "closed too early: {:?}", started.elapsed());
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions", Some(&root)).await;
        sessions["items"][0]["reason"] == "max_age"
    })
    .await;
    assert!(recorded, "SessionClosed with reason max_age");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_and_relay_activity_are_read_models_with_filters_and_pages() {
    for db in TestDb::all("relay_read_models").await {
        read_models_with_filters_and_pages(db).await;
    }
}

async fn read_models_with_filters_and_pages(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_MAX_SESSIONS_PER_USER", "10")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _ada_agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    let _bob_agent = Agent::start(&server, &agent_token, "ws-bob", "bob@example.com");
    wait_for_workspace(&api, &root, "ws-ada").await;
    wait_for_workspace(&api, &root, "ws-bob").await;

    // Three sessions for Ada (the first one closed), one for Bob.
    let mut ada_sockets = Vec::new();
    for _ in 0..3 {
        let (_, issued) = ticket(&api, &ada, "ws-ada").await;
        ada_sockets.push(open(&server, "ws-ada", issued["ticket"].as_str().unwrap()).await.unwrap());
    }
    let (_, issued) = ticket(&api, &bob, "ws-bob").await;
    let _bob_socket = open(&server, "ws-bob", issued["ticket"].as_str().unwrap()).await.unwrap();
    ada_sockets.remove(0).close(None).await.unwrap();
    // Refused: Bob's ticket presented for Ada's workspace (foreign), and garbage (unknown).
    let (_, foreign) = ticket(&api, &bob, "ws-bob").await;
    assert_eq!(open(&server, "ws-ada", foreign["ticket"].as_str().unwrap()).await.err(), Some(4001));
    assert_eq!(open(&server, "ws-ada", "not-a-ticket").await.err(), Some(4001));

    let sessions = |query: &str| {
        let api = &api;
        let root = &root;
        let path = format!("/api/v1/sessions?{query}");
        async move {
            let (status, body) = api.get(&path, Some(root)).await;
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    let caught_up = eventually(Duration::from_secs(10), || async {
        let all = sessions("").await;
        let closed = sessions("active=false").await;
        all["items"].as_array().unwrap().len() == 4 && closed["items"].as_array().unwrap().len() == 1
    })
    .await;
    assert!(caught_up, "four sessions, one closed: {}", sessions("").await);

    // Filters.
    let count = |body: &Value| body["items"].as_array().unwrap().len();
    assert_eq!(count(&sessions("active=true").await), 3);
    assert_eq!(count(&sessions("active=true&user=ada@example.com").await), 2);
    let bobs = sessions("workspace=ws-bob").await;
    assert_eq!(count(&bobs), 1, "{bobs}");
    assert_eq!(bobs["items"][0]["user"], "bob@example.com");
    assert_eq!(bobs["items"][0]["kind"], "terminal");
    assert_eq!(count(&sessions("kind=terminal").await), 4);
    assert_eq!(count(&sessions("from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00%2B02:00").await), 4);
    assert_eq!(count(&sessions("from=2999-01-01T00:00:00Z").await), 0);
    assert_eq!(count(&sessions("to=2000-01-01T00:00:00Z").await), 0);

    // Pages of two, newest first, with an opaque cursor; the last page has no next.
    let first = sessions("user=ada@example.com&limit=2").await;
    assert_eq!(count(&first), 2, "{first}");
    let next = first["next"].as_str().expect("a next cursor").to_string();
    let second = sessions(&format!("user=ada@example.com&limit=2&after={next}")).await;
    assert_eq!(count(&second), 1, "{second}");
    assert!(second["next"].is_null(), "{second}");
    let mut opened: Vec<(String, String)> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|item| (item["opened_at"].as_str().unwrap().to_string(), item["id"].as_str().unwrap().to_string()))
        .collect();
    let listed = opened.clone();
    opened.sort();
    opened.reverse();
    opened.dedup();
    assert_eq!(listed, opened, "three distinct sessions, newest first");
    assert_eq!(second["items"][0]["reason"], "client_closed", "the oldest is the closed one: {second}");

    // Bad filters are 400 problems naming the field.
    for (query, field) in [
        ("active=maybe", "active"),
        ("user=not-an-email", "user"),
        ("kind=preview", "kind"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("after=%25%25%25", "after"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
    ] {
        let (status, problem) = api.get(&format!("/api/v1/sessions?{query}"), Some(&root)).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some(field)), "{query}: {problem}");
    }

    // The activity log: issued, redeemed and refused tickets, with the refusal's reason and the ticket's user.
    let activity = |query: &str, token: &str| {
        let api = &api;
        let path = format!("/api/v1/relay/activity?{query}");
        let token = token.to_string();
        async move { api.get(&path, Some(&token)).await }
    };
    let refusals = eventually(Duration::from_secs(10), || async {
        let (_, body) = activity("kind=ticket_refused", &auditor).await;
        count(&body) == 2
    })
    .await;
    let (status, refused) = activity("kind=ticket_refused", &auditor).await;
    assert_eq!(status, 200, "{refused}");
    assert!(refusals, "two refusals: {refused}");
    assert_eq!(refused["items"][0]["reason"], "unknown", "newest first: {refused}");
    assert!(refused["items"][0]["user"].is_null(), "{refused}");
    // Refusals carry the address of the client that presented the ticket (here the test itself, on loopback).
    assert_eq!(refused["items"][0]["client_ip"], "127.0.0.1", "{refused}");
    assert_eq!(refused["items"][1]["client_ip"], "127.0.0.1", "{refused}");
    assert_eq!(refused["items"][1]["reason"], "foreign", "{refused}");
    assert_eq!(refused["items"][1]["user"], "bob@example.com", "{refused}");
    assert_eq!(refused["items"][1]["workspace"], "ws-ada", "{refused}");
    let (_, bobs) = activity("user=bob@example.com&kind=ticket_issued", &root).await;
    assert_eq!(count(&bobs), 2, "{bobs}");
    let (_, redeemed) = activity("kind=ticket_redeemed&workspace=ws-ada", &root).await;
    assert_eq!(count(&redeemed), 3, "{redeemed}");
    let (_, none) = activity("from=2999-01-01T00:00:00Z", &root).await;
    assert_eq!(count(&none), 0, "{none}");
    // Pages of one walk the whole log without repeats.
    let (_, everything) = activity("limit=500", &root).await;
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = activity(&format!("limit=1&after={after}"), &root).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|item| item["id"].clone()));
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    let all: Vec<_> = everything["items"].as_array().unwrap().iter().map(|item| item["id"].clone()).collect();
    assert_eq!(seen, all);
    assert_eq!(all.len(), 5 + 4 + 2, "five tickets issued, four redeemed, two refused: {everything}");
    for (query, field) in [("kind=opened", "kind"), ("user=x", "user"), ("from=soon", "from"), ("limit=501", "limit")] {
        let (status, problem) = activity(query, &root).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some(field)), "{query}: {problem}");
    }
    // Only admins and auditors read the activity log; only admins the sessions.
    assert_eq!(api.get("/api/v1/relay/activity", None).await.0, 401);
    assert_eq!(activity("", &ada).await.0, 403);
    assert_eq!(api.get("/api/v1/sessions", None).await.0, 401);
    assert_eq!(api.get("/api/v1/sessions", Some(&ada)).await.0, 403);
    assert_eq!(api.get("/api/v1/sessions", Some(&auditor)).await.0, 403);
    drop(ada_sockets);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_paste_into_an_echoing_shell_flows_through_the_windows() {
    for db in TestDb::all("relay a_large_paste_into_an_echoing_shell_flows_through_the_windows").await {
        a_large_paste_into_an_echoing_shell_flows_through_the_windows_on(db).await;
    }
}

async fn a_large_paste_into_an_echoing_shell_flows_through_the_windows_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-paste", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-paste").await;
    let (_, issued) = ticket(&api, &root, "ws-paste").await;
    let socket = open(&server, "ws-paste", issued["ticket"].as_str().unwrap()).await.unwrap();
    let (mut write, mut read) = socket.split();
    // `cat` echoes every line twice (the terminal's echo and cat's own output): about 1.2 MB back for 600 KB in,
    // several times both 256 KiB windows.
    let writer = tokio::spawn(async move {
        write.send(Message::Binary(b"cat\n".to_vec())).await.unwrap();
        let line = format!("{}\n", "a".repeat(99));
        for _ in 0..100 {
            write.send(Message::Binary(line.repeat(60).into_bytes())).await.unwrap();
        }
        write.send(Message::Binary(b"\x04echo pas''te-done\n".to_vec())).await.unwrap();
        write
    });
    let mut seen = 0usize;
    let mut tail: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !tail.windows(10).any(|window| window == b"paste-done") {
        match tokio::time::timeout_at(deadline, read.next()).await.expect("the paste stalled") {
            Some(Ok(Message::Binary(bytes))) => {
                seen += bytes.len();
                tail.extend_from_slice(&bytes);
                if tail.len() > 4096 {
                    tail.drain(..tail.len() - 2048);
                }
            }
            Some(Ok(_)) => {}
            other => panic!("socket ended during the paste: {other:?}"),
        }
    }
    assert!(seen > 1_000_000, "only {seen} bytes came back");
    drop(writer.await.unwrap());
}

async fn set_firewall(api: &Api, admin: &str, rules: Value, default_action: &str) -> Value {
    let body = json!({"rules": rules, "default_action": default_action});
    let (status, _, answer) = api.call(Method::PUT, "/api/v1/firewall", Some(admin), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Opens with a fresh ticket, optionally through a (trusted) proxy that forwards `forwarded_for`.
async fn open_via(
    server: &Server,
    api: &Api,
    token: &str,
    workspace: &str,
    forwarded_for: Option<&str>,
) -> Result<Socket, u16> {
    let (_, issued) = ticket(api, token, workspace).await;
    open_at(&server.base, workspace, issued["ticket"].as_str().unwrap(), forwarded_for).await
}

/// Opens a terminal at `base` (`http://HOST:PORT`) with `ticket`, sending `X-Forwarded-For: forwarded_for` (as a
/// proxy would); the socket after `ready`, or the close code.
async fn open_at(base: &str, workspace: &str, ticket: &str, forwarded_for: Option<&str>) -> Result<Socket, u16> {
    let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "{}/api/v1/workspaces/{workspace}/terminal",
        base.replace("http://", "ws://")
    ))
    .unwrap();
    if let Some(hop) = forwarded_for {
        request.headers_mut().insert("x-forwarded-for", hop.parse().unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let auth = json!({"type": "auth", "ticket": ticket}).to_string();
    socket.send(Message::Text(auth)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("no answer to auth") {
            Some(Ok(Message::Text(_))) => return Ok(socket),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_firewall_blocks_denied_addresses_and_closes_live_sessions() {
    for db in TestDb::all("relay the_firewall_blocks_denied_addresses_and_closes_live_sessions").await {
        the_firewall_blocks_denied_addresses_and_closes_live_sessions_on(db).await;
    }
}

async fn the_firewall_blocks_denied_addresses_and_closes_live_sessions_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-fw", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-fw").await;

    // Through the trusted proxy (the test's own loopback), X-Forwarded-For names the client.
    let deny_ten = json!([
        {"action": "allow", "cidr": "10.9.0.0/16", "description": "office"},
        {"action": "deny", "cidr": "10.0.0.0/8", "description": "lab"},
    ]);
    set_firewall(&api, &root, deny_ten, "allow").await;
    assert_eq!(open_via(&server, &api, &root, "ws-fw", Some("10.1.2.3")).await.err(), Some(4003));
    assert!(open_via(&server, &api, &root, "ws-fw", Some("10.9.2.3")).await.is_ok(), "the first match wins");
    assert!(open_via(&server, &api, &root, "ws-fw", Some("192.0.2.1")).await.is_ok(), "the default action");
    assert!(open_via(&server, &api, &root, "ws-fw", Some("198.51.100.1, 10.1.2.3")).await.is_err(), "last hop");

    // A live session from 192.0.2.1 is closed within a second when a rule starts denying it.
    let mut live = open_via(&server, &api, &root, "ws-fw", Some("192.0.2.1")).await.unwrap();
    type_line(&mut live, "echo u''p\n").await;
    read_until(&mut live, "up", Duration::from_secs(20)).await;
    set_firewall(&api, &root, json!([{"action": "deny", "cidr": "192.0.2.0/24"}]), "allow").await;
    assert_eq!(close_code(&mut live, Duration::from_secs(1)).await, 4003);
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-fw", Some(&root)).await;
        sessions["items"][0]["reason"] == "firewall" && sessions["items"][0]["client_ip"] == "192.0.2.1"
    })
    .await;
    assert!(recorded, "SessionClosed with reason firewall");

    // Blocked attempts are events on the firewall aggregate, with the rule and the address.
    let (status, events) = api.get("/api/v1/aggregates/firewall/org/events?limit=1000", Some(&root)).await;
    assert_eq!(status, 200, "{events}");
    let text = events.to_string();
    assert!(text.contains("ConnectionBlocked") && text.contains("10.1.2.3"), "{text}");
    // Bad rules are refused.
    let (status, _, _) = api
        .call(
            Method::PUT,
            "/api/v1/firewall",
            Some(&root),
            Some(json!({"rules": [{"action": "deny", "cidr": "10.0.0.1/8"}], "default_action": "allow"})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn shells_exit_with_their_status_and_bad_agents_get_documented_close_codes() {
    for db in TestDb::all("relay shells_exit_with_their_status_and_bad_agents_get_documented_close_codes").await {
        shells_exit_with_their_status_and_bad_agents_get_documented_close_codes_on(db).await;
    }
}

async fn shells_exit_with_their_status_and_bad_agents_get_documented_close_codes_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_AUTH_TIMEOUT_SECS", "1")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-exit", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-exit").await;

    // The shell's exit status reaches the browser, then a normal close.
    let (_, issued) = ticket(&api, &root, "ws-exit").await;
    let mut socket = open(&server, "ws-exit", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "exit 3\n").await;
    let mut exit = None;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(20), socket.next()).await.expect("no exit") {
            Some(Ok(Message::Text(text))) => exit = Some(serde_json::from_str::<Value>(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => break frame.map(|frame| u16::from(frame.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(exit, Some(json!({"type": "exit", "code": 3})));
    assert_eq!(code, Some(1000));

    // Hand-made agents: each gets its documented close code and the real agent keeps serving.
    let url = format!("{}/api/v1/agent/connect", server.base.replace("http://", "ws://"));
    let hello = |token: &str, workspace: &str| {
        Message::Text(json!({"type": "hello", "token": token, "workspace": workspace, "tags": {}}).to_string())
    };
    let attempt = |first: Option<Message>, then: Option<Message>| {
        let url = url.clone();
        async move {
            let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            if let Some(first) = first {
                socket.send(first).await.unwrap();
            }
            if let Some(then) = then {
                // After the welcome.
                let _ = socket.next().await;
                socket.send(then).await.unwrap();
            }
            close_code(&mut socket, Duration::from_secs(10)).await
        }
    };
    assert_eq!(attempt(None, None).await, 4000, "no hello");
    assert_eq!(attempt(Some(Message::Text("{}".into())), None).await, 4000, "not a hello");
    assert_eq!(attempt(Some(hello("gha_wrong", "ws-other")), None).await, 4401, "unknown token");
    assert_eq!(attempt(Some(hello(&agent_token, "ws-exit")), None).await, 4409, "a workspace already served");
    let garbage = Some(Message::Binary(vec![0x09, 0, 0, 0, 1]));
    assert_eq!(attempt(Some(hello(&agent_token, "ws-fake")), garbage).await, 1002, "a malformed frame");

    let (_, issued) = ticket(&api, &root, "ws-exit").await;
    let mut socket = open(&server, "ws-exit", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "echo sti''ll-here\n").await;
    read_until(&mut socket, "still-here", Duration::from_secs(20)).await;
}

/// Mints an agent token; (its id, the token).
async fn mint_agent_token_with_id(api: &Api, admin: &str, name: &str) -> (String, String) {
    let (status, _, body) =
        api.call(Method::POST, "/api/v1/agent-tokens", Some(admin), Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{body}");
    (body["id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
}

/// Revoking an agent token cuts off the agent connected with it: its connection closes with 4401 (the agent exits 1,
/// as for a token refused at `hello`), its sessions close with 4410 and are recorded as `agent_revoked`, and its
/// workspace disappears. An agent with another token keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn revoking_an_agent_token_disconnects_its_agent_and_closes_its_sessions() {
    for db in TestDb::all("relay revoking an agent token").await {
        revoking_an_agent_token_on(db).await;
    }
}

async fn revoking_an_agent_token_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let (doomed_id, doomed) = mint_agent_token_with_id(&api, &root, "doomed").await;
    let (_, kept) = mint_agent_token_with_id(&api, &root, "kept").await;
    let mut agent = Agent::start(&server, &doomed, "ws-doomed", "ada@example.com");
    let _other = Agent::start(&server, &kept, "ws-kept", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-doomed").await;
    wait_for_workspace(&api, &root, "ws-kept").await;
    let (_, issued) = ticket(&api, &root, "ws-doomed").await;
    let mut doomed_session = open(&server, "ws-doomed", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut doomed_session, "echo be''fore\n").await;
    read_until(&mut doomed_session, "before", Duration::from_secs(20)).await;
    let (_, issued) = ticket(&api, &root, "ws-kept").await;
    let mut kept_session = open(&server, "ws-kept", issued["ticket"].as_str().unwrap()).await.unwrap();

    let (status, _, _) =
        api.call(Method::DELETE, &format!("/api/v1/agent-tokens/{doomed_id}"), Some(&root), None).await;
    assert_eq!(status, 204);
    assert_eq!(close_code(&mut doomed_session, Duration::from_secs(5)).await, 4410, "the session ends with its agent");
    let exited = eventually(Duration::from_secs(10), || {
        let status = agent.child.try_wait().unwrap();
        async move { status.is_some() }
    })
    .await;
    assert!(exited, "the agent whose token was revoked stops");
    assert_eq!(agent.child.wait().unwrap().code(), Some(1), "it exits 1, as for a token refused at hello");
    let recorded = eventually(Duration::from_secs(10), || async {
        let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-doomed", Some(&root)).await;
        sessions["items"][0]["reason"] == "agent_revoked" && sessions["items"][0]["active"] == false
    })
    .await;
    let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-doomed", Some(&root)).await;
    assert!(recorded, "SessionClosed with reason agent_revoked: {sessions}");
    let (_, listed) = api.get("/api/v1/workspaces", Some(&root)).await;
    let ids: Vec<_> = listed["items"].as_array().unwrap().iter().map(|item| item["id"].clone()).collect();
    assert_eq!(ids, vec![json!("ws-kept")], "{listed}");

    // The other token's agent and its session are untouched.
    type_line(&mut kept_session, "echo st''ill-kept\n").await;
    read_until(&mut kept_session, "still-kept", Duration::from_secs(20)).await;
    // Revoking again changes nothing and still answers 204.
    let (status, _, _) =
        api.call(Method::DELETE, &format!("/api/v1/agent-tokens/{doomed_id}"), Some(&root), None).await;
    assert_eq!(status, 204);
}

/// The firewall is checked before the ticket is redeemed: a blocked client does not spend it, so the same ticket
/// still opens the terminal from an allowed address. The block is recorded with the rule, the address and the
/// ticket's user; a refused ticket records the address that presented it.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocked_client_does_not_spend_its_ticket() {
    for db in TestDb::all("relay firewall before redemption").await {
        a_blocked_client_does_not_spend_its_ticket_on(db).await;
    }
}

async fn a_blocked_client_does_not_spend_its_ticket_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RELAY_TRUSTED_PROXIES", "127.0.0.1/32")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada", "ada@example.com");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    set_firewall(&api, &root, json!([{"action": "deny", "cidr": "10.0.0.0/8", "description": "lab"}]), "allow").await;

    let (_, issued) = ticket(&api, &ada, "ws-ada").await;
    let one_time = issued["ticket"].as_str().unwrap().to_string();
    assert_eq!(open_at(&server.base, "ws-ada", &one_time, Some("10.1.2.3")).await.err(), Some(4003));
    let mut socket = open_at(&server.base, "ws-ada", &one_time, Some("192.0.2.1"))
        .await
        .expect("the ticket a blocked client presented still opens the terminal from an allowed address");
    type_line(&mut socket, "echo o''k\n").await;
    read_until(&mut socket, "ok", Duration::from_secs(20)).await;
    // Spent now: presented again (from yet another address) it is refused, and the refusal names that address.
    assert_eq!(open_at(&server.base, "ws-ada", &one_time, Some("198.51.100.7")).await.err(), Some(4001));

    let activity = |query: &'static str| {
        let api = &api;
        let root = &root;
        async move {
            let (status, body) = api.get(&format!("/api/v1/relay/activity?{query}"), Some(root)).await;
            assert_eq!(status, 200, "{body}");
            body["items"].as_array().unwrap().clone()
        }
    };
    let projected = eventually(Duration::from_secs(10), || async {
        activity("kind=ticket_refused").await.len() == 1 && activity("kind=connection_blocked").await.len() == 1
    })
    .await;
    assert!(projected, "one block and one refusal: {:?}", activity("").await);
    let blocked = &activity("kind=connection_blocked").await[0];
    assert_eq!(blocked["client_ip"], "10.1.2.3", "{blocked}");
    assert_eq!(blocked["rule"], 0, "{blocked}");
    assert_eq!(blocked["reason"], "rule", "{blocked}");
    assert_eq!(blocked["user"], "ada@example.com", "the ticket's user, read without redeeming it: {blocked}");
    assert_eq!(blocked["workspace"], "ws-ada", "{blocked}");
    let refused = &activity("kind=ticket_refused").await[0];
    assert_eq!(refused["reason"], "reused", "{refused}");
    assert_eq!(refused["client_ip"], "198.51.100.7", "{refused}");
    assert_eq!(refused["user"], "ada@example.com", "{refused}");
    assert_eq!(activity("kind=ticket_redeemed").await.len(), 1, "redeemed once, from the allowed address");
    // The event itself carries the rule as it was.
    let (_, events) = api.get("/api/v1/aggregates/firewall/org/events?limit=1000", Some(&root)).await;
    let text = events.to_string();
    assert!(text.contains("ConnectionBlocked") && text.contains("10.1.2.3") && text.contains("10.0.0.0/8"), "{text}");
}

/// IPv6 end to end: the service listens on every address, a proxy on `::1` (trusted, with `fd00::/8`) forwards
/// IPv6 clients; the right-most untrusted hop of a chain is the client; an untrusted peer cannot claim another
/// address; sessions, blocks and refusals record the address the firewall judged.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_clients_through_trusted_ipv6_proxies() {
    for db in TestDb::all("relay ipv6 forwarded for").await {
        ipv6_clients_through_trusted_ipv6_proxies_on(db).await;
    }
}

async fn ipv6_clients_through_trusted_ipv6_proxies_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server =
        Server::start(&db, &[("GATEHOUSE_LISTEN", "[::]:0"), ("GATEHOUSE_RELAY_TRUSTED_PROXIES", "::1/128,fd00::/8")]);
    let api = Api::new(&server);
    let v6 = server.base.replace("127.0.0.1", "[::1]");
    let v4 = server.base.clone();
    let agent_token = mint_agent_token(&api, &root).await;
    let _agent = Agent::start(&server, &agent_token, "ws-v6", "ada@example.com");
    wait_for_workspace(&api, &root, "ws-v6").await;
    let rules = json!([
        {"action": "allow", "cidr": "2001:db8:1::/48", "description": "office"},
        {"action": "deny", "cidr": "2001:db8::/32", "description": "elsewhere"},
        {"action": "deny", "cidr": "127.0.0.0/8", "description": "no direct IPv4 terminals"},
    ]);
    set_firewall(&api, &root, rules, "allow").await;
    let fresh = || async {
        let (_, issued) = ticket(&api, &root, "ws-v6").await;
        issued["ticket"].as_str().unwrap().to_string()
    };

    // An IPv6 client through the IPv6 proxy: denied by rule 1.
    assert_eq!(open_at(&v6, "ws-v6", &fresh().await, Some("2001:db8::7")).await.err(), Some(4003));
    // A chain through two proxies: the right-most hop that is not a proxy is the client (allowed by rule 0); the
    // denied address left of it could have been written by anyone.
    let chain = "2001:db8::66, 2001:db8:1::9, fd00::5";
    let socket = open_at(&v6, "ws-v6", &fresh().await, Some(chain)).await.expect("the office client is allowed");
    // An untrusted peer (IPv4 loopback here) claiming an allowed address is judged by its own: blocked by rule 2.
    assert_eq!(open_at(&v4, "ws-v6", &fresh().await, Some("2001:db8:1::9")).await.err(), Some(4003));
    // A refused ticket records the forwarded IPv6 client.
    assert_eq!(open_at(&v6, "ws-v6", "not-a-ticket", Some("2001:db8:1::10")).await.err(), Some(4001));

    let projected = eventually(Duration::from_secs(10), || async {
        let (_, activity) = api.get("/api/v1/relay/activity?limit=500", Some(&root)).await;
        let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-v6", Some(&root)).await;
        let items = activity["items"].as_array().unwrap();
        items.iter().filter(|item| item["kind"] == "connection_blocked").count() == 2
            && items.iter().any(|item| item["kind"] == "ticket_refused")
            && sessions["items"].as_array().unwrap().len() == 1
    })
    .await;
    let (_, activity) = api.get("/api/v1/relay/activity?limit=500", Some(&root)).await;
    assert!(projected, "{activity}");
    let of_kind = |kind: &str| -> Vec<Value> {
        activity["items"].as_array().unwrap().iter().filter(|item| item["kind"] == kind).cloned().collect()
    };
    let blocks = of_kind("connection_blocked");
    // Newest first.
    assert_eq!((blocks[0]["client_ip"].as_str(), blocks[0]["rule"].as_i64()), (Some("127.0.0.1"), Some(2)));
    assert_eq!((blocks[1]["client_ip"].as_str(), blocks[1]["rule"].as_i64()), (Some("2001:db8::7"), Some(1)));
    assert_eq!(of_kind("ticket_refused")[0]["client_ip"], "2001:db8:1::10", "{activity}");
    let (_, sessions) = api.get("/api/v1/sessions?workspace=ws-v6", Some(&root)).await;
    assert_eq!(sessions["items"][0]["client_ip"], "2001:db8:1::9", "{sessions}");
    drop(socket);
}
