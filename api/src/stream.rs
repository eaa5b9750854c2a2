//! Live updates over server-sent events: a workspace's provisioning, and each caller's stream of the changes they may
//! see (their workspaces and publish requests; admins: everyone's, which includes the approvals queue).
//!
//! One task ([`LiveLog::run`]) tails the global log, woken by this process's commits and polling for other
//! processes', and turns the events that streams show into [`LiveEvent`]s (who may see each is decided once, here),
//! broadcast to every subscriber. An event's SSE `id` is its global-log cursor, so a client that reconnects with
//! `Last-Event-ID` resumes exactly after the last event it received: the subscriber reads what it missed from the
//! store, then follows the broadcast, and never sends a cursor twice (cursors only grow). A subscriber that falls
//! behind the broadcast reads from the store again, from its last cursor.
//!
//! Each event is checked for its subscriber (its audience, or the subscriber is an admin), and the subscriber's role
//! is read again at every keep-alive: a member removed or made auditor loses the stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{get, web, HttpRequest, HttpResponse};
use domain::publishing::{Publishing, PublishingEvent, RequestId, PUBLISHING_ID};
use domain::roster::Role;
use domain::workspace::{WorkspaceEvent, Workspaces};
use store::{AggregateRepository, Cursor, EventStore, RecordedEvent};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::extract::Path;
use crate::{AppState, Problem, ProblemCode};

/// One server-sent event, as the OpenAPI document describes the stream's items.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SseEvent {
    /// The event's log cursor (what `Last-Event-ID` takes back); absent on a provisioning stream's `status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `workspace`, `publish_request` or `status`.
    pub event: String,
    /// A JSON object (see docs/API.md, "Live updates").
    pub data: String,
}

/// How often a stream sends a keep-alive comment (and its subscriber's role is read again).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Batches the broadcast holds for a slow subscriber before it must read from the store.
const BROADCAST_BATCHES: usize = 1024;
/// Events read from the store per page.
const PAGE: usize = 500;

/// An event a stream may show.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// Its place in the global log (the SSE `id`).
    pub cursor: Cursor,
    /// The SSE `event`: `workspace` or `publish_request`.
    pub kind: &'static str,
    /// Who may see it besides admins: the workspace's owner, the request's builder.
    pub audience: String,
    /// The workspace it is about, for a workspace event.
    pub workspace: Option<String>,
    /// Whether it ends a provisioning (the workspace is running, failed, stopped or deleted).
    pub settles: bool,
    /// The SSE `data`.
    pub data: serde_json::Value,
}

impl LiveEvent {
    fn frame(&self) -> Bytes {
        Bytes::from(format!("id: {}\nevent: {}\ndata: {}\n\n", self.cursor, self.kind, self.data))
    }
}

/// Decides which events streams show and who may see them. Knows each publish request's builder (from the
/// requests seen, else from the publishing aggregate: a request's builder never changes).
struct Classifier {
    publishing: Arc<AggregateRepository<Publishing>>,
    builders: Mutex<HashMap<String, String>>,
}

impl Classifier {
    async fn builder_of(&self, request: &RequestId) -> Option<String> {
        if let Some(builder) = self.builders.lock().ok().and_then(|known| known.get(request.as_str()).cloned()) {
            return Some(builder);
        }
        let (publishing, _) = self.publishing.load(PUBLISHING_ID).await.ok()?;
        let builder = publishing.request(request)?.builder.to_string();
        self.remember(request.as_str(), &builder);
        Some(builder)
    }

    fn remember(&self, request: &str, builder: &str) {
        if let Ok(mut known) = self.builders.lock() {
            // A bound on memory: the aggregate answers for the requests forgotten.
            if known.len() >= 100_000 {
                known.clear();
            }
            known.insert(request.to_string(), builder.to_string());
        }
    }

    async fn classify(&self, event: &RecordedEvent) -> Option<LiveEvent> {
        use serde_json::json;
        if event.aggregate_type == <Workspaces as cqrs_es::Aggregate>::TYPE {
            let decoded: WorkspaceEvent = serde_json::from_value(event.payload.clone()).ok()?;
            let id = decoded.workspace().to_string();
            let change = event.event_type.clone();
            let (status, mut data) = match &decoded {
                WorkspaceEvent::WorkspaceLaunched { name, blueprint_key, .. } => {
                    ("deploying", json!({"name": name, "blueprint_key": blueprint_key}))
                }
                WorkspaceEvent::WorkspaceStartRequested { .. }
                | WorkspaceEvent::WorkspaceRestartRequested { .. }
                | WorkspaceEvent::WorkspaceUpgradeRequested { .. } => ("deploying", json!({})),
                WorkspaceEvent::WorkspacePhaseReached { phase, .. } => ("deploying", json!({"phase": phase})),
                WorkspaceEvent::WorkspaceSourceCloned { .. } => return None,
                WorkspaceEvent::WorkspaceStarted { dev_port, .. } => ("running", json!({"dev_port": dev_port})),
                WorkspaceEvent::WorkspaceStopRequested { .. } | WorkspaceEvent::WorkspaceStopped { .. } => {
                    ("stopped", json!({}))
                }
                WorkspaceEvent::WorkspaceFailed { phase, reason, .. } => {
                    ("error", json!({"failure": {"phase": phase, "reason": reason}}))
                }
                WorkspaceEvent::WorkspaceRenamed { name, .. } => ("", json!({"name": name})),
                WorkspaceEvent::WorkspaceDeleteRequested { .. } | WorkspaceEvent::WorkspaceDeleted { .. } => {
                    ("deleted", json!({}))
                }
            };
            data["workspace"] = json!(id);
            data["owner"] = json!(event.aggregate_id);
            data["change"] = json!(change);
            if !status.is_empty() {
                data["status"] = json!(status);
            }
            let settles = matches!(status, "running" | "error" | "stopped" | "deleted");
            return Some(LiveEvent {
                cursor: event.cursor,
                kind: "workspace",
                audience: event.aggregate_id.clone(),
                workspace: Some(id),
                settles,
                data,
            });
        }
        if event.aggregate_type == <Publishing as cqrs_es::Aggregate>::TYPE {
            let decoded: PublishingEvent = serde_json::from_value(event.payload.clone()).ok()?;
            let (request, status, mut data) = match &decoded {
                PublishingEvent::PublishRequested {
                    request_id,
                    workspace_id,
                    blueprint_key,
                    subdomain,
                    builder,
                    ..
                } => {
                    self.remember(request_id.as_str(), builder.as_str());
                    let data = json!({"workspace_id": workspace_id, "blueprint_key": blueprint_key,
                                      "subdomain": subdomain});
                    (request_id, "pending", data)
                }
                PublishingEvent::ApprovalRecorded { request_id, reviewer, .. } => {
                    (request_id, "pending", json!({"reviewer": reviewer}))
                }
                PublishingEvent::PublishApproved { request_id } => (request_id, "approved", json!({})),
                PublishingEvent::PublishAutoApproved { request_id, .. } => (request_id, "approved", json!({})),
                PublishingEvent::PublishRejected { request_id, feedback, .. } => {
                    (request_id, "rejected", json!({"feedback": feedback}))
                }
                PublishingEvent::PublishWithdrawn { request_id, .. } => (request_id, "withdrawn", json!({})),
                PublishingEvent::PublishExpired { request_id } => (request_id, "expired", json!({})),
                PublishingEvent::PublishPushed { request_id, remote, branch, commit_id, .. } => (
                    request_id,
                    "approved",
                    json!({"delivery": "pushed", "remote": remote, "branch": branch, "commit_id": commit_id}),
                ),
                PublishingEvent::PullRequestOpened { request_id, url, number } => (
                    request_id,
                    "approved",
                    json!({"delivery": "pull_request_opened", "pull_request_url": url, "pull_request_number": number}),
                ),
                PublishingEvent::PublishFailed { request_id, stage, reason, retryable, .. } => (
                    request_id,
                    "approved",
                    json!({"delivery": "failed", "stage": stage.as_str(), "reason": reason, "retryable": retryable}),
                ),
                PublishingEvent::PublishRetryRequested { request_id, .. } => {
                    (request_id, "approved", json!({"delivery": "retried"}))
                }
                PublishingEvent::SubdomainClaimed { .. } | PublishingEvent::SubdomainReleased { .. } => return None,
            };
            let builder = self.builder_of(request).await?;
            data["request_id"] = json!(request);
            data["builder"] = json!(builder);
            data["status"] = json!(status);
            data["change"] = json!(event.event_type);
            return Some(LiveEvent {
                cursor: event.cursor,
                kind: "publish_request",
                audience: builder,
                workspace: None,
                settles: false,
                data,
            });
        }
        None
    }
}

type Batch = Arc<Vec<Arc<LiveEvent>>>;

/// Where the tail stands, and the broadcast: changed together, so that a new subscriber's starting point and its
/// receiver agree.
struct Head {
    position: Cursor,
    sender: broadcast::Sender<Batch>,
}

/// The tail of the global log that every stream follows.
pub struct LiveLog {
    head: Mutex<Head>,
    classifier: Classifier,
    store: EventStore,
    /// Cancelled when the service stops: every stream ends, so that shutdown does not wait for them.
    pub closing: CancellationToken,
}

impl LiveLog {
    /// A tail over `store` (not running until [`LiveLog::run`]).
    pub fn new(store: EventStore, publishing: Arc<AggregateRepository<Publishing>>) -> Arc<Self> {
        let (sender, _) = broadcast::channel(BROADCAST_BATCHES);
        Arc::new(Self {
            head: Mutex::new(Head { position: Cursor::START, sender }),
            classifier: Classifier { publishing, builders: Mutex::new(HashMap::new()) },
            store,
            closing: CancellationToken::new(),
        })
    }

    fn subscribe(&self) -> (Cursor, broadcast::Receiver<Batch>) {
        let head = self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (head.position, head.sender.subscribe())
    }

    fn position(&self) -> Cursor {
        self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).position
    }

    /// Whether the tail reaches `cursor` within `limit` (a cursor another process sent may be a moment ahead of
    /// this one's tail; one that stays ahead names no event of this log).
    async fn reaches(&self, cursor: Cursor, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.position() >= cursor {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tails the log until `shutdown`, from the furthest projection checkpoint (nobody subscribes before this
    /// runs, so where it starts only decides how much it reads first).
    pub async fn run(self: Arc<Self>, poll: Duration, shutdown: CancellationToken) {
        let start = projections::checkpoints(&self.store)
            .await
            .ok()
            .and_then(|rows| rows.iter().filter_map(|row| row.cursor.parse::<Cursor>().ok()).max())
            .unwrap_or(Cursor::START);
        self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).position = start;
        let mut position = start;
        let mut commits = self.store.subscribe();
        loop {
            let page = match self.store.read_global(position, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "live updates cannot read the log; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let Some(last) = page.last().map(|event| event.cursor) else {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = commits.changed() => {}
                    () = tokio::time::sleep(poll) => {}
                }
                continue;
            };
            let mut batch = Vec::new();
            for event in &page {
                if let Some(live) = self.classifier.classify(event).await {
                    batch.push(Arc::new(live));
                }
            }
            position = last;
            let mut head = self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            head.position = last;
            if !batch.is_empty() {
                // No receiver is no error: nobody is listening.
                let _ = head.sender.send(Arc::new(batch));
            }
        }
    }
}

/// What one stream shows.
#[derive(Clone)]
enum Scope {
    /// Everything the caller may see.
    Caller,
    /// One workspace's provisioning, until it settles.
    Provisioning(String),
}

fn allowed(event: &LiveEvent, caller: &Caller, scope: &Scope) -> bool {
    let visible = caller.role == Role::Admin || event.audience == caller.email.as_str();
    match scope {
        Scope::Caller => visible,
        Scope::Provisioning(id) => visible && event.workspace.as_deref() == Some(id.as_str()),
    }
}

/// When the request's bearer token expires (its `exp`; the extractor verified the token already).
fn token_expiry(request: &HttpRequest) -> Option<tokio::time::Instant> {
    use base64::Engine as _;
    let header = request.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = header.split_whitespace().nth(1)?;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let expires = claims["exp"].as_u64()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(tokio::time::Instant::now() + Duration::from_secs(expires.saturating_sub(now)))
}

/// The resume point, checked against the log: one the tail does not reach within a moment (a cursor of another
/// database, or made up) names no event of this log, and the stream starts from now instead of staying silent until
/// the log grows past it.
async fn checked_resume_point(state: &AppState, request: &HttpRequest) -> Result<Option<Cursor>, Problem> {
    let Some(after) = resume_point(request)? else { return Ok(None) };
    if !state.live.reaches(after, Duration::from_secs(2)).await {
        tracing::info!(%after, "a stream resumed past the end of the log starts from now");
        return Ok(None);
    }
    Ok(Some(after))
}

/// The cursor to resume after: `?after=` when given, else `Last-Event-ID` (what an SSE client sends when it
/// reconnects).
fn resume_point(request: &HttpRequest) -> Result<Option<Cursor>, Problem> {
    let header = request.headers().get("last-event-id").and_then(|value| value.to_str().ok()).map(str::trim);
    let query = web::Query::<HashMap<String, String>>::from_query(request.query_string()).map_err(|_| {
        Problem::new(ProblemCode::InvalidRequest, "Invalid query").detail("The query string is malformed.")
    })?;
    for (name, value) in query.iter() {
        if name != "after" {
            return Err(Problem::new(ProblemCode::InvalidRequest, "Invalid query")
                .detail(format!("Unknown query parameter {name:?}.")));
        }
        if value.contains('\0') {
            return Err(Problem::invalid_field("after", "after must not contain NUL"));
        }
    }
    // An explicit `?after=` wins over the header a client sends by itself when it reconnects.
    let (field, raw) = match (query.get("after").filter(|v| !v.is_empty()), header) {
        (Some(after), _) => ("after", after.clone()),
        // Present but empty is no cursor either (the header is absent when there is nothing to resume).
        (None, Some(header)) => ("Last-Event-ID", header.to_string()),
        (None, None) => return Ok(None),
    };
    raw.parse::<Cursor>()
        .map(Some)
        .map_err(|_| Problem::invalid_field(field, "an event id this stream sent (a log cursor such as g1.0.42)"))
}

/// A running stream's state, in its task.
struct Subscriber {
    state: AppState,
    caller: Caller,
    scope: Scope,
    out: mpsc::Sender<Bytes>,
    last: Cursor,
    /// When the caller's token expires: the stream ends then (the client reconnects with a fresh one).
    expires: Option<tokio::time::Instant>,
    /// For a resumed provisioning stream of a workspace that has settled: the frame that ends it once it caught up.
    settled: Option<Bytes>,
}

impl Subscriber {
    /// Sends one event if the subscriber may see it; whether the stream goes on.
    async fn offer(&mut self, event: &LiveEvent) -> Result<bool, ()> {
        if event.cursor <= self.last {
            return Ok(true);
        }
        self.last = event.cursor;
        if !allowed(event, &self.caller, &self.scope) {
            return Ok(true);
        }
        self.out.send(event.frame()).await.map_err(|_| ())?;
        Ok(!(matches!(self.scope, Scope::Provisioning(_)) && event.settles))
    }

    /// Reads what the broadcast no longer holds from the store, up to its end; whether the stream goes on.
    async fn catch_up(&mut self) -> Result<bool, ()> {
        loop {
            let page = self.state.store.read_global(self.last, PAGE).await.map_err(|_| ())?;
            if page.is_empty() {
                return Ok(true);
            }
            for event in &page {
                match self.state.live.classifier.classify(event).await {
                    Some(live) => {
                        if !self.offer(&live).await? {
                            return Ok(false);
                        }
                    }
                    None => self.last = self.last.max(event.cursor),
                }
            }
        }
    }

    /// Whether the caller still holds a role that may see what this stream shows: a member still a member or
    /// made admin, an admin still an admin (an admin's stream shows everyone's changes).
    async fn still_allowed(&self) -> bool {
        match crate::auth::role_of(&self.state, &self.caller.email).await {
            Ok(Some(Role::Admin)) => true,
            Ok(Some(Role::Member)) => self.caller.role == Role::Member,
            // Removed, made auditor, or the roles cannot be read now: the stream ends (the client reconnects).
            _ => false,
        }
    }

    async fn serve(&mut self, receiver: &mut broadcast::Receiver<Batch>, resumed: bool) -> Result<(), ()> {
        self.out.send(Bytes::from_static(b"retry: 3000\n\n")).await.map_err(|_| ())?;
        if resumed && !self.catch_up().await? {
            return Ok(());
        }
        if let Some(frame) = self.settled.take() {
            let _ = self.out.send(frame).await;
            return Ok(());
        }
        let expires = self.expires;
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let closing = self.state.live.closing.clone();
        loop {
            tokio::select! {
                () = closing.cancelled() => return Ok(()),
                () = &mut expiry => return Ok(()),
                _ = keep_alive.tick() => {
                    if !self.still_allowed().await {
                        return Ok(());
                    }
                    self.out.send(Bytes::from_static(b": keep-alive\n\n")).await.map_err(|_| ())?;
                }
                batch = receiver.recv() => match batch {
                    Ok(batch) => {
                        for event in batch.iter() {
                            if !self.offer(event).await? {
                                return Ok(());
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !self.catch_up().await? {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
        }
    }
}

fn respond(receiver: mpsc::Receiver<Bytes>) -> HttpResponse {
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|bytes| (Ok::<_, actix_web::Error>(bytes), receiver))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body)
}

/// Starts a stream's task, following `subscription` (taken before anything the stream reports was read), and
/// answers with its body.
struct Start {
    scope: Scope,
    after: Option<Cursor>,
    first: Option<Bytes>,
    settled: Option<Bytes>,
    expires: Option<tokio::time::Instant>,
}

fn start(
    state: &AppState,
    caller: Caller,
    how: Start,
    subscription: (Cursor, broadcast::Receiver<Batch>),
) -> HttpResponse {
    let Start { scope, after, first, settled, expires } = how;
    let (position, receiver) = subscription;
    let (out, body) = mpsc::channel(64);
    let subscriber =
        Subscriber { state: state.clone(), caller, scope, out, last: after.unwrap_or(position), expires, settled };
    let resumed = after.is_some();
    tokio::spawn(async move {
        if let Some(first) = first {
            if subscriber.out.send(first).await.is_err() {
                return;
            }
        }
        let (mut subscriber, mut receiver) = (subscriber, receiver);
        let _ = subscriber.serve(&mut receiver, resumed).await;
    });
    respond(body)
}

/// The caller's live updates (members and admins): their workspaces' changes (`event: workspace`) and their publish
/// requests' (`event: publish_request`); admins get everyone's. Server-sent events; each `id` is a log cursor, and a
/// reconnect with `Last-Event-ID` (or `?after=`) gets exactly the events after it. Send the bearer token in the
/// `Authorization` header (a fetch-based SSE client; `EventSource` cannot, and tokens never go in URLs).
#[utoipa::path(get, path = "/api/v1/stream", tag = "workspaces",
    params(("after" = Option<String>, Query,
            description = "Resume after this event; without it, the `Last-Event-ID` header (a log cursor) resumes")),
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`", content_type = "text/event-stream", body = SseEvent),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 422, body = Problem)))]
#[get("/api/v1/stream")]
pub async fn caller_stream(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let after = checked_resume_point(&state, &request).await?;
    let subscription = state.live.subscribe();
    let how = Start { scope: Scope::Caller, after, first: None, settled: None, expires: token_expiry(&request) };
    Ok(start(&state, caller, how, subscription))
}

/// One workspace's provisioning as it happens (its owner, or an admin): first its current state (`event: status`),
/// then each phase and status change (`event: workspace`), ending when it is `running`, `error`, `stopped` or
/// deleted. Resumable like `/api/v1/stream`.
#[utoipa::path(get, path = "/api/v1/workspaces/{id}/provisioning", tag = "workspaces",
    params(("id" = String, Path, description = "The workspace"),
           ("after" = Option<String>, Query,
            description = "Resume after this event; without it, the `Last-Event-ID` header (a log cursor) resumes")),
    security(("bearer" = [])),
    responses((status = 200, description = "`text/event-stream`", content_type = "text/event-stream", body = SseEvent),
              (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
#[get("/api/v1/workspaces/{id}/provisioning")]
pub async fn provisioning_stream(
    caller: Caller,
    state: web::Data<AppState>,
    request: HttpRequest,
    path: Path<String>,
) -> Result<HttpResponse, Problem> {
    caller.require(&[Role::Admin, Role::Member])?;
    let after = checked_resume_point(&state, &request).await?;
    // Subscribed before the workspace is read: nothing that happens after the snapshot is missed.
    let subscription = state.live.subscribe();
    let workspace = crate::workspaces::find(&state, &caller, &path).await?;
    let id = workspace.id.to_string();
    let status = workspace.status(crate::workspaces::connected(&state, &workspace));
    let data = serde_json::json!({
        "workspace": id, "owner": workspace.owner, "status": status.as_str(),
        "phase": workspace.phase, "failure": workspace.failure.as_ref().map(|failure| serde_json::json!({
            "phase": failure.phase, "reason": failure.reason })),
    });
    let frame = Bytes::from(format!("event: status\ndata: {data}\n\n"));
    let settled = !matches!(status, domain::workspace::Status::Deploying);
    if after.is_none() && settled {
        // Nothing left to follow: where it stands, and the end.
        let (out, body) = mpsc::channel(2);
        let _ = out.try_send(Bytes::from_static(b"retry: 3000\n\n"));
        let _ = out.try_send(frame);
        return Ok(respond(body));
    }
    // A fresh stream opens with where the workspace stands; a resumed one goes on from its cursor and, if the
    // workspace has settled meanwhile, ends with where it stands once it caught up.
    let (first, settled) = match (after, settled) {
        (None, _) => (Some(frame), None),
        (Some(_), true) => (None, Some(frame)),
        (Some(_), false) => (None, None),
    };
    let how = Start { scope: Scope::Provisioning(id), after, first, settled, expires: token_expiry(&request) };
    Ok(start(&state, caller, how, subscription))
}

/// Ends every stream (the service is stopping).
pub fn close_all(live: &LiveLog) {
    live.closing.cancel();
}
