//! A tower layer around the gRPC server that counts every RPC the way
//! go-grpc-prometheus does: started, handled by status code, and the time to
//! the status. The status is read where gRPC puts it: the response headers of
//! a trailers-only reply (every refusal), or the trailers at the end of the
//! body (OK, and errors after a message was sent).
//!
//! Only methods the server actually serves get their own label values; any
//! other path is counted as `unknown`, so a client cannot grow the label set.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame};

use super::Metrics;

/// A served method: its service, name and gRPC type.
#[derive(Debug, Clone)]
pub struct Method {
    /// The fully qualified service, e.g. `tokengate.v1.TokenService`.
    pub service: String,
    /// The method name, e.g. `IssueRtcToken`.
    pub method: String,
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub kind: &'static str,
}

/// The layer: wraps each request's service with the counting one.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, Method>>,
}

/// The counting service.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, Method>>,
}

/// What one RPC reports when it ends.
#[derive(Debug)]
struct Pending {
    metrics: Arc<Metrics>,
    method: Method,
    started: crate::entropy::Stopwatch,
    done: bool,
}

/// The response body, watched for the trailers that carry the status.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    pending: Option<Pending>,
}

/// The response future.
pub struct CountedFuture<F> {
    inner: Pin<Box<F>>,
    pending: Option<Pending>,
}

impl GrpcMetricsLayer {
    /// Counts RPCs into `metrics`; `methods` are the served ones, keyed by path (`/svc/Method`).
    pub fn new(metrics: Arc<Metrics>, methods: Vec<Method>) -> Self {
        let methods = methods
            .into_iter()
            .map(|m| (format!("/{}/{}", m.service, m.method), m))
            .collect();
        Self {
            metrics,
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: Arc::clone(&self.metrics),
            methods: Arc::clone(&self.methods),
        }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self
            .methods
            .get(request.uri().path())
            .cloned()
            .unwrap_or_else(|| Method {
                service: "unknown".into(),
                method: "unknown".into(),
                kind: "unary",
            });
        self.metrics
            .grpc_started(&method.service, &method.method, method.kind);
        CountedFuture {
            inner: Box::pin(self.inner.call(request)),
            pending: Some(Pending {
                metrics: Arc::clone(&self.metrics),
                method,
                started: crate::entropy::Stopwatch::start(),
                done: false,
            }),
        }
    }
}

impl<F: std::fmt::Debug> std::fmt::Debug for CountedFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<CountedBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match self.inner.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        let mut pending = self.pending.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only reply has its status in the headers.
                if let (Some(p), Some(code)) = (pending.as_mut(), status_of(response.headers())) {
                    p.finish(code);
                }
                Ok(response.map(|inner| CountedBody { inner, pending }))
            }
            Err(error) => {
                if let Some(p) = pending.as_mut() {
                    p.finish("Unknown");
                }
                Err(error)
            }
        })
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let code = match frame {
                Some(Ok(frame)) => frame.trailers_ref().and_then(status_of),
                Some(Err(_)) => Some("Unknown"),
                // The body ended without trailers: the peer went away.
                None => Some("Cancelled"),
            };
            if let (Some(code), Some(p)) = (code, self.pending.as_mut()) {
                p.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Pending {
    fn finish(&mut self, code: &'static str) {
        if self.done {
            return;
        }
        self.done = true;
        self.metrics.grpc_handled(
            &self.method.service,
            &self.method.method,
            self.method.kind,
            code,
            self.started.elapsed_secs(),
        );
    }
}

impl Drop for Pending {
    // A call dropped before its status (client reset, server timeout) still ends once.
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

/// The `grpc-status` in `headers`, as go-grpc-prometheus spells the code.
fn status_of(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(match value {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    })
}
