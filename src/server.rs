//! Runs the service: the gRPC port (token service, health, reflection) and the
//! admin HTTP port (`/healthz`, `/readyz`), with a graceful shutdown.
//!
//! `run` takes bound listeners and a shutdown future, never addresses, so that
//! tests bind `127.0.0.1:0`, read `local_addr()` and connect without sleeping
//! (mini-redis `server::run`).

use std::future::Future;
use std::time::Duration;

use axum::Router as AdminRouter;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;

use crate::grpc::health::{HealthService, HealthState};
use crate::grpc::pb;

/// The gRPC service name that health reports on, besides the overall server ("").
pub const TOKEN_SERVICE_NAME: &str = "tokengate.v1.TokenService";
/// The standard health service.
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";
/// Envoy's external authorization service, served when `[ext_authz]` is enabled.
pub const EXT_AUTHZ_SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// A failure to serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The gRPC transport failed.
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The admin HTTP server failed.
    #[error("admin http: {0}")]
    Admin(#[source] std::io::Error),
    /// Reflection could not load a descriptor set.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Whether the service is ready to serve tokens; drives gRPC health and `/readyz`.
#[derive(Debug, Clone)]
pub struct Readiness {
    tx: watch::Sender<bool>,
}

/// Server settings that are not part of the request path.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub grace_period: Duration,
    /// A per-call deadline enforced by the server.
    pub request_timeout: Duration,
    /// The most calls served at once per connection.
    pub concurrency_limit: usize,
    /// The services reflection lists (besides itself): only those actually served.
    pub advertised_services: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            concurrency_limit: 256,
            advertised_services: vec![
                TOKEN_SERVICE_NAME.to_owned(),
                HEALTH_SERVICE_NAME.to_owned(),
            ],
        }
    }
}

impl Readiness {
    /// Starts not ready.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self { tx }
    }

    /// Marks the service ready or not.
    pub fn set(&self, ready: bool) {
        self.tx.send_replace(ready);
    }

    fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `routes` (the token service, and ext_authz when enabled) with
/// health and reflection on `grpc`, and the admin endpoints on `admin`,
/// until `shutdown` completes; then reports NOT_SERVING, stops accepting, and
/// lets in-flight calls finish within the grace period.
pub async fn run(
    grpc: TcpListener,
    admin: TcpListener,
    routes: Routes,
    readiness: Readiness,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
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
    // The admin port outlives the drain, so probers see 503 rather than a refused connection.
    let (done_tx, done_rx) = watch::channel(false);
    let admin_task = tokio::spawn(serve_admin(admin, health_rx, done_rx));

    // tonic ignores `Server::tcp_nodelay` with `serve_with_incoming`, so the
    // incoming stream sets it itself; without it small replies wait ~40 ms for Nagle.
    let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
    let mut drain = stop_rx.clone();
    let grace = options.grace_period;
    let serving = Server::builder()
        .timeout(options.request_timeout)
        .concurrency_limit_per_connection(options.concurrency_limit)
        .add_routes(routes)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = drain.wait_for(|stopped| *stopped).await;
        });
    tokio::pin!(serving);

    // Wait for either the server to end by itself, or the shutdown signal
    // followed by at most the grace period of draining.
    let mut stopped = stop_rx.clone();
    let result = tokio::select! {
        result = &mut serving => result,
        () = stopped_signal(&mut stopped) => {
            match tokio::time::timeout(grace, &mut serving).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping remaining calls");
                    Ok(())
                }
            }
        }
    };
    health_task.abort();
    done_tx.send_replace(true);
    match admin_task.await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(e)) => return Err(e),
    }
    result.map_err(ServerError::from)
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
    mut ready: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let state = HealthState {
            ready: *ready.borrow_and_update(),
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

/// `/healthz` answers while the process runs; `/readyz` 200 only while ready
/// and not draining. Serves until `done` (after the gRPC drain).
async fn serve_admin(
    listener: TcpListener,
    health: watch::Receiver<HealthState>,
    mut done: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let router = AdminRouter::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let state = *health.borrow();
                async move {
                    if state.ready && !state.draining {
                        (StatusCode::OK, "ready\n")
                    } else if state.draining {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = done.wait_for(|s| *s).await;
        })
        .await
        .map_err(ServerError::Admin)
}

/// Why the service could not start or stopped with an error.
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
    /// Serving failed.
    #[error(transparent)]
    Serve(#[from] ServerError),
}

/// Binds the config's listen addresses. Done after the config is validated,
/// so a bad config never holds a port.
pub async fn bind(
    config: &crate::config::Config,
) -> Result<(TcpListener, TcpListener), StartError> {
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    Ok((
        bind(config.server().grpc_listen()).await?,
        bind(config.server().admin_listen()).await?,
    ))
}

/// Runs tokengate for a validated `config` on the given listeners until `shutdown`:
/// starts the key refreshers, reports ready once the issuers' readiness
/// policy holds (`identity::Readiness`), serves, and drains.
pub async fn serve(
    config: crate::config::Config,
    grpc: TcpListener,
    admin: TcpListener,
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
    let authenticator = Arc::new(
        crate::identity::Authenticator::start(config.issuers)
            .map_err(crate::config::identity_error)?,
    );
    let gate = Arc::new(crate::gate::Gate::new(config.projects, config.policy));
    let readiness = Readiness::new();
    let ready = readiness.clone();
    let keys = Arc::clone(&authenticator);
    tokio::spawn(async move {
        keys.wait_ready().await;
        // Optional issuers may still be loading; their callers get UNAVAILABLE meanwhile.
        let still_loading: Vec<String> = keys
            .readiness()
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
    });
    let routes_config = config.ext_authz.map(Arc::new);
    let pipeline = Arc::new(crate::pipeline::Pipeline::new(
        gate,
        Arc::clone(&authenticator),
        routes_config.clone(),
    ));
    let api = crate::grpc::service::Api::new(Arc::clone(&pipeline));
    let mut routes = Routes::new(
        pb::token_service_server::TokenServiceServer::new(api)
            .max_decoding_message_size(config.limits.max_message_size()),
    );
    let mut advertised_services = vec![
        TOKEN_SERVICE_NAME.to_owned(),
        HEALTH_SERVICE_NAME.to_owned(),
    ];
    if let Some(ext_authz) = routes_config {
        advertised_services.push(EXT_AUTHZ_SERVICE_NAME.to_owned());
        let check = crate::grpc::envoy_check::EnvoyCheck::new(pipeline, ext_authz);
        routes = routes.add_service(
            envoy_types::ext_authz::v3::pb::AuthorizationServer::new(check)
                .max_decoding_message_size(config.limits.max_message_size()),
        );
    }
    let options = ServeOptions {
        grace_period: config.server.grace_period(),
        request_timeout: config.limits.request_timeout(),
        concurrency_limit: config.limits.concurrency(),
        advertised_services,
    };
    tracing::info!(
        grpc = %grpc.local_addr().map_err(|source| StartError::Bind { addr: config.server.grpc_listen(), source })?,
        admin = %admin.local_addr().map_err(|source| StartError::Bind { addr: config.server.admin_listen(), source })?,
        "tokengate listening"
    );
    run(grpc, admin, routes, readiness, options, shutdown).await?;
    authenticator.shutdown();
    Ok(())
}
