//! Issuer settings: what each identity provider is trusted for and where its keys live.
//!
//! [`IssuerSettings`] is the validated form the authenticator starts from: its
//! fields are private and the only way to get one is [`IssuerBuilder::build`],
//! which checks every invariant. Parsing the TOML and reading the HS secret
//! from its file or environment variable happen in `crate::config`; this
//! module never touches the environment or the file system, so a settings
//! value that exists is one the service can start with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use reqwest::Url;

/// The algorithms an issuer accepts when its config does not say.
pub const DEFAULT_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];
/// The default token size cap: far above real access tokens (0.4–2 KiB) and
/// below hyper's 16 KiB header-list limit.
pub const DEFAULT_MAX_TOKEN_SIZE: usize = 8 * 1024;
/// The largest `max_token_size` we accept in config; beyond it the header
/// list limit of the transport refuses the request anyway.
pub const MAX_TOKEN_SIZE_LIMIT: usize = 64 * 1024;
/// The clock skew tolerated by default on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The largest `leeway` accepted. Leeway exists for clock skew between the
/// IdP and tokengate, which NTP keeps to well under a second; minutes of
/// leeway only extend how long an expired or stolen JWT keeps working.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The shortest HS secret accepted: RFC 7518 §3.2 wants at least the hash size.
pub const MIN_HS_SECRET_LEN: usize = 32;
/// How long a request waits, by default, for a refetch forced by an unknown
/// `kid`: well below the default 5 s request timeout, so a flood of junk kids
/// holds a call slot for at most this long.
pub const DEFAULT_UNKNOWN_KID_WAIT: Duration = Duration::from_secs(1);
/// The longest `unknown_kid_wait` accepted: the default request timeout.
pub const MAX_UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);
/// The latest `exp` accepted at all: 9999-12-31T23:59:59Z. Anything later is
/// not a real expiry, and would overflow date arithmetic downstream.
pub const MAX_EXP: u64 = 253_402_300_799;

/// How many verified JWTs the cache holds by default. An entry holds the
/// token's claims (a few hundred bytes to a few KiB), so this is a few MiB to
/// a few tens of MiB at most, and it only fills with that many distinct valid
/// tokens presented within `max_age`.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;
/// The most entries `jwt_cache.max_entries` may ask for.
pub const MAX_CACHE_ENTRIES: usize = 1_000_000;
/// How long a verification is reused by default.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(60);
/// The longest `jwt_cache.max_age` accepted. The cache's answers do not
/// depend on it (key changes invalidate, time claims are checked on every
/// hit); it bounds how long a verification outlives anything the
/// invalidation might miss, so it stays short.
pub const MAX_CACHE_MAX_AGE: Duration = Duration::from_secs(3600);

/// The verified-JWT cache's settings (`[jwt_cache]`), validated.
///
/// One cache for the whole process: its bound is a memory bound, so it is
/// one number, not one per issuer (a per-issuer bound would grow with the
/// issuers). An issuer leaves it with `IssuerBuilder::verified_cache(false)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedCacheSettings {
    enabled: bool,
    max_entries: usize,
    max_age: Duration,
}

/// One trusted identity provider, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    name: String,
    issuer: Vec<String>,
    audiences: Vec<String>,
    key_source: KeySource,
    algorithms: Vec<Algorithm>,
    hs_secret: Option<HsSecret>,
    leeway: Duration,
    required_claims: Vec<String>,
    require_kid: bool,
    max_token_size: usize,
    refresh: RefreshConfig,
    unknown_kid_wait: Duration,
    max_token_lifetime: Option<Duration>,
    required_for_readiness: bool,
    verified_cache: bool,
}

/// The unvalidated parts of an [`IssuerSettings`]; [`IssuerBuilder::build`] checks them.
#[derive(Debug, Clone)]
pub struct IssuerBuilder {
    settings: IssuerSettings,
}

/// An HS256/384/512 shared secret, already read; its `Debug` never shows the bytes.
///
/// Two secrets are equal when their SHA-256 digests are (a reload compares
/// issuers' settings without keeping the bytes twice).
#[derive(Clone)]
pub struct HsSecret(DecodingKey, [u8; 32]);

/// The key refresh schedule of one issuer; checked when its issuer is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshConfig {
    /// The shortest time between scheduled refreshes (lower clamp of `max-age`).
    pub min_refresh: Duration,
    /// The longest time between scheduled refreshes (upper clamp of `max-age`).
    pub max_refresh: Duration,
    /// The refresh interval when the response has no `Cache-Control: max-age`.
    pub default_ttl: Duration,
    /// The deadline of one fetch, body included.
    pub fetch_timeout: Duration,
    /// How long the last good keys keep serving while refreshes fail.
    pub max_stale: Duration,
    /// The least time between two refetches forced by an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
    /// The first retry delay after a failed fetch (doubled per failure).
    pub backoff_initial: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// The largest JWKS or discovery body accepted, in bytes.
    pub max_body_size: usize,
}

/// A configuration or start-up problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityConfigError {
    /// A key holds a value that cannot work.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key relative to its issuer (`algorithms`), or the full key from `validate_issuers`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The HS secret cannot be used; the message never holds the secret.
    #[error("the hs secret is unusable: {0}")]
    Secret(&'static str),
    /// `Authenticator::start` was called outside a tokio runtime.
    #[error("the authenticator must be started inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client for key fetches could not be built.
    #[error("cannot build the http client: {0}")]
    HttpClient(String),
}

/// Where an issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS URL.
    JwksUrl(Url),
    /// An OIDC discovery document whose `jwks_uri` holds the keys.
    Discovery(Url),
    /// A local JWKS file.
    File(PathBuf),
    /// A JWKS given inline.
    Inline(String),
    /// No public keys: the issuer signs with an HS secret only.
    SecretOnly,
}

impl KeySource {
    /// Keys from the JWKS at `url`; an error's key is `jwks_url`.
    pub fn jwks_url(url: &str) -> Result<Self, IdentityConfigError> {
        parse_url(url, "jwks_url").map(Self::JwksUrl)
    }

    /// Keys through the discovery document at `url`; an error's key is `discovery_url`.
    pub fn discovery_url(url: &str) -> Result<Self, IdentityConfigError> {
        parse_url(url, "discovery_url").map(Self::Discovery)
    }

    /// Keys through discovery at `<issuer>/.well-known/openid-configuration`;
    /// an error's key is `discovery`.
    pub fn discovery_of(issuer: &str) -> Result<Self, IdentityConfigError> {
        let base = issuer.trim_end_matches('/');
        parse_url(
            &format!("{base}/.well-known/openid-configuration"),
            "discovery",
        )
        .map(Self::Discovery)
    }
}

impl HsSecret {
    /// Takes the secret's bytes, refusing one shorter than the hash (RFC 7518 §3.2).
    pub fn new(bytes: &[u8]) -> Result<Self, IdentityConfigError> {
        if bytes.len() < MIN_HS_SECRET_LEN {
            return Err(IdentityConfigError::Secret(
                "the secret is shorter than 32 bytes",
            ));
        }
        if let Some(reason) = looks_like_a_public_key(bytes) {
            return Err(IdentityConfigError::Secret(reason));
        }
        let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes).into();
        DecodingKey::from_secret(bytes)
            .map(|key| Self(key, digest))
            .map_err(|_| IdentityConfigError::Secret("the secret is not usable"))
    }

    /// The verification key.
    pub(super) fn key(&self) -> &DecodingKey {
        &self.0
    }
}

/// Why `bytes` look like key material rather than a shared secret, if they do.
///
/// A public key is public: anyone who reads it from the JWKS or the IdP's
/// documentation could sign HS tokens with it. So a PEM block (any
/// `-----BEGIN`), a JWK or JWKS document, and the base64 body of a DER public
/// key (a PEM without its armour) are refused as HS secrets.
fn looks_like_a_public_key(bytes: &[u8]) -> Option<&'static str> {
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Some("the secret is a pem block (a key or certificate), not a shared secret");
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(bytes)
        && (map.contains_key("kty") || map.contains_key("keys"))
    {
        return Some("the secret is a jwk or jwks document, not a shared secret");
    }
    let compact: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&compact)
        && is_der_public_key(&der)
    {
        return Some("the secret is a base64 der key, not a shared secret");
    }
    None
}

/// Whether `der` is a DER SEQUENCE naming an RSA, EC or Ed25519 key algorithm.
fn is_der_public_key(der: &[u8]) -> bool {
    /// The DER encodings of rsaEncryption, id-ecPublicKey and id-Ed25519.
    const KEY_OIDS: [&[u8]; 3] = [
        &[
            0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01,
        ],
        &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01],
        &[0x06, 0x03, 0x2B, 0x65, 0x70],
    ];
    der.first() == Some(&0x30)
        && KEY_OIDS
            .iter()
            .any(|oid| der.windows(oid.len()).any(|w| w == *oid))
}

impl PartialEq for HsSecret {
    fn eq(&self, other: &Self) -> bool {
        self.1 == other.1
    }
}

impl std::fmt::Debug for HsSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HsSecret(<redacted>)")
    }
}

impl IssuerBuilder {
    /// An issuer named `name` with one `iss`, one audience, keys from `key_source`
    /// and the defaults for everything else.
    pub fn new(name: &str, issuer: &str, audience: &str, key_source: KeySource) -> Self {
        Self::with_lists(
            name,
            vec![issuer.to_owned()],
            vec![audience.to_owned()],
            key_source,
        )
    }

    /// An issuer named `name` with these `iss` strings and audiences, keys
    /// from `key_source` and the defaults for everything else.
    pub fn with_lists(
        name: &str,
        issuer: Vec<String>,
        audiences: Vec<String>,
        key_source: KeySource,
    ) -> Self {
        Self {
            settings: IssuerSettings {
                name: name.to_owned(),
                issuer,
                audiences,
                key_source,
                algorithms: DEFAULT_ALGORITHMS.to_vec(),
                hs_secret: None,
                leeway: DEFAULT_LEEWAY,
                required_claims: Vec::new(),
                require_kid: true,
                max_token_size: DEFAULT_MAX_TOKEN_SIZE,
                refresh: RefreshConfig::default(),
                unknown_kid_wait: DEFAULT_UNKNOWN_KID_WAIT,
                max_token_lifetime: None,
                required_for_readiness: true,
                verified_cache: true,
            },
        }
    }

    /// The exact `iss` strings this issuer signs with.
    pub fn issuer(mut self, issuer: Vec<String>) -> Self {
        self.settings.issuer = issuer;
        self
    }

    /// The audiences accepted (any of them must be in the token's `aud`).
    pub fn audiences(mut self, audiences: Vec<String>) -> Self {
        self.settings.audiences = audiences;
        self
    }

    /// The allowed signature algorithms; HS* only together with an HS secret.
    pub fn algorithms(mut self, algorithms: Vec<Algorithm>) -> Self {
        self.settings.algorithms = algorithms;
        self
    }

    /// The shared secret for HS256/384/512.
    pub fn hs_secret(mut self, secret: HsSecret) -> Self {
        self.settings.hs_secret = Some(secret);
        self
    }

    /// The clock skew tolerated on `exp`, `nbf` and `iat`.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.settings.leeway = leeway;
        self
    }

    /// Claims that must be present beyond `exp`, `iss`, `aud` and `sub`.
    pub fn required_claims(mut self, claims: Vec<String>) -> Self {
        self.settings.required_claims = claims;
        self
    }

    /// Whether a token must name its key with `kid`.
    pub fn require_kid(mut self, require: bool) -> Self {
        self.settings.require_kid = require;
        self
    }

    /// The largest accepted token, in bytes, checked before any decoding.
    pub fn max_token_size(mut self, bytes: usize) -> Self {
        self.settings.max_token_size = bytes;
        self
    }

    /// How the keys are kept fresh.
    pub fn refresh(mut self, refresh: RefreshConfig) -> Self {
        self.settings.refresh = refresh;
        self
    }

    /// The longest a request waits for a refetch forced by an unknown `kid`
    /// (at most [`MAX_UNKNOWN_KID_WAIT`]; zero: never wait, refetch in the background).
    pub fn unknown_kid_wait(mut self, wait: Duration) -> Self {
        self.settings.unknown_kid_wait = wait;
        self
    }

    /// The longest JWT lifetime accepted: `exp - iat`, or `exp - now` without `iat`.
    pub fn max_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.max_token_lifetime = Some(lifetime);
        self
    }

    /// Whether the service waits for this issuer's keys before it reports ready.
    pub fn required_for_readiness(mut self, required: bool) -> Self {
        self.settings.required_for_readiness = required;
        self
    }

    /// Whether this issuer's verified tokens go into the verified-JWT cache
    /// (default true; the cache itself may be off, see [`VerifiedCacheSettings`]).
    pub fn verified_cache(mut self, cached: bool) -> Self {
        self.settings.verified_cache = cached;
        self
    }

    /// Checks every field; an error's key is the field (`algorithms`, `refresh.min_refresh`).
    pub fn build(self) -> Result<IssuerSettings, IdentityConfigError> {
        let s = &self.settings;
        if s.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if s.issuer.is_empty() || s.issuer.iter().any(|i| i.is_empty()) {
            return Err(invalid("issuer", "needs at least one non-empty iss string"));
        }
        if s.audiences.is_empty() || s.audiences.iter().any(|a| a.is_empty()) {
            return Err(invalid(
                "audiences",
                "needs at least one non-empty audience",
            ));
        }
        if s.algorithms.is_empty() {
            return Err(invalid("algorithms", "must allow at least one algorithm"));
        }
        let wants_hs = s
            .algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        match (wants_hs, s.hs_secret.is_some()) {
            (true, false) => {
                return Err(invalid(
                    "algorithms",
                    "HS256/HS384/HS512 need hs_secret_file or hs_secret_env",
                ));
            }
            (false, true) => {
                return Err(invalid(
                    "algorithms",
                    "allows no HS algorithm but an HS secret is set",
                ));
            }
            _ => {}
        }
        // Symmetric and asymmetric keys never share an issuer: with both, a
        // published public key used as the HS secret verifies a forged token
        // (the RS256 to HS256 confusion).
        if s.hs_secret.is_some() && s.key_source != KeySource::SecretOnly {
            return Err(invalid(
                "hs_secret",
                "an HS secret cannot be combined with public keys (jwks_url, discovery_url, discovery, jwks_file, jwks_inline) on one issuer",
            ));
        }
        if wants_hs
            && s.algorithms
                .iter()
                .any(|a| a.family() != AlgorithmFamily::Hmac)
        {
            return Err(invalid(
                "algorithms",
                "an issuer with an HS secret allows only HS256/HS384/HS512",
            ));
        }
        if s.key_source == KeySource::SecretOnly && s.hs_secret.is_none() {
            return Err(invalid(
                "jwks_url",
                "one key source is required: jwks_url, discovery_url, discovery = true, jwks_file or jwks_inline",
            ));
        }
        if s.required_claims.iter().any(|c| c.is_empty()) {
            return Err(invalid("required_claims", "holds an empty claim name"));
        }
        if s.max_token_size == 0 || s.max_token_size > MAX_TOKEN_SIZE_LIMIT {
            return Err(invalid(
                "max_token_size",
                &format!("must be within 1..={MAX_TOKEN_SIZE_LIMIT} bytes"),
            ));
        }
        if s.leeway > MAX_LEEWAY {
            return Err(invalid(
                "leeway",
                &format!(
                    "must be at most {}s: leeway covers clock skew, and more only stretches how long an expired JWT is accepted",
                    MAX_LEEWAY.as_secs()
                ),
            ));
        }
        if s.unknown_kid_wait > MAX_UNKNOWN_KID_WAIT {
            return Err(invalid(
                "refresh.unknown_kid_wait",
                &format!("must be at most {}s", MAX_UNKNOWN_KID_WAIT.as_secs()),
            ));
        }
        if s.max_token_lifetime.is_some_and(|l| l.is_zero()) {
            return Err(invalid("max_token_lifetime", "must be positive"));
        }
        s.refresh.validate()?;
        Ok(self.settings)
    }
}

impl IssuerSettings {
    /// The short name for logs and metrics (not a secret, not the `iss`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The exact `iss` strings this issuer signs with.
    pub fn issuer(&self) -> &[String] {
        &self.issuer
    }

    /// The audiences accepted.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Where the public keys come from.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// The allowed signature algorithms.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The HS shared secret, when one is configured.
    pub fn hs_secret(&self) -> Option<&HsSecret> {
        self.hs_secret.as_ref()
    }

    /// The clock skew tolerated on `exp`, `nbf` and `iat`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Claims that must be present beyond the registered ones.
    pub fn required_claims(&self) -> &[String] {
        &self.required_claims
    }

    /// Whether a token must name its key with `kid`.
    pub fn require_kid(&self) -> bool {
        self.require_kid
    }

    /// The largest accepted token, in bytes.
    pub fn max_token_size(&self) -> usize {
        self.max_token_size
    }

    /// The key refresh schedule.
    pub fn refresh(&self) -> &RefreshConfig {
        &self.refresh
    }

    /// The longest a request waits for a refetch forced by an unknown `kid`.
    pub fn unknown_kid_wait(&self) -> Duration {
        self.unknown_kid_wait
    }

    /// The longest JWT lifetime accepted, when capped.
    pub fn max_token_lifetime(&self) -> Option<Duration> {
        self.max_token_lifetime
    }

    /// Whether readiness waits for this issuer's keys.
    pub fn required_for_readiness(&self) -> bool {
        self.required_for_readiness
    }

    /// Whether this issuer's verified tokens may be cached.
    pub fn verified_cache(&self) -> bool {
        self.verified_cache
    }
}

impl VerifiedCacheSettings {
    /// The cache on or off, with `max_entries` and `max_age`; an error's key
    /// is the field (`max_entries`, `max_age`), checked even when it is off
    /// so that turning it on later cannot meet a bad value.
    pub fn new(
        enabled: bool,
        max_entries: usize,
        max_age: Duration,
    ) -> Result<Self, IdentityConfigError> {
        if max_entries == 0 || max_entries > MAX_CACHE_ENTRIES {
            return Err(invalid(
                "max_entries",
                &format!(
                    "must be within 1..={MAX_CACHE_ENTRIES} (to turn the cache off, set enabled = false)"
                ),
            ));
        }
        if max_age < Duration::from_secs(1) || max_age > MAX_CACHE_MAX_AGE {
            return Err(invalid(
                "max_age",
                &format!(
                    "must be within 1s..={}s (to turn the cache off, set enabled = false)",
                    MAX_CACHE_MAX_AGE.as_secs()
                ),
            ));
        }
        Ok(Self {
            enabled,
            max_entries,
            max_age,
        })
    }

    /// The cache off: every call verifies its JWT in full.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The most verified tokens held at once.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    /// How long one verification is reused, at most (whole seconds).
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

impl Default for VerifiedCacheSettings {
    /// On, with [`DEFAULT_CACHE_ENTRIES`] and [`DEFAULT_CACHE_MAX_AGE`]: its
    /// answers are those of a full verification (see `identity::verified`).
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: DEFAULT_CACHE_ENTRIES,
            max_age: DEFAULT_CACHE_MAX_AGE,
        }
    }
}

/// The least `min_refresh` a config file may set: with an IdP that sends
/// `max-age=0`, a lower floor turns the refresher into a busy loop.
pub const MIN_REFRESH_FLOOR: Duration = Duration::from_secs(5);
/// The least `unknown_kid_cooldown` a config file may set: with `0s`, every
/// call with a junk `kid` would cost a fetch.
pub const UNKNOWN_KID_COOLDOWN_FLOOR: Duration = Duration::from_secs(1);
/// The least `backoff_initial` a config file may set: a failing IdP must not be retried in a tight loop.
pub const BACKOFF_INITIAL_FLOOR: Duration = Duration::from_millis(100);

impl RefreshConfig {
    /// Checks the operational floors a config file must respect (the
    /// library's own callers, tests with paused or fast time, may go lower);
    /// an error's key is `refresh.<field>`.
    pub fn check_floors(&self) -> Result<(), IdentityConfigError> {
        let floors = [
            ("refresh.min_refresh", self.min_refresh, MIN_REFRESH_FLOOR),
            (
                "refresh.unknown_kid_cooldown",
                self.unknown_kid_cooldown,
                UNKNOWN_KID_COOLDOWN_FLOOR,
            ),
            (
                "refresh.backoff_initial",
                self.backoff_initial,
                BACKOFF_INITIAL_FLOOR,
            ),
        ];
        for (key, value, floor) in floors {
            if value < floor {
                return Err(invalid(
                    key,
                    &format!(
                        "must be at least {}: lower values let the IdP or junk tokens drive fetches in a loop",
                        humantime::format_duration(floor)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks the schedule is coherent; an error's key is `refresh.<field>`.
    pub fn validate(&self) -> Result<(), IdentityConfigError> {
        if self.min_refresh > self.max_refresh {
            return Err(invalid(
                "refresh.min_refresh",
                "must not exceed max_refresh",
            ));
        }
        if self.default_ttl < self.min_refresh || self.default_ttl > self.max_refresh {
            return Err(invalid(
                "refresh.default_ttl",
                "must lie within min_refresh..=max_refresh",
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(invalid("refresh.fetch_timeout", "must be positive"));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(invalid(
                "refresh.backoff_initial",
                "must be positive and at most backoff_max",
            ));
        }
        if self.max_body_size == 0 {
            return Err(invalid("refresh.max_body_size", "must be positive"));
        }
        Ok(())
    }
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(5 * 60),
            max_refresh: Duration::from_secs(24 * 3600),
            default_ttl: Duration::from_secs(10 * 60),
            fetch_timeout: Duration::from_secs(5),
            max_stale: Duration::from_secs(24 * 3600),
            unknown_kid_cooldown: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_body_size: 1024 * 1024,
        }
    }
}

/// Checks a list of issuers: that there is one, and that names and `iss` strings are unique.
///
/// `key` is the list's key (`issuers`); errors name `issuers[i].field`.
pub fn validate_issuers(issuers: &[IssuerSettings], key: &str) -> Result<(), IdentityConfigError> {
    if issuers.is_empty() {
        return Err(invalid(key, "needs at least one issuer"));
    }
    let mut names = HashMap::new();
    let mut iss_owner = HashMap::new();
    for (i, issuer) in issuers.iter().enumerate() {
        let prefix = format!("{key}[{i}]");
        if let Some(first) = names.insert(issuer.name.as_str(), i) {
            return Err(invalid(
                &format!("{prefix}.name"),
                &format!("duplicates the name of {key}[{first}]"),
            ));
        }
        for iss in &issuer.issuer {
            // The issuer is chosen from the unverified `iss`, so one `iss`
            // must map to exactly one key set.
            if let Some(first) = iss_owner.insert(iss.as_str(), i) {
                return Err(invalid(
                    &format!("{prefix}.issuer"),
                    &format!("an iss string is already claimed by {key}[{first}]"),
                ));
            }
        }
    }
    Ok(())
}

/// Parses an http(s) URL, naming `key` on failure.
fn parse_url(text: &str, key: &str) -> Result<Url, IdentityConfigError> {
    let url = Url::parse(text).map_err(|e| invalid(key, &format!("is not a valid url: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(invalid(
            key,
            &format!("scheme {other:?} is not http or https"),
        )),
    }
}

/// Builds an `Invalid` error.
fn invalid(key: &str, problem: &str) -> IdentityConfigError {
    IdentityConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline(name: &str, iss: &str) -> IssuerBuilder {
        IssuerBuilder::new(name, iss, "aud", KeySource::Inline("{}".into()))
    }

    fn problem_key(builder: IssuerBuilder) -> Option<String> {
        builder.build().err().map(|e| match e {
            IdentityConfigError::Invalid { key, .. } => key,
            other => other.to_string(),
        })
    }

    #[test]
    fn defaults_follow_the_issue() {
        let s = inline("corp", "https://idp.example.com").build().unwrap();
        assert_eq!(s.issuer(), ["https://idp.example.com"]);
        assert_eq!(s.algorithms(), DEFAULT_ALGORITHMS);
        assert_eq!(s.leeway(), Duration::from_secs(60));
        assert!(s.require_kid());
        assert_eq!(s.max_token_size(), 8192);
        assert_eq!(s.refresh(), &RefreshConfig::default());
        assert_eq!(s.refresh().min_refresh, Duration::from_secs(300));
        assert_eq!(s.refresh().max_body_size, 1 << 20);
    }

    #[test]
    fn build_names_the_field() {
        let secret = HsSecret::new(&[7; 32]).unwrap();
        let hs = vec![Algorithm::HS256];
        let cases: Vec<(IssuerBuilder, Option<&str>)> = vec![
            (inline("a", "i"), None),
            (inline(" ", "i"), Some("name")),
            (inline("a", ""), Some("issuer")),
            (inline("a", "i").audiences(vec![]), Some("audiences")),
            (inline("a", "i").algorithms(vec![]), Some("algorithms")),
            (inline("a", "i").algorithms(hs.clone()), Some("algorithms")),
            (
                inline("a", "i").hs_secret(secret.clone()),
                Some("algorithms"),
            ),
            // Symmetric and asymmetric keys never share an issuer.
            (
                inline("a", "i")
                    .algorithms(hs.clone())
                    .hs_secret(secret.clone()),
                Some("hs_secret"),
            ),
            (
                IssuerBuilder::new("a", "i", "aud", KeySource::SecretOnly)
                    .algorithms(vec![Algorithm::HS256, Algorithm::RS256])
                    .hs_secret(secret.clone()),
                Some("algorithms"),
            ),
            (
                inline("a", "i").unknown_kid_wait(MAX_UNKNOWN_KID_WAIT + Duration::from_millis(1)),
                Some("refresh.unknown_kid_wait"),
            ),
            (inline("a", "i").unknown_kid_wait(Duration::ZERO), None),
            (
                inline("a", "i").max_token_lifetime(Duration::ZERO),
                Some("max_token_lifetime"),
            ),
            (
                inline("a", "i").max_token_lifetime(Duration::from_secs(3600)),
                None,
            ),
            (
                IssuerBuilder::new("a", "i", "aud", KeySource::SecretOnly),
                Some("jwks_url"),
            ),
            (
                IssuerBuilder::new("a", "i", "aud", KeySource::SecretOnly)
                    .algorithms(hs)
                    .hs_secret(secret),
                None,
            ),
            (
                inline("a", "i").required_claims(vec![String::new()]),
                Some("required_claims"),
            ),
            (inline("a", "i").max_token_size(0), Some("max_token_size")),
            (
                inline("a", "i").max_token_size(MAX_TOKEN_SIZE_LIMIT + 1),
                Some("max_token_size"),
            ),
            (
                inline("a", "i").refresh(RefreshConfig {
                    min_refresh: Duration::from_secs(2 * 86_400),
                    ..RefreshConfig::default()
                }),
                Some("refresh.min_refresh"),
            ),
            (
                inline("a", "i").refresh(RefreshConfig {
                    fetch_timeout: Duration::ZERO,
                    ..RefreshConfig::default()
                }),
                Some("refresh.fetch_timeout"),
            ),
        ];
        for (i, (builder, expected)) in cases.into_iter().enumerate() {
            assert_eq!(problem_key(builder).as_deref(), expected, "case {i}");
        }
    }

    #[test]
    fn hs_secrets_are_long_enough_and_never_shown() {
        assert_eq!(
            HsSecret::new(b"short").unwrap_err(),
            IdentityConfigError::Secret("the secret is shorter than 32 bytes")
        );
        let secret = HsSecret::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let debug = format!("{secret:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("0123"), "{debug}");
    }

    #[test]
    fn public_keys_are_not_hs_secrets() {
        const SPKI_RSA: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmwIDAQAB";
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{SPKI_RSA}\n-----END PUBLIC KEY-----");
        let jwk = r#"{"kty":"RSA","n":"u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw","e":"AQAB"}"#;
        let jwks = format!(r#"{{"keys":[{jwk}]}}"#);
        let certificate = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----";
        for (label, secret) in [
            ("pem", pem.as_str()),
            ("pem after text", &format!("key: {pem}")),
            ("certificate", certificate),
            ("jwk", jwk),
            ("jwks", &jwks),
            ("pem body", SPKI_RSA),
        ] {
            let err = HsSecret::new(secret.as_bytes()).unwrap_err();
            assert!(
                matches!(err, IdentityConfigError::Secret(m) if m.contains("not a shared secret")),
                "{label}: {err:?}"
            );
        }
        // Random secrets, in the usual encodings, are fine.
        for secret in [
            "0123456789abcdef0123456789abcdef",
            "q8W1pXn3t0k9S4bZ7yR2vL5mC6hJ0dFgTzUaEwQo3Ns=",
            r#"{"not":"a key","but":"json of 32 bytes or more"}"#,
        ] {
            assert!(HsSecret::new(secret.as_bytes()).is_ok(), "{secret}");
        }
    }

    #[test]
    fn discovery_is_under_the_issuer() {
        assert_eq!(
            KeySource::discovery_of("https://accounts.google.com/").unwrap(),
            KeySource::Discovery(
                Url::parse("https://accounts.google.com/.well-known/openid-configuration").unwrap()
            )
        );
    }

    #[test]
    fn urls_are_http_and_name_their_key() {
        let key = |r: Result<KeySource, IdentityConfigError>| match r {
            Err(IdentityConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(key(KeySource::jwks_url("ftp://x/y")), "jwks_url");
        assert_eq!(key(KeySource::jwks_url("not a url")), "jwks_url");
        assert_eq!(key(KeySource::discovery_url("file:///x")), "discovery_url");
        assert_eq!(key(KeySource::discovery_of("idp.example")), "discovery");
        assert!(KeySource::jwks_url("https://idp.example/jwks").is_ok());
    }

    #[test]
    fn issuers_must_not_share_names_or_iss() {
        let a = inline("a", "https://a").build().unwrap();
        let b = inline("b", "https://a").build().unwrap();
        let err = validate_issuers(&[a.clone(), b], "issuers").unwrap_err();
        assert!(err.to_string().starts_with("issuers[1].issuer:"), "{err}");
        let dup = validate_issuers(&[a.clone(), a], "issuers").unwrap_err();
        assert!(dup.to_string().starts_with("issuers[1].name:"), "{dup}");
        assert!(validate_issuers(&[], "issuers").is_err());
    }
}
