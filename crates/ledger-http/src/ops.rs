//! The one shape of both services' HTTP app: their API routes plus the operations
//! routes every service has (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`), the
//! JSON answers for unknown routes and methods, and a bound on each request's time.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use ledger_api::openapi::Service;
use ledger_api::{ErrorCode, Health};
use prometheus_client::registry::Registry;

use crate::error::{method_not_allowed, no_such_route, ApiError};
use crate::metrics::{render, MetricsRegistry};

/// A service's whole router: `api` (its `/v1` routes, already with their state and
/// authentication), `readyz` (its own readiness check), `partitions` (the topic's
/// partition count once known, which bounds the projector's document), and everything
/// both services share. No request runs longer than `request_timeout`; one that would
/// is answered `503 timeout`.
pub fn service_router(
    service: Service,
    api: Router,
    readyz: MethodRouter,
    partitions: impl Fn() -> Option<i32> + Clone + Send + Sync + 'static,
    registry: Registry,
    request_timeout: Duration,
) -> Router {
    let metrics = Router::new()
        .route("/metrics", get(render))
        .with_state(MetricsRegistry(Arc::new(registry)));
    api.route("/healthz", get(healthz))
        .route("/readyz", readyz)
        .route("/openapi.json", get(move || openapi(service, partitions())))
        .merge(metrics)
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |req, next| {
            bounded(request_timeout, req, next)
        }))
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> Json<Health> {
    Json(Health::ok())
}

/// `GET /openapi.json`: the service's own API, as committed in `docs/openapi/` (bounded
/// to the topic's partitions once they are known).
async fn openapi(service: Service, partitions: Option<i32>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        service.served(partitions),
    )
        .into_response()
}

async fn bounded(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the request took longer than {} ms; a command may or may not have been written, \
                 and retrying it with the same command_id is safe",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    fn app(timeout: Duration) -> Router {
        let api = Router::new().route(
            "/v1/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        service_router(
            Service::Ingest,
            api,
            get(|| async { "ready" }),
            || None,
            Registry::default(),
            timeout,
        )
    }

    async fn call(app: Router, method: &str, uri: &str) -> (StatusCode, serde_json::Value) {
        let (status, _, body) = call_with_headers(app, method, uri).await;
        (status, body)
    }

    async fn call_with_headers(
        app: Router,
        method: &str,
        uri: &str,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or_default(),
        )
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_and_slow_requests_get_json_errors() {
        let (status, body) = call(app(Duration::from_secs(5)), "GET", "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (status, body) = call(app(Duration::from_secs(5)), "POST", "/healthz").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["error"]["code"], "method_not_allowed");
        let (_, headers, _) =
            call_with_headers(app(Duration::from_secs(5)), "TRACE", "/healthz").await;
        assert_eq!(
            headers.get("allow").map(|v| v.to_str().unwrap()),
            Some("GET,HEAD"),
            "a 405 names the methods the route takes"
        );
        let (status, headers, body) =
            call_with_headers(app(Duration::from_millis(50)), "GET", "/v1/slow").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "timeout");
        assert_eq!(headers["retry-after"], "1", "every 503 says when to retry");
    }

    #[tokio::test]
    async fn the_operations_routes_answer() {
        let (status, body) = call(app(Duration::from_secs(5)), "GET", "/healthz").await;
        assert_eq!((status, &body["status"]), (StatusCode::OK, &"ok".into()));
        let (status, body) = call(app(Duration::from_secs(5)), "GET", "/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["info"]["title"], "ledger command-ingest");
    }
}
