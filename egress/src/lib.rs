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

/// One backend's way out. Its listeners and connections end when it is dropped.
pub struct Gate {
    shared: Arc<Shared>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

/// What every connection of one backend shares.
pub(crate) struct Shared {
    pub policy: Arc<Egress>,
    pub runtime: Arc<str>,
    /// The session the backend serves; `-` while it waits in a warm pool.
    session: Mutex<Arc<str>>,
    /// Bytes sent and received through the proxy, against `policy.budget_bytes`.
    used: AtomicU64,
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
            }),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        }
    }

    /// From now on, the backend's traffic is logged and budgeted as `session`'s.
    pub fn assign(&self, session: &str) {
        if let Ok(mut s) = self.shared.session.lock() {
            *s = Arc::from(session);
        }
        self.shared.used.store(0, Ordering::Relaxed);
    }

    /// Bytes the backend has sent and received through the proxy.
    pub fn bytes_used(&self) -> u64 {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Serves the HTTP proxy on `listener` (a sandbox's 127.0.0.1:3128).
    pub fn serve_proxy(&self, listener: TcpListener) {
        let (shared, tasks) = (self.shared.clone(), self.tasks.clone());
        self.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                spawn_in(&tasks, proxy::serve(shared.clone(), stream));
            }
        });
    }

    /// Answers DNS over TCP on `listener` (a sandbox's 127.0.0.1:53).
    pub fn serve_dns_tcp(&self, listener: TcpListener) {
        let (shared, tasks) = (self.shared.clone(), self.tasks.clone());
        self.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                spawn_in(&tasks, dns::serve_stream(shared.clone(), stream));
            }
        });
    }

    /// Answers DNS over UDP on `socket` (a sandbox's 127.0.0.1:53).
    pub fn serve_dns_udp(&self, socket: UdpSocket) {
        self.spawn(dns::serve_udp(self.shared.clone(), socket));
    }

    /// Serves `listener`, whose connections begin with `proxy\n` or `dns\n` (a microVM's
    /// `guestfwd`s through `sessiongate egress-connect`).
    pub fn serve_unix(&self, listener: UnixListener) {
        let (shared, tasks) = (self.shared.clone(), self.tasks.clone());
        self.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                spawn_in(&tasks, async move {
                    match tokio::time::timeout(HELLO_DEADLINE, kind(&mut stream)).await {
                        Ok(Some(Kind::Proxy)) => proxy::serve(shared, stream).await,
                        Ok(Some(Kind::Dns)) => dns::serve_stream(shared, stream).await,
                        _ => {}
                    }
                });
            }
        });
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        spawn_in(&self.tasks, task);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("runtime", &self.shared.runtime)
            .finish_non_exhaustive()
    }
}

fn spawn_in(tasks: &Mutex<JoinSet<()>>, task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(mut tasks) = tasks.lock() {
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }
}

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
    /// rules; a name must be on the list, and so must each address it resolves to (deny rules on
    /// networks hold against a name pointed at them). The host's loopback is never reachable.
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
        metrics::counter!("sessiongate_egress_connections_total", "runtime" => runtime.clone(), "verdict" => verdict)
            .increment(1);
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

/// Addresses no policy opens: the host's own loopback (the admin API, other sessions' backends)
/// and the unspecified address (which means this host).
fn never(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
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
