//! The rules as written in TOML: plain serde structs, checked and compiled by `compile`.
//!
//! The service config embeds `[[rules]]` tables of this shape; `policy::Policy::compile`
//! turns them into a [`super::Policy`]. Every key is documented in the README
//! ("Policy rules") and in `deploy/examples/policy.toml`.

use serde::Deserialize;

/// A whole policy file: `[[rules]]` tables, first match wins.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The ordered rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One rule, exactly as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A unique name, reported in grants, denials, traces and audit logs.
    pub name: String,
    /// Free text for the reader of the config.
    #[serde(default)]
    pub description: Option<String>,
    /// `allow` (the default) or `deny`.
    #[serde(default)]
    pub effect: Effect,
    /// The actions the rule applies to: `rtc`, `rtm`, `chat`, `fpa`, `inspect`, `explain`.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Match only callers whose verified `iss` is exactly this.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Match only requests whose channel fits this pattern (`team-{team}-*`).
    #[serde(default)]
    pub channel: Option<String>,
    /// Match only callers whose verified workload SPIFFE ID fits this
    /// pattern (`spiffe://corp.example/ns/{ns}/sa/*`).
    #[serde(default)]
    pub peer_spiffe_id: Option<String>,
    /// How the caller must have authenticated: `jwt` (the default for allow
    /// rules), `mtls` (a verified workload, no JWT needed) or `jwt+mtls`.
    /// Unset on a deny rule, it applies to every caller.
    #[serde(default)]
    pub authenticate: Option<String>,
    /// A CEL expression that must evaluate to `true` for the rule to match.
    #[serde(default)]
    pub condition: Option<String>,
    /// The Agora project (by name) that signs the tokens this rule grants.
    #[serde(default)]
    pub project: Option<String>,
    /// The highest RTC role granted: `subscriber` (the default) or `publisher`.
    #[serde(default)]
    pub max_role: Option<String>,
    /// Bind a numeric uid from this claim (an integer in 1..=4294967295).
    #[serde(default)]
    pub uid_claim: Option<String>,
    /// Bind a string account from this claim; `sub` is the verified subject.
    #[serde(default)]
    pub account_claim: Option<String>,
    /// Use the identity the request names (a backend acting for its users).
    #[serde(default)]
    pub caller_chooses_identity: bool,
    /// Grant uid 0 (any user) when it is asked for explicitly.
    #[serde(default)]
    pub allow_wildcard_uid: bool,
    /// Grant the wildcard channel when it is asked for explicitly.
    #[serde(default)]
    pub allow_wildcard_channel: bool,
    /// Grant app-level tokens (Chat) when they are asked for explicitly.
    #[serde(default)]
    pub allow_app_token: bool,
    /// The token lifetime when the request names none, e.g. `"1h"`.
    #[serde(default)]
    pub default_ttl: Option<String>,
    /// The longest token lifetime granted, at most `"24h"`.
    #[serde(default)]
    pub max_ttl: Option<String>,
    /// The join (or login) privilege lifetime, default and maximum.
    #[serde(default)]
    pub join_ttl: Option<String>,
    /// The publish privileges' lifetime, default and maximum.
    #[serde(default)]
    pub publish_ttl: Option<String>,
    /// Reduce a too-long requested lifetime to the maximum instead of denying `ttl_too_long`.
    #[serde(default)]
    pub clamp_ttl: bool,
    /// Limit the token and every privilege to end no later than the caller's JWT (`exp`).
    #[serde(default)]
    pub cap_to_jwt_expiry: bool,
    /// Namespace a claim-bound account by issuer: `"issuer_name"` makes it `<issuer name>:<claim>`.
    #[serde(default)]
    pub identity_prefix: Option<String>,
    /// The issuers that reach this rule share one user namespace: bind the raw claim.
    #[serde(default)]
    pub shared_identity: bool,
    /// RTM 2 permission sets granted with `rtm` tokens.
    #[serde(default)]
    pub rtm_permissions: Vec<Rtm2PermissionConfig>,
    /// The `scope = "rule"` rate limits (`[[limits.rate]]` names) that count
    /// this rule's grants, besides the limits that count every call.
    #[serde(default)]
    pub limits: Vec<String>,
}

/// One RTM 2 permission set as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rtm2PermissionConfig {
    /// `message_channels`, `stream_channels`, `group_channels`, `server_groups` or `users`.
    pub resource_type: String,
    /// `read` or `write`.
    pub access: String,
    /// Resource names; `{capture}` is replaced by the channel pattern's capture.
    pub resources: Vec<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Grant the request, within the rule's limits.
    #[default]
    Allow,
    /// Refuse the request (`denied_by_rule`).
    Deny,
}
