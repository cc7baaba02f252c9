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
//! The loop runs on a thread of its own (it blocks in `poll`), so a rebalance callback,
//! which librdkafka runs inside `poll`, sees the batch in hand without any locking
//! contention.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ledger_domain::{Batch, Record};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::codec::{self, DecodeError};
use crate::config::{ConflictingProperty, KafkaConfig};
use crate::producer::{DeadLetter, EventProducer, ProduceError};
use crate::stats::Stats;

/// Where batches go: a store that applies a batch and its offsets durably, in one go.
pub trait BatchSink: Send + Sync + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The next offset to read for this partition, as durably stored; `None` to start
    /// from the beginning of the log.
    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, Self::Error>;

    /// Applies the batch and stores its next offsets atomically, and returns only once
    /// both are durable.
    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), Self::Error>;

    /// These partitions are now assigned to this consumer.
    fn on_assigned(&self, _partitions: &[i32]) {}

    /// These partitions are no longer assigned to this consumer.
    fn on_revoked(&self, _partitions: &[i32]) {}
}

/// What to do with an event that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PoisonPolicy {
    /// Write it to the dead-letter topic and move on once that is acknowledged.
    #[default]
    DeadLetter,
    /// Stop the consumer without moving past it.
    Halt,
}

/// How the loop reads.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// The topic to read.
    pub topic: String,
    /// Where undecodable events go.
    pub dlq_topic: String,
    /// The consumer group.
    pub group_id: String,
    /// Static group membership (`group.instance.id`): a restarted instance takes its
    /// partitions back at once instead of waiting for a rebalance.
    pub instance_id: Option<String>,
    /// Most events in one batch.
    pub batch_max_events: usize,
    /// Longest a batch waits for more events once it has one. Events already fetched
    /// still join it past that, up to `batch_max_events`.
    pub batch_max_wait: Duration,
    /// What to do with undecodable events.
    pub on_poison: PoisonPolicy,
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
    /// The consumer thread panicked; nothing past the store's durable state was committed.
    #[error("the consumer thread panicked: {0}")]
    Panicked(String),
    /// An undecodable event under [`PoisonPolicy::Halt`].
    #[error("undecodable event at partition {partition} offset {offset}: {error}; halting without moving past it (--on-poison halt)")]
    Poison {
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// Why it does not decode.
        error: DecodeError,
    },
}

impl ConsumeError {
    /// Whether the error ended only the librdkafka client (it is fatal to that instance,
    /// e.g. a fenced static member), so that a new consumer can carry on from the store.
    pub fn is_client_fatal(&self) -> bool {
        matches!(
            self,
            ConsumeError::Kafka(KafkaError::MessageConsumptionFatal(_))
                | ConsumeError::GroupStalled(..)
        )
    }
}

/// Counters of the loop itself; the sink keeps its own.
#[derive(Clone, Default)]
pub struct ConsumerMetrics {
    /// Events below the stored offset, skipped.
    pub redelivered: Counter,
    /// Undecodable events, by what became of them.
    pub poison: Family<Vec<(String, String)>, Counter>,
    /// Offset commits to Kafka that failed (harmless: the store is the record).
    pub commit_failures: Counter,
    /// Rebalances, by kind.
    pub rebalances: Family<Vec<(String, String)>, Counter>,
    /// Consumers recreated after a fatal client error or a wedged group membership.
    pub restarts: Counter,
}

impl ConsumerMetrics {
    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "projector_redelivered_events",
            "Events delivered below the stored offset and skipped",
            self.redelivered.clone(),
        );
        registry.register(
            "projector_poison_events",
            "Undecodable events, by action (dead_lettered or halted)",
            self.poison.clone(),
        );
        registry.register(
            "projector_offset_commit_failures",
            "Failed offset commits to Kafka; harmless, progress is kept in the store",
            self.commit_failures.clone(),
        );
        registry.register(
            "projector_rebalances",
            "Partition assignments and revocations",
            self.rebalances.clone(),
        );
        registry.register(
            "projector_consumer_restarts",
            "Kafka consumers recreated after a fatal client error or a wedged group membership",
            self.restarts.clone(),
        );
    }
}

struct LoopState {
    /// Events read but not yet applied.
    pending: Batch,
    /// Next offset expected per assigned partition (applied or pending).
    positions: HashMap<i32, i64>,
    /// An error raised inside a rebalance callback, for the loop to return.
    fatal: Option<ConsumeError>,
}

struct LoopContext<S: BatchSink> {
    sink: Arc<S>,
    topic: String,
    metrics: ConsumerMetrics,
    state: Mutex<LoopState>,
    group: Mutex<GroupHealth>,
    /// Set once this client is being replaced: its callbacks must not touch the store.
    retired: AtomicBool,
}

/// How long the group membership may stay other than steady, with statistics arriving
/// all along, before the client is taken for wedged. A rebalance is over within
/// seconds; a JoinGroup that waits for a slow member can take longer, which is why this
/// is a minute and not a session timeout. (A wedged client was seen to cycle through
/// states, so a change of state does not restart the clock.)
pub const GROUP_STALL: Duration = Duration::from_secs(60);

/// A gap between two statistics reports longer than this means the loop was not
/// polling (a long apply, a dead letter being retried): what the group did meanwhile
/// is unknown, so the clock starts again.
const STATS_GAP: Duration = Duration::from_secs(5);

/// The group membership as librdkafka's statistics report it, once a second.
#[derive(Debug, Default)]
struct GroupHealth {
    /// Since when it has not been `up`/`steady`. None until the first report: without
    /// statistics nothing is judged.
    stuck_since: Option<Instant>,
    last_state: String,
    last_report: Option<Instant>,
}

impl GroupHealth {
    fn report(&mut self, state: &str, join_state: &str, now: Instant) {
        let steady = state == "up" && join_state == "steady";
        let gap = self.last_report.is_none_or(|t| now - t > STATS_GAP);
        self.stuck_since = if steady {
            None
        } else if gap {
            Some(now)
        } else {
            self.stuck_since.or(Some(now))
        };
        self.last_state = format!("{state}/{join_state}");
        self.last_report = Some(now);
    }

    /// How long it has not been steady, once that is past [`GROUP_STALL`].
    fn stalled(&self, now: Instant) -> Option<Duration> {
        let since = self.stuck_since?;
        (now - since >= GROUP_STALL).then(|| now - since)
    }
}

impl<S: BatchSink> LoopContext<S> {
    fn state(&self) -> MutexGuard<'_, LoopState> {
        // Only the consumer thread takes this lock; a poisoned lock means that thread
        // panicked mid-update, after which the process is going down anyway.
        self.state.lock().expect("the loop state lock is only taken by the consumer thread, which does not panic while holding it")
    }

    /// Applies the pending events of `only` (or of every partition) and commits their
    /// offsets once the sink has made them durable.
    fn apply_and_commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&BTreeSet<i32>>,
        mode: CommitMode,
    ) -> Result<(), ConsumeError> {
        let batch = {
            let mut st = self.state();
            match only {
                Some(parts) => st.pending.split_off_partitions(parts),
                None => std::mem::take(&mut st.pending),
            }
        };
        if batch.is_empty() {
            return Ok(());
        }
        self.sink
            .apply_batch(&self.topic, &batch)
            .map_err(|e| ConsumeError::Sink(Box::new(e)))?;
        let mut tpl = TopicPartitionList::with_capacity(batch.next_offsets.len());
        for (&p, &next) in &batch.next_offsets {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                .expect("an explicit offset is always valid in a partition list");
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            self.metrics.commit_failures.inc();
            debug!(error = %e, "offset commit failed; progress is kept in the store");
        }
        Ok(())
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
    fn group_stalled(&self) -> Option<ConsumeError> {
        let h = self
            .group
            .lock()
            .expect("the group health lock is never held across a panic");
        h.stalled(Instant::now())
            .map(|d| ConsumeError::GroupStalled(d, h.last_state.clone()))
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
            // Being replaced: give everything up, apply nothing.
            let res = if cooperative && err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
            {
                consumer.incremental_unassign(tpl)
            } else {
                consumer.unassign()
            };
            if let Err(e) = res {
                debug!(error = %e, "unassign by a retired consumer failed");
            }
            return;
        }
        let parts: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics
                    .rebalances
                    .get_or_create(&vec![("kind".into(), "assign".into())])
                    .inc();
                let mut starts = Vec::with_capacity(parts.len());
                for &p in &parts {
                    match self.sink.stored_offset(&self.topic, p) {
                        Ok(stored) => {
                            let offset = stored.map_or(Offset::Beginning, Offset::Offset);
                            tpl.set_partition_offset(&self.topic, p, offset)
                                .expect("the partition is in the list we were handed");
                            self.state().positions.insert(p, stored.unwrap_or(0));
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
                    for p in &revoked {
                        st.positions.remove(p);
                    }
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
                drop(st);
                self.sink.on_revoked(&all);
            }
        }
    }
}

/// Reads `settings.topic` into `sink` until `shutdown` is cancelled or an error stops
/// it. Blocking: run it on a thread of its own, inside a tokio runtime's context (the
/// dead-letter producer needs one).
///
/// On shutdown it stops fetching, applies and commits the batch in hand, and leaves the
/// group.
pub fn run<S: BatchSink>(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    sink: Arc<S>,
    dead_letters: &EventProducer,
    metrics: ConsumerMetrics,
    shutdown: CancellationToken,
) -> Result<(), ConsumeError> {
    let mut defaults: Vec<(&str, &str)> = vec![
        ("client.id", "ledger-projector"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("session.timeout.ms", "10000"),
        ("enable.partition.eof", "false"),
        ("socket.connection.setup.timeout.ms", "3000"),
        ("reconnect.backoff.max.ms", "1000"),
        // Bound librdkafka's read-ahead (64 MiB per partition by default) so the
        // projector's memory stays bounded; batches of a few thousand need little.
        ("queued.min.messages", "20000"),
        ("queued.max.messages.kbytes", "8192"),
        // The group state in the statistics tells a wedged client (see GROUP_STALL).
        ("statistics.interval.ms", "1000"),
    ];
    if let Some(id) = &settings.instance_id {
        defaults.push(("group.instance.id", id));
    }
    let cfg = kafka.client_config(
        &defaults,
        &[
            ("group.id", &settings.group_id, "set it with --group-id"),
            (
                "enable.auto.commit",
                "false",
                "offsets are committed only after the store is durable",
            ),
            (
                "enable.auto.offset.store",
                "false",
                "offsets are committed explicitly",
            ),
            (
                "auto.offset.reset",
                "error",
                "every partition starts at an explicit offset from the store; one outside the log is an error, never a silent jump",
            ),
        ],
    )?;
    let ctx = LoopContext {
        sink,
        topic: settings.topic.clone(),
        metrics,
        state: Mutex::new(LoopState {
            pending: Batch::default(),
            positions: HashMap::new(),
            fatal: None,
        }),
        group: Mutex::new(GroupHealth::default()),
        retired: AtomicBool::new(false),
    };
    let consumer: BaseConsumer<LoopContext<S>> = cfg.create_with_context(ctx)?;
    consumer.subscribe(&[&settings.topic])?;
    info!(topic = %settings.topic, group = %settings.group_id, "consuming");

    let result = poll_loop(&consumer, settings, dead_letters, &shutdown);
    if result.as_ref().is_err_and(ConsumeError::is_client_fatal) {
        retire(consumer);
        return result;
    }
    let ctx = consumer.context();
    let result = result.and_then(|()| ctx.apply_and_commit(&consumer, None, CommitMode::Sync));
    if result.is_ok() {
        // Leave the group now, so the partitions move to another instance at once.
        consumer.unsubscribe();
    }
    // Dropping the consumer closes it, serving the final revoke through our callback.
    drop(consumer);
    result
}

/// How long a retired consumer may take to close before it is left to close alone.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Ends a client that is fenced or wedged, so that a new one can take over from the
/// store. What it fetched and did not apply is dropped (the new client reads it again
/// from the stored offsets), and it applies nothing more: its rebalance callback only
/// unassigns. Closing a wedged client can wait on a coordinator that never answers
/// (rdkafka's drop polls until closed), so it closes on a thread of its own, and after
/// [`RETIRE_WAIT`] it is left to finish there.
fn retire<S: BatchSink>(consumer: BaseConsumer<LoopContext<S>>) {
    let ctx = consumer.context();
    ctx.retired.store(true, Ordering::Release);
    let all: Vec<i32> = {
        let mut st = ctx.state();
        st.pending = Batch::default();
        st.positions.drain().map(|(p, _)| p).collect()
    };
    // This client is done: its partitions are no longer served by it.
    ctx.sink.on_revoked(&all);
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("retired-consumer".into())
        .spawn(move || {
            drop(consumer);
            let _ = closed_tx.send(());
        });
    match spawned {
        Ok(_) => {
            if closed_rx.recv_timeout(RETIRE_WAIT).is_err() {
                warn!(wait = ?RETIRE_WAIT, "the retired consumer has not closed; leaving it to close in the background");
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot start a thread to close the retired consumer; it is leaked")
        }
    }
}

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
        let polled = if full { None } else { consumer.poll(wait) };
        // A batch ends when full, or past the wait at the first empty poll: events already
        // fetched still join it, so a backlog makes full batches, which cost far less per
        // event.
        if full || (polled.is_none() && batch_started.is_some() && wait.is_zero()) {
            ctx.apply_and_commit(consumer, None, CommitMode::Async)?;
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
                KafkaError::MessageConsumptionFatal(_) => return Err(ConsumeError::Kafka(e)),
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
        let expected = ctx.state().positions.get(&partition).copied();
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
        match codec::decode(msg.payload().unwrap_or_default()) {
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

/// Where the loop stands after an undecodable event it did not stop at.
enum Poisoned {
    /// Written to the dead-letter topic: its partition has moved past it.
    DeadLettered,
    /// Shutdown came before the dead-letter topic acknowledged it.
    ShuttingDown,
}

/// Deals with an event that does not decode, as `settings.on_poison` says: halts (an
/// error, once the events before it are durable), or writes it to the dead-letter topic
/// and moves its partition past it.
fn deal_with_poison<S: BatchSink>(
    consumer: &BaseConsumer<LoopContext<S>>,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    shutdown: &CancellationToken,
    msg: &BorrowedMessage<'_>,
    error: DecodeError,
) -> Result<Poisoned, ConsumeError> {
    let ctx = consumer.context();
    let (partition, offset) = (msg.partition(), msg.offset());
    match settings.on_poison {
        PoisonPolicy::Halt => {
            ctx.metrics
                .poison
                .get_or_create(&vec![("action".into(), "halted".into())])
                .inc();
            error!(partition, offset, %error, "undecodable event; halting (--on-poison halt)");
            // Events before it are fine: make them durable, stop at the poison.
            ctx.apply_and_commit(consumer, None, CommitMode::Sync)?;
            Err(ConsumeError::Poison {
                partition,
                offset,
                error,
            })
        }
        PoisonPolicy::DeadLetter => {
            let dead = DeadLetter {
                dlq_topic: &settings.dlq_topic,
                source_topic: &settings.topic,
                source_partition: partition,
                source_offset: offset,
                key: msg.key(),
                payload: msg.payload(),
                error: &error.to_string(),
                error_kind: error.kind(),
            };
            match send_dead_letter(dead_letters, &dead, shutdown) {
                DeadLetterOutcome::Sent => {}
                DeadLetterOutcome::ShuttingDown => return Ok(Poisoned::ShuttingDown),
                DeadLetterOutcome::Failed(error) => {
                    ctx.apply_and_commit(consumer, None, CommitMode::Sync)?;
                    return Err(ConsumeError::DeadLetter {
                        partition,
                        offset,
                        error,
                    });
                }
            }
            ctx.metrics
                .poison
                .get_or_create(&vec![("action".into(), "dead_lettered".into())])
                .inc();
            warn!(partition, offset, %error, dlq = %settings.dlq_topic, "undecodable event sent to the dead-letter topic");
            let mut st = ctx.state();
            st.pending.next_offsets.insert(partition, offset + 1);
            st.positions.insert(partition, offset + 1);
            Ok(Poisoned::DeadLettered)
        }
    }
}

/// How long a dead letter is retried before the consumer gives up: well inside
/// librdkafka's `max.poll.interval.ms` (5 min), since nothing is polled meanwhile.
const DEAD_LETTER_DEADLINE: Duration = Duration::from_secs(120);

enum DeadLetterOutcome {
    Sent,
    ShuttingDown,
    Failed(String),
}

/// Sends a dead letter, retrying with backoff until it is acknowledged, shutdown comes,
/// or [`DEAD_LETTER_DEADLINE`] passes (a missing ACL or an oversized message never
/// heals: better a clear stop than a silent stall of every partition).
fn send_dead_letter(
    producer: &EventProducer,
    dead: &DeadLetter<'_>,
    shutdown: &CancellationToken,
) -> DeadLetterOutcome {
    let handle = tokio::runtime::Handle::current();
    let deadline = Instant::now() + DEAD_LETTER_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match handle.block_on(producer.send_dead_letter(dead)) {
            Ok(pos) => {
                debug!(
                    dlq_partition = pos.partition,
                    dlq_offset = pos.offset,
                    "dead letter acknowledged"
                );
                return DeadLetterOutcome::Sent;
            }
            Err(e) => {
                let e: ProduceError = e;
                warn!(error = %e, partition = dead.source_partition, offset = dead.source_offset,
                      "dead-letter topic did not acknowledge; retrying");
                e.to_string()
            }
        };
        if shutdown.is_cancelled() {
            return DeadLetterOutcome::ShuttingDown;
        }
        if Instant::now() >= deadline {
            return DeadLetterOutcome::Failed(error);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_is_stalled_only_after_a_minute_unsteady_with_reports_flowing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = GroupHealth::default();
        assert_eq!(h.stalled(at(1000)), None, "no statistics, no verdict");
        // A rebalance passes through states and ends steady.
        h.report("up", "wait-join", at(0));
        h.report("up", "wait-sync", at(1));
        h.report("up", "steady", at(2));
        assert_eq!(h.stalled(at(100)), None);
        // Wedged, cycling through states, reports every second.
        for s in 10..=70 {
            let state = if s % 3 == 0 { "wait-coord" } else { "up" };
            h.report(state, "wait-join", at(s));
        }
        assert_eq!(h.stalled(at(69)), None);
        assert_eq!(h.stalled(at(70)), Some(Duration::from_secs(60)));
        // Steady again: healthy.
        h.report("up", "steady", at(71));
        assert_eq!(h.stalled(at(200)), None);
        // So does a gap in the reports (the loop was not polling).
        let mut h = GroupHealth::default();
        h.report("up", "wait-join", at(0));
        h.report("up", "wait-join", at(100));
        assert_eq!(h.stalled(at(101)), None);
    }
}
