//! The validated configuration the gateway runs on. Built only through [`crate::parse`] /
//! [`crate::load`] / [`Config::embedded_default`], so every value here has been checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Listeners,
    pub server: Server,
    pub limits: Limits,
    pub sessions: Sessions,
    /// At least one; names are unique.
    pub runtimes: Vec<Runtime>,
    /// Index into `runtimes` of the runtime the plain container paths reach.
    pub default_runtime: usize,
}

impl Config {
    /// The runtime called `name`, if any.
    pub fn runtime_index(&self, name: &str) -> Option<usize> {
        self.runtimes.iter().position(|r| r.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub http: SocketAddr,
    pub mcp: SocketAddr,
    pub a2a: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub threads: usize,
    pub shutdown_timeout: Duration,
    pub upstream_keepalive_pool_size: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: u64,
    pub max_active_sessions: usize,
    pub max_sessions_per_principal: usize,
    pub max_inflight_per_session: u32,
    pub new_sessions_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct Sessions {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub sweep_interval: Duration,
}

/// The three protocol ports of the container contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `:8080`: `/invocations`, `/ping`, `/ws`.
    Http,
    /// `:8000`: `/mcp`.
    Mcp,
    /// `:9000`: `/` and `/.well-known/agent-card.json`.
    A2a,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Mcp => "mcp",
            Protocol::A2a => "a2a",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    /// What `/runtimes/{name}/invocations` reaches on the backend.
    pub protocol: Protocol,
    pub backend: BackendSpec,
}

#[derive(Debug, Clone)]
pub enum BackendSpec {
    Static(StaticPool),
    Process(ProcessSpec),
}

impl BackendSpec {
    pub const fn provider_name(&self) -> &'static str {
        match self {
            BackendSpec::Static(_) => "static",
            BackendSpec::Process(_) => "process",
        }
    }
}

/// A pool of already-deployed runtimes; each session takes a slot of one endpoint.
#[derive(Debug, Clone)]
pub struct StaticPool {
    /// At least one; no address appears twice.
    pub endpoints: Vec<Endpoint>,
    pub sessions_per_endpoint: u32,
}

/// The protocol ports of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub http: SocketAddr,
    pub mcp: Option<SocketAddr>,
    pub a2a: Option<SocketAddr>,
}

impl Endpoint {
    /// The backend's address for one protocol port, if it serves that protocol.
    pub fn addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        match protocol {
            Protocol::Http => Some(self.http),
            Protocol::Mcp => self.mcp,
            Protocol::A2a => self.a2a,
        }
    }
}

/// Spawn one backend process per session on loopback ports the gateway picks.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// `None`: this very binary (`sessiongate agent …`).
    pub command: Option<PathBuf>,
    /// With `{http}`, `{mcp}`, `{a2a}` placeholders.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
}

/// The arguments that run the built-in reference agent on the chosen addresses.
pub fn default_agent_args() -> Vec<String> {
    [
        "agent", "--http", "{http}", "--mcp", "{mcp}", "--a2a", "{a2a}",
    ]
    .map(String::from)
    .to_vec()
}
