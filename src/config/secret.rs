//! Where a secret comes from, and reading it: the one rule for App
//! Certificates and HS secrets alike.
//!
//! A secret is never written inline: the config names a file or an
//! environment variable, exactly one of them. Both are read the same way,
//! through the caller's environment lookup (so tests never call
//! `std::env::set_var`), and trimmed the same way: trailing ASCII whitespace
//! is dropped, because files written by editors, `echo` and
//! `kubectl create secret --from-file` end with a newline that is not part of
//! the secret. Errors name the config key and the source, never the value.

use std::path::PathBuf;

use super::{ConfigError, invalid};

/// Exactly one of a file or an environment variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// A file holding the secret.
    File(PathBuf),
    /// An environment variable holding the secret.
    Env(String),
}

/// A secret's bytes, trimmed; its `Debug` never shows them.
pub(crate) struct Secret(Vec<u8>);

impl SecretSource {
    /// The source the two optional keys select: `None` when neither is set,
    /// `both` (an error naming the keys) when both are.
    pub(crate) fn at_most_one(
        file: Option<PathBuf>,
        env: Option<String>,
        both: impl FnOnce() -> ConfigError,
    ) -> Result<Option<Self>, ConfigError> {
        match (file, env) {
            (Some(_), Some(_)) => Err(both()),
            (Some(path), None) => Ok(Some(Self::File(path))),
            (None, Some(var)) => Ok(Some(Self::Env(var))),
            (None, None) => Ok(None),
        }
    }

    /// Reads the secret; an error names `key` and the source, never the value.
    pub(crate) fn read(
        &self,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Secret, ConfigError> {
        let raw = match self {
            Self::File(path) => super::files::read_bounded(path, super::files::MAX_SECRET_BYTES)
                .map_err(|e| invalid(key, &e))?,
            Self::Env(var) => env(var)
                .ok_or_else(|| invalid(key, &format!("environment variable {var} is not set")))?
                .into_bytes(),
        };
        let trimmed = raw.trim_ascii_end();
        if trimmed.is_empty() {
            return Err(invalid(key, &format!("{self} is empty")));
        }
        Ok(Secret(trimmed.to_vec()))
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

impl Secret {
    /// The secret's bytes, for the one parser that needs them.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "CERT" => Some("  abc \r\n\t".to_owned()),
            "BLANK" => Some(" \n".to_owned()),
            _ => None,
        }
    }

    fn key_of(result: Result<Secret, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_and_variables_are_trimmed_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert");
        std::fs::write(&path, "  abc \r\n\t").unwrap();
        let from_file = SecretSource::File(path).read("k", &env).unwrap();
        let from_env = SecretSource::Env("CERT".into()).read("k", &env).unwrap();
        // Trailing whitespace goes, leading whitespace stays: one rule for both.
        assert_eq!(from_file.expose(), b"  abc");
        assert_eq!(from_env.expose(), from_file.expose());
    }

    #[test]
    fn read_errors_name_the_key_and_the_source() {
        let (key, message) =
            key_of(SecretSource::Env("NOPE".into()).read("issuers[0].hs_secret_env", &env));
        assert_eq!(key, "issuers[0].hs_secret_env");
        assert!(message.contains("NOPE is not set"), "{message}");

        let (key, message) =
            key_of(SecretSource::File("/nonexistent/secret".into()).read("k", &env));
        assert_eq!(key, "k");
        assert!(
            message.contains("cannot read /nonexistent/secret"),
            "{message}"
        );

        let (_, message) = key_of(SecretSource::Env("BLANK".into()).read("k", &env));
        assert!(
            message.contains("environment variable BLANK is empty"),
            "{message}"
        );
    }

    #[test]
    fn at_most_one_source() {
        let both = || invalid("k", "both");
        assert_eq!(SecretSource::at_most_one(None, None, both), Ok(None));
        assert_eq!(
            SecretSource::at_most_one(None, Some("V".into()), both),
            Ok(Some(SecretSource::Env("V".into())))
        );
        assert_eq!(
            SecretSource::at_most_one(Some("/f".into()), None, both),
            Ok(Some(SecretSource::File("/f".into())))
        );
        assert_eq!(
            SecretSource::at_most_one(Some("/f".into()), Some("V".into()), both),
            Err(invalid("k", "both"))
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = SecretSource::Env("CERT".into()).read("k", &env).unwrap();
        let debug = format!("{secret:?}");
        assert!(!debug.contains("abc"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }
}
