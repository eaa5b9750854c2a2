//! Git providers' pull-request APIs: GitHub (`POST /repos/{owner}/{repo}/pulls`) and GitLab
//! (`POST /projects/:id/merge_requests`), over their public REST APIs with `reqwest`. The API base URL is the
//! organisation's setting (GitHub Enterprise: `https://HOST/api/v3`; self-managed GitLab: `https://HOST/api/v4`).
//!
//! Opening is made safe to repeat by looking first: [`Provider::find`] lists the repository's pull requests whose
//! head is the branch (in any state), and only when none exists is one opened; an "already exists" answer (GitHub's
//! 422, GitLab's 409: a concurrent attempt, or a lost answer) is followed by another look.

use std::time::Duration;

use domain::org::GitProviderKind;
use reqwest::StatusCode;
use serde::Deserialize;
use zeroize::Zeroizing;

/// The public services' API base URLs.
pub const GITHUB_API: &str = "https://api.github.com";
/// See [`GITHUB_API`].
pub const GITLAB_API: &str = "https://gitlab.com/api/v4";

/// An open (or earlier) pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// Its web page.
    pub url: String,
    /// GitHub's `number`, GitLab's `iid`.
    pub number: u64,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider says one exists already for the branch.
    #[error("a pull request already exists for the branch")]
    AlreadyExists,
    /// Trying again later may succeed (the provider is down, rate-limited, or answered garbage).
    #[error("{0}")]
    Transient(String),
    /// Someone must change something first (the token, the repository, the settings).
    #[error("{0}")]
    Permanent(String),
}

/// What to open.
#[derive(Debug, Clone)]
pub struct NewPullRequest<'a> {
    /// The branch pushed.
    pub head: &'a str,
    /// The branch it is to be merged into (the blueprint's).
    pub base: &'a str,
    /// One line.
    pub title: &'a str,
    /// The description.
    pub body: &'a str,
}

/// A provider client for one repository.
pub struct Provider {
    kind: GitProviderKind,
    api: String,
    /// GitHub's `owner/repo`, GitLab's `group/…/project`.
    repository: String,
    token: Zeroizing<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Provider")
            .field("kind", &self.kind.as_str())
            .field("api", &self.api)
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// A client of `kind`'s API at `base_url` (the public service's when `None`) for the repository at
    /// `repository_url` (the blueprint's source), authenticating with `token`. `None` for the `local` provider.
    pub fn new(
        kind: GitProviderKind,
        base_url: Option<&str>,
        repository_url: &str,
        token: Zeroizing<String>,
        timeout: Duration,
    ) -> Result<Option<Self>, ProviderError> {
        let api = match kind {
            GitProviderKind::Local => return Ok(None),
            GitProviderKind::Github => base_url.unwrap_or(GITHUB_API),
            GitProviderKind::Gitlab => base_url.unwrap_or(GITLAB_API),
        };
        let repository = repository_path(repository_url).ok_or_else(|| {
            ProviderError::Permanent(format!(
                "the blueprint's repository is not a {} repository URL (https://HOST/OWNER/REPO or git@HOST:OWNER/REPO)",
                kind.as_str()
            ))
        })?;
        if kind == GitProviderKind::Github && repository.split('/').count() != 2 {
            return Err(ProviderError::Permanent(format!("a GitHub repository is OWNER/REPO, not {repository:?}")));
        }
        if token.is_empty() || token.bytes().any(|byte| byte.is_ascii_control() || byte == b' ') {
            return Err(ProviderError::Permanent(
                "the organisation's git_token is empty or holds spaces or control characters".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .build()
            .map_err(|error| ProviderError::Permanent(format!("cannot make an HTTP client: {error}")))?;
        Ok(Some(Self { kind, api: api.trim_end_matches('/').to_string(), repository, token, http }))
    }

    /// The pull request whose head is `branch`, if one exists (open, closed or merged).
    pub async fn find(&self, branch: &str) -> Result<Option<PullRequest>, ProviderError> {
        self.find_unscrubbed(branch).await.map_err(|error| self.scrub(error))
    }

    /// Opens a pull request.
    pub async fn open(&self, new: &NewPullRequest<'_>) -> Result<PullRequest, ProviderError> {
        self.open_unscrubbed(new).await.map_err(|error| self.scrub(error))
    }

    /// The error without the token, should the provider (or a proxy in front of it) have echoed it back.
    fn scrub(&self, error: ProviderError) -> ProviderError {
        let clean = |reason: String| reason.replace(self.token.as_str(), "[redacted]");
        match error {
            ProviderError::Transient(reason) => ProviderError::Transient(clean(reason)),
            ProviderError::Permanent(reason) => ProviderError::Permanent(clean(reason)),
            ProviderError::AlreadyExists => ProviderError::AlreadyExists,
        }
    }

    async fn find_unscrubbed(&self, branch: &str) -> Result<Option<PullRequest>, ProviderError> {
        let request = match self.kind {
            GitProviderKind::Github => {
                let owner = self.repository.split('/').next().unwrap_or_default();
                let url = format!("{}/repos/{}/pulls", self.api, self.repository);
                let head = format!("{owner}:{branch}");
                self.github(self.http.get(url)).query(&[("head", head.as_str()), ("state", "all"), ("per_page", "100")])
            }
            _ => {
                let url = format!("{}/projects/{}/merge_requests", self.api, encode_path(&self.repository));
                self.gitlab(self.http.get(url)).query(&[("source_branch", branch), ("per_page", "100")])
            }
        };
        let response = send(request).await?;
        let status = response.status();
        let text = response.text().await.map_err(|error| ProviderError::Transient(format!("reading: {error}")))?;
        if !status.is_success() {
            return Err(refusal(self.kind, status, &text));
        }
        match self.kind {
            GitProviderKind::Github => {
                let pulls: Vec<GithubPull> = parse(&text)?;
                Ok(pulls.into_iter().find(|pull| pull.head.reference == branch).map(GithubPull::into_pull_request))
            }
            _ => {
                let requests: Vec<GitlabMergeRequest> = parse(&text)?;
                Ok(requests
                    .into_iter()
                    .find(|request| request.source_branch == branch)
                    .map(GitlabMergeRequest::into_pull_request))
            }
        }
    }

    async fn open_unscrubbed(&self, new: &NewPullRequest<'_>) -> Result<PullRequest, ProviderError> {
        let request = match self.kind {
            GitProviderKind::Github => {
                let url = format!("{}/repos/{}/pulls", self.api, self.repository);
                let body =
                    serde_json::json!({"title": new.title, "head": new.head, "base": new.base, "body": new.body});
                self.github(self.http.post(url)).json(&body)
            }
            _ => {
                let url = format!("{}/projects/{}/merge_requests", self.api, encode_path(&self.repository));
                let body = serde_json::json!({
                    "source_branch": new.head, "target_branch": new.base, "title": new.title,
                    "description": new.body, "remove_source_branch": false,
                });
                self.gitlab(self.http.post(url)).json(&body)
            }
        };
        let response = send(request).await?;
        let status = response.status();
        let text = response.text().await.map_err(|error| ProviderError::Transient(format!("reading: {error}")))?;
        if status.is_success() {
            return match self.kind {
                GitProviderKind::Github => parse::<GithubPull>(&text).map(GithubPull::into_pull_request),
                _ => parse::<GitlabMergeRequest>(&text).map(GitlabMergeRequest::into_pull_request),
            };
        }
        let exists = match self.kind {
            GitProviderKind::Github => status == StatusCode::UNPROCESSABLE_ENTITY && text.contains("already exists"),
            _ => status == StatusCode::CONFLICT,
        };
        if exists {
            return Err(ProviderError::AlreadyExists);
        }
        Err(refusal(self.kind, status, &text))
    }

    fn github(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .bearer_auth(self.token.as_str())
    }

    fn gitlab(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.token.as_str())
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderError> {
    request.send().await.map_err(|error| {
        // reqwest's error names the URL (no credential is in it: the token travels in a header); its cause is in its
        // source chain, which its `Display` leaves out.
        let what = if error.is_timeout() {
            "the provider did not answer in time"
        } else if error.is_connect() {
            "the provider cannot be reached"
        } else {
            "the request to the provider failed"
        };
        let mut said = format!("{what}: {error}");
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            said.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        ProviderError::Transient(said)
    })
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ProviderError> {
    serde_json::from_str(text).map_err(|error| {
        let start: String = text.chars().take(120).collect();
        ProviderError::Transient(format!(
            "the provider answered something that is not its documented JSON ({error}): {start:?}"
        ))
    })
}

/// What a refusal means: 5xx, 429 and a rate limit's 403 pass; the rest need someone to act.
fn refusal(kind: GitProviderKind, status: StatusCode, text: &str) -> ProviderError {
    let message: String = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| value.get("message").map(|message| message.to_string()))
        .unwrap_or_else(|| text.chars().take(200).collect());
    let said = format!("{} answered {status}: {message}", kind.as_str());
    let rate_limited = status == StatusCode::FORBIDDEN && text.to_ascii_lowercase().contains("rate limit");
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || rate_limited {
        ProviderError::Transient(said)
    } else {
        ProviderError::Permanent(said)
    }
}

#[derive(Deserialize)]
struct GithubPull {
    number: u64,
    html_url: String,
    head: GithubRef,
}

#[derive(Deserialize)]
struct GithubRef {
    #[serde(rename = "ref")]
    reference: String,
}

impl GithubPull {
    fn into_pull_request(self) -> PullRequest {
        PullRequest { url: self.html_url, number: self.number }
    }
}

#[derive(Deserialize)]
struct GitlabMergeRequest {
    iid: u64,
    web_url: String,
    source_branch: String,
}

impl GitlabMergeRequest {
    fn into_pull_request(self) -> PullRequest {
        PullRequest { url: self.web_url, number: self.iid }
    }
}

/// The repository's path on its host (`owner/repo`, `group/sub/project`), from an `https://`, `http://`, `ssh://`
/// or scp-like (`git@host:owner/repo.git`) URL; `None` for a local path or anything else.
pub fn repository_path(url: &str) -> Option<String> {
    let path = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git") {
            return None;
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        rest.split_once('/')?.1
    } else {
        let (host, path) = url.split_once(':')?;
        if host.contains('/') || host.is_empty() {
            return None;
        }
        path
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let valid = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte))
    };
    (path.split('/').count() >= 2 && path.split('/').all(valid)).then(|| path.to_string())
}

/// GitLab's project id from its path: every `/` as `%2F` (the path's other characters need no escaping).
fn encode_path(path: &str) -> String {
    path.replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_paths_come_from_every_url_form() {
        assert_eq!(repository_path("https://github.com/acme/web.git").as_deref(), Some("acme/web"));
        assert_eq!(repository_path("https://ghe.example.com/acme/web").as_deref(), Some("acme/web"));
        assert_eq!(repository_path("git@github.com:acme/web.git").as_deref(), Some("acme/web"));
        assert_eq!(repository_path("ssh://git@gitlab.com/g/sub/p.git").as_deref(), Some("g/sub/p"));
        assert_eq!(repository_path("https://u:t@gitlab.example.com/g/p.git?x=1").as_deref(), Some("g/p"));
        for bad in ["/srv/git/web.git", "file:///srv/web.git", "https://github.com/web", "https://h/a/../b", "C:/x"] {
            assert_eq!(repository_path(bad), None, "{bad}");
        }
        assert_eq!(encode_path("g/sub/p"), "g%2Fsub%2Fp");
    }

    #[test]
    fn refusals_are_transient_only_when_waiting_helps() {
        let kind = GitProviderKind::Github;
        assert!(matches!(refusal(kind, StatusCode::BAD_GATEWAY, ""), ProviderError::Transient(_)));
        assert!(matches!(refusal(kind, StatusCode::TOO_MANY_REQUESTS, ""), ProviderError::Transient(_)));
        let limited = r#"{"message":"API rate limit exceeded for installation"}"#;
        assert!(matches!(refusal(kind, StatusCode::FORBIDDEN, limited), ProviderError::Transient(_)));
        let bad = refusal(kind, StatusCode::UNAUTHORIZED, r#"{"message":"Bad credentials"}"#);
        assert_eq!(bad, ProviderError::Permanent(r#"github answered 401 Unauthorized: "Bad credentials""#.into()));
    }

    #[test]
    fn tokens_of_any_length_are_accepted_and_never_shown() {
        let token = Zeroizing::new(format!("ghs_{}", "x".repeat(200)));
        let provider =
            Provider::new(GitProviderKind::Github, None, "https://github.com/acme/web", token, Duration::from_secs(5));
        let provider = provider.ok().flatten();
        assert!(provider.is_some());
        assert!(!format!("{provider:?}").contains("xxxx"));
        let spaced = Provider::new(
            GitProviderKind::Gitlab,
            None,
            "https://gitlab.com/g/p",
            Zeroizing::new("a b".into()),
            Duration::from_secs(5),
        );
        assert!(matches!(spaced, Err(ProviderError::Permanent(_))));
    }

    #[test]
    fn a_token_the_provider_echoes_back_is_scrubbed() {
        let token = Zeroizing::new("ghs_EchoedBack_0123".to_string());
        let provider =
            Provider::new(GitProviderKind::Github, None, "https://github.com/a/b", token, Duration::from_secs(5))
                .ok()
                .flatten();
        let Some(provider) = provider else { panic!("a provider") };
        let echoed = refusal(
            GitProviderKind::Github,
            StatusCode::BAD_REQUEST,
            r#"{"message":"you sent Bearer ghs_EchoedBack_0123"}"#,
        );
        let scrubbed = provider.scrub(echoed);
        assert_eq!(
            scrubbed,
            ProviderError::Permanent(r#"github answered 400 Bad Request: "you sent Bearer [redacted]""#.into())
        );
    }
}
