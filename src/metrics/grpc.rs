//! Counting every RPC of the gRPC port the way go-grpc-prometheus does: started, handled by status code, and the time to
//! the status. The status is read where gRPC puts it: the response headers of
//! a trailers-only reply (every refusal), or the trailers at the end of the
//! body (OK, and errors after a message was sent).
//!
//! Only methods the server actually serves get their own label values; any
//! other path is counted as `unknown`, so a client cannot grow the label set.

use std::collections::HashMap;
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

/// Counts the RPCs of one server; cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcMeter {
    metrics: Arc<Metrics>,
    methods: Arc<HashMap<String, Method>>,
}

/// One RPC being counted: it ends once, with the first status seen, or as
/// `Cancelled` if it is dropped before one (a client reset, a timeout).
#[derive(Debug)]
pub struct RpcMeter {
    metrics: Arc<Metrics>,
    method: Method,
    started: crate::entropy::Stopwatch,
    done: bool,
}

/// The response body, watched for the trailers that carry the status.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    meter: Option<RpcMeter>,
}

impl GrpcMeter {
    /// Counts RPCs into `metrics`; `methods` are the served ones.
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

    /// Starts counting the RPC at `path` (`/package.Service/Method`).
    pub fn start(&self, path: &str) -> RpcMeter {
        let method = self.methods.get(path).cloned().unwrap_or_else(|| Method {
            service: "unknown".into(),
            method: "unknown".into(),
            kind: "unary",
        });
        self.metrics
            .grpc_started(&method.service, &method.method, method.kind);
        RpcMeter {
            metrics: Arc::clone(&self.metrics),
            method,
            started: crate::entropy::Stopwatch::start(),
            done: false,
        }
    }
}

impl RpcMeter {
    /// Ends the RPC if `headers` carry its status (a trailers-only reply).
    pub fn headers(&mut self, headers: &http::HeaderMap) {
        if let Some(code) = status_of(headers) {
            self.finish(code);
        }
    }

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

impl Drop for RpcMeter {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

impl<B> CountedBody<B> {
    /// `inner`, ending `meter` when its trailers (or its end) arrive.
    pub fn new(inner: B, meter: Option<RpcMeter>) -> Self {
        Self { inner, meter }
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
                None => Some("Canceled"),
            };
            if let (Some(code), Some(meter)) = (code, self.meter.as_mut()) {
                meter.finish(code);
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
