//! The `tokengate` command line: subcommands and their exit codes.

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
    /// Build or inspect Agora tokens offline.
    Token(token::TokenArgs),
}

/// Runs the parsed command line. Errors are printed here (never with a
/// secret: they carry fingerprints at most) and become exit code 2.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Token(args) => token::run(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(token::EXIT_FAILURE)
    })
}
