//! Opening the store, migrating it, and reading the global log.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AnyPool, ConnectOptions, Connection, Executor, PgConnection, PgPool, SqlitePool};
use tokio::sync::{mpsc, watch};

use crate::{Cursor, StoreError};

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");

/// Whether a connection coming back to its pool is outside any transaction; one still inside is closed (which
/// rolls it back) instead of being handed to the next caller. On SQLite such a connection would hold the single
/// write lock for good, and every later write of every process would fail after the busy timeout. sqlx leaves one
/// behind when a `begin_with` future is dropped after its `BEGIN` ran; commands persist in tasks of their own so that
/// this does not happen (docs/adr/0015), and this is the net under that.
fn outside_transaction<DB: sqlx::Database>(connection: &DB::Connection, pool: &'static str) -> bool {
    use sqlx::TransactionManager;
    let depth = DB::TransactionManager::get_transaction_depth(connection);
    if depth > 0 {
        tracing::error!(pool, depth, "a connection came back to the pool inside a transaction; closing it");
    }
    depth == 0
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://PATH`; `None` means the embedded file `gatehouse.db` in `data_dir`.
    pub database_url: Option<String>,
    /// Where the embedded database (and other local state) lives.
    pub data_dir: PathBuf,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before the store counts as unavailable.
    pub acquire_timeout: Duration,
    /// How many aggregates the in-memory aggregate cache keeps.
    pub aggregate_cache_capacity: usize,
}

impl StoreConfig {
    /// The embedded default in `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            database_url: None,
            data_dir: data_dir.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            aggregate_cache_capacity: 10_000,
        }
    }
}

/// The native pool of the chosen backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// PostgreSQL, through postgres-es for writes.
    Postgres(PgPool),
    /// The embedded SQLite file.
    Sqlite(SqlitePool),
}

/// One event as the global log returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where this event stands in the global log; reading after it continues past this event.
    pub cursor: Cursor,
    /// The aggregate's type (`Aggregate::TYPE`).
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// 1 for the aggregate's first event, then consecutive.
    pub sequence: u64,
    /// The event's stored type name.
    pub event_type: String,
    /// The event's schema version.
    pub event_version: String,
    /// The event as stored.
    pub payload: serde_json::Value,
    /// Actor, request, correlation and causation ids, time.
    pub metadata: serde_json::Value,
    /// When the database recorded it.
    pub recorded_at: DateTime<Utc>,
}

/// The cqrs-es event repository of the chosen backend: postgres-es, or ours for SQLite.
pub(crate) enum Writer {
    Postgres(postgres_es::PostgresEventRepository),
    Sqlite(crate::SqliteEventRepository),
}

/// A handle on the event store; cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) read_models: AnyPool,
    pub(crate) writer: Writer,
    pub(crate) commits: watch::Sender<u64>,
    pub(crate) aggregate_cache_capacity: usize,
    /// How long one call may wait for the store in all (`StoreConfig::acquire_timeout`): see [`EventStore::within`].
    pub(crate) acquire_timeout: Duration,
    /// On SQLite: the in-process queue for the single write lock, shared by appends and projector batches.
    pub(crate) sqlite_turns: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl EventStore {
    /// Connects to the configured backend. Does not migrate; see [`EventStore::migrate`] and
    /// [`EventStore::check_schema`].
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let url = match &config.database_url {
            Some(url) if !url.trim().is_empty() => url.trim().to_string(),
            _ => {
                std::fs::create_dir_all(&config.data_dir).map_err(|error| {
                    StoreError::InvalidUrl(format!(
                        "cannot create data directory {}: {error}",
                        config.data_dir.display()
                    ))
                })?;
                format!("sqlite://{}", config.data_dir.join("gatehouse.db").display())
            }
        };
        let (backend, any_options) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(&url)
                .map_err(|error| StoreError::InvalidUrl(redact(&error.to_string())))?
                .application_name("gatehouse");
            // One direct connection first: it fails fast and says why (refused, authentication, no such database),
            // where a pool would retry until its timeout and report only that.
            let probe = tokio::time::timeout(config.acquire_timeout, PgConnection::connect_with(&options))
                .await
                .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))?
                .map_err(StoreError::from)?;
            probe.close().await.map_err(StoreError::from)?;
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options.clone())
                .await
                .map_err(StoreError::from)?;
            let any = AnyConnectOptions::from_url(&options.to_url_lossy())
                .map_err(|e| StoreError::InvalidUrl(redact(&e.to_string())))?;
            (Backend::Postgres(pool), any)
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err(StoreError::InvalidUrl("sqlite URL names no file".into()));
            }
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(crate::sqlite::BUSY_TIMEOUT)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(config.max_connections.max(2))
                .acquire_timeout(config.acquire_timeout)
                .after_release(|connection, _| {
                    Box::pin(async move {
                        // A dropped transaction's rollback is queued to the connection's worker: let it run first.
                        connection.ping().await?;
                        Ok(outside_transaction::<sqlx::Sqlite>(connection, "events"))
                    })
                })
                .connect_with(options.clone())
                .await
                .map_err(|error| match error {
                    sqlx::Error::Database(_) | sqlx::Error::Io(_) => {
                        StoreError::InvalidUrl(format!("cannot open embedded database {path}: {error}"))
                    }
                    other => StoreError::from(other),
                })?;
            let any = AnyConnectOptions::from_url(&options.to_url_lossy())
                .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
            (Backend::Sqlite(pool), any)
        } else {
            return Err(StoreError::InvalidUrl("expected postgres://…, postgresql://… or sqlite://PATH".into()));
        };
        let is_sqlite = matches!(backend, Backend::Sqlite(_));
        let read_models = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        connection
                            .execute(
                                "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;",
                            )
                            .await?;
                    }
                    Ok(())
                })
            })
            .after_release(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        connection.ping().await?;
                    }
                    Ok(outside_transaction::<sqlx::Any>(connection, "read models"))
                })
            })
            .connect_lazy_with(any_options);
        let turns = Arc::new(tokio::sync::Mutex::new(()));
        let writer = match &backend {
            Backend::Postgres(pool) => Writer::Postgres(postgres_es::PostgresEventRepository::new(pool.clone())),
            Backend::Sqlite(pool) => Writer::Sqlite(crate::SqliteEventRepository::new(pool.clone(), turns.clone())),
        };
        let (commits, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                read_models,
                writer,
                commits,
                aggregate_cache_capacity: config.aggregate_cache_capacity.max(1),
                acquire_timeout: config.acquire_timeout,
                sqlite_turns: is_sqlite.then_some(turns),
            }),
        })
    }

    /// On SQLite, waits for this process's turn at the database's single write lock and holds it until the guard
    /// is dropped: writers that queue here are served in order, where SQLite's own busy handler lets a waiting
    /// writer sleep in growing steps (up to 100 ms) and lose to whoever asks next (measured: the submit → queue
    /// p99 under two busy writers was 352 ms with the projector left to the busy handler). `None` on PostgreSQL.
    pub async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.inner.sqlite_turns {
            Some(turns) => Some(turns.clone().lock_owned().await),
            None => None,
        }
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// The native pool.
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// A pool over the same database for read models, usable with one SQL text on both backends
    /// (write placeholders as `$1, $2, …` in order of first appearance).
    pub fn read_models(&self) -> &AnyPool {
        &self.inner.read_models
    }

    /// Applies every migration this binary knows.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match &self.inner.backend {
            Backend::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Backend::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        };
        result.map_err(|error| match error {
            sqlx::migrate::MigrateError::VersionMissing(version) => {
                StoreError::SchemaTooNew { database: version, binary: self.binary_schema_version() }
            }
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            other => StoreError::Migrate(other),
        })
    }

    fn migrator(&self) -> &'static Migrator {
        match self.inner.backend {
            Backend::Postgres(_) => &POSTGRES_MIGRATIONS,
            Backend::Sqlite(_) => &SQLITE_MIGRATIONS,
        }
    }

    fn binary_schema_version(&self) -> i64 {
        self.migrator().iter().map(|migration| migration.version).max().unwrap_or(0)
    }

    /// Fails unless the database holds exactly the schema this binary expects.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let binary = self.binary_schema_version();
        const APPLIED: &str = "SELECT version, success FROM _sqlx_migrations ORDER BY version";
        let applied: Result<Vec<(i64, bool)>, sqlx::Error> = match &self.inner.backend {
            Backend::Postgres(pool) => sqlx::query_as(APPLIED).fetch_all(pool).await,
            Backend::Sqlite(pool) => sqlx::query_as(APPLIED).fetch_all(pool).await,
        };
        let applied = match applied {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(_)) => return Err(StoreError::SchemaNotMigrated),
            Err(other) => return Err(StoreError::from(other)),
        };
        if let Some(&(database, _)) = applied.last() {
            if database > binary {
                return Err(StoreError::SchemaTooNew { database, binary });
            }
        }
        let complete = applied.iter().all(|(_, success)| *success)
            && self.migrator().iter().all(|migration| applied.iter().any(|(version, _)| *version == migration.version));
        if complete {
            Ok(())
        } else {
            Err(StoreError::SchemaNotMigrated)
        }
    }

    /// Succeeds when the database answers, within the acquire timeout.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.within(self.deadline(), async {
            match &self.inner.backend {
                Backend::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
                Backend::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            }
            .map_err(StoreError::from)
        })
        .await
    }

    /// When a call that starts now must have its answer: the acquire timeout from now.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.inner.acquire_timeout
    }

    /// Runs `work` until `deadline`, then gives up with [`StoreError::Unavailable`].
    ///
    /// The pool bounds only the wait for a connection, and only each wait on its own: commands that take turns on
    /// one aggregate (or on SQLite's write lock) would wait for one another's timeouts in turn, and a query on a
    /// connection that stops answering (a network partition) would wait for ever. One deadline for the whole call,
    /// queueing included, bounds what a caller waits however many are queued. Giving up drops `work` wherever it
    /// is; the store's invariants do not depend on it finishing (a transaction cut off is rolled back or, if its
    /// commit already reached the database, it is in the log like any commit whose answer was lost).
    pub(crate) async fn within<T>(
        &self,
        deadline: tokio::time::Instant,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout_at(deadline, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(StoreError::timed_out(self.inner.acquire_timeout)),
        }
    }

    /// A counter that moves whenever this process commits events; projectors wait on it instead of polling.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    pub(crate) fn notify_commit(&self) {
        self.inner.commits.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Up to `limit` events after `after`, in the global order.
    ///
    /// The order is total and stable, and a reader that always continues from the last cursor it got sees every
    /// committed event exactly once. On PostgreSQL an event becomes readable only when every transaction that
    /// started writing before it has ended, so a transaction that commits late is never skipped: the reader waits
    /// for it. (A long transaction anywhere on the cluster therefore delays readers; projection lag shows it.)
    pub async fn read_global(&self, after: Cursor, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        match &self.inner.backend {
            Backend::Postgres(pool) => crate::postgres::read_global(pool, after, limit).await,
            Backend::Sqlite(pool) => crate::sqlite::read_global(pool, after, limit).await,
        }
    }

    /// Every event readable now after `after`, in the global order, from one query instead of pages: for replays.
    ///
    /// Events arrive through a channel of `capacity` as a background task reads them, so the consumer's work
    /// overlaps the reading. A store error ends the stream after being sent. Like [`read_global`](Self::read_global),
    /// it stops at the events held back by open transactions; continue from the last cursor to get those.
    pub fn stream_global(&self, after: Cursor, capacity: usize) -> mpsc::Receiver<Result<RecordedEvent, StoreError>> {
        let (sink, events) = mpsc::channel(capacity.max(1));
        match &self.inner.backend {
            Backend::Postgres(pool) => drop(tokio::spawn(crate::postgres::stream_global(pool.clone(), after, sink))),
            Backend::Sqlite(pool) => drop(tokio::spawn(crate::sqlite::stream_global(pool.clone(), after, sink))),
        }
        events
    }

    /// Up to `limit` of one aggregate's events after `sequence` (0 for the first), in sequence order, each with its
    /// place in the global log.
    pub async fn aggregate_events(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = i64::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        match &self.inner.backend {
            Backend::Postgres(pool) => {
                crate::postgres::aggregate_events(pool, aggregate_type, aggregate_id, sequence, limit).await
            }
            Backend::Sqlite(pool) => {
                crate::sqlite::aggregate_events(pool, aggregate_type, aggregate_id, sequence, limit).await
            }
        }
    }

    /// The id of every aggregate of `aggregate_type` that has events, in id order (for the few admin-sized
    /// aggregate types a whole-organisation task walks, such as the blueprints a key rotation visits).
    pub async fn aggregate_ids(&self, aggregate_type: &str) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = $1 ORDER BY aggregate_id";
        let ids = match &self.inner.backend {
            Backend::Postgres(pool) => sqlx::query_scalar(sql).bind(aggregate_type).fetch_all(pool).await?,
            Backend::Sqlite(pool) => sqlx::query_scalar(sql).bind(aggregate_type).fetch_all(pool).await?,
        };
        Ok(ids)
    }

    /// True when committed events exist after `after`, readable or not.
    ///
    /// An empty [`read_global`](Self::read_global) means "nothing readable now", not "nothing there": on PostgreSQL
    /// an open transaction anywhere on the cluster holds back events committed after it started. Readers that must
    /// know they reached the end (readiness, rebuilds) ask this too.
    pub async fn has_events_after(&self, after: Cursor) -> Result<bool, StoreError> {
        let exists = match &self.inner.backend {
            Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE (txid, position) > ($1::text::xid8, $2))")
                    .bind(after.txid.to_string())
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
            Backend::Sqlite(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position > ?)")
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(exists)
    }

    /// How many events the log holds.
    pub async fn count_events(&self) -> Result<u64, StoreError> {
        let count: i64 = match &self.inner.backend {
            Backend::Postgres(pool) => sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?,
            Backend::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?,
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
        self.inner.read_models.close().await;
    }
}

/// Decodes rows into events and sends them until the rows end, an error is sent, or the receiver hangs up.
pub(crate) async fn forward<R>(
    mut rows: impl futures::Stream<Item = Result<R, sqlx::Error>> + Unpin,
    decode: impl Fn(&R) -> Result<RecordedEvent, StoreError>,
    sink: mpsc::Sender<Result<RecordedEvent, StoreError>>,
) {
    use futures::TryStreamExt;
    loop {
        let next = match rows.try_next().await {
            Ok(Some(row)) => decode(&row),
            Ok(None) => return,
            Err(error) => Err(StoreError::from(error)),
        };
        let failed = next.is_err();
        if sink.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// Removes a password from an error message that may quote a URL.
fn redact(message: &str) -> String {
    match (message.find("://"), message.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &message[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &message[..scheme + 3], &credentials[..colon], &message[at..]),
                None => message.to_string(),
            }
        }
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_from_url_errors() {
        assert_eq!(redact("bad postgres://u:secret@host/db"), "bad postgres://u:***@host/db");
        assert_eq!(redact("no url here"), "no url here");
    }
}
