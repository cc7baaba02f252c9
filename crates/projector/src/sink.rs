//! The projector's [`BatchSink`]: applies batches to the sled store, counts what they
//! did, publishes the new applied offsets to waiting queries, and tells the group's
//! role table of assignments, revocations and progress. The group's loop and the
//! read-only tail of drained partitions both apply through it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger_domain::Batch;
use ledger_eventlog::consume::BatchSink;
use ledger_store::{Store, StoreError};
use tokio::sync::watch;
use tracing::{debug, info};

use crate::group::Group;
use crate::metrics::ProjectorMetrics;

/// Next offset applied per partition, durably. Queries with a token wait on it.
pub(crate) type Applied = Arc<BTreeMap<i32, i64>>;

pub(crate) struct ProjectorSink {
    pub store: Store,
    pub metrics: ProjectorMetrics,
    pub applied: watch::Sender<Applied>,
    /// The roles per partition, which assignments, revocations and applies change; the
    /// assigned-partitions gauge is derived from them.
    pub group: Arc<Group>,
}

impl BatchSink for ProjectorSink {
    type Error = StoreError;

    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        // A partition past the recorded count means partitions were added since the
        // store was built: refuse it, which stops the consumer with that error.
        if let Some(count) = self.store.partition_count(topic)? {
            if partition >= count {
                return Err(StoreError::PartitionCountChanged {
                    topic: topic.to_string(),
                    stored: count,
                    now: partition + 1,
                });
            }
        }
        self.store.stored_offset(topic, partition)
    }

    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), StoreError> {
        let stats = self.store.apply_batch(topic, batch)?;
        let m = &self.metrics;
        m.applied.inc_by(stats.applied);
        m.duplicates.inc_by(stats.duplicates);
        m.consumer.redelivered.inc_by(stats.redelivered);
        for (reason, n) in &stats.rejected {
            m.rejected
                .get_or_create(&vec![("reason", reason.to_string())])
                .inc_by(*n);
        }
        m.batch_size.observe(batch.records.len() as f64);
        m.apply_flush_latency
            .observe((stats.apply_time + stats.flush_time).as_secs_f64());
        for (&p, &next) in &batch.next_offsets {
            m.applied_offset
                .get_or_create(&vec![("partition", p.to_string())])
                .set(next);
        }
        debug!(
            events = batch.records.len(),
            applied = stats.applied,
            duplicates = stats.duplicates,
            redelivered = stats.redelivered,
            partitions = stats.partitions,
            workers = stats.workers,
            apply_us = stats.apply_time.as_micros() as u64,
            flush_us = stats.flush_time.as_micros() as u64,
            "applied batch"
        );
        self.applied.send_modify(|applied| {
            let map = Arc::make_mut(applied);
            for (&p, &next) in &batch.next_offsets {
                let e = map.entry(p).or_insert(next);
                *e = (*e).max(next);
            }
        });
        self.group.after_apply();
        Ok(())
    }

    fn before_assign(&self, partitions: &[i32]) {
        self.group.claim(partitions);
    }

    fn on_assigned(&self, partitions: &[i32]) {
        info!(?partitions, "assigned");
    }

    fn on_revoked(&self, partitions: &[i32]) {
        info!(?partitions, "revoked");
        self.group.release(partitions);
    }
}
