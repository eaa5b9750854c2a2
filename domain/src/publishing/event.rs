//! What happened to publish requests. **API Boundary:** these are stored; see the crate docs.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::delivery::DeliveryStage;
use super::values::{BlueprintKey, CommitId, DiffSummary, RequestId, Subdomain, WorkspaceId};
use crate::Email;

/// A change to the organisation's publishing: requests, their reviews, and who holds which subdomain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishingEvent {
    /// A workspace took a subdomain that nobody held; nobody else can use it until it is released.
    SubdomainClaimed {
        /// The label.
        subdomain: Subdomain,
        /// Its holder.
        workspace_id: WorkspaceId,
    },
    /// A workspace gave a subdomain up (its request ended without being published there, or its app moved).
    SubdomainReleased {
        /// The label.
        subdomain: Subdomain,
        /// The former holder.
        workspace_id: WorkspaceId,
    },
    /// A builder asked to publish a workspace.
    PublishRequested {
        /// The request.
        request_id: RequestId,
        /// The workspace to publish.
        workspace_id: WorkspaceId,
        /// Its blueprint.
        blueprint_key: BlueprintKey,
        /// Where it would be published.
        subdomain: Subdomain,
        /// Who asked (the workspace's owner).
        builder: Email,
        /// The commit to publish.
        commit_id: CommitId,
        /// What changes.
        diff: DiffSummary,
        /// The builder's message to reviewers.
        message: String,
        /// Approvals needed, fixed when the request was made.
        approvals_required: u32,
        /// When it was asked.
        submitted_at: DateTime<Utc>,
        /// When it expires unless decided.
        expires_at: DateTime<Utc>,
        /// The commit the diff starts from (the last one published from the workspace, or where it left the
        /// blueprint's branch). Absent in requests made before Gatehouse made the commit itself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_commit: Option<CommitId>,
        /// Whether the commit is delivered once approved (pushed, and a pull request opened). `false` for requests
        /// made before delivery existed, whose commit the client named: they are never pushed.
        #[serde(default)]
        deliver: bool,
    },
    /// An admin approved; the request is approved once `approvals_required` admins have.
    ApprovalRecorded {
        /// The request.
        request_id: RequestId,
        /// The approving admin.
        reviewer: Email,
        /// Why, if given.
        reason: Option<String>,
    },
    /// The request has all the approvals it needs. Final.
    PublishApproved {
        /// The request.
        request_id: RequestId,
    },
    /// A trust rule approved the request on submission, in the name of the system reviewer. Final.
    PublishAutoApproved {
        /// The request.
        request_id: RequestId,
        /// The rule that matched.
        trust_rule_id: String,
        /// A sentence naming the rule.
        reason: String,
    },
    /// An admin rejected the request. Final: the builder submits a new one.
    PublishRejected {
        /// The request.
        request_id: RequestId,
        /// The rejecting admin.
        reviewer: Email,
        /// Feedback for the builder, if given.
        feedback: Option<String>,
    },
    /// The builder withdrew the request. Final.
    PublishWithdrawn {
        /// The request.
        request_id: RequestId,
        /// The builder.
        withdrawn_by: Email,
    },
    /// Nobody decided in time. Final.
    PublishExpired {
        /// The request.
        request_id: RequestId,
    },
    /// An approved request's commit is on the blueprint's repository.
    PublishPushed {
        /// The request.
        request_id: RequestId,
        /// The remote, as it may be shown (credentials in a URL redacted).
        remote: String,
        /// The branch it was pushed to.
        branch: String,
        /// The commit.
        commit_id: CommitId,
        /// Whether a pull request follows (`false` with the `local` provider: the branch is the result).
        pull_request: bool,
    },
    /// The pull (or merge) request for an approved request is open.
    PullRequestOpened {
        /// The request.
        request_id: RequestId,
        /// Its web page.
        url: String,
        /// Its number (GitHub) or `iid` (GitLab).
        number: u64,
    },
    /// A delivery step failed.
    PublishFailed {
        /// The request.
        request_id: RequestId,
        /// The step.
        stage: DeliveryStage,
        /// What went wrong (no credential).
        reason: String,
        /// Whether trying again may succeed without anyone changing anything (it is then retried with backoff).
        retryable: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin asked for a failed delivery to be tried again.
    PublishRetryRequested {
        /// The request.
        request_id: RequestId,
        /// The admin.
        by: Email,
    },
}

impl DomainEvent for PublishingEvent {
    fn event_type(&self) -> String {
        match self {
            PublishingEvent::SubdomainClaimed { .. } => "SubdomainClaimed",
            PublishingEvent::SubdomainReleased { .. } => "SubdomainReleased",
            PublishingEvent::PublishRequested { .. } => "PublishRequested",
            PublishingEvent::ApprovalRecorded { .. } => "ApprovalRecorded",
            PublishingEvent::PublishApproved { .. } => "PublishApproved",
            PublishingEvent::PublishAutoApproved { .. } => "PublishAutoApproved",
            PublishingEvent::PublishRejected { .. } => "PublishRejected",
            PublishingEvent::PublishWithdrawn { .. } => "PublishWithdrawn",
            PublishingEvent::PublishExpired { .. } => "PublishExpired",
            PublishingEvent::PublishPushed { .. } => "PublishPushed",
            PublishingEvent::PullRequestOpened { .. } => "PullRequestOpened",
            PublishingEvent::PublishFailed { .. } => "PublishFailed",
            PublishingEvent::PublishRetryRequested { .. } => "PublishRetryRequested",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}
