//! Queries to the other instances of the group: forwarding a query about one partition,
//! once, to the instance that serves it ([`QueryState::answer_for`]), gathering every
//! live instance's answer for the group-wide routes ([`QueryState::gather`]), and
//! another instance's answer as read back.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use futures::future::join_all;
use ledger_api::cluster::{FORWARDED_BY_HEADER, SERVED_BY_HEADER};
use ledger_api::{ErrorBody, ErrorCode, PartitionRole};
use ledger_eventlog::Position;
use ledger_http::ApiError;

use crate::consistency::Ask;
use crate::group::{Peer, Route};
use crate::state::{counted, moving_error, QueryState};

/// How long a forwarded query may take beyond its own token wait: short enough that a
/// query with the longest wait (30 s) still ends within the service's 35 s bound on any
/// request, when a peer stops answering.
const FORWARD_SLACK: Duration = Duration::from_secs(2);

impl Ask {
    /// How long the instance this query is forwarded to may take to answer it.
    pub(crate) fn peer_timeout(&self) -> Duration {
        self.remaining() + FORWARD_SLACK
    }
}

/// A request to another instance of the group: marked forwarded (so that it answers for
/// itself alone, and never forwards again), with the caller's credentials.
pub(crate) struct PeerCall<'a> {
    pub method: reqwest::Method,
    pub path: &'a str,
    pub query: &'a [(&'a str, String)],
    pub auth: Option<&'a HeaderValue>,
    pub timeout: Duration,
}

impl<'a> PeerCall<'a> {
    /// A query, with the credentials and the time left of `ask`.
    pub(crate) fn query(path: &'a str, query: &'a [(&'a str, String)], ask: &'a Ask) -> Self {
        PeerCall {
            method: reqwest::Method::GET,
            path,
            query,
            auth: ask.auth.as_ref(),
            timeout: ask.peer_timeout(),
        }
    }
}

impl QueryState {
    /// Waits until the instance that serves the token's partition has applied it. While
    /// nobody serves that partition (it is moving), it looks again within the budget.
    pub(crate) async fn wait_for_token(&self, pos: Position, ask: &Ask) -> Result<(), ApiError> {
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
                    let call = PeerCall::query("/v1/progress", &query, ask);
                    match self.call_peer(&id, &url, &call).await {
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

    /// Waits for a token of another partition than `partition` (where that one is
    /// served) and drops it; a token of `partition` itself is kept, for whoever answers.
    pub(crate) async fn settle_foreign_token(
        &self,
        mut ask: Ask,
        partition: i32,
    ) -> Result<Ask, ApiError> {
        if let Some(pos) = ask.token.filter(|t| t.partition != partition) {
            self.wait_for_token(pos, &ask).await?;
            ask.token = None;
        }
        Ok(ask)
    }

    /// Sends `call` to the instance `peer` at `url` and reads its answer in full;
    /// counted in `projector_forwarded_queries` by outcome.
    pub(crate) async fn call_peer(
        &self,
        peer: &str,
        url: &str,
        call: &PeerCall<'_>,
    ) -> Result<PeerAnswer, String> {
        let mut req = self
            .http
            .request(
                call.method.clone(),
                format!("{}{}", url.trim_end_matches('/'), call.path),
            )
            .query(call.query)
            .header(FORWARDED_BY_HEADER, self.group.id.as_str())
            .timeout(call.timeout);
        if let Some(auth) = call.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
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

    /// Sends `call` to every live instance at once and decodes each answer; `None` for
    /// one that gave no usable answer. Every group-wide route gathers its peers' parts
    /// through this.
    pub(crate) async fn gather<T: serde::de::DeserializeOwned>(
        &self,
        call: PeerCall<'_>,
    ) -> Vec<(Peer, Option<T>)> {
        let peers = self.group.live_peers();
        let call = &call;
        let answers = join_all(peers.iter().map(|peer| async move {
            let answer = self
                .call_peer(&peer.entry.instance_id, &peer.entry.url, call)
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
    pub(crate) async fn answer_for(
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
                        let answer = self
                            .call_peer(&id, &url, &PeerCall::query(path, &query, &ask))
                            .await;
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
    pub(crate) fn code(&self) -> Option<ErrorCode> {
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
