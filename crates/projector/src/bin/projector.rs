//! `projector` binary: parse flags, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use projector::Config;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger_http::telemetry::init(config.service.log_format);
    ledger_http::serve::run_until_signal("projector", |shutdown| projector::run(config, shutdown))
        .await
}
