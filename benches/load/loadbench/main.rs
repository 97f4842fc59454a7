//! `loadbench`: the load benchmark of issue 13, driven by `benches/load/load.sh`.
//!
//! h2load (Debian's `nghttp2-client`) generates the load; this binary does
//! everything around it that needs protobuf, crypto or arithmetic:
//!
//! - `setup` writes a benchmark directory: an RS256 key's JWKS, a JWT minted
//!   with it (and a broken copy), a random App Certificate, a tokengate
//!   config with that issuer, one project, the team-rooms rule and an
//!   ext_authz route, and the gRPC request bodies h2load sends (`-d`).
//! - `run` starts tokengate (one or several replicas, in one or several
//!   config variants: no limit, a local limit, a Redis-shared limit, with its
//!   own redis-server), the floor (`--example floor`) and the Node peer,
//!   probes each with real clients (replies decoded, tokens verified against
//!   the certificate), drives them with h2load, checks that every reply was a
//!   success (h2load counts any HTTP 200 as one, whatever the grpc-status),
//!   measures CPU and memory from `/proc`, refuses runs during which other
//!   processes used the CPU, and prints a markdown table.
//! - `inprocess` runs the in-process path (authenticate, decide, build,
//!   reply, audit, metrics) N times, for callgrind's instruction counts
//!   (`benches/load/callgrind.sh`).
//!
//! It is an example target so that it is built by the release profile next
//! to the server it measures, lands at a fixed path
//! (`target/<profile>/examples/loadbench`), can use the dev-dependencies, and
//! is compiled by `cargo test` and clippy, so it cannot rot.

mod h2load;
mod inprocess;
mod metrics;
mod probe;
mod procfs;
mod run;
mod setup;
mod variant;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadbench", about = "The tokengate load benchmark (issue 13)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a benchmark directory: keys, JWT, config and request bodies.
    Setup(SetupArgs),
    /// Run the benchmark and print the results table.
    Run(Box<run::RunArgs>),
    /// Call the in-process IssueRtcToken path N times (for callgrind).
    Inprocess(inprocess::InprocessArgs),
}

#[derive(Debug, clap::Args)]
struct SetupArgs {
    /// The directory to write (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// tokengate's gRPC port in the config.
    #[arg(long, default_value_t = 50071)]
    grpc_port: u16,
    /// tokengate's admin port in the config.
    #[arg(long, default_value_t = 9171)]
    admin_port: u16,
    /// A TOML file appended to the config (for example a JWT cache section).
    #[arg(long)]
    config_extra: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::Bench::write(
            &args.dir,
            setup::Ports {
                grpc: args.grpc_port,
                admin: args.admin_port,
            },
            args.config_extra.as_deref(),
        )
        .map(|_| ExitCode::SUCCESS),
        Command::Run(args) => run::run(*args),
        Command::Inprocess(args) => inprocess::run(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        eprintln!("loadbench: error: {e:#}");
        ExitCode::from(2)
    })
}
