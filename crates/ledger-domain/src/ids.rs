//! Validated identifiers and money: the only ways into the domain for client input.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest amount one command may move, in minor units (ten billion in major units of
/// a two-decimal currency). Keeping it far below `i64::MAX` leaves overflow to many
/// deposits, never to one.
pub const MAX_AMOUNT: u64 = 1_000_000_000_000;

/// Longest account id, in characters.
pub const MAX_ACCOUNT_ID_LEN: usize = 64;
/// Longest command id, in characters.
pub const MAX_COMMAND_ID_LEN: usize = 128;

/// [`AccountId::parse`] as a regular expression, for the OpenAPI documents; a test holds
/// the two to the same strings.
pub const ACCOUNT_ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,64}$";
/// [`CommandId::parse`] as a regular expression, for the OpenAPI documents.
pub const COMMAND_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// An account id: 1 to 64 characters of `[A-Za-z0-9._-]`. It is also the Kafka message
/// key, so every event of one account lands in one partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

/// A command id, the idempotency key: 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommandId(String);

/// An amount of money in integer minor units, from 1 to [`MAX_AMOUNT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Amount(u64);

fn id_chars_ok(s: &str, extra: &[u8]) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || extra.contains(&b)
    })
}

impl AccountId {
    /// Validates an account id.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > MAX_ACCOUNT_ID_LEN || !id_chars_ok(s, b"") {
            return Err(ValidationError::InvalidAccountId(format!(
                "account_id must be 1 to {MAX_ACCOUNT_ID_LEN} characters of [A-Za-z0-9._-], got {}",
                shorten(s)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl CommandId {
    /// Validates a command id.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > MAX_COMMAND_ID_LEN || !id_chars_ok(s, b":") {
            return Err(ValidationError::InvalidCommandId(format!(
                "command_id must be 1 to {MAX_COMMAND_ID_LEN} characters of [A-Za-z0-9._:-], got {}",
                shorten(s)
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hyphenated lower-case text of a UUID given as its 128 bits
    /// (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`), always a valid command id: the id a
    /// service generates for a command that came without one, with no validation pass.
    pub fn from_uuid_bits(bits: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(36);
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                text.push('-');
            }
            let nibble = (bits >> (124 - 4 * i)) & 0xf;
            text.push(char::from(HEX[nibble as usize]));
        }
        Self(text)
    }

    /// When a version-7 UUID id was made, in ms since the Unix epoch (its first 48
    /// bits): the ids the ingest generates, and those of clients that follow RFC 9562.
    /// `None` for any other id, whose age nobody can tell.
    pub fn uuid_v7_time_ms(&self) -> Option<i64> {
        let bits = self.uuid_bits()?;
        let version = (bits >> 76) & 0xF;
        let variant = (bits >> 62) & 0b11;
        (version == 7 && variant == 0b10).then_some((bits >> 80) as i64)
    }

    /// The 128 bits of the id when its text is exactly what [`CommandId::from_uuid_bits`]
    /// makes (hyphenated, lower case), so that a store may keep it in 16 bytes and give
    /// back the same text; `None` for any other id, upper-case UUIDs included.
    pub fn uuid_bits(&self) -> Option<u128> {
        let b = self.0.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut bits: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
                continue;
            }
            let nibble = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return None,
            };
            bits = (bits << 4) | u128::from(nibble);
        }
        Some(bits)
    }
}

impl Amount {
    /// Validates an amount in minor units.
    pub fn new(minor_units: u64) -> Result<Self, ValidationError> {
        if minor_units == 0 || minor_units > MAX_AMOUNT {
            return Err(ValidationError::InvalidAmount(format!(
                "amount must be an integer from 1 to {MAX_AMOUNT} minor units, got {minor_units}"
            )));
        }
        Ok(Self(minor_units))
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> u64 {
        self.0
    }
}

/// Quotes a client's value for an error message without echoing a huge string back.
pub(crate) fn shorten(s: &str) -> String {
    const KEEP: usize = 80;
    if s.chars().count() <= KEEP {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(KEEP).collect();
        format!("{head:?}… ({} characters)", s.chars().count())
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_newtype_impls!(AccountId);
string_newtype_impls!(CommandId);

impl TryFrom<u64> for Amount {
    type Error = ValidationError;
    fn try_from(v: u64) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}
impl From<Amount> for u64 {
    fn from(a: Amount) -> u64 {
        a.0
    }
}
impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a request or a command was refused. Each variant is one error code of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The body is not JSON, or not of the expected JSON shape.
    #[error("{0}")]
    InvalidJson(String),
    /// `type` is not a known command.
    #[error("{0}")]
    UnknownCommand(String),
    /// A required field is absent.
    #[error("{0}")]
    MissingField(String),
    /// A field this command does not take.
    #[error("{0}")]
    UnknownField(String),
    /// `amount` is not an integer from 1 to the maximum.
    #[error("{0}")]
    InvalidAmount(String),
    /// `account_id` is malformed.
    #[error("{0}")]
    InvalidAccountId(String),
    /// `command_id` is malformed.
    #[error("{0}")]
    InvalidCommandId(String),
    /// A transfer whose source and destination are the same account.
    #[error("{0}")]
    InvalidTransfer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The patterns in the OpenAPI documents and the parsers accept the same ids.
        #[test]
        fn the_patterns_are_the_parsers(
            s in proptest::prop_oneof![
                proptest::string::string_regex("[A-Za-z0-9._:~ -]{0,130}").unwrap(),
                proptest::prelude::any::<String>(),
            ]
        ) {
            let account = regex::Regex::new(ACCOUNT_ID_PATTERN).unwrap();
            let command = regex::Regex::new(COMMAND_ID_PATTERN).unwrap();
            proptest::prop_assert_eq!(AccountId::parse(&s).is_ok(), account.is_match(&s), "{:?}", s);
            proptest::prop_assert_eq!(CommandId::parse(&s).is_ok(), command.is_match(&s), "{:?}", s);
        }
    }

    #[test]
    fn only_the_canonical_uuid_text_gives_its_bits_back() {
        let bits = 0x0192_3d4e_5f60_7a8b_9cad_bedf_0011_2233;
        assert_eq!(CommandId::from_uuid_bits(bits).uuid_bits(), Some(bits));
        for other in [
            "01923D4E-5F60-7A8B-9CAD-BEDF00112233",
            "01923d4e5f607a8b9cadbedf00112233",
            "01923d4e-5f60-7a8b-9cad-bedf0011223",
            "01923d4e-5f60-7a8b-9cad-bedf001122334",
            "01923d4e-5f60-7a8b-9cad:bedf00112233",
            "c-42",
        ] {
            assert_eq!(
                CommandId::parse(other).unwrap().uuid_bits(),
                None,
                "{other}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn every_uuid_round_trips_through_its_text(bits: u128) {
            proptest::prop_assert_eq!(CommandId::from_uuid_bits(bits).uuid_bits(), Some(bits));
        }
    }

    #[test]
    fn only_a_version_7_uuid_tells_its_age() {
        let v7 = CommandId::parse("01923456-789a-7bcd-8ef0-123456789abc").unwrap();
        assert_eq!(v7.uuid_v7_time_ms(), Some(0x0192_3456_789a));
        let v4 = CommandId::parse("01923456-789a-4bcd-8ef0-123456789abc").unwrap();
        assert_eq!(v4.uuid_v7_time_ms(), None);
        assert_eq!(CommandId::parse("c-42").unwrap().uuid_v7_time_ms(), None);
    }

    #[test]
    fn a_uuid_makes_its_hyphenated_text_a_valid_command_id() {
        let id = CommandId::from_uuid_bits(0x0192_3d4e_5f60_7a8b_9cad_bedf_0011_2233);
        assert_eq!(id.as_str(), "01923d4e-5f60-7a8b-9cad-bedf00112233");
        assert_eq!(CommandId::parse(id.as_str()).unwrap(), id);
        assert_eq!(
            CommandId::from_uuid_bits(u128::MAX).as_str(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
        assert_eq!(
            CommandId::from_uuid_bits(0).as_str(),
            "00000000-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn account_ids() {
        assert!(AccountId::parse("acc-1").is_ok());
        assert!(AccountId::parse("A.b_c-9").is_ok());
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "acc:1", "é", "a/b", &"a".repeat(65)] {
            let err = AccountId::parse(bad).unwrap_err();
            assert!(
                matches!(err, ValidationError::InvalidAccountId(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn command_ids() {
        assert!(CommandId::parse("c-42").is_ok());
        assert!(CommandId::parse("tenant:c.1_x").is_ok());
        assert!(CommandId::parse(&"c".repeat(128)).is_ok());
        for bad in ["", "c 1", "c/1", &"c".repeat(129)] {
            assert!(matches!(
                CommandId::parse(bad),
                Err(ValidationError::InvalidCommandId(_))
            ));
        }
    }

    #[test]
    fn amounts() {
        assert_eq!(Amount::new(1).unwrap().minor_units(), 1);
        assert_eq!(Amount::new(MAX_AMOUNT).unwrap().minor_units(), MAX_AMOUNT);
        for bad in [0, MAX_AMOUNT + 1] {
            assert!(matches!(
                Amount::new(bad),
                Err(ValidationError::InvalidAmount(_))
            ));
        }
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let msg = AccountId::parse(&"x".repeat(10_000))
            .unwrap_err()
            .to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.contains("10000 characters"));
    }
}
