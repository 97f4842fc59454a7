//! The outcome of a policy evaluation: a grant saying exactly what to put in
//! the token (one kind per token), a permit for an action that issues
//! nothing, or a denial with a stable reason.
//!
//! A denial is a value, not an error: it is logged, counted and returned to
//! the caller as `PERMISSION_DENIED` with [`DenyReason::as_str`].

use std::fmt;

use crate::domain::{
    ChannelScope, Lifetime, Role, RtcIdentity, Rtm2PermissionType, Rtm2ResourceType, RtmUserId,
};

use super::request::{Action, Service};

/// What the rules decided.
///
/// Issuing and access checks have different outcomes because they do
/// different things: an allowed issue action carries the [`Grant`] the token
/// is built from, with the project that signs it; `inspect` and `explain`
/// issue nothing, so an allowed one is a [`Permit`] naming only the rule.
/// A separate variant, rather than a grant kind without a project, keeps every
/// [`Grant`] buildable: the token layer never meets a grant it has no builder for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A token-issuing action is allowed, with exactly this grant.
    Allow(Grant),
    /// `inspect` or `explain` is allowed; nothing is issued.
    Permit(Permit),
    /// The request is refused.
    Deny(Denial),
}

/// Everything the token layer needs to build one token, decided by one rule:
/// one variant per kind of token, each with only the fields that kind uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Grant {
    /// An RTC token, optionally with an RTM login for the same identity.
    Rtc(RtcGrant),
    /// An RTM 2 login, optionally with permission sets.
    Rtm(RtmGrant),
    /// A Chat user or app token.
    Chat(ChatGrant),
    /// An FPA (Fast Path Acceleration) login: project-level, no user.
    Fpa(FpaGrant),
}

/// What every grant has: the deciding rule, the signing project and the lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// The name of the rule that decided.
    pub rule: String,
    /// The Agora project (by name) that signs the token.
    pub project: String,
    /// `now` as given to `evaluate`: the token's issue time, unix seconds.
    pub issued_at: u64,
    /// The token lifetime.
    pub token_lifetime: Lifetime,
    /// The join (RTC) or login (RTM, Chat) privilege lifetime.
    pub join_lifetime: Lifetime,
    /// Whether a requested lifetime was reduced because the rule says `clamp_ttl = true`.
    pub clamped: bool,
}

/// An RTC grant.
#[derive(Debug, Clone, PartialEq)]
pub struct RtcGrant {
    /// Rule, project and lifetimes.
    pub terms: Terms,
    /// The channel: RTC always names one (or the wildcard).
    pub channel: ChannelScope,
    /// Whom the token admits.
    pub identity: RtcIdentity,
    /// The publish privileges' lifetime. `Some` makes the token a publisher's,
    /// `None` a subscriber's: the role is this field, so the two cannot disagree.
    pub publish_lifetime: Option<Lifetime>,
    /// With `also_rtm`: the RTM user id of the same identity, logged in for the join lifetime.
    pub rtm_user_id: Option<RtmUserId>,
}

/// An RTM 2 grant.
#[derive(Debug, Clone, PartialEq)]
pub struct RtmGrant {
    /// Rule, project and lifetimes (the login is the join lifetime).
    pub terms: Terms,
    /// The channel the request named for the rules and the permission
    /// resources, if any; the token itself carries none.
    pub channel: Option<ChannelScope>,
    /// The user who logs in.
    pub user: RtmUserId,
    /// The permission sets, captures substituted; empty means a plain login.
    pub permissions: Vec<Rtm2Permission>,
}

/// A Chat grant.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatGrant {
    /// Rule, project and lifetimes (the privilege is the join lifetime).
    pub terms: Terms,
    /// The channel the request named for the rules, if any; the token carries none.
    pub channel: Option<ChannelScope>,
    /// The user; `None` is an app token (`allow_app_token`).
    pub user: Option<RtmUserId>,
}

/// An FPA grant. The official builder fixes the token's shape (a 24-hour
/// token, login 0), so the terms are all there is.
#[derive(Debug, Clone, PartialEq)]
pub struct FpaGrant {
    /// Rule, project and lifetimes.
    pub terms: Terms,
}

/// An allowed `inspect` or `explain`: which rule allowed which action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    /// The name of the rule that decided.
    pub rule: String,
    /// The action allowed: [`Action::Inspect`] or [`Action::Explain`].
    pub action: Action,
}

/// A refusal: why, which rule (if one decided) and a log-safe detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The stable reason.
    pub reason: DenyReason,
    /// The rule that decided, or `None` when no rule did.
    pub rule: Option<String>,
    /// A human explanation naming keys and claims, never claim values or secrets.
    pub detail: String,
    /// For `fact_unavailable`, the fact that could not be had.
    pub fact: Option<String>,
}

/// The identity a grant binds, one view over every kind (for replies and logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoundIdentity {
    /// An RTC uid, account or the wildcard uid 0.
    Rtc(RtcIdentity),
    /// An RTM or Chat user id.
    User(RtmUserId),
    /// No user: a Chat app token or an FPA token.
    App,
}

/// One RTM 2 permission set: an access on a list of resources of one type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rtm2Permission {
    /// The kind of resource.
    pub resource_type: Rtm2ResourceType,
    /// Read or write.
    pub access: Rtm2PermissionType,
    /// The resource names, with the rule's captures substituted, in rule order.
    pub resources: Vec<String>,
}

/// Why a request was refused. The names are stable: they are returned to
/// callers, logged and counted, so they never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyReason {
    /// No rule matched the request (the default).
    NoMatchingRule,
    /// The first matching rule is a `deny` rule.
    DeniedByRule,
    /// A `deny` rule's condition failed at run time, so the exception may apply: fail closed.
    ConditionError,
    /// The request names a project the service does not know.
    UnknownProject,
    /// The rule does not allow part of the action (RTM alongside RTC).
    ActionNotAllowed,
    /// An RTC request names no channel.
    ChannelRequired,
    /// The requested role is above the rule's `max_role`.
    RoleNotAllowed,
    /// The identity claim is present but not a valid uid or account.
    BadIdentityClaim,
    /// The identity claim the rule binds from is absent.
    MissingIdentityClaim,
    /// The requested identity differs from the one the JWT binds, or does not fit the service.
    IdentityNotAllowed,
    /// The rule lets the caller choose an identity and the request names none.
    IdentityRequired,
    /// The requested account breaks the service's limits (length, characters).
    InvalidRequestedIdentity,
    /// uid 0 was asked for and the rule lacks `allow_wildcard_uid`.
    WildcardUidNotAllowed,
    /// The wildcard channel was asked for and the rule lacks `allow_wildcard_channel`.
    WildcardChannelNotAllowed,
    /// An app-level token was asked for and the rule lacks `allow_app_token`.
    AppTokenNotAllowed,
    /// A requested lifetime is above the rule's maximum and the rule does not clamp.
    TtlTooLong,
    /// The channel fits a rule's pattern with more than one value of a capture
    /// (`team-{team}-*` on `team-a-b-x`), and no other rule decided.
    AmbiguousChannel,
    /// The rule caps the token at the caller's JWT expiry (`cap_to_jwt_expiry`)
    /// and the JWT has no whole second left (it is inside the leeway) or no readable `exp`.
    JwtExpiresTooSoon,
    /// A rule fits the request but not the way the caller authenticated
    /// (`authenticate`: a workload without a JWT, or a JWT without the
    /// required client certificate), and no other rule decided.
    AuthenticationNotAccepted,
    /// A fact a rule reads (`facts.<name>`) could not be had (a timeout, an
    /// error, an oversized result): a deny rule that reads it denies, an
    /// allow rule does not apply, and no other rule decided.
    FactUnavailable,
}

impl Decision {
    /// The grant, if an issue action was allowed.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Decision::Allow(grant) => Some(grant),
            Decision::Permit(_) | Decision::Deny(_) => None,
        }
    }

    /// Whether the request is allowed (a grant or a permit).
    pub fn is_allowed(&self) -> bool {
        !matches!(self, Decision::Deny(_))
    }

    /// The reason, if denied.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow(_) | Decision::Permit(_) => None,
            Decision::Deny(denial) => Some(denial.reason),
        }
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow(grant) => Some(grant.rule()),
            Decision::Permit(permit) => Some(&permit.rule),
            Decision::Deny(denial) => denial.rule.as_deref(),
        }
    }
}

impl Grant {
    /// The terms every kind shares.
    pub fn terms(&self) -> &Terms {
        match self {
            Grant::Rtc(g) => &g.terms,
            Grant::Rtm(g) => &g.terms,
            Grant::Chat(g) => &g.terms,
            Grant::Fpa(g) => &g.terms,
        }
    }

    /// The name of the rule that decided.
    pub fn rule(&self) -> &str {
        &self.terms().rule
    }

    /// The project that signs the token.
    pub fn project(&self) -> &str {
        &self.terms().project
    }

    /// When the token expires: `issued_at + token_lifetime`, unix seconds.
    pub fn expires_at(&self) -> u64 {
        let terms = self.terms();
        terms.issued_at + u64::from(terms.token_lifetime.secs())
    }

    /// The service the token is for.
    pub fn service(&self) -> Service {
        match self {
            Grant::Rtc(_) => Service::Rtc,
            Grant::Rtm(_) => Service::Rtm,
            Grant::Chat(_) => Service::Chat,
            Grant::Fpa(_) => Service::Fpa,
        }
    }

    /// The action this grant allowed.
    pub fn action(&self) -> Action {
        Action::Issue(self.service())
    }

    /// The channel, if the grant has one.
    pub fn channel(&self) -> Option<&ChannelScope> {
        match self {
            Grant::Rtc(g) => Some(&g.channel),
            Grant::Rtm(g) => g.channel.as_ref(),
            Grant::Chat(g) => g.channel.as_ref(),
            Grant::Fpa(_) => None,
        }
    }

    /// Whom the token admits.
    pub fn identity(&self) -> BoundIdentity {
        match self {
            Grant::Rtc(g) => BoundIdentity::Rtc(g.identity.clone()),
            Grant::Rtm(g) => BoundIdentity::User(g.user.clone()),
            Grant::Chat(ChatGrant {
                user: Some(user), ..
            }) => BoundIdentity::User(user.clone()),
            Grant::Chat(ChatGrant { user: None, .. }) | Grant::Fpa(_) => BoundIdentity::App,
        }
    }

    /// The RTC role; every other service is a subscriber.
    pub fn role(&self) -> Role {
        match self {
            Grant::Rtc(g) => g.role(),
            Grant::Rtm(_) | Grant::Chat(_) | Grant::Fpa(_) => Role::Subscriber,
        }
    }
}

impl RtcGrant {
    /// Publisher when the grant has publish privileges, else subscriber.
    pub fn role(&self) -> Role {
        match self.publish_lifetime {
            Some(_) => Role::Publisher,
            None => Role::Subscriber,
        }
    }
}

impl DenyReason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [DenyReason; 20] = [
        DenyReason::NoMatchingRule,
        DenyReason::DeniedByRule,
        DenyReason::ConditionError,
        DenyReason::UnknownProject,
        DenyReason::ActionNotAllowed,
        DenyReason::ChannelRequired,
        DenyReason::RoleNotAllowed,
        DenyReason::BadIdentityClaim,
        DenyReason::MissingIdentityClaim,
        DenyReason::IdentityNotAllowed,
        DenyReason::IdentityRequired,
        DenyReason::InvalidRequestedIdentity,
        DenyReason::WildcardUidNotAllowed,
        DenyReason::WildcardChannelNotAllowed,
        DenyReason::AppTokenNotAllowed,
        DenyReason::TtlTooLong,
        DenyReason::AmbiguousChannel,
        DenyReason::JwtExpiresTooSoon,
        DenyReason::AuthenticationNotAccepted,
        DenyReason::FactUnavailable,
    ];

    /// The stable snake_case code (`google.rpc.ErrorInfo.reason`, logs, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoMatchingRule => "no_matching_rule",
            DenyReason::DeniedByRule => "denied_by_rule",
            DenyReason::ConditionError => "condition_error",
            DenyReason::UnknownProject => "unknown_project",
            DenyReason::ActionNotAllowed => "action_not_allowed",
            DenyReason::ChannelRequired => "channel_required",
            DenyReason::RoleNotAllowed => "role_not_allowed",
            DenyReason::BadIdentityClaim => "bad_identity_claim",
            DenyReason::MissingIdentityClaim => "missing_identity_claim",
            DenyReason::IdentityNotAllowed => "identity_not_allowed",
            DenyReason::IdentityRequired => "identity_required",
            DenyReason::InvalidRequestedIdentity => "invalid_requested_identity",
            DenyReason::WildcardUidNotAllowed => "wildcard_uid_not_allowed",
            DenyReason::WildcardChannelNotAllowed => "wildcard_channel_not_allowed",
            DenyReason::AppTokenNotAllowed => "app_token_not_allowed",
            DenyReason::TtlTooLong => "ttl_too_long",
            DenyReason::AmbiguousChannel => "ambiguous_channel",
            DenyReason::JwtExpiresTooSoon => "jwt_expires_too_soon",
            DenyReason::AuthenticationNotAccepted => "authentication_not_accepted",
            DenyReason::FactUnavailable => "fact_unavailable",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{} (rule {rule:?}): {}", self.reason, self.detail),
            None => write!(f, "{}: {}", self.reason, self.detail),
        }
    }
}
