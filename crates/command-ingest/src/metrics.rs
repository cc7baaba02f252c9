//! The ingest's Prometheus metrics.

use ledger_domain::command::CommandKind;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// The `type` labels of `accepted`, in [`kind_index`] order.
const KINDS: [&str; 4] = ["open_account", "deposit", "withdraw", "transfer"];

fn kind_index(kind: &CommandKind) -> usize {
    match kind {
        CommandKind::OpenAccount => 0,
        CommandKind::Deposit(_) => 1,
        CommandKind::Withdraw(_) => 2,
        CommandKind::Transfer { .. } => 3,
    }
}

/// Counters and histograms of the ingest.
#[derive(Clone)]
pub(crate) struct IngestMetrics {
    /// Commands acknowledged by the broker, by type.
    accepted: Family<Labels, Counter>,
    /// The three children of `accepted`, resolved once: the family's lookup (a label
    /// vector, a hash, a lock) was per command.
    accepted_by_kind: [Counter; 4],
    /// Commands refused, by error code.
    pub rejected: Family<Labels, Counter>,
    /// Time from produce to the broker's acknowledgement.
    pub produce_latency: Histogram,
    /// Commands waiting for an acknowledgement.
    pub in_flight: Gauge,
    /// 1 while the topic is reachable and the producer delivers (what `/readyz` says).
    pub ready: Gauge,
    /// Producers replaced because they had stopped delivering, by signal.
    pub producer_restarts: Family<Labels, Counter>,
    /// Rebuilds of the readiness probe's metadata client after failures in a row.
    pub probe_rebuilds: Counter,
}

impl IngestMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let accepted: Family<Labels, Counter> = Family::default();
        let accepted_by_kind =
            KINDS.map(|kind| accepted.get_or_create(&vec![("type", kind)]).clone());
        let m = Self {
            accepted,
            accepted_by_kind,
            rejected: Family::default(),
            produce_latency: Histogram::new(ledger_http::metrics::latency_buckets()),
            in_flight: Gauge::default(),
            ready: Gauge::default(),
            producer_restarts: ledger_eventlog::producer::restart_counter(),
            probe_rebuilds: Counter::default(),
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
            "1 while the topic is reachable and the producer delivers",
            m.ready.clone(),
        );
        registry.register(
            "ingest_producer_restarts",
            "Kafka producers replaced because they had stopped delivering, by signal",
            m.producer_restarts.clone(),
        );
        registry.register(
            "ingest_metadata_probe_rebuilds",
            "Rebuilds of the readiness probe's Kafka client after failures in a row",
            m.probe_rebuilds.clone(),
        );
        m
    }

    /// The acknowledged-commands counter of a command's type.
    pub fn accepted(&self, kind: &CommandKind) -> &Counter {
        &self.accepted_by_kind[kind_index(kind)]
    }

    pub fn reject(&self, code: ledger_api::ErrorCode) {
        self.rejected
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_domain::Amount;

    #[test]
    fn each_kind_counts_under_its_own_type_label() {
        let one = Amount::new(1).unwrap();
        for kind in [
            CommandKind::OpenAccount,
            CommandKind::Deposit(one),
            CommandKind::Withdraw(one),
        ] {
            assert_eq!(KINDS[kind_index(&kind)], kind.type_name());
        }
    }
}
