//! Property tests: default deny, grants within their rule's limits, and no
//! panic on arbitrary claims, channels or requests.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use proptest::prelude::*;
use tokengate::domain::{ChannelName, ClaimValue, Fingerprint, Principal, Role, Uid};
use tokengate::policy::{
    Action, ChannelScope, Decision, DenyReason, Effect, Grant, Policy, Request, RequestedIdentity,
    RtcGrant, RuleConfig, RuleOutcome, Service,
};

const NOW: u64 = 1_800_000_000;

/// Any claim value: nested objects and arrays, nulls, extreme numbers, odd strings.
fn claim_value() -> impl Strategy<Value = ClaimValue> {
    let leaf = prop_oneof![
        Just(ClaimValue::Null),
        any::<bool>().prop_map(ClaimValue::Bool),
        any::<i64>().prop_map(ClaimValue::Int),
        prop_oneof![Just(u64::MAX), Just(1u64 << 63), any::<u64>()].prop_map(ClaimValue::UInt),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(ClaimValue::Float),
        ".*".prop_map(ClaimValue::String),
        "[\\u{0}-\\u{1f}\\u{7f}\\u{fffd}\\u{10ffff}a{}]{0,8}".prop_map(ClaimValue::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(ClaimValue::Array),
            prop::collection::btree_map("[a-z]{1,3}|teams|uid|status|.*", inner, 0..6)
                .prop_map(ClaimValue::Object),
        ]
    })
}

fn claims() -> impl Strategy<Value = BTreeMap<String, ClaimValue>> {
    prop::collection::btree_map(
        prop_oneof![
            Just("uid".to_owned()),
            Just("teams".to_owned()),
            Just("status".to_owned()),
            Just("nick".to_owned()),
            "[a-z]{1,4}",
            ".*"
        ],
        claim_value(),
        0..8,
    )
}

fn principal(claims: BTreeMap<String, ClaimValue>) -> Principal {
    Principal {
        issuer: "https://idp.example".into(),
        subject: "user-1".into(),
        audiences: vec!["tokengate".into()],
        scopes: vec!["rtc:publish".into()],
        claims,
        expires_at: u64::MAX,
        token_fingerprint: Fingerprint::of(b"jwt"),
    }
}

fn action() -> impl Strategy<Value = Action> {
    prop::sample::select(Action::ALL.to_vec())
}

fn channel() -> impl Strategy<Value = Option<ChannelScope>> {
    prop_oneof![
        Just(None),
        Just(Some(ChannelScope::Wildcard)),
        "[a-z0-9{}()-]{1,63}"
            .prop_map(|c| Some(ChannelScope::Named(ChannelName::parse(&c).unwrap()))),
        "(team|room|webinar)-[a-z]{1,3}-[a-z]{0,3}"
            .prop_map(|c| Some(ChannelScope::Named(ChannelName::parse(&c).unwrap()))),
    ]
}

fn identity() -> impl Strategy<Value = RequestedIdentity> {
    prop_oneof![
        Just(RequestedIdentity::FromJwt),
        Just(RequestedIdentity::AnyUid),
        Just(RequestedIdentity::App),
        (1u32..).prop_map(|u| RequestedIdentity::Uid(Uid::new(u).unwrap())),
        ".{0,70}".prop_map(RequestedIdentity::Account),
    ]
}

fn lifetime() -> impl Strategy<Value = Option<NonZeroU32>> {
    prop_oneof![Just(None), (1u32..200_000).prop_map(NonZeroU32::new)]
}

fn request() -> impl Strategy<Value = Request> {
    (
        action(),
        channel(),
        identity(),
        prop::option::of(prop_oneof![Just(Role::Publisher), Just(Role::Subscriber)]),
        (lifetime(), lifetime(), lifetime()),
        prop::option::of(prop_oneof![
            Just("main".to_owned()),
            Just("eu".to_owned()),
            Just("x".to_owned())
        ]),
        any::<bool>(),
    )
        .prop_map(
            |(action, channel, identity, role, (t, j, p), project, also_rtm)| Request {
                action,
                channel,
                identity,
                role,
                token_lifetime: t,
                join_lifetime: j,
                publish_lifetime: p,
                project,
                also_rtm,
            },
        )
}

const CONDITIONS: [&str; 8] = [
    "captures.team in claims.teams",
    "has(claims.status) && claims.status == 'suspended'",
    "claims.uid > 10",
    "'rtc:publish' in caller.scopes",
    "size(claims) > 2",
    "claims.nick.startsWith('a')",
    "request.role == 'publisher' && now > 0",
    "claims.teams.exists(t, t == channel)",
];

const DURATIONS: [&str; 6] = ["1s", "90s", "10m", "1h", "12h", "24h"];

/// A random rule; the lifetimes are consistent so it always loads.
fn rule(index: usize) -> impl Strategy<Value = RuleConfig> {
    (
        prop::sample::subsequence(
            vec!["rtc", "rtm", "chat", "fpa", "inspect", "explain"],
            1..=3,
        ),
        prop::option::of(prop::sample::select(vec![
            "team-{team}-*",
            "room-{room}",
            "*",
            "webinar-*",
        ])),
        prop::option::of(prop::sample::select(CONDITIONS.to_vec())),
        prop::sample::select(vec!["main", "eu"]),
        prop::sample::select(vec!["publisher", "subscriber"]),
        0usize..3,
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        (
            0usize..6,
            0usize..6,
            prop::option::of(0usize..6),
            prop::option::of(0usize..6),
        ),
        any::<bool>(),
    )
        .prop_map(
            move |(actions, channel, condition, project, max_role, binding, flags, ttls, deny)| {
                let (a, b, c, d) = flags;
                let (default, max, join, publish) = ttls;
                let (default, max) = (default.min(max), default.max(max));
                let mut r = RuleConfig {
                    name: format!("rule {index}"),
                    actions: actions.iter().map(|s| (*s).to_owned()).collect(),
                    channel: channel.map(str::to_owned),
                    condition: condition.map(str::to_owned),
                    ..RuleConfig::default()
                };
                if deny {
                    r.effect = Effect::Deny;
                    return r;
                }
                r.project = Some(project.to_owned());
                r.max_role = Some(max_role.to_owned());
                match binding {
                    0 => r.uid_claim = Some("uid".into()),
                    1 => r.account_claim = Some("nick".into()),
                    _ => r.caller_chooses_identity = true,
                }
                r.allow_wildcard_uid = a;
                r.allow_wildcard_channel = b;
                r.allow_app_token = c;
                r.clamp_ttl = d;
                r.default_ttl = Some(DURATIONS[default].into());
                r.max_ttl = Some(DURATIONS[max].into());
                r.join_ttl = join.map(|i| DURATIONS[i].into());
                r.publish_ttl = publish.map(|i| DURATIONS[i].into());
                r
            },
        )
}

fn rules() -> impl Strategy<Value = Vec<RuleConfig>> {
    (1usize..8).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>())
}

/// Seconds of a duration literal from `DURATIONS`.
fn secs_of(text: &str) -> u32 {
    u32::try_from(humantime::parse_duration(text).unwrap().as_secs()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn an_allow_comes_only_from_a_matching_allow_rule(
        rules in rules(), claims in claims(), request in request()
    ) {
        let (policy, _) = Policy::compile(&rules, &["main", "eu"]).unwrap();
        let (decision, trace) = policy.explain(&principal(claims), &request, NOW);
        if decision.is_allowed() {
            let rule = decision.rule().unwrap();
            let last = trace.rules.last().unwrap();
            let matched = matches!(last.outcome, RuleOutcome::Matched { .. });
            prop_assert!(matched);
            prop_assert_eq!(last.name.as_str(), rule);
            let config = rules.iter().find(|r| r.name == rule).unwrap();
            prop_assert_eq!(config.effect, Effect::Allow);
            prop_assert!(config.actions.iter().any(|a| a == request.action.as_str()));
            // Every earlier rule was considered and did not match.
            let none_before = trace.rules[..trace.rules.len() - 1]
                .iter()
                .all(|r| !matches!(r.outcome, RuleOutcome::Matched { .. }));
            prop_assert!(none_before);
        }
    }

    #[test]
    fn without_an_allow_rule_for_the_action_everything_is_denied(
        rules in rules(), claims in claims(), request in request()
    ) {
        // Keep deny rules and the allow rules for other actions only.
        let kept: Vec<RuleConfig> = rules
            .into_iter()
            .filter(|r| r.effect == Effect::Deny || !r.actions.iter().any(|a| a == request.action.as_str()))
            .collect();
        let (policy, _) = Policy::compile(&kept, &["main", "eu"]).unwrap();
        let decision = policy.evaluate(&principal(claims), &request, NOW);
        prop_assert!(matches!(decision, Decision::Deny(_)), "{decision:?}");
    }

    #[test]
    fn a_grant_never_exceeds_its_rule(
        rules in rules(), claims in claims(), request in request()
    ) {
        let (policy, _) = Policy::compile(&rules, &["main", "eu"]).unwrap();
        let decision = policy.evaluate(&principal(claims), &request, NOW);
        let grant = match decision {
            Decision::Allow(grant) => grant,
            // Inspect and explain issue nothing: a permit, with no project or lifetimes.
            Decision::Permit(_) => {
                prop_assert!(!matches!(request.action, Action::Issue(_)));
                return Ok(());
            }
            Decision::Deny(_) => return Ok(()),
        };
        let rule = rules.iter().find(|r| r.name == grant.rule()).unwrap();
        if request.action == Action::Issue(Service::Rtc) {
            let max_role = Role::parse(rule.max_role.as_deref().unwrap()).unwrap();
            prop_assert!(grant.role() <= max_role);
            prop_assert_eq!(grant.role(), request.role.unwrap_or(Role::Subscriber));
        }
        let terms = grant.terms();
        let max = secs_of(rule.max_ttl.as_deref().unwrap());
        prop_assert!(terms.token_lifetime.secs() <= max);
        let join_max = rule.join_ttl.as_deref().map_or(max, secs_of);
        prop_assert!(terms.join_lifetime.secs() <= join_max);
        if let Grant::Rtc(RtcGrant { publish_lifetime: Some(publish), .. }) = &grant {
            prop_assert!(publish.secs() <= rule.publish_ttl.as_deref().map_or(max, secs_of));
        }
        if !rule.clamp_ttl {
            prop_assert!(!terms.clamped);
            if let Some(t) = request.token_lifetime {
                prop_assert_eq!(terms.token_lifetime.secs(), t.get());
            }
        }
        prop_assert_eq!(terms.issued_at, NOW);
        prop_assert!(matches!(request.action, Action::Issue(_)));
        prop_assert_eq!(Some(grant.project()), rule.project.as_deref());
    }

    #[test]
    fn a_too_long_request_is_denied_unless_the_rule_clamps(ttl in 1u32..200_000, clamp in any::<bool>()) {
        let text = format!(
            "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"\nuid_claim = \"uid\"\nmax_ttl = \"1h\"\nclamp_ttl = {clamp}\n"
        );
        let (policy, _) = Policy::from_toml(&text, &["main"]).unwrap();
        let mut claims = BTreeMap::new();
        claims.insert("uid".to_owned(), ClaimValue::Int(5));
        let mut request = Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse("c").unwrap());
        request.token_lifetime = NonZeroU32::new(ttl);
        let decision = policy.evaluate(&principal(claims), &request, NOW);
        match (ttl <= 3600, clamp) {
            (true, _) => prop_assert_eq!(decision.grant().unwrap().terms().token_lifetime.secs(), ttl),
            (false, true) => prop_assert_eq!(decision.grant().unwrap().terms().token_lifetime.secs(), 3600),
            (false, false) => prop_assert_eq!(decision.deny_reason(), Some(DenyReason::TtlTooLong)),
        }
    }

    #[test]
    fn a_uid_claim_is_bound_exactly_or_refused(value in claim_value()) {
        let text = "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"\nuid_claim = \"uid\"\n";
        let (policy, _) = Policy::from_toml(text, &["main"]).unwrap();
        let mut claims = BTreeMap::new();
        claims.insert("uid".to_owned(), value.clone());
        let request = Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse("c").unwrap());
        let decision = policy.evaluate(&principal(claims), &request, NOW);
        let wanted = match value {
            ClaimValue::Int(i) => u32::try_from(i).ok().filter(|u| *u > 0),
            ClaimValue::UInt(u) => u32::try_from(u).ok().filter(|u| *u > 0),
            _ => None,
        };
        match (wanted, &decision) {
            (Some(uid), Decision::Allow(grant)) => prop_assert_eq!(
                &grant.identity(),
                &tokengate::policy::BoundIdentity::Rtc(tokengate::domain::RtcIdentity::Uid(Uid::new(uid).unwrap()))
            ),
            (None, Decision::Deny(d)) => prop_assert!(matches!(
                d.reason,
                DenyReason::BadIdentityClaim | DenyReason::MissingIdentityClaim
            )),
            _ => prop_assert!(false, "{decision:?}"),
        }
    }

    #[test]
    fn literal_patterns_match_only_themselves(channel in "[a-zA-Z0-9 !#$%&()+:;<=.>?@^_|~,-]{1,63}", other in "[a-z]{1,63}") {
        let text = format!(
            "[[rules]]\nname = \"r\"\nactions = [\"inspect\"]\nchannel = '''{channel}'''\n"
        );
        let (policy, _) = Policy::from_toml(&text, &["main"]).unwrap();
        let who = principal(BTreeMap::new());
        let ask = |c: &str| {
            let mut r = Request::new(Action::Inspect);
            r.channel = Some(ChannelScope::Named(ChannelName::parse(c).unwrap()));
            policy.evaluate(&who, &r, NOW).is_allowed()
        };
        prop_assert!(ask(&channel));
        prop_assert_eq!(ask(&other), other == channel);
    }
}

#[test]
fn absurdly_deep_claims_never_panic_and_never_allow_through_a_condition() {
    let mut deep = ClaimValue::Int(1);
    // Deeper than serde_json (128) lets a JWT be; far deeper would overflow
    // the recursive Drop of the test's own value, not the policy.
    for i in 0..500 {
        deep = if i % 2 == 0 {
            ClaimValue::Array(vec![deep])
        } else {
            ClaimValue::Object(BTreeMap::from([("a".to_owned(), deep)]))
        };
    }
    let text = r#"
[[rules]]
name = "gate"
actions = ["rtc"]
condition = 'true'
project = "main"
uid_claim = "uid"

[[rules]]
name = "suspended"
effect = "deny"
actions = ["rtm"]
condition = '!has(claims.suspended)'
"#;
    let (policy, _) = Policy::from_toml(text, &["main"]).unwrap();
    let mut claims = BTreeMap::new();
    claims.insert("uid".to_owned(), ClaimValue::Int(5));
    claims.insert("deep".to_owned(), deep);
    let who = principal(claims);
    let rtc =
        Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse("c").unwrap());
    let (decision, trace) = policy.explain(&who, &rtc, NOW);
    assert_eq!(
        decision.deny_reason(),
        Some(DenyReason::NoMatchingRule),
        "{trace}"
    );
    assert!(trace.to_string().contains("nest deeper than"), "{trace}");
    let rtm = Request::new(Action::Issue(Service::Rtm));
    assert_eq!(
        policy.evaluate(&who, &rtm, NOW).deny_reason(),
        Some(DenyReason::ConditionError)
    );
}

/// Fragments that stress the CEL parser and interpreter: extreme literals,
/// conversions, macros, regexes, timestamps, every variable.
const FRAGMENTS: [&str; 48] = [
    "claims",
    "caller",
    "request",
    "captures",
    "channel",
    "now",
    "x",
    ".",
    "a",
    "uid",
    "teams",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615u",
    "18446744073709551616u",
    "1e400",
    "-0.0",
    "0x7fffffffffffffff",
    "'str'",
    "b'\\xff'",
    "'\\u0000'",
    "null",
    "true",
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "<",
    "in",
    "&&",
    "||",
    "!",
    "?",
    ":",
    ",",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ".all(x, ",
    ".exists(x, ",
    "has(",
    "size(",
];
const CALLS: [&str; 10] = [
    "int(",
    "uint(",
    "double(",
    "string(",
    "bytes(",
    "timestamp(",
    "duration(",
    "matches(",
    "type(",
    ".startsWith(",
];

fn expression() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(FRAGMENTS.to_vec()),
            1 => prop::sample::select(CALLS.to_vec()),
            1 => prop::sample::select(vec![
                "'9999999999h'", "'-9999999999s'", "'1970-01-01T00:00:00Z'", "'9999-12-31T23:59:59Z'",
                "'(a+)+$'", "'a{1000}{1000}'", "'['", "1e308 * 10.0",
            ]),
        ],
        1..12,
    )
    .prop_map(|parts| parts.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_conditions_load_or_fail_cleanly_and_never_panic(
        condition in expression(), claims in claims(), deny in any::<bool>()
    ) {
        let rule = RuleConfig {
            name: "r".into(),
            effect: if deny { Effect::Deny } else { Effect::Allow },
            actions: vec!["inspect".into()],
            channel: Some("team-{team}-*".into()),
            condition: Some(condition),
            ..RuleConfig::default()
        };
        let Ok((policy, _)) = Policy::compile(&[rule], &["main"]) else { return Ok(()) };
        let mut request = Request::new(Action::Inspect);
        request.channel = Some(ChannelScope::Named(ChannelName::parse("team-a-b").unwrap()));
        let (decision, trace) = policy.explain(&principal(claims), &request, NOW);
        // An allow only ever comes from a condition that said true.
        if decision.is_allowed() {
            prop_assert!(!deny);
            let matched = matches!(trace.rules[0].outcome, RuleOutcome::Matched { .. });
            prop_assert!(matched);
        }
    }
}

/// Well-formed CEL over the policy's variables, with mixed types on purpose
/// so evaluation errors of every kind occur.
fn cel_expression() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "claims.uid",
        "claims.teams",
        "claims.status",
        "claims.nick",
        "claims",
        "caller.scopes",
        "caller.subject",
        "caller.expires_at",
        "request.uid",
        "request.account",
        "request.role",
        "request.token_ttl",
        "captures.team",
        "captures",
        "channel",
        "now",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615u",
        "0u",
        "1e308",
        "-0.0",
        "0.0",
        "'str'",
        "''",
        "b'\\xff'",
        "'\\u0000'",
        "null",
        "true",
        "false",
        "[]",
        "{}",
        "'9999999999h'",
        "'1970-01-01T00:00:00Z'",
        "'9999-12-31T23:59:59Z'",
        "'(a+)+$'",
        "'a{1000}{1000}'",
        "'['",
        "0",
        "1",
        "-1",
    ])
    .prop_map(str::to_owned);
    leaf.prop_recursive(3, 24, 3, |inner| {
        let binary = prop::sample::select(vec![
            "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "in", "&&", "||",
        ]);
        let unary = prop::sample::select(vec![
            "!",
            "-",
            "size",
            "int",
            "uint",
            "double",
            "string",
            "bytes",
            "timestamp",
            "duration",
            "type",
            "dyn",
        ]);
        let method = prop::sample::select(vec!["matches", "startsWith", "endsWith", "contains"]);
        prop_oneof![
            (inner.clone(), binary, inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            (unary, inner.clone()).prop_map(|(f, a)| match f {
                "!" | "-" => format!("{f}({a})"),
                _ => format!("{f}({a})"),
            }),
            (inner.clone(), method, inner.clone()).prop_map(|(a, m, b)| format!("({a}).{m}({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}).all(x, x == {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}).exists(x, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a})[{b}]")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("({a} ? {b} : {c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("[{a}, {b}]")),
            inner.prop_map(|a| format!("{{'k': {a}}}.k")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn well_formed_conditions_never_panic_and_errors_never_allow(
        condition in cel_expression(), claims in claims(), deny in any::<bool>()
    ) {
        let rule = RuleConfig {
            name: "r".into(),
            effect: if deny { Effect::Deny } else { Effect::Allow },
            actions: vec!["inspect".into()],
            channel: Some("team-{team}-*".into()),
            condition: Some(condition),
            ..RuleConfig::default()
        };
        let Ok((policy, _)) = Policy::compile(&[rule], &["main"]) else { return Ok(()) };
        let mut request = Request::new(Action::Inspect);
        request.channel = Some(ChannelScope::Named(ChannelName::parse("team-a-b").unwrap()));
        request.identity = RequestedIdentity::Uid(Uid::new(u32::MAX).unwrap());
        let (decision, trace) = policy.explain(&principal(claims), &request, NOW);
        let outcome = &trace.rules[0].outcome;
        match &decision {
            Decision::Allow(_) | Decision::Permit(_) => {
                let matched = !deny && matches!(outcome, RuleOutcome::Matched { .. });
                prop_assert!(matched, "{trace}");
            }
            Decision::Deny(d) => {
                let consistent = match d.reason {
                    DenyReason::NoMatchingRule => !matches!(outcome, RuleOutcome::Matched { .. }),
                    DenyReason::DeniedByRule => deny,
                    DenyReason::ConditionError => deny && matches!(outcome, RuleOutcome::ConditionFailed { .. }),
                    _ => false,
                };
                prop_assert!(consistent, "{trace}");
            }
        }
    }
}

#[test]
fn known_hazards_of_cel_interpreters_are_errors_not_panics() {
    let hazards = [
        "timestamp('9999-12-31T23:59:59Z') + duration('9999999999h') > timestamp('1970-01-01T00:00:00Z')",
        "timestamp('0001-01-01T00:00:00Z') - duration('1s') < timestamp('1970-01-01T00:00:00Z')",
        "duration('9223372036854775807s') > duration('1s')",
        "duration('-9223372036854775808s') < duration('1s')",
        "int(1e308) > 0",
        "uint(-1.0) > 0u",
        "int('99999999999999999999') > 0",
        "int(18446744073709551615u) > 0",
        "-(-9223372036854775808) > 0",
        "9223372036854775807 * 2 > 0",
        "-9223372036854775808 / -1 > 0",
        "-9223372036854775808 % -1 == 0",
        "1 / 0 == 0",
        "1 % 0 == 0",
        "18446744073709551615u + 1u > 0u",
        "0u - 1u > 0u",
        "'a'.matches('a{1000}{1000}')",
        "'a'.matches('(')",
        "string(b'\\xff') == ''",
        "[1, 2][9223372036854775807] == 1",
        "[1, 2][-1] == 1",
        "{'a': 1}['b'] == 1",
        "claims.uid.size() == 1",
        "size(claims) > -1 && claims.all(k, claims[k] == claims[k])",
        "caller.scopes.exists(s, s.matches(s))",
        "double('nan') == double('nan')",
        "type(claims) == map",
    ];
    let mut claims = BTreeMap::new();
    claims.insert("uid".to_owned(), ClaimValue::UInt(u64::MAX));
    claims.insert("f".to_owned(), ClaimValue::Float(f64::NAN));
    claims.insert("s".to_owned(), ClaimValue::String("\u{0}\u{10ffff}".into()));
    let who = principal(claims);
    for condition in hazards {
        let rule = RuleConfig {
            name: "r".into(),
            actions: vec!["inspect".into()],
            condition: Some(condition.into()),
            ..RuleConfig::default()
        };
        let (policy, _) =
            Policy::compile(&[rule], &["main"]).unwrap_or_else(|e| panic!("{condition}: {e}"));
        let (_, trace) = policy.explain(&who, &Request::new(Action::Inspect), NOW);
        assert_eq!(trace.rules.len(), 1, "{condition}");
    }
}

// ---------------------------------------------------------------------------
// Team names that contain the delimiter: no grant depends on how a channel
// is split, and no team's grant overlaps another's.

/// Patterns with a `{team}` capture, ambiguous and not.
const TEAM_PATTERNS: [&str; 8] = [
    "team-{team}-*",
    "team-{team}:*",
    "team-{team}-{room}",
    "*-{team}",
    "{team}-chat",
    "team-{team}",
    "{team}{room}",
    "{room}.{team}",
];

/// RTM 2 resources built from `{team}`; the ambiguous ones must not load.
const TEAM_RESOURCES: [&str; 5] = [
    "team-{team}-*",
    "team-{team}",
    "{team}-chat",
    "{team}*",
    "team-{team}-{room}",
];

/// A team name that often contains `-`, `:` or `.`.
fn team_name() -> impl Strategy<Value = String> {
    "[ab]([-:.][ab]){0,2}"
}

/// A channel built to hit the patterns above.
fn team_channel() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["team-", "", "x.", "team-a-"]),
        team_name(),
        prop::sample::select(vec!["-", ":", ".", "-chat", ""]),
        "[ab]{0,2}([-:.][ab]){0,2}",
    )
        .prop_map(|(prefix, name, sep, tail)| format!("{prefix}{name}{sep}{tail}"))
}

/// Every value `{team}` takes over every split of `channel` by `pattern`:
/// a brute-force oracle, independent of the matcher under test.
fn owners(pattern: &str, channel: &str) -> std::collections::BTreeSet<String> {
    enum Tok {
        Lit(u8),
        Star,
        Cap(&'static str),
    }
    let mut toks = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{team}") {
            toks.push(Tok::Cap("team"));
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{room}") {
            toks.push(Tok::Cap("room"));
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            toks.push(Tok::Star);
            rest = r;
        } else {
            toks.push(Tok::Lit(rest.as_bytes()[0]));
            rest = &rest[1..];
        }
    }
    fn walk(
        toks: &[Tok],
        s: &[u8],
        team: Option<&[u8]>,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match toks.split_first() {
            None => {
                if s.is_empty()
                    && let Some(t) = team
                {
                    out.insert(String::from_utf8(t.to_vec()).unwrap());
                }
            }
            Some((Tok::Lit(c), rest)) => {
                if s.first() == Some(c) {
                    walk(rest, &s[1..], team, out);
                }
            }
            Some((Tok::Star, rest)) => {
                for end in 0..=s.len() {
                    walk(rest, &s[end..], team, out);
                }
            }
            Some((Tok::Cap(name), rest)) => {
                for end in 1..=s.len() {
                    let team = if *name == "team" {
                        Some(&s[..end])
                    } else {
                        team
                    };
                    walk(rest, &s[end..], team, out);
                }
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(&toks, channel.as_bytes(), None, &mut out);
    out
}

/// Whether `pattern`, with `*` as RTM's wildcard, covers the text `text`.
fn covers(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => text.strip_prefix(head).is_some_and(|rest| {
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && covers(tail, &rest[i..]))
        }),
    }
}

fn member(team: &str) -> Principal {
    let mut claims = BTreeMap::new();
    claims.insert("uid".to_owned(), ClaimValue::Int(7));
    claims.insert(
        "teams".to_owned(),
        ClaimValue::Array(vec![ClaimValue::String(team.to_owned())]),
    );
    principal(claims)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn a_team_member_is_never_granted_another_teams_channel_or_resources(
        pattern in prop::sample::select(TEAM_PATTERNS.to_vec()),
        resource in prop::sample::select(TEAM_RESOURCES.to_vec()),
        t1 in team_name(),
        t2 in team_name(),
        c1 in team_channel(),
        c2 in team_channel(),
    ) {
        prop_assume!(t1 != t2);
        let rule = RuleConfig {
            name: "team rooms".into(),
            actions: vec!["rtc".into(), "rtm".into()],
            channel: Some(pattern.into()),
            condition: Some("captures.team in claims.teams".into()),
            project: Some("main".into()),
            uid_claim: Some("uid".into()),
            rtm_permissions: vec![tokengate::policy::Rtm2PermissionConfig {
                resource_type: "message_channels".into(),
                access: "read".into(),
                resources: vec![resource.into()],
            }],
            ..RuleConfig::default()
        };
        // A resource that could cover another team's is refused at load.
        let Ok((policy, _)) = Policy::compile(&[rule], &["main"]) else {
            prop_assert!(resource.contains('*') || resource.contains("{room}"), "{resource}");
            return Ok(());
        };
        let channels: Vec<ChannelName> =
            [&c1, &c2].iter().filter_map(|c| ChannelName::parse(c).ok()).collect();
        // An RTC or RTM grant for a channel goes to a team that owns it
        // however the channel is split: never to one of two possible owners.
        for team in [&t1, &t2] {
            for channel in &channels {
                for service in [Service::Rtc, Service::Rtm] {
                    let request = Request::new(Action::Issue(service)).with_channel(channel.clone());
                    if policy.evaluate(&member(team), &request, NOW).is_allowed() {
                        let owners = owners(pattern, channel.as_str());
                        prop_assert_eq!(
                            owners.iter().collect::<Vec<_>>(),
                            vec![team],
                            "{} granted to {:?} by {}", channel, team, pattern
                        );
                    }
                }
            }
        }
        // The RTM 2 resources two teams' members get never overlap.
        let resources = |team: &str| -> Vec<String> {
            channels
                .iter()
                .filter_map(|c| {
                    let request = Request::new(Action::Issue(Service::Rtm)).with_channel(c.clone());
                    match policy.evaluate(&member(team), &request, NOW) {
                        Decision::Allow(Grant::Rtm(g)) => Some(g.permissions[0].resources.clone()),
                        _ => None,
                    }
                })
                .flatten()
                .collect()
        };
        for a in resources(&t1) {
            for b in resources(&t2) {
                prop_assert!(
                    !covers(&a, &b) && !covers(&b, &a),
                    "{:?} of team {:?} and {:?} of team {:?} overlap ({} / {})", a, t1, b, t2, pattern, resource
                );
            }
        }
    }
}

#[test]
fn the_team_oracle_and_coverage_work() {
    let owners = |p: &str, c: &str| owners(p, c).into_iter().collect::<Vec<_>>();
    assert_eq!(owners("team-{team}-*", "team-a-b-x"), ["a", "a-b"]);
    assert_eq!(owners("team-{team}", "team-a-b"), ["a-b"]);
    assert!(owners("team-{team}", "lobby").is_empty());
    assert!(covers("team-a-*", "team-a-b-x"));
    assert!(covers("team-a-*", "team-a-b-*"));
    assert!(!covers("team-a-b-*", "team-a-x"));
    assert!(covers("a", "a") && !covers("a", "b"));
}
