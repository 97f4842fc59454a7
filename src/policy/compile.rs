//! Load-time checks and compilation of `RuleConfig` into `Rule`.
//!
//! Every error names the rule (index and name) and the key, so an operator can
//! fix the config without reading code. Lifetimes become `Lifetime`s, patterns
//! and CEL expressions are compiled here, once.

use std::collections::BTreeSet;
use std::time::Duration;

use cel::Env;

use crate::domain::{Lifetime, Role, Rtm2PermissionType, Rtm2ResourceType, is_agora_char};

use super::PolicyError;
use super::condition::Condition;
use super::config::{Effect, Rtm2PermissionConfig, RuleConfig};
use super::fact::FactDeclaration;
use super::pattern::{ChannelPattern, Template};
use super::request::{Action, AuthenticatedBy, Service};
use super::spiffe::SpiffeIdPattern;

/// The token lifetime when a rule names none.
const DEFAULT_TTL_SECS: u64 = 3600;

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) effect: Effect,
    pub(crate) actions: Vec<Action>,
    pub(crate) issuer: Option<String>,
    pub(crate) channel: Option<ChannelPattern>,
    pub(crate) peer_spiffe_id: Option<SpiffeIdPattern>,
    pub(crate) authenticate: Authenticate,
    pub(crate) condition: Option<Condition>,
    /// The facts the condition reads, as indices into the policy's declarations.
    pub(crate) facts: Vec<usize>,
    pub(crate) project: Option<String>,
    pub(crate) max_role: Role,
    pub(crate) binding: Binding,
    pub(crate) allow_wildcard_uid: bool,
    pub(crate) allow_wildcard_channel: bool,
    pub(crate) allow_app_token: bool,
    pub(crate) lifetimes: Lifetimes,
    pub(crate) identity_prefix: IdentityPrefix,
    pub(crate) rtm_permissions: Vec<PermissionTemplate>,
}

/// Which callers a rule accepts, by how they authenticated (`authenticate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authenticate {
    /// `jwt`, the default of allow rules: a verified JWT (over mTLS or not).
    Jwt,
    /// `mtls`: a verified workload identity; a JWT is not needed, and the
    /// rule cannot read one.
    Mtls,
    /// `jwt+mtls`: both.
    JwtAndMtls,
    /// A deny rule without `authenticate`: every caller.
    Any,
}

/// What a claim-bound account is prefixed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityPrefix {
    /// Nothing: the claim as it is.
    None,
    /// The caller's issuer's configured name and `:`.
    IssuerName,
}

/// An identity provider as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// The configured name (`[[issuers]].name`).
    pub name: String,
    /// The `iss` values its tokens carry.
    pub iss: Vec<String>,
}

/// How a rule binds the Agora identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    /// A numeric uid from this claim.
    UidClaim(String),
    /// A string account from this claim (`sub` is the subject).
    AccountClaim(String),
    /// The identity the request names.
    CallerChooses,
    /// Nothing to bind: deny rules, and rules for `fpa`, `inspect`, `explain` only.
    Unbound,
}

/// A rule's lifetimes, all within 1..=86400 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    pub(crate) default: Lifetime,
    pub(crate) max: Lifetime,
    pub(crate) join: Option<Lifetime>,
    pub(crate) publish: Option<Lifetime>,
    pub(crate) clamp: bool,
    /// `cap_to_jwt_expiry`: nothing outlives the caller's JWT.
    pub(crate) cap_to_jwt: bool,
}

/// An RTM 2 permission set with resource templates.
#[derive(Debug)]
pub(crate) struct PermissionTemplate {
    pub(crate) resource_type: Rtm2ResourceType,
    pub(crate) access: Rtm2PermissionType,
    pub(crate) resources: Vec<Template>,
}

/// The place an error is reported against.
struct Site<'a> {
    index: usize,
    name: &'a str,
}

impl Site<'_> {
    /// An error at `key` of this rule.
    fn error(&self, key: impl Into<String>, reason: impl Into<String>) -> PolicyError {
        PolicyError::InvalidRule {
            index: self.index,
            name: self.name.to_owned(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Compiles one rule; `projects` are the known project names, `issuers` the
/// configured identity providers (empty when the caller knows none).
pub(crate) fn compile_rule(
    env: &Env,
    index: usize,
    config: &RuleConfig,
    projects: &BTreeSet<String>,
    issuers: &[Issuer],
    declared: &[FactDeclaration],
) -> Result<Rule, PolicyError> {
    let site = Site {
        index,
        name: &config.name,
    };
    if config.name.trim().is_empty() {
        return Err(site.error("name", "every rule needs a name"));
    }
    let actions = compile_actions(&site, &config.actions)?;
    if config.effect == Effect::Deny {
        check_deny_keys(&site, config)?;
    }
    let issuing = actions.iter().any(|a| matches!(a, Action::Issue(_)));
    let channel = match &config.channel {
        Some(p) => Some(ChannelPattern::parse(p).map_err(|e| site.error("channel", e))?),
        None => None,
    };
    let peer_spiffe_id = compile_peer_pattern(&site, config, channel.as_ref())?;
    let condition = match &config.condition {
        Some(c) => Some(Condition::compile(env, c).map_err(|e| site.error("condition", e))?),
        None => None,
    };
    let authenticate = compile_authenticate(&site, config, condition.as_ref())?;
    let facts = compile_facts(
        &site,
        condition.as_ref(),
        declared,
        channel.as_ref(),
        peer_spiffe_id.as_ref(),
        authenticate,
    )?;
    if let Some(issuer) = &config.issuer
        && issuer.is_empty()
    {
        return Err(site.error("issuer", "must not be empty; omit it to match any issuer"));
    }
    let project = compile_project(&site, config, projects, issuing)?;
    let max_role = match &config.max_role {
        Some(r) => Role::parse(r).map_err(|e| site.error("max_role", e.to_string()))?,
        None => Role::Subscriber,
    };
    let binding = compile_binding(&site, config, &actions)?;
    let lifetimes = compile_lifetimes(&site, config)?;
    if lifetimes.cap_to_jwt && actions.contains(&Action::Issue(Service::Fpa)) {
        return Err(site.error(
            "cap_to_jwt_expiry",
            "fpa tokens always live 24 hours (the official builder fixes it), so they cannot be capped; put fpa in a rule of its own",
        ));
    }
    let identity_prefix = compile_namespace(&site, config, &binding, issuers)?;
    let rtm_permissions = compile_permissions(
        &site,
        &config.rtm_permissions,
        channel.as_ref(),
        peer_spiffe_id.as_ref(),
    )?;
    if !rtm_permissions.is_empty() && !actions.contains(&Action::Issue(Service::Rtm)) {
        return Err(site.error(
            "rtm_permissions",
            "only apply to `rtm`; add it to `actions`",
        ));
    }
    Ok(Rule {
        name: config.name.clone(),
        effect: config.effect,
        actions,
        issuer: config.issuer.clone(),
        channel,
        peer_spiffe_id,
        authenticate,
        condition,
        facts,
        project,
        max_role,
        binding,
        allow_wildcard_uid: config.allow_wildcard_uid,
        allow_wildcard_channel: config.allow_wildcard_channel,
        allow_app_token: config.allow_app_token,
        lifetimes,
        identity_prefix,
        rtm_permissions,
    })
}

/// The facts a condition reads: each must be declared (`[[facts]]`), each
/// capture their inputs read must be one of the rule's, and a rule whose
/// callers may have no JWT cannot ask a fact by the JWT.
fn compile_facts(
    site: &Site<'_>,
    condition: Option<&Condition>,
    declared: &[FactDeclaration],
    channel: Option<&ChannelPattern>,
    peer: Option<&SpiffeIdPattern>,
    authenticate: Authenticate,
) -> Result<Vec<usize>, PolicyError> {
    let Some(condition) = condition else {
        return Ok(Vec::new());
    };
    let mut facts = Vec::with_capacity(condition.facts().len());
    for name in condition.facts() {
        let Some(index) = declared.iter().position(|d| &*d.name == name.as_str()) else {
            let known: Vec<&str> = declared.iter().map(|d| &*d.name).collect();
            return Err(site.error(
                "condition",
                format!(
                    "reads facts.{name}, which no [[facts]] declares (declared: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        for input in &declared[index].inputs {
            if let Some(missing) = input.captures().find(|capture| {
                !channel.is_some_and(|c| c.has_capture(capture))
                    && !peer.is_some_and(|p| p.has_capture(capture))
            }) {
                return Err(site.error(
                    "condition",
                    format!(
                        "reads facts.{name}, whose input {:?} reads {{captures.{missing}}}, and neither the rule's channel nor its peer_spiffe_id captures {{{missing}}}",
                        input.as_str()
                    ),
                ));
            }
            if authenticate == Authenticate::Mtls
                && let Some(placeholder) = input.jwt_placeholder()
            {
                return Err(site.error(
                    "condition",
                    format!(
                        "reads facts.{name}, whose input {:?} reads {{{placeholder}}} from the JWT, and the rule says authenticate = \"mtls\", so its callers may have none",
                        input.as_str()
                    ),
                ));
            }
        }
        facts.push(index);
    }
    Ok(facts)
}

/// `peer_spiffe_id`: a SPIFFE ID pattern whose captures do not clash with the channel's.
fn compile_peer_pattern(
    site: &Site<'_>,
    config: &RuleConfig,
    channel: Option<&ChannelPattern>,
) -> Result<Option<SpiffeIdPattern>, PolicyError> {
    let Some(text) = &config.peer_spiffe_id else {
        return Ok(None);
    };
    let pattern = SpiffeIdPattern::parse(text).map_err(|e| site.error("peer_spiffe_id", e))?;
    if let Some(clash) = pattern
        .capture_names()
        .find(|name| channel.is_some_and(|c| c.has_capture(name)))
    {
        return Err(site.error(
            "peer_spiffe_id",
            format!(
                "capture {{{clash}}} is also a capture of the channel pattern, so `captures.{clash}` would be two things; rename one of them"
            ),
        ));
    }
    Ok(Some(pattern))
}

/// `authenticate`: `jwt` (the default of allow rules), `mtls` or `jwt+mtls`;
/// unset on a deny rule, every caller. A rule that admits callers without a
/// JWT (`mtls`) cannot read one: a key or a condition that would is refused,
/// rather than left to fail (or, in a deny rule, to fail closed) at run time.
fn compile_authenticate(
    site: &Site<'_>,
    config: &RuleConfig,
    condition: Option<&Condition>,
) -> Result<Authenticate, PolicyError> {
    let authenticate = match config.authenticate.as_deref() {
        None if config.effect == Effect::Deny => Authenticate::Any,
        None => Authenticate::Jwt,
        Some(text) => match AuthenticatedBy::parse(text) {
            Some(AuthenticatedBy::Jwt) => Authenticate::Jwt,
            Some(AuthenticatedBy::Mtls) => Authenticate::Mtls,
            Some(AuthenticatedBy::JwtAndMtls) => Authenticate::JwtAndMtls,
            None => {
                return Err(site.error(
                    "authenticate",
                    format!("{text:?} is not one of \"jwt\", \"mtls\", \"jwt+mtls\""),
                ));
            }
        },
    };
    if authenticate != Authenticate::Mtls {
        return Ok(authenticate);
    }
    let jwt_keys: [(&str, bool); 6] = [
        ("issuer", config.issuer.is_some()),
        ("uid_claim", config.uid_claim.is_some()),
        ("account_claim", config.account_claim.is_some()),
        ("cap_to_jwt_expiry", config.cap_to_jwt_expiry),
        ("identity_prefix", config.identity_prefix.is_some()),
        ("shared_identity", config.shared_identity),
    ];
    if let Some((key, _)) = jwt_keys.iter().find(|(_, set)| *set) {
        return Err(site.error(
            *key,
            "the rule says authenticate = \"mtls\", so its callers may have no JWT, and it cannot read one; use caller_chooses_identity (the workload names the user), or authenticate = \"jwt+mtls\" to require both",
        ));
    }
    if let Some(variable) = condition.and_then(|c| c.reads_any(&["claims", "caller"])) {
        return Err(site.error(
            "condition",
            format!(
                "reads `{variable}`, which comes from the JWT, and the rule says authenticate = \"mtls\", so its callers may have none; read `peer` instead, or say authenticate = \"jwt+mtls\""
            ),
        ));
    }
    Ok(authenticate)
}

/// `identity_prefix` and `shared_identity`: when the rule binds the identity
/// from a claim and callers of more than one issuer reach it, it must say how
/// their namespaces relate, or one issuer's "alice" is another's.
fn compile_namespace(
    site: &Site<'_>,
    config: &RuleConfig,
    binding: &Binding,
    issuers: &[Issuer],
) -> Result<IdentityPrefix, PolicyError> {
    let from_claim = matches!(binding, Binding::UidClaim(_) | Binding::AccountClaim(_));
    let prefix = match config.identity_prefix.as_deref() {
        None => IdentityPrefix::None,
        Some("issuer_name") => IdentityPrefix::IssuerName,
        Some(other) => {
            return Err(site.error(
                "identity_prefix",
                format!("{other:?} is not \"issuer_name\", the one prefix there is"),
            ));
        }
    };
    if prefix == IdentityPrefix::IssuerName {
        if config.shared_identity {
            return Err(site.error(
                "shared_identity",
                "conflicts with identity_prefix; set only one",
            ));
        }
        if !matches!(binding, Binding::AccountClaim(_)) {
            return Err(site.error(
                "identity_prefix",
                "only applies to account_claim: a numeric uid cannot carry a prefix (set issuer, or shared_identity = true)",
            ));
        }
        if issuers.is_empty() {
            return Err(site.error(
                "identity_prefix",
                "needs the configured issuers, and none were given",
            ));
        }
        if let Some(bad) = issuers
            .iter()
            .find(|i| i.name.is_empty() || !i.name.chars().all(is_agora_char))
        {
            return Err(site.error(
                "identity_prefix",
                format!(
                    "issuer name {:?} is not made of Agora account characters, so it cannot prefix an account",
                    bad.name
                ),
            ));
        }
    }
    if config.shared_identity && !from_claim {
        return Err(site.error(
            "shared_identity",
            "only applies to rules that bind the identity from a claim (uid_claim, account_claim)",
        ));
    }
    let reaching: Vec<&str> = match &config.issuer {
        None => issuers.iter().map(|i| i.name.as_str()).collect(),
        Some(iss) => issuers
            .iter()
            .filter(|i| i.iss.contains(iss))
            .map(|i| i.name.as_str())
            .collect(),
    };
    if from_claim && reaching.len() > 1 && prefix == IdentityPrefix::None && !config.shared_identity
    {
        let claim = match binding {
            Binding::UidClaim(c) | Binding::AccountClaim(c) => c.as_str(),
            Binding::CallerChooses | Binding::Unbound => "",
        };
        return Err(site.error(
            "issuer",
            format!(
                "the rule binds the identity from claim {claim:?} and callers of {} issuers ({}) reach it, so the same {claim:?} from two of them would get the same Agora identity; set issuer to one of them, identity_prefix = \"issuer_name\" (account_claim: the account becomes \"<issuer name>:<{claim}>\"), or shared_identity = true if they share one user namespace",
                reaching.len(),
                reaching.join(", ")
            ),
        ));
    }
    Ok(prefix)
}

/// `actions`: a non-empty list of known names, no repeats.
fn compile_actions(site: &Site<'_>, names: &[String]) -> Result<Vec<Action>, PolicyError> {
    if names.is_empty() {
        return Err(site.error(
            "actions",
            "list at least one of rtc, rtm, chat, fpa, inspect, explain",
        ));
    }
    let mut actions = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let action = Action::parse(name).ok_or_else(|| {
            site.error(
                format!("actions[{i}]"),
                format!("{name:?} is not one of rtc, rtm, chat, fpa, inspect, explain"),
            )
        })?;
        if actions.contains(&action) {
            return Err(site.error(format!("actions[{i}]"), format!("{name:?} is listed twice")));
        }
        actions.push(action);
    }
    Ok(actions)
}

/// A deny rule only matches; a grant key on it would be silently ignored, so it is refused.
fn check_deny_keys(site: &Site<'_>, c: &RuleConfig) -> Result<(), PolicyError> {
    let grant_keys: [(&str, bool); 17] = [
        ("project", c.project.is_some()),
        ("max_role", c.max_role.is_some()),
        ("uid_claim", c.uid_claim.is_some()),
        ("account_claim", c.account_claim.is_some()),
        ("caller_chooses_identity", c.caller_chooses_identity),
        ("allow_wildcard_uid", c.allow_wildcard_uid),
        ("allow_wildcard_channel", c.allow_wildcard_channel),
        ("allow_app_token", c.allow_app_token),
        ("default_ttl", c.default_ttl.is_some()),
        ("max_ttl", c.max_ttl.is_some()),
        ("join_ttl", c.join_ttl.is_some()),
        ("publish_ttl", c.publish_ttl.is_some()),
        ("clamp_ttl", c.clamp_ttl),
        ("cap_to_jwt_expiry", c.cap_to_jwt_expiry),
        ("identity_prefix", c.identity_prefix.is_some()),
        ("shared_identity", c.shared_identity),
        ("rtm_permissions", !c.rtm_permissions.is_empty()),
    ];
    match grant_keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(site.error(*key, "a deny rule grants nothing; remove this key")),
        None => Ok(()),
    }
}

/// `project`: required on allow rules that issue tokens, and must be known.
fn compile_project(
    site: &Site<'_>,
    config: &RuleConfig,
    projects: &BTreeSet<String>,
    issuing: bool,
) -> Result<Option<String>, PolicyError> {
    match &config.project {
        Some(p) if !projects.contains(p) => {
            let known: Vec<&str> = projects.iter().map(String::as_str).collect();
            Err(site.error(
                "project",
                format!(
                    "{p:?} is not a configured project (known: {})",
                    known.join(", ")
                ),
            ))
        }
        Some(p) => Ok(Some(p.clone())),
        None if issuing && config.effect == Effect::Allow => Err(site.error(
            "project",
            "an allow rule that issues tokens must name the project that signs them",
        )),
        None => Ok(None),
    }
}

/// The identity binding: exactly one of `uid_claim`, `account_claim`,
/// `caller_chooses_identity` on allow rules for rtc, rtm or chat.
fn compile_binding(
    site: &Site<'_>,
    config: &RuleConfig,
    actions: &[Action],
) -> Result<Binding, PolicyError> {
    let mut chosen = Vec::new();
    if let Some(claim) = &config.uid_claim {
        chosen.push(("uid_claim", Binding::UidClaim(claim.clone())));
    }
    if let Some(claim) = &config.account_claim {
        chosen.push(("account_claim", Binding::AccountClaim(claim.clone())));
    }
    if config.caller_chooses_identity {
        chosen.push(("caller_chooses_identity", Binding::CallerChooses));
    }
    for (key, binding) in &chosen {
        if let Binding::UidClaim(c) | Binding::AccountClaim(c) = binding
            && c.is_empty()
        {
            return Err(site.error(*key, "must name a claim"));
        }
    }
    let needs_identity = config.effect == Effect::Allow
        && actions.iter().any(|a| {
            matches!(
                a,
                Action::Issue(Service::Rtc | Service::Rtm | Service::Chat)
            )
        });
    match chosen.len() {
        0 if needs_identity => Err(site.error(
            "uid_claim",
            "an allow rule for rtc, rtm or chat must bind the identity: set one of uid_claim, account_claim, caller_chooses_identity",
        )),
        0 => Ok(Binding::Unbound),
        1 => Ok(chosen.remove(0).1),
        _ => Err(site.error(
            chosen[1].0,
            format!("conflicts with {}; set only one way to bind the identity", chosen[0].0),
        )),
    }
}

/// The lifetimes: positive, at most 24 h, default at most max.
fn compile_lifetimes(site: &Site<'_>, c: &RuleConfig) -> Result<Lifetimes, PolicyError> {
    let default = optional_lifetime(site, "default_ttl", c.default_ttl.as_deref())?;
    let max = optional_lifetime(site, "max_ttl", c.max_ttl.as_deref())?;
    let join = optional_lifetime(site, "join_ttl", c.join_ttl.as_deref())?;
    let publish = optional_lifetime(site, "publish_ttl", c.publish_ttl.as_deref())?;
    let fallback = Lifetime::from_secs(DEFAULT_TTL_SECS)
        .map_err(|e| site.error("default_ttl", e.to_string()))?;
    let (default, max) = match (default, max) {
        (Some(d), Some(m)) if d > m => {
            return Err(site.error(
                "default_ttl",
                format!("{}s is above max_ttl ({}s)", d.secs(), m.secs()),
            ));
        }
        (Some(d), Some(m)) => (d, m),
        (Some(d), None) => (d, d),
        (None, Some(m)) => (fallback.min(m), m),
        (None, None) => (fallback, fallback),
    };
    Ok(Lifetimes {
        default,
        max,
        join,
        publish,
        clamp: c.clamp_ttl,
        cap_to_jwt: c.cap_to_jwt_expiry,
    })
}

/// Parses a humantime duration such as `"90s"` or `"1h"` into a `Lifetime`.
fn optional_lifetime(
    site: &Site<'_>,
    key: &str,
    text: Option<&str>,
) -> Result<Option<Lifetime>, PolicyError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let duration: Duration = humantime::parse_duration(text).map_err(|e| {
        site.error(
            key,
            format!("{text:?} is not a duration like \"90s\" or \"1h\": {e}"),
        )
    })?;
    if duration.subsec_nanos() != 0 {
        return Err(site.error(key, format!("{text:?} is not a whole number of seconds")));
    }
    Lifetime::from_secs(duration.as_secs())
        .map(Some)
        .map_err(|_| site.error(key, format!("{text:?} is outside 1s..=24h")))
}

/// `rtm_permissions`: known types and accesses, templates referring to captures.
fn compile_permissions(
    site: &Site<'_>,
    configs: &[Rtm2PermissionConfig],
    channel: Option<&ChannelPattern>,
    peer: Option<&SpiffeIdPattern>,
) -> Result<Vec<PermissionTemplate>, PolicyError> {
    let mut out = Vec::with_capacity(configs.len());
    for (i, config) in configs.iter().enumerate() {
        let key = format!("rtm_permissions[{i}]");
        let resource_type = Rtm2ResourceType::parse(&config.resource_type).ok_or_else(|| {
            let names: Vec<&str> = Rtm2ResourceType::ALL.iter().map(|t| t.as_str()).collect();
            site.error(
                format!("{key}.resource_type"),
                format!(
                    "{:?} is not one of {}",
                    config.resource_type,
                    names.join(", ")
                ),
            )
        })?;
        let access = Rtm2PermissionType::parse(&config.access).ok_or_else(|| {
            site.error(
                format!("{key}.access"),
                format!("{:?} is not read or write", config.access),
            )
        })?;
        if config.resources.is_empty() {
            return Err(site.error(format!("{key}.resources"), "list at least one resource"));
        }
        let mut resources = Vec::with_capacity(config.resources.len());
        for (j, text) in config.resources.iter().enumerate() {
            let known = |name: &str| {
                channel.is_some_and(|p| p.has_capture(name))
                    || peer.is_some_and(|p| p.has_capture(name))
            };
            let template = Template::parse(text, known)
                .map_err(|e| site.error(format!("{key}.resources[{j}]"), e))?;
            // The channel itself (a star-free pattern written again) is the
            // one multi-capture resource that is safe: it renders exactly
            // the channel, whose split the matcher has proved unique.
            let is_the_channel =
                channel.is_some_and(|p| p.as_str() == text.as_str()) && !text.contains('*');
            if template.is_ambiguous() && !is_the_channel {
                // Unlike a channel, a granted resource cannot be refused at
                // request time: `team-a-*` already covers team `a-b`.
                return Err(site.error(
                    format!("{key}.resources[{j}]"),
                    format!(
                        "{text:?} combines a capture with another capture or `*`, so one member's resource can cover or equal another's (`team-{{team}}-*` for team `a` covers team `a-b`); use the capture with fixed text only, e.g. \"team-{{team}}\" or \"team-{{team}}-chat\", or exactly the channel pattern when it has no `*`"
                    ),
                ));
            }
            resources.push(template);
        }
        out.push(PermissionTemplate {
            resource_type,
            access,
            resources,
        });
    }
    Ok(out)
}

impl Rule {
    /// Whether every request this rule matches is also matched by `earlier`,
    /// which has no condition: then this rule is never reached.
    pub(crate) fn is_shadowed_by(&self, earlier: &Rule) -> bool {
        earlier.condition.is_none()
            && self.actions.iter().all(|a| earlier.actions.contains(a))
            && (earlier.issuer.is_none() || earlier.issuer == self.issuer)
            && (earlier.project.is_none() || earlier.project == self.project)
            && earlier.authenticate.covers(self.authenticate)
            && match (&earlier.channel, &self.channel) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(wide), Some(narrow)) => narrow.is_covered_by(wide),
            }
            && match (&earlier.peer_spiffe_id, &self.peer_spiffe_id) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(wide), Some(narrow)) => narrow.is_covered_by(wide),
            }
    }
}

impl Authenticate {
    /// The way of authenticating each caller kind, for [`Authenticate::covers`].
    const CALLERS: [AuthenticatedBy; 3] = [
        AuthenticatedBy::Jwt,
        AuthenticatedBy::Mtls,
        AuthenticatedBy::JwtAndMtls,
    ];

    /// Whether a caller who authenticated `by` this way may match the rule.
    pub(crate) fn accepts(self, by: AuthenticatedBy) -> bool {
        match self {
            Authenticate::Any => true,
            Authenticate::Jwt => matches!(by, AuthenticatedBy::Jwt | AuthenticatedBy::JwtAndMtls),
            Authenticate::Mtls => matches!(by, AuthenticatedBy::Mtls | AuthenticatedBy::JwtAndMtls),
            Authenticate::JwtAndMtls => by == AuthenticatedBy::JwtAndMtls,
        }
    }

    /// Whether every caller `narrower` accepts, this accepts too.
    fn covers(self, narrower: Authenticate) -> bool {
        Self::CALLERS
            .iter()
            .all(|by| !narrower.accepts(*by) || self.accepts(*by))
    }

    /// The name as written (`any` for a deny rule without `authenticate`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Authenticate::Jwt => "jwt",
            Authenticate::Mtls => "mtls",
            Authenticate::JwtAndMtls => "jwt+mtls",
            Authenticate::Any => "any",
        }
    }
}
