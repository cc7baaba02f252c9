//! The HTTP client of the ingest and the projector: JSON in and out, bearer
//! authentication, keep-alive connections, and retries of what is safe to retry.
//!
//! A `503` or a lost connection is retried with exponential backoff until a deadline.
//! That is safe for commands because every command carries a command id, the
//! idempotency key; the client notes when an attempt may have been written although no
//! answer came back ("ambiguous"), so that a verifier knows the command may be in the
//! log twice. A refused connection to a service this client has never reached is not
//! retried: the service is simply not there, and the user learns it at once.

mod error;
pub use error::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ledger_api::{
    Accepted, AccountView, BatchItem, BatchResults, CommandRequest, CommandView, ConsistencyParams,
    ErrorBody, ErrorCode, ErrorDetail, ParkedView, PauseView, Progress, RebuildView, TotalsView,
    UnparkAccepted,
};
use ledger_domain::{AccountId, CommandId, UnparkKind};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::debug;

/// First retry delay; doubles per attempt.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Time allowed to establish a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a request without a long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Which service a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// command-ingest.
    Ingest,
    /// The projector.
    Projector,
}

/// Whether a request may be sent again after an attempt that may have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Always: the request is idempotent (a read, a pause, a command with its id).
    Always,
    /// Only while no attempt can have reached the service and taken effect.
    UnlessMaybeApplied,
}

/// How long a request is retried, and whether it may be resent.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// Retries stop once this much time has passed since the first attempt.
    within: Duration,
    /// Whether an attempt that may have taken effect is resent.
    resend: Resend,
}

impl Retry {
    /// Retried, and resent, for `within`: the request is idempotent.
    fn idempotent(within: Duration) -> Self {
        Self {
            within,
            resend: Resend::Always,
        }
    }
}

/// A command accepted, with what it took.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The ingest's answer.
    pub accepted: Accepted,
    /// Requests made, 1 when the first succeeded.
    pub attempts: u32,
    /// Whether an earlier attempt may have been written although it was not answered
    /// (lost connection, time-out or `503 log_unavailable`): the log may then hold the
    /// command twice, the earlier copy deciding its outcome.
    pub ambiguous: bool,
}

/// Where the services are and how to talk to them.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of command-ingest.
    pub ingest: Url,
    /// Base URL of the projector.
    pub projector: Url,
    /// Bearer token, if the services require one.
    pub auth_token: Option<String>,
    /// How long to keep retrying one request.
    pub retry_for: Duration,
}

/// The client. Cheap to share behind an `Arc`; its connections are pooled and kept alive.
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    reached_ingest: AtomicBool,
    reached_projector: AtomicBool,
}

struct Response {
    body: bytes::Bytes,
    attempts: u32,
    ambiguous: bool,
}

impl Response {
    fn parse<T: DeserializeOwned>(&self, url: &Url, what: &str) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| protocol(url, format!("not {what}: {e}")))
    }
}

impl Client {
    /// Builds a client.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &config.auth_token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Setup("the auth token must be printable ASCII".into()))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("ledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(Self {
            http,
            config,
            reached_ingest: AtomicBool::new(false),
            reached_projector: AtomicBool::new(false),
        })
    }

    /// The configured retry window.
    pub fn retry_for(&self) -> Duration {
        self.config.retry_for
    }

    /// The base URL of a service.
    pub fn base_url(&self, service: Service) -> &Url {
        match service {
            Service::Ingest => &self.config.ingest,
            Service::Projector => &self.config.projector,
        }
    }

    /// `POST /v1/commands`: one command (a JSON object), retried until accepted or the
    /// deadline. The command should carry a `command_id` so that retries are idempotent.
    pub async fn submit(&self, command: &CommandRequest) -> Result<Submitted, ClientError> {
        let url = self.url(Service::Ingest, &["v1", "commands"], &[]);
        let r = self
            .call(
                Service::Ingest,
                Method::POST,
                url.clone(),
                Some(command),
                REQUEST_TIMEOUT,
                Retry::idempotent(self.config.retry_for),
            )
            .await?;
        Ok(Submitted {
            accepted: r.parse(&url, "an accepted command")?,
            attempts: r.attempts,
            ambiguous: r.ambiguous,
        })
    }

    /// `POST /v1/commands/batch`: the answers in input order. The whole request is
    /// retried on `503` or a lost connection; items that fail on their own are returned
    /// as [`ErrorDetail`]s for the caller to retry or report.
    pub async fn submit_batch(
        &self,
        commands: &[CommandRequest],
    ) -> Result<Vec<Result<Accepted, ErrorDetail>>, ClientError> {
        let url = self.url(Service::Ingest, &["v1", "commands", "batch"], &[]);
        let r = self
            .call(
                Service::Ingest,
                Method::POST,
                url.clone(),
                Some(commands),
                REQUEST_TIMEOUT,
                Retry::idempotent(self.config.retry_for),
            )
            .await?;
        let results: BatchResults = r.parse(&url, "a batch answer")?;
        if results.results.len() != commands.len() {
            return Err(protocol(
                &url,
                format!(
                    "{} results for {} commands",
                    results.results.len(),
                    commands.len()
                ),
            ));
        }
        Ok(results
            .results
            .into_iter()
            .map(BatchItem::into_result)
            .collect())
    }

    /// `GET /v1/accounts/{id}`, optionally `?after=TOKEN` (waiting for the projection,
    /// retried until the deadline).
    pub async fn account(
        &self,
        id: &AccountId,
        after: Option<&str>,
    ) -> Result<AccountView, ClientError> {
        self.query(
            &["v1", "accounts", id.as_str()],
            after,
            self.config.retry_for,
        )
        .await
    }

    /// `GET /v1/commands/{id}`, optionally `?after=TOKEN`.
    pub async fn command(
        &self,
        id: &CommandId,
        account: Option<&AccountId>,
        after: Option<&str>,
    ) -> Result<CommandView, ClientError> {
        self.query_with(
            &["v1", "commands", id.as_str()],
            account.map(|a| ("account_id", a.as_str().to_string())),
            after,
            self.config.retry_for,
        )
        .await
    }

    /// `GET /v1/commands/{id}` until the command's status is final: a transfer is
    /// pending until its credit or refund has come back through the log, which no token
    /// names, so it is read again (with backoff) until it settles or `deadline` passes.
    /// Returns the last answer, pending if the deadline passed first.
    pub async fn command_settled(
        &self,
        id: &CommandId,
        account: Option<&AccountId>,
        after: Option<&str>,
        deadline: Instant,
    ) -> Result<CommandView, ClientError> {
        let mut attempt = 0;
        loop {
            let v = self.command(id, account, after).await?;
            let now = Instant::now();
            if v.status.is_final() || now >= deadline {
                return Ok(v);
            }
            attempt += 1;
            tokio::time::sleep(backoff(attempt).min(deadline - now)).await;
        }
    }

    /// `GET /v1/totals`, optionally `?after=TOKEN`: the money of the whole group.
    pub async fn totals(&self, after: Option<&str>) -> Result<TotalsView, ClientError> {
        self.query(&["v1", "totals"], after, self.config.retry_for)
            .await
    }

    /// `GET /v1/progress?after=TOKEN`: returns once the projector has applied
    /// everything up to the token, retrying for up to `wait`.
    pub async fn wait_for_token(&self, token: &str, wait: Duration) -> Result<(), ClientError> {
        self.query::<Progress>(&["v1", "progress"], Some(token), wait)
            .await
            .map(|_| ())
    }

    /// `GET /readyz`, retried while the service answers 503 (not ready yet).
    pub async fn ready(&self, service: Service) -> Result<(), ClientError> {
        let url = self.url(service, &["readyz"], &[]);
        self.call(
            service,
            Method::GET,
            url,
            None::<&()>,
            REQUEST_TIMEOUT,
            Retry::idempotent(self.config.retry_for),
        )
        .await
        .map(|_| ())
    }

    /// `POST /v1/admin/pause`, or `/resume` when `pause` is false; one partition or all.
    /// Sent again freely: pausing what is paused changes nothing.
    pub async fn pause(
        &self,
        pause: bool,
        partition: Option<i32>,
    ) -> Result<PauseView, ClientError> {
        let verb = if pause { "pause" } else { "resume" };
        let query: Vec<(&str, String)> = partition
            .map(|p| ("partition", p.to_string()))
            .into_iter()
            .collect();
        self.admin(Method::POST, &["v1", "admin", verb], &query, Resend::Always)
            .await
    }

    /// `POST /v1/admin/rebuild`: starts a rebuild; `409 rebuild_running` when one runs.
    /// Not resent once it may have started one: the resend would answer 409.
    pub async fn start_rebuild(&self) -> Result<RebuildView, ClientError> {
        self.admin(
            Method::POST,
            &["v1", "admin", "rebuild"],
            &[],
            Resend::UnlessMaybeApplied,
        )
        .await
    }

    /// `GET /v1/admin/rebuild`: the last rebuild on the instance.
    pub async fn rebuild(&self) -> Result<RebuildView, ClientError> {
        self.admin(
            Method::GET,
            &["v1", "admin", "rebuild"],
            &[],
            Resend::Always,
        )
        .await
    }

    /// `GET /v1/admin/parked`: the parked accounts across the group.
    pub async fn parked(&self) -> Result<ParkedView, ClientError> {
        self.admin(Method::GET, &["v1", "admin", "parked"], &[], Resend::Always)
            .await
    }

    /// `POST /v1/admin/parked/{account}/retry|skip`. The decision is written to the log
    /// naming the first waiting event the server sees then; resent after the first was
    /// applied, it would name the next one and skip that too, so it is not resent once it
    /// may have been written.
    pub async fn unpark(
        &self,
        account: &AccountId,
        action: UnparkKind,
    ) -> Result<UnparkAccepted, ClientError> {
        self.admin(
            Method::POST,
            &["v1", "admin", "parked", account.as_str(), action.as_str()],
            &[],
            Resend::UnlessMaybeApplied,
        )
        .await
    }

    /// One of the projector's operations routes, with retries for `--retry-for`.
    async fn admin<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        query: &[(&str, String)],
        resend: Resend,
    ) -> Result<T, ClientError> {
        let url = self.url(Service::Projector, path, query);
        let r = self
            .call(
                Service::Projector,
                method,
                url.clone(),
                None::<&()>,
                REQUEST_TIMEOUT,
                Retry {
                    within: self.config.retry_for,
                    resend,
                },
            )
            .await?;
        r.parse(&url, "the expected answer")
    }

    /// `GET` of a JSON answer in one attempt bounded by `timeout`, for a live view: a
    /// service that does not answer is shown as such at the next refresh, instead of
    /// holding the view up with retries.
    pub async fn look<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &[&str],
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = self.url(service, path, &[]);
        self.look_once(service, &url, timeout)
            .await?
            .parse(&url, "the expected answer")
    }

    /// `GET /metrics` of a service (Prometheus text) in one attempt, as [`Client::look`].
    pub async fn metrics_text(
        &self,
        service: Service,
        timeout: Duration,
    ) -> Result<String, ClientError> {
        let url = self.url(service, &["metrics"], &[]);
        let r = self.look_once(service, &url, timeout).await?;
        String::from_utf8(r.body.to_vec())
            .map_err(|_| protocol(&url, "the metrics are not UTF-8 text".into()))
    }

    async fn look_once(
        &self,
        service: Service,
        url: &Url,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        // No retry window: the first failure is the answer.
        self.call(
            service,
            Method::GET,
            url.clone(),
            None::<&()>,
            timeout,
            Retry::idempotent(Duration::ZERO),
        )
        .await
    }

    async fn query<T: DeserializeOwned>(
        &self,
        path: &[&str],
        after: Option<&str>,
        wait: Duration,
    ) -> Result<T, ClientError> {
        self.query_with(path, None, after, wait).await
    }

    /// [`Client::query`] with one more query parameter.
    async fn query_with<T: DeserializeOwned>(
        &self,
        path: &[&str],
        param: Option<(&str, String)>,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<T, ClientError> {
        let (mut query, timeout) = match after {
            Some(token) => {
                let ms = (wait.as_millis() as u64).min(ConsistencyParams::MAX_WAIT_MS);
                (
                    vec![("after", token.to_string()), ("timeout_ms", ms.to_string())],
                    Duration::from_millis(ms) + REQUEST_TIMEOUT,
                )
            }
            None => (Vec::new(), REQUEST_TIMEOUT),
        };
        query.extend(param);
        let url = self.url(Service::Projector, path, &query);
        let r = self
            .call(
                Service::Projector,
                Method::GET,
                url.clone(),
                None::<&()>,
                timeout,
                Retry::idempotent(wait),
            )
            .await?;
        r.parse(&url, "the expected answer")
    }

    fn url(&self, service: Service, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base_url(service).clone();
        url.path_segments_mut()
            .expect("base URLs are http URLs, which have paths")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn reached(&self, service: Service) -> &AtomicBool {
        match service {
            Service::Ingest => &self.reached_ingest,
            Service::Projector => &self.reached_projector,
        }
    }

    /// One request with retries of `503` and transport failures until `retry.within` has
    /// passed.
    async fn call<B: Serialize + ?Sized>(
        &self,
        service: Service,
        method: Method,
        url: Url,
        body: Option<&B>,
        timeout: Duration,
        retry: Retry,
    ) -> Result<Response, ClientError> {
        let started = Instant::now();
        let deadline = started + retry.within;
        let mut attempts = 0u32;
        let mut ambiguous = false;
        loop {
            attempts += 1;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .timeout(timeout);
            if let Some(b) = body {
                request = request.json(b);
            }
            let mut retry_after = None;
            let failure = match request.send().await {
                Err(e) => {
                    // A connection that was never made cannot have delivered the request.
                    let never_sent = e.is_connect();
                    ambiguous |= !never_sent;
                    let reached_before = self.reached(service).load(Ordering::Relaxed);
                    let error = ClientError::Unreachable {
                        url: url.to_string(),
                        reason: transport_reason(&e),
                    };
                    if never_sent && !reached_before {
                        return Err(error);
                    }
                    error
                }
                Ok(resp) => {
                    self.reached(service).store(true, Ordering::Relaxed);
                    let status = resp.status();
                    retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    match resp.bytes().await {
                        Err(e) => {
                            ambiguous = true;
                            ClientError::Unreachable {
                                url: url.to_string(),
                                reason: format!("the answer was cut off: {}", transport_reason(&e)),
                            }
                        }
                        Ok(body) if status.is_success() => {
                            return Ok(Response {
                                body,
                                attempts,
                                ambiguous,
                            });
                        }
                        Ok(bytes) => {
                            let (known, code, message) = error_body(status, &bytes);
                            if status != StatusCode::SERVICE_UNAVAILABLE {
                                return Err(ClientError::Api {
                                    url: url.to_string(),
                                    status: status.as_u16(),
                                    code,
                                    message,
                                });
                            }
                            // `overloaded` writes nothing; anything else (log_unavailable,
                            // a request time-out) may have been written.
                            ambiguous |= !known.is_some_and(ErrorCode::wrote_nothing)
                                && method == Method::POST;
                            ClientError::Unavailable {
                                url: url.to_string(),
                                code,
                                message,
                                waited_ms: started.elapsed().as_millis(),
                            }
                        }
                    }
                }
            };
            if ambiguous && retry.resend == Resend::UnlessMaybeApplied {
                let reason = match failure {
                    ClientError::Unreachable { reason, .. } => reason,
                    ClientError::Unavailable { code, message, .. } => {
                        format!("503 {code}: {message}")
                    }
                    other => other.to_string(),
                };
                return Err(ClientError::MaybeApplied {
                    url: url.to_string(),
                    reason,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                let error = match failure {
                    ClientError::Unavailable {
                        url, code, message, ..
                    } => ClientError::Unavailable {
                        url,
                        code,
                        message,
                        waited_ms: started.elapsed().as_millis(),
                    },
                    other => other,
                };
                return Err(error);
            }
            let delay = backoff(attempts)
                .max(retry_after.unwrap_or_default().min(BACKOFF_MAX))
                .min(deadline - now);
            debug!(%url, attempts, ?delay, error = %failure, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// A query's answer, `None` when the service does not know the subject (404).
pub fn found<T>(r: Result<T, ClientError>) -> Result<Option<T>, ClientError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Exponential backoff with jitter: 50 ms, 100 ms, … up to 2 s, each plus up to half.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.0..0.5);
    base.mul_f64(1.0 + jitter)
}

#[cfg(test)]
mod tests;
