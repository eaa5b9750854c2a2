//! The agent's side of [`crate::task`]: runs git in the workspace's directory and says what came of it.
//!
//! Every git is started directly (no shell), with `LC_ALL=C` (so its messages can be classified), no pager, no
//! terminal prompt, no hooks, and a deadline; what it prints is capped. A diff never touches the workspace: the
//! working tree is read into a throw-away index (a copy of the real one, `GIT_INDEX_FILE`) with `git add -A`, whose
//! tree is compared with the base's. A commit writes that tree as a commit on the current branch (`commit-tree`,
//! then `update-ref` against the `HEAD` it started from, so a concurrent commit by the builder is never lost), then
//! resets the real index to it. A push names its remote and refspec on the command line and gets its credential
//! through `GIT_ASKPASS` (the agent binary itself, answering from its environment; see [`ASKPASS_VARIABLE`]) with
//! every credential helper switched off, so the token is written nowhere in the workspace.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::task::{
    BaseKind, DiffBase, DiffReport, FailureKind, FileChange, FileStatus, GitCredential, GitTask, TaskOutcome,
    MAX_LISTED_FILES,
};

/// When set in its environment, the `gatehouse` binary is git's askpass helper: it prints
/// [`ASKPASS_USERNAME`] when git's prompt asks for a username and [`ASKPASS_PASSWORD`] otherwise, and exits.
pub const ASKPASS_VARIABLE: &str = "GATEHOUSE_GIT_ASKPASS";
/// The username the askpass helper answers with.
pub const ASKPASS_USERNAME: &str = "GATEHOUSE_GIT_USERNAME";
/// The password the askpass helper answers with.
pub const ASKPASS_PASSWORD: &str = "GATEHOUSE_GIT_PASSWORD";

/// The answer to git's askpass `prompt`, when this process was started as the askpass helper (`None` otherwise).
pub fn askpass_answer(prompt: &str) -> Option<String> {
    std::env::var_os(ASKPASS_VARIABLE)?;
    let variable = if prompt.starts_with("Username") { ASKPASS_USERNAME } else { ASKPASS_PASSWORD };
    Some(std::env::var(variable).unwrap_or_default())
}

/// The most of git's error output kept in a failure's message, in characters.
const MAX_MESSAGE: usize = 2_000;
/// The most bytes read from a git command's standard output other than the patch.
const MAX_OUTPUT: usize = 32 * 1024 * 1024;

/// Runs `task` in the repository at `dir`.
pub async fn run(dir: &Path, task: GitTask) -> TaskOutcome {
    let outcome = match task {
        GitTask::Diff { base, max_patch_bytes, timeout_secs } => {
            let git = Git::new(dir, timeout_secs);
            async {
                let state = git.preflight().await?;
                let (report, _) = git.diff(&state, &base, max_patch_bytes).await?;
                Ok(TaskOutcome::Diff { diff: report })
            }
            .await
        }
        GitTask::Commit { base, message, author_name, author_email, max_patch_bytes, timeout_secs } => {
            let git = Git::new(dir, timeout_secs);
            git.commit(&base, &message, &author_name, &author_email, max_patch_bytes).await
        }
        GitTask::Push { remote, commit, branch, credential, timeout_secs } => {
            let git = Git::new(dir, timeout_secs);
            git.push(&remote, &commit, &branch, credential.as_ref()).await
        }
    };
    outcome.unwrap_or_else(|failure| failure)
}

type Step<T> = Result<T, TaskOutcome>;

fn failed(kind: FailureKind, message: impl Into<String>) -> TaskOutcome {
    TaskOutcome::Failed { kind, message: message.into() }
}

/// What git printed.
struct Output {
    success: bool,
    stdout: Vec<u8>,
    /// Whether standard output passed its cap (the rest was not read; git was killed).
    cut: bool,
    stderr: String,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_string()
    }
}

/// Where the repository stands before a task.
struct State {
    head: String,
    branch: String,
    git_dir: PathBuf,
}

struct Git {
    dir: PathBuf,
    deadline: Instant,
    timeout_secs: u64,
}

impl Git {
    fn new(dir: &Path, timeout_secs: u64) -> Self {
        let timeout_secs = timeout_secs.clamp(1, 3_600);
        Self { dir: dir.to_path_buf(), deadline: Instant::now() + Duration::from_secs(timeout_secs), timeout_secs }
    }

    /// The last of git's output for a message, with the workspace's and the system's temporary paths elided.
    fn tail(&self, text: &str) -> String {
        let text = text.replace(&self.dir.display().to_string(), "<workspace>");
        let text = text.replace(&std::env::temp_dir().display().to_string(), "<tmp>");
        tail(&text)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("git");
        command
            .current_dir(&self.dir)
            .args([
                "-c",
                "core.quotePath=false",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "protocol.fd.allow=never",
                "-c",
                "color.ui=false",
            ])
            .args(args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_PAGER", "cat")
            .env("GIT_OPTIONAL_LOCKS", "0")
            // What the builder replaced with `git replace` is not what is published: objects as they are.
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GATEHOUSE_AGENT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, ended whole (see `GroupGuard`): git's helpers (`git-remote-http`) die with it.
            .process_group(0)
            .kill_on_drop(true);
        command
    }

    /// Runs a prepared command with `stdin`, reading at most `cap` bytes of its output, within the deadline.
    async fn run(&self, mut command: tokio::process::Command, stdin: Option<&[u8]>, cap: usize) -> Step<Output> {
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        if !self.dir.is_dir() {
            return Err(failed(FailureKind::NotARepository, "the workspace's directory does not exist"));
        }
        let mut child = command.spawn().map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => failed(FailureKind::GitMissing, "git is not installed in the workspace"),
            _ => failed(FailureKind::GitMissing, format!("cannot run git: {error}")),
        })?;
        let _group = child.id().map(GroupGuard);
        let (out, err, input) = (child.stdout.take(), child.stderr.take(), child.stdin.take());
        let work = async {
            let feed = async {
                if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                    let _ = pipe.write_all(bytes).await;
                }
            };
            // Each pipe is dropped when its reader is done: git, blocked writing past a cap, then gets EPIPE and
            // ends (instead of holding its other pipe open for ever).
            let read_out = async move {
                let mut stdout = Vec::new();
                let mut cut = false;
                if let Some(pipe) = out {
                    let _ = pipe.take(cap as u64 + 1).read_to_end(&mut stdout).await;
                    if stdout.len() > cap {
                        stdout.truncate(cap);
                        cut = true;
                    }
                }
                (stdout, cut)
            };
            let read_err = async move {
                let mut stderr = Vec::new();
                if let Some(pipe) = err {
                    let _ = pipe.take(64 * 1024).read_to_end(&mut stderr).await;
                }
                stderr
            };
            let (_, (stdout, cut), stderr) = tokio::join!(feed, read_out, read_err);
            if cut {
                let _ = child.start_kill();
            }
            let status = child.wait().await;
            (status, stdout, cut, stderr)
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let (status, stdout, cut, stderr) = tokio::time::timeout(left, work).await.map_err(|_| {
            failed(FailureKind::Timeout, format!("git took longer than the task's {} s", self.timeout_secs))
        })?;
        let status = status.map_err(|error| failed(FailureKind::Git, format!("git: {error}")))?;
        Ok(Output { success: status.success() || cut, stdout, cut, stderr: String::from_utf8_lossy(&stderr).into() })
    }

    async fn git(&self, args: &[&str]) -> Step<Output> {
        self.run(self.command(args), None, MAX_OUTPUT).await
    }

    /// `git args`, which must succeed; its trimmed output.
    async fn must(&self, args: &[&str]) -> Step<String> {
        let output = self.git(args).await?;
        if !output.success {
            return Err(failed(FailureKind::Git, format!("git {}: {}", args.join(" "), self.tail(&output.stderr))));
        }
        Ok(output.text())
    }

    /// A repository (on a branch or not: a push names its commit).
    async fn preflight_repository(&self) -> Step<()> {
        let inside = self.git(&["rev-parse", "--is-inside-work-tree"]).await?;
        if !inside.success || inside.text() != "true" {
            return Err(failed(FailureKind::NotARepository, "the workspace's directory is not a git repository"));
        }
        Ok(())
    }

    /// A repository with a commit, on a branch, with nothing in progress.
    async fn preflight(&self) -> Step<State> {
        self.preflight_repository().await?;
        let head = self.git(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"]).await?;
        if !head.success {
            return Err(failed(FailureKind::NotARepository, "the workspace's repository has no commit yet"));
        }
        let branch = self.git(&["symbolic-ref", "--quiet", "--short", "HEAD"]).await?;
        if !branch.success {
            return Err(failed(
                FailureKind::DetachedHead,
                "HEAD is detached (not on a branch): check out a branch in the workspace first",
            ));
        }
        let git_dir = PathBuf::from(self.must(&["rev-parse", "--absolute-git-dir"]).await?);
        for (marker, what) in [
            ("MERGE_HEAD", "a merge"),
            ("rebase-merge", "a rebase"),
            ("rebase-apply", "a rebase or git am"),
            ("CHERRY_PICK_HEAD", "a cherry-pick"),
            ("REVERT_HEAD", "a revert"),
            ("BISECT_LOG", "a bisect"),
        ] {
            if git_dir.join(marker).exists() {
                return Err(failed(
                    FailureKind::OperationInProgress,
                    format!("{what} is in progress in the workspace: finish or abort it first"),
                ));
            }
        }
        if !self.must(&["ls-files", "--unmerged"]).await?.is_empty() {
            return Err(failed(
                FailureKind::OperationInProgress,
                "the workspace has unmerged paths: resolve them first",
            ));
        }
        Ok(State { head: head.text(), branch: branch.text(), git_dir })
    }

    /// The base commit and why (see [`DiffBase`]).
    async fn base(&self, base: &DiffBase) -> Step<(String, BaseKind)> {
        let commit_of = |raw: &str| format!("{raw}^{{commit}}");
        if let Some(published) = base.published.as_deref().filter(|raw| is_hex_id(raw)) {
            let known = self.git(&["rev-parse", "--verify", "--quiet", &commit_of(published)]).await?;
            if known.success && self.git(&["merge-base", "--is-ancestor", published, "HEAD"]).await?.success {
                return Ok((known.text(), BaseKind::Published));
            }
        }
        if let Some(source) = &base.source {
            let known = if is_hex_id(source) {
                self.git(&["rev-parse", "--verify", "--quiet", &commit_of(source)]).await?
            } else {
                return Err(failed(FailureKind::BadTask, "the recorded source is not a commit id"));
            };
            if !known.success {
                return Err(failed(
                    FailureKind::NoBase,
                    format!(
                        "the workspace no longer has the commit it was cloned at ({source}): nothing to diff against"
                    ),
                ));
            }
            let merge_base = self.git(&["merge-base", "HEAD", source]).await?;
            let base =
                if merge_base.success && !merge_base.text().is_empty() { merge_base.text() } else { known.text() };
            return Ok((base, BaseKind::Blueprint));
        }
        let remote = format!("refs/remotes/origin/{}", base.blueprint_branch);
        if !valid_branch(&base.blueprint_branch) {
            return Err(failed(FailureKind::BadTask, "the blueprint's branch is not a valid branch name"));
        }
        let merge_base = self.git(&["merge-base", "HEAD", &remote]).await?;
        if merge_base.success && !merge_base.text().is_empty() {
            return Ok((merge_base.text(), BaseKind::Blueprint));
        }
        Err(failed(
            FailureKind::NoBase,
            format!(
                "the workspace's history does not contain the blueprint's branch ({remote}): nothing to diff against"
            ),
        ))
    }

    /// The tree of the working tree as `git add -A` sees it, through a throw-away copy of the index.
    async fn working_tree(&self, state: &State) -> Step<String> {
        let index = PathBuf::from(self.must(&["rev-parse", "--path-format=absolute", "--git-path", "index"]).await?);
        let scratch = state.git_dir.join(format!("gatehouse-index-{:016x}", rand::random::<u64>()));
        let _cleanup = RemoveOnDrop(scratch.clone());
        if index.exists() {
            std::fs::copy(&index, &scratch)
                .map_err(|error| failed(FailureKind::Git, format!("cannot copy the index: {error}")))?;
        }
        let in_scratch = |args: &'static [&'static str]| {
            let mut command = self.command(args);
            command.env("GIT_INDEX_FILE", &scratch);
            async move {
                let output = self.run(command, None, MAX_OUTPUT).await?;
                if !output.success {
                    return Err(failed(
                        FailureKind::Git,
                        format!("git {}: {}", args.join(" "), self.tail(&output.stderr)),
                    ));
                }
                Ok(output.text())
            }
        };
        in_scratch(&["add", "--all", "--", ":/"]).await?;
        in_scratch(&["write-tree"]).await
    }

    /// The diff of the working tree against the base; and the working tree's tree.
    async fn diff(&self, state: &State, base: &DiffBase, max_patch_bytes: usize) -> Step<(DiffReport, String)> {
        let (base_commit, base_kind) = self.base(base).await?;
        let tree = self.working_tree(state).await?;
        let report = self.report(state, &base_commit, base_kind, &tree, max_patch_bytes).await?;
        Ok((report, tree))
    }

    async fn report(
        &self,
        state: &State,
        base_commit: &str,
        base_kind: BaseKind,
        tree: &str,
        max_patch_bytes: usize,
    ) -> Step<DiffReport> {
        let names = self.git(&["diff-tree", "-r", "-z", "--no-renames", "--name-status", base_commit, tree]).await?;
        let counts = self.git(&["diff-tree", "-r", "-z", "--no-renames", "--numstat", base_commit, tree]).await?;
        if !names.success || !counts.success {
            return Err(failed(FailureKind::Git, format!("git diff-tree: {}", self.tail(&names.stderr))));
        }
        let mut files = parse_name_status(&names.stdout);
        let numbers = parse_numstat(&counts.stdout);
        let (mut insertions, mut deletions) = (0u64, 0u64);
        for (file, counted) in files.iter_mut().zip(numbers.iter()) {
            if let Some((added, removed)) = counted {
                file.insertions = *added;
                file.deletions = *removed;
                insertions = insertions.saturating_add(*added);
                deletions = deletions.saturating_add(*removed);
            } else {
                file.binary = true;
            }
        }
        let files_changed = files.len() as u64;
        let files_truncated = files.len() > MAX_LISTED_FILES;
        files.truncate(MAX_LISTED_FILES);
        let patch_command = self.command(&["diff-tree", "-r", "-p", "--no-renames", "--no-color", base_commit, tree]);
        let cap = max_patch_bytes.min(MAX_OUTPUT);
        let patch = self.run(patch_command, None, cap).await?;
        if !patch.success {
            return Err(failed(FailureKind::Git, format!("git diff-tree -p: {}", self.tail(&patch.stderr))));
        }
        let (patch, patch_truncated) = cut_patch(patch.stdout, patch.cut, cap);
        Ok(DiffReport {
            base_commit: base_commit.to_string(),
            base_kind,
            head_commit: state.head.clone(),
            branch: state.branch.clone(),
            files_changed,
            insertions,
            deletions,
            files,
            files_truncated,
            patch,
            patch_truncated,
        })
    }

    async fn commit(
        &self,
        base: &DiffBase,
        message: &str,
        author_name: &str,
        author_email: &str,
        max_patch_bytes: usize,
    ) -> Step<TaskOutcome> {
        if message.trim().is_empty() || message.contains('\0') {
            return Err(failed(FailureKind::BadTask, "a commit needs a message without NUL bytes"));
        }
        if author_name.trim().is_empty() || author_email.contains(['<', '>', '\n', '\0']) || !author_email.contains('@')
        {
            return Err(failed(FailureKind::BadTask, "a commit needs an author's name and email address"));
        }
        let state = self.preflight().await?;
        let (base_commit, base_kind) = self.base(base).await?;
        let tree = self.working_tree(&state).await?;
        let base_tree = self.must(&["rev-parse", &format!("{base_commit}^{{tree}}")]).await?;
        if tree == base_tree {
            return Ok(TaskOutcome::NoChanges { base_commit });
        }
        let head_tree = self.must(&["rev-parse", &format!("{}^{{tree}}", state.head)]).await?;
        let (commit, created) = if tree == head_tree {
            (state.head.clone(), false)
        } else {
            let mut command = self.command(&["commit-tree", &tree, "-p", &state.head, "-F", "-"]);
            let name = author_name.replace(['<', '>', '\n'], " ");
            command
                .env("GIT_AUTHOR_NAME", &name)
                .env("GIT_AUTHOR_EMAIL", author_email)
                .env("GIT_COMMITTER_NAME", &name)
                .env("GIT_COMMITTER_EMAIL", author_email);
            let output = self.run(command, Some(message.as_bytes()), MAX_OUTPUT).await?;
            if !output.success {
                return Err(failed(FailureKind::Git, format!("git commit-tree: {}", self.tail(&output.stderr))));
            }
            let commit = output.text();
            let reference = format!("refs/heads/{}", state.branch);
            let moved = self.git(&["update-ref", "-m", "gatehouse: publish", &reference, &commit, &state.head]).await?;
            if !moved.success {
                return Err(failed(
                    FailureKind::Git,
                    format!("the branch moved while the commit was made; try again ({})", self.tail(&moved.stderr)),
                ));
            }
            // The real index follows the branch (the working tree is left as it is: it is what was committed).
            let _ = self.git(&["reset", "--quiet", "--mixed"]).await?;
            (commit, true)
        };
        let state = State { head: commit.clone(), ..state };
        let diff = self.report(&state, &base_commit, base_kind, &tree, max_patch_bytes).await?;
        Ok(TaskOutcome::Committed { commit, created, diff })
    }

    async fn push(
        &self,
        remote: &str,
        commit: &str,
        branch: &str,
        credential: Option<&GitCredential>,
    ) -> Step<TaskOutcome> {
        if !is_hex_id(commit) {
            return Err(failed(FailureKind::BadTask, "a push names a full commit id"));
        }
        if !valid_branch(branch) {
            return Err(failed(FailureKind::BadTask, format!("{branch:?} is not a valid branch name")));
        }
        if remote.is_empty() || remote.starts_with('-') || remote.contains('\0') {
            return Err(failed(FailureKind::BadTask, "the remote is not a URL or path"));
        }
        self.preflight_repository().await?;
        if !self.git(&["cat-file", "-e", &format!("{commit}^{{commit}}")]).await?.success {
            return Err(failed(FailureKind::BadTask, format!("the workspace has no commit {commit}")));
        }
        // The push runs from a scratch repository that borrows the workspace's objects (alternates) and reads no
        // system, global or workspace configuration: nothing the workspace's user configured (a credential helper
        // that stores what it is given, a `url.<base>.insteadOf` that sends the push elsewhere, a proxy, hooks)
        // comes near the credential.
        let scratch =
            ScratchDir::new().map_err(|error| failed(FailureKind::Git, format!("a scratch directory: {error}")))?;
        let repository = scratch.0.join("repository.git");
        let isolated = |args: &[&str]| {
            let mut command = self.command(args);
            command
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("HOME", &scratch.0)
                .env("XDG_CONFIG_HOME", &scratch.0)
                .current_dir(&scratch.0);
            command
        };
        let init = self.run(isolated(&["init", "--bare", "--quiet", "repository.git"]), None, MAX_OUTPUT).await?;
        if !init.success {
            return Err(failed(FailureKind::Git, format!("git init: {}", self.tail(&init.stderr))));
        }
        let common = PathBuf::from(self.must(&["rev-parse", "--path-format=absolute", "--git-common-dir"]).await?);
        let (objects, shallow) = (common.join("objects"), common.join("shallow"));
        let borrowed = std::fs::write(repository.join("objects/info/alternates"), format!("{}\n", objects.display()))
            .and_then(|()| {
                if shallow.exists() {
                    std::fs::copy(&shallow, repository.join("shallow")).map(drop)
                } else {
                    Ok(())
                }
            });
        borrowed.map_err(|error| failed(FailureKind::Git, format!("cannot prepare the push: {error}")))?;
        let git_dir = format!("--git-dir={}", repository.display());
        let refspec = format!("{commit}:refs/heads/{branch}");
        let mut command = isolated(&[
            &git_dir,
            "-c",
            "credential.helper=",
            "-c",
            "core.askPass=",
            "push",
            "--porcelain",
            "--no-verify",
            "--",
            remote,
            &refspec,
        ]);
        match (credential, std::env::current_exe()) {
            (Some(credential), Ok(program)) => {
                command
                    .env("GIT_ASKPASS", program)
                    .env(ASKPASS_VARIABLE, "1")
                    .env(ASKPASS_USERNAME, &credential.username)
                    .env(ASKPASS_PASSWORD, credential.password.as_str());
            }
            _ => {
                command.env_remove("GIT_ASKPASS").env_remove("SSH_ASKPASS");
            }
        }
        let output = self.run(command, None, 1024 * 1024).await?;
        let mut said = format!("{}\n{}", String::from_utf8_lossy(&output.stdout), output.stderr);
        if let Some(credential) = credential {
            if !credential.password.is_empty() {
                said = said.replace(credential.password.as_str(), "[redacted]");
            }
        }
        if output.success {
            return Ok(TaskOutcome::Pushed { commit: commit.to_string(), branch: branch.to_string() });
        }
        Err(failed(classify_push(&said), self.tail(&said)))
    }
}

/// What a failed push's output means.
fn classify_push(said: &str) -> FailureKind {
    let lower = said.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|needle| lower.contains(needle));
    if any(&[
        "authentication failed",
        "could not read username",
        "could not read password",
        "invalid username or password",
        "http basic: access denied",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
        "permission denied (publickey",
        "terminal prompts disabled",
    ]) {
        FailureKind::AuthenticationFailed
    } else if any(&["[rejected]", "[remote rejected]", "! [", "hook declined", "protected branch", "is not a valid"]) {
        FailureKind::PushRejected
    } else if any(&[
        "could not resolve host",
        "failed to connect",
        "connection refused",
        "connection reset",
        "connection timed out",
        "operation timed out",
        "unexpected disconnect",
        "the remote end hung up",
        "early eof",
        "returned error: 5",
        "empty reply from server",
        "recv failure",
        "send failure",
    ]) {
        FailureKind::Unreachable
    } else {
        FailureKind::Git
    }
}

/// Ends a git's whole process group when dropped (the task finished, was aborted, or timed out): `kill_on_drop`
/// ends only git itself, and a push's `git-remote-http`, which holds the credential, would outlive it.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.0) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A private scratch directory under the system's temporary directory, removed with everything in it when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Scratch directories of pushes older than this are ones a killed agent left behind.
    const STALE: Duration = Duration::from_secs(24 * 3600);

    fn new() -> std::io::Result<Self> {
        Self::sweep();
        let path = std::env::temp_dir().join(format!("gatehouse-push-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl ScratchDir {
    /// Removes what agents killed mid-push left (a push takes at most an hour: `Git::new` caps its time).
    fn sweep() {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for entry in entries.flatten() {
            let stale = entry.file_name().to_string_lossy().starts_with("gatehouse-push-")
                && entry
                    .metadata()
                    .and_then(|meta| meta.modified())
                    .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > Self::STALE));
            if stale {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deletes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The last [`MAX_MESSAGE`] characters of git's output, trimmed.
fn tail(text: &str) -> String {
    let text = text.trim();
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(MAX_MESSAGE)).collect()
}

fn is_hex_id(raw: &str) -> bool {
    (raw.len() == 40 || raw.len() == 64) && raw.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// A branch name git accepts (`git check-ref-format --branch`'s rules, restricted to `A-Z a-z 0-9 . _ / -`).
pub fn valid_branch(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._/-".contains(&byte))
        && !name.starts_with(['-', '/', '.'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("/.")
        && !name.contains(".lock/")
        && name != "HEAD"
}

/// `git diff-tree -z --name-status`: `STATUS\0PATH\0` pairs.
fn parse_name_status(raw: &[u8]) -> Vec<FileChange> {
    let mut fields = raw.split(|byte| *byte == 0).filter(|field| !field.is_empty());
    let mut files = Vec::new();
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let status = match status.first() {
            Some(b'A') => FileStatus::Added,
            Some(b'D') => FileStatus::Deleted,
            Some(b'T') => FileStatus::TypeChanged,
            _ => FileStatus::Modified,
        };
        let path = String::from_utf8_lossy(path).into_owned();
        files.push(FileChange { path, status, insertions: 0, deletions: 0, binary: false });
    }
    files
}

/// `git diff-tree -z --numstat`: `ADDED\tREMOVED\tPATH\0` per file (`-\t-` for a binary one), in the same order as
/// `--name-status`.
fn parse_numstat(raw: &[u8]) -> Vec<Option<(u64, u64)>> {
    raw.split(|byte| *byte == 0)
        .filter(|field| !field.is_empty())
        .map(|field| {
            let text = String::from_utf8_lossy(field);
            let mut parts = text.splitn(3, '\t');
            let added = parts.next()?.parse().ok()?;
            let removed = parts.next()?.parse().ok()?;
            Some((added, removed))
        })
        .collect()
}

/// The patch as text of at most `cap` bytes, cut at its last whole line when git's output passed the cap or the
/// text did (bytes that are not UTF-8 become U+FFFD, three bytes each: a Latin-1 file's patch grows).
fn cut_patch(bytes: Vec<u8>, cut: bool, cap: usize) -> (String, bool) {
    let text = String::from_utf8(bytes).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
    // A NUL never reaches a stored patch (git prints binary files as one line, but a path may hold odd bytes).
    let mut text = text.replace('\0', "\u{fffd}");
    let cut = cut || text.len() > cap;
    if cut {
        let mut end = text.len().min(cap);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let end = text[..end].rfind('\n').map(|at| at + 1).unwrap_or(0);
        text.truncate(end);
    }
    (text, cut)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn branch_names_follow_gits_rules() {
        for good in ["main", "gatehouse/publish/1b2c", "feature/a.b-c_d"] {
            assert!(valid_branch(good), "{good}");
        }
        for bad in ["", "-x", "/x", "x/", "a..b", "a//b", "a/.b", "x.lock", "a b", "a:b", "a~1", "HEAD", ".x", "x."] {
            assert!(!valid_branch(bad), "{bad}");
        }
    }

    #[test]
    fn pushes_fail_for_a_named_reason() {
        let auth = "fatal: Authentication failed for 'http://127.0.0.1:1/acme/web.git/'";
        assert_eq!(classify_push(auth), FailureKind::AuthenticationFailed);
        assert_eq!(classify_push(" ! [rejected]        x -> x (non-fast-forward)"), FailureKind::PushRejected);
        assert_eq!(classify_push(" ! [remote rejected] x -> x (hook declined)"), FailureKind::PushRejected);
        let down = "fatal: unable to access 'http://127.0.0.1:1/': Failed to connect to 127.0.0.1 port 1";
        assert_eq!(classify_push(down), FailureKind::Unreachable);
        assert_eq!(classify_push("something else"), FailureKind::Git);
    }

    #[test]
    fn patches_are_cut_at_a_line_end() {
        assert_eq!(cut_patch(b"a\nbc\nde".to_vec(), true, 7), ("a\nbc\n".to_string(), true));
        assert_eq!(cut_patch(b"a\nbc\nde".to_vec(), false, 7), ("a\nbc\nde".to_string(), false));
        assert_eq!(cut_patch(b"abc".to_vec(), true, 3), (String::new(), true));
        assert_eq!(cut_patch(vec![b'a', 0xff, b'\n'], false, 10).0, "a\u{fffd}\n");
        // Latin-1 text grows when made UTF-8: still within the cap, cut at a line end.
        let latin = b"caf\xe9\n".repeat(10);
        let (text, cut) = cut_patch(latin.clone(), false, latin.len());
        assert!(cut && text.len() <= latin.len() && text.ends_with('\n'), "{text:?}");
    }

    #[test]
    fn diff_tree_output_is_parsed() {
        let names = b"M\0src/a b.rs\0A\0new\0D\0gone\0";
        let files = parse_name_status(names);
        assert_eq!(files.iter().map(|file| file.path.as_str()).collect::<Vec<_>>(), ["src/a b.rs", "new", "gone"]);
        assert_eq!(files[1].status, FileStatus::Added);
        assert_eq!(parse_numstat(b"3\t1\tsrc/a b.rs\0-\t-\tnew\0"), vec![Some((3, 1)), None]);
    }
}
