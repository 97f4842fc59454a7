//! Runs the service: the gRPC port (token service, health, reflection) and the
//! admin HTTP port (`/healthz`, `/readyz`), with a graceful shutdown.
//!
//! `run` takes bound listeners and a shutdown future, never addresses, so that
//! tests bind `127.0.0.1:0`, read `local_addr()` and connect without sleeping
//! (mini-redis `server::run`). Both ports are served through hyper directly,
//! not tonic's `Server` or `axum::serve`, because neither bounds a
//! connection's life: `listen` owns the accept loops (cap, back-off) and each
//! connection's timeouts, `calls` the service behind a gRPC connection, and
//! `admin` the admin port.

mod admin;
mod calls;
mod forward_auth;
mod listen;
mod observe;
mod reload;
mod triggers;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;
use tonic_health::pb::health_server::HealthServer;

pub use self::reload::ReloadSource;

use self::calls::GrpcCalls;
use self::listen::{Activity, ConnectionLimits, Phase};
use crate::grpc::health::{HealthService, HealthState};
use crate::grpc::pb;

/// The gRPC service name that health reports on, besides the overall server ("").
pub const TOKEN_SERVICE_NAME: &str = "tokengate.v1.TokenService";
/// The standard health service.
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";
/// Envoy's external authorization service, served when `[ext_authz]` is enabled.
pub const EXT_AUTHZ_SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Whether the service is ready to serve tokens; drives gRPC health and `/readyz`.
#[derive(Debug, Clone)]
pub struct Readiness {
    tx: watch::Sender<ReadyState>,
}

/// Readiness with the reason it is not, for `/readyz`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ReadyState {
    ready: bool,
    /// Why not ready (which issuer, and what), empty when ready or unknown.
    detail: String,
}

/// Server settings that are not part of the request path.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub grace_period: Duration,
    /// A per-call deadline enforced by the server.
    pub request_timeout: Duration,
    /// The most calls served at once per connection, advertised as HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub concurrency_limit: usize,
    /// The services reflection lists (besides itself): only those actually served.
    pub advertised_services: Vec<String>,
    /// How long a new connection may take to send its first complete request
    /// headers (on the admin port: every request's headers).
    pub header_read_timeout: Duration,
    /// How long a connection with no call in flight stays open.
    pub idle_timeout: Duration,
    /// How often an HTTP/2 PING goes out on a gRPC connection.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// The most open connections on the gRPC port.
    pub max_connections: usize,
    /// The most open connections on the admin port.
    pub admin_max_connections: usize,
    /// The largest request header list, advertised as HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`.
    pub max_header_list_size: u32,
    /// The metrics the ports count into and `/metrics` serves; `None` turns both off.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    /// TLS on the gRPC port (its files re-read on rotation); plaintext when `None`.
    pub tls: Option<crate::tls::Acceptor>,
    /// Counts the token and ext_authz calls from their arrival against
    /// `limits.max_in_flight`; `None` leaves the pipeline to count them.
    pub shedder: Option<calls::Shedder>,
    /// The forward-auth check, served on `Listeners::forward_auth`.
    pub forward_auth: Option<crate::forward_auth::ForwardAuth>,
    /// The most open connections on the forward-auth port.
    pub forward_auth_max_connections: usize,
}

/// The bound listeners the service answers on.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The admin port.
    pub admin: TcpListener,
    /// The forward-auth port, when `[forward_auth]` is on.
    pub forward_auth: Option<TcpListener>,
}

impl Listeners {
    /// The gRPC and admin ports, without forward-auth.
    pub fn new(grpc: TcpListener, admin: TcpListener) -> Self {
        Self {
            grpc,
            admin,
            forward_auth: None,
        }
    }
}

impl Default for ServeOptions {
    /// The config's defaults (a unit test keeps them equal).
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            concurrency_limit: 256,
            advertised_services: vec![
                TOKEN_SERVICE_NAME.to_owned(),
                HEALTH_SERVICE_NAME.to_owned(),
            ],
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 1000,
            admin_max_connections: 64,
            max_header_list_size: 128 * 1024,
            metrics: None,
            tls: None,
            shedder: None,
            forward_auth: None,
            forward_auth_max_connections: 1000,
        }
    }
}

impl ServeOptions {
    /// The options a validated config's limits and server settings give.
    pub fn from_config(
        server: &crate::config::ServerSettings,
        limits: &crate::config::Limits,
        advertised_services: Vec<String>,
    ) -> Self {
        Self {
            grace_period: server.grace_period(),
            request_timeout: limits.request_timeout(),
            concurrency_limit: limits.concurrency(),
            advertised_services,
            header_read_timeout: limits.header_read_timeout(),
            idle_timeout: limits.idle_timeout(),
            keepalive_interval: limits.keepalive_interval(),
            keepalive_timeout: limits.keepalive_timeout(),
            max_connections: limits.max_connections(),
            admin_max_connections: limits.admin_max_connections(),
            max_header_list_size: limits.max_header_list_size(),
            metrics: None,
            tls: None,
            shedder: None,
            forward_auth: None,
            forward_auth_max_connections: 1000,
        }
    }

    fn grpc_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
        }
    }

    fn forward_auth_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.forward_auth_max_connections,
            ..self.grpc_limits()
        }
    }

    fn admin_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.admin_max_connections,
            ..self.grpc_limits()
        }
    }

    /// HTTP/2 only, with keepalive pings, the stream and header-list limits.
    fn grpc_builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(u32::try_from(self.concurrency_limit).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(self.keepalive_interval))
            .keep_alive_timeout(self.keepalive_timeout)
            // A header block up to this size reaches the service (and a large
            // JWT tokengate's own size check, refusing only that call); h2
            // also derives its CONTINUATION-flood bound from it.
            .max_header_list_size(self.max_header_list_size);
        builder
    }
}

impl Readiness {
    /// Starts not ready.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(ReadyState::default());
        Self { tx }
    }

    /// Marks the service ready or not.
    pub fn set(&self, ready: bool) {
        self.set_because(ready, String::new());
    }

    /// Marks the service ready or not, saying why not (`/readyz` answers it).
    pub fn set_because(&self, ready: bool, detail: String) {
        self.tx.send_replace(ReadyState { ready, detail });
    }

    fn subscribe(&self) -> watch::Receiver<ReadyState> {
        self.tx.subscribe()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `routes` (the token service, and ext_authz when enabled) with
/// health and reflection on the gRPC listener, the admin endpoints on the
/// admin one, and forward-auth checks on its own when both it and
/// `options.forward_auth` are given, until `shutdown` completes; then
/// reports NOT_SERVING, stops accepting, and lets in-flight calls finish
/// within the grace period.
pub async fn run(
    listeners: Listeners,
    routes: Routes,
    readiness: Readiness,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let Listeners {
        grpc,
        admin,
        forward_auth,
    } = listeners;
    let reflection_v1 = reflection_builder(&options.advertised_services).build_v1()?;
    let reflection_v1alpha = reflection_builder(&options.advertised_services).build_v1alpha()?;

    // The shutdown future is shared by health (NOT_SERVING first), the gRPC
    // port (stop accepting, drain) and the admin port (503 on /readyz).
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    // Health starts NOT_SERVING, before the port answers anything.
    let (health_tx, health_rx) = watch::channel(HealthState::default());
    let health_task = tokio::spawn(track_health(
        health_tx,
        readiness.subscribe(),
        stop_rx.clone(),
    ));
    let reported: Vec<String> = options
        .advertised_services
        .iter()
        .filter(|name| name.as_str() != HEALTH_SERVICE_NAME)
        .cloned()
        .collect();
    let health_service = HealthServer::new(HealthService::new(health_rx.clone(), reported));
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare();

    // The admin port outlives the gRPC drain, so probers see 503 rather than
    // a refused connection; it has its own phase.
    let (admin_phase, admin_phase_rx) = watch::channel(Phase::Serving);
    let admin_task = tokio::spawn(admin::serve(
        admin,
        health_rx,
        readiness.subscribe(),
        options.admin_limits(),
        options.metrics.clone(),
        admin_phase_rx,
    ));
    let (grpc_phase, grpc_phase_rx) = watch::channel(Phase::Serving);
    // Forward-auth checks drain with the gRPC calls: both are the request path.
    let forward_auth_task = match (forward_auth, options.forward_auth.clone()) {
        (Some(listener), Some(check)) => Some(tokio::spawn(forward_auth::serve(
            listener,
            check,
            options.forward_auth_limits(),
            usize::try_from(options.max_header_list_size).unwrap_or(usize::MAX),
            options.request_timeout,
            options.metrics.clone(),
            grpc_phase_rx.clone(),
        ))),
        _ => None,
    };
    let grpc_task = tokio::spawn(serve_grpc(grpc, routes, options.clone(), grpc_phase_rx));

    // On the shutdown signal: stop accepting, ask every connection to finish,
    // and wait for them at most the grace period.
    let mut stopped = stop_rx.clone();
    stopped_signal(&mut stopped).await;
    let grace = options.grace_period;
    drain(&grpc_phase, grace, "grpc").await;
    health_task.abort();
    let _ = grpc_task.await;
    if let Some(task) = forward_auth_task {
        let _ = task.await;
    }
    // Probes are answered at once; a keep-alive connection is closed as soon as it is idle.
    drain(&admin_phase, ADMIN_DRAIN, "admin").await;
    let _ = admin_task.await;
    Ok(())
}

/// How long admin connections may take to finish once the gRPC port has drained.
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Moves a port to draining and waits for its accept loop and every
/// connection to end (each holds a receiver of `phase`), at most `grace`;
/// then drops the connections still open.
async fn drain(phase: &watch::Sender<Phase>, grace: Duration, port: &'static str) {
    phase.send_replace(Phase::Draining);
    if tokio::time::timeout(grace, phase.closed()).await.is_err() {
        tracing::warn!(
            port,
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            "grace period over; dropping remaining connections"
        );
        phase.send_replace(Phase::Closing);
        // Dropping a connection is immediate; this only waits for the tasks to notice.
        let _ = tokio::time::timeout(ADMIN_DRAIN, phase.closed()).await;
    }
}

/// Accepts gRPC connections until the phase leaves `Serving`, each served
/// over HTTP/2 with the options' limits.
async fn serve_grpc(
    listener: TcpListener,
    routes: Routes,
    options: ServeOptions,
    phase: watch::Receiver<Phase>,
) {
    let builder = options.grpc_builder();
    let limits = options.grpc_limits();
    let timeout = options.request_timeout;
    let meter = options
        .metrics
        .clone()
        .map(|metrics| crate::metrics::GrpcMeter::new(metrics, observe::served_methods()));
    let shedder = options.shedder.clone();
    let accept_phase = phase.clone();
    listen::accept_loop(
        listener,
        "grpc",
        limits.max_connections,
        options.metrics.clone(),
        accept_phase,
        move |stream, peer, slot| {
            // Without it small replies wait ~40 ms for Nagle.
            let _ = stream.set_nodelay(true);
            let info = TcpConnectInfo {
                local_addr: stream.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let routes = routes.clone();
            let meter = meter.clone();
            let shedder = shedder.clone();
            let builder = builder.clone();
            let mut phase = phase.clone();
            let tls = options.tls.clone();
            tokio::spawn(async move {
                // The slot is taken before the handshake: the cap counts
                // connections still negotiating TLS.
                let _slot = slot;
                let (activity, calls) = Activity::new();
                let Some(tls) = tls else {
                    let service =
                        GrpcCalls::new(routes, info, None, activity, timeout, meter, shedder);
                    listen::serve(&builder, TokioIo::new(stream), service, calls, limits, phase, "grpc").await;
                    return;
                };
                // The handshake counts against the time to the first
                // complete request: a peer that never finishes it holds
                // its slot no longer than one that never sends headers.
                let Some((handshake, limits)) =
                    listen::before_first_request(tls.accept(stream), limits, &mut phase).await
                else {
                    tracing::debug!(%peer, "closing a connection that did not finish its TLS handshake in time");
                    return;
                };
                let (stream, identity) = match handshake {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Plaintext on the TLS port, an unknown CA, no
                        // client certificate when one is required: the
                        // client sees the TLS alert; a caller can cause
                        // these at will, so they are debug lines.
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                };
                let service = GrpcCalls::new(
                    routes,
                    info,
                    identity.map(std::sync::Arc::new),
                    activity,
                    timeout,
                    meter,
                    shedder,
                );
                listen::serve(&builder, TokioIo::new(stream), service, calls, limits, phase, "grpc").await;
            });
        },
    )
    .await;
}

/// Completes once `stop` says the server is stopping.
async fn stopped_signal(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before anything else awaits.
    let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
}

/// Reflection over our protos, the health protocol and `google.rpc` error details,
/// so grpcurl can describe every message and decode error details.
fn reflection_builder(advertised: &[String]) -> tonic_reflection::server::Builder<'static> {
    // Naming services replaces the default "everything in the descriptors"
    // listing, so the reflection services are named too.
    let reflection = [
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let names = advertised.iter().map(String::as_str).chain(reflection);
    let builder = names.fold(
        tonic_reflection::server::Builder::configure(),
        |builder, name| builder.with_service_name(name),
    );
    builder
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(pb::ENVOY_FILE_DESCRIPTOR_SET)
}

/// Mirrors readiness and the shutdown signal into the health state.
async fn track_health(
    health: watch::Sender<HealthState>,
    mut ready: watch::Receiver<ReadyState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let state = HealthState {
            ready: ready.borrow_and_update().ready,
            draining: *stop.borrow_and_update(),
        };
        health.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
        if state.draining {
            return;
        }
        tokio::select! {
            changed = ready.changed() => if changed.is_err() { return },
            _ = stop.changed() => {}
        }
    }
}

/// Why the service could not start or stopped with an error: the server's one error type.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is unusable (exit code 64); the message names the key.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The listeners given do not fit the config (a caller's bug).
    #[error("{0}")]
    Listener(&'static str),
    /// Reflection could not load a descriptor set (a build bug).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Logs the limits in force and, in cluster mode, where they are shared
/// and what each does while Redis fails: the operator's record of the
/// choice, at start and after every reload.
pub(crate) fn announce_limits(
    set: &crate::limits::LimitSet,
    redis: Option<&crate::limits::RedisSettings>,
) {
    let mode = match redis {
        Some(redis) => format!("shared through Redis at {}", redis.url),
        None => "in process (each replica counts alone)".to_owned(),
    };
    for limit in set.limits() {
        tracing::info!(
            limit = %limit.name,
            rate = %limit.rate,
            burst = limit.gcra.burst(),
            mode = %mode,
            on_redis_failure = redis.map(|_| limit.on_redis_failure.as_str()),
            "rate limit in force"
        );
    }
    tracing::info!(
        limits = set.limits().len(),
        max_in_flight = set.max_in_flight(),
        mode = %mode,
        "rate limits and load shedding configured"
    );
}

/// Logs each configured fact at start and when a reload changes them:
/// where it comes from and how long it is cached, never a secret.
pub(crate) fn announce_facts(facts: &crate::facts::FactSources) {
    use crate::facts::SourceSettings;
    for fact in &facts.config().facts {
        let (kind, source, notify) = match &fact.source {
            SourceSettings::Postgres(pg) => (
                "postgres",
                format!("databases.{}", pg.database),
                pg.notify_channel.as_deref(),
            ),
            SourceSettings::Http(http) => ("http", http.url.as_str().to_owned(), None),
        };
        tracing::info!(
            fact = %fact.name,
            kind,
            source = %source,
            ttl = ?fact.ttl,
            negative_ttl = ?fact.negative_ttl,
            timeout = ?fact.timeout,
            notify_channel = notify,
            "fact configured"
        );
    }
}

/// Binds the config's listen addresses (forward-auth's when it is on),
/// each with the config's listen backlog. Done after the config is
/// validated, so a bad config never holds a port.
pub async fn bind(config: &crate::config::Config) -> Result<Listeners, StartError> {
    let backlog = config.limits().listen_backlog();
    let bind =
        |addr| listen::bind(addr, backlog).map_err(|source| StartError::Bind { addr, source });
    Ok(Listeners {
        grpc: bind(config.server().grpc_listen())?,
        admin: bind(config.server().admin_listen())?,
        forward_auth: config
            .forward_auth()
            .map(|settings| bind(settings.listen))
            .transpose()?,
    })
}

/// Runs tokengate for a validated `config` on the given listeners until `shutdown`:
/// starts the key refreshers, reports ready once the issuers' readiness
/// policy holds (`identity::Readiness`), serves, and drains. The config is
/// never reloaded (see [`serve_reloading`]).
pub async fn serve(
    config: crate::config::Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_with(config, None, listeners, shutdown).await
}

/// Like [`serve`], reloading the config from `source` on SIGHUP and when
/// one of its files changes (`reload`): what `tokengate serve` runs.
pub async fn serve_reloading(
    config: crate::config::Config,
    source: ReloadSource,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    serve_with(config, Some(source), listeners, shutdown).await
}

async fn serve_with(
    config: crate::config::Config,
    reload: Option<ReloadSource>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use std::sync::Arc;

    let config = config.into_parts();
    crate::identity::install_crypto_provider();
    for notice in &config.notices {
        tracing::warn!(notice = %notice, "config notice");
    }
    for warning in &config.warnings {
        tracing::warn!(?warning, "policy warning");
    }
    let running = self::reload::Running::new(&config);
    let authenticator = Arc::new(
        crate::identity::Authenticator::start_with_cache(config.issuers, &config.jwt_cache)
            .map_err(crate::config::identity_error)?,
    );
    let gate = Arc::new(crate::gate::Gate::new(config.projects, config.policy));
    let readiness = Readiness::new();
    let follower = follow_readiness(readiness.clone(), Arc::clone(&authenticator), true);
    let routes_config = config.ext_authz.map(Arc::new);
    let limiter = Arc::new(
        crate::limits::Limiter::new(config.limiter.local_max_keys, config.limiter.redis.clone())
            .map_err(|e| crate::config::ConfigError::Invalid {
                key: "limits.redis".to_owned(),
                message: e.to_string(),
            })?,
    );
    announce_limits(&config.rate_limits, config.limiter.redis.as_ref());
    let facts = crate::facts::FactSources::start(config.facts).map_err(|e| {
        crate::config::ConfigError::Invalid {
            key: "facts".to_owned(),
            message: e.to_string(),
        }
    })?;
    announce_facts(&facts);
    let live = Arc::new(arc_swap::ArcSwap::from_pointee(crate::pipeline::Live {
        gate,
        authenticator,
        routes: routes_config.clone(),
        trusted_proxies: config.trusted_proxy.map(Arc::new),
        limits: Arc::new(config.rate_limits),
        facts,
    }));
    let metrics = observe::metrics(&live, &limiter);
    metrics.config_loaded(config.fingerprint.as_str(), crate::entropy::unix_now());
    let pipeline = Arc::new(
        crate::pipeline::Pipeline::over(Arc::clone(&live))
            .with_metrics(Arc::clone(&metrics))
            .with_limiter(Arc::clone(&limiter)),
    );
    let api = crate::grpc::service::Api::new(Arc::clone(&pipeline));
    let mut routes = Routes::new(
        pb::token_service_server::TokenServiceServer::new(api)
            .max_decoding_message_size(config.limits.max_message_size()),
    );
    let mut advertised_services = vec![
        TOKEN_SERVICE_NAME.to_owned(),
        HEALTH_SERVICE_NAME.to_owned(),
    ];
    // Registered at start only: turning ext_authz on or off takes a restart
    // (a reload says so); its routes reload.
    let forward_auth = match (config.forward_auth, &listeners.forward_auth) {
        (Some(settings), Some(_)) => Some(crate::forward_auth::ForwardAuth::new(
            Arc::clone(&pipeline),
            settings,
        )),
        (None, None) => None,
        (Some(_), None) => {
            return Err(StartError::Listener(
                "forward_auth is on but no listener was bound for it",
            ));
        }
        (None, Some(_)) => {
            return Err(StartError::Listener(
                "a forward_auth listener was bound but [forward_auth] is off",
            ));
        }
    };
    if routes_config.is_some() {
        advertised_services.push(EXT_AUTHZ_SERVICE_NAME.to_owned());
        let check = crate::grpc::envoy_check::EnvoyCheck::new(pipeline);
        routes = routes.add_service(
            envoy_types::ext_authz::v3::pb::AuthorizationServer::new(check)
                .max_decoding_message_size(config.limits.max_message_size()),
        );
    }
    let mut options =
        ServeOptions::from_config(&config.server, &config.limits, advertised_services);
    options.shedder = Some(calls::Shedder::new(Arc::clone(&live), limiter));
    if let Some(check) = &forward_auth {
        options.forward_auth_max_connections = check.settings().max_connections;
    }
    options.forward_auth = forward_auth;
    options.tls = config.tls.map(|(settings, material)| {
        crate::tls::Acceptor::start(settings, material, Some(Arc::clone(&metrics)))
    });
    // The SIGHUP handler is installed before the listening line, so a
    // signal sent once the port answers never ends the process.
    let reloader = reload.map(|source| {
        let triggers = self::triggers::Triggers::start(running.files());
        let reloader = self::reload::Reloader::new(
            source,
            Arc::clone(&live),
            running,
            Arc::clone(&metrics),
            options.tls.clone(),
            readiness.clone(),
            follower,
        );
        tokio::spawn(reloader.run(triggers))
    });
    options.metrics = Some(metrics);
    let forward_auth_addr = listeners
        .forward_auth
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|addr| addr.to_string());
    tracing::info!(
        grpc = %listeners.grpc.local_addr().map_err(|source| StartError::Bind { addr: config.server.grpc_listen(), source })?,
        admin = %listeners.admin.local_addr().map_err(|source| StartError::Bind { addr: config.server.admin_listen(), source })?,
        forward_auth = forward_auth_addr,
        "tokengate listening"
    );
    let served = run(listeners, routes, readiness, options, shutdown).await;
    if let Some(reloader) = reloader {
        // No reload after the drain; dropping the reloader stops its follower.
        reloader.abort();
        let _ = reloader.await;
    }
    served?;
    live.load().authenticator.shutdown();
    Ok(())
}

/// Makes `ready` follow `keys`' readiness policy, both ways, until aborted.
///
/// At start it reports not ready until the required issuers have loaded
/// their keys. After a reload (`at_start` false) it starts from the new
/// authenticator's state as it is, so readiness does not flap on a reload
/// that keeps the issuers' keys.
fn follow_readiness(
    ready: Readiness,
    keys: std::sync::Arc<crate::identity::Authenticator>,
    at_start: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if at_start {
            ready.set_because(
                false,
                "waiting for the keys of the required issuers".to_owned(),
            );
            let first = keys.wait_readiness(true).await;
            // Optional issuers may still be loading; their callers get UNAVAILABLE meanwhile.
            let still_loading: Vec<String> = first
                .issuers
                .into_iter()
                .filter(|s| !s.loaded)
                .map(|s| s.name)
                .collect();
            tracing::info!(
                ?still_loading,
                "the issuers required for readiness have loaded their keys; serving"
            );
            ready.set(true);
        } else {
            let now = keys.readiness();
            if !now.ready {
                let detail = unready_detail(&now);
                tracing::warn!(detail = %detail, "not ready after the reload: a required issuer has no usable keys");
                ready.set_because(false, detail);
                keys.wait_readiness(true).await;
                tracing::info!("every required issuer has usable keys again; serving");
            }
            ready.set(true);
        }
        // Readiness follows the keys both ways: a required issuer whose keys
        // expire after `max_stale` takes the replica out of rotation (its
        // callers get UNAVAILABLE) until a refresh succeeds again.
        loop {
            let down = keys.wait_readiness(false).await;
            let detail = unready_detail(&down);
            tracing::warn!(detail = %detail, "not ready: a required issuer has no usable keys");
            ready.set_because(false, detail);
            keys.wait_readiness(true).await;
            tracing::info!("every required issuer has usable keys again; serving");
            ready.set(true);
        }
    })
}

/// Which issuers keep the service from being ready, and why, in one line.
fn unready_detail(readiness: &crate::identity::Readiness) -> String {
    use crate::identity::Freshness;
    let blocking: Vec<String> = readiness
        .issuers
        .iter()
        .zip(&readiness.required)
        .filter(|(status, required)| **required && !status.usable())
        .map(|(status, _)| match status.freshness {
            Freshness::Expired => format!(
                "issuer {}: keys expired (no successful refresh within max_stale)",
                status.name
            ),
            _ => format!("issuer {}: keys not loaded yet", status.name),
        })
        .collect();
    if blocking.is_empty() {
        "no issuer has usable keys".to_owned()
    } else {
        blocking.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_options_are_the_configs_defaults() {
        let text = format!(
            "{}\n[[projects]]\nname = \"main\"\napp_id = \"970CA35de60c44645bbae8a215061b33\"\nsigning_certificate = \"p\"\ncertificates = [{{ name = \"p\", env = \"CERT\" }}]\n[[issuers]]\nname = \"i\"\nissuer = \"https://i.example\"\naudiences = [\"a\"]\njwks_inline = '{{\"keys\": []}}'\n",
            ""
        );
        let env = |_: &str| Some("5CFd2fd1755d40ecb72977518be15d3b".to_owned());
        let config = crate::config::load(&text, &env).unwrap();
        let from_config = ServeOptions::from_config(
            config.server(),
            config.limits(),
            ServeOptions::default().advertised_services,
        );
        assert_eq!(
            format!("{from_config:?}"),
            format!("{:?}", ServeOptions::default())
        );
    }
}
