//! `projector` binary: parse flags, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use projector::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger_http::telemetry::init(config.log_format);
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        ledger_http::serve::termination_signal().await;
        tracing::info!("termination signal received; finishing the batch in hand");
        signal.cancel();
    });
    match projector::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "projector failed");
            eprintln!("projector: {e}");
            ExitCode::FAILURE
        }
    }
}
