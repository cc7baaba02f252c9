//! Consistency tokens on queries: `?after=TOKEN&timeout_ms=N` read into an [`Ask`], and
//! the waits it asks for: until this instance has applied the token, or until the
//! instance that serves the token's partition has; and, while that partition is moving
//! (nobody serves it), until somebody does, within the query's budget.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue};
use ledger_api::cluster::FORWARDED_BY_HEADER;
use ledger_api::{ConsistencyParams, ErrorCode};
use ledger_eventlog::Position;
use ledger_http::ApiError;

use crate::group::Applied;
use crate::state::{moving_error, not_ready, QueryState};

/// How often a query with a token looks again for a partition that nobody serves yet.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The query string, read leniently: the last of repeated parameters wins and unknown
/// ones are ignored; [`consistency_params`] makes [`ConsistencyParams`] of it.
pub(crate) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `?after=&timeout_ms=`. `timeout_ms` is waited only with `after`, but is refused when
/// outside 0 to 30000 either way: the document states the range for every query.
fn consistency_params(params: &Params) -> Result<ConsistencyParams, ApiError> {
    let Query(params) = params.as_ref().map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidToken,
            format!("the query string could not be read: {}", e.body_text()),
        )
    })?;
    let timeout_ms = params
        .get("timeout_ms")
        .map(|t| match t.parse::<u64>() {
            Ok(ms) if ms <= ConsistencyParams::MAX_WAIT_MS => Ok(ms),
            _ => Err(ApiError::new(
                ErrorCode::InvalidTimeout,
                format!(
                    "timeout_ms must be an integer of milliseconds from 0 to {}, got {t:?}",
                    ConsistencyParams::MAX_WAIT_MS
                ),
            )),
        })
        .transpose()?;
    let Some(after) = params.get("after") else {
        return Ok(ConsistencyParams::default());
    };
    Ok(ConsistencyParams {
        after: Some(after.clone()),
        timeout_ms,
    })
}

/// A query as received: whether another instance forwarded it, the credentials to pass
/// on, and the token to wait for, with its deadline.
pub(crate) struct Ask {
    pub(crate) forwarded: bool,
    pub(crate) auth: Option<HeaderValue>,
    pub(crate) token: Option<Position>,
    /// Whether it came with a token: it then waits through a partition's move, within
    /// its deadline, even once a token of another partition is settled.
    pub(crate) waits: bool,
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
        let ask = Ask {
            forwarded: headers.contains_key(FORWARDED_BY_HEADER),
            auth: headers.get(header::AUTHORIZATION).cloned(),
            token,
            waits: token.is_some(),
            deadline: Instant::now() + Duration::from_millis(consistency.wait_ms()),
        };
        if let Some(count) = count {
            ask.check_partition(count)?;
        }
        Ok(ask)
    }

    /// Refuses a token naming a partition the topic (of `count` partitions) does not
    /// have.
    fn check_partition(&self, count: i32) -> Result<(), ApiError> {
        match self.token {
            Some(t) if t.partition >= count => Err(ApiError::new(
                ErrorCode::InvalidToken,
                format!(
                    "the token names partition {} but the topic has {count}: use a token returned by POST /v1/commands",
                    t.partition
                ),
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The token's query parameters, to pass on.
    pub(crate) fn token_query(&self) -> Vec<(&'static str, String)> {
        match self.token {
            Some(t) => vec![
                ("after", t.token()),
                ("timeout_ms", self.remaining().as_millis().to_string()),
            ],
            None => Vec::new(),
        }
    }
}

impl QueryState {
    /// Reads a query about one account's partition: the topic's partition count and the
    /// query. One with a token, on an instance that has not found its topic yet (it has
    /// just started), waits for it within its budget instead of answering `not_ready`.
    pub(crate) async fn read_ask(
        &self,
        headers: &HeaderMap,
        params: &Params,
    ) -> Result<(i32, Ask), ApiError> {
        let ask = Ask::read(headers, params, self.group.partition_count())?;
        let count = loop {
            if let Some(count) = self.group.partition_count() {
                break count;
            }
            if !self.look_again(&ask).await {
                return Err(not_ready());
            }
        };
        // Checked now if the count was not known when the query was read.
        ask.check_partition(count)?;
        Ok((count, ask))
    }

    /// Waits until this instance has applied `pos`, or fails with 503: `not_yet_consistent`
    /// when the budget ends, or an uncounted `partition_moving` as soon as the partition
    /// is no longer held here (it moved on while the query waited; another instance may
    /// serve it now).
    pub(crate) async fn wait_here(&self, pos: Position, ask: &Ask) -> Result<(), ApiError> {
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

    /// Whether a query with a token that found its partition unserved looks again: it
    /// waits through a move, within its budget, after a short pause. A query without a
    /// token answers at once, and a forwarded one leaves the waiting to the instance
    /// that forwarded it.
    pub(crate) async fn look_again(&self, ask: &Ask) -> bool {
        if !ask.waits || ask.forwarded || ask.remaining().is_zero() {
            return false;
        }
        tokio::time::sleep(ask.remaining().min(RETRY_EVERY)).await;
        true
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
        consistency_params(&Ok(Query(map)))
    }

    #[test]
    fn timeout_ms_is_refused_outside_its_range_and_waited_only_with_after() {
        for bad in ["abc", "30001", "-1", "9223372036854775808", ""] {
            for with_after in [false, true] {
                let mut q = vec![("timeout_ms", bad), ("x", "y")];
                if with_after {
                    q.push(("after", "v1.0.1"));
                }
                let e = params(&q).unwrap_err();
                assert_eq!(e.code, ErrorCode::InvalidTimeout, "{bad:?} {with_after}");
            }
        }
        assert_eq!(
            params(&[("timeout_ms", "30000")]).unwrap(),
            ConsistencyParams::default(),
            "without a token nothing is waited"
        );
        let p = params(&[("after", "v1.0.1"), ("timeout_ms", "30000")]).unwrap();
        assert_eq!(p.wait_ms(), ConsistencyParams::MAX_WAIT_MS);
        let p = params(&[("after", "v1.0.1"), ("timeout_ms", "0")]).unwrap();
        assert_eq!(p.wait_ms(), 0);
        let p = params(&[("after", "v1.0.1")]).unwrap();
        assert_eq!(p.wait_ms(), ConsistencyParams::DEFAULT_WAIT_MS);
    }
}
