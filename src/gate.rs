//! The use cases of the service, independent of the wire: issue, renew,
//! inspect and explain. The gRPC handlers and the ext_authz adapter both call
//! these, so a decision is made in exactly one way whatever the transport.
//!
//! `Gate` holds the compiled policy and the projects' certificates. It never
//! reads the clock or the random source: `now` and the salt are arguments,
//! supplied by the request handler.

use std::collections::BTreeMap;
use std::fmt;

use crate::domain::{Fingerprint, Principal, RtcIdentity, Uid};
use crate::policy::{
    self, Action, BoundIdentity, ChannelScope, Decision, Denial, Grant, Policy, Request,
    RequestedIdentity, Trace,
};
use crate::token::builders::{Issue, RtcPrivileges, raw};
use crate::token::services::{PermissionType, ResourceType, Rtm2Permissions, ServiceKind};
use crate::token::{AppCertificate, AppId, TokenError, v006, v007};

/// A failure to serve a use case that is not a policy decision.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The rules refused.
    #[error("denied: {}", .0.reason.as_str())]
    Denied(Denial),
    /// The channel given with a renewal contradicts the token's own channel.
    #[error("the token is for another channel")]
    ChannelMismatch,
    /// The token given to renew or inspect is not usable; the message says why.
    #[error("{0}")]
    BadToken(String),
    /// A grant named a project that is not configured (a config bug: the policy checks names at load).
    #[error("project {0:?} is not configured")]
    UnknownProject(String),
    /// `now` does not fit AccessToken2's 32-bit `issue_ts` (after 2106).
    #[error("the clock ({0}) does not fit a 32-bit issue_ts")]
    ClockOutOfRange(u64),
    /// The token could not be built.
    #[error("token build failed: {0}")]
    Token(#[from] TokenError),
}

/// One Agora project: its App ID and its named certificates.
pub struct Project {
    /// The name rules use.
    pub name: String,
    /// The App ID.
    pub app_id: AppId,
    /// The certificates by name, in config order; inspect verifies against all.
    pub certificates: Vec<(String, AppCertificate)>,
    /// The index into `certificates` of the one that signs new tokens.
    pub signer: usize,
}

/// The service's core: projects and the compiled policy.
pub struct Gate {
    projects: BTreeMap<String, Project>,
    policy: Policy,
}

/// One privilege of an issued or inspected token and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeExpiry {
    /// The AccessToken2 service type.
    pub service_type: u16,
    /// The privilege id.
    pub privilege: u16,
    /// The raw value in the token.
    pub value: u32,
    /// The absolute expiry, unix seconds; `None` for 0 ("no privilege-specific limit").
    pub expires_at: Option<u64>,
}

/// A token that was issued, with everything the reply reports.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The token string. Never logged.
    pub token: String,
    /// The App ID it is for.
    pub app_id: String,
    /// The project that signed it.
    pub project: String,
    /// The grant it was built from.
    pub grant: Grant,
    /// `issue_ts`, unix seconds.
    pub issued_at: u64,
    /// When the whole token expires, unix seconds.
    pub expires_at: u64,
    /// Every privilege, read back from the built token.
    pub privileges: Vec<PrivilegeExpiry>,
    /// When a client should renew.
    pub renew_after: u64,
    /// The token's fingerprint.
    pub fingerprint: Fingerprint,
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

impl fmt::Debug for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Project")
            .field("name", &self.name)
            .field("app_id", &self.app_id.as_str())
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|(name, cert)| format!("{name}:{}", cert.fingerprint()))
                    .collect::<Vec<_>>(),
            )
            .field("signer", &self.signer)
            .finish()
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("projects", &self.projects.keys().collect::<Vec<_>>())
            .field("rules", &self.policy.len())
            .finish()
    }
}

impl Project {
    /// The certificate that signs new tokens.
    pub fn signing_certificate(&self) -> Option<&AppCertificate> {
        self.certificates.get(self.signer).map(|(_, cert)| cert)
    }

    /// The name of the first certificate that verifies `token`.
    fn verifying_certificate(&self, token: &v007::ParsedToken) -> Option<String> {
        let named: Vec<(&str, &AppCertificate)> = self
            .certificates
            .iter()
            .map(|(name, cert)| (name.as_str(), cert))
            .collect();
        token.verify_any(&named).map(str::to_owned)
    }
}

impl Gate {
    /// A gate over `projects` and `policy` (whose project names were checked against them).
    pub fn new(projects: Vec<Project>, policy: Policy) -> Self {
        Self {
            projects: projects.into_iter().map(|p| (p.name.clone(), p)).collect(),
            policy,
        }
    }

    /// The configured project names.
    pub fn project_names(&self) -> impl Iterator<Item = &str> {
        self.projects.keys().map(String::as_str)
    }

    /// Decides `request` for `principal` at `now` and, if allowed, builds the token with `salt`.
    pub fn issue(
        &self,
        principal: &Principal,
        request: &Request,
        now: u64,
        salt: u32,
    ) -> Result<Issued, GateError> {
        match self.policy.evaluate(principal, request, now) {
            Decision::Allow(grant) => self.build(grant, salt),
            Decision::Deny(denial) => Err(GateError::Denied(denial)),
        }
    }

    /// Checks that `principal` may use `action` (inspect or explain), which issue nothing.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        now: u64,
    ) -> Result<(), GateError> {
        match self.policy.evaluate(principal, &Request::new(action), now) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(denial) => Err(GateError::Denied(denial)),
        }
    }

    /// A dry run of `request` with the trace of every rule. The caller must be allowed to explain.
    pub fn explain(
        &self,
        principal: &Principal,
        request: &Request,
        now: u64,
    ) -> Result<(Decision, Trace), GateError> {
        self.authorize(principal, Action::Explain, now)?;
        Ok(self.policy.explain(principal, request, now))
    }

    /// Re-issues a 007 token this service issued: it must verify against its
    /// project's certificates, and the rules are re-run for the same channel,
    /// identity, role and services, so the new token never exceeds today's grant.
    pub fn renew(
        &self,
        principal: &Principal,
        token: &str,
        channel: Option<ChannelScope>,
        lifetimes: Lifetimes,
        now: u64,
        salt: u32,
    ) -> Result<Issued, GateError> {
        let parsed = v007::parse(token)
            .map_err(|e| GateError::BadToken(format!("not a readable 007 token: {e}")))?;
        let app_id = String::from_utf8_lossy(&parsed.token.app_id).into_owned();
        let project = self
            .projects
            .values()
            .find(|p| p.app_id.as_str() == app_id)
            .ok_or_else(|| {
                GateError::BadToken("the token's App ID is not a configured project".into())
            })?;
        if project.verifying_certificate(&parsed).is_none() {
            return Err(GateError::BadToken(format!(
                "the token does not verify against project {:?}",
                project.name
            )));
        }
        let mut request = renewal_request(&parsed.token)?;
        match (&request.channel, channel) {
            (Some(own), Some(given)) if *own != given => return Err(GateError::ChannelMismatch),
            (None, given) => request.channel = given,
            _ => {}
        }
        request.project = Some(project.name.clone());
        request.token_lifetime = lifetimes.token;
        request.join_lifetime = lifetimes.join;
        request.publish_lifetime = lifetimes.publish;
        self.issue(principal, &request, now, salt)
    }

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

    /// Builds the token a grant describes, signed by the grant's project.
    fn build(&self, grant: Grant, salt: u32) -> Result<Issued, GateError> {
        let project_name = grant.project.clone().unwrap_or_default();
        let project = self
            .projects
            .get(&project_name)
            .ok_or_else(|| GateError::UnknownProject(project_name.clone()))?;
        let certificate = project
            .signing_certificate()
            .ok_or_else(|| GateError::UnknownProject(project_name.clone()))?;
        let issue_ts = u32::try_from(grant.issued_at)
            .map_err(|_| GateError::ClockOutOfRange(grant.issued_at))?;
        let issue = Issue {
            app_id: &project.app_id,
            certificate,
            issue_ts,
            salt,
        };
        let token = build_token(&issue, &grant)?;
        // The reply reports what is in the token, read back from it, so the
        // two can never disagree.
        let parsed = v007::parse(&token)
            .map_err(|e| GateError::BadToken(format!("built token does not parse: {e}")))?;
        let privileges: Vec<PrivilegeExpiry> = parsed
            .token
            .services
            .iter()
            .flat_map(|s| privilege_expiries(s.kind.service_type(), &s.privileges, issue_ts))
            .collect();
        let expires_at = grant.expires_at();
        let earliest = privileges
            .iter()
            .filter_map(|p| p.expires_at)
            .fold(expires_at, u64::min);
        let issued_at = grant.issued_at;
        Ok(Issued {
            fingerprint: Fingerprint::of(token.as_bytes()),
            token,
            app_id: project.app_id.as_str().to_owned(),
            project: project.name.clone(),
            privileges,
            issued_at,
            expires_at,
            renew_after: renew_after(issued_at, earliest),
            grant,
        })
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

/// Requested lifetimes for a renewal, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// The token lifetime.
    pub token: Option<std::num::NonZeroU32>,
    /// The join (or login) privilege lifetime.
    pub join: Option<std::num::NonZeroU32>,
    /// The publish privilege lifetime.
    pub publish: Option<std::num::NonZeroU32>,
}

/// Builds the token for `grant` with the official builder that matches it.
fn build_token(issue: &Issue<'_>, grant: &Grant) -> Result<String, GateError> {
    let token_expire = grant.token_lifetime.secs();
    let join = grant.join_lifetime.secs();
    match (grant.action, &grant.identity) {
        (Action::Issue(policy::Service::Rtc), BoundIdentity::Rtc(identity)) => {
            let channel = grant
                .channel
                .as_ref()
                .map(ChannelScope::as_str)
                .unwrap_or_default();
            let uid = identity.wire_string();
            let publish = grant.publish_lifetime.map(|l| l.secs()).unwrap_or(0);
            let privileges = RtcPrivileges {
                join,
                publish_audio: publish,
                publish_video: publish,
                publish_data: publish,
            };
            match &grant.rtm_user_id {
                Some(user) => Ok(raw::rtc_token_with_rtm2(
                    issue,
                    channel,
                    &uid,
                    grant.role,
                    token_expire,
                    privileges,
                    user.as_str(),
                    join,
                )?),
                None if grant.role == crate::domain::Role::Publisher => Ok(
                    raw::rtc_token_with_privileges(issue, channel, &uid, token_expire, privileges)?,
                ),
                None => Ok(raw::rtc_token(
                    issue,
                    channel,
                    &uid,
                    grant.role,
                    token_expire,
                    join,
                )?),
            }
        }
        (Action::Issue(policy::Service::Rtm), BoundIdentity::User(user)) => {
            if grant.rtm_permissions.is_empty() {
                Ok(raw::rtm_token(issue, user.as_str(), join)?)
            } else {
                let permissions = rtm2_permissions(&grant.rtm_permissions)?;
                Ok(raw::rtm_token_with_permissions(
                    issue,
                    user.as_str(),
                    &permissions,
                    join,
                )?)
            }
        }
        (Action::Issue(policy::Service::Chat), BoundIdentity::User(user)) => {
            Ok(raw::chat_user_token(issue, user.as_str(), join)?)
        }
        (Action::Issue(policy::Service::Chat), BoundIdentity::App) => {
            Ok(raw::chat_app_token(issue, join)?)
        }
        (Action::Issue(policy::Service::Fpa), _) => Ok(raw::fpa_token(issue)?),
        (action, identity) => Err(GateError::BadToken(format!(
            "no builder for action {action} with identity {identity:?}"
        ))),
    }
}

/// Maps the policy's RTM2 grant into the token's permission block.
fn rtm2_permissions(grants: &[policy::Rtm2Permission]) -> Result<Rtm2Permissions, GateError> {
    let mut permissions = Rtm2Permissions::new();
    for grant in grants {
        let resource = ResourceType::from_code(grant.resource_type.code())
            .ok_or_else(|| GateError::BadToken("unknown rtm2 resource type".into()))?;
        let access = PermissionType::from_code(grant.access.code())
            .ok_or_else(|| GateError::BadToken("unknown rtm2 permission type".into()))?;
        permissions.add(resource, access, grant.resources.iter().map(String::as_str));
    }
    Ok(permissions)
}

/// The request that renewing `token` amounts to: same service, channel, identity and role.
fn renewal_request(token: &v007::AccessToken2) -> Result<Request, GateError> {
    let has = |t: u16| token.services.iter().any(|s| s.kind.service_type() == t);
    for service in &token.services {
        match &service.kind {
            ServiceKind::Rtc { channel_name, uid } => {
                let channel = String::from_utf8(channel_name.clone())
                    .map_err(|_| GateError::BadToken("channel is not UTF-8".into()))?;
                let channel = if channel == "*" {
                    ChannelScope::Wildcard
                } else {
                    ChannelScope::Named(
                        crate::domain::ChannelName::parse(&channel)
                            .map_err(|e| GateError::BadToken(format!("channel: {e}")))?,
                    )
                };
                let publisher = (2..=4).any(|p| service.privileges.contains_key(&p));
                let mut request = Request::new(Action::Issue(policy::Service::Rtc));
                request.channel = Some(channel);
                request.identity = requested_identity(uid)?;
                request.role = Some(if publisher {
                    crate::domain::Role::Publisher
                } else {
                    crate::domain::Role::Subscriber
                });
                request.also_rtm = has(2);
                return Ok(request);
            }
            ServiceKind::Rtm { user_id } | ServiceKind::Rtm2 { user_id, .. } => {
                let mut request = Request::new(Action::Issue(policy::Service::Rtm));
                request.identity = RequestedIdentity::Account(utf8(user_id)?);
                return Ok(request);
            }
            ServiceKind::Chat { user_id } => {
                let mut request = Request::new(Action::Issue(policy::Service::Chat));
                request.identity = if user_id.is_empty() {
                    RequestedIdentity::App
                } else {
                    RequestedIdentity::Account(utf8(user_id)?)
                };
                return Ok(request);
            }
            _ => {}
        }
    }
    Err(GateError::BadToken(
        "the token has no RTC, RTM or Chat service to renew".into(),
    ))
}

/// The identity a token's RTC uid string stands for.
fn requested_identity(uid: &[u8]) -> Result<RequestedIdentity, GateError> {
    let text = utf8(uid)?;
    if text.is_empty() {
        return Ok(RequestedIdentity::AnyUid);
    }
    // A canonical decimal uid (no leading zero) is a numeric uid; Agora treats
    // account "123" and uid 123 alike, so this loses nothing.
    if !text.starts_with('0')
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse::<u64>()
        && let Ok(uid) = Uid::from_u64(n)
    {
        return Ok(RequestedIdentity::Uid(uid));
    }
    Ok(RequestedIdentity::Account(text))
}

fn utf8(bytes: &[u8]) -> Result<String, GateError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| GateError::BadToken("a string in the token is not UTF-8".into()))
}

/// The privileges of one service with their absolute expiries.
fn privilege_expiries(
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
            expires_at: crate::token::privilege_expires_at(issue_ts, value),
        })
        .collect()
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

/// Suggests renewing at four fifths of the way to the earliest expiry, so a
/// client always holds a valid token and the renewal has time to retry.
fn renew_after(issued_at: u64, earliest_expiry: u64) -> u64 {
    let lifetime = earliest_expiry.saturating_sub(issued_at);
    issued_at + lifetime * 4 / 5
}

/// The identity a grant bound, for replies and logs.
pub fn bound_identity_text(identity: &BoundIdentity) -> String {
    match identity {
        BoundIdentity::Rtc(RtcIdentity::Uid(uid)) => uid.to_string(),
        BoundIdentity::Rtc(RtcIdentity::Account(account)) => account.to_string(),
        BoundIdentity::Rtc(RtcIdentity::AnyUid) => "0".into(),
        BoundIdentity::User(user) => user.to_string(),
        BoundIdentity::App => "(app)".into(),
        BoundIdentity::None => String::new(),
    }
}
