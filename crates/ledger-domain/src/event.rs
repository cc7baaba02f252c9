//! Events as the log holds them: one per accepted command.
//!
//! In listen-to-yourself the ingest does not decide anything: an event records that a
//! command was accepted into the log, and the projector decides its outcome by the rules
//! in [`crate::rules`], in log order. That is why the bodies mirror the command kinds.

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandKind};
use crate::ids::{AccountId, Amount, CommandId};
use crate::position::Position;

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
///
/// The first four are commands the ingest accepted. The last three are follow-ups: the
/// projector emits them to the log while it applies a transfer, keyed by the account
/// they act on, with ids derived from the event that caused them ([`follow_up_id`]).
/// Each carries the transfer's command id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A `transfer` command was accepted: debit this account, then credit `to`.
    Transfer {
        /// The destination account.
        to: AccountId,
        /// Minor units.
        amount: Amount,
    },
    /// Follow-up of a debited transfer, keyed by the destination: credit this account.
    TransferCredit {
        /// The source account, which is told of the outcome.
        from: AccountId,
        /// Minor units.
        amount: Amount,
    },
    /// Follow-up of a credit the destination refused, keyed by the source: give the
    /// amount back and mark the transfer refunded.
    TransferRefund {
        /// The destination that refused it.
        to: AccountId,
        /// Minor units.
        amount: Amount,
        /// Why the destination refused it.
        reason: Rejection,
    },
    /// Follow-up of an applied credit, keyed by the source: mark the transfer applied.
    TransferCompleted {
        /// The destination that was credited.
        to: AccountId,
        /// Minor units.
        amount: Amount,
    },
    /// An operator's decision for this account while it is parked (its events wait
    /// behind one the projector could not read), written to the log by a projector so
    /// that every instance and every rebuild applies it at the same place in the
    /// account's order. Changes nothing when the account is not parked.
    Unpark {
        /// What to do with the waiting events.
        action: UnparkKind,
        /// The offset of the first waiting event the operator saw: the decision applies
        /// only while it still is, so a decision that lands in the log twice (a producer's
        /// retry, two requests made before the first was applied) is applied once.
        first_offset: i64,
    },
}

/// What an [`EventBody::Unpark`] does with a parked account's waiting events. In JSON
/// (the admin routes), `retry` or `skip`; the log's codec numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnparkKind {
    /// Read the first waiting event again (a newer projector may know it) and apply the
    /// waiting events in order, up to the next one that still cannot be read.
    Retry,
    /// Send the first waiting event to the dead-letter topic, then apply the rest as
    /// `Retry` does.
    Skip,
}

impl UnparkKind {
    /// As operators and the admin routes name it.
    pub fn as_str(self) -> &'static str {
        match self {
            UnparkKind::Retry => "retry",
            UnparkKind::Skip => "skip",
        }
    }
}

impl EventBody {
    /// Whether the projector emits this event (a follow-up) rather than the ingest.
    pub fn is_follow_up(&self) -> bool {
        matches!(
            self,
            EventBody::TransferCredit { .. }
                | EventBody::TransferRefund { .. }
                | EventBody::TransferCompleted { .. }
        )
    }
}

/// Which follow-up an event caused; part of the follow-up's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FollowUpKind {
    /// The credit a debited transfer causes.
    Credit = 1,
    /// The refund a refused credit causes.
    Refund = 2,
    /// The completion an applied credit causes.
    Completed = 3,
}

/// Top byte of every follow-up id: the envelope's magic byte.
const FOLLOW_UP_TAG: u128 = 0xEB;

/// The id of the follow-up `kind` caused by the event at `cause`.
///
/// Deterministic, so that a follow-up emitted again after a crash (the projector emits
/// before it stores, and replays what it had not stored) carries the same id, and its
/// destination applies it once. It is laid out as a version-8 UUID (RFC 9562, custom):
/// the tag byte, the kind byte, the partition, the version nibble, then the offset split
/// around the variant bits. The ingest's ids are version 7, so the two never collide.
pub fn follow_up_id(cause: Position, kind: FollowUpKind) -> u128 {
    let offset = cause.offset as u64 as u128;
    let partition = cause.partition as u32 as u128;
    (FOLLOW_UP_TAG << 120)
        | ((kind as u128) << 112)
        | (partition << 80)
        | (0x8 << 76)
        | (((offset >> 51) & 0xFFF) << 64)
        | (0b10 << 62)
        | ((offset & ((1 << 51) - 1)) << 11)
}

/// The bit of the kind byte that marks a follow-up written by an operator's release of a
/// parked account rather than in its cause's place in the log.
const RELEASED_BIT: u128 = 0x80 << 112;

/// The id of a follow-up that an operator's release caused: `id` with the released bit.
///
/// Every other follow-up of a partition reaches each destination in the order of its
/// cause's offset (the first copy of each, at least), which lets a destination forget
/// the ids of old ones and keep only how far it got (see the store's floors). A parked
/// account's events apply when an operator releases them, after later events of the
/// partition, so their follow-ups come out of order; the bit tells the destination to
/// keep their ids instead.
pub fn released_follow_up_id(id: u128) -> u128 {
    id | RELEASED_BIT
}

/// Whether a follow-up's id is one a release caused ([`released_follow_up_id`]).
pub fn is_released_follow_up(id: u128) -> bool {
    follow_up_cause(id).is_some() && id & RELEASED_BIT != 0
}

/// The event that caused a follow-up, and which follow-up it is, read back from the
/// follow-up's id (released or not); `None` for an id that is not a follow-up's.
pub fn follow_up_cause(id: u128) -> Option<(Position, FollowUpKind)> {
    if id >> 120 != FOLLOW_UP_TAG || (id >> 76) & 0xF != 0x8 || (id >> 62) & 0b11 != 0b10 {
        return None;
    }
    let id = id & !RELEASED_BIT;
    let kind = match (id >> 112) & 0xFF {
        1 => FollowUpKind::Credit,
        2 => FollowUpKind::Refund,
        3 => FollowUpKind::Completed,
        _ => return None,
    };
    let offset = (((id >> 64) & 0xFFF) << 51) | ((id >> 11) & ((1 << 51) - 1));
    let position = Position {
        partition: i32::try_from((id >> 80) & 0xFFFF_FFFF).ok()?,
        offset: i64::try_from(offset).ok()?,
    };
    (follow_up_id(position, kind) == id).then_some((position, kind))
}

impl From<CommandKind> for EventBody {
    fn from(kind: CommandKind) -> Self {
        match kind {
            CommandKind::OpenAccount => EventBody::OpenAccount,
            CommandKind::Deposit(amount) => EventBody::Deposit { amount },
            CommandKind::Withdraw(amount) => EventBody::Withdraw { amount },
            CommandKind::Transfer { to, amount } => EventBody::Transfer { to, amount },
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
            body: command.kind.clone().into(),
        }
    }
}

/// Why the projector refused an event. Each variant is a `reason` of the contract. New
/// variants go at the end: a refund event carries one, and the codec numbers them by
/// position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// `open_account` for an account that is already open.
    #[error("the account is already open")]
    AccountAlreadyOpen,
    /// A deposit or withdrawal on an account that was never opened.
    #[error("the account is not open")]
    AccountNotOpen,
    /// A withdrawal larger than the balance.
    #[error("the balance is lower than the amount")]
    InsufficientFunds,
    /// A deposit that would take the balance past the signed 64-bit range.
    #[error("the balance would overflow")]
    BalanceOverflow,
    /// A transfer's destination was not open when its credit arrived: refunded.
    #[error("the destination account is not open")]
    DestinationNotOpen,
    /// A transfer's credit would take the destination's balance past the signed 64-bit
    /// range: refunded.
    #[error("the destination's balance would overflow")]
    DestinationBalanceOverflow,
    /// A refund or a completion names no pending transfer of its source account.
    #[error("no pending transfer matches this follow-up")]
    UnknownTransfer,
}

impl Rejection {
    /// The contract's reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AccountAlreadyOpen => "account_already_open",
            Rejection::AccountNotOpen => "account_not_open",
            Rejection::InsufficientFunds => "insufficient_funds",
            Rejection::BalanceOverflow => "balance_overflow",
            Rejection::DestinationNotOpen => "destination_not_open",
            Rejection::DestinationBalanceOverflow => "destination_balance_overflow",
            Rejection::UnknownTransfer => "unknown_transfer",
        }
    }

    /// Parses a reason code back.
    pub fn from_code(code: &str) -> Option<Self> {
        Some(match code {
            "account_already_open" => Rejection::AccountAlreadyOpen,
            "account_not_open" => Rejection::AccountNotOpen,
            "insufficient_funds" => Rejection::InsufficientFunds,
            "balance_overflow" => Rejection::BalanceOverflow,
            "destination_not_open" => Rejection::DestinationNotOpen,
            "destination_balance_overflow" => Rejection::DestinationBalanceOverflow,
            "unknown_transfer" => Rejection::UnknownTransfer,
            _ => return None,
        })
    }
}

/// Every rejection, for labelling metrics up front and for exhaustive tests.
pub const REJECTIONS: [Rejection; 7] = [
    Rejection::AccountAlreadyOpen,
    Rejection::AccountNotOpen,
    Rejection::InsufficientFunds,
    Rejection::BalanceOverflow,
    Rejection::DestinationNotOpen,
    Rejection::DestinationBalanceOverflow,
    Rejection::UnknownTransfer,
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn follow_up_ids_name_their_cause(partition in 0..=i32::MAX, offset in 0..=i64::MAX, k in 0..3usize) {
            let kind = [FollowUpKind::Credit, FollowUpKind::Refund, FollowUpKind::Completed][k];
            let cause = Position { partition, offset };
            let id = follow_up_id(cause, kind);
            prop_assert_eq!(follow_up_cause(id), Some((cause, kind)));
            prop_assert!(!is_released_follow_up(id));
            let released = released_follow_up_id(id);
            prop_assert_ne!(released, id);
            prop_assert_eq!(follow_up_cause(released), Some((cause, kind)));
            prop_assert!(is_released_follow_up(released));
            // A version-8 UUID with the RFC variant, never a version-7 one.
            prop_assert_eq!((id >> 76) & 0xF, 8);
            prop_assert_eq!((id >> 62) & 0b11, 0b10);
        }

        #[test]
        fn other_ids_are_not_follow_ups(id in any::<u128>()) {
            if let Some((cause, kind)) = follow_up_cause(id) {
                let plain = follow_up_id(cause, kind);
                let expected = if is_released_follow_up(id) { released_follow_up_id(plain) } else { plain };
                prop_assert_eq!(expected, id);
            } else {
                prop_assert!(!is_released_follow_up(id));
            }
        }
    }

    #[test]
    fn distinct_causes_and_kinds_give_distinct_ids() {
        let at = |partition, offset| Position { partition, offset };
        let ids = [
            follow_up_id(at(0, 0), FollowUpKind::Credit),
            follow_up_id(at(0, 0), FollowUpKind::Refund),
            follow_up_id(at(0, 1), FollowUpKind::Credit),
            follow_up_id(at(1, 0), FollowUpKind::Credit),
            follow_up_id(at(0, 1 << 51), FollowUpKind::Credit),
        ];
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        // A version-7 UUID (what the ingest writes) is never read as a follow-up.
        assert_eq!(
            follow_up_cause(0x0192_3456_789a_7bcd_8ef0_1234_5678_9abc),
            None
        );
    }
}
