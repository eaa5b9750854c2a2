//! Issue #2's benchmark: the command path, the global log and projections on PostgreSQL, each beside its raw
//! floor measured in the same run.
//!
//! Run: `GATEHOUSE_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench --bench command_path`
//! (creates and drops its own database). Results go to stdout as Markdown; docs/BENCHMARKS.md records them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use projections::{ApplyError, Projection, Projector, ProjectorConfig, Tables};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Executor, PgPool};
use store::{AggregateRepository, Backend, Cursor, EventMetadata, EventStore, RecordedEvent};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

/// A small aggregate whose state does not grow with its history, so the numbers show what history length costs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Ledger {
    count: u64,
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum LedgerEvent {
    Recorded { value: u64, note: String },
}

impl DomainEvent for LedgerEvent {
    fn event_type(&self) -> String {
        "Recorded".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Ledger {
    const TYPE: &'static str = "ledger";
    type Command = u64;
    type Event = LedgerEvent;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, value: u64, _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        sink.write(LedgerEvent::Recorded { value, note: "benchmark payload of a typical size".into() }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: LedgerEvent) {
        let LedgerEvent::Recorded { value, .. } = event;
        self.count += 1;
        self.total += value;
    }
}

/// A durable projection that keeps one row per aggregate counting its events, like a real read model. It applies a
/// batch with one multi-row upsert.
struct LedgerTotals;

/// Lag samples (event insert to projection) of the command path's events, in seconds.
static LAG: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// When each command event was acknowledged to its client, and when the projection applied it, by (aggregate, sequence).
type Moments = std::collections::HashMap<(String, u64), Instant>;
static ACKNOWLEDGED: std::sync::LazyLock<std::sync::Mutex<Moments>> = std::sync::LazyLock::new(Default::default);
static APPLIED: std::sync::LazyLock<std::sync::Mutex<Moments>> = std::sync::LazyLock::new(Default::default);

#[async_trait]
impl Projection for LedgerTotals {
    fn name(&self) -> &'static str {
        "bench_ledger_totals"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["bench_ledger_totals"]
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
        let mut counts = std::collections::BTreeMap::<&str, i64>::new();
        for event in events.iter().filter(|event| event.aggregate_type == "ledger") {
            *counts.entry(event.aggregate_id.as_str()).or_default() += 1;
        }
        if counts.is_empty() {
            return Ok(());
        }
        let values: Vec<String> = (0..counts.len()).map(|n| format!("(${}, ${})", 2 * n + 1, 2 * n + 2)).collect();
        let table = tables.name("bench_ledger_totals");
        let sql = format!(
            "INSERT INTO {table} (aggregate_id, events) VALUES {} ON CONFLICT (aggregate_id) DO UPDATE SET events = {table}.events + excluded.events",
            values.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (aggregate, count) in &counts {
            query = query.bind(*aggregate).bind(*count);
        }
        connection.execute(query).await.map_err(|error| (0, ApplyError::Database(error)))?;
        let now = chrono::Utc::now();
        let applied_at = Instant::now();
        let mut lag = LAG.lock().unwrap();
        let mut applied = APPLIED.lock().unwrap();
        for event in events.iter().filter(|event| event.metadata["request_id"] == "bench") {
            lag.push((now - event.recorded_at).num_microseconds().unwrap_or(0) as f64 / 1e6);
            applied.insert((event.aggregate_id.clone(), event.sequence), applied_at);
        }
        Ok(())
    }
}

struct Stats {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1000.0
    }
    fn row(&self, name: &str, floor: Option<&Stats>) {
        let ratio = floor.map(|floor| format!("{:.2}×", self.rate() / floor.rate())).unwrap_or_else(|| "—".into());
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {ratio} |",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99)
        );
    }
}

/// Runs `op(client, n)` `per_client` times on each of `clients` concurrent tasks.
async fn measure<F, Fut>(clients: usize, per_client: usize, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let began = Instant::now();
                    op(client, n).await;
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Stats { ops: clients * per_client, elapsed: started.elapsed(), latencies }
}

const PAYLOAD: &str = r#"{"Recorded":{"value":1,"note":"benchmark payload of a typical size"}}"#;

const RAW_METADATA: &str = r#"{"actor":"bench@example.com","request_id":"r","correlation_id":"r","causation_id":"r","time":"2026-01-01T00:00:00Z"}"#;

/// One raw single-row insert of an event like the commands write, through `executor`.
async fn insert_raw<'e>(executor: impl sqlx::PgExecutor<'e>, aggregate_type: &str, aggregate: &str, sequence: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ($1, $2, $3, 'Recorded', '1.0', $4::jsonb, $5::jsonb)",
    )
    .bind(aggregate_type)
    .bind(aggregate)
    .bind(sequence)
    .bind(PAYLOAD)
    .bind(RAW_METADATA)
    .execute(executor)
    .await
    .unwrap();
}

/// The floor: one autocommit statement.
async fn raw_insert(pool: &PgPool, aggregate: &str, sequence: i64) {
    insert_raw(pool, "raw", aggregate, sequence).await;
}

/// The raw insert wrapped in an explicit transaction: BEGIN, INSERT, COMMIT, the round trips postgres-es makes.
async fn raw_insert_in_transaction(pool: &PgPool, aggregate: &str, sequence: i64) {
    let mut transaction = pool.begin().await.unwrap();
    insert_raw(&mut *transaction, "rawtx", aggregate, sequence).await;
    transaction.commit().await.unwrap();
}

/// Gives `aggregate` a history of `events` ledger events, written directly.
async fn preload(pool: &PgPool, aggregate: &str, events: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'ledger', $1, n, 'Recorded', '1.0', $2::jsonb, '{}'::jsonb FROM generate_series(1, $3) AS n",
    )
    .bind(aggregate)
    .bind(PAYLOAD)
    .bind(events)
    .execute(pool)
    .await
    .unwrap();
}

/// Waits until the bench projection has applied every event in the log.
async fn wait_for_projector(store: &EventStore, pool: &PgPool) {
    let total = store.count_events().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT events_applied FROM projection_checkpoints WHERE name = 'bench_ledger_totals'")
                .fetch_optional(pool)
                .await
                .unwrap();
        if applied.unwrap_or(0) as u64 >= total {
            return;
        }
        assert!(Instant::now() < deadline, "the projector fell behind for 5 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let Some(db) = TestDb::postgres("benchmark").await else {
        eprintln!("set GATEHOUSE_TEST_DATABASE_URL to a PostgreSQL server to run the benchmark");
        return;
    };
    let quick = std::env::args().any(|arg| arg == "--quick");
    let scale = if quick { 1 } else { 4 };
    let store = db.store().await;
    let Backend::Postgres(pool) = store.backend().clone() else { unreachable!() };
    sqlx::query("CREATE TABLE bench_ledger_totals (aggregate_id text PRIMARY KEY, events bigint NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();

    let registry = prometheus::Registry::new();
    let config = ProjectorConfig { poll_interval: Duration::from_millis(200), ..ProjectorConfig::default() };
    let projector = Projector::new(store.clone(), vec![Arc::new(LedgerTotals)], config, &registry).unwrap();
    let shutdown = CancellationToken::new();
    let projector_task = tokio::spawn(projector.run(shutdown.clone()));

    println!("| scenario | ops/s | p50 ms | p99 ms | vs raw floor |");
    println!("|---|---:|---:|---:|---:|");
    let repository = Arc::new(AggregateRepository::<Ledger>::new(store.clone(), ()));
    for clients in [1usize, 16] {
        let per_client = if clients == 1 { 250 * scale } else { 60 * scale };
        let raw = {
            let pool = pool.clone();
            measure(clients, per_client, move |client, n| {
                let pool = pool.clone();
                async move { raw_insert(&pool, &format!("raw-{clients}-{client}"), n as i64 + 1).await }
            })
            .await
        };
        raw.row(&format!("raw INSERT, {clients} client(s)"), None);
        let raw_transaction = {
            let pool = pool.clone();
            measure(clients, per_client, move |client, n| {
                let pool = pool.clone();
                async move { raw_insert_in_transaction(&pool, &format!("rawtx-{clients}-{client}"), n as i64 + 1).await }
            })
            .await
        };
        raw_transaction.row(&format!("raw BEGIN + INSERT + COMMIT, {clients} client(s)"), Some(&raw));
        for history in [10i64, 5_000] {
            for client in 0..clients {
                let aggregate = format!("h{history}-c{clients}-{client}");
                preload(&pool, &aggregate, history).await;
            }
            // Measure the command path, not the projector digesting the preloaded history.
            wait_for_projector(&store, &pool).await;
            for client in 0..clients {
                let aggregate = format!("h{history}-c{clients}-{client}");
                // Warm the cache once: the first load after a restart reads the whole history.
                repository
                    .execute(&aggregate, 1, &EventMetadata::for_request("bench@example.com", "warm"))
                    .await
                    .unwrap();
            }
            let command = {
                let repository = repository.clone();
                measure(clients, per_client, move |client, n| {
                    let repository = repository.clone();
                    async move {
                        let metadata = EventMetadata::for_request("bench@example.com", "bench");
                        let aggregate = format!("h{history}-c{clients}-{client}");
                        let committed = repository.execute(&aggregate, n as u64, &metadata).await.unwrap();
                        ACKNOWLEDGED.lock().unwrap().insert((aggregate, committed.version), Instant::now());
                    }
                })
                .await
            };
            command.row(&format!("command path, {history} events/aggregate, {clients} client(s)"), Some(&raw));
        }
    }
    let (lag_p50, lag_p99, lag_samples) = {
        let mut samples = LAG.lock().unwrap().clone();
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1] * 1000.0;
        (at(0.5), at(0.99), samples.len())
    };

    // From the client's acknowledgement to the projection applying the event (0 when it was applied first).
    wait_for_projector(&store, &pool).await;
    let (ack_p50, ack_p99) = {
        let acknowledged = ACKNOWLEDGED.lock().unwrap();
        let applied = APPLIED.lock().unwrap();
        let mut samples: Vec<f64> = acknowledged
            .iter()
            .filter_map(|(key, acked)| {
                applied.get(key).map(|at| at.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
            })
            .collect();
        samples.sort_by(f64::total_cmp);
        let at = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
        (at(0.5), at(0.99))
    };

    // Cold load: the one-time cost of a 5,000-event history after a restart.
    repository.clear_cache();
    let started = Instant::now();
    repository.load("h5000-c1-0").await.unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    repository.load("h5000-c1-0").await.unwrap();
    let warm = started.elapsed();

    wait_for_projector(&store, &pool).await;
    shutdown.cancel();
    projector_task.await.unwrap();

    // Reading the whole log: the global reader against a raw ordered SELECT of the same rows.
    let started = Instant::now();
    // The same columns the reader returns, decoded the same way, in one ordered query.
    type RawRow = (
        i64,
        String,
        String,
        String,
        i64,
        String,
        String,
        serde_json::Value,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
    );
    let raw_rows: Vec<RawRow> = sqlx::query_as(
        "SELECT position, txid::text, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at
           FROM events ORDER BY position",
    )
    .fetch_all(&pool)
    .await
            .unwrap();
    let raw_read = started.elapsed();
    let started = Instant::now();
    let mut cursor = Cursor::START;
    let mut read = 0usize;
    loop {
        let batch = store.read_global(cursor, 1_000).await.unwrap();
        let Some(last) = batch.last() else { break };
        cursor = last.cursor;
        read += batch.len();
    }
    let global_read = started.elapsed();
    assert_eq!(read, raw_rows.len());

    let started = Instant::now();
    let report = projections::rebuild(&store, &LedgerTotals, &|_, _| {}).await.unwrap();
    let rebuild = started.elapsed();
    assert_eq!(report.events as usize, read, "the rebuild replayed another number of events than the log holds");

    let per_second = |count: usize, elapsed: Duration| count as f64 / elapsed.as_secs_f64();
    println!();
    println!("| log scenario | events | events/s | vs raw ordered SELECT |");
    println!("|---|---:|---:|---:|");
    let raw_rate = per_second(read, raw_read);
    println!("| raw `SELECT … ORDER BY position` | {read} | {raw_rate:.0} | 1.00× |");
    println!(
        "| global log reader (batches of 1,000) | {read} | {:.0} | {:.2}× |",
        per_second(read, global_read),
        per_second(read, global_read) / raw_rate
    );
    println!(
        "| projection rebuild (replay + swap) | {read} | {:.0} | {:.2}× |",
        per_second(read, rebuild),
        per_second(read, rebuild) / raw_rate
    );
    println!();
    println!(
        "- projection lag under the command load above (insert to apply, {lag_samples} events): p50 {lag_p50:.2} ms, p99 {lag_p99:.2} ms"
    );
    println!("- projection lag from the client's acknowledgement to apply: p50 {ack_p50:.2} ms, p99 {ack_p99:.2} ms");
    println!(
        "- aggregate load, 5,000-event history: cold {:.2} ms, warm {:.3} ms",
        cold.as_secs_f64() * 1000.0,
        warm.as_secs_f64() * 1000.0
    );
    store.close().await;
}
