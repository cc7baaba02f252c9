//! A batch of events as the projector applies it: the decoded records and the next
//! offset of every partition the batch moves.
//!
//! These are pure data that the event log fills and the store applies. They live in the
//! domain, not in the event log, so that the store needs no Kafka client to take them.

use std::collections::{BTreeMap, BTreeSet};

use crate::event::Event;

/// One decoded event and where it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The event.
    pub event: Event,
}

/// An event this version cannot read (an unknown type, a newer envelope) although it
/// names a valid account where that account's events are: it parks the account, and is
/// kept as read for a newer projector to read again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The account its key names.
    pub account_id: crate::ids::AccountId,
    /// The message value, as read.
    pub payload: Vec<u8>,
    /// Why it cannot be read.
    pub reason: String,
}

/// Events to apply together, and the next offset of every partition the batch moves.
///
/// A partition can appear in `next_offsets` without records: a dead-lettered event moves
/// it on without changing any state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The events, in log order within each partition.
    pub records: Vec<Record>,
    /// Partition → next offset to read once this batch is applied.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Partition → the offset from which its events' follow-ups are written to the log:
    /// the group's committed offset when the partition was assigned (below it, an earlier
    /// owner wrote them before committing). A partition absent here causes none: a
    /// read-only tail or a rebuild never writes to the log.
    pub emit_from: BTreeMap<i32, i64>,
    /// Events that park their account, in log order within each partition, interleaved
    /// with `records` by offset.
    pub unreadable: Vec<Unreadable>,
}

impl Batch {
    /// Whether applying the batch would change nothing at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.unreadable.is_empty() && self.next_offsets.is_empty()
    }

    /// The partitions the batch moves or holds events of.
    pub fn partitions(&self) -> BTreeSet<i32> {
        self.records
            .iter()
            .map(|r| r.partition)
            .chain(self.unreadable.iter().map(|u| u.partition))
            .chain(self.next_offsets.keys().copied())
            .collect()
    }

    /// Takes out the part of the batch that belongs to these partitions (their records
    /// and next offsets) and keeps the rest: the consumer applies the batch in hand for
    /// partitions being revoked, and only theirs.
    pub fn split_off_partitions(&mut self, partitions: &BTreeSet<i32>) -> Batch {
        let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| partitions.contains(&r.partition));
        self.records = kept;
        let (unreadable, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unreadable)
            .into_iter()
            .partition(|u| partitions.contains(&u.partition));
        self.unreadable = kept;
        let mut next_offsets = BTreeMap::new();
        let mut emit_from = BTreeMap::new();
        for p in partitions {
            if let Some(o) = self.next_offsets.remove(p) {
                next_offsets.insert(*p, o);
            }
            if let Some(o) = self.emit_from.remove(p) {
                emit_from.insert(*p, o);
            }
        }
        Batch {
            records: taken,
            next_offsets,
            emit_from,
            unreadable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountId, CommandId, EventBody};

    fn rec(partition: i32, offset: i64) -> Record {
        Record {
            partition,
            offset,
            event: Event {
                event_id: 1,
                command_id: CommandId::parse("c").unwrap(),
                account_id: AccountId::parse("a").unwrap(),
                time_ms: 0,
                body: EventBody::OpenAccount,
            },
        }
    }

    fn unreadable(partition: i32, offset: i64) -> Unreadable {
        Unreadable {
            partition,
            offset,
            account_id: AccountId::parse("a").unwrap(),
            payload: vec![0xEB, 9],
            reason: "unsupported envelope version 9".into(),
        }
    }

    #[test]
    fn splitting_takes_only_the_named_partitions() {
        let mut b = Batch {
            records: vec![rec(0, 1), rec(1, 7), rec(0, 2), rec(2, 3)],
            next_offsets: [(0, 3), (1, 8), (2, 4), (3, 10)].into_iter().collect(),
            emit_from: [(0, 0), (1, 0)].into_iter().collect(),
            unreadable: vec![unreadable(1, 9), unreadable(3, 4)],
        };
        let taken = b.split_off_partitions(&[0, 3].into_iter().collect());
        assert_eq!(taken.records, vec![rec(0, 1), rec(0, 2)]);
        assert_eq!(taken.next_offsets, [(0, 3), (3, 10)].into_iter().collect());
        assert_eq!(taken.emit_from, [(0, 0)].into_iter().collect());
        assert_eq!(b.emit_from, [(1, 0)].into_iter().collect());
        assert_eq!(b.records, vec![rec(1, 7), rec(2, 3)]);
        assert_eq!(b.next_offsets, [(1, 8), (2, 4)].into_iter().collect());
        assert_eq!(taken.unreadable, vec![unreadable(3, 4)]);
        assert_eq!(b.unreadable, vec![unreadable(1, 9)]);
    }
}
