//! The legacy AccessToken ("006", spec §4): build, parse and verify.
//!
//! `"006" + app_id + base64(string(signature) u32(crc32(channel)) u32(crc32(uid)) string(message))`
//! with `message = u32(salt) u32(ts) map(privileges)`, not compressed. The
//! signature is HMAC-SHA256 keyed by the certificate over
//! `app_id ‖ channel ‖ uid ‖ message`. Unlike 007, privilege values are
//! **absolute** unix timestamps and `ts` is set to `now + 86400` by the builders.

use std::collections::BTreeMap;
use std::fmt;

use super::codec::{self, ParseError, Reader, Writer};
use super::v007::hmac;
use super::{AppCertificate, AppId, TokenError, is_hex32};
use crate::domain::Fingerprint;

/// The version prefix of AccessToken.
pub const VERSION: &str = "006";

/// Privilege id: join a channel.
pub const JOIN_CHANNEL: u16 = 1;
/// Privilege id: publish audio.
pub const PUBLISH_AUDIO: u16 = 2;
/// Privilege id: publish video.
pub const PUBLISH_VIDEO: u16 = 3;
/// Privilege id: publish data streams.
pub const PUBLISH_DATA: u16 = 4;
/// Privilege id: RTM login.
pub const RTM_LOGIN: u16 = 1000;

/// How long after `now` the builders set the token's `ts` field.
const TS_OFFSET: u32 = 24 * 3600;

/// The 006 RTC roles; every role but subscriber also gets the publish privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role006 {
    /// 0: attendee (deprecated).
    Attendee,
    /// 1: publisher.
    Publisher,
    /// 2: subscriber: join only.
    Subscriber,
    /// 101: admin (deprecated).
    Admin,
}

/// When and with which salt a 006 builder signs: `now` is the clock the
/// official builder would read (the token's `ts` becomes `now + 86400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issue006 {
    /// Unix seconds at build time.
    pub now: u32,
    /// The salt.
    pub salt: u32,
}

/// A parsed 006 token. Strings are as they were on the wire.
///
/// With its signature it is the token itself, so `Debug` leaves the signature out.
#[derive(Clone, PartialEq, Eq)]
pub struct Parsed006 {
    /// The 32 characters after the prefix.
    pub app_id: String,
    /// The signature bytes (32 in a well-formed token).
    pub signature: Vec<u8>,
    /// CRC-32 of the channel name the token was made for.
    pub crc_channel_name: u32,
    /// CRC-32 of the uid string the token was made for.
    pub crc_uid: u32,
    /// The signed message bytes.
    pub message: Vec<u8>,
    /// The salt.
    pub salt: u32,
    /// The ts field (builders: issue time + 86400).
    pub ts: u32,
    /// Privilege id -> absolute unix expiry.
    pub privileges: BTreeMap<u16, u32>,
}

impl Role006 {
    /// The role of a wire code (0, 1, 2, 101).
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0 => Some(Role006::Attendee),
            1 => Some(Role006::Publisher),
            2 => Some(Role006::Subscriber),
            101 => Some(Role006::Admin),
            _ => None,
        }
    }
}

impl Issue006 {
    /// The token's `ts` field: `now + 86400`, refusing to wrap past 2106.
    pub fn ts(self) -> Result<u32, TokenError> {
        self.now
            .checked_add(TS_OFFSET)
            .ok_or(TokenError::TimestampOverflow(self.now))
    }
}

impl fmt::Debug for Parsed006 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed006")
            .field("app_id", &self.app_id)
            .field("crc_channel_name", &self.crc_channel_name)
            .field("crc_uid", &self.crc_uid)
            .field("salt", &self.salt)
            .field("ts", &self.ts)
            .field("privileges", &self.privileges)
            .field("fingerprint", &Fingerprint::of(&self.signature))
            .finish_non_exhaustive()
    }
}

impl Parsed006 {
    /// Whether `certificate` signed this token for `channel_name` and `uid`
    /// (the decimal uid, "" for uid 0, or the account). Checks the app id
    /// format, both CRCs, and the HMAC in constant time.
    pub fn verify(&self, certificate: &AppCertificate, channel_name: &str, uid: &str) -> bool {
        if !is_hex32(self.app_id.as_bytes())
            || crc32fast::hash(channel_name.as_bytes()) != self.crc_channel_name
            || crc32fast::hash(uid.as_bytes()) != self.crc_uid
        {
            return false;
        }
        let expected = signature(
            certificate,
            self.app_id.as_bytes(),
            channel_name.as_bytes(),
            uid.as_bytes(),
            &self.message,
        );
        constant_time_eq(&expected, &self.signature)
    }
}

/// Builds a 006 token from its raw parts: `ts` and every privilege value are absolute unix times.
pub fn build(
    app_id: &AppId,
    certificate: &AppCertificate,
    channel_name: &str,
    uid: &str,
    salt: u32,
    ts: u32,
    privileges: &BTreeMap<u16, u32>,
) -> Result<String, TokenError> {
    let mut message = Writer::with_capacity(16 + 6 * privileges.len());
    message.u32(salt).u32(ts).map(privileges)?;
    let message = message.into_inner();
    let sig = signature(
        certificate,
        app_id.as_str().as_bytes(),
        channel_name.as_bytes(),
        uid.as_bytes(),
        &message,
    );
    let mut content = Writer::with_capacity(48 + message.len());
    content.string("signature", &sig)?;
    content
        .u32(crc32fast::hash(channel_name.as_bytes()))
        .u32(crc32fast::hash(uid.as_bytes()));
    content.string("message", &message)?;
    let mut out = String::with_capacity(35 + content.as_slice().len().div_ceil(3) * 4);
    out.push_str(VERSION);
    out.push_str(app_id.as_str());
    codec::base64_encode(content.as_slice(), &mut out);
    Ok(out)
}

/// The official `RtcTokenBuilder.buildTokenWithUid/Account`: `uid` is the wire
/// string ("" for uid 0) and `privilege_expired_ts` an absolute unix time.
pub fn build_rtc(
    app_id: &AppId,
    certificate: &AppCertificate,
    channel_name: &str,
    uid: &str,
    role: Role006,
    privilege_expired_ts: u32,
    issue: Issue006,
) -> Result<String, TokenError> {
    let mut privileges = BTreeMap::from([(JOIN_CHANNEL, privilege_expired_ts)]);
    if role != Role006::Subscriber {
        for id in [PUBLISH_AUDIO, PUBLISH_VIDEO, PUBLISH_DATA] {
            privileges.insert(id, privilege_expired_ts);
        }
    }
    let ts = issue.ts()?;
    build(
        app_id,
        certificate,
        channel_name,
        uid,
        issue.salt,
        ts,
        &privileges,
    )
}

/// The official `RtmTokenBuilder.buildToken`: the user account goes in the
/// channel slot with an empty uid, privilege 1000 = `privilege_expired_ts`.
pub fn build_rtm(
    app_id: &AppId,
    certificate: &AppCertificate,
    user_account: &str,
    privilege_expired_ts: u32,
    issue: Issue006,
) -> Result<String, TokenError> {
    let privileges = BTreeMap::from([(RTM_LOGIN, privilege_expired_ts)]);
    let ts = issue.ts()?;
    build(
        app_id,
        certificate,
        user_account,
        "",
        issue.salt,
        ts,
        &privileges,
    )
}

/// Parses a 006 token. Trailing bytes after the message are ignored, like the official parsers.
pub fn parse(token: &str) -> Result<Parsed006, ParseError> {
    let rest = token
        .strip_prefix(VERSION)
        .ok_or(ParseError::NotThisVersion { expected: VERSION })?;
    let app_id = rest.get(..32).ok_or(ParseError::Truncated("app id"))?;
    let body = rest.get(32..).ok_or(ParseError::Truncated("app id"))?;
    let mut content = Vec::new();
    codec::base64_decode(body, &mut content)?;
    let mut r = Reader::new(&content);
    let signature = r.string("signature")?.to_vec();
    let crc_channel_name = r.u32("channel crc")?;
    let crc_uid = r.u32("uid crc")?;
    let message = r.string("message")?.to_vec();
    let mut m = Reader::new(&message);
    let salt = m.u32("salt")?;
    let ts = m.u32("ts")?;
    let privileges = m.map("privileges")?;
    Ok(Parsed006 {
        app_id: app_id.to_owned(),
        signature,
        crc_channel_name,
        crc_uid,
        salt,
        ts,
        privileges,
        message,
    })
}

/// HMAC-SHA256 keyed by the certificate text over app_id ‖ channel ‖ uid ‖ message.
fn signature(
    certificate: &AppCertificate,
    app_id: &[u8],
    channel: &[u8],
    uid: &[u8],
    message: &[u8],
) -> [u8; 32] {
    let mut signed = Vec::with_capacity(app_id.len() + channel.len() + uid.len() + message.len());
    for part in [app_id, channel, uid, message] {
        signed.extend_from_slice(part);
    }
    hmac(certificate.secret(), &signed)
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
    const OFFICIAL: &str = "006970CA35de60c44645bbae8a215061b33IACV0fZUBw+72cVoL9eyGGh3Q6Poi8bgjwVLnyKSJyOXR7dIfRBXoFHlEAABAAAAR/QQAAEAAQCvKDdW";

    #[test]
    fn builds_and_verifies_the_official_vector() {
        let app_id = AppId::parse(APP_ID).unwrap();
        let cert = AppCertificate::parse(CERT).unwrap();
        let privileges = BTreeMap::from([(JOIN_CHANNEL, 1_446_455_471)]);
        let token = build(
            &app_id,
            &cert,
            "7d72365eb983485397e3e3f9d460bdda",
            "2882341273",
            1,
            1_111_111,
            &privileges,
        )
        .unwrap();
        assert_eq!(token, OFFICIAL);
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.crc_channel_name, 276_646_071);
        assert_eq!(parsed.privileges, privileges);
        assert!(parsed.verify(&cert, "7d72365eb983485397e3e3f9d460bdda", "2882341273"));
        assert!(!parsed.verify(&cert, "7d72365eb983485397e3e3f9d460bdda", "1"));
    }

    #[test]
    fn roles_grant_like_the_official_builder() {
        let app_id = AppId::parse(APP_ID).unwrap();
        let cert = AppCertificate::parse(CERT).unwrap();
        let check = |role, expected: &[u16]| {
            let t = build_rtc(
                &app_id,
                &cert,
                "c",
                "",
                role,
                9,
                Issue006 { now: 1, salt: 1 },
            )
            .unwrap();
            let keys: Vec<u16> = parse(&t).unwrap().privileges.into_keys().collect();
            assert_eq!(keys, expected, "{role:?}");
        };
        check(Role006::Subscriber, &[1]);
        check(Role006::Publisher, &[1, 2, 3, 4]);
        check(Role006::Attendee, &[1, 2, 3, 4]);
        check(Role006::Admin, &[1, 2, 3, 4]);
        assert_eq!(
            build_rtm(
                &app_id,
                &cert,
                "u",
                0,
                Issue006 {
                    now: u32::MAX,
                    salt: 1
                }
            ),
            Err(TokenError::TimestampOverflow(u32::MAX))
        );
    }

    #[test]
    fn parse_refuses_other_versions_and_truncation() {
        assert_eq!(
            parse("007970CA35de60c44645bbae8a215061b33IACV"),
            Err(ParseError::NotThisVersion { expected: "006" })
        );
        assert_eq!(parse("006abc"), Err(ParseError::Truncated("app id")));
        assert!(parse(&OFFICIAL[..OFFICIAL.len() - 8]).is_err());
    }
}
