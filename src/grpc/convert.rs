//! Protobuf to domain and back. Every field is checked here, and every
//! violation is collected (not just the first) so a caller can fix a request
//! in one round trip.

use std::num::NonZeroU32;

use prost_types::{Duration, Timestamp};

use super::pb;
use crate::domain::{Account, ChannelName, Lifetime, Role, RtmUserId, Uid};
use crate::gate::{self, Diagnosis, Inspection, Issued, PrivilegeExpiry};
use crate::limits::Budget;
use crate::pipeline::{Explanation, InvalidRequest, RenewRequest};
use crate::policy::{
    self, Action, BoundIdentity, ChannelScope, Decision, Grant, Request, RequestedIdentity, Trace,
};
use crate::token::services;

/// The channel string that asks for a wildcard-channel token; no Agora channel can contain `*`.
pub const WILDCARD_CHANNEL: &str = "*";

/// `IssueRtcTokenRequest` as a policy request; `prefix` is prepended to field paths.
pub fn rtc_request(
    msg: &pb::IssueRtcTokenRequest,
    prefix: &str,
) -> Result<Request, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let mut request = Request::new(Action::Issue(policy::Service::Rtc));
    request.channel = channel(&msg.channel, at(prefix, "channel"), true, &mut errors);
    request.identity = match &msg.identity {
        None => RequestedIdentity::FromJwt,
        Some(pb::issue_rtc_token_request::Identity::Uid(0)) => RequestedIdentity::AnyUid,
        Some(pb::issue_rtc_token_request::Identity::Uid(uid)) => match Uid::new(*uid) {
            Ok(uid) => RequestedIdentity::Uid(uid),
            Err(e) => {
                errors.push(format!("{prefix}uid"), e.to_string());
                RequestedIdentity::FromJwt
            }
        },
        Some(pb::issue_rtc_token_request::Identity::Account(account)) => {
            match Account::parse(account) {
                Ok(account) => RequestedIdentity::Account(account.as_str().to_owned()),
                Err(e) => {
                    errors.push(format!("{prefix}account"), e.to_string());
                    RequestedIdentity::FromJwt
                }
            }
        }
    };
    request.role = role(msg.role, at(prefix, "role"), &mut errors);
    if let Some(lifetimes) = &msg.lifetimes {
        request.token_lifetime = lifetime(
            lifetimes.token.as_ref(),
            at(prefix, "lifetimes.token"),
            &mut errors,
        );
        request.join_lifetime = lifetime(
            lifetimes.join.as_ref(),
            at(prefix, "lifetimes.join"),
            &mut errors,
        );
        request.publish_lifetime = lifetime(
            lifetimes.publish.as_ref(),
            at(prefix, "lifetimes.publish"),
            &mut errors,
        );
    }
    request.project = project(&msg.project);
    request.also_rtm = msg.with_rtm;
    errors.into_result().map(|()| request)
}

/// `IssueRtmTokenRequest` as a policy request.
pub fn rtm_request(
    msg: &pb::IssueRtmTokenRequest,
    prefix: &str,
) -> Result<Request, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let mut request = Request::new(Action::Issue(policy::Service::Rtm));
    request.identity = user_id(&msg.user_id, at(prefix, "user_id"), &mut errors);
    request.join_lifetime = lifetime(msg.lifetime.as_ref(), at(prefix, "lifetime"), &mut errors);
    request.token_lifetime = request.join_lifetime;
    request.channel = channel(&msg.channel, at(prefix, "channel"), false, &mut errors);
    request.project = project(&msg.project);
    errors.into_result().map(|()| request)
}

/// `IssueChatTokenRequest` as a policy request.
pub fn chat_request(
    msg: &pb::IssueChatTokenRequest,
    prefix: &str,
) -> Result<Request, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let mut request = Request::new(Action::Issue(policy::Service::Chat));
    request.identity = if msg.app_token {
        if !msg.user_id.is_empty() {
            errors.push(format!("{prefix}user_id"), "must be empty for an app token");
        }
        RequestedIdentity::App
    } else {
        user_id(&msg.user_id, at(prefix, "user_id"), &mut errors)
    };
    request.join_lifetime = lifetime(msg.lifetime.as_ref(), at(prefix, "lifetime"), &mut errors);
    request.token_lifetime = request.join_lifetime;
    request.project = project(&msg.project);
    errors.into_result().map(|()| request)
}

/// A `RenewTokenRequest`: the token, its lifetimes and the optional channel
/// (for RTM and Chat tokens, which carry none), every violation collected.
pub fn renew_request(msg: &pb::RenewTokenRequest) -> Result<RenewRequest, InvalidRequest> {
    let mut errors = InvalidRequest::default();
    let lifetimes = match &msg.lifetimes {
        None => gate::Lifetimes::default(),
        Some(l) => gate::Lifetimes {
            token: lifetime(l.token.as_ref(), at("", "lifetimes.token"), &mut errors),
            join: lifetime(l.join.as_ref(), at("", "lifetimes.join"), &mut errors),
            publish: lifetime(l.publish.as_ref(), at("", "lifetimes.publish"), &mut errors),
        },
    };
    let channel = channel(&msg.channel, at("", "channel"), false, &mut errors);
    errors.into_result().map(|()| RenewRequest {
        token: msg.token.clone(),
        channel,
        lifetimes,
    })
}

/// The expectation of an `InspectTokenRequest`.
pub fn expectation(msg: &pb::InspectTokenRequest) -> gate::Expectation {
    gate::Expectation {
        channel: (!msg.expected_channel.is_empty()).then(|| msg.expected_channel.clone()),
        uid: msg
            .expected_identity
            .as_ref()
            .map(|identity| match identity {
                pb::inspect_token_request::ExpectedIdentity::ExpectedUid(uid) => {
                    crate::token::builders::raw::uid_string(*uid)
                }
                pb::inspect_token_request::ExpectedIdentity::ExpectedAccount(account) => {
                    account.clone()
                }
            }),
    }
}

/// The reply for an issued token, which it consumes: the token, the App ID
/// and the project name move into the reply instead of being copied.
pub fn issued(issued: Issued) -> pb::IssuedToken {
    let grant = &issued.grant;
    pb::IssuedToken {
        token: issued.token,
        app_id: issued.app_id,
        project: issued.project,
        channel: grant
            .channel()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default(),
        identity: identity(&grant.identity()),
        role: match grant {
            Grant::Rtc(rtc) if rtc.role() == Role::Publisher => pb::Role::Publisher as i32,
            Grant::Rtc(_) => pb::Role::Subscriber as i32,
            Grant::Rtm(_) | Grant::Chat(_) | Grant::Fpa(_) => pb::Role::Unspecified as i32,
        },
        issued_at: Some(timestamp(issued.issued_at)),
        expires_at: Some(timestamp(issued.expires_at)),
        privileges: issued.privileges.iter().map(privilege_expiry).collect(),
        renew_after: Some(timestamp(issued.renew_after)),
        matched_rule: grant.rule().to_owned(),
        token_fingerprint: issued.fingerprint.to_string(),
    }
}

/// The reply of `InspectToken`.
pub fn inspection(found: &Inspection) -> pb::InspectTokenResponse {
    pb::InspectTokenResponse {
        version: found.version.to_owned(),
        app_id: found.app_id.clone(),
        project: found.project.clone().unwrap_or_default(),
        certificate: found.certificate.clone().unwrap_or_default(),
        signature_valid: found.signature_valid,
        issued_at: found.issued_at.map(timestamp),
        expires_at: Some(timestamp(found.expires_at)),
        salt: found.salt,
        services: found
            .services
            .iter()
            .map(|s| pb::InspectedService {
                service: service_enum(s.service_type),
                r#type: u32::from(s.service_type),
                privileges: s
                    .privileges
                    .iter()
                    .map(|p| pb::InspectedPrivilege {
                        id: u32::from(p.privilege),
                        name: privilege_name(p.service_type, p.privilege).to_owned(),
                        value: p.value,
                        expires_at: p.expires_at.map(timestamp),
                    })
                    .collect(),
                channel: s.channel.clone(),
                uid: s.uid.clone(),
                user_id: s.user_id.clone(),
            })
            .collect(),
        diagnoses: found.diagnoses.iter().map(diagnosis).collect(),
        token_fingerprint: found.fingerprint.to_string(),
    }
}

/// The reply of `ExplainAccess`.
pub fn explanation(explained: &Explanation) -> pb::ExplainAccessResponse {
    let mut reply = explanation_of(&explained.decision, &explained.trace);
    reply.limits = explained.limits.iter().map(limit_budget).collect();
    reply
}

/// One limit's budget.
fn limit_budget(budget: &Budget) -> pb::LimitBudget {
    pb::LimitBudget {
        name: budget.limit.to_string(),
        key: budget.key.clone(),
        rate: budget.rate.clone(),
        burst: budget.burst,
        remaining: budget.remaining,
        retry_after: budget.retry_after.map(|wait| Duration {
            seconds: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(wait.subsec_nanos()).unwrap_or(0),
        }),
        backend: budget
            .backend
            .map_or("unavailable", |backend| backend.as_str())
            .to_owned(),
    }
}

/// The decision and trace of `ExplainAccess`.
fn explanation_of(decision: &Decision, trace: &Trace) -> pb::ExplainAccessResponse {
    let rules = trace
        .rules
        .iter()
        .map(|r| pb::RuleTrace {
            index: u32::try_from(r.index).unwrap_or(u32::MAX),
            rule: r.name.clone(),
            matched: matches!(r.outcome, policy::RuleOutcome::Matched { .. }),
            detail: r.outcome.to_string(),
            facts: r.facts.iter().map(fact_trace).collect(),
        })
        .collect();
    match decision {
        Decision::Allow(grant) => pb::ExplainAccessResponse {
            decision: pb::Decision::Allow as i32,
            deny_reason: String::new(),
            matched_rule: grant.rule().to_owned(),
            trace: rules,
            grant: describe_grant(grant),
            limits: Vec::new(),
        },
        // ExplainAccess explains issue requests only, so a permit cannot
        // reach here; it is still an allow, with nothing issued to describe.
        Decision::Permit(permit) => pb::ExplainAccessResponse {
            decision: pb::Decision::Allow as i32,
            deny_reason: String::new(),
            matched_rule: permit.rule.clone(),
            trace: rules,
            grant: format!("{} issues nothing", permit.action),
            limits: Vec::new(),
        },
        Decision::Deny(denial) => pb::ExplainAccessResponse {
            decision: pb::Decision::Deny as i32,
            deny_reason: denial.reason.as_str().to_owned(),
            matched_rule: denial.rule.clone().unwrap_or_default(),
            trace: rules,
            grant: String::new(),
            limits: Vec::new(),
        },
    }
}

/// One fact a rule read, for ExplainAccess.
fn fact_trace(fact: &policy::FactTrace) -> pb::FactTrace {
    let (value_json, error) = match &fact.result {
        Ok(json) => (json.clone(), String::new()),
        Err(reason) => (String::new(), reason.clone()),
    };
    pb::FactTrace {
        name: fact.name.clone(),
        inputs: fact.inputs.clone(),
        value_json,
        error,
        cached: fact.cached,
        took: Some(prost_types::Duration {
            seconds: i64::try_from(fact.elapsed_us / 1_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from((fact.elapsed_us % 1_000_000) * 1_000).unwrap_or(0),
        }),
    }
}

/// A one-line description of a grant, for `ExplainAccess` and logs.
pub fn describe_grant(grant: &Grant) -> String {
    let terms = grant.terms();
    let mut text = format!(
        "{} for {} as {} in project {}: token {}s, join {}s",
        grant.action(),
        gate::bound_identity_text(&grant.identity()),
        grant.role(),
        terms.project,
        terms.token_lifetime.secs(),
        terms.join_lifetime.secs(),
    );
    if let Some(channel) = grant.channel() {
        text.push_str(&format!(", channel {channel}"));
    }
    match grant {
        Grant::Rtc(rtc) => {
            if let Some(publish) = rtc.publish_lifetime {
                text.push_str(&format!(", publish {}s", publish.secs()));
            }
            if rtc.rtm_user_id.is_some() {
                text.push_str(", with RTM login");
            }
        }
        Grant::Rtm(rtm) if !rtm.permissions.is_empty() => {
            text.push_str(&format!(", {} RTM2 permission sets", rtm.permissions.len()));
        }
        Grant::Rtm(_) | Grant::Chat(_) | Grant::Fpa(_) => {}
    }
    text
}

fn channel(
    text: &str,
    path: Field<'_>,
    required: bool,
    errors: &mut InvalidRequest,
) -> Option<ChannelScope> {
    if text.is_empty() && !required {
        return None;
    }
    if text == WILDCARD_CHANNEL {
        return Some(ChannelScope::Wildcard);
    }
    match ChannelName::parse(text) {
        Ok(name) => Some(ChannelScope::Named(name)),
        Err(e) => {
            errors.push(path.path(), e.to_string());
            None
        }
    }
}

fn user_id(text: &str, path: Field<'_>, errors: &mut InvalidRequest) -> RequestedIdentity {
    if text.is_empty() {
        return RequestedIdentity::FromJwt;
    }
    match RtmUserId::parse(text) {
        Ok(user) => RequestedIdentity::Account(user.as_str().to_owned()),
        Err(e) => {
            errors.push(path.path(), e.to_string());
            RequestedIdentity::FromJwt
        }
    }
}

fn role(value: i32, path: Field<'_>, errors: &mut InvalidRequest) -> Option<Role> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Publisher) => Some(Role::Publisher),
        Ok(pb::Role::Subscriber) => Some(Role::Subscriber),
        Ok(pb::Role::Unspecified) => {
            errors.push(path.path(), "required: ROLE_PUBLISHER or ROLE_SUBSCRIBER");
            None
        }
        Err(_) => {
            errors.push(path.path(), format!("{value} is not a known role"));
            None
        }
    }
}

/// A lifetime of 1 s to 24 h in whole seconds; unset means "the rule's default".
fn lifetime(
    value: Option<&Duration>,
    path: Field<'_>,
    errors: &mut InvalidRequest,
) -> Option<NonZeroU32> {
    let duration = value?;
    if duration.nanos != 0 {
        errors.push(path.path(), "must be whole seconds");
        return None;
    }
    match u64::try_from(duration.seconds)
        .map_err(|_| ())
        .and_then(|s| Lifetime::from_secs(s).map_err(|_| ()))
    {
        Ok(lifetime) => NonZeroU32::new(lifetime.secs()),
        Err(()) => {
            errors.push(
                path.path(),
                format!(
                    "{}s is outside 1s..=86400s (Agora caps lifetimes at 24 hours)",
                    duration.seconds
                ),
            );
            None
        }
    }
}

/// A request field's path (`prefix` + `name`), formatted only when a
/// violation names it, so a valid request allocates nothing for field names.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    prefix: &'a str,
    name: &'a str,
}

fn at<'a>(prefix: &'a str, name: &'a str) -> Field<'a> {
    Field { prefix, name }
}

impl Field<'_> {
    fn path(self) -> String {
        format!("{}{}", self.prefix, self.name)
    }
}

fn project(name: &str) -> Option<String> {
    (!name.is_empty()).then(|| name.to_owned())
}

fn identity(identity: &BoundIdentity) -> Option<pb::issued_token::Identity> {
    use crate::domain::RtcIdentity;
    use pb::issued_token::Identity;
    match identity {
        BoundIdentity::Rtc(RtcIdentity::Uid(uid)) => Some(Identity::Uid(uid.get())),
        BoundIdentity::Rtc(RtcIdentity::AnyUid) => Some(Identity::Uid(0)),
        BoundIdentity::Rtc(RtcIdentity::Account(account)) => {
            Some(Identity::Account(account.as_str().to_owned()))
        }
        BoundIdentity::User(user) => Some(Identity::UserId(user.as_str().to_owned())),
        BoundIdentity::App => None,
    }
}

fn privilege_expiry(p: &PrivilegeExpiry) -> pb::PrivilegeExpiry {
    pb::PrivilegeExpiry {
        service: service_enum(p.service_type),
        privilege: privilege_name(p.service_type, p.privilege).to_owned(),
        expires_at: p.expires_at.map(timestamp),
    }
}

fn diagnosis(d: &Diagnosis) -> pb::Diagnosis {
    pb::Diagnosis {
        agora_error: d.agora_error,
        code: d.code.to_owned(),
        message: d.message.clone(),
    }
}

fn service_enum(service_type: u16) -> i32 {
    match pb::Service::try_from(i32::from(service_type)) {
        Ok(service) => service as i32,
        Err(_) => pb::Service::Unspecified as i32,
    }
}

/// The snake_case name of a privilege (spec §2.5), from the token core's one table.
fn privilege_name(service_type: u16, privilege: u16) -> &'static str {
    services::privilege_snake_name(service_type, privilege).unwrap_or("unknown")
}

/// A unix time as a protobuf timestamp (saturating far beyond any token's range).
pub fn timestamp(unix: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(unix).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtc(channel: &str) -> pb::IssueRtcTokenRequest {
        pb::IssueRtcTokenRequest {
            channel: channel.into(),
            role: pb::Role::Publisher as i32,
            ..Default::default()
        }
    }

    fn fields(result: Result<Request, InvalidRequest>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(e) => e.violations.into_iter().map(|(f, _)| f).collect(),
        }
    }

    #[test]
    fn rtc_requests_check_every_field() {
        let cases: Vec<(pb::IssueRtcTokenRequest, Vec<&str>)> = vec![
            (rtc("room-1"), vec![]),
            (rtc(""), vec!["channel"]),
            (rtc("bad/channel"), vec!["channel"]),
            (rtc(&"x".repeat(64)), vec!["channel"]),
            (
                pb::IssueRtcTokenRequest {
                    role: 0,
                    ..rtc("a")
                },
                vec!["role"],
            ),
            (
                pb::IssueRtcTokenRequest {
                    role: 9,
                    ..rtc("a")
                },
                vec!["role"],
            ),
            (
                pb::IssueRtcTokenRequest {
                    identity: Some(pb::issue_rtc_token_request::Identity::Account(String::new())),
                    ..rtc("a")
                },
                vec!["account"],
            ),
            (
                pb::IssueRtcTokenRequest {
                    lifetimes: Some(pb::Lifetimes {
                        token: Some(Duration {
                            seconds: 86_401,
                            nanos: 0,
                        }),
                        join: Some(Duration {
                            seconds: 0,
                            nanos: 0,
                        }),
                        publish: Some(Duration {
                            seconds: 10,
                            nanos: 5,
                        }),
                    }),
                    ..rtc("")
                },
                vec![
                    "channel",
                    "lifetimes.token",
                    "lifetimes.join",
                    "lifetimes.publish",
                ],
            ),
        ];
        for (msg, expected) in cases {
            assert_eq!(fields(rtc_request(&msg, "")), expected, "{msg:?}");
        }
    }

    #[test]
    fn uid_zero_is_an_explicit_wildcard_and_unset_binds_from_the_jwt() {
        let any = pb::IssueRtcTokenRequest {
            identity: Some(pb::issue_rtc_token_request::Identity::Uid(0)),
            ..rtc("a")
        };
        assert_eq!(
            rtc_request(&any, "").unwrap().identity,
            RequestedIdentity::AnyUid
        );
        assert_eq!(
            rtc_request(&rtc("a"), "").unwrap().identity,
            RequestedIdentity::FromJwt
        );
        assert_eq!(
            rtc_request(&rtc("*"), "").unwrap().channel,
            Some(ChannelScope::Wildcard)
        );
    }

    #[test]
    fn prefixes_name_nested_fields() {
        assert_eq!(fields(rtc_request(&rtc(""), "rtc.")), vec!["rtc.channel"]);
    }

    #[test]
    fn chat_app_tokens_take_no_user() {
        let msg = pb::IssueChatTokenRequest {
            app_token: true,
            user_id: "u".into(),
            ..Default::default()
        };
        assert_eq!(fields(chat_request(&msg, "")), vec!["user_id"]);
    }
}
