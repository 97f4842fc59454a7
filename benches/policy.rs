//! Policy evaluation cost as the rule count grows (10, 50, 200 rules, the
//! match in the middle), for `evaluate` and for `explain` with its trace.
//!
//! Every rule before the match has a channel pattern that fits and a CEL
//! condition that runs and is false: the worst realistic case, where each
//! skipped rule costs a condition evaluation, not just a pattern test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokengate::domain::{ChannelName, ClaimValue, Fingerprint, Principal, Role};
use tokengate::policy::{Action, Policy, Request, Service};

const NOW: u64 = 1_800_000_000;

/// `n` rules in the style of `deploy/examples/policy.toml`; only rule `n / 2` matches.
fn policy_text(n: usize) -> String {
    let mut text = String::from(
        "[[rules]]\nname = \"suspended\"\neffect = \"deny\"\nactions = [\"rtc\", \"rtm\", \"chat\"]\n\
         condition = 'has(claims.status) && claims.status == \"suspended\"'\n\n",
    );
    for i in 1..n {
        text += &format!(
            "[[rules]]\nname = \"group {i}\"\nactions = [\"rtc\", \"rtm\"]\nissuer = \"https://login.example.com\"\n\
             channel = \"team-{{team}}-*\"\ncondition = '\"group-{i}\" in claims.groups && captures.team in claims.teams'\n\
             project = \"main\"\nmax_role = \"publisher\"\nuid_claim = \"agora_uid\"\ndefault_ttl = \"1h\"\nmax_ttl = \"8h\"\n\n"
        );
    }
    text
}

/// A caller in 8 groups, the last being the one of rule `n / 2`, with typical claims.
fn caller(n: usize) -> Principal {
    let mut groups: Vec<ClaimValue> = (0..7)
        .map(|g| ClaimValue::String(format!("other-{g}")))
        .collect();
    groups.push(ClaimValue::String(format!("group-{}", n / 2)));
    let claims = BTreeMap::from([
        ("sub".to_owned(), ClaimValue::String("user-1".into())),
        (
            "iss".to_owned(),
            ClaimValue::String("https://login.example.com".into()),
        ),
        ("aud".to_owned(), ClaimValue::String("tokengate".into())),
        ("exp".to_owned(), ClaimValue::Int(1_800_000_600)),
        ("iat".to_owned(), ClaimValue::Int(1_799_999_000)),
        ("agora_uid".to_owned(), ClaimValue::Int(1001)),
        (
            "email".to_owned(),
            ClaimValue::String("user-1@example.com".into()),
        ),
        ("groups".to_owned(), ClaimValue::Array(groups)),
        (
            "teams".to_owned(),
            ClaimValue::Array(vec![
                ClaimValue::String("blue".into()),
                ClaimValue::String("green".into()),
            ]),
        ),
    ]);
    Principal {
        issuer: "https://login.example.com".into(),
        subject: "user-1".into(),
        audiences: vec!["tokengate".into()],
        scopes: vec!["openid".into(), "rtc:publish".into()],
        claims,
        expires_at: 1_800_000_600,
        token_fingerprint: Fingerprint::of(b"jwt"),
    }
}

fn evaluate(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    let mut request = Request::new(Action::Issue(Service::Rtc))
        .with_channel(ChannelName::parse("team-blue-standup").unwrap());
    request.role = Some(Role::Publisher);
    for n in [10usize, 50, 200] {
        let (policy, _) = Policy::from_toml(&policy_text(n), &["main"]).unwrap();
        let who = caller(n);
        let decision = policy.evaluate(&who, &request, NOW);
        assert_eq!(
            decision.rule(),
            Some(format!("group {}", n / 2).as_str()),
            "{decision:?}"
        );
        group.bench_with_input(BenchmarkId::new("evaluate", n), &n, |b, _| {
            b.iter(|| policy.evaluate(black_box(&who), black_box(&request), NOW));
        });
        group.bench_with_input(BenchmarkId::new("explain", n), &n, |b, _| {
            b.iter(|| policy.explain(black_box(&who), black_box(&request), NOW));
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
