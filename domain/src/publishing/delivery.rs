//! Delivery: what happens to an approved request after the review — its commit is pushed to the blueprint's
//! repository and, with a Git provider that has them, a pull request is opened (ADR 0024).
//!
//! Each step is an event (`PublishPushed`, `PullRequestOpened`, `PublishFailed`, `PublishRetryRequested`), so the
//! next step is always decided from the log alone: after a crash the publisher picks up where the log stands, and
//! a step done twice (a push of the same commit, a pull request looked up by its branch before it is opened) has
//! the effect of doing it once.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The step of a delivery that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStage {
    /// Pushing the commit to the blueprint's repository.
    Push,
    /// Opening the pull (or merge) request.
    PullRequest,
}

impl DeliveryStage {
    /// The stable lower-case name used in read models and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStage::Push => "push",
            DeliveryStage::PullRequest => "pull_request",
        }
    }
}

/// Where the commit was pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushedTo {
    /// The remote, as it may be shown (credentials in a URL are redacted).
    pub remote: String,
    /// The branch.
    pub branch: String,
    /// Whether a pull request follows (the `local` provider has none: the branch is the result).
    pub pull_request: bool,
}

/// The pull (or merge) request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Its web page.
    pub url: String,
    /// Its number (GitHub) or project-scoped id (GitLab's `iid`).
    pub number: u64,
}

/// The last failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step.
    pub stage: DeliveryStage,
    /// What went wrong.
    pub reason: String,
    /// Whether trying again may succeed without anyone changing anything.
    pub retryable: bool,
    /// When.
    pub at: DateTime<Utc>,
}

/// Where an approved request's delivery stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Set once the commit is on the remote.
    pub pushed: Option<PushedTo>,
    /// Set once the pull request is open.
    pub pull_request: Option<PullRequest>,
    /// The last failure, until a step succeeds or an admin retries.
    pub failure: Option<Failure>,
    /// Failed attempts since the last success or retry.
    pub attempts: u32,
    /// Admins' retries so far: an attempt records its failure only in the round it started in, so an attempt
    /// still running when an admin retries does not undo the retry.
    pub round: u32,
}

/// What a delivery needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Push the commit.
    Push,
    /// Open the pull request.
    OpenPullRequest,
}

/// How automatic retries of transient failures are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Failed attempts after which only an admin's retry continues.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles with each failure.
    pub first_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 6, first_backoff: Duration::seconds(5), max_backoff: Duration::minutes(5) }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failures.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1i32 << attempts.saturating_sub(1).min(20);
        (self.first_backoff * factor).min(self.max_backoff)
    }
}

impl Delivery {
    /// `queued`, `pushed`, `pull_request_opened` or `failed`.
    pub fn status(&self) -> &'static str {
        if self.pull_request.is_some() {
            "pull_request_opened"
        } else if self.failure.is_some() {
            "failed"
        } else if self.pushed.is_some() {
            "pushed"
        } else {
            "queued"
        }
    }

    /// Whether nothing remains to be done.
    pub fn done(&self) -> bool {
        self.pull_request.is_some() || self.pushed.as_ref().is_some_and(|pushed| !pushed.pull_request)
    }

    /// The step to take at `now`, if any: none when done, or failed for good (not retryable, or out of attempts:
    /// an admin's retry continues), or waiting out its backoff ([`Delivery::due_at`] says until when).
    pub fn next_step(&self, now: DateTime<Utc>, policy: &RetryPolicy) -> Option<NextStep> {
        if self.done() {
            return None;
        }
        if let Some(due) = self.due_at(policy) {
            if now < due {
                return None;
            }
        } else if self.failure.is_some() {
            return None;
        }
        Some(if self.pushed.is_some() { NextStep::OpenPullRequest } else { NextStep::Push })
    }

    /// When a failed delivery is retried automatically (`None`: it is not failed, or is not retried).
    pub fn due_at(&self, policy: &RetryPolicy) -> Option<DateTime<Utc>> {
        let failure = self.failure.as_ref()?;
        (failure.retryable && self.attempts < policy.max_attempts).then(|| failure.at + policy.backoff(self.attempts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(retryable: bool, attempts: u32, at: DateTime<Utc>) -> Delivery {
        Delivery {
            failure: Some(Failure { stage: DeliveryStage::Push, reason: "x".into(), retryable, at }),
            attempts,
            ..Delivery::default()
        }
    }

    #[test]
    fn a_delivery_pushes_then_opens_a_pull_request_then_rests() {
        let policy = RetryPolicy::default();
        let now = Utc::now();
        let mut delivery = Delivery::default();
        assert_eq!((delivery.status(), delivery.next_step(now, &policy)), ("queued", Some(NextStep::Push)));
        delivery.pushed = Some(PushedTo { remote: "r".into(), branch: "b".into(), pull_request: true });
        assert_eq!((delivery.status(), delivery.next_step(now, &policy)), ("pushed", Some(NextStep::OpenPullRequest)));
        delivery.pull_request = Some(PullRequest { url: "u".into(), number: 1 });
        assert_eq!((delivery.status(), delivery.next_step(now, &policy)), ("pull_request_opened", None));
        let local = Delivery {
            pushed: Some(PushedTo { remote: "r".into(), branch: "b".into(), pull_request: false }),
            ..Delivery::default()
        };
        assert!(local.done());
        assert_eq!(local.next_step(now, &policy), None);
    }

    #[test]
    fn transient_failures_back_off_and_give_up_and_permanent_ones_wait_for_an_admin() {
        let policy = RetryPolicy::default();
        let at = Utc::now();
        assert_eq!(failed(true, 1, at).next_step(at, &policy), None, "waits out its backoff");
        assert_eq!(failed(true, 1, at).next_step(at + Duration::seconds(5), &policy), Some(NextStep::Push));
        assert_eq!(failed(true, 3, at).due_at(&policy), Some(at + Duration::seconds(20)));
        assert_eq!(policy.backoff(30), Duration::minutes(5));
        assert_eq!(failed(true, 6, at).next_step(at + Duration::days(1), &policy), None, "out of attempts");
        assert_eq!(failed(false, 1, at).next_step(at + Duration::days(1), &policy), None, "not retryable");
        assert_eq!(failed(false, 1, at).status(), "failed");
    }
}
