//! Fencing of a static member. Every projector is a static member of its group, under the
//! instance id kept in its data directory (or `--instance-id`).
//!
//! - A copy of a data directory run beside its original gives two live processes one id:
//!   the group fences one of them, which stops with a message that says what happened
//!   and how to fix it, serves nothing more, and does not fence the other back. The
//!   other goes on.
//! - A fencing with no other projector of that id alive (here another client of the
//!   same `group.instance.id` that is not a projector, as after a coordinator failover)
//!   is a fault of one librdkafka client: the projector recreates its consumer, resumes
//!   from the store, and goes on applying.

mod common;

use std::time::Duration;

use common::*;
use ledger_testkit::wait_ready;
use nix::sys::signal::Signal;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_data_directory_beside_its_original_stops_the_fenced_one() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("twin");
    let group = format!("{topic}.g");
    create_topic(&brokers, &topic).await;
    let first = produce(&brokers, &topic, &workload(5, 20, 500, "w1")).await;
    let dir = tempfile::tempdir().unwrap();
    let (original, copy) = (dir.path().join("a"), dir.path().join("b"));
    // The original runs with default flags (its id generated and stored), stops cleanly,
    // and its directory is copied.
    let mut a = ProjectorProcess::spawn(&brokers, &topic, &group, &original, &[]);
    wait_ready(&a.url(), Duration::from_secs(60)).await;
    wait_applied(&a.url(), &ends_of(&first), Duration::from_secs(60)).await;
    a.signal(Signal::SIGTERM);
    assert!(a.wait_exit(Duration::from_secs(30)).success());
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(&original)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());

    // Both run: the newcomer joins under the same id and the group fences the original.
    let mut a = ProjectorProcess::spawn(&brokers, &topic, &group, &original, &[]);
    wait_ready(&a.url(), Duration::from_secs(60)).await;
    let mut b = ProjectorProcess::spawn(&brokers, &topic, &group, &copy, &[]);
    wait_ready(&b.url(), Duration::from_secs(60)).await;
    let status = a.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fenced one exits non-zero");
    let log = a.log_text();
    for said in [
        "another projector, at",
        &b.url(),
        "with this instance's id",
        "Two processes share one identity",
        "--data-dir",
        "--instance-id",
    ] {
        assert!(log.contains(said), "the message says {said:?}:\n{log}");
    }
    assert!(
        !log.contains("recreating it"),
        "the fenced one did not take its id back:\n{log}"
    );

    // The copy carries on with what comes next, never fenced back.
    let mut all = first.clone();
    all.extend(produce(&brokers, &topic, &workload(6, 20, 500, "w2")).await);
    wait_applied(&b.url(), &ends_of(&all), Duration::from_secs(90)).await;
    assert_http_matches(&b.url(), &model_of(&all)).await;
    assert_eq!(
        ledger_testkit::metric_sum(&b.url(), "projector_consumer_restarts_total").await,
        Some(0),
        "{}",
        b.log_text()
    );
    b.signal(Signal::SIGTERM);
    assert!(
        b.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        b.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_consumer_with_no_twin_is_recreated_and_resumes() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("fenced");
    let group = format!("{topic}.g");
    create_topic(&brokers, &topic).await;
    let first = produce(&brokers, &topic, &workload(3, 20, 500, "f1")).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--instance-id", "fenced-0"];
    let mut a = ProjectorProcess::spawn(&brokers, &topic, &group, &dir.path().join("a"), &extra);
    wait_ready(&a.url(), Duration::from_secs(60)).await;
    wait_applied(&a.url(), &ends_of(&first), Duration::from_secs(60)).await;

    // Another client joins under the same id, and leaves no directory entry.
    let impostor: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("group.instance.id", "fenced-0")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "10000")
        .create()
        .unwrap();
    impostor.subscribe(&[&topic]).unwrap();
    let url = a.url();
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            while polling.load(std::sync::atomic::Ordering::Acquire) {
                let _ = impostor.poll(Duration::from_millis(100));
            }
        })
    };
    ledger_testkit::wait_for(
        "the projector to recreate its consumer",
        Duration::from_secs(60),
        || async {
            (ledger_testkit::metric_sum(&url, "projector_consumer_restarts_total").await? > 0)
                .then_some(())
        },
    )
    .await;
    polling.store(false, std::sync::atomic::Ordering::Release);
    poller.join().unwrap();

    // ...which carries on with what comes next, from its own store.
    let mut all = first.clone();
    all.extend(produce(&brokers, &topic, &workload(4, 20, 500, "f2")).await);
    wait_applied(&a.url(), &ends_of(&all), Duration::from_secs(90)).await;
    let log = a.log_text();
    assert!(
        log.contains("taken for a fault of the group"),
        "it looked for a twin and found none:\n{log}"
    );
    a.signal(Signal::SIGTERM);
    assert!(
        a.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    let store = ledger_store::Store::open(&dir.path().join("a"), 8 << 20).unwrap();
    assert_store_matches(&store, &topic, &model_of(&all));
}
