//! One fact's cache: its inputs to the value (or the failure) they gave, each
//! entry expiring by its kind (`ttl`, `negative_ttl` for an empty result,
//! `error_ttl` for a failure), bounded in entries.
//!
//! quick_cache for the same reasons as the verified-JWT cache (sharded, no
//! global lock, a flood of one-shot keys cannot push out the keys in use),
//! and for its placeholder: concurrent misses of one key wait for the one
//! fetch in flight instead of each asking the database.
//!
//! Invalidation (a PostgreSQL notification) removes one key or clears the
//! cache. quick_cache drops a key's pending placeholder with it, so a fetch
//! that started before the change cannot store what it read (it may predate
//! the change), while fetches of other keys are not disturbed.

use std::future::Future;
use std::sync::Arc;

use crate::domain::ClaimValue;

use super::{FactSettings, FetchOutcome};

/// A fact's cache.
pub(crate) struct Cache {
    inner: Arc<Inner>,
    ttl_ns: u64,
    negative_ttl_ns: u64,
    error_ttl_ns: u64,
}

/// The part an invalidator shares.
struct Inner {
    entries: quick_cache::sync::Cache<Vec<String>, Entry>,
}

/// A handle that drops cached entries when the data behind them changes.
#[derive(Clone)]
pub(crate) struct Invalidator {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Entry {
    value: Result<Arc<ClaimValue>, Arc<str>>,
    expires_ns: u64,
}

/// A fact's cache size.
#[derive(Debug, Clone)]
pub struct CacheStats {
    /// The fact's name.
    pub name: Arc<str>,
    /// The entries held.
    pub entries: usize,
    /// The most it holds.
    pub capacity: usize,
}

impl Cache {
    pub(crate) fn new(settings: &FactSettings) -> Self {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            inner: Arc::new(Inner {
                entries: quick_cache::sync::Cache::new(settings.max_entries.max(1)),
            }),
            ttl_ns: nanos(settings.ttl),
            negative_ttl_ns: nanos(settings.negative_ttl),
            error_ttl_ns: nanos(settings.error_ttl),
        }
    }

    pub(crate) fn invalidator(&self) -> Invalidator {
        Invalidator {
            inner: Arc::clone(&self.inner),
        }
    }

    pub(crate) fn stats(&self, name: &Arc<str>) -> CacheStats {
        CacheStats {
            name: Arc::clone(name),
            entries: self.inner.entries.len(),
            capacity: usize::try_from(self.inner.entries.capacity()).unwrap_or(usize::MAX),
        }
    }

    /// The value for `inputs` at `now_ns`: a live entry, else `fetch`'s
    /// answer, stored for as long as its kind is kept.
    ///
    /// A caller that finds another's fetch of the same key in flight waits
    /// for it at most `wait` (the fact's timeout): were that fetch's answer
    /// not stored (a failure with `error_ttl = 0`), waiters would otherwise
    /// fetch one after another, each waiting for all before it.
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        inputs: &[String],
        now_ns: u64,
        wait: std::time::Duration,
        fetch: F,
    ) -> (Result<Arc<ClaimValue>, String>, FetchOutcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (Result<ClaimValue, String>, FetchOutcome)>,
    {
        // Nothing that succeeds is kept: no single flight either, or every
        // caller of a hot key would queue behind the one fetch in flight.
        if self.ttl_ns == 0 && self.negative_ttl_ns == 0 {
            let (value, outcome) = fetch().await;
            return (value.map(Arc::new), outcome);
        }
        // A live entry is answered at once: no timer, no placeholder.
        if let Some(entry) = self.inner.entries.get(inputs)
            && entry.expires_ns > now_ns
        {
            return match entry.value {
                Ok(value) => (Ok(value), FetchOutcome::Hit),
                Err(reason) => (Err(reason.to_string()), FetchOutcome::ErrorHit),
            };
        }
        let guard = loop {
            let found =
                tokio::time::timeout(wait, self.inner.entries.get_value_or_guard_async(inputs))
                    .await;
            let Ok(found) = found else {
                return (
                    Err("timed out waiting for the same fact's fetch in flight".to_owned()),
                    FetchOutcome::Timeout,
                );
            };
            match found {
                Ok(entry) if entry.expires_ns > now_ns => {
                    return match entry.value {
                        Ok(value) => (Ok(value), FetchOutcome::Hit),
                        Err(reason) => (Err(reason.to_string()), FetchOutcome::ErrorHit),
                    };
                }
                // Expired: dropped (unless a fresher one replaced it), then asked again.
                Ok(_) => {
                    self.inner
                        .entries
                        .remove_if(inputs, |e| e.expires_ns <= now_ns);
                }
                Err(guard) => break guard,
            }
        };
        let (value, outcome) = fetch().await;
        let value = value.map(Arc::new);
        let keep_ns = match &value {
            Ok(v) if is_empty(v) => self.negative_ttl_ns,
            Ok(_) => self.ttl_ns,
            Err(_) => self.error_ttl_ns,
        };
        // An invalidation while it was read removed the placeholder, and the
        // insert fails: the next caller fetches afresh.
        if keep_ns > 0 {
            let entry = Entry {
                value: value.clone().map_err(|e| Arc::from(e.as_str())),
                expires_ns: now_ns.saturating_add(keep_ns),
            };
            let _ = guard.insert(entry);
        }
        (value, outcome)
    }
}

impl Invalidator {
    /// Drops every entry.
    pub(crate) fn clear(&self) {
        self.inner.entries.clear();
    }

    /// Drops the entry of `inputs`.
    pub(crate) fn remove(&self, inputs: &[String]) {
        self.inner.entries.remove(inputs);
    }
}

/// An empty result: no rows, `null`, `[]`, `{}`.
fn is_empty(value: &ClaimValue) -> bool {
    match value {
        ClaimValue::Null => true,
        ClaimValue::Array(items) => items.is_empty(),
        ClaimValue::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{HttpMethod, HttpSettings, SourceSettings, UrlTemplate};
    use std::time::Duration;

    fn settings(max_entries: usize) -> FactSettings {
        FactSettings {
            name: Arc::from("f"),
            source: SourceSettings::Http(HttpSettings {
                url: UrlTemplate::parse("http://127.0.0.1:1/{caller.subject}").unwrap(),
                method: HttpMethod::Get,
                headers: Vec::new(),
                body: Vec::new(),
                secret: None,
                secret_header: "authorization".into(),
                secret_prefix: "Bearer ".into(),
                ca_pem: None,
                max_response_bytes: 1024,
            }),
            timeout: Duration::from_millis(100),
            ttl: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(2),
            error_ttl: Duration::from_secs(1),
            max_entries,
        }
    }

    async fn get(
        cache: &Cache,
        key: &str,
        now: u64,
        answer: Result<ClaimValue, String>,
    ) -> FetchOutcome {
        let outcome = if answer.is_ok() {
            FetchOutcome::Fetched
        } else {
            FetchOutcome::Failed
        };
        cache
            .get_or_fetch(
                &[key.to_owned()],
                now,
                Duration::from_secs(1),
                || async move { (answer, outcome) },
            )
            .await
            .1
    }

    const S: u64 = 1_000_000_000;

    #[tokio::test]
    async fn entries_expire_by_kind_and_invalidation_drops_them() {
        let cache = Cache::new(&settings(100));
        let row = || Ok(ClaimValue::Array(vec![ClaimValue::Int(1)]));
        let empty = || Ok(ClaimValue::Array(vec![]));
        assert_eq!(get(&cache, "a", 0, row()).await, FetchOutcome::Fetched);
        assert_eq!(get(&cache, "a", 9 * S, row()).await, FetchOutcome::Hit);
        assert_eq!(get(&cache, "a", 10 * S, row()).await, FetchOutcome::Fetched);
        assert_eq!(get(&cache, "e", 0, empty()).await, FetchOutcome::Fetched);
        assert_eq!(get(&cache, "e", S, empty()).await, FetchOutcome::Hit);
        assert_eq!(
            get(&cache, "e", 2 * S, empty()).await,
            FetchOutcome::Fetched
        );
        assert_eq!(
            get(&cache, "x", 0, Err("down".into())).await,
            FetchOutcome::Failed
        );
        assert_eq!(get(&cache, "x", S / 2, row()).await, FetchOutcome::ErrorHit);
        assert_eq!(get(&cache, "x", S, row()).await, FetchOutcome::Fetched);
        cache.invalidator().remove(&["a".to_owned()]);
        assert_eq!(get(&cache, "a", 11 * S, row()).await, FetchOutcome::Fetched);
        assert_eq!(get(&cache, "x", 2 * S, row()).await, FetchOutcome::Hit);
        cache.invalidator().clear();
        assert_eq!(get(&cache, "x", 2 * S, row()).await, FetchOutcome::Fetched);
    }

    #[tokio::test]
    async fn a_caller_waits_for_a_fetch_in_flight_at_most_its_timeout() {
        let mut unstored = settings(8);
        unstored.error_ttl = Duration::ZERO;
        let cache = Arc::new(Cache::new(&unstored));
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .get_or_fetch(
                        &["k".to_owned()],
                        0,
                        Duration::from_secs(5),
                        || async move {
                            let _ = held.await;
                            (Err("down".to_owned()), FetchOutcome::Failed)
                        },
                    )
                    .await
                    .1
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The key's fetch is in flight and never answers in time: this
        // caller gives up after its own wait, without fetching.
        let key = ["k".to_owned()];
        let waiter = cache.get_or_fetch(&key, 0, Duration::from_millis(50), || async {
            (Ok(ClaimValue::Null), FetchOutcome::Fetched)
        });
        let (value, outcome) = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("the waiter gives up on its own wait");
        assert_eq!(outcome, FetchOutcome::Timeout);
        assert!(value.unwrap_err().contains("in flight"));
        let _ = release.send(());
        assert_eq!(first.await.unwrap(), FetchOutcome::Failed);
    }

    /// A fetch held until `release`, answering `value`.
    fn held_fetch(
        cache: &Arc<Cache>,
        key: &'static str,
        value: i64,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<FetchOutcome>,
    ) {
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let cache = Arc::clone(cache);
        let task = tokio::spawn(async move {
            cache
                .get_or_fetch(
                    &[key.to_owned()],
                    0,
                    Duration::from_secs(5),
                    || async move {
                        let _ = held.await;
                        (
                            Ok(ClaimValue::Array(vec![ClaimValue::Int(value)])),
                            FetchOutcome::Fetched,
                        )
                    },
                )
                .await
                .1
        });
        (release, task)
    }

    #[tokio::test]
    async fn an_invalidation_during_a_fetch_keeps_its_answer_out_and_spares_other_keys() {
        let cache = Arc::new(Cache::new(&settings(8)));
        let (release_a, a) = held_fetch(&cache, "a", 1);
        let (release_b, b) = held_fetch(&cache, "b", 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // "a" changed while it was being read; "b" did not.
        cache.invalidator().remove(&["a".to_owned()]);
        let _ = release_a.send(());
        let _ = release_b.send(());
        assert_eq!(a.await.unwrap(), FetchOutcome::Fetched);
        assert_eq!(b.await.unwrap(), FetchOutcome::Fetched);
        let row = || Ok(ClaimValue::Array(vec![ClaimValue::Int(3)]));
        assert_eq!(get(&cache, "a", S, row()).await, FetchOutcome::Fetched);
        assert_eq!(get(&cache, "b", S, row()).await, FetchOutcome::Hit);
    }

    #[tokio::test]
    async fn without_a_ttl_callers_of_one_key_do_not_queue() {
        let mut uncached = settings(8);
        uncached.ttl = Duration::ZERO;
        uncached.negative_ttl = Duration::ZERO;
        let cache = Arc::new(Cache::new(&uncached));
        let (release, first) = held_fetch(&cache, "k", 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The first fetch is still in flight: this one does not wait for it.
        let key = ["k".to_owned()];
        let second = cache.get_or_fetch(&key, 0, Duration::from_millis(50), || async {
            (Ok(ClaimValue::Null), FetchOutcome::Fetched)
        });
        let (_, outcome) = tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("a second caller does not queue behind the first");
        assert_eq!(outcome, FetchOutcome::Fetched);
        let _ = release.send(());
        assert_eq!(first.await.unwrap(), FetchOutcome::Fetched);
    }

    #[tokio::test]
    async fn a_flood_of_keys_stays_within_the_bound() {
        let cache = Cache::new(&settings(64));
        for i in 0..10_000 {
            get(&cache, &i.to_string(), 0, Ok(ClaimValue::Int(i))).await;
        }
        let stats = cache.stats(&Arc::from("f"));
        assert!(stats.entries <= 64, "{}", stats.entries);
    }
}
