//! The `command-ingest` binary under SIGTERM with commands in flight: it exits 0, the
//! commands it was working on are answered, and every command it answered `202` is in
//! the log, once.
//!
//! A long `--linger-ms` keeps the first wave of commands waiting for the broker for about
//! a second, and the `ingest_in_flight` gauge shows when they are, so SIGTERM lands while
//! they are in flight rather than by luck. A second wave is fired at the moment of the
//! signal, to race the closing listener: those may fail to connect, which is allowed.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{accepted, blocking, get, http, read_all};
use ledger_testkit::{brokers, free_port, unique_topic, wait_for, wait_ready, ChildGuard};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::sync::watch;

const FIRST_WAVE: usize = 100;
const SECOND_WAVE: usize = 100;
/// SIGTERM is sent once at least this many commands wait for the broker.
const IN_FLIGHT_AT_SIGTERM: i64 = 50;

/// How the client saw one command.
#[derive(Debug)]
enum Outcome {
    Answered(u16, Value, String),
    /// No answer: refused, reset, or closed by the shutdown. Allowed.
    NoAnswer(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_commands_in_flight_exits_zero_and_loses_no_acknowledged_command() {
    let brokers = brokers();
    let topic = unique_topic("ingest.shutdown");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{topic}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_command-ingest"))
        .args(["--brokers", &brokers, "--topic", &topic])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--partitions", &common::PARTITIONS.to_string()])
        .args(["--linger-ms", "1000", "--shutdown-grace-ms", "10000"])
        .env_remove("LEDGER_AUTH_TOKEN")
        .env_remove("INGEST_MAX_IN_FLIGHT")
        .env_remove("INGEST_DELIVERY_TIMEOUT_MS")
        .env_remove("KAFKA_BROKERS")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log).expect("a log file"))
        .spawn()
        .expect("the binary starts");
    // Killed if the test fails before it exits, and its log shown then.
    let mut child = ChildGuard::new("command-ingest", child).with_log(&log);

    let http = http();
    wait_ready(&base, Duration::from_secs(30)).await;
    assert!(child.try_status().is_none(), "still running once ready");

    let (second_wave, go) = watch::channel(false);
    let started = Instant::now();
    let tasks: Vec<_> = (0..FIRST_WAVE + SECOND_WAVE)
        .map(|i| {
            let (http, url, mut go) = (http.clone(), format!("{base}/v1/commands"), go.clone());
            tokio::spawn(async move {
                if i >= FIRST_WAVE {
                    go.wait_for(|go| *go).await.expect("the sender lives");
                }
                let body = json!({
                    "type": "deposit",
                    "account_id": format!("acc-{}", i % 20),
                    "amount": i + 1,
                    "command_id": format!("shutdown-{i}"),
                });
                let outcome = match http.post(&url).json(&body).send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.text().await {
                            Ok(text) => {
                                let v = serde_json::from_str(&text).unwrap_or(Value::Null);
                                Outcome::Answered(status, v, text)
                            }
                            Err(e) => Outcome::NoAnswer(format!("body: {e}")),
                        }
                    }
                    Err(e) => Outcome::NoAnswer(e.to_string()),
                };
                (i, outcome)
            })
        })
        .collect();

    let metrics = format!("{base}/metrics");
    let in_flight = wait_for(
        "commands waiting for the broker",
        Duration::from_secs(20),
        || {
            let (http, metrics) = (http.clone(), metrics.clone());
            async move {
                let m = get(&http, &metrics).await;
                let n: i64 = m
                    .text
                    .lines()
                    .find_map(|l| l.strip_prefix("ingest_in_flight "))
                    .and_then(|n| n.trim().parse().ok())?;
                (n >= IN_FLIGHT_AT_SIGTERM).then_some(n)
            }
        },
    )
    .await;
    child.signal(Signal::SIGTERM).expect("SIGTERM");
    second_wave.send_replace(true);
    let signalled = started.elapsed();

    let status = wait_for("the ingest to exit", Duration::from_secs(30), || {
        let st = child.try_status();
        async move { st }
    })
    .await;
    let exited = started.elapsed();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );

    let mut ok: HashMap<String, (i32, i64)> = HashMap::new();
    let mut no_answer: Vec<String> = Vec::new();
    for t in tasks {
        let (i, outcome) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every request ends")
            .expect("no task panics");
        match outcome {
            Outcome::Answered(202, v, _) => {
                let a = accepted(&v, &format!("command {i}"));
                assert_eq!(a.command_id, format!("shutdown-{i}"));
                ok.insert(a.command_id, (a.partition, a.offset));
            }
            Outcome::Answered(status, _, text) => {
                panic!("command {i}: only 202 or no answer during shutdown, got {status}: {text}")
            }
            Outcome::NoAnswer(e) => no_answer.push(e),
        }
    }
    eprintln!(
        "SIGTERM at {signalled:?} with {in_flight} in flight; exited at {exited:?}; \
         {} answered 202, {} without an answer (first: {:?})",
        ok.len(),
        no_answer.len(),
        no_answer.first()
    );
    assert!(
        ok.len() as i64 >= in_flight,
        "the {in_flight} commands in flight at SIGTERM were all answered, only {} 202s",
        ok.len()
    );

    let records = {
        let (b, t) = (brokers.clone(), topic.clone());
        blocking(move || read_all(&b, &t)).await
    };
    let mut logged: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for r in &records {
        let id = r.event.command_id.as_str();
        assert!(
            id.starts_with("shutdown-"),
            "only this test's commands: {id}"
        );
        logged
            .entry(id.to_string())
            .or_default()
            .push((r.partition, r.offset));
    }
    for (id, pos) in &ok {
        assert_eq!(
            logged.get(id),
            Some(&vec![*pos]),
            "{id}, answered 202 at {pos:?}, is in the log there, once"
        );
    }
    for (id, pos) in &logged {
        assert_eq!(pos.len(), 1, "{id} is logged once: {pos:?}");
    }
    // Passed: the log is only wanted when something failed.
    drop(child);
    let _ = std::fs::remove_file(&log);
}
