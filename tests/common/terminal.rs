//! A browser's side of the terminal relay: tickets and the terminal WebSocket.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use std::process::{Child, Stdio};

use super::{eventually, gatehouse, issue_token, Api, Server};

/// A terminal WebSocket.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ticket(api: &Api, token: &str, workspace: &str) -> (u16, Value) {
    let path = format!("/api/v1/workspaces/{workspace}/tickets");
    let (status, _, body) = api.call(Method::POST, &path, Some(token), Some(json!({"kind": "terminal"}))).await;
    (status, body)
}

pub async fn connect(server: &Server, workspace: &str) -> Socket {
    let url = format!("{}/api/v1/workspaces/{workspace}/terminal", server.base.replace("http://", "ws://"));
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
}

/// Connects and authenticates; returns the socket after `ready`, or the close code.
pub async fn open(server: &Server, workspace: &str, ticket: &str) -> Result<Socket, u16> {
    let mut socket = connect(server, workspace).await;
    socket.send(Message::Text(json!({"type": "auth", "ticket": ticket}).to_string().into())).await.unwrap();
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
pub async fn read_until(socket: &mut Socket, needle: &str, limit: Duration) -> String {
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
pub async fn close_code(socket: &mut Socket, limit: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await.expect("socket was not closed") {
            Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)).unwrap_or(1005),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// The close frame that ends a terminal session for good (any other end of the socket detaches it).
pub fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

pub async fn type_line(socket: &mut Socket, line: &str) {
    socket.send(Message::Binary(line.as_bytes().to_vec().into())).await.unwrap();
}

/// A running `gatehouse agent`.
pub struct Agent {
    pub child: Child,
}

/// `gatehouse agent` dialling `server_url` for `workspace`, its output discarded.
pub fn agent_command(server_url: &str, token: &str, workspace: &str) -> std::process::Command {
    let mut command = gatehouse();
    command
        .args(["agent", "--server", server_url, "--workspace", workspace])
        .env("GATEHOUSE_AGENT_TOKEN", token)
        .env("GATEHOUSE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

impl Agent {
    pub fn start(server: &Server, token: &str, workspace: &str) -> Agent {
        let child = agent_command(&server.base, token, workspace)
            .args(["--tag", "RDE_DISPLAY_NAME=Test"])
            .env("PS1", "$ ")
            .spawn()
            .unwrap();
        Agent { child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Mints an agent token for `workspace`, owned by `owner`.
pub async fn mint_agent_token(api: &Api, admin: &str, workspace: &str, owner: &str) -> String {
    let body = json!({"name": "test agent", "workspace": workspace, "owner": owner, "display_name": "Test"});
    let (status, _, body) = api.call(Method::POST, "/api/v1/agent-tokens", Some(admin), Some(body)).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

pub async fn wait_for_workspace(api: &Api, token: &str, workspace: &str) {
    let listed = eventually(Duration::from_secs(30), || async {
        let (status, body) = api.get("/api/v1/agents", Some(token)).await;
        status == 200 && body["items"].as_array().unwrap().iter().any(|item| item["id"] == workspace)
    })
    .await;
    assert!(listed, "the workspace {workspace} never appeared");
}

/// A gateway with an admin (`root@example.com`), a member (`ada@example.com`) and her workspace `ws-ada`, served by
/// a real agent.
pub struct Setup {
    pub server: Server,
    pub api: Api,
    pub root: String,
    pub ada: String,
    pub agent: Agent,
}

/// Starts [`Setup`]'s gateway with extra environment `env`, and waits until `ws-ada`'s agent is connected.
pub async fn setup(db: &testkit::TestDb, env: &[(&str, &str)]) -> Setup {
    let root = issue_token(db, "root@example.com", "admin", "1h");
    let ada = issue_token(db, "ada@example.com", "member", "1h");
    let server = Server::start(db, env);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let agent = Agent::start(&server, &agent_token, "ws-ada");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    Setup { server, api, root, ada, agent }
}
