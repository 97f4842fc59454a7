//! End to end with a real OpenID provider (npm `oidc-provider` 9.13.3) on loopback:
//! RFC 9068 access tokens from a client-credentials grant, keys through OIDC
//! discovery, another audience refused, and key rotation across restarts.

use crate::support;

use std::time::Duration;

use support::oidc::AUDIENCE;
use support::{OidcProvider, unix_now};
use tokengate::identity::{
    Authenticator, IssuerBuilder, IssuerSettings, IssuerStatus, KeySource, RefreshConfig,
    install_crypto_provider,
};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(60);

fn discovery_config(idp: &OidcProvider, refresh: RefreshConfig) -> IssuerSettings {
    let discovery = KeySource::discovery_of(&idp.issuer).unwrap();
    IssuerBuilder::new("oidc", &idp.issuer, AUDIENCE, discovery)
        .refresh(refresh)
        .build()
        .unwrap()
}

async fn authenticate(auth: &Authenticator, token: &str) -> Result<(), &'static str> {
    auth.authenticate(Some(&format!("Bearer {token}")), unix_now())
        .await
        .map(|_| ())
        .map_err(|e| e.reason())
}

async fn wait_status(auth: &Authenticator, pred: impl FnMut(&IssuerStatus) -> bool) {
    let mut rx = auth.watch_issuer("oidc").unwrap();
    timeout(PATIENCE, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("status never matched: {:?}", auth.readiness()))
        .unwrap();
}

/// Tokens the provider signs with `alg` verify through discovery; another audience is refused.
async fn check_alg(alg: &str) {
    install_crypto_provider();
    let idp = OidcProvider::start(alg).await;
    let auth =
        Authenticator::start(vec![discovery_config(&idp, RefreshConfig::default())]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();

    let token = idp.token().await;
    let principal = auth
        .authenticate(Some(&format!("Bearer {token}")), unix_now())
        .await
        .unwrap_or_else(|e| panic!("{alg}: {e}"));
    assert_eq!(principal.issuer, idp.issuer);
    assert_eq!(principal.subject, "agora-caller");
    assert_eq!(principal.audiences, vec![AUDIENCE]);
    assert_eq!(principal.scopes, vec!["rtc:token"]);
    assert!(principal.claims.contains_key("client_id"));

    let other = idp.token_for(Some("urn:other-service")).await;
    assert_eq!(
        authenticate(&auth, &other).await,
        Err("bad_audience"),
        "{alg}"
    );
}

#[tokio::test]
async fn rs256_tokens_verify_through_discovery() {
    check_alg("RS256").await;
}

#[tokio::test]
async fn es256_tokens_verify_through_discovery() {
    check_alg("ES256").await;
}

#[tokio::test]
async fn eddsa_tokens_verify_through_discovery() {
    check_alg("EdDSA").await;
}

#[tokio::test]
async fn ps256_tokens_verify_through_discovery() {
    check_alg("PS256").await;
}

#[tokio::test]
async fn a_restart_with_new_kids_is_picked_up_by_the_unknown_kid_refetch() {
    install_crypto_provider();
    let idp = OidcProvider::start_with("ES256", 0, "1").await;
    let auth =
        Authenticator::start(vec![discovery_config(&idp, RefreshConfig::default())]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    let before = idp.token().await;
    assert_eq!(authenticate(&auth, &before).await, Ok(()));

    let port = idp.stop();
    let idp = OidcProvider::start_with("ES256", port, "2").await;
    let after = idp.token().await;
    assert_eq!(
        authenticate(&auth, &after).await,
        Ok(()),
        "new kid es-2 after refetch"
    );
    assert_eq!(auth.readiness().issuers[0].forced_refetches, 1);
    // The old key is gone from the provider's JWKS, and the cooldown forbids another fetch.
    assert_eq!(authenticate(&auth, &before).await, Err("unknown_key"));
}

#[tokio::test]
async fn a_restart_under_the_same_kids_verifies_after_the_scheduled_refresh() {
    install_crypto_provider();
    let idp = OidcProvider::start_with("RS256", 0, "1").await;
    let refresh = RefreshConfig {
        min_refresh: Duration::from_millis(500),
        default_ttl: Duration::from_secs(1),
        max_refresh: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..RefreshConfig::default()
    };
    let auth = Authenticator::start(vec![discovery_config(&idp, refresh)]).unwrap();
    timeout(PATIENCE, auth.wait_ready()).await.unwrap();
    assert_eq!(authenticate(&auth, &idp.token().await).await, Ok(()));

    let port = idp.stop();
    let idp = OidcProvider::start_with("RS256", port, "1").await;
    let fetches = auth.readiness().issuers[0].fetches;
    let token = idp.token().await;
    // Identity.md case 48: a kid reused for a new key cannot trigger the
    // unknown-kid refetch; until the next scheduled refresh the token's
    // signature does not verify against the cached key of that kid.
    match authenticate(&auth, &token).await {
        Ok(()) => assert!(auth.readiness().issuers[0].fetches > fetches),
        Err(reason) => assert_eq!(reason, "bad_signature"),
    }
    wait_status(&auth, |s| {
        s.fetches >= fetches + 2 && s.consecutive_failures == 0
    })
    .await;
    assert_eq!(authenticate(&auth, &token).await, Ok(()));
}
