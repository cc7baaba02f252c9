//! The crash argument, tested: the protocol runs on a disk that dies after any write or
//! flush and keeps, of what was written since its last completed flush, any subset, in
//! order. After recovery each partition is exactly at the batch its offset names. Redoing
//! only the latest intent, keeping one slot, or skipping the flush makes it fail.

use std::cell::RefCell;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

type Key = (usize, Vec<u8>);

/// A disk shared by a few trees, which dies after `budget` operations.
#[derive(Default)]
struct Disk {
    durable: BTreeMap<Key, Vec<u8>>,
    /// Written since the last completed flush, in order.
    unflushed: Vec<(Key, Option<Vec<u8>>)>,
    /// What reads see: `durable` with `unflushed` over it.
    live: BTreeMap<Key, Vec<u8>>,
    budget: usize,
}

impl Disk {
    fn spend(&mut self) -> Result<(), StoreError> {
        if self.budget == 0 {
            return Err(StoreError::BadRecord {
                tree: "disk".into(),
                key: String::new(),
                detail: "the process died".into(),
            });
        }
        self.budget -= 1;
        Ok(())
    }

    /// The disk after a crash: what was durable, and the unflushed writes that `keep`
    /// picks, in the order they were made.
    fn reboot(&self, keep: &[bool]) -> Disk {
        let mut durable = self.durable.clone();
        for (i, (k, v)) in self.unflushed.iter().enumerate() {
            if keep.get(i).copied().unwrap_or(false) {
                match v {
                    Some(v) => durable.insert(k.clone(), v.clone()),
                    None => durable.remove(k),
                };
            }
        }
        Disk {
            live: durable.clone(),
            durable,
            unflushed: Vec::new(),
            budget: usize::MAX,
        }
    }
}

struct Tree<'d> {
    disk: &'d RefCell<Disk>,
    id: usize,
}

impl Kv for Tree<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .disk
            .borrow()
            .live
            .get(&(self.id, key.to_vec()))
            .cloned())
    }

    fn set(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        let mut d = self.disk.borrow_mut();
        d.spend()?;
        let k = (self.id, key.to_vec());
        match value {
            Some(v) => d.live.insert(k.clone(), v.to_vec()),
            None => d.live.remove(&k),
        };
        d.unflushed.push((k, value.map(<[u8]>::to_vec)));
        Ok(())
    }
}

struct Batch<'d> {
    disk: &'d RefCell<Disk>,
    /// Each partition's records, its intent tree and its writes.
    shares: Vec<(Tree<'d>, Tree<'d>, Writes)>,
    seq: u64,
}

impl<'d> Shares for Batch<'d> {
    type Tree = Tree<'d>;

    fn each(&self, step: &Step<'_, Tree<'d>>) -> Result<(), StoreError> {
        let mut first = Ok(());
        for (records, intent, writes) in &self.shares {
            let share = Share {
                records,
                intent,
                writes,
                seq: self.seq,
            };
            if let Err(e) = step(share) {
                first = first.and(Err(e));
            }
        }
        first
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut d = self.disk.borrow_mut();
        d.spend()?;
        let done = std::mem::take(&mut d.unflushed);
        for (k, v) in done {
            match v {
                Some(v) => d.durable.insert(k, v),
                None => d.durable.remove(&k),
            };
        }
        Ok(())
    }
}

const TREES: usize = 3;

/// One partition's share of a batch: some state keys set or removed, then its offset.
fn share(changes: &[(u8, Option<u8>)], offset: u64) -> Writes {
    let mut w = Writes::default();
    for (k, v) in changes {
        w.state(vec![b'a', *k], v.map(|v| vec![v; 3]));
    }
    w.last(records::OFFSET_KEY, &offset.to_be_bytes());
    w
}

/// A partition's records.
fn state_of(disk: &Disk, id: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    disk.live
        .iter()
        .filter(|((t, _), _)| *t == id)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

fn changes() -> impl Strategy<Value = Vec<(u8, Option<u8>)>> {
    proptest::collection::vec((0u8..6, proptest::option::of(any::<u8>())), 0..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Batches commit one after another; the process dies after any operation of one
    /// of them and the disk keeps any subset of its unflushed writes. Recovery leaves
    /// every partition exactly where its stored offset says, with nothing of a later
    /// batch and nothing of its own batch missing.
    #[test]
    fn a_crash_anywhere_leaves_each_partition_at_its_stored_offset(
        batches in proptest::collection::vec(proptest::collection::vec(changes(), TREES), 1..5),
        died_after in 0usize..60,
        keep in proptest::collection::vec(any::<bool>(), 64),
    ) {
        let disk = RefCell::new(Disk { budget: died_after, ..Disk::default() });
        // What each partition must hold after each batch: expected[t][i] after batch i
        // (index 0: before any).
        let mut expected = vec![vec![BTreeMap::new()]; TREES];
        for (i, batch) in batches.iter().enumerate() {
            let offset = i as u64 + 1;
            let mut shares = Vec::new();
            for (t, changes) in batch.iter().enumerate() {
                let mut next = expected[t].last().expect("starts with one").clone();
                for (k, v) in changes {
                    match v {
                        Some(v) => next.insert(vec![b'a', *k], vec![*v; 3]),
                        None => next.remove(&vec![b'a', *k]),
                    };
                }
                next.insert(records::OFFSET_KEY.to_vec(), offset.to_be_bytes().to_vec());
                expected[t].push(next);
                shares.push((
                    Tree { disk: &disk, id: t },
                    Tree { disk: &disk, id: TREES + t },
                    share(changes, offset),
                ));
            }
            if commit(&Batch { disk: &disk, shares, seq: offset }).is_err() {
                break;
            }
        }
        let rebooted = RefCell::new(disk.borrow().reboot(&keep));
        for (t, states) in expected.iter().enumerate() {
            let (records, intent) = (Tree { disk: &rebooted, id: t }, Tree { disk: &rebooted, id: TREES + t });
            recover(&records, &intent, "p").expect("an intent that reached disk is whole");
            let now = state_of(&rebooted.borrow(), t);
            let at = now
                .get(records::OFFSET_KEY)
                .map_or(0, |v| u64::from_be_bytes(v.as_slice().try_into().expect("8 bytes")));
            prop_assert_eq!(&now, &states[at as usize], "partition {} at offset {}", t, at);
        }
    }
}

#[test]
fn an_intent_round_trips_and_a_damaged_one_is_refused() {
    let mut w = share(&[(1, Some(7)), (2, None)], 9);
    w.last(records::DIGEST_KEY, &[1; 16]);
    let bytes = w.encode(41);
    let (seq, ops) = decode(&bytes).expect("its own encoding decodes");
    assert_eq!(seq, 41);
    assert_eq!(
        ops,
        vec![
            (vec![b'a', 1], Some(vec![7; 3])),
            (vec![b'a', 2], None),
            (
                records::OFFSET_KEY.to_vec(),
                Some(9u64.to_be_bytes().to_vec())
            ),
            (records::DIGEST_KEY.to_vec(), Some(vec![1; 16])),
        ]
    );
    let mut bad = bytes.clone();
    bad[6] ^= 1;
    assert_eq!(decode(&bad).unwrap_err(), "its checksum does not match");
    assert_eq!(
        decode(&bytes[..bytes.len() - 1]).unwrap_err(),
        "its checksum does not match"
    );
    assert_eq!(decode(&[0; 3]).unwrap_err(), "shorter than its checksum");
}
