//! Events as the log holds them: one per accepted command.
//!
//! In listen-to-yourself the ingest does not decide anything: an event records that a
//! command was accepted into the log, and the projector decides its outcome by the rules
//! in [`crate::rules`], in log order. That is why the bodies mirror the command kinds.

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandKind};
use crate::ids::{AccountId, Amount, CommandId};

/// One event of the log. Its encoding on the wire lives in the event-log crate's codec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A unique id of this event (a UUID, as 128 bits).
    pub event_id: u128,
    /// The idempotency key: at most one event per command id takes effect.
    pub command_id: CommandId,
    /// The account, and the message key.
    pub account_id: AccountId,
    /// When the ingest accepted the command, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What happened.
    pub body: EventBody,
}

/// The body of an event. New variants go at the end: the codec numbers them by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// An `open_account` command was accepted.
    OpenAccount,
    /// A `deposit` command was accepted.
    Deposit {
        /// Minor units.
        amount: Amount,
    },
    /// A `withdraw` command was accepted.
    Withdraw {
        /// Minor units.
        amount: Amount,
    },
}

impl From<CommandKind> for EventBody {
    fn from(kind: CommandKind) -> Self {
        match kind {
            CommandKind::OpenAccount => EventBody::OpenAccount,
            CommandKind::Deposit(amount) => EventBody::Deposit { amount },
            CommandKind::Withdraw(amount) => EventBody::Withdraw { amount },
        }
    }
}

impl Event {
    /// The event for an accepted command. `command_id` is the one the client gave or the
    /// one the ingest generated for it.
    pub fn from_command(
        command: &Command,
        command_id: CommandId,
        event_id: u128,
        time_ms: i64,
    ) -> Self {
        Event {
            event_id,
            command_id,
            account_id: command.account_id.clone(),
            time_ms,
            body: command.kind.into(),
        }
    }
}
