//! A lean HTTP/1.1 keep-alive client over hyper's connection API.
//!
//! The load generator must cost far less CPU than the services it drives (they share
//! the machine), so it skips everything a general client does per request (URL parsing,
//! redirects, pool bookkeeping by host, decompression): a [`Conn`] is one TCP connection
//! used for one request at a time, and a [`Pool`] hands out idle ones and dials new ones
//! when none is free, so an open-loop generator gets as many connections as it has
//! requests in flight.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A service's base address, `http://127.0.0.1:PORT` (plain HTTP on an IP only: the
/// benchmark talks to services it started itself).
#[derive(Clone, Debug)]
pub struct Target {
    addr: SocketAddr,
    host: String,
}

impl Target {
    /// Parses `http://IP:PORT` (a trailing slash is allowed).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let host = url
            .strip_prefix("http://")
            .with_context(|| format!("{url:?}: only http://IP:PORT URLs are supported"))?
            .trim_end_matches('/');
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("{url:?}: expected http://IP:PORT"))?;
        Ok(Self {
            addr,
            host: host.to_string(),
        })
    }
}

/// A response, read in full.
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The body.
    pub body: Bytes,
}

/// One keep-alive connection, one request at a time.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Dials the target and does the HTTP/1 handshake.
    pub async fn connect(target: &Target) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        // Small requests: waiting for Nagle would add latency the services do not cause.
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped; either
            // way the next request on it fails and the caller dials again.
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: target.host.clone(),
        })
    }

    /// Sends a request (a JSON body when `body` is set) and reads the whole response.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Response { status, body })
    }

    /// Whether the connection can take another request.
    fn reusable(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// Idle connections to one target; dials a new one whenever none is idle.
pub struct Pool {
    target: Target,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    /// An empty pool for `url`.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            target: Target::parse(url)?,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn take(&self) -> Option<Conn> {
        self.idle
            .lock()
            .expect("the pool lock is never held across a panic")
            .pop()
    }

    /// Sends one request on an idle connection or a new one; the connection goes back
    /// to the pool unless it failed or the server closed it. A request that fails on a
    /// reused connection is sent once more on a new one, so only send requests that are
    /// safe to repeat (queries; commands with a command id).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        let (mut conn, reused) = match self.take() {
            Some(c) if c.reusable() => (c, true),
            _ => (Conn::connect(&self.target).await?, false),
        };
        let resp = match conn.request(method.clone(), path, body.clone()).await {
            Ok(r) => r,
            // An idle connection the server has just closed (keep-alive or header read
            // timeout): once more on a new one. Safe for what the benchmark sends:
            // queries, and commands that carry their own command id.
            Err(_) if reused => {
                conn = Conn::connect(&self.target).await?;
                conn.request(method, path, body).await?
            }
            Err(e) => return Err(e),
        };
        if conn.reusable() {
            self.idle
                .lock()
                .expect("the pool lock is never held across a panic")
                .push(conn);
        }
        Ok(resp)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.request(Method::GET, path, None).await
    }

    /// Waits until `GET path` answers 200, polling every 50 ms, up to `timeout`. Like
    /// ledger-testkit's `wait_ready`, on this pool (see Cargo.toml for why not that one).
    pub async fn wait_ok(&self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.get(path).await {
                Ok(r) if r.status == StatusCode::OK => return Ok(()),
                Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer 200 on {path} within {timeout:?}; last: {last}",
                    self.target.host
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
