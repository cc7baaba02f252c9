//! The HTTP contract of the ledger's two services, in one place: what a client sends,
//! what each route answers, and every error code with its status.
//!
//! The services answer with these types, the `ledger` tool, the tests and the benchmark
//! read them, and [`openapi::Service::document`] describes them, so none of them can drift from
//! the others.
//!
//! - [`command`]: commands and the ingest's answers;
//! - [`query`]: the projector's answers;
//! - [`cluster`]: a projector group as any instance sees it;
//! - [`ops`]: health and readiness, on both services;
//! - [`admin`]: the projector's operations routes (pause, rebuild, parked accounts);
//! - [`error`]: [`ErrorCode`] and the error body.

pub mod admin;
pub mod cluster;
pub mod command;
pub mod error;
pub mod openapi;
pub mod ops;
pub mod query;

pub use admin::{
    ParkedAccount, ParkedView, PartitionParam, PauseView, RebuildPartition, RebuildPhase,
    RebuildView, UnparkAccepted,
};
pub use cluster::{ClusterView, InstanceView, PartitionRole, PartitionRoleView};
pub use command::{Accepted, BatchItem, BatchResults, CommandRequest};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use ops::{Health, Readiness};
pub use query::{
    AccountView, CommandOutcome, CommandView, ConsistencyParams, LogPosition, PartitionProgress,
    PartitionTotals, Progress, TotalsView, TransferView,
};
