//! RFC 9457 problem documents: every error response has this shape and a stable `code`.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use store::{CommandError, StoreError};

/// Stable machine-readable error codes. **API Boundary:** clients match on these.
///
/// Each code has exactly one HTTP status, [`ProblemCode::status`]: the table there is the only place statuses of
/// problems are decided (docs/API.md's Errors table lists the same, and a test keeps the two in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// The request body, path or query is malformed: not JSON, not of the expected shape (a JSON array where an
    /// object belongs, a wrong type, an unknown or missing field), or a query string that does not parse.
    InvalidRequest,
    /// The body is larger than the route accepts.
    PayloadTooLarge,
    /// The body is not JSON (`Content-Type` other than `application/json` or `*/*+json`).
    UnsupportedMediaType,
    /// The path exists but not with this method; `Allow` lists the methods it has.
    MethodNotAllowed,
    /// The WebSocket endpoints speak version 13 only (`Sec-WebSocket-Version: 13` is sent back).
    UpgradeRequired,
    /// No such resource or route.
    NotFound,
    /// A rate limit refused the request (too many requests by this user, or with invalid tokens from this address);
    /// retry after `Retry-After` seconds.
    RateLimited,
    /// The event store cannot be reached; retry after `Retry-After` seconds.
    StoreUnavailable,
    /// Something failed inside the service; details are in its log under the request id.
    Internal,
    /// No valid bearer token (401, with `WWW-Authenticate`).
    Unauthenticated,
    /// Authenticated, but the caller's role does not allow this.
    Forbidden,
    /// Authenticated, but not on the roster.
    NotAMember,
    /// A field has an invalid value (in the body, the query, the path or a header); `field` names it.
    InvalidField,
    /// The address is already a member.
    AlreadyMember,
    /// The member already has that role.
    RoleUnchanged,
    /// The change would leave the organisation without an admin.
    LastAdmin,
    /// The resource changed while the request was decided; retry.
    ConcurrentModification,
    /// `If-Match` named a version that is no longer current.
    StaleVersion,
    /// The `Idempotency-Key` was used before for a different request.
    IdempotencyKeyReused,
    /// A request with the same `Idempotency-Key` is still running; retry after `Retry-After`.
    RequestInProgress,
    /// The publish request is no longer pending (approved, rejected, withdrawn or expired).
    RequestNotPending,
    /// The workspace already has a pending publish request.
    RequestInFlight,
    /// Another workspace holds the subdomain.
    SubdomainTaken,
    /// The workspace belongs to another builder.
    NotWorkspaceOwner,
    /// Nobody may approve their own publish request.
    SelfApproval,
    /// This admin already approved the request.
    AlreadyReviewed,
    /// A trust rule for this user and scope exists.
    DuplicateTrustRule,
    /// A blueprint is registered under this key.
    BlueprintExists,
    /// The key belonged to a removed blueprint; keys are never reused.
    BlueprintKeyRetired,
    /// The blueprint was removed and takes no more changes.
    BlueprintRemoved,
    /// The blueprint is in that state already.
    StateUnchanged,
    /// The blueprint has that access rule already.
    DuplicateAclRule,
    /// The AI provider is enabled on auth mode `api_key` and no key is stored: send one.
    ApiKeyRequired,
    /// The organisation is not configured yet (`PUT /api/v1/org` first).
    OrgNotConfigured,
    /// The secrets key file holds no usable ring, or one that lacks a key current secrets use; the ring in use
    /// stays.
    KeyRingRefused,
    /// The caller is at the running-workspaces limit (`portal.limits.running_workspaces_per_user`); the detail names
    /// it. Stop a workspace first.
    QuotaExceeded,
    /// Another of the owner's workspaces has this name (names are compared ignoring case).
    WorkspaceNameTaken,
    /// The blueprint is listed for the caller but not launchable by them (a `testing` blueprint: admins only).
    BlueprintNotLaunchable,
    /// Start asked of a workspace that is running or starting.
    WorkspaceRunning,
    /// The workspace is not running (stopped, starting, or failed): stop, restart, terminals and publishing need a
    /// running one.
    WorkspaceNotRunning,
    /// The caller has a tag with this name (compared ignoring case).
    TagNameTaken,
    /// The caller has as many tags as allowed (100).
    TagLimitReached,
    /// Nothing to publish: the workspace's files equal its base (the last published commit, or the blueprint's).
    NoChanges,
    /// The workspace's repository is in no state to diff or commit: not a repository, no commit, a detached `HEAD`,
    /// a merge or rebase in progress, unmerged paths, no base found, or no `git`; the detail says which.
    GitState,
    /// The workspace's agent is older than this gateway and runs no git tasks: restart the workspace.
    AgentOutdated,
    /// A retry of a delivery that has not failed (or of a request that is not being delivered).
    DeliveryNotFailed,
    /// The workspace's agent did not answer (it disconnected, or took too long); retry after `Retry-After`.
    WorkspaceUnavailable,
    /// A preview ticket without a port, for a workspace that runs no dev server whose port it could default to.
    NoDevServer,
    /// A preview: nothing listens on the port inside the workspace, or the app's answer is not HTTP.
    PreviewUnreachable,
    /// A preview: the app did not start answering in time (`preview_response_timeout_secs`).
    PreviewTimeout,
}

impl ProblemCode {
    /// Every code, in the order docs/API.md lists them.
    pub const ALL: [ProblemCode; 50] = [
        ProblemCode::InvalidRequest,
        ProblemCode::PayloadTooLarge,
        ProblemCode::UnsupportedMediaType,
        ProblemCode::MethodNotAllowed,
        ProblemCode::UpgradeRequired,
        ProblemCode::InvalidField,
        ProblemCode::Unauthenticated,
        ProblemCode::NotAMember,
        ProblemCode::Forbidden,
        ProblemCode::NotFound,
        ProblemCode::AlreadyMember,
        ProblemCode::RoleUnchanged,
        ProblemCode::LastAdmin,
        ProblemCode::ConcurrentModification,
        ProblemCode::StaleVersion,
        ProblemCode::IdempotencyKeyReused,
        ProblemCode::RequestInProgress,
        ProblemCode::RequestNotPending,
        ProblemCode::RequestInFlight,
        ProblemCode::SubdomainTaken,
        ProblemCode::NotWorkspaceOwner,
        ProblemCode::SelfApproval,
        ProblemCode::AlreadyReviewed,
        ProblemCode::DuplicateTrustRule,
        ProblemCode::BlueprintExists,
        ProblemCode::BlueprintKeyRetired,
        ProblemCode::BlueprintRemoved,
        ProblemCode::StateUnchanged,
        ProblemCode::DuplicateAclRule,
        ProblemCode::ApiKeyRequired,
        ProblemCode::OrgNotConfigured,
        ProblemCode::KeyRingRefused,
        ProblemCode::QuotaExceeded,
        ProblemCode::WorkspaceNameTaken,
        ProblemCode::BlueprintNotLaunchable,
        ProblemCode::WorkspaceRunning,
        ProblemCode::WorkspaceNotRunning,
        ProblemCode::TagNameTaken,
        ProblemCode::TagLimitReached,
        ProblemCode::NoChanges,
        ProblemCode::GitState,
        ProblemCode::AgentOutdated,
        ProblemCode::DeliveryNotFailed,
        ProblemCode::WorkspaceUnavailable,
        ProblemCode::NoDevServer,
        ProblemCode::PreviewUnreachable,
        ProblemCode::PreviewTimeout,
        ProblemCode::RateLimited,
        ProblemCode::StoreUnavailable,
        ProblemCode::Internal,
    ];

    /// The one HTTP status every problem with this code has.
    pub const fn status(self) -> StatusCode {
        match self {
            ProblemCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ProblemCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemCode::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ProblemCode::InvalidField | ProblemCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProblemCode::NotAMember
            | ProblemCode::Forbidden
            | ProblemCode::NotWorkspaceOwner
            | ProblemCode::SelfApproval => StatusCode::FORBIDDEN,
            ProblemCode::NotFound => StatusCode::NOT_FOUND,
            ProblemCode::AlreadyMember
            | ProblemCode::RoleUnchanged
            | ProblemCode::LastAdmin
            | ProblemCode::ConcurrentModification
            | ProblemCode::RequestInProgress
            | ProblemCode::RequestNotPending
            | ProblemCode::RequestInFlight
            | ProblemCode::SubdomainTaken
            | ProblemCode::AlreadyReviewed
            | ProblemCode::DuplicateTrustRule
            | ProblemCode::BlueprintExists
            | ProblemCode::BlueprintKeyRetired
            | ProblemCode::BlueprintRemoved
            | ProblemCode::StateUnchanged
            | ProblemCode::DuplicateAclRule
            | ProblemCode::ApiKeyRequired
            | ProblemCode::OrgNotConfigured
            | ProblemCode::KeyRingRefused
            | ProblemCode::QuotaExceeded
            | ProblemCode::WorkspaceNameTaken
            | ProblemCode::BlueprintNotLaunchable
            | ProblemCode::WorkspaceRunning
            | ProblemCode::WorkspaceNotRunning
            | ProblemCode::TagNameTaken
            | ProblemCode::TagLimitReached
            | ProblemCode::NoChanges
            | ProblemCode::GitState
            | ProblemCode::AgentOutdated
            | ProblemCode::DeliveryNotFailed
            | ProblemCode::NoDevServer => StatusCode::CONFLICT,
            ProblemCode::StaleVersion => StatusCode::PRECONDITION_FAILED,
            ProblemCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProblemCode::StoreUnavailable | ProblemCode::WorkspaceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemCode::PreviewUnreachable => StatusCode::BAD_GATEWAY,
            ProblemCode::PreviewTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The code as it appears in a problem document (`code`, and the end of `type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ProblemCode::InvalidRequest => "invalid_request",
            ProblemCode::PayloadTooLarge => "payload_too_large",
            ProblemCode::UnsupportedMediaType => "unsupported_media_type",
            ProblemCode::MethodNotAllowed => "method_not_allowed",
            ProblemCode::UpgradeRequired => "upgrade_required",
            ProblemCode::NotFound => "not_found",
            ProblemCode::RateLimited => "rate_limited",
            ProblemCode::StoreUnavailable => "store_unavailable",
            ProblemCode::Internal => "internal",
            ProblemCode::Unauthenticated => "unauthenticated",
            ProblemCode::Forbidden => "forbidden",
            ProblemCode::NotAMember => "not_a_member",
            ProblemCode::InvalidField => "invalid_field",
            ProblemCode::AlreadyMember => "already_member",
            ProblemCode::RoleUnchanged => "role_unchanged",
            ProblemCode::LastAdmin => "last_admin",
            ProblemCode::ConcurrentModification => "concurrent_modification",
            ProblemCode::StaleVersion => "stale_version",
            ProblemCode::IdempotencyKeyReused => "idempotency_key_reused",
            ProblemCode::RequestInProgress => "request_in_progress",
            ProblemCode::RequestNotPending => "request_not_pending",
            ProblemCode::RequestInFlight => "request_in_flight",
            ProblemCode::SubdomainTaken => "subdomain_taken",
            ProblemCode::NotWorkspaceOwner => "not_workspace_owner",
            ProblemCode::SelfApproval => "self_approval",
            ProblemCode::AlreadyReviewed => "already_reviewed",
            ProblemCode::DuplicateTrustRule => "duplicate_trust_rule",
            ProblemCode::BlueprintExists => "blueprint_exists",
            ProblemCode::BlueprintKeyRetired => "blueprint_key_retired",
            ProblemCode::BlueprintRemoved => "blueprint_removed",
            ProblemCode::StateUnchanged => "state_unchanged",
            ProblemCode::DuplicateAclRule => "duplicate_acl_rule",
            ProblemCode::ApiKeyRequired => "api_key_required",
            ProblemCode::OrgNotConfigured => "org_not_configured",
            ProblemCode::KeyRingRefused => "key_ring_refused",
            ProblemCode::QuotaExceeded => "quota_exceeded",
            ProblemCode::WorkspaceNameTaken => "workspace_name_taken",
            ProblemCode::BlueprintNotLaunchable => "blueprint_not_launchable",
            ProblemCode::WorkspaceRunning => "workspace_running",
            ProblemCode::WorkspaceNotRunning => "workspace_not_running",
            ProblemCode::TagNameTaken => "tag_name_taken",
            ProblemCode::TagLimitReached => "tag_limit_reached",
            ProblemCode::NoChanges => "no_changes",
            ProblemCode::GitState => "git_state",
            ProblemCode::AgentOutdated => "agent_outdated",
            ProblemCode::DeliveryNotFailed => "delivery_not_failed",
            ProblemCode::WorkspaceUnavailable => "workspace_unavailable",
            ProblemCode::NoDevServer => "no_dev_server",
            ProblemCode::PreviewUnreachable => "preview_unreachable",
            ProblemCode::PreviewTimeout => "preview_timeout",
        }
    }
}

/// A refused value: 422 `invalid_field` naming the field, the reason as the detail.
impl From<domain::values::InvalidValue> for Problem {
    fn from(error: domain::values::InvalidValue) -> Self {
        Problem::invalid_field(error.field, error.reason)
    }
}

/// An RFC 9457 problem document. Its status is its code's ([`ProblemCode::status`]); nothing else sets it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:gatehouse:problem:<code>`).
    #[serde(rename = "type")]
    kind: String,
    /// A short summary of the problem type.
    title: &'static str,
    /// The HTTP status (always the code's).
    status: u16,
    /// What happened in this occurrence, safe to show to the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// The stable code.
    code: ProblemCode,
    /// For validation problems: the offending field (a body field as `diff.patch` or `rules[0].cidr`, a query or
    /// path parameter by its name, a header by its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u32>,
    /// Headers the answer carries besides `Content-Type` and `Retry-After` (`Allow`, `Sec-WebSocket-Version`).
    #[serde(skip)]
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl Problem {
    /// A problem with `code` (and so its status) and a title.
    pub fn new(code: ProblemCode, title: &'static str) -> Self {
        Self {
            kind: format!("urn:gatehouse:problem:{}", code.as_str()),
            title,
            status: code.status().as_u16(),
            detail: None,
            code,
            field: None,
            retry_after: None,
            headers: Box::default(),
        }
    }

    /// Adds a detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Names the offending field.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Asks the caller to retry after `seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Adds a header to the answer (such as `Allow` for `method_not_allowed`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        let mut headers = std::mem::take(&mut self.headers).into_vec();
        headers.push((name, value));
        self.headers = headers.into_boxed_slice();
        self
    }

    /// The code.
    pub fn code(&self) -> ProblemCode {
        self.code
    }

    /// The status: always the code's.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The offending field, for validation problems.
    pub fn field_name(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The headers the answer carries: `Retry-After` when set, then those added with [`Problem::header`]
    /// (`Content-Type` is not among them).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        if let Some(seconds) = self.retry_after {
            headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        headers.extend(self.headers.iter().cloned());
        headers
    }

    /// A field of the body, the query, the path or a header has an invalid value: 422 `invalid_field` naming it.
    pub fn invalid_field(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Problem::new(ProblemCode::InvalidField, "Invalid field").field(field).detail(detail)
    }

    /// The request is malformed: 400 `invalid_request`.
    pub fn invalid_request(title: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(ProblemCode::InvalidRequest, title).detail(detail)
    }

    /// Nothing here: 404 `not_found`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(ProblemCode::NotFound, "Not found").detail(detail)
    }

    /// The store is unavailable: 503 with `Retry-After`.
    pub fn store_unavailable() -> Self {
        Problem::new(ProblemCode::StoreUnavailable, "The event store is unavailable")
            .detail("Nothing was changed, unless the connection was lost while committing. Retry the request.")
            .retry_after(2)
    }

    /// An internal error; the cause goes to the log, never to the caller.
    pub fn internal() -> Self {
        Problem::new(ProblemCode::Internal, "Internal error")
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.status)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json")));
        for (name, value) in self.headers() {
            response.append_header((name, value));
        }
        response.body(serde_json::to_string(self).unwrap_or_default())
    }
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(error.message = %error, "store unavailable");
            Problem::store_unavailable()
        } else {
            tracing::error!(error.message = %error, error.cause_chain = ?error, "store error");
            Problem::internal()
        }
    }
}

/// The methods of every path the service serves, from its OpenAPI document (which a test keeps in step with the
/// mounted routes): what a `405` lists in `Allow`.
pub(crate) struct Routes(Vec<(actix_web::dev::ResourceDef, Vec<&'static str>)>);

impl Routes {
    pub(crate) fn new(document: &utoipa::openapi::OpenApi) -> Self {
        let routes = document
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [
                    ("GET", item.get.is_some()),
                    ("HEAD", item.head.is_some()),
                    ("POST", item.post.is_some()),
                    ("PUT", item.put.is_some()),
                    ("PATCH", item.patch.is_some()),
                    ("DELETE", item.delete.is_some()),
                    ("OPTIONS", item.options.is_some()),
                ];
                let methods = methods.into_iter().filter(|(_, present)| *present).map(|(method, _)| method).collect();
                (actix_web::dev::ResourceDef::new(path.as_str()), methods)
            })
            .collect();
        Self(routes)
    }

    /// The methods `path` has (none: no such path). A path that is a route of its own (`/api/v1/trust-rules/evaluate`)
    /// has that route's methods only, not those of a pattern it also matches (`/api/v1/trust-rules/{id}`).
    pub(crate) fn allowed(&self, path: &str) -> Vec<&'static str> {
        if let Some((_, methods)) =
            self.0.iter().find(|(pattern, _)| !pattern.is_prefix() && pattern.pattern() == Some(path))
        {
            return methods.clone();
        }
        let mut allowed: Vec<&'static str> = Vec::new();
        for (pattern, methods) in &self.0 {
            if pattern.is_match(path) {
                for method in methods {
                    if !allowed.contains(method) {
                        allowed.push(method);
                    }
                }
            }
        }
        allowed
    }
}

/// The default service: 405 with `Allow` for a path that exists with other methods, 404 otherwise.
pub(crate) async fn not_found(request: HttpRequest) -> Result<HttpResponse, Problem> {
    let allowed = request.app_data::<actix_web::web::Data<Routes>>().map(|routes| routes.allowed(request.path()));
    match allowed.filter(|allowed| !allowed.is_empty()) {
        Some(allowed) => {
            let allow = allowed.join(", ");
            let value = HeaderValue::from_str(&allow).map_err(|_| Problem::internal())?;
            Err(Problem::new(ProblemCode::MethodNotAllowed, "Method not allowed")
                .detail(format!("{} {} is not served; this path takes {allow}.", request.method(), request.path()))
                .header(header::ALLOW, value))
        }
        None => Err(Problem::not_found(format!("No route for {} {}", request.method(), request.path()))),
    }
}

pub(crate) fn json_error(error: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match &error {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            Problem::new(ProblemCode::PayloadTooLarge, "Body too large").detail(error.to_string())
        }
        JsonPayloadError::ContentType => Problem::new(ProblemCode::UnsupportedMediaType, "Not JSON")
            .detail("The body must be JSON: send Content-Type: application/json."),
        _ => Problem::invalid_request("Invalid request body", error.to_string()),
    }
    .into()
}

pub(crate) fn path_error(error: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    Problem::invalid_request("Invalid path", error.to_string()).into()
}

pub(crate) fn query_error(error: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    Problem::invalid_request("Invalid query string", error.to_string()).into()
}

impl<E: crate::Rejection> From<CommandError<E>> for Problem {
    /// A command that produced no events: the rejection's own code, 409 `concurrent_modification` for a race lost
    /// every time it was retried, 412 `stale_version` for an `If-Match` that no longer holds, and the store's
    /// problem when the store failed.
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(rejection) => {
                let code = rejection.code();
                if code == ProblemCode::Internal {
                    tracing::error!(error.message = %rejection, "a command was refused for a reason no caller causes");
                    return Problem::internal();
                }
                let title = if code == ProblemCode::InvalidField { "Invalid field" } else { "Refused" };
                let problem = Problem::new(code, title).detail(rejection.to_string());
                match rejection.field() {
                    Some(field) => problem.field(field),
                    None => problem,
                }
            }
            CommandError::Conflict => Problem::new(ProblemCode::ConcurrentModification, "Concurrent change")
                .detail("The resource changed while this request was decided; retry it."),
            CommandError::VersionMismatch { expected, actual } => {
                Problem::new(ProblemCode::StaleVersion, "Stale version")
                    .detail(format!("The resource is at version {actual}, not {expected}."))
            }
            CommandError::Store(error) => Problem::from(error),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_code_is_listed_once_with_one_status_and_its_serialized_name() {
        // The OpenAPI schema of the enum lists every variant, so `ALL` cannot miss one.
        let schema = serde_json::to_value(<ProblemCode as utoipa::PartialSchema>::schema()).unwrap();
        let mut variants: Vec<String> =
            schema["enum"].as_array().unwrap().iter().map(|name| name.as_str().unwrap().to_string()).collect();
        let mut listed: Vec<String> = ProblemCode::ALL.iter().map(|code| code.as_str().to_string()).collect();
        variants.sort();
        listed.sort();
        assert_eq!(listed, variants);
        listed.dedup();
        assert_eq!(listed.len(), ProblemCode::ALL.len(), "a code is listed twice");
        for code in ProblemCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            let problem = Problem::new(code, "t");
            assert_eq!(problem.status(), code.status());
            let document = serde_json::to_value(&problem).unwrap();
            assert_eq!(document["status"], code.status().as_u16());
            assert_eq!(document["type"], format!("urn:gatehouse:problem:{}", code.as_str()));
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{code:?}");
        }
    }

    /// The Errors table of docs/API.md: code → status.
    fn documented_statuses() -> BTreeMap<String, String> {
        let api_md = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/API.md"));
        let start = api_md.find("| code | status | meaning |").expect("docs/API.md has the Errors table");
        api_md[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
                (cells[0].trim_matches('`').to_string(), cells[1].to_string())
            })
            .collect()
    }

    #[test]
    fn the_api_docs_list_every_code_with_its_one_status() {
        let documented = documented_statuses();
        let expected: BTreeMap<String, String> = ProblemCode::ALL
            .iter()
            .map(|code| (code.as_str().to_string(), code.status().as_u16().to_string()))
            .collect();
        assert_eq!(documented, expected, "docs/API.md's Errors table and ProblemCode::status disagree");
    }

    #[test]
    fn problems_carry_their_headers() {
        let problem = Problem::new(ProblemCode::MethodNotAllowed, "Method not allowed")
            .header(header::ALLOW, HeaderValue::from_static("GET, POST"));
        let response = problem.error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET, POST");
        assert_eq!(response.headers().get(header::CONTENT_TYPE).unwrap(), "application/problem+json");
        let unavailable = Problem::store_unavailable().error_response();
        assert_eq!(unavailable.headers().get(header::RETRY_AFTER).unwrap(), "2");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refusal(ProblemCode);

    impl crate::Rejection for Refusal {
        fn code(&self) -> ProblemCode {
            self.0
        }

        fn field(&self) -> Option<&'static str> {
            (self.0 == ProblemCode::InvalidField).then_some("reason")
        }
    }

    #[test]
    fn command_errors_convert_through_one_mapping() {
        let problem = Problem::from(CommandError::<Refusal>::Conflict);
        assert_eq!(problem.code(), ProblemCode::ConcurrentModification);
        assert_eq!(problem.status(), StatusCode::CONFLICT);
        let problem = Problem::from(CommandError::<Refusal>::VersionMismatch { expected: 1, actual: 2 });
        assert_eq!((problem.code(), problem.status()), (ProblemCode::StaleVersion, StatusCode::PRECONDITION_FAILED));
        let problem = Problem::from(CommandError::Rejected(Refusal(ProblemCode::LastAdmin)));
        assert_eq!((problem.code(), problem.status()), (ProblemCode::LastAdmin, StatusCode::CONFLICT));
        let problem = Problem::from(CommandError::Rejected(Refusal(ProblemCode::InvalidField)));
        assert_eq!((problem.status(), problem.field_name()), (StatusCode::UNPROCESSABLE_ENTITY, Some("reason")));
        let problem = Problem::from(CommandError::<Refusal>::Store(StoreError::Corrupt("bad row".into())));
        assert_eq!((problem.code(), problem.status()), (ProblemCode::Internal, StatusCode::INTERNAL_SERVER_ERROR));
    }
}
