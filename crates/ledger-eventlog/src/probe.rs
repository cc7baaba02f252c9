//! Is the topic reachable? A metadata probe that does not trust itself.
//!
//! A long-lived librdkafka client can stay unable to reach a broker after that broker
//! restarts (the ingest's `/readyz` once stayed 503 for a minute while the broker
//! answered everyone else). So after a few failures in a row the probe rebuilds its
//! client: when the broker is really down that costs nothing, and when the old client
//! was the problem it ends it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{metadata_client, topic_partitions, AdminError};
use crate::config::KafkaConfig;

/// Failures in a row after which the client is rebuilt.
const REBUILD_AFTER: u32 = 3;

/// A metadata client for one topic, rebuilt after [`REBUILD_AFTER`] failures in a row.
pub struct MetadataProbe {
    kafka: KafkaConfig,
    client: BaseConsumer,
    failures_in_a_row: u32,
    /// Counts rebuilds, for the service's metrics.
    rebuilds: Counter,
}

impl MetadataProbe {
    /// Builds the probe; it connects lazily. `rebuilds` counts its client's rebuilds.
    pub fn new(kafka: &KafkaConfig, rebuilds: Counter) -> Result<Self, AdminError> {
        Ok(Self {
            kafka: kafka.clone(),
            client: metadata_client(kafka)?,
            failures_in_a_row: 0,
            rebuilds,
        })
    }

    /// The topic's partition ids. Blocking: call it from a blocking thread.
    pub fn topic_partitions(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<i32>, AdminError> {
        let result = topic_partitions(&self.client, topic, timeout);
        match &result {
            // An answer, even "no such topic", means the client works.
            Ok(_) | Err(AdminError::NoSuchTopic(_)) => self.failures_in_a_row = 0,
            Err(_) => {
                self.failures_in_a_row += 1;
                if self.failures_in_a_row >= REBUILD_AFTER {
                    self.rebuild();
                }
            }
        }
        result
    }

    fn rebuild(&mut self) {
        match metadata_client(&self.kafka) {
            Ok(fresh) => {
                self.client = fresh;
                self.failures_in_a_row = 0;
                let n = self.rebuilds.inc() + 1;
                info!(
                    rebuilds = n,
                    "metadata probe failed {REBUILD_AFTER} times in a row; rebuilt its client"
                );
            }
            Err(e) => warn!(error = %e, "cannot rebuild the metadata probe's client"),
        }
    }
}

/// How often [`watch_reachability`] asks.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps `reachable` true while the brokers answer a metadata request for `topic`, until
/// `shutdown`. For services that need only the flag (the projector's dead-letter
/// producer's supervisor); the ingest folds the same probe into its readiness check.
pub async fn watch_reachability(
    mut probe: MetadataProbe,
    topic: String,
    reachable: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let t = topic.clone();
        let (returned, ok) = match tokio::task::spawn_blocking(move || {
            let ok = probe.topic_partitions(&t, PROBE_TIMEOUT).is_ok();
            (probe, ok)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "the metadata probe panicked; reachability is no longer tracked");
                reachable.store(false, Ordering::Release);
                return;
            }
        };
        probe = returned;
        if reachable.swap(ok, Ordering::AcqRel) != ok {
            info!(topic, reachable = ok, "topic reachability changed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
