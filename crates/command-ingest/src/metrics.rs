//! The ingest's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Counters and histograms of the ingest.
#[derive(Clone)]
pub(crate) struct IngestMetrics {
    /// Commands acknowledged by the broker, by type.
    pub accepted: Family<Labels, Counter>,
    /// Commands refused, by error code.
    pub rejected: Family<Labels, Counter>,
    /// Time from produce to the broker's acknowledgement.
    pub produce_latency: Histogram,
    /// Commands waiting for an acknowledgement.
    pub in_flight: Gauge,
    /// 1 when the topic is reachable.
    pub ready: Gauge,
}

impl IngestMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            accepted: Family::default(),
            rejected: Family::default(),
            produce_latency: Histogram::new(ledger_http::metrics::latency_buckets()),
            in_flight: Gauge::default(),
            ready: Gauge::default(),
        };
        registry.register(
            "ingest_commands_accepted",
            "Commands acknowledged by the broker, by type",
            m.accepted.clone(),
        );
        registry.register(
            "ingest_commands_rejected",
            "Commands refused, by error code",
            m.rejected.clone(),
        );
        registry.register(
            "ingest_produce_latency_seconds",
            "Time from produce to the broker's acknowledgement",
            m.produce_latency.clone(),
        );
        registry.register(
            "ingest_in_flight",
            "Commands waiting for the broker's acknowledgement",
            m.in_flight.clone(),
        );
        registry.register(
            "ingest_ready",
            "1 when the topic is reachable",
            m.ready.clone(),
        );
        m
    }

    pub fn reject(&self, code: &'static str) {
        self.rejected.get_or_create(&vec![("code", code)]).inc();
    }
}
