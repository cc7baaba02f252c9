//! The operations routes against the real broker and the real binary:
//!
//! - a pause stops applying while queries are served and lag grows, visibly in
//!   `/v1/progress` and a gauge; resuming one partition, then all, catches up;
//! - a verified rebuild under load swaps the rebuilt store in (and it survives a
//!   restart), and one made to disagree (the test hook `--test-rebuild-drop-first`)
//!   keeps the live store and names the partition;
//! - an event of a type this version cannot read parks its account while the others
//!   flow; the parking survives a restart; a retry by a "newer projector" (the test hook
//!   `--test-future-type`) applies the waiting events in order, and a skip sends the
//!   unreadable one to the dead-letter topic and applies the rest.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ledger_domain::testing::{deposit, event};
use ledger_domain::{Event, EventBody};
use ledger_eventlog::codec;
use ledger_eventlog::producer::DLQ_HEADER_ERROR;
use ledger_testkit::{wait_for, wait_ready};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

async fn post(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.post(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Opens and funds `n` accounts `prefix-i` with 1000 each.
fn opened(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .flat_map(|i| {
            let acc = format!("{prefix}-{i}");
            [
                event(0, &format!("{acc}-open"), &acc, EventBody::OpenAccount),
                event(0, &format!("{acc}-fund"), &acc, deposit(1000)),
            ]
        })
        .collect()
}

fn deposits(prefix: &str, n: usize, per_account: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .flat_map(|i| {
            (0..per_account).map(move |k| {
                let acc = format!("{prefix}-{i}");
                event(0, &format!("{acc}-{tag}-{k}"), &acc, deposit(1))
            })
        })
        .collect()
}

async fn metric(base: &str, series: &str) -> Option<u64> {
    ledger_testkit::metric_sum(base, series).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_applying_while_queries_are_served_and_resume_catches_up() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("pause");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = produce(&brokers, &topic, &opened("pa", 12)).await;
    let proc = ProjectorProcess::spawn(
        &brokers,
        &topic,
        &format!("{topic}.g"),
        &dir.path().join("d"),
        &[],
    );
    let base = proc.url();
    wait_ready(&base, WAIT).await;
    wait_applied(&base, &ends_of(&log), WAIT).await;
    let http = reqwest::Client::new();

    let (status, paused) = post(&http, &format!("{base}/v1/admin/pause")).await;
    assert_eq!(status, 200, "{paused}");
    let all: Vec<i32> = (0..PARTITIONS).collect();
    assert_eq!(
        paused["paused_partitions"],
        serde_json::json!(all),
        "{paused}"
    );
    let before = get_json(&http, &format!("{base}/v1/accounts/pa-0")).await;

    // Accepted into the log while paused: lag grows, nothing is applied, queries answer.
    let more = produce(&brokers, &topic, &deposits("pa", 12, 5, "p")).await;
    let lagging = wait_for(
        "the lag to show every event written while paused",
        WAIT,
        || async {
            let p = get_json(&http, &format!("{base}/v1/progress")).await;
            (p["total_lag"].as_u64() == Some(60)).then_some(p)
        },
    )
    .await;
    for row in lagging["partitions"].as_array().unwrap() {
        assert_eq!(row["paused"], true, "{row}");
    }
    assert_eq!(
        metric(&base, "projector_paused_partitions").await,
        Some(PARTITIONS as u64)
    );
    assert_eq!(
        get_json(&http, &format!("{base}/v1/accounts/pa-0")).await,
        before,
        "a paused projector serves what it had"
    );

    // One partition resumed: it catches up, the others still wait.
    let one = more[0].0.partition;
    let (status, view) = post(&http, &format!("{base}/v1/admin/resume?partition={one}")).await;
    assert_eq!(status, 200, "{view}");
    assert!(
        !view["paused_partitions"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(one)),
        "{view}"
    );
    log.extend(more);
    let ends = ends_of(&log);
    wait_applied(&base, &BTreeMap::from([(one, ends[&one])]), WAIT).await;
    let p = get_json(&http, &format!("{base}/v1/progress")).await;
    for row in p["partitions"].as_array().unwrap() {
        let is_one = row["partition"] == one;
        assert_eq!(row["paused"], !is_one, "{row}");
        if !is_one && ends.contains_key(&(row["partition"].as_i64().unwrap() as i32)) {
            assert!(
                row["lag"].as_u64().unwrap() > 0,
                "still paused, still behind: {row}"
            );
        }
    }

    // A partition the topic does not have is refused, with the contract's body.
    let (status, err) = post(&http, &format!("{base}/v1/admin/pause?partition=99")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("invalid_partition"))
    );
    // And the served document says so: it is bounded to the topic's partitions.
    let doc = get_json(&http, &format!("{base}/openapi.json")).await;
    let pause = &doc["paths"]["/v1/admin/pause"]["post"]["parameters"][0];
    assert_eq!(
        (&pause["name"], &pause["schema"]["maximum"]),
        (
            &serde_json::json!("partition"),
            &serde_json::json!(PARTITIONS - 1)
        ),
        "{pause}"
    );
    let after = doc["paths"]["/v1/progress"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "after")
        .expect("/v1/progress takes a token");
    assert_eq!(
        after["schema"]["pattern"],
        ledger_domain::token_pattern(Some(PARTITIONS))
    );

    // A rebuild cannot reach a paused store's offsets: refused until resumed.
    let (status, err) = post(&http, &format!("{base}/v1/admin/rebuild")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("partitions_paused")),
        "{err}"
    );

    // Everything resumed: every event applied, as the model says.
    let (status, view) = post(&http, &format!("{base}/v1/admin/resume")).await;
    assert_eq!(
        (status, view["paused_partitions"].clone()),
        (200, serde_json::json!([]))
    );
    wait_applied(&base, &ends, WAIT).await;
    assert_http_matches(&base, &model_of(&log)).await;
    assert_eq!(metric(&base, "projector_paused_partitions").await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_ends_a_pause_and_no_partition_stays_stopped() {
    // A pause ends at a rebalance: the partitions this instance keeps apply again, and
    // those handed to another instance and back are fetched again.
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("pause-rebalance");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let group = format!("{topic}.g");
    let mut log = produce(&brokers, &topic, &opened("pr", 12)).await;
    let a = ProjectorProcess::spawn(
        &brokers,
        &topic,
        &group,
        &dir.path().join("a"),
        &["--instance-id", "pr-a", "--handoff-ms", "0"],
    );
    let base = a.url();
    wait_ready(&base, WAIT).await;
    wait_applied(&base, &ends_of(&log), WAIT).await;
    let http = reqwest::Client::new();
    let (status, _) = post(&http, &format!("{base}/v1/admin/pause")).await;
    assert_eq!(status, 200);
    log.extend(produce(&brokers, &topic, &deposits("pr", 12, 3, "p")).await);

    // A second instance joins (the group rebalances: the pause ends), then leaves (its
    // partitions come back to the first).
    let mut b = ProjectorProcess::spawn(
        &brokers,
        &topic,
        &group,
        &dir.path().join("b"),
        &["--instance-id", "pr-b", "--handoff-ms", "0"],
    );
    wait_for("the second instance to own partitions", WAIT, || async {
        let p = get_json(&http, &format!("{base}/v1/progress")).await;
        p["partitions"]
            .as_array()?
            .iter()
            .any(|r| r["owner"] == "pr-b" && r["role"] == "owner")
            .then_some(())
    })
    .await;
    b.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(b.wait_exit(WAIT).success());
    log.extend(produce(&brokers, &topic, &deposits("pr", 12, 2, "q")).await);
    let done = wait_for(
        "every partition applied again on the first instance",
        WAIT,
        || async {
            let p = get_json(&http, &format!("{base}/v1/progress")).await;
            let rows = p["partitions"].as_array()?;
            (p["total_lag"] == 0
                && rows
                    .iter()
                    .all(|r| r["owner"] == "pr-a" && r["paused"] == false))
            .then_some(p)
        },
    )
    .await;
    assert_eq!(
        done["partitions"].as_array().unwrap().len(),
        PARTITIONS as usize
    );
    assert_eq!(metric(&base, "projector_paused_partitions").await, Some(0));
    assert_http_matches(&base, &model_of(&log)).await;
}

/// Starts a rebuild and waits until it is over; returns its last view.
async fn rebuild(http: &reqwest::Client, base: &str) -> Value {
    let (status, started) = post(http, &format!("{base}/v1/admin/rebuild")).await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["phase"], "replaying", "{started}");
    // It replays thousands of events and checks its progress every 100 ms: still running.
    let (status, again) = post(http, &format!("{base}/v1/admin/rebuild")).await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("rebuild_running")),
        "{again}"
    );
    wait_for(
        "the rebuild to finish",
        Duration::from_secs(120),
        || async {
            let (_, v) = get(http, &format!("{base}/v1/admin/rebuild")).await;
            matches!(v["phase"].as_str(), Some("swapped" | "mismatch" | "failed")).then_some(v)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_under_load_swaps_when_the_digests_agree_and_keeps_the_live_store_when_not() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("rebuild");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let mut log = produce(&brokers, &topic, &workload(7, 200, 4_000, "rb")).await;
    let data = dir.path().join("live");
    let group = format!("{topic}.g");
    let mut proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &[]);
    let base = proc.url();
    wait_ready(&base, WAIT).await;
    wait_applied(&base, &ends_of(&log), WAIT).await;
    let http = reqwest::Client::new();
    let (status, none) = get(&http, &format!("{base}/v1/admin/rebuild")).await;
    assert_eq!(
        (status, none["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Load goes on through the rebuild, until it is over.
    let rebuilt = tokio_util::sync::CancellationToken::new();
    let load = {
        let (brokers, topic, rebuilt) = (brokers.clone(), topic.clone(), rebuilt.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            for round in 0..200 {
                if rebuilt.is_cancelled() {
                    break;
                }
                let chunk = workload(100 + round, 200, 50, &format!("rb{round}"));
                written.extend(produce(&brokers, &topic, &chunk).await);
            }
            written
        })
    };
    let done = rebuild(&http, &base).await;
    rebuilt.cancel();
    assert_eq!(done["phase"], "swapped", "{done}");
    let compared: i64 = done["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["compared_at"].as_i64().unwrap_or(0))
        .sum();
    assert!(compared >= 4_000, "{done}");
    assert_eq!(
        done["events_replayed"].as_i64(),
        Some(compared),
        "every event below the compared offsets, replayed once: {done}"
    );
    for row in done["partitions"].as_array().unwrap() {
        assert!(row["compared_at"].is_i64(), "{row}");
        assert_eq!(row["live_digest"], row["rebuilt_digest"], "{row}");
        assert_ne!(
            row["live_digest"],
            "0".repeat(32),
            "a digest of real state: {row}"
        );
    }
    assert_eq!(metric(&base, "projector_rebuilds_total").await, Some(1));
    log.extend(load.await.unwrap());
    wait_applied(&base, &ends_of(&log), WAIT).await;
    let model = model_of(&log);
    assert_http_matches(&base, &model).await;

    // The swap is durable: a restart serves the rebuilt store.
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proc.wait_exit(WAIT).success());
    drop(proc);
    let proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &[]);
    wait_ready(&proc.url(), WAIT).await;
    wait_applied(&proc.url(), &ends_of(&log), WAIT).await;
    assert_http_matches(&proc.url(), &model).await;
    drop(proc);

    // A rebuild that leaves one event out disagrees: the live store stays.
    let skewed = ProjectorProcess::spawn(
        &brokers,
        &topic,
        &format!("{topic}.skewed"),
        &dir.path().join("skewed"),
        &["--test-rebuild-drop-first"],
    );
    let base = skewed.url();
    wait_ready(&base, WAIT).await;
    wait_applied(&base, &ends_of(&log), WAIT).await;
    let done = rebuild(&http, &base).await;
    assert_eq!(done["phase"], "mismatch", "{done}");
    let first = done["first_mismatch"]
        .as_i64()
        .expect("the partition that differs");
    let row = done["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["partition"] == first)
        .unwrap();
    assert_ne!(row["live_digest"], row["rebuilt_digest"], "{row}");
    assert_http_matches(&base, &model).await;
    assert!(
        skewed.log_text().contains("rebuild discarded"),
        "{}",
        skewed.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_account_waits_while_others_flow_until_a_newer_projector_retries_it() {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic("park");
    create_topic(&brokers, &topic).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let group = format!("{topic}.g");
    let mut log = produce(&brokers, &topic, &opened("pk", 6)).await;
    // pk-0 and pk-1 each get an event of a type only a newer version knows (a deposit
    // of 7 to it), then a deposit of 10; every other account a deposit of 5.
    let future = |acc: &str| {
        codec::encode_test_future_type(
            &event(0, &format!("{acc}-future"), acc, deposit(1)),
            7,
            "from the future",
        )
    };
    let unreadable_at = produce_raw(&brokers, &topic, "pk-0", None, &future("pk-0")).await;
    let skipped_at = produce_raw(&brokers, &topic, "pk-1", None, &future("pk-1")).await;
    let mut later = deposits("pk", 2, 1, "after");
    for e in &mut later {
        e.body = deposit(10);
    }
    later.extend((2..6).map(|i| event(0, &format!("pk-{i}-more"), &format!("pk-{i}"), deposit(5))));
    log.extend(produce(&brokers, &topic, &later).await);

    let mut proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &[]);
    let base = proc.url();
    wait_ready(&base, WAIT).await;
    let http = reqwest::Client::new();
    // Every partition passes its end: the parked events are stored, not stuck.
    let mut ends = ends_of(&log);
    for at in [unreadable_at, skipped_at] {
        let e = ends.entry(at.partition).or_default();
        *e = (*e).max(at.offset + 1);
    }
    wait_applied(&base, &ends, WAIT).await;
    for i in 2..6 {
        let v = get_json(&http, &format!("{base}/v1/accounts/pk-{i}")).await;
        assert_eq!(
            (v["balance"].as_i64(), v.get("parked")),
            (Some(1005), None),
            "others flow: {v}"
        );
    }
    for acc in ["pk-0", "pk-1"] {
        let v = get_json(&http, &format!("{base}/v1/accounts/{acc}")).await;
        assert_eq!(
            (v["balance"].as_i64(), v["parked"].as_bool()),
            (Some(1000), Some(true)),
            "{v}"
        );
    }
    let (_, parked) = get(&http, &format!("{base}/v1/admin/parked")).await;
    let accounts = parked["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2, "{parked}");
    let pk0 = accounts.iter().find(|a| a["account_id"] == "pk-0").unwrap();
    assert_eq!(pk0["first_offset"], unreadable_at.offset, "{pk0}");
    assert_eq!(pk0["waiting"], 2, "{pk0}");
    assert!(
        pk0["reason"]
            .as_str()
            .unwrap()
            .contains("unknown event type"),
        "{pk0}"
    );
    assert_eq!(
        metric(&base, "projector_parked_events_total")
            .await
            .map(|n| n >= 4),
        Some(true)
    );

    // A retry by this version: the decision is in the log and applied, and changes
    // nothing, since this version still cannot read the event.
    let (status, accepted) = post(&http, &format!("{base}/v1/admin/parked/pk-0/retry")).await;
    assert_eq!(
        (status, accepted["action"].as_str()),
        (202, Some("retry")),
        "{accepted}"
    );
    let token = accepted["token"].as_str().unwrap().to_string();
    let v = get_json(&http, &format!("{base}/v1/accounts/pk-0?after={token}")).await;
    assert_eq!(
        (v["balance"].as_i64(), v["parked"].as_bool()),
        (Some(1000), Some(true)),
        "{v}"
    );
    let (status, err) = post(&http, &format!("{base}/v1/admin/parked/pk-3/retry")).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("account_not_parked"))
    );

    // A skip: the unreadable event goes to the dead-letter topic, the deposit after it
    // applies.
    let (status, accepted) = post(&http, &format!("{base}/v1/admin/parked/pk-1/skip")).await;
    assert_eq!(status, 202, "{accepted}");
    let token = accepted["token"].as_str().unwrap();
    let v = get_json(&http, &format!("{base}/v1/accounts/pk-1?after={token}")).await;
    assert_eq!(
        (v["balance"].as_i64(), v.get("parked")),
        (Some(1010), None),
        "{v}"
    );
    let letters = read_topic(&brokers, &format!("{topic}.dlq"), 1, WAIT);
    assert_eq!(letters[0].0, future("pk-1"));
    assert!(
        letters[0].1[DLQ_HEADER_ERROR].contains("skipped by an operator"),
        "{:?}",
        letters[0].1
    );

    // Parked events survive a restart; a "newer projector" retries them in order.
    proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(proc.wait_exit(WAIT).success());
    drop(proc);
    let proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &["--test-future-type"]);
    let base = proc.url();
    wait_ready(&base, WAIT).await;
    wait_for("the restarted projector to serve pk-0", WAIT, || async {
        let (status, v) = get(&http, &format!("{base}/v1/accounts/pk-0")).await;
        (status == 200 && v["parked"] == true).then_some(())
    })
    .await;
    let (status, accepted) = post(&http, &format!("{base}/v1/admin/parked/pk-0/retry")).await;
    assert_eq!(status, 202, "{accepted}");
    let token = accepted["token"].as_str().unwrap();
    let v = get_json(&http, &format!("{base}/v1/accounts/pk-0?after={token}")).await;
    assert_eq!(
        (
            v["balance"].as_i64(),
            v.get("parked"),
            v["applied_events"].as_u64()
        ),
        (Some(1000 + 7 + 10), None, Some(4)),
        "the waiting events applied in order: {v}"
    );
    let (_, parked) = get(&http, &format!("{base}/v1/admin/parked")).await;
    assert_eq!(parked["accounts"], serde_json::json!([]), "{parked}");
}
