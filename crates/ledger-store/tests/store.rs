//! The store against the domain model: batches over several partitions applied in
//! parallel, redeliveries, reopening, locking, the layout and partition-count guards.

use std::collections::BTreeMap;

use ledger_domain::partitioning::partition_of;
use ledger_domain::testing::{deposit as dep, event, withdraw as wd};
use ledger_domain::{
    AccountId, Batch, CommandId, CommandStatus, Event, EventBody, Model, Record, Rejection,
};
use ledger_store::{Store, StoreError};
use proptest::prelude::*;

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
        records: vec![],
        next_offsets: [(p, 1)].into_iter().collect(),
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

#[test]
fn a_store_of_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"layout", &9u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), CACHE)
        .err()
        .expect("layout 9 must be refused");
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any split into batches, with any batch delivered twice, on any number of
    /// workers, ends in the model's state.
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
        for e in &events {
            model.apply(e);
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
