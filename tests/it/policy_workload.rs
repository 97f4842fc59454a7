//! Workload identity in the rules, pure policy: `peer_spiffe_id` patterns
//! and their captures, `authenticate` (`jwt`, `mtls`, `jwt+mtls`) for each
//! kind of caller, `peer.*` in CEL, deny rules for every caller, traces, and
//! the load errors that name the rule and the key.

use std::collections::BTreeMap;

use tokengate::domain::{ChannelName, ClaimValue, Fingerprint, PeerIdentity, Principal, Uid};
use tokengate::policy::{
    Action, Caller, Decision, Peer, Policy, PolicyError, PolicyWarning, Request, RequestedIdentity,
    RuleOutcome, Service,
};

const NOW: u64 = 1_800_000_000;
const BACKEND: &str = "spiffe://corp.example/ns/backend/sa/api";
const BILLING: &str = "spiffe://corp.example/ns/billing/sa/worker";

fn policy(text: &str) -> Policy {
    let (policy, warnings) = Policy::from_toml(text, &["main"]).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    policy
}

fn principal() -> Principal {
    let mut claims = BTreeMap::new();
    claims.insert("sub".to_owned(), ClaimValue::String("alice".into()));
    claims.insert("agora_uid".to_owned(), ClaimValue::Int(7));
    Principal {
        issuer: "https://idp.example".into(),
        subject: "alice".into(),
        audiences: vec!["tokengate".into()],
        scopes: vec![],
        claims,
        expires_at: NOW + 600,
        token_fingerprint: Fingerprint::of(b"jwt"),
    }
}

/// A peer with a verified workload `spiffe_id` (and one DNS name) at 10.0.0.7.
fn workload(spiffe_id: &str) -> Peer {
    Peer {
        address: Some("10.0.0.7".into()),
        workload: Some(PeerIdentity {
            spiffe_id: Some(spiffe_id.to_owned()),
            dns_names: vec!["api.backend.svc".into()],
            subject: None,
        }),
    }
}

fn rtc(channel: &str) -> Request {
    Request::new(Action::Issue(Service::Rtc)).with_channel(ChannelName::parse(channel).unwrap())
}

fn rtc_for(channel: &str, uid: u32) -> Request {
    let mut request = rtc(channel);
    request.identity = RequestedIdentity::Uid(Uid::new(uid).unwrap());
    request
}

/// `allow <rule> <identity>` or `deny <reason> <rule>`, also checking that
/// evaluate and explain agree.
fn decide(p: &Policy, caller: Caller<'_>, request: &Request) -> String {
    let decision = p.evaluate(caller, request, NOW);
    let (explained, _) = p.explain(caller, request, NOW);
    assert_eq!(explained, decision);
    match decision {
        Decision::Allow(grant) => format!("allow {} {:?}", grant.rule(), grant.identity()),
        Decision::Permit(permit) => format!("permit {}", permit.rule),
        Decision::Deny(denial) => format!(
            "deny {} {}",
            denial.reason.as_str(),
            denial.rule.as_deref().unwrap_or("-")
        ),
    }
}

const MESH: &str = r#"
[[rules]]
name = "no strangers"
effect = "deny"
actions = ["rtc"]
channel = "secret-*"

[[rules]]
name = "backends mint for their users"
actions = ["rtc"]
channel = "ns-{room}"
peer_spiffe_id = "spiffe://corp.example/ns/{ns}/sa/api"
authenticate = "mtls"
condition = 'captures.ns == "backend" && peer.address == "10.0.0.7" && "api.backend.svc" in peer.dns_names'
project = "main"
caller_chooses_identity = true

[[rules]]
name = "users with a client certificate"
actions = ["rtc"]
channel = "both-*"
authenticate = "jwt+mtls"
condition = 'peer.spiffe_id.startsWith("spiffe://corp.example/") && request.authenticated_by == "jwt+mtls"'
project = "main"
uid_claim = "agora_uid"

[[rules]]
name = "users"
actions = ["rtc"]
channel = "room-*"
project = "main"
uid_claim = "agora_uid"
"#;

#[test]
fn each_kind_of_caller_reaches_only_the_rules_that_accept_it() {
    let p = policy(MESH);
    let user = principal();
    let backend = workload(BACKEND);
    let billing = workload(BILLING);
    let other_api = workload("spiffe://corp.example/ns/other/sa/api");
    let no_peer = Peer::default();
    let jwt = Caller::jwt(&user);
    let mtls = |peer| Caller {
        principal: None,
        peer,
    };
    let both = |peer| Caller {
        principal: Some(&user),
        peer,
    };
    let cases: Vec<(Caller<'_>, Request, &str)> = vec![
        // The workload names the user; its SPIFFE ID's capture reaches the condition.
        (
            mtls(&backend),
            rtc_for("ns-1", 42),
            "allow backends mint for their users Rtc(Uid(Uid(42)))",
        ),
        // Another workload's SPIFFE ID does not fit the pattern; a third
        // fits it, and its capture fails the condition.
        (
            mtls(&billing),
            rtc_for("ns-1", 42),
            "deny no_matching_rule -",
        ),
        (
            mtls(&other_api),
            rtc_for("ns-1", 42),
            "deny no_matching_rule -",
        ),
        // A workload must name the user: nothing binds it from a JWT.
        (
            mtls(&backend),
            rtc("ns-1"),
            "deny identity_required backends mint for their users",
        ),
        // A workload never reaches a jwt rule: the denial says why.
        (
            mtls(&backend),
            rtc("room-1"),
            "deny authentication_not_accepted users",
        ),
        (
            mtls(&backend),
            rtc("both-1"),
            "deny authentication_not_accepted users with a client certificate",
        ),
        // A JWT caller never matches an mtls rule, even naming the user.
        (
            jwt,
            rtc_for("ns-1", 42),
            "deny authentication_not_accepted backends mint for their users",
        ),
        (jwt, rtc("room-1"), "allow users Rtc(Uid(Uid(7)))"),
        // jwt+mtls needs both.
        (
            jwt,
            rtc("both-1"),
            "deny authentication_not_accepted users with a client certificate",
        ),
        (
            both(&backend),
            rtc("both-1"),
            "allow users with a client certificate Rtc(Uid(Uid(7)))",
        ),
        // A JWT caller over mTLS also reaches jwt and mtls rules.
        (
            both(&backend),
            rtc("room-1"),
            "allow users Rtc(Uid(Uid(7)))",
        ),
        (
            both(&backend),
            rtc_for("ns-1", 42),
            "allow backends mint for their users Rtc(Uid(Uid(42)))",
        ),
        // Deny rules hold for every caller.
        (
            mtls(&backend),
            rtc("secret-1"),
            "deny denied_by_rule no strangers",
        ),
        (jwt, rtc("secret-1"), "deny denied_by_rule no strangers"),
        (
            both(&backend),
            rtc("secret-1"),
            "deny denied_by_rule no strangers",
        ),
        // No JWT and no workload: nothing but deny rules applies.
        (
            mtls(&no_peer),
            rtc("room-1"),
            "deny authentication_not_accepted users",
        ),
    ];
    for (caller, request, expected) in &cases {
        assert_eq!(
            decide(&p, *caller, request),
            *expected,
            "{caller:?} {request:?}"
        );
    }
    assert!(p.admits_workloads());
    assert!(
        !policy(&MESH.replace("authenticate = \"mtls\"", "authenticate = \"jwt+mtls\""))
            .admits_workloads()
    );
}

#[test]
fn peer_captures_are_usable_wherever_channel_captures_are() {
    let p = policy(
        r#"
[[rules]]
name = "service inboxes"
actions = ["rtm"]
channel = "inbox-{room}"
peer_spiffe_id = "spiffe://{td}/ns/{ns}/sa/*"
authenticate = "mtls"
condition = 'captures.td == "corp.example"'
project = "main"
caller_chooses_identity = true
rtm_permissions = [
  { resource_type = "message_channels", access = "write", resources = ["{ns}-inbox", "room-{room}"] },
]
"#,
    );
    let backend = workload(BACKEND);
    let caller = Caller {
        principal: None,
        peer: &backend,
    };
    let mut request = Request::new(Action::Issue(Service::Rtm))
        .with_channel(ChannelName::parse("inbox-7").unwrap());
    request.identity = RequestedIdentity::Account("svc-user".into());
    let decision = p.evaluate(caller, &request, NOW);
    let Some(tokengate::policy::Grant::Rtm(grant)) = decision.grant() else {
        panic!("{decision:?}");
    };
    assert_eq!(grant.permissions[0].resources, ["backend-inbox", "room-7"]);
    // The trace shows both patterns' captures, channel first.
    let (_, trace) = p.explain(caller, &request, NOW);
    assert_eq!(
        trace.rules[0].outcome,
        RuleOutcome::Matched {
            captures: vec![
                ("room".into(), "7".into()),
                ("td".into(), "corp.example".into()),
                ("ns".into(), "backend".into()),
            ]
        }
    );
    let other = workload("spiffe://other.example/ns/backend/sa/api");
    let (decision, trace) = p.explain(
        Caller {
            principal: None,
            peer: &other,
        },
        &request,
        NOW,
    );
    assert_eq!(
        decision.deny_reason().map(|r| r.as_str()),
        Some("no_matching_rule")
    );
    assert!(matches!(
        trace.rules[0].outcome,
        RuleOutcome::ConditionFalse { .. }
    ));
}

#[test]
fn traces_say_why_a_peer_did_not_match() {
    let p = policy(
        r#"
[[rules]]
name = "backend"
actions = ["explain"]
peer_spiffe_id = "spiffe://corp.example/ns/backend/sa/*"
authenticate = "jwt+mtls"
"#,
    );
    let user = principal();
    let billing = workload(BILLING);
    let no_spiffe = Peer {
        address: None,
        workload: Some(PeerIdentity {
            spiffe_id: None,
            dns_names: vec!["x.svc".into()],
            subject: Some("CN=x".into()),
        }),
    };
    let request = Request::new(Action::Explain);
    let outcome = |peer: &Peer| {
        let (_, trace) = p.explain(
            Caller {
                principal: Some(&user),
                peer,
            },
            &request,
            NOW,
        );
        trace.rules[0].outcome.to_string()
    };
    assert_eq!(
        outcome(&billing),
        "caller's SPIFFE ID does not match \"spiffe://corp.example/ns/backend/sa/*\""
    );
    assert_eq!(outcome(&no_spiffe), "caller has no verified SPIFFE ID");
    assert_eq!(
        outcome(&Peer::default()),
        "authentication_not_accepted: the rule needs authenticate = \"jwt+mtls\" and the caller authenticated by jwt"
    );
}

#[test]
fn cel_sees_peer_with_empty_values_for_what_is_not_verified() {
    let p = policy(
        r#"
[[rules]]
name = "plain"
actions = ["explain"]
condition = 'peer.spiffe_id == "" && size(peer.dns_names) == 0 && peer.address == "" && request.authenticated_by == "jwt"'
"#,
    );
    let user = principal();
    let request = Request::new(Action::Explain);
    assert!(p.evaluate(&user, &request, NOW).is_allowed());
    let backend = workload(BACKEND);
    let over_mtls = Caller {
        principal: Some(&user),
        peer: &backend,
    };
    assert!(!p.evaluate(over_mtls, &request, NOW).is_allowed());
}

#[test]
fn a_deny_rule_that_reads_claims_fails_closed_for_a_workload() {
    let p = policy(
        r#"
[[rules]]
name = "suspended users"
effect = "deny"
actions = ["rtc"]
condition = 'claims.suspended == true'

[[rules]]
name = "jwt-only deny"
effect = "deny"
actions = ["rtc"]
authenticate = "jwt"
channel = "jwt-only-*"
condition = 'claims.suspended == true'

[[rules]]
name = "backends"
actions = ["rtc"]
authenticate = "mtls"
project = "main"
caller_chooses_identity = true
"#,
    );
    let backend = workload(BACKEND);
    let caller = Caller {
        principal: None,
        peer: &backend,
    };
    // A workload has no claims: the deny rule cannot tell, so it denies.
    assert_eq!(
        decide(&p, caller, &rtc_for("room-1", 5)),
        "deny condition_error suspended users"
    );
    // Narrowed to JWT callers, it does not apply to workloads.
    let p = policy(
        r#"
[[rules]]
name = "suspended users"
effect = "deny"
actions = ["rtc"]
authenticate = "jwt"
condition = 'claims.suspended == true'

[[rules]]
name = "backends"
actions = ["rtc"]
authenticate = "mtls"
project = "main"
caller_chooses_identity = true
"#,
    );
    assert_eq!(
        decide(&p, caller, &rtc_for("room-1", 5)),
        "allow backends Rtc(Uid(Uid(5)))"
    );
}

#[test]
fn load_errors_name_the_rule_and_the_key() {
    let base = |extra: &str| {
        format!(
            "[[rules]]\nname = \"r\"\nactions = [\"rtc\"]\nproject = \"main\"\nchannel = \"room-{{room}}\"\n{extra}\n"
        )
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "authenticate = \"tls\"\ncaller_chooses_identity = true",
            "authenticate",
            "is not one of",
        ),
        (
            "authenticate = \"mtls\"\nuid_claim = \"agora_uid\"",
            "uid_claim",
            "cannot read one",
        ),
        (
            "authenticate = \"mtls\"\naccount_claim = \"sub\"",
            "account_claim",
            "cannot read one",
        ),
        (
            "authenticate = \"mtls\"\nissuer = \"https://idp.example\"\ncaller_chooses_identity = true",
            "issuer",
            "cannot read one",
        ),
        (
            "authenticate = \"mtls\"\ncaller_chooses_identity = true\ncap_to_jwt_expiry = true",
            "cap_to_jwt_expiry",
            "cannot read one",
        ),
        (
            "authenticate = \"mtls\"\ncaller_chooses_identity = true\ncondition = 'claims.x == 1'",
            "condition",
            "reads `claims`",
        ),
        (
            "authenticate = \"mtls\"\ncaller_chooses_identity = true\ncondition = 'caller.subject == \"x\"'",
            "condition",
            "reads `caller`",
        ),
        (
            "peer_spiffe_id = \"spiffe://corp.example/ns/{room}\"\nuid_claim = \"agora_uid\"",
            "peer_spiffe_id",
            "also a capture of the channel pattern",
        ),
        (
            "peer_spiffe_id = \"corp.example/ns/x\"\nuid_claim = \"agora_uid\"",
            "peer_spiffe_id",
            "does not start with",
        ),
        (
            "peer_spiffe_id = \"spiffe://corp.example/ns/{a}-{b}\"\nuid_claim = \"agora_uid\"",
            "peer_spiffe_id",
            "split one ID two ways",
        ),
        (
            "peer_spiffe_id = \"spiffe://corp.example/ns/a b\"\nuid_claim = \"agora_uid\"",
            "peer_spiffe_id",
            "is not a SPIFFE path character",
        ),
    ];
    for (extra, key, reason) in cases {
        let text = base(extra);
        match Policy::from_toml(&text, &["main"]) {
            Err(PolicyError::InvalidRule {
                index: 0,
                name,
                key: got,
                reason: why,
            }) => {
                assert_eq!(name, "r", "{text}");
                assert_eq!(got, *key, "{text}: {why}");
                assert!(why.contains(reason), "{text}: {why}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    // A resource template may use a peer capture, and an unknown one is refused.
    let text = "[[rules]]\nname = \"r\"\nactions = [\"rtm\"]\nproject = \"main\"\npeer_spiffe_id = \"spiffe://corp.example/ns/{ns}\"\nauthenticate = \"mtls\"\ncaller_chooses_identity = true\nrtm_permissions = [{ resource_type = \"users\", access = \"read\", resources = [\"{ns}\", \"{nope}\"] }]\n";
    match Policy::from_toml(text, &["main"]) {
        Err(PolicyError::InvalidRule { key, .. }) => {
            assert_eq!(key, "rtm_permissions[0].resources[1]")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn shadowing_accounts_for_authentication_and_peer_patterns() {
    let (_, warnings) = Policy::from_toml(
        r#"
[[rules]]
name = "any backend"
actions = ["explain"]
peer_spiffe_id = "spiffe://corp.example/ns/*/sa/*"
authenticate = "mtls"

[[rules]]
name = "one backend"
actions = ["explain"]
peer_spiffe_id = "spiffe://corp.example/ns/backend/sa/api"
authenticate = "mtls"

[[rules]]
name = "users"
actions = ["explain"]

[[rules]]
name = "users with certificates"
actions = ["explain"]
authenticate = "jwt+mtls"
"#,
        &["main"],
    )
    .unwrap();
    let shadowed: Vec<&str> = warnings
        .iter()
        .filter_map(|w| match w {
            PolicyWarning::Shadowed { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // An mtls rule does not cover JWT callers, so `users` is reachable;
    // `users` (jwt) covers every jwt+mtls caller.
    assert_eq!(shadowed, ["one backend", "users with certificates"]);
}

proptest::proptest! {
    /// Whatever the rules, an allow comes only from a rule whose
    /// `authenticate` accepts how the caller authenticated: a workload
    /// without a JWT only from `mtls`, a JWT caller without one never from
    /// `mtls` or `jwt+mtls`.
    #[test]
    fn an_allow_comes_only_from_a_rule_that_accepts_the_callers_authentication(
        modes in proptest::collection::vec((0usize..3, proptest::bool::ANY), 1..6),
        kind in 0usize..3,
    ) {
        const MODES: [&str; 3] = ["jwt", "mtls", "jwt+mtls"];
        let text: String = modes
            .iter()
            .enumerate()
            .map(|(i, (mode, fits))| {
                let channel = if *fits { "room-*" } else { "other-*" };
                format!(
                    "[[rules]]\nname = \"r{i}\"\nactions = [\"rtc\"]\nchannel = \"{channel}\"\nauthenticate = \"{}\"\nproject = \"main\"\ncaller_chooses_identity = true\n",
                    MODES[*mode]
                )
            })
            .collect();
        let (p, _) = Policy::from_toml(&text, &["main"]).unwrap();
        let user = principal();
        let backend = workload(BACKEND);
        let none = Peer::default();
        let caller = match kind {
            0 => Caller { principal: Some(&user), peer: &none },
            1 => Caller { principal: None, peer: &backend },
            _ => Caller { principal: Some(&user), peer: &backend },
        };
        let decision = p.evaluate(caller, &rtc_for("room-1", 5), NOW);
        if let Some(rule) = decision.grant().map(|g| g.rule().to_owned()) {
            let index: usize = rule.trim_start_matches('r').parse().unwrap();
            let mode = MODES[modes[index].0];
            let accepted = match kind {
                0 => mode == "jwt",
                1 => mode == "mtls",
                _ => true,
            };
            proptest::prop_assert!(accepted, "{rule} ({mode}) allowed caller kind {kind}");
            // And it is the first rule that fits and accepts.
            let first = modes.iter().position(|(m, fits)| {
                *fits && match kind {
                    0 => MODES[*m] == "jwt",
                    1 => MODES[*m] == "mtls",
                    _ => true,
                }
            });
            proptest::prop_assert_eq!(first, Some(index));
        } else {
            proptest::prop_assert!(modes.iter().all(|(m, fits)| !*fits || match kind {
                0 => MODES[*m] != "jwt",
                1 => MODES[*m] != "mtls",
                _ => false,
            }), "{decision:?}");
        }
    }
}
