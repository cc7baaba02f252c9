//! The OpenAPI 3.1 documents of the two services, one each, generated from the types of
//! this crate.
//!
//! Each service serves its own at `/openapi.json` (the operations it answers, and no
//! other), and the repository commits them as `docs/openapi/ingest.json` and
//! `docs/openapi/projector.json`; a test fails when the code and a committed one disagree. The operations below are
//! declarations only: their bodies are never called, and the handlers that serve them
//! return the same types, so the document cannot describe a body the code does not send.

#![allow(dead_code)]

use ledger_domain::ids::{MAX_ACCOUNT_ID_LEN, MAX_COMMAND_ID_LEN};
use ledger_domain::{token_pattern, ACCOUNT_ID_PATTERN, COMMAND_ID_PATTERN};
use serde_json::{json, Value};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::admin::{
    ParkedAccount, ParkedView, PartitionParam, PauseView, RebuildPartition, RebuildPhase,
    RebuildView, UnparkAccepted,
};
use crate::cluster::{ClusterView, InstanceView, PartitionRole, PartitionRoleView};
use crate::command::{Accepted, BatchItem, BatchResults, CommandRequest, MAX_BATCH_ITEMS};
use crate::error::{ErrorBody, ErrorCode, ErrorDetail};
use crate::ops::{Health, Readiness};
use crate::query::{
    AccountView, CommandOutcome, CommandView, ConsistencyParams, LogPosition, PartitionProgress,
    PartitionTotals, Progress, TotalsView, TransferView,
};

/// The document of `command-ingest`: the commands in, and the operations routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger command-ingest",
        description = "Listen-to-yourself ledger, the ingest: each command becomes one event in \
                       Kafka, answered 202 once the broker has acknowledged it (acks=all, \
                       idempotent producer). Queries are the projector's: see its own document.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(submit_command, submit_batch),
    components(schemas(CommandRequest, Accepted, BatchResults, BatchItem)),
    tags((name = "ingest", description = "command-ingest: commands in, one event each"))
)]
struct IngestDoc;

/// The document of `projector`: queries, the group's view, the admin routes, and the
/// operations routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger projector",
        description = "Listen-to-yourself ledger, the projector: the events applied to its \
                       store and the query API over them, eventually consistent, with \
                       consistency tokens to read your own writes. Commands go to the ingest: \
                       see its own document.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        get_account,
        get_command,
        get_progress,
        get_totals,
        get_cluster,
        admin_pause,
        admin_resume,
        admin_rebuild_start,
        admin_rebuild_status,
        admin_parked,
        admin_parked_retry,
        admin_parked_skip
    ),
    components(schemas(
        AccountView,
        CommandView,
        CommandOutcome,
        TransferView,
        LogPosition,
        Progress,
        PartitionProgress,
        TotalsView,
        PartitionTotals,
        ClusterView,
        InstanceView,
        PartitionRoleView,
        PartitionRole,
        PauseView,
        RebuildView,
        RebuildPhase,
        RebuildPartition,
        ParkedView,
        ParkedAccount,
        UnparkAccepted
    )),
    tags(
        (name = "projector", description = "the query API over the projected state"),
        (name = "admin", description = "pause and resume, the verified rebuild, parked accounts"),
    )
)]
struct ProjectorDoc;

/// What both documents hold: the operations routes, the error body, and the bearer
/// scheme the `/v1` routes name; merged into each service's own.
#[derive(OpenApi)]
#[openapi(
    paths(healthz, readyz, metrics, openapi_json),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, Health, Readiness)),
    modifiers(&BearerAuth),
    tags((name = "operations", description = "health, readiness, metrics, this document"))
)]
struct OperationsDoc;

/// A service, for its own document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// `command-ingest`.
    Ingest,
    /// `projector`.
    Projector,
}

impl Service {
    /// Both, for tests and tools.
    pub const ALL: [Service; 2] = [Service::Ingest, Service::Projector];

    /// Where the repository commits its document, under `docs/openapi/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Service::Ingest => "ingest.json",
            Service::Projector => "projector.json",
        }
    }

    /// The service's document as pretty JSON with a trailing newline, as committed.
    pub fn document(self) -> String {
        self.render(None)
    }

    /// The document a service serves: the committed one, and once the projector knows
    /// its topic's `partitions`, bounded to them (a token's partition, `?partition=`):
    /// a partition the topic does not have is refused, and the document says so.
    pub fn served(self, partitions: Option<i32>) -> std::borrow::Cow<'static, str> {
        static INGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        static PROJECTOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match partitions {
            // Rendered for each request: it is asked for rarely, and tests run
            // projectors of different topics in one process.
            Some(n) if self == Service::Projector => self.render(Some(n)).into(),
            _ => {
                let cell = match self {
                    Service::Ingest => &INGEST,
                    Service::Projector => &PROJECTOR,
                };
                cell.get_or_init(|| self.document()).as_str().into()
            }
        }
    }

    fn render(self, partitions: Option<i32>) -> String {
        let doc = match self {
            Service::Ingest => IngestDoc::openapi(),
            Service::Projector => ProjectorDoc::openapi(),
        }
        .merge_from(OperationsDoc::openapi());
        let mut doc = serde_json::to_value(doc)
            .expect("the document is built from plain structs and always serialises");
        constrain(&mut doc, partitions);
        let mut json = serde_json::to_string_pretty(&doc).expect("a JSON value always serialises");
        json.push('\n');
        json
    }
}

/// Writes into the document what the handlers enforce and the derive cannot say, from
/// the same constants the handlers check against: the pattern of every id and token
/// parameter and the range of every number, `additionalProperties: false` on each
/// command (the ingest refuses an unknown field), a batch's items as any JSON (each is
/// checked on its own, so a wrong one is refused in its own result), and `Retry-After`
/// on every 503. With the topic's `partitions` known, partitions are bounded to them.
fn constrain(doc: &mut Value, partitions: Option<i32>) {
    let id = |pattern: &str, longest: usize| json!({"type": "string", "pattern": pattern, "minLength": 1, "maxLength": longest});
    let parameter = |name: &str| match name {
        "account_id" => Some(id(ACCOUNT_ID_PATTERN, MAX_ACCOUNT_ID_LEN)),
        "command_id" => Some(id(COMMAND_ID_PATTERN, MAX_COMMAND_ID_LEN)),
        "after" => Some(json!({"type": "string", "pattern": token_pattern(partitions)})),
        "timeout_ms" => Some(json!({"type": "integer", "minimum": 0,
            "maximum": ConsistencyParams::MAX_WAIT_MS})),
        "partition" => Some(json!({"type": "integer", "format": "int32", "minimum": 0,
            "maximum": partitions.map_or(i32::MAX, |n| n - 1)})),
        _ => None,
    };
    let retry_after = json!({"Retry-After": {
        "description": "Seconds to wait before retrying; sent with `overloaded`, \
            `not_yet_consistent`, `partition_moving` and `not_ready`",
        "schema": {"type": "integer", "minimum": 0}}});
    let error = |description: &str| {
        json!({"description": description, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    for (path, item) in doc["paths"].as_object_mut().into_iter().flatten() {
        let api = path.starts_with("/v1/");
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|m| m.values_mut())
        {
            // `get_mut`: indexing a missing key would insert a null.
            let params = op.get_mut("parameters").and_then(Value::as_array_mut);
            for param in params.into_iter().flatten() {
                if let Some(schema) = param["name"].as_str().and_then(parameter) {
                    param["schema"] = schema;
                }
            }
            let responses = op["responses"]
                .as_object_mut()
                .expect("every operation declares its responses");
            // Every /v1 request is bounded in time, and any can meet a fault of the service.
            if api {
                responses.entry("500").or_insert_with(|| {
                    error("`internal`: a fault of the service, never of the request")
                });
                let unavailable = responses.entry("503").or_insert_with(|| error("`timeout`"));
                if let Some(d) = unavailable["description"].as_str() {
                    if !d.contains("`timeout`") {
                        unavailable["description"] = json!(format!(
                            "{d}; `timeout` when the request outlasts the service's bound"
                        ));
                    }
                }
            }
            if let Some(unavailable) = responses.get_mut("503") {
                unavailable["headers"] = retry_after.clone();
            }
        }
    }
    // The ingest's document only: the projector takes no commands.
    let variants = doc
        .pointer_mut("/components/schemas/CommandRequest/oneOf")
        .and_then(Value::as_array_mut);
    for variant in variants.into_iter().flatten() {
        variant["additionalProperties"] = Value::Bool(false);
        for (name, property) in variant["properties"]
            .as_object_mut()
            .expect("every command has properties")
        {
            match name.as_str() {
                "account_id" | "from_account" | "to_account" => {
                    property["pattern"] = json!(ACCOUNT_ID_PATTERN);
                }
                "command_id" => property["pattern"] = json!(COMMAND_ID_PATTERN),
                _ => {}
            }
        }
    }
    if let Some(batch) = doc.pointer_mut(
        "/paths/~1v1~1commands~1batch/post/requestBody/content/application~1json/schema",
    ) {
        *batch = json!({"type": "array", "maxItems": MAX_BATCH_ITEMS, "items": {
            "description": "A command (`CommandRequest`). Each item is checked on its own: one \
                that is not a command is refused in its own result, and the others are written."}});
    }
}

/// `--auth-token`: the `/v1` routes of both services want a bearer token when set.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .as_mut()
            .expect("the document declares schemas, so it has components");
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "Only when the service runs with --auth-token (env LEDGER_AUTH_TOKEN).",
                    ))
                    .build(),
            ),
        );
    }
}

/// Submit one command.
///
/// Validates it, writes one event keyed by the account id, and answers only once the
/// broker has acknowledged it (acks=all, idempotent producer). Any error writes
/// nothing, except `log_unavailable`, after which the command may or may not be in the
/// log: retrying with the same `command_id` is always safe.
#[utoipa::path(
    post,
    path = "/v1/commands",
    tag = "ingest",
    request_body(content = CommandRequest, description = "At most 64 KiB of JSON"),
    responses(
        (status = 202, description = "In the log", body = Accepted),
        (status = 400, description = "`invalid_json`, `unknown_command`, `missing_field`, `unknown_field`, `invalid_amount`, `invalid_account_id`, `invalid_command_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 410, description = "`command_expired`: the `command_id` is a version-7 UUID made more than the idempotency window ago; nothing was written", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`log_unavailable`, or `overloaded` with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn submit_command() {}

/// Submit up to 10000 commands.
///
/// Answers 202 with one item per command, in input order. Valid items are written even
/// when others are invalid; the batch as a whole is refused only when it cannot be
/// read, is too large, or the ingest is overloaded (then nothing is written).
#[utoipa::path(
    post,
    path = "/v1/commands/batch",
    tag = "ingest",
    request_body(content = Vec<CommandRequest>, description = "A JSON array, at most 10000 items and 8 MiB"),
    responses(
        (status = 202, description = "One result per item", body = BatchResults),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 503, description = "`overloaded` with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn submit_batch() {}

/// An account as projected.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account_id}",
    tag = "projector",
    params(("account_id" = String, Path, description = "The account's id"), ConsistencyParams),
    responses(
        (status = 200, description = "The account", body = AccountView),
        (status = 400, description = "`invalid_account_id`, `invalid_token`, `invalid_timeout`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`account_not_found`", body = ErrorBody),
        (status = 503, description = "`not_yet_consistent` or `partition_moving`, with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn get_account() {}

/// A command's outcome.
#[utoipa::path(
    get,
    path = "/v1/commands/{command_id}",
    tag = "projector",
    params(
        ("command_id" = String, Path, description = "The command's id"),
        ("account_id" = Option<String>, Query, description = "The account that used it. A command id is an idempotency key per account; needed only when more than one account used the id"),
        ConsistencyParams
    ),
    responses(
        (status = 200, description = "The outcome", body = CommandView),
        (status = 400, description = "`invalid_command_id`, `invalid_account_id`, `invalid_token`, `invalid_timeout`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`command_not_found` until the command is applied, and after its outcome was pruned (older than the idempotency window) when its id does not tell its age", body = ErrorBody),
        (status = 409, description = "`ambiguous_command_id`: several accounts used this id; name one with `?account_id=`", body = ErrorBody),
        (status = 410, description = "`command_expired`: the id is a version-7 UUID made more than the idempotency window before the latest events applied; its outcome, if it had one, was pruned", body = ErrorBody),
        (status = 503, description = "`not_yet_consistent` or `partition_moving`, with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn get_command() {}

/// How far the projector has applied the log, per partition.
#[utoipa::path(
    get,
    path = "/v1/progress",
    tag = "projector",
    params(ConsistencyParams),
    responses(
        (status = 200, description = "Applied offsets, high watermarks and lag", body = Progress),
        (status = 400, description = "`invalid_token`, `invalid_timeout`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`not_yet_consistent` or `partition_moving`, with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn get_progress() {}

/// The money in the ledger, summed over every partition of the group: balances,
/// transfers in flight, deposits and withdrawals, and whether they add up.
#[utoipa::path(
    get,
    path = "/v1/totals",
    tag = "projector",
    params(ConsistencyParams),
    responses(
        (status = 200, description = "The group's money figures, per partition and summed", body = TotalsView),
        (status = 400, description = "`invalid_token`, `invalid_timeout`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`not_yet_consistent` or `partition_moving`, with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn get_totals() {}

/// The projector group as this instance sees it: every live instance, its address, and
/// its role and applied offset per partition.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "projector",
    responses(
        (status = 200, description = "The live instances of the group", body = ClusterView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn get_cluster() {}

/// Stops applying one partition (`?partition=N`) or all of them, on every instance that
/// owns them; queries keep being served and lag grows, visibly in `/v1/progress`.
///
/// The batch in hand is finished first. A pause lasts until resumed, until the instance
/// restarts, or until the group rebalances.
#[utoipa::path(
    post,
    path = "/v1/admin/pause",
    tag = "admin",
    params(PartitionParam),
    responses(
        (status = 200, description = "What is paused now", body = PauseView),
        (status = 400, description = "`invalid_partition`: not an integer from 0 to the topic's partitions less one", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`partition_moving`: no instance owns the partition now", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_pause() {}

/// Applies again what `pause` stopped: one partition, or all of them.
#[utoipa::path(
    post,
    path = "/v1/admin/resume",
    tag = "admin",
    params(PartitionParam),
    responses(
        (status = 200, description = "What is still paused", body = PauseView),
        (status = 400, description = "`invalid_partition`: not an integer from 0 to the topic's partitions less one", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 503, description = "`partition_moving`: no instance owns the partition now", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_resume() {}

/// Starts a verified rebuild of this instance's partitions: a fresh store replays the
/// log from offset 0 beside the live one, which keeps applying and serving; once it has
/// caught up, the live store pauses at a batch boundary, the fresh one reaches the same
/// offsets, and the two are swapped only if every partition's state digest agrees. The
/// rebuild never writes to the log.
#[utoipa::path(
    post,
    path = "/v1/admin/rebuild",
    tag = "admin",
    responses(
        (status = 202, description = "Started", body = RebuildView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 409, description = "`rebuild_running`, or `partitions_paused`: resume them first", body = ErrorBody),
        (status = 503, description = "`not_ready`: this instance owns no partition yet", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_rebuild_start() {}

/// The last rebuild on this instance: its phase, per partition the offsets and digests.
#[utoipa::path(
    get,
    path = "/v1/admin/rebuild",
    tag = "admin",
    responses(
        (status = 200, description = "The last rebuild", body = RebuildView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`not_found`: no rebuild since this instance started", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_rebuild_status() {}

/// Accounts parked across the group: each waits behind an event this version cannot
/// apply, while every other account flows on.
#[utoipa::path(
    get,
    path = "/v1/admin/parked",
    tag = "admin",
    responses(
        (status = 200, description = "Parked accounts", body = ParkedView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_parked() {}

/// Applies a parked account's waiting events again, in order (after an upgrade that
/// knows them). The decision is written to the log, keyed by the account, so every
/// instance and every rebuild applies it at the same place.
#[utoipa::path(
    post,
    path = "/v1/admin/parked/{account_id}/retry",
    tag = "admin",
    params(("account_id" = String, Path, description = "The parked account")),
    responses(
        (status = 202, description = "The decision is in the log", body = UnparkAccepted),
        (status = 400, description = "`invalid_account_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`account_not_parked`", body = ErrorBody),
        (status = 503, description = "`log_unavailable`, or `partition_moving` with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_parked_retry() {}

/// Sends a parked account's first waiting event to the dead-letter topic, with its
/// reason, and applies the events behind it. Written to the log like `retry`.
#[utoipa::path(
    post,
    path = "/v1/admin/parked/{account_id}/skip",
    tag = "admin",
    params(("account_id" = String, Path, description = "The parked account")),
    responses(
        (status = 202, description = "The decision is in the log", body = UnparkAccepted),
        (status = 400, description = "`invalid_account_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 404, description = "`account_not_parked`", body = ErrorBody),
        (status = 503, description = "`log_unavailable`, or `partition_moving` with `Retry-After`", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
fn admin_parked_skip() {}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
fn healthz() {}

/// Whether the service can do its work: the ingest once the topic is reachable and its
/// producer delivers, the projector once it has read the group's directory and serves a
/// partition (or its group serves them all).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "`not_ready` with `Retry-After`", body = ErrorBody),
    ))]
fn readyz() {}

/// Prometheus metrics, in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
fn openapi_json() {}
