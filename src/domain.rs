//! Validated domain types shared by every layer.
//!
//! "Parse, don't validate": a [`ChannelName`], [`Account`], [`RtmUserId`] or
//! [`Uid`] can only exist if it passed Agora's product limits, so code that
//! holds one never re-checks it. The limits come from the official builder
//! comments quoted in `spec/agora-token-format.md` §6.
//!
//! The values both the policy and the token layer speak also live here, so
//! neither has to translate: the [`ChannelScope`] a grant names and a token
//! carries, and the RTM 2 permission enums ([`Rtm2ResourceType`],
//! [`Rtm2PermissionType`]) that rules name and tokens pack as codes.
//!
//! This module knows nothing of protobuf, tokio or serde: the wire layers
//! convert into these types, never the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use sha2::{Digest, Sha256};

/// The longest channel name Agora accepts is 63 bytes ("must be less than 64 bytes").
pub const MAX_CHANNEL_BYTES: usize = 63;
/// The longest RTC user account Agora accepts.
pub const MAX_ACCOUNT_BYTES: usize = 255;
/// The longest RTM / RTM2 / Chat user id Agora accepts.
pub const MAX_RTM_USER_ID_BYTES: usize = 64;
/// Agora caps every privilege and token lifetime at 24 hours.
pub const MAX_LIFETIME_SECS: u32 = 86_400;

/// A domain value that failed Agora's product limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// The value is empty where Agora needs at least one character.
    #[error("{what} must not be empty")]
    Empty {
        /// Which kind of value was refused.
        what: &'static str,
    },
    /// The value is longer than Agora allows.
    #[error("{what} is {len} bytes, the maximum is {max}")]
    TooLong {
        /// Which kind of value was refused.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The maximum in bytes.
        max: usize,
    },
    /// The value holds a character outside Agora's 89-character set.
    #[error("{what} contains {found:?} at byte {at}, outside Agora's allowed characters")]
    BadCharacter {
        /// Which kind of value was refused.
        what: &'static str,
        /// The first offending character.
        found: char,
        /// Its byte offset.
        at: usize,
    },
    /// A uid of 0 was given where a specific user is required.
    #[error("uid 0 is the wildcard (any user); ask for it explicitly")]
    ZeroUid,
    /// A lifetime outside 1..=86400 seconds.
    #[error("lifetime {secs}s is outside 1..=86400 seconds")]
    Lifetime {
        /// The refused number of seconds.
        secs: u64,
    },
    /// A role name that is neither `publisher` nor `subscriber`.
    #[error("role {0:?} is not publisher or subscriber")]
    Role(String),
}

/// An RTC channel name: 1 to 63 bytes from Agora's 89-character set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelName(String);

/// An RTC user account (a string identity): 1 to 255 bytes from the channel character set.
///
/// Empty is refused because the empty wire value means "any uid", which only
/// [`RtcIdentity::AnyUid`] may express.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Account(String);

/// An RTM, RTM2 or Chat user id: 1 to 64 bytes of UTF-8.
///
/// Agora documents only the length limit for these ids, not a character set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RtmUserId(String);

/// A specific numeric RTC uid, 1..=4294967295. The wildcard 0 is [`RtcIdentity::AnyUid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uid(NonZeroU32);

/// Whom an RTC token admits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RtcIdentity {
    /// Exactly this numeric uid.
    Uid(Uid),
    /// Exactly this string account.
    Account(Account),
    /// Any user (uid 0, encoded as the empty string). Only granted when asked for explicitly.
    AnyUid,
}

/// The channel a token names: one channel, or every channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChannelScope {
    /// Exactly this channel.
    Named(ChannelName),
    /// Any channel, written `*` on the wire, which no Agora channel name can
    /// contain. Asked for explicitly and granted only by a rule with
    /// `allow_wildcard_channel = true`.
    Wildcard,
}

/// An RTM 2 resource type, with its wire code (spec §2.5).
///
/// The one definition for rules and tokens: the policy parses it from a rule,
/// the token's permission block packs its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rtm2ResourceType {
    /// `message_channels` (code 0).
    MessageChannels,
    /// `stream_channels` (code 1).
    StreamChannels,
    /// `group_channels` (code 2).
    GroupChannels,
    /// `server_groups` (code 3).
    ServerGroups,
    /// `users` (code 4).
    Users,
}

/// An RTM 2 permission type (the access granted on a resource), with its wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rtm2PermissionType {
    /// `read` (code 0).
    Read,
    /// `write` (code 1).
    Write,
}

/// The RTC role. Agora's builders treat anything that is not publisher as subscriber;
/// we never guess, so there are exactly two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Receives streams only: the join privilege.
    Subscriber,
    /// Joins and publishes audio, video and data streams.
    Publisher,
}

/// A token or privilege lifetime in seconds, 1..=86400 (Agora's 24-hour cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lifetime(u32);

/// One claim value of a verified JWT, kept as plain data for the rules.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimValue {
    /// JSON `null`.
    Null,
    /// JSON `true` or `false`.
    Bool(bool),
    /// A JSON integer that fits in i64.
    Int(i64),
    /// A JSON integer above i64::MAX that fits in u64.
    UInt(u64),
    /// Any other JSON number.
    Float(f64),
    /// A JSON string.
    String(String),
    /// A JSON array.
    Array(Vec<ClaimValue>),
    /// A JSON object.
    Object(BTreeMap<String, ClaimValue>),
}

/// The short, log-safe fingerprint of a secret or token: the first 12 hex
/// characters of its SHA-256. Never reversible, stable across processes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(String);

/// The transport identity of a caller whose TLS client certificate was
/// verified against the configured client CA (mTLS): what the certificate
/// names, for the pipeline and, later, the rules. Built by `tls` from the
/// verified end-entity certificate only; an unverified peer has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The SPIFFE ID: the certificate's one URI SAN when it starts with
    /// `spiffe://` (an X.509-SVID has exactly one URI SAN; with more than
    /// one, none is taken as the SPIFFE ID).
    pub spiffe_id: Option<String>,
    /// The certificate's DNS SANs, in certificate order.
    pub dns_names: Vec<String>,
    /// The subject distinguished name (RFC 4514 style, `CN=...`), unless empty.
    pub subject: Option<String>,
}

impl PeerIdentity {
    /// The one name the audit event records: the SPIFFE ID, else the
    /// subject, else the first DNS name.
    pub fn audit_name(&self) -> Option<&str> {
        self.spiffe_id
            .as_deref()
            .or(self.subject.as_deref())
            .or(self.dns_names.first().map(String::as_str))
    }
}

/// A caller whose JWT was verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The verified `iss`.
    pub issuer: String,
    /// The verified `sub`.
    pub subject: String,
    /// The `aud` values of the token.
    pub audiences: Vec<String>,
    /// Scopes from `scope` (space-separated) or `scp` (string or array).
    pub scopes: Vec<String>,
    /// Every claim of the token, including the registered ones, for the rules.
    pub claims: BTreeMap<String, ClaimValue>,
    /// The token's `exp`, unix seconds.
    pub expires_at: u64,
    /// The fingerprint of the JWT, for logs and audit; the JWT itself is never kept.
    pub token_fingerprint: Fingerprint,
}

/// The 89 characters Agora allows in channel names and user accounts:
/// a-z, A-Z, 0-9, space and the punctuation below.
const CHANNEL_PUNCTUATION: &str = " !#$%&()+-:;<=.>?@[]^_{}|~,";

impl ChannelName {
    /// Parses a channel name under Agora's limits.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_agora_text("channel name", s, MAX_CHANNEL_BYTES)?;
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Account {
    /// Parses a user account under Agora's limits.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        check_agora_text("user account", s, MAX_ACCOUNT_BYTES)?;
        Ok(Self(s.to_owned()))
    }

    /// The account as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl RtmUserId {
    /// Parses an RTM / Chat user id: 1 to 64 bytes, no control characters.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const WHAT: &str = "rtm user id";
        if s.is_empty() {
            return Err(InvalidValue::Empty { what: WHAT });
        }
        if s.len() > MAX_RTM_USER_ID_BYTES {
            return Err(InvalidValue::TooLong {
                what: WHAT,
                len: s.len(),
                max: MAX_RTM_USER_ID_BYTES,
            });
        }
        // Control characters cannot be typed or displayed by any client and
        // are a classic log-injection vector, so they are refused even though
        // Agora documents no character set for these ids.
        if let Some((at, found)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidValue::BadCharacter {
                what: WHAT,
                found,
                at,
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Uid {
    /// A specific uid; 0 is refused because it is the wildcard.
    pub fn new(value: u32) -> Result<Self, InvalidValue> {
        NonZeroU32::new(value)
            .map(Self)
            .ok_or(InvalidValue::ZeroUid)
    }

    /// Parses a uid from a wider integer, refusing 0 and anything above u32::MAX
    /// instead of truncating it (a truncated 4294967296 would be the wildcard 0).
    pub fn from_u64(value: u64) -> Result<Self, InvalidValue> {
        let narrow = u32::try_from(value).map_err(|_| InvalidValue::TooLong {
            what: "uid",
            len: value.to_string().len(),
            max: 10,
        })?;
        Self::new(narrow)
    }

    /// The uid as a number.
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl RtcIdentity {
    /// The string Agora puts on the wire: decimal uid, the account verbatim, or "" for any uid.
    pub fn wire_string(&self) -> String {
        match self {
            RtcIdentity::Uid(uid) => uid.get().to_string(),
            RtcIdentity::Account(account) => account.as_str().to_owned(),
            RtcIdentity::AnyUid => String::new(),
        }
    }
}

impl ChannelScope {
    /// The channel as text; the wildcard is `*`.
    pub fn as_str(&self) -> &str {
        match self {
            ChannelScope::Named(name) => name.as_str(),
            ChannelScope::Wildcard => "*",
        }
    }
}

impl From<ChannelName> for ChannelScope {
    fn from(name: ChannelName) -> Self {
        ChannelScope::Named(name)
    }
}

impl From<&ChannelName> for ChannelScope {
    fn from(name: &ChannelName) -> Self {
        ChannelScope::Named(name.clone())
    }
}

impl From<&ChannelScope> for ChannelScope {
    fn from(scope: &ChannelScope) -> Self {
        scope.clone()
    }
}

impl Rtm2ResourceType {
    /// Every type, in code order.
    pub const ALL: [Rtm2ResourceType; 5] = [
        Rtm2ResourceType::MessageChannels,
        Rtm2ResourceType::StreamChannels,
        Rtm2ResourceType::GroupChannels,
        Rtm2ResourceType::ServerGroups,
        Rtm2ResourceType::Users,
    ];

    /// The wire code, 0..=4.
    pub fn code(self) -> u16 {
        match self {
            Rtm2ResourceType::MessageChannels => 0,
            Rtm2ResourceType::StreamChannels => 1,
            Rtm2ResourceType::GroupChannels => 2,
            Rtm2ResourceType::ServerGroups => 3,
            Rtm2ResourceType::Users => 4,
        }
    }

    /// The type of a wire code, if it is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Rtm2ResourceType::MessageChannels => "message_channels",
            Rtm2ResourceType::StreamChannels => "stream_channels",
            Rtm2ResourceType::GroupChannels => "group_channels",
            Rtm2ResourceType::ServerGroups => "server_groups",
            Rtm2ResourceType::Users => "users",
        }
    }

    /// Parses a name as written in rules.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl Rtm2PermissionType {
    /// Both types, in code order.
    pub const ALL: [Rtm2PermissionType; 2] = [Rtm2PermissionType::Read, Rtm2PermissionType::Write];

    /// The wire code, 0..=1.
    pub fn code(self) -> u16 {
        match self {
            Rtm2PermissionType::Read => 0,
            Rtm2PermissionType::Write => 1,
        }
    }

    /// The type of a wire code, if it is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Rtm2PermissionType::Read => "read",
            Rtm2PermissionType::Write => "write",
        }
    }

    /// Parses `read` or `write`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl Role {
    /// Parses `publisher` or `subscriber` (case-insensitive); anything else is refused.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s.to_ascii_lowercase().as_str() {
            "publisher" => Ok(Role::Publisher),
            "subscriber" => Ok(Role::Subscriber),
            _ => Err(InvalidValue::Role(s.to_owned())),
        }
    }

    /// The lowercase name used in config, logs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publisher => "publisher",
            Role::Subscriber => "subscriber",
        }
    }
}

impl Lifetime {
    /// The 24-hour maximum.
    pub const MAX: Lifetime = Lifetime(MAX_LIFETIME_SECS);

    /// A lifetime of `secs` seconds, 1..=86400.
    pub fn from_secs(secs: u64) -> Result<Self, InvalidValue> {
        match u32::try_from(secs) {
            Ok(s) if (1..=MAX_LIFETIME_SECS).contains(&s) => Ok(Self(s)),
            _ => Err(InvalidValue::Lifetime { secs }),
        }
    }

    /// The lifetime in seconds.
    pub fn secs(self) -> u32 {
        self.0
    }
}

impl Fingerprint {
    /// The fingerprint of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        Self(hex::encode(&digest[..6]))
    }

    /// The fingerprint of the bytes whose SHA-256 is `digest`, for a caller
    /// that has hashed them already (the verified-JWT cache's key).
    pub fn of_sha256(digest: &[u8; 32]) -> Self {
        Self(hex::encode(&digest[..6]))
    }

    /// The 12 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RtmUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ChannelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `s` against Agora's channel/account rules: non-empty, at most `max`
/// bytes, every character from the 89-character set.
fn check_agora_text(what: &'static str, s: &str, max: usize) -> Result<(), InvalidValue> {
    if s.is_empty() {
        return Err(InvalidValue::Empty { what });
    }
    if s.len() > max {
        return Err(InvalidValue::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    match s.char_indices().find(|&(_, c)| !is_agora_char(c)) {
        Some((at, found)) => Err(InvalidValue::BadCharacter { what, found, at }),
        None => Ok(()),
    }
}

/// Whether `c` is one of Agora's 89 channel-name characters.
pub fn is_agora_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || CHANNEL_PUNCTUATION.contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtm2_codes_and_names_round_trip() {
        for t in Rtm2ResourceType::ALL {
            assert_eq!(Rtm2ResourceType::from_code(t.code()), Some(t));
            assert_eq!(Rtm2ResourceType::parse(t.as_str()), Some(t));
        }
        let codes: Vec<u16> = Rtm2ResourceType::ALL.iter().map(|t| t.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        assert_eq!(Rtm2ResourceType::from_code(5), None);
        for p in Rtm2PermissionType::ALL {
            assert_eq!(Rtm2PermissionType::from_code(p.code()), Some(p));
            assert_eq!(Rtm2PermissionType::parse(p.as_str()), Some(p));
        }
        assert_eq!(Rtm2PermissionType::Write.code(), 1);
        assert_eq!(Rtm2PermissionType::from_code(2), None);
        assert_eq!(Rtm2PermissionType::parse("admin"), None);
    }

    #[test]
    fn a_channel_scope_is_its_name_or_the_star() {
        let name = ChannelName::parse("room-1").unwrap();
        assert_eq!(ChannelScope::from(&name).as_str(), "room-1");
        assert_eq!(ChannelScope::Wildcard.to_string(), "*");
    }

    #[test]
    fn the_character_set_has_89_members() {
        let count = (0u8..=127).filter(|b| is_agora_char(*b as char)).count();
        assert_eq!(count, 89);
    }

    #[test]
    fn channel_names_follow_agora_limits() {
        let cases: &[(&str, bool)] = &[
            ("room-1", true),
            ("a", true),
            (&"x".repeat(63), true),
            (&"x".repeat(64), false),
            ("", false),
            ("bad/slash", false),
            ("star*", false),
            ("quote\"", false),
            ("tab\t", false),
            ("ünï", false),
            (" !#$%&()+-:;<=.>?@[]^_{}|~,", true),
        ];
        for (input, ok) in cases {
            assert_eq!(ChannelName::parse(input).is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn accounts_allow_255_bytes_and_refuse_empty() {
        assert!(Account::parse(&"a".repeat(255)).is_ok());
        assert!(matches!(
            Account::parse(&"a".repeat(256)),
            Err(InvalidValue::TooLong { max: 255, .. })
        ));
        assert!(matches!(
            Account::parse(""),
            Err(InvalidValue::Empty { .. })
        ));
    }

    #[test]
    fn rtm_user_ids_allow_64_bytes_of_utf8() {
        assert!(RtmUserId::parse("ユーザー").is_ok());
        assert!(RtmUserId::parse(&"u".repeat(64)).is_ok());
        assert!(RtmUserId::parse(&"u".repeat(65)).is_err());
        assert!(RtmUserId::parse("").is_err());
        assert!(RtmUserId::parse("a\nb").is_err());
    }

    #[test]
    fn uids_never_truncate() {
        assert_eq!(Uid::new(0), Err(InvalidValue::ZeroUid));
        assert_eq!(Uid::from_u64(4_294_967_295).map(Uid::get), Ok(u32::MAX));
        assert!(Uid::from_u64(4_294_967_296).is_err());
        assert_eq!(Uid::from_u64(0), Err(InvalidValue::ZeroUid));
    }

    #[test]
    fn identities_encode_like_agora() {
        let uid = RtcIdentity::Uid(Uid::new(2_882_341_273).unwrap());
        assert_eq!(uid.wire_string(), "2882341273");
        assert_eq!(RtcIdentity::AnyUid.wire_string(), "");
        let zero_account = RtcIdentity::Account(Account::parse("0").unwrap());
        assert_eq!(zero_account.wire_string(), "0");
    }

    #[test]
    fn roles_parse_strictly() {
        assert_eq!(Role::parse("Publisher"), Ok(Role::Publisher));
        assert_eq!(Role::parse("subscriber"), Ok(Role::Subscriber));
        assert!(Role::parse("admin").is_err());
        assert!(Role::Publisher > Role::Subscriber);
    }

    #[test]
    fn lifetimes_are_capped_at_a_day() {
        assert_eq!(Lifetime::from_secs(86_400).map(Lifetime::secs), Ok(86_400));
        assert!(Lifetime::from_secs(86_401).is_err());
        assert!(Lifetime::from_secs(0).is_err());
        assert!(Lifetime::from_secs(u64::MAX).is_err());
    }

    #[test]
    fn fingerprints_are_12_hex() {
        // SHA-256("abc") starts with ba7816bf8f01.
        assert_eq!(Fingerprint::of(b"abc").as_str(), "ba7816bf8f01");
        let digest: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(Fingerprint::of_sha256(&digest), Fingerprint::of(b"abc"));
    }
}
