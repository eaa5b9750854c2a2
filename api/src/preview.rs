//! Previews over HTTP (ADR 0026; docs/API.md, "Previews"): requests to a preview host
//! (`<label>--<port>.<preview_domain>`) are answered here and never reach the portal's routes.
//!
//! - `GET|POST /__gatehouse/preview/auth` with a one-time `preview` ticket exchanges it for a cookie scoped to this
//!   one host, and redirects to the app.
//! - Any other request is the app's: its cookie is looked up, the firewall and the user's access are checked (on
//!   every request), and the request goes through the workspace's agent to `127.0.0.1:<port>` inside the workspace,
//!   over a port-forward channel of the agent's own outbound connection, with hyper speaking HTTP/1.1 on it. Bodies
//!   stream both ways; an upgrade (a dev server's hot-reload WebSocket) becomes a byte pipe.
//!
//! The host comes from the request's `Host` (the request target's authority for HTTP/2), never from
//! `X-Forwarded-Host`: a forged header cannot reach a preview, nor make a preview request reach the portal.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody, SizedStream};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use domain::relay::CloseReason;
use domain::roster::Role;
use domain::Email;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, BodyStream, Empty, StreamBody};
use hyper_util::rt::TokioIo;
use relay::gateway::PreviewConnectError;
use relay::preview::{Lookup, PreviewSession, PreviewSessions, COOKIE};
use relay::terminal::Client;
use tokio::io::AsyncWriteExt;

use crate::{AppState, Problem, ProblemCode};

/// Where a ticket is exchanged for the preview cookie, on the preview host. Paths under `/__gatehouse/` are the
/// gateway's and never reach the app.
pub const AUTH_PATH: &str = "/__gatehouse/preview/auth";
const RESERVED: &str = "/__gatehouse/";
/// The cookie's name over TLS: `__Host-` makes browsers hold it to this host, `Secure` and `Path=/`.
const SECURE_COOKIE: &str = "__Host-gatehouse_preview";
/// The largest exchange form accepted (a ticket and a path).
const MAX_FORM: usize = 8 * 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded either way, and the proxy headers the gateway writes
/// itself (what a client sent of them is dropped, never believed).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];
const REWRITTEN: [&str; 5] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded", "x-real-ip"];

/// A request body towards the app: the browser's payload (which lives on its worker's thread) or nothing.
type ProxyBody = std::pin::Pin<Box<dyn hyper::body::Body<Data = Bytes, Error = std::io::Error>>>;

/// The middleware that answers preview hosts (mounted outermost, so the portal's CORS, security headers and routes
/// never apply to an app's responses). Any other host goes on to the portal.
pub async fn intercept<B: MessageBody + 'static>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let target = state.as_ref().and_then(|state| {
        let host = request_host(request.request())?;
        let (label, port) = state.gateway.preview_limits.parse_host(&host)?;
        Some(Target { label: label.to_ascii_lowercase(), port, host: host.to_ascii_lowercase() })
    });
    let (Some(state), Some(target)) = (state, target) else {
        return Ok(next.call(request).await?.map_into_left_body());
    };
    let (request, payload) = request.into_parts();
    let response = serve(&state, &request, payload, target).await;
    Ok(ServiceResponse::new(request, response).map_into_right_body())
}

/// The preview a request is for.
struct Target {
    /// The workspace's label, lower case.
    label: String,
    port: u16,
    /// The host, lower case, without the gateway's port.
    host: String,
}

/// The request's host: `Host`, else the request target's authority (HTTP/2); never `X-Forwarded-Host`. Without the
/// gateway's port.
fn request_host(request: &HttpRequest) -> Option<String> {
    let raw = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?.to_string(),
        None => request.uri().authority()?.as_str().to_string(),
    };
    let name = match raw.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => name,
        _ => raw.as_str(),
    };
    Some(name.strip_suffix('.').unwrap_or(name).to_string())
}

async fn serve(state: &AppState, request: &HttpRequest, payload: Payload, target: Target) -> HttpResponse {
    let html = wants_html(request);
    if !state.gateway.preview_limits.allows(target.port) {
        let limits = &state.gateway.preview_limits;
        return page(
            Problem::new(ProblemCode::NotFound, "Not found")
                .detail(format!("Previews show ports {} to {} only.", limits.min_port, limits.max_port)),
            html,
        );
    }
    if request.path() == AUTH_PATH {
        return exchange(state, request, payload, &target).await.unwrap_or_else(|problem| page(problem, html));
    }
    if request.path().starts_with(RESERVED) {
        return page(Problem::new(ProblemCode::NotFound, "Not found").detail("No such gateway path."), html);
    }
    proxy(state, request, payload, &target).await.unwrap_or_else(|problem| page(problem, html))
}

/// The client's address, as the terminal endpoints see it (`relay_trusted_proxies`).
fn client_ip(state: &AppState, request: &HttpRequest) -> Option<IpAddr> {
    crate::limits::client_address(request, &state.gateway.limits.trusted_proxies)
}

/// Whether `user` may preview `workspace` now: an admin, or a member who owns it (the control plane's owner for its
/// workspaces, else the agent token's `RDE_OWNER_EMAIL`). Asked on every request, so a demotion, a removal or a
/// change of owner takes effect at the next one. An agent-registered workspace whose agent is gone has no known
/// owner: 503 (the session stays, for when the agent is back).
async fn may_preview(state: &AppState, user: &Email, workspace: &str) -> Result<bool, Problem> {
    match crate::auth::role_of(state, user).await? {
        None => return Ok(false),
        Some(Role::Admin) => return Ok(true),
        Some(_) => {}
    }
    if let Some(known) = crate::workspaces::lookup(state, workspace).await? {
        return Ok(known.owner == *user);
    }
    let agent = state.gateway.hub.get(workspace).ok_or_else(agent_gone)?;
    Ok(relay::gateway::Gateway::may_open(&agent, user, false))
}

#[derive(serde::Deserialize)]
struct Exchange {
    ticket: String,
    #[serde(default)]
    next: Option<String>,
}

/// A ticket for the preview cookie: `GET ?ticket=…[&next=/path]` or a form `POST` of the same fields.
async fn exchange(
    state: &AppState,
    request: &HttpRequest,
    payload: Payload,
    target: &Target,
) -> Result<HttpResponse, Problem> {
    let form = match *request.method() {
        actix_web::http::Method::GET => request.query_string().to_string(),
        actix_web::http::Method::POST => read_form(payload).await?,
        _ => {
            return Err(Problem::new(ProblemCode::MethodNotAllowed, "Method not allowed")
                .detail("Exchange a preview ticket with GET or POST."))
        }
    };
    let Exchange { ticket, next } = serde_urlencoded::from_str::<Exchange>(&form)
        .map_err(|_| Problem::invalid_request("No ticket", "Send the preview ticket as `ticket`."))?;
    let next = match next {
        None => "/".to_string(),
        Some(next) if is_local_path(&next) => next,
        Some(_) => return Err(Problem::invalid_field("next", "next is a path on this host, starting with one `/`")),
    };
    let gateway = &state.gateway;
    let address = client_ip(state, request);
    // An address that presented too many bad tickets (or tokens) is refused before its ticket costs a store read.
    let client = crate::limits::ClientKey::of(address);
    state.limits.check_client(client).map_err(Problem::from)?;
    // The ticket's workspace, if its label is this host's (else the label stands in: the ticket is then refused as
    // foreign, and the refusal recorded).
    let workspace = gateway
        .ticket_workspace(&ticket)
        .await
        .filter(|workspace| relay::preview::label(workspace) == target.label)
        .unwrap_or_else(|| target.label.clone());
    // The firewall first: a blocked client does not spend the ticket.
    if gateway.blocked(address, &workspace, || gateway.ticket_user(&ticket)).await {
        return Err(Problem::new(ProblemCode::Forbidden, "Forbidden").detail("Refused by the IP firewall."));
    }
    let Some(user) = gateway.redeem_for(&ticket, &workspace, "preview", Some(target.port), address).await else {
        state.limits.record_auth_failure(client);
        return Err(Problem::new(ProblemCode::Unauthenticated, "Ticket refused")
            .detail("The preview ticket is unknown, used, expired, or for another preview: open the preview again."));
    };
    if !may_preview(state, &user, &workspace).await? {
        return Err(forbidden());
    }
    let Some(agent) = gateway.hub.get(&workspace) else { return Err(agent_gone()) };
    // A user's previews are bounded: the one least recently used makes room.
    while gateway.previews.of_user(&user) >= gateway.limits.max_sessions_per_user.max(1) {
        match gateway.previews.least_recent_of(&user) {
            Some(oldest) => gateway.end_preview(&oldest, CloseReason::ClientClosed).await,
            None => break,
        }
    }
    let client = Client {
        user,
        workspace,
        client_ip: address.map(|address| address.to_string()).unwrap_or_default(),
        user_agent: user_agent(request),
    };
    let (cookie, session) = gateway.start_preview(&agent, &client, target.port).await.map_err(|error| match error {
        relay::gateway::PreviewStartError::NotRecorded => Problem::new(ProblemCode::StoreUnavailable, "Unavailable")
            .detail("The preview session cannot be recorded now; retry."),
        relay::gateway::PreviewStartError::Random => Problem::internal(),
    })?;
    tracing::info!(session = session.id, user = %client.user, workspace = client.workspace, port = target.port,
        "preview session opened");
    let mut response = HttpResponse::SeeOther();
    response
        .insert_header((header::LOCATION, next))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header(preview_cookie(
            request,
            &cookie,
            PreviewSessions::cookie_lifetime(&session, &gateway.preview_limits),
        ));
    Ok(response.finish())
}

/// Whether the request comes from the preview's own origin, or is a navigation to it (the portal's frame, a link,
/// a typed address), as the browser's `Sec-Fetch-Site`/`-Mode` say. Previews of one domain are one *site*, so the
/// cookie's `SameSite=Lax` lets another preview's page send requests with it; this refuses them (a forged request
/// to the owner's app). A client that sends no `Sec-Fetch-Site` (not a browser, or an old one) is let through.
fn same_origin_or_navigation(request: &HttpRequest) -> bool {
    let text = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    match text("sec-fetch-site") {
        None | Some("same-origin") | Some("none") => true,
        Some(_) => {
            text("sec-fetch-mode") == Some("navigate")
                && matches!(*request.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD)
        }
    }
}

/// A path on this host: one leading `/`, no scheme or authority, nothing a browser would read as another host.
fn is_local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && path.len() <= 2048
        && !path.chars().any(char::is_control)
}

async fn read_form(mut payload: Payload) -> Result<String, Problem> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| Problem::invalid_request("Bad body", "The form could not be read."))?;
        if body.len() + chunk.len() > MAX_FORM {
            return Err(Problem::new(ProblemCode::PayloadTooLarge, "Payload too large")
                .detail(format!("The exchange form takes at most {MAX_FORM} bytes.")));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| Problem::invalid_request("Bad body", "The form is not UTF-8."))
}

fn user_agent(request: &HttpRequest) -> String {
    let raw = request.headers().get(header::USER_AGENT).and_then(|value| value.to_str().ok()).unwrap_or_default();
    raw.chars().take(256).collect()
}

/// The preview cookie: this host only, `HttpOnly`, `SameSite=Lax` (the portal's frame and links open it), `Secure`
/// and `__Host-` over TLS.
/// (The value is base64url: nothing in it needs quoting.)
fn preview_cookie(request: &HttpRequest, value: &str, lifetime: std::time::Duration) -> (HeaderName, String) {
    let secure = request.connection_info().scheme() == "https";
    let name = if secure { SECURE_COOKIE } else { COOKIE };
    let secure = if secure { "; Secure" } else { "" };
    let seconds = lifetime.as_secs();
    (header::SET_COOKIE, format!("{name}={value}; Path=/; Max-Age={seconds}; HttpOnly; SameSite=Lax{secure}"))
}

/// The preview cookie's value, under either name (the secure one first).
fn cookie_value(request: &HttpRequest) -> Option<String> {
    let mut plain = None;
    for header in request.headers().get_all(header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            let Some((name, value)) = pair.trim().split_once('=') else { continue };
            match name.trim() {
                SECURE_COOKIE => return Some(value.trim().to_string()),
                COOKIE => plain = plain.or_else(|| Some(value.trim().to_string())),
                _ => {}
            }
        }
    }
    plain
}

fn forbidden() -> Problem {
    Problem::new(ProblemCode::Forbidden, "Forbidden").detail("Only the workspace's owner or an admin may preview it.")
}

fn agent_gone() -> Problem {
    Problem::new(ProblemCode::WorkspaceUnavailable, "Workspace unavailable")
        .detail("The workspace's agent is not connected: start the workspace, or wait for it to reconnect.")
}

/// One request through to the app.
async fn proxy(
    state: &AppState,
    request: &HttpRequest,
    payload: Payload,
    target: &Target,
) -> Result<HttpResponse, Problem> {
    let gateway = &state.gateway;
    let unauthenticated = || {
        Problem::new(ProblemCode::Unauthenticated, "Preview sign-in required")
            .detail("Open this preview from the portal: its cookie is missing, expired or for another preview.")
    };
    let cookie = cookie_value(request).ok_or_else(unauthenticated)?;
    if !same_origin_or_navigation(request) {
        return Err(Problem::new(ProblemCode::Forbidden, "Cross-site request refused").detail(
            "A preview answers requests from its own pages, and navigations: not requests another site's \
             (or another preview's) page makes with its cookie.",
        ));
    }
    let (session, renew) = match gateway.previews.find(&cookie, &target.host, &gateway.preview_limits) {
        Lookup::Live { session, renew } => (session, renew),
        Lookup::Unknown | Lookup::OtherHost => return Err(unauthenticated()),
    };
    let address = client_ip(state, request);
    let user = session.user.clone();
    if gateway.blocked(address, &session.workspace, || async { Some(user) }).await {
        // The session ends: its later requests are refused as unknown, without recording each.
        end(gateway, &session, CloseReason::Firewall).await;
        return Err(Problem::new(ProblemCode::Forbidden, "Forbidden").detail("Refused by the IP firewall."));
    }
    if !may_preview(state, &session.user, &session.workspace).await? {
        end(gateway, &session, CloseReason::AccessRevoked).await;
        return Err(forbidden());
    }
    let agent = gateway.hub.get(&session.workspace).ok_or_else(agent_gone)?;
    // At most MAX_CONNECTIONS requests of one preview at once (a browser opens 6 per host): each holds up to a
    // window of the app's output in the gateway. The permit lives as long as the response (or the upgraded pipe).
    let waited =
        tokio::time::timeout(gateway.preview_limits.response_timeout, session.connections.clone().acquire_owned())
            .await;
    let permit = waited
        .map_err(|_| {
            Problem::new(ProblemCode::PreviewTimeout, "Too many requests at once")
                .detail("This preview has as many requests in flight as it may, and none finished in time.")
        })?
        .map_err(|_| unauthenticated())?;
    let upgrade = is_upgrade(request);
    // A connection to the app left idle by an earlier request of this preview, else a new one (an upgrade always
    // gets its own: it is never given back).
    let pooled = if upgrade { None } else { take_idle(&session.id) };
    let mut sender = match pooled {
        Some(sender) => sender,
        None => connect_app(gateway, &agent, &session, target.port).await?,
    };
    let forwarded = forward_request(request, &target.host, address, upgrade)?;
    // An upgrade's payload is what the browser sends once the protocol switched: it goes through the upgraded pipe.
    let (body, mut after_upgrade): (ProxyBody, _) = if upgrade || !has_body(request) {
        (Box::pin(Empty::new().map_err(|never| match never {})), Some(payload))
    } else {
        let stream = payload.map_ok(hyper::body::Frame::data).map_err(|error| std::io::Error::other(error.to_string()));
        (Box::pin(StreamBody::new(stream)), None)
    };
    let upstream = forwarded.body(body).map_err(|_| Problem::invalid_request("Bad request", "Not a request."))?;
    let sent = async {
        match sender.try_send_request(upstream).await {
            // A pooled connection the app had closed meanwhile: the request was not sent; once more on a new one.
            Err(mut error) if error.error().is_canceled() || error.error().is_closed() => match error.take_message() {
                Some(again) => {
                    sender = connect_app(gateway, &agent, &session, target.port).await?;
                    Ok(sender.send_request(again).await)
                }
                None => Ok(Err(error.into_error())),
            },
            sent => Ok(sent.map_err(|error| error.into_error())),
        }
    };
    let sent = tokio::time::timeout(gateway.preview_limits.response_timeout, sent).await;
    let sent = match sent {
        Ok(Err(problem)) => return Err(problem),
        Ok(Ok(answer)) => Ok(answer),
        Err(elapsed) => Err(elapsed),
    };
    let mut response = match sent {
        Err(_) => {
            tracing::info!(session = session.id, port = target.port, "the preview's app did not answer in time");
            return Err(Problem::new(ProblemCode::PreviewTimeout, "No answer").detail(format!(
                "The app on port {} did not answer within {} seconds.",
                target.port,
                gateway.preview_limits.response_timeout.as_secs()
            )));
        }
        Ok(Err(error)) => {
            tracing::info!(session = session.id, port = target.port, %error, "the preview's app answered no HTTP");
            return Err(unreachable_app(target.port));
        }
        Ok(Ok(response)) => response,
    };
    let mut answer = HttpResponse::build(
        StatusCode::from_u16(response.status().as_u16()).map_err(|_| unreachable_app(target.port))?,
    );
    let switching = response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
    let mut length = None;
    for (name, value) in response.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower) {
            continue;
        }
        if lower == "content-length" {
            length = value.to_str().ok().and_then(|raw| raw.parse::<u64>().ok());
            continue;
        }
        let value = if lower == "set-cookie" {
            match app_cookie(value.as_bytes()) {
                Some(value) => value,
                None => continue,
            }
        } else {
            value.as_bytes().to_vec()
        };
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(&value)) {
            answer.append_header((name, value));
        }
    }
    if renew {
        answer.append_header(preview_cookie(
            request,
            &cookie,
            PreviewSessions::cookie_lifetime(&session, &gateway.preview_limits),
        ));
    }
    if switching {
        let protocol = response.headers().get(hyper::header::UPGRADE).and_then(|value| value.to_str().ok());
        answer.upgrade(protocol.unwrap_or("websocket").to_string());
        let upgraded = hyper::upgrade::on(&mut response).await.map_err(|_| unreachable_app(target.port))?;
        let (reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let mut payload = after_upgrade.take().ok_or_else(|| unreachable_app(target.port))?;
        actix_web::rt::spawn(async move {
            while let Some(Ok(chunk)) = payload.next().await {
                if writer.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let output = tokio_util::io::ReaderStream::new(reader).map(move |chunk| {
            let _held = &permit;
            chunk
        });
        return Ok(answer.streaming(output));
    }
    // Once the app's answer is read to its end, its connection serves the preview's next request.
    let session_id = session.id.clone();
    let give_back = futures::stream::once(async move { give_back(session_id, sender) }).filter_map(|()| async { None });
    let stream = BodyStream::new(response.into_body()).filter_map(move |frame| {
        let _held = &permit;
        async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(error) => Some(Err(std::io::Error::other(error.to_string()))),
            }
        }
    });
    let stream = stream.chain(give_back);
    Ok(match length {
        Some(length) => answer.body(SizedStream::new(length, stream)),
        None => answer.streaming(stream),
    })
}

/// A hyper connection to the app on the workspace's `port`, through a new channel of its agent.
async fn connect_app(
    gateway: &relay::gateway::Gateway,
    agent: &Arc<relay::hub::AgentConn>,
    session: &PreviewSession,
    port: u16,
) -> Result<AppSender, Problem> {
    let channel =
        gateway.connect_preview(agent, port, session.counters.clone()).await.map_err(|error| match error {
            PreviewConnectError::NothingListens => Problem::new(ProblemCode::PreviewUnreachable, "Nothing listens")
                .detail(format!("Nothing listens on port {port} inside the workspace: start the app.")),
            PreviewConnectError::AgentLost => agent_gone(),
            PreviewConnectError::AgentTooOld => Problem::new(ProblemCode::WorkspaceUnavailable, "Agent outdated")
                .detail("The workspace's agent is too old to forward ports: restart the workspace."),
            PreviewConnectError::NoAnswer => Problem::new(ProblemCode::PreviewTimeout, "No answer")
                .detail("The workspace's agent did not reach the port in time."),
        })?;
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(channel))
        .await
        .map_err(|_| unreachable_app(port))?;
    actix_web::rt::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "preview connection to the app ended");
        }
    });
    Ok(sender)
}

/// A connection to an app, ready for a request.
type AppSender = hyper::client::conn::http1::SendRequest<ProxyBody>;

/// Idle connections kept per preview session on one worker thread, and for how long.
const IDLE_CONNECTIONS: usize = 32;
const IDLE_TIME: std::time::Duration = std::time::Duration::from_secs(15);

thread_local! {
    /// Connections to apps left idle, by preview session, on this worker thread (a sender carries the browser's
    /// payload type, which lives on its worker's thread). Each entry has an id its expiry timer removes it by.
    static IDLE: std::cell::RefCell<std::collections::HashMap<String, Vec<(u64, AppSender)>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static NEXT_IDLE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn take_idle(session: &str) -> Option<AppSender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(session)?;
        let found = std::iter::from_fn(|| list.pop()).map(|(_, sender)| sender).find(AppSender::is_ready);
        if list.is_empty() {
            idle.remove(session);
        }
        found
    })
}

/// Keeps `sender` for the session's next request, for [`IDLE_TIME`] (dropping it closes the channel and the app's
/// connection).
fn give_back(session: String, sender: AppSender) {
    if !sender.is_ready() {
        return;
    }
    let id = NEXT_IDLE.with(|next| next.replace(next.get() + 1));
    let kept = IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(session.clone()).or_default();
        (list.len() < IDLE_CONNECTIONS).then(|| list.push((id, sender))).is_some()
    });
    if kept {
        actix_web::rt::spawn(async move {
            tokio::time::sleep(IDLE_TIME).await;
            IDLE.with(|idle| {
                let mut idle = idle.borrow_mut();
                if let Some(list) = idle.get_mut(&session) {
                    list.retain(|(kept, _)| *kept != id);
                    if list.is_empty() {
                        idle.remove(&session);
                    }
                }
            });
        });
    }
}

fn unreachable_app(port: u16) -> Problem {
    Problem::new(ProblemCode::PreviewUnreachable, "Bad gateway")
        .detail(format!("The app on port {port} did not answer with HTTP."))
}

async fn end(gateway: &relay::gateway::Gateway, session: &Arc<PreviewSession>, reason: CloseReason) {
    if let Some(ended) = gateway.previews.end(&session.id) {
        gateway.end_preview(&ended, reason).await;
    }
}

fn is_upgrade(request: &HttpRequest) -> bool {
    let connection = request.headers().get_all(header::CONNECTION).filter_map(|value| value.to_str().ok());
    request.headers().contains_key(header::UPGRADE)
        && connection.flat_map(|value| value.split(',')).any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn has_body(request: &HttpRequest) -> bool {
    request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|raw| raw.trim() != "0")
}

/// The request as the app gets it: its method, path and headers, less the hop-by-hop ones (and those `Connection`
/// names), the portal's credentials (`Authorization`, the preview cookie) and any proxy header the client wrote;
/// with `X-Forwarded-For`, `-Host` and `-Proto` written by the gateway.
fn forward_request(
    request: &HttpRequest,
    host: &str,
    address: Option<IpAddr>,
    upgrade: bool,
) -> Result<hyper::http::request::Builder, Problem> {
    let named: Vec<String> = request
        .headers()
        .get_all(header::CONNECTION)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect();
    let target = request.uri().path_and_query().map(|path| path.as_str()).unwrap_or("/");
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::from_bytes(request.method().as_str().as_bytes()).map_err(|_| bad_method())?)
        .uri(target);
    for (name, value) in request.headers() {
        let lower = name.as_str();
        if HOP_BY_HOP.contains(&lower)
            || REWRITTEN.contains(&lower)
            || lower == "authorization"
            || named.iter().any(|token| token == lower)
        {
            continue;
        }
        if lower == "cookie" {
            if let Some(cookies) = app_cookies(value.as_bytes()) {
                builder = builder.header("cookie", cookies);
            }
            continue;
        }
        builder = builder.header(lower, value.as_bytes());
    }
    if upgrade {
        if let Some(protocol) = request.headers().get(header::UPGRADE) {
            builder = builder.header("connection", "upgrade").header("upgrade", protocol.as_bytes());
        }
    }
    if let Some(address) = address {
        builder = builder.header("x-forwarded-for", address.to_string());
    }
    let scheme = if request.connection_info().scheme() == "https" { "https" } else { "http" };
    Ok(builder.header("x-forwarded-host", host).header("x-forwarded-proto", scheme))
}

fn bad_method() -> Problem {
    Problem::invalid_request("Bad method", "The method is not one HTTP allows.")
}

/// The `Cookie` header without the preview cookie (the app never sees the gateway's credential); `None` when
/// nothing is left.
fn app_cookies(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?;
    let kept: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map(|(name, _)| name).unwrap_or(pair).trim();
            name != COOKIE && name != SECURE_COOKIE
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; ").into_bytes())
}

/// An app's `Set-Cookie`, made host-only (its `Domain` attribute dropped, so the app cannot set cookies on the
/// portal's parent domain), or `None` for one naming the preview cookie.
fn app_cookie(raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.split(';');
    let pair = parts.next()?.trim();
    let name = pair.split_once('=').map(|(name, _)| name).unwrap_or(pair).trim();
    if name == COOKIE || name == SECURE_COOKIE {
        return None;
    }
    let mut out = pair.to_string();
    for attribute in parts {
        let attribute = attribute.trim();
        let key = attribute.split_once('=').map(|(key, _)| key).unwrap_or(attribute).trim();
        if !key.eq_ignore_ascii_case("domain") && !attribute.is_empty() {
            out.push_str("; ");
            out.push_str(attribute);
        }
    }
    Some(out.into_bytes())
}

/// Whether the client reads HTML (a browser navigating) rather than problem documents.
fn wants_html(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// A gateway answer on a preview host: the problem document, or for a browser the same as a small HTML page.
fn page(problem: Problem, html: bool) -> HttpResponse {
    let mut response = problem.error_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !html {
        return response;
    }
    let body = serde_json::to_value(&problem).unwrap_or_default();
    let text = |key: &str| escape(body.get(key).and_then(|value| value.as_str()).unwrap_or_default());
    let status = problem.status();
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title}</title></head><body>\
         <h1>{title}</h1><p>{detail}</p><p><small>{code} &middot; Gatehouse preview gateway</small></p></body></html>",
        status = status.as_u16(),
        title = text("title"),
        detail = text("detail"),
        code = text("code"),
    );
    let mut page = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            page.append_header((name.clone(), value.clone()));
        }
    }
    page.insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "default-src 'none'"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(html)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preview_cookie_never_reaches_the_app() {
        assert_eq!(
            app_cookies(b"a=1; gatehouse_preview=secret; __Host-gatehouse_preview=s2;b=2").as_deref(),
            Some(&b"a=1; b=2"[..])
        );
        assert_eq!(app_cookies(b"gatehouse_preview=secret"), None);
        assert_eq!(app_cookies(b"gatehouse_preview_x=1").as_deref(), Some(&b"gatehouse_preview_x=1"[..]));
    }

    #[test]
    fn app_cookies_are_held_to_the_preview_host() {
        assert_eq!(
            app_cookie(b"sid=1; Domain=.example.com; Path=/; HttpOnly").as_deref(),
            Some(&b"sid=1; Path=/; HttpOnly"[..])
        );
        assert_eq!(app_cookie(b"gatehouse_preview=forged; Path=/"), None);
        assert_eq!(app_cookie(b"__Host-gatehouse_preview=forged"), None);
    }

    #[test]
    fn only_local_paths_are_followed_after_the_exchange() {
        for good in ["/", "/app?x=1", "/a/b#c"] {
            assert!(is_local_path(good), "{good}");
        }
        for bad in ["//evil.net/", "https://evil.net/", "/\\evil.net", "evil", "/a\nb", ""] {
            assert!(!is_local_path(bad), "{bad}");
        }
    }
}
