//! The policy core with facts, as data: which facts a call needs (only those
//! of rules that can decide it, each query once, inputs rendered from the
//! captures and the caller), how conditions read them, and that an
//! unavailable fact fails closed (`fact_unavailable`: an allow rule does not
//! apply, a deny rule denies), never a silent allow. No network here: the
//! facts are values, as the pipeline would hand them over.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokengate::domain::{ChannelName, ClaimValue, Fingerprint, Principal};
use tokengate::policy::{
    Action, Decision, DenyReason, FactDeclaration, FactQuery, Facts, Fetched, InputTemplate,
    Policy, PolicyConfig, Request, RuleOutcome, Service,
};

const NOW: u64 = 1_800_000_000;

fn declaration(name: &str, inputs: &[&str]) -> FactDeclaration {
    FactDeclaration {
        name: Arc::from(name),
        inputs: inputs
            .iter()
            .map(|t| InputTemplate::parse(t).unwrap())
            .collect(),
    }
}

fn declarations() -> Vec<FactDeclaration> {
    vec![
        declaration("membership", &["{captures.room}", "{caller.subject}"]),
        declaration("account", &["{caller.subject}"]),
        declaration("ticket", &["event-{captures.event}", "{claims.org}"]),
    ]
}

const RULES: &str = r#"
[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtc"]
condition = 'facts.account.suspended == true'

[[rules]]
name = "hosts"
actions = ["rtc"]
channel = "room-{room}"
condition = 'size(facts.membership) > 0 && facts.membership[0].role == "host"'
project = "main"
max_role = "publisher"
account_claim = "sub"

[[rules]]
name = "members"
actions = ["rtc"]
channel = "room-{room}"
condition = 'size(facts.membership) > 0'
project = "main"
account_claim = "sub"

[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby"
project = "main"
account_claim = "sub"

[[rules]]
name = "tickets"
actions = ["rtc"]
channel = "event-{event}"
condition = 'facts.ticket != null'
project = "main"
account_claim = "sub"
"#;

fn policy(rules: &str) -> Result<Policy, String> {
    let config: PolicyConfig = toml::from_str(rules).map_err(|e| e.to_string())?;
    Policy::compile_with_facts(&config.rules, &["main"], &[], declarations())
        .map(|(p, _)| p)
        .map_err(|e| e.to_string())
}

fn principal(sub: &str, claims: &[(&str, &str)]) -> Principal {
    Principal {
        issuer: "https://idp".into(),
        subject: sub.into(),
        audiences: vec![],
        scopes: vec![],
        expires_at: NOW + 3600,
        claims: claims
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ClaimValue::String((*v).to_owned())))
            .collect::<BTreeMap<_, _>>(),
        token_fingerprint: Fingerprint::of(sub.as_bytes()),
    }
}

fn rtc(channel: &str) -> Request {
    Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse(channel).unwrap())
}

fn query(name: &str, inputs: &[&str]) -> FactQuery {
    FactQuery {
        name: Arc::from(name),
        inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn ok(value: serde_json::Value) -> Fetched {
    Fetched {
        value: Ok(Arc::new(json(value))),
        cached: false,
        elapsed_us: 7,
    }
}

fn failed(reason: &str) -> Fetched {
    Fetched {
        value: Err(reason.to_owned()),
        cached: false,
        elapsed_us: 250_000,
    }
}

fn json(value: serde_json::Value) -> ClaimValue {
    match value {
        serde_json::Value::Null => ClaimValue::Null,
        serde_json::Value::Bool(b) => ClaimValue::Bool(b),
        serde_json::Value::Number(n) => ClaimValue::Int(n.as_i64().unwrap()),
        serde_json::Value::String(s) => ClaimValue::String(s),
        serde_json::Value::Array(a) => ClaimValue::Array(a.into_iter().map(json).collect()),
        serde_json::Value::Object(o) => {
            ClaimValue::Object(o.into_iter().map(|(k, v)| (k, json(v))).collect())
        }
    }
}

fn facts(entries: Vec<(FactQuery, Fetched)>) -> Facts {
    let mut facts = Facts::none();
    for (q, f) in entries {
        facts.insert(q, f);
    }
    facts
}

fn summary(decision: &Decision) -> String {
    match decision {
        Decision::Allow(grant) => format!("allow {}", grant.rule()),
        Decision::Permit(permit) => format!("permit {}", permit.rule),
        Decision::Deny(denial) => format!(
            "deny {} rule={} fact={}",
            denial.reason.as_str(),
            denial.rule.as_deref().unwrap_or("-"),
            denial.fact.as_deref().unwrap_or("-")
        ),
    }
}

/// What the pipeline's `fact_unavailable` looks like to `policy_rules`'
/// table of every deny reason: a rule's fact that was never fetched.
pub fn unfetched_fact_denial() -> DenyReason {
    let p = policy(RULES).unwrap();
    let bob = principal("bob", &[]);
    p.evaluate(&bob, &rtc("room-r1"), NOW)
        .deny_reason()
        .unwrap()
}

#[test]
fn only_the_facts_of_rules_that_can_decide_are_needed_each_once() {
    let p = policy(RULES).unwrap();
    let bob = principal("bob", &[("org", "acme")]);
    // The deny rule reads the account; both room rules read one membership query.
    assert_eq!(
        p.facts_needed(&bob, &rtc("room-r1")),
        vec![
            query("account", &["bob"]),
            query("membership", &["r1", "bob"])
        ]
    );
    assert_eq!(
        p.facts_needed(&bob, &rtc("event-7")),
        vec![
            query("account", &["bob"]),
            query("ticket", &["event-7", "acme"])
        ]
    );
    // The lobby rule has no condition: nothing after it is reached.
    assert_eq!(
        p.facts_needed(&bob, &rtc("lobby")),
        vec![query("account", &["bob"])]
    );
    // An input that cannot be rendered (no org claim) is not asked.
    let stranger = principal("carol", &[]);
    assert_eq!(
        p.facts_needed(&stranger, &rtc("event-7")),
        vec![query("account", &["carol"])]
    );
    // An RTM request matches none of the rules' actions.
    let rtm = Request::new(Action::Issue(Service::Rtm));
    assert!(p.facts_needed(&bob, &rtm).is_empty());
    // A policy that reads no fact needs none.
    let plain = policy("[[rules]]\nname = \"x\"\nactions = [\"rtc\"]\nproject = \"main\"\naccount_claim = \"sub\"\n").unwrap();
    assert!(!plain.reads_facts());
    assert!(plain.facts_needed(&bob, &rtc("room-r1")).is_empty());
}

#[test]
fn conditions_read_the_facts_they_are_given() {
    let p = policy(RULES).unwrap();
    let bob = principal("bob", &[]);
    let good = || {
        (
            query("account", &["bob"]),
            ok(serde_json::json!({"suspended": false})),
        )
    };
    let cases = [
        (serde_json::json!([{"role": "host"}]), "allow hosts"),
        (
            serde_json::json!([{"role": "participant"}]),
            "allow members",
        ),
        (serde_json::json!([]), "deny no_matching_rule rule=- fact=-"),
    ];
    for (membership, expected) in cases {
        let given = facts(vec![
            good(),
            (query("membership", &["r1", "bob"]), ok(membership.clone())),
        ]);
        let decision = p.evaluate_with_facts(&bob, &rtc("room-r1"), NOW, &given);
        assert_eq!(summary(&decision), expected, "{membership}");
    }
    let suspended = facts(vec![
        (
            query("account", &["bob"]),
            ok(serde_json::json!({"suspended": true})),
        ),
        (
            query("membership", &["r1", "bob"]),
            ok(serde_json::json!([{"role": "host"}])),
        ),
    ]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&bob, &rtc("room-r1"), NOW, &suspended)),
        "deny denied_by_rule rule=suspended fact=-"
    );
}

#[test]
fn an_unavailable_fact_fails_closed_and_names_itself() {
    let p = policy(RULES).unwrap();
    let bob = principal("bob", &[]);
    let account = || {
        (
            query("account", &["bob"]),
            ok(serde_json::json!({"suspended": false})),
        )
    };
    // An allow rule whose fact failed does not apply; no later rule decides.
    let down = facts(vec![
        account(),
        (
            query("membership", &["r1", "bob"]),
            failed("timed out after 250ms"),
        ),
    ]);
    let decision = p.evaluate_with_facts(&bob, &rtc("room-r1"), NOW, &down);
    assert_eq!(
        summary(&decision),
        "deny fact_unavailable rule=hosts fact=membership"
    );
    let Decision::Deny(denial) = &decision else {
        unreachable!()
    };
    // The caller learns the kind of failure, not the source's message.
    assert!(denial.detail.contains("(timeout)"), "{denial:?}");
    assert!(!denial.detail.contains("250ms"), "{denial:?}");
    // A deny rule whose fact failed denies, before any allow rule.
    let account_down = facts(vec![
        (query("account", &["bob"]), failed("HTTP 503")),
        (
            query("membership", &["r1", "bob"]),
            ok(serde_json::json!([{"role": "host"}])),
        ),
    ]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&bob, &rtc("room-r1"), NOW, &account_down)),
        "deny fact_unavailable rule=suspended fact=account"
    );
    // A rule that reads no fact still decides when another's fact failed.
    let lobby = facts(vec![account()]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&bob, &rtc("lobby"), NOW, &lobby)),
        "allow lobby"
    );
    // A `has()` or `!= null` test cannot turn a failed fact into an allow.
    let ticket_down = facts(vec![
        (
            query("account", &["carol"]),
            ok(serde_json::json!({"suspended": false})),
        ),
        (
            query("ticket", &["event-7", "acme"]),
            failed("oversized: more than 100 rows"),
        ),
    ]);
    let carol = principal("carol", &[("org", "acme")]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&carol, &rtc("event-7"), NOW, &ticket_down)),
        "deny fact_unavailable rule=tickets fact=ticket"
    );
    // A fact whose input the caller lacks fails the condition, not the source.
    let no_org = principal("dave", &[]);
    let given = facts(vec![(
        query("account", &["dave"]),
        ok(serde_json::json!({"suspended": false})),
    )]);
    let (decision, trace) = p.explain_with_facts(&no_org, &rtc("event-7"), NOW, &given);
    assert_eq!(summary(&decision), "deny no_matching_rule rule=- fact=-");
    let tickets = trace.rules.iter().find(|r| r.name == "tickets").unwrap();
    assert!(
        matches!(&tickets.outcome, RuleOutcome::ConditionFailed { error, .. } if error.contains("claim org")),
        "{tickets:?}"
    );
}

#[test]
fn an_explanation_lists_each_rules_facts() {
    let p = policy(RULES).unwrap();
    let bob = principal("bob", &[]);
    let mut cached = ok(serde_json::json!([{"role": "participant"}]));
    cached.cached = true;
    let given = facts(vec![
        (
            query("account", &["bob"]),
            ok(serde_json::json!({"suspended": false})),
        ),
        (query("membership", &["r1", "bob"]), cached),
    ]);
    let (decision, trace) = p.explain_with_facts(&bob, &rtc("room-r1"), NOW, &given);
    assert_eq!(summary(&decision), "allow members");
    let names: Vec<(&str, Vec<&str>)> = trace
        .rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.facts.iter().map(|f| f.name.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("suspended", vec!["account"]),
            ("hosts", vec!["membership"]),
            ("members", vec!["membership"]),
        ]
    );
    let membership = &trace.rules[2].facts[0];
    assert_eq!(membership.inputs, vec!["r1", "bob"]);
    assert_eq!(
        membership.result.as_deref(),
        Ok(r#"[{"role":"participant"}]"#)
    );
    assert!(membership.cached);
    assert!(trace.to_string().contains("facts.membership"), "{trace}");
}

#[test]
fn rules_that_read_facts_are_checked_at_load() {
    let cases = [
        (
            "condition = 'size(facts.nope) > 0'\nchannel = \"room-{room}\"",
            "no [[facts]] declares",
        ),
        (
            "condition = 'size(facts.membership) > 0'\nchannel = \"room-*\"",
            "captures {room}",
        ),
        ("condition = 'size(facts) > 0'", "as a whole"),
        ("condition = 'facts[channel] != null'", "computed key"),
        (
            "condition = 'size(facts.membership) > 0'\nchannel = \"room-{room}\"\nauthenticate = \"mtls\"\ncaller_chooses_identity = true",
            "from the JWT",
        ),
    ];
    for (keys, expected) in cases {
        let text =
            format!("[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"\n{keys}\n");
        let error = policy(&text).map(|_| ()).unwrap_err();
        assert!(error.contains(expected), "{keys}: {error}");
    }
    assert!(InputTemplate::parse("{captures.room").is_err());
}

#[test]
fn a_fact_too_deep_for_conditions_fails_closed_rather_than_reading_as_absent() {
    let rules = r#"
[[rules]]
name = "banned"
effect = "deny"
actions = ["rtc"]
condition = 'has(facts.account) && facts.account.banned == true'

[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby"
project = "main"
account_claim = "sub"
"#;
    let p = policy(rules).unwrap();
    let bob = principal("bob", &[]);
    let mut deep = serde_json::json!(1);
    for _ in 0..20 {
        deep = serde_json::json!([deep]);
    }
    let given = facts(vec![(
        query("account", &["bob"]),
        ok(serde_json::json!({"banned": true, "prefs": deep})),
    )]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&bob, &rtc("lobby"), NOW, &given)),
        "deny fact_unavailable rule=banned fact=account"
    );
    let shallow = facts(vec![(
        query("account", &["bob"]),
        ok(serde_json::json!({"banned": false, "prefs": [[1]]})),
    )]);
    assert_eq!(
        summary(&p.evaluate_with_facts(&bob, &rtc("lobby"), NOW, &shallow)),
        "allow lobby"
    );
}
