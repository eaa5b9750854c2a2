//! Remembered answers for `Idempotency-Key`: operational state kept beside the log, not history.
//!
//! The HTTP layer decides what a key means (see `api::idempotency`); this module only keeps the rows, with
//! compare-and-set claims so that two attempts never both run. Each call gets its answer within the store's acquire
//! timeout, like a command (on SQLite a write to a locked file would otherwise wait for the 10 s busy timeout); a
//! claim cut off midway is left pending, like one whose attempt crashed, and is taken over once it is stale.
//!
//! A claim goes `pending` → `prepared` (the answer stored just before the command appends, with the attempt's id)
//! → `done` (after the commit). The command's events carry the attempt id in their metadata, so when a stale
//! `prepared` claim is found the log says whether its command committed: then the prepared answer is the first
//! answer and is replayed; otherwise the command never committed and runs again (ADR 0018).

use sqlx::Row;

use crate::{EventStore, StoreError};

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now, as `attempt` (to put in the command's metadata), and must [`prepare`],
    /// [`complete`] or [`forget`] it.
    Claimed {
        /// This attempt's id.
        attempt: String,
    },
    /// An earlier attempt answered; here is its answer.
    Done {
        /// HTTP status.
        status: u16,
        /// Body.
        response: String,
        /// `Location` header.
        location: Option<String>,
    },
    /// An earlier attempt is still running.
    InProgress,
    /// The key was used with a different request.
    Reused,
}

/// Claims `key` in `scope` for a request identified by `fingerprint`. Answers older than `retention_ms` are
/// forgotten; a claim pending for longer than `stale_ms` (its attempt crashed) is taken over.
pub async fn claim(
    store: &EventStore,
    scope: &str,
    key: &str,
    fingerprint: &str,
    now_ms: i64,
    stale_ms: i64,
    retention_ms: i64,
) -> Result<Claim, StoreError> {
    store.within(store.deadline(), claim_now(store, scope, key, fingerprint, now_ms, stale_ms, retention_ms)).await
}

async fn claim_now(
    store: &EventStore,
    scope: &str,
    key: &str,
    fingerprint: &str,
    now_ms: i64,
    stale_ms: i64,
    retention_ms: i64,
) -> Result<Claim, StoreError> {
    let pool = store.read_models();
    sqlx::query("DELETE FROM idempotency_keys WHERE created_ms < $1").bind(now_ms - retention_ms).execute(pool).await?;
    let attempt = uuid::Uuid::new_v4().to_string();
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, state, created_ms, attempt)
         VALUES ($1, $2, $3, 'pending', $4, $5)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(now_ms)
    .bind(&attempt)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Claimed { attempt });
    }
    let row = sqlx::query(
        "SELECT fingerprint, state, status, response, location, created_ms, attempt FROM idempotency_keys
          WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        // Forgotten between the insert and the read: the caller retries.
        return Ok(Claim::InProgress);
    };
    if row.try_get::<String, _>("fingerprint")? != fingerprint {
        return Ok(Claim::Reused);
    }
    if row.try_get::<String, _>("state")? == "done" {
        let status: i64 = row.try_get("status")?;
        return Ok(Claim::Done {
            status: u16::try_from(status).unwrap_or(500),
            response: row.try_get("response")?,
            location: row.try_get("location")?,
        });
    }
    let created: i64 = row.try_get("created_ms")?;
    if created >= now_ms - stale_ms {
        return Ok(Claim::InProgress);
    }
    let state: String = row.try_get("state")?;
    let previous: Option<String> = row.try_get("attempt")?;
    if let (Some(previous), true) = (&previous, state == "prepared") {
        if committed(store, previous).await? {
            // The attempt committed and crashed (or lost its store) before recording that: its prepared answer is
            // the first answer.
            sqlx::query("UPDATE idempotency_keys SET state = 'done' WHERE scope = $1 AND key = $2 AND attempt = $3")
                .bind(scope)
                .bind(key)
                .bind(previous)
                .execute(pool)
                .await?;
            let status: Option<i64> = row.try_get("status")?;
            return Ok(Claim::Done {
                status: status.and_then(|status| u16::try_from(status).ok()).unwrap_or(500),
                response: row.try_get::<Option<String>, _>("response")?.unwrap_or_default(),
                location: row.try_get("location")?,
            });
        }
    }
    // Nothing of the stale attempt committed: take the key over and run the request again.
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET created_ms = $3, state = 'pending', status = NULL, response = NULL,
                location = NULL, attempt = $5
          WHERE scope = $1 AND key = $2 AND state IN ('pending', 'prepared') AND created_ms = $4",
    )
    .bind(scope)
    .bind(key)
    .bind(now_ms)
    .bind(created)
    .bind(&attempt)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(if taken == 1 { Claim::Claimed { attempt } } else { Claim::InProgress })
}

/// Whether any event in the log was appended by `attempt`.
async fn committed(store: &EventStore, attempt: &str) -> Result<bool, StoreError> {
    // The expressions match the indexes of migration 0007.
    let sql = if store.backend_name() == "postgres" {
        "SELECT 1 FROM events WHERE metadata ? 'idempotency_attempt' AND metadata ->> 'idempotency_attempt' = $1 LIMIT 1"
    } else {
        "SELECT 1 FROM events WHERE json_extract(metadata, '$.idempotency_attempt') IS NOT NULL
            AND json_extract(metadata, '$.idempotency_attempt') = $1 LIMIT 1"
    };
    Ok(sqlx::query(sql).bind(attempt).fetch_optional(store.read_models()).await?.is_some())
}

/// Stores the answer `attempt` is about to give, just before its command appends. False when the key is no longer
/// this attempt's (taken over after it was stale): the command must not run.
pub async fn prepare(
    store: &EventStore,
    scope: &str,
    key: &str,
    attempt: &str,
    status: u16,
    response: &str,
    location: Option<&str>,
) -> Result<bool, StoreError> {
    let update = sqlx::query(
        "UPDATE idempotency_keys SET state = 'prepared', status = $4, response = $5, location = $6
          WHERE scope = $1 AND key = $2 AND attempt = $3 AND state IN ('pending', 'prepared')",
    )
    .bind(scope)
    .bind(key)
    .bind(attempt)
    .bind(i64::from(status))
    .bind(response)
    .bind(location)
    .execute(store.read_models());
    store.within(store.deadline(), async { Ok(update.await?.rows_affected() == 1) }).await
}

/// Stores the answer of a claimed key.
pub async fn complete(
    store: &EventStore,
    scope: &str,
    key: &str,
    attempt: &str,
    status: u16,
    response: &str,
    location: Option<&str>,
) -> Result<(), StoreError> {
    let update = sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', status = $4, response = $5, location = $6
          WHERE scope = $1 AND key = $2 AND attempt = $3",
    )
    .bind(scope)
    .bind(key)
    .bind(attempt)
    .bind(i64::from(status))
    .bind(response)
    .bind(location)
    .execute(store.read_models());
    store.within(store.deadline(), async { update.await.map(drop).map_err(StoreError::from) }).await
}

/// Releases a claimed key without an answer, so a retry runs again.
pub async fn forget(store: &EventStore, scope: &str, key: &str, attempt: &str) -> Result<(), StoreError> {
    let delete = sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND attempt = $3")
        .bind(scope)
        .bind(key)
        .bind(attempt)
        .execute(store.read_models());
    store.within(store.deadline(), async { delete.await.map(drop).map_err(StoreError::from) }).await
}
