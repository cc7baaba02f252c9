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
//! | `c` command id account id | the command's first outcome: status (1 byte), offset (`i64`), event time in ms (`i64`), 17 bytes |
//!
//! A command id is 17 bytes when it is a UUID in canonical text (the ids the services
//! generate): `1` then its 16 bytes. Any other id is `0`, its length (1 byte, ids are at
//! most 128 characters) and its text. Either way the command id is a self-delimiting
//! prefix, so every account that used one id is one prefix scan away, and the account id
//! that follows makes the key unique per account: a command id is an idempotency key per
//! account.

use ledger_domain::{AccountId, AccountState, CommandId, CommandStatus, Rejection};

use crate::StoreError;

/// The layout this build reads and writes. 1 was one tree per kind shared by every
/// partition, with bincode values and text keys; it is not migrated (the projection is
/// rebuilt from the log instead).
pub const LAYOUT: u32 = 2;

pub(crate) const META_TREE: &str = "meta";
pub(crate) const META_LAYOUT: &[u8] = b"layout";

pub(crate) const OFFSET_KEY: &[u8] = b"o";
pub(crate) const ACCOUNT_PREFIX: u8 = b'a';
pub(crate) const COMMAND_PREFIX: u8 = b'c';

const COMMAND_ID_TEXT: u8 = 0;
const COMMAND_ID_UUID: u8 = 1;

/// A command's first outcome and where its event was in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCommand {
    /// Applied, or rejected and why.
    pub status: CommandStatus,
    /// The account.
    pub account_id: AccountId,
    /// The event's partition.
    pub partition: i32,
    /// The event's offset.
    pub offset: i64,
    /// When the ingest accepted it, in ms since the Unix epoch.
    pub event_time_ms: i64,
}

/// The tree of one partition of a topic.
pub(crate) fn partition_tree_name(topic: &str, partition: i32) -> String {
    format!("{}{partition}", partition_tree_prefix(topic))
}

pub(crate) fn partition_tree_prefix(topic: &str) -> String {
    format!("p/{topic}/")
}

/// The partition a tree name belongs to, if it is one of `topic`'s.
pub(crate) fn partition_of_tree(topic: &str, name: &[u8]) -> Option<i32> {
    let rest = name.strip_prefix(partition_tree_prefix(topic).as_bytes())?;
    std::str::from_utf8(rest).ok()?.parse().ok()
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

/// The status byte. Spelled out, never derived from declaration order, so that adding a
/// rejection cannot renumber the ones on disk.
fn status_byte(s: CommandStatus) -> u8 {
    match s {
        CommandStatus::Applied => 0,
        CommandStatus::Rejected(Rejection::AccountAlreadyOpen) => 1,
        CommandStatus::Rejected(Rejection::AccountNotOpen) => 2,
        CommandStatus::Rejected(Rejection::InsufficientFunds) => 3,
        CommandStatus::Rejected(Rejection::BalanceOverflow) => 4,
    }
}

fn status_of_byte(b: u8) -> Option<CommandStatus> {
    Some(match b {
        0 => CommandStatus::Applied,
        1 => CommandStatus::Rejected(Rejection::AccountAlreadyOpen),
        2 => CommandStatus::Rejected(Rejection::AccountNotOpen),
        3 => CommandStatus::Rejected(Rejection::InsufficientFunds),
        4 => CommandStatus::Rejected(Rejection::BalanceOverflow),
        _ => return None,
    })
}

pub(crate) fn encode_command(status: CommandStatus, offset: i64, event_time_ms: i64) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[0] = status_byte(status);
    v[1..9].copy_from_slice(&offset.to_be_bytes());
    v[9..17].copy_from_slice(&event_time_ms.to_be_bytes());
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
    let v = fixed::<17>(tree, key, bytes)?;
    let status =
        status_of_byte(v[0]).ok_or_else(|| bad(tree, key, format!("status byte {}", v[0])))?;
    let account = account_in_key(tree, key, prefix_len)?;
    Ok(StoredCommand {
        status,
        account_id: account,
        partition,
        offset: i64::from_be_bytes(v[1..9].try_into().expect("8 of 17 bytes")),
        event_time_ms: i64::from_be_bytes(v[9..17].try_into().expect("8 of 17 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::REJECTIONS;

    #[test]
    fn every_status_has_its_own_byte_and_comes_back() {
        let mut seen = std::collections::HashSet::new();
        let all = std::iter::once(CommandStatus::Applied)
            .chain(REJECTIONS.iter().map(|r| CommandStatus::Rejected(*r)));
        for s in all {
            assert!(seen.insert(status_byte(s)), "{s:?} shares its byte");
            assert_eq!(status_of_byte(status_byte(s)), Some(s));
        }
    }

    #[test]
    fn records_are_compact_and_round_trip() {
        let s = AccountState {
            open: true,
            balance: i64::MAX,
            applied_events: 7,
        };
        assert_eq!(decode_account("t", b"a", &encode_account(&s)).unwrap(), s);
        let uuid = CommandId::from_uuid_bits(0x0192_3d4e_5f60_7a8b_9cad_bedf_0011_2233);
        let acc = AccountId::parse("acc-1").unwrap();
        assert_eq!(command_prefix(&uuid).len(), 18);
        let key = command_key(&acc, &uuid);
        let rec = encode_command(CommandStatus::Rejected(Rejection::InsufficientFunds), 41, 9);
        let back = decode_command("t", 2, 18, &key, &rec).unwrap();
        assert_eq!(back.account_id, acc);
        assert_eq!(
            (back.partition, back.offset, back.event_time_ms),
            (2, 41, 9)
        );
        assert_eq!(
            back.status,
            CommandStatus::Rejected(Rejection::InsufficientFunds)
        );
    }

    #[test]
    fn command_ids_are_self_delimiting() {
        // "ab" + account "c" and "abc" + account "" must never share a key, nor may a
        // text id collide with a UUID one.
        let acc = AccountId::parse("x").unwrap();
        let ab = command_key(&acc, &CommandId::parse("ab").unwrap());
        let abc = command_key(&acc, &CommandId::parse("abc").unwrap());
        assert!(!abc.starts_with(&command_prefix(&CommandId::parse("ab").unwrap())));
        assert_ne!(ab, abc);
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        assert!(decode_account("t", b"a", &[1, 2, 3]).is_err());
        assert!(decode_account("t", b"a", &[9; 17]).is_err());
        assert!(decode_command("t", 0, 1, b"cx", &[200; 17]).is_err());
        assert!(decode_offset("t", &[1]).is_err());
    }
}
