//! What must stop the start-up with a clear message and a non-zero exit, before anything
//! is consumed: a data directory in use or unusable, a store ahead of the log, a topic
//! that gained partitions since the store was built.

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
    let built = StoreBuilt::new("ahead", |topic, store| {
        let mut batch = ledger_domain::Batch::default();
        for p in 0..common::PARTITIONS {
            batch.next_offsets.insert(p, 1_000);
        }
        store.apply_batch(topic, &batch).unwrap();
    });
    let log = built.projector_fails();
    assert!(log.contains("outside the log"), "{log}");
}

/// A topic of the contract's shape and a store built for it earlier, as `prepare` left it.
struct StoreBuilt {
    brokers: String,
    topic: String,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl StoreBuilt {
    fn new(name: &str, prepare: impl FnOnce(&str, &ledger_store::Store)) -> Self {
        let brokers = ledger_testkit::brokers();
        let topic = ledger_testkit::unique_topic(name);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(common::create_topic(&brokers, &topic));
        let dir = tempfile::tempdir().unwrap();
        let store = ledger_store::Store::open(&dir.path().join("data"), 1 << 20).unwrap();
        store
            .check_partition_count(&topic, common::PARTITIONS)
            .unwrap();
        prepare(&topic, &store);
        Self {
            brokers,
            topic,
            rt,
            dir,
        }
    }

    /// Starts a projector on the store, which must stop with an error; its log.
    fn projector_fails(&self) -> String {
        let group = format!("{}.g", self.topic);
        let data = self.dir.path().join("data");
        let mut p = ProjectorProcess::spawn(&self.brokers, &self.topic, &group, &data, &[]);
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "it must not carry on");
        p.log_text()
    }
}

#[test]
fn a_topic_that_gained_partitions_stops_the_projector() {
    // State is kept per partition: partitions added to the topic move keys, and an
    // account's later events would land beside another copy of its state. The projector
    // must refuse to go on, and say why and what to do.
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let built = StoreBuilt::new("grown", |_, _| {});
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &built.brokers)
        .create()
        .unwrap();
    let grown = common::PARTITIONS as usize + 2;
    let results = built
        .rt
        .block_on(admin.create_partitions(
            &[NewPartitions::new(&built.topic, grown)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap();
    }
    let log = built.projector_fails();
    assert!(
        log.contains(&format!("now has {grown} partitions")) && log.contains("new topic"),
        "the error names the hazard and the way out:\n{log}"
    );
}
