//! A scriptable HTTP/1.1 JSON service on `127.0.0.1:0`, standing in for the
//! services tokengate fetches "HTTP facts" from.
//!
//! Unlike the JWKS server, which speaks raw bytes to fake broken framing,
//! this one is real hyper: facts are fetched by a pooled keep-alive client,
//! so the server must handle keep-alive, request bodies and chunked replies
//! the way a real service does. Tests script a reply per exact path (the
//! path as received, still percent-encoded, so tests can check how the
//! client encodes a channel name), delay it, make it huge and streamed (to
//! prove a client stops reading at its size bound), and read back every
//! request: method, raw path, query, headers and body. `stop` and `restart`
//! (same port, same script and log) let tests check recovery from a service
//! that went away.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The size of each chunk a [`Reply::huge`] body is written in.
pub const HUGE_CHUNK: usize = 16 * 1024;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: ReplyBody,
    delay: Duration,
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Full(Bytes),
    Huge {
        len: u64,
        declared: bool,
        pause: Duration,
    },
}

impl Reply {
    /// `status` with this JSON document (`Content-Type: application/json`).
    pub fn json(status: u16, body: Value) -> Self {
        Self::raw(status, "application/json", body.to_string().into_bytes())
    }

    /// `status` with these bytes and this `Content-Type` (for non-JSON and
    /// malformed bodies).
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: ReplyBody::Full(Bytes::from(body.into())),
            delay: Duration::ZERO,
        }
    }

    /// 200 with a valid JSON array of exactly `len` bytes (at least 2:
    /// `[0,0,...,0]`), generated as it is written, in [`HUGE_CHUNK`] chunks,
    /// chunked (no `Content-Length`) unless [`Reply::declared_length`]. Only
    /// what the client reads is generated: see [`FactServer::streamed_bytes`].
    pub fn huge(len: usize) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: ReplyBody::Huge {
                len: len.max(2) as u64,
                declared: false,
                pause: Duration::ZERO,
            },
            delay: Duration::ZERO,
        }
    }

    /// Sleeps this long before answering (headers included).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds a response header (after `Content-Type`; a second
    /// `content-type` replaces the first).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if name == "content-type" {
            self.headers.retain(|(n, _)| n != "content-type");
        }
        self.headers.push((name, value.to_owned()));
        self
    }

    /// For [`Reply::huge`]: sends `Content-Length` instead of chunking, so a
    /// client can refuse it from the header alone. No effect on other replies,
    /// which always declare their length.
    pub fn declared_length(mut self) -> Self {
        if let ReplyBody::Huge { declared, .. } = &mut self.body {
            *declared = true;
        }
        self
    }

    /// For [`Reply::huge`]: waits this long between chunks (a slow body, for
    /// a client's total deadline). No effect on other replies.
    pub fn chunk_pause(mut self, every: Duration) -> Self {
        if let ReplyBody::Huge { pause, .. } = &mut self.body {
            *pause = every;
        }
        self
    }

    fn not_found() -> Self {
        Self::json(404, json!({"error": "not found"}))
    }
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query, exactly as sent (still percent-encoded).
    pub path: String,
    /// The query string without `?`, as sent, if there was one.
    pub query: Option<String>,
    /// Every header in arrival order: lowercase name, value (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The whole request body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A running fact service; stops when dropped.
#[derive(Debug)]
pub struct FactServer {
    addr: SocketAddr,
    state: Arc<State>,
    serving: Option<Serving>,
}

#[derive(Debug)]
struct Serving {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    script: Mutex<Script>,
    log: Mutex<Vec<Recorded>>,
    streamed: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Script {
    standing: HashMap<String, Reply>,
    once: HashMap<String, VecDeque<Reply>>,
    default: Reply,
}

impl FactServer {
    /// Starts serving on `127.0.0.1:0` (on the current runtime). Every path
    /// answers 404 `{"error":"not found"}` until scripted.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            script: Mutex::new(Script {
                standing: HashMap::new(),
                once: HashMap::new(),
                default: Reply::not_found(),
            }),
            log: Mutex::new(Vec::new()),
            streamed: Arc::new(AtomicU64::new(0)),
        });
        let serving = Some(serve(listener, Arc::clone(&state)));
        Self {
            addr,
            state,
            serving,
        }
    }

    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address (kept across `stop` / `restart`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `reply` to every request for exactly `path` (no query, as
    /// sent: `/rooms/a%2Fb` does not match a request for `/rooms/a/b`).
    pub fn respond(&self, path: &str, reply: Reply) {
        self.script().standing.insert(path.to_owned(), reply);
    }

    /// Answers `reply` to the next request for `path` only; queued one-shot
    /// replies are used in order before the standing one (e.g. two 503s, then
    /// what `respond` set).
    pub fn respond_once(&self, path: &str, reply: Reply) {
        self.script()
            .once
            .entry(path.to_owned())
            .or_default()
            .push_back(reply);
    }

    /// What paths without a scripted reply get (initially 404
    /// `{"error":"not found"}`).
    pub fn set_default(&self, reply: Reply) {
        self.script().default = reply;
    }

    /// Every request so far, in arrival order. A request is recorded when its
    /// body has been read, before any delay, so one the client gave up on
    /// still counts.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.log.lock().unwrap().clone()
    }

    /// How many requests were for exactly `path` (as sent).
    pub fn count(&self, path: &str) -> usize {
        self.state
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .count()
    }

    /// Forgets the recorded requests and zeroes [`FactServer::streamed_bytes`]
    /// (the script stays).
    pub fn reset_counts(&self) {
        self.state.log.lock().unwrap().clear();
        self.state.streamed.store(0, Ordering::SeqCst);
    }

    /// How many bytes of [`Reply::huge`] bodies have been handed to the
    /// connection so far: far below the reply's size when a client stopped
    /// reading early (the socket buffers bound what is written ahead).
    pub fn streamed_bytes(&self) -> u64 {
        self.state.streamed.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every open connection; when it returns,
    /// connecting to [`FactServer::url`] is refused. The script and the log stay.
    pub async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            let _ = serving.shutdown.send(true);
            let _ = serving.task.await;
        }
    }

    /// Serves again on the same port (after [`FactServer::stop`]; stops first
    /// if still running). Retries the bind for up to 2 s in case the port is
    /// briefly held; panics if it stays taken.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("fact server: cannot rebind {}: {e}", self.addr),
            }
        };
        self.serving = Some(serve(listener, Arc::clone(&self.state)));
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.state.script.lock().unwrap()
    }
}

impl Drop for FactServer {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task too.
        if let Some(serving) = self.serving.take() {
            serving.task.abort();
        }
    }
}

/// Accepts on `listener` until told to shut down; each connection is a task
/// in a set the accept task owns, so stopping it ends them all.
fn serve(listener: TcpListener, state: Arc<State>) -> Serving {
    let (shutdown, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            // Reap finished connections so a long test does not keep them all.
            while connections.try_join_next().is_some() {}
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = stopped.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&state);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(answer(request, &state).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        drop(listener);
        connections.shutdown().await;
    });
    Serving { shutdown, task }
}

/// Records `request`, then answers it from the script.
async fn answer(request: Request<Incoming>, state: &State) -> Response<FactBody> {
    let (parts, mut incoming) = request.into_parts();
    let mut body = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut incoming).poll_frame(cx)).await
    {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            // The client went away mid-body: nothing to answer.
            Err(_) => break,
        }
    }
    let path = parts.uri.path().to_owned();
    state.log.lock().unwrap().push(Recorded {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    });
    let reply = {
        let mut script = state.script.lock().unwrap();
        let once = script.once.get_mut(&path).and_then(VecDeque::pop_front);
        once.or_else(|| script.standing.get(&path).cloned())
            .unwrap_or_else(|| script.default.clone())
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = match reply.body {
        ReplyBody::Full(bytes) => FactBody::Full(Some(bytes)),
        ReplyBody::Huge {
            len,
            declared,
            pause,
        } => FactBody::Huge(Huge {
            len,
            next: 0,
            declared,
            pause,
            sleep: None,
            streamed: Arc::clone(&state.streamed),
        }),
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A reply body: whole, or a huge array generated chunk by chunk.
enum FactBody {
    Full(Option<Bytes>),
    Huge(Huge),
}

struct Huge {
    len: u64,
    next: u64,
    declared: bool,
    pause: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    streamed: Arc<AtomicU64>,
}

impl Body for FactBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            FactBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            FactBody::Huge(huge) => {
                if huge.next >= huge.len {
                    return Poll::Ready(None);
                }
                if huge.next > 0 && !huge.pause.is_zero() {
                    let pause = huge.pause;
                    let sleep = huge
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    huge.sleep = None;
                }
                let chunk = huge_chunk(huge.next, huge.len);
                huge.next += chunk.len() as u64;
                huge.streamed
                    .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FactBody::Full(bytes) => bytes.is_none(),
            FactBody::Huge(huge) => huge.next >= huge.len,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FactBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            FactBody::Full(None) => SizeHint::with_exact(0),
            // An exact hint is what makes hyper send `Content-Length`; an
            // inexact one makes it chunk.
            FactBody::Huge(huge) if huge.declared => SizeHint::with_exact(huge.len - huge.next),
            FactBody::Huge(_) => SizeHint::default(),
        }
    }
}

/// Bytes `[start, start + HUGE_CHUNK)` (clipped to `len`) of the array
/// `[0,0,...,0]` of `len` bytes: byte 0 is `[`, the last `]`; in between
/// odd offsets are `0` and even ones `,`, and when that would end on a `,`
/// (even `len`), a space stands in for it, which JSON allows.
fn huge_chunk(start: u64, len: u64) -> Bytes {
    let end = (start + HUGE_CHUNK as u64).min(len);
    let mut chunk: Vec<u8> = (start..end)
        .map(|i| if i % 2 == 1 { b'0' } else { b',' })
        .collect();
    let mut set = |at: u64, byte: u8| {
        if (start..end).contains(&at) {
            chunk[(at - start) as usize] = byte;
        }
    };
    if len.is_multiple_of(2) && len > 2 {
        set(len - 2, b' ');
    }
    set(0, b'[');
    set(len - 1, b']');
    Bytes::from(chunk)
}
