//! The configuration file as the user writes it: serde structs, every field defaulted.
//!
//! These types mirror the TOML one to one and check nothing beyond types; [`crate::validate`]
//! turns them into the runtime form ([`crate::Config`]) and reports every problem it finds.

use serde::Deserialize;

/// The whole file. Every table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Name of the runtime that the plain container paths (`/invocations`, `/mcp`, `/`) reach.
    /// Default: the first runtime.
    pub default_runtime: Option<String>,
    pub listeners: FileListeners,
    pub server: FileServer,
    pub limits: FileLimits,
    pub sessions: FileSessions,
    pub telemetry: FileTelemetry,
    pub admin: FileAdmin,
    pub aws: FileAws,
    pub cluster: FileCluster,
    pub host: FileHost,
    pub identity: crate::FileIdentity,
    pub session_endpoints: crate::FileSessionEndpoints,
    pub resumable_streams: crate::FileResumableStreams,
    /// At least one. Deliberately no default here: a file that declares no runtime (an empty
    /// or truncated file above all) is refused, never read as the embedded default.
    #[serde(default)]
    pub runtimes: Vec<FileRuntime>,
}

/// The admin listener's protection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAdmin {
    /// A file holding a bearer token (its first line). When set, every admin request but
    /// `GET /healthz` needs `Authorization: Bearer <token>`. Relative paths are relative to this
    /// config file. Default: none (the admin listener is protected by its address alone).
    pub token_file: Option<String>,
}

/// Where sessions live. Without this table (or with `directory = "memory"`) the gateway is
/// all-in-one: sessions live in its memory and end with it. With `directory = "redis"` it is a
/// replica: sessions live in Redis and any replica serves any session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCluster {
    /// `memory` (default) or `redis`.
    pub directory: String,
    /// `redis://[user:password@]host:port/db` or `rediss://…` (TLS). Required with `redis`.
    pub redis_url: Option<String>,
    /// Every key lives under `{<key_prefix>}:` (one hash slot). Default `sessiongate`.
    pub key_prefix: String,
    /// This replica's name in Redis and in `/sessions`. Default: hostname and process id.
    pub node_id: Option<String>,
    /// A file whose first line (at least 32 characters) every replica shares: it keys the
    /// implicit MCP session ids. Required with `redis`. Relative to this config file.
    pub secret_file: Option<String>,
    /// Deadline of one Redis call, milliseconds. Default 250.
    pub redis_timeout_ms: u64,
    /// How long sessions cached on a replica keep working while Redis is unreachable, seconds.
    /// Default 30.
    pub redis_outage_grace_secs: u64,
}

impl Default for FileCluster {
    fn default() -> Self {
        Self {
            directory: "memory".into(),
            redis_url: None,
            key_prefix: "sessiongate".into(),
            node_id: None,
            secret_file: None,
            redis_timeout_ms: 250,
            redis_outage_grace_secs: 30,
        }
    }
}

/// `sessiongate host`: a machine that owns spawned backends and serves them to every replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileHost {
    /// Where replicas reach this host (its relay and control API). Default `127.0.0.1:7070`.
    pub listen: String,
    /// The address replicas connect to (required, here or as `--advertise`, when `listen` is a
    /// wildcard). Default: `listen`.
    pub advertise: Option<String>,
    /// Its name in Redis. Default: hostname and process id (a restarted host is a new host:
    /// its backends died with the old process).
    pub id: Option<String>,
    /// Sessions it runs at most. Default 100.
    pub capacity: u32,
}

impl Default for FileHost {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            id: None,
            capacity: 100,
        }
    }
}

/// The AWS identity the AWS-compatible face answers as. ARNs in `/runtimes/{arn}/…` must name
/// this region and account when they are set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAws {
    /// e.g. `us-east-1`. Default: any region.
    pub region: Option<String>,
    /// Twelve digits. Default: any account.
    pub account_id: Option<String>,
}

/// OpenTelemetry trace export. Off unless `otlp_endpoint` is set; read at start-up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileTelemetry {
    /// OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (spans go to `…/v1/traces`).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans. Default `sessiongate`.
    pub service_name: String,
    /// How often finished spans are sent, milliseconds. Default 1 000.
    pub export_interval_ms: u64,
}

impl Default for FileTelemetry {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "sessiongate".into(),
            export_interval_ms: 1_000,
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            default_runtime: None,
            listeners: FileListeners::default(),
            server: FileServer::default(),
            limits: FileLimits::default(),
            sessions: FileSessions::default(),
            telemetry: FileTelemetry::default(),
            admin: FileAdmin::default(),
            aws: FileAws::default(),
            cluster: FileCluster::default(),
            host: FileHost::default(),
            identity: crate::FileIdentity::default(),
            session_endpoints: crate::FileSessionEndpoints::default(),
            resumable_streams: crate::FileResumableStreams::default(),
            runtimes: vec![FileRuntime::default()],
        }
    }
}

/// Where the gateway listens, one address per protocol port. Changed only by a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileListeners {
    /// HTTP face: `/invocations`, `/ping`, `/ws`, `/runtimes/{id}/…`. Default `0.0.0.0:8080`.
    pub http: String,
    /// MCP face: `/mcp`. Default `0.0.0.0:8000`.
    pub mcp: String,
    /// A2A face: `/`, `/.well-known/agent-card.json`. Default `0.0.0.0:9000`.
    pub a2a: String,
    /// Admin: `/healthz`, `/metrics`, `/sessions`. Default `127.0.0.1:9090`.
    pub admin: String,
}

impl Default for FileListeners {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".into(),
            mcp: "0.0.0.0:8000".into(),
            a2a: "0.0.0.0:9000".into(),
            admin: "127.0.0.1:9090".into(),
        }
    }
}

/// Process-level settings of the Pingora server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileServer {
    /// Worker threads per listener. Default 2.
    pub threads: usize,
    /// On SIGTERM, seconds in-flight requests get to finish. Default 10.
    pub shutdown_timeout_secs: u64,
    /// Idle connections kept open to each backend. Default 256.
    pub upstream_keepalive_pool_size: usize,
    /// Unix socket over which a graceful upgrade hands the listening sockets to the new process.
    /// Default `/tmp/sessiongate-upgrade.sock`.
    pub upgrade_socket: String,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            threads: 2,
            shutdown_timeout_secs: 10,
            upstream_keepalive_pool_size: 256,
            upgrade_socket: "/tmp/sessiongate-upgrade.sock".into(),
        }
    }
}

/// Admission limits and the payload cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileLimits {
    /// Largest request body, in bytes. Default 100 000 000 (AgentCore's 100 MB).
    pub max_payload_bytes: u64,
    /// Sessions alive at once, all principals together. Default 1 000.
    pub max_active_sessions: usize,
    /// Sessions alive at once for one principal. Default 1 000.
    pub max_sessions_per_principal: usize,
    /// Sessions alive at once for one anonymous client address (runtimes with auth `none`
    /// count callers by address). Default 100.
    pub max_sessions_per_anonymous_address: usize,
    /// Requests in flight at once in one session (an open WebSocket counts). Default 32.
    pub max_inflight_per_session: u32,
    /// New sessions started per second, all principals together. Default 25.
    pub new_sessions_per_second: u32,
    /// Requests per second one principal may make (burst: one second's worth). Default 1 000.
    pub requests_per_second_per_principal: u32,
    /// Longest a backend may stay silent on a request (no response byte), seconds: the cap of a
    /// synchronous request, and the longest quiet spell of an SSE stream. Default 900.
    pub request_timeout_secs: u64,
    /// Longest a stream (SSE or WebSocket) may last, seconds. Default 3 600.
    pub stream_timeout_secs: u64,
    /// Largest WebSocket frame a client may send, bytes (over: close 1009). Default 65 536.
    pub websocket_max_frame_bytes: u64,
    /// WebSocket frames a client may send per second (over: close 1008). Default 250.
    pub websocket_max_frames_per_second: u32,
    /// Client connections open at once, all faces together; more are closed at once. 0: as many
    /// as the file-descriptor limit leaves room for (half of it, less a reserve). Default 0.
    pub max_connections: usize,
    /// Requests parked at once, waiting for room (`runtimes[].park_ms`); more get their refusal
    /// at once. Read at start-up. Default 1 024.
    pub max_parked_requests: usize,
    /// A request's head (request line and headers) must arrive whole within this many seconds
    /// of its first byte. Default 10.
    pub header_timeout_secs: u64,
    /// An idle keep-alive connection is closed after this many seconds. Default 60.
    pub keepalive_timeout_secs: u64,
    /// Longest pause between two reads of a request body, seconds (over: 408). Default 30.
    pub body_timeout_secs: u64,
    /// A request body slower than this on average, once it has taken `body_timeout_secs`, is
    /// refused with 408. 0 turns the check off. Default 1 024.
    pub min_body_bytes_per_sec: u64,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 100_000_000,
            max_active_sessions: 1_000,
            max_sessions_per_principal: 1_000,
            max_sessions_per_anonymous_address: 100,
            max_inflight_per_session: 32,
            new_sessions_per_second: 25,
            requests_per_second_per_principal: 1_000,
            request_timeout_secs: 900,
            stream_timeout_secs: 3_600,
            websocket_max_frame_bytes: 65_536,
            websocket_max_frames_per_second: 250,
            max_connections: 0,
            max_parked_requests: 1_024,
            header_timeout_secs: 10,
            keepalive_timeout_secs: 60,
            body_timeout_secs: 30,
            min_body_bytes_per_sec: 1_024,
        }
    }
}

/// Session lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSessions {
    /// A session with no request in flight for this long ends. Default 900, 1..=28 800.
    pub idle_timeout_secs: u64,
    /// A session ends this long after it started, busy or not. Default 28 800, 1..=28 800.
    pub max_lifetime_secs: u64,
    /// How often the lifecycle sweep runs, in milliseconds. Default 1 000.
    pub sweep_interval_ms: u64,
    /// How often each session's backend is asked `GET /ping`, in milliseconds. Default 2 000.
    pub health_check_interval_ms: u64,
    /// Failed health checks in a row that end a session. Default 3.
    pub health_check_failures: u32,
    /// Where session storage lives (`[[runtimes.filesystems]]`). Shared by every host that
    /// should see the same sessions' files. Default `/var/lib/sessiongate/storage`.
    pub storage_root: String,
    /// Where suspended sessions' snapshots go (`runtimes[].on_idle = "suspend"`): shared by
    /// every host that should be able to resume any of them. Default
    /// `/var/lib/sessiongate/snapshots`.
    pub snapshot_root: String,
    /// In a cluster: every host mounts the same `snapshot_root`, so any host can resume any
    /// suspended session (and a host that dies loses none). False: only the host that saved a
    /// session resumes it, and its suspended sessions end with it. Default false.
    pub snapshot_root_shared: bool,
}

impl Default for FileSessions {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 900,
            max_lifetime_secs: 28_800,
            sweep_interval_ms: 1_000,
            health_check_interval_ms: 2_000,
            health_check_failures: 3,
            storage_root: "/var/lib/sessiongate/storage".into(),
            snapshot_root: "/var/lib/sessiongate/snapshots".into(),
            snapshot_root_shared: false,
        }
    }
}

/// One agent runtime: a name and where its sessions' backends come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileRuntime {
    /// `[a-zA-Z][a-zA-Z0-9_]{0,47}`, as AgentCore names runtimes. Default `default`.
    pub name: String,
    /// What `/runtimes/{name}/invocations` reaches: `http` (`/invocations`), `mcp` (`/mcp`),
    /// `a2a` (`/`) or `agui` (AG-UI: `/invocations` and `/ws` on the HTTP port). Default `http`.
    pub protocol: String,
    /// The port the agent serves its protocol on inside a sandbox or microVM (8000–12000, not
    /// 8443; AgentCore's `protocolConfiguration.port`). Default: the contract's.
    pub protocol_port: Option<u16>,
    /// How long a request refused for want of room (a session or rate limit, a full pool) may
    /// wait for it before it is answered with the refusal, milliseconds (0–60 000). Default 0.
    pub park_ms: u64,
    /// Principals that may name the user they act for (`X-Amzn-Bedrock-AgentCore-Runtime-User-Id`,
    /// AgentCore's `InvokeAgentRuntimeForUser` permission); `"*"`: every authenticated caller.
    pub user_id_principals: Vec<String>,
    /// The path `/runtimes/{name}/invocations` reaches on the backend (`/…`, at most 2 048
    /// characters; AgentCore's `protocolConfiguration.path`). Default: the contract's.
    pub protocol_path: Option<String>,
    /// Extra ports of a session's backend reachable through its session endpoint (AgentCore's
    /// `allowedPorts`): 1–5 entries, each a port or a range `"from-to"`, in 8000–12000 but not
    /// 8443. Sandbox, microvm and static backends. Default: none.
    pub allowed_ports: Vec<crate::FilePort>,
    /// Number the events of this runtime's SSE invocation answers and keep them (within
    /// `[resumable_streams]`) so that a client that reconnects with `Last-Event-ID` gets what it
    /// missed, then the rest; the stream runs on when its client goes. Default false.
    pub resumable_streams: bool,
    /// What an idle session becomes: `end` (default) or `suspend` (kept — a microVM's memory
    /// and files in a snapshot, other providers' files — and resumed by its next request).
    pub on_idle: String,
    /// What its sessions' sandboxes and microVMs may reach, and the credentials added on the
    /// way out (`crate::egress`). Default: the backend's `egress` as it is.
    pub egress: Option<crate::FileEgress>,
    /// How long a suspended session waits for its next request before it ends for good,
    /// seconds. Default 86 400.
    pub suspend_retention_secs: u64,
    /// Disk all of this runtime's snapshots may take, MiB; over it an idle session ends instead
    /// of suspending. Default 10 240.
    pub snapshot_budget_mb: u64,
    /// Extra request headers passed to the backend (at most 20; values up to 4 KB). The contract's
    /// own headers always pass. `Authorization` may be listed only on a `jwt` runtime.
    pub request_header_allowlist: Vec<String>,
    pub auth: FileAuth,
    /// The backend of a runtime with one version (version 1). Leave it out when `versions`
    /// are listed.
    pub backend: Option<FileBackend>,
    /// Versions, each with its own backend. `DEFAULT` reaches the highest.
    pub versions: Vec<FileVersion>,
    /// This runtime's idle timeout, overriding `sessions.idle_timeout_secs`.
    pub idle_timeout_secs: Option<u64>,
    /// This runtime's max session lifetime, overriding `sessions.max_lifetime_secs`.
    pub max_lifetime_secs: Option<u64>,
    /// Named endpoints (the `qualifier`): a pinned version or a weighted split.
    pub endpoints: Vec<FileRuntimeEndpoint>,
    /// What is mounted into its sessions' backends: `session_storage` (files kept per session
    /// across backend stops, as AgentCore's session storage). At most one.
    pub filesystems: Vec<FileFilesystem>,
}

/// One `[[runtimes.filesystems]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFilesystem {
    /// `session_storage`.
    pub kind: String,
    /// Where the agent sees it: `/mnt/<name>` (AgentCore's rule: one level under /mnt).
    pub mount_path: String,
    /// The most a session's files may take, in MiB. Default 1 024.
    pub quota_mb: Option<u64>,
    /// Unused this long, a session's files are deleted. Default 14 days, 1..=365.
    pub expiry_days: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileVersion {
    /// 1..=99 999.
    pub version: u32,
    #[serde(default)]
    pub backend: FileBackend,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntimeEndpoint {
    /// `[a-zA-Z][a-zA-Z0-9_]{0,47}`; `DEFAULT` is reserved.
    pub name: String,
    /// Every new session on this endpoint runs this version…
    pub version: Option<u32>,
    /// …or new sessions are split between versions by weight (canary / blue-green).
    pub split: Option<Vec<FileSplit>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSplit {
    pub version: u32,
    pub weight: u32,
}

/// Inbound authentication of a runtime: one mode, as in AgentCore.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileAuth {
    /// `none`, `jwt` or `sigv4`. Default `none`.
    pub mode: String,

    /// jwt: the identity provider's `…/.well-known/openid-configuration`.
    pub discovery_url: Option<String>,
    /// jwt: accepted `client_id` claims (Cognito access tokens carry no `aud`).
    pub allowed_clients: Option<Vec<String>>,
    /// jwt: accepted `aud` values.
    pub allowed_audiences: Option<Vec<String>>,
    /// jwt: at least one of these must be in the token's `scope`.
    pub allowed_scopes: Option<Vec<String>>,
    /// jwt: custom claims the token must carry.
    pub required_claims: Option<Vec<FileClaim>>,
    /// jwt: clock leeway for `exp`/`nbf`, seconds. Default 60.
    pub leeway_secs: Option<u64>,
    /// jwt: how often the signing keys are fetched again, seconds. Default 300.
    pub jwks_refresh_secs: Option<u64>,
    /// jwt: least time between two fetches caused by unknown `kid`s, seconds. Default 10.
    pub jwks_min_refetch_secs: Option<u64>,

    /// sigv4: the regions requests may be signed for. Default `["us-east-1"]`.
    pub regions: Option<Vec<String>>,
    /// sigv4: the credentials file (relative paths are relative to this config file).
    pub credentials_file: Option<String>,
    /// sigv4: how far `X-Amz-Date` may be from now, seconds. Default 300.
    pub max_clock_skew_secs: Option<u64>,
    /// sigv4: request bodies are held in memory up to this size while their hash is checked, then
    /// in a temporary file. Default 1 048 576.
    pub body_memory_bytes: Option<u64>,
}

impl Default for FileAuth {
    fn default() -> Self {
        Self {
            mode: "none".into(),
            discovery_url: None,
            allowed_clients: None,
            allowed_audiences: None,
            allowed_scopes: None,
            required_claims: None,
            leeway_secs: None,
            jwks_refresh_secs: None,
            jwks_min_refetch_secs: None,
            regions: None,
            credentials_file: None,
            max_clock_skew_secs: None,
            body_memory_bytes: None,
        }
    }
}

/// A custom claim a JWT must carry, with exactly one way to match it (AgentCore's
/// `customClaims`): `equals` a string, `contains` a string (the claim is a list), or
/// `contains_any` of a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClaim {
    pub name: String,
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub contains_any: Option<Vec<String>>,
}

/// The SigV4 credentials file: `[[credentials]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredentials {
    #[serde(default)]
    pub credentials: Vec<FileCredential>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The principal requests signed with this key act as.
    pub principal: String,
}

impl std::fmt::Debug for FileCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredential")
            .field("access_key_id", &self.access_key_id)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Default for FileRuntime {
    fn default() -> Self {
        Self {
            name: "default".into(),
            protocol: "http".into(),
            protocol_port: None,
            allowed_ports: Vec::new(),
            resumable_streams: false,
            on_idle: "end".into(),
            egress: None,
            suspend_retention_secs: 86_400,
            snapshot_budget_mb: 10_240,
            protocol_path: None,
            user_id_principals: Vec::new(),
            park_ms: 0,
            request_header_allowlist: Vec::new(),
            auth: FileAuth::default(),
            backend: None,
            versions: Vec::new(),
            idle_timeout_secs: None,
            max_lifetime_secs: None,
            endpoints: Vec::new(),
            filesystems: Vec::new(),
        }
    }
}

/// Where a runtime's backends come from. The keys that apply depend on `provider`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileBackend {
    /// `process` (spawn one backend per session), `sandbox` (the same, in its own namespaces
    /// and cgroup), `microvm` (a QEMU microVM per session) or `static` (a pool of deployed
    /// runtimes). Default `process`.
    pub provider: String,

    /// process: the program to run. Default: this `sessiongate` binary.
    pub command: Option<String>,
    /// process: its arguments; `{http}`, `{mcp}` and `{a2a}` become the loopback addresses the
    /// gateway chose for it. Default `["agent", "--http", "{http}", "--mcp", "{mcp}", "--a2a", "{a2a}"]`.
    pub args: Option<Vec<String>>,
    /// process: extra environment variables (the same placeholders apply).
    pub env: Option<std::collections::BTreeMap<String, String>>,
    /// process: how long a new backend may take to answer `GET /ping` with 200. Default 10 000.
    pub ready_timeout_ms: Option<u64>,
    /// process: after SIGTERM, how long before SIGKILL. Default 2 000.
    pub stop_timeout_ms: Option<u64>,
    /// process, sandbox, microvm: backends kept started and ready, so a new session's first
    /// byte waits for no spawn or boot. Each serves one session and is destroyed after it. 0..=64,
    /// default 0.
    pub warm_pool: Option<u32>,

    /// sandbox: memory limit in MiB (cgroup `memory.max` / `memory.limit_in_bytes`); the sandbox
    /// is OOM-killed past it. Default 1 024. microvm: the guest's RAM. Default 256.
    pub memory_mb: Option<u64>,
    /// sandbox: CPU limit in percent of one core (cgroup CFS quota). Default 100.
    pub cpu_percent: Option<u32>,
    /// sandbox: at most this many processes and threads. Default 256.
    pub max_pids: Option<u32>,
    /// sandbox: internet access through user-mode networking (`slirp4netns`), the host's
    /// loopback excluded. Default true; false leaves the sandbox only its own loopback.
    /// microvm: the same through `passt` (the host's loopback excluded); false leaves the
    /// guest no network but the gateway's forwarded contract ports (QEMU `restrict=on`).
    pub egress: Option<bool>,
    /// sandbox: host paths visible read-only inside (everything else is absent). Default
    /// `["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]`; the command is added by itself.
    pub read_only: Option<Vec<String>>,

    /// microvm: the guest kernel, an uncompressed `vmlinux` with a PVH entry (see
    /// `scripts/build-guest`). Required.
    pub kernel: Option<String>,
    /// microvm: the guest initramfs (see `scripts/build-guest`). Required.
    pub initrd: Option<String>,
    /// microvm: guest vCPUs. Default 1.
    pub vcpus: Option<u32>,
    /// microvm: `auto` (KVM when it really works, else software emulation), `kvm` or `tcg`.
    /// Default `auto`.
    pub accel: Option<String>,
    /// microvm: boot one template guest, snapshot it, and start each session's guest from the
    /// snapshot. Default true.
    pub snapshot: Option<bool>,
    /// microvm: the QEMU binary. Default `qemu-system-x86_64`.
    pub qemu: Option<String>,

    /// static: the deployed runtimes, one table each.
    pub endpoints: Option<Vec<FileEndpoint>>,
    /// static: sessions one endpoint serves at once. Default 1 (one isolated backend per session).
    pub sessions_per_endpoint: Option<u32>,
}

impl Default for FileBackend {
    fn default() -> Self {
        Self {
            provider: "process".into(),
            command: None,
            args: None,
            env: None,
            ready_timeout_ms: None,
            stop_timeout_ms: None,
            warm_pool: None,
            memory_mb: None,
            cpu_percent: None,
            max_pids: None,
            read_only: None,
            egress: None,
            kernel: None,
            initrd: None,
            vcpus: None,
            accel: None,
            snapshot: None,
            qemu: None,
            endpoints: None,
            sessions_per_endpoint: None,
        }
    }
}

/// One deployed runtime of a static pool: its protocol ports as `IP:port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEndpoint {
    pub http: String,
    pub mcp: Option<String>,
    pub a2a: Option<String>,
}
