//! `loadbench run`: start each server, probe it, load it with h2load, check
//! every run's replies, measure CPU and memory, and print the table.
//!
//! tokengate can run as several replicas at once (`--replicas`), each loaded
//! by its own h2load of the same shape, and in several config variants
//! (`--variants`: no limit, a local limit, a Redis-shared one), so one run
//! compares what a limit and cluster mode cost.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::h2load::{self, Load, Running, Summary};
use crate::metrics::{self, Series, delta};
use crate::probe::{self, Call, Endpoint, Sample};
use crate::procfs;
use crate::setup::{self, Bench, CHANNEL, Ports, UID};
use crate::variant::{RedisServer, Variant};

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
    /// tokengate replicas run and loaded at once, each with its own ports
    /// and its own h2load of each shape; a list measures each count in turn.
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    replicas: Vec<u32>,
    /// tokengate's config variants, each measured in turn: `none`, `local`
    /// (a generous local limit), `redis` (a generous limit shared through
    /// the benchmark's own redis-server).
    #[arg(long, value_delimiter = ',', default_value = "none")]
    variants: Vec<Variant>,
    /// The redis-server executable, started for the `redis` variant.
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
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
    /// Its name in messages (the replica's number when there are several).
    name: String,
    child: Child,
    endpoint: Endpoint,
    /// tokengate's admin port, for `/metrics`.
    admin: Option<u16>,
    /// VmRSS once ready, before any call, KiB.
    idle_rss_kib: u64,
}

/// What is measured together: a server, its calls, and for tokengate the
/// replica count and config variant.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    calls: Vec<Call>,
    replicas: u32,
    variant: Variant,
}

/// One measured run (of every replica at once).
#[derive(Debug, Clone)]
struct Measure {
    /// The replicas' h2load req/s, summed.
    req_per_s: f64,
    /// Each replica's median latency.
    p50_us: Vec<u64>,
    /// Each replica's 99th percentile latency.
    p99_us: Vec<u64>,
    /// The replicas' CPU over every call they served.
    server_cpu_us: f64,
    /// redis-server's CPU over every call, for the `redis` variant.
    redis_cpu_us: Option<f64>,
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
    replicas: u32,
    variant: Variant,
    call: Call,
    shape: Shape,
    outcomes: Vec<Outcome>,
    /// The largest replica's.
    idle_rss_kib: u64,
    /// The largest replica's.
    peak_rss_kib: u64,
}

impl Row {
    fn measures(&self) -> Vec<Measure> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Ok(m) => Some(m.clone()),
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

    /// The median of each figure over the accepted runs (each replica's
    /// latencies apart); none if a run failed.
    fn median(&self) -> Option<Measure> {
        let measures = self.measures();
        if measures.is_empty() || !self.failures().is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&Measure) -> Option<f64>| {
            let mut v: Vec<f64> = measures.iter().filter_map(f).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let per_replica = |f: &dyn Fn(&Measure) -> &Vec<u64>| -> Vec<u64> {
            (0..f(&measures[0]).len())
                .map(|i| med(&|m| f(m).get(i).map(|v| *v as f64)).unwrap_or(0.0) as u64)
                .collect()
        };
        Some(Measure {
            req_per_s: med(&|m| Some(m.req_per_s)).unwrap_or(0.0),
            p50_us: per_replica(&|m| &m.p50_us),
            p99_us: per_replica(&|m| &m.p99_us),
            server_cpu_us: med(&|m| Some(m.server_cpu_us)).unwrap_or(0.0),
            redis_cpu_us: med(&|m| m.redis_cpu_us),
            h2load_cpu_us: med(&|m| Some(m.h2load_cpu_us)).unwrap_or(0.0),
            other_cores: measures.iter().map(|m| m.other_cores).fold(0.0, f64::max),
        })
    }

    /// The server column: tokengate's replica count and variant when the
    /// run compares several (the default run's rows read as before).
    fn label(&self, args: &RunArgs) -> String {
        let mut label = self.kind.name().to_owned();
        if self.kind == Kind::Tokengate {
            if args.replicas != [1] {
                let s = if self.replicas == 1 { "" } else { "s" };
                label.push_str(&format!(", {} replica{s}", self.replicas));
            }
            if args.variants != [Variant::NoLimit] {
                label.push_str(", ");
                label.push_str(self.variant.label());
            }
        }
        label
    }
}

/// `n` distinct free loopback ports (all bound at once, then released for
/// the servers to take).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// Runs the benchmark.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // tokengate.toml is the directory's base config (`tokengate serve` by
    // hand); each replica of a run gets its own copy with its own ports.
    let bench = Bench::write(
        &args.dir,
        setup::DEFAULT_PORTS,
        args.config_extra.as_deref(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let hz = procfs::ticks_per_second();
    let mut rows = Vec::new();
    let mut plan: Vec<Target> = Vec::new();
    if args.tokengate.is_some() {
        for &replicas in &args.replicas {
            for &variant in &args.variants {
                plan.push(Target {
                    kind: Kind::Tokengate,
                    calls: args.calls.clone(),
                    replicas,
                    variant,
                });
            }
        }
    }
    for (given, kind) in [
        (args.floor.is_some(), Kind::Floor),
        (args.node.is_some(), Kind::Node),
    ] {
        if given {
            plan.push(Target {
                kind,
                calls: vec![Call::Issue],
                replicas: 1,
                variant: Variant::NoLimit,
            });
        }
    }
    if plan.is_empty() {
        bail!("nothing to measure: give --tokengate, --floor or --node");
    }
    // One redis-server for every `redis` row, stopped when the run ends.
    let redis = if plan.iter().any(|t| t.variant == Variant::Redis) {
        let server = RedisServer::start(&args.redis_server, &bench.path("redis"), free_port()?)?;
        eprintln!("loadbench: redis-server ready at {}", server.url());
        Some(server)
    } else {
        None
    };
    for target in plan {
        let mut servers = start_all(&target, &args, &bench, &runtime, redis.as_ref())?;
        for server in &servers {
            eprintln!(
                "loadbench: {} ready, idle RSS {} KiB",
                server.name, server.idle_rss_kib
            );
        }
        let redis = redis.as_ref().filter(|_| target.variant == Variant::Redis);
        let result = measure_target(
            &servers, &target, &args, &bench, &runtime, hz, redis, &mut rows,
        );
        stop_all(&mut servers);
        result?;
    }
    drop(redis);
    let report = report(&rows, &args);
    println!("{report}");
    if let Some(path) = &args.output {
        std::fs::write(path, &report)?;
    }
    Ok(verdict(&rows, args.self_test))
}

#[allow(clippy::too_many_arguments)]
fn measure_target(
    servers: &[Server],
    target: &Target,
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    hz: u64,
    redis: Option<&RedisServer>,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for &call in &target.calls {
        // The known-good replies of every replica: each one decoded and its
        // token verified.
        let mut good: Option<Sample> = None;
        for server in servers.iter() {
            let sample = runtime
                .block_on(probe::probe(
                    &server.endpoint,
                    call,
                    bench,
                    args.probe_calls,
                ))
                .with_context(|| format!("{} {}: the probe failed", server.name, call.name()))?;
            eprintln!(
                "loadbench: {} {}: {} replies verified, {}..={} bytes each",
                server.name,
                call.name(),
                sample.count,
                sample.min_bytes,
                sample.max_bytes
            );
            good = Some(match good {
                None => sample,
                Some(g) => Sample {
                    count: g.count + sample.count,
                    min_bytes: g.min_bytes.min(sample.min_bytes),
                    max_bytes: g.max_bytes.max(sample.max_bytes),
                },
            });
        }
        let good = good.context("no server to probe")?;
        let name = match servers {
            [one] => one.name.clone(),
            all => format!(
                "{} ({}, {} replicas)",
                target.kind.name(),
                target.variant.label(),
                all.len()
            ),
        };
        for &shape in &args.shapes {
            let loads: Vec<Load> = servers
                .iter()
                .map(|server| load_for(server, call, shape, args, bench))
                .collect();
            if args.warmup > 0.0 {
                let warm: Vec<Load> = loads
                    .iter()
                    .map(|load| Load {
                        seconds: args.warmup,
                        ..load.clone()
                    })
                    .collect();
                let logs = logs(bench, "warmup", warm.len());
                for summary in run_all(&warm, &args.h2load, &logs) {
                    summary?;
                }
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
                let outcome = measure_run(
                    servers,
                    call,
                    shape,
                    &loads,
                    good,
                    target.variant,
                    redis,
                    args,
                    bench,
                    runtime,
                    hz,
                )?;
                eprintln!(
                    "loadbench: {name} {} {shape} run {attempts}: {}",
                    call.name(),
                    describe(&outcome)
                );
                outcomes.push(outcome);
            }
            let mut peak_rss_kib = 0;
            for server in servers.iter() {
                peak_rss_kib = peak_rss_kib.max(procfs::status_kib(server.child.id(), "VmHWM")?);
            }
            rows.push(Row {
                kind: target.kind,
                replicas: target.replicas,
                variant: target.variant,
                call,
                shape,
                outcomes,
                idle_rss_kib: servers.iter().map(|s| s.idle_rss_kib).max().unwrap_or(0),
                peak_rss_kib,
            });
        }
    }
    Ok(())
}

/// `<stem>-<i>.log` of the benchmark directory, one per replica.
fn logs(bench: &Bench, stem: &str, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| bench.path(&format!("{stem}-{i}.log")))
        .collect()
}

/// Every load at once, one h2load each; their summaries in order.
fn run_all(loads: &[Load], h2load: &Path, logs: &[PathBuf]) -> Vec<anyhow::Result<Summary>> {
    let running: Vec<anyhow::Result<Running>> = loads
        .iter()
        .zip(logs)
        .map(|(load, log)| load.spawn(h2load, log))
        .collect();
    running
        .into_iter()
        .map(|r| r.and_then(Running::wait))
        .collect()
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(m) => format!(
            "{:.0} req/s, p50 {}, p99 {}, server {:.1} µs/call{}, h2load {:.1} µs/call, others {:.3} cores",
            m.req_per_s,
            per_replica(&m.p50_us),
            per_replica(&m.p99_us),
            m.server_cpu_us,
            m.redis_cpu_us
                .map_or(String::new(), |r| format!(", redis-server {r:.1} µs/call")),
            m.h2load_cpu_us,
            m.other_cores
        ),
        Outcome::Failed(reasons) => format!("FAILED: {}", reasons.join("; ")),
        Outcome::Refused(why) => format!("refused: {why}"),
    }
}

/// Each replica's latency, in replica order.
fn per_replica(us: &[u64]) -> String {
    us.iter()
        .map(|us| micros(*us as f64))
        .collect::<Vec<_>>()
        .join(" / ")
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
    servers: &[Server],
    call: Call,
    shape: Shape,
    loads: &[Load],
    good: Sample,
    variant: Variant,
    redis: Option<&RedisServer>,
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    hz: u64,
) -> anyhow::Result<Outcome> {
    let n = servers.len();
    // A reason names its replica at its end, so the self-test still reads
    // what kind of check caught a run from its start.
    let of = |i: usize| {
        if n > 1 {
            format!(" (replica {} of {n})", i + 1)
        } else {
            String::new()
        }
    };
    let pids: Vec<u32> = servers.iter().map(|s| s.child.id()).collect();
    let mut reasons = Vec::new();
    // A few verified replies right before the run: every replica still answers well.
    for (i, server) in servers.iter().enumerate() {
        if let Err(e) = runtime.block_on(probe::probe(&server.endpoint, call, bench, 3)) {
            reasons.push(format!("the probe before the run failed{}: {e:#}", of(i)));
        }
    }
    let mut metrics_before: Vec<Option<Vec<Series>>> = Vec::new();
    for server in servers {
        metrics_before.push(match server.admin {
            Some(port) => Some(runtime.block_on(metrics::scrape(port))?),
            None => None,
        });
    }
    let scripts_before = redis.map(RedisServer::script_calls).transpose()?;
    let logs = logs(bench, "h2load", n);
    let redis_pid = redis.map(RedisServer::pid);
    let processes_before = procfs::processes();
    let (self_before, children_before) = procfs::self_ticks()?;
    let server_before = cpu_ticks(&pids)?;
    let redis_before = cpu_ticks(redis_pid.as_slice())?;
    let busy_before = procfs::machine_busy_ticks()?;
    let started = Instant::now();
    let summaries = run_all(loads, &args.h2load, &logs);
    let wall = started.elapsed().as_secs_f64();
    let busy_after = procfs::machine_busy_ticks()?;
    let redis_after = cpu_ticks(redis_pid.as_slice())?;
    let server_after = cpu_ticks(&pids)?;
    let (self_after, children_after) = procfs::self_ticks()?;
    let processes_after = procfs::processes();
    let mut errors = Vec::new();
    let mut ok = Vec::new();
    for (i, summary) in summaries.into_iter().enumerate() {
        match summary {
            Ok(summary) => ok.push(summary),
            Err(e) => errors.push(format!("{e:#}{}", of(i))),
        }
    }
    if !errors.is_empty() {
        return Ok(Outcome::Failed(errors));
    }

    let in_flight = u64::from(shape.connections * shape.streams);
    let mut p50_us = Vec::new();
    let mut p99_us = Vec::new();
    for (i, summary) in ok.iter().enumerate() {
        let tag = of(i);
        let replica = check_replica(
            &servers[i],
            call,
            summary,
            good,
            in_flight,
            &logs[i],
            metrics_before[i].as_deref(),
            variant,
            runtime,
        )?;
        reasons.extend(replica.reasons.into_iter().map(|r| format!("{r}{tag}")));
        p50_us.push(h2load::quantile(&replica.latencies, 0.50).unwrap_or(0));
        p99_us.push(h2load::quantile(&replica.latencies, 0.99).unwrap_or(0));
    }
    let served: u64 = ok.iter().map(|s| s.succeeded).sum();
    // Redis's own count: every call the replicas served ran the limit's script.
    if let (Some(before), Some(redis)) = (scripts_before, redis) {
        let scripts = redis.script_calls()?.saturating_sub(before);
        if scripts < served {
            reasons.push(format!(
                "redis-server ran {scripts} scripts for {served} successes"
            ));
        }
    }
    if !reasons.is_empty() {
        return Ok(Outcome::Failed(reasons));
    }

    let calls = served as f64;
    let ticks_us = 1e6 / hz as f64;
    let server_ticks = server_after.saturating_sub(server_before);
    let redis_ticks = redis_after.saturating_sub(redis_before);
    let h2load_ticks = children_after.saturating_sub(children_before);
    let self_ticks = self_after.saturating_sub(self_before);
    let other_ticks = busy_after
        .saturating_sub(busy_before)
        .saturating_sub(server_ticks + redis_ticks + h2load_ticks + self_ticks);
    let other_cores = other_ticks as f64 / hz as f64 / wall;
    if args.max_other_cpu >= 0.0 && other_cores > args.max_other_cpu {
        let mut ours = pids.clone();
        ours.extend(redis_pid);
        ours.push(std::process::id());
        let who = procfs::busiest(&processes_before, &processes_after, &ours);
        return Ok(Outcome::Refused(format!(
            "other processes used {other_cores:.3} cores (limit {}): {who}",
            args.max_other_cpu
        )));
    }
    Ok(Outcome::Ok(Measure {
        req_per_s: ok.iter().map(|s| s.req_per_s).sum(),
        p50_us,
        p99_us,
        server_cpu_us: server_ticks as f64 * ticks_us / calls,
        redis_cpu_us: redis.map(|_| redis_ticks as f64 * ticks_us / calls),
        h2load_cpu_us: h2load_ticks as f64 * ticks_us / calls,
        other_cores,
    }))
}

/// The CPU ticks of these processes, summed.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|pid| procfs::cpu_ticks(*pid)).sum()
}

/// What one replica's run showed: why it failed (if it did), and the
/// latencies of its h2load's log.
struct Replica {
    reasons: Vec<String>,
    latencies: Vec<u64>,
}

/// The checks of one replica's run against its own h2load's summary.
#[allow(clippy::too_many_arguments)]
fn check_replica(
    server: &Server,
    call: Call,
    summary: &Summary,
    good: Sample,
    in_flight: u64,
    log: &Path,
    metrics_before: Option<&[Series]>,
    variant: Variant,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Replica> {
    let mut reasons = Vec::new();
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
    let latencies = h2load::latencies(log)?;
    if (latencies.len() as u64) < summary.succeeded {
        reasons.push(format!(
            "h2load's log has {} requests for {} successes",
            latencies.len(),
            summary.succeeded
        ));
    }
    // tokengate's own counters: every decision in the run was an allow.
    if let (Some(before), Some(port)) = (metrics_before, server.admin) {
        let after = runtime.block_on(metrics::scrape(port))?;
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
        // The variant's limit checked every call where it says.
        reasons.extend(variant.check(before, &after, summary.succeeded, in_flight));
    }
    Ok(Replica { reasons, latencies })
}

/// Starts the target's servers (tokengate: its replicas, each with its own
/// config and ports), waits until each answers, and reads their idle RSS.
fn start_all(
    target: &Target,
    args: &RunArgs,
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    redis: Option<&RedisServer>,
) -> anyhow::Result<Vec<Server>> {
    // Every replica's ports at once: one chosen after another replica was
    // started could be one that replica has not bound yet.
    let ports = match target.kind {
        Kind::Tokengate => free_ports(2 * target.replicas as usize)?
            .chunks(2)
            .map(|p| {
                Some(Ports {
                    grpc: p[0],
                    admin: p[1],
                })
            })
            .collect(),
        _ => vec![None],
    };
    let mut servers = Vec::new();
    let mut result = Ok(());
    for (i, ports) in (0..).zip(ports) {
        match spawn(target, i, ports, args, bench, redis) {
            Ok(server) => servers.push(server),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        result = servers
            .iter_mut()
            .try_for_each(|server| wait_ready(server, runtime));
    }
    if result.is_ok() {
        // Settled, before the first call.
        std::thread::sleep(Duration::from_millis(500));
        result = servers.iter_mut().try_for_each(|server| {
            server.idle_rss_kib = procfs::status_kib(server.child.id(), "VmRSS")?;
            Ok(())
        });
    }
    match result {
        Ok(()) => Ok(servers),
        Err(e) => {
            stop_all(&mut servers);
            Err(e)
        }
    }
}

/// Starts replica `i` of the target (not yet ready); tokengate listens on `ports`.
fn spawn(
    target: &Target,
    i: u32,
    ports: Option<Ports>,
    args: &RunArgs,
    bench: &Bench,
    redis: Option<&RedisServer>,
) -> anyhow::Result<Server> {
    let kind = target.kind;
    let name = if target.replicas > 1 {
        format!(
            "{} ({}, replica {} of {})",
            kind.name(),
            target.variant.label(),
            i + 1,
            target.replicas
        )
    } else if kind == Kind::Tokengate && target.variant != Variant::NoLimit {
        format!("{} ({})", kind.name(), target.variant.label())
    } else {
        kind.name().to_owned()
    };
    let stem = match kind {
        Kind::Tokengate => format!(
            "tokengate-{}-{}-{i}",
            target.variant.file_name(),
            target.replicas
        ),
        _ => format!("{kind:?}").to_lowercase(),
    };
    let log_path = bench.path(&format!("{stem}.log"));
    let log = std::fs::File::create(&log_path)?;
    let (mut command, endpoint, admin) = match kind {
        Kind::Tokengate => {
            let binary = args.tokengate.as_deref().context("no tokengate")?;
            let ports = ports.context("no ports for tokengate")?;
            let tail = target
                .variant
                .config_tail(redis.map(RedisServer::url).as_deref(), target.replicas)?;
            let config = bench.write_config(&format!("{stem}.toml"), ports, &tail)?;
            // Its log (stderr) carries an audit line per call, gigabytes over a
            // full run, so it goes to /dev/null (each line is still written).
            // What would stop it at start is shown by check-config first.
            let check = Command::new(binary)
                .arg("check-config")
                .arg(&config)
                .output()?;
            if !check.status.success() {
                bail!(
                    "tokengate check-config refused the benchmark's config {}: {}{}",
                    config.display(),
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
            }
            let mut command = Command::new(binary);
            command.arg("serve").arg("--config").arg(&config);
            let addr = SocketAddr::from(([127, 0, 0, 1], ports.grpc));
            (command, Endpoint::Grpc(addr), Some(ports.admin))
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
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Server {
        name,
        child,
        endpoint,
        admin,
        idle_rss_kib: 0,
    })
}

/// Until the server accepts connections (and, for tokengate, reports ready).
fn wait_ready(server: &mut Server, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited at start with {status}", server.name);
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
            bail!("{} did not become ready in 30 s", server.name);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to each (through `kill`, by the child's pid), then SIGKILL
/// to those still running after 5 s.
fn stop_all(servers: &mut [Server]) {
    for server in servers.iter() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(server.child.id().to_string())
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for server in servers.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(server.child.try_wait(), Ok(Some(_))) {
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
    }
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
    if args.replicas != [1] {
        let _ = writeln!(
            out,
            "With several tokengate replicas, each is loaded by its own h2load of the shape shown, all at once: \
             req/s is their sum, p50 and p99 are each replica's (in order), server CPU per call is every \
             replica's CPU over every call, RSS the largest replica's.\n"
        );
    }
    if args.variants != [Variant::NoLimit] {
        let names: Vec<&str> = args.variants.iter().map(|v| v.label()).collect();
        let _ = writeln!(
            out,
            "tokengate's config variants: {}. A local limit is counted in process; a Redis limit in cluster \
             mode, through one redis-server on loopback that the replicas share, whose CPU per call the CPU \
             column adds. Each limit is `rate = \"1000000/s\"`, `burst = 1000000`, key `caller`: every call \
             is checked once, where the variant says (tokengate's counters and Redis's own were checked after \
             each run), and admitted.\n",
            names.join(", ")
        );
    }
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
            row.label(args),
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
                // The floor and the peer are one process: req/s of several
                // replicas is not compared with theirs.
                let single = |other: Option<Measure>| other.filter(|_| row.replicas == 1);
                let _ = writeln!(
                    out,
                    "{head} {:.0}{partial} | {} | {} | {:.1} µs{} | {:.1} µs | {} | {} | {} | {} | {} | {:.2} cores |",
                    m.req_per_s,
                    per_replica(&m.p50_us),
                    per_replica(&m.p99_us),
                    m.server_cpu_us,
                    m.redis_cpu_us
                        .map_or(String::new(), |r| format!(" + Redis {r:.1} µs")),
                    m.h2load_cpu_us,
                    mib(row.idle_rss_kib),
                    mib(row.peak_rss_kib),
                    ratio(single(floor.clone()), &|m| m.req_per_s),
                    ratio(floor, &|m| m.server_cpu_us),
                    ratio(single(node), &|m| m.req_per_s),
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
    costs(&mut out, rows, args);
    let _ = writeln!(out, "\nEvery run:\n");
    for row in rows {
        for (i, outcome) in row.outcomes.iter().enumerate() {
            let _ = writeln!(
                out,
                "- {} {} {} #{}: {}",
                row.label(args),
                row.call.name(),
                row.shape,
                i + 1,
                describe(outcome)
            );
        }
    }
    out
}

/// What a limit costs: each limited tokengate row against the row without
/// a limit of the same replica count, call and shape, from the same run.
fn costs(out: &mut String, rows: &[Row], args: &RunArgs) {
    if !args.variants.contains(&Variant::NoLimit) || args.variants == [Variant::NoLimit] {
        return;
    }
    let mut lines = Vec::new();
    for row in rows.iter().filter(|r| r.variant != Variant::NoLimit) {
        let base = rows.iter().find(|r| {
            r.kind == row.kind
                && r.variant == Variant::NoLimit
                && r.replicas == row.replicas
                && r.call == row.call
                && r.shape == row.shape
        });
        let (Some(m), Some(b)) = (row.median(), base.and_then(Row::median)) else {
            continue;
        };
        let cpu = |m: &Measure| m.server_cpu_us + m.redis_cpu_us.unwrap_or(0.0);
        let p50 = |m: &Measure| m.p50_us.iter().sum::<u64>() as f64 / m.p50_us.len().max(1) as f64;
        lines.push(format!(
            "| {} | {} | {} | {} | {:.2} | {:+.1} µs | {:+.1} µs | {:+.0} µs |",
            row.variant.label(),
            row.replicas,
            row.call.name(),
            row.shape,
            m.req_per_s / b.req_per_s,
            m.server_cpu_us - b.server_cpu_us,
            cpu(&m) - cpu(&b),
            p50(&m) - p50(&b),
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nWhat a limit costs, against no limit with the same replicas, call and shape (medians of this run; \
         p50 averaged over the replicas):\n"
    );
    let _ = writeln!(
        out,
        "| limit | replicas | call | conns × streams | req/s ÷ no limit | tokengate CPU per call | with redis-server's | p50 |"
    );
    let _ = writeln!(out, "|---|---:|---|---|---:|---:|---:|---:|");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
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
