//! The fault harness: the real binaries as child processes, a real broker, injected
//! faults, and `ledger load --verify` as the judge of "nothing lost, nothing applied
//! twice".
//!
//! The fault suite (`tests/faults.rs`) runs each fault once inside the test budget; the
//! soak (`src/bin/soak.rs`, `scripts/soak.sh`) runs them in a random loop for as long as
//! asked. Both use the binaries built next to them in `target/<profile>/`.

pub mod group;
pub mod scenario;

use ledger_api::{Accepted, CommandRequest, ErrorBody};
use ledger_domain::AccountId;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ledger_testkit::{free_port, try_wait_for, try_wait_ready, ChildGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// Paths of the three binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `command-ingest`.
    pub ingest: PathBuf,
    /// `projector`.
    pub projector: PathBuf,
    /// `ledger`.
    pub ledger: PathBuf,
}

impl Bins {
    /// Finds the binaries in the target directory this executable was built into.
    pub fn locate() -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut dir = exe
            .parent()
            .context("the executable has a directory")?
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bins = Self {
            ingest: dir.join("command-ingest"),
            projector: dir.join("projector"),
            ledger: dir.join("ledger"),
        };
        for b in [&bins.ingest, &bins.projector, &bins.ledger] {
            if !b.exists() {
                bail!(
                    "{} is missing: build the services first (cargo build -p command-ingest -p projector -p ledger-cli, \
                     with the same profile; scripts/test.sh does)",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A service binary as a restartable child process on a fixed port.
pub struct Service {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// Its port.
    pub port: u16,
    log: PathBuf,
    child: ChildGuard,
}

impl Service {
    /// Starts `program` with `args` plus `--listen 127.0.0.1:PORT`, logging to `log`.
    pub fn start(
        name: &'static str,
        program: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> Result<Self> {
        let port = free_port();
        let child = spawn(name, program, &args, port, &log)?;
        Ok(Self {
            name,
            program: program.to_path_buf(),
            args,
            port,
            log,
            child,
        })
    }

    /// Starts it again, on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.restart_with(&[])
    }

    /// Starts it again, on the same port, with `extra` arguments this time only.
    pub fn restart_with(&mut self, extra: &[&str]) -> Result<()> {
        let mut a = self.args.clone();
        a.extend(args(extra));
        self.child = spawn(self.name, &self.program, &a, self.port, &self.log)?;
        Ok(())
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill9()?;
        Ok(())
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        Ok(self.child.terminate(timeout)?)
    }

    /// Whether it has exited, and how.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_status()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(30)
    }
}

/// Starts `program` with `args` plus `--listen 127.0.0.1:PORT`, appending to `log`.
fn spawn(
    name: &'static str,
    program: &Path,
    args: &[String],
    port: u16,
    log: &Path,
) -> Result<ChildGuard> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new(program)
        .args(args)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(ChildGuard::new(name, child).with_log(log))
}

/// One ingest and one projector on a fresh topic, and what the faults need to drive them.
pub struct Stack {
    /// Broker address.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The projector's group.
    pub group: String,
    /// The ingest.
    pub ingest: Service,
    /// The projector that `ledger load --verify` reads.
    pub projector: Service,
    /// Where data and logs live.
    pub dir: PathBuf,
    /// The binaries.
    pub bins: Bins,
    /// Replicas of the topics the services create.
    pub replication: u8,
}

impl Stack {
    /// Starts an ingest and a projector (data in `dir/projector`), creating topics with
    /// `replication` replicas, and waits until both are ready.
    pub async fn start(
        bins: &Bins,
        brokers: &str,
        topic: &str,
        dir: &Path,
        projector_data: &Path,
        replication: u8,
    ) -> Result<Self> {
        let group = format!("{topic}.projector");
        let replication = replication.to_string();
        let ingest = Service::start(
            "command-ingest",
            &bins.ingest,
            args(&[
                "--brokers",
                brokers,
                "--topic",
                topic,
                "--delivery-timeout-ms",
                "3000",
                "--replication-factor",
                &replication,
            ]),
            dir.join("ingest.log"),
        )?;
        let mut p_args =
            projector_args(brokers, topic, &group, projector_data, Some("projector-a"));
        p_args.extend(args(&["--replication-factor", &replication]));
        let projector = Service::start(
            "projector",
            &bins.projector,
            p_args,
            dir.join("projector.log"),
        )?;
        let stack = Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group,
            ingest,
            projector,
            dir: dir.to_path_buf(),
            bins: bins.clone(),
            replication: replication.parse().expect("formatted above"),
        };
        try_wait_ready(&stack.ingest.url(), Duration::from_secs(60)).await?;
        try_wait_ready(&stack.projector.url(), Duration::from_secs(60)).await?;
        Ok(stack)
    }

    /// Starts another projector of the stack's group: static membership as
    /// `projector-{name}`, a store of its own, not yet waited for.
    pub fn add_projector(&self, name: &str) -> Result<Service> {
        let mut a = projector_args(
            &self.brokers,
            &self.topic,
            &self.group,
            &self.dir.join(format!("p-{name}")),
            Some(&format!("projector-{name}")),
        );
        a.extend(args(&[
            "--replication-factor",
            &self.replication.to_string(),
        ]));
        Service::start(
            "projector",
            &self.bins.projector,
            a,
            self.dir.join(format!("projector-{name}.log")),
        )
    }

    /// Starts `ledger load --verify` against this stack in the background.
    pub fn load(&self, accounts: u32, commands: u32, rate: u32, seed: u64) -> Result<Load> {
        let out = self.dir.join(format!("load-{seed}.json"));
        let child = Command::new(&self.bins.ledger)
            .args([
                "--ingest-url",
                &self.ingest.url(),
                "--projector-url",
                &self.projector.url(),
            ])
            .args(["--json", "--retry-for", "120"])
            .args(["load", "--verify", "--concurrency", "16"])
            .args(["--transfers", TRANSFER_SHARE])
            .args([
                "--accounts",
                &accounts.to_string(),
                "--commands",
                &commands.to_string(),
            ])
            .args(["--rate", &rate.to_string(), "--seed", &seed.to_string()])
            .args(["--prefix", &format!("s{seed}")])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(
                self.dir.join(format!("load-{seed}.err")),
            )?)
            .spawn()?;
        Ok(Load {
            child: ChildGuard::new("ledger load", child),
            out,
            err: self.dir.join(format!("load-{seed}.err")),
        })
    }
}

/// The share of transfers in every load the faults run under: money must be conserved
/// through each fault, with transfers in flight when it strikes.
pub const TRANSFER_SHARE: &str = "0.2";

/// Projector arguments: static membership when `instance` is given.
pub fn projector_args(
    brokers: &str,
    topic: &str,
    group: &str,
    data: &Path,
    instance: Option<&str>,
) -> Vec<String> {
    let mut a = args(&[
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--group-id",
        group,
        "--batch-max-events",
        "200",
    ]);
    a.push("--data-dir".into());
    a.push(data.display().to_string());
    if let Some(i) = instance {
        a.extend(args(&["--instance-id", i]));
    }
    a
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A running `ledger load --verify`, killed when dropped.
pub struct Load {
    child: ChildGuard,
    out: PathBuf,
    err: PathBuf,
}

/// What a load reported.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Commands accepted (202).
    pub accepted: u64,
    /// Accepted commands the projector does not know.
    pub lost: u64,
    /// Events applied beyond the model.
    pub applied_twice: u64,
    /// Any difference from the model.
    pub mismatches: u64,
    /// Transfers among the accepted commands, each checked settled.
    pub transfers: u64,
    /// Whether the group's money was conserved, nothing was left in flight, and the run's
    /// balances summed to the model's.
    pub money_conserved: bool,
    /// The whole JSON report.
    pub report: Value,
    /// For the broker faults: seconds from the brokers being back to the ingest
    /// accepting again (the longest, where the fault struck more than once).
    pub recovery_s: Option<f64>,
    /// Kafka clients the services replaced by themselves: the ingest's producers, the
    /// projector's consumers.
    pub client_restarts: (u64, u64),
}

impl Load {
    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_status().is_none()
    }

    /// Waits for it and reads its report; an error unless it exited 0 with a clean
    /// verification.
    pub async fn finish(mut self, timeout: Duration) -> Result<LoadResult> {
        // Past the timeout, dropping `self` kills it.
        let status = try_wait_for("ledger load to finish", timeout, || {
            std::future::ready(self.child.try_status())
        })
        .await?;
        let text = std::fs::read_to_string(&self.out)?;
        let report: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let verify = report.get("verify").cloned().unwrap_or(Value::Null);
        let result = LoadResult {
            accepted: n(&report["accepted"]),
            lost: n(&verify["lost"]),
            applied_twice: n(&verify["applied_twice"]),
            mismatches: n(&verify["mismatch_count"]),
            transfers: n(&verify["transfers_checked"]),
            money_conserved: verify["money"]["ok"].as_bool().unwrap_or(false),
            report: report.clone(),
            recovery_s: None,
            client_restarts: (0, 0),
        };
        if !status.success() || verify.is_null() {
            let err = std::fs::read_to_string(&self.err).unwrap_or_default();
            bail!(
                "ledger load --verify exited {status}: {}\n{err}\n{text}",
                summary(&result)
            );
        }
        Ok(result)
    }
}

/// One line about a load's result.
pub fn summary(r: &LoadResult) -> String {
    format!(
        "accepted {} ({} transfers), lost {}, applied twice {}, mismatches {}, money {}, producers replaced {}, consumers recreated {}",
        r.accepted,
        r.transfers,
        r.lost,
        r.applied_twice,
        r.mismatches,
        if r.money_conserved { "conserved" } else { "NOT conserved" },
        r.client_restarts.0,
        r.client_restarts.1
    )
}

/// Events the projector at `base` has applied (sum of its applied offsets).
pub async fn applied_total(base: &str) -> Option<i64> {
    Some(ledger_testkit::applied_offsets(base).await?.values().sum())
}

/// Waits until the projector has applied `more` events beyond what it had, or the load
/// ended: the moment to inject a fault mid-stream.
pub async fn wait_progress(
    base: &str,
    more: i64,
    load: &mut Load,
    timeout: Duration,
) -> Result<()> {
    let start = applied_total(base).await.unwrap_or(0);
    let what = format!("the projector to apply {more} more events than {start}");
    try_wait_for(&what, timeout, || {
        let running = load.running();
        async move { (applied_total(base).await.unwrap_or(0) >= start + more || !running).then_some(()) }
    })
    .await?;
    Ok(())
}

/// A broker, or a cluster of brokers, that this harness starts and stops itself,
/// through `scripts/kafka-local.sh` (`KAFKA_NODES` brokers on consecutive ports).
pub struct OwnBroker {
    /// Its (first) port.
    pub port: u16,
    /// How many brokers: 1, or a cluster with its own controller.
    pub nodes: u8,
    script: PathBuf,
}

impl OwnBroker {
    /// Starts (or adopts) the broker on `port`.
    pub fn start(repo: &Path, port: u16) -> Result<Self> {
        Self::start_cluster(repo, port, 1)
    }

    /// Starts (or adopts) `nodes` brokers on `port`, `port + 1`, …
    pub fn start_cluster(repo: &Path, port: u16, nodes: u8) -> Result<Self> {
        let b = Self {
            port,
            nodes,
            script: repo.join("scripts/kafka-local.sh"),
        };
        b.run(&["start"])?;
        Ok(b)
    }

    /// Its bootstrap address list.
    pub fn brokers(&self) -> String {
        (0..u16::from(self.nodes))
            .map(|i| format!("127.0.0.1:{}", self.port + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Stops it (its data stays).
    pub fn stop(&self) -> Result<()> {
        self.run(&["stop"])?;
        Ok(())
    }

    /// Starts it again.
    pub fn restart(&self) -> Result<()> {
        self.run(&["start"])?;
        Ok(())
    }

    /// SIGKILLs broker `node` (1-based, its `node.id`).
    pub fn kill_node(&self, node: i32) -> Result<()> {
        self.run(&["kill", &node.to_string()])?;
        Ok(())
    }

    /// Stops broker `node` cleanly.
    pub fn stop_node(&self, node: i32) -> Result<()> {
        self.run(&["stop-node", &node.to_string()])?;
        Ok(())
    }

    /// Starts broker `node` again and waits until it answers.
    pub fn start_node(&self, node: i32) -> Result<()> {
        self.run(&["start-node", &node.to_string()])?;
        Ok(())
    }

    /// Sends `sig` to broker `node`'s JVM (SIGSTOP freezes it: connections stay open
    /// and nothing answers, which is what a long GC pause or a hung disk looks like).
    pub fn signal_node(&self, node: i32, sig: Signal) -> Result<()> {
        let pid = self.run(&["pid", &node.to_string()])?;
        let pid: i32 = pid
            .trim()
            .parse()
            .with_context(|| format!("kafka-local.sh pid {node} printed {pid:?}"))?;
        kill(Pid::from_raw(pid), sig)?;
        Ok(())
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("bash")
            .arg(&self.script)
            .args(args)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_NODES", self.nodes.to_string())
            .output()?;
        if !out.status.success() {
            bail!(
                "kafka-local.sh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // A frozen broker would not stop.
        for node in 1..=i32::from(self.nodes) {
            let _ = self.signal_node(node, Signal::SIGCONT);
        }
        let _ = self.run(&["stop"]);
    }
}

/// The ingest's count of accepted commands, all types together.
pub async fn ingest_accepted(base: &str) -> Option<u64> {
    ledger_testkit::metric_sum(base, "ingest_commands_accepted_total").await
}

/// Commands in a row that must each get a `202` for the ingest to count as recovered.
pub const RECOVERED_STREAK: u32 = 20;

/// Waits until every new command the ingest at `base` receives gets a `202`: a streak
/// of [`RECOVERED_STREAK`] probe commands (opens of an account outside any load's
/// model), each answered `202` at its first attempt. Returns when the streak began,
/// counted from the call; fails past `bound`.
pub async fn wait_accepting(base: &str, bound: Duration) -> Result<Duration> {
    let http = reqwest::Client::new();
    let probe = CommandRequest::OpenAccount {
        account_id: AccountId::parse("recovery-probe").expect("a valid literal account id"),
        command_id: None,
    };
    let started = Instant::now();
    let mut streak = 0;
    let mut streak_began = None;
    let mut last = String::new();
    while streak < RECOVERED_STREAK {
        if started.elapsed() > bound {
            bail!(
                "{base} did not accept every new command within {bound:?} \
                 ({streak} in a row at the end; last refusal: {last})"
            );
        }
        let sent = Instant::now();
        let answer = http
            .post(format!("{base}/v1/commands"))
            .json(&probe)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let refusal = match answer {
            Ok(r) if r.status().as_u16() == 202 => match r.json::<Accepted>().await {
                Ok(_) => None,
                Err(e) => Some(format!(
                    "202 with a body that is not an accepted command: {e}"
                )),
            },
            Ok(r) => {
                let status = r.status();
                Some(match r.json::<ErrorBody>().await {
                    Ok(b) => format!("{status} {}: {}", b.error.code, b.error.message),
                    Err(_) => status.to_string(),
                })
            }
            Err(e) => Some(e.to_string()),
        };
        match refusal {
            None => {
                streak_began.get_or_insert(sent);
                streak += 1;
            }
            Some(why) => {
                last = why;
                streak = 0;
                streak_began = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(streak_began.expect("set with the first 202 of the streak") - started)
}

/// A small tmpfs mounted at a directory, to fill the projector's disk.
pub struct SmallDisk {
    /// The mount point.
    pub path: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB (needs root).
    pub fn mount(path: &Path, mib: u32) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()?;
        if !st.success() {
            bail!(
                "mounting a tmpfs at {} failed (the disk-full fault needs root)",
                path.display()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Grows it: the space is back.
    pub fn grow(&self, mib: u32) -> Result<()> {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.path)
            .status()?;
        if !st.success() {
            bail!("remounting {} failed", self.path.display());
        }
        Ok(())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Keeps a fault in place for `d`: the outage itself, not a wait for a condition.
pub async fn hold_fault(d: Duration) {
    tokio::time::sleep(d).await;
}
