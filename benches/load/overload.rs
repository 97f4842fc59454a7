//! The overload benchmark (issue 15, README "Performance"): many more
//! concurrent callers than a server can serve, with and without a tight
//! `limits.max_in_flight`, to show what shedding buys: the admitted calls
//! keep their latency and the rest are refused at once, where without it
//! every call waits in the queue.
//!
//! `overload --addr 127.0.0.1:50071 --jwt-file DIR/jwt --callers 256 --seconds 10`
//! runs `callers` tasks, each making IssueRtcToken calls one after another
//! for `seconds` (bounded), and prints one line of JSON: per outcome
//! (`ok`, `resource_exhausted`, other codes) the count and the p50, p99
//! and max latency in microseconds, and the calls/s of each. Every OK reply
//! is checked to carry a token. `benches/load/overload.sh` builds and runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_client::TokenServiceClient;

#[derive(Debug, Parser)]
struct Args {
    /// The server's gRPC address.
    #[arg(long)]
    addr: String,
    /// A file holding the caller's JWT.
    #[arg(long)]
    jwt_file: std::path::PathBuf,
    /// The channel to ask for.
    #[arg(long, default_value = "team-blue-standup")]
    channel: String,
    /// Concurrent callers, each with calls one after another.
    #[arg(long, default_value_t = 256)]
    callers: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Wait the `RetryInfo` delay after a refusal that carries one, as a
    /// well-behaved client does (without it, callers retry at once: the
    /// worst case).
    #[arg(long)]
    honor_retry_info: bool,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let jwt = std::fs::read_to_string(&args.jwt_file)
        .unwrap()
        .trim()
        .to_owned();
    let outcomes = runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..args.connections {
            channels.push(
                tonic::transport::Channel::from_shared(format!("http://{}", args.addr))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            );
        }
        let until = Instant::now() + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = (0..args.callers)
            .map(|i| {
                let mut client = TokenServiceClient::new(channels[i % channels.len()].clone());
                let (jwt, channel) = (jwt.clone(), args.channel.clone());
                let honor = args.honor_retry_info;
                tokio::spawn(async move {
                    let mut seen: Vec<(String, u64)> = Vec::new();
                    // Bounded by time and by count.
                    for _ in 0..10_000_000u64 {
                        if Instant::now() >= until {
                            break;
                        }
                        let mut request = tonic::Request::new(pb::IssueRtcTokenRequest {
                            channel: channel.clone(),
                            role: pb::Role::Subscriber as i32,
                            ..Default::default()
                        });
                        request
                            .metadata_mut()
                            .insert("authorization", format!("Bearer {jwt}").parse().unwrap());
                        let started = Instant::now();
                        let result = client.issue_rtc_token(request).await;
                        let micros = started.elapsed().as_micros() as u64;
                        let outcome = match result {
                            Ok(reply) => {
                                let issued =
                                    reply.into_inner().issued.expect("an OK reply has a token");
                                assert!(issued.token.starts_with("007"), "a 007 token");
                                "ok".to_owned()
                            }
                            Err(status) => {
                                use tonic_types::StatusExt as _;
                                let wait = status
                                    .get_error_details()
                                    .retry_info()
                                    .and_then(|r| r.retry_delay);
                                if let (true, Some(wait)) = (honor, wait) {
                                    let left = until.saturating_duration_since(Instant::now());
                                    tokio::time::sleep(wait.min(left)).await;
                                }
                                format!("{:?}", status.code()).to_lowercase()
                            }
                        };
                        seen.push((outcome, micros));
                    }
                    seen
                })
            })
            .collect();
        let mut outcomes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for task in tasks {
            for (outcome, micros) in task.await.unwrap() {
                outcomes.entry(outcome).or_default().push(micros);
            }
        }
        outcomes
    });
    let mut report = serde_json::Map::new();
    for (outcome, mut latencies) in outcomes {
        latencies.sort_unstable();
        report.insert(
            outcome,
            serde_json::json!({
                "count": latencies.len(),
                "per_second": (latencies.len() as f64 / args.seconds).round(),
                "p50_us": percentile(&latencies, 0.50),
                "p99_us": percentile(&latencies, 0.99),
                "max_us": latencies.last().copied().unwrap_or(0),
            }),
        );
    }
    println!("{}", serde_json::Value::Object(report));
}
