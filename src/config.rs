//! The service configuration: one TOML file, typed and validated before any
//! port is bound.
//!
//! Loading has two steps. `parse` turns the text into typed structs, with
//! errors that name the key (`projects[0].app_id`); `resolve` reads the
//! secrets the config points at (files or environment variables, never inline
//! values) and checks the cross-references. Both steps are pure given their
//! inputs: the environment arrives as a lookup function, so tests never call
//! `std::env::set_var`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::gate::Project;
use crate::identity::{IdentityConfigError, IssuerConfig, validate_issuers};
use crate::policy::{Policy, PolicyError, PolicyWarning, RuleConfig};
use crate::routes::{ExtAuthzSection, Routes};
use crate::token::{AppCertificate, AppId};

/// A configuration that cannot be used. The message always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not match the schema.
    #[error("{key}: {message}")]
    Syntax {
        /// The dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The config file could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
}

/// The config file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listen addresses and shutdown.
    #[serde(default)]
    pub server: ServerSection,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The Agora projects tokens are signed for.
    #[serde(default)]
    pub projects: Vec<ProjectSection>,
    /// The identity providers whose JWTs are accepted.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// The ordered rules; first match wins, default deny.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Envoy ext_authz: how mesh HTTP requests become token requests.
    #[serde(default)]
    pub ext_authz: ExtAuthzSection,
    /// A separate TOML file of `[[rules]]` (relative to this file's folder),
    /// instead of inline `rules`: handy when the rules live in their own ConfigMap.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
}

/// A loaded, validated config: secrets read, rules compiled. Nothing is bound yet.
#[derive(Debug)]
pub struct Config {
    /// Listen addresses and shutdown.
    pub server: ServerSection,
    /// Request limits.
    pub limits: LimitsSection,
    /// The projects, with their certificates.
    pub projects: Vec<Project>,
    /// The identity providers (validated, not started).
    pub issuers: Vec<IssuerConfig>,
    /// The compiled rules.
    pub policy: Policy,
    /// Problems that do not stop loading (shadowed rules).
    pub warnings: Vec<PolicyWarning>,
    /// The compiled `[ext_authz]` section, when `enabled = true`.
    pub ext_authz: Option<Routes>,
}

/// Listen addresses and shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The gRPC address (token service, health, reflection, ext_authz).
    pub grpc_listen: SocketAddr,
    /// The admin HTTP address (`/healthz`, `/readyz`, metrics).
    pub admin_listen: SocketAddr,
    /// How long in-flight calls may run after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The largest request message accepted, in bytes.
    pub max_message_size: usize,
    /// The server-side deadline of every call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The most calls served at once per connection.
    pub concurrency: usize,
}

/// Where a secret comes from: exactly one of a file or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// The certificate's name, as rules and `InspectToken` refer to it.
    pub name: String,
    /// A file holding the secret (trailing whitespace is ignored).
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub env: Option<String>,
}

/// One Agora project as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSection {
    /// The name rules use to pick this project.
    pub name: String,
    /// The Agora App ID (32 hex characters; not a secret).
    pub app_id: String,
    /// The named certificates: primary, secondary, ... Inspect verifies against all.
    pub certificates: Vec<SecretSource>,
    /// The name of the certificate that signs new tokens.
    pub signing_certificate: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            admin_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            grace_period: Duration::from_secs(10),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            concurrency: 256,
        }
    }
}

/// Reads and loads the config file at `path`.
pub fn load_file(
    path: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    resolve(parse_toml(&text)?, base, env)
}

/// Parses `text` and resolves it (a `rules_file` is relative to the current directory).
pub fn load(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    resolve(parse_toml(text)?, std::path::Path::new("."), env)
}

/// Validates a parsed config: reads the certificates, checks names and
/// references, validates the issuers and compiles the rules.
pub fn resolve(
    mut file: ConfigFile,
    base: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    if let Some(rules_file) = file.rules_file.take() {
        file.rules = read_rules_file(&base.join(rules_file), !file.rules.is_empty())?;
    }
    check_limits(&file.limits)?;
    if file.projects.is_empty() {
        return Err(invalid("projects", "at least one project is required"));
    }
    check_unique(file.projects.iter().map(|p| p.name.as_str()), |i| {
        format!("projects[{i}].name")
    })?;
    let projects = file
        .projects
        .iter()
        .enumerate()
        .map(|(i, p)| resolve_project(p, &format!("projects[{i}]"), env))
        .collect::<Result<Vec<_>, _>>()?;
    if file.issuers.is_empty() {
        return Err(invalid("issuers", "at least one issuer is required"));
    }
    validate_issuers(&file.issuers, "issuers").map_err(identity_error)?;
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let (policy, warnings) = Policy::compile(&file.rules, &names).map_err(policy_error)?;
    let mesh = Routes::compile(&file.ext_authz, &names).map_err(|e| ConfigError::Invalid {
        key: e.key,
        message: e.message,
    })?;
    Ok(Config {
        ext_authz: file.ext_authz.enabled.then_some(mesh),
        server: file.server,
        limits: file.limits,
        projects,
        issuers: file.issuers,
        policy,
        warnings,
    })
}

/// The `[[rules]]` of a separate rules file.
fn read_rules_file(
    path: &std::path::Path,
    inline_too: bool,
) -> Result<Vec<RuleConfig>, ConfigError> {
    if inline_too {
        return Err(invalid(
            "rules_file",
            "set either inline `rules` or `rules_file`, not both",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        invalid(
            "rules_file",
            &format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let rules: crate::policy::PolicyConfig = parse_toml(&text).map_err(|e| match e {
        ConfigError::Syntax { key, message } => ConfigError::Syntax {
            key: format!("rules_file: {key}"),
            message,
        },
        other => other,
    })?;
    Ok(rules.rules)
}

fn resolve_project(
    section: &ProjectSection,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Project, ConfigError> {
    let app_id = AppId::parse(&section.app_id)
        .map_err(|e| invalid(&format!("{key}.app_id"), &e.to_string()))?;
    if section.certificates.is_empty() {
        return Err(invalid(
            &format!("{key}.certificates"),
            "at least one certificate is required",
        ));
    }
    check_unique(section.certificates.iter().map(|c| c.name.as_str()), |i| {
        format!("{key}.certificates[{i}].name")
    })?;
    let mut certificates = Vec::with_capacity(section.certificates.len());
    for (i, source) in section.certificates.iter().enumerate() {
        let cert_key = format!("{key}.certificates[{i}]");
        let secret = read_secret(source, &cert_key, env)?;
        // The parse error names the certificate, never its value.
        let certificate = AppCertificate::parse(&secret)
            .map_err(|_| invalid(&cert_key, "is not 32 hexadecimal characters"))?;
        certificates.push((source.name.clone(), certificate));
    }
    let signer = certificates
        .iter()
        .position(|(name, _)| *name == section.signing_certificate)
        .ok_or_else(|| {
            invalid(
                &format!("{key}.signing_certificate"),
                &format!(
                    "{:?} is not one of the project's certificates",
                    section.signing_certificate
                ),
            )
        })?;
    Ok(Project {
        name: section.name.clone(),
        app_id,
        certificates,
        signer,
    })
}

fn check_limits(limits: &LimitsSection) -> Result<(), ConfigError> {
    if limits.max_message_size < 1024 {
        return Err(invalid(
            "limits.max_message_size",
            "must be at least 1024 bytes",
        ));
    }
    if limits.request_timeout.is_zero() {
        return Err(invalid("limits.request_timeout", "must be positive"));
    }
    if limits.concurrency == 0 {
        return Err(invalid("limits.concurrency", "must be at least 1"));
    }
    Ok(())
}

/// An identity config error as a config error for the same key.
pub fn identity_error(error: IdentityConfigError) -> ConfigError {
    match error {
        IdentityConfigError::Invalid { key, problem } => invalid(&key, &problem),
        IdentityConfigError::Secret { key, reason } => {
            invalid(&key, &format!("cannot read the secret: {reason}"))
        }
        other => invalid("issuers", &other.to_string()),
    }
}

fn policy_error(error: PolicyError) -> ConfigError {
    match error {
        PolicyError::InvalidRule {
            index,
            name,
            key,
            reason,
        } => invalid(
            &format!("rules[{index}].{key}"),
            &format!("(rule {name:?}) {reason}"),
        ),
        PolicyError::Syntax(message) => invalid("rules", &message),
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

/// Deserializes `text` as `T`, reporting the dotted path of the first bad key.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        key: "(file)".into(),
        message: e.message().to_owned(),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Syntax {
            key: if key == "." { "(root)".into() } else { key },
            message: inner.message().to_owned(),
        }
    })
}

/// Reads a secret from its source, with `env` looking up environment variables.
pub fn read_secret(
    source: &SecretSource,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    };
    let raw = match (&source.file, &source.env) {
        (Some(path), None) => std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?,
        (None, Some(var)) => {
            env(var).ok_or_else(|| invalid(format!("environment variable {var} is not set")))?
        }
        _ => {
            return Err(invalid(
                "set exactly one of `file` or `env` (secrets are never written inline)".into(),
            ));
        }
    };
    // Files written by editors and `kubectl create secret --from-file` often
    // end with a newline that is not part of the secret.
    Ok(raw.trim_end().to_owned())
}

/// Checks that every name in `names` is unique, naming the first duplicate's key.
pub fn check_unique<'a>(
    names: impl IntoIterator<Item = &'a str>,
    key: impl Fn(usize) -> String,
) -> Result<(), ConfigError> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.into_iter().enumerate() {
        if name.is_empty() {
            return Err(ConfigError::Invalid {
                key: key(i),
                message: "must not be empty".into(),
            });
        }
        if !seen.insert(name) {
            return Err(ConfigError::Invalid {
                key: key(i),
                message: format!("duplicate name {name:?}"),
            });
        }
    }
    Ok(())
}

/// `humantime` durations ("90s", "1h") for serde, in one place.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        server: ServerSection,
        #[serde(default)]
        limits: LimitsSection,
        #[serde(default)]
        projects: Vec<ProjectSection>,
    }

    #[test]
    fn defaults_are_the_documented_ports() {
        let sample: Sample = parse_toml("").unwrap();
        assert_eq!(sample.server.grpc_listen.port(), 50051);
        assert_eq!(sample.server.admin_listen.port(), 9090);
        assert_eq!(sample.limits.request_timeout, Duration::from_secs(5));
        assert!(sample.projects.is_empty());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\ngrpc_listen = \"nope\"", "server.grpc_listen"),
            (
                "[limits]\nrequest_timeout = \"5 parsecs\"",
                "limits.request_timeout",
            ),
            ("[server]\nbogus = 1", "server.bogus"),
            (
                "[[projects]]\nname = \"a\"\napp_id = \"x\"\nsigning_certificate = \"p\"\n[[projects.certificates]]\nname = \"p\"\nvalue = \"inline\"",
                "projects[0].certificates[0].value",
            ),
        ];
        for (text, key) in cases {
            match parse_toml::<Sample>(text) {
                Err(ConfigError::Syntax { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn secrets_come_from_exactly_one_source() {
        let env = |name: &str| (name == "CERT").then(|| "abc\n".to_owned());
        let from_env = SecretSource {
            name: "p".into(),
            file: None,
            env: Some("CERT".into()),
        };
        assert_eq!(read_secret(&from_env, "k", &env).unwrap(), "abc");
        let missing = SecretSource {
            name: "p".into(),
            file: None,
            env: Some("NOPE".into()),
        };
        assert!(
            matches!(read_secret(&missing, "k", &env), Err(ConfigError::Invalid { key, .. }) if key == "k")
        );
        let neither = SecretSource {
            name: "p".into(),
            file: None,
            env: None,
        };
        assert!(read_secret(&neither, "k", &env).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert");
        std::fs::write(&path, "from-file\n").unwrap();
        let from_file = SecretSource {
            name: "p".into(),
            file: Some(path),
            env: None,
        };
        assert_eq!(read_secret(&from_file, "k", &env).unwrap(), "from-file");
    }

    #[test]
    fn names_must_be_unique_and_non_empty() {
        assert!(check_unique(["a", "b"], |i| format!("x[{i}]")).is_ok());
        let dup = check_unique(["a", "a"], |i| format!("x[{i}]"));
        assert!(matches!(dup, Err(ConfigError::Invalid { key, .. }) if key == "x[1]"));
        let empty = check_unique([""], |i| format!("x[{i}]"));
        assert!(matches!(empty, Err(ConfigError::Invalid { key, .. }) if key == "x[0]"));
    }
}
