//! The global log: total order, nothing skipped, nothing twice, on both backends.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use domain::roster::{Role, Roster, RosterCommand};
use domain::Email;
use store::{AggregateRepository, Backend, Cursor, EventMetadata, EventStore, RecordedEvent};
use testkit::TestDb;

fn invite(n: usize) -> RosterCommand {
    RosterCommand::Invite {
        email: Email::parse(&format!("user{n}@example.com")).unwrap(),
        role: Role::Member,
        invited_by: Email::parse("root@example.com").unwrap(),
    }
}

fn meta() -> EventMetadata {
    EventMetadata::for_request("root@example.com", "test-request")
}

/// Reads everything readable after `cursor`.
async fn drain(store: &EventStore, mut cursor: Cursor) -> (Vec<RecordedEvent>, Cursor) {
    let mut seen = Vec::new();
    loop {
        let batch = store.read_global(cursor, 97).await.unwrap();
        let Some(last) = batch.last() else {
            return (seen, cursor);
        };
        cursor = last.cursor;
        seen.extend(batch);
    }
}

/// Reads everything committed after `cursor`, waiting while transactions elsewhere on the cluster (other tests
/// run in parallel) hold committed events back.
async fn drain_committed(store: &EventStore, cursor: Cursor) -> (Vec<RecordedEvent>, Cursor) {
    let (mut seen, mut cursor) = drain(store, cursor).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.has_events_after(cursor).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "committed events stayed unreadable");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (more, next) = drain(store, cursor).await;
        seen.extend(more);
        cursor = next;
    }
    (seen, cursor)
}

fn key(event: &RecordedEvent) -> (String, u64) {
    (event.aggregate_id.clone(), event.sequence)
}

/// Starts a write transaction that appends one event to aggregate `held` and stays open until the returned
/// sender fires (then commits).
async fn hold_open_writer(store: &EventStore) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (started, started_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = match store.backend().clone() {
        Backend::Postgres(pool) => tokio::spawn(async move {
            let mut transaction = pool.begin().await.unwrap();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('roster', 'held', 1, 'MemberActivated', '1.0', '{\"MemberActivated\":{\"email\":\"h@example.com\"}}', '{}')",
            )
            .execute(&mut *transaction)
            .await
            .unwrap();
            started.send(()).unwrap();
            released.await.unwrap();
            transaction.commit().await.unwrap();
        }),
        Backend::Sqlite(pool) => tokio::spawn(async move {
            let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('roster', 'held', 1, 'MemberActivated', '1.0', '{\"MemberActivated\":{\"email\":\"h@example.com\"}}', '{}')",
            )
            .execute(&mut *transaction)
            .await
            .unwrap();
            started.send(()).unwrap();
            released.await.unwrap();
            transaction.commit().await.unwrap();
        }),
    };
    started_rx.await.unwrap();
    (release, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_waits_for_a_late_commit_and_then_delivers_everything_once() {
    for db in TestDb::all("late commit").await {
        let store = db.store().await;
        let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
        for n in 0..3 {
            roster.execute("before", invite(n), &meta()).await.unwrap();
        }
        let (before, cursor) = drain_committed(&store, Cursor::START).await;
        assert_eq!(before.len(), 3, "{}", db.backend());

        let (release, held) = hold_open_writer(&store).await;
        // Later writers start after the held one. On PostgreSQL they commit at once; SQLite admits one writer at a
        // time, so they queue behind the held transaction.
        let later = {
            let roster = roster.clone();
            tokio::spawn(async move {
                for n in 0..5 {
                    roster.execute("after", invite(n), &meta()).await.unwrap();
                }
            })
        };
        if db.backend() == "postgres" {
            later_committed(&store, 5).await;
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (while_held, cursor_while_held) = drain(&store, cursor).await;
        assert!(while_held.is_empty(), "{}: the reader passed an uncommitted event: {while_held:?}", db.backend());
        assert_eq!(cursor_while_held, cursor);

        release.send(()).unwrap();
        held.await.unwrap();
        later.await.unwrap();
        let (after, _) = drain_committed(&store, cursor).await;
        let keys: Vec<_> = after.iter().map(key).collect();
        assert_eq!(keys.len(), 6, "{}: {keys:?}", db.backend());
        assert_eq!(keys[0], ("held".to_string(), 1), "{}: the held event comes first", db.backend());
        let unique: HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), 6, "{}: an event was delivered twice", db.backend());
        store.close().await;
    }
}

/// Waits until `count` events of aggregate `after` are committed (visible to a plain query).
async fn later_committed(store: &EventStore, count: i64) {
    let Backend::Postgres(pool) = store.backend() else {
        return;
    };
    for _ in 0..500 {
        let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = 'after'")
            .fetch_one(pool)
            .await
            .unwrap();
        if committed == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("later writers never committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_a_tailing_reader_agree_on_one_stable_order() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 1_250;
    for db in TestDb::all("concurrent writers").await {
        let store = db.store().await;
        let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let roster = roster.clone();
                tokio::spawn(async move {
                    for n in 0..PER_WRITER {
                        roster.execute(&format!("writer-{writer}"), invite(n), &meta()).await.unwrap();
                    }
                })
            })
            .collect();
        let tail = {
            let store = store.clone();
            tokio::spawn(async move {
                let mut cursor = Cursor::START;
                let mut seen = Vec::new();
                while seen.len() < WRITERS * PER_WRITER {
                    let batch = store.read_global(cursor, 500).await.unwrap();
                    match batch.last() {
                        Some(last) => cursor = last.cursor,
                        None => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                    seen.extend(batch.iter().map(|event| (event.cursor, key(event))));
                }
                seen
            })
        };
        for writer in writers {
            writer.await.unwrap();
        }
        let tailed = tokio::time::timeout(Duration::from_secs(120), tail).await.unwrap().unwrap();

        let keys: HashSet<_> = tailed.iter().map(|(_, key)| key.clone()).collect();
        assert_eq!(tailed.len(), WRITERS * PER_WRITER, "{}", db.backend());
        assert_eq!(keys.len(), WRITERS * PER_WRITER, "{}: duplicates", db.backend());
        for writer in 0..WRITERS {
            for sequence in 1..=PER_WRITER as u64 {
                assert!(keys.contains(&(format!("writer-{writer}"), sequence)), "{}: missing event", db.backend());
            }
        }
        assert!(tailed.windows(2).all(|pair| pair[0].0 < pair[1].0), "{}: cursors must increase", db.backend());
        // Per aggregate, the log keeps sequence order.
        let mut last_sequence = std::collections::HashMap::new();
        for (_, (aggregate, sequence)) in &tailed {
            let previous = last_sequence.insert(aggregate.clone(), *sequence).unwrap_or(0);
            assert_eq!(*sequence, previous + 1, "{}", db.backend());
        }
        // Stable: reading again from the start gives the same order.
        let (again, _) = drain_committed(&store, Cursor::START).await;
        let again: Vec<_> = again.iter().map(|event| (event.cursor, key(event))).collect();
        assert_eq!(again, tailed, "{}: a second read disagrees", db.backend());
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_one_aggregate_get_a_typed_conflict_and_lose_nothing() {
    for db in TestDb::all("racing writers").await {
        let store = db.store().await;
        // Separate repositories: separate caches, like two Gatehouse processes.
        let repositories: Vec<_> =
            (0..8).map(|_| Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()))).collect();
        let attempts: Vec<_> = repositories
            .iter()
            .enumerate()
            .map(|(n, repository)| {
                let repository = repository.clone();
                tokio::spawn(async move { repository.execute("org", invite(n), &meta()).await })
            })
            .collect();
        let mut won = 0;
        let mut conflicts = 0;
        for attempt in attempts {
            match attempt.await.unwrap() {
                Ok(committed) => {
                    won += 1;
                    assert_eq!(committed.appended, 1);
                }
                Err(store::CommandError::Conflict) => conflicts += 1,
                Err(other) => panic!("{}: unexpected {other:?}", db.backend()),
            }
        }
        assert!(won >= 1, "{}", db.backend());
        assert_eq!(won + conflicts, 8, "{}", db.backend());
        let (roster, version) = repositories[0].load("org").await.unwrap();
        assert_eq!(version, won as u64, "{}: every acknowledged command is in the log", db.backend());
        assert_eq!(
            (0..8).filter(|n| roster.member(&Email::parse(&format!("user{n}@example.com")).unwrap()).is_some()).count(),
            won
        );
        store.close().await;
    }
}

#[tokio::test]
async fn a_stale_cache_catches_up_from_the_log_before_deciding() {
    for db in TestDb::all("stale cache").await {
        let store = db.store().await;
        let first = AggregateRepository::<Roster>::new(store.clone(), ());
        let second = AggregateRepository::<Roster>::new(store.clone(), ());
        first.execute("org", invite(1), &meta()).await.unwrap();
        assert_eq!(second.load("org").await.unwrap().1, 1);
        first.execute("org", invite(2), &meta()).await.unwrap();
        // `second` cached version 1; inviting user2 again must see the newer event and be refused.
        let refused = second.execute("org", invite(2), &meta()).await;
        assert!(
            matches!(refused, Err(store::CommandError::Rejected(domain::roster::RosterError::AlreadyMember(_)))),
            "{}",
            db.backend()
        );
        // An If-Match on an old version is refused without running the command.
        let stale = second.execute_expecting("org", invite(3), &meta(), Some(1)).await;
        assert!(
            matches!(stale, Err(store::CommandError::VersionMismatch { expected: 1, actual: 2 })),
            "{}",
            db.backend()
        );
        store.close().await;
    }
}

#[tokio::test]
async fn every_event_carries_its_metadata_and_the_log_refuses_edits() {
    for db in TestDb::all("metadata").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        let metadata = EventMetadata { causation_id: "cause-1".into(), correlation_id: "corr-1".into(), ..meta() };
        roster.execute("org", invite(1), &metadata).await.unwrap();
        let (events, _) = drain_committed(&store, Cursor::START).await;
        let stored = &events[0].metadata;
        assert_eq!(stored["actor"], "root@example.com");
        assert_eq!(stored["request_id"], "test-request");
        assert_eq!(stored["correlation_id"], "corr-1");
        assert_eq!(stored["causation_id"], "cause-1");
        assert!(stored["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(events[0].event_type, "MemberInvited");

        let edited = match store.backend() {
            Backend::Postgres(pool) => sqlx::query("UPDATE events SET payload = '{}'").execute(pool).await.map(drop),
            Backend::Sqlite(pool) => sqlx::query("UPDATE events SET payload = '{}'").execute(pool).await.map(drop),
        };
        assert!(edited.is_err(), "{}: an event was edited", db.backend());
        let deleted = match store.backend() {
            Backend::Postgres(pool) => sqlx::query("DELETE FROM events").execute(pool).await.map(drop),
            Backend::Sqlite(pool) => sqlx::query("DELETE FROM events").execute(pool).await.map(drop),
        };
        assert!(deleted.is_err(), "{}: an event was deleted", db.backend());
        if let Backend::Postgres(pool) = store.backend() {
            assert!(sqlx::query("TRUNCATE events").execute(pool).await.is_err(), "the log was truncated");
        }
        store.close().await;
    }
}

#[tokio::test]
async fn a_refusal_decided_on_cached_state_is_confirmed_against_the_log() {
    for db in TestDb::all("cached refusal").await {
        let store = db.store().await;
        let first = AggregateRepository::<Roster>::new(store.clone(), ());
        let second = AggregateRepository::<Roster>::new(store.clone(), ());
        first.execute("org", invite(1), &meta()).await.unwrap();
        second.load("org").await.unwrap();
        // `second` has cached a roster without user5; `first` invites them.
        first.execute("org", invite(5), &meta()).await.unwrap();
        // On its cached state `second` would refuse user5's sign-in as unknown; it must see the invitation.
        let signed_in = second
            .execute("org", RosterCommand::SignIn { email: Email::parse("user5@example.com").unwrap() }, &meta())
            .await
            .unwrap();
        assert_eq!((signed_in.appended, signed_in.version), (1, 3), "{}", db.backend());
        store.close().await;
    }
}

/// Transaction ids are ordered as numbers, also where their decimal digits grow (99 before 100).
#[tokio::test]
async fn the_global_order_is_numeric_across_digit_boundaries() {
    let Some(db) = TestDb::postgres("numeric transaction order").await else { return };
    let store = db.store().await;
    let Backend::Postgres(pool) = store.backend() else { unreachable!() };
    for (txid, aggregate) in [("100", "b"), ("99", "a"), ("1000", "c"), ("999", "d")] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, txid)
             VALUES ('roster', $1, 1, 'MemberActivated', '1.0', '{}', '{}', $2::text::xid8)",
        )
        .bind(aggregate)
        .bind(txid)
        .execute(pool)
        .await
        .unwrap();
    }
    for batch in [1, 2, 100] {
        let mut cursor = Cursor::START;
        let mut order = Vec::new();
        loop {
            let events = store.read_global(cursor, batch).await.unwrap();
            let Some(last) = events.last() else { break };
            cursor = last.cursor;
            order.extend(events.into_iter().map(|event| event.aggregate_id));
        }
        assert_eq!(order, ["a", "b", "d", "c"], "batch size {batch}");
    }
    store.close().await;
}

#[tokio::test]
async fn streaming_the_log_gives_the_same_events_in_the_same_order_as_paging() {
    for db in TestDb::all("stream").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        for n in 0..300 {
            roster.execute(&format!("org-{}", n % 7), invite(n), &meta()).await.unwrap();
        }
        let (paged, _) = drain_committed(&store, Cursor::START).await;
        assert_eq!(streamed(&store, Cursor::START).await, paged, "{}", db.backend());
        // From a cursor in the middle, the stream continues after it.
        assert_eq!(streamed(&store, paged[149].cursor).await, paged[150..].to_vec(), "{}", db.backend());
        store.close().await;
    }
}

async fn streamed(store: &EventStore, after: Cursor) -> Vec<RecordedEvent> {
    let mut stream = store.stream_global(after, 16);
    let mut events = Vec::new();
    while let Some(event) = stream.recv().await {
        events.push(event.unwrap());
    }
    events
}

/// A forgotten aggregate leaves the cache and is read back from the store, whole, on its next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_aggregate_is_read_back_from_the_store() {
    for db in TestDb::all("forget").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        for n in 0..3 {
            roster.execute("org", invite(n), &meta()).await.unwrap();
        }
        let (before, version) = roster.peek("org").unwrap();
        roster.forget("org");
        assert!(roster.peek("org").is_none(), "{}", db.backend());
        let (after, reloaded) = roster.load("org").await.unwrap();
        assert_eq!((after, reloaded), (before, version), "{}", db.backend());
        roster.forget("never-cached");
        roster.execute("org", invite(3), &meta()).await.unwrap();
        assert_eq!(roster.peek("org").unwrap().1, version + 1, "{}", db.backend());
        store.close().await;
    }
}
