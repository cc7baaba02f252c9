//! How a run of `ledger` ends: [`Exit`] when it ran to its end, [`CliError`] when it
//! failed, each with its process exit code (0 success, 1 rejected or mismatch, 2 usage,
//! 3 service unavailable).

use std::path::PathBuf;

use ledger_api::ErrorCode;
use ledger_domain::{AccountId, CommandId};
use ledger_eventlog::tail::TailError;

use crate::client::ClientError;
use crate::runner::Aborted;

/// How a run ended, when it ran to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Everything as asked: exit 0.
    Success,
    /// A command was rejected, or input lines were invalid: exit 1.
    Rejected,
    /// The projector disagrees with the model, or a rebuild with the live store: exit 1.
    Mismatch,
    /// An operation the service ran could not finish (a rebuild): exit 1.
    Failed,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Rejected | Exit::Mismatch | Exit::Failed => 1,
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `ledger load` stopped before its end.
    #[error(transparent)]
    Aborted(#[from] Aborted),
    /// The arguments cannot be used.
    #[error("{0}")]
    Usage(String),
    /// `ledger tail` could not read the log.
    #[error(transparent)]
    Tail(#[from] TailError),
    /// The input file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service refused an operation for a reason the user can act on (a rebuild
    /// already running, an account that is not parked): exit 1.
    #[error("{message}")]
    Refused {
        /// The contract's error code.
        code: ErrorCode,
        /// What it means, and what to do.
        message: String,
    },
    /// `ledger top` could not drive the terminal.
    #[error("cannot drive the terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// `--wait` gave up on a transfer that is debited but neither credited nor refunded.
    #[error(
        "transfer {command_id} of {account} is still pending after {waited_s} s: debited, \
         not yet credited to {to} nor refunded; see `ledger status {command_id} --account {account}`"
    )]
    StillPending {
        /// The transfer's command id.
        command_id: CommandId,
        /// Its source.
        account: AccountId,
        /// Its destination.
        to: AccountId,
        /// How long `--wait` waited.
        waited_s: u64,
    },
}

impl CliError {
    /// The process exit code: 2 usage, 3 service unavailable, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(e) => e.exit_code(),
            CliError::Aborted(a) => a.error.exit_code(),
            CliError::Usage(_) | CliError::Read { .. } => 2,
            CliError::Tail(TailError::NoSuchPartition { .. }) => 2,
            CliError::Tail(_) | CliError::StillPending { .. } => 3,
            CliError::Refused { .. } | CliError::Terminal(_) => 1,
        }
    }

    /// A stable code for machine-readable output.
    pub fn code(&self) -> &str {
        match self {
            CliError::Client(e) => e.code(),
            CliError::Aborted(a) => a.error.code(),
            CliError::Usage(_) => "usage",
            CliError::Read { .. } => "unreadable_input",
            CliError::Tail(TailError::NoSuchPartition { .. }) => "no_such_partition",
            CliError::Tail(_) => "log_unreachable",
            CliError::StillPending { .. } => "still_pending",
            CliError::Refused { code, .. } => code.as_str(),
            CliError::Terminal(_) => "terminal",
        }
    }
}
