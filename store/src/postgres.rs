//! The PostgreSQL side of the global log.
//!
//! Writes go through postgres-es unchanged; the `events` table adds `position` (an identity), `txid`
//! (`pg_current_xact_id()` of the writing transaction) and `recorded_at` by default.
//!
//! A position is assigned at INSERT but becomes visible at COMMIT, so `position > last_seen` would skip an event
//! whose transaction commits after a later one. Instead readers order by `(txid, position)` and only read events
//! whose transaction id is below `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below that horizon has
//! ended, so no event can appear later in front of what was already read.

use cqrs_es::persist::SerializedEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use crate::{Cursor, RecordedEvent, StoreError};

const READ_GLOBAL: &str = "
SELECT position, txid::text AS txid_text, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at
  FROM events
 WHERE (events.txid, events.position) > ($1::text::xid8, $2)
   AND events.txid < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY events.txid, events.position";
// The text form of the transaction id must not be aliased `txid`: ORDER BY would then sort by the text column,
// putting transaction 100 before 99 (a bug found by the concurrent-writers test and the benchmark).

pub(crate) async fn read_global(pool: &PgPool, after: Cursor, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
    let query = format!("{READ_GLOBAL} LIMIT $3");
    let rows =
        sqlx::query(&query).bind(after.txid.to_string()).bind(after.position).bind(limit).fetch_all(pool).await?;
    rows.iter().map(decode).collect()
}

const AGGREGATE_EVENTS: &str = "
SELECT position, txid::text AS txid_text, aggregate_type, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence
 LIMIT $4";

/// One aggregate's events after `sequence`, with their global cursors.
pub(crate) async fn aggregate_events(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    limit: i64,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = sqlx::query(AGGREGATE_EVENTS)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(sequence).unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode).collect()
}

/// Sends every readable event after `after`, in order, from one query (no paging), until the receiver hangs up.
pub(crate) async fn stream_global(pool: PgPool, after: Cursor, sink: mpsc::Sender<Result<RecordedEvent, StoreError>>) {
    let rows = sqlx::query(READ_GLOBAL).bind(after.txid.to_string()).bind(after.position).fetch(&pool);
    crate::store::forward(rows, decode, sink).await;
}

fn decode(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let txid: String = row.try_get("txid_text")?;
    let txid = txid.parse::<u64>().map_err(|_| StoreError::Corrupt(format!("transaction id {txid}")))?;
    let sequence: i64 = row.try_get("sequence")?;
    Ok(RecordedEvent {
        cursor: Cursor::new(txid, row.try_get("position")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: u64::try_from(sequence).map_err(|_| StoreError::Corrupt(format!("sequence {sequence}")))?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

const EVENTS_AFTER: &str = "
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
 ORDER BY sequence";

/// One aggregate's events after `version`, as postgres-es would return them.
pub(crate) async fn events_after(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: &str,
    version: u64,
) -> Result<Vec<SerializedEvent>, StoreError> {
    let rows = sqlx::query(EVENTS_AFTER)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = row.try_get("sequence")?;
            Ok(SerializedEvent::new(
                row.try_get("aggregate_id")?,
                usize::try_from(sequence).map_err(|_| StoreError::Corrupt(format!("sequence {sequence}")))?,
                row.try_get("aggregate_type")?,
                row.try_get("event_type")?,
                row.try_get("event_version")?,
                row.try_get("payload")?,
                row.try_get("metadata")?,
            ))
        })
        .collect()
}
