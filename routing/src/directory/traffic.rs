//! What an operator sees of one session's traffic (the admin dashboard): bytes in and out, its
//! last requests, and its last health checks. Bounded: a session keeps [`RECENT`] of each.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests and health checks a session keeps.
pub const RECENT: usize = 20;

/// One finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// When it finished (Unix ms).
    pub at_ms: u64,
    /// Its route's name (`invocations`, `mcp`, …).
    pub route: &'static str,
    pub status: u16,
    pub micros: u64,
}

/// One health check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Healthy,
    /// `HealthyBusy`: background work is running.
    Busy,
    /// No answer.
    Failed,
}

impl Checked {
    pub const fn as_str(self) -> &'static str {
        match self {
            Checked::Healthy => "Healthy",
            Checked::Busy => "HealthyBusy",
            Checked::Failed => "failed",
        }
    }
}

#[derive(Debug, Default)]
pub struct Traffic {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    recent: Mutex<VecDeque<Exchange>>,
    checks: Mutex<VecDeque<(u64, Checked)>>,
}

fn push<T>(ring: &Mutex<VecDeque<T>>, item: T) {
    if let Ok(mut ring) = ring.lock() {
        if ring.len() == RECENT {
            ring.pop_front();
        }
        ring.push_back(item);
    }
}

impl Traffic {
    /// Counts one finished request.
    pub fn record(&self, exchange: Exchange, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        push(&self.recent, exchange);
    }

    pub(crate) fn checked(&self, at_ms: u64, outcome: Checked) {
        push(&self.checks, (at_ms, outcome));
    }

    /// Bytes received from clients and sent to them.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }

    /// The last requests, oldest first.
    pub fn recent(&self) -> Vec<Exchange> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The last health checks `(Unix ms, outcome)`, oldest first.
    pub fn checks(&self) -> Vec<(u64, Checked)> {
        self.checks
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The last health check's outcome.
    pub fn last_check(&self) -> Option<Checked> {
        self.checks.lock().ok()?.back().map(|c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_requests_and_counts_every_byte() {
        let t = Traffic::default();
        for i in 0..(RECENT as u64 + 5) {
            let e = Exchange {
                at_ms: i,
                route: "invocations",
                status: 200,
                micros: i,
            };
            t.record(e, 10, 100);
        }
        let recent = t.recent();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0].at_ms, 5);
        assert_eq!(t.bytes(), (250, 2500));
        t.checked(1, Checked::Busy);
        assert_eq!(t.last_check(), Some(Checked::Busy));
    }
}
