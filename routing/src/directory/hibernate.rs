//! Hibernation (`on_idle = "suspend"`): an idle session is not ended but suspended — its
//! microVM guest saved whole (memory, devices, the session storage it holds) to a snapshot
//! under the runtime's snapshot root, other backends down to their session storage — and the
//! next request with its id resumes it: the same principal only, its age and version kept, one
//! backend however many requests arrive meanwhile (they wait on its placement). A suspended
//! session that nobody resumes within its retention ends for good and its snapshot goes; so
//! does one that is stopped.
//!
//! What each provider keeps: `microvm` everything (the guest resumes where it was, clock and
//! entropy refreshed as after a template restore); `sandbox` and `process` their session
//! storage (`filesystems`) — the backend is placed afresh. Suspension is decided here in the
//! all-in-one; on a replica idle sessions end as before.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auth::Principal;
use conf::Suspend;
use sha2::{Digest, Sha256};

use super::{EndReason, OpenError, Session, SessionDirectory, now_ms};
use crate::provider::{Backend, BackendProvider, PlacementError};
use crate::session_id::SessionId;

/// A suspended session.
#[derive(Debug, Clone)]
pub struct Suspended {
    pub runtime: Arc<str>,
    pub version: u32,
    pub principal: Principal,
    pub created_ms: u64,
    pub suspended_ms: u64,
    /// Its own directory under the runtime's snapshot root.
    pub dir: PathBuf,
    /// A microVM's saved state; `None`: only its files were kept.
    pub snapshot: Option<PathBuf>,
    pub bytes: u64,
    pub retention: Duration,
    /// The `Mcp-Session-Id`s it had learned: they still route to it (its guest keeps their
    /// state), and a request carrying one resumes it.
    pub mcp_ids: Vec<Box<str>>,
}

/// What a resuming session's placement restores.
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    dir: PathBuf,
    snapshot: Option<PathBuf>,
}

impl Suspended {
    pub(crate) fn resume(&self) -> Resume {
        Resume {
            dir: self.dir.clone(),
            snapshot: self.snapshot.clone(),
        }
    }
}

/// How a suspension came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspension {
    /// Suspended: its snapshot's bytes (0: files only).
    Suspended { bytes: u64, took: Duration },
    /// Ended instead: the snapshot would not fit the runtime's budget.
    OverBudget,
    /// Ended instead: the backend could not be saved.
    Failed,
    /// Not suspended: busy again, or already gone.
    NotDue,
}

/// The backend of a resuming session: restored from its snapshot (or placed afresh); the
/// snapshot goes once the guest runs from it.
pub(crate) async fn resume_backend(
    session: &Session,
    provider: &BackendProvider,
    r: &Resume,
) -> Result<Backend, PlacementError> {
    let backend = provider.resume(r.snapshot.as_deref()).await;
    if let Err(e) = &backend {
        tracing::warn!(session = %session.id, error = %e, "a suspended session could not be resumed; it ends");
    }
    session.resumed.store(backend.is_ok(), Ordering::Release);
    remove_dir(&r.dir);
    backend
}

impl SessionDirectory {
    /// Suspends `session` if it is still idle for `idle` (zero: whenever nothing is in flight),
    /// checked atomically against requests about to use it, as [`Self::end_if_idle`] does.
    pub async fn suspend_if_idle(
        &self,
        session: &Arc<Session>,
        idle: Duration,
        plan: &Suspend,
    ) -> Suspension {
        let now = now_ms();
        // Marked under the shard's write lock, atomically against requests counting themselves
        // in under its read lock: from here new requests wait (`OpenError::Suspending`), and the
        // session stays findable — for a stop above all — until its record replaces it.
        let marked = self.sessions.get_mut(&session.id).is_some_and(|s| {
            Arc::ptr_eq(&s, session)
                && s.inflight() == 0
                && s.idle_for(now) >= idle
                && !s.suspending.swap(true, Ordering::AcqRel)
        });
        if !marked {
            return Suspension::NotDue;
        }
        if self.handed_over.load(Ordering::Acquire) || session.is_ended() {
            session.suspending.store(false, Ordering::Release);
            return Suspension::NotDue;
        }
        let mcp_ids = session
            .mcp_ids
            .lock()
            .map(|ids| ids.clone())
            .unwrap_or_default();
        let started = Instant::now();
        let dir = plan.root.join(dir_name(session.id.as_str(), now));
        let state = dir.join("memory.state");
        let saved = match create_dir(&dir) {
            Ok(()) => match session.backend() {
                Some(b) => b.suspend(&state).await,
                None => Ok(None),
            },
            Err(e) => Err(format!("{}: {e}", dir.display())),
        };
        let used: u64 = self.suspended_bytes(&session.runtime);
        let outcome = match saved {
            Ok(bytes) if used + bytes.unwrap_or(0) > plan.budget_bytes => {
                tracing::warn!(session = %session.id, budget = plan.budget_bytes, "snapshot over the runtime's budget: the session ends instead");
                Suspension::OverBudget
            }
            Ok(bytes) => {
                let suspended = Suspended {
                    runtime: Arc::clone(&session.runtime),
                    version: session.version,
                    principal: session.principal.clone(),
                    created_ms: session.created_ms,
                    suspended_ms: now,
                    dir: dir.clone(),
                    snapshot: bytes.map(|_| state),
                    bytes: bytes.unwrap_or(0),
                    retention: plan.retention,
                    mcp_ids,
                };
                match write_record(&session.id, &suspended) {
                    Ok(()) => {
                        let mcp = suspended.mcp_ids.clone();
                        self.suspended.insert(session.id.clone(), suspended);
                        self.sessions
                            .remove_if(&session.id, |_, s| Arc::ptr_eq(s, session));
                        if self.retire(session, EndReason::Suspended) {
                            self.route_mcp_ids(&session.id, &mcp);
                            Suspension::Suspended {
                                bytes: bytes.unwrap_or(0),
                                took: started.elapsed(),
                            }
                        } else {
                            // Stopped while it was being saved: the stop wins.
                            self.end_suspended(session.id.as_str(), None);
                            Suspension::NotDue
                        }
                    }
                    Err(e) => {
                        tracing::warn!(session = %session.id, error = %e, "cannot record a suspension; the session ends instead");
                        Suspension::Failed
                    }
                }
            }
            Err(e) => {
                tracing::warn!(session = %session.id, error = %e, "cannot suspend; the session ends instead");
                Suspension::Failed
            }
        };
        if !matches!(outcome, Suspension::Suspended { .. }) {
            remove_dir(&dir);
            // Not suspended: it ends (its backend may be half saved; a stop may have ended it).
            self.sessions
                .remove_if(&session.id, |_, s| Arc::ptr_eq(s, session));
            self.retire(session, EndReason::Idle);
        }
        if let Some(b) = session.backend() {
            b.release().await;
        }
        outcome
    }

    /// The suspended session `id`, if it is `principal`'s on `runtime`; another's is an error
    /// (the id is taken, as a live session's would be).
    pub(super) fn suspended_for(
        &self,
        id: &SessionId,
        runtime: &Arc<str>,
        principal: &Principal,
    ) -> Result<Option<Suspended>, OpenError> {
        match self.suspended.get(id) {
            None => Ok(None),
            Some(s) if s.runtime == *runtime && s.principal == *principal => Ok(Some(s.clone())),
            Some(_) => Err(OpenError::NotFound),
        }
    }

    /// Whether `id` is suspended as `principal`'s on `runtime`.
    pub fn holds_suspended(
        &self,
        id: &SessionId,
        runtime: &Arc<str>,
        principal: &Principal,
    ) -> bool {
        matches!(self.suspended_for(id, runtime, principal), Ok(Some(_)))
    }

    /// Every suspended session (the admin API lists them).
    pub fn suspended(&self) -> Vec<(SessionId, Suspended)> {
        self.suspended
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Bytes of `runtime`'s snapshots.
    pub fn suspended_bytes(&self, runtime: &str) -> u64 {
        self.suspended
            .iter()
            .filter(|e| &*e.runtime == runtime)
            .map(|e| e.bytes)
            .sum()
    }

    /// Ends a suspended session for good (a stop): its snapshot goes. With `owner`, only if it
    /// is that (runtime, principal)'s. False if there was none.
    pub fn end_suspended(&self, id: &str, owner: Option<(&str, &Principal)>) -> bool {
        let Ok(id) = SessionId::parse(id.as_bytes()) else {
            return false;
        };
        let removed = self.suspended.remove_if(&id, |_, s| {
            owner.is_none_or(|(runtime, principal)| {
                &*s.runtime == runtime && s.principal == *principal
            })
        });
        match removed {
            Some((id, s)) => {
                for mcp_id in &s.mcp_ids {
                    self.mcp_ids.remove_if(mcp_id, |_, owner| *owner == id);
                }
                remove_dir(&s.dir);
                true
            }
            None => false,
        }
    }

    /// Routes a suspended session's `Mcp-Session-Id`s to it again (retiring it forgot them).
    fn route_mcp_ids(&self, id: &SessionId, mcp_ids: &[Box<str>]) {
        for mcp_id in mcp_ids {
            self.mcp_ids
                .entry(mcp_id.clone())
                .or_insert_with(|| id.clone());
        }
    }

    /// Takes up the suspended sessions recorded under `root` (a runtime's snapshot root): what
    /// a previous process of this gateway — crashed, restarted, upgraded — suspended. A
    /// directory without a complete record (a suspension cut short) is removed.
    pub fn adopt_suspended(&self, root: &Path, retention: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(root) else {
            return 0;
        };
        let mut adopted = 0;
        for dir in entries.flatten().map(|e| e.path()) {
            match read_record(&dir, retention) {
                Some((id, s))
                    if !self.suspended.contains_key(&id) && self.get(id.as_str()).is_none() =>
                {
                    self.suspended.insert(id, s);
                    adopted += 1;
                }
                Some(_) => {}
                None => remove_dir(&dir),
            }
        }
        adopted
    }

    /// Ends the suspended sessions whose retention passed; returns how many.
    pub fn expire_suspended(&self) -> usize {
        if self.handed_over.load(Ordering::Acquire) {
            return 0; // the new process has them
        }
        let now = now_ms();
        let expired: Vec<SessionId> = self
            .suspended
            .iter()
            .filter(|s| now.saturating_sub(s.suspended_ms) >= s.retention.as_millis() as u64)
            .map(|s| s.key().clone())
            .collect();
        expired
            .iter()
            .filter(|id| self.end_suspended(id.as_str(), None))
            .count()
    }
}

/// `session.json` in a snapshot directory: what a later process needs to take it up.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    id: String,
    runtime: String,
    version: u32,
    principal: String,
    created_ms: u64,
    suspended_ms: u64,
    bytes: u64,
    memory: bool,
    #[serde(default)]
    mcp_ids: Vec<String>,
}

fn write_record(id: &SessionId, s: &Suspended) -> std::io::Result<()> {
    let record = Record {
        id: id.as_str().to_owned(),
        runtime: s.runtime.to_string(),
        version: s.version,
        principal: s.principal.as_str().to_owned(),
        created_ms: s.created_ms,
        suspended_ms: s.suspended_ms,
        bytes: s.bytes,
        memory: s.snapshot.is_some(),
        mcp_ids: s.mcp_ids.iter().map(|i| i.to_string()).collect(),
    };
    let tmp = s.dir.join("session.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&record)?)?;
    std::fs::rename(tmp, s.dir.join("session.json"))
}

fn read_record(dir: &Path, retention: Duration) -> Option<(SessionId, Suspended)> {
    let r: Record = serde_json::from_slice(&std::fs::read(dir.join("session.json")).ok()?).ok()?;
    let state = dir.join("memory.state");
    if r.memory && !state.is_file() {
        return None;
    }
    let id = SessionId::parse(r.id.as_bytes()).ok()?;
    Some((
        id,
        Suspended {
            runtime: Arc::from(r.runtime),
            version: r.version,
            principal: Principal::new(&r.principal),
            created_ms: r.created_ms,
            suspended_ms: r.suspended_ms,
            dir: dir.to_owned(),
            snapshot: r.memory.then_some(state),
            bytes: r.bytes,
            retention,
            mcp_ids: r.mcp_ids.into_iter().map(Box::from).collect(),
        },
    ))
}

/// A resume that never happened (its session ended before its placement): its snapshot goes.
pub(crate) fn discard(r: &Resume) {
    remove_dir(&r.dir);
}

/// A session's snapshot directory: a hash of its id (ids may hold any visible character) and
/// when it was suspended.
pub(crate) fn dir_name(id: &str, now: u64) -> String {
    let digest = Sha256::digest(id.as_bytes());
    format!("{}-{now}", hex::encode(&digest[..12]))
}

/// A snapshot directory, readable by its owner only.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Removes a snapshot directory (gone already is fine; anything else is logged).
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a snapshot directory");
    }
}
