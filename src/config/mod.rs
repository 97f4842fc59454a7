//! The service configuration: one TOML file, typed and validated before any
//! port is bound.
//!
//! Loading has two steps. `parse` turns the text into the raw structs of
//! `file` (private to this module), with errors that name the key
//! (`projects[0].app_id`); `resolve` reads every secret the config points at
//! (App Certificates and HS secrets, from files or environment variables,
//! never inline values, through `secret`), checks the cross-references and
//! returns a [`Config`] of validated types with private fields. Both steps
//! are pure given their inputs: the environment arrives as a lookup
//! function, so tests never call `std::env::set_var`. Because every secret is
//! read here, `check-config` refuses everything `serve` would.
//!
//! Submodules: `file` (the serde structs), `secret` (the one file-or-variable
//! rule), `duration` (the one duration syntax), `issuer` (issuer tables into
//! `identity::IssuerSettings`), `telemetry` (`[telemetry]` and the `OTEL_*`
//! variables into [`TelemetrySettings`]), `logging` (`[logging]`, the log
//! writer's queue, into [`LogSettings`]).

mod duration;
mod facts;
mod file;
mod files;
mod forward_auth;
mod issuer;
mod limits;
mod logging;
mod secret;
mod telemetry;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use self::file::{
    CertificateSection, ConfigFile, JwtCacheSection, LimitsSection, ProjectSection, ServerSection,
};
use self::secret::SecretSource;
use crate::domain::Fingerprint;
use crate::facts::FactsConfig;
use crate::forward_auth::ForwardAuthSettings;
use crate::forwarded::{ForwardedError, TrustedProxies};
use crate::gate::Project;
use crate::identity::{
    IdentityConfigError, IssuerSettings, VerifiedCacheSettings, validate_issuers,
};
use crate::limits::LimitSet;
use crate::policy::{Policy, PolicyError, PolicyWarning, RuleConfig};
use crate::routes::Routes;
use crate::tls::{ClientAuth, Material, TlsSettings};
use crate::token::{AppCertificate, AppId};

pub use self::limits::LimiterSettings;
pub use self::logging::LogSettings;
pub use self::telemetry::TelemetrySettings;

/// A configuration that cannot be used. The message always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not match the schema.
    #[error("{key}: {message}")]
    Syntax {
        /// The dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The config file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
}

/// A loaded, validated config: secrets read, rules compiled. Nothing is bound yet.
#[derive(Debug)]
pub struct Config {
    server: ServerSettings,
    limits: Limits,
    rate_limits: LimitSet,
    limiter: LimiterSettings,
    projects: Vec<Project>,
    issuers: Vec<IssuerSettings>,
    jwt_cache: VerifiedCacheSettings,
    policy: Policy,
    warnings: Vec<PolicyWarning>,
    notices: Vec<String>,
    fingerprint: Fingerprint,
    ext_authz: Option<Routes>,
    forward_auth: Option<ForwardAuthSettings>,
    telemetry: Option<TelemetrySettings>,
    logging: LogSettings,
    tls: Option<(TlsSettings, Material)>,
    trusted_proxy: Option<TrustedProxies>,
    facts: FactsConfig,
    files: Vec<PathBuf>,
    parts: PartFingerprints,
}

/// Fingerprints of the parts of a config that a reload reports by name
/// (projects are fingerprinted from their certificates by the reload itself).
/// Nothing here is secret: rules, routes and public key sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFingerprints {
    /// Each rule's name and the fingerprint of its settings, in order.
    pub rules: Vec<(String, Fingerprint)>,
    /// The `[ext_authz]` section, enabled or not.
    pub ext_authz: Fingerprint,
    /// Each `jwks_file` issuer's name and the fingerprint of the file's contents.
    pub jwks_files: Vec<(String, Fingerprint)>,
    /// The rate limits, the rules' `limits` and `limits.max_in_flight`.
    pub rate_limits: Fingerprint,
    /// `[databases]` and `[[facts]]` (passwords and secrets shown redacted).
    pub facts: Fingerprint,
}

/// A [`Config`] taken apart, for the code that starts the service and needs ownership.
#[derive(Debug)]
pub struct ConfigParts {
    /// Listen addresses and shutdown.
    pub server: ServerSettings,
    /// Request limits.
    pub limits: Limits,
    /// The rate limits and the bound on calls in flight (reloadable).
    pub rate_limits: LimitSet,
    /// The limiter's store and Redis (restart-only).
    pub limiter: LimiterSettings,
    /// The projects, with their certificates.
    pub projects: Vec<Project>,
    /// The identity providers, validated, HS secrets read, not started.
    pub issuers: Vec<IssuerSettings>,
    /// The verified-JWT cache.
    pub jwt_cache: VerifiedCacheSettings,
    /// The compiled rules.
    pub policy: Policy,
    /// Problems that do not stop loading (shadowed rules).
    pub warnings: Vec<PolicyWarning>,
    /// What an operator should know about the files the config names
    /// (world-readable secrets, symlinks out of the config's folder).
    pub notices: Vec<String>,
    /// The SHA-256 prefix of the config text (and its rules file), for logs and metrics.
    pub fingerprint: Fingerprint,
    /// The compiled `[ext_authz]` section, when `enabled = true`.
    pub ext_authz: Option<Routes>,
    /// `[forward_auth]`, when `enabled = true`.
    pub forward_auth: Option<ForwardAuthSettings>,
    /// Trace export, when `[telemetry]` turns it on.
    pub telemetry: Option<TelemetrySettings>,
    /// TLS on the gRPC port, with the files as loaded and checked.
    pub tls: Option<(TlsSettings, Material)>,
    /// `[server.trusted_proxy]`: the proxies whose forwarded identity counts.
    pub trusted_proxy: Option<TrustedProxies>,
    /// `[databases]` and `[[facts]]`, validated, secrets read, not connected.
    pub facts: FactsConfig,
    /// Every file the config was read from (see [`Config::files`]).
    pub files: Vec<PathBuf>,
    /// The parts a reload compares by name.
    pub parts: PartFingerprints,
    /// The log writer's queue.
    pub logging: LogSettings,
}

/// Listen addresses and shutdown behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    grpc_listen: SocketAddr,
    admin_listen: SocketAddr,
    grace_period: Duration,
}

/// Request and connection limits, each checked to be usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_message_size: usize,
    request_timeout: Duration,
    concurrency: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    max_connections: usize,
    admin_max_connections: usize,
    max_header_list_size: u32,
    listen_backlog: u32,
}

/// The longest `limits.header_read_timeout` accepted: a slow-header
/// connection holds a slot for this long, so a large value is a DoS setting.
const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The smallest `limits.max_header_list_size`: HTTP/2's own default is 16 KiB,
/// and ordinary gRPC headers with a JWT need a good part of it.
const MIN_HEADER_LIST_SIZE: u32 = 16 * 1024;
/// The largest `limits.max_header_list_size`: h2 buffers a header block up to
/// this size before refusing it.
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024 * 1024;
/// The most connections either port may be configured to hold.
const MAX_CONNECTIONS: usize = 1_000_000;

impl Config {
    /// Listen addresses and shutdown.
    pub fn server(&self) -> &ServerSettings {
        &self.server
    }

    /// Request limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The rate limits and the bound on calls in flight.
    pub fn rate_limits(&self) -> &LimitSet {
        &self.rate_limits
    }

    /// The limiter's store and Redis.
    pub fn limiter(&self) -> &LimiterSettings {
        &self.limiter
    }

    /// The projects, with their certificates, in config order.
    pub fn projects(&self) -> &[Project] {
        &self.projects
    }

    /// The identity providers, in config order.
    pub fn issuers(&self) -> &[IssuerSettings] {
        &self.issuers
    }

    /// The verified-JWT cache's settings.
    pub fn jwt_cache(&self) -> &VerifiedCacheSettings {
        &self.jwt_cache
    }

    /// The compiled rules.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Problems that do not stop loading (shadowed rules).
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }

    /// The SHA-256 prefix of the config text and its rules file: what changed
    /// between two loads shows as a new fingerprint in logs and metrics.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Notices about the files the config names, for `check-config` and the start-up log.
    pub fn notices(&self) -> &[String] {
        &self.notices
    }

    /// The compiled `[ext_authz]` section, when `enabled = true`.
    pub fn ext_authz(&self) -> Option<&Routes> {
        self.ext_authz.as_ref()
    }

    /// `[forward_auth]`, when `enabled = true`.
    pub fn forward_auth(&self) -> Option<&ForwardAuthSettings> {
        self.forward_auth.as_ref()
    }

    /// Trace export, when `[telemetry]` turns it on.
    pub fn telemetry(&self) -> Option<&TelemetrySettings> {
        self.telemetry.as_ref()
    }

    /// The log writer's queue.
    pub fn logging(&self) -> &LogSettings {
        &self.logging
    }

    /// TLS on the gRPC port (`[server.tls]`), with the files as loaded and checked.
    pub fn tls(&self) -> Option<(&TlsSettings, &Material)> {
        self.tls
            .as_ref()
            .map(|(settings, material)| (settings, material))
    }

    /// `[server.trusted_proxy]`: the proxies whose forwarded client identity
    /// counts; `None` believes no forwarded identity.
    pub fn trusted_proxy(&self) -> Option<&TrustedProxies> {
        self.trusted_proxy.as_ref()
    }

    /// `[databases]` and `[[facts]]`.
    pub fn facts(&self) -> &FactsConfig {
        &self.facts
    }

    /// Every file the config was read from, as the config names them: the
    /// config file itself (when loaded from one), the rules file, App
    /// Certificate and HS secret files, JWKS files and the TLS PEM files.
    /// A change to any of them is what a reload watches for.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The parts a reload compares by name.
    pub fn parts(&self) -> &PartFingerprints {
        &self.parts
    }

    /// Every part, by value.
    pub fn into_parts(self) -> ConfigParts {
        ConfigParts {
            server: self.server,
            limits: self.limits,
            rate_limits: self.rate_limits,
            limiter: self.limiter,
            projects: self.projects,
            issuers: self.issuers,
            jwt_cache: self.jwt_cache,
            policy: self.policy,
            warnings: self.warnings,
            notices: self.notices,
            fingerprint: self.fingerprint,
            ext_authz: self.ext_authz,
            forward_auth: self.forward_auth,
            telemetry: self.telemetry,
            tls: self.tls,
            trusted_proxy: self.trusted_proxy,
            facts: self.facts,
            files: self.files,
            parts: self.parts,
            logging: self.logging,
        }
    }
}

impl ServerSettings {
    /// The gRPC address (token service, health, reflection, ext_authz).
    pub fn grpc_listen(&self) -> SocketAddr {
        self.grpc_listen
    }

    /// The admin HTTP address (`/healthz`, `/readyz`, metrics).
    pub fn admin_listen(&self) -> SocketAddr {
        self.admin_listen
    }

    /// How long in-flight calls may run after SIGTERM.
    pub fn grace_period(&self) -> Duration {
        self.grace_period
    }

    fn resolve(section: &ServerSection) -> Self {
        Self {
            grpc_listen: section.grpc_listen,
            admin_listen: section.admin_listen,
            grace_period: section.grace_period.0,
        }
    }
}

impl Limits {
    /// The largest request message accepted, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// The server-side deadline of every call.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The most calls served at once per connection, advertised to clients
    /// as HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// How long a new connection may take to send its first complete request
    /// headers (on the admin port: every request's headers).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// How long a connection with no call in flight stays open.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How often the gRPC port sends an HTTP/2 PING on a connection.
    pub fn keepalive_interval(&self) -> Duration {
        self.keepalive_interval
    }

    /// How long the gRPC port waits for a PING's answer before closing the connection.
    pub fn keepalive_timeout(&self) -> Duration {
        self.keepalive_timeout
    }

    /// The most open connections on the gRPC port; more are closed at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// The most open connections on the admin port; more are closed at once.
    pub fn admin_max_connections(&self) -> usize {
        self.admin_max_connections
    }

    /// The largest request header list accepted, in bytes (HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`); a larger one is refused at the transport.
    pub fn max_header_list_size(&self) -> u32 {
        self.max_header_list_size
    }

    /// The listen backlog of each port: connections the kernel queues before `accept`.
    pub fn listen_backlog(&self) -> u32 {
        self.listen_backlog
    }

    fn resolve(section: &LimitsSection) -> Result<Self, ConfigError> {
        if section.max_message_size < 1024 {
            return Err(invalid(
                "limits.max_message_size",
                "must be at least 1024 bytes",
            ));
        }
        if section.request_timeout.0.is_zero() {
            return Err(invalid("limits.request_timeout", "must be positive"));
        }
        if section.concurrency == 0 || u32::try_from(section.concurrency).is_err() {
            return Err(invalid(
                "limits.concurrency",
                "must be between 1 and 4294967295",
            ));
        }
        let header_read_timeout = section.header_read_timeout.0;
        if header_read_timeout.is_zero() || header_read_timeout > MAX_HEADER_READ_TIMEOUT {
            return Err(invalid(
                "limits.header_read_timeout",
                "must be positive and at most 60s",
            ));
        }
        for (key, value) in [
            ("limits.idle_timeout", section.idle_timeout.0),
            ("limits.keepalive_interval", section.keepalive_interval.0),
            ("limits.keepalive_timeout", section.keepalive_timeout.0),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be positive"));
            }
        }
        for (key, value) in [
            ("limits.max_connections", section.max_connections),
            (
                "limits.admin_max_connections",
                section.admin_max_connections,
            ),
        ] {
            if value == 0 || value > MAX_CONNECTIONS {
                return Err(invalid(key, "must be between 1 and 1000000"));
            }
        }
        if !(MIN_HEADER_LIST_SIZE..=MAX_HEADER_LIST_SIZE).contains(&section.max_header_list_size) {
            return Err(invalid(
                "limits.max_header_list_size",
                "must be between 16384 and 16777216 bytes",
            ));
        }
        if !(1..=65535).contains(&section.listen_backlog) {
            return Err(invalid(
                "limits.listen_backlog",
                "must be between 1 and 65535",
            ));
        }
        Ok(Self {
            max_message_size: section.max_message_size,
            request_timeout: section.request_timeout.0,
            concurrency: section.concurrency,
            header_read_timeout,
            idle_timeout: section.idle_timeout.0,
            keepalive_interval: section.keepalive_interval.0,
            keepalive_timeout: section.keepalive_timeout.0,
            max_connections: section.max_connections,
            admin_max_connections: section.admin_max_connections,
            max_header_list_size: section.max_header_list_size,
            listen_backlog: section.listen_backlog,
        })
    }
}

/// Reads and loads the config file at `path`.
pub fn load_file(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let read_error = |message: String| ConfigError::Read {
        path: path.display().to_string(),
        message,
    };
    let bytes = files::read_bounded(path, files::MAX_DOCUMENT_BYTES).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|_| read_error("is not UTF-8".into()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config = resolve(parse_toml(&text)?, &text, base, env)?;
    config.files.insert(0, path.to_path_buf());
    Ok(config)
}

/// Parses `text` and resolves it (a `rules_file` is relative to the current directory).
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    resolve(parse_toml(text)?, text, Path::new("."), env)
}

/// Validates a parsed config: reads every secret, checks names and
/// references, validates the issuers and compiles the rules.
fn resolve(
    mut file: ConfigFile,
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut hashed = text.as_bytes().to_vec();
    let mut files = named_files(&file);
    if let Some(rules_file) = file.rules_file.take() {
        let rules_file = base.join(rules_file);
        files.insert(0, rules_file.clone());
        let (rules, rules_text) = read_rules_file(&rules_file, !file.rules.is_empty())?;
        file.rules = rules;
        hashed.extend_from_slice(rules_text.as_bytes());
    }
    let fingerprint = Fingerprint::of(&hashed);
    let server = ServerSettings::resolve(&file.server);
    let limits = Limits::resolve(&file.limits)?;
    let telemetry = telemetry::resolve(&file.telemetry, env)?;
    let logging = LogSettings::resolve(&file.logging)?;
    let tls = file.server.tls.as_ref().map(resolve_tls).transpose()?;
    let trusted_proxy = resolve_trusted_proxy(&file.server)?;
    if file.projects.is_empty() {
        return Err(invalid("projects", "at least one project is required"));
    }
    check_unique(file.projects.iter().map(|p| p.name.as_str()), |i| {
        format!("projects[{i}].name")
    })?;
    let projects = file
        .projects
        .iter()
        .enumerate()
        .map(|(i, p)| resolve_project(p, &format!("projects[{i}]"), env))
        .collect::<Result<Vec<_>, _>>()?;
    check_app_ids(&projects)?;
    let mut notices = file_notices(&file, base);
    if let Some(section) = &file.server.tls {
        notices.extend(files::secret_file_notices(
            "server.tls.key_file",
            &section.key_file,
            base,
        ));
    }
    let jwks_files = check_jwks_files(&file)?;
    if file.issuers.is_empty() {
        return Err(invalid("issuers", "at least one issuer is required"));
    }
    let issuers = file
        .issuers
        .into_iter()
        .enumerate()
        .map(|(i, section)| issuer::resolve_issuer(section, &format!("issuers[{i}]"), env))
        .collect::<Result<Vec<_>, _>>()?;
    validate_issuers(&issuers, "issuers").map_err(identity_error)?;
    let jwt_cache = resolve_jwt_cache(&file.jwt_cache)?;
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let issuer_names: Vec<crate::policy::Issuer> = issuers
        .iter()
        .map(|i| crate::policy::Issuer {
            name: i.name().to_owned(),
            iss: i.issuer().to_vec(),
        })
        .collect();
    let facts = facts::resolve(&file.databases, &file.facts, env)?;
    let (policy, warnings) =
        Policy::compile_with_facts(&file.rules, &names, &issuer_names, facts.declarations())
            .map_err(policy_error)?;
    let (rate_limits, limiter) = limits::resolve(&file.limits, &file.rules, env)?;
    let parts = PartFingerprints {
        rules: file
            .rules
            .iter()
            .map(|rule| (rule.name.clone(), debug_fingerprint(rule)))
            .collect(),
        ext_authz: debug_fingerprint(&file.ext_authz),
        jwks_files,
        rate_limits: debug_fingerprint(&(&file.limits.rate, file.limits.max_in_flight)),
        facts: debug_fingerprint(&facts),
    };
    let mesh = Routes::compile(&file.ext_authz, &names).map_err(|e| ConfigError::Invalid {
        key: e.key,
        message: e.message,
    })?;
    let forward_auth = forward_auth::resolve(
        &file.forward_auth,
        file.ext_authz.enabled,
        &[
            ("server.grpc_listen", server.grpc_listen()),
            ("server.admin_listen", server.admin_listen()),
        ],
    )?;
    Ok(Config {
        ext_authz: file.ext_authz.enabled.then_some(mesh),
        forward_auth,
        server,
        limits,
        rate_limits,
        limiter,
        projects,
        issuers,
        jwt_cache,
        policy,
        warnings,
        notices,
        fingerprint,
        telemetry,
        logging,
        tls,
        trusted_proxy,
        facts,
        files,
        parts,
    })
}

/// `[server.trusted_proxy]`: valid networks and SPIFFE ID patterns, and
/// mTLS on the port when a proxy is to be known by its SPIFFE ID.
fn resolve_trusted_proxy(server: &ServerSection) -> Result<Option<TrustedProxies>, ConfigError> {
    let Some(section) = &server.trusted_proxy else {
        return Ok(None);
    };
    let trusted =
        TrustedProxies::new(&section.cidrs, &section.spiffe_ids).map_err(|e| match e {
            ForwardedError::Config { key, reason } => {
                invalid(&format!("server.trusted_proxy.{key}"), &reason)
            }
            other => invalid("server.trusted_proxy", &other.to_string()),
        })?;
    let verifies_clients = server
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    if trusted.names_spiffe_ids() && !verifies_clients {
        return Err(invalid(
            "server.trusted_proxy.spiffe_ids",
            "needs server.tls.client_ca_file: a proxy's SPIFFE ID is read from its verified client certificate (or trust it by cidrs)",
        ));
    }
    Ok(Some(trusted))
}

/// The fingerprint of a parsed value's `Debug` form: two loads of the same
/// settings in one process print the same, which is all a reload compares.
fn debug_fingerprint(value: &impl std::fmt::Debug) -> Fingerprint {
    Fingerprint::of(format!("{value:?}").as_bytes())
}

/// The files the config's sections name, as they name them (the rules file
/// is added by `resolve`, the config file by `load_file`).
fn named_files(file: &ConfigFile) -> Vec<PathBuf> {
    let certificates = file
        .projects
        .iter()
        .flat_map(|p| p.certificates.iter().filter_map(|c| c.file.clone()));
    let issuers = file.issuers.iter().flat_map(|issuer| {
        [issuer.hs_secret_file.clone(), issuer.jwks_file.clone()]
            .into_iter()
            .flatten()
    });
    let tls = file.server.tls.iter().flat_map(|tls| {
        [
            Some(tls.cert_file.clone()),
            Some(tls.key_file.clone()),
            tls.client_ca_file.clone(),
        ]
        .into_iter()
        .flatten()
    });
    let redis = file.limits.redis.iter().flat_map(|redis| {
        [redis.password_file.clone(), redis.ca_file.clone()]
            .into_iter()
            .flatten()
    });
    let databases = file.databases.values().flat_map(|db| {
        [db.password_file.clone(), db.ca_file.clone()]
            .into_iter()
            .flatten()
    });
    let facts = file.facts.iter().flat_map(|fact| {
        [fact.secret_file.clone(), fact.ca_file.clone()]
            .into_iter()
            .flatten()
    });
    certificates
        .chain(issuers)
        .chain(tls)
        .chain(databases)
        .chain(facts)
        .chain(redis)
        .collect()
}

/// `[jwt_cache]` over the defaults; an error's key is `jwt_cache.<field>`.
fn resolve_jwt_cache(section: &JwtCacheSection) -> Result<VerifiedCacheSettings, ConfigError> {
    let defaults = VerifiedCacheSettings::default();
    VerifiedCacheSettings::new(
        section.enabled.unwrap_or(defaults.enabled()),
        section.max_entries.unwrap_or(defaults.max_entries()),
        section.max_age.as_ref().map_or(defaults.max_age(), |d| d.0),
    )
    .map_err(|e| match e {
        IdentityConfigError::Invalid { key, problem } => {
            invalid(&format!("jwt_cache.{key}"), &problem)
        }
        other => invalid("jwt_cache", &other.to_string()),
    })
}

/// The shortest `server.tls.reload_interval`: each poll reads three files.
const MIN_TLS_RELOAD_INTERVAL: Duration = Duration::from_millis(100);
/// The longest: a rotated certificate should be in use within the hour.
const MAX_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(3600);

/// `[server.tls]`: the settings, and the files loaded and checked now, so
/// `check-config` refuses what `serve` would (a chain that does not parse,
/// a key that does not match, an unusable CA bundle).
fn resolve_tls(section: &file::TlsSection) -> Result<(TlsSettings, Material), ConfigError> {
    let client_auth = match (&section.client_ca_file, section.client_auth) {
        (None, Some(_)) => {
            return Err(invalid(
                "server.tls.client_auth",
                "needs server.tls.client_ca_file: client certificates are verified against it",
            ));
        }
        (None, None) => ClientAuth::None,
        (Some(_), None | Some(file::ClientAuthSetting::Required)) => ClientAuth::Required,
        (Some(_), Some(file::ClientAuthSetting::Optional)) => ClientAuth::Optional,
    };
    let reload_interval = section
        .reload_interval
        .map_or(Duration::from_secs(5), |d| d.0);
    if !(MIN_TLS_RELOAD_INTERVAL..=MAX_TLS_RELOAD_INTERVAL).contains(&reload_interval) {
        return Err(invalid(
            "server.tls.reload_interval",
            "must be between 100ms and 1h",
        ));
    }
    let settings = TlsSettings::new(
        section.cert_file.clone(),
        section.key_file.clone(),
        section.client_ca_file.clone(),
        client_auth,
        reload_interval,
    );
    let material = Material::load(&settings)
        .map_err(|e| invalid(&format!("server.tls.{}", e.file), &e.to_string()))?;
    Ok((settings, material))
}

/// Two projects with one App ID could not be told apart by renewal or
/// inspection (a token names only its App ID), so that is refused.
fn check_app_ids(projects: &[Project]) -> Result<(), ConfigError> {
    for (i, project) in projects.iter().enumerate() {
        if let Some(first) = projects[..i].iter().position(|p| {
            p.app_id
                .as_str()
                .eq_ignore_ascii_case(project.app_id.as_str())
        }) {
            return Err(invalid(
                &format!("projects[{i}].app_id"),
                &format!(
                    "is also the App ID of projects[{first}] ({:?}); tokens name only their App ID, so renewal and inspection could not tell the two apart",
                    projects[first].name
                ),
            ));
        }
    }
    Ok(())
}

/// A `jwks_file` must hold a JWKS now, not only at the first refresh: a
/// certificate or a key in PEM given by mistake is refused at load.
fn check_jwks_files(file: &ConfigFile) -> Result<Vec<(String, Fingerprint)>, ConfigError> {
    let mut read = Vec::new();
    for (i, issuer) in file.issuers.iter().enumerate() {
        let Some(path) = &issuer.jwks_file else {
            continue;
        };
        let key = format!("issuers[{i}].jwks_file");
        let bytes =
            files::read_bounded(path, files::MAX_DOCUMENT_BYTES).map_err(|e| invalid(&key, &e))?;
        crate::identity::KeySet::parse(&bytes).map_err(|e| {
            invalid(
                &key,
                &format!("{} is not a usable JWKS: {e}", path.display()),
            )
        })?;
        read.push((issuer.name.clone(), Fingerprint::of(&bytes)));
    }
    Ok(read)
}

/// Notices for every secret file the config names.
fn file_notices(file: &ConfigFile, base: &Path) -> Vec<String> {
    let certificates = file.projects.iter().enumerate().flat_map(|(i, p)| {
        p.certificates.iter().enumerate().filter_map(move |(j, c)| {
            c.file
                .as_ref()
                .map(|path| (format!("projects[{i}].certificates[{j}].file"), path))
        })
    });
    let hs_secrets = file.issuers.iter().enumerate().filter_map(|(i, issuer)| {
        issuer
            .hs_secret_file
            .as_ref()
            .map(|path| (format!("issuers[{i}].hs_secret_file"), path))
    });
    let redis = file
        .limits
        .redis
        .iter()
        .filter_map(|redis| redis.password_file.as_ref())
        .map(|path| ("limits.redis.password_file".to_owned(), path));
    certificates
        .chain(hs_secrets)
        .chain(redis)
        .flat_map(|(key, path)| files::secret_file_notices(&key, path, base))
        .collect()
}

/// The `[[rules]]` of a separate rules file.
fn read_rules_file(
    path: &Path,
    inline_too: bool,
) -> Result<(Vec<RuleConfig>, String), ConfigError> {
    if inline_too {
        return Err(invalid(
            "rules_file",
            "set either inline `rules` or `rules_file`, not both",
        ));
    }
    let bytes = files::read_bounded(path, files::MAX_DOCUMENT_BYTES)
        .map_err(|e| invalid("rules_file", &e))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| invalid("rules_file", &format!("{} is not UTF-8", path.display())))?;
    let rules: crate::policy::PolicyConfig = parse_toml(&text).map_err(|e| match e {
        ConfigError::Syntax { key, message } => ConfigError::Syntax {
            key: format!("rules_file: {key}"),
            message,
        },
        other => other,
    })?;
    Ok((rules.rules, text))
}

fn resolve_project(
    section: &ProjectSection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ConfigError> {
    let app_id = AppId::parse(&section.app_id)
        .map_err(|e| invalid(&format!("{key}.app_id"), &e.to_string()))?;
    if section.certificates.is_empty() {
        return Err(invalid(
            &format!("{key}.certificates"),
            "at least one certificate is required",
        ));
    }
    check_unique(section.certificates.iter().map(|c| c.name.as_str()), |i| {
        format!("{key}.certificates[{i}].name")
    })?;
    let mut certificates = Vec::with_capacity(section.certificates.len());
    for (i, entry) in section.certificates.iter().enumerate() {
        let cert_key = format!("{key}.certificates[{i}]");
        certificates.push((entry.name.clone(), read_certificate(entry, &cert_key, env)?));
    }
    let signer = certificates
        .iter()
        .position(|(name, _)| *name == section.signing_certificate)
        .ok_or_else(|| {
            invalid(
                &format!("{key}.signing_certificate"),
                &format!(
                    "{:?} is not one of the project's certificates",
                    section.signing_certificate
                ),
            )
        })?;
    Ok(Project {
        name: section.name.clone(),
        app_id,
        certificates,
        signer,
    })
}

/// Reads and parses one App Certificate; errors name the key and the source, never the value.
fn read_certificate(
    entry: &CertificateSection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AppCertificate, ConfigError> {
    let exactly_one = || {
        invalid(
            key,
            "set exactly one of `file` or `env` (secrets are never written inline)",
        )
    };
    let source = SecretSource::at_most_one(entry.file.clone(), entry.env.clone(), exactly_one)?
        .ok_or_else(exactly_one)?;
    let secret = source.read(key, env)?;
    std::str::from_utf8(secret.expose())
        .ok()
        .and_then(|text| AppCertificate::parse(text).ok())
        .ok_or_else(|| invalid(key, &format!("{source} is not 32 hexadecimal characters")))
}

/// An identity error as a config error for the same key.
pub fn identity_error(error: IdentityConfigError) -> ConfigError {
    match error {
        IdentityConfigError::Invalid { key, problem } => invalid(&key, &problem),
        other => invalid("issuers", &other.to_string()),
    }
}

fn policy_error(error: PolicyError) -> ConfigError {
    match error {
        PolicyError::InvalidRule {
            index,
            name,
            key,
            reason,
        } => invalid(
            &format!("rules[{index}].{key}"),
            &format!("(rule {name:?}) {reason}"),
        ),
        PolicyError::Syntax(message) => invalid("rules", &message),
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

/// Deserializes `text` as `T`, reporting the dotted path of the first bad key.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        key: "(file)".into(),
        message: e.message().to_owned(),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Syntax {
            key: if key == "." { "(root)".into() } else { key },
            message: inner.message().to_owned(),
        }
    })
}

/// Checks that every name in `names` is unique, naming the first duplicate's key.
fn check_unique<'a>(
    names: impl IntoIterator<Item = &'a str>,
    key: impl Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.into_iter().enumerate() {
        if name.is_empty() {
            return Err(ConfigError::Invalid {
                key: key(i),
                message: "must not be empty".into(),
            });
        }
        if !seen.insert(name) {
            return Err(ConfigError::Invalid {
                key: key(i),
                message: format!("duplicate name {name:?}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ports() {
        let file: ConfigFile = parse_toml("").unwrap();
        let server = ServerSettings::resolve(&file.server);
        assert_eq!(server.grpc_listen().port(), 50051);
        assert_eq!(server.admin_listen().port(), 9090);
        let limits = Limits::resolve(&file.limits).unwrap();
        assert_eq!(limits.request_timeout(), Duration::from_secs(5));
        // The connection defaults the README promises: at most 10 s to the
        // first complete headers, and room for a 100 KiB JWT in the header list.
        assert!(limits.header_read_timeout() <= Duration::from_secs(10));
        assert!(limits.max_header_list_size() >= 128 * 1024);
        assert!(limits.max_connections() >= 1 && limits.admin_max_connections() >= 1);
        assert!(file.projects.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\ngrpc_listen = \"nope\"", "server.grpc_listen"),
            (
                "[limits]\nrequest_timeout = \"5 parsecs\"",
                "limits.request_timeout",
            ),
            ("[server]\nbogus = 1", "server.bogus"),
            (
                "[[projects]]\nname = \"a\"\napp_id = \"x\"\nsigning_certificate = \"p\"\n[[projects.certificates]]\nname = \"p\"\nvalue = \"inline\"",
                "projects[0].certificates[0].value",
            ),
            (
                "[[issuers]]\nname = \"a\"\nissuer = \"i\"\naudiences = [\"a\"]\nleeway = \"5 parsecs\"",
                "issuers[0].leeway",
            ),
        ];
        for (text, key) in cases {
            match parse_toml::<ConfigFile>(text) {
                Err(ConfigError::Syntax { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_must_be_usable() {
        let cases = [
            ("max_message_size = 10", "limits.max_message_size"),
            ("request_timeout = \"0s\"", "limits.request_timeout"),
            ("concurrency = 0", "limits.concurrency"),
            ("header_read_timeout = \"0s\"", "limits.header_read_timeout"),
            (
                "header_read_timeout = \"61s\"",
                "limits.header_read_timeout",
            ),
            ("idle_timeout = \"0s\"", "limits.idle_timeout"),
            ("keepalive_interval = \"0s\"", "limits.keepalive_interval"),
            ("keepalive_timeout = \"0s\"", "limits.keepalive_timeout"),
            ("max_connections = 0", "limits.max_connections"),
            ("admin_max_connections = 0", "limits.admin_max_connections"),
            ("max_header_list_size = 1024", "limits.max_header_list_size"),
            (
                "max_header_list_size = 16777217",
                "limits.max_header_list_size",
            ),
            ("listen_backlog = 0", "limits.listen_backlog"),
            ("listen_backlog = 65536", "limits.listen_backlog"),
        ];
        for (text, key) in cases {
            let section: LimitsSection = parse_toml(text).unwrap();
            match Limits::resolve(&section) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn certificates_come_from_exactly_one_source() {
        let env =
            |name: &str| (name == "CERT").then(|| "5CFd2fd1755d40ecb72977518be15d3b\n".to_owned());
        let entry = |file: Option<&str>, env: Option<&str>| CertificateSection {
            name: "p".into(),
            file: file.map(Into::into),
            env: env.map(Into::into),
        };
        assert!(read_certificate(&entry(None, Some("CERT")), "k", &env).is_ok());
        for bad in [
            entry(None, Some("NOPE")),
            entry(None, None),
            entry(Some("/nonexistent"), Some("CERT")),
        ] {
            assert!(
                matches!(read_certificate(&bad, "k", &env), Err(ConfigError::Invalid { key, .. }) if key == "k"),
                "{bad:?}"
            );
        }
        let not_hex = |_: &str| Some("s3cr3t-but-not-hex".to_owned());
        let err = read_certificate(&entry(None, Some("CERT")), "k", &not_hex).unwrap_err();
        assert_eq!(
            err.to_string(),
            "k: environment variable CERT is not 32 hexadecimal characters"
        );
    }

    #[test]
    fn names_must_be_unique_and_non_empty() {
        assert!(check_unique(["a", "b"], |i| format!("x[{i}]")).is_ok());
        let dup = check_unique(["a", "a"], |i| format!("x[{i}]"));
        assert!(matches!(dup, Err(ConfigError::Invalid { key, .. }) if key == "x[1]"));
        let empty = check_unique([""], |i| format!("x[{i}]"));
        assert!(matches!(empty, Err(ConfigError::Invalid { key, .. }) if key == "x[0]"));
    }
}
