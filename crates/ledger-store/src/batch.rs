//! What one batch is and does, apart from the store: a batch decided and not yet written
//! ([`Prepared`]), the events an operator skipped in it ([`Skipped`]), and what it did
//! ([`BatchStats`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ledger_domain::Event;

use crate::{Share, Skipped};

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events that took effect.
    pub applied: u64,
    /// Events refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Events whose command id was seen before on their account.
    pub duplicates: u64,
    /// Events below the stored offset, skipped.
    pub redelivered: u64,
    /// Follow-up events the batch causes (to be written to the log before it is stored).
    pub follow_ups: u64,
    /// Events that now wait, their account parked.
    pub parked: u64,
    /// Waiting events an operator's decision applied (also counted by their outcome).
    pub unparked: u64,
    /// Waiting events an operator skipped, to the dead-letter topic.
    pub dead_lettered: u64,
    /// Operators' decisions applied (`Unpark` events).
    pub controls: u64,
    /// Partitions the batch touched.
    pub partitions: usize,
    /// Threads that applied them.
    pub workers: usize,
    /// Wall time of the apply, all partitions in parallel, flushes aside.
    pub apply_time: Duration,
    /// Time in the flush that made their intents durable.
    pub flush_time: Duration,
}

impl BatchStats {
    pub(crate) fn merge(&mut self, other: BatchStats) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.redelivered += other.redelivered;
        self.follow_ups += other.follow_ups;
        self.parked += other.parked;
        self.unparked += other.unparked;
        self.dead_lettered += other.dead_lettered;
        self.controls += other.controls;
        for (k, v) in other.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
    }
}

/// A batch decided and not yet written: see [`Store::prepare`].
pub struct Prepared {
    pub(crate) topic: String,
    /// Each partition's writes.
    pub(crate) writes: Vec<Share>,
    pub(crate) follow_ups: Vec<Event>,
    pub(crate) dead_letters: Vec<Skipped>,
    pub(crate) stats: BatchStats,
    pub(crate) started: Instant,
}

impl Prepared {
    /// The follow-up events to write to the log before [`Store::commit`].
    pub fn follow_ups(&self) -> &[Event] {
        &self.follow_ups
    }

    /// The waiting events an operator skipped, to write to the dead-letter topic before
    /// [`Store::commit`].
    pub fn dead_letters(&self) -> &[Skipped] {
        &self.dead_letters
    }

    /// What the batch will do once committed (its times are not known yet).
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}
