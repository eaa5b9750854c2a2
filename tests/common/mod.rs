//! Runs the real `gatehouse` binary as a child process and talks to it over HTTP.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use testkit::TestDb;

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
            let line = logs
                .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_else(|_| panic!("gatehouse did not start listening; exit: {:?}", child.try_wait()));
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if event["message"] == "listening" {
                let port = event["port"].as_u64().unwrap();
                let server = Server { child, base: format!("http://127.0.0.1:{port}"), logs };
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

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
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
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Self { base: server.base.clone(), http: reqwest::Client::new() }
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

/// A process's resident memory (`VmRSS` in `/proc/PID/status`), in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
