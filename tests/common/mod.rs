//! Runs the real `gatehouse` binary as a child process and talks to it over HTTP.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use testkit::TestDb;

pub mod preview_app;
pub mod terminal;

/// The binary under test.
pub fn gatehouse() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    // Nothing from the developer's environment leaks into a test.
    for (key, _) in std::env::vars() {
        if key.starts_with("GATEHOUSE_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command
}

/// The rate limits of every test server (per minute), unless a test sets its own: far above what any test sends.
pub const TEST_RATE_LIMIT: &str = "1000000";

/// A running `gatehouse serve`.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub logs: mpsc::Receiver<String>,
    /// Where the server's local control plane keeps workspaces (their agents are ended when the server is
    /// dropped, unless it was killed: a crash leaves them for the next server to adopt).
    pub workspaces_dir: std::path::PathBuf,
    leave_workspaces: bool,
}

impl Server {
    /// Starts `serve` on a free port against `db`, with extra environment, and waits until it listens.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        let mut command = gatehouse();
        command
            .arg("serve")
            .env("GATEHOUSE_DATABASE_URL", &db.url)
            .env("GATEHOUSE_DATA_DIR", &db.data_dir)
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_LOG_FORMAT", "json")
            .env(
                "GATEHOUSE_LOG",
                std::env::var("GATEHOUSE_TEST_SERVER_LOG").unwrap_or_else(|_| "info,sqlx=warn,api=debug".into()),
            )
            // Tests send hundreds of requests with one token, and floods of bad tokens from one address: the limits
            // are on (every request is checked) but out of reach. tests/limits.rs sets low ones through `env`.
            .env("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", TEST_RATE_LIMIT)
            .env("GATEHOUSE_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", TEST_RATE_LIMIT)
            .env("GATEHOUSE_RATE_LIMIT_LAUNCH_PER_MINUTE", TEST_RATE_LIMIT)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // An empty value removes a variable the harness sets (e.g. the pinned API limit, to follow the portal's).
        for (key, value) in env {
            if value.is_empty() {
                command.env_remove(key);
            } else {
                command.env(key, value);
            }
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines, logs) = mpsc::channel();
        let live = std::env::var("GATEHOUSE_TEST_LOG_LINES").is_ok_and(|value| value == "live");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if live {
                    eprintln!("gatehouse: {line}");
                }
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let Ok(line) = logs.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) else {
                let exit = child.try_wait();
                // Not left running after the test (a log filter that hides `listening`, a slow start).
                let _ = child.kill();
                let _ = child.wait();
                panic!("gatehouse did not start listening; exit: {exit:?}");
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if event["message"] == "listening" {
                let port = event["port"].as_u64().unwrap();
                let server = Server {
                    child,
                    base: format!("http://127.0.0.1:{port}"),
                    logs,
                    workspaces_dir: db.data_dir.join("workspaces"),
                    leave_workspaces: false,
                };
                server.wait_ready(deadline);
                return server;
            }
        }
    }

    /// Waits until `/readyz` answers 200, as a load balancer would before sending traffic.
    fn wait_ready(&self, deadline: std::time::Instant) {
        let url = self.url("/readyz");
        loop {
            let ready = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
                .output()
                .map(|output| output.stdout == b"200")
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "gatehouse never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.send_sigterm();
        self.wait(Duration::from_secs(30))
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
    }

    /// Kills the process at once (SIGKILL), as a crash would. Its workspaces' agents keep running.
    pub fn kill(mut self) {
        self.leave_workspaces = true;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "gatehouse did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log line printed so far.
    pub fn drain_logs(&self) -> Vec<String> {
        self.logs.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The server's own account of a failed test.
            eprintln!("gatehouse exit status: {:?}", self.child.try_wait());
            // The last 40 lines, or all of them with GATEHOUSE_TEST_LOG_LINES=all (or another count; `live` prints
            // each line as it comes).
            let keep = match std::env::var("GATEHOUSE_TEST_LOG_LINES").as_deref() {
                Ok("all") => usize::MAX,
                Ok(count) => count.parse().unwrap_or(40),
                Err(_) => 40,
            };
            for line in self.logs.try_iter().collect::<Vec<_>>().iter().rev().take(keep).rev() {
                eprintln!("gatehouse: {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.leave_workspaces {
            end_workspace_agents(&self.workspaces_dir);
        }
    }
}

/// The process ids of the agents the local control plane recorded running under `dir`.
pub fn workspace_agent_pids(dir: &std::path::Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir.join(".run")) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".json"))
        .filter(|entry| !entry.file_name().to_string_lossy().ends_with(".tags.json"))
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(&raw).ok())
        .filter_map(|record| record["pid"].as_i64().and_then(|pid| i32::try_from(pid).ok()))
        .collect()
}

/// Ends the agents (and their dev servers) a test's server started: a test leaves no process behind.
pub fn end_workspace_agents(dir: &std::path::Path) {
    for pid in workspace_agent_pids(dir) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    // And whatever else carries a workspace's mark (dev servers run in process groups of their own).
    let Ok(entries) = std::fs::read_dir(dir.join(".run")) else { return };
    let ids: std::collections::BTreeSet<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().split('.').next().map(str::to_string))
        .filter(|id| id.starts_with("ws-"))
        .collect();
    for id in ids {
        for pid in workspace_processes(&id) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether process `pid` is gone or a zombie.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Live processes (but this one) whose environment says they belong to workspace `id` (`WORKSPACE_ID=<id>`).
pub fn workspace_processes(id: &str) -> Vec<i32> {
    let mark = format!("WORKSPACE_ID={id}");
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|entry| entry == mark.as_bytes()))
                && !zombie(*pid)
        })
        .collect()
}

/// Every `gatehouse agent --workspace ID` process alive on this machine, by workspace (from `/proc`).
pub fn agent_processes(workspace: &str) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let arguments: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if !zombie(pid)
            && arguments.iter().any(|argument| *argument == b"agent")
            && arguments.windows(2).any(|pair| pair[0] == b"--workspace" && pair[1] == workspace.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// A git repository at `dir` (branch `main`) holding `files`, committed: a blueprint's source.
pub fn git_repository(dir: &std::path::Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args([
                "-c",
                "user.email=blueprints@example.com",
                "-c",
                "user.name=Blueprints",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    git(&["init", "-q"]);
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "The blueprint"]);
    dir.to_path_buf()
}

/// Registers and enables a local blueprint whose source is `repository` (an admin's `token`).
pub async fn enabled_blueprint(api: &Api, token: &str, key: &str, repository: &std::path::Path, dev: Option<&str>) {
    let mut source =
        serde_json::json!({"kind": "local", "repository": repository.display().to_string(), "branch": "main"});
    if let Some(dev) = dev {
        source["dev_command"] = serde_json::json!(dev);
    }
    let body = serde_json::json!({"key": key, "display_name": format!("The {key} blueprint"), "source": source});
    let (status, _, created) = api.call(reqwest::Method::POST, "/api/v1/blueprints", Some(token), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let state = serde_json::json!({"state": "enabled"});
    let path = format!("/api/v1/blueprints/{key}/state");
    let (status, _, body) = api.call(reqwest::Method::PUT, &path, Some(token), Some(state)).await;
    assert_eq!(status, 204, "{body}");
}

/// Launches a workspace (`token`'s) from `blueprint` and waits until it runs; its id.
pub async fn launch_running(api: &Api, token: &str, blueprint: &str, name: &str) -> String {
    let body = serde_json::json!({"blueprint_key": blueprint, "name": name});
    let (status, _, created) = api.call(reqwest::Method::POST, "/api/v1/workspaces", Some(token), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    wait_for_status(api, token, &id, "running").await;
    id
}

/// Waits (up to 60 s) until the workspace has `status`; its last view.
pub async fn wait_for_status(api: &Api, token: &str, id: &str, status: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (code, view) = api.get(&format!("/api/v1/workspaces/{id}"), Some(token)).await;
        assert_eq!(code, 200, "{view}");
        if view["status"] == status {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "workspace {id} never became {status}: {view}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Prints a local-issuer token for `email` with `role` (making them a member with that role), as a user would.
pub fn issue_token(db: &TestDb, email: &str, role: &str, ttl: &str) -> String {
    let output = gatehouse()
        .args(["token", "issue", "--email", email, "--role", role, "--ttl", ttl])
        .env("GATEHOUSE_DATABASE_URL", &db.url)
        .env("GATEHOUSE_DATA_DIR", &db.data_dir)
        .env("GATEHOUSE_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "token issue failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A tiny typed client for the REST API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    /// The server's workspaces directory (`<dir>/<workspace id>` holds a workspace's files).
    pub workspaces_dir: std::path::PathBuf,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Self { base: server.base.clone(), http: reqwest::Client::new(), workspaces_dir: server.workspaces_dir.clone() }
    }

    /// Changes a file in workspace `id` (a new one each call), so that it has something to publish.
    pub fn edit(&self, id: &str) -> String {
        static EDITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EDITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("change-{n}.txt");
        std::fs::write(self.workspaces_dir.join(id).join(&name), format!("change {n}\n")).unwrap();
        name
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, headers, json)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let (status, _, body) = self.call(reqwest::Method::GET, path, token, None).await;
        (status, body)
    }

    pub async fn invite(&self, token: &str, email: &str, role: &str) -> (u16, serde_json::Value) {
        let body = serde_json::json!({ "email": email, "role": role });
        let (status, _, body) = self.call(reqwest::Method::POST, "/api/v1/members", Some(token), Some(body)).await;
        (status, body)
    }

    /// Emails of every member, through the API (follows pagination).
    pub async fn member_emails(&self, token: &str) -> Vec<(String, String, String)> {
        let mut after = String::new();
        let mut all = Vec::new();
        loop {
            let (status, page) = self.get(&format!("/api/v1/members?limit=100&after={after}"), Some(token)).await;
            assert_eq!(status, 200, "{page}");
            for item in page["items"].as_array().unwrap() {
                all.push((
                    item["email"].as_str().unwrap().to_string(),
                    item["role"].as_str().unwrap().to_string(),
                    item["status"].as_str().unwrap().to_string(),
                ));
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_string(),
                None => return all,
            }
        }
    }
}

/// A call with an optional `If-Match`: (status, ETag, body).
pub async fn send(
    api: &Api,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
    if_match: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut request = api.http.request(method, format!("{}{path}", api.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(version) = if_match {
        request = request.header("If-Match", version);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response.headers().get("etag").map(|value| value.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, etag, body)
}

/// Pids of the direct children of `pid` (over all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(text.split_whitespace().filter_map(|raw| raw.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// A process's resident memory (`VmRSS` in `/proc/PID/status`), in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Real workspaces for tests that need some: a blueprint repository on disk, the enabled blueprints `web` and `api`
/// made from it, a running limit out of reach, and one running workspace per (caller, name), launched on first use.
pub struct Workspaces {
    api: Api,
    _repository: tempfile::TempDir,
    made: tokio::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

impl Workspaces {
    /// Sets up the blueprints as the admin `admin`.
    pub async fn new(api: &Api, admin: &str) -> Self {
        let repository = tempfile::tempdir().unwrap();
        let path = git_repository(&repository.path().join("blueprint"), &[("README.md", "# The blueprint\n")]);
        enabled_blueprint(api, admin, "web", &path, None).await;
        enabled_blueprint(api, admin, "api", &path, None).await;
        let limits = serde_json::json!({
            "running_workspaces_per_user": 1000, "launches_per_minute": 10000, "api_requests_per_minute": 1000000,
        });
        let (status, _, body) =
            api.call(reqwest::Method::PUT, "/api/v1/portal/limits", Some(admin), Some(limits)).await;
        assert!(status == 200 || status == 204, "{status}: {body}");
        Self { api: api.clone(), _repository: repository, made: Default::default() }
    }

    /// The id of `token`'s running workspace `name` (from `blueprint`), launched if it is new.
    pub async fn running(&self, token: &str, name: &str, blueprint: &str) -> String {
        let key = (token.to_string(), name.to_string());
        if let Some(id) = self.made.lock().await.get(&key) {
            return id.clone();
        }
        let id = launch_running(&self.api, token, blueprint, name).await;
        self.made.lock().await.insert(key, id.clone());
        id
    }
}
