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
//! - **`deliveries_failing`**: while the brokers answer metadata requests for the topic,
//!   deliveries kept failing for a whole delivery timeout after the first failure (so
//!   events sent after it, to answering brokers, failed too), and nothing was
//!   acknowledged for two delivery timeouts from that first failure. A lone timeout (a
//!   leader failing over after an idle spell) is not enough.
//! - **`no_producer_id`**: for two delivery timeouts in a row the brokers answered and
//!   the idempotent producer had no producer id (librdkafka's statistics), so it could
//!   not have sent anything even with traffic.
//!
//! A replacement counts as stuck (`/readyz` 503) until it acknowledges something, or for
//! two delivery timeouts if nothing is sent meanwhile.
//!
//! A broker that is down is not a stall: nothing is replaced while the metadata probe
//! fails. A cluster that refuses writes while answering metadata (fewer in-sync
//! replicas than `min.insync.replicas`) does look like one; replacing the producer then
//! is harmless, and a backoff (doubling, at most a minute) keeps it from churning.
//! Detection is for the producer as a whole: one partition that stops delivering while
//! the others acknowledge is not a stall of the client.

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
    /// Every signal, for exposing the restart counter at zero from the start.
    pub const ALL: [StallSignal; 3] = [
        StallSignal::FatalError,
        StallSignal::DeliveriesFailing,
        StallSignal::NoProducerId,
    ];

    /// The `signal` label of the restart counter, and the word in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            StallSignal::FatalError => "fatal_error",
            StallSignal::DeliveriesFailing => "deliveries_failing",
            StallSignal::NoProducerId => "no_producer_id",
        }
    }
}

/// A restart counter family with a child at zero for every [`StallSignal`], so that
/// `/metrics` shows it (and `rate()` has a series) before the first replacement.
pub fn restart_counter() -> Family<Vec<(&'static str, &'static str)>, Counter> {
    let family = Family::default();
    for signal in StallSignal::ALL {
        let _ = family.get_or_create(&vec![("signal", signal.as_str())]);
    }
    family
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
    /// Watches the producer and replaces it when it is stuck, until `shutdown`. Takes a
    /// handle of its own (a clone), so it can be spawned as it is.
    pub async fn supervise(self, supervision: Supervision, shutdown: CancellationToken) {
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
                fatal: generation.producer.client().fatal_error().is_some(),
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
            // rd_kafka_new starts threads and may resolve names: not on a runtime worker.
            let (config, settings) = (self.shared.config.clone(), self.shared.settings.clone());
            let built =
                tokio::task::spawn_blocking(move || build_generation(&config, &settings, next))
                    .await
                    .expect("building a producer does not panic");
            let fresh = match built {
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
    /// Since when the brokers have answered with nothing acknowledged (None: they do
    /// not answer, or something was just acknowledged).
    window_start: Option<Instant>,
    /// The first delivery failure inside the window.
    first_failure: Option<Instant>,
    /// A replacement counts as stuck until it delivers, or until this time passes with
    /// no new signal (a producer with no traffic cannot prove itself).
    stuck_until: Option<Instant>,
    last_replaced: Option<Instant>,
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
            first_failure: None,
            stuck_until: None,
            last_replaced: None,
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
            self.replaced(now, seen.generation);
        }
        if seen.acks != self.acks {
            self.acks = seen.acks;
            self.window_start = None;
            self.first_failure = None;
            self.stuck_until = None;
            self.consecutive = 0;
        }
        let replacing = self.stuck_until.is_some_and(|u| now < u);
        if seen.fatal {
            let since_replaced = self.last_replaced.map_or(Duration::MAX, |r| now - r);
            return Verdict {
                stuck: true,
                replace: (self.consecutive == 0 || since_replaced >= self.required_window())
                    .then_some(StallSignal::FatalError),
            };
        }
        if !seen.reachable {
            // A broker that is down is not a stuck producer; /readyz already says 503.
            self.window_start = None;
            self.first_failure = None;
            return Verdict {
                stuck: false,
                replace: None,
            };
        }
        let start = *self.window_start.get_or_insert(now);
        if self.first_failure.is_none() {
            self.first_failure = seen.last_failure.filter(|t| *t >= start);
        }
        let t = self.delivery_timeout;
        // Failures went on for a whole delivery timeout after the first one: events sent
        // after it, with the brokers answering, failed too.
        let failing_since = self
            .first_failure
            .filter(|f| seen.last_failure.is_some_and(|last| last >= *f + t));
        let lost_since = seen.no_producer_id_since.map(|l| l.max(start));
        let (signal, since) = if let Some(f) = failing_since {
            (Some(StallSignal::DeliveriesFailing), f)
        } else if let Some(l) = lost_since.filter(|l| now - *l >= t) {
            (Some(StallSignal::NoProducerId), l)
        } else {
            (None, now)
        };
        Verdict {
            stuck: signal.is_some() || replacing,
            replace: signal.filter(|_| now - since >= self.required_window()),
        }
    }

    /// A new generation is in place: its window starts now, it counts as stuck until it
    /// proves itself, and the next replacement waits longer unless it delivers.
    pub(crate) fn replaced(&mut self, now: Instant, generation: u64) {
        self.generation = generation;
        self.acks = 0;
        self.window_start = Some(now);
        self.first_failure = None;
        self.stuck_until = Some(now + self.delivery_timeout * 2);
        self.last_replaced = Some(now);
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

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    const CALM: Verdict = Verdict {
        stuck: false,
        replace: None,
    };

    #[test]
    fn a_broker_that_is_down_is_never_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(false);
        for i in 0..100 {
            s.last_failure = Some(ms(t0, i * 250));
            assert_eq!(w.observe(ms(t0, i * 250), &s), CALM, "tick {i}");
        }
    }

    #[test]
    fn failures_for_a_whole_timeout_while_the_brokers_answer_replace_two_timeouts_after_the_first()
    {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        assert_eq!(w.observe(t0, &s), CALM);
        s.last_failure = Some(ms(t0, 500));
        // One failure is not yet a stall.
        assert_eq!(w.observe(ms(t0, 600), &s), CALM);
        // Failures go on: what was sent after the first failed too.
        s.last_failure = Some(ms(t0, 2600));
        let v = w.observe(ms(t0, 2700), &s);
        assert_eq!(
            v,
            Verdict {
                stuck: true,
                replace: None
            }
        );
        assert_eq!(w.observe(ms(t0, 4400), &s).replace, None);
        assert_eq!(
            w.observe(ms(t0, 4500), &s).replace,
            Some(StallSignal::DeliveriesFailing)
        );
    }

    #[test]
    fn a_lone_failure_after_an_idle_spell_is_not_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        // A minute with no traffic, then one timeout (a leader failing over), then acks.
        s.last_failure = Some(ms(t0, 60_000));
        for at in (60_000..62_000).step_by(250) {
            assert_eq!(w.observe(ms(t0, at), &s), CALM, "at {at} ms");
        }
        s.acks = 1;
        assert_eq!(w.observe(ms(t0, 62_100), &s), CALM);
    }

    #[test]
    fn failures_of_events_sent_while_the_broker_was_down_do_not_count() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(false);
        w.observe(t0, &s);
        // The broker is back at 1 s; what was sent before fails just after, then the
        // producer delivers again.
        s.reachable = true;
        w.observe(ms(t0, 1000), &s);
        s.last_failure = Some(ms(t0, 1500));
        for at in (1500..6000).step_by(250) {
            assert_eq!(w.observe(ms(t0, at), &s), CALM, "at {at} ms");
        }
    }

    #[test]
    fn an_acknowledgement_closes_the_window() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        s.last_failure = Some(ms(t0, 100));
        w.observe(ms(t0, 200), &s);
        s.last_failure = Some(ms(t0, 2200));
        assert!(w.observe(ms(t0, 2300), &s).stuck);
        s.acks = 1;
        assert_eq!(w.observe(ms(t0, 4200), &s), CALM);
    }

    #[test]
    fn no_producer_id_is_a_stall_even_when_lost_inside_the_window() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        // Idle and healthy for a while, then the producer id is lost.
        s.no_producer_id_since = Some(ms(t0, 30_000));
        assert!(!w.observe(ms(t0, 31_000), &s).stuck);
        assert!(w.observe(ms(t0, 32_000), &s).stuck);
        assert_eq!(w.observe(ms(t0, 33_900), &s).replace, None);
        assert_eq!(
            w.observe(ms(t0, 34_000), &s).replace,
            Some(StallSignal::NoProducerId)
        );
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
    fn a_replacement_counts_as_stuck_until_it_delivers_or_two_timeouts_pass() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.replaced(t0, 2);
        s.generation = 2;
        assert!(w.observe(ms(t0, 250), &s).stuck);
        assert!(w.observe(ms(t0, 3900), &s).stuck);
        assert_eq!(w.observe(ms(t0, 4000), &s), CALM);
        let mut w = Watch::new(T);
        w.replaced(t0, 2);
        s.acks = 1;
        assert_eq!(w.observe(ms(t0, 250), &s), CALM);
    }

    #[test]
    fn replacements_back_off_until_something_is_acknowledged() {
        let t0 = Instant::now();
        let mut w = Watch::new(T);
        let mut s = seen(true);
        w.observe(t0, &s);
        s.last_failure = Some(ms(t0, 100));
        w.observe(ms(t0, 200), &s);
        s.last_failure = Some(ms(t0, 2100));
        assert!(w.observe(ms(t0, 4100), &s).replace.is_some());
        w.replaced(ms(t0, 4100), 2);
        s.generation = 2;
        // The new generation fails too: now it takes four timeouts from its first failure.
        s.last_failure = Some(ms(t0, 4200));
        w.observe(ms(t0, 4300), &s);
        s.last_failure = Some(ms(t0, 6200));
        assert_eq!(w.observe(ms(t0, 8200), &s).replace, None);
        assert!(w.observe(ms(t0, 8200), &s).stuck);
        assert_eq!(
            w.observe(ms(t0, 12_200), &s).replace,
            Some(StallSignal::DeliveriesFailing)
        );
        w.replaced(ms(t0, 12_200), 3);
        // Capped at a minute.
        w.consecutive += 20;
        assert_eq!(w.required_window(), MAX_BACKOFF);
        // An acknowledgement resets the backoff.
        s.generation = 3;
        s.acks = 5;
        w.observe(ms(t0, 13_000), &s);
        assert_eq!(w.required_window(), 2 * T);
    }
}
