//! Issuer configuration: what each identity provider is trusted for and where its keys live.
//!
//! The structs deserialize from the service's TOML (`[[issuers]]` tables) with
//! `deny_unknown_fields`, so a typo is an error rather than a silently ignored
//! setting. `validate` names the offending key (`issuers[1].jwks_url`) so an
//! operator can fix the file without reading code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use reqwest::Url;
use serde::{Deserialize, Deserializer};

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

/// One trusted identity provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// A short name for logs and metrics (not a secret, not the `iss`).
    pub name: String,
    /// The exact `iss` strings this issuer signs with (a single string or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub issuer: Vec<String>,
    /// Audiences accepted (any of them must be in the token's `aud`).
    pub audiences: Vec<String>,
    /// Keys from this JWKS URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Keys from the `jwks_uri` of this OIDC discovery document.
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Keys through OIDC discovery at `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Keys from a local JWKS file, re-read on the refresh schedule.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Keys from a JWKS given inline (tests and the `dev` mode).
    #[serde(default)]
    pub jwks_inline: Option<String>,
    /// Allowed signature algorithms; HS* only together with an HS secret.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// A file holding the shared secret for HS256/384/512.
    #[serde(default)]
    pub hs_secret_file: Option<PathBuf>,
    /// An environment variable holding the shared secret for HS256/384/512.
    #[serde(default)]
    pub hs_secret_env: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    pub leeway: Duration,
    /// Claims that must be present beyond `exp`, `iss`, `aud` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Whether a token must name its key with `kid`.
    #[serde(default = "default_true")]
    pub require_kid: bool,
    /// The largest accepted token, in bytes, checked before any decoding.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: usize,
    /// How the keys are kept fresh.
    #[serde(default)]
    pub refresh: RefreshConfig,
}

/// The key refresh schedule of one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// The shortest time between scheduled refreshes (lower clamp of `max-age`).
    #[serde(deserialize_with = "duration")]
    pub min_refresh: Duration,
    /// The longest time between scheduled refreshes (upper clamp of `max-age`).
    #[serde(deserialize_with = "duration")]
    pub max_refresh: Duration,
    /// The refresh interval when the response has no `Cache-Control: max-age`.
    #[serde(deserialize_with = "duration")]
    pub default_ttl: Duration,
    /// The deadline of one fetch, body included.
    #[serde(deserialize_with = "duration")]
    pub fetch_timeout: Duration,
    /// How long the last good keys keep serving while refreshes fail.
    #[serde(deserialize_with = "duration")]
    pub max_stale: Duration,
    /// The least time between two refetches forced by an unknown `kid`.
    #[serde(deserialize_with = "duration")]
    pub unknown_kid_cooldown: Duration,
    /// The first retry delay after a failed fetch (doubled per failure).
    #[serde(deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// The longest retry delay.
    #[serde(deserialize_with = "duration")]
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
        /// The full key, e.g. `issuers[1].jwks_url`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The HS secret could not be read; the message never holds the secret.
    #[error("{key}: cannot read the secret: {reason}")]
    Secret {
        /// The key that names the secret.
        key: String,
        /// Why it could not be read.
        reason: String,
    },
    /// `Authenticator::start` was called outside a tokio runtime.
    #[error("the authenticator must be started inside a tokio runtime")]
    NoRuntime,
    /// The HTTP client for key fetches could not be built.
    #[error("cannot build the http client: {0}")]
    HttpClient(String),
}

/// Where an issuer's public keys come from, resolved from the config.
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

impl IssuerConfig {
    /// A config with the defaults and the given identity, for code and tests.
    pub fn new(name: &str, issuer: &str, audience: &str) -> Self {
        Self {
            name: name.to_owned(),
            issuer: vec![issuer.to_owned()],
            audiences: vec![audience.to_owned()],
            jwks_url: None,
            discovery_url: None,
            discovery: false,
            jwks_file: None,
            jwks_inline: None,
            algorithms: default_algorithms(),
            hs_secret_file: None,
            hs_secret_env: None,
            leeway: default_leeway(),
            required_claims: Vec::new(),
            require_kid: true,
            max_token_size: DEFAULT_MAX_TOKEN_SIZE,
            refresh: RefreshConfig::default(),
        }
    }

    /// Checks every field; errors name the key as `<key_prefix>.<field>`.
    pub fn validate(&self, key_prefix: &str) -> Result<(), IdentityConfigError> {
        let key = |field: &str| format!("{key_prefix}.{field}");
        if self.name.trim().is_empty() {
            return Err(invalid(key("name"), "must not be empty"));
        }
        if self.issuer.is_empty() || self.issuer.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                key("issuer"),
                "needs at least one non-empty iss string",
            ));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|s| s.is_empty()) {
            return Err(invalid(
                key("audiences"),
                "needs at least one non-empty audience",
            ));
        }
        self.key_source(key_prefix)?;
        self.validate_algorithms(key_prefix)?;
        if self.required_claims.iter().any(|c| c.is_empty()) {
            return Err(invalid(key("required_claims"), "holds an empty claim name"));
        }
        if self.max_token_size == 0 || self.max_token_size > MAX_TOKEN_SIZE_LIMIT {
            return Err(invalid(
                key("max_token_size"),
                &format!("must be within 1..={MAX_TOKEN_SIZE_LIMIT} bytes"),
            ));
        }
        self.refresh.validate(&key("refresh"))
    }

    /// The key source this config selects, or an error naming the conflicting keys.
    pub fn key_source(&self, key_prefix: &str) -> Result<KeySource, IdentityConfigError> {
        let key = |field: &str| format!("{key_prefix}.{field}");
        let mut sources = Vec::new();
        if let Some(url) = &self.jwks_url {
            sources.push(KeySource::JwksUrl(parse_url(url, &key("jwks_url"))?));
        }
        if let Some(url) = &self.discovery_url {
            sources.push(KeySource::Discovery(parse_url(url, &key("discovery_url"))?));
        }
        if self.discovery {
            sources.push(KeySource::Discovery(
                self.discovery_from_issuer(&key("discovery"))?,
            ));
        }
        if let Some(path) = &self.jwks_file {
            sources.push(KeySource::File(path.clone()));
        }
        if let Some(json) = &self.jwks_inline {
            sources.push(KeySource::Inline(json.clone()));
        }
        match sources.len() {
            0 if self.has_hs_secret() => Ok(KeySource::SecretOnly),
            0 => Err(invalid(
                key("jwks_url"),
                "one key source is required: jwks_url, discovery_url, discovery = true, jwks_file or jwks_inline",
            )),
            1 => Ok(sources.remove(0)),
            _ => Err(invalid(
                key("jwks_url"),
                "only one of jwks_url, discovery_url, discovery = true, jwks_file, jwks_inline may be set",
            )),
        }
    }

    /// Whether an HS shared secret is configured.
    pub fn has_hs_secret(&self) -> bool {
        self.hs_secret_file.is_some() || self.hs_secret_env.is_some()
    }

    /// `<issuer>/.well-known/openid-configuration` for the first `iss` string.
    fn discovery_from_issuer(&self, key: &str) -> Result<Url, IdentityConfigError> {
        let issuer = self.issuer.first().map(String::as_str).unwrap_or_default();
        let base = issuer.trim_end_matches('/');
        parse_url(&format!("{base}/.well-known/openid-configuration"), key)
    }

    /// HS* only with a secret, a secret only with HS*, never an empty list.
    fn validate_algorithms(&self, key_prefix: &str) -> Result<(), IdentityConfigError> {
        let key = |field: &str| format!("{key_prefix}.{field}");
        if self.algorithms.is_empty() {
            return Err(invalid(
                key("algorithms"),
                "must allow at least one algorithm",
            ));
        }
        let wants_hs = self
            .algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        if wants_hs && !self.has_hs_secret() {
            return Err(invalid(
                key("algorithms"),
                "HS256/HS384/HS512 need hs_secret_file or hs_secret_env",
            ));
        }
        if self.hs_secret_file.is_some() && self.hs_secret_env.is_some() {
            return Err(invalid(
                key("hs_secret_env"),
                "set hs_secret_file or hs_secret_env, not both",
            ));
        }
        if self.has_hs_secret() && !wants_hs {
            let which = if self.hs_secret_file.is_some() {
                "hs_secret_file"
            } else {
                "hs_secret_env"
            };
            return Err(invalid(
                key(which),
                "is set but algorithms allows no HS algorithm",
            ));
        }
        Ok(())
    }
}

impl RefreshConfig {
    /// Checks the schedule is coherent; errors name the key under `key_prefix`.
    pub fn validate(&self, key_prefix: &str) -> Result<(), IdentityConfigError> {
        let key = |field: &str| format!("{key_prefix}.{field}");
        if self.min_refresh > self.max_refresh {
            return Err(invalid(key("min_refresh"), "must not exceed max_refresh"));
        }
        if self.default_ttl < self.min_refresh || self.default_ttl > self.max_refresh {
            return Err(invalid(
                key("default_ttl"),
                "must lie within min_refresh..=max_refresh",
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(invalid(key("fetch_timeout"), "must be positive"));
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return Err(invalid(
                key("backoff_initial"),
                "must be positive and at most backoff_max",
            ));
        }
        if self.max_body_size == 0 {
            return Err(invalid(key("max_body_size"), "must be positive"));
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

/// Checks a list of issuers: each one, then that names and `iss` strings are unique.
///
/// `key` is the list's key (`issuers`); errors name `issuers[i].field`.
pub fn validate_issuers(configs: &[IssuerConfig], key: &str) -> Result<(), IdentityConfigError> {
    if configs.is_empty() {
        return Err(invalid(key.to_owned(), "needs at least one issuer"));
    }
    let mut names = HashMap::new();
    let mut iss_owner = HashMap::new();
    for (i, config) in configs.iter().enumerate() {
        let prefix = format!("{key}[{i}]");
        config.validate(&prefix)?;
        if let Some(first) = names.insert(config.name.as_str(), i) {
            return Err(invalid(
                format!("{prefix}.name"),
                &format!("duplicates the name of {key}[{first}]"),
            ));
        }
        for iss in &config.issuer {
            // The issuer is chosen from the unverified `iss`, so one `iss`
            // must map to exactly one key set.
            if let Some(first) = iss_owner.insert(iss.as_str(), i) {
                return Err(invalid(
                    format!("{prefix}.issuer"),
                    &format!("an iss string is already claimed by {key}[{first}]"),
                ));
            }
        }
    }
    Ok(())
}

/// Builds an `Invalid` error.
fn invalid(key: String, problem: &str) -> IdentityConfigError {
    IdentityConfigError::Invalid {
        key,
        problem: problem.to_owned(),
    }
}

/// Parses an http(s) URL, naming `key` on failure.
fn parse_url(text: &str, key: &str) -> Result<Url, IdentityConfigError> {
    let url = Url::parse(text)
        .map_err(|e| invalid(key.to_owned(), &format!("is not a valid url: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(invalid(
            key.to_owned(),
            &format!("scheme {other:?} is not http or https"),
        )),
    }
}

fn default_algorithms() -> Vec<Algorithm> {
    DEFAULT_ALGORITHMS.to_vec()
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_true() -> bool {
    true
}

fn default_max_token_size() -> usize {
    DEFAULT_MAX_TOKEN_SIZE
}

/// Accepts `"x"` as well as `["x", "y"]`.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Parses a humantime duration such as `"90s"` or `"1h"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<IssuerConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    const BASE: &str = r#"
        name = "corp"
        issuer = "https://idp.example.com"
        audiences = ["tokengate"]
        jwks_url = "https://idp.example.com/jwks"
    "#;

    #[test]
    fn defaults_follow_the_issue() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.issuer, vec!["https://idp.example.com"]);
        assert_eq!(c.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!(c.leeway, Duration::from_secs(60));
        assert!(c.require_kid);
        assert_eq!(c.max_token_size, 8192);
        assert_eq!(c.refresh, RefreshConfig::default());
        assert_eq!(c.refresh.min_refresh, Duration::from_secs(300));
        assert_eq!(c.refresh.max_body_size, 1 << 20);
        c.validate("issuers[0]").unwrap();
    }

    #[test]
    fn durations_and_lists_parse() {
        let c = parse(
            r#"
            name = "g"
            issuer = ["https://accounts.google.com", "accounts.google.com"]
            audiences = ["x"]
            discovery = true
            leeway = "90s"
            [refresh]
            max_stale = "1h"
        "#,
        )
        .unwrap();
        assert_eq!(c.issuer.len(), 2);
        assert_eq!(c.leeway, Duration::from_secs(90));
        assert_eq!(c.refresh.max_stale, Duration::from_secs(3600));
        assert_eq!(
            c.key_source("i").unwrap(),
            KeySource::Discovery(
                Url::parse("https://accounts.google.com/.well-known/openid-configuration").unwrap()
            )
        );
    }

    #[test]
    fn unknown_keys_and_algorithms_are_refused() {
        assert!(parse(&format!("{BASE}\nrequire_kidd = true")).is_err());
        assert!(parse(&format!("{BASE}\nalgorithms = [\"none\"]")).is_err());
        assert!(parse(&format!("{BASE}\n[refresh]\nmin_refreshh = \"1s\"")).is_err());
    }

    fn check(extra: &str, expected_key: Option<&str>) {
        let text = if extra.contains("jwks_url") || extra.contains("name =") {
            extra.to_owned()
        } else {
            format!("{BASE}\n{extra}")
        };
        let c = parse(&text).unwrap();
        let got = c.validate("issuers[1]").err().map(|e| match e {
            IdentityConfigError::Invalid { key, .. } => key,
            other => other.to_string(),
        });
        assert_eq!(got.as_deref(), expected_key, "{extra}");
    }

    #[test]
    fn validation_names_the_key() {
        check("", None);
        check("algorithms = [\"HS256\"]", Some("issuers[1].algorithms"));
        check("algorithms = [\"HS256\"]\nhs_secret_env = \"S\"", None);
        check("hs_secret_env = \"S\"", Some("issuers[1].hs_secret_env"));
        check("algorithms = []", Some("issuers[1].algorithms"));
        check("max_token_size = 0", Some("issuers[1].max_token_size"));
        check("jwks_file = \"/x\"", Some("issuers[1].jwks_url"));
        check(
            "name = \"x\"\nissuer = \"i\"\naudiences = []\njwks_url = \"https://x/\"",
            Some("issuers[1].audiences"),
        );
        check(
            "required_claims = [\"\"]",
            Some("issuers[1].required_claims"),
        );
        check(
            "[refresh]\nmin_refresh = \"2d\"",
            Some("issuers[1].refresh.min_refresh"),
        );
        check(
            "[refresh]\nfetch_timeout = \"0s\"",
            Some("issuers[1].refresh.fetch_timeout"),
        );
        check(
            "name = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"ftp://x/y\"",
            Some("issuers[1].jwks_url"),
        );
        check(
            "name = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"not a url\"",
            Some("issuers[1].jwks_url"),
        );
        check(
            "name = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]",
            Some("issuers[1].jwks_url"),
        );
    }

    #[test]
    fn issuers_must_not_share_names_or_iss() {
        let a = IssuerConfig {
            jwks_inline: Some("{}".into()),
            ..IssuerConfig::new("a", "https://a", "aud")
        };
        let b = IssuerConfig {
            jwks_inline: Some("{}".into()),
            ..IssuerConfig::new("b", "https://a", "aud")
        };
        let err = validate_issuers(&[a.clone(), b], "issuers").unwrap_err();
        assert!(err.to_string().starts_with("issuers[1].issuer:"), "{err}");
        let dup = validate_issuers(&[a.clone(), a], "issuers").unwrap_err();
        assert!(dup.to_string().starts_with("issuers[1].name:"), "{dup}");
        assert!(validate_issuers(&[], "issuers").is_err());
    }
}
