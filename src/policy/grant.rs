//! Building the grant of the allow rule that matched: the checks of the
//! rule's limits in a fixed order (so the first limit broken names the deny
//! reason), identity binding per service, lifetimes and RTM 2 permissions.
//!
//! Each service binds its own identity type ([`Identity`]), so a grant can
//! only ever hold the identity its kind of token takes.

use std::num::NonZeroU32;

use crate::domain::{
    Account, ChannelScope, ClaimValue, InvalidValue, Lifetime, Principal, Role, RtcIdentity,
    RtmUserId, Uid,
};

use super::compile::{Binding, IdentityPrefix, Lifetimes, Rule};
use super::decision::{
    ChatGrant, Decision, DenyReason, FpaGrant, Grant, Permit, RtcGrant, Rtm2Permission, RtmGrant,
    Terms,
};
use super::pattern::Captures;
use super::request::{Action, Request, RequestedIdentity, Service};

/// A deny reason with its detail.
pub(super) type Refusal = (DenyReason, String);

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

/// The lifetimes granted.
struct Granted {
    token: Lifetime,
    join: Lifetime,
    publish: Option<Lifetime>,
    clamped: bool,
}

/// The identity one service's grant holds, and how a claim or a request becomes one.
trait Identity: Sized + PartialEq {
    /// The service whose identity this is.
    const SERVICE: Service;

    /// Shapes a candidate, checking the service's limits.
    fn shape(candidate: Candidate<'_>) -> Result<Self, InvalidValue>;

    /// uid 0, any user: only RTC has it.
    fn any_uid(_rule: &Rule) -> Result<Self, Refusal> {
        Err((
            DenyReason::IdentityNotAllowed,
            format!(
                "uid 0 (any user) exists only for rtc, not {}",
                Self::SERVICE.as_str()
            ),
        ))
    }

    /// An app-level token with no user: only Chat has it.
    fn app(_rule: &Rule) -> Result<Self, Refusal> {
        Err((
            DenyReason::IdentityNotAllowed,
            format!(
                "app-level tokens exist only for chat, not {}",
                Self::SERVICE.as_str()
            ),
        ))
    }
}

/// An RTM user id, the identity of an RTM grant.
#[derive(PartialEq)]
struct RtmUser(RtmUserId);

/// A Chat user id, or `None` for an app token.
#[derive(PartialEq)]
struct ChatUser(Option<RtmUserId>);

impl Identity for RtcIdentity {
    const SERVICE: Service = Service::Rtc;

    fn shape(candidate: Candidate<'_>) -> Result<Self, InvalidValue> {
        match candidate {
            Candidate::Uid(uid) => Ok(RtcIdentity::Uid(uid)),
            Candidate::Text(text) => Account::parse(text).map(RtcIdentity::Account),
        }
    }

    fn any_uid(rule: &Rule) -> Result<Self, Refusal> {
        if !rule.allow_wildcard_uid {
            return Err((
                DenyReason::WildcardUidNotAllowed,
                "uid 0 (any user) needs allow_wildcard_uid = true".to_owned(),
            ));
        }
        Ok(RtcIdentity::AnyUid)
    }
}

impl Identity for RtmUser {
    const SERVICE: Service = Service::Rtm;

    fn shape(candidate: Candidate<'_>) -> Result<Self, InvalidValue> {
        user_id(candidate).map(RtmUser)
    }
}

impl Identity for ChatUser {
    const SERVICE: Service = Service::Chat;

    fn shape(candidate: Candidate<'_>) -> Result<Self, InvalidValue> {
        user_id(candidate).map(|user| ChatUser(Some(user)))
    }

    fn app(rule: &Rule) -> Result<Self, Refusal> {
        if !rule.allow_app_token {
            return Err((
                DenyReason::AppTokenNotAllowed,
                "an app-level token needs allow_app_token = true".to_owned(),
            ));
        }
        Ok(ChatUser(None))
    }
}

/// Who is asking: the verified principal and its issuer's configured name.
#[derive(Clone, Copy)]
pub(super) struct Who<'a> {
    /// The verified principal; `None` for a workload admitted without a JWT
    /// (only by `mtls` rules, which `compile` keeps from reading claims).
    pub(super) principal: Option<&'a Principal>,
    /// The configured name of the issuer whose `iss` the principal has, if known.
    pub(super) issuer_name: Option<&'a str>,
}

/// The decision of the allow rule that matched: a grant or a permit within
/// its limits, or the denial of the first limit broken.
pub(super) fn decide(
    rule: &Rule,
    caller: Who<'_>,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Result<Decision, Refusal> {
    let principal = caller.principal;
    let channel = check_wildcard_channel(rule, request)?;
    let service = match request.action {
        Action::Issue(service) => service,
        Action::Inspect | Action::Explain => {
            // A rule's lifetime limits hold for every action it lists, even
            // one that issues nothing, so a rule decides every action alike.
            grant_lifetimes(&rule.lifetimes, request, Role::Subscriber)?;
            return Ok(Decision::Permit(Permit {
                rule: rule.name.clone(),
                action: request.action,
            }));
        }
    };
    let grant = match service {
        Service::Rtc => Grant::Rtc(rtc(rule, caller, request, channel, now)?),
        Service::Rtm => {
            let RtmUser(user) = bind_identity(rule, caller, request)?;
            let lifetimes = grant_lifetimes(&rule.lifetimes, request, Role::Subscriber)?;
            let lifetimes = cap_to_jwt(&rule.lifetimes, principal, now, lifetimes)?;
            Grant::Rtm(RtmGrant {
                terms: terms(rule, now, &lifetimes)?,
                channel,
                user,
                permissions: render_permissions(rule, captures),
            })
        }
        Service::Chat => {
            let ChatUser(user) = bind_identity(rule, caller, request)?;
            let lifetimes = grant_lifetimes(&rule.lifetimes, request, Role::Subscriber)?;
            let lifetimes = cap_to_jwt(&rule.lifetimes, principal, now, lifetimes)?;
            Grant::Chat(ChatGrant {
                terms: terms(rule, now, &lifetimes)?,
                channel,
                user,
            })
        }
        Service::Fpa => {
            check_fpa_identity(&request.identity)?;
            // `compile_rule` refuses cap_to_jwt_expiry with fpa: its token is always 24 hours.
            let lifetimes = grant_lifetimes(&rule.lifetimes, request, Role::Subscriber)?;
            Grant::Fpa(FpaGrant {
                terms: terms(rule, now, &lifetimes)?,
            })
        }
    };
    Ok(Decision::Allow(grant))
}

/// The RTC grant: a channel, a role within `max_role`, the identity, the
/// optional RTM login, then the lifetimes.
fn rtc(
    rule: &Rule,
    caller: Who<'_>,
    request: &Request,
    channel: Option<ChannelScope>,
    now: u64,
) -> Result<RtcGrant, Refusal> {
    let Some(channel) = channel else {
        return Err((
            DenyReason::ChannelRequired,
            "an rtc token needs a channel".to_owned(),
        ));
    };
    let role = check_role(rule, request)?;
    let identity: RtcIdentity = bind_identity(rule, caller, request)?;
    let rtm_user_id = also_rtm(rule, request, &identity)?;
    let lifetimes = grant_lifetimes(&rule.lifetimes, request, role)?;
    let lifetimes = cap_to_jwt(&rule.lifetimes, caller.principal, now, lifetimes)?;
    Ok(RtcGrant {
        terms: terms(rule, now, &lifetimes)?,
        channel,
        identity,
        publish_lifetime: lifetimes.publish,
        rtm_user_id,
    })
}

/// The terms every grant shares.
fn terms(rule: &Rule, now: u64, lifetimes: &Granted) -> Result<Terms, Refusal> {
    // `compile_project` refuses an allow rule that issues tokens without a
    // project, so this is always set; refusing keeps the walk fail-closed.
    let project = rule.project.clone().ok_or_else(|| {
        (
            DenyReason::UnknownProject,
            "the rule names no project to sign the token".to_owned(),
        )
    })?;
    Ok(Terms {
        rule: rule.name.clone(),
        project,
        issued_at: now,
        token_lifetime: lifetimes.token,
        join_lifetime: lifetimes.join,
        clamped: lifetimes.clamped,
    })
}

/// The wildcard channel needs `allow_wildcard_channel`, whatever the action.
fn check_wildcard_channel(rule: &Rule, request: &Request) -> Result<Option<ChannelScope>, Refusal> {
    match &request.channel {
        Some(ChannelScope::Wildcard) if !rule.allow_wildcard_channel => Err((
            DenyReason::WildcardChannelNotAllowed,
            "the wildcard channel needs allow_wildcard_channel = true".to_owned(),
        )),
        channel => Ok(channel.clone()),
    }
}

/// The RTC role must not exceed `max_role`.
fn check_role(rule: &Rule, request: &Request) -> Result<Role, Refusal> {
    let wanted = request.requested_role();
    if wanted > rule.max_role {
        return Err((
            DenyReason::RoleNotAllowed,
            format!("{wanted} is above the rule's max_role {}", rule.max_role),
        ));
    }
    Ok(wanted)
}

/// Binds the identity the token admits, per the rule and the request, as the
/// identity type `I` of the requested service.
fn bind_identity<I: Identity>(
    rule: &Rule,
    caller: Who<'_>,
    request: &Request,
) -> Result<I, Refusal> {
    let principal = caller.principal;
    let requested = match &request.identity {
        RequestedIdentity::AnyUid => return I::any_uid(rule),
        RequestedIdentity::App => return I::app(rule),
        RequestedIdentity::FromJwt => None,
        RequestedIdentity::Uid(uid) => Some(shape(Candidate::Uid(*uid), Origin::Request)?),
        RequestedIdentity::Account(text) => Some(shape(Candidate::Text(text), Origin::Request)?),
        // The same bytes on the wire: a uid where the rule binds a uid, an
        // account where it binds an account (a rule that lets the caller
        // choose takes the uid, as the token cannot say more).
        RequestedIdentity::UidOrAccount(uid) => {
            let text = uid.get().to_string();
            let candidate = match rule.binding {
                Binding::AccountClaim(_) => Candidate::Text(&text),
                Binding::UidClaim(_) | Binding::CallerChooses | Binding::Unbound => {
                    Candidate::Uid(*uid)
                }
            };
            Some(shape(candidate, Origin::Request)?)
        }
    };
    let bound = match &rule.binding {
        Binding::CallerChooses | Binding::Unbound => None,
        Binding::UidClaim(claim) => {
            let principal = principal.ok_or_else(|| no_jwt(claim))?;
            Some(shape(uid_claim(principal, claim)?, Origin::Claim)?)
        }
        Binding::AccountClaim(claim) => {
            let principal = principal.ok_or_else(|| no_jwt(claim))?;
            let candidate = account_claim(principal, claim)?;
            match (rule.identity_prefix, candidate) {
                (IdentityPrefix::IssuerName, Candidate::Text(text)) => {
                    let name = caller.issuer_name.ok_or_else(|| {
                        (
                            DenyReason::BadIdentityClaim,
                            "identity_prefix needs the caller's issuer name, and the issuer is not configured".to_owned(),
                        )
                    })?;
                    let prefixed = format!("{name}:{text}");
                    Some(shape(Candidate::Text(&prefixed), Origin::Claim)?)
                }
                (_, candidate) => Some(shape(candidate, Origin::Claim)?),
            }
        }
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
fn check_fpa_identity(requested: &RequestedIdentity) -> Result<(), Refusal> {
    match requested {
        RequestedIdentity::FromJwt | RequestedIdentity::App => Ok(()),
        _ => Err((
            DenyReason::IdentityNotAllowed,
            "fpa tokens admit no user; do not name an identity".to_owned(),
        )),
    }
}

/// The refusal of a claim binding for a caller with no JWT (unreachable:
/// `compile` refuses claim bindings on the only rules such callers match).
fn no_jwt(claim: &str) -> Refusal {
    (
        DenyReason::MissingIdentityClaim,
        format!("the rule binds claim {claim:?} and the caller sent no JWT"),
    )
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

/// An RTM or Chat user id from a candidate: a uid becomes its decimal text.
fn user_id(candidate: Candidate<'_>) -> Result<RtmUserId, InvalidValue> {
    match candidate {
        Candidate::Uid(uid) => RtmUserId::parse(&uid.get().to_string()),
        Candidate::Text(text) => RtmUserId::parse(text),
    }
}

/// Shapes a candidate for `I`'s service; the refusal says where the bad value came from.
fn shape<I: Identity>(candidate: Candidate<'_>, origin: Origin) -> Result<I, Refusal> {
    let service = I::SERVICE.as_str();
    I::shape(candidate).map_err(|e| match origin {
        Origin::Claim => (
            DenyReason::BadIdentityClaim,
            format!(
                "the identity claim is not a valid {service} identity: {}",
                limit_only(&e)
            ),
        ),
        Origin::Request => (
            DenyReason::InvalidRequestedIdentity,
            format!(
                "the requested identity is not a valid {service} identity: {}",
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
    identity: &RtcIdentity,
) -> Result<Option<RtmUserId>, Refusal> {
    if !request.also_rtm {
        return Ok(None);
    }
    if !rule.actions.contains(&Action::Issue(Service::Rtm)) {
        return Err((
            DenyReason::ActionNotAllowed,
            "also_rtm needs a rule that lists rtm in its actions".to_owned(),
        ));
    }
    if *identity == RtcIdentity::AnyUid {
        return Err((
            DenyReason::IdentityNotAllowed,
            "an rtm login needs a user, not uid 0".to_owned(),
        ));
    }
    RtmUserId::parse(&identity.wire_string())
        .map(Some)
        .map_err(|e| {
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

/// With `cap_to_jwt_expiry`: every lifetime is cut to end no later than the
/// caller's JWT, read from its `exp` claim. The cap always reduces (it is a
/// property of the caller's credential, not of the request) and marks the
/// grant clamped; a JWT with no whole second left is refused.
fn cap_to_jwt(
    limits: &Lifetimes,
    principal: Option<&Principal>,
    now: u64,
    granted: Granted,
) -> Result<Granted, Refusal> {
    if !limits.cap_to_jwt {
        return Ok(granted);
    }
    let exhausted = |why: &str| {
        (
            DenyReason::JwtExpiresTooSoon,
            format!("cap_to_jwt_expiry: the caller's JWT {why}, so no token can end before it"),
        )
    };
    // `compile` refuses cap_to_jwt_expiry on the rules a caller without a JWT matches.
    let principal = principal.ok_or_else(|| exhausted("is absent (the caller sent none)"))?;
    let exp = jwt_expiry(principal).ok_or_else(|| exhausted("has no readable exp claim"))?;
    let left = exp.saturating_sub(now);
    let cap = Lifetime::from_secs(left.min(u64::from(Lifetime::MAX.secs())))
        .map_err(|_| exhausted("has expired (it is inside the leeway)"))?;
    let mut clamped = granted.clamped;
    let mut fit = |lifetime: Lifetime| {
        if lifetime > cap {
            clamped = true;
            cap
        } else {
            lifetime
        }
    };
    let token = fit(granted.token);
    let join = fit(granted.join);
    let publish = granted.publish.map(&mut fit);
    Ok(Granted {
        token,
        join,
        publish,
        clamped,
    })
}

/// The JWT's `exp` claim in whole unix seconds (a fraction rounded down, as
/// identity verifies it), or `None` if it is absent or not a number.
fn jwt_expiry(principal: &Principal) -> Option<u64> {
    match principal.claims.get("exp")? {
        ClaimValue::Int(i) => u64::try_from(*i).ok(),
        ClaimValue::UInt(u) => Some(*u),
        ClaimValue::Float(f) if f.is_finite() && *f >= 0.0 => {
            // Seconds below 2^53 are exact in an f64; anything above is past
            // any Lifetime, so saturating is harmless.
            Some(f.floor().min(u64::MAX as f64) as u64)
        }
        _ => None,
    }
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
