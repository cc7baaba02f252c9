//! How values are laid out in the store's trees. Keys are plain bytes so that sled's
//! ordering is meaningful; values are bincode behind a version byte, so the layout can
//! change with a migration later.

use ledger_domain::{AccountId, AccountState, CommandStatus};
use serde::{Deserialize, Serialize};

use crate::StoreError;

const VALUE_V1: u8 = 1;

/// A command's first outcome and where its event was in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    bincode::serde::encode_into_std_write(v, &mut out, bincode::config::standard())
        .expect("store records are plain structs that always serialize into a Vec");
    out
}

fn decode<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let bad = |detail: String| StoreError::BadRecord {
        tree,
        key: key.to_string(),
        detail,
    };
    match bytes.split_first() {
        Some((&VALUE_V1, rest)) => {
            bincode::serde::decode_from_slice(rest, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|e| bad(e.to_string()))
        }
        Some((v, _)) => Err(bad(format!("unknown record version {v}"))),
        None => Err(bad("empty record".into())),
    }
}

pub(crate) fn encode_account(s: &AccountState) -> Vec<u8> {
    encode(s)
}

pub(crate) fn decode_account(key: &str, bytes: &[u8]) -> Result<AccountState, StoreError> {
    decode("accounts", key, bytes)
}

pub(crate) fn encode_command(c: &StoredCommand) -> Vec<u8> {
    encode(c)
}

pub(crate) fn decode_command(key: &str, bytes: &[u8]) -> Result<StoredCommand, StoreError> {
    decode("commands", key, bytes)
}

pub(crate) fn offset_prefix(topic: &str) -> Vec<u8> {
    let mut k = topic.as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut k = offset_prefix(topic);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

pub(crate) fn partition_of_key(topic: &str, key: &[u8]) -> Option<i32> {
    let rest = key.strip_prefix(offset_prefix(topic).as_slice())?;
    Some(i32::from_be_bytes(rest.try_into().ok()?))
}

pub(crate) fn decode_offset(bytes: &[u8]) -> Result<i64, StoreError> {
    bytes
        .try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::BadRecord {
            tree: "offsets",
            key: String::new(),
            detail: format!("an offset is 8 bytes, found {}", bytes.len()),
        })
}
