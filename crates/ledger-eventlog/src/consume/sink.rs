//! What the loop needs from the store it fills ([`BatchSink`]), and every way the loop
//! stops ([`ConsumeError`]).

use std::time::Duration;

use ledger_domain::Batch;
use rdkafka::error::KafkaError;

use crate::config::ConflictingProperty;

use super::Poison;

/// Where batches go: a store that applies a batch and its offsets durably, in one go.
pub trait BatchSink: Send + Sync + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The next offset to read for this partition, as durably stored; `None` to start
    /// from the beginning of the log.
    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Self::Error>;

    /// Applies the batch and stores its next offsets atomically, and returns only once
    /// both are durable. The follow-ups of the events at or above `batch.emit_from` (the
    /// group's committed offset) are in the log before that.
    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), Self::Error>;

    /// Where the group's consumer must read this partition from again, below its stored
    /// offset, so that every event at or above the group's `committed` offset has had its
    /// follow-ups written (by this store's owner or an earlier one); `None`: nowhere.
    fn emit_rewind(
        &self,
        _topic: &str,
        _partition: i32,
        _committed: i64,
    ) -> Result<Option<i64>, Self::Error> {
        Ok(None)
    }

    /// The offset a clean stop commits for this partition: as far as the store holds its
    /// events' effects and knows their follow-ups to be in the log.
    fn committable_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Self::Error> {
        self.stored_offset(topic, partition)
    }

    /// These partitions are being assigned to this consumer: called before their stored
    /// offsets are read, so that anything else that writes them stops first.
    fn before_assign(&self, _partitions: &[i32]) {}

    /// These partitions are now assigned to this consumer.
    fn on_assigned(&self, _partitions: &[i32]) {}

    /// These partitions are no longer assigned to this consumer.
    fn on_revoked(&self, _partitions: &[i32]) {}

    /// This consumer was fenced: another client joined the group with its
    /// `group.instance.id`. `Err`, saying why, when that is another live process
    /// claiming the same identity: the loop then stops rather than take the id back.
    /// `Ok` to replace the client and go on, as after any error fatal to one client
    /// (nobody else is known to hold the id). Blocking: it may wait a moment to learn.
    fn on_fenced(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The operator's properties weaken a guarantee.
    #[error(transparent)]
    Config(#[from] ConflictingProperty),
    /// The consumer could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The store failed; nothing past its last durable batch was committed.
    #[error("the store failed, no offset was committed past its durable state: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored offset lies outside the log: the topic was recreated or truncated under
    /// this store.
    #[error("a stored offset is outside the log ({0}): was the topic recreated? Rebuild the projection: stop the projector, delete its data directory, start it")]
    OffsetOutOfRange(String),
    /// The dead-letter topic kept refusing an undecodable event.
    #[error("cannot write the undecodable event at partition {partition} offset {offset} to the dead-letter topic: {error}")]
    DeadLetter {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// The last error.
        error: String,
    },
    /// The consumer's group membership has not been steady for [`GROUP_STALL`]: a
    /// client wedged after a broker froze or restarted (its coordinator requests queue
    /// and never leave), which only a new client ends.
    #[error("the consumer group membership has not been steady for {0:?} (now {1}); the client is wedged")]
    GroupStalled(Duration, String),
    /// Another live process joined the group with this instance's id and fenced it out
    /// (see [`BatchSink::on_fenced`]).
    #[error("fenced out of the consumer group: {0}")]
    Fenced(String),
    /// The consumer thread panicked; nothing past the store's durable state was committed.
    #[error("the consumer thread panicked: {0}")]
    Panicked(String),
    /// An event that cannot be applied, under [`PoisonPolicy::Halt`].
    #[error("the event at partition {partition} offset {offset} cannot be applied ({}): {error}; halting without moving past it (--on-poison halt)", error.kind())]
    Poison {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why it cannot be applied.
        error: Poison,
    },
}
