//! Issuing: decide a request, then build the token its grant describes with
//! the official builder that matches it, and read the privileges back.

use super::{Gate, GateError, PrivilegeExpiry, privilege_expiries};
use crate::domain::{Fingerprint, Principal, RtcIdentity};
use crate::policy::{self, Action, BoundIdentity, ChannelScope, Decision, Grant, Request};
use crate::token::builders::{Issue, RtcPrivileges, raw};
use crate::token::services::{PermissionType, ResourceType, Rtm2Permissions};
use crate::token::v007;

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
    /// The names of the Agora services in the token, read back from it.
    pub services: Vec<&'static str>,
}

impl Issued {
    /// The rule that granted the token.
    pub fn rule(&self) -> &str {
        &self.grant.rule
    }

    /// The identity the token binds, as text for replies and logs.
    pub fn identity_text(&self) -> String {
        bound_identity_text(&self.grant.identity)
    }

    /// The RTC role, for tokens with an RTC service.
    pub fn role(&self) -> Option<crate::domain::Role> {
        (self.grant.action == Action::Issue(policy::Service::Rtc)).then_some(self.grant.role)
    }

    /// The names of the Agora services in the token (`rtc`, `rtm`, ...).
    pub fn services(&self) -> &[&'static str] {
        &self.services
    }
}

impl Gate {
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
            .map_err(|e| GateError::Bug(format!("built token does not parse: {e}")))?;
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
        let services = parsed
            .token
            .services
            .iter()
            .map(|s| s.kind.name())
            .collect();
        Ok(Issued {
            services,
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
        (action, identity) => Err(GateError::Bug(format!(
            "no builder for action {action} with identity {identity:?}"
        ))),
    }
}

/// Maps the policy's RTM2 grant into the token's permission block.
fn rtm2_permissions(grants: &[policy::Rtm2Permission]) -> Result<Rtm2Permissions, GateError> {
    let mut permissions = Rtm2Permissions::new();
    for grant in grants {
        let resource = ResourceType::from_code(grant.resource_type.code())
            .ok_or_else(|| GateError::Bug("unknown rtm2 resource type".into()))?;
        let access = PermissionType::from_code(grant.access.code())
            .ok_or_else(|| GateError::Bug("unknown rtm2 permission type".into()))?;
        permissions.add(resource, access, grant.resources.iter().map(String::as_str));
    }
    Ok(permissions)
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
