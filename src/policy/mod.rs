//! Per-channel business rules: compile once at load, `evaluate(.., now) -> Decision`.
//!
//! Pure: never reads the clock, the network or the environment. `now` is an
//! argument, the rules arrive as TOML text or as already-deserialized
//! [`RuleConfig`]s together with the names of the configured Agora projects.
//!
//! An ordered list of rules; the first whose match holds decides, and when
//! none does the answer is deny (`no_matching_rule`). A rule matches on the
//! action, how the caller authenticated (`authenticate`: a JWT, a verified
//! workload, or both), the caller's issuer, the requested project, a channel
//! pattern with captures, the caller's workload SPIFFE ID (a pattern with
//! captures too) and a CEL condition; an allow rule then decides the grant (role,
//! identity, lifetimes, project, RTM 2 permissions), or for `inspect` and
//! `explain`, which issue nothing, a [`Permit`]; or it denies with a stable
//! [`DenyReason`]. The syntax is documented in the README ("Policy rules") and
//! taught by `deploy/examples/policy.toml`.

mod compile;
mod condition;
mod config;
mod decision;
mod evaluate;
mod fact;
mod grant;
mod key;
mod pattern;
mod request;
mod spiffe;
mod trace;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cel::Env;

use std::collections::BTreeMap;

use compile::{Rule, compile_rule};
use condition::Reads;

pub use compile::Issuer;
pub use fact::{FactDeclaration, FactQuery, FactTrace, Facts, Fetched, InputTemplate};
pub use key::KeyExpression;

/// Requests and grants name channels with the domain's scope, which the token layer also takes.
pub use crate::domain::ChannelScope;
pub use config::{Effect, PolicyConfig, Rtm2PermissionConfig, RuleConfig};
pub use decision::{
    BoundIdentity, ChatGrant, Decision, Denial, DenyReason, FpaGrant, Grant, Permit, RtcGrant,
    Rtm2Permission, RtmGrant, Terms,
};
pub use request::{Action, AuthenticatedBy, Caller, Peer, Request, RequestedIdentity, Service};
pub use spiffe::{MAX_SPIFFE_ID_BYTES, SpiffeIdPattern, is_spiffe_id};
pub use trace::{RuleOutcome, RuleTrace, Trace};

/// A compiled policy: immutable, cheap to share behind an `Arc`.
pub struct Policy {
    rules: Vec<Rule>,
    projects: BTreeSet<String>,
    /// The configured issuers' names by `iss`, for `identity_prefix`.
    issuer_names: BTreeMap<String, String>,
    /// Whether an allow rule says `authenticate = "mtls"` (computed once:
    /// the pipeline asks on every call without a JWT).
    admits_workloads: bool,
    env: Arc<Env>,
    /// What the rules' conditions read, so an activation builds only that.
    reads: Reads,
    /// The facts the config declares; rules refer to them by index.
    facts: Vec<FactDeclaration>,
    /// Whether some rule reads a fact (computed once: asked on every call).
    reads_facts: bool,
}

/// A problem that does not stop loading but that an operator should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWarning {
    /// A rule can never match: an earlier rule without a condition matches everything it does.
    Shadowed {
        /// The unreachable rule's index.
        index: usize,
        /// The unreachable rule's name.
        name: String,
        /// The earlier rule's index.
        by_index: usize,
        /// The earlier rule's name.
        by_name: String,
    },
    /// A rule's channel pattern can fit a channel with more than one value of
    /// a capture; such channels are refused (`ambiguous_channel`).
    AmbiguousPattern {
        /// The rule's index.
        index: usize,
        /// The rule's name.
        name: String,
        /// The pattern as written.
        pattern: String,
        /// The capture whose value a channel may not determine.
        capture: String,
        /// An unambiguous pattern to consider instead.
        suggestion: String,
    },
}

/// A policy that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is not TOML of the policy's shape (the message has the line and key).
    #[error("policy is not valid: {0}")]
    Syntax(String),
    /// One key of one rule is wrong.
    #[error("rules[{index}] ({name:?}).{key}: {reason}")]
    InvalidRule {
        /// The rule's index, from 0.
        index: usize,
        /// The rule's name as written.
        name: String,
        /// The key at fault, e.g. `channel` or `rtm_permissions[0].access`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Policy {
    /// Parses `[[rules]]` from TOML text and compiles them; see [`Policy::compile`].
    pub fn from_toml<S: AsRef<str>>(
        text: &str,
        projects: &[S],
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        let config: PolicyConfig =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        Self::compile(&config.rules, projects)
    }

    /// Checks and compiles `rules`, whose `project` keys must be among
    /// `projects`, knowing no issuers: a rule with `identity_prefix` is
    /// refused and no rule is checked for identities that collide across
    /// issuers. The service config uses [`Policy::compile_with_issuers`].
    pub fn compile<S: AsRef<str>>(
        rules: &[RuleConfig],
        projects: &[S],
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        Self::compile_with_issuers(rules, projects, &[])
    }

    /// Checks and compiles `rules` for the configured `projects` and
    /// `issuers`. With more than one issuer, a rule that binds the identity
    /// from a claim and that callers of several issuers reach must set
    /// `identity_prefix` or `shared_identity`. Returns the policy and the
    /// warnings for the caller to report.
    pub fn compile_with_issuers<S: AsRef<str>>(
        rules: &[RuleConfig],
        projects: &[S],
        issuers: &[Issuer],
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        Self::compile_with_facts(rules, projects, issuers, Vec::new())
    }

    /// Checks and compiles `rules` like [`Policy::compile_with_issuers`],
    /// with the `facts` their conditions may read (`facts.<name>`): a rule
    /// that reads an undeclared fact, or a fact whose inputs read a capture
    /// the rule does not have, is refused.
    pub fn compile_with_facts<S: AsRef<str>>(
        rules: &[RuleConfig],
        projects: &[S],
        issuers: &[Issuer],
        facts: Vec<FactDeclaration>,
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        let env = Arc::new(Env::stdlib());
        let projects: BTreeSet<String> = projects.iter().map(|p| p.as_ref().to_owned()).collect();
        let mut compiled: Vec<Rule> = Vec::with_capacity(rules.len());
        for (index, config) in rules.iter().enumerate() {
            if let Some(first) = compiled.iter().position(|r| r.name == config.name) {
                return Err(PolicyError::InvalidRule {
                    index,
                    name: config.name.clone(),
                    key: "name".to_owned(),
                    reason: format!("rules[{first}] already has this name; names must be unique"),
                });
            }
            compiled.push(compile_rule(
                &env, index, config, &projects, issuers, &facts,
            )?);
        }
        let mut warnings = shadowing(&compiled);
        warnings.extend(ambiguity(&compiled));
        let mut reads = Reads::default();
        for condition in compiled.iter().filter_map(|rule| rule.condition.as_ref()) {
            reads |= condition.reads();
        }
        let reads_facts = compiled.iter().any(|r| !r.facts.is_empty());
        let admits_workloads = compiled
            .iter()
            .any(|r| r.effect == Effect::Allow && r.authenticate == compile::Authenticate::Mtls);
        Ok((
            Policy {
                admits_workloads,
                rules: compiled,
                projects,
                issuer_names: issuers
                    .iter()
                    .flat_map(|i| i.iss.iter().map(|iss| (iss.clone(), i.name.clone())))
                    .collect(),
                env,
                reads,
                facts,
                reads_facts,
            },
            warnings,
        ))
    }

    /// How many rules the policy has.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rules (and so denies everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule reads a fact: without one, no call fetches any.
    pub fn reads_facts(&self) -> bool {
        self.reads_facts
    }

    /// The rule names, in order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .field("projects", &self.projects)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyWarning::Shadowed {
                index,
                name,
                by_index,
                by_name,
            } => write!(
                f,
                "rules[{index}] ({name:?}) can never match: rules[{by_index}] ({by_name:?}) matches every request it does"
            ),
            PolicyWarning::AmbiguousPattern {
                index,
                name,
                pattern,
                capture,
                suggestion,
            } => write!(
                f,
                "rules[{index}] ({name:?}).channel: {pattern:?} can fit one channel with different values of {{{capture}}} (the text after it can also occur inside it), and such channels are refused with ambiguous_channel; make {{{capture}}} the pattern's only `*` or capture, e.g. {suggestion:?}, or follow it with a delimiter that names never contain, so that real channels always split one way"
            ),
        }
    }
}

/// One warning per rule whose channel pattern can split a channel more than one way.
fn ambiguity(rules: &[Rule]) -> Vec<PolicyWarning> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            let pattern = rule.channel.as_ref()?;
            let capture = pattern.ambiguous_capture()?;
            Some(PolicyWarning::AmbiguousPattern {
                index,
                name: rule.name.clone(),
                pattern: pattern.as_str().to_owned(),
                capture: capture.to_owned(),
                suggestion: pattern.unambiguous_form(capture),
            })
        })
        .collect()
}

/// One warning per rule that an earlier unconditional rule covers entirely.
fn shadowing(rules: &[Rule]) -> Vec<PolicyWarning> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            let (by_index, by) = rules[..index]
                .iter()
                .enumerate()
                .find(|(_, earlier)| rule.is_shadowed_by(earlier))?;
            Some(PolicyWarning::Shadowed {
                index,
                name: rule.name.clone(),
                by_index,
                by_name: by.name.clone(),
            })
        })
        .collect()
}
