//! Unit tests of `verify`.

use super::*;
use ledger_api::{LogPosition, PartitionTotals, TransferView};

fn placed(partition: i32, offset: i64, id: &str, account: &str, kind: CommandKind) -> Placed {
    Placed {
        partition,
        offset,
        command: Command {
            account_id: AccountId::parse(account).unwrap(),
            command_id: Some(CommandId::parse(id).unwrap()),
            kind,
        },
    }
}
fn dep(n: u64) -> CommandKind {
    CommandKind::Deposit(Amount::new(n).unwrap())
}
fn wd(n: u64) -> CommandKind {
    CommandKind::Withdraw(Amount::new(n).unwrap())
}
fn acc(s: &str) -> AccountId {
    AccountId::parse(s).unwrap()
}
/// The key of command `id` on account `a`.
fn cmd(a: &str, id: &str) -> (AccountId, CommandId) {
    (acc(a), CommandId::parse(id).unwrap())
}

#[test]
fn commands_apply_in_offset_order_not_in_the_order_they_were_accepted() {
    // Accepted (answered) in the order withdraw, deposit, open; logged the other way.
    let events = [
        placed(0, 12, "w", "a", wd(30)),
        placed(0, 11, "d", "a", dep(50)),
        placed(0, 10, "o", "a", CommandKind::OpenAccount),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(
        o.model.accounts[&acc("a")],
        AccountState {
            open: true,
            balance: 20,
            applied_events: 3
        }
    );
    assert_eq!(
        o.model.commands[&cmd("a", "w")].status,
        CommandStatus::Applied
    );
}

#[test]
fn order_within_a_partition_decides_outcomes() {
    let events = [
        placed(1, 0, "o", "a", CommandKind::OpenAccount),
        placed(1, 1, "w", "a", wd(30)),
        placed(1, 2, "d", "a", dep(50)),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 50);
    assert_eq!(
        o.model.commands[&cmd("a", "w")].status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
}

#[test]
fn partitions_are_independent() {
    // Offsets of different partitions are unrelated numbers.
    let events = [
        placed(2, 0, "ob", "b", CommandKind::OpenAccount),
        placed(0, 5, "oa", "a", CommandKind::OpenAccount),
        placed(2, 1, "db", "b", dep(7)),
        placed(0, 6, "da", "a", dep(9)),
        placed(0, 7, "x", "never", dep(9)),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 9);
    assert_eq!(o.model.accounts[&acc("b")].balance, 7);
    assert!(!o.model.accounts.contains_key(&acc("never")));
    assert_eq!(
        o.model.commands[&cmd("never", "x")].status,
        CommandStatus::Rejected(Rejection::AccountNotOpen)
    );
}

#[test]
fn a_command_id_seen_twice_is_decided_by_its_first_position() {
    // A retried withdrawal: its first copy (offset 1) found the account short; by its
    // second copy (offset 3) the deposit had arrived, but the first outcome stands.
    let events = [
        placed(0, 3, "w", "a", wd(30)),
        placed(0, 2, "d", "a", dep(50)),
        placed(0, 1, "w", "a", wd(30)),
        placed(0, 0, "o", "a", CommandKind::OpenAccount),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 50);
    assert_eq!(o.model.accounts[&acc("a")].applied_events, 2);
    assert_eq!(
        o.model.commands[&cmd("a", "w")].status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!(o.first_position[&cmd("a", "w")], (0, 1));
    assert_eq!(o.first_position[&cmd("a", "d")], (0, 2));
}

#[test]
fn the_same_event_known_twice_changes_nothing() {
    let events = [
        placed(0, 0, "o", "a", CommandKind::OpenAccount),
        placed(0, 1, "d", "a", dep(5)),
        placed(0, 1, "d", "a", dep(5)),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 5);
    assert_eq!(o.model.commands.len(), 2);
}

#[test]
fn a_duplicate_open_is_rejected_and_keeps_the_balance() {
    let events = [
        placed(0, 0, "o1", "a", CommandKind::OpenAccount),
        placed(0, 1, "d", "a", dep(5)),
        placed(0, 2, "o2", "a", CommandKind::OpenAccount),
    ];
    let o = build_model(&events, &[]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 5);
    assert_eq!(
        o.model.commands[&cmd("a", "o2")].status,
        CommandStatus::Rejected(Rejection::AccountAlreadyOpen)
    );
}

fn tr(to: &str, n: u64) -> CommandKind {
    CommandKind::Transfer {
        to: acc(to),
        amount: Amount::new(n).unwrap(),
    }
}
fn pos(partition: i32, offset: i64) -> Position {
    Position { partition, offset }
}
fn credited(account: &str, id: &str, at: Position) -> Settlement {
    Settlement {
        account: acc(account),
        command_id: CommandId::parse(id).unwrap(),
        settled: Settled::Credited(at),
    }
}
fn refunded(account: &str, id: &str, at: Position) -> Settlement {
    Settlement {
        account: acc(account),
        command_id: CommandId::parse(id).unwrap(),
        settled: Settled::Refunded(at, Rejection::DestinationNotOpen),
    }
}
/// The projector's answer for a command, as it would give it from the same record.
fn view_of(o: &Oracle, account: &str, id: &str) -> CommandView {
    let key = cmd(account, id);
    let r = &o.model.commands[&key];
    let (partition, offset) = o.first_position[&key];
    CommandView {
        command_id: key.1.clone(),
        status: r.status.into(),
        reason: r.status.reason().map(str::to_string),
        account_id: key.0.clone(),
        partition,
        offset,
        transfer: r.transfer.as_ref().map(|t| TransferView {
            to_account: t.to.clone(),
            amount: t.amount,
            settled_at: t.settled_at.map(|p| LogPosition {
                partition: p.partition,
                offset: p.offset,
            }),
            settled_token: t.settled_at.map(|p| p.token()),
        }),
    }
}
fn account_view(o: &Oracle, account: &str) -> AccountView {
    let s = o.model.accounts[&acc(account)];
    AccountView {
        account_id: acc(account),
        open: s.open,
        balance: s.balance,
        applied_events: s.applied_events,
        parked: false,
    }
}

/// a (partition 0) and b (partition 1) open; a holds 100 and sends b 30 at 0/2.
fn transfer_to_b() -> Vec<Placed> {
    vec![
        placed(0, 0, "oa", "a", CommandKind::OpenAccount),
        placed(1, 0, "ob", "b", CommandKind::OpenAccount),
        placed(0, 1, "da", "a", dep(100)),
        placed(0, 2, "t", "a", tr("b", 30)),
    ]
}

#[test]
fn an_applied_transfer_is_credited_where_the_projector_says() {
    let mut events = transfer_to_b();
    // b spends the credit: too early before it lands at 1/2, in time after it.
    events.push(placed(1, 1, "w1", "b", wd(20)));
    events.push(placed(1, 3, "w2", "b", wd(20)));
    let o = build_model(&events, &[credited("a", "t", pos(1, 2))]);
    assert_eq!(o.model.accounts[&acc("a")].balance, 70);
    assert_eq!(
        o.model.accounts[&acc("b")],
        AccountState {
            open: true,
            balance: 10,
            applied_events: 3
        }
    );
    assert_eq!(
        o.model.commands[&cmd("b", "w1")].status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!(
        o.model.commands[&cmd("b", "w2")].status,
        CommandStatus::Applied
    );
    let t = &o.model.commands[&cmd("a", "t")];
    assert_eq!(t.status, CommandStatus::Applied);
    assert_eq!(t.offset, 2, "the debit decided it");
    assert_eq!(t.transfer.as_ref().unwrap().settled_at, Some(pos(1, 2)));
    assert_eq!(o.model.totals.pending(), 0);
    assert!(o.model.totals.conserved());
    // The projector's own answers agree with it.
    let v = view_of(&o, "a", "t");
    assert_eq!(
        Settlement::reported(&v),
        Some(credited("a", "t", pos(1, 2)))
    );
    assert_eq!(
        compare_command(&o, &acc("a"), &CommandId::parse("t").unwrap(), Some(&v)),
        (None, 0)
    );
}

#[test]
fn a_settlement_reported_in_another_partition_is_a_mismatch() {
    let events = transfer_to_b();
    let right = [credited("a", "t", pos(1, 2))];
    let o = build_model(&events, &right);
    assert!(settled_elsewhere(&o, &right).is_empty());
    // A credit is in b's partition (1), never a's (0); a refund in a's, never b's.
    for wrong in [credited("a", "t", pos(0, 7)), refunded("a", "t", pos(1, 7))] {
        let o = build_model(&events, std::slice::from_ref(&wrong));
        let found = settled_elsewhere(&o, std::slice::from_ref(&wrong));
        assert_eq!(found.len(), 1, "{wrong:?}");
        assert!(found[0].actual.contains("partition"), "{:?}", found[0]);
    }
}

#[test]
fn a_refunded_transfer_gives_the_amount_back_where_the_refund_lands() {
    let events = [
        placed(0, 0, "oa", "a", CommandKind::OpenAccount),
        placed(0, 1, "da", "a", dep(100)),
        placed(0, 2, "t", "a", tr("ghost", 30)),
        // Before the refund a is short of 80; after it, not.
        placed(0, 3, "w1", "a", wd(80)),
        placed(0, 5, "w2", "a", wd(80)),
    ];
    let o = build_model(&events, &[refunded("a", "t", pos(0, 4))]);
    assert_eq!(
        o.model.accounts[&acc("a")],
        AccountState {
            open: true,
            // open, deposit, debit, refund, withdrawal
            balance: 20,
            applied_events: 5
        }
    );
    assert!(!o.model.accounts.contains_key(&acc("ghost")));
    assert_eq!(
        o.model.commands[&cmd("a", "w1")].status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    let t = &o.model.commands[&cmd("a", "t")];
    assert_eq!(
        t.status,
        CommandStatus::Refunded(Rejection::DestinationNotOpen)
    );
    assert_eq!(t.transfer.as_ref().unwrap().settled_at, Some(pos(0, 4)));
    assert_eq!(o.model.totals.pending(), 0);
    assert!(o.model.totals.conserved());
    let v = view_of(&o, "a", "t");
    assert_eq!(v.reason.as_deref(), Some("destination_not_open"));
    assert_eq!(
        Settlement::reported(&v),
        Some(refunded("a", "t", pos(0, 4)))
    );
}

#[test]
fn a_transfer_without_a_settlement_stays_pending_and_a_rejected_one_has_none() {
    let mut events = transfer_to_b();
    events.push(placed(0, 3, "t2", "a", tr("b", 1000)));
    let o = build_model(&events, &[]);
    assert_eq!(
        o.model.commands[&cmd("a", "t")].status,
        CommandStatus::Pending
    );
    assert_eq!(o.model.totals.pending(), 30);
    assert_eq!(o.model.accounts[&acc("b")].balance, 0);
    assert_eq!(
        o.model.commands[&cmd("a", "t2")].status,
        CommandStatus::Rejected(Rejection::InsufficientFunds)
    );
    assert_eq!(Settlement::reported(&view_of(&o, "a", "t")), None);
    assert_eq!(Settlement::reported(&view_of(&o, "a", "t2")), None);
}

#[test]
fn a_credit_reported_where_the_destination_was_not_open_yet_is_a_mismatch() {
    // b opens at 1/1, but the projector says the credit was applied at 1/0.
    let events = [
        placed(0, 0, "oa", "a", CommandKind::OpenAccount),
        placed(0, 1, "da", "a", dep(100)),
        placed(0, 2, "t", "a", tr("b", 30)),
        placed(1, 1, "ob", "b", CommandKind::OpenAccount),
    ];
    let o = build_model(&events, &[credited("a", "t", pos(1, 0))]);
    // The model refuses that credit, so the money goes back to a.
    assert_eq!(
        o.model.commands[&cmd("a", "t")].status,
        CommandStatus::Refunded(Rejection::DestinationNotOpen)
    );
    assert_eq!(o.model.accounts[&acc("a")].balance, 100);
    assert_eq!(o.model.accounts[&acc("b")].balance, 0);
    assert!(o.model.totals.conserved());
    // What that projector would answer: applied, and b credited.
    let claimed = CommandView {
        status: CommandOutcome::Applied,
        reason: None,
        transfer: Some(TransferView {
            to_account: acc("b"),
            amount: Amount::new(30).unwrap(),
            settled_at: Some(LogPosition {
                partition: 1,
                offset: 0,
            }),
            settled_token: Some("v1.1.0".into()),
        }),
        ..view_of(&o, "a", "t")
    };
    let (m, lost) = compare_command(
        &o,
        &acc("a"),
        &CommandId::parse("t").unwrap(),
        Some(&claimed),
    );
    let m = m.expect("a mismatch");
    assert_eq!(lost, 0);
    assert!(
        m.expected
            .starts_with("refunded (destination_not_open) on a at 0/2"),
        "{m:?}"
    );
    assert!(m.actual.starts_with("applied on a at 0/2"), "{m:?}");
    let a = AccountView {
        balance: 70,
        ..account_view(&o, "a")
    };
    assert!(
        compare_account(&acc("a"), o.model.accounts.get(&acc("a")), Some(&a))
            .0
            .is_some()
    );
}

#[test]
fn a_doubled_credit_is_applied_once_by_the_model_and_caught_on_the_destination() {
    // The same credit reported twice (written again after a crash): applied once.
    let o = build_model(
        &transfer_to_b(),
        &[credited("a", "t", pos(1, 1)), credited("a", "t", pos(1, 2))],
    );
    assert_eq!(o.model.accounts[&acc("b")].balance, 30);
    assert_eq!(o.model.accounts[&acc("b")].applied_events, 2);
    assert_eq!(o.model.totals.pending(), 0);
    let b = account_view(&o, "b");
    assert_eq!(
        compare_account(&acc("b"), o.model.accounts.get(&acc("b")), Some(&b)),
        (None, 0)
    );
    // A projector that applied it twice: b holds 30 too much, one event too many.
    let doubled = AccountView {
        balance: 60,
        applied_events: 3,
        ..b
    };
    let (m, excess) = compare_account(&acc("b"), o.model.accounts.get(&acc("b")), Some(&doubled));
    assert_eq!(excess, 1);
    let m = m.expect("a mismatch");
    assert_eq!(m.subject, "account b");
    assert_eq!(m.expected, "open true, balance 30, 2 applied events");
    assert_eq!(m.actual, "open true, balance 60, 3 applied events");
}

#[test]
fn settlements_of_other_commands_or_unknown_transfers_are_ignored() {
    let events = transfer_to_b();
    let o = build_model(
        &events,
        &[
            credited("a", "da", pos(1, 5)),
            credited("a", "nope", pos(1, 6)),
        ],
    );
    assert_eq!(o.model.accounts[&acc("b")].balance, 0);
    assert_eq!(
        o.model.commands[&cmd("a", "t")].status,
        CommandStatus::Pending
    );
}

#[test]
fn only_complete_reports_are_placed() {
    let o = build_model(&transfer_to_b(), &[credited("a", "t", pos(1, 1))]);
    let v = view_of(&o, "a", "t");
    let without = |f: &dyn Fn(&mut CommandView)| {
        let mut v = v.clone();
        f(&mut v);
        Settlement::reported(&v)
    };
    assert!(without(&|_| ()).is_some());
    assert_eq!(
        without(&|v| v.transfer.as_mut().unwrap().settled_at = None),
        None
    );
    assert_eq!(without(&|v| v.transfer = None), None);
    assert_eq!(
        without(&|v| {
            v.status = CommandOutcome::Refunded;
            v.reason = Some("a_reason_from_the_future".into());
        }),
        None
    );
    assert_eq!(without(&|v| v.status = CommandOutcome::Pending), None);
}

#[test]
fn a_refund_to_an_account_opened_before_the_transfer_was_sent_is_a_mismatch() {
    let mut events = transfer_to_b();
    events.push(placed(0, 3, "t2", "a", tr("ghost", 5)));
    let settlements = [
        refunded("a", "t", pos(0, 4)),
        refunded("a", "t2", pos(0, 5)),
    ];
    let o = build_model(&events, &settlements);
    let (oa, ob) = (cmd("a", "oa"), cmd("b", "ob"));
    let opened_first = [(&oa.0, &oa.1), (&ob.0, &ob.1)];
    let wrong = refunds_to_open_accounts(&o, &opened_first, &settlements);
    assert_eq!(
        wrong,
        [Mismatch {
            subject: "command t of a".into(),
            expected: "credited: b was open before the transfer was sent".into(),
            actual: "refunded (destination_not_open)".into(),
        }]
    );
    // Without b among the first opens, nothing can be said.
    assert!(refunds_to_open_accounts(&o, &opened_first[..1], &settlements).is_empty());
}

#[test]
fn money_must_be_conserved_complete_settled_and_match_the_run() {
    let totals = |conserved, complete, pending| TotalsView {
        balance_sum: 100,
        pending_transfers_sum: pending,
        deposits_sum: 100 + pending as u128,
        withdrawals_sum: 0,
        transfers_debited_sum: 0,
        transfers_credited_sum: 0,
        transfers_refunded_sum: 0,
        conserved,
        complete,
        as_of: Vec::<PartitionTotals>::new(),
    };
    assert!(MoneyCheck::new(&totals(true, true, 0), 70, 70).ok);
    assert!(!MoneyCheck::new(&totals(true, true, 0), 70, 71).ok);
    assert!(!MoneyCheck::new(&totals(false, true, 0), 70, 70).ok);
    assert!(!MoneyCheck::new(&totals(true, false, 0), 70, 70).ok);
    let in_flight = MoneyCheck::new(&totals(true, true, 30), 70, 70);
    assert!(!in_flight.ok);
    assert_eq!(in_flight.pending_transfers_sum, 30);
}
