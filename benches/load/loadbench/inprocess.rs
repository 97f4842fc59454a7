//! The in-process path, for instruction counts: the `IssueRtcToken` handler
//! as `serve` wires it (the benchmark's config loaded by the library, the
//! JWKS file, the pipeline counting into metrics, the audit event written as
//! a JSON line to stdout by the same logging setup), called N times on one
//! thread. No transport: the request is a decoded message with its
//! `authorization` metadata, the reply a message.
//!
//! `benches/load/callgrind.sh` runs it under callgrind with two values of
//! `--calls` and divides the difference of the instruction totals by the
//! difference of the calls, so the setup (config, key parsing, runtime)
//! cancels out.
//!
//! `--fact` measures what a cached fact costs a call (the facts issue: at
//! most 2 µs): `literal` calls the webinar attendee rule (deploy/examples/
//! policy.toml) on `webinar-launch` with its condition over a literal list
//! of the shape the `tickets` fact returns, `hit` the same rule reading
//! `facts.tickets` from an http fact whose cache holds the answer (the
//! source, a loopback server on a thread of this process, is asked once,
//! at the first call, and that is checked). Both configs declare the fact,
//! so the two differ only in the condition reading it.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, ensure};
use tokengate::grpc::pb;
use tokengate::grpc::pb::token_service_server::TokenService as _;
use tokengate::grpc::service::Api;

/// Arguments of `loadbench inprocess`.
#[derive(Debug, clap::Args)]
pub struct InprocessArgs {
    /// The benchmark directory (`loadbench setup`).
    #[arg(long)]
    dir: PathBuf,
    /// How many calls to make.
    #[arg(long)]
    calls: u64,
    /// `none`: the team-room rule; `literal` or `hit`: the webinar rule
    /// without and with a cached fact.
    #[arg(long, value_enum, default_value_t = Fact::None)]
    fact: Fact,
}

/// What the calls' rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fact {
    /// The benchmark's team-room rule, no fact declared.
    None,
    /// The webinar rule, its condition over a literal list.
    Literal,
    /// The webinar rule reading `facts.tickets`, every call a cache hit.
    Hit,
}

/// The `tickets` fact's answer, as the example's SQL returns it.
const TICKETS: &str = r#"[{"tier":"standard"}]"#;

/// The webinar attendee rule with `condition`, for the benchmark's issuer and project.
fn webinar_rule(condition: &str) -> String {
    format!(
        r#"
[[rules]]
name = "webinar attendees"
actions = ["rtc"]
issuer = "{issuer}"
channel = "webinar-{{event}}"
condition = '{condition}'
project = "main"
max_role = "subscriber"
account_claim = "sub"
default_ttl = "2h"
max_ttl = "4h"

[[facts]]
name = "tickets"
kind = "http"
url = "http://{{source}}/events/{{captures.event}}/tickets/{{caller.subject}}"
timeout = "1s"
ttl = "1h"
negative_ttl = "1h"
"#,
        issuer = crate::setup::ISSUER,
    )
}

/// A loopback HTTP server answering every request with the tickets, on a
/// thread; returns its address and how many requests it has answered.
fn tickets_source() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let served = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&served);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{TICKETS}",
                TICKETS.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    Ok((addr, served))
}

/// No issuer states to report: scrapes are not on the measured path.
#[derive(Debug)]
struct NoIssuers;

impl tokengate::metrics::IssuerSnapshot for NoIssuers {
    fn issuers(&self) -> Vec<tokengate::metrics::IssuerState> {
        Vec::new()
    }
}

/// Loads the config, then calls the handler `calls` times; every reply must carry a token.
pub fn run(args: &InprocessArgs) -> anyhow::Result<()> {
    // Held to the end: the writer thread writes the audit lines as serve's does.
    let _log = tokengate::cli::logging::init(tokengate::cli::logging::LogFormat::Json);
    tokengate::identity::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let path = args.dir.join("tokengate.toml");
    let mut text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let source = match args.fact {
        Fact::None => None,
        fact => {
            let (addr, served) = tickets_source()?;
            let condition = if fact == Fact::Hit {
                r#"facts.tickets.exists(t, t.tier != "refunded")"#.to_owned()
            } else {
                format!(r#"{TICKETS}.exists(t, t.tier != "refunded")"#)
            };
            // The webinar rule first: the team-room rule's channel differs anyway.
            text.push_str(&webinar_rule(&condition).replace("{source}", &addr.to_string()));
            Some(served)
        }
    };
    let config = tokengate::config::load(&text, &|_| None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .into_parts();
    let jwt = std::fs::read_to_string(args.dir.join("jwt"))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {jwt}").parse()?;
    let api = runtime.block_on(async {
        let authenticator = Arc::new(tokengate::identity::Authenticator::start(config.issuers)?);
        authenticator.wait_ready().await;
        let facts = tokengate::facts::FactSources::start(config.facts)?;
        let gate = Arc::new(tokengate::gate::Gate::new(config.projects, config.policy));
        let metrics = tokengate::metrics::Metrics::new(
            &tokengate::metrics::BuildInfo {
                version: "loadbench",
                git_sha: "loadbench",
                rustc: "loadbench",
            },
            Arc::new(NoIssuers),
        );
        // As `serve` builds it: the live state a reload swaps, with facts.
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(tokengate::pipeline::Live {
            gate,
            authenticator,
            routes: None,
            trusted_proxies: None,
            limits: Arc::new(config.rate_limits),
            facts,
        }));
        let pipeline = tokengate::pipeline::Pipeline::over(live).with_metrics(metrics);
        anyhow::Ok(Api::new(Arc::new(pipeline)))
    })?;
    let channel = if args.fact == Fact::None {
        crate::setup::CHANNEL
    } else {
        crate::setup::WEBINAR_CHANNEL
    };
    let message = pb::IssueRtcTokenRequest {
        channel: channel.into(),
        role: pb::Role::Subscriber as i32,
        ..Default::default()
    };
    let mut issued = 0_u64;
    runtime.block_on(async {
        for _ in 0..args.calls {
            let mut request = tonic::Request::new(message.clone());
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            let reply = api
                .issue_rtc_token(request)
                .await
                .context("IssueRtcToken")?;
            if reply.get_ref().issued.is_some() {
                issued += 1;
            }
        }
        anyhow::Ok(())
    })?;
    ensure!(
        issued == args.calls,
        "{issued} of {} calls issued a token",
        args.calls
    );
    // A hit asks the source once (the first call), the literal never.
    if let Some(served) = source {
        let served = served.load(Ordering::SeqCst);
        let expected = u64::from(args.fact == Fact::Hit);
        ensure!(
            served == expected,
            "the tickets source answered {served} requests, not {expected}"
        );
    }
    eprintln!("loadbench inprocess: {issued} calls, every one issued a token");
    Ok(())
}
