//! When a consumer is given up for a new one, and how the old one is retired.
//!
//! Progress lives in the store, so a librdkafka client that can no longer serve is
//! replaced by a new one that resumes exactly there. A client is given up when it
//! reports a fatal error (a static member fenced after a coordinator failover, say), or
//! when its group membership has not been steady for [`GROUP_STALL`] while statistics
//! kept arriving (a client wedged after a broker froze or restarted).
//! [`ConsumeError::is_client_fatal`] names those errors, and [`RestartPolicy`] decides
//! whether [`run`](super::run) makes a new consumer or gives up. How a wedged client is
//! told is in `health`.
//!
//! The old client is retired first: what it fetched and did not apply is dropped, its
//! rebalance callback only unassigns, and it closes on a thread of its own.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ledger_domain::Batch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::context::LoopContext;
use super::{BatchSink, ConsumeError};

/// Pause before a new consumer is made, so that a broken cluster is not hammered.
pub(super) const PAUSE: Duration = Duration::from_secs(1);
/// Most consumers replaced within [`WINDOW`].
const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
const WINDOW: Duration = Duration::from_secs(60);

/// Whether an error that ended a consumer calls for a new one.
///
/// A fatal error ends one librdkafka client (a static member fenced after a coordinator
/// failover, say), not the service: progress lives in the store, so a new consumer
/// resumes exactly there. A fencing by another live process of the same instance id
/// never gets here ([`super::BatchSink::on_fenced`] stops the loop); errors that recur
/// anyway, after [`MAX_RESTARTS`] in [`WINDOW`], are returned rather than flapping
/// forever.
#[derive(Debug, Default)]
pub(super) struct RestartPolicy {
    recent: Vec<Instant>,
}

impl RestartPolicy {
    /// True when a new consumer should replace the one that ended with `error`; counts
    /// the replacement.
    pub(super) fn replace_client(
        &mut self,
        error: &ConsumeError,
        shutdown: &CancellationToken,
    ) -> bool {
        if !error.is_client_fatal() || shutdown.is_cancelled() {
            return false;
        }
        self.recent.retain(|t| t.elapsed() < WINDOW);
        if self.recent.len() >= MAX_RESTARTS {
            return false;
        }
        self.recent.push(Instant::now());
        true
    }
}

impl ConsumeError {
    /// Whether the coordinator fenced this static member: another client joined with
    /// its `group.instance.id`.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            ConsumeError::Kafka(KafkaError::MessageConsumptionFatal(
                RDKafkaErrorCode::FencedInstanceId
            ))
        )
    }

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

/// How long a retired consumer may take to close before it is left to close alone.
const RETIRE_WAIT: Duration = Duration::from_secs(10);

/// Ends a client that is fenced or wedged, so that a new one can take over from the
/// store. What it fetched and did not apply is dropped (the new client reads it again
/// from the stored offsets), and it applies nothing more: its rebalance callback only
/// unassigns. Closing a wedged client can wait on a coordinator that never answers
/// (rdkafka's drop polls until closed), so it closes on a thread of its own, and after
/// [`RETIRE_WAIT`] it is left to finish there.
pub(super) fn retire<S: BatchSink>(consumer: BaseConsumer<LoopContext<S>>) {
    let ctx = consumer.context();
    ctx.retired.store(true, Ordering::Release);
    let all: Vec<i32> = {
        let mut st = ctx.state();
        st.pending = Batch::default();
        st.committed.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::GROUP_STALL;

    #[test]
    fn only_client_fatal_errors_replace_the_client_and_at_most_five_a_minute() {
        let stop = CancellationToken::new();
        let stalled = ConsumeError::GroupStalled(GROUP_STALL, "wait-join".into());
        let mut policy = RestartPolicy::default();
        assert!(!policy.replace_client(&ConsumeError::Panicked("x".into()), &stop));
        for i in 0..MAX_RESTARTS {
            assert!(policy.replace_client(&stalled, &stop), "restart {i}");
        }
        assert!(
            !policy.replace_client(&stalled, &stop),
            "the sixth in a minute gives up"
        );
        let mut policy = RestartPolicy::default();
        stop.cancel();
        assert!(
            !policy.replace_client(&stalled, &stop),
            "never while shutting down"
        );
    }
}
