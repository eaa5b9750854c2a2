//! Publish delivery: what happens to an approved publish request (issue #15, ADR 0024).
//!
//! The [`Publisher`] reads the publishing aggregate's deliveries (`domain::publishing::delivery`) and takes each
//! one's next step: **push** the request's commit from the workspace, through the workspace's agent
//! ([`relay::task::GitTask::Push`], over the connection the agent dialled out), to the blueprint's repository on the
//! branch [`branch_name`] names, with the organisation's `git_token` opened for that one push; then, with a Git
//! provider that has them, **open the pull request** through the provider's API ([`provider`]), looked up by its
//! branch first so that a retry after a crash or a lost answer never opens a second one. Each outcome is an event;
//! transient failures are retried with backoff, others wait for an admin's retry.
//!
//! Only the gateway that holds the workspace's agent can push from it; with several gateways, the others find the
//! agent missing and leave the step (a transient failure retried later). **Architecture Invariant:** no HTTP
//! framework here (`scripts/check-layering.sh`); the API wakes the publisher through [`PublisherHandle::wake`].

pub mod provider;
mod worker;

pub use worker::{branch_name, GitTokenSource, Publisher, PublisherConfig, PublisherHandle};
