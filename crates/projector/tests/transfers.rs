//! Transfers through the log, against the real broker and the real binary: the projector
//! writes each transfer's follow-ups (credit, then completion or refund) to the log before
//! it stores the batch that caused them.
//!
//! - Killed between the follow-ups' acknowledgement and the store (the test hook
//!   `--test-crash-after-follow-ups`), it writes them again on restart, under the same
//!   ids, and their destinations apply each once: nothing lost, doubled or created.
//! - An owner writes follow-ups for exactly the events at or above the group's committed
//!   offset: a fresh store catching up below it writes none again (no flood of copies),
//!   and the events above it get theirs (no money stuck in flight).
//! - A store that applied transfers read-only (as the tail of a partition being handed
//!   over does) gets them settled when its instance owns the partition: it reads the
//!   partition again from the committed offset and writes their follow-ups then.
//!
//! The oracle is the log itself: every event in it, follow-ups included, applied to the
//! domain's model in log order per partition, must give the projector's state; and every
//! follow-up the model says an event causes must be in the log, and nothing else.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use ledger_domain::testing::{deposit, event, transfer};
use ledger_domain::{Batch, Event, EventBody, Model, Record};
use ledger_eventlog::tail::{tail, TailOptions};
use ledger_eventlog::{KafkaConfig, Position};
use ledger_testkit::wait_ready;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 10;

/// Opens `ACCOUNTS` accounts and funds each with 10 000.
fn funding(prefix: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..ACCOUNTS {
        let acc = format!("{prefix}-{i}");
        out.push(event(
            0,
            &format!("{prefix}-open-{i}"),
            &acc,
            EventBody::OpenAccount,
        ));
        out.push(event(
            0,
            &format!("{prefix}-fund-{i}"),
            &acc,
            deposit(10_000),
        ));
    }
    out
}

/// `n` transfers between the accounts: most between two of them, some to an account
/// never opened (refunded), some beyond any balance (rejected).
fn transfers(prefix: &str, tag: &str, n: usize, seed: u64) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|k| {
            let from = rng.random_range(0..ACCOUNTS);
            let roll = rng.random_range(0..10);
            let to = match roll {
                0 => format!("{prefix}-ghost-{}", rng.random_range(0..3)),
                _ => format!(
                    "{prefix}-{}",
                    (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS
                ),
            };
            let amount = if roll == 1 {
                5_000_000
            } else {
                rng.random_range(1..=3_000)
            };
            let id = u128::from(rand::random::<u64>());
            let mut e = event(
                id,
                &format!("{prefix}-{tag}-{k}"),
                &format!("{prefix}-{from}"),
                transfer(&to, amount),
            );
            e.time_ms = 1;
            e
        })
        .collect()
}

/// A fresh topic whose accounts are opened and funded ([`funding`]), with its group's
/// name, a directory for stores and logs, and a random seed (printed, to replay a run).
struct Funded {
    brokers: String,
    topic: String,
    group: String,
    dir: tempfile::TempDir,
    seed: u64,
}

async fn funded(topic_prefix: &str, accounts_prefix: &str) -> Funded {
    let brokers = ledger_testkit::brokers();
    let topic = ledger_testkit::unique_topic(topic_prefix);
    create_topic(&brokers, &topic).await;
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    produce(&brokers, &topic, &funding(accounts_prefix)).await;
    Funded {
        group: format!("{topic}.group"),
        brokers,
        topic,
        dir: tempfile::tempdir().unwrap(),
        seed,
    }
}

/// Every event of the topic, in order within each partition.
async fn read_log(brokers: &str, topic: &str) -> Vec<(Position, Event)> {
    let (kafka, topic) = (KafkaConfig::new(brokers), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let options = TailOptions {
            from_beginning: true,
            ..TailOptions::default()
        };
        tail(&kafka, &topic, options, &CancellationToken::new(), |t| {
            let event = t.event.expect("every event of the topic decodes");
            out.push((
                Position {
                    partition: t.partition,
                    offset: t.offset,
                },
                event,
            ));
            true
        })
        .expect("the topic can be read");
        out
    })
    .await
    .unwrap()
}

/// What the log says, checked: the model of every event in it, and how many copies of
/// each follow-up it holds. Asserts that the follow-ups in the log are exactly those the
/// model says its events cause: none missing (money stuck or lost), none extra (money
/// created).
fn check_log(log: &[(Position, Event)]) -> (Model, HashMap<u128, usize>) {
    let mut sorted: Vec<&(Position, Event)> = log.iter().collect();
    sorted.sort_by_key(|(p, _)| (p.partition, p.offset));
    let mut model = Model::new();
    let mut caused: HashMap<u128, Event> = HashMap::new();
    let mut copies: HashMap<u128, usize> = HashMap::new();
    for (pos, e) in sorted {
        if e.body.is_follow_up() {
            *copies.entry(e.event_id).or_default() += 1;
        }
        for f in model.apply(e, *pos).follow_ups {
            caused.insert(f.event_id, f);
        }
    }
    for (id, f) in &caused {
        assert!(
            copies.contains_key(id),
            "a follow-up the log's events cause is not in the log: {f:?}"
        );
    }
    for id in copies.keys() {
        assert!(
            caused.contains_key(id),
            "the log holds a follow-up no event caused: {id:#x}"
        );
    }
    (model, copies)
}

/// Waits until every transfer has settled and the projector has applied the whole log
/// (follow-ups included), and returns the group's totals.
async fn wait_settled(base: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    ledger_testkit::wait_for(
        "every transfer to settle",
        Duration::from_secs(90),
        || async {
            let progress = get_json(&http, &format!("{base}/v1/progress")).await;
            let totals = get_json(&http, &format!("{base}/v1/totals")).await;
            (progress["total_lag"] == 0
                && totals["pending_transfers_sum"] == 0
                && totals["complete"] == true)
                .then_some(totals)
        },
    )
    .await
}

fn assert_money(totals: &serde_json::Value, deposited: u64) {
    assert_eq!(totals["conserved"], true, "{totals}");
    assert_eq!(totals["pending_transfers_sum"], 0, "{totals}");
    assert_eq!(totals["deposits_sum"], deposited, "{totals}");
    assert_eq!(totals["withdrawals_sum"], 0, "{totals}");
    assert_eq!(
        totals["balance_sum"], deposited,
        "no money lost or created: {totals}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_writing_follow_ups_and_storing_loses_doubles_and_creates_nothing() {
    let Funded {
        brokers,
        topic,
        group,
        dir,
        seed,
    } = funded("transfer-crash", "x").await;
    let data = dir.path().join("data");
    produce(&brokers, &topic, &transfers("x", "t", 120, seed)).await;

    // Small batches, so that a crash lands with some follow-ups written and others not.
    let small = [
        "--batch-max-events",
        "10",
        "--instance-id",
        "transfer-crash-0",
    ];
    for crash_after in ["1", "3"] {
        let mut args = small.to_vec();
        args.extend(["--test-crash-after-follow-ups", crash_after]);
        let mut proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &args);
        let status = proc.wait_exit(Duration::from_secs(90));
        assert!(
            !status.success(),
            "the test hook aborts the process: {status:?}"
        );
        assert!(
            proc.log_text().contains("test hook"),
            "it died at the hook: {}",
            proc.log_text()
        );
    }
    let proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &small);
    wait_ready(&proc.url(), Duration::from_secs(60)).await;
    let totals = wait_settled(&proc.url()).await;

    let log = read_log(&brokers, &topic).await;
    let (model, copies) = check_log(&log);
    let doubled = copies.values().filter(|&&n| n > 1).count();
    assert!(
        doubled > 0,
        "the crashes came after follow-ups were acknowledged and before they were stored, so the restart wrote some again"
    );
    // Each was applied once: the projector's state is the model's, which applies a copy
    // as a duplicate.
    assert_http_matches(&proc.url(), &model).await;
    assert_money(&totals, 10_000 * ACCOUNTS as u64);
    let statuses: BTreeMap<&str, usize> =
        model.commands.values().fold(BTreeMap::new(), |mut acc, r| {
            *acc.entry(r.status.code()).or_default() += 1;
            acc
        });
    eprintln!("follow-ups written twice: {doubled}; statuses {statuses:?}");
    assert!(!statuses.contains_key("pending"), "{statuses:?}");
    assert!(
        statuses.get("refunded").is_some_and(|&n| n > 0),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_writes_follow_ups_for_exactly_the_events_at_or_above_the_committed_offset() {
    let Funded {
        brokers,
        topic,
        group,
        dir,
        seed,
    } = funded("transfer-owner", "y").await;
    produce(&brokers, &topic, &transfers("y", "a", 60, seed)).await;

    // The first owner settles every transfer, and stops cleanly: the group's committed
    // offsets end where its store does.
    let mut first = ProjectorProcess::spawn(&brokers, &topic, &group, &dir.path().join("one"), &[]);
    wait_ready(&first.url(), Duration::from_secs(60)).await;
    wait_settled(&first.url()).await;
    first.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(first.wait_exit(Duration::from_secs(60)).success());
    let (_, before) = check_log(&read_log(&brokers, &topic).await);
    assert!(before.values().all(|&n| n == 1), "no crash, no copies");

    // More transfers, which nobody has applied: above the committed offset.
    produce(&brokers, &topic, &transfers("y", "b", 40, seed + 1)).await;
    // A new owner with an empty store: it applies the whole log again, writes no
    // follow-up of the events below the committed offset, and writes those of the
    // events above it.
    let second = ProjectorProcess::spawn(&brokers, &topic, &group, &dir.path().join("two"), &[]);
    wait_ready(&second.url(), Duration::from_secs(60)).await;
    let totals = wait_settled(&second.url()).await;
    let (model, after) = check_log(&read_log(&brokers, &topic).await);
    let copies: Vec<_> = after.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        copies.is_empty(),
        "below the committed offset, nothing is written again: {} follow-ups have copies",
        copies.len()
    );
    assert!(
        after.len() > before.len(),
        "above it, the new transfers' follow-ups were written ({} then {})",
        before.len(),
        after.len()
    );
    assert_http_matches(&second.url(), &model).await;
    assert_money(&totals, 10_000 * ACCOUNTS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_applied_read_only_are_settled_once_the_partition_is_owned() {
    let Funded {
        brokers,
        topic,
        group,
        dir,
        seed,
    } = funded("transfer-rewind", "z").await;
    let data = dir.path().join("data");
    produce(&brokers, &topic, &transfers("z", "t", 50, seed)).await;

    // The store as a read-only tail leaves it: every event applied and its offset stored,
    // no follow-up written (the batch has no emit_from), so the transfers are pending.
    let log = read_log(&brokers, &topic).await;
    {
        let store = ledger_store::Store::open(&data, 8 << 20).unwrap();
        store.check_partition_count(&topic, PARTITIONS).unwrap();
        let mut batch = Batch::default();
        for (pos, event) in &log {
            batch.records.push(Record {
                partition: pos.partition,
                offset: pos.offset,
                event: event.clone(),
            });
            batch.next_offsets.insert(pos.partition, pos.offset + 1);
        }
        let stats = store.apply_batch(&topic, &batch).unwrap();
        assert_eq!(stats.follow_ups, 0, "a read-only batch writes none");
        let mut pending = ledger_domain::Totals::default();
        for p in 0..PARTITIONS {
            pending.add(&store.totals(&topic, p).unwrap());
        }
        assert!(pending.pending() > 0, "transfers wait for their credits");
    }

    // Its instance now owns every partition, of a group that never committed: it must
    // read them again from there and write the follow-ups nobody wrote.
    let proc = ProjectorProcess::spawn(&brokers, &topic, &group, &data, &[]);
    wait_ready(&proc.url(), Duration::from_secs(60)).await;
    let totals = wait_settled(&proc.url()).await;
    let rewinds = ledger_testkit::metric_sum(&proc.url(), "projector_emit_rewinds_total")
        .await
        .unwrap_or(0);
    assert!(rewinds > 0, "the partitions were read again: {rewinds}");
    let (model, copies) = check_log(&read_log(&brokers, &topic).await);
    assert!(
        copies.values().all(|&n| n == 1),
        "each follow-up written once"
    );
    assert_http_matches(&proc.url(), &model).await;
    assert_money(&totals, 10_000 * ACCOUNTS as u64);
}
