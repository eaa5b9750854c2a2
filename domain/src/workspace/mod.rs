//! Workspaces: what a builder launched from a blueprint, what they and admins asked of it since, and what the control
//! plane reported back (shared/spec/portal.md §2.6–2.8, §2.15; ADR 0023).
//!
//! One aggregate per **owner** (id: the owner's e-mail), holding all of that owner's workspaces, so that the rules
//! that span them are decided and committed atomically: the running limit (two launches racing at the limit: the
//! store lets exactly one append) and names unique per owner. Events name the workspace they are about.
//!
//! Two kinds of events:
//! - **requests** by a person (`WorkspaceLaunched`, `…StartRequested`, `…StopRequested`, `…RestartRequested`,
//!   `WorkspaceRenamed`, `…UpgradeRequested`, `…DeleteRequested`): they move the *desired* state, and each
//!   start, restart or upgrade moves the workspace to a new **generation**;
//! - **facts** the control plane reports (`WorkspacePhaseReached`, `WorkspaceStarted`, `WorkspaceStopped`,
//!   `WorkspaceFailed`, `WorkspaceDeleted`), each about one generation; a fact about a generation that is no longer
//!   current records nothing (a slow report never overrides a newer request).
//!
//! The status people see (`running`, `stopped`, `deploying`, `error`) is never stored: [`Workspace::status`] derives
//! it from these facts and from whether the workspace's agent is connected right now.

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::blueprint::LocalSource;
use crate::publishing::WorkspaceId;
use crate::values::{line, BlueprintKey, InvalidValue};
use crate::Email;

#[cfg(test)]
mod tests;

/// The longest workspace name, in characters.
pub const MAX_NAME_CHARS: usize = 63;
/// The longest failure reason kept, in characters (a longer one is cut).
pub const MAX_REASON_CHARS: usize = 1_000;
/// The discovery tags every workspace carries (shared/spec/portal.md §2.8).
pub const TAG_PROJECT: &str = "BLUEPRINT_PROJECT_ID";
/// See [`TAG_PROJECT`].
pub const TAG_BLUEPRINT: &str = "BLUEPRINT_KEY";
/// See [`TAG_PROJECT`].
pub const TAG_OWNER: &str = "RDE_OWNER_EMAIL";
/// See [`TAG_PROJECT`].
pub const TAG_DISPLAY_NAME: &str = "RDE_DISPLAY_NAME";

/// A workspace's name (`RDE_DISPLAY_NAME`): one line, trimmed, 1 to [`MAX_NAME_CHARS`] characters; unique among the
/// owner's workspaces, ignoring case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    /// See the type.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        line("name", raw, MAX_NAME_CHARS).map(Self)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two names are compared in.
    fn folded(&self) -> String {
        self.0.to_lowercase()
    }
}

impl std::fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The steps of making a workspace, in order; the provisioning stream shows the first six.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The blueprint and the caller's rights are checked.
    Validating,
    /// The workspace's place is made (locally: its directory).
    CreatingProject,
    /// The blueprint's source is cloned.
    CloningBlueprint,
    /// Tags, environment and the agent's credential are written.
    Configuring,
    /// The workspace's processes start.
    Deploying,
    /// The agent connects; the workspace is ready.
    Finalizing,
    /// After start: the workspace ran and then stopped working (only failures name it).
    Running,
}

impl Phase {
    /// The provisioning phases, in order.
    pub const PROVISIONING: [Phase; 6] = [
        Phase::Validating,
        Phase::CreatingProject,
        Phase::CloningBlueprint,
        Phase::Configuring,
        Phase::Deploying,
        Phase::Finalizing,
    ];

    /// The stable name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Validating => "validating",
            Phase::CreatingProject => "creating_project",
            Phase::CloningBlueprint => "cloning_blueprint",
            Phase::Configuring => "configuring",
            Phase::Deploying => "deploying",
            Phase::Finalizing => "finalizing",
            Phase::Running => "running",
        }
    }
}

/// What people want of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Running (after a launch, start, restart or upgrade).
    Running,
    /// Stopped: files kept, processes ended.
    Stopped,
    /// Gone: the control plane removes everything; the workspace is no longer listed or usable.
    Deleted,
}

/// The status shown (derived, never stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started and its agent is connected.
    Running,
    /// Stopped.
    Stopped,
    /// Being created, started or restarted (or its agent is reconnecting).
    Deploying,
    /// The current generation failed (see [`Workspace::failure`]).
    Error,
}

impl Status {
    /// The stable name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Deploying => "deploying",
            Status::Error => "error",
        }
    }

    /// Parses a stable name (`field` names it in the refusal).
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "running" => Ok(Status::Running),
            "stopped" => Ok(Status::Stopped),
            "deploying" => Ok(Status::Deploying),
            "error" => Ok(Status::Error),
            _ => Err(InvalidValue::new(field, "one of running, stopped, deploying and error")),
        }
    }
}

/// Why the current generation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The phase it failed in.
    pub phase: Phase,
    /// What went wrong, safe to show the owner.
    pub reason: String,
}

/// One workspace as its owner's aggregate knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Its id (the control plane's; the agent token is bound to it).
    pub id: WorkspaceId,
    /// Its owner (`RDE_OWNER_EMAIL`).
    pub owner: Email,
    /// Its name (`RDE_DISPLAY_NAME`).
    pub name: WorkspaceName,
    /// The blueprint it came from (`BLUEPRINT_KEY`).
    pub blueprint_key: BlueprintKey,
    /// The blueprint's project (`BLUEPRINT_PROJECT_ID`).
    pub project_id: String,
    /// What it is made from and runs: the blueprint's source as of the launch or the last upgrade.
    pub spec: LocalSource,
    /// What people want of it.
    pub desired: Desired,
    /// Moves on with every start, restart and upgrade request; facts name the generation they are about.
    pub generation: u64,
    /// The generation whose processes the control plane reported started, until it reports them stopped.
    pub started: Option<u64>,
    /// The port the dev server was given (`DEV_PORT`) when the current processes started.
    pub dev_port: Option<u16>,
    /// Whether provisioning (clone and configuration) finished once: later starts reuse the files.
    pub provisioned: bool,
    /// The commit the control plane cloned (`None` for workspaces made before it was recorded): a fact the builder
    /// cannot move, where the first publish's diff starts.
    pub source_commit: Option<String>,
    /// The last provisioning phase reached by the current generation.
    pub phase: Option<Phase>,
    /// Why the current generation failed, if it did.
    pub failure: Option<Failure>,
    /// Whether the control plane removed everything of it (after a delete request).
    pub removed: bool,
    /// Events about this workspace so far (its ETag).
    pub revision: u64,
}

impl Status {
    /// The one status rule: a failure of the current generation is `error`; wanted stopped (or deleted) is
    /// `stopped`; wanted running is `running` once the current generation started and its agent is connected, else
    /// `deploying`. The aggregate and the read model both apply it.
    pub fn derive(desired: Desired, failed: bool, current_started: bool, agent_connected: bool) -> Status {
        if failed {
            return Status::Error;
        }
        match desired {
            Desired::Stopped | Desired::Deleted => Status::Stopped,
            Desired::Running if current_started && agent_connected => Status::Running,
            Desired::Running => Status::Deploying,
        }
    }
}

impl Workspace {
    /// The status shown, given whether its agent is connected now ([`Status::derive`]).
    pub fn status(&self, agent_connected: bool) -> Status {
        Status::derive(self.desired, self.failure.is_some(), self.started == Some(self.generation), agent_connected)
    }

    /// Whether it counts against its owner's running limit: it is wanted running and has not failed (deploying
    /// counts; stopped and failed workspaces do not).
    pub fn counts_as_running(&self) -> bool {
        self.desired == Desired::Running && self.failure.is_none()
    }

    /// The discovery tags the control plane holds for it.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_PROJECT.to_string(), self.project_id.clone()),
            (TAG_BLUEPRINT.to_string(), self.blueprint_key.to_string()),
            (TAG_OWNER.to_string(), self.owner.to_string()),
            (TAG_DISPLAY_NAME.to_string(), self.name.to_string()),
        ])
    }
}

/// All workspaces of one owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspaces {
    items: BTreeMap<String, Workspace>,
    version: u64,
}

impl Workspaces {
    /// A workspace that is not deleted.
    pub fn get(&self, id: &str) -> Option<&Workspace> {
        self.items.get(id).filter(|workspace| workspace.desired != Desired::Deleted)
    }

    /// A workspace, deleted or not.
    pub fn get_any(&self, id: &str) -> Option<&Workspace> {
        self.items.get(id)
    }

    /// Every workspace, deleted ones included.
    pub fn all(&self) -> impl Iterator<Item = &Workspace> {
        self.items.values()
    }

    /// The workspaces that are not deleted.
    pub fn live(&self) -> impl Iterator<Item = &Workspace> {
        self.items.values().filter(|workspace| workspace.desired != Desired::Deleted)
    }

    /// How many count against the running limit.
    pub fn running_count(&self) -> usize {
        self.live().filter(|workspace| workspace.counts_as_running()).count()
    }

    /// The aggregate's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn live_ref(&self, id: &WorkspaceId) -> Result<&Workspace, WorkspaceError> {
        self.get(id.as_str()).ok_or_else(|| WorkspaceError::UnknownWorkspace(id.clone()))
    }

    fn check_name(&self, name: &WorkspaceName, except: Option<&WorkspaceId>) -> Result<(), WorkspaceError> {
        let folded = name.folded();
        let taken = self.live().any(|workspace| Some(&workspace.id) != except && workspace.name.folded() == folded);
        if taken {
            return Err(WorkspaceError::NameTaken(name.clone()));
        }
        Ok(())
    }

    fn check_limit(&self, limit: Option<u32>) -> Result<(), WorkspaceError> {
        match limit {
            Some(limit) if self.running_count() >= limit as usize => Err(WorkspaceError::QuotaExceeded { limit }),
            _ => Ok(()),
        }
    }

    /// A fact about `generation` of `id`: the workspace, if the fact is still about its current generation and
    /// the workspace is not deleted.
    fn current(&self, id: &WorkspaceId, generation: u64) -> Option<&Workspace> {
        self.get(id.as_str()).filter(|workspace| workspace.generation == generation)
    }
}

/// A request about one owner's workspaces. `limit` is the running limit to hold the owner to, `None` when the
/// acting person is exempt (admins, see docs/API.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceCommand {
    /// Launch a new workspace from a blueprint.
    Launch {
        /// Its id (fresh, chosen by the API).
        workspace: WorkspaceId,
        /// Its owner (the aggregate's id).
        owner: Email,
        /// Its name.
        name: WorkspaceName,
        /// The blueprint.
        blueprint_key: BlueprintKey,
        /// The blueprint's project.
        project_id: String,
        /// The blueprint's source now.
        spec: LocalSource,
        /// The running limit, or `None`.
        limit: Option<u32>,
        /// Who.
        by: Email,
    },
    /// Start a stopped (or failed) workspace.
    Start { workspace: WorkspaceId, limit: Option<u32>, by: Email },
    /// Stop a workspace that is wanted running.
    Stop { workspace: WorkspaceId, by: Email },
    /// Stop and start a workspace that is wanted running.
    Restart { workspace: WorkspaceId, by: Email },
    /// Rename a workspace.
    Rename { workspace: WorkspaceId, name: WorkspaceName, by: Email },
    /// Take the blueprint's current source (files kept) and, if it is wanted running, restart it.
    Upgrade { workspace: WorkspaceId, spec: LocalSource, by: Email },
    /// Delete a workspace.
    Delete { workspace: WorkspaceId, by: Email },
    /// The control plane reached a provisioning phase for a generation.
    RecordPhase { workspace: WorkspaceId, generation: u64, phase: Phase },
    /// The control plane cloned the blueprint's source for a generation, at `commit` (before anyone could touch the
    /// files): where the builder's work starts, for the publish diff.
    RecordCloned { workspace: WorkspaceId, generation: u64, commit: String },
    /// The control plane started a generation's processes.
    RecordStarted { workspace: WorkspaceId, generation: u64, dev_port: Option<u16> },
    /// The control plane stopped the workspace's processes.
    RecordStopped { workspace: WorkspaceId },
    /// A generation failed.
    RecordFailed { workspace: WorkspaceId, generation: u64, phase: Phase, reason: String },
    /// The control plane removed everything of a deleted workspace.
    RecordDeleted { workspace: WorkspaceId },
}

/// What happened to one owner's workspaces. **API Boundary:** stored; event types are the variant names, at
/// `"1.0"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkspaceEvent {
    /// A workspace was launched: wanted running, generation 1.
    WorkspaceLaunched {
        workspace: WorkspaceId,
        owner: Email,
        name: WorkspaceName,
        blueprint_key: BlueprintKey,
        project_id: String,
        spec: LocalSource,
        by: Email,
    },
    /// Start asked: wanted running, at `generation`.
    WorkspaceStartRequested { workspace: WorkspaceId, generation: u64, by: Email },
    /// Stop asked: wanted stopped.
    WorkspaceStopRequested { workspace: WorkspaceId, by: Email },
    /// Restart asked: still wanted running, at `generation`.
    WorkspaceRestartRequested { workspace: WorkspaceId, generation: u64, by: Email },
    /// Renamed.
    WorkspaceRenamed { workspace: WorkspaceId, name: WorkspaceName, by: Email },
    /// The blueprint's current source taken, at `generation`.
    WorkspaceUpgradeRequested { workspace: WorkspaceId, spec: LocalSource, generation: u64, by: Email },
    /// Delete asked: no longer listed or usable.
    WorkspaceDeleteRequested { workspace: WorkspaceId, by: Email },
    /// The control plane reached a provisioning phase.
    WorkspacePhaseReached { workspace: WorkspaceId, generation: u64, phase: Phase },
    /// The control plane cloned the blueprint's source at `commit` (a full commit id, read from the fresh clone).
    WorkspaceSourceCloned { workspace: WorkspaceId, generation: u64, commit: String },
    /// The control plane started the generation's processes.
    WorkspaceStarted {
        workspace: WorkspaceId,
        generation: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dev_port: Option<u16>,
    },
    /// The control plane stopped the workspace's processes.
    WorkspaceStopped { workspace: WorkspaceId },
    /// The generation failed.
    WorkspaceFailed { workspace: WorkspaceId, generation: u64, phase: Phase, reason: String },
    /// Everything of the deleted workspace is gone.
    WorkspaceDeleted { workspace: WorkspaceId },
}

impl WorkspaceEvent {
    /// The workspace the event is about.
    pub fn workspace(&self) -> &WorkspaceId {
        match self {
            WorkspaceEvent::WorkspaceLaunched { workspace, .. }
            | WorkspaceEvent::WorkspaceStartRequested { workspace, .. }
            | WorkspaceEvent::WorkspaceStopRequested { workspace, .. }
            | WorkspaceEvent::WorkspaceRestartRequested { workspace, .. }
            | WorkspaceEvent::WorkspaceRenamed { workspace, .. }
            | WorkspaceEvent::WorkspaceUpgradeRequested { workspace, .. }
            | WorkspaceEvent::WorkspaceDeleteRequested { workspace, .. }
            | WorkspaceEvent::WorkspacePhaseReached { workspace, .. }
            | WorkspaceEvent::WorkspaceSourceCloned { workspace, .. }
            | WorkspaceEvent::WorkspaceStarted { workspace, .. }
            | WorkspaceEvent::WorkspaceStopped { workspace }
            | WorkspaceEvent::WorkspaceFailed { workspace, .. }
            | WorkspaceEvent::WorkspaceDeleted { workspace } => workspace,
        }
    }
}

impl DomainEvent for WorkspaceEvent {
    fn event_type(&self) -> String {
        match self {
            WorkspaceEvent::WorkspaceLaunched { .. } => "WorkspaceLaunched",
            WorkspaceEvent::WorkspaceStartRequested { .. } => "WorkspaceStartRequested",
            WorkspaceEvent::WorkspaceStopRequested { .. } => "WorkspaceStopRequested",
            WorkspaceEvent::WorkspaceRestartRequested { .. } => "WorkspaceRestartRequested",
            WorkspaceEvent::WorkspaceRenamed { .. } => "WorkspaceRenamed",
            WorkspaceEvent::WorkspaceUpgradeRequested { .. } => "WorkspaceUpgradeRequested",
            WorkspaceEvent::WorkspaceDeleteRequested { .. } => "WorkspaceDeleteRequested",
            WorkspaceEvent::WorkspacePhaseReached { .. } => "WorkspacePhaseReached",
            WorkspaceEvent::WorkspaceSourceCloned { .. } => "WorkspaceSourceCloned",
            WorkspaceEvent::WorkspaceStarted { .. } => "WorkspaceStarted",
            WorkspaceEvent::WorkspaceStopped { .. } => "WorkspaceStopped",
            WorkspaceEvent::WorkspaceFailed { .. } => "WorkspaceFailed",
            WorkspaceEvent::WorkspaceDeleted { .. } => "WorkspaceDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// A workspace rule a command would break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspaceError {
    /// No such workspace (or it was deleted).
    #[error("no workspace {0}")]
    UnknownWorkspace(WorkspaceId),
    /// The id is taken.
    #[error("workspace {0} already exists")]
    DuplicateWorkspace(WorkspaceId),
    /// Another of the owner's workspaces has this name.
    #[error("another of your workspaces is named \"{0}\"")]
    NameTaken(WorkspaceName),
    /// The owner is at the running limit.
    #[error("the limit of {limit} running workspaces per user is reached: stop one first")]
    QuotaExceeded {
        /// The limit.
        limit: u32,
    },
    /// Start asked of a workspace that is wanted running and has not failed.
    #[error("workspace {0} is already running or starting")]
    AlreadyRunning(WorkspaceId),
    /// Stop or restart asked of a stopped workspace.
    #[error("workspace {0} is stopped")]
    NotRunning(WorkspaceId),
    /// The aggregate is another owner's.
    #[error("this aggregate holds {0}'s workspaces")]
    WrongOwner(Email),
}

impl Aggregate for Workspaces {
    const TYPE: &'static str = "workspaces";
    type Command = WorkspaceCommand;
    type Event = WorkspaceEvent;
    type Error = WorkspaceError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let event = match command {
            WorkspaceCommand::Launch { workspace, owner, name, blueprint_key, project_id, spec, limit, by } => {
                if let Some(other) = self.items.values().next().filter(|other| other.owner != owner) {
                    return Err(WorkspaceError::WrongOwner(other.owner.clone()));
                }
                if self.items.contains_key(workspace.as_str()) {
                    return Err(WorkspaceError::DuplicateWorkspace(workspace));
                }
                self.check_name(&name, None)?;
                self.check_limit(limit)?;
                WorkspaceEvent::WorkspaceLaunched { workspace, owner, name, blueprint_key, project_id, spec, by }
            }
            WorkspaceCommand::Start { workspace, limit, by } => {
                let current = self.live_ref(&workspace)?;
                if current.desired == Desired::Running && current.failure.is_none() {
                    return Err(WorkspaceError::AlreadyRunning(workspace));
                }
                // A stopped or failed workspace does not count; started, it does.
                self.check_limit(limit)?;
                let generation = current.generation + 1;
                WorkspaceEvent::WorkspaceStartRequested { workspace, generation, by }
            }
            WorkspaceCommand::Stop { workspace, by } => {
                if self.live_ref(&workspace)?.desired != Desired::Running {
                    return Err(WorkspaceError::NotRunning(workspace));
                }
                WorkspaceEvent::WorkspaceStopRequested { workspace, by }
            }
            WorkspaceCommand::Restart { workspace, by } => {
                let current = self.live_ref(&workspace)?;
                if current.desired != Desired::Running {
                    return Err(WorkspaceError::NotRunning(workspace));
                }
                let generation = current.generation + 1;
                WorkspaceEvent::WorkspaceRestartRequested { workspace, generation, by }
            }
            WorkspaceCommand::Rename { workspace, name, by } => {
                let current = self.live_ref(&workspace)?;
                if current.name == name {
                    return Ok(());
                }
                self.check_name(&name, Some(&workspace))?;
                WorkspaceEvent::WorkspaceRenamed { workspace, name, by }
            }
            WorkspaceCommand::Upgrade { workspace, spec, by } => {
                let generation = self.live_ref(&workspace)?.generation + 1;
                WorkspaceEvent::WorkspaceUpgradeRequested { workspace, spec, generation, by }
            }
            WorkspaceCommand::Delete { workspace, by } => {
                self.live_ref(&workspace)?;
                WorkspaceEvent::WorkspaceDeleteRequested { workspace, by }
            }
            WorkspaceCommand::RecordPhase { workspace, generation, phase } => {
                match self.current(&workspace, generation) {
                    Some(current) if current.phase != Some(phase) && current.failure.is_none() => {}
                    _ => return Ok(()),
                }
                WorkspaceEvent::WorkspacePhaseReached { workspace, generation, phase }
            }
            WorkspaceCommand::RecordCloned { workspace, generation, commit } => {
                let full = (commit.len() == 40 || commit.len() == 64) && commit.bytes().all(|b| b.is_ascii_hexdigit());
                match self.current(&workspace, generation) {
                    Some(current) if full && current.source_commit.as_deref() != Some(commit.as_str()) => {}
                    _ => return Ok(()),
                }
                WorkspaceEvent::WorkspaceSourceCloned { workspace, generation, commit: commit.to_ascii_lowercase() }
            }
            WorkspaceCommand::RecordStarted { workspace, generation, dev_port } => {
                match self.current(&workspace, generation) {
                    Some(current)
                        if current.desired == Desired::Running
                            && (current.started != Some(generation) || current.dev_port != dev_port) => {}
                    _ => return Ok(()),
                }
                WorkspaceEvent::WorkspaceStarted { workspace, generation, dev_port }
            }
            WorkspaceCommand::RecordStopped { workspace } => {
                match self.get(workspace.as_str()) {
                    Some(current) if current.started.is_some() => {}
                    _ => return Ok(()),
                }
                WorkspaceEvent::WorkspaceStopped { workspace }
            }
            WorkspaceCommand::RecordFailed { workspace, generation, phase, reason } => {
                match self.current(&workspace, generation) {
                    Some(current) if current.failure.is_none() => {}
                    _ => return Ok(()),
                }
                let reason = cut(&reason);
                WorkspaceEvent::WorkspaceFailed { workspace, generation, phase, reason }
            }
            WorkspaceCommand::RecordDeleted { workspace } => {
                match self.items.get(workspace.as_str()) {
                    Some(current) if current.desired == Desired::Deleted && !current.removed => {}
                    _ => return Ok(()),
                }
                WorkspaceEvent::WorkspaceDeleted { workspace }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        let id = event.workspace().to_string();
        if let WorkspaceEvent::WorkspaceLaunched { workspace, owner, name, blueprint_key, project_id, spec, by: _ } =
            event
        {
            self.items.insert(
                id,
                Workspace {
                    id: workspace,
                    owner,
                    name,
                    blueprint_key,
                    project_id,
                    spec,
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
                },
            );
            return;
        }
        let Some(workspace) = self.items.get_mut(&id) else { return };
        workspace.revision += 1;
        match event {
            WorkspaceEvent::WorkspaceLaunched { .. } => {}
            WorkspaceEvent::WorkspaceStartRequested { generation, .. }
            | WorkspaceEvent::WorkspaceRestartRequested { generation, .. } => {
                workspace.desired = Desired::Running;
                workspace.generation = generation;
                workspace.failure = None;
                workspace.phase = None;
            }
            WorkspaceEvent::WorkspaceStopRequested { .. } => {
                workspace.desired = Desired::Stopped;
                workspace.failure = None;
            }
            WorkspaceEvent::WorkspaceRenamed { name, .. } => workspace.name = name,
            WorkspaceEvent::WorkspaceUpgradeRequested { spec, generation, .. } => {
                workspace.spec = spec;
                workspace.generation = generation;
                workspace.failure = None;
                workspace.phase = None;
            }
            WorkspaceEvent::WorkspaceDeleteRequested { .. } => workspace.desired = Desired::Deleted,
            WorkspaceEvent::WorkspacePhaseReached { phase, .. } => workspace.phase = Some(phase),
            WorkspaceEvent::WorkspaceSourceCloned { commit, .. } => workspace.source_commit = Some(commit),
            WorkspaceEvent::WorkspaceStarted { generation, dev_port, .. } => {
                workspace.started = Some(generation);
                workspace.dev_port = dev_port;
                workspace.provisioned = true;
            }
            WorkspaceEvent::WorkspaceStopped { .. } => {
                workspace.started = None;
                workspace.dev_port = None;
            }
            WorkspaceEvent::WorkspaceFailed { phase, reason, .. } => {
                workspace.failure = Some(Failure { phase, reason });
                workspace.started = None;
                workspace.dev_port = None;
            }
            WorkspaceEvent::WorkspaceDeleted { .. } => {
                workspace.started = None;
                workspace.dev_port = None;
                workspace.removed = true;
            }
        }
    }
}

/// A reason cut to [`MAX_REASON_CHARS`] characters, control characters other than newlines replaced.
fn cut(reason: &str) -> String {
    let reason: String = reason
        .trim()
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    if reason.is_empty() {
        "unknown".to_string()
    } else {
        reason
    }
}
