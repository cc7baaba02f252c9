//! One partition's share of a batch: its events decided against the partition's tree
//! into its writes (which `intent` makes atomic), with the follow-ups and dead letters
//! they cause.
//!
//! Two things happen here beside the rules of the domain:
//!
//! - **Parking.** An event this build cannot read parks its account: it and every later
//!   event of the account wait, in order, in the partition's tree, while the partition's
//!   other accounts flow on. An operator's [`EventBody::Unpark`] in the log, applied at
//!   its place like any event, reads the waiting events again (`Retry`) or first sends
//!   the unreadable one to the dead-letter topic (`Skip`), and applies what it can.
//! - **The state digest.** Every record of the partition's state (accounts, outcomes,
//!   totals, parked events) contributes a 128-bit hash of its key and value, and the
//!   digest is their sum modulo 2^128. A write subtracts the old record's hash and adds
//!   the new one's, so the digest is kept as the batch writes, with no scan, and two
//!   stores that hold the same records at the same offset hold the same digest, however
//!   they got there. A verified rebuild compares it.

use std::collections::{BTreeMap, HashMap, HashSet};

use ledger_domain::model::{apply_event, recorded_follow_ups, LedgerState};
use ledger_domain::{
    apply_released, follow_up_cause, is_duplicate, is_released_follow_up, mark_released, AccountId,
    AccountState, ApplyResult, CommandId, CommandRecord, CommandStatus, Event, EventBody,
    FollowUpRecord, IdempotencyWindow, Position, Record, Totals, UnparkKind, Unreadable,
};
use sled::IVec;

use crate::intent::Writes;
use crate::records::{self, ParkEntry, ParkMark};
use crate::{BatchStats, EventCodec, Share, Skipped, StoreError, Trees};

/// One partition's share of a batch.
pub(crate) struct PartitionJob<'b> {
    pub(crate) name: String,
    pub(crate) trees: Trees,
    pub(crate) partition: i32,
    pub(crate) records: Vec<&'b Record>,
    pub(crate) unreadable: Vec<&'b Unreadable>,
    pub(crate) next: Option<i64>,
    /// Events at or above it cause follow-ups; `None`: nothing here may emit.
    pub(crate) emit_from: Option<i64>,
    pub(crate) codec: Option<&'b dyn EventCodec>,
    pub(crate) window: Option<IdempotencyWindow>,
}

/// One partition's decided share: its writes and what must reach the log before them.
pub(crate) struct Decided {
    pub(crate) share: Share,
    pub(crate) follow_ups: Vec<Event>,
    pub(crate) dead_letters: Vec<Skipped>,
    pub(crate) stats: BatchStats,
}

impl PartitionJob<'_> {
    pub(crate) fn decide(self) -> Result<Decided, StoreError> {
        let tree = &self.trees.records;
        let stored = tree
            .get(records::OFFSET_KEY)?
            .map(|v| records::decode_offset(&self.name, &v))
            .transpose()?;
        let mut state = PartitionState::new(&self.name, tree, self.codec, self.window);
        let mut stats = BatchStats::default();
        let mut follow_ups = Vec::new();
        let mut dead_letters = Vec::new();
        let mut records = self.records.iter().peekable();
        let mut unreadable = self.unreadable.iter().peekable();
        loop {
            // The two lists interleave by offset: an account parks at its unreadable
            // event's place, and only the events after it wait.
            let take_unreadable = match (records.peek(), unreadable.peek()) {
                (None, None) => break,
                (Some(r), Some(u)) => u.offset < r.offset,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            if take_unreadable {
                let u = unreadable.next().expect("peeked above");
                if stored.is_some_and(|next| u.offset < next) {
                    stats.redelivered += 1;
                    continue;
                }
                state.park(
                    &u.account_id,
                    u.offset,
                    ParkEntry::Unreadable(u.payload.clone()),
                    &u.reason,
                )?;
                stats.parked += 1;
                continue;
            }
            let r = records.next().expect("peeked above");
            let at = Position {
                partition: self.partition,
                offset: r.offset,
            };
            let emits = self.emit_from.is_some_and(|from| r.offset >= from);
            if stored.is_some_and(|next| r.offset < next) {
                stats.redelivered += 1;
                if emits {
                    follow_ups.extend(recorded_follow_ups(&mut state, &r.event, at)?);
                    // What an operator's decision released, as it was released then.
                    if let EventBody::Unpark { .. } = r.event.body {
                        let (f, d) = state.released_by(at)?;
                        follow_ups.extend(f);
                        dead_letters.extend(d);
                    }
                }
                continue;
            }
            if let EventBody::Unpark {
                action,
                first_offset,
            } = r.event.body
            {
                stats.controls += 1;
                state.unpark(
                    at,
                    &r.event.account_id,
                    (action, first_offset),
                    emits,
                    &mut Unparked {
                        stats: &mut stats,
                        follow_ups: &mut follow_ups,
                        dead_letters: &mut dead_letters,
                    },
                )?;
                continue;
            }
            if state.is_parked(&r.event.account_id)? {
                // A copy of what was applied before the account was parked changes
                // nothing now; kept waiting, it could outlive the record that says so.
                if is_duplicate(&mut state, &r.event, at)? {
                    stats.count(ApplyResult::Duplicate);
                    continue;
                }
                let bytes = state.codec()?.encode(&r.event);
                state.park(&r.event.account_id, r.offset, ParkEntry::Waiting(bytes), "")?;
                stats.parked += 1;
                continue;
            }
            let applied = apply_event(&mut state, &r.event, at)?;
            stats.count(applied.result);
            if emits {
                follow_ups.extend(applied.follow_ups);
            }
        }
        let mut writes = state.finish()?;
        if let Some(next) = self.next {
            // An owner's batch: every event below `next` now has its follow-ups in the
            // log (emitted here, or by an earlier owner below `emit_from`).
            if self.emit_from.is_some() {
                let emitted = tree
                    .get(records::EMITTED_KEY)?
                    .map(|v| records::decode_offset(&self.name, &v))
                    .transpose()?;
                if emitted.is_none_or(|e| next > e) {
                    writes.last(records::EMITTED_KEY, &records::encode_offset(next));
                }
            }
            // Never move an offset backwards, whatever the batch says. Written last: a
            // reader that sees it sees the whole batch.
            if stored.is_none_or(|s| next > s) {
                writes.last(records::OFFSET_KEY, &records::encode_offset(next));
            }
        }
        Ok(Decided {
            share: Share {
                partition: self.partition,
                trees: self.trees,
                writes,
                seq: 0,
            },
            follow_ups,
            dead_letters,
            stats,
        })
    }
}

/// Where an unpark reports what it did.
struct Unparked<'a> {
    stats: &'a mut BatchStats,
    follow_ups: &'a mut Vec<Event>,
    dead_letters: &'a mut Vec<Skipped>,
}

/// The hash a record contributes to its partition's digest; an absent one contributes
/// nothing.
pub(crate) fn record_hash(key: &[u8], value: Option<&[u8]>) -> u128 {
    let Some(value) = value else {
        return 0;
    };
    let mut h = blake3::Hasher::new();
    // The key's length first, so that no key and value can pass for another pair.
    h.update(&(key.len() as u32).to_be_bytes());
    h.update(key);
    h.update(value);
    let bytes: [u8; 16] = h.finalize().as_bytes()[..16]
        .try_into()
        .expect("a blake3 hash is 32 bytes");
    u128::from_be_bytes(bytes)
}

/// [`LedgerState`] over one partition's tree, with what the batch reads and writes kept
/// in memory and every write gathered, to be written through an intent.
pub(crate) struct PartitionState<'a> {
    name: &'a str,
    tree: &'a sled::Tree,
    codec: Option<&'a dyn EventCodec>,
    window: Option<IdempotencyWindow>,
    /// The watermark, once read (the outer `None`: not read yet).
    watermark: Option<Option<i64>>,
    watermark_changed: bool,
    /// The floors the batch read or raised, and which it raised.
    floors: HashMap<i32, Option<i64>>,
    floors_raised: HashSet<i32>,
    /// The kept-from time of each command record the batch read from the tree (`None`:
    /// there was none), so that rewriting one moves its expiry entry.
    kept: HashMap<Vec<u8>, Option<i64>>,
    /// The batch's writes of expiry entries (`false`: a removal), for the pruning to
    /// read over the tree's.
    expiry_writes: BTreeMap<Vec<u8>, bool>,
    accounts: HashMap<AccountId, AccountState>,
    /// Accounts changed by the batch, written once at the end.
    touched: HashSet<AccountId>,
    /// Command records written by this batch, by key, not yet in the tree.
    commands: HashMap<Vec<u8>, CommandRecord>,
    /// Follow-up records written by this batch, not yet in the tree.
    follow_ups: HashMap<u128, FollowUpRecord>,
    /// The partition's totals once the batch changed them, written once at the end.
    totals: Option<Totals>,
    /// Parked accounts the batch looked at (`None`: not parked).
    marks: HashMap<AccountId, Option<ParkMark>>,
    /// The waiting events of the parked accounts the batch unparked or parked, once read.
    entries: HashMap<AccountId, BTreeMap<i64, ParkEntry>>,
    /// How many accounts of the partition are parked, once read.
    parked_count: Option<u64>,
    /// Whether the batch changed it.
    parked_count_changed: bool,
    /// Every write (the last of each key wins).
    writes: Writes,
    /// The writes of waiting events (`None`: a removal), for [`Self::entries`] to read
    /// over the tree's.
    park_writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The hash of the record now under each state key the batch read or wrote (the
    /// tree's, then the batch's latest), so that a write moves the digest without reading
    /// what it replaces a second time.
    hashes: HashMap<Vec<u8>, u128>,
    /// What the batch's writes add to the digest, modulo 2^128.
    digest_delta: u128,
}

impl<'a> PartitionState<'a> {
    pub(crate) fn new(
        name: &'a str,
        tree: &'a sled::Tree,
        codec: Option<&'a dyn EventCodec>,
        window: Option<IdempotencyWindow>,
    ) -> Self {
        PartitionState {
            name,
            tree,
            codec,
            window,
            watermark: None,
            watermark_changed: false,
            floors: HashMap::new(),
            floors_raised: HashSet::new(),
            kept: HashMap::new(),
            expiry_writes: BTreeMap::new(),
            accounts: HashMap::new(),
            touched: HashSet::new(),
            commands: HashMap::new(),
            follow_ups: HashMap::new(),
            totals: None,
            marks: HashMap::new(),
            entries: HashMap::new(),
            parked_count: None,
            parked_count_changed: false,
            writes: Writes::default(),
            park_writes: BTreeMap::new(),
            hashes: HashMap::new(),
            digest_delta: 0,
        }
    }

    fn read(&mut self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        let v = self.tree.get(key)?;
        if records::is_state_key(key) && !self.hashes.contains_key(key) {
            self.hashes
                .insert(key.to_vec(), record_hash(key, v.as_deref()));
        }
        Ok(v)
    }

    /// Writes `value` under `key` (`None`: removes it), moving the digest by the change.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        if records::is_state_key(&key) {
            let old = match self.hashes.get(&key) {
                Some(h) => *h,
                None => record_hash(&key, self.tree.get(&key)?.as_deref()),
            };
            let new = record_hash(&key, value.as_deref());
            self.digest_delta = self.digest_delta.wrapping_sub(old).wrapping_add(new);
            self.hashes.insert(key.clone(), new);
        }
        if key.first() == Some(&records::PARK_ENTRY_PREFIX) {
            self.park_writes.insert(key.clone(), value.clone());
        }
        if key.first() == Some(&records::EXPIRY_PREFIX) {
            self.expiry_writes.insert(key.clone(), value.is_some());
        }
        self.writes.state(key, value);
        Ok(())
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.write(key, Some(value))
    }

    fn remove(&mut self, key: Vec<u8>) -> Result<(), StoreError> {
        self.write(key, None)
    }

    fn codec(&self) -> Result<&'a dyn EventCodec, StoreError> {
        self.codec.ok_or(StoreError::NoCodec)
    }

    fn parked_count(&mut self) -> Result<u64, StoreError> {
        if let Some(n) = self.parked_count {
            return Ok(n);
        }
        let n = match self.tree.get(records::PARKED_COUNT_KEY)? {
            Some(v) => records::decode_u64(self.name, records::PARKED_COUNT_KEY, &v)?,
            None => 0,
        };
        self.parked_count = Some(n);
        Ok(n)
    }

    fn mark(&mut self, id: &AccountId) -> Result<Option<ParkMark>, StoreError> {
        if let Some(m) = self.marks.get(id) {
            return Ok(m.clone());
        }
        let key = records::park_mark_key(id);
        let mark = self
            .read(&key)?
            .map(|v| records::decode_park_mark(self.name, &key, &v))
            .transpose()?;
        self.marks.insert(id.clone(), mark.clone());
        Ok(mark)
    }

    fn set_mark(&mut self, id: &AccountId, mark: Option<ParkMark>) -> Result<(), StoreError> {
        let was = self.mark(id)?.is_some();
        let count = self.parked_count()?;
        let count = match (was, mark.is_some()) {
            (false, true) => count + 1,
            (true, false) => count.saturating_sub(1),
            _ => count,
        };
        if Some(count) != self.parked_count {
            self.parked_count = Some(count);
            self.parked_count_changed = true;
        }
        let key = records::park_mark_key(id);
        match &mark {
            Some(m) => self.put(key, records::encode_park_mark(m))?,
            None => self.remove(key)?,
        }
        self.marks.insert(id.clone(), mark);
        Ok(())
    }

    /// Whether the account's events wait. Costs no read while nothing in the partition
    /// is parked, which is nearly always.
    fn is_parked(&mut self, id: &AccountId) -> Result<bool, StoreError> {
        if self.parked_count()? == 0 {
            return Ok(false);
        }
        Ok(self.mark(id)?.is_some())
    }

    /// The account's waiting events, in offset order: the tree's, with this batch's
    /// writes over them.
    fn entries(&mut self, id: &AccountId) -> Result<&mut BTreeMap<i64, ParkEntry>, StoreError> {
        if !self.entries.contains_key(id) {
            let prefix = records::park_entry_prefix(id);
            let mut found = BTreeMap::new();
            for kv in self.tree.scan_prefix(&prefix) {
                let (k, v) = kv?;
                if !self.hashes.contains_key(k.as_ref()) {
                    self.hashes.insert(k.to_vec(), record_hash(&k, Some(&v)));
                }
                found.insert(
                    records::park_entry_offset(self.name, &k)?,
                    records::decode_park_entry(self.name, &k, &v)?,
                );
            }
            for (k, v) in self.park_writes.range(prefix.clone()..) {
                if !k.starts_with(&prefix) {
                    break;
                }
                let offset = records::park_entry_offset(self.name, k)?;
                match v {
                    Some(v) => found.insert(offset, records::decode_park_entry(self.name, k, v)?),
                    None => found.remove(&offset),
                };
            }
            self.entries.insert(id.clone(), found);
        }
        Ok(self.entries.get_mut(id).expect("inserted above"))
    }

    /// Parks the event at `offset` behind the account's earlier waiting ones; an
    /// unreadable event parks an account that was not parked, with `reason`.
    fn park(
        &mut self,
        id: &AccountId,
        offset: i64,
        entry: ParkEntry,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mark = match self.mark(id)? {
            Some(mut m) => {
                m.waiting += 1;
                m
            }
            None => ParkMark {
                first_offset: offset,
                waiting: 1,
                reason: reason.to_string(),
            },
        };
        self.set_mark(id, Some(mark))?;
        self.put(
            records::park_entry_key(id, offset),
            records::encode_park_entry(&entry),
        )?;
        if let Some(entries) = self.entries.get_mut(id) {
            entries.insert(offset, entry);
        }
        Ok(())
    }

    /// An operator's decision for the account, made while its first waiting event was
    /// at `first_offset` (and ignored otherwise: the decision was sent again, or came
    /// after another): skips that event (to the dead-letter topic, when this batch may
    /// write to the log), then reads and applies the waiting events in order up to the
    /// first that still cannot be read, where the account stays parked. What it released
    /// is recorded under the decision's offset, for an owner that must write their
    /// follow-ups again ([`PartitionState::released_by`]).
    fn unpark(
        &mut self,
        at: Position,
        id: &AccountId,
        (action, first_offset): (UnparkKind, i64),
        emits: bool,
        out: &mut Unparked<'_>,
    ) -> Result<(), StoreError> {
        let Some(mark) = self.mark(id)?.filter(|m| m.first_offset == first_offset) else {
            return Ok(());
        };
        let partition = at.partition;
        let codec = self.codec()?;
        let mut waiting = std::mem::take(self.entries(id)?);
        let mut released = records::Released::default();
        if action == UnparkKind::Skip {
            if let Some((offset, entry)) = waiting.pop_first() {
                self.remove(records::park_entry_key(id, offset))?;
                let skipped = Skipped {
                    partition,
                    offset,
                    account_id: id.clone(),
                    payload: entry.bytes().to_vec(),
                    reason: mark.reason.clone(),
                };
                if emits {
                    out.stats.dead_lettered += 1;
                    out.dead_letters.push(skipped.clone());
                }
                released.skipped = Some(skipped);
            }
        }
        let mut still = None;
        while let Some((offset, entry)) = waiting.pop_first() {
            let event = codec.decode(entry.bytes()).and_then(|e| {
                if &e.account_id == id {
                    Ok(e)
                } else {
                    Err(format!("it names account {}, not {id}", e.account_id))
                }
            });
            let event = match event {
                Ok(e) => e,
                Err(reason) => {
                    waiting.insert(offset, entry);
                    still = Some(ParkMark {
                        first_offset: offset,
                        waiting: waiting.len() as u64,
                        reason,
                    });
                    break;
                }
            };
            self.remove(records::park_entry_key(id, offset))?;
            let applied = apply_released(self, &event, Position { partition, offset })?;
            out.stats.count(applied.result);
            out.stats.unparked += 1;
            if emits {
                out.follow_ups.extend(applied.follow_ups);
            }
            released.events.push((offset, entry.bytes().to_vec()));
        }
        if !released.is_empty() {
            self.put(
                records::released_key(at.offset),
                records::encode_released(&released),
            )?;
        }
        self.entries.insert(id.clone(), waiting);
        self.set_mark(id, still)
    }

    /// The follow-ups and the dead letter of what the operator's decision at `at`
    /// released, as it released them: for an owner that reads the decision again and
    /// cannot know that they reached the log.
    fn released_by(&mut self, at: Position) -> Result<(Vec<Event>, Vec<Skipped>), StoreError> {
        let key = records::released_key(at.offset);
        let Some(v) = self.read(&key)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let released = records::decode_released(self.name, &key, &v)?;
        let codec = self.codec()?;
        let mut follow_ups = Vec::new();
        for (offset, bytes) in &released.events {
            // It was read once; a codec that cannot read it now is a downgrade, and its
            // follow-ups were decided by the version that could.
            let Ok(event) = codec.decode(bytes) else {
                continue;
            };
            let cause = Position {
                partition: at.partition,
                offset: *offset,
            };
            let mut recorded = recorded_follow_ups(self, &event, cause)?;
            mark_released(&mut recorded);
            follow_ups.extend(recorded);
        }
        Ok((follow_ups, released.skipped.into_iter().collect()))
    }

    /// Removes every outcome that has expired at the batch's watermark, and the expiry
    /// entries of pending transfers (they never expire; settled, they get a new one),
    /// raising the floors by the follow-ups pruned.
    fn prune(&mut self) -> Result<(), StoreError> {
        let (Some(window), Some(Some(watermark))) = (self.window, self.watermark) else {
            return Ok(());
        };
        let horizon = window.horizon(watermark);
        let mut due = Vec::new();
        for kv in self.tree.scan_prefix([records::EXPIRY_PREFIX]) {
            let (k, _) = kv?;
            if records::decode_expiry_key(self.name, &k)?.0 > horizon {
                break;
            }
            if self.expiry_writes.get(k.as_ref()) != Some(&false) {
                due.push(k.to_vec());
            }
        }
        for (k, &present) in &self.expiry_writes {
            if records::decode_expiry_key(self.name, k)?.0 > horizon {
                break;
            }
            if present && self.tree.get(k)?.is_none() {
                due.push(k.clone());
            }
        }
        for k in due {
            self.remove(k.clone())?;
            let record = records::decode_expiry_key(self.name, &k)?.1.to_vec();
            match record.first() {
                Some(&records::COMMAND_PREFIX) => {
                    let pending = match self.commands.get(&record) {
                        Some(r) => r.status == CommandStatus::Pending,
                        None => self
                            .tree
                            .get(&record)?
                            .is_some_and(|v| records::is_pending_command(&v)),
                    };
                    if !pending {
                        self.commands.remove(&record);
                        self.remove(record)?;
                    }
                }
                Some(&records::FOLLOW_UP_PREFIX) => {
                    if let Some(id) = records::follow_up_of_key(&record) {
                        if let Some((cause, _)) = follow_up_cause(id) {
                            self.raise_floor(cause)?;
                        }
                        self.follow_ups.remove(&id);
                    }
                    self.remove(record)?;
                }
                _ => return Err(records::bad_expiry(self.name, &k)),
            }
        }
        Ok(())
    }

    fn raise_floor(&mut self, cause: Position) -> Result<(), StoreError> {
        let floor = self.follow_up_floor(cause.partition)?;
        if floor.is_none_or(|f| cause.offset > f) {
            self.floors.insert(cause.partition, Some(cause.offset));
            self.floors_raised.insert(cause.partition);
        }
        Ok(())
    }

    /// The batch's writes, with the digest moved by every state record they replaced.
    fn finish(mut self) -> Result<Writes, StoreError> {
        self.prune()?;
        if let (true, Some(Some(w))) = (self.watermark_changed, self.watermark) {
            self.put(
                records::WATERMARK_KEY.to_vec(),
                records::encode_offset(w).to_vec(),
            )?;
        }
        for p in std::mem::take(&mut self.floors_raised) {
            let floor = self.floors[&p].expect("a raised floor is set");
            self.put(
                records::floor_key(p).to_vec(),
                records::encode_offset(floor).to_vec(),
            )?;
        }
        for id in std::mem::take(&mut self.touched) {
            let value = records::encode_account(&self.accounts[&id]).to_vec();
            self.put(records::account_key(&id), value)?;
        }
        if let Some(totals) = self.totals {
            let value = records::encode_totals(&totals).to_vec();
            self.put(records::TOTALS_KEY.to_vec(), value)?;
        }
        if let (Some(count), true) = (self.parked_count, self.parked_count_changed) {
            self.put(
                records::PARKED_COUNT_KEY.to_vec(),
                count.to_be_bytes().to_vec(),
            )?;
        }
        if self.digest_delta != 0 {
            let stored = match self.tree.get(records::DIGEST_KEY)? {
                Some(v) => records::decode_u128(self.name, records::DIGEST_KEY, &v)?,
                None => 0,
            };
            let digest = stored.wrapping_add(self.digest_delta);
            self.writes.last(records::DIGEST_KEY, &digest.to_be_bytes());
        }
        Ok(self.writes)
    }
}

impl LedgerState for PartitionState<'_> {
    type Error = StoreError;

    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        if let Some(s) = self.accounts.get(id) {
            return Ok(Some(*s));
        }
        let key = records::account_key(id);
        match self.read(&key)? {
            Some(v) => {
                let s = records::decode_account(self.name, &key, &v)?;
                self.accounts.insert(id.clone(), s);
                Ok(Some(s))
            }
            None => Ok(None),
        }
    }

    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), StoreError> {
        self.accounts.insert(id.clone(), state);
        self.touched.insert(id.clone());
        Ok(())
    }

    fn command(
        &mut self,
        account: &AccountId,
        id: &CommandId,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let key = records::command_key(account, id);
        if let Some(r) = self.commands.get(&key) {
            return Ok(Some(r.clone()));
        }
        let prefix_len = records::command_prefix(id).len();
        let found = self
            .read(&key)?
            .map(|v| {
                records::decode_command(self.name, 0, prefix_len, &key, &v)
                    .map(records::StoredCommand::into_record)
            })
            .transpose()?;
        if self.window.is_some() {
            self.kept
                .insert(key, found.as_ref().map(|r| r.kept_from_ms));
        }
        Ok(found)
    }

    fn put_command(&mut self, id: &CommandId, record: CommandRecord) -> Result<(), StoreError> {
        let key = records::command_key(&record.account_id, id);
        if self.window.is_some() {
            // The rules read a record before they write it, so the batch holds it.
            let was = match (self.commands.get(&key), self.kept.get(&key)) {
                (Some(r), _) => Some(r.kept_from_ms),
                (None, Some(k)) => *k,
                (None, None) => self
                    .command(&record.account_id, id)?
                    .map(|r| r.kept_from_ms),
            };
            if was != Some(record.kept_from_ms) {
                if let Some(was) = was {
                    self.remove(records::expiry_key(was, &key))?;
                }
                self.put(records::expiry_key(record.kept_from_ms, &key), Vec::new())?;
            }
        }
        self.put(key.clone(), records::encode_command(&record))?;
        self.commands.insert(key, record);
        Ok(())
    }

    fn follow_up(&mut self, event_id: u128) -> Result<Option<FollowUpRecord>, StoreError> {
        if let Some(r) = self.follow_ups.get(&event_id) {
            return Ok(Some(*r));
        }
        let key = records::follow_up_key(event_id);
        self.read(&key)?
            .map(|v| records::decode_follow_up(self.name, &key, &v))
            .transpose()
    }

    fn put_follow_up(&mut self, event_id: u128, record: FollowUpRecord) -> Result<(), StoreError> {
        let key = records::follow_up_key(event_id);
        // A released follow-up's record is kept for ever: no floor stands for it.
        if let (Some(_), Some(Some(watermark)), false) =
            (self.window, self.watermark, is_released_follow_up(event_id))
        {
            self.put(records::expiry_key(watermark, &key), Vec::new())?;
        }
        self.put(key.to_vec(), records::encode_follow_up(&record).to_vec())?;
        self.follow_ups.insert(event_id, record);
        Ok(())
    }

    fn add_totals(&mut self, delta: &Totals) -> Result<(), StoreError> {
        let totals = match &mut self.totals {
            Some(t) => t,
            None => {
                let stored = self
                    .read(records::TOTALS_KEY)?
                    .map_or(Ok(Totals::default()), |v| {
                        records::decode_totals(self.name, &v)
                    })?;
                self.totals.insert(stored)
            }
        };
        totals.add(delta);
        Ok(())
    }

    fn window(&self) -> Option<IdempotencyWindow> {
        self.window
    }

    fn watermark(&mut self, _partition: i32) -> Result<Option<i64>, StoreError> {
        if let Some(w) = self.watermark {
            return Ok(w);
        }
        let w = self
            .read(records::WATERMARK_KEY)?
            .map(|v| records::decode_offset(self.name, &v))
            .transpose()?;
        self.watermark = Some(w);
        Ok(w)
    }

    fn set_watermark(&mut self, _partition: i32, ms: i64) -> Result<(), StoreError> {
        self.watermark = Some(Some(ms));
        self.watermark_changed = true;
        Ok(())
    }

    fn follow_up_floor(&mut self, cause_partition: i32) -> Result<Option<i64>, StoreError> {
        if let Some(f) = self.floors.get(&cause_partition) {
            return Ok(*f);
        }
        let key = records::floor_key(cause_partition);
        let f = self
            .read(&key)?
            .map(|v| records::decode_offset(self.name, &v))
            .transpose()?;
        self.floors.insert(cause_partition, f);
        Ok(f)
    }
}

impl BatchStats {
    fn count(&mut self, result: ApplyResult) {
        match result {
            ApplyResult::Applied => self.applied += 1,
            ApplyResult::Rejected(why) => *self.rejected.entry(why.code()).or_default() += 1,
            ApplyResult::Duplicate => self.duplicates += 1,
            ApplyResult::Control => self.controls += 1,
        }
    }
}
