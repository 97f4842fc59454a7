//! The outcome of a policy evaluation: a grant saying exactly what to put in
//! the token, or a denial with a stable reason.
//!
//! A denial is a value, not an error: it is logged, counted and returned to
//! the caller as `PERMISSION_DENIED` with [`DenyReason::as_str`].

use std::fmt;

use crate::domain::{Lifetime, Role, RtcIdentity, RtmUserId};

use super::request::{Action, ChannelScope};

/// What the rules decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The request is allowed, with exactly this grant.
    Allow(Grant),
    /// The request is refused.
    Deny(Denial),
}

/// Everything the token layer needs to build the token, decided by one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The name of the rule that decided.
    pub rule: String,
    /// The action allowed.
    pub action: Action,
    /// The Agora project (by name) that signs the token; `None` for `inspect` and `explain`.
    pub project: Option<String>,
    /// The channel of the token, if the service has one.
    pub channel: Option<ChannelScope>,
    /// Whom the token admits.
    pub identity: BoundIdentity,
    /// The RTC role; subscriber for every other service.
    pub role: Role,
    /// `now` as given to `evaluate`: the token's issue time, unix seconds.
    pub issued_at: u64,
    /// The token lifetime (for `inspect` and `explain`, the rule's default, unused).
    pub token_lifetime: Lifetime,
    /// The join (RTC) or login (RTM, Chat, FPA) privilege lifetime.
    pub join_lifetime: Lifetime,
    /// The publish privileges' lifetime; `Some` only for an RTC publisher.
    pub publish_lifetime: Option<Lifetime>,
    /// For RTC with `also_rtm`: the RTM user id of the same identity, with the join lifetime.
    pub rtm_user_id: Option<RtmUserId>,
    /// For RTM: the RTM 2 permission sets, captures substituted. Empty means a plain login.
    pub rtm_permissions: Vec<Rtm2Permission>,
    /// Whether the rule allows app-level tokens (`allow_app_token`).
    pub app_token_allowed: bool,
    /// Whether a requested lifetime was reduced because the rule says `clamp_ttl = true`.
    pub clamped: bool,
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
}

/// The identity a grant binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BoundIdentity {
    /// An RTC uid, account or the wildcard uid 0.
    Rtc(RtcIdentity),
    /// An RTM or Chat user id.
    User(RtmUserId),
    /// No user: a Chat app token or an FPA token.
    App,
    /// The action binds nobody: `inspect` and `explain`.
    None,
}

/// One RTM 2 permission set: an access on a list of resources of one type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rtm2Permission {
    /// The kind of resource.
    pub resource_type: Rtm2ResourceType,
    /// Read or write.
    pub access: Rtm2Access,
    /// The resource names, with the rule's captures substituted, in rule order.
    pub resources: Vec<String>,
}

/// RTM 2 resource types, with the wire codes of spec §2.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rtm2ResourceType {
    /// `message_channels` (code 0).
    MessageChannels,
    /// `stream_channels` (code 1).
    StreamChannels,
    /// `group_channels` (code 2).
    GroupChannels,
    /// `server_groups` (code 3).
    ServerGroups,
    /// `users` (code 4).
    Users,
}

/// RTM 2 permission types, with their wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rtm2Access {
    /// `read` (code 0).
    Read,
    /// `write` (code 1).
    Write,
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
}

impl Decision {
    /// The grant, if allowed.
    pub fn grant(&self) -> Option<&Grant> {
        match self {
            Decision::Allow(grant) => Some(grant),
            Decision::Deny(_) => None,
        }
    }

    /// The reason, if denied.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow(_) => None,
            Decision::Deny(denial) => Some(denial.reason),
        }
    }

    /// The rule that decided, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Decision::Allow(grant) => Some(&grant.rule),
            Decision::Deny(denial) => denial.rule.as_deref(),
        }
    }
}

impl Grant {
    /// When the token expires: `issued_at + token_lifetime`, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.issued_at + u64::from(self.token_lifetime.secs())
    }
}

impl Rtm2ResourceType {
    /// Every type, in code order.
    pub const ALL: [Rtm2ResourceType; 5] = [
        Rtm2ResourceType::MessageChannels,
        Rtm2ResourceType::StreamChannels,
        Rtm2ResourceType::GroupChannels,
        Rtm2ResourceType::ServerGroups,
        Rtm2ResourceType::Users,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Rtm2ResourceType::MessageChannels => 0,
            Rtm2ResourceType::StreamChannels => 1,
            Rtm2ResourceType::GroupChannels => 2,
            Rtm2ResourceType::ServerGroups => 3,
            Rtm2ResourceType::Users => 4,
        }
    }

    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Rtm2ResourceType::MessageChannels => "message_channels",
            Rtm2ResourceType::StreamChannels => "stream_channels",
            Rtm2ResourceType::GroupChannels => "group_channels",
            Rtm2ResourceType::ServerGroups => "server_groups",
            Rtm2ResourceType::Users => "users",
        }
    }

    /// Parses a name as written in rules.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl Rtm2Access {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            Rtm2Access::Read => 0,
            Rtm2Access::Write => 1,
        }
    }

    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Rtm2Access::Read => "read",
            Rtm2Access::Write => "write",
        }
    }

    /// Parses `read` or `write`.
    pub fn parse(name: &str) -> Option<Self> {
        [Rtm2Access::Read, Rtm2Access::Write]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

impl DenyReason {
    /// Every reason, for documentation and exhaustive tests.
    pub const ALL: [DenyReason; 16] = [
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
