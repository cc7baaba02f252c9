//! The only projector of a deployment, started as the README starts it (no
//! `--instance-id`), is SIGKILLed under load and restarted at once on the same data
//! directory and address. Its instance id, kept in the data directory, makes it the same
//! static member of its group: it takes its partitions back without waiting for the dead
//! member's session to expire. Reads with a consistency token issued while it is down
//! all answer 200 with the model's balance; plain reads are unanswered for well under a
//! second.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::future::join_all;
use ledger_domain::{Event, Model};
use ledger_eventlog::Position;
use ledger_testkit::wait_ready;

/// Writes `events` in chunks until `stop`, returning what the broker acknowledged.
async fn write_until(
    brokers: String,
    topic: String,
    events: Vec<Event>,
    stop: Arc<AtomicBool>,
) -> Vec<(Position, Event)> {
    let mut out = Vec::new();
    for chunk in events.chunks(40) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        out.extend(produce(&brokers, &topic, chunk).await);
    }
    out
}

/// When each plain read was answered, and whether with a 200.
type Timeline = Arc<Mutex<Vec<(Instant, bool)>>>;

/// The longest run of plain reads that did not answer 200 (refused connections
/// included), from its first read to the next 200.
fn longest_gap(timeline: &[(Instant, bool)]) -> Duration {
    let mut worst = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for &(t, ok) in timeline {
        match (ok, since) {
            (false, None) => since = Some(t),
            (true, Some(s)) => {
                worst = worst.max(t - s);
                since = None;
            }
            _ => {}
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_projector_restarted_after_sigkill_serves_at_once_and_token_reads_wait() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("restart");
    let group = format!("{topic}.g");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Default flags: the instance id is generated on the first start.
    let mut proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &[]);
    let (port, url) = (proc.port, proc.url());
    wait_ready(&url, Duration::from_secs(60)).await;

    // Accounts read with tokens ("t") take no more writes once the kill comes; the load
    // ("l") goes on through the kill and the restart.
    let opened = produce(&brokers, &topic, &workload(41, 12, 200, "t")).await;
    wait_applied(&url, &ends_of(&opened), Duration::from_secs(60)).await;
    let log_stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(write_until(
        brokers.clone(),
        topic.clone(),
        workload(42, 30, 100_000, "l"),
        log_stop.clone(),
    ));
    let token_stop = Arc::new(AtomicBool::new(false));
    let token_writes = tokio::spawn(write_until(
        brokers.clone(),
        topic.clone(),
        workload(43, 12, 2_000, "t2")
            .into_iter()
            .map(|mut e| {
                // The same accounts as the opening round.
                e.account_id = ledger_domain::AccountId::parse(
                    &e.account_id.as_str().replacen("t2-", "t-", 1),
                )
                .unwrap();
                e
            })
            .collect(),
        token_stop.clone(),
    ));

    // A plain reader of one account, every few milliseconds, throughout.
    let account = opened
        .iter()
        .find(|(_, e)| matches!(e.body, ledger_domain::EventBody::OpenAccount))
        .map(|(_, e)| e.account_id.to_string())
        .unwrap();
    let timeline: Timeline = Arc::default();
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (timeline, reading, url) = (timeline.clone(), reading.clone(), url.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        tokio::spawn(async move {
            // A read every few milliseconds, whatever each one takes.
            let mut every = tokio::time::interval(Duration::from_millis(5));
            while reading.load(Ordering::Acquire) {
                every.tick().await;
                let ok = http
                    .get(format!("{url}/v1/accounts/{account}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                timeline.lock().unwrap().push((Instant::now(), ok));
            }
        })
    };
    // Under load: the projector has applied some of it, not all.
    let before: i64 = applied_offsets(&url).await.unwrap().values().sum();
    ledger_testkit::wait_for(
        "the load to be applied in part",
        Duration::from_secs(60),
        || async {
            let now: i64 = applied_offsets(&url).await?.values().sum();
            (now >= before + 500).then_some(())
        },
    )
    .await;

    // The token accounts' last writes, then at once the kill and the restart.
    token_stop.store(true, Ordering::Release);
    let mut written = opened.clone();
    written.extend(token_writes.await.unwrap());
    let killed = Instant::now();
    proc.kill9();
    proc = ProjectorProcess::spawn_at(port, &brokers, &topic, &group, &data, &[]);

    // Token reads, issued while it is down: each waits and reads the model's balance.
    let model: Model = model_of(&written);
    let last: BTreeMap<String, Position> = written.iter().fold(BTreeMap::new(), |mut m, (p, e)| {
        let slot = m.entry(e.account_id.to_string()).or_insert(*p);
        if p.offset > slot.offset {
            *slot = *p;
        }
        m
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();
    let answers = join_all(last.iter().map(|(account, pos)| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            // Refused until the new process listens: not an answer, so sent again.
            let query = format!(
                "{url}/v1/accounts/{account}?after={}&timeout_ms=30000",
                pos.token()
            );
            let r = ledger_testkit::wait_for(
                "the restarted projector to listen",
                Duration::from_secs(30),
                || {
                    let (http, query) = (http.clone(), query.clone());
                    async move {
                        match http.get(&query).send().await {
                            Ok(r) => Some(r),
                            // wait_for paces the next attempt.
                            Err(e) if e.is_connect() => None,
                            Err(e) => panic!("{query}: {e}"),
                        }
                    }
                },
            )
            .await;
            let status = r.status().as_u16();
            (
                account.clone(),
                status,
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    }))
    .await;
    let tokens_answered = killed.elapsed();
    for (account, status, body) in &answers {
        let id = ledger_domain::AccountId::parse(account).unwrap();
        match model.accounts.get(&id) {
            Some(want) => {
                assert_eq!(*status, 200, "{account}: {body}\n{}", proc.log_text());
                assert_eq!(body["balance"], want.balance, "{account}: {body}");
                assert_eq!(
                    body["applied_events"], want.applied_events,
                    "{account}: {body}"
                );
            }
            None => assert_eq!(*status, 404, "{account} was never opened: {body}"),
        }
    }

    // The plain reads' window, once it serves again.
    ledger_testkit::wait_for(
        "a plain read to answer 200 again",
        Duration::from_secs(30),
        || {
            let t = timeline.clone();
            async move {
                t.lock()
                    .unwrap()
                    .last()
                    .is_some_and(|(at, ok)| *ok && *at > killed)
                    .then_some(())
            }
        },
    )
    .await;
    reading.store(false, Ordering::Release);
    reader.await.unwrap();
    log_stop.store(true, Ordering::Release);
    written.extend(load.await.unwrap());
    let window = longest_gap(&timeline.lock().unwrap());
    eprintln!(
        "default flags, SIGKILL and restart: plain reads unanswered for {:.0} ms; {} token reads all answered 200 within {:.0} ms of the kill",
        window.as_secs_f64() * 1000.0,
        answers.len(),
        tokens_answered.as_secs_f64() * 1000.0
    );
    let log = proc.log_text();
    assert!(
        log.contains("instance id from the data directory"),
        "the restart reuses the stored id:\n{log}"
    );
    assert!(
        window < Duration::from_secs(1),
        "plain reads unanswered for {window:?}:\n{log}"
    );

    // Everything, applied once.
    wait_applied(&url, &ends_of(&written), Duration::from_secs(120)).await;
    assert_http_matches(&url, &model_of(&written)).await;
}
