//! `ledger top`: a live view of the projector's partitions and the ingest's accept rate,
//! in the manner of `kafka-consumer-groups --describe` refreshed like `top`.
//!
//! Each refresh reads the projector's `GET /v1/progress` and `GET /v1/admin/parked` and
//! the ingest's `GET /metrics`, one attempt each with a time limit, so that a service
//! that does not answer is shown as such and the view goes on. Reading runs on the async
//! runtime; the terminal (raw mode, the alternate screen, keys) on a blocking thread, so
//! that a slow service never delays `q`.
//!
//! When stdout is not a terminal, or with `--json`, it prints one snapshot, with rates
//! measured between two samples an interval apart, and exits.

mod render;
mod snapshot;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ledger_api::{ParkedView, Progress};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::cli::TopArgs;
use crate::client::{Client, ClientError, Service};
use crate::error::{CliError, Exit};
use crate::output::Output;
use snapshot::{plain_text, Sample, Snapshot, Tracker, ACCEPTED_METRIC};

/// How long the terminal thread waits for a key before it looks for a new snapshot.
const KEY_WAIT: Duration = Duration::from_millis(50);

/// Runs `ledger top`.
pub async fn run(client: Arc<Client>, out: Output, args: TopArgs) -> Result<Exit, CliError> {
    let interval = Duration::from_millis(args.interval_ms);
    if out.json || !std::io::stdout().is_terminal() {
        plain(&client, out, interval).await
    } else {
        live(client, interval).await
    }
}

/// Each read's time limit: the interval, within 1 to 5 s, so that a refresh does not
/// wait long on a service that does not answer, nor give up on a merely slow one.
fn read_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// One refresh's reads, made concurrently.
async fn sample(client: &Client, timeout: Duration) -> Sample {
    let (progress, parked, metrics) = tokio::join!(
        client.look::<Progress>(Service::Projector, &["v1", "progress"], timeout),
        client.look::<ParkedView>(Service::Projector, &["v1", "admin", "parked"], timeout),
        client.metrics_text(Service::Ingest, timeout),
    );
    let accepted = metrics.and_then(|text| {
        crate::prometheus::sum(&text, ACCEPTED_METRIC).ok_or_else(|| ClientError::Protocol {
            url: format!("{}metrics", client.base_url(Service::Ingest)),
            message: format!("no {ACCEPTED_METRIC} among the metrics"),
        })
    });
    Sample {
        taken_at: SystemTime::now(),
        at: Instant::now(),
        progress,
        parked,
        accepted,
    }
}

/// Not a terminal: one snapshot, its rates measured over one interval. Without the
/// projector there is no table to print: that is exit 3, like any other command.
async fn plain(client: &Client, out: Output, interval: Duration) -> Result<Exit, CliError> {
    let timeout = read_timeout(interval);
    let mut tracker = Tracker::new(interval);
    let started = tokio::time::Instant::now();
    let first = sample(client, timeout).await;
    if let Err(e) = &first.progress {
        return Err(e.clone().into());
    }
    tracker.observe(first);
    tokio::time::sleep_until(started + interval).await;
    let second = sample(client, timeout).await;
    if let Err(e) = &second.progress {
        return Err(e.clone().into());
    }
    let snap = tracker.observe(second);
    out.result(&snap, || plain_text(&snap));
    Ok(Exit::Success)
}

/// The terminal view, until `q`.
async fn live(client: Arc<Client>, interval: Duration) -> Result<Exit, CliError> {
    let (tx, rx) = watch::channel(Snapshot::waiting(interval));
    let sampler = tokio::spawn(async move {
        let timeout = read_timeout(interval);
        let mut tracker = Tracker::new(interval);
        let mut ticks = tokio::time::interval(interval);
        // After a slow read, the next one comes an interval later, not in a burst.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let snap = tracker.observe(sample(&client, timeout).await);
            if tx.send(snap).is_err() {
                break; // The view is gone.
            }
        }
    });
    // SIGTERM or SIGINT (raw mode turns Ctrl-C into a key, but `kill` still sends it)
    // end the view as `q` does, so that the terminal is restored.
    let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Terminal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Terminal)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut ui = tokio::task::spawn_blocking({
        let stop = Arc::clone(&stop);
        move || show(rx, &stop)
    });
    let ui = tokio::select! {
        ui = &mut ui => ui,
        _ = terminate.recv() => { stop.store(true, Ordering::Relaxed); ui.await }
        _ = interrupt.recv() => { stop.store(true, Ordering::Relaxed); ui.await }
    };
    sampler.abort();
    match ui {
        Ok(Ok(())) => Ok(Exit::Success),
        Ok(Err(e)) => Err(CliError::Terminal(e)),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Leaves raw mode and the alternate screen however [`show`] ends; a panic is covered
/// by the hook `ratatui::try_init` installs.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Whether a key quits: `q`, Esc, or Ctrl-C (which raw mode delivers as a key).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// Draws each new snapshot, and on resizes, until a key quits or `stop` is set.
fn show(mut snapshots: watch::Receiver<Snapshot>, stop: &AtomicBool) -> std::io::Result<()> {
    let _restore = Restore;
    let mut terminal = ratatui::try_init()?;
    let mut redraw = true;
    while !stop.load(Ordering::Relaxed) {
        // A closed channel (the sampler ended) keeps the last snapshot on screen.
        if redraw || snapshots.has_changed().unwrap_or(false) {
            let snap = snapshots.borrow_and_update().clone();
            terminal.draw(|frame| render::draw(frame, &snap))?;
            redraw = false;
        }
        if event::poll(KEY_WAIT)? {
            match event::read()? {
                Event::Key(key) if quits(&key) => return Ok(()),
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_esc_and_ctrl_c_quit_and_nothing_else_does() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('Q'), KeyModifiers::SHIFT)));
        assert!(quits(&key(KeyCode::Esc, KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Char('x'), KeyModifiers::NONE)));
        let mut release = key(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert!(!quits(&release));
    }

    #[test]
    fn reads_wait_about_an_interval() {
        assert_eq!(
            read_timeout(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        assert_eq!(
            read_timeout(Duration::from_millis(2500)),
            Duration::from_millis(2500)
        );
        assert_eq!(
            read_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
