//! Is the topic reachable? A metadata probe that does not trust itself.
//!
//! A long-lived librdkafka client can stay unable to reach a broker after that broker
//! restarts (the ingest's `/readyz` once stayed 503 for a minute while the broker
//! answered everyone else). So after a few failures in a row the probe rebuilds its
//! client: when the broker is really down that costs nothing, and when the old client
//! was the problem it ends it.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::BaseConsumer;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{high_watermarks, metadata_client, topic_partitions, AdminError};
use crate::config::KafkaConfig;

/// Failures in a row after which the client is rebuilt.
const REBUILD_AFTER: u32 = 3;

/// A metadata client that many callers share, rebuilt after [`REBUILD_AFTER`] failures
/// in a row (the projector's high watermarks and partition lists: a wedged client there
/// once left every partition warming, unserved, after a storm of broker restarts).
pub struct SharedMetadata {
    kafka: KafkaConfig,
    client: RwLock<Arc<BaseConsumer>>,
    failures_in_a_row: AtomicU32,
    /// Counts rebuilds, for the service's metrics.
    rebuilds: Counter,
}

impl SharedMetadata {
    /// Builds the client; it connects lazily. `rebuilds` counts its rebuilds.
    pub fn new(kafka: &KafkaConfig, rebuilds: Counter) -> Result<Self, AdminError> {
        Ok(Self {
            kafka: kafka.clone(),
            client: RwLock::new(Arc::new(metadata_client(kafka)?)),
            failures_in_a_row: AtomicU32::new(0),
            rebuilds,
        })
    }

    fn client(&self) -> Arc<BaseConsumer> {
        self.client
            .read()
            .expect("the client lock is never held across a panic")
            .clone()
    }

    /// Counts a failure (rebuilding the client after [`REBUILD_AFTER`] in a row) or a
    /// success. An answer, even "no such topic", means the client works.
    fn judge<T>(&self, result: Result<T, AdminError>) -> Result<T, AdminError> {
        match &result {
            Ok(_) | Err(AdminError::NoSuchTopic(_)) => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
            }
            Err(_) => {
                if self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= REBUILD_AFTER {
                    self.rebuild();
                }
            }
        }
        result
    }

    /// The topic's partition ids. Blocking: call it from a blocking thread.
    pub fn topic_partitions(&self, topic: &str, timeout: Duration) -> Result<Vec<i32>, AdminError> {
        self.judge(topic_partitions(&self.client(), topic, timeout))
    }

    /// The high watermarks of these partitions. Blocking.
    pub fn high_watermarks(
        &self,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<Vec<(i32, i64)>, AdminError> {
        self.judge(
            high_watermarks(&self.client(), topic, partitions, timeout).map_err(AdminError::from),
        )
    }

    fn rebuild(&self) {
        match metadata_client(&self.kafka) {
            Ok(fresh) => {
                *self
                    .client
                    .write()
                    .expect("the client lock is never held across a panic") = Arc::new(fresh);
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                let n = self.rebuilds.inc() + 1;
                info!(
                    rebuilds = n,
                    "a metadata client failed {REBUILD_AFTER} times in a row; rebuilt it"
                );
            }
            Err(e) => warn!(error = %e, "cannot rebuild a metadata client"),
        }
    }
}

/// A metadata client for one topic's reachability, rebuilt after [`REBUILD_AFTER`]
/// failures in a row.
pub struct MetadataProbe {
    kafka: KafkaConfig,
    client: SharedMetadata,
    /// Counts rebuilds, for the service's metrics.
    rebuilds: Counter,
}

impl MetadataProbe {
    /// Builds the probe; it connects lazily. `rebuilds` counts its client's rebuilds.
    pub fn new(kafka: &KafkaConfig, rebuilds: Counter) -> Result<Self, AdminError> {
        Ok(Self {
            kafka: kafka.clone(),
            client: SharedMetadata::new(kafka, rebuilds.clone())?,
            rebuilds,
        })
    }

    /// The topic's partition ids. Blocking: call it from a blocking thread.
    pub fn topic_partitions(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<i32>, AdminError> {
        self.client.topic_partitions(topic, timeout)
    }

    /// [`Self::topic_partitions`] on a blocking thread, handing the probe back for the
    /// next call. Should the request's thread panic, a fresh probe takes over and the
    /// answer is an error, so that "reachable" never outlives the probe.
    pub async fn ask(self, topic: &str, timeout: Duration) -> (Self, Result<Vec<i32>, AdminError>) {
        let (kafka, rebuilds) = (self.kafka.clone(), self.rebuilds.clone());
        let topic = topic.to_owned();
        let mut probe = self;
        match tokio::task::spawn_blocking(move || {
            let r = probe.topic_partitions(&topic, timeout);
            (probe, r)
        })
        .await
        {
            Ok(answer) => answer,
            Err(e) => {
                warn!(error = %e, "the metadata probe panicked; starting a fresh one");
                rebuilds.inc();
                match Self::new(&kafka, rebuilds) {
                    Ok(fresh) => (fresh, Err(AdminError::Panicked(e.to_string()))),
                    Err(build) => panic!("a metadata client for a configuration that built before cannot be rebuilt: {build}"),
                }
            }
        }
    }
}

/// How often [`watch_reachability`] and the ingest's readiness check ask.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one metadata request may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
        let (returned, answer) = probe.ask(&topic, PROBE_TIMEOUT).await;
        probe = returned;
        let ok = answer.is_ok();
        if reachable.swap(ok, Ordering::AcqRel) != ok {
            info!(topic, reachable = ok, "topic reachability changed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}
