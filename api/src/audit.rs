//! The auditors' API: one aggregate's history, the global feed, an aggregate's state as of a point in the log,
//! and the streaming export (`export.rs`). Auditors and admins only. Every read is itself recorded as an
//! `AuditLogRead` event before the answer leaves, so an unrecorded read cannot happen: when recording fails, the
//! caller gets 503 and no data.

use actix_web::{get, web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::Aggregate;
use domain::audit_access::RecordRead;
use domain::publishing::Publishing;
use domain::roster::{Role, Roster};
use domain::trust::TrustRules;
use serde::{Deserialize, Serialize};
use store::{Cursor, EventMetadata, RecordedEvent};

use crate::auth::Caller;
use crate::extract::{Path, Query};
use crate::{AppState, List, NoFilters, Problem, ProblemCode};

/// Most events one feed page scans, whatever its filters, so a sparse filter costs bounded work per request.
const MAX_SCAN: usize = 5_000;

/// One event as auditors see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// Its place in the global log: pass as `after` to read what follows.
    pub cursor: String,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// 1 for the aggregate's first event, then consecutive.
    pub sequence: u64,
    /// The stored event type.
    pub event_type: String,
    /// The stored schema version.
    pub event_version: String,
    /// The event as stored.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Actor, request, correlation and causation ids, time.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// When the store recorded it (RFC 3339, UTC).
    pub recorded_at: String,
}

impl From<RecordedEvent> for EventView {
    fn from(mut event: RecordedEvent) -> Self {
        // Sealed secrets stay in the log; responses show a placeholder (crate::vault).
        crate::vault::redact_sealed(&mut event.payload);
        Self {
            cursor: event.cursor.to_string(),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: event.payload,
            metadata: event.metadata,
            recorded_at: event.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }
}

/// A page of one aggregate's events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AggregateEventsPage {
    /// Events in sequence order.
    pub items: Vec<EventView>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// Paging of one aggregate's events (as documented; [`Sequence`] and [`crate::Paging`] parse it).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AggregateEventsQuery {
    /// Return events after this sequence number (default 0: from the first).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A page of the global feed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    /// Matching events in global order.
    pub items: Vec<EventView>,
    /// Where this page stopped reading: pass as `after` to continue (also when `items` is empty).
    pub next: String,
    /// True when the page reached the end of what is readable now (poll again later for new events).
    pub at_end: bool,
}

/// Filters of the global feed (its position and size are `after` and `limit`: [`LogCursor`]).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events whose metadata names this actor.
    pub actor: Option<String>,
    /// Only events recorded at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only events recorded before this time (RFC 3339).
    pub to: Option<String>,
}

/// The most items an audit page holds.
const AUDIT_MAX_LIMIT: i64 = 1_000;

/// `after` of one aggregate's events: a sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Sequence(u64);

impl crate::PageCursor for Sequence {
    const HINT: &'static str = "after takes a sequence number (the next value of the previous page)";

    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok().map(Sequence)
    }
}

/// `after` of the global feed: a cursor of the global log.
#[derive(Debug, Clone, Copy)]
pub struct LogCursor(Cursor);

impl crate::PageCursor for LogCursor {
    const HINT: &'static str = "a cursor is the `cursor` or `next` value the API returned";

    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok().map(LogCursor)
    }
}

/// `after` of the checkpoint list: a checkpoint's id.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointId(i64);

impl crate::PageCursor for CheckpointId {
    const HINT: &'static str = "after takes a checkpoint id (the next value of the previous page)";

    fn decode(raw: &str) -> Option<Self> {
        raw.parse().ok().map(CheckpointId)
    }
}

/// Where to replay up to.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// Replay events at or before this cursor (an event's `cursor`).
    pub at: Option<String>,
    /// Replay events recorded at or before this time (RFC 3339).
    pub at_time: Option<String>,
}

/// An aggregate's state, replayed from its events.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StateView {
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// How many of its events the state includes (its version at that point).
    pub version: u64,
    /// The cursor of the last event included, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_cursor: Option<String>,
    /// The state, as the aggregate holds it.
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
}

pub(crate) fn parse_cursor(field: &str, raw: &str) -> Result<Cursor, Problem> {
    raw.parse::<Cursor>()
        .map_err(|_| Problem::invalid_field(field, "a cursor is the `cursor` or `next` value the API returned"))
}

fn parse_time(field: &str, raw: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| Problem::invalid_field(field, "an RFC 3339 time, such as 2026-11-29T12:00:00Z"))
}

fn aggregate_type(raw: &str) -> Result<&str, Problem> {
    let valid = !raw.is_empty() && raw.len() <= 64 && raw.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if valid {
        Ok(raw)
    } else {
        Err(Problem::new(ProblemCode::NotFound, "Not found").detail("No such aggregate type."))
    }
}

fn aggregate_id(raw: &str) -> Result<&str, Problem> {
    if !raw.is_empty() && raw.len() <= 256 && !raw.chars().any(char::is_control) {
        Ok(raw)
    } else {
        Err(Problem::new(ProblemCode::NotFound, "Not found").detail("No such aggregate."))
    }
}

/// Records that `caller` read `request`'s target, returning `items` events. Fails closed.
pub(crate) async fn record_read(
    state: &AppState,
    caller: &Caller,
    request: &HttpRequest,
    items: u64,
) -> Result<(), Problem> {
    let resource = format!("{} {}", request.method(), request.match_pattern().unwrap_or_default());
    let target = request.uri().path_and_query().map(|path| path.as_str().to_string()).unwrap_or_default();
    let command = RecordRead { reader: caller.email.clone(), resource, target, items };
    let metadata = EventMetadata::for_request(caller.email.to_string(), crate::request_id(request));
    state
        .audit_access
        .execute_retrying(caller.email.as_str(), command, &metadata, 10)
        .await
        .map(drop)
        .map_err(Problem::from)
}

/// One aggregate's events, in sequence order (auditors and admins).
#[utoipa::path(get, path = "/api/v1/aggregates/{aggregate_type}/{aggregate_id}/events", tag = "audit",
    params(AggregateEventsQuery), security(("bearer" = [])),
    responses((status = 200, body = AggregateEventsPage), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/aggregates/{aggregate_type}/{aggregate_id}/events")]
pub async fn aggregate_events(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<(String, String)>,
    query: List<NoFilters, Sequence, AUDIT_MAX_LIMIT>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let (kind, id) = path.into_inner();
    let (kind, id) = (aggregate_type(&kind)?, aggregate_id(&id)?);
    let limit = usize::try_from(query.page.limit).unwrap_or(usize::MAX);
    let after = query.page.after.map_or(0, |after| after.0);
    let mut events =
        state.store.aggregate_events(kind, id, after, query.page.fetch_usize()).await.map_err(Problem::from)?;
    if events.is_empty() && after == 0 {
        return Err(Problem::new(ProblemCode::NotFound, "Not found").detail(format!("No events for {kind} {id}.")));
    }
    let next = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|event| event.sequence)
    } else {
        None
    };
    record_read(&state, &caller, &request, events.len() as u64).await?;
    Ok(HttpResponse::Ok().json(AggregateEventsPage { items: events.into_iter().map(EventView::from).collect(), next }))
}

/// The global feed: every event in global order from a cursor, filterable (auditors and admins).
#[utoipa::path(get, path = "/api/v1/events", tag = "audit",
    params(
        ("after" = Option<String>, Query, description = "A cursor (`next` of a previous page, or an event's `cursor`); default: the start of the log."),
        FeedQuery,
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
         description = "Most items, 1 to 1,000 (default 100). A page scans at most 5,000 events, so a sparse filter may return fewer; continue from `next`."),
    ),
    security(("bearer" = [])),
    responses((status = 200, body = FeedPage), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/events")]
pub async fn feed(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    query: List<FeedQuery, LogCursor, AUDIT_MAX_LIMIT>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let List { filters: query, page } = query;
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut cursor = page.after.map_or(Cursor::START, |after| after.0);
    let from = query.from.as_deref().map(|raw| parse_time("from", raw)).transpose()?;
    let to = query.to.as_deref().map(|raw| parse_time("to", raw)).transpose()?;
    let matches = |event: &RecordedEvent| {
        query.aggregate_type.as_ref().is_none_or(|kind| *kind == event.aggregate_type)
            && query.event_type.as_ref().is_none_or(|kind| *kind == event.event_type)
            && query
                .actor
                .as_ref()
                .is_none_or(|actor| event.metadata.get("actor").and_then(|a| a.as_str()) == Some(actor))
            && from.is_none_or(|from| event.recorded_at >= from)
            && to.is_none_or(|to| event.recorded_at < to)
    };
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut at_end = false;
    while items.len() < limit && scanned < MAX_SCAN {
        let page = state.store.read_global(cursor, 1_000.min(MAX_SCAN - scanned)).await.map_err(Problem::from)?;
        if page.is_empty() {
            at_end = true;
            break;
        }
        for event in page {
            scanned += 1;
            cursor = event.cursor;
            if matches(&event) {
                items.push(EventView::from(event));
                if items.len() == limit {
                    break;
                }
            }
        }
    }
    record_read(&state, &caller, &request, items.len() as u64).await?;
    Ok(HttpResponse::Ok().json(FeedPage { items, next: cursor.to_string(), at_end }))
}

/// Replays `events` into the aggregate `A` and returns its state as JSON.
fn replay<A: Aggregate + Serialize>(events: &[RecordedEvent]) -> Result<serde_json::Value, Problem> {
    let mut aggregate = A::default();
    for event in events {
        let payload: A::Event = serde_json::from_value(event.payload.clone()).map_err(|error| {
            tracing::error!(error.message = %error, aggregate_type = A::TYPE, "stored event cannot be decoded");
            Problem::internal()
        })?;
        aggregate.apply(payload);
    }
    let mut state = serde_json::to_value(&aggregate).map_err(|_| Problem::internal())?;
    crate::vault::redact_sealed(&mut state);
    Ok(state)
}

/// An aggregate's state as of a cursor or a time, replayed from its own events (auditors and admins).
#[utoipa::path(get, path = "/api/v1/aggregates/{aggregate_type}/{aggregate_id}/state", tag = "audit",
    params(StateQuery), security(("bearer" = [])),
    responses((status = 200, body = StateView), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/aggregates/{aggregate_type}/{aggregate_id}/state")]
pub async fn aggregate_state(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<(String, String)>,
    query: Query<StateQuery>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let (kind, id) = path.into_inner();
    let (kind, id) = (aggregate_type(&kind)?, aggregate_id(&id)?);
    let at = query.at.as_deref().map(|raw| parse_cursor("at", raw)).transpose()?;
    let at_time = query.at_time.as_deref().map(|raw| parse_time("at_time", raw)).transpose()?;
    // Given both, the state is the one at the earlier of the two points.
    let mut events = Vec::new();
    let mut sequence = 0;
    loop {
        let page = state.store.aggregate_events(kind, id, sequence, 10_000).await.map_err(Problem::from)?;
        let done = page.len() < 10_000;
        sequence = page.last().map_or(sequence, |event| event.sequence);
        events.extend(page);
        if done {
            break;
        }
    }
    if events.is_empty() {
        return Err(Problem::new(ProblemCode::NotFound, "Not found").detail(format!("No events for {kind} {id}.")));
    }
    // An aggregate's events are in its own order; the ones at or before the point form a prefix of it.
    let included = events
        .iter()
        .take_while(|event| {
            at.is_none_or(|at| event.cursor <= at) && at_time.is_none_or(|time| event.recorded_at <= time)
        })
        .count();
    let events = &events[..included];
    let replayed = match kind {
        Roster::TYPE => replay::<Roster>(events)?,
        Publishing::TYPE => replay::<Publishing>(events)?,
        TrustRules::TYPE => replay::<TrustRules>(events)?,
        domain::blueprint::Blueprint::TYPE => replay::<domain::blueprint::Blueprint>(events)?,
        domain::org::Org::TYPE => replay::<domain::org::Org>(events)?,
        domain::portal::Portal::TYPE => replay::<domain::portal::Portal>(events)?,
        domain::audit_access::AuditAccess::TYPE => replay::<domain::audit_access::AuditAccess>(events)?,
        _ => {
            return Err(
                Problem::new(ProblemCode::NotFound, "Not found").detail(format!("{kind} has no replayable state."))
            )
        }
    };
    record_read(&state, &caller, &request, events.len() as u64).await?;
    Ok(HttpResponse::Ok().json(StateView {
        aggregate_type: kind.to_string(),
        aggregate_id: id.to_string(),
        version: events.len() as u64,
        last_cursor: events.last().map(|event| event.cursor.to_string()),
        state: replayed,
    }))
}

/// Where an export starts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Export the events after this one (the `cursor` of the last event line of a previous export); default: all.
    pub since: Option<String>,
}

/// The checkpoint signing key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeyView {
    /// Always `Ed25519`.
    pub algorithm: &'static str,
    /// The 32-byte public key, hex.
    pub public_key: String,
    /// The public key in PEM (SubjectPublicKeyInfo), for OpenSSL.
    pub public_key_pem: String,
    /// Its id: the first 8 bytes of SHA-256(public key), hex, as checkpoints name it.
    pub key_id: String,
}

/// A page of signed checkpoints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckpointPage {
    /// Checkpoints as export lines (objects with `kind: "checkpoint"`), oldest first, each with its `id`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

/// Paging of checkpoints (as documented; [`CheckpointId`] and [`crate::Paging`] parse it).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// The `next` value of the previous page (default 0).
    pub after: Option<i64>,
    /// Page size, 1 to 1,000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

fn checkpoint_json(checkpoint: &::audit::Checkpoint) -> Result<serde_json::Value, Problem> {
    serde_json::from_str(checkpoint.to_line().trim_end()).map_err(|_| Problem::internal())
}

/// The whole chained log (or what follows a cursor) as NDJSON, streamed: a header, every event with its link, and
/// a checkpoint of the last event signed now. Verify it offline with `gatehouse audit verify` (auditors, admins).
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", params(ExportQuery), security(("bearer" = [])),
    responses((status = 200, description = "application/x-ndjson: the export (docs/AUDIT.md)"),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem, description = "`since` names no chained event"),
              (status = 503, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/audit/export")]
pub async fn export(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    query: Query<ExportQuery>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let since =
        query.since.as_deref().filter(|since| !since.is_empty()).map(|raw| parse_cursor("since", raw)).transpose()?;
    let start = projections::audit_chain::export_start(&state.store, since).await.map_err(|error| match error {
        projections::audit_chain::ExportError::UnknownCursor => Problem::new(ProblemCode::NotFound, "Not found")
            .detail("The cursor names no chained event (chaining follows the log within milliseconds)."),
        projections::audit_chain::ExportError::Store(error) => Problem::from(error),
    })?;
    record_read(&state, &caller, &request, 0).await?;
    let (lines, receiver) = tokio::sync::mpsc::channel(256);
    let store = state.store.clone();
    let key = state.audit_key.clone();
    actix_web::rt::spawn(async move {
        let exported = projections::audit_chain::export(&store, start, &key, lines).await;
        tracing::debug!(exported, "audit export finished");
    });
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        let item = receiver.recv().await?;
        let item = item.map(actix_web::web::Bytes::from).map_err(|error| {
            // The client sees the stream end without its final checkpoint, which verification reports.
            tracing::error!(error.message = %error, "audit export failed mid-stream");
            actix_web::error::ErrorInternalServerError("export failed")
        });
        Some((item, receiver))
    });
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").streaming(body))
}

/// The public key that signs checkpoints (auditors, admins).
#[utoipa::path(get, path = "/api/v1/audit/public-key", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = PublicKeyView), (status = 401, body = Problem), (status = 403, body = Problem)))]
#[get("/api/v1/audit/public-key")]
pub async fn public_key(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<web::Json<PublicKeyView>, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    record_read(&state, &caller, &request, 0).await?;
    let key = state.audit_key.public_key();
    Ok(web::Json(PublicKeyView {
        algorithm: "Ed25519",
        public_key: key.to_hex(),
        public_key_pem: key.to_pem(),
        key_id: key.key_id().to_hex(),
    }))
}

/// The latest signed checkpoint, as an export line: keep it to detect a truncated log later (auditors, admins).
#[utoipa::path(get, path = "/api/v1/audit/checkpoints/latest", tag = "audit", security(("bearer" = [])),
    responses((status = 200, description = "A checkpoint line (object)"), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
#[get("/api/v1/audit/checkpoints/latest")]
pub async fn latest_checkpoint(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let latest = projections::audit_chain::latest_checkpoint(state.store.read_models()).await.map_err(Problem::from)?;
    let latest =
        latest.ok_or_else(|| Problem::new(ProblemCode::NotFound, "Not found").detail("No checkpoint signed yet."))?;
    record_read(&state, &caller, &request, 0).await?;
    Ok(HttpResponse::Ok().json(checkpoint_json(&latest)?))
}

/// Every signed checkpoint, oldest first (auditors, admins).
#[utoipa::path(get, path = "/api/v1/audit/checkpoints", tag = "audit", params(CheckpointQuery),
    security(("bearer" = [])),
    responses((status = 200, body = CheckpointPage), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/audit/checkpoints")]
pub async fn list_checkpoints(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    query: List<NoFilters, CheckpointId, AUDIT_MAX_LIMIT>,
) -> Result<web::Json<CheckpointPage>, Problem> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let limit = query.page.limit;
    let after = query.page.after.map_or(0, |after| after.0);
    let rows = projections::audit_chain::checkpoints(state.store.read_models(), after, query.page.fetch())
        .await
        .map_err(Problem::from)?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let mut items = Vec::with_capacity(rows.len());
    for (id, checkpoint) in rows {
        let mut item = checkpoint_json(checkpoint)?;
        item["id"] = serde_json::json!(id);
        items.push(item);
    }
    record_read(&state, &caller, &request, 0).await?;
    Ok(web::Json(CheckpointPage { items, next: if more { rows.last().map(|(id, _)| *id) } else { None } }))
}
