//! Latency histograms (HdrHistogram, in microseconds) and their summaries in ms.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// A histogram of latencies in microseconds, from 1 µs to 10 minutes, 3 significant
/// digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3)
        .expect("the bounds are constants that hdrhistogram accepts")
}

/// Records a duration, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = (d.as_micros() as u64).clamp(1, h.high());
    h.record(us)
        .expect("the value was clamped into the histogram's range");
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// Count, mean and percentiles in milliseconds.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "mean_ms": (h.mean() / 10.0).round() / 100.0,
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p90_ms": ms(h.value_at_quantile(0.90)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}
