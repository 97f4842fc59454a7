//! Forward authentication over HTTP against the real server on 127.0.0.1:0,
//! with requests written byte for byte on a TCP socket (so duplicate
//! headers, dot segments and oversized heads reach the server as sent), and
//! answers compared with the gRPC `Check` of the same request.
//!
//! The proxies themselves (nginx, Caddy) are in `forward_auth_proxies.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support;
use support::authz::{self, Verdict, envoy_check, ext_authz_section, verdict};
use support::fixtures::ROOMS_AND_WEBINARS;
use support::server::{APP_ID, PRIMARY_CERT, TestServer, config_text};
use tokengate::token::services::ServiceKind;
use tokengate::token::{AppCertificate, v007};

/// A case's request headers `(name, value)`.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// Every header tokengate owns upstream (the defaults).
const OUR_HEADERS: [&str; 5] = [
    "x-agora-token",
    "x-agora-uid",
    "x-agora-account",
    "x-agora-expires-at",
    "x-agora-rule",
];

/// `[forward_auth]` on loopback, reading the original request per `mode`.
fn forward_auth_section(mode: &str, extra: &str) -> String {
    format!(
        "\n[forward_auth]\nenabled = true\nlisten = \"127.0.0.1:0\"\npath_prefix = \"/check\"\noriginal_request = \"{mode}\"\n{extra}\n"
    )
}

/// A server with the ext_authz routes and forward-auth in `mode`, `limits` before them.
async fn start_with(mode: &str, limits: &str, extra: &str) -> (TestServer, SocketAddr) {
    let section = format!(
        "{}{}",
        ext_authz_section(""),
        forward_auth_section(mode, extra)
    );
    let server = authz::start(&format!("{ROOMS_AND_WEBINARS}\n{limits}"), &section).await;
    server.wait_ready().await;
    let addr = server
        .forward_auth
        .expect("the forward-auth listener is bound");
    (server, addr)
}

async fn start(mode: &str) -> (TestServer, SocketAddr) {
    start_with(mode, "", "").await
}

fn alice(server: &TestServer) -> String {
    format!(
        "Bearer {}",
        server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}))
    )
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// Names lowercased, in the order sent.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The status and the JSON body's `error`.
    fn denial(&self) -> (u16, String) {
        let json: Value = serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is JSON ({e}): {:?}", self.body));
        let error = json["error"].as_str().expect("an error string").to_owned();
        assert_eq!(json.as_object().unwrap().len(), 1, "{}", self.body);
        (self.status, error)
    }
}

/// Sends `head` (the request line and header lines, without the blank
/// line) on a fresh connection that closes after the answer.
async fn send_raw(addr: SocketAddr, head: &str) -> Reply {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("{head}\r\nHost: tokengate\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut bytes))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    parse_reply(&bytes)
}

fn parse_reply(bytes: &[u8]) -> Reply {
    let text = String::from_utf8(bytes.to_vec()).expect("an ASCII answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {status_line}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A check of `method target` on the forward-auth port with `headers`.
async fn check(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut head = format!("{method} {target} HTTP/1.1");
    for (name, value) in headers {
        head.push_str(&format!("\r\n{name}: {value}"));
    }
    send_raw(addr, &head).await
}

/// The nginx form of a check of `method path`: `GET /check` with the
/// original request in `X-Original-Method` and `X-Original-URI`.
async fn nginx_check(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut all = vec![("X-Original-Method", method), ("X-Original-URI", path)];
    all.extend_from_slice(headers);
    check(addr, "GET", "/check", &all).await
}

/// Asserts an allowed answer carries a token for `channel` bound to uid
/// `uid` by `rule`, as a publisher or not, and nothing the client sent.
fn assert_allowed(label: &str, reply: &Reply, channel: &str, uid: u32, publisher: bool) {
    assert_eq!(reply.status, 200, "{label}: {reply:?}");
    let token = reply.header("x-agora-token").expect("a token header");
    let parsed = v007::parse(token).unwrap_or_else(|e| panic!("{label}: {e:?}"));
    assert!(
        parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()),
        "{label}: the token verifies with the project certificate"
    );
    assert_eq!(parsed.token.app_id, APP_ID.as_bytes(), "{label}");
    let service = &parsed.token.services[0];
    let ServiceKind::Rtc {
        channel_name,
        uid: token_uid,
    } = &service.kind
    else {
        panic!("{label}: not an RTC token: {:?}", service.kind);
    };
    assert_eq!(channel_name, channel.as_bytes(), "{label}");
    assert_eq!(token_uid, uid.to_string().as_bytes(), "{label}");
    assert_eq!(
        service.privileges.contains_key(&2),
        publisher,
        "{label}: publish privileges follow the role"
    );
    assert_eq!(
        reply.header("x-agora-uid"),
        Some(uid.to_string().as_str()),
        "{label}"
    );
    assert_eq!(reply.header("x-agora-account"), None, "{label}");
    assert_eq!(
        reply.header("x-agora-expires-at"),
        Some(parsed.token.expires_at().to_string().as_str()),
        "{label}"
    );
    assert_eq!(reply.header("x-agora-rule"), Some("team rooms"), "{label}");
    assert!(reply.header("x-request-id").is_some(), "{label}");
}

#[tokio::test]
async fn each_proxy_form_of_the_original_request_gets_the_token_headers() {
    for mode in ["x-original", "x-forwarded", "path"] {
        let (server, addr) = start(mode).await;
        let jwt = alice(&server);
        let auth = ("authorization", jwt.as_str());
        // The client's own copies of our headers ride along; none may come
        // back (x-agora-uid and x-agora-account are requests the rules judge).
        let spoofed = [
            ("x-agora-token", "007spoofed"),
            ("x-agora-rule", "admin"),
            ("x-agora-expires-at", "4102444800"),
        ];
        let cases = [
            ("GET", "/rooms/team-blue-standup/join", false),
            ("POST", "/rooms/team-blue-standup/join?lang=en", false),
            ("PUT", "/stage/team-blue-demo", true),
        ];
        for (method, path, publisher) in cases {
            let reply = match mode {
                "x-original" => {
                    let mut headers = vec![
                        ("X-Original-Method", method),
                        ("X-Original-URI", path),
                        auth,
                    ];
                    headers.extend(spoofed);
                    check(addr, "GET", "/check", &headers).await
                }
                "x-forwarded" => {
                    let mut headers = vec![
                        ("X-Forwarded-Method", method),
                        ("X-Forwarded-Uri", path),
                        ("X-Forwarded-Host", "rooms.example.com"),
                        ("X-Forwarded-Proto", "https"),
                        auth,
                    ];
                    headers.extend(spoofed);
                    check(addr, "GET", "/check/", &headers).await
                }
                _ => {
                    // Envoy appends the original path to `path_prefix` and keeps the method.
                    let mut headers = vec![auth];
                    headers.extend(spoofed);
                    check(addr, method, &format!("/check{path}"), &headers).await
                }
            };
            let label = format!("{mode}: {method} {path}");
            let channel = path
                .trim_start_matches("/rooms/")
                .trim_start_matches("/stage/")
                .split(['/', '?'])
                .next()
                .unwrap();
            assert_allowed(&label, &reply, channel, 4242, publisher);
            assert_ne!(reply.header("x-agora-token"), Some("007spoofed"), "{label}");
            assert!(reply.body.is_empty(), "{label}: {:?}", reply.body);
            // Envoy (path mode) is told to drop a client's own account
            // header beside the uid grant; the others cannot act on it.
            let removals = (mode == "path").then_some("x-agora-account");
            assert_eq!(
                reply.header("x-envoy-auth-headers-to-remove"),
                removals,
                "{label}"
            );
        }
        server.shutdown().await;
    }
}

#[tokio::test]
async fn each_mode_trusts_only_its_own_headers() {
    // Behind nginx, an X-Forwarded-Uri is whatever the client typed: it
    // never names the request, and a check without nginx's own headers is
    // refused naming the header it lacks.
    let (server, addr) = start("x-original").await;
    let jwt = alice(&server);
    let reply = check(
        addr,
        "GET",
        "/check",
        &[
            ("X-Forwarded-Method", "GET"),
            ("X-Forwarded-Uri", "/rooms/team-blue-standup/join"),
            ("authorization", &jwt),
        ],
    )
    .await;
    assert_eq!(reply.denial(), (400, "invalid_request".to_owned()));
    assert_eq!(reply.header("x-tokengate-error"), Some("invalid_request"));
    server.shutdown().await;
    // In `path` mode the headers mean nothing either: the check's own path
    // is the request, here the pass-through route.
    let (server, addr) = start("path").await;
    let reply = check(
        addr,
        "GET",
        "/check/public/x",
        &[
            ("X-Original-URI", "/rooms/team-red-standup/join"),
            ("X-Forwarded-Uri", "/rooms/team-red-standup/join"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-agora-token"), None);
    server.shutdown().await;
}

#[tokio::test]
async fn denials_match_the_grpc_check_of_the_same_request() {
    let (server, addr) = start("x-original").await;
    let alice = alice(&server);
    let mut expired = TestServer::claims("alice", json!({"teams": ["blue"]}));
    expired["exp"] = json!(support::unix_now() - 3600);
    expired["iat"] = json!(support::unix_now() - 7200);
    let expired = format!("Bearer {}", server.es256.mint(&expired));
    let mallory = format!(
        "Bearer {}",
        server.mint("mallory", json!({"teams": ["blue"]}))
    );
    let two_jwts = format!("{alice}, {mallory}");
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Headers<'_>, u16, &str)> = vec![
        ("GET", "/rooms/team-blue-standup/join", vec![], 401, "missing"),
        ("GET", "/rooms/team-blue-standup/join", vec![("authorization", &expired)], 401, "expired"),
        ("GET", "/rooms/team-blue-standup/join", vec![("authorization", "Bearer not.a.jwt")], 401, "malformed"),
        ("GET", "/rooms/team-blue-standup/join", vec![("authorization", &two_jwts)], 401, "malformed"),
        ("GET", "/rooms/team-red-standup/join", vec![("authorization", &alice)], 403, "no_matching_rule"),
        ("GET", "/rooms/webinar-launch/join", vec![("authorization", &alice), ("x-agora-role", "publisher")], 403, "role_not_allowed"),
        ("GET", "/admin", vec![("authorization", &alice)], 403, "no_matching_route"),
        ("DELETE", "/rooms/team-blue-standup/join", vec![("authorization", &alice)], 403, "no_matching_route"),
        ("GET", "/rooms/caf%C3%A9/join", vec![("authorization", &alice)], 400, "invalid_request"),
        ("GET", "/rooms/team-blue-a/join", vec![("authorization", &alice), ("x-agora-role", "admin")], 400, "invalid_request"),
        // Paths an upstream may normalise onto a token route are refused before any route.
        ("GET", "/public/../rooms/team-blue-a/join", vec![("authorization", &alice)], 400, "invalid_request"),
        ("GET", "/public/%2e%2e/rooms/team-blue-a/join", vec![("authorization", &alice)], 400, "invalid_request"),
        ("GET", "/public/..%2Frooms/team-blue-a/join", vec![("authorization", &alice)], 400, "invalid_request"),
        ("GET", "/rooms//join", vec![("authorization", &alice)], 400, "invalid_request"),
    ];
    let mut grpc = authz::client(&server).await;
    for (method, path, headers, status, reason) in &cases {
        let label = format!(
            "{method} {path} {:?}",
            headers.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        let reply = nginx_check(addr, method, path, headers).await;
        assert_eq!(reply.denial(), (*status, (*reason).to_owned()), "{label}");
        assert_eq!(reply.header("x-tokengate-error"), Some(*reason), "{label}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{label}"
        );
        for name in OUR_HEADERS {
            assert_eq!(reply.header(name), None, "{label}: {name} on a denial");
        }
        let everything = format!("{reply:?}");
        assert!(
            !everything.contains(alice.trim_start_matches("Bearer ")),
            "{label}: the JWT never comes back"
        );
        // The gRPC Check of the same request answers the same denial with
        // the same headers (but the request id).
        let lower: Vec<(String, &str)> = headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), *v))
            .collect();
        let lower: Vec<(&str, &str)> = lower.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        let got = verdict(
            grpc.check(envoy_check(method, path, &lower))
                .await
                .unwrap()
                .into_inner(),
        );
        let Verdict::Denied {
            http_status,
            headers: grpc_headers,
            body,
            ..
        } = &got
        else {
            panic!("{label}: the gRPC Check allowed: {got:?}");
        };
        assert_eq!(i32::from(reply.status), *http_status, "{label}");
        assert_eq!(&reply.body, body, "{label}");
        let comparable = |headers: &[(String, String)]| {
            let mut kept: Vec<(String, String)> = headers
                .iter()
                .filter(|(n, _)| {
                    !matches!(
                        n.as_str(),
                        "x-request-id" | "content-length" | "date" | "connection"
                    )
                })
                .cloned()
                .collect();
            kept.sort();
            kept
        };
        assert_eq!(
            comparable(&reply.headers),
            comparable(grpc_headers),
            "{label}: the same headers as Envoy's denial"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn pass_through_routes_answer_200_with_none_of_our_headers() {
    let (server, addr) = start("x-original").await;
    for (path, headers) in [
        ("/public/docs/index.html", vec![]),
        (
            "/public",
            vec![("x-agora-token", "007forged"), ("x-agora-uid", "1")],
        ),
        (
            "/public/feedback?from=app",
            vec![("authorization", "Bearer junk")],
        ),
    ] {
        let reply = nginx_check(addr, "GET", path, &headers).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        for name in OUR_HEADERS {
            assert_eq!(reply.header(name), None, "{path}: {name}");
        }
        assert!(reply.header("x-request-id").is_some(), "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_original_request_is_read_strictly_naming_the_header() {
    let (server, addr) = start("x-original").await;
    let alice = alice(&server);
    let room = "/rooms/team-blue-standup/join";
    #[rustfmt::skip]
    let cases: Vec<(&str, Headers<'_>)> = vec![
        ("no X-Original-URI", vec![("X-Original-Method", "GET")]),
        ("no X-Original-Method", vec![("X-Original-URI", room)]),
        ("two URIs", vec![("X-Original-Method", "GET"), ("X-Original-URI", "/public/x"), ("X-Original-URI", room)]),
        ("two methods", vec![("X-Original-Method", "GET"), ("X-Original-Method", "DELETE"), ("X-Original-URI", room)]),
        ("a method that is not a token", vec![("X-Original-Method", "G(E)T"), ("X-Original-URI", room)]),
        ("an absolute URI", vec![("X-Original-Method", "GET"), ("X-Original-URI", "http://evil/rooms/x/join")]),
        ("a relative path", vec![("X-Original-Method", "GET"), ("X-Original-URI", "rooms/x/join")]),
    ];
    for (label, mut headers) in cases {
        headers.push(("authorization", &alice));
        let reply = check(addr, "GET", "/check", &headers).await;
        assert_eq!(
            reply.denial(),
            (400, "invalid_request".to_owned()),
            "{label}: {reply:?}"
        );
    }
    // Two JWT headers (not merged) are two credentials, as on the gRPC port.
    let mallory = format!("Bearer {}", server.mint("mallory", json!({})));
    let reply = nginx_check(
        addr,
        "GET",
        room,
        &[("authorization", &alice), ("authorization", &mallory)],
    )
    .await;
    assert_eq!(reply.denial(), (401, "malformed".to_owned()), "{reply:?}");
    // Outside the prefix nothing is checked: a 404, not a decision.
    for target in ["/", "/checks", "/other/check", "/CHECK"] {
        let reply = nginx_check(addr, "GET", room, &[("authorization", &alice)]).await;
        assert_eq!(reply.status, 200, "the prefix itself is a check");
        let reply = check(
            addr,
            "GET",
            target,
            &[
                ("X-Original-Method", "GET"),
                ("X-Original-URI", room),
                ("authorization", &alice),
            ],
        )
        .await;
        assert_eq!(reply.status, 404, "{target}: {reply:?}");
        assert_eq!(reply.header("x-agora-token"), None, "{target}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn path_mode_refuses_dot_segments_and_encoded_slashes_in_its_own_path() {
    let (server, addr) = start("path").await;
    for target in [
        "/check/public/../rooms/team-blue-a/join",
        "/check/public/%2e%2e/rooms/team-blue-a/join",
        "/check/public/..%2Frooms/team-blue-a/join",
        "/check/public//../rooms/team-blue-a/join",
    ] {
        let reply = check(addr, "GET", target, &[]).await;
        assert_eq!(
            reply.denial(),
            (400, "invalid_request".to_owned()),
            "{target}: {reply:?}"
        );
    }
    // The prefix itself is the path `/`, which no route serves.
    let reply = check(addr, "GET", "/check", &[]).await;
    assert_eq!(reply.denial(), (403, "no_matching_route".to_owned()));
    server.shutdown().await;
}

#[tokio::test]
async fn envoy_may_speak_h2c_to_the_forward_auth_port() {
    let (server, addr) = start("path").await;
    let jwt = alice(&server);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/check/rooms/team-blue-standup/join"))
        .header("authorization", &jwt)
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let token = response.headers()["x-agora-token"].to_str().unwrap();
    assert!(
        v007::parse(token)
            .unwrap()
            .verify(&AppCertificate::parse(PRIMARY_CERT).unwrap())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limited_checks_are_429_with_retry_after() {
    let limit = "[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1/30s\"\n";
    let (server, addr) = start_with("x-original", limit, "").await;
    let jwt = alice(&server);
    let room = "/rooms/team-blue-standup/join";
    let first = nginx_check(addr, "GET", room, &[("authorization", &jwt)]).await;
    assert_eq!(first.status, 200, "{first:?}");
    let second = nginx_check(addr, "GET", room, &[("authorization", &jwt)]).await;
    assert_eq!(second.denial(), (429, "rate_limited".to_owned()));
    let retry: u64 = second
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    server.shutdown().await;
}

#[tokio::test]
async fn keys_never_loaded_is_a_503_with_retry_after() {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    jwks.fail_next(1_000_000, 503);
    let text = format!(
        "{}\n{}{}",
        config_text(&jwks.jwks_url(), ROOMS_AND_WEBINARS),
        ext_authz_section(""),
        forward_auth_section("x-original", "")
    );
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    let addr = server.forward_auth.unwrap();
    let jwt = alice(&server);
    let reply = nginx_check(
        addr,
        "GET",
        "/rooms/team-blue-standup/join",
        &[("authorization", &jwt)],
    )
    .await;
    assert_eq!(reply.denial(), (503, "keys_unavailable".to_owned()));
    assert_eq!(reply.header("retry-after"), Some("1"));
    // A pass-through route needs no keys.
    let reply = nginx_check(addr, "GET", "/public/x", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_heads_are_431_and_slow_heads_are_cut_off() {
    let limits = "[limits]\nmax_header_list_size = 16384\nheader_read_timeout = \"1s\"\n";
    let section = format!(
        "{}{}",
        ext_authz_section(""),
        forward_auth_section("x-original", "")
    );
    let server = authz::start(&format!("{ROOMS_AND_WEBINARS}\n{limits}"), &section).await;
    server.wait_ready().await;
    let addr = server.forward_auth.unwrap();
    let big = "a".repeat(40 * 1024);
    let reply = check(addr, "GET", "/check", &[("x-padding", &big)]).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    // A flood of tiny headers is cut short too.
    let many: Vec<(String, String)> = (0..300).map(|i| (format!("x-h{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply = check(addr, "GET", "/check", &many).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    // Half a head, then nothing: closed after header_read_timeout (well within 6 s).
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /check HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(6), slow.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a slow head stayed open");
    // A well-formed check still answers.
    let reply = nginx_check(addr, "GET", "/public/x", &[]).await;
    assert_eq!(reply.status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let (server, addr) = start_with(
        "x-original",
        "[limits]\nheader_read_timeout = \"10s\"\n",
        "max_connections = 2",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The held connections are accepted before the next one is refused:
    // retry the probe, bounded, while the accept loop catches up.
    let mut refused = false;
    for _ in 0..20 {
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut sink = Vec::new();
        if tokio::time::timeout(Duration::from_millis(500), over.read_to_end(&mut sink))
            .await
            .is_ok()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a connection over the cap of 2 stayed open");
    drop(held.pop());
    let mut served = false;
    for _ in 0..40 {
        let attempt = tokio::time::timeout(
            Duration::from_secs(2),
            nginx_check(addr, "GET", "/public/x", &[]),
        )
        .await;
        if matches!(attempt, Ok(Reply { status: 200, .. })) {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "nothing served after a slot was freed");
    server.shutdown().await;
}

#[tokio::test]
async fn checks_are_counted_apart_from_envoys_and_audited() {
    let (server, addr) = start("x-original").await;
    let jwt = alice(&server);
    for _ in 0..2 {
        let reply = nginx_check(
            addr,
            "GET",
            "/rooms/team-blue-standup/join",
            &[("authorization", &jwt)],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    let reply = nginx_check(
        addr,
        "GET",
        "/rooms/team-red-x/join",
        &[("authorization", &jwt)],
    )
    .await;
    assert_eq!(reply.status, 403);
    let mut grpc = authz::client(&server).await;
    let got = verdict(
        grpc.check(envoy_check(
            "GET",
            "/rooms/team-blue-standup/join",
            &[("authorization", &jwt)],
        ))
        .await
        .unwrap()
        .into_inner(),
    );
    assert!(matches!(got, Verdict::Ok { .. }));
    let text = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"tokengate_ext_authz_checks_total{outcome="allowed",route="/rooms/{channel}/join",via="forward_auth"} 2"#,
        r#"tokengate_ext_authz_checks_total{outcome="allowed",route="/rooms/{channel}/join",via="ext_authz"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("tokengate_ext_authz_checks_total{")
                && l.contains(r#"via="forward_auth""#)
                && l.contains("denied")),
        "the refusal is counted:\n{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_without_forward_auth_binds_no_such_port() {
    let server = authz::start(ROOMS_AND_WEBINARS, &ext_authz_section("")).await;
    assert_eq!(server.forward_auth, None);
    server.shutdown().await;
}
