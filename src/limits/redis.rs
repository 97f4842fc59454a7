//! Cluster mode: the limits' state in Redis, shared by every replica.
//!
//! One check is one round trip: an atomic Lua script (the GCRA of `gcra.rs`
//! over a single key, on Redis's own clock, so replicas with skewed clocks
//! still agree) run by `EVALSHA`. The script is loaded once (`SCRIPT LOAD`);
//! after a Redis restart flushes it, the first `NOSCRIPT` reloads it. One
//! key per limit and limit key, so it works on Redis Cluster as well.
//!
//! The client is the `redis` crate's tokio `ConnectionManager`: one
//! multiplexed connection per process that reconnects by itself. `redis`
//! over `fred`: it is the crate most of the ecosystem uses (and the one
//! `Script` with its EVALSHA-then-load fallback comes from), and the
//! connection manager is all a single-key script needs; fred's pools,
//! sentinel and cluster routing would be unused weight.
//!
//! Redis latency must not become the service's: every check has its own
//! timeout (`limits.redis.timeout`), and after a failure the backend stays
//! `down` for `limits.redis.retry_interval`, during which no call waits for
//! Redis at all; the first call after it probes again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use super::LimitError;
use super::gcra::Gcra;

/// The GCRA in Lua: KEYS[1] the key; ARGV[1] the emission interval and
/// ARGV[2] the burst, in microseconds and calls; ARGV[3] `1` to consume,
/// `0` to read the budget. Returns `{admitted, retry_after_us, remaining}`:
/// for a consuming call `remaining` is what is left after it, for a read
/// the calls that would be admitted now. The TAT is stored as an integer
/// string (`%d`: Lua's default number format would round it) with a TTL of
/// how long it matters, so idle keys disappear by themselves.
pub(crate) const SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local consume = ARGV[3] == '1'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then tat = now end
local horizon = now + interval * burst
local next = tat + interval
if next > horizon then
  return {0, next - horizon, 0}
end
local remaining = math.floor((horizon - next) / interval)
if consume then
  redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000) + 1)
  return {1, 0, remaining}
end
return {1, 0, remaining + 1}
";

/// Where the limits' shared state lives and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`, without a password.
    pub url: String,
    /// The ACL user, if not the URL's.
    pub username: Option<String>,
    /// The password, read from its file or variable.
    pub password: Option<String>,
    /// A PEM bundle of the CAs that sign Redis's certificate (`rediss://`).
    pub ca_pem: Option<Vec<u8>>,
    /// The longest a check may wait for Redis.
    pub timeout: Duration,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// How long limits stay in their fail mode after a failure before Redis is tried again.
    pub retry_interval: Duration,
    /// The prefix of every key tokengate writes.
    pub key_prefix: String,
    /// How many replicas share the budgets (a fail-open limit's local share).
    pub replicas: Option<u32>,
}

/// What Redis answered for one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Whether the call is admitted.
    pub admitted: bool,
    /// When a refused call may retry.
    pub retry_after: Duration,
    /// Calls left (after this one, for a consuming check).
    pub remaining: u32,
}

/// The shared store: a reconnecting connection, the script and the breaker.
pub struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    settings: RedisSettings,
    /// While the process's monotonic clock (ns) is below this, Redis is not tried.
    down_until: AtomicU64,
    /// Whether the last check failed, for logging each change once.
    failing: AtomicBool,
}

/// Whether a URL is one this store can use: checked by `config` at load.
pub fn check_url(url: &str) -> Result<(), String> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| format!("is not a Redis URL: {}", e.detail().unwrap_or("unparsable")))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "must not hold a password; use limits.redis.password_file or password_env".to_owned(),
        );
    }
    match info.addr() {
        redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::TcpTls { .. } => Ok(()),
        _ => Err("must be redis:// or rediss://".to_owned()),
    }
}

/// The client for `settings`, without connecting: `config` builds it at
/// load, so that a CA file rustls cannot use is a config error.
pub fn client(settings: &RedisSettings) -> Result<redis::Client, LimitError> {
    let failed = |e: redis::RedisError| LimitError::Redis(e.to_string());
    let mut info =
        redis::IntoConnectionInfo::into_connection_info(settings.url.as_str()).map_err(failed)?;
    let mut redis_settings = info.redis_settings().clone();
    if let Some(username) = &settings.username {
        redis_settings = redis_settings.set_username(username);
    }
    if let Some(password) = &settings.password {
        redis_settings = redis_settings.set_password(password);
    }
    info = info.set_redis_settings(redis_settings);
    match &settings.ca_pem {
        Some(ca) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => redis::Client::open(info),
    }
    .map_err(failed)
}

impl RedisStore {
    /// A store for `settings`. Connects lazily: a Redis that is down at
    /// start-up makes checks fail (and limits take their fail mode), never
    /// the start.
    pub fn connect(settings: RedisSettings) -> Result<Self, LimitError> {
        let client = client(&settings)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            // The check's own timeout bounds every call; this only ends
            // replies that never come, so the connection is replaced.
            .set_response_timeout(Some(settings.connect_timeout.max(settings.timeout)))
            .set_number_of_retries(2)
            .set_max_delay(settings.retry_interval);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| LimitError::Redis(e.to_string()))?;
        Ok(Self {
            connection,
            script: redis::Script::new(SCRIPT),
            settings,
            down_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        })
    }

    /// The settings the store was made with.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Whether checks at `now` should try Redis (the breaker is closed, or
    /// its retry interval has passed).
    pub fn usable(&self, now: u64) -> bool {
        now >= self.down_until.load(Ordering::Relaxed)
    }

    /// The Redis key of limit `limit`'s key `key`: the prefix, the limit's
    /// name, and a hash of the key, so that a key's text (a subject, a
    /// tenant) is bounded in size and not stored in Redis as such.
    pub fn key(&self, limit: &str, key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        format!(
            "{}{limit}:{}",
            self.settings.key_prefix,
            hex::encode(&digest[..16])
        )
    }

    /// One check of `key` against `gcra`, consuming when `consume`, within
    /// the timeout. A failure trips the breaker until `now` plus the retry
    /// interval; a success after failures closes it. Both are logged once.
    pub async fn check(
        &self,
        key: &str,
        gcra: &Gcra,
        consume: bool,
        now: u64,
    ) -> Result<Answer, LimitError> {
        let interval = u64::try_from(gcra.interval().as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval)
            .arg(gcra.burst())
            .arg(u8::from(consume));
        let mut connection = self.connection.clone();
        let result = match tokio::time::timeout(
            self.settings.timeout,
            invocation.invoke_async::<(u8, u64, u64)>(&mut connection),
        )
        .await
        {
            Ok(Ok((admitted, retry_us, remaining))) => Ok(Answer {
                admitted: admitted == 1,
                retry_after: Duration::from_micros(retry_us),
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            }),
            Ok(Err(error)) => Err(LimitError::Redis(error.to_string())),
            Err(_) => Err(LimitError::Timeout(self.settings.timeout)),
        };
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limits: Redis answers again; limits are shared again");
                }
            }
            Err(error) => {
                let retry =
                    u64::try_from(self.settings.retry_interval.as_nanos()).unwrap_or(u64::MAX);
                self.down_until
                    .store(now.saturating_add(retry), Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %error,
                        retry_in = ?self.settings.retry_interval,
                        "rate limits: Redis failed; each limit takes its on_redis_failure mode (fail_open limits count locally, fail_closed ones refuse) until it answers again"
                    );
                }
            }
        }
        result
    }

    /// Whether the last check failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_interval", &self.retry_interval)
            .field("key_prefix", &self.key_prefix)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("settings", &self.settings)
            .field("failing", &self.failing())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_passwords_or_other_schemes_are_refused() {
        assert!(check_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(check_url("rediss://cache.example:6380").is_ok());
        assert!(
            check_url("redis://user:hunter2@127.0.0.1/")
                .unwrap_err()
                .contains("password")
        );
        assert!(check_url("unix:///tmp/redis.sock").is_err());
        assert!(check_url("http://x").is_err());
    }
}
