//! The group's directory: the compacted topic `<topic>.projectors`, where each instance
//! publishes, keyed by its id, where it is reached and what it holds (its role and
//! applied offset per partition), and from which it reads everyone else's.
//!
//! An instance publishes every [`PUBLISH_EVERY`] and at once when a role changes; an
//! instance not heard from for [`crate::group::ENTRY_TTL`] is taken for dead. On a clean
//! stop it publishes a tombstone, so the others forget it at once. The entries are soft
//! state: losing some costs a moment of routing, never data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use ledger_eventlog::admin::{ensure_compacted_topic, TopicSpec};
use ledger_eventlog::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::group::{now_ms, Entry, Group, PUBLISH_EVERY};
use crate::metrics::ProjectorMetrics;

/// An entry older than this by the reader's clock, found in the directory's history, is
/// not taken for a live instance (clocks may differ by a little, never by this much).
const HISTORY_HORIZON_MS: u64 = 60_000;

/// Consecutive failed publications after which the producer is replaced.
const PUBLISH_FAILURES_BEFORE_RESTART: u32 = 10;

/// The directory topic of an event topic.
pub(crate) fn topic_of(topic: &str) -> String {
    format!("{topic}.projectors")
}

/// Creates the directory topic (compacted, one partition), retrying until the brokers
/// answer or `stop`. Returns whether it exists.
pub(crate) async fn create_topic(
    kafka: &KafkaConfig,
    name: &str,
    replication_factor: i32,
    stop: &CancellationToken,
) -> bool {
    let spec = TopicSpec {
        name: name.to_string(),
        partitions: 1,
        replication_factor,
    };
    let created = (|| ensure_compacted_topic(kafka, &spec, Duration::from_secs(5)))
        .retry(crate::every(Duration::from_secs(1)))
        .notify(|e, _| warn!(topic = name, error = %e, "cannot create the directory topic yet; retrying"));
    tokio::select! {
        () = stop.cancelled() => false,
        r = created => r.is_ok(),
    }
}

fn new_producer(kafka: &KafkaConfig) -> Result<FutureProducer, String> {
    kafka
        .client_config(
            &[
                ("client.id", "projector-directory"),
                ("linger.ms", "0"),
                ("message.timeout.ms", "3000"),
                ("socket.connection.setup.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "1000"),
            ],
            &[],
        )
        .map_err(|e| e.to_string())?
        .create()
        .map_err(|e| e.to_string())
}

/// Publishes this instance's entry every [`PUBLISH_EVERY`] and on every role change, and
/// a tombstone on `stop`. A producer that stops delivering is replaced.
pub(crate) async fn publish(
    group: Arc<Group>,
    kafka: KafkaConfig,
    topic: String,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
) {
    let mut producer = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = group.changed.notified() => {}
            () = tokio::time::sleep(PUBLISH_EVERY) => {}
        }
        if producer.is_none() {
            match new_producer(&kafka) {
                Ok(p) => producer = Some(p),
                Err(e) => {
                    warn!(error = %e, "cannot build the directory producer; this instance stays unknown to the others");
                    continue;
                }
            }
        }
        let Some(p) = producer.as_ref() else { continue };
        let entry = group.entry();
        let payload = serde_json::to_vec(&entry).expect("an entry always serializes");
        let record = FutureRecord::to(&topic)
            .key(group.id.as_str())
            .payload(&payload);
        match p.send(record, Duration::from_secs(3)).await {
            Ok(_) => failures = 0,
            Err((e, _)) => {
                failures += 1;
                metrics
                    .directory_failures
                    .get_or_create(&vec![("direction", "publish".to_string())])
                    .inc();
                debug!(error = %e, failures, "publishing the directory entry failed");
                if failures >= PUBLISH_FAILURES_BEFORE_RESTART {
                    warn!(failures, error = %e, "the directory producer has stopped delivering; replacing it");
                    metrics.directory_restarts.inc();
                    producer = None;
                    failures = 0;
                }
            }
        }
    }
    let Some(producer) = producer else { return };
    // The id is the other process's now: a tombstone would erase its entry.
    if group.was_fenced_by_twin() {
        return;
    }
    let tombstone = FutureRecord::<str, [u8]>::to(&topic).key(group.id.as_str());
    match producer.send(tombstone, Duration::from_secs(2)).await {
        Ok(_) => info!(instance_id = %group.id, "left the group's directory"),
        Err((e, _)) => {
            debug!(error = %e, "the directory tombstone was not delivered; the entry expires instead")
        }
    }
}

/// Reads the directory from its beginning and then on, into `group`, until `stop`.
/// Blocking: run it on a thread of its own. Once the history there was at the start
/// is read, the group knows its directory is loaded.
pub(crate) fn read(
    group: Arc<Group>,
    kafka: KafkaConfig,
    topic: String,
    metrics: ProjectorMetrics,
    stop: CancellationToken,
) {
    let consumer: BaseConsumer = match kafka
        .client_config(
            &[
                ("group.id", "ledger-directory-reader"),
                ("client.id", "projector-directory"),
                ("socket.connection.setup.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "1000"),
                ("fetch.wait.max.ms", "50"),
            ],
            &[(
                "enable.auto.commit",
                "false",
                "the directory is read, never committed",
            )],
        )
        .map_err(|e| e.to_string())
        .and_then(|c| c.create().map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the directory reader; this instance answers only for its own partitions");
            group.set_directory_loaded();
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("an explicit offset is always valid in a partition list");
    if let Err(e) = consumer.assign(&tpl) {
        warn!(error = %e, "cannot read the directory");
        group.set_directory_loaded();
        return;
    }
    // The history to read before this instance knows the group: the end it has now.
    let mut end: Option<i64> = None;
    let mut last_ask = Instant::now() - Duration::from_secs(10);
    let mut read_to = -1i64;
    while !stop.is_cancelled() {
        if end.is_none() && last_ask.elapsed() >= Duration::from_millis(500) {
            last_ask = Instant::now();
            if let Ok((_, high)) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(2)) {
                end = Some(high);
            }
        }
        if end.is_some_and(|e| read_to + 1 >= e) {
            group.set_directory_loaded();
        }
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "directory read error");
                continue;
            }
        };
        read_to = msg.offset();
        let Some(key) = msg.key().map(|k| String::from_utf8_lossy(k).into_owned()) else {
            continue;
        };
        let Some(payload) = msg.payload() else {
            group.gone(&key);
            continue;
        };
        match serde_json::from_slice::<Entry>(payload) {
            Ok(entry) if entry.published_ms.saturating_add(HISTORY_HORIZON_MS) < now_ms() => {
                debug!(instance_id = %entry.instance_id, "an old directory entry, ignored");
            }
            Ok(entry) => group.heard(entry),
            Err(e) => {
                metrics
                    .directory_failures
                    .get_or_create(&vec![("direction", "read".to_string())])
                    .inc();
                warn!(key, error = %e, "a directory entry that does not parse, ignored");
            }
        }
    }
}
