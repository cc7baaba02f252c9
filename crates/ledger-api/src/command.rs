//! What the ingest takes and answers: a command, a batch of them, and the `202` that
//! says the event is in the log.

use ledger_domain::{AccountId, Amount, Command, CommandId, CommandKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorDetail;

/// Most commands in one `POST /v1/commands/batch`; more is `413 payload_too_large`.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// One command, as a client sends it to `POST /v1/commands`.
///
/// The ingest validates the raw JSON itself, so that each mistake gets its own error
/// code ([`ledger_domain::Command::from_json_slice`]); this type is what well-formed
/// clients send, and what the OpenAPI document describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CommandRequest {
    /// Opens the account with a balance of 0.
    OpenAccount {
        /// 1 to 64 characters of `[A-Za-z0-9._-]`; also the event's Kafka key.
        #[schema(value_type = String, example = "acc-1")]
        account_id: AccountId,
        /// The idempotency key, scoped to the account; generated when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        command_id: Option<CommandId>,
    },
    /// Adds money to an open account.
    Deposit {
        /// 1 to 64 characters of `[A-Za-z0-9._-]`; also the event's Kafka key.
        #[schema(value_type = String, example = "acc-1")]
        account_id: AccountId,
        /// Minor units, an integer from 1 to 1000000000000.
        #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 1250)]
        amount: Amount,
        /// The idempotency key, scoped to the account; generated when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        command_id: Option<CommandId>,
    },
    /// Takes money out of an open account; never below 0.
    Withdraw {
        /// 1 to 64 characters of `[A-Za-z0-9._-]`; also the event's Kafka key.
        #[schema(value_type = String, example = "acc-1")]
        account_id: AccountId,
        /// Minor units, an integer from 1 to 1000000000000.
        #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 300)]
        amount: Amount,
        /// The idempotency key, scoped to the account; generated when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        command_id: Option<CommandId>,
    },
    /// Moves money from one open account to another: the source is debited when the
    /// projector applies the event (keyed by `from_account`), then the destination is
    /// credited by a follow-up event, or the source refunded.
    Transfer {
        /// The source; 1 to 64 characters of `[A-Za-z0-9._-]`; also the event's Kafka key.
        #[schema(value_type = String, example = "acc-1")]
        from_account: AccountId,
        /// The destination; never the source (`invalid_transfer`).
        #[schema(value_type = String, example = "acc-2")]
        to_account: AccountId,
        /// Minor units, an integer from 1 to 1000000000000.
        #[schema(value_type = u64, minimum = 1, maximum = 1_000_000_000_000_u64, example = 500)]
        amount: Amount,
        /// The idempotency key, scoped to the source account; generated when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        command_id: Option<CommandId>,
    },
}

impl From<&Command> for CommandRequest {
    fn from(c: &Command) -> Self {
        let (account_id, command_id) = (c.account_id.clone(), c.command_id.clone());
        match &c.kind {
            CommandKind::OpenAccount => CommandRequest::OpenAccount {
                account_id,
                command_id,
            },
            CommandKind::Deposit(amount) => CommandRequest::Deposit {
                account_id,
                amount: *amount,
                command_id,
            },
            CommandKind::Withdraw(amount) => CommandRequest::Withdraw {
                account_id,
                amount: *amount,
                command_id,
            },
            CommandKind::Transfer { to, amount } => CommandRequest::Transfer {
                from_account: account_id,
                to_account: to.clone(),
                amount: *amount,
                command_id,
            },
        }
    }
}

impl From<CommandRequest> for Command {
    fn from(r: CommandRequest) -> Self {
        let (account_id, command_id, kind) = match r {
            CommandRequest::OpenAccount {
                account_id,
                command_id,
            } => (account_id, command_id, CommandKind::OpenAccount),
            CommandRequest::Deposit {
                account_id,
                amount,
                command_id,
            } => (account_id, command_id, CommandKind::Deposit(amount)),
            CommandRequest::Withdraw {
                account_id,
                amount,
                command_id,
            } => (account_id, command_id, CommandKind::Withdraw(amount)),
            CommandRequest::Transfer {
                from_account,
                to_account,
                amount,
                command_id,
            } => (
                from_account,
                command_id,
                CommandKind::Transfer {
                    to: to_account,
                    amount,
                },
            ),
        };
        Command {
            account_id,
            command_id,
            kind,
        }
    }
}

/// `202`: the broker has acknowledged the command's event (acks=all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The command id, as given or as generated.
    #[schema(value_type = String, example = "c-42")]
    pub command_id: CommandId,
    /// The event's id, a UUID (v7 when the ingest made it).
    pub event_id: uuid::Uuid,
    /// The partition the event went to: murmur2 of the account id.
    pub partition: i32,
    /// The event's offset in that partition.
    pub offset: i64,
    /// Names the event's place in the log; pass it as `?after=` to read your own write.
    /// Opaque to clients.
    #[schema(example = "v1.2.41")]
    pub token: String,
}

/// `202` for a batch: one item per command, in input order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchResults {
    /// Each item is the single-command answer, or the error of that item alone.
    pub results: Vec<BatchItem>,
}

/// One command of a batch: accepted, or refused on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// Written and acknowledged.
    Accepted(Accepted),
    /// Refused; nothing of this item was written (unless the code is
    /// `log_unavailable`).
    Refused {
        /// Why.
        error: ErrorDetail,
    },
}

impl BatchItem {
    /// The item as a `Result`.
    pub fn into_result(self) -> Result<Accepted, ErrorDetail> {
        match self {
            BatchItem::Accepted(a) => Ok(a),
            BatchItem::Refused { error } => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_command_the_ingest_accepts() {
        let requests = [
            r#"{"type":"open_account","account_id":"acc-1"}"#,
            r#"{"type":"deposit","account_id":"acc-1","amount":1250}"#,
            r#"{"type":"withdraw","account_id":"acc-1","amount":300,"command_id":"c-42"}"#,
        ];
        for text in requests {
            let parsed: CommandRequest = serde_json::from_str(text).unwrap();
            let validated = Command::from_json_slice(text.as_bytes()).unwrap();
            assert_eq!(Command::from(parsed.clone()), validated, "{text}");
            assert_eq!(CommandRequest::from(&validated), parsed);
            let again = serde_json::to_vec(&parsed).unwrap();
            assert_eq!(Command::from_json_slice(&again).unwrap(), validated);
        }
    }

    #[test]
    fn batch_items_read_either_shape() {
        let body = r#"{"results":[
            {"command_id":"c-1","event_id":"0192a4f2-9c8e-7b3a-8f00-000000000001","partition":2,"offset":41,"token":"v1.2.41"},
            {"error":{"code":"invalid_amount","message":"amount must be at least 1"}}]}"#;
        let results: BatchResults = serde_json::from_str(body).unwrap();
        let items: Vec<_> = results
            .results
            .into_iter()
            .map(BatchItem::into_result)
            .collect();
        assert_eq!(items[0].as_ref().unwrap().offset, 41);
        assert_eq!(
            items[1].as_ref().unwrap_err().code,
            crate::ErrorCode::InvalidAmount
        );
    }
}
