//! The limiter on explicit time: every key kind, rule scope, services,
//! budgets that are read without being spent, and the bound on keys.

use std::collections::{BTreeMap, HashMap};

use super::*;
use crate::domain::{ChannelName, ClaimValue, Fingerprint, PeerIdentity, Principal};
use crate::policy::{Action, ChannelScope, Peer};

const MS: u64 = 1_000_000;

fn limit(name: &str, key: LimitKey, per_call: Duration, burst: u32, scope: Scope) -> RateLimit {
    RateLimit {
        name: name.into(),
        key,
        gcra: Gcra::new(per_call, burst),
        rate: "test".into(),
        services: vec![Service::Rtc, Service::Rtm],
        scope,
        on_redis_failure: FailMode::Open,
    }
}

/// A set of just `limit`, everywhere, with room for 10 calls in flight.
fn only(limit: RateLimit) -> LimitSet {
    LimitSet::new(vec![limit], &BTreeMap::new(), 10)
}

fn principal(subject: &str, tenant: &str) -> Principal {
    let mut claims = BTreeMap::new();
    claims.insert("tenant".to_owned(), ClaimValue::String(tenant.into()));
    Principal {
        issuer: "https://idp.example".into(),
        subject: subject.into(),
        audiences: vec![],
        scopes: vec![],
        claims,
        expires_at: 2_000_000_000,
        token_fingerprint: Fingerprint::of(subject.as_bytes()),
    }
}

fn request(channel: &str) -> Request {
    Request {
        channel: Some(ChannelScope::Named(ChannelName::parse(channel).unwrap())),
        ..Request::new(Action::Issue(Service::Rtc))
    }
}

/// `who` (or a workload without a JWT) asking through `peer` for `request`, granted by `rule`.
fn subject<'a>(
    who: Option<&'a Principal>,
    peer: &'a Peer,
    request: &'a Request,
    rule: &'a str,
) -> Subject<'a> {
    Subject {
        caller: Caller {
            principal: who,
            peer,
        },
        request,
        rule,
        unix_now: 1_700_000_000,
    }
}

/// One call's outcomes, limit name to outcome.
async fn call(
    limiter: &Limiter,
    set: &LimitSet,
    who: &Principal,
    channel: &str,
    rule: &str,
    now: u64,
) -> HashMap<String, Outcome> {
    let peer = Peer::default();
    let request = request(channel);
    let subject = subject(Some(who), &peer, &request, rule);
    limiter
        .check(set, Service::Rtc, &subject, now)
        .await
        .into_iter()
        .map(|c| {
            assert_eq!(c.backend, Backend::Local);
            (c.limit.to_string(), c.outcome)
        })
        .collect()
}

#[tokio::test]
async fn a_burst_is_admitted_the_next_waits_the_exact_interval_then_refills() {
    let limiter = Limiter::local_only();
    let set = only(limit(
        "c",
        LimitKey::Caller,
        Duration::from_millis(500),
        2,
        Scope::All,
    ));
    let alice = principal("alice", "t");
    let t0 = 1_000 * MS;
    for _ in 0..2 {
        assert_eq!(
            call(&limiter, &set, &alice, "r", "rule", t0).await["c"],
            Outcome::Admitted
        );
    }
    // 120 ms later the third call waits the rest of one emission interval.
    assert_eq!(
        call(&limiter, &set, &alice, "r", "rule", t0 + 120 * MS).await["c"],
        Outcome::Limited(Duration::from_millis(380))
    );
    // Exactly then it is admitted, and the one after waits a whole interval.
    assert_eq!(
        call(&limiter, &set, &alice, "r", "rule", t0 + 500 * MS).await["c"],
        Outcome::Admitted
    );
    assert_eq!(
        call(&limiter, &set, &alice, "r", "rule", t0 + 500 * MS).await["c"],
        Outcome::Limited(Duration::from_millis(500))
    );
    // An idle second refills the burst of two, no more.
    let later = t0 + 2_000 * MS;
    for _ in 0..2 {
        assert_eq!(
            call(&limiter, &set, &alice, "r", "rule", later).await["c"],
            Outcome::Admitted
        );
    }
    assert!(matches!(
        call(&limiter, &set, &alice, "r", "rule", later).await["c"],
        Outcome::Limited(_)
    ));
}

#[tokio::test]
async fn each_key_kind_separates_the_budgets_it_should() {
    let one = |name: &str, key| limit(name, key, Duration::from_secs(3600), 1, Scope::All);
    let set = LimitSet::new(
        vec![
            one("caller", LimitKey::Caller),
            one("issuer", LimitKey::Issuer),
            one("rule", LimitKey::Rule),
            one("channel", LimitKey::Channel),
            one(
                "tenant",
                LimitKey::Cel(KeyExpression::compile("claims.tenant").unwrap()),
            ),
        ],
        &BTreeMap::new(),
        10,
    );
    let limiter = Limiter::local_only();
    let (alice, bob, carol) = (
        principal("alice", "acme"),
        principal("bob", "acme"),
        principal("carol", "globex"),
    );
    let now = 5 * MS;
    let first = call(&limiter, &set, &alice, "room-1", "r1", now).await;
    assert!(first.values().all(|o| *o == Outcome::Admitted), "{first:?}");
    let limited = |outcomes: &HashMap<String, Outcome>| {
        let mut names: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Limited(_)))
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    };
    // Bob: another caller of the same issuer and tenant, another channel and rule.
    assert_eq!(
        limited(&call(&limiter, &set, &bob, "room-2", "r2", now).await),
        ["issuer", "tenant"]
    );
    // Carol: another tenant, alice's channel and rule.
    assert_eq!(
        limited(&call(&limiter, &set, &carol, "room-1", "r1", now).await),
        ["channel", "issuer", "rule"]
    );
    // Alice again: her own caller key is spent too.
    assert_eq!(
        limited(&call(&limiter, &set, &alice, "room-3", "r3", now).await),
        ["caller", "issuer", "tenant"]
    );
}

#[tokio::test]
async fn a_failing_cel_key_counts_under_one_shared_key_never_unlimited() {
    let set = LimitSet::new(
        vec![limit(
            "team",
            LimitKey::Cel(KeyExpression::compile("claims.team").unwrap()),
            Duration::from_secs(3600),
            1,
            Scope::All,
        )],
        &BTreeMap::new(),
        10,
    );
    let limiter = Limiter::local_only();
    assert_eq!(
        call(&limiter, &set, &principal("a", "t"), "r", "x", MS).await["team"],
        Outcome::Admitted
    );
    // b has no `team` claim either: the same shared budget, now spent.
    assert!(matches!(
        call(&limiter, &set, &principal("b", "t"), "r", "x", MS).await["team"],
        Outcome::Limited(_)
    ));
}

#[tokio::test]
async fn rule_scoped_limits_count_only_the_rules_that_name_them_and_only_their_services() {
    let mut scoped = limit(
        "webinar",
        LimitKey::Rule,
        Duration::from_secs(3600),
        1,
        Scope::Rule,
    );
    scoped.services = vec![Service::Rtc];
    let mut by_rule = BTreeMap::new();
    by_rule.insert("webinars".to_owned(), vec!["webinar".to_owned()]);
    let set = LimitSet::new(vec![scoped], &by_rule, 10);
    let limiter = Limiter::local_only();
    let alice = principal("alice", "t");
    assert!(
        call(&limiter, &set, &alice, "r", "rooms", MS)
            .await
            .is_empty()
    );
    assert_eq!(
        call(&limiter, &set, &alice, "r", "webinars", MS).await["webinar"],
        Outcome::Admitted
    );
    assert!(matches!(
        call(&limiter, &set, &alice, "r", "webinars", MS).await["webinar"],
        Outcome::Limited(_)
    ));
    // An RTM grant of the same rule is not counted: the limit names rtc only.
    let peer = Peer::default();
    let request = request("r");
    let subject = subject(Some(&alice), &peer, &request, "webinars");
    assert!(
        limiter
            .check(&set, Service::Rtm, &subject, MS)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn budgets_are_read_without_being_spent() {
    let set = only(limit(
        "c",
        LimitKey::Caller,
        Duration::from_secs(60),
        3,
        Scope::All,
    ));
    let limiter = Limiter::local_only();
    let alice = principal("alice", "t");
    let peer = Peer::default();
    let request = request("r");
    let subject = subject(Some(&alice), &peer, &request, "rule");
    for _ in 0..5 {
        let budgets = limiter.budgets(&set, Service::Rtc, &subject, MS).await;
        assert_eq!(budgets.len(), 1);
        assert_eq!((budgets[0].remaining, budgets[0].burst), (3, 3));
        assert_eq!(budgets[0].key, "jwt https://idp.example alice");
        assert_eq!(budgets[0].backend, Some(Backend::Local));
    }
    limiter.check(&set, Service::Rtc, &subject, MS).await;
    assert_eq!(
        limiter.budgets(&set, Service::Rtc, &subject, MS).await[0].remaining,
        2
    );
    for _ in 0..2 {
        limiter.check(&set, Service::Rtc, &subject, MS).await;
    }
    let empty = &limiter.budgets(&set, Service::Rtc, &subject, MS).await[0];
    assert_eq!(
        (empty.remaining, empty.retry_after),
        (0, Some(Duration::from_secs(60)))
    );
}

#[tokio::test]
async fn a_workload_without_a_jwt_is_keyed_by_its_spiffe_id() {
    let set = only(limit(
        "c",
        LimitKey::Caller,
        Duration::from_secs(60),
        1,
        Scope::All,
    ));
    let peer = Peer {
        address: Some("10.0.0.1".into()),
        workload: Some(PeerIdentity {
            spiffe_id: Some("spiffe://corp.example/ns/a/sa/b".into()),
            dns_names: vec![],
            subject: None,
        }),
    };
    let request = request("r");
    let subject = subject(None, &peer, &request, "rule");
    assert_eq!(
        set.limits()[0].key_of(&subject).unwrap(),
        "mtls spiffe://corp.example/ns/a/sa/b"
    );
}

#[tokio::test]
async fn a_flood_of_100000_distinct_callers_stays_within_local_max_keys() {
    let set = only(limit(
        "c",
        LimitKey::Caller,
        Duration::from_secs(60),
        1,
        Scope::All,
    ));
    let limiter = Limiter::new(5_000, None).unwrap();
    for i in 0..100_000 {
        let who = principal(&format!("flood-{i}"), "t");
        call(&limiter, &set, &who, "r", "rule", MS).await;
    }
    let held = limiter.local().len();
    assert!(held <= 5_000 + 64, "{held} keys held");
    assert!(held >= 1_000, "{held}: the store should be in use");
}

#[test]
fn the_verdict_names_every_limit_exceeded_and_waits_for_the_longest() {
    let checked = |name: &str, outcome| Checked {
        limit: name.into(),
        outcome,
        backend: Backend::Local,
    };
    let checks = [
        checked("a", Outcome::Limited(Duration::from_millis(100))),
        checked("b", Outcome::Admitted),
        checked("c", Outcome::Limited(Duration::from_millis(700))),
        checked(
            "d",
            Outcome::Unavailable(LimitError::Timeout(Duration::from_millis(5))),
        ),
    ];
    let Some(Ok(exceeded)) = verdict(&checks) else {
        panic!("limited")
    };
    assert_eq!(exceeded.names(), "a,c");
    assert_eq!(exceeded.retry_after, Duration::from_millis(700));
    assert!(matches!(
        verdict(&checks[3..]),
        Some(Err(LimitError::Timeout(_)))
    ));
    assert!(verdict(&checks[1..2]).is_none());
}
