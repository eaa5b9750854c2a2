//! `/api/v1/members`: the roster, over HTTP.

use actix_web::http::StatusCode;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use domain::roster::{Role, Roster, RosterCommand, ROSTER_ID};
use domain::Email;
use projections::MemberRow;
use serde::{Deserialize, Serialize};
use store::{CommandError, EventMetadata};

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::{AppState, List, Problem, ProblemCode};

/// A member, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    /// The member's address.
    pub email: String,
    /// `admin`, `member` or `auditor`.
    pub role: String,
    /// `pending` until first sign-in, then `active`.
    pub status: String,
    /// Who invited them (absent for the bootstrap admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<String>,
    /// When they were invited (RFC 3339).
    pub invited_at: String,
    /// When the member last changed (RFC 3339).
    pub updated_at: String,
}

impl From<MemberRow> for MemberView {
    fn from(row: MemberRow) -> Self {
        Self {
            email: row.email,
            role: row.role,
            status: row.status,
            invited_by: row.invited_by,
            invited_at: row.invited_at,
            updated_at: row.updated_at,
        }
    }
}

/// A page of members, in address order.
pub type MemberPage = crate::Page<MemberView>;

/// An invitation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// Who to invite.
    pub email: String,
    /// `admin`, `member` or `auditor`.
    pub role: String,
}

/// A role change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    /// The new role.
    pub role: String,
}

/// The caller's own identity.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The caller's address.
    pub email: String,
    /// The caller's role.
    pub role: &'static str,
}

fn parse_email(raw: &str, field: &str) -> Result<Email, Problem> {
    Email::parse(raw).map_err(|error| {
        Problem::new(ProblemCode::InvalidField, "Invalid field").field(field).detail(error.to_string())
    })
}

fn parse_role(raw: &str) -> Result<Role, Problem> {
    Role::parse(raw).ok_or_else(|| Problem::invalid_field("role", "role is one of admin, member, auditor"))
}

/// Runs a roster command for `caller`. Roster commands do not depend on what the caller saw, so a lost race is
/// decided again on the new state (up to five times) instead of being returned as a conflict.
async fn run(state: &AppState, caller: &Caller, request: &HttpRequest, command: RosterCommand) -> Result<(), Problem> {
    let metadata = EventMetadata::for_request(caller.email.to_string(), crate::request_id(request));
    state.roster.execute_retrying(ROSTER_ID, command, &metadata, 5).await.map(drop).map_err(Problem::from)
}

/// Records a pending member's first sign-in. Failures are logged, not fatal: the next request tries again. But
/// when the store is unavailable the request fails at once (503): it waited its acquire timeout here already, and
/// going on to its own store call would make it wait a second one.
pub(crate) async fn record_sign_in(state: &AppState, email: &Email) -> Result<(), Problem> {
    let metadata = EventMetadata::for_request(email.to_string(), uuid::Uuid::new_v4().to_string());
    match state.roster.execute_retrying(ROSTER_ID, RosterCommand::SignIn { email: email.clone() }, &metadata, 5).await {
        Err(CommandError::Store(error)) if error.is_unavailable() => Err(Problem::from(error)),
        Err(error) => {
            tracing::warn!(error.message = %error, "could not record a first sign-in");
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Who am I?
#[utoipa::path(get, path = "/api/v1/me", tag = "members", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api/v1/me")]
pub async fn me(caller: Caller) -> web::Json<Me> {
    web::Json(Me { email: caller.email.to_string(), role: caller.role.as_str() })
}

/// Lists members (admins and auditors).
#[utoipa::path(get, path = "/api/v1/members", tag = "members", params(crate::PageParams), security(("bearer" = [])),
    responses((status = 200, body = crate::Page<MemberView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/members")]
pub async fn list_members(
    caller: Caller,
    state: web::Data<AppState>,
    query: List,
) -> Result<web::Json<MemberPage>, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let page = &query.page;
    let rows = state.members.list(page.after.as_deref(), page.fetch()).await.map_err(store::StoreError::from)?;
    Ok(web::Json(MemberPage::from_rows(rows, page.limit, |row| row.email.clone(), MemberView::from)))
}

/// One member (admins, auditors, and the member themself).
#[utoipa::path(get, path = "/api/v1/members/{email}", tag = "members", security(("bearer" = [])),
    responses((status = 200, body = MemberView, headers(("ETag" = String, description = "The member's version, for If-Match"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/members/{email}")]
pub async fn get_member(
    caller: Caller,
    state: web::Data<AppState>,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    let email = parse_email(&path, "email")?;
    if email != caller.email {
        caller.require(&[Role::Admin, Role::Auditor])?;
    }
    let row = state.members.get(email.as_str()).await.map_err(store::StoreError::from)?;
    let row =
        row.ok_or_else(|| Problem::new(ProblemCode::NotFound, "Not found").detail(format!("{email} is not a member")))?;
    Ok(HttpResponse::Ok().insert_header(("ETag", format!("\"{}\"", row.version))).json(MemberView::from(row)))
}

/// Invites someone (admins).
#[utoipa::path(post, path = "/api/v1/members", tag = "members", request_body = InviteRequest, security(("bearer" = [])),
    responses((status = 201, body = MemberView), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
#[post("/api/v1/members")]
pub async fn invite_member(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<InviteRequest>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let fingerprint = serde_json::json!({ "email": body.email, "role": body.role }).to_string();
    let (state, caller, request, body) = (&state, &caller, &request, &body);
    crate::idempotency::run(state, caller, request, fingerprint, |attempt| async move {
        let email = parse_email(&body.email, "email")?;
        let role = parse_role(&body.role)?;
        let command = RosterCommand::Invite { email: email.clone(), role, invited_by: caller.email.clone() };
        let invited_by = caller.email.to_string();
        let render = move |_: &Roster, _: u64| {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let member = MemberView {
                email: email.to_string(),
                role: role.as_str().to_string(),
                status: "pending".into(),
                invited_by: Some(invited_by.clone()),
                invited_at: now.clone(),
                updated_at: now,
            };
            Ok(crate::idempotency::Reply {
                status: StatusCode::CREATED,
                body: serde_json::to_value(member).map_err(|_| Problem::internal())?,
                location: Some(format!("/api/v1/members/{}", crate::path_segment(email.as_str()))),
                etag: None,
            })
        };
        let metadata =
            attempt.metadata(EventMetadata::for_request(caller.email.to_string(), crate::request_id(request)));
        let hook = attempt.before_append(render);
        state
            .roster
            .execute_retrying_prepared(ROSTER_ID, command, &metadata, 5, Some(&*hook))
            .await
            .map_err(Problem::from)?;
        attempt.prepared().ok_or_else(Problem::internal)
    })
    .await
}

/// Changes a member's role (admins). The last admin cannot be demoted.
#[utoipa::path(patch, path = "/api/v1/members/{email}", tag = "members", request_body = RoleChange, security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
              (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
#[patch("/api/v1/members/{email}")]
pub async fn change_role(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<RoleChange>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let email = parse_email(&path, "email")?;
    let role = parse_role(&body.role)?;
    let command = RosterCommand::ChangeRole {
        email,
        role,
        changed_by: caller.email.clone(),
        if_version: crate::if_match(&request)?,
    };
    run(&state, &caller, &request, command).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Removes a member (admins). The last admin cannot be removed.
#[utoipa::path(delete, path = "/api/v1/members/{email}", tag = "members", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 422, body = Problem)))]
#[delete("/api/v1/members/{email}")]
pub async fn remove_member(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let email = parse_email(&path, "email")?;
    let command =
        RosterCommand::Remove { email, removed_by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await?;
    Ok(HttpResponse::NoContent().finish())
}
