//! Against the real broker, with the projector in-process: the projection equals the
//! model, consistency tokens, redelivery after Kafka's offsets move back, and poison.

mod common;

use std::time::Duration;

use common::*;
use ledger_domain::testing::event;
use ledger_domain::{AccountId, Amount, Event, EventBody};
use ledger_eventlog::producer::{
    DLQ_HEADER_ERROR, DLQ_HEADER_OFFSET, DLQ_HEADER_PARTITION, DLQ_HEADER_TOPIC,
};
use ledger_eventlog::Position;
use ledger_testkit::wait_ready;
use projector::Config;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct InProcess {
    url: String,
    stop: CancellationToken,
    task: JoinHandle<Result<(), projector::ProjectorError>>,
}

impl InProcess {
    async fn start(config: Config) -> Self {
        let store = projector::open_store(&config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(projector::serve(config, store, listener, stop.clone()));
        wait_ready(&url, Duration::from_secs(30)).await;
        Self { url, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the projector stops within 20 s")
            .unwrap()
            .expect("a clean stop");
    }
}

fn config(brokers: &str, topic: &str, dir: &std::path::Path) -> Config {
    let mut c = Config::for_brokers(brokers, dir);
    c.kafka.topic = topic.into();
    c.group_id = format!("{topic}.group");
    c
}

fn ev(cmd: &str, acc: &str, body: EventBody) -> Event {
    event(1, cmd, acc, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_matches_the_model_and_survives_redelivery() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("model");
    create_topic(&brokers, &topic).await;
    let events = workload(1, 40, 3000, "m");
    let positions = produce(&brokers, &topic, &events).await;
    let model = model_of(&positions);
    assert!(model
        .commands
        .values()
        .any(|c| c.status.reason() == Some("insufficient_funds")));
    assert!(model
        .commands
        .values()
        .any(|c| c.status.reason() == Some("account_not_open")));
    assert!(model
        .commands
        .values()
        .any(|c| c.status.reason() == Some("account_already_open")));

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&brokers, &topic, dir.path());
    let p = InProcess::start(cfg.clone()).await;
    let ends = ends_of(&positions);
    wait_applied(&p.url, &ends, Duration::from_secs(60)).await;
    assert_http_matches(&p.url, &model).await;
    let metrics = reqwest::get(format!("{}/metrics", p.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("projector_events_duplicate_total"),
        "{metrics}"
    );
    p.stop().await;
    assert_eq!(
        committed_offsets(&brokers, &cfg.group_id, &topic),
        ends,
        "committed after apply"
    );

    // Move Kafka's committed offsets back to the start; the store still holds the ends.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &cfg.group_id)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for part in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, part, rdkafka::Offset::Offset(0))
                .unwrap();
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    assert!(committed_offsets(&brokers, &cfg.group_id, &topic)
        .values()
        .all(|&o| o == 0));

    // More events, then restart: nothing is applied twice, the new ones are applied.
    let more = workload(2, 40, 500, "m2");
    let more_positions = produce(&brokers, &topic, &more).await;
    let mut all = positions.clone();
    all.extend(more_positions);
    let model = model_of(&all);
    let p = InProcess::start(cfg.clone()).await;
    wait_applied(&p.url, &ends_of(&all), Duration::from_secs(60)).await;
    assert_http_matches(&p.url, &model).await;
    p.stop().await;
    let store = ledger_store::Store::open(dir.path(), 8 << 20).unwrap();
    assert_store_matches(&store, &model);
    assert_eq!(store.offsets(&topic).unwrap(), ends_of(&all));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_tokens() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("tokens");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(config(&brokers, &topic, dir.path())).await;
    let http = reqwest::Client::new();

    let opened = produce(
        &brokers,
        &topic,
        &[ev("t-1", "tok", EventBody::OpenAccount)],
    )
    .await;
    for i in 0..20u64 {
        let dep = ev(
            &format!("t-dep-{i}"),
            "tok",
            EventBody::Deposit {
                amount: Amount::new(10).unwrap(),
            },
        );
        let (pos, _) = produce(&brokers, &topic, &[dep]).await.remove(0);
        // With the token, the very next read reflects the deposit.
        let v = get_json(
            &http,
            &format!("{}/v1/accounts/tok?after={}", p.url, pos.token()),
        )
        .await;
        assert_eq!(v["balance"], 10 * (i + 1), "{v}");
        let c = get_json(
            &http,
            &format!("{}/v1/commands/t-dep-{i}?after={}", p.url, pos.token()),
        )
        .await;
        assert_eq!(
            (
                c["status"].as_str(),
                c["partition"].as_i64(),
                c["offset"].as_i64()
            ),
            (
                Some("applied"),
                Some(pos.partition as i64),
                Some(pos.offset)
            )
        );
    }

    // A token beyond the end of the log times out with 503 and Retry-After.
    let beyond = Position {
        partition: opened[0].0.partition,
        offset: opened[0].0.offset + 1_000,
    };
    let started = std::time::Instant::now();
    let r = http
        .get(format!(
            "{}/v1/accounts/tok?after={}&timeout_ms=300",
            p.url,
            beyond.token()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_yet_consistent");

    for bad in ["garbage", "v1.1", "v1.-1.5", "v9.1.1"] {
        let r = http
            .get(format!("{}/v1/accounts/tok?after={bad}", p.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_token");
    }
    let r = http
        .get(format!("{}/v1/accounts/nobody", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "account_not_found"
    );
    let r = http
        .get(format!("{}/v1/commands/never-sent", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "command_not_found"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dead_letter_topic_and_later_events_apply() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("poison");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(config(&brokers, &topic, dir.path())).await;

    let before = produce(
        &brokers,
        &topic,
        &[ev("p-1", "pois", EventBody::OpenAccount)],
    )
    .await;
    let garbage: [&[u8]; 3] = [
        b"not an envelope",
        &[0xEB, 0x07, 1, 2, 3],
        &[0xEB, 0x01, 0xff],
    ];
    let mut poison_positions = Vec::new();
    for g in garbage {
        poison_positions.push(produce_raw(&brokers, &topic, "pois", g).await);
    }
    let dep = ev(
        "p-2",
        "pois",
        EventBody::Deposit {
            amount: Amount::new(77).unwrap(),
        },
    );
    let (after, _) = produce(&brokers, &topic, &[dep]).await.remove(0);
    assert_eq!(
        after.partition, before[0].0.partition,
        "same key, same partition"
    );

    let v = get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/accounts/pois?after={}", p.url, after.token()),
    )
    .await;
    assert_eq!(
        v["balance"], 77,
        "the event after the poison is applied: {v}"
    );

    // The dead letters, with their headers.
    let dlq = format!("{topic}.dlq");
    let letters = read_topic(&brokers, &dlq, 3, Duration::from_secs(30));
    for (i, (payload, headers)) in letters.iter().enumerate() {
        assert_eq!(payload.as_slice(), garbage[i]);
        assert_eq!(headers[DLQ_HEADER_TOPIC], topic);
        assert_eq!(
            headers[DLQ_HEADER_PARTITION],
            poison_positions[i].partition.to_string()
        );
        assert_eq!(
            headers[DLQ_HEADER_OFFSET],
            poison_positions[i].offset.to_string()
        );
        assert!(!headers[DLQ_HEADER_ERROR].is_empty());
    }
    let metrics = reqwest::get(format!("{}/metrics", p.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"projector_poison_events_total{action="dead_lettered"} 3"#),
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_on_poison_exits_non_zero_without_moving_past_it() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("halt");
    create_topic(&brokers, &topic).await;
    let first = produce(
        &brokers,
        &topic,
        &[ev("h-1", "halt", EventBody::OpenAccount)],
    )
    .await;
    let poison = produce_raw(&brokers, &topic, "halt", b"\x00garbage").await;
    let dep = ev(
        "h-2",
        "halt",
        EventBody::Deposit {
            amount: Amount::new(5).unwrap(),
        },
    );
    produce(&brokers, &topic, &[dep]).await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut proc = ProjectorProcess::spawn(
        &brokers,
        &topic,
        &format!("{topic}.g"),
        &data,
        &["--on-poison", "halt"],
    );
    let status = proc.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "halting must exit non-zero");
    let log = proc.log_text();
    assert!(log.contains("halting"), "a clear message:\n{log}");
    let store = ledger_store::Store::open(&data, 8 << 20).unwrap();
    assert_eq!(
        store.stored_offset(&topic, poison.partition).unwrap(),
        Some(poison.offset),
        "stopped at the poison"
    );
    assert_eq!(first[0].0.offset + 1, poison.offset);
    let acc = store
        .account(&AccountId::parse("halt").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(acc.balance, 0, "nothing past the poison was applied");
}

/// Reads `n` messages from the start of a one-partition topic: payload and headers.
fn read_topic(
    brokers: &str,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> Vec<(Vec<u8>, std::collections::HashMap<String, String>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "dlq-reader")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} dead letters",
            out.len()
        );
        let Some(Ok(m)) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((m.payload().unwrap_or_default().to_vec(), headers));
    }
    out
}
