//! Given/when/then tests for every publishing rule.

use chrono::{Duration, TimeZone};
use cqrs_es::test::TestFramework;

use super::*;

type PublishingTest = TestFramework<Publishing>;

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test addresses are valid")
}

fn id(raw: &str) -> RequestId {
    RequestId::parse(raw).expect("test ids are valid")
}

fn ws(raw: &str) -> WorkspaceId {
    WorkspaceId::parse(raw).expect("test ids are valid")
}

fn sub(raw: &str) -> Subdomain {
    Subdomain::parse(raw).expect("test subdomains are valid")
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).single().expect("a valid time")
}

fn commit() -> CommitId {
    CommitId::parse(&"ab".repeat(20)).expect("a valid commit")
}

fn diff() -> DiffSummary {
    DiffSummary { files: 2, insertions: 10, deletions: 3, patch: Some("--- a\n+++ b\n".into()), patch_truncated: false }
}

const ADA: &str = "ada@example.com";
const ROOT: &str = "root@example.com";
const ADMIN2: &str = "grace@example.com";

fn submit(request: &str, workspace: &str, subdomain: &str, builder: &str) -> PublishingCommand {
    PublishingCommand::Submit {
        request_id: id(request),
        workspace_id: ws(workspace),
        blueprint_key: BlueprintKey::parse("web").expect("valid"),
        subdomain: sub(subdomain),
        commit_id: commit(),
        diff: diff(),
        message: "ship it".into(),
        builder: email(builder),
        now: t0(),
        ttl: Duration::days(7),
        approvals_required: 1,
        trusted: None,
        base_commit: None,
        deliver: true,
    }
}

fn requested(request: &str, workspace: &str, subdomain: &str, builder: &str, approvals: u32) -> PublishingEvent {
    PublishingEvent::PublishRequested {
        request_id: id(request),
        workspace_id: ws(workspace),
        blueprint_key: BlueprintKey::parse("web").expect("valid"),
        subdomain: sub(subdomain),
        builder: email(builder),
        commit_id: commit(),
        diff: diff(),
        message: "ship it".into(),
        approvals_required: approvals,
        submitted_at: t0(),
        expires_at: t0() + Duration::days(7),
        base_commit: None,
        deliver: true,
    }
}

fn claimed(subdomain: &str, workspace: &str) -> PublishingEvent {
    PublishingEvent::SubdomainClaimed { subdomain: sub(subdomain), workspace_id: ws(workspace) }
}

fn released(subdomain: &str, workspace: &str) -> PublishingEvent {
    PublishingEvent::SubdomainReleased { subdomain: sub(subdomain), workspace_id: ws(workspace) }
}

/// A workspace with a pending request r1 for `my-app`.
fn pending() -> Vec<PublishingEvent> {
    vec![claimed("my-app", "w1"), requested("r1", "w1", "my-app", ADA, 1)]
}

fn approve(request: &str, reviewer: &str) -> PublishingCommand {
    PublishingCommand::Approve {
        request_id: id(request),
        reviewer: email(reviewer),
        reason: None,
        reason_required: false,
        if_version: None,
    }
}

/// r1 approved: w1 is live at my-app.
fn published() -> Vec<PublishingEvent> {
    let mut events = pending();
    events.push(PublishingEvent::ApprovalRecorded { request_id: id("r1"), reviewer: email(ROOT), reason: None });
    events.push(PublishingEvent::PublishApproved { request_id: id("r1") });
    events
}

#[test]
fn a_first_submission_claims_the_subdomain_and_opens_a_request() {
    PublishingTest::with(())
        .given_no_previous_events()
        .when(submit("r1", "w1", "my-app", ADA))
        .then_expect_events(pending());
}

#[test]
fn a_submission_needs_at_least_one_approval() {
    let mut command = submit("r1", "w1", "my-app", ADA);
    if let PublishingCommand::Submit { approvals_required, .. } = &mut command {
        *approvals_required = 0;
    }
    PublishingTest::with(()).given_no_previous_events().when(command).then_expect_error(PublishingError::InvalidPolicy);
}

#[test]
fn a_trusted_submission_is_approved_at_once_by_the_system() {
    let mut command = submit("r1", "w1", "my-app", ADA);
    if let PublishingCommand::Submit { trusted, .. } = &mut command {
        *trusted = Some(TrustMatch { rule_id: "t1".into(), reason: "trust rule t1".into() });
    }
    let mut expected = pending();
    expected.push(PublishingEvent::PublishAutoApproved {
        request_id: id("r1"),
        trust_rule_id: "t1".into(),
        reason: "trust rule t1".into(),
    });
    PublishingTest::with(()).given_no_previous_events().when(command).then_expect_events(expected);
}

#[test]
fn one_request_in_flight_per_workspace() {
    PublishingTest::with(())
        .given(pending())
        .when(submit("r2", "w1", "my-app", ADA))
        .then_expect_error(PublishingError::RequestInFlight { workspace_id: ws("w1"), request_id: id("r1") });
}

#[test]
fn request_ids_are_unique() {
    PublishingTest::with(())
        .given(pending())
        .when(submit("r1", "w2", "other", "bob@example.com"))
        .then_expect_error(PublishingError::DuplicateRequest(id("r1")));
}

#[test]
fn a_subdomain_held_by_another_workspace_is_refused() {
    PublishingTest::with(())
        .given(pending())
        .when(submit("r2", "w2", "my-app", "bob@example.com"))
        .then_expect_error(PublishingError::SubdomainTaken(sub("my-app")));
}

#[test]
fn a_subdomain_stays_with_its_published_workspace_after_later_refusals() {
    let mut given = published();
    given.push(requested("r2", "w1", "my-app", ADA, 1));
    PublishingTest::with(())
        .given(given)
        .when(PublishingCommand::Reject {
            request_id: id("r2"),
            reviewer: email(ROOT),
            feedback: None,
            reason_required: false,
            if_version: None,
        })
        .then_expect_events(vec![PublishingEvent::PublishRejected {
            request_id: id("r2"),
            reviewer: email(ROOT),
            feedback: None,
        }]);
}

#[test]
fn another_builder_cannot_publish_someone_elses_workspace() {
    let mut given = pending();
    given.push(PublishingEvent::PublishWithdrawn { request_id: id("r1"), withdrawn_by: email(ADA) });
    PublishingTest::with(())
        .given(given)
        .when(submit("r2", "w1", "my-app", "bob@example.com"))
        .then_expect_error(PublishingError::NotWorkspaceOwner(ws("w1")));
}

#[test]
fn an_approval_by_another_admin_approves() {
    PublishingTest::with(()).given(pending()).when(approve("r1", ROOT)).then_expect_events(vec![
        PublishingEvent::ApprovalRecorded { request_id: id("r1"), reviewer: email(ROOT), reason: None },
        PublishingEvent::PublishApproved { request_id: id("r1") },
    ]);
}

#[test]
fn nobody_approves_their_own_request() {
    PublishingTest::with(()).given(pending()).when(approve("r1", ADA)).then_expect_error(PublishingError::SelfApproval);
}

#[test]
fn two_approvals_when_the_policy_asks_for_two() {
    let given = vec![claimed("my-app", "w1"), requested("r1", "w1", "my-app", ADA, 2)];
    PublishingTest::with(()).given(given.clone()).when(approve("r1", ROOT)).then_expect_events(vec![
        PublishingEvent::ApprovalRecorded { request_id: id("r1"), reviewer: email(ROOT), reason: None },
    ]);
    let mut once = given;
    once.push(PublishingEvent::ApprovalRecorded { request_id: id("r1"), reviewer: email(ROOT), reason: None });
    PublishingTest::with(())
        .given(once.clone())
        .when(approve("r1", ROOT))
        .then_expect_error(PublishingError::AlreadyApproved(id("r1")));
    PublishingTest::with(()).given(once).when(approve("r1", ADMIN2)).then_expect_events(vec![
        PublishingEvent::ApprovalRecorded { request_id: id("r1"), reviewer: email(ADMIN2), reason: None },
        PublishingEvent::PublishApproved { request_id: id("r1") },
    ]);
}

#[test]
fn a_required_reason_must_be_given() {
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Approve {
            request_id: id("r1"),
            reviewer: email(ROOT),
            reason: None,
            reason_required: true,
            if_version: None,
        })
        .then_expect_error(PublishingError::ReasonRequired);
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Reject {
            request_id: id("r1"),
            reviewer: email(ROOT),
            feedback: None,
            reason_required: true,
            if_version: None,
        })
        .then_expect_error(PublishingError::ReasonRequired);
}

#[test]
fn a_rejection_is_final_and_frees_an_unpublished_subdomain() {
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Reject {
            request_id: id("r1"),
            reviewer: email(ROOT),
            feedback: Some("add tests".into()),
            reason_required: false,
            if_version: None,
        })
        .then_expect_events(vec![
            PublishingEvent::PublishRejected {
                request_id: id("r1"),
                reviewer: email(ROOT),
                feedback: Some("add tests".into()),
            },
            released("my-app", "w1"),
        ]);
    let mut rejected = pending();
    rejected.push(PublishingEvent::PublishRejected { request_id: id("r1"), reviewer: email(ROOT), feedback: None });
    PublishingTest::with(())
        .given(rejected)
        .when(approve("r1", ADMIN2))
        .then_expect_error(PublishingError::NotPending { request_id: id("r1"), status: RequestStatus::Rejected });
}

#[test]
fn a_released_subdomain_can_be_claimed_by_another_workspace() {
    let mut given = pending();
    given.push(PublishingEvent::PublishWithdrawn { request_id: id("r1"), withdrawn_by: email(ADA) });
    given.push(released("my-app", "w1"));
    let mut expected = vec![claimed("my-app", "w2")];
    expected.push(requested("r2", "w2", "my-app", "bob@example.com", 1));
    PublishingTest::with(())
        .given(given)
        .when(submit("r2", "w2", "my-app", "bob@example.com"))
        .then_expect_events(expected);
}

#[test]
fn the_builder_may_withdraw_and_nobody_else() {
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Withdraw { request_id: id("r1"), by: email(ADA), if_version: None })
        .then_expect_events(vec![
            PublishingEvent::PublishWithdrawn { request_id: id("r1"), withdrawn_by: email(ADA) },
            released("my-app", "w1"),
        ]);
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Withdraw { request_id: id("r1"), by: email(ROOT), if_version: None })
        .then_expect_error(PublishingError::NotBuilder(id("r1")));
}

#[test]
fn a_withdrawn_request_is_final() {
    let mut given = pending();
    given.push(PublishingEvent::PublishWithdrawn { request_id: id("r1"), withdrawn_by: email(ADA) });
    PublishingTest::with(())
        .given(given)
        .when(PublishingCommand::Withdraw { request_id: id("r1"), by: email(ADA), if_version: None })
        .then_expect_error(PublishingError::NotPending { request_id: id("r1"), status: RequestStatus::Withdrawn });
}

#[test]
fn if_match_guards_every_review() {
    // r1's version is 2 (the claim is event 1).
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Approve {
            request_id: id("r1"),
            reviewer: email(ROOT),
            reason: None,
            reason_required: false,
            if_version: Some(1),
        })
        .then_expect_error(PublishingError::StaleRequest { request_id: id("r1"), expected: 1, actual: 2 });
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Withdraw { request_id: id("r1"), by: email(ADA), if_version: Some(2) })
        .then_expect_events(vec![
            PublishingEvent::PublishWithdrawn { request_id: id("r1"), withdrawn_by: email(ADA) },
            released("my-app", "w1"),
        ]);
}

#[test]
fn unknown_requests_are_refused() {
    PublishingTest::with(())
        .given_no_previous_events()
        .when(approve("nope", ROOT))
        .then_expect_error(PublishingError::UnknownRequest(id("nope")));
}

#[test]
fn pending_requests_expire_when_their_time_is_up_and_not_before() {
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Expire { request_id: id("r1"), now: t0() + Duration::days(7) })
        .then_expect_events(vec![PublishingEvent::PublishExpired { request_id: id("r1") }, released("my-app", "w1")]);
    PublishingTest::with(())
        .given(pending())
        .when(PublishingCommand::Expire { request_id: id("r1"), now: t0() + Duration::days(6) })
        .then_expect_error(PublishingError::NotDue(id("r1")));
    PublishingTest::with(())
        .given(published())
        .when(PublishingCommand::Expire { request_id: id("r1"), now: t0() + Duration::days(8) })
        .then_expect_events(vec![]);
}

#[test]
fn publishing_elsewhere_moves_the_app_and_frees_the_old_subdomain() {
    let mut given = published();
    given.push(claimed("new-app", "w1"));
    given.push(requested("r2", "w1", "new-app", ADA, 1));
    PublishingTest::with(()).given(given).when(approve("r2", ROOT)).then_expect_events(vec![
        PublishingEvent::ApprovalRecorded { request_id: id("r2"), reviewer: email(ROOT), reason: None },
        PublishingEvent::PublishApproved { request_id: id("r2") },
        released("my-app", "w1"),
    ]);
}

#[test]
fn due_requests_are_listed_for_the_expiry_sweep() {
    let mut state = Publishing::default();
    for event in pending() {
        state.apply(event);
    }
    assert!(state.due_for_expiry(t0() + Duration::days(1)).is_empty());
    assert_eq!(state.due_for_expiry(t0() + Duration::days(7)), vec![id("r1")]);
    state.apply(PublishingEvent::PublishExpired { request_id: id("r1") });
    assert!(state.due_for_expiry(t0() + Duration::days(8)).is_empty());
    assert_eq!(state.holder(&sub("my-app")), Some(&ws("w1")), "the release is its own event");
}

fn pushed(pull_request: bool) -> PublishingEvent {
    PublishingEvent::PublishPushed {
        request_id: id("r1"),
        remote: "/srv/git/web.git".into(),
        branch: "gatehouse/publish/r1".into(),
        commit_id: commit(),
        pull_request,
    }
}

fn failure(stage: DeliveryStage, retryable: bool) -> PublishingEvent {
    PublishingEvent::PublishFailed { request_id: id("r1"), stage, reason: "down".into(), retryable, at: t0() }
}

#[test]
fn an_approved_request_is_pushed_then_gets_its_pull_request_once() {
    let record_push = PublishingCommand::RecordPushed {
        request_id: id("r1"),
        remote: "/srv/git/web.git".into(),
        branch: "gatehouse/publish/r1".into(),
        pull_request: true,
    };
    PublishingTest::with(()).given(published()).when(record_push.clone()).then_expect_events(vec![pushed(true)]);
    // Done twice (a crash between the push and its record): nothing more.
    let mut given = published();
    given.push(pushed(true));
    PublishingTest::with(()).given(given.clone()).when(record_push).then_expect_events(vec![]);
    let record_pr =
        PublishingCommand::RecordPullRequest { request_id: id("r1"), url: "https://x/pull/1".into(), number: 1 };
    let opened = PublishingEvent::PullRequestOpened { request_id: id("r1"), url: "https://x/pull/1".into(), number: 1 };
    PublishingTest::with(()).given(given.clone()).when(record_pr.clone()).then_expect_events(vec![opened.clone()]);
    given.push(opened);
    PublishingTest::with(()).given(given).when(record_pr.clone()).then_expect_events(vec![]);
    // No pull request before the push.
    PublishingTest::with(())
        .given(published())
        .when(record_pr)
        .then_expect_error(PublishingError::WrongDeliveryStep { request_id: id("r1"), status: "queued" });
}

#[test]
fn only_approved_new_style_requests_are_delivered() {
    let record_push = PublishingCommand::RecordPushed {
        request_id: id("r1"),
        remote: "r".into(),
        branch: "b".into(),
        pull_request: false,
    };
    PublishingTest::with(())
        .given(pending())
        .when(record_push.clone())
        .then_expect_error(PublishingError::NotDelivering(id("r1")));
    // A request recorded before delivery existed (no `deliver` in its event) is never pushed.
    let mut old = published();
    if let PublishingEvent::PublishRequested { deliver, .. } = &mut old[1] {
        *deliver = false;
    }
    let mut state = Publishing::default();
    for event in old.clone() {
        state.apply(event);
    }
    assert!(state.deliveries_due(t0(), &RetryPolicy::default()).0.is_empty());
    PublishingTest::with(()).given(old).when(record_push).then_expect_error(PublishingError::NotDelivering(id("r1")));
}

#[test]
fn failures_are_retried_by_the_publisher_or_an_admin() {
    let policy = RetryPolicy::default();
    let mut state = Publishing::default();
    for event in published() {
        state.apply(event);
    }
    assert_eq!(state.deliveries_due(t0(), &policy).0, vec![(id("r1"), NextStep::Push)]);
    assert_eq!(state.last_published(&ws("w1")), Some(&commit()));
    state.apply(failure(DeliveryStage::Push, true));
    let (due, wake) = state.deliveries_due(t0(), &policy);
    assert!(due.is_empty());
    assert_eq!(wake, Some(t0() + Duration::seconds(5)));
    state.apply(failure(DeliveryStage::Push, false));
    assert_eq!(state.deliveries_due(t0() + Duration::days(1), &policy), (vec![], None));

    let mut given = published();
    given.push(failure(DeliveryStage::Push, false));
    let retry = PublishingCommand::RetryDelivery { request_id: id("r1"), by: email(ROOT) };
    let retried = PublishingEvent::PublishRetryRequested { request_id: id("r1"), by: email(ROOT) };
    PublishingTest::with(()).given(given.clone()).when(retry.clone()).then_expect_events(vec![retried.clone()]);
    given.push(retried.clone());
    let mut state = Publishing::default();
    for event in given.clone() {
        state.apply(event);
    }
    assert_eq!(state.deliveries_due(t0(), &policy).0, vec![(id("r1"), NextStep::Push)]);
    PublishingTest::with(())
        .given(given)
        .when(retry)
        .then_expect_error(PublishingError::NotFailed { request_id: id("r1"), status: "queued" });
    // After the push a failure is at the pull request; a delivered request takes no more failures.
    let mut done = published();
    done.push(pushed(false));
    let fail = PublishingCommand::RecordFailure {
        request_id: id("r1"),
        stage: DeliveryStage::PullRequest,
        reason: "x".into(),
        retryable: true,
        now: t0(),
        round: 0,
    };
    PublishingTest::with(())
        .given(done)
        .when(fail)
        .then_expect_error(PublishingError::WrongDeliveryStep { request_id: id("r1"), status: "pushed" });
}

#[test]
fn a_failure_of_an_attempt_older_than_an_admins_retry_is_not_recorded() {
    let mut given = published();
    given.push(failure(DeliveryStage::Push, false));
    given.push(PublishingEvent::PublishRetryRequested { request_id: id("r1"), by: email(ROOT) });
    let stale = PublishingCommand::RecordFailure {
        request_id: id("r1"),
        stage: DeliveryStage::Push,
        reason: "the attempt that was running when the admin retried".into(),
        retryable: false,
        now: t0(),
        round: 0,
    };
    PublishingTest::with(()).given(given.clone()).when(stale).then_expect_events(vec![]);
    let current = PublishingCommand::RecordFailure {
        request_id: id("r1"),
        stage: DeliveryStage::Push,
        reason: "down".into(),
        retryable: true,
        now: t0(),
        round: 1,
    };
    PublishingTest::with(()).given(given).when(current).then_expect_events(vec![failure(DeliveryStage::Push, true)]);
}
