//! A graceful upgrade of the all-in-one: the old process hands its sessions to the new one.
//!
//! The old process freezes its directory ([`SessionDirectory::hand_over`]: from then on it ends
//! no session) and sends one [`HandedSession`] per placed session; the new one rebuilds each
//! ([`SessionDirectory::adopt`]) on the same backend. A static-pool session takes its slot
//! again; a spawned backend stays the child of the process that forked it, which keeps it
//! (`crate::keeper`) and stops it when the new process asks.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::*;
use crate::provider::{Addrs, BackendAddr};

/// One session as a graceful upgrade hands it over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedSession {
    pub id: String,
    pub runtime: String,
    pub version: u32,
    pub principal: String,
    /// The key it is counted under (the principal, or `anonymous@<address>`).
    pub quota: String,
    pub created_ms: u64,
    pub last_ms: u64,
    #[serde(default)]
    pub mcp_ids: Vec<String>,
    pub backend: HandedBackend,
}

/// Its backend: addresses (`tcp:<addr>` or `unix:<path>`), and for a spawned one its process
/// and the socket of the keeper that runs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedBackend {
    pub kind: String,
    pub http: String,
    pub mcp: Option<String>,
    pub a2a: Option<String>,
    #[serde(default)]
    pub exec: Option<String>,
    pub pid: Option<u32>,
    pub keeper: Option<PathBuf>,
    pub stop_timeout_ms: u64,
}

impl HandedBackend {
    pub fn addrs(&self) -> Option<Addrs> {
        let one = |s: &str| -> Option<BackendAddr> {
            if let Some(a) = s.strip_prefix("tcp:") {
                return a.parse().ok().map(BackendAddr::Tcp);
            }
            let path = s.strip_prefix("unix:")?;
            Some(BackendAddr::Unix(Arc::from(Path::new(path))))
        };
        Some(Addrs {
            http: one(&self.http)?,
            mcp: match &self.mcp {
                Some(m) => Some(one(m)?),
                None => None,
            },
            a2a: match &self.a2a {
                Some(a) => Some(one(a)?),
                None => None,
            },
            exec: match &self.exec {
                Some(e) => Some(one(e)?),
                None => None,
            },
        })
    }
}

fn addr_string(a: &BackendAddr) -> Option<String> {
    match a {
        BackendAddr::Tcp(a) => Some(format!("tcp:{a}")),
        BackendAddr::Unix(p) => p.to_str().map(|p| format!("unix:{p}")),
        BackendAddr::Relay(_) => None,
    }
}

impl SessionDirectory {
    /// Freezes the directory for a graceful upgrade: from now on this process ends no session
    /// (its requests in flight still finish). Returns every placed session as handed over, with
    /// `keeper` as the socket of this process's keeper, and the sessions whose backends this
    /// process forked (the keeper's to run until the new process stops them).
    pub fn hand_over(&self, keeper: &Path) -> (Vec<HandedSession>, Vec<Arc<Session>>) {
        self.handed_over.store(true, Ordering::Release);
        let mut handed = Vec::new();
        let mut kept = Vec::new();
        for s in self.snapshot() {
            let Some(backend) = s.backend() else { continue };
            if s.is_ended() {
                continue;
            }
            let Some(h) = backend.handed() else { continue };
            let addrs = backend.addrs();
            let Some(http) = addr_string(&addrs.http) else {
                continue;
            };
            let (pid, keeper) = match h.process {
                Some((pid, None)) => {
                    kept.push(Arc::clone(&s));
                    (Some(pid), Some(keeper.to_owned()))
                }
                Some((pid, Some(theirs))) => (Some(pid), Some(theirs)),
                None => (None, None),
            };
            let mcp_ids = s
                .mcp_ids
                .lock()
                .map(|ids| ids.iter().map(|i| i.to_string()).collect())
                .unwrap_or_default();
            handed.push(HandedSession {
                id: s.id.as_str().to_owned(),
                runtime: s.runtime.to_string(),
                version: s.version,
                principal: s.principal.as_str().to_owned(),
                quota: s.quota_key().as_str().to_owned(),
                created_ms: s.created_ms,
                last_ms: s.last_activity_ms.load(Ordering::Acquire),
                mcp_ids,
                backend: HandedBackend {
                    kind: h.kind.to_owned(),
                    http,
                    mcp: addrs.mcp.as_ref().and_then(addr_string),
                    a2a: addrs.a2a.as_ref().and_then(addr_string),
                    exec: addrs.exec.as_ref().and_then(addr_string),
                    pid,
                    keeper,
                    stop_timeout_ms: h.stop_timeout.as_millis() as u64,
                },
            });
        }
        (handed, kept)
    }

    /// Undoes [`SessionDirectory::hand_over`] when the new process did not take the sessions.
    pub fn resume(&self) {
        self.handed_over.store(false, Ordering::Release);
    }

    /// Takes a session handed over by the old process, on `backend`. False if the id is
    /// invalid or already here.
    pub fn adopt(&self, h: &HandedSession, backend: Backend) -> bool {
        let Ok(id) = SessionId::parse(h.id.as_bytes()) else {
            return false;
        };
        let reservation = self.admission.adopt_session(&Principal::new(&h.quota));
        let session = Session::new(
            id.clone(),
            Arc::from(h.runtime.as_str()),
            h.version,
            Principal::new(&h.principal),
            (0, h.created_ms, h.last_ms),
            (Duration::ZERO, Duration::ZERO),
            Some(reservation),
        );
        session.inflight.store(0, Ordering::Release);
        if session.backend.set(backend).is_err() {
            return false;
        }
        let session = Arc::new(session);
        match self.sessions.entry(id) {
            dashmap::Entry::Occupied(_) => return false,
            dashmap::Entry::Vacant(v) => {
                v.insert(Arc::clone(&session));
            }
        }
        for mcp_id in &h.mcp_ids {
            self.learn_mcp_id(&session, mcp_id);
        }
        true
    }
}
