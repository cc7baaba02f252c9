//! The projector's store alone, without Kafka: how fast `ledger_store::Store` applies
//! replay events in batches (the real code path: the events placed in their accounts'
//! partitions of a 6-partition topic, as in the replay, one atomic write per partition on
//! as many threads as there are cores and one flush per batch), and how fast sled takes
//! the same keys as plain inserts, on one thread.
//!
//! This is the ceiling under the replay figure: whatever the consumer does, the
//! projector cannot apply events faster than its store, and the store cannot be faster
//! than sled's own inserts of one command record and the touched accounts per event.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::collections::BTreeMap;

use ledger_domain::partitioning::partition_of;
use ledger_domain::{Batch, Record};
use ledger_store::Store;
use serde_json::{json, Value};

/// The replay topic's partition count.
const PARTITIONS: i32 = 6;

use crate::procfs::{dir_size, round3, status_kib};
use crate::workload::ReplayEvents;

/// What to measure.
pub struct StoreSpec {
    /// A fresh directory; removed afterwards.
    pub dir: PathBuf,
    /// Events to apply.
    pub events: u64,
    /// Accounts they spread over.
    pub accounts: u64,
    /// Events per batch (the projector's --batch-max-events).
    pub batch: usize,
    /// sled's cache, as the projector's --cache-mb.
    pub cache_mb: u64,
    /// Random v4 command ids instead of the ingest's v7.
    pub random_ids: bool,
    /// Workload seed.
    pub seed: u64,
    /// The store's idempotency window (`None`: unbounded).
    pub window: Option<ledger_domain::IdempotencyWindow>,
    /// Event time between consecutive events, in ms.
    pub event_spacing_ms: i64,
}

fn events(spec: &StoreSpec) -> ReplayEvents {
    let e = ReplayEvents::new(spec.events, spec.accounts, spec.seed)
        .with_spacing(spec.event_spacing_ms);
    if spec.random_ids {
        e.with_random_ids()
    } else {
        e
    }
}

/// Runs both measurements, one after the other, each in its own fresh directory.
pub fn run(spec: &StoreSpec) -> anyhow::Result<Value> {
    anyhow::ensure!(
        !spec.dir.exists(),
        "{} exists; give a fresh directory",
        spec.dir.display()
    );
    std::fs::create_dir_all(&spec.dir)?;
    let result = measure(spec);
    std::fs::remove_dir_all(&spec.dir)?;
    result
}

fn measure(spec: &StoreSpec) -> anyhow::Result<Value> {
    let store_dir = spec.dir.join("store");
    let (store_s, apply_s, flush_s) = apply_through_store(spec, &store_dir)?;
    let (store_bytes, _) = dir_size(&store_dir)?;
    let rss_after_store = status_kib(std::process::id(), "VmHWM").unwrap_or(0);
    let plain_s = plain_inserts(spec, &spec.dir.join("plain"))?;
    let n = spec.events as f64;
    Ok(json!({
        "events": spec.events,
        "accounts": spec.accounts,
        "batch": spec.batch,
        "cache_mb": spec.cache_mb,
        "command_ids": if spec.random_ids { "random v4" } else { "time-ordered v7" },
        "store_apply_per_s": (n / store_s).round(),
        "store_transaction_share": round3(apply_s / store_s),
        "store_flush_share": round3(flush_s / store_s),
        "store_dir_mb": round3(store_bytes as f64 / 1e6),
        "store_bytes_per_event": (store_bytes as f64 / n * 10.0).round() / 10.0,
        "idempotency_window": ledger_domain::WindowSetting(spec.window).to_string(),
        "event_spacing_ms": spec.event_spacing_ms,
        "store_peak_rss_mb": round3(rss_after_store as f64 / 1024.0),
        "sled_plain_insert_per_s": (n / plain_s).round(),
        "sled_plain_note": "the same keys per event (command record + account) as plain sled inserts, no transaction, a flush per batch",
    }))
}

/// Through `Store::apply_batch`, as the projector does.
fn apply_through_store(spec: &StoreSpec, dir: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let store = Store::open(dir, spec.cache_mb * 1024 * 1024)?.with_window(spec.window);
    store.check_partition_count("bench", PARTITIONS)?;
    store.check_window()?;
    let mut events = events(spec);
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut apply, mut flush) = (0.0, 0.0);
    let started = Instant::now();
    loop {
        let mut next_offsets = BTreeMap::new();
        let records: Vec<Record> = events
            .by_ref()
            .take(spec.batch)
            .map(|event| {
                let partition = partition_of(&event.account_id, PARTITIONS);
                let end = ends.entry(partition).or_insert(0);
                *end += 1;
                next_offsets.insert(partition, *end);
                Record {
                    partition,
                    offset: *end - 1,
                    event,
                }
            })
            .collect();
        if records.is_empty() {
            break;
        }
        let batch = Batch {
            records,
            next_offsets,
            emit_from: BTreeMap::new(),
            unreadable: Vec::new(),
        };
        let stats = store.apply_batch("bench", &batch)?;
        apply += stats.apply_time.as_secs_f64();
        flush += stats.flush_time.as_secs_f64();
    }
    Ok((started.elapsed().as_secs_f64(), apply, flush))
}

/// The same keys as plain sled inserts (every command, each touched account once per
/// batch): the floor of any layout that keeps one record per command and per account
/// in sled.
fn plain_inserts(spec: &StoreSpec, dir: &Path) -> anyhow::Result<f64> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(spec.cache_mb * 1024 * 1024)
        .flush_every_ms(None)
        .open()?;
    let commands = db.open_tree("commands")?;
    let accounts = db.open_tree("accounts")?;
    // Values of the stored records' size: a command outcome, an account state.
    let (command_value, account_value) = ([1u8; 24], [1u8; 12]);
    let mut events = events(spec).peekable();
    let started = Instant::now();
    while events.peek().is_some() {
        // Each account once per batch, as the store writes it.
        let mut touched = HashSet::new();
        for e in events.by_ref().take(spec.batch) {
            commands.insert(e.command_id.as_str(), &command_value[..])?;
            touched.insert(e.account_id);
        }
        for a in touched {
            accounts.insert(a.as_str(), &account_value[..])?;
        }
        db.flush()?;
    }
    Ok(started.elapsed().as_secs_f64())
}
