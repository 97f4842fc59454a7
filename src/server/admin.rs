//! The admin HTTP port: `/healthz` answers while the process runs, `/readyz`
//! 200 only while ready and not draining, `/metrics` the Prometheus metrics. HTTP/1 only, served through hyper
//! directly (not `axum::serve`, which has no timeouts) so that every request's
//! headers must arrive within the header read timeout, and the port shares
//! the accept loop, the connection cap and the idle timeout of `listen`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::Service as _;

use super::listen::{self, Activity, ConnectionLimits, Phase, Tracked};
use crate::grpc::health::HealthState;
use crate::metrics::Metrics;

/// Serves the admin endpoints on `listener` until the phase leaves `Serving`;
/// open connections then finish or are dropped as the phase says.
pub(super) async fn serve(
    listener: TcpListener,
    health: watch::Receiver<HealthState>,
    readiness: watch::Receiver<super::ReadyState>,
    limits: ConnectionLimits,
    metrics: Option<Arc<Metrics>>,
    phase: watch::Receiver<Phase>,
) {
    let router = router(health, readiness, metrics.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let accept_phase = phase.clone();
    listen::accept_loop(
        listener,
        "admin",
        limits.max_connections,
        metrics,
        accept_phase,
        move |stream, _peer, slot| {
            let _ = stream.set_nodelay(true);
            let (activity, calls) = Activity::new();
            let service = AdminCalls {
                router: router.clone(),
                activity,
            };
            let builder = builder.clone();
            let phase = phase.clone();
            tokio::spawn(async move {
                let _slot = slot;
                listen::serve(
                    &builder,
                    TokioIo::new(stream),
                    service,
                    calls,
                    limits,
                    phase,
                    "admin",
                )
                .await;
            });
        },
    )
    .await;
}

fn router(
    health: watch::Receiver<HealthState>,
    readiness: watch::Receiver<super::ReadyState>,
    metrics: Option<Arc<Metrics>>,
) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let metrics = metrics.clone();
                async move { exposition(metrics.as_deref(), &headers) }
            }),
        )
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(move || {
                let state = *health.borrow();
                // Says which issuer keeps the service out of rotation, and why.
                let detail = readiness.borrow().detail.clone();
                async move {
                    if state.ready && !state.draining {
                        (StatusCode::OK, "ready\n".to_owned())
                    } else if state.draining {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned())
                    } else if detail.is_empty() {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {detail}\n"),
                        )
                    }
                }
            }),
        )
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it, classic text otherwise.
fn exposition(metrics: Option<&Metrics>, headers: &HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(metrics) = metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off\n").into_response();
    };
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let openmetrics = crate::metrics::wants_openmetrics(accept);
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        crate::metrics::PROMETHEUS_CONTENT_TYPE
    };
    (
        [(http::header::CONTENT_TYPE, content_type)],
        metrics.encode(openmetrics),
    )
        .into_response()
}

/// One admin connection's view of the router; counts its calls.
#[derive(Debug, Clone)]
struct AdminCalls {
    router: Router,
    activity: Activity,
}

impl hyper::service::Service<Request<Incoming>> for AdminCalls {
    type Response = Response<Tracked<axum::body::Body>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let call = self.activity.begin();
        let mut router = self.router.clone();
        let request = request.map(axum::body::Body::new);
        Box::pin(async move {
            std::future::poll_fn(|cx| {
                tonic::codegen::Service::<Request<axum::body::Body>>::poll_ready(&mut router, cx)
            })
            .await?;
            let response = router.call(request).await?;
            Ok(response.map(|body| Tracked::new(body, call)))
        })
    }
}
