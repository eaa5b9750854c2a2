//! The relay's HTTP and WebSocket surface: agent tokens, workspaces, tickets, sessions, the agent endpoint and the
//! browser terminal endpoint.
//!
//! It lives in the root package because it joins `api` (callers, problems) and `relay` (the hub and the wire
//! protocols), which never depend on each other. Tickets, agent tokens and sessions are aggregates (`domain::relay`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode as WsCode, CloseReason as WsReason, Message};
use api::auth::Caller;
use api::{Problem, ProblemCode};
use base64::Engine;
use chrono::Utc;
use domain::firewall::{Cidr, Firewall, FirewallAction, FirewallCommand, FirewallRule, FIREWALL_ID};
use domain::relay::{
    AgentToken, AgentTokenCommand, AgentTokenError, CloseReason, SessionCommand, TerminalSession, Ticket, TicketCommand,
};
use domain::roster::Role;
use domain::Email;
use futures::StreamExt;
use projections::{ActivityFilter, SessionFilter, SessionsQuery, TimeKey};
use relay::agent::{close as agent_close, Hello, Welcome};
use relay::browser::{ClientMessage, CloseCode, ServerMessage};
use relay::hub::{Hub, ToBrowser};
use relay::mux::Frame;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::{AggregateRepository, CommandError, EventMetadata, EventStore};
use tokio_util::sync::CancellationToken;

/// The relay's limits (settings `relay_*`).
#[derive(Debug, Clone)]
pub struct RelayLimits {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// How long a ticket stays redeemable.
    pub ticket_ttl: Duration,
    /// Origins allowed besides none and same-host.
    pub allowed_origins: Vec<String>,
    /// Time for the first message.
    pub auth_timeout: Duration,
    /// Idle timeout of a session.
    pub idle_timeout: Duration,
    /// Maximum age of a session.
    pub max_age: Duration,
    /// Largest WebSocket frame accepted.
    pub max_frame: usize,
    /// Sessions per user.
    pub max_sessions_per_user: usize,
}

/// The relay's shared state.
pub struct Relay {
    /// Connected agents.
    pub hub: Hub,
    limits: RelayLimits,
    tickets: AggregateRepository<Ticket>,
    agent_tokens: AggregateRepository<AgentToken>,
    sessions: AggregateRepository<TerminalSession>,
    shutdown: CancellationToken,
    /// Cancelled after the sessions are recorded closed, so that they end as `shutdown`, not `agent_lost`.
    agents_shutdown: CancellationToken,
    /// Open sessions: id → user.
    active: Mutex<HashMap<String, Email>>,
    firewall: AggregateRepository<Firewall>,
    /// The rules in force; sessions watch it and re-check their client when it changes.
    rules: tokio::sync::watch::Sender<Arc<Firewall>>,
    /// The `sessions` read model.
    reads: SessionsQuery,
}

impl Relay {
    /// A relay over `store`.
    pub fn new(store: EventStore, limits: RelayLimits) -> Self {
        Self {
            hub: Hub::new(),
            limits,
            tickets: AggregateRepository::new(store.clone(), ()),
            agent_tokens: AggregateRepository::new(store.clone(), ()),
            sessions: AggregateRepository::new(store.clone(), ()),
            shutdown: CancellationToken::new(),
            agents_shutdown: CancellationToken::new(),
            active: Mutex::new(HashMap::new()),
            firewall: AggregateRepository::new(store.clone(), ()),
            rules: tokio::sync::watch::Sender::new(Arc::new(Firewall::default())),
            reads: SessionsQuery::new(store.read_models().clone()),
        }
    }

    /// Loads the firewall rules from the store.
    pub async fn load_firewall(&self) -> Result<(), store::StoreError> {
        let (firewall, _) = self.firewall.load(FIREWALL_ID).await?;
        self.rules.send_replace(Arc::new(firewall));
        Ok(())
    }

    /// Closes every session (recording `shutdown`) and every agent connection; waits up to `limit` for the records.
    pub async fn shut_down(&self, limit: Duration) {
        self.shutdown.cancel();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.active.lock().map(|active| !active.is_empty()).unwrap_or(false) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.agents_shutdown.cancel();
    }

    fn sessions_of(&self, user: &Email) -> usize {
        self.active.lock().map(|active| active.values().filter(|owner| *owner == user).count()).unwrap_or(0)
    }
}

/// Mounts the relay's routes. Must come before `api::configure` (whose catch-all scope would shadow them).
pub fn configure(relay: web::Data<Relay>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config: &mut web::ServiceConfig| {
        config
            .app_data(relay)
            .service(mint_agent_token)
            .service(revoke_agent_token)
            .service(list_workspaces)
            .service(issue_ticket)
            .service(list_sessions)
            .service(list_activity)
            .service(get_firewall)
            .service(put_firewall)
            .service(agent_connect)
            .service(terminal);
    }
}

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn random_secret() -> Result<String, Problem> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|_| Problem::internal())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintBody {
    name: String,
}

#[derive(Debug, Serialize)]
struct MintedToken {
    id: String,
    name: String,
    token: String,
}

/// `POST /api/v1/agent-tokens` (admin): a new agent token, shown once.
#[post("/api/v1/agent-tokens")]
async fn mint_agent_token(
    caller: Caller,
    request: HttpRequest,
    body: web::Json<MintBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let name = body.into_inner().name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidField, "Invalid field")
            .field("name")
            .detail("name takes 1 to 100 characters"));
    }
    let token = format!("gha_{}", random_secret()?);
    let id = sha256_hex(&token);
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    relay
        .agent_tokens
        .execute(&id, AgentTokenCommand::Mint { name: name.clone(), by: caller.email.clone() }, &metadata)
        .await
        .map_err(|error| match error {
            CommandError::Store(error) => Problem::from(error),
            _ => Problem::internal(),
        })?;
    Ok(HttpResponse::Created().json(MintedToken { id, name, token }))
}

/// `DELETE /api/v1/agent-tokens/{id}` (admin): revokes a token (connected agents keep their connection until it
/// drops; they cannot reconnect).
#[delete("/api/v1/agent-tokens/{id}")]
async fn revoke_agent_token(
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let id = path.into_inner();
    if id.len() != 64 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(Problem::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found"));
    }
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    match relay
        .agent_tokens
        .execute_retrying(&id, AgentTokenCommand::Revoke { by: caller.email.clone() }, &metadata, 3)
        .await
    {
        Ok(_) | Err(CommandError::Rejected(AgentTokenError::AlreadyRevoked)) => Ok(HttpResponse::NoContent().finish()),
        Err(CommandError::Rejected(_)) => Err(Problem::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found")),
        Err(CommandError::Store(error)) => Err(Problem::from(error)),
        Err(_) => Err(Problem::internal()),
    }
}

#[derive(Debug, Serialize)]
struct WorkspaceView {
    id: String,
    owner: Option<String>,
    display_name: Option<String>,
    blueprint_key: Option<String>,
    agent: String,
    sessions: usize,
    tags: BTreeMap<String, String>,
}

/// `GET /api/v1/workspaces`: connected workspaces; admins see all, members those they own.
#[get("/api/v1/workspaces")]
async fn list_workspaces(caller: Caller, relay: web::Data<Relay>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let items: Vec<WorkspaceView> = relay
        .hub
        .list()
        .into_iter()
        .filter(|agent| {
            caller.role == Role::Admin
                || agent.owner().is_some_and(|owner| owner.eq_ignore_ascii_case(caller.email.as_str()))
        })
        .map(|agent| WorkspaceView {
            id: agent.workspace.clone(),
            owner: agent.owner().map(str::to_string),
            display_name: agent.tags.get("RDE_DISPLAY_NAME").cloned(),
            blueprint_key: agent.tags.get("BLUEPRINT_KEY").cloned(),
            agent: agent.id.clone(),
            sessions: agent.session_count(),
            tags: agent.tags.clone(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketBody {
    kind: String,
}

/// `POST /api/v1/workspaces/{id}/tickets` (the workspace's owner, or an admin): a one-time ticket.
#[post("/api/v1/workspaces/{id}/tickets")]
async fn issue_ticket(
    caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Json<TicketBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = path.into_inner();
    let kind = body.into_inner().kind;
    if kind != "terminal" {
        return Err(Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidField, "Invalid field")
            .field("kind")
            .detail("kind must be \"terminal\""));
    }
    let Some(agent) = relay.hub.get(&workspace) else {
        return Err(Problem::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found")
            .detail("The workspace has no connected agent."));
    };
    let owns = agent.owner().is_some_and(|owner| owner.eq_ignore_ascii_case(caller.email.as_str()));
    if caller.role != Role::Admin && !owns {
        return Err(Problem::new(StatusCode::FORBIDDEN, ProblemCode::NotWorkspaceOwner, "Forbidden")
            .detail("Only the workspace's owner or an admin may open it."));
    }
    let ticket = random_secret()?;
    let ticket_hash = sha256_hex(&ticket);
    let expires_at =
        Utc::now() + chrono::Duration::from_std(relay.limits.ticket_ttl).map_err(|_| Problem::internal())?;
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    let command = TicketCommand::Issue {
        ticket_hash: ticket_hash.clone(),
        user: caller.email.clone(),
        workspace,
        kind,
        expires_at,
    };
    relay.tickets.execute(&ticket_hash, command, &metadata).await.map_err(|error| match error {
        CommandError::Store(error) => Problem::from(error),
        _ => Problem::internal(),
    })?;
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "ticket": ticket, "expires_at": expires_at })))
}

/// A filter value: absent or empty is no filter.
fn present(raw: Option<String>) -> Option<String> {
    raw.filter(|value| !value.is_empty())
}

fn parse_user(raw: Option<String>) -> Result<Option<String>, Problem> {
    present(raw)
        .map(|raw| {
            Email::parse(&raw).map(String::from).map_err(|error| Problem::invalid_query("user", error.to_string()))
        })
        .transpose()
}

/// `from`/`to`: RFC 3339, normalized to the read models' text form (UTC, microseconds) so they compare as text.
fn parse_time(field: &str, raw: Option<String>) -> Result<Option<String>, Problem> {
    present(raw)
        .map(|raw| {
            chrono::DateTime::parse_from_rfc3339(&raw)
                .map(|time| time.with_timezone(&Utc).to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .map_err(|_| {
                    Problem::invalid_query(field, format!("{field} is an RFC 3339 time, such as 2026-01-31T12:00:00Z"))
                })
        })
        .transpose()
}

fn parse_limit(raw: Option<String>) -> Result<i64, Problem> {
    match present(raw) {
        None => Ok(100),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|limit| (1..=500).contains(limit))
            .ok_or_else(|| Problem::invalid_query("limit", "limit is between 1 and 500")),
    }
}

fn decode_key(raw: Option<String>) -> Result<Option<TimeKey>, Problem> {
    present(raw).map(|raw| api::decode_page_key(&raw)).transpose()
}

/// Keeps `limit` rows; the cursor of the last one when there were more.
fn paginate<T>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(key);
        (rows, next)
    } else {
        (rows, None)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionListQuery {
    active: Option<String>,
    user: Option<String>,
    workspace: Option<String>,
    kind: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /api/v1/sessions` (admin): terminal sessions, newest first, from the `sessions` read model.
#[get("/api/v1/sessions")]
async fn list_sessions(
    caller: Caller,
    query: web::Query<SessionListQuery>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let query = query.into_inner();
    let limit = parse_limit(query.limit)?;
    let active = match present(query.active).as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Problem::invalid_query("active", "active is true or false")),
    };
    let kind = match present(query.kind) {
        None => None,
        Some(kind) if kind == "terminal" => Some(kind),
        Some(_) => return Err(Problem::invalid_query("kind", "kind is \"terminal\"")),
    };
    let filter = SessionFilter {
        active,
        user: parse_user(query.user)?,
        workspace: present(query.workspace),
        kind,
        from: parse_time("from", query.from)?,
        to: parse_time("to", query.to)?,
    };
    let after = decode_key(query.after)?;
    let rows = relay.reads.sessions(&filter, after.as_ref(), limit + 1).await.map_err(store::StoreError::from)?;
    let (rows, next) = paginate(rows, limit, |row| api::encode_page_key(&row.opened_at, &row.session_id));
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|row| {
            serde_json::json!({
                "id": row.session_id, "user": row.user, "workspace": row.workspace, "agent": row.agent,
                "kind": row.kind, "client_ip": row.client_ip, "user_agent": row.user_agent,
                "opened_at": row.opened_at, "active": row.closed_at.is_none(), "closed_at": row.closed_at,
                "reason": row.close_reason, "bytes_in": row.bytes_in, "bytes_out": row.bytes_out,
                "duration_ms": row.duration_ms,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next": next })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivityListQuery {
    kind: Option<String>,
    user: Option<String>,
    workspace: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /api/v1/relay/activity` (admin, auditor): tickets issued, redeemed and refused, and connections the
/// firewall blocked, newest first, from the `sessions` read model.
#[get("/api/v1/relay/activity")]
async fn list_activity(
    caller: Caller,
    query: web::Query<ActivityListQuery>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let query = query.into_inner();
    let limit = parse_limit(query.limit)?;
    let kind = match present(query.kind) {
        None => None,
        Some(kind) if ACTIVITY_KINDS.contains(&kind.as_str()) => Some(kind),
        Some(_) => {
            return Err(Problem::invalid_query(
                "kind",
                "kind is ticket_issued, ticket_redeemed, ticket_refused or connection_blocked",
            ))
        }
    };
    let filter = ActivityFilter {
        kind,
        user: parse_user(query.user)?,
        workspace: present(query.workspace),
        from: parse_time("from", query.from)?,
        to: parse_time("to", query.to)?,
    };
    let after = decode_key(query.after)?;
    let rows = relay.reads.activity(&filter, after.as_ref(), limit + 1).await.map_err(store::StoreError::from)?;
    let (rows, next) = paginate(rows, limit, |row| api::encode_page_key(&row.at, &row.activity_id));
    let items: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|row| {
            serde_json::json!({
                "id": row.activity_id, "at": row.at, "kind": row.kind, "user": row.user,
                "workspace": row.workspace, "client_ip": row.client_ip, "reason": row.reason, "rule": row.rule,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next": next })))
}

const ACTIVITY_KINDS: [&str; 4] = ["ticket_issued", "ticket_redeemed", "ticket_refused", "connection_blocked"];

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FirewallBody {
    rules: Vec<FirewallRule>,
    default_action: FirewallAction,
}

/// `GET /api/v1/firewall` (admin, auditor): the rules in force.
#[get("/api/v1/firewall")]
async fn get_firewall(caller: Caller, relay: web::Data<Relay>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let (firewall, version) = relay.firewall.load(FIREWALL_ID).await.map_err(Problem::from)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "rules": firewall.rules, "default_action": firewall.default_action, "version": version,
    })))
}

/// `PUT /api/v1/firewall` (admin): replaces the ordered rules and the default action; live sessions the new rules
/// deny are closed (4003, reason `firewall`).
#[put("/api/v1/firewall")]
async fn put_firewall(
    caller: Caller,
    request: HttpRequest,
    body: web::Json<FirewallBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let FirewallBody { rules, default_action } = body.into_inner();
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    let command = FirewallCommand::Replace { rules, default_action, by: caller.email.clone() };
    relay.firewall.execute_retrying(FIREWALL_ID, command, &metadata, 5).await.map_err(|error| match error {
        CommandError::Rejected(rejection) => {
            Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidField, "Invalid field")
                .field("rules")
                .detail(rejection.to_string())
        }
        CommandError::Store(error) => Problem::from(error),
        _ => Problem::internal(),
    })?;
    let (firewall, version) = relay.firewall.load(FIREWALL_ID).await.map_err(Problem::from)?;
    let answer = serde_json::json!({
        "rules": firewall.rules, "default_action": firewall.default_action, "version": version,
    });
    relay.rules.send_replace(Arc::new(firewall));
    Ok(HttpResponse::Ok().json(answer))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last `X-Forwarded-For` hop that is
/// not one.
fn client_ip(request: &HttpRequest, trusted: &[Cidr]) -> Option<std::net::IpAddr> {
    let peer = request.peer_addr()?.ip();
    let is_trusted = |address: std::net::IpAddr| trusted.iter().any(|cidr| cidr.contains(address));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = request
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    Some(forwarded.into_iter().rev().find(|hop| !is_trusted(*hop)).unwrap_or(peer))
}

/// Records a blocked attempt (logged once) and answers whether the address is denied.
async fn blocked(relay: &Relay, address: Option<std::net::IpAddr>, workspace: &str, user: Option<&Email>) -> bool {
    let firewall = relay.rules.borrow().clone();
    let (action, rule) = match address {
        Some(address) => firewall.evaluate(address),
        None => (firewall.default_action, None),
    };
    if action == FirewallAction::Allow {
        return false;
    }
    let client_ip = address.map(|address| address.to_string()).unwrap_or_default();
    tracing::info!(client_ip, ?rule, workspace, "terminal connection blocked by the firewall");
    let command =
        FirewallCommand::RecordBlocked { client_ip, rule, workspace: workspace.to_string(), user: user.cloned() };
    if let Err(error) = relay.firewall.execute_retrying(FIREWALL_ID, command, &EventMetadata::system("relay"), 5).await
    {
        tracing::warn!(%error, "cannot record a blocked connection");
    }
    true
}

fn reason(code: u16, description: &str) -> Option<WsReason> {
    Some(WsReason { code: WsCode::Other(code), description: Some(description.to_string()) })
}

/// `GET /api/v1/agent/connect`: an agent's WebSocket. First message: `hello` with the agent token.
#[get("/api/v1/agent/connect")]
async fn agent_connect(
    request: HttpRequest,
    body: web::Payload,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&request, body)?;
    let stream = stream.max_frame_size(relay.limits.max_frame);
    actix_web::rt::spawn(agent_connection(relay.into_inner(), session, stream));
    Ok(response)
}

async fn agent_connection(relay: Arc<Relay>, mut session: actix_ws::Session, mut stream: actix_ws::MessageStream) {
    let first = tokio::time::timeout(relay.limits.auth_timeout, stream.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Hello>(&text).ok(),
        _ => None,
    };
    let Some(hello) = hello else {
        tracing::info!("agent refused: no hello");
        let _ = session.close(reason(agent_close::HELLO_REQUIRED, "hello required")).await;
        return;
    };
    let valid = match relay.agent_tokens.load(&sha256_hex(&hello.token)).await {
        Ok((token, _)) => token.is_valid(),
        Err(error) => {
            tracing::warn!(%error, "cannot check an agent token");
            false
        }
    };
    if !valid {
        tracing::info!(workspace = hello.workspace, "agent refused: bad token");
        let _ = session.close(reason(agent_close::TOKEN_REFUSED, "agent token refused")).await;
        return;
    }
    let (conn, mut frames) = match relay.hub.register(&hello.workspace, hello.tags) {
        Ok(registered) => registered,
        Err(error) => {
            tracing::info!(%error, "agent refused");
            let _ = session.close(reason(agent_close::WORKSPACE_TAKEN, "workspace taken")).await;
            return;
        }
    };
    tracing::info!(agent = conn.id, workspace = conn.workspace, "agent connected");
    let welcome = serde_json::to_string(&Welcome { agent: conn.id.clone() }).unwrap_or_default();
    if session.text(welcome).await.is_err() {
        relay.hub.unregister(&conn);
        return;
    }
    let mut writer_session = session.clone();
    let writer = actix_web::rt::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if writer_session.binary(frame.encode()).await.is_err() {
                break;
            }
        }
    });
    let close = loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let outcome = Frame::decode(&bytes).and_then(|frame| conn.handle_frame(frame));
                    if let Err(error) = outcome {
                        tracing::warn!(agent = conn.id, %error, "agent broke the protocol");
                        break reason(agent_close::PROTOCOL_ERROR, "protocol error");
                    }
                }
                Some(Ok(Message::Ping(bytes))) => {
                    let _ = session.pong(&bytes).await;
                }
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Err(error)) => {
                    tracing::warn!(agent = conn.id, %error, "agent connection failed");
                    break reason(agent_close::PROTOCOL_ERROR, "protocol error");
                }
                Some(Ok(_)) => {}
            },
            _ = relay.agents_shutdown.cancelled() => break Some(WsReason { code: WsCode::Away, description: None }),
        }
    };
    relay.hub.unregister(&conn);
    writer.abort();
    tracing::info!(agent = conn.id, workspace = conn.workspace, "agent disconnected");
    let _ = session.close(close).await;
}

fn origin_allowed(request: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = request.headers().get("origin").and_then(|value| value.to_str().ok()) else { return true };
    if allowed.iter().any(|allowed| allowed == origin || allowed == "*") {
        return true;
    }
    let host = request.headers().get("host").and_then(|value| value.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// `GET /api/v1/workspaces/{id}/terminal`: a browser's terminal WebSocket. First message: `auth` with a ticket.
#[get("/api/v1/workspaces/{id}/terminal")]
async fn terminal(
    request: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, actix_web::Error> {
    if !origin_allowed(&request, &relay.limits.allowed_origins) {
        return Err(Problem::new(StatusCode::FORBIDDEN, ProblemCode::Forbidden, "Forbidden")
            .detail("This origin may not open terminals.")
            .into());
    }
    let address = client_ip(&request, &relay.limits.trusted_proxies);
    let user_agent = request
        .headers()
        .get("user-agent")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(256)
        .collect::<String>();
    let (response, session, stream) = actix_ws::handle(&request, body)?;
    let stream = stream.max_frame_size(relay.limits.max_frame);
    let context = BrowserContext { workspace: path.into_inner(), address, user_agent };
    actix_web::rt::spawn(browser_session(relay.into_inner(), context, session, stream));
    Ok(response)
}

struct BrowserContext {
    workspace: String,
    address: Option<std::net::IpAddr>,
    user_agent: String,
}

async fn browser_session(
    relay: Arc<Relay>,
    context: BrowserContext,
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
) {
    let refuse = |code: CloseCode, text: &str| reason(code.code(), text);
    let first = tokio::time::timeout(relay.limits.auth_timeout, stream.next()).await;
    let ticket = match first {
        Err(_) => Err(refuse(CloseCode::IdleTimeout, "no auth message in time")),
        Ok(Some(Ok(Message::Text(text)))) => match ClientMessage::parse(&text) {
            Ok(ClientMessage::Auth { ticket }) => Ok(ticket),
            Ok(_) => Err(refuse(CloseCode::TicketRequired, "auth first")),
            Err(error) => Err(refuse(error.close_code(), "bad control message")),
        },
        Ok(Some(Err(_))) => Err(refuse(CloseCode::TooLarge, "bad frame")),
        Ok(_) => Err(refuse(CloseCode::TicketRequired, "auth first")),
    };
    let ticket = match ticket {
        Ok(ticket) => ticket,
        Err(close) => {
            let _ = session.close(close).await;
            return;
        }
    };
    // The setup and bookkeeping futures (store commands, SQL) are large; boxed, they live on the heap only while
    // they run, instead of making every idle session's task as large as the largest of them.
    let user = match Box::pin(redeem(&relay, &ticket, &context.workspace)).await {
        Some(user) => user,
        None => {
            let _ = session.close(refuse(CloseCode::TicketRefused, "ticket refused")).await;
            return;
        }
    };
    if Box::pin(blocked(&relay, context.address, &context.workspace, Some(&user))).await {
        let _ = session.close(refuse(CloseCode::Firewall, "refused by the firewall")).await;
        return;
    }
    if relay.sessions_of(&user) >= relay.limits.max_sessions_per_user {
        let _ = session.close(refuse(CloseCode::TooManySessions, "too many sessions")).await;
        return;
    }
    let Some(agent) = relay.hub.get(&context.workspace) else {
        let _ = session.close(refuse(CloseCode::WorkspaceUnavailable, "no agent")).await;
        return;
    };
    let mut handle = agent.open_terminal(80, 24);
    match tokio::time::timeout(Duration::from_secs(10), handle.recv()).await {
        Ok(Some(ToBrowser::Opened)) => {}
        _ => {
            let _ = session.close(refuse(CloseCode::AgentLost, "the agent did not open the session")).await;
            return;
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
    if let Err(error) = Box::pin(relay.sessions.execute(&session_id, open, &metadata)).await {
        tracing::warn!(%error, "cannot record a session");
        let _ = session.close(refuse(CloseCode::GoingAway, "cannot record the session")).await;
        return;
    }
    if let Ok(mut active) = relay.active.lock() {
        active.insert(session_id.clone(), user.clone());
    }
    tracing::info!(session = session_id, user = %user, workspace = context.workspace, "terminal session opened");
    let started = Instant::now();
    let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
    let ready = serde_json::to_string(&ServerMessage::Ready { session: session_id.clone() }).unwrap_or_default();
    let mut outcome = if session.text(ready).await.is_err() { Some((CloseReason::ClientClosed, None)) } else { None };
    let mut last_activity = tokio::time::Instant::now();
    let max_age = tokio::time::Instant::now() + relay.limits.max_age;
    // Keystrokes waiting for the agent's window. While some wait, the browser is not read (TCP pushes back on it)
    // but output keeps flowing, so a paste into a busy shell cannot deadlock the session.
    let mut pending: Vec<u8> = Vec::new();
    let input = handle.input();
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
            sent = input.send_chunk(&pending), if !pending.is_empty() => match sent {
                Some(count) => {
                    pending.drain(..count);
                }
                None => outcome = Some((CloseReason::AgentLost, refuse(CloseCode::AgentLost, "agent lost"))),
            },
            message = stream.next(), if pending.is_empty() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    last_activity = tokio::time::Instant::now();
                    bytes_in += bytes.len() as u64;
                    pending.extend_from_slice(&bytes);
                }
                Some(Ok(Message::Text(text))) => match ClientMessage::parse(&text) {
                    Ok(ClientMessage::Resize { cols, rows }) => handle.resize(cols, rows),
                    Ok(ClientMessage::Ping {}) => {
                        let pong = serde_json::to_string(&ServerMessage::Pong).unwrap_or_default();
                        let _ = session.text(pong).await;
                    }
                    Ok(ClientMessage::Auth { .. }) => {
                        outcome = Some((CloseReason::ClientClosed, refuse(CloseCode::ProtocolError, "auth twice")));
                    }
                    Err(error) => {
                        outcome = Some((CloseReason::ClientClosed, refuse(error.close_code(), "bad control message")));
                    }
                },
                Some(Ok(Message::Ping(bytes))) => {
                    let _ = session.pong(&bytes).await;
                }
                Some(Ok(Message::Close(_))) | None => outcome = Some((CloseReason::ClientClosed, None)),
                Some(Err(actix_ws::ProtocolError::Overflow)) => {
                    outcome = Some((CloseReason::ClientClosed, refuse(CloseCode::TooLarge, "frame too large")));
                }
                Some(Err(_)) => {
                    outcome = Some((CloseReason::ClientClosed, refuse(CloseCode::ProtocolError, "protocol error")));
                }
                Some(Ok(_)) => {}
            },
            message = handle.recv() => match message {
                Some(ToBrowser::Data(bytes)) => {
                    last_activity = tokio::time::Instant::now();
                    let length = bytes.len();
                    if session.binary(bytes).await.is_err() {
                        outcome = Some((CloseReason::ClientClosed, None));
                    } else {
                        bytes_out += length as u64;
                        handle.consumed(length);
                    }
                }
                Some(ToBrowser::Exit(code)) => {
                    let exit = serde_json::to_string(&ServerMessage::Exit { code: Some(code) }).unwrap_or_default();
                    let _ = session.text(exit).await;
                }
                Some(ToBrowser::Closed) => {
                    outcome = Some((CloseReason::ClientClosed, Some(WsReason { code: WsCode::Normal, description: None })));
                }
                Some(ToBrowser::Opened) => {}
                Some(ToBrowser::AgentLost) | None => {
                    outcome = Some((CloseReason::AgentLost, refuse(CloseCode::AgentLost, "agent lost")));
                }
            },
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
                if Box::pin(blocked(&relay, context.address, &context.workspace, Some(&user))).await {
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
    let _ = session.close(close).await;
    let closed =
        SessionCommand::Close { bytes_in, bytes_out, duration_ms: started.elapsed().as_millis() as u64, reason: why };
    if let Err(error) = Box::pin(relay.sessions.execute_retrying(&session_id, closed, &metadata, 3)).await {
        tracing::warn!(%error, session = session_id, "cannot record a session's end");
    }
    if let Ok(mut active) = relay.active.lock() {
        active.remove(&session_id);
    }
    tracing::info!(session = session_id, reason = why.as_str(), bytes_in, bytes_out, "terminal session closed");
}

/// Redeems a ticket for `workspace`; the ticket's user when it wins. Every refusal is recorded.
async fn redeem(relay: &Relay, ticket: &str, workspace: &str) -> Option<Email> {
    let hash = sha256_hex(ticket);
    let metadata = EventMetadata::system("relay");
    let command = TicketCommand::Redeem { workspace: workspace.to_string(), kind: "terminal".into(), now: Utc::now() };
    let committed = match relay.tickets.execute_retrying(&hash, command, &metadata, 5).await {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "cannot redeem a ticket");
            return None;
        }
    };
    let (state, _) = relay.tickets.load(&hash).await.ok()?;
    if state.redeemed_at == Some(committed.version) {
        state.user
    } else {
        tracing::info!(workspace, "ticket refused");
        None
    }
}
