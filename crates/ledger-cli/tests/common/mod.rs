//! What the black-box tests of the `ledger` binary share: command-ingest and the
//! projector served in this process, on a topic of their own, with an auth token, on the
//! real broker of `LEDGER_TEST_BROKERS`; and the binary, pointed at them or at nothing.
#![allow(dead_code)] // each test binary uses a different subset

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The bearer token both services require.
pub const TOKEN: &str = "cli-test-token";
/// How long the services may take to be ready.
const READY: Duration = Duration::from_secs(60);

/// A running command-ingest and projector.
pub struct Services {
    /// The ingest's base URL.
    pub ingest: String,
    /// The projector's base URL.
    pub projector: String,
    /// The broker's address.
    pub brokers: String,
    /// The topic they use.
    pub topic: String,
}

impl Services {
    /// Starts both services on a fresh topic named after `name`, with `partitions`
    /// partitions (the ingest's default when `None`), on a thread whose runtime lives as
    /// long as the test process. Call once per test binary (behind a `OnceLock`).
    pub fn start(name: &str, partitions: Option<i32>) -> Services {
        let brokers = ledger_testkit::brokers();
        let topic = ledger_testkit::unique_topic(name);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("a runtime starts");
            rt.block_on(async move {
                let shutdown = CancellationToken::new();

                let mut ingest = command_ingest::Config::for_brokers(&brokers);
                ingest.kafka.topic = topic.clone();
                ingest.service.auth_token = Some(TOKEN.into());
                if let Some(p) = partitions {
                    ingest.partitions = p;
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let ingest_url = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(command_ingest::serve(ingest, listener, shutdown.clone()));
                ledger_testkit::wait_ready(&ingest_url, READY).await;

                let dir = store_dir();
                let mut proj = projector::Config::for_brokers(&brokers, dir.path());
                proj.kafka.topic = topic.clone();
                proj.group_id = format!("{topic}.projector");
                proj.service.auth_token = Some(TOKEN.into());
                let store = projector::open_store(&proj).unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let projector_url = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(projector::serve(proj, store, listener, shutdown.clone()));
                ledger_testkit::wait_ready(&projector_url, READY).await;

                tx.send(Services {
                    ingest: ingest_url,
                    projector: projector_url,
                    brokers,
                    topic,
                })
                .unwrap();
                // Serve until the test process exits.
                std::future::pending::<()>().await;
                drop(dir);
            });
        });
        rx.recv().expect("the services start")
    }

    /// The binary, pointed at the services, with the token.
    pub fn ledger(&self) -> Command {
        let mut c = bare();
        c.env("LEDGER_INGEST_URL", &self.ingest)
            .env("LEDGER_PROJECTOR_URL", &self.projector)
            .env("LEDGER_AUTH_TOKEN", TOKEN);
        c
    }
}

/// The projector's store for this run. The services outlive every test, so the
/// directory is never dropped: stale ones of earlier runs are removed instead.
fn store_dir() -> tempfile::TempDir {
    const PREFIX: &str = "ledger-cli-test-store-";
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let stale = std::time::SystemTime::now() - Duration::from_secs(3600);
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < stale);
        if old && entry.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(root)
        .unwrap()
}

/// The variables the binary reads, which the test's own environment must not lend it.
pub const LEDGER_VARS: [&str; 6] = [
    "LEDGER_INGEST_URL",
    "LEDGER_PROJECTOR_URL",
    "LEDGER_AUTH_TOKEN",
    "LEDGER_LOG",
    "KAFKA_BROKERS",
    "LEDGER_TOPIC",
];

/// The binary, with none of [`LEDGER_VARS`] set.
pub fn bare() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ledger"));
    for var in LEDGER_VARS {
        c.env_remove(var);
    }
    c
}

/// A port nothing listens on.
pub fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", ledger_testkit::free_port())
}

/// A unique id for this test's accounts and commands.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn run(cmd: &mut Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("the binary runs")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON document ({e}): {}\nstderr: {}",
            stdout(o),
            stderr(o)
        )
    })
}
