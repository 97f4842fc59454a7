//! Caller authentication: verify JWTs from the company's identity providers into a `Principal`.
//!
//! [`Authenticator::start`] takes the issuers' validated settings and spawns
//! one key refresher per issuer; [`Authenticator::authenticate`] turns the raw
//! `authorization` metadata value into a [`crate::domain::Principal`] or an
//! [`AuthError`] whose `reason()` is a stable label. Time enters as the
//! `now` argument; only the refresher reads a (monotonic) clock. HS secrets
//! arrive already read: `crate::config` reads every secret, so this module
//! never looks at the environment.
//!
//! Submodules: `config` (what is trusted: the validated issuer settings),
//! `keys` (vetting a JWKS), `fetch` (HTTP, discovery, files), `refresh` (the
//! published snapshot and its schedule), `claims` (strict claim parsing),
//! `authenticator` (the checks), `verified` (the verified-JWT cache).

mod authenticator;
mod claims;
mod config;
mod fetch;
mod keys;
mod refresh;
mod verified;

pub use authenticator::{
    AuthError, Authentication, Authenticator, CacheLookup, Readiness, Restarted,
};
pub use config::{
    BACKOFF_INITIAL_FLOOR, DEFAULT_ALGORITHMS, DEFAULT_CACHE_ENTRIES, DEFAULT_CACHE_MAX_AGE,
    DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_SIZE, DEFAULT_UNKNOWN_KID_WAIT, HsSecret,
    IdentityConfigError, IssuerBuilder, IssuerSettings, KeySource, MAX_CACHE_ENTRIES,
    MAX_CACHE_MAX_AGE, MAX_EXP, MAX_LEEWAY, MAX_TOKEN_SIZE_LIMIT, MAX_UNKNOWN_KID_WAIT,
    MIN_HS_SECRET_LEN, MIN_REFRESH_FLOOR, RefreshConfig, UNKNOWN_KID_COOLDOWN_FLOOR,
    VerifiedCacheSettings, validate_issuers,
};
pub use keys::{KeySet, KeySourceError, MIN_RSA_BITS};
pub use refresh::{
    EXPIRED_RETRY_MAX, FORCED_REFETCH_GAP, Freshness, IssuerStatus, MAX_REMEMBERED_KIDS,
    MAX_UNKNOWN_KID_WAITERS,
};
pub use verified::VerifiedCacheStats;

/// Installs jsonwebtoken's aws-lc crypto provider as the process default.
///
/// Call it once at start-up, before any token is verified. jsonwebtoken
/// panics on first use when Cargo feature unification leaves both or neither
/// backend enabled; installing explicitly makes the choice independent of
/// the dependency graph. Calling it again (or after another install) is harmless.
pub fn install_crypto_provider() {
    use jsonwebtoken::crypto::CryptoProvider;
    // `Err` only says a provider is already installed, which is what we want.
    let _ = CryptoProvider::install_default(&jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER);
}
