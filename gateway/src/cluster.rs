//! A replica's upkeep of its cache of the shared session directory: end announcements as they
//! come, the activity batch once a second, and the cluster-wide sweep of idle ends and
//! suspensions (one replica at a time holds its lock).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::Shared;

/// How often a replica sends its activity and reads the live hosts.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often the sweep runs (a lost host's sessions end within this plus the host TTL).
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The sweeper lock outlives a tick, so one replica keeps it while it runs.
const SWEEP_LOCK: Duration = Duration::from_secs(3);

pub struct ClusterSync {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ClusterSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let dir = &self.shared.directory;
        let sweep = async {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let config = Arc::clone(&self.shared.snapshot().config);
                let swept = dir
                    .sweep_shared(SWEEP_LOCK, |runtime| config.suspend_plan(runtime).cloned())
                    .await;
                for (id, reason) in swept.ended {
                    tracing::info!(session = %id, reason = reason.as_str(), "session ended");
                    metrics::counter!("sessiongate_sessions_ended_total", "reason" => reason.as_str())
                        .increment(1);
                }
                for (id, outcome) in swept.suspended {
                    crate::hibernate::count(&id, outcome);
                }
            }
        };
        let sync = async {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reachable = true;
            loop {
                let recover = dir.shared().map(|s| s.recover.notified());
                tokio::select! {
                    _ = tick.tick() => {}
                    () = async { if let Some(r) = recover { r.await } else { std::future::pending().await } } => {}
                }
                if let Some(shared) = dir.shared() {
                    let _ = shared.refresh_hosts().await;
                }
                match dir.sync_shared().await {
                    Ok(()) if !reachable => {
                        reachable = true;
                        tracing::info!("the session directory is reachable again");
                    }
                    Ok(()) => {}
                    Err(e) if reachable => {
                        reachable = false;
                        tracing::error!(error = %e, "the session directory is unreachable: cached sessions are served for `cluster.redis_outage_grace_secs`, new ones are refused with 503");
                    }
                    Err(_) => {}
                }
                if let Some(shared) = dir.shared()
                    && let Ok(n) = shared.count().await
                {
                    metrics::gauge!("sessiongate_cluster_sessions").set(n as f64);
                }
            }
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            () = dir.listen_for_ends() => {}
            () = sync => {}
            () = sweep => {}
        }
    }
}
