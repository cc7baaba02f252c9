//! Reading the services' own `/metrics` around a measurement, to see where the time
//! went from the inside: how big the projector's batches were and how long applying and
//! flushing them took, how long the ingest waited for the broker.

use std::collections::HashMap;

use anyhow::bail;
use serde_json::{json, Value};

use crate::http::Pool;
use crate::procfs::round3;

/// One scrape: every sample, by its name with labels as printed (`a_bucket{le="1.0"}`).
#[derive(Clone, Debug, Default)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus / OpenMetrics text format (comments skipped).
    pub fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .filter_map(|l| {
                    let (name, value) = l.rsplit_once(' ')?;
                    Some((name.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// `GET /metrics`.
    pub async fn fetch(pool: &Pool) -> anyhow::Result<Self> {
        let r = pool.get("/metrics").await?;
        if !r.status.is_success() {
            bail!("GET /metrics answered {}", r.status);
        }
        Ok(Self::parse(&String::from_utf8_lossy(&r.body)))
    }

    /// A sample's value, 0 when absent.
    pub fn value(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// The histogram `name` between `self` (earlier) and `later`: observations, their
    /// sum and mean, and the bucket bounds under which 50 %, 99 % and all of them fell.
    pub fn histogram_delta(&self, later: &Scrape, name: &str) -> Value {
        let count = later.value(&format!("{name}_count")) - self.value(&format!("{name}_count"));
        let sum = later.value(&format!("{name}_sum")) - self.value(&format!("{name}_sum"));
        let prefix = format!("{name}_bucket{{le=\"");
        let mut buckets: Vec<(f64, f64)> = later
            .0
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v - self.value(k)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let quantile_le = |q: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= q * count)
                .map(|(le, _)| {
                    if le.is_finite() {
                        json!(le)
                    } else {
                        json!("+Inf")
                    }
                })
        };
        if count <= 0.0 {
            return json!({"count": 0});
        }
        json!({
            "count": count,
            "sum": round3(sum),
            "mean": (sum / count * 1e6).round() / 1e6,
            "p50_le": quantile_le(0.5),
            "p99_le": quantile_le(0.99),
            // The first bucket that holds every observation: a bound on the maximum.
            "max_le": quantile_le(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_delta() {
        let a = Scrape::parse(
            "# TYPE h histogram\nh_sum 10.0\nh_count 2\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"8.0\"} 2\nh_bucket{le=\"+Inf\"} 2\n",
        );
        let b = Scrape::parse(
            "h_sum 110.0\nh_count 12\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"8.0\"} 3\nh_bucket{le=\"+Inf\"} 12\n",
        );
        let d = a.histogram_delta(&b, "h");
        assert_eq!(d["count"], 10.0);
        assert_eq!(d["mean"], 10.0);
        assert_eq!(d["p50_le"], "+Inf");
        assert_eq!(d["max_le"], "+Inf");
        assert_eq!(b.value("h_count"), 12.0);
    }
}
