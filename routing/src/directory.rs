//! The session directory: session id → one sticky backend.
//!
//! A session is created on first use, its backend placed once (concurrent first requests wait
//! for the same placement), and every later request with its id reaches that backend. A
//! request holds a [`Ticket`] while in flight; the idle sweep removes a session only under the
//! map's shard lock and only when no ticket is out, so no request is ever handed a backend
//! that is being torn down by the sweep.
//!
//! A replica (`[cluster] directory = "redis"`) serves from the same map, which is then a cache
//! of the shared records in Redis ([`crate::cluster`]); `shared.rs` holds what differs.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::Principal;
use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::admission::{Admission, AdmissionLimits, Caller, Rejection, Reservation};
use crate::cluster::RedisDirectory;
use crate::provider::{Backend, BackendProvider, PlacementError};
use crate::session_id::SessionId;

/// MCP session ids remembered per runtime session; older ones are forgotten first.
const MAX_MCP_IDS_PER_SESSION: usize = 16;

mod end_reason;
pub mod endpoint_tokens;
mod handover;
pub mod hibernate;
mod shared;
pub mod stop_tokens;
mod sweep;
pub mod traffic;
pub use end_reason::EndReason;
pub use handover::{HandedBackend, HandedSession};
pub use shared::Entry;
pub use sweep::Swept;

#[derive(Debug)]
pub struct SessionDirectory {
    sessions: DashMap<SessionId, Arc<Session>>,
    /// `Mcp-Session-Id` (learned from backends' responses) → runtime session.
    mcp_ids: DashMap<Box<str>, SessionId>,
    admission: Arc<Admission>,
    /// The shared records behind this map, on a replica.
    shared: Option<Arc<RedisDirectory>>,
    /// Handed to a new process by a graceful upgrade: this process ends no session any more.
    handed_over: AtomicBool,
    /// Stops' client tokens, when there is no shared directory to keep them.
    stop_tokens: stop_tokens::LocalTokens,
    /// Session endpoints' browser tokens, likewise.
    endpoint_grants: endpoint_tokens::LocalGrants,
    /// Suspended sessions (`on_idle = "suspend"`), by id.
    suspended: DashMap<SessionId, hibernate::Suspended>,
}

/// Why a request could not be given its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Unknown id, or one that belongs to another principal or runtime (indistinguishable).
    #[error("session not found")]
    NotFound,
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The shared directory (Redis) cannot be reached.
    #[error("session directory unavailable")]
    Unavailable,
    /// The session is being suspended: ask again shortly (then it resumes).
    #[error("the session is being suspended")]
    Suspending,
}

/// One live session.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    /// Name of the runtime it belongs to (names survive config reloads; indices do not).
    pub runtime: Arc<str>,
    /// The runtime version it runs; it stays on it for its whole life.
    pub version: u32,
    pub principal: Principal,
    /// Its incarnation: a later session with the same id has another (shared records).
    pub incarnation: u64,
    created_ms: u64,
    last_activity_ms: AtomicU64,
    inflight: AtomicU32,
    backend: OnceCell<Backend>,
    ended: AtomicBool,
    /// Why it ended ([`EndReason::code`]; 0 while it lives).
    end_reason: AtomicU8,
    mcp_ids: Mutex<Vec<Box<str>>>,
    /// What the lifecycle sweep learned from the backend's `/ping`.
    pub(crate) health: Mutex<HealthState>,
    /// Its bytes, last requests and health checks (the admin dashboard).
    pub traffic: traffic::Traffic,
    /// Its share of this gateway's session counts (none on a replica: Redis counts them).
    reservation: Option<Reservation>,
    /// On a replica: this replica must place its backend (else it waits for another's).
    placer: AtomicBool,
    /// On a replica: the last activity already sent to Redis.
    flushed_ms: AtomicU64,
    /// On a replica: its runtime's idle timeout and max lifetime, as the record keeps them.
    idle: Duration,
    life: Duration,
    /// On a replica: in-flight slots leased to this replica in Redis, and the most in flight
    /// here since the last activity batch (what the lease shrinks to).
    lease: AtomicU32,
    peak: AtomicU32,
    /// On a replica: its backend was checked against the runtime's pool.
    verified: AtomicBool,
    /// It resumes a suspended session: its backend comes from this snapshot (or is fresh, its
    /// files restored), not from a plain placement. Taken by the placement.
    resume: Mutex<Option<hibernate::Resume>>,
    /// On a replica: the snapshot its placement restores on a host.
    resume_on_host: Mutex<Option<crate::cluster::ResumeOnHost>>,
    /// Its backend was resumed from suspension.
    resumed: AtomicBool,
    /// Being suspended now: requests wait until it is (then they resume it).
    suspending: AtomicBool,
}

/// The health-check record of one session.
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    pub(crate) failures: u32,
    pub(crate) last_checked_ms: u64,
    pub(crate) last: Option<crate::ping::Health>,
}

impl Session {
    /// A session: `(incarnation, created ms, last activity ms)` as given.
    fn new(
        id: SessionId,
        runtime: Arc<str>,
        version: u32,
        principal: Principal,
        (incarnation, created_ms, last_ms): (u64, u64, u64),
        (idle, life): (Duration, Duration),
        reservation: Option<Reservation>,
    ) -> Self {
        Self {
            id,
            runtime,
            version,
            principal,
            incarnation,
            created_ms,
            last_activity_ms: AtomicU64::new(last_ms),
            inflight: AtomicU32::new(1),
            backend: OnceCell::new(),
            ended: AtomicBool::new(false),
            end_reason: AtomicU8::new(0),
            mcp_ids: Mutex::new(Vec::new()),
            health: Mutex::new(HealthState::default()),
            traffic: traffic::Traffic::default(),
            reservation,
            placer: AtomicBool::new(false),
            flushed_ms: AtomicU64::new(last_ms),
            idle,
            life,
            lease: AtomicU32::new(1),
            peak: AtomicU32::new(1),
            verified: AtomicBool::new(false),
            resume: Mutex::new(None),
            resume_on_host: Mutex::new(None),
            resumed: AtomicBool::new(false),
            suspending: AtomicBool::new(false),
        }
    }

    /// True when its backend was restored from suspension rather than placed afresh.
    pub fn resumed(&self) -> bool {
        self.resumed.load(Ordering::Acquire)
    }

    /// The placed backend; `None` while it is still being provisioned.
    pub fn backend(&self) -> Option<&Backend> {
        self.backend.get()
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        EndReason::from_code(self.end_reason.load(Ordering::Acquire))
    }

    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.created_ms))
    }

    /// Time since the last request started or finished (or the backend last reported busy).
    pub fn idle_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.last_activity_ms.load(Ordering::Acquire)))
    }

    /// Marks the session active now (a request, or a backend that reports itself busy).
    pub fn touch(&self) {
        self.last_activity_ms.fetch_max(now_ms(), Ordering::AcqRel);
    }

    /// Moves the last activity forward to a backend's reported status change (never into the
    /// future, whatever the backend's clock says).
    pub fn touch_at_unix_secs(&self, secs: u64) {
        let ms = secs.saturating_mul(1000).min(now_ms());
        self.last_activity_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// Unix seconds when the session started.
    pub fn created_unix_secs(&self) -> u64 {
        self.created_ms / 1000
    }

    /// The key the session is counted under (its principal, or an anonymous caller's address).
    pub fn quota_key(&self) -> &Principal {
        self.reservation
            .as_ref()
            .and_then(Reservation::quota_key)
            .unwrap_or(&self.principal)
    }

    /// The earliest it could end (Unix ms), idle and untouched from now on.
    pub fn earliest_end_ms(&self, idle_timeout: Duration, max_lifetime: Duration) -> u64 {
        let idle_end =
            self.last_activity_ms.load(Ordering::Acquire) + idle_timeout.as_millis() as u64;
        let life_end = self.created_ms + max_lifetime.as_millis() as u64;
        idle_end.min(life_end)
    }
}

/// A request's hold on its session: counts as in flight until dropped.
#[derive(Debug)]
pub struct Ticket {
    session: Arc<Session>,
    /// True when this request created the session.
    pub created: bool,
    /// On a replica: where the backend of a session placed elsewhere is looked up.
    shared: Option<Arc<RedisDirectory>>,
}

impl Ticket {
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The session's backend, placing it with `provider` if this is the first request.
    /// Concurrent first requests share one placement.
    pub async fn backend(&self, provider: &BackendProvider) -> Result<&Backend, TicketError> {
        if self.session.is_ended() {
            return Err(TicketError::Ended);
        }
        let backend = self
            .session
            .backend
            .get_or_try_init(|| async {
                if let Some(shared) = &self.shared {
                    return shared::obtain_backend(shared, &self.session, provider).await;
                }
                let resume = self.session.resume.lock().ok().and_then(|mut r| r.take());
                let backend = match &resume {
                    Some(r) => hibernate::resume_backend(&self.session, provider, r).await,
                    None => provider.place().await,
                }
                .map_err(TicketError::Placement)?;
                backend.assign(self.session.id.as_str());
                backend
                    .check_out_storage(self.session.principal.as_str(), self.session.id.as_str())
                    .await
                    .map_err(|e| TicketError::Placement(PlacementError::Isolation(e)))?;
                Ok(backend)
            })
            .await?;
        if self.shared.is_some() && !self.session.verified.load(Ordering::Acquire) {
            // The record came from Redis: its backend must be one this runtime's pool has, so
            // that whoever can write to Redis still cannot point a replica anywhere else.
            if !shared::in_pool(backend, provider, self.shared.as_deref()).await {
                tracing::error!(session = %self.session.id, "a shared session record names a backend outside the runtime's pool; refused");
                return Err(TicketError::Unavailable);
            }
            self.session.verified.store(true, Ordering::Release);
        }
        if self.session.is_ended() {
            // Ended while we placed: the backend is released when the session is dropped.
            return Err(TicketError::Ended);
        }
        Ok(backend)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.touch();
        self.session.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("the session ended while the request waited")]
    Ended,
    #[error(transparent)]
    Placement(PlacementError),
    #[error("session directory unavailable")]
    Unavailable,
}

impl SessionDirectory {
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            sessions: DashMap::new(),
            mcp_ids: DashMap::new(),
            admission: Arc::new(Admission::new(limits)),
            shared: None,
            handed_over: AtomicBool::new(false),
            stop_tokens: stop_tokens::LocalTokens::default(),
            endpoint_grants: endpoint_tokens::LocalGrants::default(),
            suspended: DashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Gives a request its session: the existing one with this id (if the caller's principal
    /// owns it and it belongs to `runtime`), or a new one on `version` when `create` is set and
    /// admission allows.
    pub fn open(
        &self,
        id: &SessionId,
        runtime: &Arc<str>,
        version: u32,
        caller: &Caller,
        create: bool,
    ) -> Result<Ticket, OpenError> {
        let principal = &caller.principal;
        let max_inflight = self.admission.limits().max_inflight_per_session;
        loop {
            if let Some(s) = self.sessions.get(id) {
                // Under the shard's read lock: the sweep cannot remove it until we are counted.
                if s.runtime != *runtime || s.principal != *principal {
                    return Err(OpenError::NotFound);
                }
                if s.suspending.load(Ordering::Acquire) {
                    return Err(OpenError::Suspending);
                }
                let before = s.inflight.fetch_add(1, Ordering::AcqRel);
                if before >= max_inflight {
                    s.inflight.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejection::SessionInflight.into());
                }
                s.touch();
                return Ok(Ticket {
                    session: Arc::clone(&s),
                    created: false,
                    shared: self.shared.clone(),
                });
            }
            // A suspended session is found as a live one is (only by its own principal).
            let suspended = self.suspended_for(id, runtime, principal)?;
            if !create && suspended.is_none() {
                return Err(OpenError::NotFound);
            }
            let reservation = self.admission.admit_session(caller)?;
            let now = now_ms();
            let session = Arc::new(Session::new(
                id.clone(),
                Arc::clone(runtime),
                suspended.as_ref().map_or(version, |s| s.version),
                principal.clone(),
                (0, suspended.as_ref().map_or(now, |s| s.created_ms), now),
                (Duration::ZERO, Duration::ZERO),
                Some(reservation),
            ));
            if let (Some(s), Ok(mut resume), Ok(mut mcp_ids)) =
                (&suspended, session.resume.lock(), session.mcp_ids.lock())
            {
                *resume = Some(s.resume());
                mcp_ids.clone_from(&s.mcp_ids);
            }
            match self.sessions.entry(id.clone()) {
                dashmap::Entry::Vacant(v) => {
                    v.insert(Arc::clone(&session));
                    if suspended.is_some() {
                        self.suspended.remove(id);
                    }
                    return Ok(Ticket {
                        session,
                        created: true,
                        shared: None,
                    });
                }
                // Another request created it first; drop ours (and its reservation) and join.
                dashmap::Entry::Occupied(_) => continue,
            }
        }
    }

    /// The runtime session an `Mcp-Session-Id` belongs to.
    pub fn session_for_mcp_id(&self, mcp_id: &str) -> Option<SessionId> {
        self.mcp_ids.get(mcp_id).map(|s| s.clone())
    }

    /// Remembers that `mcp_id` (from the backend's `initialize` answer) routes to `session`.
    /// An id another live session already owns is never taken over: a backend could otherwise
    /// claim a victim's `Mcp-Session-Id` and receive (or break) the victim's MCP calls. Returns
    /// whether the id routes to `session` now.
    pub fn learn_mcp_id(&self, session: &Session, mcp_id: &str) -> bool {
        if session.is_ended() {
            return false;
        }
        let Ok(mut ids) = session.mcp_ids.lock() else {
            return false;
        };
        if ids.iter().any(|i| &**i == mcp_id) {
            return true;
        }
        match self.mcp_ids.entry(mcp_id.into()) {
            dashmap::Entry::Occupied(_) => return false,
            dashmap::Entry::Vacant(v) => {
                v.insert(session.id.clone());
            }
        }
        if ids.len() >= MAX_MCP_IDS_PER_SESSION {
            let old = ids.remove(0);
            self.mcp_ids.remove_if(&old, |_, s| *s == session.id);
        }
        ids.push(mcp_id.into());
        true
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id).map(|s| Arc::clone(&s))
    }

    /// Every live session.
    pub fn snapshot(&self) -> Vec<Arc<Session>> {
        self.sessions
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect()
    }

    /// Ends a session now, in-flight requests or not, and releases its backend (with the
    /// backend's grace period). Returns false if it had already ended.
    pub async fn end(&self, session: &Arc<Session>, reason: EndReason) -> bool {
        self.sessions
            .remove_if(&session.id, |_, s| Arc::ptr_eq(s, session));
        self.release(session, reason, false).await
    }

    /// Stops a session at once (StopRuntimeSession, the admin API, a hung backend): requests in
    /// flight lose their backend, which is killed without a grace period. False if it already
    /// ended.
    pub async fn stop(&self, session: &Arc<Session>, reason: EndReason) -> bool {
        self.sessions
            .remove_if(&session.id, |_, s| Arc::ptr_eq(s, session));
        self.release(session, reason, true).await
    }

    /// Ends a session only if it is still idle for at least `idle` with nothing in flight,
    /// checked atomically against requests that are about to use it.
    pub async fn end_if_idle(
        &self,
        session: &Arc<Session>,
        idle: Duration,
        reason: EndReason,
    ) -> bool {
        let now = now_ms();
        let removed = self.sessions.remove_if(&session.id, |_, s| {
            Arc::ptr_eq(s, session) && s.inflight() == 0 && s.idle_for(now) >= idle
        });
        removed.is_some() && self.release(session, reason, false).await
    }

    /// Retires the session and releases its backend: gracefully, or `at_once` (no grace).
    async fn release(&self, session: &Session, reason: EndReason, at_once: bool) -> bool {
        if self.handed_over.load(Ordering::Acquire) || !self.retire(session, reason) {
            return false;
        }
        if let Some(shared) = &self.shared {
            // Ended in the shared record, which frees the slot and tells every replica.
            let id = session.id.as_str();
            if let Err(e) = shared
                .end(id, Some(session.incarnation), Some(reason.as_str()), None)
                .await
            {
                tracing::warn!(session = %id, error = %e, "cannot end the session in the shared directory; it ends there at its idle deadline");
            }
            return true;
        }
        match session.backend() {
            Some(b) if at_once => b.release_now().await,
            Some(b) => b.release().await,
            None => {}
        }
        true
    }

    /// Marks a removed session ended and forgets its MCP ids; false if it already was.
    fn retire(&self, session: &Session, reason: EndReason) -> bool {
        if session.ended.swap(true, Ordering::AcqRel) {
            return false;
        }
        session.end_reason.store(reason.code(), Ordering::Release);
        // A resumed session that ends before its placement took up its snapshot.
        if let Some(r) = session.resume.lock().ok().and_then(|mut r| r.take()) {
            hibernate::discard(&r);
        }
        if let Ok(ids) = session.mcp_ids.lock() {
            for mcp_id in ids.iter() {
                self.mcp_ids.remove_if(mcp_id, |_, s| *s == session.id);
            }
        }
        true
    }

    /// Ends every session (at shutdown), releasing the backends concurrently. Returns how many.
    /// A replica ends none: its sessions live on in Redis and their backends elsewhere.
    pub async fn end_all(&self) -> usize {
        if self.shared.is_some() || self.handed_over.load(Ordering::Acquire) {
            return 0;
        }
        let mut releases = tokio::task::JoinSet::new();
        for s in self.snapshot() {
            self.sessions.remove_if(&s.id, |_, v| Arc::ptr_eq(v, &s));
            if self.retire(&s, EndReason::Shutdown) {
                releases.spawn(async move {
                    if let Some(b) = s.backend() {
                        b.release().await;
                    }
                });
            }
        }
        let n = releases.len();
        while releases.join_next().await.is_some() {}
        n
    }
}

/// Milliseconds since the Unix epoch: the clock of activity timestamps, comparable with the
/// backends' `time_of_last_update`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
