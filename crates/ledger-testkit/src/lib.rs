//! Test support shared by the crates' black-box tests: where the real broker is, unique
//! topic names, waiting on a condition (or retrying an operation) with a deadline
//! instead of sleeping, a service's readiness, free ports, and child processes that
//! cannot outlive a failed test.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The one variable that tells tests where the real broker is. `scripts/test.sh` starts
/// a broker with `scripts/kafka-local.sh` and sets it.
pub const BROKERS_ENV: &str = "LEDGER_TEST_BROKERS";

/// The real broker's address. Panics with a clear message, instead of hanging, when the
/// variable is unset or nothing answers there.
pub fn brokers() -> String {
    let brokers = std::env::var(BROKERS_ENV).unwrap_or_else(|_| {
        panic!(
            "{BROKERS_ENV} is not set: this test needs a real Kafka broker. \
             Run scripts/test.sh, or scripts/kafka-local.sh start and \
             export {BROKERS_ENV}=127.0.0.1:9092"
        )
    });
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("socket.connection.setup.timeout.ms", "3000")
        .create()
        .expect("a bare client config is valid");
    if let Err(e) = client.fetch_metadata(None, Duration::from_secs(10)) {
        panic!("the Kafka broker at {brokers} ({BROKERS_ENV}) does not answer: {e}. Is it running? scripts/kafka-local.sh status");
    }
    brokers
}

/// A topic name no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// How long the waits below pause between two looks.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A wait that ran out of time: what it waited for, how long, and the last failure when
/// the wait was a retry. Its message is the one the panicking waits panic with.
#[derive(Debug, Clone)]
pub struct TimedOut {
    /// What was waited for.
    pub what: String,
    /// How long.
    pub after: Duration,
    /// The last attempt's error, for a retry.
    pub last: Option<String>,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.after, self.what
        )?;
        if let Some(last) = &self.last {
            write!(f, "; last: {last}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TimedOut {}

/// The one asynchronous deadline loop: runs `attempt` until it succeeds, pausing
/// [`POLL_EVERY`] between attempts; past `timeout`, the last attempt's error.
async fn poll<T, E, F, Fut>(timeout: Duration, mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The one blocking deadline loop: [`poll`] for code without a runtime.
fn poll_blocking<T, E>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match attempt() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls `check` until it returns `Some`, or fails with [`TimedOut`] naming `what` once
/// `timeout` passes. For harnesses that report a failed wait instead of panicking.
pub async fn try_wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(timeout, || {
        let checked = check();
        async move { checked.await.ok_or(()) }
    })
    .await
    .map_err(|()| TimedOut {
        what: what.to_string(),
        after: timeout,
        last: None,
    })
}

/// Polls `check` until it returns `Some`, or panics with `what` once `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    try_wait_for(what, timeout, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Blocking [`wait_for`], for tests without a runtime.
pub fn wait_for_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    poll_blocking(timeout, || check().ok_or(()))
        .unwrap_or_else(|()| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Retries `op` until it returns `Ok`, or fails with [`TimedOut`] carrying the last
/// error once `timeout` passes.
pub async fn try_retry<T, E, F, Fut>(what: &str, timeout: Duration, op: F) -> Result<T, TimedOut>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    poll(timeout, op).await.map_err(|e| TimedOut {
        what: what.to_string(),
        after: timeout,
        last: Some(e.to_string()),
    })
}

/// Blocking retry: runs `op` until it returns `Ok`, or panics with `what` and the last
/// error once `timeout` passes. For an operation that can fail for a while (a new
/// topic's leader not known yet), never for waiting out a fixed time.
pub fn retry_blocking<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    op: impl FnMut() -> Result<T, E>,
) -> T {
    poll_blocking(timeout, op).unwrap_or_else(|e| {
        panic!(
            "{}",
            TimedOut {
                what: what.to_string(),
                after: timeout,
                last: Some(e.to_string()),
            }
        )
    })
}

/// A free loopback port: bound on `127.0.0.1:0` and released at once. Another process
/// may take it in between; the service's own bind failure then says so clearly.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 works on loopback")
}

/// Waits until `GET {base}/readyz` answers 200 (each request bounded at 5 s), or fails
/// with [`TimedOut`] naming the URL and the last answer once `timeout` passes.
pub async fn try_wait_ready(base: &str, timeout: Duration) -> Result<(), TimedOut> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client builds");
    let url = format!("{base}/readyz");
    try_retry(&format!("GET {url} to answer 200"), timeout, || {
        let answer = http.get(&url).send();
        async move {
            match answer.await {
                Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(()),
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Waits until `GET {base}/readyz` answers 200, or panics naming the URL and the last
/// answer once `timeout` passes.
pub async fn wait_ready(base: &str, timeout: Duration) {
    try_wait_ready(base, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A child process that is SIGKILLed and reaped when dropped, so that a failing test
/// leaves nothing running. With a log file ([`ChildGuard::with_log`]) errors name it,
/// and a drop while the test panics prints it.
pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    /// Set once the process is reaped: its pid may belong to another process then.
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Guards `child`, called `name` in messages.
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child,
            log: None,
            exited: None,
        }
    }

    /// The file the process logs to.
    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// Its pid.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `sig`; does nothing once the process has been reaped.
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        if self.exited.is_none() {
            kill(self.pid(), sig)?;
        }
        Ok(())
    }

    /// How it exited, without waiting: `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `timeout` for it to exit (blocking), and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        poll_blocking(timeout, || self.try_status().ok_or(())).map_err(|()| {
            let log = match &self.log {
                Some(l) => format!("; log {}", l.display()),
                None => String::new(),
            };
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{} (pid {}) did not exit within {timeout:?}{log}",
                    self.name,
                    self.pid()
                ),
            )
        })
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGTERM, and wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// Its whole log; empty without one.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// The last `n` lines of its log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            if let Some(log) = &self.log {
                eprintln!(
                    "--- {} log ({}) ---\n{}",
                    self.name,
                    log.display(),
                    self.log_text()
                );
            }
        }
    }
}

/// Kafka's committed offsets of a group for partitions `0..partitions` of a topic, read
/// without joining the group.
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<BTreeMap<i32, i64>, KafkaError> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
    let out = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect();
    // Drop the list before the consumer: the other order can hang (rust-rdkafka #509).
    drop(committed);
    Ok(out)
}

/// Sets one of a topic's configs (legacy AlterConfigs: the topic's other overrides go
/// back to the broker's defaults), to make the broker refuse or accept writes on demand.
pub async fn set_topic_config(brokers: &str, topic: &str, key: &str, value: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client over a valid bootstrap list builds");
    let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .alter_configs([&change], &opts)
        .await
        .unwrap_or_else(|e| panic!("setting {key}={value} on {topic}: {e}"));
    for r in results {
        r.unwrap_or_else(|e| panic!("setting {key}={value} on {topic}: {e:?}"));
    }
}

/// The sum of the samples of one metric on a service's `GET {base}/metrics`: every
/// label set of `series` when it is a bare name (`ingest_commands_accepted_total`), or
/// one series when it carries its labels (`…_total{signal="fatal_error"}`). `None`
/// while the service does not answer.
pub async fn metric_sum(base: &str, series: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// A projector's applied offsets (the next offset to apply, per partition), from its
/// `/v1/progress`; `None` while it does not answer.
pub async fn applied_offsets(base: &str) -> Option<BTreeMap<i32, i64>> {
    let progress: ledger_api::Progress = reqwest::get(format!("{base}/v1/progress"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(progress.applied_offsets())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retry_that_runs_out_of_time_names_the_last_error() {
        let mut attempts = 0;
        let err = try_retry("the impossible", Duration::from_millis(120), || {
            attempts += 1;
            std::future::ready(Err::<(), _>(format!("refusal {attempts}")))
        })
        .await
        .unwrap_err();
        assert!(attempts >= 2, "retried: {attempts} attempts");
        assert_eq!(
            err.to_string(),
            format!("timed out after 120ms waiting for the impossible; last: refusal {attempts}")
        );
    }

    #[tokio::test]
    async fn wait_for_returns_the_first_some() {
        let mut n = 0;
        let got = wait_for("three looks", Duration::from_secs(5), || {
            n += 1;
            std::future::ready((n == 3).then_some(n))
        })
        .await;
        assert_eq!(got, 3);
    }

    #[test]
    fn free_port_is_free() {
        let port = free_port();
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port binds");
    }

    fn sleeper() -> ChildGuard {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        ChildGuard::new("sleep", child)
    }

    /// Whether `pid` is still a process (a zombie counts until it is reaped).
    fn exists(pid: Pid) -> bool {
        kill(pid, None).is_ok()
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_child() {
        let guard = sleeper();
        let pid = guard.pid();
        assert!(exists(pid));
        drop(guard);
        assert!(!exists(pid), "killed and reaped");
    }

    #[test]
    fn terminate_and_wait_exit() {
        let mut guard = sleeper();
        assert_eq!(guard.try_status(), None);
        let e = guard.wait_exit(Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("did not exit within"), "{e}");
        let status = guard.terminate(Duration::from_secs(10)).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        // Reaped: signals and the drop leave the pid alone.
        guard.signal(Signal::SIGKILL).unwrap();
        assert_eq!(guard.try_status(), Some(status));
    }
}
