//! Key-set behaviour against a real JWKS server on loopback: rotation, kid
//! floods, outages and `max_stale`, slow, garbage, oversized and failing
//! responses, discovery, issuer pinning, HS secrets, and the refresh schedule
//! under tokio's paused time.

use crate::support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use support::{JwksBody, JwksServer, TestKey, unix_now};
use tokengate::identity::{
    AuthError, Authenticator, Freshness, IssuerBuilder, IssuerSettings, IssuerStatus, KeySource,
    RefreshConfig, install_crypto_provider,
};
use tokio::time::{Instant, timeout};

const AUD: &str = "tokengate";
/// The most any wait in these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn claims(iss: &str) -> Value {
    let now = unix_now();
    json!({"iss": iss, "sub": "svc", "aud": AUD, "exp": now + 300, "iat": now})
}

/// A schedule in milliseconds so outage tests finish quickly in real time.
fn fast_refresh() -> RefreshConfig {
    RefreshConfig {
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_millis(200),
        default_ttl: Duration::from_millis(200),
        fetch_timeout: Duration::from_millis(500),
        max_stale: Duration::from_secs(2),
        unknown_kid_cooldown: Duration::from_secs(30),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        max_body_size: 1024 * 1024,
    }
}

fn config(name: &str, server: &JwksServer, refresh: RefreshConfig) -> IssuerSettings {
    let keys = KeySource::jwks_url(&server.jwks_url()).unwrap();
    IssuerBuilder::new(name, &server.base_url(), AUD, keys)
        .refresh(refresh)
        .build()
        .unwrap()
}

/// The issuers of a config file with one `[[issuers]]` table `issuer`, read
/// the way `serve` reads them: secrets and all, through `config::load`.
fn issuers_from_config(issuer: &str) -> Result<Vec<IssuerSettings>, String> {
    let text = format!(
        r#"
[[projects]]
name = "p"
app_id = "970CA35de60c44645bbae8a215061b33"
signing_certificate = "primary"
certificates = [{{ name = "primary", env = "CERT" }}]

[[issuers]]
{issuer}
"#
    );
    let env = |name: &str| (name == "CERT").then(|| "5CFd2fd1755d40ecb72977518be15d3b".to_owned());
    tokengate::config::load(&text, &env)
        .map(|config| config.into_parts().issuers)
        .map_err(|e| e.to_string())
}

async fn verify(auth: &Authenticator, token: &str) -> Result<(), AuthError> {
    auth.authenticate(Some(&format!("Bearer {token}")), unix_now())
        .await
        .map(|_| ())
}

/// Waits until the issuer's status satisfies `pred`, and returns it.
async fn wait_status(
    auth: &Authenticator,
    name: &str,
    pred: impl FnMut(&IssuerStatus) -> bool,
) -> IssuerStatus {
    wait_status_for(PATIENCE, auth, name, pred).await
}

/// `wait_status` with an explicit deadline (paused-time tests need days).
async fn wait_status_for(
    patience: Duration,
    auth: &Authenticator,
    name: &str,
    pred: impl FnMut(&IssuerStatus) -> bool,
) -> IssuerStatus {
    let mut rx = auth.watch_issuer(name).unwrap();
    timeout(patience, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("status never matched; last: {:?}", auth.readiness()))
        .unwrap()
        .clone()
}

#[tokio::test]
async fn rotation_is_picked_up_by_the_unknown_kid_refetch() {
    install_crypto_provider();
    let old = TestKey::generate(Algorithm::RS256, "k1");
    let new = TestKey::generate(Algorithm::ES256, "k2");
    let server = JwksServer::start(&[&old]).await;
    let auth =
        Authenticator::start(vec![config("idp", &server, RefreshConfig::default())]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    assert_eq!(server.jwks_fetches(), 1);
    verify(&auth, &old.mint(&claims(&server.base_url())))
        .await
        .unwrap();

    server.set_keys(&[&old, &new]);
    verify(&auth, &new.mint(&claims(&server.base_url())))
        .await
        .unwrap();
    assert_eq!(
        server.jwks_fetches(),
        2,
        "exactly one refetch for the new kid"
    );
    verify(&auth, &old.mint(&claims(&server.base_url())))
        .await
        .unwrap();
    assert_eq!(server.jwks_fetches(), 2, "known kids never refetch");
}

#[tokio::test]
async fn a_flood_of_unknown_kids_causes_one_fetch_per_cooldown() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "real");
    let server = JwksServer::start(&[&key]).await;
    let auth = std::sync::Arc::new(
        Authenticator::start(vec![config("idp", &server, RefreshConfig::default())]).unwrap(),
    );
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let before = server.jwks_fetches();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let auth = std::sync::Arc::clone(&auth);
        let token = key
            .with_kid(&format!("random-{i}"))
            .mint(&claims(&server.base_url()));
        tasks.push(tokio::spawn(async move { verify(&auth, &token).await }));
    }
    for task in tasks {
        let refused = task.await.unwrap().unwrap_err();
        assert_eq!(refused.reason(), "unknown_key");
    }
    assert_eq!(
        server.jwks_fetches() - before,
        1,
        "200 random kids, one fetch"
    );
    // A second wave of those kids inside their cooldown fetches nothing at
    // all. (Kids never tried are another matter: they may force a refetch
    // each `FORCED_REFETCH_GAP`, so that no junk kid can hold back a
    // genuine rotation; `faults::` covers that.)
    for i in 0..50 {
        let token = key
            .with_kid(&format!("random-{i}"))
            .mint(&claims(&server.base_url()));
        assert_eq!(
            verify(&auth, &token).await.unwrap_err().reason(),
            "unknown_key"
        );
    }
    assert_eq!(server.jwks_fetches() - before, 1);
    assert_eq!(auth.readiness().issuers[0].forced_refetches, 1);
}

#[tokio::test]
async fn an_outage_serves_stale_keys_until_max_stale() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::EdDSA, "ed");
    let server = JwksServer::start(&[&key]).await;
    let auth = Authenticator::start(vec![config("idp", &server, fast_refresh())]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let token = key.mint(&claims(&server.base_url()));
    verify(&auth, &token).await.unwrap();

    server.fail_next(usize::MAX, 503);
    let stale = wait_status(&auth, "idp", |s| s.freshness == Freshness::Stale).await;
    assert!(
        stale.last_error.as_deref().unwrap().contains("503"),
        "{stale:?}"
    );
    verify(&auth, &token).await.expect("stale keys still serve");

    let expired = wait_status(&auth, "idp", |s| s.freshness == Freshness::Expired).await;
    let since_success = expired.last_success.unwrap().elapsed();
    assert!(
        since_success >= Duration::from_secs(2),
        "expired after {since_success:?}"
    );
    let refused = verify(&auth, &token).await.unwrap_err();
    assert_eq!(refused.reason(), "keys_unavailable");
    assert!(
        !refused.keys_never_loaded(),
        "stale keys are not 'never loaded'"
    );
    assert!(
        refused.keys_unavailable(),
        "expired keys are the service's state: UNAVAILABLE"
    );
    assert!(
        !auth.readiness().ready,
        "expired keys take a required issuer out of readiness"
    );

    server.fail_next(0, 503);
    wait_status(&auth, "idp", |s| s.freshness == Freshness::Fresh).await;
    assert!(auth.readiness().ready, "and a success brings it back");
    verify(&auth, &token)
        .await
        .expect("recovered keys serve again");
}

#[tokio::test]
async fn a_slow_server_times_out_and_keys_never_load() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let server = JwksServer::start(&[&key]).await;
    server.set_delay(Duration::from_secs(3));
    let auth = Authenticator::start(vec![config("idp", &server, fast_refresh())]).unwrap();
    let status = wait_status(&auth, "idp", |s| s.failures >= 1).await;
    assert!(status.last_error.unwrap().contains("timed out"));
    assert!(!auth.readiness().ready);
    let refused = verify(&auth, &key.mint(&claims(&server.base_url())))
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "keys_unavailable");
    assert!(
        refused.keys_never_loaded(),
        "the service maps this to UNAVAILABLE"
    );

    server.set_delay(Duration::ZERO);
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    verify(&auth, &key.mint(&claims(&server.base_url())))
        .await
        .unwrap();
}

/// Starts an issuer whose server answers `bad` first, checks the failure,
/// then serves keys and checks recovery.
async fn check_bad_body(bad: impl Fn(&JwksServer), expected_error: &str) {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let server = JwksServer::start(&[&key]).await;
    bad(&server);
    let auth = Authenticator::start(vec![config("idp", &server, fast_refresh())]).unwrap();
    let status = wait_status(&auth, "idp", |s| s.failures >= 2).await;
    let error = status.last_error.unwrap();
    assert!(error.contains(expected_error), "{error}");
    assert!(!status.loaded);
    server.set_body(JwksBody::Keys);
    server.fail_next(0, 500);
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    verify(&auth, &key.mint(&claims(&server.base_url())))
        .await
        .unwrap();
}

#[tokio::test]
async fn garbage_json_is_refused() {
    check_bad_body(|s| s.set_body(JwksBody::Garbage), "not valid json").await;
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    check_bad_body(
        |s| s.set_body(JwksBody::Oversized(2 << 20)),
        "exceeds 1048576 bytes",
    )
    .await;
}

#[tokio::test]
async fn oversized_chunked_bodies_are_refused_while_streaming() {
    check_bad_body(
        |s| s.set_body(JwksBody::OversizedChunked(2 << 20)),
        "exceeds 1048576 bytes",
    )
    .await;
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    check_bad_body(|s| s.fail_next(usize::MAX, 500), "http 500").await;
}

#[tokio::test]
async fn a_jwks_without_usable_keys_keeps_the_last_good_set() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::PS256, "ps");
    let server = JwksServer::start(&[&key]).await;
    let auth = Authenticator::start(vec![config("idp", &server, fast_refresh())]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    // Only an encryption key and a symmetric key: nothing we may verify with.
    let mut enc = key.jwk.clone();
    enc["use"] = json!("enc");
    server.set_raw_keys(vec![
        enc,
        json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0", "kid": "ps"}),
    ]);
    let status = wait_status(&auth, "idp", |s| s.freshness == Freshness::Stale).await;
    assert!(status.last_error.unwrap().contains("no usable key"));
    verify(&auth, &key.mint(&claims(&server.base_url())))
        .await
        .unwrap();
}

#[tokio::test]
async fn discovery_finds_the_jwks_and_checks_the_issuer() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::RS256, "rs");
    let server = JwksServer::start(&[&key]).await;
    let discovery = KeySource::discovery_of(&server.base_url()).unwrap();
    let discovered = IssuerBuilder::new("discovered", &server.base_url(), AUD, discovery)
        .build()
        .unwrap();
    let auth = Authenticator::start(vec![discovered]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    assert_eq!((server.discovery_fetches(), server.jwks_fetches()), (1, 1));
    verify(&auth, &key.mint(&claims(&server.base_url())))
        .await
        .unwrap();
    drop(auth);

    let hijacked = JwksServer::start(&[&key]).await;
    hijacked.set_discovery_issuer("https://evil.example");
    let discovery = KeySource::discovery_url(&hijacked.discovery_url()).unwrap();
    let config = IssuerBuilder::new("hijacked", &hijacked.base_url(), AUD, discovery)
        .refresh(fast_refresh())
        .build()
        .unwrap();
    let auth = Authenticator::start(vec![config]).unwrap();
    let status = wait_status(&auth, "hijacked", |s| s.failures >= 2).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("names issuer"),
        "{status:?}"
    );
    assert_eq!(
        hijacked.jwks_fetches(),
        0,
        "keys of a mismatched issuer are never fetched"
    );
    let refused = verify(&auth, &key.mint(&claims(&hijacked.base_url())))
        .await
        .unwrap_err();
    assert!(refused.keys_never_loaded());
}

#[tokio::test]
async fn each_issuer_verifies_only_with_its_own_keys() {
    install_crypto_provider();
    // Both issuers publish the same kid with different keys.
    let a_key = TestKey::generate(Algorithm::ES256, "shared");
    let b_key = TestKey::generate(Algorithm::ES256, "shared");
    let a = JwksServer::start(&[&a_key]).await;
    let b = JwksServer::start(&[&b_key]).await;
    let auth = Authenticator::start(vec![
        config("a", &a, RefreshConfig::default()),
        config("b", &b, RefreshConfig::default()),
    ])
    .unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let readiness = auth.readiness();
    assert!(readiness.ready);
    assert_eq!(readiness.issuers.len(), 2);
    verify(&auth, &a_key.mint(&claims(&a.base_url())))
        .await
        .unwrap();
    verify(&auth, &b_key.mint(&claims(&b.base_url())))
        .await
        .unwrap();
    let forged = b_key.mint(&claims(&a.base_url()));
    assert_eq!(
        verify(&auth, &forged).await.unwrap_err().reason(),
        "bad_signature"
    );
}

#[tokio::test]
async fn readiness_waits_for_every_issuer() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let up = JwksServer::start(&[&key]).await;
    let down = JwksServer::start(&[&key]).await;
    down.fail_next(usize::MAX, 503);
    let auth = Authenticator::start(vec![
        config("up", &up, fast_refresh()),
        config("down", &down, fast_refresh()),
    ])
    .unwrap();
    wait_status(&auth, "up", |s| s.loaded).await;
    wait_status(&auth, "down", |s| s.failures >= 1).await;
    let readiness = auth.readiness();
    assert!(!readiness.ready);
    assert_eq!(
        readiness
            .issuers
            .iter()
            .map(|s| s.loaded)
            .collect::<Vec<_>>(),
        [true, false]
    );
    down.fail_next(0, 503);
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    assert!(auth.readiness().ready);
}

#[tokio::test]
async fn cache_control_max_age_drives_the_schedule() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let server = JwksServer::start(&[&key]).await;
    server.set_cache_control(Some("public, max-age=0"));
    let refresh = RefreshConfig {
        min_refresh: Duration::from_millis(100),
        max_refresh: Duration::from_secs(3600),
        default_ttl: Duration::from_secs(3600),
        ..fast_refresh()
    };
    let auth = Authenticator::start(vec![config("idp", &server, refresh)]).unwrap();
    // max-age=0 is clamped up to min_refresh (100 ms), not down to a busy loop
    // and not up to the one-hour default.
    let status = wait_status(&auth, "idp", |s| s.fetches >= 4).await;
    assert_eq!(status.failures, 0);
}

#[tokio::test]
async fn hs256_needs_a_configured_secret() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let secret = b"0123456789abcdef0123456789abcdef-hs";
    std::fs::write(
        dir.path().join("secret"),
        [secret.as_slice(), b"\n"].concat(),
    )
    .unwrap();
    let config = issuers_from_config(&format!(
        "name = \"shared\"\nissuer = \"https://hs.test\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"HS256\"]\nhs_secret_file = {:?}",
        dir.path().join("secret").display().to_string()
    ))
    .unwrap();
    let auth = Authenticator::start(config).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let debug = format!("{auth:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(
        !debug.contains("0123456789abcdef"),
        "Debug never shows the secret"
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret).unwrap();
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("https://hs.test"),
        &key,
    )
    .unwrap();
    verify(&auth, &token).await.unwrap();
    let wrong =
        jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-000").unwrap();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("https://hs.test"),
        &wrong,
    )
    .unwrap();
    assert_eq!(
        verify(&auth, &forged).await.unwrap_err().reason(),
        "bad_signature"
    );
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims("https://hs.test"),
        &key,
    )
    .unwrap();
    assert_eq!(
        verify(&auth, &hs384).await.unwrap_err().reason(),
        "algorithm_not_allowed"
    );
    // A secret shorter than the hash is refused when the config is read
    // (before anything starts), naming the key.
    std::fs::write(dir.path().join("short"), b"short").unwrap();
    let err = issuers_from_config(&format!(
        "name = \"short\"\nissuer = \"https://short.test\"\naudiences = [\"{AUD}\"]\n\
         algorithms = [\"HS256\"]\nhs_secret_file = {:?}",
        dir.path().join("short").display().to_string()
    ))
    .unwrap_err();
    assert!(err.starts_with("issuers[0].hs_secret_file"), "{err}");
    assert!(
        !err.contains("short\""),
        "the secret is never echoed: {err}"
    );
}

/// Long enough for any paused-time wait below; auto-advance would otherwise
/// jump straight to a short test deadline.
const DAYS: Duration = Duration::from_secs(3 * 86_400);

/// The refresh schedule with its real defaults (10 min TTL, 24 h max_stale),
/// driven by paused time over a JWKS file.
#[tokio::test(start_paused = true)]
async fn the_default_schedule_expires_stale_keys_after_a_day() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, support::jwks(&[&key]).to_string()).unwrap();
    let config = IssuerBuilder::new(
        "file",
        "https://file.test",
        AUD,
        KeySource::File(path.clone()),
    )
    .build()
    .unwrap();
    let auth = Authenticator::start(vec![config]).unwrap();
    let loaded = wait_status_for(DAYS, &auth, "file", |s| s.loaded).await;
    let first_load = loaded.last_success.unwrap();
    let token = key.mint(&claims("https://file.test"));
    verify(&auth, &token).await.unwrap();

    // The default TTL is 10 minutes: the second read happens then, not before.
    let second = wait_status_for(DAYS, &auth, "file", |s| s.fetches >= 2).await;
    let waited = second.last_success.unwrap() - first_load;
    assert_eq!(waited.as_secs(), 600, "refreshed after {waited:?}");

    std::fs::remove_file(&path).unwrap();
    let last_good = second.last_success.unwrap();
    let stale = wait_status_for(DAYS, &auth, "file", |s| s.freshness == Freshness::Stale).await;
    assert!(stale.last_error.unwrap().contains("cannot read"));
    verify(&auth, &token)
        .await
        .expect("stale keys serve during the outage");

    wait_status_for(DAYS, &auth, "file", |s| s.freshness == Freshness::Expired).await;
    let expired_after = Instant::now() - last_good;
    assert!(
        expired_after >= Duration::from_secs(24 * 3600)
            && expired_after < Duration::from_secs(24 * 3600 + 61),
        "expired after {expired_after:?}"
    );
    let refused = verify(&auth, &token).await.unwrap_err();
    assert!(
        matches!(refused, AuthError::KeysExpired { .. }),
        "{refused:?}"
    );
}
