//! The server cuts off clients that trickle their headers, keeps serving others
//! meanwhile, and drains on shutdown.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use ledger_http::serve::serve_with;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn start(
    header_timeout: Duration,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let router = Router::new().route("/ping", get(|| async { "pong" }));
    let task = tokio::spawn(serve_with(
        listener,
        router,
        stop.clone(),
        Duration::from_secs(2),
        header_timeout,
    ));
    (addr, stop, task)
}

async fn get_ping(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn trickled_headers_are_cut_off_without_holding_the_server() {
    let (addr, stop, task) = start(Duration::from_millis(500)).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ping HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        // One header byte every 100 ms: never a complete request.
        for b in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*b]).await.is_err() {
                return Some(started.elapsed());
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await
            {
                return Some(started.elapsed());
            }
        }
        None
    });
    // Others are served while the slow client trickles.
    assert!(get_ping(addr).await.ends_with("pong"));
    let cut_after = trickle
        .await
        .unwrap()
        .expect("the slow client is disconnected");
    assert!(cut_after >= Duration::from_millis(400), "{cut_after:?}");
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let (addr, stop, task) = start(Duration::from_secs(5)).await;
    assert!(get_ping(addr).await.ends_with("pong"));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
