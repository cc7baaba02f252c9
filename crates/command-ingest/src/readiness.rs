//! Start-up and readiness: the ingest starts even while the broker is unreachable, keeps
//! trying to create the topic, and then keeps checking that it is reachable, so that
//! `/readyz` tells the truth without a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_eventlog::admin::{ensure_topic, topic_partitions, TopicSpec, TopicStatus};
use ledger_eventlog::KafkaConfig;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::IngestMetrics;

const CHECK_EVERY: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn watch(
    kafka: KafkaConfig,
    spec: TopicSpec,
    ready: Arc<AtomicBool>,
    metrics: IngestMetrics,
    shutdown: CancellationToken,
) {
    let metadata = match ledger_eventlog::admin::metadata_client(&kafka) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            warn!(error = %e, "cannot build a metadata client; /readyz stays 503");
            return;
        }
    };
    let mut topic_known = false;
    loop {
        let ok = if topic_known {
            let client = metadata.clone();
            let topic = spec.name.clone();
            match tokio::task::spawn_blocking(move || {
                topic_partitions(&client, &topic, REQUEST_TIMEOUT)
            })
            .await
            {
                Ok(Ok(_)) => true,
                Ok(Err(ledger_eventlog::admin::AdminError::NoSuchTopic(_))) => {
                    topic_known = false;
                    false
                }
                Ok(Err(e)) => {
                    warn!(error = %e, topic = %spec.name, "topic not reachable");
                    false
                }
                Err(_) => false,
            }
        } else {
            match ensure_topic(&kafka, &spec, REQUEST_TIMEOUT).await {
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
        if ready.swap(ok, Ordering::SeqCst) != ok {
            info!(ready = ok, "readiness changed");
        }
        metrics.ready.set(i64::from(ok));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}
