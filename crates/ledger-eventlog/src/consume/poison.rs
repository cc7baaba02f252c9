//! What becomes of an event that cannot be applied (it does not decode, or it sits in
//! another partition than its account's), as [`PoisonPolicy`] says: one that a newer
//! version may read parks its account (`parks`: the store keeps it, and the account's
//! later events wait behind it); any other goes to the dead-letter topic, and its
//! partition moves past it only once that topic has acknowledged it; or the consumer
//! makes the events before it durable and halts without moving past it. A poison is
//! never skipped silently.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use ledger_domain::partitioning::partition_of;
use ledger_domain::{AccountId, Unreadable};

use super::context::LoopContext;
use super::{BatchSink, ConsumeError, ConsumerSettings};
use crate::codec::DecodeError;
use crate::producer::{DeadLetter, EventProducer, ProduceError};

/// Why an event is poison.
#[derive(Debug, thiserror::Error)]
pub enum Poison {
    /// It does not decode.
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// It decodes, but it is not where its account's events are. State is kept per
    /// partition, so applying it would act on a second copy of the account (a hostile or
    /// mistaken producer can write the same bytes under another key or partition).
    #[error("the event of account {account} is in partition {partition} under key {key:?}; an account's events are in partition {expected} (murmur2 of the id over {partitions} partitions) with the account id as key")]
    WrongPartition {
        /// The account the event names.
        account: String,
        /// The record's key, lossily as text (`None` for no key).
        key: Option<String>,
        /// Where it is.
        partition: i32,
        /// Where its account's events are.
        expected: i32,
        /// The topic's partition count.
        partitions: i32,
    },
}

impl Poison {
    /// A short stable label, for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            Poison::Undecodable(e) => e.kind(),
            Poison::WrongPartition { .. } => "wrong_partition",
        }
    }
}

/// What to do with an event that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// An event a newer version may read (an unknown type, a newer envelope) whose key
    /// is a valid account id in that account's partition parks the account: it and the
    /// account's later events wait, in order, until an operator retries or skips it,
    /// and every other account flows on. Anything else goes to the dead-letter topic.
    #[default]
    Park,
    /// Write it to the dead-letter topic and move on once that is acknowledged.
    DeadLetter,
    /// Stop the consumer without moving past it.
    Halt,
}

/// Where the loop stands after an undecodable event it did not stop at.
pub(super) enum Poisoned {
    /// Written to the dead-letter topic: its partition has moved past it.
    DeadLettered,
    /// Shutdown came before the dead-letter topic acknowledged it.
    ShuttingDown,
}

/// Deals with an event that cannot be applied, as `settings.on_poison` says: halts (an
/// error, once the events before it are durable), or writes it to the dead-letter topic
/// and moves its partition past it.
pub(super) fn deal_with_poison<S: BatchSink>(
    consumer: &BaseConsumer<LoopContext<S>>,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    shutdown: &CancellationToken,
    msg: &BorrowedMessage<'_>,
    error: Poison,
) -> Result<Poisoned, ConsumeError> {
    let ctx = consumer.context();
    let (partition, offset) = (msg.partition(), msg.offset());
    match settings.on_poison {
        PoisonPolicy::Halt => {
            ctx.metrics
                .poison
                .get_or_create(&vec![("action".into(), "halted".into())])
                .inc();
            error!(partition, offset, %error, kind = error.kind(), "event cannot be applied; halting (--on-poison halt)");
            // Events before it are fine: make them durable, stop at the poison.
            ctx.apply_and_commit(consumer, None, CommitMode::Sync)?;
            Err(ConsumeError::Poison {
                partition,
                offset,
                error,
            })
        }
        PoisonPolicy::Park | PoisonPolicy::DeadLetter => {
            let dead = DeadLetter {
                dlq_topic: &settings.dlq_topic,
                source_topic: &settings.topic,
                source_partition: partition,
                source_offset: offset,
                key: msg.key(),
                payload: msg.payload(),
                error: &error.to_string(),
                error_kind: error.kind(),
            };
            match send_dead_letter(dead_letters, &dead, shutdown) {
                DeadLetterOutcome::Sent => {}
                DeadLetterOutcome::ShuttingDown => return Ok(Poisoned::ShuttingDown),
                DeadLetterOutcome::Failed(error) => {
                    ctx.apply_and_commit(consumer, None, CommitMode::Sync)?;
                    return Err(ConsumeError::DeadLetter {
                        partition,
                        offset,
                        error,
                    });
                }
            }
            ctx.metrics
                .poison
                .get_or_create(&vec![("action".into(), "dead_lettered".into())])
                .inc();
            warn!(partition, offset, %error, kind = error.kind(), dlq = %settings.dlq_topic, "event that cannot be applied sent to the dead-letter topic");
            let mut st = ctx.state();
            st.pending.next_offsets.insert(partition, offset + 1);
            st.positions.insert(partition, offset + 1);
            Ok(Poisoned::DeadLettered)
        }
    }
}

/// The event as one that parks its account, when the policy parks and the event is
/// one a newer version may read, keyed by a valid account id in that account's
/// partition (anything less and it could park an account it does not belong to).
pub(crate) fn parks(
    settings: &ConsumerSettings,
    key: Option<&[u8]>,
    partition: i32,
    offset: i64,
    payload: Option<&[u8]>,
    error: &Poison,
) -> Option<Unreadable> {
    if settings.on_poison != PoisonPolicy::Park {
        return None;
    }
    let Poison::Undecodable(e) = error else {
        return None;
    };
    if !e.newer_version() {
        return None;
    }
    let account_id = AccountId::parse(std::str::from_utf8(key?).ok()?).ok()?;
    if let DecodeError::UnknownType {
        account_id: named, ..
    } = e
    {
        if *named != account_id {
            return None;
        }
    }
    if settings
        .partitions
        .is_some_and(|n| partition_of(&account_id, n) != partition)
    {
        return None;
    }
    Some(Unreadable {
        partition,
        offset,
        account_id,
        payload: payload.unwrap_or_default().to_vec(),
        reason: e.to_string(),
    })
}

/// How long a dead letter is retried before the consumer gives up: well inside
/// librdkafka's `max.poll.interval.ms` (5 min), since nothing is polled meanwhile.
const DEAD_LETTER_DEADLINE: Duration = Duration::from_secs(120);

enum DeadLetterOutcome {
    Sent,
    ShuttingDown,
    Failed(String),
}

/// Sends a dead letter, retrying with backoff until it is acknowledged, shutdown comes,
/// or [`DEAD_LETTER_DEADLINE`] passes (a missing ACL or an oversized message never
/// heals: better a clear stop than a silent stall of every partition).
fn send_dead_letter(
    producer: &EventProducer,
    dead: &DeadLetter<'_>,
    shutdown: &CancellationToken,
) -> DeadLetterOutcome {
    let handle = tokio::runtime::Handle::current();
    let deadline = Instant::now() + DEAD_LETTER_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match handle.block_on(producer.send_dead_letter(dead)) {
            Ok(pos) => {
                debug!(
                    dlq_partition = pos.partition,
                    dlq_offset = pos.offset,
                    "dead letter acknowledged"
                );
                return DeadLetterOutcome::Sent;
            }
            Err(e) => {
                let e: ProduceError = e;
                warn!(error = %e, partition = dead.source_partition, offset = dead.source_offset,
                      "dead-letter topic did not acknowledge; retrying");
                e.to_string()
            }
        };
        if shutdown.is_cancelled() {
            return DeadLetterOutcome::ShuttingDown;
        }
        if Instant::now() >= deadline {
            return DeadLetterOutcome::Failed(error);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
