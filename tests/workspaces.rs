//! Workspaces through the local control plane, end to end: a real `gatehouse serve`, blueprints whose source is a
//! real git repository made here, real `gatehouse agent` processes started by the control plane, and real shells
//! reached through the terminal relay.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::terminal::{open, read_until, ticket, type_line};
use common::{
    agent_processes, enabled_blueprint, eventually, git_repository, issue_token, launch_running, wait_for_status,
    workspace_processes, Api, Server,
};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

/// The blueprint's files, and a dev server that writes the port it was given where a terminal can read it.
fn blueprint_repository(dir: &std::path::Path) -> std::path::PathBuf {
    git_repository(
        &dir.join("web"),
        &[("README.md", "# Web\n"), ("src/main.js", "console.log('hello')\n"), ("package.json", "{}\n")],
    )
}

const DEV: &str = "echo \"$DEV_PORT\" > .dev-port; exec sleep 600";

async fn launch(api: &Api, token: &str, blueprint: &str, name: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    api.call(Method::POST, "/api/v1/workspaces", Some(token), Some(json!({"blueprint_key": blueprint, "name": name})))
        .await
}

async fn act(api: &Api, token: &str, id: &str, verb: &str) -> (u16, Value) {
    let (status, _, body) = api.call(Method::POST, &format!("/api/v1/workspaces/{id}/{verb}"), Some(token), None).await;
    (status, body)
}

/// Runs `command` in a fresh terminal of workspace `id` and returns what the shell printed up to `marker`.
async fn run_in_terminal(server: &Server, api: &Api, token: &str, id: &str, command: &str) -> String {
    let (status, issued) = ticket(api, token, id).await;
    assert_eq!(status, 201, "{issued}");
    let mut socket = open(server, id, issued["ticket"].as_str().unwrap()).await.unwrap();
    // The marker is computed by the shell, so the echo of the typed line does not match it.
    type_line(&mut socket, &format!("{command}; echo DONE-$((40+2))\n")).await;
    read_until(&mut socket, "DONE-42", Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_is_launched_used_stopped_started_restarted_renamed_and_deleted() {
    for db in TestDb::all("workspace lifecycle").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let sources = tempfile::tempdir().unwrap();
        let repository = blueprint_repository(sources.path());
        enabled_blueprint(&api, &root, "web", &repository, Some(DEV)).await;

        // Launch: 201 at once, deploying; then the control plane's phases and facts make it running.
        let (status, headers, created) = launch(&api, &ada, "web", "My app").await;
        assert_eq!(status, 201, "{backend}: {created}");
        let id = created["id"].as_str().unwrap().to_string();
        assert_eq!(headers["location"], format!("/api/v1/workspaces/{id}").as_str());
        assert_eq!(created["status"], "deploying");
        assert_eq!(created["owner"], "ada@example.com");
        assert_eq!(created["tags"]["BLUEPRINT_KEY"], "web");
        assert_eq!(created["tags"]["RDE_OWNER_EMAIL"], "ada@example.com");
        assert_eq!(created["tags"]["RDE_DISPLAY_NAME"], "My app");
        assert!(created["tags"]["BLUEPRINT_PROJECT_ID"].is_string());
        let running = wait_for_status(&api, &ada, &id, "running").await;
        assert_eq!(running["phase"], "finalizing", "{running}");
        let dev_port = running["dev_port"].as_u64().expect("the dev server's port");
        let files = server.workspaces_dir.join(&id);
        assert!(files.join(".git").is_dir() && files.join("src/main.js").is_file(), "the clone is in place");
        assert_eq!(agent_processes(&id).len(), 1);

        // Its terminal starts in the workspace's files, and its dev server got DEV_PORT.
        let seen = run_in_terminal(&server, &api, &ada, &id, "pwd; ls; cat .dev-port").await;
        assert!(seen.contains(&files.display().to_string()), "{seen}");
        assert!(seen.contains("README.md") && seen.contains("package.json") && seen.contains("src"), "{seen}");
        assert!(seen.contains(&dev_port.to_string()), "{seen}");
        // The agent's token is not in the shell's environment.
        let seen = run_in_terminal(&server, &api, &ada, &id, "env | grep -c GATEHOUSE_AGENT_TOKEN").await;
        assert!(seen.contains("\r\n0\r\n"), "{seen}");

        // Listed with its status and tags; the owner is the control plane's.
        let (_, page) = api.get("/api/v1/workspaces", Some(&ada)).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
        assert_eq!(page["items"][0]["status"], "running");
        assert_eq!(page["items"][0]["blueprint_key"], "web");

        // Stop: the agent ends, terminals are refused with a stable code, stopping again is a conflict.
        let (status, stopped) = act(&api, &ada, &id, "stop").await;
        assert_eq!((status, stopped["status"].as_str()), (202, Some("stopped")), "{stopped}");
        assert!(eventually(Duration::from_secs(15), || async { agent_processes(&id).is_empty() }).await);
        let (status, refused) = ticket(&api, &ada, &id).await;
        assert_eq!((status, code(&refused)), (409, "workspace_not_running"), "{refused}");
        let (status, again) = act(&api, &ada, &id, "stop").await;
        assert_eq!((status, code(&again)), (409, "workspace_not_running"), "{again}");
        let (status, again) = act(&api, &ada, &id, "restart").await;
        assert_eq!((status, code(&again)), (409, "workspace_not_running"), "{again}");
        assert!(files.join("src/main.js").is_file(), "stopping keeps the files");

        // Start: running again, and the terminal works again.
        let (status, starting) = act(&api, &ada, &id, "start").await;
        assert_eq!((status, starting["status"].as_str()), (202, Some("deploying")), "{starting}");
        let (status, again) = act(&api, &ada, &id, "start").await;
        assert_eq!((status, code(&again)), (409, "workspace_running"), "{again}");
        wait_for_status(&api, &ada, &id, "running").await;
        let seen = run_in_terminal(&server, &api, &ada, &id, "echo back > note.txt; cat note.txt").await;
        assert!(seen.contains("back"), "{seen}");

        // Restart: a new agent process, the files kept.
        let before = agent_processes(&id);
        assert_eq!(act(&api, &ada, &id, "restart").await.0, 202);
        let restarted = eventually(Duration::from_secs(30), || async {
            let now = agent_processes(&id);
            now.len() == 1 && now != before
        })
        .await;
        assert!(restarted, "{backend}: a restart starts a new agent");
        wait_for_status(&api, &ada, &id, "running").await;
        assert!(files.join("note.txt").is_file());

        // Rename: the name is the new RDE_DISPLAY_NAME; names are unique per owner ignoring case.
        let path = format!("/api/v1/workspaces/{id}");
        let (status, _, renamed) = api.call(Method::PATCH, &path, Some(&ada), Some(json!({"name": "Shop"}))).await;
        assert_eq!((status, renamed["name"].as_str()), (200, Some("Shop")), "{renamed}");
        assert_eq!(renamed["tags"]["RDE_DISPLAY_NAME"], "Shop");
        let other = launch_running(&api, &ada, "web", "Blog").await;
        let (status, _, taken) = api.call(Method::PATCH, &path, Some(&ada), Some(json!({"name": "blog"}))).await;
        assert_eq!((status, code(&taken), taken["field"].as_str()), (409, "workspace_name_taken", Some("name")));
        let (status, _, bad) = api.call(Method::PATCH, &path, Some(&ada), Some(json!({"name": "a\nb"}))).await;
        assert_eq!((status, bad["field"].as_str()), (422, Some("name")), "{bad}");

        // Delete: everything stops and the files go; the workspace is gone from the API.
        assert_eq!(api.call(Method::DELETE, &path, Some(&ada), None).await.0, 204);
        assert_eq!(api.get(&path, Some(&ada)).await.0, 404);
        let gone =
            eventually(Duration::from_secs(15), || async { !files.exists() && agent_processes(&id).is_empty() }).await;
        assert!(gone, "{backend}: the directory and the agent are gone");
        assert_eq!(api.call(Method::DELETE, &path, Some(&ada), None).await.0, 404);
        let (_, page) = api.get("/api/v1/workspaces", Some(&ada)).await;
        let ids: Vec<&str> =
            page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [other.as_str()], "{backend}");

        // Every step is in the owner's history.
        let events = eventually(Duration::from_secs(5), || async {
            let (_, page) = api.get("/api/v1/events?aggregate_type=workspaces&limit=1000", Some(&root)).await;
            let kinds: Vec<String> = page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["event_type"].as_str().unwrap().to_string())
                .collect();
            [
                "WorkspaceLaunched",
                "WorkspacePhaseReached",
                "WorkspaceStarted",
                "WorkspaceStopRequested",
                "WorkspaceStopped",
                "WorkspaceStartRequested",
                "WorkspaceRestartRequested",
                "WorkspaceRenamed",
                "WorkspaceDeleteRequested",
                "WorkspaceDeleted",
            ]
            .iter()
            .all(|kind| kinds.iter().any(|seen| seen == kind))
        })
        .await;
        assert!(events, "{backend}");
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_killed_with_running_workspaces_adopts_their_agents_and_keeps_stopped_ones_stopped() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    let repository = blueprint_repository(sources.path());
    enabled_blueprint(&api, &root, "web", &repository, Some(DEV)).await;
    let first = launch_running(&api, &ada, "web", "first").await;
    let second = launch_running(&api, &ada, "web", "second").await;
    let resting = launch_running(&api, &ada, "web", "resting").await;
    assert_eq!(act(&api, &ada, &resting, "stop").await.0, 202);
    assert!(eventually(Duration::from_secs(15), || async { agent_processes(&resting).is_empty() }).await);
    let first_agent = agent_processes(&first);
    assert_eq!(first_agent.len(), 1);

    // SIGKILL: the agents outlive the gateway. While it is down, the second workspace's agent dies too.
    server.kill();
    assert_eq!(agent_processes(&first), first_agent, "the agent outlives its gateway");
    for pid in agent_processes(&second) {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || async { agent_processes(&second).is_empty() }).await);

    // A new gateway on the same address finds the first agent (no duplicate), starts the second again, and leaves
    // the stopped one stopped.
    let server = Server::start(&db, &[("GATEHOUSE_LISTEN", &format!("127.0.0.1:{port}"))]);
    let api = Api::new(&server);
    wait_for_status(&api, &ada, &first, "running").await;
    wait_for_status(&api, &ada, &second, "running").await;
    assert_eq!(agent_processes(&first), first_agent, "adopted, not started again");
    assert_eq!(agent_processes(&second).len(), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent_processes(&first), first_agent, "and still not duplicated after some reconciling");
    assert_eq!(agent_processes(&second).len(), 1);
    assert!(agent_processes(&resting).is_empty());
    assert_eq!(api.get(&format!("/api/v1/workspaces/{resting}"), Some(&ada)).await.1["status"], "stopped");
    // Both are reachable through terminals.
    for id in [&first, &second] {
        let seen = run_in_terminal(&server, &api, &ada, id, "ls").await;
        assert!(seen.contains("README.md"), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn launches_racing_at_the_running_limit_have_exactly_one_winner() {
    for db in TestDb::all("workspace quota").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let sources = tempfile::tempdir().unwrap();
        let repository = blueprint_repository(sources.path());
        enabled_blueprint(&api, &root, "web", &repository, None).await;
        let limits = json!({"running_workspaces_per_user": 2, "launches_per_minute": 10000,
                            "api_requests_per_minute": 1000000});
        let (status, _, body) = api.call(Method::PUT, "/api/v1/portal/limits", Some(&root), Some(limits)).await;
        assert!(status < 300, "{body}");
        let kept = launch_running(&api, &ada, "web", "kept").await;

        // One slot left, eight launches at once: exactly one gets it.
        let attempts = (0..8).map(|n| {
            let (api, ada) = (api.clone(), ada.clone());
            tokio::spawn(async move { launch(&api, &ada, "web", &format!("racer-{n}")).await })
        });
        let outcomes: Vec<(u16, Value)> = futures::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .map(|(status, _, body)| (status, body))
            .collect();
        let won = outcomes.iter().filter(|(status, _)| *status == 201).count();
        let refused: Vec<&Value> = outcomes.iter().filter(|(status, _)| *status == 409).map(|(_, body)| body).collect();
        assert_eq!((won, refused.len()), (1, 7), "{backend}: {outcomes:?}");
        assert!(refused.iter().all(|body| code(body) == "quota_exceeded"), "{refused:?}");
        assert!(refused[0]["detail"].as_str().unwrap().contains("2 running workspaces"), "{:?}", refused[0]);

        // Stopped workspaces do not count; starting one is checked too; admins are exempt.
        assert_eq!(act(&api, &ada, &kept, "stop").await.0, 202);
        let third = launch_running(&api, &ada, "web", "third").await;
        let (status, body) = act(&api, &ada, &kept, "start").await;
        assert_eq!((status, code(&body)), (409, "quota_exceeded"), "{body}");
        let (status, body) = act(&api, &root, &kept, "start").await;
        assert_eq!(status, 202, "an admin is not held to the member's limit: {body}");
        for n in 0..3 {
            assert_eq!(launch(&api, &root, "web", &format!("admin-{n}")).await.0, 201);
        }
        let _ = third;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_launch_rate_limit_refuses_with_429() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_LAUNCH_PER_MINUTE", "2")]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), None).await;
    assert_eq!(launch(&api, &ada, "web", "one").await.0, 201);
    assert_eq!(launch(&api, &ada, "web", "two").await.0, 201);
    let (status, headers, body) = launch(&api, &ada, "web", "three").await;
    assert_eq!((status, code(&body)), (429, "rate_limited"), "{body}");
    assert!(headers.get("retry-after").is_some());
    // Per user: another builder still launches.
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    assert_eq!(launch(&api, &bob, "web", "one").await.0, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clone_that_fails_ends_in_error_with_its_reason_and_leaves_nothing_behind() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    let repository = blueprint_repository(sources.path());
    // A branch that does not exist, and a repository that does not exist.
    let body = json!({"key": "branchless", "display_name": "Branchless",
                      "source": {"kind": "local", "repository": repository.display().to_string(), "branch": "nope"}});
    assert_eq!(api.call(Method::POST, "/api/v1/blueprints", Some(&root), Some(body)).await.0, 201);
    let missing = sources.path().join("missing.git");
    enabled_blueprint(&api, &root, "missing", &missing, None).await;
    let state = json!({"state": "enabled"});
    assert_eq!(api.call(Method::PUT, "/api/v1/blueprints/branchless/state", Some(&root), Some(state)).await.0, 204);
    for (blueprint, needle) in [("branchless", "nope"), ("missing", "missing.git")] {
        let (status, _, created) = launch(&api, &ada, blueprint, blueprint).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        // The provisioning stream ends with the failure and its reason.
        let path = format!("/api/v1/workspaces/{id}/provisioning");
        let (status, stream, _) = SseReader::open(&api, &ada, &path, None).await;
        assert_eq!(status, 200);
        let mut stream = stream.unwrap();
        let mut last = None;
        while let Some(event) = stream.next(Duration::from_secs(30)).await {
            last = Some(event);
        }
        let last = last.expect("at least the workspace's state");
        assert_eq!(last.data["status"], "error", "{last:?}");
        assert!(last.data["failure"]["reason"].as_str().unwrap().contains(needle), "{last:?}");
        let failed = wait_for_status(&api, &ada, &id, "error").await;
        assert_eq!(failed["failure"]["phase"], "cloning_blueprint", "{failed}");
        let reason = failed["failure"]["reason"].as_str().unwrap();
        assert!(reason.contains("git clone") && reason.contains(needle), "{reason}");
        let dir = server.workspaces_dir.clone();
        let clean = eventually(Duration::from_secs(5), || async {
            !dir.join(&id).exists() && !dir.join(format!(".partial-{id}")).exists()
        })
        .await;
        assert!(clean, "nothing half-made is left");
        assert!(agent_processes(&id).is_empty());
        // A failed workspace does not count against the limit, and can be deleted.
        assert_eq!(api.call(Method::DELETE, &format!("/api/v1/workspaces/{id}"), Some(&ada), None).await.0, 204);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rogue_agent_cannot_take_over_another_members_workspace() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), None).await;
    let adas = launch_running(&api, &ada, "web", "ada").await;
    let bobs = launch_running(&api, &bob, "web", "bob").await;
    // Bob reads his own agent's token, as anyone inside his workspace can, while Ada's workspace is stopped.
    let pid = agent_processes(&bobs)[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let token = environ
        .split(|b| *b == 0)
        .find_map(|entry| std::str::from_utf8(entry).ok()?.strip_prefix("GATEHOUSE_AGENT_TOKEN=").map(str::to_string))
        .expect("the agent's token");
    assert_eq!(act(&api, &ada, &adas, "stop").await.0, 202);
    assert!(eventually(Duration::from_secs(15), || async { agent_processes(&adas).is_empty() }).await);
    let output = common::gatehouse()
        .args(["agent", "--server", &server.base, "--workspace", &adas])
        .env("GATEHOUSE_AGENT_TOKEN", &token)
        .env("GATEHOUSE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "the impostor is refused and stops");
    assert!(String::from_utf8_lossy(&output.stderr).contains("bound to another"), "{output:?}");
    let (_, view) = api.get(&format!("/api/v1/workspaces/{adas}"), Some(&ada)).await;
    assert_eq!(view["status"], "stopped");
    let (_, agents) = api.get("/api/v1/agents", Some(&root)).await;
    assert!(agents["items"].as_array().unwrap().iter().all(|agent| agent["id"] != adas.as_str()), "{agents}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_decides_what_may_be_launched_and_bad_input_gets_problems() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    let repository = blueprint_repository(sources.path());
    enabled_blueprint(&api, &root, "web", &repository, None).await;
    // A testing blueprint: members see it coming, only admins launch it. One outside Ada's ACL: she never learns it
    // exists.
    let testing = json!({"key": "beta", "display_name": "Beta",
                         "source": {"kind": "local", "repository": repository.display().to_string(), "branch": "main"}});
    assert_eq!(api.call(Method::POST, "/api/v1/blueprints", Some(&root), Some(testing)).await.0, 201);
    enabled_blueprint(&api, &root, "secret", &repository, None).await;
    let acl = json!({"rules": [{"type": "domain", "value": "elsewhere.com"}]});
    assert_eq!(api.call(Method::PUT, "/api/v1/blueprints/secret/acl", Some(&root), Some(acl)).await.0, 204);

    let (status, _, body) = launch(&api, &ada, "beta", "beta").await;
    assert_eq!((status, code(&body), body["field"].as_str()), (409, "blueprint_not_launchable", Some("blueprint_key")));
    // A retried launch with its Idempotency-Key gets the first answer, and one workspace.
    let keyed = || {
        api.http
            .post(format!("{}/api/v1/workspaces", api.base))
            .bearer_auth(&ada)
            .header("Idempotency-Key", "launch-once")
            .json(&json!({"blueprint_key": "web", "name": "Once"}))
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = keyed().await.unwrap();
    assert_eq!((again.status().as_u16(), again.headers()["idempotent-replayed"].to_str().unwrap()), (201, "true"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let (_, own) = api.get("/api/v1/workspaces", Some(&ada)).await;
    assert_eq!(own["items"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(
        api.call(Method::DELETE, &format!("/api/v1/workspaces/{}", first["id"].as_str().unwrap()), Some(&ada), None)
            .await
            .0,
        204
    );
    assert_eq!(launch(&api, &root, "beta", "beta").await.0, 201, "admins test it");
    for unseen in ["secret", "nothing"] {
        let (status, _, body) = launch(&api, &ada, unseen, "x").await;
        assert_eq!((status, code(&body), body["field"].as_str()), (404, "not_found", Some("blueprint_key")), "{body}");
    }
    for (body, field) in [
        (json!({"blueprint_key": "web", "name": ""}), "name"),
        (json!({"blueprint_key": "web", "name": "x".repeat(64)}), "name"),
        (json!({"blueprint_key": "web", "name": "two\nlines"}), "name"),
        (json!({"blueprint_key": "-web", "name": "ok"}), "blueprint_key"),
    ] {
        let (status, _, problem) = api.call(Method::POST, "/api/v1/workspaces", Some(&ada), Some(body)).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(field)), "{problem}");
    }
    for body in [json!({"blueprint_key": "web"}), json!({"blueprint_key": "web", "name": "a", "owner": "bob@x.io"})] {
        let (status, _, problem) = api.call(Method::POST, "/api/v1/workspaces", Some(&ada), Some(body)).await;
        assert_eq!((status, code(&problem)), (400, "invalid_request"), "{problem}");
    }
    for (path, status, field) in [
        ("/api/v1/workspaces?status=lost", 422, Some("status")),
        ("/api/v1/workspaces?owner=nobody", 422, Some("owner")),
        ("/api/v1/workspaces?owner=bob@example.com", 403, None),
        ("/api/v1/workspaces?q=%0A", 422, Some("q")),
        ("/api/v1/workspaces?limit=0", 422, Some("limit")),
        ("/api/v1/workspaces?after=nope", 422, Some("after")),
        ("/api/v1/workspaces?colour=red", 400, None),
    ] {
        let (got, problem) = api.get(path, Some(&ada)).await;
        assert_eq!((got, problem["field"].as_str()), (status, field), "{path}: {problem}");
    }
    for path in ["/api/v1/workspaces/ws-nothing", "/api/v1/workspaces/..", "/api/v1/workspaces/ws-nothing/stop"] {
        let method = if path.ends_with("stop") { Method::POST } else { Method::GET };
        assert_eq!(api.call(method, path, Some(&ada), None).await.0, 404, "{path}");
    }
    // Nothing was launched by the refusals: only the admin's beta workspace exists.
    let (_, all) = api.get("/api/v1/workspaces", Some(&root)).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_list_filter_count_and_upgrade_everyones_workspaces_members_only_their_own() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    let repository = blueprint_repository(sources.path());
    enabled_blueprint(&api, &root, "web", &repository, Some(DEV)).await;
    enabled_blueprint(&api, &root, "api", &repository, None).await;
    let adas = launch_running(&api, &ada, "web", "Storefront").await;
    let bobs = launch_running(&api, &bob, "api", "Backend").await;
    let bobs_stopped = launch_running(&api, &bob, "web", "Old shop").await;
    assert_eq!(act(&api, &bob, &bobs_stopped, "stop").await.0, 202);

    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
    };
    // Members: their own only; another's workspace is 404 for every verb.
    assert_eq!(ids(&api.get("/api/v1/workspaces", Some(&ada)).await.1), std::slice::from_ref(&adas));
    for (method, verb) in [
        (Method::GET, ""),
        (Method::POST, "/stop"),
        (Method::POST, "/start"),
        (Method::POST, "/restart"),
        (Method::DELETE, ""),
    ] {
        let path = format!("/api/v1/workspaces/{bobs}{verb}");
        let (status, _, body) = api.call(method.clone(), &path, Some(&ada), None).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{method} {path}");
    }
    let (status, _) = ticket(&api, &ada, &bobs).await;
    assert_eq!(status, 404, "nor may she open its terminal");
    // Admins: everyone's, newest first, filtered and searched, paginated.
    assert_eq!(
        ids(&api.get("/api/v1/workspaces", Some(&root)).await.1),
        [bobs_stopped.clone(), bobs.clone(), adas.clone()]
    );
    let stopped = wait_for_status(&api, &bob, &bobs_stopped, "stopped").await;
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(
        ids(&api.get("/api/v1/workspaces?status=stopped", Some(&root)).await.1),
        std::slice::from_ref(&bobs_stopped)
    );
    assert_eq!(ids(&api.get("/api/v1/workspaces?status=running", Some(&root)).await.1), [bobs.clone(), adas.clone()]);
    assert_eq!(ids(&api.get("/api/v1/workspaces?blueprint_key=api", Some(&root)).await.1), std::slice::from_ref(&bobs));
    assert_eq!(
        ids(&api.get("/api/v1/workspaces?owner=ada@example.com", Some(&root)).await.1),
        std::slice::from_ref(&adas)
    );
    assert_eq!(ids(&api.get("/api/v1/workspaces?q=STORE", Some(&root)).await.1), std::slice::from_ref(&adas));
    assert_eq!(ids(&api.get("/api/v1/workspaces?q=bob@", Some(&root)).await.1).len(), 2);
    assert_eq!(ids(&api.get("/api/v1/workspaces?q=%25", Some(&root)).await.1).len(), 0, "% is not a wildcard");
    let (_, first) = api.get("/api/v1/workspaces?limit=2", Some(&root)).await;
    let next = first["next"].as_str().unwrap().to_string();
    let (_, second) =
        api.get(&format!("/api/v1/workspaces?limit=2&after={}", next.replace('+', "%2B")), Some(&root)).await;
    assert_eq!([ids(&first), ids(&second)].concat(), [bobs_stopped.clone(), bobs.clone(), adas.clone()]);
    assert!(second.get("next").is_none());
    let (status, summary) = api.get("/api/v1/admin/workspaces/summary", Some(&root)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            summary["running"].as_u64(),
            summary["stopped"].as_u64(),
            summary["total"].as_u64(),
            summary["blueprints"].as_u64()
        ),
        (Some(2), Some(1), Some(3), Some(2)),
        "{summary}"
    );
    for token in [&ada, &auditor] {
        assert_eq!(api.get("/api/v1/admin/workspaces/summary", Some(token)).await.0, 403);
    }
    assert_eq!(api.get("/api/v1/workspaces", Some(&auditor)).await.0, 403);

    // Upgrade (admins): the blueprint's new settings, the files kept, a new agent.
    let note = server.workspaces_dir.join(&adas).join("kept.txt");
    std::fs::write(&note, "mine").unwrap();
    let body = json!({"source": {"kind": "local", "repository": repository.display().to_string(), "branch": "main",
                                  "dev_command": "echo upgraded > .upgraded; exec sleep 600"}});
    let (status, _, changed) = api.call(Method::PATCH, "/api/v1/blueprints/web", Some(&root), Some(body)).await;
    assert_eq!(status, 204, "{changed}");
    assert_eq!(act(&api, &ada, &adas, "upgrade").await.0, 403, "members do not upgrade");
    let (status, upgrading) = act(&api, &root, &adas, "upgrade").await;
    assert_eq!((status, upgrading["status"].as_str()), (202, Some("deploying")), "{upgrading}");
    wait_for_status(&api, &ada, &adas, "running").await;
    let upgraded = server.workspaces_dir.join(&adas).join(".upgraded");
    assert!(eventually(Duration::from_secs(10), || async { upgraded.is_file() }).await, "the new dev command ran");
    assert_eq!(std::fs::read_to_string(&note).unwrap(), "mine", "files are kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let member = issue_token(&db, "ada@example.com", "member", "1h");
    let other = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    enabled_blueprint(&api, &admin, "web", &blueprint_repository(sources.path()), None).await;
    let limits =
        json!({"running_workspaces_per_user": 20, "launches_per_minute": 10000, "api_requests_per_minute": 1000000});
    let (status, _, body) = api.call(Method::PUT, "/api/v1/portal/limits", Some(&admin), Some(limits)).await;
    assert!(status < 300, "{body}");
    // Ada's workspaces, one per state-changing row, so that each row's first success does not change the next.
    let mut adas = Vec::new();
    for n in 0..6 {
        adas.push(launch_running(&api, &member, "web", &format!("ada-{n}")).await);
    }
    let callers: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("owner", Some(&member)),
        ("another member", Some(&other)),
        ("admin", Some(&admin)),
        ("auditor", Some(&auditor)),
    ];
    let path = |n: usize, verb: &str| format!("/api/v1/workspaces/{}{verb}", adas[n]);
    let launch_body = |n: usize| Some(json!({"blueprint_key": "web", "name": format!("matrix-{n}")}));
    // (method, path, body, expected for anonymous, owner, another member, admin, auditor). Rows that change state
    // accept one caller's attempt; the first success changes what the later callers meet (noted per row).
    let matrix: Vec<(Method, String, Option<Value>, [u16; 5])> = vec![
        (Method::POST, "/api/v1/workspaces".into(), launch_body(0), [401, 201, 201, 201, 403]),
        (Method::GET, "/api/v1/workspaces".into(), None, [401, 200, 200, 200, 403]),
        (Method::GET, "/api/v1/admin/workspaces/summary".into(), None, [401, 403, 403, 200, 403]),
        (Method::GET, path(0, ""), None, [401, 200, 404, 200, 403]),
        // Stopped by the owner; the admin then meets a stopped workspace.
        (Method::POST, path(1, "/stop"), None, [401, 202, 404, 409, 403]),
        // Restarted by the owner and again by the admin.
        (Method::POST, path(2, "/restart"), None, [401, 202, 404, 202, 403]),
        (Method::POST, path(3, "/upgrade"), None, [401, 403, 403, 202, 403]),
        (Method::PATCH, path(4, ""), Some(json!({"name": "renamed"})), [401, 200, 404, 200, 403]),
        (Method::DELETE, path(5, ""), None, [401, 204, 404, 404, 403]),
        (Method::POST, path(1, "/start"), None, [401, 202, 404, 409, 403]),
    ];
    for (method, path, body, expected) in matrix {
        for (n, ((name, token), expected)) in callers.iter().zip(expected).enumerate() {
            let body =
                if method == Method::POST && path == "/api/v1/workspaces" { launch_body(n) } else { body.clone() };
            let (status, _, response) = api.call(method.clone(), &path, *token, body).await;
            assert_eq!(status, expected, "{method} {path} as {name}: {response}");
        }
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// A real SSE client over a streaming HTTP response.
struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    async fn open(api: &Api, token: &str, path: &str, last_event_id: Option<&str>) -> (u16, Option<SseReader>, Value) {
        let mut request = api.http.get(format!("{}{path}", api.base)).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            return (status, None, response.json().await.unwrap_or_default());
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        (status, Some(SseReader { response, buffer: String::new() }), Value::Null)
    }

    /// The next event (comments and `retry` skipped); `None` when the stream ended.
    async fn next(&mut self, limit: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = Some(value.to_string());
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if !data.is_empty() {
                    return Some(Sse { id, event, data: serde_json::from_str(&data).unwrap() });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.expect("no event in time");
            match chunk.unwrap() {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// Events until one matches `until` (included).
    async fn until(&mut self, until: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let event = self.next(Duration::from_secs(30)).await.unwrap_or_else(|| panic!("ended; saw {seen:?}"));
            let done = until(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

fn about(event: &Sse, id: &str) -> bool {
    event.data["workspace"] == id
}

#[tokio::test(flavor = "multi_thread")]
async fn live_updates_show_each_phase_and_resume_after_a_dropped_connection_with_nothing_missed_or_repeated() {
    for db in TestDb::all("live updates").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let sources = tempfile::tempdir().unwrap();
        enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), None).await;

        // Ada's stream, opened before her launch, shows its six phases and then `running`.
        let (status, ada_stream, _) = SseReader::open(&api, &ada, "/api/v1/stream", None).await;
        assert_eq!(status, 200);
        let mut ada_stream = ada_stream.unwrap();
        let (_, bob_stream, _) = SseReader::open(&api, &bob, "/api/v1/stream", None).await;
        let mut bob_stream = bob_stream.unwrap();
        let (_, _, created) = launch(&api, &ada, "web", "Live").await;
        let id = created["id"].as_str().unwrap().to_string();
        let seen = ada_stream.until(|event| about(event, &id) && event.data["status"] == "running").await;
        let launched = seen.iter().find(|event| event.data["change"] == "WorkspaceLaunched").expect("the launch");
        let phases: Vec<&str> = seen.iter().filter_map(|event| event.data["phase"].as_str()).collect();
        assert_eq!(
            phases,
            ["validating", "creating_project", "cloning_blueprint", "configuring", "deploying", "finalizing"],
            "{backend}"
        );
        assert!(seen.iter().all(|event| event.event == "workspace" && event.id.is_some()));

        // The provisioning stream of that workspace, resumed from the launch, replays the same phases and ends.
        let path = format!("/api/v1/workspaces/{id}/provisioning");
        let (status, stream, _) = SseReader::open(&api, &ada, &path, launched.id.as_deref()).await;
        assert_eq!(status, 200);
        let mut stream = stream.unwrap();
        let mut replayed = Vec::new();
        while let Some(event) = stream.next(Duration::from_secs(30)).await {
            replayed.push(event);
        }
        let replayed_phases: Vec<&str> = replayed.iter().filter_map(|event| event.data["phase"].as_str()).collect();
        assert_eq!(replayed_phases, phases, "{backend}");
        assert_eq!(replayed.last().unwrap().data["status"], "running", "it ends with the final status");
        // Opened on a running workspace, it says so and ends.
        let (_, stream, _) = SseReader::open(&api, &ada, &path, None).await;
        let mut stream = stream.unwrap();
        let current = stream.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!((current.event.as_str(), &current.data["status"]), ("status", &json!("running")));
        assert!(stream.next(Duration::from_secs(5)).await.is_none());
        // Nobody else's: Bob cannot open it, and his stream shows nothing of Ada's.
        assert_eq!(SseReader::open(&api, &bob, &path, None).await.0, 404);

        // A dropped connection: Ada reads one more event, the connection drops, more happens, she reconnects with
        // Last-Event-ID and gets exactly what she missed.
        assert_eq!(act(&api, &ada, &id, "stop").await.0, 202);
        let first = ada_stream.next(Duration::from_secs(30)).await.unwrap();
        let last_seen = first.id.clone().unwrap();
        drop(ada_stream);
        let (status, _, _) = api
            .call(Method::PATCH, &format!("/api/v1/workspaces/{id}"), Some(&ada), Some(json!({"name": "Renamed"})))
            .await;
        assert_eq!(status, 200);
        assert_eq!(act(&api, &ada, &id, "start").await.0, 202);
        wait_for_status(&api, &ada, &id, "running").await;
        let (_, resumed, _) = SseReader::open(&api, &ada, "/api/v1/stream", Some(&last_seen)).await;
        let mut resumed = resumed.unwrap();
        let after = resumed.until(|event| about(event, &id) && event.data["status"] == "running").await;
        // The same as a stream that never dropped: everything after `last_seen` in a stream from before it all.
        let (_, whole, _) = SseReader::open(&api, &ada, &format!("/api/v1/stream?after={}", "g1.0.0"), None).await;
        let mut whole = whole.unwrap();
        let everything = whole
            .until(|event| {
                about(event, &id)
                    && event.data["status"] == "running"
                    && event.data["change"] == "WorkspaceStarted"
                    && event.id.as_deref() == after.last().unwrap().id.as_deref()
            })
            .await;
        let expected: Vec<&Option<String>> = everything
            .iter()
            .map(|event| &event.id)
            .skip_while(|event_id| event_id.as_deref() != Some(last_seen.as_str()))
            .skip(1)
            .collect();
        let got: Vec<&Option<String>> = after.iter().map(|event| &event.id).collect();
        assert_eq!(got, expected, "{backend}: exactly the missed events, once each");
        assert!(after.iter().any(|event| event.data["change"] == "WorkspaceRenamed"), "{after:?}");
        let mut ids: Vec<&str> = after.iter().filter_map(|event| event.id.as_deref()).collect();
        ids.dedup();
        assert_eq!(ids.len(), after.len(), "no id twice");

        // Bob's stream saw nothing of Ada's workspace; an admin's sees everyone's.
        let (_, _, bobs) = launch(&api, &bob, "web", "Bob's").await;
        let bobs = bobs["id"].as_str().unwrap().to_string();
        let bob_saw = bob_stream.until(|event| about(event, &bobs)).await;
        assert!(bob_saw.iter().all(|event| event.data["owner"] == "bob@example.com"), "{bob_saw:?}");
        let (_, admin, _) = SseReader::open(&api, &root, "/api/v1/stream?after=g1.0.0", None).await;
        let mut admin = admin.unwrap();
        let admin_saw = admin.until(|event| about(event, &bobs)).await;
        assert!(admin_saw.iter().any(|event| event.data["owner"] == "ada@example.com"));
        // Auditors do not stream; a bad cursor is refused naming where it came from.
        let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
        assert_eq!(SseReader::open(&api, &auditor, "/api/v1/stream", None).await.0, 403);
        let (status, _, problem) = SseReader::open(&api, &ada, "/api/v1/stream", Some("nope")).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("Last-Event-ID")), "{problem}");
        let (status, _, problem) = SseReader::open(&api, &ada, "/api/v1/stream?after=nope", None).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some("after")), "{problem}");
        assert!(server.terminate().success(), "{backend}: open streams do not hold up shutdown");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_tag_their_own_workspaces_and_filter_by_tag() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), None).await;
    let shop = launch_running(&api, &ada, "web", "Shop").await;
    let blog = launch_running(&api, &ada, "web", "Blog").await;
    let bobs = launch_running(&api, &bob, "web", "Bob's").await;

    let create = |token: String, name: &'static str| {
        let api = api.clone();
        async move { api.call(Method::POST, "/api/v1/tags", Some(&token), Some(json!({ "name": name }))).await }
    };
    let (status, headers, frontend) = create(ada.clone(), "Frontend").await;
    assert_eq!(status, 201, "{frontend}");
    let frontend = frontend["id"].as_str().unwrap().to_string();
    assert_eq!(headers["location"], format!("/api/v1/tags/{frontend}").as_str());
    let (status, _, taken) = create(ada.clone(), "frontend").await;
    assert_eq!((status, code(&taken), taken["field"].as_str()), (409, "tag_name_taken", Some("name")));
    let (status, _, bad) = create(ada.clone(), "two\nlines").await;
    assert_eq!((status, bad["field"].as_str()), (422, Some("name")));
    // Names are per user: Bob may have his own "Frontend".
    assert_eq!(create(bob.clone(), "Frontend").await.0, 201);
    let (_, _, experiment) = create(ada.clone(), "Experiment").await;
    let experiment = experiment["id"].as_str().unwrap().to_string();

    // Assign to her own workspaces only; twice is the same.
    let tag_path = |workspace: &str, tag: &str| format!("/api/v1/workspaces/{workspace}/tags/{tag}");
    for _ in 0..2 {
        assert_eq!(api.call(Method::PUT, &tag_path(&shop, &frontend), Some(&ada), None).await.0, 204);
    }
    assert_eq!(api.call(Method::PUT, &tag_path(&blog, &experiment), Some(&ada), None).await.0, 204);
    assert_eq!(api.call(Method::PUT, &tag_path(&bobs, &frontend), Some(&ada), None).await.0, 404);
    assert_eq!(api.call(Method::PUT, &tag_path(&shop, &frontend), Some(&bob), None).await.0, 404);
    let (_, _, roots) = create(root.clone(), "Ops").await;
    let roots = roots["id"].as_str().unwrap().to_string();
    let (status, _, body) = api.call(Method::PUT, &tag_path(&shop, &roots), Some(&root), None).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "an admin sees Ada's workspace but tags only their own");
    assert_eq!(api.call(Method::PUT, &tag_path(&shop, "tag-nothing"), Some(&ada), None).await.0, 404);

    // The list filters by tag; each workspace shows the caller's own tags on it.
    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
    };
    let filtered = eventually(Duration::from_secs(5), || async {
        ids(&api.get(&format!("/api/v1/workspaces?tag={frontend}"), Some(&ada)).await.1) == [shop.clone()]
    })
    .await;
    assert!(filtered);
    assert!(ids(&api.get("/api/v1/workspaces?tag=tag-nothing", Some(&ada)).await.1).is_empty());
    let (_, view) = api.get(&format!("/api/v1/workspaces/{shop}"), Some(&ada)).await;
    assert_eq!(view["user_tags"], json!([{"id": frontend, "name": "Frontend"}]));
    let (_, as_admin) = api.get(&format!("/api/v1/workspaces/{shop}"), Some(&root)).await;
    assert_eq!(as_admin["user_tags"], json!([]), "tags are personal");

    // Rename keeps assignments; deleting a workspace or a tag removes its assignments.
    let (status, _, renamed) =
        api.call(Method::PATCH, &format!("/api/v1/tags/{frontend}"), Some(&ada), Some(json!({"name": "Web"}))).await;
    assert_eq!((status, renamed["workspaces"].clone()), (200, json!([shop])), "{renamed}");
    assert_eq!(api.call(Method::DELETE, &format!("/api/v1/workspaces/{shop}"), Some(&ada), None).await.0, 204);
    let (_, tags) = api.get("/api/v1/tags", Some(&ada)).await;
    let names: Vec<&str> = tags["items"].as_array().unwrap().iter().map(|tag| tag["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Experiment", "Web"]);
    assert_eq!(tags["items"][1]["workspaces"], json!([]), "the deleted workspace is gone from its tag: {tags}");
    let emptied = eventually(Duration::from_secs(5), || async {
        ids(&api.get(&format!("/api/v1/workspaces?tag={frontend}"), Some(&ada)).await.1).is_empty()
    })
    .await;
    assert!(emptied);
    assert_eq!(api.call(Method::DELETE, &format!("/api/v1/tags/{experiment}"), Some(&ada), None).await.0, 204);
    assert_eq!(api.call(Method::DELETE, &format!("/api/v1/tags/{experiment}"), Some(&ada), None).await.0, 404);
    let gone = eventually(Duration::from_secs(5), || async {
        ids(&api.get(&format!("/api/v1/workspaces?tag={experiment}"), Some(&ada)).await.1).is_empty()
    })
    .await;
    assert!(gone);
    let (_, view) = api.get(&format!("/api/v1/workspaces/{blog}"), Some(&ada)).await;
    assert_eq!(view["user_tags"], json!([]));

    // Authorization: anonymous 401, auditors 403, another user's tag 404.
    assert_eq!(api.get("/api/v1/tags", None).await.0, 401);
    assert_eq!(api.get("/api/v1/tags", Some(&auditor)).await.0, 403);
    assert_eq!(create(auditor.clone(), "x").await.0, 403);
    let path = format!("/api/v1/tags/{frontend}");
    assert_eq!(api.call(Method::PATCH, &path, Some(&bob), Some(json!({"name": "mine"}))).await.0, 404);
    assert_eq!(api.call(Method::DELETE, &path, Some(&bob), None).await.0, 404);
    assert_eq!(api.call(Method::DELETE, &path, Some(&auditor), None).await.0, 403);
    assert_eq!(api.call(Method::DELETE, &tag_path(&blog, &frontend), Some(&auditor), None).await.0, 403);
    assert_eq!(api.call(Method::DELETE, &tag_path(&blog, &frontend), Some(&ada), None).await.0, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_a_workspace_outlives_its_agent_or_its_deletion_and_failures_hide_credentials() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    // A dev server that also leaves a daemon behind in a session of its own.
    let dev = "setsid sleep 7777 & exec sleep 8888";
    enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), Some(dev)).await;
    let id = launch_running(&api, &ada, "web", "leaky").await;
    assert!(
        eventually(Duration::from_secs(10), || async { workspace_processes(&id).len() >= 3 }).await,
        "agent, dev server, daemon"
    );
    let first = workspace_processes(&id);

    // The agent crashes: the reconciler starts it again, and nothing of the first run is left.
    for pid in agent_processes(&id) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    let restarted = eventually(Duration::from_secs(30), || async {
        let now = workspace_processes(&id);
        agent_processes(&id).len() == 1 && first.iter().all(|pid| !now.contains(pid))
    })
    .await;
    assert!(restarted, "the first run's processes: {first:?}, now: {:?}", workspace_processes(&id));
    wait_for_status(&api, &ada, &id, "running").await;

    // Delete: every process of the workspace ends.
    assert_eq!(api.call(Method::DELETE, &format!("/api/v1/workspaces/{id}"), Some(&ada), None).await.0, 204);
    assert!(
        eventually(Duration::from_secs(20), || async { workspace_processes(&id).is_empty() }).await,
        "{:?}",
        workspace_processes(&id)
    );

    // A credential in the repository's URL (user information or query) is never shown in a failure.
    let body = json!({"key": "secret", "display_name": "Secret",
                      "source": {"kind": "local", "repository": "https://tok3n@127.0.0.1:9/x.git?access_token=SECRETQ",
                                 "branch": "main"}});
    assert_eq!(api.call(Method::POST, "/api/v1/blueprints", Some(&root), Some(body)).await.0, 201);
    let state = json!({"state": "enabled"});
    assert_eq!(api.call(Method::PUT, "/api/v1/blueprints/secret/state", Some(&root), Some(state)).await.0, 204);
    let (_, _, created) = launch(&api, &ada, "secret", "secret").await;
    let failed = wait_for_status(&api, &ada, created["id"].as_str().unwrap(), "error").await;
    let reason = failed["failure"]["reason"].as_str().unwrap();
    assert!(!reason.contains("SECRETQ") && !reason.contains("tok3n"), "{reason}");
    assert!(reason.contains("[redacted]"), "{reason}");
    let logs = server.drain_logs().join("\n");
    assert!(!logs.contains("SECRETQ") && !logs.contains("tok3n"), "the gateway's log shows the credential");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_refuse_cursors_past_the_log_end_settled_resumes_end_and_expired_tokens_lose_the_stream() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let short = issue_token(&db, "ada@example.com", "member", "3s");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    enabled_blueprint(&api, &root, "web", &blueprint_repository(sources.path()), None).await;
    let (_, stream, _) = SseReader::open(&api, &ada, "/api/v1/stream", None).await;
    let mut stream = stream.unwrap();
    let (_, _, created) = launch(&api, &ada, "web", "settled").await;
    let id = created["id"].as_str().unwrap().to_string();
    let seen = stream.until(|event| about(event, &id) && event.data["status"] == "running").await;
    let launched = seen[0].id.clone().unwrap();

    // A cursor past the end of the log names no event of it: the stream starts from now, and is not blind.
    let mut latest = seen.last().unwrap().id.clone().unwrap();
    for cursor in ["g1.999999999.999999999", "g1.0.99999999"] {
        let (status, far, _) = SseReader::open(&api, &ada, "/api/v1/stream", Some(cursor)).await;
        assert_eq!(status, 200, "{cursor}");
        let mut far = far.unwrap();
        let path = format!("/api/v1/workspaces/{id}");
        let renamed = json!({"name": format!("renamed {}", cursor.len())});
        assert_eq!(api.call(Method::PATCH, &path, Some(&ada), Some(renamed)).await.0, 200);
        let seen = far.until(|event| event.data["change"] == "WorkspaceRenamed").await;
        assert!(seen.iter().all(|event| event.id.as_deref() != Some(cursor)), "{cursor}: {seen:?}");
        latest = seen.last().unwrap().id.clone().unwrap();
    }
    // Resuming the provisioning of a workspace that has settled since: the missed phases, where it stands, the end.
    let path = format!("/api/v1/workspaces/{id}/provisioning");
    let (_, resumed, _) = SseReader::open(&api, &ada, &path, Some(&launched)).await;
    let mut resumed = resumed.unwrap();
    let mut events = Vec::new();
    while let Some(event) = resumed.next(Duration::from_secs(10)).await {
        events.push(event);
    }
    assert_eq!(events.last().unwrap().data["status"], "running", "{events:?}");
    // From after its last event: nothing missed, so where it stands, and the end (not keep-alives for ever).
    let (_, resumed, _) = SseReader::open(&api, &ada, &path, Some(&latest)).await;
    let mut resumed = resumed.unwrap();
    let current = resumed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!((current.event.as_str(), &current.data["status"]), ("status", &json!("running")), "{current:?}");
    assert!(resumed.next(Duration::from_secs(10)).await.is_none());

    // A stream lasts no longer than its token.
    let (_, expiring, _) = SseReader::open(&api, &short, "/api/v1/stream", None).await;
    let mut expiring = expiring.unwrap();
    let began = std::time::Instant::now();
    while expiring.next(Duration::from_secs(20)).await.is_some() {}
    assert!(began.elapsed() < Duration::from_secs(10), "the stream ended when the token expired");
}
