//! The consumer's librdkafka context: the state the loop and its rebalance callback
//! share, and the callback itself.
//!
//! librdkafka runs the callback inside `poll`, on the loop's own thread. On an
//! assignment each partition starts at the offset the sink has stored, never at Kafka's
//! committed one; on a revoke the batch in hand for those partitions is applied and
//! committed before they are given up, so the next owner starts exactly where this one
//! stopped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ledger_domain::Batch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use super::health::GroupHealth;
use super::{BatchSink, ConsumeError, ConsumerMetrics};
use crate::stats::Stats;

/// What the loop has read and not yet applied, which the rebalance callback sees too.
pub(super) struct LoopState {
    /// Events read but not yet applied.
    pub(super) pending: Batch,
    /// Next offset expected per assigned partition (applied or pending).
    pub(super) positions: HashMap<i32, i64>,
    /// An error raised inside a rebalance callback, for the loop to return.
    pub(super) fatal: Option<ConsumeError>,
    /// The group's committed offset per assigned partition, as last known (`-1`: none);
    /// `None` until fetched after the assignment. An offset is committed only above it,
    /// so that the group's committed offset never moves backwards while an instance
    /// catches up from below it.
    pub(super) committed: HashMap<i32, Option<i64>>,
    /// Assigned partitions paused in librdkafka (see `pause`).
    pub(super) paused: BTreeSet<i32>,
    /// Paused partitions whose fetched events were dropped: read again on resume.
    pub(super) dropped: BTreeSet<i32>,
}

impl LoopState {
    /// Sets the batch's `emit_from` for each partition it holds, from the group's
    /// committed offset: its events at or above it write their follow-ups. Returns the
    /// partitions whose committed offset is not known yet, which must not be applied.
    pub(super) fn emit_from(&self, batch: &mut Batch) -> BTreeSet<i32> {
        let mut unknown = BTreeSet::new();
        for p in batch.partitions() {
            match self.committed.get(&p) {
                Some(Some(c)) => {
                    batch.emit_from.insert(p, (*c).max(0));
                }
                _ => {
                    unknown.insert(p);
                }
            }
        }
        unknown
    }
}

/// The consumer's context: what the loop and librdkafka's callbacks share.
pub(super) struct LoopContext<S: BatchSink> {
    pub(super) sink: Arc<S>,
    pub(super) topic: String,
    pub(super) metrics: ConsumerMetrics,
    pub(super) state: Mutex<LoopState>,
    pub(super) group: Mutex<GroupHealth>,
    /// Set once this client is being replaced: its callbacks must not touch the store.
    pub(super) retired: AtomicBool,
    /// Applies batches on a thread of its own while the loop reads the next one.
    pub(super) applier: Applier,
    /// The next offsets of the batch the applier has, to commit once it is durable. At
    /// most one batch is in flight: every other apply waits for it first, so applies
    /// never overlap.
    pub(super) in_flight: Mutex<Option<BTreeMap<i32, i64>>>,
    pub(super) pause: super::PauseControl,
}

/// A thread that applies the batches it is handed to the sink, one at a time, and
/// answers each with the outcome. It lives as long as the consumer (a thread per batch
/// would churn the allocator's per-thread memory).
pub(super) struct Applier {
    to: Option<mpsc::SyncSender<Batch>>,
    /// Behind a lock only because the context must be `Sync`; only the consumer thread
    /// reads it.
    done: Mutex<mpsc::Receiver<Result<(), ConsumeError>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    fn new<S: BatchSink>(sink: Arc<S>, topic: String) -> Self {
        let (to, batches) = mpsc::sync_channel::<Batch>(1);
        let (answer, done) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("ledger-apply".into())
            .spawn(move || {
                for batch in batches {
                    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        sink.apply_batch(&topic, &batch)
                    }));
                    let outcome = match applied {
                        Ok(r) => r.map_err(|e| ConsumeError::Sink(Box::new(e))),
                        Err(panic) => Err(ConsumeError::Panicked(panic_text(&*panic))),
                    };
                    if answer.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .expect("the OS can start one thread per consumer");
        Applier {
            to: Some(to),
            done: Mutex::new(done),
            thread: Some(thread),
        }
    }

    /// Hands a batch over; the caller has made sure none is in flight.
    pub(super) fn start(&self, batch: Batch) -> Result<(), ConsumeError> {
        self.to
            .as_ref()
            .expect("the sender lives until drop")
            .send(batch)
            .map_err(|_| ConsumeError::Panicked("the apply thread is gone".into()))
    }

    /// The outcome of the batch in flight, waiting for it or not.
    pub(super) fn outcome(&self, wait: bool) -> Option<Result<(), ConsumeError>> {
        let done = self
            .done
            .lock()
            .expect("only the consumer thread takes this lock, and it does not panic holding it");
        let gone = || ConsumeError::Panicked("the apply thread is gone".into());
        if wait {
            return Some(done.recv().map_err(|_| gone()).and_then(|r| r));
        }
        match done.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(Err(gone())),
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the channel ends the thread once its batch (if any) is done.
        self.to.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A panic's message, as far as it can be read.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

impl<S: BatchSink> LoopContext<S> {
    pub(super) fn new(
        sink: Arc<S>,
        topic: String,
        metrics: ConsumerMetrics,
        pause: super::PauseControl,
    ) -> Self {
        LoopContext {
            applier: Applier::new(sink.clone(), topic.clone()),
            sink,
            topic,
            metrics,
            state: Mutex::new(LoopState {
                pending: Batch::default(),
                positions: HashMap::new(),
                fatal: None,
                committed: HashMap::new(),
                paused: BTreeSet::new(),
                dropped: BTreeSet::new(),
            }),
            group: Mutex::new(GroupHealth::default()),
            retired: AtomicBool::new(false),
            in_flight: Mutex::new(None),
            pause,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, LoopState> {
        // Only the consumer thread takes this lock; a poisoned lock means that thread
        // panicked mid-update, after which the process is going down anyway.
        self.state.lock().expect("the loop state lock is only taken by the consumer thread, which does not panic while holding it")
    }
}

impl<S: BatchSink> ConsumerContext for LoopContext<S> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        if self.retired.load(Ordering::Acquire) {
            self.unassign_retired(consumer, cooperative, err, tpl);
            return;
        }
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        let assigning = matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS);
        let revoking = matches!(err, RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS);
        if parts.is_empty() && cooperative && (assigning || revoking) {
            // The empty half of a cooperative rebalance (librdkafka sends `ASSIGN []` beside
            // a revoke, and the reverse): acknowledge it; nothing is assigned or revoked, so
            // nothing is counted and the batch in flight is not waited for.
            let acknowledged = if assigning {
                consumer.incremental_assign(tpl)
            } else {
                consumer.incremental_unassign(tpl)
            };
            if let Err(e) = acknowledged {
                warn!(error = %e, "acknowledging an empty rebalance failed");
            }
            return;
        }
        if (assigning || revoking) && self.pause.lift() {
            warn!(partitions = ?parts, "the group rebalanced: every pause on this instance ends (a pause does not outlive a rebalance)");
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics
                    .rebalances
                    .get_or_create(&vec![("kind".into(), "assign".into())])
                    .inc();
                // Whatever else writes these partitions' state (a read-only tail) stops
                // before their stored offsets are read.
                self.sink.before_assign(&parts);
                let mut starts = Vec::with_capacity(parts.len());
                for &p in &parts {
                    match self.sink.stored_offset(&self.topic, p) {
                        Ok(stored) => {
                            let offset = stored.map_or(Offset::Beginning, Offset::Offset);
                            tpl.set_partition_offset(&self.topic, p, offset)
                                .expect("the partition is in the list we were handed");
                            let mut st = self.state();
                            st.positions.insert(p, stored.unwrap_or(0));
                            st.committed.insert(p, None);
                            drop(st);
                            starts.push((p, stored.unwrap_or(0)));
                        }
                        Err(e) => {
                            error!(partition = p, error = %e, "cannot read the stored offset");
                            self.state()
                                .fatal
                                .get_or_insert(ConsumeError::Sink(Box::new(e)));
                        }
                    }
                }
                let res = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = res {
                    error!(error = %e, "assign failed");
                    self.state().fatal.get_or_insert(ConsumeError::Kafka(e));
                    return;
                }
                // A partition paused here, revoked and assigned again must be fetched: the
                // pause is resumed whatever librdkafka kept of it (the loop pauses again
                // whatever must stay stopped). Harmless for one never paused.
                if let Err(e) = consumer.resume(tpl) {
                    warn!(error = %e, "resuming newly assigned partitions failed");
                }
                info!(partitions = ?starts, "partitions assigned; resuming from the stored offsets");
                self.sink.on_assigned(&parts);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.metrics
                    .rebalances
                    .get_or_create(&vec![("kind".into(), "revoke".into())])
                    .inc();
                let revoked: BTreeSet<i32> = parts.iter().copied().collect();
                if let Err(e) = self.apply_and_commit(consumer, Some(&revoked), CommitMode::Sync) {
                    error!(error = %e, "applying the batch in hand for revoked partitions failed");
                    self.state().fatal.get_or_insert(e);
                }
                {
                    let mut st = self.state();
                    // Resumed before they go, for the same reason as on assignment.
                    let paused: Vec<i32> = revoked.intersection(&st.paused).copied().collect();
                    if !paused.is_empty() {
                        let mut list = TopicPartitionList::with_capacity(paused.len());
                        for &p in &paused {
                            list.add_partition(&self.topic, p);
                        }
                        if let Err(e) = consumer.resume(&list) {
                            warn!(partitions = ?paused, error = %e, "resuming revoked partitions failed");
                        }
                    }
                    for p in &revoked {
                        st.positions.remove(p);
                        st.committed.remove(p);
                        st.paused.remove(p);
                        st.dropped.remove(p);
                    }
                    self.metrics.paused_partitions.set(st.paused.len() as i64);
                }
                let res = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = res {
                    warn!(error = %e, "unassign failed");
                }
                info!(partitions = ?parts, "partitions revoked after applying their batch in hand");
                self.sink.on_revoked(&parts);
            }
            other => {
                error!(error = ?other, "rebalance error; dropping the assignment");
                if let Err(e) = consumer.unassign() {
                    warn!(error = %e, "unassign failed");
                }
                let mut st = self.state();
                let all: Vec<i32> = st.positions.keys().copied().collect();
                st.positions.clear();
                st.committed.clear();
                st.paused.clear();
                st.dropped.clear();
                self.metrics.paused_partitions.set(0);
                drop(st);
                self.sink.on_revoked(&all);
            }
        }
    }
}
impl<S: BatchSink> ClientContext for LoopContext<S> {
    fn stats_raw(&self, statistics: &[u8]) {
        let Some(Stats { cgrp: Some(g), .. }) = Stats::parse(statistics) else {
            return;
        };
        // An idle member (more instances than partitions) is steady with nothing
        // assigned: steadiness, not an assignment, is the sign of health.
        self.group
            .lock()
            .expect("the group health lock is never held across a panic")
            .report(&g.state, &g.join_state, Instant::now());
    }
}

impl<S: BatchSink> LoopContext<S> {
    /// The wedge, if the membership has not been steady for [`GROUP_STALL`].
    pub(super) fn group_stalled(&self) -> Option<ConsumeError> {
        let h = self
            .group
            .lock()
            .expect("the group health lock is never held across a panic");
        h.stalled(Instant::now())
            .map(|d| ConsumeError::GroupStalled(d, h.last_state.clone()))
    }

    /// The rebalance callback of a retired client: it gives everything up and applies
    /// nothing.
    pub(super) fn unassign_retired(
        &self,
        consumer: &BaseConsumer<Self>,
        cooperative: bool,
        err: RDKafkaRespErr,
        tpl: &TopicPartitionList,
    ) {
        let res = if cooperative && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = res {
            debug!(error = %e, "unassign by a retired consumer failed");
        }
    }
}
