//! `ledger-bench`: the measurements behind `scripts/bench.sh`.
//!
//! Each subcommand measures one thing against services and a broker that are already
//! running (the script starts them) and prints one JSON object of results on stdout;
//! progress and errors go to stderr. The script runs Kafka's own perf tools next to
//! these, so every number has a raw-Kafka baseline from the same run on the same
//! machine. Not part of the test suite.
//!
//! `report` is the exception: it measures nothing, and draws a run's JSON (in the
//! script's output folder) as an HTML page, so a past run's report can be made again
//! without running anything.

mod e2e;
mod fill;
mod http;
mod ingest;
mod peer;
mod procfs;
mod prom;
mod recovery;
mod replay;
mod report;
mod stats;
mod store;
mod workload;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::procfs::{parse_watched, Watched};

// The ingest's allocator. For the store-ceiling step it is the faster of the two
// measured (the projector itself stays on glibc malloc for its memory: see README,
// Performance), so that step is a ceiling in this respect too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks of the ledger services, side by side with raw Kafka.
#[derive(Parser, Debug)]
#[command(name = "ledger-bench", version, about, long_about = None)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Size in bytes of a typical encoded event (the record size of the raw baseline), and
    /// the envelope's test vector as the encoder writes it (for a peer's self-test).
    EventSize,
    /// A free TCP port on 127.0.0.1 (plain number, for scripts).
    FreePort,
    /// The machine: CPU, cores, memory, kernel, load average.
    MachineInfo,
    /// Waits until GET URL answers 200.
    WaitReady {
        /// Full URL, e.g. http://127.0.0.1:8080/readyz.
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// Creates a topic (6 partitions by default, retention.ms=-1); fails if it exists.
    CreateTopic {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
    },
    /// Deletes topics (those a run created), so repeated runs do not fill the disk.
    DeleteTopics {
        /// Bootstrap servers.
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        /// The topics.
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Creates a fresh topic and fills it with encoded events, straight to Kafka.
    Fill {
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Partitions of the new topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Events to write: one open per account first, then deposits and withdrawals.
        #[arg(long)]
        events: u64,
        /// Accounts.
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
        /// Producer linger.ms (large: this is bulk loading, not the ingest).
        #[arg(long, default_value_t = 100)]
        linger_ms: u32,
        /// Workload seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Single commands, closed loop over keep-alive connections: throughput, latency.
    HttpSingle {
        #[command(flatten)]
        load: LoadArgs,
        /// Concurrent connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Batches of commands, closed loop: items per second.
    HttpBatch {
        #[command(flatten)]
        load: LoadArgs,
        /// Concurrent connections (each with one batch in flight; the ingest refuses
        /// past --max-in-flight items, 20 000 by default).
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Commands per batch.
        #[arg(long, default_value_t = 1000)]
        batch_size: usize,
    },
    /// Freezes the broker (SIGSTOP) past the ingest's delivery timeout under a load of
    /// single commands, thaws it, and times the ingest's recovery.
    Recovery {
        /// `http://IP:PORT` of the ingest.
        #[arg(long)]
        url: String,
        /// The broker JVM's pid.
        #[arg(long)]
        broker_pid: i32,
        /// Seconds the broker stays frozen.
        #[arg(long, default_value_t = 8)]
        freeze_s: u64,
        /// Concurrent connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Accounts the commands touch.
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
    },
    /// Times a fresh projector replaying a topic until everything is applied.
    Replay(ReplayArgs),
    /// Runs a peer (another program doing the projector's job, e.g. the Kafka Streams
    /// application in bench/kstreams) to completion: its own JSON result line, plus its
    /// peak RSS and CPU time.
    Peer {
        /// Where the peer's stderr goes.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Write the peer's pid here (so a script can always clean up).
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Kill it and fail after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
        /// Processes whose CPU use to report, as NAME=PID (repeatable).
        #[arg(long = "watch", value_parser = parse_watched)]
        watched: Vec<Watched>,
        /// Bootstrap servers, to sample the peer's progress (with --group and --topic).
        #[arg(long, requires_all = ["group", "topic"])]
        brokers: Option<String>,
        /// The peer's consumer group (a Kafka Streams application.id): its committed
        /// offsets on --topic, sampled every 250 ms, are the peer's progress over time.
        #[arg(long, requires_all = ["brokers", "topic"])]
        group: Option<String>,
        /// The topic the peer consumes.
        #[arg(long, requires_all = ["brokers", "group"])]
        topic: Option<String>,
        /// The peer's command line, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The projector's store alone, no Kafka: replay events through the real
    /// `Store::apply_batch`, then the same keys as plain sled inserts (the ceiling).
    StoreCeiling {
        /// A fresh directory (removed afterwards).
        #[arg(long)]
        dir: PathBuf,
        /// Events.
        #[arg(long, default_value_t = 300_000)]
        events: u64,
        /// Accounts.
        #[arg(long, default_value_t = 10_000)]
        accounts: u64,
        /// Events per batch, as the projector's --batch-max-events.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
        /// sled's cache in MiB, as the projector's --cache-mb.
        #[arg(long, default_value_t = 64)]
        cache_mb: u64,
        /// Random v4 command ids (clients' own) instead of the ingest's time-ordered v7.
        #[arg(long)]
        random_ids: bool,
        /// The store's idempotency window, as the projector's --idempotency-window.
        #[arg(long, default_value = "unbounded")]
        idempotency_window: ledger_domain::WindowSetting,
        /// Event time between consecutive events, in ms, so that the events span
        /// history (0: all at one moment, as a burst).
        #[arg(long, default_value_t = 0)]
        event_spacing_ms: i64,
        /// Workload seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Writes the HTML report of a run (charts and the summary table) from the JSON that
    /// scripts/bench.sh left in DIR: summary.json and steps/*.json.
    Report {
        /// The run's output folder.
        #[arg(long, default_value = "target/bench")]
        dir: PathBuf,
        /// Where to write the page [default: DIR/report.html].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Visibility lag at a fixed offered rate: from each 202 until the projector has it.
    E2eLag {
        /// The ingest.
        #[arg(long)]
        ingest_url: String,
        /// The projector (consuming the ingest's topic).
        #[arg(long)]
        projector_url: String,
        /// Commands offered per second (open loop).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Seconds at that rate before measuring.
        #[arg(long, default_value_t = 2.0)]
        warmup_s: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 30.0)]
        duration_s: f64,
        /// Accounts opened first, then used.
        #[arg(long, default_value_t = 1000)]
        accounts: u64,
        /// timeout_ms of each visibility query.
        #[arg(long, default_value_t = 5000)]
        wait_timeout_ms: u64,
        /// Workload seed.
        #[arg(long, default_value_t = 11)]
        seed: u64,
        /// Processes whose CPU use to report, as NAME=PID (repeatable).
        #[arg(long = "watch", value_parser = parse_watched)]
        watched: Vec<Watched>,
    },
}

#[derive(clap::Args, Debug)]
struct KafkaArgs {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic.
    #[arg(long)]
    topic: String,
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// The ingest's base URL.
    #[arg(long)]
    url: String,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 30.0)]
    duration_s: f64,
    /// Accounts the commands are spread over.
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Processes whose CPU use to report, as NAME=PID (repeatable).
    #[arg(long = "watch", value_parser = parse_watched)]
    watched: Vec<Watched>,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// The projector binary to start; or give --url and --pid of a running one.
    #[arg(long, conflicts_with_all = ["url", "pid"], requires = "topic")]
    projector_bin: Option<PathBuf>,
    /// Bootstrap servers, for the spawned projector.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic to replay, for the spawned projector.
    #[arg(long)]
    topic: Option<String>,
    /// The projector's sled directory: must be fresh for a spawned one; its size is
    /// reported.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Consumer group of the spawned projector [default: a unique one].
    #[arg(long)]
    group_id: Option<String>,
    /// Listen address of the spawned projector [default: a free port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the spawned projector's output goes.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Write the spawned projector's pid here (so a script can always clean up).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// A running projector's base URL.
    #[arg(long, requires = "pid")]
    url: Option<String>,
    /// A running projector's pid.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Stop the attached projector at the end (a spawned one is always stopped).
    #[arg(long)]
    stop: bool,
    /// Events the topic must hold.
    #[arg(long)]
    expect_events: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
    /// Processes whose CPU use to report, as NAME=PID (repeatable).
    #[arg(long = "watch", value_parser = parse_watched)]
    watched: Vec<Watched>,
    /// Extra projector arguments, after `--`.
    #[arg(last = true)]
    extra: Vec<String>,
}

/// Like ledger-testkit's `free_port` (see Cargo.toml for why not that one).
fn free_port() -> anyhow::Result<u16> {
    // Bound and released at once: a small race with other processes, which the
    // service's own bind failure would report clearly.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

async fn replay(a: ReplayArgs) -> anyhow::Result<Value> {
    let subject = match (a.projector_bin, a.url, a.pid) {
        (Some(bin), _, _) => {
            let topic = a.topic.context("--topic is needed to start a projector")?;
            let data_dir = a
                .data_dir
                .clone()
                .context("--data-dir is needed to start a projector")?;
            let listen = match a.listen {
                Some(l) => l,
                None => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            };
            let group = a
                .group_id
                .unwrap_or_else(|| format!("bench-replay-{}", uuid::Uuid::new_v4()));
            let mut args: Vec<String> = [
                "--brokers",
                &a.brokers,
                "--topic",
                &topic,
                "--data-dir",
                &data_dir.to_string_lossy(),
                "--group-id",
                &group,
                "--listen",
                &listen.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(a.extra);
            replay::Subject::Spawn {
                bin,
                args,
                listen,
                log: a.log_file,
                pid_file: a.pid_file,
            }
        }
        (None, Some(url), Some(pid)) => replay::Subject::Attach { url, pid },
        _ => anyhow::bail!("give --projector-bin, or --url and --pid"),
    };
    replay::run(replay::ReplaySpec {
        subject,
        data_dir: a.data_dir,
        expect_events: a.expect_events,
        timeout: Duration::from_secs(a.timeout_s),
        watched: a.watched,
        stop: a.stop,
    })
    .await
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<Option<Value>> {
    Ok(Some(match cmd {
        Cmd::EventSize => {
            let e = workload::typical_event();
            let bytes = ledger_eventlog::encode(&e);
            let vector = ledger_eventlog::encode(&ledger_eventlog::codec::test_vector_event());
            json!({
                "event_size_bytes": bytes.len(),
                "key_bytes": e.account_id.as_str().len(),
                "example": format!("{e:?}"),
                "test_vector_hex": vector.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            })
        }
        Cmd::FreePort => {
            println!("{}", free_port()?);
            return Ok(None);
        }
        Cmd::MachineInfo => procfs::machine_info(),
        Cmd::WaitReady { url, timeout_s } => {
            let (base, path) = match url
                .strip_prefix("http://")
                .and_then(|r| r.find('/').map(|i| i + 7))
            {
                Some(i) => (&url[..i], &url[i..]),
                None => (url.as_str(), "/"),
            };
            http::Pool::new(base)?
                .wait_ok(path, Duration::from_secs(timeout_s))
                .await?;
            json!({"ready": url})
        }
        Cmd::CreateTopic { kafka, partitions } => {
            fill::create_topic(&kafka.brokers, &kafka.topic, partitions, true).await?
        }
        Cmd::DeleteTopics { brokers, topics } => fill::delete_topics(&brokers, &topics).await?,
        Cmd::Fill {
            kafka,
            partitions,
            events,
            accounts,
            linger_ms,
            seed,
        } => {
            fill::fill(&fill::FillSpec {
                brokers: &kafka.brokers,
                topic: &kafka.topic,
                partitions,
                events,
                accounts,
                seed,
                linger_ms,
            })
            .await?
        }
        Cmd::HttpSingle { load, connections } => {
            // One body per in-flight slot and then some, so consecutive requests of a
            // connection differ without any work while measuring.
            let bodies = workload::single_bodies(connections * 64, load.accounts, 1);
            ingest::run(load_spec(load, "/v1/commands", connections), bodies, 1).await?
        }
        Cmd::HttpBatch {
            load,
            connections,
            batch_size,
        } => {
            let bodies = workload::batch_bodies(connections * 2, batch_size, load.accounts, 2);
            ingest::run(
                load_spec(load, "/v1/commands/batch", connections),
                bodies,
                batch_size,
            )
            .await?
        }
        Cmd::Recovery {
            url,
            broker_pid,
            freeze_s,
            connections,
            accounts,
        } => {
            recovery::run(recovery::RecoverySpec {
                url,
                broker_pid,
                connections,
                freeze: Duration::from_secs(freeze_s),
                accounts,
            })
            .await?
        }
        Cmd::Replay(a) => replay(a).await?,
        Cmd::Peer {
            log_file,
            pid_file,
            timeout_s,
            watched,
            brokers,
            group,
            topic,
            command,
        } => {
            let progress = match (brokers, group, topic) {
                (Some(brokers), Some(group), Some(topic)) => Some(peer::GroupProgress {
                    brokers,
                    group,
                    topic,
                }),
                _ => None,
            };
            let spec = peer::PeerSpec {
                command,
                log: log_file,
                pid_file,
                timeout: Duration::from_secs(timeout_s),
                watched,
                progress,
            };
            tokio::task::spawn_blocking(move || peer::run(spec)).await??
        }
        Cmd::StoreCeiling {
            dir,
            events,
            accounts,
            batch,
            cache_mb,
            random_ids,
            seed,
            idempotency_window,
            event_spacing_ms,
        } => {
            let spec = store::StoreSpec {
                dir,
                events,
                accounts,
                batch: batch.max(1),
                cache_mb,
                random_ids,
                seed,
                window: idempotency_window.0,
                event_spacing_ms,
            };
            tokio::task::spawn_blocking(move || store::run(&spec)).await??
        }
        Cmd::Report { dir, out } => {
            let out = out.unwrap_or_else(|| dir.join("report.html"));
            let written = report::write(&dir, &out)?;
            json!({"report": out, "charts": written.charts, "bytes": written.bytes})
        }
        Cmd::E2eLag {
            ingest_url,
            projector_url,
            rate,
            warmup_s,
            duration_s,
            accounts,
            wait_timeout_ms,
            seed,
            watched,
        } => {
            e2e::run(e2e::E2eSpec {
                ingest_url,
                projector_url,
                rate,
                warmup: secs(warmup_s),
                duration: secs(duration_s),
                accounts,
                wait_timeout_ms,
                seed,
                watched,
            })
            .await?
        }
    }))
}

fn load_spec(load: LoadArgs, path: &'static str, connections: usize) -> ingest::LoadSpec {
    ingest::LoadSpec {
        url: load.url,
        path,
        connections: connections.max(1),
        warmup: secs(load.warmup_s),
        duration: secs(load.duration_s),
        watched: load.watched,
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(v) = rt.block_on(dispatch(cli.cmd))? {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
