//! Loads `deploy/examples/policy.toml`, with the facts that
//! `deploy/examples/tokengate.toml` declares, and checks each scenario it
//! teaches; the webinar rules' facts are given as data here (as the
//! pipeline hands them over), and `facts_example.rs` runs the same rules
//! against a real PostgreSQL loaded with `deploy/examples/facts-schema.sql`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use serde_json::json;
use tokengate::domain::{
    Account, ChannelName, ClaimValue, Fingerprint, PeerIdentity, Principal, Role, RtcIdentity, Uid,
};
use tokengate::policy::{
    Action, BoundIdentity, Caller, Decision, DenyReason, Facts, Fetched, Grant, Peer, Policy,
    Request, RequestedIdentity, Service,
};

const NOW: u64 = 1_800_000_000;
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/policy.toml");
const LOGIN: &str = "https://login.example.com";
const BACKEND: &str = "https://backend-auth.example.com";

/// The example's rules, compiled with the facts the example config declares.
fn example() -> Policy {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let config: tokengate::policy::PolicyConfig = toml::from_str(&text).unwrap();
    let declared = example_config().facts().declarations();
    let (policy, warnings) =
        Policy::compile_with_facts(&config.rules, &["main", "events"], &[], declared).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    policy
}

/// `deploy/examples/tokengate.toml`, loaded with dummy secrets.
fn example_config() -> tokengate::config::Config {
    let path = std::path::Path::new(EXAMPLE).with_file_name("tokengate.toml");
    let env = |name: &str| match name {
        "TOKENGATE_DB_PASSWORD" => Some("dummy".to_owned()),
        _ if name.starts_with("AGORA_") => Some("5CFd2fd1755d40ecb72977518be15d3b".to_owned()),
        _ => None,
    };
    tokengate::config::load_file(&path, &env).unwrap()
}

/// Evaluates `request` with the facts the rules ask for, each answered from
/// `rows` (fact name to its rows for this caller and event; none: no rows).
fn with_facts(
    p: &Policy,
    who: &Principal,
    request: &Request,
    rows: &[(&str, serde_json::Value)],
) -> Decision {
    let mut facts = Facts::none();
    for query in p.facts_needed(who, request) {
        let value = rows
            .iter()
            .find(|(name, _)| *name == &*query.name)
            .map_or(ClaimValue::Array(vec![]), |(_, v)| to_claim(v));
        facts.insert(
            query,
            Fetched {
                value: Ok(std::sync::Arc::new(value)),
                cached: false,
                elapsed_us: 0,
            },
        );
    }
    p.evaluate_with_facts(who, request, NOW, &facts)
}

fn to_claim(value: &serde_json::Value) -> ClaimValue {
    match value {
        serde_json::Value::Null => ClaimValue::Null,
        serde_json::Value::Bool(b) => ClaimValue::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| ClaimValue::Float(n.as_f64().unwrap()), ClaimValue::Int),
        serde_json::Value::String(s) => ClaimValue::String(s.clone()),
        serde_json::Value::Array(a) => ClaimValue::Array(a.iter().map(to_claim).collect()),
        serde_json::Value::Object(o) => {
            ClaimValue::Object(o.iter().map(|(k, v)| (k.clone(), to_claim(v))).collect())
        }
    }
}

fn person(issuer: &str, subject: &str, scopes: &[&str], claims: serde_json::Value) -> Principal {
    let claims: BTreeMap<String, ClaimValue> = match &claims {
        serde_json::Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), to_claim(v))).collect(),
        _ => BTreeMap::new(),
    };
    Principal {
        issuer: issuer.into(),
        subject: subject.into(),
        audiences: vec!["tokengate".into()],
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        claims,
        expires_at: NOW + 300,
        token_fingerprint: Fingerprint::of(subject.as_bytes()),
    }
}

fn rtc(channel: &str, role: Role) -> Request {
    let mut r = Request::new(Action::Issue(Service::Rtc))
        .with_channel(ChannelName::parse(channel).unwrap());
    r.role = Some(role);
    r
}

fn allowed(decision: Decision, rule: &str) -> Grant {
    match decision {
        Decision::Allow(grant) => {
            assert_eq!(grant.rule(), rule);
            grant
        }
        Decision::Permit(p) => panic!("expected a grant by {rule:?}, got a permit by {:?}", p.rule),
        Decision::Deny(d) => panic!("expected an allow by {rule:?}, got {d}"),
    }
}

/// An allowed inspect or explain, which issues nothing.
fn permitted(decision: Decision, rule: &str) {
    match decision {
        Decision::Permit(p) => assert_eq!(p.rule, rule),
        other => panic!("expected a permit by {rule:?}, got {other:?}"),
    }
}

/// The publish lifetime of an RTC grant, in seconds.
fn publish_secs(grant: &Grant) -> Option<u32> {
    match grant {
        Grant::Rtc(rtc) => rtc.publish_lifetime.map(|l| l.secs()),
        other => panic!("expected an rtc grant, got {other:?}"),
    }
}

fn denied(decision: Decision, reason: DenyReason, rule: Option<&str>) {
    match decision {
        Decision::Deny(d) => {
            assert_eq!((d.reason, d.rule.as_deref()), (reason, rule), "{d}");
        }
        other => panic!("expected {reason}, got an allow by {:?}", other.rule()),
    }
}

#[test]
fn team_members_publish_in_their_team_rooms() {
    let p = example();
    let alice = person(
        LOGIN,
        "alice",
        &[],
        json!({"agora_uid": 1001, "teams": ["blue", "green"]}),
    );
    let grant = allowed(
        p.evaluate(&alice, &rtc("team-blue", Role::Publisher), NOW),
        "team rooms",
    );
    assert_eq!(
        grant.identity(),
        BoundIdentity::Rtc(RtcIdentity::Uid(Uid::new(1001).unwrap()))
    );
    assert_eq!(grant.project(), "main");
    assert_eq!(publish_secs(&grant), Some(3600));
    denied(
        p.evaluate(&alice, &rtc("team-red", Role::Subscriber), NOW),
        DenyReason::NoMatchingRule,
        None,
    );

    // A 12h request is clamped to the rule's 8h.
    let mut long = rtc("team-green", Role::Subscriber);
    long.token_lifetime = NonZeroU32::new(12 * 3600);
    let grant = allowed(p.evaluate(&alice, &long, NOW), "team rooms");
    assert_eq!(
        (grant.terms().token_lifetime.secs(), grant.terms().clamped),
        (8 * 3600, true)
    );

    // RTM for the same team carries the permission sets with the team substituted.
    let rtm = Request::new(Action::Issue(Service::Rtm))
        .with_channel(ChannelName::parse("team-blue").unwrap());
    let grant = allowed(p.evaluate(&alice, &rtm, NOW), "team rooms");
    let Grant::Rtm(rtm) = &grant else {
        panic!("expected an rtm grant, got {grant:?}")
    };
    let perms: Vec<(&str, &str, Vec<String>)> = rtm
        .permissions
        .iter()
        .map(|p| {
            (
                p.resource_type.as_str(),
                p.access.as_str(),
                p.resources.clone(),
            )
        })
        .collect();
    assert_eq!(
        perms,
        [
            ("message_channels", "read", vec!["team-blue".to_owned()]),
            (
                "message_channels",
                "write",
                vec!["team-blue-chat".to_owned()]
            ),
        ]
    );

    // A uid claim past u32 is refused, not truncated to the wildcard.
    let broken = person(
        LOGIN,
        "bob",
        &[],
        json!({"agora_uid": 4_294_967_296u64, "teams": ["blue"]}),
    );
    denied(
        p.evaluate(&broken, &rtc("team-blue", Role::Subscriber), NOW),
        DenyReason::BadIdentityClaim,
        Some("team rooms"),
    );

    // Teams whose names share a prefix: each member gets their own team's
    // room and channels only, never the other's.
    let data = person(
        LOGIN,
        "dana",
        &[],
        json!({"agora_uid": 7, "teams": ["data"]}),
    );
    let eng = person(
        LOGIN,
        "eve",
        &[],
        json!({"agora_uid": 8, "teams": ["data-eng"]}),
    );
    allowed(
        p.evaluate(&data, &rtc("team-data", Role::Publisher), NOW),
        "team rooms",
    );
    allowed(
        p.evaluate(&eng, &rtc("team-data-eng", Role::Publisher), NOW),
        "team rooms",
    );
    denied(
        p.evaluate(&data, &rtc("team-data-eng", Role::Subscriber), NOW),
        DenyReason::NoMatchingRule,
        None,
    );
    denied(
        p.evaluate(&eng, &rtc("team-data", Role::Subscriber), NOW),
        DenyReason::NoMatchingRule,
        None,
    );
}

#[test]
fn webinar_hosts_publish_and_attendees_watch() {
    let p = example();
    let host = person(LOGIN, "host-7", &[], json!({}));
    let attendee = person(LOGIN, "guest-9", &[], json!({}));
    let stranger = person(LOGIN, "nobody", &[], json!({}));
    let hosting = [("event_hosts", json!([{"user_id": "host-7"}]))];
    let ticket = [("tickets", json!([{"tier": "standard"}]))];
    let launch = |role| rtc("webinar-launch", role);

    // The facts are asked for this event and this caller, and only those.
    let needed = p.facts_needed(&attendee, &launch(Role::Subscriber));
    let needed: Vec<(&str, Vec<&str>)> = needed
        .iter()
        .map(|q| (&*q.name, q.inputs.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        needed,
        vec![
            ("event_hosts", vec!["launch", "guest-9"]),
            ("tickets", vec!["launch", "guest-9"]),
        ]
    );
    // Not for a team room: no rule that reads them can decide it.
    assert!(
        p.facts_needed(&attendee, &rtc("team-blue", Role::Subscriber))
            .is_empty()
    );

    let grant = allowed(
        with_facts(&p, &host, &launch(Role::Publisher), &hosting),
        "webinar hosts",
    );
    assert_eq!(
        grant.identity(),
        BoundIdentity::Rtc(RtcIdentity::Account(Account::parse("host-7").unwrap()))
    );
    assert_eq!(grant.project(), "events");
    assert_eq!(grant.terms().token_lifetime.secs(), 7200);
    assert_eq!(publish_secs(&grant), Some(3 * 3600));

    let grant = allowed(
        with_facts(&p, &attendee, &launch(Role::Subscriber), &ticket),
        "webinar attendees",
    );
    assert_eq!(grant.role(), Role::Subscriber);
    assert_eq!(publish_secs(&grant), None);
    denied(
        with_facts(&p, &attendee, &launch(Role::Publisher), &ticket),
        DenyReason::RoleNotAllowed,
        Some("webinar attendees"),
    );
    // A refunded ticket is no ticket.
    denied(
        with_facts(
            &p,
            &attendee,
            &launch(Role::Subscriber),
            &[("tickets", json!([{"tier": "refunded"}]))],
        ),
        DenyReason::NoMatchingRule,
        None,
    );
    denied(
        with_facts(&p, &stranger, &launch(Role::Subscriber), &[]),
        DenyReason::NoMatchingRule,
        None,
    );
    // Claims no longer make a host or an attendee: the facts do.
    let claimed = person(
        LOGIN,
        "nobody",
        &[],
        json!({"hosting": ["launch"], "tickets": ["launch"]}),
    );
    denied(
        with_facts(&p, &claimed, &launch(Role::Subscriber), &[]),
        DenyReason::NoMatchingRule,
        None,
    );
    let mut too_long = launch(Role::Subscriber);
    too_long.token_lifetime = NonZeroU32::new(5 * 3600);
    denied(
        with_facts(&p, &attendee, &too_long, &ticket),
        DenyReason::TtlTooLong,
        Some("webinar attendees"),
    );
    // The database down: the rules fail closed, naming the fact.
    let down = p.facts_needed(&attendee, &launch(Role::Subscriber));
    let mut facts = Facts::none();
    for query in down {
        facts.insert(
            query,
            Fetched {
                value: Err("timed out after 250ms".to_owned()),
                cached: false,
                elapsed_us: 250_000,
            },
        );
    }
    match p.evaluate_with_facts(&attendee, &launch(Role::Subscriber), NOW, &facts) {
        Decision::Deny(d) => {
            assert_eq!(d.reason, DenyReason::FactUnavailable, "{d}");
            assert_eq!(d.rule.as_deref(), Some("webinar hosts"));
            assert_eq!(d.fact.as_deref(), Some("event_hosts"));
        }
        other => panic!("expected fact_unavailable, got {other:?}"),
    }
}

#[test]
fn the_backend_chooses_identities_for_its_users() {
    let p = example();
    let backend = person(BACKEND, "svc-matchmaker", &["tokens:mint"], json!({}));
    let mut for_user = rtc("team-blue", Role::Publisher);
    for_user.identity = RequestedIdentity::Uid(Uid::new(555).unwrap());
    let grant = allowed(
        p.evaluate(&backend, &for_user, NOW),
        "backend acts for users",
    );
    assert_eq!(
        grant.identity(),
        BoundIdentity::Rtc(RtcIdentity::Uid(Uid::new(555).unwrap()))
    );

    let mut chat = Request::new(Action::Issue(Service::Chat));
    chat.identity = RequestedIdentity::Account("user-555".into());
    allowed(p.evaluate(&backend, &chat, NOW), "backend acts for users");

    // Not uid 0, not an app token, not without naming a user, not without the scope.
    for identity in [
        RequestedIdentity::AnyUid,
        RequestedIdentity::App,
        RequestedIdentity::FromJwt,
    ] {
        let mut r = rtc("any", Role::Subscriber);
        r.identity = identity;
        denied(
            p.evaluate(&backend, &r, NOW),
            DenyReason::NoMatchingRule,
            None,
        );
    }
    let unscoped = person(BACKEND, "svc-other", &[], json!({}));
    denied(
        p.evaluate(&unscoped, &for_user, NOW),
        DenyReason::NoMatchingRule,
        None,
    );
}

#[test]
fn the_support_backend_mints_by_its_mesh_identity() {
    let p = example();
    let workload = |spiffe_id: &str| Peer {
        address: Some("10.0.3.4".into()),
        workload: Some(PeerIdentity {
            spiffe_id: Some(spiffe_id.to_owned()),
            ..PeerIdentity::default()
        }),
    };
    let support = workload("spiffe://corp.example/ns/support/sa/support-api");
    let mut for_user = rtc("support-1234", Role::Subscriber);
    for_user.identity = RequestedIdentity::Uid(Uid::new(555).unwrap());
    let no_jwt = |peer| Caller {
        principal: None,
        peer,
    };
    let grant = allowed(
        p.evaluate(no_jwt(&support), &for_user, NOW),
        "support backend by mesh identity",
    );
    assert_eq!(
        grant.identity(),
        BoundIdentity::Rtc(RtcIdentity::Uid(Uid::new(555).unwrap()))
    );
    // Another namespace's workload: no. The denial names the first rule the
    // request fits but for authentication: the JWT backend's rule.
    let billing = workload("spiffe://corp.example/ns/billing/sa/support-api");
    denied(
        p.evaluate(no_jwt(&billing), &for_user, NOW),
        DenyReason::AuthenticationNotAccepted,
        Some("backend acts for users"),
    );
    // A user's JWT, without the workload: no.
    let user = person(LOGIN, "alice", &[], json!({"agora_uid": 555}));
    denied(
        p.evaluate(&user, &for_user, NOW),
        DenyReason::AuthenticationNotAccepted,
        Some("support backend by mesh identity"),
    );
    // The workload reaches no rule meant for JWT callers.
    let (decision, trace) = p.explain(no_jwt(&support), &rtc("team-blue", Role::Subscriber), NOW);
    denied(
        decision,
        DenyReason::AuthenticationNotAccepted,
        Some("backend acts for users"),
    );
    let team = trace.rules.iter().find(|r| r.name == "team rooms").unwrap();
    assert_eq!(
        team.outcome.to_string(),
        "authentication_not_accepted: the rule needs authenticate = \"jwt\" and the caller authenticated by mtls"
    );
}

#[test]
fn suspended_users_are_denied_before_anything_else() {
    let p = example();
    let suspended = person(
        LOGIN,
        "carol",
        &[],
        json!({"agora_uid": 3, "teams": ["blue"], "status": "suspended"}),
    );
    denied(
        p.evaluate(&suspended, &rtc("team-blue", Role::Subscriber), NOW),
        DenyReason::DeniedByRule,
        Some("suspended users"),
    );
    denied(
        p.evaluate(&suspended, &Request::new(Action::Issue(Service::Chat)), NOW),
        DenyReason::DeniedByRule,
        Some("suspended users"),
    );
    let active = person(
        LOGIN,
        "carol",
        &[],
        json!({"agora_uid": 3, "teams": ["blue"], "status": "active"}),
    );
    allowed(
        p.evaluate(&active, &rtc("team-blue", Role::Subscriber), NOW),
        "team rooms",
    );
    let grant = allowed(
        p.evaluate(&active, &Request::new(Action::Issue(Service::Chat)), NOW),
        "chat users",
    );
    assert_eq!(grant.terms().token_lifetime.secs(), 12 * 3600);
}

#[test]
fn only_engineers_inspect_and_explain() {
    let p = example();
    let engineer = person(LOGIN, "eve", &["tokengate:debug"], json!({}));
    let user = person(LOGIN, "dan", &[], json!({}));
    for action in [Action::Inspect, Action::Explain] {
        permitted(
            p.evaluate(&engineer, &Request::new(action), NOW),
            "engineers debug",
        );
        denied(
            p.evaluate(&user, &Request::new(action), NOW),
            DenyReason::NoMatchingRule,
            None,
        );
    }
    let (_, trace) = p.explain(&user, &Request::new(Action::Inspect), NOW);
    assert_eq!(trace.rules.len(), p.len());
}
