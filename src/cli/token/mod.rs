//! `tokengate token build|inspect`: the offline token command line.
//!
//! The only edge of the token core that reads the clock, the OS random source,
//! files and the environment: it turns flags into builder calls with an
//! explicit `issue_ts` and `salt`. The App Certificate comes from a file or
//! the `AGORA_APP_CERTIFICATE` environment variable, never from a flag whose
//! value would show in `ps`, and it is never printed.
//!
//! One file per job: `args` (the clap structs), `build` (the builders),
//! `spec` (the `--spec` JSON form) and `inspect` (printing an inspection
//! and the decoded JSON views, [`decoded_007`] and [`decoded_006`], which
//! live here rather than in `token`, so the pure core needs no serde).

mod args;
mod build;
mod inspect;
mod spec;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::token::AppCertificate;

pub use inspect::{decoded_006, decoded_007};

/// The environment variable holding the App Certificate.
pub const CERTIFICATE_ENV: &str = "AGORA_APP_CERTIFICATE";

/// Exit code: the token parsed (and verified, when checked) or was built.
const EXIT_OK: u8 = 0;
/// Exit code: the token parsed but its signature is invalid.
const EXIT_INVALID_SIGNATURE: u8 = 1;
/// Exit code: the token could not be parsed, or the command failed.
pub const EXIT_FAILURE: u8 = 2;

/// `tokengate token`: build or inspect Agora tokens offline.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Build an AccessToken2 ("007") with one of Agora's builder APIs, or from a JSON spec.
    Build(args::BuildArgs),
    /// Decode a 007 or 006 token; verify it when a certificate is available.
    ///
    /// Exit code 0 when it parses (and verifies, if checked), 1 when the
    /// signature is invalid, 2 when it cannot be parsed.
    Inspect(args::InspectArgs),
}

/// Runs `tokengate token ...` and returns the process exit code.
pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::Build(args) => {
            let token = build::run_build(args)?;
            println!("{token}");
            Ok(ExitCode::from(EXIT_OK))
        }
        TokenCommand::Inspect(args) => inspect::run_inspect(&args),
    }
}

/// The certificate from `file`, else from the environment, else none. The
/// error never contains the file's content.
#[allow(clippy::disallowed_methods)] // A config-reading edge: the CLI's certificate may come from its variable.
fn load_certificate(file: Option<&Path>) -> anyhow::Result<Option<AppCertificate>> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the certificate file {}", path.display()))?,
        None => match std::env::var(CERTIFICATE_ENV) {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(None),
        },
    };
    Ok(Some(AppCertificate::parse(text.trim())?))
}
