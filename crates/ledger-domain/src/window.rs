//! The idempotency window: for how long, in event time, a command id stays a duplicate.
//!
//! Time here is the log's, never a clock's: each partition keeps a *watermark*, the
//! latest `time_ms` among the events it applied, and an outcome recorded when the
//! watermark stood at `kept_from` expires once the watermark reaches `kept_from + window`.
//! So a projector that was down for a day and replays that day expires exactly what one
//! that never stopped expired, at the same offsets: two stores of a partition at one
//! offset hold the same outcomes, which is what their digests compare.

use std::fmt;
use std::time::Duration;

/// The shortest window accepted: below it, a client's ordinary retry after a timeout
/// could already find its first attempt expired.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);

/// How long a command's outcome is kept after it was recorded, in event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyWindow {
    ms: i64,
}

/// A window that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the idempotency window must be from {min} to {max}, got {got}", min = humanize(MIN_WINDOW), max = humanize(MAX_WINDOW))]
pub struct WindowError {
    got: String,
}

/// A hundred years: beyond it, say `unbounded`.
const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn humanize(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl IdempotencyWindow {
    /// A window of `d`, from [`MIN_WINDOW`] to a hundred years.
    pub fn new(d: Duration) -> Result<Self, WindowError> {
        if d < MIN_WINDOW || d > MAX_WINDOW {
            return Err(WindowError { got: humanize(d) });
        }
        Ok(Self {
            ms: i64::try_from(d.as_millis()).expect("a hundred years of ms fit in i64"),
        })
    }

    /// The window in milliseconds.
    pub fn as_millis(self) -> i64 {
        self.ms
    }

    /// The window as a duration.
    pub fn as_duration(self) -> Duration {
        Duration::from_millis(self.ms as u64)
    }

    /// Whether an outcome kept from `kept_from_ms` has expired at `watermark_ms`.
    pub fn expired(self, kept_from_ms: i64, watermark_ms: i64) -> bool {
        kept_from_ms <= self.horizon(watermark_ms)
    }

    /// The latest `kept_from_ms` that has expired at `watermark_ms`.
    pub fn horizon(self, watermark_ms: i64) -> i64 {
        watermark_ms.saturating_sub(self.ms)
    }

    /// Parses `7d`, `1h 30m`, … (humantime), or `unbounded` (`None`: outcomes are kept
    /// for ever).
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        if s.trim().eq_ignore_ascii_case("unbounded") {
            return Ok(None);
        }
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!("{s:?} is neither a duration (7d, 24h, …) nor `unbounded`: {e}")
        })?;
        Self::new(d).map(Some).map_err(|e| e.to_string())
    }
}

/// A window as a flag gives it: a duration, or `unbounded` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSetting(pub Option<IdempotencyWindow>);

impl std::str::FromStr for WindowSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        IdempotencyWindow::parse(s).map(Self)
    }
}

impl fmt::Display for WindowSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(w) => w.fmt(f),
            None => f.write_str("unbounded"),
        }
    }
}

impl fmt::Display for IdempotencyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&humanize(self.as_duration()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_expires_when_the_watermark_reaches_the_window() {
        let w = IdempotencyWindow::new(Duration::from_secs(3600)).unwrap();
        assert!(!w.expired(1_000, 1_000 + 3_599_999));
        assert!(w.expired(1_000, 1_000 + 3_600_000));
    }

    #[test]
    fn windows_parse_from_durations_or_unbounded() {
        assert_eq!(
            IdempotencyWindow::parse("7d")
                .unwrap()
                .map(|w| w.as_millis()),
            Some(7 * 24 * 3600 * 1000)
        );
        assert_eq!(IdempotencyWindow::parse("Unbounded").unwrap(), None);
        let short = IdempotencyWindow::parse("59s").unwrap_err();
        assert!(short.contains("from 1m"), "{short}");
        assert!(IdempotencyWindow::parse("soon").is_err());
        assert_eq!(
            IdempotencyWindow::parse("1h").unwrap().unwrap().to_string(),
            "1h"
        );
    }
}
