//! Inspecting a token, pure: decode a 006 or 007 token, find the keyring and
//! certificate that verify it, give every privilege its absolute expiry, and
//! list what would make Agora refuse it at `now` (errors 109 and 110).
//!
//! The RPC (`Gate::inspect`, over the configured projects) and the CLI
//! (`tokengate token inspect`, with at most one certificate) both call
//! [`inspect`], so the two cannot disagree about a token. `now` is an
//! argument: this module reads no clock.

use std::collections::BTreeMap;

use super::builders::raw;
use super::codec::ParseError;
use super::services::{SERVICE_RTC, Service, ServiceKind};
use super::v006::{self, Parsed006};
use super::v007::{self, ParsedToken};
use super::{AppCertificate, AppId, privilege_expires_at};
use crate::domain::Fingerprint;

/// Why a token could not be inspected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// The token has the 006 prefix but does not parse as 006.
    #[error("not a readable 006 token: {0}")]
    Unreadable006(ParseError),
    /// The token does not parse as 007 (and has no 006 prefix).
    #[error("not a readable 006 or 007 token: {0}")]
    Unreadable(ParseError),
}

/// Certificates to verify a token with, and the project they belong to.
#[derive(Debug, Clone, Copy)]
pub struct Keyring<'a> {
    /// The project's name; "" when there is none (a certificate given to the CLI).
    pub project: &'a str,
    /// The App ID the certificates belong to; `None` holds any App ID, for a
    /// certificate given without one.
    pub app_id: Option<&'a AppId>,
    /// The certificates by name, tried in this order.
    pub certificates: &'a [(String, AppCertificate)],
}

/// One privilege of an issued or inspected token and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeExpiry {
    /// The AccessToken2 service type (1 for every 006 privilege).
    pub service_type: u16,
    /// The privilege id.
    pub privilege: u16,
    /// The raw value in the token.
    pub value: u32,
    /// The absolute expiry, unix seconds; `None` for 0 ("no privilege-specific limit").
    pub expires_at: Option<u64>,
}

/// One decoded service of an inspected token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedService {
    /// The service type number.
    pub service_type: u16,
    /// Its privileges and their expiries.
    pub privileges: Vec<PrivilegeExpiry>,
    /// RTC, Streaming, FCDN: the channel.
    pub channel: String,
    /// RTC: the uid string; Streaming, FCDN: the account.
    pub uid: String,
    /// RTM, RTM2, Chat: the user id; APaaS: the user uuid.
    pub user_id: String,
}

/// Why Agora would refuse a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// 109 (expired) or 110 (invalid).
    pub agora_error: u32,
    /// A stable short code.
    pub code: &'static str,
    /// A sentence for a human; never contains the token or a certificate.
    pub message: String,
}

/// The token as parsed, for views that show its wire fields.
///
/// Both forms leave the signature out of `Debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// An AccessToken2.
    V007(ParsedToken),
    /// A legacy AccessToken.
    V006(Parsed006),
}

/// What `inspect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// "006" or "007".
    pub version: &'static str,
    /// The App ID in the token (lossy UTF-8).
    pub app_id: String,
    /// The project of the keyring that holds that App ID, if any.
    pub project: Option<String>,
    /// The name of the certificate that verified the signature, if any.
    pub certificate: Option<String>,
    /// Whether a certificate verified it.
    pub signature_valid: bool,
    /// Whether the signature was checked at all: a keyring held the App ID
    /// and, for 006, the expected channel and uid were given. When false,
    /// `signature_valid` is false for want of a check, not as a verdict.
    pub signature_checked: bool,
    /// 007: `issue_ts`; 006: unknown, so `None`.
    pub issued_at: Option<u64>,
    /// When the token expires, unix seconds.
    pub expires_at: u64,
    /// The salt.
    pub salt: u32,
    /// The decoded services.
    pub services: Vec<InspectedService>,
    /// Everything that would make Agora refuse it now.
    pub diagnoses: Vec<Diagnosis>,
    /// The token's fingerprint.
    pub fingerprint: Fingerprint,
    /// The parsed token.
    pub decoded: Decoded,
}

/// What the caller expects a token to be for, to explain errors 109 and 110.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The channel the client joined.
    pub channel: Option<String>,
    /// The uid or account the client joined with, as its wire string.
    pub uid: Option<String>,
}

impl InspectError {
    /// Why the token did not parse.
    pub fn parse_error(&self) -> &ParseError {
        match self {
            InspectError::Unreadable006(e) | InspectError::Unreadable(e) => e,
        }
    }
}

impl Keyring<'_> {
    /// Whether this keyring's certificates belong to `app_id`.
    fn holds(&self, app_id: &str) -> bool {
        self.app_id.is_none_or(|id| id.as_str() == app_id)
    }
}

/// Decodes a 006 or 007 token, verifies it with the first keyring that holds
/// its App ID, and lists what would make Agora refuse it at `now`.
pub fn inspect(
    token: &str,
    keyrings: &[Keyring<'_>],
    expected: &Expectation,
    now: u64,
) -> Result<Inspection, InspectError> {
    if token.starts_with(v006::VERSION) {
        let parsed = v006::parse(token).map_err(InspectError::Unreadable006)?;
        Ok(inspect_006(token, parsed, keyrings, expected, now))
    } else {
        let parsed = v007::parse(token).map_err(InspectError::Unreadable)?;
        Ok(inspect_007(token, parsed, keyrings, expected, now))
    }
}

/// The privileges of one 007 service with their absolute expiries.
pub fn privilege_expiries(
    service_type: u16,
    privileges: &BTreeMap<u16, u32>,
    issue_ts: u32,
) -> Vec<PrivilegeExpiry> {
    privileges
        .iter()
        .map(|(&privilege, &value)| PrivilegeExpiry {
            service_type,
            privilege,
            value,
            expires_at: privilege_expires_at(issue_ts, value),
        })
        .collect()
}

/// When a 006 token stops admitting its client: the earlier of `ts` and the
/// deadline of its join privilege (or, for an RTM token, its login privilege).
///
/// 006 has no lifetime field. Its builders set `ts` to the build time plus 24
/// hours, so `ts` is not the issue time (spec §4); it is the token's own
/// validity, which Agora documents as separate from the privileges ("each
/// token has a privilege expiration period and a validity period", 24 hours
/// by default). The privilege values are absolute unix deadlines, 0 meaning no
/// limit of the privilege's own (spec §4). The spec records no official 006
/// verifier, so what Agora's server compares is not observable here; a client
/// is refused at whichever deadline comes first if both are checked, and
/// reporting the earlier one can only warn early, never late. The service once
/// reported the join deadline and the CLI `ts`: each was right for one order
/// of the two and wrong for the other.
fn expiry_006(parsed: &Parsed006) -> u64 {
    let ts = u64::from(parsed.ts);
    [v006::JOIN_CHANNEL, v006::RTM_LOGIN]
        .iter()
        .find_map(|id| parsed.privileges.get(id))
        .filter(|&&deadline| deadline != 0)
        .map_or(ts, |&deadline| ts.min(u64::from(deadline)))
}

fn inspect_007(
    token: &str,
    parsed: ParsedToken,
    keyrings: &[Keyring<'_>],
    expected: &Expectation,
    now: u64,
) -> Inspection {
    let t = &parsed.token;
    let app_id = String::from_utf8_lossy(&t.app_id).into_owned();
    let keyring = keyrings.iter().find(|k| k.holds(&app_id));
    let certificate = keyring.and_then(|k| {
        k.certificates
            .iter()
            .find(|(_, cert)| parsed.verify(cert))
            .map(|(name, _)| name.clone())
    });
    let services: Vec<InspectedService> = t
        .services
        .iter()
        .map(|s| inspected(s, t.issue_ts))
        .collect();
    let expires_at = t.expires_at();
    let mut diagnoses = Vec::new();
    diagnose_signature(&mut diagnoses, keyring.is_some(), certificate.is_some());
    if now >= expires_at {
        diagnoses.push(Diagnosis {
            agora_error: 109,
            code: "expired",
            message: format!(
                "the token expired at {expires_at} (unix), {} s ago",
                now - expires_at
            ),
        });
    }
    diagnose_services(&mut diagnoses, &services, expected, now);
    Inspection {
        version: v007::VERSION,
        app_id,
        project: keyring.map(|k| k.project.to_owned()),
        signature_valid: certificate.is_some(),
        signature_checked: keyring.is_some(),
        certificate,
        issued_at: Some(u64::from(t.issue_ts)),
        expires_at,
        salt: t.salt,
        services,
        diagnoses,
        fingerprint: Fingerprint::of(token.as_bytes()),
        decoded: Decoded::V007(parsed),
    }
}

fn inspect_006(
    token: &str,
    parsed: Parsed006,
    keyrings: &[Keyring<'_>],
    expected: &Expectation,
    now: u64,
) -> Inspection {
    let keyring = keyrings.iter().find(|k| k.holds(&parsed.app_id));
    let mut diagnoses = Vec::new();
    // A 006 signature covers the channel and uid, which the token stores only
    // as CRCs: it can be checked only against the values the client used.
    let (certificate, checked) = match (&expected.channel, &expected.uid) {
        (Some(channel), Some(uid)) => {
            let certificate = keyring.and_then(|k| {
                k.certificates
                    .iter()
                    .find(|(_, cert)| parsed.verify(cert, channel, uid))
                    .map(|(name, _)| name.clone())
            });
            diagnose_signature(&mut diagnoses, keyring.is_some(), certificate.is_some());
            (certificate, keyring.is_some())
        }
        _ => {
            diagnoses.push(Diagnosis {
                agora_error: 110,
                code: "unverifiable",
                message: "a 006 token can only be verified with the channel and uid it was made for: pass both".into(),
            });
            (None, false)
        }
    };
    if let Some(channel) = &expected.channel
        && crc32fast::hash(channel.as_bytes()) != parsed.crc_channel_name
    {
        diagnoses.push(mismatch("channel_mismatch", "channel"));
    }
    if let Some(uid) = &expected.uid
        && crc32fast::hash(uid.as_bytes()) != parsed.crc_uid
    {
        diagnoses.push(mismatch("uid_mismatch", "uid or account"));
    }
    // 006 privileges are absolute unix times, not seconds from an issue time.
    let privileges: Vec<PrivilegeExpiry> = parsed
        .privileges
        .iter()
        .map(|(&privilege, &value)| PrivilegeExpiry {
            service_type: SERVICE_RTC,
            privilege,
            value,
            expires_at: (value != 0).then_some(u64::from(value)),
        })
        .collect();
    let expires_at = expiry_006(&parsed);
    if now >= expires_at {
        diagnoses.push(Diagnosis {
            agora_error: 109,
            code: "expired",
            message: format!("the token expired at {expires_at} (unix)"),
        });
    }
    Inspection {
        version: v006::VERSION,
        app_id: parsed.app_id.clone(),
        project: keyring.map(|k| k.project.to_owned()),
        signature_valid: certificate.is_some(),
        signature_checked: checked,
        certificate,
        issued_at: None,
        expires_at,
        salt: parsed.salt,
        services: vec![InspectedService {
            service_type: SERVICE_RTC,
            privileges,
            channel: String::new(),
            uid: String::new(),
            user_id: String::new(),
        }],
        diagnoses,
        fingerprint: Fingerprint::of(token.as_bytes()),
        decoded: Decoded::V006(parsed),
    }
}

fn inspected(service: &Service, issue_ts: u32) -> InspectedService {
    let text = |b: &Vec<u8>| String::from_utf8_lossy(b).into_owned();
    let mut out = InspectedService {
        service_type: service.kind.service_type(),
        privileges: privilege_expiries(service.kind.service_type(), &service.privileges, issue_ts),
        channel: String::new(),
        uid: String::new(),
        user_id: String::new(),
    };
    match &service.kind {
        ServiceKind::Rtc { channel_name, uid } => {
            out.channel = text(channel_name);
            out.uid = text(uid);
        }
        ServiceKind::Streaming {
            channel_name,
            account,
        }
        | ServiceKind::Fcdn {
            channel_name,
            account,
        } => {
            out.channel = text(channel_name);
            out.uid = text(account);
        }
        ServiceKind::Rtm { user_id }
        | ServiceKind::Rtm2 { user_id, .. }
        | ServiceKind::Chat { user_id } => out.user_id = text(user_id),
        ServiceKind::Apaas { user_uuid, .. } => out.user_id = text(user_uuid),
        ServiceKind::Fpa
        | ServiceKind::ConvoAi
        | ServiceKind::Stt
        | ServiceKind::Generic { .. } => {}
    }
    out
}

fn diagnose_signature(diagnoses: &mut Vec<Diagnosis>, known_app: bool, verified: bool) {
    if !known_app {
        diagnoses.push(Diagnosis {
            agora_error: 110,
            code: "unknown_app_id",
            message: "the token's App ID is not one of the configured projects".into(),
        });
    } else if !verified {
        diagnoses.push(Diagnosis {
            agora_error: 110,
            code: "bad_signature",
            message: "no configured certificate of the project verifies the signature".into(),
        });
    }
}

/// Per-service checks: privilege expiry and the expected channel and uid.
fn diagnose_services(
    diagnoses: &mut Vec<Diagnosis>,
    services: &[InspectedService],
    expected: &Expectation,
    now: u64,
) {
    // Service type 1 is RTC (spec §2.5), the only one with a channel and a uid to join with.
    let rtc: Vec<&InspectedService> = services
        .iter()
        .filter(|s| s.service_type == SERVICE_RTC)
        .collect();
    for service in &rtc {
        let join = service
            .privileges
            .iter()
            .find(|p| p.privilege == raw::RTC_JOIN_CHANNEL);
        if let Some(at) = join.and_then(|p| p.expires_at)
            && now >= at
        {
            diagnoses.push(Diagnosis {
                agora_error: 109,
                code: "privilege_expired",
                message: format!("the join-channel privilege expired at {at} (unix)"),
            });
        }
    }
    if rtc.is_empty() && (expected.channel.is_some() || expected.uid.is_some()) {
        diagnoses.push(mismatch("no_rtc_service", "RTC service"));
        return;
    }
    if let Some(channel) = &expected.channel
        && !rtc.iter().any(|s| s.channel == *channel)
    {
        diagnoses.push(mismatch("channel_mismatch", "channel"));
    }
    if let Some(uid) = &expected.uid {
        // "" in the token is the wildcard: any uid may join.
        if !rtc.iter().any(|s| s.uid.is_empty() || s.uid == *uid) {
            diagnoses.push(mismatch("uid_mismatch", "uid or account"));
        }
    }
}

fn mismatch(code: &'static str, what: &str) -> Diagnosis {
    Diagnosis {
        agora_error: 110,
        code,
        message: format!("the token's {what} differs from the one the client used"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::v007::AccessToken2;

    const APP_ID: &str = "970CA35de60c44645bbae8a215061b33";
    const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
    const OTHER_CERT: &str = "61bFD7105da2c888018A460EAf5d6E76";
    const NOW: u32 = 1_700_000_000;

    fn app_id() -> AppId {
        AppId::parse(APP_ID).unwrap()
    }

    fn cert(text: &str) -> AppCertificate {
        AppCertificate::parse(text).unwrap()
    }

    /// A 006 RTC token for channel "c", uid "7", with `ts` and a join deadline.
    fn token_006(ts: u32, join: u32) -> String {
        let privileges = BTreeMap::from([(v006::JOIN_CHANNEL, join)]);
        v006::build(&app_id(), &cert(CERT), "c", "7", 9, ts, &privileges).unwrap()
    }

    fn for_c_7() -> Expectation {
        Expectation {
            channel: Some("c".into()),
            uid: Some("7".into()),
        }
    }

    fn codes(found: &Inspection) -> Vec<&'static str> {
        found.diagnoses.iter().map(|d| d.code).collect()
    }

    #[test]
    fn a_006_token_expires_at_the_earlier_of_ts_and_its_join_deadline() {
        let certs = [("primary".to_owned(), cert(CERT))];
        let id = app_id();
        let keys = [Keyring {
            project: "main",
            app_id: Some(&id),
            certificates: &certs,
        }];
        let now = u64::from(NOW);
        // (ts, join deadline) -> expiry: the builders' shape (join before ts),
        // the official vector's shape (ts before join), and join 0 (no limit).
        let cases = [
            (NOW + 86_400, NOW + 600, now + 600),
            (NOW + 600, NOW + 86_400, now + 600),
            (NOW + 600, 0, now + 600),
        ];
        for (ts, join, expiry) in cases {
            let token = token_006(ts, join);
            let found = inspect(&token, &keys, &for_c_7(), now).unwrap();
            assert_eq!(found.expires_at, expiry, "ts {ts}, join {join}");
            assert!(found.diagnoses.is_empty(), "{:?}", found.diagnoses);
            let later = inspect(&token, &keys, &for_c_7(), expiry).unwrap();
            assert_eq!(codes(&later), ["expired"], "ts {ts}, join {join}");
            assert_eq!(later.diagnoses[0].agora_error, 109);
        }
        // An RTM 006 token's deadline is its login privilege.
        let rtm = v006::build(
            &id,
            &cert(CERT),
            "alice",
            "",
            9,
            NOW + 86_400,
            &BTreeMap::from([(v006::RTM_LOGIN, NOW + 60)]),
        )
        .unwrap();
        let found = inspect(&rtm, &keys, &Expectation::default(), now).unwrap();
        assert_eq!(found.expires_at, now + 60);
    }

    #[test]
    fn a_006_signature_is_checked_only_with_channel_and_uid() {
        let certs = [("only".to_owned(), cert(CERT))];
        // The CLI's keyring: one certificate, any App ID.
        let keys = [Keyring {
            project: "",
            app_id: None,
            certificates: &certs,
        }];
        let token = token_006(NOW + 86_400, NOW + 600);
        let now = u64::from(NOW);
        let found = inspect(&token, &keys, &for_c_7(), now).unwrap();
        assert!(found.signature_checked && found.signature_valid);
        assert_eq!(found.certificate.as_deref(), Some("only"));
        assert!(matches!(found.decoded, Decoded::V006(_)));
        let found = inspect(&token, &keys, &Expectation::default(), now).unwrap();
        assert!(!found.signature_checked && !found.signature_valid);
        assert_eq!(codes(&found), ["unverifiable"]);
        let wrong_uid = Expectation {
            uid: Some("8".into()),
            ..for_c_7()
        };
        let found = inspect(&token, &keys, &wrong_uid, now).unwrap();
        assert!(found.signature_checked && !found.signature_valid);
        assert_eq!(codes(&found), ["bad_signature", "uid_mismatch"]);
    }

    #[test]
    fn a_007_token_is_verified_by_the_keyring_of_its_app_id() {
        let service = Service::new(ServiceKind::Rtc {
            channel_name: b"c".to_vec(),
            uid: b"7".to_vec(),
        })
        .with_privilege(raw::RTC_JOIN_CHANNEL, 60);
        let token = AccessToken2::new(APP_ID, NOW, 600, 3).with_service(service);
        let signed_by_other = v007::build(&token, &cert(OTHER_CERT)).unwrap();
        let other_id = AppId::parse("0a1b2c3d4e5f60718293a4b5c6d7e8f9").unwrap();
        let id = app_id();
        let certs = [
            ("primary".to_owned(), cert(CERT)),
            ("secondary".to_owned(), cert(OTHER_CERT)),
        ];
        let keys = [
            Keyring {
                project: "other",
                app_id: Some(&other_id),
                certificates: &certs,
            },
            Keyring {
                project: "main",
                app_id: Some(&id),
                certificates: &certs,
            },
        ];
        let now = u64::from(NOW);
        let found = inspect(&signed_by_other, &keys, &for_c_7(), now).unwrap();
        assert_eq!(found.project.as_deref(), Some("main"));
        assert_eq!(found.certificate.as_deref(), Some("secondary"));
        assert!(found.signature_checked && found.signature_valid);
        assert_eq!(found.issued_at, Some(now));
        assert_eq!(found.expires_at, now + 600);
        assert_eq!(found.services[0].privileges[0].expires_at, Some(now + 60));
        assert!(found.diagnoses.is_empty(), "{:?}", found.diagnoses);

        let found = inspect(&signed_by_other, &keys, &for_c_7(), now + 60).unwrap();
        assert_eq!(codes(&found), ["privilege_expired"]);
        let found = inspect(&signed_by_other, &keys[..1], &for_c_7(), now).unwrap();
        assert!(!found.signature_checked && found.project.is_none());
        assert_eq!(codes(&found), ["unknown_app_id"]);
        let found = inspect(
            &signed_by_other,
            &keys[1..],
            &Expectation::default(),
            now + 600,
        );
        assert_eq!(codes(&found.unwrap()), ["expired", "privilege_expired"]);
    }

    #[test]
    fn unreadable_tokens_say_which_format_was_tried() {
        let err = inspect("006xyz", &[], &Expectation::default(), 0).unwrap_err();
        assert!(matches!(err, InspectError::Unreadable006(_)), "{err}");
        assert!(err.to_string().starts_with("not a readable 006 token: "));
        let err = inspect("hello", &[], &Expectation::default(), 0).unwrap_err();
        assert!(
            matches!(err.parse_error(), ParseError::NotThisVersion { .. }),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("not a readable 006 or 007 token: ")
        );
    }
}
