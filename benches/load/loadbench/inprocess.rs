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

use std::path::PathBuf;
use std::sync::Arc;

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
    let config = tokengate::config::load_file(&path, &|_| None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .into_parts();
    let jwt = std::fs::read_to_string(args.dir.join("jwt"))?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {jwt}").parse()?;
    let api = runtime.block_on(async {
        let authenticator = Arc::new(tokengate::identity::Authenticator::start(config.issuers)?);
        authenticator.wait_ready().await;
        let gate = Arc::new(tokengate::gate::Gate::new(config.projects, config.policy));
        let metrics = tokengate::metrics::Metrics::new(
            &tokengate::metrics::BuildInfo {
                version: "loadbench",
                git_sha: "loadbench",
                rustc: "loadbench",
            },
            Arc::new(NoIssuers),
        );
        let pipeline =
            tokengate::pipeline::Pipeline::new(gate, authenticator, None).with_metrics(metrics);
        anyhow::Ok(Api::new(Arc::new(pipeline)))
    })?;
    let message = pb::IssueRtcTokenRequest {
        channel: crate::setup::CHANNEL.into(),
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
    eprintln!("loadbench inprocess: {issued} calls, every one issued a token");
    Ok(())
}
