//! The producer's supervisor: tells a producer that will never deliver again from a
//! broker that is down, and replaces the producer, never the process.
//!
//! librdkafka's idempotent producer can stay stuck after a broker restart until it is
//! recreated (librdkafka issues #3009, #3720, #3750): the brokers answer, and every
//! delivery times out. Restarting the service ends it; so does building a new client.
//! The supervisor watches three signals:
//!
//! - **`fatal_error`**: librdkafka raised a fatal error; that instance can never
//!   produce again. Replaced at once.
//! - **`deliveries_failing`**: the brokers have answered metadata requests for the topic
//!   for two delivery timeouts in a row, no delivery was acknowledged in that time, and
//!   an event sent inside that window failed (so it had a reachable broker for its whole
//!   timeout).
//! - **`no_producer_id`**: for two delivery timeouts in a row the brokers answered and
//!   the idempotent producer had no producer id (librdkafka's statistics), so it could
//!   not have sent anything even with traffic.
//!
//! A broker that is down is not a stall: nothing is replaced while the metadata probe
//! fails. A cluster that refuses writes while answering metadata (fewer in-sync
//! replicas than `min.insync.replicas`) does look like one; replacing the producer then
//! is harmless, and a backoff (doubling, at most a minute) keeps it from churning.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::producer::Producer;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{build_generation, retire, EventProducer};

/// Why a producer was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallSignal {
    /// librdkafka raised a fatal error.
    FatalError,
    /// Deliveries failed for two delivery timeouts while the brokers answered.
    DeliveriesFailing,
    /// The idempotent producer had no producer id for two delivery timeouts while the
    /// brokers answered.
    NoProducerId,
}

impl StallSignal {
    /// The `signal` label of the restart counter, and the word in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            StallSignal::FatalError => "fatal_error",
            StallSignal::DeliveriesFailing => "deliveries_failing",
            StallSignal::NoProducerId => "no_producer_id",
        }
    }
}

/// What the supervisor needs from the service.
pub struct Supervision {
    /// True while the brokers answer metadata requests for the topic, kept by the
    /// service's probe ([`crate::probe`]).
    pub reachable: Arc<AtomicBool>,
    /// Counts replacements, labelled `signal`.
    pub restarts: Family<Vec<(&'static str, &'static str)>, Counter>,
}

/// How often the supervisor looks.
const TICK: Duration = Duration::from_millis(250);
/// The longest wait between two replacements while the signals persist.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl EventProducer {
    /// Watches the producer and replaces it when it is stuck, until `shutdown`.
    pub async fn supervise(&self, supervision: Supervision, shutdown: CancellationToken) {
        let mut watch = Watch::new(self.delivery_timeout());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(TICK) => {}
            }
            let generation = self.current();
            let h = &generation.health;
            let seen = Observation {
                reachable: supervision.reachable.load(Ordering::Acquire),
                // The error callback may not have run yet; librdkafka's own flag is the truth.
                fatal: h.fatal.load(Ordering::Acquire)
                    || generation.producer.client().fatal_error().is_some(),
                acks: h.acks.load(Ordering::Acquire),
                last_failure: h.last_failure(),
                no_producer_id_since: if h.idempotence_known.load(Ordering::Acquire) {
                    h.idempotence_lost_since()
                } else {
                    None
                },
                generation: generation.number,
            };
            let verdict = watch.observe(Instant::now(), &seen);
            let was_stuck = self.shared.stuck.swap(verdict.stuck, Ordering::AcqRel);
            if was_stuck && !verdict.stuck {
                info!(
                    generation = generation.number,
                    "the producer delivers again"
                );
            }
            let Some(signal) = verdict.replace else {
                continue;
            };
            let fatal_reason = generation
                .producer
                .client()
                .fatal_error()
                .map(|(code, reason)| format!("{code}: {reason}"));
            let next = generation.number + 1;
            let fresh = match build_generation(&self.shared.config, &self.shared.settings, next) {
                Ok(g) => Arc::new(g),
                Err(e) => {
                    error!(error = %e, signal = signal.as_str(), "cannot build a replacement producer; retrying");
                    continue;
                }
            };
            let old = std::mem::replace(
                &mut *self
                    .shared
                    .current
                    .write()
                    .expect("the generation lock is never held across a panic"),
                fresh,
            );
            watch.replaced(Instant::now(), next);
            self.shared.replacements.fetch_add(1, Ordering::AcqRel);
            supervision
                .restarts
                .get_or_create(&vec![("signal", signal.as_str())])
                .inc();
            warn!(
                signal = signal.as_str(),
                old_generation = old.number,
                new_generation = next,
                failures = old.health.failures.load(Ordering::Acquire),
                acks = old.health.acks.load(Ordering::Acquire),
                idempotence_state = %old.health.idempotence_state(),
                fatal_error = fatal_reason.as_deref().unwrap_or("none"),
                in_flight = old.producer.in_flight_count(),
                "the producer is stuck; replaced it with a new one (its requests in flight get 503 log_unavailable)"
            );
            tokio::task::spawn_blocking(move || retire(old));
        }
    }
}

/// One look at the current generation.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    pub reachable: bool,
    pub fatal: bool,
    pub acks: u64,
    pub last_failure: Option<Instant>,
    pub no_producer_id_since: Option<Instant>,
    pub generation: u64,
}

/// What the supervisor concludes from one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The producer cannot be trusted to deliver now.
    pub stuck: bool,
    /// Replace it, for this reason.
    pub replace: Option<StallSignal>,
}

/// The supervisor's memory between looks: pure, so the rules are unit-tested with a
/// made-up clock.
#[derive(Debug)]
pub(crate) struct Watch {
    delivery_timeout: Duration,
    /// Since when the brokers have answered with no acknowledgement (None: they do not
    /// answer, or something was just acknowledged).
    window_start: Option<Instant>,
    acks: u64,
    generation: u64,
    /// Replacements since the last acknowledgement.
    consecutive: u32,
}

impl Watch {
    pub(crate) fn new(delivery_timeout: Duration) -> Self {
        Self {
            delivery_timeout,
            window_start: None,
            acks: 0,
            generation: 1,
            consecutive: 0,
        }
    }

    /// How long the signals must stand before the next replacement.
    fn required_window(&self) -> Duration {
        let base = self.delivery_timeout * 2;
        let doubled = base.saturating_mul(1 << self.consecutive.min(16));
        doubled.min(MAX_BACKOFF.max(base))
    }

    pub(crate) fn observe(&mut self, now: Instant, seen: &Observation) -> Verdict {
        if seen.generation != self.generation {
            // Another handle replaced it; start over with the new one.
            self.generation = seen.generation;
            self.acks = 0;
            self.window_start = Some(now);
        }
        if seen.acks != self.acks {
            self.acks = seen.acks;
            self.window_start = None;
            self.consecutive = 0;
        }
        if seen.fatal {
            let since_replaced = self.window_start.map_or(Duration::MAX, |s| now - s);
            return Verdict {
                stuck: true,
                replace: (self.consecutive == 0 || since_replaced >= self.required_window())
                    .then_some(StallSignal::FatalError),
            };
        }
        if !seen.reachable {
            // A broker that is down is not a stuck producer; /readyz already says 503.
            self.window_start = None;
            return Verdict {
                stuck: false,
                replace: None,
            };
        }
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now - start;
        let failing = seen
            .last_failure
            .is_some_and(|t| t >= start + self.delivery_timeout);
        let no_producer_id = seen.no_producer_id_since.is_some_and(|t| t <= start)
            && elapsed >= self.delivery_timeout;
        let signal = if failing {
            Some(StallSignal::DeliveriesFailing)
        } else if no_producer_id {
            Some(StallSignal::NoProducerId)
        } else {
            None
        };
        Verdict {
            stuck: signal.is_some(),
            replace: signal.filter(|_| elapsed >= self.required_window()),
        }
    }

    /// A new generation is in place: its window starts now, and the next replacement
    /// waits longer unless it delivers.
    pub(crate) fn replaced(&mut self, now: Instant, generation: u64) {
        self.generation = generation;
        self.acks = 0;
        self.window_start = Some(now);
        self.consecutive += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(2);

    fn seen(reachable: bool) -> Observation {
        Observation {
            reachable,
            fatal: false,
            acks: 0,
            last_failure: None,
            no_producer_id_since: None,
            generation: 1,
        }
    }

    #[test]
    fn a_broker_that_is_down_is_never_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(false);
        for i in 0..100 {
            s.last_failure = Some(t0 + Duration::from_millis(i * 250));
            let v = w.observe(t0 + Duration::from_millis(i * 250), &s);
            assert_eq!(
                v,
                Verdict {
                    stuck: false,
                    replace: None
                },
                "tick {i}"
            );
        }
    }

    #[test]
    fn deliveries_failing_while_the_brokers_answer_replace_after_two_timeouts() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        assert_eq!(w.observe(t0, &s).replace, None);
        // Sent after the window opened, failed at its timeout.
        s.last_failure = Some(t0 + T + Duration::from_millis(10));
        let v = w.observe(t0 + T + Duration::from_millis(20), &s);
        assert_eq!(
            v,
            Verdict {
                stuck: true,
                replace: None
            }
        );
        let v = w.observe(t0 + 2 * T, &s);
        assert_eq!(v.replace, Some(StallSignal::DeliveriesFailing));
    }

    #[test]
    fn failures_of_events_sent_while_the_broker_was_down_do_not_count() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(false);
        w.observe(t0, &s);
        // The broker is back at t0+1s; what was sent before times out just after.
        s.reachable = true;
        w.observe(t0 + Duration::from_secs(1), &s);
        s.last_failure = Some(t0 + Duration::from_millis(1500));
        for ms in (1500..6000).step_by(250) {
            let v = w.observe(t0 + Duration::from_millis(ms), &s);
            assert_eq!(
                v,
                Verdict {
                    stuck: false,
                    replace: None
                },
                "at {ms} ms"
            );
        }
    }

    #[test]
    fn an_acknowledgement_closes_the_window() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        s.last_failure = Some(t0 + T + Duration::from_millis(1));
        assert!(w.observe(t0 + T + Duration::from_millis(2), &s).stuck);
        s.acks = 1;
        let v = w.observe(t0 + 2 * T, &s);
        assert_eq!(
            v,
            Verdict {
                stuck: false,
                replace: None
            }
        );
    }

    #[test]
    fn no_producer_id_for_the_whole_window_is_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        s.no_producer_id_since = Some(t0);
        assert!(!w.observe(t0, &s).stuck);
        assert!(w.observe(t0 + T, &s).stuck);
        assert_eq!(
            w.observe(t0 + 2 * T, &s).replace,
            Some(StallSignal::NoProducerId)
        );
        // Lost only after the window opened: not yet.
        let mut w = Watch::new(T);
        s.no_producer_id_since = Some(t0 + Duration::from_millis(500));
        w.observe(t0, &s);
        assert_eq!(w.observe(t0 + 2 * T, &s).replace, None);
    }

    #[test]
    fn a_fatal_error_replaces_at_once_even_while_the_broker_is_down() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(false);
        s.fatal = true;
        assert_eq!(
            w.observe(t0, &s),
            Verdict {
                stuck: true,
                replace: Some(StallSignal::FatalError)
            }
        );
    }

    #[test]
    fn replacements_back_off_until_something_is_acknowledged() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        s.last_failure = Some(t0 + T + Duration::from_millis(1));
        assert!(w.observe(t0 + 2 * T, &s).replace.is_some());
        w.replaced(t0 + 2 * T, 2);
        s.generation = 2;
        // The new generation fails too: now it takes four timeouts.
        let t1 = t0 + 2 * T;
        s.last_failure = Some(t1 + T + Duration::from_millis(1));
        assert_eq!(w.observe(t1 + 2 * T, &s).replace, None);
        assert!(w.observe(t1 + 2 * T, &s).stuck);
        assert_eq!(
            w.observe(t1 + 4 * T, &s).replace,
            Some(StallSignal::DeliveriesFailing)
        );
        w.replaced(t1 + 4 * T, 3);
        // Capped at a minute.
        for _ in 0..20 {
            w.consecutive += 1;
        }
        assert_eq!(w.required_window(), MAX_BACKOFF);
        // An acknowledgement resets the backoff.
        s.generation = 3;
        s.acks = 5;
        w.observe(t1 + 5 * T, &s);
        assert_eq!(w.required_window(), 2 * T);
    }
}
