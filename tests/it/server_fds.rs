//! The real `tokengate serve` binary under a low file-descriptor limit, and
//! its listen backlog: running out of descriptors must neither pin a core
//! nor stop the service once the pressure is gone.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::binary::Running;
use crate::support::{JwksServer, TestKey};

const RULES: &str = r#"
[[rules]]
name = "lobby"
actions = ["rtc"]
channel = "lobby-*"
project = "main"
max_role = "subscriber"
account_claim = "sub"
"#;

/// user + system CPU time of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // `after` starts at field 3, so fields 14 and 15 are at 11 and 12.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The gRPC and admin addresses, from the binary's "listening" log line.
fn addresses(running: &Running) -> (SocketAddr, SocketAddr) {
    let event = running
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|event| event["message"] == "tokengate listening")
        .expect("a listening line");
    let addr = |key: &str| event[key].as_str().unwrap().parse().unwrap();
    (addr("grpc"), addr("admin"))
}

async fn start(limits: &str) -> (JwksServer, Running) {
    let key = TestKey::generate(Algorithm::ES256, "es-1");
    let jwks = JwksServer::start(&[&key]).await;
    let running = Running::start(&jwks.jwks_url(), &format!("{limits}\n{RULES}"));
    running.wait_ready().await;
    (jwks, running)
}

async fn health_ok(grpc: SocketAddr) -> bool {
    let attempt = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(_))
    )
}

async fn readyz_ok(admin: SocketAddr) -> bool {
    let attempt = reqwest::Client::new()
        .get(format!("http://{admin}/readyz"))
        .send();
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(response)) if response.status() == 200
    )
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_logs_once_and_recovers() {
    let (_jwks, running) =
        start("[limits]\nheader_read_timeout = \"10s\"\nmax_connections = 1000\n").await;
    let pid = running.pid();
    let (grpc, admin) = addresses(&running);
    let status = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=64:64"])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");

    // Far more connections than the server has descriptors left: the rest
    // wait in the backlog, and every `accept` fails with EMFILE.
    let mut pressure = Vec::new();
    for _ in 0..120 {
        pressure.push(TcpStream::connect(grpc).await.unwrap());
    }
    // Let it reach the limit, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    // A spinning accept loop burns the whole window on one core; the back-off
    // about nothing. The bound is a quarter of the window.
    assert!(
        used * 4 < ticks_per_second() * window.as_secs(),
        "{used} ticks of CPU in {window:?} at the descriptor limit"
    );

    // The pressure goes away: the server serves again, under the same limit.
    drop(pressure);
    let mut recovered = false;
    for _ in 0..50 {
        if health_ok(grpc).await && readyz_ok(admin).await {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "not serving after the pressure; logs: {:#?}",
        running.logs()
    );

    // Logged, but once per interval rather than once per failed accept.
    let accept_errors = running
        .logs()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| {
            event["port"] == "grpc"
                && event["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("cannot accept connections"))
        })
        .count();
    assert!(
        (1..=2).contains(&accept_errors),
        "{accept_errors} accept error lines; logs: {:#?}",
        running.logs()
    );
}

#[tokio::test]
async fn the_listen_backlog_is_the_configured_one() {
    let (_jwks, running) = start("[limits]\nlisten_backlog = 37\n").await;
    let (grpc, admin) = addresses(&running);
    for addr in [grpc, admin] {
        // For a listening socket, `ss` reports the backlog as Send-Q.
        let out = Command::new("ss")
            .args(["-ltnH", &format!("sport = :{}", addr.port())])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let send_q: Vec<&str> = text
            .lines()
            .filter_map(|line| line.split_whitespace().nth(2))
            .collect();
        assert_eq!(send_q, ["37"], "{addr}: {text}");
    }
}

/// Raises this process's soft descriptor limit to at least `want` (within
/// the hard limit), so that the test can hold thousands of connections.
fn raise_nofile(want: u64) {
    let me = std::process::id().to_string();
    let out = Command::new("prlimit")
        .args([
            "--pid",
            &me,
            "--nofile",
            "--noheadings",
            "--raw",
            "--output=HARD",
        ])
        .output()
        .unwrap();
    let hard: u64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        hard >= want,
        "this test needs {want} file descriptors; the hard limit is {hard}"
    );
    let status = Command::new("prlimit")
        .args(["--pid", &me, &format!("--nofile={want}:{hard}")])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");
}

/// 2,000 connections that never send a byte, at the default limits: the
/// first 1,000 (`max_connections`) are held until the 5 s header-read
/// timeout and the rest are closed at once; meanwhile a client already
/// connected keeps being served, the admin port answers, the server
/// idles, and once the timeout has cleared them new connections get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_at_the_default_limits_leave_the_service_serving() {
    raise_nofile(4096);
    let (_jwks, running) = start("").await;
    let pid = running.pid();
    let (grpc, admin) = addresses(&running);
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);

    // Each connection's time is counted from its own connect: the server's
    // header-read timer starts at its accept, and opening 2,000 connections
    // takes long enough on a loaded machine that one clock for all of them
    // put early connections' timeouts before the 4 s mark.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        let tcp = TcpStream::connect(grpc).await.unwrap();
        idle.push((tcp, tokio::time::Instant::now()));
    }
    // Each idle connection reports when the server closed it.
    let watchers: Vec<_> = idle
        .into_iter()
        .map(|(mut tcp, started)| {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = [0u8; 256];
                // The server's side speaks first only to close (or to send its
                // SETTINGS once it has a preface, which these never send).
                loop {
                    match tokio::time::timeout(Duration::from_secs(15), tcp.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                        Ok(Ok(_)) => continue,
                        Err(_) => return None,
                    }
                }
            })
        })
        .collect();

    // While they sit there: the connected client is served, the admin port
    // answers, and the server is not busy.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    assert!(
        used * 10 < ticks_per_second() * window.as_secs(),
        "{used} ticks of CPU in {window:?} with 2,000 idle connections"
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("the connected client is still served");
    assert!(readyz_ok(admin).await, "the admin port stopped answering");

    let mut closed = Vec::new();
    for watcher in watchers {
        closed.push(watcher.await.unwrap());
    }
    let at_once = closed
        .iter()
        .filter(|c| c.is_some_and(|t| t < Duration::from_secs(2)))
        .count();
    let by_timeout = closed
        .iter()
        .filter(|c| c.is_some_and(|t| t >= Duration::from_secs(4)))
        .count();
    // The connected client holds one of the 1,000 places.
    assert_eq!(
        (at_once, by_timeout),
        (1001, 999),
        "connections closed at once and by the header-read timeout"
    );
    assert!(health_ok(grpc).await, "a new connection is not served");
}
