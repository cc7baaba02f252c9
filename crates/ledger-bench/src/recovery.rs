//! The ingest's recovery from a frozen broker: single commands flow over a few
//! keep-alive connections, the broker is frozen (SIGSTOP) for longer than the ingest's
//! delivery timeout, then thawed (SIGCONT), and the clock runs from the thaw to the
//! first `202`, and to the first whole second in which every answer was a `202`.
//!
//! A freeze is the fault that left librdkafka clients stuck after the broker came back;
//! the number says how long users feel it now that the services replace stuck clients.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::{Method, StatusCode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::http::Pool;
use crate::procfs::round3;
use crate::workload;

/// How to run the measurement.
#[derive(Clone, Debug)]
pub struct RecoverySpec {
    /// `http://IP:PORT` of the ingest.
    pub url: String,
    /// The broker's JVM.
    pub broker_pid: i32,
    /// Concurrent connections sending single commands.
    pub connections: usize,
    /// How long the broker stays frozen.
    pub freeze: Duration,
    /// Accounts the commands touch.
    pub accounts: u64,
}

/// Gives up this long after the thaw.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Traffic before the freeze, so commands are in flight when it strikes.
const BEFORE: Duration = Duration::from_secs(2);

/// One answer: when it came, and whether it was a 202.
type Answer = (Instant, bool);

/// Runs it and returns the JSON of the step.
pub async fn run(spec: RecoverySpec) -> anyhow::Result<Value> {
    let pool = Arc::new(Pool::new(&spec.url)?);
    pool.wait_ok("/readyz", Duration::from_secs(30)).await?;
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let bodies = Arc::new(workload::single_bodies(
        spec.connections * 64,
        spec.accounts,
        3,
    ));
    let mut workers = Vec::new();
    let step = spec.connections;
    for w in 0..spec.connections {
        let (pool, answers, stop, bodies) =
            (pool.clone(), answers.clone(), stop.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[i % bodies.len()].clone();
                i += step;
                let ok = matches!(
                    pool.request(Method::POST, "/v1/commands", Some(body)).await,
                    Ok(r) if r.status == StatusCode::ACCEPTED
                );
                answers
                    .lock()
                    .expect("the answers lock is never held across a panic")
                    .push((Instant::now(), ok));
                if !ok {
                    // A refused command is retried by real clients after Retry-After;
                    // a short pause keeps this loop from spinning on fast 503s.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    tokio::time::sleep(BEFORE).await;
    let broker = Pid::from_raw(spec.broker_pid);
    kill(broker, Signal::SIGSTOP).context("freezing the broker")?;
    let frozen_at = Instant::now();
    tokio::time::sleep(spec.freeze).await;
    // Thaw whatever happens next.
    let thawed = kill(broker, Signal::SIGCONT);
    let back = Instant::now();
    thawed.context("thawing the broker")?;

    let mut first_ok = None;
    let mut all_ok = None;
    while back.elapsed() < GIVE_UP && all_ok.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answers = answers
            .lock()
            .expect("the answers lock is never held across a panic")
            .clone();
        first_ok = answers
            .iter()
            .filter(|(t, ok)| *ok && *t >= back)
            .map(|(t, _)| *t - back)
            .min();
        all_ok = first_clean_second(&answers, back);
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let answers = answers
        .lock()
        .expect("the answers lock is never held across a panic")
        .clone();
    let refused_during = answers
        .iter()
        .filter(|(t, ok)| !*ok && *t >= frozen_at)
        .count();
    let Some(first_ok) = first_ok else {
        bail!("no command was accepted within {GIVE_UP:?} of the broker being thawed");
    };
    Ok(json!({
        "freeze_s": spec.freeze.as_secs_f64(),
        "connections": spec.connections,
        "ingest_recovery_s": round3(first_ok.as_secs_f64()),
        "ingest_recovery_all_ok_s": all_ok.map(|d| round3(d.as_secs_f64())),
        "refused_after_freeze": refused_during,
        "answers": answers.len(),
    }))
}

/// From `back` to the start of the first whole second, after `back`, in which there
/// were answers and every one was a 202.
fn first_clean_second(answers: &[Answer], back: Instant) -> Option<Duration> {
    let last = answers.iter().map(|(t, _)| *t).max()?;
    let mut start = back;
    while start + Duration::from_secs(1) <= last {
        let end = start + Duration::from_secs(1);
        let window: Vec<bool> = answers
            .iter()
            .filter(|(t, _)| *t >= start && *t < end)
            .map(|(_, ok)| *ok)
            .collect();
        if !window.is_empty() && window.iter().all(|ok| *ok) {
            return Some(start - back);
        }
        start += Duration::from_millis(100);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clean_second_starts_after_the_last_refusal() {
        let back = Instant::now();
        let at = |ms: u64| back + Duration::from_millis(ms);
        let answers = vec![
            (at(100), false),
            (at(400), true),
            (at(900), false),
            (at(1000), true),
            (at(1500), true),
            (at(2100), true),
            (at(3000), true),
        ];
        assert_eq!(
            first_clean_second(&answers, back),
            Some(Duration::from_millis(1000))
        );
        assert_eq!(first_clean_second(&answers[..3], back), None);
    }
}
