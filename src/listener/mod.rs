//! The listener: accepts TCP connections, speaks TLS when configured, and serves HTTP/1.1 and
//! HTTP/2 with limits a slow or flooding client cannot get around (OWASP ASVS 13.3):
//!
//! - a **connection cap**: past it, new connections wait in the kernel's accept queue until one
//!   closes (they are never accepted and then starved, and the server never runs out of file
//!   descriptors because of them);
//! - a **header-read timeout**: an HTTP/1 connection that has not sent a whole request head this
//!   long after it became ready for one (a new connection, or one idle after a response) is
//!   closed, so a client dribbling header bytes (slowloris) or an idle keep-alive holds a slot
//!   for at most that long; the same bound covers the TLS handshake, and a connection that has
//!   not started its first request within it (sending nothing, or half an HTTP/2 preface) is
//!   closed too;
//! - HTTP/1 request heads above `max_header_bytes` are answered 431; HTTP/2 gets a stream cap
//!   and a header-list cap.
//!
//! The request timeout and body limit are the router's (`http::Limits`).

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

pub use self::tls::{Tls, TlsError, TlsFiles};

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Longest a connection may take to send a whole request head (or the TLS handshake), and
    /// longest an HTTP/1 keep-alive connection may stay idle (`CUSTODIA_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout: Duration,
    /// Most connections served at once (`CUSTODIA_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Largest HTTP/1 request head and HTTP/2 header list, in bytes; at least 8192
    /// (`CUSTODIA_MAX_HEADER_BYTES`).
    pub max_header_bytes: usize,
    /// Most concurrent streams per HTTP/2 connection (`CUSTODIA_HTTP2_MAX_STREAMS`).
    pub http2_max_streams: u32,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits for
/// open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ListenerLimits,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: past the cap, connections wait in the kernel's queue.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Set by the first request: a connection that has not started one within the header
        // timeout is closed. hyper's own header timer starts only once it has told HTTP/1 from
        // HTTP/2 by the first bytes, so a client that sends nothing (or half an HTTP/2
        // preface) would otherwise hold its slot for ever.
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let started = Arc::clone(&started);
            TowerToHyperService::new(router.clone().map_request(
                move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                    started.store(true, Ordering::Relaxed);
                    request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    request.map(axum::body::Body::new)
                },
            ))
        };
        let builder = Arc::clone(&builder);
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let first_request = limits.header_read_timeout;
        tokio::spawn(async move {
            metrics::gauge!("custodia_connections_open").increment(1.0);
            match tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    until_first_request(watcher.watch(connection.into_owned()), &started, first_request)
                        .await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(first_request, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            until_first_request(
                                watcher.watch(connection.into_owned()),
                                &started,
                                first_request,
                            )
                            .await;
                        }
                        // A failed or slow handshake (plain HTTP to the TLS port, an unknown client
                        // certificate): rustls has sent its alert; nothing to serve.
                        Ok(Err(_)) | Err(_) => {
                            metrics::counter!("custodia_tls_handshake_failures_total").increment(1);
                        }
                    }
                }
            }
            metrics::gauge!("custodia_connections_open").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves `connection` to its end, unless no request has started `within` its start: then it
/// is dropped, which closes the socket.
async fn until_first_request(connection: impl Future, started: &AtomicBool, within: Duration) {
    tokio::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        () = tokio::time::sleep(within) => {
            if started.load(Ordering::Relaxed) {
                connection.await;
            } else {
                metrics::counter!("custodia_connections_closed_idle_total").increment(1);
            }
        }
    }
}

fn http_builder(limits: &ListenerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.header_read_timeout.max(Duration::from_secs(1))))
        .keep_alive_timeout(limits.header_read_timeout.max(Duration::from_secs(1)));
    builder
}
