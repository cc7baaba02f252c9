//! When a consumer is given up for a new one, and how the old one is retired.
//!
//! Progress lives in the store, so a librdkafka client that can no longer serve is
//! replaced by a new one that resumes exactly there. A client is given up when it
//! reports a fatal error (a static member fenced after a coordinator failover, say), or
//! when its group membership has not been steady for [`GROUP_STALL`] while statistics
//! kept arriving (a client wedged after a broker froze or restarted).
//! [`ConsumeError::is_client_fatal`] names those errors, and [`RestartPolicy`] decides
//! whether [`run`](super::run) makes a new consumer or gives up.
//!
//! The old client is retired first: what it fetched and did not apply is dropped, its
//! rebalance callback only unassigns, and it closes on a thread of its own.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ledger_domain::Batch;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::context::LoopContext;
use super::{BatchSink, ConsumeError};
use crate::stats::Stats;

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
pub(super) struct GroupHealth {
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
