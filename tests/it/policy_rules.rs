//! Table-driven policy tests: `check(policy, caller, request) -> decision`,
//! covering every rule key, every deny reason, load-time validation and traces.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde_json::json;
use tokengate::domain::{ChannelName, ClaimValue, Fingerprint, Principal, Role, RtcIdentity, Uid};
use tokengate::policy::{
    Action, BoundIdentity, ChannelScope, Decision, DenyReason, Grant, Policy, PolicyError,
    PolicyWarning, Request, RequestedIdentity, RuleOutcome, Service,
};

const NOW: u64 = 1_800_000_000;
const PROJECTS: [&str; 2] = ["main", "eu"];

/// Compiles a policy for the projects `main` and `eu`, failing on warnings
/// other than ambiguous patterns (which some tables use on purpose; their
/// warnings are checked by `ambiguous_patterns_are_warnings`).
fn policy(text: &str) -> Policy {
    let (policy, warnings) = Policy::from_toml(text, &PROJECTS).unwrap();
    let unexpected: Vec<&PolicyWarning> = warnings
        .iter()
        .filter(|w| !matches!(w, PolicyWarning::AmbiguousPattern { .. }))
        .collect();
    assert!(unexpected.is_empty(), "unexpected warnings: {unexpected:?}");
    policy
}

/// Converts JSON into the claim model the identity layer produces.
fn claim(value: &serde_json::Value) -> ClaimValue {
    match value {
        serde_json::Value::Null => ClaimValue::Null,
        serde_json::Value::Bool(b) => ClaimValue::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ClaimValue::Int(i),
            (None, Some(u)) => ClaimValue::UInt(u),
            _ => ClaimValue::Float(n.as_f64().unwrap()),
        },
        serde_json::Value::String(s) => ClaimValue::String(s.clone()),
        serde_json::Value::Array(items) => ClaimValue::Array(items.iter().map(claim).collect()),
        serde_json::Value::Object(fields) => {
            ClaimValue::Object(fields.iter().map(|(k, v)| (k.clone(), claim(v))).collect())
        }
    }
}

/// A caller from `https://idp.example`, subject `user-1`, with these extra claims.
fn caller(extra: serde_json::Value) -> Principal {
    let mut claims: BTreeMap<String, ClaimValue> = BTreeMap::new();
    claims.insert("sub".into(), ClaimValue::String("user-1".into()));
    claims.insert(
        "iss".into(),
        ClaimValue::String("https://idp.example".into()),
    );
    if let serde_json::Value::Object(fields) = &extra {
        for (k, v) in fields {
            claims.insert(k.clone(), claim(v));
        }
    }
    let scopes = match extra.get("scope") {
        Some(serde_json::Value::String(s)) => s.split(' ').map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    Principal {
        issuer: "https://idp.example".into(),
        subject: "user-1".into(),
        audiences: vec!["tokengate".into()],
        scopes,
        claims,
        expires_at: NOW + 600,
        token_fingerprint: Fingerprint::of(b"jwt"),
    }
}

fn rtc(channel: &str) -> Request {
    Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse(channel).unwrap())
}

fn service(service: Service) -> Request {
    Request::new(Action::Issue(service))
}

fn secs(s: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(s)
}

/// A one-line summary of a decision, so tables read like the behaviour they pin.
fn summary(decision: &Decision) -> String {
    match decision {
        Decision::Deny(d) => format!(
            "deny {} rule={}",
            d.reason.as_str(),
            d.rule.as_deref().unwrap_or("-")
        ),
        // Inspect and explain issue nothing: the rule and the action are all there is.
        Decision::Permit(p) => format!("allow rule={} {}", p.rule, p.action),
        Decision::Allow(g) => {
            let identity = match g.identity() {
                BoundIdentity::Rtc(RtcIdentity::Uid(u)) => format!("uid:{u}"),
                BoundIdentity::Rtc(RtcIdentity::Account(a)) => format!("account:{a}"),
                BoundIdentity::Rtc(RtcIdentity::AnyUid) => "uid:0".to_owned(),
                BoundIdentity::User(u) => format!("user:{u}"),
                BoundIdentity::App => "app".to_owned(),
            };
            let terms = g.terms();
            let mut s = format!(
                "allow rule={} {} project={} channel={} id={} role={} ttl={} join={}",
                terms.rule,
                g.action(),
                terms.project,
                g.channel().map_or("-", ChannelScope::as_str),
                identity,
                g.role(),
                terms.token_lifetime.secs(),
                terms.join_lifetime.secs(),
            );
            if let Grant::Rtc(rtc) = g {
                if let Some(p) = rtc.publish_lifetime {
                    s += &format!(" publish={}", p.secs());
                }
                if let Some(rtm) = &rtc.rtm_user_id {
                    s += &format!(" rtm={rtm}");
                }
            }
            if let Grant::Rtm(rtm) = g {
                for p in &rtm.permissions {
                    s += &format!(
                        " perm={}:{}:{}",
                        p.resource_type.as_str(),
                        p.access.as_str(),
                        p.resources.join(",")
                    );
                }
            }
            if terms.clamped {
                s += " clamped";
            }
            s
        }
    }
}

/// The rule-testing primitive.
fn check(policy: &Policy, caller: &Principal, request: &Request, expected: &str) {
    let decision = policy.evaluate(caller, request, NOW);
    assert_eq!(summary(&decision), expected, "request {request:?}");
    // evaluate and explain must never disagree.
    let (explained, trace) = policy.explain(caller, request, NOW);
    assert_eq!(explained, decision);
    assert_eq!(trace.decision.as_ref(), Some(&decision));
}

const TEAM: &str = r#"
[[rules]]
name = "team rooms"
actions = ["rtc", "rtm"]
channel = "team-{team}-*"
condition = 'captures.team in claims.teams'
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "2h"
"#;

#[test]
fn a_matching_allow_rule_grants_within_its_limits() {
    let p = policy(TEAM);
    let member = caller(json!({"agora_uid": 42, "teams": ["blue"]}));
    let mut publisher = rtc("team-blue-standup");
    publisher.role = Some(Role::Publisher);
    check(
        &p,
        &member,
        &publisher,
        "allow rule=team rooms rtc project=main channel=team-blue-standup id=uid:42 role=publisher ttl=3600 join=3600 publish=3600",
    );
    check(
        &p,
        &member,
        &rtc("team-blue-x"),
        "allow rule=team rooms rtc project=main channel=team-blue-x id=uid:42 role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &member,
        &rtc("team-red-x"),
        "deny no_matching_rule rule=-",
    );
    check(&p, &member, &rtc("lobby"), "deny no_matching_rule rule=-");
    let grant = p.evaluate(&member, &publisher, NOW);
    assert_eq!(grant.grant().unwrap().terms().issued_at, NOW);
    assert_eq!(grant.grant().unwrap().expires_at(), NOW + 3600);
}

#[test]
fn every_deny_reason_is_reachable() {
    let text = r#"
[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtc", "rtm", "chat"]
condition = 'has(claims.suspended) && claims.suspended'

[[rules]]
name = "fragile deny"
effect = "deny"
actions = ["rtc"]
channel = "fragile-*"
condition = 'claims.flag == "x"'

[[rules]]
name = "teams"
actions = ["inspect"]
channel = "team-{team}-*"

[[rules]]
name = "mesh inspect"
actions = ["inspect"]
channel = "mesh-*"
authenticate = "jwt+mtls"

[[rules]]
name = "capped"
actions = ["chat"]
channel = "capped-{x}"
project = "main"
account_claim = "nick"
cap_to_jwt_expiry = true

[[rules]]
name = "rooms"
actions = ["rtc"]
channel = "room-{room}"
project = "main"
max_role = "subscriber"
uid_claim = "agora_uid"
max_ttl = "1h"

[[rules]]
name = "accounts"
actions = ["chat"]
project = "main"
account_claim = "nick"

[[rules]]
name = "backend"
actions = ["rtm"]
issuer = "https://idp.example"
project = "eu"
caller_chooses_identity = true

[[rules]]
name = "anything"
actions = ["rtc"]
project = "main"
uid_claim = "agora_uid"
"#;
    let p = policy(text);
    let ok = caller(json!({"agora_uid": 7, "nick": "bob"}));
    let mut cases: Vec<(Principal, Request, &str)> = Vec::new();
    cases.push((
        ok.clone(),
        Request::new(Action::Inspect),
        "deny no_matching_rule rule=-",
    ));
    cases.push((
        caller(json!({"agora_uid": 7, "suspended": true})),
        rtc("room-1"),
        "deny denied_by_rule rule=suspended",
    ));
    cases.push((
        ok.clone(),
        rtc("fragile-1"),
        "deny condition_error rule=fragile deny",
    ));
    let mut unknown = rtc("room-1");
    unknown.project = Some("nope".into());
    cases.push((ok.clone(), unknown, "deny unknown_project rule=-"));
    let mut also = rtc("room-1");
    also.also_rtm = true;
    cases.push((ok.clone(), also, "deny action_not_allowed rule=rooms"));
    cases.push((
        ok.clone(),
        service(Service::Rtc),
        "deny channel_required rule=anything",
    ));
    let mut publisher = rtc("room-1");
    publisher.role = Some(Role::Publisher);
    cases.push((ok.clone(), publisher, "deny role_not_allowed rule=rooms"));
    cases.push((
        caller(json!({"agora_uid": 4_294_967_296u64})),
        rtc("room-1"),
        "deny bad_identity_claim rule=rooms",
    ));
    cases.push((
        caller(json!({})),
        rtc("room-1"),
        "deny missing_identity_claim rule=rooms",
    ));
    let mut other = rtc("room-1");
    other.identity = RequestedIdentity::Uid(Uid::new(8).unwrap());
    cases.push((ok.clone(), other, "deny identity_not_allowed rule=rooms"));
    cases.push((
        ok.clone(),
        service(Service::Rtm),
        "deny identity_required rule=backend",
    ));
    let mut bad_user = service(Service::Rtm);
    bad_user.identity = RequestedIdentity::Account("x".repeat(65));
    cases.push((
        ok.clone(),
        bad_user,
        "deny invalid_requested_identity rule=backend",
    ));
    let mut any = rtc("room-1");
    any.identity = RequestedIdentity::AnyUid;
    cases.push((ok.clone(), any, "deny wildcard_uid_not_allowed rule=rooms"));
    let mut wildcard = service(Service::Rtc);
    wildcard.channel = Some(ChannelScope::Wildcard);
    cases.push((
        ok.clone(),
        wildcard,
        "deny wildcard_channel_not_allowed rule=anything",
    ));
    let mut app = service(Service::Chat);
    app.identity = RequestedIdentity::App;
    cases.push((ok.clone(), app, "deny app_token_not_allowed rule=accounts"));
    let mut long = rtc("room-1");
    long.token_lifetime = secs(7200);
    cases.push((ok.clone(), long, "deny ttl_too_long rule=rooms"));
    let ambiguous =
        Request::new(Action::Inspect).with_channel(ChannelName::parse("team-a-b-standup").unwrap());
    cases.push((ok.clone(), ambiguous, "deny ambiguous_channel rule=teams"));
    let capped = service(Service::Chat).with_channel(ChannelName::parse("capped-1").unwrap());
    cases.push((ok.clone(), capped, "deny jwt_expires_too_soon rule=capped"));
    // A JWT caller with no client certificate, and a rule that needs both.
    let mesh = Request::new(Action::Inspect).with_channel(ChannelName::parse("mesh-1").unwrap());
    cases.push((
        ok.clone(),
        mesh,
        "deny authentication_not_accepted rule=mesh inspect",
    ));

    let mut seen = std::collections::BTreeSet::new();
    for (who, request, expected) in &cases {
        check(&p, who, request, expected);
        seen.insert(p.evaluate(who, request, NOW).deny_reason().unwrap());
    }
    // A rule reading a fact that could not be had (tests/it/policy_facts.rs
    // covers the cases; here, one that was never fetched).
    seen.insert(crate::policy_facts::unfetched_fact_denial());
    let all: std::collections::BTreeSet<DenyReason> = DenyReason::ALL.into_iter().collect();
    assert_eq!(seen, all, "every deny reason must be covered by this table");
}

#[test]
fn deny_reason_codes_are_stable() {
    let codes: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        codes,
        [
            "no_matching_rule",
            "denied_by_rule",
            "condition_error",
            "unknown_project",
            "action_not_allowed",
            "channel_required",
            "role_not_allowed",
            "bad_identity_claim",
            "missing_identity_claim",
            "identity_not_allowed",
            "identity_required",
            "invalid_requested_identity",
            "wildcard_uid_not_allowed",
            "wildcard_channel_not_allowed",
            "app_token_not_allowed",
            "ttl_too_long",
            "ambiguous_channel",
            "jwt_expires_too_soon",
            "authentication_not_accepted",
            "fact_unavailable",
        ]
    );
}

#[test]
fn uid_claims_are_integers_in_range_and_never_truncated() {
    let p = policy(
        r#"
[[rules]]
name = "r"
actions = ["rtc"]
project = "main"
uid_claim = "uid"
"#,
    );
    let table: Vec<(serde_json::Value, &str)> = vec![
        (
            json!(1),
            "allow rule=r rtc project=main channel=c id=uid:1 role=subscriber ttl=3600 join=3600",
        ),
        (
            json!(4_294_967_295u64),
            "allow rule=r rtc project=main channel=c id=uid:4294967295 role=subscriber ttl=3600 join=3600",
        ),
        (json!(4_294_967_296u64), "deny bad_identity_claim rule=r"),
        (json!(u64::MAX), "deny bad_identity_claim rule=r"),
        (json!(0), "deny bad_identity_claim rule=r"),
        (json!(-1), "deny bad_identity_claim rule=r"),
        (json!(i64::MIN), "deny bad_identity_claim rule=r"),
        (json!(42.0), "deny bad_identity_claim rule=r"),
        (json!("42"), "deny bad_identity_claim rule=r"),
        (json!([42]), "deny bad_identity_claim rule=r"),
        (json!(true), "deny bad_identity_claim rule=r"),
        (json!(null), "deny missing_identity_claim rule=r"),
    ];
    for (value, expected) in table {
        check(&p, &caller(json!({ "uid": value })), &rtc("c"), expected);
    }
}

#[test]
fn account_bindings_take_a_claim_or_the_subject() {
    let p = policy(
        r#"
[[rules]]
name = "by nick"
actions = ["rtc", "chat"]
channel = "nick-*"
project = "main"
account_claim = "nick"

[[rules]]
name = "by subject"
actions = ["rtc", "rtm", "chat"]
project = "main"
account_claim = "sub"
"#,
    );
    let table: Vec<(serde_json::Value, Request, &str)> = vec![
        (
            json!({"nick": "bob"}),
            rtc("nick-1"),
            "allow rule=by nick rtc project=main channel=nick-1 id=account:bob role=subscriber ttl=3600 join=3600",
        ),
        (
            json!({"nick": "bo/b"}),
            rtc("nick-1"),
            "deny bad_identity_claim rule=by nick",
        ),
        (
            json!({"nick": 5}),
            rtc("nick-1"),
            "deny bad_identity_claim rule=by nick",
        ),
        (
            json!({"nick": "ユーザー"}),
            service(Service::Chat).with_channel(ChannelName::parse("nick-2").unwrap()),
            "allow rule=by nick chat project=main channel=nick-2 id=user:ユーザー role=subscriber ttl=3600 join=3600",
        ),
        // A chat request without a channel skips the rule with a pattern.
        (
            json!({"nick": "bob"}),
            service(Service::Chat),
            "allow rule=by subject chat project=main channel=- id=user:user-1 role=subscriber ttl=3600 join=3600",
        ),
        (
            json!({}),
            rtc("other"),
            "allow rule=by subject rtc project=main channel=other id=account:user-1 role=subscriber ttl=3600 join=3600",
        ),
        (
            json!({}),
            service(Service::Rtm),
            "allow rule=by subject rtm project=main channel=- id=user:user-1 role=subscriber ttl=3600 join=3600",
        ),
    ];
    for (claims, request, expected) in table {
        check(&p, &caller(claims), &request, expected);
    }
}

#[test]
fn a_requested_identity_must_equal_the_bound_one() {
    let p = policy(TEAM);
    let member = caller(json!({"agora_uid": 42, "teams": ["blue"]}));
    let table = [
        (
            RequestedIdentity::Uid(Uid::new(42).unwrap()),
            "allow rule=team rooms rtc project=main channel=team-blue-x id=uid:42 role=subscriber ttl=3600 join=3600",
        ),
        (
            RequestedIdentity::Uid(Uid::new(43).unwrap()),
            "deny identity_not_allowed rule=team rooms",
        ),
        // The wire keeps uid and account distinct: "42" the account is not uid 42.
        (
            RequestedIdentity::Account("42".into()),
            "deny identity_not_allowed rule=team rooms",
        ),
        (
            RequestedIdentity::App,
            "deny identity_not_allowed rule=team rooms",
        ),
    ];
    for (identity, expected) in table {
        let mut request = rtc("team-blue-x");
        request.identity = identity;
        check(&p, &member, &request, expected);
    }
}

#[test]
fn a_backend_chooses_identities_within_its_condition() {
    let p = policy(
        r#"
[[rules]]
name = "backend"
actions = ["rtc", "rtm", "chat"]
issuer = "https://idp.example"
condition = '"tokens:mint" in caller.scopes && (request.identity != "uid" || request.uid < 1000000)'
project = "eu"
max_role = "publisher"
caller_chooses_identity = true
allow_wildcard_uid = true
allow_app_token = true
"#,
    );
    let backend = caller(json!({"scope": "tokens:mint other"}));
    let table = [
        (
            Service::Rtc,
            RequestedIdentity::Uid(Uid::new(999_999).unwrap()),
            "allow rule=backend rtc project=eu channel=c id=uid:999999 role=subscriber ttl=3600 join=3600",
        ),
        (
            Service::Rtc,
            RequestedIdentity::Uid(Uid::new(1_000_000).unwrap()),
            "deny no_matching_rule rule=-",
        ),
        (
            Service::Rtc,
            RequestedIdentity::Account("alice".into()),
            "allow rule=backend rtc project=eu channel=c id=account:alice role=subscriber ttl=3600 join=3600",
        ),
        (
            Service::Rtc,
            RequestedIdentity::Account("al/ice".into()),
            "deny invalid_requested_identity rule=backend",
        ),
        (
            Service::Rtc,
            RequestedIdentity::AnyUid,
            "allow rule=backend rtc project=eu channel=c id=uid:0 role=subscriber ttl=3600 join=3600",
        ),
        (
            Service::Rtm,
            RequestedIdentity::AnyUid,
            "deny identity_not_allowed rule=backend",
        ),
        (
            Service::Rtm,
            RequestedIdentity::Uid(Uid::new(5).unwrap()),
            "allow rule=backend rtm project=eu channel=c id=user:5 role=subscriber ttl=3600 join=3600",
        ),
        (
            Service::Chat,
            RequestedIdentity::App,
            "allow rule=backend chat project=eu channel=c id=app role=subscriber ttl=3600 join=3600",
        ),
        (
            Service::Chat,
            RequestedIdentity::FromJwt,
            "deny identity_required rule=backend",
        ),
    ];
    for (svc, identity, expected) in table {
        let mut request = service(svc).with_channel(ChannelName::parse("c").unwrap());
        request.identity = identity;
        check(&p, &backend, &request, expected);
    }
    check(
        &p,
        &caller(json!({})),
        &rtc("c"),
        "deny no_matching_rule rule=-",
    );
}

#[test]
fn issuer_and_project_narrow_the_match() {
    let p = policy(
        r#"
[[rules]]
name = "partner"
actions = ["rtc"]
issuer = "https://partner.example"
project = "eu"
account_claim = "sub"

[[rules]]
name = "eu"
actions = ["rtc"]
project = "eu"
uid_claim = "uid"

[[rules]]
name = "main"
actions = ["rtc"]
project = "main"
account_claim = "sub"
"#,
    );
    let who = caller(json!({"uid": 3}));
    let mut partner = who.clone();
    partner.issuer = "https://partner.example".into();
    let mut to_main = rtc("c");
    to_main.project = Some("main".into());
    check(
        &p,
        &partner,
        &rtc("c"),
        "allow rule=partner rtc project=eu channel=c id=account:user-1 role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &who,
        &rtc("c"),
        "allow rule=eu rtc project=eu channel=c id=uid:3 role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &who,
        &to_main,
        "allow rule=main rtc project=main channel=c id=account:user-1 role=subscriber ttl=3600 join=3600",
    );
    let (_, trace) = p.explain(&partner, &to_main, NOW);
    let outcomes: Vec<&RuleOutcome> = trace.rules.iter().map(|r| &r.outcome).collect();
    assert_eq!(outcomes[0], &RuleOutcome::ProjectMismatch);
    assert_eq!(outcomes[1], &RuleOutcome::ProjectMismatch);
    let (_, trace) = p.explain(&who, &rtc("c"), NOW);
    assert_eq!(trace.rules[0].outcome, RuleOutcome::IssuerMismatch);
}

#[test]
fn lifetimes_default_cap_and_clamp() {
    let text = r#"
[[rules]]
name = "strict"
actions = ["rtc"]
channel = "strict-*"
project = "main"
max_role = "publisher"
uid_claim = "uid"
default_ttl = "10m"
max_ttl = "1h"
join_ttl = "30m"
publish_ttl = "5m"

[[rules]]
name = "clamping"
actions = ["rtc"]
channel = "clamp-*"
project = "main"
max_role = "publisher"
uid_claim = "uid"
max_ttl = "24h"
publish_ttl = "1h"
clamp_ttl = true

[[rules]]
name = "short"
actions = ["rtc"]
project = "main"
uid_claim = "uid"
max_ttl = "90s"
"#;
    let p = policy(text);
    let who = caller(json!({"uid": 9}));
    let req = |channel: &str, ttl: u32, join: u32, publish: u32| {
        let mut r = rtc(channel);
        r.role = Some(Role::Publisher);
        r.token_lifetime = secs(ttl);
        r.join_lifetime = secs(join);
        r.publish_lifetime = secs(publish);
        r
    };
    let table = [
        (
            req("strict-1", 0, 0, 0),
            "allow rule=strict rtc project=main channel=strict-1 id=uid:9 role=publisher ttl=600 join=1800 publish=300",
        ),
        (
            req("strict-1", 3600, 1800, 300),
            "allow rule=strict rtc project=main channel=strict-1 id=uid:9 role=publisher ttl=3600 join=1800 publish=300",
        ),
        (req("strict-1", 3601, 0, 0), "deny ttl_too_long rule=strict"),
        (req("strict-1", 0, 1801, 0), "deny ttl_too_long rule=strict"),
        (req("strict-1", 0, 0, 301), "deny ttl_too_long rule=strict"),
        (
            req("clamp-1", 0, 0, 0),
            "allow rule=clamping rtc project=main channel=clamp-1 id=uid:9 role=publisher ttl=3600 join=3600 publish=3600",
        ),
        (
            req("clamp-1", 200_000, 100_000, 7200),
            "allow rule=clamping rtc project=main channel=clamp-1 id=uid:9 role=publisher ttl=86400 join=86400 publish=3600 clamped",
        ),
        (
            req("clamp-1", 86_400, 60, 60),
            "allow rule=clamping rtc project=main channel=clamp-1 id=uid:9 role=publisher ttl=86400 join=60 publish=60",
        ),
    ];
    for (request, expected) in table {
        check(&p, &who, &request, expected);
    }
    // Without default_ttl, the default is 1h or max_ttl, whichever is shorter.
    check(
        &p,
        &who,
        &rtc("x"),
        "allow rule=short rtc project=main channel=x id=uid:9 role=subscriber ttl=90 join=90",
    );
}

#[test]
fn wildcards_need_their_flags() {
    let p = policy(
        r#"
[[rules]]
name = "broadcast"
actions = ["rtc"]
channel = "*"
condition = 'claims.role == "ops"'
project = "main"
uid_claim = "uid"
allow_wildcard_channel = true
allow_wildcard_uid = true

[[rules]]
name = "rooms"
actions = ["rtc"]
channel = "room-*"
project = "main"
uid_claim = "uid"
"#,
    );
    let ops = caller(json!({"uid": 1, "role": "ops"}));
    let user = caller(json!({"uid": 2, "role": "user"}));
    let mut everywhere = service(Service::Rtc);
    everywhere.channel = Some(ChannelScope::Wildcard);
    let mut anyone = rtc("room-1");
    anyone.identity = RequestedIdentity::AnyUid;
    check(
        &p,
        &ops,
        &everywhere,
        "allow rule=broadcast rtc project=main channel=* id=uid:1 role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &ops,
        &anyone,
        "allow rule=broadcast rtc project=main channel=room-1 id=uid:0 role=subscriber ttl=3600 join=3600",
    );
    // A wildcard request never matches a pattern other than `*`.
    check(&p, &user, &everywhere, "deny no_matching_rule rule=-");
    check(
        &p,
        &user,
        &anyone,
        "deny wildcard_uid_not_allowed rule=rooms",
    );
}

#[test]
fn rtm_permissions_substitute_captures_and_also_rtm_follows_the_identity() {
    let p = policy(
        r#"
[[rules]]
name = "team chat"
actions = ["rtc", "rtm"]
channel = "team-{team}-{room}"
project = "main"
max_role = "publisher"
uid_claim = "uid"

[[rules.rtm_permissions]]
resource_type = "message_channels"
access = "read"
resources = ["team-{team}-chat", "announcements"]

[[rules.rtm_permissions]]
resource_type = "stream_channels"
access = "write"
resources = ["team-{team}-{room}"]
"#,
    );
    let who = caller(json!({"uid": 77}));
    let rtm = service(Service::Rtm).with_channel(ChannelName::parse("team-red-daily").unwrap());
    check(
        &p,
        &who,
        &rtm,
        "allow rule=team chat rtm project=main channel=team-red-daily id=user:77 role=subscriber ttl=3600 join=3600 perm=message_channels:read:team-red-chat,announcements perm=stream_channels:write:team-red-daily",
    );
    let mut both = rtc("team-red-daily");
    both.also_rtm = true;
    check(
        &p,
        &who,
        &both,
        "allow rule=team chat rtc project=main channel=team-red-daily id=uid:77 role=subscriber ttl=3600 join=3600 rtm=77",
    );
    let mut anyone = both.clone();
    anyone.identity = RequestedIdentity::AnyUid;
    check(
        &p,
        &who,
        &anyone,
        "deny wildcard_uid_not_allowed rule=team chat",
    );
    let grant = p.evaluate(&who, &rtm, NOW);
    let Some(Grant::Rtm(rtm)) = grant.grant() else {
        panic!("expected an rtm grant, got {grant:?}")
    };
    let codes: Vec<(u16, u16)> = rtm
        .permissions
        .iter()
        .map(|p| (p.resource_type.code(), p.access.code()))
        .collect();
    assert_eq!(codes, [(0, 0), (1, 1)]);
}

#[test]
fn inspect_explain_and_fpa_are_actions_a_rule_must_allow() {
    let p = policy(
        r#"
[[rules]]
name = "debuggers"
actions = ["inspect", "explain"]
condition = '"tokengate:debug" in caller.scopes'

[[rules]]
name = "accelerated"
actions = ["fpa"]
project = "main"
"#,
    );
    let engineer = caller(json!({"scope": "tokengate:debug"}));
    let user = caller(json!({}));
    check(
        &p,
        &engineer,
        &Request::new(Action::Inspect),
        "allow rule=debuggers inspect",
    );
    check(
        &p,
        &engineer,
        &Request::new(Action::Explain),
        "allow rule=debuggers explain",
    );
    check(
        &p,
        &user,
        &Request::new(Action::Inspect),
        "deny no_matching_rule rule=-",
    );
    check(
        &p,
        &user,
        &service(Service::Fpa),
        "allow rule=accelerated fpa project=main channel=- id=app role=subscriber ttl=3600 join=3600",
    );
}

#[test]
fn the_cel_environment_exposes_every_documented_variable() {
    let who =
        caller(json!({"scope": "a b", "org": {"tier": "gold", "seats": [1, 2]}, "big": u64::MAX}));
    let table = [
        (
            "claims.org.tier == 'gold' && size(claims.org.seats) == 2",
            true,
        ),
        ("claims.big == 18446744073709551615u", true),
        (
            "caller.issuer == 'https://idp.example' && caller.subject == 'user-1'",
            true,
        ),
        (
            "'b' in caller.scopes && 'tokengate' in caller.audiences",
            true,
        ),
        ("caller.expires_at == now + 600", true),
        ("channel == 'team-blue-x' && captures.team == 'blue'", true),
        (
            "request.action == 'rtc' && request.role == 'publisher'",
            true,
        ),
        (
            "request.identity == 'uid' && request.uid == 5 && request.account == null",
            true,
        ),
        (
            "request.token_ttl == 60 && request.join_ttl == null && request.publish_ttl == null",
            true,
        ),
        (
            "request.project == 'main' && request.also_rtm == false",
            true,
        ),
        ("now == 1800000000", true),
        // A JWT caller with no transport identity: `peer` is there, empty.
        (
            "peer.spiffe_id == '' && size(peer.dns_names) == 0 && peer.address == ''",
            true,
        ),
        ("request.authenticated_by == 'jwt'", true),
        ("claims.org.tier == 'silver'", false),
    ];
    for (condition, expected) in table {
        let text = format!(
            "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nchannel = \"team-{{team}}-*\"\ncondition = \"{}\"\nproject = \"main\"\nmax_role = \"publisher\"\ncaller_chooses_identity = true\n",
            condition.replace('"', "\\\"")
        );
        let p = policy(&text);
        let mut request = rtc("team-blue-x");
        request.role = Some(Role::Publisher);
        request.identity = RequestedIdentity::Uid(Uid::new(5).unwrap());
        request.token_lifetime = secs(60);
        request.project = Some("main".into());
        let (decision, trace) = p.explain(&who, &request, NOW);
        assert_eq!(decision.grant().is_some(), expected, "{condition}\n{trace}");
    }
}

#[test]
fn runtime_errors_never_allow_and_are_traced() {
    let p = policy(
        r#"
[[rules]]
name = "typo"
actions = ["rtc"]
condition = 'claims.missing == 1'
project = "main"
uid_claim = "uid"

[[rules]]
name = "not bool"
actions = ["rtc"]
condition = '1 + 1'
project = "main"
uid_claim = "uid"

[[rules]]
name = "overflow"
actions = ["rtc"]
condition = 'claims.uid + 9223372036854775807 > 0'
project = "main"
uid_claim = "uid"
"#,
    );
    let (decision, trace) = p.explain(&caller(json!({"uid": 5})), &rtc("c"), NOW);
    assert_eq!(decision.deny_reason(), Some(DenyReason::NoMatchingRule));
    assert_eq!(trace.rules.len(), 3);
    for rule in &trace.rules {
        assert!(
            matches!(rule.outcome, RuleOutcome::ConditionFailed { .. }),
            "{rule:?}"
        );
    }
    let text = trace.to_string();
    assert!(
        text.contains("rules[1] \"not bool\": condition failed (produced a int, not a bool)"),
        "{text}"
    );
    assert!(
        text.ends_with("deny: no_matching_rule: no rule matched the request"),
        "{text}"
    );
}

#[test]
fn deny_rules_carve_out_exceptions_and_fail_closed() {
    let p = policy(
        r#"
[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtc"]
condition = 'claims.status == "suspended"'

[[rules]]
name = "everyone"
actions = ["rtc"]
project = "main"
uid_claim = "uid"
"#,
    );
    check(
        &p,
        &caller(json!({"uid": 1, "status": "active"})),
        &rtc("c"),
        "allow rule=everyone rtc project=main channel=c id=uid:1 role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &caller(json!({"uid": 1, "status": "suspended"})),
        &rtc("c"),
        "deny denied_by_rule rule=suspended",
    );
    // Without the claim the exception cannot be evaluated, so it denies.
    check(
        &p,
        &caller(json!({"uid": 1})),
        &rtc("c"),
        "deny condition_error rule=suspended",
    );
}

#[test]
fn traces_explain_each_rule_in_order() {
    let p = policy(TEAM);
    let member = caller(json!({"agora_uid": 42, "teams": ["blue"]}));
    let (decision, trace) = p.explain(&member, &rtc("team-blue-x"), NOW);
    assert!(decision.grant().is_some());
    assert_eq!(
        trace.rules[0].outcome,
        RuleOutcome::Matched {
            captures: vec![("team".into(), "blue".into())]
        }
    );
    let (_, trace) = p.explain(&member, &rtc("team-red-x"), NOW);
    assert_eq!(
        trace.rules[0].outcome,
        RuleOutcome::ConditionFalse {
            condition: "captures.team in claims.teams".into()
        }
    );
    let (_, trace) = p.explain(&member, &rtc("lobby"), NOW);
    assert_eq!(
        trace.to_string(),
        "rules[0] \"team rooms\": channel does not match \"team-{team}-*\"\ndeny: no_matching_rule: no rule matched the request"
    );
    let (_, trace) = p.explain(&member, &service(Service::Chat), NOW);
    assert_eq!(trace.rules[0].outcome, RuleOutcome::ActionNotListed);
    let (_, trace) = p.explain(&member, &service(Service::Rtm), NOW);
    assert_eq!(trace.rules[0].outcome, RuleOutcome::NoChannel);
    let mut unknown = rtc("x");
    unknown.project = Some("nope".into());
    let (_, trace) = p.explain(&member, &unknown, NOW);
    assert!(trace.precheck.is_some() && trace.rules.is_empty());
}

/// The error text for a policy that must not load.
fn load_error(text: &str) -> String {
    match Policy::from_toml(text, &PROJECTS) {
        Ok(_) => panic!("loaded but should not:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_errors_name_the_rule_and_the_key() {
    let base =
        "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"\nuid_claim = \"uid\"\n";
    let table: Vec<(String, &str)> = vec![
        (format!("{base}channel = \"room/1\""), "rules[0] (\"r\").channel: '/' is not an Agora channel character"),
        (format!("{base}channel = \"{{a}}-{{a}}\""), "rules[0] (\"r\").channel: capture {a} appears twice"),
        (format!("{base}condition = \"claims.x ==\""), "rules[0] (\"r\").condition: does not compile"),
        (format!("{base}condition = \"((((((((1))))))))== 1\""), "rules[0] (\"r\").condition: nests brackets 8 deep"),
        (format!("{base}condition = \"{}\"", vec!["1"; 30].join(" + ")), "rules[0] (\"r\").condition: has 29 operators"),
        (format!("{base}max_ttl = \"25h\""), "rules[0] (\"r\").max_ttl: \"25h\" is outside 1s..=24h"),
        (format!("{base}default_ttl = \"0s\""), "rules[0] (\"r\").default_ttl: \"0s\" is outside 1s..=24h"),
        (format!("{base}join_ttl = \"1.5s\""), "rules[0] (\"r\").join_ttl: \"1.5s\" is not a whole number of seconds"),
        (format!("{base}publish_ttl = \"soon\""), "rules[0] (\"r\").publish_ttl: \"soon\" is not a duration"),
        (format!("{base}default_ttl = \"2h\"\nmax_ttl = \"1h\""), "rules[0] (\"r\").default_ttl: 7200s is above max_ttl (3600s)"),
        (format!("{base}max_role = \"admin\""), "rules[0] (\"r\").max_role: role \"admin\" is not publisher or subscriber"),
        (format!("{base}account_claim = \"sub\""), "rules[0] (\"r\").account_claim: conflicts with uid_claim"),
        (format!("{base}issuer = \"\""), "rules[0] (\"r\").issuer: must not be empty"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"mars\"\nuid_claim = \"u\"".into(), "rules[0] (\"r\").project: \"mars\" is not a configured project (known: eu, main)"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nuid_claim = \"u\"".into(), "rules[0] (\"r\").project: an allow rule that issues tokens must name the project"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"".into(), "rules[0] (\"r\").uid_claim: an allow rule for rtc, rtm or chat must bind the identity"),
        ("[[rules]]\nname = \"r\"\nactions = []".into(), "rules[0] (\"r\").actions: list at least one"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtc\", \"video\"]".into(), "rules[0] (\"r\").actions[1]: \"video\" is not one of"),
        ("[[rules]]\nname = \"r\"\nactions = [\"fpa\", \"fpa\"]".into(), "rules[0] (\"r\").actions[1]: \"fpa\" is listed twice"),
        ("[[rules]]\nname = \"\"\nactions = [\"inspect\"]".into(), "rules[0] (\"\").name: every rule needs a name"),
        ("[[rules]]\nname = \"r\"\nactions = [\"inspect\"]\n[[rules]]\nname = \"r\"\nactions = [\"explain\"]".into(), "rules[1] (\"r\").name: rules[0] already has this name"),
        ("[[rules]]\nname = \"r\"\neffect = \"deny\"\nactions = [\"rtc\"]\nmax_ttl = \"1h\"".into(), "rules[0] (\"r\").max_ttl: a deny rule grants nothing"),
        ("[[rules]]\nname = \"r\"\neffect = \"maybe\"\nactions = [\"rtc\"]".into(), "policy is not valid"),
        (format!("{base}colour = \"red\""), "unknown field `colour`"),
        (format!("{base}[[rules.rtm_permissions]]\nresource_type = \"users\"\naccess = \"read\"\nresources = [\"u\"]"), "rules[0] (\"r\").rtm_permissions: only apply to `rtm`"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtm\"]\nproject = \"main\"\nuid_claim = \"u\"\n[[rules.rtm_permissions]]\nresource_type = \"rooms\"\naccess = \"read\"\nresources = [\"u\"]".into(), "rules[0] (\"r\").rtm_permissions[0].resource_type: \"rooms\" is not one of message_channels"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtm\"]\nproject = \"main\"\nuid_claim = \"u\"\n[[rules.rtm_permissions]]\nresource_type = \"users\"\naccess = \"admin\"\nresources = [\"u\"]".into(), "rules[0] (\"r\").rtm_permissions[0].access: \"admin\" is not read or write"),
        ("[[rules]]\nname = \"r\"\nactions = [\"rtm\"]\nproject = \"main\"\nuid_claim = \"u\"\n[[rules.rtm_permissions]]\nresource_type = \"users\"\naccess = \"read\"\nresources = [\"{team}\"]".into(), "rules[0] (\"r\").rtm_permissions[0].resources[0]: {team} is not a capture"),
    ];
    for (text, expected) in table {
        let error = load_error(&text);
        assert!(
            error.contains(expected),
            "got {error:?}\nwanted {expected:?}\nfor\n{text}"
        );
    }
    assert!(matches!(
        Policy::from_toml("rules = 3", &PROJECTS),
        Err(PolicyError::Syntax(_))
    ));
}

#[test]
fn shadowed_rules_are_warnings() {
    let text = r#"
[[rules]]
name = "all rooms"
actions = ["rtc", "rtm"]
channel = "room-*"
project = "main"
uid_claim = "uid"

[[rules]]
name = "room 1"
actions = ["rtc"]
channel = "room-{n}"
project = "main"
uid_claim = "uid"

[[rules]]
name = "conditional"
actions = ["rtc"]
channel = "*"
condition = 'true'
project = "main"
uid_claim = "uid"

[[rules]]
name = "after conditional"
actions = ["rtc"]
channel = "x-*"
project = "main"
uid_claim = "uid"

[[rules]]
name = "other project"
actions = ["rtc"]
channel = "room-2"
project = "eu"
uid_claim = "uid"
"#;
    let (policy, warnings) = Policy::from_toml(text, &PROJECTS).unwrap();
    assert_eq!(policy.len(), 5);
    assert_eq!(
        warnings,
        [PolicyWarning::Shadowed {
            index: 1,
            name: "room 1".into(),
            by_index: 0,
            by_name: "all rooms".into()
        }]
    );
    assert_eq!(
        warnings[0].to_string(),
        "rules[1] (\"room 1\") can never match: rules[0] (\"all rooms\") matches every request it does"
    );
}

#[test]
fn rules_load_from_deserialized_config_too() {
    let config: tokengate::policy::PolicyConfig = toml::from_str(TEAM).unwrap();
    let projects = vec!["main".to_owned()];
    let (p, _) = Policy::compile(&config.rules, &projects).unwrap();
    assert_eq!(p.rule_names().collect::<Vec<_>>(), ["team rooms"]);
    let empty = Policy::compile::<&str>(&[], &[]).unwrap().0;
    assert!(empty.is_empty());
    check(
        &empty,
        &caller(json!({})),
        &rtc("c"),
        "deny no_matching_rule rule=-",
    );
}

#[test]
fn conditions_at_the_size_limits_compile_and_run_on_a_small_stack() {
    // The limits exist because the CEL parser recurses deeply; the largest
    // accepted shapes must run on a 2 MiB test thread in a debug build.
    let chain = vec!["1"; 24].join(" + ");
    let members = format!("claims{}", ".a".repeat(23));
    let shapes = [
        format!("(((((({chain}))))))== 24"),
        "size([size([size([1])])]) == 1 && [[[[[[1]]]]]] == [[[[[[1]]]]]]".to_owned(),
        format!("{members} == 1"),
        format!(
            "[{}].all(x, x in [1, 2, 3]) && true",
            vec!["1"; 30].join(", ")
        ),
    ];
    let mut nested = json!(1);
    for _ in 0..23 {
        nested = json!({ "a": nested });
    }
    let who = caller(
        nested
            .get("a")
            .cloned()
            .map_or(json!({}), |a| json!({ "a": a })),
    );
    for condition in shapes {
        let text = format!(
            "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\ncondition = \"{condition}\"\nproject = \"main\"\nuid_claim = \"uid\"\n"
        );
        let (p, _) =
            Policy::from_toml(&text, &PROJECTS).unwrap_or_else(|e| panic!("{condition}: {e}"));
        let (_, trace) = p.explain(&who, &rtc("c"), NOW);
        assert!(
            matches!(
                trace.rules[0].outcome,
                RuleOutcome::Matched { .. } | RuleOutcome::ConditionFailed { .. }
            ),
            "{condition}: {trace}"
        );
    }
}

#[test]
fn a_policy_can_be_shared_across_threads() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Policy>();
    shareable::<Decision>();
    let p = std::sync::Arc::new(policy(TEAM));
    let member = caller(json!({"agora_uid": 42, "teams": ["blue"]}));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (p, member) = (p.clone(), member.clone());
            std::thread::spawn(move || {
                p.evaluate(&member, &rtc("team-blue-x"), NOW)
                    .grant()
                    .is_some()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

/// A caller of `iss` with subject `sub` and these extra claims.
fn caller_of(iss: &str, sub: &str, extra: serde_json::Value) -> Principal {
    let mut principal = caller(extra);
    principal.issuer = iss.into();
    principal.subject = sub.into();
    principal
        .claims
        .insert("iss".into(), ClaimValue::String(iss.into()));
    principal
        .claims
        .insert("sub".into(), ClaimValue::String(sub.into()));
    principal
}

#[test]
fn a_channel_that_splits_a_pattern_two_ways_never_allows() {
    let p = policy(TEAM);
    // Team `a` used to get `team-a-b-standup` (shortest capture), which is
    // team `a-b`'s channel; now neither team's member gets it from this rule.
    for team in ["a", "a-b"] {
        let member = caller(json!({"agora_uid": 42, "teams": [team]}));
        check(
            &p,
            &member,
            &rtc("team-a-b-standup"),
            "deny ambiguous_channel rule=team rooms",
        );
        let (_, trace) = p.explain(&member, &rtc("team-a-b-standup"), NOW);
        let RuleOutcome::AmbiguousChannel {
            pattern,
            capture,
            values,
        } = &trace.rules[0].outcome
        else {
            panic!("expected an ambiguous channel in the trace:\n{trace}")
        };
        assert_eq!(
            (pattern.as_str(), capture.as_str()),
            ("team-{team}-*", "team")
        );
        let mut values = values.clone();
        values.sort();
        assert_eq!(values, ["a", "a-b"]);
        let text = trace.to_string();
        assert!(
            text.contains(r#"channel splits "team-{team}-*" more than one way: team = "#),
            "{text}"
        );
        assert!(
            text.contains("deny: ambiguous_channel (rule \"team rooms\")"),
            "{text}"
        );
    }
    // A channel that splits one way still matches.
    let member = caller(json!({"agora_uid": 42, "teams": ["data-eng"]}));
    check(
        &p,
        &member,
        &rtc("team-data-eng"),
        "deny no_matching_rule rule=-",
    );
    let member = caller(json!({"agora_uid": 42, "teams": ["a"]}));
    check(
        &p,
        &member,
        &rtc("team-a-standup"),
        "allow rule=team rooms rtc project=main channel=team-a-standup id=uid:42 role=subscriber ttl=3600 join=3600",
    );

    // The ambiguous rule does not apply, so a later rule may still decide.
    let text = format!(
        "{TEAM}\n[[rules]]\nname = \"lobby\"\nactions = [\"rtc\"]\nchannel = \"team-a-b-standup\"\nproject = \"main\"\nuid_claim = \"agora_uid\"\n"
    );
    let p = policy(&text);
    check(
        &p,
        &member,
        &rtc("team-a-b-standup"),
        "allow rule=lobby rtc project=main channel=team-a-b-standup id=uid:42 role=subscriber ttl=3600 join=3600",
    );

    // A deny rule whose pattern splits the channel two ways denies: the
    // exception might apply, so it fails closed.
    let p = policy(&format!(
        "[[rules]]\nname = \"blocked\"\neffect = \"deny\"\nactions = [\"rtc\"]\nchannel = \"team-{{team}}-*\"\ncondition = 'captures.team == \"a\"'\n{TEAM}"
    ));
    check(
        &p,
        &member,
        &rtc("team-a-b-standup"),
        "deny ambiguous_channel rule=blocked",
    );
    check(
        &p,
        &member,
        &rtc("team-a-x"),
        "deny denied_by_rule rule=blocked",
    );
}

#[test]
fn ambiguous_patterns_are_warnings_with_a_suggestion() {
    let text = r#"
[[rules]]
name = "team rooms"
actions = ["rtc"]
channel = "team-{team}-*"
project = "main"
uid_claim = "uid"

[[rules]]
name = "one room per team"
actions = ["rtc"]
channel = "room-{team}"
project = "main"
uid_claim = "uid"

[[rules]]
name = "stars only"
actions = ["rtc"]
channel = "lobby-*-*"
project = "main"
uid_claim = "uid"
"#;
    let (_, warnings) = Policy::from_toml(text, &PROJECTS).unwrap();
    assert_eq!(
        warnings,
        [PolicyWarning::AmbiguousPattern {
            index: 0,
            name: "team rooms".into(),
            pattern: "team-{team}-*".into(),
            capture: "team".into(),
            suggestion: "team-{team}".into(),
        }]
    );
    let message = warnings[0].to_string();
    assert!(
        message.starts_with(r#"rules[0] ("team rooms").channel: "team-{team}-*" can fit one channel with different values of {team}"#),
        "{message}"
    );
    assert!(message.contains("ambiguous_channel"), "{message}");
    assert!(message.contains(r#"e.g. "team-{team}""#), "{message}");
}

#[test]
fn resources_that_can_cover_another_captures_resources_are_refused() {
    let rule = |pattern: &str, resource: &str| {
        format!(
            "[[rules]]\nname = \"r\"\nactions = [\"rtm\"]\nchannel = \"{pattern}\"\nproject = \"main\"\nuid_claim = \"uid\"\n[[rules.rtm_permissions]]\nresource_type = \"message_channels\"\naccess = \"read\"\nresources = [\"{resource}\"]\n"
        )
    };
    for (pattern, resource) in [
        ("team-{team}", "team-{team}-*"),
        ("team-{team}", "{team}*"),
        ("team-{team}", "*-{team}"),
        ("team-{team}:{room}", "{team}-{room}"),
        ("team-{team}-*", "team-{team}-*"),
    ] {
        let error = load_error(&rule(pattern, resource));
        assert!(
            error.starts_with(r#"rules[0] ("r").rtm_permissions[0].resources[0]: "#),
            "{error}"
        );
        assert!(error.contains("another capture or `*`"), "{error}");
    }
    // Fixed text around one capture, or exactly the (star-free) channel, is fine.
    for (pattern, resource) in [
        ("team-{team}", "team-{team}"),
        ("team-{team}", "team-{team}-chat"),
        ("team-{team}", "lobby-*"),
        ("team-{team}-{room}", "team-{team}-{room}"),
    ] {
        let text = rule(pattern, resource);
        assert!(Policy::from_toml(&text, &PROJECTS).is_ok(), "{text}");
    }
}

#[test]
fn a_renewed_numeric_identity_binds_as_the_rule_binds() {
    let text = r#"
[[rules]]
name = "accounts"
actions = ["rtc"]
channel = "acct-{x}"
project = "main"
account_claim = "sub"

[[rules]]
name = "uids"
actions = ["rtc"]
channel = "uid-{x}"
project = "main"
uid_claim = "agora_uid"

[[rules]]
name = "backend"
actions = ["rtc"]
channel = "svc-{x}"
project = "main"
caller_chooses_identity = true
"#;
    let p = policy(text);
    let numeric = |channel: &str, n: u32| {
        let mut request = rtc(channel);
        request.identity = RequestedIdentity::UidOrAccount(Uid::new(n).unwrap());
        request
    };
    let account = caller_of("https://idp.example", "4242", json!({"agora_uid": 4242}));
    let cases = [
        (
            &account,
            numeric("acct-1", 4242),
            "allow rule=accounts rtc project=main channel=acct-1 id=account:4242 role=subscriber ttl=3600 join=3600",
        ),
        (
            &account,
            numeric("acct-1", 4243),
            "deny identity_not_allowed rule=accounts",
        ),
        (
            &account,
            numeric("uid-1", 4242),
            "allow rule=uids rtc project=main channel=uid-1 id=uid:4242 role=subscriber ttl=3600 join=3600",
        ),
        (
            &account,
            numeric("uid-1", 4243),
            "deny identity_not_allowed rule=uids",
        ),
        (
            &account,
            numeric("svc-1", 7),
            "allow rule=backend rtc project=main channel=svc-1 id=uid:7 role=subscriber ttl=3600 join=3600",
        ),
    ];
    for (who, request, expected) in &cases {
        check(&p, who, request, expected);
    }
    // A plain uid request still differs from the account "4242".
    let mut uid = rtc("acct-1");
    uid.identity = RequestedIdentity::Uid(Uid::new(4242).unwrap());
    check(
        &p,
        &account,
        &uid,
        "deny identity_not_allowed rule=accounts",
    );
}

#[test]
fn cap_to_jwt_expiry_ends_every_lifetime_with_the_jwt() {
    let text = r#"
[[rules]]
name = "capped"
actions = ["rtc", "rtm", "chat"]
channel = "room-{room}"
project = "main"
max_role = "publisher"
uid_claim = "agora_uid"
default_ttl = "1h"
max_ttl = "24h"
publish_ttl = "2h"
cap_to_jwt_expiry = true

[[rules]]
name = "uncapped"
actions = ["rtc"]
project = "main"
uid_claim = "agora_uid"
default_ttl = "1h"
"#;
    let p = policy(text);
    let with_exp = |exp: serde_json::Value| caller(json!({"agora_uid": 5, "exp": exp}));
    let mut publisher = rtc("room-1");
    publisher.role = Some(Role::Publisher);
    publisher.token_lifetime = secs(86_400);
    let cases = [
        (
            with_exp(json!(NOW + 600)),
            publisher.clone(),
            "allow rule=capped rtc project=main channel=room-1 id=uid:5 role=publisher ttl=600 join=600 publish=600 clamped",
        ),
        (
            with_exp(json!(NOW + 7200)),
            rtc("room-1"),
            "allow rule=capped rtc project=main channel=room-1 id=uid:5 role=subscriber ttl=3600 join=3600",
        ),
        (
            with_exp(json!(NOW + 5400)),
            publisher.clone(),
            "allow rule=capped rtc project=main channel=room-1 id=uid:5 role=publisher ttl=5400 join=5400 publish=5400 clamped",
        ),
        (
            with_exp(json!((NOW + 90) as f64 + 0.9)),
            rtc("room-1"),
            "allow rule=capped rtc project=main channel=room-1 id=uid:5 role=subscriber ttl=90 join=90 clamped",
        ),
        (
            with_exp(json!(NOW + 1)),
            service(Service::Rtm).with_channel(ChannelName::parse("room-1").unwrap()),
            "allow rule=capped rtm project=main channel=room-1 id=user:5 role=subscriber ttl=1 join=1 clamped",
        ),
        (
            with_exp(json!(NOW)),
            rtc("room-1"),
            "deny jwt_expires_too_soon rule=capped",
        ),
        (
            with_exp(json!(NOW - 59)),
            rtc("room-1"),
            "deny jwt_expires_too_soon rule=capped",
        ),
        (
            with_exp(json!("soon")),
            rtc("room-1"),
            "deny jwt_expires_too_soon rule=capped",
        ),
        // Without the option the token outlives the JWT, as documented.
        (
            with_exp(json!(NOW - 59)),
            rtc("lobby"),
            "allow rule=uncapped rtc project=main channel=lobby id=uid:5 role=subscriber ttl=3600 join=3600",
        ),
    ];
    for (who, request, expected) in &cases {
        check(&p, who, request, expected);
        if let Decision::Allow(grant) = p.evaluate(who, request, NOW)
            && grant.rule() == "capped"
        {
            let exp = match who.claims.get("exp") {
                Some(ClaimValue::Int(i)) => *i as u64,
                Some(ClaimValue::Float(f)) => *f as u64,
                other => panic!("{other:?}"),
            };
            assert!(grant.expires_at() <= exp, "{expected}");
        }
    }
    for (rule, key) in [
        (
            "actions = [\"fpa\"]\nproject = \"main\"\ncap_to_jwt_expiry = true",
            "cap_to_jwt_expiry",
        ),
        (
            "effect = \"deny\"\nactions = [\"rtc\"]\ncap_to_jwt_expiry = true",
            "cap_to_jwt_expiry",
        ),
    ] {
        let error = load_error(&format!("[[rules]]\nname = \"r\"\n{rule}\n"));
        assert!(
            error.starts_with(&format!("rules[0] (\"r\").{key}: ")),
            "{error}"
        );
    }
}

#[test]
fn claim_bound_rules_reached_by_several_issuers_must_namespace_the_identity() {
    use tokengate::policy::{Issuer, RuleConfig};
    let issuers = [
        Issuer {
            name: "corp".into(),
            iss: vec!["https://corp.example".into()],
        },
        Issuer {
            name: "partner".into(),
            iss: vec!["https://partner.example".into()],
        },
    ];
    let compile = |rule: &str, issuers: &[Issuer]| {
        let text = format!(
            "[[rules]]\nname = \"chat\"\nactions = [\"chat\", \"rtc\"]\nproject = \"main\"\n{rule}\n"
        );
        let config: tokengate::policy::PolicyConfig = toml::from_str(&text).unwrap();
        let rules: Vec<RuleConfig> = config.rules;
        Policy::compile_with_issuers(&rules, &PROJECTS, issuers).map(|(p, _)| p)
    };
    // Refused: both issuers reach a rule that binds the raw subject or a uid claim.
    for rule in [
        "account_claim = \"sub\"",
        "uid_claim = \"agora_uid\"",
        "account_claim = \"email\"",
    ] {
        let error = compile(rule, &issuers).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.starts_with(r#"rules[0] ("chat").issuer: "#),
            "{error}"
        );
        assert!(error.contains("corp, partner"), "{error}");
        assert!(error.contains("identity_prefix"), "{error}");
        // One issuer, or a rule for one issuer, has nothing to collide with.
        assert!(compile(rule, &issuers[..1]).is_ok(), "{rule}");
        let narrowed = format!("{rule}\nissuer = \"https://partner.example\"");
        assert!(compile(&narrowed, &issuers).is_ok(), "{rule}");
        let shared = format!("{rule}\nshared_identity = true");
        assert!(compile(&shared, &issuers).is_ok(), "{rule}");
    }
    // A rule where the caller names the identity binds no claim.
    assert!(compile("caller_chooses_identity = true", &issuers).is_ok());

    // identity_prefix = "issuer_name": "<issuer name>:<sub>", per issuer.
    let p = compile(
        "account_claim = \"sub\"\nidentity_prefix = \"issuer_name\"",
        &issuers,
    )
    .unwrap();
    let corp = caller_of("https://corp.example", "alice", json!({}));
    let partner = caller_of("https://partner.example", "alice", json!({}));
    let chat = service(Service::Chat);
    check(
        &p,
        &corp,
        &chat,
        "allow rule=chat chat project=main channel=- id=user:corp:alice role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &partner,
        &chat,
        "allow rule=chat chat project=main channel=- id=user:partner:alice role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &corp,
        &rtc("x"),
        "allow rule=chat rtc project=main channel=x id=account:corp:alice role=subscriber ttl=3600 join=3600",
    );
    // A renewal of the prefixed account names it in full.
    let mut renewed = rtc("x");
    renewed.identity = RequestedIdentity::Account("corp:alice".into());
    check(
        &p,
        &corp,
        &renewed,
        "allow rule=chat rtc project=main channel=x id=account:corp:alice role=subscriber ttl=3600 join=3600",
    );
    check(
        &p,
        &partner,
        &renewed,
        "deny identity_not_allowed rule=chat",
    );
    let shared = compile("account_claim = \"sub\"\nshared_identity = true", &issuers).unwrap();
    check(
        &shared,
        &partner,
        &chat,
        "allow rule=chat chat project=main channel=- id=user:alice role=subscriber ttl=3600 join=3600",
    );

    // Misuse is refused at load, naming the key.
    let bad_name = [Issuer {
        name: "corp/eu".into(),
        iss: vec!["https://corp.example".into()],
    }];
    for (rule, issuers, key) in [
        (
            "uid_claim = \"agora_uid\"\nidentity_prefix = \"issuer_name\"",
            &issuers[..],
            "identity_prefix",
        ),
        (
            "account_claim = \"sub\"\nidentity_prefix = \"iss\"",
            &issuers[..],
            "identity_prefix",
        ),
        (
            "account_claim = \"sub\"\nidentity_prefix = \"issuer_name\"\nshared_identity = true",
            &issuers[..],
            "shared_identity",
        ),
        (
            "caller_chooses_identity = true\nshared_identity = true",
            &issuers[..],
            "shared_identity",
        ),
        (
            "account_claim = \"sub\"\nidentity_prefix = \"issuer_name\"",
            &[][..],
            "identity_prefix",
        ),
        (
            "account_claim = \"sub\"\nidentity_prefix = \"issuer_name\"",
            &bad_name[..],
            "identity_prefix",
        ),
    ] {
        let error = compile(rule, issuers).map(|_| ()).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("rules[0] (\"chat\").{key}: ")),
            "{rule}: {error}"
        );
    }
}
