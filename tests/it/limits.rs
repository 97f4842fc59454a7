//! Rate limits and load shedding in local mode, through the real server:
//! RESOURCE_EXHAUSTED with the GCRA wait in `RetryInfo` and the limit in
//! `QuotaFailure`, CEL and rule-scoped limits, ext_authz's 429 with
//! `Retry-After`, ExplainAccess reading budgets without spending them,
//! calls shed at once beyond `limits.max_in_flight`, and a reload that
//! changes a limit under a running server.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support;
use support::authz::{envoy_check, verdict};
use support::fixtures::rtc;
use support::server::{InProcess, LONG_UNKNOWN_KID_WAIT, TestServer, config_text, test_keys};
use tokengate::grpc::pb;

/// Rooms (any `room-*`, the uid from `agora_uid`), stages (`stage-*`,
/// naming the rule-scoped `stage-burst` where a test defines it), and
/// explain for all.
pub(crate) const RULES: &str = r#"
[[rules]]
name = "rooms"
actions = ["rtc"]
channel = "room-*"
project = "main"
uid_claim = "agora_uid"

[[rules]]
name = "stages"
actions = ["rtc"]
channel = "stage-*"
project = "main"
uid_claim = "agora_uid"
STAGE_LIMITS

[[rules]]
name = "explainers"
actions = ["explain"]
"#;

/// One call per stage channel, for the stages rule only.
const STAGE_BURST: &str = r#"
[[limits.rate]]
name = "stage-burst"
key = "channel"
rate = "1/h"
scope = "rule"
"#;

/// A server with [`RULES`], `limits` (TOML) and, if given, ext_authz.
async fn start(limits: &str, ext_authz: bool) -> TestServer {
    let (jwks, es256, rs256) = test_keys().await;
    // The shedding test holds calls in a slow refetch of an unknown key.
    // The stages rule names `stage-burst` when the test defines it.
    let stage_limits = if limits.contains("\"stage-burst\"") {
        "limits = [\"stage-burst\"]"
    } else {
        ""
    };
    let rules = format!(
        "{LONG_UNKNOWN_KID_WAIT}{}",
        RULES.replace("STAGE_LIMITS", stage_limits)
    );
    let mut text = format!("{}\n{limits}", config_text(&jwks.jwks_url(), &rules));
    if ext_authz {
        text.push_str(&support::authz::ext_authz_section(""));
    }
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    server
}

fn jwt(server: &TestServer, sub: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({"agora_uid": 77});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    server.mint(sub, claims)
}

async fn issue(server: &TestServer, jwt: &str, channel: &str) -> Result<(), tonic::Status> {
    server
        .client()
        .await
        .issue_rtc_token(TestServer::authed(jwt, rtc(channel, pb::Role::Subscriber)))
        .await
        .map(|_| ())
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_burst_is_admitted_then_resource_exhausted_with_the_wait_and_the_limit() {
    let server = start(
        "[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1/min\"\nburst = 3\n",
        false,
    )
    .await;
    let alice = jwt(&server, "alice", json!({}));
    let started = std::time::Instant::now();
    for i in 0..3 {
        issue(&server, &alice, "room-1")
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
    }
    let refused = issue(&server, &alice, "room-1").await.unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let details = refused.get_error_details();
    let wait = details.retry_info().and_then(|r| r.retry_delay).unwrap();
    // GCRA's exact wait: one emission interval (60 s) from the first call.
    assert!(wait <= Duration::from_secs(60), "{wait:?}");
    assert!(
        wait >= Duration::from_secs(60) - elapsed,
        "{wait:?} after {elapsed:?}"
    );
    let quota = details.quota_failure().unwrap();
    assert_eq!(quota.violations.len(), 1);
    assert_eq!(quota.violations[0].subject, "limit:per-caller");
    let info = details.error_info().unwrap();
    assert_eq!(info.reason, "rate_limited");
    assert_eq!(info.metadata["limits"], "per-caller");
    assert!(refused.metadata().get("x-request-id").is_some());
    // Another caller has a budget of its own.
    let bob = jwt(&server, "bob", json!({}));
    issue(&server, &bob, "room-1").await.unwrap();
    let exposed = metrics(server.admin).await;
    for line in [
        r#"tokengate_rate_limit_checks_total{limit="per-caller",result="admitted",backend="local"} 4"#,
        r#"tokengate_rate_limit_checks_total{limit="per-caller",result="limited",backend="local"} 1"#,
        r#"tokengate_decisions_total{action="rtc",decision="limited",reason="rate_limited"} 1"#,
        "tokengate_rate_limit_local_keys 2",
    ] {
        assert!(exposed.contains(line), "{line} not in:\n{exposed}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_cel_key_shares_a_tenants_budget_and_a_rule_scoped_limit_counts_only_its_rule() {
    let limits = r#"
[[limits.rate]]
name = "per-tenant"
key = "cel"
expression = "claims.tenant"
rate = "2/h"
"#;
    let server = start(&format!("{limits}{STAGE_BURST}"), false).await;
    let (a1, a2, b1) = (
        jwt(&server, "a1", json!({"tenant": "acme"})),
        jwt(&server, "a2", json!({"tenant": "acme"})),
        jwt(&server, "b1", json!({"tenant": "globex"})),
    );
    issue(&server, &a1, "room-1").await.unwrap();
    issue(&server, &a2, "room-2").await.unwrap();
    let refused = issue(&server, &a1, "room-3").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    issue(&server, &b1, "room-1").await.unwrap();
    // stage-burst counts the stages rule per channel: one call per stage.
    issue(&server, &b1, "stage-1").await.unwrap();
    let refused = issue(&server, &b1, "stage-1").await.unwrap_err();
    let details = refused.get_error_details();
    let limits: Vec<_> = details
        .quota_failure()
        .unwrap()
        .violations
        .iter()
        .map(|v| v.subject.clone())
        .collect();
    // globex's two calls are spent as well: the call is over both limits.
    assert_eq!(limits, ["limit:per-tenant", "limit:stage-burst"]);
    server.shutdown().await;
}

#[tokio::test]
async fn ext_authz_answers_429_with_retry_after_in_whole_seconds() {
    let server = start(
        "[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1/30s\"\n",
        true,
    )
    .await;
    let bearer = format!("Bearer {}", jwt(&server, "alice", json!({})));
    let mut client = support::authz::client(&server).await;
    let check = || envoy_check("GET", "/rooms/room-1/join", &[("authorization", &bearer)]);
    let first = verdict(client.check(check()).await.unwrap().into_inner());
    assert!(
        matches!(first, support::authz::Verdict::Ok { .. }),
        "{first:?}"
    );
    let second = verdict(client.check(check()).await.unwrap().into_inner());
    assert_eq!(second.denial(), (429, "rate_limited".to_owned()));
    let support::authz::Verdict::Denied { headers, .. } = &second else {
        unreachable!()
    };
    let retry: u64 = headers
        .iter()
        .find(|(name, _)| name == "retry-after")
        .map(|(_, value)| value.parse().unwrap())
        .expect("a Retry-After header");
    assert!((29..=30).contains(&retry), "Retry-After {retry}");
    server.shutdown().await;
}

#[tokio::test]
async fn explain_reports_the_budgets_that_would_apply_without_spending_them() {
    let limits = r#"
[[limits.rate]]
name = "per-caller"
key = "caller"
rate = "3/h"
"#;
    let server = start(&format!("{limits}{STAGE_BURST}"), false).await;
    let alice = jwt(&server, "alice", json!({}));
    let explain = || async {
        server
            .client()
            .await
            .explain_access(TestServer::authed(
                &alice,
                pb::ExplainAccessRequest {
                    request: Some(pb::explain_access_request::Request::Rtc(rtc(
                        "room-1",
                        pb::Role::Subscriber,
                    ))),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    };
    for _ in 0..4 {
        let reply = explain().await;
        assert_eq!(reply.decision, pb::Decision::Allow as i32);
        // stage-burst counts the stages rule only: not listed for a room.
        assert_eq!(reply.limits.len(), 1, "{:?}", reply.limits);
        let budget = &reply.limits[0];
        assert_eq!(
            (
                budget.name.as_str(),
                budget.remaining,
                budget.burst,
                budget.backend.as_str()
            ),
            ("per-caller", 3, 3, "local")
        );
        assert_eq!(budget.key, format!("jwt {} alice", support::server::ISSUER));
        assert!(budget.retry_after.is_none());
    }
    issue(&server, &alice, "room-1").await.unwrap();
    assert_eq!(explain().await.limits[0].remaining, 2);
    issue(&server, &alice, "room-1").await.unwrap();
    issue(&server, &alice, "room-1").await.unwrap();
    let spent = explain().await;
    assert_eq!(spent.limits[0].remaining, 0);
    let wait = spent.limits[0].retry_after.unwrap();
    assert!(wait.seconds > 1100 && wait.seconds <= 1200, "{wait:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn calls_beyond_max_in_flight_are_shed_at_once_and_the_admitted_ones_finish() {
    let server = start("[limits]\nmax_in_flight = 3\n", false).await;
    let alice = jwt(&server, "alice", json!({}));
    issue(&server, &alice, "room-1").await.unwrap();
    // Three calls signed by a key the JWKS does not publish yet, served
    // slowly: each waits in the pipeline for the forced refetch.
    let late = support::TestKey::generate(jsonwebtoken::Algorithm::ES256, "es-late");
    server.jwks.set_delay(Duration::from_millis(1500));
    server.jwks.add_key(&late);
    let slow_jwt = late.mint(&TestServer::claims("slow", json!({"agora_uid": 5})));
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let (server_addr, jwt) = (server.addr, slow_jwt.clone());
            tokio::spawn(async move {
                let channel =
                    tonic::transport::Channel::from_shared(format!("http://{server_addr}"))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                pb::token_service_client::TokenServiceClient::new(channel)
                    .issue_rtc_token(TestServer::authed(
                        &jwt,
                        rtc("room-1", pb::Role::Subscriber),
                    ))
                    .await
            })
        })
        .collect();
    // Wait (bounded) until all three hold their place.
    let mut in_flight = 0;
    for _ in 0..100 {
        let exposed = metrics(server.admin).await;
        in_flight = exposed
            .lines()
            .find_map(|l| l.strip_prefix("tokengate_calls_in_flight "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u32;
        if in_flight == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(in_flight, 3, "the slow calls never all got in");
    let shed: Vec<_> =
        futures_util::future::join_all((0..10).map(|_| issue(&server, &alice, "room-1"))).await;
    // Every one refused as overloaded while the slow ones are still in flight.
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the shed calls waited for the slow ones"
    );
    for result in shed {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "overloaded"
        );
    }
    for task in slow {
        task.await.unwrap().expect("an admitted call completes");
    }
    // Their places came back.
    issue(&server, &alice, "room-1").await.unwrap();
    let exposed = metrics(server.admin).await;
    assert!(
        exposed.contains(
            r#"tokengate_decisions_total{action="rtc",decision="shed",reason="overloaded"} 10"#
        ),
        "{exposed}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_are_held_per_process_and_a_server_without_limits_never_limits() {
    let server = start("", false).await;
    let alice = jwt(&server, "alice", json!({}));
    for _ in 0..20 {
        issue(&server, &alice, "room-1").await.unwrap();
    }
    server.shutdown().await;
    // Independently configured replicas each count alone in local mode.
    let (jwks, es256, _rs256) = test_keys().await;
    let text = format!(
        "{}\n[[limits.rate]]\nname = \"c\"\nkey = \"caller\"\nrate = \"1/h\"\n",
        config_text(&jwks.jwks_url(), &RULES.replace("STAGE_LIMITS", ""))
    );
    let (a, b) = (InProcess::start(&text).await, InProcess::start(&text).await);
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 77})));
    for replica in [&a, &b] {
        replica.wait_ready().await;
        let mut client = replica.client().await;
        let call = || TestServer::authed(&jwt, rtc("room-1", pb::Role::Subscriber));
        client.issue_rtc_token(call()).await.unwrap();
        assert_eq!(
            client.issue_rtc_token(call()).await.unwrap_err().code(),
            Code::ResourceExhausted
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
