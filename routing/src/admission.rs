//! Admission limits: how many sessions may exist, per caller and in all, and how fast new
//! ones may start. (In-flight requests per session are counted on the session itself.)
//!
//! Callers are counted by their [`Caller::quota`] key: the principal for authenticated callers,
//! the client address for anonymous ones (a runtime with auth `none`), so one anonymous client
//! can neither spend every other client's request rate nor fill every session slot.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use auth::Principal;
use dashmap::DashMap;

/// Why a request was not admitted. The gateway maps each to an AWS error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the gateway's active session limit is reached")]
    ActiveSessions { retry_after: Duration },
    #[error("this caller's active session limit is reached")]
    PrincipalSessions { retry_after: Duration },
    #[error("new sessions are starting faster than allowed")]
    SessionRate { retry_after: Duration },
    #[error("too many requests are in flight in this session")]
    SessionInflight,
    #[error("this principal sends requests faster than allowed")]
    PrincipalRate { retry_after: Duration },
}

impl Rejection {
    /// A short stable name for metrics labels.
    pub const fn reason(&self) -> &'static str {
        match self {
            Rejection::ActiveSessions { .. } => "active_sessions",
            Rejection::PrincipalSessions { .. } => "principal_sessions",
            Rejection::SessionRate { .. } => "session_rate",
            Rejection::SessionInflight => "session_inflight",
            Rejection::PrincipalRate { .. } => "principal_rate",
        }
    }
}

/// `anonymous@<ip>`: the key an anonymous caller is counted under. A connection's requests come
/// from one address, so each thread keeps the last key it made (a clone instead of formatting
/// and allocating it again).
fn anonymous_key(ip: IpAddr) -> Principal {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, Principal)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((seen, key)) = last.as_ref()
            && *seen == ip
        {
            return key.clone();
        }
        let key = Principal::new(&format!("anonymous@{ip}"));
        *last = Some((ip, key.clone()));
        key
    })
}

/// Who a request is: the principal that owns its sessions, and the key it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    /// The principal itself, or `anonymous@<client address>` for anonymous callers.
    pub quota: Principal,
    pub anonymous: bool,
}

impl Caller {
    /// An authenticated caller: counted as itself.
    pub fn authenticated(principal: Principal) -> Self {
        Self {
            quota: principal.clone(),
            principal,
            anonymous: false,
        }
    }

    /// A caller of a runtime without authentication, counted by its address.
    pub fn anonymous(addr: Option<IpAddr>) -> Self {
        let quota = match addr {
            Some(ip) => anonymous_key(ip),
            None => Principal::anonymous(),
        };
        Self {
            principal: Principal::anonymous(),
            quota,
            anonymous: true,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    pub max_active_sessions: usize,
    pub max_sessions_per_principal: usize,
    /// Sessions one anonymous client address may hold at once.
    pub max_sessions_per_anonymous_address: usize,
    pub max_inflight_per_session: u32,
    pub new_sessions_per_second: u32,
    pub requests_per_second_per_principal: u32,
}

impl From<&conf::Limits> for AdmissionLimits {
    fn from(l: &conf::Limits) -> Self {
        Self {
            max_active_sessions: l.max_active_sessions,
            max_sessions_per_principal: l.max_sessions_per_principal,
            max_sessions_per_anonymous_address: l.max_sessions_per_anonymous_address,
            max_inflight_per_session: l.max_inflight_per_session,
            new_sessions_per_second: l.new_sessions_per_second,
            requests_per_second_per_principal: l.requests_per_second_per_principal,
        }
    }
}

#[derive(Debug)]
pub struct Admission {
    limits: RwLock<AdmissionLimits>,
    active: AtomicUsize,
    per_principal: DashMap<Principal, usize>,
    rate: RwLock<TokenBucket>,
    principal_rates: DashMap<Principal, TokenBucket>,
    /// When a session could next end (Unix ms), in all and per quota key: the honest
    /// `Retry-After` of a quota refusal. Kept by the lifecycle sweep.
    next_end_ms: AtomicU64,
    next_end_per_key: DashMap<Principal, u64>,
    /// The shortest time any session can live (ms): a session admitted between two sweeps
    /// cannot end sooner than this after its admission.
    shortest_life_ms: AtomicU64,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits: RwLock::new(limits),
            active: AtomicUsize::new(0),
            per_principal: DashMap::new(),
            rate: RwLock::new(TokenBucket::new(limits.new_sessions_per_second)),
            principal_rates: DashMap::new(),
            next_end_ms: AtomicU64::new(u64::MAX),
            next_end_per_key: DashMap::new(),
            shortest_life_ms: AtomicU64::new(0),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits.read().map_or_else(|p| *p.into_inner(), |l| *l)
    }

    /// Applies new limits (a config reload). Sessions over a lowered limit are not ended; new
    /// ones wait until the count is under it.
    pub fn set_limits(&self, new: AdmissionLimits) {
        let old = self.limits();
        if let Ok(mut l) = self.limits.write() {
            *l = new;
        }
        if new.new_sessions_per_second != old.new_sessions_per_second
            && let Ok(mut r) = self.rate.write()
        {
            *r = TokenBucket::new(new.new_sessions_per_second);
        }
        if new.requests_per_second_per_principal != old.requests_per_second_per_principal {
            self.principal_rates.clear();
        }
    }

    /// Admits one request of `principal` under its requests-per-second limit.
    pub fn admit_request(&self, principal: &Principal) -> Result<(), Rejection> {
        let take = |b: &TokenBucket| {
            b.take()
                .map_err(|retry_after| Rejection::PrincipalRate { retry_after })
        };
        if let Some(bucket) = self.principal_rates.get(principal) {
            return take(&bucket);
        }
        let per_second = self.limits().requests_per_second_per_principal;
        let bucket = self
            .principal_rates
            .entry(principal.clone())
            .or_insert_with(|| TokenBucket::new(per_second));
        take(&bucket)
    }

    /// Forgets the rate state of principals whose bucket has refilled (idle for a second or
    /// more): their next request starts from a full bucket anyway.
    pub fn prune_idle_principals(&self) {
        self.principal_rates.retain(|_, b| !b.is_full());
    }

    /// Sessions alive now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Admits one new session for `caller`, or says which limit stops it. The returned
    /// reservation gives the counts back when dropped, with the session that owns it.
    pub fn admit_session(self: &Arc<Self>, caller: &Caller) -> Result<Reservation, Rejection> {
        let l = self.limits();
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < l.max_active_sessions).then_some(n + 1)
            })
            .map_err(|_| Rejection::ActiveSessions {
                retry_after: self.retry_after(None),
            })?;
        let mut reservation = Reservation {
            admission: Arc::clone(self),
            principal: None,
        };
        let max_per_key = if caller.anonymous {
            l.max_sessions_per_anonymous_address
        } else {
            l.max_sessions_per_principal
        };
        {
            let mut n = self.per_principal.entry(caller.quota.clone()).or_insert(0);
            if *n >= max_per_key {
                drop(n);
                return Err(Rejection::PrincipalSessions {
                    retry_after: self.retry_after(Some(&caller.quota)),
                });
            }
            *n += 1;
        }
        reservation.principal = Some(caller.quota.clone());
        // The rate is taken last so that a session refused for another reason spends no token.
        self.take_session_token()?;
        self.note_admitted(&caller.quota);
        Ok(reservation)
    }
}

impl Admission {
    /// Counts a session a graceful upgrade handed over: it was admitted by the old process, so
    /// no limit refuses it here (it may leave a count over its limit until sessions end).
    pub fn adopt_session(self: &Arc<Self>, quota: &Principal) -> Reservation {
        self.active.fetch_add(1, Ordering::AcqRel);
        *self.per_principal.entry(quota.clone()).or_insert(0) += 1;
        Reservation {
            admission: Arc::clone(self),
            principal: Some(quota.clone()),
        }
    }

    /// Takes one token of the new-session rate (a replica's new sessions are counted in Redis;
    /// their rate is the replica's).
    pub fn take_session_token(&self) -> Result<(), Rejection> {
        self.rate
            .read()
            .map_err(|_| Rejection::SessionRate {
                retry_after: Duration::from_secs(1),
            })?
            .take()
            .map_err(|retry_after| Rejection::SessionRate { retry_after })
    }
}

/// One admitted session's share of the counts; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    admission: Arc<Admission>,
    principal: Option<Principal>,
}

impl Reservation {
    /// The quota key the session is counted under.
    pub fn quota_key(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }
}

impl Admission {
    /// Records when sessions could next end (the lifecycle sweep calls it with every live
    /// session's quota key and earliest possible end, Unix ms).
    pub fn set_next_ends<'a>(&self, ends: impl IntoIterator<Item = (&'a Principal, u64)>) {
        let mut global = u64::MAX;
        self.next_end_per_key.clear();
        for (key, at) in ends {
            global = global.min(at);
            self.next_end_per_key
                .entry(key.clone())
                .and_modify(|t| *t = (*t).min(at))
                .or_insert(at);
        }
        self.next_end_ms.store(global, Ordering::Release);
    }

    /// The shortest idle timeout or lifetime of any runtime (the lifecycle sweep keeps it).
    pub fn set_shortest_session_life(&self, life: Duration) {
        let ms = u64::try_from(life.as_millis()).unwrap_or(u64::MAX);
        self.shortest_life_ms.store(ms, Ordering::Release);
    }

    /// Counts a session admitted now into the next ends until the sweep sees it, so that a
    /// refusal right after gets an honest `Retry-After` too.
    fn note_admitted(&self, key: &Principal) {
        let life = self.shortest_life_ms.load(Ordering::Acquire);
        if life == 0 {
            return;
        }
        let at = crate::directory::now_ms().saturating_add(life);
        self.next_end_ms.fetch_min(at, Ordering::AcqRel);
        self.next_end_per_key
            .entry(key.clone())
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// How long until a session of `key` (or any session) could end: a quota refusal's honest
    /// `Retry-After`, at least a second.
    fn retry_after(&self, key: Option<&Principal>) -> Duration {
        let at = match key {
            Some(k) => self.next_end_per_key.get(k).map(|t| *t),
            None => Some(self.next_end_ms.load(Ordering::Acquire)),
        };
        let now = crate::directory::now_ms();
        match at {
            Some(at) if at != u64::MAX && at > now => Duration::from_millis(at - now),
            _ => Duration::from_secs(1),
        }
        .max(Duration::from_secs(1))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let a = &self.admission;
        a.active.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = &self.principal {
            a.per_principal.remove_if_mut(p, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }
}

/// Tokens refill continuously at `rate` per second, up to one second's worth.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    fn is_full(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.0 + s.1.elapsed().as_secs_f64() * self.rate >= self.rate)
            .unwrap_or(true)
    }

    /// Takes a token, or says how long until one is available.
    fn take(&self) -> Result<(), Duration> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(()); // a poisoned bucket admits rather than wedging the gateway
        };
        let now = Instant::now();
        let (tokens, last) = *s;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate);
        if tokens >= 1.0 {
            *s = (tokens - 1.0, now);
            Ok(())
        } else {
            *s = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(active: usize, per_principal: usize, rate: u32) -> AdmissionLimits {
        AdmissionLimits {
            max_active_sessions: active,
            max_sessions_per_principal: per_principal,
            max_sessions_per_anonymous_address: 1,
            max_inflight_per_session: 1,
            new_sessions_per_second: rate,
            requests_per_second_per_principal: 2,
        }
    }

    #[test]
    fn active_limit_and_give_back() {
        let a = Arc::new(Admission::new(limits(2, 10, 1000)));
        let p = Caller::authenticated(Principal::new("p"));
        let r1 = a.admit_session(&p).unwrap();
        let _r2 = a.admit_session(&p).unwrap();
        assert!(matches!(
            a.admit_session(&p).unwrap_err(),
            Rejection::ActiveSessions { .. }
        ));
        drop(r1);
        assert!(a.admit_session(&p).is_ok());
    }

    #[test]
    fn principal_limit_is_per_principal() {
        let a = Arc::new(Admission::new(limits(10, 1, 1000)));
        let p = Caller::authenticated(Principal::new("p"));
        let q = Caller::authenticated(Principal::new("q"));
        let _r = a.admit_session(&p).unwrap();
        assert!(matches!(
            a.admit_session(&p).unwrap_err(),
            Rejection::PrincipalSessions { .. }
        ));
        assert_eq!(a.active(), 1, "a refused session gives its count back");
        assert!(a.admit_session(&q).is_ok());
    }

    #[test]
    fn rate_limit_says_when_to_retry() {
        let a = Arc::new(Admission::new(limits(100, 100, 2)));
        let p = Caller::authenticated(Principal::new("p"));
        let _k: Vec<_> = (0..2).map(|_| a.admit_session(&p).unwrap()).collect();
        match a.admit_session(&p) {
            Err(Rejection::SessionRate { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.active(), 2);
    }

    #[test]
    fn request_rate_is_per_principal() {
        let a = Admission::new(limits(10, 10, 10));
        let (p, q) = (Principal::new("p"), Principal::new("q"));
        assert!(a.admit_request(&p).is_ok());
        assert!(a.admit_request(&p).is_ok());
        assert!(matches!(
            a.admit_request(&p),
            Err(Rejection::PrincipalRate { .. })
        ));
        assert!(a.admit_request(&q).is_ok());
        a.prune_idle_principals();
        assert_eq!(a.principal_rates.len(), 2, "busy buckets are kept");
    }

    #[test]
    fn anonymous_callers_are_counted_by_address() {
        let a = Arc::new(Admission::new(limits(10, 10, 1000)));
        let one = Caller::anonymous(Some([127, 0, 0, 1].into()));
        let two = Caller::anonymous(Some([127, 0, 0, 2].into()));
        assert_eq!(
            one.principal, two.principal,
            "both own sessions as `anonymous`"
        );
        let _r = a.admit_session(&one).unwrap();
        assert!(matches!(
            a.admit_session(&one),
            Err(Rejection::PrincipalSessions { .. })
        ));
        assert!(
            a.admit_session(&two).is_ok(),
            "another address is not held back"
        );
    }

    #[test]
    fn quota_refusals_say_when_a_session_can_end() {
        let a = Arc::new(Admission::new(limits(1, 10, 1000)));
        let p = Caller::authenticated(Principal::new("p"));
        let _r = a.admit_session(&p).unwrap();
        let in_90s = crate::directory::now_ms() + 90_000;
        a.set_next_ends([(&p.quota, in_90s)]);
        match a.admit_session(&p) {
            Err(Rejection::ActiveSessions { retry_after }) => {
                assert!(
                    (88..=90).contains(&retry_after.as_secs()),
                    "{retry_after:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
