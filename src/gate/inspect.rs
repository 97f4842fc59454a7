//! Inspecting: decode a 006 or 007 token, find the project and certificate
//! that verify it, and list what would make Agora refuse it (errors 109, 110).

use super::{Gate, GateError, PrivilegeExpiry, privilege_expiries};
use crate::domain::{Fingerprint, Principal};
use crate::policy::Action;
use crate::token::builders::raw;
use crate::token::services::ServiceKind;
use crate::token::{v006, v007};

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

/// What `inspect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// "006" or "007".
    pub version: &'static str,
    /// The App ID in the token (lossy UTF-8).
    pub app_id: String,
    /// The configured project with that App ID, if any.
    pub project: Option<String>,
    /// The name of the certificate that verified the signature, if any.
    pub certificate: Option<String>,
    /// Whether a configured certificate verified it.
    pub signature_valid: bool,
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
}

/// What the caller expects a token to be for, to explain errors 109 and 110.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The channel the client joined.
    pub channel: Option<String>,
    /// The uid or account the client joined with, as its wire string.
    pub uid: Option<String>,
}

impl Gate {
    /// Decodes a 006 or 007 token, finds the project and certificate that verify it,
    /// and lists what would make Agora refuse it at `now`.
    pub fn inspect(
        &self,
        principal: &Principal,
        token: &str,
        expected: &Expectation,
        now: u64,
    ) -> Result<Inspection, GateError> {
        self.authorize(principal, Action::Inspect, now)?;
        if token.starts_with("006") {
            self.inspect_006(token, expected, now)
        } else {
            self.inspect_007(token, expected, now)
        }
    }

    fn inspect_007(
        &self,
        token: &str,
        expected: &Expectation,
        now: u64,
    ) -> Result<Inspection, GateError> {
        let parsed = v007::parse(token)
            .map_err(|e| GateError::BadToken(format!("not a readable 006 or 007 token: {e}")))?;
        let t = &parsed.token;
        let app_id = String::from_utf8_lossy(&t.app_id).into_owned();
        let project = self.projects.values().find(|p| p.app_id.as_str() == app_id);
        let certificate = project.and_then(|p| p.verifying_certificate(&parsed));
        let services: Vec<InspectedService> = t
            .services
            .iter()
            .map(|s| inspected(s, t.issue_ts))
            .collect();
        let expires_at = t.expires_at();
        let mut diagnoses = Vec::new();
        diagnose_signature(&mut diagnoses, project.is_some(), certificate.is_some());
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
        Ok(Inspection {
            version: "007",
            app_id,
            project: project.map(|p| p.name.clone()),
            signature_valid: certificate.is_some(),
            certificate,
            issued_at: Some(u64::from(t.issue_ts)),
            expires_at,
            salt: t.salt,
            services,
            diagnoses,
            fingerprint: Fingerprint::of(token.as_bytes()),
        })
    }

    fn inspect_006(
        &self,
        token: &str,
        expected: &Expectation,
        now: u64,
    ) -> Result<Inspection, GateError> {
        let parsed = v006::parse(token)
            .map_err(|e| GateError::BadToken(format!("not a readable 006 token: {e}")))?;
        let project = self
            .projects
            .values()
            .find(|p| p.app_id.as_str() == parsed.app_id);
        let mut diagnoses = Vec::new();
        // A 006 signature covers the channel and uid, which the token stores only
        // as CRCs: it can be checked only against the values the client used.
        let certificate = match (&expected.channel, &expected.uid, project) {
            (Some(channel), Some(uid), Some(project)) => project
                .certificates
                .iter()
                .find(|(_, cert)| parsed.verify(cert, channel, uid))
                .map(|(name, _)| name.clone()),
            _ => None,
        };
        if expected.channel.is_none() || expected.uid.is_none() {
            diagnoses.push(Diagnosis {
                agora_error: 110,
                code: "unverifiable",
                message: "a 006 token can only be verified with the channel and uid it was made for: pass both".into(),
            });
        } else {
            diagnose_signature(&mut diagnoses, project.is_some(), certificate.is_some());
        }
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
        // 006 privileges are absolute unix times.
        let privileges: Vec<PrivilegeExpiry> = parsed
            .privileges
            .iter()
            .map(|(&privilege, &value)| PrivilegeExpiry {
                service_type: 1,
                privilege,
                value,
                expires_at: (value != 0).then_some(u64::from(value)),
            })
            .collect();
        let join_expiry = privileges
            .iter()
            .find(|p| p.privilege == raw::RTC_JOIN_CHANNEL || p.privilege == 1000)
            .and_then(|p| p.expires_at);
        let expires_at = join_expiry.unwrap_or(u64::from(parsed.ts));
        if now >= expires_at {
            diagnoses.push(Diagnosis {
                agora_error: 109,
                code: "expired",
                message: format!("the token expired at {expires_at} (unix)"),
            });
        }
        Ok(Inspection {
            version: "006",
            app_id: parsed.app_id.clone(),
            project: project.map(|p| p.name.clone()),
            signature_valid: certificate.is_some(),
            certificate,
            issued_at: None,
            expires_at,
            salt: parsed.salt,
            services: vec![InspectedService {
                service_type: 1,
                privileges,
                channel: String::new(),
                uid: String::new(),
                user_id: String::new(),
            }],
            diagnoses,
            fingerprint: Fingerprint::of(token.as_bytes()),
        })
    }
}

fn inspected(service: &crate::token::services::Service, issue_ts: u32) -> InspectedService {
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
        _ => {}
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
    let rtc: Vec<&InspectedService> = services.iter().filter(|s| s.service_type == 1).collect();
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
