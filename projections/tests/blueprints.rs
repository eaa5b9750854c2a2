//! The blueprints read model on both backends: every event kind lands in its row, the sealed key never does, and a
//! rebuild from the log gives the same rows.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use domain::blueprint::{
    Acl, AclRule, AiAuthMode, AiProvider, AiProviderSettings, ApiKey, ApiKeyChange, Blueprint, BlueprintCommand,
    BlueprintDetails, BlueprintKey, BlueprintSource, BlueprintState, DisplayName, GitBranch, GitRepository, LastFour,
    LocalSource, ModelName, NamingTemplates, ProjectMode, SealedSecret, Shell, Tab, WorkspaceConfig,
};
use domain::Email;
use projections::{BlueprintRow, BlueprintsQuery, Projector, ProjectorConfig};
use store::{AggregateRepository, EventMetadata, EventStore};
use testkit::TestDb;

const SEALED: &str = "ghs1.k1.c2VhbGVkLXNlY3JldC1ub3Qtc2hvd24";

fn admin() -> Email {
    Email::parse("root@example.com").unwrap()
}

fn meta() -> EventMetadata {
    EventMetadata::for_request("root@example.com", "blueprints-projection-test")
}

fn details(name: &str) -> BlueprintDetails {
    let source = LocalSource::new(
        GitRepository::parse("https://git.example.com/web.git").unwrap(),
        GitBranch::parse("main").unwrap(),
        None,
        Vec::new(),
        Shell::default(),
    )
    .unwrap();
    BlueprintDetails {
        display_name: DisplayName::parse(name).unwrap(),
        description: None,
        source: BlueprintSource::Local(source),
        target_cluster: None,
        primary_service: None,
        project_mode: ProjectMode::Dedicated,
        naming: NamingTemplates::default(),
    }
}

/// Every kind of blueprint event, over three blueprints (one removed).
async fn write_history(repository: &AggregateRepository<Blueprint>) {
    let run = |key: &'static str, command: BlueprintCommand| async move {
        repository.execute(key, command, &meta()).await.unwrap();
    };
    for key in ["api", "gone", "web"] {
        let register = BlueprintCommand::Register {
            key: BlueprintKey::parse_new(key).unwrap(),
            details: details(&format!("The {key}")),
            by: admin(),
        };
        run(key, register).await;
    }
    let by = admin;
    run("web", BlueprintCommand::UpdateDetails { details: details("Web app"), by: by(), if_version: None }).await;
    run("web", BlueprintCommand::SetState { state: BlueprintState::Enabled, by: by(), if_version: None }).await;
    let domain = AclRule::parse("domain", "company.com").unwrap();
    let email = AclRule::parse("email", "ada@example.com").unwrap();
    run("web", BlueprintCommand::AddAclRule { rule: domain.clone(), by: by(), if_version: None }).await;
    run("web", BlueprintCommand::AddAclRule { rule: email.clone(), by: by(), if_version: None }).await;
    run("web", BlueprintCommand::RemoveAclRule { rule: domain, by: by(), if_version: None }).await;
    let acl = Acl::new(vec![email, AclRule::parse("domain", "example.org").unwrap()]).unwrap();
    run("api", BlueprintCommand::ReplaceAcl { acl, by: by(), if_version: None }).await;
    let workspace = WorkspaceConfig::new(vec![Tab::Terminal], true, false, true, false).unwrap();
    run("web", BlueprintCommand::ConfigureWorkspace { workspace, by: by(), if_version: None }).await;
    let anthropic = AiProviderSettings::new(
        AiProvider::Anthropic,
        true,
        AiAuthMode::ApiKey,
        ModelName::parse("claude-sonnet-4").unwrap(),
        None,
    )
    .unwrap();
    let key = ApiKey { sealed: SealedSecret::parse(SEALED).unwrap(), last_four: LastFour::parse("wxyz").unwrap() };
    let set = BlueprintCommand::SetAiProvider {
        settings: anthropic,
        api_key: ApiKeyChange::Replace(key),
        by: by(),
        if_version: None,
    };
    run("web", set).await;
    let openai = AiProviderSettings::new(
        AiProvider::OpenAi,
        false,
        AiAuthMode::ApiKey,
        ModelName::parse("gpt-4o").unwrap(),
        None,
    )
    .unwrap();
    let set =
        BlueprintCommand::SetAiProvider { settings: openai, api_key: ApiKeyChange::Keep, by: by(), if_version: None };
    run("web", set).await;
    run("web", BlueprintCommand::ClearAiProvider { provider: AiProvider::OpenAi, by: by(), if_version: None }).await;
    run("gone", BlueprintCommand::Remove { by: by(), if_version: None }).await;
}

fn projector(store: &EventStore) -> Projector {
    let config =
        ProjectorConfig { batch_size: 3, poll_interval: Duration::from_millis(20), ..ProjectorConfig::default() };
    Projector::new(store.clone(), projections::all(), config, &prometheus::Registry::new()).unwrap()
}

async fn rows(store: &EventStore) -> Vec<BlueprintRow> {
    BlueprintsQuery::new(store.read_models().clone()).list(None, true, 100).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_blueprint_event_reaches_its_row_and_a_rebuild_gives_the_same_rows() {
    for db in TestDb::all("blueprints projection").await {
        let store = db.store().await;
        let backend = db.backend();
        let repository = AggregateRepository::<Blueprint>::new(store.clone(), ());
        write_history(&repository).await;
        projector(&store).catch_up().await.unwrap();

        let projected = rows(&store).await;
        let keys: Vec<&str> = projected.iter().map(|row| row.blueprint_key.as_str()).collect();
        assert_eq!(keys, ["api", "gone", "web"], "{backend}");
        for row in &projected {
            let (blueprint, version) = repository.load(&row.blueprint_key).await.unwrap();
            assert_eq!(row.version as u64, version, "{backend}: {}", row.blueprint_key);
            assert_eq!(row.state, blueprint.state().as_str());
            assert_eq!(row.removed, blueprint.is_removed());
            let acl: Acl = serde_json::from_str(&row.acl).unwrap();
            assert_eq!(&acl, blueprint.acl(), "{backend}: {}", row.blueprint_key);
            let workspace: WorkspaceConfig = serde_json::from_str(&row.workspace).unwrap();
            assert_eq!(&workspace, blueprint.workspace());
            let stored: BlueprintDetails = serde_json::from_str(&row.details).unwrap();
            assert_eq!(Some(&stored), blueprint.details());
            assert_eq!(row.display_name, stored.display_name.to_string());
            assert!(!format!("{row:?}").contains(SEALED), "{backend}: the sealed key reached the read model");
        }
        let web = projected.iter().find(|row| row.blueprint_key == "web").unwrap();
        let ai: serde_json::Value = serde_json::from_str(&web.ai).unwrap();
        assert_eq!(
            ai,
            serde_json::json!([{"provider": "anthropic", "enabled": true, "auth_mode": "api_key",
                                "model": "claude-sonnet-4", "api_key_last_four": "wxyz"}])
        );
        assert_eq!(web.display_name, "Web app");
        let listed: Vec<String> = BlueprintsQuery::new(store.read_models().clone())
            .listed()
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.blueprint_key)
            .collect();
        assert_eq!(listed, ["api", "web"], "{backend}: the removed one is not listed");
        let live = BlueprintsQuery::new(store.read_models().clone()).list(None, false, 100).await.unwrap();
        assert_eq!(live.len(), 2);

        // Damage the read model, then rebuild it from the log alone.
        sqlx::query("DELETE FROM blueprints WHERE blueprint_key = 'web'").execute(store.read_models()).await.unwrap();
        let blueprints = projections::all().into_iter().find(|projection| projection.name() == "blueprints").unwrap();
        projections::rebuild(&store, blueprints.as_ref(), &|_, _| {}).await.unwrap();
        assert_eq!(rows(&store).await, projected, "{backend}");
        store.close().await;
    }
}
