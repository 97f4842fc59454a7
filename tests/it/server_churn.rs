//! Connection churn against the real binary: bursts of hundreds of
//! connections that each make one call and close, 10,000 connections in all.
//!
//! What the service holds for a connection must be given back when it
//! closes. The allocator keeps freed pages for reuse, so resident memory
//! rises with the largest number of connections open at once (which
//! `[limits] max_connections` bounds) and then stays flat however many
//! connections come and go; a leak of even half a KiB per connection would
//! show as steady growth over the later bursts.

use crate::support;

use std::time::Duration;

use serde_json::json;

use support::fixtures::{LOBBY, rtc};
use support::server::TestServer;
use tokengate::grpc::pb::Role;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

/// Connections open at once in each burst.
const BURST: usize = 500;
/// Bursts in all: the first half warms the allocator up, the second must not grow.
const BURSTS: usize = 20;

fn median(samples: &[u64]) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_churn_plateaus_instead_of_growing() {
    let (jwks, es256, _rs256) = support::server::test_keys().await;
    let binary = support::binary::Running::start(&jwks.jwks_url(), LOBBY);
    binary.wait_ready().await;
    let idle = support::binary::rss_kib(binary.pid());
    let jwt = es256.mint(&TestServer::claims("churn", json!({})));
    let mut samples = Vec::new();
    for _ in 0..BURSTS {
        // Every connection of the burst is open before any of them calls.
        let mut clients = Vec::new();
        for _ in 0..BURST {
            clients.push(TokenServiceClient::new(binary.channel().await));
        }
        let mut calls = Vec::new();
        for mut client in clients {
            let request = TestServer::authed(&jwt, rtc("lobby-churn", Role::Subscriber));
            calls.push(tokio::spawn(async move {
                client.issue_rtc_token(request).await.map(|_| ())
            }));
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }
        // Every client is dropped by now; give the server a moment to see the closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        samples.push(support::binary::rss_kib(binary.pid()));
    }
    let (warm, late) = samples.split_at(BURSTS / 2);
    let (warm, late) = (median(&warm[BURSTS / 4..]), median(late));
    eprintln!(
        "churn: {} connections, RSS idle {idle} KiB, after warm-up {warm} KiB, late {late} KiB; {samples:?}",
        BURST * BURSTS
    );
    // 5,000 connections in the late half: a leak of 1 KiB each (far less
    // than a connection's buffers) is 4.9 MiB. The margin is 4 MiB because
    // glibc's arenas grow in steps: a clean run on the 2-core CI machine
    // once stepped 2.7 MiB between two bursts and then stayed flat.
    assert!(
        late <= warm + 4 * 1024,
        "RSS kept growing: {warm} -> {late} KiB over {} connections ({samples:?})",
        BURST * BURSTS / 2
    );
    // The high-water mark follows the connections open at once, not their total.
    let per_connection = (late.saturating_sub(idle)) / BURST as u64;
    assert!(
        per_connection < 96,
        "{per_connection} KiB per open connection ({idle} -> {late} KiB)"
    );
}
