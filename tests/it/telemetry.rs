//! Traces and request-scoped logs on the real binary.
//!
//! A real OTLP/gRPC receiver (`tests/python/otlp_receiver.py`: grpcio serving
//! the official `TraceService` from PyPI's `opentelemetry-proto`) records
//! what tokengate's exporter sends. The calls arrive with fixed W3C
//! `traceparent`s, in gRPC metadata and in an ext_authz request's HTTP
//! headers, and the test asserts that their traces were continued, the span
//! names and parent links, the resource, and that no attribute holds the JWT
//! or the issued token. The spans are read after SIGTERM, so they also show
//! that the queue is flushed at shutdown. The log tests tie a call's log
//! lines to its request id (and trace id) in both log formats.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;

use crate::support;
use support::authz::{Verdict, envoy_check, ext_authz_section, verdict};
use support::binary::{Running, loopback};
use support::fixtures::ROOMS_AND_WEBINARS;
use support::server::{TestServer, config_text};
use support::tools::python_path;
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// The caller's span of the gRPC call.
const RTC_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const RTC_PARENT: &str = "00f067aa0ba902b7";
/// The client's span of the HTTP request Envoy asks about.
const CHECK_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CHECK_PARENT: &str = "b7ad6b7169203331";
/// How long any wait of these tests may take.
const LIMIT: Duration = Duration::from_secs(30);

/// The OTLP receiver, with the spans it has printed so far.
struct Receiver {
    child: Child,
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/otlp_receiver.py");
        let mut child = Command::new(python_path())
            .arg(script)
            .arg("120")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("listening ") {
                    let _ = tx.send(port.parse::<u16>().unwrap());
                } else {
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_str(&line).unwrap());
                }
            }
        });
        let port = rx
            .recv_timeout(LIMIT)
            .expect("the OTLP receiver never said it was listening");
        Self { child, port, spans }
    }

    /// The spans received, once `done` holds for them (waiting at most [`LIMIT`]).
    async fn spans_when(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let spans = self.spans.lock().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(
                started.elapsed() < LIMIT,
                "the receiver did not get the spans in time: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The span named `name` in trace `trace_id`.
fn span<'a>(spans: &'a [Value], trace_id: &str, name: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["trace_id"] == trace_id && s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name:?} in trace {trace_id}: {spans:#?}"))
}

/// The request id a reply's or a refusal's metadata carries.
fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-request-id")
        .expect("x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts the call span `call` (named `name`, continuing `parent`) and its
/// authenticate, decide and build children.
fn assert_call_tree(spans: &[Value], trace_id: &str, parent: &str, name: &str, rule: &str) {
    let call = span(spans, trace_id, name);
    assert_eq!(call["parent_span_id"], parent, "{call:#}");
    // SPAN_KIND_SERVER.
    assert_eq!(call["kind"], 2, "{call:#}");
    assert_eq!(call["attributes"]["decision"], "allow", "{call:#}");
    assert_eq!(call["attributes"]["rule"], rule, "{call:#}");
    assert_eq!(call["attributes"]["trace_id"], trace_id, "{call:#}");
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parent_span_id"] == call["span_id"])
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for expected in ["authenticate", "decide", "build"] {
        assert!(
            names.contains(&expected),
            "{expected} under {name}: {names:?}"
        );
    }
    let child = |n: &str| children.iter().find(|s| s["name"] == n).unwrap();
    assert_eq!(child("authenticate")["attributes"]["issuer"], "test-idp");
    assert_eq!(child("authenticate")["attributes"]["outcome"], "ok");
    assert_eq!(child("decide")["attributes"]["rule"], rule);
    assert_eq!(child("decide")["attributes"]["decision"], "allow");
    assert_eq!(child("build")["attributes"]["project"], "main");
    for child in &children {
        assert_eq!(child["trace_id"], trace_id);
    }
}

#[tokio::test]
async fn a_call_continues_the_callers_trace_and_no_span_holds_a_secret() {
    let receiver = Receiver::start();
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    let config = loopback(&format!(
        "{}\n{}\n[telemetry]\nenabled = true\nendpoint = \"http://127.0.0.1:{}\"\nsampling_ratio = 1.0\nservice_name = \"tokengate-test\"\n[telemetry.resource]\n\"deployment.environment\" = \"test\"\n",
        config_text(&jwks.jwks_url(), ROOMS_AND_WEBINARS),
        ext_authz_section(""),
        receiver.port,
    ));
    // Debug for the pipeline only: a refused authentication logs a line inside the call.
    let mut server = Running::start_config_with(
        &config,
        "json",
        &[("TOKENGATE_LOG", "info,tokengate::pipeline=debug")],
    );
    server.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims(
        "alice",
        json!({"teams": ["blue"], "agora_uid": 4242}),
    ));

    // IssueRtcToken under the caller's span, in the gRPC metadata.
    let mut client = TokenServiceClient::new(server.channel().await);
    let mut request = TestServer::authed(
        &jwt,
        support::fixtures::rtc("team-blue-a", pb::Role::Subscriber),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{RTC_TRACE}-{RTC_PARENT}-01").parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "vendor=opaque".parse().unwrap());
    let reply = client.issue_rtc_token(request).await.unwrap();
    let rtc_request_id = request_id(reply.metadata());
    let issued = reply.into_inner().issued.unwrap();
    let rtc_token = issued.token.clone();

    // An ext_authz Check whose HTTP request carries the client's span.
    let mut check =
        envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(
            server.channel().await,
        );
    let bearer = format!("Bearer {jwt}");
    let traceparent = format!("00-{CHECK_TRACE}-{CHECK_PARENT}-01");
    let got = verdict(
        check
            .check(envoy_check(
                "GET",
                "/rooms/team-blue-a/join",
                &[("authorization", &bearer), ("traceparent", &traceparent)],
            ))
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(matches!(got, Verdict::Ok { .. }), "{got:?}");
    let check_token = got.set_header("x-agora-token").unwrap().0.to_owned();

    // A call without a traceparent starts a trace of its own.
    let refused = client
        .issue_rtc_token(tonic::Request::new(support::fixtures::rtc(
            "team-blue-a",
            pb::Role::Subscriber,
        )))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused_request_id = request_id(refused.metadata());

    // The spans still queued are flushed at shutdown.
    server.signal("TERM");
    assert!(server.exit_within(LIMIT).await.success());
    let rtc_name = "tokengate.v1.TokenService/IssueRtcToken";
    let check_name = "envoy.service.auth.v3.Authorization/Check";
    let spans = receiver
        .spans_when(|spans| {
            let calls = spans.iter().filter(|s| s["name"] == rtc_name).count();
            calls >= 2 && spans.iter().any(|s| s["name"] == check_name)
        })
        .await;

    assert_call_tree(
        &spans,
        RTC_TRACE,
        RTC_PARENT,
        rtc_name,
        &issued.matched_rule,
    );
    let rtc_call = span(&spans, RTC_TRACE, rtc_name);
    assert_eq!(rtc_call["attributes"]["request_id"], rtc_request_id);
    assert_eq!(rtc_call["attributes"]["rpc"], "IssueRtcToken");
    assert_call_tree(
        &spans,
        CHECK_TRACE,
        CHECK_PARENT,
        check_name,
        &issued.matched_rule,
    );
    assert_eq!(
        span(&spans, CHECK_TRACE, check_name)["attributes"]["rpc"],
        "ext_authz"
    );

    let root = spans
        .iter()
        .find(|s| s["name"] == rtc_name && s["attributes"]["request_id"] == refused_request_id)
        .unwrap_or_else(|| panic!("no span of the refused call: {spans:#?}"));
    assert_eq!(root["parent_span_id"], "", "{root:#}");
    assert_ne!(root["trace_id"], RTC_TRACE);
    assert_eq!(root["attributes"]["decision"], "unauthenticated");
    assert_eq!(root["attributes"]["reason"], "missing");
    let root_trace = root["trace_id"].as_str().unwrap().to_owned();

    // The key fetch at start-up is a span with its URL, and the key count.
    let fetch = spans
        .iter()
        .find(|s| s["name"] == "jwks.fetch")
        .unwrap_or_else(|| panic!("no jwks.fetch span: {spans:#?}"));
    assert_eq!(fetch["attributes"]["url"], jwks.jwks_url());
    assert_eq!(fetch["attributes"]["keys"], 2);

    for span in &spans {
        assert_eq!(span["service"], "tokengate-test", "{span:#}");
        assert_eq!(span["resource"]["deployment.environment"], "test");
    }
    // No attribute (nor span event) holds a secret, whole or in part.
    let everything = serde_json::to_string(&spans).unwrap();
    let signature = jwt.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("the JWT", jwt.as_str()),
        ("the JWT's signature", signature),
        ("the issued token", rtc_token.as_str()),
        ("the token ext_authz forwarded", check_token.as_str()),
        ("the App Certificate", support::server::PRIMARY_CERT),
    ] {
        assert!(!everything.contains(secret), "{what} is in a span");
    }

    // The refused call's log line names its request id and its trace.
    let logs = server
        .logs_once(|line| line.contains("authentication refused"))
        .await;
    let line = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "authentication refused")
        .unwrap_or_else(|| panic!("no log line of the refused call: {logs:#?}"));
    let call = &line["spans"][0];
    assert_eq!(call["name"], "call", "{line}");
    assert_eq!(call["request_id"], refused_request_id, "{line}");
    assert_eq!(call["trace_id"], root_trace.as_str(), "{line}");
    assert_eq!(line["spans"][1]["name"], "authenticate", "{line}");
}

#[tokio::test]
async fn text_log_lines_of_a_call_carry_its_request_id() {
    let (jwks, _es256, _rs256) = support::server::test_keys().await;
    let config = loopback(&config_text(&jwks.jwks_url(), ROOMS_AND_WEBINARS));
    let server = Running::start_config_with(
        &config,
        "text",
        &[("TOKENGATE_LOG", "info,tokengate::pipeline=debug")],
    );
    server.wait_ready().await;
    let mut client = TokenServiceClient::new(server.channel().await);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let refused = client
            .issue_rtc_token(tonic::Request::new(support::fixtures::rtc(
                "team-blue-a",
                pb::Role::Subscriber,
            )))
            .await
            .unwrap_err();
        ids.push(request_id(refused.metadata()));
    }
    assert_ne!(ids[0], ids[1]);
    let started = Instant::now();
    loop {
        let logs = server.logs();
        let lines: Vec<&String> = logs
            .iter()
            .filter(|l| l.contains("authentication refused"))
            .collect();
        if lines.len() == 2 {
            for (line, id) in lines.iter().zip(&ids) {
                assert!(line.contains(&format!("request_id={id}")), "{line}");
                assert!(line.contains("call{"), "{line}");
                // Tracing is off: no trace id to name.
                assert!(!line.contains("trace_id"), "{line}");
            }
            break;
        }
        assert!(started.elapsed() < LIMIT, "{logs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `check-config` on `telemetry` (a `[telemetry]` table) with the environment `env`.
fn check_config(telemetry: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    let text = format!(
        "{}\n{telemetry}",
        config_text("http://127.0.0.1:1/jwks", ROOMS_AND_WEBINARS)
    );
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check-config", path.to_str().unwrap()])
        .env_clear()
        .env("TEST_PRIMARY_CERT", support::server::PRIMARY_CERT)
        .env("TEST_SECONDARY_CERT", support::server::SECONDARY_CERT)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_a_bad_telemetry_key_or_variable_and_prints_the_settings() {
    // The `[telemetry]` text, the environment, and what the error names.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 5] = [
        ("[telemetry]\nbogus = 1\n", &[], "telemetry.bogus:"),
        (
            "[telemetry]\nenabled = true\nsampling_ratio = 1.5\n",
            &[],
            "telemetry.sampling_ratio:",
        ),
        (
            "[telemetry]\nenabled = true\nendpoint = \"http://c:4318/v1/traces\"\n",
            &[],
            "telemetry.endpoint:",
        ),
        (
            "[telemetry]\nenabled = true\n",
            &[("OTEL_TRACES_SAMPLER_ARG", "most")],
            "OTEL_TRACES_SAMPLER_ARG:",
        ),
        (
            "[telemetry]\nenabled = true\n[telemetry.resource]\nteam = 1\n",
            &[],
            "telemetry.resource.team:",
        ),
    ];
    for (telemetry, env, key) in cases {
        let (code, stdout, stderr) = check_config(telemetry, env);
        assert_eq!(code, Some(64), "{telemetry}: {stdout}{stderr}");
        assert!(stderr.contains(key), "{telemetry}: {stderr}");
    }
    let (code, stdout, stderr) = check_config("", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("telemetry: off"), "{stdout}");
    // The environment fills in what the file leaves unset.
    let (code, stdout, stderr) = check_config(
        "[telemetry]\nenabled = true\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "gate-eu"),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(
            "telemetry: OTLP/gRPC to http://collector:4317, sampling 0.25, service \"gate-eu\""
        ),
        "{stdout}"
    );
}
