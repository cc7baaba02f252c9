//! Against the real broker: the producer's supervisor replaces a producer that will not
//! deliver again, and only then.
//!
//! - A fatal error (raised with librdkafka's own test hook, since a real one cannot be
//!   had on demand) is healed by a new producer within a second, and the counter says
//!   `fatal_error`.
//! - Deliveries refused while the broker answers metadata requests (the topic's
//!   `max.message.bytes` set below any event's size) mark the producer stuck and
//!   replace it with `deliveries_failing`; once the topic accepts writes again, so does
//!   the producer, and it is no longer stuck. (`min.insync.replicas` above the
//!   replication factor would be the obvious refusal, but Kafka 4 caps the one at the
//!   other and accepts the writes.)

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ledger_domain::{AccountId, CommandId, Event, EventBody};
use ledger_eventlog::admin::{ensure_topic, TopicSpec};
use ledger_eventlog::producer::{EventProducer, ProduceError, ProducerSettings, Supervision};
use ledger_eventlog::KafkaConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

type Restarts = Family<Vec<(&'static str, &'static str)>, Counter>;

fn event(i: u32) -> Event {
    Event {
        event_id: u128::from(i),
        command_id: CommandId::parse(&format!("sup-{i}")).unwrap(),
        account_id: AccountId::parse(&format!("acc-{}", i % 5)).unwrap(),
        time_ms: 1_700_000_000_000,
        body: EventBody::OpenAccount,
    }
}

async fn topic(kafka: &KafkaConfig, prefix: &str) -> String {
    let name = ledger_testkit::unique_topic(prefix);
    let spec = TopicSpec {
        name: name.clone(),
        partitions: 2,
        replication_factor: 1,
    };
    ensure_topic(kafka, &spec, Duration::from_secs(10))
        .await
        .unwrap();
    name
}

/// Starts a supervised producer; the broker counts as reachable throughout.
fn supervised(
    kafka: &KafkaConfig,
    delivery_timeout: Duration,
) -> (EventProducer, Restarts, CancellationToken) {
    let producer = EventProducer::new(
        kafka,
        ProducerSettings {
            delivery_timeout,
            linger_ms: 0,
            client_id: "supervisor-test".into(),
        },
    )
    .unwrap();
    let restarts = Restarts::default();
    let stop = CancellationToken::new();
    let supervision = Supervision {
        reachable: Arc::new(AtomicBool::new(true)),
        restarts: restarts.clone(),
    };
    tokio::spawn(producer.clone().supervise(supervision, stop.clone()));
    (producer, restarts, stop)
}

/// The supervisor's log lines go into the test's captured output.
fn log() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter("info")
        .try_init();
}

/// Waits until the supervisor no longer counts the producer as stuck.
async fn wait_not_stuck(producer: &EventProducer) {
    ledger_testkit::wait_for(
        "the producer no longer stuck",
        Duration::from_secs(10),
        || {
            let p = producer.clone();
            async move { (!p.is_stuck()).then_some(()) }
        },
    )
    .await;
}

fn count(restarts: &Restarts, signal: &'static str) -> u64 {
    restarts.get_or_create(&vec![("signal", signal)]).get()
}

/// Sets the topic's `max.message.bytes`: below any event's size, every write is refused.
async fn set_max_message_bytes(kafka: &KafkaConfig, topic: &str, n: &str) {
    ledger_testkit::set_topic_config(&kafka.brokers, topic, "max.message.bytes", n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_error_is_healed_by_a_new_producer() {
    log();
    let kafka = KafkaConfig::new(ledger_testkit::brokers());
    let topic = topic(&kafka, "sup.fatal").await;
    let (producer, restarts, stop) = supervised(&kafka, Duration::from_secs(5));

    producer
        .send(&topic, &event(0))
        .await
        .expect("a healthy producer delivers");
    producer.inject_fatal_error("injected by the supervisor test");
    let refused = producer.send(&topic, &event(1)).await;
    assert!(
        matches!(refused, Err(ProduceError::Kafka(_))),
        "a producer with a fatal error refuses: {refused:?}"
    );

    let delivered = ledger_testkit::wait_for(
        "a delivery after the fatal error",
        Duration::from_secs(10),
        || {
            let (p, t) = (producer.clone(), topic.clone());
            async move { p.send(&t, &event(2)).await.ok() }
        },
    )
    .await;
    assert!(delivered.offset >= 1, "a real offset: {delivered:?}");
    assert_eq!(producer.replacements(), 1);
    assert_eq!(count(&restarts, "fatal_error"), 1);
    assert_eq!(count(&restarts, "deliveries_failing"), 0);
    wait_not_stuck(&producer).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_refused_while_the_broker_answers_replace_the_producer() {
    log();
    let kafka = KafkaConfig::new(ledger_testkit::brokers());
    let topic = topic(&kafka, "sup.refused").await;
    let timeout = Duration::from_millis(1500);
    let (producer, restarts, stop) = supervised(&kafka, timeout);
    producer
        .send(&topic, &event(0))
        .await
        .expect("a healthy producer delivers");
    assert_eq!(producer.replacements(), 0);

    // Every write is now refused (MESSAGE_TOO_LARGE) while metadata requests succeed.
    set_max_message_bytes(&kafka, &topic, "16").await;
    let sender = tokio::spawn({
        let (p, t) = (producer.clone(), topic.clone());
        async move {
            let mut i = 10;
            let mut failed = 0u32;
            loop {
                i += 1;
                match p.send(&t, &event(i)).await {
                    Ok(_) if failed > 0 => return (i, failed),
                    Ok(_) => {}
                    Err(_) => failed += 1,
                }
            }
        }
    });
    ledger_testkit::wait_for(
        "the producer to be replaced",
        Duration::from_secs(20),
        || {
            let p = producer.clone();
            async move { (p.replacements() >= 1).then_some(()) }
        },
    )
    .await;
    assert!(producer.is_stuck(), "stuck while the writes are refused");
    assert!(count(&restarts, "deliveries_failing") >= 1);
    assert_eq!(count(&restarts, "fatal_error"), 0);

    set_max_message_bytes(&kafka, &topic, "1048588").await;
    let (_, failed) = tokio::time::timeout(Duration::from_secs(20), sender)
        .await
        .expect("deliveries resume once the topic accepts writes")
        .unwrap();
    assert!(failed >= 1, "the refused writes failed: {failed}");
    wait_not_stuck(&producer).await;
    stop.cancel();
}
