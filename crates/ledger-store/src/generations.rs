//! A verified rebuild's second store, in the same database as the live one.
//!
//! A rebuild writes each partition's state into trees of a new generation, which the
//! live store does not read, through a [`Rebuilding`] that applies batches exactly as
//! the live store does. [`Store::swap_in`] then compares, under the writer lock (so that
//! no batch lands meanwhile), each partition's offset and state digest in both; only if
//! every partition agrees does it make the new trees the live ones, by writing their
//! generations into the meta tree in one atomic batch. A crash before that write leaves
//! the old trees live; after it, the new ones. Trees of any other generation are
//! dropped, at the swap and at open.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{records, Store, StoreError};

/// Why a rebuild's trees were not swapped in.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A read or write failed.
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    /// A partition is not at the offset the two were to be compared at: one of them
    /// moved (the live store applied a batch, or the partition was revoked).
    #[error("partition {partition} moved before the swap: the live store is at {live:?}, the rebuilt one at {rebuilt:?}, expected {expected:?}")]
    Moved {
        /// The partition.
        partition: i32,
        /// The live store's next offset.
        live: Option<i64>,
        /// The rebuilt store's next offset.
        rebuilt: Option<i64>,
        /// Where both were to be.
        expected: Option<i64>,
    },
    /// The first partition whose state digests differ at the same offset.
    #[error("partition {partition} differs at offset {offset:?}: the live digest is {live:032x}, the rebuilt one {rebuilt:032x}")]
    Mismatch {
        /// The partition.
        partition: i32,
        /// Where they were compared.
        offset: Option<i64>,
        /// The live store's digest.
        live: u128,
        /// The rebuilt store's digest.
        rebuilt: u128,
    },
}

/// Trees a swap took out of service, to drop once nobody reads them.
#[derive(Debug)]
#[must_use = "retired trees take disk space until dropped (or until the next open)"]
pub struct Retired(Vec<sled::IVec>);

/// A store over the next generation of some partitions' trees, beside the live one.
pub struct Rebuilding {
    store: Store,
    topic: String,
    partitions: Vec<i32>,
    generation: u32,
}

impl Rebuilding {
    /// The store to apply the rebuild's batches to: it reads and writes only the new
    /// generation's trees.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The partitions it rebuilds.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }
}

impl Store {
    /// The generation of a partition's live tree (0 until a rebuild swaps one in).
    pub(crate) fn generation(&self, topic: &str, partition: i32) -> Result<u32, StoreError> {
        let key = records::generation_key(topic, partition);
        Ok(match self.meta.get(&key)? {
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::BadRecord {
                    tree: records::META_TREE.into(),
                    key: String::from_utf8_lossy(&key).into_owned(),
                    detail: format!("a generation is 4 bytes, found {}", v.len()),
                })?,
            None => 0,
        })
    }

    /// Whether `tree` is its partition's live tree (the one the store reads and writes).
    pub(crate) fn is_live(&self, topic: &str, tree: &sled::Tree) -> Result<bool, StoreError> {
        let Some((partition, _)) = records::tree_generation(topic, &tree.name()) else {
            return Ok(false);
        };
        Ok(self.tree(topic, partition)?.name() == tree.name())
    }

    /// Drops every partition tree that is not its partition's live one: what a rebuild
    /// that did not finish, or a swap, left behind.
    pub(crate) fn drop_stale_generations(&self) -> Result<(), StoreError> {
        for name in self.db.tree_names() {
            let Some(rest) = name.strip_prefix(b"p/") else {
                continue;
            };
            let Some(slash) = rest.iter().rposition(|&b| b == b'/') else {
                continue;
            };
            let topic = String::from_utf8_lossy(&rest[..slash]).into_owned();
            let Some((partition, generation)) = records::tree_generation(&topic, &name) else {
                continue;
            };
            if generation != self.generation(&topic, partition)? {
                self.drop_partition_tree(&name)?;
            }
        }
        Ok(())
    }

    /// A view over fresh trees of the next generation for these partitions, empty,
    /// for a rebuild to apply the log into from offset 0.
    pub fn rebuild_view(&self, topic: &str, partitions: &[i32]) -> Result<Rebuilding, StoreError> {
        let mut generation = 0;
        for &p in partitions {
            generation = generation.max(self.generation(topic, p)?);
        }
        let generation = generation + 1;
        // Whatever a rebuild that died left under these names (trees that a swap retired
        // are older generations, and may still be read: they are left alone).
        for &p in partitions {
            self.drop_partition_tree(
                records::generation_tree_name(topic, p, generation).as_bytes(),
            )?;
        }
        let store = Store {
            db: self.db.clone(),
            meta: self.meta.clone(),
            trees: Arc::default(),
            path: self.path.clone(),
            workers: self.workers,
            pool: self.pool.clone(),
            codec: self.codec.clone(),
            writer: self.writer.clone(),
            view: Some(generation),
            window: self.window,
        };
        Ok(Rebuilding {
            store,
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            generation,
        })
    }

    /// Makes the view's trees the live ones, if every partition is at `at` in both
    /// stores and their digests agree there; otherwise changes nothing and says why
    /// (the first partition that differs, in partition order).
    ///
    /// The trees swapped out are returned, not dropped: a query may still be reading
    /// one. Drop them with [`Store::drop_retired`] once no reader can be (and any left
    /// are dropped at the next open).
    pub fn swap_in(
        &self,
        view: &Rebuilding,
        at: &BTreeMap<i32, Option<i64>>,
    ) -> Result<Retired, SwapError> {
        let topic = view.topic.as_str();
        let _writing = self
            .writer
            .lock()
            .expect("the writer lock is never held across a panic");
        for &p in &view.partitions {
            let expected = at.get(&p).copied().flatten();
            let live = self.stored_offset(topic, p)?;
            let rebuilt = view.store.stored_offset(topic, p)?;
            if live != expected || rebuilt != expected {
                return Err(SwapError::Moved {
                    partition: p,
                    live,
                    rebuilt,
                    expected,
                });
            }
            let (l, r) = (self.digest(topic, p)?, view.store.digest(topic, p)?);
            if l != r {
                return Err(SwapError::Mismatch {
                    partition: p,
                    offset: expected,
                    live: l,
                    rebuilt: r,
                });
            }
        }
        let mut old = Vec::new();
        let mut generations = sled::Batch::default();
        for &p in &view.partitions {
            // The rebuild wrote nothing to the log; the live store's mark of how far the
            // follow-ups are in it holds for the same events.
            let new_tree = view.store.tree(topic, p)?;
            match self.tree(topic, p)?.get(records::EMITTED_KEY)? {
                Some(e) => new_tree.insert(records::EMITTED_KEY, e)?,
                None => new_tree.remove(records::EMITTED_KEY)?,
            };
            old.push(self.tree(topic, p)?.name());
            generations.insert(
                records::generation_key(topic, p),
                &view.generation.to_be_bytes(),
            );
        }
        self.db.flush()?;
        self.meta.apply_batch(generations)?;
        self.db.flush()?;
        {
            let mut trees = self
                .trees
                .write()
                .expect("the tree cache lock is never held across a panic");
            for &p in &view.partitions {
                trees.insert((topic.to_string(), p), view.store.trees_of(topic, p)?);
            }
        }
        Ok(Retired(old))
    }

    /// Drops trees a swap retired.
    pub fn drop_retired(&self, retired: Retired) -> Result<(), StoreError> {
        for name in retired.0 {
            self.drop_partition_tree(&name)?;
        }
        Ok(())
    }

    /// Drops a view's trees, after a rebuild that did not swap.
    pub fn discard(&self, view: Rebuilding) -> Result<(), StoreError> {
        for &p in &view.partitions {
            self.drop_partition_tree(
                records::generation_tree_name(&view.topic, p, view.generation).as_bytes(),
            )?;
        }
        Ok(())
    }
}
