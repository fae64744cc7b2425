//! `sessiongate host`: a backend host. It owns the spawned backends (process, sandbox, microVM)
//! of its machine and their warm pools, registers itself in Redis with a heartbeat and its
//! capacity, and serves its backends to every replica through a relay on `host.listen`:
//!
//! - `POST /_sessiongate/place`, `/_sessiongate/release` and `/_sessiongate/suspend`
//!   (`hibernate`): the control calls, signed with
//!   the cluster's secret over time, path and body (±30 s);
//! - any other request: relayed to the backend named by `x-sessiongate-backend` (port
//!   `x-sessiongate-port`) if `x-sessiongate-auth` is that backend's token, with those headers
//!   removed. Backends stay on loopback or Unix sockets, unauthenticated, as on one machine;
//!   only the relay faces the network (a relay rather than backends bound on the host's address:
//!   sandboxes and microVMs have no such address, and the relay is where the secret is checked).
//!
//! A backend whose session ended anywhere (or was never recorded) is released within a second;
//! one that exits ends its session. When the host stops, its sessions end at once; when it dies,
//! its heartbeat stops and a replica ends them within two seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use conf::{Config, Protocol};
use dashmap::DashMap;
use pingora::prelude::*;
use pingora::server::ShutdownWatch;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::{BackgroundService, background_service};
use routing::cluster::{self, HostInfo, RedisDirectory, auth};
use routing::provider::addr::{RELAY_AUTH, RELAY_BACKEND, RELAY_PORT};
use routing::provider::{Backend, BackendAddr, SlotRegistry};

use crate::state::Snapshot;

mod hibernate;

/// A backend not yet recorded in Redis this long after its placement is an orphan.
const RECORD_GRACE: Duration = Duration::from_secs(5);
/// How often backends are checked against the session records.
const GC_INTERVAL: Duration = Duration::from_secs(1);
/// How often snapshot directories are checked against the session records.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(2);
/// A control call's body at most.
const MAX_CONTROL_BODY: usize = 64 * 1024;

struct Placed {
    backend: Backend,
    /// Where its commands and shells run (`crate::exec_conn`).
    exec: Option<routing::provider::ExecAt>,
    session: String,
    incarnation: u64,
    since: Instant,
}

struct HostState {
    redis: RedisDirectory,
    snapshot: Snapshot,
    info: HostInfo,
    backends: DashMap<String, Placed>,
}

pub fn run(
    mut config: Config,
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let Some(cluster) = config.cluster.clone() else {
        anyhow::bail!(
            "a host needs `[cluster] directory = \"redis\"` in its config (the replicas' Redis and secret)"
        );
    };
    if let Some(l) = listen {
        config.host.listen = l;
        config.host.advertise = advertise.unwrap_or(l);
    }
    if let Some(a) = advertise {
        config.host.advertise = a;
    }
    anyhow::ensure!(
        !config.host.advertise.ip().is_unspecified(),
        "set --advertise (or host.advertise): replicas cannot connect to {}",
        config.host.advertise
    );
    let redis = RedisDirectory::new(&cluster).map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = HostInfo {
        id: config
            .host
            .id
            .clone()
            .unwrap_or_else(|| redis.node().to_owned()),
        addr: config.host.advertise,
        capacity: config.host.capacity,
        load: 0,
    };
    let listen = config.host.listen;
    let threads = config.server.threads;
    let self_exe = std::env::current_exe()?;
    let snapshot = Snapshot::build(config, &self_exe, &SlotRegistry::default(), None);
    let state = Arc::new(HostState {
        redis,
        snapshot,
        info,
        backends: DashMap::new(),
    });

    let mut server = Server::new_with_opt_and_conf(
        Opt::default(),
        ServerConf {
            threads,
            // A stopping host ends its sessions at once (their streams with them): Pingora's
            // default grace (a minute, then five for in-flight requests) would only delay that.
            grace_period_seconds: Some(1),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        },
    );
    server.bootstrap();
    let mut relay = pingora::proxy::http_proxy_service(
        &server.configuration,
        HostRelay {
            state: Arc::clone(&state),
        },
    );
    relay.add_tcp(&listen.to_string());
    server.add_service(relay);
    server.add_service(background_service(
        "host-upkeep",
        Upkeep {
            state: Arc::clone(&state),
        },
    ));
    tracing::info!(host = %state.info.id, %listen, advertise = %state.info.addr, capacity = state.info.capacity, "sessiongate host serving");
    server.run(pingora::server::RunArgs::default());
    Ok(())
}

struct HostRelay {
    state: Arc<HostState>,
}

#[async_trait]
impl ProxyHttp for HostRelay {
    type CTX = Option<BackendAddr>;

    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let path = session.req_header().uri.path().to_owned();
        if path == crate::exec_conn::RELAY_EXEC_PATH {
            self.exec(session).await?;
            return Ok(true);
        }
        if path.starts_with("/_sessiongate/") {
            let (status, body) = self.control(session, &path).await;
            respond(session, status, &body).await?;
            return Ok(true);
        }
        let (backend, port) = match self.relayed(session.req_header()) {
            Ok(b) => b,
            Err((status, message)) => {
                respond(session, status, &serde_json::json!({ "message": message })).await?;
                return Ok(true);
            }
        };
        let backend = backend.as_str();
        let port = match port.as_deref() {
            Some("mcp") => Protocol::Mcp,
            Some("a2a") => Protocol::A2a,
            Some(_) => Protocol::Http,
            None => {
                let body = serde_json::json!({ "message": "not a relayed request" });
                respond(session, 403, &body).await?;
                return Ok(true);
            }
        };
        *ctx = self
            .state
            .backends
            .get(backend)
            .and_then(|p| p.backend.addr(port).cloned());
        if ctx.is_none() {
            let body = serde_json::json!({ "message": "no such backend on this host" });
            respond(session, 404, &body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = match ctx {
            Some(BackendAddr::Tcp(a)) => HttpPeer::new(*a, false, String::new()),
            Some(BackendAddr::Unix(p)) => {
                let path = p.to_str().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "backend socket path is not UTF-8")
                })?;
                HttpPeer::new_uds(path, false, String::new())?
            }
            _ => return Error::e_explain(ErrorType::InternalError, "no backend"),
        };
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        // The replica holds the request's deadlines; the relay only carries the bytes.
        peer.options.read_timeout = None;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        for name in [RELAY_BACKEND, RELAY_PORT, RELAY_AUTH] {
            upstream.remove_header(name);
        }
        Ok(())
    }
}

impl HostRelay {
    /// The backend a relayed request names (and the port it asks for), if its token is that
    /// backend's: the one check every relayed request passes.
    fn relayed(
        &self,
        req: &RequestHeader,
    ) -> std::result::Result<(String, Option<String>), (u16, &'static str)> {
        let header = |name| req.headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(backend), Some(token)) = (header(RELAY_BACKEND), header(RELAY_AUTH)) else {
            return Err((403, "not a relayed request"));
        };
        if !auth::same(
            token,
            &auth::relay_token(self.state.redis.secret(), backend),
        ) {
            return Err((403, "bad relay token"));
        }
        Ok((backend.to_owned(), header(RELAY_PORT).map(str::to_owned)))
    }

    /// A replica's connection to a backend's commands and shells: checked as a relayed
    /// request, upgraded, then carried to the backend's exec socket as is.
    async fn exec(&self, session: &mut Session) -> Result<()> {
        let backend = match self.relayed(session.req_header()) {
            Ok((b, _)) => b,
            Err((status, message)) => {
                return respond(session, status, &serde_json::json!({ "message": message })).await;
            }
        };
        let backend = backend.as_str();
        let found = self.state.backends.get(backend).map(|p| {
            let pid = p
                .backend
                .handed()
                .and_then(|h| h.process)
                .map(|(pid, _)| pid);
            (p.exec.clone(), pid)
        });
        let Some((Some(at), pid)) = found else {
            return respond(
                session,
                404,
                &serde_json::json!({ "message": "no such backend on this host" }),
            )
            .await;
        };
        let conn = match crate::exec_conn::connect(at, pid).await {
            Ok(c) => c,
            Err(e) => {
                let body = serde_json::json!({ "message": format!("exec socket: {e}") });
                return respond(session, 502, &body).await;
            }
        };
        let mut head = ResponseHeader::build(101, Some(2))?;
        head.insert_header("upgrade", "sessiongate-exec")?;
        head.insert_header("connection", "Upgrade")?;
        session.write_response_header(Box::new(head), false).await?;
        crate::exec_conn::carry(session, conn).await;
        Ok(())
    }

    /// A signed control call: place a backend for a session, or release one.
    async fn control(&self, session: &mut Session, path: &str) -> (u16, serde_json::Value) {
        let message = |m: &str| serde_json::json!({ "message": m });
        let auth = session
            .req_header()
            .headers
            .get(RELAY_AUTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_CONTROL_BODY => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => return (413, message("control body too large")),
                Ok(None) => break,
                Err(_) => return (400, message("cannot read the body")),
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if !auth::control_ok(self.state.redis.secret(), &auth, path, &body, now) {
            return (403, message("bad or expired control signature"));
        }
        let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
            return (400, message("the body is not JSON"));
        };
        match path {
            cluster::PLACE_PATH => self.place(&req).await,
            cluster::RELEASE_PATH => {
                if let Some((_, p)) = req["backend"]
                    .as_str()
                    .and_then(|b| self.state.backends.remove(b))
                {
                    tokio::spawn(async move { p.backend.release().await });
                }
                (200, serde_json::json!({}))
            }
            cluster::SUSPEND_PATH => hibernate::suspend(&self.state, &req).await,
            _ => (404, message("no such control call")),
        }
    }

    async fn place(&self, req: &serde_json::Value) -> (u16, serde_json::Value) {
        let message = |m: String| serde_json::json!({ "message": m });
        let state = &self.state;
        let (Some(sid), Some(runtime), Some(version)) = (
            req["session"].as_str(),
            req["runtime"].as_str(),
            req["version"].as_u64().and_then(|v| u32::try_from(v).ok()),
        ) else {
            return (
                400,
                message("session, runtime and version are required".into()),
            );
        };
        // A resume is a session admitted already (and, on a host-local root, one only this host
        // can restore): it may exceed the capacity rather than be lost.
        if state.backends.len() >= state.info.capacity as usize && req.get("resume").is_none() {
            return (503, message(format!("host {} is full", state.info.id)));
        }
        let provider = state
            .snapshot
            .config
            .runtime_index(runtime)
            .and_then(|i| state.snapshot.providers.get(i, version));
        let Some(provider) = provider else {
            return (
                404,
                message(format!("no runtime `{runtime}` version {version} here")),
            );
        };
        let placed = match req.get("resume") {
            Some(resume) => hibernate::resume(state, provider, runtime, resume).await,
            None => provider.place().await.map_err(|e| e.to_string()),
        };
        let backend = match placed {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(session = sid, error = %e, "backend placement failed");
                return (500, message(e));
            }
        };
        backend.assign(sid);
        let principal = req["principal"].as_str().unwrap_or_default();
        if let Err(e) = backend.check_out_storage(principal, sid).await {
            tracing::warn!(session = sid, error = %e, "session storage check-out failed");
            return (500, message(format!("session storage: {e}")));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let answer = serde_json::json!({
            "backend": id,
            "mcp": backend.addr(Protocol::Mcp).is_some(),
            "a2a": backend.addr(Protocol::A2a).is_some(),
            "describe": backend.describe(),
        });
        let exec = provider.exec_at(&backend);
        state.backends.insert(
            id,
            Placed {
                backend,
                exec,
                session: sid.to_owned(),
                incarnation: req["incarnation"].as_u64().unwrap_or(0),
                since: Instant::now(),
            },
        );
        (200, answer)
    }
}

async fn respond(session: &mut Session, status: u16, body: &serde_json::Value) -> Result<()> {
    let body = Bytes::from(body.to_string());
    let mut h = ResponseHeader::build(status, Some(2))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

/// The heartbeat, the warm pools, and the check of every backend against its session record.
struct Upkeep {
    state: Arc<HostState>,
}

#[async_trait]
impl BackgroundService for Upkeep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let state = &self.state;
        let mut beat = tokio::time::interval(cluster::HEARTBEAT_INTERVAL);
        let mut gc = tokio::time::interval(GC_INTERVAL);
        let mut reclaim = tokio::time::interval(RECLAIM_INTERVAL);
        let ends = listen_for_ends(state);
        tokio::pin!(ends);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                () = &mut ends => {}
                _ = beat.tick() => {
                    let info = HostInfo { load: state.backends.len() as u32, ..state.info.clone() };
                    if let Err(e) = state.redis.heartbeat(&info).await {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                }
                _ = gc.tick() => {
                    for (_, _, provider) in state.snapshot.providers.iter() {
                        provider.refill();
                    }
                    collect(state).await;
                }
                _ = reclaim.tick() => hibernate::reclaim(state).await,
            }
        }
        // Stopping: every session here ends now (not in two seconds, when the heartbeat would
        // have expired), then the backends stop.
        let placed: Vec<(String, Placed)> = state
            .backends
            .iter()
            .map(|e| e.key().clone())
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|k| state.backends.remove(&k))
            .collect();
        for (id, p) in &placed {
            let _ = state
                .redis
                .end_where(&p.session, None, Some("shutdown"), None, Some(id))
                .await;
        }
        let mut stops = tokio::task::JoinSet::new();
        for (_, p) in placed {
            stops.spawn(async move { p.backend.release().await });
        }
        while stops.join_next().await.is_some() {}
        tracing::info!("host stopped; its backends are released");
    }
}

/// Releases a backend as soon as any replica announces its session's end (the once-a-second
/// check catches what a disconnection missed).
async fn listen_for_ends(state: &HostState) {
    use futures_util::StreamExt;
    loop {
        if let Ok(pubsub) = state.redis.subscribe().await {
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let Some((session, incarnation, reason)) = cluster::parse_end(&payload) else {
                    continue;
                };
                if reason == routing::EndReason::Suspended.as_str() {
                    continue; // its suspension call takes the backend
                }
                let ours: Vec<String> = state
                    .backends
                    .iter()
                    .filter(|e| e.session == session && e.incarnation == incarnation)
                    .map(|e| e.key().clone())
                    .collect();
                for id in ours {
                    release(state, &id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Releases backends whose session ended (or was never recorded), and ends the session of a
/// backend that exited.
async fn collect(state: &HostState) {
    let mut exited: Vec<(String, String, &str)> = Vec::new();
    let mut check = Vec::new();
    for e in state.backends.iter() {
        let p = e.value();
        if p.backend.has_exited() {
            let reason = if p.backend.oom_killed() {
                "out_of_memory"
            } else {
                "backend_exited"
            };
            exited.push((e.key().clone(), p.session.clone(), reason));
        } else if p.since.elapsed() >= RECORD_GRACE {
            check.push((p.session.clone(), e.key().clone()));
        }
    }
    for (id, session, reason) in exited {
        let _ = state
            .redis
            .end_where(&session, None, Some(reason), None, Some(&id))
            .await;
        release(state, &id);
    }
    if check.is_empty() {
        return;
    }
    let Ok(placed) = state.redis.still_placed(&state.info.id, &check).await else {
        return; // Redis unreachable: keep everything until it answers.
    };
    for ((_, id), still) in check.iter().zip(placed) {
        if !still {
            release(state, id);
        }
    }
}

fn release(state: &HostState, id: &str) {
    if let Some((_, p)) = state.backends.remove(id) {
        tracing::info!(backend = id, session = %p.session, what = %p.backend.describe(), "backend released");
        tokio::spawn(async move { p.backend.release().await });
    }
}

/// `sessiongate host` arguments.
#[derive(clap::Args)]
pub struct HostArgs {
    /// TOML config file: `[cluster]` (Redis, secret), `[host]` and the runtimes it serves.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override `host.listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Override `host.advertise`.
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
}
