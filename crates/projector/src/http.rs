//! The query API: accounts, commands and progress, each optionally waiting for a
//! consistency token; plus health, readiness and metrics.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_domain::{AccountId, CommandId};
use ledger_eventlog::admin::{high_watermarks, topic_partitions};
use ledger_eventlog::Position;
use ledger_http::ApiError;
use ledger_store::Store;
use rdkafka::consumer::BaseConsumer;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::sink::Applied;

/// Default wait for `?after=`.
const DEFAULT_WAIT_MS: u64 = 5_000;
/// Longest wait for `?after=`.
const MAX_WAIT_MS: u64 = 30_000;
const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct QueryState {
    pub store: Store,
    pub topic: Arc<str>,
    pub applied: watch::Receiver<Applied>,
    pub assigned: Arc<Mutex<BTreeSet<i32>>>,
    pub metadata: Arc<BaseConsumer>,
}

type Params = Query<HashMap<String, String>>;

/// Waits until everything up to `?after=TOKEN` is applied, or fails with 503.
async fn consistent(state: &QueryState, params: &HashMap<String, String>) -> Result<(), ApiError> {
    let Some(token) = params.get("after") else {
        return Ok(());
    };
    let pos = Position::from_token(token)
        .map_err(|e| ApiError::bad_request("invalid_token", e.to_string()))?;
    let wait_ms = match params.get("timeout_ms") {
        None => DEFAULT_WAIT_MS,
        Some(t) => t.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_timeout",
                format!("timeout_ms must be an integer from 0 to {MAX_WAIT_MS}, got {t:?}"),
            )
        })?,
    }
    .min(MAX_WAIT_MS);
    let mut rx = state.applied.clone();
    let reached = |m: &Applied| m.get(&pos.partition).is_some_and(|&next| next > pos.offset);
    let waited = tokio::time::timeout(Duration::from_millis(wait_ms), rx.wait_for(reached))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::unavailable(
            "not_yet_consistent",
            "the projector is shutting down",
            1,
        )),
        Err(_) => {
            let applied = rx.borrow().get(&pos.partition).copied();
            Err(ApiError::unavailable(
                "not_yet_consistent",
                format!(
                    "partition {} has applied {} but the token needs offset {}; retry later or with a longer timeout_ms",
                    pos.partition,
                    applied.map_or_else(|| "nothing yet".to_string(), |n| format!("up to offset {}", n - 1)),
                    pos.offset
                ),
                1,
            ))
        }
    }
}

fn store_error(e: ledger_store::StoreError) -> ApiError {
    ApiError::internal(format!("store read failed: {e}"))
}

/// `GET /v1/accounts/{id}`.
pub(crate) async fn account(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    let id = AccountId::parse(&id)?;
    consistent(&state, &params).await?;
    let acc = state
        .store
        .account(&id)
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found(
                "account_not_found",
                format!("account {id} has not been opened (or not yet projected)"),
            )
        })?;
    Ok(Json(json!({
        "account_id": id.as_str(),
        "open": acc.open,
        "balance": acc.balance,
        "applied_events": acc.applied_events,
    })))
}

/// `GET /v1/commands/{command_id}`.
pub(crate) async fn command(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    let id = CommandId::parse(&id)?;
    consistent(&state, &params).await?;
    let c = state
        .store
        .command(&id)
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::not_found(
                "command_not_found",
                format!("command {id} has not been applied (yet)"),
            )
        })?;
    Ok(Json(json!({
        "command_id": id.as_str(),
        "status": c.status.label(),
        "reason": c.status.reason(),
        "account_id": c.account_id.as_str(),
        "partition": c.partition,
        "offset": c.offset,
    })))
}

/// `GET /v1/progress`: per partition the applied offset, the high watermark and the lag.
pub(crate) async fn progress(
    State(state): State<QueryState>,
    Query(params): Params,
) -> Result<Json<Value>, ApiError> {
    consistent(&state, &params).await?;
    let applied = state.applied.borrow().clone();
    let assigned = state
        .assigned
        .lock()
        .expect("the assignment lock is never held across a panic")
        .clone();
    let (client, topic) = (state.metadata.clone(), state.topic.to_string());
    let broker = tokio::task::spawn_blocking(move || {
        let parts = topic_partitions(&client, &topic, BROKER_TIMEOUT).ok()?;
        high_watermarks(&client, &topic, &parts, BROKER_TIMEOUT).ok()
    })
    .await
    .ok()
    .flatten();
    let mut partitions: std::collections::BTreeMap<i32, (Option<i64>, i64)> = applied
        .iter()
        .map(|(&p, &next)| (p, (None, next)))
        .collect();
    for (p, hw) in broker.iter().flatten() {
        partitions.entry(*p).or_insert((None, 0)).0 = Some(*hw);
    }
    let mut total_lag = Some(0i64);
    let rows: Vec<Value> = partitions
        .iter()
        .map(|(&p, &(hw, next))| {
            let lag = hw.map(|hw| (hw - next).max(0));
            total_lag = total_lag.zip(lag).map(|(a, b)| a + b);
            json!({
                "partition": p,
                "applied_offset": next,
                "high_watermark": hw,
                "lag": lag,
                "assigned": assigned.contains(&p),
            })
        })
        .collect();
    Ok(Json(json!({
        "topic": &*state.topic,
        "broker_reachable": broker.is_some(),
        "total_lag": if broker.is_some() { total_lag } else { None },
        "partitions": rows,
    })))
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 once partitions are assigned.
pub(crate) async fn readyz(State(state): State<QueryState>) -> Response {
    let assigned: Vec<i32> = state
        .assigned
        .lock()
        .expect("the assignment lock is never held across a panic")
        .iter()
        .copied()
        .collect();
    if assigned.is_empty() {
        ApiError::unavailable(
            "not_ready",
            "no partitions are assigned to this projector yet",
            1,
        )
        .into_response()
    } else {
        Json(json!({"status": "ready", "assigned_partitions": assigned})).into_response()
    }
}
