//! `ledger load --verify`: rebuild what the ledger must hold from what the ingest
//! accepted, and compare it with what the projector serves.
//!
//! The oracle is [`ledger_domain::Model`], the same rules the projector runs. Each
//! accepted command is an event at a position `(partition, offset)` in the log; the
//! model applies them sorted by position. Order only matters within a partition, and all
//! events of one account share a partition, so this is the order the projector saw. A
//! command id that appears more than once (a replay, or a retry whose first attempt was
//! written unanswered) is decided by its first position; `Model::apply` treats the later
//! ones as duplicates, as the projector does.
//!
//! A transfer's credit, and a refund, are written by the projector, at positions the
//! client never learns from the ingest. So the verifier first waits until every accepted
//! transfer has settled (one still pending at the deadline is money lost in flight), and
//! takes the positions from the projector's answer: a transfer reads `applied` with the
//! position of its credit, or `refunded` with the position of its refund. The model
//! applies the credit (built as the projector builds it) or the refund at that position
//! among the commands, and then the completions the credits cause, which only settle the
//! source's status. A settlement the rules would not have led to shows up as differing
//! balances or outcomes. Finally the group's money must be conserved, nothing may be in
//! flight, and this run's balances must sum to the model's.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use ledger_api::{AccountView, CommandOutcome, CommandView, TotalsView};
use ledger_domain::{
    follow_up_id, AccountId, AccountState, Amount, Command, CommandId, CommandKind, CommandStatus,
    Event, EventBody, FollowUpKind, Model, Position, Rejection,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::client::{backoff, found, Client, ClientError, Submitted};
use crate::load::Workload;
use crate::output::{latency_histogram, outcome_text, record, LatencySummary};

/// At most this many mismatches are listed.
pub const MAX_LISTED: usize = 10;

/// The shortest wait for the projector to catch up with the run, and then for its
/// transfers to settle.
const MIN_CATCH_UP: Duration = Duration::from_secs(120);

/// A command at its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// The partition.
    pub partition: i32,
    /// The offset within the partition.
    pub offset: i64,
    /// The command; its `command_id` must be set.
    pub command: Command,
}

/// Where the projector says a transfer settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement {
    /// The transfer's account: its source.
    pub account: AccountId,
    /// The transfer's command id.
    pub command_id: CommandId,
    /// How and where.
    pub settled: Settled,
}

/// How a transfer settled, and the position of the follow-up that settled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Its credit was applied to the destination at this position (in the
    /// destination's partition).
    Credited(Position),
    /// Its refund was applied to the source at this position, for this reason.
    Refunded(Position, Rejection),
}

impl Settlement {
    /// What the projector's answer for a transfer says about its settlement. `None`
    /// when it says nothing placeable: pending, rejected, or a report without a position
    /// or with a reason this version does not know. The model then keeps the transfer
    /// pending, and the comparison shows the difference.
    pub fn reported(v: &CommandView) -> Option<Self> {
        let at = v.transfer.as_ref()?.settled_at?;
        let at = Position {
            partition: at.partition,
            offset: at.offset,
        };
        let settled = match v.status {
            CommandOutcome::Applied => Settled::Credited(at),
            CommandOutcome::Refunded => {
                Settled::Refunded(at, Rejection::from_code(v.reason.as_deref()?)?)
            }
            CommandOutcome::Rejected | CommandOutcome::Pending => return None,
        };
        Some(Self {
            account: v.account_id.clone(),
            command_id: v.command_id.clone(),
            settled,
        })
    }
}

/// What the ledger must hold, per the model.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Accounts and command outcomes.
    pub model: Model,
    /// Where each command (an id on an account) first appears in the log: the event that
    /// decides it.
    pub first_position: HashMap<(AccountId, CommandId), (i32, i64)>,
}

/// Applies the placed commands, and the transfers' follow-ups where the projector says
/// they settled, to an empty [`Model`] in `(partition, offset)` order; then the
/// completions the credits cause.
///
/// A credit is built as the projector builds it: its id derives from the position of the
/// transfer's deciding event, so a credit placed twice is applied once. A settlement of a
/// transfer this run did not accept is ignored.
///
/// # Panics
/// When a command has no command id.
pub fn build_model(placed: &[Placed], settlements: &[Settlement]) -> Oracle {
    let mut order: Vec<&Placed> = placed.iter().collect();
    order.sort_by_key(|p| (p.partition, p.offset));
    let mut oracle = Oracle::default();
    // The deciding copy of each command, for the terms of its transfer.
    let mut deciding: HashMap<(AccountId, CommandId), &Command> = HashMap::new();
    let mut events: Vec<(Position, Event)> = Vec::with_capacity(order.len() + settlements.len());
    for (n, p) in order.into_iter().enumerate() {
        let command_id = p
            .command
            .command_id
            .clone()
            .expect("placed commands carry their command id");
        let key = (p.command.account_id.clone(), command_id.clone());
        if !oracle.first_position.contains_key(&key) {
            oracle
                .first_position
                .insert(key.clone(), (p.partition, p.offset));
            deciding.insert(key, &p.command);
        }
        let at = Position {
            partition: p.partition,
            offset: p.offset,
        };
        events.push((
            at,
            Event::from_command(&p.command, command_id, n as u128, 0),
        ));
    }
    for s in settlements {
        let key = (s.account.clone(), s.command_id.clone());
        let (Some(&(partition, offset)), Some(command)) =
            (oracle.first_position.get(&key), deciding.get(&key))
        else {
            continue;
        };
        let CommandKind::Transfer { to, amount } = &command.kind else {
            continue;
        };
        let decided_at = Position { partition, offset };
        events.push(follow_up(s, decided_at, to, *amount));
    }
    // Stable: should a report put a follow-up where a command is, the command goes first.
    events.sort_by_key(|(at, _)| *at);
    let mut completions = Vec::new();
    for (at, event) in &events {
        let applied = oracle.model.apply(event, *at);
        // A credit causes its completion, or, where the model refuses the credit, a
        // refund; a transfer's own credit is the projector's to place, not the model's.
        if event.body.is_follow_up() {
            completions.extend(applied.follow_ups.into_iter().map(|f| (*at, f)));
        }
    }
    // Where a completion sits in the source's partition does not matter: it changes no
    // balance, and its id names the credit, which is where the transfer settled.
    for (at, event) in &completions {
        oracle.model.apply(event, *at);
    }
    oracle
}

/// The follow-up a settlement reports, at its position, for the transfer decided at
/// `decided_at`.
fn follow_up(
    s: &Settlement,
    decided_at: Position,
    to: &AccountId,
    amount: Amount,
) -> (Position, Event) {
    let (at, event_id, account_id, body) = match s.settled {
        Settled::Credited(at) => (
            at,
            follow_up_id(decided_at, FollowUpKind::Credit),
            to.clone(),
            EventBody::TransferCredit {
                from: s.account.clone(),
                amount,
            },
        ),
        // The projector's refund names the credit that caused it, whose position the
        // client does not know; the refund's own position is as unique.
        Settled::Refunded(at, reason) => (
            at,
            follow_up_id(at, FollowUpKind::Refund),
            s.account.clone(),
            EventBody::TransferRefund {
                to: to.clone(),
                amount,
                reason,
            },
        ),
    };
    let event = Event {
        event_id,
        command_id: s.command_id.clone(),
        account_id,
        // As the commands' events in the oracle: time decides nothing.
        time_ms: 0,
        body,
    };
    (at, event)
}

/// One difference between the model and the projector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// What differs: `account load-7-3` or `command <id>`.
    pub subject: String,
    /// What the model says.
    pub expected: String,
    /// What the projector says.
    pub actual: String,
}

/// The group's money after the run, from `GET /v1/totals`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MoneyCheck {
    /// The group's balances plus its transfers in flight equal its deposits minus its
    /// withdrawals.
    pub conserved: bool,
    /// Every partition was counted.
    pub complete: bool,
    /// The group's transfers in flight, summed: 0 once everything settled.
    pub pending_transfers_sum: i128,
    /// This run's accounts' balances as the projector serves them, summed.
    pub balance_sum: i128,
    /// The same sum in the model.
    pub model_balance_sum: i128,
    /// Whether all of the above hold.
    pub ok: bool,
}

impl MoneyCheck {
    /// Judges the group's totals and this run's balance sums. The topic may hold other
    /// runs' money, so the group's sums are not compared with the model's.
    pub fn new(totals: &TotalsView, balance_sum: i128, model_balance_sum: i128) -> Self {
        Self {
            conserved: totals.conserved,
            complete: totals.complete,
            pending_transfers_sum: totals.pending_transfers_sum,
            balance_sum,
            model_balance_sum,
            ok: group_settled(totals) && balance_sum == model_balance_sum,
        }
    }
}

/// Whether the group's money is conserved, fully counted, and none of it in flight.
fn group_settled(t: &TotalsView) -> bool {
    t.conserved && t.complete && t.pending_transfers_sum == 0
}

/// The outcome of a verification.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// How long the projector took to apply everything the run wrote, after its end.
    pub catch_up_ms: u128,
    /// Time from a command's `202` until the projector showed it, for sampled commands.
    pub visibility_lag: Option<LatencySummary>,
    /// Sampled commands whose visibility could not be measured.
    pub lag_samples_failed: u64,
    /// Accounts compared (opened and never opened).
    pub accounts_checked: u64,
    /// Distinct command ids compared.
    pub commands_checked: u64,
    /// Distinct transfers among them, each read until it settled.
    pub transfers_checked: u64,
    /// How long the transfers took to settle after the catch-up.
    pub settle_ms: u128,
    /// Retried commands found earlier in the log than their accepted position.
    pub earlier_copies: u64,
    /// Accepted commands the projector does not know: lost.
    pub lost: u64,
    /// Events applied beyond the model, summed over accounts: applied twice.
    pub applied_twice: u64,
    /// Transfers still pending at the deadline: debited, never credited nor refunded.
    pub still_pending: u64,
    /// All mismatches found.
    pub mismatch_count: u64,
    /// The first [`MAX_LISTED`] mismatches.
    pub mismatches: Vec<Mismatch>,
    /// The money after the run.
    pub money: MoneyCheck,
}

impl VerifyReport {
    /// Whether the projector agrees with the model and the money adds up.
    pub fn passed(&self) -> bool {
        self.mismatch_count == 0 && self.money.ok
    }
}

/// A sampled command's wait for visibility: its lag, or `None` if it failed.
pub type LagSample = JoinHandle<Option<Duration>>;

/// What the run produced, for verification.
pub struct RunRecord<'a> {
    /// The workload, opens first; indices of `accepted` refer to [`Workload::ops`].
    pub workload: &'a Workload,
    /// The accepted ops, by index.
    pub accepted: &'a [(usize, Submitted)],
    /// The visibility-lag probes started during the run.
    pub lag_samples: Vec<LagSample>,
    /// Concurrent queries while checking.
    pub concurrency: usize,
}

/// Waits for the projector and the run's transfers, then checks every account and every
/// accepted command against the model, and the money.
pub async fn verify(client: &Arc<Client>, run: RunRecord<'_>) -> Result<VerifyReport, ClientError> {
    let ops: Vec<_> = run.workload.ops().collect();
    let ops = &ops;

    // 1. Wait until the projector has applied, per partition, the last accepted event.
    let mut last: BTreeMap<i32, (i64, &str)> = BTreeMap::new();
    for (_, s) in run.accepted {
        let e = last
            .entry(s.accepted.partition)
            .or_insert((s.accepted.offset, &s.accepted.token));
        if s.accepted.offset > e.0 {
            *e = (s.accepted.offset, &s.accepted.token);
        }
    }
    let started = Instant::now();
    let wait = client.retry_for().max(MIN_CATCH_UP);
    for (_, token) in last.values() {
        client.wait_for_token(token, wait).await?;
    }
    let catch_up = started.elapsed();

    // 2. The visibility-lag probes have all been applied by now.
    let mut lags = latency_histogram();
    let mut lag_samples_failed = 0;
    for sample in futures::future::join_all(run.lag_samples).await {
        match sample {
            Ok(Some(d)) => record(&mut lags, d),
            _ => lag_samples_failed += 1,
        }
    }

    // Every distinct command (an id on an account) that was accepted, in workload order.
    let mut seen = HashSet::new();
    let commands: Vec<&Command> = run
        .accepted
        .iter()
        .map(|(i, _)| *i)
        .collect::<BTreeSet<usize>>()
        .into_iter()
        .map(|i| &ops[i].command)
        .filter(|c| seen.insert((&c.account_id, command_id(c))))
        .collect();

    // 3. Every transfer, read until it settles: its follow-ups have no token to wait for.
    let settling = Instant::now();
    let deadline = settling + wait;
    let transfers: Vec<&Command> = commands
        .iter()
        .copied()
        .filter(|c| matches!(c.kind, CommandKind::Transfer { .. }))
        .collect();
    let transfer_views: Vec<Option<CommandView>> = stream::iter(&transfers)
        .map(|c| async move {
            found(
                client
                    .command_settled(command_id(c), Some(&c.account_id), None, deadline)
                    .await,
            )
        })
        .buffered(run.concurrency)
        .try_collect()
        .await?;
    let settle = settling.elapsed();
    let mut still_pending = Vec::new();
    let mut settlements = Vec::new();
    let mut reported: HashMap<(&AccountId, &CommandId), Option<&CommandView>> = HashMap::new();
    for (c, v) in transfers.iter().zip(&transfer_views) {
        reported.insert((&c.account_id, command_id(c)), v.as_ref());
        let Some(v) = v else { continue };
        if v.status == CommandOutcome::Pending {
            still_pending.push(Mismatch {
                subject: format!("command {} of {}", v.command_id, v.account_id),
                expected: "settled: applied or refunded".into(),
                actual: format!(
                    "still pending after {} s: money lost in flight",
                    wait.as_secs()
                ),
            });
        }
        settlements.extend(Settlement::reported(v));
    }

    // 4. Place every accepted command; a retried one may also sit earlier in the log,
    //    where an unanswered attempt was written: the projector's record says where.
    let mut placed: Vec<Placed> = run
        .accepted
        .iter()
        .map(|(i, s)| Placed {
            partition: s.accepted.partition,
            offset: s.accepted.offset,
            command: ops[*i].command.clone(),
        })
        .collect();
    let ambiguous: Vec<&(usize, Submitted)> =
        run.accepted.iter().filter(|(_, s)| s.ambiguous).collect();
    let earlier: Vec<Option<Placed>> = stream::iter(ambiguous)
        .map(|(i, s)| async move {
            let op = ops[*i];
            let v = found(
                client
                    .command(op.command_id(), Some(&op.command.account_id), None)
                    .await,
            )?;
            Ok::<_, ClientError>(v.and_then(|v| {
                (v.partition == s.accepted.partition && v.offset < s.accepted.offset).then(|| {
                    Placed {
                        partition: v.partition,
                        offset: v.offset,
                        command: op.command.clone(),
                    }
                })
            }))
        })
        .buffered(run.concurrency)
        .try_collect()
        .await?;
    let earlier: Vec<Placed> = earlier.into_iter().flatten().collect();
    let earlier_copies = earlier.len() as u64;
    placed.extend(earlier);
    let oracle = build_model(&placed, &settlements);

    // 5. Every account the workload touched, opened or not, destinations included.
    let accounts: Vec<&AccountId> = run.workload.account_ids().into_iter().collect();
    let account_checks: Vec<(Option<Mismatch>, u64, i64)> = stream::iter(accounts.iter().copied())
        .map(|id| {
            let oracle = &oracle;
            async move {
                let actual = found(client.account(id, None).await)?;
                let (mismatch, excess) =
                    compare_account(id, oracle.model.accounts.get(id), actual.as_ref());
                Ok::<_, ClientError>((mismatch, excess, actual.map_or(0, |v| v.balance)))
            }
        })
        .buffered(run.concurrency)
        .try_collect()
        .await?;

    // 6. Every command; the transfers as read while they settled.
    let command_checks: Vec<(Option<Mismatch>, u64)> = stream::iter(&commands)
        .map(|c| {
            let (oracle, reported) = (&oracle, &reported);
            async move {
                let (account, id) = (&c.account_id, command_id(c));
                let read;
                let actual = match reported.get(&(account, id)) {
                    Some(v) => *v,
                    None => {
                        read = found(client.command(id, Some(account), None).await)?;
                        read.as_ref()
                    }
                };
                Ok::<_, ClientError>(compare_command(oracle, account, id, actual))
            }
        })
        .buffered(run.concurrency)
        .try_collect()
        .await?;

    // 7. Refunds that the model cannot place a credit for: judged by when the
    //    destination was opened.
    let opened_first: Vec<(&AccountId, &CommandId)> = run
        .accepted
        .iter()
        .filter(|(i, _)| *i < run.workload.opens.len())
        .map(|(i, _)| (&ops[*i].command.account_id, ops[*i].command_id()))
        .collect();
    let wrong_refunds = refunds_to_open_accounts(&oracle, &opened_first, &settlements);
    let misplaced = settled_elsewhere(&oracle, &settlements);

    // 8. The money: the group's, and this run's against the model.
    let balance_sum: i128 = account_checks.iter().map(|(_, _, b)| i128::from(*b)).sum();
    let model_balance_sum: i128 = oracle
        .model
        .accounts
        .values()
        .map(|s| i128::from(s.balance))
        .sum();
    let token = last.values().next_back().map(|(_, t)| *t);
    let totals = settled_totals(client, token).await?;
    let money = MoneyCheck::new(&totals, balance_sum, model_balance_sum);

    let applied_twice = account_checks.iter().map(|(_, n, _)| n).sum();
    let lost = command_checks.iter().map(|(_, n)| n).sum();
    let still_pending_count = still_pending.len() as u64;
    let all: Vec<Mismatch> = still_pending
        .into_iter()
        .chain(account_checks.into_iter().filter_map(|(m, _, _)| m))
        .chain(command_checks.into_iter().filter_map(|(m, _)| m))
        .chain(wrong_refunds)
        .chain(misplaced)
        .collect();
    Ok(VerifyReport {
        catch_up_ms: catch_up.as_millis(),
        visibility_lag: LatencySummary::of(&lags),
        lag_samples_failed,
        accounts_checked: accounts.len() as u64,
        commands_checked: commands.len() as u64,
        transfers_checked: transfers.len() as u64,
        settle_ms: settle.as_millis(),
        earlier_copies,
        lost,
        applied_twice,
        still_pending: still_pending_count,
        mismatch_count: all.len() as u64,
        mismatches: all.into_iter().take(MAX_LISTED).collect(),
        money,
    })
}

/// A generated command's id, which is always set.
fn command_id(c: &Command) -> &CommandId {
    c.command_id
        .as_ref()
        .expect("generated commands always carry a command id")
}

/// `GET /v1/totals` until the group's money is settled or the retry window passes: the
/// run's own transfers have settled, but another client's may be in flight a moment.
async fn settled_totals(client: &Client, after: Option<&str>) -> Result<TotalsView, ClientError> {
    let deadline = Instant::now() + client.retry_for();
    let mut attempt = 0;
    loop {
        let totals = client.totals(after).await?;
        let now = Instant::now();
        if group_settled(&totals) || now >= deadline {
            return Ok(totals);
        }
        attempt += 1;
        tokio::time::sleep(backoff(attempt).min(deadline - now)).await;
    }
}

/// Compares one account; also returns how many more events the projector applied to it
/// than the model did.
fn compare_account(
    id: &AccountId,
    modelled: Option<&AccountState>,
    actual: Option<&AccountView>,
) -> (Option<Mismatch>, u64) {
    let expected = modelled.map(|s| describe_account(s.open, s.balance, s.applied_events));
    let excess = actual.map_or(0, |v| {
        v.applied_events
            .saturating_sub(modelled.map_or(0, |s| s.applied_events))
    });
    let actual = actual.map(|v| describe_account(v.open, v.balance, v.applied_events));
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("account {id}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    (mismatch, excess)
}

fn describe_account(open: bool, balance: i64, applied_events: u64) -> String {
    format!("open {open}, balance {balance}, {applied_events} applied events")
}

/// Compares one command with the projector's answer (`None`: it does not know it); also
/// returns 1 when it does not (lost).
fn compare_command(
    oracle: &Oracle,
    account: &AccountId,
    id: &CommandId,
    actual: Option<&CommandView>,
) -> (Option<Mismatch>, u64) {
    let key = (account.clone(), id.clone());
    let expected = oracle.model.commands.get(&key).map(|r| {
        let (p, o) = oracle.first_position[&key];
        let outcome = outcome_text(CommandOutcome::from(r.status), r.status.reason());
        let transfer = r
            .transfer
            .as_ref()
            .map(|t| describe_transfer(&t.to, t.amount, t.settled_at));
        describe_command(&outcome, r.account_id.as_str(), p, o, transfer)
    });
    let actual = actual.map(|v| {
        let outcome = outcome_text(v.status, v.reason.as_deref());
        let transfer = v.transfer.as_ref().map(|t| {
            let settled_at = t.settled_at.map(|p| Position {
                partition: p.partition,
                offset: p.offset,
            });
            describe_transfer(&t.to_account, t.amount, settled_at)
        });
        describe_command(
            &outcome,
            v.account_id.as_str(),
            v.partition,
            v.offset,
            transfer,
        )
    });
    let lost = u64::from(actual.is_none());
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("command {id} of {account}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    (mismatch, lost)
}

fn describe_command(
    outcome: &str,
    account: &str,
    partition: i32,
    offset: i64,
    transfer: Option<String>,
) -> String {
    let mut s = format!("{outcome} on {account} at {partition}/{offset}");
    if let Some(t) = transfer {
        s.push_str(&format!("; {t}"));
    }
    s
}

fn describe_transfer(to: &AccountId, amount: Amount, settled_at: Option<Position>) -> String {
    match settled_at {
        Some(p) => format!(
            "transfer of {amount} to {to}, settled at {}/{}",
            p.partition, p.offset
        ),
        None => format!("transfer of {amount} to {to}, not settled"),
    }
}

/// Transfers refunded for want of an open destination although the destination was
/// open before they were sent. The model cannot judge such a refund by itself: the
/// refused credit's position is known to the projector only. But `opened_first` lists
/// the opens accepted before any transfer of the run was sent (the run opens its
/// accounts first), and a credit is written after its transfer, so it comes after them
/// in the destination's partition: where the model applied such an open, the credit
/// must have found the account open.
fn refunds_to_open_accounts(
    oracle: &Oracle,
    opened_first: &[(&AccountId, &CommandId)],
    settlements: &[Settlement],
) -> Vec<Mismatch> {
    let open: HashSet<&AccountId> = opened_first
        .iter()
        .filter(|(account, id)| {
            oracle
                .model
                .commands
                .get(&((*account).clone(), (*id).clone()))
                .is_some_and(|r| r.status == CommandStatus::Applied)
        })
        .map(|(account, _)| *account)
        .collect();
    settlements
        .iter()
        .filter_map(|s| {
            let Settled::Refunded(_, reason @ Rejection::DestinationNotOpen) = s.settled else {
                return None;
            };
            let record = oracle
                .model
                .commands
                .get(&(s.account.clone(), s.command_id.clone()))?;
            let to = &record.transfer.as_ref()?.to;
            open.contains(to).then(|| Mismatch {
                subject: format!("command {} of {}", s.command_id, s.account),
                expected: format!("credited: {to} was open before the transfer was sent"),
                actual: outcome_text(CommandOutcome::Refunded, Some(reason.code())),
            })
        })
        .collect()
}

/// Settlements reported in a partition where they cannot be: a credit lands in its
/// destination's partition, a refund in its source's. Each account's partition is where
/// the ingest put its commands; a destination the run never wrote to is not judged.
fn settled_elsewhere(oracle: &Oracle, settlements: &[Settlement]) -> Vec<Mismatch> {
    let partition: HashMap<&AccountId, i32> = oracle
        .first_position
        .iter()
        .map(|((account, _), (p, _))| (account, *p))
        .collect();
    settlements
        .iter()
        .filter_map(|s| {
            let record = oracle
                .model
                .commands
                .get(&(s.account.clone(), s.command_id.clone()))?;
            let to = &record.transfer.as_ref()?.to;
            let (at, whose) = match s.settled {
                Settled::Credited(at) => (at, to),
                Settled::Refunded(at, _) => (at, &s.account),
            };
            let expected = *partition.get(whose)?;
            (at.partition != expected).then(|| Mismatch {
                subject: format!("command {} of {}", s.command_id, s.account),
                expected: format!("settled in partition {expected}, {whose}'s"),
                actual: format!(
                    "settled at partition {}, offset {}",
                    at.partition, at.offset
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        let (m, excess) =
            compare_account(&acc("b"), o.model.accounts.get(&acc("b")), Some(&doubled));
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
}
