//! Read-model answers remembered until their read model changes.
//!
//! The hottest reads (the caller's role on every request, the approvals queue) would otherwise cost a database round
//! trip each, several times the cost of everything else a request does. A [`ReadCache`] holds answers computed from
//! one read model, tagged with the read model's revision at the time ([`projections::Revisions`]), and serves them only
//! while that revision is still the latest this process knows of. It never serves an answer older than what the
//! process knows of the read model: its own projector advances the revision before it announces a batch, other
//! processes' batches arrive by PostgreSQL `NOTIFY` within milliseconds, and every process re-reads all revisions
//! once per projector poll interval (docs/adr/0010-read-model-caches.md).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use domain::roster::Role;
use projections::Revisions;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Answers computed from the read model of one projection.
#[derive(Debug)]
pub struct ReadCache<K, V> {
    projection: &'static str,
    revisions: Revisions,
    capacity: usize,
    entries: Mutex<Entries<K, V>>,
    hits: IntCounter,
    misses: IntCounter,
}

#[derive(Debug)]
struct Entries<K, V> {
    /// The read model's revision every entry was computed at.
    revision: i64,
    map: HashMap<K, V>,
}

impl<K: Eq + Hash, V: Clone> ReadCache<K, V> {
    /// A cache of answers from `projection`'s read model, holding at most `capacity` of them, counting its hits and
    /// misses in `counter` under the label `name`.
    fn new(
        name: &str,
        projection: &'static str,
        revisions: Revisions,
        capacity: usize,
        counter: &IntCounterVec,
    ) -> Self {
        Self {
            projection,
            revisions,
            capacity: capacity.max(1),
            entries: Mutex::new(Entries { revision: i64::MIN, map: HashMap::new() }),
            hits: counter.with_label_values(&[name, "hit"]),
            misses: counter.with_label_values(&[name, "miss"]),
        }
    }

    /// The revision to tag an answer with: read it *before* reading the read model, so that an answer is never
    /// tagged newer than the data it was computed from. `None` while the process knows no revision yet (nothing
    /// is cached then).
    pub fn revision(&self) -> Option<i64> {
        self.revisions.current(self.projection)
    }

    /// The remembered answer for `key`, if it was computed at the latest known revision.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.revision().and_then(|current| {
            let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            (entries.revision == current).then(|| entries.map.get(key).cloned()).flatten()
        });
        if found.is_some() { &self.hits } else { &self.misses }.inc();
        found
    }

    /// Remembers `value` for `key`, computed from the read model at `revision` (from [`ReadCache::revision`]).
    /// An answer older than what the cache holds is dropped; a newer one replaces everything.
    pub fn insert(&self, revision: Option<i64>, key: K, value: V) {
        let Some(revision) = revision else { return };
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if revision < entries.revision {
            return;
        }
        if revision > entries.revision {
            entries.revision = revision;
            entries.map.clear();
        }
        if entries.map.len() >= self.capacity {
            entries.map.clear();
        }
        entries.map.insert(key, value);
    }
}

/// A member's role and whether they still have to sign in for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedRole {
    /// Their role.
    pub role: Role,
    /// Still invited, not signed in yet.
    pub pending: bool,
}

/// The key of an approvals-queue page: blueprint filter, cursor, page size.
pub type QueueKey = (Option<String>, Option<String>, i64);

/// The service's read caches.
#[derive(Debug)]
pub struct Caches {
    /// Roles by email, from the `members` read model.
    pub roles: ReadCache<String, CachedRole>,
    /// Serialized approvals-queue pages, from the `publish_requests` read model.
    pub queue: ReadCache<QueueKey, actix_web::web::Bytes>,
    /// The blueprints a catalog may list, from the `blueprints` read model (each caller's catalog is judged from
    /// them on every request, so an ACL change shows as soon as the read model has it).
    pub catalog: ReadCache<(), std::sync::Arc<Vec<crate::blueprints::Listed>>>,
    /// Serialized catalogs, keyed by what a caller sees of the listed blueprints (one code per blueprint: hidden,
    /// coming soon, launchable): callers who see the same share one body, so memory grows with the number of
    /// distinct views, not of users.
    pub catalog_pages: ReadCache<Vec<u8>, actix_web::web::Bytes>,
    /// Serialized workspace list pages, from the `workspaces` read model; keyed by the caller, the query, the
    /// connected agents' epoch and the `tags` revision (statuses and the caller's tags are in the page).
    pub workspace_pages: ReadCache<WorkspacePageKey, actix_web::web::Bytes>,
    /// Every read model's revision as this process knows it.
    pub revisions: Revisions,
}

/// The key of a workspace list page: the caller, the query string, the agents' epoch, the `tags` revision.
pub type WorkspacePageKey = (String, String, u64, Option<i64>);

impl Caches {
    /// Caches that follow `revisions`, with their hit and miss counters registered in `registry`.
    pub fn new(revisions: &Revisions, registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = IntCounterVec::new(
            Opts::new("gatehouse_read_cache_lookups_total", "Read-cache lookups by cache and outcome (hit or miss)"),
            &["cache", "outcome"],
        )?;
        registry.register(Box::new(counter.clone()))?;
        Ok(Self {
            roles: ReadCache::new("roles", "members", revisions.clone(), 100_000, &counter),
            queue: ReadCache::new("approvals_queue", "publish_requests", revisions.clone(), 1_024, &counter),
            catalog: ReadCache::new("catalog", "blueprints", revisions.clone(), 1, &counter),
            catalog_pages: ReadCache::new("catalog_pages", "blueprints", revisions.clone(), 1_024, &counter),
            workspace_pages: ReadCache::new("workspace_pages", "workspaces", revisions.clone(), 1_024, &counter),
            revisions: revisions.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(revisions: &Revisions, capacity: usize) -> ReadCache<String, u32> {
        let counter = IntCounterVec::new(Opts::new("t", "t"), &["cache", "outcome"]).unwrap_or_else(|_| unreachable!());
        ReadCache::new("test", "members", revisions.clone(), capacity, &counter)
    }

    #[test]
    fn nothing_is_cached_before_a_revision_is_known() {
        let revisions = Revisions::default();
        let cache = cache(&revisions, 10);
        cache.insert(cache.revision(), "a".into(), 1);
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn answers_are_served_until_the_read_model_moves() {
        let revisions = Revisions::default();
        revisions.advance("members", 1);
        let cache = cache(&revisions, 10);
        cache.insert(cache.revision(), "a".into(), 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("b"), None);
        revisions.advance("members", 2);
        assert_eq!(cache.get("a"), None, "a newer read model makes every answer stale");
        revisions.advance("sessions", 9);
        cache.insert(Some(2), "a".into(), 2);
        assert_eq!(cache.get("a"), Some(2), "other read models do not matter");
    }

    #[test]
    fn an_answer_computed_before_a_newer_one_is_dropped() {
        let revisions = Revisions::default();
        revisions.advance("members", 1);
        let cache = cache(&revisions, 10);
        let before = cache.revision();
        revisions.advance("members", 2);
        cache.insert(cache.revision(), "b".into(), 2);
        cache.insert(before, "a".into(), 1);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(2));
    }

    #[test]
    fn a_full_cache_starts_over() {
        let revisions = Revisions::default();
        revisions.advance("members", 1);
        let cache = cache(&revisions, 2);
        for (n, key) in ["a", "b", "c"].into_iter().enumerate() {
            cache.insert(cache.revision(), key.into(), n as u32);
        }
        assert_eq!(cache.get("c"), Some(2));
        assert_eq!(cache.get("a"), None);
    }
}
