//! Per-token verify cost through `Authenticator::authenticate`, next to a bare
//! `jsonwebtoken::decode` with the same key and token, in the same run; and,
//! for RS256, the same token answered by the verified-JWT cache.
//!
//! `authenticate/*` runs with the cache off, so every iteration verifies in
//! full; `cache_hit/RS256-2048` runs the same call on an authenticator with
//! the cache on, where every iteration after the first is a hit (the SHA-256
//! of the token, a lookup, the time claims against `now`, and a shared
//! `Principal`, which `authenticate` then clones out; the pipeline shares it).
//!
//! The difference is our wrapper: bearer parsing, size cap, strict header and
//! claims parsing, issuer pick, key lookup, extra checks and the `Principal`
//! (with its SHA-256 fingerprint). The happy path never awaits, so the future
//! is polled once with a no-op waker: no executor cost is measured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../tests/support/keys.rs"]
mod keys;

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keys::TestKey;
use serde_json::json;
use tokengate::identity::{
    Authenticator, CacheLookup, IssuerBuilder, KeySource, VerifiedCacheSettings,
    install_crypto_provider,
};

const ISS: &str = "https://idp.bench.test";
const AUD: &str = "tokengate";
const NOW: u64 = 1_800_000_000;

/// Polls a future that must complete without waiting.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the happy path must not wait"),
    }
}

fn bench_verify(c: &mut Criterion) {
    install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    // A realistic access token: RFC 9068 claims as oidc-provider issues them.
    let claims = json!({
        "iss": ISS, "sub": "agora-caller", "aud": AUD, "exp": NOW + 300, "iat": NOW,
        "jti": "Yx3KqW0a9Vd2NQmF8cT5bLhZ", "scope": "rtc:token", "client_id": "agora-caller",
    });
    let mut group = c.benchmark_group("identity");
    for (name, alg) in [
        ("RS256-2048", Algorithm::RS256),
        ("PS256-2048", Algorithm::PS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
    ] {
        let key = TestKey::generate(alg, "bench-1");
        let token = key.mint(&claims);
        let bearer = format!("Bearer {token}");
        let config = IssuerBuilder::new(
            "bench",
            ISS,
            AUD,
            KeySource::Inline(keys::jwks(&[&key]).to_string()),
        )
        .build()
        .unwrap();
        let auth = Authenticator::start_with_cache(
            vec![config.clone()],
            &VerifiedCacheSettings::disabled(),
        )
        .unwrap();
        runtime.block_on(auth.wait_ready());
        ready(auth.authenticate(Some(&bearer), NOW)).unwrap();
        let cached =
            Authenticator::start_with_cache(vec![config], &VerifiedCacheSettings::default())
                .unwrap();
        runtime.block_on(cached.wait_ready());
        ready(cached.authenticate(Some(&bearer), NOW)).unwrap();
        let hit = ready(cached.authenticate_call(Some(&bearer), NOW));
        assert_eq!(hit.cache, CacheLookup::Hit);

        let jwk: Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[ISS]);
        validation.set_audience(&[AUD]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        // The token is minted for NOW (2027); the bare decode reads the real
        // clock, so let it accept any expiry to compare like with like.
        validation.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).unwrap();

        group.bench_function(format!("authenticate/{name}"), |b| {
            b.iter(|| ready(auth.authenticate(Some(black_box(&bearer)), NOW)).unwrap())
        });
        if alg == Algorithm::RS256 {
            group.bench_function(format!("cache_hit/{name}"), |b| {
                b.iter(|| ready(cached.authenticate(Some(black_box(&bearer)), NOW)).unwrap())
            });
            // What the pipeline calls: the principal stays shared with the cache.
            group.bench_function(format!("cache_hit_shared/{name}"), |b| {
                b.iter(|| {
                    ready(cached.authenticate_call(Some(black_box(&bearer)), NOW))
                        .result
                        .unwrap()
                })
            });
        }
        group.bench_function(format!("jsonwebtoken_decode/{name}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench_verify
}
criterion_main!(benches);
