//! A projector group under test: its instances' view of it (`/v1/cluster`), waiting for
//! it to settle, and a reader that reads accounts through every live instance while
//! partitions move, to judge the group's promise: an account that exists never reads as
//! 404, and while nobody can serve a partition the answer is 503 `partition_moving`,
//! whose windows it measures.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use ledger_api::cluster::SERVED_BY_HEADER;
use ledger_api::{ClusterView, ErrorBody, ErrorCode, PartitionRole};
use ledger_domain::partitioning::partition_of;
use ledger_domain::AccountId;
use ledger_testkit::try_wait_for;
use rand::Rng;
use tokio::task::JoinHandle;

/// The instance an answer names as its server (`Ledger-Served-By`).
pub fn served_by(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(SERVED_BY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `GET /v1/cluster` of one instance.
pub async fn cluster(base: &str) -> Option<ClusterView> {
    reqwest::get(format!("{base}/v1/cluster"))
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Whether a view shows `instances` live instances sharing the `partitions` evenly
/// (their counts differ by one at most), each partition owned by exactly one of them,
/// and none warming or draining.
pub fn settled(view: &ClusterView, instances: usize, partitions: i32) -> bool {
    let mut owners: BTreeMap<i32, usize> = BTreeMap::new();
    for i in &view.instances {
        for p in &i.partitions {
            if p.role != PartitionRole::Owner {
                return false;
            }
            *owners.entry(p.partition).or_default() += 1;
        }
    }
    let shares: Vec<usize> = view.instances.iter().map(|i| i.partitions.len()).collect();
    let even = shares
        .iter()
        .max()
        .zip(shares.iter().min())
        .is_some_and(|(max, min)| max - min <= 1);
    view.instances.len() == instances
        && even
        && (0..partitions).all(|p| owners.get(&p) == Some(&1))
        && owners.len() == partitions as usize
}

/// Waits until every one of `bases` sees the group settled with `instances` instances.
pub async fn wait_settled(
    bases: &[String],
    instances: usize,
    partitions: i32,
    timeout: Duration,
) -> Result<ClusterView> {
    let what =
        format!("the group to settle with {instances} instances, as all of {bases:?} see it");
    Ok(try_wait_for(&what, timeout, || async {
        let mut last = None;
        for b in bases {
            let view = cluster(b).await?;
            if !settled(&view, instances, partitions) {
                return None;
            }
            last = Some(view);
        }
        last
    })
    .await?)
}

/// An instance to read through: its base URL and its instance id.
pub type Instance = (String, String);

/// One read's outcome, as the reader judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Found,
    NotFound,
    Moving,
}

#[derive(Default)]
struct Log {
    reads: u64,
    by_status: BTreeMap<u16, u64>,
    /// Reads answered by another instance than the one asked.
    forwarded: u64,
    /// Accounts read as found, with when the first such answer arrived. Reads run
    /// concurrently, so only a 404 asked after that moment breaks the promise: one asked
    /// before it may simply have been answered before the account was opened.
    found: BTreeMap<String, Instant>,
    /// 404s for an account found before: the promise broken.
    regressions: Vec<String>,
    /// Per partition, in time order: when a read of it succeeded (found or not) or got
    /// `partition_moving`.
    timeline: BTreeMap<i32, Vec<(Instant, bool)>>,
    /// Answers that were neither 200, 404 nor `partition_moving`.
    unexpected: Vec<String>,
    /// The first `partition_moving` answers, with what they said.
    moving_samples: Vec<String>,
}

/// Reads accounts through the live instances, at random, until stopped.
pub struct Reader {
    instances: Arc<Mutex<Vec<Instance>>>,
    log: Arc<Mutex<Log>>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a reader saw.
pub struct ReadReport {
    /// Reads made.
    pub reads: u64,
    /// Answers by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Reads answered by another instance than the one asked (forwarded).
    pub forwarded: u64,
    /// Accounts found before that later read as 404.
    pub regressions: Vec<String>,
    /// Answers outside the promise (a 5xx other than `partition_moving`, say).
    pub unexpected: Vec<String>,
    /// The first `partition_moving` answers: through which instance, and their message.
    pub moving_samples: Vec<String>,
    timeline: BTreeMap<i32, Vec<(Instant, bool)>>,
}

impl std::fmt::Debug for ReadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadReport")
            .field("reads", &self.reads)
            .field("by_status", &self.by_status)
            .field("forwarded", &self.forwarded)
            .field("regressions", &self.regressions)
            .field("unexpected", &self.unexpected)
            .field("moving_samples", &self.moving_samples)
            .finish_non_exhaustive()
    }
}

impl ReadReport {
    /// The longest time, between `from` and `to`, that a partition's reads got
    /// `partition_moving`: from the first such answer of a run to the next successful
    /// read of that partition (or `to`).
    pub fn moving_window(&self, from: Instant, to: Instant) -> Duration {
        let mut worst = Duration::ZERO;
        for events in self.timeline.values() {
            // Readers run concurrently: their entries interleave slightly out of order.
            let mut events: Vec<(Instant, bool)> = events
                .iter()
                .copied()
                .filter(|(t, _)| *t >= from && *t <= to)
                .collect();
            events.sort_by_key(|(t, _)| *t);
            let mut run_start: Option<Instant> = None;
            for (t, ok) in events {
                match (ok, run_start) {
                    (false, None) => run_start = Some(t),
                    (true, Some(s)) => {
                        worst = worst.max(t - s);
                        run_start = None;
                    }
                    _ => {}
                }
            }
            if let Some(s) = run_start {
                worst = worst.max(to - s);
            }
        }
        worst
    }

    /// `partition_moving` answers between `from` and `to`.
    pub fn moving_answers(&self, from: Instant, to: Instant) -> usize {
        self.timeline
            .values()
            .flatten()
            .filter(|(t, ok)| !ok && *t >= from && *t <= to)
            .count()
    }
}

impl Reader {
    /// Starts `concurrency` readers of `accounts` (in a topic of `partitions`) through
    /// `instances`, which the test may change as instances come and go.
    pub fn start(
        instances: Vec<Instance>,
        accounts: Vec<String>,
        partitions: i32,
        concurrency: usize,
    ) -> Self {
        let instances = Arc::new(Mutex::new(instances));
        let log = Arc::new(Mutex::new(Log::default()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client always builds");
        let accounts = Arc::new(accounts);
        let tasks = (0..concurrency)
            .map(|_| {
                let (instances, log, http, accounts) = (
                    instances.clone(),
                    log.clone(),
                    http.clone(),
                    accounts.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let picked = {
                            let bases = instances.lock().expect("no panics holding it");
                            let mut rng = rand::rng();
                            (!bases.is_empty() && !accounts.is_empty()).then(|| {
                                (
                                    bases[rng.random_range(0..bases.len())].clone(),
                                    accounts[rng.random_range(0..accounts.len())].clone(),
                                )
                            })
                        };
                        let Some((instance, account)) = picked else {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        read_once(&http, &instance, &account, partitions, &log).await;
                    }
                })
            })
            .collect();
        Reader {
            instances,
            log,
            tasks,
        }
    }

    /// Reads through these instances from now on.
    pub fn set_instances(&self, instances: Vec<Instance>) {
        *self.instances.lock().expect("no panics holding it") = instances;
    }

    /// Stops reading and reports.
    pub fn stop(self) -> ReadReport {
        for t in &self.tasks {
            t.abort();
        }
        let log = std::mem::take(&mut *self.log.lock().expect("no panics holding it"));
        ReadReport {
            reads: log.reads,
            by_status: log.by_status,
            forwarded: log.forwarded,
            regressions: log.regressions,
            unexpected: log.unexpected,
            moving_samples: log.moving_samples,
            timeline: log.timeline,
        }
    }
}

async fn read_once(
    http: &reqwest::Client,
    (base, id): &Instance,
    account: &str,
    partitions: i32,
    log: &Mutex<Log>,
) {
    let asked_at = Instant::now();
    // An instance just killed refuses connections: not an answer of the product's.
    let Ok(resp) = http
        .get(format!("{base}/v1/accounts/{account}"))
        .send()
        .await
    else {
        return;
    };
    let status = resp.status().as_u16();
    let served_by = served_by(&resp);
    let body = resp.text().await.unwrap_or_default();
    let answered_at = Instant::now();
    let code = serde_json::from_str::<ErrorBody>(&body)
        .ok()
        .map(|b| b.error.code);
    let outcome = match (status, code) {
        (200, _) => Some(Outcome::Found),
        (404, Some(ErrorCode::AccountNotFound)) => Some(Outcome::NotFound),
        (503, Some(ErrorCode::PartitionMoving)) => Some(Outcome::Moving),
        _ => None,
    };
    let partition = AccountId::parse(account)
        .map(|id| partition_of(&id, partitions))
        .unwrap_or(-1);
    let mut l = log.lock().expect("no panics holding it");
    l.reads += 1;
    *l.by_status.entry(status).or_default() += 1;
    if served_by.as_deref().is_some_and(|s| s != id) {
        l.forwarded += 1;
    }
    match outcome {
        Some(Outcome::Found) => {
            l.found.entry(account.to_string()).or_insert(answered_at);
        }
        Some(Outcome::NotFound) => {
            if l.found.get(account).is_some_and(|&t| t < asked_at) {
                l.regressions.push(format!(
                    "{account} (partition {partition}) read as 404 through {base} (served by {served_by:?}) after it had been found"
                ));
            }
        }
        Some(Outcome::Moving) => {
            if l.moving_samples.len() < 5 {
                let sample = format!("through {id}, served by {served_by:?}: {body}");
                l.moving_samples.push(sample);
            }
        }
        None => l.unexpected.push(format!("{base}: {status} {body}")),
    }
    if let Some(o) = outcome {
        l.timeline
            .entry(partition)
            .or_default()
            .push((asked_at, o != Outcome::Moving));
    }
}
