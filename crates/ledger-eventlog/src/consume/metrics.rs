//! The consumer loop's counters, for the service that runs the loop to register.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// Offset commits of a partition held back because the group's committed offset is
    /// ahead of this instance's (it is catching up from below it).
    pub commits_withheld: Counter,
    /// Partitions read again from the group's committed offset on assignment, to write
    /// the follow-ups of events this store had applied without writing them.
    pub emit_rewinds: Counter,
    /// Failed attempts to learn a newly assigned partition's committed offset (or to seek
    /// back from it); the partition's events wait in hand meanwhile.
    pub committed_fetch_failures: Counter,
    /// Assigned partitions whose applying is paused (by an operator, or a rebuild's
    /// hold).
    pub paused_partitions: Gauge,
}

impl ConsumerMetrics {
    /// Registers the counters.
    pub fn register(&self, registry: &mut Registry) {
        // Every label value at zero from the start: a family with no children prints
        // nothing.
        for action in ["parked", "dead_lettered", "halted"] {
            let _ = self
                .poison
                .get_or_create(&vec![("action".into(), action.into())]);
        }
        for kind in ["assign", "revoke"] {
            let _ = self
                .rebalances
                .get_or_create(&vec![("kind".into(), kind.into())]);
        }
        registry.register(
            "projector_paused_partitions",
            "Assigned partitions whose applying is paused (POST /v1/admin/pause, or a rebuild's hold)",
            self.paused_partitions.clone(),
        );
        registry.register(
            "projector_committed_fetch_failures",
            "Failed attempts to learn an assigned partition's committed offset (or seek back from it); its events wait meanwhile",
            self.committed_fetch_failures.clone(),
        );
        registry.register(
            "projector_emit_rewinds",
            "Partitions read again from the group's committed offset, to write follow-ups of events applied here read-only",
            self.emit_rewinds.clone(),
        );
        registry.register(
            "projector_redelivered_events",
            "Events delivered below the stored offset and skipped",
            self.redelivered.clone(),
        );
        registry.register(
            "projector_poison_events",
            "Undecodable events, by action (parked, dead_lettered or halted)",
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
        registry.register(
            "projector_offset_commits_withheld",
            "Partition offset commits held back because the group's committed offset is ahead (catching up from below it)",
            self.commits_withheld.clone(),
        );
    }
}
