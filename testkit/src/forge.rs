//! Fake GitHub and GitLab pull-request APIs on loopback, strict about what the public API references document.
//!
//! [`ForgeServer::github`] serves `POST` and `GET /repos/{owner}/{repo}/pulls` at the root (as `api.github.com`)
//! and under `/api/v3` (as GitHub Enterprise Server). [`ForgeServer::gitlab`] serves `POST` and `GET
//! /api/v4/projects/:id/merge_requests`, where `:id` is the numeric id or the URL-encoded path
//! (`group%2Fsub%2Frepo`; matched on the raw path, so an unencoded path is a 404 as on GitLab). Either keeps
//! the pull requests it creates, numbered 1, 2, … per repository, and refuses a second open one for the same
//! branches with the provider's own status and body. See `github.rs` and `gitlab.rs` for what each enforces.
//!
//! The test's controls ([`ForgeServer::set_down`], [`ForgeServer::lose_next_create_answer`],
//! [`ForgeServer::answer_garbage_next`], …) act at once on the running server. Every request is recorded, in
//! order, whatever was answered.

mod github;
mod gitlab;
#[cfg(test)]
mod tests;

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::serve::{respond, Body, Hangup, Outcome, Server};

/// Which provider a [`ForgeServer`] imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// GitHub's REST API (pull requests).
    GitHub,
    /// GitLab's REST API v4 (merge requests).
    GitLab,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The raw path and query, e.g. `/api/v4/projects/acme%2Fweb/merge_requests?state=opened`.
    pub path: String,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body as text (lossily decoded).
    pub body: String,
}

impl SeenRequest {
    /// The first value of the header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(header, _)| *header == name).map(|(_, value)| value.as_str())
    }
}

/// A pull request (GitHub) or merge request (GitLab) the fake created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// The repository (`owner/repo`) or project path (`group/sub/repo`), spelled as given at start.
    pub repo: String,
    /// The number (GitHub) or `iid` (GitLab): 1, 2, … per repository.
    pub number: u64,
    /// The web address (`html_url`, `web_url`).
    pub url: String,
    /// The head (source) branch name, without any `owner:`.
    pub head: String,
    /// The base (target) branch.
    pub base: String,
    /// The title.
    pub title: String,
    /// The body (description), if one was sent.
    pub body: Option<String>,
    /// Whether it is a draft (GitHub's `draft`, GitLab's `Draft:` title prefix).
    pub draft: bool,
    /// Open (or "opened"), until [`ForgeServer::close_pull`].
    pub open: bool,
    /// The head commit: the branch's commit when a git root is set, a stable made-up id otherwise.
    pub sha: String,
}

/// A fake provider API on `127.0.0.1`; stops when dropped.
pub struct ForgeServer {
    server: Server,
    shared: Arc<Shared>,
}

struct Shared {
    flavor: Flavor,
    /// `http://127.0.0.1:PORT`, known once listening.
    base: OnceLock<String>,
    state: Mutex<State>,
}

struct State {
    token: String,
    repos: Vec<Repo>,
    pulls: Vec<Record>,
    requests: Vec<SeenRequest>,
    git_root: Option<PathBuf>,
    down: bool,
    lose_next_create_answer: bool,
    garbage_next: bool,
    next_id: u64,
}

struct Repo {
    path: String,
    id: u64,
    next_number: u64,
}

/// A pull request with what only the JSON shows.
struct Record {
    pull: Pull,
    id: u64,
    base_sha: String,
    created_at: chrono::DateTime<chrono::Utc>,
    /// GitHub's `maintainer_can_modify`, GitLab's `squash`.
    flag: bool,
    /// GitLab's `remove_source_branch`.
    remove_source_branch: bool,
}

/// What a flavour's handler made of a request.
struct Reply {
    /// The request was a create (whatever its outcome): the one a lost answer applies to.
    create: bool,
    response: Response<Body>,
}

impl ForgeServer {
    /// A GitHub-shaped API knowing the repositories `repos` (`owner/repo`) and accepting `token`.
    pub fn github(token: &str, repos: &[&str]) -> Self {
        Self::start(Flavor::GitHub, token, repos)
    }

    /// A GitLab-shaped API knowing the projects `projects` (`group/sub/repo`, ids 1, 2, … in this order) and
    /// accepting `token`.
    pub fn gitlab(token: &str, projects: &[&str]) -> Self {
        Self::start(Flavor::GitLab, token, projects)
    }

    fn start(flavor: Flavor, token: &str, repos: &[&str]) -> Self {
        let repos = (1..)
            .zip(repos)
            .map(|(id, path)| Repo { path: path.trim_matches('/').to_string(), id, next_number: 1 })
            .collect();
        let shared = Arc::new(Shared {
            flavor,
            base: OnceLock::new(),
            state: Mutex::new(State {
                token: token.to_string(),
                repos,
                pulls: Vec::new(),
                requests: Vec::new(),
                git_root: None,
                down: false,
                lose_next_create_answer: false,
                garbage_next: false,
                next_id: 1001,
            }),
        });
        let handler_shared = shared.clone();
        let server = Server::start("forge", move |request| handle(handler_shared.clone(), request));
        let _ = shared.base.set(server.base());
        Self { server, shared }
    }

    /// Looks branches up in the bare repositories under `root` (`ROOT/{repo}.git`, as [`crate::git_http`]
    /// serves them): a pull request's `sha` is then its head branch's commit, and GitHub refuses a head or base
    /// branch that does not exist (422 `invalid`), as the real one does.
    pub fn with_git_root(self, root: &Path) -> Self {
        self.shared.state.lock().unwrap().git_root = Some(root.to_path_buf());
        self
    }

    /// Which provider this imitates.
    pub fn flavor(&self) -> Flavor {
        self.shared.flavor
    }

    /// The web root, `http://127.0.0.1:PORT` (where `html_url` and `web_url` point).
    pub fn base(&self) -> String {
        self.server.base()
    }

    /// What a client configures as the provider's API base URL: the root for GitHub (as
    /// `https://api.github.com`; `{base}/api/v3` works too, as on GitHub Enterprise), `{base}/api/v4` for GitLab.
    pub fn api_base(&self) -> String {
        match self.shared.flavor {
            Flavor::GitHub => self.base(),
            Flavor::GitLab => format!("{}/api/v4", self.base()),
        }
    }

    /// The numeric id of a repository or project (1, 2, … in the order given at start).
    pub fn project_id(&self, repo: &str) -> Option<u64> {
        let state = self.shared.state.lock().unwrap();
        state.repos.iter().find(|known| known.path.eq_ignore_ascii_case(repo)).map(|known| known.id)
    }

    /// Accepts `token` from now on (and no longer the previous one).
    pub fn set_token(&self, token: &str) {
        self.shared.state.lock().unwrap().token = token.to_string();
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Every pull request created so far, in order.
    pub fn pulls(&self) -> Vec<Pull> {
        self.shared.state.lock().unwrap().pulls.iter().map(|record| record.pull.clone()).collect()
    }

    /// Closes pull request `number` of `repo` (as someone on the web would); false if there is none.
    pub fn close_pull(&self, repo: &str, number: u64) -> bool {
        let mut state = self.shared.state.lock().unwrap();
        let found = state.pulls.iter_mut().find(|record| {
            record.pull.repo.eq_ignore_ascii_case(repo.trim_matches('/')) && record.pull.number == number
        });
        found.map(|record| record.pull.open = false).is_some()
    }

    /// The next create request is carried out as usual (a pull request may be created), but its connection is
    /// then closed without an answer: a lost answer.
    pub fn lose_next_create_answer(&self) {
        self.shared.state.lock().unwrap().lose_next_create_answer = true;
    }

    /// While `down`, every request gets `503` with an HTML page (a provider outage) and changes nothing.
    pub fn set_down(&self, down: bool) {
        self.shared.state.lock().unwrap().down = down;
    }

    /// The next request gets `200` with an HTML body instead of JSON (a proxy or captive portal answering for
    /// the provider) and is not carried out.
    pub fn answer_garbage_next(&self) {
        self.shared.state.lock().unwrap().garbage_next = true;
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Outcome {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    let seen = SeenRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path_and_query().map_or("/", |path| path.as_str()).to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let (down, garbage) = {
        let mut state = shared.state.lock().unwrap();
        state.requests.push(seen.clone());
        (state.down, !state.down && std::mem::take(&mut state.garbage_next))
    };
    if down {
        let page = "<html><head><title>503 Service Unavailable</title></head><body><h1>503 Service Unavailable</h1>\
                    No server is available to handle this request.</body></html>\n";
        return Ok(respond(StatusCode::SERVICE_UNAVAILABLE, "text/html", page));
    }
    if garbage {
        return Ok(respond(StatusCode::OK, "text/html", "<html>oops</html>"));
    }
    let reply = match shared.flavor {
        Flavor::GitHub => github::handle(&shared, &seen).await,
        Flavor::GitLab => gitlab::handle(&shared, &seen).await,
    };
    if reply.create && std::mem::take(&mut shared.state.lock().unwrap().lose_next_create_answer) {
        return Err(Hangup);
    }
    Ok(reply.response)
}

impl Shared {
    fn base(&self) -> &str {
        self.base.get().map_or("", String::as_str)
    }
}

/// The path without its query, and the query's pairs.
fn split_query(path: &str) -> (&str, Vec<(String, String)>) {
    match path.split_once('?') {
        Some((path, query)) => (path, serde_urlencoded::from_str(query).unwrap_or_default()),
        None => (path, Vec::new()),
    }
}

/// The first value of `name` among query or form pairs.
fn pair<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// `page` and `per_page` applied to a list (`per_page` at most 100, as both providers cap it).
fn paginate<T>(items: Vec<T>, pairs: &[(String, String)], default_per_page: usize) -> Vec<T> {
    let number = |name: &str| pair(pairs, name).and_then(|value| value.parse::<usize>().ok()).filter(|n| *n > 0);
    let per_page = number("per_page").unwrap_or(default_per_page).min(100);
    let page = number("page").unwrap_or(1);
    items.into_iter().skip((page - 1).saturating_mul(per_page)).take(per_page).collect()
}

/// The commit of `branch` in `ROOT/{repo}.git`, `None` if there is no such branch; a stable made-up id when no
/// git root is set.
async fn branch_sha(root: Option<&Path>, repo: &str, branch: &str) -> Option<String> {
    let Some(root) = root else {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (repo, branch).hash(&mut hasher);
        let seed = hasher.finish();
        return Some(format!(
            "{seed:016x}{:016x}{:08x}",
            seed.rotate_left(17) ^ 0x5bd1_e995,
            seed as u32 ^ 0xdead_beef
        ));
    };
    let output = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(root.join(format!("{repo}.git")))
        .args(["rev-parse", "--verify", "-q", &format!("refs/heads/{branch}^{{commit}}")])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .await
        .ok()?;
    let sha = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !sha.is_empty()).then_some(sha)
}
