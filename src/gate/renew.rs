//! Renewing: a 007 token this service issued is verified against its
//! project's certificates and turned back into the request it answered, and
//! the rules are re-run, so a renewal can never widen a grant.

use super::{Gate, GateError};
use crate::domain::Uid;
use crate::policy::{self, Action, Caller, ChannelScope, Request, RequestedIdentity};
use crate::token::builders::{RTC_PUBLISH_AUDIO, RTC_PUBLISH_DATA, RTC_PUBLISH_VIDEO};
use crate::token::services::{SERVICE_RTM, ServiceKind};
use crate::token::v007;

use super::issue::Issued;

impl Gate {
    /// Re-issues a 007 token this service issued: it must verify against its
    /// project's certificates, and the rules are re-run for the same channel,
    /// identity, role and services, so the new token never exceeds today's grant.
    pub fn renew(
        &self,
        caller: Caller<'_>,
        token: &str,
        channel: Option<ChannelScope>,
        lifetimes: Lifetimes,
        now: u64,
        salt: u32,
    ) -> Result<Issued, GateError> {
        let request = self.renewal(token, channel, lifetimes)?;
        self.issue(caller, &request, now, salt)
    }

    /// The request that renewing `token` amounts to, once it verifies
    /// against its project's certificates: the first step of
    /// [`Gate::renew`], before the rules are re-run.
    pub fn renewal(
        &self,
        token: &str,
        channel: Option<ChannelScope>,
        lifetimes: Lifetimes,
    ) -> Result<Request, GateError> {
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
        Ok(request)
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
                let publisher = [RTC_PUBLISH_AUDIO, RTC_PUBLISH_VIDEO, RTC_PUBLISH_DATA]
                    .iter()
                    .any(|p| service.privileges.contains_key(p));
                let mut request = Request::new(Action::Issue(policy::Service::Rtc));
                request.channel = Some(channel);
                request.identity = requested_identity(uid)?;
                request.role = Some(if publisher {
                    crate::domain::Role::Publisher
                } else {
                    crate::domain::Role::Subscriber
                });
                request.also_rtm = has(SERVICE_RTM);
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
    // A canonical decimal uid (no leading zero) is on the wire both uid 123
    // and account "123": the token cannot say which was issued, so the
    // policy binds it as whatever the rule binds (a uid or an account), and
    // the identity must still equal the bound one.
    if !text.starts_with('0')
        && text.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = text.parse::<u64>()
        && let Ok(uid) = Uid::from_u64(n)
    {
        return Ok(RequestedIdentity::UidOrAccount(uid));
    }
    Ok(RequestedIdentity::Account(text))
}

fn utf8(bytes: &[u8]) -> Result<String, GateError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| GateError::BadToken("a string in the token is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_uid_string_is_read_as_what_it_can_stand_for() {
        let uid = |n| RequestedIdentity::UidOrAccount(Uid::new(n).unwrap());
        let account = |s: &str| RequestedIdentity::Account(s.to_owned());
        let cases = [
            ("", RequestedIdentity::AnyUid),
            // Uid 4242 and account "4242" are the same bytes: the rule decides.
            ("4242", uid(4242)),
            ("4294967295", uid(u32::MAX)),
            // Not a canonical uid: only an account can have made these.
            ("04242", account("04242")),
            ("0", account("0")),
            ("4294967296", account("4294967296")),
            ("alice", account("alice")),
        ];
        for (text, expected) in cases {
            assert_eq!(
                requested_identity(text.as_bytes()).unwrap(),
                expected,
                "{text:?}"
            );
        }
    }
}
