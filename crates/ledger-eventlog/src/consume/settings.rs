//! How the loop reads: the settings the service gives it, and the librdkafka properties
//! they become. An operator's property that contradicts one carrying a guarantee (no
//! auto-commit, no silent offset reset) is an error, not an override.

use std::time::Duration;

use rdkafka::ClientConfig;

use super::PoisonPolicy;
use crate::config::{ConflictingProperty, KafkaConfig};

/// How the loop reads.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// The topic to read.
    pub topic: String,
    /// Where undecodable events go.
    pub dlq_topic: String,
    /// The consumer group.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted instance takes its
    /// partitions back at once instead of waiting for a rebalance.
    pub instance_id: Option<String>,
    /// Most events in one batch.
    pub batch_max_events: usize,
    /// Longest a batch waits for more events once it has one. Events already fetched
    /// still join it past that, up to `batch_max_events`.
    pub batch_max_wait: Duration,
    /// What to do with events that cannot be applied.
    pub on_poison: PoisonPolicy,
    /// The topic's partition count, when the sink keeps state per partition: every event
    /// must then sit in its account's partition (murmur2 of the account id, which is also
    /// the key), and one that does not is poison with reason `wrong_partition`.
    pub partitions: Option<i32>,
    /// An operator's pause and a rebuild's hold, which the loop obeys.
    pub pause: super::PauseControl,
}

/// The consumer's librdkafka properties: ours, then the operator's, then the ones that
/// carry a guarantee.
pub(super) fn consumer_config(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
) -> Result<ClientConfig, ConflictingProperty> {
    let mut defaults: Vec<(&str, &str)> = vec![
        ("client.id", "ledger-projector"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("session.timeout.ms", "10000"),
        ("enable.partition.eof", "false"),
        ("socket.connection.setup.timeout.ms", "3000"),
        ("reconnect.backoff.max.ms", "1000"),
        // Bound librdkafka's read-ahead (64 MiB per partition by default) so the
        // projector's memory stays bounded; batches of a few thousand need little.
        ("queued.min.messages", "20000"),
        ("queued.max.messages.kbytes", "8192"),
        // With the queue bounded this low, librdkafka's default of 1000 postpones a
        // partition's next fetch by a second whenever its queue is over a threshold:
        // during a backlog the loop then ran dry once a second for about 250 ms (a fifth
        // of a replay's time).
        ("fetch.queue.backoff.ms", "10"),
        // The group state in the statistics tells a wedged client (see GROUP_STALL).
        ("statistics.interval.ms", "1000"),
    ];
    if let Some(id) = &settings.instance_id {
        defaults.push(("group.instance.id", id));
    }
    kafka.client_config(
        &defaults,
        &[
            ("group.id", &settings.group_id, "set it with --group-id"),
            (
                "enable.auto.commit",
                "false",
                "offsets are committed only after the store is durable",
            ),
            (
                "enable.auto.offset.store",
                "false",
                "offsets are committed explicitly",
            ),
            (
                "auto.offset.reset",
                "error",
                "every partition starts at an explicit offset from the store; one outside the log is an error, never a silent jump",
            ),
        ],
    )
}
