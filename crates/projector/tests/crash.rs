//! Crash consistency: the projector runs as a child process under load and is killed
//! with SIGKILL at random moments, at least ten times, and restarted each time. After
//! every kill, Kafka's committed offsets are never ahead of the store's; at the end every
//! balance and command status equals the model. Nothing lost, nothing applied twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ledger_store::Store;
use ledger_testkit::wait_ready;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KILLS: usize = 10;
const EVENTS_PER_ROUND: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("crash");
    let group = format!("{topic}.group");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Small batches, so that kills land between, inside and after many transactions;
    // static membership, so that a restarted instance takes its partitions back at once.
    let extra = ["--batch-max-events", "100", "--instance-id", "crash-test-0"];
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let events = workload(seed, 60, EVENTS_PER_ROUND * KILLS, "k");
    let mut produced = Vec::new();
    let mut proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &extra);

    for (round, chunk) in events.chunks(events.len().div_ceil(KILLS)).enumerate() {
        wait_ready(&proc.url(), Duration::from_secs(60)).await;
        let before: i64 = applied_offsets(&proc.url())
            .await
            .unwrap_or_default()
            .values()
            .sum();
        let (b, t, c) = (brokers.clone(), topic.clone(), chunk.to_vec());
        let writer = tokio::spawn(async move { produce(&b, &t, &c).await });
        // Kill once the projector has applied a random number of this round's events,
        // or once it has caught up if the writer finished first.
        let target = before + rng.random_range(1..chunk.len() as i64);
        let url = proc.url();
        ledger_testkit::wait_for(
            "progress before the kill",
            Duration::from_secs(60),
            || async {
                let applied: i64 = applied_offsets(&url).await?.values().sum();
                (applied >= target || writer.is_finished()).then_some(())
            },
        )
        .await;
        proc.kill9();
        produced.extend(writer.await.unwrap());

        // With the process dead: Kafka's committed offsets never exceed the durable ones.
        let stored = Store::open(&data, 8 << 20)
            .unwrap()
            .offsets(&topic)
            .unwrap();
        let committed = committed_offsets(&brokers, &group, &topic);
        for (p, c) in &committed {
            let s = stored.get(p).copied().unwrap_or(0);
            assert!(
                *c <= s,
                "round {round}: partition {p} committed {c} past the stored offset {s}"
            );
        }
        eprintln!("round {round}: killed at {target}+ applied; stored {stored:?}");
        proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &extra);
    }

    let ends: BTreeMap<i32, i64> = ends_of(&produced);
    wait_ready(&proc.url(), Duration::from_secs(60)).await;
    wait_applied(&proc.url(), &ends, Duration::from_secs(120)).await;
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = proc.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "SIGTERM exits 0; log:\n{}",
        proc.log_text()
    );

    let store = Store::open(&data, 8 << 20).unwrap();
    assert_eq!(produced.len(), events.len());
    assert_store_matches(&store, &topic, &model_of(&produced));
    assert_eq!(store.offsets(&topic).unwrap(), ends);
    assert_eq!(
        committed_offsets(&brokers, &group, &topic),
        ends,
        "final commit after a clean stop"
    );
}
