//! `/api/v1/workspaces`: launching workspaces from the catalog, their lifecycle, and the lists (ADR 0023).
//!
//! The seed's two-client model: each route checks the caller (role, ownership, the blueprint's state and ACL, the
//! running limit) and records a request on the owner's `Workspaces` aggregate; the control plane's reconciler
//! (`controlplane::Reconciler`, woken here) carries it out and records what happened. So a route answers at once
//! (`201`/`202`) with the workspace `deploying` or `stopped`, and its status moves as the facts arrive.
//!
//! A workspace is found by its owner's aggregate: the caller's own first (no read model involved, so an owner
//! always sees their fresh launch), else, for admins, through the read model's owner column (an owner never
//! changes). A member asking for another member's workspace gets 404, as for one that does not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use async_trait::async_trait;
use controlplane::{Credential, CredentialSource, PlaneError, Presence};
use domain::blueprint::BlueprintSource;
use domain::org::{Credential as OrgCredential, ORG_ID};
use domain::portal::PORTAL_ID;
use domain::publishing::WorkspaceId;
use domain::roster::Role;
use domain::values::BlueprintKey;
use domain::workspace::{Status, Workspace, WorkspaceCommand, WorkspaceName, Workspaces};
use domain::Email;
use projections::{TimeKey, WorkspaceFilter, WorkspaceRow};
use relay::gateway::Gateway;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::{AppState, List, Problem, ProblemCode};

/// Whether the workspace's agent, started for `generation`, is connected: the relay's hub, through the token tag
/// the control plane minted it with.
pub struct HubPresence(pub Arc<Gateway>);

impl Presence for HubPresence {
    fn connected(&self, workspace: &str, generation: u64) -> bool {
        self.0.hub.get(workspace).is_some_and(|agent| {
            agent.tags.get(controlplane::local::TAG_GENERATION).is_some_and(|tag| *tag == generation.to_string())
        })
    }
}

/// Opens the organisation's `admin_api_token` for a control-plane call (the local control plane asks for none).
pub struct OrgCredentials {
    /// The organisation aggregate.
    pub org: Arc<store::AggregateRepository<domain::org::Org>>,
    /// The key ring.
    pub vault: Arc<crate::vault::Vault>,
}

#[async_trait]
impl CredentialSource for OrgCredentials {
    async fn open(&self) -> Result<Credential, PlaneError> {
        let (org, _) =
            self.org.load(ORG_ID).await.map_err(|error| PlaneError::transient(format!("the store: {error}")))?;
        let Some(key) = org.credential(OrgCredential::AdminApiToken) else {
            return Err(PlaneError::permanent("the organisation's admin API token is not set (PUT /api/v1/org)"));
        };
        let secret = self
            .vault
            .open(&key.sealed, &crate::vault::org_binding(OrgCredential::AdminApiToken))
            .map_err(|_| PlaneError::permanent("the admin API token does not open with the key ring in use"))?;
        Ok(Some(zeroize::Zeroizing::new(secret.expose().to_string())))
    }
}

#[async_trait]
impl publisher::GitTokenSource for OrgCredentials {
    async fn open(&self) -> Result<Option<zeroize::Zeroizing<String>>, String> {
        let (org, _) = self.org.load(ORG_ID).await.map_err(|error| format!("the store: {error}"))?;
        let Some(key) = org.credential(OrgCredential::GitToken) else { return Ok(None) };
        let secret = self
            .vault
            .open(&key.sealed, &crate::vault::org_binding(OrgCredential::GitToken))
            .map_err(|_| "the git_token does not open with the key ring in use".to_string())?;
        Ok(Some(zeroize::Zeroizing::new(secret.expose().to_string())))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Wire types

/// A launch: which blueprint, and the new workspace's name.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchBody {
    /// A blueprint of the caller's catalog that they may launch.
    pub blueprint_key: String,
    /// One line, 1 to 63 characters; unique among the caller's workspaces, ignoring case.
    pub name: String,
}

/// A rename.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// One line, 1 to 63 characters; unique among the owner's workspaces, ignoring case.
    pub name: String,
}

/// Why the current generation failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailureView {
    /// The phase: `validating`, `creating_project`, `cloning_blueprint`, `configuring`, `deploying`,
    /// `finalizing`, or `running` (it ran, then stopped working).
    pub phase: String,
    /// What went wrong.
    pub reason: String,
}

/// A workspace.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceView {
    /// Its id.
    pub id: String,
    /// Its name (`RDE_DISPLAY_NAME`).
    pub name: String,
    /// `running`, `stopped`, `deploying` or `error` (derived from the control plane's facts and whether its agent
    /// is connected).
    pub status: String,
    /// Its owner (`RDE_OWNER_EMAIL`).
    pub owner: String,
    /// Its blueprint (`BLUEPRINT_KEY`).
    pub blueprint_key: String,
    /// When it was launched (RFC 3339; absent for a moment after the launch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The last provisioning phase its current start reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why it failed (status `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
    /// The dev server's port inside the workspace (`DEV_PORT`), while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_port: Option<u16>,
    /// The discovery tags the control plane holds for it.
    pub tags: BTreeMap<String, String>,
    /// Changes so far (its `ETag`).
    pub revision: u64,
    /// The caller's own tags on it (tags are personal: another user's are never shown).
    pub user_tags: Vec<UserTagView>,
}

/// One of the caller's tags, as shown on a workspace.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserTagView {
    /// The tag's id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// The caller's tags on each workspace, by workspace id, from the tags read model (lists follow their read models).
async fn assigned_tags(
    state: &AppState,
    caller: &Caller,
) -> Result<std::collections::HashMap<String, Vec<UserTagView>>, Problem> {
    let rows = state.tag_reads.assigned(caller.email.as_str()).await.map_err(store::StoreError::from)?;
    let mut by_workspace: std::collections::HashMap<String, Vec<UserTagView>> = Default::default();
    for (workspace, id, name) in rows {
        by_workspace.entry(workspace).or_default().push(UserTagView { id, name });
    }
    Ok(by_workspace)
}

/// The caller's tags on each workspace, by workspace id, from the caller's tags aggregate.
async fn tags_by_workspace(
    state: &AppState,
    caller: &Caller,
) -> Result<std::collections::HashMap<String, Vec<UserTagView>>, Problem> {
    let (tags, _) = state.tags.load(caller.email.as_str()).await.map_err(Problem::from)?;
    let mut by_workspace: std::collections::HashMap<String, Vec<UserTagView>> = Default::default();
    for (id, tag) in tags.tags() {
        for workspace in &tag.workspaces {
            by_workspace
                .entry(workspace.clone())
                .or_default()
                .push(UserTagView { id: id.to_string(), name: tag.name.as_str().to_string() });
        }
    }
    Ok(by_workspace)
}

impl WorkspaceView {
    fn new(workspace: &Workspace, connected: bool, created_at: Option<String>) -> Self {
        Self {
            id: workspace.id.to_string(),
            name: workspace.name.to_string(),
            status: workspace.status(connected).as_str().to_string(),
            owner: workspace.owner.to_string(),
            blueprint_key: workspace.blueprint_key.to_string(),
            created_at,
            phase: workspace.phase.map(|phase| phase.as_str().to_string()),
            failure: workspace.failure.as_ref().map(|failure| FailureView {
                phase: failure.phase.as_str().to_string(),
                reason: failure.reason.clone(),
            }),
            dev_port: workspace.dev_port,
            tags: workspace.tags(),
            revision: workspace.revision,
            user_tags: Vec::new(),
        }
    }

    fn from_row(row: &WorkspaceRow, status: Status) -> Self {
        let tags = BTreeMap::from([
            (domain::workspace::TAG_PROJECT.to_string(), row.project_id.clone()),
            (domain::workspace::TAG_BLUEPRINT.to_string(), row.blueprint_key.clone()),
            (domain::workspace::TAG_OWNER.to_string(), row.owner.clone()),
            (domain::workspace::TAG_DISPLAY_NAME.to_string(), row.name.clone()),
        ]);
        Self {
            id: row.workspace_id.clone(),
            name: row.name.clone(),
            status: status.as_str().to_string(),
            owner: row.owner.clone(),
            blueprint_key: row.blueprint_key.clone(),
            created_at: Some(row.created_at.clone()),
            phase: row.phase.clone(),
            failure: row
                .failure_phase
                .clone()
                .map(|phase| FailureView { phase, reason: row.failure_reason.clone().unwrap_or_default() }),
            dev_port: row.dev_port.and_then(|port| u16::try_from(port).ok()),
            tags,
            revision: u64::try_from(row.revision).unwrap_or(0),
            user_tags: Vec::new(),
        }
    }
}

/// A page of workspaces.
pub type WorkspacePage = crate::Page<WorkspaceView>;

/// Filters of the workspace list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkspaceListQuery {
    /// `running`, `stopped`, `deploying` or `error`.
    pub status: Option<String>,
    /// Only this blueprint's.
    pub blueprint_key: Option<String>,
    /// Only this owner's (admins; members see only their own and may name only themselves).
    pub owner: Option<String>,
    /// Only those whose name or owner contains this, ignoring case (1 to 100 characters).
    pub q: Option<String>,
    /// Only those carrying this tag of the caller's (a tag id; another user's or an unknown one lists nothing).
    pub tag: Option<String>,
}

/// The admins' counters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkspaceSummary {
    /// Workspaces running.
    pub running: usize,
    /// Workspaces stopped.
    pub stopped: usize,
    /// Workspaces being created or started.
    pub deploying: usize,
    /// Workspaces whose last start failed.
    pub error: usize,
    /// Every workspace (not deleted).
    pub total: usize,
    /// Blueprints with at least one workspace.
    pub blueprints: usize,
}

// ---------------------------------------------------------------------------------------------------------------
// Finding a workspace

/// Whether the workspace's agent of its current generation is connected.
pub fn connected(state: &AppState, workspace: &Workspace) -> bool {
    HubPresence(state.gateway.clone()).connected(workspace.id.as_str(), workspace.generation)
}

/// A control-plane workspace by id, whoever owns it (`None`: no such workspace, or deleted), with its owner's
/// aggregate version. For the relay and publishing, which decide themselves what the caller may do with it.
pub async fn lookup(state: &AppState, id: &str) -> Result<Option<Workspace>, Problem> {
    let Some(row) = state.workspace_reads.get(id).await.map_err(store::StoreError::from)? else { return Ok(None) };
    let (aggregate, _) = state.workspaces.load(&row.owner).await.map_err(Problem::from)?;
    Ok(aggregate.get(id).cloned())
}

/// The workspace `id` if the caller may see it: their own, or any for admins. Otherwise 404, whether it exists or
/// not (a member never learns of another member's workspace).
pub async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<Workspace, Problem> {
    let missing = || Problem::new(ProblemCode::NotFound, "Not found").detail("No such workspace.");
    if WorkspaceId::parse(id).is_err() {
        return Err(missing());
    }
    let (own, _) = state.workspaces.load(caller.email.as_str()).await.map_err(Problem::from)?;
    if let Some(workspace) = own.get(id) {
        return Ok(workspace.clone());
    }
    if caller.role != Role::Admin {
        return Err(missing());
    }
    lookup(state, id).await?.ok_or_else(missing)
}

/// The running limit the caller is held to when acting on `owner`'s workspaces: members their own portal limit;
/// admins none (docs/API.md).
async fn limit_for(state: &AppState, caller: &Caller) -> Result<Option<u32>, Problem> {
    if caller.role == Role::Admin {
        return Ok(None);
    }
    let (portal, _) = state.portal.load(PORTAL_ID).await.map_err(Problem::from)?;
    Ok(Some(portal.limits().running_workspaces_per_user))
}

fn etag_of(workspace: &Workspace) -> String {
    crate::etag(workspace.revision)
}

// ---------------------------------------------------------------------------------------------------------------
// Routes

/// Launches a workspace from a blueprint of the caller's catalog (members and admins). Checks the blueprint is
/// launchable for the caller (state and ACL; `testing` ones for admins only), the caller's running limit (members;
/// admins are exempt) and the launch rate limit; then the control plane provisions it: follow `status` and
/// `phase`. Send an `Idempotency-Key` so that a retried launch never creates two workspaces.
#[utoipa::path(post, path = "/api/v1/workspaces", tag = "workspaces", request_body = LaunchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    security(("bearer" = [])),
    responses((status = 201, body = WorkspaceView, headers(("Location" = String, description = "The workspace"),
                                                             ("ETag" = String, description = "Its revision"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/workspaces")]
pub async fn launch(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<LaunchBody>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let fingerprint = serde_json::to_string(&*body).map_err(|_| Problem::internal())?;
    let (state, caller, request, body) = (&state, &caller, &request, &body);
    let response = crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        let name = WorkspaceName::parse(&body.name).map_err(Problem::from)?;
        let key = BlueprintKey::parse(&body.blueprint_key).map_err(Problem::from)?;
        state.limits.check_launch(caller)?;
        let not_found = || {
            Problem::new(ProblemCode::NotFound, "Not found")
                .field("blueprint_key")
                .detail("No such blueprint in your catalog.")
        };
        let (blueprint, _) = state.blueprints.load(key.as_str()).await.map_err(Problem::from)?;
        let entry = blueprint.catalog_entry(&caller.email, caller.role == Role::Admin).ok_or_else(not_found)?;
        if !entry.launchable {
            return Err(Problem::new(ProblemCode::BlueprintNotLaunchable, "Not launchable")
                .field("blueprint_key")
                .detail("This blueprint is being tested: only admins launch it for now."));
        }
        let details = blueprint.details().ok_or_else(not_found)?;
        let BlueprintSource::Local(spec) = &details.source;
        let id = WorkspaceId::parse(&format!("ws-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]))
            .map_err(|_| Problem::internal())?;
        let command = WorkspaceCommand::Launch {
            workspace: id.clone(),
            owner: caller.email.clone(),
            name,
            blueprint_key: key.clone(),
            project_id: format!("local/{key}"),
            spec: spec.clone(),
            limit: limit_for(state, caller).await?,
            by: caller.email.clone(),
        };
        let render_id = id.to_string();
        let render = move |aggregate: &Workspaces, _version: u64| {
            let workspace = aggregate.get(&render_id).ok_or_else(Problem::internal)?;
            Ok(crate::idempotency::Reply {
                status: StatusCode::CREATED,
                body: serde_json::to_value(WorkspaceView::new(workspace, false, None))
                    .map_err(|_| Problem::internal())?,
                location: Some(format!("/api/v1/workspaces/{render_id}")),
                etag: Some(etag_of(workspace)),
            })
        };
        let hook = attempt.before_append(render);
        state
            .workspaces
            .execute_retrying_prepared(
                caller.email.as_str(),
                command,
                &attempt.metadata(crate::request_metadata(caller, request)),
                10,
                Some(&*hook),
            )
            .await
            .map_err(Problem::from)?;
        attempt.prepared().ok_or_else(Problem::internal)
    })
    .await?;
    state.reconciler.wake(&caller.email);
    Ok(response)
}

/// Workspaces, newest first: the caller's own for members, everyone's for admins, who may filter by owner.
/// Filters: `status`, `blueprint_key`, `owner`, `q` (a name or owner search, ignoring case).
#[utoipa::path(get, path = "/api/v1/workspaces", tag = "workspaces", params(WorkspaceListQuery, crate::PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = crate::Page<WorkspaceView>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/workspaces")]
pub async fn list_workspaces(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    query: List<WorkspaceListQuery, TimeKey>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    // The same page for the same caller and query until the read model, the connected agents or the caller's tags
    // change: served from memory (crate::cache).
    let cache = &state.caches.workspace_pages;
    let revision = cache.revision();
    let key = (
        caller.email.to_string(),
        request.query_string().to_string(),
        state.gateway.hub.epoch(),
        state.caches.revisions.current("tags"),
    );
    if let Some(body) = cache.get(&key) {
        return Ok(HttpResponse::Ok().content_type("application/json").body(body));
    }
    let List { filters: query, page: paging } = query;
    let status = query.status.as_deref().map(|raw| Status::parse("status", raw)).transpose().map_err(Problem::from)?;
    let owner = match query.owner.as_deref() {
        None => None,
        Some(raw) => Some(Email::parse(raw).map_err(|error| Problem::invalid_field("owner", error.to_string()))?),
    };
    let owner = match caller.role {
        Role::Admin => owner,
        _ => match owner {
            Some(other) if other != caller.email => {
                return Err(
                    Problem::new(ProblemCode::Forbidden, "Forbidden").detail("Members list only their own workspaces.")
                )
            }
            _ => Some(caller.email.clone()),
        },
    };
    let search = match query.q.as_deref() {
        None => None,
        Some(raw) => Some(domain::values::line("q", raw, 100).map_err(Problem::from)?),
    };
    let ids = match query.tag.as_deref() {
        None => None,
        Some(tag) => {
            Some(state.tag_reads.workspaces_of(caller.email.as_str(), tag).await.map_err(store::StoreError::from)?)
        }
    };
    let filter = WorkspaceFilter {
        owner: owner.map(String::from),
        blueprint_key: query.blueprint_key.clone(),
        search,
        status,
        ids,
    };
    let mut tagged = assigned_tags(&state, &caller).await?;
    let limit = usize::try_from(paging.limit).unwrap_or(usize::MAX);
    let fetch = paging.fetch();
    let mut after = paging.after;
    let mut items: Vec<(String, WorkspaceView)> = Vec::new();
    let mut more = false;
    // The status depends on the agents' presence, which the read model does not hold: rows are fetched by their
    // stored facts and judged here, until the page is full or the list ends.
    'fetch: loop {
        let rows = state.workspace_reads.list(&filter, after.as_ref(), fetch).await.map_err(store::StoreError::from)?;
        let fetched = rows.len();
        for row in rows {
            after = Some(TimeKey { at: row.created_at.clone(), id: row.workspace_id.clone() });
            let shown = row_status(&state, &row);
            if status.is_some_and(|wanted| wanted != shown) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break 'fetch;
            }
            let mut view = WorkspaceView::from_row(&row, shown);
            view.user_tags = tagged.remove(&row.workspace_id).unwrap_or_default();
            items.push((row.created_at.clone(), view));
        }
        if i64::try_from(fetched).unwrap_or(i64::MAX) < fetch {
            break;
        }
    }
    let next = if more { items.last().map(|(at, view)| crate::encode_page_key(at, &view.id)) } else { None };
    let page = crate::Page { items: items.into_iter().map(|(_, view)| view).collect(), next };
    let body = actix_web::web::Bytes::from(serde_json::to_vec(&page).map_err(|_| Problem::internal())?);
    cache.insert(revision, key, body.clone());
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

fn row_status(state: &AppState, row: &WorkspaceRow) -> Status {
    let generation = u64::try_from(row.generation).unwrap_or(0);
    row.status(HubPresence(state.gateway.clone()).connected(&row.workspace_id, generation))
}

/// The admins' counters: workspaces by status, and how many blueprints have workspaces.
#[utoipa::path(get, path = "/api/v1/admin/workspaces/summary", tag = "workspaces", security(("bearer" = [])),
    responses((status = 200, body = WorkspaceSummary), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api/v1/admin/workspaces/summary")]
pub async fn workspace_summary(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let rows = state.workspace_reads.unremoved().await.map_err(store::StoreError::from)?;
    let mut summary = WorkspaceSummary { running: 0, stopped: 0, deploying: 0, error: 0, total: 0, blueprints: 0 };
    let mut blueprints = std::collections::BTreeSet::new();
    for row in rows.iter().filter(|row| !row.is_deleted()) {
        summary.total += 1;
        blueprints.insert(row.blueprint_key.as_str());
        match row_status(&state, row) {
            Status::Running => summary.running += 1,
            Status::Stopped => summary.stopped += 1,
            Status::Deploying => summary.deploying += 1,
            Status::Error => summary.error += 1,
        }
    }
    summary.blueprints = blueprints.len();
    Ok(HttpResponse::Ok().json(summary))
}

/// One workspace (its owner, or an admin; anyone else gets 404).
#[utoipa::path(get, path = "/api/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 200, body = WorkspaceView, headers(("ETag" = String, description = "Its revision"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/workspaces/{id}")]
pub async fn get_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = find(&state, &caller, &path).await?;
    let created_at = state
        .workspace_reads
        .get(workspace.id.as_str())
        .await
        .map_err(store::StoreError::from)?
        .map(|row| row.created_at);
    let mut view = WorkspaceView::new(&workspace, connected(&state, &workspace), created_at);
    view.user_tags = tags_by_workspace(&state, &caller).await?.remove(workspace.id.as_str()).unwrap_or_default();
    Ok(HttpResponse::Ok().insert_header(("ETag", etag_of(&workspace))).json(view))
}

/// Records a lifecycle request on the workspace's owner and wakes the control plane; answers with the workspace
/// as the request left it.
async fn act(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    workspace: &Workspace,
    command: WorkspaceCommand,
    status: StatusCode,
) -> Result<HttpResponse, Problem> {
    let metadata = crate::request_metadata(caller, request);
    state.workspaces.execute_retrying(workspace.owner.as_str(), command, &metadata, 10).await.map_err(Problem::from)?;
    state.reconciler.wake(&workspace.owner);
    if status == StatusCode::NO_CONTENT {
        return Ok(HttpResponse::NoContent().finish());
    }
    let (aggregate, _) = state.workspaces.load(workspace.owner.as_str()).await.map_err(Problem::from)?;
    let current = aggregate.get(workspace.id.as_str()).ok_or_else(Problem::internal)?;
    let view = WorkspaceView::new(current, connected(state, current), None);
    Ok(HttpResponse::build(status).insert_header(("ETag", etag_of(current))).json(view))
}

/// Starts a stopped (or failed) workspace (its owner, or an admin). Members are held to their running limit.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/start", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 202, body = WorkspaceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/workspaces/{id}/start")]
pub async fn start_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = find(&state, &caller, &path).await?;
    let limit = limit_for(&state, &caller).await?;
    let command = WorkspaceCommand::Start { workspace: workspace.id.clone(), limit, by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::ACCEPTED).await
}

/// Stops a workspace (its owner, or an admin): its processes end, its files stay.
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/stop", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 202, body = WorkspaceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/workspaces/{id}/stop")]
pub async fn stop_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = find(&state, &caller, &path).await?;
    let command = WorkspaceCommand::Stop { workspace: workspace.id.clone(), by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::ACCEPTED).await
}

/// Restarts a workspace that is wanted running (its owner, or an admin).
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/restart", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 202, body = WorkspaceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/workspaces/{id}/restart")]
pub async fn restart_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = find(&state, &caller, &path).await?;
    let command = WorkspaceCommand::Restart { workspace: workspace.id.clone(), by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::ACCEPTED).await
}

/// Upgrades a workspace to its blueprint's current settings (admins): the files stay; a running workspace
/// restarts with them. A removed blueprint has no settings to take (404).
#[utoipa::path(post, path = "/api/v1/workspaces/{id}/upgrade", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 202, body = WorkspaceView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/workspaces/{id}/upgrade")]
pub async fn upgrade_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let workspace = find(&state, &caller, &path).await?;
    let (blueprint, _) = state.blueprints.load(workspace.blueprint_key.as_str()).await.map_err(Problem::from)?;
    let details = blueprint.details().filter(|_| !blueprint.is_removed()).ok_or_else(|| {
        Problem::new(ProblemCode::NotFound, "Not found").detail("The workspace's blueprint was removed.")
    })?;
    let BlueprintSource::Local(spec) = &details.source;
    let command =
        WorkspaceCommand::Upgrade { workspace: workspace.id.clone(), spec: spec.clone(), by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::ACCEPTED).await
}

/// Renames a workspace (its owner, or an admin).
#[utoipa::path(patch, path = "/api/v1/workspaces/{id}", tag = "workspaces", request_body = RenameBody,
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 200, body = WorkspaceView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[patch("/api/v1/workspaces/{id}")]
pub async fn rename_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<RenameBody>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let name = WorkspaceName::parse(&body.name).map_err(Problem::from)?;
    let workspace = find(&state, &caller, &path).await?;
    let command = WorkspaceCommand::Rename { workspace: workspace.id.clone(), name, by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::OK).await
}

/// Deletes a workspace (its owner, or an admin): the control plane stops everything and removes its files. Not
/// undoable.
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace")), security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/workspaces/{id}")]
pub async fn delete_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let workspace = find(&state, &caller, &path).await?;
    let command = WorkspaceCommand::Delete { workspace: workspace.id.clone(), by: caller.email.clone() };
    act(&state, &caller, &request, &workspace, command, StatusCode::NO_CONTENT).await
}
