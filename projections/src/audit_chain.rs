//! The tamper-evident chain over the global log (issue #4; the format is in the `audit` crate and docs/AUDIT.md).
//!
//! [`AuditChainProjection`] is a projection like any other: the projector feeds it every event in global order,
//! exactly once, and it stores each event's chain index and link in `audit_chain` in the same transaction as the
//! checkpoint. So chaining never slows an append, survives crashes, its lag is the projection's lag metric
//! (`gatehouse_projection_lag_seconds{projection="audit_chain"}`), and a rebuild recomputes the same links from
//! the same events. Signed checkpoints ([`sign_checkpoint`]) are statements about the chain's head, kept in
//! `audit_checkpoints`; they are not projection state and are never rebuilt.

use async_trait::async_trait;
use audit::{AuditKey, ChainEvent, Checkpoint, ExportLine, Header, Link, GENESIS};
use chrono::SecondsFormat;
use sqlx::{AnyConnection, AnyPool, Executor, Row};
use store::{Cursor, EventStore, RecordedEvent, StoreError};
use tokio::sync::mpsc;

use crate::{ApplyError, Projection, Tables};

/// The chain's form of a stored event.
pub fn chain_event(index: u64, event: &RecordedEvent) -> ChainEvent {
    into_chain_event(index, event.clone())
}

fn corrupt(message: impl Into<String>) -> ApplyError {
    ApplyError::Decode { event_type: "audit_chain".into(), event_version: String::new(), reason: message.into() }
}

fn parse_link(raw: &str) -> Result<Link, StoreError> {
    Link::from_hex(raw).map_err(|_| StoreError::Corrupt(format!("audit_chain holds a malformed link {raw:?}")))
}

/// The chain's form of a stored event, consuming it (no copies of its payload).
pub fn into_chain_event(index: u64, event: RecordedEvent) -> ChainEvent {
    ChainEvent {
        index,
        cursor: event.cursor.to_string(),
        position: u64::try_from(event.cursor.position()).unwrap_or(0),
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        sequence: event.sequence,
        event_type: event.event_type,
        event_version: event.event_version,
        payload: event.payload,
        metadata: event.metadata,
        recorded_at: event.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
    }
}

/// Chains every event into `audit_chain`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditChainProjection;

#[async_trait]
impl Projection for AuditChainProjection {
    fn name(&self) -> &'static str {
        "audit_chain"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_chain"]
    }

    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.apply_batch(connection, tables, std::slice::from_ref(event)).await.map_err(|(_, error)| error)
    }

    async fn apply_batch(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), (usize, ApplyError)> {
        let chain = tables.name("audit_chain");
        let head = format!("SELECT chain_index, link FROM {chain} ORDER BY chain_index DESC LIMIT 1");
        let row = connection.fetch_optional(sqlx::query(&head)).await.map_err(|error| (0, error.into()))?;
        let (mut index, mut link) = match row {
            Some(row) => {
                let index: i64 = row.try_get("chain_index").map_err(|error| (0, error.into()))?;
                let link: String = row.try_get("link").map_err(|error| (0, error.into()))?;
                let link = Link::from_hex(&link).map_err(|_| (0, corrupt(format!("malformed link {link:?}"))))?;
                (u64::try_from(index).unwrap_or(0), link)
            }
            None => (0, GENESIS),
        };
        // One multi-row INSERT per chunk: a round trip per event would make chaining the slowest projection.
        const CHUNK: usize = 500;
        for (chunk_number, chunk) in events.chunks(CHUNK).enumerate() {
            let mut rows = Vec::with_capacity(chunk.len());
            for (offset, event) in chunk.iter().enumerate() {
                index += 1;
                link = audit::next_link(&link, &chain_event(index, event)).map_err(|error| {
                    (
                        chunk_number * CHUNK + offset,
                        corrupt(format!("event {} cannot be chained: {error}", event.cursor)),
                    )
                })?;
                rows.push((index, event.cursor, link));
            }
            let placeholders: Vec<String> = (0..rows.len())
                .map(|row| format!("(${}, ${}, ${}, ${})", 4 * row + 1, 4 * row + 2, 4 * row + 3, 4 * row + 4))
                .collect();
            let insert =
                format!("INSERT INTO {chain} (chain_index, position, cursor, link) VALUES {}", placeholders.join(", "));
            let mut query = sqlx::query(&insert);
            for (index, cursor, link) in rows {
                query = query
                    .bind(i64::try_from(index).unwrap_or(i64::MAX))
                    .bind(cursor.position())
                    .bind(cursor.to_string())
                    .bind(link.to_hex());
            }
            // A failed insert fails the whole chunk; blame its first event.
            connection.execute(query).await.map_err(|error| (chunk_number * CHUNK, error.into()))?;
        }
        Ok(())
    }
}

/// The chain's head: the last chained index (0 when nothing is chained) and its link.
pub async fn chain_head(pool: &AnyPool) -> Result<(u64, Link), StoreError> {
    let row = sqlx::query("SELECT chain_index, link FROM audit_chain ORDER BY chain_index DESC LIMIT 1")
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => {
            let index: i64 = row.try_get("chain_index")?;
            Ok((u64::try_from(index).unwrap_or(0), parse_link(&row.try_get::<String, _>("link")?)?))
        }
        None => Ok((0, GENESIS)),
    }
}

/// Signs the chain's current head and keeps the checkpoint.
pub async fn sign_checkpoint(store: &EventStore, key: &AuditKey) -> Result<Checkpoint, StoreError> {
    let pool = store.read_models();
    let (index, link) = chain_head(pool).await?;
    let signed_at = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let checkpoint = key.sign_checkpoint(index, &link, &signed_at);
    sqlx::query("INSERT INTO audit_checkpoints (chain_index, line) VALUES ($1, $2)")
        .bind(i64::try_from(index).unwrap_or(i64::MAX))
        .bind(checkpoint.to_line().trim_end().to_string())
        .execute(pool)
        .await?;
    Ok(checkpoint)
}

/// Checkpoints kept so far with a row id above `after`, oldest first, at most `limit`: (id, checkpoint).
pub async fn checkpoints(pool: &AnyPool, after: i64, limit: i64) -> Result<Vec<(i64, Checkpoint)>, StoreError> {
    let rows = sqlx::query("SELECT id, line FROM audit_checkpoints WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let line: String = row.try_get("line")?;
            let checkpoint = Checkpoint::from_line(&line)
                .map_err(|error| StoreError::Corrupt(format!("audit_checkpoints holds a bad line: {error}")))?;
            Ok((row.try_get("id")?, checkpoint))
        })
        .collect()
}

/// The latest kept checkpoint.
pub async fn latest_checkpoint(pool: &AnyPool) -> Result<Option<Checkpoint>, StoreError> {
    let row = sqlx::query("SELECT line FROM audit_checkpoints ORDER BY id DESC LIMIT 1").fetch_optional(pool).await?;
    row.map(|row| {
        let line: String = row.try_get("line")?;
        Checkpoint::from_line(&line)
            .map_err(|error| StoreError::Corrupt(format!("audit_checkpoints holds a bad line: {error}")))
    })
    .transpose()
}

/// Why an export could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The cursor names no chained event (unknown, or not chained yet).
    #[error("the cursor names no chained event")]
    UnknownCursor,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an export starts: the cursor after which to read, the first chain index and the link before it.
pub async fn export_start(store: &EventStore, since: Option<Cursor>) -> Result<(Cursor, u64, Link), ExportError> {
    let Some(since) = since.filter(|cursor| *cursor != Cursor::START) else {
        return Ok((Cursor::START, 1, GENESIS));
    };
    let row = sqlx::query("SELECT chain_index, link, cursor FROM audit_chain WHERE position = $1")
        .bind(since.position())
        .fetch_optional(store.read_models())
        .await
        .map_err(StoreError::from)?;
    let Some(row) = row else { return Err(ExportError::UnknownCursor) };
    let cursor: String = row.try_get("cursor").map_err(StoreError::from)?;
    if cursor != since.to_string() {
        return Err(ExportError::UnknownCursor);
    }
    let index: i64 = row.try_get("chain_index").map_err(StoreError::from)?;
    let link = parse_link(&row.try_get::<String, _>("link").map_err(StoreError::from)?)?;
    Ok((since, u64::try_from(index).unwrap_or(0) + 1, link))
}

/// Streams an export as NDJSON lines (each ending in a newline) into `lines`: a header, every chained event after
/// `start` in chain order with its link, and a checkpoint of the last exported event signed now with `key`.
/// Events not chained yet are left for the next export. Returns how many events were exported; a store error is
/// sent as the last item (the export then lacks its final checkpoint, which verification reports as truncated).
pub async fn export(
    store: &EventStore,
    start: (Cursor, u64, Link),
    key: &AuditKey,
    lines: mpsc::Sender<Result<String, StoreError>>,
) -> u64 {
    let (after, first_index, previous_link) = start;
    match export_lines(store, after, first_index, previous_link, key, &lines).await {
        Ok(count) => count,
        Err(error) => {
            let _ = lines.send(Err(error)).await;
            0
        }
    }
}

async fn export_lines(
    store: &EventStore,
    after: Cursor,
    first_index: u64,
    previous_link: Link,
    key: &AuditKey,
    lines: &mpsc::Sender<Result<String, StoreError>>,
) -> Result<u64, StoreError> {
    let encode = |line: ExportLine| {
        line.to_ndjson().map_err(|error| StoreError::Corrupt(format!("an event has no canonical form: {error}")))
    };
    let send =
        |line: String| async move { lines.send(Ok(line)).await.map_err(|_| StoreError::Corrupt("closed".into())) };
    send(encode(ExportLine::Header(Header { first_index, previous_link }))?).await?;
    // The chain fixes how far this export goes: what is chained now. Events are read in global order from the
    // same point, which is the chain's order; each must match its chain row.
    let (head, _) = chain_head(store.read_models()).await?;
    let mut events = store.stream_global(after, 1_024);
    let (mut index, mut link) = (first_index.saturating_sub(1), previous_link);
    while index < head {
        let rows = sqlx::query(
            "SELECT chain_index, position, link FROM audit_chain WHERE chain_index > $1 AND chain_index <= $2
              ORDER BY chain_index LIMIT 1000",
        )
        .bind(i64::try_from(index).unwrap_or(i64::MAX))
        .bind(i64::try_from(head).unwrap_or(i64::MAX))
        .fetch_all(store.read_models())
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            let chain_index = u64::try_from(row.try_get::<i64, _>("chain_index")?).unwrap_or(0);
            let position: i64 = row.try_get("position")?;
            let stored = parse_link(&row.try_get::<String, _>("link")?)?;
            let event = match events.recv().await {
                Some(event) => event?,
                None => return Err(StoreError::Corrupt(format!("chain index {chain_index} has no event"))),
            };
            if chain_index != index + 1 || event.cursor.position() != position {
                return Err(StoreError::Corrupt(format!(
                    "chain index {chain_index} names position {position}, but the log has {} there",
                    event.cursor
                )));
            }
            index = chain_index;
            link = stored;
            send(encode(ExportLine::Event { event: into_chain_event(index, event), link })?).await?;
        }
    }
    let signed_at = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    send(encode(ExportLine::Checkpoint(key.sign_checkpoint(index, &link, &signed_at)))?).await?;
    Ok(index + 1 - first_index)
}
