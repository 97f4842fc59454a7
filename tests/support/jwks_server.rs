//! A controllable JWKS / OIDC discovery server on `127.0.0.1:0`.
//!
//! A deliberately small HTTP/1.1 server over a tokio `TcpListener` (one
//! request per connection, `Connection: close`), so tests control every byte:
//! rotation, the next N fetches failing, delays, garbage and oversized bodies
//! (with or without `Content-Length`), the `Cache-Control` header, and the
//! issuer named by the discovery document, and a delay of the discovery
//! document of its own. It counts JWKS and discovery fetches, which is
//! how the kid-flood test proves the refetch is rate-limited.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::keys::TestKey;

/// What `/jwks` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksBody {
    /// The current key set.
    Keys,
    /// A body that is not JSON.
    Garbage,
    /// A valid-looking JSON body of about this many bytes, with `Content-Length`.
    Oversized(usize),
    /// The same, sent chunked (no `Content-Length`), so only a streaming cap catches it.
    OversizedChunked(usize),
}

/// A running test JWKS server; stops when dropped.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    behaviour: Mutex<Behaviour>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

struct Behaviour {
    keys: Vec<Value>,
    body: JwksBody,
    fail_next: usize,
    fail_status: u16,
    delay: Duration,
    discovery_delay: Duration,
    cache_control: Option<String>,
    discovery_issuer: Option<String>,
}

impl JwksServer {
    /// Starts serving these keys on `127.0.0.1:0` (on the current runtime).
    pub async fn start(keys: &[&TestKey]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            behaviour: Mutex::new(Behaviour {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
                body: JwksBody::Keys,
                fail_next: 0,
                fail_status: 503,
                delay: Duration::ZERO,
                discovery_delay: Duration::ZERO,
                cache_control: Some("max-age=300".to_owned()),
                discovery_issuer: None,
            }),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let _ = serve(stream, addr, &state).await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`: also the issuer its discovery document names by default.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.base_url())
    }

    /// The discovery document URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.base_url())
    }

    /// Replaces the published keys (rotation).
    pub fn set_keys(&self, keys: &[&TestKey]) {
        self.with(|b| b.keys = keys.iter().map(|k| k.jwk.clone()).collect());
    }

    /// Replaces the published keys with raw JWK values.
    pub fn set_raw_keys(&self, keys: Vec<Value>) {
        self.with(|b| b.keys = keys);
    }

    /// Adds a key to the published set.
    pub fn add_key(&self, key: &TestKey) {
        self.with(|b| b.keys.push(key.jwk.clone()));
    }

    /// Makes the next `n` JWKS fetches answer `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.with(|b| {
            b.fail_next = n;
            b.fail_status = status;
        });
    }

    /// Delays every JWKS answer (headers included).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|b| b.delay = delay);
    }

    /// Delays every discovery document answer (headers included).
    pub fn set_discovery_delay(&self, delay: Duration) {
        self.with(|b| b.discovery_delay = delay);
    }

    /// Chooses what `/jwks` sends.
    pub fn set_body(&self, body: JwksBody) {
        self.with(|b| b.body = body);
    }

    /// Sets (or removes) the `Cache-Control` header of `/jwks`.
    pub fn set_cache_control(&self, value: Option<&str>) {
        self.with(|b| b.cache_control = value.map(str::to_owned));
    }

    /// Makes the discovery document name this issuer instead of the base URL.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        self.with(|b| b.discovery_issuer = Some(issuer.to_owned()));
    }

    /// How many times `/jwks` was requested.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was requested.
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    fn with(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.state.behaviour.lock().unwrap());
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers one request on `stream`.
async fn serve(mut stream: TcpStream, addr: SocketAddr, state: &State) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match path.as_str() {
        "/jwks" => answer_jwks(&mut stream, state).await,
        "/.well-known/openid-configuration" => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let base = format!("http://{addr}");
            let (issuer, delay) = {
                let b = state.behaviour.lock().unwrap();
                (
                    b.discovery_issuer.clone().unwrap_or_else(|| base.clone()),
                    b.discovery_delay,
                )
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let doc = json!({"issuer": issuer, "jwks_uri": format!("{base}/jwks")}).to_string();
            respond(&mut stream, 200, &[], doc.as_bytes()).await
        }
        _ => respond(&mut stream, 404, &[], b"not found").await,
    }
}

async fn answer_jwks(stream: &mut TcpStream, state: &State) -> std::io::Result<()> {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let (delay, failure, body, keys, cache_control) = {
        let mut b = state.behaviour.lock().unwrap();
        let failure = (b.fail_next > 0).then(|| {
            b.fail_next -= 1;
            b.fail_status
        });
        (
            b.delay,
            failure,
            b.body.clone(),
            b.keys.clone(),
            b.cache_control.clone(),
        )
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = failure {
        return respond(stream, status, &[], b"{\"error\":\"unavailable\"}").await;
    }
    let mut headers = Vec::new();
    if let Some(cc) = &cache_control {
        headers.push(format!("Cache-Control: {cc}"));
    }
    match body {
        JwksBody::Keys => {
            let doc = json!({ "keys": keys }).to_string();
            respond(stream, 200, &headers, doc.as_bytes()).await
        }
        JwksBody::Garbage => respond(stream, 200, &headers, b"<html>not json{").await,
        JwksBody::Oversized(size) => respond(stream, 200, &headers, &padded(&keys, size)).await,
        JwksBody::OversizedChunked(size) => {
            let body = padded(&keys, size);
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n",
            );
            for h in &headers {
                out.push_str(h);
                out.push_str("\r\n");
            }
            out.push_str("\r\n");
            stream.write_all(out.as_bytes()).await?;
            for chunk in body.chunks(16 * 1024) {
                stream
                    .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                stream.write_all(chunk).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
            stream.shutdown().await
        }
    }
}

/// A valid JWKS padded with an extra member to about `size` bytes.
fn padded(keys: &[Value], size: usize) -> Vec<u8> {
    json!({ "keys": keys, "padding": "x".repeat(size) })
        .to_string()
        .into_bytes()
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    headers: &[String],
    body: &[u8],
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
