//! Read models fed from the global event log by durable projectors.
//!
//! A [`Projection`] turns events into rows of its own tables. The [`Projector`] runs each projection as a task
//! that tails [`store::EventStore::read_global`] from the projection's checkpoint and applies every batch in the
//! same database transaction as the checkpoint update, so each event takes effect exactly once, across crashes and
//! across several Gatehouse processes (the checkpoint row is locked for the batch). [`rebuild`] replays a
//! projection from zero into fresh tables and swaps them in while readers keep reading the old ones.
//!
//! **Architecture Invariant:** read models can be rebuilt from the event log alone; this crate knows no HTTP.

pub mod audit_chain;
mod blueprints;
mod members;
mod projection;
mod publishing;
mod rebuild;
pub mod revisions;
mod runtime;
mod sessions;
mod tags;
mod workspaces;

pub use blueprints::{AiProviderSummary, BlueprintRow, BlueprintsProjection, BlueprintsQuery};
pub use members::{MemberRow, MembersProjection, MembersQuery};
pub use projection::{ApplyError, Projection, Tables, TimeKey};
pub use publishing::{
    PublishRequestRow, PublishRequestsProjection, PublishingQuery, RequestFilter, ReviewRow, TrustRuleRow,
    TrustRulesProjection, SYSTEM_REVIEWER,
};
pub use rebuild::{rebuild, RebuildError, RebuildReport};
pub use revisions::Revisions;
pub use runtime::{
    checkpoints, Checkpoint, ProjectionState, ProjectionStatus, Projector, ProjectorConfig, StatusBoard,
};
pub use sessions::{ActivityFilter, ActivityRow, SessionFilter, SessionRow, SessionsProjection, SessionsQuery};
pub use tags::{TagsProjection, TagsQuery};
pub use workspaces::{WorkspaceFilter, WorkspaceRow, WorkspacesProjection, WorkspacesQuery};

/// Every projection this service runs, in one place so `serve` and `projections rebuild` agree.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(audit_chain::AuditChainProjection),
        std::sync::Arc::new(MembersProjection),
        std::sync::Arc::new(PublishRequestsProjection),
        std::sync::Arc::new(TrustRulesProjection),
        std::sync::Arc::new(SessionsProjection),
        std::sync::Arc::new(BlueprintsProjection),
        std::sync::Arc::new(WorkspacesProjection),
        std::sync::Arc::new(TagsProjection),
    ]
}
