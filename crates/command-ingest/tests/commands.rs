//! Against the real broker (`LEDGER_TEST_BROKERS`): the HTTP contract of
//! `command-ingest`, from the outside. Every accepted command is one event in the topic,
//! where the answer says, decoding to what was sent; every refused request has the
//! contract's status and error body and writes nothing.

mod common;

use std::time::Duration;

use common::{
    accepted, assert_error_body, assert_record, blocking, config, end_offsets, get, http,
    post_json, post_raw, read_at, Accepted, Ingest, PARTITIONS,
};
use ledger_domain::testing::{deposit, transfer, withdraw};
use ledger_domain::{CommandId, EventBody};
use ledger_testkit::{brokers, unique_topic, wait_for, wait_ready};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(30);

async fn events_in(brokers: &str, topic: &str) -> i64 {
    let (b, t) = (brokers.to_string(), topic.to_string());
    blocking(move || end_offsets(&b, &t)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_kind_is_acknowledged_and_lands_in_the_log() {
    let brokers = brokers();
    let topic = unique_topic("ingest.kinds");
    let ingest = Ingest::start(config(&brokers, &topic)).await;
    let http = http();
    wait_ready(&ingest.base, READY).await;

    let long_account = "A".repeat(64);
    let long_command = format!("c:{}", "9".repeat(126));
    // (request, account, the client's command id, the event body it must log)
    let cases: Vec<(Value, &str, Option<&str>, EventBody)> = vec![
        (
            json!({"type":"open_account","account_id":"acc-a"}),
            "acc-a",
            None,
            EventBody::OpenAccount,
        ),
        (
            json!({"type":"deposit","account_id":"acc-a","amount":1250}),
            "acc-a",
            None,
            deposit(1250),
        ),
        (
            json!({"type":"withdraw","account_id":"acc-a","amount":300}),
            "acc-a",
            None,
            withdraw(300),
        ),
        (
            json!({"type":"open_account","account_id":"Acc.B_2-x","command_id":"open:B-1"}),
            "Acc.B_2-x",
            Some("open:B-1"),
            EventBody::OpenAccount,
        ),
        (
            json!({"type":"deposit","account_id":"Acc.B_2-x","amount":1_000_000_000_000_u64,"command_id":"dep.B_2"}),
            "Acc.B_2-x",
            Some("dep.B_2"),
            deposit(1_000_000_000_000),
        ),
        (
            json!({"command_id":"wd-B-3","amount":1,"account_id":"Acc.B_2-x","type":"withdraw"}),
            "Acc.B_2-x",
            Some("wd-B-3"),
            withdraw(1),
        ),
        (
            json!({"type":"open_account","account_id":"acc-c","command_id":null}),
            "acc-c",
            None,
            EventBody::OpenAccount,
        ),
        (
            json!({"type":"withdraw","account_id":long_account,"amount":7,"command_id":long_command}),
            &long_account,
            Some(&long_command),
            withdraw(7),
        ),
        // Keyed by its source: the projector of the source's partition debits it.
        (
            json!({"type":"transfer","from_account":"acc-a","to_account":"Acc.B_2-x","amount":500,"command_id":"t-1"}),
            "acc-a",
            Some("t-1"),
            transfer("Acc.B_2-x", 500),
        ),
    ];

    let before = events_in(&brokers, &topic).await;
    let url = ingest.url("/v1/commands");
    let mut answers: Vec<Accepted> = Vec::new();
    // One at a time, so that each account's events are logged in this order.
    for (i, (body, ..)) in cases.iter().enumerate() {
        let a = post_json(&http, &url, body).await;
        assert_eq!(a.status, 202, "case {i} {body}: {}", a.text);
        answers.push(accepted(&a.json, &format!("case {i} {body}")));
    }
    // A body of exactly 64 KiB (padded with whitespace), with a charset parameter.
    let mut padded = br#"{"type":"deposit","account_id":"acc-c","amount":42}"#.to_vec();
    padded.resize(64 * 1024, b' ');
    let a = post_raw(
        &http,
        &url,
        Some("application/json; charset=utf-8"),
        padded,
        None,
    )
    .await;
    assert_eq!(a.status, 202, "a 64 KiB body is allowed: {}", a.text);
    answers.push(accepted(&a.json, "64 KiB body"));
    let mut cases = cases;
    cases.push((Value::Null, "acc-c", None, deposit(42)));

    let positions: Vec<(i32, i64)> = answers.iter().map(|a| (a.partition, a.offset)).collect();
    let records = {
        let (b, t, p) = (brokers.clone(), topic.clone(), positions.clone());
        blocking(move || read_at(&b, &t, &p)).await
    };
    for (i, ((body, account, command_id, event), acc)) in cases.iter().zip(&answers).enumerate() {
        let what = format!("case {i} {body}");
        assert_record(
            &records[&(acc.partition, acc.offset)],
            acc,
            account,
            event.clone(),
            *command_id,
            &what,
        );
        if command_id.is_none() {
            assert!(
                CommandId::parse(&acc.command_id).is_ok(),
                "{what}: the generated command id {:?} is a valid command id",
                acc.command_id
            );
            let version = uuid::Uuid::parse_str(&acc.command_id).map(|u| u.get_version_num());
            assert_eq!(
                version,
                Ok(7),
                "{what}: generated command ids are time-ordered UUIDv7, which keeps the projector's index local: {:?}",
                acc.command_id
            );
        }
        assert_eq!(
            acc.partition,
            ledger_domain::partitioning::partition_for_key(account.as_bytes(), PARTITIONS),
            "{what}: partitioned by murmur2 of the account id, as Java clients do"
        );
    }
    // Per account: one partition, offsets in the order the commands were acknowledged.
    for account in ["acc-a", "Acc.B_2-x", "acc-c"] {
        let pos: Vec<(i32, i64)> = cases
            .iter()
            .zip(&answers)
            .filter(|((_, a, ..), _)| *a == account)
            .map(|(_, acc)| (acc.partition, acc.offset))
            .collect();
        assert!(
            pos.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1),
            "{account}: one partition, increasing offsets: {pos:?}"
        );
    }
    let mut ids: Vec<&str> = answers.iter().map(|a| a.command_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), answers.len(), "every command id is distinct");
    let mut events: Vec<&str> = answers.iter().map(|a| a.event_id.as_str()).collect();
    events.sort_unstable();
    events.dedup();
    assert_eq!(events.len(), answers.len(), "every event id is distinct");
    assert_eq!(
        events_in(&brokers, &topic).await - before,
        answers.len() as i64,
        "exactly one event per accepted command"
    );
    ingest.stop().await;
}

struct Bad {
    what: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(what: &'static str, body: impl Into<Vec<u8>>, code: &'static str) -> Bad {
    Bad {
        what,
        content_type: Some("application/json"),
        body: body.into(),
        status: 400,
        code,
    }
}

fn malformed_table() -> Vec<Bad> {
    let mut big = br#"{"type":"open_account","account_id":"acc-1"}"#.to_vec();
    big.resize(64 * 1024 + 1, b' ');
    let huge_string = format!(
        r#"{{"type":"open_account","account_id":"{}"}}"#,
        "a".repeat(100_000)
    );
    let valid = br#"{"type":"open_account","account_id":"acc-1"}"#;
    vec![
        Bad {
            status: 410,
            ..bad(
                "a version-7 UUID id made before the idempotency window (24h in these tests)",
                r#"{"type":"deposit","account_id":"acc-1","amount":5,"command_id":"01700000-0000-7000-8000-000000000000"}"#,
                "command_expired",
            )
        },
        bad("empty body", "", "invalid_json"),
        bad(
            "truncated object",
            r#"{"type":"open_account""#,
            "invalid_json",
        ),
        bad("not JSON", "type=open_account", "invalid_json"),
        bad("an array", "[]", "invalid_json"),
        bad("a number", "42", "invalid_json"),
        bad("null", "null", "invalid_json"),
        bad(
            "invalid UTF-8",
            b"{\"type\":\"\xff\"}".to_vec(),
            "invalid_json",
        ),
        bad(
            "trailing garbage",
            r#"{"type":"open_account","account_id":"a"} x"#,
            "invalid_json",
        ),
        bad(
            "unknown type",
            r#"{"type":"close_account","account_id":"acc-1"}"#,
            "unknown_command",
        ),
        bad(
            "type is a number",
            r#"{"type":7,"account_id":"acc-1"}"#,
            "unknown_command",
        ),
        bad("no type", r#"{"account_id":"acc-1"}"#, "missing_field"),
        bad(
            "deposit without amount",
            r#"{"type":"deposit","account_id":"acc-1"}"#,
            "missing_field",
        ),
        bad(
            "withdraw without account",
            r#"{"type":"withdraw","amount":5}"#,
            "missing_field",
        ),
        bad(
            "open_account with an amount",
            r#"{"type":"open_account","account_id":"acc-1","amount":5}"#,
            "unknown_field",
        ),
        bad(
            "deposit with a memo",
            r#"{"type":"deposit","account_id":"acc-1","amount":5,"memo":"x"}"#,
            "unknown_field",
        ),
        bad(
            "amount zero",
            r#"{"type":"deposit","account_id":"acc-1","amount":0}"#,
            "invalid_amount",
        ),
        bad(
            "amount negative",
            r#"{"type":"withdraw","account_id":"acc-1","amount":-5}"#,
            "invalid_amount",
        ),
        bad(
            "amount a fraction",
            r#"{"type":"deposit","account_id":"acc-1","amount":12.5}"#,
            "invalid_amount",
        ),
        bad(
            "amount 100.0",
            r#"{"type":"deposit","account_id":"acc-1","amount":100.0}"#,
            "invalid_amount",
        ),
        bad(
            "amount a string",
            r#"{"type":"deposit","account_id":"acc-1","amount":"100"}"#,
            "invalid_amount",
        ),
        bad(
            "amount over the maximum",
            r#"{"type":"deposit","account_id":"acc-1","amount":1000000000001}"#,
            "invalid_amount",
        ),
        bad(
            "amount past u64",
            r#"{"type":"deposit","account_id":"acc-1","amount":18446744073709551616}"#,
            "invalid_amount",
        ),
        bad(
            "amount with an exponent",
            r#"{"type":"deposit","account_id":"acc-1","amount":1e3}"#,
            "invalid_amount",
        ),
        bad(
            "amount null",
            r#"{"type":"deposit","account_id":"acc-1","amount":null}"#,
            "invalid_amount",
        ),
        bad(
            "account id empty",
            r#"{"type":"open_account","account_id":""}"#,
            "invalid_account_id",
        ),
        bad(
            "account id of 65 characters",
            format!(
                r#"{{"type":"open_account","account_id":"{}"}}"#,
                "a".repeat(65)
            ),
            "invalid_account_id",
        ),
        bad(
            "account id with a space",
            r#"{"type":"open_account","account_id":"acc 1"}"#,
            "invalid_account_id",
        ),
        bad(
            "account id with a colon",
            r#"{"type":"open_account","account_id":"acc:1"}"#,
            "invalid_account_id",
        ),
        bad(
            "account id non-ASCII",
            r#"{"type":"open_account","account_id":"accé"}"#,
            "invalid_account_id",
        ),
        bad(
            "account id a number",
            r#"{"type":"open_account","account_id":12}"#,
            "invalid_account_id",
        ),
        bad(
            "command id empty",
            r#"{"type":"open_account","account_id":"acc-1","command_id":""}"#,
            "invalid_command_id",
        ),
        bad(
            "command id with a slash",
            r#"{"type":"open_account","account_id":"acc-1","command_id":"c/1"}"#,
            "invalid_command_id",
        ),
        bad(
            "command id of 129 characters",
            format!(
                r#"{{"type":"open_account","account_id":"acc-1","command_id":"{}"}}"#,
                "c".repeat(129)
            ),
            "invalid_command_id",
        ),
        bad(
            "command id a number",
            r#"{"type":"open_account","account_id":"acc-1","command_id":42}"#,
            "invalid_command_id",
        ),
        bad(
            "transfer to its own source",
            r#"{"type":"transfer","from_account":"acc-1","to_account":"acc-1","amount":5}"#,
            "invalid_transfer",
        ),
        bad(
            "transfer naming account_id",
            r#"{"type":"transfer","account_id":"acc-1","to_account":"acc-2","amount":5}"#,
            "unknown_field",
        ),
        bad(
            "transfer without a destination",
            r#"{"type":"transfer","from_account":"acc-1","amount":5}"#,
            "missing_field",
        ),
        bad(
            "transfer to a malformed account",
            r#"{"type":"transfer","from_account":"acc-1","to_account":"acc 2","amount":5}"#,
            "invalid_account_id",
        ),
        bad(
            "transfer of nothing",
            r#"{"type":"transfer","from_account":"acc-1","to_account":"acc-2","amount":0}"#,
            "invalid_amount",
        ),
        Bad {
            status: 413,
            ..bad("body of 64 KiB + 1", big, "payload_too_large")
        },
        Bad {
            status: 413,
            ..bad("body of 100 KB", huge_string, "payload_too_large")
        },
        Bad {
            content_type: None,
            status: 415,
            ..bad("no content type", valid.to_vec(), "unsupported_media_type")
        },
        Bad {
            content_type: Some("text/plain"),
            status: 415,
            ..bad("text/plain", valid.to_vec(), "unsupported_media_type")
        },
        Bad {
            content_type: Some("application/x-www-form-urlencoded"),
            status: 415,
            ..bad("form", valid.to_vec(), "unsupported_media_type")
        },
        Bad {
            content_type: Some("application/jsonl"),
            status: 415,
            ..bad(
                "application/jsonl",
                valid.to_vec(),
                "unsupported_media_type",
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_the_contract_error_and_write_nothing() {
    let brokers = brokers();
    let topic = unique_topic("ingest.malformed");
    let ingest = Ingest::start(config(&brokers, &topic)).await;
    let http = http();
    wait_ready(&ingest.base, READY).await;
    let url = ingest.url("/v1/commands");

    let table = malformed_table();
    assert!(table.len() >= 20);
    let before = events_in(&brokers, &topic).await;
    for case in table {
        let a = post_raw(&http, &url, case.content_type, case.body, None).await;
        a.assert_error(case.status, case.code, case.what);
        assert!(
            a.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{}: a JSON error: {:?}",
            case.what,
            a.content_type
        );
    }
    assert_eq!(
        events_in(&brokers, &topic).await,
        before,
        "no refused request wrote an event"
    );

    // The measurement sees a write: one valid command moves the end offsets by one.
    let a = post_json(
        &http,
        &url,
        &json!({"type":"open_account","account_id":"acc-1"}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(events_in(&brokers, &topic).await, before + 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_guards_the_v1_routes_and_leaves_ops_routes_open() {
    let brokers = brokers();
    let topic = unique_topic("ingest.auth");
    let mut cfg = config(&brokers, &topic);
    cfg.service.auth_token = Some("s3cret-token".into());
    let ingest = Ingest::start(cfg).await;
    let http = http();
    // /readyz is open: waiting on it needs no token.
    wait_ready(&ingest.base, READY).await;
    let healthz = get(&http, &ingest.url("/healthz")).await;
    assert_eq!(healthz.status, 200, "{}", healthz.text);
    let metrics = get(&http, &ingest.url("/metrics")).await;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    // Counters whose labels are known are there at zero before anything happened.
    for signal in ["fatal_error", "deliveries_failing", "no_producer_id"] {
        let series = format!("ingest_producer_restarts_total{{signal=\"{signal}\"}} 0");
        assert!(
            metrics.text.contains(&series),
            "{series}:\n{}",
            metrics.text
        );
    }

    let one = ingest.url("/v1/commands");
    let batch = ingest.url("/v1/commands/batch");
    let cmd = br#"{"type":"open_account","account_id":"acc-1"}"#.to_vec();
    let before = events_in(&brokers, &topic).await;
    let refused: [(&str, &str, Option<&str>); 7] = [
        ("single, no header", &one, None),
        ("single, wrong token", &one, Some("Bearer wrong-token")),
        ("single, token prefix", &one, Some("Bearer s3cret")),
        ("single, token without Bearer", &one, Some("s3cret-token")),
        ("single, Basic scheme", &one, Some("Basic s3cret-token")),
        ("batch, no header", &batch, None),
        ("batch, wrong token", &batch, Some("Bearer nope")),
    ];
    for (what, url, authz) in refused {
        let body = if url == batch {
            format!("[{}]", String::from_utf8_lossy(&cmd)).into_bytes()
        } else {
            cmd.clone()
        };
        let a = post_raw(&http, url, Some("application/json"), body, authz).await;
        a.assert_error(401, "unauthorized", what);
    }
    // Authentication comes before validation: a bad body without a token is still 401.
    let a = post_raw(&http, &one, Some("text/plain"), b"{".to_vec(), None).await;
    a.assert_error(401, "unauthorized", "malformed and unauthenticated");
    assert_eq!(
        events_in(&brokers, &topic).await,
        before,
        "no unauthorized request wrote an event"
    );

    let a = post_raw(
        &http,
        &one,
        Some("application/json"),
        cmd.clone(),
        Some("Bearer s3cret-token"),
    )
    .await;
    assert_eq!(a.status, 202, "with the token: {}", a.text);
    let acc = accepted(&a.json, "with the token");
    let b = post_raw(
        &http,
        &batch,
        Some("application/json"),
        format!("[{}]", String::from_utf8_lossy(&cmd)).into_bytes(),
        Some("Bearer s3cret-token"),
    )
    .await;
    assert_eq!(b.status, 202, "batch with the token: {}", b.text);
    accepted(&b.json["results"][0], "batch with the token");
    assert_eq!(events_in(&brokers, &topic).await, before + 2);
    let rec = {
        let (br, t, p) = (brokers.clone(), topic.clone(), (acc.partition, acc.offset));
        blocking(move || read_at(&br, &t, &[p])).await
    };
    assert_record(
        &rec[&(acc.partition, acc.offset)],
        &acc,
        "acc-1",
        EventBody::OpenAccount,
        None,
        "with the token",
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_in_input_order_and_writes_exactly_its_valid_items() {
    let brokers = brokers();
    let topic = unique_topic("ingest.batch");
    let ingest = Ingest::start(config(&brokers, &topic)).await;
    let http = http();
    wait_ready(&ingest.base, READY).await;

    // (item, Ok((account, command id, body)) or Err(error code))
    type Expect = Result<(&'static str, Option<&'static str>, EventBody), &'static str>;
    let items: Vec<(Value, Expect)> = vec![
        (
            json!({"type":"open_account","account_id":"b-1"}),
            Ok(("b-1", None, EventBody::OpenAccount)),
        ),
        (
            json!({"type":"deposit","account_id":"b-1","amount":0}),
            Err("invalid_amount"),
        ),
        (
            json!({"type":"deposit","account_id":"b-2","amount":500,"command_id":"batch-dep-2"}),
            Ok(("b-2", Some("batch-dep-2"), deposit(500))),
        ),
        (
            json!({"type":"close_account","account_id":"b-1"}),
            Err("unknown_command"),
        ),
        (json!(42), Err("invalid_json")),
        (json!({"account_id":"b-1"}), Err("missing_field")),
        (
            json!({"type":"withdraw","account_id":"b-3","amount":75,"command_id":"batch-wd-3"}),
            Ok(("b-3", Some("batch-wd-3"), withdraw(75))),
        ),
        (
            json!({"type":"open_account","account_id":"b 4"}),
            Err("invalid_account_id"),
        ),
        (
            json!({"type":"open_account","account_id":"b-4","command_id":"no/slash"}),
            Err("invalid_command_id"),
        ),
        (
            json!({"type":"open_account","account_id":"b-4","extra":true}),
            Err("unknown_field"),
        ),
        (
            json!({"type":"open_account","account_id":"b-4","command_id":"01700000-0000-7000-8000-000000000001"}),
            Err("command_expired"),
        ),
        (
            json!({"type":"open_account","account_id":"b-5"}),
            Ok(("b-5", None, EventBody::OpenAccount)),
        ),
    ];
    let valid = items.iter().filter(|(_, e)| e.is_ok()).count() as i64;

    let before = events_in(&brokers, &topic).await;
    let body = Value::Array(items.iter().map(|(v, _)| v.clone()).collect());
    let a = post_json(&http, &ingest.url("/v1/commands/batch"), &body).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let results = a.json["results"]
        .as_array()
        .unwrap_or_else(|| panic!("`results` is an array: {}", a.text));
    assert_eq!(results.len(), items.len(), "one result per item");

    let mut ok = Vec::new();
    for (i, ((item, expect), result)) in items.iter().zip(results).enumerate() {
        let what = format!("item {i} {item}");
        match expect {
            Ok((account, command_id, event)) => {
                let acc = accepted(result, &what);
                ok.push((acc, *account, *command_id, event.clone(), what));
            }
            Err(code) => {
                assert_error_body(result, code, &what);
            }
        }
    }
    assert_eq!(
        events_in(&brokers, &topic).await - before,
        valid,
        "the topic grows by exactly the number of valid items"
    );
    let positions: Vec<(i32, i64)> = ok.iter().map(|(a, ..)| (a.partition, a.offset)).collect();
    let records = {
        let (b, t) = (brokers.clone(), topic.clone());
        blocking(move || read_at(&b, &t, &positions)).await
    };
    for (acc, account, command_id, event, what) in &ok {
        assert_record(
            &records[&(acc.partition, acc.offset)],
            acc,
            account,
            event.clone(),
            *command_id,
            what,
        );
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_limits_and_shape() {
    let brokers = brokers();
    let topic = unique_topic("ingest.batchlimits");
    let ingest = Ingest::start(config(&brokers, &topic)).await;
    let http = http();
    wait_ready(&ingest.base, READY).await;
    let url = ingest.url("/v1/commands/batch");
    let before = events_in(&brokers, &topic).await;

    let too_many = Value::Array(
        (0..10_001)
            .map(|i| json!({"type":"open_account","account_id":format!("acc-{i}")}))
            .collect(),
    );
    post_json(&http, &url, &too_many)
        .await
        .assert_error(413, "payload_too_large", "10001 items");
    for (what, body) in [
        (
            "an object",
            r#"{"type":"open_account","account_id":"acc-1"}"#,
        ),
        ("a string", r#""open_account""#),
        ("null", "null"),
        (
            "truncated",
            r#"[{"type":"open_account","account_id":"acc-1"}"#,
        ),
        ("empty body", ""),
    ] {
        post_raw(&http, &url, Some("application/json"), body.into(), None)
            .await
            .assert_error(400, "invalid_json", what);
    }
    post_raw(
        &http,
        &url,
        Some("text/plain"),
        br#"[{"type":"open_account","account_id":"acc-1"}]"#.to_vec(),
        None,
    )
    .await
    .assert_error(415, "unsupported_media_type", "batch as text/plain");
    post_raw(
        &http,
        &url,
        None,
        br#"[{"type":"open_account","account_id":"acc-1"}]"#.to_vec(),
        None,
    )
    .await
    .assert_error(415, "unsupported_media_type", "batch without content type");

    // A batch of only invalid items writes nothing and still answers item by item.
    let a = post_json(
        &http,
        &url,
        &json!([{"type":"deposit","account_id":"x","amount":-1}]),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_error_body(&a.json["results"][0], "invalid_amount", "only item");
    let a = post_json(&http, &url, &json!([])).await;
    assert_eq!(a.status, 202, "{}", a.text);
    assert_eq!(a.json, json!({"results": []}), "an empty batch");
    assert_eq!(
        events_in(&brokers, &topic).await,
        before,
        "no refused batch wrote an event"
    );

    // Exactly 10000 items is allowed and writes 10000 events.
    let max = Value::Array(
        (0..10_000)
            .map(
                |i| json!({"type":"deposit","account_id":format!("acc-{}", i % 97),"amount":i + 1}),
            )
            .collect(),
    );
    let a = post_json(&http, &url, &max).await;
    assert_eq!(
        a.status,
        202,
        "10000 items: {}",
        &a.text[..a.text.len().min(500)]
    );
    let results = a.json["results"].as_array().expect("results");
    assert_eq!(results.len(), 10_000);
    for (i, r) in results.iter().enumerate() {
        accepted(r, &format!("item {i} of 10000"));
    }
    assert_eq!(events_in(&brokers, &topic).await, before + 10_000);
    ingest.stop().await;
}

/// `max_in_flight = 1` and a long linger, so the first command holds the only slot for
/// a known while (seen through the `ingest_in_flight` gauge); meanwhile every other
/// command is refused `503 overloaded` with `Retry-After`, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_when_more_commands_are_in_flight_than_allowed() {
    let brokers = brokers();
    let topic = unique_topic("ingest.overload");
    let mut cfg = config(&brokers, &topic);
    cfg.max_in_flight = 1;
    cfg.linger_ms = 1500;
    let ingest = Ingest::start(cfg).await;
    let http = http();
    wait_ready(&ingest.base, READY).await;
    let url = ingest.url("/v1/commands");
    let batch = ingest.url("/v1/commands/batch");
    let before = events_in(&brokers, &topic).await;

    let holder = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            post_json(
                &http,
                &url,
                &json!({"type":"open_account","account_id":"holder","command_id":"holder-1"}),
            )
            .await
        })
    };
    let metrics = ingest.url("/metrics");
    wait_for(
        "the first command to hold the only slot",
        Duration::from_secs(10),
        || {
            let (http, metrics) = (http.clone(), metrics.clone());
            async move {
                let m = get(&http, &metrics).await;
                m.text
                    .lines()
                    .any(|l| l == "ingest_in_flight 1")
                    .then_some(())
            }
        },
    )
    .await;

    let a = post_json(
        &http,
        &url,
        &json!({"type":"deposit","account_id":"other","amount":5,"command_id":"refused-1"}),
    )
    .await;
    a.assert_error(503, "overloaded", "a second command");
    assert_eq!(
        a.retry_after.as_deref(),
        Some("1"),
        "Retry-After on overloaded"
    );
    let b = post_json(
        &http,
        &batch,
        &json!([
            {"type":"open_account","account_id":"other"},
            {"type":"deposit","account_id":"other","amount":0}
        ]),
    )
    .await;
    b.assert_error(503, "overloaded", "a batch with a valid item");
    assert!(
        b.retry_after.is_some(),
        "Retry-After on an overloaded batch"
    );
    // Validation needs no slot: a batch of invalid items is still answered item by item.
    let c = post_json(
        &http,
        &batch,
        &json!([{"type":"nope","account_id":"other"}]),
    )
    .await;
    assert_eq!(c.status, 202, "{}", c.text);
    assert_error_body(
        &c.json["results"][0],
        "unknown_command",
        "invalid-only batch",
    );
    // And a malformed single command is still 400, not 503.
    post_json(&http, &url, &json!({"type":"deposit","account_id":"other"}))
        .await
        .assert_error(400, "missing_field", "malformed while overloaded");
    let healthz = get(&http, &ingest.url("/healthz")).await;
    assert_eq!(healthz.status, 200);

    let held = holder.await.unwrap();
    assert_eq!(held.status, 202, "the holder is accepted: {}", held.text);
    accepted(&held.json, "holder");
    // The slot is free again.
    let again = post_json(
        &http,
        &url,
        &json!({"type":"deposit","account_id":"other","amount":5,"command_id":"refused-1"}),
    )
    .await;
    assert_eq!(
        again.status, 202,
        "after the slot is released: {}",
        again.text
    );
    assert_eq!(
        events_in(&brokers, &topic).await - before,
        2,
        "only the two accepted commands were written"
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_routes_and_topic_creation() {
    let brokers = brokers();
    let topic = unique_topic("ingest.ops");
    let ingest = Ingest::start(config(&brokers, &topic)).await;
    let http = http();

    let h = get(&http, &ingest.url("/healthz")).await;
    assert_eq!(h.status, 200, "{}", h.text);
    wait_ready(&ingest.base, READY).await;
    let r = get(&http, &ingest.url("/readyz")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let doc = get(&http, &ingest.url("/openapi.json")).await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.text,
        include_str!("../../../docs/openapi/ingest.json"),
        "the ingest serves its committed OpenAPI document"
    );

    // The topic was created with the configured partitions and infinite retention.
    let kafka = ledger_eventlog::KafkaConfig::new(brokers.clone());
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka.client_config(&[], &[]).unwrap().create().unwrap();
    let described = admin
        .describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(&topic)],
            &rdkafka::admin::AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic's configs");
    let retention = resource.get("retention.ms").and_then(|e| e.value.clone());
    assert_eq!(retention.as_deref(), Some("-1"), "retention.ms of {topic}");
    // end_offsets asserts PARTITIONS partitions.
    let before = events_in(&brokers, &topic).await;
    assert_eq!(before, 0, "a new topic is empty");

    let a = post_json(
        &http,
        &ingest.url("/v1/commands"),
        &json!({"type":"open_account","account_id":"acc-m"}),
    )
    .await;
    assert_eq!(a.status, 202, "{}", a.text);
    post_raw(
        &http,
        &ingest.url("/v1/commands"),
        Some("application/json"),
        b"{".to_vec(),
        None,
    )
    .await
    .assert_error(400, "invalid_json", "broken JSON");

    let m = get(&http, &ingest.url("/metrics")).await;
    assert_eq!(m.status, 200, "{}", m.text);
    assert!(
        m.text.contains("ingest_commands_accepted_total"),
        "metrics name the accepted counter:\n{}",
        m.text
    );
    assert!(
        m.text
            .lines()
            .any(|l| l == r#"ingest_commands_accepted_total{type="open_account"} 1"#),
        "one open_account accepted:\n{}",
        m.text
    );
    assert!(
        m.text
            .lines()
            .any(|l| l == r#"ingest_commands_rejected_total{code="invalid_json"} 1"#),
        "one invalid_json rejected:\n{}",
        m.text
    );
    assert!(
        m.text.lines().any(|l| l == "ingest_ready 1"),
        "ready gauge:\n{}",
        m.text
    );
    // Unknown routes and methods keep the JSON error shape.
    get(&http, &ingest.url("/v1/nope"))
        .await
        .assert_error(404, "not_found", "unknown route");
    get(&http, &ingest.url("/v1/commands")).await.assert_error(
        405,
        "method_not_allowed",
        "GET on a POST route",
    );
    ingest.stop().await;
}
