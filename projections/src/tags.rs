//! The tags read model (`user_tags`, `workspace_tags`): each user's tags and where they are assigned. A workspace
//! deleted (its `WorkspaceDeleteRequested`) loses its assignments here, so lists never name a workspace that is gone.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::tags::{TagEvent, UserTags};
use domain::workspace::{WorkspaceEvent, Workspaces};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::{decode, rfc3339};
use crate::{ApplyError, Projection, Tables};

/// Projects the user_tags aggregates (and workspace deletions) into `user_tags` and `workspace_tags`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TagsProjection;

#[async_trait]
impl Projection for TagsProjection {
    fn name(&self) -> &'static str {
        "tags"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["user_tags", "workspace_tags"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[UserTags::TYPE, Workspaces::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let (tags, assignments) = (tables.name("user_tags"), tables.name("workspace_tags"));
        if event.aggregate_type == Workspaces::TYPE {
            if event.event_type == "WorkspaceDeleteRequested" {
                let deleted = decode::<WorkspaceEvent>(event)?;
                let sql = format!("DELETE FROM {assignments} WHERE workspace_id = $1");
                connection.execute(sqlx::query(&sql).bind(deleted.workspace().to_string())).await?;
            }
            return Ok(());
        }
        if event.aggregate_type != UserTags::TYPE {
            return Ok(());
        }
        let owner = event.aggregate_id.clone();
        match decode::<TagEvent>(event)? {
            TagEvent::TagCreated { tag, name } => {
                let sql = format!("INSERT INTO {tags} (tag_id, owner, name, created_at) VALUES ($1, $2, $3, $4)");
                let query = sqlx::query(&sql)
                    .bind(tag.to_string())
                    .bind(owner)
                    .bind(name.as_str().to_string())
                    .bind(rfc3339(&event.recorded_at));
                connection.execute(query).await?;
            }
            TagEvent::TagRenamed { tag, name } => {
                let sql = format!("UPDATE {tags} SET name = $2 WHERE tag_id = $1");
                connection.execute(sqlx::query(&sql).bind(tag.to_string()).bind(name.as_str().to_string())).await?;
            }
            TagEvent::TagDeleted { tag } => {
                for table in [&tags, &assignments] {
                    let sql = format!("DELETE FROM {table} WHERE tag_id = $1");
                    connection.execute(sqlx::query(&sql).bind(tag.to_string())).await?;
                }
            }
            TagEvent::TagAssigned { tag, workspace } => {
                // A workspace deleted before its assignment was recorded stays untagged (its deletion came first).
                let sql = format!(
                    "INSERT INTO {assignments} (tag_id, workspace_id, owner) VALUES ($1, $2, $3)
                      ON CONFLICT (tag_id, workspace_id) DO NOTHING"
                );
                connection
                    .execute(sqlx::query(&sql).bind(tag.to_string()).bind(workspace.to_string()).bind(owner))
                    .await?;
            }
            TagEvent::TagUnassigned { tag, workspace } => {
                let sql = format!("DELETE FROM {assignments} WHERE tag_id = $1 AND workspace_id = $2");
                connection.execute(sqlx::query(&sql).bind(tag.to_string()).bind(workspace.to_string())).await?;
            }
        }
        Ok(())
    }
}

/// Reads of the tags read model.
#[derive(Debug, Clone)]
pub struct TagsQuery {
    pool: AnyPool,
}

impl TagsQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Every assignment of `owner`'s tags: (workspace, tag id, tag name), by workspace and name.
    pub async fn assigned(&self, owner: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT a.workspace_id, t.tag_id, t.name FROM workspace_tags a JOIN user_tags t ON t.tag_id = a.tag_id
              WHERE a.owner = $1 ORDER BY a.workspace_id, t.name",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))).collect()
    }

    /// The workspaces `owner`'s tag `tag` is assigned to (none for another user's tag).
    pub async fn workspaces_of(&self, owner: &str, tag: &str) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query("SELECT workspace_id FROM workspace_tags WHERE owner = $1 AND tag_id = $2")
            .bind(owner)
            .bind(tag)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| row.try_get("workspace_id")).collect()
    }
}
