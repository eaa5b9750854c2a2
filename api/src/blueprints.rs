//! `/api/v1/blueprints` (admins; auditors read) and `/api/v1/catalog` (everyone): blueprints over HTTP (ADR 0017).
//!
//! Commands go to the blueprint's own aggregate, whose id is its key; lists and single blueprints come from the
//! `blueprints` read model. `GET /api/v1/blueprints/{key}` waits (up to two seconds) for the read model to reach the
//! aggregate's version, so an admin always reads their own write. Every change but registering takes an optional
//! `If-Match` (412 when stale) and answers `204` with the new `ETag`. The catalog judges each listed row with
//! [`domain::blueprint::catalog_entry`], from a copy of the listed rows kept until the read model moves
//! ([`crate::cache`]).
//!
//! AI provider settings are set one provider at a time (`PUT /api/v1/blueprints/{key}/ai/{provider}`); a key sent
//! there is sealed with the key ring ([`crate::vault`]) before it reaches the command, and shown again only as its
//! last four characters.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{delete, get, patch, post, put, web, HttpRequest, HttpResponse};
use domain::blueprint::{
    Acl, AclRule, AiAuthMode, AiProvider, AiProviderSettings, ApiKeyChange, Blueprint, BlueprintCommand,
    BlueprintDetails, BlueprintKey, BlueprintSource, BlueprintState, ClusterName, Description, DisplayName,
    EndpointUrl, GitBranch, GitRepository, LocalSource, ModelName, NameTemplate, NamingTemplates, Port, ProjectMode,
    ServiceName, Shell, ShellCommand, Tab, TabName, WorkspaceConfig,
};
use domain::roster::Role;
use domain::values::InvalidValue;
use projections::{AiProviderSummary, BlueprintRow};
use serde::{Deserialize, Serialize};
use store::CommandError;

use crate::auth::Caller;
use crate::extract::{Json, OptionalJson, Path, Query};
use crate::{AppState, List, Problem, ProblemCode};

// ---------------------------------------------------------------------------------------------------------------
// Wire types

/// Where workspaces come from (one kind today: `local`, Gatehouse is the control plane).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceInput {
    /// `local`.
    pub kind: String,
    /// The git repository: an `https://`, `http://`, `ssh://`, `git://` or `file://` URL, `user@host:path`, or an
    /// absolute path.
    pub repository: String,
    /// The branch workspaces start on.
    pub branch: String,
    /// The command that starts the dev server.
    #[serde(default)]
    pub dev_command: Option<String>,
    /// The ports the preview may show (at most 10, the default first).
    #[serde(default)]
    #[serde(deserialize_with = "crate::extract::whole_list")]
    pub preview_ports: Vec<u32>,
    /// The shell's absolute path (default `/bin/bash`).
    #[serde(default)]
    pub shell: Option<String>,
}

/// How projects and environments are named (placeholders `{user}`, `{blueprint}`, `{name}`, `{random}`).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamingInput {
    /// The project's name template.
    pub project: String,
    /// The environment's name template.
    pub environment: String,
}

/// A blueprint to register.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBlueprint {
    /// The key: 1–128 of `a-z 0-9 . _ -`, starting alphanumeric, no upper case. Never reused.
    pub key: String,
    /// What people call it (one line, up to 100 characters).
    pub display_name: String,
    /// What it is for (up to 2,000 characters).
    #[serde(default)]
    pub description: Option<String>,
    /// Where workspaces come from.
    pub source: SourceInput,
    /// The cluster workspaces run on (default: the default cluster).
    #[serde(default)]
    pub target_cluster: Option<String>,
    /// The service that gets terminals and the preview (default: the first).
    #[serde(default)]
    pub primary_service: Option<String>,
    /// `dedicated` (default) or `shared`.
    #[serde(default)]
    pub project_mode: Option<String>,
    /// Naming templates (default `rde-{user}-{blueprint}` and `{user}-{name}`).
    #[serde(default)]
    pub naming: Option<NamingInput>,
}

/// A change to the General tab: every field given replaces the stored one, every field left out is kept. An empty
/// `description`, `target_cluster` or `primary_service` clears it.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetailsPatch {
    /// What people call it.
    #[serde(default)]
    pub display_name: Option<String>,
    /// What it is for ("" clears it).
    #[serde(default)]
    pub description: Option<String>,
    /// Where workspaces come from (as a whole).
    #[serde(default)]
    pub source: Option<SourceInput>,
    /// The cluster ("" clears it).
    #[serde(default)]
    pub target_cluster: Option<String>,
    /// The primary service ("" clears it).
    #[serde(default)]
    pub primary_service: Option<String>,
    /// `dedicated` or `shared`.
    #[serde(default)]
    pub project_mode: Option<String>,
    /// Naming templates.
    #[serde(default)]
    pub naming: Option<NamingInput>,
}

/// A state change.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateInput {
    /// `testing`, `enabled` or `disabled`.
    pub state: String,
}

/// One access rule.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AclRuleInput {
    /// `domain` or `email`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The domain (`company.com`, matched exactly) or the address.
    pub value: String,
}

/// Every access rule at once (none: every member).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AclInput {
    /// The rules (at most 100, none twice).
    pub rules: Vec<AclRuleInput>,
}

/// One tab of the workspace layout.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TabInput {
    /// `chat`, `claude_code`, `terminal` or `custom`.
    pub kind: String,
    /// A custom tab's label.
    #[serde(default)]
    pub name: Option<String>,
    /// A custom tab's command.
    #[serde(default)]
    pub command: Option<String>,
}

fn yes() -> bool {
    true
}

/// The workspace layout, as a whole.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceInput {
    /// The tabs, in order (each built-in at most once; at most 20).
    pub tabs: Vec<TabInput>,
    /// Builders may not change the tabs (default false).
    #[serde(default)]
    pub lock_layout: bool,
    /// Show the preview panel (default true).
    #[serde(default = "yes")]
    pub preview_panel: bool,
    /// Show the path bar (default true).
    #[serde(default = "yes")]
    pub path_bar: bool,
    /// Builders may open the preview at a public URL (default false).
    #[serde(default)]
    pub public_url: bool,
}

/// One AI provider's settings as admins see them: the key never, its last four characters when one is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AiProviderView {
    /// `anthropic`, `openai` or `custom`.
    pub provider: String,
    /// Whether workspaces use it.
    pub enabled: bool,
    /// `api_key` or `user_oauth`.
    pub auth_mode: String,
    /// The model.
    pub model: String,
    /// The custom provider's endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The stored key's last four characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_last_four: Option<String>,
}

impl From<AiProviderSummary> for AiProviderView {
    fn from(summary: AiProviderSummary) -> Self {
        Self {
            provider: summary.provider.as_str().to_string(),
            enabled: summary.enabled,
            auth_mode: summary.auth_mode,
            model: summary.model,
            endpoint: summary.endpoint,
            api_key_last_four: summary.api_key_last_four,
        }
    }
}

/// A blueprint, as admins and auditors see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BlueprintView {
    /// The key.
    pub key: String,
    /// What people call it.
    pub display_name: String,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The General tab as a whole: `display_name`, `description`, `source` (`kind`, `repository`, `branch`,
    /// `dev_command`, `preview_ports`, `shell`), `target_cluster`, `primary_service`, `project_mode`, `naming`.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// `testing`, `enabled` or `disabled`.
    pub state: String,
    /// Whether it was removed (final).
    pub removed: bool,
    /// The access rules, `{type, value}` each; none: every member.
    #[schema(value_type = Vec<Object>)]
    pub acl: serde_json::Value,
    /// The workspace layout: `tabs` (`{kind}`, custom ones with `name` and `command`), `lock_layout`,
    /// `preview_panel`, `path_bar`, `public_url`.
    #[schema(value_type = Object)]
    pub workspace: serde_json::Value,
    /// The AI providers, in the chat's order of preference.
    pub ai_providers: Vec<AiProviderView>,
    /// When it was registered (RFC 3339).
    pub registered_at: String,
    /// Who registered it.
    pub registered_by: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Who last changed it.
    pub updated_by: String,
    /// Its version, as its ETag carries it.
    pub version: i64,
}

impl BlueprintView {
    /// The view of a read-model row.
    pub fn from_row(row: BlueprintRow) -> Result<Self, Problem> {
        let parse = |raw: &str| {
            serde_json::from_str::<serde_json::Value>(raw).map_err(|error| {
                tracing::error!(error.message = %error, "a blueprints row does not parse");
                Problem::internal()
            })
        };
        let ai: Vec<AiProviderSummary> = serde_json::from_str(&row.ai).map_err(|_| Problem::internal())?;
        Ok(Self {
            details: parse(&row.details)?,
            acl: parse(&row.acl)?,
            workspace: parse(&row.workspace)?,
            ai_providers: ai.into_iter().map(AiProviderView::from).collect(),
            key: row.blueprint_key,
            display_name: row.display_name,
            description: row.description,
            state: row.state,
            removed: row.removed,
            registered_at: row.registered_at,
            registered_by: row.registered_by,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
            version: row.version,
        })
    }

    /// The view of a blueprint just registered, from the aggregate (the read model follows).
    fn registered(blueprint: &Blueprint, by: &str) -> Result<Self, Problem> {
        let (Some(key), Some(details)) = (blueprint.key(), blueprint.details()) else {
            return Err(Problem::internal());
        };
        let value = |value: serde_json::Result<serde_json::Value>| value.map_err(|_| Problem::internal());
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        Ok(Self {
            key: key.to_string(),
            display_name: details.display_name.to_string(),
            description: details.description.as_ref().map(ToString::to_string),
            details: value(serde_json::to_value(details))?,
            state: blueprint.state().as_str().to_string(),
            removed: blueprint.is_removed(),
            acl: value(serde_json::to_value(blueprint.acl()))?,
            workspace: value(serde_json::to_value(blueprint.workspace()))?,
            ai_providers: Vec::new(),
            registered_at: now.clone(),
            registered_by: by.to_string(),
            updated_at: now,
            updated_by: by.to_string(),
            version: i64::try_from(blueprint.version()).unwrap_or(i64::MAX),
        })
    }
}

/// A page of blueprints, in key order.
pub type BlueprintPage = crate::Page<BlueprintView>;

/// Filters of the admin list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BlueprintListQuery {
    /// Include removed blueprints (default false).
    pub include_removed: Option<bool>,
}

/// A blueprint in the caller's catalog.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogItem {
    /// The key.
    pub key: String,
    /// What people call it.
    pub display_name: String,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Shown as "coming soon" (being tested).
    pub coming_soon: bool,
    /// The caller may create a workspace from it.
    pub launchable: bool,
}

/// The caller's catalog, in key order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Catalog {
    /// The blueprints listed for the caller.
    pub items: Vec<CatalogItem>,
}

/// A listed blueprint as the catalog cache keeps it: what it shows, and what the catalog rule judges.
#[derive(Debug, Clone)]
pub struct Listed {
    key: String,
    display_name: String,
    description: Option<String>,
    state: BlueprintState,
    acl: Acl,
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn not_found(key: &str) -> Problem {
    Problem::new(ProblemCode::NotFound, "Not found").detail(format!("No blueprint {key}."))
}

/// The key in a path: a key that cannot name a blueprint names none (404).
fn key_from_path(raw: &str) -> Result<BlueprintKey, Problem> {
    BlueprintKey::parse(raw).map_err(|_| not_found(raw))
}

fn optional<T>(raw: Option<&str>, parse: impl FnOnce(&str) -> Result<T, InvalidValue>) -> Result<Option<T>, Problem> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(raw) => parse(raw).map(Some).map_err(Problem::from),
    }
}

fn source(input: &SourceInput) -> Result<BlueprintSource, Problem> {
    if input.kind != "local" {
        return Err(Problem::invalid_field("source.kind", "the only source kind is local"));
    }
    let repository = GitRepository::parse(&input.repository).map_err(Problem::from)?;
    let branch = GitBranch::parse(&input.branch).map_err(Problem::from)?;
    let dev_command = optional(input.dev_command.as_deref(), |raw| ShellCommand::parse("source.dev_command", raw))?;
    let ports = input.preview_ports.iter().map(|port| Port::new(*port)).collect::<Result<Vec<_>, _>>();
    let shell = optional(input.shell.as_deref(), Shell::parse)?.unwrap_or_default();
    let local = LocalSource::new(repository, branch, dev_command, ports.map_err(Problem::from)?, shell)
        .map_err(Problem::from)?;
    Ok(BlueprintSource::Local(local))
}

fn project_mode(raw: &str) -> Result<ProjectMode, Problem> {
    match raw {
        "dedicated" => Ok(ProjectMode::Dedicated),
        "shared" => Ok(ProjectMode::Shared),
        _ => Err(Problem::invalid_field("project_mode", "project_mode is dedicated or shared")),
    }
}

fn naming(input: &NamingInput) -> Result<NamingTemplates, Problem> {
    Ok(NamingTemplates {
        project: NameTemplate::parse("naming.project", &input.project).map_err(Problem::from)?,
        environment: NameTemplate::parse("naming.environment", &input.environment).map_err(Problem::from)?,
    })
}

fn details(input: &RegisterBlueprint) -> Result<BlueprintDetails, Problem> {
    Ok(BlueprintDetails {
        display_name: DisplayName::parse(&input.display_name).map_err(Problem::from)?,
        description: optional(input.description.as_deref(), Description::parse)?,
        source: source(&input.source)?,
        target_cluster: optional(input.target_cluster.as_deref(), ClusterName::parse)?,
        primary_service: optional(input.primary_service.as_deref(), ServiceName::parse)?,
        project_mode: input.project_mode.as_deref().map(project_mode).transpose()?.unwrap_or_default(),
        naming: input.naming.as_ref().map(naming).transpose()?.unwrap_or_default(),
    })
}

fn patched(mut current: BlueprintDetails, patch: &DetailsPatch) -> Result<BlueprintDetails, Problem> {
    if let Some(raw) = &patch.display_name {
        current.display_name = DisplayName::parse(raw).map_err(Problem::from)?;
    }
    if let Some(raw) = &patch.description {
        current.description = optional(Some(raw), Description::parse)?;
    }
    if let Some(input) = &patch.source {
        current.source = source(input)?;
    }
    if let Some(raw) = &patch.target_cluster {
        current.target_cluster = optional(Some(raw), ClusterName::parse)?;
    }
    if let Some(raw) = &patch.primary_service {
        current.primary_service = optional(Some(raw), ServiceName::parse)?;
    }
    if let Some(raw) = &patch.project_mode {
        current.project_mode = project_mode(raw)?;
    }
    if let Some(input) = &patch.naming {
        current.naming = naming(input)?;
    }
    Ok(current)
}

fn acl_rule(input: &AclRuleInput) -> Result<AclRule, Problem> {
    AclRule::parse(&input.kind, &input.value).map_err(Problem::from)
}

fn workspace(input: &WorkspaceInput) -> Result<WorkspaceConfig, Problem> {
    let tabs = input
        .tabs
        .iter()
        .map(|tab| match tab.kind.as_str() {
            "chat" | "claude_code" | "terminal" if tab.name.is_some() || tab.command.is_some() => {
                Err(Problem::invalid_field("workspace.tabs.name", "only a custom tab has a name and a command"))
            }
            "chat" => Ok(Tab::Chat),
            "claude_code" => Ok(Tab::ClaudeCode),
            "terminal" => Ok(Tab::Terminal),
            "custom" => Ok(Tab::Custom {
                name: TabName::parse(tab.name.as_deref().unwrap_or_default()).map_err(Problem::from)?,
                command: ShellCommand::parse("workspace.tabs.command", tab.command.as_deref().unwrap_or_default())
                    .map_err(Problem::from)?,
            }),
            _ => Err(Problem::invalid_field("workspace.tabs.kind", "a tab is chat, claude_code, terminal or custom")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    WorkspaceConfig::new(tabs, input.lock_layout, input.preview_panel, input.path_bar, input.public_url)
        .map_err(Problem::from)
}

/// Runs a change on an existing blueprint and answers `204` with its new `ETag`. The command carries the caller's
/// `If-Match`, so a lost race is decided again on the winner's state: with `If-Match` that answers 412, without it
/// the change is made on the newer state (what the caller would get arriving a moment later).
async fn change(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    key: &BlueprintKey,
    command: BlueprintCommand,
) -> Result<HttpResponse, Problem> {
    let committed = state
        .blueprints
        .execute_retrying(key.as_str(), command, &crate::request_metadata(caller, request), 5)
        .await
        .map_err(Problem::from)?;
    Ok(HttpResponse::NoContent().insert_header(("ETag", crate::etag(committed.version))).finish())
}

/// Reads one blueprint from the read model, at least as new as its aggregate: when the projector has not caught up
/// yet (an admin reading their own fresh write), it waits for it, up to two seconds.
async fn read_blueprint(state: &AppState, key: &BlueprintKey) -> Result<Option<BlueprintRow>, Problem> {
    let (blueprint, version) = state.blueprints.load(key.as_str()).await.map_err(Problem::from)?;
    if !blueprint.is_registered() {
        return Ok(None);
    }
    let wanted = i64::try_from(version).unwrap_or(i64::MAX);
    let read = || async {
        state.blueprint_reads.get(key.as_str()).await.map_err(|e| Problem::from(store::StoreError::from(e)))
    };
    crate::read_own_write("blueprint", read, |row: &BlueprintRow| row.version >= wanted).await.map(Some)
}

/// The cursor of the admin list (a key).
#[derive(Debug, Clone)]
pub struct KeyCursor(String);

impl crate::PageCursor for KeyCursor {
    fn decode(raw: &str) -> Option<Self> {
        BlueprintKey::parse(raw).ok().map(|key| KeyCursor(key.to_string()))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Admin routes

/// Registers a blueprint (admins). It starts in `testing`, open to every member, with the default layout. Send an
/// `Idempotency-Key` so that a retry gets the first answer rather than 409 `blueprint_exists`.
#[utoipa::path(post, path = "/api/v1/blueprints", tag = "blueprints", request_body = RegisterBlueprint,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe")),
    security(("bearer" = [])),
    responses((status = 201, body = BlueprintView, headers(("ETag" = String, description = "The blueprint's version"),
                                                             ("Location" = String, description = "The blueprint"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/blueprints")]
pub async fn register(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<RegisterBlueprint>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let fingerprint = serde_json::to_string(&*body).map_err(|_| Problem::internal())?;
    let (state, caller, request, body) = (&state, &caller, &request, &body);
    crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        // The body's field is `key`, whatever name the value's own rule gives it.
        let key = BlueprintKey::parse_new(&body.key).map_err(|error| Problem::invalid_field("key", error.reason))?;
        let details = details(body)?;
        let command = BlueprintCommand::Register { key: key.clone(), details, by: caller.email.clone() };
        let by = caller.email.to_string();
        let render = move |blueprint: &Blueprint, version: u64| {
            let view = BlueprintView::registered(blueprint, &by)?;
            Ok(crate::idempotency::Reply {
                status: StatusCode::CREATED,
                body: serde_json::to_value(view).map_err(|_| Problem::internal())?,
                location: Some(format!(
                    "/api/v1/blueprints/{}",
                    blueprint.key().map(BlueprintKey::as_str).unwrap_or_default()
                )),
                etag: Some(crate::etag(version)),
            })
        };
        let hook = attempt.before_append(render);
        // A lost race is decided again: the winner's registration makes it 409 blueprint_exists.
        state
            .blueprints
            .execute_retrying_prepared(
                key.as_str(),
                command,
                &attempt.metadata(crate::request_metadata(caller, request)),
                5,
                Some(&*hook),
            )
            .await
            .map_err(Problem::from)?;
        attempt.prepared().ok_or_else(Problem::internal)
    })
    .await
}

/// Lists blueprints in key order (admins and auditors).
#[utoipa::path(get, path = "/api/v1/blueprints", tag = "blueprints", params(BlueprintListQuery, crate::PageParams),
    security(("bearer" = [])),
    responses((status = 200, body = crate::Page<BlueprintView>), (status = 400, body = Problem),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/blueprints")]
pub async fn list_blueprints(
    caller: Caller,
    state: web::Data<AppState>,
    query: List<BlueprintListQuery, KeyCursor>,
) -> Result<web::Json<BlueprintPage>, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let List { filters, page } = query;
    let after = page.after.as_ref().map(|cursor| cursor.0.as_str());
    let rows = state
        .blueprint_reads
        .list(after, filters.include_removed.unwrap_or(false), page.fetch())
        .await
        .map_err(store::StoreError::from)?;
    let views = rows
        .into_iter()
        .map(|row| Ok((row.blueprint_key.clone(), BlueprintView::from_row(row)?)))
        .collect::<Result<Vec<_>, Problem>>()?;
    Ok(web::Json(crate::Page::from_rows(views, page.limit, |(key, _)| key.clone(), |(_, view)| view)))
}

/// One blueprint (admins and auditors), removed ones too.
#[utoipa::path(get, path = "/api/v1/blueprints/{key}", tag = "blueprints", security(("bearer" = [])),
    responses((status = 200, body = BlueprintView, headers(("ETag" = String, description = "The blueprint's version, for If-Match"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/blueprints/{key}")]
pub async fn get_blueprint(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let key = key_from_path(&path)?;
    let row = read_blueprint(&state, &key).await?.ok_or_else(|| not_found(key.as_str()))?;
    let version = row.version;
    Ok(HttpResponse::Ok().insert_header(("ETag", format!("\"{version}\""))).json(BlueprintView::from_row(row)?))
}

/// Changes the General tab (admins): the fields given replace the stored ones. With `If-Match`, only if unchanged.
#[utoipa::path(patch, path = "/api/v1/blueprints/{key}", tag = "blueprints", request_body = DetailsPatch,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[patch("/api/v1/blueprints/{key}")]
pub async fn update_details(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<DetailsPatch>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let if_version = crate::if_match(&request)?;
    // The patch applies to the details of one version: the command runs only on that version, so a change made
    // in between is never overwritten by fields the caller did not send.
    let (blueprint, version) = state.blueprints.load(key.as_str()).await.map_err(Problem::from)?;
    let current = blueprint.details().cloned().ok_or_else(|| not_found(key.as_str()))?;
    let details = patched(current, &body)?;
    let command = BlueprintCommand::UpdateDetails { details, by: caller.email.clone(), if_version };
    let committed = state
        .blueprints
        .execute_expecting(key.as_str(), command, &crate::request_metadata(&caller, &request), Some(version))
        .await
        .map_err(|error| match error {
            // Without If-Match the caller named no version: a change in between is a race to retry, not a 412.
            CommandError::VersionMismatch { .. } if if_version.is_none() => {
                Problem::from(CommandError::<domain::blueprint::BlueprintError>::Conflict)
            }
            error => Problem::from(error),
        })?;
    Ok(HttpResponse::NoContent().insert_header(("ETag", crate::etag(committed.version))).finish())
}

/// Enables, disables or sets testing (admins); the current state again is 409 `state_unchanged`.
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/state", tag = "blueprints", request_body = StateInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/state")]
pub async fn set_state(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<StateInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let new_state = BlueprintState::parse(&body.state).map_err(Problem::from)?;
    let command = BlueprintCommand::SetState {
        state: new_state,
        by: caller.email.clone(),
        if_version: crate::if_match(&request)?,
    };
    change(&state, &caller, &request, &key, command).await
}

/// Replaces every access rule (admins); none opens the blueprint to every member.
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/acl", tag = "blueprints", request_body = AclInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/acl")]
pub async fn replace_acl(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<AclInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let rules = body.rules.iter().map(acl_rule).collect::<Result<Vec<_>, _>>()?;
    let acl = Acl::new(rules).map_err(Problem::from)?;
    let command =
        BlueprintCommand::ReplaceAcl { acl, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    change(&state, &caller, &request, &key, command).await
}

/// Adds one access rule (admins); a rule already there is 409 `duplicate_acl_rule`.
#[utoipa::path(post, path = "/api/v1/blueprints/{key}/acl", tag = "blueprints", request_body = AclRuleInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[post("/api/v1/blueprints/{key}/acl")]
pub async fn add_acl_rule(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<AclRuleInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let rule = acl_rule(&body)?;
    let command =
        BlueprintCommand::AddAclRule { rule, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    change(&state, &caller, &request, &key, command).await
}

/// Which rule to remove, when the query names it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRuleQuery {
    /// `domain` or `email`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The domain or the address.
    pub value: Option<String>,
}

/// Removes one access rule (admins), named by the body (`{"type": "domain", "value": "company.com"}`); an unknown
/// rule is 404. A client that cannot send a body with DELETE may name the rule in the query instead
/// (`?type=domain&value=company.com`, never both).
#[utoipa::path(delete, path = "/api/v1/blueprints/{key}/acl", tag = "blueprints",
    params(("key" = String, Path, description = "The blueprint's key")),
    request_body = AclRuleInput, security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[delete("/api/v1/blueprints/{key}/acl")]
pub async fn remove_acl_rule(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    query: Query<AclRuleQuery>,
    body: OptionalJson<AclRuleInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let named = match (&body.value, &query.kind, &query.value) {
        (Some(rule), None, None) => rule.clone(),
        (None, Some(kind), Some(value)) => AclRuleInput { kind: kind.clone(), value: value.clone() },
        (Some(_), _, _) => {
            return Err(Problem::invalid_field("type", "name the rule in the body or the query, not both"))
        }
        (None, None, _) => return Err(Problem::invalid_field("type", "name the rule's type and value")),
        (None, Some(_), None) => return Err(Problem::invalid_field("value", "name the rule's type and value")),
    };
    let rule = acl_rule(&named)?;
    let command =
        BlueprintCommand::RemoveAclRule { rule, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    change(&state, &caller, &request, &key, command).await
}

/// Replaces the workspace layout (admins).
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/workspace", tag = "blueprints", request_body = WorkspaceInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/workspace")]
pub async fn configure_workspace(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<WorkspaceInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let workspace = workspace(&body)?;
    let command = BlueprintCommand::ConfigureWorkspace {
        workspace,
        by: caller.email.clone(),
        if_version: crate::if_match(&request)?,
    };
    change(&state, &caller, &request, &key, command).await
}

/// Removes a blueprint for good (admins): no new workspaces, no more changes, and its key is never registered again.
#[utoipa::path(delete, path = "/api/v1/blueprints/{key}", tag = "blueprints", security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[delete("/api/v1/blueprints/{key}")]
pub async fn remove_blueprint(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(&path)?;
    let command = BlueprintCommand::Remove { by: caller.email.clone(), if_version: crate::if_match(&request)? };
    change(&state, &caller, &request, &key, command).await
}

// ---------------------------------------------------------------------------------------------------------------
// Catalog

/// The caller's catalog (every member): enabled blueprints the ACL allows, testing ones as "coming soon"
/// (launchable by admins only); disabled and removed ones never. Admins pass every ACL.
#[utoipa::path(get, path = "/api/v1/catalog", tag = "blueprints", security(("bearer" = [])),
    responses((status = 200, body = Catalog), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/catalog")]
pub async fn catalog(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    // The listed rows are the same for everyone until the read model moves: served from memory (crate::cache).
    let listed = match state.caches.catalog.get(&()) {
        Some(listed) => listed,
        None => {
            let revision = state.caches.catalog.revision();
            let rows = state.blueprint_reads.listed().await.map_err(store::StoreError::from)?;
            let listed = rows
                .into_iter()
                .map(|row| {
                    let broken = || {
                        tracing::error!(blueprint = %row.blueprint_key, "a blueprints row does not parse");
                        Problem::internal()
                    };
                    let state = BlueprintState::parse(&row.state).map_err(|_| broken())?;
                    let acl: Acl = serde_json::from_str(&row.acl).map_err(|_| broken())?;
                    Ok(Listed {
                        key: row.blueprint_key,
                        display_name: row.display_name,
                        description: row.description,
                        state,
                        acl,
                    })
                })
                .collect::<Result<Vec<_>, Problem>>()?;
            let listed = Arc::new(listed);
            state.caches.catalog.insert(revision, (), listed.clone());
            listed
        }
    };
    let is_admin = caller.role == Role::Admin;
    let entries: Vec<_> = listed
        .iter()
        .map(|blueprint| {
            domain::blueprint::catalog_entry(blueprint.state, false, &blueprint.acl, &caller.email, is_admin)
        })
        .collect();
    // What this caller sees, one code per listed blueprint: the key of the serialized catalog they share with
    // everyone who sees the same (tagged with the revision `listed` came from, like `listed` itself).
    let view: Vec<u8> = entries
        .iter()
        .map(|entry| entry.as_ref().map_or(0, |entry| 1 + u8::from(entry.coming_soon) + 2 * u8::from(entry.launchable)))
        .collect();
    let body = match state.caches.catalog_pages.get(&view) {
        Some(body) => body,
        None => {
            let revision = state.caches.catalog_pages.revision();
            let items = listed
                .iter()
                .zip(&entries)
                .filter_map(|(blueprint, entry)| {
                    let entry = entry.as_ref()?;
                    Some(CatalogItem {
                        key: blueprint.key.clone(),
                        display_name: blueprint.display_name.clone(),
                        description: blueprint.description.clone(),
                        coming_soon: entry.coming_soon,
                        launchable: entry.launchable,
                    })
                })
                .collect();
            let body = web::Bytes::from(serde_json::to_vec(&Catalog { items }).map_err(|_| Problem::internal())?);
            // Only if `listed` is still current: otherwise this body may be older than the revision now known.
            if state.caches.catalog.get(&()).is_some_and(|current| Arc::ptr_eq(&current, &listed)) {
                state.caches.catalog_pages.insert(revision, view, body.clone());
            }
            body
        }
    };
    Ok(HttpResponse::Ok().content_type("application/json").body(body))
}

// ---------------------------------------------------------------------------------------------------------------
// AI providers

/// Anthropic's settings (all of them but the key, which is write-only).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnthropicInput {
    /// Whether workspaces use it.
    pub enabled: bool,
    /// `api_key` (the organisation's key, below; the default) or `user_oauth` (each builder signs in).
    #[serde(default)]
    pub auth_mode: Option<String>,
    /// The model, as Anthropic spells it (printable ASCII without spaces).
    pub model: String,
    /// The API key, write-only: absent keeps the stored one, `null` removes it, a string (12 to 3,000 characters of
    /// printable ASCII without spaces) replaces it. Enabled on `api_key`, a key must be stored or sent.
    #[serde(default, deserialize_with = "crate::org::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub api_key: Option<Option<crate::org::SecretInput>>,
}

/// OpenAI's settings (all of them but the key, which is write-only); OpenAI is used with the organisation's key.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiInput {
    /// Whether workspaces use it.
    pub enabled: bool,
    /// `api_key` (the only mode; may be left out).
    #[serde(default)]
    pub auth_mode: Option<String>,
    /// The model, as OpenAI spells it (printable ASCII without spaces).
    pub model: String,
    /// The API key, write-only: absent keeps the stored one, `null` removes it, a string replaces it. Enabled, a
    /// key must be stored or sent.
    #[serde(default, deserialize_with = "crate::org::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub api_key: Option<Option<crate::org::SecretInput>>,
}

/// A custom OpenAI-compatible provider's settings (all of them but the key, which is write-only).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomAiInput {
    /// Whether workspaces use it.
    pub enabled: bool,
    /// `api_key` (the only mode; may be left out).
    #[serde(default)]
    pub auth_mode: Option<String>,
    /// The model, as the endpoint spells it (printable ASCII without spaces).
    pub model: String,
    /// The endpoint: an `https://` or `http://` URL of at most 2,048 characters.
    pub endpoint: String,
    /// The API key, write-only: absent keeps the stored one, `null` removes it, a string replaces it. Enabled, a
    /// key must be stored or sent.
    #[serde(default, deserialize_with = "crate::org::present")]
    #[schema(value_type = Option<String>, nullable)]
    pub api_key: Option<Option<crate::org::SecretInput>>,
}

/// A value the server takes exactly as sent: surrounding white space is refused rather than trimmed.
fn untrimmed<'a>(field: &'static str, raw: &'a str) -> Result<&'a str, Problem> {
    if raw.trim() != raw {
        return Err(Problem::invalid_field(field, format!("{field} has no surrounding white space")));
    }
    Ok(raw)
}

/// What every provider's route does: check, seal the key, set.
#[allow(clippy::too_many_arguments)]
async fn set_provider(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    raw_key: &str,
    provider: AiProvider,
    enabled: bool,
    auth_mode: Option<&str>,
    model: &str,
    endpoint: Option<&str>,
    api_key: Option<Option<crate::org::SecretInput>>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(raw_key)?;
    let if_version = crate::if_match(request)?;
    let auth_mode =
        AiAuthMode::parse(auth_mode.unwrap_or("api_key")).map_err(|e| Problem::invalid_field("auth_mode", e.reason))?;
    let model = ModelName::parse(untrimmed("model", model)?).map_err(|e| Problem::invalid_field("model", e.reason))?;
    let endpoint = match endpoint {
        Some(raw) => Some(
            EndpointUrl::parse(untrimmed("endpoint", raw)?)
                .map_err(|e| Problem::invalid_field("endpoint", e.reason))?,
        ),
        None => None,
    };
    let settings = AiProviderSettings::new(provider, enabled, auth_mode, model, endpoint)
        .map_err(|error| Problem::invalid_field(error.field.trim_start_matches("ai."), error.reason))?;
    let api_key =
        match api_key {
            None => ApiKeyChange::Keep,
            Some(None) if settings.needs_api_key() => return Err(Problem::invalid_field(
                "api_key",
                "an enabled provider on auth mode api_key keeps its key: send a new one, or disable the provider first",
            )),
            Some(None) => ApiKeyChange::Remove,
            Some(Some(secret)) => ApiKeyChange::Replace(state.vault.seal(
                "api_key",
                secret.into_secret(),
                &crate::vault::ai_binding(&key, provider),
            )?),
        };
    let command = BlueprintCommand::SetAiProvider { settings, api_key, by: caller.email.clone(), if_version };
    change(state, caller, request, &key, command).await
}

/// Sets Anthropic's settings (admins). A key sent is sealed before it is stored; `GET` shows its last four
/// characters only.
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/ai/anthropic", tag = "blueprints", request_body = AnthropicInput,
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/ai/anthropic")]
pub async fn set_anthropic(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<AnthropicInput>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let (mode, model) = (body.auth_mode.as_deref(), body.model.as_str());
    set_provider(&state, &caller, &request, &path, AiProvider::Anthropic, body.enabled, mode, model, None, body.api_key)
        .await
}

/// Sets OpenAI's settings (admins), as Anthropic's.
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/ai/openai", tag = "blueprints", request_body = OpenAiInput,
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/ai/openai")]
pub async fn set_openai(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<OpenAiInput>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let (mode, model) = (body.auth_mode.as_deref(), body.model.as_str());
    set_provider(&state, &caller, &request, &path, AiProvider::OpenAi, body.enabled, mode, model, None, body.api_key)
        .await
}

/// Sets the custom provider's settings (admins), as Anthropic's, with its endpoint.
#[utoipa::path(put, path = "/api/v1/blueprints/{key}/ai/custom", tag = "blueprints", request_body = CustomAiInput,
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/blueprints/{key}/ai/custom")]
pub async fn set_custom_ai(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<CustomAiInput>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let (mode, model, endpoint) = (body.auth_mode.as_deref(), body.model.as_str(), Some(body.endpoint.as_str()));
    set_provider(
        &state,
        &caller,
        &request,
        &path,
        AiProvider::Custom,
        body.enabled,
        mode,
        model,
        endpoint,
        body.api_key,
    )
    .await
}

/// Forgets one AI provider and its key.
async fn clear_provider(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    raw_key: &str,
    provider: AiProvider,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let key = key_from_path(raw_key)?;
    let command =
        BlueprintCommand::ClearAiProvider { provider, by: caller.email.clone(), if_version: crate::if_match(request)? };
    change(state, caller, request, &key, command).await
}

/// Forgets Anthropic's settings and key (admins); not configured is 404.
#[utoipa::path(delete, path = "/api/v1/blueprints/{key}/ai/anthropic", tag = "blueprints",
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[delete("/api/v1/blueprints/{key}/ai/anthropic")]
pub async fn clear_anthropic(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    clear_provider(&state, &caller, &request, &path, AiProvider::Anthropic).await
}

/// Forgets OpenAI's settings and key (admins); not configured is 404.
#[utoipa::path(delete, path = "/api/v1/blueprints/{key}/ai/openai", tag = "blueprints",
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[delete("/api/v1/blueprints/{key}/ai/openai")]
pub async fn clear_openai(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    clear_provider(&state, &caller, &request, &path, AiProvider::OpenAi).await
}

/// Forgets the custom provider's settings and key (admins); not configured is 404.
#[utoipa::path(delete, path = "/api/v1/blueprints/{key}/ai/custom", tag = "blueprints",
    params(("key" = String, Path, description = "The blueprint's key")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[delete("/api/v1/blueprints/{key}/ai/custom")]
pub async fn clear_custom_ai(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    clear_provider(&state, &caller, &request, &path, AiProvider::Custom).await
}
