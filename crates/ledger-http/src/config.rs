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
