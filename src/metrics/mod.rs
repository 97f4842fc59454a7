//! Prometheus metrics: one registry, written to on the request path by the
//! pipeline (decisions, tokens, JWT verifications, ext_authz checks) and by
//! the gRPC layer (`grpc_server_*`, with the names go-grpc-prometheus made
//! standard), and read at scrape time from the identity refreshers and
//! `/proc/self` through collectors.
//!
//! Built on `prometheus-client`, the official Rust client (the one
//! linkerd2-proxy uses): typed families, lock-free counters and histograms,
//! and an OpenMetrics encoder. The admin port serves OpenMetrics when the
//! scraper asks for it (`Accept: application/openmetrics-text`, as
//! Prometheus does) and the classic text format otherwise; [`encode`] derives
//! the classic form from the OpenMetrics one.
//!
//! Every label set is bounded: label values are reasons, decisions, rule,
//! project, issuer and route names from the config, and gRPC method names,
//! never a channel, subject, uid or token.

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod collectors;
mod grpc;
mod text;

pub use collectors::{
    FactsState, IssuerSnapshot, IssuerState, JwtCacheState, LimitsState, watch_log_drops,
};
pub use grpc::{CountedBody, GrpcMeter, Method, RpcMeter};
pub use text::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE, wants_openmetrics};

/// A label set: label names are static, values are bounded strings.
type Labels = Vec<(&'static str, Cow<'static, str>)>;

/// Latency buckets for a sub-millisecond service: 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05,
    0.1, 0.5, 1.0, 5.0,
];

/// What the binary was built from, for `tokengate_build_info`.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// The crate version.
    pub version: &'static str,
    /// The git commit, or `unknown`.
    pub git_sha: &'static str,
    /// The rustc version.
    pub rustc: &'static str,
}

/// One call as the pipeline saw it, for the decision metrics.
#[derive(Debug, Clone, Copy)]
pub struct CallRecord<'a> {
    /// The action label: `rtc`, `rtm`, `chat`, `renew`, `inspect`, `explain`, `ext_authz` or `forward_auth`.
    pub action: &'static str,
    /// The audit decision.
    pub decision: &'static str,
    /// The refusal's reason, or `none`.
    pub reason: &'a str,
    /// The deciding rule, if any.
    pub rule: Option<&'a str>,
    /// The project that signed, for an issued token.
    pub project: Option<&'a str>,
    /// The Agora services in an issued token.
    pub services: &'a [&'static str],
    /// The ext_authz route template, for a check.
    pub route: Option<&'a str>,
}

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    grpc_started: Family<Labels, Counter>,
    grpc_handled: Family<Labels, Counter>,
    grpc_handling: Family<Labels, Histogram, fn() -> Histogram>,
    decisions: Family<Labels, Counter>,
    rule_decisions: Family<Labels, Counter>,
    tokens_issued: Family<Labels, Counter>,
    jwt_verifications: Family<Labels, Counter>,
    jwt_verification_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    jwt_cache_requests: Family<Labels, Counter>,
    ext_authz_checks: Family<Labels, Counter>,
    config_generation: Gauge,
    config_loaded: Gauge,
    config_info: Family<Labels, Gauge>,
    connections_refused: Family<Labels, Counter>,
    accept_errors: Family<Labels, Counter>,
    tls_reloads: Family<Labels, Counter>,
    tls_expiry: Family<Labels, Gauge>,
    config_reloads: Family<Labels, Counter>,
    config_reloaded: Gauge,
    rate_limit_checks: Family<Labels, Counter>,
    fact_lookups: Family<Labels, Counter>,
    fact_fetch_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn label(value: &str) -> Cow<'static, str> {
    Cow::Owned(value.to_owned())
}

impl Metrics {
    /// A registry with every tokengate metric, the build info, the process
    /// metrics, and the JWKS state that `issuers` reports at each scrape.
    pub fn new(build: &BuildInfo, issuers: Arc<dyn IssuerSnapshot>) -> Arc<Self> {
        let mut registry = Registry::default();
        let grpc_started = Family::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            grpc_started.clone(),
        );
        let grpc_handled = Family::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by gRPC status code",
            grpc_handled.clone(),
        );
        let grpc_handling: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, seconds",
            grpc_handling.clone(),
        );
        let decisions = Family::default();
        registry.register(
            "tokengate_decisions",
            "Calls by action, decision and reason",
            decisions.clone(),
        );
        let rule_decisions = Family::default();
        registry.register(
            "tokengate_rule_decisions",
            "Decisions made by each configured rule",
            rule_decisions.clone(),
        );
        let tokens_issued = Family::default();
        registry.register(
            "tokengate_tokens_issued",
            "Agora tokens issued, by project and service",
            tokens_issued.clone(),
        );
        let jwt_verifications = Family::default();
        registry.register(
            "tokengate_jwt_verifications",
            "JWT verifications by issuer and outcome (ok or the refusal reason)",
            jwt_verifications.clone(),
        );
        let jwt_verification_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "tokengate_jwt_verification_seconds",
            "Time to verify a JWT, seconds",
            jwt_verification_seconds.clone(),
        );
        let jwt_cache_requests = Family::default();
        registry.register(
            "tokengate_jwt_cache_requests",
            "Verified-JWT cache lookups by issuer and result (hit, miss or stale)",
            jwt_cache_requests.clone(),
        );
        let ext_authz_checks = Family::default();
        registry.register(
            "tokengate_ext_authz_checks",
            "ext_authz checks by outcome and route",
            ext_authz_checks.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "tokengate_config_generation",
            "How many configs this process has loaded (1 at start, +1 per reload)",
            config_generation.clone(),
        );
        let config_loaded = Gauge::default();
        registry.register(
            "tokengate_config_last_load_timestamp_seconds",
            "When the config in use was loaded, unix seconds",
            config_loaded.clone(),
        );
        let config_info = Family::<Labels, Gauge>::default();
        registry.register(
            "tokengate_config_info",
            "The fingerprint of the config in use (value 1)",
            config_info.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "tokengate_connections_refused",
            "Connections closed at once because the port had max_connections open",
            connections_refused.clone(),
        );
        let accept_errors = Family::default();
        registry.register(
            "tokengate_accept_errors",
            "Failed accepts that paused the port (out of file descriptors)",
            accept_errors.clone(),
        );
        let tls_reloads = Family::default();
        registry.register(
            "tokengate_tls_reloads",
            "Changes of the TLS files seen by the reloader, by result (ok: swapped in; error: the previous certificate kept)",
            tls_reloads.clone(),
        );
        let tls_expiry = Family::<Labels, Gauge>::default();
        registry.register(
            "tokengate_tls_certificate_expiry_timestamp_seconds",
            "The notAfter of the TLS certificate in use, unix seconds (0 while the port serves plaintext)",
            tls_expiry.clone(),
        );
        // Both ports' series exist from the start at 0, so a rate() over them
        // and an alert on them work before the first refusal.
        for port in ["grpc", "admin"] {
            let labels = vec![("port", Cow::Borrowed(port))];
            let _ = connections_refused.get_or_create(&labels);
            let _ = accept_errors.get_or_create(&labels);
        }
        // The TLS series exist from the start too: the reloads at 0, the
        // expiry at 0 until a certificate is served (a plaintext port).
        for result in ["ok", "error"] {
            let _ = tls_reloads.get_or_create(&vec![("result", Cow::Borrowed(result))]);
        }
        let _ = tls_expiry.get_or_create(&vec![("port", Cow::Borrowed("grpc"))]);
        let config_reloads = Family::default();
        registry.register(
            "tokengate_config_reloads",
            "Config reloads (SIGHUP or a watched file changed), by result (success: swapped in; failure: refused, the previous config kept)",
            config_reloads.clone(),
        );
        // Both results exist from the start at 0, so an alert on failures
        // works before the first reload.
        for result in ["success", "failure"] {
            let _ = config_reloads.get_or_create(&vec![("result", Cow::Borrowed(result))]);
        }
        let config_reloaded = Gauge::default();
        registry.register(
            "tokengate_config_last_reload_success_timestamp_seconds",
            "When the last successful reload swapped in a config, unix seconds (0 before the first)",
            config_reloaded.clone(),
        );
        let rate_limit_checks = Family::default();
        registry.register(
            "tokengate_rate_limit_checks",
            "Rate limit checks by limit, result (admitted, limited, unavailable) and backend (local, redis, local_fallback: counted locally while Redis fails)",
            rate_limit_checks.clone(),
        );
        let fact_lookups = Family::default();
        registry.register(
            "tokengate_fact_lookups",
            "Facts asked by the rules, by fact and result (hit, error_hit: a remembered failure, fetched, error, timeout)",
            fact_lookups.clone(),
        );
        let fact_fetch_seconds: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "tokengate_fact_fetch_seconds",
            "Time to fetch a fact from its source (cache misses only), seconds",
            fact_fetch_seconds.clone(),
        );
        let build_info = Family::<Labels, Gauge>::default();
        build_info
            .get_or_create(&vec![
                ("version", label(build.version)),
                ("git_sha", label(build.git_sha)),
                ("rustc", label(build.rustc)),
            ])
            .set(1);
        registry.register(
            "tokengate_build_info",
            "The running build (value 1)",
            build_info,
        );
        registry.register_collector(Box::new(collectors::Process::new()));
        registry.register_collector(Box::new(collectors::Jwks::new(issuers)));
        Arc::new(Self {
            registry,
            grpc_started,
            grpc_handled,
            grpc_handling,
            decisions,
            rule_decisions,
            tokens_issued,
            jwt_verifications,
            jwt_verification_seconds,
            jwt_cache_requests,
            ext_authz_checks,
            config_generation,
            config_loaded,
            config_info,
            connections_refused,
            accept_errors,
            tls_reloads,
            tls_expiry,
            config_reloads,
            config_reloaded,
            rate_limit_checks,
            fact_lookups,
            fact_fetch_seconds,
        })
    }

    /// Records one call's decision, the rule's, the tokens it issued and, for ext_authz, the check.
    pub fn record_call(&self, call: &CallRecord<'_>) {
        self.decisions
            .get_or_create(&vec![
                ("action", Cow::Borrowed(call.action)),
                ("decision", Cow::Borrowed(call.decision)),
                ("reason", label(call.reason)),
            ])
            .inc();
        if let Some(rule) = call.rule {
            self.rule_decisions
                .get_or_create(&vec![
                    ("rule", label(rule)),
                    ("decision", Cow::Borrowed(call.decision)),
                ])
                .inc();
        }
        if let Some(project) = call.project {
            for service in call.services {
                self.tokens_issued
                    .get_or_create(&vec![
                        ("project", label(project)),
                        ("service", Cow::Borrowed(*service)),
                    ])
                    .inc();
            }
        }
        // Both HTTP checks, Envoy's gRPC one and forward-auth, count here;
        // `via` tells them apart (the action label: `ext_authz`, `forward_auth`).
        if call.action == "ext_authz" || call.action == "forward_auth" {
            self.ext_authz_checks
                .get_or_create(&vec![
                    ("outcome", Cow::Borrowed(check_outcome(call.decision))),
                    ("route", label(call.route.unwrap_or("none"))),
                    ("via", Cow::Borrowed(call.action)),
                ])
                .inc();
        }
    }

    /// Records one JWT verification.
    pub fn record_jwt(&self, issuer: &str, outcome: &str, seconds: f64) {
        self.jwt_verifications
            .get_or_create(&vec![
                ("issuer", label(issuer)),
                ("outcome", label(outcome)),
            ])
            .inc();
        self.jwt_verification_seconds
            .get_or_create(&vec![("issuer", label(issuer))])
            .observe(seconds);
    }

    /// Records one rate limit's answer for one call.
    pub fn record_limit(&self, limit: &str, result: &'static str, backend: &'static str) {
        self.rate_limit_checks
            .get_or_create(&vec![
                ("limit", label(limit)),
                ("result", Cow::Borrowed(result)),
                ("backend", Cow::Borrowed(backend)),
            ])
            .inc();
    }

    /// Records one fact lookup; a fetch from the source is also timed.
    pub fn record_fact(&self, fact: &str, result: &'static str, fetched: bool, seconds: f64) {
        self.fact_lookups
            .get_or_create(&vec![
                ("fact", label(fact)),
                ("result", Cow::Borrowed(result)),
            ])
            .inc();
        if fetched {
            self.fact_fetch_seconds
                .get_or_create(&vec![("fact", label(fact))])
                .observe(seconds);
        }
    }

    /// Records one verified-JWT cache lookup: `hit`, `miss` or `stale`.
    pub fn record_jwt_cache(&self, issuer: &str, result: &'static str) {
        self.jwt_cache_requests
            .get_or_create(&vec![
                ("issuer", label(issuer)),
                ("result", Cow::Borrowed(result)),
            ])
            .inc();
    }

    /// Records the start of an RPC.
    pub fn grpc_started(&self, service: &str, method: &str, kind: &'static str) {
        self.grpc_started
            .get_or_create(&grpc_labels(service, method, kind))
            .inc();
    }

    /// Records the end of an RPC with its status code name (`OK`, `Unauthenticated`, ...).
    pub fn grpc_handled(
        &self,
        service: &str,
        method: &str,
        kind: &'static str,
        code: &'static str,
        seconds: f64,
    ) {
        let mut labels = grpc_labels(service, method, kind);
        self.grpc_handling.get_or_create(&labels).observe(seconds);
        labels.push(("grpc_code", Cow::Borrowed(code)));
        self.grpc_handled.get_or_create(&labels).inc();
    }

    /// Records the config in use: its fingerprint and when it was loaded.
    pub fn config_loaded(&self, fingerprint: &str, unix_secs: u64) {
        self.config_generation.inc();
        self.config_loaded
            .set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
        self.config_info.clear();
        self.config_info
            .get_or_create(&vec![("fingerprint", label(fingerprint))])
            .set(1);
    }

    /// Records a config reload: a success (also recorded by `config_loaded`,
    /// which the caller calls with the new fingerprint) moves the last-success
    /// time; a failure only counts.
    pub fn config_reloaded(&self, ok: bool, unix_secs: u64) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads
            .get_or_create(&vec![("result", Cow::Borrowed(result))])
            .inc();
        if ok {
            self.config_reloaded
                .set(i64::try_from(unix_secs).unwrap_or(i64::MAX));
        }
    }

    /// Records a connection refused over a port's cap (`grpc` or `admin`).
    pub fn connection_refused(&self, port: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("port", Cow::Borrowed(port))])
            .inc();
    }

    /// Records an accept that failed for the whole port.
    pub fn accept_failed(&self, port: &'static str) {
        self.accept_errors
            .get_or_create(&vec![("port", Cow::Borrowed(port))])
            .inc();
    }

    /// Records the TLS certificate now served on the gRPC port: its notAfter.
    pub fn tls_loaded(&self, not_after: i64) {
        self.tls_expiry
            .get_or_create(&vec![("port", Cow::Borrowed("grpc"))])
            .set(not_after);
    }

    /// Records a change of the TLS files: swapped in (`ok`) or refused.
    pub fn tls_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&vec![("result", Cow::Borrowed(result))])
            .inc();
    }

    /// The exposition: OpenMetrics, or the classic Prometheus text format.
    pub fn encode(&self, openmetrics: bool) -> String {
        text::encode(&self.registry, openmetrics)
    }
}

/// The `outcome` label of an ext_authz check, from the audit decision:
/// each refusal kind answers one HTTP status (see the README's error table).
fn check_outcome(decision: &str) -> &'static str {
    match decision {
        "allow" => "allowed",
        "pass_through" => "pass_through",
        "deny" => "denied",
        "unauthenticated" => "unauthenticated",
        "invalid" => "invalid",
        "limited" => "limited",
        "shed" => "shed",
        "unavailable" => "unavailable",
        _ => "error",
    }
}

fn grpc_labels(service: &str, method: &str, kind: &'static str) -> Labels {
    vec![
        ("grpc_service", label(service)),
        ("grpc_method", label(method)),
        ("grpc_type", Cow::Borrowed(kind)),
    ]
}
