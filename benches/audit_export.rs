//! Issue #4's server-side benchmark: how fast the log is chained and exported, beside a raw read of the same
//! events in the same run.
//!
//! Run: `cargo bench --bench audit_export` (embedded SQLite), plus PostgreSQL when `GATEHOUSE_TEST_DATABASE_URL`
//! is set (its own database, dropped afterwards). The verifier's own benchmark is `cargo bench -p audit`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use projections::audit_chain::{export, export_start, AuditChainProjection};
use projections::{Projection, Projector, ProjectorConfig};
use serde::{Deserialize, Serialize};
use store::{AggregateRepository, Cursor, EventMetadata, EventStore};
use testkit::TestDb;

const EVENTS: usize = 20_000;
const WRITERS: usize = 16;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Note {
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum NoteEvent {
    Written { text: String, n: u64, tags: Vec<String> },
}

impl DomainEvent for NoteEvent {
    fn event_type(&self) -> String {
        "Written".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Note {
    const TYPE: &'static str = "note";
    type Command = u64;
    type Event = NoteEvent;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, n: u64, _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        let text = "a publish request's worth of text: workspace, blueprint, subdomain, commit and a message".into();
        let tags = vec!["web".into(), "review".into(), format!("n{n}")];
        sink.write(NoteEvent::Written { text, n, tags }, self).await;
        Ok(())
    }

    fn apply(&mut self, _: NoteEvent) {
        self.count += 1;
    }
}

async fn seed(store: &EventStore) {
    let repository = Arc::new(AggregateRepository::<Note>::new(store.clone(), ()));
    let writers = (0..WRITERS).map(|writer| {
        let repository = repository.clone();
        tokio::spawn(async move {
            let metadata = EventMetadata::for_request("bench@example.com", format!("bench-{writer}"));
            for n in 0..EVENTS / WRITERS {
                repository.execute(&format!("note-{writer}-{}", n % 50), n as u64, &metadata).await.unwrap();
            }
        })
    });
    futures::future::join_all(writers).await;
}

async fn run(db: &TestDb) {
    let store = db.store().await;
    seed(&store).await;
    let total = store.count_events().await.unwrap();

    // Raw floor: one ordered read of every event, decoded.
    let started = Instant::now();
    let mut events = store.stream_global(Cursor::START, 1_024);
    let mut read = 0u64;
    while let Some(event) = events.recv().await {
        event.unwrap();
        read += 1;
    }
    let raw = started.elapsed();

    // Chaining from zero, through the projector (one transaction per batch, as in production).
    let chainer: Vec<Arc<dyn Projection>> = vec![Arc::new(AuditChainProjection)];
    let registry = prometheus::Registry::new();
    let started = Instant::now();
    Projector::new(store.clone(), chainer, ProjectorConfig::default(), &registry).unwrap().catch_up().await.unwrap();
    let chaining = started.elapsed();

    // Export of everything, into memory.
    let key = audit::AuditKey::generate().unwrap();
    let start = export_start(&store, None).await.unwrap();
    let (lines, mut receiver) = tokio::sync::mpsc::channel(1_024);
    let started = Instant::now();
    let exporter = {
        let store = store.clone();
        tokio::spawn(async move { export(&store, start, &key, lines).await })
    };
    let mut bytes = 0usize;
    while let Some(line) = receiver.recv().await {
        bytes += line.unwrap().len();
    }
    let exported = exporter.await.unwrap();
    let exporting = started.elapsed();
    assert_eq!(exported, total);
    assert_eq!(read, total);

    let rate = |count: u64, elapsed: std::time::Duration| count as f64 / elapsed.as_secs_f64();
    println!(
        "| {} | {total} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2}× |",
        db.backend(),
        rate(read, raw),
        rate(total, chaining),
        rate(exported, exporting),
        bytes as f64 / 1e6 / exporting.as_secs_f64(),
        raw.as_secs_f64() / exporting.as_secs_f64()
    );
    store.close().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("| backend | events | raw read (events/s) | chaining (events/s) | export (events/s) | export (MB/s) | export / raw |");
        println!("| --- | --- | --- | --- | --- | --- | --- |");
        for db in TestDb::all("audit export bench").await {
            run(&db).await;
        }
    });
}
