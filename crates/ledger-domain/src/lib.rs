//! The ledger's domain: commands as clients send them, events as the log holds them, and
//! the rules that turn an event into a new account state or a rejection.
//!
//! Nothing here does I/O. The ingest validates with [`command`], the projector decides
//! with [`rules`], and tests and the `ledger` tool check results against [`model`], so all
//! three agree by construction. A [`Batch`] is what the event log reads and the store
//! applies, kept here so that the store needs no Kafka client.

pub mod batch;
pub mod command;
pub mod event;
pub mod ids;
pub mod model;
pub mod partitioning;
pub mod rules;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use batch::{Batch, Record};
pub use command::{Command, CommandKind, ValidationError};
pub use event::{Event, EventBody};
pub use ids::{AccountId, Amount, CommandId, MAX_AMOUNT};
pub use model::{ApplyResult, CommandRecord, CommandStatus, Model};
pub use rules::{decide, AccountState, Rejection};
