//! The service behind every gRPC connection: the served routes, the
//! server's deadline on each call, the count of token and ext_authz calls
//! from their arrival (`limits.max_in_flight`), and the transport's own
//! refusals reported as the caller's fault.
//!
//! tonic's codec answers a request it cannot read with INTERNAL (or
//! OUT_OF_RANGE for one over the size limit), and tonic's own timeout with
//! CANCELLED. Those never reach the pipeline, so they are rewritten here,
//! through `render`, into INVALID_ARGUMENT, RESOURCE_EXHAUSTED and
//! DEADLINE_EXCEEDED with a request id; every other response passes through
//! untouched.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tonic::codegen::Service as _;
use tonic::service::Routes;
use tonic::transport::server::TcpConnectInfo;

use super::listen::{Activity, Tracked};
use crate::domain::PeerIdentity;
use crate::limits::{Arrival, Limiter};
use crate::metrics::{CountedBody, GrpcMeter};
use crate::pipeline::Live;
use crate::render::{self, TransportRefusal};

/// One connection's view of the gRPC routes.
#[derive(Debug, Clone)]
pub(super) struct GrpcCalls {
    routes: Routes,
    info: TcpConnectInfo,
    /// The verified client certificate's identity (mTLS), on every call.
    identity: Option<Arc<PeerIdentity>>,
    activity: Activity,
    timeout: Duration,
    meter: Option<GrpcMeter>,
    shedder: Option<Shedder>,
}

/// Decides, as a call arrives, whether it gets a place under the live
/// config's `limits.max_in_flight`.
#[derive(Debug, Clone)]
pub struct Shedder {
    live: Arc<arc_swap::ArcSwap<Live>>,
    limiter: Arc<Limiter>,
}

/// The services whose calls are counted: the work the bound protects.
/// Health checks and reflection are never shed.
const COUNTED: [&str; 2] = [
    "/tokengate.v1.TokenService/",
    "/envoy.service.auth.v3.Authorization/",
];

impl Shedder {
    /// Counts against `live`'s bound, in `limiter`'s count.
    pub fn new(live: Arc<arc_swap::ArcSwap<Live>>, limiter: Arc<Limiter>) -> Self {
        Self { live, limiter }
    }

    /// The arrival of a call to `path`, if it is one the bound counts.
    fn arrive(&self, path: &str) -> Option<Arrival> {
        COUNTED
            .iter()
            .any(|service| path.starts_with(service))
            .then(|| self.limiter.arrive(&self.live.load().limits))
    }
}

impl GrpcCalls {
    /// Serves `routes` for the connection `info` describes, whose client
    /// certificate named `identity`; each call ends by `timeout` at the
    /// latest and is counted in `activity`.
    pub(super) fn new(
        routes: Routes,
        info: TcpConnectInfo,
        identity: Option<Arc<PeerIdentity>>,
        activity: Activity,
        timeout: Duration,
        meter: Option<GrpcMeter>,
        shedder: Option<Shedder>,
    ) -> Self {
        Self {
            routes,
            info,
            identity,
            activity,
            timeout,
            meter,
            shedder,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for GrpcCalls {
    type Response = Response<Tracked<CountedBody<tonic::body::Body>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let call = self.activity.begin();
        let mut rpc = self.meter.as_ref().map(|m| m.start(request.uri().path()));
        let deadline =
            caller_timeout(request.headers()).map_or(self.timeout, |t| t.min(self.timeout));
        // `Request::remote_addr` reads this, as under tonic's own server.
        request.extensions_mut().insert(self.info.clone());
        // The adapters hand it to the pipeline beside the peer address.
        if let Some(identity) = &self.identity {
            request.extensions_mut().insert(Arc::clone(identity));
        }
        // Taken here, as HTTP/2 accepts the stream (hyper calls this in the
        // connection's task), not when a worker first polls the call: the
        // bound then counts the calls queued for the CPU too. The place is
        // held until the response is ready.
        let arrival = self
            .shedder
            .as_ref()
            .and_then(|shedder| shedder.arrive(request.uri().path()));
        if let Some(arrival) = &arrival {
            request.extensions_mut().insert(arrival.clone());
        }
        let mut routes = self.routes.clone();
        Box::pin(async move {
            let _place = arrival;
            let served = tokio::time::timeout(deadline, async move {
                std::future::poll_fn(|cx| {
                    tonic::codegen::Service::<Request<Incoming>>::poll_ready(&mut routes, cx)
                })
                .await?;
                routes.call(request).await
            })
            .await;
            let response = match served {
                Ok(Ok(response)) => match render::transport_refusal(response.headers()) {
                    Some(refusal) => refuse(&refusal),
                    None => response,
                },
                Ok(Err(never)) => match never {},
                Err(_elapsed) => refuse(&TransportRefusal::DeadlineExceeded),
            };
            // A trailers-only reply (every refusal) carries its status here;
            // otherwise the body's trailers do.
            if let Some(rpc) = rpc.as_mut() {
                rpc.headers(response.headers());
            }
            Ok(response.map(|body| Tracked::new(CountedBody::new(body, rpc), call)))
        })
    }
}

/// The transport's refusal, with a fresh request id (the pipeline never
/// saw the call, or it was cut off before it finished), logged at debug
/// level: a caller can produce these at will.
fn refuse(refusal: &TransportRefusal) -> Response<tonic::body::Body> {
    let request_id = crate::entropy::request_id();
    tracing::debug!(%request_id, reason = refusal.reason(), "the transport refused a call");
    render::transport_response(refusal, &request_id)
}

/// The caller's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit),
/// when it sent a valid one.
fn caller_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_timeout_is_read_as_grpc_writes_it() {
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            caller_timeout(&headers)
        };
        assert_eq!(read("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(
            read("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in ["", "S", "123456789S", "10x", "-1S", "1.5S"] {
            assert_eq!(read(bad), None, "{bad:?}");
        }
        assert_eq!(caller_timeout(&HeaderMap::new()), None);
    }
}
