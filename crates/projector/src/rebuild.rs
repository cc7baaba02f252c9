//! The verified rebuild (`POST /v1/admin/rebuild`): a fresh store of this instance's
//! partitions, built from offset 0 beside the live one while the live one keeps applying
//! and serving, and swapped in only if both agree.
//!
//! How it goes:
//!
//! 1. **Replaying.** A read-only follower ([`Follower`] in its rebuild mode: it never
//!    commits, never writes to the log, steps over what the owner dead-lettered) reads
//!    each partition from offset 0 into a [`Rebuilding`] view of the store. It never passes
//!    the live store: a batch beyond the live offset waits for it, so that the two can
//!    meet at the same offset.
//! 2. **Verifying.** Once every partition is within [`CLOSE_ENOUGH`] of the live store,
//!    the live consumer is held at a batch boundary ([`PauseControl::hold`]), the
//!    rebuild reaches exactly the live offsets, the follower is stopped, and each
//!    partition's state digest is compared ([`Store::swap_in`]).
//! 3. **Swapped** when every digest agrees: the rebuilt trees are the live ones from then
//!    on, atomically. **Mismatch** otherwise: the live store is kept, the rebuilt one
//!    dropped, and the first partition that differs is reported with both digests.
//!
//! The hold lasts only for the last few events and the comparison; queries are served
//! throughout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger_api::{ErrorCode, PartitionRole, RebuildPartition, RebuildPhase, RebuildView};
use ledger_domain::Batch;
use ledger_eventlog::consume::{BatchSink, ConsumerSettings, PauseControl};
use ledger_eventlog::follow::Follower;
use ledger_eventlog::KafkaConfig;
use ledger_http::ApiError;
use ledger_store::{Rebuilding, Retired, Store, StoreError, SwapError};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::group::now_ms;
use crate::group::Group;
use crate::metrics::ProjectorMetrics;

/// How far behind the live store (in events, per partition) the rebuild may be when the
/// live one is held for the comparison: the hold lasts as long as the rebuild takes to
/// read that many.
const CLOSE_ENOUGH: i64 = 2_000;
/// Longest the live consumer may take to stand still.
const HOLD_WAIT: Duration = Duration::from_secs(30);
/// Longest the rebuild may take, once the live store is held, to reach its offsets.
const MEET_WAIT: Duration = Duration::from_secs(30);
/// How long trees swapped out stay, for queries that were reading them.
const RETIRE_AFTER: Duration = Duration::from_secs(40);
/// How long the rebuild may read nothing before it gives up.
const NO_PROGRESS: Duration = Duration::from_secs(120);
/// How often progress is read.
const TICK: Duration = Duration::from_millis(100);

/// Runs rebuilds, one at a time, and keeps the last one's view.
pub(crate) struct Rebuilder {
    pub kafka: KafkaConfig,
    pub store: Store,
    pub pause: PauseControl,
    pub group: Arc<Group>,
    pub metrics: ProjectorMetrics,
    /// Cancelled when everything stops: a rebuild in progress ends.
    pub gone: CancellationToken,
    /// The test hook `--test-rebuild-drop-first`.
    pub drop_first: bool,
    pub last: Mutex<Option<RebuildView>>,
}

impl Rebuilder {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<RebuildView>> {
        self.last
            .lock()
            .expect("the rebuild view lock is never held across a panic")
    }

    /// The partitions this instance owns now.
    fn owned(&self) -> Vec<i32> {
        self.group
            .held()
            .into_iter()
            .filter(|(_, role)| *role == PartitionRole::Owner)
            .map(|(p, _)| p)
            .collect()
    }

    /// The last rebuild since this instance started.
    pub(crate) fn status(&self) -> Option<RebuildView> {
        self.last().clone()
    }

    /// Starts a rebuild of the partitions this instance owns, on a thread of its own.
    pub(crate) fn start(self: &Arc<Self>) -> Result<RebuildView, ApiError> {
        let settings = self.group.consumer_settings().cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotReady,
                "the projector has not found its topic yet",
            )
        })?;
        let owned = self.owned();
        if owned.is_empty() {
            return Err(ApiError::new(
                ErrorCode::NotReady,
                "this instance owns no partition yet: nothing to rebuild here",
            ));
        }
        // The rebuild meets the live store where it stands: a paused one never gets there.
        let paused: Vec<i32> = owned
            .iter()
            .copied()
            .filter(|&p| self.pause.is_paused(p))
            .collect();
        if !paused.is_empty() {
            return Err(ApiError::new(
                ErrorCode::PartitionsPaused,
                format!("partitions {paused:?} are paused: resume them (POST /v1/admin/resume) before a rebuild, which must reach the live store's offsets"),
            ));
        }
        let view = {
            let mut last = self.last();
            if last.as_ref().is_some_and(|v| !v.phase.is_final()) {
                return Err(ApiError::new(
                    ErrorCode::RebuildRunning,
                    "a rebuild is already running on this instance; follow it with GET /v1/admin/rebuild",
                ));
            }
            let view = RebuildView {
                instance_id: self.group.id.clone(),
                phase: RebuildPhase::Replaying,
                started_at_ms: now_ms(),
                finished_at_ms: None,
                events_replayed: 0,
                first_mismatch: None,
                error: None,
                partitions: owned
                    .iter()
                    .map(|&p| RebuildPartition {
                        partition: p,
                        rebuilt_offset: 0,
                        live_offset: self.group.applied(p),
                        compared_at: None,
                        live_digest: None,
                        rebuilt_digest: None,
                    })
                    .collect(),
            };
            *last = Some(view.clone());
            view
        };
        info!(partitions = ?owned, "rebuild started: replaying the log from offset 0 beside the live store");
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("ledger-rebuild".into())
            .spawn(move || {
                let outcome = me.run(&settings, &owned);
                me.finish(outcome);
            });
        if let Err(e) = spawned {
            self.finish(Err(format!("cannot start the rebuild's thread: {e}")));
        }
        Ok(view)
    }

    fn update(&self, f: impl FnOnce(&mut RebuildView)) {
        if let Some(v) = self.last().as_mut() {
            f(v);
        }
    }

    fn finish(&self, outcome: Result<Outcome, String>) {
        let label = match &outcome {
            Ok(Outcome::Swapped(_)) => "swapped",
            Ok(Outcome::Mismatch { .. }) => "mismatch",
            Err(_) => "failed",
        };
        self.metrics
            .rebuilds
            .get_or_create(&vec![("outcome", label.to_string())])
            .inc();
        let mut retired = None;
        self.update(|v| {
            v.finished_at_ms = Some(now_ms());
            match outcome {
                Ok(Outcome::Swapped(r)) => {
                    retired = Some(r);
                    v.phase = RebuildPhase::Swapped;
                    info!(events = v.events_replayed, "rebuild swapped in: every partition's digest agreed");
                }
                Ok(Outcome::Mismatch { partition }) => {
                    v.phase = RebuildPhase::Mismatch;
                    v.first_mismatch = Some(partition);
                    error!(partition, "rebuild discarded: the partition's digest differs from the live store's; the live store is kept");
                }
                Err(e) => {
                    v.phase = RebuildPhase::Failed;
                    warn!(error = %e, "rebuild failed; the live store is kept");
                    v.error = Some(e);
                }
            }
        });
        if let Some(retired) = retired {
            // Queries that began before the swap may still read the old trees; none lasts
            // this long (they end by 35 s).
            std::thread::sleep(RETIRE_AFTER);
            if let Err(e) = self.store.drop_retired(retired) {
                warn!(error = %e, "cannot drop the swapped-out trees; they are dropped at the next start");
            }
        }
    }

    fn run(&self, settings: &ConsumerSettings, partitions: &[i32]) -> Result<Outcome, String> {
        let topic = settings.topic.as_str();
        let view = self
            .store
            .rebuild_view(topic, partitions)
            .map_err(|e| e.to_string())?;
        let sink = Arc::new(RebuildSink {
            live: self.store.clone(),
            view: view.store().clone(),
            topic: topic.to_string(),
            events: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            applying: Mutex::new(()),
            drop_first: AtomicBool::new(self.drop_first),
            stop: self.gone.clone(),
        });
        let follower_stop = self.gone.child_token();
        let outcome = self.replay_and_compare(settings, partitions, &view, &sink, &follower_stop);
        follower_stop.cancel();
        sink.close();
        self.pause.release_hold();
        match &outcome {
            Ok(Outcome::Swapped(_)) => {}
            _ => {
                if let Err(e) = self.store.discard(view) {
                    warn!(error = %e, "cannot drop the rebuilt trees; they are dropped at the next start");
                }
            }
        }
        outcome
    }

    fn replay_and_compare(
        &self,
        settings: &ConsumerSettings,
        partitions: &[i32],
        view: &Rebuilding,
        sink: &Arc<RebuildSink>,
        follower_stop: &CancellationToken,
    ) -> Result<Outcome, String> {
        let topic = settings.topic.as_str();
        let follower = Follower::start(
            &self.kafka,
            settings,
            sink.clone(),
            follower_stop.clone(),
            true,
        )
        .map_err(|e| format!("cannot start the rebuild's reader: {e}"))?;
        for &p in partitions {
            follower.follow(p, 0);
        }
        let offsets = |store: &Store| -> Result<BTreeMap<i32, Option<i64>>, StoreError> {
            partitions
                .iter()
                .map(|&p| Ok((p, store.stored_offset(topic, p)?)))
                .collect()
        };
        // Replaying, until close enough to the live store.
        let mut last_move = (Instant::now(), BTreeMap::new());
        loop {
            if self.gone.is_cancelled() {
                return Err("the projector is stopping".into());
            }
            let live = offsets(&self.store).map_err(|e| e.to_string())?;
            let rebuilt = offsets(view.store()).map_err(|e| e.to_string())?;
            self.show(&live, &rebuilt, sink);
            if rebuilt != last_move.1 {
                last_move = (Instant::now(), rebuilt.clone());
            } else if last_move.0.elapsed() > NO_PROGRESS {
                return Err(format!("the rebuild made no progress for {NO_PROGRESS:?} (at {rebuilt:?}, the live store at {live:?}): is the broker reachable, is a partition paused?"));
            }
            if let Some(&p) = partitions.iter().find(|&&p| !follower.is_following(p)) {
                return Err(format!("the rebuild's reader stopped reading partition {p} (its offset left the log, or the rebuilt store failed): see the log"));
            }
            let close = partitions
                .iter()
                .all(|p| live[p].unwrap_or(0) - rebuilt[p].unwrap_or(0) <= CLOSE_ENOUGH);
            if close {
                break;
            }
            std::thread::sleep(TICK);
        }
        // Verifying: the live store stands still; the rebuild meets it.
        self.update(|v| v.phase = RebuildPhase::Verifying);
        if !self.pause.hold(HOLD_WAIT) {
            return Err("the live consumer did not stand still in time for the comparison".into());
        }
        let at = offsets(&self.store).map_err(|e| e.to_string())?;
        let owned = self.owned();
        if owned != partitions {
            return Err(format!("this instance's partitions changed during the rebuild (from {partitions:?} to {owned:?}); start it again"));
        }
        let deadline = Instant::now() + MEET_WAIT;
        loop {
            let rebuilt = offsets(view.store()).map_err(|e| e.to_string())?;
            self.show(&at, &rebuilt, sink);
            if rebuilt == at {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the rebuild did not reach the live offsets {at:?} within {MEET_WAIT:?} (it is at {rebuilt:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Nothing more may land in the rebuilt trees once they may become the live ones.
        follower_stop.cancel();
        sink.close();
        let owned_now = self.owned();
        if owned_now != partitions {
            return Err(format!("this instance's partitions changed during the comparison (to {owned_now:?}); start it again"));
        }
        self.update(|v| {
            // Counted once the last batch is done: its offsets show before its count.
            v.events_replayed = sink.events.load(Ordering::Relaxed);
            for row in &mut v.partitions {
                let p = row.partition;
                row.compared_at = at.get(&p).copied().flatten();
                row.live_digest = self.store.digest(topic, p).ok().map(hex);
                row.rebuilt_digest = view.store().digest(topic, p).ok().map(hex);
            }
        });
        match self.store.swap_in(view, &at) {
            Ok(retired) => Ok(Outcome::Swapped(retired)),
            Err(SwapError::Mismatch { partition, .. }) => Ok(Outcome::Mismatch { partition }),
            Err(e) => Err(e.to_string()),
        }
    }

    fn show(
        &self,
        live: &BTreeMap<i32, Option<i64>>,
        rebuilt: &BTreeMap<i32, Option<i64>>,
        sink: &RebuildSink,
    ) {
        self.update(|v| {
            v.events_replayed = sink.events.load(Ordering::Relaxed);
            for row in &mut v.partitions {
                row.live_offset = live.get(&row.partition).copied().flatten().unwrap_or(0);
                row.rebuilt_offset = rebuilt.get(&row.partition).copied().flatten().unwrap_or(0);
            }
        });
    }
}

fn hex(d: u128) -> String {
    format!("{d:032x}")
}

/// How a rebuild that ran to the comparison ended.
enum Outcome {
    /// With the trees swapped out, dropped once no query can still be reading them.
    Swapped(Retired),
    Mismatch {
        partition: i32,
    },
}

/// Applies the rebuild's batches to its view, never past the live store's offsets.
struct RebuildSink {
    live: Store,
    view: Store,
    topic: String,
    events: AtomicU64,
    /// Set before the comparison: nothing more is applied.
    closed: AtomicBool,
    /// Held while a batch is applied, so that closing waits for it.
    applying: Mutex<()>,
    drop_first: AtomicBool,
    stop: CancellationToken,
}

impl RebuildSink {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(
            self.applying
                .lock()
                .expect("the rebuild's apply lock is never held across a panic"),
        );
    }

    /// The part of `batch` below the live store's offsets, which it may apply now.
    fn below_live(&self, batch: &Batch) -> Result<Batch, StoreError> {
        // A partition the live store has applied nothing of moves not even its offset.
        let mut caps = BTreeMap::new();
        let mut empty = Vec::new();
        for p in batch.partitions() {
            let live = self.live.stored_offset(&self.topic, p)?;
            if live.is_none() {
                empty.push(p);
            }
            caps.insert(p, live.unwrap_or(0));
        }
        let mut part = Batch {
            records: batch
                .records
                .iter()
                .filter(|r| r.offset < caps[&r.partition])
                .cloned()
                .collect(),
            unreadable: batch
                .unreadable
                .iter()
                .filter(|u| u.offset < caps[&u.partition])
                .cloned()
                .collect(),
            ..Batch::default()
        };
        for (&p, &next) in &batch.next_offsets {
            if !empty.contains(&p) {
                part.next_offsets.insert(p, next.min(caps[&p]));
            }
        }
        Ok(part)
    }
}

impl BatchSink for RebuildSink {
    type Error = StoreError;

    fn stored_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.view.stored_offset(topic, partition)
    }

    fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<(), StoreError> {
        let mut rest = batch.clone();
        if self.drop_first.swap(false, Ordering::Relaxed) && !rest.records.is_empty() {
            let dropped = rest.records.remove(0);
            warn!(
                partition = dropped.partition,
                offset = dropped.offset,
                "test hook --test-rebuild-drop-first: the rebuild leaves this event out"
            );
        }
        // Whatever is beyond the live store waits for it (or for the rebuild to end).
        loop {
            let guard = self
                .applying
                .lock()
                .expect("the rebuild's apply lock is never held across a panic");
            if self.closed.load(Ordering::Acquire) || self.stop.is_cancelled() {
                return Ok(());
            }
            let now = self.below_live(&rest)?;
            // Applying the part below the live store (an empty part only moves offsets,
            // which never go back).
            self.view.apply_batch(topic, &now)?;
            let applied = now.records.len() + now.unreadable.len();
            self.events.fetch_add(applied as u64, Ordering::Relaxed);
            let reached =
                |p: i32, offset: i64| now.next_offsets.get(&p).is_none_or(|&n| offset >= n);
            rest.records.retain(|r| reached(r.partition, r.offset));
            rest.unreadable.retain(|u| reached(u.partition, u.offset));
            let done = rest
                .next_offsets
                .iter()
                .all(|(p, n)| now.next_offsets.get(p) == Some(n));
            if done {
                return Ok(());
            }
            drop(guard);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
