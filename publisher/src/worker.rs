//! The publisher's loop and its two steps.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use domain::org::{GitProviderKind, Org, ORG_ID};
use domain::publishing::{
    DeliveryStage, NextStep, Publishing, PublishingCommand, PublishingError, Request, RequestId, RetryPolicy,
    PUBLISHING_ID,
};
use domain::workspace::Workspaces;
use relay::gateway::Gateway;
use relay::hub::TaskError;
use relay::task::{FailureKind, GitCredential, GitTask, TaskOutcome};
use store::{AggregateRepository, CommandError, EventMetadata};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::provider::{NewPullRequest, Provider, ProviderError};

/// Opens the organisation's Git credential (`git_token`) for one push or provider call.
#[async_trait]
pub trait GitTokenSource: Send + Sync + 'static {
    /// The token (`None`: not set), or why it cannot be opened.
    async fn open(&self) -> Result<Option<Zeroizing<String>>, String>;
}

/// How the publisher runs (settings `publish_*`).
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// How often deliveries are checked when nothing wakes the publisher.
    pub interval: Duration,
    /// The prefix of pushed branches ([`branch_name`]).
    pub branch_prefix: String,
    /// How long a push may take, in seconds.
    pub push_timeout_secs: u64,
    /// How long a provider call may take.
    pub provider_timeout: Duration,
    /// Automatic retries of transient failures.
    pub retry: RetryPolicy,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            branch_prefix: "gatehouse/publish/".into(),
            push_timeout_secs: 300,
            provider_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// The branch a request's commit is pushed to: the prefix (default `gatehouse/publish/`) and the request's id.
pub fn branch_name(prefix: &str, request_id: &RequestId) -> String {
    format!("{prefix}{request_id}")
}

/// Wakes the publisher (after an approval or a retry).
#[derive(Debug, Clone)]
pub struct PublisherHandle {
    wake: Arc<Notify>,
}

impl PublisherHandle {
    /// A handle no publisher listens to (a tool serving a subset of the API).
    pub fn detached() -> Self {
        Self { wake: Arc::new(Notify::new()) }
    }

    /// Checks deliveries now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Delivers approved publish requests.
pub struct Publisher {
    publishing: Arc<AggregateRepository<Publishing>>,
    workspaces: Arc<AggregateRepository<Workspaces>>,
    org: Arc<AggregateRepository<Org>>,
    gateway: Arc<Gateway>,
    token: Arc<dyn GitTokenSource>,
    config: PublisherConfig,
    wake: Arc<Notify>,
    busy: Mutex<HashSet<RequestId>>,
}

/// A step's failure, before it is recorded.
struct Failed {
    reason: String,
    retryable: bool,
}

impl Failed {
    fn new(reason: impl Into<String>, retryable: bool) -> Self {
        Self { reason: reason.into(), retryable }
    }
}

impl Publisher {
    /// A publisher over the aggregates, the relay's agents and the organisation's Git credential.
    pub fn new(
        publishing: Arc<AggregateRepository<Publishing>>,
        workspaces: Arc<AggregateRepository<Workspaces>>,
        org: Arc<AggregateRepository<Org>>,
        gateway: Arc<Gateway>,
        token: Arc<dyn GitTokenSource>,
        config: PublisherConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            publishing,
            workspaces,
            org,
            gateway,
            token,
            config,
            wake: Arc::new(Notify::new()),
            busy: Mutex::new(HashSet::new()),
        })
    }

    /// Its handle.
    pub fn handle(&self) -> PublisherHandle {
        PublisherHandle { wake: self.wake.clone() }
    }

    /// Checks deliveries until `shutdown`, when woken and at least every interval (and when a backoff ends).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = match self.tick().await {
                Some(until) => until.min(self.config.interval),
                None => self.config.interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Starts every step that is due; how long until the next backoff ends, if one waits.
    async fn tick(self: &Arc<Self>) -> Option<Duration> {
        let publishing = match self.publishing.load(PUBLISHING_ID).await {
            Ok((publishing, _)) => publishing,
            Err(error) => {
                tracing::warn!(%error, "publisher: cannot read the publishing state");
                return None;
            }
        };
        let now = Utc::now();
        let (due, wake_at) = publishing.deliveries_due(now, &self.config.retry);
        for (request_id, step) in due {
            let Ok(mut busy) = self.busy.lock() else { continue };
            if !busy.insert(request_id.clone()) {
                continue;
            }
            drop(busy);
            let publisher = self.clone();
            tokio::spawn(async move {
                publisher.step(&request_id, step).await;
                if let Ok(mut busy) = publisher.busy.lock() {
                    busy.remove(&request_id);
                }
                publisher.wake.notify_one();
            });
        }
        wake_at.map(|at| (at - now).to_std().unwrap_or_default().max(Duration::from_millis(50)))
    }

    /// Takes one step of one delivery and records its outcome.
    pub async fn step(&self, request_id: &RequestId, step: NextStep) {
        let request = match self.publishing.load(PUBLISHING_ID).await {
            Ok((publishing, _)) => publishing.request(request_id).cloned(),
            Err(error) => {
                tracing::warn!(%error, "publisher: cannot read the publishing state");
                return;
            }
        };
        let Some(request) = request else { return };
        let round = request.delivery.as_ref().map_or(0, |delivery| delivery.round);
        let (stage, outcome) = match step {
            NextStep::Push => (DeliveryStage::Push, self.push(request_id, &request).await),
            NextStep::OpenPullRequest => {
                (DeliveryStage::PullRequest, self.open_pull_request(request_id, &request).await)
            }
        };
        let command = match outcome {
            Ok(command) => command,
            Err(Failed { reason, retryable }) => {
                tracing::info!(request = %request_id, stage = stage.as_str(), retryable, reason, "publish step failed");
                PublishingCommand::RecordFailure {
                    request_id: request_id.clone(),
                    stage,
                    reason,
                    retryable,
                    now: Utc::now(),
                    round,
                }
            }
        };
        let metadata = EventMetadata::system("publisher");
        match self.publishing.execute_retrying(PUBLISHING_ID, command, &metadata, 10).await {
            Ok(_) => {}
            // Someone recorded the step meanwhile (another gateway, an admin): the next tick sees where it stands.
            Err(CommandError::Rejected(PublishingError::WrongDeliveryStep { .. })) => {}
            Err(error) => tracing::warn!(%error, request = %request_id, "publisher: cannot record a step"),
        }
    }

    /// The workspace's source (repository URL, blueprint branch), from its owner's aggregate.
    async fn source(&self, request: &Request) -> Result<(String, String), Failed> {
        let (workspaces, _) = self
            .workspaces
            .load(request.builder.as_str())
            .await
            .map_err(|error| Failed::new(format!("the store: {error}"), true))?;
        let workspace = workspaces
            .get(request.workspace_id.as_str())
            .ok_or_else(|| Failed::new("the workspace no longer exists: its commit cannot be pushed", false))?;
        Ok((workspace.spec.repository().as_str().to_string(), workspace.spec.branch().as_str().to_string()))
    }

    async fn provider_settings(&self) -> Result<(GitProviderKind, Option<String>), Failed> {
        let (org, _) = self.org.load(ORG_ID).await.map_err(|error| Failed::new(format!("the store: {error}"), true))?;
        let git = org.profile().map(|profile| profile.git.clone()).unwrap_or_default();
        Ok((git.kind, git.base_url.map(|url| url.as_str().to_string())))
    }

    async fn token(&self) -> Result<Option<Zeroizing<String>>, Failed> {
        self.token.open().await.map_err(|reason| Failed::new(reason, false))
    }

    async fn push(&self, request_id: &RequestId, request: &Request) -> Result<PublishingCommand, Failed> {
        let (remote, _) = self.source(request).await?;
        let (kind, _) = self.provider_settings().await?;
        let username = match kind {
            GitProviderKind::Github => "x-access-token",
            GitProviderKind::Gitlab => "oauth2",
            GitProviderKind::Local => "gatehouse",
        };
        let credential = match self.token().await? {
            Some(password) => Some(GitCredential { username: username.into(), password }),
            None if kind != GitProviderKind::Local => {
                return Err(Failed::new(
                    format!(
                        "the organisation's git_token is not set (PUT /api/v1/org/credentials/git_token): {} needs it",
                        kind.as_str()
                    ),
                    false,
                ))
            }
            None => None,
        };
        let agent = self.gateway.hub.get(request.workspace_id.as_str()).ok_or_else(|| {
            Failed::new("the workspace's agent is not connected to this gateway (is the workspace running?)", true)
        })?;
        let branch = branch_name(&self.config.branch_prefix, request_id);
        let task = GitTask::Push {
            remote: remote.clone(),
            commit: request.commit_id.to_string(),
            branch: branch.clone(),
            credential,
            timeout_secs: self.config.push_timeout_secs,
        };
        match agent.run_task(&task).await {
            Ok(TaskOutcome::Pushed { .. }) => Ok(PublishingCommand::RecordPushed {
                request_id: request_id.clone(),
                remote: domain::blueprint::redact_url(&remote),
                branch,
                pull_request: kind != GitProviderKind::Local,
            }),
            Ok(TaskOutcome::Failed { kind, message }) => {
                let what = match kind {
                    FailureKind::AuthenticationFailed => "the remote refused the credential",
                    FailureKind::PushRejected => "the remote refused the push",
                    FailureKind::Unreachable => "the remote cannot be reached",
                    FailureKind::Timeout => "the push took too long",
                    _ => "the push failed",
                };
                Err(Failed::new(format!("{what}: {message}"), kind.transient()))
            }
            Ok(other) => Err(Failed::new(format!("the agent answered a push with {other:?}"), false)),
            Err(error @ (TaskError::AgentLost | TaskError::Timeout)) => Err(Failed::new(error.to_string(), true)),
            Err(error) => Err(Failed::new(error.to_string(), false)),
        }
    }

    async fn open_pull_request(&self, request_id: &RequestId, request: &Request) -> Result<PublishingCommand, Failed> {
        let (remote, base) = self.source(request).await?;
        let (kind, base_url) = self.provider_settings().await?;
        let token = self.token().await?.ok_or_else(|| {
            Failed::new("the organisation's git_token is not set (PUT /api/v1/org/credentials/git_token)", false)
        })?;
        let provider = Provider::new(kind, base_url.as_deref(), &remote, token, self.config.provider_timeout)
            .map_err(|error| Failed::new(error.to_string(), false))?
            .ok_or_else(|| Failed::new("the organisation's Git provider is local: it has no pull requests", false))?;
        let branch = request
            .delivery
            .as_ref()
            .and_then(|delivery| delivery.pushed.as_ref())
            .map(|pushed| pushed.branch.clone())
            .unwrap_or_else(|| branch_name(&self.config.branch_prefix, request_id));
        let recorded = |pull: crate::provider::PullRequest| PublishingCommand::RecordPullRequest {
            request_id: request_id.clone(),
            url: pull.url,
            number: pull.number,
        };
        let failed = |error: ProviderError| match error {
            ProviderError::Transient(reason) => Failed::new(reason, true),
            ProviderError::Permanent(reason) => Failed::new(reason, false),
            ProviderError::AlreadyExists => Failed::new("the provider says a pull request exists but lists none", true),
        };
        if let Some(existing) = provider.find(&branch).await.map_err(failed)? {
            return Ok(recorded(existing));
        }
        let title = request.message.lines().next().unwrap_or("Publish").chars().take(200).collect::<String>();
        let body = format!(
            "{}\n\n---\nPublished from workspace `{}` by {} through Gatehouse (publish request `{request_id}`, commit \
             {}).",
            request.message, request.workspace_id, request.builder, request.commit_id
        );
        let new = NewPullRequest { head: &branch, base: &base, title: &title, body: &body };
        match provider.open(&new).await {
            Ok(pull) => Ok(recorded(pull)),
            Err(ProviderError::AlreadyExists) => match provider.find(&branch).await.map_err(failed)? {
                Some(existing) => Ok(recorded(existing)),
                None => Err(failed(ProviderError::AlreadyExists)),
            },
            Err(error) => Err(failed(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_named_from_the_request() {
        let id = RequestId::parse("3f2c").unwrap_or_else(|_| unreachable!());
        let branch = branch_name("gatehouse/publish/", &id);
        assert_eq!(branch, "gatehouse/publish/3f2c");
        assert!(relay::git::valid_branch(&branch));
    }
}
