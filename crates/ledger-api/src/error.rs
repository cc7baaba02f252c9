//! Every error code of the HTTP API, with the status it is answered with and what it
//! tells the client, and the `{"error":{"code","message"}}` body that carries it.
//!
//! A code always comes with the same status, so the status is a property of the code
//! and no handler picks one by hand.

use http::StatusCode;
use ledger_domain::ValidationError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A stable, machine-readable error code.
///
/// Clients match on the code, never on the message. A client that meets a code it does
/// not know (from a newer service) falls back on the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or not of the expected shape.
    InvalidJson,
    /// 400: a command `type` this service does not know.
    UnknownCommand,
    /// 400: a required field is absent.
    MissingField,
    /// 400: a field the command does not have.
    UnknownField,
    /// 400: `amount` is not an integer from 1 to 10^12.
    InvalidAmount,
    /// 400: `account_id` is not 1 to 64 of `[A-Za-z0-9._-]`.
    InvalidAccountId,
    /// 400: `command_id` is not 1 to 128 of `[A-Za-z0-9._:-]`.
    InvalidCommandId,
    /// 400: a transfer's `from_account` and `to_account` are the same account.
    InvalidTransfer,
    /// 400: `?after=` is not a token this product issued.
    InvalidToken,
    /// 400: `?timeout_ms=` is not an integer.
    InvalidTimeout,
    /// 401: the route needs `Authorization: Bearer <token>`.
    Unauthorized,
    /// 404: no account of that id has been projected.
    AccountNotFound,
    /// 404: no command of that id has been applied (yet).
    CommandNotFound,
    /// 404: no such route.
    NotFound,
    /// 409: more than one account used this command id (an idempotency key is per
    /// account); name one with `?account_id=`.
    AmbiguousCommandId,
    /// 405: the route does not take that method.
    MethodNotAllowed,
    /// 413: the body or the batch is larger than allowed.
    PayloadTooLarge,
    /// 415: the body is not declared as `application/json`.
    UnsupportedMediaType,
    /// 500: a fault of the service, never of the request.
    Internal,
    /// 503: the broker did not acknowledge in time; the command may or may not be in the
    /// log, and retrying it with the same command id is safe.
    LogUnavailable,
    /// 503 with `Retry-After`: too many commands in flight; nothing was written.
    Overloaded,
    /// 503 with `Retry-After`: `?after=` was not reached within `timeout_ms`.
    NotYetConsistent,
    /// 503 with `Retry-After`: the service cannot serve yet (`/readyz`).
    NotReady,
    /// 503: the request took longer than the service allows.
    Timeout,
    /// 503 with `Retry-After`: the account's partition is moving between projector
    /// instances and no instance can serve it yet; retrying shortly will succeed.
    PartitionMoving,
    /// 400: `?partition=` is not a partition of the topic.
    InvalidPartition,
    /// 404: the account is not parked (nothing waits to be retried or skipped).
    AccountNotParked,
    /// 409: a rebuild is already running on this instance; `GET /v1/admin/rebuild`
    /// follows it.
    RebuildRunning,
    /// 409: a rebuild cannot start while partitions of this instance are paused: it must
    /// reach the live store's offsets, which a paused partition never moves to.
    PartitionsPaused,
    /// 410: the command id is a version-7 UUID older than the idempotency window: its
    /// outcome, if it had one, was pruned (a lookup), or a retry this late could no
    /// longer be told from a new command (a command).
    CommandExpired,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownCommand,
        ErrorCode::MissingField,
        ErrorCode::UnknownField,
        ErrorCode::InvalidAmount,
        ErrorCode::InvalidAccountId,
        ErrorCode::InvalidCommandId,
        ErrorCode::InvalidTransfer,
        ErrorCode::InvalidToken,
        ErrorCode::InvalidTimeout,
        ErrorCode::Unauthorized,
        ErrorCode::AccountNotFound,
        ErrorCode::CommandNotFound,
        ErrorCode::NotFound,
        ErrorCode::AmbiguousCommandId,
        ErrorCode::MethodNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::Internal,
        ErrorCode::LogUnavailable,
        ErrorCode::Overloaded,
        ErrorCode::NotYetConsistent,
        ErrorCode::NotReady,
        ErrorCode::Timeout,
        ErrorCode::PartitionMoving,
        ErrorCode::InvalidPartition,
        ErrorCode::AccountNotParked,
        ErrorCode::RebuildRunning,
        ErrorCode::PartitionsPaused,
        ErrorCode::CommandExpired,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::InvalidAmount => "invalid_amount",
            ErrorCode::InvalidAccountId => "invalid_account_id",
            ErrorCode::InvalidCommandId => "invalid_command_id",
            ErrorCode::InvalidTransfer => "invalid_transfer",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::InvalidTimeout => "invalid_timeout",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AccountNotFound => "account_not_found",
            ErrorCode::CommandNotFound => "command_not_found",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AmbiguousCommandId => "ambiguous_command_id",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Internal => "internal",
            ErrorCode::LogUnavailable => "log_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::NotYetConsistent => "not_yet_consistent",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PartitionMoving => "partition_moving",
            ErrorCode::InvalidPartition => "invalid_partition",
            ErrorCode::AccountNotParked => "account_not_parked",
            ErrorCode::RebuildRunning => "rebuild_running",
            ErrorCode::PartitionsPaused => "partitions_paused",
            ErrorCode::CommandExpired => "command_expired",
        }
    }

    /// The HTTP status a service answers this code with.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::UnknownCommand
            | ErrorCode::MissingField
            | ErrorCode::UnknownField
            | ErrorCode::InvalidAmount
            | ErrorCode::InvalidAccountId
            | ErrorCode::InvalidCommandId
            | ErrorCode::InvalidTransfer
            | ErrorCode::InvalidToken
            | ErrorCode::InvalidTimeout
            | ErrorCode::InvalidPartition => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::AccountNotFound
            | ErrorCode::CommandNotFound
            | ErrorCode::NotFound
            | ErrorCode::AccountNotParked => StatusCode::NOT_FOUND,
            ErrorCode::AmbiguousCommandId
            | ErrorCode::RebuildRunning
            | ErrorCode::PartitionsPaused => StatusCode::CONFLICT,
            ErrorCode::CommandExpired => StatusCode::GONE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::LogUnavailable
            | ErrorCode::Overloaded
            | ErrorCode::NotYetConsistent
            | ErrorCode::NotReady
            | ErrorCode::Timeout
            | ErrorCode::PartitionMoving => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whether the request certainly wrote nothing, so that retrying it cannot write a
    /// command twice. Only `log_unavailable` and `timeout` leave that open.
    pub const fn wrote_nothing(self) -> bool {
        !matches!(self, ErrorCode::LogUnavailable | ErrorCode::Timeout)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&ValidationError> for ErrorCode {
    fn from(e: &ValidationError) -> Self {
        match e {
            ValidationError::InvalidJson(_) => ErrorCode::InvalidJson,
            ValidationError::UnknownCommand(_) => ErrorCode::UnknownCommand,
            ValidationError::MissingField(_) => ErrorCode::MissingField,
            ValidationError::UnknownField(_) => ErrorCode::UnknownField,
            ValidationError::InvalidAmount(_) => ErrorCode::InvalidAmount,
            ValidationError::InvalidAccountId(_) => ErrorCode::InvalidAccountId,
            ValidationError::InvalidCommandId(_) => ErrorCode::InvalidCommandId,
            ValidationError::InvalidTransfer(_) => ErrorCode::InvalidTransfer,
        }
    }
}

/// The body of every error answer: `{"error":{"code":"…","message":"…"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One error: the code to match on and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable; see [`ErrorCode`].
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl ErrorBody {
    /// The body of this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_domain::Command;

    fn code(body: &str) -> &'static str {
        let e = Command::from_json_slice(body.as_bytes()).unwrap_err();
        ErrorCode::from(&e).as_str()
    }

    #[test]
    fn every_invalid_command_gets_its_own_code() {
        let table: &[(&str, &str)] = &[
            ("", "invalid_json"),
            ("{", "invalid_json"),
            ("[]", "invalid_json"),
            ("42", "invalid_json"),
            (r#"{"account_id":"a"}"#, "missing_field"),
            (r#"{"type":"deposit","account_id":"a"}"#, "missing_field"),
            (r#"{"type":"deposit","amount":5}"#, "missing_field"),
            (
                r#"{"type":"close_account","account_id":"a"}"#,
                "unknown_command",
            ),
            (r#"{"type":7,"account_id":"a"}"#, "unknown_command"),
            (
                r#"{"type":"open_account","account_id":"a","amount":5}"#,
                "unknown_field",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":5,"memo":"x"}"#,
                "unknown_field",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":0}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":-5}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":1.5}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":10.0}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":1e3}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":"5"}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":1000000000001}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"deposit","account_id":"a","amount":99999999999999999999999}"#,
                "invalid_amount",
            ),
            (
                r#"{"type":"open_account","account_id":""}"#,
                "invalid_account_id",
            ),
            (
                r#"{"type":"open_account","account_id":"a b"}"#,
                "invalid_account_id",
            ),
            (
                r#"{"type":"open_account","account_id":5}"#,
                "invalid_account_id",
            ),
            (
                r#"{"type":"open_account","account_id":"a","command_id":""}"#,
                "invalid_command_id",
            ),
            (
                r#"{"type":"open_account","account_id":"a","command_id":7}"#,
                "invalid_command_id",
            ),
        ];
        for (body, want) in table {
            assert_eq!(code(body), *want, "body {body}");
        }
    }

    #[test]
    fn the_wire_text_is_the_serde_name_for_every_code() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn every_code_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} listed twice");
        }
    }

    #[test]
    fn a_code_this_version_does_not_know_does_not_parse() {
        let body =
            serde_json::from_str::<ErrorBody>(r#"{"error":{"code":"quantum_flux","message":"m"}}"#);
        assert!(body.is_err());
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ErrorCode::InvalidAmount.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ErrorCode::Overloaded.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ErrorCode::PayloadTooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(ErrorCode::CommandNotFound.status(), StatusCode::NOT_FOUND);
        assert!(ErrorCode::Overloaded.wrote_nothing());
        assert!(!ErrorCode::LogUnavailable.wrote_nothing());
    }
}
