//! Why publishing refuses a command.

use super::values::{RequestId, Subdomain, WorkspaceId};
use super::RequestStatus;

/// A publishing rule that a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishingError {
    /// No request has this id.
    #[error("no publish request {0}")]
    UnknownRequest(RequestId),
    /// The id is taken (ids are chosen by the caller).
    #[error("publish request {0} already exists")]
    DuplicateRequest(RequestId),
    /// The request is no longer pending.
    #[error("publish request {request_id} is {}", status.as_str())]
    NotPending {
        /// The request.
        request_id: RequestId,
        /// Its status.
        status: RequestStatus,
    },
    /// The workspace already has a pending request.
    #[error("workspace {workspace_id} already has a pending publish request ({request_id})")]
    RequestInFlight {
        /// The workspace.
        workspace_id: WorkspaceId,
        /// Its pending request.
        request_id: RequestId,
    },
    /// Another workspace holds the subdomain.
    #[error("the subdomain {0} belongs to another workspace")]
    SubdomainTaken(Subdomain),
    /// Someone other than the workspace's owner asked to publish it.
    #[error("workspace {0} belongs to another builder")]
    NotWorkspaceOwner(WorkspaceId),
    /// Only the builder may withdraw their request.
    #[error("only the builder who submitted {0} may withdraw it")]
    NotBuilder(RequestId),
    /// A builder's own request needs another admin.
    #[error("nobody may approve their own publish request")]
    SelfApproval,
    /// This admin already approved the request.
    #[error("this reviewer already approved {0}")]
    AlreadyApproved(RequestId),
    /// The policy asks for a reason and none was given.
    #[error("a reason is required")]
    ReasonRequired,
    /// The request changed since the version the caller named.
    #[error("publish request {request_id} is at version {actual}, not {expected}")]
    StaleRequest {
        /// The request.
        request_id: RequestId,
        /// The version the caller named.
        expected: u64,
        /// The request's version.
        actual: u64,
    },
    /// The request's time is not up yet.
    #[error("publish request {0} has not expired yet")]
    NotDue(RequestId),
    /// The request is not being delivered (not approved, or made before delivery existed).
    #[error("publish request {0} is not being delivered")]
    NotDelivering(RequestId),
    /// The delivery step does not fit where the delivery stands (a pull request before the push).
    #[error("publish request {request_id}'s delivery is {status}")]
    WrongDeliveryStep {
        /// The request.
        request_id: RequestId,
        /// Where its delivery stands.
        status: &'static str,
    },
    /// A retry of a delivery that has not failed.
    #[error("publish request {request_id}'s delivery has not failed (it is {status})")]
    NotFailed {
        /// The request.
        request_id: RequestId,
        /// Where its delivery stands.
        status: &'static str,
    },
    /// At least one approval is needed.
    #[error("approvals required must be at least 1")]
    InvalidPolicy,
}
