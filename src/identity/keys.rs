//! A parsed JWKS: the verification keys of one issuer, indexed by `kid`.
//!
//! Loading is where keys are vetted, once, off the request path: `use=enc`
//! keys, symmetric (`oct`) keys, RSA keys under 2048 bits, keys whose `alg`
//! contradicts their type and keys of unsupported types are dropped, one by
//! one, so a single odd key never spoils the rest of the set. Each kept key
//! remembers which algorithms it may verify (its JWK `alg` when present,
//! otherwise what its type and curve allow), because `DecodingKey::from_jwk`
//! ignores `use`, `alg` and `crv`.
//!
//! A parsed set remembers the SHA-256 of the document it came from, so the
//! refresher can tell a refresh that changed nothing (the same bytes vet to
//! the same keys) from a key-set change, which invalidates the verified-JWT
//! cache's entries of the issuer.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// The smallest RSA modulus we verify with (NIST SP 800-131A; aws-lc refuses smaller too).
pub const MIN_RSA_BITS: usize = 2048;

/// The vetted keys of one issuer.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Vec<VerifyKey>>,
    without_kid: Vec<VerifyKey>,
    dropped: usize,
    /// The SHA-256 of the JWKS document, for a set parsed from one.
    digest: Option<[u8; 32]>,
}

/// One key that passed vetting, with the algorithms it may verify.
pub struct VerifyKey {
    /// The JWK `kid`, if any.
    pub kid: Option<String>,
    /// The algorithms this key may verify; never empty.
    pub algorithms: Vec<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
}

/// Why a key set could not be obtained or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySourceError {
    /// The document is not JSON of the expected shape.
    #[error("the {what} is not valid json of the expected shape")]
    Garbage {
        /// Which document (`jwks` or `discovery document`).
        what: &'static str,
    },
    /// The JWKS holds no key we may verify with.
    #[error("the jwks holds no usable key ({dropped} dropped)")]
    NoUsableKey {
        /// How many keys were dropped while vetting.
        dropped: usize,
    },
    /// The HTTP request failed before a status arrived.
    #[error("the request failed: {0}")]
    Request(String),
    /// The server answered with a non-success status.
    #[error("the server answered http {0}")]
    Status(u16),
    /// The body exceeded the configured cap.
    #[error("the body exceeds {max} bytes")]
    TooLarge {
        /// The cap in bytes.
        max: usize,
    },
    /// The fetch did not finish within the deadline.
    #[error("the fetch timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The discovery document names another issuer.
    #[error("the discovery document names issuer {found:?}, not a configured one")]
    IssuerMismatch {
        /// The issuer the document names (an operator-facing URL, not a secret).
        found: String,
    },
    /// The discovery document's `jwks_uri` is not an http(s) URL.
    #[error("the discovery document's jwks_uri is not an http(s) url")]
    BadJwksUri,
    /// A local JWKS file could not be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// The raw shape of a JWKS: each key is parsed on its own.
#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses and vets a JWKS document.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeySourceError> {
        let raw: RawSet =
            serde_json::from_slice(bytes).map_err(|_| KeySourceError::Garbage { what: "jwks" })?;
        let mut set = KeySet {
            digest: Some(Sha256::digest(bytes).into()),
            ..KeySet::default()
        };
        for value in raw.keys {
            match vet(value) {
                Some(key) => set.insert(key),
                None => set.dropped += 1,
            }
        }
        if set.is_empty() {
            return Err(KeySourceError::NoUsableKey {
                dropped: set.dropped,
            });
        }
        Ok(set)
    }

    /// Adds a vetted key.
    pub fn insert(&mut self, key: VerifyKey) {
        match &key.kid {
            Some(kid) => self.by_kid.entry(kid.clone()).or_default().push(key),
            None => self.without_kid.push(key),
        }
    }

    /// The keys published under `kid`.
    pub fn by_kid(&self, kid: &str) -> &[VerifyKey] {
        self.by_kid.get(kid).map(Vec::as_slice).unwrap_or_default()
    }

    /// Every key, for tokens without a `kid` when the issuer allows that.
    pub fn all(&self) -> impl Iterator<Item = &VerifyKey> {
        self.by_kid.values().flatten().chain(&self.without_kid)
    }

    /// The number of usable keys.
    pub fn len(&self) -> usize {
        self.by_kid.values().map(Vec::len).sum::<usize>() + self.without_kid.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many published keys were dropped while vetting.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Whether both sets were parsed from the same document, byte for byte,
    /// and so hold the same keys. A set built by hand (`insert`) is the same
    /// as no other: answering "changed" is the safe mistake.
    pub fn same_document(&self, other: &KeySet) -> bool {
        self.digest.is_some() && self.digest == other.digest
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public keys are not secret, but their bytes are noise in logs.
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Vets one JWK; `None` drops it.
fn vet(value: serde_json::Value) -> Option<VerifyKey> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithms = algorithms_for(&jwk)?;
    if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm
        && modulus_bits(&rsa.n)? < MIN_RSA_BITS
    {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id,
        algorithms,
        key,
    })
}

/// The algorithms a JWK may verify: what its type and curve allow, narrowed
/// to its `alg` when it has one. `None` when the two contradict or the type
/// is not one we verify with.
fn algorithms_for(jwk: &Jwk) -> Option<Vec<Algorithm>> {
    use Algorithm::*;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[ES256],
            EllipticCurve::P384 => &[ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => &[EdDSA],
            _ => return None,
        },
        // Symmetric keys never come from a published key set: an `oct` JWK
        // would let anyone who can read the JWKS mint tokens.
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(by_type.to_vec()),
        Some(pinned) => {
            let alg = key_algorithm(pinned)?;
            by_type.contains(&alg).then(|| vec![alg])
        }
    }
}

/// The signature algorithm a JWK `alg` names; `None` for encryption or unknown algorithms.
fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The bit length of a base64url big-endian RSA modulus.
fn modulus_bits(n: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')).ok()?;
    let first = bytes.iter().position(|b| *b != 0)?;
    let significant = &bytes[first..];
    Some(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A base64url modulus of exactly `bits` bits (top bit set).
    fn modulus(bits: usize) -> String {
        let mut bytes = vec![0xA5u8; bits.div_ceil(8)];
        let top = bits % 8;
        bytes[0] = if top == 0 {
            0xC1
        } else {
            (1u8 << (top - 1)) | 1
        };
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str, bits: usize) -> serde_json::Value {
        json!({"kty": "RSA", "kid": kid, "n": modulus(bits), "e": "AQAB"})
    }

    // A valid P-256 point is not needed to load: key bytes are checked at verify time.
    fn ec(kid: &str, crv: &str) -> serde_json::Value {
        json!({"kty": "EC", "kid": kid, "crv": crv, "x": "AAAA", "y": "AAAA"})
    }

    fn kept(keys: Vec<serde_json::Value>) -> Vec<(String, Vec<Algorithm>)> {
        let doc = json!({ "keys": keys }).to_string();
        let set = match KeySet::parse(doc.as_bytes()) {
            Ok(set) => set,
            Err(KeySourceError::NoUsableKey { .. }) => return Vec::new(),
            Err(e) => panic!("{e}"),
        };
        let mut out: Vec<_> = set
            .all()
            .map(|k| (k.kid.clone().unwrap_or_default(), k.algorithms.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn modulus_bits_counts_significant_bits() {
        assert_eq!(modulus_bits(&modulus(2048)), Some(2048));
        assert_eq!(modulus_bits(&modulus(2047)), Some(2047));
        assert_eq!(modulus_bits(&modulus(1024)), Some(1024));
        let padded = URL_SAFE_NO_PAD.encode([0u8, 0x80, 0]);
        assert_eq!(modulus_bits(&padded), Some(16));
    }

    #[test]
    fn vetting_drops_weak_enc_oct_and_contradicting_keys() {
        use Algorithm::*;
        let rsa_all = vec![RS256, RS384, RS512, PS256, PS384, PS512];
        let cases: Vec<(serde_json::Value, Option<Vec<Algorithm>>)> = vec![
            (rsa("ok", 2048), Some(rsa_all.clone())),
            (rsa("weak", 2047), None),
            (rsa("weak1024", 1024), None),
            (
                {
                    let mut k = rsa("enc", 2048);
                    k["use"] = json!("enc");
                    k
                },
                None,
            ),
            (
                {
                    let mut k = rsa("sig", 2048);
                    k["use"] = json!("sig");
                    k
                },
                Some(rsa_all),
            ),
            (
                {
                    let mut k = rsa("pinned", 2048);
                    k["alg"] = json!("RS256");
                    k
                },
                Some(vec![RS256]),
            ),
            (
                {
                    let mut k = rsa("oaep", 2048);
                    k["alg"] = json!("RSA-OAEP");
                    k
                },
                None,
            ),
            (
                {
                    let mut k = rsa("es-on-rsa", 2048);
                    k["alg"] = json!("ES256");
                    k
                },
                None,
            ),
            (ec("p256", "P-256"), Some(vec![ES256])),
            (ec("p384", "P-384"), Some(vec![ES384])),
            (ec("p521", "P-521"), None),
            (
                {
                    let mut k = ec("p256-ps", "P-256");
                    k["alg"] = json!("PS256");
                    k
                },
                None,
            ),
            (
                json!({"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AAAA"}),
                Some(vec![EdDSA]),
            ),
            (
                json!({"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AAAA"}),
                None,
            ),
            (json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}), None),
            (
                json!({"kty": "AKP", "kid": "mldsa", "alg": "ML-DSA-44", "pub": "AAAA"}),
                None,
            ),
            (json!({"kty": "RSA", "kid": "broken"}), None),
            (json!("not an object"), None),
        ];
        for (jwk, expected) in cases {
            let label = jwk.to_string();
            let got = kept(vec![jwk]).pop().map(|(_, algs)| algs);
            assert_eq!(got, expected, "{label}");
        }
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_set() {
        let got = kept(vec![
            rsa("weak", 1024),
            json!({"kty": "RSA"}),
            json!(42),
            rsa("good", 2048),
            ec("ec", "P-256"),
        ]);
        let kids: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kids, ["ec", "good"]);
    }

    #[test]
    fn garbage_and_empty_sets_are_errors() {
        let check = |doc: &str, expected: KeySourceError| {
            assert_eq!(
                KeySet::parse(doc.as_bytes()).unwrap_err(),
                expected,
                "{doc}"
            );
        };
        check("not json", KeySourceError::Garbage { what: "jwks" });
        check("{\"keys\": {}}", KeySourceError::Garbage { what: "jwks" });
        check("[]", KeySourceError::Garbage { what: "jwks" });
        check("{\"keys\": []}", KeySourceError::NoUsableKey { dropped: 0 });
        check(
            &json!({"keys": [rsa("weak", 1024)]}).to_string(),
            KeySourceError::NoUsableKey { dropped: 1 },
        );
    }

    #[test]
    fn only_sets_from_the_same_document_are_the_same() {
        let doc = json!({"keys": [rsa("a", 2048)]}).to_string();
        let reordered = json!({"keys": [rsa("a", 2048), rsa("b", 2048)]}).to_string();
        let a = KeySet::parse(doc.as_bytes()).unwrap();
        assert!(a.same_document(&KeySet::parse(doc.as_bytes()).unwrap()));
        assert!(!a.same_document(&KeySet::parse(reordered.as_bytes()).unwrap()));
        assert!(!KeySet::default().same_document(&KeySet::default()));
    }

    #[test]
    fn keys_are_found_by_kid() {
        let doc = json!({"keys": [rsa("a", 2048), rsa("a", 3072), ec("b", "P-256")]}).to_string();
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.by_kid("a").len(), 2);
        assert_eq!(set.by_kid("b").len(), 1);
        assert!(set.by_kid("c").is_empty());
        assert_eq!(set.len(), 3);
        assert!(set.by_kid("b")[0].allows(Algorithm::ES256));
        assert!(!set.by_kid("b")[0].allows(Algorithm::RS256));
    }
}
