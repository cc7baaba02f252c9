//! Against the real broker, with the projector in-process: the projection equals the
//! model, consistency tokens, redelivery after Kafka's offsets move back, and poison.

mod common;

use std::time::Duration;

use common::*;
use ledger_domain::testing::event;
use ledger_domain::{AccountId, Amount, Event, EventBody};
use ledger_eventlog::producer::{
    DLQ_HEADER_ERROR, DLQ_HEADER_ERROR_KIND, DLQ_HEADER_OFFSET, DLQ_HEADER_PARTITION,
    DLQ_HEADER_TOPIC,
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
    // Counters whose labels are known are there at zero from the start.
    for series in [
        r#"projector_follow_up_producer_restarts_total{signal="fatal_error"} 0"#,
        r#"projector_dlq_producer_restarts_total{signal="deliveries_failing"} 0"#,
        r#"projector_poison_events_total{action="halted"} 0"#,
        r#"projector_rebuilds_total{outcome="mismatch"} 0"#,
        r#"projector_directory_failures_total{direction="publish"} 0"#,
        r#"projector_events_rejected_total{reason="balance_overflow"} 0"#,
        "projector_fenced_by_twin_total 0",
    ] {
        assert!(metrics.contains(series), "{series}:\n{metrics}");
    }
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
    assert_store_matches(&store, &topic, &model);
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
        &[0xEB, 0x00, 1, 2, 3],
        &[0xEB, 0x01, 0xff],
    ];
    let mut poison_positions = Vec::new();
    for g in garbage {
        poison_positions.push(produce_raw(&brokers, &topic, "pois", None, g).await);
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

/// A command id is an idempotency key per account: the same id on two accounts is two
/// commands, and a lookup without the account does not pick one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_id_on_two_accounts_is_two_commands() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("scope");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(config(&brokers, &topic, dir.path())).await;
    let events = [
        ev("shared", "scope-a", EventBody::OpenAccount),
        ev("shared", "scope-b", EventBody::OpenAccount),
        ev("only-a", "scope-a", EventBody::OpenAccount),
    ];
    let positions = produce(&brokers, &topic, &events).await;
    wait_applied(&p.url, &ends_of(&positions), Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    for account in ["scope-a", "scope-b"] {
        let v = get_json(&http, &format!("{}/v1/accounts/{account}", p.url)).await;
        assert_eq!(v["open"], true, "{account}: {v}");
        let v = get_json(
            &http,
            &format!("{}/v1/commands/shared?account_id={account}", p.url),
        )
        .await;
        assert_eq!(
            (v["status"].as_str(), v["account_id"].as_str()),
            (Some("applied"), Some(account)),
            "{v}"
        );
    }
    let r = http
        .get(format!("{}/v1/commands/shared", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ambiguous_command_id", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("scope-a") && message.contains("scope-b"),
        "{message}"
    );
    // An id used once needs no account; the duplicate open was rejected, not skipped.
    let v = get_json(&http, &format!("{}/v1/commands/only-a", p.url)).await;
    assert_eq!(v["reason"], "account_already_open", "{v}");
    p.stop().await;
}

/// State is kept per partition, so a copy of an account's event outside its partition
/// (the same bytes under another key, or under its key in another partition, as a hostile
/// or mistaken producer could write) would act on a second copy of the account. Each is
/// dead-lettered as `wrong_partition`, and the account is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_outside_its_accounts_partition_is_dead_lettered_not_applied() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("placed");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let p = InProcess::start(config(&brokers, &topic, dir.path())).await;

    let open = ev("w-open", "wrongly", EventBody::OpenAccount);
    let home = produce(&brokers, &topic, std::slice::from_ref(&open)).await[0].0;
    let bytes = ledger_eventlog::encode(&open);
    // The key "q", in whatever partition murmur2 gives it (maybe the same one).
    let under_q = produce_raw(&brokers, &topic, "q", None, &bytes).await;
    // The right key, in the next partition.
    let elsewhere = (home.partition + 1) % PARTITIONS;
    let moved = produce_raw(&brokers, &topic, "wrongly", Some(elsewhere), &bytes).await;
    let dep = ev(
        "w-dep",
        "wrongly",
        EventBody::Deposit {
            amount: Amount::new(5).unwrap(),
        },
    );
    let (after, _) = produce(&brokers, &topic, &[dep]).await.remove(0);

    let v = get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/accounts/wrongly?after={}", p.url, after.token()),
    )
    .await;
    assert_eq!(v["balance"], 5, "{v}");
    assert_eq!(v["applied_events"], 2, "opened once, deposited once: {v}");
    // Wait for the copies' partitions too, then check the dead letters.
    for pos in [under_q, moved] {
        let v = get_json(
            &reqwest::Client::new(),
            &format!("{}/v1/progress?after={}", p.url, pos.token()),
        )
        .await;
        assert!(v["partitions"].is_array(), "{v}");
    }
    let letters = read_topic(
        &brokers,
        &format!("{topic}.dlq"),
        2,
        Duration::from_secs(30),
    );
    let mut sources: Vec<(String, String)> = Vec::new();
    for (payload, headers) in &letters {
        assert_eq!(payload, &bytes, "the copy is kept as is");
        assert_eq!(
            headers[DLQ_HEADER_ERROR_KIND], "wrong_partition",
            "{headers:?}"
        );
        assert!(
            headers[DLQ_HEADER_ERROR].contains("wrongly"),
            "the reason names the account: {headers:?}"
        );
        sources.push((
            headers[DLQ_HEADER_PARTITION].clone(),
            headers[DLQ_HEADER_OFFSET].clone(),
        ));
    }
    sources.sort();
    let mut want: Vec<(String, String)> = [under_q, moved]
        .iter()
        .map(|pos| (pos.partition.to_string(), pos.offset.to_string()))
        .collect();
    want.sort();
    assert_eq!(sources, want);
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
    let poison = produce_raw(&brokers, &topic, "halt", None, b"\x00garbage").await;
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
        .account(&topic, &AccountId::parse("halt").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(acc.balance, 0, "nothing past the poison was applied");
}

/// A version-7 UUID command id made at `ms`, as the ingest makes them.
fn v7_id(ms: i64, n: u128) -> String {
    let bits = ((ms as u128) << 80) | (0x7 << 76) | (0b10 << 62) | n;
    ledger_domain::CommandId::from_uuid_bits(bits).to_string()
}

fn at(mut e: Event, ms: i64) -> Event {
    e.time_ms = ms;
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_expire_with_the_window_in_event_time_and_the_store_keeps_its_window() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("window");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&brokers, &topic, dir.path());
    cfg.idempotency.idempotency_window = "1m".parse().unwrap();
    let p = InProcess::start(cfg.clone()).await;
    let http = reqwest::Client::new();
    let t0 = 1_767_225_600_000;
    let uuid = v7_id(t0, 1);
    let dep = |id: &str, ms| {
        at(
            ev(
                id,
                "acc-w",
                EventBody::Deposit {
                    amount: Amount::new(10).unwrap(),
                },
            ),
            ms,
        )
    };
    // Open, a deposit under a UUIDv7 id and one under a text id, and a retry of the first
    // 59 s later: a duplicate.
    let first = [
        at(ev("o", "acc-w", EventBody::OpenAccount), t0),
        dep(&uuid, t0),
        dep("d-text", t0),
        dep(&uuid, t0 + 59_000),
    ];
    let positions = produce(&brokers, &topic, &first).await;
    wait_applied(&p.url, &ends_of(&positions), Duration::from_secs(60)).await;
    let account = get_json(&http, &format!("{}/v1/accounts/acc-w", p.url)).await;
    assert_eq!(account["balance"], 20, "{account}");
    let found = get_json(&http, &format!("{}/v1/commands/{uuid}", p.url)).await;
    assert_eq!(found["status"], "applied", "{found}");
    // Two minutes of event time later, both outcomes are pruned: the UUIDv7 id says how
    // old it is (410), the text id cannot (404, saying why it may be gone).
    let later = produce(&brokers, &topic, &[dep("d-later", t0 + 120_000)]).await;
    wait_applied(&p.url, &ends_of(&later), Duration::from_secs(60)).await;
    let expired = http
        .get(format!("{}/v1/commands/{uuid}", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 410);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["error"]["code"], "command_expired", "{body}");
    let gone = http
        .get(format!("{}/v1/commands/d-text?account_id=acc-w", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let body: Value = gone.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idempotency window (1m)"),
        "{body}"
    );
    // Beyond the window the same id is a new command: documented, and what a window is.
    let again = produce(&brokers, &topic, &[dep(&uuid, t0 + 121_000)]).await;
    wait_applied(&p.url, &ends_of(&again), Duration::from_secs(60)).await;
    let account = get_json(&http, &format!("{}/v1/accounts/acc-w", p.url)).await;
    assert_eq!(account["balance"], 40, "{account}");
    p.stop().await;

    // The store was built with a window of one minute, and keeps it.
    let mut other = cfg.clone();
    other.idempotency.idempotency_window = "unbounded".parse().unwrap();
    let store = projector::open_store(&other).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        projector::serve(other, store, listener, CancellationToken::new()),
    )
    .await
    .expect("refused at once");
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("idempotency window of 1m") && text.contains("unbounded"),
        "{text}"
    );
}
