//! Fixtures shared by the fuzz targets and the seed generator: fixed test
//! keys, the config the identity and ext_authz targets load, and the keyring
//! the token targets inspect with. Only data and set-up live here; every
//! target calls tokengate's public API and copies none of its logic.
//!
//! The keys are test keys made for this crate alone (never used anywhere
//! else), fixed so that the seed JWTs verify against the same JWKS every time.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use tokengate::domain::{ClaimValue, Fingerprint, Principal};
use tokengate::token::{AppCertificate, AppId};

/// The time every target evaluates at, unix seconds (2023-11-14T22:13:20Z).
pub const NOW: u64 = 1_700_000_000;

/// The App ID of Agora's reference vectors (and of the fuzz config's project).
pub const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
/// The App Certificate of Agora's reference vectors, so their tokens verify.
pub const APP_CERTIFICATE: &str = "5CFd2fd1755d40ecb72977518be15d3b";

/// The `iss` of the issuer whose keys are the inline JWKS below.
pub const JWKS_ISSUER: &str = "https://idp.fuzz.example";
/// The `iss` of the HS256 issuer.
pub const HS_ISSUER: &str = "https://hs.fuzz.example";
/// The audience both issuers accept.
pub const AUDIENCE: &str = "tokengate";
/// The HS256 secret of [`HS_ISSUER`] (at least 32 bytes, as identity requires).
pub const HS_SECRET: &str = "fuzz-only-hs256-secret-0123456789abcdef";

const ED25519_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICYmjRy99y9zFoSMqfGovmGsRvYn9+YKESpCev8Kp72x
-----END PRIVATE KEY-----";
const EC_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgRmNDloYfxPyO1+Z/
I4XjQ9OqaOn2ngSQ9xf1vOoGveahRANCAAQn2vc/1y+0Wq84lmv8R/cq5t9Q/1mE
+fx25DrBCzOCjoc7v6v7nMlsxg8RgbjYpJKBZO85KV59TJrpz0NxRa5K
-----END PRIVATE KEY-----";
const RSA_PEM: &str = r"-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCyZFgB+YZUMKxg
/6ENBLyv9Hf232wMAEcDpWSU0NyuMWZm6jeahqImtCPTfW8ezqKvk1xYUw42pIVd
Sow10beVsxfbu+J9kXbgzAg9dJvZoI4RdLiAPux4Bj97wFCI0qUUHWodlXjkJbJ+
LigzE7aIDhJ85xFAC/6H8eDV21UaM4pi1sWDXFb8KysiXTpGsHYSfSf1QocBuUJP
nGW7TtLNM0exmoQblzyUOzLfZfwHX5lA8omdzZMcuLLhOdWxCJQe0Ui348bXKVKA
Fo7AGvszcWwYSYR47LiTt2yYQ8WMBezMh7ntAe2o8/B4dM924dcmU28XiYCCL/xC
I0qTghyfAgMBAAECggEAQm6OvZGEHhcQIoEfov74G1hhUkyKan+x8mAlsCuFetMH
rNyc/00S1nHwA4KrHmBaAiNQ2M15Ng0XYxHvW91wze0nPdtecV950yX4DZa+sRES
xtpeGNgV7G57NqT7+K/k7LQ1f7XZkrCdI1MiAj9dkpYW+W99I4oz68E99rXan8og
LP4qvW4uAZpT6RHexuCNRHnAvP9SMrTQzCmvzRKzW4nBfTJCQIe1g5jvGzzLqmV6
BLqYBKE9CuqoADuC2CD187UH4N/0m0rDmq7597v77vgaHBFCl65Rq3GNmdyGJDNd
3mb3ojKu8oWOurveTMcLwtZrNYiRhexrusVKnWU7CQKBgQD0ba2p9qjvU3mUxbZ5
tiw1U4P/zH40MW+oisVk5/qcHGzEW/HftXlKPrZ/wzBI7HHTgOwEU/8OLSlKovBz
0eRj89IfS0AYEO4r6qIqBfU4zT2o/EKJYBaaqNsNf7DnuKUBNaTV1tx/YyaqxBjZ
pQPJ6H8FJdSNk5m/vqgrOXOp5wKBgQC61lghG6V/IEkYvyj1j0/nYtwsHHOgTdc3
8dLwXr57nTd5N9GmtBs6uUSqK+Bz9kWfVesammZODaxb4fa22Fn7flSLgcGhWGMT
GahPMgLFJIhef41sHGCkV5IvN8SaJpYDB800I+JRWztR0RgRJgPptws3JkmYHVAK
GW64S9xQiQKBgQDlv6YJ6RiXhC32wfSn6K0bHronGW7S3ljm4jFyjH5KeIlf9FCg
hzJPsCzYYH6lPOIs/LRbyRwnlhmG1ysOoo57yPWLhq7jMB6+1tfAikMaNgisKxjb
iZ8Vlnv37zs4Q52NSn/6o/A0KN1yi8oT4YBzK38hNpLY1JEi4zGtF155pwKBgQCq
pPSPIKISLxm0GXw+c6tGKZvwSfgtVIsaFKtVUSNm4Zv2Ac5hFKS+CNK3HiX9o9PJ
CH8XqCeCaKigrwxXydi9g4+Sb2u7gm/S1R9NXd770jcfIB65vF1kHHtu1t+g71cZ
43k/gvrE1a+jNXdmyjLOtpjuwPB8l2EwKDRg7SCHCQKBgCgkrQP1eIEQuxohPFcJ
zXIfhNaKAJda5JxxRIfAjduIICipeNasA7PpMb8Ab2++ZCerUZdf1gGWbl5ku0N8
BQTQ+bDfKLwfNBBhxvFpKv9ohgAaELHhVJp3fH9wYaZ88q22obQvfFPqHRbuSc+N
FoT1bo8eIA7MvfbPIm5/9bV2
-----END PRIVATE KEY-----";

/// One fixed signing key of the inline JWKS.
pub struct TestKey {
    /// Its `kid`.
    pub kid: &'static str,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// The private key.
    pub encoding: EncodingKey,
}

/// The keys of [`JWKS_ISSUER`]: Ed25519, P-256 and RSA-2048.
pub fn signing_keys() -> Vec<TestKey> {
    let key = |kid, alg, encoding: Result<EncodingKey, _>| TestKey {
        kid,
        alg,
        encoding: encoding.expect("the fixed test keys parse"),
    };
    vec![
        key(
            "ed-1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED25519_PEM.as_bytes()),
        ),
        key(
            "ec-1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PEM.as_bytes()),
        ),
        key(
            "rsa-1",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()),
        ),
    ]
}

/// The public JWKS of [`signing_keys`], as `jwks_inline` holds it.
pub fn jwks() -> String {
    let keys: Vec<serde_json::Value> = signing_keys()
        .iter()
        .map(|k| {
            let jwk = Jwk::from_encoding_key(&k.encoding, k.alg).expect("a public jwk");
            let mut jwk = serde_json::to_value(jwk).expect("jwk as json");
            jwk["kid"] = k.kid.into();
            jwk["use"] = "sig".into();
            jwk
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// The ext_authz section of the fuzz config: the README's routes and a few more.
pub const EXT_AUTHZ: &str = r#"
[ext_authz]
enabled = true
jwt_header = "authorization"

[[ext_authz.routes]]
path = "/rooms/{channel}/join"
methods = ["POST"]
service = "rtc"
role = "publisher"

[[ext_authz.routes]]
path = "/rooms/{channel}/watch"
methods = ["GET"]

[[ext_authz.routes]]
path = "/rooms/{channel}/as/{uid}"

[[ext_authz.routes]]
path = "/webinars/{channel}/attend/{account}"
project = "main"

[[ext_authz.routes]]
path = "/chat/*/login"
service = "chat"

[[ext_authz.routes]]
path = "/rtm/login"
service = "rtm"

[[ext_authz.routes]]
path = "/public/**"
pass_through = true
"#;

/// The whole fuzz config: one project, the two issuers, one rule, the routes.
pub fn config_text() -> String {
    format!(
        r#"
[[projects]]
name = "main"
app_id = "{APP_ID}"
signing_certificate = "primary"
certificates = [{{ name = "primary", env = "FUZZ_CERT" }}]

[[issuers]]
name = "inline"
issuer = "{JWKS_ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["EdDSA", "ES256", "RS256", "PS256"]
required_claims = ["email"]
jwks_inline = '{jwks}'

[[issuers]]
name = "hs"
issuer = "{HS_ISSUER}"
audiences = ["{AUDIENCE}", "other"]
algorithms = ["HS256"]
hs_secret_env = "FUZZ_HS"

[[rules]]
name = "anyone"
actions = ["rtc", "rtm", "chat"]
project = "main"
account_claim = "sub"
# Two issuers reach the rule: their subjects are told apart (hardening).
identity_prefix = "issuer_name"
{EXT_AUTHZ}"#,
        jwks = jwks()
    )
}

/// The environment the fuzz config reads its secrets from.
pub fn env(name: &str) -> Option<String> {
    match name {
        "FUZZ_CERT" => Some(APP_CERTIFICATE.to_owned()),
        "FUZZ_HS" => Some(HS_SECRET.to_owned()),
        _ => None,
    }
}

/// The fuzz config, loaded by tokengate's own loader.
pub fn config() -> tokengate::config::Config {
    tokengate::config::load(&config_text(), &env).expect("the fuzz config loads")
}

/// The App ID and certificates of the keyring the token targets inspect with.
pub static KEYRING: LazyLock<(AppId, Vec<(String, AppCertificate)>)> = LazyLock::new(|| {
    (
        AppId::parse(APP_ID).expect("a valid app id"),
        vec![(
            "primary".to_owned(),
            AppCertificate::parse(APP_CERTIFICATE).expect("a valid certificate"),
        )],
    )
});

/// A caller for the policy target: claims of every kind the rules may read.
pub fn principal() -> Principal {
    let claims = BTreeMap::from([
        ("sub".to_owned(), ClaimValue::String("alice".into())),
        (
            "email".to_owned(),
            ClaimValue::String("alice@example.com".into()),
        ),
        ("agora_uid".to_owned(), ClaimValue::Int(7)),
        ("admin".to_owned(), ClaimValue::Bool(false)),
        (
            "teams".to_owned(),
            ClaimValue::Array(vec![ClaimValue::String("blue".into())]),
        ),
    ]);
    Principal {
        issuer: JWKS_ISSUER.to_owned(),
        subject: "alice".to_owned(),
        audiences: vec![AUDIENCE.to_owned()],
        scopes: vec!["tokens:mint".to_owned()],
        claims,
        expires_at: NOW + 3600,
        token_fingerprint: Fingerprint::of(b"fuzz"),
    }
}
