//! Issue 10's identity hardening, against real servers on loopback: readiness
//! per issuer (`required_for_readiness`), HS secrets that are public keys or
//! sit beside public keys refused at load, unknown-`kid` floods that never
//! hold a good caller, and `max_token_lifetime` with absurd `exp` values.

use crate::support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use support::server::{AUDIENCE, ISSUER, TestServer, config_text};
use support::{JwksServer, TestKey, unix_now};
use tokengate::grpc::pb::{IssueRtcTokenRequest, Role};
use tokengate::identity::{
    AuthError, Authenticator, IssuerBuilder, IssuerSettings, KeySource, MAX_EXP, RefreshConfig,
    install_crypto_provider,
};

const RULES: &str = r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
account_claim = "sub"
"#;

/// The partner issuer of the readiness tests.
const PARTNER_ISS: &str = "https://partner.test.example";
/// The most any wait in these tests may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(30);

fn lobby(jwt: &str) -> tonic::Request<IssueRtcTokenRequest> {
    TestServer::authed(
        jwt,
        IssueRtcTokenRequest {
            channel: "lobby-1".into(),
            role: Role::Subscriber as i32,
            ..Default::default()
        },
    )
}

/// The ErrorInfo reason of a refusal, after checking its code.
fn reason(status: &tonic::Status, code: Code) -> String {
    assert_eq!(status.code(), code, "{status:?}");
    status
        .get_error_details()
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
        .reason
        .clone()
}

/// A second `[[issuers]]` table for the partner IdP at `jwks_url`, plus `extra` keys.
fn partner_issuer(jwks_url: &str, extra: &str) -> String {
    format!(
        "[[issuers]]\nname = \"partner\"\nissuer = \"{PARTNER_ISS}\"\naudiences = [\"{AUDIENCE}\"]\njwks_url = \"{jwks_url}\"\n{extra}\n"
    )
}

async fn health_status(server: &TestServer, service: &str) -> i32 {
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn readyz(server: &TestServer) -> u16 {
    reqwest::get(format!("http://{}/readyz", server.admin))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_optional_issuer_without_keys_leaves_the_service_serving() {
    let partner_key = TestKey::generate(Algorithm::ES256, "partner-1");
    let partner = JwksServer::start(&[&partner_key]).await;
    partner.fail_next(usize::MAX, 503);
    let second = partner_issuer(&partner.jwks_url(), "required_for_readiness = false");
    // Both issuers reach the lobby, which binds `sub`: say it is one user namespace.
    let server = TestServer::start(&format!("{second}\n{RULES}shared_identity = true\n")).await;

    // The healthy, required issuer is enough: ready, on both health surfaces.
    server.wait_ready().await;
    for service in ["", "tokengate.v1.TokenService"] {
        assert_eq!(
            health_status(&server, service).await,
            ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    assert_eq!(readyz(&server).await, 200);
    assert!(partner.jwks_fetches() >= 1, "the partner's keys were tried");

    // Its callers are served; the broken issuer's callers are told to retry.
    let mut client = server.client().await;
    let alice = server.mint("alice", json!({}));
    client.issue_rtc_token(lobby(&alice)).await.unwrap();
    let now = unix_now();
    let bob = partner_key.mint(&json!({
        "iss": PARTNER_ISS, "aud": AUDIENCE, "sub": "bob", "iat": now, "exp": now + 600,
    }));
    let refused = client.issue_rtc_token(lobby(&bob)).await.unwrap_err();
    assert_eq!(reason(&refused, Code::Unavailable), "keys_unavailable");
    server.shutdown().await;
}

/// One issuer at `server`'s JWKS, optional for readiness, with a fast schedule.
fn optional(name: &str, server: &JwksServer) -> IssuerSettings {
    let refresh = RefreshConfig {
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_millis(200),
        default_ttl: Duration::from_millis(200),
        fetch_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..RefreshConfig::default()
    };
    IssuerBuilder::new(
        name,
        &server.base_url(),
        AUDIENCE,
        KeySource::jwks_url(&server.jwks_url()).unwrap(),
    )
    .refresh(refresh)
    .required_for_readiness(false)
    .build()
    .unwrap()
}

#[tokio::test]
async fn with_no_required_issuer_readiness_needs_one_loaded() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es");
    let a = JwksServer::start(&[&key]).await;
    let b = JwksServer::start(&[&key]).await;
    a.fail_next(usize::MAX, 503);
    b.fail_next(usize::MAX, 503);
    let auth = Authenticator::start(vec![optional("a", &a), optional("b", &b)]).unwrap();
    // Both fail for a while: never ready, whatever is optional.
    let mut rx = auth.watch_issuer("b").unwrap();
    timeout(PATIENCE, rx.wait_for(|s| s.failures >= 2))
        .await
        .unwrap()
        .unwrap();
    let readiness = auth.readiness();
    assert!(!readiness.ready, "{readiness:?}");
    assert_eq!(readiness.required, [false, false]);
    assert!(
        timeout(Duration::from_millis(300), auth.wait_ready())
            .await
            .is_err()
    );
    // One recovers: ready, while the other still has no keys.
    b.fail_next(0, 503);
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let readiness = auth.readiness();
    assert!(readiness.ready);
    assert_eq!(
        readiness
            .issuers
            .iter()
            .map(|s| s.loaded)
            .collect::<Vec<_>>(),
        [false, true]
    );
}

/// The issuers of a config whose only `[[issuers]]` table is `issuer`, read as `serve` reads them.
fn load_issuer(issuer: &str) -> Result<Vec<IssuerSettings>, String> {
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

#[tokio::test]
async fn an_hs_secret_that_is_the_published_pem_is_refused_at_load() {
    install_crypto_provider();
    let rs = TestKey::generate(Algorithm::RS256, "rs-1");
    let jwks = JwksServer::start(&[&rs]).await;
    let pem = rs.public_pem.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs-secret");
    std::fs::write(&secret, &pem).unwrap();
    let secret = secret.display().to_string();
    // The attack: an HS256 token keyed with the RSA public key everyone can read.
    let now = unix_now();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": jwks.base_url(), "aud": AUDIENCE, "sub": "admin", "iat": now, "exp": now + 300}),
        &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let head = format!(
        "name = \"idp\"\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\"]\n",
        jwks.base_url()
    );

    // Beside the JWKS that publishes the key: refused, naming the secret's key.
    let mixed = load_issuer(&format!(
        "{head}jwks_url = \"{}\"\nalgorithms = [\"RS256\", \"HS256\"]\nhs_secret_file = {secret:?}",
        jwks.jwks_url()
    ));
    let err = mixed.as_ref().map(|_| ()).unwrap_err();
    assert!(err.starts_with("issuers[0].hs_secret_file:"), "{err}");
    // On its own, the PEM is still no shared secret.
    let alone = load_issuer(&format!(
        "{head}algorithms = [\"HS256\"]\nhs_secret_file = {secret:?}"
    ));
    let err = alone.as_ref().map(|_| ()).unwrap_err();
    assert!(err.starts_with("issuers[0].hs_secret_file:"), "{err}");
    assert!(err.contains("pem"), "{err}");
    assert!(
        !err.contains("BEGIN PUBLIC KEY"),
        "the secret is not echoed: {err}"
    );
    // The JWK the JWKS publishes is refused the same way.
    std::fs::write(dir.path().join("hs-jwk"), rs.jwk.to_string()).unwrap();
    let err = load_issuer(&format!(
        "{head}algorithms = [\"HS256\"]\nhs_secret_file = {:?}",
        dir.path().join("hs-jwk").display().to_string()
    ))
    .map(|_| ())
    .unwrap_err();
    assert!(err.contains("jwk"), "{err}");

    // So no issuer can accept the forged token: the RS256-only issuer that
    // remains refuses it.
    let rs_only = load_issuer(&format!(
        "{head}jwks_url = \"{}\"\nalgorithms = [\"RS256\"]",
        jwks.jwks_url()
    ))
    .unwrap();
    let auth = Authenticator::start(rs_only).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let refused = auth
        .authenticate(Some(&format!("Bearer {forged}")), now)
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "algorithm_not_allowed");
}

#[tokio::test]
async fn junk_kids_never_hold_a_good_caller_on_the_same_connection() {
    let server = TestServer::start(RULES).await;
    server.wait_ready().await;
    let mut client = server.client().await;
    let alice = server.mint("alice", json!({}));
    client.issue_rtc_token(lobby(&alice)).await.unwrap();

    // The IdP turns slow: a forced refetch takes 4.5 s.
    server.jwks.set_delay(Duration::from_millis(4500));
    let fetches = server.jwks.jwks_fetches();
    let junk: Vec<_> = (0..300)
        .map(|i| {
            let jwt = server
                .es256
                .with_kid(&format!("junk-{i}"))
                .mint(&TestServer::claims("mallory", json!({})));
            let mut client = client.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let result = client.issue_rtc_token(lobby(&jwt)).await;
                (result, start.elapsed())
            })
        })
        .collect();
    // Once the flood has asked for the refetch, the good caller, on the same connection.
    let asked = Instant::now();
    while server.jwks.jwks_fetches() == fetches {
        assert!(
            asked.elapsed() < PATIENCE,
            "the flood never asked for a refetch"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    client.issue_rtc_token(lobby(&alice)).await.unwrap();
    let good = start.elapsed();
    assert!(
        good < Duration::from_millis(1500),
        "the good call took {good:?}"
    );

    for task in junk {
        let (result, took) = task.await.unwrap();
        let status = result.unwrap_err();
        assert_eq!(reason(&status, Code::Unauthenticated), "unknown_key");
        assert!(
            took < Duration::from_millis(1500),
            "a junk call took {took:?}"
        );
    }
    assert_eq!(
        server.jwks.jwks_fetches(),
        fetches + 1,
        "the flood forced one refetch"
    );
    server.shutdown().await;
}

/// An authenticator over `key`'s JWKS whose issuer config text adds `extra`.
async fn lifetime_issuer(key: &TestKey, extra: &str) -> (Authenticator, JwksServer) {
    install_crypto_provider();
    let jwks = JwksServer::start(&[key]).await;
    let settings = load_issuer(&format!(
        "name = \"idp\"\nissuer = \"{ISSUER}\"\naudiences = [\"{AUDIENCE}\"]\njwks_url = \"{}\"\n{extra}",
        jwks.jwks_url()
    ))
    .unwrap();
    let auth = Authenticator::start(settings).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    (auth, jwks)
}

async fn check(
    auth: &Authenticator,
    key: &TestKey,
    claims: Value,
    now: u64,
) -> Result<u64, String> {
    auth.authenticate(Some(&format!("Bearer {}", key.mint(&claims))), now)
        .await
        .map(|p| p.expires_at)
        .map_err(|e: AuthError| e.reason().to_owned())
}

fn lifetime_claims(iat: Option<u64>, exp: u64) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "exp": exp});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    claims
}

#[tokio::test]
async fn max_token_lifetime_bounds_exp_minus_iat_or_now() {
    let key = TestKey::generate(Algorithm::ES256, "es");
    let (auth, _jwks) = lifetime_issuer(&key, "max_token_lifetime = \"1h\"").await;
    let now = unix_now();
    let too_long = Err("lifetime_too_long".to_owned());
    let cases = [
        (Some(now), now + 3600, Ok(now + 3600)),
        (Some(now), now + 3601, too_long.clone()),
        // An old iat counts: the token lives from iat, not from now.
        (Some(now - 1800), now + 1801, too_long.clone()),
        (Some(now - 1800), now + 1800, Ok(now + 1800)),
        // Without iat, the lifetime left is what counts.
        (None, now + 3600, Ok(now + 3600)),
        (None, now + 3601, too_long.clone()),
        (Some(now), u64::MAX, too_long.clone()),
    ];
    for (iat, exp, expected) in cases {
        let got = check(&auth, &key, lifetime_claims(iat, exp), now).await;
        assert_eq!(got, expected, "iat {iat:?}, exp {exp}");
    }
}

#[tokio::test]
async fn absurd_exp_values_are_refused_before_any_key_is_used() {
    let key = TestKey::generate(Algorithm::ES256, "es");
    // No max_token_lifetime: exp up to the end of 9999 is accepted, beyond it never.
    let (auth, jwks) = lifetime_issuer(&key, "").await;
    let now = unix_now();
    assert_eq!(
        check(&auth, &key, lifetime_claims(Some(now), MAX_EXP), now).await,
        Ok(MAX_EXP)
    );
    for exp in [MAX_EXP + 1, 1 << 53, u64::MAX] {
        assert_eq!(
            check(&auth, &key, lifetime_claims(Some(now), exp), now).await,
            Err("lifetime_too_long".to_owned()),
            "exp {exp}"
        );
    }
    // Before the signature and before the key lookup: a junk kid forces no refetch.
    let fetches = jwks.jwks_fetches();
    let junk = key.with_kid("junk");
    assert_eq!(
        check(&auth, &junk, lifetime_claims(None, u64::MAX), now).await,
        Err("lifetime_too_long".to_owned())
    );
    assert_eq!(jwks.jwks_fetches(), fetches);
}

#[tokio::test]
async fn a_too_long_lifetime_is_unauthenticated_on_the_api() {
    let jwks_key = TestKey::generate(Algorithm::ES256, "es-1");
    let rs = TestKey::generate(Algorithm::RS256, "rs-1");
    let jwks = JwksServer::start(&[&jwks_key, &rs]).await;
    let text = config_text(&jwks.jwks_url(), RULES).replacen(
        &format!("jwks_url = \"{}\"", jwks.jwks_url()),
        &format!(
            "jwks_url = \"{}\"\nmax_token_lifetime = \"2h\"",
            jwks.jwks_url()
        ),
        1,
    );
    let server = TestServer::start_with(text, jwks, jwks_key, rs).await;
    server.wait_ready().await;
    let mut client = server.client().await;
    let now = unix_now();
    let long = server.mint("alice", json!({"iat": now, "exp": now + 3 * 3600}));
    let refused = client.issue_rtc_token(lobby(&long)).await.unwrap_err();
    assert_eq!(reason(&refused, Code::Unauthenticated), "lifetime_too_long");
    let short = server.mint("alice", json!({"iat": now, "exp": now + 3600}));
    client.issue_rtc_token(lobby(&short)).await.unwrap();
    server.shutdown().await;
}
