//! The `tokengate` binary: parse the command line and run it.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    tokengate::cli::run(tokengate::cli::Cli::parse())
}
