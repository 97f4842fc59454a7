//! The config file as written: serde structs that mirror the TOML, and nothing else.
//!
//! These types never leave `crate::config`: resolution turns them into the
//! validated settings the rest of the service receives. Every table has
//! `deny_unknown_fields`, so a typo is an error rather than a silently
//! ignored setting. Optional keys are `Option`s where the validated type owns
//! the default, so each default is written once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::{Deserialize, Deserializer};

use super::duration::HumanDuration;
use crate::policy::RuleConfig;
use crate::routes::ExtAuthzSection;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Listen addresses and shutdown.
    #[serde(default)]
    pub server: ServerSection,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The Agora projects tokens are signed for.
    #[serde(default)]
    pub projects: Vec<ProjectSection>,
    /// The identity providers whose JWTs are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    /// The ordered rules; first match wins, default deny.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Envoy ext_authz: how mesh HTTP requests become token requests.
    #[serde(default)]
    pub ext_authz: ExtAuthzSection,
    /// A separate TOML file of `[[rules]]` (relative to this file's folder),
    /// instead of inline `rules`: handy when the rules live in their own ConfigMap.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Trace export (OpenTelemetry OTLP); off by default.
    #[serde(default)]
    pub telemetry: TelemetrySection,
    /// The log writer's queue.
    #[serde(default)]
    pub logging: LoggingSection,
    /// The verified-JWT cache; on by default.
    #[serde(default)]
    pub jwt_cache: JwtCacheSection,
    /// `[databases.<name>]`: the PostgreSQL databases facts query.
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, super::facts::DatabaseSection>,
    /// `[[facts]]`: the company data rules read (`facts.<name>`).
    #[serde(default)]
    pub facts: Vec<super::facts::FactSection>,
    /// `[forward_auth]`: the HTTP check for nginx, Caddy, Traefik and Envoy's HTTP ext_authz.
    #[serde(default)]
    pub forward_auth: super::forward_auth::ForwardAuthSection,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LoggingSection {
    /// How many lines may wait for the writer thread.
    pub queue_lines: usize,
    /// What a line does when the queue is full.
    pub overflow: LogOverflow,
}

/// `logging.overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LogOverflow {
    /// The logging call waits for room: nothing is lost.
    Block,
    /// The line is dropped and counted.
    Drop,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            // The queue is a bounded channel whose every slot (32 bytes) is
            // written when it is made: 65,536 lines were 2 MiB of idle RSS.
            // 8,192 absorb about half a second of a stalled stderr at
            // 15,000 calls/s before `overflow` applies.
            queue_lines: 8_192,
            overflow: LogOverflow::Block,
        }
    }
}

/// `[jwt_cache]`; unset keys keep `identity::VerifiedCacheSettings`' defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct JwtCacheSection {
    /// Whether verified JWTs are cached at all.
    pub enabled: Option<bool>,
    /// The most verified JWTs held at once.
    pub max_entries: Option<usize>,
    /// How long one verification is reused, at most.
    pub max_age: Option<HumanDuration>,
}

/// `[telemetry]`; unset keys fall back to the `OTEL_*` variables, then the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetrySection {
    /// Whether traces are exported at all.
    #[serde(default)]
    pub enabled: bool,
    /// The OTLP/gRPC collector URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The share of new traces sampled, 0..=1.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    /// The `service.name` resource attribute.
    #[serde(default)]
    pub service_name: Option<String>,
    /// More resource attributes.
    #[serde(default)]
    pub resource: std::collections::BTreeMap<String, String>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerSection {
    /// The gRPC address (token service, health, reflection, ext_authz).
    pub grpc_listen: SocketAddr,
    /// The admin HTTP address (`/healthz`, `/readyz`, metrics).
    pub admin_listen: SocketAddr,
    /// How long in-flight calls may run after SIGTERM.
    pub grace_period: HumanDuration,
    /// TLS (and mTLS) on the gRPC port; plaintext without it.
    pub tls: Option<TlsSection>,
    /// The proxies whose forwarded client identity is believed; none without it.
    pub trusted_proxy: Option<TrustedProxySection>,
}

/// `[server.trusted_proxy]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedProxySection {
    /// Direct peers in these networks are proxies (`10.0.0.0/8`, `127.0.0.1/32`).
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Direct peers whose own mTLS SPIFFE ID fits one of these are proxies.
    #[serde(default)]
    pub spiffe_ids: Vec<String>,
}

/// `[server.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// The PEM certificate chain, end-entity first.
    pub cert_file: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The PEM bundle of CAs client certificates are verified against (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether a client certificate is required (default) or optional; needs `client_ca_file`.
    #[serde(default)]
    pub client_auth: Option<ClientAuthSetting>,
    /// How often the files are read again for a rotation (default 5s).
    #[serde(default)]
    pub reload_interval: Option<HumanDuration>,
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClientAuthSetting {
    /// Every client presents a certificate the CA bundle verifies.
    Required,
    /// A client may present one.
    Optional,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSection {
    /// The largest request message accepted, in bytes.
    pub max_message_size: usize,
    /// The server-side deadline of every call.
    pub request_timeout: HumanDuration,
    /// The most calls served at once per connection (HTTP/2 `MAX_CONCURRENT_STREAMS`).
    pub concurrency: usize,
    /// How long a new connection may take to send its first complete request headers.
    pub header_read_timeout: HumanDuration,
    /// How long a connection with no call in flight stays open.
    pub idle_timeout: HumanDuration,
    /// How often the gRPC port pings an HTTP/2 connection.
    pub keepalive_interval: HumanDuration,
    /// How long the gRPC port waits for a ping's answer before closing the connection.
    pub keepalive_timeout: HumanDuration,
    /// The most open connections on the gRPC port.
    pub max_connections: usize,
    /// The most open connections on the admin port.
    pub admin_max_connections: usize,
    /// The largest request header list (HTTP/2 `MAX_HEADER_LIST_SIZE`), in bytes.
    pub max_header_list_size: u32,
    /// The kernel's queue of connections not yet accepted, per port.
    pub listen_backlog: u32,
    /// The most calls in the pipeline at once; beyond it a call is refused at once.
    pub max_in_flight: usize,
    /// The most keys the in-process limit store holds.
    pub local_max_keys: usize,
    /// `[[limits.rate]]`: the rate limits.
    pub rate: Vec<RateLimitSection>,
    /// `[limits.redis]`: share the limits through Redis.
    pub redis: Option<RedisSection>,
}

/// One `[[limits.rate]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSection {
    /// The unique name.
    pub name: String,
    /// `caller`, `issuer`, `rule`, `channel` or `cel`.
    pub key: String,
    /// The CEL expression of a `cel` key.
    pub expression: Option<String>,
    /// `<count>/<period>`: `20/s`, `600/min`, `5/10s`.
    pub rate: String,
    /// How many calls may come at once; the rate's count by default.
    pub burst: Option<u32>,
    /// The token services counted: `rtc`, `rtm`, `chat`, `fpa` (all by default).
    pub actions: Option<Vec<String>>,
    /// `all` (every call of its actions) or `rule` (only where a rule names it).
    pub scope: Option<String>,
    /// `open` or `closed`: what the limit does while Redis fails.
    pub on_redis_failure: Option<String>,
}

/// `[limits.redis]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisSection {
    /// `redis://host:port/db` or `rediss://...`, without a password.
    pub url: String,
    /// The ACL user.
    pub username: Option<String>,
    /// A file holding the password.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A PEM file of the CAs that sign Redis's certificate.
    pub ca_file: Option<PathBuf>,
    /// The longest one check waits for Redis.
    #[serde(default = "redis_timeout")]
    pub timeout: HumanDuration,
    /// The longest a connection attempt takes.
    #[serde(default = "redis_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long limits keep their fail mode after a failure before Redis is tried again.
    #[serde(default = "redis_retry_interval")]
    pub retry_interval: HumanDuration,
    /// The prefix of every key.
    #[serde(default = "redis_key_prefix")]
    pub key_prefix: String,
    /// How many replicas share the budgets.
    pub replicas: Option<u32>,
}

fn redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(5))
}

fn redis_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn redis_retry_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn redis_key_prefix() -> String {
    "tokengate:rl:".to_owned()
}

/// One `[[projects]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectSection {
    /// The name rules use to pick this project.
    pub name: String,
    /// The Agora App ID (32 hex characters; not a secret).
    pub app_id: String,
    /// The named certificates: primary, secondary, ... Inspect verifies against all.
    pub certificates: Vec<CertificateSection>,
    /// The name of the certificate that signs new tokens.
    pub signing_certificate: String,
}

/// One entry of a project's `certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateSection {
    /// The certificate's name, as rules and `InspectToken` refer to it.
    pub name: String,
    /// A file holding the certificate.
    pub file: Option<PathBuf>,
    /// An environment variable holding the certificate.
    pub env: Option<String>,
}

/// One `[[issuers]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerSection {
    /// A short name for logs and metrics (not a secret, not the `iss`).
    pub name: String,
    /// The exact `iss` strings this issuer signs with (a single string or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Audiences accepted (any of them must be in the token's `aud`).
    pub audiences: Vec<String>,
    /// Keys from this JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Keys from the `jwks_uri` of this OIDC discovery document.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Keys through OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Keys from a local JWKS file, re-read on the refresh schedule.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Keys from a JWKS given inline (tests).
    #[serde(default)]
    pub jwks_inline: Option<String>,
    /// Allowed signature algorithms; HS* only together with an HS secret.
    #[serde(default)]
    pub algorithms: Option<Vec<Algorithm>>,
    /// A file holding the shared secret for HS256/384/512.
    #[serde(default)]
    pub hs_secret_file: Option<PathBuf>,
    /// An environment variable holding the shared secret for HS256/384/512.
    #[serde(default)]
    pub hs_secret_env: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default)]
    pub leeway: Option<HumanDuration>,
    /// Claims that must be present beyond `exp`, `iss`, `aud` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Whether a token must name its key with `kid`.
    #[serde(default)]
    pub require_kid: Option<bool>,
    /// The largest accepted token, in bytes, checked before any decoding.
    #[serde(default)]
    pub max_token_size: Option<usize>,
    /// The longest JWT lifetime accepted (`exp - iat`, or `exp - now` without `iat`).
    #[serde(default)]
    pub max_token_lifetime: Option<HumanDuration>,
    /// Whether readiness waits for this issuer's keys (default true).
    #[serde(default)]
    pub required_for_readiness: Option<bool>,
    /// Whether this issuer's verified JWTs go into the `[jwt_cache]` (default true).
    #[serde(default)]
    pub verified_cache: Option<bool>,
    /// How the keys are kept fresh.
    #[serde(default)]
    pub refresh: RefreshSection,
}

/// An issuer's `[refresh]` table; unset keys keep the schedule's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RefreshSection {
    /// See `identity::RefreshConfig::min_refresh`.
    pub min_refresh: Option<HumanDuration>,
    /// See `identity::RefreshConfig::max_refresh`.
    pub max_refresh: Option<HumanDuration>,
    /// See `identity::RefreshConfig::default_ttl`.
    pub default_ttl: Option<HumanDuration>,
    /// See `identity::RefreshConfig::fetch_timeout`.
    pub fetch_timeout: Option<HumanDuration>,
    /// See `identity::RefreshConfig::max_stale`.
    pub max_stale: Option<HumanDuration>,
    /// See `identity::RefreshConfig::unknown_kid_cooldown`.
    pub unknown_kid_cooldown: Option<HumanDuration>,
    /// See `identity::IssuerBuilder::unknown_kid_wait`.
    pub unknown_kid_wait: Option<HumanDuration>,
    /// See `identity::RefreshConfig::backoff_initial`.
    pub backoff_initial: Option<HumanDuration>,
    /// See `identity::RefreshConfig::backoff_max`.
    pub backoff_max: Option<HumanDuration>,
    /// See `identity::RefreshConfig::max_body_size`.
    pub max_body_size: Option<usize>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            grace_period: HumanDuration(Duration::from_secs(10)),
            tls: None,
            trusted_proxy: None,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            request_timeout: HumanDuration(Duration::from_secs(5)),
            concurrency: 256,
            header_read_timeout: HumanDuration(Duration::from_secs(5)),
            idle_timeout: HumanDuration(Duration::from_secs(120)),
            keepalive_interval: HumanDuration(Duration::from_secs(30)),
            keepalive_timeout: HumanDuration(Duration::from_secs(10)),
            max_connections: 1000,
            admin_max_connections: 64,
            max_header_list_size: 128 * 1024,
            listen_backlog: 1024,
            max_in_flight: 1024,
            local_max_keys: 100_000,
            rate: Vec::new(),
            redis: None,
        }
    }
}

/// Accepts `"x"` as well as `["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
