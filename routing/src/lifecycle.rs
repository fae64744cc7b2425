//! The lifecycle sweep: ends sessions that are idle too long, too old, or whose backend died.
//!
//! Idle time counts from the later of the last request and the backend's own
//! `time_of_last_update`; a backend that answers `/ping` with `HealthyBusy` keeps its session
//! alive (AgentCore's long-running-work contract). Backends are only pinged when their session
//! is due to end, so a quiet gateway makes no health traffic.

use std::sync::Arc;
use std::time::Duration;

use conf::Protocol;

use crate::directory::{EndReason, Session, SessionDirectory, now_ms};
use crate::ping::ping;

#[derive(Debug, Clone, Copy)]
pub struct LifecyclePolicy {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    /// How long a due session's backend gets to answer `/ping`.
    pub ping_timeout: Duration,
}

impl From<&conf::Sessions> for LifecyclePolicy {
    fn from(s: &conf::Sessions) -> Self {
        Self {
            idle_timeout: s.idle_timeout,
            max_lifetime: s.max_lifetime,
            ping_timeout: Duration::from_secs(2),
        }
    }
}

/// One pass over the directory. Returns the sessions it ended, with why.
pub async fn sweep(
    dir: &SessionDirectory,
    policy: &LifecyclePolicy,
) -> Vec<(Arc<Session>, EndReason)> {
    let mut ended = Vec::new();
    for session in dir.snapshot() {
        if let Some(reason) = check(dir, &session, policy).await {
            ended.push((session, reason));
        }
    }
    ended
}

async fn check(
    dir: &SessionDirectory,
    s: &Arc<Session>,
    policy: &LifecyclePolicy,
) -> Option<EndReason> {
    let now = now_ms();
    let backend = s.backend()?; // still being placed: the placement deadline governs it
    if backend.has_exited() {
        return dir.end(s).await.then_some(EndReason::BackendExited);
    }
    if s.age(now) >= policy.max_lifetime {
        return dir.end(s).await.then_some(EndReason::MaxLifetime);
    }
    if s.inflight() > 0 || s.idle_for(now) < policy.idle_timeout {
        return None;
    }
    // Due to end: ask the backend whether it is still working.
    match ping(backend.addr(Protocol::Http)?, policy.ping_timeout).await {
        Ok(h) if h.busy => {
            s.touch();
            None
        }
        Ok(h) => {
            if let Some(t) = h.time_of_last_update {
                s.touch_at_unix_secs(t);
            }
            dir.end_if_idle(s, policy.idle_timeout)
                .await
                .then_some(EndReason::Idle)
        }
        Err(e) => {
            tracing::info!(session = %s.id, error = %e, "backend failed its health probe");
            dir.end_if_idle(s, policy.idle_timeout)
                .await
                .then_some(EndReason::Unhealthy)
        }
    }
}
