//! The producer that writes events: acks=all and idempotent, keyed by account id, with
//! murmur2 partitioning so that Java clients and Kafka Streams agree on where an
//! account lives.
//!
//! An [`EventProducer`] heals itself. It is a handle to the current librdkafka producer
//! (a *generation*); [`EventProducer::supervise`] watches for the signs of a producer
//! that will never deliver again (a fatal error, every delivery failing while the
//! brokers answer metadata requests, an idempotent producer left without a producer id)
//! and swaps in a fresh one. Requests in flight on the old generation get
//! [`ProduceError::Replaced`]; new requests go to the new one. See [`supervisor`].

mod delivery;
pub mod supervisor;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use backon::{BlockingRetryable, ConstantBuilder};
use ledger_domain::Event;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, ToBytes};
use rdkafka::producer::{BaseRecord, Producer, PurgeConfig, ThreadedProducer};
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

use crate::config::{ConflictingProperty, KafkaConfig};
use crate::position::Position;
use crate::{cloudevents, codec};
use delivery::{BatchWait, Completion, DeliveryContext, GenerationHealth};

pub use supervisor::{restart_counter, StallSignal, Supervision};

/// How the producer trades latency for throughput.
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    /// How long an event may wait for the broker's acknowledgement before the send fails
    /// (`message.timeout.ms`). After that the event may or may not be in the log.
    pub delivery_timeout: Duration,
    /// `linger.ms`: how long librdkafka waits to fill a batch.
    pub linger_ms: u32,
    /// `client.id`, so brokers' logs and quotas can tell services apart; also the
    /// writer named in each event's `ce_source` header.
    pub client_id: String,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        Self {
            delivery_timeout: Duration::from_millis(5000),
            linger_ms: 5,
            client_id: "ledger".into(),
        }
    }
}

/// Why an event was not acknowledged. Whatever the variant, the event may or may not be
/// in the log: a retry with the same command id is the safe answer.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The broker did not acknowledge within the delivery timeout.
    #[error("the broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    /// librdkafka's local queue is full: too much is in flight already.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker or librdkafka refused or failed the delivery.
    #[error("delivery failed: {0}")]
    Kafka(#[from] KafkaError),
    /// The producer this event was sent on was found stuck and replaced before the
    /// broker acknowledged it.
    #[error(
        "the producer was replaced (it had stopped delivering) before the broker acknowledged"
    )]
    Replaced,
    /// The producer was dropped before the delivery report came.
    #[error("the producer shut down before the delivery report")]
    Canceled,
}

/// Could not build a producer.
#[derive(Debug, thiserror::Error)]
pub enum ProducerBuildError {
    /// The operator's properties weaken a guarantee.
    #[error(transparent)]
    Conflict(#[from] ConflictingProperty),
    /// librdkafka refused the configuration.
    #[error("invalid producer configuration: {0}")]
    Kafka(#[from] KafkaError),
}

/// One librdkafka producer instance and what it has seen.
struct Generation {
    producer: ThreadedProducer<DeliveryContext>,
    health: Arc<GenerationHealth>,
    /// 1 for the first, counting up with every replacement.
    number: u64,
}

/// What every handle shares: how to build a generation, and the current one.
struct Shared {
    config: ClientConfig,
    settings: ProducerSettings,
    /// `ce_source` of every event this producer writes.
    ce_source: String,
    current: RwLock<Arc<Generation>>,
    /// Set by the supervisor while a stall signal stands and no replacement has proven
    /// itself yet; `/readyz` reads it.
    stuck: AtomicBool,
    replacements: AtomicU64,
}

/// Writes events (and dead letters) to Kafka. Cheap to clone: every clone is a handle
/// to the same, replaceable, producer.
#[derive(Clone)]
pub struct EventProducer {
    shared: Arc<Shared>,
}

impl EventProducer {
    /// Builds the producer. It connects lazily, so this succeeds while the broker is down.
    pub fn new(
        kafka: &KafkaConfig,
        settings: ProducerSettings,
    ) -> Result<Self, ProducerBuildError> {
        let timeout_ms = settings.delivery_timeout.as_millis().max(1).to_string();
        let linger = settings.linger_ms.to_string();
        let config = kafka.client_config(
            &[
                ("client.id", &settings.client_id),
                ("linger.ms", &linger),
                ("compression.type", "lz4"),
                // Fail fast on a dead broker so /readyz and 503s reflect it quickly.
                ("socket.connection.setup.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "1000"),
                // The idempotence state in the statistics is one of the supervisor's
                // signals (a producer left without a producer id).
                ("statistics.interval.ms", "1000"),
            ],
            &[
                (
                    "acks",
                    "all",
                    "a 202 promises the event is durable in Kafka",
                ),
                (
                    "enable.idempotence",
                    "true",
                    "retries must never duplicate or reorder events",
                ),
                (
                    "partitioner",
                    "murmur2_random",
                    "all clients must agree on an account's partition",
                ),
                (
                    "message.timeout.ms",
                    &timeout_ms,
                    "set it with --delivery-timeout-ms",
                ),
            ],
        )?;
        let first = build_generation(&config, &settings, 1)?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                ce_source: cloudevents::source(&settings.client_id),
                settings,
                current: RwLock::new(Arc::new(first)),
                stuck: AtomicBool::new(false),
                replacements: AtomicU64::new(0),
            }),
        })
    }

    fn current(&self) -> Arc<Generation> {
        self.shared
            .current
            .read()
            .expect("the generation lock is never held across a panic")
            .clone()
    }

    /// Writes one event under its account id and waits for the broker's acknowledgement.
    pub async fn send(&self, topic: &str, event: &Event) -> Result<Position, ProduceError> {
        let payload = codec::encode(event);
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Completion::one(tx))
            .key(event.account_id.as_str())
            .payload(&payload)
            .timestamp(event.time_ms)
            .headers(cloudevents::headers(event, &self.shared.ce_source));
        self.enqueue(record)?;
        self.await_report(rx).await
    }

    /// Writes many events and waits, once, until the broker has acknowledged or failed
    /// each of them. The outcomes come back in input order.
    pub async fn send_many(
        &self,
        topic: &str,
        events: &[Event],
    ) -> Vec<Result<Position, ProduceError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let batch = Arc::new(BatchWait::new(events.len()));
        {
            let generation = self.current();
            for (index, event) in events.iter().enumerate() {
                let payload = codec::encode(event);
                let completion = Completion::slot(batch.clone(), index);
                let record = BaseRecord::with_opaque_to(topic, completion)
                    .key(event.account_id.as_str())
                    .payload(&payload)
                    .timestamp(event.time_ms)
                    .headers(cloudevents::headers(event, &self.shared.ce_source));
                if let Err((e, record)) = generation.producer.send(record) {
                    record.delivery_opaque.complete(Err(delivery::classify(
                        &e,
                        self.shared.settings.delivery_timeout,
                    )));
                }
            }
        }
        batch
            .wait(self.report_limit(), self.shared.settings.delivery_timeout)
            .await
    }

    /// Writes a message that could not be decoded to the dead-letter topic, with headers
    /// naming where it came from and why, and waits for the acknowledgement.
    pub async fn send_dead_letter(&self, dead: &DeadLetter<'_>) -> Result<Position, ProduceError> {
        let partition = dead.source_partition.to_string();
        let offset = dead.source_offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: DLQ_HEADER_TOPIC,
                value: Some(dead.source_topic),
            })
            .insert(Header {
                key: DLQ_HEADER_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: DLQ_HEADER_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: DLQ_HEADER_ERROR,
                value: Some(dead.error),
            })
            .insert(Header {
                key: DLQ_HEADER_ERROR_KIND,
                value: Some(dead.error_kind),
            });
        let (tx, rx) = oneshot::channel();
        let mut record =
            BaseRecord::<[u8], [u8], _>::with_opaque_to(dead.dlq_topic, Completion::one(tx))
                .headers(headers);
        if let Some(k) = dead.key {
            record = record.key(k);
        }
        if let Some(p) = dead.payload {
            record = record.payload(p);
        }
        self.enqueue(record)?;
        self.await_report(rx).await
    }

    /// How long a request waits for its reports at most: librdkafka ends every message
    /// at `message.timeout.ms`, and the margin only covers a report lost with a client
    /// torn down while it still held messages.
    fn report_limit(&self) -> Duration {
        self.shared.settings.delivery_timeout + Duration::from_secs(5)
    }

    /// Waits for one delivery report, bounded by [`Self::report_limit`] inside a tokio
    /// runtime.
    async fn await_report(
        &self,
        rx: oneshot::Receiver<delivery::Outcome>,
    ) -> Result<Position, ProduceError> {
        let report = if tokio::runtime::Handle::try_current().is_ok() {
            match tokio::time::timeout(self.report_limit(), rx).await {
                Ok(r) => r,
                Err(_) => return Err(ProduceError::Timeout(self.shared.settings.delivery_timeout)),
            }
        } else {
            rx.await
        };
        report.unwrap_or(Err(ProduceError::Canceled))
    }

    /// Hands a record to the current generation. The handle to the generation is not
    /// held while the caller waits, so a replaced generation can be purged and dropped.
    fn enqueue<K, P>(
        &self,
        record: BaseRecord<'_, K, P, Box<Completion>>,
    ) -> Result<(), ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let generation = self.current();
        generation
            .producer
            .send(record)
            .map_err(|(e, _record)| delivery::classify(&e, self.shared.settings.delivery_timeout))
    }

    /// How many messages librdkafka still holds, waiting for acknowledgement.
    pub fn in_flight(&self) -> i32 {
        self.current().producer.in_flight_count()
    }

    /// Waits, up to `timeout`, for every message in flight to be acknowledged. Blocking.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().producer.flush(timeout)
    }

    /// True while a stall signal stands and no replacement has delivered yet: the
    /// producer cannot be trusted to acknowledge anything, whatever the brokers say.
    pub fn is_stuck(&self) -> bool {
        self.shared.stuck.load(Ordering::Acquire)
    }

    /// How many times the producer has been replaced since it was built.
    pub fn replacements(&self) -> u64 {
        self.shared.replacements.load(Ordering::Acquire)
    }

    /// The delivery timeout (`message.timeout.ms`).
    pub fn delivery_timeout(&self) -> Duration {
        self.shared.settings.delivery_timeout
    }

    /// Raises a fatal error in the current librdkafka producer, as librdkafka's own
    /// `rd_kafka_test_fatal_error` does, so tests can prove the supervisor replaces it.
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        let generation = self.current();
        let reason = std::ffi::CString::new(reason).expect("a test's reason has no NUL byte");
        // SAFETY: the client pointer is valid while `generation` is held, and the
        // reason outlives the call, which copies it.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                generation.producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }
}

fn build_generation(
    config: &ClientConfig,
    settings: &ProducerSettings,
    number: u64,
) -> Result<Generation, KafkaError> {
    let health = Arc::new(GenerationHealth::new());
    let producer = config.create_with_context(DeliveryContext {
        health: health.clone(),
        delivery_timeout: settings.delivery_timeout,
    })?;
    Ok(Generation {
        producer,
        health,
        number,
    })
}

/// Ends a replaced generation: every message it still holds is purged, so the requests
/// waiting on them get [`ProduceError::Replaced`] now rather than at their timeout.
/// Blocking (it joins librdkafka's threads): call it from a blocking thread.
fn retire(generation: Arc<Generation>) {
    generation
        .producer
        .purge(PurgeConfig::default().queue().inflight());
    // Requests that picked this generation just before the swap release it within
    // microseconds; drop it on this thread, never on a runtime worker.
    let mut shared = Some(generation);
    let sole = (|| {
        let g = shared.take().expect("put back after every failed attempt");
        Arc::try_unwrap(g).map_err(|g| shared = Some(g))
    })
    .retry(
        ConstantBuilder::new()
            .with_delay(Duration::from_millis(10))
            .with_max_times(500),
    )
    .call();
    match sole {
        Ok(g) => drop(g),
        Err(()) => tracing::warn!(
            "a replaced producer is still referenced after 5 s; it ends with its last user"
        ),
    }
}

/// Header naming the topic a dead letter was read from.
pub const DLQ_HEADER_TOPIC: &str = "ledger.source.topic";
/// Header naming its partition.
pub const DLQ_HEADER_PARTITION: &str = "ledger.source.partition";
/// Header naming its offset.
pub const DLQ_HEADER_OFFSET: &str = "ledger.source.offset";
/// Header with the decode error, for people.
pub const DLQ_HEADER_ERROR: &str = "ledger.error";
/// Header with the decode error's kind, for machines.
pub const DLQ_HEADER_ERROR_KIND: &str = "ledger.error.kind";

/// A message that could not be decoded, on its way to the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Where it goes.
    pub dlq_topic: &'a str,
    /// Where it was read from.
    pub source_topic: &'a str,
    /// Its partition there.
    pub source_partition: i32,
    /// Its offset there.
    pub source_offset: i64,
    /// Its key, kept as is.
    pub key: Option<&'a [u8]>,
    /// Its value, kept as is.
    pub payload: Option<&'a [u8]>,
    /// Why it could not be decoded.
    pub error: &'a str,
    /// [`crate::consume::Poison::kind`].
    pub error_kind: &'a str,
}
