//! Rebuilding a projection from zero without stopping its readers.
//!
//! 1. Copy the shape of the projection's tables into empty `{table}__rebuild` tables.
//! 2. Replay the whole log into them in batches, outside any lock: readers and the live projector go on using the
//!    old tables meanwhile.
//! 3. In one transaction that holds the projection's checkpoint (so no live projector applies a batch at the same
//!    time): apply what arrived since step 2, replace the old tables with the new ones, and move the checkpoint.

use sqlx::{AnyConnection, Executor, Row};
use store::{Cursor, EventStore, StoreError};

use crate::runtime::{apply_batch, begin_exclusive, locked_checkpoint, BatchError};
use crate::{Projection, Tables};

const SUFFIX: &str = "__rebuild";
const BATCH: usize = 2_000;
/// How long the final catch-up waits for events held back by another open transaction.
const HELD_BACK_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events replayed.
    pub events: u64,
    /// The checkpoint the projection now has.
    pub cursor: String,
}

/// Why a rebuild stopped. The old tables are untouched unless it succeeded.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process is rebuilding the same projection.
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(String),
    /// Committed events stayed unreadable for a minute: a long transaction on the database holds them back.
    #[error("a long-running transaction on the database holds events back; end it and rebuild again")]
    HeldBack,
    /// An event could not be applied.
    #[error("event at {cursor} cannot be applied: {error}")]
    Poison {
        /// The event.
        cursor: String,
        /// Why.
        error: String,
    },
}

impl From<sqlx::Error> for RebuildError {
    fn from(error: sqlx::Error) -> Self {
        RebuildError::Store(StoreError::from(error))
    }
}

impl From<BatchError> for RebuildError {
    fn from(error: BatchError) -> Self {
        match error {
            BatchError::Unavailable(error) => RebuildError::Store(error),
            BatchError::Poison { cursor, error } => RebuildError::Poison { cursor: cursor.to_string(), error },
        }
    }
}

/// Rebuilds `projection` from the whole log. `progress(done, total)` is called after every batch.
pub async fn rebuild(
    store: &EventStore,
    projection: &dyn Projection,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RebuildReport, RebuildError> {
    // Two rebuilds of one projection would drop each other's shadow tables: hold a session lock for the whole
    // rebuild. (SQLite has one writer; its rebuilds are for a single node and are not guarded.)
    let mut guard = store.read_models().acquire().await?;
    if store.backend_name() == "postgres" {
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('gatehouse-rebuild:' || $1)::bigint)")
                .bind(projection.name())
                .fetch_one(&mut *guard)
                .await?;
        if !locked {
            return Err(RebuildError::AlreadyRunning(projection.name().to_string()));
        }
    }
    let result = rebuild_locked(store, projection, progress).await;
    if store.backend_name() == "postgres" {
        sqlx::query("SELECT pg_advisory_unlock(hashtext('gatehouse-rebuild:' || $1)::bigint)")
            .bind(projection.name())
            .execute(&mut *guard)
            .await?;
    }
    result
}

async fn rebuild_locked(
    store: &EventStore,
    projection: &dyn Projection,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RebuildReport, RebuildError> {
    let total = store.count_events().await?;
    let tables = Tables::with_suffix(projection, SUFFIX);
    create_shadow_tables(store, projection).await?;

    let mut cursor = Cursor::START;
    let mut done = 0u64;
    // One ordered query streams the log while batches are applied: no paging, reading overlaps writing.
    let mut stream = store.stream_global(Cursor::START, 2 * BATCH);
    let mut events = Vec::with_capacity(BATCH);
    let mut open = true;
    while open {
        match stream.recv().await {
            Some(Ok(event)) => events.push(event),
            Some(Err(error)) => return Err(error.into()),
            None => open = false,
        }
        let Some(last) = events.last().map(|event| event.cursor) else { continue };
        if events.len() < BATCH && open {
            continue;
        }
        let mut transaction = begin_exclusive(store).await?;
        apply_batch(projection, &mut transaction, &tables, &events).await.map_err(|(_, error)| error)?;
        transaction.commit().await?;
        cursor = last;
        done += events.len() as u64;
        events.clear();
        progress(done, total.max(done));
    }

    let mut transaction = begin_exclusive(store).await?;
    sqlx::query("INSERT INTO projection_checkpoints (name, cursor) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(projection.name())
        .bind(Cursor::START.to_string())
        .execute(&mut *transaction)
        .await?;
    locked_checkpoint(&mut transaction, store, projection.name()).await?;
    let mut held_back_since = None;
    loop {
        let events = store.read_global(cursor, BATCH).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            // Reached the end only if nothing committed is held back by an open transaction elsewhere.
            if !store.has_events_after(cursor).await? {
                break;
            }
            if held_back_since.get_or_insert_with(std::time::Instant::now).elapsed() > HELD_BACK_LIMIT {
                return Err(RebuildError::HeldBack);
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            continue;
        };
        apply_batch(projection, &mut transaction, &tables, &events).await.map_err(|(_, error)| error)?;
        cursor = last;
        done += events.len() as u64;
        progress(done, total.max(done));
    }
    swap_tables(&mut transaction, store, projection).await?;
    sqlx::query(
        "UPDATE projection_checkpoints
            SET cursor = $2, events_applied = $3, updated_at = CURRENT_TIMESTAMP, failed_cursor = NULL, last_error = NULL,
                revision = revision + 1
          WHERE name = $1",
    )
    .bind(projection.name())
    .bind(cursor.to_string())
    .bind(i64::try_from(done).unwrap_or(i64::MAX))
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(RebuildReport { events: done, cursor: cursor.to_string() })
}

/// Creates empty copies of the projection's tables (with their keys and indexes), replacing leftovers of an
/// interrupted rebuild.
async fn create_shadow_tables(store: &EventStore, projection: &dyn Projection) -> Result<(), RebuildError> {
    let mut connection = store.read_models().acquire().await?;
    for table in projection.tables() {
        let shadow = format!("{table}{SUFFIX}");
        connection.execute(&*format!("DROP TABLE IF EXISTS {shadow}")).await?;
        if store.backend_name() == "postgres" {
            connection.execute(&*format!("CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)")).await?;
        } else {
            for (kind, name, sql) in sqlite_schema(&mut connection, table).await? {
                let renamed = if kind == "table" {
                    rename_first(&sql, table, &shadow)
                } else {
                    rename_first(
                        &rename_first(&sql, &name, &format!("{name}{SUFFIX}")),
                        &format!(" ON {table}"),
                        &format!(" ON {shadow}"),
                    )
                };
                connection.execute(&*renamed).await?;
            }
        }
    }
    Ok(())
}

/// Replaces each table with its rebuilt copy, inside the caller's transaction.
async fn swap_tables(
    connection: &mut AnyConnection,
    store: &EventStore,
    projection: &dyn Projection,
) -> Result<(), RebuildError> {
    for table in projection.tables() {
        let shadow = format!("{table}{SUFFIX}");
        if store.backend_name() == "postgres" {
            let original = postgres_indexes(connection, table).await?;
            connection.execute(&*format!("DROP TABLE {table}")).await?;
            connection.execute(&*format!("ALTER TABLE {shadow} RENAME TO {table}")).await?;
            // `LIKE … INCLUDING ALL` named the copied indexes after the shadow table; give them their original
            // names back so later migrations can refer to them.
            for (name, definition) in postgres_indexes(connection, table).await? {
                let Some((original_name, _)) = original.iter().find(|(_, original)| *original == definition) else {
                    continue;
                };
                if *original_name != name {
                    connection.execute(&*format!("ALTER INDEX {name} RENAME TO {original_name}")).await?;
                }
            }
        } else {
            let indexes: Vec<(String, String)> = sqlite_schema(connection, table)
                .await?
                .into_iter()
                .filter(|(kind, _, _)| kind == "index")
                .map(|(_, name, sql)| (name, sql))
                .collect();
            connection.execute(&*format!("DROP TABLE {table}")).await?;
            connection.execute(&*format!("ALTER TABLE {shadow} RENAME TO {table}")).await?;
            // SQLite cannot rename indexes: give the new table its indexes under their original names.
            for (name, sql) in indexes {
                connection.execute(&*format!("DROP INDEX IF EXISTS {name}{SUFFIX}")).await?;
                connection.execute(&*sql).await?;
            }
        }
    }
    Ok(())
}

/// A PostgreSQL table's indexes: (name, definition with the index name left out).
async fn postgres_indexes(connection: &mut AnyConnection, table: &str) -> Result<Vec<(String, String)>, RebuildError> {
    let rows = connection
        .fetch_all(
            sqlx::query(
                "SELECT indexname::text AS indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
            )
            .bind(table),
        )
        .await?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("indexname")?;
            let definition: String = row.try_get("indexdef")?;
            Ok((name.clone(), definition.replacen(&format!(" {name} "), " ", 1)))
        })
        .collect()
}

/// The `CREATE` statements of a table and its explicit indexes: (kind, name, sql).
async fn sqlite_schema(
    connection: &mut AnyConnection,
    table: &str,
) -> Result<Vec<(String, String, String)>, RebuildError> {
    let rows = connection
        .fetch_all(
            sqlx::query(
                "SELECT type, name, sql FROM sqlite_master
                  WHERE tbl_name = $1 AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type DESC",
            )
            .bind(table),
        )
        .await?;
    rows.iter().map(|row| Ok((row.try_get("type")?, row.try_get("name")?, row.try_get("sql")?))).collect()
}

fn rename_first(sql: &str, from: &str, to: &str) -> String {
    sql.replacen(from, to, 1)
}
