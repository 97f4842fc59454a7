//! The per-issuer key cache and its refresher task.
//!
//! The cache is a published snapshot (`arc-swap`): requests only load it, the
//! refresher task alone fetches and stores. The schedule follows the IdP's
//! `Cache-Control: max-age` clamped to `[min_refresh, max_refresh]`; failures
//! retry with exponential backoff and jitter and keep the last good keys until
//! `max_stale` has passed since the last success, when the snapshot turns to
//! `Expired` (the refresher wakes up for that deadline, so the request path
//! never reads a clock to decide staleness). While expired, retries are at
//! most [`EXPIRED_RETRY_MAX`] apart, whatever `backoff_max` says, so the
//! issuer recovers within a second of the IdP answering again, and a call
//! that meets expired keys asks for a fetch too (rate-limited like an
//! unknown kid's) and looks again once it is done.
//!
//! A request that meets an unknown `kid` asks for one refetch: concurrent
//! askers join the same fetch. The cooldown applies per kid: a kid that
//! forced a refetch forces none again for `unknown_kid_cooldown` (at most
//! [`MAX_REMEMBERED_KIDS`] kids are remembered, the oldest forgotten first),
//! and forced refetches of any kids start at least [`FORCED_REFETCH_GAP`]
//! apart (the global cap; one asked for sooner is deferred to the end of the
//! gap, not dropped). So a flood of one junk kid, or of kids already tried,
//! costs one fetch per cooldown, a flood of distinct kids at most one per
//! gap, and neither can hold back a genuine rotation for longer than the gap:
//! a shared cooldown would let one junk call every 30 s delay every rotation.
//! Waiting for it is
//! bounded twice, because a caller with a junk `kid` must never make a caller
//! with a good token wait (the per-connection concurrency limit counts the
//! waiting calls): every waiter of one fetch shares one deadline,
//! `unknown_kid_wait` after the fetch was asked for, and at most
//! [`MAX_UNKNOWN_KID_WAITERS`] requests per issuer wait at all; the others
//! look at the current keys once and are refused at once.
//!
//! This task is one of the two places where time and randomness enter the
//! service (ARCHITECTURE.md): it uses `tokio::time::Instant`, so tests can
//! drive it with paused time, and `getrandom` for the jitter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::Client;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use super::config::{KeySource, RefreshConfig};
use super::fetch::{self, FetchLimits, Fetched};
use super::keys::KeySet;

/// The most requests of one issuer that wait on a forced refetch at once;
/// beyond it an unknown `kid` is refused without waiting, so a flood of junk
/// kids holds at most this many call slots, for at most `unknown_kid_wait`.
pub const MAX_UNKNOWN_KID_WAITERS: usize = 8;

/// The least time between the starts of two forced refetches, whatever kids
/// asked: the global cap on what a flood of distinct unknown kids costs, and
/// the longest a genuine rotation waits behind one (when the cooldown is shorter, the cooldown).
pub const FORCED_REFETCH_GAP: Duration = Duration::from_secs(2);

/// The most unknown kids whose cooldown is remembered; beyond it the oldest is forgotten.
pub const MAX_REMEMBERED_KIDS: usize = 1024;

/// The longest time between retries while the keys are expired.
pub const EXPIRED_RETRY_MAX: Duration = Duration::from_secs(1);

/// What the request path sees of an issuer's keys.
#[derive(Debug)]
pub enum KeyState {
    /// No fetch has succeeded yet.
    NotLoaded,
    /// The last good key set.
    Loaded(KeySet),
    /// Refreshes failed for longer than `max_stale`: the old keys are no longer trusted.
    Expired,
}

/// The published key state with its version: the number of key-set changes
/// published before it. A refresh that fetched the same document again keeps
/// the version (see `KeySet::same_document`); any other publish, new keys, or
/// the keys expiring, takes the next one. The verified-JWT cache tags each
/// entry with the version it was verified under, and an entry whose version
/// is not the current one is verified again.
#[derive(Debug)]
pub struct Snapshot {
    /// The keys, or why there are none.
    pub keys: KeyState,
    /// Key-set changes published before this one.
    pub version: u64,
}

/// How fresh an issuer's keys are, for logs, metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// No fetch has succeeded yet.
    NotLoaded,
    /// The last fetch succeeded.
    Fresh,
    /// The last fetch failed; the last good keys are still served.
    Stale,
    /// Refreshes failed for longer than `max_stale`; tokens are refused.
    Expired,
}

/// The status of one issuer's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStatus {
    /// The issuer's configured name.
    pub name: String,
    /// Whether a key set has loaded at least once.
    pub loaded: bool,
    /// How fresh the keys are now.
    pub freshness: Freshness,
    /// Usable keys in the current set.
    pub keys: usize,
    /// Published keys dropped while vetting the current set.
    pub dropped_keys: usize,
    /// Fetch attempts so far.
    pub fetches: u64,
    /// Failed fetch attempts so far.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Refetches triggered by an unknown `kid`.
    pub forced_refetches: u64,
    /// Unknown-`kid` refetches refused by the kid's cooldown.
    pub suppressed_refetches: u64,
    /// The last fetch error, if the last fetch failed.
    pub last_error: Option<String>,
    /// When the last fetch succeeded.
    pub last_success: Option<Instant>,
}

impl IssuerStatus {
    /// Whether tokens can be verified: the keys loaded once and have not expired.
    pub fn usable(&self) -> bool {
        self.loaded && self.freshness != Freshness::Expired
    }
}

/// The shared state of one issuer's keys.
#[derive(Debug)]
pub struct KeyCache {
    state: ArcSwap<Snapshot>,
    status: watch::Sender<IssuerStatus>,
    /// Wakes the refresher for a forced refetch.
    wake: Notify,
    /// Counts finished fetch attempts, so waiters know when theirs is done.
    generation: watch::Sender<u64>,
    fetching: AtomicBool,
    forced: Mutex<Forced>,
    /// How long one unknown kid forces no second refetch.
    cooldown: Duration,
    /// The least time between the starts of two forced refetches.
    gap: Duration,
    /// How long the requests waiting on one forced refetch may wait, from when it was asked for.
    wait_limit: Duration,
    /// Requests waiting on a forced refetch now, at most [`MAX_UNKNOWN_KID_WAITERS`].
    waiters: AtomicUsize,
    /// Unknown-kid refetches the cooldown refused: an atomic, not the status
    /// watch, because a kid flood would otherwise wake every watcher per call.
    suppressed: AtomicU64,
    /// False for inline keys and HS-only issuers: nothing could change on a refetch.
    refetchable: bool,
}

/// Everything the refresher task owns.
#[derive(Debug)]
pub struct Refresher {
    /// The cache it publishes into.
    pub cache: Arc<KeyCache>,
    /// Where the keys come from.
    pub source: KeySource,
    /// The configured `iss` strings (for the discovery issuer check).
    pub issuers: Vec<String>,
    /// The schedule.
    pub refresh: RefreshConfig,
    /// The shared HTTP client.
    pub client: Client,
}

/// Bookkeeping of refetches forced by unknown kids (and by expired keys).
#[derive(Debug, Default)]
struct Forced {
    /// When the last forced refetch starts (or started): the next starts a gap later.
    start: Option<Instant>,
    /// When each recently unknown kid asked, for its cooldown; at most [`MAX_REMEMBERED_KIDS`].
    tried: HashMap<String, Instant>,
    /// The forced fetch in flight.
    pending: Option<Pending>,
}

/// A forced fetch in flight: the generation that completes it, and the
/// deadline every request waiting on it shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    target: u64,
    deadline: Instant,
}

/// One of the [`MAX_UNKNOWN_KID_WAITERS`] places; dropping it (also when the
/// request is cancelled) frees the place.
struct WaiterSlot<'a>(&'a AtomicUsize);

impl Drop for WaiterSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl KeyCache {
    /// An empty cache for the issuer `name` whose keys come from `source`;
    /// requests wait at most `unknown_kid_wait` for a forced refetch.
    pub fn new(
        name: &str,
        refresh: &RefreshConfig,
        source: &KeySource,
        unknown_kid_wait: Duration,
    ) -> Self {
        let status = IssuerStatus {
            name: name.to_owned(),
            loaded: false,
            freshness: Freshness::NotLoaded,
            keys: 0,
            dropped_keys: 0,
            fetches: 0,
            failures: 0,
            consecutive_failures: 0,
            forced_refetches: 0,
            suppressed_refetches: 0,
            last_error: None,
            last_success: None,
        };
        Self {
            state: ArcSwap::from_pointee(Snapshot {
                keys: KeyState::NotLoaded,
                version: 0,
            }),
            status: watch::Sender::new(status),
            wake: Notify::new(),
            generation: watch::Sender::new(0),
            fetching: AtomicBool::new(false),
            forced: Mutex::new(Forced::default()),
            cooldown: refresh.unknown_kid_cooldown,
            gap: FORCED_REFETCH_GAP.min(refresh.unknown_kid_cooldown),
            wait_limit: unknown_kid_wait,
            waiters: AtomicUsize::new(0),
            suppressed: AtomicU64::new(0),
            refetchable: !matches!(source, KeySource::Inline(_) | KeySource::SecretOnly),
        }
    }

    /// The current key snapshot; cheap, lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.state.load()
    }

    /// The current status.
    pub fn status(&self) -> IssuerStatus {
        let mut status = self.status.borrow().clone();
        status.suppressed_refetches = self.suppressed.load(Ordering::Relaxed);
        status
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<IssuerStatus> {
        self.status.subscribe()
    }

    /// Asks for a refetch because a token named a `kid` we do not have, and
    /// waits for it, until the fetch's shared deadline at the latest. Returns
    /// `false` without waiting when this kid's cooldown forbids a new fetch
    /// and none is in flight; `true` when the keys are worth a second look
    /// (the fetch finished, or may have: looking is cheap).
    pub async fn refetch_for_unknown_kid(&self, kid: &str) -> bool {
        let claimed = self.claim_refetch(Some(kid));
        self.wait_for(claimed).await
    }

    /// Asks for a refetch because the keys are expired, and waits for it like
    /// [`KeyCache::refetch_for_unknown_kid`]; only the global gap limits it,
    /// since the refresher retries at most a second apart anyway.
    pub async fn refetch_while_expired(&self) -> bool {
        let claimed = self.claim_refetch(None);
        self.wait_for(claimed).await
    }

    /// Waits for a claimed fetch, bounded by its deadline and the waiting places.
    async fn wait_for(&self, claimed: Option<Pending>) -> bool {
        let Some(pending) = claimed else {
            return false;
        };
        // Beyond the few waiters, the fetch still happens (it was asked for
        // above) but this request does not hold its call slot for it.
        let Some(_slot) = self.waiter_slot() else {
            return true;
        };
        let mut generation = self.generation.subscribe();
        let done = generation.wait_for(|g| *g >= pending.target);
        // A slow IdP, or a refresher that died or hangs, must not hold
        // requests: at the deadline the caller just sees the kid as unknown.
        let _ = tokio::time::timeout_at(pending.deadline, done).await;
        true
    }

    /// Takes one of the waiting places, if one is free.
    fn waiter_slot(&self) -> Option<WaiterSlot<'_>> {
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_UNKNOWN_KID_WAITERS).then_some(n + 1)
            })
            .ok()
            .map(|_| WaiterSlot(&self.waiters))
    }

    /// Joins the forced fetch in flight, or asks for one if `kid`'s cooldown
    /// allows (`None`: expired keys, which have no per-kid cooldown). A fetch
    /// asked for within the gap after the last one starts at the gap's end.
    fn claim_refetch(&self, kid: Option<&str>) -> Option<Pending> {
        if !self.refetchable {
            return None;
        }
        let now = Instant::now();
        let current = *self.generation.borrow();
        let mut forced = self.forced.lock().unwrap_or_else(|p| p.into_inner());
        let in_flight = forced.pending.filter(|p| current < p.target);
        if let Some(kid) = kid {
            if forced
                .tried
                .get(kid)
                .is_some_and(|at| now.duration_since(*at) < self.cooldown)
            {
                // Joining a fetch in flight is free; only a new one is refused.
                if in_flight.is_none() {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                }
                return in_flight;
            }
            // Joiners are remembered too: the fetch they join answers for them.
            self.remember(&mut forced.tried, kid, now);
        }
        if in_flight.is_some() {
            return in_flight;
        }
        // A fetch already running may have started before the new kid was
        // published, so wait for the one after it.
        let target = current
            + if self.fetching.load(Ordering::Acquire) {
                2
            } else {
                1
            };
        let start = forced.start.map_or(now, |last| (last + self.gap).max(now));
        let pending = Pending {
            target,
            deadline: now + self.wait_limit,
        };
        forced.start = Some(start);
        forced.pending = Some(pending);
        self.status.send_modify(|s| s.forced_refetches += 1);
        self.wake.notify_one();
        Some(pending)
    }

    /// Starts `kid`'s cooldown, forgetting expired kids (and, when the set is
    /// full of live ones, the oldest) so that the set stays bounded.
    fn remember(&self, tried: &mut HashMap<String, Instant>, kid: &str, now: Instant) {
        if tried.len() >= MAX_REMEMBERED_KIDS {
            tried.retain(|_, at| now.duration_since(*at) < self.cooldown);
        }
        if tried.len() >= MAX_REMEMBERED_KIDS
            && let Some(oldest) = tried
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(kid, _)| kid.clone())
        {
            tried.remove(&oldest);
        }
        tried.insert(kid.to_owned(), now);
    }

    /// When the forced refetch asked for last may start (the global gap).
    fn forced_start(&self) -> Option<Instant> {
        self.forced.lock().unwrap_or_else(|p| p.into_inner()).start
    }

    /// Publishes `keys`, with the next version unless they are the keys
    /// already published (the same document again, or still expired).
    /// Only the refresher publishes, so the load and the store cannot race.
    fn publish(&self, keys: KeyState) {
        let current = self.state.load();
        let unchanged = match (&current.keys, &keys) {
            (KeyState::Loaded(old), KeyState::Loaded(new)) => old.same_document(new),
            (KeyState::Expired, KeyState::Expired) => true,
            _ => false,
        };
        let version = if unchanged {
            current.version
        } else {
            current.version + 1
        };
        self.state.store(Arc::new(Snapshot { keys, version }));
    }
}

impl Refresher {
    /// Runs until the task is aborted: fetch, publish, sleep, repeat.
    pub async fn run(self) {
        let limits = FetchLimits {
            timeout: self.refresh.fetch_timeout,
            max_body_size: self.refresh.max_body_size,
        };
        let mut next = Instant::now();
        let mut last_success: Option<Instant> = None;
        let mut consecutive: u32 = 0;
        loop {
            tokio::select! {
                () = sleep_until(next) => {}
                () = self.cache.wake.notified() => {
                    // A forced refetch asked for within the gap waits for its end.
                    if let Some(start) = self.cache.forced_start()
                        && start > Instant::now()
                    {
                        next = next.min(start);
                        continue;
                    }
                }
            }
            self.cache.fetching.store(true, Ordering::Release);
            let outcome = fetch::fetch(&self.client, &self.source, &self.issuers, &limits).await;
            let now = Instant::now();
            next = match outcome {
                Ok(fetched) => {
                    consecutive = 0;
                    last_success = Some(now);
                    now + self.on_success(fetched)
                }
                Err(error) => {
                    consecutive = consecutive.saturating_add(1);
                    let expired = last_success
                        .is_some_and(|t| now.duration_since(t) >= self.refresh.max_stale);
                    if expired {
                        self.cache.publish(KeyState::Expired);
                    }
                    self.cache.status.send_modify(|s| {
                        s.fetches += 1;
                        s.failures += 1;
                        s.consecutive_failures = consecutive;
                        s.last_error = Some(error.to_string());
                        if s.loaded {
                            s.freshness = if expired {
                                Freshness::Expired
                            } else {
                                Freshness::Stale
                            };
                        }
                    });
                    tracing::warn!(issuer = %self.cache.status.borrow().name, %error, consecutive, "key refresh failed");
                    let retry = now + retry_delay(consecutive, expired, &self.refresh, jitter());
                    // Wake up in time to expire the stale keys at the deadline.
                    match last_success.map(|t| t + self.refresh.max_stale) {
                        Some(deadline) if deadline > now && deadline < retry => deadline,
                        _ => retry,
                    }
                }
            };
            self.cache.fetching.store(false, Ordering::Release);
            self.cache.generation.send_modify(|g| *g += 1);
            if matches!(self.source, KeySource::Inline(_) | KeySource::SecretOnly)
                && last_success.is_some()
            {
                // A key set that cannot change needs no refresher.
                return;
            }
        }
    }

    /// Publishes a fetched set; returns the delay until the next refresh.
    fn on_success(&self, fetched: Fetched) -> Duration {
        let (keys, dropped) = (fetched.keys.len(), fetched.keys.dropped());
        self.cache.publish(KeyState::Loaded(fetched.keys));
        self.cache.status.send_modify(|s| {
            s.loaded = true;
            s.freshness = Freshness::Fresh;
            s.keys = keys;
            s.dropped_keys = dropped;
            s.fetches += 1;
            s.consecutive_failures = 0;
            s.last_error = None;
            s.last_success = Some(Instant::now());
        });
        tracing::debug!(issuer = %self.cache.status.borrow().name, keys, dropped, "keys refreshed");
        refresh_delay(fetched.max_age, &self.refresh)
    }
}

/// The delay before the next scheduled refresh: the server's `max-age`
/// clamped to `[min_refresh, max_refresh]`, or `default_ttl` without one.
pub fn refresh_delay(max_age: Option<Duration>, refresh: &RefreshConfig) -> Duration {
    max_age.map_or(refresh.default_ttl, |age| {
        age.clamp(refresh.min_refresh, refresh.max_refresh)
    })
}

/// The retry delay after `failures` consecutive failures: `backoff_initial`
/// doubled per failure, capped at `backoff_max`, with "equal jitter" (half
/// fixed, half random) so replicas that failed together do not retry together.
pub fn backoff(failures: u32, refresh: &RefreshConfig, random: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(30);
    let base = refresh
        .backoff_initial
        .saturating_mul(1u32 << doublings)
        .min(refresh.backoff_max);
    let half = base / 2;
    let spread = half.mul_f64(f64::from(random) / f64::from(u32::MAX));
    half + spread
}

/// The delay before the next attempt after `failures` consecutive failures:
/// the backoff, capped at [`EXPIRED_RETRY_MAX`] while the keys are expired
/// (every call is refused then, so a long backoff would only prolong the
/// outage past the IdP's recovery; one request a second is nothing to an IdP).
pub fn retry_delay(failures: u32, expired: bool, refresh: &RefreshConfig, random: u32) -> Duration {
    if expired {
        let capped = RefreshConfig {
            backoff_initial: refresh.backoff_initial.min(EXPIRED_RETRY_MAX),
            backoff_max: refresh.backoff_max.min(EXPIRED_RETRY_MAX),
            ..refresh.clone()
        };
        backoff(failures, &capped, random)
    } else {
        backoff(failures, refresh, random)
    }
}

/// A random jitter draw; without OS randomness, the midpoint is fine.
fn jitter() -> u32 {
    getrandom::u32().unwrap_or(u32::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresh() -> RefreshConfig {
        RefreshConfig::default()
    }

    #[test]
    fn refresh_delay_clamps_max_age() {
        let secs = Duration::from_secs;
        let cases = [
            (None, secs(600)),
            (Some(secs(0)), secs(300)),
            (Some(secs(60)), secs(300)),
            (Some(secs(3600)), secs(3600)),
            (Some(secs(7 * 86_400)), secs(86_400)),
        ];
        for (max_age, expected) in cases {
            assert_eq!(refresh_delay(max_age, &refresh()), expected, "{max_age:?}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let secs = Duration::from_secs_f64;
        let cases = [
            (1, 0, secs(0.5)),
            (1, u32::MAX, secs(1.0)),
            (2, 0, secs(1.0)),
            (3, u32::MAX, secs(4.0)),
            (6, u32::MAX, secs(32.0)),
            (7, u32::MAX, secs(60.0)),
            (7, 0, secs(30.0)),
            (u32::MAX, u32::MAX, secs(60.0)),
        ];
        for (failures, random, expected) in cases {
            let got = backoff(failures, &refresh(), random);
            assert!(
                (got.as_secs_f64() - expected.as_secs_f64()).abs() < 1e-6,
                "{failures} {random}: {got:?}"
            );
        }
    }

    #[test]
    fn retries_are_at_most_a_second_apart_while_expired() {
        let secs = Duration::from_secs_f64;
        let cases = [
            (1, false, u32::MAX, secs(1.0)),
            (7, false, u32::MAX, secs(60.0)),
            (7, true, u32::MAX, secs(1.0)),
            (7, true, 0, secs(0.5)),
            (u32::MAX, true, u32::MAX, secs(1.0)),
        ];
        for (failures, expired, random, expected) in cases {
            let got = retry_delay(failures, expired, &refresh(), random);
            assert!(
                (got.as_secs_f64() - expected.as_secs_f64()).abs() < 1e-6,
                "{failures} {expired} {random}: {got:?}"
            );
        }
    }

    #[test]
    fn the_key_set_version_moves_only_when_the_keys_change() {
        let source = KeySource::File("/nonexistent".into());
        let cache = KeyCache::new("t", &refresh(), &source, Duration::ZERO);
        // Key bytes are checked at verify time, so any P-256 coordinates load.
        let set = |kid: &str| {
            let doc = format!(
                r#"{{"keys": [{{"kty": "EC", "kid": "{kid}", "crv": "P-256", "x": "AAAA", "y": "AAAA"}}]}}"#
            );
            KeyState::Loaded(KeySet::parse(doc.as_bytes()).unwrap())
        };
        let steps = [
            (set("a"), 1, "the first keys"),
            (set("a"), 1, "the same document again"),
            (set("b"), 2, "a rotation"),
            (KeyState::Expired, 3, "the keys expire"),
            (KeyState::Expired, 3, "still expired"),
            (set("b"), 4, "the same keys, trusted again"),
        ];
        assert_eq!(cache.load().version, 0);
        for (keys, version, what) in steps {
            cache.publish(keys);
            assert_eq!(cache.load().version, version, "{what}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_refetches_are_coalesced_and_rate_limited_per_kid() {
        let source = KeySource::File("/nonexistent".into());
        let wait = Duration::from_secs(1);
        let cache = Arc::new(KeyCache::new("t", &refresh(), &source, wait));
        let fixed = KeyCache::new("t", &refresh(), &KeySource::Inline("{}".into()), wait);
        let target = |c: &KeyCache, kid: &str| c.claim_refetch(Some(kid)).map(|p| p.target);
        assert_eq!(target(&fixed, "a"), None, "inline keys cannot change");
        let t0 = Instant::now();
        // No refresher runs: a forced fetch is claimed, then simulated done.
        let first = cache.claim_refetch(Some("a"));
        assert_eq!(first.map(|p| p.target), Some(1));
        assert_eq!(
            cache.claim_refetch(Some("a")),
            first,
            "joins the fetch in flight, and its deadline"
        );
        assert_eq!(cache.claim_refetch(Some("b")), first, "so does another kid");
        cache.generation.send_modify(|g| *g += 1);
        assert_eq!(target(&cache, "a"), None, "a's cooldown after the fetch");
        assert_eq!(target(&cache, "b"), None, "b joined it, so b's too");
        // A kid not tried yet forces a fetch (a rotation right after another),
        // which starts at the end of the global gap.
        assert_eq!(target(&cache, "c"), Some(2));
        assert_eq!(cache.forced_start(), Some(t0 + FORCED_REFETCH_GAP));
        cache.generation.send_modify(|g| *g += 1);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(target(&cache, "a"), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(target(&cache, "a"), Some(3), "a's cooldown is over");
        assert_eq!(
            cache.forced_start(),
            Some(Instant::now()),
            "the gap is long past"
        );
        assert_eq!(cache.status().forced_refetches, 3);
        assert_eq!(cache.status().suppressed_refetches, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_remembered_kids_are_bounded() {
        let source = KeySource::File("/nonexistent".into());
        let cache = KeyCache::new("t", &refresh(), &source, Duration::ZERO);
        for i in 0..MAX_REMEMBERED_KIDS + 10 {
            cache.claim_refetch(Some(&format!("kid-{i}")));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let forced = cache.forced.lock().unwrap();
        assert_eq!(forced.tried.len(), MAX_REMEMBERED_KIDS);
        assert!(
            !forced.tried.contains_key("kid-0"),
            "the oldest is forgotten"
        );
        assert!(
            forced
                .tried
                .contains_key(&format!("kid-{}", MAX_REMEMBERED_KIDS + 9))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_waits_share_one_deadline_and_few_places() {
        let source = KeySource::File("/nonexistent".into());
        let cache = Arc::new(KeyCache::new(
            "t",
            &refresh(),
            &source,
            Duration::from_secs(1),
        ));
        // No refresher runs, so the fetch never completes: every wait ends at
        // the deadline set when the fetch was asked for, not later.
        let start = Instant::now();
        let spawn = |cache: &Arc<KeyCache>| {
            let cache = Arc::clone(cache);
            tokio::spawn(async move { cache.refetch_for_unknown_kid("junk").await })
        };
        let mut waiters: Vec<_> = (1..MAX_UNKNOWN_KID_WAITERS)
            .map(|_| spawn(&cache))
            .collect();
        let settle = |cache: Arc<KeyCache>, n: usize| async move {
            while cache.waiters.load(Ordering::Acquire) < n {
                tokio::task::yield_now().await;
            }
        };
        settle(Arc::clone(&cache), MAX_UNKNOWN_KID_WAITERS - 1).await;
        tokio::time::advance(Duration::from_millis(600)).await;
        // A late joiner takes the last place, and shares the first one's deadline.
        let late = spawn(&cache);
        settle(Arc::clone(&cache), MAX_UNKNOWN_KID_WAITERS).await;
        // Every place is taken: one more request is answered at once.
        let extra = Instant::now();
        assert!(cache.refetch_for_unknown_kid("junk").await);
        assert_eq!(Instant::now(), extra, "no place left, no wait");
        waiters.push(late);
        for waiter in waiters {
            assert!(waiter.await.unwrap());
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(
            cache.waiters.load(Ordering::Acquire),
            0,
            "places are given back"
        );
        assert_eq!(cache.status().forced_refetches, 1);
    }
}
