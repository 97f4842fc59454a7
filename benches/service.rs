//! One gRPC round trip over loopback to the real server: `IssueRtcToken` next
//! to Envoy's ext_authz `Check`, for the same caller (an RS256 JWT) and the
//! same channel, in the same run (issue 6: Check ≤ 1.1 × IssueRtcToken).
//!
//! The server runs in process on 127.0.0.1:0 exactly as the integration tests
//! start it (`tests/support`), with a real JWKS server; the clients are tonic
//! over loopback. Both calls authenticate the JWT, ask the same gate and mint
//! a subscriber token; `Check` also carries Envoy's request attributes and
//! headers, matches a route and builds the header mutations.
//! `Check_minimal_attributes` sends only what tokengate reads, to separate
//! the cost of Envoy's request shape from tokengate's own work.
//!
//! Every figure but `IssueRtcToken_jwt_cache` verifies the JWT on every call
//! (`[jwt_cache] enabled = false`), as the README's tables were measured;
//! `IssueRtcToken_jwt_cache` is the in-process handler with the verified-JWT
//! cache answering, in the same run.
//!
//! `ForwardAuth_h1`, `ForwardAuth_h2c` and the handler `ForwardAuth` are the
//! same check as nginx's `auth_request` (or Caddy's `forward_auth`) sends it
//! to the forward-auth listener: the caller's JWT, `X-Original-Method` and
//! `X-Original-URI`, for the same route, in the same run as `Check` (issue 17:
//! a forward-auth check ≤ 1.1 × the gRPC `Check`).
//!
//! Run: `cargo bench --bench service`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The test harness, as is: the same server setup the integration tests use.
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use envoy_types::ext_authz::v3::pb::Authorization as _;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use prost::Message as _;
use prost::bytes::{Buf as _, BufMut as _};
use serde_json::json;
use support::authz::{self, Verdict, envoy_check, ext_authz_section, verdict};
use support::fixtures::TEAM_ROOMS;
use support::server::TestServer;
use tokengate::forward_auth::ForwardAuth;
use tokengate::grpc::envoy_check::EnvoyCheck;
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_server::TokenService as _;
use tokengate::grpc::service::Api;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;

const CHANNEL: &str = "team-blue-standup";
/// `[forward_auth]` on loopback as nginx's snippet uses it.
const FORWARD_AUTH: &str = "\n[forward_auth]\nenabled = true\nlisten = \"127.0.0.1:0\"\npath_prefix = \"/check\"\noriginal_request = \"x-original\"\n";
/// The verified-JWT cache off: every call verifies its RS256 JWT.
const NO_JWT_CACHE: &str = "\n[jwt_cache]\nenabled = false\n";

fn bench_service(c: &mut Criterion) {
    // One thread runs the client and the server: a call costs the work of
    // both ends, without cross-thread wake-ups whose latency depends on what
    // else the machine runs (which made two-thread runs swing by ±20%).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(async {
        let server = authz::start(
            TEAM_ROOMS,
            &format!("{}{FORWARD_AUTH}{NO_JWT_CACHE}", ext_authz_section("")),
        )
        .await;
        server.wait_ready().await;
        server
    });
    let claims = TestServer::claims("alice", json!({"teams": ["blue"], "agora_uid": 4242}));
    let jwt = server.rs256.mint(&claims);
    let (mut api, mut check) =
        runtime.block_on(async { (server.client().await, authz::client(&server).await) });
    let issue = pb::IssueRtcTokenRequest {
        channel: CHANNEL.into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    };
    let bearer = format!("Bearer {jwt}");
    let envoy = envoy_check(
        "GET",
        &format!("/rooms/{CHANNEL}/join"),
        &[("authorization", &bearer)],
    );

    // Both calls must succeed before they are timed: a fast denial is no result.
    runtime.block_on(async {
        let issued = api
            .issue_rtc_token(TestServer::authed(&jwt, issue.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(issued.issued.is_some());
        let allowed = verdict(check.check(envoy.clone()).await.unwrap().into_inner());
        assert!(allowed.set_header("x-agora-token").is_some(), "{allowed:?}");
        assert!(matches!(allowed, Verdict::Ok { .. }));
    });

    // The requests are built outside the timed routine: Envoy serializes its
    // own structures, so cloning ours would only measure the benchmark.
    let mut group = c.benchmark_group("service_rs256");
    group.bench_function("IssueRtcToken", |b| {
        b.iter_batched(
            || TestServer::authed(&jwt, issue.clone()),
            |request| black_box(runtime.block_on(api.issue_rtc_token(request)).unwrap()),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("Check", |b| {
        b.iter_batched(
            || envoy.clone(),
            |request| black_box(runtime.block_on(check.check(request)).unwrap()),
            BatchSize::SmallInput,
        );
    });
    // The same check with only what tokengate reads (method, path, the JWT
    // header): the difference to "Check" is the cost of carrying Envoy's full
    // request attributes, which is the proxy's choice, not tokengate's work.
    let minimal = minimal_check(&envoy);
    group.bench_function("Check_minimal_attributes", |b| {
        b.iter_batched(
            || minimal.clone(),
            |request| black_box(runtime.block_on(check.check(request)).unwrap()),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // The same round trips with each request encoded once, up front: the
    // caller's serialization is the proxy's (or backend's) work, not
    // tokengate's, and Envoy's request is several times larger. What remains
    // is the transport, tokengate's decoding of the request, its work, and the
    // reply on the wire (received as bytes, not decoded).
    let channel = runtime.block_on(server.channel());
    let issue_bytes = issue.encode_to_vec();
    let check_bytes = envoy.encode_to_vec();
    let mut group = c.benchmark_group("service_rs256_preencoded");
    group.bench_function("IssueRtcToken", |b| {
        b.iter_batched(
            || TestServer::authed(&jwt, issue_bytes.clone()),
            |request| black_box(runtime.block_on(raw_unary(&channel, ISSUE_PATH, request))),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("Check", |b| {
        b.iter_batched(
            || tonic::Request::new(check_bytes.clone()),
            |request| black_box(runtime.block_on(raw_unary(&channel, CHECK_PATH, request))),
            BatchSize::SmallInput,
        );
    });
    // The forward-auth check of the same request as nginx sends it: over
    // HTTP/1.1 on one kept-alive connection (nginx's `keepalive` upstream),
    // and over h2c on one HTTP/2 connection (as the gRPC calls above).
    let forward_auth = server
        .forward_auth
        .expect("the forward-auth listener is bound");
    let h1_request = format!(
        "GET /check HTTP/1.1\r\nhost: {forward_auth}\r\nx-original-method: GET\r\n\
         x-original-uri: /rooms/{CHANNEL}/join\r\nauthorization: {bearer}\r\n\r\n"
    )
    .into_bytes();
    let mut h1 = runtime.block_on(H1::connect(forward_auth));
    let mut h2c = runtime.block_on(H2c::connect(forward_auth));
    let h2c_request = || {
        http::Request::get(format!("http://{forward_auth}/check"))
            .header("x-original-method", "GET")
            .header("x-original-uri", format!("/rooms/{CHANNEL}/join"))
            .header("authorization", &bearer)
            .body(())
            .unwrap()
    };
    runtime.block_on(async {
        let head = h1.round_trip(&h1_request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("x-agora-token: 007"), "{head}");
        let answer = h2c.round_trip(h2c_request()).await;
        assert_eq!(answer.status(), 200);
        assert!(answer.headers().contains_key("x-agora-token"));
    });
    group.bench_function("ForwardAuth_h1", |b| {
        b.iter(|| black_box(runtime.block_on(h1.round_trip(&h1_request)).len()));
    });
    group.bench_function("ForwardAuth_h2c", |b| {
        b.iter_batched(
            h2c_request,
            |request| black_box(runtime.block_on(h2c.round_trip(request))),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // The same two calls straight into the handlers, in process: tokengate's
    // own work per call (authenticate, route, decide, build, reply), without
    // the transport, whose cost grows with Envoy's much larger request (its
    // attributes and the JWT travel in the body, where IssueRtcToken's JWT
    // rides in an HPACK-indexed header).
    let text = format!(
        "{}\n{}{NO_JWT_CACHE}",
        support::server::config_text(&server.jwks.jwks_url(), TEAM_ROOMS),
        ext_authz_section("")
    ) + FORWARD_AUTH;
    let (api_handler, check_handler, forward_auth_handler, metered_handler, cached_handler) =
        runtime.block_on(async {
            let config = tokengate::config::load(&text, &support::server::test_env)
                .unwrap()
                .into_parts();
            assert!(!config.jwt_cache.enabled());
            let settings = config.forward_auth.clone().unwrap();
            let cached = std::sync::Arc::new(
                tokengate::identity::Authenticator::start_with_cache(
                    config.issuers.clone(),
                    &tokengate::identity::VerifiedCacheSettings::default(),
                )
                .unwrap(),
            );
            let authenticator = std::sync::Arc::new(
                tokengate::identity::Authenticator::start_with_cache(
                    config.issuers,
                    &config.jwt_cache,
                )
                .unwrap(),
            );
            authenticator.wait_ready().await;
            cached.wait_ready().await;
            let gate =
                std::sync::Arc::new(tokengate::gate::Gate::new(config.projects, config.policy));
            let routes = std::sync::Arc::new(config.ext_authz.unwrap());
            let pipeline = std::sync::Arc::new(tokengate::pipeline::Pipeline::new(
                std::sync::Arc::clone(&gate),
                std::sync::Arc::clone(&authenticator),
                Some(routes),
            ));
            // The same pipeline counting into a registry, as `serve` runs it.
            let metrics = tokengate::metrics::Metrics::new(
                &tokengate::metrics::BuildInfo {
                    version: "bench",
                    git_sha: "bench",
                    rustc: "bench",
                },
                std::sync::Arc::new(NoIssuers),
            );
            let metered = std::sync::Arc::new(
                tokengate::pipeline::Pipeline::new(
                    std::sync::Arc::clone(&gate),
                    authenticator,
                    None,
                )
                .with_metrics(metrics),
            );
            let cached =
                std::sync::Arc::new(tokengate::pipeline::Pipeline::new(gate, cached, None));
            (
                Api::new(std::sync::Arc::clone(&pipeline)),
                EnvoyCheck::new(std::sync::Arc::clone(&pipeline)),
                ForwardAuth::new(pipeline, settings),
                Api::new(metered),
                Api::new(cached),
            )
        });
    let mut group = c.benchmark_group("handler_rs256");
    group.bench_function("IssueRtcToken", |b| {
        b.iter_batched(
            || TestServer::authed(&jwt, issue.clone()),
            |request| {
                black_box(
                    runtime
                        .block_on(api_handler.issue_rtc_token(request))
                        .unwrap(),
                )
            },
            BatchSize::SmallInput,
        );
    });
    // Metrics on vs off, in the same run: the pipeline's per-call counting.
    group.bench_function("IssueRtcToken_metrics", |b| {
        b.iter_batched(
            || TestServer::authed(&jwt, issue.clone()),
            |request| {
                black_box(
                    runtime
                        .block_on(metered_handler.issue_rtc_token(request))
                        .unwrap(),
                )
            },
            BatchSize::SmallInput,
        );
    });
    // The verified-JWT cache answering (the JWT was verified once, above or
    // at the first iteration), in the same run.
    group.bench_function("IssueRtcToken_jwt_cache", |b| {
        b.iter_batched(
            || TestServer::authed(&jwt, issue.clone()),
            |request| {
                black_box(
                    runtime
                        .block_on(cached_handler.issue_rtc_token(request))
                        .unwrap(),
                )
            },
            BatchSize::SmallInput,
        );
    });
    group.bench_function("Check", |b| {
        b.iter_batched(
            || tonic::Request::new(envoy.clone()),
            |request| black_box(runtime.block_on(check_handler.check(request)).unwrap()),
            BatchSize::SmallInput,
        );
    });
    // The forward-auth listener's handler for the same check: the headers
    // as hyper hands them over (parsed), the proxy's address, the answer.
    let mut fa_headers = http::HeaderMap::new();
    fa_headers.insert("host", forward_auth.to_string().parse().unwrap());
    fa_headers.insert("x-original-method", "GET".parse().unwrap());
    fa_headers.insert(
        "x-original-uri",
        format!("/rooms/{CHANNEL}/join").parse().unwrap(),
    );
    fa_headers.insert("authorization", bearer.parse().unwrap());
    let peer = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
    let answer = runtime.block_on(forward_auth_handler.answer("GET", "/check", &fa_headers, peer));
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(answer.headers().contains_key("x-agora-token"));
    group.bench_function("ForwardAuth", |b| {
        b.iter(|| {
            black_box(runtime.block_on(forward_auth_handler.answer(
                "GET",
                "/check",
                &fa_headers,
                peer,
            )))
        });
    });
    group.finish();
    runtime.block_on(server.shutdown());
}

/// No issuers to report: the bench measures the request path, not scrapes.
#[derive(Debug)]
struct NoIssuers;

impl tokengate::metrics::IssuerSnapshot for NoIssuers {
    fn issuers(&self) -> Vec<tokengate::metrics::IssuerState> {
        Vec::new()
    }
}

const ISSUE_PATH: &str = "/tokengate.v1.TokenService/IssueRtcToken";
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One unary call with an already-encoded request; the reply stays bytes.
async fn raw_unary(
    channel: &Channel,
    path: &'static str,
    request: tonic::Request<Vec<u8>>,
) -> Vec<u8> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let reply = grpc
        .unary(request, path, RawCodec)
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.is_empty());
    reply
}

/// A codec that passes protobuf bytes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

/// `full` with only `attributes.request.http.{method, path}` and the JWT header.
fn minimal_check(full: &CheckRequest) -> CheckRequest {
    let http = full
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .unwrap();
    let headers = http
        .headers
        .iter()
        .filter(|(k, _)| *k == "authorization")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: http.method.clone(),
                    path: http.path.clone(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// One kept-alive HTTP/1.1 connection to the forward-auth listener.
struct H1 {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl H1 {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and reads the whole answer (its head and its
    /// `content-length` body); returns the head.
    async fn round_trip(&mut self, request: &[u8]) -> String {
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the forward-auth listener closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end]).unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if self.buf.len() >= end + 4 + length {
                return head.to_owned();
            }
        }
    }
}

/// One HTTP/2 (prior knowledge) connection to the forward-auth listener.
struct H2c {
    send: h2::client::SendRequest<prost::bytes::Bytes>,
}

impl H2c {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, connection) = h2::client::handshake(stream).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send }
    }

    /// Sends `request` (no body) and reads the answer's head and body.
    async fn round_trip(&mut self, request: http::Request<()>) -> http::Response<()> {
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let (head, mut body) = response.await.unwrap().into_parts();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            body.flow_control().release_capacity(chunk.len()).unwrap();
        }
        http::Response::from_parts(head, ())
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .measurement_time(std::time::Duration::from_secs(5));
    targets = bench_service
}
criterion_main!(benches);
