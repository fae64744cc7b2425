//! The gateway's side of hibernation (`routing::directory::hibernate`): each lifecycle tick
//! suspends the idle sessions of `on_idle = "suspend"` runtimes and ends suspended sessions past
//! their retention; at start-up [`adopt`] takes up what an earlier process left suspended; the
//! admin API suspends one on demand and lists suspended sessions.

use std::sync::Arc;
use std::time::Duration;

use routing::Session;
use routing::directory::hibernate::Suspension;

use crate::state::Shared;

/// One lifecycle tick's worth: suspend what is idle, end what waited too long.
pub async fn tend(shared: &Shared, config: &conf::Config) {
    let dir = &shared.directory;
    if dir.shared().is_some() {
        return; // on a replica the cluster's sweeper suspends (`crate::cluster`)
    }
    let now = routing::directory::now_ms();
    for s in dir.snapshot() {
        let Some(runtime) = config.runtimes.iter().find(|r| *r.name == *s.runtime) else {
            continue;
        };
        let idle = runtime.idle_timeout.unwrap_or(config.sessions.idle_timeout);
        if runtime.suspend.is_none()
            || s.inflight() > 0
            || s.backend().is_none()
            || s.idle_for(now) < idle
        {
            continue;
        }
        // Due: ask the backend once more whether it is still working (as an idle end does).
        if let Some(addr) = s
            .backend()
            .and_then(|b| b.addr(conf::Protocol::Http).cloned())
            && routing::ping::ping(&addr, Duration::from_secs(2))
                .await
                .is_ok_and(|h| h.busy)
        {
            s.touch();
            continue;
        }
        suspend(shared, config, &s, idle).await;
    }
    let expired = dir.expire_suspended();
    if expired > 0 {
        metrics::counter!("sessiongate_sessions_ended_total", "reason" => "suspend_expired")
            .increment(expired as u64);
    }
    let suspended = dir.suspended();
    metrics::gauge!("sessiongate_sessions", "state" => "suspended").set(suspended.len() as f64);
    metrics::gauge!("sessiongate_snapshot_bytes")
        .set(suspended.iter().map(|(_, s)| s.bytes).sum::<u64>() as f64);
}

/// Takes up what an earlier process of this gateway suspended (crashed, restarted, upgraded),
/// before the first request can miss it.
pub fn adopt(dir: &routing::SessionDirectory, config: &conf::Config) {
    if dir.shared().is_some() {
        return;
    }
    for r in &config.runtimes {
        if let Some(plan) = &r.suspend {
            let n = dir.adopt_suspended(&plan.root, plan.retention);
            if n > 0 {
                tracing::info!(runtime = %r.name, sessions = n, "suspended sessions taken up from the snapshot root");
            }
        }
    }
}

/// Suspends `s` if it is idle for `idle` (zero: now, if nothing is in flight). On a replica the
/// cluster records it and the session's host saves it (only ever now: the cluster's sweep
/// suspends idle ones). `None`: its runtime does not suspend.
pub async fn suspend(
    shared: &Shared,
    config: &conf::Config,
    s: &Arc<Session>,
    idle: Duration,
) -> Option<Suspension> {
    let plan = config.suspend_plan(&s.runtime)?;
    let outcome = match shared.directory.shared() {
        None => shared.directory.suspend_if_idle(s, idle, plan).await,
        Some(_) => shared.directory.suspend_shared_now(s, plan).await,
    };
    count(s.id.as_str(), outcome);
    Some(outcome)
}

/// Logs and counts how a suspension came out (here, or by the cluster's sweeper).
pub fn count(id: &str, outcome: Suspension) {
    match outcome {
        Suspension::Suspended { bytes, took } => {
            tracing::info!(
                session = id,
                bytes,
                ms = took.as_millis() as u64,
                "session suspended"
            );
            metrics::counter!("sessiongate_suspends_total", "outcome" => "suspended").increment(1);
            metrics::histogram!("sessiongate_suspend_duration_seconds").record(took.as_secs_f64());
        }
        Suspension::OverBudget | Suspension::Failed => {
            let outcome = if outcome == Suspension::OverBudget {
                "over_budget"
            } else {
                "failed"
            };
            tracing::info!(
                session = id,
                outcome,
                "session ended: it could not be suspended"
            );
            metrics::counter!("sessiongate_suspends_total", "outcome" => outcome).increment(1);
            metrics::counter!("sessiongate_sessions_ended_total", "reason" => "idle").increment(1);
        }
        Suspension::NotDue => {}
    }
}

/// The admin API's rows for suspended sessions.
pub fn listed(shared: &Shared) -> Vec<serde_json::Value> {
    let now = routing::directory::now_ms();
    shared
        .directory
        .suspended()
        .into_iter()
        .map(|(id, s)| {
            serde_json::json!({
                "id": id.as_str(),
                "runtime": &*s.runtime,
                "version": s.version,
                "principal": s.principal.as_str(),
                "state": "suspended",
                "snapshot_bytes": s.bytes,
                "started_at": s.created_ms / 1000,
                "age_secs": now.saturating_sub(s.created_ms) / 1000,
                "suspended_secs": now.saturating_sub(s.suspended_ms) / 1000,
                "inflight": 0,
            })
        })
        .collect()
}
