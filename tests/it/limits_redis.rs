//! Cluster-mode rate limits against a real redis-server on loopback: two
//! replicas share one budget; Redis killed mid-run gives each limit its
//! `on_redis_failure` mode (fail open: counted locally with the replica's
//! share; fail closed: UNAVAILABLE), and a restarted Redis is used again
//! without restarting tokengate; a paused (slow) Redis costs a call the
//! check's timeout, never the caller's deadline; ExplainAccess reads the
//! shared budget without spending it.

use std::time::Duration;

use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::support;
use support::fixtures::rtc;
use support::redis::Redis;
use support::server::{InProcess, TestServer, config_text, test_keys};
use tokengate::grpc::pb;

const PASSWORD: &str = "s3cret-redis-pass";

/// The local tests' rules, and RTM for every caller.
fn rules() -> String {
    format!(
        "{}{}",
        crate::limits::RULES.replace("STAGE_LIMITS", ""),
        r#"
[[rules]]
name = "messaging"
actions = ["rtm"]
project = "main"
account_claim = "sub"
"#
    )
}

/// Two replicas' config: RTC counted by a fail-open limit, RTM by a
/// fail-closed one, both 20 per minute per caller, shared through `redis`
/// (`redis_extra`: more `[limits.redis]` keys).
fn config(
    jwks_url: &str,
    redis: &Redis,
    password_file: &std::path::Path,
    redis_extra: &str,
) -> String {
    format!(
        r#"{base}
[limits.redis]
url = "{url}"
password_file = "{password}"
{redis_extra}
timeout = "50ms"
retry_interval = "200ms"
replicas = 2

[[limits.rate]]
name = "rtc-per-caller"
key = "caller"
rate = "20/min"
actions = ["rtc"]
on_redis_failure = "open"

[[limits.rate]]
name = "rtm-per-caller"
key = "caller"
rate = "20/min"
actions = ["rtm"]
on_redis_failure = "closed"
"#,
        base = config_text(jwks_url, &rules()),
        url = redis.url(),
        password = password_file.display(),
    )
}

struct Cluster {
    redis: Redis,
    replicas: Vec<InProcess>,
    jwt: String,
    _dir: tempfile::TempDir,
    _jwks: support::JwksServer,
}

async fn cluster(replicas: usize) -> Cluster {
    cluster_on(Redis::start(Some(PASSWORD)).await, "", replicas).await
}

async fn cluster_on(redis: Redis, redis_extra: &str, replicas: usize) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let (jwks, es256, _rs256) = test_keys().await;
    let text = config(&jwks.jwks_url(), &redis, &password_file, redis_extra);
    let mut started = Vec::new();
    for _ in 0..replicas {
        let server = InProcess::start(&text).await;
        server.wait_ready().await;
        started.push(server);
    }
    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 77})));
    Cluster {
        redis,
        replicas: started,
        jwt,
        _dir: dir,
        _jwks: jwks,
    }
}

impl Cluster {
    async fn rtc(&self, replica: usize) -> Result<(), tonic::Status> {
        let mut request = TestServer::authed(&self.jwt, rtc("room-1", pb::Role::Subscriber));
        // The caller's deadline: a check that waited for a paused Redis would miss it.
        request.set_timeout(Duration::from_secs(1));
        self.replicas[replica]
            .client()
            .await
            .issue_rtc_token(request)
            .await
            .map(|_| ())
    }

    async fn rtm(&self, replica: usize) -> Result<(), tonic::Status> {
        let mut request = TestServer::authed(&self.jwt, pb::IssueRtmTokenRequest::default());
        request.set_timeout(Duration::from_secs(1));
        self.replicas[replica]
            .client()
            .await
            .issue_rtm_token(request)
            .await
            .map(|_| ())
    }

    async fn metrics(&self, replica: usize) -> String {
        reqwest::get(format!("http://{}/metrics", self.replicas[replica].admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) until an RTM call is admitted again: Redis answers.
    async fn until_redis_answers(&self, replica: usize) {
        for _ in 0..100 {
            if self.rtm(replica).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica {replica} never used Redis again");
    }

    async fn shutdown(self) {
        for replica in self.replicas {
            replica.shutdown().await;
        }
    }
}

fn admitted(results: &[Result<(), tonic::Status>]) -> usize {
    for result in results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        }
    }
    results.iter().filter(|r| r.is_ok()).count()
}

#[tokio::test]
async fn two_replicas_share_one_budget() {
    let cluster = cluster(2).await;
    let mut results = Vec::new();
    for i in 0..40 {
        results.push(cluster.rtc(i % 2).await);
    }
    // 20 per minute, burst 20: both replicas together admit the burst, plus
    // at most one more if an emission interval (3 s) passed meanwhile.
    let total = admitted(&results);
    assert!((20..=21).contains(&total), "{total} admitted");
    let by_replica = [
        admitted(&results.iter().step_by(2).cloned().collect::<Vec<_>>()),
        admitted(
            &results
                .iter()
                .skip(1)
                .step_by(2)
                .cloned()
                .collect::<Vec<_>>(),
        ),
    ];
    assert!(by_replica.iter().all(|n| *n >= 9), "{by_replica:?}");
    // The state is in Redis, under the prefix, the key text hashed.
    let keys = cluster.redis.keys("tokengate:rl:rtc-per-caller:*");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(!keys[0].contains("alice"), "{keys:?}");
    let ttl: i64 = cluster
        .redis
        .cli(&["PTTL", &keys[0]])
        .trim()
        .parse()
        .unwrap();
    assert!(
        ttl > 0 && ttl <= 61_000,
        "the key expires when it stops mattering: {ttl} ms"
    );
    for replica in 0..2 {
        let exposed = cluster.metrics(replica).await;
        assert!(
            exposed.contains("tokengate_rate_limit_redis_up 1"),
            "{exposed}"
        );
        assert!(
            exposed.contains(r#"tokengate_rate_limit_checks_total{limit="rtc-per-caller",result="admitted",backend="redis"}"#),
            "{exposed}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn redis_down_gives_each_limit_its_fail_mode_and_a_restarted_redis_is_used_again() {
    let mut cluster = cluster(1).await;
    cluster.rtc(0).await.unwrap();
    cluster.rtm(0).await.unwrap();
    cluster.redis.stop();
    // Fail open: counted in process with this replica's share (20 / 2 replicas).
    let results: Vec<_> = futures_util::future::join_all((0..15).map(|_| cluster.rtc(0))).await;
    assert_eq!(admitted(&results), 10);
    // Fail closed: UNAVAILABLE, with a reason and a retry hint, never Redis's error.
    let refused = cluster.rtm(0).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let details = refused.get_error_details();
    assert_eq!(details.error_info().unwrap().reason, "limits_unavailable");
    assert!(details.retry_info().is_some());
    assert!(
        !refused.message().contains("127.0.0.1"),
        "{}",
        refused.message()
    );
    let exposed = cluster.metrics(0).await;
    for line in [
        "tokengate_rate_limit_redis_up 0",
        r#"tokengate_rate_limit_checks_total{limit="rtc-per-caller",result="admitted",backend="local_fallback"} 10"#,
        r#"tokengate_rate_limit_checks_total{limit="rtc-per-caller",result="limited",backend="local_fallback"} 5"#,
        r#"tokengate_rate_limit_checks_total{limit="rtm-per-caller",result="unavailable",backend="redis"}"#,
    ] {
        assert!(exposed.contains(line), "{line} not in:\n{exposed}");
    }
    // Back: the same replica, not restarted, uses Redis again (empty now).
    cluster.redis.restart().await;
    cluster.until_redis_answers(0).await;
    cluster.rtc(0).await.unwrap();
    let exposed = cluster.metrics(0).await;
    assert!(
        exposed.contains("tokengate_rate_limit_redis_up 1"),
        "{exposed}"
    );
    assert_eq!(cluster.redis.keys("tokengate:rl:*").len(), 2);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_slow_redis_costs_the_check_timeout_and_the_fail_mode_not_the_callers_deadline() {
    let cluster = cluster(1).await;
    cluster.rtc(0).await.unwrap();
    // Every Redis client waits 3 s; each call's deadline is 1 s.
    cluster.redis.pause(3000);
    cluster
        .rtc(0)
        .await
        .expect("fail open: admitted by the local share");
    let refused = cluster.rtm(0).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Code::Unavailable,
        "not DEADLINE_EXCEEDED: {refused:?}"
    );
    assert_eq!(
        refused.get_error_details().error_info().unwrap().reason,
        "limits_unavailable"
    );
    // After the pause, Redis is asked again.
    cluster.until_redis_answers(0).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn explain_reads_the_shared_budget_without_spending_it() {
    let cluster = cluster(2).await;
    for _ in 0..5 {
        cluster.rtc(0).await.unwrap();
    }
    for replica in [1, 0, 1] {
        let reply = cluster.replicas[replica]
            .client()
            .await
            .explain_access(TestServer::authed(
                &cluster.jwt,
                pb::ExplainAccessRequest {
                    request: Some(pb::explain_access_request::Request::Rtc(rtc(
                        "room-1",
                        pb::Role::Subscriber,
                    ))),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.limits.len(), 1, "{:?}", reply.limits);
        let budget = &reply.limits[0];
        assert_eq!(budget.backend, "redis");
        // 20 less the 5 spent (one more may have refilled in 3 s).
        assert!((15..=16).contains(&budget.remaining), "{budget:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn limits_are_shared_over_tls_with_a_private_ca() {
    let ca = support::certs::Ca::new("redis test CA");
    let files = support::certs::TlsFiles::new(&ca);
    let redis = Redis::start_tls(Some(PASSWORD), &files).await;
    let ca_file = format!("ca_file = {:?}", files.path("ca.crt"));
    let cluster = cluster_on(redis, &ca_file, 2).await;
    let results: Vec<_> = futures_util::future::join_all((0..30).map(|i| cluster.rtc(i % 2))).await;
    assert!((20..=21).contains(&admitted(&results)));
    assert_eq!(cluster.redis.keys("tokengate:rl:*").len(), 1);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_a_failing_redis_not_a_crash() {
    let redis = Redis::start(Some("another-password")).await;
    let cluster = cluster_on(redis, "", 1).await;
    // Fail open admits (locally), fail closed refuses: Redis refused us.
    cluster.rtc(0).await.unwrap();
    assert_eq!(cluster.rtm(0).await.unwrap_err().code(), Code::Unavailable);
    assert!(
        cluster
            .metrics(0)
            .await
            .contains("tokengate_rate_limit_redis_up 0")
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn the_binary_logs_each_limits_fail_mode_a_redis_failure_once_and_its_recovery() {
    use support::binary::{Running, loopback};
    let mut redis = Redis::start(Some(PASSWORD)).await;
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let (jwks, es256, _rs256) = test_keys().await;
    let server = Running::start_config(&loopback(&config(
        &jwks.jwks_url(),
        &redis,
        &password_file,
        "",
    )));
    server.wait_ready().await;
    let logs = server.logs();
    let in_force: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|e: &serde_json::Value| e["message"] == "rate limit in force")
        .collect();
    let modes: Vec<(&str, &str)> = in_force
        .iter()
        .map(|e| {
            (
                e["limit"].as_str().unwrap(),
                e["on_redis_failure"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [("rtc-per-caller", "open"), ("rtm-per-caller", "closed")]
    );
    assert!(
        logs.iter().all(|l| !l.contains(PASSWORD)),
        "the password is never logged"
    );

    let jwt = es256.mint(&TestServer::claims("alice", json!({"agora_uid": 77})));
    let mut client = pb::token_service_client::TokenServiceClient::new(server.channel().await);
    let rtm = || TestServer::authed(&jwt, pb::IssueRtmTokenRequest::default());
    client.issue_rtm_token(rtm()).await.unwrap();
    redis.stop();
    for _ in 0..5 {
        assert_eq!(
            client.issue_rtm_token(rtm()).await.unwrap_err().code(),
            Code::Unavailable
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = |line: &String| line.contains("rate limits: Redis failed");
    server
        .logs_once(|l| l.contains("rate limits: Redis failed"))
        .await;
    redis.restart().await;
    let mut back = false;
    for _ in 0..100 {
        if client.issue_rtm_token(rtm()).await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "Redis never used again");
    server
        .logs_once(|l| l.contains("Redis answers again"))
        .await;
    let logs = server.logs();
    // One warning for the whole outage, not one per call.
    assert_eq!(logs.iter().filter(|l| failed(l)).count(), 1, "{logs:#?}");
    let warning: serde_json::Value =
        serde_json::from_str(logs.iter().find(|l| failed(l)).unwrap()).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
}

#[tokio::test]
async fn the_deploy_manifests_acl_user_is_all_tokengate_needs() {
    // The rights deploy/kubernetes/redis grants the `tokengate` user.
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/redis/redis.yaml"
    ))
    .unwrap();
    let rules = manifest
        .lines()
        .find_map(|line| line.trim().strip_prefix("acl-rules: "))
        .map(|value| value.trim_matches('"').to_owned())
        .expect("redis.yaml has acl-rules");
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("users.acl");
    std::fs::write(
        &acl,
        format!("user default off\nuser tokengate on >{PASSWORD} {rules}\n"),
    )
    .unwrap();
    let redis = Redis::start_acl(acl, "tokengate", PASSWORD).await;
    // The default user is off; and the tokengate user may not read other keys.
    let denied = std::process::Command::new("/usr/bin/redis-cli")
        .args([
            "-p",
            redis
                .url()
                .rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches("/0"),
        ])
        .args([
            "--user",
            "tokengate",
            "--no-auth-warning",
            "-a",
            PASSWORD,
            "GET",
            "other",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("NOPERM"),
        "{denied:?}"
    );
    let cluster = cluster_on(redis, "username = \"tokengate\"", 1).await;
    cluster.rtc(0).await.unwrap();
    cluster.rtm(0).await.unwrap();
    let exposed = cluster.metrics(0).await;
    assert!(
        exposed.contains("tokengate_rate_limit_redis_up 1"),
        "{exposed}"
    );
    for limit in ["rtc-per-caller", "rtm-per-caller"] {
        let line = format!(
            r#"tokengate_rate_limit_checks_total{{limit="{limit}",result="admitted",backend="redis"}} 1"#
        );
        assert!(exposed.contains(&line), "{line} not in:\n{exposed}");
    }
    cluster.shutdown().await;
}
