//! The lifecycle sweep: ends sessions that are idle too long, too old, or whose backend died.
//!
//! Every `health_check_interval` each placed session's backend is asked `GET /ping` (all at
//! once, each with a deadline). `HealthyBusy` keeps the session alive (AgentCore's long-running
//! work contract); `health_check_failures` failures in a row end it. Idle time counts from the
//! later of the last request and the backend's `time_of_last_update` — but only a timestamp that
//! came with a change of status counts, so an agent that stamps every ping with the current time
//! cannot pin its session until the max lifetime.

use std::sync::Arc;
use std::time::Duration;

use conf::Protocol;

use crate::directory::traffic::Checked;
use crate::directory::{EndReason, Session, SessionDirectory, now_ms};
use crate::ping::{Health, ping};

#[derive(Debug, Clone)]
pub struct LifecyclePolicy {
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub health_check_interval: Duration,
    pub health_check_failures: u32,
    /// Runtimes with their own idle timeout / max lifetime: `(name, idle, max)`.
    pub runtimes: Vec<(String, Duration, Duration)>,
    /// Runtimes whose idle sessions are suspended rather than ended (`on_idle = "suspend"`):
    /// the gateway does that itself (`SessionDirectory::suspend_if_idle`); the sweep leaves
    /// their idle sessions alone in the all-in-one.
    pub suspending: Vec<String>,
}

impl From<&conf::Sessions> for LifecyclePolicy {
    fn from(s: &conf::Sessions) -> Self {
        Self {
            idle_timeout: s.idle_timeout,
            max_lifetime: s.max_lifetime,
            health_check_interval: s.health_check_interval,
            health_check_failures: s.health_check_failures,
            runtimes: Vec::new(),
            suspending: Vec::new(),
        }
    }
}

impl From<&conf::Config> for LifecyclePolicy {
    fn from(c: &conf::Config) -> Self {
        let mut policy = Self::from(&c.sessions);
        policy.runtimes = c
            .runtimes
            .iter()
            .filter(|r| r.idle_timeout.is_some() || r.max_lifetime.is_some())
            .map(|r| {
                (
                    r.name.clone(),
                    r.idle_timeout.unwrap_or(policy.idle_timeout),
                    r.max_lifetime.unwrap_or(policy.max_lifetime),
                )
            })
            .collect();
        policy.suspending = c
            .runtimes
            .iter()
            .filter(|r| r.suspend.is_some())
            .map(|r| r.name.clone())
            .collect();
        policy
    }
}

impl LifecyclePolicy {
    /// The least time any session can live: the shortest idle timeout or lifetime.
    pub fn shortest_session_life(&self) -> Duration {
        self.runtimes
            .iter()
            .flat_map(|&(_, i, m)| [i, m])
            .chain([self.idle_timeout, self.max_lifetime])
            .min()
            .unwrap_or(self.idle_timeout)
    }

    /// `(idle timeout, max lifetime)` of a runtime's sessions.
    pub fn timeouts(&self, runtime: &str) -> (Duration, Duration) {
        self.runtimes
            .iter()
            .find(|(name, ..)| name == runtime)
            .map_or((self.idle_timeout, self.max_lifetime), |&(_, i, m)| (i, m))
    }
}

/// One pass over the directory. Returns the sessions it ended, with why.
pub async fn sweep(
    dir: &SessionDirectory,
    policy: &LifecyclePolicy,
) -> Vec<(Arc<Session>, EndReason)> {
    let mut ended = Vec::new();
    let mut due = tokio::task::JoinSet::new();
    let now = now_ms();
    for s in dir.snapshot() {
        let Some(backend) = s.backend() else {
            continue; // still being placed: the placement deadline governs it
        };
        if backend.has_exited() {
            let reason = if backend.oom_killed() {
                EndReason::OutOfMemory
            } else {
                EndReason::BackendExited
            };
            if dir.end(&s, reason).await {
                ended.push((s, reason));
            }
            continue;
        }
        let (_, max_lifetime) = policy.timeouts(&s.runtime);
        if s.age(now) >= max_lifetime {
            if dir.end(&s, EndReason::MaxLifetime).await {
                ended.push((s, EndReason::MaxLifetime));
            }
            continue;
        }
        let check_due = s.health.lock().is_ok_and(|h| {
            now.saturating_sub(h.last_checked_ms) >= policy.health_check_interval.as_millis() as u64
        });
        if let (true, Some(addr)) = (check_due, backend.addr(Protocol::Http).cloned()) {
            let timeout = policy.health_check_interval.min(Duration::from_secs(2));
            due.spawn(async move {
                let result = ping(&addr, timeout).await;
                (s, result)
            });
        }
    }
    while let Some(Ok((s, result))) = due.join_next().await {
        let answer = match result {
            Ok(health) => Some(health),
            // The gateway out of descriptors or memory says nothing about the backend: such a
            // check is not counted at all (it used to end every live session).
            Err(e) if e.is_local_exhaustion() => {
                tracing::warn!(session = %s.id, error = %e, "health check skipped: the gateway is out of resources");
                continue;
            }
            Err(_) => None,
        };
        if let Some(reason) = record_health(dir, &s, answer, policy).await {
            ended.push((s, reason));
        }
    }
    let now = now_ms();
    // On a replica, idle ends are decided on the shared record (`sweep_shared`): this replica's
    // view of a session's activity is only its own.
    let local = if dir.shared().is_some() {
        Vec::new()
    } else {
        dir.snapshot()
    };
    for s in local {
        if policy.suspending.iter().any(|r| **r == *s.runtime) {
            continue;
        }
        let (idle_timeout, _) = policy.timeouts(&s.runtime);
        let due = s.inflight() == 0 && s.idle_for(now) >= idle_timeout;
        let Some(addr) = s
            .backend()
            .and_then(|b| b.addr(Protocol::Http).cloned())
            .filter(|_| due)
        else {
            continue;
        };
        // Due to end: ask the backend once more whether it is still working.
        let answer = match ping(&addr, Duration::from_secs(2)).await {
            Ok(h) => Some(h),
            Err(e) if e.is_local_exhaustion() => continue,
            Err(_) => None,
        };
        if let Some(reason) = record_health(dir, &s, answer, policy).await {
            ended.push((s, reason));
            continue;
        }
        if s.is_ended() {
            continue;
        }
        let reason = if answer.is_some() {
            EndReason::Idle
        } else {
            EndReason::Unhealthy
        };
        if dir.end_if_idle(&s, idle_timeout, reason).await {
            ended.push((s, reason));
        }
    }
    // When each caller's sessions could next end: the Retry-After of a quota refusal.
    dir.admission()
        .set_shortest_session_life(policy.shortest_session_life());
    let sessions = dir.snapshot();
    dir.admission().set_next_ends(sessions.iter().map(|s| {
        let (idle, max) = policy.timeouts(&s.runtime);
        (s.quota_key(), s.earliest_end_ms(idle, max))
    }));
    ended
}

/// Applies one health-check answer (`None`: no answer). Returns a reason if it ends the session.
async fn record_health(
    dir: &SessionDirectory,
    s: &Arc<Session>,
    health: Option<Health>,
    policy: &LifecyclePolicy,
) -> Option<EndReason> {
    let failures = {
        let Ok(mut h) = s.health.lock() else {
            return None;
        };
        h.last_checked_ms = now_ms();
        let outcome = match health {
            Some(h) if h.busy => Checked::Busy,
            Some(_) => Checked::Healthy,
            None => Checked::Failed,
        };
        s.traffic.checked(h.last_checked_ms, outcome);
        match health {
            Some(now) => {
                if let Some(t) = status_change_time(h.last, now) {
                    s.touch_at_unix_secs(t);
                }
                h.last = Some(now);
                h.failures = 0;
            }
            None => h.failures += 1,
        }
        h.failures
    };
    match health {
        Some(h) if h.busy => {
            s.touch();
            None
        }
        Some(_) => None,
        // A backend that stops answering is ended even with requests in flight (a hung agent
        // would otherwise hold them until their request timeout): it is stopped at once, and
        // those requests fail with an error that says why.
        None if failures >= policy.health_check_failures => {
            tracing::info!(session = %s.id, failures, inflight = s.inflight(), "backend failed its health checks");
            dir.stop(s, EndReason::Unhealthy)
                .await
                .then_some(EndReason::Unhealthy)
        }
        None => None,
    }
}

/// The `time_of_last_update` worth honouring: only one reported with a change of status (or the
/// first one seen). A timestamp that advances while the status stays the same is the agent
/// stamping every ping, which would otherwise keep an idle session forever.
pub fn status_change_time(previous: Option<Health>, now: Health) -> Option<u64> {
    let t = now.time_of_last_update?;
    match previous {
        None => Some(t),
        Some(p) if p.busy != now.busy => Some(t),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(busy: bool, t: u64) -> Health {
        Health {
            busy,
            time_of_last_update: Some(t),
        }
    }

    #[test]
    fn only_status_changes_move_the_idle_clock() {
        assert_eq!(status_change_time(None, h(false, 10)), Some(10));
        assert_eq!(
            status_change_time(Some(h(false, 10)), h(false, 20)),
            None,
            "stamped every ping"
        );
        assert_eq!(
            status_change_time(Some(h(true, 10)), h(false, 30)),
            Some(30),
            "busy → healthy"
        );
        assert_eq!(
            status_change_time(
                Some(h(false, 10)),
                Health {
                    busy: false,
                    time_of_last_update: None
                }
            ),
            None
        );
    }
}
