//! What the directory does differently on a replica: its map is a cache of the shared records
//! in Redis, filled on a miss, emptied by end announcements, and kept in step once a second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::*;
use crate::cluster::{
    HostPlaceError, OpenArgs, Opened, PLACING_DEADLINE, RedisDirectory, Restore, SlotTaken,
};

/// How often a replica that waits for another's placement looks again.
const PLACEMENT_POLL: Duration = Duration::from_millis(20);
/// How often a request for a session being suspended looks again.
const SUSPENSION_POLL: Duration = Duration::from_millis(20);
/// A cached session unused here this long leaves the cache (not the cluster).
const CACHE_IDLE: Duration = Duration::from_secs(60);
/// Sessions per activity batch.
const BATCH: usize = 256;

/// What a request brings to [`SessionDirectory::enter`].
#[derive(Debug)]
pub struct Entry<'a> {
    pub id: &'a SessionId,
    pub runtime: &'a Arc<str>,
    /// The version a new session starts on.
    pub version: u32,
    pub caller: &'a Caller,
    pub create: bool,
    /// The runtime's idle timeout and max lifetime (kept in the shared record).
    pub idle: Duration,
    pub life: Duration,
}

impl SessionDirectory {
    /// A replica's directory: a cache of the records `shared` keeps.
    pub fn replica(limits: AdmissionLimits, shared: Arc<RedisDirectory>) -> Self {
        let mut dir = Self::new(limits);
        dir.shared = Some(shared);
        dir
    }

    pub fn shared(&self) -> Option<&Arc<RedisDirectory>> {
        self.shared.as_ref()
    }

    /// Gives a request its session (see [`SessionDirectory::open`]); on a replica, a session
    /// not cached here is looked up in (or created in) the shared directory.
    pub async fn enter(&self, e: Entry<'_>) -> Result<Ticket, OpenError> {
        // A session being suspended is waited for, then resumed (bounded by the save's own
        // deadlines: QMP's 60 s and the state file's 30 s).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        // A replica's new-session token is taken once, however often the request waits.
        let mut rated = false;
        loop {
            let entered = match &self.shared {
                None => self.open(e.id, e.runtime, e.version, e.caller, e.create),
                Some(shared) => self.enter_replica(shared, &e, &mut rated).await,
            };
            match entered {
                Err(OpenError::Suspending) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(SUSPENSION_POLL).await;
                }
                other => return other,
            }
        }
    }

    async fn enter_replica(
        &self,
        shared: &Arc<RedisDirectory>,
        e: &Entry<'_>,
        rated: &mut bool,
    ) -> Result<Ticket, OpenError> {
        if !shared.within_grace() {
            return Err(OpenError::Unavailable);
        }
        let ticket = match self.open(e.id, e.runtime, e.version, e.caller, false) {
            Err(OpenError::NotFound) => return self.enter_shared(shared, e, rated).await,
            cached => cached?,
        };
        let s = &ticket.session;
        let inflight = s.inflight();
        s.peak.fetch_max(inflight, Ordering::AcqRel);
        if inflight > s.lease.load(Ordering::Acquire) {
            // More in flight here than this replica holds slots for: lease more (exact across
            // replicas; a steady load keeps its lease and never comes here).
            let max = self.admission.limits().max_inflight_per_session;
            match shared
                .lease(s.id.as_str(), s.incarnation, inflight, max)
                .await
            {
                Ok(Some(true)) => {
                    s.lease.fetch_max(inflight, Ordering::AcqRel);
                }
                Ok(Some(false)) => return Err(Rejection::SessionInflight.into()),
                Ok(None) => {
                    // Suspended under this cached copy (its announcement not seen yet).
                    self.forget(s.id.as_str(), s.incarnation, EndReason::Suspended);
                    return Err(OpenError::Suspending);
                }
                // Redis unreachable: within the outage grace a cached session keeps serving,
                // with this replica's own count as its only in-flight limit.
                Err(_) if shared.within_grace() => {}
                Err(_) => return Err(OpenError::Unavailable),
            }
        }
        Ok(ticket)
    }

    async fn enter_shared(
        &self,
        shared: &Arc<RedisDirectory>,
        e: &Entry<'_>,
        rated: &mut bool,
    ) -> Result<Ticket, OpenError> {
        let limits = self.admission.limits();
        if e.create && !*rated {
            *rated = true;
            // The new-session rate is this replica's (see the README: per replica).
            self.admission.take_session_token()?;
        }
        let args = OpenArgs {
            id: e.id.as_str(),
            runtime: e.runtime,
            principal: e.caller.principal.as_str(),
            quota_key: e.caller.quota.as_str(),
            version: e.version,
            create: e.create,
            max_active: limits.max_active_sessions,
            max_per_key: if e.caller.anonymous {
                limits.max_sessions_per_anonymous_address
            } else {
                limits.max_sessions_per_principal
            },
            idle: e.idle,
            life: e.life,
            max_inflight: limits.max_inflight_per_session,
        };
        let incarnation = uuid::Uuid::new_v4().as_u64_pair().0 | 1;
        let opened = shared
            .open(&args, incarnation)
            .await
            .map_err(|_| OpenError::Unavailable)?;
        let (record, placer) = match opened {
            Opened::Live(r) | Opened::Placing(r) => (r, false),
            Opened::Place(r) => (r, true),
            Opened::NotFound => return Err(OpenError::NotFound),
            Opened::Recovering => return Err(OpenError::Unavailable),
            Opened::Suspending => return Err(OpenError::Suspending),
            Opened::Inflight => return Err(Rejection::SessionInflight.into()),
            Opened::Full(retry) => {
                return Err(Rejection::ActiveSessions {
                    retry_after: retry.max(Duration::from_secs(1)),
                }
                .into());
            }
            Opened::Quota(retry) => {
                return Err(Rejection::PrincipalSessions {
                    retry_after: retry.max(Duration::from_secs(1)),
                }
                .into());
            }
        };
        let created = placer && record.incarnation == incarnation;
        let session = Session::new(
            e.id.clone(),
            Arc::clone(e.runtime),
            record.version,
            e.caller.principal.clone(),
            (record.incarnation, record.created_ms, record.last_ms),
            (e.idle, e.life),
            None,
        );
        session.placer.store(placer, Ordering::Release);
        if let Ok(mut resume) = session.resume_on_host.lock() {
            resume.clone_from(&record.resume);
        }
        if let Some(addrs) = record.backend {
            let _ = session.backend.set(Backend::shared(addrs));
        }
        let session = Arc::new(session);
        let max_inflight = limits.max_inflight_per_session;
        match self.sessions.entry(e.id.clone()) {
            dashmap::Entry::Occupied(mut o) if o.get().incarnation != record.incarnation => {
                // A stale incarnation (its end announcement not seen yet): replaced.
                let old = o.insert(Arc::clone(&session));
                self.retire(&old, EndReason::Stopped);
            }
            dashmap::Entry::Occupied(o) => {
                // Another request on this replica cached it first: join that one.
                let s = o.get();
                if s.inflight.fetch_add(1, Ordering::AcqRel) >= max_inflight {
                    s.inflight.fetch_sub(1, Ordering::AcqRel);
                    return Err(Rejection::SessionInflight.into());
                }
                s.touch();
                return Ok(Ticket {
                    session: Arc::clone(s),
                    created: false,
                    shared: Some(Arc::clone(shared)),
                });
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::clone(&session));
            }
        }
        Ok(Ticket {
            session,
            created,
            shared: Some(Arc::clone(shared)),
        })
    }

    /// The runtime session an `Mcp-Session-Id` routes to: known here, or in the shared
    /// directory.
    pub async fn find_mcp_session(&self, mcp_id: &str) -> Result<Option<SessionId>, OpenError> {
        if let Some(id) = self.session_for_mcp_id(mcp_id) {
            return Ok(Some(id));
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let id = shared
            .session_for_mcp_id(mcp_id)
            .await
            .map_err(|_| OpenError::Unavailable)?;
        Ok(id.and_then(|id| SessionId::parse(id.as_bytes()).ok()))
    }

    /// [`SessionDirectory::learn_mcp_id`], in the shared directory too on a replica.
    pub async fn learn_mcp(&self, session: &Session, mcp_id: &str) -> bool {
        let Some(shared) = &self.shared else {
            return self.learn_mcp_id(session, mcp_id);
        };
        let known = session
            .mcp_ids
            .lock()
            .is_ok_and(|ids| ids.iter().any(|i| &**i == mcp_id));
        if known {
            return true;
        }
        let routed = shared
            .learn_mcp_id(
                session.id.as_str(),
                session.incarnation,
                mcp_id,
                MAX_MCP_IDS_PER_SESSION,
            )
            .await
            .unwrap_or(false);
        // Cached here as well (the shared record decided; the local map only follows it).
        routed && self.learn_mcp_id(session, mcp_id)
    }

    /// Stops the session `id` if `owner` (runtime, principal) owns it, or whoever does when
    /// `None` (the admin API). Returns whether there was such a session.
    pub async fn stop_named(
        &self,
        id: &str,
        owner: Option<(&str, &Principal)>,
        reason: EndReason,
    ) -> Result<bool, OpenError> {
        let cached = self
            .get(id)
            .filter(|s| owner.is_none_or(|(rt, p)| *s.runtime == *rt && s.principal == *p));
        let Some(shared) = &self.shared else {
            return Ok(match cached {
                Some(s) => {
                    self.stop(&s, reason).await;
                    true
                }
                // A suspended session stops too: its snapshot goes.
                None => self.end_suspended(id, owner),
            });
        };
        let ended = shared
            .end(
                id,
                None,
                Some(reason.as_str()),
                owner.map(|(rt, p)| (rt, p.as_str())),
            )
            .await
            .map_err(|_| OpenError::Unavailable)?;
        if let Some(s) = cached {
            self.sessions.remove_if(&s.id, |_, v| Arc::ptr_eq(v, &s));
            self.retire(&s, reason);
        }
        Ok(ended.is_some())
    }

    /// Drops a session another replica ended from this cache (an end announcement).
    pub fn forget(&self, id: &str, incarnation: u64, reason: EndReason) {
        if let Some((_, s)) = self
            .sessions
            .remove_if(id, |_, s| s.incarnation == incarnation)
        {
            self.retire(&s, reason);
        }
    }

    /// Listens for end announcements for as long as the replica runs, resubscribing after a
    /// disconnection (the activity batch catches what was announced meanwhile).
    pub async fn listen_for_ends(&self) {
        let Some(shared) = &self.shared else { return };
        let mut warned = false;
        loop {
            match shared.subscribe().await {
                Ok(pubsub) => {
                    warned = false;
                    let mut messages = pubsub.into_on_message();
                    while let Some(msg) = messages.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if let Some((id, incarnation, reason)) = crate::cluster::parse_end(&payload)
                        {
                            self.forget(id, incarnation, EndReason::parse(reason));
                        }
                    }
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot subscribe to session ends; retrying");
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Once a second on a replica: sends this replica's activity, learns every cached session's
    /// shared last activity, drops sessions that ended elsewhere, leaves out of the cache what
    /// is unused here, and writes sessions back if Redis lost its data.
    pub async fn sync_shared(&self) -> Result<(), crate::cluster::Unavailable> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let now = now_ms();
        let sessions: Vec<Arc<Session>> = self
            .snapshot()
            .into_iter()
            .filter(|s| s.backend().is_some())
            .collect();
        let mut chunks: Vec<&[Arc<Session>]> = sessions.chunks(BATCH).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let batch: Vec<(String, u64, u64, u32)> = chunk
                .iter()
                .map(|s| {
                    // The lease shrinks to the most in flight here over the last second.
                    let inflight = s.inflight();
                    let lease = s.peak.swap(inflight, Ordering::AcqRel).max(inflight);
                    s.lease.store(lease, Ordering::Release);
                    let lease = lease.max(s.inflight());
                    s.lease.fetch_max(lease, Ordering::AcqRel);
                    let last = if s.inflight() > 0 {
                        now
                    } else {
                        s.last_activity_ms.load(Ordering::Acquire)
                    };
                    let mine = if last > s.flushed_ms.load(Ordering::Acquire) {
                        last
                    } else {
                        0
                    };
                    (s.id.as_str().to_owned(), s.incarnation, mine, lease)
                })
                .collect();
            let (reported, lasts) = shared.touch(&batch).await?;
            if shared.epoch_changed(&reported).await? {
                // Before anything is dropped as gone: Redis forgot it, this replica did not.
                let restored = self.restore_all(shared).await;
                tracing::warn!(
                    restored,
                    "the session directory lost its data (Redis restarted empty); this replica wrote back the sessions it knew"
                );
                return Ok(());
            }
            for ((s, (_, _, mine, _)), last) in chunk.iter().zip(&batch).zip(lasts) {
                match last {
                    Some(last) => {
                        s.flushed_ms.fetch_max(*mine, Ordering::AcqRel);
                        s.last_activity_ms.fetch_max(last, Ordering::AcqRel);
                    }
                    None => self.forget(s.id.as_str(), s.incarnation, EndReason::Stopped),
                }
            }
        }
        for s in &sessions {
            self.sessions.remove_if(&s.id, |_, v| {
                Arc::ptr_eq(v, s) && v.inflight() == 0 && v.idle_for(now) >= CACHE_IDLE
            });
        }
        Ok(())
    }

    async fn restore_all(&self, shared: &RedisDirectory) -> usize {
        let mut restored = 0;
        for s in self.snapshot() {
            let Some(backend) = s.backend().and_then(Backend::shared_addrs) else {
                continue;
            };
            let mcp_ids = s
                .mcp_ids
                .lock()
                .map(|ids| ids.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default();
            // A static endpoint is a slot; a relayed backend belongs to its host.
            let (slot, host) = match backend.relayed() {
                Some(r) => (None, shared.host_id_of(r.host)),
                None => (Some(backend.http.to_string()), None),
            };
            let record = Restore {
                id: s.id.as_str(),
                incarnation: s.incarnation,
                runtime: &s.runtime,
                principal: s.principal.as_str(),
                quota_key: s.quota_key().as_str(),
                version: s.version,
                created_ms: s.created_ms,
                last_ms: s.last_activity_ms.load(Ordering::Acquire),
                idle: s.idle,
                life: s.life,
                backend,
                slot: slot.as_deref(),
                mcp_ids,
                host: host.as_deref(),
            };
            if shared.restore(&record).await.unwrap_or(false) {
                restored += 1;
            }
        }
        restored
    }
}

/// The backend of a replica's session: the one another replica placed, or one this replica
/// places now (a static-pool slot taken in Redis).
pub(super) async fn obtain_backend(
    shared: &RedisDirectory,
    s: &Session,
    provider: &BackendProvider,
) -> Result<Backend, TicketError> {
    let give_up = Instant::now() + PLACING_DEADLINE + Duration::from_secs(5);
    let mut place = s.placer.load(Ordering::Acquire);
    loop {
        if place {
            return place_here(shared, s, provider).await;
        }
        if s.is_ended() {
            return Err(TicketError::Ended);
        }
        if Instant::now() > give_up {
            return Err(TicketError::Unavailable);
        }
        tokio::time::sleep(PLACEMENT_POLL).await;
        let args = OpenArgs {
            id: s.id.as_str(),
            runtime: &s.runtime,
            principal: s.principal.as_str(),
            quota_key: "",
            version: s.version,
            create: false,
            max_active: 0,
            max_per_key: 0,
            idle: s.idle,
            life: s.life,
            max_inflight: 0,
        };
        match shared.open(&args, 0).await {
            Ok(Opened::Live(r)) if r.incarnation == s.incarnation => {
                return r
                    .backend
                    .map(Backend::shared)
                    .ok_or(TicketError::Unavailable);
            }
            Ok(Opened::Place(r)) if r.incarnation == s.incarnation => {
                if let Ok(mut resume) = s.resume_on_host.lock() {
                    *resume = r.resume;
                }
                place = true;
            }
            Ok(Opened::Placing(r)) if r.incarnation == s.incarnation => {}
            Ok(_) => return Err(TicketError::Ended),
            Err(_) => return Err(TicketError::Unavailable),
        }
    }
}

/// Whether a backend from a shared record is one `provider` could have given: an endpoint of
/// its static pool, or a backend on a live host (whose record carries the cluster's MAC).
pub(super) async fn in_pool(
    backend: &Backend,
    provider: &BackendProvider,
    shared: Option<&RedisDirectory>,
) -> bool {
    let Some(addrs) = backend.shared_addrs() else {
        return false;
    };
    match (addrs.relayed(), provider, shared) {
        (None, BackendProvider::Static(pool), _) => pool.has(addrs),
        (Some(relay), BackendProvider::Spawned(_), Some(shared)) => {
            shared.knows_host(relay.host)
                || (shared.refresh_hosts().await.is_ok() && shared.knows_host(relay.host))
        }
        _ => false,
    }
}

async fn place_here(
    shared: &RedisDirectory,
    s: &Session,
    provider: &BackendProvider,
) -> Result<Backend, TicketError> {
    let BackendProvider::Static(pool) = provider else {
        // Spawned backends live on backend hosts, never in a replica.
        let resume = s.resume_on_host.lock().ok().and_then(|r| r.clone());
        return match shared
            .place_on_host(
                s.id.as_str(),
                s.incarnation,
                (&s.runtime, s.version),
                s.principal.as_str(),
                resume.as_ref(),
            )
            .await
        {
            Ok(placed) => {
                s.verified.store(true, Ordering::Release);
                s.resumed.store(resume.is_some(), Ordering::Release);
                Ok(Backend::shared(placed.addrs))
            }
            Err(HostPlaceError::Unavailable(_)) => Err(TicketError::Unavailable),
            Err(HostPlaceError::Lost) => Err(TicketError::Ended),
            Err(HostPlaceError::NoHost(why)) => {
                tracing::warn!(session = %s.id, %why, "no backend host took the session");
                Err(TicketError::Placement(PlacementError::NoHost(why)))
            }
        };
    };
    let (per, order) = pool.shared_order();
    let pairs: Vec<(String, String)> = order
        .iter()
        .map(|a| (a.http.to_string(), a.encode()))
        .collect();
    match shared
        .place_slot(s.id.as_str(), s.incarnation, per, &pairs)
        .await
        .map_err(|_| TicketError::Unavailable)?
    {
        SlotTaken::Taken(i) => order
            .into_iter()
            .nth(i)
            .map(Backend::shared)
            .ok_or(TicketError::Unavailable),
        SlotTaken::Full => Err(TicketError::Placement(PlacementError::PoolExhausted)),
        SlotTaken::Lost => Err(TicketError::Ended),
    }
}
