//! Applying and committing: the batch in hand handed to the sink on a thread of its
//! own, and its offsets committed to Kafka only once the sink has made it durable; the
//! group's committed offset of each newly assigned partition, learned before anything is
//! committed for it; and the final commit of a clean stop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::context::LoopContext;
use super::{BatchSink, ConsumeError};

impl<S: BatchSink> LoopContext<S> {
    /// Hands at most `max` events in hand to the sink on a thread of its own, a fair
    /// share of each partition's (`Batch::split_off_beyond`), and returns, so that the
    /// loop reads on while this batch is applied (the broker's fetches and the decoding
    /// overlap the store's writes). Waits first for the batch before it, and commits
    /// that one's offsets. Returns how many events it left in hand ready to go (held
    /// ones aside).
    pub(super) fn start_apply(
        &self,
        consumer: &BaseConsumer<Self>,
        max: usize,
    ) -> Result<usize, ConsumeError> {
        self.finish_in_flight(consumer, CommitMode::Async)?;
        let (batch, ready) = {
            let mut st = self.state();
            let mut batch = std::mem::take(&mut st.pending);
            // A partition whose committed offset is not known yet waits in hand: whether
            // its events must write their follow-ups depends on it.
            let mut held = st.emit_from(&mut batch);
            // Paused partitions keep their events in hand too.
            held.extend(st.paused.iter().copied());
            held.extend(self.pause.stopped_among(batch.partitions().into_iter()));
            if !held.is_empty() {
                st.pending = batch.split_off_partitions(&held);
            }
            let rest = batch.split_off_beyond(max);
            let ready = rest.len();
            st.pending.absorb(rest);
            (batch, ready)
        };
        if batch.is_empty() {
            return Ok(ready);
        }
        *self.in_flight() = Some(batch.next_offsets.clone());
        self.applier.start(batch)?;
        Ok(ready)
    }

    /// Whether a batch is being applied in the background (one that is done counts as
    /// being applied until `commit_if_applied` takes it).
    pub(super) fn applying(&self) -> bool {
        self.in_flight().is_some()
    }

    pub(super) fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<i32, i64>>> {
        self.in_flight
            .lock()
            .expect("the in-flight lock is only taken by the consumer thread, which does not panic while holding it")
    }

    /// Commits the batch applied in the background if it is done; never waits.
    pub(super) fn commit_if_applied(
        &self,
        consumer: &BaseConsumer<Self>,
    ) -> Result<(), ConsumeError> {
        if let Some(next_offsets) = self.take_in_flight(false)? {
            self.commit(consumer, &next_offsets, CommitMode::Async);
        }
        Ok(())
    }

    /// Waits for the batch applied in the background, if any, and returns its offsets
    /// once durable; the caller decides whether to commit them.
    pub(super) fn wait_in_flight(&self) -> Result<Option<BTreeMap<i32, i64>>, ConsumeError> {
        self.take_in_flight(true)
    }

    /// Waits for the batch applied in the background, if any, and commits its offsets.
    pub(super) fn finish_in_flight(
        &self,
        consumer: &BaseConsumer<Self>,
        mode: CommitMode,
    ) -> Result<(), ConsumeError> {
        if let Some(next_offsets) = self.take_in_flight(true)? {
            self.commit(consumer, &next_offsets, mode);
        }
        Ok(())
    }

    /// The offsets of the batch in flight once it is applied, taking it out of flight;
    /// `None` when there is none, or (without `wait`) when it is not done yet.
    pub(super) fn take_in_flight(
        &self,
        wait: bool,
    ) -> Result<Option<BTreeMap<i32, i64>>, ConsumeError> {
        let mut in_flight = self.in_flight();
        if in_flight.is_none() {
            return Ok(None);
        }
        let Some(outcome) = self.applier.outcome(wait) else {
            return Ok(None);
        };
        let next_offsets = in_flight
            .take()
            .expect("checked above, and only this thread takes it");
        outcome.map(|()| Some(next_offsets))
    }

    /// Commits these next offsets; a failure is counted and logged, never fatal (the
    /// store is the record of progress). Returns whether the commit went through.
    ///
    /// Only offsets above the group's committed one are committed: an instance catching
    /// up from below it (a fresh store, a stale one) commits nothing for that partition
    /// until it passes it, so the group's committed offset only ever moves forward.
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        next_offsets: &BTreeMap<i32, i64>,
        mode: CommitMode,
    ) -> bool {
        let mut tpl = TopicPartitionList::with_capacity(next_offsets.len());
        {
            let mut st = self.state();
            for (&p, &next) in next_offsets {
                match st.committed.get_mut(&p) {
                    // A synchronous commit (a revoke, the final one) sends the offset again
                    // even when an asynchronous commit of it was queued: that one may have
                    // failed, and this one decides where the next owner starts.
                    Some(Some(committed))
                        if next > *committed
                            || (next == *committed && matches!(mode, CommitMode::Sync)) =>
                    {
                        *committed = next;
                        tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                            .expect("an explicit offset is always valid in a partition list");
                    }
                    Some(Some(committed)) if next < *committed => {
                        self.metrics.commits_withheld.inc();
                        debug!(
                            partition = p,
                            next,
                            committed = *committed,
                            "offset not committed: the group's committed offset is ahead"
                        );
                    }
                    // Not known yet: nothing is committed until it is.
                    Some(None) => {
                        self.metrics.commits_withheld.inc();
                    }
                    // Already there, or no longer assigned here.
                    Some(Some(_)) | None => {}
                }
            }
        }
        if tpl.count() == 0 {
            return true;
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            self.metrics.commit_failures.inc();
            debug!(error = %e, "offset commit failed; progress is kept in the store");
            return false;
        }
        true
    }

    /// Applies the pending events of `only` (or of every partition) and commits their
    /// offsets once the sink has made them durable, after the batch applied in the
    /// background (whatever its partitions) is done and committed.
    pub(super) fn apply_and_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&BTreeSet<i32>>,
        mode: CommitMode,
    ) -> Result<(), ConsumeError> {
        self.finish_in_flight(consumer, mode)?;
        if self.pause.holding() {
            // A rebuild is comparing the store with another: nothing may be written.
            // What is in hand is dropped uncommitted, and read again by whoever owns
            // the partitions next (this loop included).
            let mut st = self.state();
            let dropped = match only {
                Some(parts) => st.pending.split_off_partitions(parts),
                None => std::mem::take(&mut st.pending),
            };
            debug!(
                events = dropped.records.len(),
                "events in hand left unapplied during a rebuild's hold"
            );
            return Ok(());
        }
        let batch = {
            let mut st = self.state();
            let mut batch = match only {
                Some(parts) => st.pending.split_off_partitions(parts),
                None => std::mem::take(&mut st.pending),
            };
            // Given up (revoked, or stopping) before its committed offset was known:
            // nothing of it is stored or committed, and its next reader reads it again.
            let unknown = st.emit_from(&mut batch);
            if !unknown.is_empty() {
                let dropped = batch.split_off_partitions(&unknown);
                debug!(partitions = ?unknown, events = dropped.records.len(), "events in hand of partitions whose committed offset is unknown, left unapplied");
            }
            batch
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.sink
            .apply_batch(&self.topic, &batch)
            .map_err(|e| ConsumeError::Sink(Box::new(e)))?;
        self.commit(consumer, &batch.next_offsets, mode);
        Ok(())
    }
}

/// How often the group's committed offsets of newly assigned partitions are asked for
/// while the brokers do not answer.
const COMMITTED_RETRY: Duration = Duration::from_secs(1);

impl<S: BatchSink> LoopContext<S> {
    /// Learns the group's committed offset of partitions assigned since the last call
    /// (never inside the rebalance callback: it is a round trip to the coordinator).
    /// Until it is known, nothing is committed for them.
    pub(super) fn learn_committed(
        &self,
        consumer: &BaseConsumer<Self>,
        asked: &mut Option<(Instant, Vec<i32>)>,
    ) {
        let unknown: Vec<i32> = self
            .state()
            .committed
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(&p, _)| p)
            .collect();
        // Newly assigned partitions are asked for at once (their events wait in hand until
        // it is known); the same ones again only after a pause.
        let mut unknown = unknown;
        unknown.sort_unstable();
        let again = asked
            .as_ref()
            .is_some_and(|(t, last)| *last == unknown && t.elapsed() < COMMITTED_RETRY);
        if unknown.is_empty() || again {
            return;
        }
        *asked = Some((Instant::now(), unknown.clone()));
        let mut tpl = TopicPartitionList::with_capacity(unknown.len());
        for &p in &unknown {
            tpl.add_partition(&self.topic, p);
        }
        let answer = match consumer.committed_offsets(tpl, Duration::from_secs(2)) {
            Ok(answer) => answer,
            Err(e) => {
                // Their events wait in hand meanwhile: say so.
                self.metrics.committed_fetch_failures.inc();
                warn!(partitions = ?unknown, error = %e, "cannot fetch the group's committed offsets; their events wait in hand, asking again in 1 s");
                return;
            }
        };
        let mut st = self.state();
        for e in answer.elements_for_topic(&self.topic) {
            // A partition the coordinator could not answer for is asked again later.
            if let Err(error) = e.error() {
                self.metrics.committed_fetch_failures.inc();
                warn!(partition = e.partition(), %error, "the coordinator did not answer for the partition's committed offset; its events wait in hand, asking again in 1 s");
                continue;
            }
            let committed = match e.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            };
            let p = e.partition();
            // Only if it is still assigned and not yet known.
            if !matches!(st.committed.get(&p), Some(None)) {
                continue;
            }
            // Events this store applied without writing their follow-ups (as a read-only
            // tail) at or above the committed offset: nobody may have written those
            // follow-ups, so the partition is read again from there.
            let rewind = match self.sink.emit_rewind(&self.topic, p, committed) {
                Ok(r) => r,
                Err(e) => {
                    st.fatal.get_or_insert(ConsumeError::Sink(Box::new(e)));
                    return;
                }
            };
            if let Some(from) = rewind {
                if let Err(e) =
                    consumer.seek(&self.topic, p, Offset::Offset(from), Duration::from_secs(5))
                {
                    self.metrics.committed_fetch_failures.inc();
                    warn!(partition = p, from, error = %e, "cannot seek back to write follow-ups yet; its events wait in hand, retrying in 1 s");
                    continue;
                }
                let dropped = st.pending.split_off_partitions(&BTreeSet::from([p]));
                st.positions.insert(p, from);
                self.metrics.emit_rewinds.inc();
                info!(partition = p, from, committed, skipped_in_hand = dropped.records.len(), "reading the partition again from the committed offset to write the follow-ups of events applied here without them");
            }
            st.committed.insert(p, Some(committed));
            debug!(partition = p, committed, "group's committed offset");
        }
    }

    /// Commits the stored offset of every assigned partition, synchronously: on a clean
    /// stop, the group's committed offsets end exactly at the store's even when the last
    /// asynchronous commit was lost (a commit during a rebalance, say).
    pub(super) fn commit_stored(&self, consumer: &BaseConsumer<Self>) -> Result<(), ConsumeError> {
        let parts: Vec<i32> = self.state().positions.keys().copied().collect();
        let mut stored = BTreeMap::new();
        for p in parts {
            let next = self
                .sink
                .committable_offset(&self.topic, p)
                .map_err(|e| ConsumeError::Sink(Box::new(e)))?;
            if let Some(next) = next {
                stored.insert(p, next);
            }
        }
        if !stored.is_empty() && !self.commit(consumer, &stored, CommitMode::Sync) {
            warn!("final offset commit failed; progress is kept in the store");
        }
        Ok(())
    }
}
