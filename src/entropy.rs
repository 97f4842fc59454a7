//! The edges where the wall clock and the OS random source enter.
//!
//! The pure core (`token`, `policy`) takes `now` and the salt as arguments;
//! the pipeline (and the CLI) get them here, so there is one place to
//! read each. (The JWKS refresher reads tokio's monotonic clock on its own.)

/// The largest salt Agora's python, Go and Node builders draw (spec §2.6).
pub const MAX_SALT: u32 = 99_999_999;

/// The random source failed; nothing sensible can be signed without it.
#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct EntropyError(String);

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    #[allow(clippy::disallowed_methods)] // the one wall-clock read of the request path
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A salt uniform in 1..=99999999 from the OS random source, like the official builders.
pub fn random_salt() -> Result<u32, EntropyError> {
    // Rejection sampling keeps the draw uniform: 42 * 99999999 < 2^32.
    const LIMIT: u32 = MAX_SALT * 42;
    loop {
        let draw = getrandom::u32().map_err(|e| EntropyError(e.to_string()))?;
        if draw < LIMIT {
            return Ok(draw % MAX_SALT + 1);
        }
    }
}

/// Nanoseconds on the process's monotonic clock (from its first read):
/// the `now` of rate limits, which must never step back with the wall clock.
pub fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A monotonic timer for how long a call took (latency, not the wall clock).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts timing now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Seconds since `start`.
    pub fn elapsed_secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// Microseconds since `start`, saturating.
    pub fn elapsed_us(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

/// A short random id that ties an INTERNAL error reply to its log line.
pub fn request_id() -> String {
    getrandom::u64()
        .map(|n| format!("{n:016x}"))
        .unwrap_or_else(|_| "unavailable".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salts_stay_in_the_official_range() {
        for _ in 0..10_000 {
            let salt = random_salt().unwrap();
            assert!((1..=MAX_SALT).contains(&salt));
        }
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(unix_now() > 1_577_836_800);
    }
}
