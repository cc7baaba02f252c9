//! The projector's state store, in sled, kept per partition.
//!
//! Each partition of the topic has a tree of its own holding its accounts, its command
//! outcomes and its next offset (the layout is in `records`). A batch is decided and
//! written partitions in parallel, on up to `workers` threads, with plain sled writes
//! made atomic per partition by a redo intent (`intent`), and is durable before
//! [`Store::apply_batch`] returns: after any crash, each partition's state on disk is
//! exactly the effect of its events below its stored offset. The projector is the only
//! writer of its partitions, so the reads a batch makes (the dedupe check, the accounts
//! it touches) cannot race a write.
//!
//! Applying a transfer causes follow-up events, which must be in the log before the
//! effect that caused them is stored. So a batch is applied in two steps:
//! [`Store::prepare`] decides every event and gathers the writes and the follow-ups
//! without writing anything; the caller writes the follow-ups to the log; then
//! [`Store::commit`] writes and flushes. A crash in between leaves the store as it was,
//! and the replay causes the same follow-ups with the same ids, which their
//! destinations apply once.
//!
//! Per-partition state is what lets a partition move between instances, and it relies on
//! every event sitting in its account's partition. The store records the topic's
//! partition count and refuses another: if partitions were added, keys would move and an
//! account's state would split.

mod batch;
mod error;
mod generations;
mod intent;
mod partition;
mod records;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rayon::iter::{IntoParallelIterator, IntoParallelRefIterator, ParallelIterator};
use std::time::{Duration, Instant};

use ledger_domain::partitioning::partition_of;
use ledger_domain::{
    AccountId, AccountState, Batch, CommandId, Event, IdempotencyWindow, Record, Totals, Unreadable,
};

pub use batch::{BatchStats, Prepared};
use error::classify_open_error;
pub use error::StoreError;
pub use generations::{Rebuilding, Retired, SwapError};
use partition::{Decided, PartitionJob};
pub use records::{ParkMark, StoredCommand, LAYOUT};

/// How the store writes an event that waits behind an unreadable one, and reads waiting
/// events again: the event log's codec, which the store cannot depend on (it needs no
/// Kafka). A store without one refuses to park.
pub trait EventCodec: Send + Sync {
    /// The event as the log's envelope.
    fn encode(&self, event: &Event) -> Vec<u8>;
    /// The envelope's event, or why this build cannot read it.
    fn decode(&self, bytes: &[u8]) -> Result<Event, String>;
}

/// A parked account's first waiting event, skipped by an operator: it goes to the
/// dead-letter topic before the batch that skipped it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where it was read.
    pub partition: i32,
    /// Where it was read.
    pub offset: i64,
    /// The account it parked.
    pub account_id: AccountId,
    /// The bytes as read.
    pub payload: Vec<u8>,
    /// Why it could not be read.
    pub reason: String,
}

/// How long [`Store::open`] waits for a lock that is being released.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The sled store. Cheap to clone: every clone is the same database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    /// Open partition trees, by topic and partition: `open_tree` takes a database-wide
    /// lock, so each is opened once.
    trees: Arc<RwLock<HashMap<(String, i32), Trees>>>,
    path: PathBuf,
    workers: usize,
    /// The threads that apply partitions in parallel, for good (a thread per batch
    /// would churn the allocator's per-thread memory); none with one worker.
    pool: Option<Arc<rayon::ThreadPool>>,
    codec: Option<Arc<dyn EventCodec>>,
    /// Held while a batch is written and while a rebuild's trees are swapped in, so that
    /// no batch decided over a tree lands after that tree was swapped out.
    writer: Arc<Mutex<()>>,
    /// For a rebuild's view: the generation of the trees it reads and writes.
    view: Option<u32>,
    /// For how long outcomes are kept; `None`: for ever.
    window: Option<IdempotencyWindow>,
}

impl Store {
    /// Opens (or creates) the store with a cache of `cache_bytes`, applying partitions on
    /// as many threads as the machine has cores. A store of another layout is refused
    /// ([`StoreError::Layout`]).
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        // sled releases a directory's lock only once its I/O threads have let go of a
        // dropped database, a moment after the drop: a store reopened at once in the same
        // process (a restart in place, a test) can find it still locked. Another process
        // that holds it keeps it, and is reported after this wait.
        let deadline = Instant::now() + LOCK_RELEASE_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                // Durability comes from the explicit flush after each batch; the
                // background flusher only adds writes.
                .flush_every_ms(None)
                .open()
                .map_err(|e| classify_open_error(path, e));
            match opened {
                Err(StoreError::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let names = db.tree_names();
        let fresh = names.iter().all(|n| {
            n.as_ref() == b"__sled__default" || n.as_ref() == records::META_TREE.as_bytes()
        });
        let meta = db
            .open_tree(records::META_TREE)
            .map_err(|e| classify_open_error(path, e))?;
        match meta.get(records::META_LAYOUT)? {
            Some(v) if v.as_ref() == LAYOUT.to_be_bytes() => {}
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(|b| format!("layout {}", u32::from_be_bytes(b)))
                    .unwrap_or_else(|_| "an unreadable layout".into());
                return Err(StoreError::Layout {
                    path: path.to_path_buf(),
                    found,
                });
            }
            None if fresh && db.is_empty() => {
                meta.insert(records::META_LAYOUT, &LAYOUT.to_be_bytes())?;
                db.flush()?;
            }
            None => {
                let v1 = [&b"accounts"[..], b"commands", b"offsets"]
                    .iter()
                    .all(|t| names.iter().any(|n| n.as_ref() == *t));
                return Err(StoreError::Layout {
                    path: path.to_path_buf(),
                    found: if v1 {
                        "layout 1 (one tree for every partition, written before per-partition state)".into()
                    } else {
                        "an unknown layout".into()
                    },
                });
            }
        }
        let store = Self {
            db,
            meta,
            trees: Arc::default(),
            path: path.to_path_buf(),
            workers: 1,
            pool: None,
            codec: None,
            writer: Arc::default(),
            view: None,
            window: None,
        };
        store.drop_stale_generations()?;
        Ok(store.with_workers(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// Parks events with this codec (see [`EventCodec`]).
    pub fn with_codec(mut self, codec: Arc<dyn EventCodec>) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Keeps outcomes for `window` of event time (`None`: for ever). A store is built
    /// with one window for its whole life: see [`Store::check_window`].
    pub fn with_window(mut self, window: Option<IdempotencyWindow>) -> Self {
        self.window = window;
        self
    }

    /// The idempotency window it applies.
    pub fn window(&self) -> Option<IdempotencyWindow> {
        self.window
    }

    /// Records the store's window on first use, durably, and afterwards checks that it
    /// has not changed ([`StoreError::WindowChanged`]): a store built with another
    /// window holds other outcomes (pruned, or never indexed to be), so its duplicates
    /// would not be the ones its window says.
    pub fn check_window(&self) -> Result<(), StoreError> {
        let now = self.window.map_or(0, |w| w.as_millis());
        match self.meta.get(records::META_WINDOW)? {
            Some(v) => {
                let stored = <[u8; 8]>::try_from(v.as_ref())
                    .map(i64::from_be_bytes)
                    .map_err(|_| StoreError::BadRecord {
                        tree: records::META_TREE.into(),
                        key: String::from_utf8_lossy(records::META_WINDOW).into_owned(),
                        detail: format!("a window is 8 bytes, found {}", v.len()),
                    })?;
                if stored == now {
                    return Ok(());
                }
                let show = |ms: i64| {
                    if ms == 0 {
                        "unbounded".to_string()
                    } else {
                        IdempotencyWindow::new(Duration::from_millis(ms as u64))
                            .map_or_else(|_| format!("{ms} ms"), |w| w.to_string())
                    }
                };
                Err(StoreError::WindowChanged {
                    path: self.path.clone(),
                    stored: show(stored),
                    now: show(now),
                })
            }
            None => {
                self.meta.insert(records::META_WINDOW, &now.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// A partition's watermark: the latest event time among the events it applied.
    pub fn watermark(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.partition_i64(topic, partition, records::WATERMARK_KEY)
    }

    /// Applies partitions on at most `workers` threads (at least one).
    ///
    /// # Panics
    /// If the OS cannot start the threads.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self.pool = (self.workers > 1).then(|| {
            Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.workers)
                    .thread_name(|i| format!("ledger-store-{i}"))
                    .build()
                    .expect("the OS can start one thread per store worker"),
            )
        });
        self
    }

    /// How many threads apply partitions in parallel.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tree(&self, topic: &str, partition: i32) -> Result<sled::Tree, StoreError> {
        Ok(self.trees_of(topic, partition)?.records)
    }

    /// A partition's live trees, opened (and its last intents redone) on first use.
    fn trees_of(&self, topic: &str, partition: i32) -> Result<Trees, StoreError> {
        let key = (topic.to_string(), partition);
        if let Some(t) = self
            .trees
            .read()
            .expect("the tree cache lock is never held across a panic")
            .get(&key)
        {
            return Ok(t.clone());
        }
        // A miss is resolved under the write lock: a swap writes the new generation and
        // then replaces the cached tree under this lock, so an old tree is never cached
        // after it.
        let mut trees = self
            .trees
            .write()
            .expect("the tree cache lock is never held across a panic");
        if let Some(t) = trees.get(&key) {
            return Ok(t.clone());
        }
        let generation = match self.view {
            Some(g) => g,
            None => self.generation(topic, partition)?,
        };
        let name = records::generation_tree_name(topic, partition, generation);
        let records = self.db.open_tree(&name)?;
        let intent = self
            .db
            .open_tree(records::intent_tree_name(name.as_bytes()))?;
        // The last batches' intents, redone before anything reads the tree: after a crash
        // their writes may be partly on disk (see `intent`).
        let (last, redone) = intent::recover(&records, &intent, &name)?;
        if redone {
            self.db.flush()?;
        }
        let t = Trees {
            records,
            intent,
            seq: Arc::new(AtomicU64::new(last)),
        };
        trees.insert(key, t.clone());
        Ok(t)
    }

    /// Drops a partition's tree of records, and its intent's.
    fn drop_partition_tree(&self, name: &[u8]) -> Result<(), StoreError> {
        self.db.drop_tree(name)?;
        self.db.drop_tree(records::intent_tree_name(name))?;
        Ok(())
    }

    /// The partitions of `topic` this store holds a tree for.
    fn partitions_held(&self, topic: &str) -> Vec<i32> {
        let mut parts: Vec<i32> = self
            .db
            .tree_names()
            .iter()
            .filter_map(|n| records::partition_of_tree(topic, n))
            .collect();
        parts.sort_unstable();
        parts.dedup();
        parts
    }

    /// The partition count of `topic` this store was built with, once recorded.
    pub fn partition_count(&self, topic: &str) -> Result<Option<i32>, StoreError> {
        self.meta
            .get(records::partition_count_key(topic))?
            .map(|v| {
                <[u8; 4]>::try_from(v.as_ref())
                    .map(i32::from_be_bytes)
                    .map_err(|_| StoreError::BadRecord {
                        tree: records::META_TREE.into(),
                        key: String::from_utf8_lossy(&records::partition_count_key(topic))
                            .into_owned(),
                        detail: format!("a partition count is 4 bytes, found {}", v.len()),
                    })
            })
            .transpose()
    }

    /// Records the topic's partition count on first use, durably, and afterwards
    /// checks that it has not changed ([`StoreError::PartitionCountChanged`]).
    pub fn check_partition_count(&self, topic: &str, now: i32) -> Result<(), StoreError> {
        match self.partition_count(topic)? {
            Some(stored) if stored == now => Ok(()),
            Some(stored) => Err(StoreError::PartitionCountChanged {
                topic: topic.to_string(),
                stored,
                now,
            }),
            None => {
                self.meta
                    .insert(records::partition_count_key(topic), &now.to_be_bytes())?;
                self.db.flush()?;
                Ok(())
            }
        }
    }

    /// The instance id kept in this directory: the one stored on first use, or else
    /// `fresh`, stored durably now. A directory keeps its id for its whole life, so that
    /// a process restarted on it is the same member of its group; a copy of the
    /// directory carries the id along (two processes then claim one identity).
    pub fn instance_id_or_insert(&self, fresh: &str) -> Result<(String, bool), StoreError> {
        let stored = self.meta.compare_and_swap(
            records::META_INSTANCE_ID,
            None::<&[u8]>,
            Some(fresh.as_bytes()),
        )?;
        match stored {
            Ok(()) => {
                self.db.flush()?;
                Ok((fresh.to_string(), true))
            }
            Err(sled::CompareAndSwapError { current, .. }) => {
                let current = current.expect("a failed swap from nothing found something");
                let id =
                    String::from_utf8(current.to_vec()).map_err(|_| StoreError::BadRecord {
                        tree: records::META_TREE.into(),
                        key: "instance_id".into(),
                        detail: "an instance id is UTF-8 text".into(),
                    })?;
                Ok((id, false))
            }
        }
    }

    /// The next offset to read for a partition, if any batch of it was applied.
    pub fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.partition_i64(topic, partition, records::OFFSET_KEY)
    }

    /// One of a partition's 8-byte records (an offset, the watermark), if written.
    fn partition_i64(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
    ) -> Result<Option<i64>, StoreError> {
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(key)?
            .map(|v| records::decode_offset(&name, &v))
            .transpose()
    }

    /// The next offset whose follow-ups are not known to be in the log: every event below
    /// it had its follow-ups acknowledged, by this store's owner or by an earlier owner
    /// before it committed past them. `None` when no owner ever applied the partition
    /// here (a store written by a read-only tail, or before transfers existed).
    pub fn emitted_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.partition_i64(topic, partition, records::EMITTED_KEY)
    }

    /// The money a partition's events moved (zero before any).
    pub fn totals(&self, topic: &str, partition: i32) -> Result<Totals, StoreError> {
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(records::TOTALS_KEY)?
            .map_or(Ok(Totals::default()), |v| records::decode_totals(&name, &v))
    }

    /// Every stored partition offset of a topic.
    pub fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for p in self.partitions_held(topic) {
            if let Some(next) = self.stored_offset(topic, p)? {
                out.insert(p, next);
            }
        }
        Ok(out)
    }

    /// An account's state, from its partition (murmur2 of its id over the recorded
    /// partition count); `None` before any count is recorded.
    pub fn account(&self, topic: &str, id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        let Some(count) = self.partition_count(topic)? else {
            return Ok(None);
        };
        self.account_in(topic, partition_of(id, count), id)
    }

    /// An account's state in a given partition.
    pub fn account_in(
        &self,
        topic: &str,
        partition: i32,
        id: &AccountId,
    ) -> Result<Option<AccountState>, StoreError> {
        let key = records::account_key(id);
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(&key)?
            .map(|v| records::decode_account(&name, &key, &v))
            .transpose()
    }

    /// A command's recorded outcome on one account.
    pub fn command(
        &self,
        topic: &str,
        account: &AccountId,
        id: &CommandId,
    ) -> Result<Option<StoredCommand>, StoreError> {
        let Some(count) = self.partition_count(topic)? else {
            return Ok(None);
        };
        let partition = partition_of(account, count);
        let key = records::command_key(account, id);
        let prefix_len = records::command_prefix(id).len();
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(&key)?
            .map(|v| records::decode_command(&name, partition, prefix_len, &key, &v))
            .transpose()
    }

    /// Every recorded outcome of a command id, one per account that used it, in
    /// partition and account order. A command id is an idempotency key per account, so
    /// more than one is possible; a caller must not pick one for the user.
    pub fn commands(&self, topic: &str, id: &CommandId) -> Result<Vec<StoredCommand>, StoreError> {
        self.commands_in(topic, &self.partitions_held(topic), id)
    }

    /// As [`Store::commands`], in these partitions only (the ones an instance of a group
    /// serves; its trees of other partitions may be stale).
    pub fn commands_in(
        &self,
        topic: &str,
        partitions: &[i32],
        id: &CommandId,
    ) -> Result<Vec<StoredCommand>, StoreError> {
        let prefix = records::command_prefix(id);
        let mut out = Vec::new();
        for &p in partitions {
            let name = records::partition_tree_name(topic, p);
            for kv in self.tree(topic, p)?.scan_prefix(&prefix) {
                let (k, v) = kv?;
                out.push(records::decode_command(&name, p, prefix.len(), &k, &v)?);
            }
        }
        Ok(out)
    }

    /// Every account of the topic, partition by partition, each in id order (for
    /// verification and tests).
    pub fn accounts(&self, topic: &str) -> Result<Vec<(AccountId, AccountState)>, StoreError> {
        let mut out = Vec::new();
        for p in self.partitions_held(topic) {
            let name = records::partition_tree_name(topic, p);
            for kv in self.tree(topic, p)?.scan_prefix([records::ACCOUNT_PREFIX]) {
                let (k, v) = kv?;
                let id = records::account_in_key(&name, &k, 1)?;
                out.push((id, records::decode_account(&name, &k, &v)?));
            }
        }
        Ok(out)
    }

    /// Applies a batch and makes it durable: [`Store::prepare`] then [`Store::commit`].
    /// For a batch that causes no follow-ups (nothing in it may emit), or for tests.
    pub fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<BatchStats, StoreError> {
        let prepared = self.prepare(topic, batch)?;
        self.commit(prepared)
    }

    /// Decides a batch without writing anything: each partition's events, partitions in
    /// parallel, into one atomic write per partition that also moves its next offset.
    /// Events below a partition's stored offset are skipped; an event whose command id
    /// is known on its account (a follow-up: whose event id is known) changes nothing.
    /// Offsets never move backwards.
    ///
    /// The follow-ups of the events at or above a partition's `batch.emit_from` are
    /// gathered: those the batch decides, and those of skipped events as they were
    /// decided then ([`recorded_follow_ups`]), which an owner emits again when it cannot
    /// know they reached the log.
    ///
    /// If a partition fails, the error is returned once every partition has finished.
    pub fn prepare(&self, topic: &str, batch: &Batch) -> Result<Prepared, StoreError> {
        let started = Instant::now();
        let mut by_partition: BTreeMap<i32, (Vec<&Record>, Vec<&Unreadable>)> = BTreeMap::new();
        for r in &batch.records {
            by_partition.entry(r.partition).or_default().0.push(r);
        }
        for u in &batch.unreadable {
            by_partition.entry(u.partition).or_default().1.push(u);
        }
        for p in batch.next_offsets.keys() {
            by_partition.entry(*p).or_default();
        }
        let mut jobs = Vec::with_capacity(by_partition.len());
        for (partition, (records, unreadable)) in by_partition {
            jobs.push(PartitionJob {
                name: records::partition_tree_name(topic, partition),
                trees: self.trees_of(topic, partition)?,
                partition,
                records,
                unreadable,
                next: batch.next_offsets.get(&partition).copied(),
                emit_from: batch.emit_from.get(&partition).copied(),
                codec: self.codec.as_deref(),
                window: self.window,
            });
        }
        // The biggest partitions first, so that no thread is left with a long one at
        // the end.
        jobs.sort_by_key(|j| std::cmp::Reverse(j.records.len()));
        let workers = self.workers.min(jobs.len()).max(1);
        let mut stats = BatchStats {
            partitions: jobs.len(),
            workers,
            ..BatchStats::default()
        };
        let results: Vec<Result<Decided, StoreError>> = match &self.pool {
            Some(pool) if jobs.len() > 1 => {
                pool.install(|| jobs.into_par_iter().map(PartitionJob::decide).collect())
            }
            _ => jobs.into_iter().map(PartitionJob::decide).collect(),
        };
        let mut writes = Vec::with_capacity(results.len());
        let mut follow_ups = Vec::new();
        let mut dead_letters = Vec::new();
        for result in results {
            let decided: Decided = result?;
            stats.merge(decided.stats);
            follow_ups.extend(decided.follow_ups);
            dead_letters.extend(decided.dead_letters);
            writes.push(decided.share);
        }
        stats.follow_ups = follow_ups.len() as u64;
        Ok(Prepared {
            topic: topic.to_string(),
            writes,
            follow_ups,
            dead_letters,
            stats,
            started,
        })
    }

    /// Writes a prepared batch, each partition atomically (its intent, one flush, its
    /// writes: see `intent`), partitions in parallel. The caller has written its
    /// follow-ups to the log first.
    ///
    /// A batch decided over a partition's tree that a rebuild has since swapped out is
    /// refused ([`StoreError::Swapped`]): its reader reads again from the new tree's
    /// offset.
    pub fn commit(&self, prepared: Prepared) -> Result<BatchStats, StoreError> {
        let Prepared {
            topic,
            writes,
            mut stats,
            started,
            ..
        } = prepared;
        let _writing = self
            .writer
            .lock()
            .expect("the writer lock is never held across a panic");
        if self.view.is_none() {
            for share in &writes {
                if !self.is_live(&topic, &share.trees.records)? {
                    return Err(StoreError::Swapped(
                        String::from_utf8_lossy(&share.trees.records.name()).into_owned(),
                    ));
                }
            }
        }
        let mut writes = writes;
        for share in &mut writes {
            share.seq = share.trees.seq.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let shares = SledShares {
            db: &self.db,
            pool: self.pool.as_deref(),
            writes,
            flush_time: Mutex::default(),
        };
        let committed = intent::commit(&shares);
        stats.flush_time = *shares
            .flush_time
            .lock()
            .expect("the flush timer is never held across a panic");
        stats.apply_time = started.elapsed().saturating_sub(stats.flush_time);
        match committed {
            Ok(()) => Ok(stats),
            Err(e) => {
                // Part of the batch may be in the trees: the next use of each opens it
                // afresh and redoes its intents.
                let mut trees = self
                    .trees
                    .write()
                    .expect("the tree cache lock is never held across a panic");
                for share in &shares.writes {
                    trees.remove(&(topic.clone(), share.partition));
                }
                Err(e)
            }
        }
    }

    /// Whether an account is parked, and how: from its partition, as
    /// [`Store::account`] finds it.
    pub fn parked(&self, topic: &str, id: &AccountId) -> Result<Option<ParkMark>, StoreError> {
        let Some(count) = self.partition_count(topic)? else {
            return Ok(None);
        };
        let partition = partition_of(id, count);
        let key = records::park_mark_key(id);
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(&key)?
            .map(|v| records::decode_park_mark(&name, &key, &v))
            .transpose()
    }

    /// Every parked account of these partitions, in partition then account order.
    pub fn parked_in(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(i32, AccountId, ParkMark)>, StoreError> {
        let mut out = Vec::new();
        for &p in partitions {
            let name = records::partition_tree_name(topic, p);
            for kv in self
                .tree(topic, p)?
                .scan_prefix([records::PARK_MARK_PREFIX])
            {
                let (k, v) = kv?;
                let id = records::account_in_key(&name, &k, 1)?;
                out.push((p, id, records::decode_park_mark(&name, &k, &v)?));
            }
        }
        Ok(out)
    }

    /// The partition's state digest: the sum of its records' hashes (see `partition`);
    /// two stores with the same records hold the same digest.
    pub fn digest(&self, topic: &str, partition: i32) -> Result<u128, StoreError> {
        let name = records::partition_tree_name(topic, partition);
        self.tree(topic, partition)?
            .get(records::DIGEST_KEY)?
            .map_or(Ok(0), |v| {
                records::decode_u128(&name, records::DIGEST_KEY, &v)
            })
    }

    /// The digest computed from scratch over every state record of the partition: what
    /// [`Store::digest`] keeps without a scan (for tests, and for doubt).
    pub fn digest_by_scan(&self, topic: &str, partition: i32) -> Result<u128, StoreError> {
        let mut digest = 0u128;
        for kv in self.tree(topic, partition)?.iter() {
            let (k, v) = kv?;
            if records::is_state_key(&k) {
                digest = digest.wrapping_add(partition::record_hash(&k, Some(&v)));
            }
        }
        Ok(digest)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// A prepared batch's partitions as `intent` writes them: on the store's threads, one
/// flush of the database for all of them.
struct SledShares<'a> {
    db: &'a sled::Db,
    pool: Option<&'a rayon::ThreadPool>,
    writes: Vec<Share>,
    flush_time: Mutex<Duration>,
}

/// A partition's trees: its records, and the intents of its last two batches, apart, so
/// that writing an intent copies no node of the records; and the last intent's sequence
/// number.
#[derive(Clone)]
pub(crate) struct Trees {
    pub(crate) records: sled::Tree,
    pub(crate) intent: sled::Tree,
    pub(crate) seq: Arc<AtomicU64>,
}

/// One partition's decided writes.
pub(crate) struct Share {
    pub(crate) partition: i32,
    pub(crate) trees: Trees,
    pub(crate) writes: intent::Writes,
    /// This intent's sequence number, set when it is committed.
    pub(crate) seq: u64,
}

impl intent::Shares for SledShares<'_> {
    type Tree = sled::Tree;

    fn each(&self, step: &intent::Step<'_, sled::Tree>) -> Result<(), StoreError> {
        let one = |s: &Share| {
            step(intent::Share {
                records: &s.trees.records,
                intent: &s.trees.intent,
                writes: &s.writes,
                seq: s.seq,
            })
        };
        let results: Vec<Result<(), StoreError>> = match self.pool {
            Some(pool) if self.writes.len() > 1 => {
                pool.install(|| self.writes.par_iter().map(one).collect())
            }
            _ => self.writes.iter().map(one).collect(),
        };
        results.into_iter().collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let flushed = self.db.flush();
        *self
            .flush_time
            .lock()
            .expect("the flush timer is never held across a panic") += started.elapsed();
        flushed?;
        Ok(())
    }
}
