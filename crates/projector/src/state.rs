//! The state every query handler shares, and the errors they answer with.

use std::sync::Arc;

use ledger_api::ErrorCode;
use ledger_eventlog::probe::SharedMetadata;
use ledger_http::ApiError;
use ledger_store::Store;
use tokio::sync::watch;

use crate::group::Applied;
use crate::group::Group;

#[derive(Clone)]
pub(crate) struct QueryState {
    pub store: Store,
    pub topic: Arc<str>,
    pub applied: watch::Receiver<Applied>,
    pub metadata: Arc<SharedMetadata>,
    pub group: Arc<Group>,
    /// An operator's pause, which the consumer obeys.
    pub pause: ledger_eventlog::consume::PauseControl,
    pub rebuilder: Arc<crate::rebuild::Rebuilder>,
    /// Writes operators' decisions for parked accounts to the log.
    pub producer: ledger_eventlog::producer::EventProducer,
    pub http: reqwest::Client,
}

/// The answer `partition_moving`, counted in `projector_partition_moving`.
pub(crate) fn moving(state: &QueryState, partition: i32, why: &str) -> ApiError {
    counted(state, moving_error(partition, why))
}

/// `partition_moving`, not counted yet: a query that looks again counts only the answer
/// it ends with.
pub(crate) fn moving_error(partition: i32, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PartitionMoving,
        format!(
            "partition {partition} is moving between projector instances and {why}; retry shortly"
        ),
    )
}

/// The error a query ends with, counted when it is `partition_moving`.
pub(crate) fn counted(state: &QueryState, e: ApiError) -> ApiError {
    if e.code == ErrorCode::PartitionMoving {
        state.group.metrics().partition_moving.inc();
    }
    e
}

pub(crate) fn not_ready() -> ApiError {
    ApiError::new(
        ErrorCode::NotReady,
        "the projector has not found its topic yet",
    )
}

pub(crate) fn store_error(e: ledger_store::StoreError) -> ApiError {
    ApiError::internal(format!("store read failed: {e}"))
}

impl QueryState {
    pub(crate) fn partition_count(&self) -> Result<i32, ApiError> {
        self.group.partition_count().ok_or_else(not_ready)
    }
}
