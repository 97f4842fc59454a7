//! The log writer off the request path, against the real binary: log and
//! audit lines go through a bounded queue to a writer thread. With the
//! default `overflow = "block"` no audit event is lost even when stderr
//! stops being read and the queue fills; with `overflow = "drop"` calls go
//! on and every line that was dropped is counted.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use support::binary::{Running, loopback};
use support::fixtures::{LOBBY, rtc};
use support::server::{TestServer, config_text};
use tokengate::grpc::pb::Role;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// Calls in all: 8 connections of 125 calls each, so that the calls in
/// flight always outnumber the queue.
const CALLS: usize = 1000;
const CONNECTIONS: usize = 8;

async fn start(logging: &str) -> (support::JwksServer, Running, String) {
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    let config = loopback(&config_text(&jwks.jwks_url(), LOBBY)) + "\n[logging]\n" + logging;
    let running = Running::start_config(&config);
    running.wait_ready().await;
    let jwt = es256.mint(&TestServer::claims("writer", json!({})));
    (jwks, running, jwt)
}

/// Starts the calls, `CALLS / CONNECTIONS` in a row on each connection;
/// each task returns how many of its calls succeeded.
async fn spawn_calls(running: &Running, jwt: &str) -> Vec<tokio::task::JoinHandle<usize>> {
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut client = TokenServiceClient::new(running.channel().await);
        let jwt = jwt.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..CALLS / CONNECTIONS {
                let request = TestServer::authed(&jwt, rtc("lobby-writer", Role::Subscriber));
                if client.issue_rtc_token(request).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    tasks
}

/// The request ids of the audit events of token calls in `logs`.
fn audited_calls(logs: &[String]) -> BTreeSet<String> {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "audit" && event["rpc"] == "IssueRtcToken")
        .map(|event| event["request_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Waits until the binary's log has stopped growing for half a second.
async fn logs_settled(running: &Running) {
    let mut last = usize::MAX;
    for _ in 0..100 {
        let now = running.logs().len();
        if now == last {
            return;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the log kept growing");
}

async fn dropped_lines(running: &Running) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", running.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("tokengate_log_lines_dropped_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
        .expect("tokengate_log_lines_dropped_total in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_blocks_by_default_and_no_audit_event_is_lost() {
    let (_jwks, mut running, jwt) = start("queue_lines = 8\n").await;
    running.pause_logs();
    let tasks = spawn_calls(&running, &jwt).await;
    // Nobody reads stderr: the pipe fills, then the queue, then the calls
    // wait for room. They are still waiting a second later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tasks.iter().any(|task| !task.is_finished()),
        "every call finished while stderr was not read: nothing blocked"
    );
    assert!(
        audited_calls(&running.logs()).len() < CALLS,
        "every audit line was read while stderr was paused"
    );
    running.resume_logs();
    let mut ok = 0;
    for task in tasks {
        ok += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("calls still blocked after stderr was read again")
            .unwrap();
    }
    assert_eq!(ok, CALLS);
    running.signal("TERM");
    assert!(running.exit_within(Duration::from_secs(15)).await.success());
    assert_eq!(
        audited_calls(&running.logs()).len(),
        CALLS,
        "audit events lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_overflow_drop_calls_go_on_and_every_dropped_line_is_counted() {
    let (_jwks, mut running, jwt) = start("queue_lines = 8\noverflow = \"drop\"\n").await;
    running.pause_logs();
    let mut ok = 0;
    for task in spawn_calls(&running, &jwt).await {
        ok += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("calls blocked although lines may be dropped")
            .unwrap();
    }
    assert_eq!(ok, CALLS, "every call succeeds while stderr is not read");
    let dropped = dropped_lines(&running).await;
    running.resume_logs();
    logs_settled(&running).await;
    let audited = audited_calls(&running.logs()).len();
    assert!(
        dropped > 0,
        "nothing was dropped although stderr was not read"
    );
    // The calls logged nothing but their audit events, so every one of them
    // was either written or counted.
    assert_eq!(
        audited as u64 + dropped,
        CALLS as u64,
        "{audited} audit lines written, {dropped} dropped"
    );
    running.signal("TERM");
    assert!(running.exit_within(Duration::from_secs(15)).await.success());
}
