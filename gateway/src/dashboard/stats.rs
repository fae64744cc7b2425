//! The last ten minutes of the gateway's own figures, one slot per second, for the dashboard's
//! graphs: requests by status class, latency (log₂ buckets, so p50/p99 come out within a factor
//! of two), sessions, placements and their duration, rejections by reason. No Prometheus needed:
//! the ring is this process's, bounded, and costs a short lock per request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Seconds kept.
pub const WINDOW: u64 = 600;
/// Latency buckets: bucket `i` holds [2^i, 2^(i+1)) µs; the last one everything slower.
const BUCKETS: usize = 28;

#[derive(Debug, Clone, Default)]
struct Slot {
    sec: u64,
    /// 1xx … 5xx (a request answered with nothing counts as 5xx).
    by_class: [u32; 5],
    latency: [u32; BUCKETS],
    placements: u32,
    placement_micros: u64,
    rejections: Vec<(&'static str, u32)>,
    /// Sessions as last sampled in this second.
    sessions: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Stats {
    slots: Mutex<VecDeque<Slot>>,
}

fn now_sec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn bucket(micros: u64) -> usize {
    (63 - micros.max(1).leading_zeros() as usize).min(BUCKETS - 1)
}

impl Stats {
    fn with_slot(&self, f: impl FnOnce(&mut Slot)) {
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        // Read under the lock, and never behind the newest slot (a clock stepped back counts
        // into it): the slots stay in order, one per second.
        let sec = now_sec().max(slots.back().map_or(0, |s| s.sec));
        if slots.back().is_none_or(|s| s.sec != sec) {
            slots.push_back(Slot {
                sec,
                ..Slot::default()
            });
            while slots
                .front()
                .is_some_and(|s| s.sec + WINDOW <= sec || slots.len() > WINDOW as usize)
            {
                slots.pop_front();
            }
        }
        if let Some(slot) = slots.back_mut() {
            f(slot);
        }
    }

    /// One finished request; `rejected` names why the gateway refused it, if it did.
    pub fn request(&self, status: u16, took: Duration, rejected: Option<&'static str>) {
        self.with_slot(|s| {
            let class = usize::from(status / 100).clamp(1, 5) - 1;
            s.by_class[if status == 0 { 4 } else { class }] += 1;
            s.latency[bucket(took.as_micros() as u64)] += 1;
            if let Some(reason) = rejected {
                match s.rejections.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += 1,
                    None => s.rejections.push((reason, 1)),
                }
            }
        });
    }

    /// One placement (a new session's backend, or a resume).
    pub fn placement(&self, took: Duration) {
        self.with_slot(|s| {
            s.placements += 1;
            s.placement_micros += took.as_micros() as u64;
        });
    }

    /// The number of sessions now (the lifecycle tick samples it).
    pub fn sessions(&self, n: usize) {
        self.with_slot(|s| s.sessions = Some(u32::try_from(n).unwrap_or(u32::MAX)));
    }

    /// The last `seconds` (at most [`WINDOW`]) as one array per figure, oldest first; seconds
    /// without a slot count zero (sessions: the last sample before them).
    pub fn series(&self, seconds: u64) -> Value {
        let seconds = seconds.clamp(1, WINDOW);
        let now = now_sec();
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|s| s.sec + seconds > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut at = slots.iter().peekable();
        let (mut t, mut ok, mut redirect, mut client, mut server) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut p50, mut p99, mut sessions, mut placements, mut placement_ms) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut rejections: Vec<(&'static str, u64)> = Vec::new();
        let mut last_sessions = None;
        for sec in now + 1 - seconds..=now {
            let empty = Slot::default();
            while at.next_if(|s| s.sec < sec).is_some() {}
            let slot = match at.peek() {
                Some(s) if s.sec == sec => at.next().unwrap_or(&empty),
                _ => &empty,
            };
            t.push(sec);
            ok.push(slot.by_class[1] + slot.by_class[0]);
            redirect.push(slot.by_class[2]);
            client.push(slot.by_class[3]);
            server.push(slot.by_class[4]);
            p50.push(percentile(&slot.latency, 0.50));
            p99.push(percentile(&slot.latency, 0.99));
            last_sessions = slot.sessions.or(last_sessions);
            sessions.push(last_sessions);
            placements.push(slot.placements);
            placement_ms.push(
                (slot.placements > 0)
                    .then(|| slot.placement_micros as f64 / f64::from(slot.placements) / 1000.0),
            );
            for (reason, n) in &slot.rejections {
                match rejections.iter_mut().find(|(r, _)| r == reason) {
                    Some((_, total)) => *total += u64::from(*n),
                    None => rejections.push((reason, u64::from(*n))),
                }
            }
        }
        rejections.sort_by_key(|r| std::cmp::Reverse(r.1));
        json!({
            "t": t,
            "requests": { "2xx": ok, "3xx": redirect, "4xx": client, "5xx": server },
            "latency_ms": { "p50": p50, "p99": p99 },
            "sessions": sessions,
            "placements": placements,
            "placement_ms": placement_ms,
            "rejections": rejections.into_iter().map(|(r, n)| json!({ "reason": r, "count": n })).collect::<Vec<_>>(),
        })
    }
}

/// The latency (ms, the bucket's upper bound) under which `q` of the second's requests fell;
/// `None` for a second without requests.
fn percentile(latency: &[u32; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().map(|n| u64::from(*n)).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += u64::from(*n);
        if seen >= rank {
            return Some((1u64 << (i + 1)) as f64 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_s_requests_give_its_rate_percentiles_and_rejections() {
        let stats = Stats::default();
        for _ in 0..98 {
            stats.request(200, Duration::from_micros(300), None);
        }
        stats.request(429, Duration::from_millis(40), Some("rate_limited"));
        stats.request(0, Duration::from_millis(40), None);
        stats.placement(Duration::from_millis(10));
        stats.sessions(3);
        let s = stats.series(5);
        assert_eq!(s["t"].as_array().unwrap().len(), 5);
        let total = |class: &str| -> u64 {
            s["requests"][class]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .sum()
        };
        // The second may have turned between two calls: sum over the window.
        assert_eq!((total("2xx"), total("4xx"), total("5xx")), (98, 1, 1));
        let p50 = s["latency_ms"]["p50"].as_array().unwrap();
        assert!(p50.iter().any(|v| v.as_f64() == Some(0.512)), "{p50:?}");
        assert_eq!(s["rejections"][0]["reason"], "rate_limited");
        assert!(s["sessions"].as_array().unwrap().contains(&json!(3)));
    }

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 1);
        assert_eq!(bucket(1023), 9);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }
}
