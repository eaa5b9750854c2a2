//! Read models of the terminal relay: terminal sessions (`terminal_sessions`) and the relay's activity log
//! (`relay_activity`: tickets issued, redeemed and refused, connections the firewall blocked).

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::firewall::{Firewall, FirewallEvent};
use domain::relay::{SessionEvent, SessionKind, TerminalSession, Ticket, TicketEvent};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::RecordedEvent;

use crate::projection::{decode, int, rfc3339, TimeKey};
use crate::{ApplyError, Projection, Tables};

/// Projects terminal sessions, tickets and blocked connections into `terminal_sessions` and `relay_activity`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionsProjection;

/// One activity row to write.
struct Activity<'a> {
    kind: &'a str,
    ticket: Option<&'a str>,
    user: Option<String>,
    workspace: &'a str,
    client_ip: Option<&'a str>,
    reason: Option<&'a str>,
    rule: Option<i64>,
}

impl SessionsProjection {
    async fn activity(
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
        activity: Activity<'_>,
    ) -> Result<(), ApplyError> {
        let table = tables.name("relay_activity");
        let sql = format!(
            "INSERT INTO {table} (activity_id, at, kind, ticket, user_email, workspace, client_ip, reason, rule)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        let id = format!("{}:{}:{}", event.aggregate_type, event.aggregate_id, event.sequence);
        let query = sqlx::query(&sql)
            .bind(id)
            .bind(rfc3339(&event.recorded_at))
            .bind(activity.kind)
            .bind(activity.ticket.map(str::to_string))
            .bind(activity.user)
            .bind(activity.workspace)
            .bind(activity.client_ip.map(str::to_string))
            .bind(activity.reason.map(str::to_string))
            .bind(activity.rule);
        connection.execute(query).await?;
        Ok(())
    }

    /// The user a ticket was issued for, if it ever was.
    async fn ticket_user(
        connection: &mut AnyConnection,
        tables: &Tables,
        ticket: &str,
    ) -> Result<Option<String>, ApplyError> {
        let table = tables.name("relay_activity");
        let sql = format!("SELECT user_email FROM {table} WHERE ticket = $1 AND kind = 'ticket_issued' LIMIT 1");
        let row = connection.fetch_optional(sqlx::query(&sql).bind(ticket)).await?;
        Ok(match row {
            Some(row) => row.try_get("user_email")?,
            None => None,
        })
    }
}

#[async_trait]
impl Projection for SessionsProjection {
    fn name(&self) -> &'static str {
        "sessions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["terminal_sessions", "relay_activity"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[TerminalSession::TYPE, Ticket::TYPE, Firewall::TYPE])
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        if event.aggregate_type == TerminalSession::TYPE {
            let sessions = tables.name("terminal_sessions");
            match decode::<SessionEvent>(event)? {
                SessionEvent::SessionOpened {
                    session_id: _,
                    user,
                    workspace,
                    agent,
                    client_ip,
                    user_agent,
                    kind,
                    port,
                } => {
                    // A preview session has no browser attached in the terminal's sense: its requests come and go.
                    let attached = i64::from(kind == SessionKind::Terminal);
                    let sql = format!(
                        "INSERT INTO {sessions} (session_id, user_email, workspace, agent, kind, client_ip, user_agent,
                           opened_at, bytes_in, bytes_out, version, attached, resumes, port)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, $9, $10, 0, $11)"
                    );
                    let query = sqlx::query(&sql)
                        .bind(event.aggregate_id.clone())
                        .bind(user.to_string())
                        .bind(workspace)
                        .bind(agent)
                        .bind(kind.as_str())
                        .bind(client_ip)
                        .bind(user_agent)
                        .bind(rfc3339(&event.recorded_at))
                        .bind(int(event.sequence))
                        .bind(attached)
                        .bind(port.map(i64::from));
                    connection.execute(query).await?;
                }
                SessionEvent::SessionResumed { .. } => {
                    let sql = format!(
                        "UPDATE {sessions} SET attached = attached + 1, resumes = resumes + 1, detached_at = NULL,
                           version = $2 WHERE session_id = $1"
                    );
                    let query = sqlx::query(&sql).bind(event.aggregate_id.clone()).bind(int(event.sequence));
                    connection.execute(query).await?;
                }
                SessionEvent::SessionDetached { attached, .. } => {
                    let sql = format!(
                        "UPDATE {sessions} SET attached = $2, detached_at = $3, version = $4 WHERE session_id = $1"
                    );
                    let detached_at = (attached == 0).then(|| rfc3339(&event.recorded_at));
                    let query = sqlx::query(&sql)
                        .bind(event.aggregate_id.clone())
                        .bind(i64::from(attached))
                        .bind(detached_at)
                        .bind(int(event.sequence));
                    connection.execute(query).await?;
                }
                SessionEvent::SessionClosed { bytes_in, bytes_out, duration_ms, reason } => {
                    let sql = format!(
                        "UPDATE {sessions} SET closed_at = $2, close_reason = $3, bytes_in = $4, bytes_out = $5,
                           duration_ms = $6, version = $7, attached = 0 WHERE session_id = $1"
                    );
                    let query = sqlx::query(&sql)
                        .bind(event.aggregate_id.clone())
                        .bind(rfc3339(&event.recorded_at))
                        .bind(reason.as_str())
                        .bind(int(bytes_in))
                        .bind(int(bytes_out))
                        .bind(int(duration_ms))
                        .bind(int(event.sequence));
                    connection.execute(query).await?;
                }
            }
        } else if event.aggregate_type == Ticket::TYPE {
            let ticket = event.aggregate_id.as_str();
            let activity = match decode::<TicketEvent>(event)? {
                TicketEvent::TicketIssued { user, workspace, .. } => {
                    let activity = Activity {
                        kind: "ticket_issued",
                        ticket: Some(ticket),
                        user: Some(user.to_string()),
                        workspace: &workspace,
                        client_ip: None,
                        reason: None,
                        rule: None,
                    };
                    return Self::activity(connection, tables, event, activity).await;
                }
                TicketEvent::TicketRedeemed { workspace } => ("ticket_redeemed", workspace, None, None),
                TicketEvent::TicketRefused { reason, workspace, client_ip } => {
                    ("ticket_refused", workspace, Some(reason.as_str()), client_ip)
                }
            };
            let (kind, workspace, reason, client_ip) = activity;
            let user = Self::ticket_user(connection, tables, ticket).await?;
            let activity = Activity {
                kind,
                ticket: Some(ticket),
                user,
                workspace: &workspace,
                client_ip: client_ip.as_deref().filter(|address| !address.is_empty()),
                reason,
                rule: None,
            };
            Self::activity(connection, tables, event, activity).await?;
        } else if event.aggregate_type == Firewall::TYPE {
            match decode::<FirewallEvent>(event)? {
                FirewallEvent::FirewallRulesReplaced { .. } => {}
                FirewallEvent::ConnectionBlocked { client_ip, rule, workspace, user, .. } => {
                    let reason = if rule.is_some() { "rule" } else { "default_action" };
                    let activity = Activity {
                        kind: "connection_blocked",
                        ticket: None,
                        user: user.map(|user| user.to_string()),
                        workspace: &workspace,
                        client_ip: Some(&client_ip),
                        reason: Some(reason),
                        rule: rule.map(|rule| i64::try_from(rule).unwrap_or(i64::MAX)),
                    };
                    Self::activity(connection, tables, event, activity).await?;
                }
            }
        }
        Ok(())
    }
}

/// One terminal session as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The session.
    pub session_id: String,
    /// Whose.
    pub user: String,
    /// Which workspace.
    pub workspace: String,
    /// Which agent (its connection id).
    pub agent: String,
    /// `terminal` or `preview`.
    pub kind: String,
    /// The workspace port a preview showed (`None` for terminals).
    pub port: Option<i64>,
    /// The client's address.
    pub client_ip: String,
    /// The client's user agent.
    pub user_agent: String,
    /// RFC 3339.
    pub opened_at: String,
    /// RFC 3339, once closed.
    pub closed_at: Option<String>,
    /// Why it closed.
    pub close_reason: Option<String>,
    /// Browser → agent bytes (0 while open).
    pub bytes_in: i64,
    /// Agent → browser bytes (0 while open).
    pub bytes_out: i64,
    /// How long it lasted, once closed.
    pub duration_ms: Option<i64>,
    /// Browsers attached now.
    pub attached: i64,
    /// Times a browser attached to it after it opened (reconnects and second browsers).
    pub resumes: i64,
    /// RFC 3339: since when nobody is attached to the open session.
    pub detached_at: Option<String>,
    /// The session aggregate's version.
    pub version: i64,
}

/// One relay event of the activity log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    /// `{aggregate type}:{aggregate id}:{sequence}`.
    pub activity_id: String,
    /// RFC 3339.
    pub at: String,
    /// ticket_issued | ticket_redeemed | ticket_refused | connection_blocked.
    pub kind: String,
    /// The ticket's hash, for ticket events.
    pub ticket: Option<String>,
    /// The user, when known.
    pub user: Option<String>,
    /// The workspace.
    pub workspace: String,
    /// The client's address (blocked connections and refused tickets; `None` for refusals recorded before
    /// addresses were, and when it was unknown).
    pub client_ip: Option<String>,
    /// Why: a refusal reason (unknown, expired, reused, foreign), or `rule` / `default_action` for blocks.
    pub reason: Option<String>,
    /// The position of the firewall rule that blocked, if one did.
    pub rule: Option<i64>,
}

/// Filters of the session list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only open (`Some(true)`) or only closed (`Some(false)`) sessions.
    pub active: Option<bool>,
    /// Only this user's.
    pub user: Option<String>,
    /// Only this workspace's.
    pub workspace: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Opened at or after (RFC 3339, micros).
    pub from: Option<String>,
    /// Opened before (RFC 3339, micros).
    pub to: Option<String>,
}

/// Filters of the activity log.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this user's.
    pub user: Option<String>,
    /// Only this workspace's.
    pub workspace: Option<String>,
    /// At or after (RFC 3339, micros).
    pub from: Option<String>,
    /// Before (RFC 3339, micros).
    pub to: Option<String>,
}

const SESSION_COLUMNS: &str = "session_id, user_email, workspace, agent, kind, client_ip, user_agent, opened_at,
    closed_at, close_reason, bytes_in, bytes_out, duration_ms, attached, resumes, detached_at, version, port";

const ACTIVITY_COLUMNS: &str = "activity_id, at, kind, ticket, user_email, workspace, client_ip, reason, rule";

/// A WHERE clause under construction, with its text binds.
#[derive(Default)]
struct Conditions {
    conditions: Vec<String>,
    binds: Vec<String>,
}

impl Conditions {
    fn push(&mut self, template: &str, value: &Option<String>) {
        if let Some(value) = value {
            self.binds.push(value.clone());
            self.conditions.push(template.replace('?', &format!("${}", self.binds.len())));
        }
    }

    fn after(&mut self, time: &str, id: &str, after: Option<&TimeKey>) {
        if let Some(after) = after {
            self.binds.push(after.at.clone());
            self.binds.push(after.id.clone());
            self.conditions.push(format!("({time}, {id}) < (${}, ${})", self.binds.len() - 1, self.binds.len()));
        }
    }

    fn sql(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }
}

/// Reads of the relay read models.
#[derive(Debug, Clone)]
pub struct SessionsQuery {
    pool: AnyPool,
}

impl SessionsQuery {
    /// Queries over `pool` (the store's read-model pool).
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Sessions matching `filter`, newest first (by opening time, then id), after `after`, at most `limit`.
    pub async fn sessions(
        &self,
        filter: &SessionFilter,
        after: Option<&TimeKey>,
        limit: i64,
    ) -> Result<Vec<SessionRow>, sqlx::Error> {
        let mut conditions = Conditions::default();
        match filter.active {
            Some(true) => conditions.conditions.push("closed_at IS NULL".into()),
            Some(false) => conditions.conditions.push("closed_at IS NOT NULL".into()),
            None => {}
        }
        conditions.push("user_email = ?", &filter.user);
        conditions.push("workspace = ?", &filter.workspace);
        conditions.push("kind = ?", &filter.kind);
        conditions.push("opened_at >= ?", &filter.from);
        conditions.push("opened_at < ?", &filter.to);
        conditions.after("opened_at", "session_id", after);
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM terminal_sessions {}
              ORDER BY opened_at DESC, session_id DESC LIMIT ${}",
            conditions.sql(),
            conditions.binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for value in conditions.binds {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(session).collect()
    }

    /// Activity matching `filter`, newest first (by time, then id), after `after`, at most `limit`.
    pub async fn activity(
        &self,
        filter: &ActivityFilter,
        after: Option<&TimeKey>,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, sqlx::Error> {
        let mut conditions = Conditions::default();
        conditions.push("kind = ?", &filter.kind);
        conditions.push("user_email = ?", &filter.user);
        conditions.push("workspace = ?", &filter.workspace);
        conditions.push("at >= ?", &filter.from);
        conditions.push("at < ?", &filter.to);
        conditions.after("at", "activity_id", after);
        let sql = format!(
            "SELECT {ACTIVITY_COLUMNS} FROM relay_activity {}
              ORDER BY at DESC, activity_id DESC LIMIT ${}",
            conditions.sql(),
            conditions.binds.len() + 1
        );
        let mut query = sqlx::query(&sql);
        for value in conditions.binds {
            query = query.bind(value);
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(activity).collect()
    }
}

fn session(row: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        session_id: row.try_get("session_id")?,
        user: row.try_get("user_email")?,
        workspace: row.try_get("workspace")?,
        agent: row.try_get("agent")?,
        kind: row.try_get("kind")?,
        port: row.try_get("port")?,
        client_ip: row.try_get("client_ip")?,
        user_agent: row.try_get("user_agent")?,
        opened_at: row.try_get("opened_at")?,
        closed_at: row.try_get("closed_at")?,
        close_reason: row.try_get("close_reason")?,
        bytes_in: row.try_get("bytes_in")?,
        bytes_out: row.try_get("bytes_out")?,
        duration_ms: row.try_get("duration_ms")?,
        attached: row.try_get("attached")?,
        resumes: row.try_get("resumes")?,
        detached_at: row.try_get("detached_at")?,
        version: row.try_get("version")?,
    })
}

fn activity(row: &AnyRow) -> Result<ActivityRow, sqlx::Error> {
    Ok(ActivityRow {
        activity_id: row.try_get("activity_id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        ticket: row.try_get("ticket")?,
        user: row.try_get("user_email")?,
        workspace: row.try_get("workspace")?,
        client_ip: row.try_get("client_ip")?,
        reason: row.try_get("reason")?,
        rule: row.try_get("rule")?,
    })
}
