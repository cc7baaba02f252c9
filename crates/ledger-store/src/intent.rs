//! How a batch reaches disk with plain writes, partitions in parallel, and stays atomic
//! per partition across a crash: a redo intent.
//!
//! sled 0.34.7 serializes every `Tree::apply_batch` and transaction in the process behind
//! one lock (`concurrency_control::write()`, a process-wide static, so neither separate
//! trees nor separate `Db`s escape it), while plain `insert`, `remove` and `get` take it
//! shared. The store therefore never writes a batch atomically; it writes each
//! partition's share as:
//!
//! 1. the **intent**: every write of the share (its new offset among them), with a
//!    sequence number one above the partition's last, as one value in the partition's
//!    intent tree (a single insert, which sled applies whole or not at all), in one of
//!    two slots, taking turns; partitions in parallel;
//! 2. one flush: the intents are durable, and so are the writes of the batch before;
//! 3. the writes themselves, as plain inserts and removes, partitions in parallel, the
//!    bookkeeping (totals, digest, emitted and next offset) last, so that a reader who
//!    sees the new offset sees the whole batch.
//!
//! Once step 2 is done the batch is durable: whatever happens to its writes, recovery
//! redoes them. Only then are its offsets committed to Kafka. The writes of step 3 reach
//! disk with the next batch's flush (or sled's own at close), which is why there are two
//! slots: the next intent never overwrites one whose writes may not be on disk yet.
//!
//! After a crash, opening a partition's tree applies both slots' intents again, the
//! older first ([`recover`]), before anything reads it. Every write in an intent sets a
//! key to a value (or removes it), so applying one again is applying it once, and
//! applying two in their order ends where the later one ended. Say the process dies
//! while batch N runs, with N-1 the batch before:
//!
//! - before N's flush completes: no write of N has been made (they wait for the flush);
//!   the slots hold N-1's intent and N-2's, or N's may have replaced N-2's. The writes
//!   of N-2 are on disk (N-1's flush covered them), those of N-1 may be partly. Redoing
//!   N-2 then N-1 ends at N-1; if N's intent is there, redoing it too ends at N, which is
//!   as good: it is what N decided from the state at N-1;
//! - after N's flush: the slots hold N-1's and N's intents, and any subset of N's writes
//!   (and of N-1's) is on disk. Redoing N-1 then N ends at N.
//!
//! Nothing else writes a partition's keys between intents (the store is the partition's
//! only writer, and a rebuild's swap only sets the emitted mark, which no rebuild's
//! intent carries), so a redone intent never overwrites a newer value. `recover` flushes
//! what it redid before the tree is used: otherwise a later intent could reach disk
//! without the redone writes. If any step fails, the caller evicts the trees, so that the
//! next use redoes the intents in memory over whatever landed, instead of reading a
//! half-written batch (a batch whose intent was written is then applied, as decided).
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

    /// The intent's bytes: a version byte, the sequence number, the count, each write
    /// as key length, key, then `0` (removed) or `1`, value length and value, and a
    /// blake3 checksum of all of that (16 bytes), so that a damaged intent is refused
    /// rather than redone.
    pub(crate) fn encode(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self
                .ops()
                .map(|(k, v)| 9 + k.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>(),
        );
        out.push(INTENT_VERSION);
        out.extend_from_slice(&seq.to_be_bytes());
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

/// The sequence number and the writes of an intent's bytes, in the order to apply them,
/// or why they are not an intent.
fn decode(bytes: &[u8]) -> Result<(u64, Vec<Op>), String> {
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
    let seq = u64::from_be_bytes(r.take(8)?.try_into().expect("took 8 bytes"));
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
    Ok((seq, ops))
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

/// One partition's share of a batch: where its records and its intents are, what to
/// write, and the intent's sequence number (above every earlier one of the partition).
pub(crate) struct Share<'a, T> {
    pub(crate) records: &'a T,
    pub(crate) intent: &'a T,
    pub(crate) writes: &'a Writes,
    pub(crate) seq: u64,
}

/// The intent tree's key for the intent with this sequence number: two slots, in turn.
fn slot(seq: u64) -> [u8; 2] {
    [records::INTENT_KEY[0], (seq % 2) as u8]
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

/// Steps 1 to 3 for a batch's shares (an empty share writes nothing). On an error the
/// caller recovers the shares' trees before they are read again.
pub(crate) fn commit(shares: &impl Shares) -> Result<(), StoreError> {
    shares.each(&|share| {
        if share.writes.is_empty() {
            return Ok(());
        }
        share
            .intent
            .set(&slot(share.seq), Some(&share.writes.encode(share.seq)))
    })?;
    shares.flush()?;
    shares.each(&|share| {
        for (k, v) in share.writes.ops() {
            share.records.set(k, v)?;
        }
        Ok(())
    })
}

/// Applies a partition's intents to its records again, the older first, and returns
/// the last sequence number (0 when there is none) and whether anything was redone; the
/// caller flushes before the records are used. `name` is the partition tree's, for the
/// error.
pub(crate) fn recover<T: Kv>(
    records: &T,
    intent: &T,
    name: &str,
) -> Result<(u64, bool), StoreError> {
    let mut found = Vec::with_capacity(2);
    for s in 0..2 {
        if let Some(bytes) = intent.get(&slot(s))? {
            found.push(decode(&bytes).map_err(|detail| StoreError::BadRecord {
                tree: name.to_string(),
                key: format!("intent slot {s}"),
                detail,
            })?);
        }
    }
    found.sort_by_key(|(seq, _)| *seq);
    let last = found.last().map_or(0, |(seq, _)| *seq);
    for (_, ops) in &found {
        for (k, v) in ops {
            records.set(k, v.as_deref())?;
        }
    }
    Ok((last, !found.is_empty()))
}

#[cfg(test)]
mod tests;
