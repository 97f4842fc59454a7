//! Facts: data from the company's own systems (a database, a service) that a
//! rule's condition reads as `facts.<name>`, with the templates of their
//! inputs and the fetched values as plain data.
//!
//! Pure, like the rest of `policy`: the policy only says which facts a call
//! needs ([`super::Policy::facts_needed`]: the facts of the rules that can
//! decide it, their inputs rendered from the channel captures, the caller
//! and the request), and the pipeline fetches them (the `facts` module)
//! and hands them back as [`Facts`] for the evaluation. The policy never
//! waits on a network and its tests supply facts as values.
//!
//! An input template is text with placeholders: `{captures.room}`,
//! `{channel}`, `{caller.subject}`, `{caller.issuer}`, `{claims.org}`,
//! `{request.action}`, `{request.role}`, `{request.uid}`,
//! `{request.account}`, `{request.project}`, `{peer.spiffe_id}`. What it
//! renders is one value: a query parameter or one percent-encoded part of a
//! URL, never text spliced into SQL.

use std::fmt;
use std::sync::Arc;

use crate::domain::ClaimValue;

use super::pattern::Captures;
use super::request::{Caller, Request, RequestedIdentity};

/// The longest rendered input accepted, in bytes: a longer one (a huge
/// claim) makes the fact unaskable rather than a huge query or URL.
const MAX_INPUT_BYTES: usize = 1024;

/// A fact the rules may read, as the config declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactDeclaration {
    /// The name conditions read it by (`facts.<name>`).
    pub name: Arc<str>,
    /// Its inputs, in the order the source takes them (`$1`, `$2`, ... or
    /// the URL's placeholders in order). The cache key is their values.
    pub inputs: Vec<InputTemplate>,
}

/// Text with placeholders, rendered into one input of a fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Placeholder),
}

/// What one placeholder reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placeholder {
    Capture(String),
    Channel,
    CallerSubject,
    CallerIssuer,
    Claim(String),
    Action,
    Role,
    Uid,
    Account,
    Project,
    PeerSpiffeId,
}

/// One fact asked for one call: its name and its rendered inputs. Two
/// rules that ask the same fact with the same inputs share one fetch, and
/// the cache is keyed by exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FactQuery {
    /// The fact's name.
    pub name: Arc<str>,
    /// The rendered inputs, in the declaration's order.
    pub inputs: Vec<String>,
}

/// What fetching one fact gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The value (rows as a list of maps, or a JSON document), or why there
    /// is none (a timeout, an error, an oversized result).
    pub value: Result<Arc<ClaimValue>, String>,
    /// Whether the in-process cache answered.
    pub cached: bool,
    /// How long it took to have it, in microseconds.
    pub elapsed_us: u64,
}

/// The facts fetched for one call.
///
/// A list, not a map: a call reads a handful of facts at most (each
/// distinct query once), and comparing a name and a few inputs costs less
/// than hashing them on every insert and lookup.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    fetched: Vec<(FactQuery, Fetched)>,
}

/// One fact a rule read, for an explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactTrace {
    /// The fact's name.
    pub name: String,
    /// Its rendered inputs.
    pub inputs: Vec<String>,
    /// The value as JSON, or why it is unavailable.
    pub result: Result<String, String>,
    /// Whether the cache answered.
    pub cached: bool,
    /// How long it took, in microseconds.
    pub elapsed_us: u64,
}

/// Why a rule's facts cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// An input could not be rendered (a claim the caller lacks): the
    /// condition fails, as it does when it reads a missing claim.
    Input { fact: Arc<str>, reason: String },
    /// The fact was asked and is unavailable: `fact_unavailable`.
    Unavailable { fact: Arc<str>, reason: String },
}

/// The reason of a fact the pipeline did not hand over.
pub(crate) const NOT_FETCHED: &str = "it was not fetched";

/// What rendering a template reads from.
#[derive(Clone, Copy)]
pub(crate) struct Scope<'a> {
    pub(crate) caller: Caller<'a>,
    pub(crate) request: &'a Request,
    pub(crate) captures: &'a Captures<'a>,
}

impl InputTemplate {
    /// Parses `text`: literal text with `{placeholder}`s (see the module doc).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Text(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => {
                    return Err(format!("{text:?} has a `}}` that closes nothing"));
                }
                Some(at) => {
                    if at > 0 {
                        parts.push(Part::Text(rest[..at].to_owned()));
                    }
                    let after = &rest[at + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| format!("{text:?} has a `{{` that is never closed"))?;
                    parts.push(Part::Value(Placeholder::parse(&after[..end])?));
                    rest = &after[end + 1..];
                }
            }
        }
        Ok(Self {
            source: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The channel or SPIFFE ID captures it reads.
    pub(crate) fn captures(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Value(Placeholder::Capture(name)) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The first placeholder that reads the JWT, if any.
    pub(crate) fn jwt_placeholder(&self) -> Option<String> {
        self.parts.iter().find_map(|p| match p {
            Part::Value(Placeholder::CallerSubject) => Some("caller.subject".to_owned()),
            Part::Value(Placeholder::CallerIssuer) => Some("caller.issuer".to_owned()),
            Part::Value(Placeholder::Claim(c)) => Some(format!("claims.{c}")),
            _ => None,
        })
    }

    /// The rendered value, or what is missing.
    pub(crate) fn render(&self, scope: Scope<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(placeholder) => placeholder.render(scope, &mut out)?,
            }
        }
        if out.len() > MAX_INPUT_BYTES {
            return Err(format!(
                "{} renders longer than {MAX_INPUT_BYTES} bytes",
                self.source
            ));
        }
        Ok(out)
    }
}

impl Placeholder {
    fn parse(name: &str) -> Result<Self, String> {
        let simple = match name {
            "channel" => Some(Placeholder::Channel),
            "caller.subject" => Some(Placeholder::CallerSubject),
            "caller.issuer" => Some(Placeholder::CallerIssuer),
            "request.action" => Some(Placeholder::Action),
            "request.role" => Some(Placeholder::Role),
            "request.uid" => Some(Placeholder::Uid),
            "request.account" => Some(Placeholder::Account),
            "request.project" => Some(Placeholder::Project),
            "peer.spiffe_id" => Some(Placeholder::PeerSpiffeId),
            _ => None,
        };
        if let Some(placeholder) = simple {
            return Ok(placeholder);
        }
        let identifier = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if let Some(capture) = name.strip_prefix("captures.")
            && identifier(capture)
        {
            return Ok(Placeholder::Capture(capture.to_owned()));
        }
        if let Some(claim) = name.strip_prefix("claims.")
            && identifier(claim)
        {
            return Ok(Placeholder::Claim(claim.to_owned()));
        }
        Err(format!(
            "{{{name}}} is not a placeholder; use one of {{captures.<name>}}, {{channel}}, {{caller.subject}}, {{caller.issuer}}, {{claims.<name>}}, {{request.action}}, {{request.role}}, {{request.uid}}, {{request.account}}, {{request.project}}, {{peer.spiffe_id}}"
        ))
    }

    fn render(&self, scope: Scope<'_>, out: &mut String) -> Result<(), String> {
        use std::fmt::Write as _;
        let principal = || {
            scope
                .caller
                .principal
                .ok_or_else(|| "the caller has no JWT".to_owned())
        };
        match self {
            Placeholder::Capture(name) => {
                let value = scope
                    .captures
                    .iter()
                    .find(|(n, _)| *n == name.as_str())
                    .map(|(_, v)| *v)
                    .ok_or_else(|| format!("the rule has no capture {{{name}}}"))?;
                out.push_str(value);
            }
            Placeholder::Channel => match &scope.request.channel {
                Some(channel) => out.push_str(channel.as_str()),
                None => return Err("the request names no channel".to_owned()),
            },
            Placeholder::CallerSubject => out.push_str(&principal()?.subject),
            Placeholder::CallerIssuer => out.push_str(&principal()?.issuer),
            Placeholder::Claim(name) => match principal()?.claims.get(name) {
                Some(ClaimValue::String(s)) => out.push_str(s),
                Some(ClaimValue::Int(i)) => {
                    let _ = write!(out, "{i}");
                }
                Some(ClaimValue::UInt(u)) => {
                    let _ = write!(out, "{u}");
                }
                Some(ClaimValue::Bool(b)) => {
                    let _ = write!(out, "{b}");
                }
                Some(_) => return Err(format!("claim {name} is not a string or a number")),
                None => return Err(format!("the JWT has no claim {name}")),
            },
            Placeholder::Action => out.push_str(scope.request.action.as_str()),
            Placeholder::Role => out.push_str(scope.request.requested_role().as_str()),
            Placeholder::Uid => match &scope.request.identity {
                RequestedIdentity::Uid(uid) | RequestedIdentity::UidOrAccount(uid) => {
                    let _ = write!(out, "{}", uid.get());
                }
                _ => return Err("the request names no uid".to_owned()),
            },
            Placeholder::Account => match &scope.request.identity {
                RequestedIdentity::Account(account) => out.push_str(account),
                _ => return Err("the request names no account".to_owned()),
            },
            Placeholder::Project => match &scope.request.project {
                Some(project) => out.push_str(project),
                None => return Err("the request names no project".to_owned()),
            },
            Placeholder::PeerSpiffeId => {
                match scope
                    .caller
                    .peer
                    .workload
                    .as_ref()
                    .and_then(|w| w.spiffe_id.as_deref())
                {
                    Some(id) => out.push_str(id),
                    None => return Err("the caller has no verified SPIFFE ID".to_owned()),
                }
            }
        }
        Ok(())
    }
}

impl FactDeclaration {
    /// Renders the query of this fact for one rule's scope.
    pub(crate) fn query(&self, scope: Scope<'_>) -> Result<FactQuery, Unreadable> {
        let inputs = self
            .inputs
            .iter()
            .map(|template| template.render(scope))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| Unreadable::Input {
                fact: Arc::clone(&self.name),
                reason,
            })?;
        Ok(FactQuery {
            name: Arc::clone(&self.name),
            inputs,
        })
    }
}

impl Facts {
    /// No facts: for a policy whose conditions read none, and for tests.
    pub fn none() -> Self {
        Self::default()
    }

    /// Records what fetching `query` gave.
    pub fn insert(&mut self, query: FactQuery, fetched: Fetched) {
        match self.fetched.iter_mut().find(|(q, _)| *q == query) {
            Some((_, slot)) => *slot = fetched,
            None => self.fetched.push((query, fetched)),
        }
    }

    /// What fetching `query` gave, if it was fetched.
    pub fn get(&self, query: &FactQuery) -> Option<&Fetched> {
        self.fetched
            .iter()
            .find_map(|(q, fetched)| (q == query).then_some(fetched))
    }
}

impl FactTrace {
    /// The trace of `query` as fetched.
    pub(crate) fn of(query: &FactQuery, fetched: &Fetched) -> Self {
        Self {
            name: query.name.to_string(),
            inputs: query.inputs.clone(),
            result: fetched
                .value
                .as_ref()
                .map(|v| json(v))
                .map_err(Clone::clone),
            cached: fetched.cached,
            elapsed_us: fetched.elapsed_us,
        }
    }
}

impl fmt::Display for FactTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = if self.cached { "cache" } else { "fetched" };
        match &self.result {
            Ok(value) => write!(
                f,
                "facts.{}{:?} = {value} ({source}, {} µs)",
                self.name, self.inputs, self.elapsed_us
            ),
            Err(reason) => write!(
                f,
                "facts.{}{:?} unavailable: {reason} ({} µs)",
                self.name, self.inputs, self.elapsed_us
            ),
        }
    }
}

impl Unreadable {
    /// The kind of failure, for callers: `timeout`, `oversized`, `not
    /// fetched`, `input` or `error` (the full reason is in the trace).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Unreadable::Input { .. } => "input",
            Unreadable::Unavailable { reason, .. } if reason.starts_with("timed out") => "timeout",
            Unreadable::Unavailable { reason, .. } if reason.starts_with("oversized") => {
                "oversized"
            }
            Unreadable::Unavailable { reason, .. } if reason == NOT_FETCHED => "not fetched",
            Unreadable::Unavailable { .. } => "error",
        }
    }

    /// The fact at fault.
    pub(crate) fn fact(&self) -> &str {
        match self {
            Unreadable::Input { fact, .. } | Unreadable::Unavailable { fact, .. } => fact,
        }
    }
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Input { fact, reason } => {
                write!(f, "facts.{fact} cannot be asked: {reason}")
            }
            Unreadable::Unavailable { fact, reason } => {
                write!(f, "facts.{fact} is unavailable: {reason}")
            }
        }
    }
}

/// A value as compact JSON, for explanations.
fn json(value: &ClaimValue) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

fn write_json(value: &ClaimValue, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        ClaimValue::Null => out.push_str("null"),
        ClaimValue::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        ClaimValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        ClaimValue::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        ClaimValue::Float(x) if x.is_finite() => {
            let _ = write!(out, "{x}");
        }
        ClaimValue::Float(_) => out.push_str("null"),
        ClaimValue::String(s) => write_string(s, out),
        ClaimValue::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        ClaimValue::Object(fields) => {
            out.push('{');
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal (RFC 8259 §7).
fn write_string(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Principal;
    use crate::policy::{Action, Peer, Service};
    use std::collections::BTreeMap;

    fn principal() -> Principal {
        let mut claims = BTreeMap::new();
        claims.insert("org".to_owned(), ClaimValue::String("acme".into()));
        claims.insert("n".to_owned(), ClaimValue::Int(7));
        claims.insert("list".to_owned(), ClaimValue::Array(vec![]));
        Principal {
            issuer: "https://idp".into(),
            subject: "alice".into(),
            audiences: vec![],
            scopes: vec![],
            expires_at: 0,
            claims,
            token_fingerprint: crate::domain::Fingerprint::of(b"t"),
        }
    }

    #[test]
    fn templates_parse_render_and_name_what_is_missing() {
        let principal = principal();
        let peer = Peer::default();
        let caller = Caller {
            principal: Some(&principal),
            peer: &peer,
        };
        let request = Request::new(Action::Issue(Service::Rtc));
        let captures: Captures<'_> = vec![("room", "r'1; DROP")];
        let scope = Scope {
            caller,
            request: &request,
            captures: &captures,
        };
        let render = |t: &str| InputTemplate::parse(t).unwrap().render(scope);
        assert_eq!(render("{captures.room}").unwrap(), "r'1; DROP");
        assert_eq!(
            render("u-{caller.subject}-{claims.n}").unwrap(),
            "u-alice-7"
        );
        assert_eq!(render("plain").unwrap(), "plain");
        assert_eq!(render("{claims.org}").unwrap(), "acme");
        assert!(
            render("{claims.list}")
                .unwrap_err()
                .contains("not a string")
        );
        assert!(
            render("{claims.nope}")
                .unwrap_err()
                .contains("no claim nope")
        );
        assert!(render("{captures.team}").unwrap_err().contains("team"));
        assert!(render("{request.uid}").unwrap_err().contains("no uid"));
        assert!(render("{channel}").unwrap_err().contains("no channel"));
        assert!(InputTemplate::parse("{nope}").is_err());
        assert!(InputTemplate::parse("{captures.}").is_err());
        assert!(InputTemplate::parse("a}b").is_err());
        assert!(InputTemplate::parse("{caller.subject").is_err());
        let no_jwt = Scope {
            caller: Caller {
                principal: None,
                peer: &peer,
            },
            ..scope
        };
        let t = InputTemplate::parse("{caller.subject}").unwrap();
        assert!(t.render(no_jwt).unwrap_err().contains("no JWT"));
        assert_eq!(t.jwt_placeholder().as_deref(), Some("caller.subject"));
        let long = "x".repeat(MAX_INPUT_BYTES + 1);
        assert!(render(&long).is_err());
    }

    #[test]
    fn json_is_escaped_and_compact() {
        let mut fields = BTreeMap::new();
        fields.insert("role".to_owned(), ClaimValue::String("h\"o\nst".into()));
        fields.insert("n".to_owned(), ClaimValue::Float(f64::NAN));
        let value = ClaimValue::Array(vec![ClaimValue::Object(fields), ClaimValue::Null]);
        assert_eq!(
            json(&value),
            r#"[{"n":null,"role":"h\"o\nst"},null]"#.to_owned()
        );
    }
}
