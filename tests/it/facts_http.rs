//! Facts from a real HTTP JSON service (`support::fact_server`, hyper on
//! loopback): a rule that lets ticket holders into an event's channel,
//! through the real server over gRPC.
//!
//! What is proved against the wire, not a mock: each templated URL part
//! arrives percent-encoded (a capture full of `?#%&` or a subject with `/`
//! stays one path segment, and one that is `..` is refused, never resolved
//! to another path), the fixed headers and the secret arrive, a POST
//! sends its JSON body; the cache, the negative cache (a 404) and the
//! error cache each spare the service a request; a slow, huge, non-JSON,
//! failing or redirecting service fails closed with `fact_unavailable` and
//! says why in ExplainAccess; a service that went away and came back needs
//! no restart; and the real binary, logging at debug, never writes the
//! secret while it does write why a fetch failed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tonic::Code;

use crate::support;
use support::binary::{Running, loopback};
use support::calls::{denied_reason, eventually, explain_rtc, issue_rtc, refusal};
use support::fixtures::rtc;
use support::server::{TestServer, config_text, test_keys};
use support::{FactServer, Reply};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// Anyone may explain; a caller with a ticket (any non-null answer) joins
/// the event's channel as their `agora_uid`.
const RULES: &str = r#"
[[rules]]
name = "explainers"
actions = ["explain"]

[[rules]]
name = "ticket holders"
actions = ["rtc"]
channel = "event-{event}"
condition = 'facts.ticket != null'
project = "main"
uid_claim = "agora_uid"
"#;

/// The rule that reads the fact, as traces and denials name it.
const RULE: &str = "ticket holders";

/// The `ticket` fact at `url` (a template), with `extra` keys.
fn fact(url: &str, extra: &str) -> String {
    format!(
        r#"
[[facts]]
name = "ticket"
kind = "http"
url = "{url}"
{extra}
"#
    )
}

/// `{server}/t/{captures.event}`: one path per channel, for tests that
/// script a different answer per case.
fn by_event(service: &FactServer) -> String {
    format!("{}/t/{{captures.event}}", service.url())
}

async fn start(facts: &str) -> TestServer {
    let (jwks, es256, rs256) = test_keys().await;
    let text = format!("{}{facts}", config_text(&jwks.jwks_url(), RULES));
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    server
}

async fn issue(
    server: &TestServer,
    sub: &str,
    channel: &str,
) -> Result<pb::IssueRtcTokenResponse, tonic::Status> {
    let jwt = server.mint(sub, json!({"agora_uid": 42}));
    issue_rtc(server, &jwt, channel, pb::Role::Subscriber).await
}

/// Asserts `result` is `fact_unavailable` naming the fact and the rule.
fn assert_unavailable(result: Result<pb::IssueRtcTokenResponse, tonic::Status>, case: &str) {
    let status = result.expect_err(case);
    let (reason, metadata) = refusal(&status, Code::PermissionDenied);
    assert_eq!(reason, "fact_unavailable", "{case}");
    assert_eq!(
        metadata.get("fact").map(String::as_str),
        Some("ticket"),
        "{case}"
    );
    assert_eq!(
        metadata.get("rule").map(String::as_str),
        Some(RULE),
        "{case}"
    );
}

async fn explain(server: &TestServer, sub: &str, channel: &str) -> pb::ExplainAccessResponse {
    explain_rtc(server, &server.mint(sub, json!({"agora_uid": 42})), channel).await
}

/// The `ticket` fact as the ticket rule's trace shows it.
fn ticket_trace(reply: &pb::ExplainAccessResponse) -> pb::FactTrace {
    let rule = reply
        .trace
        .iter()
        .find(|r| r.rule == RULE)
        .unwrap_or_else(|| panic!("no trace of {RULE}: {reply:?}"));
    assert_eq!(rule.facts.len(), 1, "{rule:?}");
    assert_eq!(rule.facts[0].name, "ticket");
    rule.facts[0].clone()
}

/// A file in `dir` holding `secret` (with the newline an editor leaves).
fn secret_file(dir: &tempfile::TempDir, secret: &str) -> std::path::PathBuf {
    let path = dir.path().join("fact-secret");
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

#[tokio::test]
async fn each_url_part_is_encoded_and_the_headers_and_secret_arrive() {
    let service = FactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "file-secret-7f3a";
    let url = format!(
        "{}/events/{{captures.event}}/tickets/{{caller.subject}}",
        service.url()
    );
    let extra = format!(
        "headers = {{ \"x-tenant\" = \"acme\" }}\nsecret_file = \"{}\"",
        secret_file(&dir, secret).display()
    );
    let server = start(&fact(&url, &extra)).await;
    // Every Agora channel character that means something in a URL.
    let capture = "a b?#%&+=;:@[]!$()<>^{}|~,";
    let subject = "team/alice";
    let path = "/events/a%20b%3F%23%25%26%2B%3D%3B%3A%40%5B%5D%21%24%28%29%3C%3E%5E%7B%7D%7C~%2C/tickets/team%2Falice";
    service.respond(path, Reply::json(200, json!({"seat": "A1"})));
    let channel = format!("event-{capture}");
    let granted = issue(&server, subject, &channel).await.unwrap();
    assert!(!granted.issued.unwrap().token.is_empty());
    let requests = service.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let request = &requests[0];
    assert_eq!(request.method, "GET");
    assert_eq!(request.path, path);
    // Nothing escaped its segment: no query, no extra segment.
    assert_eq!(request.query, None, "{request:?}");
    assert_eq!(request.path.split('/').count(), 5, "{request:?}");
    assert_eq!(request.header("x-tenant"), Some("acme"));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {secret}").as_str())
    );
    assert_eq!(request.header("accept"), Some("application/json"));
    // The trace shows the inputs as rendered, before encoding.
    let trace = ticket_trace(&explain(&server, subject, &channel).await);
    assert_eq!(trace.inputs, vec![capture, subject]);
    assert_eq!(trace.value_json, r#"{"seat":"A1"}"#);
    // A caller without a ticket (the service's 404) is not let in.
    assert_eq!(
        denied_reason(issue(&server, "team/bob", &channel).await),
        "no_matching_rule"
    );
    assert_eq!(
        service.requests()[1].path,
        "/events/a%20b%3F%23%25%26%2B%3D%3B%3A%40%5B%5D%21%24%28%29%3C%3E%5E%7B%7D%7C~%2C/tickets/team%2Fbob"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_secret_goes_in_the_configured_header_with_the_configured_prefix() {
    let service = FactServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = "key-41c9";
    let extra = format!(
        "secret_file = \"{}\"\nsecret_header = \"X-Api-Key\"\nsecret_prefix = \"Token \"",
        secret_file(&dir, secret).display()
    );
    let server = start(&fact(&by_event(&service), &extra)).await;
    service.respond("/t/e1", Reply::json(200, json!(true)));
    issue(&server, "alice", "event-e1").await.unwrap();
    let requests = service.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("x-api-key"),
        Some(format!("Token {secret}").as_str())
    );
    // Only there: not also as the default header.
    assert_eq!(requests[0].header("authorization"), None);
    server.shutdown().await;
}

#[tokio::test]
async fn a_post_fact_sends_its_json_body() {
    let service = FactServer::start().await;
    let url = format!("{}/lookup", service.url());
    let extra =
        "method = \"POST\"\nbody = { room = \"{captures.event}\", who = \"{caller.subject}\" }";
    let server = start(&fact(&url, extra)).await;
    service.respond("/lookup", Reply::json(200, json!({"ok": 1})));
    let capture = "r 1&x={}";
    issue(&server, "alice", &format!("event-{capture}"))
        .await
        .unwrap();
    let requests = service.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/lookup");
    assert_eq!(request.query, None);
    assert!(
        request
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{request:?}"
    );
    // The values are JSON strings, however they are spelled.
    assert_eq!(
        request.json(),
        Some(json!({"room": capture, "who": "alice"})),
        "{:?}",
        String::from_utf8_lossy(&request.body)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_cached_answer_spares_the_service_until_the_ttl_ends() {
    let service = FactServer::start().await;
    let server = start(&fact(&by_event(&service), "ttl = \"1s\"")).await;
    service.respond("/t/e1", Reply::json(200, json!({"seat": 1})));
    issue(&server, "alice", "event-e1").await.unwrap();
    assert_eq!(service.count("/t/e1"), 1);
    issue(&server, "alice", "event-e1").await.unwrap();
    assert_eq!(service.count("/t/e1"), 1, "the second call asked again");
    let trace = ticket_trace(&explain(&server, "alice", "event-e1").await);
    assert!(trace.cached, "{trace:?}");
    assert_eq!(trace.value_json, r#"{"seat":1}"#);
    assert_eq!(service.count("/t/e1"), 1);
    // The key is the inputs: another event is another request.
    assert_eq!(
        denied_reason(issue(&server, "alice", "event-e2").await),
        "no_matching_rule"
    );
    assert_eq!(service.count("/t/e2"), 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            issue(&server, "alice", "event-e1").await.unwrap();
            service.count("/t/e1") >= 2
        })
        .await,
        "the entry never expired"
    );
    // One request per TTL, however many calls: the fresh answer is cached again.
    assert_eq!(service.count("/t/e1"), 2);
    let trace = ticket_trace(&explain(&server, "alice", "event-e1").await);
    assert!(trace.cached, "{trace:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_404_is_no_ticket_cached_for_the_negative_ttl() {
    let service = FactServer::start().await;
    let server = start(&fact(
        &by_event(&service),
        "ttl = \"1h\"\nnegative_ttl = \"1s\"",
    ))
    .await;
    // Unscripted: the service answers 404.
    assert_eq!(
        denied_reason(issue(&server, "alice", "event-e1").await),
        "no_matching_rule"
    );
    assert_eq!(service.count("/t/e1"), 1);
    let trace = ticket_trace(&explain(&server, "alice", "event-e1").await);
    assert_eq!(trace.value_json, "null");
    assert!(trace.error.is_empty(), "{trace:?}");
    assert!(trace.cached, "{trace:?}");
    // The ticket is bought: within the negative TTL the 404 still stands...
    service.respond("/t/e1", Reply::json(200, json!({"seat": 9})));
    assert_eq!(
        denied_reason(issue(&server, "alice", "event-e1").await),
        "no_matching_rule"
    );
    assert_eq!(service.count("/t/e1"), 1, "the 404 was not cached");
    // ...and after it, the service is asked again and the ticket counts.
    assert!(
        eventually(Duration::from_secs(5), || async {
            issue(&server, "alice", "event-e1").await.is_ok()
        })
        .await,
        "the negative entry never expired"
    );
    assert_eq!(service.count("/t/e1"), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_service_times_out_promptly_and_the_failure_is_remembered() {
    let service = FactServer::start().await;
    let server = start(&fact(
        &by_event(&service),
        "timeout = \"200ms\"\nerror_ttl = \"1s\"",
    ))
    .await;
    service.respond(
        "/t/slow",
        Reply::json(200, json!({"seat": 1})).delay(Duration::from_secs(2)),
    );
    let started = Instant::now();
    assert_unavailable(issue(&server, "alice", "event-slow").await, "slow");
    // The timeout ended it, not the service (a 2 s delay).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(service.count("/t/slow"), 1);
    // Within error_ttl the failure is remembered: no second wait on the service.
    let started = Instant::now();
    assert_unavailable(issue(&server, "alice", "event-slow").await, "slow, again");
    assert_eq!(
        service.count("/t/slow"),
        1,
        "the failure was not remembered"
    );
    let trace = ticket_trace(&explain(&server, "alice", "event-slow").await);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(trace.error.contains("timed out"), "{trace:?}");
    assert!(trace.value_json.is_empty(), "{trace:?}");
    let explained = explain(&server, "alice", "event-slow").await;
    assert_eq!(explained.decision, pb::Decision::Deny as i32);
    assert_eq!(explained.deny_reason, "fact_unavailable");
    // After error_ttl the service is asked again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let _ = issue(&server, "alice", "event-slow").await;
            service.count("/t/slow") >= 2
        })
        .await,
        "the failure was remembered past error_ttl"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn huge_non_json_failing_and_redirecting_answers_fail_closed_and_say_why() {
    let service = FactServer::start().await;
    let server = start(&fact(
        &by_event(&service),
        "max_response_bytes = 1024\ntimeout = \"2s\"",
    ))
    .await;
    let cases: Vec<(&str, Reply, &str)> = vec![
        ("huge", Reply::huge(1_000_000), "oversized"),
        (
            "declared",
            Reply::huge(1_000_000).declared_length(),
            "oversized",
        ),
        (
            "html",
            Reply::raw(200, "text/html", "<html>{}</html>"),
            "not JSON",
        ),
        (
            "broken",
            Reply::raw(200, "application/json", "{\"seat\": "),
            "not JSON",
        ),
        ("failing", Reply::json(500, json!({"seat": 1})), "HTTP 500"),
        (
            "moved",
            Reply::json(302, json!({})).header("location", &format!("{}/t/ok", service.url())),
            "HTTP 302",
        ),
    ];
    // Where the redirect points: a follower would get a ticket there.
    service.respond("/t/ok", Reply::json(200, json!({"seat": 1})));
    for (case, reply, _) in &cases {
        service.respond(&format!("/t/{case}"), reply.clone());
    }
    for (case, _, why) in &cases {
        assert_unavailable(
            issue(&server, "alice", &format!("event-{case}")).await,
            case,
        );
        let trace = ticket_trace(&explain(&server, "alice", &format!("event-{case}")).await);
        assert!(trace.error.contains(why), "{case}: {trace:?}");
        assert!(trace.value_json.is_empty(), "{case}: {trace:?}");
    }
    assert_eq!(service.count("/t/ok"), 0, "the redirect was followed");
    // Just within the bound is fine.
    service.respond("/t/fits", Reply::huge(1024));
    issue(&server, "alice", "event-fits").await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_declared_length_over_the_bound_is_refused_before_reading_the_body() {
    let service = FactServer::start().await;
    // The bound above one chunk, and a body whose second chunk comes after
    // the timeout: only a client that believes Content-Length says "oversized".
    let server = start(&fact(
        &by_event(&service),
        "max_response_bytes = 20000\ntimeout = \"1s\"",
    ))
    .await;
    service.respond(
        "/t/declared",
        Reply::huge(1_000_000)
            .declared_length()
            .chunk_pause(Duration::from_secs(3)),
    );
    assert_unavailable(issue(&server, "alice", "event-declared").await, "declared");
    let trace = ticket_trace(&explain(&server, "alice", "event-declared").await);
    assert!(trace.error.contains("oversized"), "{trace:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_huge_body_is_not_read_past_the_bound() {
    const SIZE: usize = 256 * 1024 * 1024;
    let service = FactServer::start().await;
    let server = start(&fact(&by_event(&service), "max_response_bytes = 65536")).await;
    service.respond("/t/huge", Reply::huge(SIZE));
    assert_unavailable(issue(&server, "alice", "event-huge").await, "huge");
    // What was generated is what the socket buffers took ahead of the
    // reader, nowhere near the whole body a buffering client would read.
    let streamed = service.streamed_bytes();
    assert!(streamed < (SIZE / 4) as u64, "{streamed} of {SIZE}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_service_that_went_away_fails_closed_and_its_return_needs_no_restart() {
    let mut service = FactServer::start().await;
    let server = start(&fact(
        &by_event(&service),
        "ttl = \"0s\"\nerror_ttl = \"200ms\"",
    ))
    .await;
    service.respond("/t/e1", Reply::json(200, json!({"seat": 1})));
    issue(&server, "alice", "event-e1").await.unwrap();
    service.stop().await;
    assert_unavailable(issue(&server, "alice", "event-e1").await, "stopped");
    let trace = ticket_trace(&explain(&server, "alice", "event-e1").await);
    assert!(trace.error.contains("request failed"), "{trace:?}");
    // The error names no URL (it holds the caller's inputs).
    assert!(!trace.error.contains("/t/e1"), "{trace:?}");
    service.restart().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            issue(&server, "alice", "event-e1").await.is_ok()
        })
        .await,
        "access did not come back with the service"
    );
    server.shutdown().await;
}

/// A JSON log line's fields (the JSON logger flattens them to the top level).
fn parse(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

#[tokio::test]
async fn the_binary_never_logs_the_secret_but_does_log_why_a_fetch_failed() {
    let service = FactServer::start().await;
    let (jwks, es256, _rs256) = test_keys().await;
    let secret = "env-secret-9b2e51d0c4";
    let facts = fact(
        &by_event(&service),
        "timeout = \"200ms\"\nsecret_env = \"FACT_SECRET\"",
    );
    let config = loopback(&format!("{}{facts}", config_text(&jwks.jwks_url(), RULES)));
    let running = Running::start_config_with(
        &config,
        "json",
        &[("TOKENGATE_LOG", "debug"), ("FACT_SECRET", secret)],
    );
    running.wait_ready().await;
    service.respond("/t/ok", Reply::json(200, json!({"seat": 1})));
    service.respond("/t/failing", Reply::json(500, json!({"error": "boom"})));
    service.respond(
        "/t/slow",
        Reply::json(200, json!({})).delay(Duration::from_secs(2)),
    );
    let mut client = TokenServiceClient::new(running.channel().await);
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 42})));
    for (channel, allowed) in [
        ("event-ok", true),
        ("event-none", false),
        ("event-failing", false),
        ("event-slow", false),
    ] {
        let result = client
            .issue_rtc_token(TestServer::authed(&jwt, rtc(channel, pb::Role::Subscriber)))
            .await;
        assert_eq!(result.is_ok(), allowed, "{channel}: {result:?}");
        let explained = client
            .explain_access(TestServer::authed(
                &jwt,
                pb::ExplainAccessRequest {
                    request: Some(pb::explain_access_request::Request::Rtc(rtc(
                        channel,
                        pb::Role::Subscriber,
                    ))),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            explained.decision == pb::Decision::Allow as i32,
            allowed,
            "{channel}: {explained:?}"
        );
    }
    // The secret was in play: the service got it on every request.
    let requests = service.requests();
    assert!(requests.len() >= 4, "{requests:#?}");
    let bearer = format!("Bearer {secret}");
    for request in &requests {
        assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    }
    let failed = |line: &Value, why: &str| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("facts: fetch failed"))
            && line["fact"] == "ticket"
            && line["error"].as_str().is_some_and(|e| e.contains(why))
    };
    let logs = running
        .logs_once(|l| parse(l).is_some_and(|line| failed(&line, "timed out")))
        .await;
    let lines: Vec<Value> = logs.iter().filter_map(|l| parse(l)).collect();
    assert!(
        lines.iter().any(|l| failed(l, "HTTP 500")),
        "no line says the fact failed with HTTP 500: {logs:#?}"
    );
    assert!(
        lines.iter().any(|l| failed(l, "timed out")),
        "no line says the fact timed out: {logs:#?}"
    );
    // Debug logging was on (so a leak would have had its chance).
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "no debug line: {logs:#?}"
    );
    for line in &logs {
        assert!(
            !line.contains(secret),
            "the secret is in a log line: {line}"
        );
        assert!(
            !line.contains(&bearer),
            "the header is in a log line: {line}"
        );
    }
}

#[tokio::test]
async fn a_dot_segment_input_cannot_move_the_request_to_another_path() {
    let service = FactServer::start().await;
    let url = format!(
        "{}/events/{{captures.event}}/tickets/{{caller.subject}}",
        service.url()
    );
    let server = start(&fact(&url, "")).await;
    // What a URL parser makes of `/events/../tickets/alice` and
    // `/events/./tickets/alice` (`%2E` is no help: it resolves the same).
    service.respond("/tickets/alice", Reply::json(200, json!({"seat": 1})));
    service.respond(
        "/events/tickets/alice",
        Reply::json(200, json!({"seat": 1})),
    );
    service.respond("/events/e1/tickets", Reply::json(200, json!({"seat": 1})));
    for (sub, channel) in [
        ("alice", "event-.."),
        ("alice", "event-."),
        ("..", "event-e1"),
    ] {
        assert_unavailable(issue(&server, sub, channel).await, channel);
        let trace = ticket_trace(&explain(&server, sub, channel).await);
        assert!(trace.error.contains("path segment"), "{channel}: {trace:?}");
    }
    // Refused before asking: the service saw nothing.
    assert_eq!(service.requests(), vec![]);
    // Dots within a segment are a value like any other.
    issue(&server, "alice", "event-...").await.unwrap_err();
    assert_eq!(service.requests()[0].path, "/events/.../tickets/alice");
    server.shutdown().await;
}

#[tokio::test]
async fn a_calls_facts_are_fetched_at_once_and_a_shared_query_once() {
    let service = FactServer::start().await;
    let delay = Duration::from_secs(1);
    service.respond(
        "/tickets/launch/alice",
        Reply::json(200, json!({"tier": "vip"})).delay(delay),
    );
    service.respond(
        "/seats/launch/alice",
        Reply::json(200, json!({"row": 3})).delay(delay),
    );
    let rules = r#"
[[rules]]
name = "vip seats"
actions = ["rtc"]
channel = "event-{event}"
condition = 'facts.ticket.tier == "vip" && facts.seat.row < 5'
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"

[[rules]]
name = "seated"
actions = ["rtc"]
channel = "event-{event}"
condition = 'facts.seat != null'
project = "main"
uid_claim = "agora_uid"
"#;
    let facts = format!(
        r#"
[[facts]]
name = "ticket"
kind = "http"
url = "{base}/tickets/{{captures.event}}/{{caller.subject}}"
timeout = "3s"

[[facts]]
name = "seat"
kind = "http"
url = "{base}/seats/{{captures.event}}/{{caller.subject}}"
timeout = "3s"
"#,
        base = service.url()
    );
    let (jwks, es256, rs256) = test_keys().await;
    let text = format!("{}{facts}", config_text(&jwks.jwks_url(), rules));
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let started = std::time::Instant::now();
    issue(&server, "alice", "event-launch").await.unwrap();
    let took = started.elapsed();
    // Both facts, each answered after 1 s, in about 1 s rather than 2: they
    // were asked at once. `seat` is read by both rules and asked once.
    assert!(took < Duration::from_millis(1900), "{took:?}");
    assert_eq!(service.count("/tickets/launch/alice"), 1);
    assert_eq!(service.count("/seats/launch/alice"), 1);
    server.shutdown().await;
}
