//! `Idempotency-Key` on POSTs: a retried request gets the first attempt's answer instead of running again.
//!
//! The first request with a key claims it (a `pending` row, unique per caller, route and key), runs, and stores its
//! answer; a retry with the same key and the same body gets that answer back (`Idempotent-Replayed: true`), one
//! with another body gets 422, and one that arrives while the first still runs gets 409 with `Retry-After`.
//! Answers that say "try again" (5xx) are not kept, so the retry runs. A claim left `pending` by a crash is taken
//! over after [`STALE_PENDING_MS`]; answers are kept for [`RETENTION_MS`]. These rows are operational state, not
//! history: the events the first attempt produced are the record.
//!
//! A command's answer is rendered from its decided state and stored (`prepared`) just before its events are
//! appended, and the events name the attempt: so a retry after a crash between the commit and the answer finds the
//! commit in the log and gets the prepared answer, never a second execution (ADR 0018).

use std::sync::{Arc, Mutex};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use store::idempotency::{self, Claim};
use store::{BeforeAppend, EventMetadata, EventStore, StoreError};

use crate::auth::Caller;
use crate::{AppState, Problem, ProblemCode};

/// How long an answer is kept.
pub const RETENTION_MS: i64 = 24 * 3600 * 1000;
/// How long a claim may stay pending before another attempt takes it over, by default (the setting
/// `idempotency_takeover_secs`). Far above the store's deadline, past which no append of the first attempt can still
/// commit.
pub const STALE_PENDING_MS: i64 = 60 * 1000;

/// A successful answer to keep and send.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The JSON body.
    pub body: serde_json::Value,
    /// The `Location` header, if any.
    pub location: Option<String>,
    /// The `ETag` header, if any (sent on the first answer only: a replay carries the body's version instead).
    pub etag: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn respond(status: u16, body: &str, location: Option<&str>, replayed: bool) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    let content_type = if status.is_success() { "application/json" } else { "application/problem+json" };
    response.content_type(content_type);
    if let Some(location) = location {
        response.insert_header(("Location", location.to_string()));
    }
    if replayed {
        response.insert_header(("Idempotent-Replayed", "true"));
    }
    response.body(body.to_string())
}

fn reply_response(reply: &Reply) -> HttpResponse {
    let mut response = respond(reply.status.as_u16(), &reply.body.to_string(), reply.location.as_deref(), false);
    if let Some(etag) = reply.etag.as_deref().and_then(|etag| actix_web::http::header::HeaderValue::from_str(etag).ok())
    {
        response.headers_mut().insert(actix_web::http::header::ETAG, etag);
    }
    response
}

/// The attempt a request runs as: what its command's metadata and answer need from the `Idempotency-Key`.
#[derive(Clone)]
pub struct Attempt {
    keyed: Option<Arc<Keyed>>,
    prepared: Arc<Mutex<Option<Reply>>>,
}

struct Keyed {
    store: EventStore,
    scope: String,
    key: String,
    attempt: String,
}

impl Attempt {
    fn unkeyed() -> Self {
        Self { keyed: None, prepared: Arc::default() }
    }

    /// The command's metadata, naming this attempt when the request has a key.
    pub fn metadata(&self, metadata: EventMetadata) -> EventMetadata {
        metadata.with_idempotency_attempt(self.keyed.as_ref().map(|keyed| keyed.attempt.as_str()))
    }

    /// The hook for `execute_retrying_prepared`: renders the answer from the decided state and the version it will
    /// have and, for a keyed request, stores it before the command appends.
    pub fn before_append<A: 'static>(
        &self,
        render: impl Fn(&A, u64) -> Result<Reply, Problem> + Send + Sync + 'static,
    ) -> Box<BeforeAppend<A>> {
        let attempt = self.clone();
        Box::new(move |aggregate: &A, version: u64| {
            let rendered = render(aggregate, version);
            let attempt = attempt.clone();
            Box::pin(async move {
                let reply = rendered.map_err(|problem| {
                    StoreError::Corrupt(format!("the answer could not be rendered: {}", problem.status()))
                })?;
                if let Some(keyed) = &attempt.keyed {
                    let stored = idempotency::prepare(
                        &keyed.store,
                        &keyed.scope,
                        &keyed.key,
                        &keyed.attempt,
                        reply.status.as_u16(),
                        &reply.body.to_string(),
                        reply.location.as_deref(),
                    )
                    .await?;
                    if !stored {
                        // Taken over by a retry after this attempt went stale: it must not run as well.
                        return Err(StoreError::unavailable("the Idempotency-Key was taken over by a retry"));
                    }
                }
                *attempt.prepared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reply);
                Ok(())
            })
        })
    }

    /// The answer the last `before_append` rendered (the one the committed events go with), if it ran.
    pub fn prepared(&self) -> Option<Reply> {
        self.prepared.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// Runs `action` once per `Idempotency-Key` (when the request has one). `fingerprint` identifies the request's
/// content: a retry must send the same. `action` gets the [`Attempt`] to put into its command's metadata and whose
/// `before_append` hook renders its answer.
pub async fn run<F, Fut>(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    fingerprint: String,
    action: F,
) -> Result<HttpResponse, Problem>
where
    F: FnOnce(Attempt) -> Fut,
    Fut: std::future::Future<Output = Result<Reply, Problem>>,
{
    let Some(key) = request.headers().get("idempotency-key") else {
        return action(Attempt::unkeyed()).await.map(|reply| reply_response(&reply));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::new(ProblemCode::InvalidField, "Invalid header")
                .field("Idempotency-Key")
                .detail("Idempotency-Key is 1 to 255 printable ASCII characters")
        })?
        .to_string();
    let scope = format!("{} {} {}", caller.email, request.method(), request.match_pattern().unwrap_or_default());
    let store = &state.store;
    let attempt =
        match idempotency::claim(store, &scope, &key, &fingerprint, now_ms(), state.idempotency_stale_ms, RETENTION_MS)
            .await?
        {
            Claim::Claimed { attempt } => attempt,
            Claim::Done { status, response, location } => {
                return Ok(respond(status, &response, location.as_deref(), true))
            }
            Claim::InProgress => return Err(in_progress()),
            Claim::Reused => {
                return Err(Problem::new(ProblemCode::IdempotencyKeyReused, "Idempotency key reused")
                    .field("Idempotency-Key")
                    .detail("This key was used for a different request."))
            }
        };
    let keyed = Keyed { store: store.clone(), scope: scope.clone(), key: key.clone(), attempt: attempt.clone() };
    let outcome = action(Attempt { keyed: Some(Arc::new(keyed)), prepared: Arc::default() }).await;
    let (status, body, location) = match &outcome {
        Ok(reply) => (reply.status.as_u16(), reply.body.to_string(), reply.location.clone()),
        Err(problem) => (problem.status().as_u16(), serde_json::to_string(problem).unwrap_or_default(), None),
    };
    let kept = if status >= 500 {
        idempotency::forget(store, &scope, &key, &attempt).await
    } else {
        idempotency::complete(store, &scope, &key, &attempt, status, &body, location.as_deref()).await
    };
    if let Err(error) = kept {
        // The answer still goes out; a retry finds the claim pending and takes it over once it is stale.
        tracing::warn!(error.message = %error, "could not record an idempotent answer");
    }
    outcome.map(|reply| reply_response(&reply))
}

fn in_progress() -> Problem {
    Problem::new(ProblemCode::RequestInProgress, "Request in progress")
        .detail("A request with this Idempotency-Key is still running; retry shortly.")
        .retry_after(1)
}
