//! The idempotency keys an actor knows its entity has stored, as 64-bit
//! hashes, so that a command with a new key (almost every command) needs no
//! store lookup. Only an entity's own actor adds records for it, and a new
//! owner loads them after the store's fence is raised, so a key whose hash
//! is absent is new; a hash that is present (or a collision) costs one
//! lookup, as every key did before.
//!
//! Memory is bounded twice: per actor ([`PER_ENTITY`]) and per runtime
//! ([`PER_RUNTIME`], shared by all its actors through a [`Budget`]). Past
//! either bound an actor keeps no set and looks every key up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Keys one actor keeps at most (about 256 KiB). A position with more
/// within the retention is hot, and a hot position's drains are large, so
/// one lookup per drain costs it little.
pub(crate) const PER_ENTITY: usize = 16_384;

/// Keys all actors of one runtime keep at most (about 64 MiB).
pub(crate) const PER_RUNTIME: usize = 4 * 1024 * 1024;

/// The keys held by all actors of a runtime.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    fn take(&self, count: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(count).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, count: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(count))
            });
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

pub(crate) fn key_hash(idempotency_key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(idempotency_key.as_bytes())
}

/// One actor's known keys; gives its share of the budget back when dropped.
#[derive(Debug)]
pub(crate) struct KnownKeys {
    hashes: HashSet<u64>,
    budget: Arc<Budget>,
}

impl KnownKeys {
    /// The set for the keys the store returned, if the budget allows it.
    pub(crate) fn load(keys: &[String], budget: &Arc<Budget>) -> Option<Self> {
        if keys.len() > PER_ENTITY || !budget.take(keys.len()) {
            return None;
        }
        Some(Self {
            hashes: keys.iter().map(|key| key_hash(key)).collect(),
            budget: Arc::clone(budget),
        })
    }

    /// May a record for `key` be stored?
    pub(crate) fn may_contain(&self, key: &str) -> bool {
        self.hashes.contains(&key_hash(key))
    }

    /// Adds the keys of a commit; `None` (and the budget back) when that
    /// goes past either bound.
    pub(crate) fn extend(mut self, recorded: &[u64]) -> Option<Self> {
        if self.hashes.len() + recorded.len() > PER_ENTITY || !self.budget.take(recorded.len()) {
            return None;
        }
        let before = self.hashes.len();
        self.hashes.extend(recorded.iter().copied());
        // Hashes already present take no room: return what they took.
        self.budget
            .give_back(recorded.len() - (self.hashes.len() - before));
        Some(self)
    }
}

impl Drop for KnownKeys {
    fn drop(&mut self) {
        self.budget.give_back(self.hashes.len());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|index| format!("key-{index}")).collect()
    }

    #[test]
    fn only_stored_keys_may_be_contained() {
        let budget = Budget::new(100);
        let known = KnownKeys::load(&keys(0..3), &budget).unwrap();
        assert!(known.may_contain("key-1"));
        assert!(!known.may_contain("key-9"));
        let known = known
            .extend(&[key_hash("key-9"), key_hash("key-1")])
            .unwrap();
        assert!(known.may_contain("key-9"));
        assert_eq!(budget.used(), 4, "a hash already present takes no room");
        drop(known);
        assert_eq!(budget.used(), 0, "dropping gives the room back");
    }

    #[test]
    fn the_runtime_budget_bounds_all_actors_together() {
        let budget = Budget::new(10);
        let first = KnownKeys::load(&keys(0..6), &budget).unwrap();
        assert!(KnownKeys::load(&keys(6..12), &budget).is_none());
        let second = KnownKeys::load(&keys(6..10), &budget).unwrap();
        assert_eq!(budget.used(), 10);
        // Growing past the budget drops the set and its share.
        assert!(second.extend(&[key_hash("key-10")]).is_none());
        assert_eq!(budget.used(), 6);
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_entity_keeps_at_most_its_own_bound() {
        let budget = Budget::new(PER_RUNTIME);
        assert!(KnownKeys::load(&keys(0..PER_ENTITY + 1), &budget).is_none());
        let full = KnownKeys::load(&keys(0..PER_ENTITY), &budget).unwrap();
        assert!(full.extend(&[key_hash("one more")]).is_none());
        assert_eq!(budget.used(), 0);
    }
}
