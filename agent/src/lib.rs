//! `sessiongate agent` (or the small static `sessiongate-agent`): the reference agent, a real server speaking the whole container
//! contract. It is the embedded default backend and what the tests run against.
//!
//! - HTTP (`--http`, default `0.0.0.0:8080`): `POST /invocations`, `GET /ping`, `GET /ws`;
//! - MCP (`--mcp`, default `0.0.0.0:8000`): streamable HTTP at `/mcp` with one `echo` tool;
//! - A2A (`--a2a`, default `0.0.0.0:9000`): `GET /.well-known/agent-card.json`, JSON-RPC at `/`.
//!
//! Every answer names the `instance` (unique per process), so a client can see which backend
//! served it.

mod a2a;
pub mod dns_relay;
pub mod exec;
mod extra_face;
pub mod files;
pub mod guest;
mod http_face;
mod mcp;
pub mod mcp_sessions;
pub mod shell;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;

/// Where the agent listens, and how it behaves.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentAddrs {
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub mcp: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:9000")]
    pub a2a: SocketAddr,
    /// Serve MCP statelessly: assign no `Mcp-Session-Id`, accept any.
    #[arg(long)]
    pub mcp_stateless: bool,
    /// A label every invocation answer carries (e.g. the runtime version).
    #[arg(long)]
    pub label: Option<String>,
    /// Where invocations are served on the HTTP port (a runtime's `protocol_path`).
    #[arg(long, default_value = "/invocations")]
    pub invocations_path: String,
    /// Also serve an app on this port (any address the HTTP port binds), as agents do beside
    /// the contract: what session endpoints reach. Repeatable.
    #[arg(long = "extra-port")]
    pub extra_ports: Vec<u16>,
}

/// One agent process's state.
pub(crate) struct Agent {
    /// Drawn from the kernel on first use, not at start: a microVM restored from a snapshot
    /// taken after start gets its own (see [`random_uuid`]).
    instance: OnceLock<String>,
    pub a2a_url: String,
    /// Requests and background tasks running now.
    busy: AtomicUsize,
    /// Invocations served, in memory only.
    pub(crate) invocations: std::sync::atomic::AtomicU64,
    /// Unix seconds of the last Healthy ⇄ HealthyBusy change.
    status_changed: Mutex<u64>,
    pub mcp_sessions: Mutex<mcp_sessions::McpSessions>,
    pub mcp_stateless: bool,
    pub label: Option<String>,
}

impl Agent {
    /// This agent's id, unique per process (and per restored microVM clone).
    pub fn instance(&self) -> &str {
        self.instance
            .get_or_init(|| random_uuid().simple().to_string())
    }

    /// Counts work as running until the guard drops; `/ping` says HealthyBusy meanwhile.
    pub fn work(self: &Arc<Self>) -> WorkGuard {
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 {
            self.status_changed_now();
        }
        WorkGuard(Arc::clone(self))
    }

    fn status_changed_now(&self) {
        if let Ok(mut t) = self.status_changed.lock() {
            *t = unix_now();
        }
    }

    /// `{"status": "Healthy"|"HealthyBusy", "time_of_last_update": <unix s>}`.
    pub fn ping(&self) -> serde_json::Value {
        let busy = self.busy.load(Ordering::Acquire) > 0;
        let since = self.status_changed.lock().map(|t| *t).unwrap_or(0);
        serde_json::json!({
            "status": if busy { "HealthyBusy" } else { "Healthy" },
            "time_of_last_update": since,
        })
    }
}

pub(crate) struct WorkGuard(Arc<Agent>);

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.status_changed_now();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(addrs: AgentAddrs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(serve(addrs))
}

async fn serve(addrs: AgentAddrs) -> anyhow::Result<()> {
    let path = addrs.invocations_path.as_str();
    anyhow::ensure!(
        path.starts_with('/')
            && !matches!(path, "/ping" | "/ws")
            && !path.contains(['{', '}', '*']),
        "--invocations-path must start with / and not be /ping, /ws or a pattern: {path:?}"
    );
    let agent = Arc::new(Agent {
        instance: OnceLock::new(),
        a2a_url: std::env::var("AGENTCORE_RUNTIME_URL")
            .unwrap_or_else(|_| format!("http://{}/", addrs.a2a)),
        busy: AtomicUsize::new(0),
        invocations: std::sync::atomic::AtomicU64::new(0),
        status_changed: Mutex::new(unix_now()),
        mcp_sessions: Mutex::new(mcp_sessions::McpSessions::default()),
        mcp_stateless: addrs.mcp_stateless,
        label: addrs.label.clone(),
    });
    let ping = {
        let agent = Arc::clone(&agent);
        get(move || async move { axum::Json(agent.ping()) })
    };
    let http =
        http_face::router(Arc::clone(&agent), &addrs.invocations_path).route("/ping", ping.clone());
    let mcp = mcp::router(Arc::clone(&agent)).route("/ping", ping.clone());
    let a2a = a2a::router(Arc::clone(&agent)).route("/ping", ping);

    let (h, m, a) = tokio::try_join!(
        TcpListener::bind(addrs.http),
        TcpListener::bind(addrs.mcp),
        TcpListener::bind(addrs.a2a)
    )?;
    let serve = |listener: TcpListener, app: Router| async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_signal())
            .await
    };
    let mut extra = Vec::with_capacity(addrs.extra_ports.len());
    for &port in &addrs.extra_ports {
        let listener = TcpListener::bind(SocketAddr::new(addrs.http.ip(), port)).await?;
        extra.push(serve(
            listener,
            extra_face::router(Arc::clone(&agent), port),
        ));
    }
    tokio::try_join!(
        serve(h, http),
        serve(m, mcp),
        serve(a, a2a),
        futures_util::future::try_join_all(extra)
    )?;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default action (exit) applies; just never resolve.
        _ => std::future::pending().await,
    }
}

/// A v4 UUID from the kernel's generator, never from a user-space one: a user-space generator
/// seeded before a microVM snapshot would hand every clone the same sequence, while the
/// kernel's is reseeded in each clone after restore.
pub fn random_uuid() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            // getrandom(2) fails only for bad arguments or before the pool is ever seeded.
            Err(_) => return uuid::Uuid::new_v4(),
        }
    }
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}
