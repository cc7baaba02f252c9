//! A data directory that is in use or unusable stops the start-up with a clear message
//! and a non-zero exit, before anything is consumed.

mod common;

use std::time::Duration;

use common::ProjectorProcess;

// These fail before any broker is contacted, so the address needs no broker behind it.
const NO_BROKER: &str = "127.0.0.1:1";

#[test]
fn a_data_directory_in_use_stops_the_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _held = ledger_store::Store::open(&data, 1 << 20).unwrap();
    let mut p = ProjectorProcess::spawn(NO_BROKER, "t", "g", &data, &[]);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = p.log_text();
    assert!(log.contains("in use by another process"), "{log}");
}

#[test]
fn an_unusable_data_directory_stops_the_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a-file");
    std::fs::write(&data, b"not a directory").unwrap();
    let mut p = ProjectorProcess::spawn(NO_BROKER, "t", "g", &data, &[]);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = p.log_text();
    assert!(log.contains("data directory"), "{log}");
}

#[test]
fn a_store_ahead_of_the_log_stops_instead_of_skipping() {
    // A store built from another incarnation of the topic (recreated under the same
    // name) holds offsets the log does not have: that must stop the projector, not make
    // it skip everything below them as "redelivered".
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("ahead");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(&brokers, &topic));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = ledger_store::Store::open(&data, 1 << 20).unwrap();
        store
            .check_partition_count(&topic, common::PARTITIONS)
            .unwrap();
        let mut batch = ledger_domain::Batch::default();
        for p in 0..common::PARTITIONS {
            batch.next_offsets.insert(p, 1_000);
        }
        store.apply_batch(&topic, &batch).unwrap();
    }
    let mut p = ProjectorProcess::spawn(&brokers, &topic, &format!("{topic}.g"), &data, &[]);
    let status = p.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = p.log_text();
    assert!(log.contains("outside the log"), "{log}");
}
