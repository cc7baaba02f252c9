//! The producer that writes events: acks=all and idempotent, keyed by account id, with
//! murmur2 partitioning so that Java clients and Kafka Streams agree on where an
//! account lives.

use std::time::Duration;

use ledger_domain::Event;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::codec;
use crate::config::{ConflictingProperty, KafkaConfig};
use crate::position::Position;

/// How the producer trades latency for throughput.
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    /// How long an event may wait for the broker's acknowledgement before the send fails
    /// (`message.timeout.ms`). After that the event may or may not be in the log.
    pub delivery_timeout: Duration,
    /// `linger.ms`: how long librdkafka waits to fill a batch.
    pub linger_ms: u32,
    /// `client.id`, so brokers' logs and quotas can tell services apart.
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

/// Why an event was not acknowledged.
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

/// Writes events (and dead letters) to Kafka.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
    settings: ProducerSettings,
}

impl EventProducer {
    /// Builds the producer. It connects lazily, so this succeeds while the broker is down.
    pub fn new(
        kafka: &KafkaConfig,
        settings: ProducerSettings,
    ) -> Result<Self, ProducerBuildError> {
        let timeout_ms = settings.delivery_timeout.as_millis().max(1).to_string();
        let linger = settings.linger_ms.to_string();
        let cfg = kafka.client_config(
            &[
                ("client.id", &settings.client_id),
                ("linger.ms", &linger),
                ("compression.type", "lz4"),
                // Fail fast on a dead broker so /readyz and 503s reflect it quickly.
                ("socket.connection.setup.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "1000"),
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
        let inner: FutureProducer = cfg.create()?;
        Ok(Self { inner, settings })
    }

    /// Writes one event under its account id and waits for the broker's acknowledgement.
    pub async fn send(&self, topic: &str, event: &Event) -> Result<Position, ProduceError> {
        let payload = codec::encode(event);
        let record = FutureRecord::to(topic)
            .key(event.account_id.as_str())
            .payload(&payload)
            .timestamp(event.time_ms);
        self.deliver(record).await
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
        let mut record = FutureRecord::<[u8], [u8]>::to(dead.dlq_topic).headers(headers);
        if let Some(k) = dead.key {
            record = record.key(k);
        }
        if let Some(p) = dead.payload {
            record = record.payload(p);
        }
        self.deliver(record).await
    }

    async fn deliver<K, P>(&self, record: FutureRecord<'_, K, P>) -> Result<Position, ProduceError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let delivery = match self.inner.send_result(record) {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(ProduceError::QueueFull)
            }
            Err((e, _)) => return Err(ProduceError::Kafka(e)),
        };
        // librdkafka itself fails the message at message.timeout.ms; the margin only
        // guards against a delivery report that never comes.
        let guard = self.settings.delivery_timeout + Duration::from_millis(500);
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::time::timeout(guard, delivery)
                .await
                .map_err(|_| ProduceError::Timeout(self.settings.delivery_timeout))?,
            // Outside a runtime (the consumer's own thread) the report still arrives by
            // message.timeout.ms at the latest.
            Err(_) => delivery.await,
        };
        match outcome {
            Ok(Ok(d)) => Ok(Position {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _))) => {
                Err(ProduceError::Timeout(self.settings.delivery_timeout))
            }
            Ok(Err((e, _))) => Err(ProduceError::Kafka(e)),
            Err(_canceled) => Err(ProduceError::Canceled),
        }
    }

    /// How many messages librdkafka still holds, waiting for acknowledgement.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }

    /// Waits, up to `timeout`, for every message in flight to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }

    /// The librdkafka producer, for metadata requests.
    pub fn client(&self) -> &FutureProducer {
        &self.inner
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
    /// [`crate::DecodeError::kind`].
    pub error_kind: &'a str,
}
