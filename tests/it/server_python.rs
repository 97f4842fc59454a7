//! A backend in another language: the Python client `tests/python/client.py`
//! (grpcio 1.85, stubs generated from `proto/` by grpcio-tools at run time)
//! calls the real server in process.

use crate::support;

use std::process::Command;

use serde_json::{Value, json};
use support::fixtures::{NO_ADMIN_ROOMS, TEAM_ROOMS_AS_ACCOUNT};
use support::server::{APP_ID, PRIMARY_CERT, TestServer};
use support::tools::{blocking, python_path, run};
use tokengate::token::{AppCertificate, services::ServiceKind, v007};

/// RTM for any caller, as their subject, for half an hour.
const MESSAGING: &str = r#"
[[rules]]
name = "messaging"
actions = ["rtm"]
issuer = "https://idp.test.example"
project = "main"
account_claim = "sub"
default_ttl = "30m"
"#;

/// Admin rooms refused, team rooms bound to the caller's account (the Python
/// caller's JWT has no uid claim, and the tests assert the account), messaging.
fn rules() -> String {
    format!("{NO_ADMIN_ROOMS}{TEAM_ROOMS_AS_ACCOUNT}{MESSAGING}")
}

/// Runs `client.py` against `server` and returns the JSON object it prints.
async fn python(server: &TestServer, jwt: &str, method: &str, request: Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let mut command = Command::new(python_path());
    command
        .arg(script)
        .arg(server.addr.to_string())
        .arg(method)
        .arg(request.to_string())
        .env("TOKENGATE_JWT", jwt);
    let out = blocking(move || run(&mut command)).await;
    serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out:#?}"))
}

#[tokio::test]
async fn the_python_client_gets_a_token_that_verifies() {
    let server = TestServer::start(&rules()).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({"teams": ["blue"]}));
    let reply = python(
        &server,
        &jwt,
        "IssueRtcToken",
        json!({"channel": "team-blue-standup", "role": "ROLE_SUBSCRIBER", "lifetimes": {"token": "900s"}}),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let issued = &reply["response"]["issued"];
    assert_eq!(issued["app_id"], APP_ID);
    assert_eq!(issued["project"], "main");
    assert_eq!(issued["channel"], "team-blue-standup");
    assert_eq!(issued["account"], "alice");
    assert_eq!(issued["role"], "ROLE_SUBSCRIBER");
    assert_eq!(issued["matched_rule"], "team rooms");

    let parsed = v007::parse(issued["token"].as_str().unwrap()).unwrap();
    assert!(parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()));
    assert_eq!(parsed.token.expire, 900);
    assert_eq!(parsed.token.services.len(), 1);
    let service = &parsed.token.services[0];
    match &service.kind {
        ServiceKind::Rtc { channel_name, uid } => {
            assert_eq!(channel_name, b"team-blue-standup");
            assert_eq!(uid, b"alice");
        }
        other => panic!("unexpected service {other:?}"),
    }
    // A subscriber joins (privilege 1) and publishes nothing (2, 3, 4).
    let privileges: Vec<u16> = service.privileges.keys().copied().collect();
    assert_eq!(privileges, vec![1], "{:?}", service.privileges);
    server.shutdown().await;
}

#[tokio::test]
async fn the_python_client_sees_permission_denied_with_the_reason() {
    let server = TestServer::start(&rules()).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({"teams": ["blue"]}));
    let cases = [
        ("admin-room", "denied_by_rule"),
        ("team-red-standup", "no_matching_rule"),
    ];
    for (channel, reason) in cases {
        let reply = python(
            &server,
            &jwt,
            "IssueRtcToken",
            json!({"channel": channel, "role": "ROLE_PUBLISHER"}),
        )
        .await;
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["code"], "PERMISSION_DENIED", "{reply}");
        assert_eq!(reply["reason"], reason, "{reply}");
        assert!(!reply.to_string().contains(&jwt), "the JWT leaked: {reply}");
    }
    let anonymous = python(
        &server,
        "",
        "IssueRtcToken",
        json!({"channel": "team-blue-x", "role": "ROLE_PUBLISHER"}),
    )
    .await;
    assert_eq!(anonymous["code"], "UNAUTHENTICATED", "{anonymous}");
    assert_eq!(anonymous["reason"], "missing", "{anonymous}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_python_client_gets_an_rtm_token_and_field_violations() {
    let server = TestServer::start(&rules()).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({"teams": ["blue"]}));
    let reply = python(&server, &jwt, "IssueRtmToken", json!({})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let issued = &reply["response"]["issued"];
    assert_eq!(issued["matched_rule"], "messaging");
    let parsed = v007::parse(issued["token"].as_str().unwrap()).unwrap();
    assert!(parsed.verify(&AppCertificate::parse(PRIMARY_CERT).unwrap()));
    assert_eq!(parsed.token.expire, 1800);
    match &parsed.token.services[0].kind {
        ServiceKind::Rtm { user_id } => assert_eq!(user_id, b"alice"),
        other => panic!("unexpected service {other:?}"),
    }

    let bad = python(
        &server,
        &jwt,
        "IssueRtcToken",
        json!({"channel": "team blue/standup", "uid": 1, "role": "ROLE_PUBLISHER",
               "lifetimes": {"join": "100000s"}}),
    )
    .await;
    assert_eq!(bad["code"], "INVALID_ARGUMENT", "{bad}");
    assert_eq!(bad["fields"], json!(["channel", "lifetimes.join"]), "{bad}");
    assert_eq!(bad["reason"], Value::Null, "{bad}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_python_client_reads_a_rate_limits_wait_and_the_limit() {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    let text = format!(
        "{}\n[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1/min\"\n",
        support::server::config_text(&jwks.jwks_url(), &rules())
    );
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({"teams": ["blue"]}));
    let request = json!({"channel": "team-blue-standup", "role": "ROLE_SUBSCRIBER"});
    let first = python(&server, &jwt, "IssueRtcToken", request.clone()).await;
    assert_eq!(first["ok"], true, "{first}");
    let second = python(&server, &jwt, "IssueRtcToken", request).await;
    assert_eq!(second["code"], "RESOURCE_EXHAUSTED", "{second}");
    assert_eq!(second["reason"], "rate_limited", "{second}");
    assert_eq!(
        second["quota_subjects"],
        json!(["limit:per-caller"]),
        "{second}"
    );
    let wait = second["retry_after_ms"].as_u64().unwrap();
    assert!((50_000..=60_000).contains(&wait), "{second}");
    server.shutdown().await;
}
