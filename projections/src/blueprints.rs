//! The blueprints read model (`blueprints`): one row per registered blueprint, removed ones included, with what the
//! admin list and the catalog need. AI providers are kept with the key's last four characters; the sealed key never
//! leaves the event log.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::blueprint::{AclRule, AiProvider, AiProviderSettings, Blueprint, BlueprintEvent, WorkspaceConfig};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::{decode, int, rfc3339};
use crate::{ApplyError, Projection, Tables};

/// One AI provider's settings as the read model keeps them: everything but the sealed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiProviderSummary {
    /// `anthropic`, `openai` or `custom`.
    pub provider: AiProvider,
    /// Whether workspaces use it.
    pub enabled: bool,
    /// `api_key` or `user_oauth`.
    pub auth_mode: String,
    /// The model.
    pub model: String,
    /// The custom provider's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The stored key's last four characters (none: no key stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_last_four: Option<String>,
}

impl From<&AiProviderSettings> for AiProviderSummary {
    fn from(settings: &AiProviderSettings) -> Self {
        let auth_mode = serde_json::to_value(settings.auth_mode())
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        Self {
            provider: settings.provider(),
            enabled: settings.enabled(),
            auth_mode,
            model: settings.model().to_string(),
            endpoint: settings.endpoint().map(ToString::to_string),
            api_key_last_four: settings.api_key().map(|key| key.last_four.to_string()),
        }
    }
}

/// Projects the blueprint aggregates into `blueprints`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlueprintsProjection;

/// A column's new value.
enum Value {
    Text(Option<String>),
    Int(i64),
}

fn json<T: Serialize>(value: &T) -> Result<String, ApplyError> {
    serde_json::to_string(value).map_err(|error| ApplyError::Decode {
        event_type: "blueprint".into(),
        event_version: String::new(),
        reason: error.to_string(),
    })
}

fn parse_column<T: serde::de::DeserializeOwned>(event: &RecordedEvent, raw: &str) -> Result<T, ApplyError> {
    serde_json::from_str(raw).map_err(|error| ApplyError::Decode {
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        reason: format!("read model column: {error}"),
    })
}

impl BlueprintsProjection {
    /// Sets `sets` on the blueprint's row and stamps it with the event.
    async fn update(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        by: &str,
        sets: Vec<(&'static str, Value)>,
    ) -> Result<(), ApplyError> {
        let table = tables.name("blueprints");
        let mut assignments: Vec<String> =
            vec!["updated_at = $2".into(), "updated_by = $3".into(), "version = $4".into()];
        for (index, (column, _)) in sets.iter().enumerate() {
            assignments.push(format!("{column} = ${}", index + 5));
        }
        let sql = format!("UPDATE {table} SET {} WHERE blueprint_key = $1", assignments.join(", "));
        let mut query = sqlx::query(&sql)
            .bind(event.aggregate_id.clone())
            .bind(rfc3339(&event.recorded_at))
            .bind(by.to_string())
            .bind(int(event.sequence));
        for (_, value) in sets {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Int(number) => query.bind(number),
            };
        }
        connection.execute(query).await?;
        Ok(())
    }

    /// The current value of one JSON column of the blueprint's row.
    async fn column(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        column: &str,
    ) -> Result<String, ApplyError> {
        let table = tables.name("blueprints");
        let sql = format!("SELECT {column} FROM {table} WHERE blueprint_key = $1");
        let row = connection.fetch_optional(sqlx::query(&sql).bind(event.aggregate_id.clone())).await?;
        match row {
            Some(row) => Ok(row.try_get::<String, _>(column)?),
            None => Ok("[]".into()),
        }
    }
}

#[async_trait]
impl Projection for BlueprintsProjection {
    fn name(&self) -> &'static str {
        "blueprints"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["blueprints"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Blueprint::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type != Blueprint::TYPE {
            return Ok(());
        }
        match decode::<BlueprintEvent>(event)? {
            BlueprintEvent::BlueprintRegistered { key, details, state, by } => {
                let table = tables.name("blueprints");
                let sql = format!(
                    "INSERT INTO {table} (blueprint_key, display_name, description, details, state, removed, acl,
                       workspace, ai, registered_at, registered_by, updated_at, updated_by, version)
                     VALUES ($1, $2, $3, $4, $5, 0, '[]', $6, '[]', $7, $8, $7, $8, $9)"
                );
                let at = rfc3339(&event.recorded_at);
                let query = sqlx::query(&sql)
                    .bind(key.to_string())
                    .bind(details.display_name.to_string())
                    .bind(details.description.as_ref().map(ToString::to_string))
                    .bind(json(&details)?)
                    .bind(state.as_str())
                    .bind(json(&WorkspaceConfig::default())?)
                    .bind(at)
                    .bind(by.to_string())
                    .bind(int(event.sequence));
                connection.execute(query).await?;
            }
            BlueprintEvent::BlueprintDetailsUpdated { details, by } => {
                let sets = vec![
                    ("display_name", Value::Text(Some(details.display_name.to_string()))),
                    ("description", Value::Text(details.description.as_ref().map(ToString::to_string))),
                    ("details", Value::Text(Some(json(&details)?))),
                ];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintStateChanged { to, by, .. } => {
                let sets = vec![("state", Value::Text(Some(to.as_str().to_string())))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAclRuleAdded { rule, by } => {
                let mut rules: Vec<AclRule> =
                    parse_column(event, &Self::column(connection, tables, event, "acl").await?)?;
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
                let sets = vec![("acl", Value::Text(Some(json(&rules)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAclRuleRemoved { rule, by } => {
                let mut rules: Vec<AclRule> =
                    parse_column(event, &Self::column(connection, tables, event, "acl").await?)?;
                rules.retain(|kept| kept != &rule);
                let sets = vec![("acl", Value::Text(Some(json(&rules)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAclReplaced { acl, by } => {
                let sets = vec![("acl", Value::Text(Some(json(&acl)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintWorkspaceConfigured { workspace, by } => {
                let sets = vec![("workspace", Value::Text(Some(json(&workspace)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAiProviderSet { settings, by } => {
                let mut providers: Vec<AiProviderSummary> =
                    parse_column(event, &Self::column(connection, tables, event, "ai").await?)?;
                providers.retain(|kept| kept.provider != settings.provider());
                providers.push(AiProviderSummary::from(&settings));
                providers.sort_by_key(|summary| summary.provider);
                let sets = vec![("ai", Value::Text(Some(json(&providers)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAiProviderCleared { provider, by } => {
                let mut providers: Vec<AiProviderSummary> =
                    parse_column(event, &Self::column(connection, tables, event, "ai").await?)?;
                providers.retain(|kept| kept.provider != provider);
                let sets = vec![("ai", Value::Text(Some(json(&providers)?)))];
                Self::update(connection, tables, event, by.as_str(), sets).await?;
            }
            BlueprintEvent::BlueprintAiKeyRewrapped { .. } => {
                // Only the ciphertext changed, which the read model does not hold: the row keeps its last change
                // (a key rotation is not an edit) and moves to the new version, which ETags name.
                let table = tables.name("blueprints");
                let sql = format!("UPDATE {table} SET version = $2 WHERE blueprint_key = $1");
                let query = sqlx::query(&sql).bind(event.aggregate_id.clone()).bind(int(event.sequence));
                connection.execute(query).await?;
            }
            BlueprintEvent::BlueprintRemoved { by } => {
                Self::update(connection, tables, event, by.as_str(), vec![("removed", Value::Int(1))]).await?;
            }
        }
        Ok(())
    }
}

/// One blueprint as the read model holds it. The JSON columns are the domain's serialisations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueprintRow {
    /// The key.
    pub blueprint_key: String,
    /// The display name.
    pub display_name: String,
    /// The description.
    pub description: Option<String>,
    /// The General tab (JSON of `domain::blueprint::BlueprintDetails`).
    pub details: String,
    /// `testing`, `enabled` or `disabled`.
    pub state: String,
    /// Whether it was removed.
    pub removed: bool,
    /// The access rules (JSON of `domain::blueprint::Acl`).
    pub acl: String,
    /// The workspace layout (JSON of `domain::blueprint::WorkspaceConfig`).
    pub workspace: String,
    /// The AI providers (JSON of a list of [`AiProviderSummary`]).
    pub ai: String,
    /// When it was registered (RFC 3339).
    pub registered_at: String,
    /// Who registered it.
    pub registered_by: String,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
    /// Who last changed it.
    pub updated_by: String,
    /// The aggregate's version after its last change (the ETag).
    pub version: i64,
}

const COLUMNS: &str = "blueprint_key, display_name, description, details, state, removed, acl, workspace, ai,
    registered_at, registered_by, updated_at, updated_by, version";

fn blueprint(row: &AnyRow) -> Result<BlueprintRow, sqlx::Error> {
    Ok(BlueprintRow {
        blueprint_key: row.try_get("blueprint_key")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        details: row.try_get("details")?,
        state: row.try_get("state")?,
        removed: row.try_get::<i64, _>("removed")? != 0,
        acl: row.try_get("acl")?,
        workspace: row.try_get("workspace")?,
        ai: row.try_get("ai")?,
        registered_at: row.try_get("registered_at")?,
        registered_by: row.try_get("registered_by")?,
        updated_at: row.try_get("updated_at")?,
        updated_by: row.try_get("updated_by")?,
        version: row.try_get("version")?,
    })
}

/// Reads of the blueprints read model.
#[derive(Debug, Clone)]
pub struct BlueprintsQuery {
    pool: AnyPool,
}

impl BlueprintsQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// One blueprint (removed ones too).
    pub async fn get(&self, key: &str) -> Result<Option<BlueprintRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM blueprints WHERE blueprint_key = $1");
        let row = sqlx::query(&sql).bind(key).fetch_optional(&self.pool).await?;
        row.map(|row| blueprint(&row)).transpose()
    }

    /// Blueprints in key order after `after` (keyset pagination), at most `limit`; removed ones only if asked.
    pub async fn list(
        &self,
        after: Option<&str>,
        include_removed: bool,
        limit: i64,
    ) -> Result<Vec<BlueprintRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM blueprints WHERE blueprint_key > $1 AND removed <= $2
              ORDER BY blueprint_key LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(after.unwrap_or(""))
            .bind(i64::from(include_removed))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(blueprint).collect()
    }

    /// Every blueprint a catalog may list (neither removed nor disabled), in key order.
    pub async fn listed(&self) -> Result<Vec<BlueprintRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM blueprints WHERE removed = 0 AND state <> 'disabled' ORDER BY blueprint_key"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(blueprint).collect()
    }
}
