//! End-to-end visibility lag: how long after its `202` a command is visible in the
//! projector, at a fixed offered rate.
//!
//! Open loop: command `i` is due at `start + i / rate` whether or not earlier ones were
//! answered, so a slow service shows up as latency instead of quietly lowering the rate
//! (coordinated omission). Every command is followed: right after its `202`, a
//! `GET /v1/commands/{id}?after=TOKEN` that the projector answers the moment the event
//! is applied, so the lag is measured for all of them, not a sample.
//!
//! Besides the percentiles, the result keeps the lag histograms whole (every recorded
//! value with its count) and the lag's percentiles per second of the measured window, so
//! the report can draw the distribution and show whether the tail is spread out or comes
//! from a few stalls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use ledger_api::{Accepted, BatchItem, BatchResults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::http::Pool;
use crate::procfs::{round3, CpuSnapshot, Watched};
use crate::prom::Scrape;
use crate::stats;
use crate::workload::{account_id, command_with_id, random_money};

/// What to run.
#[derive(Clone, Debug)]
pub struct E2eSpec {
    /// The ingest's base URL.
    pub ingest_url: String,
    /// The projector's base URL.
    pub projector_url: String,
    /// Offered commands per second.
    pub rate: f64,
    /// Time at that rate before measuring.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Accounts opened first and then used.
    pub accounts: u64,
    /// `timeout_ms` of each visibility wait.
    pub wait_timeout_ms: u64,
    /// Seed of the workload.
    pub seed: u64,
    /// Processes whose CPU use to report.
    pub watched: Vec<Watched>,
}

enum Outcome {
    /// Visible: (202 − due, visible − 202, visible − due).
    Visible(Duration, Duration, Duration),
    /// Accepted, but not visible within the wait.
    NotVisible(Duration),
    /// Not accepted.
    Refused(String),
    /// Accepted, then the visibility query failed.
    QueryFailed(String),
}

struct Sample {
    measured: bool,
    /// When it was due, from the start of the measured window.
    offset: Duration,
    outcome: Outcome,
}

/// Opens the accounts (one batch) and waits until the projector has them all.
async fn open_accounts(
    ingest: &Pool,
    projector: &Pool,
    spec: &E2eSpec,
    run: &str,
) -> anyhow::Result<()> {
    let mut body = String::from("[");
    for k in 0..spec.accounts {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"type":"open_account","account_id":"{}","command_id":"e2e-{run}-open-{k}"}}"#,
            account_id(k)
        ));
    }
    body.push(']');
    let r = ingest
        .request(Method::POST, "/v1/commands/batch", Some(Bytes::from(body)))
        .await?;
    if r.status.as_u16() != 202 {
        bail!(
            "opening the accounts: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    let answer: BatchResults =
        serde_json::from_slice(&r.body).context("parsing the batch answer")?;
    let mut last: std::collections::BTreeMap<i32, i64> = Default::default();
    for item in answer.results {
        let a = match item {
            BatchItem::Accepted(a) => a,
            BatchItem::Refused { error } => {
                bail!(
                    "opening an account failed: {} {}",
                    error.code,
                    error.message
                )
            }
        };
        let e = last.entry(a.partition).or_insert(a.offset);
        *e = (*e).max(a.offset);
    }
    for (p, o) in last {
        let path = format!("/v1/progress?after=v1.{p}.{o}&timeout_ms=30000");
        let r = projector.get(&path).await?;
        if !r.status.is_success() {
            bail!(
                "the projector did not apply the account openings: {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    Ok(())
}

async fn one_command(
    ingest: Arc<Pool>,
    projector: Arc<Pool>,
    body: Bytes,
    due: Instant,
    wait_timeout_ms: u64,
) -> Outcome {
    let r = match ingest
        .request(Method::POST, "/v1/commands", Some(body))
        .await
    {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(format!("{e:#}")),
    };
    let accepted_at = Instant::now();
    if r.status.as_u16() != 202 {
        return Outcome::Refused(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
    }
    let a: Accepted = match serde_json::from_slice(&r.body) {
        Ok(a) => a,
        Err(e) => return Outcome::Refused(format!("unparsable 202: {e}")),
    };
    let path = format!(
        "/v1/commands/{}?after={}&timeout_ms={wait_timeout_ms}",
        a.command_id, a.token
    );
    match projector.get(&path).await {
        Ok(q) if q.status.as_u16() == 200 => {
            let visible_at = Instant::now();
            Outcome::Visible(
                accepted_at - due,
                visible_at - accepted_at,
                visible_at - due,
            )
        }
        Ok(q) if q.status.as_u16() == 503 => Outcome::NotVisible(accepted_at - due),
        Ok(q) => Outcome::QueryFailed(format!("{} {}", q.status, String::from_utf8_lossy(&q.body))),
        Err(e) => Outcome::QueryFailed(format!("{e:#}")),
    }
}

/// Runs the measurement.
pub async fn run(spec: E2eSpec) -> anyhow::Result<Value> {
    if !spec.rate.is_finite() || spec.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let ingest = Arc::new(Pool::new(&spec.ingest_url)?);
    let projector = Arc::new(Pool::new(&spec.projector_url)?);
    ingest.wait_ok("/readyz", Duration::from_secs(60)).await?;
    projector
        .wait_ok("/readyz", Duration::from_secs(60))
        .await?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let run = format!("{:08x}", rng.random::<u32>());
    open_accounts(&ingest, &projector, &spec, &run).await?;

    // Every body up front, so pacing spends no time building them.
    let period = Duration::from_secs_f64(1.0 / spec.rate);
    let total = ((spec.warmup + spec.duration).as_secs_f64() * spec.rate).ceil() as u64;
    let bodies: Vec<Bytes> = (0..total)
        .map(|i| {
            let acc = account_id(rng.random_range(0..spec.accounts));
            command_with_id(&acc, random_money(&mut rng), &format!("e2e-{run}-{i}"))
        })
        .collect();

    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;

    let observer = {
        let (watched, ingest, projector) =
            (spec.watched.clone(), ingest.clone(), projector.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let before = (
                CpuSnapshot::take(&watched),
                Scrape::fetch(&ingest).await.unwrap_or_default(),
                Scrape::fetch(&projector).await.unwrap_or_default(),
            );
            tokio::time::sleep_until(end.into()).await;
            let after = (
                CpuSnapshot::take(&watched),
                Scrape::fetch(&ingest).await.unwrap_or_default(),
                Scrape::fetch(&projector).await.unwrap_or_default(),
            );
            (before, after)
        })
    };

    let mut max_late = Duration::ZERO;
    let mut i = 0u64;
    while i < total {
        let now = Instant::now();
        let mut due = start + period.mul_f64(i as f64);
        // Everything due by now goes out now (tokio's timer has 1 ms granularity).
        while due <= now && i < total {
            max_late = max_late.max(now - due);
            let (ingest, projector, tx) = (ingest.clone(), projector.clone(), tx.clone());
            let body = bodies[i as usize].clone();
            let measured = due >= measure_from;
            let offset = due.saturating_duration_since(measure_from);
            let wait = spec.wait_timeout_ms;
            tokio::spawn(async move {
                let outcome = one_command(ingest, projector, body, due, wait).await;
                let _ = tx.send(Sample {
                    measured,
                    offset,
                    outcome,
                });
            });
            i += 1;
            due = start + period.mul_f64(i as f64);
        }
        if i < total {
            tokio::time::sleep_until(due.into()).await;
        }
    }
    drop(tx);

    let mut lag = stats::latency_histogram();
    let mut accept = stats::latency_histogram();
    let mut total_h: Histogram<u64> = stats::latency_histogram();
    let seconds = (spec.duration.as_secs_f64().ceil() as usize).max(1);
    let mut lag_by_second: Vec<Histogram<u64>> =
        (0..seconds).map(|_| stats::latency_histogram()).collect();
    let (mut sent, mut not_visible, mut refused, mut query_failed) = (0u64, 0u64, 0u64, 0u64);
    let mut first_failure: Option<String> = None;
    // Each command ends by its wait timeout; the margin covers a stuck ingest.
    let drain_deadline =
        Instant::now() + Duration::from_millis(spec.wait_timeout_ms) + Duration::from_secs(30);
    loop {
        let s = match tokio::time::timeout_at(drain_deadline.into(), rx.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(_) => bail!("commands still unanswered 30 s after their wait timeout"),
        };
        if !s.measured {
            continue;
        }
        sent += 1;
        match s.outcome {
            Outcome::Visible(a, l, t) => {
                stats::record(&mut accept, a);
                stats::record(&mut lag, l);
                let second = (s.offset.as_secs() as usize).min(seconds - 1);
                stats::record(&mut lag_by_second[second], l);
                stats::record(&mut total_h, t);
            }
            Outcome::NotVisible(a) => {
                stats::record(&mut accept, a);
                not_visible += 1;
            }
            Outcome::Refused(e) => {
                refused += 1;
                first_failure.get_or_insert(e);
            }
            Outcome::QueryFailed(e) => {
                query_failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let ((cpu0, ing0, proj0), (cpu1, ing1, proj1)) = observer.await?;
    let secs = spec.duration.as_secs_f64();
    let mut out = Map::new();
    out.insert("offered_per_s".into(), json!(spec.rate));
    out.insert("warmup_s".into(), json!(spec.warmup.as_secs_f64()));
    out.insert("duration_s".into(), json!(secs));
    out.insert("accounts".into(), json!(spec.accounts));
    out.insert("sent".into(), json!(sent));
    out.insert("visible".into(), json!(lag.len()));
    out.insert("not_visible_within_wait".into(), json!(not_visible));
    out.insert("refused".into(), json!(refused));
    out.insert("query_failed".into(), json!(query_failed));
    out.insert("first_failure".into(), json!(first_failure));
    out.insert(
        "accepted_per_s".into(),
        json!(round3(accept.len() as f64 / secs)),
    );
    out.insert(
        "pacing_max_late_ms".into(),
        json!(round3(max_late.as_secs_f64() * 1e3)),
    );
    out.insert("lag_202_to_visible".into(), stats::summary(&lag));
    out.insert("accept_latency_from_due".into(), stats::summary(&accept));
    out.insert("visible_from_due".into(), stats::summary(&total_h));
    out.insert("lag_202_to_visible_histogram".into(), stats::recorded(&lag));
    out.insert(
        "visible_from_due_histogram".into(),
        stats::recorded(&total_h),
    );
    // By the second in which each command was due.
    out.insert(
        "lag_202_to_visible_by_second".into(),
        Value::Array(
            lag_by_second
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut v = stats::summary(h);
                    if let Some(o) = v.as_object_mut() {
                        o.insert("second".into(), json!(i));
                    }
                    v
                })
                .collect(),
        ),
    );
    out.insert("cpu".into(), Value::Object(cpu0.report_until(&cpu1)));
    out.insert(
        "ingest_produce_latency_seconds".into(),
        ing0.histogram_delta(&ing1, "ingest_produce_latency_seconds"),
    );
    out.insert(
        "projector_batch_size".into(),
        proj0.histogram_delta(&proj1, "projector_batch_size"),
    );
    out.insert(
        "projector_apply_flush_seconds".into(),
        proj0.histogram_delta(&proj1, "projector_apply_flush_seconds"),
    );
    Ok(Value::Object(out))
}
