//! One h2load run: its command line, its summary and its per-request log.
//!
//! h2load's own "succeeded" counts every completed HTTP 2xx response, so a
//! gRPC error (HTTP 200 with a non-zero grpc-status in the trailers) is a
//! success to it. The caller checks the `data` bytes against known-good
//! replies instead; this module only reports what h2load saw.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, ensure};

/// What to run.
#[derive(Debug, Clone)]
pub struct Load {
    /// The URL (the gRPC method's path, or the Node peer's route).
    pub url: String,
    /// The request body file (`-d`, which makes it a POST), for gRPC.
    pub body: Option<PathBuf>,
    /// Extra request headers.
    pub headers: Vec<String>,
    /// HTTP/1.1 instead of HTTP/2 (`--h1`; streams become pipelined requests).
    pub h1: bool,
    /// Connections.
    pub connections: u32,
    /// Concurrent streams per connection.
    pub streams: u32,
    /// h2load's threads.
    pub threads: u32,
    /// Seconds of load.
    pub seconds: f64,
}

/// h2load's summary of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    /// Wall time of the measured period, seconds.
    pub seconds: f64,
    /// Requests per second.
    pub req_per_s: f64,
    /// Requests succeeded (HTTP 2xx, whatever the grpc-status).
    pub succeeded: u64,
    /// Requests failed, errored or timed out.
    pub failed: u64,
    /// Responses with a status other than 2xx.
    pub non_2xx: u64,
    /// Response body bytes (`traffic: ... data`).
    pub data_bytes: u64,
}

impl Load {
    /// Starts h2load, writing the per-request log to `log`; several run at
    /// once when several replicas are loaded together.
    pub fn spawn(&self, h2load: &Path, log: &Path) -> anyhow::Result<Running> {
        // h2load appends to its log file: a previous run's lines would mix in.
        match std::fs::remove_file(log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let mut command = Command::new(h2load);
        command
            .arg(format!("--clients={}", self.connections))
            .arg(format!("--max-concurrent-streams={}", self.streams))
            .arg(format!("--threads={}", self.threads.min(self.connections)))
            .arg(format!("--duration={}", self.seconds))
            .arg("--log-file")
            .arg(log);
        if self.h1 {
            command.arg("--h1");
        }
        if let Some(body) = &self.body {
            command.arg("--data").arg(body);
        }
        for header in &self.headers {
            command.arg("--header").arg(header);
        }
        command.arg(&self.url);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", h2load.display()))?;
        Ok(Running { child })
    }
}

/// A started h2load.
#[derive(Debug)]
pub struct Running {
    child: Child,
}

impl Running {
    /// Waits for h2load to end (its CPU time then counts as this process's
    /// waited-for children's) and reads its summary.
    pub fn wait(self) -> anyhow::Result<Summary> {
        let output = self
            .child
            .wait_with_output()
            .context("cannot wait for h2load")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "h2load exited with {}: {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        parse(&stdout).with_context(|| format!("cannot read h2load's summary:\n{stdout}"))
    }
}

/// The numbers of h2load's summary lines.
fn parse(text: &str) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 1.00s, 5254.00 req/s, 1.54MB/s
            let mut parts = rest.split(", ");
            // A run shorter than a second is printed in ms ("997.86ms").
            summary.seconds = seconds(parts.next().context("finished in")?)?;
            summary.req_per_s = parts
                .next()
                .and_then(|s| s.strip_suffix(" req/s"))
                .context("req/s")?
                .parse()?;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // requests: 5254 total, 5255 started, 5254 done, 5254 succeeded, 0 failed, 0 errored, 0 timeout
            summary.succeeded = count(rest, "succeeded")?;
            summary.failed =
                count(rest, "failed")? + count(rest, "errored")? + count(rest, "timeout")?;
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // status codes: 5254 2xx, 0 3xx, 0 4xx, 0 5xx
            summary.non_2xx = count(rest, "3xx")? + count(rest, "4xx")? + count(rest, "5xx")?;
        } else if let Some(rest) = line.strip_prefix("traffic: ") {
            // traffic: 1.54MB (1616102) total, 92.63KB (94852) headers (space savings 93.54%), 1.40MB (1466166) data
            let data = rest
                .rsplit_once(") data")
                .and_then(|(head, _)| head.rsplit_once('('))
                .context("traffic data")?
                .1;
            summary.data_bytes = data.parse()?;
        }
    }
    ensure!(summary.seconds > 0.0, "no `finished in` line");
    Ok(summary)
}

/// h2load's duration text (`1.00s`, `997.86ms`, `125us`) in seconds.
fn seconds(text: &str) -> anyhow::Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        anyhow::bail!("{text:?} is not a duration");
    };
    Ok(number.parse::<f64>().with_context(|| format!("{text:?}"))? * scale)
}

/// The number before `label` in a comma-separated list of "N label".
fn count(list: &str, label: &str) -> anyhow::Result<u64> {
    list.split(", ")
        .find_map(|item| item.strip_suffix(label))
        .with_context(|| format!("no {label}"))?
        .trim()
        .parse()
        .with_context(|| format!("{label} is not a number"))
}

/// The per-request latencies of h2load's `--log-file` (tab-separated: start
/// in µs since the epoch, HTTP status, µs to the end of the response), sorted.
pub fn latencies(log: &Path) -> anyhow::Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut out: Vec<u64> = text
        .lines()
        .filter_map(|line| line.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let len = sorted.len() as f64;
    let rank = (q * len).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_summary() {
        let text = "finished in 1.00s, 5254.00 req/s, 1.54MB/s\n\
            requests: 5254 total, 5255 started, 5254 done, 5250 succeeded, 3 failed, 1 errored, 0 timeout\n\
            status codes: 5250 2xx, 0 3xx, 2 4xx, 0 5xx\n\
            traffic: 1.54MB (1616102) total, 92.63KB (94852) headers (space savings 93.54%), 1.40MB (1466166) data\n";
        let s = parse(text).unwrap();
        assert_eq!(s.succeeded, 5250);
        assert_eq!(s.failed, 4);
        assert_eq!(s.non_2xx, 2);
        assert_eq!(s.data_bytes, 1_466_166);
        assert!((s.req_per_s - 5254.0).abs() < 1e-9);
    }

    #[test]
    fn reads_a_run_shorter_than_a_second() {
        let text = "finished in 997.86ms, 464.00 req/s, 163.12KB/s\n\
            requests: 464 total, 465 started, 464 done, 464 succeeded, 0 failed, 0 errored, 0 timeout\n";
        let s = parse(text).unwrap();
        assert!((s.seconds - 0.99786).abs() < 1e-9, "{}", s.seconds);
        assert!((seconds("125us").unwrap() - 0.000125).abs() < 1e-12);
        assert!(seconds("3").is_err());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
