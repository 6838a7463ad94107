//! The listener: accepts TCP connections, speaks TLS when configured, and serves HTTP/1.1 and
//! HTTP/2 with limits a slow or flooding client cannot get around (OWASP ASVS 13.3):
//!
//! - a **connection cap**: past it, new connections wait in the kernel's accept queue until one
//!   closes (they are never accepted and then starved, and the server never runs out of file
//!   descriptors because of them);
//! - a **per-address cap**: past `max_connections_per_address` open connections from one IP
//!   address, its next connection is closed as soon as it is accepted, so one host cannot take
//!   every slot of the connection cap;
//! - a **header-read timeout**: an HTTP/1 connection that has not sent a whole request head this
//!   long after it became ready for one (a new connection, or one idle after a response) is
//!   closed, so a client dribbling header bytes (slowloris) or an idle keep-alive holds a slot
//!   for at most that long; the same bound covers the TLS handshake, and a connection that has
//!   not started its first request within it (sending nothing, or half an HTTP/2 preface) is
//!   closed too;
//! - an **idle timeout**: a connection with no request in progress for `idle_timeout` (an
//!   HTTP/2 connection with no open stream, which otherwise stays open for as long as its
//!   client answers PINGs; an HTTP/1 keep-alive between requests) is shut down gracefully:
//!   HTTP/2 gets GOAWAY, HTTP/1 is closed; one that has not finished closing a header timeout
//!   later is dropped;
//! - HTTP/1 request heads above `max_header_bytes` are answered 431; HTTP/2 gets a stream cap
//!   and a header-list cap.
//!
//! The request timeout and body limit are the router's (`http::Limits`).

pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{Builder, UpgradeableConnection};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
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
    /// Most connections served at once from one IP address; more are closed at once
    /// (`CUSTODIA_MAX_CONNECTIONS_PER_ADDRESS`).
    pub max_connections_per_address: usize,
    /// Longest a connection may stay open with no request in progress
    /// (`CUSTODIA_IDLE_TIMEOUT_MS`).
    pub idle_timeout: Duration,
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
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max_connections));
    let per_address = Arc::new(PerAddress::new(limits.max_connections_per_address));
    // Set to true when the server stops: every connection then shuts down gracefully.
    let (stop, stopping) = watch::channel(false);
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
        let Some(address_slot) = per_address.admit(peer.ip()) else {
            // Dropping the stream closes it; the slot is free again.
            metrics::counter!("custodia_connections_refused_per_address_total").increment(1);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        // Each request counts as activity from its start until its response body is finished
        // or dropped (HTTP/2: while its stream is open).
        let service = {
            let (router, activity) = (router.clone(), Arc::clone(&activity));
            TowerToHyperService::new(tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                let guard = Activity::begin(&activity);
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(axum::body::Body::new)).await?;
                    Ok::<_, Infallible>(
                        response.map(|body| axum::body::Body::new(Tracked { body, _guard: guard })),
                    )
                }
            }))
        };
        let builder = Arc::clone(&builder);
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let limits = limits.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            metrics::gauge!("custodia_connections_open").increment(1.0);
            match tls {
                None => {
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    supervise(connection, &activity, &limits, stopping).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let connection =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            supervise(connection, &activity, &limits, stopping).await;
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
            drop(address_slot);
            drop(slot);
        });
    }
    drop(listener);
    // Drain: every connection holds a slot until it ends.
    let _ = stop.send(true);
    let _ = slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX)).await;
}

/// What a connection is doing, for the idle and first-request timeouts.
struct Activity {
    opened: Instant,
    /// Whether any request has started on the connection.
    started: AtomicBool,
    /// Requests started and not yet answered to the end (HTTP/2: open streams).
    open: AtomicUsize,
    /// When the last request ended, in milliseconds since `opened`.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            started: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn begin(this: &Arc<Activity>) -> RequestGuard {
        this.started.store(true, Ordering::Relaxed);
        this.open.fetch_add(1, Ordering::AcqRel);
        RequestGuard(Arc::clone(this))
    }

    /// When the connection may next have been idle for `idle`: `None` while a request is open.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.opened + Duration::from_millis(self.last_end_ms.load(Ordering::Acquire)) + idle)
    }
}

/// Held while a request is open; its drop marks the end of the request.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let since = u64::try_from(self.0.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        // The end time first: a watcher that sees no open request sees this end too.
        self.0.last_end_ms.fetch_max(since, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that holds its request's guard until it is finished or dropped.
struct Tracked {
    body: axum::body::Body,
    _guard: RequestGuard,
}

impl HttpBody for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Serves `connection` to its end, closing it early when:
/// - no request has started within the header timeout (silent clients, half an HTTP/2
///   preface; hyper's own header timer starts only once it has told HTTP/1 from HTTP/2): it is
///   dropped, which closes the socket;
/// - no request has been open for the idle timeout: graceful shutdown (GOAWAY for HTTP/2), and
///   dropped if that has not finished a header timeout later;
/// - the server stops: graceful shutdown, waited for.
async fn supervise<C>(
    connection: C,
    activity: &Activity,
    limits: &ListenerLimits,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future + GracefulShutdownExt,
{
    tokio::pin!(connection);
    let first_request = activity.opened + limits.header_read_timeout;
    // The first look: a request may have started and ended before the header timeout.
    let mut check = activity.opened + limits.header_read_timeout.min(limits.idle_timeout);
    // Set once a shutdown has begun: `Some(deadline)` to drop the connection by then.
    let mut closing: Option<Option<Instant>> = None;
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = stopping.wait_for(|stop| *stop), if closing.is_none() => {
                if !activity.started.load(Ordering::Relaxed) {
                    // Nothing to finish (and hyper may still be waiting for a preface).
                    return;
                }
                connection.as_mut().shut_down();
                closing = Some(None);
            }
            () = tokio::time::sleep_until(check.into()), if closing.is_none() => {
                let now = Instant::now();
                if !activity.started.load(Ordering::Relaxed) {
                    if now >= first_request {
                        metrics::counter!("custodia_connections_closed_idle_total").increment(1);
                        return;
                    }
                    check = first_request;
                    continue;
                }
                match activity.idle_deadline(limits.idle_timeout) {
                    None => check = now + limits.idle_timeout,
                    Some(deadline) if deadline > now => check = deadline,
                    Some(_) => {
                        metrics::counter!("custodia_connections_closed_idle_total").increment(1);
                        connection.as_mut().shut_down();
                        closing = Some(Some(now + limits.header_read_timeout));
                    }
                }
            }
            () = sleep_until_some(closing.flatten()) => return,
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Graceful shutdown of a hyper connection, whatever its IO type.
trait GracefulShutdownExt {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulShutdownExt for UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Open connections per IP address, bounded.
struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(cap: usize) -> PerAddress {
        PerAddress { cap: cap.max(1), open: Mutex::new(HashMap::new()) }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `cap` open already.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        // An IPv4 client on an IPv6 socket counts as its IPv4 address.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot { table: Arc::clone(self), ip })
    }
}

/// One connection's place in [`PerAddress`], given back on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
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
