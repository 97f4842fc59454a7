//! Evaluation: walk the rules in order, the first match decides; an allow
//! rule's grant is built within its limits by [`super::grant`].
//!
//! Nothing here reads the clock: `now` is an argument and only stamps the grant.

use crate::domain::Principal;

use super::Policy;
use super::compile::Rule;
use super::condition::{Activation, ConditionFailure};
use super::config::Effect;
use super::decision::{Decision, Denial, DenyReason};
use super::pattern::Captures;
use super::request::{ChannelScope, Request};
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

/// The grant or permit of the allow rule that matched, or the denial of its limits.
fn grant(
    rule: &Rule,
    principal: &Principal,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Decision {
    match super::grant::decide(rule, principal, request, captures, now) {
        Ok(decision) => decision,
        Err((reason, detail)) => deny(reason, Some(rule), detail),
    }
}
