//! Read-model revisions: how a process knows, without a database round trip, whether what it remembers of a read
//! model is still current.
//!
//! Every change to a read model moves the `revision` of its `projection_checkpoints` row up by one, in the same
//! transaction as the change: each projector batch and each rebuild's table swap. A process learns new revisions
//!
//! - at once from its own projector (which sets them after each commit, before announcing the batch),
//! - within milliseconds from other processes on PostgreSQL (the batch's transaction sends a `NOTIFY` on
//!   [`CHANNEL`], delivered at commit, which [`Revisions::follow`] listens to),
//! - and at the latest after one poll interval on either backend ([`Revisions::follow`] also reads every revision
//!   on a timer, which covers a lost listener connection and other processes sharing an SQLite file).
//!
//! Caches of read-model answers (the API's role and approvals-queue caches) remember the revision they were filled
//! at and throw away what they hold when it is no longer [`Revisions::current`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::Row;
use store::{Backend, EventStore, StoreError};
use tokio_util::sync::CancellationToken;

/// The PostgreSQL notification channel on which committed read-model revisions are announced, as
/// `"<projection> <revision>"`.
pub const CHANNEL: &str = "gatehouse_read_models";

/// The latest known revision of each read model in this process. Cheap to clone; clones share.
#[derive(Debug, Clone, Default)]
pub struct Revisions {
    known: Arc<RwLock<HashMap<String, i64>>>,
}

impl Revisions {
    /// The latest revision of `projection` this process knows of; `None` before it learned any (then nothing may
    /// be served from a cache).
    pub fn current(&self, projection: &str) -> Option<i64> {
        self.known.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(projection).copied()
    }

    /// Records that `projection` has reached `revision` (revisions only move up).
    pub fn advance(&self, projection: &str, revision: i64) {
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        match known.get_mut(projection) {
            Some(current) if *current >= revision => {}
            Some(current) => *current = revision,
            None => {
                known.insert(projection.to_string(), revision);
            }
        }
    }

    /// Reads every read model's revision from the store.
    pub async fn refresh(&self, store: &EventStore) -> Result<(), StoreError> {
        let rows =
            sqlx::query("SELECT name, revision FROM projection_checkpoints").fetch_all(store.read_models()).await?;
        for row in rows {
            let name: String = row.try_get("name").map_err(StoreError::from)?;
            let revision: i64 = row.try_get("revision").map_err(StoreError::from)?;
            self.advance(&name, revision);
        }
        Ok(())
    }

    /// Keeps these revisions current until `shutdown`: polls every `interval`, and on PostgreSQL also listens on
    /// [`CHANNEL`] (re-reading everything whenever the listening connection was lost, since notifications sent
    /// meanwhile are gone).
    pub async fn follow(self, store: EventStore, interval: Duration, shutdown: CancellationToken) {
        let listener = match store.backend() {
            Backend::Postgres(pool) => {
                Some(tokio::spawn(self.clone().listen(store.clone(), pool.clone(), shutdown.clone())))
            }
            Backend::Sqlite(_) => None,
        };
        // The caller read every revision just before starting this.
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            if let Err(error) = self.refresh(&store).await {
                tracing::debug!(error.message = %error, "could not read the read models' revisions");
            }
        }
        if let Some(listener) = listener {
            listener.abort();
        }
    }

    async fn listen(self, store: EventStore, pool: sqlx::PgPool, shutdown: CancellationToken) {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(error.message = %error, "cannot listen for read-model revisions; polling only");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(error) = listener.listen(CHANNEL).await {
                tracing::debug!(error.message = %error, "cannot listen for read-model revisions; polling only");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            loop {
                let received = tokio::select! {
                    () = shutdown.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        if let Some((name, revision)) = parse(notification.payload()) {
                            self.advance(name, revision);
                        }
                    }
                    // The connection was lost (and is re-established by the next call): what was sent meanwhile is
                    // gone, so read everything once.
                    Ok(None) => {
                        let _ = self.refresh(&store).await;
                    }
                    Err(error) => {
                        tracing::debug!(error.message = %error, "lost the read-model revision listener");
                        break;
                    }
                }
            }
        }
    }
}

fn parse(payload: &str) -> Option<(&str, i64)> {
    let (name, revision) = payload.rsplit_once(' ')?;
    Some((name, revision.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_only_move_up() {
        let revisions = Revisions::default();
        assert_eq!(revisions.current("members"), None);
        revisions.advance("members", 3);
        revisions.advance("members", 2);
        assert_eq!(revisions.current("members"), Some(3));
        revisions.advance("members", 4);
        assert_eq!(revisions.current("members"), Some(4));
        assert_eq!(revisions.current("sessions"), None);
    }

    #[test]
    fn notifications_name_a_projection_and_a_revision() {
        assert_eq!(parse("publish_requests 17"), Some(("publish_requests", 17)));
        assert_eq!(parse("publish_requests"), None);
        assert_eq!(parse("members x"), None);
    }
}
