//! `projector`: listens to the ledger's own topic and turns it into state in sled that
//! is never ahead of, never behind and never double of what the log says, and serves
//! queries over it.
//!
//! The consumer loop ([`ledger_eventlog::consume`]) runs on a blocking thread and hands
//! batches to [`sink::ProjectorSink`], which applies each one in a single sled
//! transaction with the partition offsets and flushes before the offsets go to Kafka.
//! Queries can wait for a consistency token, woken by applies.
//!
//! Instances of one group share the partitions (see `group`): each publishes what it
//! holds to the group's directory (`directory`), hands partitions over warm, and
//! answers any query, forwarding it once to the instance that serves it (`http`).

mod admin;
mod config;
mod consistency;
mod directory;
mod forward;
mod group;
mod http;
mod metrics;
mod overview;
mod rebuild;
mod sink;
mod state;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{middleware, Router};
use backon::{BlockingRetryable, ConstantBuilder, Retryable};
use ledger_eventlog::admin::{ensure_topic, AdminError, TopicSpec};
use ledger_eventlog::consume::{self, ConsumeError, ConsumerSettings, PauseControl};
use ledger_eventlog::follow::Follower;
use ledger_eventlog::probe::{watch_reachability, MetadataProbe, SharedMetadata};
use ledger_eventlog::producer::{EventProducer, ProducerBuildError, ProducerSettings, Supervision};
use ledger_http::auth::{require_bearer, BearerAuth};
use ledger_store::{Store, StoreError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use config::{Config, OnPoison};

/// Why the projector could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The data directory cannot be used.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// A Kafka client could not be built.
    #[error(transparent)]
    Producer(#[from] ProducerBuildError),
    /// A Kafka client could not be built.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The consumer stopped with an error (store failure, or poison under `halt`).
    #[error(transparent)]
    Consume(#[from] ConsumeError),
    /// The listen address could not be bound, or serving failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store, binds `config.listen` and runs until `shutdown` is cancelled or the
/// consumer stops with an error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ProjectorError> {
    let store = open_store(&config)?;
    let listener = TcpListener::bind(config.listen).await?;
    serve(config, store, listener, shutdown).await
}

/// Opens the configured store, with a clear error when the directory is unusable,
/// corrupt or in use.
pub fn open_store(config: &Config) -> Result<Store, ProjectorError> {
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        return Err(ProjectorError::Io(std::io::Error::new(
            e.kind(),
            format!(
                "cannot create the data directory {}: {e}",
                config.data_dir.display()
            ),
        )));
    }
    let store = Store::open(&config.data_dir, config.cache_mb << 20)?;
    Ok(match config.workers {
        Some(n) => store.with_workers(n as usize),
        None => store,
    })
}

/// Runs on an open store and a bound listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let kafka = config.kafka();
    if config.test_future_type {
        warn!("test hook --test-future-type: reading the codec's stand-in for a newer event type");
        ledger_eventlog::codec::enable_test_future_type();
    }
    // Events that wait behind a parked account's unreadable one are kept in the log's
    // own envelope.
    let store = store
        .with_codec(Arc::new(sink::LogCodec))
        .with_window(config.idempotency.window());
    store.check_window()?;
    let mut registry = Registry::default();
    let metrics = metrics::ProjectorMetrics::new(&mut registry);
    let stored = store.offsets(&config.kafka.topic)?;
    for (p, next) in &stored {
        metrics
            .applied_offset
            .get_or_create(&vec![("partition", p.to_string())])
            .set(*next);
    }
    info!(data_dir = %config.data_dir.display(), workers = store.workers(), offsets = ?stored, "store opened");
    // The shutdown tree. `shutdown` (the caller's: SIGTERM) cancels `leaving`: the
    // consumer stops, leaves the group and commits, and a follow-up write gives up after
    // one more attempt. Once the partitions this instance held are handed over (at most
    // --handoff-ms), `gone` is cancelled: the HTTP server, the directory, the probes,
    // the producers' supervisors, the read-only tails and a rebuild stop. An error of the
    // consumer or the server, or a fencing by a twin, cancels `gone` at once; `leaving`
    // is its child, so it stops too. The same two tokens go by these names everywhere
    // (`Stopping`, `FollowUpWriter`, `Rebuilder`).
    let gone = CancellationToken::new();
    let leaving = gone.child_token();
    let (applied_tx, applied_rx) = watch::channel(Arc::new(stored));
    let addr = listener.local_addr()?;
    let url = config.advertised(addr);
    if config.advertise_url.is_none() && config.listen.ip().is_unspecified() {
        warn!(%url, "listening on every address with no --advertise-url: other hosts cannot reach this instance at the URL it advertises; set --advertise-url when the group spans hosts");
    }
    let instance_id = instance_id(&config, &store)?;
    let group = Arc::new(group::Group::new(
        instance_id.clone(),
        config.group_id.clone(),
        url,
        config.kafka.topic.clone(),
        store.clone(),
        metrics.clone(),
        applied_rx.clone(),
        group::Stopping {
            leaving: leaving.clone(),
            gone: gone.clone(),
            hand_over: config.handoff_ms > 0,
        },
    ));
    {
        let (shutdown, leaving, gone) = (shutdown.clone(), leaving.clone(), gone.clone());
        let group = group.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {
                    leaving.cancel();
                    // The others learn at once that this one is leaving.
                    group.changed.notify_one();
                }
                () = gone.cancelled() => {}
            }
        });
    }
    info!(instance_id = %group.id, incarnation = %group.incarnation, url = %group.url, "joining the projector group");
    // Transfers' follow-ups go to the log through a producer of their own (acks=all,
    // idempotent), healed like the ingest's.
    let follow_up_producer = EventProducer::new(
        &kafka,
        ProducerSettings {
            delivery_timeout: Duration::from_secs(10),
            linger_ms: 1,
            client_id: "projector-follow-ups".into(),
        },
    )?;
    let dead_letters = EventProducer::new(
        &kafka,
        ProducerSettings {
            delivery_timeout: Duration::from_secs(10),
            linger_ms: 0,
            client_id: "projector-dlq".into(),
        },
    )?;
    let sink = Arc::new(sink::ProjectorSink {
        store: store.clone(),
        metrics: metrics.clone(),
        applied: applied_tx,
        group: group.clone(),
        follow_ups: sink::FollowUpWriter {
            producer: follow_up_producer.clone(),
            topic: config.kafka.topic.clone(),
            runtime: tokio::runtime::Handle::current(),
            leaving: leaving.clone(),
            crash_after: config.test_crash_after_follow_ups,
            batches: Default::default(),
            dead_letters: dead_letters.clone(),
            dlq_topic: config.dlq_topic(),
        },
    });
    // High watermarks (which end warming) and partition lists: a client rebuilt when it
    // keeps failing, since a wedged one would leave partitions warming for good.
    let metadata = Arc::new(SharedMetadata::new(&kafka, metrics.probe_rebuilds.clone())?);
    let tracker = TaskTracker::new();

    tracker.spawn(create_dlq_topic(
        kafka.clone(),
        TopicSpec {
            name: config.dlq_topic(),
            partitions: 1,
            replication_factor: config.replication_factor,
        },
        gone.clone(),
    ));
    // The dead-letter producer heals like the ingest's: replaced when it stops
    // delivering while the brokers answer for the dead-letter topic.
    let dlq_reachable = Arc::new(AtomicBool::new(false));
    tracker.spawn(watch_reachability(
        MetadataProbe::new(&kafka, metrics.probe_rebuilds.clone())?,
        config.dlq_topic(),
        dlq_reachable.clone(),
        gone.clone(),
    ));
    let supervision = Supervision {
        reachable: dlq_reachable,
        restarts: metrics.dlq_producer_restarts.clone(),
    };
    tracker.spawn(dead_letters.clone().supervise(supervision, gone.clone()));
    let topic_reachable = Arc::new(AtomicBool::new(false));
    tracker.spawn(watch_reachability(
        MetadataProbe::new(&kafka, metrics.probe_rebuilds.clone())?,
        config.kafka.topic.clone(),
        topic_reachable.clone(),
        gone.clone(),
    ));
    let follow_up_producer_for_admin = follow_up_producer.clone();
    tracker.spawn(follow_up_producer.supervise(
        Supervision {
            reachable: topic_reachable,
            restarts: metrics.follow_up_producer_restarts.clone(),
        },
        gone.clone(),
    ));
    tracker.spawn(watch_partitions(
        metadata.clone(),
        group.clone(),
        applied_rx.clone(),
        metrics.clone(),
        gone.clone(),
    ));
    tracker.spawn(group.clone().end_draining_every(gone.clone()));
    tracker.spawn(run_directory(
        kafka.clone(),
        group.clone(),
        config.replication_factor,
        metrics.clone(),
        gone.clone(),
    ));

    let mut settings = ConsumerSettings {
        topic: config.kafka.topic.clone(),
        dlq_topic: config.dlq_topic(),
        group_id: config.group_id.clone(),
        instance_id: Some(instance_id),
        batch_max_events: config.batch_max_events as usize,
        batch_max_wait: Duration::from_millis(config.batch_max_ms),
        on_poison: config.poison_policy(),
        // Known once the topic is found, below.
        partitions: None,
        pause: PauseControl::default(),
    };
    let rebuilder = Arc::new(rebuild::Rebuilder {
        kafka: kafka.clone(),
        store: store.clone(),
        pause: settings.pause.clone(),
        group: group.clone(),
        metrics: metrics.clone(),
        gone: gone.clone(),
        drop_first: config.test_rebuild_drop_first,
        last: Default::default(),
    });
    let pause = settings.pause.clone();
    let consumer = {
        let (gone, kafka, metrics) = (gone.clone(), kafka.clone(), metrics.consumer.clone());
        let (metadata, store, group) = (metadata.clone(), store.clone(), group.clone());
        let leaving = leaving.clone();
        tokio::task::spawn_blocking(move || {
            // librdkafka notices a topic created after subscribing only at its next
            // metadata refresh (minutes); wait for the ingest to create it instead.
            let Some(partitions) = wait_for_topic(&metadata, &settings.topic, &leaving) else {
                return Ok(());
            };
            // State is kept per partition: a topic that gained partitions has moved keys,
            // and going on would split accounts.
            if let Err(e) = store.check_partition_count(&settings.topic, partitions) {
                error!(error = %e, "refusing to consume");
                gone.cancel();
                return Err(ConsumeError::Sink(Box::new(e)));
            }
            settings.partitions = Some(partitions);
            // Partitions handed over are tailed read-only by this, until their new owner
            // serves them.
            let follower = Follower::start(&kafka, &settings, sink.clone(), gone.clone(), false)
                .inspect_err(|e| warn!(error = %e, "cannot start the read-only tail; partitions handed over stop being served at once"))
                .ok();
            group.found(group::Found {
                partition_count: partitions,
                settings: settings.clone(),
                follower,
            });
            let res = consume::run(
                &kafka,
                &settings,
                sink.clone(),
                &dead_letters,
                metrics.clone(),
                leaving,
            );
            if let Err(e) = &res {
                error!(error = %e, "consumer stopped");
            }
            res
        })
    };
    // Once the consumer is done: on an error (a panic included) everything stops at once;
    // on shutdown, the partitions this instance drains are served until their new owners
    // serve them (at most --handoff-ms), and then everything stops.
    let consumer = {
        let (gone, group) = (gone.clone(), group.clone());
        let handoff = Duration::from_millis(config.handoff_ms);
        tokio::spawn(async move {
            // A panic in the consumer thread (sled on a failing disk, say) must still end
            // the process with a clear error and a non-zero exit.
            let res = consumer
                .await
                .unwrap_or_else(|e| Err(ConsumeError::Panicked(panic_message(e))));
            if res.is_ok() && !gone.is_cancelled() && group.draining() > 0 {
                let partitions = group.draining();
                info!(partitions, handoff_ms = handoff.as_millis() as u64, "handing over: serving the partitions this instance held until their new owners do");
                // Done when every partition is served elsewhere, or when every other
                // instance is stopping too (the whole group goes down: nobody takes over).
                let handed_over = tokio::time::timeout(handoff, async {
                    while group.draining() > 0 && group.has_successors() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await;
                match handed_over {
                    Ok(()) if group.draining() > 0 => {
                        info!("every other instance is stopping too; nobody takes over")
                    }
                    Ok(()) => info!("every partition handed over"),
                    Err(_) => warn!(
                        still_draining = group.draining(),
                        "hand-over time is up; leaving the rest to their new owners"
                    ),
                }
            }
            gone.cancel();
            res
        })
    };

    let query = state::QueryState {
        store,
        topic: config.kafka.topic.clone().into(),
        applied: applied_rx,
        metadata,
        group: group.clone(),
        pause,
        rebuilder,
        producer: follow_up_producer_for_admin,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("a plain HTTP client always builds"),
    };
    let auth = BearerAuth(config.service.auth_token.clone().map(Into::into));
    let v1 = Router::new()
        .route("/v1/accounts/{id}", get(http::account))
        .route("/v1/commands/{command_id}", get(http::command))
        .route("/v1/progress", get(overview::progress))
        .route("/v1/totals", get(overview::totals))
        .route("/v1/cluster", get(http::cluster))
        .route("/v1/admin/pause", post(admin::pause))
        .route("/v1/admin/resume", post(admin::resume))
        .route(
            "/v1/admin/rebuild",
            post(admin::start_rebuild).get(admin::rebuild_status),
        )
        .route("/v1/admin/parked", get(admin::parked))
        .route(
            "/v1/admin/parked/{account_id}/{action}",
            post(admin::unpark),
        )
        .route_layer(middleware::from_fn_with_state(auth, require_bearer))
        .with_state(query.clone());
    // Token waits end by 30 s; anything longer is stuck.
    let served_by = axum::http::HeaderValue::from_str(&group.id)
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static("unnamed"));
    let counted = query.group.clone();
    let app = ledger_http::ops::service_router(
        ledger_api::openapi::Service::Projector,
        v1,
        get(http::readyz).with_state(query),
        move || counted.partition_count(),
        registry,
        Duration::from_secs(35),
    )
    .layer(middleware::from_fn_with_state(served_by, http::served_by));

    info!(%addr, topic = %config.kafka.topic, group = %config.group_id, "projector listening");
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let served = ledger_http::serve::serve(listener, app, gone.clone(), grace).await;
    gone.cancel();
    let consumed = consumer
        .await
        .unwrap_or_else(|e| Err(ConsumeError::Panicked(panic_message(e))));
    tracker.close();
    tracker.wait().await;
    consumed?;
    served?;
    info!("projector stopped");
    Ok(())
}

/// This instance's id in its group: `--instance-id`, or else the one kept in the data
/// directory, generated on its first start. It is the consumer's static membership id
/// (`group.instance.id`), so a restart on the same directory rejoins as the same member,
/// with no rebalance and no wait for the old member's session to expire.
fn instance_id(config: &Config, store: &Store) -> Result<String, ProjectorError> {
    if let Some(id) = &config.instance_id {
        info!(instance_id = %id, "instance id from --instance-id");
        return Ok(id.clone());
    }
    let fresh = format!(
        "projector-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let (id, new) = store.instance_id_or_insert(&fresh)?;
    if new {
        info!(instance_id = %id, data_dir = %config.data_dir.display(), "first start on this data directory: generated an instance id and stored it there");
    } else {
        info!(instance_id = %id, data_dir = %config.data_dir.display(), "instance id from the data directory");
    }
    Ok(id)
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => consume::panic_text(&*p),
        Err(e) => e.to_string(),
    }
}

/// Retries with a constant `pause` after each failure, for as long as the caller's
/// condition (`when`, or a `stop` around it) allows.
pub(crate) fn every(pause: Duration) -> ConstantBuilder {
    ConstantBuilder::new().with_delay(pause).without_max_times()
}

/// Blocks until the topic exists (its partition count) or `stop` is cancelled (`None`).
fn wait_for_topic(client: &SharedMetadata, topic: &str, stop: &CancellationToken) -> Option<i32> {
    if stop.is_cancelled() {
        return None;
    }
    let mut logged = false;
    let found = (|| client.topic_partitions(topic, Duration::from_secs(2)))
        .retry(every(Duration::from_millis(500)))
        .when(|_| !stop.is_cancelled())
        .notify(|e, _| {
            if !logged {
                warn!(topic, error = %e, "waiting for the topic (command-ingest creates it at start-up)");
                logged = true;
            }
        })
        .call();
    match found {
        Ok(parts) => {
            info!(topic, partitions = parts.len(), "topic found");
            Some(i32::try_from(parts.len()).expect("Kafka numbers partitions with an i32"))
        }
        Err(_) => None,
    }
}

/// Creates the dead-letter topic, retrying until the broker answers or `stop`.
async fn create_dlq_topic(
    kafka: ledger_eventlog::KafkaConfig,
    spec: TopicSpec,
    stop: CancellationToken,
) {
    let created = (|| ensure_topic(&kafka, &spec, Duration::from_secs(5)))
        .retry(every(Duration::from_secs(2)))
        .notify(|e, _| {
            warn!(topic = %spec.name, error = %e, "cannot create the dead-letter topic yet; retrying")
        });
    tokio::select! {
        () = stop.cancelled() => {}
        created = created => {
            if let Ok(status) = created {
                info!(topic = %spec.name, ?status, "dead-letter topic ready");
            }
        }
    }
}

/// Keeps the per-partition lag gauges current, and gives each warming partition its
/// target: the partition's end when it was assigned.
async fn watch_partitions(
    client: Arc<SharedMetadata>,
    group: Arc<group::Group>,
    applied: watch::Receiver<group::Applied>,
    metrics: metrics::ProjectorMetrics,
    stop: CancellationToken,
) {
    let topic = group.topic.clone();
    let mut last_lag = std::time::Instant::now() - Duration::from_secs(60);
    let mut last_missing_warning = std::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let lag_due = last_lag.elapsed() >= Duration::from_secs(2);
        let untargeted = group.untargeted();
        let parts: Vec<i32> = if lag_due {
            group.held().into_keys().collect()
        } else {
            untargeted.clone()
        };
        if parts.is_empty() {
            continue;
        }
        // Partition by partition: one that does not answer holds up no other.
        let (c, t) = (client.clone(), topic.clone());
        let Ok(hws) = tokio::task::spawn_blocking(move || {
            parts
                .iter()
                .filter_map(|&p| c.high_watermarks(&t, &[p], Duration::from_secs(2)).ok())
                .flatten()
                .collect::<Vec<(i32, i64)>>()
        })
        .await
        else {
            continue;
        };
        for &(p, hw) in &hws {
            if untargeted.contains(&p) {
                group.set_target(p, hw);
            }
        }
        // A warming partition is served only once its end is known: say so when the
        // brokers keep not telling (the client is rebuilt meanwhile).
        let missing: Vec<i32> = untargeted
            .iter()
            .copied()
            .filter(|p| !hws.iter().any(|(q, _)| q == p))
            .collect();
        if !missing.is_empty() && last_missing_warning.elapsed() >= Duration::from_secs(10) {
            last_missing_warning = std::time::Instant::now();
            warn!(partitions = ?missing, "cannot fetch the high watermark of warming partitions; they are not served until it is known");
        }
        group.set_high_watermarks(&hws);
        if lag_due {
            last_lag = std::time::Instant::now();
            let applied = applied.borrow().clone();
            for (p, hw) in hws {
                let next = applied.get(&p).copied().unwrap_or(0);
                metrics
                    .lag
                    .get_or_create(&vec![("partition", p.to_string())])
                    .set((hw - next).max(0));
            }
        }
    }
}

/// Creates the group's directory topic, then publishes this instance's entry and reads
/// everyone else's until `stop`.
async fn run_directory(
    kafka: ledger_eventlog::KafkaConfig,
    group: Arc<group::Group>,
    replication_factor: i32,
    metrics: metrics::ProjectorMetrics,
    stop: CancellationToken,
) {
    let topic = directory::topic_of(&group.topic);
    if !directory::create_topic(&kafka, &topic, replication_factor, &stop).await {
        return;
    }
    let reader = {
        let (group, kafka, topic, metrics, stop) = (
            group.clone(),
            kafka.clone(),
            topic.clone(),
            metrics.clone(),
            stop.clone(),
        );
        tokio::task::spawn_blocking(move || directory::read(group, kafka, topic, metrics, stop))
    };
    group.changed.notify_one();
    directory::publish(group, kafka, topic, metrics, stop).await;
    let _ = reader.await;
}
