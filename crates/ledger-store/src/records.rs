//! How the store lays out keys and values: compact, fixed-width and versioned as a whole
//! by [`LAYOUT`], which the store checks at open.
//!
//! Each partition of a topic has a tree of its own, named by [`partition_tree_name`].
//! Inside it, the first byte of a key says what it holds:
//!
//! | key | value |
//! |---|---|
//! | `o` | the partition's next offset to read: `i64` big-endian |
//! | `a` account id | the account: `open` (1 byte), `balance` (`i64`), `applied_events` (`u64`), big-endian, 17 bytes |
//! | `c` command id account id | the command's outcome: status (1 byte), offset (`i64`), event time in ms (`i64`), the watermark it is kept from (`i64`), 25 bytes; a transfer's adds its amount (`u64`), where it settled (partition `i32`, `-1` while pending, and offset `i64`) and the destination's id |
//! | `f` event id | a follow-up's outcome (offset `i64`, then 0 or the rejection's byte), 9 bytes |
//! | `t` | the partition's [`Totals`], six 16-byte big-endian integers |
//! | `e` | the next offset whose follow-ups are not known to be in the log: `i64` |
//! | `d` | the partition's state digest (see `digest`): `u128` big-endian |
//! | `p` | how many accounts of the partition are parked: `u64` |
//! | `K` account id | a parked account: the offset of its first waiting event (`i64`), how many wait (`u64`), then why the first cannot be read (text) |
//! | `k` length, account id, offset | one waiting event of a parked account: `0` and the bytes as read (unreadable here), or `1` and the event as this build encodes it |
//! | `u` offset | what an operator's decision (the `Unpark` event at that offset) released: each applied event's offset and bytes, and the skipped one |
//! | `w` | the partition's watermark: the latest event time it applied, `i64` ms |
//! | `x` kept-from, key | with an idempotency window, one per outcome that expires: the watermark it is kept from (`i64`, sign bit flipped so that keys sort by time) and the `c` or `f` key; empty |
//! | `g` partition | the highest cause offset in that partition among the follow-ups whose records were pruned here (`i64`) |
//!
//! Beside it, the tree `i/` and the partition tree's name holds two records, `i` then 0 or
//! 1: the partition's last two batches of writes (intents), each written and flushed
//! before its writes, and redone after a crash (see `intent`). It is a tree of its own
//! because an intent is large (every write of a batch), and sled copies a whole leaf for
//! each insert into it.
//!
//! A rebuild writes a partition's state into a tree of the next generation
//! (`p/<topic>/<partition>@<generation>`) and the store swaps it in by writing the
//! partition's generation into the meta tree (`gen/<topic>/<partition>`).
//!
//! A command id is 17 bytes when it is a UUID in canonical text (the ids the services
//! generate): `1` then its 16 bytes. Any other id is `0`, its length (1 byte, ids are at
//! most 128 characters) and its text. Either way the command id is a self-delimiting
//! prefix, so every account that used one id is one prefix scan away, and the account id
//! that follows makes the key unique per account: a command id is an idempotency key per
//! account.

use ledger_domain::{
    AccountId, AccountState, Amount, CommandId, CommandRecord, CommandStatus, FollowUpRecord,
    Position, Rejection, Totals, TransferRecord,
};

use crate::StoreError;

/// The layout this build reads and writes. 1 was one tree per kind shared by every
/// partition, with bincode values and text keys; 2 had no state digest and no parked
/// events; 3 wrote each partition's batch as one `apply_batch`, with no intent; 4 kept
/// every outcome for ever, with no watermark. None is migrated (the projection is rebuilt
/// from the log instead).
pub const LAYOUT: u32 = 5;

pub(crate) const META_TREE: &str = "meta";
pub(crate) const META_LAYOUT: &[u8] = b"layout";
/// The id the projector that owns this directory goes by in its group.
pub(crate) const META_INSTANCE_ID: &[u8] = b"instance_id";
/// The idempotency window the store was built with, in ms (0: unbounded).
pub(crate) const META_WINDOW: &[u8] = b"idempotency_window_ms";

pub(crate) const OFFSET_KEY: &[u8] = b"o";
/// The prefix of the partition's intents in its intent tree, then the slot (see
/// `intent`).
pub(crate) const INTENT_KEY: &[u8] = b"i";
pub(crate) const EMITTED_KEY: &[u8] = b"e";
pub(crate) const TOTALS_KEY: &[u8] = b"t";
pub(crate) const ACCOUNT_PREFIX: u8 = b'a';
pub(crate) const COMMAND_PREFIX: u8 = b'c';
pub(crate) const FOLLOW_UP_PREFIX: u8 = b'f';
pub(crate) const DIGEST_KEY: &[u8] = b"d";
pub(crate) const PARKED_COUNT_KEY: &[u8] = b"p";
pub(crate) const PARK_MARK_PREFIX: u8 = b'K';
pub(crate) const PARK_ENTRY_PREFIX: u8 = b'k';
pub(crate) const RELEASED_PREFIX: u8 = b'u';
pub(crate) const WATERMARK_KEY: &[u8] = b"w";
pub(crate) const EXPIRY_PREFIX: u8 = b'x';
pub(crate) const FLOOR_PREFIX: u8 = b'g';

/// Whether a key's record is part of the partition's state, and so of its digest: the
/// accounts, outcomes, totals, parked events, the watermark and what expires when,
/// never the bookkeeping of how far it has read or emitted (a rebuild reaches the same
/// state without emitting anything).
pub(crate) fn is_state_key(key: &[u8]) -> bool {
    matches!(
        key.first(),
        Some(
            &ACCOUNT_PREFIX
                | &COMMAND_PREFIX
                | &FOLLOW_UP_PREFIX
                | &PARK_MARK_PREFIX
                | &PARK_ENTRY_PREFIX
                | &EXPIRY_PREFIX
                | &FLOOR_PREFIX
        )
    ) || key == TOTALS_KEY
        || key == WATERMARK_KEY
}

/// A time as 8 bytes that sort as the times do.
fn sortable_time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The expiry entry of the outcome under `record_key`, kept from `kept_from_ms`.
pub(crate) fn expiry_key(kept_from_ms: i64, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + record_key.len());
    k.push(EXPIRY_PREFIX);
    k.extend_from_slice(&sortable_time(kept_from_ms));
    k.extend_from_slice(record_key);
    k
}

/// The time and the outcome's key an expiry entry holds.
pub(crate) fn decode_expiry_key<'k>(
    tree: &str,
    key: &'k [u8],
) -> Result<(i64, &'k [u8]), StoreError> {
    if key.len() < 10 || key[0] != EXPIRY_PREFIX {
        return Err(bad(
            tree,
            key,
            "an expiry entry is `x`, 8 bytes of time and a key",
        ));
    }
    let t = u64::from_be_bytes(key[1..9].try_into().expect("8 of at least 10 bytes"));
    Ok(((t ^ (1 << 63)) as i64, &key[9..]))
}

/// Where a partition keeps the floor of one cause partition.
pub(crate) fn floor_key(cause_partition: i32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = FLOOR_PREFIX;
    k[1..].copy_from_slice(&cause_partition.to_be_bytes());
    k
}

const COMMAND_ID_TEXT: u8 = 0;
const COMMAND_ID_UUID: u8 = 1;

/// A command's outcome and where its event was in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCommand {
    /// Applied, rejected, or a transfer's pending or refunded.
    pub status: CommandStatus,
    /// The account.
    pub account_id: AccountId,
    /// The event's partition.
    pub partition: i32,
    /// The event's offset.
    pub offset: i64,
    /// When the ingest accepted it, in ms since the Unix epoch.
    pub event_time_ms: i64,
    /// A transfer's terms and settlement.
    pub transfer: Option<TransferRecord>,
    /// The partition's watermark when the outcome was recorded or last changed.
    pub kept_from_ms: i64,
}

/// The tree of one partition of a topic, of generation 0 (until a rebuild swaps
/// another in).
pub(crate) fn partition_tree_name(topic: &str, partition: i32) -> String {
    generation_tree_name(topic, partition, 0)
}

/// The tree of one partition of a topic in a generation.
pub(crate) fn generation_tree_name(topic: &str, partition: i32, generation: u32) -> String {
    if generation == 0 {
        format!("{}{partition}", partition_tree_prefix(topic))
    } else {
        format!("{}{partition}@{generation}", partition_tree_prefix(topic))
    }
}

/// The tree of a partition tree's intents.
pub(crate) fn intent_tree_name(tree_name: &[u8]) -> Vec<u8> {
    [b"i/", tree_name].concat()
}

/// Where the meta tree keeps the generation of a partition's live tree.
pub(crate) fn generation_key(topic: &str, partition: i32) -> Vec<u8> {
    format!("gen/{topic}/{partition}").into_bytes()
}

pub(crate) fn partition_tree_prefix(topic: &str) -> String {
    format!("p/{topic}/")
}

/// The partition a tree name belongs to, if it is one of `topic`'s.
pub(crate) fn partition_of_tree(topic: &str, name: &[u8]) -> Option<i32> {
    tree_generation(topic, name).map(|(p, _)| p)
}

/// The partition and generation a tree name belongs to, if it is one of `topic`'s.
pub(crate) fn tree_generation(topic: &str, name: &[u8]) -> Option<(i32, u32)> {
    let rest = name.strip_prefix(partition_tree_prefix(topic).as_bytes())?;
    let rest = std::str::from_utf8(rest).ok()?;
    match rest.split_once('@') {
        Some((p, g)) => Some((p.parse().ok()?, g.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

/// `K` and the account: the account is parked.
pub(crate) fn park_mark_key(id: &AccountId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(PARK_MARK_PREFIX);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// `k`, the account's length and id: every waiting event of the account starts with it.
pub(crate) fn park_entry_prefix(id: &AccountId) -> Vec<u8> {
    let text = id.as_str().as_bytes();
    let mut k = Vec::with_capacity(2 + text.len() + 8);
    k.push(PARK_ENTRY_PREFIX);
    k.push(
        u8::try_from(text.len())
            .expect("an account id is at most 64 characters, validated at parse"),
    );
    k.extend_from_slice(text);
    k
}

pub(crate) fn park_entry_key(id: &AccountId, offset: i64) -> Vec<u8> {
    let mut k = park_entry_prefix(id);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The offset a waiting event's key ends with.
pub(crate) fn park_entry_offset(tree: &str, key: &[u8]) -> Result<i64, StoreError> {
    let tail = key
        .len()
        .checked_sub(8)
        .map(|at| &key[at..])
        .ok_or_else(|| bad(tree, key, "a waiting event's key ends with its offset"))?;
    Ok(i64::from_be_bytes(fixed::<8>(tree, key, tail)?))
}

/// A parked account: what `K` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkMark {
    /// The offset of the first waiting event, the one that cannot be read.
    pub first_offset: i64,
    /// Events waiting, that one included.
    pub waiting: u64,
    /// Why the first cannot be read.
    pub reason: String,
}

pub(crate) fn encode_park_mark(m: &ParkMark) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + m.reason.len());
    v.extend_from_slice(&m.first_offset.to_be_bytes());
    v.extend_from_slice(&m.waiting.to_be_bytes());
    v.extend_from_slice(m.reason.as_bytes());
    v
}

pub(crate) fn decode_park_mark(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<ParkMark, StoreError> {
    if bytes.len() < 16 {
        return Err(bad(
            tree,
            key,
            format!(
                "a parked account is at least 16 bytes, found {}",
                bytes.len()
            ),
        ));
    }
    Ok(ParkMark {
        first_offset: i64::from_be_bytes(fixed::<8>(tree, key, &bytes[..8])?),
        waiting: u64::from_be_bytes(fixed::<8>(tree, key, &bytes[8..16])?),
        reason: String::from_utf8_lossy(&bytes[16..]).into_owned(),
    })
}

/// A waiting event, as `k` holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ParkEntry {
    /// The bytes as read: this build could not read them.
    Unreadable(Vec<u8>),
    /// An event this build read, waiting behind one it could not, in its own encoding.
    Waiting(Vec<u8>),
}

impl ParkEntry {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            ParkEntry::Unreadable(b) | ParkEntry::Waiting(b) => b,
        }
    }
}

pub(crate) fn encode_park_entry(e: &ParkEntry) -> Vec<u8> {
    let (tag, bytes) = match e {
        ParkEntry::Unreadable(b) => (0u8, b),
        ParkEntry::Waiting(b) => (1u8, b),
    };
    let mut v = Vec::with_capacity(1 + bytes.len());
    v.push(tag);
    v.extend_from_slice(bytes);
    v
}

pub(crate) fn decode_park_entry(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<ParkEntry, StoreError> {
    match bytes.split_first() {
        Some((0, rest)) => Ok(ParkEntry::Unreadable(rest.to_vec())),
        Some((1, rest)) => Ok(ParkEntry::Waiting(rest.to_vec())),
        _ => Err(bad(tree, key, "a waiting event starts with 0 or 1")),
    }
}

/// `u` and the offset of the operator's decision.
pub(crate) fn released_key(offset: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(RELEASED_PREFIX);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// What an operator's decision released.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    /// The waiting events it applied: offset and bytes, in order.
    pub(crate) events: Vec<(i64, Vec<u8>)>,
    /// The event it skipped, to the dead-letter topic.
    pub(crate) skipped: Option<crate::Skipped>,
}

impl Released {
    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.skipped.is_none()
    }
}

fn put_bytes(v: &mut Vec<u8>, bytes: &[u8]) {
    v.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    v.extend_from_slice(bytes);
}

pub(crate) fn encode_released(r: &Released) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(r.events.len() as u32).to_be_bytes());
    for (offset, bytes) in &r.events {
        v.extend_from_slice(&offset.to_be_bytes());
        put_bytes(&mut v, bytes);
    }
    match &r.skipped {
        None => v.push(0),
        Some(s) => {
            v.push(1);
            v.extend_from_slice(&s.partition.to_be_bytes());
            v.extend_from_slice(&s.offset.to_be_bytes());
            put_bytes(&mut v, s.account_id.as_str().as_bytes());
            put_bytes(&mut v, &s.payload);
            put_bytes(&mut v, s.reason.as_bytes());
        }
    }
    v
}

/// Reads [`encode_released`]'s bytes front to back.
struct Reader<'a> {
    tree: &'a str,
    key: &'a [u8],
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(bad(self.tree, self.key, "a released record ends early"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let bytes = self.take(N)?;
        fixed::<N>(self.tree, self.key, bytes)
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = u32::from_be_bytes(self.fixed::<4>()?) as usize;
        self.take(n)
    }
}

pub(crate) fn decode_released(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<Released, StoreError> {
    let mut r = Reader {
        tree,
        key,
        rest: bytes,
    };
    let n = u32::from_be_bytes(r.fixed::<4>()?);
    let mut out = Released::default();
    for _ in 0..n {
        let offset = i64::from_be_bytes(r.fixed::<8>()?);
        out.events.push((offset, r.bytes()?.to_vec()));
    }
    if r.fixed::<1>()? == [1] {
        let partition = i32::from_be_bytes(r.fixed::<4>()?);
        let offset = i64::from_be_bytes(r.fixed::<8>()?);
        let account = String::from_utf8_lossy(r.bytes()?).into_owned();
        let account_id = AccountId::parse(&account).map_err(|e| {
            bad(
                tree,
                key,
                format!("a released record names {account:?}: {e}"),
            )
        })?;
        let payload = r.bytes()?.to_vec();
        let reason = String::from_utf8_lossy(r.bytes()?).into_owned();
        out.skipped = Some(crate::Skipped {
            partition,
            offset,
            account_id,
            payload,
            reason,
        });
    }
    Ok(out)
}

pub(crate) fn decode_u128(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u128, StoreError> {
    Ok(u128::from_be_bytes(fixed::<16>(tree, key, bytes)?))
}

pub(crate) fn decode_u64(tree: &str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(fixed::<8>(tree, key, bytes)?))
}

pub(crate) fn partition_count_key(topic: &str) -> Vec<u8> {
    format!("partitions/{topic}").into_bytes()
}

pub(crate) fn account_key(id: &AccountId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(ACCOUNT_PREFIX);
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// `c` and the command id: every account's record of this id starts with it.
pub(crate) fn command_prefix(id: &CommandId) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + 64);
    k.push(COMMAND_PREFIX);
    match id.uuid_bits() {
        Some(bits) => {
            k.push(COMMAND_ID_UUID);
            k.extend_from_slice(&bits.to_be_bytes());
        }
        None => {
            let text = id.as_str().as_bytes();
            k.push(COMMAND_ID_TEXT);
            k.push(
                u8::try_from(text.len())
                    .expect("a command id is at most 128 characters, validated at parse"),
            );
            k.extend_from_slice(text);
        }
    }
    k
}

pub(crate) fn command_key(account: &AccountId, id: &CommandId) -> Vec<u8> {
    let mut k = command_prefix(id);
    k.extend_from_slice(account.as_str().as_bytes());
    k
}

/// An expiry entry that names neither an outcome nor a follow-up.
pub(crate) fn bad_expiry(tree: &str, key: &[u8]) -> StoreError {
    bad(tree, key, "an expiry entry names a `c` or an `f` key")
}

fn bad(tree: &str, key: &[u8], detail: impl Into<String>) -> StoreError {
    StoreError::BadRecord {
        tree: tree.to_string(),
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.into(),
    }
}

fn fixed<const N: usize>(tree: &str, key: &[u8], bytes: &[u8]) -> Result<[u8; N], StoreError> {
    bytes.try_into().map_err(|_| {
        bad(
            tree,
            key,
            format!("expected {N} bytes, found {}", bytes.len()),
        )
    })
}

pub(crate) fn encode_offset(next: i64) -> [u8; 8] {
    next.to_be_bytes()
}

pub(crate) fn decode_offset(tree: &str, bytes: &[u8]) -> Result<i64, StoreError> {
    fixed::<8>(tree, OFFSET_KEY, bytes).map(i64::from_be_bytes)
}

pub(crate) fn encode_account(s: &AccountState) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = u8::from(s.open);
    v[1..9].copy_from_slice(&s.balance.to_be_bytes());
    v[9..17].copy_from_slice(&s.applied_events.to_be_bytes());
    v
}

pub(crate) fn decode_account(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<AccountState, StoreError> {
    let v = fixed::<17>(tree, key, bytes)?;
    let open = match v[0] {
        0 => false,
        1 => true,
        other => return Err(bad(tree, key, format!("open flag {other}"))),
    };
    Ok(AccountState {
        open,
        balance: i64::from_be_bytes(v[1..9].try_into().expect("8 of 17 bytes")),
        applied_events: u64::from_be_bytes(v[9..17].try_into().expect("8 of 17 bytes")),
    })
}

/// A rejection's byte. Spelled out, never derived from declaration order, so that adding
/// a rejection cannot renumber the ones on disk.
fn rejection_byte(r: Rejection) -> u8 {
    match r {
        Rejection::AccountAlreadyOpen => 1,
        Rejection::AccountNotOpen => 2,
        Rejection::InsufficientFunds => 3,
        Rejection::BalanceOverflow => 4,
        Rejection::DestinationNotOpen => 5,
        Rejection::DestinationBalanceOverflow => 6,
        Rejection::UnknownTransfer => 7,
    }
}

fn rejection_of_byte(b: u8) -> Option<Rejection> {
    Some(match b {
        1 => Rejection::AccountAlreadyOpen,
        2 => Rejection::AccountNotOpen,
        3 => Rejection::InsufficientFunds,
        4 => Rejection::BalanceOverflow,
        5 => Rejection::DestinationNotOpen,
        6 => Rejection::DestinationBalanceOverflow,
        7 => Rejection::UnknownTransfer,
        _ => return None,
    })
}

const STATUS_PENDING: u8 = 32;
const STATUS_REFUNDED: u8 = 64;

/// The status byte: 0 applied, the rejection's byte, 32 pending, 64 plus the reason's
/// byte refunded.
fn status_byte(s: CommandStatus) -> u8 {
    match s {
        CommandStatus::Applied => 0,
        CommandStatus::Rejected(r) => rejection_byte(r),
        CommandStatus::Pending => STATUS_PENDING,
        CommandStatus::Refunded(r) => STATUS_REFUNDED + rejection_byte(r),
    }
}

fn status_of_byte(b: u8) -> Option<CommandStatus> {
    Some(match b {
        0 => CommandStatus::Applied,
        STATUS_PENDING => CommandStatus::Pending,
        b if b > STATUS_REFUNDED => {
            CommandStatus::Refunded(rejection_of_byte(b - STATUS_REFUNDED)?)
        }
        b => CommandStatus::Rejected(rejection_of_byte(b)?),
    })
}

/// The length of a command record before a transfer's tail.
const COMMAND_BASE: usize = 25;

/// Whether a command record's value is a pending transfer's (which never expires).
pub(crate) fn is_pending_command(value: &[u8]) -> bool {
    value.first() == Some(&STATUS_PENDING)
}

/// A command record's value: 25 bytes, and a transfer's tail.
pub(crate) fn encode_command(record: &CommandRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(COMMAND_BASE + 20 + 64);
    v.push(status_byte(record.status));
    v.extend_from_slice(&record.offset.to_be_bytes());
    v.extend_from_slice(&record.time_ms.to_be_bytes());
    v.extend_from_slice(&record.kept_from_ms.to_be_bytes());
    if let Some(t) = &record.transfer {
        v.extend_from_slice(&t.amount.minor_units().to_be_bytes());
        let settled = t.settled_at.unwrap_or(Position {
            partition: -1,
            offset: -1,
        });
        v.extend_from_slice(&settled.partition.to_be_bytes());
        v.extend_from_slice(&settled.offset.to_be_bytes());
        v.extend_from_slice(t.to.as_str().as_bytes());
    }
    v
}

/// The account id that ends `key`, after its first `from` bytes (the kind byte, and for a
/// command the command id).
pub(crate) fn account_in_key(tree: &str, key: &[u8], from: usize) -> Result<AccountId, StoreError> {
    key.get(from..)
        .and_then(|rest| std::str::from_utf8(rest).ok())
        .and_then(|s| AccountId::parse(s).ok())
        .ok_or_else(|| bad(tree, key, "the key's account id is not valid"))
}

/// Decodes a command record found under `key`, which starts with `prefix` (the command
/// id's part): the rest of the key is the account id.
pub(crate) fn decode_command(
    tree: &str,
    partition: i32,
    prefix_len: usize,
    key: &[u8],
    bytes: &[u8],
) -> Result<StoredCommand, StoreError> {
    let (base, tail) = bytes.split_at_checked(COMMAND_BASE).ok_or_else(|| {
        bad(
            tree,
            key,
            format!(
                "expected at least {COMMAND_BASE} bytes, found {}",
                bytes.len()
            ),
        )
    })?;
    let status = status_of_byte(base[0])
        .ok_or_else(|| bad(tree, key, format!("status byte {}", base[0])))?;
    let account = account_in_key(tree, key, prefix_len)?;
    let transfer = match tail.len() {
        0 => None,
        n if n > 20 => {
            let int = |r: std::ops::Range<usize>| -> [u8; 8] {
                tail[r].try_into().expect("8 bytes of a checked tail")
            };
            let amount = Amount::new(u64::from_be_bytes(int(0..8)))
                .map_err(|e| bad(tree, key, format!("transfer amount: {e}")))?;
            let settled_partition =
                i32::from_be_bytes(tail[8..12].try_into().expect("4 bytes of a checked tail"));
            let settled_offset = i64::from_be_bytes(int(12..20));
            let to = std::str::from_utf8(&tail[20..])
                .ok()
                .and_then(|s| AccountId::parse(s).ok())
                .ok_or_else(|| bad(tree, key, "the transfer's destination is not valid"))?;
            Some(TransferRecord {
                to,
                amount,
                settled_at: (settled_partition >= 0).then_some(Position {
                    partition: settled_partition,
                    offset: settled_offset,
                }),
            })
        }
        n => return Err(bad(tree, key, format!("a transfer tail of {n} bytes"))),
    };
    Ok(StoredCommand {
        status,
        account_id: account,
        partition,
        offset: i64::from_be_bytes(base[1..9].try_into().expect("8 of 25 bytes")),
        event_time_ms: i64::from_be_bytes(base[9..17].try_into().expect("8 of 25 bytes")),
        transfer,
        kept_from_ms: i64::from_be_bytes(base[17..25].try_into().expect("8 of 25 bytes")),
    })
}

impl StoredCommand {
    /// The record as the domain's rules read it.
    pub fn into_record(self) -> CommandRecord {
        CommandRecord {
            status: self.status,
            account_id: self.account_id,
            offset: self.offset,
            time_ms: self.event_time_ms,
            transfer: self.transfer,
            kept_from_ms: self.kept_from_ms,
        }
    }
}

/// The event id in a follow-up's key.
pub(crate) fn follow_up_of_key(key: &[u8]) -> Option<u128> {
    match key {
        [FOLLOW_UP_PREFIX, id @ ..] => Some(u128::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

pub(crate) fn follow_up_key(event_id: u128) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = FOLLOW_UP_PREFIX;
    k[1..].copy_from_slice(&event_id.to_be_bytes());
    k
}

pub(crate) fn encode_follow_up(r: &FollowUpRecord) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&r.offset.to_be_bytes());
    v[8] = r.outcome.err().map_or(0, rejection_byte);
    v
}

pub(crate) fn decode_follow_up(
    tree: &str,
    key: &[u8],
    bytes: &[u8],
) -> Result<FollowUpRecord, StoreError> {
    let v = fixed::<9>(tree, key, bytes)?;
    let outcome = match v[8] {
        0 => Ok(()),
        b => Err(rejection_of_byte(b)
            .ok_or_else(|| bad(tree, key, format!("follow-up outcome byte {b}")))?),
    };
    Ok(FollowUpRecord {
        offset: i64::from_be_bytes(v[..8].try_into().expect("8 of 9 bytes")),
        outcome,
    })
}

pub(crate) fn encode_totals(t: &Totals) -> [u8; 96] {
    let mut v = [0u8; 96];
    v[0..16].copy_from_slice(&t.balance_sum.to_be_bytes());
    for (i, n) in [t.deposits, t.withdrawals, t.debited, t.credited, t.refunded]
        .into_iter()
        .enumerate()
    {
        v[16 * (i + 1)..16 * (i + 2)].copy_from_slice(&n.to_be_bytes());
    }
    v
}

pub(crate) fn decode_totals(tree: &str, bytes: &[u8]) -> Result<Totals, StoreError> {
    let v = fixed::<96>(tree, TOTALS_KEY, bytes)?;
    let n = |i: usize| -> [u8; 16] { v[16 * i..16 * (i + 1)].try_into().expect("16 of 96 bytes") };
    Ok(Totals {
        balance_sum: i128::from_be_bytes(n(0)),
        deposits: u128::from_be_bytes(n(1)),
        withdrawals: u128::from_be_bytes(n(2)),
        debited: u128::from_be_bytes(n(3)),
        credited: u128::from_be_bytes(n(4)),
        refunded: u128::from_be_bytes(n(5)),
    })
}

#[cfg(test)]
mod tests;
