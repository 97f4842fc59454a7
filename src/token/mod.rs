//! Agora token formats: AccessToken2 ("007") and the legacy AccessToken ("006").
//!
//! Pure: no clock, no RNG, no async, no I/O. `issue_ts` and `salt` are arguments.
//! The byte layout follows `spec/agora-token-format.md`; the section numbers in
//! comments refer to it.
//!
//! * [`codec`]: packing primitives (little-endian integers, u16-prefixed strings,
//!   privilege maps), strict base64 and the per-thread zlib state, plus [`ParseError`].
//! * [`services`]: every AccessToken2 service type (1..=10 and a generic form) and
//!   the RTM2 permission set.
//! * [`v007`]: the raw AccessToken2: build, parse, constant-time verify.
//! * [`builders`]: every official builder API of spec §2.6, typed and raw.
//! * [`v006`]: the legacy AccessToken.
//! * [`inspect`]: decode, verify against candidate certificates, per-privilege
//!   expiries and the 109/110 diagnosis, shared by the RPC and the CLI.

pub mod builders;
pub mod codec;
pub mod inspect;
pub mod services;
pub mod v006;
pub mod v007;

use std::fmt;

use crate::domain::Fingerprint;

pub use codec::ParseError;
pub use services::{PermissionType, ResourceType, Rtm2Permissions, Service, ServiceKind};
pub use v007::{AccessToken2, ParsedToken};

/// An Agora App ID: exactly 32 hexadecimal characters, letter case preserved
/// (the app id is signed as ASCII text, never hex-decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AppId(String);

/// An Agora App Certificate: exactly 32 hexadecimal characters, case preserved.
///
/// It is the signing secret, so it has a redacting `Debug`, no `Display`, and
/// shows itself only as a [`Fingerprint`].
#[derive(Clone, PartialEq, Eq)]
pub struct AppCertificate(String);

/// Why a token could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The app id is not exactly 32 hexadecimal characters.
    #[error("app id must be exactly 32 hexadecimal characters")]
    InvalidAppId,
    /// The app certificate is not exactly 32 hexadecimal characters.
    #[error("app certificate must be exactly 32 hexadecimal characters")]
    InvalidAppCertificate,
    /// The token has no service; Agora refuses such a token.
    #[error("a token needs at least one service")]
    NoServices,
    /// A string does not fit its u16 length prefix.
    #[error("{field} is {len} bytes, the wire format allows at most 65535")]
    StringTooLong {
        /// Which field was too long.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A list does not fit its u16 count.
    #[error("{what} has {count} entries, the wire format allows at most 65535")]
    TooManyEntries {
        /// Which list was too long.
        what: &'static str,
        /// How many entries it had.
        count: usize,
    },
    /// A generic service used the number of a known type, whose fields it cannot carry.
    #[error("service type {0} is a known type; use its own form, not the generic one")]
    KnownTypeAsGeneric(u16),
    /// A 006 timestamp computation went past u32.
    #[error("timestamp {0} + 86400 does not fit in 32 bits")]
    TimestampOverflow(u32),
    /// zlib refused to compress (it does not, short of running out of memory).
    #[error("zlib compression failed")]
    Compress,
}

impl AppId {
    /// Parses an app id: exactly 32 hex characters, any case.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if is_hex32(s.as_bytes()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TokenError::InvalidAppId)
        }
    }

    /// The app id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AppCertificate {
    /// Parses a certificate: exactly 32 hex characters, any case.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if is_hex32(s.as_bytes()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TokenError::InvalidAppCertificate)
        }
    }

    /// The log-safe fingerprint of the certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.0.as_bytes())
    }

    /// The secret bytes, for signing only; crate-private so it cannot leak into
    /// a log line by accident.
    pub(crate) fn secret(&self) -> &[u8; 32] {
        // `parse` guarantees 32 bytes; the fallback is unreachable but keeps this total.
        self.0.as_bytes().first_chunk::<32>().unwrap_or(&[0; 32])
    }
}

impl fmt::Debug for AppCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppCertificate({})", self.fingerprint())
    }
}

/// Whether `bytes` are exactly 32 ASCII hex digits (Agora's "UUID" check, spec §3).
pub fn is_hex32(bytes: &[u8]) -> bool {
    bytes.len() == 32 && bytes.iter().all(u8::is_ascii_hexdigit)
}

/// The absolute unix time a 007 token expires: `issue_ts + expire` (spec §2.6).
pub fn token_expires_at(issue_ts: u32, expire: u32) -> u64 {
    u64::from(issue_ts) + u64::from(expire)
}

/// The absolute unix time a 007 privilege expires, or `None` for the value 0,
/// which means "no privilege-specific limit" (the token expiry still applies).
pub fn privilege_expires_at(issue_ts: u32, value: u32) -> Option<u64> {
    (value != 0).then(|| u64::from(issue_ts) + u64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_32_hex_with_case_kept() {
        let cases: &[(&str, bool)] = &[
            ("970CA35de60c44645bbae8a215061b33", true),
            ("970CA35de60c44645bbae8a215061b3", false),
            ("970CA35de60c44645bbae8a215061b330", false),
            ("Z70CA35de60c44645bbae8a215061b33", false),
            ("0011223344556677 899aabbccddeef ", false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(AppId::parse(input).is_ok(), *ok, "{input:?}");
            assert_eq!(AppCertificate::parse(input).is_ok(), *ok, "{input:?}");
        }
        let id = AppId::parse("970CA35de60c44645bbae8a215061b33").unwrap();
        assert_eq!(id.as_str(), "970CA35de60c44645bbae8a215061b33");
    }

    #[test]
    fn certificate_debug_is_redacted() {
        let secret = "5CFd2fd1755d40ecb72977518be15d3b";
        let cert = AppCertificate::parse(secret).unwrap();
        let shown = format!("{cert:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains(cert.fingerprint().as_str()), "{shown}");
        assert_eq!(cert.secret(), secret.as_bytes());
    }

    #[test]
    fn expiries_are_relative_to_issue_ts() {
        assert_eq!(token_expires_at(1_111_111, 600), 1_111_711);
        assert_eq!(
            token_expires_at(u32::MAX, u32::MAX),
            2 * u64::from(u32::MAX)
        );
        assert_eq!(privilege_expires_at(1_111_111, 0), None);
        assert_eq!(privilege_expires_at(1_111_111, 60), Some(1_111_171));
    }
}
