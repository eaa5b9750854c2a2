//! Issue #15's benchmarks: the time from an approval's `200` to the delivery's end (`pushed` with the local
//! provider, `pull_request_opened` with a GitHub-shaped API behind a token-guarded smart-HTTP remote), beside a plain
//! `git push` of the same kind of commit from the same machine; and the diff preview of a workspace with 1,000
//! changed files, beside the same diff computed in-process by the agent's code (`relay::git::run`) with no gateway,
//! relay or agent connection in between.
//!
//! Run: `cargo bench --bench publish` (embedded SQLite); with
//! `GATEHOUSE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres` also on PostgreSQL. `-- --quick` runs a
//! short version. Results go to stdout as Markdown; docs/BENCHMARKS.md records them.
//!
//! The end of a delivery is observed by polling `GET /api/v1/publish-requests/{id}` every 2 ms, so the figures
//! include the read model's lag (what a client sees), and up to 2 ms of polling.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{git_repository, issue_token, launch_running, Api, Server};
use relay::task::{DiffBase, GitTask, TaskOutcome};
use reqwest::Method;
use serde_json::{json, Value};
use support::percentile_ms;
use testkit::forge::ForgeServer;
use testkit::git_http::GitHttpServer;
use testkit::TestDb;

const TOKEN: &str = "ghs_benchmark_token_0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, Clone, Copy)]
struct Plan {
    publishes: usize,
    previews: usize,
}

const FULL: Plan = Plan { publishes: 40, previews: 30 };
const QUICK: Plan = Plan { publishes: 8, previews: 8 };

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Bench", "-c", "user.email=bench@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn bare_blueprint(scratch: &Path, path: &Path) {
    let seed = scratch.join(format!("seed-{}", path.components().count() * 1000 + path.as_os_str().len()));
    let seeded = git_repository(&seed, &[("README.md", "# Web\n")]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    git(scratch, &["clone", "-q", "--bare", seeded.to_str().unwrap(), path.to_str().unwrap()]);
}

async fn register(api: &Api, root: &str, key: &str, repository: &str) {
    let body = json!({"key": key, "display_name": key, "source": {"kind": "local", "repository": repository, "branch": "main"}});
    let (status, _, created) = api.call(Method::POST, "/api/v1/blueprints", Some(root), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let state = json!({"state": "enabled"});
    let path = format!("/api/v1/blueprints/{key}/state");
    assert_eq!(api.call(Method::PUT, &path, Some(root), Some(state)).await.0, 204);
}

/// Publishes `plan.publishes` edits of workspace `id` one after the other; the approve-to-`end` times.
async fn deliveries(api: &Api, root: &str, ada: &str, id: &str, end: &str, plan: Plan) -> Vec<Duration> {
    let mut samples = Vec::new();
    for n in 0..plan.publishes {
        api.edit(id);
        let subdomain = format!("bench-{}", id.to_ascii_lowercase().replace(['_', '.'], "-"));
        let subdomain: String = subdomain.chars().take(63).collect::<String>().trim_end_matches('-').to_string();
        let body = json!({"workspace_id": id, "subdomain": subdomain, "message": format!("Publish {n}")});
        let (status, _, created) = api.call(Method::POST, "/api/v1/publish-requests", Some(ada), Some(body)).await;
        assert_eq!(status, 201, "{created}");
        let request = created["id"].as_str().unwrap().to_string();
        let path = format!("/api/v1/publish-requests/{request}/approve");
        let (status, _, body) = api.call(Method::POST, &path, Some(root), None).await;
        assert_eq!(status, 200, "{body}");
        let approved = Instant::now();
        let path = format!("/api/v1/publish-requests/{request}");
        loop {
            let (_, view): (u16, Value) = api.get(&path, Some(root)).await;
            if view["delivery"]["status"] == end {
                samples.push(approved.elapsed());
                break;
            }
            assert!(view["delivery"]["status"] != "failed", "{view}");
            assert!(approved.elapsed() < Duration::from_secs(60), "{view}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    samples
}

/// The same kind of push without Gatehouse: a new one-file commit pushed to a new branch of `remote`.
fn direct_pushes(scratch: &Path, name: &str, remote: &str, plan: Plan) -> Vec<Duration> {
    let clone = scratch.join(name);
    git(scratch, &["clone", "-q", remote, clone.to_str().unwrap()]);
    (0..plan.publishes)
        .map(|n| {
            std::fs::write(clone.join(format!("direct-{n}.txt")), "x\n").unwrap();
            git(&clone, &["add", "-A"]);
            git(&clone, &["commit", "-q", "-m", "direct"]);
            let started = Instant::now();
            git(&clone, &["push", "-q", remote, &format!("HEAD:refs/heads/direct/{n}")]);
            started.elapsed()
        })
        .collect()
}

fn row(label: &str, samples: &[Duration]) -> String {
    format!(
        "| {label} | {} | {:.1} | {:.1} |\n",
        samples.len(),
        percentile_ms(samples, 0.5),
        percentile_ms(samples, 0.99)
    )
}

async fn run(db: &TestDb, plan: Plan) -> String {
    let root = issue_token(db, "root@example.com", "admin", "2h");
    let ada = issue_token(db, "ada@example.com", "member", "2h");
    let server =
        Server::start(db, &[("GATEHOUSE_LOG", "warn,gatehouse=info"), ("GATEHOUSE_PUBLISH_MAX_PATCH_BYTES", "131072")]);
    let api = Api::new(&server);
    let scratch = tempfile::tempdir().unwrap();
    let limits =
        json!({"running_workspaces_per_user": 10, "launches_per_minute": 100, "api_requests_per_minute": 1000000});
    api.call(Method::PUT, "/api/v1/portal/limits", Some(&root), Some(limits)).await;
    let mut out = format!(
        "\n### {} ({} publishes per provider, {} previews)\n\n| Measure | n | p50 ms | p99 ms |\n| --- | --- | --- | --- |\n",
        db.backend(),
        plan.publishes,
        plan.previews
    );

    // 1. The local provider: a bare repository on disk.
    let disk = scratch.path().join("disk/web.git");
    bare_blueprint(scratch.path(), &disk);
    register(&api, &root, "disk", disk.to_str().unwrap()).await;
    let local = launch_running(&api, &ada, "disk", "Local").await;
    out.push_str(&row(
        "Direct `git push` to the bare repository",
        &direct_pushes(scratch.path(), "direct-disk", disk.to_str().unwrap(), plan),
    ));
    out.push_str(&row(
        "Approve → `pushed` (local provider)",
        &deliveries(&api, &root, &ada, &local, "pushed", plan).await,
    ));

    // 2. GitHub: the smart-HTTP remote wants the token for pushes; the pull request through the GitHub-shaped API.
    let repositories = scratch.path().join("remote");
    bare_blueprint(scratch.path(), &repositories.join("acme/web.git"));
    let remote = GitHttpServer::start(&repositories, TOKEN).public_read();
    let forge = ForgeServer::github(TOKEN, &["acme/web"]);
    let org = json!({"name": "Acme", "control_plane": {"kind": "local"},
                     "git": {"provider": "github", "base_url": forge.api_base()}});
    assert_eq!(api.call(Method::PUT, "/api/v1/org", Some(&root), Some(org)).await.0, 204);
    let credential = json!({"value": TOKEN});
    assert_eq!(api.call(Method::PUT, "/api/v1/org/credentials/git_token", Some(&root), Some(credential)).await.0, 204);
    register(&api, &root, "github", &remote.url("acme/web.git")).await;
    let hosted = launch_running(&api, &ada, "github", "Hosted").await;
    let authenticated = remote.url("acme/web.git").replace("http://", &format!("http://bench:{TOKEN}@"));
    out.push_str(&row(
        "Direct `git push` to the smart-HTTP remote",
        &direct_pushes(scratch.path(), "direct-http", &authenticated, plan),
    ));
    out.push_str(&row(
        "Approve → `pull_request_opened` (GitHub-shaped API)",
        &deliveries(&api, &root, &ada, &hosted, "pull_request_opened", plan).await,
    ));

    // 3. The diff preview of 1,000 changed files, through the API and in-process.
    let files = server.workspaces_dir.join(&local);
    for n in 0..1000 {
        std::fs::write(files.join(format!("bulk-{n:04}.txt")), format!("line {n}\nsecond line\n")).unwrap();
    }
    let path = format!("/api/v1/workspaces/{local}/publish-diff");
    let mut through = Vec::new();
    for _ in 0..plan.previews {
        let started = Instant::now();
        let (status, preview) = api.get(&path, Some(&ada)).await;
        through.push(started.elapsed());
        assert_eq!((status, preview["files_changed"].as_u64()), (200, Some(1000)), "{preview}");
    }
    let (_, view) = api.get(&format!("/api/v1/publish-requests?workspace_id={local}&limit=1"), Some(&ada)).await;
    let published = view["items"][0]["commit_id"].as_str().map(str::to_string);
    let mut direct = Vec::new();
    for _ in 0..plan.previews {
        let task = GitTask::Diff {
            base: DiffBase { published: published.clone(), source: None, blueprint_branch: "main".into() },
            max_patch_bytes: 131_072,
            timeout_secs: 60,
        };
        let started = Instant::now();
        let outcome = relay::git::run(&files, task).await;
        direct.push(started.elapsed());
        assert!(matches!(outcome, TaskOutcome::Diff { ref diff } if diff.files_changed == 1000), "{outcome:?}");
    }
    out.push_str(&row("Diff of 1,000 changed files, in-process (`relay::git::run`)", &direct));
    out.push_str(&row("Diff preview of 1,000 changed files (`GET …/publish-diff`)", &through));
    out.push_str(&format!(
        "\nPreview p50 ratio (API / in-process): {:.2}×\n",
        percentile_ms(&through, 0.5) / percentile_ms(&direct, 0.5)
    ));
    out
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let plan = if quick { QUICK } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("## Publish execution (`cargo bench --bench publish{}`)", if quick { " -- --quick" } else { "" });
        for db in TestDb::all("publish benchmark").await {
            println!("{}", run(&db, plan).await);
        }
    });
}
