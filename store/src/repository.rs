//! Running commands against aggregates, with an in-memory aggregate cache that keeps load cost independent of
//! how long an aggregate's history is.
//!
//! cqrs-es 0.5.0 snapshots apply every event twice, so they stay off. Instead each repository keeps the latest
//! state it saw of recently used aggregates, tagged with its version.
//!
//! A command is first decided on the cached state without reading the store. That decision is only trusted when the
//! store confirms it: an append carries the next sequence number, so if another process wrote in between, the
//! unique key refuses it, the repository reads the events it missed and decides again. A refusal or a no-op decided
//! on cached state is likewise confirmed by reading the events after the cached version (one indexed query) and
//! deciding again if there were any. So nothing is ever decided on stale state, several processes may write the same
//! aggregates, and the usual command costs one write and no read, whatever the length of the stream.
//!
//! Within one process, commands on the same aggregate take turns (a striped lock held from decision to append).
//! They would conflict anyway; taking turns means they never do, and it prevents starvation: with optimistic
//! retries alone, a writer that just won keeps deciding on fresh cached state while the losers must first reread,
//! so a busy single-stream aggregate (publishing, the roster) could refuse a loser ten times in a row (measured:
//! 0.5–2 % of submissions with three concurrent submitters on SQLite). Conflicts now only come from other processes.
//!
//! Waiting for the turn counts against the store's acquire timeout: each command (and each load) has one deadline,
//! taken when it is called, for its turn, its connections and its queries together. Without it, while the database
//! is unreachable the commands queued on one aggregate each waited for their own pool timeout after the ones before
//! them (measured with 8 concurrent invitations on the roster and a 2 s timeout: answers after 2, 4, … 16 s; on
//! SQLite with the file locked by another connection, 10, 20, … 80 s, SQLite's busy timeout each).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use lru::LruCache;

use crate::error::from_persistence;
use crate::store::Writer;
use crate::{Backend, CommandError, EventMetadata, EventStore, StoreError};

/// What a successful command left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate's version (its last sequence number) after the command.
    pub version: u64,
    /// How many events the command appended (0 when it changed nothing).
    pub appended: usize,
}

/// Loads aggregates of one type and runs their commands.
pub struct AggregateRepository<A: Aggregate> {
    store: EventStore,
    services: A::Services,
    cache: Mutex<LruCache<String, (A, u64)>>,
    turns: Vec<tokio::sync::Mutex<()>>,
}

/// Called with a command's decided state and the version it will have, just before its events are appended (again
/// after each re-decision); an error stops the command before anything is appended. `Idempotency-Key` answers are
/// stored here (ADR 0018).
pub type BeforeAppend<A> = dyn Fn(&A, u64) -> futures::future::BoxFuture<'static, Result<(), StoreError>> + Send + Sync;

/// How many locks commands on different aggregates spread over.
const TURN_STRIPES: usize = 256;

fn stripe(aggregate_id: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    aggregate_id.hash(&mut hasher);
    (hasher.finish() % TURN_STRIPES as u64) as usize
}

impl<A> AggregateRepository<A>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone,
{
    /// A repository on `store` whose commands get `services`.
    pub fn new(store: EventStore, services: A::Services) -> Self {
        let capacity = NonZeroUsize::new(store.inner.aggregate_cache_capacity).unwrap_or(NonZeroUsize::MIN);
        let turns = (0..TURN_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Self { store, services, cache: Mutex::new(LruCache::new(capacity)), turns }
    }

    /// The aggregate's current state and version (0 when it has no events), within the acquire timeout.
    pub async fn load(&self, aggregate_id: &str) -> Result<(A, u64), StoreError> {
        self.store.within(self.store.deadline(), self.read(aggregate_id)).await
    }

    /// [`load`](Self::load) without a deadline of its own (commands read under theirs).
    async fn read(&self, aggregate_id: &str) -> Result<(A, u64), StoreError> {
        let cached = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(aggregate_id).cloned();
        let (mut aggregate, mut version) = cached.unwrap_or_default();
        let newer = self.events_after(aggregate_id, version).await?;
        if newer.is_empty() {
            return Ok((aggregate, version));
        }
        for event in newer {
            if event.sequence as u64 != version + 1 {
                return Err(StoreError::Corrupt(format!(
                    "{} {aggregate_id}: expected sequence {}, found {}",
                    A::TYPE,
                    version + 1,
                    event.sequence
                )));
            }
            let payload: A::Event = serde_json::from_value(event.payload).map_err(|error| {
                StoreError::Corrupt(format!("{} {aggregate_id} event {}: {error}", A::TYPE, event.sequence))
            })?;
            aggregate.apply(payload);
            version = event.sequence as u64;
        }
        self.remember(aggregate_id, aggregate.clone(), version);
        Ok((aggregate, version))
    }

    /// Runs `command` against the aggregate's current state and appends what it decides.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.execute_expecting(aggregate_id, command, metadata, None).await
    }

    /// Like [`execute`](Self::execute), but when another writer wins the race the command is decided again on the
    /// fresh state, up to `attempts` times in all. Only for commands whose meaning does not depend on the state the
    /// caller saw (no `If-Match`): re-deciding them is what the caller would get by arriving a moment later.
    pub async fn execute_retrying(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        attempts: u32,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.execute_retrying_prepared(aggregate_id, command, metadata, attempts, None).await
    }

    /// Like [`execute_retrying`](Self::execute_retrying), calling `before_append` before each append.
    pub async fn execute_retrying_prepared(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        attempts: u32,
        before_append: Option<&BeforeAppend<A>>,
    ) -> Result<Committed, CommandError<A::Error>> {
        // One deadline for every attempt: the caller waits no longer than for one command.
        let deadline = self.store.deadline();
        let mut attempt = 1;
        loop {
            match self.run(deadline, aggregate_id, command.clone(), metadata, None, before_append).await {
                Err(CommandError::Conflict) if attempt < attempts => attempt += 1,
                outcome => return outcome,
            }
        }
    }

    /// Like [`execute`](Self::execute), but fails with [`CommandError::VersionMismatch`] unless the aggregate is at
    /// `expected_version` (for `If-Match`).
    ///
    /// Every command gets its answer within the store's acquire timeout from the moment it is called, the wait for
    /// its turn on the aggregate included; when the store cannot answer by then it fails with
    /// [`StoreError::Unavailable`]. (Each waiting its own pool timeout after the commands queued before it, the
    /// eighth command on one aggregate would answer after eight timeouts while the database is unreachable.)
    pub async fn execute_expecting(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<u64>,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.run(self.store.deadline(), aggregate_id, command, metadata, expected_version, None).await
    }

    /// `work` (safe to drop) unless the deadline passes first.
    async fn by<T>(
        &self,
        deadline: tokio::time::Instant,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, CommandError<A::Error>> {
        Ok(self.store.within(deadline, work).await?)
    }

    /// Runs one command, answering by `deadline` (give or take the few milliseconds of a commit under way).
    ///
    /// Waiting for the aggregate's turn and reading the store give up at the deadline, dropped wherever they are
    /// (both safe to drop). The append is not dropped: it runs as a task that starts no transaction after the
    /// deadline and, once it has begun one, finishes it, and the command waits for it (docs/adr/0015). So an
    /// `Unavailable` answer means nothing was committed, except where the connection was lost during a commit.
    async fn run(
        &self,
        deadline: tokio::time::Instant,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
        expected_version: Option<u64>,
        before_append: Option<&BeforeAppend<A>>,
    ) -> Result<Committed, CommandError<A::Error>> {
        let _turn = self.by(deadline, async { Ok(self.turns[stripe(aggregate_id)].lock().await) }).await?;
        // An If-Match is checked against the store, never against the cache.
        let cached = if expected_version.is_none() { self.cached(aggregate_id) } else { None };
        let confirmed = cached.is_none();
        let (mut aggregate, version) = match cached {
            Some(cached) => cached,
            None => self.by(deadline, self.read(aggregate_id)).await?,
        };
        if let Some(expected) = expected_version {
            if expected != version {
                return Err(CommandError::VersionMismatch { expected, actual: version });
            }
        }
        let sink = EventSink::default();
        let decided = aggregate.handle(command.clone(), &self.services, &sink).await;
        let events = sink.collect().await;
        if !confirmed && (decided.is_err() || events.is_empty()) {
            // A refusal or no-op on cached state is only final if the store holds nothing newer; otherwise decide
            // again on the current state (read once, here).
            let current = self.by(deadline, self.read(aggregate_id)).await?;
            if current.1 != version {
                return self.decide_on(deadline, aggregate_id, current, command, metadata, before_append).await;
            }
        }
        decided.map_err(CommandError::Rejected)?;
        if events.is_empty() {
            return Ok(Committed { version, appended: 0 });
        }
        match self.append(deadline, aggregate_id, aggregate, version, &events, metadata, before_append).await {
            Err(CommandError::Conflict) if !confirmed => {
                let current = self.by(deadline, self.read(aggregate_id)).await?;
                self.decide_on(deadline, aggregate_id, current, command, metadata, before_append).await
            }
            outcome => outcome,
        }
    }

    /// Decides on state just read from the store and appends the result.
    async fn decide_on(
        &self,
        deadline: tokio::time::Instant,
        aggregate_id: &str,
        (mut aggregate, version): (A, u64),
        command: A::Command,
        metadata: &EventMetadata,
        before_append: Option<&BeforeAppend<A>>,
    ) -> Result<Committed, CommandError<A::Error>> {
        let sink = EventSink::default();
        aggregate.handle(command, &self.services, &sink).await.map_err(CommandError::Rejected)?;
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Committed { version, appended: 0 });
        }
        self.append(deadline, aggregate_id, aggregate, version, &events, metadata, before_append).await
    }

    /// Appends `events` decided on `aggregate` at `version`; on success the new state becomes the cached one.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        deadline: tokio::time::Instant,
        aggregate_id: &str,
        aggregate: A,
        version: u64,
        events: &[A::Event],
        metadata: &EventMetadata,
        before_append: Option<&BeforeAppend<A>>,
    ) -> Result<Committed, CommandError<A::Error>> {
        if let Some(before_append) = before_append {
            self.by(deadline, before_append(&aggregate, version + events.len() as u64)).await?;
        }
        let metadata = serde_json::to_value(metadata.to_map())
            .map_err(|error| CommandError::Store(StoreError::Corrupt(error.to_string())))?;
        let serialized = events
            .iter()
            .zip(version as usize + 1..)
            .map(|(event, sequence)| {
                Ok(SerializedEvent::new(
                    aggregate_id.to_string(),
                    sequence,
                    A::TYPE.to_string(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(event).map_err(|error| StoreError::Corrupt(error.to_string()))?,
                    metadata.clone(),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // The append runs as a task of its own, so that it finishes (commit or rollback) even when the caller's
        // future is dropped: actix-web drops a handler when its client goes away or when another of its extractors
        // fails, and a transaction cancelled between `BEGIN IMMEDIATE` and the moment sqlx hands it back is never
        // rolled back (sqlx 0.8 `begin_with`): its connection returned to the pool holding SQLite's write lock, and
        // every write of the process failed after the busy timeout from then on (docs/adr/0015).
        let store = self.store.clone();
        let appended = tokio::spawn(async move {
            // Neither starts a transaction after the deadline, so a caller answered "unavailable" is not committed
            // later behind its back (the one exception is a commit that was already under way: its answer is lost).
            let persisted = match &store.inner.writer {
                Writer::Postgres(postgres) => {
                    // sqlx's PostgreSQL connections recover from a dropped transaction (the rollback is queued).
                    match tokio::time::timeout_at(deadline, postgres.persist::<A>(&serialized, None)).await {
                        Ok(persisted) => persisted,
                        Err(_) => Err(PersistenceError::ConnectionError(Box::new(sqlx::Error::PoolTimedOut))),
                    }
                }
                Writer::Sqlite(sqlite) => sqlite.persist_before::<A>(deadline, &serialized).await,
            };
            if persisted.is_ok() {
                store.notify_commit();
            }
            persisted
        });
        let persisted = match appended.await {
            Ok(persisted) => persisted,
            // Only at runtime shutdown (or if persisting panicked): whether it committed is unknown, as after a
            // lost connection.
            Err(_) => return Err(CommandError::Store(StoreError::Unavailable(sqlx::Error::WorkerCrashed))),
        };
        match persisted {
            Ok(()) => {
                let new_version = version + events.len() as u64;
                self.remember(aggregate_id, aggregate, new_version);
                Ok(Committed { version: new_version, appended: events.len() })
            }
            // The cache still holds valid state at its own version (only a successful append replaces it), so the
            // next load reads just the events the winner appended instead of the whole stream: that keeps a hot
            // single-stream aggregate (publishing, the roster) cheap to re-decide under contention.
            Err(error) => Err(CommandError::from(from_persistence(error, A::TYPE, aggregate_id))),
        }
    }

    /// The cached state and version of an aggregate, without touching the store. Right after a successful command
    /// this is that command's result (or something newer); `None` if it is not cached.
    pub fn peek(&self, aggregate_id: &str) -> Option<(A, u64)> {
        self.cached(aggregate_id)
    }

    /// Forgets one cached aggregate: for aggregates that will not be used again soon (a redeemed ticket, a closed
    /// session), whose cached state would only take memory until the LRU pushes it out. The next load reads the
    /// store.
    pub fn forget(&self, aggregate_id: &str) {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop(aggregate_id);
    }

    /// Forgets every cached aggregate (for tests and benchmarks that measure cold loads).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    fn remember(&self, aggregate_id: &str, aggregate: A, version: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Never replace newer state with older (two loads may race).
        if cache.peek(aggregate_id).is_some_and(|(_, cached)| *cached >= version) {
            return;
        }
        cache.put(aggregate_id.to_string(), (aggregate, version));
    }

    fn cached(&self, aggregate_id: &str) -> Option<(A, u64)> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(aggregate_id).cloned()
    }

    async fn events_after(&self, aggregate_id: &str, version: u64) -> Result<Vec<SerializedEvent>, StoreError> {
        match (&self.store.inner.writer, &self.store.inner.backend) {
            // postgres-es formats the sequence into the SQL text, so every version would prepare a new statement;
            // this query binds it and stays prepared.
            (Writer::Postgres(_), Backend::Postgres(pool)) => {
                crate::postgres::events_after(pool, A::TYPE, aggregate_id, version).await
            }
            (Writer::Sqlite(sqlite), _) => sqlite
                .get_last_events::<A>(aggregate_id, version as usize)
                .await
                .map_err(|error| from_persistence(error, A::TYPE, aggregate_id)),
            (Writer::Postgres(postgres), Backend::Sqlite(_)) => postgres
                .get_last_events::<A>(aggregate_id, version as usize)
                .await
                .map_err(|error| from_persistence(error, A::TYPE, aggregate_id)),
        }
    }
}
