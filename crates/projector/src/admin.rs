//! The operations routes (`/v1/admin/…`), behind the same bearer token as every `/v1`
//! route: pause and resume applying, the verified rebuild, and parked accounts.
//!
//! A request about one partition (a pause of it, a parked account) is carried out where
//! that partition is applied: here, or forwarded once to its owner. A request about all
//! of them (a pause of everything, the parked list) is carried out here and on every
//! live instance. An operator's decision for a parked account is not carried out by
//! any instance directly: it is written to the log, keyed by the account, and applied
//! at its place in the account's order by every instance that holds the partition and
//! by any later rebuild, so that they all keep the same state.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::cluster::FORWARDED_BY_HEADER;
use ledger_api::{ErrorCode, ParkedAccount, ParkedView, PartitionRole, PauseView, UnparkAccepted};
use ledger_domain::partitioning::partition_of;
use ledger_domain::{AccountId, Event, EventBody, UnparkKind};
use ledger_http::ApiError;
use tracing::{info, warn};

use crate::consistency::{Ask, Params};
use crate::forward::PeerCall;
use crate::group::Route;
use crate::state::{moving, store_error, QueryState};

/// How long a forwarded admin request may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin request to another instance, with the caller's credentials.
fn admin_call<'a>(
    method: reqwest::Method,
    path: &'a str,
    query: &'a [(&'a str, String)],
    headers: &'a HeaderMap,
) -> PeerCall<'a> {
    PeerCall {
        method,
        path,
        query,
        auth: headers.get(header::AUTHORIZATION),
        timeout: PEER_TIMEOUT,
    }
}

/// `?partition=N`, checked against the topic.
fn partition_param(params: &Params, count: i32) -> Result<Option<i32>, ApiError> {
    let Ok(Query(params)) = params else {
        return Err(ApiError::new(
            ErrorCode::InvalidPartition,
            "the query string could not be read",
        ));
    };
    let Some(text) = params.get("partition") else {
        return Ok(None);
    };
    match text.parse::<i32>() {
        Ok(p) if (0..count).contains(&p) => Ok(Some(p)),
        _ => Err(ApiError::new(
            ErrorCode::InvalidPartition,
            format!(
                "partition must be an integer from 0 to {}, got {text:?}",
                count - 1
            ),
        )),
    }
}

impl QueryState {
    /// The partitions this instance owns and an operator paused.
    fn paused_here(&self) -> Vec<i32> {
        self.group
            .held()
            .into_iter()
            .filter(|&(p, role)| role == PartitionRole::Owner && self.pause.is_paused(p))
            .map(|(p, _)| p)
            .collect()
    }
}

/// `POST /v1/admin/pause[?partition=N]`.
pub(crate) async fn pause(
    State(state): State<QueryState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    switch(state, headers, params, true).await
}

/// `POST /v1/admin/resume[?partition=N]`.
pub(crate) async fn resume(
    State(state): State<QueryState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    switch(state, headers, params, false).await
}

async fn switch(
    state: QueryState,
    headers: HeaderMap,
    params: Params,
    pause: bool,
) -> Result<Response, ApiError> {
    let partition = partition_param(&params, state.partition_count()?)?;
    let forwarded = headers.contains_key(FORWARDED_BY_HEADER);
    let path = if pause {
        "/v1/admin/pause"
    } else {
        "/v1/admin/resume"
    };
    if let (Some(p), false) = (partition, forwarded) {
        match state.group.route(p, false, false) {
            Route::Local => {}
            Route::Peer { id, url } => {
                let query = [("partition", p.to_string())];
                let call = admin_call(reqwest::Method::POST, path, &query, &headers);
                let answer = state
                    .call_peer(&id, &url, &call)
                    .await
                    .map_err(|e| moving(&state, p, &e))?;
                return Ok(answer.relay());
            }
            Route::Moving => return Err(moving(&state, p, "no instance applies it now")),
        }
    }
    if pause {
        state.pause.pause(partition);
    } else {
        state.pause.resume(partition);
    }
    let verb = if pause { "paused" } else { "resumed" };
    match partition {
        Some(p) => info!(partition = p, "{verb} by an operator"),
        None => info!("every partition {verb} by an operator"),
    }
    let mut view = PauseView {
        paused_partitions: state.paused_here(),
        instances: vec![state.group.id.clone()],
    };
    // Everything: on every live instance too.
    if partition.is_none() && !forwarded {
        let call = admin_call(reqwest::Method::POST, path, &[], &headers);
        for (peer, answer) in state.gather::<PauseView>(call).await {
            match answer {
                Some(v) => {
                    view.paused_partitions.extend(v.paused_partitions);
                    view.instances.extend(v.instances);
                }
                None => {
                    warn!(instance = %peer.entry.instance_id, "an instance did not take the {verb} request")
                }
            }
        }
        view.paused_partitions.sort_unstable();
    }
    Ok(Json(view).into_response())
}

/// `POST /v1/admin/rebuild`: starts a verified rebuild of this instance's partitions.
pub(crate) async fn start_rebuild(State(state): State<QueryState>) -> Result<Response, ApiError> {
    let view = state.rebuilder.start()?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// `GET /v1/admin/rebuild`: the last rebuild on this instance.
pub(crate) async fn rebuild_status(State(state): State<QueryState>) -> Result<Response, ApiError> {
    match state.rebuilder.status() {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            "no rebuild has run on this instance since it started; start one with POST /v1/admin/rebuild",
        )),
    }
}

/// `GET /v1/admin/parked`: the parked accounts of the partitions this instance serves,
/// and (unless forwarded) every live instance's.
pub(crate) async fn parked(
    State(state): State<QueryState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<ParkedView>, ApiError> {
    let ask = Ask::read(&headers, &params, state.group.partition_count())?;
    let serving = state.group.serving();
    let mut accounts: Vec<ParkedAccount> = state
        .store
        .parked_in(&state.topic, &serving)
        .map_err(store_error)?
        .into_iter()
        .map(|(partition, account_id, mark)| ParkedAccount {
            account_id,
            partition,
            first_offset: mark.first_offset,
            waiting: mark.waiting,
            reason: mark.reason,
            served_by: state.group.id.clone(),
        })
        .collect();
    let mut complete = true;
    if !ask.forwarded {
        let call = PeerCall::query("/v1/admin/parked", &[], &ask);
        for (_, view) in state.gather::<ParkedView>(call).await {
            match view {
                Some(v) => accounts.extend(v.accounts),
                None => complete = false,
            }
        }
    }
    // A partition being handed over is served by two instances: the same account twice.
    accounts.sort_by(|a, b| (a.partition, &a.account_id).cmp(&(b.partition, &b.account_id)));
    accounts.dedup_by(|a, b| a.account_id == b.account_id);
    Ok(Json(ParkedView { accounts, complete }))
}

/// `POST /v1/admin/parked/{account_id}/retry|skip`: writes the operator's decision to
/// the log, keyed by the account, once the account is seen parked where its partition
/// is served.
pub(crate) async fn unpark(
    State(state): State<QueryState>,
    Path((account, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let action = match action.as_str() {
        "retry" => UnparkKind::Retry,
        "skip" => UnparkKind::Skip,
        other => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no such action {other:?} for a parked account: retry or skip"),
            ))
        }
    };
    let id = AccountId::parse(&account)?;
    let count = state.partition_count()?;
    let partition = partition_of(&id, count);
    let forwarded = headers.contains_key(FORWARDED_BY_HEADER);
    // Where the account's first waiting event is, as its partition's server sees it: the
    // decision names it, so that one that lands in the log twice is applied once.
    let first_offset = match state.group.route(partition, false, forwarded) {
        Route::Local => state
            .store
            .parked(&state.topic, &id)
            .map_err(store_error)?
            .map(|m| m.first_offset),
        Route::Peer { id: peer, url } => {
            let call = admin_call(reqwest::Method::GET, "/v1/admin/parked", &[], &headers);
            let answer = state
                .call_peer(&peer, &url, &call)
                .await
                .map_err(|e| moving(&state, partition, &e))?;
            if answer.status != StatusCode::OK {
                return Err(answer.error());
            }
            answer
                .json::<ParkedView>()
                .and_then(|v| v.accounts.into_iter().find(|a| a.account_id == id))
                .map(|a| a.first_offset)
        }
        Route::Moving => {
            return Err(moving(
                &state,
                partition,
                "no instance can tell whether the account is parked",
            ))
        }
    };
    let Some(first_offset) = first_offset else {
        return Err(ApiError::new(
            ErrorCode::AccountNotParked,
            format!("account {id} is not parked: nothing waits to be retried or skipped"),
        ));
    };
    let (event_id, command_id) = ledger_eventlog::fresh::ids(None);
    let event = Event {
        event_id,
        command_id,
        account_id: id.clone(),
        time_ms: ledger_eventlog::fresh::now_ms(),
        body: EventBody::Unpark {
            action,
            first_offset,
        },
    };
    let at = state
        .producer
        .send(&state.topic, &event)
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::LogUnavailable,
                format!("the decision could not be written to the log: {e}; it may or may not be there: read GET /v1/admin/parked before sending it again (applied, it would make the next waiting event the first, and a second decision would act on that one)"),
            )
        })?;
    state
        .group
        .metrics()
        .parked_events
        .get_or_create(&vec![("outcome", format!("{}_requested", action.as_str()))])
        .inc();
    info!(account = %id, action = action.as_str(), partition = at.partition, offset = at.offset, "an operator's decision for a parked account is in the log");
    Ok((
        StatusCode::ACCEPTED,
        Json(UnparkAccepted {
            account_id: id,
            action,
            first_offset,
            partition: at.partition,
            offset: at.offset,
            token: at.token(),
        }),
    )
        .into_response())
}
