//! Why a request of the `ledger` tool failed, with its exit code and stable code, and how
//! an answer that is not the contract's is described.

use super::*;

/// Why a request failed, after any retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made or kept, or no answer came in time.
    #[error("service unavailable: cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// What the transport reported.
        reason: String,
    },
    /// The service kept answering 503 until the retry deadline.
    #[error("service unavailable: {url} answered 503 {code}: {message} (still so after {waited_ms} ms of retries)")]
    Unavailable {
        /// The URL requested.
        url: String,
        /// The contract's error code, e.g. `log_unavailable`.
        code: String,
        /// The service's message.
        message: String,
        /// How long the client kept retrying.
        waited_ms: u128,
    },
    /// A request that must not be sent twice got no answer after it may have reached the
    /// service, so it was not resent: whether it took effect is unknown.
    #[error("service unavailable: no answer from {url} ({reason}); the request may or may not have taken effect")]
    MaybeApplied {
        /// The URL requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The service refused the request with an error of the contract.
    #[error("{code}: {message} ({status} from {url})")]
    Api {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The contract's error code.
        code: String,
        /// The service's message.
        message: String,
    },
    /// The answer was not what the contract promises (wrong service at that URL?).
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl ClientError {
    /// The process exit code this failure calls for: 3 when a service is unavailable,
    /// 2 when the request itself was refused as malformed or unauthorised, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Unavailable { .. }
            | ClientError::MaybeApplied { .. } => 3,
            ClientError::Api {
                status: 400 | 401 | 413 | 415,
                ..
            } => 2,
            ClientError::Api { .. } | ClientError::Protocol { .. } => 1,
            ClientError::Setup(_) => 2,
        }
    }

    /// A stable error code for machine-readable output.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Unreachable { .. } => "service_unreachable",
            ClientError::MaybeApplied { .. } => "outcome_unknown",
            ClientError::Unavailable { code, .. } | ClientError::Api { code, .. } => code,
            ClientError::Protocol { .. } => "unexpected_answer",
            ClientError::Setup(_) => "client_setup",
        }
    }

    /// Whether the service answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }

    /// Whether the service refused the request with this error code.
    pub fn is_api(&self, wanted: ErrorCode) -> bool {
        matches!(self, ClientError::Api { code, .. } if code == wanted.as_str())
    }
}

pub(super) fn protocol(url: &Url, message: String) -> ClientError {
    ClientError::Protocol {
        url: url.to_string(),
        message,
    }
}

/// The contract's error code and message, or the status and body text when the body is
/// not of that shape (or has a code this version does not know).
pub(super) fn error_body(status: StatusCode, bytes: &[u8]) -> (Option<ErrorCode>, String, String) {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => (
            Some(b.error.code),
            b.error.code.to_string(),
            b.error.message,
        ),
        Err(_) => {
            let text: String = String::from_utf8_lossy(bytes).chars().take(200).collect();
            let code = status
                .canonical_reason()
                .unwrap_or("http_error")
                .to_ascii_lowercase()
                .replace(' ', "_");
            let message = if text.trim().is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {}", text.trim())
            };
            (None, code, message)
        }
    }
}

/// The innermost cause of a transport error, which says what actually went wrong
/// ("Connection refused (os error 111)") where reqwest's own message does not.
pub(super) fn transport_reason(e: &reqwest::Error) -> String {
    let mut reason = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s);
        source = s.source();
    }
    if let Some(s) = innermost {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
    }
    reason
}
