//! The relay's REST routes: agent tokens, workspaces, tickets, sessions, relay activity and the IP firewall. The
//! gateway's rules are `relay::gateway::Gateway`'s; the WebSocket endpoints are in [`super::ws`].

use std::collections::BTreeMap;

use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use chrono::Utc;
use domain::firewall::{Firewall, FirewallAction, FirewallRule};
use domain::roster::Role;
use domain::Email;
use projections::{ActivityFilter, SessionFilter, SessionsQuery, TimeKey};
use relay::gateway::{Gateway, MintError, TicketIssueError};
use serde::{Deserialize, Serialize};
use store::EventMetadata;

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::{AppState, List, Page, Problem, ProblemCode};

/// A new agent token: the workspace it serves and what is known of that workspace.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MintBody {
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
pub(super) struct MintedToken {
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
pub(super) async fn mint_agent_token(
    caller: Caller,
    request: HttpRequest,
    body: Json<MintBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let (workspace, name, tags) = body.into_inner().parse()?;
    let metadata = EventMetadata::for_request(caller.email.as_str(), crate::request_id(&request));
    let minted = state
        .gateway
        .mint_token(name.clone(), workspace.clone(), tags.clone(), &caller.email, &metadata)
        .await
        .map_err(|error| match error {
            MintError::Command(error) => Problem::from(error),
            MintError::Random => Problem::internal(),
        })?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(MintedToken {
        id: minted.id,
        name,
        workspace,
        tags,
        token: minted.token,
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
pub(super) async fn revoke_agent_token(
    caller: Caller,
    request: HttpRequest,
    path: Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let id = path.into_inner();
    if id.len() != 64 || !id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(Problem::new(ProblemCode::NotFound, "Not found"));
    }
    let metadata = EventMetadata::for_request(caller.email.as_str(), crate::request_id(&request));
    let disconnected = state.gateway.revoke_token(&id, &caller.email, &metadata).await.map_err(Problem::from)?;
    tracing::info!(by = %caller.email, disconnected, "agent token revoked");
    Ok(HttpResponse::NoContent().finish())
}

/// A workspace with a connected agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct WorkspaceView {
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
pub(super) struct WorkspacePage {
    /// Ordered by id.
    items: Vec<WorkspaceView>,
}

/// Connected agents, by workspace: admins see all, members those whose owner tag is their email.
#[utoipa::path(get, path = "/api/v1/agents", tag = "relay", security(("bearer" = [])),
    responses((status = 200, body = WorkspacePage), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api/v1/agents")]
pub(super) async fn list_agents(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let items: Vec<WorkspaceView> = state
        .gateway
        .hub
        .list()
        .into_iter()
        .filter(|agent| Gateway::may_open(agent, &caller.email, caller.role == Role::Admin))
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
pub(super) struct TicketBody {
    /// `terminal` or `preview`.
    kind: String,
    /// For a preview: the workspace port to show (within `preview_min_port`..`preview_max_port`); default: the port
    /// of the workspace's dev server (`DEV_PORT`), if the control plane started one.
    #[serde(default, deserialize_with = "crate::extract::whole_option")]
    port: Option<u32>,
}

/// A one-time ticket: send it as the terminal WebSocket's first message, or exchange it at the preview host.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct TicketView {
    /// 32 random bytes, base64url; redeemable once.
    ticket: String,
    /// When it stops being redeemable.
    expires_at: chrono::DateTime<Utc>,
    /// For a preview: where to exchange the ticket for the preview's cookie (`GET` with `?ticket=`, or a form
    /// `POST` of `ticket`); it then redirects to the app. Its scheme and port are this request's.
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange_url: Option<String>,
}

/// Issues a one-time ticket for the workspace's terminal (the workspace's owner, or an admin).
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/tickets", tag = "relay", request_body = TicketBody,
    params(("id" = String, Path, description = "The workspace")),
    security(("bearer" = [])),
    responses((status = 201, body = TicketView, headers(("Cache-Control" = String, description = "no-store"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 503, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem)))]
#[post("/api/v1/workspaces/{id}/tickets")]
pub(super) async fn issue_ticket(
    caller: Caller,
    request: HttpRequest,
    path: Path<String>,
    body: Json<TicketBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = path.into_inner();
    let TicketBody { kind, port } = body.into_inner();
    let limits = &state.gateway.preview_limits;
    let port = match (kind.as_str(), port) {
        ("terminal", None) => None,
        ("terminal", Some(_)) => {
            return Err(Problem::invalid_field("port", "a terminal ticket takes no port"));
        }
        ("preview", Some(port)) => match u16::try_from(port).ok().filter(|port| limits.allows(*port)) {
            Some(port) => Some(port),
            None => {
                return Err(Problem::invalid_field(
                    "port",
                    format!("previews show ports {} to {}", limits.min_port, limits.max_port),
                ))
            }
        },
        // The workspace's dev server, once the control plane says which port it has (below).
        ("preview", None) => None,
        _ => {
            return Err(Problem::new(ProblemCode::InvalidField, "Invalid field")
                .field("kind")
                .detail("kind must be \"terminal\" or \"preview\""));
        }
    };
    // A control-plane workspace: its owner and status are the control plane's facts (ADR 0023). Anything else is
    // an agent an admin registered with a token that names its owner (ADR 0013).
    let known = crate::workspaces::lookup(&state, &workspace).await?;
    if let Some(known) = &known {
        let is_admin = caller.role == Role::Admin;
        if !is_admin && known.owner != caller.email {
            return Err(Problem::new(ProblemCode::NotFound, "Not found").detail("No such workspace."));
        }
        let status = known.status(crate::workspaces::connected(&state, known));
        if status != domain::workspace::Status::Running {
            return Err(Problem::new(ProblemCode::WorkspaceNotRunning, "Not running")
                .detail(format!("The workspace is {}: start it first.", status.as_str())));
        }
    }
    let port = match (kind.as_str(), port) {
        ("preview", None) => match known.as_ref().and_then(|known| known.dev_port) {
            Some(port) if limits.allows(port) => Some(port),
            _ => {
                return Err(Problem::new(ProblemCode::NoDevServer, "No dev server")
                    .detail("This workspace runs no dev server whose port a preview could default to: name the port."))
            }
        },
        _ => port,
    };
    let metadata = EventMetadata::for_request(caller.email.as_str(), crate::request_id(&request));
    let issued = state
        .gateway
        .issue_ticket(&workspace, &kind, port, &caller.email, caller.role == Role::Admin, &metadata)
        .await
        .map_err(|error| match error {
            // The same answer as for another member's control-plane workspace: nothing tells them apart.
            TicketIssueError::NoAgent => Problem::new(ProblemCode::NotFound, "Not found").detail("No such workspace."),
            TicketIssueError::NotOwner => Problem::new(ProblemCode::NotWorkspaceOwner, "Forbidden")
                .detail("Only the workspace's owner or an admin may open it."),
            TicketIssueError::Command(error) => Problem::from(error),
            TicketIssueError::Random => Problem::internal(),
        })?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(TicketView {
        exchange_url: port.map(|port| exchange_url(&request, &limits.host(&workspace, port))),
        ticket: issued.ticket,
        expires_at: issued.expires_at,
    }))
}

/// The preview host's exchange URL, with this request's scheme and port (the gateway serves both hosts).
fn exchange_url(request: &HttpRequest, host: &str) -> String {
    let info = request.connection_info();
    let port =
        info.host().rsplit_once(':').map(|(_, port)| port).filter(|port| port.bytes().all(|b| b.is_ascii_digit()));
    let authority = match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    format!("{}://{authority}{}", info.scheme(), crate::preview::AUTH_PATH)
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
pub(super) struct SessionListQuery {
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
pub(super) struct SessionView {
    /// The session's id.
    id: String,
    /// Whose.
    user: String,
    /// Which workspace.
    workspace: String,
    /// The agent connection that served it.
    agent: String,
    /// `terminal` or `preview`.
    kind: String,
    /// The workspace port a preview showed (`null` for terminals).
    port: Option<i64>,
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
    /// Why it closed: `client_closed`, `agent_lost`, `agent_revoked`, `idle_timeout`, `max_age`, `shutdown`,
    /// `firewall` or `detach_timeout`.
    reason: Option<String>,
    /// Browser → agent bytes (0 while open).
    bytes_in: i64,
    /// Agent → browser bytes (0 while open).
    bytes_out: i64,
    /// How long it lasted, once closed.
    duration_ms: Option<i64>,
    /// Browsers attached now (0 while it waits for one to resume it, and once closed).
    attached: i64,
    /// Times a browser attached after it opened: reconnects and second browsers.
    resumes: i64,
    /// RFC 3339: since when nobody is attached to the open session (it closes as `detach_timeout` after
    /// `relay_detach_timeout_secs`).
    detached_at: Option<String>,
}

/// Terminal sessions, newest first, from the `sessions` read model (admin).
#[utoipa::path(get, path = "/api/v1/sessions", tag = "relay", params(SessionListQuery, crate::PageParams), security(("bearer" = [])),
    responses((status = 200, body = crate::Page<SessionView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/sessions")]
pub(super) async fn list_sessions(
    caller: Caller,
    query: List<SessionListQuery, TimeKey>,
    state: web::Data<AppState>,
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
        Some(kind) if kind == "terminal" || kind == "preview" => Some(kind),
        Some(_) => return Err(Problem::invalid_field("kind", "kind is \"terminal\" or \"preview\"")),
    };
    let filter = SessionFilter {
        active,
        user: parse_user(query.user)?,
        workspace: present(query.workspace),
        kind,
        from: parse_time("from", query.from)?,
        to: parse_time("to", query.to)?,
    };
    let rows = SessionsQuery::new(state.store.read_models().clone())
        .sessions(&filter, page.after.as_ref(), page.fetch())
        .await
        .map_err(store::StoreError::from)?;
    let cursor = |row: &projections::SessionRow| crate::encode_page_key(&row.opened_at, &row.session_id);
    let answer = Page::from_rows(rows, page.limit, cursor, |row| SessionView {
        id: row.session_id,
        user: row.user,
        workspace: row.workspace,
        agent: row.agent,
        kind: row.kind,
        port: row.port,
        client_ip: row.client_ip,
        user_agent: row.user_agent,
        opened_at: row.opened_at,
        active: row.closed_at.is_none(),
        closed_at: row.closed_at,
        reason: row.close_reason,
        bytes_in: row.bytes_in,
        bytes_out: row.bytes_out,
        duration_ms: row.duration_ms,
        attached: row.attached,
        resumes: row.resumes,
        detached_at: row.detached_at,
    });
    Ok(HttpResponse::Ok().json(answer))
}

/// Filters and paging of the relay's activity log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ActivityListQuery {
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
pub(super) struct ActivityView {
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
#[utoipa::path(get, path = "/api/v1/relay/activity", tag = "relay", params(ActivityListQuery, crate::PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = crate::Page<ActivityView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/relay/activity")]
pub(super) async fn list_activity(
    caller: Caller,
    query: List<ActivityListQuery, TimeKey>,
    state: web::Data<AppState>,
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
    let rows = SessionsQuery::new(state.store.read_models().clone())
        .activity(&filter, page.after.as_ref(), page.fetch())
        .await
        .map_err(store::StoreError::from)?;
    let cursor = |row: &projections::ActivityRow| crate::encode_page_key(&row.at, &row.activity_id);
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
pub(super) enum FirewallActionDoc {
    Allow,
    Deny,
}

/// One firewall rule.
#[derive(utoipa::ToSchema)]
#[schema(as = FirewallRule)]
#[allow(dead_code)]
pub(super) struct FirewallRuleDoc {
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
pub(super) struct FirewallBody {
    /// Ordered: the first match wins (at most 1000).
    #[schema(value_type = Vec<FirewallRuleDoc>)]
    rules: Vec<FirewallRule>,
    /// What happens when no rule matches.
    #[schema(value_type = FirewallActionDoc)]
    default_action: FirewallAction,
}

/// The firewall in force.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct FirewallView {
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
pub(super) async fn get_firewall(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let (firewall, version) = state.gateway.firewall().await.map_err(Problem::from)?;
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
pub(super) async fn put_firewall(
    caller: Caller,
    request: HttpRequest,
    body: Json<FirewallBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let FirewallBody { rules, default_action } = body.into_inner();
    for rule in &rules {
        let description = &rule.description;
        if description.chars().count() > domain::firewall::MAX_DESCRIPTION_CHARS
            || description.chars().any(char::is_control)
        {
            return Err(Problem::invalid_field(
                "rules.description",
                format!(
                    "a rule's description is one line of at most {} characters",
                    domain::firewall::MAX_DESCRIPTION_CHARS
                ),
            ));
        }
    }
    let metadata = EventMetadata::for_request(caller.email.as_str(), crate::request_id(&request));
    let (firewall, version) =
        state.gateway.replace_firewall(rules, default_action, &caller.email, &metadata).await.map_err(Problem::from)?;
    let Firewall { rules, default_action } = firewall;
    Ok(HttpResponse::Ok().json(FirewallView { rules, default_action, version }))
}
