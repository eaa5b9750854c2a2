//! The relay's REST surface: agent tokens, workspaces, tickets, sessions, the firewall, and the relay's shared state
//! ([`Relay`]). The WebSocket connections themselves are in `relay_ws` (ADR 0011); the two WebSocket routes here
//! only answer requests that are not upgrades.
//!
//! It lives in the root package because it joins `api` (callers, problems) and `relay` (the hub and the wire
//! protocols), which never depend on each other. Tickets, agent tokens and sessions are aggregates (`domain::relay`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use api::auth::Caller;
use api::extract::{Json, Path};
use api::{List, Page, Problem, ProblemCode};
use base64::Engine;
use chrono::Utc;
use domain::firewall::{Cidr, Firewall, FirewallAction, FirewallCommand, FirewallRule, FIREWALL_ID};
use domain::relay::{AgentToken, AgentTokenCommand, AgentTokenError, TerminalSession, Ticket, TicketCommand};
use domain::roster::Role;
use domain::Email;
use projections::{ActivityFilter, SessionFilter, SessionsQuery, TimeKey};
use relay::hub::Hub;
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
    pub(crate) limits: RelayLimits,
    tickets: AggregateRepository<Ticket>,
    pub(crate) agent_tokens: AggregateRepository<AgentToken>,
    pub(crate) sessions: AggregateRepository<TerminalSession>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled after the sessions are recorded closed, so that they end as `shutdown`, not `agent_lost`.
    pub(crate) agents_shutdown: CancellationToken,
    /// Open sessions: id → user.
    active: Mutex<HashMap<String, Email>>,
    firewall: AggregateRepository<Firewall>,
    /// The rules in force; sessions watch it and re-check their client when it changes.
    pub(crate) rules: tokio::sync::watch::Sender<Arc<Firewall>>,
    /// The `sessions` read model.
    reads: SessionsQuery,
    /// Connected agents by the id of their token: cancelled when the token is revoked.
    live_tokens: Mutex<HashMap<String, Vec<(u64, CancellationToken)>>>,
    next_watch: AtomicU64,
    /// The worker thread serving each connected agent (by agent connection id), where its sessions are relayed.
    homes: Mutex<HashMap<String, (std::thread::ThreadId, tokio::runtime::Handle)>>,
}

/// An agent connection's registration as served by this worker thread; dropping it forgets it.
pub(crate) struct Home<'a> {
    relay: &'a Relay,
    agent: String,
}

impl Drop for Home<'_> {
    fn drop(&mut self) {
        if let Ok(mut homes) = self.relay.homes.lock() {
            homes.remove(&self.agent);
        }
    }
}

/// A connected agent's interest in its token: `revoked` is cancelled when an admin revokes the token. Dropping it
/// stops watching.
pub(crate) struct TokenWatch<'a> {
    relay: &'a Relay,
    token_id: String,
    id: u64,
    pub(crate) revoked: CancellationToken,
}

impl Drop for TokenWatch<'_> {
    fn drop(&mut self) {
        if let Ok(mut live) = self.relay.live_tokens.lock() {
            if let Some(watches) = live.get_mut(&self.token_id) {
                watches.retain(|(id, _)| *id != self.id);
                if watches.is_empty() {
                    live.remove(&self.token_id);
                }
            }
        }
    }
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
            live_tokens: Mutex::new(HashMap::new()),
            next_watch: AtomicU64::new(0),
            homes: Mutex::new(HashMap::new()),
        }
    }

    /// Watches an agent token for revocation. Taken before the token is checked, so a revocation committed after
    /// the check still reaches the connection.
    pub(crate) fn watch_token(&self, token_id: &str) -> TokenWatch<'_> {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        if let Ok(mut live) = self.live_tokens.lock() {
            live.entry(token_id.to_string()).or_default().push((id, revoked.clone()));
        }
        TokenWatch { relay: self, token_id: token_id.to_string(), id, revoked }
    }

    /// Disconnects every agent connected with the token `token_id` (after its revocation was committed); how many.
    fn disconnect_token(&self, token_id: &str) -> usize {
        let watches = self.live_tokens.lock().map(|mut live| live.remove(token_id).unwrap_or_default());
        let watches = watches.unwrap_or_default();
        for (_, revoked) in &watches {
            revoked.cancel();
        }
        watches.len()
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

    pub(crate) fn sessions_of(&self, user: &Email) -> usize {
        self.active.lock().map(|active| active.values().filter(|owner| *owner == user).count()).unwrap_or(0)
    }

    /// Records that the agent connection `agent` is served by the current worker thread.
    pub(crate) fn set_home(&self, agent: &str) -> Home<'_> {
        if let Ok(mut homes) = self.homes.lock() {
            homes.insert(agent.to_string(), (std::thread::current().id(), tokio::runtime::Handle::current()));
        }
        Home { relay: self, agent: agent.to_string() }
    }

    /// The worker thread serving the agent connection `agent`, if it is connected.
    pub(crate) fn home_of(&self, agent: &str) -> Option<(std::thread::ThreadId, tokio::runtime::Handle)> {
        self.homes.lock().ok().and_then(|homes| homes.get(agent).cloned())
    }

    /// Counts an open session (for the per-user limit and the shutdown wait).
    pub(crate) fn session_opened(&self, session_id: &str, user: &Email) {
        if let Ok(mut active) = self.active.lock() {
            active.insert(session_id.to_string(), user.clone());
        }
    }

    /// Forgets a session once its end is recorded.
    pub(crate) fn session_ended(&self, session_id: &str) {
        if let Ok(mut active) = self.active.lock() {
            active.remove(session_id);
        }
    }
}

/// The relay's part of the OpenAPI document; `openapi()` merges it into `api`'s.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        mint_agent_token, revoke_agent_token, list_workspaces, issue_ticket, list_sessions, list_activity,
        get_firewall, put_firewall, agent_connect, terminal,
    ),
    components(schemas(
        MintBody, MintedToken, WorkspaceView, WorkspacePage, TicketBody, TicketView, SessionView,
        api::Page<SessionView>, ActivityView, api::Page<ActivityView>, FirewallRuleDoc, FirewallActionDoc, FirewallBody, FirewallView,
    )),
    tags((name = "relay", description = "Agents, workspaces, tickets, terminal sessions and the IP firewall (docs/API.md)"))
)]
pub struct RelayApiDoc;

/// The whole OpenAPI document the service serves: `api`'s and the relay's.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    let mut document = api::ops::document();
    document.merge(RelayApiDoc::openapi());
    document
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

pub(crate) fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn random_secret() -> Result<String, Problem> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|_| Problem::internal())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A new agent token: the workspace it serves and what is known of that workspace.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintBody {
    /// The only workspace an agent with this token may serve (1 to 128 of `A-Z a-z 0-9 - _ .`).
    workspace: String,
    /// The workspace's owner (`RDE_OWNER_EMAIL`): who may open its terminals besides admins.
    #[serde(default)]
    owner: Option<String>,
    /// Its display name (`RDE_DISPLAY_NAME`), at most 100 characters.
    #[serde(default)]
    display_name: Option<String>,
    /// The blueprint it came from (`BLUEPRINT_KEY`).
    #[serde(default)]
    blueprint_key: Option<String>,
    /// A label for people, 1 to 100 characters (default: the workspace).
    #[serde(default)]
    name: Option<String>,
}

/// A minted agent token: the only time the token is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MintedToken {
    /// The token's id: its hex SHA-256 (what is stored; revoke with it).
    id: String,
    /// Its label.
    name: String,
    /// The workspace it serves.
    workspace: String,
    /// The discovery tags the gateway knows the workspace by (whatever its agent announces).
    tags: BTreeMap<String, String>,
    /// The token, for `gatehouse agent` (`GATEHOUSE_AGENT_TOKEN`).
    token: String,
}

fn invalid_mint_field(field: &str, detail: impl Into<String>) -> Problem {
    Problem::new(ProblemCode::InvalidField, "Invalid field").field(field).detail(detail)
}

/// A short label: trimmed, 1 to 100 characters, no control characters.
fn label(field: &str, raw: &str) -> Result<String, Problem> {
    let value = raw.trim();
    if value.is_empty() || value.chars().count() > 100 || value.chars().any(char::is_control) {
        return Err(invalid_mint_field(
            field,
            format!("{field} takes 1 to 100 characters, none of them control characters"),
        ));
    }
    Ok(value.to_string())
}

impl MintBody {
    /// The workspace, the label and the discovery tags, validated.
    fn parse(self) -> Result<(String, String, BTreeMap<String, String>), Problem> {
        let workspace = domain::publishing::WorkspaceId::parse(&self.workspace)
            .map_err(|error| invalid_mint_field("workspace", error.to_string()))?
            .to_string();
        let mut tags = BTreeMap::new();
        if let Some(owner) = self.owner {
            let owner = Email::parse(&owner).map_err(|error| invalid_mint_field("owner", error.to_string()))?;
            tags.insert("RDE_OWNER_EMAIL".to_string(), owner.to_string());
        }
        if let Some(display_name) = self.display_name {
            tags.insert("RDE_DISPLAY_NAME".to_string(), label("display_name", &display_name)?);
        }
        if let Some(blueprint_key) = self.blueprint_key {
            let key = domain::publishing::BlueprintKey::parse(&blueprint_key)
                .map_err(|error| invalid_mint_field("blueprint_key", error.to_string()))?;
            tags.insert("BLUEPRINT_KEY".to_string(), key.to_string());
        }
        let name = match self.name {
            Some(name) => label("name", &name)?,
            None => workspace.clone(),
        };
        Ok((workspace, name, tags))
    }
}

/// Mints an agent token bound to one workspace (admin). It is shown once; only its SHA-256 is stored. An agent with
/// it may serve only that workspace, and the workspace's owner, display name and blueprint are the ones given here.
#[utoipa::path(post, path = "/api/v1/agent-tokens", tag = "relay", request_body = MintBody,
    security(("bearer" = [])),
    responses((status = 201, body = MintedToken, headers(("Cache-Control" = String, description = "no-store"))),
              (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/agent-tokens")]
async fn mint_agent_token(
    caller: Caller,
    request: HttpRequest,
    body: Json<MintBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let (workspace, name, tags) = body.into_inner().parse()?;
    let token = format!("gha_{}", random_secret()?);
    let id = sha256_hex(&token);
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    let command = AgentTokenCommand::Mint {
        name: name.clone(),
        workspace: workspace.clone(),
        tags: tags.clone(),
        by: caller.email.clone(),
    };
    relay.agent_tokens.execute(&id, command, &metadata).await.map_err(Problem::from)?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(MintedToken {
        id,
        name,
        workspace,
        tags,
        token,
    }))
}

/// Revokes an agent token (admin). Agents connected with it are disconnected at once (close 4401, so they stop) and
/// their sessions closed (4410, reason `agent_revoked`); none can connect with it again.
#[utoipa::path(delete, path = "/api/v1/agent-tokens/{id}", tag = "relay",
    params(("id" = String, Path, description = "The token's id (hex SHA-256), as minted")),
    security(("bearer" = [])),
    responses((status = 204, description = "Revoked (also when it was already)"), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/agent-tokens/{id}")]
async fn revoke_agent_token(
    caller: Caller,
    request: HttpRequest,
    path: Path<String>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let id = path.into_inner();
    if id.len() != 64 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(Problem::new(ProblemCode::NotFound, "Not found"));
    }
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    match relay
        .agent_tokens
        .execute_retrying(&id, AgentTokenCommand::Revoke { by: caller.email.clone() }, &metadata, 3)
        .await
    {
        Ok(_) | Err(CommandError::Rejected(AgentTokenError::AlreadyRevoked)) => {
            // Also when it was revoked already: a connection that slipped in before is not left behind.
            let disconnected = relay.disconnect_token(&id);
            tracing::info!(by = %caller.email, disconnected, "agent token revoked");
            Ok(HttpResponse::NoContent().finish())
        }
        Err(error) => Err(Problem::from(error)),
    }
}

/// A workspace with a connected agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceView {
    /// The workspace's id.
    id: String,
    /// Its `RDE_OWNER_EMAIL` tag.
    owner: Option<String>,
    /// Its `RDE_DISPLAY_NAME` tag.
    display_name: Option<String>,
    /// Its `BLUEPRINT_KEY` tag.
    blueprint_key: Option<String>,
    /// The agent connection's id.
    agent: String,
    /// Open sessions.
    sessions: usize,
    /// Every tag the agent announced.
    tags: BTreeMap<String, String>,
}

/// Connected workspaces.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspacePage {
    /// Ordered by id.
    items: Vec<WorkspaceView>,
}

/// Workspaces with a connected agent: admins see all, members those whose owner tag is their email.
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "relay", security(("bearer" = [])),
    responses((status = 200, body = WorkspacePage), (status = 401, body = Problem), (status = 403, body = Problem)))]
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
    Ok(HttpResponse::Ok().json(WorkspacePage { items }))
}

/// What a ticket is for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketBody {
    /// `terminal`.
    kind: String,
}

/// A one-time ticket: send it as the terminal WebSocket's first message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketView {
    /// 32 random bytes, base64url; redeemable once.
    ticket: String,
    /// When it stops being redeemable.
    expires_at: chrono::DateTime<Utc>,
}

/// Issues a one-time ticket for the workspace's terminal (the workspace's owner, or an admin).
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/tickets", tag = "relay", request_body = TicketBody,
    params(("id" = String, Path, description = "The workspace")),
    security(("bearer" = [])),
    responses((status = 201, body = TicketView, headers(("Cache-Control" = String, description = "no-store"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 503, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/workspaces/{id}/tickets")]
async fn issue_ticket(
    caller: Caller,
    request: HttpRequest,
    path: Path<String>,
    body: Json<TicketBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = path.into_inner();
    let kind = body.into_inner().kind;
    if kind != "terminal" {
        return Err(Problem::new(ProblemCode::InvalidField, "Invalid field")
            .field("kind")
            .detail("kind must be \"terminal\""));
    }
    let Some(agent) = relay.hub.get(&workspace) else {
        return Err(Problem::new(ProblemCode::NotFound, "Not found").detail("The workspace has no connected agent."));
    };
    let owns = agent.owner().is_some_and(|owner| owner.eq_ignore_ascii_case(caller.email.as_str()));
    if caller.role != Role::Admin && !owns {
        return Err(Problem::new(ProblemCode::NotWorkspaceOwner, "Forbidden")
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
    relay.tickets.execute(&ticket_hash, command, &metadata).await.map_err(Problem::from)?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(TicketView { ticket, expires_at }))
}

/// A filter value: absent or empty is no filter.
fn present(raw: Option<String>) -> Option<String> {
    raw.filter(|value| !value.is_empty())
}

fn parse_user(raw: Option<String>) -> Result<Option<String>, Problem> {
    present(raw)
        .map(|raw| {
            Email::parse(&raw).map(String::from).map_err(|error| Problem::invalid_field("user", error.to_string()))
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
                    Problem::invalid_field(field, format!("{field} is an RFC 3339 time, such as 2026-01-31T12:00:00Z"))
                })
        })
        .transpose()
}

/// Filters and paging of the session list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionListQuery {
    /// `true`: only open sessions; `false`: only closed ones.
    active: Option<String>,
    /// Only this user's.
    user: Option<String>,
    /// Only this workspace's.
    workspace: Option<String>,
    /// `terminal`.
    kind: Option<String>,
    /// Opened at or after this RFC 3339 time.
    from: Option<String>,
    /// Opened before this RFC 3339 time.
    to: Option<String>,
}

/// One terminal session.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The session's id.
    id: String,
    /// Whose.
    user: String,
    /// Which workspace.
    workspace: String,
    /// The agent connection that served it.
    agent: String,
    /// `terminal`.
    kind: String,
    /// The client's address (see `relay_trusted_proxies`; empty when unknown).
    client_ip: String,
    /// The client's `User-Agent` (at most 256 characters).
    user_agent: String,
    /// RFC 3339.
    opened_at: String,
    /// Still open.
    active: bool,
    /// RFC 3339, once closed.
    closed_at: Option<String>,
    /// Why it closed: `client_closed`, `agent_lost`, `agent_revoked`, `idle_timeout`, `max_age`, `shutdown` or
    /// `firewall`.
    reason: Option<String>,
    /// Browser → agent bytes (0 while open).
    bytes_in: i64,
    /// Agent → browser bytes (0 while open).
    bytes_out: i64,
    /// How long it lasted, once closed.
    duration_ms: Option<i64>,
}

/// Terminal sessions, newest first, from the `sessions` read model (admin).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "relay", params(SessionListQuery, api::PageParams), security(("bearer" = [])),
    responses((status = 200, body = api::Page<SessionView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/sessions")]
async fn list_sessions(
    caller: Caller,
    query: List<SessionListQuery, TimeKey>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let List { filters: query, page } = query;
    let active = match present(query.active).as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Problem::invalid_field("active", "active is true or false")),
    };
    let kind = match present(query.kind) {
        None => None,
        Some(kind) if kind == "terminal" => Some(kind),
        Some(_) => return Err(Problem::invalid_field("kind", "kind is \"terminal\"")),
    };
    let filter = SessionFilter {
        active,
        user: parse_user(query.user)?,
        workspace: present(query.workspace),
        kind,
        from: parse_time("from", query.from)?,
        to: parse_time("to", query.to)?,
    };
    let rows =
        relay.reads.sessions(&filter, page.after.as_ref(), page.fetch()).await.map_err(store::StoreError::from)?;
    let cursor = |row: &projections::SessionRow| api::encode_page_key(&row.opened_at, &row.session_id);
    let answer = Page::from_rows(rows, page.limit, cursor, |row| SessionView {
        id: row.session_id,
        user: row.user,
        workspace: row.workspace,
        agent: row.agent,
        kind: row.kind,
        client_ip: row.client_ip,
        user_agent: row.user_agent,
        opened_at: row.opened_at,
        active: row.closed_at.is_none(),
        closed_at: row.closed_at,
        reason: row.close_reason,
        bytes_in: row.bytes_in,
        bytes_out: row.bytes_out,
        duration_ms: row.duration_ms,
    });
    Ok(HttpResponse::Ok().json(answer))
}

/// Filters and paging of the relay's activity log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityListQuery {
    /// `ticket_issued`, `ticket_redeemed`, `ticket_refused` or `connection_blocked`.
    kind: Option<String>,
    /// Only this user's.
    user: Option<String>,
    /// Only this workspace's.
    workspace: Option<String>,
    /// At or after this RFC 3339 time.
    from: Option<String>,
    /// Before this RFC 3339 time.
    to: Option<String>,
}

/// One relay event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActivityView {
    /// `{aggregate type}:{aggregate id}:{sequence}`.
    id: String,
    /// RFC 3339.
    at: String,
    /// `ticket_issued`, `ticket_redeemed`, `ticket_refused` or `connection_blocked`.
    kind: String,
    /// The ticket's user (for a refusal, whom it was issued to; `null` for an unknown ticket).
    user: Option<String>,
    /// The workspace.
    workspace: String,
    /// The client's address: blocked connections and refused tickets (`null` for refusals recorded before
    /// addresses were, or when it was unknown).
    client_ip: Option<String>,
    /// A refusal's `unknown`, `expired`, `reused` or `foreign`; a block's `rule` or `default_action`.
    reason: Option<String>,
    /// The blocking rule's position.
    rule: Option<i64>,
}

/// Tickets issued, redeemed and refused, and connections the firewall blocked, newest first, from the `sessions`
/// read model (admin, auditor).
#[utoipa::path(get, path = "/api/v1/relay/activity", tag = "relay", params(ActivityListQuery, api::PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = api::Page<ActivityView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/relay/activity")]
async fn list_activity(
    caller: Caller,
    query: List<ActivityListQuery, TimeKey>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let List { filters: query, page } = query;
    let kind = match present(query.kind) {
        None => None,
        Some(kind) if ACTIVITY_KINDS.contains(&kind.as_str()) => Some(kind),
        Some(_) => {
            return Err(Problem::invalid_field(
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
    let rows =
        relay.reads.activity(&filter, page.after.as_ref(), page.fetch()).await.map_err(store::StoreError::from)?;
    let cursor = |row: &projections::ActivityRow| api::encode_page_key(&row.at, &row.activity_id);
    let answer = Page::from_rows(rows, page.limit, cursor, |row| ActivityView {
        id: row.activity_id,
        at: row.at,
        kind: row.kind,
        user: row.user,
        workspace: row.workspace,
        client_ip: row.client_ip,
        reason: row.reason,
        rule: row.rule,
    });
    Ok(HttpResponse::Ok().json(answer))
}

const ACTIVITY_KINDS: [&str; 4] = ["ticket_issued", "ticket_redeemed", "ticket_refused", "connection_blocked"];

// The domain's `FirewallAction` and `FirewallRule`, described for the OpenAPI document (`domain` has no utoipa).
/// Allow or deny.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = FirewallAction)]
#[allow(dead_code)]
enum FirewallActionDoc {
    Allow,
    Deny,
}

/// One firewall rule.
#[derive(utoipa::ToSchema)]
#[schema(as = FirewallRule)]
#[allow(dead_code)]
struct FirewallRuleDoc {
    /// What a match does.
    action: FirewallActionDoc,
    /// An IPv4 or IPv6 network, `ADDRESS/PREFIX` with the host bits zero; a bare address is a /32 or /128.
    #[schema(example = "10.0.0.0/8")]
    cidr: String,
    /// Why it exists (optional in a request).
    #[schema(required = false, default = "")]
    description: String,
}

/// The firewall's rules as an admin sets them.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirewallBody {
    /// Ordered: the first match wins (at most 1000).
    #[schema(value_type = Vec<FirewallRuleDoc>)]
    rules: Vec<FirewallRule>,
    /// What happens when no rule matches.
    #[schema(value_type = FirewallActionDoc)]
    default_action: FirewallAction,
}

/// The firewall in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FirewallView {
    /// Ordered: the first match wins.
    #[schema(value_type = Vec<FirewallRuleDoc>)]
    rules: Vec<FirewallRule>,
    /// What happens when no rule matches.
    #[schema(value_type = FirewallActionDoc)]
    default_action: FirewallAction,
    /// The firewall aggregate's version.
    version: u64,
}

/// The IP firewall's rules in force (admin, auditor).
#[utoipa::path(get, path = "/api/v1/firewall", tag = "relay", security(("bearer" = [])),
    responses((status = 200, body = FirewallView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/firewall")]
async fn get_firewall(caller: Caller, relay: web::Data<Relay>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let (firewall, version) = relay.firewall.load(FIREWALL_ID).await.map_err(Problem::from)?;
    let Firewall { rules, default_action } = firewall;
    Ok(HttpResponse::Ok().json(FirewallView { rules, default_action, version }))
}

/// Replaces the IP firewall's ordered rules and default action (admin); live sessions the new rules deny are
/// closed (4003, reason `firewall`).
#[utoipa::path(put, path = "/api/v1/firewall", tag = "relay", request_body = FirewallBody,
    security(("bearer" = [])),
    responses((status = 200, body = FirewallView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[put("/api/v1/firewall")]
async fn put_firewall(
    caller: Caller,
    request: HttpRequest,
    body: Json<FirewallBody>,
    relay: web::Data<Relay>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let FirewallBody { rules, default_action } = body.into_inner();
    let metadata = EventMetadata::for_request(caller.email.as_str(), api::request_id(&request));
    let command = FirewallCommand::Replace { rules, default_action, by: caller.email.clone() };
    relay.firewall.execute_retrying(FIREWALL_ID, command, &metadata, 5).await.map_err(Problem::from)?;
    let (firewall, version) = relay.firewall.load(FIREWALL_ID).await.map_err(Problem::from)?;
    let answer = FirewallView { rules: firewall.rules.clone(), default_action: firewall.default_action, version };
    relay.rules.send_replace(Arc::new(firewall));
    Ok(HttpResponse::Ok().json(answer))
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most `X-Forwarded-For` hop
/// that is not a trusted proxy (hops are read right to left, each header in order; an address written by an
/// untrusted party is never believed, so a client cannot spoof its way past the firewall). When every hop is a
/// trusted proxy, the left-most one is the client. A hop that is not an address (bracketed IPv6 and a `:port` are
/// accepted) ends the walk: the client is unknown (`None`), because what lies left of it cannot be trusted.
/// IPv4-mapped IPv6 addresses are reported as IPv4.
pub fn client_address<'a>(
    peer: Option<IpAddr>,
    forwarded: impl IntoIterator<Item = &'a str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?.to_canonical();
    let is_trusted = |address: IpAddr| trusted.iter().any(|cidr| cidr.contains(address));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<&str> =
        forwarded.into_iter().flat_map(|value| value.split(',')).map(str::trim).filter(|hop| !hop.is_empty()).collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = parse_hop(hop)?;
        if !is_trusted(client) {
            return Some(client);
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: `ADDRESS`, `[IPV6]`, `IPV4:PORT` or `[IPV6]:PORT`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(|v6| IpAddr::V6(v6).to_canonical())
}

/// Records a blocked attempt (logged once) and answers whether the address is denied. `user` names whose attempt
/// it was; it is asked only for a blocked one.
pub(crate) async fn blocked<F, Fut>(relay: &Relay, address: Option<IpAddr>, workspace: &str, user: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Option<Email>>,
{
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
        FirewallCommand::RecordBlocked { client_ip, rule, workspace: workspace.to_string(), user: user().await };
    if let Err(error) = relay.firewall.execute_retrying(FIREWALL_ID, command, &EventMetadata::system("relay"), 5).await
    {
        tracing::warn!(%error, "cannot record a blocked connection");
    }
    true
}

/// Requests to the WebSocket endpoints that do not ask for an upgrade: those that do never reach actix-web's
/// router (the HTTP server hands them to `relay_ws::upgrade` with their connection).
fn not_an_upgrade() -> Problem {
    Problem::new(ProblemCode::InvalidRequest, "Not a WebSocket upgrade")
        .detail("This endpoint is a WebSocket: send GET with Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key.")
}

/// An agent's WebSocket, used by `gatehouse agent` (protocol and close codes: docs/API.md, "Agent WebSocket").
/// The first message is `{"type": "hello", "token", "workspace", "tags"}`; the token never travels in the URL.
#[utoipa::path(get, path = "/api/v1/agent/connect", tag = "relay",
    responses((status = 101, description = "Switching Protocols: the agent's multiplexed WebSocket"),
              (status = 400, body = Problem, description = "Not a WebSocket upgrade"),
              (status = 426, body = Problem, description = "A WebSocket version other than 13")))]
#[get("/api/v1/agent/connect")]
async fn agent_connect() -> Result<HttpResponse, Problem> {
    Err(not_an_upgrade())
}

/// A browser's terminal WebSocket (protocol and close codes: docs/API.md, "Terminal WebSocket"). The first
/// message is `{"type": "auth", "ticket"}` with a ticket from `POST /api/v1/workspaces/{id}/tickets`; tickets never
/// travel in the URL.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/terminal", tag = "relay",
    params(("id" = String, Path, description = "The workspace")),
    responses((status = 101, description = "Switching Protocols: the terminal WebSocket"),
              (status = 400, body = Problem, description = "Not a WebSocket upgrade"),
              (status = 403, body = Problem, description = "The Origin may not open terminals"),
              (status = 426, body = Problem, description = "A WebSocket version other than 13"),
              (status = 422, body = Problem)))]
#[get("/api/v1/workspaces/{id}/terminal")]
async fn terminal(request: HttpRequest, relay: web::Data<Relay>) -> Result<HttpResponse, Problem> {
    if !crate::relay_ws::origin_allowed(request.headers(), &relay.limits.allowed_origins) {
        return Err(Problem::new(ProblemCode::Forbidden, "Forbidden").detail("This origin may not open terminals."));
    }
    Err(not_an_upgrade())
}

/// The user a ticket was issued to, without redeeming it (`None`: unknown ticket, or the store failed).
pub(crate) async fn ticket_user(relay: &Relay, ticket: &str) -> Option<Email> {
    match relay.tickets.load(&sha256_hex(ticket)).await {
        Ok((state, _)) => state.user,
        Err(error) => {
            tracing::warn!(%error, "cannot read a ticket");
            None
        }
    }
}

/// Redeems a ticket for `workspace`; the ticket's user when it wins. Every refusal is recorded, with the client's
/// address.
pub(crate) async fn redeem(relay: &Relay, ticket: &str, workspace: &str, client: Option<IpAddr>) -> Option<Email> {
    let hash = sha256_hex(ticket);
    let metadata = EventMetadata::system("relay");
    let command = TicketCommand::Redeem {
        workspace: workspace.to_string(),
        kind: "terminal".into(),
        now: Utc::now(),
        client_ip: client.map(|address| address.to_string()),
    };
    let committed = match relay.tickets.execute_retrying(&hash, command, &metadata, 5).await {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "cannot redeem a ticket");
            return None;
        }
    };
    let (state, _) = relay.tickets.load(&hash).await.ok()?;
    // A ticket is used once: its cached state would only take memory (a replay reads it from the store).
    relay.tickets.forget(&hash);
    if state.redeemed_at == Some(committed.version) {
        state.user
    } else {
        tracing::info!(workspace, client_ip = ?client, "ticket refused");
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap()
    }

    fn cidrs(raw: &[&str]) -> Vec<Cidr> {
        raw.iter().map(|cidr| Cidr::parse(cidr).unwrap()).collect()
    }

    fn client(peer: &str, forwarded: &[&str], trusted: &[&str]) -> Option<IpAddr> {
        client_address(Some(ip(peer)), forwarded.iter().copied(), &cidrs(trusted))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(client("203.0.113.9", &["10.1.2.3"], &["127.0.0.1/32"]), Some(ip("203.0.113.9")));
        assert_eq!(client("2001:db8::9", &["2001:db8::1"], &["::1/128"]), Some(ip("2001:db8::9")));
        // Spoofed from an IPv6 peer that is not a proxy; also when the proxy list is empty.
        assert_eq!(client("2001:db8::9", &["::1", "fd00::5"], &["fd00::/8", "::1/128"]), Some(ip("2001:db8::9")));
        assert_eq!(client("::1", &["2001:db8::7"], &[]), Some(ip("::1")));
        assert_eq!(client_address(None, ["2001:db8::7"], &cidrs(&["::1/128"])), None);
    }

    #[test]
    fn ipv6_clients_through_ipv6_proxies() {
        let trusted = ["::1/128", "fd00::/8"];
        assert_eq!(client("::1", &["2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("fd00::2", &["2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        // A chain: only the right-most hop that is not a trusted proxy counts; what is left of it could be forged.
        assert_eq!(client("::1", &["198.51.100.1, 2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["2001:db8::66, 2001:db8::7"], &trusted), Some(ip("2001:db8::7")));
        // Several headers are one list, in order.
        assert_eq!(client("::1", &["2001:db8::66", "2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
        // Bracketed and with a port.
        assert_eq!(client("::1", &["[2001:db8::7]"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["[2001:db8::7]:4431"], &trusted), Some(ip("2001:db8::7")));
        assert_eq!(client("::1", &["192.0.2.4:4431"], &trusted), Some(ip("192.0.2.4")));
        // An IPv4 client behind an IPv6 proxy, and IPv4-mapped addresses reported as IPv4.
        assert_eq!(client("::1", &["192.0.2.4"], &trusted), Some(ip("192.0.2.4")));
        assert_eq!(client("::1", &["::ffff:192.0.2.4"], &trusted), Some(ip("192.0.2.4")));
        assert_eq!(client("::ffff:127.0.0.1", &["2001:db8::7"], &["127.0.0.0/8"]), Some(ip("2001:db8::7")));
        assert_eq!(client("::ffff:203.0.113.9", &[], &["127.0.0.0/8"]), Some(ip("203.0.113.9")));
    }

    #[test]
    fn odd_forwarded_headers() {
        let trusted = ["::1/128", "fd00::/8"];
        // Nothing forwarded: the proxy itself.
        assert_eq!(client("::1", &[], &trusted), Some(ip("::1")));
        assert_eq!(client("::1", &[" , "], &trusted), Some(ip("::1")));
        // Only proxies: the left-most is where the request came from.
        assert_eq!(client("::1", &["fd00::9, fd00::5"], &trusted), Some(ip("fd00::9")));
        // Garbage right of the client: unknown, never the forged address left of it.
        assert_eq!(client("::1", &["2001:db8::7, unknown"], &trusted), None);
        assert_eq!(client("::1", &["2001:db8::7, fe80::1%eth0"], &trusted), None);
        // Garbage left of the client does not matter.
        assert_eq!(client("::1", &["nonsense, 2001:db8::7, fd00::5"], &trusted), Some(ip("2001:db8::7")));
    }
}
