//! The CloudEvents attributes of every event, carried as Kafka headers in the binary
//! content mode of the CloudEvents Kafka protocol binding.
//!
//! The value stays our envelope ([`crate::codec`]), and the headers say what it is, so
//! that a consumer in any language can route and filter by type, id, source and time
//! without decoding a byte of it.

use ledger_domain::{Event, EventBody};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// `ce_specversion`: the CloudEvents version the headers follow.
pub const SPEC_VERSION: &str = "1.0";
/// `content-type`: the envelope of the value, version 1 of [`crate::codec`].
pub const CONTENT_TYPE: &str = "application/vnd.ledger.event.v1+bincode";

/// Header names of the binding.
pub mod header {
    /// The CloudEvents version.
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// The event id, a UUID.
    pub const ID: &str = "ce_id";
    /// What happened, e.g. `ledger.deposited.v1`.
    pub const TYPE: &str = "ce_type";
    /// Who wrote it, e.g. `/ledger/command-ingest`.
    pub const SOURCE: &str = "ce_source";
    /// When the command was accepted, RFC 3339 in UTC with milliseconds.
    pub const TIME: &str = "ce_time";
    /// What the value is.
    pub const CONTENT_TYPE: &str = "content-type";
}

/// `ce_type` of an event body.
pub fn event_type(body: &EventBody) -> &'static str {
    match body {
        EventBody::OpenAccount => "ledger.account_opened.v1",
        EventBody::Deposit { .. } => "ledger.deposited.v1",
        EventBody::Withdraw { .. } => "ledger.withdrawn.v1",
        EventBody::Transfer { .. } => "ledger.transfer_requested.v1",
        EventBody::TransferCredit { .. } => "ledger.transfer_credit.v1",
        EventBody::TransferRefund { .. } => "ledger.transfer_refunded.v1",
        EventBody::TransferCompleted { .. } => "ledger.transfer_completed.v1",
        EventBody::Unpark { .. } => "ledger.unpark_requested.v1",
    }
}

/// `ce_source` of a writer: `/ledger/<writer>`.
pub fn source(writer: &str) -> String {
    format!("/ledger/{writer}")
}

/// The event's time as `ce_time` spells it: RFC 3339, UTC, milliseconds.
pub fn time(time_ms: i64) -> String {
    write_time(time_ms, &mut [0u8; 32]).to_owned()
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
const LAST_MS: u64 = 253_402_300_800_000 - 1;

/// [`time`], written into `buffer` (24 bytes are used). A time outside what RFC 3339 can
/// say (before 1970 or after 9999, which only a hostile writer produces) is clamped.
fn write_time(time_ms: i64, buffer: &mut [u8; 32]) -> &str {
    use std::io::Write;
    let ms = u64::try_from(time_ms).unwrap_or_default().min(LAST_MS);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    write!(cursor, "{}", humantime::format_rfc3339_millis(at))
        .expect("an RFC 3339 time with milliseconds is 24 bytes, within the buffer");
    let len = usize::try_from(cursor.position()).expect("at most 32");
    std::str::from_utf8(&buffer[..len]).expect("humantime writes ASCII")
}

/// The binding's headers for an event written by `source` (see [`source`]).
///
/// On the ingest's batch path this runs for every command, so the id and the time are
/// formatted into buffers on the stack; librdkafka copies each header anyway.
pub fn headers(event: &Event, source: &str) -> OwnedHeaders {
    let mut id_buffer = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::from_u128(event.event_id)
        .hyphenated()
        .encode_lower(&mut id_buffer);
    let mut time_buffer = [0u8; 32];
    let time = write_time(event.time_ms, &mut time_buffer);
    OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: header::SPEC_VERSION,
            value: Some(SPEC_VERSION),
        })
        .insert(Header {
            key: header::ID,
            value: Some(id),
        })
        .insert(Header {
            key: header::TYPE,
            value: Some(event_type(&event.body)),
        })
        .insert(Header {
            key: header::SOURCE,
            value: Some(source),
        })
        .insert(Header {
            key: header::TIME,
            value: Some(time),
        })
        .insert(Header {
            key: header::CONTENT_TYPE,
            value: Some(CONTENT_TYPE),
        })
}

/// The value of one header, if present and UTF-8.
pub fn header_value<'a, H: Headers>(headers: &'a H, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::test_vector_event;

    #[test]
    fn the_test_vector_has_these_headers() {
        let h = headers(&test_vector_event(), &source("command-ingest"));
        let get = |k| header_value(&h, k);
        assert_eq!(get("ce_specversion"), Some("1.0"));
        assert_eq!(get("ce_id"), Some("01923456-789a-7bcd-8ef0-123456789abc"));
        assert_eq!(get("ce_type"), Some("ledger.withdrawn.v1"));
        assert_eq!(get("ce_source"), Some("/ledger/command-ingest"));
        assert_eq!(get("ce_time"), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(
            get("content-type"),
            Some("application/vnd.ledger.event.v1+bincode")
        );
    }

    #[test]
    fn times_rfc_3339_cannot_say_are_clamped_never_a_panic() {
        assert_eq!(time(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(i64::MIN), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(i64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
