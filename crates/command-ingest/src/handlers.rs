//! The HTTP handlers: validate, produce one event per valid command, answer once the
//! broker has acknowledged.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger_api::command::MAX_BATCH_ITEMS;
use ledger_api::{Accepted, BatchItem, BatchResults, ErrorCode, Readiness};
use ledger_domain::command::CommandKind;
use ledger_domain::{Command, Event};
use ledger_eventlog::fresh;
use ledger_eventlog::producer::ProduceError;
use ledger_eventlog::Position;
use ledger_http::body::{body_bytes, require_json, MAX_COMMAND_BODY};
use ledger_http::ApiError;
use serde_json::value::RawValue;
use tokio::sync::SemaphorePermit;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::AppState;

/// Largest batch body: room for 10 000 commands with long ids.
pub const MAX_BATCH_BODY: usize = 8 * 1024 * 1024;

/// `POST /v1/commands`.
pub(crate) async fn submit_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match submit_one_inner(&state, &headers, body).await {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => {
            state.metrics.reject(e.code);
            e.into_response()
        }
    }
}

async fn submit_one_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    require_json(headers)?;
    let body = body_bytes(body, MAX_COMMAND_BODY)?;
    let command = Command::from_json_slice(&body)?;
    within_window(state, &command, fresh::now_ms())?;
    let _permit = acquire(state, 1)?;
    produce(state, &command).await
}

/// `POST /v1/commands/batch`.
pub(crate) async fn submit_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match submit_batch_inner(&state, &headers, body).await {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => {
            state.metrics.reject(e.code);
            e.into_response()
        }
    }
}

async fn submit_batch_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<BatchResults, ApiError> {
    require_json(headers)?;
    let body = body_bytes(body, MAX_BATCH_BODY)?;
    // Items stay raw text until each is validated on its own, so that one bad item
    // gets its own precise error and the rest are not re-parsed through a Value tree.
    let items: Vec<&RawValue> = match serde_json::from_slice(&body) {
        Ok(items) => items,
        Err(e) => {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                    Ok(_) => ApiError::new(
                        ErrorCode::InvalidJson,
                        "a batch is a JSON array of commands",
                    ),
                    Err(_) => ApiError::new(
                        ErrorCode::InvalidJson,
                        format!("the body is not valid JSON: {e}"),
                    ),
                },
            )
        }
    };
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the batch has {} commands; at most {MAX_BATCH_ITEMS} are allowed",
                items.len()
            ),
        ));
    }
    let now = fresh::now_ms();
    let parsed: Vec<Result<Command, ApiError>> = items
        .iter()
        .map(|raw| {
            let command = Command::from_json_slice(raw.get().as_bytes())?;
            within_window(state, &command, now)?;
            Ok(command)
        })
        .collect();
    let valid = parsed.iter().filter(|r| r.is_ok()).count();
    if valid > state.max_in_flight {
        // It could never fit: say so instead of letting it past the bound.
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the batch has {valid} valid commands but this ingest admits at most {} in flight (--max-in-flight): split it",
                state.max_in_flight
            ),
        ));
    }
    // All or nothing for capacity, so that an overloaded batch writes nothing.
    let _permit = acquire(state, valid)?;
    // One event per valid item, all handed to the producer at once and waited for
    // together: one waiter for the batch, not a future and a timer per item.
    let mut events = Vec::with_capacity(valid);
    let mut kinds = Vec::with_capacity(valid);
    let mut slots: Vec<Result<(), ApiError>> = Vec::with_capacity(parsed.len());
    let time_ms = now;
    for item in parsed {
        slots.push(item.map(|cmd| {
            events.push(new_event(&cmd, time_ms));
            kinds.push(cmd.kind);
        }));
    }
    let started = Instant::now();
    let outcomes = {
        let _in_flight = InFlight::enter(&state.metrics.in_flight, events.len() as i64);
        state.producer.send_many(&state.topic, &events).await
    };
    let took = started.elapsed().as_secs_f64();
    let mut answers =
        events
            .into_iter()
            .zip(kinds)
            .zip(outcomes)
            .map(|((event, kind), outcome)| {
                state.metrics.produce_latency.observe(took);
                answer(state, &kind, event, outcome)
            });
    let results = slots
        .into_iter()
        .map(|slot| {
            let answered = slot.and_then(|()| {
                answers
                    .next()
                    .expect("the producer returns one outcome per event it was given")
            });
            match answered {
                Ok(v) => BatchItem::Accepted(v),
                Err(e) => {
                    state.metrics.reject(e.code);
                    BatchItem::Refused {
                        error: e.body().error,
                    }
                }
            }
        })
        .collect();
    Ok(BatchResults { results })
}

/// Refuses a command whose id is a version-7 UUID made more than the idempotency window
/// ago: the projector keeps outcomes for that window only, so if this is a late retry of
/// a command that was applied, it would apply a second time. Nothing is written.
fn within_window(state: &AppState, command: &Command, now_ms: i64) -> Result<(), ApiError> {
    let (Some(window), Some(id)) = (state.window, command.command_id.as_ref()) else {
        return Ok(());
    };
    match id.uuid_v7_time_ms() {
        Some(made) if window.expired(made, now_ms) => Err(ApiError::new(
            ErrorCode::CommandExpired,
            format!(
                "command id {id} is a version-7 UUID made more than the idempotency window ({window}) ago: a retry this late can no longer be told from a new command, so it was not written. Look its outcome up if you have it; send a new command with a new id"
            ),
        )),
        _ => Ok(()),
    }
}

/// Takes `n` in-flight slots, or refuses with 503 `overloaded` so memory stays bounded.
fn acquire(state: &AppState, n: usize) -> Result<Option<SemaphorePermit<'_>>, ApiError> {
    if n == 0 {
        return Ok(None);
    }
    let permits = u32::try_from(n)
        .expect("n is at most --max-in-flight, itself at most 1 000 000, so it fits u32");
    state
        .permits
        .try_acquire_many(permits)
        .map(Some)
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "more than {} commands are in flight; retry shortly",
                    state.max_in_flight
                ),
            )
        })
}

/// The event of one command, with fresh ids ([`ledger_eventlog::fresh::ids`]).
fn new_event(command: &Command, time_ms: i64) -> Event {
    let (event_id, command_id) = fresh::ids(command.command_id.as_ref());
    Event::from_command(command, command_id, event_id, time_ms)
}

/// Writes one command's event and waits for the acknowledgement.
async fn produce(state: &AppState, command: &Command) -> Result<Accepted, ApiError> {
    let event = new_event(command, fresh::now_ms());
    let started = Instant::now();
    let outcome = {
        // A guard, so that a client hanging up mid-request still brings the gauge down.
        let _in_flight = InFlight::enter(&state.metrics.in_flight, 1);
        state.producer.send(&state.topic, &event).await
    };
    state
        .metrics
        .produce_latency
        .observe(started.elapsed().as_secs_f64());
    answer(state, &command.kind, event, outcome)
}

/// The answer for one event: its 202 body once acknowledged, else 503.
fn answer(
    state: &AppState,
    kind: &CommandKind,
    event: Event,
    outcome: Result<Position, ProduceError>,
) -> Result<Accepted, ApiError> {
    match outcome {
        Ok(pos) => {
            state.metrics.accepted(kind).inc();
            debug!(command_id = %event.command_id, partition = pos.partition, offset = pos.offset, "accepted");
            Ok(Accepted {
                token: pos.token(),
                command_id: event.command_id,
                event_id: Uuid::from_u128(event.event_id),
                partition: pos.partition,
                offset: pos.offset,
            })
        }
        Err(e) => {
            warn!(command_id = %event.command_id, error = %e, "not acknowledged by the broker");
            Err(match e {
                ProduceError::QueueFull => ApiError::new(
                    ErrorCode::Overloaded,
                    "the producer queue is full; retry shortly",
                ),
                other => ApiError::new(
                    ErrorCode::LogUnavailable,
                    format!(
                        "the log did not acknowledge the command ({other}); it may or may not be recorded: \
                         retrying with the same command_id {} is safe",
                        event.command_id
                    ),
                ),
            })
        }
    }
}

/// Counts commands in the in-flight gauge for as long as it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge, i64);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge, n: i64) -> Self {
        gauge.inc_by(n);
        Self(gauge, n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec_by(self.1);
    }
}

/// `GET /readyz`: 200 while the topic is reachable and the producer delivers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if !state.reachable.load(Ordering::Acquire) {
        ApiError::new(
            ErrorCode::NotReady,
            format!("topic {} is not reachable", state.topic),
        )
        .into_response()
    } else if state.producer.is_stuck() {
        ApiError::new(
            ErrorCode::NotReady,
            format!(
                "the brokers answer but the producer has stopped delivering to {}; it is being replaced",
                state.topic
            ),
        )
        .into_response()
    } else {
        Json(Readiness::ready(&*state.topic, None)).into_response()
    }
}
