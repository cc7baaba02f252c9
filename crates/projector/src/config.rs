//! The projector's configuration: flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;

use ledger_eventlog::config::KafkaArgs;
use ledger_eventlog::consume::PoisonPolicy;
use ledger_eventlog::KafkaConfig;
use ledger_http::config::{IdempotencyArgs, ServiceArgs};

/// What to do with an event that does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnPoison {
    /// Park the account of an event a newer version may read; dead-letter the rest.
    Park,
    /// Send it to the dead-letter topic and move on.
    DeadLetter,
    /// Stop with a non-zero exit, without moving past it.
    Halt,
}

/// `projector` consumes the event topic into a sled projection, commit-after-apply, and
/// serves the query API.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "projector", version, about, long_about = None)]
pub struct Config {
    /// Brokers, topic and librdkafka properties.
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Authentication and logging.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The idempotency window.
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,
    /// The dead-letter topic [default: <topic>.dlq].
    #[arg(long, env = "LEDGER_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Replication factor of the dead-letter topic when this service creates it.
    #[arg(long, env = "LEDGER_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=32))]
    pub replication_factor: i32,
    /// The consumer group.
    #[arg(long, env = "PROJECTOR_GROUP_ID", default_value = "ledger-projector")]
    pub group_id: String,
    /// This instance's id in its group: its static group membership (group.instance.id),
    /// so that a restarted instance takes its partitions back at once, without a
    /// rebalance, and its name in the group's directory and in `Ledger-Served-By`.
    /// [default: generated on the first start and kept in --data-dir]. Two live
    /// processes must never share one: the group fences one of them, which then stops
    /// (so never copy a data directory to run beside its original).
    #[arg(long, env = "PROJECTOR_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Address to serve HTTP on.
    #[arg(long, env = "PROJECTOR_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// The URL the other instances of the group reach this one at [default: http:// and
    /// the address bound, with 127.0.0.1 for an unspecified address].
    #[arg(long, env = "PROJECTOR_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Where the sled store lives. One projector per directory.
    #[arg(long, env = "PROJECTOR_DATA_DIR", default_value = "./data/projector")]
    pub data_dir: PathBuf,
    /// sled's page cache, in MiB. Small by default: applying barely reads back (the
    /// dedupe checks miss, accounts are cached per batch), so a larger cache mostly
    /// raises memory use; queries read through the OS page cache either way.
    #[arg(long, env = "PROJECTOR_CACHE_MB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub cache_mb: u64,
    /// How many partitions are applied in parallel, each on a thread of its own (default:
    /// the number of cores). Order within a partition is always kept.
    #[arg(long, env = "PROJECTOR_WORKERS", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub workers: Option<u64>,
    /// Most events applied in one batch (across partitions; one flush covers them all).
    #[arg(long, env = "PROJECTOR_BATCH_MAX_EVENTS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_max_events: u64,
    /// Longest a batch waits for more events once it has one, in ms. Events already
    /// fetched still join it past that, up to --batch-max-events, so a backlog is applied
    /// in full batches.
    #[arg(long, env = "PROJECTOR_BATCH_MAX_MS", default_value_t = 5)]
    pub batch_max_ms: u64,
    /// What to do with an event that cannot be applied. `park`: one a newer version may
    /// read (an unknown type, a newer envelope) parks its account until an operator
    /// retries or skips it (GET /v1/admin/parked), anything else is dead-lettered;
    /// `dead-letter`: every one goes to the dead-letter topic; `halt`: stop at it.
    #[arg(long, env = "PROJECTOR_ON_POISON", value_enum, default_value_t = OnPoison::Park)]
    pub on_poison: OnPoison,
    /// On SIGTERM, how long this instance of a group goes on serving the partitions it
    /// held (draining) until their new owners serve them, in ms; 0 to stop at once. A
    /// clean stop leaves the consumer group explicitly, so they move at once.
    #[arg(long, env = "PROJECTOR_HANDOFF_MS", default_value_t = 25_000)]
    pub handoff_ms: u64,
    /// On SIGTERM, how long to wait for HTTP requests in flight.
    #[arg(long, env = "PROJECTOR_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
    /// Test hook, never for production: abort the process right after the log has
    /// acknowledged the follow-ups of this many batches, before the last of them is
    /// stored: the crash the emit-then-store order must survive.
    #[arg(long, env = "PROJECTOR_TEST_CRASH_AFTER_FOLLOW_UPS", hide = true)]
    pub test_crash_after_follow_ups: Option<u64>,
    /// Test hook, never for production: read the codec's stand-in for an event type
    /// only a newer version knows (as a deposit), as a "newer projector" would.
    #[arg(long, env = "PROJECTOR_TEST_FUTURE_TYPE", hide = true)]
    pub test_future_type: bool,
    /// Test hook, never for production: a rebuild leaves out the first event it reads,
    /// so that its digest disagrees with the live store's.
    #[arg(long, env = "PROJECTOR_TEST_REBUILD_DROP_FIRST", hide = true)]
    pub test_rebuild_drop_first: bool,
}

impl Config {
    /// A config with every default, for these brokers and this data directory. Like the
    /// binary, it still reads the environment fallbacks (`LEDGER_TOPIC`, …).
    pub fn for_brokers(brokers: &str, data_dir: &std::path::Path) -> Self {
        let mut c = <Self as clap::Parser>::parse_from(["projector", "--brokers", brokers]);
        c.data_dir = data_dir.to_path_buf();
        c
    }

    pub(crate) fn kafka(&self) -> KafkaConfig {
        self.kafka.client()
    }

    /// The dead-letter topic's name.
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.kafka.topic))
    }

    /// The URL the group reaches this instance at, once it listens on `bound`.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> String {
        if let Some(url) = &self.advertise_url {
            return url.trim_end_matches('/').to_string();
        }
        let ip = if bound.ip().is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            bound.ip()
        };
        format!("http://{}", SocketAddr::new(ip, bound.port()))
    }

    pub(crate) fn poison_policy(&self) -> PoisonPolicy {
        match self.on_poison {
            OnPoison::Park => PoisonPolicy::Park,
            OnPoison::DeadLetter => PoisonPolicy::DeadLetter,
            OnPoison::Halt => PoisonPolicy::Halt,
        }
    }
}
