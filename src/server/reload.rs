//! Config reload: SIGHUP or a change to a watched file (`triggers`) re-reads
//! and validates the whole config exactly as `check-config` does, and swaps
//! the request path's state in one store.
//!
//! A config that does not load is refused as a whole: the old one keeps
//! serving, the error is logged as `check-config` prints it (it names the
//! key) and counted. One that loads becomes a new [`Live`] (gate, the
//! authenticator, the ext_authz routes) stored into the pipeline's
//! `ArcSwap` at once: a call in flight finishes on the snapshot it loaded
//! in `begin`, every later call sees the new one. Issuers whose settings
//! did not change keep their key refresher and keys
//! (`Authenticator::restart`); the verified-JWT cache starts empty. The
//! readiness follower and the metrics' collectors follow the new
//! authenticator; TLS files and settings go to the running `tls::Acceptor`.
//!
//! What the listeners and the process fixed at start (listen addresses,
//! limits, logging, telemetry, TLS on or off, ext_authz on or off) is
//! compared and each difference is logged as needing a restart; the rest
//! of the reload applies. Every reload is one log line naming what changed
//! (names and fingerprints only, never a secret) and a count in
//! `tokengate_config_reloads_total`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinHandle;

use super::Readiness;
use super::triggers::{Trigger, Triggers};
use crate::config::{
    Config, ConfigError, ConfigParts, LimiterSettings, Limits, LogSettings, PartFingerprints,
    ServerSettings, TelemetrySettings,
};
use crate::domain::Fingerprint;
use crate::forward_auth::ForwardAuthSettings;
use crate::gate::{Gate, Project};
use crate::identity::{Authenticator, Restarted, VerifiedCacheSettings};
use crate::metrics::Metrics;
use crate::pipeline::Live;
use crate::tls::Acceptor;

/// How long a reload waits for the keys of issuers it (re)starts before
/// swapping them in: long enough for one JWKS fetch from a healthy IdP, so
/// their callers are not turned away with UNAVAILABLE in between; short
/// enough that a reload towards an IdP that is down still applies (its
/// callers then get UNAVAILABLE until the keys load, as at start).
const KEYS_WAIT: Duration = Duration::from_secs(10);

/// Where a reload reads the config from: the file `serve` started with,
/// and the same environment lookup.
#[derive(Clone)]
pub struct ReloadSource {
    /// The config file.
    pub path: PathBuf,
    /// The environment lookup the secrets are read through.
    pub env: Env,
}

/// An environment lookup, shared with the blocking task that loads the config.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for ReloadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadSource")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The reloading task's state: the live snapshot it swaps, and what the
/// running config is (to compare a new one with).
pub(super) struct Reloader {
    source: ReloadSource,
    live: Arc<ArcSwap<Live>>,
    running: Running,
    metrics: Arc<Metrics>,
    tls: Option<Acceptor>,
    readiness: Readiness,
    /// The task that makes readiness follow the live authenticator's keys.
    follower: JoinHandle<()>,
}

/// What a reload compares a new config with: the config in force.
///
/// The fields fixed at start (`server` to `ext_authz_on`) keep their start
/// values forever, so a later reload still reports them while they differ.
#[derive(Debug)]
pub(super) struct Running {
    fingerprint: Fingerprint,
    server: ServerSettings,
    limits: Limits,
    limiter: LimiterSettings,
    telemetry: Option<TelemetrySettings>,
    logging: LogSettings,
    tls_on: bool,
    ext_authz_on: bool,
    forward_auth: Option<ForwardAuthSettings>,
    projects: Vec<(String, Fingerprint)>,
    jwt_cache: VerifiedCacheSettings,
    parts: PartFingerprints,
    files: Vec<PathBuf>,
}

/// What one reload changed, by name, for its log line.
#[derive(Debug, Default)]
struct Changes {
    projects_added: Vec<String>,
    projects_removed: Vec<String>,
    projects_changed: Vec<String>,
    issuers: Restarted,
    rules_added: Vec<String>,
    rules_removed: Vec<String>,
    rules_changed: Vec<String>,
    rules_reordered: bool,
    routes_changed: bool,
    jwt_cache_changed: bool,
    trusted_proxy_changed: bool,
    limits_changed: bool,
    facts_changed: bool,
    tls: &'static str,
    needs_restart: Vec<&'static str>,
}

impl Running {
    /// The running config as `serve` starts it (before its parts move into the live state).
    pub(super) fn new(parts: &ConfigParts) -> Self {
        Self {
            fingerprint: parts.fingerprint.clone(),
            server: parts.server,
            limits: parts.limits,
            limiter: parts.limiter.clone(),
            telemetry: parts.telemetry.clone(),
            logging: parts.logging,
            tls_on: parts.tls.is_some(),
            ext_authz_on: parts.ext_authz.is_some(),
            forward_auth: parts.forward_auth.clone(),
            projects: project_fingerprints(&parts.projects),
            jwt_cache: parts.jwt_cache,
            parts: parts.parts.clone(),
            files: parts.files.clone(),
        }
    }

    /// The files the running config was read from.
    pub(super) fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The keys that differ in `new` but only take effect after a restart.
    fn needs_restart(&self, new: &ConfigParts) -> Vec<&'static str> {
        let (old, limits) = (&self.server, &self.limits);
        // The forward-auth port is bound and configured once, at start.
        let (old_fa, new_fa) = (self.forward_auth.as_ref(), new.forward_auth.as_ref());
        let fa_differs = |field: fn(&ForwardAuthSettings) -> String| match (old_fa, new_fa) {
            (Some(old), Some(new)) => field(old) != field(new),
            _ => false,
        };
        let checks = [
            ("forward_auth.enabled", old_fa.is_some() != new_fa.is_some()),
            ("forward_auth.listen", fa_differs(|s| s.listen.to_string())),
            (
                "forward_auth.path_prefix",
                fa_differs(|s| s.path_prefix.clone()),
            ),
            (
                "forward_auth.original_request",
                fa_differs(|s| s.original_request.as_str().to_owned()),
            ),
            (
                "forward_auth.max_connections",
                fa_differs(|s| s.max_connections.to_string()),
            ),
            (
                "server.grpc_listen",
                old.grpc_listen() != new.server.grpc_listen(),
            ),
            (
                "server.admin_listen",
                old.admin_listen() != new.server.admin_listen(),
            ),
            (
                "server.grace_period",
                old.grace_period() != new.server.grace_period(),
            ),
            ("server.tls", self.tls_on != new.tls.is_some()),
            (
                "ext_authz.enabled",
                self.ext_authz_on != new.ext_authz.is_some(),
            ),
            (
                "limits.max_message_size",
                limits.max_message_size() != new.limits.max_message_size(),
            ),
            (
                "limits.request_timeout",
                limits.request_timeout() != new.limits.request_timeout(),
            ),
            (
                "limits.concurrency",
                limits.concurrency() != new.limits.concurrency(),
            ),
            (
                "limits.header_read_timeout",
                limits.header_read_timeout() != new.limits.header_read_timeout(),
            ),
            (
                "limits.idle_timeout",
                limits.idle_timeout() != new.limits.idle_timeout(),
            ),
            (
                "limits.keepalive_interval",
                limits.keepalive_interval() != new.limits.keepalive_interval(),
            ),
            (
                "limits.keepalive_timeout",
                limits.keepalive_timeout() != new.limits.keepalive_timeout(),
            ),
            (
                "limits.max_connections",
                limits.max_connections() != new.limits.max_connections(),
            ),
            (
                "limits.admin_max_connections",
                limits.admin_max_connections() != new.limits.admin_max_connections(),
            ),
            (
                "limits.max_header_list_size",
                limits.max_header_list_size() != new.limits.max_header_list_size(),
            ),
            (
                "limits.listen_backlog",
                limits.listen_backlog() != new.limits.listen_backlog(),
            ),
            (
                "limits.local_max_keys",
                self.limiter.local_max_keys != new.limiter.local_max_keys,
            ),
            ("limits.redis", self.limiter.redis != new.limiter.redis),
            ("telemetry", self.telemetry != new.telemetry),
            ("logging", self.logging != new.logging),
        ];
        checks
            .into_iter()
            .filter(|(_, differs)| *differs)
            .map(|(key, _)| key)
            .collect()
    }
}

impl Reloader {
    /// A reloader over `live`, with the follower task `serve` started.
    pub(super) fn new(
        source: ReloadSource,
        live: Arc<ArcSwap<Live>>,
        running: Running,
        metrics: Arc<Metrics>,
        tls: Option<Acceptor>,
        readiness: Readiness,
        follower: JoinHandle<()>,
    ) -> Self {
        Self {
            source,
            live,
            running,
            metrics,
            tls,
            readiness,
            follower,
        }
    }

    /// Reloads on every trigger until the process ends.
    pub(super) async fn run(mut self, mut triggers: Triggers) {
        while let Some(trigger) = triggers.next().await {
            self.reload(&trigger).await;
            triggers.watch(self.running.files());
        }
    }

    /// One reload: load and validate, then swap or refuse.
    async fn reload(&mut self, trigger: &Trigger) {
        let source = self.source.clone();
        // Reading the files and checking certificates and keys is blocking work.
        let loaded = tokio::task::spawn_blocking(move || {
            crate::config::load_file(&source.path, &|name| (source.env)(name))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::Read {
                path: self.source.path.display().to_string(),
                message: format!("the reload task failed: {e}"),
            })
        });
        match loaded {
            Ok(config) => self.apply(config, trigger).await,
            Err(error) => self.refuse(&error, trigger),
        }
    }

    /// Keeps the running config and reports why the new one is refused.
    fn refuse(&self, error: &ConfigError, trigger: &Trigger) {
        self.metrics
            .config_reloaded(false, crate::entropy::unix_now());
        tracing::error!(
            trigger = %trigger,
            error = %error,
            fingerprint = %self.running.fingerprint,
            "config reload refused: invalid config; still serving the previous config"
        );
    }

    /// Builds the new live state from a validated config and swaps it in.
    async fn apply(&mut self, config: Config, trigger: &Trigger) {
        for notice in config.notices() {
            tracing::warn!(notice = %notice, "config notice");
        }
        for warning in config.warnings() {
            tracing::warn!(?warning, "policy warning");
        }
        let parts = config.into_parts();
        let mut changes = Changes {
            needs_restart: self.running.needs_restart(&parts),
            tls: "unchanged",
            ..Changes::default()
        };
        let projects = project_fingerprints(&parts.projects);
        diff_named(
            &self.running.projects,
            &projects,
            &mut changes.projects_added,
            &mut changes.projects_removed,
            &mut changes.projects_changed,
        );
        diff_named(
            &self.running.parts.rules,
            &parts.parts.rules,
            &mut changes.rules_added,
            &mut changes.rules_removed,
            &mut changes.rules_changed,
        );
        changes.rules_reordered = reordered(&self.running.parts.rules, &parts.parts.rules);
        changes.jwt_cache_changed = self.running.jwt_cache != parts.jwt_cache;
        changes.limits_changed = self.running.parts.rate_limits != parts.parts.rate_limits;
        let old = self.live.load_full();
        let old_jwks = &self.running.parts.jwks_files;
        let new_jwks = &parts.parts.jwks_files;
        // A JWKS file whose contents changed restarts its issuer's refresher,
        // which reads the file at once, rather than at its next refresh.
        let jwks_changed = |name: &str| {
            let find = |list: &[(String, Fingerprint)]| {
                list.iter().find(|(n, _)| n == name).map(|(_, f)| f.clone())
            };
            find(old_jwks) != find(new_jwks)
        };
        let restarted = old
            .authenticator
            .restart(parts.issuers, &parts.jwt_cache, &jwks_changed);
        let (authenticator, issuers) = match restarted {
            Ok(restarted) => restarted,
            Err(error) => {
                self.refuse(&crate::config::identity_error(error), trigger);
                return;
            }
        };
        changes.issuers = issuers;
        let routes = match (self.running.ext_authz_on, parts.ext_authz) {
            // Turning ext_authz off takes a restart (the service stays
            // registered): the routes in force stay until then.
            (true, None) => old.routes.clone(),
            (true, Some(routes)) => {
                changes.routes_changed = self.running.parts.ext_authz != parts.parts.ext_authz;
                Some(Arc::new(routes))
            }
            // Turning it on takes a restart too: the service is not registered.
            (false, _) => None,
        };
        // Unchanged facts keep their pools, caches and listeners; changed
        // ones start afresh (a database that is down only fails its facts).
        let facts = match old.facts.restart(parts.facts) {
            Ok(facts) => facts,
            Err(error) => {
                let error = ConfigError::Invalid {
                    key: "facts".to_owned(),
                    message: error.to_string(),
                };
                self.refuse(&error, trigger);
                return;
            }
        };
        changes.facts_changed = !Arc::ptr_eq(&facts, &old.facts);
        if changes.facts_changed {
            super::announce_facts(&facts);
        }
        let trusted_proxies = parts.trusted_proxy.map(Arc::new);
        changes.trusted_proxy_changed = old.trusted_proxies != trusted_proxies;
        // TLS on or off needs a restart (`needs_restart` names `server.tls`).
        if let (Some(acceptor), Some((settings, material))) = (&self.tls, parts.tls) {
            let applied = acceptor.apply(settings, material);
            changes.tls = match (applied.files, applied.settings) {
                (_, true) => "settings applied",
                (true, false) => "files re-read",
                (false, false) => "unchanged",
            };
        }
        if changes.is_empty() && self.running.fingerprint == parts.fingerprint {
            // Nothing to swap: the verified-JWT cache stays warm.
            self.metrics
                .config_reloaded(true, crate::entropy::unix_now());
            tracing::info!(
                trigger = %trigger,
                fingerprint = %parts.fingerprint,
                "config reloaded: nothing changed"
            );
            return;
        }
        if changes.limits_changed {
            super::announce_limits(&parts.rate_limits, self.running.limiter.redis.as_ref());
        }
        let authenticator = Arc::new(authenticator);
        let waited = self.wait_for_keys(&authenticator, &changes.issuers).await;
        self.live.store(Arc::new(Live {
            gate: Arc::new(Gate::new(parts.projects, parts.policy)),
            authenticator: Arc::clone(&authenticator),
            routes,
            trusted_proxies,
            limits: Arc::new(parts.rate_limits),
            facts,
        }));
        // The old follower holds the old authenticator: stopping it lets
        // the removed issuers' refreshers stop once the last call on the
        // old snapshot ends.
        self.follower.abort();
        self.follower = super::follow_readiness(self.readiness.clone(), authenticator, false);
        drop(old);
        let now = crate::entropy::unix_now();
        self.metrics.config_loaded(parts.fingerprint.as_str(), now);
        self.metrics.config_reloaded(true, now);
        let previous = std::mem::replace(&mut self.running.fingerprint, parts.fingerprint);
        self.running.projects = projects;
        self.running.jwt_cache = parts.jwt_cache;
        let ext_authz =
            if self.running.ext_authz_on && !changes.needs_restart.contains(&"ext_authz.enabled") {
                parts.parts.ext_authz.clone()
            } else {
                self.running.parts.ext_authz.clone()
            };
        self.running.parts = PartFingerprints {
            ext_authz,
            ..parts.parts
        };
        self.running.files = parts.files;
        changes.report(trigger, &self.running.fingerprint, &previous, &waited);
    }

    /// Waits (at most [`KEYS_WAIT`]) for the first key load of every issuer
    /// this reload started a refresher for; returns those still without keys.
    async fn wait_for_keys(
        &self,
        authenticator: &Authenticator,
        issuers: &Restarted,
    ) -> Vec<String> {
        let started: Vec<&String> = issuers.restarted.iter().chain(&issuers.added).collect();
        let mut receivers: Vec<_> = started
            .iter()
            .filter_map(|name| authenticator.watch_issuer(name))
            .collect();
        let _ = tokio::time::timeout(KEYS_WAIT, async {
            for receiver in &mut receivers {
                let _ = receiver.wait_for(|status| status.loaded).await;
            }
        })
        .await;
        let readiness = authenticator.readiness();
        started
            .into_iter()
            .filter(|name| {
                readiness
                    .issuers
                    .iter()
                    .any(|status| status.name == **name && !status.loaded)
            })
            .cloned()
            .collect()
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Changes {
    /// Whether nothing but the fingerprint could differ.
    fn is_empty(&self) -> bool {
        self.projects_added.is_empty()
            && self.projects_removed.is_empty()
            && self.projects_changed.is_empty()
            && self.issuers.restarted.is_empty()
            && self.issuers.added.is_empty()
            && self.issuers.removed.is_empty()
            && self.rules_added.is_empty()
            && self.rules_removed.is_empty()
            && self.rules_changed.is_empty()
            && !self.rules_reordered
            && !self.routes_changed
            && !self.jwt_cache_changed
            && !self.trusted_proxy_changed
            && !self.limits_changed
            && !self.facts_changed
            && self.tls == "unchanged"
    }

    /// The reload's log lines: one info line, and a warning per key that needs a restart.
    fn report(
        &self,
        trigger: &Trigger,
        fingerprint: &Fingerprint,
        previous: &Fingerprint,
        keys_pending: &[String],
    ) {
        tracing::info!(
            trigger = %trigger,
            fingerprint = %fingerprint,
            previous = %previous,
            projects_added = ?self.projects_added,
            projects_removed = ?self.projects_removed,
            projects_changed = ?self.projects_changed,
            issuers_added = ?self.issuers.added,
            issuers_removed = ?self.issuers.removed,
            issuers_changed = ?self.issuers.restarted,
            issuers_kept = ?self.issuers.kept,
            rules_added = ?self.rules_added,
            rules_removed = ?self.rules_removed,
            rules_changed = ?self.rules_changed,
            rules_reordered = self.rules_reordered,
            routes_changed = self.routes_changed,
            jwt_cache_changed = self.jwt_cache_changed,
            trusted_proxy_changed = self.trusted_proxy_changed,
            limits_changed = self.limits_changed,
            facts_changed = self.facts_changed,
            tls = self.tls,
            needs_restart = ?self.needs_restart,
            "config reloaded"
        );
        for key in &self.needs_restart {
            tracing::warn!(
                key = *key,
                "config reload: {key} changed, which needs a restart; the value in force until then is the one the process started with"
            );
        }
        if !keys_pending.is_empty() {
            tracing::warn!(
                issuers = ?keys_pending,
                "config reload: these issuers' keys have not loaded yet; their callers get UNAVAILABLE until they do"
            );
        }
    }
}

/// Each project's name and a fingerprint of its App ID, certificate names
/// and certificate fingerprints and signer: a rotation step changes it.
fn project_fingerprints(projects: &[Project]) -> Vec<(String, Fingerprint)> {
    projects
        .iter()
        .map(|project| {
            let mut text = format!("{}\n{}\n{}", project.name, project.app_id, project.signer);
            for (name, certificate) in &project.certificates {
                text.push_str(&format!("\n{name}={}", certificate.fingerprint()));
            }
            (project.name.clone(), Fingerprint::of(text.as_bytes()))
        })
        .collect()
}

/// Sorts the names of `new` against `old` into added, removed and changed.
fn diff_named(
    old: &[(String, Fingerprint)],
    new: &[(String, Fingerprint)],
    added: &mut Vec<String>,
    removed: &mut Vec<String>,
    changed: &mut Vec<String>,
) {
    for (name, fingerprint) in new {
        match old.iter().find(|(n, _)| n == name) {
            None => added.push(name.clone()),
            Some((_, was)) if was != fingerprint => changed.push(name.clone()),
            Some(_) => {}
        }
    }
    removed.extend(
        old.iter()
            .filter(|(name, _)| !new.iter().any(|(n, _)| n == name))
            .map(|(name, _)| name.clone()),
    );
}

/// Whether the rules both configs have are in another order (first match wins).
fn reordered(old: &[(String, Fingerprint)], new: &[(String, Fingerprint)]) -> bool {
    let old_names: BTreeSet<&str> = old.iter().map(|(n, _)| n.as_str()).collect();
    let new_names: BTreeSet<&str> = new.iter().map(|(n, _)| n.as_str()).collect();
    let common = |list: &[(String, Fingerprint)], other: &BTreeSet<&str>| -> Vec<String> {
        list.iter()
            .filter(|(n, _)| other.contains(n.as_str()))
            .map(|(n, _)| n.clone())
            .collect()
    };
    common(old, &new_names) != common(new, &old_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(list: &[(&str, &str)]) -> Vec<(String, Fingerprint)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), Fingerprint::of(v.as_bytes())))
            .collect()
    }

    #[test]
    fn names_are_sorted_into_added_removed_and_changed() {
        let old = named(&[("a", "1"), ("b", "1"), ("c", "1")]);
        let new = named(&[("c", "1"), ("b", "2"), ("d", "1")]);
        let (mut added, mut removed, mut changed) = (vec![], vec![], vec![]);
        diff_named(&old, &new, &mut added, &mut removed, &mut changed);
        assert_eq!(added, ["d"]);
        assert_eq!(removed, ["a"]);
        assert_eq!(changed, ["b"]);
        assert!(reordered(&old, &new));
        assert!(!reordered(&old, &named(&[("a", "1"), ("c", "9")])));
    }
}
