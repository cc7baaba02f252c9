//! Hostile input against the projector's query API: arbitrary path segments, tokens,
//! timeouts, methods and bodies. Only 2xx or a 4xx with the contract's JSON error body:
//! never a 5xx, never a crash.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;

mod common;

#[derive(Debug, Clone)]
struct Request {
    method: reqwest::Method,
    path: String,
    body: Vec<u8>,
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn arb_request() -> impl Strategy<Value = Request> {
    let segment = prop_oneof![".{0,80}", "[A-Za-z0-9._-]{1,70}", Just("acc-1".to_string())];
    let token = prop_oneof![
        ".{0,30}",
        // Well-formed tokens far in the future: they must time out quickly, not hang.
        (0i32..10, 1_000_000i64..2_000_000).prop_map(|(p, o)| format!("v1.{p}.{o}")),
        "v1\\.[0-9-]{0,12}\\.[0-9-]{0,22}",
    ];
    let timeout = prop_oneof![
        Just(None),
        (0u64..20).prop_map(|t| Some(t.to_string())),
        Just(Some("-5".to_string())),
        Just(Some("soon".to_string()))
    ];
    let route = prop_oneof![
        Just("/v1/accounts/"),
        Just("/v1/commands/"),
        Just("/v1/progress"),
        Just("/v1/"),
        Just("/nope/")
    ];
    let method = prop_oneof![
        8 => Just(reqwest::Method::GET),
        1 => Just(reqwest::Method::POST),
        1 => Just(reqwest::Method::DELETE),
    ];
    (
        method,
        route,
        segment,
        proptest::option::of(token),
        timeout,
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(method, route, seg, token, timeout, body)| {
            let mut path = if route.ends_with('/') {
                format!("{route}{}", pct(&seg))
            } else {
                route.to_string()
            };
            let mut q = Vec::new();
            if let Some(t) = token {
                q.push(format!("after={}", pct(&t)));
                // A valid token must never wait long in a test.
                q.push(format!(
                    "timeout_ms={}",
                    timeout.clone().unwrap_or_else(|| "10".into())
                ));
            } else if let Some(t) = timeout {
                q.push(format!("timeout_ms={t}"));
            }
            if !q.is_empty() {
                path = format!("{path}?{}", q.join("&"));
            }
            Request { method, path, body }
        })
}

#[test]
fn arbitrary_queries_get_a_2xx_or_a_json_4xx_never_a_5xx() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = projector::Config::for_brokers(&ledger_testkit::brokers(), dir.path());
    cfg.kafka.topic = ledger_testkit::unique_topic("hostile");
    cfg.service.auth_token = None;
    let store = projector::open_store(&cfg).unwrap();
    let topic = cfg.kafka.topic.clone();
    let (base, stop, task) = rt.block_on(async {
        common::create_topic(&ledger_testkit::brokers(), &topic).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(projector::serve(cfg, store, listener, stop.clone()));
        // Ready: it serves every partition, so only a token not yet reached may be
        // unavailable.
        ledger_testkit::wait_ready(&base, Duration::from_secs(30)).await;
        (base, stop, task)
    });
    let http = reqwest::Client::new();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_request(), |req| {
            let (status, text) = rt.block_on(async {
                let r = http
                    .request(req.method.clone(), format!("{base}{}", req.path))
                    .body(req.body.clone())
                    .send()
                    .await
                    .expect("answered");
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_default())
            });
            prop_assert!(status < 500 || status == 503, "{req:?} got {status} {text}");
            if status >= 400 {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                prop_assert!(v["error"]["code"].is_string(), "{req:?}: {status} {text}");
            }
            if status == 503 {
                // Only a token not yet reached may be unavailable, and says so.
                let v: Value = serde_json::from_str(&text).unwrap();
                prop_assert_eq!(
                    v["error"]["code"].as_str(),
                    Some("not_yet_consistent"),
                    "{:?}",
                    req
                );
            }
            Ok(())
        })
        .unwrap();
    let served = rt.block_on(async {
        http.get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("a body")
    });
    assert_eq!(
        served,
        ledger_api::openapi::Service::Projector.served(Some(common::PARTITIONS)),
        "the projector serves its document, bounded to its topic's partitions"
    );
    rt.block_on(async {
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    });
}
