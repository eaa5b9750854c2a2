//! Issue #14's benchmarks: the workspace list with 1,000 workspaces beside a trivial actix handler measured in the
//! same run; the time from a launch's `201` to `running` for a small blueprint (real git clone, real agent process);
//! and server-sent events fanned out to 1,000 subscribers: event-to-delivery latency and the gateway's memory per
//! subscriber.
//!
//! Run: `cargo bench --bench workspaces` (embedded SQLite); with
//! `GATEHOUSE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` also on PostgreSQL. `-- --quick` runs a
//! short version. Results go to stdout as Markdown; docs/BENCHMARKS.md records them.
//!
//! The gateway is a real `gatehouse serve` child process (so that its memory is its own), seeded before it starts
//! with 1,000 stopped workspaces of 50 owners, recorded through the workspaces aggregate as the API would.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{enabled_blueprint, git_repository, issue_token, rss_kib, Api, Server};
use domain::blueprint::{GitBranch, GitRepository, LocalSource, Shell};
use domain::publishing::WorkspaceId;
use domain::values::BlueprintKey;
use domain::workspace::{WorkspaceCommand, WorkspaceName, Workspaces};
use domain::Email;
use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::json;
use store::{AggregateRepository, EventMetadata};
use support::{percentile_ms, start_trivial};
use testkit::TestDb;

#[derive(Debug, Clone, Copy)]
struct Plan {
    owners: usize,
    per_owner: usize,
    clients: usize,
    warm_up: Duration,
    window: Duration,
    rounds: usize,
    launches: usize,
    subscribers: usize,
    events: usize,
}

const FULL: Plan = Plan {
    owners: 50,
    per_owner: 20,
    clients: 16,
    warm_up: Duration::from_secs(1),
    window: Duration::from_secs(5),
    rounds: 2,
    launches: 30,
    subscribers: 1000,
    events: 50,
};

const QUICK: Plan = Plan {
    owners: 50,
    per_owner: 20,
    clients: 16,
    warm_up: Duration::from_millis(500),
    window: Duration::from_secs(2),
    rounds: 1,
    launches: 8,
    subscribers: 1000,
    events: 10,
};

/// Records `owners × per_owner` stopped workspaces straight through the aggregate (launch, then stop), before the
/// gateway starts, so its reconciler has nothing to run.
async fn seed(db: &TestDb, plan: &Plan) {
    let store = db.store().await;
    let repository = AggregateRepository::<Workspaces>::new(store.clone(), ());
    let spec = LocalSource::new(
        GitRepository::parse("https://git.example.com/web.git").unwrap(),
        GitBranch::parse("main").unwrap(),
        None,
        vec![],
        Shell::parse("/bin/sh").unwrap(),
    )
    .unwrap();
    let metadata = EventMetadata::system("benchmark");
    for owner in 0..plan.owners {
        let email = Email::parse(&format!("owner{owner}@example.com")).unwrap();
        for n in 0..plan.per_owner {
            let workspace = WorkspaceId::parse(&format!("ws-bench-{owner:02}-{n:02}")).unwrap();
            let launch = WorkspaceCommand::Launch {
                workspace: workspace.clone(),
                owner: email.clone(),
                name: WorkspaceName::parse(&format!("Workspace {n} of owner {owner}")).unwrap(),
                blueprint_key: BlueprintKey::parse(if n % 2 == 0 { "web" } else { "api" }).unwrap(),
                project_id: "local/web".into(),
                spec: spec.clone(),
                limit: None,
                by: email.clone(),
            };
            repository.execute(email.as_str(), launch, &metadata).await.unwrap();
            let stop = WorkspaceCommand::Stop { workspace, by: email.clone() };
            repository.execute(email.as_str(), stop, &metadata).await.unwrap();
        }
    }
    store.close().await;
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// One SSE client: reads frames and reports, for every renamed-to name it sees, when it saw it.
async fn subscriber(
    client: reqwest::Client,
    url: String,
    token: String,
    connected: tokio::sync::mpsc::UnboundedSender<()>,
    seen: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) {
    let mut response = client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut buffer = String::new();
    let mut told = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        let now = Instant::now();
        if !told {
            told = true;
            let _ = connected.send(());
        }
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if let Some(at) = frame.find("\"name\":\"fanout-") {
                let rest = &frame[at + "\"name\":\"fanout-".len()..];
                if let Some(number) = rest.split('"').next().and_then(|digits| digits.parse().ok()) {
                    let _ = seen.send((number, now));
                }
            }
        }
    }
}

async fn run(db: &TestDb, plan: Plan) -> String {
    seed(db, &plan).await;
    let root = issue_token(db, "root@example.com", "admin", "2h");
    let ada = issue_token(db, "ada@example.com", "member", "2h");
    let owner = issue_token(db, "owner0@example.com", "member", "2h");
    let server = Server::start(db, &[("GATEHOUSE_LOG", "warn,gatehouse=info")]);
    let api = Api::new(&server);
    let mut out = String::new();

    // 1. The list: an admin's first page of 1,000 workspaces, and one owner's 20, beside the trivial handler.
    let (trivial_base, trivial) = start_trivial();
    let total = plan.owners * plan.per_owner;
    out.push_str(&format!(
        "\n### {} ({total} workspaces of {} owners)\n\n| Round | Trivial req/s | Admin page of 100 req/s | Ratio | p50 ms | p99 ms | Owner's 20 req/s | Ratio | p99 ms | Errors |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        db.backend(),
        plan.owners
    ));
    let admin_page = format!("{}/api/v1/workspaces?limit=100", server.base);
    let own_page = format!("{}/api/v1/workspaces", server.base);
    let (status, page) = api.get("/api/v1/workspaces?limit=100", Some(&root)).await;
    assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(100)), "{page}");
    for round in 1..=plan.rounds {
        let (floor, ..) =
            support::drive(&format!("{trivial_base}/trivial"), None, plan.clients, plan.warm_up, plan.window).await;
        let (rate, errors, first, p50, p99) =
            support::drive(&admin_page, Some(&bearer(&root)), plan.clients, plan.warm_up, plan.window).await;
        let (own, own_errors, own_first, _, own_p99) =
            support::drive(&own_page, Some(&bearer(&owner)), plan.clients, plan.warm_up, plan.window).await;
        for error in [first, own_first].into_iter().flatten() {
            eprintln!("first list error: {error}");
        }
        out.push_str(&format!(
            "| {round} | {floor:.0} | {rate:.0} | {:.2}× | {p50:.2} | {p99:.2} | {own:.0} | {:.2}× | {own_p99:.2} | {} |\n",
            rate / floor,
            own / floor,
            errors + own_errors
        ));
    }
    trivial.stop(true).await;

    // 2. Launch → running: a blueprint of three files, launched by a member and followed on her live stream until
    // the control plane records the workspace started (its agent connected); then deleted.
    let sources = tempfile::tempdir().unwrap();
    let repository = git_repository(
        &sources.path().join("small"),
        &[("README.md", "# Small\n"), ("index.html", "<p>hi</p>\n"), ("src/app.js", "console.log(1)\n")],
    );
    enabled_blueprint(&api, &root, "small", &repository, None).await;
    let limits = json!({"running_workspaces_per_user": 1000, "launches_per_minute": 10000,
                        "api_requests_per_minute": 1000000});
    assert!(api.call(Method::PUT, "/api/v1/portal/limits", Some(&root), Some(limits)).await.0 < 300);
    let mut durations = Vec::new();
    for n in 0..plan.launches {
        let mut stream = api.http.get(format!("{}/api/v1/stream", server.base)).bearer_auth(&ada).send().await.unwrap();
        let _ = stream.chunk().await; // the `retry:` line: subscribed
        let began = Instant::now();
        let body = json!({"blueprint_key": "small", "name": format!("launch-{n}")});
        let (status, _, created) = api.call(Method::POST, "/api/v1/workspaces", Some(&ada), Some(body)).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let mut buffer = String::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(60), stream.chunk()).await.unwrap().unwrap().unwrap();
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            if buffer.contains(&id) && buffer.contains("\"change\":\"WorkspaceStarted\"") {
                break;
            }
        }
        durations.push(began.elapsed());
        drop(stream);
        assert_eq!(api.call(Method::DELETE, &format!("/api/v1/workspaces/{id}"), Some(&ada), None).await.0, 204);
    }
    out.push_str(&format!(
        "\nLaunch `POST` → `WorkspaceStarted` on the member's live stream (git clone of a 3-file repository, a new `gatehouse agent` process connected; {} launches one at a time): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms.\n",
        durations.len(),
        percentile_ms(&durations, 0.5),
        percentile_ms(&durations, 0.99),
        percentile_ms(&durations, 1.0),
    ));
    // Let the deletions finish before the memory is read.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 3. Fan-out: `subscribers` admin streams, then renames of one workspace, one every 100 ms; each subscriber
    // notes when it saw each.
    let pid = server.child.id();
    let before = rss_kib(pid);
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let url = format!("{}/api/v1/stream", server.base);
    let tasks: Vec<_> = (0..plan.subscribers)
        .map(|_| {
            tokio::spawn(subscriber(client.clone(), url.clone(), root.clone(), connected_tx.clone(), seen_tx.clone()))
        })
        .collect();
    for _ in 0..plan.subscribers {
        tokio::time::timeout(Duration::from_secs(60), connected.recv()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    let target = "/api/v1/workspaces/ws-bench-00-00";
    let mut sent = Vec::new();
    for n in 0..plan.events {
        let at = Instant::now();
        let body = json!({"name": format!("fanout-{n}")});
        let (status, _, changed) = api.call(Method::PATCH, target, Some(&owner), Some(body)).await;
        assert_eq!(status, 200, "{changed}");
        sent.push(at);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = plan.events * plan.subscribers;
    let mut latencies = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
            Ok(Some((number, at))) => latencies.push(at.saturating_duration_since(sent[number])),
            _ => break,
        }
    }
    let received = latencies.len();
    let latencies: Arc<Vec<Duration>> = Arc::new(latencies);
    out.push_str(&format!(
        "\nSSE fan-out: {} admin streams on `/api/v1/stream`, {} renames 100 ms apart; `PATCH` sent → event read by each subscriber ({received} of {expected} deliveries): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms. Gateway RSS {:.1} → {:.1} MiB with the streams open: {:.1} KiB per subscriber.\n",
        plan.subscribers,
        plan.events,
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99),
        percentile_ms(&latencies, 1.0),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / plan.subscribers as f64,
    ));
    for task in tasks {
        task.abort();
    }
    assert!(server.terminate().success());
    out
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let plan = if quick { QUICK } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("## Workspaces (`cargo bench --bench workspaces{}`)", if quick { " -- --quick" } else { "" });
        for db in TestDb::all("workspaces benchmark").await {
            let report = run(&db, plan).await;
            println!("{report}");
        }
    });
}
