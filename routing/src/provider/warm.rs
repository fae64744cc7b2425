//! Warm pools: backends started ahead of demand, so a new session's first byte waits for no
//! spawn or boot. A pooled backend serves exactly one session and is destroyed after it; the
//! pool refills in the background (after every take, and on every lifecycle tick).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, Spawner};

#[derive(Debug)]
pub(super) struct WarmPool {
    target: usize,
    ready: Mutex<VecDeque<Backend>>,
    /// Spawns under way.
    filling: AtomicUsize,
    /// Set when the provider is replaced or dropped: late spawns are destroyed, not pooled.
    closed: AtomicBool,
}

impl WarmPool {
    pub(super) fn target(&self) -> usize {
        self.target
    }

    pub(super) fn new(target: usize) -> Self {
        Self {
            target,
            ready: Mutex::new(VecDeque::with_capacity(target)),
            filling: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// A ready backend, if one is pooled and still alive (a dead one is destroyed and skipped).
    pub(super) fn take(&self) -> Option<Backend> {
        loop {
            let backend = self.ready.lock().ok()?.pop_front()?;
            if !backend.has_exited() {
                return Some(backend);
            }
            tracing::warn!(backend = %backend.describe(), "a pooled backend died while waiting; destroyed");
        }
    }

    pub(super) fn ready(&self) -> usize {
        self.ready.lock().map_or(0, |r| r.len())
    }

    /// Starts as many spawns as the pool lacks. Needs a Tokio runtime.
    pub(super) fn refill(self: &Arc<Self>, spawner: &Arc<Spawner>) {
        if self.closed.load(Ordering::Acquire) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        loop {
            let filling = self.filling.load(Ordering::Acquire);
            if self.ready() + filling >= self.target {
                return;
            }
            if self
                .filling
                .compare_exchange(filling, filling + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let (pool, spawner) = (Arc::clone(self), Arc::clone(spawner));
            tokio::spawn(async move {
                let spawned = spawner.spawn().await;
                match spawned {
                    Ok(b) if !pool.closed.load(Ordering::Acquire) => {
                        if let Ok(mut ready) = pool.ready.lock() {
                            ready.push_back(b);
                        }
                    }
                    Ok(b) => b.release().await,
                    Err(e) => tracing::warn!(error = %e, "cannot start a warm backend"),
                }
                pool.filling.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    /// Refills after `delay`, in the background.
    pub(super) fn refill_after(self: &Arc<Self>, spawner: &Arc<Spawner>, delay: Duration) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (pool, spawner) = (Arc::clone(self), Arc::clone(spawner));
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            pool.refill(&spawner);
        });
    }

    /// Destroys the pooled backends; spawns still under way destroy theirs when they finish.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let drained: Vec<Backend> = self
            .ready
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default();
        drop(drained); // each lease kills its process and removes its remains
    }
}
