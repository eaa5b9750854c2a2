//! `/api/v1/portal`: branding, logos, the welcome screen and per-user limits (every member reads; admins change).
//!
//! One `portal` aggregate, read directly (its repository caches it), so a read after a write shows it. Each part is
//! replaced as a whole and answers `204` with the new `ETag`; `If-Match` is optional. Logos are uploaded as the raw
//! image (`Content-Type: image/png` or `image/svg+xml`, at most 256 KiB), judged by their bytes, and served with
//! headers under which a script inside an SVG never runs: `Content-Security-Policy: default-src 'none';
//! style-src 'unsafe-inline'; sandbox`, `X-Content-Type-Options: nosniff`, `Content-Disposition: inline`.

use actix_web::http::header;
use actix_web::{delete, get, put, web, HttpRequest, HttpResponse};
use domain::portal::{
    AccentColour, Branding, Label, Limits, Logo, LogoError, LogoVariant, Portal, PortalCommand, Welcome, WelcomeText,
    MAX_LOGO_BYTES, PORTAL_ID,
};
use domain::roster::Role;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::{AppState, Problem, ProblemCode};

/// What the portal is called when no admin named it.
pub const DEFAULT_NAME: &str = "Developer Portal";

// ---------------------------------------------------------------------------------------------------------------
// Wire types

/// Name and accent colour; a field left out or `null` is the default.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BrandingInput {
    /// The portal's name: header and browser title (one line, up to 100 characters).
    #[serde(default)]
    pub name: Option<String>,
    /// The accent colour, `#rrggbb`.
    #[serde(default)]
    pub accent_color: Option<String>,
}

/// The welcome screen; a field left out or `null` is the frontend's default.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WelcomeInput {
    /// The title (one line, up to 100 characters).
    #[serde(default)]
    pub title: Option<String>,
    /// The description (up to 2,000 characters; newlines allowed).
    #[serde(default)]
    pub description: Option<String>,
    /// The call-to-action button's text (one line, up to 100 characters).
    #[serde(default)]
    pub cta: Option<String>,
}

/// Per-user limits.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// Workspaces one user may have running at once (1 to 1,000; default 3).
    #[serde(deserialize_with = "crate::extract::whole")]
    pub running_workspaces_per_user: u32,
    /// Workspace launches per minute per user (1 to 10,000; default 5).
    #[serde(deserialize_with = "crate::extract::whole")]
    pub launches_per_minute: u32,
    /// API requests per minute per user (1 to 1,000,000; default 200).
    #[serde(deserialize_with = "crate::extract::whole")]
    pub api_requests_per_minute: u32,
}

/// A logo, as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogoView {
    /// Where to fetch it (with the bearer token).
    pub url: String,
    /// `image/png` or `image/svg+xml`.
    pub content_type: String,
    /// SHA-256 of its bytes (also its `ETag`).
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: usize,
}

/// Branding, as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BrandingView {
    /// The portal's name.
    pub name: String,
    /// The accent colour, when set (else the frontend's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accent_color: Option<String>,
    /// The light logo, when uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_light: Option<LogoView>,
    /// The dark logo, when uploaded (else dark themes use the light one: `/logos/dark` serves it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_dark: Option<LogoView>,
}

/// The welcome screen, as shown (absent parts: the frontend's defaults).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WelcomeView {
    /// The title.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The call-to-action text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cta: Option<String>,
}

/// Limits, as shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LimitsView {
    /// Workspaces one user may have running at once.
    pub running_workspaces_per_user: u32,
    /// Workspace launches per minute per user.
    pub launches_per_minute: u32,
    /// API requests per minute per user.
    pub api_requests_per_minute: u32,
}

/// The portal's settings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PortalView {
    /// Name, accent colour, logos.
    pub branding: BrandingView,
    /// The welcome screen.
    pub welcome: WelcomeView,
    /// Per-user limits.
    pub limits: LimitsView,
    /// The version (also the `ETag`).
    pub version: u64,
}

impl PortalView {
    fn of(portal: &Portal) -> Self {
        let logo = |variant: LogoVariant| {
            portal.logo(variant).map(|logo| LogoView {
                url: format!("/api/v1/portal/logos/{}", variant.as_str()),
                content_type: logo.format.content_type().into(),
                sha256: logo.sha256.clone(),
                bytes: logo.bytes.as_slice().len(),
            })
        };
        let branding = portal.branding();
        let welcome = portal.welcome();
        let limits = portal.limits();
        Self {
            branding: BrandingView {
                name: branding.name.as_ref().map_or(DEFAULT_NAME, Label::as_str).to_string(),
                accent_color: branding.accent_color.as_ref().map(|colour| colour.as_str().to_string()),
                logo_light: logo(LogoVariant::Light),
                logo_dark: logo(LogoVariant::Dark),
            },
            welcome: WelcomeView {
                title: welcome.title.as_ref().map(|t| t.as_str().to_string()),
                description: welcome.description.as_ref().map(|d| d.as_str().to_string()),
                cta: welcome.cta.as_ref().map(|c| c.as_str().to_string()),
            },
            limits: LimitsView {
                running_workspaces_per_user: limits.running_workspaces_per_user,
                launches_per_minute: limits.launches_per_minute,
                api_requests_per_minute: limits.api_requests_per_minute,
            },
            version: portal.version(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn optional<T>(
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, domain::values::InvalidValue>,
) -> Result<Option<T>, Problem> {
    raw.map(parse).transpose().map_err(Problem::from)
}

fn variant_from_path(raw: &str) -> Result<LogoVariant, Problem> {
    LogoVariant::parse(raw)
        .ok_or_else(|| Problem::not_found(format!("There is no logo {raw:?}; they are light and dark.")))
}

async fn run(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    command: PortalCommand,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let limits_change = matches!(command, PortalCommand::SetLimits { .. });
    let metadata = crate::request_metadata(caller, request);
    let committed = state.portal.execute_retrying(PORTAL_ID, command, &metadata, 5).await.map_err(Problem::from)?;
    // This process applies a change of the limits at once; the others within `follow_limits`'s period.
    if limits_change {
        if let Ok((portal, _)) = state.portal.load(PORTAL_ID).await {
            state.limits.follow(state.limit_pins, portal.limits());
        }
    }
    Ok(HttpResponse::NoContent().insert_header(("ETag", crate::etag(committed.version))).finish())
}

// ---------------------------------------------------------------------------------------------------------------
// Routes

/// The portal's settings (every member): branding, welcome screen, limits.
#[utoipa::path(get, path = "/api/v1/portal", tag = "portal", security(("bearer" = [])),
    responses((status = 200, body = PortalView, headers(("ETag" = String, description = "The version, for If-Match"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/portal")]
pub async fn get_portal(caller: Caller, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member, Role::Auditor])?;
    let (portal, version) = state.portal.load(PORTAL_ID).await.map_err(Problem::from)?;
    Ok(HttpResponse::Ok().insert_header(("ETag", crate::etag(version))).json(PortalView::of(&portal)))
}

/// Replaces the name and accent colour (admins); a field left out or `null` goes back to its default.
#[utoipa::path(put, path = "/api/v1/portal/branding", tag = "portal", request_body = BrandingInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/portal/branding")]
pub async fn set_branding(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<BrandingInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let branding = Branding {
        name: optional(body.name.as_deref(), |raw| Label::parse("name", raw))?,
        accent_color: optional(body.accent_color.as_deref(), AccentColour::parse)?,
    };
    let command =
        PortalCommand::SetBranding { branding, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// Resets name, accent colour and both logos to the defaults (admins).
#[utoipa::path(delete, path = "/api/v1/portal/branding", tag = "portal", security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 412, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/portal/branding")]
pub async fn reset_branding(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    let command = PortalCommand::ResetBranding { by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// Replaces the welcome screen (admins); a field left out or `null` is the frontend's default.
#[utoipa::path(put, path = "/api/v1/portal/welcome", tag = "portal", request_body = WelcomeInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/portal/welcome")]
pub async fn set_welcome(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<WelcomeInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let welcome = Welcome {
        title: optional(body.title.as_deref(), |raw| Label::parse("welcome.title", raw))?,
        description: optional(body.description.as_deref(), WelcomeText::parse)?,
        cta: optional(body.cta.as_deref(), |raw| Label::parse("welcome.cta", raw))?,
    };
    let command =
        PortalCommand::SetWelcome { welcome, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// Replaces the per-user limits (admins); they apply from the next request.
#[utoipa::path(put, path = "/api/v1/portal/limits", tag = "portal", request_body = LimitsInput,
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 409, body = Problem), (status = 412, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[put("/api/v1/portal/limits")]
pub async fn set_limits(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Json<LimitsInput>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let limits = Limits::new(body.running_workspaces_per_user, body.launches_per_minute, body.api_requests_per_minute)
        .map_err(Problem::from)?;
    let command = PortalCommand::SetLimits { limits, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// Uploads a logo (admins): the raw image as the body, `Content-Type: image/png` or `image/svg+xml`, at most
/// 256 KiB. Its bytes must be what it claims (415 otherwise).
#[utoipa::path(put, path = "/api/v1/portal/logos/{variant}", tag = "portal",
    params(("variant" = String, Path, description = "`light` or `dark`")),
    request_body(content((Vec<u8> = "image/png"), (Vec<u8> = "image/svg+xml")), description = "The image"),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
              (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
              (status = 503, body = Problem)))]
#[put("/api/v1/portal/logos/{variant}")]
pub async fn upload_logo(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
    mut payload: web::Payload,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin])?;
    let variant = variant_from_path(&path)?;
    let too_large = || {
        Problem::new(ProblemCode::PayloadTooLarge, "Body too large")
            .detail(format!("A logo is at most {MAX_LOGO_BYTES} bytes."))
    };
    let declared = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_LOGO_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared_length.unwrap_or(0).min(MAX_LOGO_BYTES));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| Problem::invalid_request("Unreadable body", error.to_string()))?;
        if bytes.len() + chunk.len() > MAX_LOGO_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let logo = Logo::new(declared, bytes, sha256).map_err(|error| match error {
        LogoError::TooLarge { .. } => too_large(),
        LogoError::UnsupportedType => {
            Problem::new(ProblemCode::UnsupportedMediaType, "Unsupported media type").detail(error.to_string())
        }
    })?;
    let command =
        PortalCommand::SetLogo { variant, logo, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// Removes a logo (admins); none uploaded is 404.
#[utoipa::path(delete, path = "/api/v1/portal/logos/{variant}", tag = "portal",
    params(("variant" = String, Path, description = "`light` or `dark`")),
    security(("bearer" = [])),
    responses((status = 204, headers(("ETag" = String, description = "The new version"))),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 412, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[delete("/api/v1/portal/logos/{variant}")]
pub async fn remove_logo(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    let variant = variant_from_path(&path)?;
    let command =
        PortalCommand::ClearLogo { variant, by: caller.email.clone(), if_version: crate::if_match(&request)? };
    run(&state, &caller, &request, command).await
}

/// A logo (every member): `dark` falls back to `light`; none is 404. Served so that nothing inside it can run:
/// an SVG's scripts are blocked by `Content-Security-Policy` (`sandbox`, `default-src 'none'`) and the type is
/// never sniffed. `ETag` is its SHA-256; `If-None-Match` with it answers 304.
#[utoipa::path(get, path = "/api/v1/portal/logos/{variant}", tag = "portal",
    params(("variant" = String, Path, description = "`light` or `dark`")),
    security(("bearer" = [])),
    responses((status = 200, content((Vec<u8> = "image/png"), (Vec<u8> = "image/svg+xml")), description = "The image",
               headers(("ETag" = String, description = "SHA-256 of the image"))),
              (status = 304, description = "The image named by If-None-Match is current"),
              (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem), (status = 503, body = Problem)))]
#[get("/api/v1/portal/logos/{variant}")]
pub async fn get_logo(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member, Role::Auditor])?;
    let variant = variant_from_path(&path)?;
    let (portal, _) = state.portal.load(PORTAL_ID).await.map_err(Problem::from)?;
    let logo = portal
        .logo_for(variant)
        .ok_or_else(|| Problem::not_found(format!("No {} logo was uploaded.", variant.as_str())))?;
    let tag = format!("\"{}\"", logo.sha256);
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == tag || candidate.trim() == "*"));
    let mut response = if unchanged { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header(("ETag", tag))
        .insert_header(("Cache-Control", "private, max-age=300"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; sandbox"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Cross-Origin-Resource-Policy", "same-origin"))
        .insert_header(("Content-Disposition", format!("inline; filename=\"logo-{}\"", variant.as_str())));
    if unchanged {
        return Ok(response.finish());
    }
    Ok(response.content_type(logo.format.content_type()).body(logo.bytes.as_slice().to_vec()))
}

/// Keeps `limits` following the portal settings' limits, whichever process changed them: reads the portal
/// aggregate every `period` (its repository keeps it, so a read is one query for newer events) and applies the
/// limits when they differ from the last ones seen (starting from `seen`, applied by the caller). Runs until its
/// task is aborted.
pub async fn follow_limits(
    portal: std::sync::Arc<store::AggregateRepository<Portal>>,
    limits: std::sync::Arc<crate::limits::RateLimits>,
    pins: crate::limits::Pins,
    period: std::time::Duration,
    mut seen: Limits,
) {
    loop {
        tokio::time::sleep(period).await;
        match portal.load(PORTAL_ID).await {
            Ok((settings, _)) if settings.limits() != seen => {
                seen = settings.limits();
                limits.follow(pins, seen);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error.message = %error, "cannot read the portal settings' limits"),
        }
    }
}
