//! The projector on both backends: exactly once, across restarts and competing processes; poison events stop it
//! visibly; rebuilds swap fresh tables in.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use domain::roster::{Role, Roster, RosterCommand};
use domain::Email;
use projections::{MembersQuery, ProjectionState, Projector, ProjectorConfig};
use store::{AggregateRepository, Backend, EventMetadata, EventStore};
use testkit::TestDb;
use tokio_util::sync::CancellationToken;

fn email(n: usize) -> Email {
    Email::parse(&format!("user{n}@example.com")).unwrap()
}

fn admin() -> Email {
    Email::parse("root@example.com").unwrap()
}

fn meta() -> EventMetadata {
    EventMetadata::for_request("root@example.com", "projector-test")
}

/// Appends a mix of every roster event: invites, activations, role changes and removals.
async fn write_history(roster: &AggregateRepository<Roster>, from: usize, to: usize) {
    if from == 0 {
        roster.execute("org", RosterCommand::Bootstrap { email: admin() }, &meta()).await.unwrap();
    }
    for n in from..to {
        roster
            .execute("org", RosterCommand::Invite { email: email(n), role: Role::Member, invited_by: admin() }, &meta())
            .await
            .unwrap();
        if n % 2 == 0 {
            roster.execute("org", RosterCommand::SignIn { email: email(n) }, &meta()).await.unwrap();
        }
        if n % 3 == 0 {
            let command = RosterCommand::ChangeRole {
                email: email(n),
                role: Role::Auditor,
                changed_by: admin(),
                if_version: None,
            };
            roster.execute("org", command, &meta()).await.unwrap();
        }
        if n % 5 == 0 {
            roster
                .execute(
                    "org",
                    RosterCommand::Remove { email: email(n), removed_by: admin(), if_version: None },
                    &meta(),
                )
                .await
                .unwrap();
        }
    }
}

/// (email, role, status) of every member, from the aggregate itself.
async fn expected(roster: &AggregateRepository<Roster>, upto: usize) -> BTreeSet<(String, String, String)> {
    let (state, _) = roster.load("org").await.unwrap();
    std::iter::once(admin())
        .chain((0..upto).map(email))
        .filter_map(|address| {
            state.member(&address).map(|member| {
                let status = serde_json::to_value(member.status).unwrap().as_str().unwrap().to_string();
                (address.to_string(), member.role.as_str().to_string(), status)
            })
        })
        .collect()
}

async fn projected(store: &EventStore) -> BTreeSet<(String, String, String)> {
    let query = MembersQuery::new(store.read_models().clone());
    query.list(None, 10_000).await.unwrap().into_iter().map(|row| (row.email, row.role, row.status)).collect()
}

fn projector(store: &EventStore) -> Projector {
    let config =
        ProjectorConfig { batch_size: 7, poll_interval: Duration::from_millis(20), ..ProjectorConfig::default() };
    Projector::new(store.clone(), projections::all(), config, &prometheus::Registry::new()).unwrap()
}

async fn events_applied(store: &EventStore) -> i64 {
    projections::checkpoints(store)
        .await
        .unwrap()
        .iter()
        .find(|checkpoint| checkpoint.name == "members")
        .unwrap()
        .events_applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_event_takes_effect_exactly_once_across_restarts() {
    for db in TestDb::all("exactly once across restarts").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 0, 40).await;
        projector(&store).catch_up().await.unwrap();
        assert_eq!(projected(&store).await, expected(&roster, 40).await, "{}", db.backend());

        // A new process (new projector, new store handle) continues from the checkpoint.
        store.close().await;
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 40, 70).await;
        projector(&store).catch_up().await.unwrap();
        assert_eq!(projected(&store).await, expected(&roster, 70).await, "{}", db.backend());
        assert_eq!(events_applied(&store).await as u64, store.count_events().await.unwrap(), "{}", db.backend());
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_projectors_never_apply_an_event_twice() {
    for db in TestDb::all("competing projectors").await {
        let store = db.store().await;
        let shutdown = CancellationToken::new();
        // Two projectors on separate store handles, like two Gatehouse processes on one database.
        let other = db.store().await;
        let first = tokio::spawn(projector(&store).run(shutdown.clone()));
        let second = tokio::spawn(projector(&other).run(shutdown.clone()));
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 0, 60).await;
        let total = store.count_events().await.unwrap();
        for _ in 0..500 {
            if events_applied(&store).await as u64 >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(
            events_applied(&store).await as u64,
            total,
            "{}: an event was applied twice or not at all",
            db.backend()
        );
        assert_eq!(projected(&store).await, expected(&roster, 60).await, "{}", db.backend());
        other.close().await;
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_stops_its_projection_with_a_clear_error_and_a_metric() {
    for db in TestDb::all("poison event").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 0, 3).await;
        const POISON: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('roster', 'poison', 1, 'MemberInvited', '1.0', '{\"MemberInvited\":{\"email\":\"not an email\"}}', '{}')";
        match store.backend() {
            Backend::Postgres(pool) => drop(sqlx::query(POISON).execute(pool).await.unwrap()),
            Backend::Sqlite(pool) => drop(sqlx::query(POISON).execute(pool).await.unwrap()),
        }
        let before_poison = store.count_events().await.unwrap() - 1;
        let registry = prometheus::Registry::new();
        // Only the projection the poison concerns: the others would go on running.
        let only_members: Vec<std::sync::Arc<dyn projections::Projection>> =
            vec![std::sync::Arc::new(projections::MembersProjection)];
        let projector = Projector::new(store.clone(), only_members, ProjectorConfig::default(), &registry).unwrap();
        let status = projector.status();
        let task = tokio::spawn(projector.run(CancellationToken::new()));
        // The failed projection's task ends by itself.
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap();
        let snapshot = status.snapshot();
        let ProjectionState::Failed { error, .. } = &snapshot["members"].state else {
            panic!("{}: expected failure, got {snapshot:?}", db.backend())
        };
        assert!(error.contains("MemberInvited"), "{}: {error}", db.backend());
        let failed =
            registry.gather().into_iter().find(|family| family.get_name() == "gatehouse_projection_failed").unwrap();
        assert_eq!(failed.get_metric()[0].get_gauge().get_value(), 1.0);
        let checkpoint =
            projections::checkpoints(&store).await.unwrap().into_iter().find(|c| c.name == "members").unwrap();
        assert!(checkpoint.last_error.unwrap().contains("MemberInvited"));
        assert!(checkpoint.failed_cursor.is_some());
        assert_eq!(
            checkpoint.events_applied as u64,
            before_poison,
            "{}: events before the poison are applied",
            db.backend()
        );
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_replays_into_fresh_tables_and_swaps_them_in_while_readers_read() {
    for db in TestDb::all("rebuild").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 0, 50).await;
        projector(&store).catch_up().await.unwrap();
        // Damage the read model, as a bug would.
        sqlx::query("DELETE FROM members WHERE role = 'auditor'").execute(store.read_models()).await.unwrap();
        assert_ne!(projected(&store).await, expected(&roster, 50).await);

        let reading = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reader = {
            let store = store.clone();
            let reading = reading.clone();
            tokio::spawn(async move {
                let mut reads = 0u32;
                while reading.load(std::sync::atomic::Ordering::Relaxed) {
                    MembersQuery::new(store.read_models().clone()).list(None, 1000).await.unwrap();
                    reads += 1;
                }
                reads
            })
        };
        let progress = std::sync::Mutex::new(Vec::new());
        for _ in 0..2 {
            let members = projections::all().into_iter().find(|projection| projection.name() == "members").unwrap();
            let report = projections::rebuild(&store, members.as_ref(), &|done, total| {
                progress.lock().unwrap().push((done, total))
            })
            .await
            .unwrap();
            assert_eq!(report.events, store.count_events().await.unwrap(), "{}", db.backend());
            assert_eq!(projected(&store).await, expected(&roster, 50).await, "{}", db.backend());
        }
        reading.store(false, std::sync::atomic::Ordering::Relaxed);
        let index_names = match store.backend() {
            Backend::Postgres(pool) => {
                sqlx::query_scalar::<_, String>("SELECT indexname FROM pg_indexes WHERE tablename = 'members' ORDER BY 1")
                    .fetch_all(pool)
                    .await
                    .unwrap()
            }
            Backend::Sqlite(pool) => sqlx::query_scalar::<_, String>(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'members' AND sql IS NOT NULL ORDER BY 1",
            )
            .fetch_all(pool)
            .await
            .unwrap(),
        };
        assert!(index_names.contains(&"members_by_role".to_string()), "{}: {index_names:?}", db.backend());
        assert!(index_names.iter().all(|name| !name.contains("rebuild")), "{}: {index_names:?}", db.backend());
        assert!(reader.await.unwrap() > 0, "readers kept reading during the rebuild");
        assert!(progress.lock().unwrap().last().is_some_and(|(done, total)| done == total));

        // The live projector continues from the rebuilt checkpoint without reapplying anything.
        write_history(&roster, 50, 60).await;
        projector(&store).catch_up().await.unwrap();
        assert_eq!(projected(&store).await, expected(&roster, 60).await, "{}", db.backend());
        assert_eq!(events_applied(&store).await as u64, store.count_events().await.unwrap(), "{}", db.backend());
        store.close().await;
    }
}

/// Every batch and every rebuild moves the read model's revision up, the committing projector knows it at once, and
/// another process learns it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_batch_and_rebuild_moves_the_read_models_revision() {
    for db in TestDb::all("revisions").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        write_history(&roster, 0, 10).await;
        let projector = projector(&store);
        let local = projector.revisions();
        assert_eq!(local.current("members"), None);
        projector.catch_up().await.unwrap();
        let after_catch_up = local.current("members").unwrap();
        assert!(after_catch_up >= 1, "{}", db.backend());

        let other = projections::Revisions::default();
        other.refresh(&store).await.unwrap();
        assert_eq!(other.current("members"), Some(after_catch_up), "{}", db.backend());

        write_history(&roster, 10, 12).await;
        projector.catch_up().await.unwrap();
        let after_more = local.current("members").unwrap();
        assert!(after_more > after_catch_up, "{}", db.backend());

        let members = projections::all().into_iter().find(|projection| projection.name() == "members").unwrap();
        projections::rebuild(&store, members.as_ref(), &|_, _| {}).await.unwrap();
        other.refresh(&store).await.unwrap();
        assert_eq!(other.current("members"), Some(after_more + 1), "{}: a rebuild is a change", db.backend());
        // Nothing moves for a projection with nothing to apply.
        projector.catch_up().await.unwrap();
        other.refresh(&store).await.unwrap();
        assert_eq!(other.current("members"), Some(after_more + 1), "{}", db.backend());
        store.close().await;
    }
}

/// A running projector reads past events of no interest to a projection without a transaction (its stored
/// checkpoint stays put) and without moving its read model's revision; the stored checkpoint catches up with the next
/// event of interest, or after `skip_age`; interleaved events of interest each take effect exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_of_no_interest_are_skipped_then_the_checkpoint_catches_up() {
    use domain::trust::{TrustCommand, TrustRules, TRUST_RULES_ID};
    async fn grant(trust: &AggregateRepository<TrustRules>, n: usize) {
        let command = TrustCommand::Grant {
            rule_id: format!("rule-{n}"),
            email: email(100 + n),
            blueprint_key: None,
            description: None,
            granted_by: admin(),
        };
        trust.execute(TRUST_RULES_ID, command, &meta()).await.unwrap();
    }
    async fn stored(store: &EventStore) -> String {
        let checkpoints = projections::checkpoints(store).await.unwrap();
        checkpoints
            .iter()
            .find(|checkpoint| checkpoint.name == "members")
            .map(|checkpoint| checkpoint.cursor.clone())
            .unwrap_or_default()
    }
    /// The last event's cursor, once nothing is held back (on PostgreSQL the readable log can trail the table while
    /// transactions elsewhere on the cluster are open).
    async fn end(store: &EventStore) -> String {
        loop {
            let last = store.read_global(store::Cursor::START, 100_000).await.unwrap().last().map(|event| event.cursor);
            if let Some(last) = last {
                if !store.has_events_after(last).await.unwrap() {
                    return last.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    /// Waits until `check` holds (the projector runs in the background).
    async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
        for _ in 0..500 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never: {what}");
    }
    for db in TestDb::all("skipping").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        let trust = AggregateRepository::<TrustRules>::new(store.clone(), ());
        write_history(&roster, 0, 5).await;
        let config = ProjectorConfig {
            batch_size: 7,
            poll_interval: Duration::from_millis(20),
            skip_age: Duration::from_secs(3600),
            ..ProjectorConfig::default()
        };
        let projector =
            Projector::new(store.clone(), projections::all(), config, &prometheus::Registry::new()).unwrap();
        let (revisions, status) = (projector.revisions(), projector.status());
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(projector.run(shutdown.clone()));
        let caught_up = end(&store).await;
        until("members applied the roster", || async {
            stored(&store).await == caught_up && revisions.current("members").is_some()
        })
        .await;
        let before = revisions.current("members").unwrap();

        for n in 0..30 {
            grant(&trust, n).await;
        }
        let log_end = end(&store).await;
        until("members read past the trust rules", || async {
            status.snapshot().get("members").is_some_and(|status| status.cursor == log_end)
        })
        .await;
        until("trust_rules applied them", || async {
            projections::checkpoints(&store)
                .await
                .unwrap()
                .iter()
                .any(|c| c.name == "trust_rules" && c.cursor == log_end)
        })
        .await;
        assert_eq!(stored(&store).await, caught_up, "{}: no transaction for events of no interest", db.backend());
        assert_eq!(revisions.current("members"), Some(before), "{}: trust rules changed no member", db.backend());

        // An event of interest moves the stored checkpoint past everything; each is applied once.
        write_history(&roster, 5, 25).await;
        let log_end = end(&store).await;
        until("members caught up", || async { stored(&store).await == log_end }).await;
        assert_eq!(projected(&store).await, expected(&roster, 25).await, "{}", db.backend());
        assert!(revisions.current("members").unwrap() > before);
        shutdown.cancel();
        running.await.unwrap();

        // With a short skip_age, the stored checkpoint follows events of no interest alone, without a revision.
        let config = ProjectorConfig {
            poll_interval: Duration::from_millis(20),
            skip_age: Duration::from_millis(100),
            ..ProjectorConfig::default()
        };
        let projector =
            Projector::new(store.clone(), projections::all(), config, &prometheus::Registry::new()).unwrap();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(projector.run(shutdown.clone()));
        let revision = {
            let other = projections::Revisions::default();
            other.refresh(&store).await.unwrap();
            other.current("members").unwrap()
        };
        for n in 30..35 {
            grant(&trust, n).await;
        }
        let log_end = end(&store).await;
        until("members' checkpoint followed alone", || async { stored(&store).await == log_end }).await;
        let other = projections::Revisions::default();
        other.refresh(&store).await.unwrap();
        assert_eq!(other.current("members"), Some(revision), "{}", db.backend());
        shutdown.cancel();
        running.await.unwrap();
        store.close().await;
    }
}
