//! grpcurl, the real binary (1.8.6, reflection v1alpha only), against the real
//! server in process: list and describe through reflection, an issue call with
//! a bearer JWT, errors with their decoded `google.rpc` details, and health.

use crate::support;

use serde_json::{Value, json};
use support::fixtures::NO_ADMIN_ROOMS;
use support::server::{APP_ID, PRIMARY_CERT, TestServer};
use support::tools::{Run, grpcurl_plaintext};
use tokengate::token::{AppCertificate, services::ServiceKind, v007};

/// Rooms by `agora_uid` for the grpcurl calls; [`NO_ADMIN_ROOMS`] refuses `admin-*` first.
const ROOMS: &str = r#"
[[rules]]
name = "rooms"
actions = ["rtc"]
issuer = "https://idp.test.example"
channel = "room-*"
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "8h"
"#;

/// [`NO_ADMIN_ROOMS`], then [`ROOMS`].
fn rules() -> String {
    format!("{NO_ADMIN_ROOMS}{ROOMS}")
}

/// Runs grpcurl against `server` with `args` before the address and `tail` after it.
async fn call(server: &TestServer, args: &[&str], tail: &[&str]) -> Run {
    grpcurl_plaintext(server.addr, args, tail).await
}

/// An authenticated `IssueRtcToken` call with `body`, formatting errors with their details.
async fn issue(server: &TestServer, jwt: &str, body: &Value) -> Run {
    let header = format!("authorization: Bearer {jwt}");
    let body = body.to_string();
    call(
        server,
        &["-format-error", "-H", &header, "-d", &body],
        &["tokengate.v1.TokenService/IssueRtcToken"],
    )
    .await
}

/// `grpc.health.v1.Health/Check` with `body`.
async fn health(server: &TestServer, body: &str) -> Run {
    call(server, &["-d", body], &["grpc.health.v1.Health/Check"]).await
}

async fn started() -> TestServer {
    let server = TestServer::start(&rules()).await;
    server.wait_ready().await;
    server
}

#[tokio::test]
async fn list_shows_the_token_service_and_health() {
    let server = started().await;
    let run = call(&server, &[], &["list"]).await;
    let services: Vec<&str> = run.success().lines().collect();
    for expected in ["tokengate.v1.TokenService", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&expected),
            "{expected} missing: {services:?}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn describe_works_through_reflection() {
    let server = started().await;
    let service = call(&server, &[], &["describe", "tokengate.v1.TokenService"]).await;
    let text = service.success();
    assert!(
        text.contains("tokengate.v1.TokenService is a service"),
        "{text}"
    );
    for rpc in [
        "rpc IssueRtcToken ( .tokengate.v1.IssueRtcTokenRequest ) returns ( .tokengate.v1.IssueRtcTokenResponse )",
        "rpc IssueRtmToken",
        "rpc IssueChatToken",
        "rpc RenewToken",
        "rpc InspectToken",
        "rpc ExplainAccess",
    ] {
        assert!(text.contains(rpc), "{rpc} missing:\n{text}");
    }

    let message = call(
        &server,
        &[],
        &["describe", "tokengate.v1.IssueRtcTokenRequest"],
    )
    .await;
    let text = message.success();
    assert!(
        text.contains("tokengate.v1.IssueRtcTokenRequest is a message"),
        "{text}"
    );
    for field in [
        "string channel = 1;",
        "oneof identity {",
        "uint32 uid = 2;",
        "string account = 3;",
        ".tokengate.v1.Role role = 4;",
        ".tokengate.v1.Lifetimes lifetimes = 5;",
        "bool with_rtm = 7;",
    ] {
        assert!(text.contains(field), "{field} missing:\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn an_issue_call_with_a_bearer_jwt_returns_a_token_that_verifies() {
    let server = started().await;
    let jwt = server.mint("alice", json!({"agora_uid": 31337}));
    let run = issue(
        &server,
        &jwt,
        &json!({"channel": "room-7", "role": "ROLE_PUBLISHER", "lifetimes": {"token": "600s"}}),
    )
    .await;
    let reply: Value = serde_json::from_str(run.success()).unwrap();
    let issued = &reply["issued"];
    assert_eq!(issued["appId"], APP_ID);
    assert_eq!(issued["channel"], "room-7");
    assert_eq!(issued["uid"], 31337);
    assert_eq!(issued["matchedRule"], "rooms");
    let token = issued["token"].as_str().unwrap();
    let parsed = v007::parse(token).unwrap();
    assert!(parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()));
    assert_eq!(parsed.token.expire, 600);
    match &parsed.token.services[0].kind {
        ServiceKind::Rtc { channel_name, uid } => {
            assert_eq!(channel_name, b"room-7");
            assert_eq!(uid, b"31337");
        }
        other => panic!("unexpected service {other:?}"),
    }
    server.shutdown().await;
}

/// `jwt` with one signature character changed (inside the signature, so the
/// base64 stays canonical and only the signature check can fail).
fn forged(jwt: &str) -> String {
    let mut bytes = jwt.as_bytes().to_vec();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// The status grpcurl printed with `-format-error` (JSON on stderr), after
/// checking that it failed and that the caller's JWT (if any) appears nowhere.
fn error_status(run: &Run, jwt: Option<&str>) -> Value {
    assert_ne!(run.code, Some(0), "the call should fail: {run:#?}");
    if let Some(jwt) = jwt {
        assert!(
            !run.stdout.contains(jwt) && !run.stderr.contains(jwt),
            "the JWT leaked into the error"
        );
    }
    serde_json::from_str(&run.stderr)
        .unwrap_or_else(|e| panic!("grpcurl's -format-error output is not JSON ({e}): {run:#?}"))
}

/// The decoded details of `status` whose `@type` is `google.rpc.<name>`.
fn details<'a>(status: &'a Value, name: &str) -> Vec<&'a Value> {
    let type_url = format!("type.googleapis.com/google.rpc.{name}");
    status["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details in {status}"))
        .iter()
        .filter(|d| d["@type"] == type_url.as_str())
        .collect()
}

/// One error case: the expected gRPC code and the `ErrorInfo` reason, or the `BadRequest` fields.
enum Expected {
    Info(i64, &'static str),
    Fields(&'static [&'static str]),
}

fn check(status: &Value, expected: &Expected) {
    match expected {
        Expected::Info(code, reason) => {
            assert_eq!(status["code"], *code, "{status}");
            let info = details(status, "ErrorInfo");
            assert_eq!(info.len(), 1, "{status}");
            assert_eq!(info[0]["reason"], *reason, "{status}");
            assert_eq!(info[0]["domain"], "tokengate.v1", "{status}");
        }
        Expected::Fields(fields) => {
            assert_eq!(status["code"], 3, "INVALID_ARGUMENT expected: {status}");
            let bad = details(status, "BadRequest");
            assert_eq!(bad.len(), 1, "{status}");
            let seen: Vec<&str> = bad[0]["fieldViolations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["field"].as_str().unwrap())
                .collect();
            assert_eq!(seen, *fields, "{status}");
        }
    }
}

#[tokio::test]
async fn errors_print_their_code_and_decoded_details() {
    let server = started().await;
    let jwt = server.mint("alice", json!({"agora_uid": 5}));
    let forged = forged(&jwt);
    let cases: Vec<(&str, &str, Value, Expected)> = vec![
        (
            "denied by a rule",
            &jwt,
            json!({"channel": "admin-1", "role": "ROLE_PUBLISHER"}),
            Expected::Info(7, "denied_by_rule"),
        ),
        (
            "no rule matches",
            &jwt,
            json!({"channel": "lobby", "role": "ROLE_PUBLISHER"}),
            Expected::Info(7, "no_matching_rule"),
        ),
        (
            "malformed fields",
            &jwt,
            json!({"channel": "bad/channel", "role": "ROLE_PUBLISHER", "lifetimes": {"token": "90000s"}}),
            Expected::Fields(&["channel", "lifetimes.token"]),
        ),
        (
            // grpcurl sends a oneof member even when it is zero: the wildcard uid.
            "uid 0 asked for explicitly",
            &jwt,
            json!({"channel": "room-1", "uid": 0, "role": "ROLE_PUBLISHER"}),
            Expected::Info(7, "wildcard_uid_not_allowed"),
        ),
        (
            "no role",
            &jwt,
            json!({"channel": "room-1"}),
            Expected::Fields(&["role"]),
        ),
        (
            "a forged JWT",
            &forged,
            json!({"channel": "room-1", "role": "ROLE_PUBLISHER"}),
            Expected::Info(16, "bad_signature"),
        ),
    ];
    for (name, caller, body, expected) in &cases {
        let run = issue(&server, caller, body).await;
        let status = error_status(&run, Some(caller));
        eprintln!("case {name}: {status}");
        check(&status, expected);
    }

    let anonymous = call(
        &server,
        &[
            "-format-error",
            "-d",
            r#"{"channel": "room-1", "role": "ROLE_PUBLISHER"}"#,
        ],
        &["tokengate.v1.TokenService/IssueRtcToken"],
    )
    .await;
    check(
        &error_status(&anonymous, None),
        &Expected::Info(16, "missing"),
    );

    // Without -format-error, grpcurl names the code and prints the details it decoded.
    let header = format!("authorization: Bearer {jwt}");
    let plain = call(
        &server,
        &[
            "-H",
            &header,
            "-d",
            r#"{"channel": "admin-1", "role": "ROLE_PUBLISHER"}"#,
        ],
        &["tokengate.v1.TokenService/IssueRtcToken"],
    )
    .await;
    for text in [
        "Code: PermissionDenied",
        "Details:",
        r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#,
        r#""reason":"denied_by_rule""#,
        r#""metadata":{"rule":"no admin rooms"}"#,
    ] {
        assert!(plain.stderr.contains(text), "{text} missing: {plain:#?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn health_check_says_serving() {
    let server = started().await;
    for body in [r#"{}"#, r#"{"service": "tokengate.v1.TokenService"}"#] {
        let reply: Value = serde_json::from_str(health(&server, body).await.success()).unwrap();
        assert_eq!(reply, json!({"status": "SERVING"}), "{body}");
    }
    let unknown = call(
        &server,
        &["-format-error", "-d", r#"{"service": "no.such.Service"}"#],
        &["grpc.health.v1.Health/Check"],
    )
    .await;
    assert_eq!(
        error_status(&unknown, None)["code"],
        5,
        "NOT_FOUND expected"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn health_says_not_serving_until_the_issuer_keys_load() {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    jwks.fail_next(usize::MAX, 503);
    let text = support::server::config_text(&jwks.jwks_url(), &rules());
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    // Wait until the first fetch has failed, so "not ready" is not a race.
    for _ in 0..400 {
        if server.jwks.jwks_fetches() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        server.jwks.jwks_fetches() > 0,
        "the issuer never fetched its keys"
    );

    for body in [r#"{}"#, r#"{"service": "tokengate.v1.TokenService"}"#] {
        let reply: Value = serde_json::from_str(health(&server, body).await.success()).unwrap();
        assert_eq!(reply, json!({"status": "NOT_SERVING"}), "{body}");
    }
    let jwt = server.mint("alice", json!({"agora_uid": 5}));
    let run = issue(
        &server,
        &jwt,
        &json!({"channel": "room-1", "role": "ROLE_PUBLISHER"}),
    )
    .await;
    check(
        &error_status(&run, Some(&jwt)),
        &Expected::Info(14, "keys_unavailable"),
    );

    // The JWKS recovers: the retry loads the keys and health follows.
    server.jwks.fail_next(0, 503);
    let mut serving = false;
    for _ in 0..120 {
        let reply: Value = serde_json::from_str(health(&server, "{}").await.success()).unwrap();
        if reply == json!({"status": "SERVING"}) {
            serving = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        serving,
        "health never became SERVING after the JWKS recovered"
    );
    let run = issue(
        &server,
        &jwt,
        &json!({"channel": "room-1", "role": "ROLE_PUBLISHER"}),
    )
    .await;
    let reply: Value = serde_json::from_str(run.success()).unwrap();
    assert_eq!(reply["issued"]["uid"], 5);
    server.shutdown().await;
}
