//! `ledger`, the command-line tool of the ledger: send commands to command-ingest, query
//! the projector, generate a reproducible load and verify the projection against a
//! model of what was accepted, print the log itself, operate the projector (`admin`),
//! and watch both services live (`top`).
//!
//! Exit codes: 0 success, 1 rejected or mismatch, 2 usage error, 3 service unavailable.

mod admin;
mod cli;
mod client;
mod commands;
mod error;
mod load;
mod output;
mod prometheus;
mod runner;
mod tail;
mod top;
mod verify;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version: exit 0
        Err(e) => {
            // A usage error: clap's message on stderr, exit 2; with --json, the error
            // is also the JSON document on stdout.
            let _ = e.print();
            if std::env::args_os().any(|a| a == "--json") {
                let rendered = e.render().to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                let message = first.strip_prefix("error: ").unwrap_or(first);
                println!(
                    "{}",
                    serde_json::json!({"error": {"code": "usage", "message": message}, "exit_code": 2})
                );
            }
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LEDGER_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let out = output::Output::new(cli.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error("runtime", &format!("{e:#}"), 1);
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(commands::run(cli)) {
        Ok(exit) => exit.code(),
        Err(e) => {
            let code = e.exit_code();
            out.error(e.code(), &e.to_string(), code);
            code
        }
    };
    // Do not wait for a blocked stdin reader or abandoned probes.
    runtime.shutdown_background();
    ExitCode::from(code)
}
