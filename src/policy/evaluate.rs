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
use super::grant::Caller;
use super::pattern::{Captures, Split};
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
    /// A deny rule's pattern splits the channel more than one way: fail closed.
    Ambiguous(Ambiguity<'a>),
}

/// A channel that fits a rule's pattern with different values of a capture.
#[derive(Clone, Copy)]
struct Ambiguity<'a> {
    pattern: &'a str,
    capture: &'a str,
    first: &'a str,
    second: &'a str,
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
    /// See [`RuleOutcome::AmbiguousChannel`].
    Ambiguous(Ambiguity<'a>),
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
        // The first allow rule skipped because the channel splits its pattern
        // more than one way: if no later rule decides, it names the denial.
        let mut skipped: Option<(&Rule, Ambiguity<'_>)> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            match self.match_rule(rule, principal, request, now, &mut activation) {
                Match::No(Miss::Ambiguous(ambiguity)) => {
                    note(&mut trace, index, rule, || {
                        Miss::Ambiguous(ambiguity).into_outcome()
                    });
                    skipped.get_or_insert((rule, ambiguity));
                }
                Match::No(why) => note(&mut trace, index, rule, || why.into_outcome()),
                Match::Ambiguous(ambiguity) => {
                    note(&mut trace, index, rule, || {
                        Miss::Ambiguous(ambiguity).into_outcome()
                    });
                    let detail = format!(
                        "the channel fits the deny rule's pattern {:?} with more than one value of {{{}}}, so the exception may apply",
                        ambiguity.pattern, ambiguity.capture
                    );
                    return deny(DenyReason::AmbiguousChannel, Some(rule), detail);
                }
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
                        Effect::Allow => {
                            let caller = Caller {
                                principal,
                                issuer_name: self
                                    .issuer_names
                                    .get(&principal.issuer)
                                    .map(String::as_str),
                            };
                            grant(rule, caller, request, &captures, now)
                        }
                    };
                }
            }
        }
        if let Some((rule, ambiguity)) = skipped {
            let detail = format!(
                "the channel fits the rule's pattern {:?} with more than one value of {{{}}}, so the rule does not apply, and no later rule matched",
                ambiguity.pattern, ambiguity.capture
            );
            return deny(DenyReason::AmbiguousChannel, Some(rule), detail);
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

    /// Whether `rule` matches: action, issuer, project, channel (one split
    /// only), then condition.
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
            (Some(p), Some(ChannelScope::Named(name))) => match p.split(name.as_str()) {
                Split::One(captures) => captures,
                Split::NoMatch => return Match::No(Miss::Channel(p.as_str())),
                Split::Ambiguous {
                    capture,
                    first,
                    second,
                } => {
                    let ambiguity = Ambiguity {
                        pattern: p.as_str(),
                        capture,
                        first,
                        second,
                    };
                    // What a rule decides must not depend on the split: an
                    // allow rule does not apply, a deny rule denies.
                    return match rule.effect {
                        Effect::Allow => Match::No(Miss::Ambiguous(ambiguity)),
                        Effect::Deny => Match::Ambiguous(ambiguity),
                    };
                }
            },
            (Some(p), Some(ChannelScope::Wildcard)) => return Match::No(Miss::Channel(p.as_str())),
        };
        let Some(condition) = &rule.condition else {
            return Match::Yes(captures);
        };
        let activation = activation
            .get_or_insert_with(|| Activation::new(&self.env, self.reads, principal, request, now));
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
            Miss::Ambiguous(a) => RuleOutcome::AmbiguousChannel {
                pattern: a.pattern.to_owned(),
                capture: a.capture.to_owned(),
                values: vec![a.first.to_owned(), a.second.to_owned()],
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
    caller: Caller<'_>,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Decision {
    match super::grant::decide(rule, caller, request, captures, now) {
        Ok(decision) => decision,
        Err((reason, detail)) => deny(reason, Some(rule), detail),
    }
}
