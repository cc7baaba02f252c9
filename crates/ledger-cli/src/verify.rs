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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use ledger_domain::{AccountId, Command, CommandId, Event, Model};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::client::{Client, ClientError, Submitted};
use crate::load::Workload;
use crate::output::{latency_histogram, record, LatencySummary};

/// At most this many mismatches are listed.
pub const MAX_LISTED: usize = 10;

/// The shortest wait for the projector to catch up with the run.
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

/// What the ledger must hold, per the model.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Accounts and command outcomes.
    pub model: Model,
    /// Where each command (an id on an account) first appears in the log: the event that
    /// decides it.
    pub first_position: HashMap<(AccountId, CommandId), (i32, i64)>,
}

/// Applies the placed commands to an empty [`Model`] in `(partition, offset)` order.
///
/// # Panics
/// When a command has no command id.
pub fn build_model(placed: &[Placed]) -> Oracle {
    let mut order: Vec<&Placed> = placed.iter().collect();
    order.sort_by_key(|p| (p.partition, p.offset));
    let mut oracle = Oracle::default();
    for (n, p) in order.into_iter().enumerate() {
        let command_id = p
            .command
            .command_id
            .clone()
            .expect("placed commands carry their command id");
        let event = Event::from_command(&p.command, command_id.clone(), n as u128, 0);
        oracle.model.apply(
            &event,
            ledger_domain::Position {
                partition: p.partition,
                offset: p.offset,
            },
        );
        oracle
            .first_position
            .entry((p.command.account_id.clone(), command_id))
            .or_insert((p.partition, p.offset));
    }
    oracle
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
    /// Retried commands found earlier in the log than their accepted position.
    pub earlier_copies: u64,
    /// Accepted commands the projector does not know: lost.
    pub lost: u64,
    /// Events applied beyond the model, summed over accounts: applied twice.
    pub applied_twice: u64,
    /// All mismatches found.
    pub mismatch_count: u64,
    /// The first [`MAX_LISTED`] mismatches.
    pub mismatches: Vec<Mismatch>,
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

/// Waits for the projector, then checks every account and every accepted command
/// against the model.
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

    // 3. Place every accepted command; a retried one may also sit earlier in the log,
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
    let found: Vec<Option<Placed>> = stream::iter(ambiguous)
        .map(|(i, s)| async move {
            let op = ops[*i];
            match client
                .command(op.command_id(), Some(&op.command.account_id), None)
                .await
            {
                Ok(v) if v.partition == s.accepted.partition && v.offset < s.accepted.offset => {
                    Ok(Some(Placed {
                        partition: v.partition,
                        offset: v.offset,
                        command: op.command.clone(),
                    }))
                }
                Ok(_) => Ok(None),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffered(run.concurrency)
        .try_collect()
        .await?;
    let earlier: Vec<Placed> = found.into_iter().flatten().collect();
    let earlier_copies = earlier.len() as u64;
    placed.extend(earlier);
    let oracle = build_model(&placed);

    // 4. Every account the workload touched, opened or not.
    let accounts: Vec<&AccountId> = run.workload.account_ids().into_iter().collect();
    let account_mismatches: Vec<(Option<Mismatch>, u64)> = stream::iter(accounts.iter().copied())
        .map(|id| check_account(client, &oracle, id))
        .buffered(run.concurrency)
        .try_collect()
        .await?;

    // 5. Every distinct command (an id on an account) that was accepted, in workload
    // order.
    let mut seen = std::collections::HashSet::new();
    let commands: Vec<(&AccountId, &CommandId)> = run
        .accepted
        .iter()
        .map(|(i, _)| *i)
        .collect::<std::collections::BTreeSet<usize>>()
        .into_iter()
        .map(|i| (&ops[i].command.account_id, ops[i].command_id()))
        .filter(|key| seen.insert(*key))
        .collect();
    let command_mismatches: Vec<(Option<Mismatch>, u64)> = stream::iter(commands.iter().copied())
        .map(|(account, id)| check_command(client, &oracle, account, id))
        .buffered(run.concurrency)
        .try_collect()
        .await?;

    let applied_twice = account_mismatches.iter().map(|(_, n)| n).sum();
    let lost = command_mismatches.iter().map(|(_, n)| n).sum();
    let all: Vec<Mismatch> = account_mismatches
        .into_iter()
        .chain(command_mismatches)
        .filter_map(|(m, _)| m)
        .collect();
    Ok(VerifyReport {
        catch_up_ms: catch_up.as_millis(),
        visibility_lag: LatencySummary::of(&lags),
        lag_samples_failed,
        accounts_checked: accounts.len() as u64,
        commands_checked: commands.len() as u64,
        earlier_copies,
        lost,
        applied_twice,
        mismatch_count: all.len() as u64,
        mismatches: all.into_iter().take(MAX_LISTED).collect(),
    })
}

/// Compares one account; also returns how many more events the projector applied to it
/// than the model did.
async fn check_account(
    client: &Client,
    oracle: &Oracle,
    id: &AccountId,
) -> Result<(Option<Mismatch>, u64), ClientError> {
    let modelled = oracle.model.accounts.get(id);
    let expected = modelled.map(|s| {
        format!(
            "open {}, balance {}, {} applied events",
            s.open, s.balance, s.applied_events
        )
    });
    let (actual, excess) = match client.account(id, None).await {
        Ok(v) => (
            Some(format!(
                "open {}, balance {}, {} applied events",
                v.open, v.balance, v.applied_events
            )),
            v.applied_events
                .saturating_sub(modelled.map_or(0, |s| s.applied_events)),
        ),
        Err(e) if e.is_not_found() => (None, 0),
        Err(e) => return Err(e),
    };
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("account {id}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    Ok((mismatch, excess))
}

/// Compares one command; also returns 1 when the projector does not know it (lost).
async fn check_command(
    client: &Client,
    oracle: &Oracle,
    account: &AccountId,
    id: &CommandId,
) -> Result<(Option<Mismatch>, u64), ClientError> {
    let key = (account.clone(), id.clone());
    let expected = oracle.model.commands.get(&key).map(|r| {
        let (p, o) = oracle.first_position[&key];
        describe_command(
            ledger_api::CommandOutcome::from(r.status).as_str(),
            r.status.reason(),
            r.account_id.as_str(),
            p,
            o,
        )
    });
    let actual = match client.command(id, Some(account), None).await {
        Ok(v) => Some(describe_command(
            v.status.as_str(),
            v.reason.as_deref(),
            v.account_id.as_str(),
            v.partition,
            v.offset,
        )),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    let lost = u64::from(actual.is_none());
    let none = || "not found".to_string();
    let mismatch = (expected != actual).then(|| Mismatch {
        subject: format!("command {id} of {account}"),
        expected: expected.unwrap_or_else(none),
        actual: actual.unwrap_or_else(none),
    });
    Ok((mismatch, lost))
}

fn describe_command(
    status: &str,
    reason: Option<&str>,
    account: &str,
    partition: i32,
    offset: i64,
) -> String {
    let outcome = match reason {
        Some(r) => format!("{status} ({r})"),
        None => status.to_string(),
    };
    format!("{outcome} on {account} at {partition}/{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_domain::{AccountState, Amount, CommandKind, CommandStatus, Rejection};

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
        let o = build_model(&events);
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
        let o = build_model(&events);
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
        let o = build_model(&events);
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
        let o = build_model(&events);
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
        let o = build_model(&events);
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
        let o = build_model(&events);
        assert_eq!(o.model.accounts[&acc("a")].balance, 5);
        assert_eq!(
            o.model.commands[&cmd("a", "o2")].status,
            CommandStatus::Rejected(Rejection::AccountAlreadyOpen)
        );
    }
}
