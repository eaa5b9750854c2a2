//! The relay's two WebSocket endpoints on actix-ws (ADR 0014): the agent connection (`/api/v1/agent/connect`) and
//! the browser terminal (`/api/v1/workspaces/{id}/terminal`). The handshake is answered by actix-ws inside an
//! actix-web route; each connection is then served by a task of its own on the worker that accepted it. The rules
//! (tokens, tickets, the firewall, limits) are `relay::gateway::Gateway`'s; the multiplexing is `relay::hub`'s.

use std::net::IpAddr;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use actix_http::error::PayloadError;
use actix_http::ws::HandshakeError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{get, FromRequest, HttpRequest, HttpResponse, ResponseError};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseReason as WsClose, ProtocolError, Session};
use domain::relay::{AgentRefusal, CloseReason};
use futures::FutureExt;
use relay::agent::{close as agent_close, Hello, Welcome};
use relay::browser::{ClientMessage, CloseCode, ServerMessage};
use relay::gateway::{origin_allowed, sha256_hex, Gateway};
use relay::mux::Frame;
use relay::terminal::{AttachRefusal, Client, End, OpenError, Output, Viewer};

use crate::{AppState, Problem, ProblemCode};

/// A browser's output leaves in messages of up to this many bytes (what piled up while the last one was going out
/// leaves together). actix-ws queues up to 32 messages per connection before `Session::binary` waits, so a browser
/// that stops reading holds at most about 32 such messages in the gateway (2 MiB) besides its terminal's buffer.
const OUTPUT_MESSAGE: usize = 64 * 1024;
/// An agent connection handles up to this many frames that arrived together in one go.
const AGENT_BATCH: usize = 256;

/// A close code and reason for a connection that ends.
type Close = Option<(u16, &'static str)>;

fn refuse(code: CloseCode, text: &'static str) -> Close {
    Some((code.code(), text))
}

fn ws_close(close: Close) -> Option<WsClose> {
    close.map(|(code, text)| WsClose { code: code.into(), description: Some(text.to_string()) })
}

/// The close code for a WebSocket protocol error on a connection: a message over the limit is 1009, text that is
/// not UTF-8 1007, anything else RFC 6455 forbids 1002; a broken connection gets no close frame.
///
/// actix-http and actix-ws report some of these as I/O errors, told apart only by their kind and text (pinned by
/// `tests/relay.rs`, `hostile_websocket_clients_get_close_codes_and_stall_nothing`): text that is not UTF-8 and reserved
/// bits are `InvalidData` (the latter saying "reserved bits"), a fragmented message over the limit is `Other` saying
/// "maximum continuation size".
fn protocol_close(error: &ProtocolError) -> Close {
    match error {
        ProtocolError::Overflow => refuse(CloseCode::TooLarge, "message too large"),
        // More read than a message may take without one coming out (`Budgeted`).
        ProtocolError::Io(error)
            if error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<PayloadError>())
                .is_some_and(|inner| matches!(inner, PayloadError::Overflow)) =>
        {
            refuse(CloseCode::TooLarge, "message too large")
        }
        ProtocolError::Io(error) => {
            let text = error.to_string();
            match error.kind() {
                std::io::ErrorKind::InvalidData if text.contains("reserved bits") => {
                    refuse(CloseCode::ProtocolError, "protocol error")
                }
                std::io::ErrorKind::InvalidData => refuse(CloseCode::InvalidPayload, "text that is not UTF-8"),
                _ if text.contains("maximum continuation size") => refuse(CloseCode::TooLarge, "message too large"),
                _ => None,
            }
        }
        _ => refuse(CloseCode::ProtocolError, "protocol error"),
    }
}

/// A connection's messages, and the bytes it has read since it last received a whole message (its payload counts
/// them, every message resets the count).
///
/// actix-http decodes a frame only once all of it has arrived and checks `max_frame_size` then, and actix-ws keeps
/// everything read meanwhile: a client that declares a frame of a terabyte, or sends empty fragments without end,
/// would make the gateway buffer whatever it sends. The connection's payload stream therefore fails as soon as more
/// than the largest message (plus frame headers) has been read without a message coming out of it (close 1009).
struct Inbound {
    stream: AggregatedMessageStream,
    read: Arc<AtomicUsize>,
}

impl Inbound {
    /// The next message (cancel-safe, as actix-ws's `recv`); a whole message resets the count of bytes read.
    async fn recv(&mut self) -> Option<Result<AggregatedMessage, ProtocolError>> {
        let message = self.stream.recv().await;
        if matches!(message, Some(Ok(_))) {
            self.read.store(0, Ordering::Relaxed);
        }
        message
    }
}

/// The request's payload, failing with `PayloadError::Overflow` past `limit` bytes without a message.
struct Budgeted {
    inner: actix_web::dev::Payload,
    read: Arc<AtomicUsize>,
    limit: usize,
}

impl futures::Stream for Budgeted {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(bytes))) = &polled {
            if self.read.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len() > self.limit {
                return std::task::Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
        }
        polled
    }
}

/// Upgrades the request with actix-ws; a refused handshake is a problem (426 for another version, 400 otherwise).
async fn upgrade(
    request: &HttpRequest,
    body: web::Payload,
    max_message: usize,
) -> Result<(HttpResponse, Session, Inbound), Problem> {
    // RFC 6455 §4.1: the handshake is HTTP/1.1 (actix-ws would answer an HTTP/1.0 request with a 101).
    if request.version() != actix_web::http::Version::HTTP_11 {
        return Err(Problem::new(ProblemCode::InvalidRequest, "Not a WebSocket upgrade")
            .detail("A WebSocket is opened over HTTP/1.1."));
    }
    let read = Arc::new(AtomicUsize::new(0));
    // Room for the message and the headers of its fragments (a 64 KiB message in 1 KiB fragments: 64 × 14 bytes).
    let limit = max_message + max_message / 64 + 1024;
    let budgeted = Budgeted { inner: body.into_inner(), read: read.clone(), limit };
    let boxed: actix_http::BoxedPayloadStream = Box::pin(budgeted);
    let mut payload = actix_web::dev::Payload::Stream { payload: boxed };
    let body = web::Payload::from_request(request, &mut payload).await.map_err(|_| Problem::internal())?;
    let (response, session, stream) = actix_ws::handle(request, body).map_err(|error| {
        let refused =
            |detail: &str| Problem::new(ProblemCode::InvalidRequest, "Not a WebSocket upgrade").detail(detail);
        match error.as_error::<HandshakeError>() {
            Some(HandshakeError::UnsupportedVersion | HandshakeError::NoVersionHeader) => {
                Problem::new(ProblemCode::UpgradeRequired, "Not a WebSocket upgrade")
                    .detail("Only WebSocket version 13 is spoken (Sec-WebSocket-Version: 13).")
                    .header(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"))
            }
            Some(HandshakeError::BadWebsocketKey) => refused("Sec-WebSocket-Key must be the base64 of 16 bytes."),
            Some(HandshakeError::NoConnectionUpgrade) => refused("The Connection header must include \"Upgrade\"."),
            _ => refused(
                "This endpoint is a WebSocket: send GET with Connection: Upgrade, Upgrade: websocket, \
                 Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key.",
            ),
        }
    })?;
    let stream = stream.max_frame_size(max_message).aggregate_continuations().max_continuation_size(max_message);
    Ok((response, session, Inbound { stream, read }))
}

/// An agent's WebSocket, used by `gatehouse agent` (protocol and close codes: docs/API.md, "Agent WebSocket").
/// The first message is `{"type": "hello", "token", "workspace", "tags"}`; the token never travels in the URL.
#[utoipa::path(get, path = "/api/v1/agent/connect", tag = "relay",
    responses((status = 101, description = "Switching Protocols: the agent's multiplexed WebSocket"),
              (status = 400, body = Problem, description = "Not a WebSocket upgrade"),
              (status = 426, body = Problem, description = "A WebSocket version other than 13")))]
#[get("/api/v1/agent/connect")]
pub(crate) async fn agent_connect(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let gateway = state.gateway.clone();
    match upgrade(&request, body, gateway.limits.max_frame).await {
        Ok((response, session, stream)) => {
            actix_web::rt::spawn(agent_connection(gateway, session, stream));
            response
        }
        Err(problem) => problem.error_response(),
    }
}

async fn agent_connection(gateway: Arc<Gateway>, mut session: Session, mut stream: Inbound) {
    let first = tokio::time::timeout(gateway.limits.auth_timeout, stream.recv()).await;
    let hello = match first {
        Ok(Some(Ok(AggregatedMessage::Text(text)))) => Hello::parse(&text),
        Ok(Some(Err(error))) => {
            tracing::info!(%error, "agent refused: broke the WebSocket protocol before its hello");
            let _ = session.close(ws_close(protocol_close(&error))).await;
            return;
        }
        _ => None,
    };
    let Some(hello) = hello else {
        tracing::info!("agent refused: no hello");
        let _ = session.close(ws_close(Some((agent_close::HELLO_REQUIRED, "hello required")))).await;
        return;
    };
    let token_id = sha256_hex(&hello.token);
    let watch = gateway.watch_token(&token_id);
    // The token decides which workspace the agent serves and what is known of it (its owner above all): a token
    // taken from one workspace must not let its holder stand in for another one's agent.
    let features = hello.features.clone();
    let tags = match gateway.admit_agent(&token_id, &hello.workspace, hello.tags).await {
        Ok(tags) => tags,
        Err(refusal) => {
            tracing::info!(workspace = hello.workspace, %refusal, "agent refused");
            let close = match refusal {
                AgentRefusal::Invalid => (agent_close::TOKEN_REFUSED, "agent token refused"),
                AgentRefusal::Unbound | AgentRefusal::OtherWorkspace => {
                    (agent_close::WORKSPACE_FORBIDDEN, "the agent token does not serve this workspace")
                }
            };
            let _ = session.close(ws_close(Some(close))).await;
            return;
        }
    };
    let (conn, mut frames) = match gateway.hub.register_with(&hello.workspace, tags, features) {
        Ok(registered) => registered,
        Err(error) => {
            tracing::info!(%error, "agent refused");
            let _ = session.close(ws_close(Some((agent_close::WORKSPACE_TAKEN, "workspace taken")))).await;
            return;
        }
    };
    tracing::info!(agent = conn.id, workspace = conn.workspace, "agent connected");
    let welcome = serde_json::to_string(&Welcome { agent: conn.id.clone() }).unwrap_or_default();
    if session.text(welcome).await.is_err() {
        gateway.hub.unregister(&conn);
        return;
    }
    // The writer sends what the hub queues for the agent, one frame a message; actix-ws hands the messages queued
    // meanwhile to the connection in one write.
    let mut writer_session = session.clone();
    let writer = actix_web::rt::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if writer_session.binary(frame.encode()).await.is_err() {
                break;
            }
        }
    });
    let mut revoked = false;
    // A message taken while gathering frames that arrived together, to be handled next.
    let mut ahead = None;
    let close = loop {
        let message = match ahead.take() {
            Some(message) => message,
            None => tokio::select! {
                _ = watch.revoked.cancelled() => {
                    revoked = true;
                    break Some((agent_close::TOKEN_REFUSED, "agent token revoked"));
                }
                message = stream.recv() => message,
                _ = gateway.agents_shutdown.cancelled() => break Some((agent_close::GOING_AWAY, "shutting down")),
            },
        };
        match message {
            Some(Ok(AggregatedMessage::Binary(first))) => {
                // The frames that arrived with this one are handled together, so output the agent wrote at once
                // reaches its browser as one message.
                let mut frames = vec![Frame::decode(&first)];
                while frames.len() < AGENT_BATCH {
                    match stream.recv().now_or_never() {
                        Some(Some(Ok(AggregatedMessage::Binary(bytes)))) => frames.push(Frame::decode(&bytes)),
                        Some(other) => {
                            ahead = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                let outcome =
                    frames.into_iter().collect::<Result<Vec<_>, _>>().and_then(|frames| conn.handle_frames(frames));
                if let Err(error) = outcome {
                    tracing::warn!(agent = conn.id, %error, "agent broke the protocol");
                    break Some((agent_close::PROTOCOL_ERROR, "protocol error"));
                }
            }
            Some(Ok(AggregatedMessage::Ping(bytes))) => {
                let _ = session.pong(&bytes).await;
            }
            Some(Ok(AggregatedMessage::Close(_))) | None => break None,
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                tracing::warn!(agent = conn.id, %error, "agent connection failed");
                break protocol_close(&error);
            }
        }
    };
    drop(watch);
    if revoked {
        gateway.hub.unregister_revoked(&conn);
        tracing::info!(agent = conn.id, workspace = conn.workspace, "agent disconnected: its token was revoked");
    } else {
        gateway.hub.unregister(&conn);
        tracing::info!(agent = conn.id, workspace = conn.workspace, "agent disconnected");
    }
    writer.abort();
    let _ = writer.await;
    let _ = session.close(ws_close(close)).await;
}

/// A browser's terminal WebSocket (protocol and close codes: docs/API.md, "Terminal WebSocket"). The first
/// message is `{"type": "auth", "ticket"}` with a ticket from `POST /api/v1/workspaces/{id}/tickets`; tickets never
/// travel in the URL.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/terminal", tag = "relay",
    params(("id" = String, Path, description = "The workspace")),
    responses((status = 101, description = "Switching Protocols: the terminal WebSocket"),
              (status = 400, body = Problem, description = "Not a WebSocket upgrade"),
              (status = 403, body = Problem, description = "The Origin may not open terminals"),
              (status = 422, body = Problem, description = "A workspace id holding NUL"),
              (status = 426, body = Problem, description = "A WebSocket version other than 13")))]
#[get("/api/v1/workspaces/{id}/terminal")]
pub(crate) async fn terminal(
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let gateway = state.gateway.clone();
    let text = |name: header::HeaderName| request.headers().get(name).and_then(|value| value.to_str().ok());
    let workspace = path.into_inner();
    if let Err(problem) = crate::extract::refuse_nul("id", &workspace) {
        return problem.error_response();
    }
    if !origin_allowed(text(header::ORIGIN), text(header::HOST), &gateway.limits.allowed_origins) {
        return Problem::new(ProblemCode::Forbidden, "Forbidden")
            .detail("This origin may not open terminals.")
            .error_response();
    }
    let address = crate::limits::client_address(&request, &gateway.limits.trusted_proxies);
    let user_agent = text(header::USER_AGENT).unwrap_or_default().chars().take(256).collect::<String>();
    let context = BrowserContext { workspace, address, user_agent };
    match upgrade(&request, body, gateway.limits.max_frame).await {
        Ok((response, session, stream)) => {
            actix_web::rt::spawn(browser_session(gateway, context, session, stream));
            response
        }
        Err(problem) => problem.error_response(),
    }
}

/// What the terminal endpoint learnt from the upgrade request.
struct BrowserContext {
    workspace: String,
    address: Option<IpAddr>,
    user_agent: String,
}

async fn browser_session(gateway: Arc<Gateway>, context: BrowserContext, session: Session, mut stream: Inbound) {
    // Opening takes store commands and SQL whose futures are large: boxed, they live on the heap only while they
    // run, and an open session's task carries only its relaying loop.
    match Box::pin(attach(&gateway, &context, &mut stream)).await {
        Ok(viewer) => relay_session(gateway, context, session, stream, viewer).await,
        Err(close) => {
            let _ = session.close(ws_close(close)).await;
        }
    }
}

/// Authenticates the browser with its ticket, checks the firewall and the limits, and opens a new terminal on the
/// workspace's agent or attaches to the open one `auth` names; the close to answer with when any of it fails.
async fn attach(gateway: &Arc<Gateway>, context: &BrowserContext, stream: &mut Inbound) -> Result<Viewer, Close> {
    let first = tokio::time::timeout(gateway.limits.auth_timeout, stream.recv()).await;
    let auth = match first {
        Err(_) => Err(refuse(CloseCode::IdleTimeout, "no auth message in time")),
        Ok(Some(Ok(AggregatedMessage::Text(text)))) => match ClientMessage::parse(&text) {
            Ok(ClientMessage::Auth { ticket, session, offset }) => Ok((ticket, session, offset.unwrap_or(0))),
            Ok(_) => Err(refuse(CloseCode::TicketRequired, "auth first")),
            Err(error) => Err(refuse(error.close_code(), "bad control message")),
        },
        Ok(Some(Err(error))) => Err(protocol_close(&error)),
        Ok(None) => Err(None),
        Ok(Some(Ok(_))) => Err(refuse(CloseCode::TicketRequired, "auth first")),
    };
    let (ticket, resume, offset) = auth?;
    // The firewall first: a blocked client must not spend the ticket (it stays usable from an allowed address
    // until it expires). The block is recorded with the user the ticket was issued to, read without redeeming it.
    if gateway.blocked(context.address, &context.workspace, || gateway.ticket_user(&ticket)).await {
        return Err(refuse(CloseCode::Firewall, "refused by the firewall"));
    }
    let Some(user) = gateway.redeem(&ticket, &context.workspace, context.address).await else {
        return Err(refuse(CloseCode::TicketRefused, "ticket refused"));
    };
    let client = Client {
        user,
        workspace: context.workspace.clone(),
        client_ip: context.address.map(|address| address.to_string()).unwrap_or_default(),
        user_agent: context.user_agent.clone(),
    };
    if let Some(session_id) = resume {
        return gateway.resume_terminal(&session_id, offset, &client).await.map_err(|refusal| {
            tracing::info!(session = session_id, user = %client.user, %refusal, "resume refused");
            match refusal {
                AttachRefusal::NoSuchSession => refuse(CloseCode::NoSuchSession, "no such open session"),
                AttachRefusal::BadOffset => refuse(CloseCode::BadOffset, "offset past the output sent"),
                AttachRefusal::TooManyViewers => refuse(CloseCode::TooManyViewers, "too many browsers"),
            }
        });
    }
    if gateway.sessions_of(&client.user) >= gateway.limits.max_sessions_per_user {
        return Err(refuse(CloseCode::TooManySessions, "too many sessions"));
    }
    let Some(agent) = gateway.hub.get(&context.workspace) else {
        return Err(refuse(CloseCode::WorkspaceUnavailable, "no agent"));
    };
    gateway.open_terminal(&agent, &client, 80, 24).await.map_err(|error| match error {
        OpenError::AgentDidNotOpen => refuse(CloseCode::AgentLost, "the agent did not open the session"),
        OpenError::NotRecorded => refuse(CloseCode::GoingAway, "cannot record the session"),
    })
}

/// Relays one browser's socket to its terminal until either ends. The browser closing with 1000, or breaking the
/// protocol, ends the session for good; any other end of the socket (another close code, none, a dropped
/// connection) detaches it, and the terminal waits for a browser to resume it.
async fn relay_session(
    gateway: Arc<Gateway>,
    context: BrowserContext,
    mut session: Session,
    mut stream: Inbound,
    mut viewer: Viewer,
) {
    let held = viewer.terminal().clone();
    let client_ip = context.address.map(|address| address.to_string()).unwrap_or_default();
    tracing::info!(session = held.id, user = %held.user, workspace = context.workspace, offset = viewer.offset(),
        "browser attached to its terminal session");
    let ready = ServerMessage::Ready { session: held.id.clone(), offset: viewer.offset() };
    let mut sent = session.text(serde_json::to_string(&ready).unwrap_or_default()).await.is_ok();
    if let Some(requested) = viewer.skipped_from().filter(|_| sent) {
        let behind = ServerMessage::TooFarBehind { requested, offset: viewer.offset() };
        sent = session.text(serde_json::to_string(&behind).unwrap_or_default()).await.is_ok();
    }
    // How this socket ends: `Ok(close)` ends the session (the terminal closes every socket itself), `Err((close,
    // why))` detaches this browser, closing its socket with `close` (`why` ends the session if it was the last).
    let mut outcome: Option<Result<Close, (Close, Option<End>)>> = (!sent).then_some(Err((None, None)));
    // Keystrokes waiting for the agent's window. While some wait, the browser is not read (TCP pushes back on it)
    // but output keeps flowing, so a paste into a busy shell cannot deadlock the session.
    let mut pending: Vec<u8> = Vec::new();
    let input = viewer.input();
    let mut rules = gateway.rules();
    while outcome.is_none() {
        tokio::select! {
            sent = input.send_front(&mut pending), if !pending.is_empty() => {
                if sent.is_none() {
                    // The agent's session is gone: the terminal's end says why.
                    pending.clear();
                }
            }
            message = stream.recv(), if pending.is_empty() => match message {
                Some(Ok(AggregatedMessage::Binary(bytes))) => {
                    viewer.typed(bytes.len());
                    pending = bytes.to_vec();
                }
                Some(Ok(AggregatedMessage::Text(text))) => match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Resize { cols, rows }) => viewer.resize(cols, rows),
                    Ok(ClientMessage::Ack { offset }) => viewer.acknowledge(offset),
                    Ok(ClientMessage::Ping {}) => {
                        let pong = serde_json::to_string(&ServerMessage::Pong).unwrap_or_default();
                        let _ = session.text(pong).await;
                    }
                    Ok(ClientMessage::Auth { .. }) => outcome = Some(Ok(broken(&held, refuse(CloseCode::ProtocolError, "auth twice")))),
                    Err(error) => outcome = Some(Ok(broken(&held, refuse(error.close_code(), "bad control message")))),
                },
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    let _ = session.pong(&bytes).await;
                }
                Some(Ok(AggregatedMessage::Close(reason))) => {
                    if reason.as_ref().is_some_and(|reason| u16::from(reason.code) == 1000) {
                        held.end(End { reason: CloseReason::ClientClosed, close: (1000, ""), drain: false });
                        outcome = Some(Ok(Some((1000, ""))));
                    } else {
                        outcome = Some(Err((None, None)));
                    }
                }
                None => outcome = Some(Err((None, None))),
                Some(Ok(AggregatedMessage::Pong(_))) => {}
                Some(Err(error)) => {
                    let close = protocol_close(&error);
                    // A socket that broke (no close code) is a dropped connection; a protocol error is not.
                    outcome = Some(if close.is_some() { Ok(broken(&held, close)) } else { Err((None, None)) });
                }
            },
            output = viewer.next(OUTPUT_MESSAGE) => match output {
                Output::Bytes(bytes) => {
                    let length = bytes.len();
                    if session.binary(bytes).await.is_err() {
                        outcome = Some(Err((None, None)));
                    } else {
                        viewer.received(length);
                    }
                }
                Output::Exit(code) => {
                    let exit = serde_json::to_string(&ServerMessage::Exit { code: Some(code) }).unwrap_or_default();
                    let _ = session.text(exit).await;
                }
                Output::Ended(end) => outcome = Some(Ok(Some(end.close))),
            },
            Ok(()) = rules.changed() => {
                if Box::pin(gateway.blocked(context.address, &context.workspace, || async { Some(held.user.clone()) })).await {
                    let end = End { reason: CloseReason::Firewall, close: (CloseCode::Firewall.code(), "refused by the firewall"), drain: false };
                    outcome = Some(Err((Some(end.close), Some(end))));
                }
            }
        }
    }
    // The loop ends only with an outcome.
    match outcome.unwrap_or(Err((None, None))) {
        Ok(close) => {
            drop(viewer);
            let _ = session.close(ws_close(close)).await;
        }
        Err((close, why)) => {
            // The close frame first, so that a browser that never answers it does not hold the record.
            let _ = session.close(ws_close(close)).await;
            Box::pin(gateway.detach_viewer(viewer, &client_ip, why)).await;
        }
    }
}

/// Ends a terminal whose browser broke the protocol (a client that does so is not one whose connection dropped);
/// the socket closes with `close`.
fn broken(held: &relay::terminal::Terminal, close: Close) -> Close {
    held.end(End { reason: CloseReason::ClientClosed, close: close.unwrap_or((1002, "protocol error")), drain: false });
    close
}
