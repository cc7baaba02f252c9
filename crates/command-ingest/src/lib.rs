//! `command-ingest`: the HTTP service that turns each command into exactly one event in
//! Kafka and answers `202` only once the broker has acknowledged it.
//!
//! There is no database on the request path: the log is the only write. The projector
//! listens to the same topic and decides each command's outcome.

mod config;
mod handlers;
mod metrics;
mod readiness;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{middleware, Router};
use ledger_eventlog::admin::AdminError;
use ledger_eventlog::probe::MetadataProbe;
use ledger_eventlog::producer::{EventProducer, ProducerBuildError, ProducerSettings, Supervision};
use ledger_http::auth::{require_bearer, BearerAuth};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Why the ingest could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The producer configuration is invalid.
    #[error(transparent)]
    Producer(#[from] ProducerBuildError),
    /// The metadata client for readiness could not be built.
    #[error("readiness probe: {0}")]
    Probe(#[from] AdminError),
    /// The listen address could not be bound, or serving failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Shared by every request.
#[derive(Clone)]
pub(crate) struct AppState {
    pub producer: EventProducer,
    pub topic: Arc<str>,
    /// True while the brokers answer for the topic (the readiness probe's verdict).
    pub reachable: Arc<AtomicBool>,
    pub permits: Arc<Semaphore>,
    pub max_in_flight: usize,
    pub metrics: metrics::IngestMetrics,
    /// Commands with version-7 UUID ids older than this are refused.
    pub window: Option<ledger_domain::IdempotencyWindow>,
}

/// Binds `config.listen` and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngestError> {
    let listener = TcpListener::bind(config.listen).await?;
    serve(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind `127.0.0.1:0`) until `shutdown` is
/// cancelled; then stops accepting, waits (bounded) for deliveries in flight and flushes
/// the producer.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let kafka = config.kafka();
    let producer = EventProducer::new(
        &kafka,
        ProducerSettings {
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            linger_ms: config.linger_ms,
            client_id: "command-ingest".into(),
        },
    )?;
    let mut registry = Registry::default();
    let metrics = metrics::IngestMetrics::new(&mut registry);
    let state = AppState {
        producer: producer.clone(),
        topic: config.kafka.topic.clone().into(),
        reachable: Arc::new(AtomicBool::new(false)),
        permits: Arc::new(Semaphore::new(config.max_in_flight as usize)),
        max_in_flight: config.max_in_flight as usize,
        metrics: metrics.clone(),
        window: config.idempotency.window(),
    };

    let tracker = TaskTracker::new();
    let probe = MetadataProbe::new(&kafka, metrics.probe_rebuilds.clone())?;
    tracker.spawn(readiness::watch(
        kafka,
        probe,
        config.topic_spec(),
        state.reachable.clone(),
        producer.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Heal, don't stall: a producer that stops delivering while the brokers answer is
    // replaced, never the process.
    let supervision = Supervision {
        reachable: state.reachable.clone(),
        restarts: metrics.producer_restarts.clone(),
    };
    tracker.spawn(producer.clone().supervise(supervision, shutdown.clone()));

    let auth = BearerAuth(config.service.auth_token.clone().map(Into::into));
    let v1 = Router::new()
        .route(
            "/v1/commands",
            post(handlers::submit_one)
                .layer(DefaultBodyLimit::max(ledger_http::body::MAX_COMMAND_BODY)),
        )
        .route(
            "/v1/commands/batch",
            post(handlers::submit_batch).layer(DefaultBodyLimit::max(handlers::MAX_BATCH_BODY)),
        )
        .route_layer(middleware::from_fn_with_state(auth, require_bearer))
        .with_state(state.clone());
    let request_timeout =
        Duration::from_millis(config.delivery_timeout_ms) + Duration::from_secs(10);
    let app = ledger_http::ops::service_router(
        ledger_api::openapi::Service::Ingest,
        v1,
        get(handlers::readyz).with_state(state.clone()),
        || None,
        registry,
        request_timeout,
    );

    let addr = listener.local_addr()?;
    info!(%addr, topic = %config.kafka.topic, "command-ingest listening");
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let served = ledger_http::serve::serve(listener, app, shutdown.clone(), grace).await;

    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    let in_flight = producer.in_flight();
    let flushed = tokio::task::spawn_blocking(move || producer.flush(grace))
        .await
        .expect("flushing the producer does not panic");
    match flushed {
        Ok(()) => info!(in_flight, "producer flushed; command-ingest stopped"),
        Err(e) => warn!(in_flight, error = %e, "producer flush incomplete at shutdown"),
    }
    served?;
    Ok(())
}
