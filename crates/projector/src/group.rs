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

use ledger_api::{ClusterView, InstanceView, PartitionRole, PartitionRoleView};
use ledger_eventlog::follow::Follower;
use ledger_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::ProjectorMetrics;

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
/// How long a fenced instance listens for another process with its id before it takes
/// the fencing for a fault of the group: a few publish periods.
const TWIN_WAIT: Duration = Duration::from_secs(3);

/// One instance's entry in the group's directory, as JSON under its instance id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub instance_id: String,
    /// Its consumer group: groups projecting the same topic share the directory, and
    /// each reads only its own entries.
    pub group_id: String,
    /// Where the other instances reach it.
    pub url: String,
    /// What it holds, in partition order.
    pub partitions: Vec<PartitionRoleView>,
    /// It is stopping: it takes no partition over, so nobody waits for it to.
    #[serde(default)]
    pub leaving: bool,
    /// When it was published, in ms since the Unix epoch by the publisher's clock; an
    /// entry far older than that is ignored on reading the directory's history.
    pub published_ms: u64,
    /// The publishing process, among all that went by this id: a restart is another
    /// incarnation of the same instance. Empty from a version that did not say.
    #[serde(default)]
    pub incarnation: String,
}

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

/// Another instance, as last heard.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub entry: Entry,
    pub seen: Instant,
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

/// Another live process that goes by this instance's id (a copy of its data directory,
/// say), as last heard in the directory.
#[derive(Clone, Debug)]
pub(crate) struct Twin {
    pub url: String,
    pub seen: Instant,
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
    partition_count: OnceLock<i32>,
    high_watermarks: Mutex<BTreeMap<i32, i64>>,
    follower: OnceLock<Follower>,
    directory_loaded: AtomicBool,
    fenced_by_twin: AtomicBool,
    stopping: Stopping,
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
            partition_count: OnceLock::new(),
            high_watermarks: Mutex::new(BTreeMap::new()),
            follower: OnceLock::new(),
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

    pub(crate) fn set_partition_count(&self, count: i32) {
        let _ = self.partition_count.set(count);
    }

    pub(crate) fn partition_count(&self) -> Option<i32> {
        self.partition_count.get().copied()
    }

    pub(crate) fn set_follower(&self, follower: Follower) {
        let _ = self.follower.set(follower);
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
        if let Some(f) = self.follower.get() {
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
            match (drain, self.follower.get(), stored) {
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

    /// Another instance's entry, just read from the directory.
    pub(crate) fn heard(&self, entry: Entry) {
        if entry.group_id != self.group_id {
            return;
        }
        if entry.instance_id == self.id {
            self.heard_self(entry);
            return;
        }
        let mut peers = self.peers();
        peers.insert(
            entry.instance_id.clone(),
            Peer {
                entry,
                seen: Instant::now(),
            },
        );
        self.metrics.directory_instances.set(peers.len() as i64 + 1);
    }

    /// An entry under this instance's own id. Another incarnation's, read once the
    /// directory's history is loaded, was published after this process started: by a
    /// live process (a dead predecessor publishes nothing after the history this one
    /// read), so two processes claim one identity.
    fn heard_self(&self, entry: Entry) {
        // A predecessor that is only handing its partitions over after a SIGTERM is on
        // its way out, not a twin.
        let foreign = !entry.incarnation.is_empty()
            && entry.incarnation != self.incarnation
            && !entry.leaving;
        if !foreign || !self.directory_loaded.load(Ordering::Acquire) {
            return;
        }
        let mut twin = self
            .twin
            .lock()
            .expect("the twin record is never held across a panic");
        if twin.is_none() {
            warn!(instance_id = %self.id, other_url = %entry.url, "another live process goes by this instance's id (a copied data directory, or the same --instance-id twice); the group fences one of the two, which then stops");
        }
        *twin = Some(Twin {
            url: entry.url,
            seen: Instant::now(),
        });
    }

    /// Another live process that goes by this id, heard from within [`ENTRY_TTL`].
    pub(crate) fn twin(&self) -> Option<Twin> {
        self.twin
            .lock()
            .expect("the twin record is never held across a panic")
            .clone()
            .filter(|t| t.seen.elapsed() < ENTRY_TTL)
    }

    /// Called when the consumer group fenced this member. Waits up to [`TWIN_WAIT`] to
    /// hear of another live process with this id; if there is one, everything stops
    /// (no partition is drained, nothing more is served or published) and the reason is
    /// returned. Otherwise the fencing is taken for a passing fault of the group, and the
    /// consumer is replaced. Blocking.
    pub(crate) fn fenced(&self) -> Result<(), String> {
        // Fenced, this member no longer owns anything: nothing is served from here while
        // the verdict is out (a new consumer claims its partitions again, warming).
        let held: Vec<i32> = self.local().keys().copied().collect();
        // Tails are stopped outside the role table's lock: stopping one waits for its
        // batch, whose apply reads roles.
        if let Some(f) = self.follower.get() {
            for &p in &held {
                f.stop(p);
            }
        }
        {
            let mut local = self.local();
            for p in held {
                self.set(&mut local, p, None);
            }
        }
        let deadline = Instant::now() + TWIN_WAIT;
        let twin = loop {
            if let Some(t) = self.twin() {
                break Some(t);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let Some(twin) = twin else {
            info!(instance_id = %self.id, "fenced, with no other process of this id in the directory: taken for a fault of the group; the consumer is replaced");
            return Ok(());
        };
        self.metrics.fenced_by_twin.inc();
        self.fenced_by_twin.store(true, Ordering::Release);
        self.stopping.gone.cancel();
        Err(format!(
            "another projector, at {}, joined the group {} with this instance's id {:?}, and the group gave it this one's partitions. Two processes share one identity, as when a data directory is copied or one --instance-id is given twice. This one stops and serves nothing more. To run both, give this one a fresh --data-dir (a new id is generated on first start) or an --instance-id of its own; to move an instance, stop the old process before starting the copy",
            twin.url, self.group_id, self.id
        ))
    }

    /// Whether this instance stopped because another process took its id.
    pub(crate) fn was_fenced_by_twin(&self) -> bool {
        self.fenced_by_twin.load(Ordering::Acquire)
    }

    /// Another instance left the group cleanly (its entry's tombstone).
    pub(crate) fn gone(&self, instance_id: &str) {
        let mut peers = self.peers();
        if peers.remove(instance_id).is_some() {
            info!(instance_id, "instance left the group");
        }
        self.metrics.directory_instances.set(peers.len() as i64 + 1);
    }

    /// The instances heard from within [`ENTRY_TTL`]; older entries expire.
    pub(crate) fn live_peers(&self) -> Vec<Peer> {
        let mut peers = self.peers();
        peers.retain(|id, p| {
            let live = p.seen.elapsed() < ENTRY_TTL;
            if !live {
                info!(instance_id = %id, "instance not heard from; its entry expired");
            }
            live
        });
        self.metrics.directory_instances.set(peers.len() as i64 + 1);
        peers.values().cloned().collect()
    }

    /// Whether a live instance that is not stopping itself could take partitions over.
    pub(crate) fn has_successors(&self) -> bool {
        self.live_peers().iter().any(|p| !p.entry.leaving)
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
                let following = self.follower.get().is_some_and(|f| f.is_following(p));
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
            if let Some(f) = self.follower.get() {
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

    /// This instance's directory entry.
    pub(crate) fn entry(&self) -> Entry {
        let held = self.held();
        Entry {
            instance_id: self.id.clone(),
            group_id: self.group_id.clone(),
            url: self.url.clone(),
            partitions: held
                .into_iter()
                .map(|(p, role)| PartitionRoleView {
                    partition: p,
                    role,
                    applied_offset: self.applied(p),
                    lag: self.lag(p),
                })
                .collect(),
            leaving: self.stopping.leaving.is_cancelled(),
            published_ms: now_ms(),
            incarnation: self.incarnation.clone(),
        }
    }

    /// `GET /v1/cluster`.
    pub(crate) fn cluster(&self) -> ClusterView {
        let me = self.entry();
        let mut instances = vec![InstanceView {
            instance_id: me.instance_id,
            url: me.url,
            last_seen_ms: 0,
            partitions: me.partitions,
        }];
        for peer in self.live_peers() {
            instances.push(InstanceView {
                instance_id: peer.entry.instance_id,
                url: peer.entry.url,
                last_seen_ms: peer.seen.elapsed().as_millis() as u64,
                partitions: peer.entry.partitions,
            });
        }
        instances.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        ClusterView {
            answered_by: self.id.clone(),
            partition_count: self.partition_count(),
            instances,
        }
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
