//! RFC 9457 problem documents: every error response has this shape and a stable `code`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use store::StoreError;

/// Stable machine-readable error codes. **API Boundary:** clients match on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// The request body, path or query is malformed.
    InvalidRequest,
    /// No such resource or route.
    NotFound,
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
    /// A field has an invalid value; `field` names it.
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
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type (`urn:gatehouse:problem:<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What happened in this occurrence, safe to show to the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The stable code.
    pub code: ProblemCode,
    /// For validation problems: the offending field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before retrying (also sent as `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
}

impl Problem {
    /// A problem with `status`, `code` and a title.
    pub fn new(status: StatusCode, code: ProblemCode, title: &str) -> Self {
        let code_name =
            serde_json::to_value(code).ok().and_then(|value| value.as_str().map(str::to_string)).unwrap_or_default();
        Self {
            kind: format!("urn:gatehouse:problem:{code_name}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: None,
            code,
            field: None,
            retry_after: None,
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

    /// A query parameter is invalid: 400 `invalid_field` naming it.
    pub fn invalid_query(field: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidField, "Invalid query").field(field).detail(detail)
    }

    /// The store is unavailable: 503 with `Retry-After`.
    pub fn store_unavailable() -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, ProblemCode::StoreUnavailable, "The event store is unavailable")
            .detail("Nothing was changed. Retry the request.")
            .retry_after(2)
    }

    /// An internal error; the cause goes to the log, never to the caller.
    pub fn internal() -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, ProblemCode::Internal, "Internal error")
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.status)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json")));
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
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

pub(crate) async fn not_found(request: HttpRequest) -> Result<HttpResponse, Problem> {
    Err(Problem::new(StatusCode::NOT_FOUND, ProblemCode::NotFound, "Not found").detail(format!(
        "No route for {} {}",
        request.method(),
        request.path()
    )))
}

pub(crate) fn json_error(error: actix_web::error::JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let status = match &error {
        actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
        | actix_web::error::JsonPayloadError::Overflow { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        actix_web::error::JsonPayloadError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    Problem::new(status, ProblemCode::InvalidRequest, "Invalid request body").detail(error.to_string()).into()
}

pub(crate) fn path_error(error: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidRequest, "Invalid path").detail(error.to_string()).into()
}

pub(crate) fn query_error(error: actix_web::error::QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    Problem::new(StatusCode::BAD_REQUEST, ProblemCode::InvalidRequest, "Invalid query string")
        .detail(error.to_string())
        .into()
}
