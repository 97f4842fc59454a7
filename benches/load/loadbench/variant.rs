//! The config variants one run compares (`--variants`): tokengate without a
//! rate limit, with a generous local one, and with a generous one shared
//! through Redis (cluster mode), so the rows show what a limit costs per
//! call. Each limit admits every call (`1000000/s`, burst 1,000,000, one
//! key: the caller); the check after each run proves it was really checked
//! where the variant says, from tokengate's counters and Redis's own.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::metrics::{Series, delta};

/// tokengate's counter of limit checks, by limit, result and backend.
const CHECKS: &str = "tokengate_rate_limit_checks_total";

/// A tokengate config variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// No rate limit (the benchmark's config as it is).
    #[value(name = "none")]
    NoLimit,
    /// A generous limit counted in process.
    Local,
    /// A generous limit shared through Redis (`[limits.redis]`).
    Redis,
}

impl Variant {
    /// The name in the table's server column.
    pub fn label(self) -> &'static str {
        match self {
            Variant::NoLimit => "no limit",
            Variant::Local => "local limit",
            Variant::Redis => "Redis limit",
        }
    }

    /// The name in file names.
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::NoLimit => "none",
            Variant::Local => "local",
            Variant::Redis => "redis",
        }
    }

    /// The limit's name and the backend its checks must be counted under.
    fn limit(self) -> Option<(&'static str, &'static str)> {
        match self {
            Variant::NoLimit => None,
            Variant::Local => Some(("bench-local", "local")),
            Variant::Redis => Some(("bench-redis", "redis")),
        }
    }

    /// The text appended to each replica's config: the limit, and for
    /// Redis, `[limits.redis]` at `redis_url` shared by `replicas`.
    pub fn config_tail(self, redis_url: Option<&str>, replicas: u32) -> anyhow::Result<String> {
        let Some((name, _)) = self.limit() else {
            return Ok(String::new());
        };
        let mut tail = format!(
            "# The {} variant, appended by `loadbench run --variants`: every call is\n\
             # checked (key caller, every action) and admitted.\n\
             [[limits.rate]]\nname = \"{name}\"\nkey = \"caller\"\nrate = \"1000000/s\"\nburst = 1000000\n",
            self.file_name()
        );
        if self == Variant::Redis {
            let url = redis_url.context("the redis variant needs the benchmark's redis-server")?;
            // The timeout is generous: a check that times out is counted
            // locally (local_fallback), which fails the run, and on a
            // saturated machine redis-server can wait for a core longer than
            // the 5 ms default. The cost measured is the round trip; the
            // timeout does not change it.
            tail.push_str(&format!(
                "\n[limits.redis]\nurl = \"{url}\"\ntimeout = \"100ms\"\nreplicas = {replicas}\n"
            ));
        }
        Ok(tail)
    }

    /// Whether a replica's limit checks account for the run: with a limit,
    /// the admitted checks of its backend grew by the `served` calls (up to
    /// `slack` more, in flight when h2load stopped), and no check of any
    /// other result or backend (`limited`, `unavailable`, `local_fallback`)
    /// was ever counted; without one, no check at all. The reasons if not.
    pub fn check(
        self,
        before: &[Series],
        after: &[Series],
        served: u64,
        slack: u64,
    ) -> Vec<String> {
        let mut reasons = Vec::new();
        let Some((name, backend)) = self.limit() else {
            let checks = delta(before, after, |n, _| n == CHECKS);
            if checks > 0 {
                reasons.push(format!(
                    "tokengate counted {checks} rate limit checks with no limit configured"
                ));
            }
            return reasons;
        };
        let limit = format!(r#"limit="{name}""#);
        let backend_label = format!(r#"backend="{backend}""#);
        let expected = |l: &str| {
            l.contains(&limit) && l.contains(r#"result="admitted""#) && l.contains(&backend_label)
        };
        let admitted = delta(before, after, |n, l| n == CHECKS && expected(l));
        if admitted < served || admitted > served + slack {
            reasons.push(format!(
                "limit {name}: tokengate counted {admitted} admitted {backend} checks for {served} successes"
            ));
        }
        for (_, labels, value) in after
            .iter()
            .filter(|(n, l, v)| n == CHECKS && *v > 0.0 && !expected(l))
        {
            reasons.push(format!(
                "limit {name}: tokengate counted {value} checks {{{labels}"
            ));
        }
        reasons
    }
}

/// The benchmark's redis-server, on a loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts `binary` on `port` with its files (and log) in `dir`; waits
    /// until it answers PING.
    pub fn start(binary: &Path, dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.join("redis.log"))?;
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "redis-server exited at start with {status} (see {})",
                    dir.join("redis.log").display()
                );
            }
            if server.command("PING").is_ok_and(|reply| reply == "PONG") {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING in 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its URL for `[limits.redis]`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its process id (its CPU is measured, and is not "other processes'").
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The scripts Redis has run (`EVALSHA` and `EVAL` calls of
    /// `INFO commandstats`): its own count of the checks it answered.
    pub fn script_calls(&self) -> anyhow::Result<u64> {
        let info = self.command("INFO commandstats")?;
        Ok(script_calls(&info))
    }

    /// One inline command on a fresh connection; a simple or bulk string reply.
    fn command(&self, command: &str) -> anyhow::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        (&stream).write_all(format!("{command}\r\n").as_bytes())?;
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if let Some(simple) = line.strip_prefix('+') {
            return Ok(simple.to_owned());
        }
        let len: usize = line
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("redis-server answered {command:?} with {line:?}"))?;
        let mut body = vec![0_u8; len];
        reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Nothing is persisted: SIGKILL loses nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `calls=` of the `cmdstat_evalsha` and `cmdstat_eval` lines.
fn script_calls(info: &str) -> u64 {
    info.lines()
        .filter_map(|line| {
            let rest = line
                .strip_prefix("cmdstat_evalsha:")
                .or_else(|| line.strip_prefix("cmdstat_eval:"))?;
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::parse;

    fn scrape(lines: &[&str]) -> Vec<Series> {
        parse(&lines.join("\n"))
    }

    const ADMITTED: &str = r#"tokengate_rate_limit_checks_total{backend="redis",limit="bench-redis",result="admitted"}"#;

    #[test]
    fn a_redis_run_whose_checks_account_for_every_call_passes() {
        let before = scrape(&[&format!("{ADMITTED} 20")]);
        let after = scrape(&[&format!("{ADMITTED} 1020")]);
        assert!(Variant::Redis.check(&before, &after, 1000, 1).is_empty());
        assert!(Variant::Redis.check(&before, &after, 999, 1).is_empty());
    }

    #[test]
    fn missing_fallback_or_limited_checks_fail_a_redis_run() {
        let before = scrape(&[&format!("{ADMITTED} 20")]);
        let after = scrape(&[&format!("{ADMITTED} 1000")]);
        let reasons = Variant::Redis.check(&before, &after, 1000, 1);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("980 admitted redis checks for 1000"));

        let fallback = r#"tokengate_rate_limit_checks_total{backend="local_fallback",limit="bench-redis",result="admitted"} 3"#;
        let limited = r#"tokengate_rate_limit_checks_total{backend="redis",limit="bench-redis",result="limited"} 1"#;
        let after = scrape(&[&format!("{ADMITTED} 1020"), fallback, limited]);
        let reasons = Variant::Redis.check(&before, &after, 1000, 1);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("local_fallback"));
        assert!(reasons[1].contains(r#"result="limited""#));
        // The same counts are no local run: its checks are not in Redis.
        assert_eq!(Variant::Local.check(&before, &after, 1000, 1).len(), 4);
    }

    #[test]
    fn a_run_without_a_limit_counts_no_check() {
        let empty = scrape(&[]);
        assert!(Variant::NoLimit.check(&empty, &empty, 10, 1).is_empty());
        let after = scrape(&[&format!("{ADMITTED} 1")]);
        assert_eq!(Variant::NoLimit.check(&empty, &after, 10, 1).len(), 1);
    }

    #[test]
    fn the_tails_name_their_limit_and_redis() {
        assert!(Variant::NoLimit.config_tail(None, 1).unwrap().is_empty());
        let local = Variant::Local.config_tail(None, 2).unwrap();
        assert!(local.contains("name = \"bench-local\"") && !local.contains("[limits.redis]"));
        assert!(Variant::Redis.config_tail(None, 2).is_err());
        let redis = Variant::Redis
            .config_tail(Some("redis://127.0.0.1:1/0"), 2)
            .unwrap();
        assert!(
            redis.contains("url = \"redis://127.0.0.1:1/0\"") && redis.contains("replicas = 2")
        );
    }

    #[test]
    fn reads_the_script_calls_of_info_commandstats() {
        let info = "# Commandstats\r\n\
            cmdstat_ping:calls=3,usec=1,usec_per_call=0.33,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_evalsha:calls=1000,usec=9840,usec_per_call=9.84,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_eval:calls=2,usec=30,usec_per_call=15.00,rejected_calls=0,failed_calls=0\r\n";
        assert_eq!(script_calls(info), 1002);
        assert_eq!(script_calls("# Commandstats\r\n"), 0);
    }
}
