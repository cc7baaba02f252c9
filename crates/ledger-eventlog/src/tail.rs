//! Reading the topic as an outsider, the way `kcat -C` does: every partition (or one),
//! from the beginning or from the end, up to the end as it was at the start, or on and
//! on. No consumer group, no commits: a tail leaves no trace on the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ledger_domain::Event;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::admin::{topic_partitions, AdminError};
use crate::cloudevents;
use crate::codec::{self, DecodeError};
use crate::config::KafkaConfig;

/// Where to read and for how long.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TailOptions {
    /// From each partition's first event; otherwise from its end.
    pub from_beginning: bool,
    /// Only this partition; otherwise all of them.
    pub partition: Option<i32>,
    /// Wait for new events until stopped; otherwise stop at the end each partition had
    /// when the tail started.
    pub follow: bool,
}

/// One message of the topic, decoded or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tailed {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The message key, lossily as text.
    pub key: Option<String>,
    /// Its `ce_type` header, if it has one.
    pub ce_type: Option<String>,
    /// The event, or why the value is not one.
    pub event: Result<Event, DecodeError>,
}

/// Why a tail could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The topic, or its metadata, could not be had.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The partition asked for does not exist.
    #[error("topic {topic} has no partition {partition} (it has {count})")]
    NoSuchPartition {
        /// The topic.
        topic: String,
        /// What was asked for.
        partition: i32,
        /// How many it has.
        count: usize,
    },
    /// The consumer failed.
    #[error("reading the topic failed: {0}")]
    Kafka(#[from] KafkaError),
}

/// The tail's client context: the end of a partition is how a tail stops, not an error,
/// so librdkafka's global report of it is not logged as one.
struct TailContext;

impl ClientContext for TailContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            debug!(%error, reason, "end of partition");
        } else {
            warn!(%error, reason, "librdkafka error while tailing");
        }
    }
}

impl ConsumerContext for TailContext {}

/// How long to wait for the brokers' metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `topic` as `options` say and hands each message to `each`, in order within
/// each partition, until the end (without `follow`), `stop`, or `each` returns false.
/// Returns how many messages it handed over. Blocking: run it on a thread of its own.
pub fn tail(
    kafka: &KafkaConfig,
    topic: &str,
    options: TailOptions,
    stop: &CancellationToken,
    mut each: impl FnMut(Tailed) -> bool,
) -> Result<u64, TailError> {
    let consumer: BaseConsumer<TailContext> = kafka
        .client_config(
            &[
                // librdkafka wants a group id for a consumer; with no subscription and
                // no commits, the group is never joined or written.
                ("group.id", "ledger-tail"),
                ("socket.connection.setup.timeout.ms", "3000"),
            ],
            &[
                ("enable.auto.commit", "false", "a tail never commits"),
                (
                    "enable.partition.eof",
                    "true",
                    "a partition whose last offsets are markers, never messages, still ends",
                ),
            ],
        )
        .map_err(AdminError::from)?
        .create_with_context(TailContext)?;
    let all = topic_partitions(&consumer, topic, METADATA_TIMEOUT)?;
    let partitions = match options.partition {
        None => all,
        Some(p) if all.contains(&p) => vec![p],
        Some(partition) => {
            return Err(TailError::NoSuchPartition {
                topic: topic.to_string(),
                partition,
                count: all.len(),
            })
        }
    };
    // Without --follow the tail ends at each partition's end as it is now, so that
    // steady writes cannot keep it going.
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT)?;
        ends.insert(p, (low, high));
    }
    let start = if options.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment.add_partition_offset(topic, p, start)?;
    }
    consumer.assign(&assignment)?;

    // Partitions with nothing left to print before their end as of now.
    let mut done: BTreeSet<i32> = ends
        .iter()
        .filter(|(_, &(low, high))| !options.from_beginning || low >= high)
        .map(|(&p, _)| p)
        .collect();
    let mut handed = 0u64;
    while !stop.is_cancelled() {
        if !options.follow && done.len() == partitions.len() {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            // The end of what the partition holds; with compaction or transaction markers
            // the last offsets before the recorded end may never arrive as messages.
            Some(Err(KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) if options.follow => {
                // librdkafka recovers from transport errors by itself; a tail that
                // follows waits for it, as kcat does.
                warn!(error = %e, "reading the topic failed; retrying");
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => {
                let p = message.partition();
                let end = ends.get(&p).map_or(i64::MAX, |&(_, high)| high);
                if !options.follow && message.offset() >= end {
                    done.insert(p);
                    continue;
                }
                if message.offset() + 1 >= end {
                    done.insert(p);
                }
                handed += 1;
                if !each(tailed(&message)) {
                    break;
                }
            }
        }
    }
    Ok(handed)
}

fn tailed(message: &BorrowedMessage<'_>) -> Tailed {
    Tailed {
        partition: message.partition(),
        offset: message.offset(),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        ce_type: message
            .headers()
            .and_then(|h| cloudevents::header_value(h, cloudevents::header::TYPE))
            .map(str::to_owned),
        event: codec::decode(message.payload().unwrap_or_default()),
    }
}
