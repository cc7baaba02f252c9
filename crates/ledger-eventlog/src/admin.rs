//! Topic administration: create the event topic (and its dead-letter topic) with the
//! contract's settings, idempotently, and ask the cluster what a topic looks like.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{ConflictingProperty, KafkaConfig};

/// How a topic is created when it is missing.
#[derive(Clone, Debug)]
pub struct TopicSpec {
    /// The topic's name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
}

/// What [`ensure_topic`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicStatus {
    /// It was created now.
    Created,
    /// It existed already (its settings are left as they are).
    Existed,
}

/// Topic administration failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The operator's properties conflict with what is needed.
    #[error(transparent)]
    Conflict(#[from] ConflictingProperty),
    /// The cluster could not be reached or refused.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The cluster refused to create the topic.
    #[error("creating topic {topic}: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's error.
        code: RDKafkaErrorCode,
    },
    /// The topic does not exist.
    #[error("topic {0} does not exist")]
    NoSuchTopic(String),
    /// The request's thread panicked.
    #[error("the metadata request panicked: {0}")]
    Panicked(String),
}

/// Creates the topic with `retention.ms=-1` (the log is the system of record and is
/// never deleted) unless it exists already.
pub async fn ensure_topic(
    kafka: &KafkaConfig,
    spec: &TopicSpec,
    timeout: Duration,
) -> Result<TopicStatus, AdminError> {
    create_topic(
        kafka,
        spec,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
        timeout,
    )
    .await
}

/// Creates a compacted topic of small, often rewritten entries (one per key is kept)
/// unless it exists already: segments roll each minute so that compaction keeps it
/// short, and a deleted key's tombstone is kept for a minute.
pub async fn ensure_compacted_topic(
    kafka: &KafkaConfig,
    spec: &TopicSpec,
    timeout: Duration,
) -> Result<TopicStatus, AdminError> {
    create_topic(
        kafka,
        spec,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "60000"),
            ("min.cleanable.dirty.ratio", "0.1"),
            ("delete.retention.ms", "60000"),
        ],
        timeout,
    )
    .await
}

async fn create_topic(
    kafka: &KafkaConfig,
    spec: &TopicSpec,
    config: &[(&str, &str)],
    timeout: Duration,
) -> Result<TopicStatus, AdminError> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(&[("socket.connection.setup.timeout.ms", "3000")], &[])?
        .create()?;
    let mut topic = NewTopic::new(
        &spec.name,
        spec.partitions,
        TopicReplication::Fixed(spec.replication_factor),
    );
    for (k, v) in config {
        topic = topic.set(k, v);
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin.create_topics([&topic], &opts).await?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(TopicStatus::Created),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(TopicStatus::Existed),
        Some(Err((topic, code))) => Err(AdminError::Create { topic, code }),
        None => Err(AdminError::Kafka(KafkaError::AdminOpCreation(
            "no result for the topic".into(),
        ))),
    }
}

/// Asks the cluster for the topic's partition ids. Blocking: call it from a blocking
/// thread.
pub fn topic_partitions<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, AdminError> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| AdminError::NoSuchTopic(topic.to_string()))?;
    if let Some(err) = t.error() {
        let code: RDKafkaErrorCode = err.into();
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(AdminError::NoSuchTopic(topic.to_string()));
        }
        return Err(AdminError::Kafka(KafkaError::MetadataFetch(code)));
    }
    if t.partitions().is_empty() {
        return Err(AdminError::NoSuchTopic(topic.to_string()));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// A plain client (no group) for metadata and watermark requests.
pub fn metadata_client(kafka: &KafkaConfig) -> Result<BaseConsumer, AdminError> {
    Ok(kafka
        .client_config(
            &[
                ("socket.connection.setup.timeout.ms", "3000"),
                ("reconnect.backoff.max.ms", "1000"),
            ],
            &[],
        )?
        .create()?)
}

/// The high watermarks (next offset to be written) of these partitions. Blocking.
pub fn high_watermarks(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    partitions
        .iter()
        .map(|&p| {
            client
                .fetch_watermarks(topic, p, timeout)
                .map(|(_, hi)| (p, hi))
        })
        .collect()
}
