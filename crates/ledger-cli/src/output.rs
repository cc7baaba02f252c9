//! What `ledger` prints: a human-readable text, or with `--json` exactly one JSON
//! document on stdout. Errors always go to stderr as one line; with `--json` they are
//! also the JSON document on stdout, so a script always has something to parse.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use ledger_api::{AccountView, CommandOutcome, CommandView, TotalsView, TransferView};

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

/// An account in one line: `acc-1: balance 950 (open, 3 applied events)`.
pub fn account_line(a: &AccountView) -> String {
    format!(
        "{}: balance {} ({}, {} applied event{})",
        a.account_id,
        a.balance,
        if a.open { "open" } else { "not open" },
        a.applied_events,
        if a.applied_events == 1 { "" } else { "s" }
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
        };
        assert_eq!(
            account_line(&a),
            "acc-1: balance 950 (open, 3 applied events)"
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
}
