//! The projector's Prometheus metrics.

use ledger_eventlog::consume::ConsumerMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Counters, gauges and histograms of the projector.
#[derive(Clone)]
pub(crate) struct ProjectorMetrics {
    pub applied: Counter,
    pub rejected: Family<Labels, Counter>,
    pub duplicates: Counter,
    pub batch_size: Histogram,
    pub apply_flush_latency: Histogram,
    pub applied_offset: Family<Labels, Gauge>,
    pub lag: Family<Labels, Gauge>,
    pub assigned_partitions: Gauge,
    pub consumer: ConsumerMetrics,
    /// Dead-letter producers replaced because they had stopped delivering, by signal.
    pub dlq_producer_restarts: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Rebuilds of a metadata client (the reachability probes', or the one that fetches
    /// high watermarks) after failures in a row.
    pub probe_rebuilds: Counter,
    /// Partitions this instance holds, by role.
    pub partition_roles: Family<Labels, Gauge>,
    /// Partitions entering a role (or `none`: let go), by role.
    pub role_changes: Family<Labels, Counter>,
    /// Seconds from a partition's assignment to this instance serving it as its owner.
    pub warming_seconds: Histogram,
    /// Queries forwarded to another instance, by outcome.
    pub forwarded: Family<Labels, Counter>,
    /// Answers `partition_moving`: no instance could serve the partition yet.
    pub partition_moving: Counter,
    /// Instances of the group this one hears from, itself included.
    pub directory_instances: Gauge,
    /// Directory entries that could not be published or read, by direction.
    pub directory_failures: Family<Labels, Counter>,
    /// Directory producers replaced because they had stopped delivering.
    pub directory_restarts: Counter,
    /// Times this instance stopped because another live process took its instance id.
    pub fenced_by_twin: Counter,
    /// Follow-up events (transfer credits, refunds, completions) the log acknowledged.
    pub follow_ups: Counter,
    /// Follow-up events the log did not acknowledge at a try (each is retried).
    pub follow_up_failures: Counter,
    /// Follow-up producers replaced because they had stopped delivering, by signal.
    pub follow_up_producer_restarts: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Parked events, by what became of them: `parked` (it waits), `applied` (an
    /// operator's retry or skip applied it), `skipped` (sent to the dead-letter topic).
    pub parked_events: Family<Labels, Counter>,
    /// Rebuilds, by outcome: `swapped`, `mismatch`, `failed`.
    pub rebuilds: Family<Labels, Counter>,
}

impl ProjectorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            applied: Counter::default(),
            rejected: Family::default(),
            duplicates: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            apply_flush_latency: Histogram::new(ledger_http::metrics::latency_buckets()),
            applied_offset: Family::default(),
            lag: Family::default(),
            assigned_partitions: Gauge::default(),
            consumer: ConsumerMetrics::default(),
            dlq_producer_restarts: ledger_eventlog::producer::restart_counter(),
            probe_rebuilds: Counter::default(),
            partition_roles: Family::default(),
            role_changes: Family::default(),
            warming_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            forwarded: Family::default(),
            partition_moving: Counter::default(),
            directory_instances: Gauge::default(),
            directory_failures: Family::default(),
            directory_restarts: Counter::default(),
            fenced_by_twin: Counter::default(),
            follow_ups: Counter::default(),
            follow_up_failures: Counter::default(),
            follow_up_producer_restarts: ledger_eventlog::producer::restart_counter(),
            parked_events: Family::default(),
            rebuilds: Family::default(),
        };
        // A labelled family with no children prints nothing: every label value known in
        // advance is there at zero from the start, so a dashboard's rate() has a series.
        let zero = |family: &Family<Labels, Counter>, key: &'static str, values: &[&str]| {
            for v in values {
                let _ = family.get_or_create(&vec![(key, v.to_string())]);
            }
        };
        zero(&m.directory_failures, "direction", &["publish", "read"]);
        zero(&m.forwarded, "outcome", &["ok", "unreachable"]);
        zero(&m.rebuilds, "outcome", &["swapped", "mismatch", "failed"]);
        zero(
            &m.parked_events,
            "outcome",
            &[
                "parked",
                "applied",
                "skipped",
                "retry_requested",
                "skip_requested",
            ],
        );
        zero(
            &m.role_changes,
            "role",
            &["owner", "warming", "draining", "none"],
        );
        let reasons: Vec<&str> = ledger_domain::REJECTIONS.iter().map(|r| r.code()).collect();
        zero(&m.rejected, "reason", &reasons);
        for role in ["owner", "warming", "draining"] {
            let _ = m
                .partition_roles
                .get_or_create(&vec![("role", role.to_string())]);
        }
        registry.register(
            "projector_parked_events",
            "Events of parked accounts, by what became of them (parked, applied by an operator's retry or skip, skipped to the dead-letter topic)",
            m.parked_events.clone(),
        );
        registry.register(
            "projector_rebuilds",
            "Verified rebuilds, by outcome (swapped, mismatch, failed)",
            m.rebuilds.clone(),
        );
        registry.register(
            "projector_follow_ups_emitted",
            "Follow-up events (transfer credits, refunds, completions) written to the log and acknowledged",
            m.follow_ups.clone(),
        );
        registry.register(
            "projector_follow_up_failures",
            "Follow-up events the log did not acknowledge at a try; each is retried before its batch is stored",
            m.follow_up_failures.clone(),
        );
        registry.register(
            "projector_follow_up_producer_restarts",
            "Follow-up producers replaced because they had stopped delivering, by signal",
            m.follow_up_producer_restarts.clone(),
        );
        registry.register(
            "projector_events_applied",
            "Events that took effect",
            m.applied.clone(),
        );
        registry.register(
            "projector_events_rejected",
            "Events refused by the rules, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "projector_events_duplicate",
            "Events whose command id was already recorded",
            m.duplicates.clone(),
        );
        registry.register(
            "projector_batch_size",
            "Events per applied batch",
            m.batch_size.clone(),
        );
        registry.register(
            "projector_apply_flush_seconds",
            "Time to apply a batch in one transaction and flush it",
            m.apply_flush_latency.clone(),
        );
        registry.register(
            "projector_applied_offset",
            "Next offset to apply, per partition, as durably stored",
            m.applied_offset.clone(),
        );
        registry.register(
            "projector_lag",
            "Events in the log not yet applied, per partition (high watermark minus applied offset)",
            m.lag.clone(),
        );
        registry.register(
            "projector_assigned_partitions",
            "Partitions assigned to this instance",
            m.assigned_partitions.clone(),
        );
        registry.register(
            "projector_dlq_producer_restarts",
            "Dead-letter Kafka producers replaced because they had stopped delivering, by signal",
            m.dlq_producer_restarts.clone(),
        );
        registry.register(
            "projector_metadata_probe_rebuilds",
            "Rebuilds of a metadata client (the reachability probes', or the high watermarks') after failures in a row",
            m.probe_rebuilds.clone(),
        );
        registry.register(
            "projector_partitions",
            "Partitions this instance holds, by role (owner, warming, draining)",
            m.partition_roles.clone(),
        );
        registry.register(
            "projector_partition_role_changes",
            "Partitions entering a role on this instance, by role (none: let go)",
            m.role_changes.clone(),
        );
        registry.register(
            "projector_warming_seconds",
            "Time from a partition's assignment to this instance serving it as its owner",
            m.warming_seconds.clone(),
        );
        registry.register(
            "projector_forwarded_queries",
            "Queries forwarded to the instance that serves their partition, by outcome",
            m.forwarded.clone(),
        );
        registry.register(
            "projector_partition_moving",
            "Queries answered partition_moving: no instance could serve the partition yet",
            m.partition_moving.clone(),
        );
        registry.register(
            "projector_directory_instances",
            "Live instances of the group this one hears from, itself included",
            m.directory_instances.clone(),
        );
        registry.register(
            "projector_directory_failures",
            "Directory entries that could not be published or read, by direction",
            m.directory_failures.clone(),
        );
        registry.register(
            "projector_directory_producer_restarts",
            "Directory producers replaced because they had stopped delivering",
            m.directory_restarts.clone(),
        );
        registry.register(
            "projector_fenced_by_twin",
            "Stops because another live process joined the group with this instance's id (a copied data directory)",
            m.fenced_by_twin.clone(),
        );
        m.consumer.register(registry);
        m
    }
}
