//! What the projector's operations routes take and answer (`/v1/admin/…`): pausing and
//! resuming partitions, the verified rebuild, and parked accounts. Guarded by
//! `--auth-token` like every other `/v1` route.

use ledger_domain::{AccountId, UnparkKind};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `?partition=N` on pause and resume: one partition; without it, every partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PartitionParam {
    /// The partition; absent: all of them.
    pub partition: Option<i32>,
}

/// `POST /v1/admin/pause` and `POST /v1/admin/resume`: what is paused now.
///
/// A pause holds until it is resumed, the instance restarts, or the group rebalances
/// (a partition that moves starts applying on its new owner): it is an operator's
/// tool for a moment, not configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PauseView {
    /// The partitions paused now, on every instance that answered.
    pub paused_partitions: Vec<i32>,
    /// The instances that applied the request.
    pub instances: Vec<String>,
}

/// Where a rebuild stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildPhase {
    /// Replaying the log from offset 0 into the fresh store, beside the live one.
    Replaying,
    /// The live store is paused at the batch boundary while the fresh one reaches the
    /// same offsets and the two are compared.
    Verifying,
    /// The digests agreed and the fresh store is now the live one.
    Swapped,
    /// A digest differed: the live store was kept and the fresh one discarded.
    Mismatch,
    /// The rebuild could not finish (see `error`); the live store was kept.
    Failed,
}

impl RebuildPhase {
    /// Whether the rebuild is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RebuildPhase::Swapped | RebuildPhase::Mismatch | RebuildPhase::Failed
        )
    }
}

/// `GET /v1/admin/rebuild` (and the answer to `POST`): the last rebuild on this instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RebuildView {
    /// The instance rebuilding.
    pub instance_id: String,
    /// Where it stands.
    pub phase: RebuildPhase,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Unix milliseconds; `null` while it runs.
    pub finished_at_ms: Option<u64>,
    /// Events replayed into the fresh store so far.
    pub events_replayed: u64,
    /// The first partition (in partition order) whose digests differed.
    pub first_mismatch: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
    /// The partitions this instance owned when the rebuild started.
    pub partitions: Vec<RebuildPartition>,
}

/// One partition of a rebuild.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RebuildPartition {
    /// The partition.
    pub partition: i32,
    /// The fresh store's next offset.
    pub rebuilt_offset: i64,
    /// The live store's next offset.
    pub live_offset: i64,
    /// Where the two were compared; `null` until they were.
    pub compared_at: Option<i64>,
    /// The live store's state digest there (hex).
    pub live_digest: Option<String>,
    /// The fresh store's state digest there (hex).
    pub rebuilt_digest: Option<String>,
}

/// `GET /v1/admin/parked`: accounts whose events wait behind one this version cannot
/// apply, across the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedView {
    /// Every parked account, by partition then account.
    pub accounts: Vec<ParkedAccount>,
    /// Whether every partition was answered for (an instance that did not answer leaves
    /// its partitions out).
    pub complete: bool,
}

/// One parked account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParkedAccount {
    /// The account.
    #[schema(value_type = String, example = "acc-1")]
    pub account_id: AccountId,
    /// Its partition.
    pub partition: i32,
    /// The offset of the event that parked it: the first that waits.
    pub first_offset: i64,
    /// Events waiting, that one included.
    pub waiting: u64,
    /// Why that event cannot be applied.
    pub reason: String,
    /// The instance that reported it.
    pub served_by: String,
}

/// `202` to `POST /v1/admin/parked/{account_id}/retry|skip`: the decision is in the log,
/// where every instance (and every rebuild) applies it in the account's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UnparkAccepted {
    /// The account.
    #[schema(value_type = String, example = "acc-1")]
    pub account_id: AccountId,
    /// What was decided: `retry` or `skip`.
    #[schema(value_type = String, example = "retry")]
    pub action: UnparkKind,
    /// The offset of the waiting event the decision is for: it applies only while that
    /// event is still the account's first, so one that lands in the log twice is applied
    /// once.
    pub first_offset: i64,
    /// The decision's place in the log.
    pub partition: i32,
    /// The decision's place in the log.
    pub offset: i64,
    /// A consistency token: a query with `?after=` it sees the decision applied.
    pub token: String,
}
