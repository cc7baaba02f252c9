//! A peer: another program doing the projector's job over the same topic (today the
//! Kafka Streams application in `bench/kstreams`), run to completion and measured from
//! outside the way the replay measures the projector.
//!
//! The peer times itself (it knows when its own work is committed) and prints one JSON
//! object as the last line of its stdout; this adds what only the outside sees: its peak
//! RSS, its CPU time, and the CPU of the processes it shares the machine with (the
//! broker). Peak RSS and CPU come from `getrusage(RUSAGE_CHILDREN)` once it has been
//! reaped, so they are exact even though `/proc/PID` is gone by then: the peer is the only
//! child this process ever waits for. `VmHWM` is also sampled while it runs, as a check.
//!
//! Given the peer's consumer group, its progress over time is sampled from outside too:
//! the group's committed offsets, which is also what the Kafka Streams peer itself
//! watches to know it is done. The report draws its rate from these samples next to the
//! projector's.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::resource::{getrusage, UsageWho};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::procfs::{self, round3, CpuSnapshot, Watched};

/// What to run.
pub struct PeerSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Where its stderr goes (its stdout is read here).
    pub log: Option<PathBuf>,
    /// A file to write its pid to, so a script can clean up after a crash of ours.
    pub pid_file: Option<PathBuf>,
    /// Kill it and fail after this long.
    pub timeout: Duration,
    /// Other processes whose CPU use to report (the broker).
    pub watched: Vec<Watched>,
    /// Where to sample its progress from, if anywhere.
    pub progress: Option<GroupProgress>,
}

/// A peer's consumer group on its input topic.
#[derive(Clone, Debug)]
pub struct GroupProgress {
    /// Bootstrap servers.
    pub brokers: String,
    /// The group (a Kafka Streams application's `application.id`).
    pub group: String,
    /// The topic it consumes.
    pub topic: String,
}

/// Stops the progress sampler however `run` ends, an error included.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Samples the group's committed offsets on the topic every `every` until `stop`, as
/// (seconds since `started`, records committed past the partitions' starts).
fn sample_committed(
    p: &GroupProgress,
    started: Instant,
    every: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<(f64, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &p.brokers)
        .set("group.id", &p.group)
        .set("enable.auto.commit", "false")
        // read_committed would make librdkafka ask for stable offsets only, which the
        // broker refuses while a transaction holds offsets (all the time under
        // exactly_once_v2), and librdkafka retries that until the timeout. The peer's own
        // check (Admin.listConsumerGroupOffsets) does not ask for stable offsets either.
        .set("isolation.level", "read_uncommitted")
        .create()
        .context("creating the progress sampler's consumer")?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&p.topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == p.topic)
        .flat_map(|t| t.partitions().iter().map(|x| x.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {} has no partitions", p.topic);
    }
    let mut starts = Vec::with_capacity(partitions.len());
    let mut tpl = TopicPartitionList::new();
    for &q in &partitions {
        starts.push(consumer.fetch_watermarks(&p.topic, q, timeout)?.0);
        tpl.add_partition(&p.topic, q);
    }
    let mut out = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            next += every;
            // A failed fetch (the coordinator moving, say) is a missing sample, no more.
            if let Ok(c) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(2)) {
                let committed: i64 = partitions
                    .iter()
                    .zip(&starts)
                    .map(
                        |(&q, &lo)| match c.find_partition(&p.topic, q).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => (o - lo).max(0),
                            _ => 0,
                        },
                    )
                    .sum();
                out.push((round3(started.elapsed().as_secs_f64()), committed));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(out)
}

fn log_tail(log: Option<&Path>) -> String {
    log.and_then(|p| std::fs::read_to_string(p).ok())
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        })
        .unwrap_or_default()
}

fn seconds(t: nix::sys::time::TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// The last line of `stdout` that is a JSON object.
fn result_line(stdout: &str) -> Option<Map<String, Value>> {
    stdout
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok()?.as_object().cloned())
}

/// Runs the peer to completion; fails if it exits non-zero or prints no result.
pub fn run(spec: PeerSpec) -> anyhow::Result<Value> {
    let (program, args) = spec
        .command
        .split_first()
        .context("no peer command given")?;
    let stderr = match &spec.log {
        Some(p) => {
            Stdio::from(File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Stdio::inherit(),
    };
    let cpu_before = CpuSnapshot::take(&spec.watched);
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let pid = child.id();
    if let Some(f) = &spec.pid_file {
        std::fs::write(f, format!("{pid}\n"))?;
    }
    let stop_sampler = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let sampler = spec.progress.clone().map(|p| {
        let stop = stop_sampler.0.clone();
        std::thread::spawn(move || sample_committed(&p, started, Duration::from_millis(250), &stop))
    });
    // Read stdout on the side, so a chatty peer never blocks on a full pipe.
    let stdout = child.stdout.take().context("the peer's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    });

    let mut hwm_sampled_kib = 0u64;
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > spec.timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the peer did not finish within {:?}; killed:\n{}",
                spec.timeout,
                log_tail(spec.log.as_deref())
            );
        }
        if let Some(hwm) = procfs::status_kib(pid, "VmHWM") {
            hwm_sampled_kib = hwm_sampled_kib.max(hwm);
        }
        if last_sample.elapsed() >= Duration::from_millis(500) {
            last_sample = Instant::now();
            let rss = procfs::status_kib(pid, "VmRSS").unwrap_or(0);
            samples.push((started.elapsed().as_secs_f64(), rss));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = CpuSnapshot::take(&spec.watched);
    drop(stop_sampler);
    let progress = sampler.map(|h| {
        h.join()
            .map_err(|_| anyhow::anyhow!("the progress sampler panicked"))
            .and_then(|r| r)
    });
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).context("getrusage")?;
    let stdout = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))?;
    if !status.success() {
        bail!(
            "the peer failed ({status}); stdout:\n{stdout}\nstderr (last lines):\n{}",
            log_tail(spec.log.as_deref())
        );
    }
    let Some(mut out) = result_line(&stdout) else {
        bail!("the peer exited 0 but printed no JSON result; stdout:\n{stdout}");
    };
    // ru_maxrss is in KiB on Linux.
    let peak_kib = (usage.max_rss().max(0) as u64).max(hwm_sampled_kib);
    let cpu_s = seconds(usage.user_time()) + seconds(usage.system_time());
    out.insert(
        "peak_rss_mb".into(),
        json!(round3(peak_kib as f64 / 1024.0)),
    );
    out.insert(
        "peak_rss_mb_sampled".into(),
        json!(round3(hwm_sampled_kib as f64 / 1024.0)),
    );
    out.insert("process_wall_s".into(), json!(round3(wall)));
    out.insert("process_cpu_s".into(), json!(round3(cpu_s)));
    // The peer is gone from /proc by the after-snapshot, so its CPU (from rusage) is added
    // here, and taken out of what the report would otherwise call other processes'.
    let mut cpu = cpu_before.report_until(&cpu_after);
    let peer_cores = cpu_s / wall;
    cpu.insert("cpu_cores_peer".into(), json!(round3(peer_cores)));
    if let Some(other) = cpu.get("other_cpu_cores").and_then(Value::as_f64) {
        cpu.insert(
            "other_cpu_cores".into(),
            json!(round3((other - peer_cores).max(0.0))),
        );
    }
    out.insert("cpu".into(), Value::Object(cpu));
    match progress {
        // [seconds since the peer started, records committed]
        Some(Ok(samples)) => {
            out.insert(
                "samples".into(),
                json!(samples
                    .iter()
                    .map(|(t, n)| json!([t, n]))
                    .collect::<Vec<_>>()),
            );
        }
        // Only the picture lacks it; the peer's own figures stand.
        Some(Err(e)) => {
            out.insert("samples_error".into(), json!(format!("{e:#}")));
        }
        None => {}
    }
    out.insert(
        "rss_samples_mb".into(),
        json!(samples
            .iter()
            .map(|(t, kib)| json!([round3(*t), kib / 1024]))
            .collect::<Vec<_>>()),
    );
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_is_the_last_json_object_line() {
        let out = "starting\n{\"per_s\": 1}\nnoise\n{\"per_s\": 2}\n[1]\nbye\n";
        assert_eq!(result_line(out).unwrap()["per_s"], 2);
        assert!(result_line("no json\n{broken\n").is_none());
    }

    #[test]
    fn runs_a_child_and_measures_it() {
        let v = run(PeerSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                r#"echo warming up; echo '{"events": 3, "per_s": 1.5}'"#.into(),
            ],
            log: None,
            pid_file: None,
            timeout: Duration::from_secs(30),
            watched: vec![],
            progress: None,
        })
        .unwrap();
        assert_eq!(v["events"], 3);
        assert!(v["peak_rss_mb"].as_f64().unwrap() > 0.0);
        let failing = run(PeerSpec {
            command: vec!["sh".into(), "-c".into(), "echo '{}'; exit 3".into()],
            log: None,
            pid_file: None,
            timeout: Duration::from_secs(30),
            watched: vec![],
            progress: None,
        });
        assert!(failing.unwrap_err().to_string().contains("failed"));
    }
}
