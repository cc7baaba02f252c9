//! Unit tests of `client`.

use super::*;

fn client() -> Client {
    Client::new(ClientConfig {
        ingest: Url::parse("http://127.0.0.1:8080/").unwrap(),
        projector: Url::parse("http://h:1/base").unwrap(),
        auth_token: None,
        retry_for: Duration::from_secs(1),
    })
    .unwrap()
}

#[test]
fn urls_are_built_from_segments_and_escaped() {
    let c = client();
    assert_eq!(
        c.url(Service::Ingest, &["v1", "commands"], &[]).as_str(),
        "http://127.0.0.1:8080/v1/commands"
    );
    assert_eq!(
        c.url(
            Service::Projector,
            &["v1", "accounts", "a.b"],
            &[("after", "v1.2.41".into())]
        )
        .as_str(),
        "http://h:1/base/v1/accounts/a.b?after=v1.2.41"
    );
    assert_eq!(
        c.url(
            Service::Projector,
            &["v1", "admin", "pause"],
            &[("partition", "3".into())]
        )
        .as_str(),
        "http://h:1/base/v1/admin/pause?partition=3"
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    assert!(backoff(1) >= BACKOFF_START && backoff(1) < BACKOFF_START * 2);
    assert!(backoff(3) >= BACKOFF_START * 4);
    assert!(backoff(30) <= BACKOFF_MAX.mul_f64(1.5));
}

#[test]
fn error_bodies_are_read_in_the_contract_shape_or_described() {
    let (known, code, msg) = error_body(
        StatusCode::NOT_FOUND,
        br#"{"error":{"code":"account_not_found","message":"no"}}"#,
    );
    assert_eq!(known, Some(ErrorCode::AccountNotFound));
    assert_eq!((code.as_str(), msg.as_str()), ("account_not_found", "no"));
    let (known, code, msg) = error_body(StatusCode::SERVICE_UNAVAILABLE, b"");
    assert_eq!(known, None);
    assert_eq!(code, "service_unavailable");
    assert!(msg.contains("503"));
}

#[test]
fn exit_codes() {
    let api = |status| ClientError::Api {
        url: String::new(),
        status,
        code: String::new(),
        message: String::new(),
    };
    assert_eq!(api(404).exit_code(), 1);
    assert_eq!(api(400).exit_code(), 2);
    assert_eq!(api(401).exit_code(), 2);
    let down = ClientError::Unreachable {
        url: String::new(),
        reason: String::new(),
    };
    assert_eq!(down.exit_code(), 3);
    let unsure = ClientError::MaybeApplied {
        url: "http://p/v1/admin/parked/a/skip".into(),
        reason: "the answer was cut off".into(),
    };
    assert_eq!((unsure.exit_code(), unsure.code()), (3, "outcome_unknown"));
    assert!(unsure
        .to_string()
        .contains("may or may not have taken effect"));
    let running = ClientError::Api {
        url: String::new(),
        status: 409,
        code: "rebuild_running".into(),
        message: String::new(),
    };
    assert!(running.is_api(ErrorCode::RebuildRunning));
    assert!(!running.is_api(ErrorCode::AccountNotParked));
    assert_eq!(running.exit_code(), 1);
}
