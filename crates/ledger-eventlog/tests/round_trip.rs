//! Against the real broker: events written by the producer come back, in order per
//! account, under the right key and partitioner, as envelopes that decode to what was
//! sent, with the CloudEvents headers that describe them.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::future::join_all;
use ledger_domain::{AccountId, Amount, CommandId, Event, EventBody};
use ledger_eventlog::admin::{ensure_topic, TopicSpec, TopicStatus};
use ledger_eventlog::cloudevents::{self, header_value};
use ledger_eventlog::producer::{EventProducer, ProducerSettings};
use ledger_eventlog::{codec, KafkaConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedHeaders, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ACCOUNTS: usize = 37;
const EVENTS: usize = 1000;
const PARTITIONS: i32 = 6;

fn event(i: usize) -> Event {
    let body = match i % 3 {
        0 => EventBody::OpenAccount,
        1 => EventBody::Deposit {
            amount: Amount::new(i as u64 + 1).unwrap(),
        },
        _ => EventBody::Withdraw {
            amount: Amount::new(i as u64 + 1).unwrap(),
        },
    };
    Event {
        event_id: i as u128,
        command_id: CommandId::parse(&format!("cmd-{i}")).unwrap(),
        account_id: AccountId::parse(&format!("acc-{}", i % ACCOUNTS)).unwrap(),
        time_ms: 1_700_000_000_000 + i as i64,
        body,
    }
}

#[tokio::test]
async fn produce_then_consume_keeps_per_account_order() {
    let kafka = KafkaConfig::new(ledger_testkit::brokers());
    let topic = ledger_testkit::unique_topic("roundtrip");
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: PARTITIONS,
        replication_factor: 1,
    };
    let t = Duration::from_secs(10);
    assert_eq!(
        ensure_topic(&kafka, &spec, t).await.unwrap(),
        TopicStatus::Created
    );
    assert_eq!(
        ensure_topic(&kafka, &spec, t).await.unwrap(),
        TopicStatus::Existed
    );

    let producer = EventProducer::new(&kafka, ProducerSettings::default()).unwrap();
    // Per account, send in order but concurrently across accounts, as the ingest would:
    // each account's chain waits for its previous acknowledgement.
    let mut by_account: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    for i in 0..EVENTS {
        let e = event(i);
        by_account
            .entry(e.account_id.to_string())
            .or_default()
            .push(e);
    }
    let sent: HashMap<String, Vec<(i32, i64)>> =
        join_all(by_account.iter().map(|(acc, events)| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let mut positions = Vec::new();
                for e in events {
                    let p = producer
                        .send(&topic, e)
                        .await
                        .expect("the broker acknowledges");
                    positions.push((p.partition, p.offset));
                }
                (acc.clone(), positions)
            }
        }))
        .await
        .into_iter()
        .collect();
    for (acc, positions) in &sent {
        assert!(
            positions
                .windows(2)
                .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
            "{acc}: every event of one account in one partition, in order: {positions:?}"
        );
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", "roundtrip-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut received: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while n < EVENTS {
        assert!(
            Instant::now() < deadline,
            "only {n} of {EVENTS} events came back"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.unwrap();
        let e = codec::decode(msg.payload().unwrap()).expect("every envelope decodes");
        assert_eq!(
            msg.key().unwrap(),
            e.account_id.as_str().as_bytes(),
            "keyed by account id"
        );
        let headers: &BorrowedHeaders = msg.headers().expect("every event carries headers");
        let ce = |k| header_value(headers, k);
        let id = uuid::Uuid::from_u128(e.event_id).to_string();
        assert_eq!(ce("ce_specversion"), Some("1.0"));
        assert_eq!(ce("ce_id"), Some(id.as_str()));
        assert_eq!(ce("ce_type"), Some(cloudevents::event_type(&e.body)));
        assert_eq!(
            ce("ce_source"),
            Some("/ledger/ledger"),
            "the default client id"
        );
        assert_eq!(ce("ce_time"), Some(cloudevents::time(e.time_ms).as_str()));
        assert_eq!(ce("content-type"), Some(cloudevents::CONTENT_TYPE));
        let p = *partition_of
            .entry(e.account_id.to_string())
            .or_insert(msg.partition());
        assert_eq!(p, msg.partition());
        received
            .entry(e.account_id.to_string())
            .or_default()
            .push(e);
        n += 1;
    }
    assert_eq!(received, by_account, "same events, same order per account");

    // murmur2 partitioning, as Java clients do: "acc-0" must land where Java puts it.
    let expected = ledger_domain::partitioning::partition_for_key(b"acc-0", PARTITIONS);
    assert_eq!(partition_of["acc-0"], expected);
    drop(tpl);
}
