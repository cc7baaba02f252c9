//! What this instance hears of the rest of its group through the directory: the other
//! instances' entries (expiring after [`ENTRY_TTL`]), another live incarnation of its own
//! id (a twin, which decides what a fencing means), and the entry and cluster view it
//! gives of itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ledger_api::{ClusterView, InstanceView, PartitionRoleView};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{now_ms, Group, ENTRY_TTL};

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

/// Another instance, as last heard.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub entry: Entry,
    pub seen: Instant,
}

/// Another live process that goes by this instance's id (a copy of its data directory,
/// say), as last heard in the directory.
#[derive(Clone, Debug)]
pub(crate) struct Twin {
    pub url: String,
    pub seen: Instant,
}

impl Group {
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
        if let Some(f) = self.follower() {
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
}
