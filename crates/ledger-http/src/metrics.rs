//! The Prometheus registry a service fills, and the `/metrics` route that renders it.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

use crate::error::ApiError;

/// A finished registry, shared by the `/metrics` route.
#[derive(Clone)]
pub struct MetricsRegistry(pub Arc<Registry>);

/// Latency buckets in seconds, from 0.25 ms to 10 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.00025, 2.0, 16)
}

/// `GET /metrics`.
pub async fn render(State(registry): State<MetricsRegistry>) -> Response {
    let mut out = String::with_capacity(8 * 1024);
    match encode(&mut out, &registry.0) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("encoding metrics failed: {e}")).into_response(),
    }
}
