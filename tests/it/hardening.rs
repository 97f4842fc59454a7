//! Findings of the adversarial review (issue 10) that are about input and
//! output bounds, against the real server: deflate bombs, duplicate
//! credential headers, paths that proxies and upstreams read differently,
//! exact methods, and control characters in text logs.

use std::time::Instant;

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support;
use support::authz::{self, envoy_check, ext_authz_section, verdict};
use support::binary::{Running, loopback};
use support::server::{TestServer, config_text};
use support::{JwksServer, TestKey};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

const RULES: &str = r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
account_claim = "sub"

[[rules]]
name = "debuggers"
actions = ["inspect", "explain"]
condition = '"tokengate:debug" in caller.scopes'
"#;

/// A syntactically valid 007 token whose payload inflates to 1 MiB.
fn deflate_bomb() -> String {
    let mut z = Vec::new();
    tokengate::token::codec::deflate(&vec![0u8; 1 << 20], &mut z).unwrap();
    let mut token = "007".to_owned();
    tokengate::token::codec::base64_encode(&z, &mut token);
    token
}

fn field_violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_deflate_bomb_is_a_malformed_token_for_renew_and_inspect() {
    let server = TestServer::start(RULES).await;
    server.wait_ready().await;
    let jwt = server.mint("dana", json!({"scope": "tokengate:debug"}));
    let bomb = deflate_bomb();
    assert!(bomb.len() < 2_000, "{}", bomb.len());
    let mut client = server.client().await;
    let renew = client
        .renew_token(TestServer::authed(
            &jwt,
            pb::RenewTokenRequest {
                token: bomb.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(renew.code(), Code::InvalidArgument, "{renew:?}");
    assert_eq!(field_violations(&renew), ["token"]);
    assert!(renew.message().contains("inflated"), "{}", renew.message());
    let started = Instant::now();
    let inspect = client
        .inspect_token(TestServer::authed(
            &jwt,
            pb::InspectTokenRequest {
                token: bomb,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(inspect.code(), Code::InvalidArgument, "{inspect:?}");
    assert_eq!(field_violations(&inspect), ["token"]);
    // Not a timing test: only that the reply is small and nothing echoes the payload.
    assert!(inspect.message().len() < 200, "{}", inspect.message());
    assert!(started.elapsed().as_secs() < 5);
    server.shutdown().await;
}

#[tokio::test]
async fn two_credential_headers_are_refused_on_both_paths() {
    let server = authz::start(RULES, &ext_authz_section("")).await;
    server.wait_ready().await;
    let alice = server.mint("alice", json!({}));
    let mallory = server.mint("mallory", json!({}));
    let mut client = server.client().await;
    let mut request = tonic::Request::new(pb::IssueRtcTokenRequest {
        channel: "lobby-a".into(),
        ..Default::default()
    });
    for jwt in [&alice, &mallory] {
        request
            .metadata_mut()
            .append("authorization", format!("Bearer {jwt}").parse().unwrap());
    }
    let status = client.issue_rtc_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "malformed"
    );
    assert!(
        status.message().contains("more than one"),
        "{}",
        status.message()
    );

    let mut check = authz::client(&server).await;
    let a = format!("Bearer {alice}");
    let m = format!("Bearer {mallory}");
    // Envoy merges repeated headers into one comma-separated value in `headers` ...
    let merged = format!("{a}, {m}");
    let got = verdict(
        check
            .check(envoy_check(
                "GET",
                "/rooms/lobby-a/join",
                &[("authorization", &merged)],
            ))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(got.denial(), (401, "malformed".to_owned()), "{got:?}");
    // ... and keeps them apart in `header_map`.
    let mut raw = envoy_check("GET", "/rooms/lobby-a/join", &[]);
    let http = raw
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    let mut map = envoy_types::pb::envoy::config::core::v3::HeaderMap::default();
    for value in [&a, &m] {
        map.headers
            .push(envoy_types::pb::envoy::config::core::v3::HeaderValue {
                key: "authorization".into(),
                value: value.clone(),
                raw_value: Vec::new(),
            });
    }
    http.header_map = Some(map);
    let got = verdict(check.check(raw).await.unwrap().into_inner());
    assert_eq!(got.denial(), (401, "malformed".to_owned()), "{got:?}");
    // One header still works.
    let got = verdict(
        check
            .check(envoy_check(
                "GET",
                "/rooms/lobby-a/join",
                &[("authorization", &a)],
            ))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(matches!(got, support::authz::Verdict::Ok { .. }), "{got:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes_never_reach_a_route() {
    let server = authz::start(RULES, &ext_authz_section("")).await;
    server.wait_ready().await;
    let mut check = authz::client(&server).await;
    // Each would match the pass-through `/public/**` here while an upstream
    // that normalises the path serves a token route.
    for path in [
        "/public/../rooms/lobby-a/join",
        "/public/%2e%2e/rooms/lobby-a/join",
        "/public/..%2Frooms/lobby-a/join",
        "/public\\..\\rooms/lobby-a/join",
        "/public//../rooms/lobby-a/join",
    ] {
        let got = verdict(
            check
                .check(envoy_check("GET", path, &[]))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(
            got.denial(),
            (400, "invalid_request".to_owned()),
            "{path}: {got:?}"
        );
    }
    // Methods are exact: `get` is not `GET`.
    let jwt = format!("Bearer {}", server.mint("alice", json!({})));
    let got = verdict(
        check
            .check(envoy_check(
                "get",
                "/rooms/lobby-a/join",
                &[("authorization", &jwt)],
            ))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        got.denial(),
        (403, "no_matching_route".to_owned()),
        "{got:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn text_logs_escape_control_characters_from_claims() {
    let es256 = TestKey::generate(jsonwebtoken::Algorithm::ES256, "es-1");
    let rs256 = TestKey::generate(jsonwebtoken::Algorithm::RS256, "rs-1");
    let jwks = JwksServer::start(&[&es256, &rs256]).await;
    let config = loopback(&config_text(&jwks.jwks_url(), RULES));
    let server = Running::start_config_as(&config, "text");
    server.wait_ready().await;
    let forged = "x\n2026-01-01T00:00:00Z  INFO forged: decision=allow\r\u{1b}[2K\u{8}";
    let jwt = es256.mint(&TestServer::claims(forged, json!({})));
    let mut client = TokenServiceClient::new(server.channel().await);
    // Refused (the subject is not a valid account), and audited with the subject.
    let _ = client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            pb::IssueRtcTokenRequest {
                channel: "lobby-a".into(),
                ..Default::default()
            },
        ))
        .await;
    let logs = server
        .logs_once(|line| line.contains(r#""target":"audit""#))
        .await;
    let all = logs.join("\n");
    assert!(!all.contains('\u{1b}'), "no raw ESC: {all}");
    assert!(!all.contains('\r') && !all.contains('\u{8}'), "{all}");
    assert!(
        !logs
            .iter()
            .any(|line| line.starts_with("2026-01-01T00:00:00Z")),
        "a claim forged a log line: {all}"
    );
    // The audit event is one JSON line that holds the subject, escaped.
    let audit: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "audit")
        .collect();
    assert_eq!(audit.len(), 1, "{all}");
    assert_eq!(audit[0]["caller"], forged);
}
