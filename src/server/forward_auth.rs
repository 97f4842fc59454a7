//! The forward-auth port: HTTP/1.1 (and HTTP/2 with prior knowledge, which
//! Envoy's HTTP ext_authz cluster may speak) in front of
//! `forward_auth::ForwardAuth`, with the bounds of the other ports: the
//! connection cap (`forward_auth.max_connections`), the time to a complete
//! request head (`limits.header_read_timeout`, on every request of a
//! keep-alive connection), the idle timeout, the size of a request head
//! (`limits.max_header_list_size`, answered 431), the per-call deadline
//! (`limits.request_timeout`, answered 504) and the drain.
//!
//! A check has no body: a proxy sends the original request's headers only
//! (nginx with `proxy_pass_request_body off`), so whatever body arrives is
//! never read, and hyper closes a connection whose unread body is large.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::listen::{self, Activity, ConnectionLimits, Phase, Tracked};
use crate::forward_auth::ForwardAuth;

/// The most header fields in one request head: far more than any proxy
/// sends, few enough that a flood of tiny headers is cut short.
const MAX_HEADERS: usize = 200;

/// Serves forward-auth checks on `listener` until the phase leaves `Serving`.
pub(super) async fn serve(
    listener: TcpListener,
    check: ForwardAuth,
    limits: ConnectionLimits,
    max_header_bytes: usize,
    request_timeout: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    phase: watch::Receiver<Phase>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses a smaller read buffer; the config's minimum is 16 KiB.
        .max_buf_size(max_header_bytes.max(8192))
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    let accept_phase = phase.clone();
    listen::accept_loop(
        listener,
        "forward_auth",
        limits.max_connections,
        metrics,
        accept_phase,
        move |stream, peer, slot| {
            let _ = stream.set_nodelay(true);
            let (activity, calls) = Activity::new();
            let service = Checks {
                check: check.clone(),
                peer,
                activity,
                request_timeout,
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
                    "forward_auth",
                )
                .await;
            });
        },
    )
    .await;
}

/// One connection's checks; counts them for the drain.
#[derive(Debug, Clone)]
struct Checks {
    check: ForwardAuth,
    peer: SocketAddr,
    activity: Activity,
    request_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for Checks {
    type Response = Response<Tracked<String>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let call = self.activity.begin();
        let this = self.clone();
        Box::pin(async move {
            let (parts, _body) = request.into_parts();
            // The request target as sent: origin-form for every proxy, so
            // the path and query are all there is (never normalised here).
            let target = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
            let answered = tokio::time::timeout(
                this.request_timeout,
                this.check.answer(
                    parts.method.as_str(),
                    target,
                    &parts.headers,
                    Some(this.peer),
                ),
            )
            .await;
            let response = answered.unwrap_or_else(|_elapsed| ForwardAuth::deadline_passed());
            Ok(response.map(|body| Tracked::new(body, call)))
        })
    }
}
