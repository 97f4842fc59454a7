//! The `tokengate` command line: subcommands and their exit codes.

pub mod dev_issuer;

/// The current unix time in seconds: the one place the CLI reads the wall clock,
/// which is then passed into the pure core as an argument.
pub fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
