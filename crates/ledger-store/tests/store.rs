//! The store against the domain model: batches, redeliveries, reopening, locking.

use std::collections::BTreeMap;

use ledger_domain::testing::{deposit as dep, event, withdraw as wd};
use ledger_domain::{
    AccountId, Batch, CommandId, CommandStatus, Event, EventBody, Model, Record, Rejection,
};
use ledger_store::{Store, StoreError};
use proptest::prelude::*;

const TOPIC: &str = "ledger.events";
const CACHE: u64 = 8 << 20;

fn ev(cmd: &str, acc: &str, body: EventBody) -> Event {
    event(0, cmd, acc, body)
}

fn batch(partition: i32, first_offset: i64, events: &[Event]) -> Batch {
    let records: Vec<Record> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Record {
            partition,
            offset: first_offset + i as i64,
            event: e.clone(),
        })
        .collect();
    let mut next_offsets = BTreeMap::new();
    next_offsets.insert(partition, first_offset + events.len() as i64);
    Batch {
        records,
        next_offsets,
    }
}

#[test]
fn applies_outcomes_and_offsets_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CACHE).unwrap();
    let events = [
        ev("c1", "acc-1", EventBody::OpenAccount),
        ev("c2", "acc-1", dep(1250)),
        ev("c3", "acc-1", wd(300)),
        ev("c4", "acc-1", wd(5000)),
        ev("c5", "acc-2", dep(5)),
        ev("c2", "acc-1", dep(1250)),
    ];
    let stats = store.apply_batch(TOPIC, &batch(3, 10, &events)).unwrap();
    assert_eq!(stats.applied, 3);
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.rejected.get("insufficient_funds"), Some(&1));
    assert_eq!(stats.rejected.get("account_not_open"), Some(&1));

    let acc = store
        .account(&AccountId::parse("acc-1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((acc.open, acc.balance, acc.applied_events), (true, 950, 3));
    assert_eq!(
        store.account(&AccountId::parse("acc-2").unwrap()).unwrap(),
        None
    );
    let c4 = store
        .command(&CommandId::parse("c4").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        c4.status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!((c4.partition, c4.offset), (3, 13));
    // The duplicate keeps the first outcome and position.
    let c2 = store
        .command(&CommandId::parse("c2").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!((c2.status, c2.offset), (CommandStatus::Applied, 11));
    assert_eq!(store.stored_offset(TOPIC, 3).unwrap(), Some(16));
    assert_eq!(store.stored_offset(TOPIC, 4).unwrap(), None);
    assert_eq!(store.stored_offset("other", 3).unwrap(), None);
}

#[test]
fn redelivered_events_are_skipped_and_offsets_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), CACHE).unwrap();
    let first = [
        ev("a1", "a", EventBody::OpenAccount),
        ev("a2", "a", dep(10)),
    ];
    store.apply_batch(TOPIC, &batch(0, 0, &first)).unwrap();
    // The same offsets again, with different command ids: still skipped by offset.
    let again = [ev("b1", "a", dep(99)), ev("b2", "a", dep(99))];
    let stats = store.apply_batch(TOPIC, &batch(0, 0, &again)).unwrap();
    assert_eq!(stats.redelivered, 2);
    assert_eq!(stats.applied, 0);
    assert_eq!(
        store
            .account(&AccountId::parse("a").unwrap())
            .unwrap()
            .unwrap()
            .balance,
        10
    );
    assert_eq!(store.stored_offset(TOPIC, 0).unwrap(), Some(2));
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), CACHE).unwrap();
        let events = [
            ev("c1", "x", EventBody::OpenAccount),
            ev("c2", "x", dep(42)),
        ];
        store.apply_batch(TOPIC, &batch(1, 0, &events)).unwrap();
    }
    let store = Store::open(dir.path(), CACHE).unwrap();
    assert_eq!(
        store
            .account(&AccountId::parse("x").unwrap())
            .unwrap()
            .unwrap()
            .balance,
        42
    );
    assert_eq!(
        store.offsets(TOPIC).unwrap(),
        [(1, 2)].into_iter().collect()
    );
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
    (0u8..5, 0u16..60, body)
        .prop_map(|(a, c, body)| ev(&format!("c{c}"), &format!("acc-{a}"), body))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any split into batches, with any batch delivered twice, ends in the model's state.
    #[test]
    fn batches_with_redelivery_match_the_model(
        events in proptest::collection::vec(arb_event(), 1..120),
        cuts in proptest::collection::vec(1usize..20, 1..20),
        redeliver in proptest::collection::vec(any::<bool>(), 20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), CACHE).unwrap();
        let mut model = Model::new();
        for e in &events {
            model.apply(e);
        }
        let mut start = 0usize;
        let mut i = 0usize;
        while start < events.len() {
            let end = (start + cuts[i % cuts.len()]).min(events.len());
            let b = batch(0, start as i64, &events[start..end]);
            store.apply_batch(TOPIC, &b).unwrap();
            if redeliver[i % redeliver.len()] {
                let stats = store.apply_batch(TOPIC, &b).unwrap();
                prop_assert_eq!(stats.redelivered as usize, end - start);
            }
            start = end;
            i += 1;
        }
        let stored: BTreeMap<_, _> = store.accounts().map(|r| r.unwrap()).collect();
        prop_assert_eq!(&stored, &model.accounts);
        for (id, rec) in &model.commands {
            let got = store.command(id).unwrap().unwrap();
            prop_assert_eq!(got.status, rec.status);
            prop_assert_eq!(&got.account_id, &rec.account_id);
        }
        prop_assert_eq!(store.stored_offset(TOPIC, 0).unwrap(), Some(events.len() as i64));
    }
}
