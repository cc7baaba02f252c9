//! The faults, each as a scenario: a stack on a fresh topic, a verified load, and the
//! fault striking in the middle of it. The fault suite runs each once; the soak runs
//! them in a random loop.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ledger_testkit::{try_wait_for, try_wait_ready};

use crate::*;

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the projector this many times, restarting it each time.
    KillProjector(u32),
    /// SIGKILL the ingest this many times, restarting it each time.
    KillIngest(u32),
    /// This many times, restart the projector with the test hook that aborts it right
    /// after the log acknowledged a batch's transfer follow-ups and before the batch is
    /// stored; restart it normally after each abort.
    CrashAfterFollowUps(u32),
    /// Stop the broker for this many seconds (needs an [`OwnBroker`]).
    BrokerOutage(u64),
    /// Freeze the broker (SIGSTOP) for this many seconds, longer than the ingest's
    /// delivery timeout, with commands in flight; then SIGCONT.
    BrokerFrozen(u64),
    /// Restart the broker this many times in a row, under load.
    BrokerRestartStorm(u32),
    /// On three brokers (replication 3, `min.insync.replicas` 2): SIGKILL the leader of
    /// a busy partition; then stop a second broker, so that writes must be refused;
    /// then bring both back.
    LeaderKilled,
    /// Two more projectors, each with a store of its own, join the group (three in all);
    /// one leaves (SIGTERM), one is killed (SIGKILL). Reads through every live instance
    /// must never find an account that exists missing.
    GroupOfThree,
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
            Fault::CrashAfterFollowUps(n) => write!(
                f,
                "projector aborted between writing follow-ups and storing x{n}"
            ),
            Fault::BrokerOutage(s) => write!(f, "broker stopped {s} s"),
            Fault::BrokerFrozen(s) => write!(f, "broker frozen (SIGSTOP) {s} s"),
            Fault::BrokerRestartStorm(n) => write!(f, "broker restarted x{n}"),
            Fault::LeaderKilled => {
                write!(f, "leader SIGKILL, then a second broker down, on 3 brokers")
            }
            Fault::GroupOfThree => {
                write!(
                    f,
                    "projectors join, one leaves, one is killed, in a group of three"
                )
            }
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
        (Fault::LeaderKilled, Some(b)) if b.nodes >= 3 => b.brokers(),
        (Fault::LeaderKilled, _) => {
            bail!("killing a leader needs a cluster of three brokers of the harness's own")
        }
        (f, Some(b)) if f.needs_own_broker() => b.brokers(),
        (f, None) if f.needs_own_broker() => {
            bail!("{f} needs a broker of the harness's own")
        }
        _ => brokers.to_string(),
    };
    let spec = match fault {
        // Forming the group of three takes 10 to 20 s, and each abort at the test hook
        // needs transfers still arriving: a load offered faster would be over before the
        // fault it is there to judge has struck.
        Fault::GroupOfThree | Fault::CrashAfterFollowUps(_) => LoadSpec {
            rate: spec.rate.min((spec.commands / 30).max(100)),
            ..spec
        },
        _ => spec,
    };
    let replication = if fault == Fault::LeaderKilled { 3 } else { 1 };
    let disk = match fault {
        Fault::DiskFull => Some(SmallDisk::mount(&dir.join("disk"), 2)?),
        _ => None,
    };
    let data = disk
        .as_ref()
        .map_or_else(|| dir.join("p"), |d| d.path.join("p"));
    let mut stack = Stack::start(bins, &brokers, topic, dir, &data, replication).await?;
    let mut recovery: Option<Duration> = None;
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
                try_wait_ready(&stack.projector.url(), progress)
                    .await
                    .with_context(|| format!("restart {kill}:\n{}", stack.projector.log_tail()))?;
            }
        }
        Fault::CrashAfterFollowUps(n) => {
            for crash in 0..n {
                wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
                if crash == 0 {
                    ensure!(
                        load.running(),
                        "the first crash must strike during the load"
                    );
                }
                // A few batches with follow-ups in, so that the abort lands mid-stream.
                let after = (2 + crash % 3).to_string();
                stack.projector.kill9()?;
                stack
                    .projector
                    .restart_with(&["--test-crash-after-follow-ups", &after])?;
                let status = try_wait_for(
                    "the projector to abort at the test hook",
                    Duration::from_secs(120),
                    || std::future::ready(stack.projector.try_status()),
                )
                .await
                .with_context(|| stack.projector.log_tail())?;
                ensure!(
                    !status.success() && stack.projector.log_tail().contains("test hook"),
                    "crash {crash}: the projector must abort at the hook, got {status}:\n{}",
                    stack.projector.log_tail()
                );
                stack.projector.restart()?;
                try_wait_ready(&stack.projector.url(), progress)
                    .await
                    .with_context(|| format!("restart {crash}:\n{}", stack.projector.log_tail()))?;
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
                try_wait_ready(&stack.ingest.url(), progress).await?;
            }
        }
        Fault::BrokerOutage(secs) => {
            let broker = own.expect("checked above");
            wait_progress(&stack.projector.url(), step * 2, &mut load, progress).await?;
            ensure!(load.running(), "the outage must strike during the load");
            broker.stop()?;
            hold_fault(Duration::from_secs(secs)).await;
            broker.restart()?;
            recovery = Some(wait_accepting(&stack.ingest.url(), RECOVERY_BOUND).await?);
        }
        Fault::BrokerFrozen(secs) => {
            let broker = own.expect("checked above");
            wait_progress(&stack.projector.url(), step * 2, &mut load, progress).await?;
            ensure!(load.running(), "the freeze must strike during the load");
            broker.signal_node(1, nix::sys::signal::Signal::SIGSTOP)?;
            hold_fault(Duration::from_secs(secs)).await;
            broker.signal_node(1, nix::sys::signal::Signal::SIGCONT)?;
            recovery = Some(
                wait_accepting(&stack.ingest.url(), RECOVERY_BOUND)
                    .await
                    .with_context(|| stack.ingest.log_tail())?,
            );
        }
        Fault::BrokerRestartStorm(n) => {
            let broker = own.expect("checked above");
            wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
            ensure!(load.running(), "the storm must strike during the load");
            for _ in 0..n {
                broker.stop()?;
                broker.restart()?;
            }
            recovery = Some(
                wait_accepting(&stack.ingest.url(), RECOVERY_BOUND)
                    .await
                    .with_context(|| stack.ingest.log_tail())?,
            );
        }
        Fault::LeaderKilled => {
            let cluster = own.expect("checked above");
            wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
            ensure!(load.running(), "the kill must strike during the load");
            let leader = partition_leader(&brokers, topic, 0)?;
            cluster.kill_node(leader)?;
            // Back once the controller has fenced it and moved its leaderships.
            let first = wait_accepting(&stack.ingest.url(), FAILOVER_BOUND)
                .await
                .with_context(|| stack.ingest.log_tail())?;
            let second = (1..=3).find(|n| *n != leader).expect("three brokers");
            cluster.stop_node(second)?;
            // What was in flight settles within the delivery timeout; after that, with
            // one broker left of three, nothing may be acknowledged.
            hold_fault(Duration::from_secs(4)).await;
            let before = ingest_accepted(&stack.ingest.url()).await.unwrap_or(0);
            hold_fault(Duration::from_secs(5)).await;
            let after = ingest_accepted(&stack.ingest.url()).await.unwrap_or(0);
            ensure!(
                after == before,
                "{} commands were acknowledged with one broker of three (min.insync.replicas=2)",
                after - before
            );
            cluster.start_node(leader)?;
            cluster.start_node(second)?;
            let back = wait_accepting(&stack.ingest.url(), RECOVERY_BOUND)
                .await
                .with_context(|| stack.ingest.log_tail())?;
            recovery = Some(first.max(back));
        }
        Fault::GroupOfThree => {
            wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
            let a: group::Instance = (stack.projector.url(), "projector-a".into());
            let accounts = (0..spec.accounts)
                .map(|i| format!("s{}-{i}", spec.seed))
                .collect();
            let reader = group::Reader::start(vec![a.clone()], accounts, 6, 2);
            let mut b = stack.add_projector("b")?;
            let mut c = stack.add_projector("c")?;
            for p in [&b, &c] {
                try_wait_ready(&p.url(), progress).await?;
            }
            let (b_i, c_i) = (
                (b.url(), "projector-b".into()),
                (c.url(), "projector-c".into()),
            );
            reader.set_instances(vec![a.clone(), b_i, c_i.clone()]);
            let three = [a.0.clone(), b.url(), c.url()];
            group::wait_settled(&three, 3, 6, progress).await?;
            ensure!(load.running(), "the group must form during the load");
            // One leaves.
            reader.set_instances(vec![a.clone(), c_i]);
            let status = b.terminate(Duration::from_secs(30))?;
            ensure!(
                status.success(),
                "projector-b left with {status}:\n{}",
                b.log_tail()
            );
            wait_progress(&stack.projector.url(), step, &mut load, progress).await?;
            // One is killed.
            reader.set_instances(vec![a.clone()]);
            c.kill9()?;
            group::wait_settled(std::slice::from_ref(&a.0), 1, 6, Duration::from_secs(90)).await?;
            let report = reader.stop();
            ensure!(
                report.regressions.is_empty() && report.unexpected.is_empty(),
                "reads through the group broke its promise: {report:?}"
            );
        }
        Fault::DiskFull => {
            let disk = disk.as_ref().expect("mounted above");
            let status = try_wait_for(
                "the projector to stop on a full disk",
                Duration::from_secs(120),
                || std::future::ready(stack.projector.try_status()),
            )
            .await
            .with_context(|| stack.projector.log_tail())?;
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
        try_wait_for(
            "every poison event in the dead-letter topic",
            progress,
            || async { (dead_lettered(&url).await >= u64::from(n)).then_some(()) },
        )
        .await?;
        let end = topic_end(&brokers, &dlq)?;
        ensure!(
            end == i64::from(n),
            "{n} poison events, {end} dead letters in {dlq}"
        );
    }
    if matches!(
        fault,
        Fault::BrokerOutage(_) | Fault::KillIngest(_) | Fault::LeaderKilled
    ) {
        ensure!(
            result.report["retried"].as_u64().unwrap_or(0) > 0,
            "the fault was not felt by the load: {}",
            result.report
        );
    }
    let client_restarts = (
        ledger_testkit::metric_sum(&stack.ingest.url(), "ingest_producer_restarts_total")
            .await
            .unwrap_or(0),
        ledger_testkit::metric_sum(&stack.projector.url(), "projector_consumer_restarts_total")
            .await
            .unwrap_or(0),
    );
    drop(stack);
    drop(disk);
    Ok(LoadResult {
        recovery_s: recovery.map(|d| d.as_secs_f64()),
        client_restarts,
        ..result
    })
}

/// How soon after the brokers are back the ingest must accept commands again.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(15);
/// How soon after a leader is SIGKILLed: the controller fences it after its session
/// timeout (6 s in kafka-local.sh's cluster), and the followers leave the ISR after
/// `replica.lag.time.max.ms` (5 s).
pub const FAILOVER_BOUND: Duration = Duration::from_secs(25);

impl Fault {
    fn needs_own_broker(self) -> bool {
        matches!(
            self,
            Fault::BrokerOutage(_)
                | Fault::BrokerFrozen(_)
                | Fault::BrokerRestartStorm(_)
                | Fault::LeaderKilled
        )
    }
}

/// The `node.id` of the broker that leads `partition`.
fn partition_leader(brokers: &str, topic: &str, partition: i32) -> Result<i32> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let leader = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .context("the partition's metadata")?;
    ensure!(
        leader >= 1,
        "partition {partition} of {topic} has no leader"
    );
    Ok(leader)
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
    ledger_testkit::metric_sum(
        base,
        "projector_poison_events_total{action=\"dead_lettered\"}",
    )
    .await
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
