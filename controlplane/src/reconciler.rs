//! The reconciler: makes what runs match what people asked for, workspace by workspace.
//!
//! It reads the desired state from the owners' `Workspaces` aggregates (the store, never a cache of its own), asks
//! the control plane what runs, and takes one step per workspace at a time: provision, start, stop, remove, or
//! record a fact the control plane reports (an agent found running after the gateway restarted). It is woken for
//! one owner by the API after each request, and checks every workspace on a timer (after a crash, the timer is
//! what finds work left half-done). Steps on one workspace never overlap; steps on different workspaces run
//! concurrently.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::publishing::WorkspaceId;
use domain::workspace::{Desired, Phase, Workspace, WorkspaceCommand, Workspaces};
use domain::Email;
use projections::WorkspacesQuery;
use store::{AggregateRepository, EventMetadata};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ControlPlane, Credential, PlaneError, Progress, Runtime};

/// Whether a workspace's agent, started for a generation, is connected to this gateway (the relay's hub).
pub trait Presence: Send + Sync + 'static {
    /// See the trait.
    fn connected(&self, workspace: &str, generation: u64) -> bool;
}

/// Opens the organisation's control-plane credential for one operation.
#[async_trait]
pub trait CredentialSource: Send + Sync + 'static {
    /// The credential, or why it cannot be opened.
    async fn open(&self) -> Result<Credential, PlaneError>;
}

/// How the reconciler runs.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// How often every workspace is checked.
    pub interval: Duration,
    /// How long a started agent may take to connect before the start counts as failed.
    pub connect_timeout: Duration,
    /// An agent that exits this many times within [`ReconcilerConfig::crash_window`] is not started again: the
    /// workspace is recorded failed.
    pub max_crashes: usize,
    /// See [`ReconcilerConfig::max_crashes`].
    pub crash_window: Duration,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(60),
            max_crashes: 3,
            crash_window: Duration::from_secs(300),
        }
    }
}

/// Wakes the reconciler for one owner's workspaces (after the API recorded a request).
#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    wake: mpsc::UnboundedSender<Email>,
}

impl ReconcilerHandle {
    /// A handle no reconciler listens to (a tool serving a subset of the API without workspaces, such as a
    /// benchmark's probe server): wakes go nowhere.
    pub fn detached() -> Self {
        let (wake, _) = mpsc::unbounded_channel();
        Self { wake }
    }

    /// Checks `owner`'s workspaces now.
    pub fn wake(&self, owner: &Email) {
        let _ = self.wake.send(owner.clone());
    }
}

/// The next step for one workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Make it (first start), then start it.
    Provision,
    /// Start (or restart) its processes for the current generation.
    Start,
    /// Stop its processes.
    Stop,
    /// Record that nothing runs (the control plane says so).
    RecordStopped,
    /// Record that the current generation runs (found running, e.g. after the gateway restarted).
    RecordRunning,
    /// Remove it.
    Delete,
}

/// The step `workspace` needs given what runs; `None`: nothing to do.
fn next_step(workspace: &Workspace, runtime: Runtime) -> Option<Step> {
    match workspace.desired {
        Desired::Deleted if !workspace.removed => Some(Step::Delete),
        Desired::Deleted => None,
        Desired::Stopped => match runtime {
            Runtime::Running { .. } => Some(Step::Stop),
            Runtime::Stopped if workspace.started.is_some() => Some(Step::RecordStopped),
            Runtime::Stopped => None,
        },
        Desired::Running if workspace.failure.is_some() => match runtime {
            Runtime::Running { .. } => Some(Step::Stop),
            Runtime::Stopped => None,
        },
        Desired::Running if !workspace.provisioned => Some(Step::Provision),
        Desired::Running => match runtime {
            Runtime::Running { generation } if generation == workspace.generation => {
                (workspace.started != Some(generation)).then_some(Step::RecordRunning)
            }
            Runtime::Running { .. } | Runtime::Stopped => Some(Step::Start),
        },
    }
}

struct Inner {
    plane: Arc<dyn ControlPlane>,
    workspaces: Arc<AggregateRepository<Workspaces>>,
    reads: WorkspacesQuery,
    presence: Arc<dyn Presence>,
    credentials: Arc<dyn CredentialSource>,
    config: ReconcilerConfig,
    /// Workspaces with a step in progress, each with what cancels it (a provisioning or start that the owner no
    /// longer wants: a delete or stop asked meanwhile).
    busy: Mutex<HashMap<String, (Step, CancellationToken)>>,
    /// When each workspace's agent was last found dead while it should run.
    crashes: Mutex<HashMap<String, Vec<Instant>>>,
    wake: mpsc::UnboundedSender<Email>,
}

/// The reconciler (see the module).
pub struct Reconciler {
    inner: Arc<Inner>,
    woken: mpsc::UnboundedReceiver<Email>,
}

impl Reconciler {
    /// A reconciler for `plane`.
    pub fn new(
        plane: Arc<dyn ControlPlane>,
        workspaces: Arc<AggregateRepository<Workspaces>>,
        reads: WorkspacesQuery,
        presence: Arc<dyn Presence>,
        credentials: Arc<dyn CredentialSource>,
        config: ReconcilerConfig,
    ) -> (Self, ReconcilerHandle) {
        let (wake, woken) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            plane,
            workspaces,
            reads,
            presence,
            credentials,
            config,
            busy: Mutex::new(HashMap::new()),
            crashes: Mutex::new(HashMap::new()),
            wake: wake.clone(),
        });
        (Self { inner, woken }, ReconcilerHandle { wake })
    }

    /// Runs until `shutdown` is cancelled. Steps in progress are left to finish or to be taken again by the next
    /// gateway (every step is idempotent).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(self.inner.config.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(owner) = self.woken.recv() => {
                    let mut owners = BTreeSet::from([owner]);
                    while let Ok(more) = self.woken.try_recv() {
                        owners.insert(more);
                    }
                    for owner in owners {
                        Inner::check_owner(&self.inner, &owner).await;
                    }
                }
                _ = timer.tick() => Inner::check_all(&self.inner).await,
            }
        }
    }
}

/// Records each phase on the workspace as the control plane reports it.
struct RecordPhases<'a> {
    inner: &'a Inner,
    workspace: &'a Workspace,
}

#[async_trait]
impl Progress for RecordPhases<'_> {
    async fn cloned(&mut self, commit: String) {
        self.inner
            .record(
                &self.workspace.owner,
                WorkspaceCommand::RecordCloned {
                    workspace: self.workspace.id.clone(),
                    generation: self.workspace.generation,
                    commit,
                },
            )
            .await;
    }

    async fn reached(&mut self, phase: Phase) {
        self.inner
            .record(
                &self.workspace.owner,
                WorkspaceCommand::RecordPhase {
                    workspace: self.workspace.id.clone(),
                    generation: self.workspace.generation,
                    phase,
                },
            )
            .await;
    }
}

impl Inner {
    async fn check_all(inner: &Arc<Self>) {
        if !inner.plane.claim() {
            return;
        }
        let rows = match inner.reads.unremoved().await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "the reconciler cannot list workspaces");
                return;
            }
        };
        let owners: BTreeSet<String> = rows.into_iter().map(|row| row.owner).collect();
        for owner in owners {
            if let Ok(owner) = Email::parse(&owner) {
                Self::check_owner(inner, &owner).await;
            }
        }
    }

    async fn check_owner(inner: &Arc<Self>, owner: &Email) {
        if !inner.plane.claim() {
            return;
        }
        let aggregate = match inner.workspaces.load(owner.as_str()).await {
            Ok((aggregate, _)) => aggregate,
            Err(error) => {
                tracing::warn!(%error, "the reconciler cannot read workspaces");
                return;
            }
        };
        let candidates: Vec<Workspace> = aggregate
            .all()
            .filter(|workspace| !(workspace.desired == Desired::Deleted && workspace.removed))
            .cloned()
            .collect();
        for workspace in candidates {
            let id = workspace.id.to_string();
            let in_progress = inner.busy.lock().ok().and_then(|busy| busy.get(&id).cloned());
            if let Some((step, cancel)) = in_progress {
                // Making or starting a workspace nobody wants running any more stops at once (a clone that hangs
                // is not waited for): the next check removes or stops what it left.
                if matches!(step, Step::Provision | Step::Start) && workspace.desired != Desired::Running {
                    cancel.cancel();
                }
                continue;
            }
            let runtime = inner.plane.runtime(&id).await;
            let Some(step) = next_step(&workspace, runtime) else { continue };
            let cancel = CancellationToken::new();
            let claimed = inner
                .busy
                .lock()
                .map(|mut busy| busy.insert(id.clone(), (step, cancel.clone())).is_none())
                .unwrap_or(false);
            if !claimed {
                continue;
            }
            let inner = inner.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = inner.take(step, &workspace) => {}
                    () = cancel.cancelled() => {
                        tracing::info!(workspace = %workspace.id, "a workspace step was cancelled: no longer wanted");
                    }
                }
                if let Ok(mut busy) = inner.busy.lock() {
                    busy.remove(&id);
                }
                // The step's facts may call for another step (provisioned → nothing; stopped → removed).
                let _ = inner.wake.send(workspace.owner.clone());
            });
        }
    }

    async fn record(&self, owner: &Email, command: WorkspaceCommand) {
        let metadata = EventMetadata::system("control-plane");
        if let Err(error) = self.workspaces.execute_retrying(owner.as_str(), command, &metadata, 5).await {
            tracing::warn!(%error, "the reconciler cannot record a workspace fact");
        }
    }

    async fn fail(&self, workspace: &Workspace, phase: Phase, error: &PlaneError) {
        tracing::warn!(workspace = %workspace.id, phase = phase.as_str(), reason = %error.reason,
            "a workspace step failed");
        self.record(
            &workspace.owner,
            WorkspaceCommand::RecordFailed {
                workspace: workspace.id.clone(),
                generation: workspace.generation,
                phase,
                reason: error.reason.clone(),
            },
        )
        .await;
    }

    async fn take(&self, step: Step, workspace: &Workspace) {
        let credential = if self.plane.needs_credential() {
            match self.credentials.open().await {
                Ok(credential) => credential,
                Err(error) => {
                    tracing::warn!(reason = %error.reason, "the control plane's credential cannot be opened");
                    return;
                }
            }
        } else {
            None
        };
        let id = workspace.id.as_str();
        match step {
            Step::Provision => {
                let phases = &mut RecordPhases { inner: self, workspace };
                phases.reached(Phase::Validating).await;
                if let Err(error) = self.plane.create(workspace, &credential, phases).await {
                    let phase = self.phase_of(workspace).await.unwrap_or(Phase::CreatingProject);
                    self.fail(workspace, phase, &error).await;
                    // Nothing half-made stays behind a first provisioning that failed.
                    let _ = self.plane.delete(id, &credential).await;
                    return;
                }
                self.start(workspace, &credential).await;
            }
            Step::Start => {
                if workspace.started == Some(workspace.generation) && self.crashed_too_often(id) {
                    let reason = format!(
                        "the workspace's agent exited {} times within {} s: see its log",
                        self.config.max_crashes,
                        self.config.crash_window.as_secs()
                    );
                    self.fail(workspace, Phase::Running, &PlaneError::permanent(reason)).await;
                    return;
                }
                self.start(workspace, &credential).await;
            }
            Step::Stop => {
                if let Err(error) = self.plane.stop(id, &credential).await {
                    tracing::warn!(workspace = id, reason = %error.reason, "cannot stop a workspace");
                    return;
                }
                self.record(&workspace.owner, WorkspaceCommand::RecordStopped { workspace: workspace.id.clone() })
                    .await;
            }
            Step::RecordStopped => {
                self.record(&workspace.owner, WorkspaceCommand::RecordStopped { workspace: workspace.id.clone() })
                    .await;
            }
            Step::RecordRunning => {
                // Found running (adopted after a restart of the gateway): the control plane knows its port.
                let dev_port = workspace.dev_port;
                self.record(
                    &workspace.owner,
                    WorkspaceCommand::RecordStarted {
                        workspace: workspace.id.clone(),
                        generation: workspace.generation,
                        dev_port,
                    },
                )
                .await;
            }
            Step::Delete => {
                if let Err(error) = self.plane.delete(id, &credential).await {
                    tracing::warn!(workspace = id, reason = %error.reason, "cannot delete a workspace");
                    return;
                }
                if let Ok(mut crashes) = self.crashes.lock() {
                    crashes.remove(id);
                }
                self.record(&workspace.owner, WorkspaceCommand::RecordDeleted { workspace: workspace.id.clone() })
                    .await;
            }
        }
    }

    /// The phase the workspace's current generation reached, as stored.
    async fn phase_of(&self, workspace: &Workspace) -> Option<Phase> {
        let (aggregate, _) = self.workspaces.load(workspace.owner.as_str()).await.ok()?;
        let current = aggregate.get(workspace.id.as_str())?;
        (current.generation == workspace.generation).then_some(current.phase).flatten()
    }

    /// Counts a crash of the workspace's agent; whether it crashed too often to start it again.
    fn crashed_too_often(&self, id: &str) -> bool {
        let Ok(mut crashes) = self.crashes.lock() else { return false };
        let now = Instant::now();
        let window = self.config.crash_window;
        let seen = crashes.entry(id.to_string()).or_default();
        seen.retain(|at| now.duration_since(*at) < window);
        seen.push(now);
        seen.len() >= self.config.max_crashes
    }

    /// Starts the current generation's processes and waits for its agent to connect.
    async fn start(&self, workspace: &Workspace, credential: &Credential) {
        let id = workspace.id.as_str();
        let generation = workspace.generation;
        let phase = |phase| WorkspaceCommand::RecordPhase { workspace: workspace.id.clone(), generation, phase };
        self.record(&workspace.owner, phase(Phase::Deploying)).await;
        let started = match self.plane.start(workspace, credential).await {
            Ok(started) => started,
            Err(error) if error.transient => {
                tracing::warn!(workspace = id, reason = %error.reason, "cannot start a workspace: will try again");
                return;
            }
            Err(error) => return self.fail(workspace, Phase::Deploying, &error).await,
        };
        self.record(&workspace.owner, phase(Phase::Finalizing)).await;
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        while !self.presence.connected(id, generation) {
            if tokio::time::Instant::now() >= deadline || self.plane.runtime(id).await == Runtime::Stopped {
                let _ = self.plane.stop(id, credential).await;
                let reason = if tokio::time::Instant::now() >= deadline {
                    format!("the workspace's agent did not connect within {} s", self.config.connect_timeout.as_secs())
                } else {
                    "the workspace's agent exited before it connected: see its log".to_string()
                };
                return self.fail(workspace, Phase::Finalizing, &PlaneError::permanent(reason)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.record(
            &workspace.owner,
            WorkspaceCommand::RecordStarted {
                workspace: WorkspaceId::clone(&workspace.id),
                generation,
                dev_port: started.dev_port,
            },
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use domain::blueprint::{GitBranch, GitRepository, LocalSource, Shell};
    use domain::values::BlueprintKey;
    use domain::workspace::{Failure, WorkspaceName};

    use super::*;

    fn workspace() -> Workspace {
        Workspace {
            id: WorkspaceId::parse("ws-1").unwrap(),
            owner: Email::parse("ada@example.com").unwrap(),
            name: WorkspaceName::parse("one").unwrap(),
            blueprint_key: BlueprintKey::parse("web").unwrap(),
            project_id: "local/web".into(),
            spec: LocalSource::new(
                GitRepository::parse("/srv/web.git").unwrap(),
                GitBranch::parse("main").unwrap(),
                None,
                vec![],
                Shell::parse("/bin/sh").unwrap(),
            )
            .unwrap(),
            desired: Desired::Running,
            generation: 1,
            started: None,
            dev_port: None,
            provisioned: false,
            source_commit: None,
            phase: None,
            failure: None,
            removed: false,
            revision: 1,
        }
    }

    #[test]
    fn the_next_step_follows_from_desired_and_actual_state() {
        let running = |generation| Runtime::Running { generation };
        let stopped = Runtime::Stopped;
        let fresh = workspace();
        assert_eq!(next_step(&fresh, stopped), Some(Step::Provision));
        let started = Workspace { provisioned: true, started: Some(1), ..workspace() };
        assert_eq!(next_step(&started, running(1)), None, "running as wanted");
        assert_eq!(next_step(&started, stopped), Some(Step::Start), "the agent died, or the host restarted");
        assert_eq!(next_step(&Workspace { generation: 2, ..started.clone() }, running(1)), Some(Step::Start));
        let adopted = Workspace { provisioned: true, started: None, ..workspace() };
        assert_eq!(next_step(&adopted, running(1)), Some(Step::RecordRunning));
        let stopping = Workspace { desired: Desired::Stopped, ..started.clone() };
        assert_eq!(next_step(&stopping, running(1)), Some(Step::Stop));
        assert_eq!(next_step(&stopping, stopped), Some(Step::RecordStopped));
        assert_eq!(next_step(&Workspace { started: None, ..stopping }, stopped), None);
        let failed = Workspace {
            failure: Some(Failure { phase: Phase::CloningBlueprint, reason: "no branch".into() }),
            ..workspace()
        };
        assert_eq!(next_step(&failed, stopped), None, "a failure waits for a person");
        assert_eq!(next_step(&failed, running(1)), Some(Step::Stop));
        let deleted = Workspace { desired: Desired::Deleted, ..started };
        assert_eq!(next_step(&deleted, running(1)), Some(Step::Delete));
        assert_eq!(next_step(&Workspace { removed: true, ..deleted }, stopped), None);
    }
}
