//! Log output: JSON lines for production, readable text for a terminal.
//!
//! Logs never carry secrets, JWTs or tokens, only their fingerprints; that
//! rule is kept by the code that logs, and this module only picks the format.

use tracing_subscriber::EnvFilter;

/// The log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// Installs the global subscriber. The level comes from `TOKENGATE_LOG`
/// (`info` by default), in `tracing`'s `EnvFilter` syntax. Logs go to stderr so
/// that stdout stays for command output.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("TOKENGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: escape codes corrupt logs piped to a file or collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second init (tests, or a subcommand calling another) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
