//! The front of every protocol listener: what happens to a client connection before and between
//! its requests, around Pingora's HTTP/1 proxy.
//!
//! Pingora reads a request head with a timer per read and then, for HTTP/1.1, keeps an idle
//! connection open forever; nothing caps the number of connections. So a client could hold a
//! connection by sending a header byte now and then (slowloris), or simply never close one, until
//! the gateway ran out of file descriptors — and then its own health checks failed and ended
//! every session. Here:
//!
//! - **connection cap** (`limits.max_connections`): a connection over it gets a 503 and is
//!   closed at once; [`Connections`] counts them and gives the count back on drop;
//! - **head deadline** (`limits.header_timeout_secs`): a request's head must arrive whole within
//!   this long — from the accept for a connection's first request, from its first byte for the
//!   next ones. [`HeadDeadline`] wraps the socket and fails its reads once the deadline passes;
//!   the request stage marks the head complete ([`head_complete`]);
//! - **keep-alive idle** (`limits.keepalive_timeout_secs`) and the **body deadlines**
//!   (`limits.body_timeout_secs` between reads, `min_body_bytes_per_sec` on average): set per
//!   request by [`head_complete`], since Pingora resets them when it parses each head;
//! - **pipelining**: requests a client sends before reading the answers are answered in order
//!   (Pingora's sequential pipelining), never dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conf::{Limits, Protocol};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{ALPN, Stream};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, raw_connect::ProxyDigest, tls::SslDigest,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::GatewayError;
use crate::proxy::Gateway;
use crate::state::Shared;

/// Descriptors kept free for everything that is not a client connection (backends, health
/// checks, the config file, logs) when the cap is derived from the descriptor limit.
const FD_RESERVE: usize = 256;

/// One protocol listener: Pingora's HTTP proxy behind the connection rules above.
pub struct Front {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub shared: Arc<Shared>,
    pub face: Protocol,
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Some(_open) = self.shared.connections.open() else {
            refuse(stream, self.face).await;
            return None;
        };
        let limits = &self.shared.snapshot().config.limits;
        let stream: Stream = Box::new(HeadDeadline::new(stream, limits.header_timeout, true));
        let mut session = ServerSession::new_http1(stream);
        session.set_pipelining_enabled(true);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        }
        let mut reused = self.proxy.serve_http(session, shutdown).await;
        while let Some((stream, settings)) = reused.map(|r| r.consume()) {
            let stream = match stream.into_any().downcast::<HeadDeadline>() {
                Ok(mut wrapped) => {
                    // The next head's deadline runs from its first byte: the idle time before
                    // it is the keep-alive timeout's business.
                    let header_timeout = self.shared.snapshot().config.limits.header_timeout;
                    wrapped.rearm(header_timeout);
                    wrapped as Stream
                }
                Err(_) => return None,
            };
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.proxy.serve_http(session, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Over the connection cap: a 503 in the face's shape, written without waiting for the request
/// (a client that cannot read it sees the close and retries), then the connection closes.
async fn refuse(mut stream: Stream, face: Protocol) {
    metrics::counter!("sessiongate_connections_refused_total").increment(1);
    let Ok((header, body)) = GatewayError::TooManyConnections.render(face.into(), None, None)
    else {
        return;
    };
    let mut head = format!("HTTP/1.1 {}\r\nconnection: close\r\n", header.status);
    for (name, value) in header.headers.iter() {
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    Shutdown::shutdown(&mut *stream).await;
}

/// Called by the request stage once a head is parsed: ends its deadline, and sets this
/// request's keep-alive and body timers (Pingora resets them with every head it parses).
pub fn head_complete(session: &mut pingora::proxy::Session, limits: &Limits, websocket: bool) {
    if let Some(stream) = session.downstream_session.stream()
        && let Some(deadline) = stream.as_any().downcast_ref::<HeadDeadline>()
    {
        deadline.complete.store(true, Ordering::Release);
    }
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
    }
    // A WebSocket's client side may be quiet for as long as the stream may last.
    session.set_read_timeout(Some(if websocket {
        limits.stream_timeout
    } else {
        limits.body_timeout
    }));
}

const HEAD_DEADLINE_PASSED: &str = "request head not received within limits.header_timeout_secs";

/// True when `e` is a read that [`HeadDeadline`] failed.
/// The client's address: the peer's, or on a Unix socket (where only a graceful upgrade's old
/// process connects: see `crate::handover`) the one it relayed.
pub fn client_ip(session: &pingora::proxy::Session) -> Option<std::net::IpAddr> {
    let addr = session.client_addr()?;
    if let Some(inet) = addr.as_inet() {
        return Some(inet.ip());
    }
    session
        .req_header()
        .headers
        .get(crate::handover::CLIENT_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub fn head_deadline_passed(e: &pingora::Error) -> bool {
    io_cause(e).is_some_and(|io| {
        io.kind() == std::io::ErrorKind::TimedOut && io.to_string() == HEAD_DEADLINE_PASSED
    })
}

/// The I/O error at the root of a Pingora error, if that is what it is.
pub fn io_cause(e: &pingora::Error) -> Option<&std::io::Error> {
    e.root_cause().downcast_ref::<std::io::Error>()
}

/// True when a request body is too slow on average: it has taken longer than `body_timeout` and
/// arrived at less than `min_rate` bytes per second.
pub fn body_too_slow(started: Instant, bytes: u64, limits: &Limits) -> bool {
    let took = started.elapsed();
    limits.min_body_bytes_per_sec > 0
        && took > limits.body_timeout
        && (bytes as f64) < limits.min_body_bytes_per_sec as f64 * took.as_secs_f64()
}

/// Client connections open now, against the cap.
#[derive(Debug)]
pub struct Connections {
    open: AtomicUsize,
    max: AtomicUsize,
    /// The descriptor limit in force (after raising it).
    fd_limit: usize,
}

/// One counted connection; given back when dropped.
pub struct Open<'a>(&'a Connections);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let open = self.0.open.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("sessiongate_client_connections").set(open as f64);
    }
}

impl Connections {
    /// Raises the soft descriptor limit to the hard one, then caps connections at `configured`
    /// or at what the descriptor limit leaves room for.
    pub fn new(configured: Option<usize>) -> Self {
        let fd_limit = raise_fd_limit();
        let connections = Self {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(1),
            fd_limit,
        };
        connections.set_max(configured);
        connections
    }

    /// The cap: `configured`, never more than the descriptor limit leaves room for (each client
    /// connection may hold a backend connection too).
    pub fn set_max(&self, configured: Option<usize>) {
        let room = (self.fd_limit.saturating_sub(FD_RESERVE) / 2).max(1);
        let max = match configured {
            Some(n) if n > room => {
                tracing::warn!(
                    configured = n,
                    fd_limit = self.fd_limit,
                    capped = room,
                    "limits.max_connections is more than the descriptor limit leaves room for"
                );
                room
            }
            Some(n) => n,
            None => room,
        };
        if self.max.swap(max, Ordering::AcqRel) != max {
            tracing::info!(
                max_connections = max,
                fd_limit = self.fd_limit,
                "client connection cap"
            );
        }
        metrics::gauge!("sessiongate_max_connections").set(max as f64);
    }

    pub fn open(&self) -> Option<Open<'_>> {
        let max = self.max.load(Ordering::Acquire);
        let before = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        metrics::gauge!("sessiongate_client_connections").set((before + 1) as f64);
        Some(Open(self))
    }

    pub fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }
}

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit; returns the limit in force.
fn raise_fd_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// A client socket whose reads fail with `TimedOut` once a request head has taken too long.
///
/// Armed at accept (the deadline runs from then) and again after every request (the deadline
/// runs from the next byte); disarmed by the request stage when Pingora has parsed the head.
/// After a request the timer starts only when the next head does not arrive in one read (a
/// head that does — nearly all — costs no timer), and the timer is reused, never reallocated.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    /// Set by [`head_complete`] (through a shared reference to the stream).
    complete: AtomicBool,
    /// Whether the deadline runs (`timer` is then set to it).
    running: bool,
    /// Bytes of the head have arrived since the last rearm.
    started: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HeadDeadline {
    fn new(inner: Stream, timeout: Duration, from_now: bool) -> Self {
        Self {
            inner,
            timeout,
            complete: AtomicBool::new(false),
            running: from_now,
            started: false,
            timer: from_now.then(|| Box::pin(tokio::time::sleep(timeout))),
        }
    }

    fn rearm(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.complete.store(false, Ordering::Release);
        self.running = false;
        self.started = false;
    }

    /// Starts the deadline now (reusing the timer).
    fn start(&mut self) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        match &mut self.timer {
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        self.running = true;
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.complete.load(Ordering::Acquire) {
            this.running = false;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.started && !this.running {
            // The head's first bytes came and Pingora wants more: the deadline runs from here.
            this.start();
        }
        if this.running
            && let Some(timer) = &mut this.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                HEAD_DEADLINE_PASSED,
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.started = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
