//! The listener: accepts TCP connections, speaks TLS when configured, and serves HTTP/1.1 and
//! HTTP/2 with limits a slow or flooding client cannot get around (OWASP ASVS 13.3):
//!
//! - a **connection cap**: past it, new connections wait in the kernel's accept queue until one
//!   closes (they are never accepted and then starved, and the server never runs out of file
//!   descriptors because of them);
//! - a **per-address cap**: past `max_connections_per_address` open connections from one IP
//!   address (an IPv6 /64 counts as one address, see [`address_group`]), its next connection is closed as soon as it is accepted, so one host cannot take
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
//! - a **response deadline**: a request counts as in progress until its response is sent to the
//!   end, which only the client's reading ends (an HTTP/2 client that never opens its flow-control
//!   window, an HTTP/1 client that never reads a large response). A connection whose oldest open
//!   request started more than `response_deadline` ago (the request timeout plus the header
//!   timeout) is dropped, so no connection stays open for ever however its client behaves;
//! - a **drain deadline**: when the server stops, connections finish their requests gracefully,
//!   but one still open `response_deadline` later is dropped;
//! - HTTP/1 request heads above `max_header_bytes` are answered 431; HTTP/2 gets a stream cap
//!   and a header-list cap.
//!
//! The request timeout and body limit are the router's (`http::Limits`).

pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Longest a request may stay in progress, from its start until the last byte of its
    /// response is handed to the connection (`CUSTODIA_REQUEST_TIMEOUT_MS` plus
    /// `CUSTODIA_HEADER_READ_TIMEOUT_MS`); also the longest the server waits for a connection
    /// to finish when it stops.
    pub response_deadline: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits for
/// open connections to finish their requests, at most `limits.response_deadline` (plus the
/// header timeout for a TLS handshake under way).
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
            // A panic in any layer becomes a 500 on this request, not a reset of the connection.
            let router = tower::ServiceBuilder::new()
                .layer(tower_http::catch_panic::CatchPanicLayer::custom(crate::http::panic_response))
                .service(router.clone());
            let activity = Arc::clone(&activity);
            TowerToHyperService::new(tower::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                let guard = Activity::begin(&activity);
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(axum::body::Body::new)).await?;
                    Ok::<_, Infallible>(response.map(|body| {
                        axum::body::Body::new(Tracked { body: axum::body::Body::new(body), _guard: guard })
                    }))
                }
            }))
        };
        let builder = Arc::clone(&builder);
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let limits = limits.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            // Decremented on drop: also if this task unwinds.
            let _open = OpenGauge::new();
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
            drop(address_slot);
            drop(slot);
        });
    }
    drop(listener);
    // Drain: every connection holds a slot until it ends. Each ends by its own drain deadline
    // (`supervise`); this bound is a backstop (a TLS handshake under way takes up to a header
    // timeout, a little slack covers the tasks' wake-ups).
    let _ = stop.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let backstop = limits.response_deadline + limits.header_read_timeout + Duration::from_secs(1);
    if tokio::time::timeout(backstop, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("connections still open after the drain deadline; stopping without them");
    }
}

/// One count in `custodia_connections_open` while alive.
struct OpenGauge;

impl OpenGauge {
    fn new() -> OpenGauge {
        metrics::gauge!("custodia_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("custodia_connections_open").decrement(1.0);
    }
}

/// What a connection is doing, for the idle, first-request and response timeouts.
struct Activity {
    opened: Instant,
    /// Whether any request has started on the connection.
    started: AtomicBool,
    /// Requests started and not yet answered to the end (HTTP/2: open streams).
    open: Mutex<OpenRequests>,
}

/// The open requests of a connection, by a number given in start order, and when the last one
/// ended. At most `http2_max_streams` entries (one for HTTP/1).
#[derive(Default)]
struct OpenRequests {
    next: u64,
    /// Start of each open request; numbers and starts grow together, so the first is the oldest.
    started: BTreeMap<u64, Instant>,
    /// When the last request ended (`None`: none has).
    last_end: Option<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity { opened: Instant::now(), started: AtomicBool::new(false), open: Mutex::default() }
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, OpenRequests> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(this: &Arc<Activity>) -> RequestGuard {
        this.started.store(true, Ordering::Relaxed);
        let mut open = this.requests();
        let id = open.next;
        open.next += 1;
        open.started.insert(id, Instant::now());
        RequestGuard(Arc::clone(this), id)
    }

    /// When the connection may next have been idle for `idle`: `None` while a request is open.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let open = self.requests();
        if !open.started.is_empty() {
            return None;
        }
        Some(open.last_end.unwrap_or(self.opened) + idle)
    }

    /// When the oldest open request started, if any is open.
    fn oldest_open(&self) -> Option<Instant> {
        self.requests().started.first_key_value().map(|(_, started)| *started)
    }
}

/// Held while a request is open; its drop marks the end of the request.
struct RequestGuard(Arc<Activity>, u64);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut open = self.0.requests();
        open.started.remove(&self.1);
        open.last_end = Some(Instant::now());
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
/// - the oldest open request started more than the response deadline ago (its client does not
///   read the response): dropped at once, since a graceful shutdown would wait for that
///   response too;
/// - the server stops: graceful shutdown, and dropped if that has not finished within the
///   response deadline.
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
    // Set once a shutdown has begun: the connection is dropped by then.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut connection => return,
            _ = stopping.wait_for(|stop| *stop), if closing.is_none() => {
                if !activity.started.load(Ordering::Relaxed) {
                    // Nothing to finish (and hyper may still be waiting for a preface).
                    return;
                }
                connection.as_mut().shut_down();
                closing = Some(Instant::now() + limits.response_deadline);
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
                if let Some(started) = activity.oldest_open() {
                    let deadline = started + limits.response_deadline;
                    if deadline <= now {
                        metrics::counter!("custodia_connections_closed_stalled_total").increment(1);
                        return;
                    }
                    check = deadline.min(now + limits.idle_timeout);
                    continue;
                }
                match activity.idle_deadline(limits.idle_timeout) {
                    None => check = now + limits.idle_timeout,
                    Some(deadline) if deadline > now => check = deadline,
                    Some(_) => {
                        metrics::counter!("custodia_connections_closed_idle_total").increment(1);
                        connection.as_mut().shut_down();
                        closing = Some(now + limits.header_read_timeout);
                    }
                }
            }
            () = sleep_until_some(closing) => return,
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

/// The address a per-address limit counts a client under: an IPv4 address as itself (also when
/// it reaches an IPv6 socket as an IPv4-mapped `::ffff:a.b.c.d`), an IPv6 address as its /64
/// network with the interface bits zeroed. A /64 is the smallest prefix routed to one site
/// (RFC 6177, RFC 7421): its holder picks any of its 2^64 addresses at will, so counting them
/// one by one would let a single host get around every per-address limit.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Open connections per address group ([`address_group`]), bounded.
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
        let ip = address_group(ip);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_and_an_ipv4_mapped_address_count_as_one_address() {
        let table = Arc::new(PerAddress::new(2));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = table.admit(ip("2001:db8:1:2::1")).unwrap();
        let _second = table.admit(ip("2001:db8:1:2:aaaa::9")).unwrap();
        assert!(table.admit(ip("2001:db8:1:2:ffff::1")).is_none(), "a third address of the same /64");
        assert!(table.admit(ip("2001:db8:1:3::1")).is_some(), "another /64 has its own places");
        let _v4 = table.admit(ip("192.0.2.1")).unwrap();
        let _mapped = table.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none(), "an IPv4-mapped address counts as its IPv4 address");
        assert!(table.admit(ip("192.0.2.2")).is_some());
        drop(first);
        assert!(table.admit(ip("2001:db8:1:2::77")).is_some(), "a closed connection frees its place");
        assert_eq!(address_group(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
    }
}
