//! A command whose future is dropped part-way leaves the store as usable as before, on both backends.
//!
//! actix-web drops a handler's future when its client goes away, and drops every extractor of a handler as soon as
//! one of them fails; a pending member's first request records the sign-in inside the `Caller` extractor, so a bad
//! body (or a client that hangs up) cancels a command at an arbitrary point. Before docs/adr/0015, one cancelled
//! between SQLite's `BEGIN IMMEDIATE` and the moment sqlx handed the transaction back left its connection in the
//! pool holding the write lock, and every later write failed after the 10 s busy timeout.

#![allow(clippy::unwrap_used)]

use std::pin::pin;
use std::task::Poll;

use domain::roster::{Role, Roster, RosterCommand};
use domain::Email;
use store::{AggregateRepository, EventMetadata};
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

/// Polls `future` up to `polls` times, yielding between polls so that the database's side makes progress, then
/// drops it. Returns its output if it finished first.
async fn poll_then_drop<F: std::future::Future>(future: F, polls: usize) -> Option<F::Output> {
    let mut future = pin!(future);
    for _ in 0..polls {
        if let Poll::Ready(output) = futures::poll!(future.as_mut()) {
            return Some(output);
        }
        tokio::task::yield_now().await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_dropped_at_any_point_never_leave_the_store_locked() {
    for db in TestDb::all("dropped commands").await {
        let store = db.store().await;
        let roster = AggregateRepository::<Roster>::new(store.clone(), ());
        let mut acknowledged = Vec::new();
        // From "dropped before anything happened" to "finished": every phase of an append is cut somewhere.
        for n in 0..400 {
            if let Some(outcome) = poll_then_drop(roster.execute("org", invite(n), &meta()), n % 200).await {
                outcome.unwrap_or_else(|error| panic!("{}: command {n}: {error:?}", db.backend()));
                acknowledged.push(n);
            }
        }
        assert!(acknowledged.len() < 400, "{}: no command was ever cut short; the test tests nothing", db.backend());
        // The write lock (SQLite) and the pool are free: the next command commits, at once rather than after the
        // busy timeout (which would answer `Unavailable`).
        let started = std::time::Instant::now();
        let committed = roster.execute("org", invite(10_000), &meta()).await;
        assert!(committed.is_ok(), "{}: {committed:?} after {:?}", db.backend(), started.elapsed());
        // Everything acknowledged is in the log; what was cut short either committed whole or not at all.
        roster.clear_cache();
        let (state, version) = roster.load("org").await.unwrap();
        for n in &acknowledged {
            assert!(state.member(&Email::parse(&format!("user{n}@example.com")).unwrap()).is_some());
        }
        let members =
            (0..400).filter(|n| state.member(&Email::parse(&format!("user{n}@example.com")).unwrap()).is_some());
        assert_eq!(members.count() as u64 + 1, version, "{}: one event per committed invitation", db.backend());
        store.close().await;
    }
}
