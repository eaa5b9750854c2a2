//! Publishing: builders' publish requests, admins' reviews, and which workspace holds which subdomain.
//!
//! One aggregate (id [`PUBLISHING_ID`]) holds all of it, for the same reason the roster is one aggregate: its two
//! rules span requests. "One request in flight per workspace" and "a subdomain belongs to one workspace across
//! the organisation" are checked and committed atomically with the request that would break them, so two
//! workspaces racing for one subdomain cannot both win (the loser's append conflicts and is decided again on the
//! winner's state), and neither can fifty admins approving one request. Publishing is a rare, human-paced action;
//! a command costs one append (the aggregate is cached), so the single stream is no bottleneck (ADR 0006).
//!
//! Lifecycle: `pending` → `approved` (enough admins approved, or a trust rule matched on submission) |
//! `rejected` | `withdrawn` (by the builder) | `expired` (nobody decided in time). Every end is final; the builder
//! submits a new request. A workspace claims its subdomain on submission; the claim is released when the request
//! ends without approval (unless the workspace is already published there), and when an approval moves the
//! workspace's app to another subdomain.

mod command;
pub mod delivery;
mod error;
mod event;
#[cfg(test)]
mod tests;
pub mod values;

use imbl::HashMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

pub use command::{PublishingCommand, TrustMatch};
pub use delivery::{Delivery, DeliveryStage, NextStep, RetryPolicy};
pub use error::PublishingError;
pub use event::PublishingEvent;
pub use values::{BlueprintKey, CommitId, DiffSummary, InvalidValue, RequestId, Subdomain, WorkspaceId};

use crate::Email;

/// The id of the organisation's single publishing aggregate.
pub const PUBLISHING_ID: &str = "org";

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Awaiting review.
    Pending,
    /// Approved by admins or a trust rule.
    Approved,
    /// Rejected by an admin.
    Rejected,
    /// Withdrawn by the builder.
    Withdrawn,
    /// Expired undecided.
    Expired,
}

impl RequestStatus {
    /// The stable lower-case name used in read models and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Withdrawn => "withdrawn",
            RequestStatus::Expired => "expired",
        }
    }
}

/// One request as the aggregate needs it to decide (the message and patch live only in the events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The builder.
    pub builder: Email,
    /// The subdomain asked for.
    pub subdomain: Subdomain,
    /// Where it stands.
    pub status: RequestStatus,
    /// Admins who approved so far.
    pub approvals: Vec<Email>,
    /// Approvals needed.
    pub approvals_required: u32,
    /// When it expires if still pending.
    pub expires_at: DateTime<Utc>,
    /// Its blueprint.
    pub blueprint_key: BlueprintKey,
    /// The commit to publish.
    pub commit_id: CommitId,
    /// The builder's message.
    pub message: String,
    /// Whether it is delivered once approved.
    pub deliver: bool,
    /// Its delivery, once approved (only when `deliver`).
    pub delivery: Option<Delivery>,
    /// The aggregate version of the event that last changed it: what an ETag names.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    workspace_id: WorkspaceId,
    /// The workspace is published here (an approved request), not only asking.
    live: bool,
}

/// The organisation's publishing state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Publishing {
    requests: HashMap<RequestId, Request>,
    in_flight: HashMap<WorkspaceId, RequestId>,
    owners: HashMap<WorkspaceId, Email>,
    claims: HashMap<Subdomain, Claim>,
    /// The subdomain each published workspace is live at.
    live_at: HashMap<WorkspaceId, Subdomain>,
    version: u64,
}

impl Publishing {
    /// One request.
    pub fn request(&self, request_id: &RequestId) -> Option<&Request> {
        self.requests.get(request_id)
    }

    /// Pending requests whose time is up at `now`, oldest deadline first.
    pub fn due_for_expiry(&self, now: DateTime<Utc>) -> Vec<RequestId> {
        let mut due: Vec<(&DateTime<Utc>, &RequestId)> = self
            .in_flight
            .values()
            .filter_map(|id| self.requests.get(id).map(|request| (&request.expires_at, id)))
            .filter(|(expires_at, _)| **expires_at <= now)
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Approved requests whose delivery has a step to take at `now`, oldest first; and the earliest time a
    /// delivery waiting out its backoff becomes due.
    pub fn deliveries_due(
        &self,
        now: DateTime<Utc>,
        policy: &RetryPolicy,
    ) -> (Vec<(RequestId, NextStep)>, Option<DateTime<Utc>>) {
        let mut due = Vec::new();
        let mut wake: Option<DateTime<Utc>> = None;
        for (id, request) in &self.requests {
            let Some(delivery) = &request.delivery else { continue };
            if let Some(step) = delivery.next_step(now, policy) {
                due.push((request.version, id.clone(), step));
            } else if let Some(at) = delivery.due_at(policy) {
                wake = Some(wake.map_or(at, |earliest| earliest.min(at)));
            }
        }
        due.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        (due.into_iter().map(|(_, id, step)| (id, step)).collect(), wake)
    }

    /// The commit last approved for publishing from `workspace_id`: where its next diff starts.
    pub fn last_published(&self, workspace_id: &WorkspaceId) -> Option<&CommitId> {
        self.requests
            .values()
            .filter(|request| &request.workspace_id == workspace_id && request.status == RequestStatus::Approved)
            .max_by_key(|request| request.version)
            .map(|request| &request.commit_id)
    }

    /// The request pending for `workspace_id`, if any.
    pub fn in_flight(&self, workspace_id: &WorkspaceId) -> Option<&RequestId> {
        self.in_flight.get(workspace_id)
    }

    /// Whether `workspace_id` may take `subdomain` (nobody else holds it).
    pub fn may_claim(&self, subdomain: &Subdomain, workspace_id: &WorkspaceId) -> bool {
        self.claims.get(subdomain).is_none_or(|claim| &claim.workspace_id == workspace_id)
    }

    fn delivering(&self, request_id: &RequestId) -> Result<&Delivery, PublishingError> {
        let request =
            self.requests.get(request_id).ok_or_else(|| PublishingError::UnknownRequest(request_id.clone()))?;
        request.delivery.as_ref().ok_or_else(|| PublishingError::NotDelivering(request_id.clone()))
    }

    /// The workspace holding `subdomain`, if any.
    pub fn holder(&self, subdomain: &Subdomain) -> Option<&WorkspaceId> {
        self.claims.get(subdomain).map(|claim| &claim.workspace_id)
    }

    fn pending(&self, request_id: &RequestId, if_version: Option<u64>) -> Result<&Request, PublishingError> {
        let request =
            self.requests.get(request_id).ok_or_else(|| PublishingError::UnknownRequest(request_id.clone()))?;
        if let Some(expected) = if_version {
            if expected != request.version {
                return Err(PublishingError::StaleRequest {
                    request_id: request_id.clone(),
                    expected,
                    actual: request.version,
                });
            }
        }
        if request.status != RequestStatus::Pending {
            return Err(PublishingError::NotPending { request_id: request_id.clone(), status: request.status });
        }
        Ok(request)
    }

    /// The release that ending `request` without approval implies, if any.
    fn release_after_refusal(&self, request: &Request) -> Option<PublishingEvent> {
        let claim = self.claims.get(&request.subdomain)?;
        (claim.workspace_id == request.workspace_id && !claim.live).then(|| PublishingEvent::SubdomainReleased {
            subdomain: request.subdomain.clone(),
            workspace_id: request.workspace_id.clone(),
        })
    }

    /// The release that publishing `request` implies: the workspace's app moves off its old subdomain.
    fn release_after_approval(&self, request: &Request) -> Option<PublishingEvent> {
        let old = self.live_at.get(&request.workspace_id)?;
        (*old != request.subdomain).then(|| PublishingEvent::SubdomainReleased {
            subdomain: old.clone(),
            workspace_id: request.workspace_id.clone(),
        })
    }

    async fn end(&mut self, sink: &EventSink<Self>, event: PublishingEvent, release: Option<PublishingEvent>) {
        sink.write(event, self).await;
        if let Some(release) = release {
            sink.write(release, self).await;
        }
    }
}

impl Aggregate for Publishing {
    const TYPE: &'static str = "publishing";
    type Command = PublishingCommand;
    type Event = PublishingEvent;
    type Error = PublishingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            PublishingCommand::Submit {
                request_id,
                workspace_id,
                blueprint_key,
                subdomain,
                commit_id,
                diff,
                message,
                builder,
                now,
                ttl,
                approvals_required,
                trusted,
                base_commit,
                deliver,
            } => {
                if approvals_required == 0 {
                    return Err(PublishingError::InvalidPolicy);
                }
                if self.requests.contains_key(&request_id) {
                    return Err(PublishingError::DuplicateRequest(request_id));
                }
                if self.owners.get(&workspace_id).is_some_and(|owner| *owner != builder) {
                    return Err(PublishingError::NotWorkspaceOwner(workspace_id));
                }
                if let Some(pending) = self.in_flight.get(&workspace_id) {
                    return Err(PublishingError::RequestInFlight { workspace_id, request_id: pending.clone() });
                }
                match self.claims.get(&subdomain) {
                    Some(claim) if claim.workspace_id != workspace_id => {
                        return Err(PublishingError::SubdomainTaken(subdomain));
                    }
                    Some(_) => {}
                    None => {
                        let claimed = PublishingEvent::SubdomainClaimed {
                            subdomain: subdomain.clone(),
                            workspace_id: workspace_id.clone(),
                        };
                        sink.write(claimed, self).await;
                    }
                }
                let requested = PublishingEvent::PublishRequested {
                    request_id: request_id.clone(),
                    workspace_id,
                    blueprint_key,
                    subdomain,
                    builder,
                    commit_id,
                    diff,
                    message,
                    approvals_required,
                    submitted_at: now,
                    expires_at: now + ttl,
                    base_commit,
                    deliver,
                };
                sink.write(requested, self).await;
                if let Some(rule) = trusted {
                    let request = self.pending(&request_id, None)?.clone();
                    let release = self.release_after_approval(&request);
                    let approved = PublishingEvent::PublishAutoApproved {
                        request_id,
                        trust_rule_id: rule.rule_id,
                        reason: rule.reason,
                    };
                    self.end(sink, approved, release).await;
                }
            }
            PublishingCommand::Approve { request_id, reviewer, reason, reason_required, if_version } => {
                let request = self.pending(&request_id, if_version)?.clone();
                if request.builder == reviewer {
                    return Err(PublishingError::SelfApproval);
                }
                if request.approvals.contains(&reviewer) {
                    return Err(PublishingError::AlreadyApproved(request_id));
                }
                if reason_required && reason.is_none() {
                    return Err(PublishingError::ReasonRequired);
                }
                let recorded = PublishingEvent::ApprovalRecorded { request_id: request_id.clone(), reviewer, reason };
                sink.write(recorded, self).await;
                if request.approvals.len() + 1 >= request.approvals_required as usize {
                    let release = self.release_after_approval(&request);
                    self.end(sink, PublishingEvent::PublishApproved { request_id }, release).await;
                }
            }
            PublishingCommand::Reject { request_id, reviewer, feedback, reason_required, if_version } => {
                let request = self.pending(&request_id, if_version)?;
                if reason_required && feedback.is_none() {
                    return Err(PublishingError::ReasonRequired);
                }
                let release = self.release_after_refusal(request);
                self.end(sink, PublishingEvent::PublishRejected { request_id, reviewer, feedback }, release).await;
            }
            PublishingCommand::Withdraw { request_id, by, if_version } => {
                // Whose request it is comes first: to anyone else its state is none of their business.
                if self.requests.get(&request_id).is_some_and(|request| request.builder != by) {
                    return Err(PublishingError::NotBuilder(request_id));
                }
                let request = self.pending(&request_id, if_version)?;
                let release = self.release_after_refusal(request);
                self.end(sink, PublishingEvent::PublishWithdrawn { request_id, withdrawn_by: by }, release).await;
            }
            PublishingCommand::RecordPushed { request_id, remote, branch, pull_request } => {
                let delivery = self.delivering(&request_id)?;
                if delivery.pushed.is_some() {
                    return Ok(());
                }
                let commit_id = self.requests.get(&request_id).map(|request| request.commit_id.clone());
                let commit_id = commit_id.ok_or_else(|| PublishingError::UnknownRequest(request_id.clone()))?;
                let event = PublishingEvent::PublishPushed { request_id, remote, branch, commit_id, pull_request };
                sink.write(event, self).await;
            }
            PublishingCommand::RecordPullRequest { request_id, url, number } => {
                let delivery = self.delivering(&request_id)?;
                if delivery.pull_request.is_some() {
                    return Ok(());
                }
                if !delivery.pushed.as_ref().is_some_and(|pushed| pushed.pull_request) {
                    return Err(PublishingError::WrongDeliveryStep { request_id, status: delivery.status() });
                }
                sink.write(PublishingEvent::PullRequestOpened { request_id, url, number }, self).await;
            }
            PublishingCommand::RecordFailure { request_id, stage, reason, retryable, now, round } => {
                let delivery = self.delivering(&request_id)?;
                if delivery.round != round {
                    return Ok(());
                }
                if delivery.done() {
                    return Err(PublishingError::WrongDeliveryStep { request_id, status: delivery.status() });
                }
                sink.write(PublishingEvent::PublishFailed { request_id, stage, reason, retryable, at: now }, self)
                    .await;
            }
            PublishingCommand::RetryDelivery { request_id, by } => {
                let delivery = self.delivering(&request_id)?;
                if delivery.failure.is_none() {
                    return Err(PublishingError::NotFailed { request_id, status: delivery.status() });
                }
                sink.write(PublishingEvent::PublishRetryRequested { request_id, by }, self).await;
            }
            PublishingCommand::Expire { request_id, now } => {
                let request = self
                    .requests
                    .get(&request_id)
                    .ok_or_else(|| PublishingError::UnknownRequest(request_id.clone()))?;
                if request.status != RequestStatus::Pending {
                    return Ok(());
                }
                if request.expires_at > now {
                    return Err(PublishingError::NotDue(request_id));
                }
                let release = self.release_after_refusal(request);
                self.end(sink, PublishingEvent::PublishExpired { request_id }, release).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        let version = self.version;
        match event {
            PublishingEvent::SubdomainClaimed { subdomain, workspace_id } => {
                self.claims.insert(subdomain, Claim { workspace_id, live: false });
            }
            PublishingEvent::SubdomainReleased { subdomain, workspace_id } => {
                if self.claims.get(&subdomain).is_some_and(|claim| claim.workspace_id == workspace_id) {
                    self.claims.remove(&subdomain);
                }
                if self.live_at.get(&workspace_id) == Some(&subdomain) {
                    self.live_at.remove(&workspace_id);
                }
            }
            PublishingEvent::PublishRequested {
                request_id,
                workspace_id,
                subdomain,
                builder,
                approvals_required,
                expires_at,
                blueprint_key,
                commit_id,
                message,
                deliver,
                ..
            } => {
                self.owners.entry(workspace_id.clone()).or_insert_with(|| builder.clone());
                self.in_flight.insert(workspace_id.clone(), request_id.clone());
                let request = Request {
                    workspace_id,
                    builder,
                    subdomain,
                    status: RequestStatus::Pending,
                    approvals: Vec::new(),
                    approvals_required,
                    expires_at,
                    blueprint_key,
                    commit_id,
                    message,
                    deliver,
                    delivery: None,
                    version,
                };
                self.requests.insert(request_id, request);
            }
            PublishingEvent::ApprovalRecorded { request_id, reviewer, .. } => {
                if let Some(request) = self.requests.get_mut(&request_id) {
                    request.approvals.push(reviewer);
                    request.version = version;
                }
            }
            PublishingEvent::PublishApproved { request_id }
            | PublishingEvent::PublishAutoApproved { request_id, .. } => {
                if let Some(request) = self.requests.get_mut(&request_id) {
                    if request.deliver {
                        request.delivery = Some(Delivery::default());
                    }
                }
                if let Some(request) = self.finish(&request_id, RequestStatus::Approved, version) {
                    if let Some(claim) = self.claims.get_mut(&request.subdomain) {
                        claim.live = true;
                    }
                    self.live_at.insert(request.workspace_id, request.subdomain);
                }
            }
            PublishingEvent::PublishRejected { request_id, .. } => {
                self.finish(&request_id, RequestStatus::Rejected, version);
            }
            PublishingEvent::PublishWithdrawn { request_id, .. } => {
                self.finish(&request_id, RequestStatus::Withdrawn, version);
            }
            PublishingEvent::PublishExpired { request_id } => {
                self.finish(&request_id, RequestStatus::Expired, version);
            }
            PublishingEvent::PublishPushed { request_id, remote, branch, pull_request, .. } => {
                if let Some(delivery) = self.delivery_mut(&request_id, version) {
                    delivery.pushed = Some(delivery::PushedTo { remote, branch, pull_request });
                    delivery.failure = None;
                    delivery.attempts = 0;
                }
            }
            PublishingEvent::PullRequestOpened { request_id, url, number } => {
                if let Some(delivery) = self.delivery_mut(&request_id, version) {
                    delivery.pull_request = Some(delivery::PullRequest { url, number });
                    delivery.failure = None;
                    delivery.attempts = 0;
                }
            }
            PublishingEvent::PublishFailed { request_id, stage, reason, retryable, at } => {
                if let Some(delivery) = self.delivery_mut(&request_id, version) {
                    delivery.failure = Some(delivery::Failure { stage, reason, retryable, at });
                    delivery.attempts = delivery.attempts.saturating_add(1);
                }
            }
            PublishingEvent::PublishRetryRequested { request_id, .. } => {
                if let Some(delivery) = self.delivery_mut(&request_id, version) {
                    delivery.failure = None;
                    delivery.attempts = 0;
                    delivery.round = delivery.round.saturating_add(1);
                }
            }
        }
    }
}

impl Publishing {
    /// A request's delivery, to change it at `version`.
    fn delivery_mut(&mut self, request_id: &RequestId, version: u64) -> Option<&mut Delivery> {
        let request = self.requests.get_mut(request_id)?;
        request.version = version;
        request.delivery.as_mut()
    }

    /// Marks a request final and frees its workspace; returns it for follow-up bookkeeping.
    fn finish(&mut self, request_id: &RequestId, status: RequestStatus, version: u64) -> Option<Request> {
        let request = self.requests.get_mut(request_id)?;
        request.status = status;
        request.version = version;
        let request = request.clone();
        if self.in_flight.get(&request.workspace_id) == Some(request_id) {
            self.in_flight.remove(&request.workspace_id);
        }
        Some(request)
    }
}
