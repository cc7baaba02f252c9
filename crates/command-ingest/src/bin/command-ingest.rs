//! `command-ingest` binary: parse flags, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use command_ingest::Config;

// Per-event allocations (sled nodes, rdkafka messages, JSON) are a visible share of
// the profile; mimalloc serves them faster than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger_http::telemetry::init(config.log_format);
    ledger_http::serve::run_until_signal("command-ingest", |shutdown| {
        command_ingest::run(config, shutdown)
    })
    .await
}
