//! The ingest against a broker that goes away and comes back: it starts without one,
//! answers `503 log_unavailable` within the delivery timeout while the broker is down,
//! tells the truth on `/readyz`, and recovers without a restart.
//!
//! This test starts its own broker with `scripts/kafka-local.sh` on [`PORT`] (so it can
//! stop it without disturbing the shared broker of `LEDGER_TEST_BROKERS`), and always
//! stops it again, even when an assertion fails. Like every broker test it requires
//! `LEDGER_TEST_BROKERS`, and fails with a clear message without it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{accepted, assert_record, blocking, config, get, http, post_json, read_at, Ingest};
use ledger_domain::EventBody;
use ledger_testkit::{unique_topic, wait_for};
use serde_json::json;

/// The port of this test's own broker (its controller uses the next one).
const PORT: u16 = 19392;
const DELIVERY_TIMEOUT_MS: u64 = 2000;
/// How much later than the delivery timeout a 503 may come.
const MARGIN: Duration = Duration::from_secs(3);
/// How soon after the broker is back the ingest must accept commands again.
const RECOVERY: Duration = Duration::from_secs(15);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka-local.sh")
}

fn kafka_local(action: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(script())
        .arg(action)
        .env("KAFKA_PORT", PORT.to_string())
        .output()
        .map_err(|e| format!("running kafka-local.sh {action}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kafka-local.sh {action} (KAFKA_PORT={PORT}) failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Stops this test's broker when dropped, also while a failed assertion unwinds.
struct BrokerGuard;

impl BrokerGuard {
    fn start() {
        let t = Instant::now();
        kafka_local("start").unwrap_or_else(|e| panic!("{e}"));
        eprintln!("broker on {PORT} started in {:?}", t.elapsed());
    }

    fn stop() {
        let t = Instant::now();
        kafka_local("stop").unwrap_or_else(|e| panic!("{e}"));
        eprintln!("broker on {PORT} stopped in {:?}", t.elapsed());
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if let Err(e) = kafka_local("stop") {
            eprintln!("{e}");
        }
    }
}

async fn readyz(http: &reqwest::Client, base: &str) -> Option<u16> {
    http.get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_survives_a_broker_outage_without_a_restart() {
    // The ingest's own log (readiness checks, delivery errors) goes into the test's
    // captured output, so a failure shows why /readyz stayed 503: this test once timed
    // out waiting for it after the restart, and nothing said why.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_ansi(false)
        .with_env_filter("info,librdkafka=warn")
        .try_init();
    // Requires the test environment like every broker test, although it uses its own.
    let _ = ledger_testkit::brokers();
    let brokers = format!("127.0.0.1:{PORT}");
    let topic = unique_topic("ingest.outage");
    // Leftovers of an interrupted run must not make the broker look up already.
    let guard = BrokerGuard;
    BrokerGuard::stop();

    let mut cfg = config(&brokers, &topic);
    cfg.delivery_timeout_ms = DELIVERY_TIMEOUT_MS;
    cfg.shutdown_grace_ms = 1000;
    let ingest = Ingest::start(cfg).await;
    let http = http();
    let url = ingest.url("/v1/commands");
    let limit = Duration::from_millis(DELIVERY_TIMEOUT_MS) + MARGIN;

    // 1. Started while its broker is down: it serves, alive but not ready, and a command
    //    is refused in time.
    let h = get(&http, &ingest.url("/healthz")).await;
    assert_eq!(h.status, 200, "healthz without a broker: {}", h.text);
    let r = get(&http, &ingest.url("/readyz")).await;
    r.assert_error(503, "not_ready", "readyz without a broker");
    let t = Instant::now();
    let a = post_json(
        &http,
        &url,
        &json!({"type":"open_account","account_id":"o-0","command_id":"never-up"}),
    )
    .await;
    let took = t.elapsed();
    a.assert_error(
        503,
        "log_unavailable",
        "a command before the broker ever ran",
    );
    assert!(a.retry_after.is_some(), "Retry-After on log_unavailable");
    assert!(took <= limit, "refused after {took:?}, more than {limit:?}");
    let r = get(&http, &ingest.url("/readyz")).await;
    assert_eq!(r.status, 503, "still not ready: {}", r.text);

    // 2. The broker comes up: ready and accepting, with no restart.
    BrokerGuard::start();
    wait_for(
        "/readyz 200 once the broker is up",
        Duration::from_secs(60),
        || {
            let (http, base) = (http.clone(), ingest.base.clone());
            async move { (readyz(&http, &base).await == Some(200)).then_some(()) }
        },
    )
    .await;
    let a = post_json(
        &http,
        &url,
        &json!({"type":"open_account","account_id":"o-1","command_id":"first-up"}),
    )
    .await;
    assert_eq!(a.status, 202, "with the broker up: {}", a.text);
    let first = accepted(&a.json, "with the broker up");

    // 3. The broker goes away: 503 log_unavailable within the delivery timeout + margin,
    //    and /readyz follows.
    BrokerGuard::stop();
    let t = Instant::now();
    let a = post_json(
        &http,
        &url,
        &json!({"type":"deposit","account_id":"o-1","amount":10,"command_id":"while-down"}),
    )
    .await;
    let took = t.elapsed();
    a.assert_error(503, "log_unavailable", "a command while the broker is down");
    assert!(a.retry_after.is_some(), "Retry-After on log_unavailable");
    assert!(took <= limit, "refused after {took:?}, more than {limit:?}");
    eprintln!("503 log_unavailable after {took:?}");
    wait_for(
        "/readyz 503 once the broker is down",
        Duration::from_secs(20),
        || {
            let (http, base) = (http.clone(), ingest.base.clone());
            async move { (readyz(&http, &base).await == Some(503)).then_some(()) }
        },
    )
    .await;
    let h = get(&http, &ingest.url("/healthz")).await;
    assert_eq!(h.status, 200, "still alive: {}", h.text);

    // 4. The broker is back: without restarting the ingest, ready again and accepting
    //    within RECOVERY. Retrying with the same command id is what a client does, and
    //    it is safe.
    BrokerGuard::start();
    let back = Instant::now();
    wait_for("/readyz 200 once the broker is back", RECOVERY, || {
        let (http, base) = (http.clone(), ingest.base.clone());
        async move { (readyz(&http, &base).await == Some(200)).then_some(()) }
    })
    .await;
    let t = Instant::now();
    let mut attempts = 0;
    let again = wait_for(
        "a 202 once the broker is back",
        RECOVERY.saturating_sub(back.elapsed()),
        || {
            attempts += 1;
            let (http, url) = (http.clone(), url.clone());
            async move {
                let a = post_json(
                &http,
                &url,
                &json!({"type":"deposit","account_id":"o-1","amount":10,"command_id":"while-down"}),
            )
            .await;
                match a.status {
                    202 => Some(a),
                    503 => None,
                    other => panic!("only 202 or 503 while recovering, got {other}: {}", a.text),
                }
            }
        },
    )
    .await;
    eprintln!(
        "accepted again after {attempts} attempt(s), {:?}",
        t.elapsed()
    );
    let recovered = accepted(&again.json, "after the outage");
    assert_eq!(recovered.command_id, "while-down");

    let records = {
        let (b, t) = (brokers.clone(), topic.clone());
        let positions = [
            (first.partition, first.offset),
            (recovered.partition, recovered.offset),
        ];
        blocking(move || read_at(&b, &t, &positions)).await
    };
    assert_record(
        &records[&(first.partition, first.offset)],
        &first,
        "o-1",
        EventBody::OpenAccount,
        Some("first-up"),
        "before the outage",
    );
    assert_record(
        &records[&(recovered.partition, recovered.offset)],
        &recovered,
        "o-1",
        EventBody::Deposit {
            amount: ledger_domain::Amount::new(10).unwrap(),
        },
        Some("while-down"),
        "after the outage",
    );
    assert_eq!(
        recovered.partition, first.partition,
        "one account, one partition"
    );
    assert!(recovered.offset > first.offset, "a later offset");

    ingest.stop().await;
    drop(guard);
}
