//! `tokengate serve` and `tokengate check-config`: the production entry points.
//!
//! Both validate the whole config before anything else happens; an invalid
//! config exits 64 (EX_USAGE) with a message that names the key.

use std::path::PathBuf;
use std::process::ExitCode;

use super::telemetry::Tracing;
use crate::config::{self, Config};
use crate::identity::KeySource;
use crate::server::{self, StartError};

/// The exit code for an unusable config: sysexits EX_USAGE.
pub const EXIT_CONFIG: u8 = 64;

/// Arguments of `tokengate serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The log format.
    #[arg(long, value_enum, default_value = "json")]
    pub log_format: super::logging::LogFormat,
}

/// Arguments of `tokengate check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// The TOML config file.
    #[arg(value_name = "FILE")]
    pub config: PathBuf,
}

/// Runs the service until SIGTERM or SIGINT, reloading the config on SIGHUP
/// and when one of its files changes; exits 0 after draining, once
/// the spans still queued for export (when tracing is on) are flushed.
pub fn serve(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    // The config comes first: whether spans are exported decides how the
    // logging subscriber is built. Loading logs nothing; its errors are printed.
    let config = match load(&args.config) {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tracing = match config.telemetry() {
        Some(settings) => {
            // The exporter's channel is spawned on this runtime.
            let _runtime = runtime.enter();
            match Tracing::start(settings) {
                Ok(tracing) => Some(tracing),
                Err(error) => {
                    eprintln!("tokengate: invalid config: telemetry: {error:#}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            }
        }
        None => None,
    };
    let log = super::logging::init_traced(
        args.log_format,
        tracing.as_ref().map(Tracing::tracer),
        config.logging(),
    );
    if let Some(settings) = config.telemetry() {
        tracing::info!(
            endpoint = settings.endpoint(),
            sampling_ratio = settings.sampling_ratio(),
            service_name = settings.service_name(),
            "exporting traces over OTLP/gRPC"
        );
    }
    let code = run(&runtime, config, &args.config);
    // After the drain, while the runtime that carries the exports still runs.
    if let Some(tracing) = tracing {
        tracing.shutdown();
    }
    // The last lines (the drain's) are written before the process exits.
    drop(log);
    code
}

/// Binds and serves `config` on `runtime` until the shutdown signal,
/// reloading it from `path` on SIGHUP and when its files change.
fn run(
    runtime: &tokio::runtime::Runtime,
    config: Config,
    path: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let source = server::ReloadSource {
        path: path.to_path_buf(),
        env: std::sync::Arc::new(process_env),
    };
    runtime.block_on(async move {
        let listeners = match server::bind(&config).await {
            Ok(listeners) => listeners,
            Err(e) => return Ok(report(&e)),
        };
        match server::serve_reloading(config, source, listeners, super::shutdown_signal()).await {
            Ok(()) => {
                tracing::info!("drained; exiting");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(report(&e)),
        }
    })
}

/// Validates a config file and prints a summary without secrets.
pub fn check_config(args: &CheckConfigArgs) -> ExitCode {
    match load(&args.config) {
        Ok(config) => {
            print!("{}", summary(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Loads the config, printing the error and choosing exit code 64 on failure.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    config::load_file(path, &process_env).map_err(|e| {
        eprintln!("tokengate: invalid config: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The process environment as the config's lookup function: the one place
/// `serve` and `check-config` read it, so both see the same secrets.
#[allow(clippy::disallowed_methods)] // The config-reading edge: every secret is read through here.
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn report(error: &StartError) -> ExitCode {
    eprintln!("tokengate: {error}");
    match error {
        StartError::Config(_) => ExitCode::from(EXIT_CONFIG),
        _ => ExitCode::FAILURE,
    }
}

/// What the config says, with fingerprints in place of certificates.
pub fn summary(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "config ok");
    let _ = writeln!(out, "fingerprint:  {}", config.fingerprint());
    let server = config.server();
    let limits = config.limits();
    let _ = writeln!(out, "grpc listen:  {}", server.grpc_listen());
    let _ = writeln!(out, "admin listen: {}", server.admin_listen());
    match config.forward_auth() {
        Some(forward) => {
            let _ = writeln!(
                out,
                "forward auth: {} (path prefix {}, original request from {}, max {} connections)",
                forward.listen,
                forward.path_prefix,
                forward.original_request.as_str(),
                forward.max_connections
            );
        }
        None => {
            let _ = writeln!(out, "forward auth: off");
        }
    }
    let _ = writeln!(
        out,
        "limits: max message {} bytes, timeout {:?}, concurrency {}, grace {:?}",
        limits.max_message_size(),
        limits.request_timeout(),
        limits.concurrency(),
        server.grace_period()
    );
    let _ = writeln!(
        out,
        "connections: grpc max {}, admin max {}, backlog {}, header read timeout {:?}, idle timeout {:?}, keepalive {:?} (timeout {:?}), max header list {} bytes",
        limits.max_connections(),
        limits.admin_max_connections(),
        limits.listen_backlog(),
        limits.header_read_timeout(),
        limits.idle_timeout(),
        limits.keepalive_interval(),
        limits.keepalive_timeout(),
        limits.max_header_list_size()
    );
    let mut tls_warning = None;
    match config.tls() {
        Some((settings, material)) => {
            let _ = writeln!(
                out,
                "tls: {} (chain of {}, serial {}, subject {:?}, not after {}), key {}, reread every {:?}",
                settings.cert_file().display(),
                material.chain_len(),
                material.serial(),
                material.subject(),
                material.not_after(),
                settings.key_file().display(),
                settings.reload_interval()
            );
            if let Some(ca) = settings.client_ca_file() {
                let _ = writeln!(
                    out,
                    "mtls: client certificates {} against {} ({} CAs)",
                    match settings.client_auth() {
                        crate::tls::ClientAuth::Optional => "optional, verified",
                        _ => "required, verified",
                    },
                    ca.display(),
                    material.client_cas()
                );
            }
            // A warning, not a refusal, even once expired: the reloader picks
            // up the renewed file without a restart, and refusing to start
            // would turn a late renewal into a crash loop.
            tls_warning = material.expiry_warning(crate::entropy::unix_now());
        }
        None => {
            let _ = writeln!(out, "tls: off (plaintext gRPC)");
        }
    }
    match config.trusted_proxy() {
        Some(trusted) => {
            let _ = writeln!(out, "trusted proxies: {trusted}");
        }
        None => {
            let _ = writeln!(
                out,
                "trusted proxies: none (forwarded client identities ignored)"
            );
        }
    }
    let logging = config.logging();
    let _ = writeln!(
        out,
        "logging: queue {} lines, when full: {}",
        logging.queue_lines(),
        if logging.drop_when_full() {
            "drop and count"
        } else {
            "block"
        }
    );
    for project in config.projects() {
        let _ = writeln!(
            out,
            "project {:?}: app id {}",
            project.name,
            project.app_id.as_str()
        );
        for (i, (name, cert)) in project.certificates.iter().enumerate() {
            let signer = if i == project.signer { " (signs)" } else { "" };
            let _ = writeln!(
                out,
                "  certificate {name:?}: sha256 {}{signer}",
                cert.fingerprint()
            );
        }
    }
    for issuer in config.issuers() {
        let source = match issuer.key_source() {
            KeySource::JwksUrl(url) | KeySource::Discovery(url) => url.to_string(),
            KeySource::File(path) => path.display().to_string(),
            KeySource::Inline(_) => "inline jwks".to_owned(),
            KeySource::SecretOnly => "an hs secret only".to_owned(),
        };
        let cached = if issuer.verified_cache() {
            ""
        } else {
            ", not cached"
        };
        let _ = writeln!(
            out,
            "issuer {:?}: iss {:?}, audiences {:?}, keys from {source}{cached}",
            issuer.name(),
            issuer.issuer(),
            issuer.audiences()
        );
    }
    let limits = config.rate_limits();
    let shared = match &config.limiter().redis {
        Some(redis) => format!(
            "shared through {} (timeout {:?}, retry every {:?}{})",
            redis.url,
            redis.timeout,
            redis.retry_interval,
            redis
                .replicas
                .map(|n| format!(", {n} replicas"))
                .unwrap_or_default()
        ),
        None => format!(
            "in process, at most {} keys",
            config.limiter().local_max_keys
        ),
    };
    let _ = writeln!(
        out,
        "limits: {} rate limits, {shared}; at most {} calls in flight",
        limits.limits().len(),
        limits.max_in_flight()
    );
    for limit in limits.limits() {
        let services: Vec<&str> = limit.services.iter().map(|s| s.as_str()).collect();
        let fail = match &config.limiter().redis {
            Some(_) => format!(", fails {}", limit.on_redis_failure.as_str()),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  limit {:?}: {} burst {} by {} for {}{}{fail}",
            limit.name,
            limit.rate,
            limit.gcra.burst(),
            limit.key.describe(),
            services.join(","),
            match limit.scope {
                crate::limits::Scope::Rule => ", only where a rule names it",
                crate::limits::Scope::All => "",
            },
        );
    }
    let facts = config.facts();
    for (name, db) in &facts.databases {
        let _ = writeln!(
            out,
            "database {name:?}: {} (pool {}, statement timeout {:?}{})",
            db.url,
            db.pool_size,
            db.statement_timeout,
            if db.ca_pem.is_some() { ", TLS" } else { "" }
        );
    }
    for fact in &facts.facts {
        let source = match &fact.source {
            crate::facts::SourceSettings::Postgres(pg) => format!(
                "postgres databases.{}{}",
                pg.database,
                pg.notify_channel
                    .as_ref()
                    .map(|c| format!(", dropped on NOTIFY {c}"))
                    .unwrap_or_default()
            ),
            crate::facts::SourceSettings::Http(http) => format!("http {}", http.url.as_str()),
        };
        let _ = writeln!(
            out,
            "fact {:?}: {source}; timeout {:?}, ttl {:?}, negative ttl {:?}, error ttl {:?}, at most {} entries",
            &*fact.name,
            fact.timeout,
            fact.ttl,
            fact.negative_ttl,
            fact.error_ttl,
            fact.max_entries
        );
    }
    let cache = config.jwt_cache();
    if cache.enabled() {
        let _ = writeln!(
            out,
            "jwt cache: on, {} entries, max age {}s",
            cache.max_entries(),
            cache.max_age().as_secs()
        );
    } else {
        let _ = writeln!(out, "jwt cache: off");
    }
    match config.telemetry() {
        Some(telemetry) => {
            let _ = writeln!(
                out,
                "telemetry: OTLP/gRPC to {}, sampling {}, service {:?}",
                telemetry.endpoint(),
                telemetry.sampling_ratio(),
                telemetry.service_name()
            );
        }
        None => {
            let _ = writeln!(out, "telemetry: off");
        }
    }
    let _ = writeln!(out, "rules: {}", config.policy().len());
    for (i, name) in config.policy().rule_names().enumerate() {
        let _ = writeln!(out, "  [{i}] {name}");
    }
    for notice in config.notices() {
        let _ = writeln!(out, "warning: {notice}");
    }
    if let Some(warning) = tls_warning {
        let _ = writeln!(out, "warning: server.tls.cert_file: {warning}");
    }
    for warning in config.warnings() {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}
