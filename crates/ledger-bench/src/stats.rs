//! Latency histograms (HdrHistogram, in microseconds) and their summaries in ms.
//!
//! Besides the summaries, a histogram can be written out whole ([`recorded`]), so that the
//! report draws the distribution from the very counts the percentiles came from.

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

/// Every distinct recorded value (in ms, µs precision) with its count, lowest first: the
/// histogram itself, at HdrHistogram's 3 significant digits, so a few thousand pairs at
/// most whatever the number of samples.
pub fn recorded(h: &Histogram<u64>) -> Value {
    Value::Array(
        h.iter_recorded()
            .map(|v| json!([v.value_iterated_to() as f64 / 1000.0, v.count_at_value()]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn recorded_keeps_every_count() {
        let mut h = latency_histogram();
        for ms in [1, 1, 2, 40] {
            record(&mut h, Duration::from_millis(ms));
        }
        let v = recorded(&h);
        let pairs = v.as_array().unwrap();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0], json!([1.0, 2]));
        let total: u64 = pairs.iter().map(|p| p[1].as_u64().unwrap()).sum();
        assert_eq!(total, 4);
        // Values round up to their bucket's highest equivalent, within 0.1 %.
        assert!((pairs[2][0].as_f64().unwrap() - 40.0).abs() < 0.04);
    }
}
