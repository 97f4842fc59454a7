//! The explanation of a decision: every rule considered, in order, and why it
//! did or did not match. It powers `ExplainAccess` and the audit log.

use std::fmt;

use super::decision::Decision;
use super::fact::FactTrace;

/// The full story of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// A check made before any rule (an unknown project), if it decided.
    pub precheck: Option<String>,
    /// The rules considered, in order; evaluation stops at the first match.
    pub rules: Vec<RuleTrace>,
    /// The decision, repeated so a trace stands alone in an audit record.
    pub decision: Option<Decision>,
}

/// One rule's part in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// The rule's position, from 0.
    pub index: usize,
    /// The rule's name.
    pub name: String,
    /// What happened.
    pub outcome: RuleOutcome,
    /// The facts its condition read, as fetched for this call.
    pub facts: Vec<FactTrace>,
}

/// Why a rule did or did not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    /// The rule does not list the requested action.
    ActionNotListed,
    /// The caller did not authenticate as the rule's `authenticate` says
    /// (a workload without a JWT and a `jwt` rule, a JWT caller and an
    /// `mtls` or `jwt+mtls` rule without a verified workload).
    AuthenticationNotAccepted {
        /// The rule's `authenticate`.
        required: String,
        /// How the caller authenticated (`jwt`, `mtls`, `jwt+mtls`).
        presented: String,
    },
    /// The rule has `peer_spiffe_id` and the caller has no verified SPIFFE ID.
    NoPeerSpiffeId,
    /// The caller's SPIFFE ID does not fit the rule's `peer_spiffe_id`.
    PeerSpiffeIdMismatch {
        /// The rule's pattern.
        pattern: String,
    },
    /// The caller's issuer is not the rule's `issuer`.
    IssuerMismatch,
    /// The request names a project other than the rule's `project`.
    ProjectMismatch,
    /// The rule has a channel pattern and the request names no channel.
    NoChannel,
    /// The channel does not fit the rule's pattern (the wildcard only fits `*`).
    ChannelMismatch {
        /// The rule's pattern.
        pattern: String,
    },
    /// The channel fits the rule's pattern with more than one value of a
    /// capture: an allow rule does not apply, a deny rule denies
    /// (`ambiguous_channel`).
    AmbiguousChannel {
        /// The rule's pattern.
        pattern: String,
        /// The capture whose value the channel does not determine.
        capture: String,
        /// Two of the values it could take.
        values: Vec<String>,
    },
    /// The condition evaluated to `false`.
    ConditionFalse {
        /// The condition as written.
        condition: String,
    },
    /// The condition failed at run time: an allow rule does not match, a deny rule denies.
    ConditionFailed {
        /// The condition as written.
        condition: String,
        /// The evaluation error, one line.
        error: String,
    },
    /// A fact the condition reads could not be had: an allow rule does not
    /// apply, a deny rule denies (`fact_unavailable`).
    FactUnavailable {
        /// The fact's name.
        fact: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// Every match key held: this rule decided.
    Matched {
        /// The captures of the channel pattern, then of `peer_spiffe_id`, in pattern order.
        captures: Vec<(String, String)>,
    },
}

impl Trace {
    /// An empty trace.
    pub(crate) fn new() -> Self {
        Self {
            precheck: None,
            rules: Vec::new(),
            decision: None,
        }
    }
}

impl fmt::Display for RuleOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleOutcome::ActionNotListed => f.write_str("action not listed in `actions`"),
            RuleOutcome::AuthenticationNotAccepted {
                required,
                presented,
            } => write!(
                f,
                "authentication_not_accepted: the rule needs authenticate = {required:?} and the caller authenticated by {presented}"
            ),
            RuleOutcome::NoPeerSpiffeId => f.write_str("caller has no verified SPIFFE ID"),
            RuleOutcome::PeerSpiffeIdMismatch { pattern } => {
                write!(f, "caller's SPIFFE ID does not match {pattern:?}")
            }
            RuleOutcome::IssuerMismatch => f.write_str("caller's issuer is not `issuer`"),
            RuleOutcome::ProjectMismatch => f.write_str("requested project is not `project`"),
            RuleOutcome::NoChannel => f.write_str("request names no channel"),
            RuleOutcome::ChannelMismatch { pattern } => {
                write!(f, "channel does not match {pattern:?}")
            }
            RuleOutcome::AmbiguousChannel {
                pattern,
                capture,
                values,
            } => {
                write!(
                    f,
                    "channel splits {pattern:?} more than one way: {capture} = "
                )?;
                for (i, value) in values.iter().enumerate() {
                    let or = if i == 0 { "" } else { " or " };
                    write!(f, "{or}{value:?}")?;
                }
                Ok(())
            }
            RuleOutcome::ConditionFalse { condition } => {
                write!(f, "condition is false: {condition}")
            }
            RuleOutcome::ConditionFailed { condition, error } => {
                write!(f, "condition failed ({error}): {condition}")
            }
            RuleOutcome::FactUnavailable { fact, reason } => {
                write!(f, "fact_unavailable: facts.{fact}: {reason}")
            }
            RuleOutcome::Matched { captures } if captures.is_empty() => f.write_str("matched"),
            RuleOutcome::Matched { captures } => {
                f.write_str("matched with")?;
                for (name, value) in captures {
                    write!(f, " {name}={value:?}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(check) = &self.precheck {
            writeln!(f, "before rules: {check}")?;
        }
        for rule in &self.rules {
            writeln!(f, "rules[{}] {:?}: {}", rule.index, rule.name, rule.outcome)?;
            for fact in &rule.facts {
                writeln!(f, "  {fact}")?;
            }
        }
        match &self.decision {
            Some(Decision::Allow(grant)) => write!(f, "allow by rule {:?}", grant.rule()),
            Some(Decision::Permit(permit)) => write!(f, "allow by rule {:?}", permit.rule),
            Some(Decision::Deny(denial)) => write!(f, "deny: {denial}"),
            None => f.write_str("no decision"),
        }
    }
}
