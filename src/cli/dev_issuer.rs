//! The development identity provider behind `tokengate dev`: an ephemeral
//! ES256 key, its JWKS and OIDC discovery served on loopback, and a `/mint`
//! endpoint that signs JWTs for any subject.
//!
//! This is deliberately unsafe for production (anyone on the machine can mint
//! a JWT), so it exists only in the `dev` subcommand, binds only loopback
//! addresses, and no setting of the production config can turn it on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The audience every dev JWT carries and the dev config expects.
pub const DEV_AUDIENCE: &str = "tokengate-dev";

/// A failure of the development issuer.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// The key pair could not be generated.
    #[error("could not generate the development signing key")]
    KeyGeneration,
    /// A JWT could not be signed.
    #[error("could not sign a development jwt: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The issuer was asked to listen on a non-loopback address.
    #[error("the development issuer only listens on loopback, not {0}")]
    NotLoopback(SocketAddr),
}

/// An ephemeral ES256 signing key and the issuer URL it signs for.
pub struct DevIssuer {
    issuer: String,
    kid: String,
    encoding_key: EncodingKey,
    jwks: Value,
}

/// A request to `/mint`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MintRequest {
    /// The subject (`sub`).
    pub sub: String,
    /// Extra claims, merged over the defaults.
    #[serde(default)]
    pub claims: Map<String, Value>,
    /// Lifetime in seconds (default one hour).
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

/// The answer of `/mint`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MintResponse {
    /// The signed JWT.
    pub jwt: String,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Generates a fresh key for an issuer served at `issuer` (its base URL).
    pub fn generate(issuer: String) -> Result<Self, DevIssuerError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| DevIssuerError::KeyGeneration)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| DevIssuerError::KeyGeneration)?;
        // The public key is the uncompressed point 0x04 || x || y.
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(DevIssuerError::KeyGeneration);
        }
        let (x, y) = point[1..].split_at(32);
        let kid = format!(
            "dev-{}",
            &crate::domain::Fingerprint::of(point).as_str()[..8]
        );
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]});
        Ok(Self {
            issuer,
            kid,
            encoding_key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks,
        })
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// Signs a JWT for `request` at `now` (unix seconds).
    pub fn mint(&self, request: &MintRequest, now: u64) -> Result<String, DevIssuerError> {
        let mut claims: BTreeMap<String, Value> = BTreeMap::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(DEV_AUDIENCE));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now.saturating_add(request.ttl_secs)));
        claims.insert("scope".into(), json!("rtc:token"));
        for (key, value) in &request.claims {
            claims.insert(key.clone(), value.clone());
        }
        // `sub` is the point of the request, so no extra claim may override it.
        claims.insert("sub".into(), json!(request.sub));
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding_key)?)
    }

    /// The HTTP routes: discovery, JWKS and `/mint`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/mint", post(mint))
            .with_state(self)
    }

    /// Checks that `addr` is a loopback address before anything binds it.
    pub fn check_loopback(addr: SocketAddr) -> Result<(), DevIssuerError> {
        if addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(DevIssuerError::NotLoopback(addr))
        }
    }
}

fn default_ttl() -> u64 {
    3600
}

async fn discovery(State(issuer): State<Arc<DevIssuer>>) -> Json<Value> {
    Json(json!({
        "issuer": issuer.issuer,
        "jwks_uri": issuer.jwks_url(),
        "id_token_signing_alg_values_supported": ["ES256"],
    }))
}

async fn jwks(State(issuer): State<Arc<DevIssuer>>) -> Json<Value> {
    Json(issuer.jwks.clone())
}

async fn mint(
    State(issuer): State<Arc<DevIssuer>>,
    Json(request): Json<MintRequest>,
) -> Result<Json<MintResponse>, (StatusCode, String)> {
    let now = crate::entropy::unix_now();
    issuer
        .mint(&request, now)
        .map(|jwt| Json(MintResponse { jwt }))
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};

    #[test]
    fn minted_jwts_verify_against_the_served_jwks() {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let issuer = DevIssuer::generate("http://127.0.0.1:9091".into()).unwrap();
        let mut claims = Map::new();
        claims.insert("teams".into(), json!(["blue"]));
        claims.insert("sub".into(), json!("mallory"));
        let request = MintRequest {
            sub: "alice".into(),
            claims,
            ttl_secs: 600,
        };
        let now = 1_800_000_000;
        let jwt = issuer.mint(&request, now).unwrap();

        let set: JwkSet = serde_json::from_value(issuer.jwks.clone()).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
        let key = DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[DEV_AUDIENCE]);
        validation.set_issuer(&["http://127.0.0.1:9091"]);
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(&jwt, &key, &validation).unwrap();
        assert_eq!(
            data.claims["sub"], "alice",
            "an extra claim must not override sub"
        );
        assert_eq!(data.claims["teams"], json!(["blue"]));
        assert_eq!(data.claims["exp"], json!(now + 600));
    }

    #[test]
    fn only_loopback_is_allowed() {
        assert!(DevIssuer::check_loopback("127.0.0.1:9091".parse().unwrap()).is_ok());
        assert!(DevIssuer::check_loopback("[::1]:9091".parse().unwrap()).is_ok());
        assert!(DevIssuer::check_loopback("0.0.0.0:9091".parse().unwrap()).is_err());
    }
}
