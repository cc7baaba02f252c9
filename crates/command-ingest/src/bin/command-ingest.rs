//! `command-ingest` binary: parse flags, start logging, run until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use command_ingest::Config;

// Per-command allocations (JSON items, events, rdkafka messages and their CloudEvents
// headers, delivery futures) are a visible share of the batch endpoint's profile; mimalloc
// serves them faster than glibc. With the workspace's `override` feature it also serves
// librdkafka's own mallocs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    ledger_http::telemetry::init(config.service.log_format);
    ledger_http::serve::run_until_signal("command-ingest", |shutdown| {
        command_ingest::run(config, shutdown)
    })
    .await
}
