//! Idempotent application of events, over any state that can look up accounts and
//! command ids, and [`Model`], its in-memory implementation.
//!
//! The projector's sled store implements [`LedgerState`] over a transaction; tests and
//! `ledger load --verify` use [`Model`] as the oracle. Both run the same
//! [`apply_event`], so the oracle cannot drift from the product.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::{follow_up_cause, follow_up_id, Event, EventBody, FollowUpKind};
use crate::ids::{AccountId, Amount, CommandId};
use crate::position::Position;
use crate::rules::{decide, AccountState, Rejection};

/// The outcome recorded under a command id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandStatus {
    /// The event took effect (for a transfer: the destination was credited).
    Applied,
    /// The event changed nothing, for this reason.
    Rejected(Rejection),
    /// A transfer debited its source; its credit or refund has not arrived yet.
    Pending,
    /// A transfer whose destination refused the credit, for this reason: the amount went
    /// back to the source.
    Refunded(Rejection),
}

impl CommandStatus {
    /// The contract's status: `applied`, `rejected`, `pending` or `refunded`.
    pub fn code(&self) -> &'static str {
        match self {
            CommandStatus::Applied => "applied",
            CommandStatus::Rejected(_) => "rejected",
            CommandStatus::Pending => "pending",
            CommandStatus::Refunded(_) => "refunded",
        }
    }

    /// The rejection or refund reason code, if any.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            CommandStatus::Applied | CommandStatus::Pending => None,
            CommandStatus::Rejected(r) | CommandStatus::Refunded(r) => Some(r.code()),
        }
    }

    /// Whether the status can still change (a transfer on its way).
    pub fn is_final(&self) -> bool {
        !matches!(self, CommandStatus::Pending)
    }
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyResult {
    /// It took effect.
    Applied,
    /// It was refused; the outcome is recorded under its command id (for a follow-up,
    /// under its event id).
    Rejected(Rejection),
    /// Its command id (for a follow-up, its event id) was seen before: nothing changed,
    /// and the first outcome stands.
    Duplicate,
    /// An operator's control event ([`EventBody::Unpark`]): it acts on what the store
    /// keeps of parked events, never on an account's state or outcomes.
    Control,
}

/// A transfer's terms and where it settled, kept with its command's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// The destination.
    pub to: AccountId,
    /// Minor units.
    pub amount: Amount,
    /// Where it settled: the credit's position in the destination's partition when
    /// applied, the refund's in the source's when refunded; `None` while pending.
    pub settled_at: Option<Position>,
}

/// A command's recorded outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRecord {
    /// The outcome; a transfer's moves from pending to applied or refunded.
    pub status: CommandStatus,
    /// The account of the command.
    pub account_id: AccountId,
    /// The offset of the event that decided it.
    pub offset: i64,
    /// When the ingest accepted that event, in ms since the Unix epoch.
    pub time_ms: i64,
    /// A transfer's terms and settlement.
    pub transfer: Option<TransferRecord>,
}

/// What a follow-up did where it was applied, recorded under its event id so that a
/// copy of it (emitted again after a crash) changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowUpRecord {
    /// The offset of the copy that took effect.
    pub offset: i64,
    /// Applied, or refused and why.
    pub outcome: Result<(), Rejection>,
}

/// Money that moved, summed over the events applied: per partition in the store, and
/// over the group in `GET /v1/totals`.
///
/// Every event keeps `balance_sum + pending() == deposits - withdrawals` within its own
/// partition, so the identity holds for any sum of partitions read at any moments: money
/// is conserved. A transfer credited twice would show as `pending()` below zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of the balances, from the accounts' own changes.
    pub balance_sum: i128,
    /// Applied deposits.
    pub deposits: u128,
    /// Applied withdrawals.
    pub withdrawals: u128,
    /// Transfers debited from their sources.
    pub debited: u128,
    /// Transfers credited to their destinations.
    pub credited: u128,
    /// Transfers refunded to their sources.
    pub refunded: u128,
}

impl Totals {
    /// Money debited and neither credited nor refunded yet: transfers in flight.
    pub fn pending(&self) -> i128 {
        self.debited as i128 - self.credited as i128 - self.refunded as i128
    }

    /// Whether the balances and the transfers in flight add up to the money deposited
    /// and not withdrawn.
    pub fn conserved(&self) -> bool {
        self.balance_sum + self.pending() == self.deposits as i128 - self.withdrawals as i128
    }

    /// Adds another partition's (or event's) totals.
    pub fn add(&mut self, other: &Totals) {
        self.balance_sum += other.balance_sum;
        self.deposits += other.deposits;
        self.withdrawals += other.withdrawals;
        self.debited += other.debited;
        self.credited += other.credited;
        self.refunded += other.refunded;
    }
}

/// State that [`apply_event`] can read and write.
pub trait LedgerState {
    /// Error of the underlying storage.
    type Error;
    /// The account's current state.
    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, Self::Error>;
    /// Stores the account's new state.
    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), Self::Error>;
    /// The outcome recorded under this command id for this account: a command id is an
    /// idempotency key per account (a retry always names its account), so the same id
    /// on another account is another command.
    fn command(
        &mut self,
        account: &AccountId,
        id: &CommandId,
    ) -> Result<Option<CommandRecord>, Self::Error>;
    /// Records a command's first outcome, or a transfer's settlement.
    fn put_command(&mut self, id: &CommandId, record: CommandRecord) -> Result<(), Self::Error>;
    /// The recorded outcome of a follow-up, by its event id.
    fn follow_up(&mut self, event_id: u128) -> Result<Option<FollowUpRecord>, Self::Error>;
    /// Records a follow-up's outcome.
    fn put_follow_up(&mut self, event_id: u128, record: FollowUpRecord) -> Result<(), Self::Error>;
    /// Adds one event's effect to the totals.
    fn add_totals(&mut self, delta: &Totals) -> Result<(), Self::Error>;
}

/// What applying one event did, and the follow-ups it causes, which the projector
/// writes to the log (acknowledged) before it stores the event's effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The outcome.
    pub result: ApplyResult,
    /// Follow-up events, keyed (by their `account_id`) to the account they act on.
    pub follow_ups: Vec<Event>,
}

/// Applies the event at `at` idempotently: a command id seen before on its account (for
/// a follow-up, an event id seen before) changes nothing.
pub fn apply_event<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<Applied, S::Error> {
    if event.body.is_follow_up() {
        return apply_follow_up(state, event, at);
    }
    if matches!(event.body, EventBody::Unpark { .. }) {
        return Ok(Applied {
            result: ApplyResult::Control,
            follow_ups: Vec::new(),
        });
    }
    if state
        .command(&event.account_id, &event.command_id)?
        .is_some()
    {
        return Ok(Applied {
            result: ApplyResult::Duplicate,
            follow_ups: Vec::new(),
        });
    }
    let current = state.account(&event.account_id)?;
    let decided = decide(current.as_ref(), &event.body);
    let mut follow_ups = Vec::new();
    let mut transfer = None;
    let status = match decided {
        Ok(next) => {
            let mut delta = Totals {
                balance_sum: balance_change(current.as_ref(), &next),
                ..Totals::default()
            };
            let status = match &event.body {
                EventBody::Deposit { amount } => {
                    delta.deposits = amount.minor_units().into();
                    CommandStatus::Applied
                }
                EventBody::Withdraw { amount } => {
                    delta.withdrawals = amount.minor_units().into();
                    CommandStatus::Applied
                }
                EventBody::Transfer { to, amount } => {
                    delta.debited = amount.minor_units().into();
                    transfer = Some(TransferRecord {
                        to: to.clone(),
                        amount: *amount,
                        settled_at: None,
                    });
                    follow_ups.push(credit_for(event, at, to, *amount));
                    CommandStatus::Pending
                }
                _ => CommandStatus::Applied,
            };
            state.put_account(&event.account_id, next)?;
            state.add_totals(&delta)?;
            status
        }
        Err(rejection) => CommandStatus::Rejected(rejection),
    };
    state.put_command(
        &event.command_id,
        CommandRecord {
            status,
            account_id: event.account_id.clone(),
            offset: at.offset,
            time_ms: event.time_ms,
            transfer,
        },
    )?;
    Ok(Applied {
        result: match status {
            CommandStatus::Rejected(r) => ApplyResult::Rejected(r),
            _ => ApplyResult::Applied,
        },
        follow_ups,
    })
}

/// The follow-ups the event at `at` caused when it was applied, read back from what was
/// recorded then: for an owner that must emit them again (it applied the event while
/// it did not own the partition, or crashed before the log acknowledged them). None for
/// an event that was a duplicate or was refused.
pub fn recorded_follow_ups<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<Vec<Event>, S::Error> {
    Ok(match &event.body {
        EventBody::Transfer { to, amount } => {
            match state.command(&event.account_id, &event.command_id)? {
                Some(r)
                    if r.offset == at.offset && !matches!(r.status, CommandStatus::Rejected(_)) =>
                {
                    vec![credit_for(event, at, to, *amount)]
                }
                _ => Vec::new(),
            }
        }
        EventBody::TransferCredit { from, amount } => match state.follow_up(event.event_id)? {
            Some(r) if r.offset == at.offset => {
                vec![settlement_for(event, at, from, *amount, r.outcome)]
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    })
}

fn balance_change(before: Option<&AccountState>, after: &AccountState) -> i128 {
    i128::from(after.balance) - i128::from(before.map_or(0, |s| s.balance))
}

/// The credit a debited transfer causes.
fn credit_for(transfer: &Event, at: Position, to: &AccountId, amount: Amount) -> Event {
    Event {
        event_id: follow_up_id(at, FollowUpKind::Credit),
        command_id: transfer.command_id.clone(),
        account_id: to.clone(),
        time_ms: transfer.time_ms,
        body: EventBody::TransferCredit {
            from: transfer.account_id.clone(),
            amount,
        },
    }
}

/// The completion or refund a credit causes, back to the source.
fn settlement_for(
    credit: &Event,
    at: Position,
    from: &AccountId,
    amount: Amount,
    outcome: Result<(), Rejection>,
) -> Event {
    let to = credit.account_id.clone();
    let (kind, body) = match outcome {
        Ok(()) => (
            FollowUpKind::Completed,
            EventBody::TransferCompleted { to, amount },
        ),
        Err(reason) => (
            FollowUpKind::Refund,
            EventBody::TransferRefund { to, amount, reason },
        ),
    };
    Event {
        event_id: follow_up_id(at, kind),
        command_id: credit.command_id.clone(),
        account_id: from.clone(),
        time_ms: credit.time_ms,
        body,
    }
}

fn apply_follow_up<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<Applied, S::Error> {
    let mut follow_ups = Vec::new();
    if state.follow_up(event.event_id)?.is_some() {
        return Ok(Applied {
            result: ApplyResult::Duplicate,
            follow_ups,
        });
    }
    let outcome = match &event.body {
        EventBody::TransferCredit { from, amount } => {
            let current = state.account(&event.account_id)?;
            let outcome = match decide(current.as_ref(), &event.body) {
                Ok(next) => {
                    state.add_totals(&Totals {
                        balance_sum: balance_change(current.as_ref(), &next),
                        credited: amount.minor_units().into(),
                        ..Totals::default()
                    })?;
                    state.put_account(&event.account_id, next)?;
                    Ok(())
                }
                Err(r) => Err(r),
            };
            follow_ups.push(settlement_for(event, at, from, *amount, outcome));
            outcome
        }
        EventBody::TransferRefund { amount, reason, .. } => {
            settle(state, event, *amount, |state, record| {
                let current = state.account(&event.account_id)?;
                match decide(current.as_ref(), &event.body) {
                    Ok(next) => {
                        state.add_totals(&Totals {
                            balance_sum: balance_change(current.as_ref(), &next),
                            refunded: amount.minor_units().into(),
                            ..Totals::default()
                        })?;
                        state.put_account(&event.account_id, next)?;
                        record.status = CommandStatus::Refunded(*reason);
                        Ok(Ok(at))
                    }
                    // The source's balance grew so near the limit since the debit that
                    // the refund does not fit: the transfer stays pending, its money
                    // counted in flight, rather than lost.
                    Err(r) => Ok(Err(r)),
                }
            })?
        }
        EventBody::TransferCompleted { amount, .. } => {
            settle(state, event, *amount, |_, record| {
                record.status = CommandStatus::Applied;
                // The completion's id names the credit that caused it.
                Ok(Ok(
                    follow_up_cause(event.event_id).map_or(at, |(credit, _)| credit)
                ))
            })?
        }
        _ => Ok(()),
    };
    state.put_follow_up(
        event.event_id,
        FollowUpRecord {
            offset: at.offset,
            outcome,
        },
    )?;
    Ok(Applied {
        result: match outcome {
            Ok(()) => ApplyResult::Applied,
            Err(r) => ApplyResult::Rejected(r),
        },
        follow_ups,
    })
}

/// Settles the pending transfer a refund or completion names: `f` applies its effect and
/// says where it settled; the transfer's record is then stored with that position.
fn settle<S: LedgerState>(
    state: &mut S,
    event: &Event,
    amount: Amount,
    f: impl FnOnce(&mut S, &mut CommandRecord) -> Result<Result<Position, Rejection>, S::Error>,
) -> Result<Result<(), Rejection>, S::Error> {
    let Some(mut record) = state.command(&event.account_id, &event.command_id)? else {
        return Ok(Err(Rejection::UnknownTransfer));
    };
    let matches = record.status == CommandStatus::Pending
        && record.transfer.as_ref().is_some_and(|t| t.amount == amount);
    if !matches {
        return Ok(Err(Rejection::UnknownTransfer));
    }
    match f(state, &mut record)? {
        Ok(settled_at) => {
            if let Some(t) = record.transfer.as_mut() {
                t.settled_at = Some(settled_at);
            }
            state.put_command(&event.command_id, record)?;
            Ok(Ok(()))
        }
        Err(r) => Ok(Err(r)),
    }
}

/// The ledger in memory: the oracle that results are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    /// Every account that exists, by id.
    pub accounts: BTreeMap<AccountId, AccountState>,
    /// Every command's outcome, by account and command id.
    pub commands: HashMap<(AccountId, CommandId), CommandRecord>,
    /// Every follow-up's outcome, by event id.
    pub follow_ups: HashMap<u128, FollowUpRecord>,
    /// The money that moved.
    pub totals: Totals,
}

impl Model {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies the event at `at` idempotently.
    pub fn apply(&mut self, event: &Event, at: Position) -> Applied {
        match apply_event(self, event, at) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

impl LedgerState for Model {
    type Error = std::convert::Infallible;

    fn account(&mut self, id: &AccountId) -> Result<Option<AccountState>, Self::Error> {
        Ok(self.accounts.get(id).copied())
    }

    fn put_account(&mut self, id: &AccountId, state: AccountState) -> Result<(), Self::Error> {
        self.accounts.insert(id.clone(), state);
        Ok(())
    }

    fn command(
        &mut self,
        account: &AccountId,
        id: &CommandId,
    ) -> Result<Option<CommandRecord>, Self::Error> {
        // The map is keyed by owned pairs; a lookup by borrowed parts would need a
        // custom key type, and this is the oracle, not the hot path.
        Ok(self.commands.get(&(account.clone(), id.clone())).cloned())
    }

    fn put_command(&mut self, id: &CommandId, record: CommandRecord) -> Result<(), Self::Error> {
        self.commands
            .insert((record.account_id.clone(), id.clone()), record);
        Ok(())
    }

    fn follow_up(&mut self, event_id: u128) -> Result<Option<FollowUpRecord>, Self::Error> {
        Ok(self.follow_ups.get(&event_id).copied())
    }

    fn put_follow_up(&mut self, event_id: u128, record: FollowUpRecord) -> Result<(), Self::Error> {
        self.follow_ups.insert(event_id, record);
        Ok(())
    }

    fn add_totals(&mut self, delta: &Totals) -> Result<(), Self::Error> {
        self.totals.add(delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
}
