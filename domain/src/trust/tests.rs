//! Given/when/then tests for every trust rule.

use cqrs_es::test::TestFramework;

use super::*;

type TrustTest = TestFramework<TrustRules>;

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test addresses are valid")
}

fn blueprint(raw: &str) -> BlueprintKey {
    BlueprintKey::parse(raw).expect("test keys are valid")
}

fn granted(rule_id: &str, user: &str, key: Option<&str>) -> TrustEvent {
    TrustEvent::TrustRuleGranted {
        rule_id: rule_id.into(),
        email: email(user),
        blueprint_key: key.map(blueprint),
        description: None,
        granted_by: email("root@example.com"),
    }
}

#[test]
fn an_admin_trusts_a_user_for_a_blueprint() {
    TrustTest::with(())
        .given_no_previous_events()
        .when(TrustCommand::Grant {
            rule_id: "r1".into(),
            email: email("ada@example.com"),
            blueprint_key: Some(blueprint("web")),
            description: Some("owns the site".into()),
            granted_by: email("root@example.com"),
        })
        .then_expect_events(vec![TrustEvent::TrustRuleGranted {
            rule_id: "r1".into(),
            email: email("ada@example.com"),
            blueprint_key: Some(blueprint("web")),
            description: Some("owns the site".into()),
            granted_by: email("root@example.com"),
        }]);
}

#[test]
fn a_second_rule_for_the_same_user_and_scope_is_refused() {
    TrustTest::with(())
        .given(vec![granted("r1", "ada@example.com", Some("web"))])
        .when(TrustCommand::Grant {
            rule_id: "r2".into(),
            email: email("ada@example.com"),
            blueprint_key: Some(blueprint("web")),
            description: None,
            granted_by: email("root@example.com"),
        })
        .then_expect_error(TrustError::DuplicateRule { email: email("ada@example.com"), rule_id: "r1".into() });
}

#[test]
fn a_rule_id_cannot_be_reused() {
    TrustTest::with(())
        .given(vec![granted("r1", "ada@example.com", Some("web"))])
        .when(TrustCommand::Grant {
            rule_id: "r1".into(),
            email: email("bob@example.com"),
            blueprint_key: None,
            description: None,
            granted_by: email("root@example.com"),
        })
        .then_expect_error(TrustError::DuplicateId("r1".into()));
}

#[test]
fn revoking_records_who_revoked() {
    TrustTest::with(())
        .given(vec![granted("r1", "ada@example.com", None)])
        .when(TrustCommand::Revoke { rule_id: "r1".into(), revoked_by: email("root@example.com") })
        .then_expect_events(vec![TrustEvent::TrustRuleRevoked {
            rule_id: "r1".into(),
            revoked_by: email("root@example.com"),
        }]);
}

#[test]
fn revoking_an_unknown_rule_is_refused() {
    TrustTest::with(())
        .given(vec![
            granted("r1", "ada@example.com", None),
            TrustEvent::TrustRuleRevoked { rule_id: "r1".into(), revoked_by: email("root@example.com") },
        ])
        .when(TrustCommand::Revoke { rule_id: "r1".into(), revoked_by: email("root@example.com") })
        .then_expect_error(TrustError::UnknownRule("r1".into()));
}

#[test]
fn evaluation_prefers_the_blueprint_rule_and_ignores_other_users_and_blueprints() {
    let mut rules = TrustRules::default();
    for event in [
        granted("all", "ada@example.com", None),
        granted("web", "ada@example.com", Some("web")),
        granted("bob-api", "bob@example.com", Some("api")),
    ] {
        rules.apply(event);
    }
    let ada = email("ada@example.com");
    assert_eq!(rules.evaluate(&ada, &blueprint("web")).map(|(id, _)| id), Some("web"));
    assert_eq!(rules.evaluate(&ada, &blueprint("other")).map(|(id, _)| id), Some("all"));
    let bob = email("bob@example.com");
    assert_eq!(rules.evaluate(&bob, &blueprint("api")).map(|(id, _)| id), Some("bob-api"));
    assert_eq!(rules.evaluate(&bob, &blueprint("web")), None);
    assert_eq!(rules.evaluate(&email("eve@example.com"), &blueprint("web")), None);
    rules.apply(TrustEvent::TrustRuleRevoked { rule_id: "all".into(), revoked_by: email("root@example.com") });
    assert_eq!(rules.evaluate(&ada, &blueprint("other")), None, "a revoked rule no longer matches");
    let (id, rule) = rules.evaluate(&ada, &blueprint("web")).expect("the blueprint rule remains");
    assert_eq!(rule.reason(id), "trust rule web: ada@example.com is trusted for blueprint web");
}
