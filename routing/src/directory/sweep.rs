//! The cluster-wide sweep, run by whichever replica holds the sweeper lock: idle and lifetime
//! ends, suspensions of idle sessions whose runtime suspends (`super::hibernate`, in the
//! cluster: `crate::cluster` records them, the session's host saves its backend), and ends of
//! suspended sessions past their retention.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use conf::Suspend;

use super::hibernate::{Suspension, dir_name};
use super::{EndReason, Session, SessionDirectory, now_ms};
use crate::cluster::{Due, Marked, Recorded, RedisDirectory};

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub ended: Vec<(String, EndReason)>,
    /// Suspensions tried, and how each came out.
    pub suspended: Vec<(String, Suspension)>,
}

enum Outcome {
    Ended(String, EndReason),
    Suspension(String, Suspension),
    Nothing,
}

impl SessionDirectory {
    /// One sweep: a due session's backend is asked once more whether it is busy (then it lives
    /// on); an idle one is suspended when `plan` gives its runtime's suspension, ended otherwise.
    pub async fn sweep_shared(
        &self,
        lock: Duration,
        plan: impl Fn(&str) -> Option<Suspend>,
    ) -> Swept {
        let mut swept = Swept::default();
        let Some(shared) = &self.shared else {
            return swept;
        };
        let Ok(Some(due)) = shared.due(lock, 64).await else {
            return swept;
        };
        if let Ok(lost) = shared.hosts_lost().await {
            swept
                .ended
                .extend(lost.into_iter().map(|id| (id, EndReason::HostLost)));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for d in due {
            let lease = self
                .get(&d.id)
                .filter(|s| Some(s.incarnation) == d.incarnation)
                .map_or(0, |s| s.lease.load(Ordering::Acquire));
            let plan = plan(&d.runtime);
            let shared = Arc::clone(shared);
            tasks.spawn(async move { sweep_one(&shared, d, plan, lease).await });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Outcome::Ended(id, reason)) => swept.ended.push((id, reason)),
                Ok(Outcome::Suspension(id, s)) => swept.suspended.push((id, s)),
                Ok(Outcome::Nothing) | Err(_) => {}
            }
        }
        swept
    }
}

async fn sweep_one(shared: &RedisDirectory, d: Due, plan: Option<Suspend>, lease: u32) -> Outcome {
    let Some(incarnation) = d.incarnation else {
        // Only its place in the active set was left.
        let _ = shared.end(&d.id, None, Some("idle"), None).await;
        return Outcome::Nothing;
    };
    let end = |reason: Option<EndReason>| end(shared, &d.id, incarnation, reason);
    match d.state.as_str() {
        "z" => return end(Some(EndReason::SuspendExpired)).await,
        // A suspension cut short (its sweeper died): it ends.
        "s" => {
            return match shared.mark_suspending(&d.id, incarnation, "", false).await {
                Ok(Marked::End) => end(Some(EndReason::Idle)).await,
                _ => Outcome::Nothing,
            };
        }
        _ => {}
    }
    let busy = match &d.backend {
        Some(a) => crate::ping::ping(&a.http, Duration::from_secs(1))
            .await
            .is_ok_and(|h| h.busy),
        None => false,
    };
    if busy {
        let _ = shared
            .touch(&[(d.id.clone(), incarnation, now_ms(), lease)])
            .await;
        return Outcome::Nothing;
    }
    match (&plan, &d.backend) {
        (Some(plan), Some(backend)) if backend.relayed().is_some() => {
            suspend(shared, &d, incarnation, plan, false).await
        }
        _ => end(None).await,
    }
}

impl SessionDirectory {
    /// Suspends a replica's session now (the admin API), if nothing is in flight for it on any
    /// replica.
    pub async fn suspend_shared_now(&self, s: &Session, plan: &Suspend) -> Suspension {
        let (Some(shared), Some(backend)) =
            (&self.shared, s.backend().and_then(|b| b.shared_addrs()))
        else {
            return Suspension::NotDue;
        };
        if s.inflight() > 0 {
            return Suspension::NotDue;
        }
        let due = Due {
            id: s.id.as_str().to_owned(),
            incarnation: Some(s.incarnation),
            backend: Some(backend.clone()),
            state: "l".into(),
            runtime: s.runtime.to_string(),
        };
        match suspend(shared, &due, s.incarnation, plan, true).await {
            Outcome::Suspension(_, outcome) => outcome,
            Outcome::Ended(..) => Suspension::Failed,
            Outcome::Nothing => Suspension::NotDue,
        }
    }
}

/// Suspends a due session on its host: marked, saved there, recorded — or ended when it cannot
/// be (its host failed to save it, or the snapshot would exceed the runtime's budget).
async fn suspend(
    shared: &RedisDirectory,
    d: &Due,
    incarnation: u64,
    plan: &Suspend,
    now: bool,
) -> Outcome {
    let Some(backend) = &d.backend else {
        return Outcome::Nothing;
    };
    let dir = dir_name(&d.id, now_ms());
    match shared.mark_suspending(&d.id, incarnation, &dir, now).await {
        Ok(Marked::Suspending) => {}
        Ok(Marked::End) => return end(shared, &d.id, incarnation, None).await,
        Ok(Marked::NotDue) | Err(_) => return Outcome::Nothing,
    }
    let started = Instant::now();
    let outcome = match shared
        .suspend_on_host(backend, &d.id, &d.runtime, &dir)
        .await
    {
        Ok(saved) => match shared
            .record_suspended(
                &d.id,
                incarnation,
                &saved,
                plan.retention,
                plan.budget_bytes,
            )
            .await
        {
            Ok(Recorded::Suspended) => Suspension::Suspended {
                bytes: saved.bytes,
                took: started.elapsed(),
            },
            Ok(Recorded::OverBudget) => {
                tracing::warn!(session = %d.id, budget = plan.budget_bytes, "snapshot over the runtime's budget: the session ends instead");
                Suspension::OverBudget
            }
            Ok(Recorded::Gone) => return Outcome::Nothing,
            Err(e) => {
                tracing::warn!(session = %d.id, error = %e, "cannot record a suspension; the session ends instead");
                Suspension::Failed
            }
        },
        Err(e) => {
            tracing::warn!(session = %d.id, error = %e, "the host could not suspend the session; it ends instead");
            Suspension::Failed
        }
    };
    if !matches!(outcome, Suspension::Suspended { .. }) {
        end(shared, &d.id, incarnation, Some(EndReason::Idle)).await;
    }
    Outcome::Suspension(d.id.clone(), outcome)
}

/// Ends incarnation `incarnation` of `id` for `reason` (`None`: if its idle or lifetime end is
/// due, which then names the reason).
async fn end(
    shared: &RedisDirectory,
    id: &str,
    incarnation: u64,
    reason: Option<EndReason>,
) -> Outcome {
    match shared
        .end(id, Some(incarnation), reason.map(EndReason::as_str), None)
        .await
    {
        Ok(Some(reason)) => Outcome::Ended(id.to_owned(), EndReason::parse(&reason)),
        _ => Outcome::Nothing,
    }
}
