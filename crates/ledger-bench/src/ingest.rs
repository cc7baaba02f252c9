//! Closed-loop HTTP load on the ingest: a fixed number of keep-alive connections, each
//! sending its next command as soon as the last one was answered.
//!
//! Throughput counts the items answered within the measurement window (after a
//! warm-up), so requests straddling its edges neither inflate nor deflate it; latency is
//! that of the same requests. The load generator's CPU share over the window says
//! whether it, rather than the ingest, was the limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use serde_json::{json, Map, Value};

use crate::http::{Conn, Pool, Target};
use crate::procfs::{round3, CpuSnapshot, Watched};
use crate::prom::Scrape;
use crate::stats;

/// How to drive the ingest.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// `http://IP:PORT` of the ingest.
    pub url: String,
    /// The route: `/v1/commands` or `/v1/commands/batch`.
    pub path: &'static str,
    /// Concurrent keep-alive connections.
    pub connections: usize,
    /// Time before measuring (connections, caches and the producer warm up).
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Processes whose CPU use to report.
    pub watched: Vec<Watched>,
}

/// What one connection saw within the window.
struct Tally {
    latency: Histogram<u64>,
    requests: u64,
    items_ok: u64,
    items_failed: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: stats::latency_histogram(),
            requests: 0,
            items_ok: 0,
            items_failed: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            first_failure: None,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("histograms of the same bounds merge");
        self.requests += other.requests;
        self.items_ok += other.items_ok;
        self.items_failed += other.items_failed;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

/// Occurrences of `needle` in `haystack`.
fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

/// Items accepted and refused in a 202 answer: one for a single command, one per
/// result for a batch (each result carries either a `token` or an `error`).
fn items_of(batch: bool, body: &Bytes) -> (u64, u64) {
    if batch {
        (count(body, b"\"token\""), count(body, b"\"error\""))
    } else {
        (1, 0)
    }
}

async fn worker(
    target: Target,
    spec: Arc<LoadSpec>,
    bodies: Arc<Vec<Bytes>>,
    first: usize,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let batch = spec.path.ends_with("/batch");
    let mut tally = Tally::new();
    let mut conn: Option<Conn> = None;
    let mut i = first;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&target).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.transport_errors += 1;
                    tally.first_failure.get_or_insert(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let body = bodies[i % bodies.len()].clone();
        i += spec.connections;
        let started = Instant::now();
        let result = c.request(Method::POST, spec.path, Some(body)).await;
        let done = Instant::now();
        let counted = done >= measure_from && done <= end;
        match result {
            Ok(r) => {
                if !counted {
                    continue;
                }
                tally.requests += 1;
                *tally.statuses.entry(r.status.as_u16()).or_default() += 1;
                stats::record(&mut tally.latency, done - started);
                if r.status.as_u16() == 202 {
                    let (ok, failed) = items_of(batch, &r.body);
                    tally.items_ok += ok;
                    tally.items_failed += failed;
                } else {
                    tally.items_failed += 1;
                    tally.first_failure.get_or_insert_with(|| {
                        format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
                    });
                }
            }
            Err(e) => {
                conn = None;
                if counted {
                    tally.transport_errors += 1;
                    tally.first_failure.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }
    tally
}

/// Runs the load and reports throughput, latency and CPU use.
pub async fn run(
    spec: LoadSpec,
    bodies: Vec<Bytes>,
    items_per_request: usize,
) -> anyhow::Result<Value> {
    let metrics = Pool::new(&spec.url)?;
    let target = metrics.target().clone();
    metrics.wait_ok("/readyz", Duration::from_secs(60)).await?;
    let spec = Arc::new(spec);
    let bodies = Arc::new(bodies);
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let workers: Vec<_> = (0..spec.connections)
        .map(|w| {
            tokio::spawn(worker(
                target.clone(),
                spec.clone(),
                bodies.clone(),
                w,
                measure_from,
                end,
            ))
        })
        .collect();

    tokio::time::sleep_until(measure_from.into()).await;
    let scrape_before = Scrape::fetch(&metrics).await.ok();
    let cpu_before = CpuSnapshot::take(&spec.watched);
    tokio::time::sleep_until(end.into()).await;
    let cpu_after = CpuSnapshot::take(&spec.watched);
    let scrape_after = Scrape::fetch(&metrics).await.ok();

    let mut tally = Tally::new();
    for w in workers {
        tally.merge(w.await?);
    }
    let secs = spec.duration.as_secs_f64();
    let mut out = Map::new();
    out.insert("connections".into(), json!(spec.connections));
    out.insert("items_per_request".into(), json!(items_per_request));
    out.insert("warmup_s".into(), json!(spec.warmup.as_secs_f64()));
    out.insert("duration_s".into(), json!(secs));
    out.insert("requests".into(), json!(tally.requests));
    out.insert("items_ok".into(), json!(tally.items_ok));
    out.insert("items_failed".into(), json!(tally.items_failed));
    out.insert(
        "items_per_s".into(),
        json!((tally.items_ok as f64 / secs).round()),
    );
    out.insert(
        "requests_per_s".into(),
        json!(round3(tally.requests as f64 / secs)),
    );
    out.insert("latency".into(), stats::summary(&tally.latency));
    out.insert(
        "statuses".into(),
        json!(tally
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect::<BTreeMap<_, _>>()),
    );
    out.insert("transport_errors".into(), json!(tally.transport_errors));
    out.insert("first_failure".into(), json!(tally.first_failure));
    out.insert(
        "cpu".into(),
        Value::Object(cpu_before.report_until(&cpu_after)),
    );
    if let (Some(a), Some(b)) = (scrape_before, scrape_after) {
        out.insert(
            "ingest_produce_latency_seconds".into(),
            a.histogram_delta(&b, "ingest_produce_latency_seconds"),
        );
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_items_are_counted() {
        let body = Bytes::from_static(
            br#"{"results":[{"command_id":"a","token":"v1.0.1"},{"error":{"code":"x","message":"y"}},{"command_id":"b","token":"v1.0.2"}]}"#,
        );
        assert_eq!(items_of(true, &body), (2, 1));
        assert_eq!(items_of(false, &body), (1, 0));
    }
}
