//! Remembered answers for `Idempotency-Key`: operational state kept beside the log, not history.
//!
//! The HTTP layer decides what a key means (see `api::idempotency`); this module only keeps the rows, with
//! compare-and-set claims so that two attempts never both run. Each call gets its answer within the store's acquire
//! timeout, like a command (on SQLite a write to a locked file would otherwise wait for the 10 s busy timeout); a
//! claim cut off midway is left pending, like one whose attempt crashed, and is taken over once it is stale.

use sqlx::Row;

use crate::{EventStore, StoreError};

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the key now and must [`complete`] or [`forget`] it.
    Claimed,
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
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, state, created_ms) VALUES ($1, $2, $3, 'pending', $4)
         ON CONFLICT (scope, key) DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(now_ms)
    .execute(pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let row = sqlx::query(
        "SELECT fingerprint, state, status, response, location, created_ms FROM idempotency_keys
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
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET created_ms = $3
          WHERE scope = $1 AND key = $2 AND state = 'pending' AND created_ms = $4",
    )
    .bind(scope)
    .bind(key)
    .bind(now_ms)
    .bind(created)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(if taken == 1 { Claim::Claimed } else { Claim::InProgress })
}

/// Stores the answer of a claimed key.
pub async fn complete(
    store: &EventStore,
    scope: &str,
    key: &str,
    status: u16,
    response: &str,
    location: Option<&str>,
) -> Result<(), StoreError> {
    let update = sqlx::query(
        "UPDATE idempotency_keys SET state = 'done', status = $3, response = $4, location = $5
          WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(i64::from(status))
    .bind(response)
    .bind(location)
    .execute(store.read_models());
    store.within(store.deadline(), async { update.await.map(drop).map_err(StoreError::from) }).await
}

/// Releases a claimed key without an answer, so a retry runs again.
pub async fn forget(store: &EventStore, scope: &str, key: &str) -> Result<(), StoreError> {
    let delete = sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
        .bind(scope)
        .bind(key)
        .execute(store.read_models());
    store.within(store.deadline(), async { delete.await.map(drop).map_err(StoreError::from) }).await
}
