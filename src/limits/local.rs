//! The in-process limit store: every key's TAT in a bounded concurrent map.
//!
//! A key's state is one `AtomicU64` updated by compare-and-swap, so calls of
//! the same key never wait for each other; the map (quick_cache, the crate
//! the verified-JWT cache already uses) is sharded and bounded by
//! `limits.local_max_keys`. When it is full a new key evicts an old one:
//! its S3-FIFO-like policy admits a new key to a small probation queue and
//! keeps the keys seen twice, so a flood of one-shot subjects churns the
//! probation queue and cannot push out the keys in steady use, nor grow
//! memory. An evicted key starts again with a full burst, which is what an
//! idle key has anyway.
//!
//! Keys are hashed (SipHash with this process's random keys) before they are
//! stored, so a key costs the same memory however long its text is.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::gcra::{Gcra, Step};

/// The bounded map of keys to their TAT.
pub struct LocalStore {
    cells: quick_cache::sync::Cache<u64, Arc<AtomicU64>>,
    hasher: RandomState,
}

impl LocalStore {
    /// A store holding at most `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            cells: quick_cache::sync::Cache::new(max_keys.max(1)),
            hasher: RandomState::new(),
        }
    }

    /// The call at `now` (nanoseconds on the process's monotonic clock)
    /// against limit `limit`'s key `key`, consuming on admission.
    pub fn step(&self, limit: &str, key: &str, gcra: &Gcra, now: u64) -> Step {
        let cell = self.cell(limit, key);
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let step = gcra.step(tat, now);
            let Step::Allowed { tat: next, .. } = step else {
                return step;
            };
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return step,
                Err(current) => tat = current,
            }
        }
    }

    /// How many calls the key would admit at `now`, and when the next one
    /// is admitted if none is; consumes nothing and stores nothing.
    pub fn budget(&self, limit: &str, key: &str, gcra: &Gcra, now: u64) -> (u32, Option<Duration>) {
        let tat = self
            .cells
            .peek(&self.hash(limit, key))
            .map_or(0, |cell| cell.load(Ordering::Acquire));
        gcra.budget(tat, now)
    }

    /// How many keys the store holds.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The most keys the store holds.
    pub fn capacity(&self) -> u64 {
        self.cells.capacity()
    }

    fn cell(&self, limit: &str, key: &str) -> Arc<AtomicU64> {
        let hash = self.hash(limit, key);
        if let Some(cell) = self.cells.get(&hash) {
            return cell;
        }
        let created: Result<_, std::convert::Infallible> = self
            .cells
            .get_or_insert_with(&hash, || Ok(Arc::new(AtomicU64::new(0))));
        match created {
            Ok(cell) => cell,
        }
    }

    fn hash(&self, limit: &str, key: &str) -> u64 {
        // The limit's name and the key, separated by a byte neither holds
        // at that place (names are checked; the length prefix makes the
        // split unambiguous anyway).
        self.hasher.hash_one((limit.len(), limit, key))
    }
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("keys", &self.cells.len())
            .field("capacity", &self.cells.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_limits_are_separate_budgets() {
        let store = LocalStore::new(100);
        let gcra = Gcra::new(Duration::from_secs(1), 1);
        assert!(matches!(
            store.step("a", "k", &gcra, 1),
            Step::Allowed { .. }
        ));
        assert!(matches!(
            store.step("a", "k", &gcra, 1),
            Step::Limited { .. }
        ));
        assert!(matches!(
            store.step("a", "j", &gcra, 1),
            Step::Allowed { .. }
        ));
        assert!(matches!(
            store.step("b", "k", &gcra, 1),
            Step::Allowed { .. }
        ));
        // A budget is read without being spent.
        assert_eq!(store.budget("c", "k", &gcra, 1), (1, None));
        assert_eq!(store.budget("c", "k", &gcra, 1), (1, None));
        assert!(store.budget("a", "k", &gcra, 1).1.is_some());
    }

    #[test]
    fn concurrent_calls_of_one_key_admit_exactly_the_burst() {
        let store = Arc::new(LocalStore::new(100));
        let gcra = Gcra::new(Duration::from_secs(3600), 1000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|_| matches!(store.step("l", "k", &gcra, 7), Step::Allowed { .. }))
                        .count()
                })
            })
            .collect();
        let admitted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_the_bound_and_keeps_a_hot_key() {
        let store = LocalStore::new(1000);
        let gcra = Gcra::new(Duration::from_secs(3600), 2);
        // The hot key is seen twice (so it leaves probation), then spends its budget.
        assert!(matches!(
            store.step("l", "hot", &gcra, 1),
            Step::Allowed { .. }
        ));
        assert!(matches!(
            store.step("l", "hot", &gcra, 1),
            Step::Allowed { .. }
        ));
        for i in 0..100_000u32 {
            let _ = store.step("l", &format!("flood-{i}"), &gcra, 1);
            if i % 100 == 0 {
                // Still refused: the flood did not evict it and reset its budget.
                assert!(
                    matches!(store.step("l", "hot", &gcra, 1), Step::Limited { .. }),
                    "after {i} flood keys"
                );
            }
        }
        assert!(store.len() <= 1000 + 64, "{} keys", store.len());
    }
}
