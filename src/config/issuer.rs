//! `[[issuers]]` tables into validated `identity::IssuerSettings`.
//!
//! The raw keys are settled here: exactly one key source, at most one HS
//! secret source, the secret read (through the environment lookup, like
//! every other secret) and checked for length. The semantic checks (an HS
//! algorithm needs a secret, the refresh schedule is coherent, ...) belong to
//! `IssuerBuilder::build`; its errors name a field, which is prefixed here
//! with the table's key (`issuers[1].algorithms`).

use jsonwebtoken::AlgorithmFamily;

use super::file::{IssuerSection, RefreshSection};
use super::secret::SecretSource;
use super::{ConfigError, invalid};
use crate::identity::{
    DEFAULT_ALGORITHMS, HsSecret, IdentityConfigError, IssuerBuilder, IssuerSettings, KeySource,
    RefreshConfig,
};

/// Resolves the issuer table at `key` (`issuers[0]`).
pub(super) fn resolve_issuer(
    section: IssuerSection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<IssuerSettings, ConfigError> {
    let field = |name: &str| format!("{key}.{name}");
    let in_table = |e: IdentityConfigError| prefixed(key, e);
    let hs_source = SecretSource::at_most_one(
        section.hs_secret_file.clone(),
        section.hs_secret_env.clone(),
        || {
            invalid(
                &field("hs_secret_env"),
                "set hs_secret_file or hs_secret_env, not both",
            )
        },
    )?;
    let key_source = key_source(&section, hs_source.is_some()).map_err(in_table)?;
    let unknown_kid_wait = section.refresh.unknown_kid_wait.as_ref().map(|d| d.0);
    let has_public_keys = key_source != KeySource::SecretOnly;
    let algorithms = section
        .algorithms
        .unwrap_or_else(|| DEFAULT_ALGORITHMS.to_vec());
    let mut builder =
        IssuerBuilder::with_lists(&section.name, section.issuer, section.audiences, key_source);
    if let Some(source) = hs_source {
        let secret_key = field(match source {
            SecretSource::File(_) => "hs_secret_file",
            SecretSource::Env(_) => "hs_secret_env",
        });
        // Symmetric and asymmetric keys never share an issuer (the builder
        // refuses it too); said here so the error names the secret's own key,
        // before anything is read for it.
        if has_public_keys {
            return Err(invalid(
                &secret_key,
                "an HS secret cannot be combined with jwks_url, discovery_url, discovery, jwks_file or jwks_inline: give the HS tokens an issuer of their own",
            ));
        }
        // A secret no algorithm uses is a mistake worth naming by its own key,
        // before anything is read for it.
        if !algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            return Err(invalid(
                &secret_key,
                "is set but algorithms allows no HS algorithm",
            ));
        }
        let secret = source.read(&secret_key, env)?;
        let secret = HsSecret::new(secret.expose()).map_err(|e| match e {
            IdentityConfigError::Secret(reason) => {
                invalid(&secret_key, &format!("{source}: {reason}"))
            }
            other => invalid(&secret_key, &other.to_string()),
        })?;
        builder = builder.hs_secret(secret);
    }
    let schedule = refresh(section.refresh);
    // The floors hold for config files only (see `RefreshConfig::check_floors`).
    schedule.check_floors().map_err(in_table)?;
    builder = builder
        .algorithms(algorithms)
        .required_claims(section.required_claims)
        .refresh(schedule);
    if let Some(leeway) = section.leeway {
        builder = builder.leeway(leeway.0);
    }
    if let Some(require) = section.require_kid {
        builder = builder.require_kid(require);
    }
    if let Some(size) = section.max_token_size {
        builder = builder.max_token_size(size);
    }
    if let Some(lifetime) = section.max_token_lifetime {
        builder = builder.max_token_lifetime(lifetime.0);
    }
    if let Some(required) = section.required_for_readiness {
        builder = builder.required_for_readiness(required);
    }
    if let Some(cached) = section.verified_cache {
        builder = builder.verified_cache(cached);
    }
    if let Some(wait) = unknown_kid_wait {
        builder = builder.unknown_kid_wait(wait);
    }
    builder.build().map_err(in_table)
}

/// An identity error whose key is relative to the issuer table at `key`, as a config error.
pub(super) fn prefixed(key: &str, error: IdentityConfigError) -> ConfigError {
    match error {
        IdentityConfigError::Invalid {
            key: field,
            problem,
        } => invalid(&format!("{key}.{field}"), &problem),
        other => invalid(key, &other.to_string()),
    }
}

/// The one key source the table selects; an error's key is the field.
fn key_source(
    section: &IssuerSection,
    has_hs_secret: bool,
) -> Result<KeySource, IdentityConfigError> {
    let mut sources = Vec::new();
    if let Some(url) = &section.jwks_url {
        sources.push(KeySource::jwks_url(url)?);
    }
    if let Some(url) = &section.discovery_url {
        sources.push(KeySource::discovery_url(url)?);
    }
    if section.discovery {
        let issuer = section
            .issuer
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        sources.push(KeySource::discovery_of(issuer)?);
    }
    if let Some(path) = &section.jwks_file {
        sources.push(KeySource::File(path.clone()));
    }
    if let Some(json) = &section.jwks_inline {
        sources.push(KeySource::Inline(json.clone()));
    }
    match sources.len() {
        0 if has_hs_secret => Ok(KeySource::SecretOnly),
        0 => Err(IdentityConfigError::Invalid {
            key: "jwks_url".into(),
            problem: "one key source is required: jwks_url, discovery_url, discovery = true, jwks_file or jwks_inline".into(),
        }),
        1 => Ok(sources.remove(0)),
        _ => Err(IdentityConfigError::Invalid {
            key: "jwks_url".into(),
            problem: "only one of jwks_url, discovery_url, discovery = true, jwks_file, jwks_inline may be set".into(),
        }),
    }
}

/// The schedule: the table's keys over the defaults.
fn refresh(section: RefreshSection) -> RefreshConfig {
    let d = RefreshConfig::default();
    let or =
        |value: Option<super::duration::HumanDuration>, default| value.map_or(default, |v| v.0);
    RefreshConfig {
        min_refresh: or(section.min_refresh, d.min_refresh),
        max_refresh: or(section.max_refresh, d.max_refresh),
        default_ttl: or(section.default_ttl, d.default_ttl),
        fetch_timeout: or(section.fetch_timeout, d.fetch_timeout),
        max_stale: or(section.max_stale, d.max_stale),
        unknown_kid_cooldown: or(section.unknown_kid_cooldown, d.unknown_kid_cooldown),
        backoff_initial: or(section.backoff_initial, d.backoff_initial),
        backoff_max: or(section.backoff_max, d.backoff_max),
        max_body_size: section.max_body_size.unwrap_or(d.max_body_size),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::Algorithm;
    use reqwest::Url;

    use super::*;
    use crate::config::parse_toml;

    /// A 32-byte HS secret, in the environment as `S`.
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(name: &str) -> Option<String> {
        match name {
            "S" => Some(format!("{SECRET}\n")),
            // The armour is what gives a public key away, whatever its body.
            "PEM" => Some(format!(
                "-----BEGIN PUBLIC KEY-----\n{SECRET}\n-----END PUBLIC KEY-----\n"
            )),
            "JWK" => Some(format!(r#"{{"kty":"oct","k":"{SECRET}"}}"#)),
            _ => None,
        }
    }

    fn resolve(text: &str) -> Result<IssuerSettings, ConfigError> {
        let section: IssuerSection = parse_toml(text)?;
        resolve_issuer(section, "issuers[1]", &env)
    }

    const BASE: &str = r#"
        name = "corp"
        issuer = "https://idp.example.com"
        audiences = ["tokengate"]
        jwks_url = "https://idp.example.com/jwks"
    "#;

    /// `BASE` without public keys, for issuers that sign with an HS secret.
    const HS_BASE: &str = r#"
        name = "corp"
        issuer = "https://idp.example.com"
        audiences = ["tokengate"]
    "#;

    #[test]
    fn defaults_follow_the_issue() {
        let c = resolve(BASE).unwrap();
        assert_eq!(c.issuer(), ["https://idp.example.com"]);
        assert_eq!(c.algorithms(), DEFAULT_ALGORITHMS);
        assert_eq!(c.leeway(), Duration::from_secs(60));
        assert!(c.require_kid());
        assert_eq!(c.max_token_size(), 8192);
        assert_eq!(c.refresh(), &RefreshConfig::default());
        assert_eq!(c.refresh().min_refresh, Duration::from_secs(300));
        assert_eq!(c.refresh().max_body_size, 1 << 20);
        assert!(c.hs_secret().is_none());
    }

    #[test]
    fn durations_and_lists_parse() {
        let c = resolve(
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
        assert_eq!(c.issuer().len(), 2);
        assert_eq!(c.leeway(), Duration::from_secs(90));
        assert_eq!(c.refresh().max_stale, Duration::from_secs(3600));
        assert_eq!(
            c.key_source(),
            &KeySource::Discovery(
                Url::parse("https://accounts.google.com/.well-known/openid-configuration").unwrap()
            )
        );
    }

    #[test]
    fn unknown_keys_and_algorithms_are_refused() {
        assert!(resolve(&format!("{BASE}\nrequire_kidd = true")).is_err());
        assert!(resolve(&format!("{BASE}\nalgorithms = [\"none\"]")).is_err());
        assert!(resolve(&format!("{BASE}\n[refresh]\nmin_refreshh = \"1s\"")).is_err());
    }

    fn check(extra: &str, expected_key: Option<&str>) {
        let text = if extra.contains("jwks_url") || extra.contains("name =") {
            extra.to_owned()
        } else {
            format!("{BASE}\n{extra}")
        };
        let got = resolve(&text).err().map(|e| match e {
            ConfigError::Invalid { key, .. } | ConfigError::Syntax { key, .. } => key,
            other => other.to_string(),
        });
        assert_eq!(got.as_deref(), expected_key, "{extra}");
    }

    #[test]
    fn validation_names_the_key() {
        check("", None);
        check("algorithms = [\"HS256\"]", Some("issuers[1].algorithms"));
        check(
            "algorithms = [\"HS256\"]\nhs_secret_env = \"S\"",
            Some("issuers[1].hs_secret_env"),
        );
        check(
            &format!("{HS_BASE}\nalgorithms = [\"HS256\"]\nhs_secret_env = \"S\""),
            None,
        );
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
            "[refresh]\nmin_refresh = \"4s\"\ndefault_ttl = \"4s\"",
            Some("issuers[1].refresh.min_refresh"),
        );
        check(
            "[refresh]\nmin_refresh = \"5s\"\ndefault_ttl = \"5s\"",
            None,
        );
        check(
            "[refresh]\nunknown_kid_cooldown = \"0s\"",
            Some("issuers[1].refresh.unknown_kid_cooldown"),
        );
        check("[refresh]\nunknown_kid_cooldown = \"1s\"", None);
        check(
            "[refresh]\nbackoff_initial = \"50ms\"",
            Some("issuers[1].refresh.backoff_initial"),
        );
        check("[refresh]\nbackoff_initial = \"100ms\"", None);
        check(
            "[refresh]\nfetch_timeout = \"5 parsecs\"",
            Some("refresh.fetch_timeout"),
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
    fn lifetime_readiness_and_kid_wait_keys_parse() {
        let c = resolve(BASE).unwrap();
        assert_eq!(c.max_token_lifetime(), None);
        assert!(c.required_for_readiness());
        assert_eq!(c.unknown_kid_wait(), Duration::from_secs(1));
        let c = resolve(&format!(
            "{BASE}\nmax_token_lifetime = \"12h\"\nrequired_for_readiness = false\n[refresh]\nunknown_kid_wait = \"250ms\""
        ))
        .unwrap();
        assert_eq!(c.max_token_lifetime(), Some(Duration::from_secs(12 * 3600)));
        assert!(!c.required_for_readiness());
        assert_eq!(c.unknown_kid_wait(), Duration::from_millis(250));
        check(
            "max_token_lifetime = \"0s\"",
            Some("issuers[1].max_token_lifetime"),
        );
        check(
            "[refresh]\nunknown_kid_wait = \"6s\"",
            Some("issuers[1].refresh.unknown_kid_wait"),
        );
    }

    #[test]
    fn public_keys_are_refused_as_hs_secrets() {
        let hs = format!("{HS_BASE}\nalgorithms = [\"HS256\"]");
        for var in ["PEM", "JWK"] {
            let err = resolve(&format!("{hs}\nhs_secret_env = \"{var}\""))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("issuers[1].hs_secret_env:"), "{err}");
            assert!(err.contains("not a shared secret"), "{err}");
            assert!(!err.contains(SECRET), "the secret is never echoed: {err}");
        }
    }

    #[test]
    fn hs_secrets_are_read_here_and_checked() {
        let hs = format!("{HS_BASE}\nalgorithms = [\"HS256\"]");
        let c = resolve(&format!("{hs}\nhs_secret_env = \"S\"")).unwrap();
        assert!(c.hs_secret().is_some());
        assert_eq!(c.algorithms(), [Algorithm::HS256]);
        // An unset variable, an unreadable file, both sources, a short secret:
        // each refused here, before anything starts, naming the key.
        check(
            &format!("{hs}\nhs_secret_env = \"UNSET\""),
            Some("issuers[1].hs_secret_env"),
        );
        check(
            &format!("{hs}\nhs_secret_file = \"/nonexistent/hs\""),
            Some("issuers[1].hs_secret_file"),
        );
        check(
            &format!("{hs}\nhs_secret_file = \"/x\"\nhs_secret_env = \"S\""),
            Some("issuers[1].hs_secret_env"),
        );
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let err = resolve(&format!(
            "{hs}\nhs_secret_file = {:?}",
            short.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("issuers[1].hs_secret_file:"), "{err}");
        assert!(err.contains("shorter than 32 bytes"), "{err}");
        assert!(
            !err.contains("short\""),
            "the secret is never echoed: {err}"
        );
        // Only secret-backed issuers may go without public keys, and a
        // secret-backed issuer has no public keys: the two never mix.
        let no_keys = "name = \"h\"\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\nhs_secret_env = \"S\"";
        check(
            &format!("{no_keys}\njwks_url = \"https://i/jwks\""),
            Some("issuers[1].hs_secret_env"),
        );
        check(no_keys, None);
        check(
            &no_keys.replace("[\"HS256\"]", "[\"HS256\", \"RS256\"]"),
            Some("issuers[1].algorithms"),
        );
    }
}
