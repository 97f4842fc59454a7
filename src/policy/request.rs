//! What a caller asks for (the action, the channel, the identity, role and
//! lifetimes) and who is asking ([`Caller`]: the verified JWT, if any, and
//! the transport identity, [`Peer`]).
//!
//! These are plain domain values; the gRPC layer converts its messages into
//! them, and the pipeline builds the caller once it has authenticated it.

use std::fmt;
use std::num::NonZeroU32;

pub(crate) use crate::domain::ChannelScope;
use crate::domain::{ChannelName, PeerIdentity, Principal, Role, Uid};

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

/// Who is asking, as the pipeline authenticated it: the verified JWT's
/// principal when the caller sent one, and its transport identity.
///
/// There is no principal for a workload that sent no JWT: nothing stands in
/// for an issuer or a subject, so no rule can mistake a workload for a JWT
/// caller. Such a caller is only ever matched by `authenticate = "mtls"`
/// rules (and by deny rules that do not narrow `authenticate`).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The verified JWT's caller, if the call carried a JWT.
    pub principal: Option<&'a Principal>,
    /// Where the call came from and which workload made it, if verified.
    pub peer: &'a Peer,
}

/// The caller's transport identity, as the rules see it (`peer` in CEL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// The caller's IP address in text (`127.0.0.1`, `::1`), when known:
    /// the direct peer's, or the one a trusted proxy reported; `None` behind
    /// a trusted proxy that reported none.
    pub address: Option<String>,
    /// The verified workload: the client certificate of an mTLS connection,
    /// or the identity a trusted proxy forwarded. `None` for a plaintext or
    /// TLS-only caller, and for any identity an untrusted peer claims.
    pub workload: Option<PeerIdentity>,
}

/// How a caller proved who it is: the `authenticate` of a rule, and the
/// `authenticated_by` of the audit event and of `request` in CEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AuthenticatedBy {
    /// A verified JWT, over a connection with no verified workload identity.
    Jwt,
    /// A verified workload identity (mTLS or a trusted proxy) and no JWT.
    Mtls,
    /// Both a verified JWT and a verified workload identity.
    JwtAndMtls,
}

/// A caller with no transport identity, for callers known only by their JWT.
static NO_PEER: Peer = Peer {
    address: None,
    workload: None,
};

impl<'a> Caller<'a> {
    /// A JWT caller with no transport identity (tests, tools, in-process use).
    pub fn jwt(principal: &'a Principal) -> Self {
        Self {
            principal: Some(principal),
            peer: &NO_PEER,
        }
    }

    /// How this caller authenticated; `None` if it has neither a JWT nor a
    /// verified workload identity (the pipeline never asks the rules about
    /// such a caller, and no rule matches it).
    pub fn authenticated_by(&self) -> Option<AuthenticatedBy> {
        match (self.principal.is_some(), self.peer.workload.is_some()) {
            (true, false) => Some(AuthenticatedBy::Jwt),
            (false, true) => Some(AuthenticatedBy::Mtls),
            (true, true) => Some(AuthenticatedBy::JwtAndMtls),
            (false, false) => None,
        }
    }
}

impl<'a> From<&'a Principal> for Caller<'a> {
    fn from(principal: &'a Principal) -> Self {
        Caller::jwt(principal)
    }
}

impl AuthenticatedBy {
    /// The name in rules (`authenticate`), CEL and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthenticatedBy::Jwt => "jwt",
            AuthenticatedBy::Mtls => "mtls",
            AuthenticatedBy::JwtAndMtls => "jwt+mtls",
        }
    }

    /// Parses a name as written in a rule's `authenticate`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            AuthenticatedBy::Jwt,
            AuthenticatedBy::Mtls,
            AuthenticatedBy::JwtAndMtls,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

impl fmt::Display for AuthenticatedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
