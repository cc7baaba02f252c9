//! Runs a [`Workload`] against the ingest: concurrent workers over keep-alive
//! connections, optional pacing, a progress bar, accept-latency figures, and, with
//! `--verify`, the visibility-lag probes and the check against the model.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use ledger_domain::{AccountId, CommandId};
use serde::Serialize;

use crate::client::{Client, ClientError, Submitted};
use crate::load::{generate, WorkloadSpec};
use crate::output::{latency_histogram, record, LatencySummary};
use crate::verify::{self, LagSample, RunRecord, VerifyReport};
use ledger_api::CommandRequest;

/// Roughly how many commands of a run are probed for their visibility lag.
const LAG_SAMPLES: usize = 200;

/// How to run the load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The workload.
    pub spec: WorkloadSpec,
    /// Commands per second over the whole run, if paced.
    pub rate: Option<f64>,
    /// Requests in flight.
    pub concurrency: usize,
    /// Check the projector against the model afterwards.
    pub verify: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// The figures of a run.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The seed, to repeat the run.
    pub seed: u64,
    /// The account prefix.
    pub prefix: String,
    /// Accounts opened.
    pub accounts: u64,
    /// Commands of the mix.
    pub commands: u64,
    /// The share of the mix that is transfers.
    pub transfers: f64,
    /// Requests in flight.
    pub concurrency: usize,
    /// The pace asked for, if any.
    pub rate: Option<f64>,
    /// Commands sent (opens and mix).
    pub sent: u64,
    /// Commands accepted by the ingest.
    pub accepted: u64,
    /// Commands that needed more than one attempt.
    pub retried: u64,
    /// Wall time of sending, in seconds.
    pub elapsed_s: f64,
    /// Accepted commands per second of wall time.
    pub accepted_per_s: f64,
    /// From sending a command to its `202`, retries included.
    pub accept_latency: Option<LatencySummary>,
    /// The verification, with `--verify`.
    pub verify: Option<VerifyReport>,
}

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
#[error("{error} (the run stopped after {accepted} accepted commands)")]
pub struct Aborted {
    /// The failure that stopped it.
    pub error: ClientError,
    /// Commands accepted until then.
    pub accepted: u64,
}

struct Ctx {
    client: Arc<Client>,
    bodies: Vec<CommandRequest>,
    /// Each op's account and command id: a command id is an idempotency key per account.
    ids: Vec<(AccountId, CommandId)>,
    next: AtomicUsize,
    abort: AtomicBool,
    started: Instant,
    rate: Option<f64>,
    sample_every: Option<usize>,
    bar: ProgressBar,
}

#[derive(Default)]
struct WorkerOut {
    accepted: Vec<(usize, Submitted)>,
    latencies: Option<Histogram<u64>>,
    lag_samples: Vec<LagSample>,
}

/// Generates the workload, sends it, and verifies it if asked.
pub async fn run(
    client: Arc<Client>,
    opts: LoadOptions,
    run_id: &str,
) -> Result<LoadReport, Aborted> {
    let workload = generate(&opts.spec, run_id);
    let ops: Vec<_> = workload.ops().collect();
    let total = ops.len();
    let bar = if opts.progress {
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {rate} ETA {eta}",
            )
            .expect("the template is valid")
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}/s", state.per_sec());
                },
            ),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        bodies: ops.iter().map(|o| o.request()).collect(),
        ids: ops
            .iter()
            .map(|o| (o.command.account_id.clone(), o.command_id().clone()))
            .collect(),
        next: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        started: Instant::now(),
        rate: opts.rate,
        sample_every: opts.verify.then(|| (total / LAG_SAMPLES).max(1)),
        bar,
    });

    // Every account is open before the mix starts, so the mix never races its opens.
    let sent = async {
        let opens = send(&ctx, 0, workload.opens.len(), opts.concurrency).await?;
        let mix = send(&ctx, workload.opens.len(), total, opts.concurrency)
            .await
            .map_err(|mut e| {
                e.accepted += opens.accepted.len() as u64;
                e
            })?;
        Ok::<_, Aborted>(merge(opens, mix))
    }
    .await;
    let elapsed = ctx.started.elapsed();
    ctx.bar.finish_and_clear();
    let out = sent?;
    let accepted = out.accepted.len() as u64;
    let mut report = LoadReport {
        seed: opts.spec.seed,
        prefix: opts.spec.prefix.clone(),
        accounts: opts.spec.accounts,
        commands: opts.spec.commands,
        transfers: opts.spec.transfers,
        concurrency: opts.concurrency,
        rate: opts.rate,
        sent: total as u64,
        accepted,
        retried: out.accepted.iter().filter(|(_, s)| s.attempts > 1).count() as u64,
        elapsed_s: round3(elapsed.as_secs_f64()),
        accepted_per_s: round3(accepted as f64 / elapsed.as_secs_f64().max(1e-9)),
        accept_latency: out.latencies.as_ref().and_then(LatencySummary::of),
        verify: None,
    };
    if opts.verify {
        let record = RunRecord {
            workload: &workload,
            accepted: &out.accepted,
            lag_samples: out.lag_samples,
            concurrency: opts.concurrency,
        };
        let verified = verify::verify(&client, record)
            .await
            .map_err(|error| Aborted { error, accepted })?;
        report.verify = Some(verified);
    }
    Ok(report)
}

/// Whether a progress bar makes sense: stdout is a terminal and output is for people.
pub fn progress_wanted(json: bool) -> bool {
    !json && std::io::stdout().is_terminal()
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn merge(mut a: WorkerOut, b: WorkerOut) -> WorkerOut {
    a.accepted.extend(b.accepted);
    a.lag_samples.extend(b.lag_samples);
    a.latencies = match (a.latencies, b.latencies) {
        (Some(mut x), Some(y)) => {
            x.add(y).expect("histograms of the same bounds add");
            Some(x)
        }
        (x, y) => x.or(y),
    };
    a
}

/// Sends ops `from..to` with `concurrency` workers.
async fn send(
    ctx: &Arc<Ctx>,
    from: usize,
    to: usize,
    concurrency: usize,
) -> Result<WorkerOut, Aborted> {
    ctx.next.store(from, Ordering::SeqCst);
    let workers: Vec<_> = (0..concurrency.min(to - from))
        .map(|_| tokio::spawn(worker(ctx.clone(), to)))
        .collect();
    let mut all = WorkerOut {
        latencies: Some(latency_histogram()),
        ..WorkerOut::default()
    };
    let mut failure = None;
    for w in workers {
        let (out, error) = w.await.expect("load workers do not panic");
        all.accepted.extend(out.accepted);
        all.lag_samples.extend(out.lag_samples);
        if let (Some(h), Some(l)) = (all.latencies.as_mut(), out.latencies) {
            h.add(l).expect("histograms of the same bounds add");
        }
        if failure.is_none() {
            failure = error;
        }
    }
    match failure {
        None => Ok(all),
        Some(error) => {
            for s in all.lag_samples {
                s.abort();
            }
            Err(Aborted {
                error,
                accepted: all.accepted.len() as u64,
            })
        }
    }
}

async fn worker(ctx: Arc<Ctx>, to: usize) -> (WorkerOut, Option<ClientError>) {
    let mut out = WorkerOut {
        latencies: Some(latency_histogram()),
        ..WorkerOut::default()
    };
    loop {
        if ctx.abort.load(Ordering::Relaxed) {
            return (out, None);
        }
        let i = ctx.next.fetch_add(1, Ordering::Relaxed);
        if i >= to {
            return (out, None);
        }
        if let Some(rate) = ctx.rate {
            let due = ctx.started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        match ctx.client.submit(&ctx.bodies[i]).await {
            Ok(s) => {
                let accepted_at = Instant::now();
                if let Some(h) = out.latencies.as_mut() {
                    record(h, accepted_at - sent);
                }
                if ctx.sample_every.is_some_and(|k| i.is_multiple_of(k)) {
                    let (client, id, token) = (
                        ctx.client.clone(),
                        ctx.ids[i].clone(),
                        s.accepted.token.clone(),
                    );
                    out.lag_samples.push(tokio::spawn(async move {
                        client
                            .command(&id.1, Some(&id.0), Some(&token))
                            .await
                            .ok()
                            .map(|_| accepted_at.elapsed())
                    }));
                }
                out.accepted.push((i, s));
                ctx.bar.inc(1);
            }
            Err(error) => {
                // After the whole retry window the service is taken to be down: stop.
                ctx.abort.store(true, Ordering::Relaxed);
                return (out, Some(error));
            }
        }
    }
}
