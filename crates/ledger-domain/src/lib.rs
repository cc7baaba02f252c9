//! The ledger's domain: commands as clients send them, events as the log holds them, and
//! the rules that turn an event into a new account state or a rejection.
//!
//! Nothing here does I/O. The ingest validates with [`command`], the projector decides
//! with [`rules`], and tests and the `ledger` tool check results against [`model`], so all
//! three agree by construction. A [`Batch`] is what the event log reads and the store
//! applies, kept here so that the store needs no Kafka client.
//!
//! A transfer composes through the log: its debit causes a credit event, and the credit
//! a completion or a refund, each a follow-up event that [`model::apply_event`] returns
//! for the projector to write to the log, with an id derived from its cause
//! ([`follow_up_id`]) so that it is applied once however often it is written.

pub mod batch;
pub mod command;
pub mod event;
pub mod ids;
pub mod model;
pub mod partitioning;
pub mod position;
pub mod rules;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod window;

pub use batch::{Batch, Record, Unreadable};
pub use command::{Command, CommandKind};
pub use event::{
    follow_up_cause, follow_up_id, is_released_follow_up, released_follow_up_id, Event, EventBody,
    FollowUpKind, Rejection, UnparkKind, REJECTIONS,
};
pub use ids::{
    AccountId, Amount, CommandId, ValidationError, ACCOUNT_ID_PATTERN, COMMAND_ID_PATTERN,
    MAX_AMOUNT,
};
pub use model::{
    apply_released, is_duplicate, mark_released, Applied, ApplyResult, CommandRecord,
    CommandStatus, FollowUpRecord, Model, Totals, TransferRecord,
};
pub use position::{token_pattern, Position, TokenError};
pub use rules::{decide, AccountState};
pub use window::{IdempotencyWindow, WindowError, WindowSetting, MIN_WINDOW};
