//! The relay's WebSocket connections: the agent endpoint and the browser terminal endpoint (ADR 0011).
//!
//! The HTTP server hands every request that asks for `Upgrade: websocket` to [`upgrade`] with its TCP connection,
//! instead of to actix-web's router: the handshake is answered here and the connection is then served by
//! [`relay::ws`], which holds no buffer while idle (actix-http's dispatcher would keep two 8 KiB buffers per
//! connection for its whole life). The routes stay mounted in actix-web for requests that are *not* upgrades, which
//! get the same `400` problem as before (`relay_http::agent_connect` and `relay_http::terminal`).

use std::io::IoSlice;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::header::HeaderMap;
use actix_http::{h1, Method, Request, Version};
use actix_web::dev::{Path, ResourceDef, Url};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpMessage;
use api::{Problem, ProblemCode};
use domain::relay::{AgentRefusal, CloseReason, SessionCommand};
use domain::Email;
use relay::agent::{close as agent_close, Hello, Welcome};
use relay::browser::{ClientMessage, CloseCode, ServerMessage};
use relay::hub::{SessionHandle, ToBrowser};
use relay::mux::Frame;
use relay::ws::{self, Message, WebSocket};
use store::EventMetadata;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::relay_http::{blocked, client_address, redeem, sha256_hex, ticket_user, Relay};

/// The agent endpoint.
pub const AGENT_PATH: &str = "/api/v1/agent/connect";
/// The browser terminal endpoint.
pub const TERMINAL_PATH: &str = "/api/v1/workspaces/{id}/terminal";

/// How long a close waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// The least a read asks for: a browser's keystrokes and pastes, an agent's output in frames of up to 64 KiB.
const BROWSER_READ: usize = 64 * 1024;
const AGENT_READ: usize = 64 * 1024;
/// The agent connection's writer gathers frames already queued into writes of up to this many bytes and frames.
const AGENT_WRITE_BATCH: usize = 256 * 1024;
const AGENT_WRITE_FRAMES: usize = 256;
/// A session takes up to this many of its agent's messages at a time, and sends the output among them as messages of
/// up to `OUTPUT_MESSAGE` bytes (the agent's whole window: what can pile up while one write goes out).
const INBOX: usize = 64;
const OUTPUT_MESSAGE: usize = relay::mux::INITIAL_WINDOW as usize;

/// A connection the HTTP server upgraded, with what it read past the request's head.
pub type Upgraded = Framed<TcpStream, h1::Codec>;

/// Counts upgrade requests in the HTTP metrics (they do not pass through actix-web's middleware).
#[derive(Clone)]
pub struct UpgradeMetrics(pub api::HttpMetrics);

/// Serves one request that asked for a WebSocket upgrade, with its connection: the relay's two endpoints answer
/// `101` and serve the connection on this worker; anything else gets a problem document and the connection closes.
pub async fn upgrade(relay: Arc<Relay>, metrics: UpgradeMetrics, request: Request, framed: Upgraded) {
    let started = Instant::now();
    let parts = framed.into_parts();
    let (mut io, already_read, unsent) = (parts.io, parts.read_buf, parts.write_buf);
    let (route, outcome) = handshake(&relay, &request);
    let status = match &outcome {
        Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
        Err(problem) => problem.status(),
    };
    metrics.0.requests.with_label_values(&[request.method().as_str(), route, status.as_str()]).inc();
    metrics.0.duration.with_label_values(&[request.method().as_str(), route]).observe(started.elapsed().as_secs_f64());
    // Answers to requests pipelined ahead of this one: actix-http hands the connection over as soon as it has
    // encoded them, before it has written them, so they go out first (dropped, they were lost).
    if !unsent.is_empty() && io.write_all(&unsent).await.is_err() {
        return;
    }
    drop(unsent);
    let endpoint = match outcome {
        Ok(endpoint) => endpoint,
        Err(problem) => {
            let _ = io.write_all(&problem_response(&problem)).await;
            let _ = io.shutdown().await;
            return;
        }
    };
    let key = header(&request, "sec-websocket-key").unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        ws::accept_key(key)
    );
    // The request's header values share the dispatcher's 8 KiB read buffer: dropped now, not kept for the session.
    drop(request);
    let answered = io.write_all(answer.as_bytes()).await;
    drop(answer);
    if answered.is_err() {
        return;
    }
    let config = ws::Config { max_message: relay.limits.max_frame, read_chunk: BROWSER_READ };
    match endpoint {
        Endpoint::Agent => {
            let socket = WebSocket::new(io, &already_read, ws::Config { read_chunk: AGENT_READ, ..config });
            drop(already_read);
            agent_connection(relay, socket).await;
        }
        Endpoint::Terminal(context) => {
            let socket = WebSocket::new(io, &already_read, config);
            drop(already_read);
            browser_session(relay, context, socket).await;
        }
    }
}

enum Endpoint {
    Agent,
    Terminal(BrowserContext),
}

/// Which endpoint the request is for (its route pattern, for metrics), or why it gets none.
fn handshake(relay: &Relay, request: &Request) -> (&'static str, Result<Endpoint, Problem>) {
    let path = request.path();
    static TERMINAL: std::sync::LazyLock<ResourceDef> = std::sync::LazyLock::new(|| ResourceDef::new(TERMINAL_PATH));
    let mut matched = Path::new(Url::new(request.uri().clone()));
    let (route, workspace) = if path == AGENT_PATH {
        (AGENT_PATH, None)
    } else if TERMINAL.capture_match_info(&mut matched) {
        (TERMINAL_PATH, matched.get("id").map(str::to_string))
    } else {
        let problem = Problem::new(ProblemCode::NotFound, "Not found").detail(
            "No WebSocket endpoint here: the relay's are /api/v1/agent/connect and /api/v1/workspaces/{id}/terminal.",
        );
        return ("unmatched", Err(problem));
    };
    (
        route,
        check_upgrade(request).and_then(|()| match workspace {
            None => Ok(Endpoint::Agent),
            Some(workspace) => {
                api::extract::refuse_nul("id", &workspace)?;
                if !origin_allowed(request.headers(), &relay.limits.allowed_origins) {
                    return Err(
                        Problem::new(ProblemCode::Forbidden, "Forbidden").detail("This origin may not open terminals.")
                    );
                }
                let forwarded =
                    request.headers().get_all("x-forwarded-for").map(|value| value.to_str().unwrap_or("\u{0}"));
                let address =
                    client_address(request.peer_addr().map(|peer| peer.ip()), forwarded, &relay.limits.trusted_proxies);
                let user_agent =
                    header(request, "user-agent").unwrap_or_default().chars().take(256).collect::<String>();
                Ok(Endpoint::Terminal(BrowserContext { workspace, address, user_agent }))
            }
        }),
    )
}

/// The RFC 6455 §4.2.1 checks of the opening handshake (`Upgrade: websocket` is why the request is here).
fn check_upgrade(request: &Request) -> Result<(), Problem> {
    let bad = |detail: &str| Problem::new(ProblemCode::InvalidRequest, "Not a WebSocket upgrade").detail(detail);
    if request.method() != Method::GET {
        return Err(Problem::new(ProblemCode::MethodNotAllowed, "Method not allowed")
            .detail("A WebSocket is opened with GET.")
            .header(header::ALLOW, HeaderValue::from_static("GET")));
    }
    if request.version() != Version::HTTP_11 {
        return Err(bad("A WebSocket is opened over HTTP/1.1."));
    }
    let connection_upgrade = request
        .headers()
        .get_all("connection")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return Err(bad("The Connection header must include \"Upgrade\"."));
    }
    if header(request, "sec-websocket-version") != Some("13") {
        return Err(Problem::new(ProblemCode::UpgradeRequired, "Not a WebSocket upgrade")
            .detail("Only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13).")
            .header(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket")));
    }
    if !header(request, "sec-websocket-key").is_some_and(ws::valid_key) {
        return Err(bad("Sec-WebSocket-Key must be the base64 of 16 bytes."));
    }
    Ok(())
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|value| value.to_str().ok())
}

/// Whether a terminal may be opened from the request's `Origin`: none (not a browser), one of `allowed` (or `*`), or
/// the request's own host.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let Some(origin) = header("origin") else { return true };
    if allowed.iter().any(|allowed| allowed == origin || allowed == "*") {
        return true;
    }
    let host = header("host").unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// A problem as a whole HTTP/1.1 response that closes the connection.
fn problem_response(problem: &Problem) -> Vec<u8> {
    let status = problem.status();
    let body = serde_json::to_string(problem).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in problem.headers() {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(body.as_bytes());
    response
}

/// About how many bytes a mux frame takes on the wire.
fn frame_size(frame: &Frame) -> usize {
    match frame {
        Frame::Data { bytes, .. } => bytes.len() + 15,
        _ => 24,
    }
}

async fn agent_connection(relay: Arc<Relay>, socket: WebSocket) {
    let mut socket = socket;
    let first = tokio::time::timeout(relay.limits.auth_timeout, socket.recv()).await;
    let hello = match first {
        Ok(Ok(Some(Message::Text(text)))) => serde_json::from_str::<Hello>(&text).ok(),
        _ => None,
    };
    let Some(hello) = hello else {
        tracing::info!("agent refused: no hello");
        socket.close(Some((agent_close::HELLO_REQUIRED, "hello required")), CLOSE_LINGER).await;
        return;
    };
    let token_id = sha256_hex(&hello.token);
    let watch = relay.watch_token(&token_id);
    let token = match relay.agent_tokens.load(&token_id).await {
        Ok((token, _)) => Some(token),
        Err(error) => {
            tracing::warn!(%error, "cannot check an agent token");
            None
        }
    };
    // The token decides which workspace the agent serves and what is known of it (its owner above all): a token
    // taken from one workspace must not let its holder stand in for another one's agent.
    let admitted = match &token {
        Some(token) => token.admits(&hello.workspace),
        None => Err(AgentRefusal::Invalid),
    };
    if let Err(refusal) = admitted {
        tracing::info!(workspace = hello.workspace, %refusal, "agent refused");
        let close = match refusal {
            AgentRefusal::Invalid => (agent_close::TOKEN_REFUSED, "agent token refused"),
            AgentRefusal::Unbound | AgentRefusal::OtherWorkspace => {
                (agent_close::WORKSPACE_FORBIDDEN, "the agent token does not serve this workspace")
            }
        };
        socket.close(Some(close), CLOSE_LINGER).await;
        return;
    }
    let tags = token.unwrap_or_default().tags_for(hello.tags);
    let (conn, mut frames) = match relay.hub.register(&hello.workspace, tags) {
        Ok(registered) => registered,
        Err(error) => {
            tracing::info!(%error, "agent refused");
            socket.close(Some((agent_close::WORKSPACE_TAKEN, "workspace taken")), CLOSE_LINGER).await;
            return;
        }
    };
    tracing::info!(agent = conn.id, workspace = conn.workspace, "agent connected");
    let _home = relay.set_home(&conn.id);
    let welcome = serde_json::to_string(&Welcome { agent: conn.id.clone() }).unwrap_or_default();
    if socket.text(&welcome).await.is_err() {
        relay.hub.unregister(&conn);
        return;
    }
    // The writer sends what the hub queues for the agent, gathering the frames already queued into one vectored
    // write: headers are encoded side by side, `Data` payloads are written from where they are (not copied).
    let sender = socket.sender();
    let writer = actix_web::rt::spawn(async move {
        let mut batch: Vec<Frame> = Vec::new();
        let mut headers: Vec<u8> = Vec::new();
        while let Some(frame) = frames.recv().await {
            batch.push(frame);
            let mut size = 0;
            while size < AGENT_WRITE_BATCH && batch.len() < AGENT_WRITE_FRAMES {
                match frames.try_recv() {
                    Ok(frame) => {
                        size += frame_size(&frame);
                        batch.push(frame);
                    }
                    Err(_) => break,
                }
            }
            // Where each frame's header ends in `headers`, and its payload if it is written separately.
            let mut ends = Vec::with_capacity(batch.len());
            for frame in &batch {
                match frame {
                    Frame::Data { session, bytes } => {
                        ws::encode_binary_header(&mut headers, 5 + bytes.len());
                        headers.push(0x03);
                        headers.extend_from_slice(&session.to_be_bytes());
                        ends.push((headers.len(), Some(bytes.as_slice())));
                    }
                    frame => {
                        ws::encode_binary(&mut headers, &[&frame.encode()]);
                        ends.push((headers.len(), None));
                    }
                }
            }
            let mut slices = Vec::with_capacity(batch.len() * 2);
            let mut from = 0;
            for (end, payload) in ends {
                slices.push(IoSlice::new(&headers[from..end]));
                if let Some(payload) = payload {
                    slices.push(IoSlice::new(payload));
                }
                from = end;
            }
            let written = sender.write_slices(&mut slices).await;
            drop(slices);
            batch.clear();
            headers.clear();
            if written.is_err() {
                break;
            }
        }
    });
    let mut revoked = false;
    let close = loop {
        tokio::select! {
            _ = watch.revoked.cancelled() => {
                revoked = true;
                break Some((agent_close::TOKEN_REFUSED, "agent token revoked"));
            }
            message = socket.recv() => match message {
                Ok(Some(Message::Binary(bytes))) => {
                    let outcome = Frame::decode(&bytes).and_then(|frame| conn.handle_frame(frame));
                    if let Err(error) = outcome {
                        tracing::warn!(agent = conn.id, %error, "agent broke the protocol");
                        break Some((agent_close::PROTOCOL_ERROR, "protocol error"));
                    }
                }
                Ok(Some(Message::Ping(bytes))) => {
                    let _ = socket.pong(&bytes).await;
                }
                Ok(Some(Message::Close(_))) | Ok(None) => break None,
                Ok(Some(_)) => {}
                Err(error) => {
                    tracing::warn!(agent = conn.id, %error, "agent connection failed");
                    break error.close_code().map(|code| (code, "protocol error"));
                }
            },
            _ = relay.agents_shutdown.cancelled() => break Some((agent_close::GOING_AWAY, "shutting down")),
        }
    };
    drop(watch);
    if revoked {
        relay.hub.unregister_revoked(&conn);
        tracing::info!(agent = conn.id, workspace = conn.workspace, "agent disconnected: its token was revoked");
    } else {
        relay.hub.unregister(&conn);
        tracing::info!(agent = conn.id, workspace = conn.workspace, "agent disconnected");
    }
    writer.abort();
    let _ = writer.await;
    socket.close(close, CLOSE_LINGER).await;
}

/// What the terminal endpoint learnt from the upgrade request.
struct BrowserContext {
    workspace: String,
    address: Option<IpAddr>,
    user_agent: String,
}

/// A terminal session that is open: recorded, and its agent has started the shell.
struct OpenSession {
    session_id: String,
    user: Email,
    metadata: EventMetadata,
    handle: SessionHandle,
}

/// A close code and reason for a connection that ends.
type Close = Option<(u16, &'static str)>;

fn refuse(code: CloseCode, text: &'static str) -> Close {
    Some((code.code(), text))
}

async fn browser_session(relay: Arc<Relay>, context: BrowserContext, mut socket: WebSocket) {
    // Opening takes store commands and SQL whose futures are large: boxed, they live on the heap only while they
    // run.
    match Box::pin(open_session(&relay, &context, &mut socket)).await {
        // A task of its own: it is what stays alive for every open session, so it carries nothing from the
        // handshake and the opening (spawned from this one, it lands on the same worker).
        Ok(open) => serve_where_the_agent_is(relay, context, socket, open),
        Err(close) => Box::pin(socket.close(close, CLOSE_LINGER)).await,
    }
}

/// Authenticates the browser with its ticket, checks the firewall and the limits, and opens the session on the
/// workspace's agent; the close to answer with when any of it fails.
async fn open_session(relay: &Relay, context: &BrowserContext, socket: &mut WebSocket) -> Result<OpenSession, Close> {
    let first = tokio::time::timeout(relay.limits.auth_timeout, socket.recv()).await;
    let ticket = match first {
        Err(_) => Err(refuse(CloseCode::IdleTimeout, "no auth message in time")),
        Ok(Ok(Some(Message::Text(text)))) => match ClientMessage::parse(&text) {
            Ok(ClientMessage::Auth { ticket }) => Ok(ticket),
            Ok(_) => Err(refuse(CloseCode::TicketRequired, "auth first")),
            Err(error) => Err(refuse(error.close_code(), "bad control message")),
        },
        Ok(Err(error)) => Err(error.close_code().map(|code| (code, "bad frame"))),
        Ok(Ok(_)) => Err(refuse(CloseCode::TicketRequired, "auth first")),
    };
    let ticket = ticket?;
    // The firewall first: a blocked client must not spend the ticket (it stays usable from an allowed address
    // until it expires). The block is recorded with the user the ticket was issued to, read without redeeming it.
    if blocked(relay, context.address, &context.workspace, || ticket_user(relay, &ticket)).await {
        return Err(refuse(CloseCode::Firewall, "refused by the firewall"));
    }
    let user = match redeem(relay, &ticket, &context.workspace, context.address).await {
        Some(user) => user,
        None => {
            return Err(refuse(CloseCode::TicketRefused, "ticket refused"));
        }
    };
    if relay.sessions_of(&user) >= relay.limits.max_sessions_per_user {
        return Err(refuse(CloseCode::TooManySessions, "too many sessions"));
    }
    let Some(agent) = relay.hub.get(&context.workspace) else {
        return Err(refuse(CloseCode::WorkspaceUnavailable, "no agent"));
    };
    let mut handle = agent.open_terminal(80, 24);
    match tokio::time::timeout(Duration::from_secs(10), handle.recv()).await {
        Ok(Some(ToBrowser::Opened)) => {}
        _ => {
            return Err(refuse(CloseCode::AgentLost, "the agent did not open the session"));
        }
    }
    let session_id = uuid::Uuid::new_v4().to_string();
    let metadata = EventMetadata::for_request(user.as_str(), session_id.clone());
    let open = SessionCommand::Open {
        session_id: session_id.clone(),
        user: user.clone(),
        workspace: context.workspace.clone(),
        agent: agent.id.clone(),
        client_ip: context.address.map(|address| address.to_string()).unwrap_or_default(),
        user_agent: context.user_agent.clone(),
    };
    if let Err(error) = relay.sessions.execute(&session_id, open, &metadata).await {
        tracing::warn!(%error, "cannot record a session");
        return Err(refuse(CloseCode::GoingAway, "cannot record the session"));
    }
    relay.session_opened(&session_id, &user);
    Ok(OpenSession { session_id, user, metadata, handle })
}

/// Spawns the session's relaying on the worker thread that serves its agent's connection, so that its bytes cross
/// no thread inside the gateway; the browser's connection moves there (taken off this worker's reactor, registered
/// with that one's). Measured: the gateway's CPU per GiB relayed fell from 1.3–2.1 s to 1.0–1.1 s
/// (docs/BENCHMARKS.md, "Run 8").
fn serve_where_the_agent_is(relay: Arc<Relay>, context: BrowserContext, socket: WebSocket, open: OpenSession) {
    match relay.home_of(&open.handle.agent().id) {
        Some((thread, runtime)) if thread != std::thread::current().id() => match socket.detach() {
            Ok(detached) => {
                runtime.spawn(async move {
                    match detached.attach() {
                        Ok(socket) => relay_session(relay, context, socket, open).await,
                        Err(error) => Box::pin(abandon(&relay, open, error)).await,
                    }
                });
            }
            Err(error) => drop(actix_web::rt::spawn(async move { Box::pin(abandon(&relay, open, error)).await })),
        },
        _ => drop(actix_web::rt::spawn(relay_session(relay, context, socket, open))),
    }
}

/// Ends a session whose connection could not be moved to its agent's worker (the socket is gone: the browser sees
/// the connection drop, as when the path to the agent is lost, and the session is recorded so).
async fn abandon(relay: &Relay, open: OpenSession, error: std::io::Error) {
    tracing::warn!(%error, session = open.session_id, "cannot move a terminal connection to its agent's worker");
    let OpenSession { session_id, metadata, mut handle, .. } = open;
    handle.close();
    let closed = SessionCommand::Close { bytes_in: 0, bytes_out: 0, duration_ms: 0, reason: CloseReason::AgentLost };
    if let Err(error) = relay.sessions.execute_retrying(&session_id, closed, &metadata, 3).await {
        tracing::warn!(%error, session = session_id, "cannot record a session's end");
    }
    relay.sessions.forget(&session_id);
    relay.session_ended(&session_id);
}

/// Relays an open session until it ends, then records its end.
async fn relay_session(relay: Arc<Relay>, context: BrowserContext, mut socket: WebSocket, open: OpenSession) {
    let OpenSession { session_id, user, metadata, mut handle } = open;
    tracing::info!(session = session_id, user = %user, workspace = context.workspace, "terminal session opened");
    let started = Instant::now();
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let ready = serde_json::to_string(&ServerMessage::Ready { session: session_id.clone() }).unwrap_or_default();
    let mut outcome = if socket.text(&ready).await.is_err() { Some((CloseReason::ClientClosed, None)) } else { None };
    let mut last_activity = tokio::time::Instant::now();
    let max_age = tokio::time::Instant::now() + relay.limits.max_age;
    // Keystrokes waiting for the agent's window. While some wait, the browser is not read (TCP pushes back on it)
    // but output keeps flowing, so a paste into a busy shell cannot deadlock the session.
    let mut pending: Vec<u8> = Vec::new();
    let input = handle.input();
    let mut inbox = Vec::new();
    let mut rules = relay.rules.subscribe();
    // The timers and the shutdown signal are created once, not on every pass of the loop: re-creating them
    // registered and removed two timer-wheel entries and a cancellation waiter for every frame relayed. The idle
    // timer is not pushed back on each frame either; when it fires early, it is re-armed at the real deadline.
    let idle = tokio::time::sleep_until(last_activity + relay.limits.idle_timeout);
    let age = tokio::time::sleep_until(max_age);
    let shutdown = relay.shutdown.cancelled();
    tokio::pin!(idle, age, shutdown);
    while outcome.is_none() {
        tokio::select! {
            sent = input.send_front(&mut pending), if !pending.is_empty() => match sent {
                Some(_) => {}
                None => outcome = Some(agent_gone(handle.departure())),
            },
            message = socket.recv(), if pending.is_empty() => match message {
                Ok(Some(Message::Binary(bytes))) => {
                    last_activity = tokio::time::Instant::now();
                    bytes_in += bytes.len() as u64;
                    pending = bytes;
                }
                Ok(Some(Message::Text(text))) => match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Resize { cols, rows }) => handle.resize(cols, rows),
                    Ok(ClientMessage::Ping {}) => {
                        let pong = serde_json::to_string(&ServerMessage::Pong).unwrap_or_default();
                        let _ = socket.text(&pong).await;
                    }
                    Ok(ClientMessage::Auth { .. }) => {
                        outcome = Some((CloseReason::ClientClosed, refuse(CloseCode::ProtocolError, "auth twice")));
                    }
                    Err(error) => {
                        outcome = Some((CloseReason::ClientClosed, refuse(error.close_code(), "bad control message")));
                    }
                },
                Ok(Some(Message::Ping(bytes))) => {
                    let _ = socket.pong(&bytes).await;
                }
                Ok(Some(Message::Close(_))) | Ok(None) => outcome = Some((CloseReason::ClientClosed, None)),
                Ok(Some(Message::Pong(_))) => {}
                Err(error) => {
                    let close = match &error {
                        ws::Error::TooLarge(_) => refuse(CloseCode::TooLarge, "frame too large"),
                        ws::Error::InvalidUtf8 => refuse(CloseCode::InvalidPayload, "text that is not UTF-8"),
                        ws::Error::Protocol(_) => refuse(CloseCode::ProtocolError, "protocol error"),
                        ws::Error::Io(_) => None,
                    };
                    outcome = Some((CloseReason::ClientClosed, close));
                }
            },
            received = handle.recv_many(&mut inbox, INBOX) => {
                if received == 0 {
                    outcome = Some(agent_gone(None));
                }
                // Taken, so that an idle session keeps no inbox capacity.
                let mut messages = std::mem::take(&mut inbox).into_iter().peekable();
                while outcome.is_none() {
                    let Some(message) = messages.next() else { break };
                    match message {
                        ToBrowser::Data(first) => {
                            // Output that piled up while the last write was going out leaves as one message, in one
                            // vectored write (the payloads are not copied).
                            last_activity = tokio::time::Instant::now();
                            let mut length = first.len();
                            let mut run = vec![first];
                            while let Some(ToBrowser::Data(next)) = messages.next_if(|message| {
                                matches!(message, ToBrowser::Data(next) if length + next.len() <= OUTPUT_MESSAGE)
                            }) {
                                length += next.len();
                                run.push(next);
                            }
                            let parts: Vec<&[u8]> = run.iter().map(Vec::as_slice).collect();
                            if socket.binary_parts(&parts).await.is_err() {
                                outcome = Some((CloseReason::ClientClosed, None));
                            } else {
                                bytes_out += length as u64;
                                handle.consumed(length);
                            }
                        }
                        ToBrowser::Exit(code) => {
                            let exit =
                                serde_json::to_string(&ServerMessage::Exit { code: Some(code) }).unwrap_or_default();
                            let _ = socket.text(&exit).await;
                        }
                        ToBrowser::Closed => outcome = Some((CloseReason::ClientClosed, Some((1000, "")))),
                        ToBrowser::Opened => {}
                        why @ (ToBrowser::AgentLost | ToBrowser::AgentRevoked) => outcome = Some(agent_gone(Some(why))),
                    }
                }
            }
            _ = &mut idle => {
                let deadline = last_activity + relay.limits.idle_timeout;
                if deadline <= tokio::time::Instant::now() {
                    outcome = Some((CloseReason::IdleTimeout, refuse(CloseCode::IdleTimeout, "idle timeout")));
                } else {
                    idle.as_mut().reset(deadline);
                }
            }
            _ = &mut age => {
                outcome = Some((CloseReason::MaxAge, refuse(CloseCode::MaxAge, "maximum session age")));
            }
            Ok(()) = rules.changed() => {
                if Box::pin(blocked(&relay, context.address, &context.workspace, || async { Some(user.clone()) })).await {
                    outcome = Some((CloseReason::Firewall, refuse(CloseCode::Firewall, "refused by the firewall")));
                }
            }
            _ = &mut shutdown => {
                outcome = Some((CloseReason::Shutdown, refuse(CloseCode::GoingAway, "shutting down")));
            }
        }
    }
    let (why, close) = outcome.unwrap_or((CloseReason::ClientClosed, None));
    handle.close();
    // The close frame goes out first; the session's end is recorded before waiting for the browser's answer, so a
    // browser that never answers (up to `CLOSE_LINGER`) neither delays the record nor counts against its user's
    // session limit meanwhile.
    let _ = socket.sender().close(close).await;
    let closed =
        SessionCommand::Close { bytes_in, bytes_out, duration_ms: started.elapsed().as_millis() as u64, reason: why };
    if let Err(error) = Box::pin(relay.sessions.execute_retrying(&session_id, closed, &metadata, 3)).await {
        tracing::warn!(%error, session = session_id, "cannot record a session's end");
    }
    // A closed session takes no more commands.
    relay.sessions.forget(&session_id);
    relay.session_ended(&session_id);
    tracing::info!(session = session_id, reason = why.as_str(), bytes_in, bytes_out, "terminal session closed");
    Box::pin(socket.linger(CLOSE_LINGER)).await;
}

/// How a session ends when its agent went away: revoked (its token was), else lost. Both close with 4410.
fn agent_gone(why: Option<ToBrowser>) -> (CloseReason, Option<(u16, &'static str)>) {
    if why == Some(ToBrowser::AgentRevoked) {
        (CloseReason::AgentRevoked, Some((CloseCode::AgentLost.code(), "agent token revoked")))
    } else {
        (CloseReason::AgentLost, Some((CloseCode::AgentLost.code(), "agent lost")))
    }
}
