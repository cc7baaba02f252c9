//! What `ledger top` shows, as data: the reads of one refresh ([`Sample`]), the rates
//! measured between refreshes ([`Tracker`]), and the result ([`Snapshot`]), from which
//! both the terminal view and the plain table are drawn, so that either can be tested
//! without services or a terminal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use ledger_api::{ParkedAccount, ParkedView, PartitionRole, Progress};
use serde::Serialize;

use crate::client::ClientError;
use crate::output::{parked_table, table};

/// The ingest's counter of commands the broker acknowledged, one series per command
/// type (`crates/command-ingest/src/metrics.rs`).
pub const ACCEPTED_METRIC: &str = "ingest_commands_accepted_total";

/// Refreshes kept for the sparklines: a minute at the default interval.
pub const HISTORY: usize = 60;

/// The columns of the partition table, in the terminal and in the plain table alike.
pub const COLUMNS: [&str; 8] = [
    "PARTITION",
    "OWNER",
    "ROLE",
    "APPLIED",
    "HIGH WATERMARK",
    "LAG",
    "APPLY/S",
    "PAUSED",
];

/// The reads of one refresh.
#[derive(Debug)]
pub struct Sample {
    /// When it was taken, for the header.
    pub taken_at: SystemTime,
    /// When it was taken, for the rates.
    pub at: Instant,
    /// The projector's `GET /v1/progress`.
    pub progress: Result<Progress, ClientError>,
    /// The projector's `GET /v1/admin/parked`.
    pub parked: Result<ParkedView, ClientError>,
    /// [`ACCEPTED_METRIC`] summed over its series, from the ingest's `GET /metrics`.
    pub accepted: Result<f64, ClientError>,
}

/// One partition's row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionRow {
    /// The partition.
    pub partition: i32,
    /// The instance serving it, if any.
    pub owner: Option<String>,
    /// What that instance does with it.
    pub role: Option<PartitionRole>,
    /// The next offset to apply.
    pub applied_offset: i64,
    /// The end of the partition; `null` while the brokers do not answer.
    pub high_watermark: Option<i64>,
    /// Events not applied yet; `null` while the brokers do not answer.
    pub lag: Option<i64>,
    /// Events applied per second since the refresh before; `null` on the first.
    pub apply_rate: Option<f64>,
    /// Whether an operator paused it.
    pub paused: bool,
}

/// A service that did not answer, by what was asked of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Problems {
    /// `GET /v1/progress` failed: nothing is known of the partitions.
    pub projector: Option<String>,
    /// `GET /metrics` of the ingest failed: its accept rate is unknown.
    pub ingest: Option<String>,
    /// `GET /v1/admin/parked` failed (a projector without it answers 404).
    pub parked: Option<String>,
}

/// Everything one refresh shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// When the sample was taken, RFC 3339; empty before the first.
    pub time: String,
    /// Time between refreshes, over which rates are measured.
    pub interval_ms: u64,
    /// The topic projected.
    pub topic: Option<String>,
    /// The sum of the partitions' lags; `null` while the brokers do not answer.
    pub total_lag: Option<i64>,
    /// The instances serving partitions.
    pub instances: Vec<String>,
    /// Every partition of the topic.
    pub partitions: Vec<PartitionRow>,
    /// Events applied per second, over every partition.
    pub apply_rate: Option<f64>,
    /// Commands the ingest has accepted since it started.
    pub accepted_total: Option<u64>,
    /// Commands the ingest accepted per second.
    pub accept_rate: Option<f64>,
    /// The parked accounts; `null` when they could not be read.
    pub parked: Option<Vec<ParkedAccount>>,
    /// Whether every instance answered for its parked accounts.
    pub parked_complete: Option<bool>,
    /// What could not be read.
    pub problems: Problems,
    /// The last [`HISTORY`] total apply rates, oldest first; `None` where unknown.
    #[serde(skip)]
    pub apply_history: Vec<Option<u64>>,
    /// The last [`HISTORY`] accept rates, oldest first; `None` where unknown.
    #[serde(skip)]
    pub accept_history: Vec<Option<u64>>,
}

impl Snapshot {
    /// What is shown before the first sample is in.
    pub fn waiting(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            ..Self::default()
        }
    }
}

/// Turns samples into snapshots, keeping what the rates are measured from: the last
/// successful read of each service, so that after a failed read the next rate covers
/// the whole time since.
#[derive(Debug)]
pub struct Tracker {
    interval: Duration,
    applied: Option<(Instant, BTreeMap<i32, i64>)>,
    accepted: Option<(Instant, f64)>,
    apply_history: VecDeque<Option<u64>>,
    accept_history: VecDeque<Option<u64>>,
}

/// Rates are shown to a tenth of an event per second.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `count` more over the time from `since` to `now`, per second; `None` over no time
/// or when the count went down (a counter that restarted, a store swapped back).
fn per_second(delta: f64, since: Instant, now: Instant) -> Option<f64> {
    let dt = now.checked_duration_since(since)?.as_secs_f64();
    (dt > 0.001 && delta >= 0.0).then(|| delta / dt)
}

fn push(history: &mut VecDeque<Option<u64>>, rate: Option<f64>) {
    if history.len() == HISTORY {
        history.pop_front();
    }
    history.push_back(rate.map(|r| r.round() as u64));
}

impl Tracker {
    /// A tracker for refreshes every `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            applied: None,
            accepted: None,
            apply_history: VecDeque::with_capacity(HISTORY),
            accept_history: VecDeque::with_capacity(HISTORY),
        }
    }

    /// The snapshot of `sample`, with rates since the last sample that had each read.
    pub fn observe(&mut self, sample: Sample) -> Snapshot {
        let mut snap = Snapshot {
            time: humantime::format_rfc3339_seconds(sample.taken_at).to_string(),
            interval_ms: self.interval.as_millis() as u64,
            ..Snapshot::default()
        };
        match sample.progress {
            Ok(p) => {
                let rates: BTreeMap<i32, f64> = match &self.applied {
                    Some((since, before)) => p
                        .partitions
                        .iter()
                        .filter_map(|row| {
                            let was = *before.get(&row.partition)?;
                            let rate =
                                per_second((row.applied_offset - was) as f64, *since, sample.at)?;
                            Some((row.partition, rate))
                        })
                        .collect(),
                    None => BTreeMap::new(),
                };
                if !rates.is_empty() {
                    snap.apply_rate = Some(round1(rates.values().sum()));
                }
                let owners: BTreeSet<&String> = p
                    .partitions
                    .iter()
                    .filter_map(|r| r.owner.as_ref())
                    .collect();
                snap.instances = owners.into_iter().cloned().collect();
                snap.partitions = p
                    .partitions
                    .iter()
                    .map(|r| PartitionRow {
                        partition: r.partition,
                        owner: r.owner.clone(),
                        role: r.role,
                        applied_offset: r.applied_offset,
                        high_watermark: r.high_watermark,
                        lag: r.lag,
                        apply_rate: rates.get(&r.partition).copied().map(round1),
                        paused: r.paused,
                    })
                    .collect();
                snap.topic = Some(p.topic.clone());
                snap.total_lag = p.total_lag;
                self.applied = Some((sample.at, p.applied_offsets()));
            }
            Err(e) => snap.problems.projector = Some(e.to_string()),
        }
        match sample.accepted {
            Ok(total) => {
                snap.accepted_total = Some(total as u64);
                snap.accept_rate = self
                    .accepted
                    .and_then(|(since, was)| per_second(total - was, since, sample.at))
                    .map(round1);
                self.accepted = Some((sample.at, total));
            }
            Err(e) => snap.problems.ingest = Some(e.to_string()),
        }
        match sample.parked {
            Ok(v) => {
                snap.parked = Some(v.accounts);
                snap.parked_complete = Some(v.complete);
            }
            Err(e) => snap.problems.parked = Some(e.to_string()),
        }
        push(&mut self.apply_history, snap.apply_rate);
        push(&mut self.accept_history, snap.accept_rate);
        snap.apply_history = self.apply_history.iter().copied().collect();
        snap.accept_history = self.accept_history.iter().copied().collect();
        snap
    }
}

/// A rate as shown: `12.5`, or `-` when unknown.
pub fn rate_text(rate: Option<f64>) -> String {
    rate.map_or("-".into(), |r| format!("{r:.1}"))
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// One partition's cells, in [`COLUMNS`] order.
pub fn row_cells(r: &PartitionRow) -> [String; 8] {
    [
        r.partition.to_string(),
        or_dash(r.owner.as_deref()),
        or_dash(r.role),
        r.applied_offset.to_string(),
        or_dash(r.high_watermark),
        or_dash(r.lag),
        rate_text(r.apply_rate),
        if r.paused { "PAUSED" } else { "" }.into(),
    ]
}

/// The header: topic, total lag and instances (the time is shown beside it).
pub fn header_text(s: &Snapshot) -> String {
    let lag = match (s.total_lag, &s.topic) {
        (Some(lag), _) => lag.to_string(),
        // The projector answered without high watermarks: the brokers did not.
        (None, Some(_)) => "n/a (brokers not answering)".into(),
        (None, None) => "n/a".into(),
    };
    let instances = s.instances.len();
    format!(
        "topic {}  total lag {lag}  {instances} instance{}",
        s.topic.as_deref().unwrap_or("?"),
        if instances == 1 { "" } else { "s" },
    )
}

/// When the snapshot was taken, `-` before the first.
pub fn time_text(s: &Snapshot) -> &str {
    if s.time.is_empty() {
        "-"
    } else {
        &s.time
    }
}

/// The ingest's accept rate as shown, or why it is not.
fn accept_text(s: &Snapshot) -> String {
    match &s.problems.ingest {
        Some(e) => format!("n/a (ingest unreachable: {e})"),
        None => format!("{}/s", rate_text(s.accept_rate)),
    }
}

/// The parked accounts' section of the plain text: a table, `none`, or why they are
/// not known.
fn parked_section(s: &Snapshot) -> String {
    let incomplete = if s.parked_complete == Some(false) {
        " (incomplete: an instance did not answer)"
    } else {
        ""
    };
    match (&s.parked, &s.problems.parked) {
        (Some(accounts), _) if accounts.is_empty() => format!("parked accounts: none{incomplete}"),
        (Some(accounts), _) => format!("parked accounts{incomplete}:\n{}", parked_table(accounts)),
        (None, Some(e)) => format!("parked accounts: n/a ({e})"),
        (None, None) => "parked accounts: n/a".into(),
    }
}

/// The snapshot as plain text, for a pipe or a file: the header, the partition table,
/// the rates, and the parked accounts.
pub fn plain_text(s: &Snapshot) -> String {
    let mut text = format!("{}  {}\n", header_text(s), time_text(s));
    match &s.problems.projector {
        Some(e) => text.push_str(&format!("projector unreachable: {e}")),
        None => {
            let rows: Vec<Vec<String>> =
                s.partitions.iter().map(|r| row_cells(r).to_vec()).collect();
            text.push_str(&table(&COLUMNS, &rows));
        }
    }
    text.push_str(&format!(
        "\napply rate {}/s, ingest accept rate {} (over {:.1} s)\n",
        rate_text(s.apply_rate),
        accept_text(s),
        s.interval_ms as f64 / 1000.0
    ));
    text.push_str(&parked_section(s));
    text
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use ledger_api::PartitionProgress;

    /// A progress answer: per partition `(applied, high watermark, paused)`, all owned by
    /// `proj-a` but partition 2 by `proj-b`.
    pub fn progress(rows: &[(i64, i64, bool)]) -> Progress {
        let partitions: Vec<PartitionProgress> = rows
            .iter()
            .enumerate()
            .map(|(i, &(applied, hw, paused))| PartitionProgress {
                partition: i as i32,
                applied_offset: applied,
                high_watermark: Some(hw),
                lag: Some(hw - applied),
                assigned: true,
                owner: Some(if i == 2 { "proj-b" } else { "proj-a" }.into()),
                role: Some(PartitionRole::Owner),
                paused,
            })
            .collect();
        Progress {
            topic: "ledger.events".into(),
            broker_reachable: true,
            total_lag: Some(partitions.iter().filter_map(|p| p.lag).sum()),
            complete: true,
            partitions,
        }
    }

    pub fn parked_acc(id: &str, partition: i32) -> ParkedAccount {
        ParkedAccount {
            account_id: ledger_domain::AccountId::parse(id).unwrap(),
            partition,
            first_offset: 17,
            waiting: 3,
            reason: "unknown event type ledger.frozen.v9".into(),
            served_by: "proj-a".into(),
        }
    }

    pub fn sample(at: Instant, secs: u64, progress: Progress, accepted: f64) -> Sample {
        Sample {
            taken_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs),
            at,
            progress: Ok(progress),
            parked: Ok(ParkedView {
                accounts: vec![parked_acc("acc-9", 1)],
                complete: true,
            }),
            accepted: Ok(accepted),
        }
    }

    pub fn down(url: &str) -> ClientError {
        ClientError::Unreachable {
            url: url.into(),
            reason: "cannot connect: Connection refused (os error 111)".into(),
        }
    }

    /// Two refreshes a second apart: 3 partitions, 20 then 30 commands accepted.
    pub fn two_refreshes() -> Snapshot {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::from_secs(1));
        let first = tracker.observe(sample(
            t0,
            0,
            progress(&[(10, 10, false), (4, 4, false), (0, 0, false)]),
            20.0,
        ));
        assert_eq!(first.apply_rate, None, "no rate from one sample");
        assert_eq!(first.partitions[0].apply_rate, None);
        tracker.observe(sample(
            t0 + Duration::from_secs(1),
            1,
            progress(&[(15, 16, false), (4, 4, true), (2, 2, false)]),
            30.0,
        ))
    }

    #[test]
    fn rates_come_from_two_samples() {
        let s = two_refreshes();
        let rates: Vec<Option<f64>> = s.partitions.iter().map(|p| p.apply_rate).collect();
        assert_eq!(rates, [Some(5.0), Some(0.0), Some(2.0)]);
        assert_eq!(s.apply_rate, Some(7.0));
        assert_eq!(s.accept_rate, Some(10.0));
        assert_eq!(s.accepted_total, Some(30));
        assert_eq!(s.total_lag, Some(1));
        assert_eq!(s.instances, ["proj-a", "proj-b"]);
        assert_eq!(s.time, "2023-11-14T22:13:21Z");
        assert_eq!(s.apply_history, [None, Some(7)]);
        assert_eq!(s.accept_history, [None, Some(10)]);
    }

    #[test]
    fn a_failed_read_leaves_a_gap_and_the_next_rate_covers_the_whole_time() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::from_secs(1));
        tracker.observe(sample(t0, 0, progress(&[(0, 0, false)]), 0.0));
        let mut failed = sample(t0 + Duration::from_secs(1), 1, progress(&[]), 0.0);
        failed.progress = Err(down("http://p/v1/progress"));
        failed.accepted = Err(down("http://i/metrics"));
        failed.parked = Err(down("http://p/v1/admin/parked"));
        let s = tracker.observe(failed);
        assert!(s
            .problems
            .projector
            .as_deref()
            .unwrap()
            .contains("http://p/v1/progress"));
        assert!(s.problems.ingest.is_some() && s.problems.parked.is_some());
        assert!(s.partitions.is_empty());
        assert_eq!(
            (s.apply_rate, s.accept_rate, s.parked.as_ref()),
            (None, None, None)
        );
        let s = tracker.observe(sample(
            t0 + Duration::from_secs(4),
            4,
            progress(&[(40, 40, false)]),
            80.0,
        ));
        assert_eq!(s.apply_rate, Some(10.0), "40 events over 4 s");
        assert_eq!(s.accept_rate, Some(20.0));
        assert_eq!(s.apply_history, [None, None, Some(10)]);
        assert_eq!(s.problems, Problems::default());
    }

    #[test]
    fn a_counter_that_went_down_has_no_rate_and_history_is_bounded() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Duration::from_secs(1));
        tracker.observe(sample(t0, 0, progress(&[(5, 5, false)]), 100.0));
        let s = tracker.observe(sample(
            t0 + Duration::from_secs(1),
            1,
            progress(&[(5, 5, false)]),
            3.0,
        ));
        assert_eq!(s.accept_rate, None, "the ingest restarted");
        for i in 2..100 {
            tracker.observe(sample(
                t0 + Duration::from_secs(i),
                i,
                progress(&[(5, 5, false)]),
                3.0,
            ));
        }
        let s = tracker.observe(sample(
            t0 + Duration::from_secs(100),
            100,
            progress(&[(5, 5, false)]),
            3.0,
        ));
        assert_eq!(s.accept_history.len(), HISTORY);
        assert_eq!(s.accept_history.last(), Some(&Some(0)));
    }

    #[test]
    fn the_plain_table_has_every_partition_and_the_rates() {
        let s = two_refreshes();
        let text = plain_text(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "topic ledger.events  total lag 1  2 instances  2023-11-14T22:13:21Z"
        );
        assert_eq!(
            lines[1],
            "PARTITION  OWNER   ROLE   APPLIED  HIGH WATERMARK  LAG  APPLY/S  PAUSED"
        );
        assert_eq!(
            lines[2],
            "0          proj-a  owner  15       16              1    5.0"
        );
        assert_eq!(
            lines[3],
            "1          proj-a  owner  4        4               0    0.0      PAUSED"
        );
        assert_eq!(
            lines[4],
            "2          proj-b  owner  2        2               0    2.0"
        );
        assert_eq!(
            lines[5],
            "apply rate 7.0/s, ingest accept rate 10.0/s (over 1.0 s)"
        );
        assert_eq!(lines[6], "parked accounts:");
        assert!(
            lines[7].starts_with("ACCOUNT  PARTITION  FIRST OFFSET"),
            "{text}"
        );
        assert!(lines[8].starts_with("acc-9    1          17"), "{text}");
    }

    #[test]
    fn the_plain_text_says_what_did_not_answer() {
        let mut s = Snapshot::waiting(Duration::from_millis(500));
        s.problems.projector = Some("cannot reach http://p".into());
        s.problems.ingest = Some("cannot reach http://i".into());
        s.problems.parked = Some("no such route".into());
        let text = plain_text(&s);
        assert!(
            text.starts_with("topic ?  total lag n/a  0 instances  -\n"),
            "{text}"
        );
        assert!(
            text.contains("\nprojector unreachable: cannot reach http://p\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "ingest accept rate n/a (ingest unreachable: cannot reach http://i) (over 0.5 s)"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("parked accounts: n/a (no such route)"),
            "{text}"
        );
    }

    #[test]
    fn the_json_snapshot_names_every_field() {
        let v = serde_json::to_value(two_refreshes()).unwrap();
        assert_eq!(v["partitions"][1]["paused"], true);
        assert_eq!(v["partitions"][0]["apply_rate"], 5.0);
        assert_eq!(v["partitions"][0]["role"], "owner");
        assert_eq!(v["accept_rate"], 10.0);
        assert_eq!(v["parked"][0]["account_id"], "acc-9");
        assert_eq!(v["problems"]["projector"], serde_json::Value::Null);
        assert!(v.get("apply_history").is_none());
    }
}
