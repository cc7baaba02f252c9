//! The query API: accounts, commands and progress, each optionally waiting for a
//! consistency token; plus health, readiness and metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::{
    AccountView, CommandView, ConsistencyParams, ErrorCode, PartitionProgress, Progress, Readiness,
};
use ledger_domain::{AccountId, CommandId};
use ledger_eventlog::admin::{high_watermarks, topic_partitions};
use ledger_eventlog::Position;
use ledger_http::ApiError;
use ledger_store::Store;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::watch;

use crate::sink::Applied;

const BROKER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct QueryState {
    pub store: Store,
    pub topic: Arc<str>,
    pub applied: watch::Receiver<Applied>,
    pub assigned: Arc<Mutex<BTreeSet<i32>>>,
    pub metadata: Arc<BaseConsumer>,
}

/// The query string, read leniently: the last of repeated parameters wins and unknown
/// ones are ignored; [`consistency_params`] makes [`ConsistencyParams`] of it.
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `?after=&timeout_ms=`. `timeout_ms` matters only with `after`, so it is read (and can
/// be refused) only then.
fn consistency_params(params: Params) -> Result<ConsistencyParams, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidToken,
            format!("the query string could not be read: {}", e.body_text()),
        )
    })?;
    let Some(after) = params.get("after") else {
        return Ok(ConsistencyParams::default());
    };
    let timeout_ms = params
        .get("timeout_ms")
        .map(|t| {
            t.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidTimeout,
                    format!(
                        "timeout_ms must be an integer of milliseconds (at most {} are waited), got {t:?}",
                        ConsistencyParams::MAX_WAIT_MS
                    ),
                )
            })
        })
        .transpose()?;
    Ok(ConsistencyParams {
        after: Some(after.clone()),
        timeout_ms,
    })
}

/// Waits until everything up to `?after=TOKEN` is applied, or fails with 503.
async fn consistent(state: &QueryState, params: Params) -> Result<(), ApiError> {
    let params = consistency_params(params)?;
    let Some(token) = &params.after else {
        return Ok(());
    };
    let pos = Position::from_token(token)
        .map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.to_string()))?;
    let wait_ms = params.wait_ms();
    let mut rx = state.applied.clone();
    let reached = |m: &Applied| m.get(&pos.partition).is_some_and(|&next| next > pos.offset);
    let waited = tokio::time::timeout(Duration::from_millis(wait_ms), rx.wait_for(reached))
        .await
        .map(|r| r.is_ok());
    match waited {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::new(
            ErrorCode::NotYetConsistent,
            "the projector is shutting down",
        )),
        Err(_) => {
            let applied = rx.borrow().get(&pos.partition).copied();
            Err(ApiError::new(
                ErrorCode::NotYetConsistent,
                format!(
                    "partition {} has applied {} but the token needs offset {}; retry later or with a longer timeout_ms",
                    pos.partition,
                    applied.map_or_else(|| "nothing yet".to_string(), |n| format!("up to offset {}", n - 1)),
                    pos.offset
                ),
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
    params: Params,
) -> Result<Json<AccountView>, ApiError> {
    let id = AccountId::parse(&id)?;
    consistent(&state, params).await?;
    let acc = state
        .store
        .account(&state.topic, &id)
        .map_err(store_error)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::AccountNotFound,
                format!("account {id} has not been opened (or not yet projected)"),
            )
        })?;
    Ok(Json(AccountView {
        account_id: id,
        open: acc.open,
        balance: acc.balance,
        applied_events: acc.applied_events,
    }))
}

/// `GET /v1/commands/{command_id}`, with `?account_id=` to name the account when more
/// than one used the id (an idempotency key is per account).
pub(crate) async fn command(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<CommandView>, ApiError> {
    let id = CommandId::parse(&id)?;
    let account = match &params {
        Ok(Query(p)) => p
            .get("account_id")
            .map(|a| AccountId::parse(a))
            .transpose()?,
        Err(_) => None,
    };
    consistent(&state, params).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::CommandNotFound,
            format!("command {id} has not been applied (yet)"),
        )
    };
    let c = match account {
        Some(account) => state
            .store
            .command(&state.topic, &account, &id)
            .map_err(store_error)?
            .ok_or_else(not_found)?,
        None => {
            let mut found = state
                .store
                .commands(&state.topic, &id)
                .map_err(store_error)?;
            if found.len() > 1 {
                let accounts: Vec<&str> = found.iter().map(|c| c.account_id.as_str()).collect();
                return Err(ApiError::new(
                    ErrorCode::AmbiguousCommandId,
                    format!(
                        "command id {id} was used on {} accounts ({}); a command id is an idempotency key per account, so name one with ?account_id=",
                        accounts.len(),
                        accounts.join(", ")
                    ),
                ));
            }
            found.pop().ok_or_else(not_found)?
        }
    };
    Ok(Json(CommandView {
        command_id: id,
        status: c.status.into(),
        reason: c.status.reason().map(str::to_owned),
        account_id: c.account_id,
        partition: c.partition,
        offset: c.offset,
    }))
}

/// `GET /v1/progress`: per partition the applied offset, the high watermark and the lag.
pub(crate) async fn progress(
    State(state): State<QueryState>,
    params: Params,
) -> Result<Json<Progress>, ApiError> {
    consistent(&state, params).await?;
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
    let mut partitions: BTreeMap<i32, (Option<i64>, i64)> = applied
        .iter()
        .map(|(&p, &next)| (p, (None, next)))
        .collect();
    for (p, hw) in broker.iter().flatten() {
        partitions.entry(*p).or_insert((None, 0)).0 = Some(*hw);
    }
    let mut total_lag = Some(0i64);
    let rows = partitions
        .iter()
        .map(|(&p, &(hw, next))| {
            let lag = hw.map(|hw| (hw - next).max(0));
            total_lag = total_lag.zip(lag).map(|(a, b)| a + b);
            PartitionProgress {
                partition: p,
                applied_offset: next,
                high_watermark: hw,
                lag,
                assigned: assigned.contains(&p),
            }
        })
        .collect();
    Ok(Json(Progress {
        topic: state.topic.to_string(),
        broker_reachable: broker.is_some(),
        total_lag: if broker.is_some() { total_lag } else { None },
        partitions: rows,
    }))
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
        ApiError::new(
            ErrorCode::NotReady,
            "no partitions are assigned to this projector yet",
        )
        .into_response()
    } else {
        Json(Readiness::ready(&*state.topic, Some(assigned))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<ConsistencyParams, ApiError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        consistency_params(Ok(Query(map)))
    }

    #[test]
    fn timeout_ms_is_read_only_with_after_and_capped() {
        assert_eq!(
            params(&[("timeout_ms", "abc"), ("x", "y")]).unwrap(),
            ConsistencyParams::default()
        );
        let e = params(&[("after", "v1.0.1"), ("timeout_ms", "abc")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidTimeout);
        let p = params(&[("after", "v1.0.1"), ("timeout_ms", "99999")]).unwrap();
        assert_eq!(p.wait_ms(), ConsistencyParams::MAX_WAIT_MS);
        let p = params(&[("after", "v1.0.1")]).unwrap();
        assert_eq!(p.wait_ms(), ConsistencyParams::DEFAULT_WAIT_MS);
    }
}
