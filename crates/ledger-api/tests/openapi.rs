//! The committed `docs/openapi/ingest.json` and `docs/openapi/projector.json` are exactly
//! what the code generates, and each names only its own service's operations. After
//! changing the API, regenerate them with `LEDGER_UPDATE_OPENAPI=1 cargo test -p ledger-api`.

use std::path::PathBuf;

use ledger_api::openapi::Service;

fn committed_path(service: Service) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/openapi")
        .join(service.file_name())
}

#[test]
fn the_committed_documents_match_the_code() {
    for service in Service::ALL {
        let generated = service.document();
        let path = committed_path(service);
        if std::env::var_os("LEDGER_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("docs/openapi/ is writable when regenerating");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != generated {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
            panic!(
                "{} differs from the code from line {} on; \
                 regenerate it with `LEDGER_UPDATE_OPENAPI=1 cargo test -p ledger-api` and commit it",
                path.display(),
                line + 1
            );
        }
    }
}

fn paths(service: Service) -> Vec<String> {
    let doc: serde_json::Value = serde_json::from_str(&service.document()).unwrap();
    let mut paths: Vec<String> = doc["paths"]
        .as_object()
        .expect("a document has paths")
        .keys()
        .cloned()
        .collect();
    paths.sort();
    paths
}

#[test]
fn each_document_names_its_own_operations_and_no_other() {
    let operations = ["/healthz", "/metrics", "/openapi.json", "/readyz"];
    let mut ingest: Vec<&str> = vec!["/v1/commands", "/v1/commands/batch"];
    ingest.extend(operations);
    ingest.sort();
    assert_eq!(paths(Service::Ingest), ingest);
    let mut projector: Vec<&str> = vec![
        "/v1/accounts/{account_id}",
        "/v1/admin/parked",
        "/v1/admin/parked/{account_id}/retry",
        "/v1/admin/parked/{account_id}/skip",
        "/v1/admin/pause",
        "/v1/admin/rebuild",
        "/v1/admin/resume",
        "/v1/cluster",
        "/v1/commands/{command_id}",
        "/v1/progress",
        "/v1/totals",
    ];
    projector.extend(operations);
    projector.sort();
    assert_eq!(paths(Service::Projector), projector);
}

#[test]
fn both_documents_name_every_error_code() {
    for service in Service::ALL {
        let doc: serde_json::Value = serde_json::from_str(&service.document()).unwrap();
        let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        for code in ledger_api::ErrorCode::ALL {
            assert!(
                codes
                    .as_array()
                    .is_some_and(|c| c.iter().any(|v| v == code.as_str())),
                "{code} missing from the ErrorCode schema of {service:?}: {codes}"
            );
        }
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

#[test]
fn the_projector_serves_its_document_bounded_to_the_topic_and_the_committed_one_before() {
    let bounded: serde_json::Value =
        serde_json::from_str(&Service::Projector.served(Some(3))).unwrap();
    let params = &bounded["paths"]["/v1/admin/resume"]["post"]["parameters"];
    assert_eq!(params[0]["schema"]["maximum"], 2, "{params}");
    let after = bounded["paths"]["/v1/totals"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "after")
        .unwrap();
    assert_eq!(
        after["schema"]["pattern"],
        r"^v1\.(0|1|2)\.(0|[1-9][0-9]{0,17})$"
    );
    assert_eq!(
        Service::Projector.served(None),
        Service::Projector.document()
    );
    assert_eq!(
        Service::Ingest.served(Some(3)),
        Service::Ingest.document(),
        "the ingest names no partition"
    );
}

#[test]
fn every_command_refuses_unknown_fields_and_every_v1_route_declares_500_and_503() {
    let ingest: serde_json::Value = serde_json::from_str(&Service::Ingest.document()).unwrap();
    let variants = ingest["components"]["schemas"]["CommandRequest"]["oneOf"]
        .as_array()
        .unwrap();
    assert_eq!(variants.len(), 4);
    for v in variants {
        assert_eq!(v["additionalProperties"], false, "{v}");
    }
    for service in Service::ALL {
        let doc: serde_json::Value = serde_json::from_str(&service.document()).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = &op["responses"];
                if path.starts_with("/v1/") {
                    assert!(r["500"].is_object(), "{method} {path}");
                    assert!(
                        r["503"]["description"]
                            .as_str()
                            .unwrap()
                            .contains("`timeout`"),
                        "{method} {path}"
                    );
                }
                if r["503"].is_object() {
                    assert!(
                        r["503"]["headers"]["Retry-After"].is_object(),
                        "{method} {path}"
                    );
                }
            }
        }
    }
}
