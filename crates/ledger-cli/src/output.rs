//! What `ledger` prints: a human-readable text, or with `--json` exactly one JSON
//! document on stdout. Errors always go to stderr as one line; with `--json` they are
//! also the JSON document on stdout, so a script always has something to parse.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;

use ledger_api::{AccountView, CommandView};

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

/// A command's outcome in one line: `c-42: rejected (insufficient_funds) on acc-1 at
/// partition 2, offset 41`.
pub fn command_line(c: &CommandView) -> String {
    let outcome = match &c.reason {
        Some(r) => format!("{} ({r})", c.status),
        None => c.status.to_string(),
    };
    format!(
        "{}: {outcome} on {} at partition {}, offset {}",
        c.command_id, c.account_id, c.partition, c.offset
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
}
