//! [`ApiError`]: every HTTP failure of both services, rendered as the contract's
//! [`ErrorBody`] with the status its [`ErrorCode`] carries.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{ErrorBody, ErrorCode};
use ledger_domain::ValidationError;

/// An HTTP failure: a stable code (which fixes the status), a message for people, and
/// optionally how long to wait before retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// The contract's error code.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this code and message. Every `503` says when to retry: after a
    /// second.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let unavailable = code.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE;
        Self {
            code,
            message: message.into(),
            retry_after: unavailable.then_some(1),
        }
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "this route needs an Authorization: Bearer <token> header with the service's token",
        )
    }

    /// 500 `internal`: a fault of the service, never of the request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The JSON body, also used for one failed item of a batch.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::new(ErrorCode::from(&e), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut resp = (status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// 404 for any route that does not exist, in the same JSON shape.
pub async fn no_such_route() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; GET /openapi.json describes this service's API",
    )
}

/// 405 in the same JSON shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
    )
}
