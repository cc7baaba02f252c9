//! Unit tests of `model`.

use super::*;
use crate::event::EventBody;
use crate::ids::Amount;
use crate::testing::{event, transfer};
use proptest::prelude::*;

fn at(offset: i64) -> Position {
    Position {
        partition: 0,
        offset,
    }
}

/// Applies events at offsets 0, 1, … of partition 0.
fn apply_all(m: &mut Model, events: &[Event]) -> Vec<ApplyResult> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| m.apply(e, at(i as i64)).result)
        .collect()
}

fn acc(s: &str) -> AccountId {
    AccountId::parse(s).unwrap()
}

#[test]
fn repeated_command_id_is_a_duplicate_and_keeps_the_first_outcome() {
    let mut m = Model::new();
    let wd = EventBody::Withdraw {
        amount: Amount::new(5).unwrap(),
    };
    let dep = EventBody::Deposit {
        amount: Amount::new(50).unwrap(),
    };
    let results = apply_all(
        &mut m,
        &[
            event(1, "c1", "a", EventBody::OpenAccount),
            event(2, "c2", "a", wd.clone()),
            event(3, "c3", "a", dep),
            // The retried withdrawal would now succeed, but its command id was decided.
            event(4, "c2", "a", wd),
        ],
    );
    assert_eq!(
        results,
        vec![
            ApplyResult::Applied,
            ApplyResult::Rejected(Rejection::InsufficientFunds),
            ApplyResult::Applied,
            ApplyResult::Duplicate
        ]
    );
    assert_eq!(m.accounts[&acc("a")].balance, 50);
    let c2 = &m.commands[&(acc("a"), CommandId::parse("c2").unwrap())];
    assert_eq!(
        c2.status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!(c2.offset, 1);
}

#[test]
fn a_command_id_is_scoped_to_its_account() {
    let mut m = Model::new();
    let results = apply_all(
        &mut m,
        &[
            event(1, "x", "a", EventBody::OpenAccount),
            event(2, "x", "b", EventBody::OpenAccount),
            event(3, "x", "b", EventBody::OpenAccount),
        ],
    );
    assert_eq!(
        results,
        vec![
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Duplicate
        ]
    );
    assert_eq!(m.accounts.len(), 2);
    assert_eq!(m.commands.len(), 2);
}

/// Applies `e` at `pos`, then its follow-ups one after another at the next offsets
/// of partition 9, as if the log delivered them at once.
fn apply_through(m: &mut Model, e: &Event, pos: Position, next: &mut i64) -> ApplyResult {
    let first = m.apply(e, pos);
    let mut queue = first.follow_ups;
    while let Some(f) = queue.pop() {
        *next += 1;
        queue.extend(
            m.apply(
                &f,
                Position {
                    partition: 9,
                    offset: *next,
                },
            )
            .follow_ups,
        );
    }
    first.result
}

/// `a` and `b` open at offsets 0 and 1, and 100 deposited into `a` at 2.
fn a_funded_and_b_open() -> Model {
    let mut m = Model::new();
    apply_all(
        &mut m,
        &[
            event(1, "o1", "a", EventBody::OpenAccount),
            event(2, "o2", "b", EventBody::OpenAccount),
            event(3, "d", "a", crate::testing::deposit(100)),
        ],
    );
    m
}

#[test]
fn a_transfer_debits_then_credits_then_completes() {
    let mut m = a_funded_and_b_open();
    let t = event(4, "t-1", "a", transfer("b", 30));
    let debit = m.apply(&t, at(3));
    assert_eq!(debit.result, ApplyResult::Applied);
    assert_eq!(m.accounts[&acc("a")].balance, 70);
    assert_eq!(m.totals.pending(), 30);
    assert!(m.totals.conserved());
    let key = (acc("a"), CommandId::parse("t-1").unwrap());
    assert_eq!(m.commands[&key].status, CommandStatus::Pending);
    let [credit] = &debit.follow_ups[..] else {
        panic!("one credit, got {:?}", debit.follow_ups)
    };
    assert_eq!(credit.account_id, acc("b"));
    assert_eq!(credit.command_id.as_str(), "t-1");
    assert_eq!(
        follow_up_cause(credit.event_id),
        Some((at(3), FollowUpKind::Credit))
    );
    // The credit lands in b's partition, and is applied once however often it comes.
    let credit_at = Position {
        partition: 4,
        offset: 17,
    };
    let credited = m.apply(credit, credit_at);
    assert_eq!(credited.result, ApplyResult::Applied);
    let again = m.apply(
        credit,
        Position {
            partition: 4,
            offset: 18,
        },
    );
    assert_eq!(again.result, ApplyResult::Duplicate);
    assert!(again.follow_ups.is_empty());
    assert_eq!(m.accounts[&acc("b")].balance, 30);
    assert_eq!(m.totals.pending(), 0);
    assert!(m.totals.conserved());
    let [done] = &credited.follow_ups[..] else {
        panic!("one completion")
    };
    assert_eq!(done.account_id, acc("a"));
    assert_eq!(m.apply(done, at(4)).result, ApplyResult::Applied);
    let record = &m.commands[&key];
    assert_eq!(record.status, CommandStatus::Applied);
    assert_eq!(record.offset, 3, "the debit decided the command");
    assert_eq!(
        record.transfer.as_ref().unwrap().settled_at,
        Some(credit_at),
        "a completed transfer names where its credit landed"
    );
    assert_eq!(m.apply(done, at(5)).result, ApplyResult::Duplicate);
}

#[test]
fn a_transfer_to_an_account_never_opened_is_refunded() {
    let mut m = Model::new();
    apply_all(
        &mut m,
        &[
            event(1, "o1", "a", EventBody::OpenAccount),
            event(3, "d", "a", crate::testing::deposit(100)),
        ],
    );
    let mut next = 100;
    let t = event(4, "t-1", "a", transfer("ghost", 30));
    assert_eq!(
        apply_through(&mut m, &t, at(2), &mut next),
        ApplyResult::Applied
    );
    assert_eq!(m.accounts[&acc("a")].balance, 100);
    assert!(!m.accounts.contains_key(&acc("ghost")));
    let record = &m.commands[&(acc("a"), CommandId::parse("t-1").unwrap())];
    assert_eq!(
        record.status,
        CommandStatus::Refunded(Rejection::DestinationNotOpen)
    );
    assert_eq!(record.status.reason(), Some("destination_not_open"));
    assert_eq!(m.totals.refunded, 30);
    assert_eq!(m.totals.pending(), 0);
    assert!(m.totals.conserved());
}

#[test]
fn a_transfer_without_the_funds_is_rejected_and_causes_nothing() {
    let mut m = Model::new();
    apply_all(&mut m, &[event(1, "o1", "a", EventBody::OpenAccount)]);
    let t = event(4, "t-1", "a", transfer("b", 30));
    let r = m.apply(&t, at(1));
    assert_eq!(
        r.result,
        ApplyResult::Rejected(Rejection::InsufficientFunds)
    );
    assert!(r.follow_ups.is_empty());
    assert!(recorded_follow_ups(&mut m, &t, at(1)).unwrap().is_empty());
}

#[test]
fn recorded_follow_ups_are_the_ones_emitted_and_only_for_the_deciding_copy() {
    let mut m = a_funded_and_b_open();
    let t = event(4, "t-1", "a", transfer("b", 30));
    let debit = m.apply(&t, at(3));
    assert_eq!(
        recorded_follow_ups(&mut m, &t, at(3)).unwrap(),
        debit.follow_ups
    );
    // A retry of the command later in the log was a duplicate: it caused nothing.
    assert_eq!(m.apply(&t, at(4)).result, ApplyResult::Duplicate);
    assert!(recorded_follow_ups(&mut m, &t, at(4)).unwrap().is_empty());
    let credit = &debit.follow_ups[0];
    let pos = Position {
        partition: 1,
        offset: 5,
    };
    let credited = m.apply(credit, pos);
    assert_eq!(
        recorded_follow_ups(&mut m, credit, pos).unwrap(),
        credited.follow_ups
    );
}

#[test]
fn follow_ups_that_match_no_pending_transfer_change_nothing() {
    let mut m = Model::new();
    apply_all(&mut m, &[event(1, "o1", "a", EventBody::OpenAccount)]);
    let forged = Event {
        event_id: follow_up_id(at(77), FollowUpKind::Refund),
        ..event(
            0,
            "t-9",
            "a",
            EventBody::TransferRefund {
                to: acc("b"),
                amount: Amount::new(5).unwrap(),
                reason: Rejection::DestinationNotOpen,
            },
        )
    };
    assert_eq!(
        m.apply(&forged, at(1)).result,
        ApplyResult::Rejected(Rejection::UnknownTransfer)
    );
    assert_eq!(m.accounts[&acc("a")].balance, 0);
    assert!(m.totals.conserved());
    assert_eq!(m.totals.pending(), 0);
}

fn arb_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        Just(EventBody::OpenAccount),
        (1u64..=2_000).prop_map(|a| EventBody::Deposit {
            amount: Amount::new(a).unwrap()
        }),
        (1u64..=2_000).prop_map(|a| EventBody::Withdraw {
            amount: Amount::new(a).unwrap()
        }),
        Just(EventBody::Deposit {
            amount: Amount::new(crate::MAX_AMOUNT).unwrap()
        }),
        // Transfers among the accounts, and to two that may never open.
        (0u8..6, 1u64..=2_000).prop_map(|(to, a)| transfer(&format!("acc-{to}"), a)),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    // Few accounts and few command ids, so that collisions and repeats are common.
    (0u8..4, 0u16..40, arb_body()).prop_map(|(acc, cmd, body)| {
        let account = format!("acc-{acc}");
        let body = match body {
            EventBody::Transfer { to, amount } if to.as_str() == account => {
                EventBody::Deposit { amount }
            }
            other => other,
        };
        event(u128::from(cmd), &format!("c{cmd}"), &account, body)
    })
}

/// Runs the events through a simulated log: each step applies either the next
/// command's event or a waiting follow-up (picked by `picks`), and sometimes delivers
/// a follow-up a second time, as a projector that crashed after emitting would.
/// Checks conservation after every step; returns the model once everything settled.
fn run_log(
    events: &[Event],
    picks: &[(bool, proptest::sample::Index, bool)],
) -> Result<Model, TestCaseError> {
    let mut m = Model::new();
    let mut waiting: Vec<Event> = Vec::new();
    let mut delivered: Vec<Event> = Vec::new();
    let mut offset = 0i64;
    let mut next_event = events.iter();
    let mut picks = picks.iter().cycle();
    let mut step = |m: &mut Model, e: Event, waiting: &mut Vec<Event>| {
        offset += 1;
        let r = m.apply(
            &e,
            Position {
                partition: 0,
                offset,
            },
        );
        waiting.extend(r.follow_ups);
        r.result
    };
    loop {
        let &(take_follow_up, which, duplicate) = picks
            .next()
            .expect("picks is never empty, so its cycle never ends");
        if duplicate && !delivered.is_empty() {
            // A second copy of a follow-up, as a projector that crashed after
            // emitting writes: it changes nothing.
            let copy = which.get(&delivered).clone();
            prop_assert_eq!(step(&mut m, copy, &mut waiting), ApplyResult::Duplicate);
        }
        let e = if take_follow_up && !waiting.is_empty() {
            let i = which.index(waiting.len());
            waiting.swap_remove(i)
        } else if let Some(e) = next_event.next() {
            e.clone()
        } else if let Some(e) = waiting.pop() {
            e
        } else {
            break;
        };
        if e.body.is_follow_up() {
            delivered.push(e.clone());
        }
        step(&mut m, e, &mut waiting);
        prop_assert!(m.totals.conserved(), "{:?}", m.totals);
        prop_assert!(m.totals.pending() >= 0, "{:?}", m.totals);
        for s in m.accounts.values() {
            prop_assert!(s.balance >= 0);
        }
    }
    Ok(m)
}

proptest! {
    #[test]
    fn balances_are_never_negative(events in proptest::collection::vec(arb_event(), 0..200)) {
        let mut m = Model::new();
        for (i, e) in events.iter().enumerate() {
            m.apply(e, at(i as i64));
            for s in m.accounts.values() {
                prop_assert!(s.balance >= 0);
            }
        }
    }

    #[test]
    fn replay_from_empty_is_deterministic(events in proptest::collection::vec(arb_event(), 0..200)) {
        let mut a = Model::new();
        let mut b = Model::new();
        let ra = apply_all(&mut a, &events);
        let rb = apply_all(&mut b, &events);
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn redelivering_any_event_changes_nothing(
        events in proptest::collection::vec(arb_event(), 1..200),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 1..20),
    ) {
        let mut m = Model::new();
        let mut follow_ups = Vec::new();
        for (i, e) in events.iter().enumerate() {
            follow_ups.extend(m.apply(e, at(i as i64)).follow_ups);
        }
        for (i, f) in follow_ups.iter().enumerate() {
            m.apply(f, Position { partition: 1, offset: i as i64 });
        }
        let before = m.clone();
        for p in &picks {
            let r = m.apply(p.get(&events), at(10_000));
            prop_assert_eq!(r.result, ApplyResult::Duplicate);
            prop_assert!(r.follow_ups.is_empty());
        }
        if !follow_ups.is_empty() {
            for p in &picks {
                let r = m.apply(p.get(&follow_ups), at(20_000));
                prop_assert_eq!(r.result, ApplyResult::Duplicate);
            }
        }
        prop_assert_eq!(m, before);
    }

    #[test]
    fn transfers_conserve_money_through_any_interleaving_and_redelivery(
        events in proptest::collection::vec(arb_event(), 0..150),
        picks in proptest::collection::vec((any::<bool>(), any::<proptest::sample::Index>(), proptest::bool::weighted(0.15)), 1..60),
    ) {
        let m = run_log(&events, &picks)?;
        // Once every follow-up has been delivered, nothing is in flight and every
        // transfer has settled: applied, refunded or rejected.
        prop_assert_eq!(m.totals.pending(), 0);
        prop_assert!(m.totals.conserved());
        let balances: i128 = m.accounts.values().map(|s| i128::from(s.balance)).sum();
        prop_assert_eq!(balances, m.totals.balance_sum);
        for r in m.commands.values() {
            prop_assert!(r.status.is_final(), "{:?}", r);
            if let Some(t) = &r.transfer {
                prop_assert_eq!(t.settled_at.is_some(), r.status.reason() != Some("insufficient_funds") && !matches!(r.status, CommandStatus::Rejected(_)));
            }
        }
        let refunded: u128 = m.commands.values().filter(|r| matches!(r.status, CommandStatus::Refunded(_))).map(|r| u128::from(r.transfer.as_ref().map_or(0, |t| t.amount.minor_units()))).sum();
        prop_assert_eq!(refunded, m.totals.refunded);
    }

    #[test]
    fn redelivered_follow_ups_do_not_change_the_outcome(
        events in proptest::collection::vec(arb_event(), 0..150),
        picks in proptest::collection::vec((any::<bool>(), any::<proptest::sample::Index>(), proptest::bool::weighted(0.2)), 1..60),
    ) {
        // The same interleaving without the second copies ends in the same state.
        let once: Vec<_> = picks.iter().map(|&(f, i, _)| (f, i, false)).collect();
        let a = run_log(&events, &picks)?;
        let b = run_log(&events, &once)?;
        prop_assert_eq!(a.accounts, b.accounts);
        prop_assert_eq!(a.totals, b.totals);
    }
}

#[test]
fn a_command_id_is_a_duplicate_within_the_window_and_new_beyond_it() {
    let window = IdempotencyWindow::new(std::time::Duration::from_secs(3600)).unwrap();
    let mut m = Model::with_window(Some(window));
    let dep = |t: i64| {
        let mut e = event(1, "d", "a", crate::testing::deposit(5));
        e.time_ms = t;
        e
    };
    let open = event(0, "o", "a", EventBody::OpenAccount);
    let results = apply_all(
        &mut m,
        &[open, dep(0), dep(3_599_999), dep(3_600_000), dep(3_600_001)],
    );
    assert_eq!(
        results,
        [
            ApplyResult::Applied,
            ApplyResult::Applied,
            ApplyResult::Duplicate,
            ApplyResult::Applied,
            ApplyResult::Duplicate,
        ],
        "the first is kept from watermark 0, the third from 3,600,000"
    );
    assert_eq!(m.accounts[&acc("a")].balance, 10);
    // A late event does not move the watermark back.
    m.apply(&dep(5), at(9));
    assert_eq!(m.watermarks[&0], 3_600_001);
}

#[test]
fn a_pending_transfer_never_expires() {
    let window = IdempotencyWindow::new(std::time::Duration::from_secs(60)).unwrap();
    let r = CommandRecord {
        status: CommandStatus::Pending,
        account_id: acc("a"),
        offset: 0,
        time_ms: 0,
        transfer: None,
        kept_from_ms: 0,
    };
    assert!(r.is_live(Some(window), i64::MAX));
    let settled = CommandRecord {
        status: CommandStatus::Applied,
        ..r
    };
    assert!(!settled.is_live(Some(window), 60_000));
    assert!(settled.is_live(None, i64::MAX));
}
