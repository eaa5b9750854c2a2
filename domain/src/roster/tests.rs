//! Given/when/then tests for every roster rule.

use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;

use super::*;

type RosterTest = TestFramework<Roster>;

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test addresses are valid")
}

fn invited(raw: &str, role: Role) -> RosterEvent {
    RosterEvent::MemberInvited { email: email(raw), role, invited_by: Some(email("root@example.com")) }
}

#[test]
fn bootstrap_invites_the_configured_admin() {
    RosterTest::with(())
        .given_no_previous_events()
        .when(RosterCommand::Bootstrap { email: email("root@example.com") })
        .then_expect_events(vec![RosterEvent::MemberInvited {
            email: email("root@example.com"),
            role: Role::Admin,
            invited_by: None,
        }]);
}

#[test]
fn bootstrap_is_idempotent_for_an_existing_admin() {
    RosterTest::with(())
        .given(vec![invited("root@example.com", Role::Admin)])
        .when(RosterCommand::Bootstrap { email: email("root@example.com") })
        .then_expect_events(vec![]);
}

#[test]
fn bootstrap_promotes_an_existing_member() {
    RosterTest::with(())
        .given(vec![invited("ada@example.com", Role::Member)])
        .when(RosterCommand::Bootstrap { email: email("ada@example.com") })
        .then_expect_events(vec![RosterEvent::MemberRoleChanged {
            email: email("ada@example.com"),
            from: Role::Member,
            to: Role::Admin,
            changed_by: None,
        }]);
}

#[test]
fn inviting_an_existing_member_is_refused() {
    RosterTest::with(())
        .given(vec![invited("ada@example.com", Role::Member)])
        .when(RosterCommand::Invite {
            email: email("ada@example.com"),
            role: Role::Auditor,
            invited_by: email("root@example.com"),
        })
        .then_expect_error(RosterError::AlreadyMember(email("ada@example.com")));
}

#[test]
fn first_sign_in_activates_and_later_ones_record_nothing() {
    RosterTest::with(())
        .given(vec![invited("ada@example.com", Role::Member)])
        .when(RosterCommand::SignIn { email: email("ada@example.com") })
        .then_expect_events(vec![RosterEvent::MemberActivated { email: email("ada@example.com") }]);
    RosterTest::with(())
        .given(vec![
            invited("ada@example.com", Role::Member),
            RosterEvent::MemberActivated { email: email("ada@example.com") },
        ])
        .when(RosterCommand::SignIn { email: email("ada@example.com") })
        .then_expect_events(vec![]);
}

#[test]
fn role_change_records_old_and_new_role_and_who_changed_it() {
    RosterTest::with(())
        .given(vec![invited("root@example.com", Role::Admin), invited("ada@example.com", Role::Member)])
        .when(RosterCommand::ChangeRole {
            email: email("ada@example.com"),
            role: Role::Auditor,
            changed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_events(vec![RosterEvent::MemberRoleChanged {
            email: email("ada@example.com"),
            from: Role::Member,
            to: Role::Auditor,
            changed_by: Some(email("root@example.com")),
        }]);
}

#[test]
fn changing_to_the_same_role_is_refused() {
    RosterTest::with(())
        .given(vec![invited("ada@example.com", Role::Member)])
        .when(RosterCommand::ChangeRole {
            email: email("ada@example.com"),
            role: Role::Member,
            changed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_error(RosterError::RoleUnchanged { email: email("ada@example.com"), role: Role::Member });
}

#[test]
fn the_last_admin_cannot_be_demoted_or_removed() {
    RosterTest::with(())
        .given(vec![invited("root@example.com", Role::Admin)])
        .when(RosterCommand::ChangeRole {
            email: email("root@example.com"),
            role: Role::Member,
            changed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_error(RosterError::LastAdmin(email("root@example.com")));
    RosterTest::with(())
        .given(vec![invited("root@example.com", Role::Admin)])
        .when(RosterCommand::Remove {
            email: email("root@example.com"),
            removed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_error(RosterError::LastAdmin(email("root@example.com")));
}

#[test]
fn an_admin_can_be_removed_while_another_remains() {
    RosterTest::with(())
        .given(vec![invited("root@example.com", Role::Admin), invited("ops@example.com", Role::Admin)])
        .when(RosterCommand::Remove {
            email: email("ops@example.com"),
            removed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_events(vec![RosterEvent::MemberRemoved {
            email: email("ops@example.com"),
            removed_by: email("root@example.com"),
        }]);
}

#[test]
fn unknown_members_are_refused() {
    RosterTest::with(())
        .given_no_previous_events()
        .when(RosterCommand::Remove {
            email: email("ghost@example.com"),
            removed_by: email("root@example.com"),
            if_version: None,
        })
        .then_expect_error(RosterError::UnknownMember(email("ghost@example.com")));
    RosterTest::with(())
        .given_no_previous_events()
        .when(RosterCommand::SignIn { email: email("ghost@example.com") })
        .then_expect_error(RosterError::UnknownMember(email("ghost@example.com")));
}

#[test]
fn event_types_are_the_stored_names() {
    assert_eq!(invited("a@example.com", Role::Member).event_type(), "MemberInvited");
    assert_eq!(
        serde_json::to_value(invited("a@example.com", Role::Member)).expect("serialises"),
        serde_json::json!({"MemberInvited": {"email": "a@example.com", "role": "member", "invited_by": "root@example.com"}})
    );
}

#[test]
fn an_if_match_on_a_changed_member_is_refused() {
    // root invited (version 1), ada invited (2), ada activated (3): ada is at version 3.
    let history = vec![
        invited("root@example.com", Role::Admin),
        invited("ada@example.com", Role::Member),
        RosterEvent::MemberActivated { email: email("ada@example.com") },
    ];
    RosterTest::with(())
        .given(history.clone())
        .when(RosterCommand::Remove {
            email: email("ada@example.com"),
            removed_by: email("root@example.com"),
            if_version: Some(2),
        })
        .then_expect_error(RosterError::StaleMember { email: email("ada@example.com"), expected: 2, actual: 3 });
    RosterTest::with(())
        .given(history)
        .when(RosterCommand::ChangeRole {
            email: email("ada@example.com"),
            role: Role::Auditor,
            changed_by: email("root@example.com"),
            if_version: Some(3),
        })
        .then_expect_events(vec![RosterEvent::MemberRoleChanged {
            email: email("ada@example.com"),
            from: Role::Member,
            to: Role::Auditor,
            changed_by: Some(email("root@example.com")),
        }]);
}
