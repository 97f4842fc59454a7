//! The transport under both ports, attacked as an outsider would, with raw
//! sockets on 127.0.0.1 and a raw HTTP/2 client: connections that never
//! finish their first request, idle ones, peers that stop answering pings,
//! the connection caps, the advertised HTTP/2 settings, a 100 KiB JWT, and
//! requests tonic's codec cannot read.
//!
//! Every wait is bounded; timed assertions are upper bounds with margins.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use http::HeaderMap;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::codegen::Bytes;
use tonic_types::StatusExt;

use crate::support::server::TestServer;
use tokengate::grpc::pb;

const RULES: &str = r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
max_role = "subscriber"
account_claim = "sub"
"#;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A ready test server with `limits` (a `[limits]` table, or nothing).
async fn ready(limits: &str) -> TestServer {
    let server = TestServer::start(&format!("{limits}\n{RULES}")).await;
    server.wait_ready().await;
    server
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const END_HEADERS: u8 = 0x4;

/// An HPACK block of literal, never-indexed-by-us, non-Huffman fields (every
/// name and value here is shorter than 127 bytes).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(u8::try_from(name.len()).unwrap());
        out.extend_from_slice(name.as_bytes());
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The request headers of a gRPC call to `path`.
fn grpc_request_fields(path: &str) -> Vec<u8> {
    hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
}

/// Reads from `stream` until the peer closes it (EOF or reset), at most
/// `limit`; returns the bytes read, or `None` if it was still open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(seen)
}

/// The frame types in a byte stream the server wrote (after nothing else: the
/// server sends no preface of its own beyond its SETTINGS frame).
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn connections_that_never_complete_a_request_are_closed_on_both_ports() {
    let limits = "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"\n";
    let server = ready(limits).await;
    // Well above the 1 s timeout, far below the 65 s the review saw.
    let bound = Duration::from_secs(6);

    // Nothing at all, on either port.
    for addr in [server.addr, server.admin] {
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut silent, bound).await.is_some(),
            "{addr}: a silent connection stayed open"
        );
    }
    // The HTTP/2 preface and SETTINGS, then nothing.
    let mut preface_only = TcpStream::connect(server.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    preface_only
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    assert!(closed_within(&mut preface_only, bound).await.is_some());
    // A HEADERS frame that never ends its header block.
    let mut slow_headers = TcpStream::connect(server.addr).await.unwrap();
    slow_headers.write_all(PREFACE).await.unwrap();
    slow_headers
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .unwrap();
    let block = grpc_request_fields("/grpc.health.v1.Health/Check");
    slow_headers
        .write_all(&frame(HEADERS, 0, 1, &block[..block.len() / 2]))
        .await
        .unwrap();
    assert!(closed_within(&mut slow_headers, bound).await.is_some());
    // An HTTP/1 request line and half the headers on the admin port.
    let mut slow_admin = TcpStream::connect(server.admin).await.unwrap();
    slow_admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut slow_admin, bound).await.is_some());

    // A real client is unaffected.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed_but_a_streaming_call_keeps_its_connection() {
    let limits = "[limits]\nidle_timeout = \"1s\"\n";
    let server = ready(limits).await;
    let bound = Duration::from_secs(6);

    // gRPC: one call, then silence; the server sends GOAWAY and closes.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let (status, _) = raw_call(
        &mut h2,
        "/grpc.health.v1.Health/Check",
        grpc_frame(0, &[]),
        &[],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let ended = tokio::time::timeout(bound, driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");

    // Admin: one keep-alive request, then silence.
    let mut admin = TcpStream::connect(server.admin).await.unwrap();
    admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let seen = closed_within(&mut admin, bound).await;
    let seen = seen.expect("an idle keep-alive admin connection stayed open");
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );

    // A health Watch is a call in flight: its connection outlives the idle timeout.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let quiet = tokio::time::timeout(Duration::from_millis(2500), watch.message()).await;
    assert!(quiet.is_err(), "the watch ended while idle: {quiet:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let limits = "[limits]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\nidle_timeout = \"60s\"\nrequest_timeout = \"60s\"\n";
    let server = ready(limits).await;
    // A call whose message never comes keeps the connection busy; the peer
    // then goes silent and never acknowledges a PING.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let block = grpc_request_fields("/grpc.health.v1.Health/Check");
    tcp.write_all(&frame(HEADERS, END_HEADERS, 1, &block))
        .await
        .unwrap();
    let seen = closed_within(&mut tcp, Duration::from_secs(8))
        .await
        .expect("a silent peer kept its connection");
    assert!(frame_types(&seen).contains(&PING), "no PING was sent");
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_on_both_ports() {
    let limits =
        "[limits]\nmax_connections = 3\nadmin_max_connections = 2\nheader_read_timeout = \"10s\"\n";
    let server = ready(limits).await;
    for (addr, cap) in [(server.addr, 3), (server.admin, 2)] {
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // The held connections are accepted before the next one is refused:
        // give the accept loop a moment, bounded, by retrying the probe.
        let mut refused = false;
        for _ in 0..20 {
            let mut over = TcpStream::connect(addr).await.unwrap();
            if closed_within(&mut over, Duration::from_millis(500))
                .await
                .is_some()
            {
                refused = true;
                break;
            }
            drop(over);
        }
        assert!(
            refused,
            "{addr}: a connection over the cap of {cap} stayed open"
        );
        // One slot frees up when a held connection closes: a real client gets in.
        drop(held.pop());
        let mut served = false;
        for _ in 0..40 {
            if serves(addr, addr == server.admin).await {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(served, "{addr}: nothing served after a slot was freed");
    }
    server.shutdown().await;
}

/// Whether one fresh connection to `addr` gets an answer.
async fn serves(addr: SocketAddr, admin: bool) -> bool {
    let attempt = async {
        if admin {
            let mut tcp = TcpStream::connect(addr).await.ok()?;
            tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut reply = Vec::new();
            tcp.read_to_end(&mut reply).await.ok()?;
            reply.starts_with(b"HTTP/1.1 200").then_some(())
        } else {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let (mut h2, connection) = h2::client::handshake(tcp).await.ok()?;
            tokio::spawn(connection);
            let (status, _) = raw_call(
                &mut h2,
                "/grpc.health.v1.Health/Check",
                grpc_frame(0, &[]),
                &[],
            )
            .await;
            (status.code() == Code::Ok).then_some(())
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(()))
    )
}

#[tokio::test]
async fn the_grpc_port_advertises_its_stream_and_header_list_limits() {
    let limits = "[limits]\nconcurrency = 7\nmax_header_list_size = 65536\n";
    let server = ready(limits).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // The server's first frame is its SETTINGS.
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[3], SETTINGS);
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) and SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(settings.contains(&(0x6, 65536)), "{settings:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_100_kib_jwt_is_refused_as_too_large_and_only_that_call_fails() {
    let server = ready("").await;
    let path = "/tokengate.v1.TokenService/IssueRtcToken";
    let message = Bytes::from(prost::Message::encode_to_vec(&pb::IssueRtcTokenRequest {
        channel: "lobby-1".into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    }));
    // One HTTP/2 connection for both calls: a GOAWAY would fail the second.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let huge = format!("Bearer eyJ{}", "A".repeat(100 * 1024));
    let (status, headers) = raw_call(
        &mut h2,
        path,
        grpc_frame(0, &message),
        &[("authorization", huge.as_str())],
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let details = status.get_error_details();
    assert_eq!(
        details.error_info().map(|i| i.reason.as_str()),
        Some("too_large")
    );
    request_id(&status, &headers);
    let good = format!("Bearer {}", server.mint("alice", json!({})));
    let (status, _) = raw_call(
        &mut h2,
        path,
        grpc_frame(0, &message),
        &[("authorization", good.as_str())],
    )
    .await;
    assert_eq!(
        status.code(),
        Code::Ok,
        "the next call on the same connection: {status:?}"
    );

    // A header block far over `max_header_list_size` is cut off at the
    // transport: the service never sees it, so it is no UNAUTHENTICATED.
    let giant = format!("eyJ{}", "A".repeat(1024 * 1024));
    let request = || pb::IssueRtcTokenRequest {
        channel: "lobby-1".into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    };
    let cut = server
        .client()
        .await
        .issue_rtc_token(TestServer::authed(&giant, request()))
        .await
        .unwrap_err();
    assert_ne!(cut.code(), Code::Unauthenticated, "{cut:?}");
    // And the server keeps serving everyone else.
    let (status, _) = raw_call(
        &mut h2,
        path,
        grpc_frame(0, &message),
        &[("authorization", good.as_str())],
    )
    .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    server.shutdown().await;
}

/// A gRPC message frame: the compressed flag, the length, the payload.
fn grpc_frame(compressed: u8, payload: &[u8]) -> Bytes {
    let mut out = vec![compressed];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Sends one gRPC call with `body` (nothing, and no end of stream, if empty
/// and `open`) and returns its status and the response headers.
async fn raw_call(
    h2: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Bytes,
    extra: &[(&str, &str)],
) -> (tonic::Status, HeaderMap) {
    raw_call_with(h2, path, Some(body), extra).await
}

async fn raw_call_with(
    h2: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    body: Option<Bytes>,
    extra: &[(&str, &str)],
) -> (tonic::Status, HeaderMap) {
    let mut request = http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let mut ready = h2.clone().ready().await.unwrap();
    let (response, mut send) = ready
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    if let Some(body) = body {
        send.send_data(body, true).unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("a response")
        .unwrap();
    let (parts, mut body) = response.into_parts();
    let status = match tonic::Status::from_header_map(&parts.headers) {
        Some(status) => status,
        None => {
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = body.trailers().await.unwrap().expect("trailers");
            tonic::Status::from_header_map(&trailers).expect("a grpc-status")
        }
    };
    (status, parts.headers)
}

/// The request id a refusal carries, the same in `RequestInfo` and `x-request-id`.
fn request_id(status: &tonic::Status, headers: &HeaderMap) -> String {
    let details = status.get_error_details();
    let id = details
        .request_info()
        .unwrap_or_else(|| panic!("no RequestInfo in {status:?}"))
        .request_id
        .clone();
    assert!(!id.is_empty());
    assert_eq!(
        headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some(id.as_str()),
        "{status:?}"
    );
    id
}

#[tokio::test]
async fn requests_the_codec_cannot_read_are_the_callers_fault_with_a_request_id() {
    let limits = "[limits]\nrequest_timeout = \"1s\"\n";
    let server = ready(limits).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let jwt = server.mint("alice", json!({}));
    let auth = format!("Bearer {jwt}");
    let extra = [("authorization", auth.as_str())];
    let path = "/tokengate.v1.TokenService/IssueRtcToken";

    // Field 1 (`channel`, a string) holding bytes that are not UTF-8.
    let bad_utf8 = [0x0a, 0x02, 0xff, 0xfe];
    // A tag with wire type 7, which does not exist.
    let malformed = [0x0f, 0x01];
    let cases: [(&str, Option<Bytes>, Code); 5] = [
        (
            "malformed protobuf",
            Some(grpc_frame(0, &malformed)),
            Code::InvalidArgument,
        ),
        (
            "invalid UTF-8",
            Some(grpc_frame(0, &bad_utf8)),
            Code::InvalidArgument,
        ),
        (
            "compressed flag, no encoding",
            Some(grpc_frame(1, &[])),
            Code::InvalidArgument,
        ),
        ("no message", Some(Bytes::new()), Code::InvalidArgument),
        (
            // Over `max_message_size` (64 KiB): only the length prefix is read.
            "too large",
            Some(Bytes::from(vec![0, 0, 0x10, 0, 0])),
            Code::ResourceExhausted,
        ),
    ];
    let mut ids = Vec::new();
    for (what, body, code) in cases {
        let (status, headers) = raw_call_with(&mut h2, path, body, &extra).await;
        assert_eq!(status.code(), code, "{what}: {status:?}");
        ids.push(request_id(&status, &headers));
    }
    // The server's own deadline: the message never comes.
    let (status, headers) = raw_call_with(&mut h2, path, None, &extra).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    ids.push(request_id(&status, &headers));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every refusal has its own request id");

    // A well-formed call on the same connection is still served.
    let message = prost::Message::encode_to_vec(&pb::IssueRtcTokenRequest {
        channel: "lobby-1".into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    });
    let (status, _) = raw_call(&mut h2, path, grpc_frame(0, &message), &extra).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    server.shutdown().await;
}

/// Frames the server wrote on `tcp`: `(type, flags, stream, payload, when)`,
/// read until `until` says enough or `limit` passes.
async fn read_frames(
    tcp: &mut TcpStream,
    limit: Duration,
    mut until: impl FnMut(&[(u8, u8, u32, Vec<u8>, Instant)]) -> bool,
) -> Vec<(u8, u8, u32, Vec<u8>, Instant)> {
    let mut frames = Vec::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + limit;
    while !until(&frames) {
        let mut chunk = [0u8; 8192];
        let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await else {
            break;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push((
                buf[3],
                buf[4],
                stream,
                buf[9..9 + len].to_vec(),
                Instant::now(),
            ));
            buf.drain(..9 + len);
        }
    }
    frames
}

/// A raw HTTP/2 connection past the handshake: preface, SETTINGS, and the ACK
/// of the server's SETTINGS (its limits apply from then on).
async fn handshake(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let seen = read_frames(&mut tcp, Duration::from_secs(5), |f| {
        f.iter()
            .any(|(t, flags, ..)| *t == SETTINGS && flags & 0x1 == 0)
    })
    .await;
    assert!(seen.iter().any(|(t, ..)| *t == SETTINGS), "no SETTINGS");
    tcp.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    tcp
}

const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
/// The HTTP/2 error code REFUSED_STREAM.
const REFUSED_STREAM: u32 = 0x7;

/// There is no queue behind the per-connection limit any more: `concurrency`
/// is HTTP/2's MAX_CONCURRENT_STREAMS, so a stream beyond it is refused by
/// HTTP/2 at once (REFUSED_STREAM, which clients retry), a call's deadline
/// runs from its arrival (nothing waits before it), and a health check is
/// never queued behind token calls: on a connection at the limit it is
/// refused at once like any stream, and below it, or on another
/// connection, it is answered while the slow calls are still in flight.
#[tokio::test]
async fn streams_beyond_the_limit_are_refused_by_http2_and_nothing_queues() {
    let limits = "[limits]\nconcurrency = 4\nrequest_timeout = \"2s\"\n";
    let server = ready(limits).await;
    let token_call = grpc_request_fields("/tokengate.v1.TokenService/IssueRtcToken");
    let health_call = grpc_request_fields("/grpc.health.v1.Health/Check");

    // Four slow calls (their message never comes) fill the connection.
    let mut full = handshake(server.addr).await;
    let sent = Instant::now();
    for id in [1, 3, 5, 7] {
        full.write_all(&frame(HEADERS, END_HEADERS, id, &token_call))
            .await
            .unwrap();
    }
    // A fifth stream, and a health check, are refused by HTTP/2 at once.
    full.write_all(&frame(HEADERS, END_HEADERS, 9, &health_call))
        .await
        .unwrap();
    full.write_all(&frame(HEADERS, END_HEADERS, 11, &token_call))
        .await
        .unwrap();
    let refused = |frames: &[(u8, u8, u32, Vec<u8>, Instant)], id: u32| {
        frames.iter().find_map(|(t, _, s, payload, at)| {
            (*t == RST_STREAM
                && *s == id
                && payload.get(..4) == Some(&REFUSED_STREAM.to_be_bytes()[..]))
            .then_some(*at)
        })
    };
    let ended = |frames: &[(u8, u8, u32, Vec<u8>, Instant)], id: u32| {
        frames.iter().find_map(|(t, flags, s, _, at)| {
            ((*t == HEADERS || *t == DATA) && *s == id && flags & END_STREAM != 0).then_some(*at)
        })
    };
    let frames = read_frames(&mut full, Duration::from_secs(6), |f| {
        [1, 3, 5, 7].iter().all(|id| ended(f, *id).is_some())
    })
    .await;
    for id in [9, 11] {
        let at = refused(&frames, id).unwrap_or_else(|| panic!("stream {id} not refused"));
        assert!(
            at - sent < Duration::from_millis(1000),
            "refused after {:?}",
            at - sent
        );
    }
    // The slow calls end at their own deadline, counted from their arrival.
    for id in [1, 3, 5, 7] {
        let at = ended(&frames, id).unwrap_or_else(|| panic!("stream {id} never ended"));
        let took = at - sent;
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_millis(3500),
            "stream {id} ended after {took:?}"
        );
    }

    // Below the limit, a health check on a busy connection is answered at once.
    let mut busy = handshake(server.addr).await;
    for id in [1, 3, 5] {
        busy.write_all(&frame(HEADERS, END_HEADERS, id, &token_call))
            .await
            .unwrap();
    }
    let asked = Instant::now();
    busy.write_all(&frame(HEADERS, END_HEADERS, 7, &health_call))
        .await
        .unwrap();
    busy.write_all(&frame(DATA, END_STREAM, 7, &grpc_frame(0, &[])))
        .await
        .unwrap();
    let frames = read_frames(&mut busy, Duration::from_secs(5), |f| ended(f, 7).is_some()).await;
    let answered = ended(&frames, 7).expect("the health check was answered");
    assert!(
        answered - asked < Duration::from_millis(500),
        "health answered after {:?}",
        answered - asked
    );
    assert!(
        [1, 3, 5].iter().all(|id| ended(&frames, *id).is_none()),
        "while the slow calls were still in flight"
    );
    server.shutdown().await;
}
