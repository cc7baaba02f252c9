//! A static member fenced by the coordinator (here by a second process with the same
//! `--instance-id`, as after a coordinator failover) gets a fatal librdkafka error. The
//! projector recreates its consumer, resumes from the store, and goes on applying.

mod common;

use std::time::Duration;

use common::*;
use ledger_testkit::wait_ready;
use nix::sys::signal::Signal;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_consumer_is_recreated_and_resumes() {
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

    // An impostor with the same instance id fences the first...
    let mut b = ProjectorProcess::spawn(&brokers, &topic, &group, &dir.path().join("b"), &extra);
    let url = a.url();
    ledger_testkit::wait_for(
        "the first projector to recreate its consumer",
        Duration::from_secs(60),
        || async {
            (ledger_testkit::metric_sum(&url, "projector_consumer_restarts_total").await? > 0)
                .then_some(())
        },
    )
    .await;
    b.kill9();

    // ...which carries on with what comes next, from its own store.
    let mut all = first.clone();
    all.extend(produce(&brokers, &topic, &workload(4, 20, 500, "f2")).await);
    wait_applied(&a.url(), &ends_of(&all), Duration::from_secs(90)).await;
    a.signal(Signal::SIGTERM);
    assert!(
        a.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        a.log_text()
    );
    let store = ledger_store::Store::open(&dir.path().join("a"), 8 << 20).unwrap();
    assert_store_matches(&store, &topic, &model_of(&all));
}
