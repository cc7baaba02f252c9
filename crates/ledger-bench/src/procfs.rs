//! What Linux's `/proc` says about CPU time, memory and disk use, so every result
//! carries where the machine's CPU went while it was measured.
//!
//! A benchmark on a small machine is only meaningful when the load generator is not the
//! bottleneck and nothing else is competing, so each measurement window records the CPU
//! time of this process, of the processes it watches (the service under test, the
//! broker) and of the whole machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Map, Value};

/// Clock ticks per second, the unit of CPU times in `/proc/*/stat`.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100.0, |t| t as f64)
    })
}

/// The fields of `/proc/PID/stat` after the command name, which may itself contain
/// spaces and parentheses (hence the split at the last `)`).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// CPU seconds (user + system) a process has used so far; `pid` may be `self`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of stat(5), utime and stime; index 0 here is field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Seconds since the process started (field 22, in ticks since boot).
pub fn process_age_seconds(pid: u32) -> Option<f64> {
    let f = stat_fields(&pid.to_string())?;
    let start = f.get(19)?.parse::<u64>().ok()? as f64 / clock_ticks();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(uptime - start)
}

/// A `/proc/PID/status` memory line (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Busy and total jiffies of the whole machine, from the first line of `/proc/stat`.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Online CPUs.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A process to account CPU for, by name.
#[derive(Clone, Debug)]
pub struct Watched {
    /// The name used in the results (`cpu_cores_<name>`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

/// Parses `NAME=PID`, for clap.
pub fn parse_watched(s: &str) -> Result<Watched, String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
    let pid = pid
        .trim()
        .parse()
        .map_err(|_| format!("expected NAME=PID, got {s:?}"))?;
    Ok(Watched {
        name: name.trim().to_string(),
        pid,
    })
}

/// CPU times at one instant.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    own: f64,
    watched: Vec<(String, Option<f64>)>,
    machine: Option<(u64, u64)>,
}

impl CpuSnapshot {
    /// Reads this process's, the watched processes' and the machine's CPU times now.
    pub fn take(watched: &[Watched]) -> Self {
        Self {
            at: Instant::now(),
            own: cpu_seconds("self").unwrap_or(0.0),
            watched: watched
                .iter()
                .map(|w| (w.name.clone(), cpu_seconds(&w.pid.to_string())))
                .collect(),
            machine: machine_jiffies(),
        }
    }

    /// CPU use between `self` and a later snapshot, in cores (1.0 = one core busy the
    /// whole time): the load generator's own (`loadgen_cpu_cores`, and as a share of all
    /// cores `loadgen_cpu_share`), each watched process's (`cpu_cores_<name>`), and the
    /// whole machine's (`machine_busy_cores`), from which `other_cpu_cores` is whatever
    /// else ran meanwhile.
    pub fn report_until(&self, later: &CpuSnapshot) -> Map<String, Value> {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let n = cores() as f64;
        let own = (later.own - self.own) / wall;
        let mut out = Map::new();
        out.insert("cores".into(), json!(cores()));
        out.insert("loadgen_cpu_cores".into(), json!(round3(own)));
        out.insert("loadgen_cpu_share".into(), json!(round3(own / n)));
        let mut accounted = own;
        for ((name, a), (_, b)) in self.watched.iter().zip(&later.watched) {
            let v = a.zip(*b).map(|(a, b)| (b - a) / wall);
            accounted += v.unwrap_or(0.0);
            out.insert(format!("cpu_cores_{name}"), json!(v.map(round3)));
        }
        if let (Some((b0, t0)), Some((b1, t1))) = (self.machine, later.machine) {
            let busy = (b1 - b0) as f64 / ((t1 - t0).max(1) as f64) * n;
            out.insert("machine_busy_cores".into(), json!(round3(busy)));
            out.insert(
                "other_cpu_cores".into(),
                json!(round3((busy - accounted).max(0.0))),
            );
        }
        out
    }
}

/// Rounds to three decimals, for readable JSON.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Disk use of a directory tree, as `du` counts it (allocated blocks) and as the sum of
/// file lengths.
pub fn dir_size(path: &Path) -> anyhow::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut allocated, mut apparent) = (0u64, 0u64);
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let md = entry.metadata()?;
            if md.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += md.blocks() * 512;
                apparent += md.len();
            }
        }
    }
    Ok((allocated, apparent))
}

/// The machine: CPU model, cores, memory, kernel, load average.
pub fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: BTreeMap<&str, u64> = meminfo
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k, v.trim().trim_end_matches("kB").trim().parse().ok()?))
        })
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({
        "cpu_model": model,
        "cores": cores(),
        "mem_total_mb": mem_kib.get("MemTotal").map(|k| k / 1024),
        "mem_available_mb": mem_kib.get("MemAvailable").map(|k| k / 1024),
        "kernel": kernel,
        "loadavg": loadavg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds("self").is_some());
        let me = std::process::id();
        assert!(status_kib(me, "VmHWM").unwrap() > 0);
        assert!(process_age_seconds(me).unwrap() >= 0.0);
    }

    #[test]
    fn watched_parses() {
        let w = parse_watched("ingest=42").unwrap();
        assert_eq!((w.name.as_str(), w.pid), ("ingest", 42));
        assert!(parse_watched("ingest").is_err());
        assert!(parse_watched("ingest=x").is_err());
    }
}
