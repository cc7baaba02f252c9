//! The ingest replaces a producer that stops delivering while the broker answers, and
//! says so: on a real broker whose topic refuses every write (`max.message.bytes` below
//! any event's size) while metadata requests succeed, commands get `503
//! log_unavailable`, `/readyz` turns 503 naming the producer, and
//! `ingest_producer_restarts_total{signal="deliveries_failing"}` counts the
//! replacement. Once the topic accepts writes again, commands get `202` and `/readyz`
//! 200, with no restart of the process.
//!
//! (A librdkafka producer that is stuck on its own after a broker restart cannot be had
//! on demand; a refused write looks the same to the supervisor, and the fault suite's
//! frozen-broker and restart-storm cases cover the real thing.)

mod common;

use std::time::Duration;

use common::{config, get, http, post_json, Ingest};
use ledger_testkit::{set_topic_config, unique_topic, wait_for};
use serde_json::json;

const DELIVERY_TIMEOUT_MS: u64 = 1500;

async fn restarts(ingest: &Ingest, signal: &str) -> u64 {
    let series = format!("ingest_producer_restarts_total{{signal=\"{signal}\"}}");
    ledger_testkit::metric_sum(&ingest.base, &series)
        .await
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_stops_delivering_is_replaced_and_readyz_says_so() {
    let brokers = ledger_testkit::brokers();
    let topic = unique_topic("ingest.stuck");
    let mut cfg = config(&brokers, &topic);
    cfg.delivery_timeout_ms = DELIVERY_TIMEOUT_MS;
    let ingest = Ingest::start(cfg).await;
    let http = http();
    let url = ingest.url("/v1/commands");
    let open = json!({"type":"open_account","account_id":"s-1","command_id":"open-s-1"});
    wait_for("a first 202", Duration::from_secs(30), || {
        let (http, url, open) = (http.clone(), url.clone(), open.clone());
        async move { (post_json(&http, &url, &open).await.status == 202).then_some(()) }
    })
    .await;
    assert_eq!(restarts(&ingest, "deliveries_failing").await, 0);

    set_topic_config(&brokers, &topic, "max.message.bytes", "16").await;
    // Commands keep coming, as they would from clients; each is refused.
    let refused = wait_for(
        "/readyz 503 naming the producer",
        Duration::from_secs(30),
        || {
            let (http, url, ingest_ready) = (http.clone(), url.clone(), ingest.url("/readyz"));
            async move {
                let a = post_json(
                    &http,
                    &url,
                    &json!({"type":"deposit","account_id":"s-1","amount":5}),
                )
                .await;
                assert_ne!(a.status, 202, "a write the topic refuses is never a 202");
                a.assert_error(503, "log_unavailable", "a refused write");
                let r = get(&http, &ingest_ready).await;
                (r.status == 503 && r.text.contains("stopped delivering")).then_some(r)
            }
        },
    )
    .await;
    refused.assert_error(503, "not_ready", "readyz while the producer is stuck");
    wait_for(
        "the producer replaced with signal deliveries_failing",
        Duration::from_secs(30),
        || {
            let ingest = &ingest;
            async move { (restarts(ingest, "deliveries_failing").await >= 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(restarts(&ingest, "fatal_error").await, 0);

    // The topic accepts writes again: so does the ingest, with no restart.
    set_topic_config(&brokers, &topic, "max.message.bytes", "1048588").await;
    let again = json!({"type":"deposit","account_id":"s-1","amount":7,"command_id":"after"});
    wait_for(
        "a 202 once writes are accepted",
        Duration::from_secs(30),
        || {
            let (http, url, again) = (http.clone(), url.clone(), again.clone());
            async move { (post_json(&http, &url, &again).await.status == 202).then_some(()) }
        },
    )
    .await;
    wait_for("/readyz 200 again", Duration::from_secs(10), || {
        let (http, ready) = (http.clone(), ingest.url("/readyz"));
        async move { (get(&http, &ready).await.status == 200).then_some(()) }
    })
    .await;
    ingest.stop().await;
}
