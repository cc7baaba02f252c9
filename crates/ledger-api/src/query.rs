//! What the projector answers: accounts, command outcomes and progress.

use ledger_domain::{AccountId, CommandId};
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
}

/// A command's outcome, decided by the projector in log order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    /// It took effect.
    Applied,
    /// It changed nothing; `reason` says why.
    Rejected,
}

impl CommandOutcome {
    /// The outcome as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Applied => "applied",
            CommandOutcome::Rejected => "rejected",
        }
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
        }
    }
}

/// `GET /v1/commands/{command_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CommandView {
    /// The command's id.
    #[schema(value_type = String, example = "c-42")]
    pub command_id: CommandId,
    /// The first outcome under this id; a retry never changes it.
    pub status: CommandOutcome,
    /// Why it was rejected: `account_already_open`, `account_not_open`,
    /// `insufficient_funds` or `balance_overflow`; `null` when applied.
    #[schema(example = "insufficient_funds")]
    pub reason: Option<String>,
    /// The account the command acted on.
    #[schema(value_type = String, example = "acc-1")]
    pub account_id: AccountId,
    /// The partition of the event that decided the outcome.
    pub partition: i32,
    /// The offset of that event.
    pub offset: i64,
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
    /// A token from an ingest answer.
    #[param(example = "v1.2.41")]
    pub after: Option<String>,
    /// How long to wait for it, in milliseconds: default 5000; more than 30000 waits
    /// 30000. Read only with `after`. On time-out the answer is `503 not_yet_consistent`
    /// with `Retry-After`.
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
