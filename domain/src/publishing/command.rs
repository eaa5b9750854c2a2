//! What can be asked of publishing.

use chrono::{DateTime, Duration, Utc};

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
    /// Expire a pending request whose time is up; does nothing for a request that is no longer pending.
    Expire {
        /// The request.
        request_id: RequestId,
        /// Now.
        now: DateTime<Utc>,
    },
}
