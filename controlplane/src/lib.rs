//! Control planes: where workspaces come from, and the only source of truth for who owns one and which blueprint it
//! came from (ADR 0023).
//!
//! The seed's **two-client model** splits every workspace operation in two. The API first checks the acting person
//! (role, ownership, the blueprint's state and ACL) and records the request as an event on the owner's
//! `domain::workspace::Workspaces` aggregate; then the [`Reconciler`] executes it through a [`ControlPlane`] with the
//! organisation's credential, opened only for that call, and records what the control plane reports back as facts.
//! Nothing here decides whether a person may do something; everything here makes the actual state match the
//! desired one, also after a crash of the gateway.
//!
//! - [`ControlPlane`]: the interface, shaped so that the local control plane and the Qovery API both fit it;
//! - [`local::LocalControlPlane`]: the embedded default, a directory and a `gatehouse agent` process per workspace
//!   on this host (a development and single-team mode: processes, not isolated containers);
//! - [`Reconciler`]: desired state (events) against actual state (the control plane), workspace by workspace.
//!
//! **Architecture Invariant:** no HTTP framework here (`scripts/check-layering.sh`); the API talks to the reconciler
//! through [`ReconcilerHandle::wake`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use domain::workspace::{Phase, Workspace};
use zeroize::Zeroizing;

pub mod local;
mod reconciler;

pub use reconciler::{CredentialSource, Presence, Reconciler, ReconcilerConfig, ReconcilerHandle};

/// The organisation's control-plane credential (the admin API token), opened for one operation and wiped after.
/// The local control plane needs none.
pub type Credential = Option<Zeroizing<String>>;

/// What a control plane reports when a workspace's processes started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The port the dev server was given (`DEV_PORT`), if the workspace runs one.
    pub dev_port: Option<u16>,
}

/// What runs of a workspace, as the control plane sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Its processes run, started for this generation.
    Running {
        /// The generation they were started for.
        generation: u64,
    },
    /// Nothing runs.
    Stopped,
}

/// A control plane's refusal or failure, with a reason safe to show the workspace's owner (no credential, no
/// path outside the workspace).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PlaneError {
    /// What went wrong.
    pub reason: String,
    /// Whether trying again later may succeed (the control plane was unreachable, say), as opposed to a cause the
    /// owner or an admin must fix (a branch that does not exist).
    pub transient: bool,
}

impl PlaneError {
    /// A failure that trying again will not fix.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), transient: false }
    }

    /// A failure that may pass.
    pub fn transient(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), transient: true }
    }
}

/// Told of each provisioning phase as the control plane reaches it (the reconciler records each as an event).
#[async_trait]
pub trait Progress: Send {
    /// The control plane reached `phase`.
    async fn reached(&mut self, phase: Phase);

    /// The blueprint's source was cloned at `commit` (a full commit id read from the fresh clone, before anyone
    /// could change it): recorded as the workspace's source, where its first publish's diff starts.
    async fn cloned(&mut self, commit: String);
}

/// How the relay reaches a workspace's terminals and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelRoute {
    /// Through the workspace's agent, which dialled out to this gateway (`relay::hub`): the local control plane,
    /// and any workspace whose image runs `gatehouse agent`.
    Agent,
}

/// A control plane: makes, starts, stops and removes workspaces, and says what runs.
///
/// Every method is idempotent, because the reconciler calls them again after a crash: `create` on a workspace whose
/// environment exists makes it again or reuses it, `stop` on a stopped one and `delete` on a deleted one succeed.
/// Each takes the organisation's credential for that call (see [`Credential`]).
///
/// The Qovery control plane (later) maps these onto its REST API: `create` clones the blueprint's environment
/// (phases: project, clone, variables), `start` deploys it, `stop` stops it, `delete` deletes the environment and
/// project, `runtime` reads the environment's status, and `discover` lists environments carrying the discovery
/// tags. See docs/adr/0023-workspaces-and-the-control-plane.md.
#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// The kind, as the organisation's settings name it (`local`).
    fn kind(&self) -> &'static str;

    /// Whether operations need the organisation's credential (the reconciler opens it only then).
    fn needs_credential(&self) -> bool;

    /// Whether this process may act for the control plane now. The local control plane allows one gateway per
    /// workspaces directory (an exclusive lock on it): a second gateway on the same host and directory serves the
    /// API but leaves the processes to the first, and takes over when the first stops.
    fn claim(&self) -> bool;

    /// Makes the workspace's environment from its spec (clone, configuration), reporting each phase up to
    /// `configuring`. On failure nothing half-made is left behind.
    async fn create(
        &self,
        workspace: &Workspace,
        credential: &Credential,
        progress: &mut dyn Progress,
    ) -> Result<(), PlaneError>;

    /// Starts the workspace's processes for its current generation, stopping older ones first.
    async fn start(&self, workspace: &Workspace, credential: &Credential) -> Result<Started, PlaneError>;

    /// Stops the workspace's processes; its files stay.
    async fn stop(&self, workspace: &str, credential: &Credential) -> Result<(), PlaneError>;

    /// Stops everything and removes the workspace's files.
    async fn delete(&self, workspace: &str, credential: &Credential) -> Result<(), PlaneError>;

    /// What runs of the workspace now.
    async fn runtime(&self, workspace: &str) -> Runtime;

    /// The workspaces the control plane holds, each with its discovery tags (`BLUEPRINT_PROJECT_ID`,
    /// `BLUEPRINT_KEY`, `RDE_OWNER_EMAIL`, `RDE_DISPLAY_NAME`).
    async fn discover(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, PlaneError>;

    /// How the relay reaches the workspace's terminals and ports.
    fn channels(&self) -> ChannelRoute;
}
