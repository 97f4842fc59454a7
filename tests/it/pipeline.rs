//! The one pipeline seen from outside: the gRPC API and ext_authz agree on
//! every refusal, every call writes exactly one audit event with the fixed
//! schema (both adapters, every path), and replies carry the request id.

use crate::support;

use serde_json::{Value, json};
use support::authz::{self, Verdict, envoy_check, ext_authz_section, verdict};
use support::binary::{Running, loopback};
use support::fixtures::{ROOMS_AND_WEBINARS, rtc, rtc_uid};
use support::server::{TestServer, config_text};
use support::{JwksServer, TestKey};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;
use tonic::Code;
use tonic_types::StatusExt;

/// A rule that lets the caller choose the identity but not the wildcard uid.
const NO_WILDCARD: &str = r#"
[[rules]]
name = "no wildcard"
actions = ["rtc"]
channel = "open-*"
project = "main"
caller_chooses_identity = true
"#;

/// Team rooms and webinars (as ext_authz's tests use them), and [`NO_WILDCARD`].
fn rules() -> String {
    format!("{ROOMS_AND_WEBINARS}{NO_WILDCARD}")
}

/// The schema of every audit event, as the README's "Audit events" table
/// documents it (a `field`, or `a`, `b` for two fields in one row).
fn audit_fields() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Audit events\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("an Audit events section");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|line| {
            let cell = line.trim_matches('|').split('|').next().unwrap_or("");
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// (label, JWT, channel, publisher?, uid).
type Case<'a> = (&'a str, Option<&'a str>, &'a str, bool, Option<u32>);
/// (path, headers, decision, reason).
type CheckCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, Option<&'a str>);

/// The HTTP status ext_authz must answer for each gRPC code the API answers.
fn http_for(code: Code) -> i32 {
    match code {
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::InvalidArgument => 400,
        Code::Unavailable => 503,
        Code::Internal => 500,
        other => panic!("no refusal renders as {other:?}"),
    }
}

/// The reason a gRPC refusal carries: `ErrorInfo.reason`, or `invalid_request` for field violations.
fn grpc_reason(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    match details.error_info() {
        Some(info) => info.reason.clone(),
        None if details.bad_request().is_some() => "invalid_request".into(),
        None => panic!("no reason in {status:?}"),
    }
}

/// The request id a reply or a refusal carries in its `x-request-id` header.
fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn grpc_and_ext_authz_agree_on_every_refusal() {
    let server = authz::start(&rules(), &ext_authz_section("")).await;
    server.wait_ready().await;
    let member = server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}));
    let stranger = server.mint("mallory", json!({}));
    let expired = server.es256.mint(&TestServer::claims(
        "alice",
        json!({"exp": support::unix_now() - 3600, "iat": support::unix_now() - 7200}),
    ));
    let wrong_audience = server.mint("alice", json!({"aud": "someone-else"}));
    let impostor = TestKey::generate(jsonwebtoken::Algorithm::ES256, "es-1")
        .mint(&TestServer::claims("alice", json!({})));
    // Agora channel names are at most 64 bytes.
    let too_long = format!("team-blue-{}", "x".repeat(60));
    // (label, JWT, channel, publisher?, uid) -> both refuse, with the same reason.
    let cases: Vec<Case<'_>> = vec![
        ("missing jwt", None, "team-blue-a", false, None),
        ("garbage jwt", Some("not.a.jwt"), "team-blue-a", false, None),
        ("expired", Some(&expired), "team-blue-a", false, None),
        (
            "wrong audience",
            Some(&wrong_audience),
            "team-blue-a",
            false,
            None,
        ),
        ("bad signature", Some(&impostor), "team-blue-a", false, None),
        ("no rule", Some(&stranger), "team-red-a", false, None),
        ("role above max", Some(&member), "webinar-x", true, None),
        (
            "other identity",
            Some(&member),
            "team-blue-a",
            false,
            Some(7),
        ),
        ("wildcard uid", Some(&member), "open-a", false, Some(0)),
        ("bad channel", Some(&member), &too_long, false, None),
    ];
    let mut client = server.client().await;
    let mut check = authz::client(&server).await;
    for (label, jwt, channel, publisher, uid) in cases {
        let role = if publisher {
            pb::Role::Publisher
        } else {
            pb::Role::Subscriber
        };
        let message = match uid {
            Some(uid) => rtc_uid(channel, role, uid),
            None => rtc(channel, role),
        };
        let mut request = tonic::Request::new(message);
        if let Some(jwt) = jwt {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
        }
        let status = client.issue_rtc_token(request).await.expect_err(label);
        let bearer = jwt.map(|j| format!("Bearer {j}"));
        let uid_text = uid.map(|u| u.to_string());
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(bearer) = &bearer {
            headers.push(("authorization", bearer));
        }
        if publisher {
            headers.push(("x-agora-role", "publisher"));
        }
        if let Some(uid) = &uid_text {
            headers.push(("x-agora-uid", uid));
        }
        let path = format!("/rooms/{channel}/join");
        let got = verdict(
            check
                .check(envoy_check("GET", &path, &headers))
                .await
                .unwrap_or_else(|e| panic!("{label}: a denial, not a gRPC error: {e:?}"))
                .into_inner(),
        );
        let (http, reason) = got.denial();
        assert_eq!(
            http,
            http_for(status.code()),
            "{label}: {status:?} vs {got:?}"
        );
        assert_eq!(reason, grpc_reason(&status), "{label}");
        if let Verdict::Denied { grpc_code, .. } = &got {
            assert_eq!(*grpc_code, status.code() as i32, "{label}");
        }
        // Both name the same request id in what they return.
        let in_details = status
            .get_error_details()
            .request_info()
            .unwrap()
            .request_id
            .clone();
        assert_eq!(request_id(status.metadata()), in_details, "{label}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn every_call_writes_exactly_one_audit_event_with_the_whole_schema() {
    let (jwks, es256, _) = support::server::test_keys().await;
    let config = loopback(&format!(
        "{}\n{}",
        config_text(&jwks.jwks_url(), &rules()),
        ext_authz_section("")
    ));
    let server = Running::start_config(&config);
    server.wait_ready().await;
    let member = es256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    let mut client = TokenServiceClient::new(server.channel().await);
    let mut check =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            server.channel().await,
        );

    // (rpc, decision, reason) expected for each call, in call order.
    let mut expected: Vec<(&str, &str, Option<&str>)> = Vec::new();
    let mut grpc_ids: Vec<String> = Vec::new();

    let ok = client
        .issue_rtc_token(TestServer::authed(
            &member,
            rtc("team-blue-a", pb::Role::Publisher),
        ))
        .await
        .unwrap();
    grpc_ids.push(
        ok.metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned(),
    );
    let issued = ok.into_inner().issued.unwrap();
    expected.push(("IssueRtcToken", "allow", None));
    let refusals = [
        (
            rtc("team-red-a", pb::Role::Subscriber),
            Some(&member),
            "deny",
            "no_matching_rule",
        ),
        (
            rtc("team-blue-a", pb::Role::Subscriber),
            None,
            "unauthenticated",
            "missing",
        ),
        (
            rtc("", pb::Role::Subscriber),
            Some(&member),
            "invalid",
            "invalid_request",
        ),
    ];
    for (message, jwt, decision, reason) in refusals {
        let request = match jwt {
            Some(jwt) => TestServer::authed(jwt, message),
            None => tonic::Request::new(message),
        };
        let status = client.issue_rtc_token(request).await.unwrap_err();
        grpc_ids.push(request_id(status.metadata()));
        expected.push(("IssueRtcToken", decision, Some(reason)));
    }
    let renewed = client
        .renew_token(TestServer::authed(
            &member,
            pb::RenewTokenRequest {
                token: issued.token.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    grpc_ids.push(request_id(renewed.metadata()));
    expected.push(("RenewToken", "allow", None));
    // No rule allows inspect or explain: one refusal event each.
    let status = client
        .inspect_token(TestServer::authed(
            &member,
            pb::InspectTokenRequest {
                token: issued.token.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    grpc_ids.push(request_id(status.metadata()));
    expected.push(("InspectToken", "deny", Some("no_matching_rule")));
    let status = client
        .explain_access(TestServer::authed(
            &member,
            pb::ExplainAccessRequest::default(),
        ))
        .await
        .unwrap_err();
    grpc_ids.push(request_id(status.metadata()));
    expected.push(("ExplainAccess", "invalid", Some("invalid_request")));

    let bearer = format!("Bearer {member}");
    let too_long = format!("/rooms/team-blue-{}/join", "x".repeat(60));
    let checks: Vec<CheckCase<'_>> = vec![
        (
            "/rooms/team-blue-a/join",
            vec![("authorization", &bearer)],
            "allow",
            None,
        ),
        (
            "/rooms/team-red-a/join",
            vec![("authorization", &bearer)],
            "deny",
            Some("no_matching_rule"),
        ),
        (
            "/rooms/team-blue-a/join",
            vec![],
            "unauthenticated",
            Some("missing"),
        ),
        (
            too_long.as_str(),
            vec![("authorization", &bearer)],
            "invalid",
            Some("invalid_request"),
        ),
        ("/nowhere", vec![], "deny", Some("no_matching_route")),
        ("/public/logo.png", vec![], "pass_through", None),
    ];
    for (path, headers, decision, reason) in &checks {
        check
            .check(envoy_check("GET", path, headers))
            .await
            .unwrap();
        expected.push(("ext_authz", decision, *reason));
    }

    // Each call's event is written before its reply is sent, but the test's
    // reader thread may not have collected the last lines yet: wait, bounded,
    // for as many events as calls (more would fail the comparison below).
    let audit_events = || -> Vec<Value> {
        server
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["target"] == "audit")
            .collect()
    };
    let mut events = audit_events();
    for _ in 0..200 {
        if events.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        events = audit_events();
    }
    let got: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|e| {
            (
                e["rpc"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let want: Vec<(String, String, Option<String>)> = expected
        .iter()
        .map(|(r, d, why)| ((*r).to_owned(), (*d).to_owned(), why.map(str::to_owned)))
        .collect();
    assert_eq!(got, want, "one audit event per call, in order");
    for event in &events {
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .filter(|k| !matches!(*k, "target" | "level"))
            .collect();
        let mut schema = audit_fields();
        assert_eq!(schema.len(), 25, "the README's schema: {schema:?}");
        schema.sort_unstable();
        let mut keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        keys.sort_unstable();
        assert_eq!(keys, schema, "every field in every event: {event}");
        assert_eq!(event["schema"], 4);
        assert!(event["latency_us"].is_u64(), "{event}");
    }
    // The gRPC events carry the request ids the replies returned.
    let ids: Vec<&str> = events
        .iter()
        .filter(|e| e["rpc"] != "ext_authz")
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, grpc_ids.iter().map(String::as_str).collect::<Vec<_>>());
    // An allowed issue records everything the token binds; a refusal, nulls.
    let allowed = &events[0];
    assert_eq!(allowed["caller"], "alice");
    assert_eq!(allowed["caller_issuer"], "https://idp.test.example");
    assert_eq!(allowed["rule"], "team rooms");
    assert_eq!(allowed["project"], "main");
    assert_eq!(allowed["channel"], "team-blue-a");
    assert_eq!(allowed["identity"], "4242");
    assert_eq!(allowed["role"], "publisher");
    assert_eq!(allowed["services"], "rtc");
    assert_eq!(allowed["token"], issued.token_fingerprint.as_str());
    assert_eq!(allowed["expires_at"], issued.expires_at.unwrap().seconds);
    assert!(allowed["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(allowed["authenticated_by"], "jwt");
    assert_eq!(allowed["peer_identity_source"], Value::Null);
    let unauthenticated = &events[2];
    assert_eq!(unauthenticated["caller"], Value::Null);
    assert_eq!(unauthenticated["token"], Value::Null);
    let routed = &events[7];
    assert_eq!(routed["route"], "/rooms/{channel}/join");
    assert_eq!(routed["decision"], "allow");
    // No audit line holds the JWT or the token.
    let all = server.logs().join("\n");
    assert!(!all.contains(&member) && !all.contains(&issued.token));
}

/// Captures the log lines written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Captured {
    type Writer = Captured;
    fn make_writer(&'w self) -> Captured {
        self.clone()
    }
}

/// A server bug (here: the rules name a project the gate was not given, a
/// wiring mistake no caller can cause) is INTERNAL with the request id and
/// logged at error level, never INVALID_ARGUMENT on a field the caller did
/// not even send.
#[tokio::test]
async fn a_server_bug_is_internal_and_logged_never_the_callers_fault() {
    use std::sync::Arc;
    use tokengate::pipeline::Pipeline;
    use tokengate::server::{Readiness, ServeOptions};

    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(logs.clone())
        .finish();
    // The test's runtime has one thread, so the server's tasks log through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let es256 = TestKey::generate(jsonwebtoken::Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let config = tokengate::config::load(
        &config_text(&jwks.jwks_url(), &rules()),
        &support::server::test_env,
    )
    .unwrap()
    .into_parts();
    let authenticator =
        Arc::new(tokengate::identity::Authenticator::start(config.issuers).unwrap());
    authenticator.wait_ready().await;
    // The bug: no projects, although the rules sign with "main".
    let gate = Arc::new(tokengate::gate::Gate::new(Vec::new(), config.policy));
    let pipeline = Arc::new(Pipeline::new(gate, authenticator, None));
    let api = tokengate::grpc::service::Api::new(pipeline);
    let routes =
        tonic::service::Routes::new(pb::token_service_server::TokenServiceServer::new(api));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let readiness = Readiness::new();
    readiness.set(true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tokengate::server::run(
        tokengate::server::Listeners::new(grpc, admin),
        routes,
        readiness,
        ServeOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let mut client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let jwt = es256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));
    let status = client
        .issue_rtc_token(TestServer::authed(
            &jwt,
            rtc("team-blue-a", pb::Role::Subscriber),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let details = status.get_error_details();
    assert!(
        details.bad_request().is_none(),
        "never blamed on a field: {status:?}"
    );
    assert_eq!(details.error_info().unwrap().reason, "internal");
    let request_id = details.request_info().unwrap().request_id.clone();
    assert_eq!(
        status.message(),
        format!("internal error; request id {request_id}")
    );
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let errors: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(errors[0]["request_id"], request_id.as_str());
    assert_eq!(errors[0]["message"], "internal error");
    assert!(
        errors[0]["error"].as_str().unwrap().contains("\"main\""),
        "the log says what broke: {}",
        errors[0]
    );
    // The audit event says `error`, with the same request id.
    let audit: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["decision"] == "error")
        .collect();
    assert_eq!(audit.len(), 1, "{text}");
    assert_eq!(audit[0]["request_id"], request_id.as_str());
    assert!(!text.contains(&jwt), "no JWT in the logs");
}
