//! Store outages: every command gets its answer within the acquire timeout, however many wait on one aggregate.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::roster::{Role, Roster, RosterCommand};
use domain::Email;
use store::{AggregateRepository, CommandError, EventMetadata, EventStore, StoreConfig};
use testkit::proxy::{Mode, TcpProxy};
use testkit::TestDb;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// What an answer may take beyond the acquire timeout.
const MARGIN: Duration = Duration::from_millis(1500);
const CLIENTS: usize = 8;

fn invite(name: &str) -> RosterCommand {
    RosterCommand::Invite {
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        role: Role::Member,
        invited_by: Email::parse("root@example.com").unwrap(),
    }
}

fn meta() -> EventMetadata {
    EventMetadata::for_request("root@example.com", "test-request")
}

fn config(db: &TestDb, url: &str) -> StoreConfig {
    StoreConfig { database_url: Some(url.to_string()), acquire_timeout: ACQUIRE_TIMEOUT, ..db.config() }
}

/// Runs `CLIENTS` invitations on the roster at once; each one's outcome and how long it took.
async fn concurrent_invites(
    roster: &Arc<AggregateRepository<Roster>>,
    prefix: &str,
) -> Vec<(Result<store::Committed, CommandError<domain::roster::RosterError>>, Duration)> {
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let roster = roster.clone();
            let command = invite(&format!("{prefix}{n}"));
            tokio::spawn(async move {
                let outcome = roster.execute_retrying("org", command, &meta(), 5).await;
                (outcome, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for client in clients {
        outcomes.push(client.await.unwrap());
    }
    outcomes
}

/// Every outcome is "store unavailable", each within the acquire timeout plus the margin.
fn assert_all_unavailable_in_time(
    what: &str,
    outcomes: &[(Result<store::Committed, CommandError<domain::roster::RosterError>>, Duration)],
) {
    let times: Vec<_> = outcomes.iter().map(|(_, elapsed)| format!("{:.2}s", elapsed.as_secs_f64())).collect();
    eprintln!("{what}: answers after {}", times.join(", "));
    for (outcome, elapsed) in outcomes {
        assert!(
            matches!(outcome, Err(CommandError::Store(error)) if error.is_unavailable()),
            "{what}: expected unavailable, got {outcome:?}"
        );
        assert!(*elapsed <= ACQUIRE_TIMEOUT + MARGIN, "{what}: an answer took {elapsed:?} (all: {times:?})");
    }
}

/// Polls `command` until it succeeds or `limit` passes.
async fn succeeds_again(roster: &AggregateRepository<Roster>, name: &str, limit: Duration) -> store::Committed {
    let deadline = Instant::now() + limit;
    loop {
        match roster.execute_retrying("org", invite(name), &meta(), 5).await {
            Ok(committed) => return committed,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the store never recovered: {error:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_queued_on_one_aggregate_during_a_postgres_black_hole_each_fail_within_the_acquire_timeout() {
    let Some(db) = TestDb::postgres("black hole").await else { return };
    db.store().await.close().await;
    let (proxy, url) = TcpProxy::for_postgres(&db.url).await;
    let store = EventStore::open(&config(&db, &url)).await.unwrap();
    let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
    roster.execute("org", invite("before"), &meta()).await.unwrap();

    // Connections hang; pooled ones stop answering.
    proxy.set(Mode::BlackHole);
    let outcomes = concurrent_invites(&roster, "hole").await;
    assert_all_unavailable_in_time("black hole", &outcomes);
    // A read, and the health check, are bounded too.
    let started = Instant::now();
    roster.clear_cache();
    assert!(roster.load("org").await.unwrap_err().is_unavailable());
    assert!(store.ping().await.unwrap_err().is_unavailable());
    assert!(started.elapsed() <= 2 * (ACQUIRE_TIMEOUT + MARGIN), "{:?}", started.elapsed());

    // The partition heals: the frozen connections resume and commands succeed again, deciding on the store's state.
    proxy.set(Mode::Pass);
    let after = succeeds_again(&roster, "after", Duration::from_secs(30)).await;
    let (state, version) = roster.load("org").await.unwrap();
    assert_eq!(version, after.version);
    for n in 0..CLIENTS {
        assert!(state.member(&Email::parse(&format!("hole{n}@example.com")).unwrap()).is_none());
    }
    // No refused command was half-done: each can now be made.
    for (outcome, _) in concurrent_invites(&roster, "hole").await {
        assert_eq!(outcome.unwrap().appended, 1);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_queued_on_one_aggregate_while_postgres_refuses_connections_fail_fast_and_recover() {
    let Some(db) = TestDb::postgres("refused").await else { return };
    db.store().await.close().await;
    let (proxy, url) = TcpProxy::for_postgres(&db.url).await;
    let store = EventStore::open(&config(&db, &url)).await.unwrap();
    let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
    roster.execute("org", invite("before"), &meta()).await.unwrap();

    proxy.set(Mode::Refuse);
    let outcomes = concurrent_invites(&roster, "cut").await;
    assert_all_unavailable_in_time("refused", &outcomes);

    proxy.set(Mode::Pass);
    succeeds_again(&roster, "after", Duration::from_secs(30)).await;
    for (outcome, _) in concurrent_invites(&roster, "cut").await {
        assert_eq!(outcome.unwrap().appended, 1);
    }
    store.close().await;
}

/// SQLite has no network to lose; its outage is a database file locked by someone else (another process holding a
/// write transaction, a backup tool, a stuck migration): every write waits for SQLite's busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_queued_on_one_aggregate_while_the_sqlite_file_is_locked_each_fail_within_the_acquire_timeout() {
    use sqlx::{Connection, Executor};
    let db = TestDb::sqlite();
    db.store().await.close().await;
    let store = EventStore::open(&config(&db, &db.url)).await.unwrap();
    let roster = Arc::new(AggregateRepository::<Roster>::new(store.clone(), ()));
    roster.execute("org", invite("before"), &meta()).await.unwrap();

    let mut locker = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let outcomes = concurrent_invites(&roster, "locked").await;
    assert_all_unavailable_in_time("locked", &outcomes);
    locker.execute("ROLLBACK").await.unwrap();
    locker.close().await.unwrap();

    succeeds_again(&roster, "after", Duration::from_secs(30)).await;
    for (outcome, _) in concurrent_invites(&roster, "locked").await {
        assert_eq!(outcome.unwrap().appended, 1);
    }
    store.close().await;
}
