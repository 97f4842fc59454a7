//! Wycheproof signature vectors through the primitive identity verifies with:
//! `jsonwebtoken::crypto::verify` on the aws-lc backend, with keys built from
//! JWK components exactly as `DecodingKey::from_jwk` builds them for a JWKS.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokengate::identity::install_crypto_provider;
use wycheproof::TestResult;

/// Outcome counts of one vector file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    valid_accepted: usize,
    valid_rejected: usize,
    invalid_accepted: usize,
    invalid_rejected: usize,
    acceptable: usize,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A big-endian integer without the sign byte Wycheproof's hex may carry.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// A big-endian integer left-padded (or sign-stripped) to `len` bytes.
fn fixed(bytes: &[u8], len: usize) -> Vec<u8> {
    let bytes = unsigned(bytes);
    let mut out = vec![0u8; len.saturating_sub(bytes.len())];
    out.extend_from_slice(bytes);
    out
}

fn record(tally: &mut Tally, result: TestResult, accepted: bool) {
    match (result, accepted) {
        (TestResult::Valid, true) => tally.valid_accepted += 1,
        (TestResult::Valid, false) => tally.valid_rejected += 1,
        (TestResult::Invalid, true) => tally.invalid_accepted += 1,
        (TestResult::Invalid, false) => tally.invalid_rejected += 1,
        (TestResult::Acceptable, _) => tally.acceptable += 1,
    }
}

fn verify(key: &DecodingKey, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
    // An Err (e.g. a signature of the wrong length) is a rejection too.
    jsonwebtoken::crypto::verify(&b64(sig), msg, key, alg).unwrap_or(false)
}

fn ecdsa(name: wycheproof::ecdsa::TestName, alg: Algorithm, coordinate: usize) -> Tally {
    let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        let x = fixed(&group.key.affine_x, coordinate);
        let y = fixed(&group.key.affine_y, coordinate);
        let key = DecodingKey::from_ec_components(&b64(&x), &b64(&y)).unwrap();
        for test in group.tests {
            record(
                &mut tally,
                test.result,
                verify(&key, alg, &test.msg, &test.sig),
            );
        }
    }
    tally
}

fn rsa_pkcs1(name: wycheproof::rsa_pkcs1_verify::TestName, alg: Algorithm) -> Tally {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        let key = DecodingKey::from_rsa_components(
            &b64(unsigned(&group.key.n)),
            &b64(unsigned(&group.key.e)),
        )
        .unwrap();
        for test in group.tests {
            record(
                &mut tally,
                test.result,
                verify(&key, alg, &test.msg, &test.sig),
            );
        }
    }
    tally
}

fn rsa_pss(name: wycheproof::rsa_pss_verify::TestName, alg: Algorithm) -> Tally {
    let set = wycheproof::rsa_pss_verify::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        let key = DecodingKey::from_rsa_components(
            &b64(unsigned(&group.key.n)),
            &b64(unsigned(&group.key.e)),
        )
        .unwrap();
        for test in group.tests {
            record(
                &mut tally,
                test.result,
                verify(&key, alg, &test.msg, &test.sig),
            );
        }
    }
    tally
}

fn ed25519() -> Tally {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in set.test_groups {
        let key = DecodingKey::from_ed_components(&b64(&group.key.pk)).unwrap();
        for test in group.tests {
            record(
                &mut tally,
                test.result,
                verify(&key, Algorithm::EdDSA, &test.msg, &test.sig),
            );
        }
    }
    tally
}

/// Every valid vector verifies and no invalid one does.
fn check(label: &str, tally: &Tally) {
    assert!(
        tally.valid_accepted > 0,
        "{label}: no valid vector ran: {tally:?}"
    );
    assert!(
        tally.invalid_rejected > 0,
        "{label}: no invalid vector ran: {tally:?}"
    );
    assert_eq!(
        tally.invalid_accepted, 0,
        "{label}: invalid signatures accepted: {tally:?}"
    );
    assert_eq!(
        tally.valid_rejected, 0,
        "{label}: valid signatures refused: {tally:?}"
    );
}

#[test]
fn es256_p1363() {
    install_crypto_provider();
    let name = wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363;
    check("ES256", &ecdsa(name, Algorithm::ES256, 32));
}

#[test]
fn es384_p1363() {
    install_crypto_provider();
    let name = wycheproof::ecdsa::TestName::EcdsaSecp384r1Sha384P1363;
    check("ES384", &ecdsa(name, Algorithm::ES384, 48));
}

#[test]
fn rs256_2048() {
    install_crypto_provider();
    let name = wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256;
    check("RS256", &rsa_pkcs1(name, Algorithm::RS256));
}

#[test]
fn ps256_2048_salt_32() {
    install_crypto_provider();
    let name = wycheproof::rsa_pss_verify::TestName::RsaPss2048Sha256Mgf1SaltLen32;
    check("PS256", &rsa_pss(name, Algorithm::PS256));
}

#[test]
fn eddsa_ed25519() {
    install_crypto_provider();
    check("EdDSA", &ed25519());
}
