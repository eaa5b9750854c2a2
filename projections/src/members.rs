//! The members read model: one row per roster member.

use async_trait::async_trait;
use chrono::SecondsFormat;
use cqrs_es::Aggregate;
use domain::roster::{Roster, RosterEvent};
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::decode;
use crate::{ApplyError, Projection, Tables};

/// Projects the roster aggregate into `members`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MembersProjection;

#[async_trait]
impl Projection for MembersProjection {
    fn name(&self) -> &'static str {
        "members"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["members"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Roster::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type != Roster::TYPE {
            return Ok(());
        }
        let members = tables.name("members");
        let at = event.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let version = i64::try_from(event.sequence).unwrap_or(i64::MAX);
        match decode::<RosterEvent>(event)? {
            RosterEvent::MemberInvited { email, role, invited_by } => {
                let sql = format!(
                    "INSERT INTO {members} (email, role, status, invited_by, invited_at, updated_at, version)
                     VALUES ($1, $2, 'pending', $3, $4, $4, $5)
                     ON CONFLICT (email) DO UPDATE SET role = excluded.role, status = excluded.status,
                       invited_by = excluded.invited_by, invited_at = excluded.invited_at,
                       updated_at = excluded.updated_at, version = excluded.version"
                );
                let query = sqlx::query(&sql).bind(email.to_string()).bind(role.as_str());
                connection.execute(query.bind(invited_by.map(String::from)).bind(at).bind(version)).await?;
            }
            RosterEvent::MemberActivated { email } => {
                let sql =
                    format!("UPDATE {members} SET status = 'active', updated_at = $2, version = $3 WHERE email = $1");
                connection.execute(sqlx::query(&sql).bind(email.to_string()).bind(at).bind(version)).await?;
            }
            RosterEvent::MemberRoleChanged { email, to, .. } => {
                let sql = format!("UPDATE {members} SET role = $2, updated_at = $3, version = $4 WHERE email = $1");
                let query = sqlx::query(&sql).bind(email.to_string()).bind(to.as_str());
                connection.execute(query.bind(at).bind(version)).await?;
            }
            RosterEvent::MemberRemoved { email, .. } => {
                let sql = format!("DELETE FROM {members} WHERE email = $1");
                connection.execute(sqlx::query(&sql).bind(email.to_string())).await?;
            }
        }
        Ok(())
    }
}

/// One member as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The member's address.
    pub email: String,
    /// `admin`, `member` or `auditor`.
    pub role: String,
    /// `pending` or `active`.
    pub status: String,
    /// Who invited them (`None` for the bootstrap admin).
    pub invited_by: Option<String>,
    /// When they were invited (RFC 3339).
    pub invited_at: String,
    /// When the row last changed (RFC 3339).
    pub updated_at: String,
    /// The roster version that last changed the row.
    pub version: i64,
}

/// Reads of the members read model.
#[derive(Debug, Clone)]
pub struct MembersQuery {
    pool: AnyPool,
}

impl MembersQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// One member.
    pub async fn get(&self, email: &str) -> Result<Option<MemberRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT email, role, status, invited_by, invited_at, updated_at, version FROM members WHERE email = $1",
        )
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| member(&row)).transpose()
    }

    /// Members in address order, after `after` (keyset pagination), at most `limit`.
    pub async fn list(&self, after: Option<&str>, limit: i64) -> Result<Vec<MemberRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT email, role, status, invited_by, invited_at, updated_at, version FROM members
              WHERE email > $1 ORDER BY email LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(member).collect()
    }
}

fn member(row: &sqlx::any::AnyRow) -> Result<MemberRow, sqlx::Error> {
    Ok(MemberRow {
        email: row.try_get("email")?,
        role: row.try_get("role")?,
        status: row.try_get("status")?,
        invited_by: row.try_get("invited_by")?,
        invited_at: row.try_get("invited_at")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}
