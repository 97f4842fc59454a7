//! Identity-provider faults, end to end: an outage through `max_stale` and
//! back, a start with the IdP down, a slow IdP, soft and hard rotations (a
//! second one inside the cooldown), a kid flood mixed with legitimate calls,
//! the one deadline of a discovery-plus-JWKS fetch, and a short soak of the
//! real binary.
//!
//! Every server is on loopback, against the controllable JWKS server
//! (`tests/support/jwks_server.rs`). Counts are exact where the behaviour is
//! deterministic (fetches, failed calls, health transitions); times are
//! generous upper bounds. The soak runs `TOKENGATE_SOAK_SECS` seconds (30 by
//! default; `.ci/soak.sh` runs it for 10 minutes).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::time::{Instant, timeout};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use support::fixtures::{LOBBY, rtc};
use support::server::{ISSUER, TestServer, config_text};
use support::{JwksServer, TestKey, unix_now};
use tokengate::grpc::pb::Role;
use tokengate::identity::{
    Authenticator, IssuerBuilder, KeySource, RefreshConfig, install_crypto_provider,
};

/// The longest any single wait here may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(20);

/// The test issuer's `[issuers.refresh]` table: the config file's floors,
/// a one-second `max_stale`, and a long `backoff_max` so that only the cap
/// while expired can make recovery fast.
const FAST_OUTAGE: &str = r#"
[issuers.refresh]
min_refresh = "5s"
max_refresh = "5s"
default_ttl = "5s"
max_stale = "1s"
backoff_initial = "100ms"
backoff_max = "60s"
unknown_kid_cooldown = "1s"
"#;

/// A test server whose issuer has `refresh` (inserted right after its `[[issuers]]` table).
async fn server_with(refresh: &str, down: bool) -> TestServer {
    let (jwks, es256, rs256) = support::server::test_keys().await;
    if down {
        jwks.fail_next(usize::MAX, 503);
    }
    let text = config_text(&jwks.jwks_url(), &format!("{refresh}\n{LOBBY}"));
    TestServer::start_with(text, jwks, es256, rs256).await
}

/// One `IssueRtcToken` call with `jwt`: its status code, reason and retry delay.
async fn call(server: &TestServer, jwt: &str) -> (Code, String, Option<Duration>) {
    let mut client = server.client().await;
    let request = TestServer::authed(jwt, rtc("lobby-1", Role::Subscriber));
    match client.issue_rtc_token(request).await {
        Ok(_) => (Code::Ok, String::new(), None),
        Err(status) => {
            let details = status.get_error_details();
            let reason = details
                .error_info()
                .map(|i| i.reason.clone())
                .unwrap_or_default();
            let retry = details.retry_info().and_then(|r| r.retry_delay);
            (status.code(), reason, retry)
        }
    }
}

/// Records every status a health `Watch` reports, until the returned handle is awaited.
fn record_health(
    channel: tonic::transport::Channel,
) -> (
    tokio::task::JoinHandle<Vec<i32>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut health = HealthClient::new(channel);
        let mut watch = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                _ = &mut stopped => return seen,
                message = watch.message() => match message {
                    Ok(Some(m)) => seen.push(m.status),
                    _ => return seen,
                },
            }
        }
    });
    (task, stop)
}

/// Polls `/readyz` until its status is `want`; returns its body.
async fn readyz_until(server: &TestServer, want: u16) -> String {
    let url = format!("http://{}/readyz", server.admin);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz never {want}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_outage_through_max_stale_is_unavailable_and_recovers_within_a_second() {
    let server = server_with(FAST_OUTAGE, false).await;
    server.wait_ready().await;
    let (health, stop_health) = record_health(server.channel().await);
    let jwt = server.mint("alice", json!({}));
    assert_eq!(call(&server, &jwt).await.0, Code::Ok);
    assert_eq!(server.jwks.jwks_fetches(), 1);

    // The IdP goes down; a call with a kid nobody publishes makes the
    // refresher notice at once rather than at the next 5 s refresh.
    server.jwks.fail_next(usize::MAX, 503);
    let probe = server
        .es256
        .with_kid("not-published")
        .mint(&TestServer::claims("alice", json!({})));
    assert_eq!(call(&server, &probe).await.1, "unknown_key");
    // Within max_stale the last good keys still serve.
    assert_eq!(call(&server, &jwt).await.0, Code::Ok);

    // After max_stale: NOT_SERVING, /readyz names the issuer, and every call is
    // UNAVAILABLE with RetryInfo (a credential error would not be retried).
    let body = readyz_until(&server, 503).await;
    assert!(
        body.contains("issuer test-idp: keys expired"),
        "/readyz says which issuer: {body}"
    );
    // Hold the outage long enough for the backoff to grow past a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut unavailable = 0;
    for _ in 0..20 {
        let (code, reason, retry) = call(&server, &jwt).await;
        assert_eq!(
            (code, reason.as_str()),
            (Code::Unavailable, "keys_unavailable")
        );
        assert!(retry.is_some(), "UNAVAILABLE carries RetryInfo");
        unavailable += 1;
    }
    assert_eq!(unavailable, 20);

    // The IdP answers again: calls succeed within a second (generous bound).
    server.jwks.fail_next(0, 503);
    let back = Instant::now();
    let mut refused_while_recovering = 0;
    loop {
        match call(&server, &jwt).await.0 {
            Code::Ok => break,
            Code::Unavailable => refused_while_recovering += 1,
            other => panic!("{other:?} while recovering"),
        }
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = back.elapsed();
    assert!(
        recovered < Duration::from_millis(1500),
        "UNAVAILABLE -> OK took {recovered:?} ({refused_while_recovering} refused meanwhile)"
    );
    readyz_until(&server, 200).await;
    stop_health.send(()).unwrap();
    let seen = health.await.unwrap();
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    assert_eq!(seen, [serving, not_serving, serving], "health transitions");
    server.shutdown().await;
}

#[tokio::test]
async fn a_start_with_the_idp_down_is_not_ready_and_unavailable_until_it_answers() {
    let refresh = "[issuers.refresh]\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n";
    let server = server_with(refresh, true).await;
    let body = readyz_until(&server, 503).await;
    assert!(
        body.contains("issuer test-idp: keys not loaded yet")
            || body.contains("waiting for the keys"),
        "{body}"
    );
    let jwt = server.mint("alice", json!({}));
    let mut refused = 0;
    for _ in 0..10 {
        let (code, reason, retry) = call(&server, &jwt).await;
        assert_eq!(
            (code, reason.as_str()),
            (Code::Unavailable, "keys_unavailable")
        );
        assert_eq!(retry, Some(Duration::from_secs(1)));
        refused += 1;
    }
    assert_eq!(refused, 10);
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);

    server.jwks.fail_next(0, 503);
    let up = Instant::now();
    readyz_until(&server, 200).await;
    assert!(
        up.elapsed() < Duration::from_secs(2),
        "ready {:?} after the IdP came up",
        up.elapsed()
    );
    assert_eq!(call(&server, &jwt).await.0, Code::Ok);
    server.shutdown().await;
}

#[tokio::test]
async fn a_slow_idp_leaves_the_latency_of_known_kids_untouched() {
    let server = server_with("", false).await;
    server.wait_ready().await;
    let jwt = server.mint("alice", json!({}));
    assert_eq!(call(&server, &jwt).await.0, Code::Ok);
    server.jwks.set_delay(Duration::from_secs(3));
    // An unknown kid forces a refetch that takes 3 s; its caller waits at most
    // unknown_kid_wait (1 s) and is told `unknown_key`.
    let probe = server
        .es256
        .with_kid("rotated-soon")
        .mint(&TestServer::claims("alice", json!({})));
    let asked = Instant::now();
    assert_eq!(call(&server, &probe).await.1, "unknown_key");
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "{:?}",
        asked.elapsed()
    );
    // Meanwhile, while the fetch is still running, known kids are served fast.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(call(&server, &jwt).await.0, Code::Ok);
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "slowest call {slowest:?}"
    );
    assert_eq!(
        server.jwks.jwks_fetches(),
        2,
        "one forced refetch, nothing else"
    );
    server.shutdown().await;
}

fn claims() -> serde_json::Value {
    let now = unix_now();
    json!({"iss": ISSUER, "sub": "svc", "aud": "tokengate-test", "exp": now + 300, "iat": now})
}

/// An authenticator over `server` with the default schedule (30 s cooldown).
async fn authenticator(server: &JwksServer) -> Arc<Authenticator> {
    install_crypto_provider();
    let keys = KeySource::jwks_url(&server.jwks_url()).unwrap();
    let settings = IssuerBuilder::new("idp", ISSUER, "tokengate-test", keys)
        .build()
        .unwrap();
    let auth = Arc::new(Authenticator::start(vec![settings]).unwrap());
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    auth
}

async fn verify(auth: &Authenticator, token: &str) -> Result<(), String> {
    auth.authenticate(Some(&format!("Bearer {token}")), unix_now())
        .await
        .map(|_| ())
        .map_err(|e| e.reason().to_owned())
}

/// Verifies `token` every 50 ms until it passes; how long that took from the first call.
async fn accepted_after(auth: &Authenticator, token: &str) -> Duration {
    let first = Instant::now();
    while verify(auth, token).await.is_err() {
        assert!(first.elapsed() < PATIENCE, "never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.elapsed()
}

#[tokio::test]
async fn soft_and_hard_rotations_and_a_second_rotation_inside_the_cooldown() {
    let k1 = TestKey::generate(Algorithm::ES256, "k1");
    let k2 = TestKey::generate(Algorithm::ES256, "k2");
    let k3 = TestKey::generate(Algorithm::RS256, "k3");
    let server = JwksServer::start(&[&k1]).await;
    let auth = authenticator(&server).await;
    verify(&auth, &k1.mint(&claims())).await.unwrap();
    assert_eq!(server.jwks_fetches(), 1);

    // Soft rotation: the new key is published beside the old one; the first
    // call with it waits for the one refetch and passes.
    server.set_keys(&[&k1, &k2]);
    verify(&auth, &k2.mint(&claims())).await.unwrap();
    verify(&auth, &k1.mint(&claims())).await.unwrap();
    assert_eq!(server.jwks_fetches(), 2, "one refetch for the new kid");

    // A hard rotation right after it, well inside the 30 s cooldown: only k3
    // is published now. It is picked up within 2 s of its first call.
    server.set_keys(&[&k3]);
    let took = accepted_after(&auth, &k3.mint(&claims())).await;
    assert!(
        took < Duration::from_millis(2500),
        "second rotation took {took:?}"
    );
    assert_eq!(
        server.jwks_fetches(),
        3,
        "one refetch for the second rotation"
    );
    // The retired keys are gone: their kids are unknown now, and k2's
    // refetch is the one its cooldown allows.
    assert_eq!(
        verify(&auth, &k1.mint(&claims())).await.unwrap_err(),
        "unknown_key"
    );
    assert_eq!(
        verify(&auth, &k2.mint(&claims())).await.unwrap_err(),
        "unknown_key"
    );
    assert_eq!(
        verify(&auth, &k2.mint(&claims())).await.unwrap_err(),
        "unknown_key"
    );
    verify(&auth, &k3.mint(&claims())).await.unwrap();
    assert!(
        server.jwks_fetches() <= 5,
        "{} fetches",
        server.jwks_fetches()
    );
}

#[tokio::test]
async fn a_kid_flood_mixed_with_legitimate_calls_costs_one_fetch_and_blocks_no_rotation() {
    let key = TestKey::generate(Algorithm::ES256, "real");
    let next = TestKey::generate(Algorithm::ES256, "next");
    let server = JwksServer::start(&[&key]).await;
    let auth = authenticator(&server).await;
    let junk = key.with_kid("junk").mint(&claims());
    let good = key.mint(&claims());
    let mut tasks = Vec::new();
    for i in 0..400 {
        let auth = Arc::clone(&auth);
        let token = if i % 4 == 0 {
            good.clone()
        } else {
            junk.clone()
        };
        let legit = i % 4 == 0;
        tasks.push(tokio::spawn(
            async move { (legit, verify(&auth, &token).await) },
        ));
    }
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (true, Ok(())) => served += 1,
            (false, Err(reason)) if reason == "unknown_key" => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((served, refused), (100, 300));
    assert_eq!(server.jwks_fetches(), 2, "300 junk calls, one refetch");
    // The same junk again, inside its cooldown: no fetch at all.
    for _ in 0..100 {
        assert_eq!(verify(&auth, &junk).await.unwrap_err(), "unknown_key");
    }
    assert_eq!(server.jwks_fetches(), 2);
    // A genuine rotation right after the flood is not blocked by it.
    server.add_key(&next);
    let took = accepted_after(&auth, &next.mint(&claims())).await;
    assert!(
        took < Duration::from_millis(2500),
        "rotation after a flood took {took:?}"
    );
    assert_eq!(server.jwks_fetches(), 3);
    let status = auth.readiness().issuers[0].clone();
    assert_eq!(status.forced_refetches, 2);
    assert!(status.suppressed_refetches >= 100, "{status:?}");
}

#[tokio::test]
async fn fetch_timeout_bounds_discovery_and_jwks_together() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let server = JwksServer::start(&[&key]).await;
    // Each GET takes 60% of the deadline: each alone fits, both do not.
    server.set_delay(Duration::from_millis(600));
    server.set_discovery_delay(Duration::from_millis(600));
    let refresh = RefreshConfig {
        fetch_timeout: Duration::from_secs(1),
        backoff_initial: Duration::from_secs(30),
        backoff_max: Duration::from_secs(30),
        ..RefreshConfig::default()
    };
    let source = KeySource::discovery_url(&server.discovery_url()).unwrap();
    let settings = IssuerBuilder::new("idp", &server.base_url(), "aud", source)
        .refresh(refresh)
        .build()
        .unwrap();
    let auth = Authenticator::start(vec![settings]).unwrap();
    let mut rx = auth.watch_issuer("idp").unwrap();
    let started = Instant::now();
    let status = timeout(PATIENCE, rx.wait_for(|s| s.fetches >= 1))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(!status.loaded, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.discovery_fetches(), 1);
}

/// The soak's length: `TOKENGATE_SOAK_SECS`, or 30 s.
#[allow(clippy::disallowed_methods)] // The soak's length is the test runner's setting, not service config.
fn soak_secs() -> u64 {
    std::env::var("TOKENGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// A fixed-rate soak of the real binary: 200 calls/s over 4 connections for
/// `TOKENGATE_SOAK_SECS` (30 s by default), every call must succeed, and
/// resident memory after a warm-up of a sixth of the run may grow by at most
/// 10 MiB. `.ci/soak.sh` runs the same test for 10 minutes.
#[tokio::test]
async fn a_soak_at_a_fixed_rate_has_no_errors_and_flat_memory() {
    let secs = soak_secs();
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    let binary = support::binary::Running::start(&jwks.jwks_url(), LOBBY);
    binary.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims("soak", json!({})));
    let (connections, per_second) = (4u64, 50u64);
    let per_connection = secs * per_second;
    let warm_up = Duration::from_secs(secs.div_ceil(6));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = binary.channel().await;
        let jwt = jwt.clone();
        tasks.push(tokio::spawn(async move {
            let mut client =
                tokengate::grpc::pb::token_service_client::TokenServiceClient::new(channel);
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut errors = Vec::new();
            for _ in 0..per_connection {
                tick.tick().await;
                let request = TestServer::authed(&jwt, rtc("lobby-soak", Role::Subscriber));
                if let Err(status) = client.issue_rtc_token(request).await {
                    errors.push(status.code());
                }
            }
            errors
        }));
    }
    tokio::time::sleep(warm_up).await;
    let after_warm_up = support::binary::rss_kib(binary.pid());
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.unwrap());
    }
    let at_end = support::binary::rss_kib(binary.pid());
    let elapsed = started.elapsed();
    assert!(
        errors.is_empty(),
        "{} failed calls: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(
        elapsed < Duration::from_secs(secs + secs / 2 + 5),
        "{} calls took {elapsed:?}",
        connections * per_connection
    );
    let growth = at_end.saturating_sub(after_warm_up);
    assert!(
        growth < 10 * 1024,
        "RSS grew {growth} KiB after warm-up ({after_warm_up} -> {at_end} KiB)"
    );
    eprintln!(
        "soak: {} calls in {elapsed:?}, 0 errors, RSS {after_warm_up} -> {at_end} KiB",
        connections * per_connection
    );
}
