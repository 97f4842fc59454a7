//! Accepting connections, for both ports: the listen backlog, the cap on open
//! connections, back-off when the process runs out of file descriptors, and
//! the life of every connection (time to its first complete request, idle
//! timeout, drain).
//!
//! Nothing here reads the clock but the stopwatch of a TLS handshake (its
//! time is taken from the first request's): every bound is a
//! `tokio::time::sleep`, and log lines are rate-limited by a ticking
//! reporter rather than by timestamps.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Where the server is in its life; every connection and accept loop watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; open connections are asked to finish (HTTP/2 GOAWAY).
    Draining,
    /// The grace period is over: every connection still open is dropped.
    Closing,
}

/// The first pause after an accept error that is not about one connection.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause: once the pressure is gone, accepting resumes within it.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Repeated refusals and accept errors are logged at most once per interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Binds `addr` with a bounded accept queue: beyond `backlog` connections
/// waiting for `accept`, the kernel stops completing handshakes.
pub(super) fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As std's `TcpListener::bind` does on Unix: a restart can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// The bounds every connection on a port lives within.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnectionLimits {
    /// The most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// How long a new connection may take to deliver its first complete request headers.
    pub header_read_timeout: Duration,
    /// How long a connection with no call in flight stays open.
    pub idle_timeout: Duration,
}

/// Accepts on `listener` until the phase leaves `Serving`, handing each
/// connection with its slot to `serve`. Over the cap a connection is closed
/// at once; an accept error that is not about one connection (EMFILE, ENFILE,
/// ENOBUFS) pauses accepting with an exponential back-off, so running out of
/// file descriptors never spins a core. Both are logged once per interval.
pub(super) async fn accept_loop(
    listener: TcpListener,
    port: &'static str,
    max_connections: usize,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    mut phase: watch::Receiver<Phase>,
    mut serve: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let stats = Arc::new(PortStats::new(port, max_connections, metrics));
    let reporter = tokio::spawn(report(Arc::clone(&stats)));
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = leaving(&mut phase, Phase::Serving) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => serve(stream, peer, slot),
                    // Dropping the stream closes it: the client sees the
                    // connection end before it could send anything.
                    Err(_) => stats.refused(),
                }
            }
            Err(error) if about_one_connection(&error) => {}
            Err(error) => {
                stats.accept_failed(&error, backoff);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = leaving(&mut phase, Phase::Serving) => break,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    reporter.abort();
    // The listener drops here: the kernel stops accepting on the port at once.
}

/// Accept errors that concern only the connection being accepted; the next
/// `accept` may succeed at once.
fn about_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// Completes once the phase is past `from` (or the server is gone).
async fn leaving(phase: &mut watch::Receiver<Phase>, from: Phase) {
    // The guard `wait_for` returns is not Send; it is dropped here.
    let _ = phase.wait_for(|now| *now > from).await.map(|_| ());
}

/// A port's refusals and accept errors, for rate-limited logs.
#[derive(Debug)]
struct PortStats {
    port: &'static str,
    max_connections: usize,
    /// Every connection refused over the cap since start, for the logs
    /// (the metrics count them in `tokengate_connections_refused_total`).
    refused_total: AtomicU64,
    refused_unlogged: AtomicU64,
    refusal_logged: AtomicBool,
    accept_errors_unlogged: AtomicU64,
    accept_error_logged: AtomicBool,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl PortStats {
    fn new(
        port: &'static str,
        max_connections: usize,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self {
            port,
            max_connections,
            metrics,
            refused_total: AtomicU64::new(0),
            refused_unlogged: AtomicU64::new(0),
            refusal_logged: AtomicBool::new(false),
            accept_errors_unlogged: AtomicU64::new(0),
            accept_error_logged: AtomicBool::new(false),
        }
    }

    fn refused(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.connection_refused(self.port);
        }
        let total = self.refused_total.fetch_add(1, Ordering::Relaxed) + 1;
        if self.refusal_logged.swap(true, Ordering::Relaxed) {
            self.refused_unlogged.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::warn!(
                port = self.port,
                max_connections = self.max_connections,
                refused_total = total,
                "connection limit reached; closing new connections"
            );
        }
    }

    fn accept_failed(&self, error: &std::io::Error, backoff: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.accept_failed(self.port);
        }
        if self.accept_error_logged.swap(true, Ordering::Relaxed) {
            self.accept_errors_unlogged.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::error!(
                port = self.port,
                %error,
                backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "cannot accept connections (out of file descriptors?); backing off"
            );
        }
    }
}

/// Every interval: logs what the first line of the last interval left out,
/// and lets the next refusal or accept error be logged again.
async fn report(stats: Arc<PortStats>) {
    let mut tick = tokio::time::interval(LOG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once.
    tick.tick().await;
    loop {
        tick.tick().await;
        let refused = stats.refused_unlogged.swap(0, Ordering::Relaxed);
        if refused > 0 {
            tracing::warn!(
                port = stats.port,
                refused,
                refused_total = stats.refused_total.load(Ordering::Relaxed),
                interval_secs = LOG_INTERVAL.as_secs(),
                "more connections refused over the limit in the last interval"
            );
        }
        stats.refusal_logged.store(false, Ordering::Relaxed);
        let errors = stats.accept_errors_unlogged.swap(0, Ordering::Relaxed);
        if errors > 0 {
            tracing::error!(
                port = stats.port,
                errors,
                interval_secs = LOG_INTERVAL.as_secs(),
                "accept kept failing in the last interval"
            );
        }
        stats.accept_error_logged.store(false, Ordering::Relaxed);
    }
}

/// What a connection's service has seen: whether any request arrived, and
/// how many calls are in flight (until their response bodies are done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Calls {
    started: bool,
    in_flight: usize,
}

/// The counting side of [`Calls`], held by a connection's service.
#[derive(Debug, Clone)]
pub(super) struct Activity(Arc<watch::Sender<Calls>>);

impl Activity {
    /// A fresh counter and the receiver the connection's driver watches.
    pub(super) fn new() -> (Self, watch::Receiver<Calls>) {
        let (tx, rx) = watch::channel(Calls::default());
        (Self(Arc::new(tx)), rx)
    }

    /// Counts a call in until the returned guard drops.
    pub(super) fn begin(&self) -> CallGuard {
        self.0.send_modify(|calls| {
            calls.started = true;
            calls.in_flight += 1;
        });
        CallGuard(Arc::clone(&self.0))
    }
}

/// One call in flight; dropping it counts the call out.
#[derive(Debug)]
pub(super) struct CallGuard(Arc<watch::Sender<Calls>>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0
            .send_modify(|calls| calls.in_flight = calls.in_flight.saturating_sub(1));
    }
}

/// A response body that keeps its call counted in until it is done, so a
/// streaming reply (health `Watch`) keeps its connection from being idle.
#[derive(Debug)]
pub(super) struct Tracked<B> {
    inner: B,
    _call: CallGuard,
}

impl<B> Tracked<B> {
    /// `inner`, counted by `call`.
    pub(super) fn new(inner: B, call: CallGuard) -> Self {
        Self { inner, _call: call }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// No complete request within the header read timeout: dropped at once.
    NoRequest,
    /// No call in flight for the idle timeout: asked to finish.
    Idle,
    /// The server is draining: asked to finish.
    Drain,
}

/// Serves one connection to its end, within the limits: dropped if its
/// first complete request does not arrive in time, shut down gracefully
/// (HTTP/2 GOAWAY; HTTP/1 closes once the current response is written) once
/// idle or when the server drains, and dropped if that does not finish in
/// time. `graceful` starts the graceful shutdown of `conn`.
pub(super) async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl FnOnce(Pin<&mut C>),
    mut calls: watch::Receiver<Calls>,
    limits: ConnectionLimits,
    mut phase: watch::Receiver<Phase>,
    port: &'static str,
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    let close = tokio::select! {
        result = conn.as_mut() => return finished(port, result),
        close = quiet(&mut calls, limits) => close,
        () = leaving(&mut phase, Phase::Serving) => Close::Drain,
    };
    if close == Close::NoRequest {
        tracing::debug!(
            port,
            "closing a connection that sent no complete request in time"
        );
        return;
    }
    graceful(conn.as_mut());
    // An idle connection gets as long as a new one to finish; a draining one
    // until the grace period is over.
    let bound = async {
        match close {
            Close::Idle => tokio::time::sleep(limits.header_read_timeout).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        result = conn.as_mut() => finished(port, result),
        () = bound => tracing::debug!(port, "dropping a connection that did not finish after GOAWAY"),
        () = leaving(&mut phase, Phase::Draining) => {}
    }
}

/// Serves `io` with `service` under `builder`'s HTTP settings, the
/// connection driven to its end by [`drive`]: every port's connections
/// live by the same rules.
pub(super) async fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    calls: watch::Receiver<Calls>,
    limits: ConnectionLimits,
    phase: watch::Receiver<Phase>,
    port: &'static str,
) where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    TokioExecutor: HttpServerConnExec<S::Future, B>,
{
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    drive(
        conn.as_mut(),
        |conn| conn.graceful_shutdown(),
        calls,
        limits,
        phase,
        port,
    )
    .await;
}

/// Runs a connection's handshake (TLS) within the time its first complete
/// request has: `None` when it did not finish in time or the port began
/// draining meanwhile; otherwise its result and the limits with the time
/// left for the first request.
pub(super) async fn before_first_request<T>(
    handshake: impl Future<Output = T>,
    limits: ConnectionLimits,
    phase: &mut watch::Receiver<Phase>,
) -> Option<(T, ConnectionLimits)> {
    let started = crate::entropy::Stopwatch::start();
    let done = tokio::select! {
        done = tokio::time::timeout(limits.header_read_timeout, handshake) => done.ok()?,
        () = leaving(phase, Phase::Serving) => return None,
    };
    let spent = Duration::from_micros(started.elapsed_us());
    let left = limits.header_read_timeout.saturating_sub(spent);
    Some((
        done,
        ConnectionLimits {
            header_read_timeout: left.max(Duration::from_millis(1)),
            ..limits
        },
    ))
}

/// Completes when the connection has been quiet for too long: no request at
/// all within the header read timeout, or no call in flight for the idle timeout.
async fn quiet(calls: &mut watch::Receiver<Calls>, limits: ConnectionLimits) -> Close {
    loop {
        let now = *calls.borrow_and_update();
        let (limit, close) = if !now.started {
            (limits.header_read_timeout, Close::NoRequest)
        } else if now.in_flight == 0 {
            (limits.idle_timeout, Close::Idle)
        } else {
            if calls.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(limit) => return close,
            changed = calls.changed() => if changed.is_err() {
                // The service is gone, so is the connection: `drive` sees it end.
                return std::future::pending().await;
            },
        }
    }
}

fn finished<E: Display>(port: &'static str, result: Result<(), E>) {
    if let Err(error) = result {
        tracing::debug!(port, %error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_per_connection_errors_skip_the_back_off() {
        use std::io::{Error, ErrorKind};
        assert!(about_one_connection(&Error::from(
            ErrorKind::ConnectionAborted
        )));
        // EMFILE and ENFILE: the process or the system is out of descriptors.
        assert!(!about_one_connection(&Error::from_raw_os_error(24)));
        assert!(!about_one_connection(&Error::from_raw_os_error(23)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_quiet_without_a_request_or_once_idle() {
        let limits = ConnectionLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        };
        let (activity, mut calls) = Activity::new();
        assert_eq!(quiet(&mut calls, limits).await, Close::NoRequest);
        let call = activity.begin();
        // A call in flight is never idle, however long it takes.
        let pending =
            tokio::time::timeout(Duration::from_secs(3600), quiet(&mut calls, limits)).await;
        assert!(pending.is_err());
        drop(call);
        assert_eq!(quiet(&mut calls, limits).await, Close::Idle);
    }
}
