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
    /// Rebuilds of the dead-letter probe's metadata client after failures in a row.
    pub probe_rebuilds: Counter,
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
            dlq_producer_restarts: Family::default(),
            probe_rebuilds: Counter::default(),
        };
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
            "Rebuilds of the dead-letter probe's Kafka client after failures in a row",
            m.probe_rebuilds.clone(),
        );
        m.consumer.register(registry);
        m
    }
}
