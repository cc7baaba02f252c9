//! Reading a JSON request body with the contract's limits and error codes.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use ledger_api::ErrorCode;

use crate::error::ApiError;

/// Largest single-command body: 64 KiB.
pub const MAX_COMMAND_BODY: usize = 64 * 1024;

/// Checks that the request says it is JSON: `application/json`, with or without
/// parameters such as a charset.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "send Content-Type: application/json, got {:?}",
                ct.chars().take(100).collect::<String>()
            ),
        ))
    }
}

/// Turns axum's body rejection (size limit, broken stream) into the contract's error.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) if b.len() <= limit => Ok(b),
        Ok(b) => Err(too_large(b.len(), limit)),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body exceeds {limit} bytes"),
            ))
        }
        Err(rejection) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body could not be read: {rejection}"),
        )),
    }
}

fn too_large(len: usize, limit: usize) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the body has {len} bytes; at most {limit} are allowed"),
    )
}
