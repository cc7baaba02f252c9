//! The committed `docs/openapi.json` is exactly what the code generates. After changing
//! the API, regenerate it with `LEDGER_UPDATE_OPENAPI=1 cargo test -p ledger-api`.

use std::path::PathBuf;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json")
}

#[test]
fn the_committed_document_matches_the_code() {
    let generated = ledger_api::openapi::document();
    let path = committed_path();
    if std::env::var_os("LEDGER_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("docs/ is writable when regenerating");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/openapi.json differs from the code from line {} on; \
             regenerate it with `LEDGER_UPDATE_OPENAPI=1 cargo test -p ledger-api` and commit it",
            line + 1
        );
    }
}

#[test]
fn the_document_names_every_error_code() {
    let doc: serde_json::Value = serde_json::from_str(&ledger_api::openapi::document()).unwrap();
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for code in ledger_api::ErrorCode::ALL {
        assert!(
            codes
                .as_array()
                .is_some_and(|c| c.iter().any(|v| v == code.as_str())),
            "{code} missing from the ErrorCode schema: {codes}"
        );
    }
    for path in [
        "/v1/commands",
        "/v1/commands/batch",
        "/v1/accounts/{account_id}",
        "/v1/commands/{command_id}",
        "/v1/progress",
        "/readyz",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
}

#[test]
fn docs_api_md_lists_every_error_code_with_its_status() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
    let doc = std::fs::read_to_string(path).expect("docs/api.md is part of the repository");
    for code in ledger_api::ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.status().as_u16());
        assert!(doc.contains(&row), "docs/api.md lacks the row {row}");
    }
}
