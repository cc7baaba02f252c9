//! How a batch reaches disk with plain writes, partitions in parallel, and stays atomic
//! per partition across a crash: a redo intent.
//!
//! sled 0.34.7 serializes every `Tree::apply_batch` and transaction in the process behind
//! one lock (`concurrency_control::write()`, a process-wide static, so neither separate
//! trees nor separate `Db`s escape it), while plain `insert`, `remove` and `get` take it
//! shared. The store therefore never writes a batch atomically; it writes each
//! partition's share as:
//!
//! 1. the **intent**: every write of the partition's share (its new offset among them),
//!    as one value in the partition's intent tree (a single insert, which sled applies
//!    whole or not at all), partitions in parallel;
//! 2. a flush: the intents are durable;
//! 3. the writes themselves, as plain inserts and removes, partitions in parallel, the
//!    bookkeeping (totals, digest, emitted and next offset) last, so that a reader who
//!    sees the new offset sees the whole batch;
//! 4. a flush: the batch is durable. Only then are its offsets committed to Kafka.
//!
//! After a crash, opening a partition's tree applies its intent again ([`recover`])
//! before anything reads it. Every write in an intent sets a key to a value (or removes
//! it), so applying it twice is applying it once. The crash points:
//!
//! - before step 2 completes: no write of this batch has been made (step 3 waits for
//!   the flush), and the intent under the key is either this one, the previous batch's,
//!   or none. Redoing the previous batch's intent rewrites what is already there: the
//!   store is at the previous batch;
//! - after step 2, anywhere in steps 3 and 4: any subset of the writes may have reached
//!   disk, and the intent has. Redoing it completes them: the store is at this batch;
//! - after step 4: the store is at this batch, and redoing its intent changes nothing.
//!
//! Nothing else writes a partition's keys between intents (the store is the partition's
//! only writer, and a rebuild's swap only sets the emitted mark, which no rebuild's
//! intent carries), so a redone intent never overwrites a newer value. `recover` flushes
//! what it redid before the tree is used: otherwise a later intent could reach disk
//! without the redone writes. If a write of step 3 fails, the caller evicts the tree, so
//! that the next use redoes the intent over whatever landed instead of reading a
//! half-written batch.
//!
//! The protocol is written over [`Kv`] so that a property test can run it on a disk that
//! loses any subset of the writes since its last flush (`tests` below).

use std::collections::BTreeMap;

use crate::records;
use crate::StoreError;

/// What the protocol needs of a tree.
pub(crate) trait Kv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` to `value`, or removes it when `None`.
    fn set(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError>;
}

impl Kv for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn set(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
        match value {
            Some(v) => sled::Tree::insert(self, key, v)?,
            None => sled::Tree::remove(self, key)?,
        };
        Ok(())
    }
}

/// One partition's writes for a batch: the state records by key (the last write of a
/// key wins; applied in key order, which suits sled's tree), then the bookkeeping in the
/// order it was set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Writes {
    state: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    last: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writes {
    /// A state record (`None`: removed).
    pub(crate) fn state(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.state.insert(key, value);
    }

    /// A bookkeeping record, written after every state record, in the order given.
    pub(crate) fn last(&mut self, key: &[u8], value: &[u8]) {
        self.last.retain(|(k, _)| k != key);
        self.last.push((key.to_vec(), value.to_vec()));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.state.is_empty() && self.last.is_empty()
    }

    /// How many keys it writes.
    pub(crate) fn len(&self) -> usize {
        self.state.len() + self.last.len()
    }

    fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.state
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .chain(
                self.last
                    .iter()
                    .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
            )
    }

    /// The intent's bytes: a version byte, the count, each write as key length, key,
    /// then `0` (removed) or `1`, value length and value, and a blake3 checksum of all
    /// of that (16 bytes), so that a damaged intent is refused rather than redone.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self
                .ops()
                .map(|(k, v)| 9 + k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>(),
        );
        out.push(INTENT_VERSION);
        out.extend_from_slice(&(self.len() as u32).to_be_bytes());
        for (k, v) in self.ops() {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            match v {
                None => out.push(0),
                Some(v) => {
                    out.push(1);
                    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        out
    }
}

const INTENT_VERSION: u8 = 1;

fn checksum(bytes: &[u8]) -> [u8; 16] {
    blake3::hash(bytes).as_bytes()[..16]
        .try_into()
        .expect("a blake3 hash is 32 bytes")
}

/// The writes of an intent's bytes, in the order to apply them, or why they are not an
/// intent.
fn decode(bytes: &[u8]) -> Result<Vec<Op>, String> {
    let body_len = bytes
        .len()
        .checked_sub(16)
        .ok_or("shorter than its checksum")?;
    let (body, sum) = bytes.split_at(body_len);
    if checksum(body) != sum {
        return Err("its checksum does not match".into());
    }
    let mut r = Reader(body);
    if r.take(1)? != [INTENT_VERSION] {
        return Err("an unknown intent version".into());
    }
    let count = r.u32()?;
    let mut ops = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let klen = r.u32()? as usize;
        let key = r.take(klen)?.to_vec();
        let value = match r.take(1)? {
            [0] => None,
            [1] => {
                let vlen = r.u32()? as usize;
                Some(r.take(vlen)?.to_vec())
            }
            _ => return Err("a write is neither a removal nor a value".into()),
        };
        ops.push((key, value));
    }
    if !r.0.is_empty() {
        return Err("bytes after its last write".into());
    }
    Ok(ops)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("it ends inside a write".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().expect("took 4 bytes")))
    }
}

/// One write: a key and its value (`None`: removed).
type Op = (Vec<u8>, Option<Vec<u8>>);

/// A step of the protocol, run over each share.
pub(crate) type Step<'s, T> = dyn Fn(Share<'_, T>) -> Result<(), StoreError> + Sync + 's;

/// One partition's share of a batch: where its records and its intent are, and what
/// to write.
pub(crate) struct Share<'a, T> {
    pub(crate) records: &'a T,
    pub(crate) intent: &'a T,
    pub(crate) writes: &'a Writes,
}

/// A batch's shares, one per partition, and the database they are flushed in.
pub(crate) trait Shares {
    type Tree: Kv;
    /// Runs `step` over every share (in parallel where it can), and returns the first
    /// error once all have run.
    fn each(&self, step: &Step<'_, Self::Tree>) -> Result<(), StoreError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
}

/// Where [`commit`] failed.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Before any write of the batch: the store is as it was.
    Before(StoreError),
    /// Among the writes: each share's tree must be recovered before it is read again.
    Writing(StoreError),
}

/// Steps 1 to 4 for a batch's shares (an empty share writes nothing).
pub(crate) fn commit(shares: &impl Shares) -> Result<(), Failed> {
    shares
        .each(&|share| {
            if share.writes.is_empty() {
                return Ok(());
            }
            share
                .intent
                .set(records::INTENT_KEY, Some(&share.writes.encode()))
        })
        .map_err(Failed::Before)?;
    shares.flush().map_err(Failed::Before)?;
    shares
        .each(&|share| {
            for (k, v) in share.writes.ops() {
                share.records.set(k, v)?;
            }
            Ok(())
        })
        .map_err(Failed::Writing)?;
    shares.flush().map_err(Failed::Writing)
}

/// Applies a partition's last intent to its records again, if there is one, and says
/// whether it did; the caller flushes before the records are used. `name` is the
/// partition tree's, for the error.
pub(crate) fn recover<T: Kv>(records: &T, intent: &T, name: &str) -> Result<bool, StoreError> {
    let Some(bytes) = intent.get(records::INTENT_KEY)? else {
        return Ok(false);
    };
    let ops = decode(&bytes).map_err(|detail| StoreError::BadRecord {
        tree: name.to_string(),
        key: "intent".into(),
        detail,
    })?;
    for (k, v) in &ops {
        records.set(k, v.as_deref())?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
