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
//! This module is the loop itself: [`run`] keeps a consumer going,
//! `consume_with_one_client` is one librdkafka client's life (subscribe, poll, and on a
//! clean stop the final commit and the leave), and `poll_loop` fills the batch in hand.
//! Around it:
//!
//! - `commit`: `start_apply` hands a batch to the sink on a thread of its own, so that
//!   the next batch is read and decoded while this one is written, and its offsets are
//!   committed once the sink returns; at most one batch is in flight, and every other
//!   apply (a revoke, a poison, shutdown: `apply_and_commit`) first waits for it, so
//!   applies never overlap and offsets are committed only after their batch is durable;
//!   also the group's committed offset of newly assigned partitions (`learn_committed`)
//!   and the final commit (`commit_stored`);
//! - `context`: the state the loop shares with librdkafka's callbacks, and the
//!   callbacks: the rebalance, which starts partitions at their stored offsets and
//!   applies a revoked partition's batch in hand before giving it up, and the
//!   statistics, which feed `health`;
//! - `health`: the group membership as the statistics report it, and when a client is
//!   wedged ([`GROUP_STALL`]);
//! - `poison`: what becomes of an event that does not decode (parked, dead letter or
//!   halt);
//! - `pause`: an operator's pause of some partitions, and a rebuild's hold of all of
//!   them, which the loop obeys at batch boundaries (`obey_pause`);
//! - `restart`: when a consumer is given up for a new one (a fatal client error, a
//!   wedged membership, a fencing with no twin), and how the old one is retired;
//! - `sink`: what the loop needs of the store ([`BatchSink`]) and how it stops
//!   ([`ConsumeError`]);
//! - `settings`: the loop's settings and the librdkafka properties they become;
//! - `metrics`: the loop's counters.

mod commit;
mod context;
mod health;
mod metrics;
mod pause;
mod poison;
mod restart;
mod settings;
mod sink;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_domain::partitioning::partition_of;
use ledger_domain::{Event, Record};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec;
use crate::config::KafkaConfig;
use crate::producer::EventProducer;
use context::LoopContext;
pub(crate) use poison::parks;
use poison::{deal_with_poison, Poisoned};
use restart::{retire, RestartPolicy};

pub use context::panic_text;
pub use health::GROUP_STALL;
pub use metrics::ConsumerMetrics;
pub use pause::PauseControl;
pub use poison::{Poison, PoisonPolicy};
pub use settings::ConsumerSettings;
pub use sink::{BatchSink, ConsumeError};

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
        // While a full batch waits for the one being applied, the loop reads on, up to
        // READ_AHEAD batches in hand: the next batch then holds a fair share of several
        // partitions, applied in parallel, instead of the one partition a backlog's
        // fetch happens to bring.
        let reading_ahead =
            full && batch_len < READ_AHEAD * settings.batch_max_events && ctx.applying();
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
        let polled = if full && !reading_ahead {
            None
        } else if reading_ahead {
            consumer.poll(READ_AHEAD_POLL)
        } else {
            consumer.poll(wait)
        };
        // A batch ends when full, or past the wait at the first empty poll: events already
        // fetched still join it, so a backlog makes full batches, which cost far less per
        // event.
        if (full && !reading_ahead)
            || (polled.is_none() && batch_started.is_some() && (wait.is_zero() || full))
        {
            batch_len = ctx.start_apply(consumer, settings.batch_max_events)?;
            batch_started = (batch_len > 0).then(Instant::now);
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

/// How many batches' worth of events may wait for their partitions' committed offsets
/// before the loop stops reading.
const HELD_BATCHES: usize = 4;
/// How many batches' worth of events the loop reads ahead while a batch is applied.
/// Below HELD_BATCHES, so that events held for a committed offset stop the reading
/// first.
const READ_AHEAD: usize = 3;
/// How long a poll waits while the loop reads ahead: it also notices the applied batch.
const READ_AHEAD_POLL: Duration = Duration::from_millis(1);
