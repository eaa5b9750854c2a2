//! `/api/v1/org` (admins; auditors read) and `/api/v1/admin/secrets` (key rotation): the organisation's setup and
//! its write-only credentials (ADR 0021), sealed with the key ring before they reach a command ([`crate::vault`]).
//!
//! The organisation is one small aggregate, read straight from the repository (its cache holds it), so a `GET`
//! after a `PUT` always shows the write. Credentials are never returned: `GET` shows whether each is set and its
//! last four characters. Every change takes an optional `If-Match` and answers `204` with the new `ETag`.

use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use domain::blueprint::ApiKeyChange;
use domain::org::{
    ControlPlaneKind, Credential, DisplayName, GitProvider, GitProviderKind, Org, OrgCommand, OrgProfile, ORG_ID,
};
use domain::roster::Role;
use secrets::Secret;
use serde::{Deserialize, Deserializer, Serialize};

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::vault::{self, Holders, RewrapReport, SecretsStatus};
use crate::{AppState, Problem};

// ---------------------------------------------------------------------------------------------------------------
// Wire types

/// A plaintext secret in a request body: printed as `[redacted]`, wiped when dropped.
pub struct SecretInput(Secret);

impl<'de> Deserialize<'de> for SecretInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|text| SecretInput(Secret::new(text)))
    }
}

impl std::fmt::Debug for SecretInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SecretInput {
    /// The plaintext, moved out.
    pub fn into_secret(self) -> Secret {
        self.0
    }
}

/// A write-only field: absent keeps the stored value, `null` clears it, a string replaces it.
pub(crate) fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<SecretInput>>, D::Error> {
    Option::<SecretInput>::deserialize(deserializer).map(Some)
}

/// The control plane.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneInput {
    /// `local` (Gatehouse runs workspaces on its own host).
    pub kind: String,
}

/// The Git provider approved work is published to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitInput {
    /// `local` (a repository on disk or a plain git remote), `github` or `gitlab`.
    pub provider: String,
    /// The API's base URL for GitHub Enterprise or self-managed GitLab (`https://` or `http://`); absent or ""
    /// for the public service. Not for `local`.
    #[serde(default)]
    pub base_url: Option<String>,
}

/// The organisation's setup ("Configure Portal").
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgInput {
    /// The organisation's name (one line, up to 100 characters).
    pub name: String,
    /// What runs workspaces.
    pub control_plane: ControlPlaneInput,
    /// Where approved work goes (default: `local`).
    #[serde(default)]
    pub git: Option<GitInput>,
    /// The control plane's admin API token, write-only: absent keeps the stored one, `null` clears it, a string
    /// (12 to 3,000 characters of printable ASCII without spaces) replaces it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable)]
    pub admin_api_token: Option<Option<SecretInput>>,
}

/// A credential's new value.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// The token: 12 to 3,000 characters of printable ASCII without spaces. Write-only.
    #[schema(value_type = String)]
    pub value: SecretInput,
}

/// The control plane, as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ControlPlaneView {
    /// `local`.
    pub kind: String,
}

/// The Git provider, as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GitView {
    /// `local`, `github` or `gitlab`.
    pub provider: String,
    /// The API's base URL, when not the public service's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
}

/// One credential, as shown: never its value.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    /// `admin_api_token` or `git_token`.
    pub name: String,
    /// Whether it is set.
    pub set: bool,
    /// Its last four characters, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_four: Option<String>,
}

/// The organisation, as admins and auditors see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrgView {
    /// Whether an admin configured it (when not, the other fields are absent and the portal shows its setup).
    pub configured: bool,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What runs workspaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneView>,
    /// Where approved work goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<GitView>,
    /// Every credential, set or not.
    pub credentials: Vec<CredentialView>,
    /// The version (also the `ETag`).
    pub version: u64,
}

impl OrgView {
    fn of(org: &Org) -> Self {
        let profile = org.profile();
        Self {
            configured: profile.is_some(),
            name: profile.map(|profile| profile.name.to_string()),
            control_plane: profile.map(|profile| ControlPlaneView { kind: profile.control_plane.as_str().into() }),
            git: profile.map(|profile| GitView {
                provider: profile.git.kind.as_str().into(),
                base_url: profile.git.base_url.as_ref().map(ToString::to_string),
            }),
            credentials: Credential::ALL
                .into_iter()
                .map(|credential| {
                    let stored = org.credential(credential);
                    CredentialView {
                        name: credential.as_str().into(),
                        set: stored.is_some(),
                        last_four: stored.map(|key| key.last_four.to_string()),
                    }
                })
                .collect(),
            version: org.version(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn credential_from_path(raw: &str) -> Result<Credential, Problem> {
    Credential::parse(raw).ok_or_else(|| {
        Problem::not_found(format!(
            "There is no credential {raw:?}; the credentials are {}.",
            Credential::ALL.map(Credential::as_str).join(" and ")
        ))
    })
}

fn profile(input: &OrgInput) -> Result<OrgProfile, Problem> {
    let name = DisplayName::parse(&input.name).map_err(|error| Problem::invalid_field("name", error.reason))?;
    let control_plane = ControlPlaneKind::parse(&input.control_plane.kind).map_err(Problem::from)?;
    let git = match &input.git {
        None => GitProvider::default(),
        Some(git) => {
            let kind = GitProviderKind::parse(&git.provider).map_err(Problem::from)?;
            let base_url = git.base_url.as_deref().filter(|raw| !raw.trim().is_empty());
            if base_url.is_some_and(|raw| raw.trim() != raw) {
                return Err(Problem::invalid_field("git.base_url", "git.base_url has no surrounding white space"));
            }
            GitProvider::new(kind, base_url).map_err(Problem::from)?
        }
    };
    Ok(OrgProfile { name, control_plane, git })
}

async fn run(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    command: OrgCommand,
) -> Result<HttpResponse, Problem> {
    let committed = state
        .org
        .execute_retrying(ORG_ID, command, &crate::request_metadata(caller, request), 5)
        .await
        .map_err(Problem::from)?;
    Ok(HttpResponse::NoContent().insert_header(("ETag", crate::etag(committed.version))).finish())
}

/// The aggregates holding secrets.
pub fn holders(state: &AppState) -> Holders {
    Holders { store: state.store.clone(), org: state.org.clone(), blueprints: state.blueprints.clone() }
}

// ---------------------------------------------------------------------------------------------------------------
// Routes

/// The organisation (admins and auditors): its setup and which credentials are set, never their values.
#[utoipa::path(get, path = "/api/v1/org", tag = "org", security(("bearer" = [])),
    responses((status = 200, body = OrgView, headers(("ETag" = String, description = "The version, for If-Match"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/org")]
pub async fn get_org(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let (org, version) = state.org.load(ORG_ID).await.map_err(Problem::from)?;
    Ok(HttpResponse::Ok().insert_header(("ETag", crate::etag(version))).json(OrgView::of(&org)))
}

/// Sets up or changes the organisation (admins), and optionally its admin API token in the same step.
#[utoipa::path(put, path = "/api/v1/org", tag = "org", request_body = OrgInput, security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/org")]
pub async fn configure_org(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<OrgInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let if_version = crate::if_match(&request)?;
    let mut body = body.into_inner();
    let profile = profile(&body)?;
    let admin_api_token = match body.admin_api_token.take() {
        None => ApiKeyChange::Keep,
        Some(None) => ApiKeyChange::Remove,
        Some(Some(token)) => ApiKeyChange::Replace(state.vault.seal(
            "admin_api_token",
            token.into_secret(),
            &vault::org_binding(Credential::AdminApiToken),
        )?),
    };
    let command = OrgCommand::Configure { profile, admin_api_token, by: caller.email.clone(), if_version };
    run(&state, &caller, &request, command).await
}

/// Sets or replaces one credential (admins): `admin_api_token` (the control plane's) or `git_token` (the Git
/// provider's). The organisation must be configured (409 `org_not_configured`).
#[utoipa::path(put, path = "/api/v1/org/credentials/{name}", tag = "org", request_body = CredentialInput,
    params(("name" = String, Path, description = "`admin_api_token` or `git_token`")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/org/credentials/{name}")]
pub async fn set_credential(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    body: Json<CredentialInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let credential = credential_from_path(&path)?;
    let if_version = crate::if_match(&request)?;
    let value = state.vault.seal("value", body.into_inner().value.into_secret(), &vault::org_binding(credential))?;
    let command = OrgCommand::SetCredential { credential, value, by: caller.email.clone(), if_version };
    run(&state, &caller, &request, command).await
}

/// Clears one credential (admins); one not set is 404.
#[utoipa::path(delete, path = "/api/v1/org/credentials/{name}", tag = "org",
    params(("name" = String, Path, description = "`admin_api_token` or `git_token`")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 412, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/org/credentials/{name}")]
pub async fn clear_credential(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let credential = credential_from_path(&path)?;
    let if_version = crate::if_match(&request)?;
    let command = OrgCommand::ClearCredential { credential, by: caller.email.clone(), if_version };
    run(&state, &caller, &request, command).await
}

/// Which keys the current secrets use (admins and auditors): the ring's key ids (the primary first), key ids
/// secrets use that the ring lacks, and each secret by name with its key id and whether it opens now (each is
/// decrypted and dropped; no secret material is returned).
#[utoipa::path(get, path = "/api/v1/admin/secrets", tag = "org", security(("bearer" = [])),
    responses((status = 200, body = SecretsStatus), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 503, body = Problem)))]
#[get("/api/v1/admin/secrets")]
pub async fn secrets_status(caller: Caller, state: web::Data<AppState>) -> Result<web::Json<SecretsStatus>, Problem> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    let secrets = vault::inventory(&holders(&state)).await.map_err(Problem::from)?;
    Ok(web::Json(vault::status(&state.vault, &secrets)))
}

/// Key rotation (admins): reads the key file again (when the ring comes from one), then re-encrypts every secret
/// that is not under the primary key, one event each, while the service keeps serving. Idempotent: run it again
/// after a crash or a failure, and it finishes what is left. A key file lacking a key that current secrets use is
/// refused (409 `key_ring_refused`) and the ring in use stays.
#[utoipa::path(post, path = "/api/v1/admin/secrets/rewrap", tag = "org", security(("bearer" = [])),
    responses((status = 200, body = RewrapReport), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 503, body = Problem)))]
#[post("/api/v1/admin/secrets/rewrap")]
pub async fn rewrap(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<web::Json<RewrapReport>, Problem> {
    caller.require(&[Role::Admin])?;
    let holders = holders(&state);
    let secrets = vault::inventory(&holders).await.map_err(Problem::from)?;
    match state.vault.reload(&secrets) {
        Ok(_) | Err(vault::ReloadError::NotAFile) => {}
        Err(error) => return Err(vault::reload_problem(&error)),
    }
    let report =
        vault::rewrap_all(&state.vault, &holders, Some(&caller.email), &crate::request_metadata(&caller, &request))
            .await
            .map_err(Problem::from)?;
    tracing::info!(
        rewrapped = report.rewrapped,
        already_current = report.already_current,
        superseded = report.superseded,
        failed = report.failed.len(),
        primary_key_id = %report.primary_key_id,
        "secrets rewrapped"
    );
    Ok(web::Json(report))
}
