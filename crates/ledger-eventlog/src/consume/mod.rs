//! The commit-after-apply consumer loop.
//!
//! The loop reads the topic in batches bounded by count and time and hands each batch to
//! a [`BatchSink`], which applies it and stores each partition's next offset in one
//! durable write. Only after the sink returns are the offsets committed to Kafka, so no
//! offset is ever committed for an event whose effect is not durable.
//!
//! The store, not Kafka, is the record of progress: on assignment each partition starts
//! at the offset the sink has stored, and anything delivered below it is skipped. On a
//! revoke, the batch in hand for the revoked partitions (and only theirs) is applied and
//! committed before they are given up.
//!
//! Each batch tells the sink, per partition, from which offset its events' follow-ups (a
//! transfer's credit, refund, completion) are to be written to the log: the group's
//! committed offset, asked of the coordinator after each assignment. Below it an earlier
//! owner wrote them; at or above it nobody may have. A partition's events wait in hand
//! until that offset is known, and a partition this store applied read-only past it is
//! read again from there (`BatchSink::emit_rewind`).
//!
//! The loop runs on a thread of its own (it blocks in `poll`), so a rebalance callback,
//! which librdkafka runs inside `poll`, sees the batch in hand without any locking
//! contention.
//!
//! This module tells that story: [`run`] keeps a consumer going, `poll_loop` fills the
//! batch in hand, and `start_apply` hands it to the sink on a thread of its own, so that
//! the next batch is read and decoded while this one is written; its offsets are committed
//! once the sink returns. At most one batch is in flight, and every other apply (a revoke,
//! a poison, shutdown: `apply_and_commit`) first waits for it, so applies never overlap
//! and offsets are still committed only after their batch is durable. Around them:
//!
//! - `context`: the state the loop shares with librdkafka's rebalance callback, and the
//!   callback, which starts partitions at their stored offsets and applies a revoked
//!   partition's batch in hand before giving it up;
//! - `poison`: what becomes of an event that does not decode (parked, dead letter or
//!   halt);
//! - `pause`: an operator's pause of some partitions, and a rebuild's hold of all of
//!   them, which the loop obeys at batch boundaries;
//! - `restart`: when a consumer is given up for a new one (a fatal client error, a group
//!   membership not steady for [`GROUP_STALL`]), and how the old one is retired;
//! - `settings`: the loop's settings and the librdkafka properties they become;
//! - `metrics`: the loop's counters.

mod context;
mod metrics;
mod pause;
mod poison;
mod restart;
mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_domain::partitioning::partition_of;
use ledger_domain::{Batch, Event, Record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec;
use crate::config::{ConflictingProperty, KafkaConfig};
use crate::producer::EventProducer;
use context::LoopContext;
pub(crate) use poison::parks;
use poison::{deal_with_poison, Poisoned};
use restart::{retire, RestartPolicy};

pub use context::panic_text;
pub use metrics::ConsumerMetrics;
pub use pause::PauseControl;
pub use poison::{Poison, PoisonPolicy};
pub use restart::GROUP_STALL;
pub use settings::ConsumerSettings;

/// Reads `settings.topic` into `sink` until `shutdown` is cancelled or an error stops
/// it. Blocking: run it on a thread of its own, inside a tokio runtime's context (the
/// dead-letter producer needs one).
///
/// A consumer that can no longer serve is replaced by a new one, which resumes from the
/// store, as [`restart::RestartPolicy`] allows; any other error ends the loop. On
/// shutdown it stops fetching, applies and commits the batch in hand, and leaves the
/// group.
pub fn run<S: BatchSink>(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    sink: Arc<S>,
    dead_letters: &EventProducer,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut restarts = RestartPolicy::default();
    loop {
        let result = consume_with_one_client(
            kafka,
            settings,
            sink.clone(),
            dead_letters,
            metrics.clone(),
            &shutdown,
        );
        match result {
            Err(e) if restarts.replace_client(&e, &shutdown) => {
                warn!(error = %e, "the Kafka consumer is unusable (a fatal error, or wedged); recreating it");
                metrics.restarts.inc();
                std::thread::sleep(restart::PAUSE);
            }
            other => return other,
        }
    }
}

/// One librdkafka consumer's life: subscribe, poll and apply until shutdown or an
/// error. A client that ends with an error fatal to it alone is retired.
fn consume_with_one_client<S: BatchSink>(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    sink: Arc<S>,
    dead_letters: &EventProducer,
    metrics: ConsumerMetrics,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let cfg = settings::consumer_config(kafka, settings)?;
    let ctx = LoopContext::new(
        sink,
        settings.topic.clone(),
        metrics,
        settings.pause.clone(),
    );
    let consumer: BaseConsumer<LoopContext<S>> = cfg.create_with_context(ctx)?;
    consumer.subscribe(&[&settings.topic])?;
    info!(topic = %settings.topic, group = %settings.group_id, "consuming");

    let result = poll_loop(&consumer, settings, dead_letters, shutdown);
    if result.as_ref().is_err_and(ConsumeError::is_client_fatal) {
        // This client cannot serve any more: it applies nothing further and a new one
        // takes over from the store (see `restart`), once the batch being applied is
        // done, so that the two never apply at once. Its offsets are not committed.
        let _ = consumer.context().wait_in_flight();
        // Fenced by another live process with this instance id: the id is its now, and
        // taking it back would fence that one in turn, for ever. Decided before the
        // partitions are given up, so that none of them is drained meanwhile.
        let twin = result
            .as_ref()
            .is_err_and(ConsumeError::is_fenced)
            .then(|| consumer.context().sink.on_fenced())
            .and_then(Result::err);
        retire(consumer);
        return match twin {
            Some(why) => Err(ConsumeError::Fenced(why)),
            None => result,
        };
    }
    let ctx = consumer.context();
    let result = match result {
        Ok(()) => ctx
            .apply_and_commit(&consumer, None, CommitMode::Sync)
            .and_then(|()| ctx.commit_stored(&consumer)),
        Err(e) => {
            // Stopping on an error: the batch being applied finishes (the store stays
            // consistent either way) before anything else may touch the store.
            if let Err(also) = ctx.wait_in_flight() {
                warn!(error = %also, "the batch being applied failed too");
            }
            Err(e)
        }
    };
    if result.is_ok() {
        // Leave the group now, so the partitions move to another instance at once.
        consumer.unsubscribe();
        if settings.instance_id.is_some() {
            leave_as_static_member(&consumer);
        }
    }
    // Dropping the consumer closes it, serving the final revoke through our callback.
    drop(consumer);
    result
}

/// How long a static member's clean stop polls for its revoke to be served, so that
/// librdkafka sends the LeaveGroup before it closes.
const LEAVE_WAIT: Duration = Duration::from_secs(3);
/// How long it goes on polling once nothing is assigned: the LeaveGroup follows the
/// unassignment on librdkafka's own thread.
const LEAVE_SETTLE: Duration = Duration::from_millis(300);

/// Serves the revoke that `unsubscribe` started, before the consumer is closed.
///
/// A static member (`group.instance.id`) does not send LeaveGroup when it is closed
/// (KIP-345: its partitions wait for its session to expire, for a restart to take them
/// back), but it does when it unsubscribes and is not yet closing. Closing at once
/// would race that leave and usually win, so a clean stop would hold its partitions
/// for a session timeout. Polled here, the leave goes out and the partitions move at
/// once, as for a dynamic member.
fn leave_as_static_member<S: BatchSink>(consumer: &BaseConsumer<LoopContext<S>>) {
    let deadline = Instant::now() + LEAVE_WAIT;
    let mut unassigned_at: Option<Instant> = None;
    while Instant::now() < deadline {
        let _ = consumer.poll(Duration::from_millis(50));
        let empty = consumer
            .assignment()
            .map(|a| a.count() == 0)
            .unwrap_or(true);
        match (empty, unassigned_at) {
            (true, None) => unassigned_at = Some(Instant::now()),
            (true, Some(t)) if t.elapsed() >= LEAVE_SETTLE => return,
            (false, _) => unassigned_at = None,
            _ => {}
        }
    }
    warn!(wait = ?LEAVE_WAIT, "the revoke before leaving the group was not served in time; the partitions move when this member's session expires");
}

/// Reads into the batch in hand and applies it once it is full or has waited long
/// enough, until shutdown or an error.
fn poll_loop<S: BatchSink>(
    consumer: &BaseConsumer<LoopContext<S>>,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let ctx = consumer.context();
    let idle_poll = Duration::from_millis(100);
    let mut batch_started: Option<Instant> = None;
    let mut batch_len = 0usize;
    let mut committed_asked: Option<(Instant, Vec<i32>)> = None;
    loop {
        if let Some(e) = ctx.state().fatal.take() {
            return Err(e);
        }
        if let Some(e) = ctx.group_stalled() {
            return Err(e);
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let wait = match batch_started {
            None => idle_poll,
            Some(t) => settings.batch_max_wait.saturating_sub(t.elapsed()),
        };
        let full = batch_started.is_some() && batch_len >= settings.batch_max_events;
        ctx.learn_committed(consumer, &mut committed_asked);
        // Events held for partitions whose committed offset is not known yet (the
        // coordinator does not answer): read no further until it is, so that memory
        // stays bounded.
        if batch_started.is_none()
            && ctx.state().pending.records.len() >= HELD_BATCHES * settings.batch_max_events
        {
            ctx.commit_if_applied(consumer)?;
            ctx.obey_pause(consumer, settings)?;
            std::thread::sleep(idle_poll);
            continue;
        }
        // A batch applied in the background is committed as soon as it is done.
        ctx.commit_if_applied(consumer)?;
        ctx.obey_pause(consumer, settings)?;
        let polled = if full { None } else { consumer.poll(wait) };
        // A batch ends when full, or past the wait at the first empty poll: events already
        // fetched still join it, so a backlog makes full batches, which cost far less per
        // event.
        if full || (polled.is_none() && batch_started.is_some() && wait.is_zero()) {
            ctx.start_apply(consumer)?;
            batch_started = None;
            batch_len = 0;
            continue;
        }
        let msg = match polled {
            // Also returned for rebalances and other events: not a sign of an empty queue.
            None => continue,
            Some(Err(e)) => match e {
                // The consumer can never recover (fenced by another instance with the
                // same group.instance.id, say): stop instead of idling while looking alive.
                // librdkafka reports `__FATAL`; the error behind it says what happened.
                KafkaError::MessageConsumptionFatal(_) => {
                    let (code, reason) = consumer
                        .client()
                        .fatal_error()
                        .unwrap_or((RDKafkaErrorCode::Fatal, e.to_string()));
                    warn!(error = %reason, ?code, "the consumer hit a fatal error");
                    return Err(ConsumeError::Kafka(KafkaError::MessageConsumptionFatal(
                        code,
                    )));
                }
                // auto.offset.reset=error: a stored offset outside the log means the
                // topic is not the one this store was built from.
                KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset) => {
                    return Err(ConsumeError::OffsetOutOfRange(e.to_string()))
                }
                other => {
                    warn!(error = %other, "consumer error");
                    continue;
                }
            },
            Some(Ok(m)) => m,
        };
        let (partition, offset) = (msg.partition(), msg.offset());
        if msg.topic() != settings.topic {
            continue;
        }
        let (expected, stopped) = {
            let st = ctx.state();
            (
                st.positions.get(&partition).copied(),
                st.paused.contains(&partition),
            )
        };
        if stopped {
            // Fetched before the pause took effect: read again from the partition's
            // position on resume.
            ctx.state().dropped.insert(partition);
            continue;
        }
        let Some(expected) = expected else {
            // Not (or no longer) ours; whoever owns it reads it from its own stored offset.
            debug!(
                partition,
                offset, "message for an unassigned partition, ignored"
            );
            continue;
        };
        if offset < expected {
            ctx.metrics.redelivered.inc();
            debug!(
                partition,
                offset, expected, "redelivered event below the stored offset, skipped"
            );
            continue;
        }
        let event = codec::decode(msg.payload().unwrap_or_default())
            .map_err(Poison::from)
            .and_then(|event| in_its_place(settings, msg.key(), partition, event));
        match event {
            Ok(event) => {
                let mut st = ctx.state();
                st.pending.records.push(Record {
                    partition,
                    offset,
                    event,
                });
                st.pending.next_offsets.insert(partition, offset + 1);
                st.positions.insert(partition, offset + 1);
            }
            Err(error) => {
                if let Some(u) = parks(
                    settings,
                    msg.key(),
                    partition,
                    offset,
                    msg.payload(),
                    &error,
                ) {
                    ctx.metrics
                        .poison
                        .get_or_create(&vec![("action".into(), "parked".into())])
                        .inc();
                    warn!(partition, offset, account = %u.account_id, reason = %u.reason, "event this version cannot read; its account is parked, every other account flows on");
                    let mut st = ctx.state();
                    st.pending.unreadable.push(u);
                    st.pending.next_offsets.insert(partition, offset + 1);
                    st.positions.insert(partition, offset + 1);
                    drop(st);
                    batch_len += 1;
                    batch_started.get_or_insert_with(Instant::now);
                    continue;
                }
                match deal_with_poison(consumer, settings, dead_letters, shutdown, &msg, error)? {
                    Poisoned::DeadLettered => {}
                    // Shutting down before the dead-letter topic acknowledged: the
                    // partition stays at the poison and it is retried next time.
                    Poisoned::ShuttingDown => return Ok(()),
                }
            }
        }
        batch_len += 1;
        batch_started.get_or_insert_with(Instant::now);
    }
}

/// The event, if it sits where its account's events are (when the sink keeps state per
/// partition): keyed by its account id, in murmur2 of that id's partition.
pub(crate) fn in_its_place(
    settings: &ConsumerSettings,
    key: Option<&[u8]>,
    partition: i32,
    event: Event,
) -> Result<Event, Poison> {
    let Some(partitions) = settings.partitions else {
        return Ok(event);
    };
    let expected = partition_of(&event.account_id, partitions);
    if key == Some(event.account_id.as_str().as_bytes()) && partition == expected {
        return Ok(event);
    }
    Err(Poison::WrongPartition {
        account: event.account_id.as_str().to_string(),
        key: key.map(|k| String::from_utf8_lossy(k).into_owned()),
        partition,
        expected,
        partitions,
    })
}

impl<S: BatchSink> LoopContext<S> {
    /// Hands the batch in hand to the sink on a thread of its own and returns, so that
    /// the loop reads the next batch while this one is applied (the broker's fetches and
    /// the decoding overlap the store's writes). Waits first for the batch before it,
    /// and commits that one's offsets.
    fn start_apply(&self, consumer: &BaseConsumer<Self>) -> Result<(), ConsumeError> {
        self.finish_in_flight(consumer, CommitMode::Async)?;
        let batch = {
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
            batch
        };
        if batch.is_empty() {
            return Ok(());
        }
        *self.in_flight() = Some(batch.next_offsets.clone());
        self.applier.start(batch)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<BTreeMap<i32, i64>>> {
        self.in_flight
            .lock()
            .expect("the in-flight lock is only taken by the consumer thread, which does not panic while holding it")
    }

    /// Commits the batch applied in the background if it is done; never waits.
    fn commit_if_applied(&self, consumer: &BaseConsumer<Self>) -> Result<(), ConsumeError> {
        if let Some(next_offsets) = self.take_in_flight(false)? {
            self.commit(consumer, &next_offsets, CommitMode::Async);
        }
        Ok(())
    }

    /// Waits for the batch applied in the background, if any, and returns its offsets
    /// once durable; the caller decides whether to commit them.
    fn wait_in_flight(&self) -> Result<Option<BTreeMap<i32, i64>>, ConsumeError> {
        self.take_in_flight(true)
    }

    /// Waits for the batch applied in the background, if any, and commits its offsets.
    fn finish_in_flight(
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
    fn take_in_flight(&self, wait: bool) -> Result<Option<BTreeMap<i32, i64>>, ConsumeError> {
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
    fn commit(
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
    fn apply_and_commit(
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

impl<S: BatchSink> LoopContext<S> {
    /// Pauses in librdkafka the partitions that must not be applied now and resumes the
    /// others, reading a resumed partition again from its position if anything of it was
    /// dropped meanwhile; acknowledges a hold once no batch is in flight.
    fn obey_pause(
        &self,
        consumer: &BaseConsumer<Self>,
        settings: &ConsumerSettings,
    ) -> Result<(), ConsumeError> {
        if self.pause.hold_pending() {
            self.finish_in_flight(consumer, CommitMode::Async)?;
            self.pause.acknowledge_hold();
            info!("holding: no batch in flight, nothing applied until the rebuild releases it");
        }
        let mut st = self.state();
        let stopped = self.pause.stopped_among(st.positions.keys().copied());
        let to_pause: Vec<i32> = stopped.difference(&st.paused).copied().collect();
        let to_resume: Vec<i32> = st.paused.difference(&stopped).copied().collect();
        if to_pause.is_empty() && to_resume.is_empty() {
            return Ok(());
        }
        let list = |parts: &[i32]| {
            let mut tpl = TopicPartitionList::with_capacity(parts.len());
            for &p in parts {
                tpl.add_partition(&settings.topic, p);
            }
            tpl
        };
        // A failure leaves the partition as it was, and is tried again next time round.
        if !to_pause.is_empty() {
            match consumer.pause(&list(&to_pause)) {
                Ok(()) => {
                    st.paused.extend(to_pause.iter().copied());
                    info!(partitions = ?to_pause, "paused: applying stopped, queries still served");
                }
                Err(e) => warn!(partitions = ?to_pause, error = %e, "pausing failed; trying again"),
            }
        }
        for p in to_resume {
            // Anything dropped while paused is read again: the position is set back first,
            // while the partition still fetches nothing.
            if st.dropped.contains(&p) {
                let from = st.positions.get(&p).copied().unwrap_or(0);
                if let Err(e) = consumer.seek(
                    &settings.topic,
                    p,
                    Offset::Offset(from),
                    Duration::from_secs(5),
                ) {
                    warn!(partition = p, from, error = %e, "cannot set the paused partition back to its position; it stays paused, trying again");
                    continue;
                }
            }
            match consumer.resume(&list(&[p])) {
                Ok(()) => {
                    st.paused.remove(&p);
                    st.dropped.remove(&p);
                    info!(partition = p, "resumed applying");
                }
                Err(e) => warn!(partition = p, error = %e, "resuming failed; trying again"),
            }
        }
        self.metrics.paused_partitions.set(st.paused.len() as i64);
        Ok(())
    }
}

/// How many batches' worth of events may wait for their partitions' committed offsets
/// before the loop stops reading.
const HELD_BATCHES: usize = 4;

/// How often the group's committed offsets of newly assigned partitions are asked for
/// while the brokers do not answer.
const COMMITTED_RETRY: Duration = Duration::from_secs(1);

impl<S: BatchSink> LoopContext<S> {
    /// Learns the group's committed offset of partitions assigned since the last call
    /// (never inside the rebalance callback: it is a round trip to the coordinator).
    /// Until it is known, nothing is committed for them.
    fn learn_committed(
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
    fn commit_stored(&self, consumer: &BaseConsumer<Self>) -> Result<(), ConsumeError> {
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

/// Where batches go: a store that applies a batch and its offsets durably, in one go.
pub trait BatchSink: Send + Sync + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The next offset to read for this partition, as durably stored; `None` to start
    /// from the beginning of the log.
    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Self::Error>;

    /// Applies the batch and stores its next offsets atomically, and returns only once
    /// both are durable. The follow-ups of the events at or above `batch.emit_from` (the
    /// group's committed offset) are in the log before that.
    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), Self::Error>;

    /// Where the group's consumer must read this partition from again, below its stored
    /// offset, so that every event at or above the group's `committed` offset has had its
    /// follow-ups written (by this store's owner or an earlier one); `None`: nowhere.
    fn emit_rewind(
        &self,
        _topic: &str,
        _partition: i32,
        _committed: i64,
    ) -> Result<Option<i64>, Self::Error> {
        Ok(None)
    }

    /// The offset a clean stop commits for this partition: as far as the store holds its
    /// events' effects and knows their follow-ups to be in the log.
    fn committable_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Self::Error> {
        self.stored_offset(topic, partition)
    }

    /// These partitions are being assigned to this consumer: called before their stored
    /// offsets are read, so that anything else that writes them stops first.
    fn before_assign(&self, _partitions: &[i32]) {}

    /// These partitions are now assigned to this consumer.
    fn on_assigned(&self, _partitions: &[i32]) {}

    /// These partitions are no longer assigned to this consumer.
    fn on_revoked(&self, _partitions: &[i32]) {}

    /// This consumer was fenced: another client joined the group with its
    /// `group.instance.id`. `Err`, saying why, when that is another live process
    /// claiming the same identity: the loop then stops rather than take the id back.
    /// `Ok` to replace the client and go on, as after any error fatal to one client
    /// (nobody else is known to hold the id). Blocking: it may wait a moment to learn.
    fn on_fenced(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The operator's properties weaken a guarantee.
    #[error(transparent)]
    Config(#[from] ConflictingProperty),
    /// The consumer could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The store failed; nothing past its last durable batch was committed.
    #[error("the store failed, no offset was committed past its durable state: {0}")]
    Sink(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored offset lies outside the log: the topic was recreated or truncated under
    /// this store.
    #[error("a stored offset is outside the log ({0}): was the topic recreated? Rebuild the projection: stop the projector, delete its data directory, start it")]
    OffsetOutOfRange(String),
    /// The dead-letter topic kept refusing an undecodable event.
    #[error("cannot write the undecodable event at partition {partition} offset {offset} to the dead-letter topic: {error}")]
    DeadLetter {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// The last error.
        error: String,
    },
    /// The consumer's group membership has not been steady for [`GROUP_STALL`]: a
    /// client wedged after a broker froze or restarted (its coordinator requests queue
    /// and never leave), which only a new client ends.
    #[error("the consumer group membership has not been steady for {0:?} (now {1}); the client is wedged")]
    GroupStalled(Duration, String),
    /// Another live process joined the group with this instance's id and fenced it out
    /// (see [`BatchSink::on_fenced`]).
    #[error("fenced out of the consumer group: {0}")]
    Fenced(String),
    /// The consumer thread panicked; nothing past the store's durable state was committed.
    #[error("the consumer thread panicked: {0}")]
    Panicked(String),
    /// An event that cannot be applied, under [`PoisonPolicy::Halt`].
    #[error("the event at partition {partition} offset {offset} cannot be applied ({}): {error}; halting without moving past it (--on-poison halt)", error.kind())]
    Poison {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why it cannot be applied.
        error: Poison,
    },
}
