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
    }
}

/// `ce_source` of a writer: `/ledger/<writer>`.
pub fn source(writer: &str) -> String {
    format!("/ledger/{writer}")
}

/// The event's time as `ce_time` spells it: RFC 3339, UTC, milliseconds.
pub fn time(time_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(time_ms).unwrap_or_default());
    humantime::format_rfc3339_millis(at).to_string()
}

/// The binding's headers for an event written by `source` (see [`source`]).
pub fn headers(event: &Event, source: &str) -> OwnedHeaders {
    let id = uuid::Uuid::from_u128(event.event_id)
        .hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned();
    OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: header::SPEC_VERSION,
            value: Some(SPEC_VERSION),
        })
        .insert(Header {
            key: header::ID,
            value: Some(&id),
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
            value: Some(&time(event.time_ms)),
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
    fn a_time_before_the_epoch_is_clamped_rather_than_wrapped() {
        assert_eq!(time(-5), "1970-01-01T00:00:00.000Z");
    }
}
