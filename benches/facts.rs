//! What a fact costs a call (the facts issue's goals), against a real
//! PostgreSQL on loopback (Debian's, started like the tests' own):
//!
//! * `handler_facts/no_fact`, `fact_hit`, `fact_uncached`: the in-process
//!   `IssueRtcToken` handler (verified-JWT cache on) with one webinar rule
//!   whose condition is `true`, the same rule reading `facts.tickets` with
//!   the cache warm (every call a hit: the source is never touched), and
//!   the same with `ttl = 0` (every call runs the query). A hit should add
//!   at most 2 µs; an uncached fact at most one round trip plus the query.
//!   `no_fact_literal` is the rule with the same condition over a literal
//!   list of the fact's rows: `fact_hit` minus it is the fact's own cost.
//! * `fact_fetch/uncached`, `cached`: `FactSources::fetch` alone, the
//!   pipeline's facts step without the rest of the call.
//! * `fact_fetch/pg_prepared_query`: the floor of an uncached fact, a
//!   prepared `query` of the same SQL on one tokio-postgres connection:
//!   one loopback round trip plus the query.
//!
//! Run: `cargo bench --bench facts`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use support::fixtures::TEAM_ROOMS;
use support::postgres::Postgres;
use support::server::{ISSUER, TestServer};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_server::TokenService as _;
use tokengate::grpc::service::Api;
use tokengate::policy::FactQuery;

/// The fact's SQL: the example's `tickets` fact (deploy/examples/tokengate.toml).
const SQL: &str = "SELECT tier FROM tickets WHERE event_id = $1 AND user_id = $2";

/// The example's webinar attendee rule (deploy/examples/policy.toml section
/// 4) for the test issuer and project, with `condition`.
fn rule(condition: &str) -> String {
    format!(
        r#"
[[rules]]
name = "webinar attendees"
actions = ["rtc"]
issuer = "{ISSUER}"
channel = "webinar-{{event}}"
condition = '{condition}'
project = "main"
max_role = "subscriber"
account_claim = "sub"
default_ttl = "2h"
max_ttl = "4h"
"#
    )
}

/// `[databases.app]` at `pg` and the `tickets` fact, kept for `ttl`
/// (zero: nothing is kept, not even an empty answer or a failure).
fn facts_section(pg: &Postgres, password: &std::path::Path, ttl: &str) -> String {
    format!(
        r#"
[databases.app]
url = "{url}"
password_file = "{password}"
pool_size = 4

[[facts]]
name = "tickets"
kind = "postgres"
database = "app"
query = "{SQL}"
params = ["{{captures.event}}", "{{caller.subject}}"]
timeout = "1s"
ttl = "{ttl}"
negative_ttl = "{ttl}"
error_ttl = "0s"
"#,
        url = pg.url(),
        password = password.display(),
    )
}

/// The handler over `text`, built by hand like `benches/limits.rs`, and
/// the facts it reads.
async fn handler(text: &str) -> (Api, Arc<tokengate::facts::FactSources>) {
    let config = tokengate::config::load(text, &support::server::test_env)
        .unwrap()
        .into_parts();
    let authenticator = Arc::new(
        tokengate::identity::Authenticator::start_with_cache(config.issuers, &config.jwt_cache)
            .unwrap(),
    );
    authenticator.wait_ready().await;
    let facts = tokengate::facts::FactSources::start(config.facts).unwrap();
    let gate = Arc::new(tokengate::gate::Gate::new(config.projects, config.policy));
    let live = Arc::new(arc_swap::ArcSwap::from_pointee(tokengate::pipeline::Live {
        gate,
        authenticator,
        routes: None,
        trusted_proxies: None,
        limits: Arc::new(config.rate_limits),
        facts: Arc::clone(&facts),
    }));
    let pipeline = tokengate::pipeline::Pipeline::over(live);
    (Api::new(Arc::new(pipeline)), facts)
}

fn bench_facts(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = runtime.block_on(Postgres::start());
    pg.sql(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/examples/facts-schema.sql"
        ))
        .unwrap(),
    );
    pg.sql("INSERT INTO tickets VALUES ('launch', 'alice', 'standard');");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("db-password");
    std::fs::write(&password, pg.password()).unwrap();

    // The JWKS and the caller's JWT (the server itself is not called).
    let server = runtime.block_on(async {
        let server = TestServer::start(TEAM_ROOMS).await;
        server.wait_ready().await;
        server
    });
    let jwt = server.mint("alice", json!({}));
    let issue = pb::IssueRtcTokenRequest {
        channel: "webinar-launch".into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    };
    let base = |rules: &str| support::server::config_text(&server.jwks.jwks_url(), rules);
    let reads = rule(r#"facts.tickets.exists(t, t.tier != "refunded")"#);
    let (plain, _) = runtime.block_on(handler(&format!(
        "{}{}",
        base(&rule("true")),
        facts_section(&pg, &password, "5m")
    )));
    // The same condition over a literal list of the rows the fact returns:
    // what `fact_hit` costs beyond it is the fact's own cost.
    let (literal, _) = runtime.block_on(handler(&format!(
        "{}{}",
        base(&rule(
            r#"[{"tier": "standard"}].exists(t, t.tier != "refunded")"#
        )),
        facts_section(&pg, &password, "5m")
    )));
    let (cached, cached_facts) = runtime.block_on(handler(&format!(
        "{}{}",
        base(&reads),
        facts_section(&pg, &password, "5m")
    )));
    let (uncached, uncached_facts) = runtime.block_on(handler(&format!(
        "{}{}",
        base(&reads),
        facts_section(&pg, &password, "0s")
    )));

    // Every handler allows (so the fact was read and held a ticket), and
    // the cached one has its entry before the measurement.
    for handler in [&plain, &literal, &cached, &uncached] {
        let reply = runtime
            .block_on(handler.issue_rtc_token(TestServer::authed(&jwt, issue.clone())))
            .unwrap()
            .into_inner();
        assert!(!reply.issued.unwrap().token.is_empty());
    }
    assert_eq!(cached_facts.cache_stats()[0].entries, 1);
    assert_eq!(uncached_facts.cache_stats()[0].entries, 0);

    let mut group = c.benchmark_group("handler_facts");
    for (name, handler) in [
        ("no_fact", &plain),
        ("no_fact_literal", &literal),
        ("fact_hit", &cached),
        ("fact_uncached", &uncached),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || TestServer::authed(&jwt, issue.clone()),
                |request| black_box(runtime.block_on(handler.issue_rtc_token(request)).unwrap()),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
    // Still one entry: every hit above was a hit, and ttl = 0 kept nothing.
    assert_eq!(cached_facts.cache_stats()[0].entries, 1);
    assert_eq!(uncached_facts.cache_stats()[0].entries, 0);

    // The facts step alone, and its floor: the same prepared query on one
    // connection with the same session settings.
    let query = || {
        vec![FactQuery {
            name: Arc::from("tickets"),
            inputs: vec!["launch".to_owned(), "alice".to_owned()],
        }]
    };
    let client = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user={} password={} dbname={} \
                 options='-c default_transaction_read_only=on -c statement_timeout=1000'",
                pg.port(),
                support::postgres::USER,
                pg.password(),
                support::postgres::DATABASE
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
    });
    let statement = runtime.block_on(client.prepare(SQL)).unwrap();
    let mut group = c.benchmark_group("fact_fetch");
    group.bench_function("pg_prepared_query", |b| {
        b.iter(|| {
            let rows = runtime
                .block_on(client.query(&statement, &[&"launch", &"alice"]))
                .unwrap();
            assert_eq!(rows.len(), 1);
            black_box(rows)
        });
    });
    for (name, facts) in [("uncached", &uncached_facts), ("cached", &cached_facts)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let now = tokengate::entropy::monotonic_ns();
                let (facts, records) = runtime.block_on(facts.fetch(query(), now));
                assert!(records[0].outcome != tokengate::facts::FetchOutcome::Failed);
                black_box((facts, records))
            });
        });
    }
    group.finish();
    runtime.block_on(server.shutdown());
    drop(pg);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(5));
    targets = bench_facts
}
criterion_main!(benches);
