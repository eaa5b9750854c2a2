//! Issue #3's benchmark: the approvals queue over HTTP beside a trivial actix handler measured in the same run, and
//! the delay from a submission's `201` to the request showing in the queue's read model.
//!
//! The queue is seeded through the publishing aggregate (the command a submission ends in), with no workspace
//! behind the requests: a submission over HTTP needs a running workspace with a change to commit, and a thousand
//! workspaces would be a thousand agents. The latency samples are real submissions over HTTP, from a few real
//! workspaces (a local blueprint, cloned, each with its agent): each sample changes a file, submits (the server
//! commits the change through the agent), waits for the request in the queue, then withdraws it (unmeasured), so
//! that the workspace may submit again.
//!
//! Run: `cargo bench --bench approvals_queue` (embedded SQLite); with
//! `GATEHOUSE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` it also runs on PostgreSQL, in a
//! database of its own that it drops at the end. `-- --quick` runs a short version. Results go to stdout as
//! Markdown (progress to stderr); docs/BENCHMARKS.md records them.
//!
//! The service serves roles and queue pages from its read caches (`api::cache`) while the read model is unchanged;
//! the probes run with the caches off, to show what a cache miss costs.
//!
//! Everything but the workspaces' agents runs in this one process: the real service (`Application::build` on
//! `127.0.0.1:0`), a trivial actix server and a probe server (both with actix's default worker count, as the
//! service), and the load generator. The agents are `gatehouse agent` processes the local control plane starts.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use api::auth::{Authenticator, Caller, LocalIssuer};
use api::publishing::{PublishRequestPage, PublishRequestView};
use api::AppState;
use domain::publishing::{
    BlueprintKey, CommitId, DiffSummary, Publishing, PublishingCommand, RequestId, Subdomain, WorkspaceId,
    PUBLISHING_ID,
};
use domain::Email;
use gatehouse::{Application, Settings};
use projections::{MembersQuery, PublishingQuery, RequestFilter, StatusBoard};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use store::{AggregateRepository, EventMetadata, EventStore};
use testkit::TestDb;

#[path = "../tests/common/mod.rs"]
mod common;
mod support;
use support::{percentile_ms, start_trivial, FIXED_BODY};

const ADMIN: &str = "admin@example.com";
const BUILDERS: usize = 8;
const BLUEPRINTS: [&str; 4] = ["web", "api", "worker", "docs"];
/// The commit and patch of the seeded requests (no workspace behind them).
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const PATCH: &str = "--- a/index.html\n+++ b/index.html\n@@ -1 +1 @@\n-<h1>Hello</h1>\n+<h1>Hello, world</h1>\n";
/// How often the latency measurement polls the read model.
const POLL_EVERY: Duration = Duration::from_micros(500);

/// How much work one run does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Pending requests in the queue before the read measurements.
    seeded: usize,
    /// Concurrent keep-alive clients of the read load.
    clients: usize,
    /// Load before counting starts.
    warm_up: Duration,
    /// Counted load per measurement.
    window: Duration,
    /// Rounds of (trivial, queue, queue by blueprint).
    rounds: usize,
    /// Submissions before the latency samples.
    latency_warm_up: usize,
    /// Latency samples without other load.
    latency_samples: usize,
    /// Latency samples under background submissions.
    loaded_samples: usize,
    /// Clients submitting continuously during the loaded latency samples.
    background_writers: usize,
}

const FULL: Plan = Plan {
    seeded: 1_000,
    clients: 16,
    warm_up: Duration::from_secs(1),
    window: Duration::from_secs(5),
    rounds: 2,
    latency_warm_up: 20,
    latency_samples: 300,
    loaded_samples: 150,
    background_writers: 2,
};

const QUICK: Plan = Plan {
    seeded: 400,
    clients: 16,
    warm_up: Duration::from_millis(500),
    window: Duration::from_secs(2),
    rounds: 1,
    latency_warm_up: 10,
    latency_samples: 100,
    loaded_samples: 50,
    background_writers: 2,
};

// ---------------------------------------------------------------------------------------------------------------
// Statistics

fn max_ms(samples: &[Duration]) -> f64 {
    samples.iter().max().map_or(f64::NAN, |max| max.as_secs_f64() * 1000.0)
}

/// What one closed-loop load measurement counted in its window.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    window: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    fn merge(&mut self, other: Load) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.latencies.extend(other.latencies);
    }
}

/// `clients` keep-alive clients each send GET `url` back to back for the warm-up and the window; requests that
/// complete inside the window count.
async fn drive(url: &str, authorization: &HeaderValue, plan: &Plan) -> Load {
    let start = Instant::now() + plan.warm_up;
    let end = start + plan.window;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|_| {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("a reqwest client");
            let url = url.to_string();
            let authorization = authorization.clone();
            tokio::spawn(async move {
                let mut load = Load { window: end - start, ..Load::default() };
                loop {
                    let began = Instant::now();
                    let outcome = match client.get(&url).header(AUTHORIZATION, authorization.clone()).send().await {
                        Ok(response) => {
                            let status = response.status();
                            match response.bytes().await {
                                Ok(_) if status == reqwest::StatusCode::OK => Ok(()),
                                Ok(body) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
                                Err(error) => Err(error.to_string()),
                            }
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    let done = Instant::now();
                    if done >= start && done < end {
                        match outcome {
                            Ok(()) => {
                                load.ok += 1;
                                load.latencies.push(done - began);
                            }
                            Err(error) => {
                                load.errors += 1;
                                load.first_error.get_or_insert(error);
                            }
                        }
                    }
                    if done >= end {
                        return load;
                    }
                }
            })
        })
        .collect();
    let mut total = Load { window: end - start, ..Load::default() };
    for task in tasks {
        total.merge(task.await.expect("a load client panicked"));
    }
    total
}

// ---------------------------------------------------------------------------------------------------------------
// The service, the trivial server and the probes

struct Service {
    base: String,
    settings: Settings,
    stopper: gatehouse::app::Stopper,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_service(db: &TestDb) -> Service {
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        database_url: Some(db.url.clone()),
        data_dir: db.data_dir.clone(),
        bootstrap_admin: Some(ADMIN.into()),
        // One admin sends every request: no rate limit may stand between the benchmark and the service.
        rate_limit_api_per_minute: Some(0),
        rate_limit_launch_per_minute: Some(0),
        // The workspaces' agents are the real binary (by default the control plane runs the current executable).
        workspaces_agent_program: Some(env!("CARGO_BIN_EXE_gatehouse").into()),
        ..Settings::default()
    };
    let application = Application::build(&settings).await.expect("the service starts");
    let base = format!("http://127.0.0.1:{}", application.port());
    let stopper = application.stopper();
    let running = tokio::spawn(application.run_until_stopped());
    Service { base, settings, stopper, running }
}

/// JWT verification alone (no database), as the `Caller` extractor starts.
async fn probe_jwt(state: web::Data<AppState>, request: HttpRequest) -> HttpResponse {
    let token = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let verified = match token {
        Some(token) => state.auth.verify(token).await.is_ok(),
        None => false,
    };
    if verified {
        HttpResponse::Ok().content_type("application/json").body(FIXED_BODY)
    } else {
        HttpResponse::Unauthorized().finish()
    }
}

/// The production `Caller` extractor (JWT verification and the role lookup in the members read model) and the
/// queue's role check, then the fixed body.
async fn probe_caller(caller: Caller) -> Result<HttpResponse, api::Problem> {
    caller.require(&[domain::roster::Role::Admin, domain::roster::Role::Auditor])?;
    Ok(HttpResponse::Ok().content_type("application/json").body(FIXED_BODY))
}

#[derive(Debug, serde::Deserialize)]
struct ProbeQuery {
    blueprint_key: Option<String>,
    limit: Option<i64>,
}

/// The queue handler's work without authentication: the same read-model query and the same response type.
async fn probe_queue(
    state: web::Data<AppState>,
    query: web::Query<ProbeQuery>,
) -> Result<web::Json<PublishRequestPage>, actix_web::Error> {
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let filter = RequestFilter {
        status: Some("pending".into()),
        blueprint_key: query.blueprint_key.clone(),
        ..RequestFilter::default()
    };
    let mut rows = state
        .publishing_reads
        .list(&filter, true, None, limit + 1)
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        // The service base64-encodes this key; the difference is negligible here.
        rows.last().map(|row| format!("{}|{}", row.submitted_at, row.request_id))
    } else {
        None
    };
    Ok(web::Json(PublishRequestPage {
        items: rows.into_iter().map(|row| PublishRequestView::from_row(row, None)).collect(),
        next,
    }))
}

/// An authenticator configured as the service's (the local issuer only).
fn authenticator(settings: &Settings) -> Authenticator {
    let issuer = LocalIssuer::load_or_create(&settings.data_dir, &settings.auth_audience).expect("the issuer key");
    Authenticator::new(Some(&issuer), None, &settings.auth_audience, Duration::from_secs(settings.auth_leeway_secs))
}

/// A server with the pieces of the queue endpoint, each alone, over its own store handle on the same database
/// (configured as the service configures its own).
fn start_probes(store: &EventStore, settings: &Settings) -> (String, ServerHandle) {
    // No read model revision is ever known here, so the probes' read caches stay empty: they measure the pieces
    // as a cache miss pays for them.
    let registry = prometheus::Registry::new();
    let caches =
        Arc::new(api::cache::Caches::new(&projections::Revisions::default(), &registry).expect("cache metrics"));
    let limits =
        Arc::new(api::limits::RateLimits::new(api::limits::LimitConfig::OFF, &registry).expect("limit metrics"));
    let state = AppState {
        store: store.clone(),
        projections: StatusBoard::default(),
        registry,
        draining: Arc::new(AtomicBool::new(false)),
        auth: Arc::new(authenticator(settings)),
        members: MembersQuery::new(store.read_models().clone()),
        roster: Arc::new(AggregateRepository::new(store.clone(), ())),
        publishing: Arc::new(AggregateRepository::new(store.clone(), ())),
        trust: Arc::new(AggregateRepository::new(store.clone(), ())),
        blueprints: Arc::new(AggregateRepository::new(store.clone(), ())),
        org: Arc::new(AggregateRepository::new(store.clone(), ())),
        portal: Arc::new(AggregateRepository::new(store.clone(), ())),
        limit_pins: api::limits::Pins::default(),
        vault: Arc::new(settings.secrets_vault().expect("the secrets key ring")),
        blueprint_reads: projections::BlueprintsQuery::new(store.read_models().clone()),
        publishing_reads: PublishingQuery::new(store.read_models().clone()),
        publish_policy: settings.publish_policy().expect("the publish policy"),
        audit_access: Arc::new(AggregateRepository::new(store.clone(), ())),
        audit_key: Arc::new(settings.audit_key().expect("the audit key")),
        caches,
        openapi: Arc::new(api::ops::document()),
        gateway: Arc::new(
            relay::gateway::Gateway::new(store.clone(), settings.relay().expect("the relay limits"))
                .with_resume_limits(settings.resume()),
        ),
        idempotency_stale_ms: api::idempotency::STALE_PENDING_MS,
        limits,
        workspaces: Arc::new(AggregateRepository::new(store.clone(), ())),
        workspace_reads: projections::WorkspacesQuery::new(store.read_models().clone()),
        reconciler: controlplane::ReconcilerHandle::detached(),
        publisher: publisher::PublisherHandle::detached(),
        live: api::stream::LiveLog::new(store.clone(), Arc::new(AggregateRepository::new(store.clone(), ()))),
        tags: Arc::new(AggregateRepository::new(store.clone(), ())),
        tag_reads: projections::TagsQuery::new(store.read_models().clone()),
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the probe server");
    let port = listener.local_addr().expect("the probe server's address").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/probe/jwt", web::get().to(probe_jwt))
            .route("/probe/caller", web::get().to(probe_caller))
            .route("/probe/queue", web::get().to(probe_queue))
    })
    .disable_signals()
    .listen(listener)
    .expect("the probe server listens")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}

// ---------------------------------------------------------------------------------------------------------------
// Seeding and the latency measurement

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is a valid header value")
}

/// A submission of `workspace` (which must have a change to publish): the server makes the commit.
fn submission(workspace: &str, tag: &str, n: usize) -> Value {
    json!({
        "workspace_id": workspace,
        "subdomain": format!("app-{tag}-{n}"),
        "message": "Benchmark submission: the first version of the team dashboard",
    })
}

/// Submits one request; on a `201`, its id and the instant the response arrived.
async fn submit(
    client: &reqwest::Client,
    base: &str,
    token: &HeaderValue,
    body: &Value,
) -> Result<(String, Instant), String> {
    let response = client
        .post(format!("{base}/api/v1/publish-requests"))
        .header(AUTHORIZATION, token.clone())
        .json(body)
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let arrived = Instant::now();
    let status = response.status();
    let text = response.text().await.map_err(|error| error.to_string())?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("{status}: {text}"));
    }
    let created: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
    let id = created["id"].as_str().ok_or_else(|| format!("no id in {text}"))?;
    Ok((id.to_string(), arrived))
}

/// Withdraws request `id` (as its builder), so that its workspace may submit again.
async fn withdraw(client: &reqwest::Client, base: &str, token: &HeaderValue, id: &str) -> Result<(), String> {
    let response = client
        .post(format!("{base}/api/v1/publish-requests/{id}/withdraw"))
        .header(AUTHORIZATION, token.clone())
        .send()
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("withdrawing {id}: {status}: {text}"));
    }
    Ok(())
}

/// One of the benchmark's real workspaces: its owner's token and its id.
#[derive(Clone)]
struct Workspace {
    token: HeaderValue,
    id: String,
}

/// Changes a file in `workspace`, submits it, and withdraws the request once `then` (given its id and the instant
/// the `201` arrived) is done with it: one real submission. The submission's round trip alone, and `then`'s answer.
async fn submit_once<F, Fut, T>(
    api: &common::Api,
    base: &str,
    workspace: &Workspace,
    body: &Value,
    then: F,
) -> Result<(Duration, T), String>
where
    F: FnOnce(String, Instant) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    api.edit(&workspace.id);
    let sent = Instant::now();
    let (id, arrived) = submit(&api.http, base, &workspace.token, body).await?;
    let outcome = then(id.clone(), arrived).await;
    withdraw(&api.http, base, &workspace.token, &id).await?;
    Ok((arrived - sent, outcome?))
}

/// Sleeps about `pause` (tokio's timer has millisecond granularity; a blocking-pool thread has not).
async fn pause(pause: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(pause)).await;
}

/// Polls the read model until `id` is a pending request, which is exactly the queue's condition; returns when it
/// was first seen.
async fn wait_in_queue(reads: &PublishingQuery, id: &str) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match reads.get(id).await {
            Ok(Some(row)) if row.status == "pending" => return Ok(Instant::now()),
            Ok(Some(row)) => return Err(format!("request {id} is {}, not pending", row.status)),
            Ok(None) => {}
            Err(error) => return Err(error.to_string()),
        }
        if Instant::now() > deadline {
            return Err(format!("request {id} was not in the queue after 10 s"));
        }
        pause(POLL_EVERY).await;
    }
}

#[derive(Debug, Default)]
struct Latency {
    /// From the `201` arriving to the request being readable in the queue.
    to_queue: Vec<Duration>,
    /// The submission's round trip.
    submit: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

/// Submits `warm_up + samples` requests one at a time, from `workspaces` in turn, each followed by polling until it is
/// in the queue (then withdrawn, unmeasured).
async fn submit_to_queue(
    api: &common::Api,
    reads: &PublishingQuery,
    workspaces: &[Workspace],
    tag: &str,
    warm_up: usize,
    samples: usize,
) -> Latency {
    let mut latency = Latency::default();
    for n in 0..warm_up + samples {
        let workspace = &workspaces[n % workspaces.len()];
        let body = submission(&workspace.id, tag, n);
        let outcome = submit_once(api, &api.base, workspace, &body, |id, arrived| async move {
            wait_in_queue(reads, &id).await.map(|seen| seen.saturating_duration_since(arrived))
        })
        .await;
        match outcome {
            Ok((submit, to_queue)) if n >= warm_up => {
                latency.submit.push(submit);
                latency.to_queue.push(to_queue);
            }
            Ok(_) => {}
            Err(error) => {
                latency.errors += 1;
                latency.first_error.get_or_insert(error);
            }
        }
    }
    latency
}

/// Background writers: submit (and withdraw) back to back until `stop`.
struct Background {
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn background_writer(api: common::Api, workspace: Workspace, tag: String, stop: Arc<AtomicBool>) -> Background {
    let started = Instant::now();
    let mut outcome = Background { ok: 0, errors: 0, first_error: None, elapsed: Duration::ZERO };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = submission(&workspace.id, &tag, n);
        match submit_once(&api, &api.base, &workspace, &body, |_, _| async { Ok(()) }).await {
            Ok(_) => outcome.ok += 1,
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(error);
            }
        }
        n += 1;
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Whether every one of `emails` is an active member in the read model (has signed in).
async fn all_active(members: &MembersQuery, emails: &[&str]) -> bool {
    for email in emails {
        let member = members.get(email).await.expect("reading a member");
        if member.is_none_or(|member| member.status != "active") {
            return false;
        }
    }
    true
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// In-process cost of each piece

/// The queue's SQL as `PublishingQuery::list` builds it for `status = pending`, oldest first, no cursor.
const QUEUE_SQL: &str = "SELECT request_id, workspace_id, blueprint_key, subdomain, builder, commit_id, files,
    insertions, deletions, NULL AS patch, message, status, approvals_required, approvals, submitted_at, expires_at,
    decided_at, decided_by, decision_reason, trust_rule_id, updated_at, version
    FROM publish_requests WHERE status = $1 ORDER BY submitted_at ASC, request_id ASC LIMIT $2";

/// Mean time of `op` over `iterations` sequential calls, after a tenth as many unmeasured ones.
async fn cost<F, Fut>(iterations: usize, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..iterations / 10 {
        op().await;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        op().await;
    }
    started.elapsed() / u32::try_from(iterations).unwrap_or(u32::MAX)
}

/// What each piece of a queue request costs alone, one call at a time, with nothing else running.
async fn piece_costs(store: &EventStore, settings: &Settings, admin: &HeaderValue) -> Vec<(&'static str, Duration)> {
    let auth = authenticator(settings);
    let token = admin.to_str().expect("an ASCII header").trim_start_matches("Bearer ").to_string();
    let members = MembersQuery::new(store.read_models().clone());
    let reads = PublishingQuery::new(store.read_models().clone());
    let pending = RequestFilter { status: Some("pending".into()), ..RequestFilter::default() };
    let mut costs = Vec::new();
    costs.push((
        "ES256 token verification (`Authenticator::verify`)",
        cost(1_000, || async { auth.verify(&token).await.map(drop).expect("the admin token verifies") }).await,
    ));
    costs.push((
        "role lookup (`MembersQuery::get`)",
        cost(1_000, || async { members.get(ADMIN).await.map(drop).expect("the admin's row") }).await,
    ));
    costs.push((
        "queue query, 51 rows (`PublishingQuery::list`, Any driver, decoded)",
        cost(300, || async { reads.list(&pending, true, None, 51).await.map(drop).expect("the queue") }).await,
    ));
    let native = match store.backend() {
        store::Backend::Postgres(pool) => {
            cost(300, || async {
                let query = sqlx::query(QUEUE_SQL).bind("pending").bind(51_i64);
                query.fetch_all(pool).await.map(drop).expect("the queue on the native driver");
            })
            .await
        }
        store::Backend::Sqlite(pool) => {
            cost(300, || async {
                let query = sqlx::query(QUEUE_SQL).bind("pending").bind(51_i64);
                query.fetch_all(pool).await.map(drop).expect("the queue on the native driver");
            })
            .await
        }
    };
    costs.push(("same SQL on the native pool, rows fetched but not decoded", native));
    let rows = reads.list(&pending, true, None, 50).await.expect("the queue");
    let page = PublishRequestPage {
        items: rows.into_iter().map(|row| PublishRequestView::from_row(row, None)).collect(),
        next: Some("next".into()),
    };
    costs.push((
        "JSON of a 50-item page (`serde_json::to_vec`)",
        cost(1_000, || async { serde_json::to_vec(&page).map(drop).expect("a serialisable page") }).await,
    ));
    // Not on the read path: every command clones the cached state of its aggregate, and publishing is one
    // aggregate for the organisation, holding every request ever made.
    let repository = AggregateRepository::<Publishing>::new(store.clone(), ());
    let (publishing, _) = repository.load(PUBLISHING_ID).await.expect("the publishing aggregate");
    costs.push((
        "submit path: clone of the publishing aggregate as seeded (done once per command)",
        cost(200, || async { drop(std::hint::black_box(publishing.clone())) }).await,
    ));
    costs
}

// ---------------------------------------------------------------------------------------------------------------
// One backend

struct Seeding {
    count: usize,
    elapsed: Duration,
    first_ms: f64,
    last_ms: f64,
}

struct Round {
    trivial: Load,
    queue: Load,
    by_blueprint: Load,
}

struct Report {
    backend: &'static str,
    /// 1-minute load average before and after.
    load: (String, String),
    seeding: Seeding,
    rounds: Vec<Round>,
    probes: Vec<(&'static str, Load)>,
    costs: Vec<(&'static str, Duration)>,
    idle: Latency,
    loaded: Latency,
    background: Vec<Background>,
}

fn mean_ms(samples: &[Duration]) -> f64 {
    samples.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / samples.len().max(1) as f64
}

/// Pending request `n` of the seed, by `builder`, for a workspace of its own that exists nowhere, as the API would
/// submit it (the policy in force, the commit and diff an agent would have reported).
fn seed_submission(n: usize, builder: &Email, policy: &api::publishing::PublishPolicy) -> PublishingCommand {
    let diff = DiffSummary::new(2, 10, 3, Some(PATCH.into()), policy.max_patch_bytes).expect("the seed's diff");
    PublishingCommand::Submit {
        request_id: RequestId::parse(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a request id"),
        workspace_id: WorkspaceId::parse(&format!("ws-seed-{n}")).expect("a workspace id"),
        blueprint_key: BlueprintKey::parse(BLUEPRINTS[n % BLUEPRINTS.len()]).expect("a blueprint key"),
        subdomain: Subdomain::parse(&format!("app-seed-{n}")).expect("a subdomain"),
        commit_id: CommitId::parse(COMMIT).expect("a commit id"),
        diff,
        message: "Benchmark submission: the first version of the team dashboard".into(),
        builder: builder.clone(),
        now: chrono::Utc::now(),
        ttl: policy.ttl,
        approvals_required: policy.approvals_required.max(1),
        trusted: None,
        base_commit: None,
        deliver: true,
    }
}

async fn run_backend(db: &TestDb, plan: &Plan) -> Report {
    let backend = db.backend();
    let load_before = load_average();
    let service = start_service(db).await;
    let base = service.base.clone();
    let issuer = LocalIssuer::load_or_create(&service.settings.data_dir, &service.settings.auth_audience)
        .expect("the service's issuer key");
    let ttl = Duration::from_secs(3600);
    let token = |email: &str| issuer.issue(&Email::parse(email).expect("a valid email"), ttl).expect("a signed token");
    let admin_token = token(ADMIN);
    let admin = bearer(&admin_token);
    let builder_emails: Vec<String> = (0..BUILDERS).map(|n| format!("builder{n}@example.com")).collect();
    let builder_tokens: Vec<String> = builder_emails.iter().map(|email| token(email)).collect();
    let builders: Vec<HeaderValue> = builder_tokens.iter().map(|token| bearer(token)).collect();

    // Our own handle on the database, configured as the service's: for waiting, polling and the probes.
    let store = EventStore::open(&service.settings.store()).await.expect("a second handle on the store");
    let reads = PublishingQuery::new(store.read_models().clone());
    let members = MembersQuery::new(store.read_models().clone());

    let client = reqwest::Client::new();
    for email in &builder_emails {
        let response = client
            .post(format!("{base}/api/v1/members"))
            .header(AUTHORIZATION, admin.clone())
            .json(&json!({ "email": email, "role": "member" }))
            .send()
            .await
            .expect("the invitation is answered");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "inviting {email}");
    }

    // The seed goes through the publishing aggregate on our own handle (the service sees it as it would another
    // process's writes): a submission over HTTP needs a running workspace with a change, one agent per request.
    eprintln!("{backend}: seeding {} pending requests through the publishing aggregate", plan.seeded);
    let policy = service.settings.publish_policy().expect("the publish policy");
    let publishing = AggregateRepository::<Publishing>::new(store.clone(), ());
    let emails: Vec<Email> = builder_emails.iter().map(|email| Email::parse(email).expect("a valid email")).collect();
    let started = Instant::now();
    let mut each = Vec::with_capacity(plan.seeded);
    for n in 0..plan.seeded {
        let began = Instant::now();
        let builder = &emails[n % BUILDERS];
        let metadata = EventMetadata::for_request(builder.as_str(), uuid::Uuid::new_v4().to_string());
        let outcome = publishing.execute(PUBLISHING_ID, seed_submission(n, builder, &policy), &metadata).await;
        outcome.unwrap_or_else(|error| panic!("seeding request {n} failed: {error}"));
        each.push(began.elapsed());
    }
    let tenth = (plan.seeded / 10).max(1);
    let seeding = Seeding {
        count: plan.seeded,
        elapsed: started.elapsed(),
        first_ms: mean_ms(&each[..tenth]),
        last_ms: mean_ms(&each[each.len() - tenth..]),
    };
    let pending = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM publish_requests WHERE status = 'pending'")
            .fetch_one(store.read_models())
            .await
            .expect("counting the queue") as usize
    };
    wait_until("the queue to hold every seeded request", Duration::from_secs(60), || async {
        pending().await >= plan.seeded
    })
    .await;
    // Wait until the members read model says that the admin (who sends every read) has signed in, so that no
    // measured request takes the first sign-in path (the builders sign in when they launch their workspaces, below).
    wait_until("the admin to be active", Duration::from_secs(30), || all_active(&members, &[ADMIN])).await;

    let queue_url = format!("{base}/api/v1/approvals?limit=50");
    let by_blueprint_url = format!("{base}/api/v1/approvals?blueprint_key={}&limit=50", BLUEPRINTS[0]);
    for url in [&queue_url, &by_blueprint_url] {
        let page: Value = client
            .get(url)
            .header(AUTHORIZATION, admin.clone())
            .send()
            .await
            .expect("the queue answers")
            .json()
            .await
            .expect("the queue is JSON");
        let items = page["items"].as_array().map_or(0, Vec::len);
        assert_eq!(items, 50, "{url} returns a full page: {page}");
    }

    let (trivial_base, trivial_handle) = start_trivial();
    let (probe_base, probe_handle) = start_probes(&store, &service.settings);
    let trivial_url = format!("{trivial_base}/trivial");

    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        eprintln!("{backend}: round {round}: trivial");
        let trivial = drive(&trivial_url, &admin, plan).await;
        eprintln!("{backend}: round {round}: queue");
        let queue = drive(&queue_url, &admin, plan).await;
        eprintln!("{backend}: round {round}: queue by blueprint");
        let by_blueprint = drive(&by_blueprint_url, &admin, plan).await;
        rounds.push(Round { trivial, queue, by_blueprint });
    }
    let mut probes = Vec::new();
    for (name, path) in [
        ("probe: JWT verification only", "/probe/jwt"),
        ("probe: Caller extractor, read caches off (JWT + role lookup in the read model)", "/probe/caller"),
        ("probe: queue read + JSON, no auth, no cache", "/probe/queue?limit=50"),
    ] {
        eprintln!("{backend}: {name}");
        probes.push((name, drive(&format!("{probe_base}{path}"), &admin, plan).await));
    }

    eprintln!("{backend}: cost of each piece, in process");
    let costs = piece_costs(&store, &service.settings, &admin).await;

    // Real workspaces for the real submissions: the blueprints `web` and `api` (one local repository), one running
    // workspace per builder for the samples and one per background writer, launched by their builders.
    let workspaces_dir = service.settings.data_dir.join("workspaces");
    let api = common::Api { base: base.clone(), http: reqwest::Client::new(), workspaces_dir: workspaces_dir.clone() };
    // (The fixture holds the blueprints' repository: it lives until the end.)
    let fixture = common::Workspaces::new(&api, &admin_token).await;
    let blueprint = |n: usize| ["web", "api"][n % 2];
    eprintln!("{backend}: launching {} workspaces", BUILDERS + plan.background_writers);
    let launch = |b: usize, name: &'static str| {
        let (fixture, builders, tokens) = (&fixture, &builders, &builder_tokens);
        async move { Workspace { token: builders[b].clone(), id: fixture.running(&tokens[b], name, blueprint(b)).await } }
    };
    let samplers = futures::future::join_all((0..BUILDERS).map(|b| launch(b, "latency"))).await;
    let writers = (0..plan.background_writers).map(|writer| launch((writer + 1) % BUILDERS, "background"));
    let writer_workspaces = futures::future::join_all(writers).await;
    let everyone: Vec<&str> = builder_emails.iter().map(String::as_str).collect();
    wait_until("every builder to be active", Duration::from_secs(30), || all_active(&members, &everyone)).await;

    eprintln!("{backend}: submit → queue latency, {} samples", plan.latency_samples);
    let idle = submit_to_queue(&api, &reads, &samplers, "lat", plan.latency_warm_up, plan.latency_samples).await;
    eprintln!(
        "{backend}: submit → queue latency under {} background writers, {} samples",
        plan.background_writers, plan.loaded_samples
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = writer_workspaces
        .into_iter()
        .enumerate()
        .map(|(writer, workspace)| {
            tokio::spawn(background_writer(api.clone(), workspace, format!("bg{writer}"), stop.clone()))
        })
        .collect();
    let loaded = submit_to_queue(&api, &reads, &samplers, "lat-bg", plan.latency_warm_up, plan.loaded_samples).await;
    stop.store(true, Ordering::Relaxed);
    let mut background = Vec::new();
    for writer in writers {
        background.push(writer.await.expect("a background writer panicked"));
    }

    trivial_handle.stop(true).await;
    probe_handle.stop(true).await;
    service.stopper.stop().await;
    service.running.await.expect("the service task").expect("the service stops cleanly");
    // The local control plane leaves agents running when the gateway stops (a restart adopts them): end them.
    common::end_workspace_agents(&workspaces_dir);
    store.close().await;
    Report { backend, load: (load_before, load_average()), seeding, rounds, probes, costs, idle, loaded, background }
}

// ---------------------------------------------------------------------------------------------------------------
// Output

/// The 1-minute load average (`/proc/loadavg`), to show how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn load_row(name: &str, load: &Load, trivial: Option<&Load>) {
    let ratio = trivial.map_or_else(|| "—".to_string(), |trivial| format!("{:.3}×", load.rate() / trivial.rate()));
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {} | {ratio} |",
        load.rate(),
        percentile_ms(&load.latencies, 0.50),
        percentile_ms(&load.latencies, 0.99),
        load.errors
    );
    if let Some(error) = &load.first_error {
        eprintln!("  first error of {name}: {error}");
    }
}

fn latency_row(name: &str, latency: &Latency) {
    let samples = &latency.to_queue;
    println!(
        "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {} |",
        samples.len(),
        percentile_ms(samples, 0.50),
        percentile_ms(samples, 0.90),
        percentile_ms(samples, 0.99),
        max_ms(samples),
        samples.iter().filter(|sample| **sample > Duration::from_millis(20)).count(),
        percentile_ms(&latency.submit, 0.50),
        latency.errors
    );
    if let Some(error) = &latency.first_error {
        eprintln!("  first error of {name}: {error}");
    }
}

fn print_report(report: &Report, plan: &Plan) {
    let backend = report.backend;
    println!();
    println!("### {backend}");
    println!();
    println!("1-minute load average {} before, {} after.", report.load.0, report.load.1);
    println!();
    let seeding = &report.seeding;
    println!(
        "Seeded {} pending requests ({BUILDERS} builders, {} blueprints) one at a time through the publishing \
         aggregate in {:.1} s: {:.2} ms per submission command for the first tenth, {:.2} ms for the last.",
        seeding.count,
        BLUEPRINTS.len(),
        seeding.elapsed.as_secs_f64(),
        seeding.first_ms,
        seeding.last_ms
    );
    println!();
    println!(
        "Reads: {} keep-alive clients, {:.1} s warm-up, {:.1} s counted; latency is per request, client side.",
        plan.clients,
        plan.warm_up.as_secs_f64(),
        plan.window.as_secs_f64()
    );
    println!();
    println!("| measurement | req/s | p50 ms | p99 ms | errors | vs trivial (same round) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (number, round) in report.rounds.iter().enumerate() {
        let number = number + 1;
        load_row(&format!("round {number}: trivial handler"), &round.trivial, None);
        load_row(&format!("round {number}: `GET /api/v1/approvals?limit=50`"), &round.queue, Some(&round.trivial));
        load_row(
            &format!("round {number}: `GET /api/v1/approvals?blueprint_key={}&limit=50`", BLUEPRINTS[0]),
            &round.by_blueprint,
            Some(&round.trivial),
        );
    }
    let last_trivial = report.rounds.last().map(|round| &round.trivial);
    for (name, load) in &report.probes {
        load_row(name, load, last_trivial);
    }
    println!();
    println!("Cost of each piece alone, in process, one call at a time, nothing else running:");
    println!();
    println!("| piece | µs per call |");
    println!("|---|---:|");
    for (piece, cost) in &report.costs {
        println!("| {piece} | {:.0} |", cost.as_secs_f64() * 1e6);
    }
    println!();
    println!(
        "Submit → queue: one submission at a time over HTTP, of a real workspace (a file changed, committed by the \
         server through the workspace's agent), withdrawn once seen; from the `201` arriving to the request being \
         pending in the read model (polled every {} µs).",
        POLL_EVERY.as_micros()
    );
    println!();
    println!("| scenario | samples | p50 ms | p90 ms | p99 ms | max ms | > 20 ms | submit p50 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    latency_row("no other load", &report.idle);
    latency_row(&format!("{} background writers", report.background.len()), &report.loaded);
    for (writer, background) in report.background.iter().enumerate() {
        println!(
            "- background writer {writer}: {} submissions in {:.1} s ({:.0}/s), {} errors",
            background.ok,
            background.elapsed.as_secs_f64(),
            background.ok as f64 / background.elapsed.as_secs_f64().max(f64::EPSILON),
            background.errors
        );
        if let Some(error) = &background.first_error {
            eprintln!("  first error of background writer {writer}: {error}");
        }
    }
}

fn print_summary(reports: &[Report]) {
    println!();
    println!("### Summary");
    println!();
    println!(
        "| backend | queue / trivial per round (≥ 0.5×) | by blueprint / trivial per round | submit → queue p99 ms \
         (≤ 20), no other load | p99 ms under background writes | read errors |"
    );
    println!("|---|---|---|---:|---:|---:|");
    for report in reports {
        let ratios = |pick: fn(&Round) -> &Load| {
            report
                .rounds
                .iter()
                .map(|round| format!("{:.3}×", pick(round).rate() / round.trivial.rate()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let errors: usize = report
            .rounds
            .iter()
            .map(|round| round.trivial.errors + round.queue.errors + round.by_blueprint.errors)
            .sum();
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {errors} |",
            report.backend,
            ratios(|round| &round.queue),
            ratios(|round| &round.by_blueprint),
            percentile_ms(&report.idle.to_queue, 0.99),
            percentile_ms(&report.loaded.to_queue, 0.99)
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let plan = if quick { QUICK } else { FULL };
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "approvals queue benchmark{}: {workers} available cores, so {workers} actix workers in each server \
         (actix's default, which the service also uses)",
        if quick { " (--quick)" } else { "" }
    );
    let mut reports = Vec::new();
    for db in TestDb::all("approvals queue benchmark").await {
        let report = run_backend(&db, &plan).await;
        print_report(&report, &plan);
        reports.push(report);
        // Dropping the database here (PostgreSQL: DROP DATABASE) before the next backend runs.
        drop(db);
    }
    print_summary(&reports);
}
