//! The event envelope on the wire: a magic byte, a format-version byte, then the bincode
//! payload of [`Event`].
//!
//! This module is the only code that knows the format, so it can change (a new version
//! byte, another serializer) without touching anything else. Decoding never panics and
//! never allocates more than [`MAX_PAYLOAD`] whatever the input claims: it returns a
//! typed [`DecodeError`], and the projector sends such events to the dead-letter topic.

use std::sync::atomic::{AtomicBool, Ordering};

use ledger_domain::{AccountId, CommandId, Event, EventBody};
use serde::Deserialize;

/// First byte of every envelope: `0xEB` ("event, binary").
pub const MAGIC: u8 = 0xEB;
/// The format version this build writes.
pub const VERSION_1: u8 = 1;
/// Largest payload the decoder will read; events are a few dozen bytes.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// Why bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all (or a tombstone).
    #[error("empty message value")]
    Empty,
    /// The first byte is not [`MAGIC`].
    #[error("bad magic byte 0x{0:02x}, expected 0x{MAGIC:02x}")]
    BadMagic(u8),
    /// The envelope has a format version this build cannot read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// The payload is truncated, has trailing bytes, or does not hold a valid event
    /// (ids and amounts are validated while decoding).
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// A well-formed event of a type this build does not know: a newer producer wrote
    /// it. Its account is known, so it parks that account instead of being dropped.
    #[error("unknown event type {type_index} (written by a newer version)")]
    UnknownType {
        /// The account its header names.
        account_id: AccountId,
        /// Its body's variant number.
        type_index: u32,
    },
}

impl DecodeError {
    /// A short stable label, for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::UnknownType { .. } => "unknown_type",
        }
    }

    /// Whether a newer version may read it: an unknown event type, or an envelope
    /// version above this build's. Such an event parks its account; anything else is
    /// poison.
    pub fn newer_version(&self) -> bool {
        match self {
            DecodeError::UnknownType { .. } => true,
            DecodeError::UnsupportedVersion(v) => *v > VERSION_1,
            _ => false,
        }
    }
}

/// The body variants this build knows; a higher number is a newer type.
const KNOWN_TYPES: u32 = 8;

/// The variant number of the stand-in for a type only a newer version knows
/// ([`enable_test_future_type`]).
pub const TEST_FUTURE_TYPE: u32 = 100;

static TEST_FUTURE_TYPE_KNOWN: AtomicBool = AtomicBool::new(false);

/// Makes this process read [`TEST_FUTURE_TYPE`] as a deposit: a test's stand-in for
/// "a newer projector that knows the type". Off unless a hidden flag asks for it.
pub fn enable_test_future_type() {
    TEST_FUTURE_TYPE_KNOWN.store(true, Ordering::Relaxed);
}

/// An event's header: every field before the body, which every version shares.
#[derive(Deserialize)]
struct Header {
    event_id: u128,
    command_id: CommandId,
    account_id: AccountId,
    time_ms: i64,
}

/// The envelope of an event of [`TEST_FUTURE_TYPE`]: `event`'s header, the type's
/// number, an amount and a memo, as a newer producer would write it.
pub fn encode_test_future_type(event: &Event, amount: u64, memo: &str) -> Vec<u8> {
    let mut out = vec![MAGIC, VERSION_1];
    let header = (
        event.event_id,
        &event.command_id,
        &event.account_id,
        event.time_ms,
        TEST_FUTURE_TYPE,
        amount,
        memo,
    );
    bincode::serde::encode_into_std_write(header, &mut out, bincode_config())
        .expect("plain values always serialize into a Vec");
    out
}

/// Why a payload whose full decoding failed did: a type this build does not know
/// (or the test's future type, when known), else the original error.
fn unknown_type(payload: &[u8], error: DecodeError) -> Result<Event, DecodeError> {
    let Ok((header, used)) =
        bincode::serde::decode_from_slice::<Header, _>(payload, bincode_config())
    else {
        return Err(error);
    };
    let rest = &payload[used..];
    let Ok((type_index, used)) =
        bincode::serde::decode_from_slice::<u32, _>(rest, bincode_config())
    else {
        return Err(error);
    };
    if type_index < KNOWN_TYPES {
        return Err(error);
    }
    if type_index == TEST_FUTURE_TYPE && TEST_FUTURE_TYPE_KNOWN.load(Ordering::Relaxed) {
        if let Ok(((amount, _memo), _)) =
            bincode::serde::decode_from_slice::<(u64, String), _>(&rest[used..], bincode_config())
        {
            if let Ok(amount) = ledger_domain::Amount::new(amount) {
                return Ok(Event {
                    event_id: header.event_id,
                    command_id: header.command_id,
                    account_id: header.account_id,
                    time_ms: header.time_ms,
                    body: EventBody::Deposit { amount },
                });
            }
        }
        return Err(error);
    }
    Err(DecodeError::UnknownType {
        account_id: header.account_id,
        type_index,
    })
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Encodes an event as a version-1 envelope.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(MAGIC);
    out.push(VERSION_1);
    bincode::serde::encode_into_std_write(event, &mut out, bincode_config())
        .expect("an Event always serializes: it has no maps, no unbounded strings past validation, and writing to a Vec cannot fail");
    out
}

/// Decodes an envelope.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let (&magic, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let (&version, payload) = rest
        .split_first()
        .ok_or_else(|| DecodeError::Malformed("no version byte".into()))?;
    if version != VERSION_1 {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(DecodeError::Malformed(format!(
            "payload of {} bytes exceeds {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    let (event, used): (Event, usize) =
        match bincode::serde::decode_from_slice(payload, bincode_config()) {
            Ok(decoded) => decoded,
            Err(e) => return unknown_type(payload, DecodeError::Malformed(e.to_string())),
        };
    if used != payload.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the event",
            payload.len() - used
        )));
    }
    Ok(event)
}

/// The event of the envelope test vector in `docs/api.md`: a withdrawal of 300 from
/// `acc-1`, command `c-42`, at 2026-01-01T00:00:00Z.
pub fn test_vector_event() -> Event {
    use ledger_domain::{AccountId, Amount, CommandId, EventBody};
    Event {
        event_id: 0x0192_3456_789a_7bcd_8ef0_1234_5678_9abc,
        command_id: CommandId::parse("c-42").expect("a valid literal command id"),
        account_id: AccountId::parse("acc-1").expect("a valid literal account id"),
        time_ms: 1_767_225_600_000,
        body: EventBody::Withdraw {
            amount: Amount::new(300).expect("a valid literal amount"),
        },
    }
}

/// [`test_vector_event`] as a version-1 envelope, in hex, as `docs/api.md` spells it
/// out: magic, version; event_id (u128 marker, little endian); command_id "c-42";
/// account_id "acc-1"; time_ms (zigzag, u64 marker); body Withdraw, amount 300. If it
/// changes, the format changed and old events in the log would no longer decode: add a
/// new version instead.
pub const TEST_VECTOR_HEX: &str = "\
    eb 01 \
    fe bc9a78563412f08ecd7b9a7856349201 \
    04 632d3432 \
    05 6163632d31 \
    fd 0050b5ed36030000 \
    02 fb 2c01";

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_domain::{AccountId, Amount, CommandId, EventBody};
    use proptest::prelude::*;

    fn golden_event() -> Event {
        test_vector_event()
    }

    const GOLDEN_V1_HEX: &str = TEST_VECTOR_HEX;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn golden_v1_vector_decodes() {
        assert_eq!(decode(&hex(GOLDEN_V1_HEX)).unwrap(), golden_event());
    }

    #[test]
    fn encoding_matches_the_golden_vector() {
        assert_eq!(encode(&golden_event()), hex(GOLDEN_V1_HEX));
    }

    #[test]
    fn transfer_bodies_are_numbered_after_the_first_three() {
        // Variant 3 Transfer {to, amount} and variant 5 TransferRefund {to, amount,
        // reason}, as docs/api.md spells them out.
        let mut e = golden_event();
        e.body = EventBody::Transfer {
            to: AccountId::parse("acc-2").unwrap(),
            amount: Amount::new(500).unwrap(),
        };
        let bytes = encode(&e);
        let body = &bytes[39..];
        assert_eq!(body, hex("03 05 6163632d32 fb f401"));
        assert_eq!(decode(&bytes).unwrap(), e);
        e.body = EventBody::TransferRefund {
            to: AccountId::parse("acc-2").unwrap(),
            amount: Amount::new(500).unwrap(),
            reason: ledger_domain::Rejection::DestinationNotOpen,
        };
        let bytes = encode(&e);
        assert_eq!(&bytes[39..], hex("05 05 6163632d32 fb f401 04"));
        assert_eq!(decode(&bytes).unwrap(), e);
    }

    #[test]
    fn a_type_from_a_newer_version_names_its_account_and_a_newer_envelope_is_newer() {
        let bytes = encode_test_future_type(&golden_event(), 7, "memo");
        match decode(&bytes) {
            Err(e @ DecodeError::UnknownType { .. }) => {
                assert!(e.newer_version());
                assert_eq!(e.kind(), "unknown_type");
                let DecodeError::UnknownType {
                    account_id,
                    type_index,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(
                    (account_id.as_str(), type_index),
                    ("acc-1", TEST_FUTURE_TYPE)
                );
            }
            other => panic!("expected an unknown type, got {other:?}"),
        }
        assert!(DecodeError::UnsupportedVersion(2).newer_version());
        assert!(!DecodeError::UnsupportedVersion(0).newer_version());
        assert!(!DecodeError::Malformed("x".into()).newer_version());
        // A known type's damaged body stays malformed.
        let mut damaged = encode(&golden_event());
        damaged.truncate(damaged.len() - 1);
        assert!(matches!(decode(&damaged), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn every_known_type_decodes_and_the_next_number_is_unknown() {
        // `KNOWN_TYPES` must follow `EventBody`: its last variant decodes, and one past it
        // is a newer version's type.
        let mut e = golden_event();
        e.body = EventBody::Unpark {
            action: ledger_domain::UnparkKind::Skip,
            first_offset: 9,
        };
        assert_eq!(decode(&encode(&e)).unwrap(), e);
        let mut next = vec![MAGIC, VERSION_1];
        let header = (
            e.event_id,
            &e.command_id,
            &e.account_id,
            e.time_ms,
            KNOWN_TYPES,
        );
        bincode::serde::encode_into_std_write(header, &mut next, bincode_config()).unwrap();
        assert!(matches!(
            decode(&next),
            Err(DecodeError::UnknownType { type_index, .. }) if type_index == KNOWN_TYPES
        ));
    }

    #[test]
    fn typed_errors() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b"{\"type\":1}"), Err(DecodeError::BadMagic(b'{')));
        assert_eq!(decode(&[MAGIC]).unwrap_err().kind(), "malformed");
        assert_eq!(
            decode(&[MAGIC, 9, 1, 2]),
            Err(DecodeError::UnsupportedVersion(9))
        );
        assert_eq!(decode(&[MAGIC, VERSION_1]).unwrap_err().kind(), "malformed");
        let mut trailing = encode(&golden_event());
        trailing.push(0);
        assert_eq!(decode(&trailing).unwrap_err().kind(), "malformed");
        let mut truncated = encode(&golden_event());
        truncated.pop();
        assert_eq!(decode(&truncated).unwrap_err().kind(), "malformed");
    }

    #[test]
    fn invalid_content_is_malformed() {
        // The golden event with its amount set to 0, which no valid command produces.
        let mut bytes = hex(GOLDEN_V1_HEX);
        let n = bytes.len();
        bytes.truncate(n - 3);
        bytes.push(0);
        assert_eq!(decode(&bytes).unwrap_err().kind(), "malformed");
        // A huge claimed string length must not allocate it.
        let mut huge = vec![MAGIC, VERSION_1, 0x01, 0x01];
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(decode(&huge).unwrap_err().kind(), "malformed");
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let amount = (1..=ledger_domain::MAX_AMOUNT).prop_map(|a| Amount::new(a).unwrap());
        let account = "[A-Za-z0-9._-]{1,64}".prop_map(|a| AccountId::parse(&a).unwrap());
        let body = prop_oneof![
            Just(EventBody::OpenAccount),
            amount
                .clone()
                .prop_map(|amount| EventBody::Deposit { amount }),
            amount
                .clone()
                .prop_map(|amount| EventBody::Withdraw { amount }),
            (account.clone(), amount.clone())
                .prop_map(|(to, amount)| EventBody::Transfer { to, amount }),
            (account.clone(), amount.clone())
                .prop_map(|(from, amount)| EventBody::TransferCredit { from, amount }),
            (
                account.clone(),
                amount.clone(),
                proptest::sample::select(ledger_domain::REJECTIONS.to_vec())
            )
                .prop_map(|(to, amount, reason)| EventBody::TransferRefund {
                    to,
                    amount,
                    reason
                }),
            (account, amount).prop_map(|(to, amount)| EventBody::TransferCompleted { to, amount }),
        ];
        (
            any::<u128>(),
            "[A-Za-z0-9._:-]{1,128}",
            "[A-Za-z0-9._-]{1,64}",
            any::<i64>(),
            body,
        )
            .prop_map(|(event_id, c, a, time_ms, body)| Event {
                event_id,
                command_id: CommandId::parse(&c).unwrap(),
                account_id: AccountId::parse(&a).unwrap(),
                time_ms,
                body,
            })
    }

    proptest! {
        #[test]
        fn round_trip(event in arb_event()) {
            prop_assert_eq!(decode(&encode(&event)).unwrap(), event);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let mut v = vec![MAGIC, VERSION_1];
            v.extend(bytes);
            let _ = decode(&v);
        }

        #[test]
        fn corrupting_one_byte_never_panics(event in arb_event(), idx in any::<proptest::sample::Index>(), b in any::<u8>()) {
            let mut v = encode(&event);
            let i = idx.index(v.len());
            v[i] = b;
            let _ = decode(&v);
        }
    }
}
