//! The `tokengate` command line: subcommands and their exit codes.

pub mod dev;
pub mod dev_issuer;
pub mod logging;
pub mod serve;
pub mod telemetry;
pub mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// tokengate: authenticate callers by JWT, apply per-channel rules, issue Agora tokens.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service with a config file.
    Serve(serve::ServeArgs),
    /// Validate a config file and print a summary without secrets.
    CheckConfig(serve::CheckConfigArgs),
    /// Run the embedded development default (never in production).
    Dev(dev::DevArgs),
    /// Build or inspect Agora tokens offline.
    Token(token::TokenArgs),
}

/// Runs the parsed command line. Errors are printed here (never with a
/// secret: they carry fingerprints at most) and become exit code 2.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::serve(&args),
        Command::CheckConfig(args) => Ok(serve::check_config(&args)),
        Command::Dev(args) => dev::run(args),
        Command::Token(args) => token::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(token::EXIT_FAILURE)
    })
}

/// Completes on SIGTERM or SIGINT (Ctrl-C): the signal to drain and exit 0.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; draining"),
        _ = terminate => tracing::info!("SIGTERM received; draining"),
    }
}
