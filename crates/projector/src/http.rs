//! The query API: accounts, commands, progress and the group, each optionally waiting
//! for a consistency token; plus readiness.
//!
//! Any instance of a group answers any query. A query about one partition (an account,
//! or a command named with its account) is answered where that partition is served:
//! here, or, forwarded once, on the instance that serves it ([`Group::route`]); a
//! forwarded query is answered where it lands and never forwarded again. A query about
//! every partition (a command by id alone, the progress) asks every instance that
//! serves some of them. A token of another partition than the query's is waited for
//! first, where that partition is served. When nobody can serve a partition, the answer
//! is 503 `partition_moving`, never a 404.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use ledger_api::cluster::SERVED_BY_HEADER;
use ledger_api::{
    AccountView, ClusterView, CommandView, ErrorCode, LogPosition, Readiness, TransferView,
};
use ledger_domain::partitioning::partition_of;
use ledger_domain::{AccountId, CommandId};
use ledger_http::ApiError;
use ledger_store::StoredCommand;

use crate::consistency::{Ask, Params};
use crate::forward::PeerCall;
use crate::group::Route;
use crate::state::{counted, moving_error, store_error, QueryState};

/// `GET /v1/accounts/{id}`.
pub(crate) async fn account(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let id = AccountId::parse(&id)?;
    let (count, ask) = state.read_ask(&headers, &params).await?;
    let partition = partition_of(&id, count);
    let path = format!("/v1/accounts/{id}");
    state
        .answer_for(partition, ask, &path, Vec::new(), async |s: &QueryState| {
            let acc = s
                .store
                .account_in(&s.topic, partition, &id)
                .map_err(store_error)?;
            let parked = s
                .store
                .parked(&s.topic, &id)
                .map_err(store_error)?
                .is_some();
            // An account whose opening waits behind an unreadable event exists, parked.
            let acc = match acc {
                Some(acc) => acc,
                None if parked => ledger_domain::AccountState::default(),
                None => {
                    return Err(ApiError::new(
                        ErrorCode::AccountNotFound,
                        format!("account {id} has not been opened (or not yet projected)"),
                    ))
                }
            };
            Ok(Json(AccountView {
                account_id: id.clone(),
                open: acc.open,
                balance: acc.balance,
                applied_events: acc.applied_events,
                parked,
            })
            .into_response())
        })
        .await
}

fn command_view(c: StoredCommand, id: &CommandId) -> CommandView {
    CommandView {
        command_id: id.clone(),
        status: c.status.into(),
        reason: c.status.reason().map(str::to_owned),
        account_id: c.account_id,
        partition: c.partition,
        offset: c.offset,
        transfer: c.transfer.map(|t| TransferView {
            to_account: t.to,
            amount: t.amount,
            settled_at: t.settled_at.map(|p| LogPosition {
                partition: p.partition,
                offset: p.offset,
            }),
            settled_token: t.settled_at.map(|p| p.token()),
        }),
    }
}

/// No outcome of the command in `partitions`: `410 command_expired` when its id is a
/// version-7 UUID made a window before every one of their watermarks (its outcome, if it
/// had one, was pruned), else `404 command_not_found`, saying for how long outcomes are
/// kept.
fn command_not_found(state: &QueryState, id: &CommandId, partitions: &[i32]) -> ApiError {
    let Some(window) = state.store.window() else {
        return ApiError::new(
            ErrorCode::CommandNotFound,
            format!("command {id} has not been applied (yet)"),
        );
    };
    // A partition that applied nothing yet cannot hold the command.
    let oldest_watermark = partitions
        .iter()
        .filter_map(|&p| state.store.watermark(&state.topic, p).ok().flatten())
        .min();
    match (id.uuid_v7_time_ms(), oldest_watermark) {
        (Some(made), Some(watermark)) if window.expired(made, watermark) => ApiError::new(
            ErrorCode::CommandExpired,
            format!(
                "command {id} was made more than the idempotency window ({window}) before the latest events applied: its outcome, if it had one, has been pruned"
            ),
        ),
        _ => ApiError::new(
            ErrorCode::CommandNotFound,
            format!(
                "command {id} has not been applied (yet), or was applied more than the idempotency window ({window}) ago and its outcome pruned"
            ),
        ),
    }
}

fn ambiguous(id: &CommandId, accounts: &[String]) -> ApiError {
    ApiError::new(
        ErrorCode::AmbiguousCommandId,
        format!(
            "command id {id} was used on {} accounts ({}); a command id is an idempotency key per account, so name one with ?account_id=",
            accounts.len(),
            accounts.join(", ")
        ),
    )
}

/// `GET /v1/commands/{command_id}`, with `?account_id=` to name the account when more
/// than one used the id (an idempotency key is per account).
pub(crate) async fn command(
    State(state): State<QueryState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let id = CommandId::parse(&id)?;
    let account = match &params {
        Ok(Query(p)) => p
            .get("account_id")
            .map(|a| AccountId::parse(a))
            .transpose()?,
        Err(_) => None,
    };
    let (count, ask) = state.read_ask(&headers, &params).await?;
    let path = format!("/v1/commands/{id}");
    if let Some(account) = account {
        let partition = partition_of(&account, count);
        let query = vec![("account_id", account.to_string())];
        return state
            .answer_for(partition, ask, &path, query, async |s: &QueryState| {
                let c = s
                    .store
                    .command(&s.topic, &account, &id)
                    .map_err(store_error)?
                    .ok_or_else(|| command_not_found(s, &id, &[partition]))?;
                Ok(Json(command_view(c, &id)).into_response())
            })
            .await;
    }
    // By id alone: the command may be in any partition, so every server is asked.
    let mut ask = ask;
    if let Some(pos) = ask.token.take() {
        state.wait_for_token(pos, &ask).await?;
    }
    // With a token, a partition nobody serves is waited for within the budget.
    loop {
        match command_everywhere(&state, &params, &ask, &id, count, &path).await {
            Err(e) if e.code == ErrorCode::PartitionMoving && state.look_again(&ask).await => {}
            other => return other.map_err(|e| counted(&state, e)),
        }
    }
}

/// One search for a command by id alone, in every partition: here, and on each instance
/// that serves some of the others. A partition nobody serves now, where the command may
/// be, makes it an uncounted `partition_moving` (rather than a 404).
async fn command_everywhere(
    state: &QueryState,
    params: &Params,
    ask: &Ask,
    id: &CommandId,
    count: i32,
    path: &str,
) -> Result<Response, ApiError> {
    let served = state.group.serving();
    // Asked by another instance: only in the partitions it routed here
    // (`?partitions=`), each of which this instance must still serve; a 404 then means
    // "in none of them", never "in one this instance no longer has".
    let wanted = match (&params, ask.forwarded) {
        (Ok(Query(p)), true) => p.get("partitions").map(|list| {
            list.split(',')
                .filter_map(|p| p.trim().parse::<i32>().ok())
                .collect::<Vec<i32>>()
        }),
        _ => None,
    };
    let searched = match wanted {
        Some(wanted) => {
            if let Some(&gone) = wanted.iter().find(|p| !served.contains(p)) {
                return Err(moving_error(gone, "this instance no longer serves it"));
            }
            wanted
        }
        None => served.clone(),
    };
    let mut found: Vec<CommandView> = state
        .store
        .commands_in(&state.topic, &searched, id)
        .map_err(store_error)?
        .into_iter()
        .map(|c| command_view(c, id))
        .collect();
    if ask.forwarded {
        return match found.len() {
            0 => Err(command_not_found(state, id, &searched)),
            1 => Ok(Json(found.pop().expect("one")).into_response()),
            _ => {
                let accounts: Vec<String> =
                    found.iter().map(|c| c.account_id.to_string()).collect();
                Err(ambiguous(id, &accounts))
            }
        };
    }
    let mut peers: BTreeMap<String, (String, Vec<i32>)> = BTreeMap::new();
    let mut unserved = Vec::new();
    for p in (0..count).filter(|p| !served.contains(p)) {
        match state.group.route(p, false, false) {
            Route::Peer { id, url } => peers.entry(id).or_insert((url, Vec::new())).1.push(p),
            Route::Local | Route::Moving => unserved.push(p),
        }
    }
    let answers = join_all(peers.iter().map(|(peer, (url, parts))| {
        let (state, ask, path) = (&state, &ask, &path);
        let list: Vec<String> = parts.iter().map(i32::to_string).collect();
        let query = [("partitions", list.join(","))];
        async move {
            state
                .call_peer(peer, url, &PeerCall::query(path, &query, ask))
                .await
        }
    }))
    .await;
    let mut more_accounts = Vec::new();
    for ((peer, (_, parts)), answer) in peers.iter().zip(answers) {
        let Ok(answer) = answer else {
            unserved.extend(parts);
            continue;
        };
        match answer.status {
            StatusCode::OK => match answer.json::<CommandView>() {
                Some(view) => found.push(view),
                None => unserved.extend(parts),
            },
            StatusCode::CONFLICT => more_accounts.push(format!("several on instance {peer}")),
            StatusCode::NOT_FOUND | StatusCode::GONE => {}
            _ => unserved.extend(parts),
        }
    }
    // A partition being handed over is served by two instances at once: the same
    // command, found twice.
    found.sort_by(|a, b| a.account_id.cmp(&b.account_id));
    found.dedup_by(|a, b| a.account_id == b.account_id);
    if found.len() + 2 * more_accounts.len() > 1 {
        let mut accounts: Vec<String> = found.iter().map(|c| c.account_id.to_string()).collect();
        accounts.extend(more_accounts);
        return Err(ambiguous(id, &accounts));
    }
    if let Some(view) = found.pop() {
        return Ok(Json(view).into_response());
    }
    if let Some(&p) = unserved.first() {
        unserved.sort_unstable();
        return Err(moving_error(
            p,
            &format!(
                "the command may be in partitions {unserved:?}, which no instance can serve yet"
            ),
        ));
    }
    Err(command_not_found(state, id, &searched))
}

/// `GET /v1/cluster`: the group as this instance sees it.
pub(crate) async fn cluster(State(state): State<QueryState>) -> Json<ClusterView> {
    Json(state.group.cluster())
}

/// `GET /readyz`: 200 once this instance can answer queries (see [`Group::ready`]).
pub(crate) async fn readyz(State(state): State<QueryState>) -> Response {
    match state.group.ready() {
        Ok(()) => {
            Json(Readiness::ready(&*state.topic, Some(state.group.serving()))).into_response()
        }
        Err(why) => ApiError::new(ErrorCode::NotReady, why).into_response(),
    }
}

/// Names this instance on every answer that another instance did not already name
/// (a forwarded one keeps its server's name).
pub(crate) async fn served_by(State(id): State<HeaderValue>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if !resp.headers().contains_key(SERVED_BY_HEADER) {
        resp.headers_mut()
            .insert(HeaderName::from_static(SERVED_BY_HEADER), id);
    }
    resp
}
