//! Tailing partitions read-only into a [`BatchSink`], outside the consumer group.
//!
//! A projector that hands a partition over keeps its state fresh this way while the new
//! owner catches up, so that reads of the partition never stop (the `draining` role).
//! A follower never commits an offset and never writes to the log: the group's owner
//! does both. It applies to the sink exactly as the group's loop does (in order, each
//! batch with its next offsets), so the store stays consistent with its stored offsets,
//! and an event that does not decode is stepped over (the owner dead-letters it).
//!
//! Partitions are followed from, and stopped at, the caller's word: [`Follower::stop`]
//! returns only once nothing of the partition is being applied, so that the group's
//! loop can take the partition back and read its stored offset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger_domain::{Batch, Record};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::codec;
use crate::config::KafkaConfig;
use crate::consume::{in_its_place, parks, BatchSink, ConsumerSettings, Poison};

/// Most events one follower batch applies.
const BATCH_MAX: usize = 2000;
/// Longest a follower batch waits for more events once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(5);

enum Order {
    Follow {
        partition: i32,
        from: i64,
    },
    Stop {
        partition: i32,
        done: mpsc::SyncSender<()>,
    },
}

/// A thread that tails partitions into a sink, read-only.
pub struct Follower {
    orders: mpsc::Sender<Order>,
    following: Arc<Mutex<BTreeSet<i32>>>,
}

impl Follower {
    /// Starts the follower's thread, following nothing yet. It ends at `shutdown`.
    ///
    /// A `rebuild` follower replays what the group's owners already decided: it steps
    /// over an event that cannot be applied (its owner dead-lettered it) instead of
    /// stopping there.
    pub fn start<S: BatchSink>(
        kafka: &KafkaConfig,
        settings: &ConsumerSettings,
        sink: Arc<S>,
        shutdown: CancellationToken,
        rebuild: bool,
    ) -> Result<Self, KafkaError> {
        let client_id = if rebuild {
            "ledger-rebuild"
        } else {
            "ledger-follower"
        };
        let consumer: BaseConsumer = kafka
            .client_config(
                &[
                    // librdkafka wants a group id for a consumer; with no subscription
                    // and no commits, the group is never joined or written.
                    ("group.id", "ledger-follower"),
                    ("client.id", client_id),
                    ("socket.connection.setup.timeout.ms", "3000"),
                    ("reconnect.backoff.max.ms", "1000"),
                    ("queued.min.messages", "5000"),
                    ("queued.max.messages.kbytes", "4096"),
                ],
                &[
                    ("enable.auto.commit", "false", "a follower never commits"),
                    (
                        "auto.offset.reset",
                        "error",
                        "a follower starts at the store's offset or not at all",
                    ),
                ],
            )
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
            .create()?;
        let (orders, inbox) = mpsc::channel();
        let following = Arc::new(Mutex::new(BTreeSet::new()));
        let run = Run {
            consumer,
            topic: settings.topic.clone(),
            settings: settings.clone(),
            sink,
            inbox,
            following: following.clone(),
            positions: BTreeMap::new(),
            pending: Batch::default(),
            shutdown,
            step_over_poison: rebuild,
        };
        std::thread::Builder::new()
            .name("ledger-follow".into())
            .spawn(move || run.run())
            .map_err(|e| KafkaError::ClientCreation(format!("cannot start a thread: {e}")))?;
        Ok(Follower { orders, following })
    }

    /// Tails `partition` from offset `from` (its stored next offset) on.
    pub fn follow(&self, partition: i32, from: i64) {
        self.following_set().insert(partition);
        let _ = self.orders.send(Order::Follow { partition, from });
    }

    /// Stops tailing `partition`, and returns once nothing of it is being applied.
    pub fn stop(&self, partition: i32) {
        if !self.following_set().contains(&partition) {
            return;
        }
        let (done, stopped) = mpsc::sync_channel(1);
        if self.orders.send(Order::Stop { partition, done }).is_ok() {
            // The thread answers within one poll and one batch, having taken the
            // partition out of the set itself (so that a `follow` racing this stop is not
            // undone here); it is gone when the sender is dropped, which also ends the wait.
            let _ = stopped.recv();
        }
    }

    /// Whether `partition` is being tailed (it stops by itself when its store fails or
    /// its offset leaves the log).
    pub fn is_following(&self, partition: i32) -> bool {
        self.following_set().contains(&partition)
    }

    fn following_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.following
            .lock()
            .expect("the following set is never held across a panic")
    }
}

struct Run<S: BatchSink> {
    consumer: BaseConsumer,
    topic: String,
    settings: ConsumerSettings,
    sink: Arc<S>,
    inbox: mpsc::Receiver<Order>,
    following: Arc<Mutex<BTreeSet<i32>>>,
    /// Next offset expected per followed partition.
    positions: BTreeMap<i32, i64>,
    pending: Batch,
    shutdown: CancellationToken,
    /// Step over events that cannot be applied instead of stopping there (a rebuild).
    step_over_poison: bool,
}

impl<S: BatchSink> Run<S> {
    fn run(mut self) {
        let mut started: Option<Instant> = None;
        while !self.shutdown.is_cancelled() {
            self.take_orders();
            let wait = match started {
                Some(t) => BATCH_WAIT.saturating_sub(t.elapsed()),
                None => Duration::from_millis(50),
            };
            let polled = if self.pending.records.len() >= BATCH_MAX {
                None
            } else {
                self.consumer.poll(wait)
            };
            match polled {
                None => {
                    if started.is_some_and(|t| t.elapsed() >= BATCH_WAIT)
                        || self.pending.records.len() >= BATCH_MAX
                    {
                        self.apply();
                        started = None;
                    }
                }
                Some(Err(e)) => {
                    if let KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::AutoOffsetReset,
                    ) = &e
                    {
                        error!(error = %e, "a followed partition's offset left the log; no longer following it");
                        self.apply();
                        let all: Vec<i32> = self.positions.keys().copied().collect();
                        for p in all {
                            self.drop_partition(p);
                        }
                    } else {
                        debug!(error = %e, "follower consumer error");
                    }
                }
                Some(Ok(msg)) => {
                    let (partition, offset) = (msg.partition(), msg.offset());
                    let Some(&expected) = self.positions.get(&partition) else {
                        continue;
                    };
                    if msg.topic() != self.topic || offset < expected {
                        continue;
                    }
                    let event = codec::decode(msg.payload().unwrap_or_default())
                        .map_err(Poison::from)
                        .and_then(|e| in_its_place(&self.settings, msg.key(), partition, e));
                    match event {
                        Ok(event) => self.pending.records.push(Record {
                            partition,
                            offset,
                            event,
                        }),
                        Err(error) => {
                            if let Some(u) = parks(
                                &self.settings,
                                msg.key(),
                                partition,
                                offset,
                                msg.payload(),
                                &error,
                            ) {
                                // It parks its account here too, as on the owner.
                                self.pending.unreadable.push(u);
                            } else if self.step_over_poison {
                                // A rebuild replays what the owner already decided: it
                                // dead-lettered the event and moved on (a halted owner never
                                // passed it, and the rebuild's comparison stops short of it).
                                debug!(partition, offset, %error, "an event that cannot be applied, stepped over as its owner did");
                            } else {
                                // What becomes of it is the owner's decision (dead letter, or
                                // halt); a follower never moves past it: it stops following.
                                warn!(partition, offset, %error, "an event that cannot be applied; no longer following the partition (its owner deals with it)");
                                self.apply();
                                self.drop_partition(partition);
                                continue;
                            }
                        }
                    }
                    self.pending.next_offsets.insert(partition, offset + 1);
                    self.positions.insert(partition, offset + 1);
                    started.get_or_insert_with(Instant::now);
                }
            }
        }
        self.apply();
    }

    fn take_orders(&mut self) {
        while let Ok(order) = self.inbox.try_recv() {
            match order {
                Order::Follow { partition, from } => {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from))
                        .expect("an explicit offset is always valid in a partition list");
                    if let Err(e) = self.consumer.incremental_assign(&tpl) {
                        error!(partition, error = %e, "cannot follow the partition");
                        self.forget(partition);
                        continue;
                    }
                    self.positions.insert(partition, from);
                    info!(partition, from, "following the partition read-only");
                }
                Order::Stop { partition, done } => {
                    // What was read of it is applied first: the state handed back is
                    // exactly its stored offset's.
                    self.apply();
                    self.drop_partition(partition);
                    let _ = done.send(());
                }
            }
        }
    }

    fn drop_partition(&mut self, partition: i32) {
        if self.positions.remove(&partition).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.topic, partition);
            if let Err(e) = self.consumer.incremental_unassign(&tpl) {
                debug!(partition, error = %e, "unassigning a followed partition failed");
            }
            info!(partition, "no longer following the partition");
        }
        self.forget(partition);
    }

    fn forget(&self, partition: i32) {
        self.following
            .lock()
            .expect("the following set is never held across a panic")
            .remove(&partition);
    }

    fn apply(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        if batch.is_empty() {
            return;
        }
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.sink.apply_batch(&self.topic, &batch)
        }));
        let failure = match applied {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(panic) => Some(format!("panicked: {}", crate::consume::panic_text(&*panic))),
        };
        if let Some(e) = failure {
            // The store is still consistent with its offsets; stop following rather
            // than serve state that no longer moves.
            error!(error = %e, "the follower cannot apply; no longer following");
            let all: Vec<i32> = self.positions.keys().copied().collect();
            for p in all {
                self.drop_partition(p);
            }
        }
    }
}
