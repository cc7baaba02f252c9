//! The delivery path: one librdkafka client context per producer generation, whose
//! delivery callback completes the waiting request directly, and which records what the
//! supervisor needs to tell a working producer from a stuck one.
//!
//! librdkafka's own `message.timeout.ms` is the only timer: every message gets exactly
//! one delivery report (acknowledged, failed, timed out, or purged when its producer is
//! replaced), so a request never waits on a second clock. A batch request shares one
//! waiter for all its events instead of a future, a oneshot and a timer per event.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::ProducerContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::{oneshot, Notify};
use tracing::warn;

use super::ProduceError;
use crate::position::Position;
use crate::stats::Stats;

/// What one event's delivery came to.
pub(crate) type Outcome = Result<Position, ProduceError>;

/// Who is waiting for a delivery report: one request, or one slot of a batch. It is
/// completed exactly once: by the delivery report, or, if it is dropped without one
/// (a send refused after all, a client torn down with reports unserved), with
/// [`ProduceError::Canceled`], so that no request waits on a report that will not come.
pub(crate) struct Completion(Option<Waiter>);

enum Waiter {
    One(oneshot::Sender<Outcome>),
    Slot { batch: Arc<BatchWait>, index: usize },
}

impl Completion {
    pub(crate) fn one(tx: oneshot::Sender<Outcome>) -> Box<Self> {
        Box::new(Self(Some(Waiter::One(tx))))
    }

    pub(crate) fn slot(batch: Arc<BatchWait>, index: usize) -> Box<Self> {
        Box::new(Self(Some(Waiter::Slot { batch, index })))
    }

    pub(crate) fn complete(mut self, outcome: Outcome) {
        if let Some(w) = self.0.take() {
            w.complete(outcome);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.complete(Err(ProduceError::Canceled));
        }
    }
}

impl Waiter {
    fn complete(self, outcome: Outcome) {
        match self {
            // The request may have gone (the client hung up): nobody to tell.
            Waiter::One(tx) => drop(tx.send(outcome)),
            Waiter::Slot { batch, index } => batch.complete(index, outcome),
        }
    }
}

/// The one waiter of a batch request: the last delivery report wakes it.
pub(crate) struct BatchWait {
    outcomes: Mutex<Vec<Option<Outcome>>>,
    remaining: AtomicUsize,
    done: Notify,
}

impl BatchWait {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            outcomes: Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            done: Notify::new(),
        }
    }

    pub(crate) fn complete(&self, index: usize, outcome: Outcome) {
        // A report after the request gave up lands in a slot nobody reads.
        if let Some(slot) = self
            .outcomes
            .lock()
            .expect("the batch lock is never held across a panic")
            .get_mut(index)
        {
            *slot = Some(outcome);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // notify_one keeps the permit if the request is not waiting yet.
            self.done.notify_one();
        }
    }

    /// Waits until every slot has its outcome, or `limit` passes, then hands them over
    /// in order; a slot still open at the limit gets [`ProduceError::Timeout`] with
    /// `delivery_timeout`. Bounded only inside a tokio runtime.
    pub(crate) async fn wait(&self, limit: Duration, delivery_timeout: Duration) -> Vec<Outcome> {
        if self.remaining.load(Ordering::Acquire) > 0 {
            let done = self.done.notified();
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = tokio::time::timeout(limit, done).await;
            } else {
                done.await;
            }
        }
        self.outcomes
            .lock()
            .expect("the batch lock is never held across a panic")
            .iter_mut()
            .map(|o| {
                o.take()
                    .unwrap_or(Err(ProduceError::Timeout(delivery_timeout)))
            })
            .collect()
    }
}

/// What one producer generation has seen, for the supervisor. Times are milliseconds
/// since the generation was built; 0 means never.
#[derive(Debug)]
pub(crate) struct GenerationHealth {
    born: Instant,
    /// Deliveries acknowledged by the broker.
    pub acks: AtomicU64,
    /// Deliveries that failed (timed out or refused), not counting purges.
    pub failures: AtomicU64,
    last_failure_ms: AtomicU64,
    /// Since when the idempotent producer has had no producer id (from librdkafka's
    /// statistics; 0 while it has one).
    idempotence_lost_ms: AtomicU64,
    /// Whether librdkafka's statistics have reported an idempotence state at all.
    pub idempotence_known: AtomicBool,
    /// The idempotence state last reported, for log lines.
    pub idempotence_state: Mutex<String>,
}

impl GenerationHealth {
    pub(crate) fn new() -> Self {
        Self {
            born: Instant::now(),
            acks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_failure_ms: AtomicU64::new(0),
            idempotence_lost_ms: AtomicU64::new(0),
            idempotence_known: AtomicBool::new(false),
            idempotence_state: Mutex::new(String::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a time is never the 0 that means "never".
        self.born.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Option<Instant> {
        (ms > 0).then(|| self.born + Duration::from_millis(ms - 1))
    }

    /// When the last delivery failed.
    pub(crate) fn last_failure(&self) -> Option<Instant> {
        self.at(self.last_failure_ms.load(Ordering::Acquire))
    }

    /// Since when the producer has had no producer id, if it has none now.
    pub(crate) fn idempotence_lost_since(&self) -> Option<Instant> {
        self.at(self.idempotence_lost_ms.load(Ordering::Acquire))
    }

    pub(crate) fn idempotence_state(&self) -> String {
        self.idempotence_state
            .lock()
            .expect("the state lock is never held across a panic")
            .clone()
    }

    fn record(&self, outcome: &Outcome) {
        match outcome {
            Ok(_) => {
                self.acks.fetch_add(1, Ordering::AcqRel);
            }
            // Purged on purpose, when this generation was replaced: not a symptom.
            Err(ProduceError::Replaced) => {}
            Err(_) => {
                self.failures.fetch_add(1, Ordering::AcqRel);
                self.last_failure_ms.store(self.now_ms(), Ordering::Release);
            }
        }
    }
}

/// The client context of one producer generation.
pub(crate) struct DeliveryContext {
    pub health: Arc<GenerationHealth>,
    pub delivery_timeout: Duration,
}

impl ClientContext for DeliveryContext {
    // A fatal error arrives here under its underlying code, not `_FATAL`, so this
    // callback cannot tell it apart; the supervisor asks rd_kafka_fatal_error instead.
    fn error(&self, error: KafkaError, reason: &str) {
        warn!(target: "librdkafka", error = %error, %reason, "producer error");
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Some(Stats { eos: Some(eos), .. }) = Stats::parse(statistics) else {
            return;
        };
        let h = &self.health;
        h.idempotence_known.store(true, Ordering::Release);
        // "Assigned": it has a producer id and can produce.
        if eos.idemp_state == "Assigned" {
            h.idempotence_lost_ms.store(0, Ordering::Release);
        } else if h.idempotence_lost_ms.load(Ordering::Acquire) == 0 {
            h.idempotence_lost_ms.store(h.now_ms(), Ordering::Release);
        }
        *h.idempotence_state
            .lock()
            .expect("the state lock is never held across a panic") = eos.idemp_state;
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Completion>;

    fn delivery(&self, result: &DeliveryResult<'_>, completion: Box<Completion>) {
        let outcome = match result {
            Ok(m) => Ok(Position {
                partition: m.partition(),
                offset: m.offset(),
            }),
            Err((e, _)) => Err(classify(e, self.delivery_timeout)),
        };
        self.health.record(&outcome);
        completion.complete(outcome);
    }
}

/// Maps librdkafka's delivery error to ours.
pub(crate) fn classify(e: &KafkaError, delivery_timeout: Duration) -> ProduceError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageTimedOut) => ProduceError::Timeout(delivery_timeout),
        Some(RDKafkaErrorCode::QueueFull) => ProduceError::QueueFull,
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
            ProduceError::Replaced
        }
        _ => ProduceError::Kafka(e.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_batch_whose_reports_never_come_ends_at_its_limit() {
        let batch = Arc::new(BatchWait::new(2));
        Completion::slot(batch.clone(), 0).complete(Ok(Position {
            partition: 0,
            offset: 1,
        }));
        // Slot 1's completion is leaked, as a torn-down client would leak it.
        std::mem::forget(Completion::slot(batch.clone(), 1));
        let outcomes = batch.wait(Duration::from_millis(50), T).await;
        assert!(outcomes[0].is_ok());
        assert!(matches!(outcomes[1], Err(ProduceError::Timeout(d)) if d == T));
        // A late report does not panic.
        batch.complete(1, Err(ProduceError::Canceled));
    }

    #[tokio::test]
    async fn a_batch_wakes_once_every_slot_is_complete_and_keeps_input_order() {
        let batch = Arc::new(BatchWait::new(3));
        let waiter = tokio::spawn({
            let batch = batch.clone();
            async move { batch.wait(T, T).await }
        });
        for index in [2, 0, 1] {
            Completion::slot(batch.clone(), index).complete(if index == 1 {
                Err(ProduceError::Replaced)
            } else {
                Ok(Position {
                    partition: 0,
                    offset: index as i64,
                })
            });
        }
        let outcomes = waiter.await.unwrap();
        assert_eq!(batch.remaining.load(Ordering::Acquire), 0);
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0].as_ref().unwrap().offset, 0);
        assert!(matches!(outcomes[1], Err(ProduceError::Replaced)));
        assert_eq!(outcomes[2].as_ref().unwrap().offset, 2);
    }

    #[tokio::test]
    async fn a_batch_completed_before_anyone_waits_does_not_hang() {
        let batch = BatchWait::new(1);
        batch.complete(
            0,
            Ok(Position {
                partition: 1,
                offset: 7,
            }),
        );
        let outcomes = batch.wait(T, T).await;
        assert_eq!(outcomes[0].as_ref().unwrap().partition, 1);
    }

    #[tokio::test]
    async fn a_completion_dropped_without_a_report_cancels_its_waiter() {
        let (tx, rx) = oneshot::channel();
        drop(Completion::one(tx));
        assert!(matches!(rx.await, Ok(Err(ProduceError::Canceled))));
        let batch = Arc::new(BatchWait::new(2));
        Completion::slot(batch.clone(), 0).complete(Ok(Position {
            partition: 0,
            offset: 3,
        }));
        drop(Completion::slot(batch.clone(), 1));
        let outcomes = batch.wait(T, T).await;
        assert!(outcomes[0].is_ok());
        assert!(matches!(outcomes[1], Err(ProduceError::Canceled)));
    }

    #[test]
    fn health_counts_failures_but_not_purges() {
        let h = GenerationHealth::new();
        h.record(&Err(ProduceError::Replaced));
        assert_eq!(h.failures.load(Ordering::Acquire), 0);
        assert!(h.last_failure().is_none());
        h.record(&Err(ProduceError::Timeout(Duration::from_secs(1))));
        assert_eq!(h.failures.load(Ordering::Acquire), 1);
        assert!(h.last_failure().is_some());
        h.record(&Ok(Position {
            partition: 0,
            offset: 0,
        }));
        assert_eq!(h.acks.load(Ordering::Acquire), 1);
    }

    #[test]
    fn purges_mean_replaced_and_timeouts_mean_timeout() {
        let t = Duration::from_secs(2);
        let purged = KafkaError::MessageProduction(RDKafkaErrorCode::PurgeInflight);
        assert!(matches!(classify(&purged, t), ProduceError::Replaced));
        let late = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert!(matches!(classify(&late, t), ProduceError::Timeout(d) if d == t));
        let refused = KafkaError::MessageProduction(RDKafkaErrorCode::NotEnoughReplicas);
        assert!(matches!(classify(&refused, t), ProduceError::Kafka(_)));
    }
}
