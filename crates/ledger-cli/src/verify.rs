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

mod compare;
use compare::*;

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

#[cfg(test)]
mod tests;
