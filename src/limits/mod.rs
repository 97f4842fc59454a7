//! Rate limits and load shedding: how much each caller may mint, held in
//! process or shared by every replica through Redis, and how many calls the
//! process serves at once.
//!
//! The pipeline asks here once per call, after the rules granted and before
//! the token is built: a [`LimitSet`] (the configured limits, swapped by a
//! reload with the rest of the config) says which limits apply to the
//! grant and what their keys are; the [`Limiter`] (the state, which lives
//! as long as the process, so a reload keeps every budget) checks each one
//! with GCRA (`gcra`), in the bounded in-process store (`local`) or in
//! Redis (`redis`), where a failing Redis gives each limit its configured
//! mode: count locally with a share of the budget, or refuse. `shed` bounds
//! the calls in flight. Time is an argument (`now`, the process's monotonic
//! nanoseconds, read by the pipeline), so every path is testable exactly.

mod gcra;
mod local;
mod redis;
mod shed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::{Caller, KeyExpression, Request, Service};

pub use self::gcra::{Gcra, Step};
pub use self::local::LocalStore;
pub use self::redis::{RedisSettings, RedisStore, check_url, client};
pub use self::shed::{Admitted, Arrival, InFlight};

/// A limits failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Redis refused or failed the check (connection, script, protocol).
    #[error("redis: {0}")]
    Redis(String),
    /// Redis did not answer within `limits.redis.timeout`.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// What a limit counts calls by.
#[derive(Debug)]
pub enum LimitKey {
    /// The caller: its issuer and subject, or a workload's SPIFFE ID.
    Caller,
    /// The caller's issuer (`iss`); every workload without a JWT shares one.
    Issuer,
    /// The rule that granted.
    Rule,
    /// The requested channel.
    Channel,
    /// A CEL expression over the variables rules see.
    Cel(KeyExpression),
}

/// Which calls a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every call of its actions.
    All,
    /// Only the calls granted by a rule that names it (`limits = [...]`).
    Rule,
}

/// What a limit does while Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Count in process meanwhile, with the replica's share of the budget.
    Open,
    /// Refuse: UNAVAILABLE `limits_unavailable`.
    Closed,
}

/// One configured limit, validated.
#[derive(Debug)]
pub struct RateLimit {
    /// The unique name, in QuotaFailure, metrics and the audit log.
    pub name: Arc<str>,
    /// What calls are counted by.
    pub key: LimitKey,
    /// The rate and burst.
    pub gcra: Gcra,
    /// The rate as written (`20/s`), for explanations and logs.
    pub rate: String,
    /// The token services it counts.
    pub services: Vec<Service>,
    /// Whether it counts every call or only named rules' grants.
    pub scope: Scope,
    /// What it does while Redis fails.
    pub on_redis_failure: FailMode,
}

/// The configured limits, as one config load compiled them.
#[derive(Debug, Default)]
pub struct LimitSet {
    limits: Vec<RateLimit>,
    /// Rule name to the `scope = "rule"` limits it names (indexes into `limits`).
    by_rule: BTreeMap<String, Vec<usize>>,
    max_in_flight: usize,
}

/// Who asks for what: what a limit's key is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The authenticated caller.
    pub caller: Caller<'a>,
    /// The request the rules granted.
    pub request: &'a Request,
    /// The granting rule.
    pub rule: &'a str,
    /// Unix seconds, for CEL keys that read `now`.
    pub unix_now: u64,
}

/// Where a limit's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The in-process store (local mode).
    Local,
    /// Redis (cluster mode).
    Redis,
    /// The in-process store standing in for a failing Redis (fail open).
    Fallback,
}

/// One limit's answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted.
    Admitted,
    /// Over the limit; a retry is admitted after this long.
    Limited(Duration),
    /// Redis failed and the limit fails closed.
    Unavailable(LimitError),
}

/// One limit's answer, with its name and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The limit.
    pub limit: Arc<str>,
    /// The answer.
    pub outcome: Outcome,
    /// Where it came from.
    pub backend: Backend,
}

/// What a call over one or more limits is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The limits it is over, in config order.
    pub limits: Vec<Arc<str>>,
    /// When a retry is admitted by all of them.
    pub retry_after: Duration,
}

/// A limit's budget for ExplainAccess, read without spending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The limit.
    pub limit: Arc<str>,
    /// The key the call would be counted under.
    pub key: String,
    /// The rate as written.
    pub rate: String,
    /// The burst.
    pub burst: u32,
    /// Calls admitted now.
    pub remaining: u32,
    /// When the next call is admitted, if none is now.
    pub retry_after: Option<Duration>,
    /// Where the budget was read; `None` when Redis failed and the limit fails closed.
    pub backend: Option<Backend>,
}

/// The limits' state: the in-process store, Redis when configured, and
/// the count of calls in flight. One per process.
#[derive(Debug)]
pub struct Limiter {
    local: LocalStore,
    redis: Option<RedisStore>,
    in_flight: InFlight,
}

impl LimitSet {
    /// The limits `limits`, the `scope = "rule"` ones each rule of
    /// `by_rule` names (by limit name; `config` checked the names), and
    /// the bound on calls in flight.
    pub fn new(
        limits: Vec<RateLimit>,
        by_rule: &BTreeMap<String, Vec<String>>,
        max_in_flight: usize,
    ) -> Self {
        let by_rule = by_rule
            .iter()
            .map(|(rule, names)| {
                let indexes = names
                    .iter()
                    .filter_map(|name| limits.iter().position(|l| *l.name == **name))
                    .collect();
                (rule.clone(), indexes)
            })
            .collect();
        Self {
            limits,
            by_rule,
            max_in_flight,
        }
    }

    /// No limits, and no bound on calls in flight.
    pub fn unlimited() -> Self {
        Self {
            max_in_flight: usize::MAX,
            ..Self::default()
        }
    }

    /// The most calls in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The configured limits, in config order.
    pub fn limits(&self) -> &[RateLimit] {
        &self.limits
    }

    /// Whether any limit is configured.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// The limits that count a grant of `service` by `rule`, in config order.
    fn applying<'s>(&'s self, service: Service, rule: &str) -> Vec<&'s RateLimit> {
        let named = self.by_rule.get(rule).map_or(&[][..], Vec::as_slice);
        self.limits
            .iter()
            .enumerate()
            .filter(|(index, limit)| {
                limit.services.contains(&service)
                    && (limit.scope == Scope::All || named.contains(index))
            })
            .map(|(_, limit)| limit)
            .collect()
    }
}

impl LimitKey {
    /// What the key is, as configured: `caller`, ..., or `cel <expression>`.
    pub fn describe(&self) -> String {
        match self {
            LimitKey::Caller => "caller".to_owned(),
            LimitKey::Issuer => "issuer".to_owned(),
            LimitKey::Rule => "rule".to_owned(),
            LimitKey::Channel => "channel".to_owned(),
            LimitKey::Cel(expression) => format!("cel {:?}", expression.as_str()),
        }
    }
}

impl RateLimit {
    /// The key `subject` is counted under. A CEL key that fails counts the
    /// call under one shared key, so a caller without the claim is limited
    /// with every other such caller, never unlimited.
    pub fn key_of(&self, subject: &Subject<'_>) -> Result<String, String> {
        let caller = subject.caller;
        Ok(match &self.key {
            LimitKey::Caller => match (caller.principal, &caller.peer.workload) {
                (Some(principal), _) => format!("jwt {} {}", principal.issuer, principal.subject),
                (None, Some(workload)) => {
                    format!("mtls {}", workload.audit_name().unwrap_or_default())
                }
                (None, None) => "anonymous".to_owned(),
            },
            LimitKey::Issuer => match caller.principal {
                Some(principal) => format!("jwt {}", principal.issuer),
                None => "mtls".to_owned(),
            },
            LimitKey::Rule => subject.rule.to_owned(),
            LimitKey::Channel => subject
                .request
                .channel
                .as_ref()
                .map_or_else(String::new, |c| c.as_str().to_owned()),
            LimitKey::Cel(expression) => {
                expression.evaluate(caller, subject.request, subject.unix_now)?
            }
        })
    }

    /// [`RateLimit::key_of`], with a failing CEL key replaced by the shared one.
    fn key_or_shared(&self, subject: &Subject<'_>) -> String {
        self.key_of(subject).unwrap_or_else(|error| {
            tracing::debug!(limit = %self.name, error = %error, "rate limit key did not evaluate; the call counts under the shared key");
            UNRESOLVED_KEY.to_owned()
        })
    }
}

/// `limits.local_max_keys`'s default.
pub const DEFAULT_LOCAL_KEYS: usize = 100_000;

/// The key of every call whose CEL key did not evaluate.
pub const UNRESOLVED_KEY: &str = "\u{0}unresolved";

impl Limiter {
    /// The state for a process: an in-process store of at most
    /// `local_max_keys` keys, and Redis when `redis` is set (connected
    /// lazily: a Redis down at start-up does not stop the start).
    pub fn new(local_max_keys: usize, redis: Option<RedisSettings>) -> Result<Self, LimitError> {
        Ok(Self {
            local: LocalStore::new(local_max_keys),
            redis: redis.map(RedisStore::connect).transpose()?,
            in_flight: InFlight::new(),
        })
    }

    /// A limiter without Redis, for a pipeline built without a config
    /// (tests, benchmarks): its store is allocated as keys arrive.
    pub fn local_only() -> Self {
        Self {
            local: LocalStore::new(DEFAULT_LOCAL_KEYS),
            redis: None,
            in_flight: InFlight::new(),
        }
    }

    /// The in-process store.
    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    /// Redis, when the limits are shared.
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// A place for one more call under `set`'s bound, if there is one.
    pub fn enter(&self, set: &LimitSet) -> Option<Admitted> {
        self.in_flight.enter(set.max_in_flight)
    }

    /// A call arriving at the server: admitted under `set`'s bound, with
    /// its place held until its response, or to be shed.
    pub fn arrive(&self, set: &LimitSet) -> Arrival {
        match self.enter(set) {
            Some(place) => Arrival::Admitted(Arc::new(place)),
            None => Arrival::Shed,
        }
    }

    /// The calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.current()
    }

    /// Checks (and spends) every limit of `set` that counts `subject`'s
    /// grant of `service`, at `now` (monotonic nanoseconds). With Redis the
    /// limits are asked at once, one round trip each; a limit that refuses
    /// does not give back what the others spent, as with Envoy's rate limit
    /// service.
    pub async fn check(
        &self,
        set: &LimitSet,
        service: Service,
        subject: &Subject<'_>,
        now: u64,
    ) -> Vec<Checked> {
        let applying = set.applying(service, subject.rule);
        if applying.is_empty() {
            return Vec::new();
        }
        let checks = applying.into_iter().map(|limit| async move {
            let key = limit.key_or_shared(subject);
            let (outcome, backend) = self.check_one(limit, &key, now).await;
            Checked {
                limit: Arc::clone(&limit.name),
                outcome,
                backend,
            }
        });
        futures_util::future::join_all(checks).await
    }

    /// Every limit that would count `subject`'s grant of `service`, with
    /// its budget at `now`; nothing is spent.
    pub async fn budgets(
        &self,
        set: &LimitSet,
        service: Service,
        subject: &Subject<'_>,
        now: u64,
    ) -> Vec<Budget> {
        let reads = set
            .applying(service, subject.rule)
            .into_iter()
            .map(|limit| async move {
                let key = limit.key_or_shared(subject);
                let (remaining, retry_after, backend) = self.budget_one(limit, &key, now).await;
                Budget {
                    limit: Arc::clone(&limit.name),
                    key,
                    rate: limit.rate.clone(),
                    burst: limit.gcra.burst(),
                    remaining,
                    retry_after,
                    backend,
                }
            });
        futures_util::future::join_all(reads).await
    }

    async fn check_one(&self, limit: &RateLimit, key: &str, now: u64) -> (Outcome, Backend) {
        let local = |gcra: &Gcra| match self.local.step(&limit.name, key, gcra, now) {
            Step::Allowed { .. } => Outcome::Admitted,
            Step::Limited { retry_after } => Outcome::Limited(retry_after),
        };
        let Some(redis) = &self.redis else {
            return (local(&limit.gcra), Backend::Local);
        };
        let error = if redis.usable(now) {
            match redis
                .check(&redis.key(&limit.name, key), &limit.gcra, true, now)
                .await
            {
                Ok(answer) if answer.admitted => return (Outcome::Admitted, Backend::Redis),
                Ok(answer) => return (Outcome::Limited(answer.retry_after), Backend::Redis),
                Err(error) => error,
            }
        } else {
            LimitError::Redis("not tried: failed within limits.redis.retry_interval".to_owned())
        };
        // Each one is counted (`local_fallback` or `unavailable` in the
        // metrics); the outage's start and end are logged by the store.
        tracing::debug!(
            limit = %limit.name,
            on_redis_failure = limit.on_redis_failure.as_str(),
            error = %error,
            "rate limit checked without Redis"
        );
        match limit.on_redis_failure {
            FailMode::Open => (local(&self.fallback(limit)), Backend::Fallback),
            FailMode::Closed => (Outcome::Unavailable(error), Backend::Redis),
        }
    }

    async fn budget_one(
        &self,
        limit: &RateLimit,
        key: &str,
        now: u64,
    ) -> (u32, Option<Duration>, Option<Backend>) {
        let Some(redis) = &self.redis else {
            let (remaining, retry) = self.local.budget(&limit.name, key, &limit.gcra, now);
            return (remaining, retry, Some(Backend::Local));
        };
        if redis.usable(now)
            && let Ok(answer) = redis
                .check(&redis.key(&limit.name, key), &limit.gcra, false, now)
                .await
        {
            let retry = (!answer.admitted).then_some(answer.retry_after);
            return (answer.remaining, retry, Some(Backend::Redis));
        }
        match limit.on_redis_failure {
            FailMode::Open => {
                let (remaining, retry) =
                    self.local
                        .budget(&limit.name, key, &self.fallback(limit), now);
                (remaining, retry, Some(Backend::Fallback))
            }
            FailMode::Closed => (0, None, None),
        }
    }

    /// A fail-open limit's local stand-in: the replica's share of it.
    fn fallback(&self, limit: &RateLimit) -> Gcra {
        let replicas = self
            .redis
            .as_ref()
            .and_then(|redis| redis.settings().replicas)
            .unwrap_or(1);
        limit.gcra.share(replicas)
    }
}

/// The refusal a call's checks amount to, if any: over a limit (every
/// limit it is over, and the longest wait), else a fail-closed limit's
/// failure, else nothing.
pub fn verdict(checks: &[Checked]) -> Option<Result<Exceeded, &LimitError>> {
    let mut exceeded = Exceeded {
        limits: Vec::new(),
        retry_after: Duration::ZERO,
    };
    let mut unavailable = None;
    for check in checks {
        match &check.outcome {
            Outcome::Admitted => {}
            Outcome::Limited(wait) => {
                exceeded.limits.push(Arc::clone(&check.limit));
                exceeded.retry_after = exceeded.retry_after.max(*wait);
            }
            Outcome::Unavailable(error) => unavailable = unavailable.or(Some(error)),
        }
    }
    if !exceeded.limits.is_empty() {
        Some(Ok(exceeded))
    } else {
        unavailable.map(Err)
    }
}

impl Backend {
    /// The name in metrics and explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Redis => "redis",
            Backend::Fallback => "local_fallback",
        }
    }
}

impl Outcome {
    /// The `result` label of the limit metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Limited(_) => "limited",
            Outcome::Unavailable(_) => "unavailable",
        }
    }
}

impl Exceeded {
    /// The limits' names, comma-separated.
    pub fn names(&self) -> String {
        self.limits
            .iter()
            .map(|name| &**name)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Scope {
    /// Parses `all` or `rule`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "all" => Some(Scope::All),
            "rule" => Some(Scope::Rule),
            _ => None,
        }
    }
}

impl FailMode {
    /// Parses `open` or `closed`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "open" => Some(FailMode::Open),
            "closed" => Some(FailMode::Closed),
            _ => None,
        }
    }

    /// The name in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

#[cfg(test)]
mod tests;
