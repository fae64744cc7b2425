//! The `static` provider: sessions take slots of already-deployed runtimes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use conf::{Endpoint, StaticPool};

use super::{Backend, Lease, PlacementError};

#[derive(Debug)]
pub struct StaticProvider {
    pool: Arc<Pool>,
}

/// Sessions placed on each endpoint (by its HTTP address), shared by every pool of every config
/// snapshot: a reload that builds new pools cannot hand an occupied endpoint to a new session.
#[derive(Debug, Default)]
pub struct SlotRegistry(dashmap::DashMap<std::net::SocketAddr, Arc<AtomicU32>>);

impl SlotRegistry {
    fn counter(&self, endpoint: &Endpoint) -> Arc<AtomicU32> {
        Arc::clone(&self.0.entry(endpoint.http).or_default())
    }
}

#[derive(Debug)]
struct Pool {
    endpoints: Vec<Endpoint>,
    sessions_per_endpoint: u32,
    /// Sessions placed on each endpoint now (shared through the registry).
    used: Vec<Arc<AtomicU32>>,
    /// Where the next search starts, so sessions spread over the pool.
    next: AtomicUsize,
}

impl StaticProvider {
    pub fn new(spec: &StaticPool, slots: &SlotRegistry) -> Self {
        Self {
            pool: Arc::new(Pool {
                endpoints: spec.endpoints.clone(),
                sessions_per_endpoint: spec.sessions_per_endpoint,
                used: spec.endpoints.iter().map(|e| slots.counter(e)).collect(),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// Takes a free slot, starting after the last one handed out. Lock-free: one CAS per
    /// endpoint tried.
    pub fn place(&self) -> Result<Backend, PlacementError> {
        let pool = &self.pool;
        let n = pool.endpoints.len();
        let start = pool.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let index = (start + i) % n;
            let taken = pool.used[index].fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < pool.sessions_per_endpoint).then_some(u + 1)
            });
            if taken.is_ok() {
                return Ok(Backend {
                    addrs: pool.endpoints[index].into(),
                    lease: Lease::Slot(SlotLease {
                        pool: Arc::clone(pool),
                        index,
                        released: AtomicBool::new(false),
                    }),
                    storage: None,
                });
            }
        }
        Err(PlacementError::PoolExhausted)
    }

    /// Takes the slot of the endpoint at `addrs` for a session handed over by a graceful
    /// upgrade (it held the slot in the old process); `None` if the pool has no such endpoint.
    pub fn claim(&self, addrs: &super::Addrs) -> Option<Backend> {
        let pool = &self.pool;
        let index = pool
            .endpoints
            .iter()
            .position(|e| super::Addrs::from(*e) == *addrs)?;
        pool.used[index].fetch_add(1, Ordering::AcqRel);
        Some(Backend {
            addrs: addrs.clone(),
            lease: Lease::Slot(SlotLease {
                pool: Arc::clone(pool),
                index,
                released: AtomicBool::new(false),
            }),
            storage: None,
        })
    }

    /// For a replica, whose slots are counted in Redis: sessions per endpoint, and the
    /// endpoints in the order to try (starting after the last one handed out here).
    pub fn shared_order(&self) -> (u32, Vec<super::Addrs>) {
        let pool = &self.pool;
        let n = pool.endpoints.len();
        let start = pool.next.fetch_add(1, Ordering::Relaxed);
        let order = (0..n)
            .map(|i| pool.endpoints[(start + i) % n].into())
            .collect();
        (pool.sessions_per_endpoint, order)
    }

    /// Whether `addrs` are one of this pool's endpoints.
    pub fn has(&self, addrs: &super::Addrs) -> bool {
        self.pool
            .endpoints
            .iter()
            .any(|e| super::Addrs::from(*e) == *addrs)
    }

    /// Sessions placed on each endpoint now (for tests and the admin API).
    pub fn occupancy(&self) -> Vec<u32> {
        self.pool
            .used
            .iter()
            .map(|u| u.load(Ordering::Acquire))
            .collect()
    }
}

/// One session's claim on an endpoint; freed once, by `release` or on drop.
#[derive(Debug)]
pub(super) struct SlotLease {
    pool: Arc<Pool>,
    index: usize,
    released: AtomicBool,
}

impl SlotLease {
    pub(super) fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.pool.used[self.index].fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for SlotLease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, per: u32) -> StaticProvider {
        pool_in(&SlotRegistry::default(), n, per)
    }

    fn pool_in(slots: &SlotRegistry, n: u16, per: u32) -> StaticProvider {
        StaticProvider::new(
            &StaticPool {
                endpoints: (0..n)
                    .map(|i| Endpoint {
                        http: ([127, 0, 0, 1], 10_000 + i).into(),
                        mcp: None,
                        a2a: None,
                    })
                    .collect(),
                sessions_per_endpoint: per,
            },
            slots,
        )
    }

    #[test]
    fn one_session_per_endpoint_until_released() {
        let p = pool(3, 1);
        let a = p.place().unwrap();
        let b = p.place().unwrap();
        let c = p.place().unwrap();
        let port = |b: &Backend| match b.addr(conf::Protocol::Http) {
            Some(crate::provider::BackendAddr::Tcp(a)) => a.port(),
            other => panic!("not TCP: {other:?}"),
        };
        let mut ports = vec![port(&a), port(&b), port(&c)];
        ports.sort();
        assert_eq!(ports, [10_000, 10_001, 10_002]);
        assert!(matches!(p.place(), Err(PlacementError::PoolExhausted)));
        let freed = port(&b);
        drop(b);
        assert_eq!(port(&p.place().unwrap()), freed);
    }

    #[test]
    fn release_is_idempotent() {
        let p = pool(1, 2);
        let a = p.place().unwrap();
        let Lease::Slot(s) = &a.lease else { panic!() };
        s.release();
        s.release();
        drop(a);
        assert_eq!(p.occupancy(), [0]);
    }

    #[test]
    fn a_rebuilt_pool_sees_the_slots_taken_through_the_old_one() {
        let slots = SlotRegistry::default();
        let old = pool_in(&slots, 1, 1);
        let held = old.place().unwrap();
        let new = pool_in(&slots, 1, 1);
        assert!(matches!(new.place(), Err(PlacementError::PoolExhausted)));
        drop(held);
        assert!(new.place().is_ok());
    }
}
