//! What a rate limit costs a call (issue 15): the limiter's check alone,
//! local and against a real redis-server on loopback, and the whole
//! in-process `IssueRtcToken` handler (verified-JWT cache on) with no limit,
//! one local limit and one Redis limit, in the same run.
//!
//! Every limit admits every call (a burst of a million per caller), so each
//! iteration pays a full check and never a refusal. Redis is Debian's
//! `redis-server` (`.ci/setup` installs it), started on a free loopback port.
//!
//! Run: `cargo bench --bench limits`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde_json::json;
use support::fixtures::TEAM_ROOMS;
use support::redis::Redis;
use support::server::TestServer;
use tokengate::domain::{ChannelName, Fingerprint, Principal};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_server::TokenService as _;
use tokengate::grpc::service::Api;
use tokengate::limits::{
    FailMode, Gcra, LimitKey, LimitSet, Limiter, RateLimit, RedisSettings, Scope, Subject,
};
use tokengate::policy::{Action, Caller, ChannelScope, Peer, Request, Service};

/// One limit per caller that admits everything the bench sends.
const GENEROUS: &str = "\n[[limits.rate]]\nname = \"per-caller\"\nkey = \"caller\"\nrate = \"1000000/s\"\nburst = 1000000\n";

fn redis_settings(redis: &Redis) -> RedisSettings {
    RedisSettings {
        url: redis.url(),
        username: None,
        password: None,
        ca_pem: None,
        timeout: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(1),
        retry_interval: Duration::from_secs(1),
        key_prefix: "bench:".into(),
        replicas: None,
    }
}

fn bench_limits(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = runtime.block_on(Redis::start(None));

    // The limiter alone.
    let set = LimitSet::new(
        vec![RateLimit {
            name: "per-caller".into(),
            key: LimitKey::Caller,
            gcra: Gcra::new(Duration::from_micros(1), 1_000_000),
            rate: "1000000/s".into(),
            services: vec![Service::Rtc],
            scope: Scope::All,
            on_redis_failure: FailMode::Open,
        }],
        &BTreeMap::new(),
        1024,
    );
    let principal = Principal {
        issuer: support::server::ISSUER.into(),
        subject: "backend-7".into(),
        audiences: vec![],
        scopes: vec![],
        claims: BTreeMap::new(),
        expires_at: 2_000_000_000,
        token_fingerprint: Fingerprint::of(b"jwt"),
    };
    let peer = Peer::default();
    let request = Request {
        channel: Some(ChannelScope::Named(
            ChannelName::parse("team-blue-a").unwrap(),
        )),
        ..Request::new(Action::Issue(Service::Rtc))
    };
    let subject = Subject {
        caller: Caller {
            principal: Some(&principal),
            peer: &peer,
        },
        request: &request,
        rule: "team rooms",
        unix_now: 1_700_000_000,
    };
    let local = Limiter::local_only();
    let shared =
        runtime.block_on(async { Limiter::new(1000, Some(redis_settings(&redis))).unwrap() });
    let mut group = c.benchmark_group("limiter");
    group.bench_function("check_local", |b| {
        b.iter(|| {
            let now = tokengate::entropy::monotonic_ns();
            black_box(runtime.block_on(local.check(&set, Service::Rtc, &subject, now)))
        });
    });
    group.bench_function("check_redis", |b| {
        b.iter(|| {
            let now = tokengate::entropy::monotonic_ns();
            let checks = runtime.block_on(shared.check(&set, Service::Rtc, &subject, now));
            assert_eq!(checks[0].backend, tokengate::limits::Backend::Redis);
            black_box(checks)
        });
    });
    // A bare round trip (PING) on the same kind of connection: what a
    // check costs beyond it is the script's run.
    let mut ping = runtime.block_on(async {
        let client = redis::Client::open(redis.url()).unwrap();
        redis::aio::ConnectionManager::new(client).await.unwrap()
    });
    group.bench_function("redis_ping_round_trip", |b| {
        b.iter(|| {
            let pong: String = runtime
                .block_on(redis::cmd("PING").query_async(&mut ping))
                .unwrap();
            black_box(pong)
        });
    });
    group.finish();

    // The whole handler, cache on, with no limit, a local one and a Redis one.
    let server = runtime.block_on(async {
        let server = TestServer::start(TEAM_ROOMS).await;
        server.wait_ready().await;
        server
    });
    let jwt = server.mint("alice", json!({"teams": ["blue"], "agora_uid": 4242}));
    let issue = pb::IssueRtcTokenRequest {
        channel: "team-blue-a".into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    };
    let redis_section = format!(
        "\n[limits.redis]\nurl = \"{}\"\ntimeout = \"50ms\"\nkey_prefix = \"bench-handler:\"\n",
        redis.url()
    );
    let handlers = runtime.block_on(async {
        let base = support::server::config_text(&server.jwks.jwks_url(), TEAM_ROOMS);
        let mut handlers = Vec::new();
        for extra in [
            String::new(),
            GENEROUS.to_owned(),
            format!("{GENEROUS}{redis_section}"),
        ] {
            let config =
                tokengate::config::load(&format!("{base}{extra}"), &support::server::test_env)
                    .unwrap()
                    .into_parts();
            let authenticator = Arc::new(
                tokengate::identity::Authenticator::start_with_cache(
                    config.issuers,
                    &config.jwt_cache,
                )
                .unwrap(),
            );
            authenticator.wait_ready().await;
            let gate = Arc::new(tokengate::gate::Gate::new(config.projects, config.policy));
            let live = Arc::new(arc_swap::ArcSwap::from_pointee(tokengate::pipeline::Live {
                gate,
                authenticator,
                routes: None,
                trusted_proxies: None,
                limits: Arc::new(config.rate_limits),
                facts: tokengate::facts::FactSources::none(),
            }));
            let limiter = Arc::new(
                Limiter::new(config.limiter.local_max_keys, config.limiter.redis).unwrap(),
            );
            let pipeline = tokengate::pipeline::Pipeline::over(live).with_limiter(limiter);
            handlers.push(Api::new(Arc::new(pipeline)));
        }
        handlers
    });
    let mut group = c.benchmark_group("handler_jwt_cache");
    for (name, handler) in ["no_limit", "local_limit", "redis_limit"]
        .iter()
        .zip(&handlers)
    {
        group.bench_function(*name, |b| {
            b.iter_batched(
                || TestServer::authed(&jwt, issue.clone()),
                |request| black_box(runtime.block_on(handler.issue_rtc_token(request)).unwrap()),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
    runtime.block_on(server.shutdown());
    drop(redis);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .measurement_time(Duration::from_secs(5));
    targets = bench_limits
}
criterion_main!(benches);
