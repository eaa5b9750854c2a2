//! The workspaces read model (`workspaces`): one row per workspace, with what the lists, the counters and the
//! control plane's reconciler need. The status shown is not a column: it depends on whether the workspace's agent is
//! connected, which only the gateway knows ([`WorkspaceRow::status`]).

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::workspace::{Desired, Phase, Status, WorkspaceEvent, Workspaces};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::{decode, int, rfc3339};
use crate::{ApplyError, Projection, Tables, TimeKey};

/// Projects the workspaces aggregates into `workspaces`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkspacesProjection;

fn desired_str(desired: Desired) -> &'static str {
    match desired {
        Desired::Running => "running",
        Desired::Stopped => "stopped",
        Desired::Deleted => "deleted",
    }
}

fn spec_json(event: &RecordedEvent, spec: &domain::blueprint::LocalSource) -> Result<String, ApplyError> {
    serde_json::to_string(spec).map_err(|error| ApplyError::Decode {
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        reason: error.to_string(),
    })
}

/// A column's new value.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl WorkspacesProjection {
    async fn update(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        workspace: &str,
        sets: Vec<(&'static str, Value)>,
    ) -> Result<(), ApplyError> {
        let table = tables.name("workspaces");
        let mut assignments: Vec<String> =
            vec!["updated_at = $2".into(), "version = $3".into(), "revision = revision + 1".into()];
        for (index, (column, _)) in sets.iter().enumerate() {
            assignments.push(format!("{column} = ${}", index + 4));
        }
        let sql = format!("UPDATE {table} SET {} WHERE workspace_id = $1", assignments.join(", "));
        let mut query =
            sqlx::query(&sql).bind(workspace.to_string()).bind(rfc3339(&event.recorded_at)).bind(int(event.sequence));
        for (_, value) in sets {
            query = match value {
                Value::Text(text) => query.bind(text),
                Value::Int(number) => query.bind(number),
            };
        }
        connection.execute(query).await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for WorkspacesProjection {
    fn name(&self) -> &'static str {
        "workspaces"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["workspaces"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Workspaces::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type != Workspaces::TYPE {
            return Ok(());
        }
        let decoded = decode::<WorkspaceEvent>(event)?;
        let id = decoded.workspace().to_string();
        let phase = |phase: Phase| Value::Text(Some(phase.as_str().to_string()));
        let generation = |generation: u64| Value::Int(Some(int(generation)));
        let sets = match decoded {
            WorkspaceEvent::WorkspaceLaunched { workspace, owner, name, blueprint_key, project_id, spec, by } => {
                let table = tables.name("workspaces");
                let sql = format!(
                    "INSERT INTO {table} (workspace_id, owner, name, name_folded, blueprint_key, project_id, spec,
                       desired, generation, started_generation, dev_port, phase, failure_phase, failure_reason,
                       removed, created_at, created_by, updated_at, revision, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', 1, NULL, NULL, NULL, NULL, NULL, 0, $8, $9, $8, 1,
                       $10)"
                );
                let query = sqlx::query(&sql)
                    .bind(workspace.to_string())
                    .bind(owner.to_string())
                    .bind(name.to_string())
                    .bind(name.as_str().to_lowercase())
                    .bind(blueprint_key.to_string())
                    .bind(project_id)
                    .bind(spec_json(event, &spec)?)
                    .bind(rfc3339(&event.recorded_at))
                    .bind(by.to_string())
                    .bind(int(event.sequence));
                connection.execute(query).await?;
                return Ok(());
            }
            WorkspaceEvent::WorkspaceStartRequested { generation: next, .. }
            | WorkspaceEvent::WorkspaceRestartRequested { generation: next, .. } => vec![
                ("desired", Value::Text(Some(desired_str(Desired::Running).into()))),
                ("generation", generation(next)),
                ("phase", Value::Text(None)),
                ("failure_phase", Value::Text(None)),
                ("failure_reason", Value::Text(None)),
            ],
            WorkspaceEvent::WorkspaceStopRequested { .. } => vec![
                ("desired", Value::Text(Some(desired_str(Desired::Stopped).into()))),
                ("failure_phase", Value::Text(None)),
                ("failure_reason", Value::Text(None)),
            ],
            WorkspaceEvent::WorkspaceRenamed { name, .. } => vec![
                ("name", Value::Text(Some(name.to_string()))),
                ("name_folded", Value::Text(Some(name.as_str().to_lowercase()))),
            ],
            WorkspaceEvent::WorkspaceUpgradeRequested { spec, generation: next, .. } => vec![
                ("spec", Value::Text(Some(spec_json(event, &spec)?))),
                ("generation", generation(next)),
                ("phase", Value::Text(None)),
                ("failure_phase", Value::Text(None)),
                ("failure_reason", Value::Text(None)),
            ],
            WorkspaceEvent::WorkspaceDeleteRequested { .. } => {
                vec![("desired", Value::Text(Some(desired_str(Desired::Deleted).into())))]
            }
            WorkspaceEvent::WorkspacePhaseReached { phase: reached, .. } => vec![("phase", phase(reached))],
            WorkspaceEvent::WorkspaceSourceCloned { .. } => vec![],
            WorkspaceEvent::WorkspaceStarted { generation: started, dev_port, .. } => {
                vec![("started_generation", generation(started)), ("dev_port", Value::Int(dev_port.map(i64::from)))]
            }
            WorkspaceEvent::WorkspaceStopped { .. } => {
                vec![("started_generation", Value::Int(None)), ("dev_port", Value::Int(None))]
            }
            WorkspaceEvent::WorkspaceFailed { phase: failed, reason, .. } => vec![
                ("failure_phase", phase(failed)),
                ("failure_reason", Value::Text(Some(reason))),
                ("started_generation", Value::Int(None)),
                ("dev_port", Value::Int(None)),
            ],
            WorkspaceEvent::WorkspaceDeleted { .. } => vec![
                ("removed", Value::Int(Some(1))),
                ("started_generation", Value::Int(None)),
                ("dev_port", Value::Int(None)),
            ],
        };
        Self::update(connection, tables, event, &id, sets).await
    }
}

/// One workspace as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRow {
    /// Its id.
    pub workspace_id: String,
    /// Its owner.
    pub owner: String,
    /// Its name.
    pub name: String,
    /// Its blueprint.
    pub blueprint_key: String,
    /// Its blueprint's project.
    pub project_id: String,
    /// JSON of `domain::blueprint::LocalSource`.
    pub spec: String,
    /// `running`, `stopped` or `deleted`.
    pub desired: String,
    /// The current generation.
    pub generation: i64,
    /// The generation whose processes run.
    pub started_generation: Option<i64>,
    /// The dev server's port.
    pub dev_port: Option<i64>,
    /// The last provisioning phase reached by the current generation.
    pub phase: Option<String>,
    /// The current generation's failure: phase.
    pub failure_phase: Option<String>,
    /// The current generation's failure: reason.
    pub failure_reason: Option<String>,
    /// Whether the control plane removed it.
    pub removed: bool,
    /// When it was launched (RFC 3339).
    pub created_at: String,
    /// Who launched it.
    pub created_by: String,
    /// When it last changed.
    pub updated_at: String,
    /// Events about it so far (its ETag).
    pub revision: i64,
    /// Its owner's aggregate's version after its last change.
    pub version: i64,
}

impl WorkspaceRow {
    /// The status shown, given whether its agent is connected (`domain::workspace::Status::derive`).
    pub fn status(&self, agent_connected: bool) -> Status {
        let desired = match self.desired.as_str() {
            "running" => Desired::Running,
            "stopped" => Desired::Stopped,
            _ => Desired::Deleted,
        };
        let current_started = self.started_generation == Some(self.generation);
        Status::derive(desired, self.failure_phase.is_some(), current_started, agent_connected)
    }

    /// Whether it is deleted (asked or done).
    pub fn is_deleted(&self) -> bool {
        self.desired == "deleted"
    }
}

const COLUMNS: &str = "workspace_id, owner, name, blueprint_key, project_id, spec, desired, generation,
    started_generation, dev_port, phase, failure_phase, failure_reason, removed, created_at, created_by, updated_at,
    revision, version";

fn workspace(row: &AnyRow) -> Result<WorkspaceRow, sqlx::Error> {
    Ok(WorkspaceRow {
        workspace_id: row.try_get("workspace_id")?,
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        blueprint_key: row.try_get("blueprint_key")?,
        project_id: row.try_get("project_id")?,
        spec: row.try_get("spec")?,
        desired: row.try_get("desired")?,
        generation: row.try_get("generation")?,
        started_generation: row.try_get("started_generation")?,
        dev_port: row.try_get("dev_port")?,
        phase: row.try_get("phase")?,
        failure_phase: row.try_get("failure_phase")?,
        failure_reason: row.try_get("failure_reason")?,
        removed: row.try_get::<i64, _>("removed")? != 0,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        updated_at: row.try_get("updated_at")?,
        revision: row.try_get("revision")?,
        version: row.try_get("version")?,
    })
}

/// What a workspace list is narrowed to (besides the status, which is judged with the agents' presence).
#[derive(Debug, Clone, Default)]
pub struct WorkspaceFilter {
    /// Only this owner's.
    pub owner: Option<String>,
    /// Only this blueprint's.
    pub blueprint_key: Option<String>,
    /// Only those whose name or owner contains this (case-insensitive).
    pub search: Option<String>,
    /// Only those whose stored facts may give this status (see [`WorkspacesQuery::list`]).
    pub status: Option<Status>,
    /// Only these workspaces (a tag's).
    pub ids: Option<Vec<String>>,
}

/// Reads of the workspaces read model.
#[derive(Debug, Clone)]
pub struct WorkspacesQuery {
    pool: AnyPool,
}

impl WorkspacesQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// One workspace, deleted or not.
    pub async fn get(&self, workspace_id: &str) -> Result<Option<WorkspaceRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM workspaces WHERE workspace_id = $1");
        let row = sqlx::query(&sql).bind(workspace_id).fetch_optional(&self.pool).await?;
        row.map(|row| workspace(&row)).transpose()
    }

    /// Workspaces that are not deleted, matching `filter`, newest first after `after` (keyset on (created, id)), at
    /// most `limit`. A status filter is applied to the stored facts only: `running` keeps those started at their
    /// generation, `deploying` those wanted running and not failed, `stopped` and `error` theirs exactly; the
    /// caller checks the agents' presence.
    pub async fn list(
        &self,
        filter: &WorkspaceFilter,
        after: Option<&TimeKey>,
        limit: i64,
    ) -> Result<Vec<WorkspaceRow>, sqlx::Error> {
        let mut conditions = vec!["desired <> 'deleted'".to_string()];
        let mut binds: Vec<String> = Vec::new();
        for (column, value) in [("owner", &filter.owner), ("blueprint_key", &filter.blueprint_key)] {
            if let Some(value) = value {
                binds.push(value.clone());
                conditions.push(format!("{column} = ${}", binds.len()));
            }
        }
        if let Some(search) = &filter.search {
            let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            binds.push(format!("%{escaped}%"));
            let n = binds.len();
            conditions.push(format!("(name_folded LIKE ${n} ESCAPE '\\' OR owner LIKE ${n} ESCAPE '\\')"));
        }
        match filter.status {
            Some(Status::Running) => conditions
                .push("desired = 'running' AND failure_phase IS NULL AND started_generation = generation".into()),
            Some(Status::Deploying) => conditions.push("desired = 'running' AND failure_phase IS NULL".into()),
            Some(Status::Stopped) => conditions.push("desired = 'stopped'".into()),
            Some(Status::Error) => conditions.push("failure_phase IS NOT NULL".into()),
            None => {}
        }
        if let Some(ids) = &filter.ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut placeholders = Vec::new();
            for id in ids {
                binds.push(id.clone());
                placeholders.push(format!("${}", binds.len()));
            }
            conditions.push(format!("workspace_id IN ({})", placeholders.join(", ")));
        }
        if let Some(after) = after {
            binds.push(after.at.clone());
            binds.push(after.id.clone());
            conditions.push(format!("(created_at, workspace_id) < (${}, ${})", binds.len() - 1, binds.len()));
        }
        let sql = format!(
            "SELECT {COLUMNS} FROM workspaces WHERE {} ORDER BY created_at DESC, workspace_id DESC LIMIT ${}",
            conditions.join(" AND "),
            binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(workspace).collect()
    }

    /// Every workspace the control plane still has work for or runs: not removed (deleted ones included until the
    /// control plane removed them), in id order.
    pub async fn unremoved(&self) -> Result<Vec<WorkspaceRow>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM workspaces WHERE removed = 0 ORDER BY workspace_id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(workspace).collect()
    }
}
