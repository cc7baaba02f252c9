//! The store against the domain model: batches over several partitions applied in
//! parallel, redeliveries, reopening, locking, the layout and partition-count guards.

use std::collections::BTreeMap;

use ledger_domain::partitioning::partition_of;
use ledger_domain::testing::transfer;
use ledger_domain::testing::{deposit as dep, event, withdraw as wd};
use ledger_domain::{
    follow_up_cause, AccountId, Batch, CommandId, CommandStatus, Event, EventBody, FollowUpKind,
    Model, Position, Record, Rejection, Totals,
};
use ledger_store::{EventCodec, Store, StoreError, SwapError};
use proptest::prelude::*;
use std::sync::Arc;

const TOPIC: &str = "ledger.events";
const CACHE: u64 = 8 << 20;
const PARTITIONS: i32 = 4;

fn ev(cmd: &str, acc: &str, body: EventBody) -> Event {
    event(0, cmd, acc, body)
}

fn acc(id: &str) -> AccountId {
    AccountId::parse(id).unwrap()
}

fn cmd(id: &str) -> CommandId {
    CommandId::parse(id).unwrap()
}

/// A topic of [`PARTITIONS`] partitions as the ingest fills it: each event in its
/// account's partition, at that partition's next offset.
#[derive(Clone, Default)]
struct Log {
    ends: BTreeMap<i32, i64>,
}

impl Log {
    /// The next events as one batch, moving every partition they touch.
    fn batch(&mut self, events: &[Event]) -> Batch {
        let mut b = Batch::default();
        for e in events {
            let partition = partition_of(&e.account_id, PARTITIONS);
            let offset = self.ends.entry(partition).or_insert(0);
            b.records.push(Record {
                partition,
                offset: *offset,
                event: e.clone(),
            });
            *offset += 1;
            b.next_offsets.insert(partition, *offset);
        }
        b
    }
}

fn open(dir: &std::path::Path) -> Store {
    let store = Store::open(dir, CACHE).unwrap();
    store.check_partition_count(TOPIC, PARTITIONS).unwrap();
    store
}

#[test]
fn applies_outcomes_and_offsets_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events = [
        ev("c1", "acc-1", EventBody::OpenAccount),
        ev("c2", "acc-1", dep(1250)),
        ev("c3", "acc-1", wd(300)),
        ev("c4", "acc-1", wd(5000)),
        ev("c5", "acc-2", dep(5)),
        ev("c2", "acc-1", dep(1250)),
    ];
    let mut log = Log::default();
    let b = log.batch(&events);
    let stats = store.apply_batch(TOPIC, &b).unwrap();
    assert_eq!(stats.applied, 3);
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.rejected.get("insufficient_funds"), Some(&1));
    assert_eq!(stats.rejected.get("account_not_open"), Some(&1));

    let a1 = store.account(TOPIC, &acc("acc-1")).unwrap().unwrap();
    assert_eq!((a1.open, a1.balance, a1.applied_events), (true, 950, 3));
    assert_eq!(store.account(TOPIC, &acc("acc-2")).unwrap(), None);
    let p1 = partition_of(&acc("acc-1"), PARTITIONS);
    let c4 = store
        .command(TOPIC, &acc("acc-1"), &cmd("c4"))
        .unwrap()
        .unwrap();
    assert_eq!(
        c4.status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!((c4.partition, c4.offset), (p1, 3));
    // The duplicate keeps the first outcome and position.
    let c2 = store
        .command(TOPIC, &acc("acc-1"), &cmd("c2"))
        .unwrap()
        .unwrap();
    assert_eq!((c2.status, c2.offset), (CommandStatus::Applied, 1));
    assert_eq!(store.offsets(TOPIC).unwrap(), log.ends);
    assert_eq!(store.stored_offset("other", p1).unwrap(), None);
}

#[test]
fn a_command_id_is_an_idempotency_key_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut log = Log::default();
    // Two accounts in different partitions, and two in the same one.
    let names = ["acc-1", "acc-2", "acc-3", "acc-4", "acc-5", "acc-6"];
    let events: Vec<Event> = names
        .iter()
        .map(|a| ev("same-id", a, EventBody::OpenAccount))
        .collect();
    let stats = store.apply_batch(TOPIC, &log.batch(&events)).unwrap();
    assert_eq!((stats.applied, stats.duplicates), (6, 0));
    let found = store.commands(TOPIC, &cmd("same-id")).unwrap();
    let mut accounts: Vec<&str> = found.iter().map(|c| c.account_id.as_str()).collect();
    accounts.sort_unstable();
    assert_eq!(accounts, names);
    // A retry on one account is still a duplicate there.
    let again = store
        .apply_batch(TOPIC, &log.batch(&[ev("same-id", "acc-3", dep(5))]))
        .unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 1));
    assert!(store.commands(TOPIC, &cmd("same")).unwrap().is_empty());
}

#[test]
fn redelivered_events_are_skipped_and_offsets_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut log = Log::default();
    let first = log.batch(&[
        ev("a1", "a", EventBody::OpenAccount),
        ev("a2", "a", dep(10)),
    ]);
    store.apply_batch(TOPIC, &first).unwrap();
    // The same offsets again, with different command ids: still skipped by offset.
    let mut again = first.clone();
    for (r, id) in again.records.iter_mut().zip(["b1", "b2"]) {
        r.event.command_id = cmd(id);
    }
    let stats = store.apply_batch(TOPIC, &again).unwrap();
    assert_eq!((stats.redelivered, stats.applied), (2, 0));
    assert_eq!(
        store.account(TOPIC, &acc("a")).unwrap().unwrap().balance,
        10
    );
    // A batch naming an older next offset does not move it back.
    let p = partition_of(&acc("a"), PARTITIONS);
    let stale = Batch {
        next_offsets: [(p, 1)].into_iter().collect(),
        ..Batch::default()
    };
    store.apply_batch(TOPIC, &stale).unwrap();
    assert_eq!(store.stored_offset(TOPIC, p).unwrap(), Some(2));
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    {
        let store = open(dir.path());
        let events = [
            ev("c1", "x", EventBody::OpenAccount),
            ev("c2", "x", dep(42)),
        ];
        store.apply_batch(TOPIC, &log.batch(&events)).unwrap();
    }
    let store = Store::open(dir.path(), CACHE).unwrap();
    assert_eq!(store.partition_count(TOPIC).unwrap(), Some(PARTITIONS));
    assert_eq!(
        store.account(TOPIC, &acc("x")).unwrap().unwrap().balance,
        42
    );
    assert_eq!(store.offsets(TOPIC).unwrap(), log.ends);
}

#[test]
fn the_instance_id_is_stored_on_first_use_and_kept_for_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), CACHE).unwrap();
        assert_eq!(
            store.instance_id_or_insert("first").unwrap(),
            ("first".to_string(), true)
        );
        assert_eq!(
            store.instance_id_or_insert("second").unwrap(),
            ("first".to_string(), false),
            "an id once stored is never replaced"
        );
    }
    let store = Store::open(dir.path(), CACHE).unwrap();
    assert_eq!(
        store.instance_id_or_insert("third").unwrap(),
        ("first".to_string(), false),
        "it survives reopening"
    );
}

#[test]
fn a_changed_partition_count_is_refused_for_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.check_partition_count(TOPIC, PARTITIONS).unwrap();
        let err = store
            .check_partition_count(TOPIC, PARTITIONS + 2)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                StoreError::PartitionCountChanged {
                    stored: 4,
                    now: 6,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains("new topic"),
            "the error names the way out: {text}"
        );
    }
    let store = Store::open(dir.path(), CACHE).unwrap();
    assert!(store.check_partition_count(TOPIC, PARTITIONS + 2).is_err());
    assert_eq!(store.partition_count(TOPIC).unwrap(), Some(PARTITIONS));
}

#[test]
fn a_store_of_the_previous_layout_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What layout 1 left on disk: one tree per kind for every partition.
        let db = sled::open(dir.path()).unwrap();
        for t in ["accounts", "commands", "offsets"] {
            db.open_tree(t).unwrap().insert(b"k", b"v").unwrap();
        }
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), CACHE)
        .err()
        .expect("layout 1 must be refused");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Layout { .. }), "{text}");
    assert!(
        text.contains("layout 1") && text.contains("Rebuild"),
        "{text}"
    );
}

/// What `Store::open` says of a directory whose meta tree records `layout` and holds
/// nothing else.
fn open_with_layout(layout: u32) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"layout", &layout.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    Store::open(dir.path(), CACHE)
        .err()
        .unwrap_or_else(|| panic!("layout {layout} must be refused"))
}

#[test]
fn a_store_of_layout_4_is_refused_with_the_rebuild_message() {
    // Layout 4 kept every outcome for ever, with no watermark and 17-byte outcomes; a
    // store must be one layout or the other throughout.
    let err = open_with_layout(4);
    let text = err.to_string();
    assert!(matches!(err, StoreError::Layout { .. }), "{text}");
    assert!(
        text.contains("layout 4") && text.contains("reads layout 5") && text.contains("Rebuild"),
        "{text}"
    );
}

#[test]
fn a_store_of_a_newer_layout_is_refused() {
    let err = open_with_layout(9);
    assert!(err.to_string().contains("layout 9"), "{err}");
}

#[test]
fn a_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), CACHE).unwrap();
    match Store::open(dir.path(), CACHE) {
        Err(StoreError::Locked(p)) => assert_eq!(p, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of the same directory must fail"),
    }
}

#[test]
fn an_unusable_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = Store::open(&file, CACHE)
        .err()
        .expect("a file is not a data directory");
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
}

fn arb_event() -> impl Strategy<Value = Event> {
    let body = prop_oneof![
        Just(EventBody::OpenAccount),
        (1u64..500).prop_map(dep),
        (1u64..500).prop_map(wd),
    ];
    (0u8..8, 0u16..60, body)
        .prop_map(|(a, c, body)| ev(&format!("c{c}"), &format!("acc-{a}"), body))
}

fn arb_transfer_event() -> impl Strategy<Value = Event> {
    let body = prop_oneof![
        2 => Just(EventBody::OpenAccount),
        3 => (1u64..=500).prop_map(dep),
        1 => (1u64..=500).prop_map(wd),
        4 => (0u8..7, 1u64..=300).prop_map(|(to, a)| transfer(&format!("t-{to}"), a)),
    ];
    (0u8..5, 0u16..1000, body).prop_map(|(a, c, body)| {
        let account = format!("t-{a}");
        let body = match body {
            EventBody::Transfer { to, amount } if to.as_str() == account => {
                EventBody::Deposit { amount }
            }
            other => other,
        };
        event(u128::from(c), &format!("c{c}"), &account, body)
    })
}

/// Runs `events` through the store as an owner does, batches cut by `cuts`: each batch's
/// follow-ups go to the end of the log (their accounts' partitions) before the batch is
/// stored; where `replay` says so the batch is first prepared, its follow-ups written,
/// and then "the process dies" before the commit, so it writes its follow-ups twice.
/// Returns every record written, in partition and offset order.
fn run_as_owner(
    store: &Store,
    log: &mut Log,
    mut queue: Vec<Event>,
    cuts: &[usize],
    replay: &[bool],
) -> Vec<Record> {
    let mut written: Vec<Record> = Vec::new();
    let mut i = 0usize;
    while !queue.is_empty() {
        let n = cuts[i % cuts.len()].min(queue.len());
        let chunk: Vec<Event> = queue.drain(..n).collect();
        let mut b = log.batch(&chunk);
        written.extend(b.records.iter().cloned());
        b.emit_from = b.next_offsets.keys().map(|&p| (p, 0)).collect();
        if replay[i % replay.len()] {
            let lost = store.prepare(TOPIC, &b).unwrap();
            queue.extend(lost.follow_ups().iter().cloned());
        }
        let prepared = store.prepare(TOPIC, &b).unwrap();
        queue.extend(prepared.follow_ups().iter().cloned());
        store.commit(prepared).unwrap();
        i += 1;
    }
    written.sort_by_key(|r| (r.partition, r.offset));
    written
}

/// The model after the same log, applied in the same order per partition.
fn model_of(written: &[Record], window: Option<ledger_domain::IdempotencyWindow>) -> Model {
    let mut model = Model::with_window(window);
    for r in written {
        model.apply(
            &r.event,
            Position {
                partition: r.partition,
                offset: r.offset,
            },
        );
    }
    model
}

/// The store's accounts and totals are the model's, and money is conserved; gives the
/// totals.
fn matches_model(store: &Store, model: &Model) -> Result<Totals, TestCaseError> {
    let stored: BTreeMap<_, _> = store.accounts(TOPIC).unwrap().into_iter().collect();
    prop_assert_eq!(&stored, &model.accounts);
    let mut totals = Totals::default();
    for p in 0..PARTITIONS {
        totals.add(&store.totals(TOPIC, p).unwrap());
    }
    prop_assert_eq!(totals, model.totals);
    prop_assert!(totals.conserved());
    Ok(totals)
}

/// The digest kept as the batches wrote is the digest of what is stored, and `other`
/// (empty), applying the same log read-only in one batch, holds the same.
fn digests_match_one_batch(
    store: &Store,
    other: &Store,
    written: &[Record],
    log: &Log,
) -> Result<(), TestCaseError> {
    other
        .apply_batch(
            TOPIC,
            &Batch {
                records: written.to_vec(),
                next_offsets: log.ends.clone(),
                ..Batch::default()
            },
        )
        .unwrap();
    for p in 0..PARTITIONS {
        let kept = store.digest(TOPIC, p).unwrap();
        prop_assert_eq!(kept, store.digest_by_scan(TOPIC, p).unwrap());
        prop_assert_eq!(kept, other.digest(TOPIC, p).unwrap(), "partition {}", p);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any split into batches, with any batch delivered twice, on any number of
    /// workers, ends in the model's state.
    #[test]
    fn transfers_through_the_log_match_the_model_and_conserve_money(
        events in proptest::collection::vec(arb_transfer_event(), 1..80),
        cuts in proptest::collection::vec(1usize..12, 1..10),
        replay_before_store in proptest::collection::vec(any::<bool>(), 10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut log = Log::default();
        let written = run_as_owner(&store, &mut log, events.clone(), &cuts, &replay_before_store);
        let model = model_of(&written, store.window());
        let totals = matches_model(&store, &model)?;
        prop_assert_eq!(totals.pending(), 0, "every transfer settled once the log drained");
        let stored: BTreeMap<_, _> = store.accounts(TOPIC).unwrap().into_iter().collect();
        let balances: i128 = stored.values().map(|s| i128::from(s.balance)).sum();
        prop_assert_eq!(balances, totals.balance_sum);
        for ((account, id), rec) in &model.commands {
            let got = store.command(TOPIC, account, id).unwrap().unwrap();
            prop_assert_eq!(got.status, rec.status);
            prop_assert!(got.status.is_final());
        }
        let other_dir = tempfile::tempdir().unwrap();
        digests_match_one_batch(&store, &open(other_dir.path()), &written, &log)?;
    }

    #[test]
    fn batches_with_redelivery_match_the_model(
        events in proptest::collection::vec(arb_event(), 1..120),
        cuts in proptest::collection::vec(1usize..20, 1..20),
        redeliver in proptest::collection::vec(any::<bool>(), 20),
        workers in 1usize..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).with_workers(workers);
        let mut model = Model::new();
        for r in Log::default().batch(&events).records {
            model.apply(&r.event, Position { partition: r.partition, offset: r.offset });
        }
        let mut log = Log::default();
        let mut start = 0usize;
        let mut i = 0usize;
        while start < events.len() {
            let end = (start + cuts[i % cuts.len()]).min(events.len());
            let b = log.batch(&events[start..end]);
            store.apply_batch(TOPIC, &b).unwrap();
            if redeliver[i % redeliver.len()] {
                let stats = store.apply_batch(TOPIC, &b).unwrap();
                prop_assert_eq!(stats.redelivered as usize, end - start);
            }
            start = end;
            i += 1;
        }
        let stored: BTreeMap<_, _> = store.accounts(TOPIC).unwrap().into_iter().collect();
        prop_assert_eq!(&stored, &model.accounts);
        let mut commands = 0;
        for ((account, id), rec) in &model.commands {
            let got = store.command(TOPIC, account, id).unwrap().unwrap();
            prop_assert_eq!(got.status, rec.status);
            prop_assert_eq!(&got.account_id, &rec.account_id);
            commands += 1;
        }
        let all: usize = (0..60).map(|c| store.commands(TOPIC, &cmd(&format!("c{c}"))).unwrap().len()).sum();
        prop_assert_eq!(all, commands);
        prop_assert_eq!(store.offsets(TOPIC).unwrap(), log.ends);
    }
}

/// Opens `a` and `b`, funds `a`, and prepares a transfer of 30 from `a` to `b` as an
/// owner (emitting from offset 0).
fn funded_transfer(store: &Store, log: &mut Log) -> (Batch, Event) {
    store
        .apply_batch(
            TOPIC,
            &log.batch(&[
                ev("o1", "a", EventBody::OpenAccount),
                ev("o2", "b", EventBody::OpenAccount),
                ev("d", "a", dep(100)),
            ]),
        )
        .unwrap();
    let t = ev("t-1", "a", transfer("b", 30));
    let mut b = log.batch(std::slice::from_ref(&t));
    b.emit_from = b.next_offsets.keys().map(|&p| (p, 0)).collect();
    (b, t)
}

#[test]
fn an_owner_batch_causes_follow_ups_and_a_read_only_one_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut log = Log::default();
    let (owner, _) = funded_transfer(&store, &mut log);
    let p = partition_of(&acc("a"), PARTITIONS);
    let read_only = Batch {
        emit_from: BTreeMap::new(),
        ..owner.clone()
    };
    // Nothing is written until commit.
    let prepared = store.prepare(TOPIC, &read_only).unwrap();
    assert!(prepared.follow_ups().is_empty(), "a tail never emits");
    drop(prepared);
    assert_eq!(
        store.account(TOPIC, &acc("a")).unwrap().unwrap().balance,
        100
    );
    let prepared = store.prepare(TOPIC, &owner).unwrap();
    let [credit] = prepared.follow_ups() else {
        panic!("one credit, got {:?}", prepared.follow_ups())
    };
    assert_eq!(credit.account_id, acc("b"));
    assert!(matches!(credit.body, EventBody::TransferCredit { .. }));
    assert_eq!(
        follow_up_cause(credit.event_id).map(|(pos, _)| pos.partition),
        Some(p)
    );
    let credit = credit.clone();
    let stats = store.commit(prepared).unwrap();
    assert_eq!(stats.follow_ups, 1);
    assert_eq!(
        store.account(TOPIC, &acc("a")).unwrap().unwrap().balance,
        70
    );
    let t = store
        .command(TOPIC, &acc("a"), &cmd("t-1"))
        .unwrap()
        .unwrap();
    assert_eq!(t.status, CommandStatus::Pending);
    assert_eq!(t.transfer.as_ref().unwrap().amount.minor_units(), 30);
    assert_eq!(store.emitted_offset(TOPIC, p).unwrap(), Some(4));
    assert_eq!(store.totals(TOPIC, p).unwrap().pending(), 30);

    // The credit, then the completion it causes, settle the transfer.
    let mut b = log.batch(std::slice::from_ref(&credit));
    b.emit_from = b.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &b).unwrap();
    let [done] = prepared.follow_ups() else {
        panic!("one completion")
    };
    assert!(matches!(done.body, EventBody::TransferCompleted { .. }));
    let done = done.clone();
    store.commit(prepared).unwrap();
    assert_eq!(
        store.account(TOPIC, &acc("b")).unwrap().unwrap().balance,
        30
    );
    store.apply_batch(TOPIC, &log.batch(&[done])).unwrap();
    let t = store
        .command(TOPIC, &acc("a"), &cmd("t-1"))
        .unwrap()
        .unwrap();
    assert_eq!(t.status, CommandStatus::Applied);
    let credit_partition = partition_of(&acc("b"), PARTITIONS);
    assert_eq!(
        t.transfer.unwrap().settled_at.map(|s| s.partition),
        Some(credit_partition)
    );
    let mut sum = Totals::default();
    for p in 0..PARTITIONS {
        sum.add(&store.totals(TOPIC, p).unwrap());
    }
    assert_eq!(
        (sum.pending(), sum.balance_sum, sum.deposits),
        (0, 100, 100)
    );
    assert!(sum.conserved());
}

#[test]
fn a_skipped_event_at_or_above_emit_from_causes_its_recorded_follow_ups_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut log = Log::default();
    let (owner, _) = funded_transfer(&store, &mut log);
    // Applied by a read-only tail: stored, nothing emitted, the emitted mark unmoved.
    let read_only = Batch {
        emit_from: BTreeMap::new(),
        ..owner.clone()
    };
    store.apply_batch(TOPIC, &read_only).unwrap();
    let p = partition_of(&acc("a"), PARTITIONS);
    assert_eq!(store.emitted_offset(TOPIC, p).unwrap(), None);
    // Then the owner reads it again: below the stored offset, so not applied twice, but
    // at or above where it must emit, so its credit is written again.
    let prepared = store.prepare(TOPIC, &owner).unwrap();
    assert_eq!(prepared.follow_ups().len(), 1);
    let stats = store.commit(prepared).unwrap();
    assert_eq!((stats.redelivered, stats.applied), (1, 0));
    assert_eq!(
        store.account(TOPIC, &acc("a")).unwrap().unwrap().balance,
        70
    );
    assert_eq!(store.emitted_offset(TOPIC, p).unwrap(), Some(4));
    // Below emit_from (an earlier owner wrote it before committing): not again.
    let mut above = owner.clone();
    above.emit_from.insert(p, 4);
    assert!(store
        .prepare(TOPIC, &above)
        .unwrap()
        .follow_ups()
        .is_empty());
}

#[test]
fn a_credit_to_an_account_never_opened_causes_a_refund() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut log = Log::default();
    store
        .apply_batch(
            TOPIC,
            &log.batch(&[
                ev("o1", "a", EventBody::OpenAccount),
                ev("d", "a", dep(100)),
            ]),
        )
        .unwrap();
    let mut step = |events: &[Event]| {
        let mut b = log.batch(events);
        b.emit_from = b.next_offsets.keys().map(|&p| (p, 0)).collect();
        let prepared = store.prepare(TOPIC, &b).unwrap();
        let out = prepared.follow_ups().to_vec();
        store.commit(prepared).unwrap();
        out
    };
    let credit = step(&[ev("t-1", "a", transfer("ghost", 40))]);
    let refund = step(&credit);
    assert!(matches!(
        refund[..],
        [Event {
            body: EventBody::TransferRefund {
                reason: Rejection::DestinationNotOpen,
                ..
            },
            ..
        }]
    ));
    assert_eq!(
        follow_up_cause(refund[0].event_id).map(|(_, k)| k),
        Some(FollowUpKind::Refund)
    );
    assert!(step(&refund).is_empty());
    // A second copy of the refund (its emitter crashed before storing) changes nothing.
    assert!(step(&refund).is_empty());
    assert_eq!(
        store.account(TOPIC, &acc("a")).unwrap().unwrap().balance,
        100
    );
    assert_eq!(store.account(TOPIC, &acc("ghost")).unwrap(), None);
    let t = store
        .command(TOPIC, &acc("a"), &cmd("t-1"))
        .unwrap()
        .unwrap();
    assert_eq!(
        t.status,
        CommandStatus::Refunded(Rejection::DestinationNotOpen)
    );
    assert_eq!(t.status.reason(), Some("destination_not_open"));
}

/// The event log's codec as the store sees it, with an event type this "version" may or
/// may not know: a payload `future:N` is a deposit of N to a newer projector and
/// unreadable to an older one.
struct TestCodec {
    knows_future: bool,
}

impl EventCodec for TestCodec {
    fn encode(&self, event: &Event) -> Vec<u8> {
        encode_event(event)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Event, String> {
        decode_event(bytes, self.knows_future)
    }
}

/// Events travel as `account|command|body` where body is `open`, `dep:N`, `wd:N`, or
/// `future:N` (known only with `knows_future`).
fn encode_event(e: &Event) -> Vec<u8> {
    let body = match &e.body {
        EventBody::OpenAccount => "open".to_string(),
        EventBody::Deposit { amount } => format!("dep:{}", amount.minor_units()),
        EventBody::Withdraw { amount } => format!("wd:{}", amount.minor_units()),
        EventBody::Transfer { to, amount } => format!("tr:{to}:{}", amount.minor_units()),
        EventBody::TransferCredit { from, amount } => {
            format!("cr:{from}:{}:{}", amount.minor_units(), e.event_id)
        }
        other => panic!("the test codec does not carry {other:?}"),
    };
    format!("{}|{}|{body}", e.account_id, e.command_id).into_bytes()
}

fn decode_event(bytes: &[u8], knows_future: bool) -> Result<Event, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let mut parts = text.splitn(3, '|');
    let (a, c, body) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let body = match body.split_once(':') {
        None if body == "open" => EventBody::OpenAccount,
        Some(("dep", n)) => dep(n.parse().unwrap()),
        Some(("wd", n)) => wd(n.parse().unwrap()),
        Some(("tr", rest)) => {
            let (to, n) = rest.split_once(':').unwrap();
            transfer(to, n.parse().unwrap())
        }
        Some(("cr", rest)) => {
            let mut f = rest.split(':');
            let (from, n, id) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            let body = EventBody::TransferCredit {
                from: acc(from),
                amount: ledger_domain::Amount::new(n.parse().unwrap()).unwrap(),
            };
            return Ok(event(id.parse().unwrap(), c, a, body));
        }
        Some(("future", n)) if knows_future => dep(n.parse().unwrap()),
        _ => return Err(format!("unknown event type in {body}")),
    };
    Ok(ev(c, a, body))
}

fn open_with(dir: &std::path::Path, knows_future: bool) -> Store {
    open(dir).with_codec(Arc::new(TestCodec { knows_future }))
}

impl Log {
    /// The next offset of the account's partition, taken by an unreadable event.
    fn unreadable(&mut self, b: &mut Batch, account: &str, payload: &str) {
        let account_id = acc(account);
        let partition = partition_of(&account_id, PARTITIONS);
        let offset = self.ends.entry(partition).or_insert(0);
        b.unreadable.push(ledger_domain::Unreadable {
            partition,
            offset: *offset,
            account_id,
            payload: payload.as_bytes().to_vec(),
            reason: "unknown event type 100".into(),
        });
        *offset += 1;
        b.next_offsets.insert(partition, *offset);
    }
}

fn unpark(cmd: &str, account: &str, action: ledger_domain::UnparkKind, first_offset: i64) -> Event {
    ev(
        cmd,
        account,
        EventBody::Unpark {
            action,
            first_offset,
        },
    )
}

fn balance(store: &Store, account: &str) -> i64 {
    store
        .account(TOPIC, &acc(account))
        .unwrap()
        .map_or(0, |s| s.balance)
}

fn digests_hold(store: &Store) {
    for p in 0..PARTITIONS {
        assert_eq!(
            store.digest(TOPIC, p).unwrap(),
            store.digest_by_scan(TOPIC, p).unwrap(),
            "partition {p}"
        );
    }
}

#[test]
fn an_unreadable_event_parks_its_account_alone_until_a_newer_version_retries_it() {
    use ledger_domain::UnparkKind::Retry;
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    // "acc-1" and "acc-5" share a partition: one parks, the other flows on.
    let (a, other) = ("acc-1", "acc-5");
    assert_eq!(
        partition_of(&acc(a), PARTITIONS),
        partition_of(&acc(other), PARTITIONS)
    );
    {
        let store = open_with(dir.path(), false);
        let mut b = log.batch(&[
            ev("o1", a, EventBody::OpenAccount),
            ev("o2", other, EventBody::OpenAccount),
            ev("d1", a, dep(100)),
        ]);
        log.unreadable(&mut b, a, &format!("{a}|f1|future:7"));
        let later = log.batch(&[ev("d2", a, dep(10)), ev("d3", other, dep(50))]);
        b.records.extend(later.records);
        b.next_offsets.extend(later.next_offsets);
        let stats = store.apply_batch(TOPIC, &b).unwrap();
        assert_eq!((stats.parked, stats.applied), (2, 4));
        assert_eq!((balance(&store, a), balance(&store, other)), (100, 50));
        let mark = store.parked(TOPIC, &acc(a)).unwrap().expect("parked");
        assert_eq!(
            (mark.first_offset, mark.waiting),
            (b.unreadable[0].offset, 2)
        );
        assert!(store.parked(TOPIC, &acc(other)).unwrap().is_none());
        digests_hold(&store);
        // A retry by this version changes nothing: it still cannot read the event.
        let stats = store
            .apply_batch(
                TOPIC,
                &log.batch(&[unpark("u1", a, Retry, mark.first_offset)]),
            )
            .unwrap();
        assert_eq!((stats.controls, stats.unparked), (1, 0));
        assert_eq!(store.parked(TOPIC, &acc(a)).unwrap().unwrap().waiting, 2);
        assert_eq!(
            store
                .parked_in(TOPIC, &(0..PARTITIONS).collect::<Vec<_>>())
                .unwrap()
                .len(),
            1
        );
    }
    // The same store under a "newer projector" that knows the type: the retry applies
    // both waiting events in order, and the account flows again.
    let store = open_with(dir.path(), true);
    let first = store.parked(TOPIC, &acc(a)).unwrap().unwrap().first_offset;
    let stats = store
        .apply_batch(
            TOPIC,
            &log.batch(&[unpark("u2", a, Retry, first), ev("d4", a, dep(1))]),
        )
        .unwrap();
    assert_eq!((stats.unparked, stats.parked), (2, 0));
    assert_eq!(balance(&store, a), 100 + 7 + 10 + 1);
    assert!(store.parked(TOPIC, &acc(a)).unwrap().is_none());
    digests_hold(&store);
}

#[test]
fn a_skip_dead_letters_the_unreadable_event_only_when_the_batch_may_write_to_the_log() {
    use ledger_domain::UnparkKind::Skip;
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), false);
    let mut log = Log::default();
    let a = "acc-1";
    // Two unreadable events, a deposit after each.
    let mut b = log.batch(&[ev("o1", a, EventBody::OpenAccount)]);
    log.unreadable(&mut b, a, &format!("{a}|f1|future:7"));
    let first = b.unreadable[0].offset;
    for (cmd, future) in [("d1", None), ("", Some("f2")), ("d2", None)] {
        match future {
            Some(f) => log.unreadable(&mut b, a, &format!("{a}|{f}|future:9")),
            None => {
                let later = log.batch(&[ev(cmd, a, dep(10))]);
                b.records.extend(later.records);
                b.next_offsets.extend(later.next_offsets);
            }
        }
    }
    store.apply_batch(TOPIC, &b).unwrap();
    let mut skip = log.batch(&[unpark("u1", a, Skip, first)]);
    // Read-only (a rebuild, a tail): the same decision, no dead letter.
    let read_only = store.prepare(TOPIC, &skip).unwrap();
    assert!(read_only.dead_letters().is_empty());
    skip.emit_from = skip.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &skip).unwrap();
    let dead = prepared.dead_letters().to_vec();
    let stats = store.commit(prepared).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, format!("{a}|f1|future:7").into_bytes());
    assert_eq!(dead[0].reason, "unknown event type 100");
    assert_eq!((stats.dead_lettered, stats.unparked), (1, 1));
    assert_eq!(balance(&store, a), 10);
    let mark = store
        .parked(TOPIC, &acc(a))
        .unwrap()
        .expect("parked at the second");
    assert_eq!(
        (mark.first_offset, mark.waiting),
        (b.unreadable[1].offset, 2)
    );
    // The same decision again (a retried request): it no longer applies, and never
    // skips the second unreadable event.
    let mut again = log.batch(&[unpark("u1-again", a, Skip, first)]);
    again.emit_from = again.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &again).unwrap();
    assert!(prepared.dead_letters().is_empty());
    let stats = store.commit(prepared).unwrap();
    assert_eq!(
        (stats.controls, stats.dead_lettered, stats.unparked),
        (1, 0, 0)
    );
    assert_eq!(store.parked(TOPIC, &acc(a)).unwrap(), Some(mark));
    digests_hold(&store);
}

#[test]
fn an_owner_reading_a_decision_again_writes_what_it_released_again() {
    use ledger_domain::UnparkKind::Skip;
    // A decision applied read-only (as a partition being handed over is read): nothing
    // written to the log. Its next owner reads it again from the committed offset, and
    // must write the skipped event's dead letter and the released transfer's credit.
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), false);
    let mut log = Log::default();
    let a = "acc-1";
    let mut b = log.batch(&[ev("o1", a, EventBody::OpenAccount), ev("d1", a, dep(100))]);
    log.unreadable(&mut b, a, &format!("{a}|f1|future:7"));
    let first = b.unreadable[0].offset;
    let later = log.batch(&[ev("t1", a, transfer("acc-2", 30))]);
    let transfer_at = later.records[0].offset;
    b.records.extend(later.records);
    b.next_offsets.extend(later.next_offsets);
    store.apply_batch(TOPIC, &b).unwrap();
    let mut decision = log.batch(&[unpark("u1", a, Skip, first)]);
    let read_only = store.prepare(TOPIC, &decision).unwrap();
    assert!(read_only.follow_ups().is_empty() && read_only.dead_letters().is_empty());
    store.commit(read_only).unwrap();
    assert_eq!(
        balance(&store, a),
        70,
        "the transfer was released and debited"
    );
    // Read again as an owner, below the stored offset.
    decision.emit_from = decision.next_offsets.keys().map(|&p| (p, 0)).collect();
    let again = store.prepare(TOPIC, &decision).unwrap();
    assert_eq!(again.stats().redelivered, 1);
    assert_eq!(again.dead_letters().len(), 1);
    assert_eq!(again.dead_letters()[0].offset, first);
    let credits: Vec<&Event> = again.follow_ups().iter().collect();
    assert_eq!(credits.len(), 1, "{credits:?}");
    assert!(matches!(credits[0].body, EventBody::TransferCredit { .. }));
    assert_eq!(
        follow_up_cause(credits[0].event_id),
        Some((
            Position {
                partition: b.records[0].partition,
                offset: transfer_at
            },
            FollowUpKind::Credit
        ))
    );
}

#[test]
fn a_rebuild_swaps_in_only_when_every_digest_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), false);
    let mut log = Log::default();
    let events: Vec<Event> = (0..40)
        .map(|i| {
            let a = format!("acc-{}", i % 7);
            if i < 7 {
                ev(&format!("c{i}"), &a, EventBody::OpenAccount)
            } else {
                ev(&format!("c{i}"), &a, dep(i))
            }
        })
        .collect();
    let whole = log.batch(&events);
    // The live store applies in small batches; the rebuild below in one.
    for chunk in whole.records.chunks(6) {
        let mut b = Batch::default();
        for r in chunk {
            b.records.push(r.clone());
            b.next_offsets.insert(r.partition, r.offset + 1);
        }
        store.apply_batch(TOPIC, &b).unwrap();
    }
    let at: BTreeMap<i32, Option<i64>> = (0..PARTITIONS)
        .map(|p| (p, store.stored_offset(TOPIC, p).unwrap()))
        .collect();
    let parts: Vec<i32> = (0..PARTITIONS).collect();

    // A rebuild that missed one event disagrees: nothing changes.
    let view = store.rebuild_view(TOPIC, &parts).unwrap();
    let mut short = whole.clone();
    let dropped = short.records.remove(10);
    view.store().apply_batch(TOPIC, &short).unwrap();
    match store.swap_in(&view, &at) {
        Err(SwapError::Mismatch { partition, .. }) => assert_eq!(partition, dropped.partition),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    store.discard(view).unwrap();
    assert_eq!(balance(&store, "acc-3"), 10 + 17 + 24 + 31 + 38);

    // A faithful one agrees and becomes the live store, durably.
    let view = store.rebuild_view(TOPIC, &parts).unwrap();
    view.store().apply_batch(TOPIC, &whole).unwrap();
    let retired = store.swap_in(&view, &at).unwrap();
    store.drop_retired(retired).unwrap();
    let before: Vec<u128> = parts
        .iter()
        .map(|&p| store.digest(TOPIC, p).unwrap())
        .collect();
    // Writes go to the new trees from now on.
    store
        .apply_batch(TOPIC, &log.batch(&[ev("late", "acc-3", dep(1000))]))
        .unwrap();
    assert_eq!(balance(&store, "acc-3"), 10 + 17 + 24 + 31 + 38 + 1000);
    drop(view);
    drop(store);
    let store = open_with(dir.path(), false);
    assert_eq!(balance(&store, "acc-3"), 10 + 17 + 24 + 31 + 38 + 1000);
    assert_ne!(
        before,
        parts
            .iter()
            .map(|&p| store.digest(TOPIC, p).unwrap())
            .collect::<Vec<_>>()
    );
    digests_hold(&store);
}

#[test]
fn a_batch_decided_before_a_swap_is_refused_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), false);
    let mut log = Log::default();
    let first = log.batch(&[ev("o", "acc-1", EventBody::OpenAccount)]);
    store.apply_batch(TOPIC, &first).unwrap();
    let p = first.records[0].partition;
    let at: BTreeMap<i32, Option<i64>> = [(p, store.stored_offset(TOPIC, p).unwrap())].into();
    let view = store.rebuild_view(TOPIC, &[p]).unwrap();
    view.store().apply_batch(TOPIC, &first).unwrap();
    let late = store
        .prepare(TOPIC, &log.batch(&[ev("d", "acc-1", dep(5))]))
        .unwrap();
    let _retired = store.swap_in(&view, &at).unwrap();
    assert!(matches!(store.commit(late), Err(StoreError::Swapped(_))));
    assert_eq!(balance(&store, "acc-1"), 0);
}

/// A step of a log with parked accounts: an event, an event this version may not read
/// (for account `n`), or an operator's decision for the account's `pick`-th unreadable
/// event so far.
#[derive(Clone, Debug)]
enum Step {
    Event(Event),
    Unreadable(u8),
    Decide(u8, bool, usize),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..4, 0u16..40, prop_oneof![Just(EventBody::OpenAccount), (1u64..500).prop_map(dep), (1u64..500).prop_map(wd)])
            .prop_map(|(a, c, body)| Step::Event(ev(&format!("c{c}"), &format!("acc-{a}"), body))),
        1 => (0u8..4).prop_map(Step::Unreadable),
        1 => (0u8..4, any::<bool>(), 0usize..3).prop_map(|(a, skip, pick)| Step::Decide(a, skip, pick)),
    ]
}

/// Each step as a one-item batch, in log order.
fn step_batches(steps: &[Step]) -> Vec<Batch> {
    let mut log = Log::default();
    let mut unreadable_at: BTreeMap<u8, Vec<i64>> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let b = match step {
            Step::Event(e) => log.batch(std::slice::from_ref(e)),
            Step::Unreadable(a) => {
                let mut b = Batch::default();
                let account = format!("acc-{a}");
                log.unreadable(
                    &mut b,
                    &account,
                    &format!("{account}|f{i}|future:{}", i + 1),
                );
                unreadable_at
                    .entry(*a)
                    .or_default()
                    .push(b.unreadable[0].offset);
                b
            }
            Step::Decide(a, skip, pick) => {
                let seen = unreadable_at.get(a).cloned().unwrap_or_default();
                let first = seen.get(*pick % seen.len().max(1)).copied().unwrap_or(0);
                let action = if *skip {
                    ledger_domain::UnparkKind::Skip
                } else {
                    ledger_domain::UnparkKind::Retry
                };
                log.batch(&[unpark(&format!("u{i}"), &format!("acc-{a}"), action, first)])
            }
        };
        out.push(b);
    }
    out
}

fn merged(batches: &[Batch]) -> Batch {
    let mut into = Batch::default();
    for b in batches {
        into.records.extend(b.records.iter().cloned());
        into.unreadable.extend(b.unreadable.iter().cloned());
        for (&p, &n) in &b.next_offsets {
            let e = into.next_offsets.entry(p).or_insert(n);
            *e = (*e).max(n);
        }
    }
    into
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Parking, retries and skips leave the same digest whatever the batching and
    /// whether the store may write to the log: an owner applying in small batches and a
    /// read-only reader applying everything at once agree, and each digest is its scan.
    #[test]
    fn parked_accounts_keep_the_digest_independent_of_batching_and_emitting(
        steps in proptest::collection::vec(arb_step(), 1..60),
        cuts in proptest::collection::vec(1usize..10, 1..8),
        knows_future in any::<bool>(),
    ) {
        let singles = step_batches(&steps);
        let (owner_dir, reader_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let owner = open_with(owner_dir.path(), knows_future);
        let reader = open_with(reader_dir.path(), knows_future);
        let mut start = 0;
        let mut i = 0;
        while start < singles.len() {
            let end = (start + cuts[i % cuts.len()]).min(singles.len());
            let mut b = merged(&singles[start..end]);
            b.emit_from = b.next_offsets.keys().map(|&p| (p, 0)).collect();
            owner.apply_batch(TOPIC, &b).unwrap();
            start = end;
            i += 1;
        }
        reader.apply_batch(TOPIC, &merged(&singles)).unwrap();
        for p in 0..PARTITIONS {
            let d = owner.digest(TOPIC, p).unwrap();
            prop_assert_eq!(d, owner.digest_by_scan(TOPIC, p).unwrap());
            prop_assert_eq!(d, reader.digest(TOPIC, p).unwrap(), "partition {}", p);
        }
        let all: Vec<i32> = (0..PARTITIONS).collect();
        prop_assert_eq!(owner.parked_in(TOPIC, &all).unwrap(), reader.parked_in(TOPIC, &all).unwrap());
    }
}

const MINUTE: i64 = 60_000;

fn windowed(dir: &std::path::Path) -> Store {
    let window = ledger_domain::IdempotencyWindow::new(std::time::Duration::from_secs(60)).unwrap();
    let store = open(dir).with_window(Some(window));
    store.check_window().unwrap();
    store
}

fn at_time(mut e: Event, ms: i64) -> Event {
    e.time_ms = ms;
    e
}

/// How many outcome records a partition holds, as a scan finds them.
fn outcomes(store: &Store, ids: &[&str]) -> usize {
    ids.iter()
        .map(|c| store.commands(TOPIC, &cmd(c)).unwrap().len())
        .sum()
}

#[test]
fn a_retry_within_the_window_is_a_duplicate_and_one_beyond_it_applies_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = windowed(dir.path());
    let mut log = Log::default();
    let open_it = at_time(ev("o", "acc-1", EventBody::OpenAccount), 0);
    let first = at_time(ev("d", "acc-1", dep(10)), 1_000);
    store
        .apply_batch(TOPIC, &log.batch(&[open_it, first.clone()]))
        .unwrap();
    // 59 s later: still a duplicate.
    let stats = store
        .apply_batch(TOPIC, &log.batch(&[at_time(first.clone(), 60_999)]))
        .unwrap();
    assert_eq!(stats.duplicates, 1);
    assert_eq!(balance(&store, "acc-1"), 10);
    // A later event moves the watermark a window past the deposit's: its outcome is
    // pruned in that batch, and the same command id is then a new command.
    let later = at_time(ev("o2", "acc-2", EventBody::OpenAccount), 61_000);
    store.apply_batch(TOPIC, &log.batch(&[later])).unwrap();
    let p = partition_of(&acc("acc-1"), PARTITIONS);
    if partition_of(&acc("acc-2"), PARTITIONS) == p {
        assert_eq!(outcomes(&store, &["o", "d"]), 0, "both outcomes expired");
    }
    let stats = store
        .apply_batch(TOPIC, &log.batch(&[at_time(first, 200_000)]))
        .unwrap();
    assert_eq!((stats.applied, stats.duplicates), (1, 0));
    assert_eq!(
        balance(&store, "acc-1"),
        20,
        "beyond the window a retry applies again"
    );
    assert_eq!(store.watermark(TOPIC, p).unwrap(), Some(200_000));
    digests_hold(&store);
}

/// [`funded_transfer`], stored as an owner stores it: the credit it causes.
fn stored_transfer(store: &Store, log: &mut Log) -> Vec<Event> {
    let (t, _) = funded_transfer(store, log);
    let prepared = store.prepare(TOPIC, &t).unwrap();
    let credit = prepared.follow_ups().to_vec();
    store.commit(prepared).unwrap();
    credit
}

#[test]
fn a_pending_transfer_is_kept_until_it_settles_and_then_for_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let store = windowed(dir.path());
    let mut log = Log::default();
    let credit = stored_transfer(&store, &mut log);
    // Ten minutes of other events in the source's partition: the transfer stays pending,
    // and stays.
    let bump = |log: &mut Log, c: &str, ms: i64| log.batch(&[at_time(ev(c, "a", dep(1)), ms)]);
    store
        .apply_batch(TOPIC, &bump(&mut log, "x1", 10 * MINUTE))
        .unwrap();
    let a = acc("a");
    let pending = store.command(TOPIC, &a, &cmd("t-1")).unwrap().unwrap();
    assert_eq!(pending.status, CommandStatus::Pending);
    assert!(
        store.command(TOPIC, &a, &cmd("d")).unwrap().is_none(),
        "expired"
    );
    // The credit applies, its completion settles the transfer, which is kept a window
    // from then.
    let mut c = log.batch(&credit);
    c.emit_from = c.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &c).unwrap();
    let completed = prepared.follow_ups().to_vec();
    store.commit(prepared).unwrap();
    let mut done = log.batch(&completed);
    done.emit_from = done.next_offsets.keys().map(|&p| (p, 0)).collect();
    store.apply_batch(TOPIC, &done).unwrap();
    let settled = store.command(TOPIC, &a, &cmd("t-1")).unwrap().unwrap();
    assert_eq!(settled.status, CommandStatus::Applied);
    assert_eq!(settled.kept_from_ms, 10 * MINUTE);
    store
        .apply_batch(TOPIC, &bump(&mut log, "x2", 11 * MINUTE))
        .unwrap();
    assert!(store.command(TOPIC, &a, &cmd("t-1")).unwrap().is_none());
    assert_eq!((balance(&store, "a"), balance(&store, "b")), (72, 30));
    digests_hold(&store);
}

#[test]
fn a_copy_of_a_follow_up_whose_record_was_pruned_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = windowed(dir.path());
    let mut log = Log::default();
    let credit = stored_transfer(&store, &mut log);
    store.apply_batch(TOPIC, &log.batch(&credit)).unwrap();
    assert_eq!(balance(&store, "b"), 30);
    // An hour of the destination's events prunes the credit's record ...
    let b_later = at_time(ev("ob2", "b", dep(1)), 60 * MINUTE);
    store.apply_batch(TOPIC, &log.batch(&[b_later])).unwrap();
    // ... and the copy a source owner restarted after that hour writes again changes
    // nothing: the floor of the source's partition stands for the record.
    let stats = store.apply_batch(TOPIC, &log.batch(&credit)).unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, 1));
    assert_eq!(balance(&store, "b"), 31);
    digests_hold(&store);
}

#[test]
fn a_store_keeps_the_window_it_was_built_with() {
    let dir = tempfile::tempdir().unwrap();
    drop(windowed(dir.path()));
    let err = open(dir.path())
        .with_window(None)
        .check_window()
        .unwrap_err();
    assert!(matches!(err, StoreError::WindowChanged { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("1m") && text.contains("unbounded"), "{text}");
    windowed(dir.path()); // the same window opens
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With a window of a minute and event time moving in jumps, any split into batches,
    /// with replays that write follow-ups twice, ends in the model's state with the
    /// same window; exactly the live outcomes are stored; and the digest is the one a
    /// store that read the log in one batch holds.
    #[test]
    fn a_window_prunes_the_same_outcomes_however_the_log_is_batched(
        events in proptest::collection::vec(arb_transfer_event(), 1..80),
        steps in proptest::collection::vec(0i64..40_000, 80),
        cuts in proptest::collection::vec(1usize..12, 1..10),
        replay_before_store in proptest::collection::vec(any::<bool>(), 10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = windowed(dir.path());
        let mut now = 0;
        let queue: Vec<Event> = events
            .iter()
            .zip(&steps)
            .map(|(e, step)| {
                now += step;
                at_time(e.clone(), now)
            })
            .collect();
        let mut log = Log::default();
        let written = run_as_owner(&store, &mut log, queue, &cuts, &replay_before_store);
        let model = model_of(&written, store.window());
        matches_model(&store, &model)?;
        for p in 0..PARTITIONS {
            prop_assert_eq!(store.watermark(TOPIC, p).unwrap(), model.watermarks.get(&p).copied());
        }
        for ((account, id), rec) in &model.commands {
            let p = partition_of(account, PARTITIONS);
            let live = rec.is_live(model.window, model.watermarks[&p]);
            let got = store.command(TOPIC, account, id).unwrap();
            prop_assert_eq!(got.is_some(), live, "{} on {}", id, account);
            if let Some(got) = got {
                prop_assert_eq!(got.status, rec.status);
            }
        }
        let other_dir = tempfile::tempdir().unwrap();
        digests_match_one_batch(&store, &windowed(other_dir.path()), &written, &log)?;
    }
}

/// The first account named `prefix` and a number whose partition `fits`.
fn account_where(prefix: &str, fits: impl Fn(i32) -> bool) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|a| fits(partition_of(&acc(a), PARTITIONS)))
        .expect("some account lands in any partition")
}

#[test]
fn a_credit_released_from_a_parked_account_applies_though_the_floor_passed_it() {
    use ledger_domain::UnparkKind::Retry;
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::default();
    let s = "src-0";
    let ps = partition_of(&acc(s), PARTITIONS);
    let d = account_where("dst-", |p| p != ps);
    let pd = partition_of(&acc(&d), PARTITIONS);
    let d2 = account_where("two-", |p| p == pd);
    let window = ledger_domain::IdempotencyWindow::new(std::time::Duration::from_secs(60)).unwrap();
    let with = |knows_future| {
        let store = open_with(dir.path(), knows_future).with_window(Some(window));
        store.check_window().unwrap();
        store
    };
    let store = with(false);
    let setup = [
        ev("os", s, EventBody::OpenAccount),
        ev("od", &d, EventBody::OpenAccount),
        ev("od2", &d2, EventBody::OpenAccount),
        ev("fund", s, dep(100)),
    ];
    store.apply_batch(TOPIC, &log.batch(&setup)).unwrap();
    let mut t = log.batch(&[
        ev("t1", s, transfer(&d, 30)),
        ev("t2", s, transfer(&d2, 20)),
    ]);
    t.emit_from = t.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &t).unwrap();
    let credits = prepared.follow_ups().to_vec();
    store.commit(prepared).unwrap();
    // `d` parks; its credit (the earlier cause) waits, the later one applies to `d2`.
    let mut b = Batch::default();
    log.unreadable(&mut b, &d, &format!("{d}|f1|future:7"));
    store.apply_batch(TOPIC, &b).unwrap();
    let stats = store.apply_batch(TOPIC, &log.batch(&credits)).unwrap();
    assert_eq!((stats.parked, stats.applied), (1, 1));
    // An hour later the applied credit's record is pruned: the floor of the source's
    // partition passes both credits' causes.
    let hour = at_time(ev("late", &d2, dep(1)), 60 * MINUTE);
    store.apply_batch(TOPIC, &log.batch(&[hour])).unwrap();
    drop(store);
    // Released by a version that reads the unreadable event, the waiting credit is
    // not mistaken for a copy, and what it causes carries the released mark.
    let store = with(true);
    let first = store.parked(TOPIC, &acc(&d)).unwrap().unwrap().first_offset;
    let mut r = log.batch(&[at_time(unpark("u", &d, Retry, first), 60 * MINUTE)]);
    r.emit_from = r.next_offsets.keys().map(|&p| (p, 0)).collect();
    let prepared = store.prepare(TOPIC, &r).unwrap();
    let completions = prepared.follow_ups().to_vec();
    store.commit(prepared).unwrap();
    assert_eq!(balance(&store, &d), 7 + 30);
    assert_eq!(completions.len(), 1);
    assert!(ledger_domain::is_released_follow_up(
        completions[0].event_id
    ));
    // The completion settles `t1` at the source.
    store.apply_batch(TOPIC, &log.batch(&completions)).unwrap();
    let t1 = store.command(TOPIC, &acc(s), &cmd("t1")).unwrap().unwrap();
    assert_eq!(t1.status, CommandStatus::Applied);
    digests_hold(&store);
}
