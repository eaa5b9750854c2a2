//! What can be asked of publishing.

use chrono::{DateTime, Duration, Utc};

use super::delivery::DeliveryStage;
use super::values::{BlueprintKey, CommitId, DiffSummary, RequestId, Subdomain, WorkspaceId};
use crate::Email;

/// A trust rule that matched a submission, found by the caller in the trust rules aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustMatch {
    /// The rule's id.
    pub rule_id: String,
    /// A sentence naming the rule, recorded as the system reviewer's reason.
    pub reason: String,
}

/// A request to change publishing. The actor, the time and the policy in force arrive inside the command.
// A command is built once per request and moved into the aggregate; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishingCommand {
    /// Ask to publish a workspace.
    Submit {
        /// A fresh id for the request.
        request_id: RequestId,
        /// The workspace.
        workspace_id: WorkspaceId,
        /// Its blueprint.
        blueprint_key: BlueprintKey,
        /// Where to publish.
        subdomain: Subdomain,
        /// The commit.
        commit_id: CommitId,
        /// What changes.
        diff: DiffSummary,
        /// A message to reviewers (validated, trimmed).
        message: String,
        /// The caller.
        builder: Email,
        /// Now.
        now: DateTime<Utc>,
        /// How long the request may stay pending.
        ttl: Duration,
        /// Approvals needed (at least 1).
        approvals_required: u32,
        /// The trust rule that approves it at once, if one matches.
        trusted: Option<TrustMatch>,
        /// Where the diff starts.
        base_commit: Option<CommitId>,
        /// Whether the commit is delivered once approved.
        deliver: bool,
    },
    /// An admin approves.
    Approve {
        /// The request.
        request_id: RequestId,
        /// The admin.
        reviewer: Email,
        /// Why (validated, trimmed).
        reason: Option<String>,
        /// Whether a reason is required.
        reason_required: bool,
        /// Only if the request is still at this version (`If-Match`).
        if_version: Option<u64>,
    },
    /// An admin rejects.
    Reject {
        /// The request.
        request_id: RequestId,
        /// The admin.
        reviewer: Email,
        /// Feedback for the builder (validated, trimmed).
        feedback: Option<String>,
        /// Whether feedback is required.
        reason_required: bool,
        /// Only if the request is still at this version (`If-Match`).
        if_version: Option<u64>,
    },
    /// The builder withdraws a pending request.
    Withdraw {
        /// The request.
        request_id: RequestId,
        /// The caller.
        by: Email,
        /// Only if the request is still at this version (`If-Match`).
        if_version: Option<u64>,
    },
    /// Record that an approved request's commit is on the remote (nothing changes when it already is).
    RecordPushed {
        /// The request.
        request_id: RequestId,
        /// The remote, as it may be shown.
        remote: String,
        /// The branch.
        branch: String,
        /// Whether a pull request follows.
        pull_request: bool,
    },
    /// Record the pull request of an approved, pushed request (nothing changes when one is recorded already).
    RecordPullRequest {
        /// The request.
        request_id: RequestId,
        /// Its web page.
        url: String,
        /// Its number.
        number: u64,
    },
    /// Record a failed delivery step.
    RecordFailure {
        /// The request.
        request_id: RequestId,
        /// The step.
        stage: DeliveryStage,
        /// What went wrong (no credential).
        reason: String,
        /// Whether trying again may succeed unchanged.
        retryable: bool,
        /// Now.
        now: DateTime<Utc>,
        /// The delivery's round when the attempt started ([`Delivery::round`](super::Delivery::round)); a failure
        /// of an earlier round is not recorded.
        round: u32,
    },
    /// An admin retries a failed delivery.
    RetryDelivery {
        /// The request.
        request_id: RequestId,
        /// The admin.
        by: Email,
    },
    /// Expire a pending request whose time is up; does nothing for a request that is no longer pending.
    Expire {
        /// The request.
        request_id: RequestId,
        /// Now.
        now: DateTime<Utc>,
    },
}
