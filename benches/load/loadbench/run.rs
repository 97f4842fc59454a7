//! `loadbench run`: start each server, probe it, load it with h2load, check
//! every run's replies, measure CPU and memory, and print the table.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::h2load::{self, Load, Summary};
use crate::probe::{self, Call, Endpoint, Sample};
use crate::procfs;
use crate::setup::{self, Bench, CHANNEL, Ports, UID};

/// Arguments of `loadbench run` (`load.sh` maps its environment onto them).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The benchmark directory (written afresh by this run).
    #[arg(long)]
    dir: PathBuf,
    /// The tokengate binary; omitted, tokengate is not measured.
    #[arg(long)]
    tokengate: Option<PathBuf>,
    /// The floor binary (`--example floor`); omitted, no floor.
    #[arg(long)]
    floor: Option<PathBuf>,
    /// The Node peer's folder (server.js with its node_modules); omitted, no peer.
    #[arg(long)]
    node: Option<PathBuf>,
    /// The h2load executable.
    #[arg(long, default_value = "h2load")]
    h2load: PathBuf,
    /// tokengate's calls to measure (the floor and the peer answer IssueRtcToken only).
    #[arg(long, value_delimiter = ',', default_value = "issue,check,renew")]
    calls: Vec<Call>,
    /// Connections x streams per connection.
    #[arg(long, value_delimiter = ',', default_value = "1x1,16x1,1x16,4x4")]
    shapes: Vec<Shape>,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Seconds of warm-up before each shape's runs (not measured; 0: none).
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Measured runs per shape; the table shows their medians.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Extra attempts per shape for runs refused as noisy.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// The most CPU other processes may use during a run, in cores; a run
    /// above it is refused. Negative: never refuse.
    #[arg(long, default_value_t = 0.05)]
    max_other_cpu: f64,
    /// h2load's threads.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Calls of each probe before the runs (every reply decoded and verified).
    #[arg(long, default_value_t = 50)]
    probe_calls: u64,
    /// A TOML file appended to tokengate's config (for example a JWT cache section).
    #[arg(long)]
    config_extra: Option<PathBuf>,
    /// The self-test: h2load sends a broken request (a JWT with a bad
    /// signature; the Node peer a wrong path) while the probes send good ones,
    /// and the run passes only if every load run is reported as failed.
    #[arg(long)]
    self_test: bool,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Connections x concurrent streams per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    connections: u32,
    streams: u32,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (c, m) = s
            .split_once('x')
            .ok_or_else(|| format!("{s}: expected CONNECTIONSxSTREAMS, such as 16x1"))?;
        let parse = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{s}: {v} is not a positive number"))
        };
        Ok(Shape {
            connections: parse(c)?,
            streams: parse(m)?,
        })
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}×{}", self.connections, self.streams)
    }
}

/// The servers under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tokengate,
    Floor,
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tokengate => "tokengate",
            Kind::Floor => "floor (bare tonic)",
            Kind::Node => "Node/Express + agora-token",
        }
    }
}

/// A running server.
#[derive(Debug)]
struct Server {
    kind: Kind,
    child: Child,
    endpoint: Endpoint,
    /// tokengate's admin port, for `/metrics`.
    admin: Option<u16>,
    /// VmRSS once ready, before any call, KiB.
    idle_rss_kib: u64,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Measure {
    req_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    server_cpu_us: f64,
    h2load_cpu_us: f64,
    other_cores: f64,
}

/// How a run ended.
#[derive(Debug, Clone)]
enum Outcome {
    Ok(Measure),
    /// A check failed: these replies were not all successes.
    Failed(Vec<String>),
    /// Other processes used the CPU: no figure.
    Refused(String),
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    kind: Kind,
    call: Call,
    shape: Shape,
    outcomes: Vec<Outcome>,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

impl Row {
    fn measures(&self) -> Vec<Measure> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ok(m) => Some(*m),
                _ => None,
            })
            .collect()
    }

    fn failures(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Failed(reasons) => Some(reasons.join("; ")),
                _ => None,
            })
            .collect()
    }

    /// The median of each figure over the accepted runs; none if a run failed.
    fn median(&self) -> Option<Measure> {
        let measures = self.measures();
        if measures.is_empty() || !self.failures().is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&Measure) -> f64| {
            let mut v: Vec<f64> = measures.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Some(Measure {
            req_per_s: med(&|m| m.req_per_s),
            p50_us: med(&|m| m.p50_us as f64) as u64,
            p99_us: med(&|m| m.p99_us as f64) as u64,
            server_cpu_us: med(&|m| m.server_cpu_us),
            h2load_cpu_us: med(&|m| m.h2load_cpu_us),
            other_cores: measures.iter().map(|m| m.other_cores).fold(0.0, f64::max),
        })
    }
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the benchmark.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let ports = Ports {
        grpc: free_port()?,
        admin: free_port()?,
    };
    let bench = Bench::write(&args.dir, ports, args.config_extra.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hz = procfs::ticks_per_second();
    let mut rows = Vec::new();
    let mut plan: Vec<(Kind, Vec<Call>)> = Vec::new();
    if args.tokengate.is_some() {
        plan.push((Kind::Tokengate, args.calls.clone()));
    }
    if args.floor.is_some() {
        plan.push((Kind::Floor, vec![Call::Issue]));
    }
    if args.node.is_some() {
        plan.push((Kind::Node, vec![Call::Issue]));
    }
    if plan.is_empty() {
        bail!("nothing to measure: give --tokengate, --floor or --node");
    }
    for (kind, calls) in plan {
        let mut server = start(kind, &args, &bench, &runtime)?;
        eprintln!(
            "loadbench: {} ready, idle RSS {} KiB",
            kind.name(),
            server.idle_rss_kib
        );
        let result = measure_server(&mut server, &calls, &args, &bench, &runtime, hz, &mut rows);
        stop(&mut server);
        result?;
    }
    let report = report(&rows, &args);
    println!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)?;
    }
    Ok(verdict(&rows, args.self_test))
}

fn measure_server(
    server: &mut Server,
    calls: &[Call],
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    hz: u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for &call in calls {
        // The known-good replies: every one decoded and its token verified.
        let good = runtime
            .block_on(probe::probe(
                &server.endpoint,
                call,
                bench,
                args.probe_calls,
            ))
            .with_context(|| format!("{} {}: the probe failed", server.kind.name(), call.name()))?;
        eprintln!(
            "loadbench: {} {}: {} replies verified, {}..={} bytes each",
            server.kind.name(),
            call.name(),
            good.count,
            good.min_bytes,
            good.max_bytes
        );
        for &shape in &args.shapes {
            let load = load_for(server, call, shape, args, bench);
            if args.warmup > 0.0 {
                let warm = Load {
                    seconds: args.warmup,
                    ..load.clone()
                };
                warm.run(&args.h2load, &bench.path("warmup.log"))?;
            }
            let mut outcomes = Vec::new();
            let mut attempts = 0;
            while outcomes
                .iter()
                .filter(|o| !matches!(o, Outcome::Refused(_)))
                .count()
                < args.runs as usize
                && attempts < args.runs + args.retries
            {
                attempts += 1;
                let outcome =
                    measure_run(server, call, shape, &load, good, args, bench, runtime, hz)?;
                eprintln!(
                    "loadbench: {} {} {shape} run {attempts}: {}",
                    server.kind.name(),
                    call.name(),
                    describe(&outcome)
                );
                outcomes.push(outcome);
            }
            rows.push(Row {
                kind: server.kind,
                call,
                shape,
                outcomes,
                idle_rss_kib: server.idle_rss_kib,
                peak_rss_kib: procfs::status_kib(server.child.id(), "VmHWM")?,
            });
        }
    }
    Ok(())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(m) => format!(
            "{:.0} req/s, p50 {} µs, p99 {} µs, server {:.1} µs/call, h2load {:.1} µs/call, others {:.3} cores",
            m.req_per_s, m.p50_us, m.p99_us, m.server_cpu_us, m.h2load_cpu_us, m.other_cores
        ),
        Outcome::Failed(reasons) => format!("FAILED: {}", reasons.join("; ")),
        Outcome::Refused(why) => format!("refused: {why}"),
    }
}

/// h2load's command for `call` at `shape` against `server`.
fn load_for(server: &Server, call: Call, shape: Shape, args: &RunArgs, bench: &Bench) -> Load {
    let broken = args.self_test;
    let base = Load {
        url: String::new(),
        body: None,
        headers: Vec::new(),
        h1: false,
        connections: shape.connections,
        streams: shape.streams,
        threads: args.threads,
        seconds: args.seconds,
    };
    match &server.endpoint {
        Endpoint::Grpc(addr) => {
            let jwt = if broken { &bench.bad_jwt } else { &bench.jwt };
            let mut headers = vec![
                "content-type: application/grpc".to_owned(),
                "te: trailers".to_owned(),
            ];
            if call.bearer_header() {
                headers.push(format!("authorization: Bearer {jwt}"));
            }
            Load {
                url: format!("http://{addr}{}", call.path()),
                body: Some(bench.path(call.body_file(broken))),
                headers,
                ..base
            }
        }
        Endpoint::Http(url) => Load {
            url: if broken {
                url.replace("/rtc/", "/no-such-route/")
            } else {
                url.clone()
            },
            h1: true,
            ..base
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn measure_run(
    server: &Server,
    call: Call,
    shape: Shape,
    load: &Load,
    good: Sample,
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    hz: u64,
) -> anyhow::Result<Outcome> {
    let pid = server.child.id();
    let mut reasons = Vec::new();
    // A few verified replies right before the run: the server still answers well.
    if let Err(e) = runtime.block_on(probe::probe(&server.endpoint, call, bench, 3)) {
        reasons.push(format!("the probe before the run failed: {e:#}"));
    }
    let metrics_before = match server.admin {
        Some(port) => Some(runtime.block_on(scrape(port))?),
        None => None,
    };
    let log = bench.path("h2load.log");
    let processes_before = procfs::processes();
    let (self_before, children_before) = procfs::self_ticks()?;
    let server_before = procfs::cpu_ticks(pid)?;
    let busy_before = procfs::machine_busy_ticks()?;
    let started = Instant::now();
    let summary = load.run(&args.h2load, &log);
    let wall = started.elapsed().as_secs_f64();
    let busy_after = procfs::machine_busy_ticks()?;
    let server_after = procfs::cpu_ticks(pid)?;
    let (self_after, children_after) = procfs::self_ticks()?;
    let processes_after = procfs::processes();
    let summary: Summary = match summary {
        Ok(summary) => summary,
        Err(e) => return Ok(Outcome::Failed(vec![format!("{e:#}")])),
    };

    // h2load's own counts.
    if summary.succeeded == 0 {
        reasons.push("no request succeeded".into());
    }
    if summary.failed > 0 || summary.non_2xx > 0 {
        reasons.push(format!(
            "h2load: {} failed/errored/timed out, {} not 2xx",
            summary.failed, summary.non_2xx
        ));
    }
    // The bytes: every success must have carried a known-good reply body. A
    // gRPC error is trailers only (no body), so each failed call takes a
    // whole reply's bytes off the total. The lower bound allows one base64
    // quantum (4 bytes) under the smallest reply the probes saw, as a
    // token's compressed length can vary by a byte; that slack could hide
    // failures below about 1% of the calls, which the exact checks below
    // (tokengate's own counters; the status codes over HTTP/1.1) do not
    // miss. h2load's data total also holds replies it did not count as
    // succeeded (those in flight when the duration ended, a few more over
    // HTTP/1.1), so the upper bound is only a sanity check.
    let in_flight = u64::from(shape.connections * shape.streams);
    let low = good
        .min_bytes
        .saturating_sub(4)
        .saturating_mul(summary.succeeded);
    let high = (good.max_bytes + 4)
        .saturating_mul(summary.succeeded.saturating_add(in_flight))
        .saturating_mul(2);
    if summary.data_bytes < low || summary.data_bytes > high {
        reasons.push(format!(
            "reply bytes: {} for {} replies, known-good replies are {}..={} bytes each ({:.1} on average here)",
            summary.data_bytes,
            summary.succeeded,
            good.min_bytes,
            good.max_bytes,
            summary.data_bytes as f64 / summary.succeeded.max(1) as f64
        ));
    }
    let latencies = h2load::latencies(&log)?;
    if (latencies.len() as u64) < summary.succeeded {
        reasons.push(format!(
            "h2load's log has {} requests for {} successes",
            latencies.len(),
            summary.succeeded
        ));
    }
    // tokengate's own counters: every decision in the run was an allow.
    if let (Some(before), Some(port)) = (&metrics_before, server.admin) {
        let after = runtime.block_on(scrape(port))?;
        let allowed = delta(before, &after, |name, labels| {
            name == "tokengate_decisions_total" && labels.contains(r#"decision="allow""#)
        });
        let other = delta(before, &after, |name, labels| {
            name == "tokengate_decisions_total" && !labels.contains(r#"decision="allow""#)
        });
        if other > 0 {
            reasons.push(format!(
                "tokengate counted {other} decisions other than allow"
            ));
        }
        if allowed < summary.succeeded || allowed > summary.succeeded + in_flight {
            reasons.push(format!(
                "tokengate counted {allowed} allowed calls for {} successes",
                summary.succeeded
            ));
        }
        let not_ok = delta(before, &after, |name, labels| {
            name == "grpc_server_handled_total"
                && labels.contains(&format!(
                    r#"grpc_method="{}""#,
                    call.path().rsplit('/').next().unwrap_or_default()
                ))
                && !labels.contains(r#"grpc_code="OK""#)
        });
        if not_ok > in_flight {
            reasons.push(format!(
                "tokengate answered {not_ok} calls with a non-OK grpc-status"
            ));
        }
    }
    if !reasons.is_empty() {
        return Ok(Outcome::Failed(reasons));
    }

    let calls = summary.succeeded as f64;
    let ticks_us = 1e6 / hz as f64;
    let server_ticks = server_after.saturating_sub(server_before);
    let h2load_ticks = children_after.saturating_sub(children_before);
    let self_ticks = self_after.saturating_sub(self_before);
    let other_ticks = busy_after
        .saturating_sub(busy_before)
        .saturating_sub(server_ticks + h2load_ticks + self_ticks);
    let other_cores = other_ticks as f64 / hz as f64 / wall;
    if args.max_other_cpu >= 0.0 && other_cores > args.max_other_cpu {
        let who = procfs::busiest(
            &processes_before,
            &processes_after,
            &[pid, std::process::id()],
        );
        return Ok(Outcome::Refused(format!(
            "other processes used {other_cores:.3} cores (limit {}): {who}",
            args.max_other_cpu
        )));
    }
    Ok(Outcome::Ok(Measure {
        req_per_s: summary.req_per_s,
        p50_us: h2load::quantile(&latencies, 0.50).unwrap_or(0),
        p99_us: h2load::quantile(&latencies, 0.99).unwrap_or(0),
        server_cpu_us: server_ticks as f64 * ticks_us / calls,
        h2load_cpu_us: h2load_ticks as f64 * ticks_us / calls,
        other_cores,
    }))
}

/// `/metrics` of tokengate's admin port, as (name, labels, value).
async fn scrape(port: u16) -> anyhow::Result<Vec<(String, String, f64)>> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (series, ""),
            };
            Some((name.to_owned(), labels.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// The growth of the series selected by `pick` between two scrapes.
fn delta(
    before: &[(String, String, f64)],
    after: &[(String, String, f64)],
    pick: impl Fn(&str, &str) -> bool,
) -> u64 {
    let sum = |all: &[(String, String, f64)]| -> f64 {
        all.iter()
            .filter(|(n, l, _)| pick(n, l))
            .map(|(_, _, v)| v)
            .sum()
    };
    (sum(after) - sum(before)).max(0.0).round() as u64
}

/// Starts `kind`, waits until it answers, and reads its idle RSS.
fn start(
    kind: Kind,
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Server> {
    let log_path = bench.path(&format!("{kind:?}.log").to_lowercase());
    let log = std::fs::File::create(&log_path)?;
    let (mut command, endpoint, admin) = match kind {
        Kind::Tokengate => {
            let binary = args.tokengate.as_deref().context("no tokengate")?;
            // Its log (stderr) carries an audit line per call, gigabytes over a
            // full run, so it goes to /dev/null (each line is still written).
            // What would stop it at start is shown by check-config first.
            let check = Command::new(binary)
                .arg("check-config")
                .arg(bench.path("tokengate.toml"))
                .output()?;
            if !check.status.success() {
                bail!(
                    "tokengate check-config refused the benchmark's config: {}{}",
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            let mut command = Command::new(binary);
            command
                .arg("serve")
                .arg("--config")
                .arg(bench.path("tokengate.toml"));
            let addr = SocketAddr::from(([127, 0, 0, 1], bench.ports.grpc));
            (command, Endpoint::Grpc(addr), Some(bench.ports.admin))
        }
        Kind::Floor => {
            let port = free_port()?;
            let mut command = Command::new(args.floor.as_deref().context("no floor")?);
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--app-id")
                .arg(setup::APP_ID)
                .arg("--certificate-file")
                .arg(bench.path("certificate"));
            if args.self_test {
                command
                    .arg("--require-authorization")
                    .arg(format!("Bearer {}", bench.jwt));
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            (command, Endpoint::Grpc(addr), None)
        }
        Kind::Node => {
            let port = free_port()?;
            let dir = args.node.as_deref().context("no Node peer")?;
            let certificate = std::fs::read_to_string(bench.path("certificate"))?;
            let mut command = Command::new("node");
            command
                .arg(dir.join("server.js"))
                .env("PORT", port.to_string())
                .env("AGORA_APP_ID", setup::APP_ID)
                .env("AGORA_APP_CERTIFICATE", certificate.trim());
            let url = format!("http://127.0.0.1:{port}/rtc/{CHANNEL}/subscriber/uid/{UID}");
            (command, Endpoint::Http(url), None)
        }
    };
    let stderr = if kind == Kind::Tokengate {
        drop(log);
        std::fs::write(
            &log_path,
            "tokengate's stderr goes to /dev/null during the benchmark\n",
        )?;
        Stdio::null()
    } else {
        Stdio::from(log)
    };
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", kind.name()))?;
    let mut server = Server {
        kind,
        child,
        endpoint,
        admin,
        idle_rss_kib: 0,
    };
    if let Err(e) = wait_ready(&mut server, runtime) {
        stop(&mut server);
        return Err(e);
    }
    // Settled, before the first call.
    std::thread::sleep(Duration::from_millis(500));
    server.idle_rss_kib = procfs::status_kib(server.child.id(), "VmRSS")?;
    Ok(server)
}

/// Until the server accepts connections (and, for tokengate, reports ready).
fn wait_ready(server: &mut Server, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited at start with {status}", server.kind.name());
        }
        let ready = match (&server.endpoint, server.admin) {
            (_, Some(admin)) => runtime.block_on(async {
                reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }),
            (Endpoint::Grpc(addr), None) => std::net::TcpStream::connect(addr).is_ok(),
            (Endpoint::Http(url), None) => {
                runtime.block_on(async { reqwest::get(url.as_str()).await.is_ok() })
            }
        };
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} did not become ready in 30 s", server.kind.name());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM (through `kill`, by the child's pid), then SIGKILL after 5 s.
fn stop(server: &mut Server) {
    let pid = server.child.id().to_string();
    let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// The markdown report: the table of medians, then every run.
fn report(rows: &[Row], args: &RunArgs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} run(s) of {} s per shape after {} s of warm-up; h2load with {} thread(s) on the same machine; \
         medians; a run is refused when other processes used more than {} cores.\n",
        args.runs, args.seconds, args.warmup, args.threads, args.max_other_cpu
    );
    let _ = writeln!(
        out,
        "| server | call | conns × streams | req/s | p50 | p99 | server CPU per call | h2load CPU per call | idle RSS | peak RSS | req/s ÷ floor | CPU per call ÷ floor | req/s ÷ Node | other CPU (max) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let find = |kind: Kind, shape: Shape| {
        rows.iter()
            .find(|r| r.kind == kind && r.shape == shape && r.call == Call::Issue)
            .and_then(Row::median)
    };
    for row in rows {
        let head = format!(
            "| {} | {} | {} |",
            row.kind.name(),
            row.call.name(),
            row.shape
        );
        let failures = row.failures();
        match row.median() {
            Some(m) => {
                let accepted = row.measures().len();
                let partial = if accepted < args.runs as usize {
                    format!(" ({accepted} of {} runs)", args.runs)
                } else {
                    String::new()
                };
                let ratio = |other: Option<Measure>, f: &dyn Fn(&Measure) -> f64| {
                    other.map_or("–".to_owned(), |o| format!("{:.2}", f(&m) / f(&o)))
                };
                let floor = find(Kind::Floor, row.shape).filter(|_| row.kind != Kind::Floor);
                let node = find(Kind::Node, row.shape).filter(|_| row.kind != Kind::Node);
                let _ = writeln!(
                    out,
                    "{head} {:.0}{partial} | {} | {} | {:.1} µs | {:.1} µs | {} | {} | {} | {} | {} | {:.2} cores |",
                    m.req_per_s,
                    micros(m.p50_us as f64),
                    micros(m.p99_us as f64),
                    m.server_cpu_us,
                    m.h2load_cpu_us,
                    mib(row.idle_rss_kib),
                    mib(row.peak_rss_kib),
                    ratio(floor, &|m| m.req_per_s),
                    ratio(floor, &|m| m.server_cpu_us),
                    ratio(node, &|m| m.req_per_s),
                    m.other_cores,
                );
            }
            None if !failures.is_empty() => {
                let _ = writeln!(
                    out,
                    "{head} **FAILED**: {} | | | | | | | | | | |",
                    failures.join(" / ").replace('|', "/")
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{head} **refused: noisy machine** | | | | | | | | | | |"
                );
            }
        }
    }
    let _ = writeln!(out, "\nEvery run:\n");
    for row in rows {
        for (i, outcome) in row.outcomes.iter().enumerate() {
            let _ = writeln!(
                out,
                "- {} {} {} #{}: {}",
                row.kind.name(),
                row.call.name(),
                row.shape,
                i + 1,
                describe(outcome)
            );
        }
    }
    out
}

/// The exit code: 0 when every row has figures (or, for the self-test, when
/// every run was caught as failed), 1 on a failure, 3 when runs were refused.
fn verdict(rows: &[Row], self_test: bool) -> ExitCode {
    if self_test {
        // Each broken run must be caught by what h2load reported (the bytes
        // or its status codes), not only by tokengate's counters: that is the
        // check every server gets, the floor and the Node peer included.
        let caught = rows.iter().all(|row| {
            !row.outcomes.is_empty()
                && row.outcomes.iter().all(|o| match o {
                    Outcome::Failed(reasons) => reasons.iter().any(|r| {
                        r.starts_with("reply bytes")
                            || r.starts_with("h2load:")
                            || r.starts_with("no request succeeded")
                    }),
                    _ => false,
                })
        });
        if caught {
            eprintln!("loadbench: self-test passed: every broken run was reported as failed");
            return ExitCode::SUCCESS;
        }
        eprintln!("loadbench: self-test FAILED: a broken run was reported as a success");
        return ExitCode::from(1);
    }
    if rows.iter().any(|r| !r.failures().is_empty()) {
        return ExitCode::from(1);
    }
    if rows
        .iter()
        .any(|r| r.median().is_none() || r.measures().len() < r.outcomes.len().min(1))
    {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
