//! The projector's [`BatchSink`]: applies batches to the sled store, writes the
//! follow-up events they cause to the log first, counts what they did, publishes the new
//! applied offsets to waiting queries, and tells the group's role table of assignments,
//! revocations and progress. The group's loop and the read-only tail of drained
//! partitions both apply through it; only the loop's batches (as the partition's owner)
//! ever cause follow-ups.
//!
//! A transfer's credit, refund and completion are written to the log, never beside it:
//! a batch is decided, its follow-ups are written and acknowledged (acks=all,
//! idempotent), and only then is the batch stored, and its offsets committed after that.
//! A crash in between replays the batch, which writes the same follow-ups again under
//! the same ids; their destinations apply each once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_domain::{Batch, Event};
use ledger_eventlog::consume::BatchSink;
use ledger_eventlog::producer::{DeadLetter, EventProducer};
use ledger_store::{Skipped, Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::group::Applied;
use crate::group::Group;
use crate::metrics::ProjectorMetrics;

pub(crate) struct ProjectorSink {
    pub store: Store,
    pub metrics: ProjectorMetrics,
    pub applied: watch::Sender<Applied>,
    /// The roles per partition, which assignments, revocations and applies change; the
    /// assigned-partitions gauge is derived from them.
    pub group: Arc<Group>,
    pub follow_ups: FollowUpWriter,
}

/// Why a batch could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log did not acknowledge a batch's follow-ups (or skipped events) before
    /// shutdown; the batch was not stored, and is applied (and they are written) again
    /// at the next start.
    #[error("stopping before the log acknowledged {count} follow-up or dead-letter events: {error}; the batch that caused them is not stored, and is applied again on restart")]
    FollowUps {
        /// How many were not acknowledged.
        count: usize,
        /// The last delivery error.
        error: String,
    },
}

/// Writes follow-up events to the log and waits for every acknowledgement, retrying
/// what failed until it is acknowledged or the projector stops.
pub(crate) struct FollowUpWriter {
    pub producer: EventProducer,
    pub topic: String,
    pub runtime: tokio::runtime::Handle,
    /// Cancelled when the projector is leaving (it stops consuming): give up after one
    /// more attempt.
    pub leaving: CancellationToken,
    /// The test hook `--test-crash-after-follow-ups`.
    pub crash_after: Option<u64>,
    /// Batches whose follow-ups were acknowledged, for the test hook.
    pub batches: AtomicU64,
    /// Writes the waiting events an operator skipped.
    pub dead_letters: EventProducer,
    pub dlq_topic: String,
}

impl FollowUpWriter {
    /// Runs `attempt` until it leaves nothing unacknowledged, backing off between tries;
    /// once the projector is stopping, gives up after one more failure. `attempt` answers
    /// how many are still unacknowledged and the last error.
    fn until_acknowledged(
        &self,
        mut attempt: impl FnMut() -> Option<(usize, String)>,
    ) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let mut stopping_attempts = 0;
        loop {
            let Some((count, error)) = attempt() else {
                return Ok(());
            };
            if self.leaving.is_cancelled() {
                stopping_attempts += 1;
                if stopping_attempts > 1 {
                    return Err(SinkError::FollowUps { count, error });
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Writes `events` and returns once the log has acknowledged all of them. Blocks the
    /// apply (nothing is stored meanwhile): a broker outage stalls applying, never
    /// loses a follow-up. The producer itself is replaced by its supervisor when it stops
    /// delivering.
    fn write(&self, events: &[Event], metrics: &ProjectorMetrics) -> Result<(), SinkError> {
        let mut waiting: Vec<Event> = events.to_vec();
        self.until_acknowledged(|| {
            let attempted = waiting.len();
            let outcomes = self
                .runtime
                .block_on(self.producer.send_many(&self.topic, &waiting));
            let mut last_error = None;
            waiting = std::mem::take(&mut waiting)
                .into_iter()
                .zip(outcomes)
                .filter_map(|(event, outcome)| match outcome {
                    Ok(_) => None,
                    Err(e) => {
                        last_error = Some(e.to_string());
                        Some(event)
                    }
                })
                .collect();
            metrics.follow_ups.inc_by((attempted - waiting.len()) as u64);
            let error = last_error?;
            metrics.follow_up_failures.inc_by(waiting.len() as u64);
            warn!(unacknowledged = waiting.len(), %error, "the log did not acknowledge follow-up events; retrying before the batch is stored");
            Some((waiting.len(), error))
        })
    }

    /// Writes the skipped events to the dead-letter topic, as the consumer writes an
    /// undecodable one, and returns once all are acknowledged; retried like follow-ups.
    fn write_dead_letters(&self, skipped: &[Skipped]) -> Result<(), SinkError> {
        for s in skipped {
            let error = format!("skipped by an operator while parked: {}", s.reason);
            let dead = DeadLetter {
                dlq_topic: &self.dlq_topic,
                source_topic: &self.topic,
                source_partition: s.partition,
                source_offset: s.offset,
                key: Some(s.account_id.as_str().as_bytes()),
                payload: Some(&s.payload),
                error: &error,
                error_kind: "parked_skipped",
            };
            self.until_acknowledged(|| {
                match self.runtime.block_on(self.dead_letters.send_dead_letter(&dead)) {
                    Ok(_) => None,
                    Err(e) => {
                        warn!(partition = s.partition, offset = s.offset, error = %e, "the dead-letter topic did not acknowledge a skipped event; retrying before the batch is stored");
                        Some((1, e.to_string()))
                    }
                }
            })?;
            warn!(partition = s.partition, offset = s.offset, account = %s.account_id, reason = %s.reason, dlq = %self.dlq_topic, "parked event skipped by an operator, sent to the dead-letter topic");
        }
        Ok(())
    }

    /// The test hook: dies between the follow-ups' acknowledgement and the store.
    fn maybe_crash(&self) {
        let n = self.batches.fetch_add(1, Ordering::Relaxed) + 1;
        if self.crash_after.is_some_and(|limit| n >= limit) {
            error!(batches = n, "test hook --test-crash-after-follow-ups: aborting after the follow-ups were acknowledged and before the batch is stored");
            std::process::abort();
        }
    }
}

impl BatchSink for ProjectorSink {
    type Error = SinkError;

    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, SinkError> {
        // A partition past the recorded count means partitions were added since the
        // store was built: refuse it, which stops the consumer with that error.
        if let Some(count) = self.store.partition_count(topic)? {
            if partition >= count {
                return Err(StoreError::PartitionCountChanged {
                    topic: topic.to_string(),
                    stored: count,
                    now: partition + 1,
                }
                .into());
            }
        }
        Ok(self.store.stored_offset(topic, partition)?)
    }

    fn emit_rewind(
        &self,
        topic: &str,
        partition: i32,
        committed: i64,
    ) -> Result<Option<i64>, SinkError> {
        let Some(stored) = self.store.stored_offset(topic, partition)? else {
            return Ok(None);
        };
        let emitted = self.store.emitted_offset(topic, partition)?.unwrap_or(0);
        let from = emitted.max(committed).max(0);
        Ok((from < stored).then_some(from))
    }

    fn committable_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, SinkError> {
        // Past the emitted mark, events were applied here read-only: their follow-ups
        // may not be in the log, so the group must not be told they are done.
        let stored = self.store.stored_offset(topic, partition)?;
        let emitted = self.store.emitted_offset(topic, partition)?;
        Ok(match (stored, emitted) {
            (Some(s), Some(e)) => Some(s.min(e)),
            _ => None,
        })
    }

    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), SinkError> {
        let prepared = self.store.prepare(topic, batch)?;
        if !prepared.follow_ups().is_empty() {
            self.follow_ups
                .write(prepared.follow_ups(), &self.metrics)?;
            debug!(
                follow_ups = prepared.follow_ups().len(),
                "follow-up events acknowledged; storing the batch"
            );
            self.follow_ups.maybe_crash();
        }
        if !prepared.dead_letters().is_empty() {
            self.follow_ups
                .write_dead_letters(prepared.dead_letters())?;
        }
        let stats = self.store.commit(prepared)?;
        let m = &self.metrics;
        m.applied.inc_by(stats.applied);
        for (what, n) in [
            ("parked", stats.parked),
            ("applied", stats.unparked),
            ("skipped", stats.dead_lettered),
        ] {
            if n > 0 {
                m.parked_events
                    .get_or_create(&vec![("outcome", what.to_string())])
                    .inc_by(n);
            }
        }
        if stats.unparked + stats.dead_lettered > 0 {
            info!(
                applied = stats.unparked,
                skipped = stats.dead_lettered,
                "an operator's decision applied parked events"
            );
        }
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
            // A partition read again to write follow-ups moves below its stored offset;
            // the gauge, like the stored offset, does not.
            let gauge = m
                .applied_offset
                .get_or_create(&vec![("partition", p.to_string())]);
            if next > gauge.get() {
                gauge.set(next);
            }
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

    fn on_fenced(&self) -> Result<(), String> {
        self.group.fenced()
    }
}

/// The log's envelope, with which the store keeps the events that wait behind a parked
/// account's unreadable one and reads them again on an operator's retry.
pub(crate) struct LogCodec;

impl ledger_store::EventCodec for LogCodec {
    fn encode(&self, event: &Event) -> Vec<u8> {
        ledger_eventlog::codec::encode(event)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Event, String> {
        ledger_eventlog::codec::decode(bytes).map_err(|e| e.to_string())
    }
}
