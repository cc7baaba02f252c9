//! Serving a router until shutdown, then draining requests in flight for a bounded time.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// waits up to `grace` for requests in flight. Returns an error only if serving failed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let signal = shutdown.clone();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(async move { signal.cancelled().await });
    let server = std::pin::pin!(server.into_future());
    drain_bounded(server, shutdown, grace, addr).await
}

async fn drain_bounded<F>(
    mut server: std::pin::Pin<&mut F>,
    shutdown: CancellationToken,
    grace: Duration,
    addr: std::net::SocketAddr,
) -> std::io::Result<()>
where
    F: Future<Output = std::io::Result<()>>,
{
    tokio::select! {
        res = &mut server => return res,
        () = shutdown.cancelled() => {}
    }
    info!(%addr, "no longer accepting connections; draining requests in flight");
    match tokio::time::timeout(grace, server).await {
        Ok(res) => res,
        Err(_) => {
            warn!(%addr, ?grace, "requests still in flight after the grace period; closing");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT. For binaries only: libraries take a token instead.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails outside a tokio runtime");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
