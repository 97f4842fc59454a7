//! Facts: the company's own data that rules read (`facts.<name>`), fetched
//! from PostgreSQL (`postgres.rs`) or an HTTP JSON service (`http.rs`),
//! through a bounded in-process cache (`cache.rs`).
//!
//! The policy names what a call needs ([`crate::policy::Policy::facts_needed`]);
//! [`FactSources::fetch`] fetches those queries at once, each through its
//! fact's cache, each bounded by the fact's timeout, and hands back
//! [`Facts`], plain data for the pure evaluation. A failure (a timeout, an
//! error, an oversized result) is a value too: the rules fail closed on it
//! (`fact_unavailable`), so nothing here decides anything.
//!
//! The sources live as long as the config that declared them: a reload
//! whose `[databases]` and `[[facts]]` are unchanged keeps them (their pools,
//! caches and listeners), a changed one builds new ones.

mod cache;
mod http;
mod postgres;
mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::entropy;
use crate::policy::{FactDeclaration, FactQuery, Facts, Fetched};

pub use cache::CacheStats;
pub use http::{HttpMethod, HttpSettings, Redacted, UrlTemplate};
pub use postgres::{DatabaseSettings, PostgresSettings};

/// A source that cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// A `[databases.<name>]` entry cannot make a client (a bad URL or TLS file).
    #[error("databases.{database}: {reason}")]
    Database {
        /// The database's name.
        database: String,
        /// What is wrong.
        reason: String,
    },
    /// A fact's HTTP client cannot be built (a bad CA file).
    #[error("facts[{name}]: {reason}")]
    Http {
        /// The fact's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One fact, as the config declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct FactSettings {
    /// The name conditions read it by.
    pub name: Arc<str>,
    /// Where it comes from.
    pub source: SourceSettings,
    /// The most one fetch may take, pool wait and round trips included.
    pub timeout: Duration,
    /// How long a non-empty result is kept; zero keeps nothing.
    pub ttl: Duration,
    /// How long an empty result (no rows, `null`, `[]`, `{}`, HTTP 404) is kept.
    pub negative_ttl: Duration,
    /// How long a failure is remembered, so an outage costs one timeout
    /// per key per interval rather than one per call; zero remembers none.
    pub error_ttl: Duration,
    /// The most entries the cache holds (its memory bound).
    pub max_entries: usize,
}

/// A fact's source.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSettings {
    /// A parameterised query against a `[databases.<name>]`.
    Postgres(PostgresSettings),
    /// A JSON document from an HTTP service.
    Http(HttpSettings),
}

/// The configured facts and databases, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactsConfig {
    /// `[databases.<name>]`.
    pub databases: BTreeMap<String, DatabaseSettings>,
    /// `[[facts]]`, in config order.
    pub facts: Vec<FactSettings>,
}

/// The running facts: each fact's source and cache.
pub struct FactSources {
    config: FactsConfig,
    facts: BTreeMap<Arc<str>, Arc<Fact>>,
    /// The databases (pools and listeners), kept alive with the facts.
    databases: Vec<Arc<postgres::Database>>,
}

/// One fact's source and cache.
struct Fact {
    settings: FactSettings,
    source: Source,
    cache: cache::Cache,
}

enum Source {
    Postgres(postgres::Query),
    Http(Box<http::Fetcher>),
}

/// What a fact's source produced, before caching.
#[derive(Debug)]
pub(crate) enum SourceError {
    /// The source failed or answered with an error.
    Failed(String),
    /// The result is larger than the bound.
    Oversized(String),
}

/// What one fetch did, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The cache answered with a value.
    Hit,
    /// The cache answered with a remembered failure.
    ErrorHit,
    /// The source answered.
    Fetched,
    /// The source failed (an error or an oversized result).
    Failed,
    /// The source did not answer within the timeout.
    Timeout,
}

/// One fetched fact, for the metrics.
#[derive(Debug, Clone)]
pub struct FetchRecord {
    /// The fact's name.
    pub name: Arc<str>,
    /// What happened.
    pub outcome: FetchOutcome,
    /// How long it took, in seconds.
    pub seconds: f64,
}

impl FetchOutcome {
    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchOutcome::Hit => "hit",
            FetchOutcome::ErrorHit => "error_hit",
            FetchOutcome::Fetched => "fetched",
            FetchOutcome::Failed => "error",
            FetchOutcome::Timeout => "timeout",
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Failed(reason) => f.write_str(reason),
            SourceError::Oversized(reason) => write!(f, "oversized: {reason}"),
        }
    }
}

impl fmt::Debug for FactSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FactSources")
            .field("facts", &self.facts.keys().collect::<Vec<_>>())
            .field(
                "databases",
                &self.config.databases.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Whether `settings` make a client (the URL parses, TLS is coherent), for
/// config validation: nothing connects.
pub fn check_database(settings: &DatabaseSettings) -> Result<(), String> {
    postgres::check(settings)
}

/// Whether `settings` make an HTTP client (headers, secret, CA bundle).
pub fn check_http(settings: &HttpSettings) -> Result<(), String> {
    http::Fetcher::new(settings).map(|_| ())
}

impl FactsConfig {
    /// What the policy needs to know of each fact: its name and inputs.
    pub fn declarations(&self) -> Vec<FactDeclaration> {
        self.facts
            .iter()
            .map(|fact| FactDeclaration {
                name: Arc::clone(&fact.name),
                inputs: match &fact.source {
                    SourceSettings::Postgres(pg) => pg.params.clone(),
                    SourceSettings::Http(http) => http.inputs(),
                },
            })
            .collect()
    }
}

impl FactSources {
    /// No facts.
    pub fn none() -> Arc<Self> {
        Arc::new(Self {
            config: FactsConfig::default(),
            facts: BTreeMap::new(),
            databases: Vec::new(),
        })
    }

    /// Builds the sources of `config`: pools (connecting lazily, so a
    /// database that is down at start does not stop the service), HTTP
    /// clients, caches, and for a database with notify channels its
    /// listener (which needs a tokio runtime).
    pub fn start(config: FactsConfig) -> Result<Arc<Self>, FactsError> {
        let mut databases: BTreeMap<&str, Arc<postgres::Database>> = BTreeMap::new();
        for (name, settings) in &config.databases {
            databases.insert(name, postgres::Database::connect(name, settings)?);
        }
        let mut facts = BTreeMap::new();
        for settings in &config.facts {
            let cache = cache::Cache::new(settings);
            let source = match &settings.source {
                SourceSettings::Postgres(pg) => {
                    let database = databases.get(pg.database.as_str()).ok_or_else(|| {
                        FactsError::Database {
                            database: pg.database.clone(),
                            reason: "is not configured".to_owned(),
                        }
                    })?;
                    Source::Postgres(postgres::Query::new(
                        Arc::clone(database),
                        pg,
                        settings.timeout,
                    ))
                }
                SourceSettings::Http(http) => {
                    Source::Http(Box::new(http::Fetcher::new(http).map_err(|reason| {
                        FactsError::Http {
                            name: settings.name.to_string(),
                            reason,
                        }
                    })?))
                }
            };
            let fact = Arc::new(Fact {
                settings: settings.clone(),
                source,
                cache,
            });
            if let (Source::Postgres(query), SourceSettings::Postgres(pg)) =
                (&fact.source, &settings.source)
                && let Some(channel) = &pg.notify_channel
            {
                query
                    .database()
                    .subscribe(channel, fact.cache.invalidator());
            }
            facts.insert(Arc::clone(&settings.name), fact);
        }
        let databases: Vec<_> = databases.into_values().collect();
        for database in &databases {
            database.warm();
            database.listen();
        }
        Ok(Arc::new(Self {
            config,
            facts,
            databases,
        }))
    }

    /// The sources of a reloaded `config`: these same ones when it is
    /// unchanged (their caches and pools stay warm), else new ones.
    pub fn restart(self: &Arc<Self>, config: FactsConfig) -> Result<Arc<Self>, FactsError> {
        if self.config == config {
            return Ok(Arc::clone(self));
        }
        Self::start(config)
    }

    /// The settings these sources were built from.
    pub fn config(&self) -> &FactsConfig {
        &self.config
    }

    /// Fetches `queries` at once, each through its fact's cache; `now_ns`
    /// is the monotonic clock the caches' expiries are on. Returns the
    /// facts for the evaluation and what each fetch did.
    pub async fn fetch(&self, queries: Vec<FactQuery>, now_ns: u64) -> (Facts, Vec<FetchRecord>) {
        let fetches = queries.into_iter().map(|query| async move {
            let timer = entropy::Stopwatch::start();
            let (value, outcome) = match self.facts.get(&query.name) {
                Some(fact) => fact.get(&query.inputs, now_ns).await,
                // The policy only names declared facts: a server bug, failed closed.
                None => (
                    Err(format!("facts.{} is not configured", query.name)),
                    FetchOutcome::Failed,
                ),
            };
            let fetched = Fetched {
                value,
                cached: matches!(outcome, FetchOutcome::Hit | FetchOutcome::ErrorHit),
                elapsed_us: timer.elapsed_us(),
            };
            let record = FetchRecord {
                name: Arc::clone(&query.name),
                outcome,
                seconds: timer.elapsed_secs(),
            };
            (query, fetched, record)
        });
        let mut facts = Facts::none();
        let mut records = Vec::with_capacity(fetches.len());
        // One query (the usual call) needs no join: awaited in place.
        let fetched = if fetches.len() == 1 {
            let mut fetches = fetches;
            match fetches.next() {
                Some(one) => vec![one.await],
                None => Vec::new(),
            }
        } else {
            join_all(fetches).await
        };
        for (query, fetched, record) in fetched {
            facts.insert(query, fetched);
            records.push(record);
        }
        (facts, records)
    }

    /// Each fact's cache size, for the metrics.
    pub fn cache_stats(&self) -> Vec<CacheStats> {
        self.facts
            .values()
            .map(|fact| fact.cache.stats(&fact.settings.name))
            .collect()
    }

    /// Each database's listener: its name and whether it is connected
    /// (`None` for a database without notify channels).
    pub fn listeners(&self) -> Vec<(String, Option<bool>)> {
        self.databases
            .iter()
            .map(|db| (db.name().to_owned(), db.listening()))
            .collect()
    }
}

impl Fact {
    /// The value for `inputs`: from the cache, else from the source (one
    /// fetch per key at a time; concurrent callers wait for it).
    async fn get(
        &self,
        inputs: &[String],
        now_ns: u64,
    ) -> (Result<Arc<crate::domain::ClaimValue>, String>, FetchOutcome) {
        self.cache
            .get_or_fetch(inputs, now_ns, self.settings.timeout, || async {
                let (value, outcome) =
                    match tokio::time::timeout(self.settings.timeout, self.fetch(inputs)).await {
                        Ok(Ok(value)) => (Ok(value), FetchOutcome::Fetched),
                        Ok(Err(error)) => (Err(error.to_string()), FetchOutcome::Failed),
                        Err(_) => (
                            Err(format!(
                                "timed out after {}",
                                humantime::format_duration(self.settings.timeout)
                            )),
                            FetchOutcome::Timeout,
                        ),
                    };
                // The fact's name and why, never its inputs (they name the
                // caller) nor a secret; a failure is remembered for
                // error_ttl, so this is at most one line per key per interval.
                if let Err(reason) = &value {
                    tracing::warn!(fact = %self.settings.name, error = %reason, "facts: fetch failed; rules that read it fail closed");
                }
                (value, outcome)
            })
            .await
    }

    async fn fetch(&self, inputs: &[String]) -> Result<crate::domain::ClaimValue, SourceError> {
        match &self.source {
            Source::Postgres(query) => query.run(inputs).await,
            Source::Http(fetcher) => fetcher.fetch(inputs).await,
        }
    }
}
