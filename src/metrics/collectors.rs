//! Metrics read at scrape time rather than counted on the request path: the
//! process (`/proc/self`, and the log writer's dropped lines), each
//! issuer's key state and the verified-JWT cache's size.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};

/// One issuer's key state, as its refresher reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerState {
    /// The issuer's configured name.
    pub name: String,
    /// Whether keys have loaded at least once.
    pub loaded: bool,
    /// Whether the keys in use are past their refresh time (served stale).
    pub stale: bool,
    /// Usable keys in the current set.
    pub keys: u64,
    /// Successful fetches so far.
    pub fetches_ok: u64,
    /// Failed fetches so far.
    pub fetches_failed: u64,
    /// Refetches an unknown `kid` triggered.
    pub unknown_kid_refetches: u64,
    /// Unknown-`kid` refetches the rate limit suppressed.
    pub refetches_suppressed: u64,
    /// When the last fetch succeeded, unix seconds.
    pub last_success_unix: Option<f64>,
    /// How old the keys in use are, seconds.
    pub key_age_seconds: Option<f64>,
}

/// The verified-JWT cache's size, as the authenticator reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JwtCacheState {
    /// Entries held now.
    pub entries: u64,
    /// The most entries it holds (0: the cache is off).
    pub capacity: u64,
    /// Entries pushed out by the bound since the start.
    pub evictions: u64,
}

/// The limiter's state at a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsState {
    /// Calls in the pipeline now.
    pub in_flight: u64,
    /// `limits.max_in_flight`.
    pub max_in_flight: u64,
    /// Keys the in-process limit store holds.
    pub local_keys: u64,
    /// In cluster mode, whether Redis answered the last check.
    pub redis_up: Option<bool>,
}

/// The facts' caches and listeners at a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FactsState {
    /// Each fact's name, cached entries and the most it holds.
    pub caches: Vec<(String, u64, u64)>,
    /// Each database with notify channels, and whether its listener is connected.
    pub listeners: Vec<(String, bool)>,
}

/// Reports every issuer's key state; the server implements it over the authenticator.
pub trait IssuerSnapshot: std::fmt::Debug + Send + Sync + 'static {
    /// The state of every configured issuer, in config order.
    fn issuers(&self) -> Vec<IssuerState>;

    /// The verified-JWT cache's size; all zero when it is off.
    fn jwt_cache(&self) -> JwtCacheState {
        JwtCacheState::default()
    }

    /// The limiter's state; all zero without one.
    fn limits(&self) -> LimitsState {
        LimitsState::default()
    }

    /// The facts' caches and listeners; empty without facts.
    fn facts(&self) -> FactsState {
        FactsState::default()
    }
}

/// Counts the log lines the writer dropped, for a process whose logging was
/// set up to drop lines when its queue is full (`logging.overflow = "drop"`).
type DroppedLines = Box<dyn Fn() -> u64 + Send + Sync>;

/// The log writer's dropped-lines counter. Process-wide like the subscriber
/// it belongs to, which is installed once, before any registry exists.
static LOG_DROPS: OnceLock<DroppedLines> = OnceLock::new();

/// Reports the log writer's dropped lines as `tokengate_log_lines_dropped_total`
/// from now on; the first call wins, as the first subscriber installed does.
pub fn watch_log_drops(dropped: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_DROPS.set(Box::new(dropped));
}

/// The standard process metrics, from `/proc/self`.
#[derive(Debug)]
pub(super) struct Process {
    start_time: f64,
}

/// The JWKS metrics, from an [`IssuerSnapshot`].
#[derive(Debug)]
pub(super) struct Jwks {
    source: Arc<dyn IssuerSnapshot>,
}

impl Process {
    pub(super) fn new() -> Self {
        Self {
            start_time: process_start_time().unwrap_or(0.0),
        }
    }
}

impl Jwks {
    pub(super) fn new(source: Arc<dyn IssuerSnapshot>) -> Self {
        Self { source }
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stat = read_stat();
        let gauge = |encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: f64| {
            let metric = ConstGauge::new(value);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(metric_encoder)
        };
        if let Some(stat) = &stat {
            let cpu = ConstCounter::new(stat.cpu_seconds);
            let metric_encoder = encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, seconds",
                None,
                MetricType::Counter,
            )?;
            cpu.encode(metric_encoder)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size, bytes",
                stat.rss_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size, bytes",
                stat.vsize_bytes,
            )?;
        }
        if let Some(fds) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                fds,
            )?;
        }
        if let Some(max) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "The open file descriptor limit",
                max,
            )?;
        }
        // Always present (0 when lines are never dropped), so an alert on it
        // needs no `absent()`.
        let dropped = ConstCounter::new(LOG_DROPS.get().map_or(0, |dropped| dropped()));
        let metric_encoder = encoder.encode_descriptor(
            "tokengate_log_lines_dropped",
            "Log and audit lines dropped because the log writer's queue was full",
            None,
            MetricType::Counter,
        )?;
        dropped.encode(metric_encoder)?;
        gauge(
            &mut encoder,
            "process_start_time_seconds",
            "When the process started, unix seconds",
            self.start_time,
        )
    }
}

impl Collector for Jwks {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let issuers = self.source.issuers();
        let gauges: [(&str, &str, StateValue); 5] = [
            (
                "tokengate_jwks_keys",
                "Usable keys in the issuer's current key set",
                |s| Some(s.keys as f64),
            ),
            (
                "tokengate_jwks_loaded",
                "1 once the issuer's keys have loaded",
                |s| Some(f64::from(u8::from(s.loaded))),
            ),
            (
                "tokengate_jwks_stale",
                "1 while the issuer's keys are served past their refresh time",
                |s| Some(f64::from(u8::from(s.stale))),
            ),
            (
                "tokengate_jwks_last_success_timestamp_seconds",
                "When the issuer's keys were last fetched successfully, unix seconds",
                |s| s.last_success_unix,
            ),
            (
                "tokengate_jwks_key_age_seconds",
                "How old the issuer's keys in use are, seconds",
                |s| s.key_age_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let family = Family::<
                Vec<(&'static str, String)>,
                Gauge<f64, std::sync::atomic::AtomicU64>,
            >::default();
            for state in &issuers {
                if let Some(v) = value(state) {
                    family
                        .get_or_create(&vec![("issuer", state.name.clone())])
                        .set(v);
                }
            }
            let metric_encoder = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            family.encode(metric_encoder)?;
        }
        let fetches = Family::<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::counter::Counter,
        >::default();
        let refetches = Family::<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::counter::Counter,
        >::default();
        let suppressed = Family::<
            Vec<(&'static str, String)>,
            prometheus_client::metrics::counter::Counter,
        >::default();
        for state in &issuers {
            let issuer = state.name.clone();
            fetches
                .get_or_create(&vec![("issuer", issuer.clone()), ("outcome", "ok".into())])
                .inc_by(state.fetches_ok);
            fetches
                .get_or_create(&vec![
                    ("issuer", issuer.clone()),
                    ("outcome", "error".into()),
                ])
                .inc_by(state.fetches_failed);
            refetches
                .get_or_create(&vec![("issuer", issuer.clone())])
                .inc_by(state.unknown_kid_refetches);
            suppressed
                .get_or_create(&vec![("issuer", issuer)])
                .inc_by(state.refetches_suppressed);
        }
        let counters = [
            (
                "tokengate_jwks_fetches",
                "Key set fetches by outcome",
                &fetches,
            ),
            (
                "tokengate_jwks_unknown_kid_refetches",
                "Refetches an unknown kid triggered",
                &refetches,
            ),
            (
                "tokengate_jwks_refetches_suppressed",
                "Unknown-kid refetches the rate limit suppressed",
                &suppressed,
            ),
        ];
        for (name, help, family) in counters {
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            family.encode(metric_encoder)?;
        }
        let cache = self.source.jwt_cache();
        for (name, help, value) in [
            (
                "tokengate_jwt_cache_entries",
                "Verified JWTs held in the cache",
                cache.entries,
            ),
            (
                "tokengate_jwt_cache_capacity",
                "The most verified JWTs the cache holds (0: off)",
                cache.capacity,
            ),
        ] {
            let gauge = ConstGauge::new(value as f64);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric_encoder)?;
        }
        let evictions = ConstCounter::new(cache.evictions);
        let metric_encoder = encoder.encode_descriptor(
            "tokengate_jwt_cache_evictions",
            "Verified JWTs the cache's bound pushed out",
            None,
            MetricType::Counter,
        )?;
        evictions.encode(metric_encoder)?;
        let limits = self.source.limits();
        let mut gauges = vec![
            (
                "tokengate_calls_in_flight",
                "Calls in the pipeline now",
                limits.in_flight,
            ),
            (
                "tokengate_calls_in_flight_limit",
                "limits.max_in_flight: beyond it calls are shed (RESOURCE_EXHAUSTED overloaded)",
                limits.max_in_flight,
            ),
            (
                "tokengate_rate_limit_local_keys",
                "Keys held in the in-process rate limit store",
                limits.local_keys,
            ),
        ];
        for (name, help, value) in gauges.drain(..) {
            let gauge = ConstGauge::new(value as f64);
            let metric_encoder =
                encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric_encoder)?;
        }
        // Declared in local mode too, without a sample, so the family (and
        // an alert on it) is the same on every replica's /metrics.
        let metric_encoder = encoder.encode_descriptor(
            "tokengate_rate_limit_redis_up",
            "1 while Redis answers the rate limit checks, 0 while limits are in their on_redis_failure mode; no sample without [limits.redis]",
            None,
            MetricType::Gauge,
        )?;
        if let Some(up) = limits.redis_up {
            ConstGauge::new(f64::from(u8::from(up))).encode(metric_encoder)?;
        }
        let facts = self.source.facts();
        type Gauges = Family<Vec<(&'static str, String)>, Gauge<f64, std::sync::atomic::AtomicU64>>;
        let (entries, capacity, listening) =
            (Gauges::default(), Gauges::default(), Gauges::default());
        for (fact, held, most) in &facts.caches {
            entries
                .get_or_create(&vec![("fact", fact.clone())])
                .set(*held as f64);
            capacity
                .get_or_create(&vec![("fact", fact.clone())])
                .set(*most as f64);
        }
        for (database, up) in &facts.listeners {
            listening
                .get_or_create(&vec![("database", database.clone())])
                .set(f64::from(u8::from(*up)));
        }
        for (name, help, family) in [
            (
                "tokengate_fact_cache_entries",
                "Entries a fact's cache holds",
                &entries,
            ),
            (
                "tokengate_fact_cache_capacity",
                "The most entries a fact's cache holds",
                &capacity,
            ),
            (
                "tokengate_fact_listener_up",
                "1 while a database's LISTEN connection is up (cached facts on its notify channels are dropped on change), 0 while it reconnects (they live at most their ttl)",
                &listening,
            ),
        ] {
            let metric_encoder = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            family.encode(metric_encoder)?;
        }
        Ok(())
    }
}

/// Reads one gauge's value out of an issuer's state.
type StateValue = fn(&IssuerState) -> Option<f64>;

/// What `/proc/self/stat` says, converted.
struct Stat {
    cpu_seconds: f64,
    vsize_bytes: f64,
    rss_bytes: f64,
}

/// The clock ticks per second of `/proc` times; Linux has used 100 on every
/// architecture tokengate runs on (`sysconf(_SC_CLK_TCK)` needs libc).
const CLOCK_TICKS: f64 = 100.0;
/// The page size for `rss`; 4 KiB on x86_64 and the usual aarch64 kernels.
const PAGE_SIZE: f64 = 4096.0;

fn stat_fields() -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, in parentheses, may hold spaces: split after it.
    let rest = text.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn read_stat() -> Option<Stat> {
    let fields = stat_fields()?;
    // After the name: state is field 3 of the man page, at index 0 here.
    let number = |man_index: usize| fields.get(man_index - 3)?.parse::<f64>().ok();
    Some(Stat {
        cpu_seconds: (number(14)? + number(15)?) / CLOCK_TICKS,
        vsize_bytes: number(23)?,
        rss_bytes: number(24)? * PAGE_SIZE,
    })
}

fn process_start_time() -> Option<f64> {
    let fields = stat_fields()?;
    let start_ticks = fields.get(22 - 3)?.parse::<f64>().ok()?;
    let uptime = std::fs::read_to_string("/proc/stat").ok()?;
    let boot = uptime
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    Some(boot + start_ticks / CLOCK_TICKS)
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_reads_itself() {
        let stat = read_stat().unwrap();
        assert!(stat.rss_bytes > 1_000_000.0, "{}", stat.rss_bytes);
        assert!(stat.cpu_seconds >= 0.0);
        assert!(open_fds().unwrap() >= 3.0);
        assert!(max_fds().unwrap() >= 64.0);
        let start = process_start_time().unwrap();
        assert!(start > 1_577_836_800.0, "{start}");
    }
}
