//! Replay: how fast a fresh projector rebuilds its projection from a full topic.
//!
//! The clock starts when the projector process starts (it is spawned here, or, given
//! only its pid, taken from `/proc`) and stops when every partition is applied up to
//! the high watermark. The end is detected exactly, not by polling: one
//! `GET /v1/progress?after=TOKEN` per partition, with the token of its last event,
//! which the projector answers the moment that event is applied. A slower sampler
//! meanwhile records applied events and RSS, to tell start-up from steady state.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledger_api::Progress;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Map, Value};

use crate::http::Pool;
use crate::procfs::{self, round3, CpuSnapshot, Watched};
use crate::prom::Scrape;

/// Which projector to time.
#[derive(Clone, Debug)]
pub enum Subject {
    /// Spawn this binary with these arguments; it listens on `listen`.
    Spawn {
        /// The `projector` binary.
        bin: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Where it serves HTTP (also passed in `args`).
        listen: SocketAddr,
        /// Where its stdout and stderr go.
        log: Option<PathBuf>,
        /// A file to write its pid to, so a script can clean up after a crash of ours.
        pid_file: Option<PathBuf>,
    },
    /// A projector already running.
    Attach {
        /// Its base URL.
        url: String,
        /// Its pid.
        pid: u32,
    },
}

/// What to time.
#[derive(Clone, Debug)]
pub struct ReplaySpec {
    /// The projector.
    pub subject: Subject,
    /// Its sled directory, for the size on disk.
    pub data_dir: Option<PathBuf>,
    /// Events the topic is expected to hold; a mismatch with the high watermarks fails.
    pub expect_events: Option<u64>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Processes whose CPU use to report (the broker).
    pub watched: Vec<Watched>,
    /// Stop the projector at the end (always for a spawned one).
    pub stop: bool,
}

async fn progress(pool: &Pool, query: &str) -> anyhow::Result<(u16, Option<Progress>)> {
    let r = pool.get(&format!("/v1/progress{query}")).await?;
    let p = if r.status.is_success() {
        Some(serde_json::from_slice(&r.body).context("parsing /v1/progress")?)
    } else {
        None
    };
    Ok((r.status.as_u16(), p))
}

/// Kills the spawned projector if the run ends without stopping it (an error). Like
/// ledger-testkit's `ChildGuard` (see Cargo.toml for why not that one).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it exited.
    fn stop(&mut self, grace: Duration) -> anyhow::Result<Value> {
        let Some(mut child) = self.0.take() else {
            return Ok(Value::Null);
        };
        let started = Instant::now();
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(json!({
                    "exit_code": status.code(),
                    "stop_s": round3(started.elapsed().as_secs_f64()),
                }));
            }
            if started.elapsed() > grace {
                let _ = child.kill();
                let status = child.wait()?;
                return Ok(json!({"exit_code": status.code(), "killed_after_s": grace.as_secs()}));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_tail(log: Option<&Path>) -> String {
    log.and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        })
        .unwrap_or_default()
}

/// Times the replay.
pub async fn run(spec: ReplaySpec) -> anyhow::Result<Value> {
    let started;
    let (pool, pid, mut guard, log) = match &spec.subject {
        Subject::Spawn {
            bin,
            args,
            listen,
            log,
            pid_file,
        } => {
            if let Some(dir) = &spec.data_dir {
                if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                    bail!(
                        "{} is not empty; a replay needs a fresh data directory",
                        dir.display()
                    );
                }
            }
            let (out, err) = match log {
                Some(p) => {
                    let f = File::create(p).with_context(|| format!("creating {}", p.display()))?;
                    (Stdio::from(f.try_clone()?), Stdio::from(f))
                }
                None => (Stdio::null(), Stdio::inherit()),
            };
            started = Instant::now();
            let child = Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let pid = child.id();
            if let Some(f) = pid_file {
                std::fs::write(f, format!("{pid}\n"))?;
            }
            (
                Pool::new(&format!("http://{listen}"))?,
                pid,
                ChildGuard(Some(child)),
                log.clone(),
            )
        }
        Subject::Attach { url, pid } => {
            let age =
                procfs::process_age_seconds(*pid).with_context(|| format!("no process {pid}"))?;
            started = Instant::now() - Duration::from_secs_f64(age);
            (Pool::new(url)?, *pid, ChildGuard(None), None)
        }
    };
    let pool = Arc::new(pool);
    let deadline = Instant::now() + spec.timeout;
    let mut watched = spec.watched.clone();
    watched.push(Watched {
        name: "projector".into(),
        pid,
    });
    let cpu_before = CpuSnapshot::take(&watched);

    // 1. Up, and the high watermarks known.
    let targets: Vec<(i32, i64)> = loop {
        if let Some(status) = guard.exited() {
            bail!(
                "the projector exited during start-up ({status}):\n{}",
                log_tail(log.as_deref())
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the projector did not report progress within {:?}",
                spec.timeout
            );
        }
        if let Ok((200, Some(p))) = progress(&pool, "").await {
            if p.broker_reachable
                && !p.partitions.is_empty()
                && p.partitions.iter().all(|x| x.high_watermark.is_some())
            {
                break p
                    .partitions
                    .iter()
                    .map(|x| (x.partition, x.high_watermark.unwrap_or(0)))
                    .collect();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let http_up = started.elapsed();
    let total: i64 = targets.iter().map(|(_, hw)| hw).sum();
    if let Some(expect) = spec.expect_events {
        if total as u64 != expect {
            bail!("the topic holds {total} events, expected {expect}");
        }
    }

    // 2. One waiter per partition, answered when its last event is applied.
    let waiters: Vec<_> = targets
        .iter()
        .filter(|(_, hw)| *hw > 0)
        .map(|&(p, hw)| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let query = format!("?after=v1.{p}.{}&timeout_ms=30000", hw - 1);
                loop {
                    match progress(&pool, &query).await {
                        Ok((200, _)) => return Instant::now(),
                        // 503 not_yet_consistent: the wait timed out; wait again.
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    let all_done = futures_join(waiters);
    tokio::pin!(all_done);

    // 3. Meanwhile, sample applied events and RSS.
    let mut samples: Vec<(f64, i64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let done_at = loop {
        tokio::select! {
            r = &mut all_done => break r?,
            _ = tick.tick() => {
                if let Some(status) = guard.exited() {
                    bail!("the projector exited during the replay ({status}):\n{}", log_tail(log.as_deref()));
                }
                if Instant::now() > deadline {
                    bail!("the replay did not finish within {:?}", spec.timeout);
                }
                let applied = match progress(&pool, "").await {
                    Ok((200, Some(p))) => p.partitions.iter().map(|x| x.applied_offset).sum(),
                    _ => -1,
                };
                let rss = procfs::status_kib(pid, "VmRSS").unwrap_or(0);
                samples.push((started.elapsed().as_secs_f64(), applied, rss));
            }
        }
    };
    let cpu_after = CpuSnapshot::take(&watched);
    let elapsed = done_at.duration_since(started).as_secs_f64();

    // 4. Inside view, then stop.
    let peak_kib = procfs::status_kib(pid, "VmHWM").unwrap_or(0);
    let rss_end_kib = procfs::status_kib(pid, "VmRSS").unwrap_or(0);
    let cpu_s = procfs::cpu_seconds(&pid.to_string()).unwrap_or(0.0);
    let metrics = Scrape::fetch(&pool).await.unwrap_or_default();
    let none = Scrape::default();
    let apply_flush = none.histogram_delta(&metrics, "projector_apply_flush_seconds");
    let apply_flush_sum = metrics.value("projector_apply_flush_seconds_sum");
    let dir_before = match &spec.data_dir {
        Some(d) => procfs::dir_size(d).ok(),
        None => None,
    };
    let stopped = if spec.stop || matches!(spec.subject, Subject::Spawn { .. }) {
        match &spec.subject {
            Subject::Spawn { .. } => guard.stop(Duration::from_secs(30))?,
            Subject::Attach { pid, .. } => {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
                json!({"signalled": true})
            }
        }
    } else {
        Value::Null
    };
    let dir_after = match &spec.data_dir {
        Some(d) => procfs::dir_size(d).ok(),
        None => None,
    };
    let mb = |b: u64| round3(b as f64 / 1_048_576.0);

    let first_applied_s = samples.iter().find(|s| s.1 > 0).map(|s| s.0);
    let steady = steady_rate(&samples, total);
    let mut out = Map::new();
    out.insert("events".into(), json!(total));
    out.insert("partitions".into(), json!(targets.len()));
    out.insert("seconds".into(), json!(round3(elapsed)));
    out.insert(
        "replay_per_s".into(),
        json!((total as f64 / elapsed).round()),
    );
    out.insert("http_up_s".into(), json!(round3(http_up.as_secs_f64())));
    out.insert("first_applied_s".into(), json!(first_applied_s.map(round3)));
    out.insert("steady_per_s".into(), json!(steady.map(f64::round)));
    out.insert(
        "peak_rss_mb".into(),
        json!(round3(peak_kib as f64 / 1024.0)),
    );
    out.insert(
        "rss_at_end_mb".into(),
        json!(round3(rss_end_kib as f64 / 1024.0)),
    );
    out.insert("projector_cpu_s".into(), json!(round3(cpu_s)));
    out.insert("projector_cpu_cores".into(), json!(round3(cpu_s / elapsed)));
    out.insert(
        "batch_size".into(),
        none.histogram_delta(&metrics, "projector_batch_size"),
    );
    out.insert("apply_flush_seconds".into(), apply_flush);
    // The consumer thread applies and flushes in line with polling, so this is the
    // share of the replay it was not reading from Kafka.
    out.insert(
        "apply_flush_share_of_wall".into(),
        json!(round3(apply_flush_sum / elapsed)),
    );
    out.insert(
        "events_applied".into(),
        json!(metrics.value("projector_events_applied_total")),
    );
    out.insert(
        "sled_dir_mb".into(),
        json!(dir_after.or(dir_before).map(|d| mb(d.0))),
    );
    out.insert(
        "sled_dir_apparent_mb".into(),
        json!(dir_after.or(dir_before).map(|d| mb(d.1))),
    );
    out.insert(
        "sled_dir_mb_before_stop".into(),
        json!(dir_before.map(|d| mb(d.0))),
    );
    out.insert("stopped".into(), stopped);
    out.insert(
        "cpu".into(),
        Value::Object(cpu_before.report_until(&cpu_after)),
    );
    // The projector's log says how many workers its store ran with, which the default
    // leaves to the machine; the report names the series by it.
    out.insert(
        "workers".into(),
        json!(log
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|text| workers_from_log(&text))),
    );
    // [seconds since the process started, events applied, RSS in MB]: the report draws
    // the replay rate over time from these.
    out.insert(
        "samples".into(),
        json!(samples
            .iter()
            .map(|(t, a, rss)| json!([round3(*t), a, rss / 1024]))
            .collect::<Vec<_>>()),
    );
    Ok(Value::Object(out))
}

/// `workers=N` from the projector's "store opened" log line.
fn workers_from_log(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains("store opened"))?;
    let rest = &line[line.find("workers=")? + "workers=".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Events per second between the samples at 10 % and 90 % of `total`: the rate once
/// start-up (process, group join, first fetch) is behind.
fn steady_rate(samples: &[(f64, i64, u64)], total: i64) -> Option<f64> {
    let at = |q: f64| samples.iter().find(|s| s.1 as f64 >= q * total as f64);
    let (a, b) = (at(0.1)?, at(0.9)?);
    (b.0 > a.0).then(|| (b.1 - a.1) as f64 / (b.0 - a.0))
}

/// The latest of the waiters' instants (now, when there are none: an empty topic).
async fn futures_join(waiters: Vec<tokio::task::JoinHandle<Instant>>) -> anyhow::Result<Instant> {
    let mut last: Option<Instant> = None;
    for w in waiters {
        let t = w.await?;
        last = Some(last.map_or(t, |l| l.max(t)));
    }
    Ok(last.unwrap_or_else(Instant::now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_come_from_the_store_opened_line() {
        let log = "2026-12-01T02:03:00.70Z  INFO projector: starting\n\
                   2026-12-01T02:03:00.71Z  INFO projector: store opened data_dir=/d workers=12 offsets={}\n";
        assert_eq!(workers_from_log(log), Some(12));
        assert_eq!(
            workers_from_log("INFO projector: store opened data_dir=/d"),
            None
        );
        assert_eq!(workers_from_log(""), None);
    }

    #[test]
    fn steady_rate_skips_start_up() {
        let samples = [
            (0.5, 0, 0),
            (1.0, 10, 0),
            (2.0, 60, 0),
            (3.0, 95, 0),
            (3.5, 100, 0),
        ];
        assert_eq!(steady_rate(&samples, 100), Some(42.5));
    }
}
