//! Workload identity in rules, against a real server on 127.0.0.1:0 with
//! certificates made here (rcgen): a client certificate's SPIFFE ID reaching
//! `peer_spiffe_id` and `authenticate = "mtls"` with no JWT; `jwt+mtls`; a JWT
//! caller never matching an mtls rule; trusted proxies by CIDR and by SPIFFE
//! ID forwarding `x-forwarded-client-cert` (only the last element counts, a
//! malformed one is INVALID_ARGUMENT), the same header from an untrusted peer
//! ignored; ext_authz's `attributes.source` trusted or not; the audit
//! event's `authenticated_by` and `peer_identity_source`; and a Python grpcio
//! client over mTLS without a JWT.

use crate::support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::authz::{self, envoy_check, verdict};
use support::binary::{Running, loopback};
use support::certs::{Ca, Leaf, TlsFiles, tls_channel};
use support::fixtures::{rtc, rtc_uid};
use support::server::{TestServer, config_text, test_keys};
use support::tools::{blocking, python_path, run};
use tokengate::grpc::pb;
use tokengate::grpc::pb::issued_token::Identity;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const BACKEND: &str = "spiffe://corp.example/ns/backend/sa/api";
const BILLING: &str = "spiffe://corp.example/ns/billing/sa/api";
const WORKER: &str = "spiffe://corp.example/ns/backend/sa/worker";
const PROXY: &str = "spiffe://corp.example/ns/edge/sa/envoy";

/// A backend minting for the users it names, by mesh identity alone; users
/// with a client certificate; users; and an explain rule for workloads.
const RULES: &str = r#"
[[rules]]
name = "backend mints"
actions = ["rtc"]
channel = "svc-{room}"
peer_spiffe_id = "spiffe://corp.example/ns/{ns}/sa/api"
authenticate = "mtls"
condition = 'captures.ns == "backend"'
project = "main"
caller_chooses_identity = true

[[rules]]
name = "users over mtls"
actions = ["rtc"]
channel = "both-*"
authenticate = "jwt+mtls"
project = "main"
account_claim = "sub"

[[rules]]
name = "users"
actions = ["rtc"]
channel = "room-*"
project = "main"
account_claim = "sub"

[[rules]]
name = "workloads explain"
actions = ["explain"]
authenticate = "mtls"
"#;

/// The ErrorInfo reason and rule of a refusal with `code`.
fn reason(status: &tonic::Status, code: Code) -> (String, Option<String>) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    (info.reason.clone(), info.metadata.get("rule").cloned())
}

/// The BadRequest fields of an INVALID_ARGUMENT.
fn violations(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad = details
        .bad_request()
        .unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    bad.field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

/// `IssueRtcToken` over `channel` with an optional JWT and XFCC header.
async fn issue(
    channel: &Channel,
    message: pb::IssueRtcTokenRequest,
    jwt: Option<&str>,
    xfcc: Option<&str>,
) -> Result<pb::IssuedToken, tonic::Status> {
    let mut request = match jwt {
        Some(jwt) => TestServer::authed(jwt, message),
        None => tonic::Request::new(message),
    };
    if let Some(value) = xfcc {
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", value.parse().unwrap());
    }
    TokenServiceClient::new(channel.clone())
        .issue_rtc_token(request)
        .await
        .map(|reply| reply.into_inner().issued.unwrap())
}

/// The rule and the uid (or account) of an issued token.
fn granted(issued: &pb::IssuedToken) -> (String, String) {
    let identity = match &issued.identity {
        Some(Identity::Uid(uid)) => format!("uid:{uid}"),
        Some(Identity::Account(account)) => format!("account:{account}"),
        other => format!("{other:?}"),
    };
    (issued.matched_rule.clone(), identity)
}

/// A test server with `RULES` and `extra` config (TLS, trusted proxies).
async fn start(extra: &str) -> TestServer {
    let (jwks, es256, rs256) = test_keys().await;
    let text = config_text(&jwks.jwks_url(), RULES) + extra;
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    server
}

/// A plaintext channel to `server`.
async fn plain(server: &TestServer) -> Channel {
    server.channel().await
}

#[tokio::test]
async fn a_workloads_spiffe_id_reaches_the_rules_with_or_without_a_jwt() {
    let ca = Ca::new("workload CA");
    let files = TlsFiles::new(&ca);
    let server = start(&files.section("optional")).await;
    let jwt = server.mint("alice", json!({}));
    let backend = ca.client(BACKEND, "api.backend.svc");
    let as_backend = tls_channel(server.addr, &ca, Some(&backend)).await;
    let as_billing = tls_channel(
        server.addr,
        &ca,
        Some(&ca.client(BILLING, "api.billing.svc")),
    )
    .await;
    let as_worker = tls_channel(
        server.addr,
        &ca,
        Some(&ca.client(WORKER, "worker.backend.svc")),
    )
    .await;
    let no_certificate = tls_channel(server.addr, &ca, None).await;

    // authenticate = "mtls": no JWT, the workload names the user.
    let issued = issue(
        &as_backend,
        rtc_uid("svc-1", pb::Role::Subscriber, 42),
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        granted(&issued),
        ("backend mints".to_owned(), "uid:42".to_owned())
    );
    // Another workload's SPIFFE ID: its capture fails the condition, or it
    // does not fit the pattern at all.
    for other in [&as_billing, &as_worker] {
        let status = issue(
            other,
            rtc_uid("svc-1", pb::Role::Subscriber, 42),
            None,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(
            reason(&status, Code::PermissionDenied),
            ("no_matching_rule".into(), None)
        );
    }
    // The workload must name the user: nothing binds one from a JWT.
    let status = issue(&as_backend, rtc("svc-1", pb::Role::Subscriber), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied),
        ("identity_required".into(), Some("backend mints".into()))
    );
    // A workload without a JWT never reaches a jwt rule.
    let status = issue(&as_backend, rtc("room-1", pb::Role::Subscriber), None, None)
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied),
        ("authentication_not_accepted".into(), Some("users".into()))
    );
    // A JWT caller without a certificate never matches the mtls rule.
    let status = issue(
        &no_certificate,
        rtc_uid("svc-1", pb::Role::Subscriber, 42),
        Some(&jwt),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied),
        (
            "authentication_not_accepted".into(),
            Some("backend mints".into())
        )
    );
    // jwt+mtls: both, or refused.
    let issued = issue(
        &as_backend,
        rtc("both-1", pb::Role::Subscriber),
        Some(&jwt),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        granted(&issued),
        ("users over mtls".to_owned(), "account:alice".to_owned())
    );
    for (channel, jwt) in [(&no_certificate, Some(jwt.as_str())), (&as_backend, None)] {
        let status = issue(channel, rtc("both-1", pb::Role::Subscriber), jwt, None)
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status, Code::PermissionDenied),
            (
                "authentication_not_accepted".into(),
                Some("users over mtls".into())
            )
        );
    }
    // Neither a JWT nor a certificate: unauthenticated, as ever.
    let status = issue(
        &no_certificate,
        rtc("room-1", pb::Role::Subscriber),
        None,
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    // A JWT caller over mTLS keeps its jwt rules; a bad JWT is never
    // ignored in favour of the certificate.
    let issued = issue(
        &as_backend,
        rtc("room-1", pb::Role::Subscriber),
        Some(&jwt),
        None,
    )
    .await
    .unwrap();
    assert_eq!(granted(&issued).0, "users");
    let status = issue(
        &as_backend,
        rtc_uid("svc-1", pb::Role::Subscriber, 42),
        Some("not.a.jwt"),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // ExplainAccess for a workload says why the jwt rule did not apply.
    let explained = TokenServiceClient::new(as_backend.clone())
        .explain_access(pb::ExplainAccessRequest {
            request: Some(pb::explain_access_request::Request::Rtc(rtc(
                "room-1",
                pb::Role::Subscriber,
            ))),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        explained.deny_reason, "authentication_not_accepted",
        "{explained:?}"
    );
    let users = explained.trace.iter().find(|t| t.rule == "users").unwrap();
    assert!(!users.matched);
    assert!(
        users.detail.contains("authentication_not_accepted")
            && users.detail.contains("\"jwt\"")
            && users.detail.contains("mtls"),
        "{users:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn without_an_mtls_rule_a_certificate_does_not_replace_the_jwt() {
    let ca = Ca::new("workload CA");
    let files = TlsFiles::new(&ca);
    let (jwks, es256, rs256) = test_keys().await;
    let rules = "[[rules]]\nname = \"users\"\nactions = [\"rtc\"]\nproject = \"main\"\naccount_claim = \"sub\"\n";
    let text = config_text(&jwks.jwks_url(), rules) + &files.section("required");
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let channel = tls_channel(
        server.addr,
        &ca,
        Some(&ca.client(BACKEND, "api.backend.svc")),
    )
    .await;
    let status = issue(&channel, rtc("room-1", pb::Role::Subscriber), None, None)
        .await
        .unwrap_err();
    assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    server.shutdown().await;
}

/// An XFCC header whose last element (the nearest proxy's) names `uri`,
/// after an element a client forged naming `forged`.
fn xfcc(forged: &str, uri: &str) -> String {
    format!(
        "By=spiffe://corp.example/ns/app/sa/app;URI={forged};Subject=\"CN=forged, O=x\",By={PROXY};Hash=ab12;Subject=\"CN=api\";URI={uri};DNS=api.backend.svc"
    )
}

#[tokio::test]
async fn a_trusted_proxys_last_xfcc_element_reaches_the_rules() {
    let server = start("\n[server.trusted_proxy]\ncidrs = [\"127.0.0.1/32\"]\n").await;
    let channel = plain(&server).await;
    let request = || rtc_uid("svc-1", pb::Role::Subscriber, 42);

    let issued = issue(&channel, request(), None, Some(&xfcc(BILLING, BACKEND)))
        .await
        .unwrap();
    assert_eq!(
        granted(&issued),
        ("backend mints".to_owned(), "uid:42".to_owned())
    );
    // Only the last element counts: a forged earlier one is never read.
    let status = issue(&channel, request(), None, Some(&xfcc(BACKEND, BILLING)))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied).0,
        "no_matching_rule"
    );
    // Malformed from a trusted proxy: refused, naming the header, never half-read.
    for bad in [
        format!("URI=\"{BACKEND}"),
        format!("{},", xfcc(BILLING, BACKEND)),
        format!("By={PROXY};URI={BACKEND};;DNS=x"),
        "URI=spiffe://Corp.example/ns/backend/sa/api".to_owned(),
    ] {
        let status = issue(&channel, request(), None, Some(&bad))
            .await
            .unwrap_err();
        assert_eq!(violations(&status), ["x-forwarded-client-cert"], "{bad}");
    }
    // Without the header, the proxy's callers have no workload identity.
    let status = issue(&channel, request(), None, None).await.unwrap_err();
    assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    server.shutdown().await;
}

#[tokio::test]
async fn xfcc_from_a_peer_outside_the_cidrs_is_ignored() {
    let server = start("\n[server.trusted_proxy]\ncidrs = [\"10.0.0.0/8\", \"::1/128\"]\n").await;
    let channel = plain(&server).await;
    let jwt = server.mint("alice", json!({}));
    let status = issue(
        &channel,
        rtc_uid("svc-1", pb::Role::Subscriber, 42),
        None,
        Some(&xfcc(BILLING, BACKEND)),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    // Not even parsed: a malformed header from an untrusted peer changes nothing.
    let issued = issue(
        &channel,
        rtc("room-1", pb::Role::Subscriber),
        Some(&jwt),
        Some("URI=\"x"),
    )
    .await
    .unwrap();
    assert_eq!(granted(&issued).0, "users");
    // With a JWT, a forged XFCC does not make the caller a workload either.
    let status = issue(
        &channel,
        rtc("both-1", pb::Role::Subscriber),
        Some(&jwt),
        Some(&xfcc(BACKEND, BACKEND)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied).0,
        "authentication_not_accepted"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_proxy_trusted_by_its_spiffe_id_and_one_that_is_not() {
    let ca = Ca::new("mesh CA");
    let files = TlsFiles::new(&ca);
    let section = format!(
        "{}\n[server.trusted_proxy]\nspiffe_ids = [\"spiffe://corp.example/ns/edge/sa/*\"]\n",
        files.section("required")
    );
    let server = start(&section).await;
    let proxy = tls_channel(server.addr, &ca, Some(&ca.client(PROXY, "envoy.edge.svc"))).await;
    let billing = tls_channel(
        server.addr,
        &ca,
        Some(&ca.client(BILLING, "api.billing.svc")),
    )
    .await;
    let request = || rtc_uid("svc-1", pb::Role::Subscriber, 42);

    let issued = issue(&proxy, request(), None, Some(&xfcc(BILLING, BACKEND)))
        .await
        .unwrap();
    assert_eq!(granted(&issued).0, "backend mints");
    // The proxy's own certificate never stands for its callers.
    let status = issue(&proxy, request(), None, None).await.unwrap_err();
    assert_eq!(reason(&status, Code::Unauthenticated).0, "missing");
    // A peer whose SPIFFE ID is not listed is itself the caller: its
    // header naming the backend is ignored, and billing is not the backend.
    let status = issue(&billing, request(), None, Some(&xfcc(BACKEND, BACKEND)))
        .await
        .unwrap_err();
    assert_eq!(
        reason(&status, Code::PermissionDenied).0,
        "no_matching_rule"
    );
    server.shutdown().await;
}

/// The `[ext_authz]` routes, with `trusted` as the trusted proxy section.
async fn ext_authz_server(trusted: &str) -> TestServer {
    let rules = r#"
[[rules]]
name = "frontend mints"
actions = ["rtc"]
channel = "room-{room}"
peer_spiffe_id = "spiffe://cluster.local/ns/web/sa/frontend"
authenticate = "mtls"
condition = 'peer.address == "10.8.3.17"'
project = "main"
caller_chooses_identity = true
"#;
    let server = authz::start(rules, &(authz::ext_authz_section("") + trusted)).await;
    server.wait_ready().await;
    server
}

/// A Check for `/rooms/room-1/join` as uid 42 from `principal`.
fn check_from(
    principal: &str,
    address: &str,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    let mut check = envoy_check("GET", "/rooms/room-1/join", &[("x-agora-uid", "42")]);
    let source = check
        .attributes
        .as_mut()
        .and_then(|a| a.source.as_mut())
        .unwrap();
    source.principal = principal.to_owned();
    if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(socket)) =
        source.address.as_mut().and_then(|a| a.address.as_mut())
    {
        socket.address = address.to_owned();
    }
    check
}

#[tokio::test]
async fn ext_authz_reads_the_source_principal_only_from_a_trusted_envoy() {
    let frontend = "spiffe://cluster.local/ns/web/sa/frontend";
    let trusted = ext_authz_server("\n[server.trusted_proxy]\ncidrs = [\"127.0.0.1/32\"]\n").await;
    let mut client = authz::client(&trusted).await;
    let ok = verdict(
        client
            .check(check_from(frontend, "10.8.3.17"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(
        ok.set_header("x-agora-uid").map(|(v, _)| v),
        Some("42"),
        "{ok:?}"
    );
    assert_eq!(
        ok.set_header("x-agora-rule").map(|(v, _)| v),
        Some("frontend mints"),
        "{ok:?}"
    );
    // Another workload, or the right one from another address (peer.address).
    for check in [
        check_from("spiffe://cluster.local/ns/web/sa/other", "10.8.3.17"),
        check_from(frontend, "10.8.3.18"),
    ] {
        let denied = verdict(client.check(check).await.unwrap().into_inner());
        assert_eq!(denied.denial(), (403, "no_matching_rule".into()));
    }
    // A malformed source from a trusted Envoy is the request's fault.
    let bad = verdict(
        client
            .check(check_from(frontend, "not-an-ip"))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(bad.denial(), (400, "invalid_request".into()));
    trusted.shutdown().await;

    // Untrusted (or no [server.trusted_proxy]): the source is never read, and
    // Envoy's own connection is not the request's client.
    for section in ["\n[server.trusted_proxy]\ncidrs = [\"10.0.0.0/8\"]\n", ""] {
        let untrusted = ext_authz_server(section).await;
        let denied = verdict(
            authz::client(&untrusted)
                .await
                .check(check_from(frontend, "10.8.3.17"))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(denied.denial(), (401, "missing".into()), "{section:?}");
        untrusted.shutdown().await;
    }
}

/// The `IssueRtcToken` audit events in the binary's logs, once there are
/// at least `count` (the log writer writes them after the reply; at most 10 s).
async fn audit_events(server: &Running, count: usize) -> Vec<Value> {
    let read = || -> Vec<Value> {
        server
            .logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|e| e["target"] == "audit" && e["rpc"] == "IssueRtcToken")
            .collect()
    };
    for _ in 0..200 {
        let events = read();
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read()
}

/// A client's PEM files for Python.
struct PemFiles {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn pem_files(ca: &Ca, leaf: &Leaf) -> PemFiles {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    PemFiles {
        ca: write("ca.pem", &ca.pem()),
        cert: write("client.pem", &leaf.cert),
        key: write("client.key", &leaf.key),
        _dir: dir,
    }
}

#[tokio::test]
async fn the_audit_event_says_how_the_caller_authenticated_and_python_calls_without_a_jwt() {
    let (jwks, es256, _rs256) = test_keys().await;
    let ca = Ca::new("mesh CA");
    let files = TlsFiles::new(&ca);
    let config = loopback(&config_text(&jwks.jwks_url(), RULES))
        + &files.section("optional")
        + &format!("\n[server.trusted_proxy]\nspiffe_ids = [{PROXY:?}]\n");
    let server = Running::start_config(&config);
    server.wait_ready().await;
    let addr = server.grpc_addr();
    let jwt = es256.mint(&TestServer::claims("alice", json!({})));
    let backend_leaf = ca.client(BACKEND, "api.backend.svc");
    let backend = tls_channel(addr, &ca, Some(&backend_leaf)).await;
    let proxy = tls_channel(addr, &ca, Some(&ca.client(PROXY, "envoy.edge.svc"))).await;
    let anonymous = tls_channel(addr, &ca, None).await;

    issue(
        &backend,
        rtc_uid("svc-1", pb::Role::Subscriber, 42),
        None,
        None,
    )
    .await
    .unwrap();
    issue(
        &anonymous,
        rtc("room-1", pb::Role::Subscriber),
        Some(&jwt),
        None,
    )
    .await
    .unwrap();
    issue(
        &backend,
        rtc("both-1", pb::Role::Subscriber),
        Some(&jwt),
        None,
    )
    .await
    .unwrap();
    issue(
        &proxy,
        rtc_uid("svc-1", pb::Role::Subscriber, 7),
        None,
        Some(&xfcc(BILLING, BACKEND)),
    )
    .await
    .unwrap();
    let events = audit_events(&server, 4).await;
    let seen: Vec<(Value, Value, Value, Value)> = events
        .iter()
        .map(|e| {
            (
                e["authenticated_by"].clone(),
                e["peer_identity_source"].clone(),
                e["peer_identity"].clone(),
                e["caller"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (json!("mtls"), json!("tls"), json!(BACKEND), Value::Null),
            (json!("jwt"), Value::Null, Value::Null, json!("alice")),
            (
                json!("jwt+mtls"),
                json!("tls"),
                json!(BACKEND),
                json!("alice")
            ),
            (json!("mtls"), json!("xfcc"), json!(BACKEND), Value::Null),
        ],
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e["schema"] == 4), "{events:?}");

    // Python grpcio over mTLS, no JWT: the backend's SPIFFE ID is allowed,
    // billing's is denied.
    let python = |leaf: &Leaf| {
        let pem = pem_files(&ca, leaf);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
        let mut command = Command::new(python_path());
        command
            .arg(script)
            .arg(addr.to_string())
            .arg("IssueRtcToken")
            .arg(json!({"channel": "svc-2", "uid": 77, "role": "ROLE_SUBSCRIBER"}).to_string())
            .env("TOKENGATE_TLS_CA", &pem.ca)
            .env("TOKENGATE_TLS_CERT", &pem.cert)
            .env("TOKENGATE_TLS_KEY", &pem.key)
            .env_remove("TOKENGATE_JWT");
        (command, pem)
    };
    let (mut command, pem) = python(&backend_leaf);
    let out = blocking(move || run(&mut command)).await;
    drop(pem);
    let reply: Value = serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out:#?}"));
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["response"]["issued"]["uid"], 77, "{reply}");
    assert_eq!(
        reply["response"]["issued"]["matched_rule"], "backend mints",
        "{reply}"
    );
    let (mut command, pem) = python(&ca.client(BILLING, "api.billing.svc"));
    let out = blocking(move || run(&mut command)).await;
    drop(pem);
    let reply: Value = serde_json::from_str(out.success())
        .unwrap_or_else(|e| panic!("client.py printed no JSON ({e}): {out:#?}"));
    assert_eq!(reply["code"], "PERMISSION_DENIED", "{reply}");
    assert_eq!(reply["reason"], "no_matching_rule", "{reply}");
}
