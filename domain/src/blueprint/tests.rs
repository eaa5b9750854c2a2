//! Given/when/then tests for every blueprint rule, and the stored shape of every event.

use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;

use super::*;

type BlueprintTest = TestFramework<Blueprint>;

const ROOT: &str = "root@example.com";

fn email(raw: &str) -> Email {
    Email::parse(raw).expect("test addresses are valid")
}

fn root() -> Email {
    email(ROOT)
}

fn key(raw: &str) -> BlueprintKey {
    BlueprintKey::parse(raw).expect("test keys are valid")
}

fn domain_rule(raw: &str) -> AclRule {
    AclRule::parse("domain", raw).expect("test rules are valid")
}

fn email_rule(raw: &str) -> AclRule {
    AclRule::parse("email", raw).expect("test rules are valid")
}

fn source() -> BlueprintSource {
    BlueprintSource::Local(
        LocalSource::new(
            GitRepository::parse("https://github.com/acme/web.git").expect("valid"),
            GitBranch::parse("main").expect("valid"),
            Some(ShellCommand::parse("source.dev_command", "npm run dev").expect("valid")),
            vec![Port::new(3100).expect("valid"), Port::new(8080).expect("valid")],
            Shell::parse("/bin/bash").expect("valid"),
        )
        .expect("valid"),
    )
}

fn details(name: &str) -> BlueprintDetails {
    BlueprintDetails {
        display_name: DisplayName::parse(name).expect("valid"),
        description: Some(Description::parse("A Next.js starter").expect("valid")),
        source: source(),
        target_cluster: Some(ClusterName::parse("eu-west-3").expect("valid")),
        primary_service: None,
        project_mode: ProjectMode::Dedicated,
        naming: NamingTemplates {
            project: NameTemplate::parse("naming.project", "rde-{user}-{blueprint}").expect("valid"),
            environment: NameTemplate::parse("naming.environment", "{name}-{random}").expect("valid"),
        },
    }
}

fn registered() -> BlueprintEvent {
    BlueprintEvent::BlueprintRegistered {
        key: key("web"),
        details: details("Frontend starter"),
        state: BlueprintState::Testing,
        by: root(),
    }
}

fn state_changed(from: BlueprintState, to: BlueprintState) -> BlueprintEvent {
    BlueprintEvent::BlueprintStateChanged { from, to, by: root() }
}

fn removed() -> Vec<BlueprintEvent> {
    vec![registered(), BlueprintEvent::BlueprintRemoved { by: root() }]
}

fn model(raw: &str) -> ModelName {
    ModelName::parse(raw).expect("valid")
}

fn anthropic(enabled: bool, auth_mode: AiAuthMode, model_name: &str) -> AiProviderSettings {
    AiProviderSettings::new(AiProvider::Anthropic, enabled, auth_mode, model(model_name), None).expect("valid")
}

fn api_key(sealed: &str, last_four: &str) -> ApiKey {
    ApiKey {
        sealed: SealedSecret::parse(sealed).expect("valid"),
        last_four: LastFour::parse(last_four).expect("valid"),
    }
}

fn set_ai(settings: AiProviderSettings, api_key: ApiKeyChange) -> BlueprintCommand {
    BlueprintCommand::SetAiProvider { settings, api_key, by: root(), if_version: None }
}

fn ai_set(settings: AiProviderSettings, key: Option<ApiKey>) -> BlueprintEvent {
    BlueprintEvent::BlueprintAiProviderSet { settings: settings.with_api_key(key), by: root() }
}

/// Registered, with Anthropic on the organisation's key `…wxyz` (version 2).
fn with_anthropic() -> Vec<BlueprintEvent> {
    vec![
        registered(),
        ai_set(anthropic(true, AiAuthMode::ApiKey, "claude-sonnet-4-20250514"), Some(api_key("sealed-1", "wxyz"))),
    ]
}

fn replace_acl(rules: Vec<AclRule>) -> BlueprintCommand {
    BlueprintCommand::ReplaceAcl { acl: Acl::new(rules).expect("valid"), by: root(), if_version: None }
}

fn custom_layout() -> WorkspaceConfig {
    WorkspaceConfig::new(
        vec![
            Tab::Terminal,
            Tab::Custom {
                name: TabName::parse("Dev Server").expect("valid"),
                command: ShellCommand::parse("workspace.tabs.command", "npm run dev").expect("valid"),
            },
        ],
        true,
        false,
        true,
        true,
    )
    .expect("valid")
}

/// One command of every kind but `Register`. Registration, removal and the version are checked before anything
/// else, so a test refusing these for one of those reasons shows that every command checks it first.
fn every_later_command(if_version: Option<u64>) -> Vec<BlueprintCommand> {
    let by = root();
    vec![
        BlueprintCommand::UpdateDetails { details: details("Renamed"), by: by.clone(), if_version },
        BlueprintCommand::SetState { state: BlueprintState::Enabled, by: by.clone(), if_version },
        BlueprintCommand::AddAclRule { rule: domain_rule("company.com"), by: by.clone(), if_version },
        BlueprintCommand::RemoveAclRule { rule: domain_rule("company.com"), by: by.clone(), if_version },
        BlueprintCommand::ReplaceAcl { acl: Acl::open(), by: by.clone(), if_version },
        BlueprintCommand::ConfigureWorkspace { workspace: custom_layout(), by: by.clone(), if_version },
        BlueprintCommand::SetAiProvider {
            settings: anthropic(true, AiAuthMode::UserOauth, "claude-sonnet-4-20250514"),
            api_key: ApiKeyChange::Keep,
            by: by.clone(),
            if_version,
        },
        BlueprintCommand::ClearAiProvider { provider: AiProvider::OpenAi, by: by.clone(), if_version },
        BlueprintCommand::Remove { by, if_version },
    ]
}

// Register.

#[test]
fn registering_records_the_details_in_testing() {
    BlueprintTest::with(())
        .given_no_previous_events()
        .when(BlueprintCommand::Register { key: key("web"), details: details("Frontend starter"), by: root() })
        .then_expect_events(vec![registered()]);
}

#[test]
fn a_registered_blueprint_starts_in_testing_open_with_the_default_layout_and_no_ai() {
    let mut blueprint = Blueprint::default();
    assert!(!blueprint.is_registered() && blueprint.version() == 0);
    blueprint.apply(registered());
    assert_eq!(blueprint.key(), Some(&key("web")));
    assert_eq!(blueprint.state(), BlueprintState::Testing);
    assert!(blueprint.acl().is_open());
    assert_eq!(blueprint.workspace(), &WorkspaceConfig::default());
    assert_eq!(blueprint.ai_providers().count(), 0);
    assert_eq!(blueprint.details().map(|details| details.display_name.as_str()), Some("Frontend starter"));
    assert_eq!(blueprint.version(), 1);
}

#[test]
fn a_taken_key_is_refused() {
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::Register { key: key("web"), details: details("Another"), by: email("ops@example.com") })
        .then_expect_error(BlueprintError::AlreadyRegistered(key("web")));
}

#[test]
fn a_removed_blueprints_key_is_never_registered_again() {
    BlueprintTest::with(())
        .given(removed())
        .when(BlueprintCommand::Register { key: key("web"), details: details("Web again"), by: root() })
        .then_expect_error(BlueprintError::KeyRetired(key("web")));
}

#[test]
fn a_new_key_has_no_upper_case() {
    let refused = BlueprintTest::with(())
        .given_no_previous_events()
        .when(BlueprintCommand::Register { key: key("Web"), details: details("Web"), by: root() })
        .inspect_result();
    let error = refused.expect_err("refused");
    assert!(matches!(&error, BlueprintError::Invalid(invalid) if invalid.field == "key"), "{error:?}");
    assert_eq!(error.field(), Some("key"));
}

#[test]
fn commands_on_an_unregistered_blueprint_are_refused() {
    for command in every_later_command(None) {
        BlueprintTest::with(())
            .given_no_previous_events()
            .when(command)
            .then_expect_error(BlueprintError::NotRegistered);
    }
}

// Details.

#[test]
fn details_are_replaced_as_a_whole_and_the_same_details_record_nothing() {
    let mut new = details("Renamed");
    new.description = None;
    new.project_mode = ProjectMode::Shared;
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::UpdateDetails { details: new.clone(), by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintDetailsUpdated { details: new, by: root() }]);
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::UpdateDetails { details: details("Frontend starter"), by: root(), if_version: None })
        .then_expect_events(vec![]);
}

// State.

#[test]
fn any_state_changes_to_any_other_and_records_both() {
    use BlueprintState::{Disabled, Enabled, Testing};
    for (from, to) in [
        (Testing, Enabled),
        (Testing, Disabled),
        (Enabled, Disabled),
        (Enabled, Testing),
        (Disabled, Enabled),
        (Disabled, Testing),
    ] {
        let mut given = vec![registered()];
        if from != Testing {
            given.push(state_changed(Testing, from));
        }
        BlueprintTest::with(())
            .given(given)
            .when(BlueprintCommand::SetState { state: to, by: root(), if_version: None })
            .then_expect_events(vec![state_changed(from, to)]);
    }
}

#[test]
fn setting_the_current_state_again_is_refused() {
    use BlueprintState::{Disabled, Enabled, Testing};
    for state in [Testing, Enabled, Disabled] {
        let mut given = vec![registered()];
        if state != Testing {
            given.push(state_changed(Testing, state));
        }
        BlueprintTest::with(())
            .given(given)
            .when(BlueprintCommand::SetState { state, by: root(), if_version: None })
            .then_expect_error(BlueprintError::StateUnchanged { key: key("web"), state });
    }
}

// ACL.

#[test]
fn rules_are_added_one_by_one() {
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::AddAclRule { rule: domain_rule("company.com"), by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintAclRuleAdded {
            rule: domain_rule("company.com"),
            by: root(),
        }]);
}

#[test]
fn adding_a_rule_that_exists_is_refused() {
    BlueprintTest::with(())
        .given(vec![
            registered(),
            BlueprintEvent::BlueprintAclRuleAdded { rule: email_rule("ada@company.com"), by: root() },
        ])
        .when(BlueprintCommand::AddAclRule { rule: email_rule("ADA@company.com"), by: root(), if_version: None })
        .then_expect_error(BlueprintError::DuplicateAclRule(email_rule("ada@company.com")));
}

#[test]
fn a_full_acl_takes_no_more_rules() {
    let full = (0..MAX_ACL_RULES).map(|i| domain_rule(&format!("d{i}.example"))).collect();
    let given =
        vec![registered(), BlueprintEvent::BlueprintAclReplaced { acl: Acl::new(full).expect("valid"), by: root() }];
    let refused = BlueprintTest::with(())
        .given(given)
        .when(BlueprintCommand::AddAclRule { rule: domain_rule("one-more.example"), by: root(), if_version: None })
        .inspect_result();
    let error = refused.expect_err("refused");
    assert_eq!(error, BlueprintError::AclFull { max: MAX_ACL_RULES });
    assert_eq!(error.field(), Some("acl"));
}

#[test]
fn rules_are_removed_one_by_one_and_a_missing_one_is_refused() {
    let given =
        vec![registered(), BlueprintEvent::BlueprintAclRuleAdded { rule: domain_rule("company.com"), by: root() }];
    BlueprintTest::with(())
        .given(given.clone())
        .when(BlueprintCommand::RemoveAclRule { rule: domain_rule("company.com"), by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintAclRuleRemoved {
            rule: domain_rule("company.com"),
            by: root(),
        }]);
    BlueprintTest::with(())
        .given(given)
        .when(BlueprintCommand::RemoveAclRule { rule: domain_rule("eu.company.com"), by: root(), if_version: None })
        .then_expect_error(BlueprintError::UnknownAclRule(domain_rule("eu.company.com")));
}

#[test]
fn every_rule_is_replaced_at_once_and_the_same_list_records_nothing() {
    let rules = vec![domain_rule("company.com"), email_rule("grace@partner.io")];
    BlueprintTest::with(()).given(vec![registered()]).when(replace_acl(rules.clone())).then_expect_events(vec![
        BlueprintEvent::BlueprintAclReplaced { acl: Acl::new(rules.clone()).expect("valid"), by: root() },
    ]);
    let given = vec![
        registered(),
        BlueprintEvent::BlueprintAclReplaced { acl: Acl::new(rules.clone()).expect("valid"), by: root() },
    ];
    BlueprintTest::with(()).given(given.clone()).when(replace_acl(rules)).then_expect_events(vec![]);
    BlueprintTest::with(())
        .given(given)
        .when(replace_acl(vec![]))
        .then_expect_events(vec![BlueprintEvent::BlueprintAclReplaced { acl: Acl::open(), by: root() }]);
}

#[test]
fn the_aggregate_answers_the_acl_and_the_catalog_as_its_events_left_it() {
    let outsider = email("bob@elsewhere.net");
    let insider = email("ada@company.com");
    let mut blueprint = Blueprint::default();
    assert_eq!(blueprint.catalog_entry(&insider, true), None, "an unregistered key is never listed");
    blueprint.apply(registered());
    assert!(blueprint.allows(&outsider), "no rules: open");
    assert_eq!(blueprint.catalog_entry(&outsider, false), Some(CatalogEntry { coming_soon: true, launchable: false }));
    blueprint.apply(BlueprintEvent::BlueprintAclRuleAdded { rule: domain_rule("company.com"), by: root() });
    blueprint.apply(state_changed(BlueprintState::Testing, BlueprintState::Enabled));
    assert!(!blueprint.allows(&outsider) && blueprint.allows(&insider));
    assert_eq!(blueprint.catalog_entry(&outsider, false), None);
    assert_eq!(blueprint.catalog_entry(&insider, false), Some(CatalogEntry { coming_soon: false, launchable: true }));
    blueprint.apply(BlueprintEvent::BlueprintAclRuleRemoved { rule: domain_rule("company.com"), by: root() });
    assert!(blueprint.allows(&outsider), "rules then none: open again");
    blueprint.apply(BlueprintEvent::BlueprintRemoved { by: root() });
    assert_eq!(blueprint.catalog_entry(&insider, true), None);
    assert!(blueprint.is_removed() && blueprint.version() == 5);
}

// Workspace layout.

#[test]
fn the_workspace_layout_is_replaced_as_a_whole_and_the_same_layout_records_nothing() {
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::ConfigureWorkspace { workspace: custom_layout(), by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintWorkspaceConfigured {
            workspace: custom_layout(),
            by: root(),
        }]);
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::ConfigureWorkspace {
            workspace: WorkspaceConfig::default(),
            by: root(),
            if_version: None,
        })
        .then_expect_events(vec![]);
}

// AI providers.

#[test]
fn a_provider_is_set_with_its_sealed_key() {
    let settings = anthropic(true, AiAuthMode::ApiKey, "claude-sonnet-4-20250514");
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(set_ai(settings.clone(), ApiKeyChange::Replace(api_key("sealed-1", "wxyz"))))
        .then_expect_events(vec![ai_set(settings, Some(api_key("sealed-1", "wxyz")))]);
}

#[test]
fn replacing_the_settings_keeps_the_stored_key_unless_told_otherwise() {
    let settings = anthropic(true, AiAuthMode::ApiKey, "claude-opus-4");
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(settings.clone(), ApiKeyChange::Keep))
        .then_expect_events(vec![ai_set(settings.clone(), Some(api_key("sealed-1", "wxyz")))]);
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(settings.clone(), ApiKeyChange::Replace(api_key("sealed-2", "abcd"))))
        .then_expect_events(vec![ai_set(settings, Some(api_key("sealed-2", "abcd")))]);
}

#[test]
fn the_same_settings_and_key_again_record_nothing() {
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(anthropic(true, AiAuthMode::ApiKey, "claude-sonnet-4-20250514"), ApiKeyChange::Keep))
        .then_expect_events(vec![]);
}

#[test]
fn an_enabled_provider_on_the_organisations_key_needs_one() {
    let enabled = anthropic(true, AiAuthMode::ApiKey, "claude-sonnet-4-20250514");
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(set_ai(enabled.clone(), ApiKeyChange::Keep))
        .then_expect_error(BlueprintError::ApiKeyRequired(AiProvider::Anthropic));
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(enabled, ApiKeyChange::Remove))
        .then_expect_error(BlueprintError::ApiKeyRequired(AiProvider::Anthropic));
    assert_eq!(BlueprintError::ApiKeyRequired(AiProvider::Anthropic).field(), Some("ai.api_key"));
}

#[test]
fn a_key_may_be_removed_when_nothing_needs_it() {
    let oauth = anthropic(true, AiAuthMode::UserOauth, "claude-sonnet-4-20250514");
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(oauth.clone(), ApiKeyChange::Remove))
        .then_expect_events(vec![ai_set(oauth, None)]);
    let disabled = anthropic(false, AiAuthMode::ApiKey, "claude-sonnet-4-20250514");
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(disabled.clone(), ApiKeyChange::Remove))
        .then_expect_events(vec![ai_set(disabled, None)]);
}

#[test]
fn providers_are_independent_and_the_chat_takes_the_first_enabled() {
    let openai =
        AiProviderSettings::new(AiProvider::OpenAi, true, AiAuthMode::ApiKey, model("gpt-4o"), None).expect("valid");
    let custom = AiProviderSettings::new(
        AiProvider::Custom,
        true,
        AiAuthMode::ApiKey,
        model("llama-3-70b"),
        Some(EndpointUrl::parse("https://llm.internal/v1").expect("valid")),
    )
    .expect("valid");
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(set_ai(custom.clone(), ApiKeyChange::Replace(api_key("sealed-3", "cust"))))
        .then_expect_events(vec![ai_set(custom.clone(), Some(api_key("sealed-3", "cust")))]);

    let mut blueprint = Blueprint::default();
    for event in [
        registered(),
        ai_set(custom, Some(api_key("sealed-3", "cust"))),
        ai_set(openai, Some(api_key("sealed-4", "open"))),
    ] {
        blueprint.apply(event);
    }
    let order: Vec<AiProvider> = blueprint.ai_providers().map(AiProviderSettings::provider).collect();
    assert_eq!(order, [AiProvider::OpenAi, AiProvider::Custom]);
    assert_eq!(blueprint.chat_provider().map(AiProviderSettings::provider), Some(AiProvider::OpenAi));
    blueprint.apply(ai_set(anthropic(true, AiAuthMode::UserOauth, "claude-sonnet-4-20250514"), None));
    assert_eq!(blueprint.chat_provider().map(AiProviderSettings::provider), Some(AiProvider::Anthropic));
    blueprint.apply(ai_set(anthropic(false, AiAuthMode::UserOauth, "claude-sonnet-4-20250514"), None));
    assert_eq!(blueprint.chat_provider().map(AiProviderSettings::provider), Some(AiProvider::OpenAi));
    assert_eq!(
        blueprint.ai_provider(AiProvider::Custom).and_then(AiProviderSettings::api_key).map(|k| k.last_four.as_str()),
        Some("cust")
    );
}

#[test]
fn a_provider_is_cleared_with_its_key_and_clearing_an_unconfigured_one_records_nothing() {
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(BlueprintCommand::ClearAiProvider { provider: AiProvider::Anthropic, by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintAiProviderCleared {
            provider: AiProvider::Anthropic,
            by: root(),
        }]);
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(BlueprintCommand::ClearAiProvider { provider: AiProvider::OpenAi, by: root(), if_version: None })
        .then_expect_events(vec![]);

    let mut blueprint = Blueprint::default();
    for event in with_anthropic() {
        blueprint.apply(event);
    }
    blueprint.apply(BlueprintEvent::BlueprintAiProviderCleared { provider: AiProvider::Anthropic, by: root() });
    assert_eq!(blueprint.ai_provider(AiProvider::Anthropic), None);
}

#[test]
fn events_carry_the_ciphertext_and_last_four_only() {
    let event = with_anthropic().pop().expect("an event");
    assert_eq!(
        serde_json::to_value(&event).expect("serialises"),
        serde_json::json!({"BlueprintAiProviderSet": {
            "settings": {
                "provider": "anthropic",
                "enabled": true,
                "auth_mode": "api_key",
                "model": "claude-sonnet-4-20250514",
                "api_key": {"sealed": "sealed-1", "last_four": "wxyz"},
            },
            "by": ROOT,
        }})
    );
    // Nor does a logged command or state show the ciphertext.
    let command = set_ai(anthropic(true, AiAuthMode::ApiKey, "m"), ApiKeyChange::Replace(api_key("sealed-1", "wxyz")));
    assert!(!format!("{command:?}").contains("sealed-1"));
    let mut blueprint = Blueprint::default();
    for event in with_anthropic() {
        blueprint.apply(event);
    }
    assert!(!format!("{blueprint:?}").contains("sealed-1"));
}

// Remove.

#[test]
fn removing_leaves_a_tombstone_that_refuses_every_command() {
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(BlueprintCommand::Remove { by: root(), if_version: None })
        .then_expect_events(vec![BlueprintEvent::BlueprintRemoved { by: root() }]);
    for command in every_later_command(None) {
        BlueprintTest::with(()).given(removed()).when(command).then_expect_error(BlueprintError::Removed(key("web")));
    }
}

// If-Match.

#[test]
fn an_if_match_on_a_changed_blueprint_is_refused_and_a_current_one_passes() {
    // Registered (1), enabled (2).
    let given = vec![registered(), state_changed(BlueprintState::Testing, BlueprintState::Enabled)];
    for command in every_later_command(Some(1)) {
        BlueprintTest::with(()).given(given.clone()).when(command).then_expect_error(BlueprintError::Stale {
            key: key("web"),
            expected: 1,
            actual: 2,
        });
    }
    BlueprintTest::with(())
        .given(given)
        .when(BlueprintCommand::SetState { state: BlueprintState::Disabled, by: root(), if_version: Some(2) })
        .then_expect_events(vec![state_changed(BlueprintState::Enabled, BlueprintState::Disabled)]);
}

#[test]
fn a_removed_blueprint_says_so_whatever_version_is_named() {
    BlueprintTest::with(())
        .given(removed())
        .when(BlueprintCommand::SetState { state: BlueprintState::Enabled, by: root(), if_version: Some(1) })
        .then_expect_error(BlueprintError::Removed(key("web")));
}

// The stored contract.

/// One event of every type.
fn every_event() -> Vec<BlueprintEvent> {
    let by = root();
    vec![
        registered(),
        BlueprintEvent::BlueprintDetailsUpdated { details: details("Renamed"), by: by.clone() },
        state_changed(BlueprintState::Testing, BlueprintState::Enabled),
        BlueprintEvent::BlueprintAclRuleAdded { rule: domain_rule("company.com"), by: by.clone() },
        BlueprintEvent::BlueprintAclRuleRemoved { rule: email_rule("ada@company.com"), by: by.clone() },
        BlueprintEvent::BlueprintAclReplaced {
            acl: Acl::new(vec![domain_rule("company.com"), email_rule("grace@partner.io")]).expect("valid"),
            by: by.clone(),
        },
        BlueprintEvent::BlueprintWorkspaceConfigured { workspace: custom_layout(), by: by.clone() },
        with_anthropic().pop().expect("an event"),
        BlueprintEvent::BlueprintAiProviderCleared { provider: AiProvider::Custom, by: by.clone() },
        BlueprintEvent::BlueprintAiKeyRewrapped {
            provider: AiProvider::Anthropic,
            sealed: SealedSecret::parse("sealed-2").expect("valid"),
            by: None,
        },
        BlueprintEvent::BlueprintRemoved { by },
    ]
}

#[test]
fn every_event_survives_a_round_trip_through_json() {
    for event in every_event() {
        let json = serde_json::to_string(&event).expect("serialises");
        let back: BlueprintEvent = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, event, "{json}");
        assert_eq!(event.event_version(), "1.0");
    }
}

#[test]
fn event_types_are_the_stored_names() {
    let types: Vec<String> = every_event().iter().map(DomainEvent::event_type).collect();
    assert_eq!(
        types,
        [
            "BlueprintRegistered",
            "BlueprintDetailsUpdated",
            "BlueprintStateChanged",
            "BlueprintAclRuleAdded",
            "BlueprintAclRuleRemoved",
            "BlueprintAclReplaced",
            "BlueprintWorkspaceConfigured",
            "BlueprintAiProviderSet",
            "BlueprintAiProviderCleared",
            "BlueprintAiKeyRewrapped",
            "BlueprintRemoved",
        ]
    );
    for event in every_event() {
        let json = serde_json::to_value(&event).expect("serialises");
        assert!(json.get(event.event_type()).is_some(), "the JSON is tagged with the event type: {json}");
    }
}

#[test]
fn the_registration_event_is_stored_in_this_shape() {
    assert_eq!(
        serde_json::to_value(registered()).expect("serialises"),
        serde_json::json!({"BlueprintRegistered": {
            "key": "web",
            "details": {
                "display_name": "Frontend starter",
                "description": "A Next.js starter",
                "source": {
                    "kind": "local",
                    "repository": "https://github.com/acme/web.git",
                    "branch": "main",
                    "dev_command": "npm run dev",
                    "preview_ports": [3100, 8080],
                    "shell": "/bin/bash",
                },
                "target_cluster": "eu-west-3",
                "project_mode": "dedicated",
                "naming": {"project": "rde-{user}-{blueprint}", "environment": "{name}-{random}"},
            },
            "state": "testing",
            "by": ROOT,
        }})
    );
}

#[test]
fn old_events_without_the_optional_fields_still_read() {
    let registered: BlueprintEvent = serde_json::from_str(
        r#"{"BlueprintRegistered": {"key": "web", "by": "root@example.com", "details": {
            "display_name": "Web",
            "source": {"kind": "local", "repository": "/srv/git/web", "branch": "main"}
        }}}"#,
    )
    .expect("deserialises");
    let BlueprintEvent::BlueprintRegistered { details, state, .. } = registered else {
        panic!("a registration: {registered:?}");
    };
    assert_eq!(state, BlueprintState::Testing);
    assert_eq!(details.description, None);
    assert_eq!((details.target_cluster, details.primary_service), (None, None));
    assert_eq!(details.project_mode, ProjectMode::Dedicated);
    assert_eq!(details.naming, NamingTemplates::default());
    let BlueprintSource::Local(local) = &details.source;
    assert_eq!((local.dev_command(), local.preview_ports(), local.shell()), (None, &[][..], &Shell::default()));

    let configured: BlueprintEvent = serde_json::from_str(
        r#"{"BlueprintWorkspaceConfigured": {"workspace": {"lock_layout": true}, "by": "root@example.com"}}"#,
    )
    .expect("deserialises");
    let BlueprintEvent::BlueprintWorkspaceConfigured { workspace, .. } = configured else {
        panic!("a layout: {configured:?}");
    };
    assert!(workspace.lock_layout());
    assert_eq!(workspace.tabs(), WorkspaceConfig::default().tabs());

    let set: BlueprintEvent = serde_json::from_str(
        r#"{"BlueprintAiProviderSet": {"settings": {"provider": "openai", "enabled": false, "model": "gpt-4o"},
            "by": "root@example.com"}}"#,
    )
    .expect("deserialises");
    let BlueprintEvent::BlueprintAiProviderSet { settings, .. } = set else {
        panic!("AI settings: {set:?}");
    };
    assert_eq!(settings.auth_mode(), AiAuthMode::ApiKey);
    assert_eq!((settings.endpoint(), settings.api_key()), (None, None));
}

#[test]
fn events_of_a_newer_version_with_unknown_fields_still_read() {
    let newer: BlueprintEvent =
        serde_json::from_str(r#"{"BlueprintRemoved": {"by": "root@example.com", "reason": "superseded by web-v2"}}"#)
            .expect("deserialises");
    assert_eq!(newer, BlueprintEvent::BlueprintRemoved { by: root() });
}

#[test]
fn errors_say_what_is_wrong() {
    assert_eq!(
        BlueprintError::KeyRetired(key("web")).to_string(),
        "blueprint key web belonged to a removed blueprint and cannot be registered again"
    );
    assert_eq!(
        BlueprintError::StateUnchanged { key: key("web"), state: BlueprintState::Enabled }.to_string(),
        "blueprint web is enabled already"
    );
    assert_eq!(
        BlueprintError::DuplicateAclRule(domain_rule("company.com")).to_string(),
        "the access rule domain company.com exists already"
    );
    assert_eq!(
        BlueprintError::Stale { key: key("web"), expected: 1, actual: 2 }.to_string(),
        "blueprint web is at version 2, not 1"
    );
    assert_eq!(BlueprintState::parse("enabled"), Ok(BlueprintState::Enabled));
    assert_eq!(BlueprintState::parse("removed").map_err(|e| e.field), Err("state"));
}

#[test]
fn a_rewrap_replaces_only_the_ciphertext_it_read_and_keeps_the_last_four() {
    let rewrap = |from: &str| BlueprintCommand::RewrapAiKey {
        provider: AiProvider::Anthropic,
        from: SealedSecret::parse(from).expect("valid"),
        to: SealedSecret::parse("sealed-2").expect("valid"),
        by: Some(root()),
    };
    let rewrapped = BlueprintEvent::BlueprintAiKeyRewrapped {
        provider: AiProvider::Anthropic,
        sealed: SealedSecret::parse("sealed-2").expect("valid"),
        by: Some(root()),
    };
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(rewrap("sealed-1"))
        .then_expect_events(vec![rewrapped.clone()]);
    BlueprintTest::with(())
        .given(with_anthropic())
        .when(rewrap("sealed-0"))
        .then_expect_error(BlueprintError::RewrapSuperseded(AiProvider::Anthropic));
    BlueprintTest::with(())
        .given(vec![registered()])
        .when(rewrap("sealed-1"))
        .then_expect_error(BlueprintError::AiProviderNotConfigured(AiProvider::Anthropic));
    let mut removed = with_anthropic();
    removed.push(BlueprintEvent::BlueprintRemoved { by: root() });
    BlueprintTest::with(())
        .given(removed)
        .when(rewrap("sealed-1"))
        .then_expect_error(BlueprintError::Removed(key("web")));

    let mut blueprint = Blueprint::default();
    for event in with_anthropic() {
        blueprint.apply(event);
    }
    blueprint.apply(rewrapped);
    let stored = blueprint.ai_provider(AiProvider::Anthropic).and_then(AiProviderSettings::api_key).expect("a key");
    assert_eq!(stored.sealed.expose_sealed(), "sealed-2");
    assert_eq!(stored.last_four.as_str(), "wxyz");
    assert_eq!(blueprint.version(), 3);
}
