//! CPU and memory from `/proc`: a process's user + system time, this
//! process's waited-for children (h2load), the whole machine's busy time,
//! and resident memory.

use std::collections::HashMap;

use anyhow::Context as _;

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` after the command name, from `state` on.
fn stat_fields(pid: &str) -> anyhow::Result<(String, Vec<u64>)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let open = text.find('(').context("no command name")?;
    let close = text.rfind(')').context("no command name")?;
    let comm = text.get(open + 1..close).unwrap_or_default().to_owned();
    let fields = text
        .get(close + 2..)
        .unwrap_or_default()
        .split_whitespace()
        .skip(1) // state
        .map(|f| {
            f.parse::<i64>()
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
        })
        .collect();
    Ok((comm, fields))
}

/// Field `n` (1-based, as proc(5) numbers them) of the numeric fields.
fn field(fields: &[u64], n: usize) -> u64 {
    // proc(5) numbers pid 1, comm 2, state 3; the vector starts at field 4.
    fields.get(n - 4).copied().unwrap_or(0)
}

/// A process's utime + stime, in clock ticks (all its threads).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let (_, fields) = stat_fields(&pid.to_string())?;
    Ok(field(&fields, 14) + field(&fields, 15))
}

/// This process's own CPU and that of its children it has waited for, in ticks.
pub fn self_ticks() -> anyhow::Result<(u64, u64)> {
    let (_, fields) = stat_fields("self")?;
    Ok((
        field(&fields, 14) + field(&fields, 15),
        field(&fields, 16) + field(&fields, 17),
    ))
}

/// The machine's busy time in ticks: user + nice + system over every CPU
/// (interrupt and softirq time are left out: the loopback traffic of the
/// benchmark itself lands there, on no process).
pub fn machine_busy_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let line = text.lines().next().context("empty /proc/stat")?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok(values.iter().take(3).sum())
}

/// A `Vm*` line of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Every user-space process's CPU ticks by pid, with its command name, to
/// name who else ran during a refused run.
pub fn processes() -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok((comm, fields)) = stat_fields(&pid.to_string())
            && field(&fields, 9) & PF_KTHREAD == 0
        {
            out.insert(pid, (comm, field(&fields, 14) + field(&fields, 15)));
        }
    }
    out
}

/// The processes that used the most CPU between two [`processes`] snapshots,
/// leaving out `ours`: "name ticks" for the largest few.
pub fn busiest(
    before: &HashMap<u32, (String, u64)>,
    after: &HashMap<u32, (String, u64)>,
    ours: &[u32],
) -> String {
    let mut used: Vec<(u64, &str)> = after
        .iter()
        .filter(|(pid, _)| !ours.contains(pid))
        .map(|(pid, (comm, ticks))| {
            let start = before.get(pid).map_or(0, |(_, t)| *t);
            (ticks.saturating_sub(start), comm.as_str())
        })
        .filter(|(ticks, _)| *ticks > 0)
        .collect();
    used.sort_unstable_by(|a, b| b.cmp(a));
    used.iter()
        .take(4)
        .map(|(ticks, comm)| format!("{comm} {ticks}"))
        .collect::<Vec<_>>()
        .join(", ")
}
