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

    /// How many events it holds, readable or not.
    pub fn len(&self) -> usize {
        self.records.len() + self.unreadable.len()
    }

    /// Keeps at most `max` events (at least one), shared fairly between the partitions:
    /// each keeps its first ones, and a partition with fewer than its share leaves the
    /// rest of it to the others. Returns what is left over, which carries on each cut
    /// partition where the kept part ends.
    ///
    /// A backlog arrives a partition at a time (librdkafka hands over a fetch partition
    /// by partition), so the events in hand lean to one partition; a fair share lets
    /// every partition in hand be applied at once, each on a thread of its own.
    pub fn split_off_beyond(&mut self, max: usize) -> Batch {
        let max = max.max(1);
        if self.len() <= max {
            return Batch::default();
        }
        let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (p, o) in self
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .chain(self.unreadable.iter().map(|u| (u.partition, u.offset)))
        {
            offsets.entry(p).or_default().push(o);
        }
        // Water-filling, smallest partitions first.
        let mut by_size: Vec<(i32, usize)> = offsets.iter().map(|(p, o)| (*p, o.len())).collect();
        by_size.sort_by_key(|&(p, n)| (n, p));
        let (mut remaining, mut left) = (max, by_size.len());
        let mut cuts: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, n) in by_size {
            let share = (remaining / left).max(usize::from(remaining > 0));
            let keep = n.min(share);
            remaining -= keep;
            left -= 1;
            if keep < n {
                let o = offsets.get_mut(&p).expect("counted above");
                o.sort_unstable();
                cuts.insert(p, o[keep]);
            }
        }
        let beyond = |p: i32, o: i64| cuts.get(&p).is_some_and(|&cut| o >= cut);
        let (rest, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| beyond(r.partition, r.offset));
        self.records = kept;
        let (rest_unreadable, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unreadable)
            .into_iter()
            .partition(|u| beyond(u.partition, u.offset));
        self.unreadable = kept;
        let mut next_offsets = BTreeMap::new();
        let mut emit_from = BTreeMap::new();
        for (&p, &cut) in &cuts {
            if let Some(next) = self.next_offsets.insert(p, cut) {
                next_offsets.insert(p, next);
            }
            if let Some(&from) = self.emit_from.get(&p) {
                emit_from.insert(p, from);
            }
        }
        Batch {
            records: rest,
            next_offsets,
            emit_from,
            unreadable: rest_unreadable,
        }
    }

    /// Adds the events of `other`, whose partitions this batch does not hold (events
    /// set aside by [`Batch::split_off_partitions`] or [`Batch::split_off_beyond`]).
    pub fn absorb(&mut self, other: Batch) {
        debug_assert!(
            self.partitions().is_disjoint(&other.partitions()),
            "absorbed events of a partition already in hand would lose its order"
        );
        self.records.extend(other.records);
        self.unreadable.extend(other.unreadable);
        self.next_offsets.extend(other.next_offsets);
        self.emit_from.extend(other.emit_from);
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

    #[test]
    fn a_fair_share_keeps_every_partition_and_leaves_the_rest_where_it_was_cut() {
        let mut records: Vec<Record> = (0..10).map(|o| rec(0, o)).collect();
        records.extend((100..103).map(|o| rec(1, o)));
        records.extend((50..56).map(|o| rec(2, o)));
        let mut b = Batch {
            records,
            next_offsets: [(0, 10), (1, 103), (2, 57)].into_iter().collect(),
            emit_from: [(0, 0)].into_iter().collect(),
            unreadable: vec![unreadable(2, 56)],
        };
        let rest = b.split_off_beyond(9);
        // Partition 1 has 3, under its share of 3; 0 and 2 share the other 6.
        assert_eq!(b.len(), 9);
        assert_eq!(
            b.records
                .iter()
                .map(|r| (r.partition, r.offset))
                .collect::<Vec<_>>(),
            [
                (0, 0),
                (0, 1),
                (0, 2),
                (1, 100),
                (1, 101),
                (1, 102),
                (2, 50),
                (2, 51),
                (2, 52)
            ]
        );
        assert_eq!(
            b.next_offsets,
            [(0, 3), (1, 103), (2, 53)].into_iter().collect()
        );
        assert_eq!(rest.next_offsets, [(0, 10), (2, 57)].into_iter().collect());
        assert_eq!(rest.emit_from, [(0, 0)].into_iter().collect());
        assert_eq!(rest.len(), 11);
        assert_eq!(rest.unreadable, vec![unreadable(2, 56)]);
        assert_eq!(rest.records.first().map(|r| r.offset), Some(3));

        let mut again = rest.clone();
        assert_eq!(again.split_off_beyond(100), Batch::default());
        assert_eq!(again, rest);

        let mut whole = b.clone();
        whole.absorb(Batch {
            records: vec![rec(5, 1)],
            next_offsets: [(5, 2)].into_iter().collect(),
            ..Batch::default()
        });
        assert_eq!(whole.len(), 10);
        assert_eq!(whole.next_offsets.get(&5), Some(&2));
    }
}
