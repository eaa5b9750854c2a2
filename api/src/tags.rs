//! `/api/v1/tags` and `/api/v1/workspaces/{id}/tags/{tag}`: a user's own tags and their assignment to the user's own
//! workspaces (shared/spec/portal.md §2.14). Tags are personal: nobody else sees or uses them, admins included, and a
//! tag is assigned only to its owner's workspaces. The workspace list filters by one (`?tag=`).

use actix_web::{delete, get, patch, post, put, web, HttpRequest, HttpResponse};
use domain::publishing::WorkspaceId;
use domain::roster::Role;
use domain::tags::{TagCommand, TagId, TagName, UserTags};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::{AppState, Problem, ProblemCode};

/// A new tag, or a new name for one.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagInput {
    /// One line, 1 to 32 characters; unique among the caller's tags, ignoring case.
    pub name: String,
}

/// A tag.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TagView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The caller's workspaces it is assigned to.
    pub workspaces: Vec<String>,
}

/// The caller's tags.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TagList {
    /// By name.
    pub items: Vec<TagView>,
}

/// Tag `id` as shown: its workspaces are those of the caller's that still exist (a deleted workspace's assignments
/// stay in the tag's history, and go from the read model).
fn view(aggregate: &UserTags, id: &str, live: &domain::workspace::Workspaces) -> Result<TagView, Problem> {
    let tag = aggregate.get(id).ok_or_else(Problem::internal)?;
    Ok(TagView {
        id: id.to_string(),
        name: tag.name.as_str().to_string(),
        workspaces: tag.workspaces.iter().filter(|workspace| live.get(workspace).is_some()).cloned().collect(),
    })
}

/// The caller's tags and workspaces, as the store has them now.
async fn load(state: &AppState, caller: &Caller) -> Result<(UserTags, domain::workspace::Workspaces), Problem> {
    let (tags, _) = state.tags.load(caller.email.as_str()).await.map_err(Problem::from)?;
    let (workspaces, _) = state.workspaces.load(caller.email.as_str()).await.map_err(Problem::from)?;
    Ok((tags, workspaces))
}

fn missing() -> Problem {
    Problem::new(ProblemCode::NotFound, "Not found").detail("No such tag.")
}

/// The caller's tag `raw` (another user's or an unknown one: 404).
async fn own_tag(state: &AppState, caller: &Caller, raw: &str) -> Result<TagId, Problem> {
    let tag = TagId::parse(raw).map_err(|_| missing())?;
    let (tags, _) = state.tags.load(caller.email.as_str()).await.map_err(Problem::from)?;
    tags.get(tag.as_str()).ok_or_else(missing)?;
    Ok(tag)
}

async fn run(state: &AppState, caller: &Caller, request: &HttpRequest, command: TagCommand) -> Result<(), Problem> {
    let metadata = crate::request_metadata(caller, request);
    state.tags.execute_retrying(caller.email.as_str(), command, &metadata, 10).await.map_err(Problem::from)?;
    Ok(())
}

/// The caller's tags, by name, each with the workspaces it is on (members and admins).
#[utoipa::path(get, path = "/api/v1/tags", tag = "workspaces", security(("bearer" = [])),
    responses((status = 200, body = TagList), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api/v1/tags")]
pub async fn list_tags(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let (tags, live) = load(&state, &caller).await?;
    let mut items: Vec<TagView> = tags.tags().map(|(id, _)| view(&tags, id, &live)).collect::<Result<_, _>>()?;
    items.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then_with(|| a.id.cmp(&b.id)));
    Ok(HttpResponse::Ok().json(TagList { items }))
}

/// Creates a tag (members and admins, for themselves).
#[utoipa::path(post, path = "/api/v1/tags", tag = "workspaces", request_body = TagInput, security(("bearer" = [])),
    responses((status = 201, body = TagView, headers(("Location" = String, description = "The tag"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/tags")]
pub async fn create_tag(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<TagInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let name = TagName::parse(&body.name).map_err(Problem::from)?;
    let id = format!("tag-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let tag = TagId::parse(&id).map_err(|_| Problem::internal())?;
    run(&state, &caller, &request, TagCommand::Create { tag, name }).await?;
    let (tags, live) = load(&state, &caller).await?;
    Ok(HttpResponse::Created().insert_header(("Location", format!("/api/v1/tags/{id}"))).json(view(&tags, &id, &live)?))
}

/// Renames one of the caller's tags.
#[utoipa::path(patch, path = "/api/v1/tags/{id}", tag = "workspaces", request_body = TagInput,
    params(("id" = String, Path, description = "The tag")), security(("bearer" = [])),
    responses((status = 200, body = TagView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[patch("/api/v1/tags/{id}")]
pub async fn rename_tag(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<TagInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let name = TagName::parse(&body.name).map_err(Problem::from)?;
    let tag = own_tag(&state, &caller, &path).await?;
    run(&state, &caller, &request, TagCommand::Rename { tag: tag.clone(), name }).await?;
    let (tags, live) = load(&state, &caller).await?;
    Ok(HttpResponse::Ok().json(view(&tags, tag.as_str(), &live)?))
}

/// Deletes one of the caller's tags and its assignments.
#[utoipa::path(delete, path = "/api/v1/tags/{id}", tag = "workspaces",
    params(("id" = String, Path, description = "The tag")), security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/tags/{id}")]
pub async fn delete_tag(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let tag = own_tag(&state, &caller, &path).await?;
    run(&state, &caller, &request, TagCommand::Delete { tag }).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller's own workspace `id`, for tagging: another's is 404 for a member, 403 for an admin (who may see it,
/// but tags only their own).
async fn own_workspace(state: &AppState, caller: &Caller, id: &str) -> Result<WorkspaceId, Problem> {
    let workspace = crate::workspaces::find(state, caller, id).await?;
    if workspace.owner != caller.email {
        return Err(Problem::new(ProblemCode::Forbidden, "Forbidden").detail("Tags go on your own workspaces."));
    }
    Ok(workspace.id)
}

/// Puts one of the caller's tags on one of their workspaces (idempotent).
#[utoipa::path(put, path = "/api/v1/workspaces/{id}/tags/{tag}", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace"), ("tag" = String, Path, description = "The tag")),
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/workspaces/{id}/tags/{tag}")]
pub async fn assign_tag(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let (workspace, tag) = path.into_inner();
    let workspace = own_workspace(&state, &caller, &workspace).await?;
    let tag = own_tag(&state, &caller, &tag).await?;
    run(&state, &caller, &request, TagCommand::Assign { tag, workspace }).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Takes one of the caller's tags off one of their workspaces (idempotent).
#[utoipa::path(delete, path = "/api/v1/workspaces/{id}/tags/{tag}", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace"), ("tag" = String, Path, description = "The tag")),
    security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/workspaces/{id}/tags/{tag}")]
pub async fn unassign_tag(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<(String, String)>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let (workspace, tag) = path.into_inner();
    let workspace = own_workspace(&state, &caller, &workspace).await?;
    let tag = own_tag(&state, &caller, &tag).await?;
    run(&state, &caller, &request, TagCommand::Unassign { tag, workspace }).await?;
    Ok(HttpResponse::NoContent().finish())
}
