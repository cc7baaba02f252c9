//! `command-ingest` binary: parse flags, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use command_ingest::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger_http::telemetry::init(config.log_format);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        ledger_http::serve::termination_signal().await;
        tracing::info!("termination signal received; shutting down");
        signal.cancel();
    });
    match command_ingest::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "command-ingest failed");
            eprintln!("command-ingest: {e}");
            ExitCode::FAILURE
        }
    }
}
