//! Evaluation: walk the rules in order, the first match decides, then build
//! the grant within that rule's limits.
//!
//! Nothing here reads the clock: `now` is an argument and only stamps the grant.

use std::num::NonZeroU32;

use crate::domain::{Account, ClaimValue, Lifetime, Principal, Role, RtcIdentity, RtmUserId, Uid};

use super::Policy;
use super::compile::{Binding, Lifetimes, Rule};
use super::condition::{Activation, ConditionFailure};
use super::config::Effect;
use super::decision::{BoundIdentity, Decision, Denial, DenyReason, Grant, Rtm2Permission};
use super::pattern::Captures;
use super::request::{Action, ChannelScope, Request, RequestedIdentity, Service};
use super::trace::{RuleOutcome, RuleTrace, Trace};

/// The result of matching one rule.
enum Match<'a> {
    /// The rule applies, with these captures.
    Yes(Captures<'a>),
    /// The rule does not apply, for this reason.
    No(Miss<'a>),
    /// A deny rule's condition failed: fail closed.
    Failed(&'a str, String),
}

/// Why a rule did not match, borrowed so that `evaluate` allocates nothing
/// for the rules it skips; it becomes a [`RuleOutcome`] only when tracing.
enum Miss<'a> {
    /// See [`RuleOutcome::ActionNotListed`].
    Action,
    /// See [`RuleOutcome::IssuerMismatch`].
    Issuer,
    /// See [`RuleOutcome::ProjectMismatch`].
    Project,
    /// See [`RuleOutcome::NoChannel`].
    NoChannel,
    /// See [`RuleOutcome::ChannelMismatch`].
    Channel(&'a str),
    /// See [`RuleOutcome::ConditionFalse`].
    ConditionFalse(&'a str),
    /// See [`RuleOutcome::ConditionFailed`].
    ConditionFailed(&'a str, String),
}

/// An identity before it is shaped for a service.
enum Candidate<'a> {
    /// A numeric uid.
    Uid(Uid),
    /// A string.
    Text(&'a str),
}

/// Where a candidate identity came from, for the deny reason when it is malformed.
#[derive(Clone, Copy)]
enum Origin {
    /// From the JWT claims.
    Claim,
    /// From the request.
    Request,
}

/// A deny reason with its detail.
type Refusal = (DenyReason, String);

/// The lifetimes granted.
struct Granted {
    token: Lifetime,
    join: Lifetime,
    publish: Option<Lifetime>,
    clamped: bool,
}

impl Policy {
    /// Decides `request` for `principal` at `now` (unix seconds).
    pub fn evaluate(&self, principal: &Principal, request: &Request, now: u64) -> Decision {
        self.decide(principal, request, now, None)
    }

    /// Decides like [`Policy::evaluate`] and explains how.
    pub fn explain(&self, principal: &Principal, request: &Request, now: u64) -> (Decision, Trace) {
        let mut trace = Trace::new();
        let decision = self.decide(principal, request, now, Some(&mut trace));
        trace.decision = Some(decision.clone());
        (decision, trace)
    }

    /// The shared walk; records into `trace` when given one.
    fn decide(
        &self,
        principal: &Principal,
        request: &Request,
        now: u64,
        mut trace: Option<&mut Trace>,
    ) -> Decision {
        if let Some(denial) = self.check_project(request, &mut trace) {
            return denial;
        }
        // Built on first use: most requests are decided by pattern or action
        // before any condition runs, and a failed build fails every condition.
        let mut activation: Option<Result<Activation<'_>, String>> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            match self.match_rule(rule, principal, request, now, &mut activation) {
                Match::No(why) => note(&mut trace, index, rule, || why.into_outcome()),
                Match::Failed(condition, error) => {
                    note(&mut trace, index, rule, || RuleOutcome::ConditionFailed {
                        condition: condition.to_owned(),
                        error,
                    });
                    let detail = "a deny rule's condition failed, so the request is refused";
                    return deny(DenyReason::ConditionError, Some(rule), detail.to_owned());
                }
                Match::Yes(captures) => {
                    note(&mut trace, index, rule, || RuleOutcome::Matched {
                        captures: captures
                            .iter()
                            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                            .collect(),
                    });
                    return match rule.effect {
                        Effect::Deny => {
                            let detail = "a deny rule matched".to_owned();
                            deny(DenyReason::DeniedByRule, Some(rule), detail)
                        }
                        Effect::Allow => grant(rule, principal, request, &captures, now),
                    };
                }
            }
        }
        let detail = "no rule matched the request".to_owned();
        deny(DenyReason::NoMatchingRule, None, detail)
    }

    /// Refuses a request for a project that is not configured, before any rule.
    fn check_project(&self, request: &Request, trace: &mut Option<&mut Trace>) -> Option<Decision> {
        let project = request.project.as_ref()?;
        if self.projects.contains(project) {
            return None;
        }
        let detail = "the requested project is not configured".to_owned();
        if let Some(t) = trace.as_deref_mut() {
            t.precheck = Some(detail.clone());
        }
        Some(deny(DenyReason::UnknownProject, None, detail))
    }

    /// Whether `rule` matches: action, issuer, project, channel, then condition.
    fn match_rule<'a>(
        &self,
        rule: &'a Rule,
        principal: &'a Principal,
        request: &'a Request,
        now: u64,
        activation: &mut Option<Result<Activation<'a>, String>>,
    ) -> Match<'a> {
        if !rule.actions.contains(&request.action) {
            return Match::No(Miss::Action);
        }
        if rule
            .issuer
            .as_ref()
            .is_some_and(|iss| *iss != principal.issuer)
        {
            return Match::No(Miss::Issuer);
        }
        if let (Some(wanted), Some(own)) = (&request.project, &rule.project)
            && wanted != own
        {
            return Match::No(Miss::Project);
        }
        let captures = match (&rule.channel, &request.channel) {
            (None, _) => Vec::new(),
            (Some(_), None) => return Match::No(Miss::NoChannel),
            (Some(p), Some(ChannelScope::Wildcard)) if p.is_star() => Vec::new(),
            (Some(p), Some(ChannelScope::Named(name))) => match p.matches(name.as_str()) {
                Some(captures) => captures,
                None => return Match::No(Miss::Channel(p.as_str())),
            },
            (Some(p), Some(ChannelScope::Wildcard)) => return Match::No(Miss::Channel(p.as_str())),
        };
        let Some(condition) = &rule.condition else {
            return Match::Yes(captures);
        };
        let activation =
            activation.get_or_insert_with(|| Activation::new(&self.env, principal, request, now));
        let result = match activation {
            Ok(activation) => condition.evaluate(activation, &captures),
            Err(e) => Err(ConditionFailure::Error(e.clone())),
        };
        match result {
            Ok(true) => Match::Yes(captures),
            Ok(false) => Match::No(Miss::ConditionFalse(condition.as_str())),
            Err(failure) if rule.effect == Effect::Deny => {
                Match::Failed(condition.as_str(), failure.to_string())
            }
            Err(failure) => Match::No(Miss::ConditionFailed(
                condition.as_str(),
                failure.to_string(),
            )),
        }
    }
}

/// Records a rule's outcome when tracing; `outcome` runs only then, so
/// `evaluate` pays nothing for it.
fn note(
    trace: &mut Option<&mut Trace>,
    index: usize,
    rule: &Rule,
    outcome: impl FnOnce() -> RuleOutcome,
) {
    if let Some(t) = trace.as_deref_mut() {
        t.rules.push(RuleTrace {
            index,
            name: rule.name.clone(),
            outcome: outcome(),
        });
    }
}

impl Miss<'_> {
    /// The owned form for a trace.
    fn into_outcome(self) -> RuleOutcome {
        match self {
            Miss::Action => RuleOutcome::ActionNotListed,
            Miss::Issuer => RuleOutcome::IssuerMismatch,
            Miss::Project => RuleOutcome::ProjectMismatch,
            Miss::NoChannel => RuleOutcome::NoChannel,
            Miss::Channel(pattern) => RuleOutcome::ChannelMismatch {
                pattern: pattern.to_owned(),
            },
            Miss::ConditionFalse(condition) => RuleOutcome::ConditionFalse {
                condition: condition.to_owned(),
            },
            Miss::ConditionFailed(condition, error) => RuleOutcome::ConditionFailed {
                condition: condition.to_owned(),
                error,
            },
        }
    }
}

/// A denial, by `rule` if one decided.
fn deny(reason: DenyReason, rule: Option<&Rule>, detail: String) -> Decision {
    Decision::Deny(Denial {
        reason,
        rule: rule.map(|r| r.name.clone()),
        detail,
    })
}

/// Builds the grant of the allow rule that matched, or the denial of its limits.
fn grant(
    rule: &Rule,
    principal: &Principal,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Decision {
    match build_grant(rule, principal, request, captures, now) {
        Ok(grant) => Decision::Allow(grant),
        Err((reason, detail)) => deny(reason, Some(rule), detail),
    }
}

/// The grant's fields, each checked against the rule.
fn build_grant(
    rule: &Rule,
    principal: &Principal,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Result<Grant, Refusal> {
    let channel = check_channel(rule, request)?;
    let role = check_role(rule, request)?;
    let identity = bind_identity(rule, principal, request)?;
    let rtm_user_id = also_rtm(rule, request, &identity)?;
    let lifetimes = grant_lifetimes(&rule.lifetimes, request, role)?;
    let rtm_permissions = match request.action {
        Action::Issue(Service::Rtm) => render_permissions(rule, captures),
        _ => Vec::new(),
    };
    Ok(Grant {
        rule: rule.name.clone(),
        action: request.action,
        project: match request.action {
            Action::Issue(_) => rule.project.clone(),
            Action::Inspect | Action::Explain => None,
        },
        channel,
        identity,
        role,
        issued_at: now,
        token_lifetime: lifetimes.token,
        join_lifetime: lifetimes.join,
        publish_lifetime: lifetimes.publish,
        rtm_user_id,
        rtm_permissions,
        app_token_allowed: rule.allow_app_token,
        clamped: lifetimes.clamped,
    })
}

/// RTC needs a channel; the wildcard needs `allow_wildcard_channel`.
fn check_channel(rule: &Rule, request: &Request) -> Result<Option<ChannelScope>, Refusal> {
    match (&request.channel, request.action) {
        (None, Action::Issue(Service::Rtc)) => Err((
            DenyReason::ChannelRequired,
            "an rtc token needs a channel".to_owned(),
        )),
        (Some(ChannelScope::Wildcard), _) if !rule.allow_wildcard_channel => Err((
            DenyReason::WildcardChannelNotAllowed,
            "the wildcard channel needs allow_wildcard_channel = true".to_owned(),
        )),
        (channel, _) => Ok(channel.clone()),
    }
}

/// The RTC role must not exceed `max_role`; other services are subscribers.
fn check_role(rule: &Rule, request: &Request) -> Result<Role, Refusal> {
    if request.action != Action::Issue(Service::Rtc) {
        return Ok(Role::Subscriber);
    }
    let wanted = request.requested_role();
    if wanted > rule.max_role {
        return Err((
            DenyReason::RoleNotAllowed,
            format!("{wanted} is above the rule's max_role {}", rule.max_role),
        ));
    }
    Ok(wanted)
}

/// Binds the identity the token admits, per the rule and the request.
fn bind_identity(
    rule: &Rule,
    principal: &Principal,
    request: &Request,
) -> Result<BoundIdentity, Refusal> {
    let service = match request.action {
        Action::Issue(Service::Fpa) => return fpa(&request.identity),
        Action::Issue(service) => service,
        Action::Inspect | Action::Explain => return Ok(BoundIdentity::None),
    };
    match &request.identity {
        RequestedIdentity::AnyUid => return any_uid(rule, service),
        RequestedIdentity::App => return app(rule, service),
        RequestedIdentity::FromJwt | RequestedIdentity::Uid(_) | RequestedIdentity::Account(_) => {}
    }
    let requested = match &request.identity {
        RequestedIdentity::Uid(uid) => Some(shape(service, Candidate::Uid(*uid), Origin::Request)?),
        RequestedIdentity::Account(text) => {
            Some(shape(service, Candidate::Text(text), Origin::Request)?)
        }
        _ => None,
    };
    let bound = match &rule.binding {
        Binding::CallerChooses => None,
        Binding::UidClaim(claim) => {
            Some(shape(service, uid_claim(principal, claim)?, Origin::Claim)?)
        }
        Binding::AccountClaim(claim) => Some(shape(
            service,
            account_claim(principal, claim)?,
            Origin::Claim,
        )?),
        Binding::Unbound => None,
    };
    match (bound, requested) {
        (Some(bound), None) => Ok(bound),
        (Some(bound), Some(requested)) if bound == requested => Ok(bound),
        (Some(_), Some(_)) => Err((
            DenyReason::IdentityNotAllowed,
            "the requested identity is not the one the JWT binds".to_owned(),
        )),
        (None, Some(requested)) => Ok(requested),
        (None, None) => Err((
            DenyReason::IdentityRequired,
            "the rule lets the caller choose the identity and the request names none".to_owned(),
        )),
    }
}

/// FPA tokens are project-level: naming a user is refused rather than ignored.
fn fpa(requested: &RequestedIdentity) -> Result<BoundIdentity, Refusal> {
    match requested {
        RequestedIdentity::FromJwt | RequestedIdentity::App => Ok(BoundIdentity::App),
        _ => Err((
            DenyReason::IdentityNotAllowed,
            "fpa tokens admit no user; do not name an identity".to_owned(),
        )),
    }
}

/// uid 0: RTC only, and only with `allow_wildcard_uid`.
fn any_uid(rule: &Rule, service: Service) -> Result<BoundIdentity, Refusal> {
    if service != Service::Rtc {
        return Err((
            DenyReason::IdentityNotAllowed,
            format!(
                "uid 0 (any user) exists only for rtc, not {}",
                service.as_str()
            ),
        ));
    }
    if !rule.allow_wildcard_uid {
        return Err((
            DenyReason::WildcardUidNotAllowed,
            "uid 0 (any user) needs allow_wildcard_uid = true".to_owned(),
        ));
    }
    Ok(BoundIdentity::Rtc(RtcIdentity::AnyUid))
}

/// An app-level token: Chat only, and only with `allow_app_token`.
fn app(rule: &Rule, service: Service) -> Result<BoundIdentity, Refusal> {
    if service != Service::Chat {
        return Err((
            DenyReason::IdentityNotAllowed,
            format!(
                "app-level tokens exist only for chat, not {}",
                service.as_str()
            ),
        ));
    }
    if !rule.allow_app_token {
        return Err((
            DenyReason::AppTokenNotAllowed,
            "an app-level token needs allow_app_token = true".to_owned(),
        ));
    }
    Ok(BoundIdentity::App)
}

/// Reads a uid claim: an integer in 1..=4294967295, never truncated, never from a string.
fn uid_claim<'a>(principal: &'a Principal, claim: &str) -> Result<Candidate<'a>, Refusal> {
    let bad = || {
        (
            DenyReason::BadIdentityClaim,
            format!("claim {claim:?} is not an integer in 1..=4294967295"),
        )
    };
    let value = match principal.claims.get(claim) {
        None | Some(ClaimValue::Null) => return Err(missing(claim)),
        Some(ClaimValue::Int(i)) => u64::try_from(*i).map_err(|_| bad())?,
        Some(ClaimValue::UInt(u)) => *u,
        Some(_) => return Err(bad()),
    };
    Uid::from_u64(value).map(Candidate::Uid).map_err(|_| bad())
}

/// Reads an account claim: a string; `sub` is the verified subject.
fn account_claim<'a>(principal: &'a Principal, claim: &str) -> Result<Candidate<'a>, Refusal> {
    if claim == "sub" {
        return Ok(Candidate::Text(&principal.subject));
    }
    match principal.claims.get(claim) {
        None | Some(ClaimValue::Null) => Err(missing(claim)),
        Some(ClaimValue::String(s)) => Ok(Candidate::Text(s)),
        Some(_) => Err((
            DenyReason::BadIdentityClaim,
            format!("claim {claim:?} is not a string"),
        )),
    }
}

/// The refusal for an absent identity claim.
fn missing(claim: &str) -> Refusal {
    (
        DenyReason::MissingIdentityClaim,
        format!("the JWT has no {claim:?} claim to bind the identity from"),
    )
}

/// Shapes a candidate for `service`: an RTC uid or account, or an RTM / Chat user id.
fn shape(
    service: Service,
    candidate: Candidate<'_>,
    origin: Origin,
) -> Result<BoundIdentity, Refusal> {
    let shaped = match (service, candidate) {
        (Service::Rtc, Candidate::Uid(uid)) => Ok(BoundIdentity::Rtc(RtcIdentity::Uid(uid))),
        (Service::Rtc, Candidate::Text(text)) => {
            Account::parse(text).map(|a| BoundIdentity::Rtc(RtcIdentity::Account(a)))
        }
        (_, Candidate::Uid(uid)) => {
            RtmUserId::parse(&uid.get().to_string()).map(BoundIdentity::User)
        }
        (_, Candidate::Text(text)) => RtmUserId::parse(text).map(BoundIdentity::User),
    };
    shaped.map_err(|e| match origin {
        Origin::Claim => (
            DenyReason::BadIdentityClaim,
            format!(
                "the identity claim is not a valid {} identity: {}",
                service.as_str(),
                limit_only(&e)
            ),
        ),
        Origin::Request => (
            DenyReason::InvalidRequestedIdentity,
            format!(
                "the requested identity is not a valid {} identity: {}",
                service.as_str(),
                limit_only(&e)
            ),
        ),
    })
}

/// The broken limit without the offending text, which may be personal data.
fn limit_only(error: &crate::domain::InvalidValue) -> String {
    use crate::domain::InvalidValue;
    match error {
        InvalidValue::Empty { .. } => "it is empty".to_owned(),
        InvalidValue::TooLong { len, max, .. } => {
            format!("it is {len} bytes, the maximum is {max}")
        }
        InvalidValue::BadCharacter { at, .. } => {
            format!("it has a disallowed character at byte {at}")
        }
        other => other.to_string(),
    }
}

/// For RTC with `also_rtm`: the rule must list `rtm`; the RTM id is the RTC identity's text.
fn also_rtm(
    rule: &Rule,
    request: &Request,
    identity: &BoundIdentity,
) -> Result<Option<RtmUserId>, Refusal> {
    if !request.also_rtm || request.action != Action::Issue(Service::Rtc) {
        return Ok(None);
    }
    if !rule.actions.contains(&Action::Issue(Service::Rtm)) {
        return Err((
            DenyReason::ActionNotAllowed,
            "also_rtm needs a rule that lists rtm in its actions".to_owned(),
        ));
    }
    let text = match identity {
        BoundIdentity::Rtc(RtcIdentity::AnyUid) => {
            return Err((
                DenyReason::IdentityNotAllowed,
                "an rtm login needs a user, not uid 0".to_owned(),
            ));
        }
        BoundIdentity::Rtc(rtc) => rtc.wire_string(),
        _ => return Ok(None),
    };
    RtmUserId::parse(&text).map(Some).map_err(|e| {
        (
            DenyReason::IdentityNotAllowed,
            format!(
                "the identity is not a valid rtm user id: {}",
                limit_only(&e)
            ),
        )
    })
}

/// Applies the rule's default and maximum lifetimes to the request.
fn grant_lifetimes(limits: &Lifetimes, request: &Request, role: Role) -> Result<Granted, Refusal> {
    let mut clamped = false;
    let token = fit(
        "token",
        request.token_lifetime,
        limits.default,
        limits.max,
        limits.clamp,
        &mut clamped,
    )?;
    let join_default = limits.join.unwrap_or(token);
    let join_max = limits.join.unwrap_or(limits.max);
    let join = fit(
        "join",
        request.join_lifetime,
        join_default,
        join_max,
        limits.clamp,
        &mut clamped,
    )?;
    let publish = match role {
        Role::Publisher => {
            let default = limits.publish.unwrap_or(token);
            let max = limits.publish.unwrap_or(limits.max);
            Some(fit(
                "publish",
                request.publish_lifetime,
                default,
                max,
                limits.clamp,
                &mut clamped,
            )?)
        }
        Role::Subscriber => None,
    };
    Ok(Granted {
        token,
        join,
        publish,
        clamped,
    })
}

/// The requested lifetime, or the default; above `max` it is clamped or refused.
fn fit(
    what: &str,
    requested: Option<NonZeroU32>,
    default: Lifetime,
    max: Lifetime,
    clamp: bool,
    clamped: &mut bool,
) -> Result<Lifetime, Refusal> {
    let Some(secs) = requested else {
        return Ok(default);
    };
    if secs.get() <= max.secs() {
        // In 1..=max, so within Lifetime's range; the fallback is unreachable.
        return Ok(Lifetime::from_secs(u64::from(secs.get())).unwrap_or(max));
    }
    if clamp {
        *clamped = true;
        return Ok(max);
    }
    Err((
        DenyReason::TtlTooLong,
        format!(
            "the requested {what} lifetime {}s is above the rule's maximum {}s",
            secs.get(),
            max.secs()
        ),
    ))
}

/// The rule's RTM 2 permission sets with captures substituted.
fn render_permissions(rule: &Rule, captures: &Captures<'_>) -> Vec<Rtm2Permission> {
    rule.rtm_permissions
        .iter()
        .map(|p| Rtm2Permission {
            resource_type: p.resource_type,
            access: p.access,
            resources: p.resources.iter().map(|t| t.render(captures)).collect(),
        })
        .collect()
}
