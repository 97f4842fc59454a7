//! What a caller asks for: the action, the channel, the identity, role and lifetimes.
//!
//! These are plain domain values; the gRPC layer converts its messages into them.

use std::fmt;
use std::num::NonZeroU32;

pub(crate) use crate::domain::ChannelScope;
use crate::domain::{ChannelName, Role, Uid};

/// One request to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What the caller wants to do.
    pub action: Action,
    /// The channel, if the request names one (RTC always does; RTM and Chat may,
    /// for rules and permission resources).
    pub channel: Option<ChannelScope>,
    /// Whom the token should admit.
    pub identity: RequestedIdentity,
    /// The requested RTC role; `None` means subscriber, the least privilege.
    pub role: Option<Role>,
    /// The requested token lifetime in seconds; `None` takes the rule's default.
    pub token_lifetime: Option<NonZeroU32>,
    /// The requested join (RTC) or login (RTM, Chat) privilege lifetime in seconds.
    pub join_lifetime: Option<NonZeroU32>,
    /// The requested publish privilege lifetime in seconds (RTC publishers).
    pub publish_lifetime: Option<NonZeroU32>,
    /// The Agora project the caller wants, by name; `None` lets the rule choose.
    pub project: Option<String>,
    /// For RTC: also grant an RTM login for the same identity (`buildTokenWithRtm2`).
    pub also_rtm: bool,
}

/// The action a request performs. The names are the `actions` of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Issue a token for an Agora service.
    Issue(Service),
    /// Decode and verify a token (`InspectToken`); issues nothing.
    Inspect,
    /// Dry-run the rules (`ExplainAccess`); issues nothing.
    Explain,
}

/// The Agora services a rule can issue tokens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Real-time audio and video (AccessToken2 service 1).
    Rtc,
    /// Real-time messaging, RTM 2 (service 2, or 8 with permissions).
    Rtm,
    /// Chat user or app tokens (service 5).
    Chat,
    /// Fast Path Acceleration login (service 4): project-level, no user.
    Fpa,
}

/// Whom the caller wants the token to admit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestedIdentity {
    /// Bind the identity from the caller's JWT, as the rule says.
    FromJwt,
    /// This numeric uid (RTC), or its decimal text (RTM, Chat).
    Uid(Uid),
    /// This string: an RTC account, or an RTM / Chat user id. Checked against
    /// the service's limits by the policy, since they differ per service.
    Account(String),
    /// The decimal text of this uid, which on the RTC wire is both the uid
    /// and the account of that text: what a renewed token names. It binds as
    /// an account where the rule binds an account, else as the uid.
    UidOrAccount(Uid),
    /// uid 0, any user (RTC only). Needs `allow_wildcard_uid = true`.
    AnyUid,
    /// An app-level token with no user (Chat). Needs `allow_app_token = true`.
    App,
}

impl Request {
    /// A request for `action` with every option unset: identity from the JWT,
    /// subscriber, the rule's default lifetimes and project.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            channel: None,
            identity: RequestedIdentity::FromJwt,
            role: None,
            token_lifetime: None,
            join_lifetime: None,
            publish_lifetime: None,
            project: None,
            also_rtm: false,
        }
    }

    /// The same request for `channel`.
    pub fn with_channel(mut self, channel: ChannelName) -> Self {
        self.channel = Some(ChannelScope::Named(channel));
        self
    }

    /// The role this request asks for: subscriber unless it says publisher.
    pub fn requested_role(&self) -> Role {
        self.role.unwrap_or(Role::Subscriber)
    }
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 6] = [
        Action::Issue(Service::Rtc),
        Action::Issue(Service::Rtm),
        Action::Issue(Service::Chat),
        Action::Issue(Service::Fpa),
        Action::Inspect,
        Action::Explain,
    ];

    /// The name used in rules, CEL (`request.action`), logs and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Issue(service) => service.as_str(),
            Action::Inspect => "inspect",
            Action::Explain => "explain",
        }
    }

    /// Parses an action name as written in a rule's `actions`.
    pub fn parse(name: &str) -> Option<Self> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

impl Service {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Rtc => "rtc",
            Service::Rtm => "rtm",
            Service::Chat => "chat",
            Service::Fpa => "fpa",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
