//! Assembles and runs the Pingora server: three protocol listeners sharing one [`Shared`], the
//! admin listener, the lifecycle sweep, and a shutdown that drains before it stops backends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conf::{Config, Protocol};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use routing::directory::EndReason;
use routing::lifecycle::{LifecyclePolicy, sweep};
use tokio::signal::unix::{SignalKind, signal};

use crate::admin::AdminApp;
use crate::front::Front;
use crate::proxy::Gateway;
use crate::state::{ListenerOverrides, Shared, Snapshot};

/// The longest timeout kept on Pingora's fast timer (the 30 s body-read gap at most).
const FAST_TIMER_MAX_SECS: u64 = 30;

pub fn run(
    upgrade: bool,
    config: Config,
    config_path: Option<PathBuf>,
    overrides: ListenerOverrides,
) -> anyhow::Result<()> {
    let metrics = crate::observe::install_recorder()?;
    let self_exe = std::env::current_exe()?;
    let listeners = config.listeners;
    let server_conf = ServerConf {
        threads: config.server.threads,
        // SIGTERM/SIGINT drain in `DrainThenStop` before Pingora is told to stop; the second of
        // grace lets requests in flight finish after a graceful upgrade (SIGQUIT), when the
        // old process stops accepting while the new one serves.
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        // Pingora's fast timer keeps an entry until its deadline even when the read it guarded
        // ended long before: with the 900 s backend read timeout, every request left one for 15
        // minutes (RSS +1.7 MB/min under the soak's 190 requests/s). Longer timeouts go to
        // Tokio's timer, which forgets a timeout when it is dropped.
        fast_timeout_to_tokio_threshold_seconds: Some(FAST_TIMER_MAX_SECS),
        upgrade_sock: config.server.upgrade_socket.to_string_lossy().into_owned(),
        // The old process hands its sessions over before its sockets (crate::handover), which
        // can take a few seconds more than Pingora's default five tries allow.
        upgrade_sock_connect_accept_max_retries: Some(30),
        ..ServerConf::default()
    };
    let shared = Arc::new(
        Shared::new(config, config_path, overrides, self_exe, metrics)
            .map_err(|e| anyhow::anyhow!("cannot set up the session directory: {e}"))?,
    );

    // With `--upgrade`, bootstrap takes the listening sockets from the running process (which
    // hands them over when it gets SIGQUIT) instead of binding them.
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    // The all-in-one keeps its sessions over a graceful upgrade; a replica's are in Redis.
    let all_in_one = shared.directory.shared().is_none();
    let reception = if upgrade && all_in_one {
        crate::handover::receive(&shared)
            .inspect_err(
                |e| tracing::error!(error = %e, "cannot wait for the old process's sessions"),
            )
            .ok()
    } else {
        None
    };
    server.bootstrap();
    if let Some(r) = reception {
        r.finish();
    }
    let upgrade_socket = shared.snapshot().config.server.upgrade_socket.clone();
    for (face, addr) in [
        (Protocol::Http, listeners.http),
        (Protocol::Mcp, listeners.mcp),
        (Protocol::A2a, listeners.a2a),
    ] {
        let gateway = Gateway {
            shared: Arc::clone(&shared),
            face,
        };
        let mut proxy = HttpProxy::new(gateway, Arc::clone(&server.configuration));
        proxy.handle_init_modules();
        let front = Front {
            proxy: Arc::new(proxy),
            shared: Arc::clone(&shared),
            face,
        };
        let mut svc = Service::new(face.as_str().into(), front);
        svc.add_tcp(&addr.to_string());
        if all_in_one {
            // Where the previous process relays requests during a graceful upgrade.
            let relay = crate::handover::relay_socket(&upgrade_socket, face);
            let _ = std::fs::remove_file(&relay);
            svc.add_uds(
                &relay.to_string_lossy(),
                Some(std::os::unix::fs::PermissionsExt::from_mode(0o600)),
            );
        }
        server.add_service(svc);
    }
    let mut admin = Service::new(
        "admin".into(),
        AdminApp {
            shared: Arc::clone(&shared),
        },
    );
    admin.add_tcp(&listeners.admin.to_string());
    server.add_service(admin);
    server.add_service(background_service(
        "config-reload",
        crate::reload::ConfigReload {
            shared: Arc::clone(&shared),
        },
    ));
    if shared.directory.shared().is_some() {
        server.add_service(background_service(
            "cluster",
            crate::cluster::ClusterSync {
                shared: Arc::clone(&shared),
            },
        ));
    }
    server.add_service(background_service(
        "lifecycle",
        Lifecycle {
            shared: Arc::clone(&shared),
        },
    ));

    exit_if_a_listener_dies();
    tracing::info!(
        http = %listeners.http, mcp = %listeners.mcp, a2a = %listeners.a2a, admin = %listeners.admin,
        "sessiongate listening"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainThenStop {
            shared: Arc::clone(&shared),
        }),
    });

    if all_in_one {
        for face in [Protocol::Http, Protocol::Mcp, Protocol::A2a] {
            let _ = std::fs::remove_file(crate::handover::relay_socket(&upgrade_socket, face));
        }
    }
    if let Some(t) = &shared.telemetry {
        t.shutdown();
    }
    if let Some(keeper) = shared.handover.keeper() {
        // A graceful upgrade took the sessions: their backends are this process's children, so
        // it stays until the new process has stopped them (or nobody drives them any more).
        tracing::info!(
            relayed = shared.handover.relayed(),
            "keeping the handed-over backends until the new process stops them"
        );
        // Pingora no longer listens for signals: SIGTERM or SIGINT now stop the kept backends.
        let stop = keeper.stopper();
        if let Ok(rt) = routing::provider::keeper_runtime() {
            rt.spawn(async move {
                if let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    stop.notify_one();
                }
            });
        }
        let _ = keeper.done.recv();
        tracing::info!("every kept backend stopped; exiting");
        return Ok(());
    }
    // Normally every backend is already stopped (and children die with the process anyway,
    // by PR_SET_PDEATHSIG); this catches whatever a fast exit left.
    let leftover = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(shared.directory.end_all());
    if leftover > 0 {
        tracing::info!(leftover, "stopped the remaining backends");
    }
    Ok(())
}

/// Pingora runs each listening service on a thread named after it, and a listener that cannot
/// bind (address in use) panics that thread alone: the process would live on, its admin port
/// healthy, one face silently missing. A gateway that cannot serve all its faces exits instead.
fn exit_if_a_listener_dies() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        if let Some(name) = thread.name()
            && ["http", "mcp", "a2a", "admin"].contains(&name)
        {
            tracing::error!(listener = name, "a listener failed; exiting");
            std::process::exit(1);
        }
    }));
}

/// How often session storage left by crashed processes is recovered and expired storage deleted.
const STORAGE_INTERVAL: Duration = Duration::from_secs(30);

/// Session storage housekeeping (`routing::provider::storage`), off the async threads.
async fn tend_storage(config: &conf::Config) {
    let specs: Vec<conf::SessionStorage> = config
        .runtimes
        .iter()
        .flat_map(|r| r.versions.iter())
        .filter_map(|v| v.backend.storage().cloned())
        .collect();
    if specs.is_empty() {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let mut roots: Vec<&std::path::Path> = specs.iter().map(|s| s.root.as_path()).collect();
        roots.dedup();
        for root in roots {
            routing::provider::storage::recover(root);
        }
        for spec in &specs {
            routing::provider::storage::expire(spec);
        }
    })
    .await;
}

/// The lifecycle sweep, every `sessions.sweep_interval`.
struct Lifecycle {
    shared: Arc<Shared>,
}

impl Lifecycle {
    /// Tops up warm pools and reports them, with each microVM runtime's acceleration.
    fn tend_providers(&self, snapshot: &Snapshot) {
        // A replica keeps no warm backends: spawned backends live on backend hosts.
        let replica = self.shared.directory.shared().is_some();
        for (runtime, version, provider) in snapshot.providers.iter() {
            if !replica {
                provider.refill();
            }
            let labels = [
                ("runtime", runtime.to_owned()),
                ("version", version.to_string()),
                ("provider", provider.name().to_owned()),
            ];
            metrics::gauge!("sessiongate_warm_backends", &labels).set(provider.warm() as f64);
            if let Some(accel) = provider.accel() {
                metrics::gauge!("sessiongate_microvm_accel", "runtime" => runtime.to_owned(), "accel" => accel)
                    .set(1.0);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Lifecycle {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut interval = self.shared.snapshot().config.sessions.sweep_interval;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut storage_tended: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            // The lifecycle settings of the config in force (they reload like the rest).
            let sessions = self.shared.snapshot().config.sessions.clone();
            if sessions.sweep_interval != interval {
                interval = sessions.sweep_interval;
                tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            // Sessions of a runtime a reload removed end once nothing is in flight.
            let snapshot = self.shared.snapshot();
            let policy = LifecyclePolicy::from(&*snapshot.config);
            self.tend_providers(&snapshot);
            if storage_tended.is_none_or(|t| t.elapsed() >= STORAGE_INTERVAL) {
                storage_tended = Some(std::time::Instant::now());
                tend_storage(&snapshot.config).await;
            }
            for s in self.shared.directory.snapshot() {
                if !snapshot.runtime_names.iter().any(|n| *n == s.runtime)
                    && self
                        .shared
                        .directory
                        .end_if_idle(&s, Duration::ZERO, EndReason::RuntimeRemoved)
                        .await
                {
                    tracing::info!(session = %s.id, runtime = %s.runtime, "session ended: its runtime was removed");
                    metrics::counter!("sessiongate_sessions_ended_total", "reason" => "runtime_removed")
                        .increment(1);
                }
            }
            crate::hibernate::tend(&self.shared, &snapshot.config).await;
            for (session, reason) in sweep(&self.shared.directory, &policy).await {
                tracing::info!(session = %session.id, reason = reason.as_str(), "session ended");
                metrics::counter!("sessiongate_sessions_ended_total", "reason" => reason.as_str())
                    .increment(1);
            }
            metrics::gauge!("sessiongate_active_sessions").set(self.shared.directory.len() as f64);
            self.shared.stats.sessions(self.shared.directory.len());
            let (mut active, mut idle, mut provisioning) = (0, 0, 0);
            for s in self.shared.directory.snapshot() {
                match (s.backend().is_some(), s.inflight()) {
                    (false, _) => provisioning += 1,
                    (true, 0) => idle += 1,
                    (true, _) => active += 1,
                }
            }
            for (state, n) in [
                ("active", active),
                ("idle", idle),
                ("provisioning", provisioning),
            ] {
                metrics::gauge!("sessiongate_sessions", "state" => state).set(f64::from(n));
            }
            self.shared.directory.admission().prune_idle_principals();
            self.shared.metrics.run_upkeep();
        }
    }
}

/// SIGTERM and SIGINT: refuse new requests, let in-flight ones finish (up to
/// `server.shutdown_timeout_secs`), stop every backend, then let Pingora exit.
/// SIGQUIT keeps Pingora's meaning (graceful upgrade).
struct DrainThenStop {
    shared: Arc<Shared>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainThenStop {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = quit.recv() => {
                if self.shared.directory.shared().is_none() {
                    crate::handover::offer(&self.shared).await;
                }
                return ShutdownSignal::GracefulUpgrade;
            }
        };
        let shared = &self.shared;
        let timeout = shared.snapshot().config.server.shutdown_timeout;
        tracing::info!(
            signal = name,
            ?timeout,
            inflight = shared.inflight(),
            "draining"
        );
        shared
            .draining
            .store(true, std::sync::atomic::Ordering::Release);
        let drained = tokio::time::timeout(timeout, async {
            while shared.inflight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                inflight = shared.inflight(),
                "drain timeout; stopping anyway"
            );
        }
        let stopped = shared.directory.end_all().await;
        tracing::info!(stopped, "backends stopped");
        ShutdownSignal::GracefulTerminate
    }
}
