#![allow(clippy::unwrap_used)]

use cqrs_es::test::TestFramework;

use super::*;
use crate::blueprint::{GitBranch, GitRepository, Shell};

fn ada() -> Email {
    Email::parse("ada@example.com").unwrap()
}

fn ws(id: &str) -> WorkspaceId {
    WorkspaceId::parse(id).unwrap()
}

fn spec() -> LocalSource {
    LocalSource::new(
        GitRepository::parse("https://github.com/acme/web.git").unwrap(),
        GitBranch::parse("main").unwrap(),
        None,
        vec![],
        Shell::parse("/bin/sh").unwrap(),
    )
    .unwrap()
}

fn launched(id: &str, name: &str) -> WorkspaceEvent {
    WorkspaceEvent::WorkspaceLaunched {
        workspace: ws(id),
        owner: ada(),
        name: WorkspaceName::parse(name).unwrap(),
        blueprint_key: BlueprintKey::parse("web").unwrap(),
        project_id: "local/web".into(),
        spec: spec(),
        by: ada(),
    }
}

fn launch(id: &str, name: &str, limit: Option<u32>) -> WorkspaceCommand {
    WorkspaceCommand::Launch {
        workspace: ws(id),
        owner: ada(),
        name: WorkspaceName::parse(name).unwrap(),
        blueprint_key: BlueprintKey::parse("web").unwrap(),
        project_id: "local/web".into(),
        spec: spec(),
        limit,
        by: ada(),
    }
}

fn state(events: Vec<WorkspaceEvent>) -> Workspaces {
    let mut aggregate = Workspaces::default();
    for event in events {
        aggregate.apply(event);
    }
    aggregate
}

#[test]
fn names_are_one_line_and_unique_per_owner_ignoring_case() {
    for bad in ["", "   ", "a\nb", "tab\there", &"n".repeat(64)] {
        assert_eq!(WorkspaceName::parse(bad).unwrap_err().field, "name", "{bad:?}");
    }
    assert_eq!(WorkspaceName::parse("  My app ").unwrap().as_str(), "My app");
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "Dashboard")])
        .when(launch("ws-2", "dashboard", None))
        .then_expect_error(WorkspaceError::NameTaken(WorkspaceName::parse("dashboard").unwrap()));
    // A deleted workspace's name is free again; a rename may change only the case of its own name.
    TestFramework::<Workspaces>::with(())
        .given(vec![
            launched("ws-1", "Dashboard"),
            WorkspaceEvent::WorkspaceDeleteRequested { workspace: ws("ws-1"), by: ada() },
        ])
        .when(launch("ws-2", "dashboard", None))
        .then_expect_events(vec![launched("ws-2", "dashboard")]);
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "Dashboard")])
        .when(WorkspaceCommand::Rename {
            workspace: ws("ws-1"),
            name: WorkspaceName::parse("DASHBOARD").unwrap(),
            by: ada(),
        })
        .then_expect_events(vec![WorkspaceEvent::WorkspaceRenamed {
            workspace: ws("ws-1"),
            name: WorkspaceName::parse("DASHBOARD").unwrap(),
            by: ada(),
        }]);
}

#[test]
fn the_running_limit_counts_workspaces_wanted_running_that_have_not_failed() {
    let two = vec![launched("ws-1", "one"), launched("ws-2", "two")];
    TestFramework::<Workspaces>::with(())
        .given(two.clone())
        .when(launch("ws-3", "three", Some(2)))
        .then_expect_error(WorkspaceError::QuotaExceeded { limit: 2 });
    // Exempt (an admin acting): no limit.
    TestFramework::<Workspaces>::with(())
        .given(two.clone())
        .when(launch("ws-3", "three", None))
        .then_expect_events(vec![launched("ws-3", "three")]);
    // A stopped and a failed workspace do not count.
    let mut freed = two.clone();
    freed.push(WorkspaceEvent::WorkspaceStopRequested { workspace: ws("ws-1"), by: ada() });
    freed.push(WorkspaceEvent::WorkspaceFailed {
        workspace: ws("ws-2"),
        generation: 1,
        phase: Phase::CloningBlueprint,
        reason: "no such branch".into(),
    });
    assert_eq!(state(freed.clone()).running_count(), 0);
    TestFramework::<Workspaces>::with(())
        .given(freed.clone())
        .when(launch("ws-3", "three", Some(1)))
        .then_expect_events(vec![launched("ws-3", "three")]);
    // Starting a stopped or a failed one is checked against the limit (neither counts until started).
    let mut full = freed;
    full.push(launched("ws-3", "three"));
    for stopped_or_failed in ["ws-1", "ws-2"] {
        TestFramework::<Workspaces>::with(())
            .given(full.clone())
            .when(WorkspaceCommand::Start { workspace: ws(stopped_or_failed), limit: Some(1), by: ada() })
            .then_expect_error(WorkspaceError::QuotaExceeded { limit: 1 });
    }
    TestFramework::<Workspaces>::with(())
        .given(full)
        .when(WorkspaceCommand::Start { workspace: ws("ws-2"), limit: Some(2), by: ada() })
        .then_expect_events(vec![WorkspaceEvent::WorkspaceStartRequested {
            workspace: ws("ws-2"),
            generation: 2,
            by: ada(),
        }]);
}

#[test]
fn actions_that_do_not_fit_the_state_are_refused() {
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one")])
        .when(WorkspaceCommand::Start { workspace: ws("ws-1"), limit: None, by: ada() })
        .then_expect_error(WorkspaceError::AlreadyRunning(ws("ws-1")));
    let stopped =
        vec![launched("ws-1", "one"), WorkspaceEvent::WorkspaceStopRequested { workspace: ws("ws-1"), by: ada() }];
    TestFramework::<Workspaces>::with(())
        .given(stopped.clone())
        .when(WorkspaceCommand::Stop { workspace: ws("ws-1"), by: ada() })
        .then_expect_error(WorkspaceError::NotRunning(ws("ws-1")));
    TestFramework::<Workspaces>::with(())
        .given(stopped.clone())
        .when(WorkspaceCommand::Restart { workspace: ws("ws-1"), by: ada() })
        .then_expect_error(WorkspaceError::NotRunning(ws("ws-1")));
    let mut deleted = stopped;
    deleted.push(WorkspaceEvent::WorkspaceDeleteRequested { workspace: ws("ws-1"), by: ada() });
    for command in [
        WorkspaceCommand::Start { workspace: ws("ws-1"), limit: None, by: ada() },
        WorkspaceCommand::Delete { workspace: ws("ws-1"), by: ada() },
        WorkspaceCommand::Rename { workspace: ws("ws-1"), name: WorkspaceName::parse("x").unwrap(), by: ada() },
        WorkspaceCommand::Delete { workspace: ws("ws-9"), by: ada() },
    ] {
        let expected = match &command {
            WorkspaceCommand::Delete { workspace, .. } | WorkspaceCommand::Start { workspace, .. } => workspace.clone(),
            _ => ws("ws-1"),
        };
        TestFramework::<Workspaces>::with(())
            .given(deleted.clone())
            .when(command)
            .then_expect_error(WorkspaceError::UnknownWorkspace(expected));
    }
    // One aggregate holds one owner's workspaces.
    let bob = Email::parse("bob@example.com").unwrap();
    let mut command = launch("ws-2", "two", None);
    if let WorkspaceCommand::Launch { owner, .. } = &mut command {
        *owner = bob;
    }
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one")])
        .when(command)
        .then_expect_error(WorkspaceError::WrongOwner(ada()));
}

#[test]
fn the_status_is_derived_from_the_facts_and_the_agent() {
    let mut aggregate = state(vec![launched("ws-1", "one")]);
    let status = |aggregate: &Workspaces, connected| aggregate.get("ws-1").unwrap().status(connected);
    assert_eq!(status(&aggregate, true), Status::Deploying, "not started yet");
    aggregate.apply(WorkspaceEvent::WorkspaceStarted { workspace: ws("ws-1"), generation: 1, dev_port: Some(4100) });
    assert_eq!(status(&aggregate, false), Status::Deploying, "agent not connected (yet, or again)");
    assert_eq!(status(&aggregate, true), Status::Running);
    aggregate.apply(WorkspaceEvent::WorkspaceRestartRequested { workspace: ws("ws-1"), generation: 2, by: ada() });
    assert_eq!(status(&aggregate, true), Status::Deploying, "the old generation's agent is still connected");
    aggregate.apply(WorkspaceEvent::WorkspaceFailed {
        workspace: ws("ws-1"),
        generation: 2,
        phase: Phase::Deploying,
        reason: "agent exited".into(),
    });
    assert_eq!(status(&aggregate, true), Status::Error);
    aggregate.apply(WorkspaceEvent::WorkspaceStopRequested { workspace: ws("ws-1"), by: ada() });
    assert_eq!(status(&aggregate, false), Status::Stopped);
    let tags = aggregate.get("ws-1").unwrap().tags();
    assert_eq!(tags[TAG_OWNER], "ada@example.com");
    assert_eq!(tags[TAG_BLUEPRINT], "web");
    assert_eq!(tags[TAG_PROJECT], "local/web");
    assert_eq!(tags[TAG_DISPLAY_NAME], "one");
}

#[test]
fn facts_about_an_older_generation_record_nothing() {
    let restarted = vec![
        launched("ws-1", "one"),
        WorkspaceEvent::WorkspaceRestartRequested { workspace: ws("ws-1"), generation: 2, by: ada() },
    ];
    for command in [
        WorkspaceCommand::RecordStarted { workspace: ws("ws-1"), generation: 1, dev_port: None },
        WorkspaceCommand::RecordPhase { workspace: ws("ws-1"), generation: 1, phase: Phase::Deploying },
        WorkspaceCommand::RecordFailed {
            workspace: ws("ws-1"),
            generation: 1,
            phase: Phase::Deploying,
            reason: "late".into(),
        },
    ] {
        TestFramework::<Workspaces>::with(()).given(restarted.clone()).when(command).then_expect_events(vec![]);
    }
    TestFramework::<Workspaces>::with(())
        .given(restarted)
        .when(WorkspaceCommand::RecordFailed {
            workspace: ws("ws-1"),
            generation: 2,
            phase: Phase::Deploying,
            reason: format!("  bad\u{0}{}", "x".repeat(2_000)),
        })
        .then_expect_events(vec![WorkspaceEvent::WorkspaceFailed {
            workspace: ws("ws-1"),
            generation: 2,
            phase: Phase::Deploying,
            reason: format!("bad {}", "x".repeat(MAX_REASON_CHARS - 4)),
        }]);
}

#[test]
fn delete_is_asked_then_recorded_done_once() {
    let asked =
        vec![launched("ws-1", "one"), WorkspaceEvent::WorkspaceDeleteRequested { workspace: ws("ws-1"), by: ada() }];
    TestFramework::<Workspaces>::with(())
        .given(asked.clone())
        .when(WorkspaceCommand::RecordDeleted { workspace: ws("ws-1") })
        .then_expect_events(vec![WorkspaceEvent::WorkspaceDeleted { workspace: ws("ws-1") }]);
    let mut done = asked;
    done.push(WorkspaceEvent::WorkspaceDeleted { workspace: ws("ws-1") });
    TestFramework::<Workspaces>::with(())
        .given(done)
        .when(WorkspaceCommand::RecordDeleted { workspace: ws("ws-1") })
        .then_expect_events(vec![]);
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one")])
        .when(WorkspaceCommand::RecordDeleted { workspace: ws("ws-1") })
        .then_expect_events(vec![]);
}

#[test]
fn event_types_are_the_variant_names() {
    let event = WorkspaceEvent::WorkspaceStopped { workspace: ws("ws-1") };
    assert_eq!((event.event_type(), event.event_version()), ("WorkspaceStopped".to_string(), "1.0".to_string()));
    let json = serde_json::to_value(launched("ws-1", "one")).unwrap();
    assert_eq!(json["WorkspaceLaunched"]["owner"], "ada@example.com");
    assert_eq!(json["WorkspaceLaunched"]["spec"]["branch"], "main");
}

#[test]
fn the_cloned_commit_is_recorded_once_for_the_current_generation_and_only_as_a_full_id() {
    let commit = "ab".repeat(20);
    let record = |generation: u64, commit: &str| WorkspaceCommand::RecordCloned {
        workspace: ws("ws-1"),
        generation,
        commit: commit.to_string(),
    };
    let cloned = WorkspaceEvent::WorkspaceSourceCloned { workspace: ws("ws-1"), generation: 1, commit: commit.clone() };
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one")])
        .when(record(1, &commit.to_ascii_uppercase()))
        .then_expect_events(vec![cloned.clone()]);
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one"), cloned.clone()])
        .when(record(1, &commit))
        .then_expect_events(vec![]);
    for bad in ["abc", "not hex at all, forty characters long ..", ""] {
        TestFramework::<Workspaces>::with(())
            .given(vec![launched("ws-1", "one")])
            .when(record(1, bad))
            .then_expect_events(vec![]);
    }
    TestFramework::<Workspaces>::with(())
        .given(vec![launched("ws-1", "one")])
        .when(record(7, &commit))
        .then_expect_events(vec![]);
    assert_eq!(state(vec![launched("ws-1", "one"), cloned]).get("ws-1").unwrap().source_commit, Some(commit));
}
