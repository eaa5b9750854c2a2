//! The embedded backend: an event repository for SQLite speaking cqrs-es's `PersistedEventRepository`, the same
//! trait postgres-es implements, and its side of the global log.
//!
//! SQLite lets one writer in at a time and a position is assigned inside the write lock, so commit order is
//! position order and `position > last_seen` never skips.

use chrono::{DateTime, Utc};
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot};
use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::mpsc;

use crate::{Cursor, RecordedEvent, StoreError};

/// Events in an SQLite file, with optimistic concurrency on `(aggregate_type, aggregate_id, sequence)`.
///
/// Appends from this process take turns on an in-process lock before asking SQLite for its write lock. SQLite's
/// own busy handler polls with growing sleeps, so many connections contending for the write lock waste most of
/// the time asleep (measured: 50 concurrent approvals on 16 pooled connections ran past the 5 s pool timeout);
/// queueing in process hands the lock over at once. Other processes are still kept out by SQLite's lock.
#[derive(Debug, Clone)]
pub struct SqliteEventRepository {
    pool: SqlitePool,
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

const SELECT_EVENTS: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ? ORDER BY sequence";

const INSERT_EVENT: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?)";

impl SqliteEventRepository {
    /// A repository over `pool`, whose database has been migrated; its appends take turns on `writer` with the
    /// process's other writers (the projector's batches: [`EventStore::write_turn`](crate::EventStore::write_turn)).
    pub fn new(pool: SqlitePool, writer: std::sync::Arc<tokio::sync::Mutex<()>>) -> Self {
        Self { pool, writer }
    }

    /// Appends `events` in one transaction if the write lock can be had by `deadline`; once the transaction has
    /// begun it runs to its end (commit or rollback). Waiting for this process's turn and for a connection gives up
    /// at the deadline (both safe to drop); `BEGIN IMMEDIATE` itself waits for the database's lock at most what is
    /// left (a per-call busy timeout), because a `begin_with` future dropped at the wrong moment leaves its
    /// connection inside the transaction (docs/adr/0015). So a caller told "unavailable" at the deadline was not
    /// committed later behind its back.
    pub(crate) async fn persist_before<A: Aggregate>(
        &self,
        deadline: tokio::time::Instant,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let timed_out = || PersistenceError::ConnectionError(Box::new(sqlx::Error::PoolTimedOut));
        let _turn = tokio::time::timeout_at(deadline, self.writer.lock()).await.map_err(|_| timed_out())?;
        let mut connection = tokio::time::timeout_at(deadline, self.pool.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(persistence_error)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        set_busy_timeout(&mut connection, left.min(BUSY_TIMEOUT)).await?;
        let appended = append(&mut connection, A::TYPE, events).await;
        if set_busy_timeout(&mut connection, BUSY_TIMEOUT).await.is_err() {
            // Not worth keeping with a short busy timeout.
            connection.close_on_drop();
        }
        appended
    }

    async fn select<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        rows.iter().map(decode).collect()
    }
}

/// How long SQLite waits for a lock before answering busy, outside the deadline of an append.
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn set_busy_timeout(
    connection: &mut SqliteConnection,
    limit: std::time::Duration,
) -> Result<(), PersistenceError> {
    let millis = limit.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query(&format!("PRAGMA busy_timeout = {millis}"))
        .execute(&mut *connection)
        .await
        .map_err(persistence_error)?;
    Ok(())
}

/// The transaction of an append; never dropped half-way by its caller (see `persist_before`).
async fn append(
    connection: &mut SqliteConnection,
    aggregate_type: &str,
    events: &[SerializedEvent],
) -> Result<(), PersistenceError> {
    let mut transaction = connection.begin_with("BEGIN IMMEDIATE").await.map_err(persistence_error)?;
    for event in events {
        sqlx::query(INSERT_EVENT)
            .bind(aggregate_type)
            .bind(&event.aggregate_id)
            .bind(i64::try_from(event.sequence).unwrap_or(i64::MAX))
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(event.payload.to_string())
            .bind(event.metadata.to_string())
            .execute(&mut *transaction)
            .await
            .map_err(persistence_error)?;
    }
    transaction.commit().await.map_err(persistence_error)
}

fn persistence_error(error: sqlx::Error) -> PersistenceError {
    if let sqlx::Error::Database(db) = &error {
        // SQLITE_CONSTRAINT_UNIQUE (2067) and SQLITE_CONSTRAINT_PRIMARYKEY (1555).
        if matches!(db.code().as_deref(), Some("2067" | "1555")) {
            return PersistenceError::OptimisticLockError;
        }
    }
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            PersistenceError::ConnectionError(Box::new(error))
        }
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}

fn decode(row: &SqliteRow) -> Result<SerializedEvent, PersistenceError> {
    let text = |name: &str| row.try_get::<String, _>(name).map_err(persistence_error);
    let sequence: i64 = row.try_get("sequence").map_err(persistence_error)?;
    Ok(SerializedEvent::new(
        text("aggregate_id")?,
        usize::try_from(sequence).map_err(|error| PersistenceError::DeserializationError(Box::new(error)))?,
        text("aggregate_type")?,
        text("event_type")?,
        text("event_version")?,
        serde_json::from_str(&text("payload")?)?,
        serde_json::from_str(&text("metadata")?)?,
    ))
}

impl PersistedEventRepository for SqliteEventRepository {
    async fn get_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.select::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        // Gatehouse does not use cqrs-es snapshots (see docs/adr/0003-aggregate-cache.md).
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        _snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.persist_before::<A>(tokio::time::Instant::now() + BUSY_TIMEOUT, events).await
    }

    async fn stream_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<ReplayStream, PersistenceError> {
        stream(self.get_events::<A>(aggregate_id).await?).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let rows = sqlx::query(
            "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
               FROM events WHERE aggregate_type = ? ORDER BY position",
        )
        .bind(A::TYPE)
        .fetch_all(&self.pool)
        .await
        .map_err(persistence_error)?;
        stream(rows.iter().map(decode).collect::<Result<_, _>>()?).await
    }
}

async fn stream(events: Vec<SerializedEvent>) -> Result<ReplayStream, PersistenceError> {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    for event in events {
        if feed.push(Ok(event)).await.is_err() {
            break;
        }
    }
    Ok(stream)
}

const READ_GLOBAL: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
        metadata, recorded_at FROM events WHERE position > ? ORDER BY position";

pub(crate) async fn read_global(
    pool: &SqlitePool,
    after: Cursor,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let query = format!("{READ_GLOBAL} LIMIT ?");
    let rows = sqlx::query(&query).bind(after.position).bind(limit).fetch_all(pool).await?;
    rows.iter().map(decode_recorded).collect()
}

/// One aggregate's events after `sequence`, with their global cursors.
pub(crate) async fn aggregate_events(
    pool: &SqlitePool,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                recorded_at FROM events WHERE aggregate_type = ? AND aggregate_id = ? AND sequence > ?
          ORDER BY sequence LIMIT ?",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(decode_recorded).collect()
}

/// Sends every event after `after`, in order, from one query, until the receiver hangs up.
pub(crate) async fn stream_global(
    pool: SqlitePool,
    after: Cursor,
    sink: mpsc::Sender<Result<RecordedEvent, StoreError>>,
) {
    let rows = sqlx::query(READ_GLOBAL).bind(after.position).fetch(&pool);
    crate::store::forward(rows, decode_recorded, sink).await;
}

fn decode_recorded(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let sequence: i64 = row.try_get("sequence")?;
    let recorded_at: String = row.try_get("recorded_at")?;
    let json = |name: &str| -> Result<Value, StoreError> {
        let text: String = row.try_get(name)?;
        serde_json::from_str(&text).map_err(|error| StoreError::Corrupt(format!("{name}: {error}")))
    };
    Ok(RecordedEvent {
        cursor: Cursor::new(0, row.try_get("position")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: u64::try_from(sequence).map_err(|_| StoreError::Corrupt(format!("sequence {sequence}")))?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: json("payload")?,
        metadata: json("metadata")?,
        recorded_at: DateTime::parse_from_rfc3339(&recorded_at)
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| StoreError::Corrupt(format!("recorded_at {recorded_at}: {error}")))?,
    })
}
