//! Operational endpoints: liveness, readiness, metrics and the OpenAPI document.

use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpResponse};
use prometheus::Encoder;
use serde::Serialize;
use utoipa::OpenApi;

use crate::{AppState, Problem, ProblemCode};

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Gatehouse API", description = "System of record and gateway of the developer portal."),
    paths(
        healthz, readyz, metrics, openapi_document,
        crate::members::me, crate::members::list_members, crate::members::get_member,
        crate::members::invite_member, crate::members::change_role, crate::members::remove_member,
        crate::publishing::submit, crate::publishing::list_requests, crate::publishing::approvals_queue,
        crate::publishing::get_request, crate::publishing::approve, crate::publishing::reject,
        crate::publishing::withdraw, crate::publishing::list_trust_rules, crate::publishing::create_trust_rule,
        crate::publishing::evaluate_trust, crate::publishing::get_trust_rule, crate::publishing::revoke_trust_rule,
        crate::publishing::diff_preview, crate::publishing::retry_delivery,
        crate::audit::aggregate_events, crate::audit::aggregate_state, crate::audit::feed, crate::audit::export,
        crate::audit::public_key, crate::audit::latest_checkpoint, crate::audit::list_checkpoints,
        crate::blueprints::register, crate::blueprints::list_blueprints, crate::blueprints::get_blueprint,
        crate::blueprints::update_details, crate::blueprints::set_state, crate::blueprints::replace_acl,
        crate::blueprints::add_acl_rule, crate::blueprints::remove_acl_rule, crate::blueprints::configure_workspace,
        crate::blueprints::remove_blueprint, crate::blueprints::catalog, crate::blueprints::set_anthropic, crate::blueprints::set_openai, crate::blueprints::set_custom_ai,
        crate::blueprints::clear_anthropic, crate::blueprints::clear_openai, crate::blueprints::clear_custom_ai,
        crate::org::get_org, crate::org::configure_org, crate::org::set_credential, crate::org::clear_credential,
        crate::org::secrets_status, crate::org::rewrap,
        crate::portal::get_portal, crate::portal::set_branding, crate::portal::reset_branding, crate::portal::set_welcome,
        crate::portal::set_limits, crate::portal::upload_logo, crate::portal::remove_logo, crate::portal::get_logo,
        crate::workspaces::launch, crate::workspaces::list_workspaces, crate::workspaces::workspace_summary,
        crate::workspaces::get_workspace, crate::workspaces::start_workspace, crate::workspaces::stop_workspace,
        crate::workspaces::restart_workspace, crate::workspaces::upgrade_workspace,
        crate::workspaces::rename_workspace, crate::workspaces::delete_workspace,
        crate::stream::caller_stream, crate::stream::provisioning_stream,
        crate::tags::list_tags, crate::tags::create_tag, crate::tags::rename_tag, crate::tags::delete_tag,
        crate::tags::assign_tag, crate::tags::unassign_tag,
    ),
    components(schemas(
        Problem, ProblemCode, Health, Readiness, ProjectionReadiness,
        crate::members::MemberView, crate::Page<crate::members::MemberView>, crate::members::InviteRequest,
        crate::members::RoleChange, crate::members::Me,
        crate::publishing::SubmitRequest, crate::publishing::ReviewInput,
        crate::publishing::DiffView, crate::publishing::ReviewView, crate::publishing::DeliveryView,
        crate::publishing::DeliveryFailureView, crate::publishing::ChangedFileView, crate::publishing::DiffPreviewView, crate::publishing::PublishRequestView,
        crate::Page<crate::publishing::PublishRequestView>, crate::publishing::DecisionView, crate::publishing::TrustRuleInput,
        crate::publishing::TrustRuleView, crate::Page<crate::publishing::TrustRuleView>, crate::publishing::EvaluateView,
        crate::audit::EventView, crate::audit::AggregateEventsPage, crate::audit::FeedPage, crate::audit::StateView,
        crate::audit::PublicKeyView, crate::audit::CheckpointPage,
        crate::blueprints::RegisterBlueprint, crate::blueprints::SourceInput, crate::blueprints::NamingInput,
        crate::blueprints::DetailsPatch, crate::blueprints::StateInput, crate::blueprints::AclRuleInput,
        crate::blueprints::AclInput, crate::blueprints::TabInput, crate::blueprints::WorkspaceInput,
        crate::blueprints::AiProviderView, crate::blueprints::BlueprintView, crate::Page<crate::blueprints::BlueprintView>,
        crate::blueprints::CatalogItem, crate::blueprints::Catalog, crate::blueprints::AnthropicInput, crate::blueprints::OpenAiInput, crate::blueprints::CustomAiInput,
        crate::org::OrgInput, crate::org::ControlPlaneInput, crate::org::GitInput, crate::org::CredentialInput,
        crate::org::OrgView, crate::org::ControlPlaneView, crate::org::GitView, crate::org::CredentialView,
        crate::vault::SecretsStatus, crate::vault::KeyUse, crate::vault::SecretState, crate::vault::RewrapReport,
        crate::vault::RewrapFailure,
        crate::portal::BrandingInput, crate::portal::WelcomeInput, crate::portal::LimitsInput, crate::portal::LogoView,
        crate::portal::BrandingView, crate::portal::WelcomeView, crate::portal::LimitsView, crate::portal::PortalView,
        crate::workspaces::LaunchBody, crate::workspaces::RenameBody, crate::workspaces::FailureView,
        crate::workspaces::WorkspaceView, crate::Page<crate::workspaces::WorkspaceView>,
        crate::workspaces::WorkspaceSummary, crate::workspaces::UserTagView,
        crate::tags::TagInput, crate::tags::TagView, crate::tags::TagList, crate::stream::SseEvent,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Liveness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Readiness, with the reasons when not ready.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// Whether the store answered.
    pub store: bool,
    /// Each projection's state.
    pub projections: Vec<ProjectionReadiness>,
    /// True while the service drains for shutdown.
    pub draining: bool,
}

/// One projection's readiness.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProjectionReadiness {
    /// The projection.
    pub name: String,
    /// `caught_up`, `catching_up`, `retrying` or `failed`.
    pub state: &'static str,
    /// Its checkpoint.
    pub cursor: String,
    /// Why it failed or is retrying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Health> {
    web::Json(Health { status: "ok" })
}

/// The store answers, every projection has caught up, and the service is not draining.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, body = Readiness), (status = 503, body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    use projections::ProjectionState;
    let store = state.store.ping().await.is_ok();
    let draining = state.draining.load(Ordering::Relaxed);
    let projections: Vec<_> = state
        .projections
        .snapshot()
        .into_iter()
        .map(|(name, status)| {
            let (label, error) = match status.state {
                ProjectionState::CaughtUp => ("caught_up", None),
                ProjectionState::CatchingUp => ("catching_up", None),
                ProjectionState::HeldBack => ("held_back", None),
                ProjectionState::Retrying(error) => ("retrying", Some(error)),
                ProjectionState::Failed { error, .. } => ("failed", Some(error)),
            };
            ProjectionReadiness { name: name.to_string(), state: label, cursor: status.cursor, error }
        })
        .collect();
    let ready = store && !draining && state.projections.all_caught_up();
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        backend: state.store.backend_name(),
        store,
        projections,
        draining,
    };
    let mut response = if ready { HttpResponse::Ok() } else { HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE) };
    if !ready {
        response.insert_header(("Retry-After", "2"));
    }
    response.json(body)
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let encoder = prometheus::TextEncoder::new();
    let mut buffer = Vec::new();
    encoder.encode(&state.registry.gather(), &mut buffer).map_err(|error| {
        tracing::error!(error.message = %error, "metrics encoding failed");
        Problem::internal()
    })?;
    Ok(HttpResponse::Ok().content_type(encoder.format_type()).body(buffer))
}

/// The whole OpenAPI document: every route `configure` mounts, the relay's included. The service serves it from
/// [`AppState::openapi`], built once at start.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(crate::relay::RelayApiDoc::openapi());
    crate::limits::document_refusals(&mut document);
    problems_as_problem_json(&mut document);
    crate::schemas::constrain(&mut document);
    document
}

/// [`document`] with the settings that bound requests written in: the preview ports in force.
pub fn document_for(preview: &relay::preview::PreviewLimits) -> utoipa::openapi::OpenApi {
    let mut document = document();
    crate::schemas::preview_ports(&mut document, preview.min_port, preview.max_port);
    document
}

/// Every error answer (4xx, 5xx) is a problem document sent as `application/problem+json` (RFC 9457), whatever
/// content type the route's annotation gave its `body = Problem`.
fn problems_as_problem_json(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in operation.responses.responses.iter_mut() {
                let is_error = status.starts_with('4') || status.starts_with('5');
                if let (true, RefOr::T(response)) = (is_error, response) {
                    if let Some(content) = response.content.shift_remove("application/json") {
                        response.content.insert("application/problem+json".to_string(), content);
                    }
                }
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", responses((status = 200, content_type = "application/json")))]
#[get("/api/v1/openapi.json")]
pub async fn openapi_document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(&*state.openapi)
}

#[cfg(test)]
mod problem_content_tests {
    #[test]
    fn every_error_answer_is_documented_as_problem_json() {
        let document = serde_json::to_value(super::document()).unwrap_or_default();
        let mut errors = 0;
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                    let Some(content) = response.get("content").and_then(|content| content.as_object()) else {
                        continue;
                    };
                    if status.starts_with('4') || status.starts_with('5') {
                        errors += 1;
                        let types: Vec<&String> = content.keys().collect();
                        assert_eq!(types, ["application/problem+json"], "{method} {path} {status}");
                    }
                }
            }
        }
        assert!(errors > 100, "only {errors} error answers documented");
    }
}
