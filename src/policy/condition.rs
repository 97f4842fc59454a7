//! CEL conditions: compiled once at load, evaluated against an activation
//! built once per request.
//!
//! The activation borrows the principal's strings instead of copying them, and
//! only the per-rule `captures` map is added in a child scope, so a request
//! that reaches the 25th rule pays for one claims conversion, not 25.
//!
//! `facts` is a rule's own too: the facts its condition reads (found in the
//! syntax tree at load, `facts.<name>` or `facts["name"]`), fetched by the
//! pipeline for this rule's captures, added beside `captures`.
//!
//! A caller without a JWT (a workload admitted by mTLS) has an empty
//! `claims` and `caller`: a condition that reads them fails (and a deny
//! rule's then denies), as for a JWT without the claim read. `peer` is there
//! for every caller, with `""` and `[]` for what the transport did not verify.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use crate::domain::{ClaimValue, Principal};

use super::pattern::Captures;
use super::request::{Caller, ChannelScope, Peer, Request, RequestedIdentity};

/// The longest condition accepted, in bytes.
const MAX_CONDITION_BYTES: usize = 2048;
/// The deepest bracket nesting accepted. The cel parser is recursive and its
/// recursion limit does not bound stack use (measured: 12 nested parentheses
/// overflow a 2 MiB debug-build thread), so nesting is bounded before parsing.
const MAX_CONDITION_NESTING: usize = 6;
/// The most operators accepted: a chain like `a + b + ...` nests the syntax
/// tree one level per operator (64 overflowed a 2 MiB debug-build thread).
const MAX_CONDITION_OPERATORS: usize = 24;
/// Claims nested deeper than this make every condition fail (never allow):
/// converting them would recurse without bound.
const MAX_CLAIM_DEPTH: usize = 16;

/// A compiled condition.
#[derive(Debug)]
pub(crate) struct Condition {
    source: String,
    program: Program,
    reads: Reads,
    /// The facts it reads, by name, sorted.
    facts: Vec<String>,
}

/// Which of the costly variables (the ones built from a map per call) a
/// condition reads. An activation builds only those that some condition of
/// the policy reads: `caller`, `peer` and `request` are some twenty-five
/// boxed values and three hash maps per call, wasted for a policy whose
/// conditions only look at `claims`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    claims: bool,
    caller: bool,
    peer: bool,
    request: bool,
}

impl std::ops::BitOrAssign for Reads {
    fn bitor_assign(&mut self, other: Self) {
        self.claims |= other.claims;
        self.caller |= other.caller;
        self.peer |= other.peer;
        self.request |= other.request;
    }
}

/// The variables every condition of one evaluation sees.
pub(crate) struct Activation<'a> {
    root: Context<'a, 'a>,
}

/// Resolves `captures` and `facts` on first use in a rule's scope.
struct RuleResolver<'c> {
    captures: &'c Captures<'c>,
    facts: &'c [(&'c str, &'c ClaimValue)],
}

/// Why a condition did not say `true` or `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConditionFailure {
    /// Evaluation raised an error (missing key, wrong type, overflow, too-deep claims).
    Error(String),
    /// The expression produced something other than a bool.
    NotBool(String),
}

/// Bracket depth and operator count of an expression, outside string literals.
struct Shape {
    nesting: usize,
    operators: usize,
}

impl Condition {
    /// Checks the size limits and compiles `source` with `env`.
    pub(crate) fn compile(env: &Env, source: &str) -> Result<Self, String> {
        let (program, reads) = compile_program(env, source)?;
        let mut facts = Vec::new();
        fact_names(program.expression(), &mut facts)?;
        facts.sort();
        facts.dedup();
        Ok(Self {
            source: source.to_owned(),
            program,
            reads,
            facts,
        })
    }

    /// The facts the expression reads, by name, sorted.
    pub(crate) fn facts(&self) -> &[String] {
        &self.facts
    }

    /// The costly variables the expression reads.
    pub(crate) fn reads(&self) -> Reads {
        self.reads
    }

    /// The expression as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// The first of `variables` the expression reads, if any.
    pub(crate) fn reads_any<'v>(&self, variables: &[&'v str]) -> Option<&'v str> {
        let references = self.program.references();
        variables
            .iter()
            .copied()
            .find(|v| references.has_variable(v))
    }

    /// Evaluates the condition with `captures` and the rule's `facts` added to `activation`.
    pub(crate) fn evaluate(
        &self,
        activation: &Activation<'_>,
        captures: &Captures<'_>,
        facts: &[(&str, &ClaimValue)],
    ) -> Result<bool, ConditionFailure> {
        let result = if captures.is_empty() && facts.is_empty() {
            self.program.execute(&activation.root)
        } else {
            // The captures map is built only if the expression reads it: a
            // condition like `"g" in claims.groups && captures.team ...` that
            // is false at its first term then costs no allocation for it.
            let resolver = RuleResolver { captures, facts };
            let root: &Context<'_, '_> = &activation.root;
            let mut scope = root.new_inner_scope();
            scope.set_variable_resolver(&resolver);
            self.program.execute(&scope)
        };
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(ConditionFailure::NotBool(other.type_of().to_string())),
            Err(e) => Err(ConditionFailure::Error(truncate(&e.to_string()))),
        }
    }
}

impl<'a> Activation<'a> {
    /// Builds `channel`, `now`, an empty `captures`, and those of `claims`,
    /// `caller`, `peer` and `request` that `reads` names (the policy's
    /// conditions read no other, so none can miss one). Fails only when the
    /// claims nest too deeply.
    pub(crate) fn new(
        env: &Arc<Env>,
        reads: Reads,
        caller: Caller<'a>,
        request: &'a Request,
        now: u64,
    ) -> Result<Self, String> {
        let mut root = Context::with_env(Arc::clone(env));
        match caller.principal {
            Some(principal) => {
                if reads.claims {
                    root.add_variable_as_val("claims", claims_val(&principal.claims, 0)?);
                }
                if reads.caller {
                    root.add_variable_as_val("caller", Box::new(caller_map(principal)));
                }
            }
            None => {
                if reads.claims {
                    root.add_variable_as_val("claims", Box::new(CelMap::from(HashMap::new())));
                }
                if reads.caller {
                    root.add_variable_as_val("caller", Box::new(CelMap::from(HashMap::new())));
                }
            }
        }
        if reads.peer {
            root.add_variable_as_val("peer", Box::new(peer_map(caller.peer)));
        }
        if reads.request {
            let authenticated_by = caller.authenticated_by().map_or("", |a| a.as_str());
            root.add_variable_as_val("request", Box::new(request_map(request, authenticated_by)));
        }
        let channel = request.channel.as_ref().map_or("", ChannelScope::as_str);
        root.add_variable_as_val("channel", Box::new(CelString::from(channel)));
        root.add_variable_as_val("captures", Box::new(CelMap::from(HashMap::new())));
        root.add_variable_as_val("now", uint_or_int(now));
        Ok(Self { root })
    }
}

impl Activation<'_> {
    /// Runs `program` on these variables alone (no rule's captures).
    pub(crate) fn execute(&self, program: &Program) -> Result<Value, cel::ExecutionError> {
        program.execute(&self.root)
    }
}

impl VariableResolver for RuleResolver<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        match variable {
            "captures" => Some(CowVal::Owned(Box::new(captures_map(self.captures)))),
            // A fact too deep to convert is left out: reading it fails the
            // condition, as a too-deep claim does.
            "facts" => Some(CowVal::Owned(Box::new(facts_map(self.facts)))),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Activation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Activation")
    }
}

impl std::fmt::Display for ConditionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionFailure::Error(e) => write!(f, "error: {e}"),
            ConditionFailure::NotBool(t) => write!(f, "produced a {t}, not a bool"),
        }
    }
}

/// Checks the size limits, compiles `source` and finds the costly
/// variables it reads (shared with `key`).
pub(crate) fn compile_program(env: &Env, source: &str) -> Result<(Program, Reads), String> {
    check_limits(source)?;
    let program = env
        .compile(source)
        .map_err(|e| format!("does not compile: {}", first_line(&e.to_string())))?;
    let references = program.references();
    let reads = Reads {
        claims: references.has_variable("claims"),
        caller: references.has_variable("caller"),
        peer: references.has_variable("peer"),
        request: references.has_variable("request"),
    };
    Ok((program, reads))
}

/// Collects the names of the facts `expr` reads into `names`. A fact is
/// read as `facts.<name>`, `has(facts.<name>)` or `facts["<name>"]`; any
/// other use of `facts` (the whole map, a computed key) is refused, since
/// the pipeline must know at load which facts a rule needs.
fn fact_names(expr: &IdedExpr, names: &mut Vec<String>) -> Result<(), String> {
    let is_facts = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == "facts");
    match &expr.expr {
        Expr::Select(select) if is_facts(&select.operand) => {
            names.push(select.field.clone());
            Ok(())
        }
        Expr::Call(call)
            if call.func_name == operators::INDEX
                && call.target.is_none()
                && call.args.len() == 2
                && is_facts(&call.args[0]) =>
        {
            match &call.args[1].expr {
                Expr::Literal(LiteralValue::String(name)) => {
                    names.push(name.inner().to_owned());
                    Ok(())
                }
                _ => Err("reads facts with a computed key; name the fact: facts.<name>".to_owned()),
            }
        }
        Expr::Ident(name) if name == "facts" => {
            Err("reads `facts` as a whole; read one fact: facts.<name>".to_owned())
        }
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Ok(()),
        Expr::Select(select) => fact_names(&select.operand, names),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                fact_names(target, names)?;
            }
            call.args.iter().try_for_each(|a| fact_names(a, names))
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .try_for_each(|e| fact_names(e, names)),
        Expr::List(list) => list.elements.iter().try_for_each(|e| fact_names(e, names)),
        Expr::Map(map) => map
            .entries
            .iter()
            .try_for_each(|entry| entry_fact_names(&entry.expr, names)),
        Expr::Struct(st) => st
            .entries
            .iter()
            .try_for_each(|entry| entry_fact_names(&entry.expr, names)),
    }
}

fn entry_fact_names(entry: &EntryExpr, names: &mut Vec<String>) -> Result<(), String> {
    match entry {
        EntryExpr::StructField(field) => fact_names(&field.value, names),
        EntryExpr::MapEntry(pair) => {
            fact_names(&pair.key, names)?;
            fact_names(&pair.value, names)
        }
    }
}

/// Refuses expressions whose parse could exhaust the stack.
fn check_limits(source: &str) -> Result<(), String> {
    if source.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if source.len() > MAX_CONDITION_BYTES {
        return Err(format!("is longer than {MAX_CONDITION_BYTES} bytes"));
    }
    let shape = shape_of(source);
    if shape.nesting > MAX_CONDITION_NESTING {
        return Err(format!(
            "nests brackets {} deep; the limit is {MAX_CONDITION_NESTING}",
            shape.nesting
        ));
    }
    if shape.operators > MAX_CONDITION_OPERATORS {
        return Err(format!(
            "has {} operators besides && and ||; the limit is {MAX_CONDITION_OPERATORS}: split it into rules",
            shape.operators
        ));
    }
    Ok(())
}

/// Scans `source` lexically; string literals (with escapes) are skipped.
fn shape_of(source: &str) -> Shape {
    let mut shape = Shape {
        nesting: 0,
        operators: 0,
    };
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut previous = ' ';
    for c in source.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                shape.nesting = shape.nesting.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            // `&&` and `||` are evaluated without deep recursion (measured), so
            // only the other operators and member accesses count; a run of
            // operator characters (`<=`, `!=`) counts once.
            '+' | '-' | '*' | '/' | '%' | '<' | '>' | '=' | '!' | '?' | '.'
                if !"+-*/%<>=!?.".contains(previous) =>
            {
                shape.operators += 1;
            }
            _ => {}
        }
        previous = c;
    }
    shape.operators += source.split_whitespace().filter(|w| *w == "in").count();
    shape
}

/// Converts the claims map, borrowing every string.
fn claims_val<'a>(
    claims: &'a std::collections::BTreeMap<String, ClaimValue>,
    depth: usize,
) -> Result<Box<dyn Val + 'a>, String> {
    let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(claims.len());
    for (key, value) in claims {
        map.insert(CelMapKey::from(key.as_str()), claim_val(value, depth + 1)?);
    }
    Ok(Box::new(CelMap::from(map)))
}

/// Converts one claim value.
fn claim_val(value: &ClaimValue, depth: usize) -> Result<Box<dyn Val + '_>, String> {
    if depth > MAX_CLAIM_DEPTH {
        return Err(format!(
            "the claims nest deeper than {MAX_CLAIM_DEPTH} levels"
        ));
    }
    Ok(match value {
        ClaimValue::Null => Box::new(CelNull),
        ClaimValue::Bool(b) => Box::new(CelBool::from(*b)),
        ClaimValue::Int(i) => Box::new(CelInt::from(*i)),
        ClaimValue::UInt(u) => Box::new(CelUInt::from(*u)),
        ClaimValue::Float(x) => Box::new(CelDouble::from(*x)),
        ClaimValue::String(s) => Box::new(CelString::from(s.as_str())),
        ClaimValue::Array(items) => {
            let list = items
                .iter()
                .map(|item| claim_val(item, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            Box::new(CelList::from(list))
        }
        ClaimValue::Object(fields) => claims_val(fields, depth)?,
    })
}

/// `caller`: issuer, subject, scopes, audiences, expires_at.
fn caller_map(principal: &Principal) -> CelMap<'_> {
    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::with_capacity(5);
    map.insert(
        "issuer".into(),
        Box::new(CelString::from(principal.issuer.as_str())),
    );
    map.insert(
        "subject".into(),
        Box::new(CelString::from(principal.subject.as_str())),
    );
    map.insert("scopes".into(), Box::new(string_list(&principal.scopes)));
    map.insert(
        "audiences".into(),
        Box::new(string_list(&principal.audiences)),
    );
    map.insert("expires_at".into(), uint_or_int(principal.expires_at));
    CelMap::from(map)
}

/// `peer`: spiffe_id (`""` when none), dns_names, address (`""` when unknown).
fn peer_map(peer: &Peer) -> CelMap<'_> {
    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::with_capacity(3);
    let workload = peer.workload.as_ref();
    let spiffe_id = workload.and_then(|w| w.spiffe_id.as_deref()).unwrap_or("");
    map.insert("spiffe_id".into(), Box::new(CelString::from(spiffe_id)));
    let dns_names: &[String] = workload.map_or(&[], |w| w.dns_names.as_slice());
    map.insert("dns_names".into(), Box::new(string_list(dns_names)));
    let address = peer.address.as_deref().unwrap_or("");
    map.insert("address".into(), Box::new(CelString::from(address)));
    CelMap::from(map)
}

/// `request`: action, role, identity, uid, account, lifetimes, project,
/// also_rtm, authenticated_by.
fn request_map<'a>(request: &'a Request, authenticated_by: &'static str) -> CelMap<'a> {
    let mut map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = HashMap::with_capacity(11);
    map.insert(
        "authenticated_by".into(),
        Box::new(CelString::from(authenticated_by)),
    );
    map.insert(
        "action".into(),
        Box::new(CelString::from(request.action.as_str())),
    );
    map.insert(
        "role".into(),
        Box::new(CelString::from(request.requested_role().as_str())),
    );
    let (kind, uid, account): (&str, Box<dyn Val>, Box<dyn Val>) = match &request.identity {
        RequestedIdentity::FromJwt => ("from_jwt", Box::new(CelNull), Box::new(CelNull)),
        // A renewed numeric identity is shown as the uid, as it was before
        // renewal learned to bind it as an account for account rules.
        RequestedIdentity::Uid(uid) | RequestedIdentity::UidOrAccount(uid) => (
            "uid",
            Box::new(CelInt::from(i64::from(uid.get()))),
            Box::new(CelNull),
        ),
        RequestedIdentity::Account(a) => (
            "account",
            Box::new(CelNull),
            Box::new(CelString::from(a.as_str())),
        ),
        RequestedIdentity::AnyUid => ("any_uid", Box::new(CelInt::from(0)), Box::new(CelNull)),
        RequestedIdentity::App => ("app", Box::new(CelNull), Box::new(CelNull)),
    };
    map.insert("identity".into(), Box::new(CelString::from(kind)));
    map.insert("uid".into(), uid);
    map.insert("account".into(), account);
    map.insert("token_ttl".into(), optional_secs(request.token_lifetime));
    map.insert("join_ttl".into(), optional_secs(request.join_lifetime));
    map.insert(
        "publish_ttl".into(),
        optional_secs(request.publish_lifetime),
    );
    let project: Box<dyn Val> = match &request.project {
        Some(p) => Box::new(CelString::from(p.as_str())),
        None => Box::new(CelNull),
    };
    map.insert("project".into(), project);
    map.insert("also_rtm".into(), Box::new(CelBool::from(request.also_rtm)));
    CelMap::from(map)
}

/// `captures`: capture name to text.
fn captures_map<'a>(captures: &Captures<'a>) -> CelMap<'a> {
    let map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = captures
        .iter()
        .map(|(name, value)| {
            (
                CelMapKey::from(*name),
                Box::new(CelString::from(*value)) as Box<dyn Val>,
            )
        })
        .collect();
    CelMap::from(map)
}

/// `facts`: fact name to value. Each was checked with [`fact_fits`]
/// before the rule ran (a fact that does not fit fails the rule closed), so
/// none is left out here; one that did not convert would read as absent,
/// which `has()` could turn into an allow.
fn facts_map<'a>(facts: &[(&'a str, &'a ClaimValue)]) -> CelMap<'a> {
    let map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = facts
        .iter()
        .filter_map(|(name, value)| Some((CelMapKey::from(*name), claim_val(value, 1).ok()?)))
        .collect();
    CelMap::from(map)
}

/// Whether a fact's value converts for a condition (it nests no deeper
/// than claims may), or why not.
pub(crate) fn fact_fits(value: &ClaimValue) -> Result<(), String> {
    fn depth(value: &ClaimValue) -> usize {
        match value {
            ClaimValue::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
            ClaimValue::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    // facts_map converts a fact at depth 1, and claim_val refuses beyond
    // MAX_CLAIM_DEPTH: a value of `depth` levels reaches 1 + depth.
    if 1 + depth(value) > MAX_CLAIM_DEPTH {
        return Err(format!(
            "the value nests deeper than {} levels, which conditions cannot read",
            MAX_CLAIM_DEPTH - 1
        ));
    }
    Ok(())
}

/// A list of borrowed strings.
fn string_list(items: &[String]) -> CelList<'_> {
    CelList::from(
        items
            .iter()
            .map(|s| Box::new(CelString::from(s.as_str())) as Box<dyn Val>)
            .collect::<Vec<_>>(),
    )
}

/// Seconds as a CEL int, or null when not requested.
fn optional_secs(secs: Option<std::num::NonZeroU32>) -> Box<dyn Val + 'static> {
    match secs {
        Some(s) => Box::new(CelInt::from(i64::from(s.get()))),
        None => Box::new(CelNull),
    }
}

/// A CEL int when it fits (so `now > claims.iat` compares int to int), else a uint.
fn uint_or_int(value: u64) -> Box<dyn Val + 'static> {
    match i64::try_from(value) {
        Ok(i) => Box::new(CelInt::from(i)),
        Err(_) => Box::new(CelUInt::from(value)),
    }
}

/// The first line of a multi-line parser message.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

/// Error text for traces: one line, bounded, so a huge claim cannot bloat an audit record.
pub(crate) fn truncate(message: &str) -> String {
    const MAX: usize = 200;
    let line = message.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(source: &str) -> Result<Vec<String>, String> {
        let env = Env::stdlib();
        Condition::compile(&env, source).map(|c| c.facts().to_vec())
    }

    #[test]
    fn the_facts_a_condition_reads_are_found_and_only_named_reads_are_accepted() {
        assert_eq!(facts("claims.x == 1").unwrap(), Vec::<String>::new());
        assert_eq!(
            facts("size(facts.membership) > 0 && facts.membership[0].role == \"host\" || has(facts.ticket) || facts[\"account\"].ok").unwrap(),
            vec!["account", "membership", "ticket"]
        );
        assert_eq!(
            facts("[1].exists(x, x in facts.rooms)").unwrap(),
            vec!["rooms"]
        );
        assert!(facts("size(facts) > 0").unwrap_err().contains("as a whole"));
        assert!(
            facts("facts[channel].ok")
                .unwrap_err()
                .contains("computed key")
        );
    }

    fn reads(source: &str) -> Reads {
        let env = Env::stdlib();
        Condition::compile(&env, source).unwrap().reads()
    }

    #[test]
    fn reads_names_every_costly_variable_an_expression_touches() {
        let none = Reads::default();
        assert_eq!(reads("now > 0u && channel != \"\""), none);
        assert_eq!(reads("captures.team == \"blue\""), none);
        let claims = Reads {
            claims: true,
            ..none
        };
        assert_eq!(reads("has(claims.suspended)"), claims);
        assert_eq!(reads("claims.teams.exists(t, t == \"blue\")"), claims);
        assert_eq!(reads("[1, 2].all(x, x < size(claims))"), claims);
        assert_eq!(reads("{\"a\": claims.a}.a == 1"), claims);
        assert_eq!(
            reads("peer.spiffe_id.startsWith(\"spiffe://\")"),
            Reads { peer: true, ..none }
        );
        assert_eq!(
            reads("request.role == \"publisher\" || caller.subject == \"x\""),
            Reads {
                caller: true,
                request: true,
                ..none
            }
        );
        let mut all = claims;
        all |= reads("caller.issuer == request.project");
        assert_eq!(reads("size(facts.membership) > 0"), none);
        assert_eq!(
            all,
            Reads {
                claims: true,
                caller: true,
                peer: false,
                request: true
            }
        );
    }
}
