//! Idempotent application of events, over any state that can look up accounts and
//! command ids, and [`Model`], its in-memory implementation.
//!
//! The projector's sled store implements [`LedgerState`] over a transaction; tests and
//! `ledger load --verify` use [`Model`] as the oracle. Both run the same
//! [`apply_event`], so the oracle cannot drift from the product.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::event::{
    follow_up_cause, follow_up_id, is_released_follow_up, released_follow_up_id, Event, EventBody,
    FollowUpKind,
};
use crate::ids::{AccountId, Amount, CommandId};
use crate::position::Position;
use crate::rules::{decide, AccountState, Rejection};
use crate::window::IdempotencyWindow;

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
    /// The partition's watermark when the outcome was recorded (or last changed, for a
    /// transfer that settled): it is kept until the watermark passes this by the
    /// idempotency window, and a pending transfer's for as long as it is pending.
    pub kept_from_ms: i64,
}

impl CommandRecord {
    /// Whether a retry of the command is still a duplicate at `watermark_ms`.
    pub fn is_live(&self, window: Option<IdempotencyWindow>, watermark_ms: i64) -> bool {
        self.status == CommandStatus::Pending
            || window.is_none_or(|w| !w.expired(self.kept_from_ms, watermark_ms))
    }
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
    /// For how long outcomes are kept; `None`: for ever.
    fn window(&self) -> Option<IdempotencyWindow>;
    /// The partition's watermark: the latest event time among the events it applied
    /// (`None` before the first).
    fn watermark(&mut self, partition: i32) -> Result<Option<i64>, Self::Error>;
    /// Moves the partition's watermark.
    fn set_watermark(&mut self, partition: i32, ms: i64) -> Result<(), Self::Error>;
    /// The highest cause offset in `cause_partition` among the follow-ups applied here
    /// whose records were pruned (`None`: none was). A follow-up of that partition at or
    /// below it, not released, is a copy: the first copies of a partition's follow-ups
    /// reach each destination in the order of their causes' offsets.
    fn follow_up_floor(&mut self, cause_partition: i32) -> Result<Option<i64>, Self::Error>;
}

/// Moves the partition's watermark to the event's time if it is later, and says where it
/// stands.
fn advance_watermark<S: LedgerState>(
    state: &mut S,
    partition: i32,
    time_ms: i64,
) -> Result<i64, S::Error> {
    let was = state.watermark(partition)?;
    let now = was.map_or(time_ms, |w| w.max(time_ms));
    if was != Some(now) {
        state.set_watermark(partition, now)?;
    }
    Ok(now)
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

/// Applies the event at `at` idempotently: a command id seen before on its account
/// within the idempotency window (for a follow-up, an event id seen before) changes
/// nothing.
pub fn apply_event<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<Applied, S::Error> {
    apply(state, event, at, Emission::InPlace)
}

/// Applies the event at `at`, which waited in a parked account until an operator
/// released it, after later events of its partition: its follow-ups carry the released
/// mark ([`released_follow_up_id`]), and a follow-up released here is a copy only if its
/// record is here (floors count the order of arrival, and [`is_duplicate`] already
/// dropped any copy of what was applied before it was parked).
pub fn apply_released<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<Applied, S::Error> {
    let mut applied = apply(state, event, at, Emission::Released)?;
    mark_released(&mut applied.follow_ups);
    Ok(applied)
}

/// Gives follow-ups that a release caused the released mark ([`released_follow_up_id`]):
/// those [`apply_released`] decides, and those an owner rebuilds from what a release
/// recorded.
pub fn mark_released(follow_ups: &mut [Event]) {
    for f in follow_ups {
        f.event_id = released_follow_up_id(f.event_id);
    }
}

/// Whether the event at `at` would change nothing because it was seen before: what an
/// event bound for a parked account is asked before it waits there, so that a copy of
/// something applied before the account was parked does not outlive that thing's record
/// and apply again on release.
pub fn is_duplicate<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
) -> Result<bool, S::Error> {
    if event.body.is_follow_up() {
        return seen_follow_up(state, event.event_id, Emission::InPlace);
    }
    if matches!(event.body, EventBody::Unpark { .. }) {
        return Ok(false);
    }
    let watermark = state
        .watermark(at.partition)?
        .map_or(event.time_ms, |w| w.max(event.time_ms));
    seen_command(state, event, watermark)
}

/// Whether the event's command id has a live outcome on its account at `watermark`.
fn seen_command<S: LedgerState>(
    state: &mut S,
    event: &Event,
    watermark: i64,
) -> Result<bool, S::Error> {
    let window = state.window();
    Ok(state
        .command(&event.account_id, &event.command_id)?
        .is_some_and(|r| r.is_live(window, watermark)))
}

/// Where an event is applied: in its place in the log, or released from a parked
/// account later.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Emission {
    InPlace,
    Released,
}

fn apply<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
    emission: Emission,
) -> Result<Applied, S::Error> {
    let watermark = advance_watermark(state, at.partition, event.time_ms)?;
    if event.body.is_follow_up() {
        return apply_follow_up(state, event, at, watermark, emission);
    }
    if matches!(event.body, EventBody::Unpark { .. }) {
        return Ok(Applied {
            result: ApplyResult::Control,
            follow_ups: Vec::new(),
        });
    }
    if seen_command(state, event, watermark)? {
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
            kept_from_ms: watermark,
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

/// Whether a follow-up was applied here before: its record is here, or it was pruned and
/// the floor of its cause's partition has passed it (for one in its place in the log).
fn seen_follow_up<S: LedgerState>(
    state: &mut S,
    event_id: u128,
    emission: Emission,
) -> Result<bool, S::Error> {
    if state.follow_up(event_id)?.is_some() {
        return Ok(true);
    }
    if is_released_follow_up(event_id) || emission == Emission::Released {
        return Ok(false);
    }
    let Some((cause, _)) = follow_up_cause(event_id) else {
        return Ok(false);
    };
    Ok(state
        .follow_up_floor(cause.partition)?
        .is_some_and(|floor| cause.offset <= floor))
}

fn apply_follow_up<S: LedgerState>(
    state: &mut S,
    event: &Event,
    at: Position,
    watermark: i64,
    emission: Emission,
) -> Result<Applied, S::Error> {
    let mut follow_ups = Vec::new();
    if seen_follow_up(state, event.event_id, emission)? {
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
            settle(state, event, *amount, watermark, |state, record| {
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
            settle(state, event, *amount, watermark, |_, record| {
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
/// says where it settled; the transfer's record is then stored with that position, kept
/// for a window from now.
fn settle<S: LedgerState>(
    state: &mut S,
    event: &Event,
    amount: Amount,
    watermark: i64,
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
            record.kept_from_ms = watermark;
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
    /// For how long outcomes count; the model forgets none, it only stops counting them.
    pub window: Option<IdempotencyWindow>,
    /// Each partition's watermark.
    pub watermarks: BTreeMap<i32, i64>,
}

impl Model {
    /// An empty ledger that keeps outcomes for ever.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty ledger whose command ids are duplicates within `window` only.
    pub fn with_window(window: Option<IdempotencyWindow>) -> Self {
        Self {
            window,
            ..Self::default()
        }
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

    fn window(&self) -> Option<IdempotencyWindow> {
        self.window
    }

    fn watermark(&mut self, partition: i32) -> Result<Option<i64>, Self::Error> {
        Ok(self.watermarks.get(&partition).copied())
    }

    fn set_watermark(&mut self, partition: i32, ms: i64) -> Result<(), Self::Error> {
        self.watermarks.insert(partition, ms);
        Ok(())
    }

    fn follow_up_floor(&mut self, _cause_partition: i32) -> Result<Option<i64>, Self::Error> {
        // The model keeps every follow-up's record.
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
