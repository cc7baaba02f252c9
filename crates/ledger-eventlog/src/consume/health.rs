//! Whether the consumer's group membership is healthy, as librdkafka's statistics report
//! it once a second: a client whose membership has not been steady for [`GROUP_STALL`]
//! while statistics kept arriving is wedged, and only a new client ends that.

use std::time::{Duration, Instant};

/// How long the group membership may stay other than steady, with statistics arriving
/// all along, before the client is taken for wedged. A rebalance is over within
/// seconds; a JoinGroup that waits for a slow member can take longer, which is why this
/// is a minute and not a session timeout. (A wedged client was seen to cycle through
/// states, so a change of state does not restart the clock.)
pub const GROUP_STALL: Duration = Duration::from_secs(60);

/// A gap between two statistics reports longer than this means the loop was not
/// polling (a long apply, a dead letter being retried): what the group did meanwhile
/// is unknown, so the clock starts again.
const STATS_GAP: Duration = Duration::from_secs(5);

/// The group membership as librdkafka's statistics report it, once a second.
#[derive(Debug, Default)]
pub(super) struct GroupHealth {
    /// Since when it has not been `up`/`steady`. None until the first report: without
    /// statistics nothing is judged.
    stuck_since: Option<Instant>,
    pub(super) last_state: String,
    last_report: Option<Instant>,
}

impl GroupHealth {
    pub(super) fn report(&mut self, state: &str, join_state: &str, now: Instant) {
        let steady = state == "up" && join_state == "steady";
        let gap = self.last_report.is_none_or(|t| now - t > STATS_GAP);
        self.stuck_since = if steady {
            None
        } else if gap {
            Some(now)
        } else {
            self.stuck_since.or(Some(now))
        };
        self.last_state = format!("{state}/{join_state}");
        self.last_report = Some(now);
    }

    /// How long it has not been steady, once that is past [`GROUP_STALL`].
    pub(super) fn stalled(&self, now: Instant) -> Option<Duration> {
        let since = self.stuck_since?;
        (now - since >= GROUP_STALL).then(|| now - since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_is_stalled_only_after_a_minute_unsteady_with_reports_flowing() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut h = GroupHealth::default();
        assert_eq!(h.stalled(at(1000)), None, "no statistics, no verdict");
        // A rebalance passes through states and ends steady.
        h.report("up", "wait-join", at(0));
        h.report("up", "wait-sync", at(1));
        h.report("up", "steady", at(2));
        assert_eq!(h.stalled(at(100)), None);
        // Wedged, cycling through states, reports every second.
        for s in 10..=70 {
            let state = if s % 3 == 0 { "wait-coord" } else { "up" };
            h.report(state, "wait-join", at(s));
        }
        assert_eq!(h.stalled(at(69)), None);
        assert_eq!(h.stalled(at(70)), Some(Duration::from_secs(60)));
        // Steady again: healthy.
        h.report("up", "steady", at(71));
        assert_eq!(h.stalled(at(200)), None);
        // So does a gap in the reports (the loop was not polling).
        let mut h = GroupHealth::default();
        h.report("up", "wait-join", at(0));
        h.report("up", "wait-join", at(100));
        assert_eq!(h.stalled(at(101)), None);
    }
}
