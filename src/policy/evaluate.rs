//! Evaluation: walk the rules in order, the first match decides; an allow
//! rule's grant is built within its limits by [`super::grant`].
//!
//! Nothing here reads the clock: `now` is an argument and only stamps the grant.
//!
//! A rule's keys are checked in this order: action, `authenticate`, issuer,
//! project, channel, `peer_spiffe_id`, condition. `authenticate` comes
//! before anything that reads the JWT, so a workload without one never
//! reaches a `jwt` rule's issuer or condition.
//!
//! Facts (`facts.<name>`) are data: [`Policy::facts_needed`] says which the
//! rules that can decide a call read, the pipeline fetches them, and the
//! evaluation reads them from the [`Facts`] it is given. A rule whose fact
//! is unavailable fails closed: an allow rule does not apply, a deny rule
//! denies, and the reason is `fact_unavailable`, never a silent allow.

use std::sync::Arc;

use super::Policy;
use super::compile::{Authenticate, Rule};
use super::condition::{Activation, ConditionFailure};
use super::config::Effect;
use super::decision::{Decision, Denial, DenyReason};
use super::fact::{FactQuery, FactTrace, Facts, Scope, Unreadable};
use super::grant::Who;
use super::pattern::{Captures, Split};
use super::request::{Caller, ChannelScope, Request};
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
    /// A deny rule's fact is unavailable: fail closed.
    Unavailable(Unreadable),
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
    /// See [`RuleOutcome::AuthenticationNotAccepted`].
    Authentication {
        required: &'static str,
        presented: &'static str,
    },
    /// See [`RuleOutcome::NoPeerSpiffeId`].
    NoPeerSpiffeId,
    /// See [`RuleOutcome::PeerSpiffeIdMismatch`].
    PeerSpiffeId(&'a str),
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
    /// See [`RuleOutcome::FactUnavailable`].
    FactUnavailable(Unreadable),
}

/// An allow rule that did not apply although the request fits its pattern:
/// if no later rule decides, it names the denial.
enum Skipped<'a> {
    /// The channel splits the rule's pattern more than one way.
    Ambiguous(&'a Rule, Ambiguity<'a>),
    /// The caller did not authenticate as the rule says.
    Authentication(&'a Rule, &'static str, &'static str),
    /// A fact the rule's condition reads is unavailable.
    FactUnavailable(&'a Rule, Unreadable),
}

impl Policy {
    /// Decides `request` for `caller` (a [`Caller`], or a `&Principal` for a
    /// JWT caller with no transport identity) at `now` (unix seconds).
    pub fn evaluate<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: &Request,
        now: u64,
    ) -> Decision {
        self.decide(caller.into(), request, now, &Facts::none(), None)
    }

    /// Decides like [`Policy::evaluate`], with the `facts` fetched for the
    /// call (those [`Policy::facts_needed`] named).
    pub fn evaluate_with_facts<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: &Request,
        now: u64,
        facts: &Facts,
    ) -> Decision {
        self.decide(caller.into(), request, now, facts, None)
    }

    /// Decides like [`Policy::evaluate`] and explains how.
    pub fn explain<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: &Request,
        now: u64,
    ) -> (Decision, Trace) {
        self.explain_with_facts(caller, request, now, &Facts::none())
    }

    /// Decides like [`Policy::evaluate_with_facts`] and explains how,
    /// with each rule's facts.
    pub fn explain_with_facts<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: &Request,
        now: u64,
        facts: &Facts,
    ) -> (Decision, Trace) {
        let mut trace = Trace::new();
        let decision = self.decide(caller.into(), request, now, facts, Some(&mut trace));
        trace.decision = Some(decision.clone());
        (decision, trace)
    }

    /// The facts that evaluating `request` for `caller` may read: those of
    /// each rule whose keys (action, authentication, issuer, project,
    /// channel, SPIFFE ID) hold, up to the first such rule that has no
    /// condition (it decides, so no later rule is reached), each query once.
    /// A fact whose inputs cannot be rendered is not asked (the rule's
    /// condition then fails, as for a missing claim).
    pub fn facts_needed<'c>(
        &self,
        caller: impl Into<Caller<'c>>,
        request: &Request,
    ) -> Vec<FactQuery> {
        let caller = caller.into();
        let mut needed: Vec<FactQuery> = Vec::new();
        if !self.reads_facts || self.check_project(request, &mut None).is_some() {
            return needed;
        }
        for rule in &self.rules {
            let captures = match self.match_keys(rule, caller, request) {
                Ok(captures) => captures,
                // A deny rule that splits the channel two ways decides.
                Err(Match::Ambiguous(_)) => break,
                Err(_) => continue,
            };
            if rule.condition.is_none() {
                break;
            }
            let scope = Scope {
                caller,
                request,
                captures: &captures,
            };
            for &index in &rule.facts {
                if let Ok(query) = self.facts[index].query(scope)
                    && !needed.contains(&query)
                {
                    needed.push(query);
                }
            }
        }
        needed
    }

    /// Whether some rule admits callers without a JWT (`authenticate = "mtls"`).
    /// Without one, a call with no JWT is refused as unauthenticated before
    /// the rules, whatever its transport identity.
    pub fn admits_workloads(&self) -> bool {
        self.admits_workloads
    }

    /// The shared walk; records into `trace` when given one.
    fn decide(
        &self,
        caller: Caller<'_>,
        request: &Request,
        now: u64,
        facts: &Facts,
        mut trace: Option<&mut Trace>,
    ) -> Decision {
        if let Some(denial) = self.check_project(request, &mut trace) {
            return denial;
        }
        // Built on first use: most requests are decided by pattern or action
        // before any condition runs, and a failed build fails every condition.
        let mut activation: Option<Result<Activation<'_>, String>> = None;
        // The first allow rule skipped although the request fits it (its
        // channel splits two ways, or the caller authenticated otherwise):
        // if no later rule decides, it names the denial.
        let mut skipped: Option<Skipped<'_>> = None;
        // The facts the rule being matched read, when tracing.
        let mut used: Vec<FactTrace> = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let recorder = if trace.is_some() {
                Some(&mut used)
            } else {
                None
            };
            let matched =
                self.match_rule(rule, caller, request, now, facts, &mut activation, recorder);
            match matched {
                Match::No(Miss::Ambiguous(ambiguity)) => {
                    note(&mut trace, &mut used, index, rule, || {
                        Miss::Ambiguous(ambiguity).into_outcome()
                    });
                    skipped.get_or_insert(Skipped::Ambiguous(rule, ambiguity));
                }
                Match::No(Miss::Authentication {
                    required,
                    presented,
                }) => {
                    note(&mut trace, &mut used, index, rule, || {
                        RuleOutcome::AuthenticationNotAccepted {
                            required: required.to_owned(),
                            presented: presented.to_owned(),
                        }
                    });
                    if skipped.is_none()
                        && rule.effect == Effect::Allow
                        && fits_but_for_authentication(rule, caller, request)
                    {
                        skipped = Some(Skipped::Authentication(rule, required, presented));
                    }
                }
                Match::No(Miss::FactUnavailable(unreadable)) => {
                    note(&mut trace, &mut used, index, rule, || {
                        RuleOutcome::FactUnavailable {
                            fact: unreadable.fact().to_owned(),
                            reason: unreadable.to_string(),
                        }
                    });
                    if skipped.is_none() {
                        skipped = Some(Skipped::FactUnavailable(rule, unreadable));
                    }
                }
                Match::No(why) => note(&mut trace, &mut used, index, rule, || why.into_outcome()),
                Match::Ambiguous(ambiguity) => {
                    note(&mut trace, &mut used, index, rule, || {
                        Miss::Ambiguous(ambiguity).into_outcome()
                    });
                    let detail = format!(
                        "the channel fits the deny rule's pattern {:?} with more than one value of {{{}}}, so the exception may apply",
                        ambiguity.pattern, ambiguity.capture
                    );
                    return deny(DenyReason::AmbiguousChannel, Some(rule), detail);
                }
                Match::Unavailable(unreadable) => {
                    note(&mut trace, &mut used, index, rule, || {
                        RuleOutcome::FactUnavailable {
                            fact: unreadable.fact().to_owned(),
                            reason: unreadable.to_string(),
                        }
                    });
                    return fact_unavailable(
                        rule,
                        &unreadable,
                        "a deny rule's fact is unavailable, so the request is refused",
                    );
                }
                Match::Failed(condition, error) => {
                    note(&mut trace, &mut used, index, rule, || {
                        RuleOutcome::ConditionFailed {
                            condition: condition.to_owned(),
                            error,
                        }
                    });
                    let detail = "a deny rule's condition failed, so the request is refused";
                    return deny(DenyReason::ConditionError, Some(rule), detail.to_owned());
                }
                Match::Yes(captures) => {
                    note(&mut trace, &mut used, index, rule, || {
                        RuleOutcome::Matched {
                            captures: captures
                                .iter()
                                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                                .collect(),
                        }
                    });
                    return match rule.effect {
                        Effect::Deny => {
                            let detail = "a deny rule matched".to_owned();
                            deny(DenyReason::DeniedByRule, Some(rule), detail)
                        }
                        Effect::Allow => {
                            let who = Who {
                                principal: caller.principal,
                                issuer_name: caller.principal.and_then(|p| {
                                    self.issuer_names.get(&p.issuer).map(String::as_str)
                                }),
                            };
                            grant(rule, who, request, &captures, now)
                        }
                    };
                }
            }
        }
        match skipped {
            Some(Skipped::Ambiguous(rule, ambiguity)) => {
                let detail = format!(
                    "the channel fits the rule's pattern {:?} with more than one value of {{{}}}, so the rule does not apply, and no later rule matched",
                    ambiguity.pattern, ambiguity.capture
                );
                return deny(DenyReason::AmbiguousChannel, Some(rule), detail);
            }
            Some(Skipped::Authentication(rule, required, presented)) => {
                let detail = format!(
                    "the rule fits the request but needs authenticate = {required:?}, and the caller authenticated by {presented}; no later rule matched"
                );
                return deny(DenyReason::AuthenticationNotAccepted, Some(rule), detail);
            }
            Some(Skipped::FactUnavailable(rule, unreadable)) => {
                return fact_unavailable(
                    rule,
                    &unreadable,
                    "the rule fits the request but a fact it reads is unavailable, so it does not apply, and no later rule matched",
                );
            }
            None => {}
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

    /// Whether `rule` matches: its keys ([`Policy::match_keys`]), then its
    /// facts and its condition.
    #[allow(clippy::too_many_arguments)] // One call site; a struct would only rename them.
    fn match_rule<'a>(
        &'a self,
        rule: &'a Rule,
        caller: Caller<'a>,
        request: &'a Request,
        now: u64,
        facts: &'a Facts,
        activation: &mut Option<Result<Activation<'a>, String>>,
        used: Option<&mut Vec<FactTrace>>,
    ) -> Match<'a> {
        let captures = match self.match_keys(rule, caller, request) {
            Ok(captures) => captures,
            Err(miss) => return miss,
        };
        let Some(condition) = &rule.condition else {
            return Match::Yes(captures);
        };
        let values = match self.rule_facts(rule, caller, request, &captures, facts, used) {
            Ok(values) => values,
            Err(input @ Unreadable::Input { .. }) if rule.effect == Effect::Deny => {
                return Match::Failed(condition.as_str(), input.to_string());
            }
            Err(input @ Unreadable::Input { .. }) => {
                return Match::No(Miss::ConditionFailed(condition.as_str(), input.to_string()));
            }
            Err(unavailable) if rule.effect == Effect::Deny => {
                return Match::Unavailable(unavailable);
            }
            Err(unavailable) => return Match::No(Miss::FactUnavailable(unavailable)),
        };
        let activation = activation
            .get_or_insert_with(|| Activation::new(&self.env, self.reads, caller, request, now));
        let result = match activation {
            Ok(activation) => condition.evaluate(activation, &captures, &values),
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

    /// The values of the facts `rule` reads, from `facts`, recorded into
    /// `used` when tracing; the first that cannot be had fails the rule.
    fn rule_facts<'a>(
        &'a self,
        rule: &Rule,
        caller: Caller<'a>,
        request: &'a Request,
        captures: &Captures<'a>,
        facts: &'a Facts,
        mut used: Option<&mut Vec<FactTrace>>,
    ) -> Result<Vec<(&'a str, &'a crate::domain::ClaimValue)>, Unreadable> {
        let mut values = Vec::with_capacity(rule.facts.len());
        let scope = Scope {
            caller,
            request,
            captures,
        };
        for &index in &rule.facts {
            let declaration = &self.facts[index];
            let query = declaration.query(scope)?;
            let Some(fetched) = facts.get(&query) else {
                return Err(Unreadable::Unavailable {
                    fact: query.name,
                    reason: super::fact::NOT_FETCHED.to_owned(),
                });
            };
            if let Some(used) = used.as_deref_mut() {
                used.push(FactTrace::of(&query, fetched));
            }
            match &fetched.value {
                Ok(value) => {
                    super::condition::fact_fits(value).map_err(|reason| {
                        Unreadable::Unavailable {
                            fact: Arc::clone(&query.name),
                            reason,
                        }
                    })?;
                    values.push((&*declaration.name, &**value));
                }
                Err(reason) => {
                    return Err(Unreadable::Unavailable {
                        fact: query.name,
                        reason: reason.clone(),
                    });
                }
            }
        }
        Ok(values)
    }

    /// Whether the keys of `rule` hold for the call: action,
    /// authentication, issuer, project, channel (one split only), peer
    /// SPIFFE ID. `Ok` with the captures, or the `Match` that it is not.
    fn match_keys<'a>(
        &self,
        rule: &'a Rule,
        caller: Caller<'a>,
        request: &'a Request,
    ) -> Result<Captures<'a>, Match<'a>> {
        if !rule.actions.contains(&request.action) {
            return Err(Match::No(Miss::Action));
        }
        if let Some(miss) = check_authentication(rule, caller) {
            return Err(Match::No(miss));
        }
        // A caller without a JWT has no issuer, so a rule that names one
        // never applies to it.
        if let Some(iss) = &rule.issuer
            && caller.principal.is_none_or(|p| p.issuer != *iss)
        {
            return Err(Match::No(Miss::Issuer));
        }
        if let (Some(wanted), Some(own)) = (&request.project, &rule.project)
            && wanted != own
        {
            return Err(Match::No(Miss::Project));
        }
        let mut captures = match (&rule.channel, &request.channel) {
            (None, _) => Vec::new(),
            (Some(_), None) => return Err(Match::No(Miss::NoChannel)),
            (Some(p), Some(ChannelScope::Wildcard)) if p.is_star() => Vec::new(),
            (Some(p), Some(ChannelScope::Named(name))) => match p.split(name.as_str()) {
                Split::One(captures) => captures,
                Split::NoMatch => return Err(Match::No(Miss::Channel(p.as_str()))),
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
                    return Err(match rule.effect {
                        Effect::Allow => Match::No(Miss::Ambiguous(ambiguity)),
                        Effect::Deny => Match::Ambiguous(ambiguity),
                    });
                }
            },
            (Some(p), Some(ChannelScope::Wildcard)) => {
                return Err(Match::No(Miss::Channel(p.as_str())));
            }
        };
        if let Some(pattern) = &rule.peer_spiffe_id {
            match peer_captures(pattern, caller) {
                Ok(found) => captures.extend(found),
                Err(miss) => return Err(Match::No(miss)),
            }
        }
        Ok(captures)
    }
}

/// `None` when `caller` authenticated as `rule` accepts, else the miss.
fn check_authentication(rule: &Rule, caller: Caller<'_>) -> Option<Miss<'static>> {
    let by = caller.authenticated_by();
    let accepted = match by {
        Some(by) => rule.authenticate.accepts(by),
        None => rule.authenticate == Authenticate::Any,
    };
    (!accepted).then(|| Miss::Authentication {
        required: rule.authenticate.as_str(),
        presented: by.map_or("nothing", |b| b.as_str()),
    })
}

/// The captures of the caller's SPIFFE ID under `pattern`, or the miss.
fn peer_captures<'a>(
    pattern: &'a super::spiffe::SpiffeIdPattern,
    caller: Caller<'a>,
) -> Result<Captures<'a>, Miss<'a>> {
    let id = caller
        .peer
        .workload
        .as_ref()
        .and_then(|w| w.spiffe_id.as_deref())
        .ok_or(Miss::NoPeerSpiffeId)?;
    pattern
        .split(id)
        .ok_or(Miss::PeerSpiffeId(pattern.as_str()))
}

/// Whether the keys of `rule` that do not depend on the JWT (project,
/// channel, peer SPIFFE ID) hold: then a mismatch of `authenticate` alone
/// kept it from applying, and the denial says so.
fn fits_but_for_authentication(rule: &Rule, caller: Caller<'_>, request: &Request) -> bool {
    let project = match (&request.project, &rule.project) {
        (Some(wanted), Some(own)) => wanted == own,
        _ => true,
    };
    let channel = match (&rule.channel, &request.channel) {
        (None, _) => true,
        (Some(p), Some(ChannelScope::Wildcard)) => p.is_star(),
        (Some(p), Some(ChannelScope::Named(name))) => {
            matches!(p.split(name.as_str()), Split::One(_))
        }
        (Some(_), None) => false,
    };
    let peer = match &rule.peer_spiffe_id {
        None => true,
        // A workload-less caller of an mtls rule: only the missing
        // identity is in the way.
        Some(pattern) => match caller
            .peer
            .workload
            .as_ref()
            .and_then(|w| w.spiffe_id.as_deref())
        {
            Some(id) => pattern.matches(id),
            None => true,
        },
    };
    project && channel && peer
}

/// Records a rule's outcome when tracing; `outcome` runs only then, so
/// `evaluate` pays nothing for it.
fn note(
    trace: &mut Option<&mut Trace>,
    used: &mut Vec<FactTrace>,
    index: usize,
    rule: &Rule,
    outcome: impl FnOnce() -> RuleOutcome,
) {
    if let Some(t) = trace.as_deref_mut() {
        t.rules.push(RuleTrace {
            index,
            name: rule.name.clone(),
            outcome: outcome(),
            facts: std::mem::take(used),
        });
    }
}

impl Miss<'_> {
    /// The owned form for a trace.
    fn into_outcome(self) -> RuleOutcome {
        match self {
            Miss::Action => RuleOutcome::ActionNotListed,
            Miss::Authentication {
                required,
                presented,
            } => RuleOutcome::AuthenticationNotAccepted {
                required: required.to_owned(),
                presented: presented.to_owned(),
            },
            Miss::NoPeerSpiffeId => RuleOutcome::NoPeerSpiffeId,
            Miss::PeerSpiffeId(pattern) => RuleOutcome::PeerSpiffeIdMismatch {
                pattern: pattern.to_owned(),
            },
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
            Miss::FactUnavailable(unreadable) => RuleOutcome::FactUnavailable {
                fact: unreadable.fact().to_owned(),
                reason: unreadable.to_string(),
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
        fact: None,
    })
}

/// `fact_unavailable` by `rule`, naming the fact and the kind of failure.
/// The source's own error (a database message may quote an input) is for
/// the trace and the log, not for the caller.
fn fact_unavailable(rule: &Rule, unreadable: &Unreadable, why: &str) -> Decision {
    Decision::Deny(Denial {
        reason: DenyReason::FactUnavailable,
        rule: Some(rule.name.clone()),
        detail: format!(
            "{why}: facts.{} is unavailable ({})",
            unreadable.fact(),
            unreadable.kind()
        ),
        fact: Some(unreadable.fact().to_owned()),
    })
}

/// The grant or permit of the allow rule that matched, or the denial of its limits.
fn grant(
    rule: &Rule,
    caller: Who<'_>,
    request: &Request,
    captures: &Captures<'_>,
    now: u64,
) -> Decision {
    match super::grant::decide(rule, caller, request, captures, now) {
        Ok(decision) => decision,
        Err((reason, detail)) => deny(reason, Some(rule), detail),
    }
}
