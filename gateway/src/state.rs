//! What every listener shares, and the per-request context.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use auth::Principal;
use bytes::Bytes;
use conf::{BackendSpec, Config};
use metrics_exporter_prometheus::PrometheusHandle;
use routing::{AdmissionLimits, BackendProvider, SessionDirectory, SessionId, Ticket};

use crate::authn::Authenticator;
use crate::error::GatewayError;
use crate::route::{Route, Target};
use crate::ws::FrameMeter;

/// The gateway's state, one per process, shared by every listener and the admin service.
pub struct Shared {
    pub config: Arc<Config>,
    pub directory: SessionDirectory,
    /// One provider per runtime version: `providers[runtime][version]`.
    pub providers: Vec<Vec<BackendProvider>>,
    /// One authenticator per runtime, by runtime index.
    pub authenticators: Vec<Authenticator>,
    /// Requests being handled now, sessions or not (drain waits for zero).
    inflight: AtomicUsize,
    /// Set on SIGTERM/SIGINT: new requests are refused while in-flight ones finish.
    pub draining: AtomicBool,
    pub metrics: PrometheusHandle,
}

impl Shared {
    pub fn new(config: Config, self_exe: &Path, metrics: PrometheusHandle) -> Self {
        let providers = config
            .runtimes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                r.versions
                    .iter()
                    .map(|v| {
                        let mut spec = v.backend.clone();
                        if let BackendSpec::Process(p) = &mut spec {
                            // As AgentCore does: the agent learns the URL clients reach it at
                            // (A2A agent cards advertise it), unless the runtime sets its own.
                            p.env
                                .entry("AGENTCORE_RUNTIME_URL".into())
                                .or_insert_with(|| public_url(&config, i));
                        }
                        BackendProvider::new(&spec, self_exe)
                    })
                    .collect()
            })
            .collect();
        let authenticators = config
            .runtimes
            .iter()
            .map(|r| Authenticator::new(&r.auth))
            .collect();
        Self {
            authenticators,
            directory: SessionDirectory::new(AdmissionLimits::from(&config.limits)),
            config: Arc::new(config),
            providers,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn runtime_name(&self, index: usize) -> &str {
        self.config
            .runtimes
            .get(index)
            .map_or("?", |r| r.name.as_str())
    }
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

/// One request's state, from `request_filter` to `logging` (Pingora's `CTX`).
pub struct RequestCtx {
    pub started: Instant,
    pub route: Option<Route>,
    pub target: Option<Target>,
    pub session_id: Option<SessionId>,
    pub request_id: String,
    /// Set once authentication succeeded.
    pub principal: Option<Principal>,
    /// A SigV4 body read and verified in the request stage, for the proxy to send.
    pub verified_body: Option<Bytes>,
    /// Holds the session in flight; dropped with the context, after `logging`.
    pub ticket: Option<Ticket>,
    pub peer: Option<SocketAddr>,
    pub request_body_bytes: u64,
    /// The failure the client is told about, when there is one.
    pub error: Option<GatewayError>,
    /// The backend failed under this request: the session is ended after it.
    pub backend_failed: bool,
    /// The stream was ended for lasting longer than `stream_timeout_secs`.
    pub stream_expired: bool,
    /// Follows the client's WebSocket frames once the connection is upgraded.
    pub ws_meter: Option<FrameMeter>,
    _inflight: InflightGuard,
}

impl RequestCtx {
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        Self {
            started: Instant::now(),
            route: None,
            target: None,
            session_id: None,
            request_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            principal: None,
            verified_body: None,
            ticket: None,
            peer: None,
            request_body_bytes: 0,
            error: None,
            backend_failed: false,
            stream_expired: false,
            ws_meter: None,
            _inflight: InflightGuard(Arc::clone(shared)),
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_ref().map(SessionId::as_str)
    }
}

struct InflightGuard(Arc<Shared>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
