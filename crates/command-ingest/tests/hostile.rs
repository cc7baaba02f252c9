//! Hostile input: arbitrary bytes, arbitrary JSON and near-miss commands thrown at the
//! ingest's routes. The only acceptable answers are a 202 (for what happens to be a
//! valid command) or a 4xx with the contract's JSON error body: never a 5xx, never a
//! crash.

mod common;

use std::time::Duration;

use common::*;
use ledger_testkit::wait_ready;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Map, Value};

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("open_account"),
            Just("deposit"),
            Just("withdraw"),
            Just("acc-1"),
            Just("")
        ]
        .prop_map(Value::from),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((".{0,10}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Objects that look like commands, with any values under the real keys.
fn arb_near_command() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type"),
        Just("account_id"),
        Just("amount"),
        Just("command_id"),
        Just("memo")
    ];
    proptest::collection::vec((key, arb_leaf()), 0..6)
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

#[derive(Debug, Clone)]
struct Request {
    path: &'static str,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn arb_request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        arb_near_command().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        proptest::collection::vec(arb_near_command(), 0..8)
            .prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];
    let content_type = prop_oneof![
        4 => Just(Some("application/json".to_string())),
        1 => Just(None),
        1 => "[ -~]{0,40}".prop_map(Some),
    ];
    let path = prop_oneof![Just("/v1/commands"), Just("/v1/commands/batch")];
    (path, content_type, body).prop_map(|(path, content_type, body)| Request {
        path,
        content_type,
        body,
    })
}

#[test]
fn arbitrary_requests_get_a_202_or_a_json_4xx_never_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("hostile");
    let http = http();
    let ingest = rt.block_on(async {
        let ingest = Ingest::start(config(&brokers, &topic)).await;
        wait_ready(&ingest.base, Duration::from_secs(30)).await;
        ingest
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_request(), |req| {
            let answer = rt.block_on(post_raw(
                &http,
                &ingest.url(req.path),
                req.content_type.as_deref(),
                req.body.clone(),
                None,
            ));
            prop_assert!(
                answer.status < 500,
                "{req:?} got {} {}",
                answer.status,
                answer.text
            );
            if answer.status >= 400 {
                prop_assert!(
                    answer.json["error"]["code"].is_string(),
                    "{req:?}: {}",
                    answer.text
                );
                prop_assert!(
                    answer.json["error"]["message"].is_string(),
                    "{req:?}: {}",
                    answer.text
                );
            } else {
                prop_assert_eq!(answer.status, 202, "{:?}: {}", req, answer.text);
            }
            Ok(())
        })
        .unwrap();
    // Still alive and well after all of it.
    let health = rt.block_on(get(&http, &ingest.url("/healthz")));
    assert_eq!(health.status, 200);
    rt.block_on(ingest.stop());
}
