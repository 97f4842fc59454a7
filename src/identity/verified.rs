//! The verified-JWT cache: a successful verification, reused while nothing it
//! depended on has changed.
//!
//! Keyed by the SHA-256 of the compact token (the token itself is never
//! kept), an entry holds the verified principal, the token's time claims,
//! the caller's `now` when it was verified, and the [`Stamp`] it was verified
//! under: the issuer's key-set version (`refresh::Snapshot::version`, which
//! moves on every key-set change and when the keys expire after
//! `max_stale`) and the issuer's cache epoch (moved by
//! `Authenticator::invalidate_issuer`, for a reload). The authenticator
//! answers from an entry only while its stamp is the issuer's current one
//! and `now` is within `max_age` of the verification; otherwise the entry is
//! dropped and the token verified again. On every answer the time claims
//! (`exp`, `nbf`, `iat` with the leeway, the lifetime cap) are checked
//! against the current `now` with the same code as a full verification, so
//! a token that expired while cached is refused with the same reason. What
//! else a full verification checks (size, algorithm, signature, `iss`,
//! `aud`, required claims) depends only on the token, which the key pins,
//! and on the issuer's settings and keys, which the stamp pins.
//!
//! Only a successful verification is inserted; a refusal never is. So every
//! entry costs a caller one valid, signed token and one full verification:
//! a flood of distinct tokens cannot insert, and so cannot evict, faster
//! than it is verified, and junk tokens (the cheap flood) insert nothing.
//! The bound is a number of entries. quick_cache's policy (S3-FIFO-like: a
//! new key waits in a small probation queue and moves to the main queue only
//! when it is used again) means a flood of valid one-shot tokens churns the
//! probation queue and leaves the tokens in use in place.
//!
//! Time enters only as the caller's `now`: the cache reads no clock.

use std::collections::hash_map::RandomState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, OptionsBuilder, UnitWeighter};
use sha2::{Digest as _, Sha256};

use super::claims::Times;
use super::config::VerifiedCacheSettings;
use crate::domain::Principal;

/// The SHA-256 of a compact JWT: the cache's key.
pub type TokenDigest = [u8; 32];

/// The most shards the cache is split into: enough that the request threads
/// rarely meet on one shard's lock.
const MAX_SHARDS: usize = 16;
/// The fewest entries a shard holds: smaller shards would bound each part of
/// a small cache too tightly for its policy to work.
const MIN_SHARD_ENTRIES: usize = 32;

/// What an issuer's verification depended on, beyond the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The issuer's key-set version the signature verified under.
    pub keys: u64,
    /// The issuer's cache epoch when the verification started.
    pub epoch: u64,
}

/// One verified token.
#[derive(Debug)]
pub struct Entry {
    /// The issuer's index in the authenticator.
    pub issuer: usize,
    /// What the verification depended on.
    pub stamp: Stamp,
    /// The caller's `now` at the verification, unix seconds.
    pub verified_at: u64,
    /// The token's time claims, checked again on every answer.
    pub times: Times,
    /// The verified caller.
    pub principal: Arc<Principal>,
}

/// The cache's size and how many entries the bound pushed out, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedCacheStats {
    /// Entries held now.
    pub entries: u64,
    /// The most entries held at once.
    pub capacity: u64,
    /// Entries pushed out to make room, since the start.
    pub evictions: u64,
}

/// The bounded map from token digests to verified entries.
pub struct VerifiedCache {
    entries: Cache<TokenDigest, Arc<Entry>, UnitWeighter, RandomState, Evictions>,
    /// `max_age` in whole seconds, as `now` is.
    max_age: u64,
    capacity: u64,
    evictions: Arc<AtomicU64>,
}

/// Counts evictions, and drops the evicted entries after the shard's lock
/// is released (as quick_cache's default lifecycle does).
#[derive(Debug, Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<TokenDigest, Arc<Entry>> for Evictions {
    /// At most two evictions per insert with entries of one weight.
    type RequestState = [Option<Arc<Entry>>; 2];

    fn on_evict(&self, state: &mut Self::RequestState, _key: TokenDigest, entry: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = state.iter_mut().find(|s| s.is_none()) {
            *slot = Some(entry);
        }
    }
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: digests of live bearer tokens are nobody's business.
        f.debug_struct("VerifiedCache")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// An empty cache, or `None` when the settings turn it off.
    pub fn new(settings: &VerifiedCacheSettings) -> Option<Self> {
        if !settings.enabled() {
            return None;
        }
        let (shards, capacity) = layout(settings.max_entries());
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(capacity)
            .weight_capacity(capacity as u64)
            // Fails only when one of the two capacities is unset.
            .build()
            .ok()?;
        let evictions = Evictions::default();
        let counter = Arc::clone(&evictions.0);
        Some(Self {
            entries: Cache::with_options(options, UnitWeighter, RandomState::new(), evictions),
            max_age: settings.max_age().as_secs(),
            capacity: capacity as u64,
            evictions: counter,
        })
    }

    /// The entry of the token with this digest, fresh or not.
    pub fn get(&self, digest: &TokenDigest) -> Option<Arc<Entry>> {
        self.entries.get(digest)
    }

    /// Whether `entry` may still answer at `now`: verified at most `max_age`
    /// ago. A `now` before the verification (the clock stepped back) is not
    /// fresh either: the token is verified again at the new time.
    pub fn fresh(&self, entry: &Entry, now: u64) -> bool {
        now.checked_sub(entry.verified_at)
            .is_some_and(|age| age < self.max_age)
    }

    /// Stores a successful verification.
    pub fn insert(&self, digest: TokenDigest, entry: Entry) {
        self.entries.insert(digest, Arc::new(entry));
    }

    /// Drops `entry` unless another verification has replaced it meanwhile.
    pub fn remove(&self, digest: &TokenDigest, entry: &Arc<Entry>) {
        let _ = self
            .entries
            .remove_if(digest, |current| Arc::ptr_eq(current, entry));
    }

    /// Drops every entry of the issuer at `issuer`.
    pub fn remove_issuer(&self, issuer: usize) {
        self.entries.retain(|_, entry| entry.issuer != issuer);
    }

    /// The size, the bound and the evictions so far.
    pub fn stats(&self) -> VerifiedCacheStats {
        VerifiedCacheStats {
            entries: self.entries.len() as u64,
            capacity: self.capacity,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// The SHA-256 of a compact token.
pub fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// How many shards, and how many entries in all, for a bound of
/// `max_entries`. quick_cache gives each shard `ceil(capacity / shards)`,
/// which can add up to more than the capacity; a capacity that is a
/// multiple of the shard count keeps the bound exact (at most `shards - 1`
/// entries under `max_entries`).
fn layout(max_entries: usize) -> (usize, usize) {
    let mut shards = MAX_SHARDS;
    while shards > 1 && max_entries / shards < MIN_SHARD_ENTRIES {
        shards /= 2;
    }
    (shards, max_entries / shards * shards)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::Fingerprint;

    fn settings(max_entries: usize, max_age: u64) -> VerifiedCacheSettings {
        VerifiedCacheSettings::new(true, max_entries, Duration::from_secs(max_age)).unwrap()
    }

    fn entry(issuer: usize, verified_at: u64) -> Entry {
        Entry {
            issuer,
            stamp: Stamp { keys: 1, epoch: 0 },
            verified_at,
            times: Times {
                exp: verified_at + 300,
                nbf: None,
                iat: Some(verified_at),
            },
            principal: Arc::new(Principal {
                issuer: "https://idp.example".into(),
                subject: "svc".into(),
                audiences: vec!["tokengate".into()],
                scopes: Vec::new(),
                claims: BTreeMap::new(),
                expires_at: verified_at + 300,
                token_fingerprint: Fingerprint::of(b"t"),
            }),
        }
    }

    #[test]
    fn the_layout_keeps_the_bound_exact() {
        let cases = [
            (1, (1, 1)),
            (31, (1, 31)),
            (64, (2, 64)),
            (100, (2, 100)),
            (101, (2, 100)),
            (10_000, (16, 10_000)),
            (10_001, (16, 10_000)),
            (1_000_000, (16, 1_000_000)),
        ];
        for (max, expected) in cases {
            let (shards, capacity) = layout(max);
            assert_eq!((shards, capacity), expected, "{max}");
            assert!(capacity <= max && capacity + shards > max, "{max}");
        }
    }

    #[test]
    fn the_number_of_entries_never_exceeds_the_bound() {
        for max in [1, 7, 100, 1000] {
            let cache = VerifiedCache::new(&settings(max, 60)).unwrap();
            for i in 0..(3 * max as u64 + 50) {
                cache.insert(digest(&format!("token-{i}")), entry(0, 1000));
                assert!(cache.stats().entries <= max as u64, "{max} after {i}");
            }
            let stats = cache.stats();
            assert!(stats.entries >= (max as u64) / 2, "{max}: {stats:?}");
            assert_eq!(
                stats.evictions,
                3 * max as u64 + 50 - stats.entries,
                "{max}: every insert beyond the bound evicted one"
            );
        }
    }

    #[test]
    fn tokens_in_use_survive_a_flood_of_one_shot_tokens() {
        let cache = VerifiedCache::new(&settings(1000, 60)).unwrap();
        let hot: Vec<_> = (0..200).map(|i| digest(&format!("hot-{i}"))).collect();
        for key in &hot {
            cache.insert(*key, entry(0, 1000));
        }
        for round in 0..20 {
            // The callers in use call again, between the flood's tokens.
            for key in &hot {
                assert!(cache.get(key).is_some(), "round {round}");
            }
            for i in 0..1000 {
                cache.insert(digest(&format!("flood-{round}-{i}")), entry(0, 1000));
            }
        }
        let kept = hot.iter().filter(|k| cache.get(k).is_some()).count();
        assert!(kept >= 190, "only {kept} of 200 tokens in use survived");
    }

    #[test]
    fn freshness_is_max_age_from_the_verification() {
        let cache = VerifiedCache::new(&settings(10, 60)).unwrap();
        let e = entry(0, 1000);
        assert!(cache.fresh(&e, 1000));
        assert!(cache.fresh(&e, 1059));
        assert!(!cache.fresh(&e, 1060));
        assert!(!cache.fresh(&e, 999), "a clock stepped back re-verifies");
    }

    #[test]
    fn removal_spares_a_replacement_and_issuers_are_removed_whole() {
        let cache = VerifiedCache::new(&settings(100, 60)).unwrap();
        let key = digest("a");
        cache.insert(key, entry(0, 1000));
        let old = cache.get(&key).unwrap();
        cache.insert(key, entry(0, 1001));
        cache.remove(&key, &old);
        assert_eq!(cache.get(&key).map(|e| e.verified_at), Some(1001));
        let current = cache.get(&key).unwrap();
        cache.remove(&key, &current);
        assert!(cache.get(&key).is_none());

        for i in 0..10 {
            cache.insert(digest(&format!("x{i}")), entry(i % 2, 1000));
        }
        cache.remove_issuer(1);
        assert_eq!(cache.stats().entries, 5);
        assert!((0..10).all(|i| {
            let found = cache.get(&digest(&format!("x{i}"))).is_some();
            found == (i % 2 == 0)
        }));
    }

    #[test]
    fn off_means_no_cache() {
        assert!(VerifiedCache::new(&VerifiedCacheSettings::disabled()).is_none());
        assert!(VerifiedCache::new(&VerifiedCacheSettings::default()).is_some());
    }
}
