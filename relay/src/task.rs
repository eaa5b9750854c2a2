//! Git work in a workspace, asked by the gateway and run by the workspace's agent: the third kind of session on an
//! agent connection, beside terminals and previews (ADR 0024).
//!
//! The gateway opens a task session with one [`Frame::Task`](crate::mux::Frame::Task) whose body is a [`GitTask`]
//! as JSON (at most [`MAX_DATA`](crate::mux::MAX_DATA) bytes). The agent answers `Opened`, runs `git` in its
//! workspace directory (never through a shell, never by typing into a terminal), and sends the [`TaskOutcome`] as
//! JSON in `Data` frames within the session's window, then `Close`. The gateway caps what it collects
//! ([`MAX_OUTCOME_BYTES`]) and closes the session when it gives up waiting, which makes the agent kill the `git`
//! process.
//!
//! **API Boundary:** the JSON shapes are part of the agent protocol (docs/API.md, "Agent protocol"): add fields with
//! defaults and variants, never change or remove them. An agent announces that it runs tasks with the
//! [`FEATURE_GIT`] feature in its `hello`.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The `hello` feature of an agent that runs [`GitTask`]s.
pub const FEATURE_GIT: &str = "git";

/// The most bytes of outcome the gateway collects from one task (a patch is capped well below this by the task).
pub const MAX_OUTCOME_BYTES: usize = 16 * 1024 * 1024;

/// The most changed files a diff lists one by one (the counts cover every file).
pub const MAX_LISTED_FILES: usize = 10_000;

/// What the gateway asks an agent to do in its workspace's git repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GitTask {
    /// The diff of the workspace (its working tree, with untracked files and without ignored ones, as `git add -A`
    /// would see it) against its base. Changes nothing in the workspace.
    Diff {
        /// Where the diff starts.
        base: DiffBase,
        /// The patch's cap in bytes; a longer patch is cut at a line end and marked truncated.
        max_patch_bytes: usize,
        /// How long git may take, in seconds.
        timeout_secs: u64,
    },
    /// Commits every change of the working tree (as `git add -A` sees them; no hooks run) on the current branch,
    /// and reports the commit with its diff against the base. When the working tree equals `HEAD` (the builder
    /// committed already), `HEAD` is the commit. When it equals the base, nothing is committed:
    /// [`TaskOutcome::NoChanges`].
    Commit {
        /// Where the diff starts.
        base: DiffBase,
        /// The commit message.
        message: String,
        /// The author (and committer): a name.
        author_name: String,
        /// The author's (and committer's) email address.
        author_email: String,
        /// The patch's cap in bytes.
        max_patch_bytes: usize,
        /// How long git may take, in seconds.
        timeout_secs: u64,
    },
    /// Pushes `commit` to `remote` as the branch `branch` (never written into the workspace's configuration).
    Push {
        /// A URL or path git accepts as a remote.
        remote: String,
        /// The commit.
        commit: String,
        /// The branch to create or update on the remote (fast-forward only).
        branch: String,
        /// The credential git gets when the remote asks for one: handed to git for this one push through
        /// `GIT_ASKPASS`, with every configured credential helper switched off, so it is stored nowhere.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<GitCredential>,
        /// How long the push may take, in seconds.
        timeout_secs: u64,
    },
}

impl GitTask {
    /// The task's name, for logs (never its arguments: a push carries a credential).
    pub fn name(&self) -> &'static str {
        match self {
            GitTask::Diff { .. } => "diff",
            GitTask::Commit { .. } => "commit",
            GitTask::Push { .. } => "push",
        }
    }

    /// How long the gateway waits for the outcome: the task's own time plus a margin for the connection.
    pub fn deadline(&self) -> std::time::Duration {
        let secs = match self {
            GitTask::Diff { timeout_secs, .. }
            | GitTask::Commit { timeout_secs, .. }
            | GitTask::Push { timeout_secs, .. } => *timeout_secs,
        };
        std::time::Duration::from_secs(secs.saturating_add(10))
    }
}

/// Where a diff starts: facts the gateway recorded, never refs the builder can move. The last published commit
/// when it is an ancestor of `HEAD` (a rewritten history starts again from the blueprint); else where `HEAD`'s
/// history meets the commit the control plane cloned; only for a workspace cloned before that was recorded, where it
/// meets the blueprint's branch as the workspace's `origin` remote has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffBase {
    /// The commit last published from this workspace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    /// The commit the control plane cloned the workspace at, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The blueprint's branch the workspace was cloned from (the last resort above).
    pub blueprint_branch: String,
}

/// The username and password (a token) git answers a remote's request for credentials with. Its `Debug` shows
/// neither; it is wiped when dropped.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCredential {
    /// The username (`x-access-token` for GitHub, `oauth2` for GitLab).
    pub username: String,
    /// The token.
    pub password: Zeroizing<String>,
}

impl fmt::Debug for GitCredential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("GitCredential([redacted])")
    }
}

/// Which commit a diff started from, and why that one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseKind {
    /// The commit last published from this workspace.
    Published,
    /// Where the workspace's history left the blueprint's branch (a first publish).
    Blueprint,
}

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// New.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
    /// Its type changed (a file became a symbolic link, say).
    TypeChanged,
}

/// One changed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Its path in the repository (as git prints it, not quoted).
    pub path: String,
    /// How it changed.
    pub status: FileStatus,
    /// Lines added (0 for a binary file).
    pub insertions: u64,
    /// Lines removed (0 for a binary file).
    pub deletions: u64,
    /// Whether git sees it as binary (no line counts, no patch text).
    pub binary: bool,
}

/// A diff as the agent computed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    /// The commit the diff starts from.
    pub base_commit: String,
    /// Why that commit.
    pub base_kind: BaseKind,
    /// The workspace's `HEAD` when the diff was made.
    pub head_commit: String,
    /// The current branch.
    pub branch: String,
    /// Files changed.
    pub files_changed: u64,
    /// Lines added.
    pub insertions: u64,
    /// Lines removed.
    pub deletions: u64,
    /// The changed files, in path order (at most [`MAX_LISTED_FILES`]).
    pub files: Vec<FileChange>,
    /// Whether `files` stops short of `files_changed`.
    pub files_truncated: bool,
    /// The unified diff (`git diff` of the two trees; binary files as one line each), cut at a line end when it
    /// passes the task's cap.
    pub patch: String,
    /// Whether `patch` was cut.
    pub patch_truncated: bool,
}

/// What a task came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The diff asked for.
    Diff {
        /// The diff.
        diff: DiffReport,
    },
    /// The commit made (or `HEAD`, already holding every change), with its diff against the base.
    Committed {
        /// The commit's id.
        commit: String,
        /// Whether the agent made it (`false`: `HEAD` already held every change).
        created: bool,
        /// Its diff against the base.
        diff: DiffReport,
    },
    /// The working tree equals the base: nothing to publish.
    NoChanges {
        /// The base.
        base_commit: String,
    },
    /// The remote has the branch at the commit.
    Pushed {
        /// The commit.
        commit: String,
        /// The branch.
        branch: String,
    },
    /// The task could not be done.
    Failed {
        /// Why, as a kind the gateway decides on.
        kind: FailureKind,
        /// What git or the agent said (no credential; paths outside the workspace elided).
        message: String,
    },
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// `git` cannot be run in the workspace.
    GitMissing,
    /// The workspace's directory is not a git repository (or has no commit).
    NotARepository,
    /// `HEAD` is not on a branch.
    DetachedHead,
    /// A merge, rebase, cherry-pick, revert or bisect is in progress, or paths are unmerged.
    OperationInProgress,
    /// No base commit could be found (the blueprint's branch is not in the workspace's history).
    NoBase,
    /// The remote asked for credentials and refused the ones given (or none were given).
    AuthenticationFailed,
    /// The remote refused the push (not a fast-forward, a hook, a refused branch name, a protected branch).
    PushRejected,
    /// The remote could not be reached, or the connection broke.
    Unreachable,
    /// Git took longer than the task's time.
    Timeout,
    /// The task was malformed (a bad branch name, an empty message).
    BadTask,
    /// Anything else git reported.
    Git,
}

impl FailureKind {
    /// Whether trying the same task again later may succeed without anyone changing anything.
    pub fn transient(self) -> bool {
        matches!(self, FailureKind::Unreachable | FailureKind::Timeout)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tasks_and_outcomes_have_a_stable_json_form() {
        let task = GitTask::Push {
            remote: "https://git.example.com/acme/web.git".into(),
            commit: "a".repeat(40),
            branch: "gatehouse/publish/r1".into(),
            credential: Some(GitCredential { username: "oauth2".into(), password: Zeroizing::new("s3cret".into()) }),
            timeout_secs: 60,
        };
        let text = serde_json::to_string(&task).unwrap();
        assert!(text.starts_with(r#"{"op":"push","remote":"#), "{text}");
        assert_eq!(serde_json::from_str::<GitTask>(&text).unwrap(), task);
        assert!(!format!("{task:?}").contains("s3cret"), "Debug never shows the token");
        let outcome = TaskOutcome::Failed { kind: FailureKind::PushRejected, message: "non-fast-forward".into() };
        let text = serde_json::to_string(&outcome).unwrap();
        assert_eq!(text, r#"{"outcome":"failed","kind":"push_rejected","message":"non-fast-forward"}"#);
        let diff = GitTask::Diff {
            base: DiffBase { published: None, source: None, blueprint_branch: "main".into() },
            max_patch_bytes: 10,
            timeout_secs: 5,
        };
        assert_eq!(
            serde_json::to_string(&diff).unwrap(),
            r#"{"op":"diff","base":{"blueprint_branch":"main"},"max_patch_bytes":10,"timeout_secs":5}"#
        );
    }
}
