//! The verified-JWT cache (issue 13), against real key sources: a repeated
//! JWT is answered from the cache (and `/metrics` of the real server says
//! so, with the verification counter left alone), a token that expires while
//! cached is refused exactly as without the cache, a key rotation or key
//! expiry at the JWKS server invalidates what was cached under the old keys,
//! an explicit invalidation does too, refusals are never cached, the bound
//! holds, and with the cache off nothing changes. `now` is the argument
//! `authenticate` takes, so time is moved without waiting for it.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::fixtures::{LOBBY, rtc};
use support::server::{AUDIENCE, ISSUER, InProcess, TestServer, config_text, test_keys};
use support::{JwksServer, TestKey, jwks, unix_now};
use tokengate::grpc::pb;
use tokengate::identity::{
    Authenticator, CacheLookup, Freshness, HsSecret, IssuerBuilder, IssuerSettings, KeySource,
    RefreshConfig, VerifiedCacheSettings, install_crypto_provider,
};
use tokio::time::timeout;

const ISS: &str = "https://idp.cache.test";
const AUD: &str = "tokengate";
/// A fixed `now` for the tests that move time by hand (2027).
const T: u64 = 1_800_000_000;
/// The most any wait in these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// A cache that keeps a verification for an hour, so that only the token's
/// own claims (or a key change) can end an entry within a test.
fn long_cache() -> VerifiedCacheSettings {
    VerifiedCacheSettings::new(true, 1000, Duration::from_secs(3600)).unwrap()
}

fn inline_issuer(name: &str, keys: &[&TestKey]) -> IssuerBuilder {
    IssuerBuilder::new(name, ISS, AUD, KeySource::Inline(jwks(keys).to_string()))
}

async fn started(issuers: Vec<IssuerSettings>, cache: &VerifiedCacheSettings) -> Authenticator {
    install_crypto_provider();
    let auth = Authenticator::start_with_cache(issuers, cache).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    auth
}

/// What one call saw: the cache's part, and the reason of a refusal (`ok` for a success).
async fn call(auth: &Authenticator, token: &str, now: u64) -> (CacheLookup, &'static str) {
    let authentication = auth
        .authenticate_call(Some(&format!("Bearer {token}")), now)
        .await;
    let reason = match &authentication.result {
        Ok(_) => "ok",
        Err(error) => error.reason(),
    };
    (authentication.cache, reason)
}

fn claims(extra: Value) -> Value {
    let mut claims = json!({"iss": ISS, "sub": "svc", "aud": AUD, "iat": T, "exp": T + 300});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    claims
}

#[tokio::test]
async fn a_repeated_jwt_is_answered_from_the_cache_with_the_same_principal() {
    let key = TestKey::generate(Algorithm::RS256, "k1");
    let auth = started(
        vec![inline_issuer("idp", &[&key]).build().unwrap()],
        &VerifiedCacheSettings::default(),
    )
    .await;
    let token = key.mint(&claims(json!({"teams": ["blue"], "scope": "rtc:token"})));
    let bearer = format!("Bearer {token}");
    let first = auth.authenticate_call(Some(&bearer), T).await;
    assert_eq!(first.cache, CacheLookup::Miss);
    assert_eq!(first.issuer, Some("idp"));
    let first = first.result.unwrap();
    for later in [T, T + 1, T + 59] {
        let again = auth.authenticate_call(Some(&bearer), later).await;
        assert_eq!(again.cache, CacheLookup::Hit, "at {later}");
        assert_eq!(again.issuer, Some("idp"));
        assert_eq!(*again.result.unwrap(), *first, "the same principal");
    }
    assert_eq!(auth.verified_cache_stats().unwrap().entries, 1);
    // The default max_age is 60 s: after it, the token is verified again.
    assert_eq!(
        call(&auth, &token, T + 60).await,
        (CacheLookup::Stale, "ok")
    );
    assert_eq!(call(&auth, &token, T + 61).await, (CacheLookup::Hit, "ok"));
    // The public `authenticate` takes the same path.
    let principal = auth.authenticate(Some(&bearer), T + 62).await.unwrap();
    assert_eq!(principal, *first);
}

#[tokio::test]
async fn a_token_that_expires_while_cached_is_refused_as_without_the_cache() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let issuer = || inline_issuer("idp", &[&key]).build().unwrap();
    let cached = started(vec![issuer()], &long_cache()).await;
    let uncached = started(vec![issuer()], &VerifiedCacheSettings::disabled()).await;
    // exp T+100; with the default 60 s leeway it is accepted up to T+160.
    let token = key.mint(&claims(json!({"exp": T + 100})));
    assert_eq!(call(&cached, &token, T).await, (CacheLookup::Miss, "ok"));
    assert_eq!(
        call(&cached, &token, T + 160).await,
        (CacheLookup::Hit, "ok")
    );
    let refused = call(&cached, &token, T + 161).await;
    let without = call(&uncached, &token, T + 161).await;
    assert_eq!(without, (CacheLookup::Off, "expired"));
    assert_eq!(
        refused,
        (CacheLookup::Hit, "expired"),
        "refused from the cache, for the same reason"
    );
    // An expired entry is dropped: the next call verifies (and refuses) in full.
    assert_eq!(
        call(&cached, &token, T + 162).await,
        (CacheLookup::Miss, "expired")
    );
    assert_eq!(cached.verified_cache_stats().unwrap().entries, 0);
}

#[tokio::test]
async fn the_cache_never_changes_an_answer_whatever_the_clock_does() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let issuer = || {
        inline_issuer("idp", &[&key])
            .leeway(Duration::from_secs(5))
            .max_token_lifetime(Duration::from_secs(600))
            .build()
            .unwrap()
    };
    let cached = started(vec![issuer()], &long_cache()).await;
    let uncached = started(vec![issuer()], &VerifiedCacheSettings::disabled()).await;
    let tokens = [
        key.mint(&claims(json!({}))),
        key.mint(&claims(json!({"exp": T + 20}))),
        key.mint(&claims(json!({"nbf": T + 30, "exp": T + 400}))),
        key.mint(&claims(json!({"iat": T + 10}))),
        // No iat: the lifetime cap is exp - now, which grows if the clock steps back.
        key.mint(&json!({"iss": ISS, "sub": "svc", "aud": AUD, "exp": T + 590})),
    ];
    // Forward, with steps back (an NTP correction) and jumps past max_age.
    let nows = [
        T,
        T + 1,
        T + 3,
        T + 24,
        T + 26,
        T + 12,
        T - 20,
        T + 2,
        T + 35,
        T + 36,
        T + 34,
        T + 300,
        T + 404,
        T + 406,
        T + 5000,
        T - 5000,
        T,
    ];
    let mut hits = 0;
    for now in nows {
        for (i, token) in tokens.iter().enumerate() {
            let bearer = format!("Bearer {token}");
            let with = cached.authenticate_call(Some(&bearer), now).await;
            let without = uncached.authenticate(Some(&bearer), now).await;
            hits += usize::from(with.cache == CacheLookup::Hit);
            assert_eq!(
                with.result.map(|p| (*p).clone()),
                without,
                "token {i} at T{:+}",
                now as i64 - T as i64
            );
        }
    }
    assert!(hits >= 10, "the cache answered only {hits} calls");
}

/// A JWKS issuer on `server` that refreshes every 200 ms, with the cache of `long_cache`.
async fn fast_jwks_issuer(server: &JwksServer) -> Authenticator {
    let refresh = RefreshConfig {
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_millis(200),
        default_ttl: Duration::from_millis(200),
        fetch_timeout: Duration::from_millis(500),
        max_stale: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..RefreshConfig::default()
    };
    let settings = IssuerBuilder::new(
        "idp",
        &server.base_url(),
        AUD,
        KeySource::jwks_url(&server.jwks_url()).unwrap(),
    )
    .refresh(refresh)
    .build()
    .unwrap();
    started(vec![settings], &long_cache()).await
}

/// Waits until the issuer has made `fetches` fetch attempts in all.
async fn wait_fetches(auth: &Authenticator, fetches: u64) {
    let mut status = auth.watch_issuer("idp").unwrap();
    timeout(PATIENCE, status.wait_for(|s| s.fetches >= fetches))
        .await
        .expect("the refresher fetched")
        .unwrap();
}

#[tokio::test]
async fn a_key_removed_at_the_idp_invalidates_what_it_signed() {
    let old = TestKey::generate(Algorithm::RS256, "old");
    let new = TestKey::generate(Algorithm::ES256, "new");
    let server = JwksServer::start(&[&old, &new]).await;
    // The refresher follows Cache-Control max-age, clamped to 200 ms.
    server.set_cache_control(None);
    let auth = fast_jwks_issuer(&server).await;
    let now = unix_now();
    let mint = |key: &TestKey| {
        let iss = server.base_url();
        key.mint(&json!({"iss": iss, "sub": "svc", "aud": AUD, "iat": now, "exp": now + 300}))
    };
    let (by_old, by_new) = (mint(&old), mint(&new));
    for token in [&by_old, &by_new] {
        assert_eq!(call(&auth, token, now).await, (CacheLookup::Miss, "ok"));
        assert_eq!(call(&auth, token, now).await, (CacheLookup::Hit, "ok"));
    }
    // Refreshes that fetch the same document keep the entries.
    let fetched = auth.watch_issuer("idp").unwrap().borrow().fetches;
    wait_fetches(&auth, fetched + 2).await;
    assert_eq!(call(&auth, &by_old, now).await, (CacheLookup::Hit, "ok"));

    server.set_keys(&[&new]);
    let fetched = auth.watch_issuer("idp").unwrap().borrow().fetches;
    wait_fetches(&auth, fetched + 1).await;
    assert_eq!(
        call(&auth, &by_old, now).await,
        (CacheLookup::Stale, "unknown_key"),
        "cached, but its key is gone"
    );
    assert_eq!(
        call(&auth, &by_old, now).await,
        (CacheLookup::Miss, "unknown_key"),
        "and a refusal is never cached"
    );
    // The key that stayed verifies again under the new set, then hits.
    assert_eq!(call(&auth, &by_new, now).await, (CacheLookup::Stale, "ok"));
    assert_eq!(call(&auth, &by_new, now).await, (CacheLookup::Hit, "ok"));
}

#[tokio::test]
async fn keys_expired_after_max_stale_invalidate_the_cache() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let server = JwksServer::start(&[&key]).await;
    server.set_cache_control(None);
    let auth = fast_jwks_issuer(&server).await;
    let now = unix_now();
    let token = key.mint(
        &json!({"iss": server.base_url(), "sub": "svc", "aud": AUD, "iat": now, "exp": now + 300}),
    );
    assert_eq!(call(&auth, &token, now).await, (CacheLookup::Miss, "ok"));
    assert_eq!(call(&auth, &token, now).await, (CacheLookup::Hit, "ok"));
    server.fail_next(usize::MAX, 503);
    let mut status = auth.watch_issuer("idp").unwrap();
    timeout(
        PATIENCE,
        status.wait_for(|s| s.freshness == Freshness::Expired),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        call(&auth, &token, now).await,
        (CacheLookup::Stale, "keys_unavailable"),
        "refused like an uncached token once the keys are too old to trust"
    );
}

#[tokio::test]
async fn invalidating_an_issuer_drops_only_its_entries() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    const SECRET: &[u8] = b"an hs256 secret of at least 32 bytes!";
    let hs = IssuerBuilder::new("hs", "https://hs.cache.test", AUD, KeySource::SecretOnly)
        .algorithms(vec![Algorithm::HS256])
        .hs_secret(HsSecret::new(SECRET).unwrap())
        .build()
        .unwrap();
    let auth = started(
        vec![inline_issuer("idp", &[&key]).build().unwrap(), hs],
        &long_cache(),
    )
    .await;
    let by_key = key.mint(&claims(json!({})));
    let by_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims(json!({"iss": "https://hs.cache.test"})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    for token in [&by_key, &by_secret] {
        assert_eq!(call(&auth, token, T).await, (CacheLookup::Miss, "ok"));
        assert_eq!(call(&auth, token, T).await, (CacheLookup::Hit, "ok"));
    }
    assert!(auth.invalidate_issuer("hs"));
    assert!(!auth.invalidate_issuer("nobody"));
    assert_eq!(call(&auth, &by_secret, T).await, (CacheLookup::Miss, "ok"));
    assert_eq!(call(&auth, &by_secret, T).await, (CacheLookup::Hit, "ok"));
    assert_eq!(call(&auth, &by_key, T).await, (CacheLookup::Hit, "ok"));
}

#[tokio::test]
async fn refusals_are_never_cached() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let stranger = TestKey::generate(Algorithm::ES256, "k1");
    let auth = started(
        vec![
            inline_issuer("idp", &[&key])
                .required_claims(vec!["teams".into()])
                .build()
                .unwrap(),
        ],
        &long_cache(),
    )
    .await;
    let good = claims(json!({"teams": ["blue"]}));
    let cases = [
        (stranger.mint(&good), "bad_signature"),
        (
            key.mint(&claims(json!({"aud": "someone-else", "teams": []}))),
            "bad_audience",
        ),
        (key.mint(&claims(json!({}))), "missing_claim"),
        (key.mint(&claims(json!({"exp": T - 100}))), "expired"),
        ("not.a.jwt".to_owned(), "malformed"),
    ];
    for (token, reason) in &cases {
        for _ in 0..3 {
            assert_eq!(call(&auth, token, T).await, (CacheLookup::Miss, *reason));
        }
    }
    assert_eq!(auth.verified_cache_stats().unwrap().entries, 0);
    assert_eq!(
        call(&auth, &key.mint(&good), T).await,
        (CacheLookup::Miss, "ok")
    );
    assert_eq!(auth.verified_cache_stats().unwrap().entries, 1);
}

#[tokio::test]
async fn the_bound_holds_and_a_flood_of_valid_tokens_leaves_the_one_in_use() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let cache = VerifiedCacheSettings::new(true, 40, Duration::from_secs(60)).unwrap();
    let auth = started(vec![inline_issuer("idp", &[&key]).build().unwrap()], &cache).await;
    let in_use = key.mint(&claims(json!({"jti": "in-use"})));
    assert_eq!(call(&auth, &in_use, T).await, (CacheLookup::Miss, "ok"));
    assert_eq!(call(&auth, &in_use, T).await, (CacheLookup::Hit, "ok"));
    // Every token of the flood is valid and verified in full: the cost of
    // each eviction is a signed token and a verification.
    for i in 0..200 {
        let token = key.mint(&claims(json!({"jti": format!("flood-{i}")})));
        assert_eq!(call(&auth, &token, T).await, (CacheLookup::Miss, "ok"));
        let stats = auth.verified_cache_stats().unwrap();
        assert!(stats.entries <= 40, "{} entries after {i}", stats.entries);
    }
    let stats = auth.verified_cache_stats().unwrap();
    assert_eq!(stats.capacity, 40);
    assert_eq!(stats.entries, 40);
    assert_eq!(stats.evictions, 201 - 40);
    assert_eq!(
        call(&auth, &in_use, T).await,
        (CacheLookup::Hit, "ok"),
        "the token in use was not pushed out"
    );
}

#[tokio::test]
async fn with_the_cache_off_or_an_issuer_left_out_every_call_verifies() {
    let key = TestKey::generate(Algorithm::ES256, "k1");
    let token = key.mint(&claims(json!({})));
    let off = started(
        vec![inline_issuer("idp", &[&key]).build().unwrap()],
        &VerifiedCacheSettings::disabled(),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(call(&off, &token, T).await, (CacheLookup::Off, "ok"));
    }
    assert!(off.verified_cache_stats().is_none());

    // One issuer in, one left out (`verified_cache = false`).
    let other = TestKey::generate(Algorithm::ES256, "k2");
    let left_out = IssuerBuilder::new(
        "left-out",
        "https://other.cache.test",
        AUD,
        KeySource::Inline(jwks(&[&other]).to_string()),
    )
    .verified_cache(false)
    .build()
    .unwrap();
    let mixed = started(
        vec![inline_issuer("idp", &[&key]).build().unwrap(), left_out],
        &long_cache(),
    )
    .await;
    let other_token = other.mint(&claims(json!({"iss": "https://other.cache.test"})));
    for _ in 0..3 {
        assert_eq!(
            call(&mixed, &other_token, T).await,
            (CacheLookup::Off, "ok")
        );
    }
    assert_eq!(call(&mixed, &token, T).await, (CacheLookup::Miss, "ok"));
    assert_eq!(call(&mixed, &token, T).await, (CacheLookup::Hit, "ok"));
    assert_eq!(mixed.verified_cache_stats().unwrap().entries, 1);

    // With every issuer left out there is no cache at all.
    let none = started(
        vec![
            inline_issuer("idp", &[&key])
                .verified_cache(false)
                .build()
                .unwrap(),
        ],
        &long_cache(),
    )
    .await;
    assert_eq!(call(&none, &token, T).await, (CacheLookup::Off, "ok"));
    assert!(none.verified_cache_stats().is_none());
}

/// The samples of a metrics exposition: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(admin: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    samples(&text)
}

/// Three `IssueRtcToken` calls with one JWT through the real server, and its `/metrics` after.
async fn three_calls(extra_config: &str) -> BTreeMap<String, f64> {
    let (jwks, es256, rs256) = test_keys().await;
    let text = format!("{}\n{extra_config}", config_text(&jwks.jwks_url(), LOBBY));
    let server = TestServer::start_with(text, jwks, es256, rs256).await;
    server.wait_ready().await;
    let jwt = server.rs256.mint(&TestServer::claims("alice", json!({})));
    let mut client = server.client().await;
    for _ in 0..3 {
        client
            .issue_rtc_token(TestServer::authed(
                &jwt,
                rtc("lobby-1", pb::Role::Subscriber),
            ))
            .await
            .unwrap();
    }
    let metrics = scrape(server.admin).await;
    server.shutdown().await;
    metrics
}

#[tokio::test]
async fn the_servers_metrics_count_hits_and_leave_the_verification_counter_alone() {
    let on = three_calls("").await;
    let value = |m: &BTreeMap<String, f64>, series: &str| m.get(series).copied();
    assert_eq!(
        value(
            &on,
            r#"tokengate_jwt_cache_requests_total{issuer="test-idp",result="miss"}"#
        ),
        Some(1.0),
        "{on:#?}"
    );
    assert_eq!(
        value(
            &on,
            r#"tokengate_jwt_cache_requests_total{issuer="test-idp",result="hit"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &on,
            r#"tokengate_jwt_verifications_total{issuer="test-idp",outcome="ok"}"#
        ),
        Some(1.0),
        "only the miss verified a signature"
    );
    assert_eq!(
        value(
            &on,
            r#"tokengate_jwt_verification_seconds_count{issuer="test-idp"}"#
        ),
        Some(1.0)
    );
    assert_eq!(value(&on, "tokengate_jwt_cache_entries"), Some(1.0));
    assert_eq!(value(&on, "tokengate_jwt_cache_capacity"), Some(10_000.0));
    assert_eq!(value(&on, "tokengate_jwt_cache_evictions_total"), Some(0.0));
    assert_eq!(
        value(
            &on,
            r#"tokengate_decisions_total{action="rtc",decision="allow",reason="none"}"#
        ),
        Some(3.0)
    );

    let off = three_calls("[jwt_cache]\nenabled = false\n").await;
    assert_eq!(
        value(
            &off,
            r#"tokengate_jwt_verifications_total{issuer="test-idp",outcome="ok"}"#
        ),
        Some(3.0),
        "{off:#?}"
    );
    assert!(
        !off.keys()
            .any(|k| k.starts_with("tokengate_jwt_cache_requests_total")),
        "no lookups with the cache off"
    );
    assert_eq!(value(&off, "tokengate_jwt_cache_capacity"), Some(0.0));
    assert_eq!(value(&off, "tokengate_jwt_cache_entries"), Some(0.0));
}

#[tokio::test]
async fn an_expired_jwt_is_refused_by_the_server_from_the_cache_as_without_it() {
    // A JWT that expires a few seconds from now, on two servers with no
    // leeway that share its issuer: cached at the first call, refused once
    // it expires, with the same status and reason as without the cache.
    let (jwks, es256, _rs256) = test_keys().await;
    let base = config_text(&jwks.jwks_url(), LOBBY).replacen(
        "jwks_url = ",
        "leeway = \"0s\"\njwks_url = ",
        1,
    );
    let on = InProcess::start(&base).await;
    let off = InProcess::start(&format!("{base}\n[jwt_cache]\nenabled = false\n")).await;
    on.wait_ready().await;
    off.wait_ready().await;
    let exp = unix_now() + 2;
    let jwt = es256.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": exp}));
    let issue = |server: &InProcess| {
        let jwt = jwt.clone();
        let addr = server.addr;
        async move {
            let mut client =
                pb::token_service_client::TokenServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
            client
                .issue_rtc_token(TestServer::authed(
                    &jwt,
                    rtc("lobby-1", pb::Role::Subscriber),
                ))
                .await
        }
    };
    issue(&on).await.unwrap();
    issue(&on).await.unwrap();
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached = issue(&on).await.unwrap_err();
    let uncached = issue(&off).await.unwrap_err();
    assert_eq!(cached.code(), tonic::Code::Unauthenticated);
    assert_eq!(cached.code(), uncached.code());
    assert_eq!(cached.message(), uncached.message());
    let reason = |s: &tonic::Status| {
        use tonic_types::StatusExt as _;
        s.get_error_details().error_info().unwrap().reason.clone()
    };
    assert_eq!(reason(&cached), "expired");
    assert_eq!(reason(&cached), reason(&uncached));
    let metrics = scrape(on.admin).await;
    assert_eq!(
        metrics
            .get(r#"tokengate_jwt_cache_requests_total{issuer="test-idp",result="hit"}"#)
            .copied(),
        Some(2.0),
        "the refusal came from the cache: {metrics:#?}"
    );
    assert_eq!(
        metrics
            .get(r#"tokengate_jwt_verifications_total{issuer="test-idp",outcome="expired"}"#)
            .copied(),
        None,
        "no verification refused it"
    );
    on.shutdown().await;
    off.shutdown().await;
}

#[test]
fn the_config_file_sets_the_cache_and_names_a_bad_key() {
    let load = |extra: &str| {
        let text = format!("{}\n{extra}", config_text("http://127.0.0.1:9/jwks", LOBBY));
        tokengate::config::load(&text, &support::server::test_env)
    };
    let default = load("").unwrap();
    assert_eq!(*default.jwt_cache(), VerifiedCacheSettings::default());
    assert!(default.jwt_cache().enabled(), "on by default");
    assert!(default.issuers()[0].verified_cache());
    let set = load("[jwt_cache]\nmax_entries = 500\nmax_age = \"5m\"\n").unwrap();
    assert_eq!(
        *set.jwt_cache(),
        VerifiedCacheSettings::new(true, 500, Duration::from_secs(300)).unwrap()
    );
    assert!(
        !load("[jwt_cache]\nenabled = false\n")
            .unwrap()
            .jwt_cache()
            .enabled()
    );
    let cases = [
        ("[jwt_cache]\nmax_entries = 0\n", "jwt_cache.max_entries"),
        (
            "[jwt_cache]\nmax_entries = 1000001\n",
            "jwt_cache.max_entries",
        ),
        ("[jwt_cache]\nmax_age = \"0s\"\n", "jwt_cache.max_age"),
        ("[jwt_cache]\nmax_age = \"2h\"\n", "jwt_cache.max_age"),
        (
            "[jwt_cache]\nenabled = false\nmax_age = \"2h\"\n",
            "jwt_cache.max_age",
        ),
        ("[jwt_cache]\nentries = 10\n", "jwt_cache"),
    ];
    for (extra, key) in cases {
        let error = load(extra).unwrap_err().to_string();
        assert!(error.starts_with(key), "{extra:?}: {error}");
    }
    let left_out = config_text("http://127.0.0.1:9/jwks", LOBBY).replacen(
        "name = \"test-idp\"",
        "name = \"test-idp\"\nverified_cache = false",
        1,
    );
    let config = tokengate::config::load(&left_out, &support::server::test_env).unwrap();
    assert!(!config.issuers()[0].verified_cache());
    let bad = left_out.replacen("verified_cache = false", "verified_cache = \"no\"", 1);
    let error = tokengate::config::load(&bad, &support::server::test_env)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("issuers[0].verified_cache"), "{error}");
}
