//! `Idempotency-Key` claims across a crash between a command's commit and its answer (ADR 0018), on both backends.

#![allow(clippy::unwrap_used)]

use domain::roster::{Role, Roster, RosterCommand};
use domain::Email;
use store::idempotency::{self, Claim};
use store::{AggregateRepository, EventMetadata};
use testkit::TestDb;

const STALE: i64 = 1_000;
const RETENTION: i64 = 86_400_000;

fn invite(name: &str) -> RosterCommand {
    RosterCommand::Invite {
        email: Email::parse(&format!("{name}@example.com")).unwrap(),
        role: Role::Member,
        invited_by: Email::parse("root@example.com").unwrap(),
    }
}

async fn claimed(store: &store::EventStore, key: &str, now: i64) -> String {
    match idempotency::claim(store, "scope", key, "body", now, STALE, RETENTION).await.unwrap() {
        Claim::Claimed { attempt } => attempt,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn a_stale_prepared_claim_replays_its_answer_if_and_only_if_its_command_committed() {
    for db in TestDb::all("idempotency recovery").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        let backend = db.backend();

        // Committed, then the process died before `complete`.
        let attempt = claimed(&store, "committed", 0).await;
        assert!(idempotency::prepare(&store, "scope", "committed", &attempt, 201, "{\"id\":1}", Some("/x/1"))
            .await
            .unwrap());
        let metadata = EventMetadata::for_request("root@example.com", "r1").with_idempotency_attempt(Some(&attempt));
        roster.execute("org", invite("ada"), &metadata).await.unwrap();
        // Before the claim is stale a retry waits; after, it gets the prepared answer.
        let early = idempotency::claim(&store, "scope", "committed", "body", STALE / 2, STALE, RETENTION).await;
        assert_eq!(early.unwrap(), Claim::InProgress, "{backend}");
        let late = idempotency::claim(&store, "scope", "committed", "body", 2 * STALE, STALE, RETENTION).await;
        let expected = Claim::Done { status: 201, response: "{\"id\":1}".into(), location: Some("/x/1".into()) };
        assert_eq!(late.unwrap(), expected, "{backend}");
        // And from then on it is an ordinary answered key.
        let again = idempotency::claim(&store, "scope", "committed", "body", 3 * STALE, STALE, RETENTION).await;
        assert_eq!(again.unwrap(), expected, "{backend}");

        // Prepared, but the process died before its command committed: the retry runs it (a new attempt), and the
        // old attempt can no longer record anything.
        let first = claimed(&store, "lost", 0).await;
        assert!(idempotency::prepare(&store, "scope", "lost", &first, 201, "{}", None).await.unwrap());
        let second = claimed(&store, "lost", 2 * STALE).await;
        assert_ne!(first, second, "{backend}");
        assert!(!idempotency::prepare(&store, "scope", "lost", &first, 201, "{}", None).await.unwrap(), "{backend}");
        assert!(idempotency::prepare(&store, "scope", "lost", &second, 201, "{\"id\":2}", None).await.unwrap());
        idempotency::complete(&store, "scope", "lost", &second, 201, "{\"id\":2}", None).await.unwrap();
        let answered = idempotency::claim(&store, "scope", "lost", "body", 3 * STALE, STALE, RETENTION).await;
        assert_eq!(answered.unwrap(), Claim::Done { status: 201, response: "{\"id\":2}".into(), location: None });

        // The events name the attempt in their metadata, never the key.
        let events = store.read_global(store::Cursor::START, 100).await.unwrap();
        assert_eq!(events[0].metadata["idempotency_attempt"], attempt.as_str(), "{backend}");
        assert!(!events[0].metadata.to_string().contains("committed"), "{backend}");
        store.close().await;
    }
}
