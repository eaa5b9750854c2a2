//! Gatehouse's HTTP surface: the only crate that knows HTTP status codes and JSON DTOs.
//!
//! [`configure`] mounts every route on an actix-web `App`; the root package binds the listener and runs it.
//! Errors leave through [`Problem`] (RFC 9457 problem documents with stable codes). Operational endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`) live in [`ops`].
//! Rate limits ([`limits`]) are applied by the [`auth::Caller`] extractor; CORS ([`cors`]) is a middleware the root
//! package mounts.

pub mod audit;
pub mod auth;
pub mod blueprints;
pub mod cache;
pub mod cors;
pub mod extract;
pub mod headers;
pub mod idempotency;
pub mod limits;
pub mod members;
pub mod metrics;
pub mod ops;
pub mod org;
pub mod paging;
pub mod portal;
pub mod preview;
mod problem;
pub mod publishing;
mod rejection;
pub mod relay;
pub mod schemas;
pub mod stream;
pub mod tags;
pub mod vault;
pub mod workspaces;

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use domain::blueprint::Blueprint;
use domain::org::Org;
use domain::portal::Portal;
use domain::publishing::Publishing;
use domain::roster::Roster;
use domain::trust::TrustRules;
use projections::{BlueprintsQuery, MembersQuery, PublishingQuery, StatusBoard};
use store::{AggregateRepository, EventStore};

pub use metrics::HttpMetrics;
pub use paging::{List, NoFilters, Page, PageCursor, PageParams, Paging};
pub use problem::{Problem, ProblemCode};
pub use rejection::Rejection;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: EventStore,
    /// Live projection status (for readiness).
    pub projections: StatusBoard,
    /// Every metric the service exports.
    pub registry: prometheus::Registry,
    /// Readiness is also off while the service drains for shutdown.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Verifies bearer tokens.
    pub auth: Arc<auth::Authenticator>,
    /// The members read model.
    pub members: MembersQuery,
    /// The roster aggregate.
    pub roster: Arc<AggregateRepository<Roster>>,
    /// The publishing aggregate.
    pub publishing: Arc<AggregateRepository<Publishing>>,
    /// The trust rules aggregate.
    pub trust: Arc<AggregateRepository<TrustRules>>,
    /// The blueprint aggregates, one per blueprint (ADR 0017).
    pub blueprints: Arc<AggregateRepository<Blueprint>>,
    /// The organisation aggregate (ADR 0021).
    pub org: Arc<AggregateRepository<Org>>,
    /// The portal's settings (branding, welcome screen, limits).
    pub portal: Arc<AggregateRepository<Portal>>,
    /// The secrets key ring in use.
    pub vault: Arc<vault::Vault>,
    /// The blueprints read model.
    pub blueprint_reads: BlueprintsQuery,
    /// The publishing and trust rules read models.
    pub publishing_reads: PublishingQuery,
    /// The publishing policy in force.
    pub publish_policy: publishing::PublishPolicy,
    /// Records of audit API reads.
    pub audit_access: Arc<AggregateRepository<domain::audit_access::AuditAccess>>,
    /// Signs audit checkpoints.
    pub audit_key: Arc<::audit::AuditKey>,
    /// Read-model answers remembered until their read model changes.
    pub caches: Arc<cache::Caches>,
    /// The OpenAPI document served at `/api/v1/openapi.json` ([`ops::document`]), built once at start.
    pub openapi: Arc<utoipa::openapi::OpenApi>,
    /// The relay's gateway: connected agents, tokens, tickets, the firewall, open sessions.
    pub gateway: Arc<::relay::gateway::Gateway>,
    /// Milliseconds after which an `Idempotency-Key` claim that never got its answer is taken over by a retry.
    pub idempotency_stale_ms: i64,
    /// Rate limits per user and per client address, changeable while serving (ADR 0020).
    pub limits: Arc<limits::RateLimits>,
    /// The per-user limits pinned by settings; the others follow the portal settings.
    pub limit_pins: limits::Pins,
    /// The workspaces aggregates, one per owner (ADR 0023).
    pub workspaces: Arc<AggregateRepository<domain::workspace::Workspaces>>,
    /// The workspaces read model.
    pub workspace_reads: projections::WorkspacesQuery,
    /// Wakes the control plane's reconciler after a workspace request.
    pub reconciler: controlplane::ReconcilerHandle,
    /// Wakes the publisher (publish delivery) after an approval or a retry.
    pub publisher: publisher::PublisherHandle,
    /// The tail of the log that live update streams follow.
    pub live: Arc<stream::LiveLog>,
    /// The user_tags aggregates, one per user.
    pub tags: Arc<AggregateRepository<domain::tags::UserTags>>,
    /// The tags read model.
    pub tag_reads: projections::TagsQuery,
}

/// The request's id: a valid `X-Request-Id` from the caller, or a new one.
pub fn request_id(request: &HttpRequest) -> String {
    request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The strong entity tag of an aggregate version (what `If-Match` takes back).
pub(crate) fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The metadata of an event a caller's request records: the caller and the request's id.
pub(crate) fn request_metadata(caller: &auth::Caller, request: &HttpRequest) -> store::EventMetadata {
    store::EventMetadata::for_request(caller.email.to_string(), request_id(request))
}

/// The version an `If-Match` names: `None` for no header or `*`; strong entity tags only.
pub(crate) fn if_match(request: &HttpRequest) -> Result<Option<u64>, Problem> {
    let Some(value) = request.headers().get("if-match") else { return Ok(None) };
    let value = value.to_str().unwrap_or_default().trim();
    if value == "*" {
        return Ok(None);
    }
    value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .and_then(|version| version.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::new(ProblemCode::InvalidField, "Invalid header")
                .field("If-Match")
                .detail("If-Match takes the ETag of a GET, such as \"12\"")
        })
}

/// The `next` of a list ordered by (time, id): `<time>|<id>`, the row's time as the read models store it (RFC 3339,
/// UTC, microseconds) and its id. Plain text rather than an encoding, so that the OpenAPI document can describe it
/// exactly ([`crate::schemas::TIME_CURSOR`]).
pub fn encode_page_key(at: &str, id: &str) -> String {
    format!("{at}|{id}")
}

/// Reads a cursor made by [`encode_page_key`] (the `after` query parameter); anything else is 422 naming `after`.
/// The time is checked for its shape only: the list compares it as text, so any value of that shape names a place
/// in the order.
pub fn decode_page_key(raw: &str) -> Result<projections::TimeKey, Problem> {
    let bad = || Problem::invalid_field("after", "after takes the next value of the previous page");
    let (at, id) = raw.split_once('|').ok_or_else(bad)?;
    let shape = b"0000-00-00T00:00:00.000000Z";
    let at_ok = at.len() == shape.len()
        && at.bytes().zip(shape).all(|(b, s)| if *s == b'0' { b.is_ascii_digit() } else { b == *s });
    let id_ok = !id.is_empty() && id.len() <= 300 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'|');
    if !at_ok || !id_ok {
        return Err(bad());
    }
    Ok(projections::TimeKey { at: at.to_string(), id: id.to_string() })
}

/// `raw` as one path segment of a URL (a `Location`): every byte but `A-Z a-z 0-9 - . _ ~ @` percent-encoded, so an
/// address holding `?`, `#`, `/` or `%` names the same resource when a client follows the link.
pub fn path_segment(raw: &str) -> String {
    let mut segment = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@".contains(&byte) {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

/// Polls `read` until it gives a row for which `ready` holds, for up to two seconds: a client reading its own fresh
/// write while the projector catches up waits for it. After that, 503 saying that the `what` exists but its read
/// model is behind. Call it only once the aggregate has shown that the row must come.
pub(crate) async fn read_own_write<T, F, Fut>(what: &str, mut read: F, ready: impl Fn(&T) -> bool) -> Result<T, Problem>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Problem>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        if let Some(row) = read().await?.filter(|row| ready(row)) {
            return Ok(row);
        }
        if std::time::Instant::now() >= deadline {
            return Err(Problem::store_unavailable()
                .detail(format!("The {what} exists but its read model is behind; retry shortly.")));
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Mounts every route and the JSON error handlers.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config: &mut web::ServiceConfig| {
        let routes = web::Data::new(problem::Routes::new(&state.openapi));
        config
            .app_data(routes)
            .app_data(web::Data::new(state))
            .app_data(web::JsonConfig::default().limit(256 * 1024).error_handler(problem::json_error))
            .app_data(web::PathConfig::default().error_handler(problem::path_error))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error))
            .configure(relay::configure)
            .service(ops::healthz)
            .service(ops::readyz)
            .service(ops::metrics)
            .service(ops::openapi_document)
            .service(members::me)
            .service(members::list_members)
            .service(members::get_member)
            .service(members::invite_member)
            .service(members::change_role)
            .service(members::remove_member)
            .service(audit::aggregate_events)
            .service(audit::aggregate_state)
            .service(audit::feed)
            .service(audit::export)
            .service(audit::public_key)
            .service(audit::latest_checkpoint)
            .service(audit::list_checkpoints)
            .service(blueprints::register)
            .service(blueprints::list_blueprints)
            .service(blueprints::get_blueprint)
            .service(blueprints::update_details)
            .service(blueprints::remove_blueprint)
            .service(blueprints::set_state)
            .service(blueprints::replace_acl)
            .service(blueprints::add_acl_rule)
            .service(blueprints::remove_acl_rule)
            .service(blueprints::configure_workspace)
            .service(blueprints::catalog)
            .service(blueprints::set_anthropic)
            .service(blueprints::set_openai)
            .service(blueprints::set_custom_ai)
            .service(blueprints::clear_anthropic)
            .service(blueprints::clear_openai)
            .service(blueprints::clear_custom_ai)
            .service(portal::get_portal)
            .service(portal::set_branding)
            .service(portal::reset_branding)
            .service(portal::set_welcome)
            .service(portal::set_limits)
            .service(portal::upload_logo)
            .service(portal::remove_logo)
            .service(portal::get_logo)
            .service(org::get_org)
            .service(org::configure_org)
            .service(org::set_credential)
            .service(org::clear_credential)
            .service(org::secrets_status)
            .service(org::rewrap)
            .service(stream::caller_stream)
            .service(stream::provisioning_stream)
            .service(tags::list_tags)
            .service(tags::create_tag)
            .service(tags::rename_tag)
            .service(tags::delete_tag)
            .service(tags::assign_tag)
            .service(tags::unassign_tag)
            .service(workspaces::launch)
            .service(workspaces::list_workspaces)
            .service(workspaces::workspace_summary)
            .service(workspaces::get_workspace)
            .service(workspaces::start_workspace)
            .service(workspaces::stop_workspace)
            .service(workspaces::restart_workspace)
            .service(workspaces::upgrade_workspace)
            .service(workspaces::rename_workspace)
            .service(workspaces::delete_workspace)
            .service(publishing::list_requests)
            .service(publishing::approvals_queue)
            .service(publishing::get_request)
            .service(publishing::approve)
            .service(publishing::reject)
            .service(publishing::withdraw)
            .service(publishing::list_trust_rules)
            .service(publishing::create_trust_rule)
            .service(publishing::evaluate_trust)
            .service(publishing::get_trust_rule)
            .service(publishing::revoke_trust_rule)
            .service(publishing::submit)
            .service(publishing::diff_preview)
            .service(publishing::retry_delivery)
            .default_service(web::to(problem::not_found));
    }
}
