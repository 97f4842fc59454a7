//! Envoy ext_authz (`envoy.service.auth.v3.Authorization/Check`) against the
//! real server on 127.0.0.1:0, with `CheckRequest`s shaped as Envoy sends
//! them, a tonic client from `envoy-types`, and grpcurl through reflection.

use crate::support;

use serde_json::{Value, json};
use support::TestKey;
use support::authz::{
    self, OVERWRITE_IF_EXISTS_OR_ADD, Verdict, envoy_check, ext_authz_section, verdict,
};
use support::fixtures::ROOMS_AND_WEBINARS;
use support::server::{APP_ID, PRIMARY_CERT, TestServer, config_text};
use support::tools::grpcurl_plaintext;
use tokengate::token::services::ServiceKind;
use tokengate::token::{AppCertificate, v007};
use tonic::Code;

/// A request header `(name, value)`, and a case's headers.
type Header<'a> = (&'a str, &'a str);
type Headers<'a> = Vec<Header<'a>>;
/// Allowed (as a publisher or not), or denied with an HTTP status and reason.
type Outcome = Result<bool, (i32, &'static str)>;

/// Every header tokengate owns upstream (the defaults).
const OUR_HEADERS: [&str; 5] = [
    "x-agora-token",
    "x-agora-uid",
    "x-agora-account",
    "x-agora-expires-at",
    "x-agora-rule",
];

/// The RTC privileges: join, publish audio, video, data.
const JOIN: u16 = 1;
const PUBLISH_AUDIO: u16 = 2;

const CALLS_ALL_THE_WAY: &str = "/calls/abc";

async fn start() -> TestServer {
    let server = authz::start(ROOMS_AND_WEBINARS, &ext_authz_section("")).await;
    server.wait_ready().await;
    server
}

fn alice(server: &TestServer) -> String {
    server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}))
}

async fn check(server: &TestServer, method: &str, path: &str, headers: &[(&str, &str)]) -> Verdict {
    let mut client = authz::client(server).await;
    let response = client
        .check(envoy_check(method, path, headers))
        .await
        .unwrap_or_else(|status| panic!("{method} {path}: {status:?}"))
        .into_inner();
    verdict(response)
}

/// What an allowed check must put upstream.
struct Allowed {
    channel: &'static str,
    identity: Identity,
    rule: &'static str,
    publisher: bool,
    ttl: u32,
}

enum Identity {
    Uid(u32),
    Account(&'static str),
}

/// Asserts the OK verdict sets exactly what `expected` says, and that the token verifies.
fn assert_allowed(label: &str, got: &Verdict, expected: &Allowed) {
    let Verdict::Ok { set, removed } = got else {
        panic!("{label}: expected OK, got {got:?}");
    };
    for (name, _, action) in set {
        assert_eq!(
            *action, OVERWRITE_IF_EXISTS_OR_ADD,
            "{label}: {name} must overwrite a client copy"
        );
    }
    let (token, _) = got.set_header("x-agora-token").expect("token header");
    let (expires_at, _) = got.set_header("x-agora-expires-at").expect("expires-at");
    let (rule, _) = got.set_header("x-agora-rule").expect("rule header");
    assert_eq!(rule, expected.rule, "{label}");
    let parsed = v007::parse(token).unwrap();
    assert!(
        parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()),
        "{label}: the token verifies with the project certificate"
    );
    assert_eq!(parsed.token.app_id, APP_ID.as_bytes(), "{label}");
    assert_eq!(parsed.token.expire, expected.ttl, "{label}");
    assert_eq!(
        expires_at,
        parsed.token.expires_at().to_string(),
        "{label}: expires-at is the token's expiry"
    );
    let service = &parsed.token.services[0];
    let ServiceKind::Rtc { channel_name, uid } = &service.kind else {
        panic!("{label}: not an RTC token: {:?}", service.kind);
    };
    assert_eq!(channel_name, expected.channel.as_bytes(), "{label}");
    assert!(service.privileges.contains_key(&JOIN), "{label}: join");
    assert_eq!(
        service.privileges.contains_key(&PUBLISH_AUDIO),
        expected.publisher,
        "{label}: publish privileges follow the role"
    );
    match expected.identity {
        Identity::Uid(n) => {
            assert_eq!(uid, n.to_string().as_bytes(), "{label}");
            assert_eq!(got.set_header("x-agora-uid").unwrap().0, n.to_string());
            assert_eq!(got.set_header("x-agora-account"), None, "{label}");
            assert!(removed.contains(&"x-agora-account".to_owned()), "{label}");
        }
        Identity::Account(account) => {
            assert_eq!(uid, account.as_bytes(), "{label}");
            assert_eq!(got.set_header("x-agora-account").unwrap().0, account);
            assert_eq!(got.set_header("x-agora-uid"), None, "{label}");
            assert!(removed.contains(&"x-agora-uid".to_owned()), "{label}");
        }
    }
    assert_eq!(
        set.len(),
        4,
        "{label}: token, identity, expires-at, rule: {set:?}"
    );
    assert!(
        !removed.contains(&"authorization".to_owned()),
        "{label}: the JWT header is kept by default"
    );
}

#[tokio::test]
async fn allowed_requests_get_the_token_and_identity_headers() {
    let server = start().await;
    let alice = format!("Bearer {}", alice(&server));
    let bob = format!("Bearer {}", server.mint("bob", json!({})));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Headers<'_>, Allowed)> = vec![
        ("GET", "/rooms/team-blue-standup/join", vec![("authorization", &alice)],
         Allowed { channel: "team-blue-standup", identity: Identity::Uid(4242), rule: "team rooms", publisher: false, ttl: 3600 }),
        ("POST", "/rooms/team-blue-standup/join?lang=en&video=1", vec![("authorization", &alice), ("x-agora-role", "publisher")],
         Allowed { channel: "team-blue-standup", identity: Identity::Uid(4242), rule: "team rooms", publisher: true, ttl: 3600 }),
        ("PUT", "/stage/team-blue-all%20hands", vec![("authorization", &alice)],
         Allowed { channel: "team-blue-all hands", identity: Identity::Uid(4242), rule: "team rooms", publisher: true, ttl: 3600 }),
        ("GET", "/stage/team-blue-demo?x=1", vec![("authorization", &alice), ("x-agora-role", "subscriber")],
         Allowed { channel: "team-blue-demo", identity: Identity::Uid(4242), rule: "team rooms", publisher: false, ttl: 3600 }),
        ("POST", CALLS_ALL_THE_WAY, vec![("authorization", &alice), ("x-agora-channel", "team-blue-call")],
         Allowed { channel: "team-blue-call", identity: Identity::Uid(4242), rule: "team rooms", publisher: false, ttl: 3600 }),
        ("GET", "/rooms/webinar-launch/join", vec![("authorization", &bob)],
         Allowed { channel: "webinar-launch", identity: Identity::Account("bob"), rule: "webinar attendees", publisher: false, ttl: 7200 }),
        // A bare JWT (no scheme) in the JWT header is accepted too.
        ("GET", "/rooms/webinar-q3/join", vec![("authorization", alice.trim_start_matches("Bearer "))],
         Allowed { channel: "webinar-q3", identity: Identity::Account("alice"), rule: "webinar attendees", publisher: false, ttl: 7200 }),
    ];
    for (method, path, headers, expected) in &cases {
        let got = check(&server, method, path, headers).await;
        assert_allowed(&format!("{method} {path}"), &got, expected);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn raw_header_maps_are_read_like_header_maps() {
    // Envoy's `encode_raw_headers: true` sends `header_map` instead of `headers`.
    let server = start().await;
    let alice = format!("Bearer {}", alice(&server));
    let mut client = authz::client(&server).await;
    #[rustfmt::skip]
    let cases: Vec<(Headers<'_>, Outcome)> = vec![
        (vec![("authorization", &alice)], Ok(false)),
        (vec![("authorization", &alice), ("x-agora-role", "publisher")], Ok(true)),
        (vec![("x-agora-role", "publisher")], Err((401, "missing"))),
        (vec![("authorization", &alice), ("x-agora-role", "owner")], Err((400, "invalid_request"))),
    ];
    for (headers, expected) in &cases {
        let request = authz::envoy_check_raw("GET", "/rooms/team-blue-standup/join", headers);
        let got = verdict(client.check(request).await.unwrap().into_inner());
        match expected {
            Ok(publisher) => assert_allowed(
                &format!("{headers:?}"),
                &got,
                &Allowed {
                    channel: "team-blue-standup",
                    identity: Identity::Uid(4242),
                    rule: "team rooms",
                    publisher: *publisher,
                    ttl: 3600,
                },
            ),
            Err((status, reason)) => {
                assert_eq!(got.denial(), (*status, (*reason).to_owned()), "{headers:?}");
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn authentication_failures_are_401_without_the_jwt() {
    let server = start().await;
    let claims = |extra: Value| TestServer::claims("alice", extra);
    let base = json!({"teams": ["blue"], "agora_uid": 4242});
    let mut expired = claims(base.clone());
    expired["exp"] = json!(support::unix_now() - 3600);
    expired["iat"] = json!(support::unix_now() - 7200);
    let mut wrong_audience = claims(base.clone());
    wrong_audience["aud"] = json!("someone-else");
    // Same kid as the published key, different private key: the signature fails.
    let impostor = TestKey::generate(jsonwebtoken::Algorithm::ES256, "es-1");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no JWT header", None, "missing"),
        ("expired", Some(server.es256.mint(&expired)), "expired"),
        (
            "wrong audience",
            Some(server.rs256.mint(&wrong_audience)),
            "bad_audience",
        ),
        (
            "bad signature",
            Some(impostor.mint(&claims(base.clone()))),
            "bad_signature",
        ),
        ("garbage", Some("not.a.jwt".to_owned()), "malformed"),
    ];
    for (label, jwt, reason) in &cases {
        let bearer = jwt.as_ref().map(|j| format!("Bearer {j}"));
        let mut headers = vec![("x-agora-token", "spoofed")];
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        let got = check(&server, "GET", "/rooms/team-blue-standup/join", &headers).await;
        assert_eq!(got.denial(), (401, (*reason).to_owned()), "{label}");
        let Verdict::Denied {
            grpc_code,
            headers,
            body,
            ..
        } = &got
        else {
            unreachable!()
        };
        assert_eq!(*grpc_code, Code::Unauthenticated as i32, "{label}");
        let challenge = headers.iter().find(|(n, _)| n == "www-authenticate");
        // Every 401 challenges (RFC 9110); only a bad JWT gets an error code.
        let expected = if *reason == "missing" {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        assert_eq!(
            challenge.map(|(_, v)| v.as_str()),
            Some(expected),
            "{label}"
        );
        assert!(
            headers.contains(&("content-type".to_owned(), "application/json".to_owned())),
            "{label}"
        );
        if let Some(jwt) = jwt {
            let signature = jwt.rsplit('.').next().unwrap();
            let everything = format!("{body} {headers:?}");
            assert!(!everything.contains(jwt.as_str()), "{label}: JWT leaked");
            assert!(!everything.contains(signature), "{label}: JWT leaked");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_are_403_and_bad_channels_400() {
    let server = start().await;
    let alice = format!("Bearer {}", alice(&server));
    let long = format!("/rooms/team-blue-{}/join", "x".repeat(60));
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Headers<'_>, i32, &str, Code)> = vec![
        ("GET", "/rooms/team-red-standup/join", vec![], 403, "no_matching_rule", Code::PermissionDenied),
        ("GET", "/rooms/secret-board/join", vec![], 403, "no_matching_rule", Code::PermissionDenied),
        ("GET", "/rooms/webinar-launch/join", vec![("x-agora-role", "publisher")], 403, "role_not_allowed", Code::PermissionDenied),
        ("GET", "/stage/webinar-launch", vec![], 403, "role_not_allowed", Code::PermissionDenied),
        ("GET", &long, vec![], 400, "invalid_request", Code::InvalidArgument),
        ("GET", "/rooms/caf%C3%A9/join", vec![], 400, "invalid_request", Code::InvalidArgument),
        ("GET", "/rooms/team-blue-a/join", vec![("x-agora-role", "admin")], 400, "invalid_request", Code::InvalidArgument),
        ("GET", "/calls/abc", vec![], 400, "invalid_request", Code::InvalidArgument),
    ];
    for (method, path, extra, status, reason, code) in &cases {
        let mut headers = vec![("authorization", alice.as_str())];
        headers.extend(extra.iter().copied());
        let got = check(&server, method, path, &headers).await;
        assert_eq!(got.denial(), (*status, (*reason).to_owned()), "{path}");
        let Verdict::Denied { grpc_code, .. } = got else {
            unreachable!()
        };
        assert_eq!(grpc_code, *code as i32, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn spoofed_headers_are_overwritten_or_removed() {
    let server = start().await;
    let alice = format!("Bearer {}", alice(&server));
    let bob = format!("Bearer {}", server.mint("bob", json!({})));
    let spoof = [
        ("x-agora-token", "007forged"),
        ("x-agora-expires-at", "99999999999"),
        ("x-agora-rule", "admins"),
    ];
    // A uid grant: our values overwrite the client's copies, a client account is removed.
    let mut headers = vec![("authorization", alice.as_str())];
    headers.extend(spoof);
    let got = check(&server, "GET", "/rooms/team-blue-standup/join", &headers).await;
    let (token, action) = got.set_header("x-agora-token").unwrap();
    assert_ne!(token, "007forged");
    assert_eq!(action, OVERWRITE_IF_EXISTS_OR_ADD);
    assert_eq!(got.set_header("x-agora-rule").unwrap().0, "team rooms");
    assert_ne!(
        got.set_header("x-agora-expires-at").unwrap().0,
        "99999999999"
    );
    let Verdict::Ok { removed, .. } = &got else {
        unreachable!()
    };
    assert_eq!(removed, &vec!["x-agora-account".to_owned()]);

    // With the default names, a client's x-agora-uid / x-agora-account is a
    // request for that identity, which the rule must allow; it is never forwarded as is.
    #[rustfmt::skip]
    let requested: &[(&str, &str, Header<'_>, Option<&str>)] = &[
        (&alice, "/rooms/team-blue-standup/join", ("x-agora-account", "root"), None),
        (&alice, "/rooms/team-blue-standup/join", ("x-agora-uid", "1"), None),
        (&bob, "/rooms/webinar-launch/join", ("x-agora-uid", "1"), None),
        (&bob, "/rooms/webinar-launch/join", ("x-agora-account", "root"), None),
        // Asking for the identity the rule binds anyway is fine, and our copy overwrites.
        (&alice, "/rooms/team-blue-standup/join", ("x-agora-uid", "4242"), Some("4242")),
    ];
    for (jwt, path, header, uid) in requested {
        let got = check(&server, "GET", path, &[("authorization", jwt), *header]).await;
        match uid {
            None => assert_eq!(
                got.denial(),
                (403, "identity_not_allowed".to_owned()),
                "{path} {header:?}"
            ),
            Some(uid) => {
                assert_eq!(
                    got.set_header("x-agora-uid"),
                    Some((*uid, OVERWRITE_IF_EXISTS_OR_ADD))
                );
            }
        }
    }
    server.shutdown().await;

    // When requests name identities in other headers, a client's x-agora-uid is
    // a plain spoof: an account grant removes it.
    let section = ext_authz_section(
        "[ext_authz.request_headers]\nuid = \"x-requested-uid\"\naccount = \"x-requested-account\"",
    );
    let server = authz::start(ROOMS_AND_WEBINARS, &section).await;
    server.wait_ready().await;
    let bob = format!("Bearer {}", server.mint("bob", json!({})));
    let mut headers = vec![("authorization", bob.as_str()), ("x-agora-uid", "1")];
    headers.extend(spoof);
    let got = check(&server, "GET", "/rooms/webinar-launch/join", &headers).await;
    assert_eq!(
        got.set_header("x-agora-account"),
        Some(("bob", OVERWRITE_IF_EXISTS_OR_ADD))
    );
    assert_ne!(got.set_header("x-agora-token").unwrap().0, "007forged");
    let Verdict::Ok { removed, set } = &got else {
        unreachable!()
    };
    assert_eq!(removed, &vec!["x-agora-uid".to_owned()]);
    assert!(set.iter().all(|(n, _, _)| n != "x-agora-uid"));
    server.shutdown().await;
}

#[tokio::test]
async fn remove_jwt_header_removes_it_upstream() {
    let section = ext_authz_section("remove_jwt_header = true\njwt_header = \"x-company-jwt\"");
    let server = authz::start(ROOMS_AND_WEBINARS, &section).await;
    server.wait_ready().await;
    let jwt = alice(&server);
    // The custom header carries the bare JWT; `authorization` is someone else's business.
    let headers = [
        ("x-company-jwt", jwt.as_str()),
        ("authorization", "Basic Zm9vOmJhcg=="),
    ];
    let got = check(&server, "GET", "/rooms/team-blue-standup/join", &headers).await;
    let Verdict::Ok { removed, .. } = &got else {
        panic!("expected OK, got {got:?}")
    };
    assert!(removed.contains(&"x-company-jwt".to_owned()), "{removed:?}");
    assert!(
        !removed.contains(&"authorization".to_owned()),
        "{removed:?}"
    );
    assert_eq!(got.set_header("x-agora-uid").unwrap().0, "4242");
    // The JWT in `authorization` is not looked at when another header is configured.
    let bearer = format!("Bearer {jwt}");
    let got = check(
        &server,
        "GET",
        "/rooms/team-blue-standup/join",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(got.denial(), (401, "missing".to_owned()));
    server.shutdown().await;
}

#[tokio::test]
async fn unmatched_paths_are_denied_and_public_ones_pass_through() {
    let server = start().await;
    let alice = format!("Bearer {}", alice(&server));
    let denied: &[(&str, &str)] = &[
        ("GET", "/admin"),
        ("GET", "/"),
        ("DELETE", "/rooms/team-blue-standup/join"),
        ("GET", "/rooms/team-blue-standup/join/extra"),
        ("GET", "/publicity"),
    ];
    // An empty segment is a path that readers may normalise differently,
    // so it is refused before any route is tried (hardening.rs has the rest).
    let got = check(&server, "GET", "/rooms//join", &[("authorization", &alice)]).await;
    assert_eq!(got.denial(), (400, "invalid_request".to_owned()));
    for (method, path) in denied {
        let got = check(&server, method, path, &[("authorization", &alice)]).await;
        assert_eq!(
            got.denial(),
            (403, "no_matching_route".to_owned()),
            "{method} {path}"
        );
    }
    let public: &[(&str, &str, Headers<'_>)] = &[
        ("GET", "/public/docs/index.html", vec![]),
        (
            "GET",
            "/public",
            vec![("x-agora-token", "007forged"), ("x-agora-uid", "1")],
        ),
        (
            "POST",
            "/public/feedback?from=app",
            vec![("authorization", "Bearer junk")],
        ),
    ];
    for (method, path, headers) in public {
        let got = check(&server, method, path, headers).await;
        let Verdict::Ok { set, removed } = &got else {
            panic!("{path}: expected pass-through, got {got:?}")
        };
        assert!(
            set.is_empty(),
            "{path}: no token on a public route: {set:?}"
        );
        let mut removed = removed.clone();
        removed.sort();
        let mut ours = OUR_HEADERS.map(str::to_owned).to_vec();
        ours.sort();
        assert_eq!(removed, ours, "{path}: every header we own is removed");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn keys_never_loaded_is_a_503_with_retry_after_never_a_grpc_error() {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    jwks.fail_next(1_000_000, 503);
    let text = format!(
        "{}\n{}",
        config_text(&jwks.jwks_url(), ROOMS_AND_WEBINARS),
        ext_authz_section("")
    );
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    let jwt = format!("Bearer {}", alice(&server));
    let mut client = authz::client(&server).await;
    // A gRPC error would hand the decision to Envoy's `failure_mode_allow`,
    // a path the request must never be able to choose: the answer is a 503.
    let got = verdict(
        client
            .check(envoy_check(
                "GET",
                "/rooms/team-blue-standup/join",
                &[("authorization", &jwt)],
            ))
            .await
            .expect("an HTTP denial, not a gRPC error")
            .into_inner(),
    );
    assert_eq!(
        got.denial(),
        (503, "keys_unavailable".to_owned()),
        "{got:?}"
    );
    let Verdict::Denied {
        grpc_code,
        headers,
        body,
        ..
    } = &got
    else {
        unreachable!()
    };
    assert_eq!(*grpc_code, Code::Unavailable as i32);
    assert!(
        headers.contains(&("retry-after".to_owned(), "1".to_owned())),
        "{headers:?}"
    );
    assert!(!body.contains(&jwt[7..]), "the JWT never leaks");
    // Routes that need no JWT still answer: the public route passes through.
    let got = verdict(
        client
            .check(envoy_check("GET", "/public/x", &[]))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(matches!(got, Verdict::Ok { .. }), "{got:?}");
    server.shutdown().await;
}

// grpcurl blocks a worker thread while the server answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_ext_authz_is_unimplemented_and_unlisted() {
    for section in [
        "",
        "[ext_authz]\nenabled = false\n[[ext_authz.routes]]\npath = \"/x/{channel}\"\n",
    ] {
        let (jwks, es256, rs256) = support::server::test_keys().await;
        let text = format!(
            "{}\n{section}",
            config_text(&jwks.jwks_url(), ROOMS_AND_WEBINARS)
        );
        let server = TestServer::start_with(text, jwks, es256, rs256).await;
        server.wait_ready().await;
        let jwt = format!("Bearer {}", alice(&server));
        let status = authz::client(&server)
            .await
            .check(envoy_check(
                "GET",
                "/x/team-blue-a",
                &[("authorization", &jwt)],
            ))
            .await
            .expect_err("Check is not served");
        assert_eq!(
            status.code(),
            Code::Unimplemented,
            "{section:?}: {status:?}"
        );
        let services = grpcurl(&server, &[], "list").await;
        assert!(services.contains("tokengate.v1.TokenService"), "{services}");
        assert!(
            !services.contains("envoy.service.auth"),
            "{section:?}: {services}"
        );
        server.shutdown().await;
    }
}

// grpcurl blocks a worker thread while the server answers on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_check_through_reflection() {
    let server = start().await;
    let services = grpcurl(&server, &[], "list").await;
    assert!(
        services
            .lines()
            .any(|l| l == "envoy.service.auth.v3.Authorization"),
        "{services}"
    );
    let jwt = alice(&server);
    let request = envoy_check(
        "GET",
        "/rooms/team-blue-standup/join?lang=en",
        &[
            ("authorization", &format!("Bearer {jwt}")),
            ("x-agora-token", "007forged"),
        ],
    );
    let http = request
        .attributes
        .as_ref()
        .unwrap()
        .request
        .as_ref()
        .unwrap()
        .http
        .as_ref()
        .unwrap();
    // The proto3 JSON form of the same request, as an operator would type it.
    let body = json!({
        "attributes": {
            "source": {
                "address": {"socketAddress": {"address": "10.8.3.17", "portValue": 51734}},
                "principal": authz::SOURCE_PRINCIPAL,
            },
            "destination": {
                "address": {"socketAddress": {"address": "10.8.5.2", "portValue": 8080}},
                "principal": authz::DESTINATION_PRINCIPAL,
            },
            "request": {"http": {
                "id": http.id, "method": http.method, "path": http.path, "host": http.host,
                "scheme": http.scheme, "protocol": http.protocol, "headers": http.headers,
            }},
        }
    });
    let out = grpcurl(
        &server,
        &["-d", &body.to_string()],
        "envoy.service.auth.v3.Authorization/Check",
    )
    .await;
    let response: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let headers = response["okResponse"]["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("an OK response: {out}"));
    let token = headers
        .iter()
        .find(|h| h["header"]["key"] == "x-agora-token")
        .unwrap_or_else(|| panic!("a token header: {out}"));
    assert_eq!(token["appendAction"], "OVERWRITE_IF_EXISTS_OR_ADD", "{out}");
    let token = token["header"]["value"].as_str().unwrap();
    assert_ne!(token, "007forged");
    assert!(
        v007::parse(token)
            .unwrap()
            .verify(&AppCertificate::parse(PRIMARY_CERT).unwrap())
    );
    assert!(!out.contains(&jwt), "the response never echoes the JWT");
    server.shutdown().await;
}

/// Runs the real grpcurl against `server` (plaintext) with `args` and then the
/// verb or method, and returns its stdout; fails on error.
async fn grpcurl(server: &TestServer, args: &[&str], verb: &str) -> String {
    let run = grpcurl_plaintext(server.addr, args, &[verb]).await;
    run.success().to_owned()
}
