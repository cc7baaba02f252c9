//! Start-up and readiness: the ingest starts even while the broker is unreachable, keeps
//! trying to create the topic, and then keeps checking that it is reachable, so that
//! `/readyz` tells the truth without a restart. The check's metadata client rebuilds
//! itself after failures in a row ([`MetadataProbe`]), and `/readyz` is 503 as well
//! while the producer's supervisor finds the producer stuck.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ledger_eventlog::admin::{ensure_topic, AdminError, TopicSpec, TopicStatus};
use ledger_eventlog::probe::{MetadataProbe, PROBE_EVERY, PROBE_TIMEOUT};
use ledger_eventlog::producer::EventProducer;
use ledger_eventlog::KafkaConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::IngestMetrics;

pub(crate) async fn watch(
    kafka: KafkaConfig,
    mut probe: MetadataProbe,
    spec: TopicSpec,
    reachable: Arc<AtomicBool>,
    producer: EventProducer,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
) {
    let mut topic_known = false;
    let mut was_ready = false;
    loop {
        let ok = if topic_known {
            let (returned, result) = probe.ask(&spec.name, PROBE_TIMEOUT).await;
            probe = returned;
            match result {
                Ok(_) => true,
                Err(AdminError::NoSuchTopic(_)) => {
                    topic_known = false;
                    false
                }
                Err(e) => {
                    warn!(error = %e, topic = %spec.name, "topic not reachable");
                    false
                }
            }
        } else {
            match ensure_topic(&kafka, &spec, PROBE_TIMEOUT).await {
                Ok(status) => {
                    if status == TopicStatus::Created {
                        info!(topic = %spec.name, partitions = spec.partitions, replication_factor = spec.replication_factor, "created topic with retention.ms=-1");
                    }
                    topic_known = true;
                    true
                }
                Err(e) => {
                    warn!(error = %e, topic = %spec.name, "cannot reach or create the topic; retrying");
                    false
                }
            }
        };
        reachable.store(ok, Ordering::Release);
        let ready = ok && !producer.is_stuck();
        if ready != was_ready {
            info!(
                ready,
                reachable = ok,
                producer_stuck = producer.is_stuck(),
                "readiness changed"
            );
            was_ready = ready;
        }
        metrics.ready.set(i64::from(ready));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
