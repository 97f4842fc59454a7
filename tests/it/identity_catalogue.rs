//! The 48-case JWT attack catalogue of identity.md §3, as one table.
//!
//! Every token is built here with keys this test generates; the keys are
//! served by a real JWKS server on loopback. Each row asserts acceptance or
//! the exact refusal reason.

use crate::support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::keys::openssl_rsa;
use support::{JwksServer, TestKey};
use tokengate::domain::ClaimValue;
use tokengate::identity::{Authenticator, IssuerBuilder, KeySource, install_crypto_provider};

const ISS: &str = "https://idp.catalogue.test";
const AUD: &str = "tokengate";
/// The caller-supplied clock: tokens are judged at this unix time.
const NOW: u64 = 1_800_000_000;

/// The order of the P-256 group, for the high-S twin of a signature.
const P256_N: &str = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";

struct Keys {
    rs: TestKey,
    ps: TestKey,
    es: TestKey,
    ed: TestKey,
    attacker: TestKey,
    rotated_old: TestKey,
    rotated_new: TestKey,
}

fn claims() -> Value {
    json!({
        "iss": ISS, "sub": "user-1", "aud": AUD,
        "exp": NOW + 300, "iat": NOW, "scope": "rtc:token", "channel": "room-1",
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// Splits a compact JWS into its three segments.
fn segments(token: &str) -> (String, String, String) {
    let mut parts = token.split('.').map(str::to_owned);
    (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    )
}

/// Replaces the signature segment with these raw bytes.
fn resign(token: &str, signature: &[u8]) -> String {
    let (h, p, _) = segments(token);
    format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn signature_bytes(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segments(token).2).unwrap()
}

/// `n - s` for 32-byte big-endian numbers.
fn negate_mod_n(s: &[u8]) -> Vec<u8> {
    let n = hex::decode(P256_N).unwrap();
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = u8::try_from(d).unwrap();
    }
    out
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` of a raw `r || s` signature.
fn der_signature(raw: &[u8]) -> Vec<u8> {
    let integer = |bytes: &[u8]| {
        let start = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        let mut v = bytes[start..].to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, u8::try_from(v.len()).unwrap()];
        out.extend(v);
        out
    };
    let mut body = integer(&raw[..32]);
    body.extend(integer(&raw[32..]));
    let mut out = vec![0x30, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

/// Sets the unused low bits of the last base64url character (non-canonical encoding).
fn non_canonical(token: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (h, p, s) = segments(token);
    let last = s.as_bytes()[s.len() - 1];
    let index = ALPHABET.iter().position(|c| *c == last).unwrap();
    // A 256-byte signature is 342 characters: the last one carries 2 data bits and 4 unused.
    let tweaked = ALPHABET[index | 0b0001] as char;
    assert_ne!(tweaked as u8, last, "the tweak must change the character");
    format!("{h}.{p}.{}{tweaked}", &s[..s.len() - 1])
}

/// Every row: (number, case, authorization value, expected reason or None for accept).
fn catalogue(
    keys: &Keys,
    weak: &(Value, impl Fn(&str) -> String),
) -> Vec<(u32, &'static str, String, Option<&'static str>)> {
    let rs = &keys.rs;
    let c = claims;
    let bearer = |t: String| format!("Bearer {t}");
    let rs_token = rs.mint(&c());
    let es_token = keys.es.mint(&c());
    let es_sig = signature_bytes(&es_token);

    let mut hostile_header = rs.header();
    hostile_header.jku = Some("https://evil.example/jwks".into());
    hostile_header.x5u = Some("https://evil.example/cert".into());
    hostile_header.jwk = Some(serde_json::from_value(keys.attacker.jwk.clone()).unwrap());

    let hs_confusion = {
        let pem = rs.public_pem.clone().unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(rs.kid.clone());
        jsonwebtoken::encode(
            &header,
            &c(),
            &EncodingKey::from_secret(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };

    let rs_header = |extra: &str| format!(r#"{{"alg":"RS256","typ":"JWT","kid":"rs-1"{extra}}}"#);
    let payload = c().to_string();

    let weak_token = {
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"RS256","kid":"weak-1"}"#),
            b64(&payload)
        );
        format!("{input}.{}", (weak.1)(&input))
    };

    let (h, p, s) = segments(&rs_token);
    let mut high_s = es_sig.clone();
    let twin = negate_mod_n(&es_sig[32..]);
    high_s[32..].copy_from_slice(&twin);

    vec![
        (
            1,
            "alg none, empty signature",
            bearer(format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&payload)
            )),
            Some("algorithm_not_allowed"),
        ),
        (
            2,
            "alg None (case variant)",
            bearer(format!(
                "{}.{}.",
                b64(r#"{"alg":"None","typ":"JWT"}"#),
                b64(&payload)
            )),
            Some("algorithm_not_allowed"),
        ),
        (
            3,
            "HS256 keyed with the RSA public key PEM",
            bearer(hs_confusion),
            Some("algorithm_not_allowed"),
        ),
        (
            4,
            "kid not in the JWKS",
            bearer(rs.with_kid("nope").mint(&c())),
            Some("unknown_key"),
        ),
        (
            5,
            "no kid",
            bearer(rs.mint_with(Header::new(Algorithm::RS256), &c())),
            Some("unknown_key"),
        ),
        (
            6,
            "attacker jwk/jku/x5u, signed by the attacker",
            bearer(keys.attacker.mint_with(hostile_header.clone(), &c())),
            Some("bad_signature"),
        ),
        (
            7,
            "attacker jwk/jku/x5u, signed by the real key",
            bearer(rs.mint_with(hostile_header, &c())),
            None,
        ),
        (
            8,
            "crit: [exp]",
            bearer(rs.mint_raw(&rs_header(r#","crit":["exp"]"#), &payload)),
            Some("malformed"),
        ),
        (
            9,
            "crit: []",
            bearer(rs.mint_raw(&rs_header(r#","crit":[]"#), &payload)),
            Some("malformed"),
        ),
        (
            10,
            "b64: false (RFC 7797)",
            bearer(rs.mint_raw(&rs_header(r#","b64":false,"crit":["b64"]"#), &payload)),
            Some("malformed"),
        ),
        (
            11,
            "exp 30 s ago (inside leeway)",
            bearer(rs.mint(&with(c(), "exp", json!(NOW - 30)))),
            None,
        ),
        (
            12,
            "exp 120 s ago",
            bearer(rs.mint(&with(c(), "exp", json!(NOW - 120)))),
            Some("expired"),
        ),
        (
            13,
            "nbf +120 s",
            bearer(rs.mint(&with(c(), "nbf", json!(NOW + 120)))),
            Some("not_yet_valid"),
        ),
        (
            14,
            "iat +1 h",
            bearer(rs.mint(&with(c(), "iat", json!(NOW + 3600)))),
            Some("issued_in_future"),
        ),
        (
            15,
            "wrong iss",
            bearer(rs.mint(&with(c(), "iss", json!("https://evil.example")))),
            Some("unknown_issuer"),
        ),
        (
            16,
            "iss missing",
            bearer(rs.mint(&without(c(), "iss"))),
            Some("missing_claim"),
        ),
        (
            17,
            "iss: [expected, evil]",
            bearer(rs.mint(&with(c(), "iss", json!([ISS, "https://evil.example"])))),
            Some("bad_issuer"),
        ),
        (
            18,
            "wrong aud",
            bearer(rs.mint(&with(c(), "aud", json!("someone-else")))),
            Some("bad_audience"),
        ),
        (
            19,
            "aud: [other, ours]",
            bearer(rs.mint(&with(c(), "aud", json!(["other", AUD])))),
            None,
        ),
        (
            20,
            "aud: []",
            bearer(rs.mint(&with(c(), "aud", json!([])))),
            Some("bad_audience"),
        ),
        (
            21,
            "aud missing",
            bearer(rs.mint(&without(c(), "aud"))),
            Some("missing_claim"),
        ),
        (
            22,
            "aud: 123",
            bearer(rs.mint(&with(c(), "aud", json!(123)))),
            Some("bad_audience"),
        ),
        (
            23,
            "exp missing",
            bearer(rs.mint(&without(c(), "exp"))),
            Some("missing_claim"),
        ),
        (
            24,
            "exp as a string",
            bearer(rs.mint(&with(c(), "exp", json!((NOW + 300).to_string())))),
            Some("missing_claim"),
        ),
        (
            25,
            "exp: 1e300",
            bearer(rs.mint_raw(
                &rs_header(""),
                &payload.replace(&format!("\"exp\":{}", NOW + 300), "\"exp\":1e300"),
            )),
            Some("missing_claim"),
        ),
        (
            26,
            "exp fractional",
            bearer(rs.mint(&with(c(), "exp", json!(NOW as f64 + 300.7)))),
            None,
        ),
        (
            27,
            "sub missing",
            bearer(rs.mint(&without(c(), "sub"))),
            Some("missing_claim"),
        ),
        (
            28,
            "duplicate aud (evil first)",
            bearer(rs.mint_raw(
                &rs_header(""),
                &payload.replacen('{', "{\"aud\":\"evil\",", 1),
            )),
            Some("malformed"),
        ),
        (
            29,
            "duplicate custom claim",
            bearer(rs.mint_raw(
                &rs_header(""),
                &payload.replacen('{', "{\"channel\":\"other-room\",", 1),
            )),
            Some("malformed"),
        ),
        (
            30,
            "duplicate kid in the header",
            bearer(rs.mint_raw(r#"{"alg":"RS256","kid":"nope","kid":"rs-1"}"#, &payload)),
            Some("malformed"),
        ),
        (
            31,
            "100 KiB token",
            bearer(rs.mint(&with(c(), "pad", json!("x".repeat(100 * 1024))))),
            Some("too_large"),
        ),
        (
            32,
            "= padding on the payload",
            bearer(format!("{h}.{p}=.{s}")),
            Some("malformed"),
        ),
        (
            33,
            "standard base64 in the signature",
            bearer(format!(
                "{h}.{p}.{}",
                STANDARD.encode(signature_bytes(&rs_token))
            )),
            Some("malformed"),
        ),
        (
            34,
            "whitespace inside",
            bearer(format!("{h}. {p}.{s}")),
            Some("malformed"),
        ),
        (
            35,
            "Bearer prefix left on",
            bearer(format!("Bearer {rs_token}")),
            Some("malformed"),
        ),
        (
            36,
            "four segments",
            bearer(format!("{rs_token}.{s}")),
            Some("malformed"),
        ),
        (
            37,
            "non-canonical base64 in the signature",
            bearer(non_canonical(&rs_token)),
            Some("malformed"),
        ),
        (
            38,
            "empty signature",
            bearer(format!("{h}.{p}.")),
            Some("bad_signature"),
        ),
        (
            39,
            "signature one byte short",
            bearer(resign(&rs_token, &signature_bytes(&rs_token)[1..])),
            Some("bad_signature"),
        ),
        (
            40,
            "nested JWT (cty: JWT)",
            bearer(rs.mint_raw(&rs_header(r#","cty":"JWT""#), &es_token)),
            Some("malformed"),
        ),
        (
            41,
            "JWE compact (5 segments)",
            bearer(format!(
                "{}.{}.{}.{}.{}",
                b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#),
                "AAAA",
                "BBBB",
                "CCCC",
                "DDDD"
            )),
            Some("malformed"),
        ),
        (
            42,
            "RS256 by a 1024-bit key in the JWKS",
            bearer(weak_token),
            Some("unknown_key"),
        ),
        (
            43,
            "ES256 r = s = 0 (psychic signature)",
            bearer(resign(&es_token, &[0u8; 64])),
            Some("bad_signature"),
        ),
        (
            44,
            "ES256 high-S twin (malleable, accepted)",
            bearer(resign(&es_token, &high_s)),
            None,
        ),
        (
            45,
            "ES256 signature in DER",
            bearer(resign(&es_token, &der_signature(&es_sig))),
            Some("bad_signature"),
        ),
        (
            46,
            "ES256 header naming an Ed25519 kid",
            bearer(keys.es.with_kid("ed-1").mint(&c())),
            Some("algorithm_not_allowed"),
        ),
        (
            47,
            "PS256 on a JWK published with alg RS256",
            bearer(rs.with_alg(Algorithm::PS256).mint(&c())),
            Some("algorithm_not_allowed"),
        ),
        (
            48,
            "signed by a replaced key under the same kid",
            bearer(keys.rotated_old.mint(&c())),
            Some("bad_signature"),
        ),
    ]
    .into_iter()
    .chain([
        (0, "baseline RS256", bearer(rs_token.clone()), None),
        (0, "baseline PS256", bearer(keys.ps.mint(&c())), None),
        (0, "baseline ES256", bearer(es_token.clone()), None),
        (0, "baseline EdDSA", bearer(keys.ed.mint(&c())), None),
        (
            0,
            "rotated key's new token",
            bearer(keys.rotated_new.mint(&c())),
            None,
        ),
    ])
    .collect()
}

#[tokio::test]
async fn the_attack_catalogue() {
    install_crypto_provider();
    let keys = Keys {
        rs: TestKey::generate(Algorithm::RS256, "rs-1"),
        ps: TestKey::generate(Algorithm::PS256, "ps-1"),
        es: TestKey::generate(Algorithm::ES256, "es-1"),
        ed: TestKey::generate(Algorithm::EdDSA, "ed-1"),
        attacker: TestKey::generate(Algorithm::RS256, "rs-1"),
        rotated_old: TestKey::generate(Algorithm::RS256, "rot-1"),
        rotated_new: TestKey::generate(Algorithm::RS256, "rot-1"),
    };
    let weak = openssl_rsa(1024, "weak-1");
    let server =
        JwksServer::start(&[&keys.rs, &keys.ps, &keys.es, &keys.ed, &keys.rotated_new]).await;
    let mut published: Vec<Value> = [&keys.rs, &keys.ps, &keys.es, &keys.ed, &keys.rotated_new]
        .iter()
        .map(|k| k.jwk.clone())
        .collect();
    published.push(weak.0.clone());
    server.set_raw_keys(published);

    let config = IssuerBuilder::new(
        "catalogue",
        ISS,
        AUD,
        KeySource::jwks_url(&server.jwks_url()).unwrap(),
    )
    .build()
    .unwrap();
    let auth = Authenticator::start(vec![config]).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), auth.wait_ready())
        .await
        .unwrap();
    let status = &auth.readiness().issuers[0];
    assert_eq!(
        (status.keys, status.dropped_keys),
        (5, 1),
        "the 1024-bit key is dropped at load"
    );

    let rows = catalogue(&keys, &weak);
    assert_eq!(rows.iter().filter(|r| r.0 > 0).count(), 48);
    let mut failures = Vec::new();
    for (number, case, authorization, expected) in rows {
        let got = auth
            .authenticate(Some(&authorization), NOW)
            .await
            .map(|_| ())
            .map_err(|e| e.reason());
        let want = expected.map_or(Ok(()), Err);
        if got != want {
            failures.push(format!("#{number} {case}: expected {want:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "catalogue mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_verified_token_becomes_a_principal() {
    install_crypto_provider();
    let key = TestKey::generate(Algorithm::ES256, "es-1");
    let config = IssuerBuilder::new(
        "inline",
        ISS,
        AUD,
        KeySource::Inline(support::jwks(&[&key]).to_string()),
    )
    .build()
    .unwrap();
    let auth = Authenticator::start(vec![config]).unwrap();
    auth.wait_ready().await;
    let token = key.mint(&with(claims(), "scp", json!(["ignored"])));
    let principal = auth
        .authenticate(Some(&format!("Bearer {token}")), NOW)
        .await
        .unwrap();
    assert_eq!(principal.issuer, ISS);
    assert_eq!(principal.subject, "user-1");
    assert_eq!(principal.audiences, vec![AUD]);
    assert_eq!(principal.scopes, vec!["rtc:token"]);
    assert_eq!(principal.expires_at, NOW + 300);
    assert_eq!(
        principal.claims.get("channel"),
        Some(&ClaimValue::String("room-1".into()))
    );
    assert_eq!(
        principal.claims.get("iat"),
        Some(&ClaimValue::Int(i64::try_from(NOW).unwrap()))
    );
    assert_eq!(
        principal.token_fingerprint,
        tokengate::domain::Fingerprint::of(token.as_bytes())
    );
    // The same token a second later than its expiry plus leeway is refused.
    let late = auth
        .authenticate(Some(&format!("Bearer {token}")), NOW + 300 + 61)
        .await
        .unwrap_err();
    assert_eq!(late.reason(), "expired");
    assert!(
        !late.to_string().contains(&token[..20]),
        "errors never echo the token"
    );
}
