//! What the projector answers: accounts, command outcomes and progress.

use ledger_domain::{AccountId, Amount, CommandId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/accounts/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// The account's id.
    #[schema(value_type = String, example = "acc-1")]
    pub account_id: AccountId,
    /// Whether the account is open.
    pub open: bool,
    /// In minor units; never negative.
    #[schema(example = 950)]
    pub balance: i64,
    /// Events that took effect on the account (rejections and duplicates do not count).
    pub applied_events: u64,
    /// Present and `true` while the account's events wait behind one this version cannot
    /// apply (`GET /v1/admin/parked`): the balance is as of the event before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parked: bool,
}

/// A command's outcome, decided by the projector in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// It took effect (a transfer: the destination was credited).
    Applied,
    /// It changed nothing; `reason` says why.
    Rejected,
    /// A transfer debited its source and is on its way: neither credited nor refunded yet.
    Pending,
    /// A transfer the destination refused; `reason` says why, and the amount is back on
    /// the source.
    Refunded,
}

impl CommandOutcome {
    /// The outcome as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Applied => "applied",
            CommandOutcome::Rejected => "rejected",
            CommandOutcome::Pending => "pending",
            CommandOutcome::Refunded => "refunded",
        }
    }

    /// Whether the outcome can still change (a pending transfer).
    pub const fn is_final(self) -> bool {
        !matches!(self, CommandOutcome::Pending)
    }
}

impl std::fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ledger_domain::CommandStatus> for CommandOutcome {
    fn from(s: ledger_domain::CommandStatus) -> Self {
        match s {
            ledger_domain::CommandStatus::Applied => CommandOutcome::Applied,
            ledger_domain::CommandStatus::Rejected(_) => CommandOutcome::Rejected,
            ledger_domain::CommandStatus::Pending => CommandOutcome::Pending,
            ledger_domain::CommandStatus::Refunded(_) => CommandOutcome::Refunded,
        }
    }
}

/// `GET /v1/commands/{command_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandView {
    /// The command's id.
    #[schema(value_type = String, example = "c-42")]
    pub command_id: CommandId,
    /// The first outcome under this id; a retry never changes it. Only a transfer's
    /// moves on: from `pending` to `applied` or `refunded`.
    pub status: CommandOutcome,
    /// Why it was rejected: `account_already_open`, `account_not_open`,
    /// `insufficient_funds` or `balance_overflow`; why a transfer was refunded:
    /// `destination_not_open` or `destination_balance_overflow`; `null` otherwise.
    #[schema(example = "insufficient_funds")]
    pub reason: Option<String>,
    /// The account the command acted on.
    #[schema(value_type = String, example = "acc-1")]
    pub account_id: AccountId,
    /// The partition of the event that decided the outcome.
    pub partition: i32,
    /// The offset of that event.
    pub offset: i64,
    /// A transfer's terms and where it settled; absent for other commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferView>,
}

/// A transfer's terms and where it settled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    /// The destination.
    #[schema(value_type = String, example = "acc-2")]
    pub to_account: AccountId,
    /// Minor units.
    #[schema(value_type = u64, example = 500)]
    pub amount: Amount,
    /// Where it settled: the credit's place in the destination's partition (`applied`),
    /// or the refund's in the source's (`refunded`); `null` while pending.
    pub settled_at: Option<LogPosition>,
    /// A consistency token naming that place: `?after=` it reads the destination
    /// credited (or the source refunded) on any instance.
    #[schema(example = "v1.4.17")]
    pub settled_token: Option<String>,
}

/// A place in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct LogPosition {
    /// The partition.
    pub partition: i32,
    /// The offset within it.
    pub offset: i64,
}

/// `GET /v1/totals`: the money in the ledger, summed over every partition of the group.
///
/// `balance_sum + pending_transfers_sum == deposits_sum - withdrawals_sum` holds for every
/// partition's figures whenever they were read, so it holds for the sum: `conserved`.
/// Sums are integers of minor units, which may exceed 64 bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TotalsView {
    /// Every account's balance, summed.
    #[schema(value_type = i64)]
    pub balance_sum: i128,
    /// Transfers debited and neither credited nor refunded yet.
    #[schema(value_type = i64)]
    pub pending_transfers_sum: i128,
    /// Applied deposits.
    #[schema(value_type = u64)]
    pub deposits_sum: u128,
    /// Applied withdrawals.
    #[schema(value_type = u64)]
    pub withdrawals_sum: u128,
    /// Transfers debited from their sources.
    #[schema(value_type = u64)]
    pub transfers_debited_sum: u128,
    /// Transfers credited to their destinations.
    #[schema(value_type = u64)]
    pub transfers_credited_sum: u128,
    /// Transfers refunded to their sources.
    #[schema(value_type = u64)]
    pub transfers_refunded_sum: u128,
    /// Whether the balances and the transfers in flight add up to the money deposited
    /// and not withdrawn.
    pub conserved: bool,
    /// Whether every partition of the topic is counted, each by an instance that serves
    /// it (its owner, or one draining it): `false` while one is moving (nobody serves
    /// it, or only an instance still warming it up), or its instance is unreachable.
    pub complete: bool,
    /// Each partition counted, with the offset its figures are as of.
    pub as_of: Vec<PartitionTotals>,
}

/// One partition's money, as of an applied offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionTotals {
    /// The partition.
    pub partition: i32,
    /// The next offset to apply: the figures include every event below it.
    pub applied_offset: i64,
    /// The instance whose store the figures come from.
    pub served_by: String,
    /// What that instance does with the partition.
    pub role: crate::cluster::PartitionRole,
    /// Every account's balance in the partition, summed.
    #[schema(value_type = i64)]
    pub balance_sum: i128,
    /// Applied deposits.
    #[schema(value_type = u64)]
    pub deposits_sum: u128,
    /// Applied withdrawals.
    #[schema(value_type = u64)]
    pub withdrawals_sum: u128,
    /// Transfers debited from the partition's accounts.
    #[schema(value_type = u64)]
    pub transfers_debited_sum: u128,
    /// Transfers credited to the partition's accounts.
    #[schema(value_type = u64)]
    pub transfers_credited_sum: u128,
    /// Transfers refunded to the partition's accounts.
    #[schema(value_type = u64)]
    pub transfers_refunded_sum: u128,
}

impl PartitionTotals {
    /// The domain's totals of these figures.
    pub fn totals(&self) -> ledger_domain::Totals {
        ledger_domain::Totals {
            balance_sum: self.balance_sum,
            deposits: self.deposits_sum,
            withdrawals: self.withdrawals_sum,
            debited: self.transfers_debited_sum,
            credited: self.transfers_credited_sum,
            refunded: self.transfers_refunded_sum,
        }
    }
}

impl TotalsView {
    /// Sums partitions' figures; `complete` when they cover `partition_count`, each from
    /// an instance that serves it.
    pub fn sum(as_of: Vec<PartitionTotals>, partition_count: i32) -> Self {
        let mut t = ledger_domain::Totals::default();
        for p in &as_of {
            t.add(&p.totals());
        }
        TotalsView {
            balance_sum: t.balance_sum,
            pending_transfers_sum: t.pending(),
            deposits_sum: t.deposits,
            withdrawals_sum: t.withdrawals,
            transfers_debited_sum: t.debited,
            transfers_credited_sum: t.credited,
            transfers_refunded_sum: t.refunded,
            conserved: t.conserved(),
            complete: partition_count > 0
                && as_of.len() == usize::try_from(partition_count).unwrap_or(0)
                && as_of.iter().all(|p| p.role.serves()),
            as_of,
        }
    }
}

/// `GET /v1/progress`: how far the projector has applied the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// The topic projected.
    pub topic: String,
    /// Whether the brokers answered for the high watermarks just now.
    pub broker_reachable: bool,
    /// The sum of every partition's lag; `null` while the brokers do not answer.
    pub total_lag: Option<i64>,
    /// Whether every partition of the topic is served now, by its owner or an instance
    /// draining it, that answered: `false` while one is moving (nobody serves it, or an
    /// instance is still warming it up) or its instance is unreachable. Forwarded
    /// between instances, it speaks for the asked instance's partitions only.
    #[serde(default)]
    pub complete: bool,
    /// Every partition of the topic, across the group.
    pub partitions: Vec<PartitionProgress>,
}

/// One partition's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PartitionProgress {
    /// The partition.
    pub partition: i32,
    /// The next offset to apply: every event below it is applied.
    pub applied_offset: i64,
    /// The partition's end in the log; `null` while the brokers do not answer.
    pub high_watermark: Option<i64>,
    /// Events in the log not applied yet; `null` while the brokers do not answer.
    pub lag: Option<i64>,
    /// Whether the instance that reported the partition consumes it in the group.
    pub assigned: bool,
    /// The instance that serves the partition (its owner, or while it moves the one
    /// draining or warming it); `null` when none is known.
    pub owner: Option<String>,
    /// What `owner` does with the partition.
    pub role: Option<crate::cluster::PartitionRole>,
    /// Whether an operator paused applying it (`POST /v1/admin/pause`).
    #[serde(default)]
    pub paused: bool,
}

impl Progress {
    /// Each partition's applied offset (the next offset to apply).
    pub fn applied_offsets(&self) -> std::collections::BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .map(|p| (p.partition, p.applied_offset))
            .collect()
    }
}

/// `?after=TOKEN&timeout_ms=N`, accepted by every projector query: answer only once
/// everything up to the token is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyParams {
    /// A token from an ingest answer, as it was given (opaque: never build one); a
    /// malformed one is `400 invalid_token`.
    #[param(example = "v1.2.41")]
    pub after: Option<String>,
    /// How long to wait for it, in milliseconds: 0 to 30000, default 5000; a value
    /// outside is `400 invalid_timeout`. Waited only with `after`. On time-out the
    /// answer is `503 not_yet_consistent` with `Retry-After`.
    pub timeout_ms: Option<u64>,
}

impl ConsistencyParams {
    /// Default wait for `?after=`.
    pub const DEFAULT_WAIT_MS: u64 = 5_000;
    /// Longest wait for `?after=`.
    pub const MAX_WAIT_MS: u64 = 30_000;

    /// The wait this request asks for, capped.
    pub fn wait_ms(&self) -> u64 {
        self.timeout_ms
            .unwrap_or(Self::DEFAULT_WAIT_MS)
            .min(Self::MAX_WAIT_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PartitionRole;

    fn row(partition: i32, role: PartitionRole) -> PartitionTotals {
        PartitionTotals {
            partition,
            applied_offset: 10,
            served_by: "p-a".into(),
            role,
            balance_sum: 5,
            deposits_sum: 5,
            withdrawals_sum: 0,
            transfers_debited_sum: 0,
            transfers_credited_sum: 0,
            transfers_refunded_sum: 0,
        }
    }

    #[test]
    fn totals_are_complete_only_with_every_partition_from_an_instance_serving_it() {
        let served = vec![
            row(0, PartitionRole::Owner),
            row(1, PartitionRole::Draining),
        ];
        let t = TotalsView::sum(served.clone(), 2);
        assert!(t.complete && t.conserved);
        assert_eq!(t.balance_sum, 10);
        assert!(
            !TotalsView::sum(served[..1].to_vec(), 2).complete,
            "one missing"
        );
        let warming = vec![row(0, PartitionRole::Owner), row(1, PartitionRole::Warming)];
        assert!(
            !TotalsView::sum(warming, 2).complete,
            "a partition only warming is not served"
        );
    }
}
