//! What every listener shares: the config snapshot, the session directory, the counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use conf::{BackendSpec, Config, ConfigErrors};
use metrics_exporter_prometheus::PrometheusHandle;
use routing::placement::Providers;
use routing::provider::SlotRegistry;
use routing::{AdmissionLimits, SessionDirectory};

use crate::authn::Authenticator;
use crate::front::Connections;

/// Everything derived from one config: swapped as a whole on reload. A request takes the
/// snapshot current when it arrives and keeps it to its end.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// One provider per runtime version; a reload keeps the provider (and its warm pool) of a
    /// version whose backend spec did not change.
    pub providers: Providers,
    /// One authenticator per runtime.
    pub authenticators: Vec<Authenticator>,
    /// Runtime names, shared with the sessions that belong to them.
    pub runtime_names: Vec<Arc<str>>,
    /// The request metrics' handles for this snapshot's runtimes.
    pub metrics: crate::observe::RequestMetrics,
}

impl Snapshot {
    pub(crate) fn build(
        config: Config,
        self_exe: &Path,
        slots: &SlotRegistry,
        previous: Option<&Snapshot>,
    ) -> Self {
        let specs: Vec<Vec<BackendSpec>> = config
            .runtimes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.versions
                    .iter()
                    .map(|v| {
                        let mut spec = v.backend.clone();
                        // As AgentCore does: the agent learns the URL clients reach it at
                        // (A2A agent cards advertise it), unless the runtime sets its own.
                        let env = match &mut spec {
                            BackendSpec::Process(p) => Some(&mut p.env),
                            BackendSpec::Sandbox(s) => Some(&mut s.process.env),
                            BackendSpec::Microvm(m) => Some(&mut m.env),
                            BackendSpec::Static(_) => None,
                        };
                        if let Some(env) = env {
                            env.entry("AGENTCORE_RUNTIME_URL".into())
                                .or_insert_with(|| public_url(&config, i));
                        }
                        spec
                    })
                    .collect()
            })
            .collect();
        let providers = Providers::new(
            &config,
            specs,
            self_exe,
            slots,
            previous.map(|p| &p.providers),
        );
        Self {
            authenticators: config
                .runtimes
                .iter()
                .map(|r| Authenticator::new(&r.auth))
                .collect(),
            runtime_names: config
                .runtimes
                .iter()
                .map(|r| Arc::from(r.name.as_str()))
                .collect(),
            providers,
            metrics: Default::default(),
            config: Arc::new(config),
        }
    }

    pub fn runtime_name(&self, index: usize) -> &str {
        self.runtime_names.get(index).map_or("?", |n| n)
    }
}

/// Listener addresses given on the command line; they win over the file's on every (re)load.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenerOverrides {
    pub http: Option<SocketAddr>,
    pub mcp: Option<SocketAddr>,
    pub a2a: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

impl ListenerOverrides {
    pub fn apply(&self, l: &mut conf::Listeners) {
        for (slot, over) in [
            (&mut l.http, self.http),
            (&mut l.mcp, self.mcp),
            (&mut l.a2a, self.a2a),
            (&mut l.admin, self.admin),
        ] {
            if let Some(addr) = over {
                *slot = addr;
            }
        }
    }
}

/// The gateway's state, one per process, shared by every listener and the admin service.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    pub directory: SessionDirectory,
    /// Requests being handled now, sessions or not (drain waits for zero).
    inflight: AtomicUsize,
    /// Set on SIGTERM/SIGINT: new requests are refused while in-flight ones finish.
    pub draining: AtomicBool,
    pub metrics: PrometheusHandle,
    /// Trace export, when configured.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// The config file, when there is one (the embedded default has nothing to reload).
    pub config_path: Option<PathBuf>,
    overrides: ListenerOverrides,
    self_exe: PathBuf,
    slots: SlotRegistry,
    /// Client connections, against `limits.max_connections`.
    pub connections: Connections,
    /// Keys what must not be computable from outside (implicit MCP session ids). Random per
    /// process (handed on by a graceful upgrade); on a replica the cluster's shared secret, so
    /// every replica computes the same.
    secret: OnceLock<Vec<u8>>,
    /// A graceful upgrade's handover, on the old process's side.
    pub handover: crate::handover::Handover,
    /// Workload access tokens (`[identity]`), keyed by the secret above.
    pub signer: crate::identity::Signer,
    /// Room for parked requests (`limits.max_parked_requests`, `crate::parking`).
    pub parking: Arc<tokio::sync::Semaphore>,
    /// Resumable streams' replay buffers (`crate::replay`).
    pub streams: crate::replay::Streams,
    /// The gateway's own requests to backends (resumable streams).
    pub connector: pingora::connectors::http::Connector,
    /// The dashboard's figures of the last minutes, and the config it shows.
    pub stats: crate::dashboard::stats::Stats,
    pub config_info: std::sync::Mutex<crate::dashboard::ConfigInfo>,
}

/// How a reload was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReloadOptions {
    /// The operator said explicitly that runtimes may lose authentication (admin API).
    pub allow_auth_downgrade: bool,
}

/// Why a reload was refused.
#[derive(Debug)]
pub enum ReloadError {
    /// The file is not a valid config.
    Invalid(ConfigErrors),
    /// The file would take authentication away from runtimes (each line says which).
    AuthDowngrade(Vec<String>),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::AuthDowngrade(lines) => write!(
                f,
                "it would weaken authentication ({}); reload with `sessiongate reload \
                 --allow-auth-downgrade` if that is meant",
                lines.join("; ")
            ),
        }
    }
}

impl Shared {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        overrides: ListenerOverrides,
        self_exe: PathBuf,
        metrics: PrometheusHandle,
    ) -> Result<Self, String> {
        let telemetry = match crate::telemetry::Telemetry::start(&config.telemetry) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up trace export; tracing is off");
                None
            }
        };
        let slots = SlotRegistry::default();
        let limits = AdmissionLimits::from(&config.limits);
        let parking = Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_parked_requests,
        ));
        let (directory, secret) = match &config.cluster {
            None => (SessionDirectory::new(limits), OnceLock::new()),
            Some(c) => match routing::cluster::RedisDirectory::new(c) {
                Ok(redis) => (
                    SessionDirectory::replica(limits, Arc::new(redis)),
                    OnceLock::from(c.secret.clone()),
                ),
                Err(e) => return Err(e.to_string()),
            },
        };
        let connections = Connections::new(config.limits.max_connections);
        crate::hibernate::adopt(&directory, &config);
        let snapshot = Snapshot::build(config, &self_exe, &slots, None);
        Ok(Self {
            snapshot: RwLock::new(Arc::new(snapshot)),
            directory,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            metrics,
            telemetry,
            config_info: std::sync::Mutex::new(crate::dashboard::ConfigInfo::read(
                config_path.as_deref(),
            )),
            config_path,
            overrides,
            self_exe,
            slots,
            connections,
            secret,
            handover: Default::default(),
            signer: Default::default(),
            parking,
            streams: Default::default(),
            connector: pingora::connectors::http::Connector::new(None),
            stats: Default::default(),
        })
    }

    /// The workload access token for one request, when `[identity]` asks for them.
    pub fn workload_token(
        &self,
        config: &conf::Config,
        claims: &crate::identity::Claims<'_>,
    ) -> Option<std::sync::Arc<str>> {
        let id = config.identity.as_ref()?;
        self.signer.token(self.secret(), id, unix_secs(), claims)
    }

    /// The workload tokens' key set; `None` without `[identity]`.
    pub fn jwks(&self, config: &conf::Config) -> Option<serde_json::Value> {
        let id = config.identity.as_ref()?;
        Some(self.signer.jwks(self.secret(), id, unix_secs()))
    }

    pub fn secret(&self) -> &[u8] {
        self.secret.get_or_init(|| random_secret().to_vec())
    }

    /// Takes the old process's secret in a graceful upgrade (before this one serves anything),
    /// so implicit MCP session ids stay the same.
    pub fn adopt_secret(&self, secret: Vec<u8>) {
        let _ = self.secret.set(secret);
    }

    /// The config snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reads the config file again; if it is valid, new requests use it from now on (requests in
    /// flight finish under theirs, sessions keep their backends). A file with errors, or one
    /// that would take authentication away from a runtime (unless `options` allow it), changes
    /// nothing. What only a restart can change (listeners, server threads) is kept and reported.
    pub fn reload(&self, options: ReloadOptions) -> Result<Vec<String>, ReloadError> {
        let Some(path) = &self.config_path else {
            return Ok(vec!["no config file: nothing to reload".into()]);
        };
        let mut config = conf::load(path).map_err(ReloadError::Invalid)?;
        self.overrides.apply(&mut config.listeners);
        let old = self.snapshot();
        let weakened = old.config.auth_weakened_by(&config);
        if !weakened.is_empty() && !options.allow_auth_downgrade {
            return Err(ReloadError::AuthDowngrade(weakened));
        }
        let mut notes: Vec<String> = weakened
            .into_iter()
            .map(|w| format!("authentication weakened, as the operator allowed: {w}"))
            .collect();
        if config.listeners != old.config.listeners {
            notes.push(format!(
                "listener addresses changed ({:?} → {:?}): they change only through a restart or a \
                 graceful upgrade; the old ones stay",
                old.config.listeners, config.listeners
            ));
            config.listeners = old.config.listeners;
        }
        if config.cluster != old.config.cluster {
            notes
                .push("[cluster] changes only through a restart; the running settings stay".into());
            config.cluster = old.config.cluster.clone();
        }
        if config.server.threads != old.config.server.threads {
            notes.push("server.threads changes only through a restart".into());
        }
        self.directory
            .admission()
            .set_limits(AdmissionLimits::from(&config.limits));
        self.connections.set_max(config.limits.max_connections);
        let fresh = Arc::new(Snapshot::build(
            config,
            &self.self_exe,
            &self.slots,
            Some(&old),
        ));
        match self.snapshot.write() {
            Ok(mut s) => *s = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(notes)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// 32 bytes from the kernel's generator (a fresh key per process).
fn random_secret() -> [u8; 32] {
    let mut key = [0u8; 32];
    // SAFETY: writes at most `key.len()` bytes into `key`.
    let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
    if usize::try_from(n).ok() != Some(key.len()) {
        // Not reachable on Linux ≥ 3.17 once the pool is initialised; never run keyless.
        let fallback = uuid::Uuid::new_v4().into_bytes();
        let again = uuid::Uuid::new_v4().into_bytes();
        key[..16].copy_from_slice(&fallback);
        key[16..].copy_from_slice(&again);
    }
    key
}

/// Where A2A clients reach runtime `index`: the A2A listener for the default runtime, the AWS
/// face (`…/runtimes/{name}/invocations/`) for the others. A wildcard listen address is shown
/// as loopback.
fn public_url(config: &Config, index: usize) -> String {
    let shown = |mut addr: std::net::SocketAddr| {
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr
    };
    if index == config.default_runtime {
        format!("http://{}/", shown(config.listeners.a2a))
    } else {
        let name = &config.runtimes[index].name;
        format!(
            "http://{}/runtimes/{name}/invocations/",
            shown(config.listeners.http)
        )
    }
}

/// Counts a request as in flight while it lives (drain waits for the count to reach zero).
pub struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(shared))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
