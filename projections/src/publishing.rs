//! Read models of publishing: the approvals queue, builders' requests, publish history with every review step
//! (`publish_requests`, `publish_reviews`), and the trust rules (`trust_rules`).

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::publishing::{Publishing, PublishingEvent};
use domain::trust::{TrustEvent, TrustRules};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::{decode, int, rfc3339, TimeKey};
use crate::{ApplyError, Projection, Tables};

/// A request's final decision, as the read model records it.
struct Decision<'a> {
    status: &'a str,
    by: Option<&'a str>,
    reason: Option<&'a str>,
    trust_rule_id: Option<&'a str>,
}

impl<'a> Decision<'a> {
    fn new(status: &'a str, by: Option<&'a str>, reason: Option<&'a str>) -> Self {
        Self { status, by, reason, trust_rule_id: None }
    }
}

/// Projects the publishing aggregate into `publish_requests` and `publish_reviews`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishRequestsProjection;

impl PublishRequestsProjection {
    /// Appends a step to a request's history and moves the request row to `version`.
    async fn step(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        request_id: &str,
        kind: &str,
        actor: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), ApplyError> {
        let reviews = tables.name("publish_reviews");
        let requests = tables.name("publish_requests");
        let at = rfc3339(&event.recorded_at);
        let version = int(event.sequence);
        let sql = format!(
            "INSERT INTO {reviews} (request_id, version, kind, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        let query = sqlx::query(&sql).bind(request_id).bind(version).bind(kind);
        connection.execute(query.bind(actor.map(str::to_string)).bind(reason.map(str::to_string)).bind(&at)).await?;
        let sql = format!("UPDATE {requests} SET version = $2, updated_at = $3 WHERE request_id = $1");
        connection.execute(sqlx::query(&sql).bind(request_id).bind(version).bind(at)).await?;
        Ok(())
    }

    /// Queues an approved request's delivery (only a request made to be delivered).
    async fn queue(connection: &mut AnyConnection, tables: &Tables, request_id: &str) -> Result<(), ApplyError> {
        let requests = tables.name("publish_requests");
        let sql = format!("UPDATE {requests} SET delivery_status = 'queued' WHERE request_id = $1 AND deliver = 1");
        connection.execute(sqlx::query(&sql).bind(request_id)).await?;
        Ok(())
    }

    /// Records a request's final decision.
    async fn decide(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        request_id: &str,
        decision: Decision<'_>,
    ) -> Result<(), ApplyError> {
        let Decision { status, by, reason, trust_rule_id } = decision;
        let requests = tables.name("publish_requests");
        let sql = format!(
            "UPDATE {requests} SET status = $2, decided_at = $3, decided_by = $4, decision_reason = $5,
               trust_rule_id = $6 WHERE request_id = $1"
        );
        let query = sqlx::query(&sql).bind(request_id).bind(status).bind(rfc3339(&event.recorded_at));
        let query = query.bind(by.map(str::to_string)).bind(reason.map(str::to_string));
        connection.execute(query.bind(trust_rule_id.map(str::to_string))).await?;
        Ok(())
    }
}

/// The reviewer shown for decisions a trust rule made.
pub const SYSTEM_REVIEWER: &str = "system";

#[async_trait]
impl Projection for PublishRequestsProjection {
    fn name(&self) -> &'static str {
        "publish_requests"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["publish_requests", "publish_reviews"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Publishing::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type != Publishing::TYPE {
            return Ok(());
        }
        match decode::<PublishingEvent>(event)? {
            PublishingEvent::SubdomainClaimed { .. } | PublishingEvent::SubdomainReleased { .. } => {}
            PublishingEvent::PublishRequested {
                request_id,
                workspace_id,
                blueprint_key,
                subdomain,
                builder,
                commit_id,
                diff,
                message,
                approvals_required,
                submitted_at,
                expires_at,
                base_commit,
                deliver,
            } => {
                let requests = tables.name("publish_requests");
                let sql = format!(
                    "INSERT INTO {requests} (request_id, workspace_id, blueprint_key, subdomain, builder, commit_id,
                       files, insertions, deletions, patch, message, status, approvals_required, approvals,
                       submitted_at, expires_at, updated_at, version, base_commit, patch_truncated, deliver)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', $12, 0, $13, $14, $15, $16,
                       $17, $18, $19)"
                );
                let patch_truncated = i64::from(diff.patch_truncated);
                let query = sqlx::query(&sql)
                    .bind(request_id.to_string())
                    .bind(workspace_id.to_string())
                    .bind(blueprint_key.to_string())
                    .bind(subdomain.to_string())
                    .bind(builder.to_string())
                    .bind(commit_id.to_string())
                    .bind(i64::from(diff.files))
                    .bind(int(diff.insertions))
                    .bind(int(diff.deletions))
                    .bind(diff.patch)
                    .bind(message)
                    .bind(i64::from(approvals_required))
                    .bind(rfc3339(&submitted_at))
                    .bind(rfc3339(&expires_at))
                    .bind(rfc3339(&event.recorded_at))
                    .bind(int(event.sequence))
                    .bind(base_commit.map(|commit| commit.to_string()))
                    .bind(patch_truncated)
                    .bind(i64::from(deliver));
                connection.execute(query).await?;
                let actor = builder.to_string();
                Self::step(connection, tables, event, request_id.as_str(), "submitted", Some(&actor), None).await?;
            }
            PublishingEvent::ApprovalRecorded { request_id, reviewer, reason } => {
                let requests = tables.name("publish_requests");
                let sql = format!("UPDATE {requests} SET approvals = approvals + 1 WHERE request_id = $1");
                connection.execute(sqlx::query(&sql).bind(request_id.to_string())).await?;
                let reviewer = reviewer.to_string();
                Self::step(
                    connection,
                    tables,
                    event,
                    request_id.as_str(),
                    "approval",
                    Some(&reviewer),
                    reason.as_deref(),
                )
                .await?;
            }
            PublishingEvent::PublishApproved { request_id } => {
                // The deciding admin is the one whose approval completed the count: the latest approval step.
                let reviews = tables.name("publish_reviews");
                let sql = format!(
                    "SELECT actor, reason FROM {reviews} WHERE request_id = $1 AND kind = 'approval'
                      ORDER BY version DESC LIMIT 1"
                );
                let last = connection.fetch_optional(sqlx::query(&sql).bind(request_id.to_string())).await?;
                let (by, reason): (Option<String>, Option<String>) = match last {
                    Some(row) => (row.try_get("actor")?, row.try_get("reason")?),
                    None => (None, None),
                };
                let id = request_id.as_str();
                Self::decide(
                    connection,
                    tables,
                    event,
                    id,
                    Decision::new("approved", by.as_deref(), reason.as_deref()),
                )
                .await?;
                Self::step(connection, tables, event, id, "approved", by.as_deref(), None).await?;
                Self::queue(connection, tables, id).await?;
            }
            PublishingEvent::PublishAutoApproved { request_id, trust_rule_id, reason } => {
                let id = request_id.as_str();
                let by = Some(SYSTEM_REVIEWER);
                Self::decide(
                    connection,
                    tables,
                    event,
                    id,
                    Decision { trust_rule_id: Some(&trust_rule_id), ..Decision::new("approved", by, Some(&reason)) },
                )
                .await?;
                Self::step(connection, tables, event, id, "auto_approved", by, Some(&reason)).await?;
                Self::queue(connection, tables, id).await?;
            }
            PublishingEvent::PublishRejected { request_id, reviewer, feedback } => {
                let id = request_id.as_str();
                let by = reviewer.to_string();
                Self::decide(connection, tables, event, id, Decision::new("rejected", Some(&by), feedback.as_deref()))
                    .await?;
                Self::step(connection, tables, event, id, "rejected", Some(&by), feedback.as_deref()).await?;
            }
            PublishingEvent::PublishWithdrawn { request_id, withdrawn_by } => {
                let id = request_id.as_str();
                let by = withdrawn_by.to_string();
                Self::decide(connection, tables, event, id, Decision::new("withdrawn", Some(&by), None)).await?;
                Self::step(connection, tables, event, id, "withdrawn", Some(&by), None).await?;
            }
            PublishingEvent::PublishExpired { request_id } => {
                let id = request_id.as_str();
                Self::decide(connection, tables, event, id, Decision::new("expired", None, None)).await?;
                Self::step(connection, tables, event, id, "expired", None, None).await?;
            }
            PublishingEvent::PublishPushed { request_id, remote, branch, .. } => {
                let requests = tables.name("publish_requests");
                let sql = format!(
                    "UPDATE {requests} SET delivery_status = 'pushed', delivery_remote = $2, delivery_branch = $3,
                       failure_stage = NULL, failure_reason = NULL, failure_retryable = NULL, failure_at = NULL,
                       delivery_attempts = 0 WHERE request_id = $1"
                );
                let id = request_id.as_str();
                connection.execute(sqlx::query(&sql).bind(id).bind(&remote).bind(&branch)).await?;
                let said = format!("{branch} on {remote}");
                Self::step(connection, tables, event, id, "pushed", Some(SYSTEM_REVIEWER), Some(&said)).await?;
            }
            PublishingEvent::PullRequestOpened { request_id, url, number } => {
                let requests = tables.name("publish_requests");
                let sql = format!(
                    "UPDATE {requests} SET delivery_status = 'pull_request_opened', pull_request_url = $2,
                       pull_request_number = $3, failure_stage = NULL, failure_reason = NULL,
                       failure_retryable = NULL, failure_at = NULL, delivery_attempts = 0 WHERE request_id = $1"
                );
                let id = request_id.as_str();
                connection.execute(sqlx::query(&sql).bind(id).bind(&url).bind(int(number))).await?;
                Self::step(connection, tables, event, id, "pull_request_opened", Some(SYSTEM_REVIEWER), Some(&url))
                    .await?;
            }
            PublishingEvent::PublishFailed { request_id, stage, reason, retryable, at } => {
                let requests = tables.name("publish_requests");
                let sql = format!(
                    "UPDATE {requests} SET delivery_status = 'failed', failure_stage = $2, failure_reason = $3,
                       failure_retryable = $4, failure_at = $5, delivery_attempts = delivery_attempts + 1
                     WHERE request_id = $1"
                );
                let id = request_id.as_str();
                let query = sqlx::query(&sql).bind(id).bind(stage.as_str()).bind(&reason);
                connection.execute(query.bind(i64::from(retryable)).bind(rfc3339(&at))).await?;
                let said = format!("{}: {reason}", stage.as_str());
                Self::step(connection, tables, event, id, "failed", Some(SYSTEM_REVIEWER), Some(&said)).await?;
            }
            PublishingEvent::PublishRetryRequested { request_id, by } => {
                let requests = tables.name("publish_requests");
                let sql = format!(
                    "UPDATE {requests} SET
                       delivery_status = CASE WHEN delivery_branch IS NULL THEN 'queued' ELSE 'pushed' END,
                       failure_stage = NULL, failure_reason = NULL, failure_retryable = NULL, failure_at = NULL,
                       delivery_attempts = 0 WHERE request_id = $1"
                );
                let id = request_id.as_str();
                connection.execute(sqlx::query(&sql).bind(id)).await?;
                let by = by.to_string();
                Self::step(connection, tables, event, id, "retried", Some(&by), None).await?;
            }
        }
        Ok(())
    }
}

/// Projects the trust rules aggregate into `trust_rules`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustRulesProjection;

#[async_trait]
impl Projection for TrustRulesProjection {
    fn name(&self) -> &'static str {
        "trust_rules"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["trust_rules"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[TrustRules::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type != TrustRules::TYPE {
            return Ok(());
        }
        let rules = tables.name("trust_rules");
        match decode::<TrustEvent>(event)? {
            TrustEvent::TrustRuleGranted { rule_id, email, blueprint_key, description, granted_by } => {
                let sql = format!(
                    "INSERT INTO {rules} (rule_id, email, blueprint_key, description, granted_by, granted_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)"
                );
                let query = sqlx::query(&sql)
                    .bind(rule_id)
                    .bind(email.to_string())
                    .bind(blueprint_key.map(String::from))
                    .bind(description)
                    .bind(granted_by.to_string())
                    .bind(rfc3339(&event.recorded_at))
                    .bind(int(event.sequence));
                connection.execute(query).await?;
            }
            TrustEvent::TrustRuleRevoked { rule_id, .. } => {
                let sql = format!("DELETE FROM {rules} WHERE rule_id = $1");
                connection.execute(sqlx::query(&sql).bind(rule_id)).await?;
            }
        }
        Ok(())
    }
}

/// One publish request as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequestRow {
    /// The request.
    pub request_id: String,
    /// The workspace.
    pub workspace_id: String,
    /// Its blueprint.
    pub blueprint_key: String,
    /// The subdomain asked for.
    pub subdomain: String,
    /// The builder.
    pub builder: String,
    /// The commit.
    pub commit_id: String,
    /// Files changed.
    pub files: i64,
    /// Lines added.
    pub insertions: i64,
    /// Lines removed.
    pub deletions: i64,
    /// The patch, when requested and present.
    pub patch: Option<String>,
    /// The builder's message.
    pub message: String,
    /// pending | approved | rejected | withdrawn | expired.
    pub status: String,
    /// Approvals needed.
    pub approvals_required: i64,
    /// Approvals so far.
    pub approvals: i64,
    /// RFC 3339.
    pub submitted_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339, once decided.
    pub decided_at: Option<String>,
    /// Who decided (`system` for a trust rule).
    pub decided_by: Option<String>,
    /// The deciding reason or feedback.
    pub decision_reason: Option<String>,
    /// The trust rule that approved it.
    pub trust_rule_id: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
    /// The publishing version that last changed the request: what its ETag names.
    pub version: i64,
    /// Where the diff started.
    pub base_commit: Option<String>,
    /// Whether the patch is only the beginning of the diff.
    pub patch_truncated: bool,
    /// `queued`, `pushed`, `pull_request_opened` or `failed`; `None` when not delivered.
    pub delivery_status: Option<String>,
    /// The remote the commit was pushed to (credentials redacted).
    pub delivery_remote: Option<String>,
    /// The branch it was pushed to.
    pub delivery_branch: Option<String>,
    /// The pull request's web page.
    pub pull_request_url: Option<String>,
    /// Its number.
    pub pull_request_number: Option<i64>,
    /// The failed step (`push`, `pull_request`).
    pub failure_stage: Option<String>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Whether it is retried automatically.
    pub failure_retryable: Option<bool>,
    /// When it failed (RFC 3339).
    pub failure_at: Option<String>,
    /// Failed attempts since the last success or retry.
    pub delivery_attempts: i64,
}

/// One step of a request's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    /// submitted | approval | approved | auto_approved | rejected | withdrawn | expired.
    pub kind: String,
    /// Who (absent for expiry).
    pub actor: Option<String>,
    /// Reason or feedback.
    pub reason: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// One trust rule as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRuleRow {
    /// The rule.
    pub rule_id: String,
    /// The trusted user.
    pub email: String,
    /// The blueprint, or `None` for every blueprint.
    pub blueprint_key: Option<String>,
    /// Why.
    pub description: Option<String>,
    /// The admin.
    pub granted_by: String,
    /// RFC 3339.
    pub granted_at: String,
}

/// Filters of the request lists.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this blueprint.
    pub blueprint_key: Option<String>,
    /// Only this builder.
    pub builder: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
}

const REQUEST_COLUMNS: &str =
    "request_id, workspace_id, blueprint_key, subdomain, builder, commit_id, files, insertions,
    deletions, NULL AS patch, message, status, approvals_required, approvals, submitted_at, expires_at, decided_at,
    decided_by, decision_reason, trust_rule_id, updated_at, version, base_commit, patch_truncated, delivery_status,
    delivery_remote, delivery_branch, pull_request_url, pull_request_number, failure_stage, failure_reason,
    failure_retryable, failure_at, delivery_attempts";

/// Reads of the publishing read models.
#[derive(Debug, Clone)]
pub struct PublishingQuery {
    pool: AnyPool,
}

impl PublishingQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// One request, with its patch.
    pub async fn get(&self, request_id: &str) -> Result<Option<PublishRequestRow>, sqlx::Error> {
        let sql = format!(
            "SELECT {} FROM publish_requests WHERE request_id = $1",
            REQUEST_COLUMNS.replace("NULL AS patch", "patch")
        );
        let row = sqlx::query(&sql).bind(request_id).fetch_optional(&self.pool).await?;
        row.map(|row| request(&row)).transpose()
    }

    /// A request's history, oldest first.
    pub async fn history(&self, request_id: &str) -> Result<Vec<ReviewRow>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT kind, actor, reason, at FROM publish_reviews WHERE request_id = $1 ORDER BY version")
                .bind(request_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(ReviewRow {
                    kind: row.try_get("kind")?,
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }

    /// Requests matching `filter` in (submission time, id) order (`oldest_first`, or newest first), after `after`
    /// (keyset pagination), at most `limit`. Patches are left out of lists.
    pub async fn list(
        &self,
        filter: &RequestFilter,
        oldest_first: bool,
        after: Option<&TimeKey>,
        limit: i64,
    ) -> Result<Vec<PublishRequestRow>, sqlx::Error> {
        let mut conditions = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        for (column, value) in [
            ("status", &filter.status),
            ("blueprint_key", &filter.blueprint_key),
            ("builder", &filter.builder),
            ("workspace_id", &filter.workspace_id),
        ] {
            if let Some(value) = value {
                binds.push(value.clone());
                conditions.push(format!("{column} = ${}", binds.len()));
            }
        }
        let (comparison, direction) = if oldest_first { (">", "ASC") } else { ("<", "DESC") };
        if let Some(after) = after {
            binds.push(after.at.clone());
            binds.push(after.id.clone());
            conditions.push(format!(
                "(submitted_at, request_id) {comparison} (${}, ${})",
                binds.len() - 1,
                binds.len()
            ));
        }
        let filter = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM publish_requests {filter}
              ORDER BY submitted_at {direction}, request_id {direction} LIMIT ${}",
            binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(request).collect()
    }

    /// Every trust rule, by (user, blueprint), after `after` (a rule id; keyset on the id), at most `limit`.
    pub async fn trust_rules(&self, after: Option<&str>, limit: i64) -> Result<Vec<TrustRuleRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT rule_id, email, blueprint_key, description, granted_by, granted_at FROM trust_rules
              WHERE rule_id > $1 ORDER BY rule_id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(trust_rule).collect()
    }

    /// One trust rule.
    pub async fn trust_rule(&self, rule_id: &str) -> Result<Option<TrustRuleRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT rule_id, email, blueprint_key, description, granted_by, granted_at FROM trust_rules
              WHERE rule_id = $1",
        )
        .bind(rule_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| trust_rule(&row)).transpose()
    }
}

fn request(row: &AnyRow) -> Result<PublishRequestRow, sqlx::Error> {
    Ok(PublishRequestRow {
        request_id: row.try_get("request_id")?,
        workspace_id: row.try_get("workspace_id")?,
        blueprint_key: row.try_get("blueprint_key")?,
        subdomain: row.try_get("subdomain")?,
        builder: row.try_get("builder")?,
        commit_id: row.try_get("commit_id")?,
        files: row.try_get("files")?,
        insertions: row.try_get("insertions")?,
        deletions: row.try_get("deletions")?,
        patch: row.try_get("patch")?,
        message: row.try_get("message")?,
        status: row.try_get("status")?,
        approvals_required: row.try_get("approvals_required")?,
        approvals: row.try_get("approvals")?,
        submitted_at: row.try_get("submitted_at")?,
        expires_at: row.try_get("expires_at")?,
        decided_at: row.try_get("decided_at")?,
        decided_by: row.try_get("decided_by")?,
        decision_reason: row.try_get("decision_reason")?,
        trust_rule_id: row.try_get("trust_rule_id")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
        base_commit: row.try_get("base_commit")?,
        patch_truncated: row.try_get::<i64, _>("patch_truncated")? != 0,
        delivery_status: row.try_get("delivery_status")?,
        delivery_remote: row.try_get("delivery_remote")?,
        delivery_branch: row.try_get("delivery_branch")?,
        pull_request_url: row.try_get("pull_request_url")?,
        pull_request_number: row.try_get("pull_request_number")?,
        failure_stage: row.try_get("failure_stage")?,
        failure_reason: row.try_get("failure_reason")?,
        failure_retryable: row.try_get::<Option<i64>, _>("failure_retryable")?.map(|value| value != 0),
        failure_at: row.try_get("failure_at")?,
        delivery_attempts: row.try_get("delivery_attempts")?,
    })
}

fn trust_rule(row: &AnyRow) -> Result<TrustRuleRow, sqlx::Error> {
    Ok(TrustRuleRow {
        rule_id: row.try_get("rule_id")?,
        email: row.try_get("email")?,
        blueprint_key: row.try_get("blueprint_key")?,
        description: row.try_get("description")?,
        granted_by: row.try_get("granted_by")?,
        granted_at: row.try_get("granted_at")?,
    })
}
