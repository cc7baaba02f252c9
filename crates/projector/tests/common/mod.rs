//! Shared by the projector's black-box tests: a reproducible workload, writing it to the
//! real broker, the model it must produce, the projector as a child process, and checks
//! of a store or the HTTP API against the model.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use futures::future::join_all;
use ledger_domain::{AccountId, Amount, CommandId, Event, EventBody, Model};
use ledger_eventlog::admin::{ensure_topic, TopicSpec};
use ledger_eventlog::producer::{EventProducer, ProducerSettings};
use ledger_eventlog::{KafkaConfig, Position};
use ledger_store::Store;
use ledger_testkit::{free_port, ChildGuard};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

pub const PARTITIONS: i32 = 6;

/// Creates a topic with the contract's settings.
pub async fn create_topic(brokers: &str, topic: &str) {
    let spec = TopicSpec {
        name: topic.into(),
        partitions: PARTITIONS,
        replication_factor: 1,
    };
    ensure_topic(&KafkaConfig::new(brokers), &spec, Duration::from_secs(10))
        .await
        .unwrap();
}

/// A reproducible mix: opens (some accounts never opened, some opened twice), deposits,
/// withdrawals including overdrafts, and retries of earlier command ids of the same
/// account. Command ids are unique per workload (`prefix`).
pub fn workload(seed: u64, accounts: usize, events: usize, prefix: &str) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<Event> = Vec::with_capacity(events);
    let mut per_account: HashMap<usize, Vec<usize>> = HashMap::new();
    let acc = |i: usize| AccountId::parse(&format!("{prefix}-acc-{i}")).unwrap();
    for i in 0..events {
        let a = rng.random_range(0..accounts);
        let roll = rng.random_range(0..100);
        let prior = per_account.get(&a).filter(|v| !v.is_empty());
        let retry_of = prior
            .filter(|_| roll < 4)
            .map(|v| v[rng.random_range(0..v.len())]);
        let (command_id, body) = if let Some(j) = retry_of {
            // A client retry: same command id, same account, same body.
            (out[j].command_id.clone(), out[j].body.clone())
        } else {
            let body = match roll {
                0..=9 => EventBody::OpenAccount,
                10..=54 => EventBody::Deposit {
                    amount: Amount::new(rng.random_range(1..=10_000)).unwrap(),
                },
                _ => EventBody::Withdraw {
                    amount: Amount::new(rng.random_range(1..=12_000)).unwrap(),
                },
            };
            (
                CommandId::parse(&format!("{prefix}-cmd-{i}")).unwrap(),
                body,
            )
        };
        per_account.entry(a).or_default().push(out.len());
        out.push(Event {
            event_id: i as u128,
            command_id,
            account_id: acc(a),
            time_ms: 1_700_000_000_000,
            body,
        });
    }
    // Make sure most accounts get opened early, so that the mix is not all rejections.
    let mut opens: Vec<Event> = (0..accounts.saturating_sub(accounts / 10))
        .map(|a| Event {
            event_id: (events + a) as u128,
            command_id: CommandId::parse(&format!("{prefix}-open-{a}")).unwrap(),
            account_id: acc(a),
            time_ms: 1_700_000_000_000,
            body: EventBody::OpenAccount,
        })
        .collect();
    opens.extend(out);
    opens
}

/// Writes events, in order per account (each account waits for its previous
/// acknowledgement), concurrently across accounts. Returns each event's position.
pub async fn produce(brokers: &str, topic: &str, events: &[Event]) -> Vec<(Position, Event)> {
    let producer =
        EventProducer::new(&KafkaConfig::new(brokers), ProducerSettings::default()).unwrap();
    let mut by_account: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_account.entry(e.account_id.as_str()).or_default().push(e);
    }
    join_all(by_account.into_values().map(|chain| {
        let producer = producer.clone();
        async move {
            let mut out = Vec::with_capacity(chain.len());
            for e in chain {
                let pos = producer
                    .send(topic, e)
                    .await
                    .expect("the broker acknowledges");
                out.push((pos, e.clone()));
            }
            out
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// Writes raw bytes under a key (for poison tests), in the key's murmur2 partition or in
/// the one given (as a hostile producer may).
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    key: &str,
    partition: Option<i32>,
    payload: &[u8],
) -> Position {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let (partition, offset) = p
        .send(record, Duration::from_secs(10))
        .await
        .map(|d| (d.partition, d.offset))
        .unwrap();
    Position { partition, offset }
}

/// The state the log must produce: events applied in offset order per partition.
pub fn model_of(positions: &[(Position, Event)]) -> Model {
    let mut sorted: Vec<&(Position, Event)> = positions.iter().collect();
    sorted.sort_by_key(|(p, _)| (p.partition, p.offset));
    let mut m = Model::new();
    for (p, e) in sorted {
        m.apply(e, *p);
    }
    m
}

/// Next offset per partition once all of these are applied.
pub fn ends_of(positions: &[(Position, Event)]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for (p, _) in positions {
        let e = ends.entry(p.partition).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    ends
}

/// Every account and command of `topic` in the store equals the model.
pub fn assert_store_matches(store: &Store, topic: &str, model: &Model) {
    let stored: BTreeMap<AccountId, _> = store.accounts(topic).unwrap().into_iter().collect();
    assert_eq!(stored.len(), model.accounts.len(), "number of accounts");
    for (id, want) in &model.accounts {
        assert_eq!(stored.get(id), Some(want), "account {id}");
    }
    for ((account, id), want) in &model.commands {
        let got = store
            .command(topic, account, id)
            .unwrap()
            .unwrap_or_else(|| panic!("command {id} of {account} missing"));
        assert_eq!(
            got.status, want.status,
            "status of command {id} of {account}"
        );
        assert_eq!(got.account_id, want.account_id, "account of command {id}");
    }
}

/// GETs `url` and decodes the JSON body, whatever the status (tests assert on it).
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let response = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: the body is not JSON: {e}"))
}

/// Every account and command served over HTTP equals the model.
pub async fn assert_http_matches(base: &str, model: &Model) {
    let http = reqwest::Client::new();
    for (id, want) in &model.accounts {
        let v = get_json(&http, &format!("{base}/v1/accounts/{id}")).await;
        assert_eq!(v["balance"], want.balance, "balance of {id}: {v}");
        assert_eq!(
            v["applied_events"], want.applied_events,
            "applied_events of {id}: {v}"
        );
        assert_eq!(v["open"], want.open, "{id}: {v}");
    }
    for ((account, id), want) in &model.commands {
        let v = get_json(
            &http,
            &format!("{base}/v1/commands/{id}?account_id={account}"),
        )
        .await;
        assert_eq!(
            v["status"],
            ledger_api::CommandOutcome::from(want.status).as_str(),
            "status of {id}: {v}"
        );
        assert_eq!(
            v["reason"].as_str(),
            want.status.reason(),
            "reason of {id}: {v}"
        );
        assert_eq!(v["account_id"], want.account_id.as_str(), "{id}: {v}");
    }
}

/// The projector binary as a child process, killed when dropped.
pub struct ProjectorProcess {
    pub child: ChildGuard,
    pub port: u16,
}

impl ProjectorProcess {
    pub fn spawn(brokers: &str, topic: &str, group: &str, data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_at(free_port(), brokers, topic, group, data_dir, extra)
    }

    /// As [`Self::spawn`], listening on `port` (a restart in place keeps its address).
    pub fn spawn_at(
        port: u16,
        brokers: &str,
        topic: &str,
        group: &str,
        data_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let log = data_dir.with_extension(format!("{port}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_projector"))
            .args(["--brokers", brokers, "--topic", topic, "--group-id", group])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        let child = ChildGuard::new("projector", child).with_log(log);
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        self.child.signal(sig).unwrap();
    }

    /// Waits for the process to exit, up to `timeout`; panics past it (and the guard
    /// kills it and shows its log).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.child
            .wait_exit(timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn kill9(&mut self) {
        self.child.kill9().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn log_text(&self) -> String {
        self.child.log_text()
    }
}

pub use ledger_testkit::applied_offsets;

/// Waits until the projector at `base` has applied everything below `ends`.
pub async fn wait_applied(base: &str, ends: &BTreeMap<i32, i64>, timeout: Duration) {
    ledger_testkit::wait_for("the projector to apply everything", timeout, || async {
        let applied = applied_offsets(base).await?;
        ends.iter()
            .all(|(p, e)| applied.get(p).is_some_and(|a| a >= e))
            .then_some(())
    })
    .await
}

/// Kafka's committed offsets for a group (read without joining it).
pub fn committed_offsets(brokers: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    ledger_testkit::committed_offsets(brokers, group, topic, PARTITIONS).expect("committed offsets")
}

/// Reads `n` messages from the start of a one-partition topic: payload and headers.
pub fn read_topic(
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
