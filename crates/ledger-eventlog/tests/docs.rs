//! `docs/api.md` spells out the envelope's test vector and the CloudEvents headers; these
//! tests keep it in step with the code, so a reader in another language can trust it.

use ledger_eventlog::cloudevents::{self, header_value};
use ledger_eventlog::codec::{self, test_vector_event, TEST_VECTOR_HEX};

fn api_md() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md");
    std::fs::read_to_string(path).expect("docs/api.md is part of the repository")
}

#[test]
fn the_documented_test_vector_is_what_the_codec_writes() {
    let doc = api_md();
    assert!(
        doc.contains(TEST_VECTOR_HEX),
        "docs/api.md must show the test vector exactly as TEST_VECTOR_HEX: {TEST_VECTOR_HEX}"
    );
    let bytes: Vec<u8> = TEST_VECTOR_HEX
        .split_whitespace()
        .collect::<String>()
        .as_bytes()
        .chunks(2)
        .map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap())
        .collect();
    assert_eq!(codec::encode(&test_vector_event()), bytes);
    assert!(doc.contains(&format!("these {} bytes", bytes.len())));
}

#[test]
fn the_documented_headers_are_what_the_producer_writes() {
    let doc = api_md();
    let headers =
        cloudevents::headers(&test_vector_event(), &cloudevents::source("command-ingest"));
    for name in [
        "ce_specversion",
        "ce_id",
        "ce_type",
        "ce_source",
        "ce_time",
        "content-type",
    ] {
        let value = header_value(&headers, name).expect("every header is set");
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/api.md has no row for {name}"));
        assert!(
            row.ends_with(&format!("`{value}` |")),
            "docs/api.md gives {name} of the test vector otherwise than the code ({value}): {row}"
        );
    }
}
