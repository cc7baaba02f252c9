//! The faults, each as a scenario: a stack on a fresh topic, a verified load, and the
//! fault striking in the middle of it. The fault suite runs each once; the soak runs
//! them in a random loop.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::*;

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the projector this many times, restarting it each time.
    KillProjector(u32),
    /// SIGKILL the ingest this many times, restarting it each time.
    KillIngest(u32),
    /// Stop the broker for this many seconds (needs an [`OwnBroker`]).
    BrokerOutage(u64),
    /// A second projector with its own store joins the group, works, and leaves.
    SecondProjector,
    /// The projector's disk fills up; then the space comes back.
    DiskFull,
    /// This many undecodable messages are written into the topic during the load.
    Poison(u32),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillProjector(n) => write!(f, "projector SIGKILL x{n}"),
            Fault::KillIngest(n) => write!(f, "ingest SIGKILL x{n}"),
            Fault::BrokerOutage(s) => write!(f, "broker stopped {s} s"),
            Fault::SecondProjector => write!(f, "second projector joins and leaves"),
            Fault::DiskFull => write!(f, "projector disk full"),
            Fault::Poison(n) => write!(f, "{n} poison events"),
        }
    }
}

/// The size and pace of a scenario's load.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    /// Accounts opened first.
    pub accounts: u32,
    /// Commands after the opens.
    pub commands: u32,
    /// Offered rate, commands per second.
    pub rate: u32,
    /// Workload seed.
    pub seed: u64,
}

/// Runs one scenario in `dir` against `brokers` (or against `own`, which the broker
/// outage needs). Returns the load's verified result; an error if the load did not
/// verify or the fault did not behave as expected.
pub async fn run(
    fault: Fault,
    bins: &Bins,
    brokers: &str,
    own: Option<&OwnBroker>,
    topic: &str,
    dir: &Path,
    spec: LoadSpec,
) -> Result<LoadResult> {
    let brokers = match (fault, own) {
        (Fault::BrokerOutage(_), Some(b)) => b.brokers(),
        (Fault::BrokerOutage(_), None) => {
            bail!("a broker outage needs a broker of the harness's own")
        }
        _ => brokers.to_string(),
    };
    let disk = match fault {
        Fault::DiskFull => Some(SmallDisk::mount(&dir.join("disk"), 2)?),
        _ => None,
    };
    let data = disk
        .as_ref()
        .map_or_else(|| dir.join("p"), |d| d.path.join("p"));
    let mut stack = Stack::start(bins, &brokers, topic, dir, &data).await?;
    let mut load = stack.load(spec.accounts, spec.commands, spec.rate, spec.seed)?;
    let step = i64::from(spec.commands / 8).max(100);
    let progress = Duration::from_secs(60);

    match fault {
        Fault::KillProjector(n) => {
            for kill in 0..n {
                wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
                if kill == 0 {
                    ensure!(load.running(), "the first kill must strike during the load");
                }
                stack.projector.kill9()?;
                stack.projector.restart()?;
                wait_ready(&stack.projector.url(), progress)
                    .await
                    .with_context(|| format!("restart {kill}:\n{}", stack.projector.log_tail()))?;
            }
        }
        Fault::KillIngest(n) => {
            for kill in 0..n {
                wait_progress(&stack.projector.url(), step * 2, &mut load, progress).await?;
                if kill == 0 {
                    ensure!(load.running(), "the first kill must strike during the load");
                }
                stack.ingest.kill9()?;
                stack.ingest.restart()?;
                wait_ready(&stack.ingest.url(), progress).await?;
            }
        }
        Fault::BrokerOutage(secs) => {
            let broker = own.expect("checked above");
            wait_progress(&stack.projector.url(), step * 2, &mut load, progress).await?;
            ensure!(load.running(), "the outage must strike during the load");
            broker.stop()?;
            hold_fault(Duration::from_secs(secs)).await;
            broker.restart()?;
        }
        Fault::SecondProjector => {
            wait_progress(&stack.projector.url(), step * 2, &mut load, progress).await?;
            let mut second = Service::start(
                "projector",
                &bins.projector,
                projector_args(&brokers, topic, &stack.group, &dir.join("p2"), None),
                dir.join("projector2.log"),
            )?;
            wait_ready(&second.url(), progress).await?;
            // It takes partitions and applies them from its own store before it leaves.
            let url2 = second.url();
            wait_until("the second projector to apply events", progress, || async {
                applied_total(&url2).await.unwrap_or(0) > 100
            })
            .await?;
            let status = second.terminate(Duration::from_secs(30))?;
            ensure!(
                status.success(),
                "the second projector left with {status}:\n{}",
                second.log_tail()
            );
        }
        Fault::DiskFull => {
            let disk = disk.as_ref().expect("mounted above");
            let mut status = None;
            wait_until(
                "the projector to stop on a full disk",
                Duration::from_secs(120),
                || {
                    status = stack.projector.try_status();
                    std::future::ready(status.is_some())
                },
            )
            .await
            .with_context(|| stack.projector.log_tail())?;
            let status = status.expect("set when the wait ended");
            ensure!(!status.success(), "a full disk must be a non-zero exit");
            let log = stack.projector.log_tail();
            ensure!(
                log.contains("No space left on device"),
                "a clear error:\n{log}"
            );
            disk.grow(256)?;
            // No offset was committed past the durable state.
            let stored = ledger_store::Store::open(&data, 8 << 20)?.offsets(topic)?;
            let committed = ledger_testkit::committed_offsets(&brokers, &stack.group, topic, 6)?;
            for (p, c) in &committed {
                let s = stored.get(p).copied().unwrap_or(0);
                ensure!(*c <= s, "partition {p}: committed {c} past the durable {s}");
            }
            stack.projector.restart()?;
        }
        Fault::Poison(n) => {
            wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
            ensure!(load.running(), "the poison must arrive during the load");
            for i in 0..n {
                produce_garbage(&brokers, topic, &format!("poison-{i}"), i).await?;
            }
        }
    }
    // A failed load names its symptom (a 503, a mismatch); the services' logs name the
    // cause, e.g. a producer that never reconnected after a broker restart.
    let result = load.finish(Duration::from_secs(240)).await.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\ningest log (last lines):\n{}\nprojector log (last lines):\n{}",
            stack.ingest.log_tail(),
            stack.projector.log_tail()
        )
    })?;
    if let Fault::Poison(n) = fault {
        let dlq = format!("{topic}.dlq");
        let url = stack.projector.url();
        wait_until(
            "every poison event in the dead-letter topic",
            progress,
            || async { dead_lettered(&url).await >= u64::from(n) },
        )
        .await?;
        let end = topic_end(&brokers, &dlq)?;
        ensure!(
            end == i64::from(n),
            "{n} poison events, {end} dead letters in {dlq}"
        );
    }
    if let Fault::BrokerOutage(_) | Fault::KillIngest(_) = fault {
        ensure!(
            result.report["retried"].as_u64().unwrap_or(0) > 0,
            "the fault was not felt by the load: {}",
            result.report
        );
    }
    drop(stack);
    drop(disk);
    Ok(result)
}

/// Writes bytes that are no envelope under `key`.
async fn produce_garbage(brokers: &str, topic: &str, key: &str, i: u32) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .create()?;
    let payload = format!("garbage {i}: not a ledger envelope");
    p.send(
        FutureRecord::to(topic).key(key).payload(&payload),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)?;
    Ok(())
}

/// The projector's count of dead-lettered events.
async fn dead_lettered(base: &str) -> u64 {
    let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("projector_poison_events_total{action=\"dead_lettered\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The number of messages in a one-partition topic.
fn topic_end(brokers: &str, topic: &str) -> Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let (_, hi) = c.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok(hi)
}
