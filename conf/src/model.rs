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
    pub telemetry: Telemetry,
    pub admin: Admin,
    pub aws: Aws,
    /// `None`: all-in-one, sessions in memory.
    pub cluster: Option<Cluster>,
    /// What `sessiongate host` runs as.
    pub host: Host,
    /// Workload access tokens, when the gateway signs them.
    pub identity: Option<crate::Identity>,
    /// How session endpoints are reached (path form always; host form with a domain).
    pub session_endpoints: crate::SessionEndpoints,
    /// What resumable streams may keep.
    pub resumable_streams: crate::ResumableStreams,
    /// At least one; names are unique.
    pub runtimes: Vec<Runtime>,
    /// Index into `runtimes` of the runtime the plain container paths reach.
    pub default_runtime: usize,
}

impl Config {
    /// What is worth a warning without stopping the config from running: a runtime without
    /// authentication served on a non-loopback listener.
    pub fn warnings(&self) -> Vec<String> {
        let l = &self.listeners;
        let public: Vec<String> = [("http", l.http), ("mcp", l.mcp), ("a2a", l.a2a)]
            .iter()
            .filter(|(_, a)| !a.ip().is_loopback())
            .map(|(n, a)| format!("listeners.{n} ({a})"))
            .collect();
        if public.is_empty() {
            return Vec::new();
        }
        self.runtimes
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r.auth, InboundAuth::None))
            .map(|(i, r)| {
                format!(
                    "runtimes[{i}] (`{}`) has auth mode `none` and is served on {}: anyone who \
                     reaches them can start sessions",
                    r.name,
                    public.join(", ")
                )
            })
            .collect()
    }

    /// How `new` would take authentication away, compared with this config: a runtime that
    /// required it and would not, or a new runtime without it where every runtime required it.
    /// One line per finding; empty when nothing weakens. A reload refuses these unless the
    /// operator allows them explicitly (a truncated file must never turn authentication off).
    pub fn auth_weakened_by(&self, new: &Config) -> Vec<String> {
        let all_authenticated = self
            .runtimes
            .iter()
            .all(|r| !matches!(r.auth, InboundAuth::None));
        new.runtimes
            .iter()
            .filter(|r| matches!(r.auth, InboundAuth::None))
            .filter_map(|r| match self.runtimes.iter().find(|o| o.name == r.name) {
                Some(old) if !matches!(old.auth, InboundAuth::None) => Some(format!(
                    "runtime `{}` from auth `{}` to `none`",
                    r.name,
                    old.auth.mode()
                )),
                None if all_authenticated => Some(format!(
                    "new runtime `{}` with auth `none` where every runtime required authentication",
                    r.name
                )),
                _ => None,
            })
            .collect()
    }

    /// The runtime called `name`, if any.
    pub fn runtime_index(&self, name: &str) -> Option<usize> {
        self.runtimes.iter().position(|r| r.name == name)
    }

    /// How the runtime called `name` suspends its idle sessions, if it does.
    pub fn suspend_plan(&self, name: &str) -> Option<&crate::Suspend> {
        self.runtimes
            .iter()
            .find(|r| r.name == name)?
            .suspend
            .as_ref()
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
    pub upgrade_socket: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_payload_bytes: u64,
    pub max_active_sessions: usize,
    pub max_sessions_per_principal: usize,
    pub max_sessions_per_anonymous_address: usize,
    pub max_inflight_per_session: u32,
    pub new_sessions_per_second: u32,
    pub requests_per_second_per_principal: u32,
    pub request_timeout: Duration,
    pub stream_timeout: Duration,
    pub websocket_max_frame_bytes: u64,
    pub websocket_max_frames_per_second: u32,
    /// `None`: as many as the descriptor limit allows (decided at start-up).
    pub max_connections: Option<usize>,
    pub max_parked_requests: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub body_timeout: Duration,
    /// Bytes per second; 0 is off.
    pub min_body_bytes_per_sec: u64,
}

/// The admin listener's protection.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Admin {
    /// The bearer token every admin request but `GET /healthz` must carry, if set.
    pub token: Option<String>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A backend host's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub listen: SocketAddr,
    /// What replicas connect to (never a wildcard address).
    pub advertise: SocketAddr,
    pub id: Option<String>,
    pub capacity: u32,
}

/// A replica's session directory in Redis.
#[derive(Clone, PartialEq, Eq)]
pub struct Cluster {
    pub redis_url: String,
    /// Keys are `{<key_prefix>}:…`.
    pub key_prefix: String,
    pub node_id: Option<String>,
    /// Shared by every replica (at least 32 bytes).
    pub secret: Vec<u8>,
    pub redis_timeout: Duration,
    pub redis_outage_grace: Duration,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis_url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("node_id", &self.node_id)
            .field("redis_timeout", &self.redis_timeout)
            .field("redis_outage_grace", &self.redis_outage_grace)
            .finish_non_exhaustive()
    }
}

/// The AWS region and account ARNs must name (either may be open).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aws {
    pub region: Option<String>,
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// The OTLP/HTTP traces URL (`…/v1/traces`); `None`: tracing is off.
    pub otlp_traces_url: Option<String>,
    pub service_name: String,
    pub export_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Sessions {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub sweep_interval: Duration,
    pub health_check_interval: Duration,
    pub health_check_failures: u32,
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

/// The ports an agent listens on inside its isolation (a sandbox's network namespace, a microVM
/// guest): the contract's 8080, 8000 and 9000, or the runtime's `protocol_port` for its own
/// protocol (AgentCore's `protocolConfiguration.port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractPorts {
    pub http: u16,
    pub mcp: u16,
    pub a2a: u16,
}

impl Default for ContractPorts {
    fn default() -> Self {
        Self {
            http: 8080,
            mcp: 8000,
            a2a: 9000,
        }
    }
}

impl ContractPorts {
    /// HTTP, MCP, A2A, in that order.
    pub const fn all(&self) -> [u16; 3] {
        [self.http, self.mcp, self.a2a]
    }

    pub fn set(&mut self, protocol: Protocol, port: u16) {
        match protocol {
            Protocol::Http => self.http = port,
            Protocol::Mcp => self.mcp = port,
            Protocol::A2a => self.a2a = port,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: String,
    /// What `/runtimes/{name}/invocations` reaches on the backend: the port it is on.
    pub protocol: Protocol,
    /// `protocol = "agui"`: AG-UI on the HTTP port (its errors are SSE `RUN_ERROR` events).
    pub ag_ui: bool,
    /// The backend path of its protocol (`protocol_path`, AgentCore's
    /// `protocolConfiguration.path`); `None`: the contract's (`/invocations`, `/mcp`, `/`).
    pub path: Option<String>,
    /// How long a request refused for want of room waits for it (`park_ms`; zero: not at all).
    pub park: Duration,
    /// Principals allowed to name a user (`runtimeUserId`); `"*"`: every authenticated one.
    pub user_id_principals: Vec<String>,
    /// Extra backend ports reachable through the session endpoint (`allowed_ports`).
    pub allowed_ports: crate::AllowedPorts,
    /// SSE invocation answers are numbered, kept and resumable (`resumable_streams`).
    pub resumable_streams: bool,
    /// `on_idle = "suspend"`: how idle sessions are suspended; `None`: they end.
    pub suspend: Option<crate::Suspend>,
    /// Its sessions' egress policy (`crate::egress`); `None`: the backend's `egress` as it is.
    pub egress: Option<crate::Egress>,
    /// Lower-case header names passed to the backend beyond the contract's own.
    pub request_header_allowlist: Vec<String>,
    pub auth: InboundAuth,
    /// At least one, in ascending version order.
    pub versions: Vec<RuntimeVersion>,
    /// `DEFAULT` (the highest version) first, then the named ones.
    pub endpoints: Vec<RuntimeEndpoint>,
    /// Overrides of `sessions.idle_timeout` / `sessions.max_lifetime` for this runtime.
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
}

impl Runtime {
    /// Whether `principal` may pass a user id to this runtime's agents.
    pub fn may_name_users(&self, principal: &str) -> bool {
        let authenticated = !matches!(self.auth, InboundAuth::None);
        self.user_id_principals
            .iter()
            .any(|p| (p == "*" && authenticated) || p == principal)
    }

    /// The endpoint a `qualifier` names; none (or `DEFAULT`) is the default endpoint.
    pub fn endpoint(&self, qualifier: Option<&str>) -> Option<&RuntimeEndpoint> {
        let name = qualifier.unwrap_or(DEFAULT_ENDPOINT);
        self.endpoints.iter().find(|e| e.name == name)
    }
}

/// The endpoint every runtime has: its highest version.
pub const DEFAULT_ENDPOINT: &str = "DEFAULT";

#[derive(Debug, Clone)]
pub struct RuntimeVersion {
    pub number: u32,
    pub backend: BackendSpec,
}

#[derive(Debug, Clone)]
pub struct RuntimeEndpoint {
    pub name: String,
    /// (index into `versions`, weight); weights are positive.
    pub targets: Vec<(usize, u32)>,
}

impl RuntimeEndpoint {
    /// The version index for a new session, `pick` being uniformly random.
    pub fn choose(&self, pick: u64) -> usize {
        let total: u64 = self.targets.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut at = pick % total.max(1);
        for (version, weight) in &self.targets {
            if at < u64::from(*weight) {
                return *version;
            }
            at -= u64::from(*weight);
        }
        self.targets.last().map_or(0, |(v, _)| *v)
    }
}

/// Most allow-listed headers per runtime, and the longest value passed (AgentCore's limits).
pub const MAX_ALLOWLISTED_HEADERS: usize = 20;
pub const MAX_ALLOWLISTED_VALUE_BYTES: usize = 4096;
/// Most `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*` headers one request may carry (each value
/// held to [`MAX_ALLOWLISTED_VALUE_BYTES`] like an allow-listed one).
pub const MAX_CUSTOM_HEADERS: usize = 20;

/// How a runtime authenticates its callers.
#[derive(Debug, Clone)]
pub enum InboundAuth {
    /// Everyone is `anonymous`.
    None,
    Jwt(JwtAuth),
    SigV4(SigV4Auth),
}

impl InboundAuth {
    pub const fn mode(&self) -> &'static str {
        match self {
            InboundAuth::None => "none",
            InboundAuth::Jwt(_) => "jwt",
            InboundAuth::SigV4(_) => "sigv4",
        }
    }
}

#[derive(Debug, Clone)]
pub struct JwtAuth {
    pub discovery_url: String,
    pub allowed_clients: Vec<String>,
    pub allowed_audiences: Vec<String>,
    pub allowed_scopes: Vec<String>,
    pub required_claims: Vec<ClaimRule>,
    pub leeway: Duration,
    pub refresh_interval: Duration,
    pub min_refetch_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub name: String,
    pub matches: ClaimMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimMatch {
    /// The claim is this string.
    Equals(String),
    /// The claim is a list holding this string.
    Contains(String),
    /// The claim is a list holding at least one of these.
    ContainsAny(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct SigV4Auth {
    pub regions: Vec<String>,
    pub credentials_file: PathBuf,
    pub credentials: Vec<Credential>,
    pub max_clock_skew: Duration,
    pub body_memory_bytes: usize,
}

/// One SigV4 access key. `Debug` never shows the secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub principal: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendSpec {
    Static(StaticPool),
    Process(ProcessSpec),
    Sandbox(SandboxSpec),
    Microvm(MicrovmSpec),
}

impl BackendSpec {
    pub const fn provider_name(&self) -> &'static str {
        match self {
            BackendSpec::Static(_) => "static",
            BackendSpec::Process(_) => "process",
            BackendSpec::Sandbox(_) => "sandbox",
            BackendSpec::Microvm(_) => "microvm",
        }
    }
}

/// A `process` backend run in its own user, pid, mount, ipc, uts and network namespaces
/// (bubblewrap), with a read-only view of a few host paths, a private scratch dir, no
/// capabilities, and cgroup limits. Inside, the agent listens on the contract's own ports; the
/// gateway reaches them through Unix sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Command, arguments (no placeholders: the contract ports apply inside), environment,
    /// timeouts and warm pool.
    pub process: ProcessSpec,
    pub memory_mb: u64,
    pub cpu_percent: u32,
    pub max_pids: u32,
    pub read_only: Vec<PathBuf>,
    /// Outbound network through `slirp4netns` (never to the host's loopback).
    pub egress: bool,
    /// The runtime's egress policy: then the sandbox's only way out is the gateway's egress
    /// proxy (no slirp4netns), and `egress` is true.
    pub policy: Option<std::sync::Arc<crate::Egress>>,
    /// Where the agent listens inside.
    pub ports: ContractPorts,
}

/// One QEMU `-M microvm` guest per session.
#[derive(Debug, Clone, PartialEq)]
pub struct MicrovmSpec {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub accel: Accel,
    pub snapshot: bool,
    /// Outbound network through `passt` (never to the host's loopback); without it the guest
    /// has no network beyond the gateway's forwarded contract ports. Default true.
    pub egress: bool,
    /// The runtime's egress policy: then the guest's only way out is the gateway's egress proxy
    /// (restricted QEMU networking with two `guestfwd`s, no passt), and `egress` is true.
    pub policy: Option<std::sync::Arc<crate::Egress>>,
    /// The agent's environment, passed on the kernel command line (the kernel hands unknown
    /// `KEY=value` parameters to init, which the agent inherits).
    pub env: BTreeMap<String, String>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    pub warm_pool: usize,
    /// Session storage, copied into the guest (a tmpfs of the quota's size) and back.
    pub storage: Option<SessionStorage>,
    /// Where the agent listens in the guest.
    pub ports: ContractPorts,
}

impl BackendSpec {
    /// Where the agent listens inside its isolation; `None` for a backend told its ports
    /// (`process`) or listing them (`static`).
    pub fn ports_mut(&mut self) -> Option<&mut ContractPorts> {
        match self {
            BackendSpec::Sandbox(s) => Some(&mut s.ports),
            BackendSpec::Microvm(m) => Some(&mut m.ports),
            BackendSpec::Process(_) | BackendSpec::Static(_) => None,
        }
    }

    /// Where a spawned backend's session storage goes; `None` for static pools.
    pub fn storage_mut(&mut self) -> Option<&mut Option<SessionStorage>> {
        match self {
            BackendSpec::Process(p) => Some(&mut p.storage),
            BackendSpec::Sandbox(s) => Some(&mut s.process.storage),
            BackendSpec::Microvm(m) => Some(&mut m.storage),
            BackendSpec::Static(_) => None,
        }
    }

    /// Its session storage, if any.
    pub fn storage(&self) -> Option<&SessionStorage> {
        match self {
            BackendSpec::Process(p) => p.storage.as_ref(),
            BackendSpec::Sandbox(s) => s.process.storage.as_ref(),
            BackendSpec::Microvm(m) => m.storage.as_ref(),
            BackendSpec::Static(_) => None,
        }
    }
}

/// How a microVM's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when a canary boot shows it really works, software emulation otherwise.
    Auto,
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// A pool of already-deployed runtimes; each session takes a slot of one endpoint.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// `None`: this very binary (`sessiongate agent …`).
    pub command: Option<PathBuf>,
    /// With `{http}`, `{mcp}`, `{a2a}` placeholders.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    /// Backends kept ready ahead of demand.
    pub warm_pool: usize,
    /// Session storage mounted into its backends, if the runtime has it.
    pub storage: Option<SessionStorage>,
}

/// A runtime's session storage: each session's files, kept across its backend's stops,
/// under `root/<runtime>/v<version>/<key of principal and session id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStorage {
    pub root: PathBuf,
    pub runtime: String,
    pub version: u32,
    /// `/mnt/<name>`: where a sandbox sees it (a process gets the path in its environment).
    pub mount_path: PathBuf,
    pub quota_bytes: u64,
    pub expiry: Duration,
}

/// The arguments that run the built-in reference agent on the chosen addresses.
pub fn default_agent_args() -> Vec<String> {
    [
        "agent", "--http", "{http}", "--mcp", "{mcp}", "--a2a", "{a2a}",
    ]
    .map(String::from)
    .to_vec()
}
