//! The group-wide routes: `GET /v1/progress` and `GET /v1/totals`, each partition's row
//! from the instance that speaks for it (its owner, else one draining it, else one
//! warming it up), gathered from every live instance.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use ledger_api::{PartitionProgress, PartitionRole, PartitionTotals, Progress, TotalsView};
use ledger_http::ApiError;

use crate::consistency::{Ask, Params};
use crate::forward::PeerCall;
use crate::state::{store_error, QueryState};

const BROKER_TIMEOUT: Duration = Duration::from_secs(2);
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
        let call = PeerCall::query("/v1/progress", &[], &ask);
        for (peer, answer) in state.gather::<Progress>(call).await {
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
        let call = PeerCall::query("/v1/totals", &[], &ask);
        for (_, view) in state.gather::<TotalsView>(call).await {
            view.into_iter()
                .flat_map(|v| v.as_of)
                .for_each(&mut consider);
        }
    }
    let count = state.group.partition_count().unwrap_or(0);
    Ok(Json(TotalsView::sum(rows.into_values().collect(), count)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
