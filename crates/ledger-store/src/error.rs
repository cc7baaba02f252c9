//! How the store fails: [`StoreError`], and what an unusable data directory is told
//! apart by (locked by another process, corrupt, or unusable).

use std::path::{Path, PathBuf};

use crate::records::LAYOUT;

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
        tree: String,
        /// Its key, lossily as text.
        key: String,
        /// The decoder's error.
        detail: String,
    },
    /// The directory holds a store of another layout. Reading it as this one would
    /// misread it, so it is refused; the log is the system of record, so the projection
    /// is rebuilt from it instead of migrated.
    #[error("the data directory {path} holds a store of {found}; this projector reads layout {LAYOUT} (state per partition) and does not migrate. Rebuild the projection: stop the projector, delete the directory (or point --data-dir at an empty one), start it: it replays the log from the start")]
    Layout {
        /// The directory.
        path: PathBuf,
        /// What was found there.
        found: String,
    },
    /// A rebuild swapped the partition's tree out after this batch was decided over it.
    #[error("the tree {0} was swapped out by a rebuild while a batch was being applied to it; the batch was not stored")]
    Swapped(String),
    /// An account must park, but the store was opened without an [`EventCodec`].
    #[error("an event must wait behind an unreadable one, but this store has no codec to keep it with (a bug: open it with Store::with_codec)")]
    NoCodec,
    /// The topic's partition count is not the one this store was built with.
    #[error("topic {topic} now has {now} partitions, but this store was built when it had {stored}. Adding partitions moves keys between partitions, so accounts' events would be split across two partitions and their state with them; the projector stops rather than serve a split ledger. The way out: create a new topic with the partition count you need, copy the log into it in order with murmur2 keys (a migration), and point the services and a fresh projector store at it")]
    PartitionCountChanged {
        /// The topic.
        topic: String,
        /// The count the store was built with.
        stored: i32,
        /// The count the topic has now.
        now: i32,
    },
    /// The store was built with another idempotency window than the one configured.
    #[error(
        "the store at {path} was built with an idempotency window of {stored}, and this projector was started with {now}. \
         A store keeps the outcomes of one window (a longer one cannot bring back what was pruned; a shorter one leaves \
         outcomes nothing will prune), so its window is fixed for its life: start with --idempotency-window {stored}, \
         or move the data directory aside and start with the new window, which replays the log into a fresh store"
    )]
    WindowChanged {
        /// The data directory.
        path: PathBuf,
        /// The window it was built with.
        stored: String,
        /// The window configured now.
        now: String,
    },
}

pub(crate) fn classify_open_error(path: &Path, e: sled::Error) -> StoreError {
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
