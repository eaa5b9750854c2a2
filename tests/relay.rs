//! The terminal relay end to end: a real `gatehouse serve`, a real `gatehouse agent` child process with real shells
//! in PTYs, and WebSocket clients in the test playing the browser.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, issue_token, rss_kib, Api, Server};
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_tungstenite::tungstenite::Message;

use common::terminal::{
    agent_command, close_code, connect, mint_agent_token, normal_close, open, read_until, ticket, type_line,
    wait_for_workspace, Agent, Socket,
};

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

    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    // Bob does not see Ada's workspace; the admin does.
    let (_, listed) = api.get("/api/v1/agents", Some(&bob)).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    let (_, listed) = api.get("/api/v1/agents", Some(&root)).await;
    assert_eq!(listed["items"][0]["owner"], "ada@example.com", "{listed}");

    let (status, issued) = ticket(&api, &ada, "ws-ada").await;
    assert_eq!(status, 201, "{issued}");
    let one_time = issued["ticket"].as_str().unwrap().to_string();
    assert_eq!(one_time.len(), 43, "32 bytes in base64url");
    let mut socket = open(&server, "ws-ada", &one_time).await.expect("the ticket opens a terminal");
    type_line(&mut socket, "echo hel''lo\n").await;
    read_until(&mut socket, "hello", Duration::from_secs(20)).await;

    socket.send(Message::Text(json!({"type": "resize", "cols": 100, "rows": 40}).to_string().into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    type_line(&mut socket, "stty size\n").await;
    read_until(&mut socket, "40 100", Duration::from_secs(20)).await;

    socket.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();

    // The same ticket again: refused, however it is presented.
    assert_eq!(open(&server, "ws-ada", &one_time).await.err(), Some(4001), "a replayed ticket");
    // Garbage: refused.
    assert_eq!(open(&server, "ws-ada", "not-a-ticket").await.err(), Some(4001), "an unknown ticket");
    // Something other than auth first: 4000.
    let mut early = connect(&server, "ws-ada").await;
    early.send(Message::Text(json!({"type": "ping"}).to_string().into())).await.unwrap();
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
    // Closing with 1000 ends the session for good (any other end would only detach it).
    socket.close(Some(normal_close())).await.unwrap();
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _ada_agent = Agent::start(&server, &agent_token, "ws-ada");
    let bob_agent_token = mint_agent_token(&api, &root, "ws-bob", "bob@example.com").await;
    let _bob_agent = Agent::start(&server, &bob_agent_token, "ws-bob");
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
    let mut intruder = Agent::start(&server, &agent_token, "ws-ada");
    let exited = eventually(Duration::from_secs(5), || {
        let status = intruder.child.try_wait().unwrap();
        async move { status.is_some() }
    })
    .await;
    assert!(!exited, "a refused agent keeps retrying with backoff");
    let (_, listed) = api.get("/api/v1/agents", Some(&root)).await;
    let owners: Vec<_> = listed["items"].as_array().unwrap().iter().map(|item| item["owner"].clone()).collect();
    assert_eq!(owners, vec![json!("ada@example.com"), json!("bob@example.com")]);
    intruder.kill();

    // A revoked agent token: the agent stops.
    let (_, _, minted) = api
        .call(
            Method::POST,
            "/api/v1/agent-tokens",
            Some(&root),
            Some(json!({"name": "short-lived", "workspace": "ws-x"})),
        )
        .await;
    let id = minted["id"].as_str().unwrap();
    let (status, _, _) = api.call(Method::DELETE, &format!("/api/v1/agent-tokens/{id}"), Some(&root), None).await;
    assert_eq!(status, 204);
    let mut revoked = Agent::start(&server, minted["token"].as_str().unwrap(), "ws-x");
    let stopped = eventually(Duration::from_secs(15), || {
        let status = revoked.child.try_wait().unwrap();
        async move { status.is_some_and(|status| !status.success()) }
    })
    .await;
    assert!(stopped, "an agent with a revoked token stops");
}

/// An agent token is bound to one workspace and carries what is known of it. Eve can read the token of her own
/// workspace's agent; with it she can neither stand in for Ada's workspace while its agent is down (her agent would
/// receive Ada's keystrokes) nor make herself, or Ada, the owner of anything by announcing tags.
#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_agent_token_cannot_stand_in_for_another_workspace() {
    for db in TestDb::all("relay leaked agent token").await {
        a_leaked_agent_token_cannot_stand_in_for_another_workspace_on(db).await;
    }
}

async fn a_leaked_agent_token_cannot_stand_in_for_another_workspace_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let eve = issue_token(&db, "eve@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let body =
        json!({"workspace": "ws-eve", "owner": "eve@example.com", "blueprint_key": "web", "display_name": "Eve's"});
    let (status, headers, minted) = api.call(Method::POST, "/api/v1/agent-tokens", Some(&root), Some(body)).await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(headers.get("cache-control").unwrap(), "no-store", "the one answer that shows the token");
    assert_eq!(minted["workspace"], "ws-eve");
    assert_eq!(minted["name"], "ws-eve", "the label defaults to the workspace");
    assert_eq!(
        minted["tags"],
        json!({"RDE_OWNER_EMAIL": "eve@example.com", "BLUEPRINT_KEY": "web", "RDE_DISPLAY_NAME": "Eve's"})
    );
    let eves_token = minted["token"].as_str().unwrap().to_string();
    // Ada's workspace has a token of its own, but its agent is down.
    mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;

    // Eve's token announcing Ada's workspace (and Ada as its owner): refused with 4403, and the agent stops.
    let mut impostor = agent_command(&server.base, &eves_token, "ws-ada")
        .args(["--tag", "RDE_OWNER_EMAIL=ada@example.com"])
        .spawn()
        .unwrap();
    let stopped = eventually(Duration::from_secs(15), || {
        let status = impostor.try_wait().unwrap();
        async move { status.is_some_and(|status| !status.success()) }
    })
    .await;
    assert!(stopped, "an agent whose token serves another workspace stops");
    let (status, problem) = ticket(&api, &ada, "ws-ada").await;
    assert_eq!(status, 404, "no agent stands in for ws-ada: {problem}");

    // Eve's agent on her own workspace, announcing Ada (and another blueprint) as its facts: the token's win.
    let _agent = agent_command(&server.base, &eves_token, "ws-eve")
        .args(["--tag", "RDE_OWNER_EMAIL=ada@example.com", "--tag", "BLUEPRINT_KEY=admin-only", "--tag", "EDITOR=vim"])
        .spawn()
        .map(|child| Agent { child })
        .unwrap();
    wait_for_workspace(&api, &root, "ws-eve").await;
    let (_, listed) = api.get("/api/v1/agents", Some(&root)).await;
    let item = &listed["items"][0];
    assert_eq!(item["owner"], "eve@example.com", "{listed}");
    assert_eq!(item["blueprint_key"], "web");
    assert_eq!(item["display_name"], "Eve's");
    assert_eq!(item["tags"]["EDITOR"], "vim", "the agent's own tags are kept");
    let (_, adas) = api.get("/api/v1/agents", Some(&ada)).await;
    assert_eq!(adas["items"], json!([]), "Ada owns nothing");
    let (status, problem) = ticket(&api, &ada, "ws-eve").await;
    assert_eq!((status, problem["code"].as_str()), (403, Some("not_workspace_owner")));
    let (status, _) = ticket(&api, &eve, "ws-eve").await;
    assert_eq!(status, 201);

    // A hand-made hello with Eve's token for Ada's workspace gets the same close code.
    let url = format!("{}/api/v1/agent/connect", server.base.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = json!({"type": "hello", "token": eves_token, "workspace": "ws-ada", "tags": {}});
    socket.send(Message::Text(hello.to_string().into())).await.unwrap();
    assert_eq!(close_code(&mut socket, Duration::from_secs(10)).await, 4403);

    // What a token is minted with is validated.
    for (body, field) in [
        (json!({"workspace": "ws 1"}), "workspace"),
        (json!({"workspace": ""}), "workspace"),
        (json!({"workspace": "ws-1", "owner": "not an address"}), "owner"),
        (json!({"workspace": "ws-1", "blueprint_key": "a/b"}), "blueprint_key"),
        (json!({"workspace": "ws-1", "display_name": "a\u{7}b"}), "display_name"),
        (json!({"workspace": "ws-1", "name": "x".repeat(101)}), "name"),
    ] {
        let (status, _, problem) = api.call(Method::POST, "/api/v1/agent-tokens", Some(&root), Some(body)).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{problem}");
    }
    let (status, _, problem) =
        api.call(Method::POST, "/api/v1/agent-tokens", Some(&root), Some(json!({"name": "no workspace"}))).await;
    assert_eq!(status, 400, "{problem}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_agent_closes_sessions_as_agent_lost() {
    // Both backends (PostgreSQL when GATEHOUSE_TEST_DATABASE_URL is set).
    for db in TestDb::all("relay agent lost").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
        let mut agent = Agent::start(&server, &agent_token, "ws-ada");
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
            let (_, listed) = api.get("/api/v1/agents", Some(&ada)).await;
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
    let agent_token = mint_agent_token(&api, &root, "ws-many", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-many");
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
    wait_for_workspace(&api, &root, "ws-ada").await;

    let mint = || Some(json!({"name": "x", "workspace": "ws-x"}));
    let ticket_body = || Some(json!({"kind": "terminal"}));
    let unknown_token = "0".repeat(64);
    // (method, path, body, [anonymous, ada (owner), bob (another member), admin, auditor])
    let cases: Vec<(Method, String, Option<Value>, [u16; 5])> = vec![
        (Method::POST, "/api/v1/agent-tokens".into(), mint(), [401, 403, 403, 201, 403]),
        (Method::DELETE, format!("/api/v1/agent-tokens/{unknown_token}"), None, [401, 403, 403, 404, 403]),
        (Method::GET, "/api/v1/agents".into(), None, [401, 200, 200, 200, 403]),
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
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
    big.send(Message::Binary(vec![b'x'; 80_000].into())).await.unwrap();
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _ada_agent = Agent::start(&server, &agent_token, "ws-ada");
    let bob_agent_token = mint_agent_token(&api, &root, "ws-bob", "bob@example.com").await;
    let _bob_agent = Agent::start(&server, &bob_agent_token, "ws-bob");
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
    // Closed with 1000 (the end for good); held until the gateway answers, since dropping a socket with unread
    // output resets the connection, and the close frame with it (which would only detach the session).
    let mut closing = ada_sockets.remove(0);
    closing.close(Some(normal_close())).await.unwrap();
    assert_eq!(close_code(&mut closing, Duration::from_secs(10)).await, 1000);
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

    // Bad filters are 422 problems naming the field.
    for (query, field) in [
        ("active=maybe", "active"),
        ("user=not-an-email", "user"),
        ("kind=shell", "kind"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("after=%25%25%25", "after"),
        ("limit=0", "limit"),
        ("limit=many", "limit"),
    ] {
        let (status, problem) = api.get(&format!("/api/v1/sessions?{query}"), Some(&root)).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{query}: {problem}");
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
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{query}: {problem}");
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
    let agent_token = mint_agent_token(&api, &root, "ws-paste", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-paste");
    wait_for_workspace(&api, &root, "ws-paste").await;
    let (_, issued) = ticket(&api, &root, "ws-paste").await;
    let socket = open(&server, "ws-paste", issued["ticket"].as_str().unwrap()).await.unwrap();
    let (mut write, mut read) = socket.split();
    // `cat` echoes every line twice (the terminal's echo and cat's own output): about 1.2 MB back for 600 KB in,
    // several times both 256 KiB windows.
    let writer = tokio::spawn(async move {
        write.send(Message::Binary(b"cat\n".to_vec().into())).await.unwrap();
        let line = format!("{}\n", "a".repeat(99));
        for _ in 0..100 {
            write.send(Message::Binary(line.repeat(60).into_bytes().into())).await.unwrap();
        }
        write.send(Message::Binary(b"\x04echo pas''te-done\n".to_vec().into())).await.unwrap();
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
    socket.send(Message::Text(auth.into())).await.unwrap();
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
    let agent_token = mint_agent_token(&api, &root, "ws-fw", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-fw");
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
    let (status, _, problem) = api
        .call(
            Method::PUT,
            "/api/v1/firewall",
            Some(&root),
            Some(json!({"rules": [{"action": "deny", "cidr": "10.0.0.1/8"}], "default_action": "allow"})),
        )
        .await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("rules[0].cidr")), "{problem}");
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
    let agent_token = mint_agent_token(&api, &root, "ws-exit", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-exit");
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
        Message::Text(json!({"type": "hello", "token": token, "workspace": workspace, "tags": {}}).to_string().into())
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
    assert_eq!(attempt(Some(hello(&agent_token, "ws-fake")), None).await, 4403, "a token bound to another workspace");
    let fake_token = mint_agent_token(&api, &root, "ws-fake", "ada@example.com").await;
    let garbage = Some(Message::Binary(vec![0x09, 0, 0, 0, 1].into()));
    assert_eq!(attempt(Some(hello(&fake_token, "ws-fake")), garbage).await, 1002, "a malformed frame");

    let (_, issued) = ticket(&api, &root, "ws-exit").await;
    let mut socket = open(&server, "ws-exit", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "echo sti''ll-here\n").await;
    read_until(&mut socket, "still-here", Duration::from_secs(20)).await;
}

/// Mints an agent token; (its id, the token).
async fn mint_agent_token_with_id(api: &Api, admin: &str, workspace: &str) -> (String, String) {
    let body = json!({"workspace": workspace, "owner": "ada@example.com"});
    let (status, _, body) = api.call(Method::POST, "/api/v1/agent-tokens", Some(admin), Some(body)).await;
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
    let (doomed_id, doomed) = mint_agent_token_with_id(&api, &root, "ws-doomed").await;
    let (_, kept) = mint_agent_token_with_id(&api, &root, "ws-kept").await;
    let mut agent = Agent::start(&server, &doomed, "ws-doomed");
    let _other = Agent::start(&server, &kept, "ws-kept");
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
    let (_, listed) = api.get("/api/v1/agents", Some(&root)).await;
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
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
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
    let agent_token = mint_agent_token(&api, &root, "ws-v6", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-v6");
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

/// RFC 6455 §1.3's sample key and the accept value the RFC gives for it.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// One HTTP/1.1 response read off a raw connection.
struct Answer {
    status_line: String,
    /// Names lower-cased, in the order received.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// Checks that this is a whole `status` problem response that closes the connection; the problem document.
    fn problem(&self, status: u16, code: &str, what: &str) -> Value {
        let text = String::from_utf8_lossy(&self.body);
        // actix-http answers in the request's version: HTTP/1.0 for an HTTP/1.0 request.
        assert!(self.status_line.starts_with("HTTP/1.") && self.status() == status, "{what}: {}", self.status_line);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{what}: {:?}", self.headers);
        // HTTP/1.0 closes unless asked not to, so its answer needs no `Connection: close`.
        if self.status_line.starts_with("HTTP/1.1") || self.header("connection").is_some() {
            assert_eq!(self.header("connection"), Some("close"), "{what}: {:?}", self.headers);
        }
        let problem: Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(problem["status"], status, "{what}: {problem}");
        assert_eq!(problem["code"], code, "{what}: {problem}");
        assert_eq!(problem["type"], format!("urn:gatehouse:problem:{code}"), "{what}: {problem}");
        assert!(problem["title"].is_string() && problem["detail"].is_string(), "{what}: {problem}");
        problem
    }
}

/// A raw TCP connection to the server, with what was read from it and not yet consumed.
struct Raw {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(server: &Server) -> Raw {
        let stream = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.unwrap();
        Raw { stream, buffer: Vec::new() }
    }

    /// Writes `bytes` in one write.
    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more into the buffer; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk))
            .await
            .expect("the server did not answer in time")
            .unwrap();
        self.buffer.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// Takes `count` bytes off the buffer, reading as needed.
    async fn take(&mut self, count: usize) -> Vec<u8> {
        while self.buffer.len() < count {
            assert!(self.fill().await, "the connection ended with {:?} of {count} bytes", self.buffer);
        }
        self.buffer.drain(..count).collect()
    }

    /// A response's status line and headers.
    async fn head(&mut self) -> (String, Vec<(String, String)>) {
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill().await, "the connection ended in a response head: {:?}", self.buffer);
        };
        let head = String::from_utf8(self.buffer.drain(..end + 4).collect()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap().to_string();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        (status_line, headers)
    }

    /// A whole response (its body by `Content-Length`).
    async fn response(&mut self) -> Answer {
        let (status_line, headers) = self.head().await;
        let length = headers
            .iter()
            .find(|(name, _)| name == "content-length")
            .map(|(_, value)| value.parse::<usize>().unwrap())
            .unwrap_or_else(|| panic!("no Content-Length: {status_line} {headers:?}"));
        let body = self.take(length).await;
        Answer { status_line, headers, body }
    }

    /// Checks that the server closed the connection with nothing more to say.
    async fn closed(&mut self, what: &str) {
        assert!(self.buffer.is_empty() && !self.fill().await, "{what}: more after the response: {:?}", self.buffer);
    }

    /// The next frame from the server (unmasked, unfragmented): its opcode and payload.
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        let header = self.take(2).await;
        assert_eq!(header[0] & 0xf0, 0x80, "FIN and no reserved bits: {header:?}");
        assert_eq!(header[1] & 0x80, 0, "a server never masks its frames");
        let length = match header[1] & 0x7f {
            126 => u16::from_be_bytes(self.take(2).await.try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(self.take(8).await.try_into().unwrap()) as usize,
            length => length as usize,
        };
        (header[0] & 0x0f, self.take(length).await)
    }

    /// Reads binary frames until their text contains `needle`.
    async fn read_until(&mut self, needle: &str) {
        let mut seen = String::new();
        while !seen.contains(needle) {
            let (opcode, payload) = self.frame().await;
            assert_eq!(opcode, 2, "only output before {needle:?}; saw {seen:?}, then {opcode}: {payload:?}");
            seen.push_str(&String::from_utf8_lossy(&payload));
        }
    }
}

/// A masked client frame (RFC 6455 §5.2).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap();
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        length if length < 126 => frame.push(0x80 | length as u8),
        length if length <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
    frame
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
fn fresh_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes())
}

/// Changes to a handshake's headers: each header named is removed, then added with the value given (if any).
type HeaderChanges<'a> = &'a [(&'a str, Option<&'a str>)];

/// A well-formed WebSocket opening handshake for `path` (RFC 6455 §4.1), with `changes` applied.
fn upgrade_request(
    method: &str,
    path: &str,
    version: &str,
    host: &str,
    key: &str,
    changes: HeaderChanges<'_>,
) -> String {
    let mut headers = vec![
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", key),
    ];
    for (name, value) in changes {
        headers.retain(|(header, _)| !header.eq_ignore_ascii_case(name));
        if let Some(value) = value {
            headers.push((name, value));
        }
    }
    let mut request = format!("{method} {path} {version}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// Checks a `101` answering a handshake, and that it carries `accept` as `Sec-WebSocket-Accept`.
fn assert_switched(status_line: &str, headers: &[(String, String)], accept: &str) {
    let header = |name: &str| headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    assert!(status_line.starts_with("HTTP/1.1 101 "), "{status_line} {headers:?}");
    assert!(header("upgrade").is_some_and(|value| value.eq_ignore_ascii_case("websocket")), "{headers:?}");
    assert!(header("connection").is_some_and(|value| value.eq_ignore_ascii_case("upgrade")), "{headers:?}");
    assert_eq!(header("sec-websocket-accept"), Some(accept), "{headers:?}");
}

/// The WebSocket handshake as the relay answers it on the wire (actix-ws inside actix-web routes): every refusal is a whole
/// problem response with the headers RFC 6455 asks for, then the connection closes; a correct handshake gets `101`
/// with the right `Sec-WebSocket-Accept`; a client that sends its first frame in the same write as the request (so
/// the server reads it with the request's head) is served; and each answer is counted in the HTTP metrics.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_handshakes_are_checked_and_answered_on_the_wire() {
    for db in TestDb::all("relay websocket_handshakes_are_checked_and_answered_on_the_wire").await {
        websocket_handshakes_are_checked_and_answered_on_the_wire_on(db).await;
    }
}

async fn websocket_handshakes_are_checked_and_answered_on_the_wire_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let host = server.base.trim_start_matches("http://").to_string();
    let terminal = "/api/v1/workspaces/ws-wire/terminal";
    let key = fresh_key();
    let exchange = |request: String| {
        let server = &server;
        async move {
            let mut raw = Raw::connect(server).await;
            raw.send(request.as_bytes()).await;
            let answer = raw.response().await;
            raw.closed(&request).await;
            answer
        }
    };
    let request = |method: &str, path: &str, version: &str, changes: &[(&str, Option<&str>)]| {
        upgrade_request(method, path, version, &host, &key, changes)
    };

    // Not GET: 405 with Allow, on both endpoints.
    for path in [terminal, "/api/v1/agent/connect"] {
        let answer = exchange(request("POST", path, "HTTP/1.1", &[])).await;
        answer.problem(405, "method_not_allowed", &format!("POST {path}"));
        assert_eq!(answer.header("allow"), Some("GET"), "{:?}", answer.headers);
    }
    // Another version of the protocol: 426 naming the one spoken.
    for path in [terminal, "/api/v1/agent/connect"] {
        let answer = exchange(request("GET", path, "HTTP/1.1", &[("Sec-WebSocket-Version", Some("8"))])).await;
        answer.problem(426, "upgrade_required", &format!("version 8 on {path}"));
        assert_eq!(answer.header("sec-websocket-version"), Some("13"), "{:?}", answer.headers);
    }
    let answer = exchange(request("GET", terminal, "HTTP/1.1", &[("Sec-WebSocket-Version", None)])).await;
    answer.problem(426, "upgrade_required", "no version");
    assert_eq!(answer.header("sec-websocket-version"), Some("13"), "{:?}", answer.headers);
    // Malformed handshakes: 400.
    let bad: [(&str, &str, HeaderChanges<'_>); 8] = [
        ("no key", "HTTP/1.1", &[("Sec-WebSocket-Key", None)]),
        ("a key that is not base64", "HTTP/1.1", &[("Sec-WebSocket-Key", Some("not a websocket key!!!!="))]),
        // 15 bytes, then 17: base64, but not of 16 bytes.
        ("a key of 15 bytes", "HTTP/1.1", &[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAA"))]),
        ("a key of 17 bytes", "HTTP/1.1", &[("Sec-WebSocket-Key", Some("AAAAAAAAAAAAAAAAAAAAAAA="))]),
        ("no Connection", "HTTP/1.1", &[("Connection", None)]),
        ("Connection without upgrade", "HTTP/1.1", &[("Connection", Some("keep-alive"))]),
        ("HTTP/1.0", "HTTP/1.0", &[]),
        ("HTTP/1.0 without a key", "HTTP/1.0", &[("Sec-WebSocket-Key", None)]),
    ];
    for (what, version, changes) in bad {
        exchange(request("GET", terminal, version, changes)).await.problem(400, "invalid_request", what);
    }
    // A workspace id holding NUL never reaches the store: 422 naming it.
    exchange(request("GET", "/api/v1/workspaces/a%00b/terminal", "HTTP/1.1", &[])).await.problem(
        422,
        "invalid_field",
        "NUL in the workspace",
    );
    // On a REST route, `Upgrade: websocket` changes nothing: the route answers as it would (no token: 401).
    let mut members = Raw::connect(&server).await;
    members.send(request("GET", "/api/v1/members", "HTTP/1.1", &[]).as_bytes()).await;
    let answer = members.response().await;
    assert_eq!(answer.status(), 401, "{}", answer.status_line);
    exchange(request("GET", "/nowhere", "HTTP/1.1", &[])).await.problem(404, "not_found", "nowhere");
    // A foreign Origin on the terminal: 403.
    let foreign = request("GET", terminal, "HTTP/1.1", &[("Origin", Some("https://evil.example"))]);
    exchange(foreign).await.problem(403, "forbidden", "foreign Origin");

    // A correct handshake (with the server's own host as Origin): 101 with the accept value RFC 6455 gives for its
    // sample key; then the relay speaks WebSocket: a close before auth is answered with a close frame.
    let mut raw = Raw::connect(&server).await;
    let same_host = format!("http://{host}");
    raw.send(
        upgrade_request("GET", terminal, "HTTP/1.1", &host, SAMPLE_KEY, &[("Origin", Some(&same_host))]).as_bytes(),
    )
    .await;
    let (status_line, headers) = raw.head().await;
    assert_switched(&status_line, &headers, SAMPLE_ACCEPT);
    raw.send(&client_frame(0x8, &1000u16.to_be_bytes())).await;
    let (opcode, _) = raw.frame().await;
    assert_eq!(opcode, 0x8, "a close answers a close");
    raw.closed("after the close handshake").await;

    // An eager client: the request and its auth frame in one write, so the server reads the frame with the head.
    let agent_token = mint_agent_token(&api, &root, "ws-wire", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-wire");
    wait_for_workspace(&api, &root, "ws-wire").await;
    let (status, issued) = ticket(&api, &root, "ws-wire").await;
    assert_eq!(status, 201, "{issued}");
    let auth = json!({"type": "auth", "ticket": issued["ticket"]}).to_string();
    let eager_key = fresh_key();
    let mut eager = upgrade_request("GET", terminal, "HTTP/1.1", &host, &eager_key, &[]).into_bytes();
    eager.extend_from_slice(&client_frame(0x1, auth.as_bytes()));
    let mut raw = Raw::connect(&server).await;
    raw.send(&eager).await;
    let (status_line, headers) = raw.head().await;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(eager_key.as_bytes());
    assert_eq!(tokio_tungstenite::tungstenite::handshake::derive_accept_key(SAMPLE_KEY.as_bytes()), SAMPLE_ACCEPT);
    assert_switched(&status_line, &headers, &accept);
    let (opcode, ready) = raw.frame().await;
    let ready: Value = serde_json::from_slice(&ready).unwrap();
    assert_eq!((opcode, &ready["type"]), (0x1, &json!("ready")), "{ready}");
    assert!(ready["session"].is_string(), "{ready}");
    raw.send(&client_frame(0x2, b"echo ea''ger-ok\n")).await;
    raw.read_until("eager-ok").await;
    raw.send(&client_frame(0x8, &1000u16.to_be_bytes())).await;
    loop {
        match raw.frame().await {
            (0x8, _) => break,
            (0x2, _) => {}
            (opcode, payload) => panic!("after a close: {opcode} {payload:?}"),
        }
    }

    // Every answer is counted by its route's pattern (the two on ordinary paths as `unmatched`).
    let metrics = api.http.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let route = "/api/v1/workspaces/{id}/terminal";
    for (method, route, status, count) in [
        ("GET", route, 101, 2),
        ("GET", route, 426, 2),
        ("POST", route, 405, 1),
        ("POST", "/api/v1/agent/connect", 405, 1),
        ("GET", "/api/v1/agent/connect", 426, 1),
        ("GET", route, 400, bad.len()),
        ("GET", route, 403, 1),
        ("GET", route, 422, 1),
        ("GET", "unmatched", 404, 1),
        ("GET", "/api/v1/members", 401, 1),
    ] {
        let line = format!(
            "gatehouse_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
        );
        assert!(metrics.lines().any(|candidate| candidate == line), "no {line} in\n{metrics}");
    }
    let histogram = format!(
        "gatehouse_http_request_duration_seconds_count{{method=\"GET\",route=\"{route}\"}} {}",
        2 + 2 + bad.len() + 1 + 1
    );
    assert!(metrics.lines().any(|candidate| candidate == histogram), "no {histogram} in\n{metrics}");
}

/// Keep-alive and upgrades share connections: two REST requests on one connection, then an upgrade on the same
/// connection; and a REST request pipelined with an upgrade in one write gets its answer before the `101`.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_serve_rest_then_upgrade() {
    for db in TestDb::all("relay keep_alive_connections_serve_rest_then_upgrade").await {
        keep_alive_connections_serve_rest_then_upgrade_on(db).await;
    }
}

async fn keep_alive_connections_serve_rest_then_upgrade_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let host = server.base.trim_start_matches("http://").to_string();
    let rest = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {root}\r\n\r\n");
    let agent = |key: &str| upgrade_request("GET", "/api/v1/agent/connect", "HTTP/1.1", &host, key, &[]);

    let mut raw = Raw::connect(&server).await;
    for round in 0..2 {
        raw.send(rest("/api/v1/members").as_bytes()).await;
        let answer = raw.response().await;
        assert_eq!(answer.status(), 200, "round {round}: {} {:?}", answer.status_line, answer.headers);
        assert_ne!(answer.header("connection"), Some("close"), "round {round}: {:?}", answer.headers);
        let members: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(members["items"][0]["email"], "root@example.com", "round {round}: {members}");
    }
    // The same connection, upgraded now: the agent endpoint, which closes with 4000 when the first message is not
    // a hello.
    raw.send(agent(SAMPLE_KEY).as_bytes()).await;
    let (status_line, headers) = raw.head().await;
    assert_switched(&status_line, &headers, SAMPLE_ACCEPT);
    raw.send(&client_frame(0x1, b"{}")).await;
    let (opcode, payload) = raw.frame().await;
    assert_eq!((opcode, payload.get(..2)), (0x8, Some(&4000u16.to_be_bytes()[..])), "{payload:?}");

    // Pipelined: a REST request and an upgrade in one write; the REST answer comes first, then the 101.
    let mut raw = Raw::connect(&server).await;
    let key = fresh_key();
    raw.send(format!("{}{}", rest("/healthz"), agent(&key)).as_bytes()).await;
    let answer = raw.response().await;
    assert_eq!(answer.status(), 200, "the pipelined REST answer first: {} {:?}", answer.status_line, answer.headers);
    let (status_line, headers) = raw.head().await;
    assert_switched(
        &status_line,
        &headers,
        &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
    );
    raw.send(&client_frame(0x1, b"{}")).await;
    assert_eq!(raw.frame().await.0, 0x8);

    // Pipelined with a refused upgrade: the REST answer, then the problem.
    let mut raw = Raw::connect(&server).await;
    let refused = upgrade_request(
        "GET",
        "/api/v1/agent/connect",
        "HTTP/1.1",
        &host,
        &key,
        &[("Sec-WebSocket-Version", Some("8"))],
    );
    raw.send(format!("{}{refused}", rest("/healthz")).as_bytes()).await;
    assert_eq!(raw.response().await.status(), 200, "the pipelined REST answer first");
    raw.response().await.problem(426, "upgrade_required", "pipelined version 8");
    raw.closed("after the problem").await;
}

/// A hand-made agent (the agent protocol spoken by the test) whose frames the test writes itself.
struct HandAgent {
    socket: Socket,
}

impl HandAgent {
    async fn connect(server: &Server, token: &str, workspace: &str) -> HandAgent {
        let url = format!("{}/api/v1/agent/connect", server.base.replace("http://", "ws://"));
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let hello = json!({"type": "hello", "token": token, "workspace": workspace, "tags": {}});
        socket.send(Message::Text(hello.to_string().into())).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("no welcome") {
            Some(Ok(Message::Text(text))) => assert!(text.contains("welcome"), "{text}"),
            other => panic!("no welcome: {other:?}"),
        }
        HandAgent { socket }
    }

    /// The gateway's next frame.
    async fn frame(&mut self) -> relay::mux::Frame {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.socket.next()).await.expect("no frame") {
                Some(Ok(Message::Binary(bytes))) => return relay::mux::Frame::decode(&bytes).unwrap(),
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("agent connection: {other:?}"),
            }
        }
    }

    /// Sends `frames` in one write (they reach the gateway together).
    async fn send_together(&mut self, frames: &[relay::mux::Frame]) {
        for frame in frames {
            self.socket.feed(Message::Binary(frame.encode().into())).await.unwrap();
        }
        self.socket.flush().await.unwrap();
    }
}

/// Opens a browser session on a hand-made agent: the test's agent answers the gateway's `Open`; returns the browser's
/// socket (after `ready`) and the session's number on the agent connection.
async fn open_on_hand_agent(
    server: &Server,
    api: &Api,
    user: &str,
    agent: &mut HandAgent,
    workspace: &str,
) -> (Socket, u32) {
    let (_, issued) = ticket(api, user, workspace).await;
    let one_time = issued["ticket"].as_str().unwrap().to_string();
    let browser = {
        let (base, workspace) = (server.base.clone(), workspace.to_string());
        tokio::spawn(async move { open_at(&base, &workspace, &one_time, None).await })
    };
    // (Earlier sessions' `Close` frames may come first.)
    let session = loop {
        match agent.frame().await {
            relay::mux::Frame::Open { session, .. } => break session,
            relay::mux::Frame::Close { .. } => {}
            other => panic!("the gateway did not open a session: {other:?}"),
        }
    };
    agent.send_together(&[relay::mux::Frame::Opened { session }]).await;
    (browser.await.unwrap().expect("the terminal opened"), session)
}

/// The browser's next binary message, text message or close code.
async fn next_from_gateway(socket: &mut Socket) -> Result<Result<Vec<u8>, Value>, u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("nothing from the gateway") {
            Some(Ok(Message::Binary(bytes))) => return Ok(Ok(bytes.to_vec())),
            Some(Ok(Message::Text(text))) => return Ok(Err(serde_json::from_str(&text).unwrap())),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|frame| u16::from(frame.code)).unwrap_or(1005)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// Output that reaches the gateway together leaves for the browser as one message (one write, fewer wake-ups for
/// both), in order, with the shell's exit after it; a whole window of output (four 64 KiB frames) arrives complete,
/// in order, in messages of at most 256 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn output_that_arrives_together_leaves_as_one_message() {
    for db in TestDb::all("relay output_that_arrives_together_leaves_as_one_message").await {
        output_that_arrives_together_leaves_as_one_message_on(db).await;
    }
}

async fn output_that_arrives_together_leaves_as_one_message_on(db: TestDb) {
    use relay::mux::{Frame, INITIAL_WINDOW, MAX_DATA};

    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-hand", "ada@example.com").await;
    let mut agent = HandAgent::connect(&server, &agent_token, "ws-hand").await;
    wait_for_workspace(&api, &ada, "ws-hand").await;

    let (mut browser, session) = open_on_hand_agent(&server, &api, &ada, &mut agent, "ws-hand").await;
    let parts: Vec<Vec<u8>> = [b'a', b'b', b'c'].iter().map(|&byte| vec![byte; 1000]).collect();
    let mut frames: Vec<Frame> = parts.iter().map(|bytes| Frame::Data { session, bytes: bytes.clone() }).collect();
    frames.push(Frame::Exit { session, code: 7 });
    frames.push(Frame::Close { session });
    agent.send_together(&frames).await;
    match next_from_gateway(&mut browser).await {
        Ok(Ok(bytes)) => assert!(bytes == parts.concat(), "three frames, one message: got {} bytes", bytes.len()),
        other => panic!("expected the output, got {other:?}"),
    }
    assert_eq!(next_from_gateway(&mut browser).await, Ok(Err(json!({"type": "exit", "code": 7}))));
    assert_eq!(next_from_gateway(&mut browser).await, Err(1000));

    let (mut browser, session) = open_on_hand_agent(&server, &api, &ada, &mut agent, "ws-hand").await;
    let parts: Vec<Vec<u8>> = (0..(INITIAL_WINDOW as usize / MAX_DATA))
        .map(|part| (0..MAX_DATA).map(|i| (i * 7 + part * 13) as u8).collect())
        .collect();
    let mut frames: Vec<Frame> = parts.iter().map(|bytes| Frame::Data { session, bytes: bytes.clone() }).collect();
    frames.push(Frame::Exit { session, code: 0 });
    agent.send_together(&frames).await;
    let mut received = Vec::new();
    loop {
        match next_from_gateway(&mut browser).await {
            Ok(Ok(bytes)) => {
                assert!(bytes.len() <= INITIAL_WINDOW as usize, "a message of {} bytes", bytes.len());
                received.extend_from_slice(&bytes);
            }
            Ok(Err(exit)) => {
                assert_eq!(exit, json!({"type": "exit", "code": 0}));
                break;
            }
            Err(code) => panic!("closed with {code} before the exit"),
        }
    }
    assert!(received == parts.concat(), "{} bytes received, out of order or incomplete", received.len());
    // The browser accepted the whole window: the gateway returned it to the agent as credit.
    let mut credited = 0;
    while credited < INITIAL_WINDOW {
        match agent.frame().await {
            Frame::Credit { session: of, bytes } if of == session => credited += bytes,
            other => panic!("expected credit, got {other:?}"),
        }
    }
    assert_eq!(credited, INITIAL_WINDOW);
}

/// A TLS-terminating proxy in front of `target` (as a deployment puts one in front of the gateway), with a
/// certificate for `localhost` signed by a private CA; returns its port, the CA's PEM and a count of completed TLS
/// handshakes.
async fn tls_proxy(target: std::net::SocketAddr) -> (u16, String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use tokio_rustls::rustls;

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Gatehouse test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server =
        CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&server_key, &ca, &ca_key).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
            });
        }
    });
    (port, ca.pem(), handshakes)
}

/// Starts `gatehouse agent` against `server_url` with `extra` arguments, its log going to `log`.
fn start_agent_logging(server_url: &str, token: &str, workspace: &str, extra: &[&str], log: &std::path::Path) -> Agent {
    let child = agent_command(server_url, token, workspace)
        .args(extra)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Agent { child }
}

/// `https://` makes the agent dial out over TLS and check the gateway's certificate: behind a TLS-terminating proxy
/// whose certificate a private CA signed, the agent refuses it until it is given the CA with `--ca-file`, and then
/// serves terminals through it. A CA file that holds no certificate stops the agent at start with exit status 1.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_dials_out_over_tls_and_checks_the_certificate() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-tls", "ada@example.com").await;
    let gateway: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let (port, ca_pem, handshakes) = tls_proxy(gateway).await;
    let url = format!("https://localhost:{port}");
    let scratch = tempfile::tempdir().unwrap();

    // Without the CA: the certificate is refused, nothing connects.
    let log = scratch.path().join("untrusting.log");
    let mut untrusting = start_agent_logging(&url, &agent_token, "ws-tls", &[], &log);
    let refused = eventually(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).unwrap_or_default().contains("certificate")
    })
    .await;
    untrusting.kill();
    assert!(refused, "the agent did not refuse the certificate: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let (_, listed) = api.get("/api/v1/agents", Some(&root)).await;
    assert_eq!(listed["items"], json!([]), "an agent that refused the certificate is not connected");

    // A CA file without a certificate: the agent stops at once.
    let empty = scratch.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let log = scratch.path().join("bad-ca.log");
    let mut bad = start_agent_logging(&url, &agent_token, "ws-tls", &["--ca-file", empty.to_str().unwrap()], &log);
    let status = tokio::task::spawn_blocking(move || bad.child.wait().unwrap()).await.unwrap();
    assert_eq!(status.code(), Some(1));
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(message.contains("empty.pem") && message.contains("no PEM certificate"), "{message}");

    // With the CA: connected through the proxy, over TLS, and a terminal works.
    let ca_file = scratch.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let log = scratch.path().join("trusting.log");
    let _agent = start_agent_logging(&url, &agent_token, "ws-tls", &["--ca-file", ca_file.to_str().unwrap()], &log);
    wait_for_workspace(&api, &ada, "ws-tls").await;
    assert!(handshakes.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the agent came in through the TLS proxy");
    let (_, issued) = ticket(&api, &ada, "ws-tls").await;
    let mut socket = open(&server, "ws-tls", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "echo ov''er-tls\n").await;
    read_until(&mut socket, "over-tls", Duration::from_secs(20)).await;
}

/// A TCP proxy between the agent and the gateway that the test can cut: `cut` ends every connection it carries, and
/// the next `refuse` connections are closed as soon as they are accepted. Records when each connection came.
struct CuttableProxy {
    port: u16,
    cut: tokio::sync::watch::Sender<u64>,
    refuse: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl CuttableProxy {
    async fn start(target: std::net::SocketAddr) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, watch) = tokio::sync::watch::channel(0u64);
        let refuse = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (refusing, recording) = (refuse.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                recording.lock().unwrap().push(std::time::Instant::now());
                let refused = refusing
                    .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok();
                if refused {
                    drop(inbound);
                    continue;
                }
                let mut watch = watch.clone();
                watch.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.changed() => {}
                    }
                });
            }
        });
        CuttableProxy { port, cut, refuse, accepted }
    }

    /// Ends every connection, and closes the next `refuse` ones at once.
    fn cut(&self, refuse: usize) {
        self.refuse.store(refuse, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    fn accepted(&self) -> Vec<std::time::Instant> {
        self.accepted.lock().unwrap().clone()
    }
}

/// The agent reconnects with exponential backoff: its connection cut, its live session closes as agent lost (4410),
/// its next attempts are refused twice, with growing waits between them, and it comes back on its own and serves a
/// new terminal.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_agent_reconnects_with_backoff() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-cut", "ada@example.com").await;
    let gateway: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let proxy = CuttableProxy::start(gateway).await;
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("agent.log");
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let _agent = start_agent_logging(&url, &agent_token, "ws-cut", &[], &log);
    wait_for_workspace(&api, &ada, "ws-cut").await;

    let (_, issued) = ticket(&api, &ada, "ws-cut").await;
    let mut socket = open(&server, "ws-cut", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "echo be''fore\n").await;
    read_until(&mut socket, "before", Duration::from_secs(20)).await;

    let cut_at = std::time::Instant::now();
    proxy.cut(2);
    assert_eq!(close_code(&mut socket, Duration::from_secs(10)).await, 4410, "the live session ends as agent lost");
    let back = eventually(Duration::from_secs(30), || async {
        let (status, body) = api.get("/api/v1/agents", Some(&ada)).await;
        status == 200 && body["items"].as_array().unwrap().iter().any(|item| item["id"] == "ws-cut")
    })
    .await;
    assert!(back, "the agent did not come back: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let attempts: Vec<Duration> = proxy.accepted().iter().skip(1).map(|at| at.duration_since(cut_at)).collect();
    assert!(attempts.len() >= 3, "two refused attempts and one that got through: {attempts:?}");
    // Waits of 0.25-0.5 s, then 0.5-1 s, then 1-2 s (jitter within each).
    let gaps: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(attempts[0] >= Duration::from_millis(200), "{attempts:?}");
    assert!(gaps[0] >= Duration::from_millis(450) && gaps[1] >= Duration::from_millis(950), "{gaps:?}");

    let (_, issued) = ticket(&api, &ada, "ws-cut").await;
    let mut socket = open(&server, "ws-cut", issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, "echo af''ter\n").await;
    read_until(&mut socket, "after", Duration::from_secs(20)).await;
}

/// One browser that stops reading while its shell prints without end does not stall another session on the same
/// agent, and costs the gateway no more than its window: its agent stops reading that PTY once the window is spent
/// (the shell blocks), instead of the gateway buffering the output.
#[tokio::test(flavor = "multi_thread")]
async fn a_browser_that_stops_reading_stalls_only_itself() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-slow", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-slow");
    wait_for_workspace(&api, &root, "ws-slow").await;
    let (_, issued) = ticket(&api, &root, "ws-slow").await;
    let mut stuck = open(&server, "ws-slow", issued["ticket"].as_str().unwrap()).await.unwrap();
    let (_, issued) = ticket(&api, &root, "ws-slow").await;
    let mut lively = open(&server, "ws-slow", issued["ticket"].as_str().unwrap()).await.unwrap();

    let before = rss_kib(server.child.id());
    // `yes` prints tens of MB a second; this browser never reads again.
    type_line(&mut stuck, "yes 0123456789abcdefghijklmnopqrstuvwxyz\n").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..5 {
        let started = std::time::Instant::now();
        type_line(&mut lively, &format!("echo live''ly-{round}\n")).await;
        read_until(&mut lively, &format!("lively-{round}"), Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(2), "round {round} took {:?}", started.elapsed());
    }
    let grown = rss_kib(server.child.id()).saturating_sub(before);
    assert!(grown < 16 * 1024, "the gateway grew by {grown} KiB while one browser did not read");
    drop(stuck);
}

/// CPU time (user + system) the process `pid` has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which is in parentheses and may hold spaces): utime and stime are 14 and 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    fields.get(11).and_then(|utime| utime.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|stime| stime.parse::<u64>().ok()).unwrap_or(0)
}

/// A raw WebSocket connection to `path`, upgraded (`101` checked).
async fn raw_websocket(server: &Server, path: &str) -> Raw {
    let host = server.base.trim_start_matches("http://").to_string();
    let mut raw = Raw::connect(server).await;
    let key = fresh_key();
    raw.send(upgrade_request("GET", path, "HTTP/1.1", &host, &key, &[]).as_bytes()).await;
    let (status_line, headers) = raw.head().await;
    assert!(status_line.starts_with("HTTP/1.1 101 "), "{status_line} {headers:?}");
    raw
}

impl Raw {
    /// The code of the close frame the server sends next (skipping other frames).
    async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == 0x8 {
                return payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]])).unwrap_or(1005);
            }
        }
    }
}

/// Clients that break the WebSocket protocol get their documented close codes, before and after their ticket, and
/// clients that flood the endpoints with large frames before authenticating stall nothing: `/healthz` and a live
/// session on the same agent keep answering, and once they are gone the gateway is idle again (the hand-written
/// WebSocket layer this replaced left a worker at 100% CPU after such a client disconnected).
#[tokio::test(flavor = "multi_thread")]
async fn hostile_websocket_clients_get_close_codes_and_stall_nothing() {
    for db in TestDb::all("relay hostile websocket clients").await {
        hostile_websocket_clients_get_close_codes_and_stall_nothing_on(db).await;
    }
}

async fn hostile_websocket_clients_get_close_codes_and_stall_nothing_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(
        &db,
        &[("GATEHOUSE_RELAY_AUTH_TIMEOUT_SECS", "30"), ("GATEHOUSE_RELAY_MAX_FRAME_BYTES", "70000")],
    );
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-hostile", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-hostile");
    wait_for_workspace(&api, &ada, "ws-hostile").await;
    let terminal = "/api/v1/workspaces/ws-hostile/terminal";
    let (_, issued) = ticket(&api, &ada, "ws-hostile").await;
    let mut live = open(&server, "ws-hostile", issued["ticket"].as_str().unwrap()).await.unwrap();
    // The gateway's own idle cost with this session open (projector polls, background tasks): what "idle again
    // after the flood" is compared with, rather than a fixed figure that a debug build on a busy machine nears.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks(server.child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = cpu_ticks(server.child.id()) - before;

    // Before the ticket: text that is not UTF-8 (1007), an unmasked frame, reserved bits, an unknown opcode (1002).
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let mut reserved = client_frame(0x1, b"{}");
    reserved[0] |= 0x40;
    // Fragments: FIN off on all but the last.
    let fragment = |opcode: u8, payload: &[u8]| {
        let mut frame = client_frame(opcode, payload);
        frame[0] &= 0x7f;
        frame
    };
    // A character split across fragments, and broken in the second one.
    let mut split_text = fragment(0x1, &[0xe2, 0x82]);
    split_text.extend_from_slice(&client_frame(0x0, &[0x28]));
    // Two fragments within the frame limit (70,000 bytes here) whose message is over it.
    let mut long_message = fragment(0x2, &[7; 40_000]);
    long_message.extend_from_slice(&client_frame(0x0, &[7; 40_000]));
    let cases: [(&str, Vec<u8>, u16); 7] = [
        ("text that is not UTF-8", client_frame(0x1, &[0xff, 0xfe, 0xfd]), 1007),
        ("fragmented text that is not UTF-8", split_text, 1007),
        ("a fragmented message over the limit", long_message, 1009),
        ("an unmasked frame", unmasked, 1002),
        ("a reserved bit", reserved, 1002),
        ("an unknown opcode", client_frame(0x3, b"x"), 1002),
        ("a continuation that continues nothing", client_frame(0x0, b"x"), 1002),
    ];
    for (what, frame, code) in &cases {
        for path in [terminal, "/api/v1/agent/connect"] {
            let mut raw = raw_websocket(&server, path).await;
            raw.send(frame).await;
            assert_eq!(raw.close_code().await, *code, "{what} on {path}");
        }
    }
    // A frame that declares more than the limit and never ends, and endless empty fragments: the gateway stops
    // reading at the limit (1009) instead of buffering what is sent, before and after the ticket.
    let mut huge = vec![0x82, 0xff];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    let empty_continuations: Vec<u8> = (0..2_000).flat_map(|_| fragment(0x0, b"")).collect();
    let mut endless_empty = fragment(0x2, b"");
    endless_empty.extend_from_slice(&empty_continuations);
    let rss_before = rss_kib(server.child.id());
    for (what, head, filler) in [
        ("a frame of 1 TiB", &huge, vec![0u8; 64 * 1024]),
        ("empty fragments", &endless_empty, empty_continuations.clone()),
    ] {
        for (path, authenticated) in [(terminal, false), ("/api/v1/agent/connect", false), (terminal, true)] {
            let mut raw = raw_websocket(&server, path).await;
            if authenticated {
                let (_, issued) = ticket(&api, &ada, "ws-hostile").await;
                let auth = json!({"type": "auth", "ticket": issued["ticket"]}).to_string();
                raw.send(&client_frame(0x1, auth.as_bytes())).await;
                assert_eq!(raw.frame().await.0, 0x1, "ready");
            }
            raw.send(head).await;
            // Up to 4 MiB more: the gateway closes long before (the limit is 70,000 bytes here).
            let mut sent = 0;
            while sent < 4 * 1024 * 1024 {
                use tokio::io::AsyncWriteExt;
                match tokio::time::timeout(Duration::from_secs(2), raw.stream.write_all(&filler)).await {
                    Ok(Ok(())) => sent += filler.len(),
                    _ => break,
                }
            }
            assert_eq!(raw.close_code().await, 1009, "{what} on {path} (authenticated: {authenticated})");
        }
    }
    let grown = rss_kib(server.child.id()).saturating_sub(rss_before);
    assert!(grown < 16 * 1024, "the gateway grew by {grown} KiB while refusing endless frames");

    // After the ticket, text that is not UTF-8 ends the session with 1007, recorded as closed by the client.
    let (_, issued) = ticket(&api, &ada, "ws-hostile").await;
    let mut raw = raw_websocket(&server, terminal).await;
    let auth = json!({"type": "auth", "ticket": issued["ticket"]}).to_string();
    raw.send(&client_frame(0x1, auth.as_bytes())).await;
    let (opcode, ready) = raw.frame().await;
    assert_eq!(opcode, 0x1, "{:?}", String::from_utf8_lossy(&ready));
    raw.send(&client_frame(0x1, &[0xc3, 0x28])).await;
    assert_eq!(raw.close_code().await, 1007);

    // Five clients stream 64 KiB frames at both endpoints without ever authenticating, then vanish.
    let host = server.base.trim_start_matches("http://").to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut flooders = Vec::new();
    for index in 0..5 {
        let path = if index < 3 { terminal.to_string() } else { "/api/v1/agent/connect".to_string() };
        let (host, stop) = (host.clone(), stop.clone());
        flooders.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let Ok(mut stream) = tokio::net::TcpStream::connect(&host).await else { break };
                let request = upgrade_request("GET", &path, "HTTP/1.1", &host, &fresh_key(), &[]);
                if stream.write_all(request.as_bytes()).await.is_err() {
                    continue;
                }
                let frame = client_frame(0x2, &vec![0x5a; 64 * 1024]);
                while !stop.is_cancelled() {
                    match tokio::time::timeout(Duration::from_millis(200), stream.write_all(&frame)).await {
                        Ok(Ok(())) => sent += frame.len() as u64,
                        // Refused and closed, or the server stopped reading: connect again.
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
            }
            sent
        }));
    }
    let flood_started = std::time::Instant::now();
    let health = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let mut probes = 0;
    while flood_started.elapsed() < Duration::from_secs(4) {
        let answer = health.get(format!("{}/healthz", server.base)).send().await;
        assert!(answer.is_ok_and(|answer| answer.status() == 200), "/healthz during the flood (probe {probes})");
        type_line(&mut live, &format!("echo pro''be-{probes}\n")).await;
        read_until(&mut live, &format!("probe-{probes}"), Duration::from_secs(2)).await;
        probes += 1;
    }
    stop.cancel();
    let mut sent = 0;
    for flooder in flooders {
        sent += flooder.await.unwrap();
    }
    assert!(sent > 10 * 1024 * 1024, "the flood was a flood: {sent} bytes");
    assert!(probes >= 4, "{probes} probes in 4 s");
    // Gone: the gateway is idle again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = cpu_ticks(server.child.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_ticks(server.child.id()) - before;
    assert!(
        used <= idle + 15,
        "the gateway used {used} ticks of CPU in 3 s after the flood, {idle} before it (at most 0.05 core more)"
    );
    type_line(&mut live, "echo sti''ll-here\n").await;
    read_until(&mut live, "still-here", Duration::from_secs(5)).await;
}
