//! Writing a replay's events straight to Kafka, as fast as the broker takes them.
//!
//! The envelopes are exactly what the ingest writes (`ledger_eventlog::codec::encode`,
//! keyed by account id, murmur2 partitioning, acks=all, idempotent, lz4), but produced
//! with a large linger and no per-event wait, so filling millions of events takes
//! seconds instead of the minutes the HTTP path would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ledger_domain::{ApplyResult, Model};
use ledger_eventlog::admin::{ensure_topic, TopicSpec, TopicStatus};
use ledger_eventlog::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde_json::{json, Value};

use crate::procfs::round3;
use crate::workload::ReplayEvents;

/// Creates a topic with the contract's settings; fails when it exists already and
/// `must_be_new`, since a benchmark over a topic with unknown contents means nothing.
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    must_be_new: bool,
) -> anyhow::Result<Value> {
    let status = ensure_topic(
        &KafkaConfig::new(brokers),
        &TopicSpec {
            name: topic.to_string(),
            partitions,
            replication_factor: 1,
        },
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("creating topic {topic}"))?;
    if must_be_new && status == TopicStatus::Existed {
        bail!("topic {topic} exists already; the benchmark needs a fresh one");
    }
    Ok(json!({"topic": topic, "partitions": partitions, "created": status == TopicStatus::Created}))
}

/// Deletes topics this benchmark created, so repeated runs do not fill the broker's
/// disk. A topic that is already gone is not an error.
pub async fn delete_topics(brokers: &str, topics: &[String]) -> anyhow::Result<Value> {
    let admin: AdminClient<DefaultClientContext> = KafkaConfig::new(brokers)
        .client_config(&[("socket.connection.setup.timeout.ms", "3000")], &[])?
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.delete_topics(&names, &opts).await?;
    let mut deleted = Vec::new();
    for r in results {
        match r {
            Ok(t) => deleted.push(t),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, code)) => bail!("deleting topic {t}: {code}"),
        }
    }
    Ok(json!({ "deleted": deleted }))
}

/// Counts delivery reports, and the highest offset acknowledged per partition.
#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    next_offsets: Mutex<BTreeMap<i32, i64>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut next = self
                    .next_offsets
                    .lock()
                    .expect("the delivery lock is never held across a panic");
                let e = next.entry(m.partition()).or_insert(0);
                *e = (*e).max(m.offset() + 1);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("the delivery lock is never held across a panic")
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// What to fill.
pub struct FillSpec<'a> {
    /// Bootstrap servers.
    pub brokers: &'a str,
    /// The topic, created here.
    pub topic: &'a str,
    /// Its partitions.
    pub partitions: i32,
    /// Events to write.
    pub events: u64,
    /// Accounts they are spread over.
    pub accounts: u64,
    /// Seed of the workload.
    pub seed: u64,
    /// Producer `linger.ms`.
    pub linger_ms: u32,
}

/// Creates the topic and writes `spec.events` events to it; returns once every one is
/// acknowledged.
pub async fn fill(spec: &FillSpec<'_>) -> anyhow::Result<Value> {
    create_topic(spec.brokers, spec.topic, spec.partitions, true).await?;
    let linger = spec.linger_ms.to_string();
    let producer: BaseProducer<Deliveries> = KafkaConfig::new(spec.brokers)
        .client_config(
            &[
                ("client.id", "ledger-bench-fill"),
                ("acks", "all"),
                ("enable.idempotence", "true"),
                ("partitioner", "murmur2_random"),
                ("compression.type", "lz4"),
                ("linger.ms", &linger),
                ("batch.size", "1000000"),
                ("batch.num.messages", "100000"),
                ("queue.buffering.max.messages", "2000000"),
                ("queue.buffering.max.kbytes", "1048576"),
                ("message.timeout.ms", "120000"),
            ],
            &[],
        )?
        .create_with_context(Deliveries::default())
        .context("creating the fill producer")?;

    // Events as the ingest writes them, CloudEvents headers included, so the replay reads
    // what a production topic holds.
    let source = ledger_eventlog::cloudevents::source("ledger-bench");
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut sent = 0u64;
    // librdkafka blocks nothing: the loop only encodes and enqueues, polling now and
    // then so delivery reports do not pile up; a full queue means wait for the broker.
    for event in ReplayEvents::new(spec.events, spec.accounts, spec.seed) {
        let payload = ledger_eventlog::encode(&event);
        bytes += payload.len() as u64;
        let mut record = BaseRecord::to(spec.topic)
            .key(event.account_id.as_str())
            .payload(&payload)
            .timestamp(event.time_ms)
            .headers(ledger_eventlog::cloudevents::headers(&event, &source));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing event {sent}: {e}"),
            }
        }
        sent += 1;
        if sent.is_multiple_of(4096) {
            producer.poll(Duration::ZERO);
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("waiting for the fill's acknowledgements")?;
    let seconds = started.elapsed().as_secs_f64();
    let ctx = producer.context();
    let ok = ctx.ok.load(Ordering::Relaxed);
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 || ok != spec.events {
        bail!(
            "the fill wrote {ok} of {} events ({failed} failed; first error: {:?})",
            spec.events,
            ctx.first_error.lock().expect("not poisoned")
        );
    }
    let next_offsets = ctx.next_offsets.lock().expect("not poisoned").clone();
    // After the clock: it is not part of filling.
    let expected = expected_state(spec.events, spec.accounts, spec.seed);
    Ok(json!({
        "topic": spec.topic,
        "events": ok,
        "accounts": spec.accounts,
        "partitions": spec.partitions,
        "payload_bytes": bytes,
        "mean_event_bytes": round3(bytes as f64 / ok.max(1) as f64),
        "seconds": round3(seconds),
        "fill_per_s": (ok as f64 / seconds).round(),
        "next_offsets": next_offsets,
        "expected": expected,
    }))
}

/// What the rules make of the events a fill writes, as totals that any correct consumer
/// of the topic ends with: a peer's stores are checked against them. The same seed gives
/// the same accounts and bodies in the same order (the ids differ between two
/// generations, but each is fresh, so no event is a duplicate either way), and every
/// account is on one partition, so per-account order is log order.
pub fn expected_state(events: u64, accounts: u64, seed: u64) -> Value {
    let mut model = Model::new();
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (n, event) in ReplayEvents::new(events, accounts, seed).enumerate() {
        // The events cause no follow-ups (there are no transfers), so where each sits
        // only names it.
        let at = ledger_domain::Position {
            partition: 0,
            offset: n as i64,
        };
        let label = match model.apply(&event, at).result {
            ApplyResult::Applied => "applied",
            ApplyResult::Duplicate => "duplicate",
            ApplyResult::Rejected(r) => r.code(),
            // The fill writes no operator's control events.
            ApplyResult::Control => "control",
        };
        *outcomes.entry(label).or_insert(0) += 1;
    }
    let states = model.accounts.values();
    json!({
        "accounts": model.accounts.len(),
        "accounts_open": states.clone().filter(|s| s.open).count(),
        // (null past i64, where the peer's own sum would fail too)
        "balance_sum": i64::try_from(states.clone().map(|s| i128::from(s.balance)).sum::<i128>()).ok(),
        "applied_events": states.map(|s| s.applied_events).sum::<u64>(),
        "commands": model.commands.len(),
        "outcomes": outcomes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_state_adds_up_and_repeats() {
        let e = expected_state(3000, 10, 7);
        assert_eq!(e["accounts"], 10);
        assert_eq!(e["accounts_open"], 10);
        assert_eq!(e["commands"], 3000);
        let outcomes = e["outcomes"].as_object().unwrap();
        let total: u64 = outcomes.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(total, 3000);
        assert_eq!(e["applied_events"], outcomes["applied"]);
        // Withdrawals on young accounts are refused: the rules ran, not a tally.
        assert!(outcomes["insufficient_funds"].as_u64().unwrap() > 0);
        assert_eq!(
            expected_state(3000, 10, 7),
            e,
            "the same seed, the same result"
        );
    }
}
