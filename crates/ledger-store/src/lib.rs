//! The projector's state store, in sled.
//!
//! Three trees: `accounts` (account id → state), `commands` (command id → first outcome
//! and where its event was) and `offsets` (topic and partition → next offset to read).
//! A batch of events is applied in one multi-tree transaction that writes the
//! account states, the command outcomes and the partition offsets together, and the
//! store is flushed before [`Store::apply_batch`] returns: after any crash, the state on
//! disk is exactly the effect of the events below the stored offsets.

mod records;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ledger_domain::model::{apply_event, LedgerState};
use ledger_domain::{
    AccountId, AccountState, ApplyResult, Batch, CommandId, CommandStatus, Event, Rejection,
};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

pub use records::StoredCommand;

/// The store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (likely another projector) has the data directory open.
    #[error(
        "the data directory {0} is in use by another process (is another projector running on it?)"
    )]
    Locked(PathBuf),
    /// The data on disk is damaged.
    #[error("the data directory {path} is corrupt: {detail}. Rebuild the projection: stop the projector, delete the directory, start it again")]
    Corrupt {
        /// The directory.
        path: PathBuf,
        /// What sled said.
        detail: String,
    },
    /// The directory cannot be created, read or written.
    #[error("the data directory {path} is unusable: {source}")]
    Unusable {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: sled::Error,
    },
    /// A read or write failed (a full disk, lost permissions, …).
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("stored record under {tree}/{key} does not decode: {detail}")]
    BadRecord {
        /// The tree.
        tree: &'static str,
        /// Its key, lossily as text.
        key: String,
        /// The decoder's error.
        detail: String,
    },
}

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events that took effect.
    pub applied: u64,
    /// Events refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Events whose command id was seen before.
    pub duplicates: u64,
    /// Events below the stored offset, skipped.
    pub redelivered: u64,
    /// Time in the transaction.
    pub apply_time: Duration,
    /// Time in the flush.
    pub flush_time: Duration,
}

/// The sled store. Cheap to clone: every clone is the same database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    accounts: sled::Tree,
    commands: sled::Tree,
    offsets: sled::Tree,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store with a cache of `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // Durability comes from the explicit flush after each batch; the background
            // flusher only adds writes.
            .flush_every_ms(None)
            .open()
            .map_err(|e| classify_open_error(path, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| classify_open_error(path, e));
        Ok(Self {
            accounts: tree("accounts")?,
            commands: tree("commands")?,
            offsets: tree("offsets")?,
            db,
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next offset to read for a partition, if any batch of it was applied.
    pub fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.offsets
            .get(records::offset_key(topic, partition))?
            .map(|v| records::decode_offset(&v))
            .transpose()
    }

    /// Every stored partition offset of a topic.
    pub fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for kv in self.offsets.scan_prefix(records::offset_prefix(topic)) {
            let (k, v) = kv?;
            if let Some(p) = records::partition_of_key(topic, &k) {
                out.insert(p, records::decode_offset(&v)?);
            }
        }
        Ok(out)
    }

    /// An account's state.
    pub fn account(&self, id: &AccountId) -> Result<Option<AccountState>, StoreError> {
        self.accounts
            .get(id.as_str())?
            .map(|v| records::decode_account(id.as_str(), &v))
            .transpose()
    }

    /// A command's recorded outcome.
    pub fn command(&self, id: &CommandId) -> Result<Option<StoredCommand>, StoreError> {
        self.commands
            .get(id.as_str())?
            .map(|v| records::decode_command(id.as_str(), &v))
            .transpose()
    }

    /// Every account, in id order (for verification and tests).
    pub fn accounts(
        &self,
    ) -> impl Iterator<Item = Result<(AccountId, AccountState), StoreError>> + '_ {
        self.accounts.iter().map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let id = AccountId::parse(&key).map_err(|e| StoreError::BadRecord {
                tree: "accounts",
                key: key.clone(),
                detail: e.to_string(),
            })?;
            Ok((id, records::decode_account(&key, &v)?))
        })
    }

    /// Applies a batch in one transaction with its offsets, then flushes. Events below a
    /// partition's stored offset are skipped; an event whose command id is known changes
    /// nothing.
    pub fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<BatchStats, StoreError> {
        let started = Instant::now();
        let result =
            (&self.accounts, &self.commands, &self.offsets).transaction(|(acc, cmd, off)| {
                let mut tx = TxState {
                    accounts: acc,
                    commands: cmd,
                    cache: HashMap::new(),
                    seen: HashSet::new(),
                    position: (0, 0),
                };
                let mut stats = BatchStats::default();
                let mut stored: HashMap<i32, i64> = HashMap::new();
                for p in batch.next_offsets.keys() {
                    if let Some(v) = off.get(records::offset_key(topic, *p))? {
                        stored.insert(
                            *p,
                            records::decode_offset(&v)
                                .map_err(ConflictableTransactionError::Abort)?,
                        );
                    }
                }
                for r in &batch.records {
                    if stored
                        .get(&r.partition)
                        .is_some_and(|&next| r.offset < next)
                    {
                        stats.redelivered += 1;
                        continue;
                    }
                    tx.position = (r.partition, r.offset);
                    match apply_event(&mut tx, &r.event)? {
                        ApplyResult::Applied => stats.applied += 1,
                        ApplyResult::Rejected(why) => {
                            *stats.rejected.entry(why.code()).or_default() += 1
                        }
                        ApplyResult::Duplicate => stats.duplicates += 1,
                    }
                }
                for (id, state) in &tx.cache {
                    acc.insert(id.as_str(), records::encode_account(state))?;
                }
                for (&p, &next) in &batch.next_offsets {
                    // Never move an offset backwards, whatever the batch says.
                    if stored.get(&p).is_none_or(|&s| next > s) {
                        off.insert(records::offset_key(topic, p), &next.to_be_bytes())?;
                    }
                }
                Ok(stats)
            });
        let mut stats = match result {
            Ok(s) => s,
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(StoreError::Io(e)),
        };
        stats.apply_time = started.elapsed();
        let flush_started = Instant::now();
        self.db.flush()?;
        stats.flush_time = flush_started.elapsed();
        Ok(stats)
    }

    /// Bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// [`LedgerState`] over a transaction, with the batch's account states kept in memory
/// and written once at the end.
struct TxState<'a> {
    accounts: &'a TransactionalTree,
    commands: &'a TransactionalTree,
    cache: HashMap<AccountId, AccountState>,
    seen: HashSet<CommandId>,
    position: (i32, i64),
}

type TxError = ConflictableTransactionError<StoreError>;

impl LedgerState for TxState<'_> {
    type Error = TxError;

    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, TxError> {
        if let Some(s) = self.cache.get(id) {
            return Ok(Some(*s));
        }
        match self.accounts.get(id.as_str())? {
            Some(v) => Ok(Some(
                records::decode_account(id.as_str(), &v)
                    .map_err(ConflictableTransactionError::Abort)?,
            )),
            None => Ok(None),
        }
    }

    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), TxError> {
        self.cache.insert(id.clone(), state);
        Ok(())
    }

    fn command_seen(&mut self, id: &CommandId) -> Result<bool, TxError> {
        Ok(self.seen.contains(id) || self.commands.get(id.as_str())?.is_some())
    }

    fn record_command(&mut self, event: &Event, status: CommandStatus) -> Result<(), TxError> {
        let rec = StoredCommand {
            status,
            account_id: event.account_id.clone(),
            partition: self.position.0,
            offset: self.position.1,
            event_time_ms: event.time_ms,
        };
        self.commands
            .insert(event.command_id.as_str(), records::encode_command(&rec))?;
        self.seen.insert(event.command_id.clone());
        Ok(())
    }
}

fn classify_open_error(path: &Path, e: sled::Error) -> StoreError {
    match &e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked(path.to_path_buf())
        }
        sled::Error::Corruption { .. } => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => StoreError::Unusable {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// The rejection reasons, for labelling metrics up front.
pub const REJECTIONS: [Rejection; 4] = [
    Rejection::AccountAlreadyOpen,
    Rejection::AccountNotOpen,
    Rejection::InsufficientFunds,
    Rejection::BalanceOverflow,
];
