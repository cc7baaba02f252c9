//! What `ledger` prints: a human-readable text, or with `--json` exactly one JSON
//! document on stdout. Errors always go to stderr as one line; with `--json` they are
//! also the JSON document on stdout, so a script always has something to parse.

use std::fmt;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use ledger_api::{
    AccountView, CommandOutcome, CommandView, ParkedAccount, ParkedView, PauseView, RebuildPhase,
    RebuildView, TotalsView, TransferView, UnparkAccepted,
};

/// Where and how results are printed.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// Machine-readable output.
    pub json: bool,
}

impl Output {
    /// Output in the chosen mode.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Prints a result: `value` as JSON, or the text `human` builds.
    pub fn result<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("results serialise to JSON")
            );
        } else {
            println!("{}", human());
        }
    }

    /// Prints an error: one line on stderr, and with `--json` the document
    /// `{"error":{"code","message"},"exit_code"}` on stdout.
    pub fn error(&self, code: &str, message: &str, exit_code: u8) {
        eprintln!("ledger: {message}");
        if self.json {
            println!(
                "{}",
                json!({"error": {"code": code, "message": message}, "exit_code": exit_code})
            );
        }
    }
}

/// An account in one line: `acc-1: balance 950 (open, 3 applied events)`; a parked
/// account's says so, since its balance leaves out the events that wait.
pub fn account_line(a: &AccountView) -> String {
    format!(
        "{}: balance {} ({}, {} applied event{}{})",
        a.account_id,
        a.balance,
        if a.open { "open" } else { "not open" },
        a.applied_events,
        if a.applied_events == 1 { "" } else { "s" },
        if a.parked {
            "; PARKED: later events wait, see `ledger admin parked`"
        } else {
            ""
        }
    )
}

/// An outcome with its reason: `rejected (insufficient_funds)`.
pub fn outcome_text(status: CommandOutcome, reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("{status} ({r})"),
        None => status.to_string(),
    }
}

/// Where a transfer settled: `settled at partition 4, offset 17` (where its credit, or
/// its refund, was applied), `not settled yet` while pending; `None` for a transfer that
/// was rejected, which never moved.
pub fn settlement_text(t: &TransferView, status: CommandOutcome) -> Option<String> {
    match (t.settled_at, status) {
        (Some(p), _) => Some(format!(
            "settled at partition {}, offset {}",
            p.partition, p.offset
        )),
        (None, CommandOutcome::Pending) => Some("not settled yet".into()),
        (None, _) => None,
    }
}

/// A command's outcome in one line: `c-42: rejected (insufficient_funds) on acc-1 at
/// partition 2, offset 41`; a transfer's goes on with its terms and where it settled:
/// `; transfer of 500 to acc-2, settled at partition 4, offset 17`.
pub fn command_line(c: &CommandView) -> String {
    let mut line = format!(
        "{}: {} on {} at partition {}, offset {}",
        c.command_id,
        outcome_text(c.status, c.reason.as_deref()),
        c.account_id,
        c.partition,
        c.offset
    );
    if let Some(t) = &c.transfer {
        line.push_str(&format!("; transfer of {} to {}", t.amount, t.to_account));
        if let Some(s) = settlement_text(t, c.status) {
            line.push_str(&format!(", {s}"));
        }
    }
    line
}

/// The group's money in three lines: the sums, the transfers, and whether they add up.
pub fn totals_text(t: &TotalsView) -> String {
    let conserved = if t.conserved {
        "yes".to_string()
    } else {
        format!(
            "NO: balances plus pending transfers are {}, deposits minus withdrawals {}",
            t.balance_sum + t.pending_transfers_sum,
            t.deposits_sum as i128 - t.withdrawals_sum as i128
        )
    };
    let partitions = t.as_of.len();
    let complete = if t.complete {
        format!("yes ({partitions} partitions)")
    } else {
        format!("no (only {partitions} partitions could be counted now)")
    };
    format!(
        "balances {}, pending transfers {}, deposits {}, withdrawals {}\n\
         transfers: {} debited, {} credited, {} refunded\n\
         conserved: {conserved}; complete: {complete}",
        t.balance_sum,
        t.pending_transfers_sum,
        t.deposits_sum,
        t.withdrawals_sum,
        t.transfers_debited_sum,
        t.transfers_credited_sum,
        t.transfers_refunded_sum,
    )
}

/// Rows under their headers, each column as wide as its widest cell, two spaces apart,
/// as `kafka-consumer-groups --describe` prints; the last column is not padded.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell.as_ref()));
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut lines = vec![line(&mut headers.iter().copied())];
    lines.extend(rows.iter().map(|r| line(&mut r.iter().map(AsRef::as_ref))));
    lines.join("\n")
}

/// A time given in Unix milliseconds, in RFC 3339 (UTC, whole seconds).
pub fn unix_ms_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
        .to_string()
}

/// Partitions as a list: `0, 3, 5`.
fn partition_list(partitions: &[i32]) -> String {
    let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
    list.join(", ")
}

/// What is paused after `ledger admin pause` or `resume`, and where it was applied.
pub fn pause_text(v: &PauseView) -> String {
    let paused = if v.paused_partitions.is_empty() {
        "no partition is paused".to_string()
    } else {
        format!(
            "paused partitions: {}",
            partition_list(&v.paused_partitions)
        )
    };
    let instances = if v.instances.is_empty() {
        "none".to_string()
    } else {
        v.instances.join(", ")
    };
    format!("{paused} (applied by {instances})")
}

/// A rebuild phase as on the wire.
pub fn phase_name(phase: RebuildPhase) -> &'static str {
    match phase {
        RebuildPhase::Replaying => "replaying",
        RebuildPhase::Verifying => "verifying",
        RebuildPhase::Swapped => "swapped",
        RebuildPhase::Mismatch => "mismatch",
        RebuildPhase::Failed => "failed",
    }
}

/// The first characters of a digest, enough to tell two apart in a table.
fn short_digest(d: Option<&str>) -> String {
    match d {
        None => "-".into(),
        Some(d) if d.chars().count() <= 16 => d.into(),
        Some(d) => format!("{}…", d.chars().take(16).collect::<String>()),
    }
}

/// A rebuild: where it stands (and for a mismatch the partition and both digests in
/// full, for a failure the error), then a table of its partitions.
pub fn rebuild_text(v: &RebuildView) -> String {
    let took = v
        .finished_at_ms
        .map(|f| {
            format!(
                ", took {:.1} s",
                f.saturating_sub(v.started_at_ms) as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    let mut text = format!(
        "rebuild on {}: {}, {} events replayed, started {}{took}",
        v.instance_id,
        phase_name(v.phase),
        v.events_replayed,
        unix_ms_text(v.started_at_ms),
    );
    match v.phase {
        RebuildPhase::Mismatch => {
            let p = v
                .first_mismatch
                .and_then(|m| v.partitions.iter().find(|p| p.partition == m));
            match p {
                Some(p) => text.push_str(&format!(
                    "\nMISMATCH at partition {} (compared at offset {}): live digest {}, rebuilt digest {}; the live store was kept",
                    p.partition,
                    p.compared_at.map_or("?".into(), |o| o.to_string()),
                    p.live_digest.as_deref().unwrap_or("?"),
                    p.rebuilt_digest.as_deref().unwrap_or("?"),
                )),
                None => text.push_str(&format!(
                    "\nMISMATCH at partition {}; the live store was kept",
                    v.first_mismatch.map_or("?".into(), |m| m.to_string())
                )),
            }
        }
        RebuildPhase::Failed => text.push_str(&format!(
            "\nFAILED: {}; the live store was kept",
            v.error.as_deref().unwrap_or("no reason given")
        )),
        _ => {}
    }
    if !v.partitions.is_empty() {
        let rows: Vec<Vec<String>> = v
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.partition.to_string(),
                    p.rebuilt_offset.to_string(),
                    p.live_offset.to_string(),
                    p.compared_at.map_or("-".into(), |o| o.to_string()),
                    short_digest(p.live_digest.as_deref()),
                    short_digest(p.rebuilt_digest.as_deref()),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(
            &[
                "PARTITION",
                "REBUILT",
                "LIVE",
                "COMPARED AT",
                "LIVE DIGEST",
                "REBUILT DIGEST",
            ],
            &rows,
        ));
    }
    text
}

/// The columns of a parked-accounts table.
pub const PARKED_COLUMNS: [&str; 6] = [
    "ACCOUNT",
    "PARTITION",
    "FIRST OFFSET",
    "WAITING",
    "REASON",
    "SERVED BY",
];

/// One parked account's cells, in [`PARKED_COLUMNS`] order.
pub fn parked_cells(a: &ParkedAccount) -> [String; 6] {
    [
        a.account_id.to_string(),
        a.partition.to_string(),
        a.first_offset.to_string(),
        a.waiting.to_string(),
        a.reason.clone(),
        a.served_by.clone(),
    ]
}

/// The parked accounts as a table, or that there are none.
pub fn parked_table(accounts: &[ParkedAccount]) -> String {
    if accounts.is_empty() {
        return "no parked accounts".into();
    }
    let rows: Vec<Vec<String>> = accounts.iter().map(|a| parked_cells(a).to_vec()).collect();
    table(&PARKED_COLUMNS, &rows)
}

/// `ledger admin parked`: the table, and whether every instance answered.
pub fn parked_text(v: &ParkedView) -> String {
    let mut text = parked_table(&v.accounts);
    if !v.complete {
        text.push_str(
            "\nincomplete: an instance did not answer, and the accounts of its partitions are left out",
        );
    }
    text
}

/// A parked account's retry or skip, accepted: where the decision is in the log.
pub fn unpark_line(a: &UnparkAccepted) -> String {
    format!(
        "{} of {} (waiting from offset {}) accepted: the decision is at partition {}, offset {}; token {}",
        a.action.as_str(),
        a.account_id,
        a.first_offset,
        a.partition,
        a.offset,
        a.token
    )
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    /// How many values were recorded.
    pub samples: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// A latency histogram in microseconds, from 1 µs to one hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("the bounds are valid")
}

/// Records a duration into a [`latency_histogram`].
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
}

impl LatencySummary {
    /// The summary of a [`latency_histogram`]; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
        Some(Self {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_in_milliseconds() {
        let mut h = latency_histogram();
        assert_eq!(LatencySummary::of(&h), None);
        for ms in 1..=100u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let s = LatencySummary::of(&h).unwrap();
        assert_eq!(s.samples, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert_eq!(
            s.to_string(),
            format!(
                "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                s.p50_ms, s.p99_ms, s.max_ms
            )
        );
    }

    #[test]
    fn lines() {
        let a = AccountView {
            account_id: ledger_domain::AccountId::parse("acc-1").unwrap(),
            open: true,
            balance: 950,
            applied_events: 3,
            parked: false,
        };
        assert_eq!(
            account_line(&a),
            "acc-1: balance 950 (open, 3 applied events)"
        );
        let parked = AccountView { parked: true, ..a };
        assert_eq!(
            account_line(&parked),
            "acc-1: balance 950 (open, 3 applied events; PARKED: later events wait, see `ledger admin parked`)"
        );
        let c = CommandView {
            command_id: ledger_domain::CommandId::parse("c-42").unwrap(),
            status: ledger_api::CommandOutcome::Rejected,
            reason: Some("insufficient_funds".into()),
            account_id: ledger_domain::AccountId::parse("acc-1").unwrap(),
            partition: 2,
            offset: 41,
            transfer: None,
        };
        assert_eq!(
            command_line(&c),
            "c-42: rejected (insufficient_funds) on acc-1 at partition 2, offset 41"
        );
    }

    fn transfer(
        status: CommandOutcome,
        reason: Option<&str>,
        settled: Option<(i32, i64)>,
    ) -> CommandView {
        CommandView {
            command_id: ledger_domain::CommandId::parse("t-1").unwrap(),
            status,
            reason: reason.map(str::to_string),
            account_id: ledger_domain::AccountId::parse("acc-1").unwrap(),
            partition: 2,
            offset: 41,
            transfer: Some(TransferView {
                to_account: ledger_domain::AccountId::parse("acc-2").unwrap(),
                amount: ledger_domain::Amount::new(500).unwrap(),
                settled_at: settled
                    .map(|(partition, offset)| ledger_api::LogPosition { partition, offset }),
                settled_token: settled.map(|(p, o)| format!("v1.{p}.{o}")),
            }),
        }
    }

    #[test]
    fn a_transfer_line_says_where_it_settled() {
        let head = "t-1: {} on acc-1 at partition 2, offset 41; transfer of 500 to acc-2";
        let want = |outcome: &str, tail: &str| head.replace("{}", outcome) + tail;
        assert_eq!(
            command_line(&transfer(CommandOutcome::Pending, None, None)),
            want("pending", ", not settled yet")
        );
        assert_eq!(
            command_line(&transfer(CommandOutcome::Applied, None, Some((4, 17)))),
            want("applied", ", settled at partition 4, offset 17")
        );
        assert_eq!(
            command_line(&transfer(
                CommandOutcome::Refunded,
                Some("destination_not_open"),
                Some((2, 45))
            )),
            want(
                "refunded (destination_not_open)",
                ", settled at partition 2, offset 45"
            )
        );
        assert_eq!(
            command_line(&transfer(
                CommandOutcome::Rejected,
                Some("insufficient_funds"),
                None
            )),
            want("rejected (insufficient_funds)", "")
        );
    }

    #[test]
    fn totals_say_whether_money_is_conserved_and_fully_counted() {
        let mut t = TotalsView {
            balance_sum: 900,
            pending_transfers_sum: 100,
            deposits_sum: 1200,
            withdrawals_sum: 200,
            transfers_debited_sum: 600,
            transfers_credited_sum: 450,
            transfers_refunded_sum: 50,
            conserved: true,
            complete: true,
            as_of: Vec::new(),
        };
        assert_eq!(
            totals_text(&t),
            "balances 900, pending transfers 100, deposits 1200, withdrawals 200\n\
             transfers: 600 debited, 450 credited, 50 refunded\n\
             conserved: yes; complete: yes (0 partitions)"
        );
        t.conserved = false;
        t.complete = false;
        t.balance_sum = 950;
        let text = totals_text(&t);
        assert!(
            text.ends_with(
                "conserved: NO: balances plus pending transfers are 1050, deposits minus withdrawals 1000; \
                 complete: no (only 0 partitions could be counted now)"
            ),
            "{text}"
        );
    }

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let rows = vec![vec!["0", "proj-a", "x"], vec!["10", "p", ""]];
        assert_eq!(
            table(&["P", "OWNER", "NOTE"], &rows),
            "P   OWNER   NOTE\n0   proj-a  x\n10  p"
        );
        assert_eq!(table::<&str>(&["A", "B"], &[]), "A  B");
    }

    #[test]
    fn pause_text_names_the_paused_partitions_and_the_instances() {
        let v = PauseView {
            paused_partitions: vec![0, 3],
            instances: vec!["proj-a".into(), "proj-b".into()],
        };
        assert_eq!(
            pause_text(&v),
            "paused partitions: 0, 3 (applied by proj-a, proj-b)"
        );
        let v = PauseView {
            paused_partitions: vec![],
            instances: vec![],
        };
        assert_eq!(pause_text(&v), "no partition is paused (applied by none)");
    }

    fn rebuild(phase: RebuildPhase) -> RebuildView {
        let part = |partition, digest: &str| ledger_api::RebuildPartition {
            partition,
            rebuilt_offset: 41,
            live_offset: 41,
            compared_at: Some(41),
            live_digest: Some("a".repeat(64)),
            rebuilt_digest: Some(digest.to_string()),
        };
        RebuildView {
            instance_id: "proj-a".into(),
            phase,
            started_at_ms: 1_700_000_000_000,
            finished_at_ms: phase.is_final().then_some(1_700_000_003_250),
            events_replayed: 82,
            first_mismatch: (phase == RebuildPhase::Mismatch).then_some(1),
            error: (phase == RebuildPhase::Failed).then(|| "disk full".to_string()),
            partitions: vec![part(0, &"a".repeat(64)), part(1, &"b".repeat(64))],
        }
    }

    #[test]
    fn a_rebuild_says_where_it_stands_and_lists_its_partitions() {
        let text = rebuild_text(&rebuild(RebuildPhase::Swapped));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "rebuild on proj-a: swapped, 82 events replayed, started 2023-11-14T22:13:20Z, took 3.2 s"
        );
        assert_eq!(
            lines[1],
            "PARTITION  REBUILT  LIVE  COMPARED AT  LIVE DIGEST        REBUILT DIGEST"
        );
        assert_eq!(
            lines[2],
            "0          41       41    41           aaaaaaaaaaaaaaaa…  aaaaaaaaaaaaaaaa…"
        );
        let running = rebuild_text(&rebuild(RebuildPhase::Replaying));
        assert!(
            running.starts_with(
                "rebuild on proj-a: replaying, 82 events replayed, started 2023-11-14T22:13:20Z\n"
            ),
            "{running}"
        );
    }

    #[test]
    fn a_mismatch_names_the_partition_and_both_digests_in_full() {
        let text = rebuild_text(&rebuild(RebuildPhase::Mismatch));
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            format!(
                "MISMATCH at partition 1 (compared at offset 41): live digest {}, rebuilt digest {}; the live store was kept",
                "a".repeat(64),
                "b".repeat(64)
            )
        );
        let text = rebuild_text(&rebuild(RebuildPhase::Failed));
        assert_eq!(
            text.lines().nth(1),
            Some("FAILED: disk full; the live store was kept")
        );
    }

    #[test]
    fn parked_accounts_are_a_table_and_an_unpark_names_its_place() {
        let acc = ledger_domain::AccountId::parse("acc-7").unwrap();
        let v = ParkedView {
            accounts: vec![ParkedAccount {
                account_id: acc.clone(),
                partition: 2,
                first_offset: 17,
                waiting: 3,
                reason: "unknown event type".into(),
                served_by: "proj-b".into(),
            }],
            complete: false,
        };
        assert_eq!(
            parked_text(&v),
            "ACCOUNT  PARTITION  FIRST OFFSET  WAITING  REASON              SERVED BY\n\
             acc-7    2          17            3        unknown event type  proj-b\n\
             incomplete: an instance did not answer, and the accounts of its partitions are left out"
        );
        let none = ParkedView {
            accounts: vec![],
            complete: true,
        };
        assert_eq!(parked_text(&none), "no parked accounts");
        let a = UnparkAccepted {
            account_id: acc,
            action: ledger_domain::UnparkKind::Skip,
            first_offset: 17,
            partition: 2,
            offset: 21,
            token: "v1.2.21".into(),
        };
        assert_eq!(
            unpark_line(&a),
            "skip of acc-7 (waiting from offset 17) accepted: the decision is at partition 2, offset 21; token v1.2.21"
        );
    }
}
