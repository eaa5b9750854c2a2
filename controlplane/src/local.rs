//! The local control plane, the embedded default: Gatehouse runs each workspace on its own host.
//!
//! A workspace is a directory `<root>/<id>` cloned from the blueprint's git source (its branch), plus one
//! `gatehouse agent` process started in it with a token minted for that workspace and generation. The agent dials
//! out to this gateway like any other, serves terminals with the blueprint's shell and starts the blueprint's dev
//! server command, if any, with `DEV_PORT` set to a free port.
//!
//! **These are processes on the gateway's host under the gateway's user, not isolated containers**: a builder's
//! terminal can read what that user can. It is a development and single-team mode (docs/OPERATIONS.md).
//!
//! What runs is kept in `<root>/.run/<id>.json` (process id, generation, token id, dev port), so that a gateway
//! started again, also after SIGKILL, finds the agents its predecessor started instead of starting duplicates: a
//! record whose process is alive and is `gatehouse agent --workspace <id>` is adopted. Workspace ids never start
//! with `.`, so `.run` and `.partial-<id>` (a clone in progress) never collide with a workspace.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::blueprint::{redact_url, url_secrets};
use domain::workspace::{Phase, Workspace, TAG_OWNER};
use domain::Email;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use relay::gateway::Gateway;
use serde::{Deserialize, Serialize};
use store::EventMetadata;
use tokio::io::AsyncReadExt as _;

use crate::{ChannelRoute, ControlPlane, Credential, PlaneError, Progress, Runtime, Started};

/// The agent-token tag naming the generation an agent was started for (the reconciler waits for that one).
pub const TAG_GENERATION: &str = "GATEHOUSE_GENERATION";
/// Who mints the control plane's agent tokens, in their events.
pub const MINTER: &str = "control-plane@gatehouse.invalid";
/// The most of git's error output kept in a failure reason, in characters.
const MAX_GIT_OUTPUT: usize = 600;
/// A workspace's log is started afresh when it has grown past this.
const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// How the local control plane runs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where workspaces live (`<data_dir>/workspaces`).
    pub root: PathBuf,
    /// The `gatehouse` binary started as each workspace's agent.
    pub agent_program: PathBuf,
    /// The URL agents dial (this gateway).
    pub gateway_url: String,
    /// The longest a clone may take.
    pub clone_timeout: Duration,
    /// How long a stopping agent gets after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
}

/// What the control plane knows of a workspace's running agent (`.run/<id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RunRecord {
    pid: i32,
    generation: u64,
    token_id: String,
    #[serde(default)]
    dev_port: Option<u16>,
}

/// The local control plane.
pub struct LocalControlPlane {
    config: LocalConfig,
    gateway: Arc<Gateway>,
    /// Agents this process started: their exit is observed here (they would stay zombies otherwise).
    children: Mutex<HashMap<i32, Arc<AtomicBool>>>,
    /// The exclusive lock on `<root>/.run/lock` while this process runs the workspaces (see
    /// [`ControlPlane::claim`]).
    lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

impl LocalControlPlane {
    /// A local control plane minting agent tokens through `gateway`.
    pub fn new(mut config: LocalConfig, gateway: Arc<Gateway>) -> Self {
        // Paths handed to agents (their `--dir`) are absolute: an agent runs in its workspace's directory, where a
        // path relative to the gateway's would name nothing.
        if let Ok(absolute) = std::path::absolute(&config.root) {
            config.root = absolute;
        }
        Self { config, gateway, children: Mutex::new(HashMap::new()), lock: Mutex::new(None) }
    }

    /// The workspace's files.
    pub fn files(&self, workspace: &str) -> PathBuf {
        self.config.root.join(workspace)
    }

    fn partial(&self, workspace: &str) -> PathBuf {
        self.config.root.join(format!(".partial-{workspace}"))
    }

    fn run_dir(&self) -> PathBuf {
        self.config.root.join(".run")
    }

    fn record_path(&self, workspace: &str) -> PathBuf {
        self.run_dir().join(format!("{workspace}.json"))
    }

    fn tags_path(&self, workspace: &str) -> PathBuf {
        self.run_dir().join(format!("{workspace}.tags.json"))
    }

    /// The workspace agent's log (its output and its dev server's).
    pub fn log_path(&self, workspace: &str) -> PathBuf {
        self.run_dir().join(format!("{workspace}.log"))
    }

    fn read_record(&self, workspace: &str) -> Option<RunRecord> {
        let raw = std::fs::read(self.record_path(workspace)).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), PlaneError> {
        let raw = serde_json::to_vec(value).map_err(|error| PlaneError::permanent(error.to_string()))?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, raw)
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|error| PlaneError::transient(format!("cannot write the workspace's run record: {error}")))
    }

    fn make_dirs(&self) -> Result<(), PlaneError> {
        use std::os::unix::fs::DirBuilderExt as _;
        for dir in [self.config.root.clone(), self.run_dir()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|error| PlaneError::transient(format!("cannot create the workspaces directory: {error}")))?;
        }
        Ok(())
    }

    /// Whether `pid` is alive and is the agent of `workspace` (not a process that took over a recycled pid).
    fn is_agent_of(&self, pid: i32, workspace: &str) -> bool {
        if let Some(exited) = self.children.lock().ok().and_then(|children| children.get(&pid).cloned()) {
            return !exited.load(Ordering::SeqCst);
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let arguments: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let serves = arguments.windows(2).any(|pair| pair[0] == b"--workspace" && pair[1] == workspace.as_bytes());
        serves && arguments.iter().any(|argument| *argument == b"agent") && !zombie(pid)
    }

    fn alive(&self, pid: i32) -> bool {
        if let Some(exited) = self.children.lock().ok().and_then(|children| children.get(&pid).cloned()) {
            return !exited.load(Ordering::SeqCst);
        }
        signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    /// Ends every process of the workspace: the agent of `record` (SIGTERM to its process group, SIGKILL after the
    /// grace), then whatever else carries the workspace's mark, whether the agent is alive or not (its dev server,
    /// in a process group of its own; a daemon the dev server started with `setsid`; a clone left running by a
    /// gateway that crashed).
    async fn end_processes(&self, workspace: &str, record: Option<&RunRecord>) {
        if let Some(record) = record.filter(|record| self.is_agent_of(record.pid, workspace)) {
            let group = Pid::from_raw(record.pid);
            let _ = signal::killpg(group, Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + self.config.stop_grace;
            while self.alive(record.pid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if self.alive(record.pid) {
                tracing::warn!(workspace, pid = record.pid, "the agent did not stop on SIGTERM: killed");
                let _ = signal::killpg(group, Signal::SIGKILL);
                while self.alive(record.pid) && tokio::time::Instant::now() < deadline + Duration::from_secs(5) {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
        self.end_marked(workspace).await;
    }

    /// Ends every process whose environment carries `WORKSPACE_ID=<workspace>` (set on everything the control plane
    /// starts for the workspace and inherited by what those start): SIGTERM, then SIGKILL for what is left after a
    /// short grace. A process that clears its environment escapes this (processes, not containers: see the module).
    async fn end_marked(&self, workspace: &str) {
        let mark = format!("{MARK}={workspace}");
        let marked = || marked_processes(mark.as_bytes());
        let found = marked();
        if found.is_empty() {
            return;
        }
        tracing::info!(workspace, processes = found.len(), "ending the workspace's remaining processes");
        for pid in &found {
            let _ = signal::kill(Pid::from_raw(*pid), Signal::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !marked().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        for pid in marked() {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    async fn revoke(&self, token_id: &str) {
        let metadata = EventMetadata::system("control-plane");
        if let Ok(minter) = Email::parse(MINTER) {
            if let Err(error) = self.gateway.revoke_token(token_id, &minter, &metadata).await {
                tracing::warn!(%error, "cannot revoke a stopped workspace's agent token");
            }
        }
    }

    async fn clone_source(&self, workspace: &Workspace, into: &Path) -> Result<(), PlaneError> {
        let repository = workspace.spec.repository().as_str();
        // A clone an earlier gateway left running (it crashed mid-clone) must not write beside this one.
        self.end_marked(workspace.id.as_str()).await;
        let mut command = tokio::process::Command::new("git");
        command
            .args(["-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never", "clone", "--quiet"])
            .args(["--branch", workspace.spec.branch().as_str(), "--single-branch", "--"])
            .arg(repository)
            .arg(into)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env(MARK, workspace.id.as_str())
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|error| PlaneError::permanent(format!("cannot run git: {error}")))?;
        let mut stderr = child.stderr.take();
        let run = async {
            let mut output = Vec::new();
            if let Some(stderr) = stderr.as_mut() {
                let _ = stderr.take(64 * 1024).read_to_end(&mut output).await;
            }
            (child.wait().await, output)
        };
        let (status, output) = tokio::time::timeout(self.config.clone_timeout, run).await.map_err(|_| {
            PlaneError::transient(format!("git clone took longer than {} s", self.config.clone_timeout.as_secs()))
        })?;
        let status = status.map_err(|error| PlaneError::transient(format!("git clone: {error}")))?;
        if status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output).to_string();
        for secret in url_secrets(repository) {
            text = text.replace(&secret, "[redacted]");
        }
        let text = text.replace(&into.display().to_string(), "<workspace>");
        let tail: String =
            text.trim().chars().rev().take(MAX_GIT_OUTPUT).collect::<Vec<_>>().into_iter().rev().collect();
        Err(PlaneError::permanent(format!(
            "git clone of {} (branch {}) failed: {tail}",
            redact_url(repository),
            workspace.spec.branch()
        )))
    }

    fn remove_files(&self, workspace: &str) -> Result<(), PlaneError> {
        for path in [self.files(workspace), self.partial(workspace)] {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(PlaneError::transient(format!("cannot remove the workspace's files: {error}")))
                }
            }
        }
        for path in [self.record_path(workspace), self.tags_path(workspace), self.log_path(workspace)] {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    fn open_log(&self, workspace: &str) -> Result<std::fs::File, PlaneError> {
        let path = self.log_path(workspace);
        let fresh = std::fs::metadata(&path).map(|meta| meta.len() > MAX_LOG_BYTES).unwrap_or(true);
        let mut options = std::fs::OpenOptions::new();
        options.create(true);
        if fresh {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        let mut file =
            options.open(&path).map_err(|error| PlaneError::transient(format!("cannot open the log: {error}")))?;
        let _ = writeln!(file, "--- {} gatehouse: starting the agent", chrono::Utc::now().to_rfc3339());
        Ok(file)
    }

    fn spawn_agent(
        &self,
        workspace: &Workspace,
        token: &str,
        dev_port: Option<u16>,
    ) -> Result<tokio::process::Child, PlaneError> {
        let id = workspace.id.as_str();
        let log = self.open_log(id)?;
        let error_log = log.try_clone().map_err(|error| PlaneError::transient(error.to_string()))?;
        let mut command = tokio::process::Command::new(&self.config.agent_program);
        command.arg("agent").arg("--workspace").arg(id);
        // Nothing of the gateway's environment (its database URL, its secrets keys) reaches the workspace.
        command.env_clear();
        for key in ["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        if std::env::var_os("PATH").is_none() {
            command.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        }
        for (key, value) in workspace.tags() {
            command.env(key, value);
        }
        command
            .env("WORKSPACE_ID", id)
            .env("GATEHOUSE_AGENT_SERVER", &self.config.gateway_url)
            .env("GATEHOUSE_AGENT_TOKEN", token)
            .env("GATEHOUSE_AGENT_SHELL", workspace.spec.shell().as_str())
            .env("GATEHOUSE_AGENT_DIR", self.files(id))
            .env("GATEHOUSE_LOG", "info");
        if let (Some(dev), Some(port)) = (workspace.spec.dev_command(), dev_port) {
            command.env("GATEHOUSE_AGENT_DEV_COMMAND", dev.as_str()).env("DEV_PORT", port.to_string());
        }
        command
            .current_dir(self.files(id))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(error_log))
            .kill_on_drop(false);
        command.spawn().map_err(|error| PlaneError::transient(format!("cannot start the workspace's agent: {error}")))
    }

    fn watch_child(&self, mut child: tokio::process::Child) -> Option<i32> {
        let pid = child.id().and_then(|pid| i32::try_from(pid).ok())?;
        let exited = Arc::new(AtomicBool::new(false));
        if let Ok(mut children) = self.children.lock() {
            children.insert(pid, exited.clone());
        }
        tokio::spawn(async move {
            let status = child.wait().await;
            tracing::info!(pid, ?status, "a workspace agent exited");
            exited.store(true, Ordering::SeqCst);
        });
        Some(pid)
    }
}

/// The environment variable that marks every process the control plane starts for a workspace.
const MARK: &str = "WORKSPACE_ID";

/// Whether process `pid` is gone or a zombie (exited, not yet reaped: alive to `kill(pid, 0)`, but nothing runs).
fn zombie(pid: impl std::fmt::Display) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// Every live process (but this one) whose environment holds the entry `mark` exactly.
fn marked_processes(mark: &[u8]) -> Vec<i32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|entry| entry == mark) && !zombie(pid) {
            found.extend(i32::try_from(pid).ok());
        }
    }
    found
}

/// The commit a fresh clone's `HEAD` is at.
async fn cloned_commit(clone: &Path) -> Option<String> {
    let output = tokio::process::Command::new("git")
        .args(["rev-parse", "--verify", "HEAD^{commit}"])
        .current_dir(clone)
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_string();
    output.status.success().then_some(commit)
}

/// A free TCP port on loopback for a dev server.
fn free_port() -> Result<u16, PlaneError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| PlaneError::transient(format!("no free port for the dev server: {error}")))
}

#[async_trait]
impl ControlPlane for LocalControlPlane {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn needs_credential(&self) -> bool {
        false
    }

    fn claim(&self) -> bool {
        let Ok(mut lock) = self.lock.lock() else { return false };
        if lock.is_some() {
            return true;
        }
        if self.make_dirs().is_err() {
            return false;
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.run_dir().join("lock"))
        {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(%error, "cannot open the workspaces lock");
                return false;
            }
        };
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(held) => {
                tracing::info!(dir = %self.config.root.display(), "this gateway runs the local workspaces");
                *lock = Some(held);
                true
            }
            Err(_) => false,
        }
    }

    async fn create(
        &self,
        workspace: &Workspace,
        _credential: &Credential,
        progress: &mut dyn Progress,
    ) -> Result<(), PlaneError> {
        let id = workspace.id.as_str();
        progress.reached(Phase::CreatingProject).await;
        self.make_dirs()?;
        let partial = self.partial(id);
        let _ = std::fs::remove_dir_all(&partial);
        progress.reached(Phase::CloningBlueprint).await;
        if !self.files(id).join(".git").is_dir() {
            let _ = std::fs::remove_dir_all(self.files(id));
            if let Err(error) = self.clone_source(workspace, &partial).await {
                let _ = std::fs::remove_dir_all(&partial);
                return Err(error);
            }
            // Read before the clone is moved in place, where nobody can have touched it yet.
            match cloned_commit(&partial).await {
                Some(commit) => progress.cloned(commit).await,
                None => tracing::warn!(workspace = id, "cannot read the commit a fresh clone is at"),
            }
            std::fs::rename(&partial, self.files(id))
                .map_err(|error| PlaneError::transient(format!("cannot move the clone in place: {error}")))?;
        }
        progress.reached(Phase::Configuring).await;
        Self::write_json(&self.tags_path(id), &workspace.tags())
    }

    async fn start(&self, workspace: &Workspace, _credential: &Credential) -> Result<Started, PlaneError> {
        let id = workspace.id.as_str();
        self.make_dirs()?;
        let previous = self.read_record(id);
        self.end_processes(id, previous.as_ref()).await;
        if !self.files(id).is_dir() {
            return Err(PlaneError::permanent("the workspace's files are missing (removed outside Gatehouse)"));
        }
        let mut tags = workspace.tags();
        tags.insert(TAG_GENERATION.to_string(), workspace.generation.to_string());
        let minter = Email::parse(MINTER).map_err(|error| PlaneError::permanent(error.to_string()))?;
        let label = format!("control plane: {id} (generation {})", workspace.generation);
        let minted = self
            .gateway
            .mint_token(label, id.to_string(), tags, &minter, &EventMetadata::system("control-plane"))
            .await
            .map_err(|error| PlaneError::transient(format!("cannot mint the agent's token: {error}")))?;
        let dev_port = match workspace.spec.dev_command() {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let child = match self.spawn_agent(workspace, &minted.token, dev_port) {
            Ok(child) => child,
            Err(error) => {
                self.revoke(&minted.id).await;
                return Err(error);
            }
        };
        let pid = self.watch_child(child).ok_or_else(|| PlaneError::transient("the agent exited at once"))?;
        let record = RunRecord { pid, generation: workspace.generation, token_id: minted.id, dev_port };
        Self::write_json(&self.record_path(id), &record)?;
        if let Some(previous) = previous.filter(|previous| previous.token_id != record.token_id) {
            self.revoke(&previous.token_id).await;
        }
        tracing::info!(workspace = id, pid, generation = workspace.generation, owner = %workspace.owner,
            "started a workspace agent");
        Ok(Started { dev_port })
    }

    async fn stop(&self, workspace: &str, _credential: &Credential) -> Result<(), PlaneError> {
        let record = self.read_record(workspace);
        self.end_processes(workspace, record.as_ref()).await;
        if let Some(record) = record {
            self.revoke(&record.token_id).await;
            let _ = std::fs::remove_file(self.record_path(workspace));
            tracing::info!(workspace, pid = record.pid, "stopped a workspace agent");
        }
        Ok(())
    }

    async fn delete(&self, workspace: &str, credential: &Credential) -> Result<(), PlaneError> {
        self.stop(workspace, credential).await?;
        self.remove_files(workspace)
    }

    async fn runtime(&self, workspace: &str) -> Runtime {
        match self.read_record(workspace) {
            Some(record) if self.is_agent_of(record.pid, workspace) => {
                Runtime::Running { generation: record.generation }
            }
            _ => Runtime::Stopped,
        }
    }

    async fn discover(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, PlaneError> {
        let mut found = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(self.run_dir()) else { return Ok(found) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".tags.json") else { continue };
            let Ok(raw) = std::fs::read(entry.path()) else { continue };
            let Ok(tags) = serde_json::from_slice::<BTreeMap<String, String>>(&raw) else { continue };
            // Discovery needs the project and the owner (shared/spec/portal.md §2.8).
            if tags.contains_key(TAG_OWNER) && tags.contains_key(domain::workspace::TAG_PROJECT) {
                found.insert(id.to_string(), tags);
            }
        }
        Ok(found)
    }

    fn channels(&self) -> ChannelRoute {
        ChannelRoute::Agent
    }
}
