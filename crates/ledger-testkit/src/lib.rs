//! Test support shared by the crates' black-box tests: where the real broker is, unique
//! topic names, and waiting on a condition with a deadline instead of sleeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The one variable that tells tests where the real broker is. `scripts/test.sh` starts
/// a broker with `scripts/kafka-local.sh` and sets it.
pub const BROKERS_ENV: &str = "LEDGER_TEST_BROKERS";

/// The real broker's address. Panics with a clear message, instead of hanging, when the
/// variable is unset or nothing answers there.
pub fn brokers() -> String {
    let brokers = std::env::var(BROKERS_ENV).unwrap_or_else(|_| {
        panic!(
            "{BROKERS_ENV} is not set: this test needs a real Kafka broker. \
             Run scripts/test.sh, or scripts/kafka-local.sh start and \
             export {BROKERS_ENV}=127.0.0.1:9092"
        )
    });
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("socket.connection.setup.timeout.ms", "3000")
        .create()
        .expect("a bare client config is valid");
    if let Err(e) = client.fetch_metadata(None, Duration::from_secs(10)) {
        panic!("the Kafka broker at {brokers} ({BROKERS_ENV}) does not answer: {e}. Is it running? scripts/kafka-local.sh status");
    }
    brokers
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` until it returns `Some`, or panics with `what` once `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking [`wait_for`], for tests without a runtime.
pub fn wait_for_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kafka's committed offsets of a group for partitions `0..partitions` of a topic, read
/// without joining the group.
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let out = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    // Drop the list before the consumer: the other order can hang (rust-rdkafka #509).
    drop(committed);
    Ok(out)
}

/// Sets one of a topic's configs (legacy AlterConfigs: the topic's other overrides go
/// back to the broker's defaults), to make the broker refuse or accept writes on demand.
pub async fn set_topic_config(brokers: &str, topic: &str, key: &str, value: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client over a valid bootstrap list builds");
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .alter_configs([&change], &opts)
        .await
        .unwrap_or_else(|e| panic!("setting {key}={value} on {topic}: {e}"));
    for r in results {
        r.unwrap_or_else(|e| panic!("setting {key}={value} on {topic}: {e:?}"));
    }
}

/// Java's `Utils.murmur2` and `toPositive(hash) % partitions`: the partition a Java
/// producer (or Kafka Streams) picks for this key.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (key.len() as u32);
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

/// The sum of the samples of one metric on a service's `GET {base}/metrics`: every
/// label set of `series` when it is a bare name (`ingest_commands_accepted_total`), or
/// one series when it carries its labels (`…_total{signal="fatal_error"}`). `None`
/// while the service does not answer.
pub async fn metric_sum(base: &str, series: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// A projector's applied offsets (the next offset to apply, per partition), from its
/// `/v1/progress`; `None` while it does not answer.
pub async fn applied_offsets(base: &str) -> Option<BTreeMap<i32, i64>> {
    let progress: ledger_api::Progress = reqwest::get(format!("{base}/v1/progress"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(progress.applied_offsets())
}
