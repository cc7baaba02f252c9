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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use ledger_api::cluster::{FORWARDED_BY_HEADER, SERVED_BY_HEADER};
use ledger_api::{
    AccountView, ClusterView, CommandView, ConsistencyParams, ErrorBody, ErrorCode, LogPosition,
    PartitionProgress, PartitionRole, PartitionTotals, Progress, Readiness, TotalsView,
    TransferView,
};
use ledger_domain::partitioning::partition_of;
use ledger_domain::{AccountId, CommandId};
use ledger_eventlog::probe::SharedMetadata;
use ledger_eventlog::Position;
use ledger_http::ApiError;
use ledger_store::{Store, StoredCommand};
use tokio::sync::watch;

use crate::group::{Group, Peer, Route};
use crate::sink::Applied;

const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded query may take beyond its own token wait: short enough that a
/// query with the longest wait (30 s) still ends within the service's 35 s bound on any
/// request, when a peer stops answering.
const FORWARD_SLACK: Duration = Duration::from_secs(2);
/// How often a query with a token looks again for a partition that nobody serves yet.
const RETRY_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub(crate) struct QueryState {
    pub store: Store,
    pub topic: Arc<str>,
    pub applied: watch::Receiver<Applied>,
    pub metadata: Arc<SharedMetadata>,
    pub group: Arc<Group>,
    /// An operator's pause, which the consumer obeys.
    pub pause: ledger_eventlog::consume::PauseControl,
    pub rebuilder: Arc<crate::rebuild::Rebuilder>,
    /// Writes operators' decisions for parked accounts to the log.
    pub producer: ledger_eventlog::producer::EventProducer,
    pub http: reqwest::Client,
}

/// The query string, read leniently: the last of repeated parameters wins and unknown
/// ones are ignored; [`consistency_params`] makes [`ConsistencyParams`] of it.
pub(crate) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `?after=&timeout_ms=`. `timeout_ms` matters only with `after`, so it is read (and can
/// be refused) only then.
fn consistency_params(params: &Params) -> Result<ConsistencyParams, ApiError> {
    let Query(params) = params.as_ref().map_err(|e| {
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

/// A query as received: whether another instance forwarded it, the credentials to pass
/// on, and the token to wait for, with its deadline.
pub(crate) struct Ask {
    pub(crate) forwarded: bool,
    auth: Option<HeaderValue>,
    token: Option<Position>,
    /// Whether it came with a token: it then waits through a partition's move, within
    /// its deadline, even once a token of another partition is settled.
    waits: bool,
    deadline: Instant,
}

impl Ask {
    /// Reads the query; a token naming a partition the topic (of `count` partitions,
    /// once known) does not have is refused.
    pub(crate) fn read(
        headers: &HeaderMap,
        params: &Params,
        count: Option<i32>,
    ) -> Result<Self, ApiError> {
        let consistency = consistency_params(params)?;
        let token = consistency
            .after
            .as_deref()
            .map(Position::from_token)
            .transpose()
            .map_err(|e| ApiError::new(ErrorCode::InvalidToken, e.to_string()))?;
        if let (Some(t), Some(count)) = (token, count) {
            if t.partition >= count {
                return Err(ApiError::new(
                    ErrorCode::InvalidToken,
                    format!(
                        "the token names partition {} but the topic has {count}: use a token returned by POST /v1/commands",
                        t.partition
                    ),
                ));
            }
        }
        Ok(Ask {
            forwarded: headers.contains_key(FORWARDED_BY_HEADER),
            auth: headers.get(header::AUTHORIZATION).cloned(),
            token,
            waits: token.is_some(),
            deadline: Instant::now() + Duration::from_millis(consistency.wait_ms()),
        })
    }

    /// The same query with the deadline it was received with.
    fn until(mut self, deadline: Instant) -> Self {
        self.deadline = deadline;
        self
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The token's query parameters, to pass on.
    fn token_query(&self) -> Vec<(&'static str, String)> {
        match self.token {
            Some(t) => vec![
                ("after", t.token()),
                ("timeout_ms", self.remaining().as_millis().to_string()),
            ],
            None => Vec::new(),
        }
    }
}

/// The answer `partition_moving`, counted in `projector_partition_moving`.
pub(crate) fn moving(state: &QueryState, partition: i32, why: &str) -> ApiError {
    counted(state, moving_error(partition, why))
}

/// `partition_moving`, not counted yet: a query that looks again counts only the answer
/// it ends with.
fn moving_error(partition: i32, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::PartitionMoving,
        format!(
            "partition {partition} is moving between projector instances and {why}; retry shortly"
        ),
    )
}

/// The error a query ends with, counted when it is `partition_moving`.
fn counted(state: &QueryState, e: ApiError) -> ApiError {
    if e.code == ErrorCode::PartitionMoving {
        state.group.metrics().partition_moving.inc();
    }
    e
}

fn not_ready() -> ApiError {
    ApiError::new(
        ErrorCode::NotReady,
        "the projector has not found its topic yet",
    )
}

pub(crate) fn store_error(e: ledger_store::StoreError) -> ApiError {
    ApiError::internal(format!("store read failed: {e}"))
}

impl QueryState {
    pub(crate) fn partition_count(&self) -> Result<i32, ApiError> {
        self.group.partition_count().ok_or_else(not_ready)
    }

    /// Reads a query about one account's partition: the topic's partition count and the
    /// query. One with a token, on an instance that has not found its topic yet (it has
    /// just started), waits for it within its budget instead of answering `not_ready`.
    async fn read_ask(&self, headers: &HeaderMap, params: &Params) -> Result<(i32, Ask), ApiError> {
        let ask = Ask::read(headers, params, self.group.partition_count())?;
        let count = loop {
            if let Some(count) = self.group.partition_count() {
                break count;
            }
            if !self.look_again(&ask).await {
                return Err(not_ready());
            }
        };
        // Checked again now that the count is known.
        Ok((
            count,
            Ask::read(headers, params, Some(count))?.until(ask.deadline),
        ))
    }

    /// Waits until this instance has applied `pos`, or fails with 503: `not_yet_consistent`
    /// when the budget ends, or an uncounted `partition_moving` as soon as the partition
    /// is no longer held here (it moved on while the query waited; another instance may
    /// serve it now).
    async fn wait_here(&self, pos: Position, ask: &Ask) -> Result<(), ApiError> {
        let mut rx = self.applied.clone();
        let reached = |m: &Applied| m.get(&pos.partition).is_some_and(|&next| next > pos.offset);
        loop {
            let slice = ask.remaining().min(RETRY_EVERY);
            match tokio::time::timeout(slice, rx.wait_for(reached)).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::NotYetConsistent,
                        "the projector is shutting down",
                    ))
                }
                Err(_) if ask.remaining().is_zero() => break,
                Err(_) if self.group.role(pos.partition).is_none() => {
                    return Err(moving_error(
                        pos.partition,
                        "this instance no longer holds it",
                    ));
                }
                Err(_) => {}
            }
        }
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

    /// Waits until the instance that serves the token's partition has applied it. While
    /// nobody serves that partition (it is moving), it looks again within the budget.
    async fn wait_for_token(&self, pos: Position, ask: &Ask) -> Result<(), ApiError> {
        loop {
            let last = match self.group.route(pos.partition, true, ask.forwarded) {
                Route::Local => match self.wait_here(pos, ask).await {
                    Err(e) if e.code == ErrorCode::PartitionMoving => e,
                    done => return done,
                },
                Route::Peer { id, url } => {
                    let query = [
                        ("after", pos.token()),
                        ("timeout_ms", ask.remaining().as_millis().to_string()),
                    ];
                    match self.ask_peer(&id, &url, "/v1/progress", &query, ask).await {
                        Err(e) => moving_error(pos.partition, &e),
                        Ok(answer) if answer.status.is_success() => return Ok(()),
                        Ok(answer) if answer.code() == Some(ErrorCode::PartitionMoving) => {
                            answer.error()
                        }
                        Ok(answer) => return Err(answer.error()),
                    }
                }
                Route::Moving => moving_error(
                    pos.partition,
                    "no instance can serve it yet, so the token cannot be checked",
                ),
            };
            if !self.look_again(ask).await {
                return Err(counted(self, last));
            }
        }
    }

    /// Whether a query with a token that found its partition unserved looks again: it
    /// waits through a move, within its budget, after a short pause. A query without a
    /// token answers at once, and a forwarded one leaves the waiting to the instance
    /// that forwarded it.
    async fn look_again(&self, ask: &Ask) -> bool {
        if !ask.waits || ask.forwarded || ask.remaining().is_zero() {
            return false;
        }
        tokio::time::sleep(ask.remaining().min(RETRY_EVERY)).await;
        true
    }

    /// Waits for a token of another partition than `partition` (where that one is
    /// served) and drops it; a token of `partition` itself is kept, for whoever answers.
    async fn settle_foreign_token(&self, mut ask: Ask, partition: i32) -> Result<Ask, ApiError> {
        if let Some(pos) = ask.token.filter(|t| t.partition != partition) {
            self.wait_for_token(pos, &ask).await?;
            ask.token = None;
        }
        Ok(ask)
    }

    /// A request to another instance, marked forwarded, with the caller's credentials.
    pub(crate) fn to_peer(
        &self,
        method: reqwest::Method,
        url: &str,
        path: &str,
        query: &[(&str, String)],
        auth: Option<&HeaderValue>,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{}", url.trim_end_matches('/'), path))
            .query(query)
            .header(FORWARDED_BY_HEADER, self.group.id.as_str())
            .timeout(timeout);
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        req
    }

    /// Sends a query to another instance, marked forwarded.
    pub(crate) async fn ask_peer(
        &self,
        peer: &str,
        url: &str,
        path: &str,
        query: &[(&str, String)],
        ask: &Ask,
    ) -> Result<PeerAnswer, String> {
        let req = self.to_peer(
            reqwest::Method::GET,
            url,
            path,
            query,
            ask.auth.as_ref(),
            ask.remaining() + FORWARD_SLACK,
        );
        let outcome = req.send().await;
        let label = if outcome.is_ok() { "ok" } else { "unreachable" };
        self.group
            .metrics()
            .forwarded
            .get_or_create(&vec![("outcome", label.to_string())])
            .inc();
        let answer =
            outcome.map_err(|e| format!("its server {peer} at {url} did not answer ({e})"))?;
        PeerAnswer::read(answer).await
    }

    /// Asks every live peer `path` (forwarded, so that each answers for itself only) at
    /// once, and decodes each answer; `None` for a peer that gave no usable one. For the
    /// queries about every partition (`/v1/progress`, `/v1/totals`).
    pub(crate) async fn ask_live_peers<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        ask: &Ask,
    ) -> Vec<(Peer, Option<T>)> {
        let peers = self.group.live_peers();
        let answers = join_all(peers.iter().map(|peer| async move {
            let answer = self
                .ask_peer(&peer.entry.instance_id, &peer.entry.url, path, &[], ask)
                .await
                .ok()?;
            answer.json::<T>()
        }))
        .await;
        peers.into_iter().zip(answers).collect()
    }

    /// Answers a query about one partition: here (`local`), or forwarded once to the
    /// instance that serves it. Without a token, a forwarded answer of
    /// `partition_moving` (the partition moved on meanwhile) is retried once where the
    /// group now says it is. With a token, the query waits within its budget through a
    /// move: for the partition to be served somewhere, then for the token to be applied
    /// there; `partition_moving` only when the budget ends while nobody serves it.
    async fn answer_for(
        &self,
        partition: i32,
        ask: Ask,
        path: &str,
        mut query: Vec<(&'static str, String)>,
        local: impl AsyncFnOnce(&Self) -> Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        let ask = self.settle_foreign_token(ask, partition).await?;
        let mut tried = None;
        let mut tries = 0;
        loop {
            tries += 1;
            // Without a token: one more try only where a peer answered that it had let
            // the partition go (the route may already say where it went).
            let mut moved_on = false;
            let last = match self
                .group
                .route(partition, ask.token.is_some(), ask.forwarded)
            {
                Route::Local => {
                    let waited = match ask.token {
                        Some(pos) => self.wait_here(pos, &ask).await,
                        None => Ok(()),
                    };
                    match waited {
                        Err(e) if e.code == ErrorCode::PartitionMoving => e,
                        Err(e) => return Err(e),
                        Ok(()) => {
                            let role = self.group.role(partition);
                            let reached_token = ask.token.is_some() && role.is_some();
                            if role.is_some_and(PartitionRole::serves) || reached_token {
                                return local(self).await;
                            }
                            moving_error(partition, "this instance no longer serves it")
                        }
                    }
                }
                Route::Peer { id, url } => {
                    if !ask.waits && tried.as_ref() == Some(&id) {
                        moving_error(partition, "no instance can serve it yet")
                    } else {
                        query.extend(ask.token_query());
                        let answer = self.ask_peer(&id, &url, path, &query, &ask).await;
                        query.retain(|(k, _)| *k != "after" && *k != "timeout_ms");
                        tried = Some(id);
                        match answer {
                            Err(e) => moving_error(partition, &e),
                            Ok(a) if a.code() == Some(ErrorCode::PartitionMoving) => {
                                moved_on = true;
                                a.error()
                            }
                            Ok(a) => return Ok(a.relay()),
                        }
                    }
                }
                Route::Moving => moving_error(partition, "no instance can serve it yet"),
            };
            let again = if ask.waits {
                self.look_again(&ask).await
            } else {
                moved_on && tries < 2
            };
            if !again {
                return Err(counted(self, last));
            }
        }
    }
}

/// Another instance's answer, read in full.
pub(crate) struct PeerAnswer {
    pub(crate) status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: axum::body::Bytes,
}

impl PeerAnswer {
    pub(crate) async fn read(answer: reqwest::Response) -> Result<Self, String> {
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        // The headers that matter to a client.
        let headers = [
            header::CONTENT_TYPE,
            header::RETRY_AFTER,
            HeaderName::from_static(SERVED_BY_HEADER),
        ]
        .into_iter()
        .filter_map(|name| {
            let value = answer.headers().get(name.as_str())?;
            Some((name, HeaderValue::from_bytes(value.as_bytes()).ok()?))
        })
        .collect();
        let body = answer
            .bytes()
            .await
            .map_err(|e| format!("its answer broke off ({e})"))?;
        Ok(PeerAnswer {
            status,
            headers,
            body,
        })
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// Its error code, when it is an error.
    fn code(&self) -> Option<ErrorCode> {
        self.json::<ErrorBody>().map(|b| b.error.code)
    }

    /// As this instance's error.
    pub(crate) fn error(&self) -> ApiError {
        match self.json::<ErrorBody>() {
            Some(body) => ApiError::new(body.error.code, body.error.message),
            None => ApiError::internal(format!(
                "another instance answered {} without an error body",
                self.status
            )),
        }
    }

    /// Passed on as it came.
    pub(crate) fn relay(self) -> Response {
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = self.status;
        for (name, value) in self.headers {
            resp.headers_mut().insert(name, value);
        }
        resp
    }
}

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

fn command_not_found(id: &CommandId) -> ApiError {
    ApiError::new(
        ErrorCode::CommandNotFound,
        format!("command {id} has not been applied (yet)"),
    )
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
                    .ok_or_else(|| command_not_found(&id))?;
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
            0 => Err(command_not_found(id)),
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
        async move { state.ask_peer(peer, url, path, &query, ask).await }
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
            StatusCode::NOT_FOUND => {}
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
    Err(command_not_found(id))
}

/// The partitions this instance holds, as progress rows (high watermarks filled in
/// later).
fn local_rows(state: &QueryState) -> Vec<PartitionProgress> {
    state
        .group
        .held()
        .into_iter()
        .map(|(p, role)| PartitionProgress {
            partition: p,
            applied_offset: state.group.applied(p),
            high_watermark: None,
            lag: None,
            assigned: role != PartitionRole::Draining,
            owner: Some(state.group.id.clone()),
            role: Some(role),
            paused: role == PartitionRole::Owner && state.pause.is_paused(p),
        })
        .collect()
}

/// Which of two instances' rows for one partition speaks for it: the owner's, then a
/// draining one's, then a warming one's; the further applied among equals.
fn rank(row: &PartitionProgress) -> (u8, i64) {
    rank_of(row.role, row.applied_offset)
}

fn rank_of(role: Option<PartitionRole>, applied_offset: i64) -> (u8, i64) {
    let role = match role {
        Some(PartitionRole::Owner) => 3,
        Some(PartitionRole::Draining) => 2,
        Some(PartitionRole::Warming) => 1,
        None => 0,
    };
    (role, applied_offset)
}

/// `GET /v1/progress`: every partition of the topic, with the instance that serves it,
/// its applied offset, the high watermark and the lag. Forwarded, only this instance's
/// partitions.
pub(crate) async fn progress(
    State(state): State<QueryState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Progress>, ApiError> {
    let mut ask = Ask::read(&headers, &params, state.group.partition_count())?;
    if let Some(pos) = ask.token.take() {
        state.wait_for_token(pos, &ask).await?;
    }
    let mut rows: BTreeMap<i32, PartitionProgress> = BTreeMap::new();
    let mut consider = |row: PartitionProgress| {
        let better = rows
            .get(&row.partition)
            .is_none_or(|have| rank(&row) > rank(have));
        if better {
            rows.insert(row.partition, row);
        }
    };
    // Partitions served now by an instance that answered (this one, or a peer).
    let mut served = std::collections::BTreeSet::new();
    let mut note_served = |row: &PartitionProgress| {
        if row.role.is_some_and(PartitionRole::serves) {
            served.insert(row.partition);
        }
    };
    for row in local_rows(&state) {
        note_served(&row);
        consider(row);
    }
    let count = state.group.partition_count();
    if !ask.forwarded {
        for (peer, answer) in state.ask_live_peers::<Progress>("/v1/progress", &ask).await {
            match answer {
                Some(p) => p.partitions.into_iter().for_each(|row| {
                    note_served(&row);
                    consider(row);
                }),
                // Unreachable: what its directory entry last said.
                None => {
                    for v in &peer.entry.partitions {
                        consider(PartitionProgress {
                            partition: v.partition,
                            applied_offset: v.applied_offset,
                            high_watermark: None,
                            lag: None,
                            assigned: v.role != PartitionRole::Draining,
                            owner: Some(peer.entry.instance_id.clone()),
                            role: Some(v.role),
                            paused: false,
                        });
                    }
                }
            }
        }
        // Partitions nobody holds: what this store has of them, with no owner.
        for p in 0..count.unwrap_or(0) {
            consider(PartitionProgress {
                partition: p,
                applied_offset: 0,
                high_watermark: None,
                lag: None,
                assigned: false,
                owner: None,
                role: None,
                paused: false,
            });
        }
    }
    let (client, topic) = (state.metadata.clone(), state.topic.to_string());
    let wanted: Vec<i32> = rows.keys().copied().collect();
    let broker = tokio::task::spawn_blocking(move || {
        let parts = client.topic_partitions(&topic, BROKER_TIMEOUT).ok()?;
        let parts: Vec<i32> = parts.into_iter().filter(|p| wanted.contains(p)).collect();
        client.high_watermarks(&topic, &parts, BROKER_TIMEOUT).ok()
    })
    .await
    .ok()
    .flatten();
    for (p, hw) in broker.iter().flatten() {
        if let Some(row) = rows.get_mut(p) {
            row.high_watermark = Some(*hw);
            row.lag = Some((hw - row.applied_offset).max(0));
        }
    }
    let total_lag = broker
        .is_some()
        .then(|| rows.values().map(|r| r.lag.unwrap_or(0)).sum());
    let complete = if ask.forwarded {
        rows.values()
            .all(|r| r.role.is_some_and(PartitionRole::serves))
    } else {
        (0..count.unwrap_or(0)).all(|p| served.contains(&p)) && count.is_some()
    };
    Ok(Json(Progress {
        topic: state.topic.to_string(),
        broker_reachable: broker.is_some(),
        total_lag,
        complete,
        partitions: rows.into_values().collect(),
    }))
}

/// `GET /v1/totals`: the money in the ledger, each partition's figures from the instance
/// that speaks for it (as for `/v1/progress`), summed. Forwarded, only this instance's
/// partitions.
pub(crate) async fn totals(
    State(state): State<QueryState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<TotalsView>, ApiError> {
    let mut ask = Ask::read(&headers, &params, state.group.partition_count())?;
    if let Some(pos) = ask.token.take() {
        state.wait_for_token(pos, &ask).await?;
    }
    let mut rows: BTreeMap<i32, PartitionTotals> = BTreeMap::new();
    let mut consider = |row: PartitionTotals| {
        let better = rows.get(&row.partition).is_none_or(|have| {
            rank_of(Some(row.role), row.applied_offset)
                > rank_of(Some(have.role), have.applied_offset)
        });
        if better {
            rows.insert(row.partition, row);
        }
    };
    for (p, role) in state.group.held() {
        // The applied offset first: the figures read after it include at least that.
        let applied_offset = state.group.applied(p);
        let t = state.store.totals(&state.topic, p).map_err(store_error)?;
        consider(PartitionTotals {
            partition: p,
            applied_offset,
            served_by: state.group.id.clone(),
            role,
            balance_sum: t.balance_sum,
            deposits_sum: t.deposits,
            withdrawals_sum: t.withdrawals,
            transfers_debited_sum: t.debited,
            transfers_credited_sum: t.credited,
            transfers_refunded_sum: t.refunded,
        });
    }
    if !ask.forwarded {
        for (_, view) in state.ask_live_peers::<TotalsView>("/v1/totals", &ask).await {
            view.into_iter()
                .flat_map(|v| v.as_of)
                .for_each(&mut consider);
        }
    }
    let count = state.group.partition_count().unwrap_or(0);
    Ok(Json(TotalsView::sum(rows.into_values().collect(), count)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Result<ConsistencyParams, ApiError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        consistency_params(&Ok(Query(map)))
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

    fn row(role: Option<PartitionRole>, applied: i64) -> PartitionProgress {
        PartitionProgress {
            partition: 0,
            applied_offset: applied,
            high_watermark: None,
            lag: None,
            assigned: true,
            owner: None,
            role,
            paused: false,
        }
    }

    #[test]
    fn the_owner_speaks_for_a_partition_then_the_drainer_then_the_warmer() {
        let owner = row(Some(PartitionRole::Owner), 5);
        let draining = row(Some(PartitionRole::Draining), 9);
        let warming = row(Some(PartitionRole::Warming), 10);
        let nobody = row(None, 11);
        assert!(rank(&owner) > rank(&draining));
        assert!(rank(&draining) > rank(&warming));
        assert!(rank(&warming) > rank(&nobody));
        assert!(rank(&row(Some(PartitionRole::Owner), 6)) > rank(&owner));
    }
}
