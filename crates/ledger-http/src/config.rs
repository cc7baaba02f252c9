//! The flags every HTTP service takes besides its own: `#[command(flatten)]` them, as
//! both services do.

use crate::telemetry::LogFormat;

/// Authentication and logging.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServiceArgs {
    /// Bearer token required on /v1 routes; unset, they are open.
    #[arg(long, env = "LEDGER_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// For how long a command id stays a duplicate: both services take it, and must be given
/// the same.
#[derive(Clone, Debug, clap::Args)]
pub struct IdempotencyArgs {
    /// For how long, in event time, a command id is deduplicated per account: `unbounded`
    /// (the default: every outcome kept, at today's speed), or `24h`,
    /// `7d`, … (at least 1m), or `unbounded`. The projector prunes outcomes older than
    /// that; the ingest refuses (410 command_expired) a command whose id is a version-7
    /// UUID older than that, whose retry could no longer be recognised. A projector's
    /// store keeps the window it was built with.
    #[arg(long, env = "LEDGER_IDEMPOTENCY_WINDOW", default_value = "unbounded")]
    pub idempotency_window: ledger_domain::WindowSetting,
}

impl IdempotencyArgs {
    /// The window; `None`: unbounded.
    pub fn window(&self) -> Option<ledger_domain::IdempotencyWindow> {
        self.idempotency_window.0
    }
}
