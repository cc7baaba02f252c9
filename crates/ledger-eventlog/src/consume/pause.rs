//! Stopping and restarting the application of partitions while everything else goes on:
//! an operator's pause (`POST /v1/admin/pause`), and a rebuild's hold, which stops every
//! partition at a batch boundary so that the live store stands still while a rebuilt one
//! is compared with it.
//!
//! The loop reads this each time round: a paused partition's fetching is paused in
//! librdkafka, its events in hand stay in hand, and anything fetched before the pause
//! took effect is dropped and read again from the partition's position on resume. An
//! operator's pause lasts until it is resumed, or until the group rebalances (a
//! partition that moves starts applying on its new owner; a pause is a moment's tool,
//! not configuration); a restart forgets it too.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::context::LoopContext;
use super::{BatchSink, ConsumeError, ConsumerSettings};

/// The pause and hold the service sets and the loop obeys. Cheap to clone: every clone
/// is the same switch.
#[derive(Clone, Default)]
pub struct PauseControl {
    inner: Arc<(Mutex<PauseState>, Condvar)>,
}

#[derive(Default)]
struct PauseState {
    /// Every partition is paused, except `resumed`.
    all: bool,
    /// Partitions resumed one by one while `all` holds.
    resumed: BTreeSet<i32>,
    /// Partitions paused one by one.
    partitions: BTreeSet<i32>,
    /// A rebuild asked for every partition to stand still.
    hold: bool,
    /// The loop stands still: nothing is being applied and nothing will be until the
    /// hold is released.
    held: bool,
}

impl PauseState {
    fn paused(&self, partition: i32) -> bool {
        (self.all && !self.resumed.contains(&partition)) || self.partitions.contains(&partition)
    }
}

impl std::fmt::Debug for PauseControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("PauseControl")
            .field("all", &st.all)
            .field("partitions", &st.partitions)
            .field("hold", &st.hold)
            .finish_non_exhaustive()
    }
}

impl PauseControl {
    fn state(&self) -> MutexGuard<'_, PauseState> {
        self.inner
            .0
            .lock()
            .expect("the pause lock is never held across a panic")
    }

    /// Pauses one partition, or (`None`) every partition.
    pub fn pause(&self, partition: Option<i32>) {
        let mut st = self.state();
        match partition {
            Some(p) => {
                st.partitions.insert(p);
                st.resumed.remove(&p);
            }
            None => {
                st.all = true;
                st.resumed.clear();
            }
        }
    }

    /// Resumes one partition, or (`None`) every partition.
    pub fn resume(&self, partition: Option<i32>) {
        let mut st = self.state();
        match partition {
            Some(p) => {
                st.partitions.remove(&p);
                if st.all {
                    st.resumed.insert(p);
                }
            }
            None => {
                st.all = false;
                st.resumed.clear();
                st.partitions.clear();
            }
        }
    }

    /// Whether an operator paused the partition.
    pub fn is_paused(&self, partition: i32) -> bool {
        self.state().paused(partition)
    }

    /// Of these partitions, the ones the loop must not apply now: the operator's, or
    /// all of them during a hold.
    pub(super) fn stopped_among(&self, partitions: impl Iterator<Item = i32>) -> BTreeSet<i32> {
        let st = self.state();
        partitions.filter(|&p| st.hold || st.paused(p)).collect()
    }

    /// A rebalance ends every operator's pause (not a hold); returns whether there was
    /// one.
    pub(super) fn lift(&self) -> bool {
        let mut st = self.state();
        let was = st.all || !st.partitions.is_empty();
        st.all = false;
        st.resumed.clear();
        st.partitions.clear();
        was
    }

    /// Whether a hold is asked for and not yet acknowledged.
    pub(super) fn hold_pending(&self) -> bool {
        let st = self.state();
        st.hold && !st.held
    }

    /// The loop stands still.
    pub(super) fn acknowledge_hold(&self) {
        let mut st = self.state();
        if st.hold {
            st.held = true;
            self.inner.1.notify_all();
        }
    }

    /// Whether a hold is on (asked for, acknowledged or not).
    pub(super) fn holding(&self) -> bool {
        self.state().hold
    }

    /// Asks the loop to stand still and waits until it does, at most `timeout`: returns
    /// whether it does. Release it with [`PauseControl::release_hold`] either way.
    pub fn hold(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.state();
        st.hold = true;
        st.held = false;
        while !st.held {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .inner
                .1
                .wait_timeout(st, left)
                .expect("the pause lock is never held across a panic")
                .0;
        }
        true
    }

    /// Ends a hold: the loop applies again.
    pub fn release_hold(&self) {
        let mut st = self.state();
        st.hold = false;
        st.held = false;
    }
}

impl<S: BatchSink> LoopContext<S> {
    /// Pauses in librdkafka the partitions that must not be applied now and resumes the
    /// others, reading a resumed partition again from its position if anything of it was
    /// dropped meanwhile; acknowledges a hold once no batch is in flight.
    pub(super) fn obey_pause(
        &self,
        consumer: &BaseConsumer<Self>,
        settings: &ConsumerSettings,
    ) -> Result<(), ConsumeError> {
        if self.pause.hold_pending() {
            self.finish_in_flight(consumer, CommitMode::Async)?;
            self.pause.acknowledge_hold();
            info!("holding: no batch in flight, nothing applied until the rebuild releases it");
        }
        let mut st = self.state();
        let stopped = self.pause.stopped_among(st.positions.keys().copied());
        let to_pause: Vec<i32> = stopped.difference(&st.paused).copied().collect();
        let to_resume: Vec<i32> = st.paused.difference(&stopped).copied().collect();
        if to_pause.is_empty() && to_resume.is_empty() {
            return Ok(());
        }
        let list = |parts: &[i32]| {
            let mut tpl = TopicPartitionList::with_capacity(parts.len());
            for &p in parts {
                tpl.add_partition(&settings.topic, p);
            }
            tpl
        };
        // A failure leaves the partition as it was, and is tried again next time round.
        if !to_pause.is_empty() {
            match consumer.pause(&list(&to_pause)) {
                Ok(()) => {
                    st.paused.extend(to_pause.iter().copied());
                    info!(partitions = ?to_pause, "paused: applying stopped, queries still served");
                }
                Err(e) => warn!(partitions = ?to_pause, error = %e, "pausing failed; trying again"),
            }
        }
        for p in to_resume {
            // Anything dropped while paused is read again: the position is set back first,
            // while the partition still fetches nothing.
            if st.dropped.contains(&p) {
                let from = st.positions.get(&p).copied().unwrap_or(0);
                if let Err(e) = consumer.seek(
                    &settings.topic,
                    p,
                    Offset::Offset(from),
                    Duration::from_secs(5),
                ) {
                    warn!(partition = p, from, error = %e, "cannot set the paused partition back to its position; it stays paused, trying again");
                    continue;
                }
            }
            match consumer.resume(&list(&[p])) {
                Ok(()) => {
                    st.paused.remove(&p);
                    st.dropped.remove(&p);
                    info!(partition = p, "resumed applying");
                }
                Err(e) => warn!(partition = p, error = %e, "resuming failed; trying again"),
            }
        }
        self.metrics.paused_partitions.set(st.paused.len() as i64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_all_and_all_but_one() {
        let c = PauseControl::default();
        c.pause(Some(2));
        assert_eq!(c.stopped_among(0..4), BTreeSet::from([2]));
        c.pause(None);
        c.resume(Some(1));
        assert_eq!(c.stopped_among(0..4), BTreeSet::from([0, 2, 3]));
        assert!(c.is_paused(3) && !c.is_paused(1));
        c.resume(None);
        assert!(c.stopped_among(0..4).is_empty());
        c.pause(Some(0));
        assert!(c.lift());
        assert!(!c.lift());
        assert!(!c.is_paused(0));
    }

    #[test]
    fn a_hold_stops_everything_until_released_and_waits_for_the_loop() {
        let c = PauseControl::default();
        assert!(
            !c.hold(Duration::from_millis(10)),
            "no loop acknowledged it"
        );
        assert!(c.hold_pending());
        c.release_hold();
        assert!(!c.hold_pending() && !c.holding());
        // The loop's side acknowledges only a hold asked for after it started.
        let loop_side = c.clone();
        let t = std::thread::spawn(move || {
            while !loop_side.hold_pending() {
                std::thread::yield_now();
            }
            loop_side.acknowledge_hold();
        });
        assert!(c.hold(Duration::from_secs(5)));
        t.join().unwrap();
        assert_eq!(c.stopped_among(0..3), BTreeSet::from([0, 1, 2]));
        c.release_hold();
        assert!(c.stopped_among(0..3).is_empty() && !c.holding());
    }
}
