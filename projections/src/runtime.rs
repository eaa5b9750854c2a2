//! The projector: one task per projection, tailing the global log from a durable checkpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::{AnyConnection, Executor, Row};
use store::{Cursor, EventStore, RecordedEvent, StoreError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::revisions::Revisions;
use crate::{ApplyError, Projection, Tables};

/// How the projector batches and waits.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    /// How often to look for events committed by other processes (this process's commits wake it at once).
    pub poll_interval: Duration,
    /// How long to wait before retrying after the store was unavailable.
    pub retry_delay: Duration,
    /// How long a projection's stored checkpoint may stay behind events of no interest to it (see
    /// [`Projection::aggregate_types`]); it also moves with the projection's next event of interest.
    pub skip_age: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            retry_delay: Duration::from_secs(1),
            skip_age: Duration::from_secs(1),
        }
    }
}

/// Where a projection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    /// Catching up: there were events to apply the last time it looked.
    CatchingUp,
    /// Applied every committed event the last time it looked.
    CaughtUp,
    /// Committed events exist but are not readable yet: an older transaction on the database cluster is still open.
    HeldBack,
    /// Waiting for the store to come back.
    Retrying(String),
    /// Stopped on a poison event; needs a fix (and maybe a rebuild).
    Failed {
        /// The event it could not apply.
        cursor: String,
        /// Why.
        error: String,
    },
}

/// One projection's status, for readiness and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The state.
    pub state: ProjectionState,
    /// Its checkpoint.
    pub cursor: String,
}

/// Live status of every projection, shared with the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct StatusBoard {
    inner: Arc<RwLock<BTreeMap<&'static str, ProjectionStatus>>>,
}

impl StatusBoard {
    /// A snapshot of every projection's status.
    pub fn snapshot(&self) -> BTreeMap<&'static str, ProjectionStatus> {
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// True when every projection has applied everything it could read.
    pub fn all_caught_up(&self) -> bool {
        let statuses = self.snapshot();
        !statuses.is_empty() && statuses.values().all(|status| status.state == ProjectionState::CaughtUp)
    }

    fn set(&self, name: &'static str, state: ProjectionState, cursor: Cursor) {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name, ProjectionStatus { state, cursor: cursor.to_string() });
    }
}

#[derive(Clone)]
struct Metrics {
    applied: IntCounterVec,
    failed: IntGaugeVec,
    lag: HistogramVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let applied = IntCounterVec::new(
            Opts::new("gatehouse_projection_events_applied_total", "Events applied by each projection"),
            &["projection"],
        )?;
        let failed = IntGaugeVec::new(
            Opts::new("gatehouse_projection_failed", "1 while a projection is stopped on a poison event"),
            &["projection"],
        )?;
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_projection_lag_seconds",
                "Time from an event's insert (database clock) to its projection's commit (service clock)",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]),
            &["projection"],
        )?;
        for collector in [
            Box::new(applied.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failed.clone()),
            Box::new(lag.clone()),
        ] {
            match registry.register(collector) {
                Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(Self { applied, failed, lag })
    }
}

/// Runs every projection until cancelled.
pub struct Projector {
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    config: ProjectorConfig,
    status: StatusBoard,
    metrics: Metrics,
    revisions: Revisions,
}

/// What stopped a batch.
pub(crate) enum BatchError {
    /// The store is down; retry.
    Unavailable(StoreError),
    /// A poison event, or a write the read model refuses: stop.
    Poison { cursor: Cursor, error: String },
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::from(StoreError::from(error))
    }
}

/// Errors outside `Projection::apply` (beginning, reading the checkpoint or the log, committing) are the store's,
/// not the event's: they are retried, except a stored event that cannot be decoded at all.
impl From<StoreError> for BatchError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(reason) => BatchError::Poison { cursor: Cursor::START, error: reason },
            other => BatchError::Unavailable(other),
        }
    }
}

/// Errors worth retrying: the store is away, or PostgreSQL aborted the transaction for a reason that a retry
/// clears (serialization failure, deadlock, lock or statement timeout, cancellation).
fn is_transient(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable(_) => true,
        StoreError::Database(sqlx::Error::Database(database)) => {
            matches!(database.code().as_deref(), Some("40001" | "40P01" | "55P03" | "57014"))
        }
        _ => false,
    }
}

impl Projector {
    /// A projector over `store` for `projections`, registering its metrics in `registry`.
    pub fn new(
        store: EventStore,
        projections: Vec<Arc<dyn Projection>>,
        config: ProjectorConfig,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let metrics = Metrics::register(registry)?;
        Ok(Self {
            store,
            projections,
            config,
            status: StatusBoard::default(),
            metrics,
            revisions: Revisions::default(),
        })
    }

    /// The read-model revisions this projector advances after each batch it commits (see [`Revisions`]).
    pub fn revisions(&self) -> Revisions {
        self.revisions.clone()
    }

    /// The status board this projector updates.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    fn worker(&self, projection: &Arc<dyn Projection>) -> Worker {
        Worker {
            poison_index: std::sync::Mutex::default(),
            position: std::sync::Mutex::default(),
            store: self.store.clone(),
            projection: projection.clone(),
            config: self.config.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            revisions: self.revisions.clone(),
        }
    }

    /// Runs every projection until `shutdown` is cancelled. A projection that hits a poison event stops alone;
    /// the others go on.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        for projection in &self.projections {
            self.status.set(projection.name(), ProjectionState::CatchingUp, Cursor::START);
            let worker = self.worker(projection);
            tasks.spawn(worker.run(shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Applies every committed event for every projection, then returns (for CLIs and tests). Waits while an open
    /// transaction elsewhere holds committed events back.
    pub async fn catch_up(&self) -> Result<(), String> {
        for projection in &self.projections {
            let worker = self.worker(projection);
            worker.ensure_checkpoint().await.map_err(|error| error.to_string())?;
            loop {
                match worker.run_batch(true).await {
                    Ok(0) => {
                        let state = self.status.snapshot().get(projection.name()).map(|status| status.state.clone());
                        if state != Some(ProjectionState::HeldBack) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(_) => {}
                    Err(BatchError::Unavailable(error)) => return Err(error.to_string()),
                    Err(BatchError::Poison { cursor, error }) => {
                        return Err(format!("projection {} stopped at {cursor}: {error}", projection.name()))
                    }
                }
            }
        }
        Ok(())
    }
}

/// How many events of no interest to a projection its worker may skip before it writes the checkpoint past them.
const SKIP_LIMIT: usize = 5_000;

/// Events of no interest to a projection that its worker has read past without moving the stored checkpoint.
#[derive(Debug, Clone, Copy)]
struct Skipped {
    /// Everything up to here is either applied or of no interest.
    cursor: Cursor,
    /// How many events were skipped since the stored checkpoint last moved.
    count: usize,
    /// When the first of them was skipped.
    since: std::time::Instant,
}

struct Worker {
    /// Where in the last batch a poison event stood.
    poison_index: std::sync::Mutex<Option<usize>>,
    /// Where this worker last found the stored checkpoint (or moved it), and what it skipped since.
    position: std::sync::Mutex<(Option<Cursor>, Option<Skipped>)>,
    store: EventStore,
    projection: Arc<dyn Projection>,
    config: ProjectorConfig,
    status: StatusBoard,
    metrics: Metrics,
    revisions: Revisions,
}

impl Worker {
    async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name();
        let mut commits = self.store.subscribe();
        let mut ready = false;
        loop {
            if !ready {
                match self.ensure_checkpoint().await {
                    Ok(()) => ready = true,
                    Err(error) => {
                        self.status.set(name, ProjectionState::Retrying(error.to_string()), Cursor::START);
                        tracing::warn!(projection = name, error.message = %error, "projection waiting for the store");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(self.config.retry_delay) => continue,
                        }
                    }
                }
            }
            let idle = if ready {
                match self.next_batch().await {
                    Ok(applied) => applied == 0,
                    Err(BatchError::Unavailable(error)) => {
                        self.status.set(name, ProjectionState::Retrying(error.to_string()), Cursor::START);
                        tracing::warn!(projection = name, error.message = %error, "projection waiting for the store");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(self.config.retry_delay) => continue,
                        }
                    }
                    Err(BatchError::Poison { cursor, error }) => {
                        self.metrics.failed.with_label_values(&[name]).set(1);
                        self.status.set(
                            name,
                            ProjectionState::Failed { cursor: cursor.to_string(), error: error.clone() },
                            cursor,
                        );
                        tracing::error!(
                            projection = name,
                            cursor = %cursor,
                            error.message = %error,
                            "projection stopped on an event it cannot apply; fix the cause and restart or rebuild"
                        );
                        self.record_failure(cursor, &error).await;
                        return;
                    }
                }
            } else {
                true
            };
            if idle {
                // Held-back events become readable when some other transaction ends, which nothing announces here.
                let held_back =
                    self.status.snapshot().get(name).is_some_and(|status| status.state == ProjectionState::HeldBack);
                let wait = if held_back { Duration::from_millis(5) } else { self.config.poll_interval };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = commits.changed() => {}
                    () = tokio::time::sleep(wait) => {}
                }
            } else if shutdown.is_cancelled() {
                return;
            }
        }
    }

    async fn ensure_checkpoint(&self) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO projection_checkpoints (name, cursor) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(self.projection.name())
            .bind(Cursor::START.to_string())
            .execute(self.store.read_models())
            .await?;
        Ok(())
    }

    /// The next step of a running worker. For a projection that reads only some aggregate types, runs of other
    /// events are read past without a write transaction (one per event per projection was most of the projector's
    /// work, and on SQLite every one queues for the single writer): the stored checkpoint catches up with the next
    /// batch that has something to apply, or after [`SKIP_LIMIT`] events or `skip_age`. Skipped events are never
    /// lost: after a restart they are read again from the stored checkpoint, and applying them is a no-op.
    /// Returns how many events it applied or skipped (0 when idle).
    async fn next_batch(&self) -> Result<usize, BatchError> {
        let Some(types) = self.projection.aggregate_types() else { return self.run_batch(true).await };
        let (stored, skipped) = *self.position.lock().unwrap_or_else(|p| p.into_inner());
        let overdue = skipped
            .is_some_and(|skipped| skipped.count >= SKIP_LIMIT || skipped.since.elapsed() >= self.config.skip_age);
        if overdue {
            return self.run_batch(true).await;
        }
        // Without a transaction first: most wake-ups of a projection are for events of no interest to it.
        if let Some(from) = skipped.map(|skipped| skipped.cursor).or(stored) {
            let events = self.store.read_global(from, self.config.batch_size).await?;
            if events.is_empty() {
                // Idle. Without skipped events, the usual empty batch tells caught up from held back.
                return if skipped.is_some() { Ok(0) } else { self.run_batch(false).await };
            }
            if !concerns(types, &events) {
                self.skip(&events);
                return Ok(events.len());
            }
            // Something to apply: the batch starts at the stored checkpoint, behind what was skipped, and applies
            // those too (no-ops) so that the checkpoint moves past them.
            return self.run_batch(true).await;
        }
        self.run_batch(false).await
    }

    /// Records `events` (none of interest) as read past.
    fn skip(&self, events: &[RecordedEvent]) {
        let Some(last) = events.last().map(|event| event.cursor) else { return };
        {
            let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
            let skipped = position.1;
            let count = skipped.map_or(0, |skipped| skipped.count) + events.len();
            let since = skipped.map_or_else(std::time::Instant::now, |skipped| skipped.since);
            let cursor = skipped.map_or(last, |skipped| skipped.cursor.max(last));
            position.1 = Some(Skipped { cursor, count, since });
        }
        let state =
            if events.len() < self.config.batch_size { ProjectionState::CaughtUp } else { ProjectionState::CatchingUp };
        self.status.set(self.projection.name(), state, last);
    }

    /// Remembers where the stored checkpoint stands; what was skipped before it is behind it now.
    fn stored_at(&self, cursor: Cursor) {
        let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
        position.0 = Some(cursor);
        if position.1.is_some_and(|skipped| skipped.cursor <= cursor) {
            position.1 = None;
        }
    }

    /// One transaction: lock the checkpoint, read after it, apply, move it. Returns how many events it applied.
    ///
    /// When an event cannot be applied, the events before it in the batch are still applied (in a second
    /// transaction), so the checkpoint stops exactly in front of the poison event.
    ///
    /// Unless `all`, a batch with no event of interest to the projection is rolled back and recorded as skipped.
    async fn run_batch(&self, all: bool) -> Result<usize, BatchError> {
        match self.run_limited_batch(self.config.batch_size, all).await {
            Err(BatchError::Poison { cursor, error }) => {
                let before = self.poison_index.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(before) = before.filter(|before| *before > 0) {
                    self.run_limited_batch(before, true).await?;
                }
                Err(BatchError::Poison { cursor, error })
            }
            other => other,
        }
    }

    async fn run_limited_batch(&self, limit: usize, all: bool) -> Result<usize, BatchError> {
        let name = self.projection.name();
        // SQLite: queue with this process's appends for the write lock (held until this function returns).
        let _turn = self.store.write_turn().await;
        let mut transaction = begin_exclusive(&self.store).await?;
        let cursor = locked_checkpoint(&mut transaction, &self.store, name).await?;
        let events = self.store.read_global(cursor, limit).await?;
        let Some(last) = events.last().map(|event| event.cursor) else {
            transaction.rollback().await?;
            // Nothing readable is not the same as nothing there: an open transaction elsewhere on the cluster may
            // hold committed events back. Only report caught up when there are none.
            let held_back = self.store.has_events_after(cursor).await?;
            let state = if held_back { ProjectionState::HeldBack } else { ProjectionState::CaughtUp };
            self.stored_at(cursor);
            self.status.set(name, state, cursor);
            return Ok(0);
        };
        let types = self.projection.aggregate_types();
        let changed = types.is_none_or(|types| concerns(types, &events));
        if !changed && !all {
            transaction.rollback().await?;
            self.stored_at(cursor);
            self.skip(&events);
            return Ok(events.len());
        }
        let tables = Tables::live();
        if let Err((index, error)) = apply_batch(&*self.projection, &mut transaction, &tables, &events).await {
            if matches!(error, BatchError::Poison { .. }) {
                *self.poison_index.lock().unwrap_or_else(|p| p.into_inner()) = Some(index);
            }
            return Err(error);
        }
        // Only a batch with events of interest changes the read model (and makes its cached answers stale).
        let revision = advance_checkpoint(&mut transaction, &self.store, name, last, events.len(), changed).await?;
        transaction.commit().await?;
        // Before the status moves: whoever waits for the batch must find caches of the old read model stale.
        self.revisions.advance(name, revision);
        self.stored_at(last);
        let now = chrono::Utc::now();
        let lag = self.metrics.lag.with_label_values(&[name]);
        for event in &events {
            lag.observe((now - event.recorded_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
        }
        self.metrics.applied.with_label_values(&[name]).inc_by(events.len() as u64);
        self.metrics.failed.with_label_values(&[name]).set(0);
        let state =
            if events.len() < self.config.batch_size { ProjectionState::CaughtUp } else { ProjectionState::CatchingUp };
        self.status.set(name, state, last);
        Ok(events.len())
    }

    async fn record_failure(&self, cursor: Cursor, error: &str) {
        let result =
            sqlx::query("UPDATE projection_checkpoints SET failed_cursor = $2, last_error = $3 WHERE name = $1")
                .bind(self.projection.name())
                .bind(cursor.to_string())
                .bind(error)
                .execute(self.store.read_models())
                .await;
        if let Err(error) = result {
            tracing::warn!(projection = self.projection.name(), error.message = %error, "could not record the projection failure");
        }
    }
}

/// Whether any of `events` is of one of `types`.
fn concerns(types: &[&str], events: &[RecordedEvent]) -> bool {
    events.iter().any(|event| types.contains(&event.aggregate_type.as_str()))
}

/// Moves a projection's checkpoint to `last`, and its revision up by one when the batch `changed` the read model,
/// inside the batch's transaction; on PostgreSQL a new revision is announced on
/// [`revisions::CHANNEL`](crate::revisions::CHANNEL) when the transaction commits. Returns the revision.
async fn advance_checkpoint(
    connection: &mut AnyConnection,
    store: &EventStore,
    name: &str,
    last: Cursor,
    applied: usize,
    changed: bool,
) -> Result<i64, BatchError> {
    let update = "UPDATE projection_checkpoints
                     SET cursor = $2, events_applied = events_applied + $3, updated_at = CURRENT_TIMESTAMP,
                         failed_cursor = NULL, last_error = NULL, revision = revision + $4
                   WHERE name = $1
               RETURNING name, revision";
    let sql = if changed && store.backend_name() == "postgres" {
        format!(
            "WITH moved AS ({update})
             SELECT revision FROM moved WHERE pg_notify('{channel}', name || ' ' || revision)::text = ''",
            channel = crate::revisions::CHANNEL
        )
    } else {
        update.to_string()
    };
    let row = connection
        .fetch_one(sqlx::query(&sql).bind(name).bind(last.to_string()).bind(applied as i64).bind(i64::from(changed)))
        .await?;
    Ok(row.try_get("revision")?)
}

/// Applies a batch; a failure becomes a poison (or transient) error naming the event and its index.
pub(crate) async fn apply_batch(
    projection: &dyn Projection,
    connection: &mut AnyConnection,
    tables: &Tables,
    events: &[RecordedEvent],
) -> Result<(), (usize, BatchError)> {
    let Err((index, error)) = projection.apply_batch(connection, tables, events).await else { return Ok(()) };
    let cursor = events.get(index).map(|event| event.cursor).unwrap_or_default();
    let error = match error {
        ApplyError::Database(error) => match StoreError::from(error) {
            transient if is_transient(&transient) => BatchError::Unavailable(transient),
            other => BatchError::Poison { cursor, error: format!("{other}: {other:?}") },
        },
        decode => BatchError::Poison { cursor, error: decode.to_string() },
    };
    Err((index, error))
}

/// Begins a read-model transaction that takes the write lock at once on SQLite (no lock upgrade, no deadlock).
pub(crate) async fn begin_exclusive(store: &EventStore) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    if store.backend_name() == "sqlite" {
        store.read_models().begin_with("BEGIN IMMEDIATE").await
    } else {
        store.read_models().begin().await
    }
}

/// Reads a projection's checkpoint, locking its row on PostgreSQL until the transaction ends.
pub(crate) async fn locked_checkpoint(
    connection: &mut AnyConnection,
    store: &EventStore,
    name: &str,
) -> Result<Cursor, BatchError> {
    let sql = if store.backend_name() == "postgres" {
        "SELECT cursor FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT cursor FROM projection_checkpoints WHERE name = $1"
    };
    let row = connection.fetch_optional(sqlx::query(sql).bind(name)).await?;
    let Some(row) = row else {
        return Ok(Cursor::START);
    };
    let text: String = row.try_get("cursor")?;
    text.parse().map_err(|_| BatchError::Poison {
        cursor: Cursor::START,
        error: format!("stored checkpoint {text:?} is not a cursor"),
    })
}

/// A projection's stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The projection.
    pub name: String,
    /// Everything up to here is applied.
    pub cursor: String,
    /// Events applied since the last rebuild.
    pub events_applied: i64,
    /// The event it stopped on, if it stopped.
    pub failed_cursor: Option<String>,
    /// Why it stopped.
    pub last_error: Option<String>,
}

/// Every stored checkpoint.
pub async fn checkpoints(store: &EventStore) -> Result<Vec<Checkpoint>, StoreError> {
    let rows = sqlx::query(
        "SELECT name, cursor, events_applied, failed_cursor, last_error FROM projection_checkpoints ORDER BY name",
    )
    .fetch_all(store.read_models())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Checkpoint {
                name: row.try_get("name")?,
                cursor: row.try_get("cursor")?,
                events_applied: row.try_get("events_applied")?,
                failed_cursor: row.try_get("failed_cursor")?,
                last_error: row.try_get("last_error")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
