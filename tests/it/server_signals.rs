//! SIGTERM and SIGINT on the real binary (`tokengate serve --config FILE`):
//! calls in flight finish, health goes NOT_SERVING, the process exits 0
//! within the grace period.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use support::binary::Running;
use support::fixtures::{LOBBY, rtc};
use support::server::{PRIMARY_CERT, SECONDARY_CERT, TestServer};
use support::{JwksServer, TestKey};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// The config's grace period (`config_text` sets 5s).
const GRACE: Duration = Duration::from_secs(5);

fn lobby_request(jwt: &str) -> tonic::Request<pb::IssueRtcTokenRequest> {
    TestServer::authed(jwt, rtc("lobby-main", pb::Role::Subscriber))
}

/// One call of the stream: when it started and how it ended.
struct Call {
    started: Instant,
    result: Result<(), tonic::Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_in_flight_calls_and_exits_zero() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let late = TestKey::generate(Algorithm::ES256, "es-2");
    let jwks = JwksServer::start(&[&es256]).await;
    let rules = format!("{}{LOBBY}", support::server::LONG_UNKNOWN_KID_WAIT);
    let mut server = Running::start(&jwks.jwks_url(), &rules);
    server.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims("alice", json!({})));

    // A health watch, opened before the signal.
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "tokengate.v1.TokenService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    // Calls that are certainly in flight at the signal: signed by a key the
    // JWKS publishes only now, and answers slowly, so each call waits for the
    // forced key refetch (about 1.5 s) before it is answered.
    jwks.set_delay(Duration::from_millis(1500));
    jwks.add_key(&late);
    let late_jwt = late.mint(&TestServer::claims("bob", json!({})));
    let mut slow = JoinSet::new();
    for _ in 0..3 {
        let mut client = TokenServiceClient::new(server.channel().await);
        let jwt = late_jwt.clone();
        slow.spawn(async move {
            let result = client.issue_rtc_token(lobby_request(&jwt)).await;
            (result, Instant::now())
        });
    }

    // A stream of fast calls from concurrent clients, each on its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let mut fast = JoinSet::new();
    for _ in 0..4 {
        let mut client = TokenServiceClient::new(server.channel().await);
        let jwt = jwt.clone();
        let stop = Arc::clone(&stop);
        fast.spawn(async move {
            let mut calls = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = client
                    .issue_rtc_token(lobby_request(&jwt))
                    .await
                    .map(|reply| {
                        let issued = reply.into_inner().issued.unwrap();
                        assert_eq!(issued.matched_rule, "lobby");
                    });
                let failed = result.is_err();
                calls.push(Call { started, result });
                if failed {
                    // The connection is draining or gone: this client is done.
                    break;
                }
            }
            calls
        });
    }

    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = Instant::now();
    server.signal("TERM");

    // Health goes NOT_SERVING.
    let next = tokio::time::timeout(Duration::from_secs(3), watch.message())
        .await
        .expect("a health update after SIGTERM")
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);

    // Every slow call was in flight for a while at the signal: each must succeed.
    while let Some(joined) = slow.join_next().await {
        let (result, finished) = joined.unwrap();
        // Answered after the signal: it really was in flight when the drain began.
        assert!(finished > signalled, "a slow call ended before SIGTERM");
        let reply = result.unwrap_or_else(|status| {
            panic!("an in-flight call failed during the drain: {status:?}")
        });
        assert_eq!(reply.into_inner().issued.unwrap().matched_rule, "lobby");
    }

    let status = server.exit_within(GRACE + Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.code(), Some(0), "logs: {:#?}", server.logs());

    let mut succeeded = 0;
    let mut refused = 0;
    while let Some(joined) = fast.join_next().await {
        for call in joined.unwrap() {
            match call.result {
                Ok(()) => succeeded += 1,
                Err(status) => {
                    refused += 1;
                    // Only a call that was not yet accepted may fail: it started
                    // around or after the signal, and the refusal is the
                    // transport's (GOAWAY, connection closed: a status with a
                    // transport error as its source), never the service's.
                    assert!(
                        call.started + Duration::from_millis(100) > signalled,
                        "a call started {:?} before SIGTERM failed: {status:?}",
                        signalled - call.started
                    );
                    // tonic reports a GOAWAY that refuses a not-yet-accepted
                    // stream as INTERNAL ("h2 protocol error") with the
                    // transport error as its source; the source is what tells
                    // it from a service error.
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                                | tonic::Code::Internal
                        ) && std::error::Error::source(&status).is_some(),
                        "{status:?}"
                    );
                    assert!(
                        status.get_error_details().error_info().is_none(),
                        "a service error during the drain: {status:?}"
                    );
                }
            }
        }
    }
    assert!(succeeded > 0, "the stream of calls ran");
    // At most one refusal per client: each stops at its first.
    assert!(refused <= 4, "{refused} refusals");
    let logs = server.logs().join("\n");
    assert!(logs.contains("SIGTERM received"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&es256]).await;
    let mut server = Running::start(&jwks.jwks_url(), LOBBY);
    server.wait_ready().await;
    // The server answers before the signal.
    let jwt = es256.mint(&TestServer::claims("alice", json!({})));
    let mut client = TokenServiceClient::new(server.channel().await);
    let issued = client
        .issue_rtc_token(lobby_request(&jwt))
        .await
        .unwrap()
        .into_inner()
        .issued
        .unwrap();
    // A refused call is logged too.
    let stranger = es256.mint(&TestServer::claims("mallory", json!({"aud": "other"})));
    client
        .issue_rtc_token(lobby_request(&stranger))
        .await
        .unwrap_err();
    server.signal("INT");
    let status = server.exit_within(GRACE + Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(0), "logs: {:#?}", server.logs());
    let logs = server.logs().join("\n");
    assert!(logs.contains("SIGINT received"), "{logs}");
    assert!(logs.contains("drained; exiting"), "{logs}");

    // The audit log has the decision with the token's fingerprint, and no
    // log line holds a JWT, a token or a certificate.
    let audit = server
        .logs()
        .into_iter()
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .find(|event| event["rpc"] == "IssueRtcToken" && event["decision"] == "allow")
        .unwrap_or_else(|| panic!("no audit event in {logs}"));
    assert_eq!(audit["token"], issued.token_fingerprint.as_str());
    assert_eq!(audit["rule"], "lobby");
    assert_eq!(audit["caller"], "alice");
    assert!(logs.contains("\"decision\":\"unauthenticated\""), "{logs}");
    for secret in [
        jwt.as_str(),
        stranger.as_str(),
        issued.token.as_str(),
        PRIMARY_CERT,
        SECONDARY_CERT,
    ] {
        assert!(!logs.contains(secret), "a secret in the logs: {logs}");
    }
    // Nor any of the JWT's or token's parts (a signature alone is a secret's worth).
    for part in jwt.split('.').chain(std::iter::once(&issued.token[3..40])) {
        assert!(!logs.contains(part), "a secret's part in the logs: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_grace_period_does_not_hold_the_exit() {
    let es256 = TestKey::generate(Algorithm::ES256, "es-1");
    let late = TestKey::generate(Algorithm::ES256, "es-2");
    let jwks = JwksServer::start(&[&es256]).await;
    let rules = format!("{}{LOBBY}", support::server::LONG_UNKNOWN_KID_WAIT);
    let mut server = Running::start_with_grace(&jwks.jwks_url(), &rules, "1s");
    server.wait_ready().await;
    // A call that waits about 4 s for a key refetch: longer than the 1 s grace.
    jwks.set_delay(Duration::from_secs(4));
    jwks.add_key(&late);
    let jwt = late.mint(&TestServer::claims("bob", json!({})));
    let mut client = TokenServiceClient::new(server.channel().await);
    let call = tokio::spawn(async move { client.issue_rtc_token(lobby_request(&jwt)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    // Within the 1 s grace (plus teardown), before the 4 s call could have ended.
    let status = server.exit_within(Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0), "logs: {:#?}", server.logs());
    // The overrunning call was cut off by the exit, not answered.
    let result = call.await.unwrap();
    assert!(result.is_err(), "the call outlived the grace period");
    let logs = server.logs().join("\n");
    assert!(logs.contains("grace period over"), "{logs}");
}
