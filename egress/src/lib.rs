//! The egress proxy: the only way out of a session's sandbox or microVM when its runtime has an
//! `[runtimes.egress]` policy (`conf::Egress`).
//!
//! Each backend gets a [`Gate`]. Whatever reaches it speaks one of two things:
//!
//! - an HTTP proxy (CONNECT for TLS and other TCP, absolute-form requests for plain HTTP),
//!   checked against the policy by name and by every address the name resolves to ([`proxy`]);
//! - DNS, answered here: a name the policy does not let through gets NXDOMAIN, so it does not
//!   even resolve ([`dns`]).
//!
//! How traffic reaches the gate is the provider's business: a sandbox's network namespace has
//! only loopback, on which the gateway itself listens (127.0.0.1:3128 for the proxy, :53 for
//! DNS, see `routing`'s sandbox provider); a microVM's restricted QEMU network forwards
//! 10.0.2.100:3128 and :53 to a Unix socket whose connections begin with a line naming the kind
//! (`proxy` or `dns`, written by `sessiongate egress-connect`). Anything else the session sends
//! has no route.
//!
//! For a host with credentials, the proxy terminates TLS with a leaf certificate the gateway's
//! own CA signs ([`Ca`]), adds the header, and re-encrypts to the real host, whose certificate
//! it verifies against the system's trust store. Every other host is tunnelled untouched.
//!
//! Every outbound connection, allowed or not, is one audit line (target `sessiongate::egress`)
//! and counts in `sessiongate_egress_connections_total{runtime,verdict}` and
//! `sessiongate_egress_bytes_total{runtime,direction}`; a session past its byte budget has its
//! connections cut and new ones refused.

mod dns;
mod meter;
mod proxy;
mod sni;
mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conf::{Egress, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use tls::Ca;

/// The address a microVM guest sends its proxy and DNS traffic to (QEMU `guestfwd`).
pub const GUEST_GATE: &str = "10.0.2.100";
/// The proxy's port, in a sandbox (127.0.0.1) and a guest ([`GUEST_GATE`]).
pub const PROXY_PORT: u16 = 3128;
/// How long a new connection may take to say what it is.
const HELLO_DEADLINE: Duration = Duration::from_secs(10);
/// How long a connection to a destination may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// How long a session may take to send a request's head, a TLS handshake or a DNS question.
pub(crate) const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// Connections and DNS questions one backend may have in progress at once.
const MAX_CONNECTIONS: usize = 256;

/// One backend's way out. Its listeners and connections end when it is dropped.
pub struct Gate {
    shared: Arc<Shared>,
}

/// What every connection of one backend shares.
pub(crate) struct Shared {
    pub policy: Arc<Egress>,
    pub runtime: Arc<str>,
    /// The session the backend serves; `-` while it waits in a warm pool.
    session: Mutex<Arc<str>>,
    /// Bytes sent and received through the proxy and DNS, against `policy.budget_bytes`.
    used: AtomicU64,
    /// Every task of the gate: listeners, connections, tunnels, lookups. Aborted with it (and
    /// `None` from then on, so that a task running at that moment cannot start another).
    tasks: Mutex<Option<JoinSet<()>>>,
    /// Connections (and DNS questions) in progress at once, so that one session cannot take
    /// the file descriptors or the resolver threads every session shares.
    slots: Arc<Semaphore>,
}

/// Why a destination is refused, as the audit line and the agent's 403 say it.
pub(crate) type Refusal = &'static str;

impl Gate {
    pub fn new(policy: Arc<Egress>, runtime: &str) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy,
                runtime: Arc::from(runtime),
                session: Mutex::new(Arc::from("-")),
                used: AtomicU64::new(0),
                tasks: Mutex::new(Some(JoinSet::new())),
                slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            }),
        }
    }

    /// From now on, the backend's traffic is logged and budgeted as `session`'s (what a warm
    /// backend did before it had a session is not the session's).
    pub fn assign(&self, session: &str) {
        if let Ok(mut s) = self.shared.session.lock() {
            *s = Arc::from(session);
        }
        self.shared.used.store(0, Ordering::Relaxed);
    }

    /// Serves the HTTP proxy on `listener` (a sandbox's 127.0.0.1:3128).
    pub fn serve_proxy(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        self.shared
            .spawn(accept_loop(shared, Listener::Tcp(listener), Serve::Proxy));
    }

    /// Answers DNS over TCP on `listener` (a sandbox's 127.0.0.1:53).
    pub fn serve_dns_tcp(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        self.shared
            .spawn(accept_loop(shared, Listener::Tcp(listener), Serve::Dns));
    }

    /// Answers DNS over UDP on `socket` (a sandbox's 127.0.0.1:53).
    pub fn serve_dns_udp(&self, socket: UdpSocket) {
        self.shared
            .spawn(dns::serve_udp(self.shared.clone(), socket));
    }

    /// Serves `listener`, whose connections begin with `proxy\n` or `dns\n` (a microVM's
    /// `guestfwd`s through `sessiongate egress-connect`).
    pub fn serve_unix(&self, listener: UnixListener) {
        let shared = self.shared.clone();
        self.shared.spawn(accept_loop(
            shared,
            Listener::Unix(listener),
            Serve::Announced,
        ));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let tasks = self.shared.tasks.lock().ok().and_then(|mut t| t.take());
        drop(tasks); // dropping a JoinSet aborts its tasks
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("runtime", &self.shared.runtime)
            .finish_non_exhaustive()
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// What a listener's connections speak.
#[derive(Clone, Copy)]
enum Serve {
    Proxy,
    Dns,
    /// A first line says which.
    Announced,
}

impl Serve {
    async fn run<S: Io>(self, shared: Arc<Shared>, mut stream: S) {
        let serve = match self {
            Serve::Announced => match tokio::time::timeout(HELLO_DEADLINE, kind(&mut stream)).await
            {
                Ok(Some(Kind::Proxy)) => Serve::Proxy,
                Ok(Some(Kind::Dns)) => Serve::Dns,
                _ => return,
            },
            known => known,
        };
        match serve {
            Serve::Proxy => proxy::serve(shared, stream).await,
            _ => dns::serve_stream(shared, stream).await,
        }
    }
}

/// Accepts for as long as the gate lives, each connection served in a task of its own while it
/// holds one of the gate's slots (a connection past them is closed at once); an accept error
/// (out of descriptors, say) waits a little instead of spinning.
async fn accept_loop(shared: Arc<Shared>, listener: Listener, serve: Serve) {
    loop {
        let Some(slot) = shared.slot() else {
            // Every slot is taken: close what comes until one is free.
            let accepted = match &listener {
                Listener::Tcp(l) => l.accept().await.map(drop),
                Listener::Unix(l) => l.accept().await.map(drop),
            };
            if accepted.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let task = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Box::pin(serve.run(shared.clone(), s)) as Conn
            }),
            Listener::Unix(l) => l
                .accept()
                .await
                .map(|(s, _)| Box::pin(serve.run(shared.clone(), s)) as Conn),
        };
        match task {
            Ok(task) => shared.spawn(async move {
                task.await;
                drop(slot);
            }),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

type Conn = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

enum Kind {
    Proxy,
    Dns,
}

/// The first line of a connection on the Unix socket.
async fn kind<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Kind> {
    let mut line = Vec::with_capacity(8);
    while line.len() < 8 {
        let b = stream.read_u8().await.ok()?;
        if b == b'\n' {
            return match &line[..] {
                b"proxy" => Some(Kind::Proxy),
                b"dns" => Some(Kind::Dns),
                _ => None,
            };
        }
        line.push(b);
    }
    None
}

impl Shared {
    /// Runs `task` as the gate's: it ends with the gate at the latest.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Ok(mut guard) = self.tasks.lock()
            && let Some(tasks) = guard.as_mut()
        {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(task);
        }
    }

    /// A slot for one more DNS question, if the gate has one free.
    pub(crate) fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub(crate) fn session(&self) -> Arc<str> {
        self.session
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Arc::from("-"))
    }

    /// Counts `n` bytes against the budget; false once it is spent.
    pub(crate) fn charge(&self, n: u64) -> bool {
        let used = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.policy.budget_bytes.is_none_or(|b| used <= b)
    }

    pub(crate) fn budget_left(&self) -> bool {
        let used = self.used.load(Ordering::Relaxed);
        self.policy.budget_bytes.is_none_or(|b| used < b)
    }

    /// Whether `host:port` may be reached, and where: a literal address is held to the address
    /// rules; a name must be on the list, and each address it resolves to is dropped if a deny
    /// rule holds it (so deny rules on networks hold against a name pointed at them). The
    /// host's loopback and link-local addresses are never reachable.
    pub(crate) async fn admit(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        if !self.budget_left() {
            return Err("the session's egress budget is spent");
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return if self.allows(None, ip, port) {
                Ok(vec![SocketAddr::new(ip, port)])
            } else {
                Err("the address is not on the list")
            };
        }
        let name = bare.trim_end_matches('.').to_ascii_lowercase();
        if !self.policy.resolves(&name) {
            return Err("the name is not on the list");
        }
        let found = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|_| "the name does not resolve")?;
        let allowed: Vec<SocketAddr> = found
            .filter(|a| self.allows(Some(&name), a.ip(), port))
            .collect();
        if allowed.is_empty() {
            return Err("the name's addresses are not on the list");
        }
        Ok(allowed)
    }

    pub(crate) fn allows(&self, name: Option<&str>, ip: IpAddr, port: u16) -> bool {
        !never(ip) && self.policy.verdict(name, Some(ip), port) == Verdict::Allow
    }

    /// One audit line and the metrics for one outbound connection (or refused attempt).
    pub(crate) fn audit(&self, kind: &'static str, destination: &str, outcome: Outcome) {
        let verdict = if outcome.refused.is_some() {
            "deny"
        } else {
            "allow"
        };
        let runtime = self.runtime.to_string();
        let counter = if kind == "dns" {
            "sessiongate_egress_dns_total"
        } else {
            "sessiongate_egress_connections_total"
        };
        metrics::counter!(counter, "runtime" => runtime.clone(), "verdict" => verdict).increment(1);
        if outcome.sent > 0 {
            metrics::counter!("sessiongate_egress_bytes_total", "runtime" => runtime.clone(), "direction" => "out")
                .increment(outcome.sent);
        }
        if outcome.received > 0 {
            metrics::counter!("sessiongate_egress_bytes_total", "runtime" => runtime, "direction" => "in")
                .increment(outcome.received);
        }
        tracing::info!(
            target: "sessiongate::egress",
            session = %self.session(),
            runtime = %self.runtime,
            kind,
            destination,
            verdict,
            reason = outcome.refused.unwrap_or(""),
            bytes_out = outcome.sent,
            bytes_in = outcome.received,
            ms = outcome.started.elapsed().as_millis() as u64,
            "egress"
        );
    }
}

/// How one outbound connection went.
pub(crate) struct Outcome {
    pub started: Instant,
    pub refused: Option<Refusal>,
    pub sent: u64,
    pub received: u64,
}

impl Outcome {
    pub fn refused(started: Instant, why: Refusal) -> Self {
        Self {
            started,
            refused: Some(why),
            sent: 0,
            received: 0,
        }
    }

    /// Allowed, but the destination could not be reached.
    pub fn failed(started: Instant) -> Self {
        Self {
            started,
            refused: None,
            sent: 0,
            received: 0,
        }
    }
}

/// Addresses no policy opens: the host's own loopback (the admin API, other sessions' backends),
/// the unspecified address (which means this host), and link-local addresses (a cloud's
/// instance metadata and its credentials live at 169.254.169.254).
fn never(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Connects to the first address that answers.
pub(crate) async fn connect(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = std::io::Error::other("no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_DEADLINE, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::from(std::io::ErrorKind::TimedOut),
        }
    }
    Err(last)
}

/// A stream the gate serves: a TCP or Unix connection from the session.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

#[cfg(test)]
mod tests;
