//! Helpers shared by the black-box tests of `command-ingest`: an ingest served in-process
//! on `127.0.0.1:0`, HTTP calls that keep status, headers and JSON body, and reading the
//! topic back with a plain consumer.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::time::{Duration, Instant};

use command_ingest::{Config, IngestError};
use ledger_domain::{Event, EventBody};
use ledger_eventlog::admin::{metadata_client, topic_partitions};
use ledger_eventlog::{codec, KafkaConfig, Position};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Partitions of every topic the tests create.
pub const PARTITIONS: i32 = 3;

/// A config with every field the tests rely on set explicitly, so that variables in
/// the environment (`LEDGER_AUTH_TOKEN`, `INGEST_*`) cannot leak in through clap's
/// `env` fallbacks.
pub fn config(brokers: &str, topic: &str) -> Config {
    let mut c = Config::for_brokers(brokers);
    c.kafka.brokers = brokers.to_string();
    c.kafka.topic = topic.to_string();
    c.partitions = PARTITIONS;
    c.replication_factor = 1;
    c.delivery_timeout_ms = 5000;
    c.linger_ms = 5;
    c.max_in_flight = 20_000;
    c.service.auth_token = None;
    c.kafka.kafka_config = Vec::new();
    c.shutdown_grace_ms = 2000;
    c.idempotency.idempotency_window = "24h".parse().expect("a valid window");
    c
}

/// An ingest served in-process on an ephemeral port.
pub struct Ingest {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), IngestError>>>,
}

impl Ingest {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(command_ingest::serve(config, listener, shutdown.clone()));
        Ingest {
            base: format!("http://{addr}"),
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Cancels and checks that `serve` returns `Ok` in time.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("not stopped yet");
        let res = tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .expect("serve returns within 20 s of the cancellation");
        res.expect("serve does not panic")
            .expect("serve stops without an error");
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client")
}

/// One HTTP answer, kept whole for assertions.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub text: String,
    /// The body as JSON, `Value::Null` when it is not JSON.
    pub json: Value,
}

impl Answer {
    async fn from(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let content_type = header("content-type");
        let text = resp.text().await.expect("the body is readable");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            retry_after,
            content_type,
            text,
            json,
        }
    }

    /// Asserts the contract's error shape: this status and
    /// `{"error":{"code":CODE,"message":non-empty}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(self.status, status, "{what}: status; body {}", self.text);
        assert_error_body(&self.json, code, what);
    }
}

/// Asserts `{"error":{"code":CODE,"message":non-empty}}` and nothing else.
#[track_caller]
pub fn assert_error_body(v: &Value, code: &str, what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: error body is a JSON object, got {v}"));
    assert_eq!(obj.len(), 1, "{what}: only an `error` member: {v}");
    let err = &obj["error"];
    assert_eq!(err["code"], code, "{what}: error code in {v}");
    let message = err["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: error.message is a string in {v}"));
    assert!(!message.trim().is_empty(), "{what}: empty message in {v}");
}

pub async fn get(http: &reqwest::Client, url: &str) -> Answer {
    let resp = http.get(url).send().await.expect("GET answered");
    Answer::from(resp).await
}

pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Answer {
    post_raw(
        http,
        url,
        Some("application/json"),
        serde_json::to_vec(body).unwrap(),
        None,
    )
    .await
}

pub async fn post_raw(
    http: &reqwest::Client,
    url: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    authorization: Option<&str>,
) -> Answer {
    let mut req = http.post(url).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("POST answered");
    Answer::from(resp).await
}

/// A `202` answer to one command, checked for the contract's shape.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: String,
    pub event_id: String,
    pub partition: i32,
    pub offset: i64,
    pub token: String,
}

/// Checks one command's success object (a `202` body, or a batch result): every field
/// present and typed, the token non-empty and naming the same position.
#[track_caller]
pub fn accepted(v: &Value, what: &str) -> Accepted {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: a JSON object, got {v}"));
    assert!(obj.get("error").is_none(), "{what}: not an error: {v}");
    let s = |k: &str| -> String {
        let s = obj
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what}: `{k}` is a string in {v}"));
        assert!(!s.is_empty(), "{what}: `{k}` is non-empty in {v}");
        s.to_string()
    };
    let partition = obj
        .get("partition")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{what}: `partition` is an integer in {v}"));
    let offset = obj
        .get("offset")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{what}: `offset` is an integer in {v}"));
    assert!(
        (0..PARTITIONS as i64).contains(&partition),
        "{what}: partition {partition} of {PARTITIONS}"
    );
    assert!(offset >= 0, "{what}: offset {offset}");
    let a = Accepted {
        command_id: s("command_id"),
        event_id: s("event_id"),
        partition: partition as i32,
        offset,
        token: s("token"),
    };
    let pos = Position::from_token(&a.token)
        .unwrap_or_else(|e| panic!("{what}: the token parses as a position: {e}"));
    assert_eq!(
        (pos.partition, pos.offset),
        (a.partition, a.offset),
        "{what}: the token names the answer's position"
    );
    a
}

/// One event read back from the topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub event: Event,
}

/// Checks that the record is the event the answer describes, for this command.
#[track_caller]
pub fn assert_record(
    rec: &Record,
    acc: &Accepted,
    account: &str,
    body: EventBody,
    command_id: Option<&str>,
    what: &str,
) {
    assert_eq!(
        (rec.partition, rec.offset),
        (acc.partition, acc.offset),
        "{what}: position"
    );
    assert_eq!(
        rec.key,
        account.as_bytes(),
        "{what}: keyed by the account id"
    );
    assert_eq!(rec.event.account_id.as_str(), account, "{what}: account");
    assert_eq!(rec.event.body, body, "{what}: body");
    assert_eq!(
        rec.event.command_id.as_str(),
        acc.command_id,
        "{what}: the answer's command id is the logged one"
    );
    if let Some(id) = command_id {
        assert_eq!(
            acc.command_id, id,
            "{what}: the client's command id is kept"
        );
    }
    let event_id = uuid::Uuid::parse_str(&acc.event_id)
        .unwrap_or_else(|e| panic!("{what}: event_id {:?} is a UUID: {e}", acc.event_id));
    assert_eq!(
        rec.event.event_id,
        event_id.as_u128(),
        "{what}: the answer's event id is the logged one"
    );
}

fn reader(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("command-ingest-tests-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("a consumer")
}

fn to_record(msg: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let payload = msg.payload().expect("every event has a value");
    Record {
        partition: msg.partition(),
        offset: msg.offset(),
        key: msg.key().expect("every event has a key").to_vec(),
        event: codec::decode(payload).unwrap_or_else(|e| {
            panic!(
                "the event at {}/{} decodes: {e}",
                msg.partition(),
                msg.offset()
            )
        }),
    }
}

/// The sum over partitions of the high watermarks: how many events the topic holds.
/// Blocking.
pub fn end_offsets(brokers: &str, topic: &str) -> i64 {
    let client = metadata_client(&KafkaConfig::new(brokers)).expect("a metadata client");
    let t = Duration::from_secs(10);
    let parts = topic_partitions(&client, topic, t).expect("the topic exists");
    assert_eq!(parts.len(), PARTITIONS as usize, "partitions of {topic}");
    parts
        .iter()
        .map(|&p| {
            // Right after a topic is created a partition's leader may not be known yet
            // (NotLeaderForPartition): retry that for a while.
            let what = format!("the watermarks of {topic}/{p}");
            let (_, hi) = ledger_testkit::retry_blocking(&what, t, || {
                client.fetch_watermarks(topic, p, t).inspect_err(|e| {
                    eprintln!("watermarks of {topic}/{p} not available yet: {e}");
                })
            });
            hi
        })
        .sum()
}

/// The events at these positions. Blocking.
pub fn read_at(
    brokers: &str,
    topic: &str,
    positions: &[(i32, i64)],
) -> HashMap<(i32, i64), Record> {
    let mut out = HashMap::new();
    for &(p, o) in positions {
        if out.contains_key(&(p, o)) {
            continue;
        }
        let consumer = reader(brokers);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no event at {topic}/{p}/{o}");
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.expect("consuming works");
            assert_eq!(
                (msg.partition(), msg.offset()),
                (p, o),
                "the first event read from {p}/{o}"
            );
            out.insert((p, o), to_record(&msg));
            break;
        }
    }
    out
}

/// Every event of the topic, by partition and offset. Blocking.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer = reader(brokers);
    let t = Duration::from_secs(10);
    let parts = topic_partitions(&consumer, topic, t).expect("the topic exists");
    let mut want: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        let (lo, hi) = consumer.fetch_watermarks(topic, p, t).unwrap();
        if hi > lo {
            want.insert(p, hi);
            tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if want.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_empty() {
        assert!(
            Instant::now() < deadline,
            "read {} events of {topic}; partitions not read to the end: {want:?}",
            out.len()
        );
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.expect("consuming works");
        let rec = to_record(&msg);
        if want
            .get(&rec.partition)
            .is_some_and(|&hi| rec.offset + 1 >= hi)
        {
            want.remove(&rec.partition);
        }
        out.push(rec);
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// Runs a blocking helper off the runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the blocking helper does not panic")
}
