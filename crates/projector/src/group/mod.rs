//! This instance's place in its projector group: the role it plays for each partition,
//! what it has heard of the other instances, and which instance serves a partition now.
//!
//! A partition's life on one instance:
//!
//! - assigned by the consumer group: `warming`. It catches up from its stored offset
//!   (or from nothing) to the end the partition had when it was assigned, and serves only
//!   queries whose consistency token it has reached;
//! - caught up: `owner`. It serves every query;
//! - revoked while the instance lives on (a scale-up, a rebalance): `draining`. It tails
//!   the partition read-only outside the group and serves it until the new owner has
//!   reported itself owner for [`DRAIN_GRACE`] (so that every instance's view has
//!   caught up), then lets it go.
//!
//! The roles reach the other instances through the directory (see `directory`); a query
//! goes to the instance that serves its partition ([`Group::route`]), and when none can,
//! it is answered `partition_moving`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ledger_api::PartitionRole;
use ledger_eventlog::consume::ConsumerSettings;
use ledger_eventlog::follow::Follower;
use ledger_store::Store;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::ProjectorMetrics;

mod peers;

pub(crate) use peers::{Entry, Peer, Twin};

/// An instance not heard from for this long is gone: its entry expires.
pub(crate) const ENTRY_TTL: Duration = Duration::from_secs(5);
/// How often an instance publishes its entry when nothing changes.
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long a draining instance goes on serving after it first hears of the new owner:
/// a few publish periods, so that every instance routes to the new owner before the old
/// one lets go.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(3);
/// The longest a partition is drained with no owner taking over (the group may be gone).
pub(crate) const DRAIN_MAX: Duration = Duration::from_secs(300);
/// Each partition's next offset applied locally, as the watch channel behind `?after=`
/// carries it.
pub(crate) type Applied = std::sync::Arc<BTreeMap<i32, i64>>;

/// Milliseconds since the Unix epoch, as the directory's entries carry it.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(ledger_eventlog::fresh::now_ms()).unwrap_or(0)
}

/// One partition as this instance holds it.
#[derive(Clone, Copy, Debug)]
struct Held {
    role: PartitionRole,
    since: Instant,
    /// For `warming`: the offset to reach before serving (the partition's end when it
    /// was assigned), once known.
    target: Option<i64>,
    /// For `draining`: when another instance was first seen owning the partition.
    successor_seen: Option<Instant>,
}

impl Held {
    /// A partition entering `role` now.
    fn new(role: PartitionRole) -> Self {
        Held {
            role,
            since: Instant::now(),
            target: None,
            successor_seen: None,
        }
    }
}

/// Where a query for a partition goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// This instance answers.
    Local,
    /// This instance (another one) serves it.
    Peer { id: String, url: String },
    /// Nobody can serve it now.
    Moving,
}

/// The group as this instance knows it. Shared by the consumer's callbacks, the
/// directory tasks and the query handlers.
pub(crate) struct Group {
    pub id: String,
    /// This process, among every process that ever went by `id`: a restart on the same
    /// data directory is the same member, but another incarnation.
    pub incarnation: String,
    /// The latest word from another live incarnation of `id`.
    twin: Mutex<Option<Twin>>,
    pub group_id: String,
    pub url: String,
    pub topic: String,
    store: Store,
    metrics: ProjectorMetrics,
    applied: watch::Receiver<Applied>,
    local: Mutex<BTreeMap<i32, Held>>,
    peers: Mutex<BTreeMap<String, Peer>>,
    /// Wakes the publisher when a role changes.
    pub changed: Notify,
    /// Set once, when the topic is found.
    found: OnceLock<Found>,
    high_watermarks: Mutex<BTreeMap<i32, i64>>,
    directory_loaded: AtomicBool,
    fenced_by_twin: AtomicBool,
    stopping: Stopping,
}

/// What follows from finding the topic, learned at once and only then. The HTTP server
/// answers before (health, readiness and `not_ready`; token reads wait), because the
/// ingest may not have created the topic yet; so this is the one value set after start,
/// in one cell rather than one per value.
pub(crate) struct Found {
    pub partition_count: i32,
    /// The consumer's settings, with the partition count filled in (a rebuild reads
    /// with them too).
    pub settings: ConsumerSettings,
    /// `None` when it could not start: partitions handed over then stop being served at
    /// once.
    pub follower: Option<Follower>,
}

/// How far this instance is in stopping, which decides whether a partition it lets go
/// of is drained.
pub(crate) struct Stopping {
    /// Set on shutdown: the consumer leaves. A partition let go of is then drained only
    /// when another instance lives to take it over, and `hand_over` is on.
    pub leaving: CancellationToken,
    /// Set once everything stops: nothing is drained any more.
    pub gone: CancellationToken,
    /// Whether a leaving instance hands its partitions over (`--handoff-ms` > 0).
    pub hand_over: bool,
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: String,
        group_id: String,
        url: String,
        topic: String,
        store: Store,
        metrics: ProjectorMetrics,
        applied: watch::Receiver<Applied>,
        stopping: Stopping,
    ) -> Self {
        Group {
            id,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            twin: Mutex::new(None),
            group_id,
            url,
            topic,
            store,
            metrics,
            applied,
            local: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            found: OnceLock::new(),
            high_watermarks: Mutex::new(BTreeMap::new()),
            directory_loaded: AtomicBool::new(false),
            fenced_by_twin: AtomicBool::new(false),
            stopping,
        }
    }

    fn local(&self) -> MutexGuard<'_, BTreeMap<i32, Held>> {
        self.local
            .lock()
            .expect("the role table is never held across a panic")
    }

    fn peers(&self) -> MutexGuard<'_, BTreeMap<String, Peer>> {
        self.peers
            .lock()
            .expect("the peer table is never held across a panic")
    }

    pub(crate) fn metrics(&self) -> &ProjectorMetrics {
        &self.metrics
    }

    /// The topic is found: what follows from it, once. A second call changes nothing.
    pub(crate) fn found(&self, found: Found) {
        let _ = self.found.set(found);
    }

    /// The topic's partition count, once found.
    pub(crate) fn partition_count(&self) -> Option<i32> {
        self.found.get().map(|f| f.partition_count)
    }

    /// The settings the consumer reads the topic with, once found.
    pub(crate) fn consumer_settings(&self) -> Option<&ConsumerSettings> {
        self.found.get().map(|f| &f.settings)
    }

    /// The read-only tail of partitions handed over, once the topic is found (and if it
    /// could start).
    fn follower(&self) -> Option<&Follower> {
        self.found.get()?.follower.as_ref()
    }

    pub(crate) fn set_directory_loaded(&self) {
        self.directory_loaded.store(true, Ordering::Release);
    }

    /// The next offset applied locally in `partition` (0: nothing).
    pub(crate) fn applied(&self, partition: i32) -> i64 {
        self.applied.borrow().get(&partition).copied().unwrap_or(0)
    }

    /// This instance's role for `partition`.
    pub(crate) fn role(&self, partition: i32) -> Option<PartitionRole> {
        self.local().get(&partition).map(|h| h.role)
    }

    /// Every partition this instance holds, with its role.
    pub(crate) fn held(&self) -> BTreeMap<i32, PartitionRole> {
        self.local().iter().map(|(&p, h)| (p, h.role)).collect()
    }

    /// The partitions this instance serves every query for.
    pub(crate) fn serving(&self) -> Vec<i32> {
        self.local()
            .iter()
            .filter(|(_, h)| h.role.serves())
            .map(|(&p, _)| p)
            .collect()
    }

    fn set(&self, local: &mut BTreeMap<i32, Held>, partition: i32, held: Option<Held>) {
        let before = local.get(&partition).map(|h| h.role);
        let after = held.map(|h| h.role);
        match held {
            Some(h) => local.insert(partition, h),
            None => local.remove(&partition),
        };
        if before == after {
            return;
        }
        let name = after.map_or("none", PartitionRole::as_str);
        self.metrics
            .role_changes
            .get_or_create(&vec![("role", name.to_string())])
            .inc();
        for role in [
            PartitionRole::Owner,
            PartitionRole::Warming,
            PartitionRole::Draining,
        ] {
            let n = local.values().filter(|h| h.role == role).count();
            self.metrics
                .partition_roles
                .get_or_create(&vec![("role", role.as_str().to_string())])
                .set(n as i64);
        }
        // Assigned by the consumer group: every partition held but a draining one.
        let assigned = local
            .values()
            .filter(|h| h.role != PartitionRole::Draining)
            .count();
        self.metrics.assigned_partitions.set(assigned as i64);
        info!(partition, from = ?before.map(|r| r.as_str()), to = name, applied = self.applied(partition), "partition role changed");
        self.changed.notify_one();
    }

    /// The consumer group is assigning these partitions here: a tail of them stops, and
    /// each warms up before it serves. Runs in the rebalance callback.
    pub(crate) fn claim(&self, partitions: &[i32]) {
        if let Some(f) = self.follower() {
            for &p in partitions {
                f.stop(p);
            }
        }
        let mut local = self.local();
        for &p in partitions {
            self.set(&mut local, p, Some(Held::new(PartitionRole::Warming)));
        }
    }

    /// The consumer group took these partitions away, after their batch in hand was
    /// applied: each is drained (tailed read-only and served) until its new owner serves
    /// it, unless this instance is going away. Runs in the rebalance callback.
    pub(crate) fn release(&self, partitions: &[i32]) {
        let may_drain = !self.stopping.gone.is_cancelled()
            && (!self.stopping.leaving.is_cancelled()
                || (self.stopping.hand_over && self.has_successors()));
        let mut local = self.local();
        for &p in partitions {
            let was = local.get(&p).map(|h| h.role);
            let stored = match self.store.stored_offset(&self.topic, p) {
                Ok(s) => s,
                Err(e) => {
                    warn!(partition = p, error = %e, "cannot read the stored offset; not draining");
                    None
                }
            };
            let drain = may_drain && was == Some(PartitionRole::Owner) && stored.is_some();
            match (drain, self.follower(), stored) {
                (true, Some(f), Some(from)) => {
                    f.follow(p, from);
                    self.set(&mut local, p, Some(Held::new(PartitionRole::Draining)));
                }
                _ => self.set(&mut local, p, None),
            }
        }
    }

    /// After a batch: a warming partition that reached its target now serves.
    pub(crate) fn after_apply(&self) {
        let mut local = self.local();
        let ready: Vec<i32> = local
            .iter()
            .filter(|(&p, h)| {
                h.role == PartitionRole::Warming && h.target.is_some_and(|t| self.applied(p) >= t)
            })
            .map(|(&p, _)| p)
            .collect();
        for p in ready {
            self.promote(&mut local, p);
        }
    }

    fn promote(&self, local: &mut BTreeMap<i32, Held>, partition: i32) {
        let Some(h) = local.get(&partition).copied() else {
            return;
        };
        self.metrics
            .warming_seconds
            .observe(h.since.elapsed().as_secs_f64());
        info!(
            partition,
            warming_ms = h.since.elapsed().as_millis() as u64,
            "caught up; serving as the owner"
        );
        self.set(local, partition, Some(Held::new(PartitionRole::Owner)));
    }

    /// How many partitions this instance drains.
    pub(crate) fn draining(&self) -> usize {
        self.local()
            .values()
            .filter(|h| h.role == PartitionRole::Draining)
            .count()
    }

    /// Warming partitions whose target is not known yet.
    pub(crate) fn untargeted(&self) -> Vec<i32> {
        self.local()
            .iter()
            .filter(|(_, h)| h.role == PartitionRole::Warming && h.target.is_none())
            .map(|(&p, _)| p)
            .collect()
    }

    /// A warming partition's target: its end now. Reached already, it serves at once.
    pub(crate) fn set_target(&self, partition: i32, end: i64) {
        let mut local = self.local();
        let Some(h) = local.get_mut(&partition) else {
            return;
        };
        if h.role != PartitionRole::Warming || h.target.is_some() {
            return;
        }
        h.target = Some(end);
        if self.applied(partition) >= end {
            self.promote(&mut local, partition);
        }
    }

    pub(crate) fn set_high_watermarks(&self, hws: &[(i32, i64)]) {
        let mut m = self
            .high_watermarks
            .lock()
            .expect("the watermark table is never held across a panic");
        for &(p, hw) in hws {
            m.insert(p, hw);
        }
    }

    fn lag(&self, partition: i32) -> Option<i64> {
        self.high_watermarks
            .lock()
            .expect("the watermark table is never held across a panic")
            .get(&partition)
            .map(|hw| (hw - self.applied(partition)).max(0))
    }

    /// Ends drained partitions as their new owners take over, every [`PUBLISH_EVERY`],
    /// until `stop`.
    pub(crate) async fn end_draining_every(self: std::sync::Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PUBLISH_EVERY) => {}
            }
            let g = self.clone();
            let _ = tokio::task::spawn_blocking(move || g.end_draining()).await;
        }
    }

    /// Lets go of drained partitions whose new owner has served them for
    /// [`DRAIN_GRACE`], whose tail stopped, or that nobody took over within
    /// [`DRAIN_MAX`]. Blocking (stopping a tail waits for its batch): call it off the
    /// async threads.
    pub(crate) fn end_draining(&self) {
        let peers = self.live_peers();
        let owned_elsewhere = |p: i32| {
            peers.iter().any(|peer| {
                peer.entry
                    .partitions
                    .iter()
                    .any(|v| v.partition == p && v.role == PartitionRole::Owner)
            })
        };
        let mut done = Vec::new();
        {
            let mut local = self.local();
            for (&p, h) in local.iter_mut() {
                if h.role != PartitionRole::Draining {
                    continue;
                }
                if owned_elsewhere(p) {
                    h.successor_seen.get_or_insert_with(Instant::now);
                } else {
                    h.successor_seen = None;
                }
                let following = self.follower().is_some_and(|f| f.is_following(p));
                let handed_over = h.successor_seen.is_some_and(|t| t.elapsed() >= DRAIN_GRACE);
                if handed_over || !following || h.since.elapsed() >= DRAIN_MAX {
                    if !handed_over {
                        warn!(
                            partition = p,
                            following,
                            drained_ms = h.since.elapsed().as_millis() as u64,
                            "no longer draining the partition, with no owner seen serving it"
                        );
                    }
                    done.push(p);
                }
            }
        }
        for p in done {
            if let Some(f) = self.follower() {
                f.stop(p);
            }
            let mut local = self.local();
            if local.get(&p).map(|h| h.role) == Some(PartitionRole::Draining) {
                self.set(&mut local, p, None);
            }
        }
    }

    /// Where a query for `partition` goes. With `token`, an instance that is warming
    /// will do (it answers once it has reached the token); a forwarded query is answered
    /// here or not at all.
    pub(crate) fn route(&self, partition: i32, token: bool, forwarded: bool) -> Route {
        let mine = self.role(partition);
        if mine.is_some_and(PartitionRole::serves) {
            return Route::Local;
        }
        if forwarded {
            return if token && mine.is_some() {
                Route::Local
            } else {
                Route::Moving
            };
        }
        let peers = self.live_peers();
        let best = |role: PartitionRole| {
            peers
                .iter()
                .filter_map(|peer| {
                    peer.entry
                        .partitions
                        .iter()
                        .find(|v| v.partition == partition && v.role == role)
                        .map(|v| (v.applied_offset, peer))
                })
                .max_by_key(|(applied, _)| *applied)
                .map(|(_, peer)| Route::Peer {
                    id: peer.entry.instance_id.clone(),
                    url: peer.entry.url.clone(),
                })
        };
        if let Some(r) = best(PartitionRole::Owner).or_else(|| best(PartitionRole::Draining)) {
            return r;
        }
        if token {
            if mine.is_some() {
                return Route::Local;
            }
            if let Some(r) = best(PartitionRole::Warming) {
                return r;
            }
        }
        Route::Moving
    }

    /// Whether this instance can answer queries: it has read the directory, and it
    /// serves a partition itself or the group serves every one.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if self.stopping.leaving.is_cancelled() {
            return Err("stopping: handing its partitions over to the rest of the group".into());
        }
        if !self.directory_loaded.load(Ordering::Acquire) {
            return Err("the group's directory has not been read yet".into());
        }
        let Some(count) = self.partition_count() else {
            return Err("the topic has not been found yet".into());
        };
        if !self.serving().is_empty() {
            return Ok(());
        }
        let unserved: Vec<i32> = (0..count)
            .filter(|&p| !matches!(self.route(p, false, false), Route::Peer { .. }))
            .collect();
        if unserved.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no instance of the group serves partitions {unserved:?} yet"
            ))
        }
    }
}
