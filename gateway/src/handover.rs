//! A graceful upgrade of the all-in-one that keeps every session on its backend.
//!
//! Pingora hands the listening sockets to the new process (`--upgrade`) when the old one gets
//! SIGQUIT, and both accept for a few seconds. Before it lets Pingora do that, the old process
//! hands over its sessions, so that at every moment exactly one process owns the directory:
//!
//! 1. the new process listens on `<upgrade_socket>.sessions` while it waits for the sockets;
//! 2. the old one ([`offer`]) stops admitting requests itself — from now on it relays each new
//!    request, as it came, to the new process over a Unix socket per face
//!    (`<upgrade_socket>.<pid>.<face>`, the client's address in `x-sessiongate-client`) — waits
//!    for the admissions under way, freezes its directory (it ends no session any more), starts
//!    its **keeper** (`routing::keeper`: its spawned backends are its children and stay so) and
//!    sends every session with its backend, its process and its keeper's socket;
//! 3. the new one ([`receive`]) rebuilds them: a static slot is taken again, a spawned backend
//!    is driven through the keeper that runs it; it answers with its relay sockets;
//! 4. Pingora then passes the listeners, the old process drains its requests in flight and,
//!    instead of exiting, keeps its backends until the new process (or a later one: the keeper
//!    sockets travel with the sessions) has stopped them all.
//!
//! Nothing is handed over on a replica: its sessions live in Redis.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use conf::Protocol;
use routing::directory::HandedSession;
use routing::provider::{Backend, BackendProvider, KeeperLink, keeper_runtime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::state::Shared;

/// The header a relayed request carries its client's address in (trusted on Unix sockets only).
pub const CLIENT_HEADER: &str = "x-sessiongate-client";
/// A keeper that nobody drives for this long stops its backends and exits.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
/// How long the old process looks for the new one's sessions socket.
const FIND_NEW: Duration = Duration::from_secs(5);
/// How long admissions under way (authentication, placement) may take to finish.
const ADMISSIONS: Duration = Duration::from_secs(10);
/// How long the new process may take to rebuild the sessions.
const ADOPTION: Duration = Duration::from_secs(30);
/// How long a relayed request waits for the new process to accept on its relay socket.
const RELAY_UP: Duration = Duration::from_secs(15);

/// What the old process sends.
#[derive(Serialize, Deserialize)]
struct Offer {
    pid: u32,
    /// The key of implicit MCP session ids (hex): the new process computes the same ids.
    secret: String,
    sessions: Vec<HandedSession>,
}

/// What the new process answers.
#[derive(Serialize, Deserialize)]
struct Accepted {
    pid: u32,
    adopted: usize,
    http: PathBuf,
    mcp: PathBuf,
    a2a: PathBuf,
}

pub fn sessions_socket(upgrade: &Path) -> PathBuf {
    suffixed(upgrade, "sessions")
}

/// This process's relay socket for `face` (the old process sends relayed requests there).
pub fn relay_socket(upgrade: &Path, face: Protocol) -> PathBuf {
    suffixed(
        upgrade,
        &format!("{}.{}", std::process::id(), face.as_str()),
    )
}

fn keeper_socket(upgrade: &Path) -> PathBuf {
    suffixed(upgrade, &format!("{}.keeper", std::process::id()))
}

/// A handover socket only this user may connect to: whoever can hands sessions (and backend
/// addresses) to the new process, or stops kept backends.
fn owner_only(
    bound: std::io::Result<std::os::unix::net::UnixListener>,
    path: &Path,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// The old process's side, shared by its listeners.
#[derive(Default)]
pub struct Handover {
    relaying: AtomicBool,
    /// Requests between the relay check and the end of their admission.
    admitting: AtomicUsize,
    relay: OnceLock<Accepted>,
    relay_up: AtomicBool,
    /// Requests relayed so far.
    relayed: AtomicUsize,
    answered: Notify,
    keeper: Mutex<Option<routing::keeper::Keeper>>,
}

/// Held by a request from the relay check to the end of its admission.
pub struct Admitting<'a>(&'a Handover);

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        self.0.admitting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handover {
    /// `Some` while this process admits requests itself; `None` once they are relayed.
    pub fn enter(&self) -> Option<Admitting<'_>> {
        self.admitting.fetch_add(1, Ordering::SeqCst);
        if self.relaying.load(Ordering::SeqCst) {
            self.admitting.fetch_sub(1, Ordering::SeqCst);
            self.relayed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitting(self))
    }

    /// True once this process hands its sessions over (mutations on the admin API are refused).
    pub fn relaying(&self) -> bool {
        self.relaying.load(Ordering::Acquire)
    }

    /// The new process's relay socket for `face`, once it answered and accepts there.
    pub async fn relay_path(&self, face: Protocol) -> Option<PathBuf> {
        let accepted = tokio::time::timeout(ADOPTION + ADMISSIONS, async {
            loop {
                let answered = self.answered.notified();
                if let Some(a) = self.relay.get() {
                    return Some(a);
                }
                if !self.relaying() {
                    // The handover failed: this process keeps its sessions; the client retries.
                    return None;
                }
                answered.await;
            }
        })
        .await
        .ok()??;
        let path = match face {
            Protocol::Http => &accepted.http,
            Protocol::Mcp => &accepted.mcp,
            Protocol::A2a => &accepted.a2a,
        };
        // Its listeners start once Pingora has passed the sockets: until then, wait.
        if !self.relay_up.load(Ordering::Acquire) {
            let up = tokio::time::timeout(RELAY_UP, async {
                while UnixStream::connect(path).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            if up.is_err() {
                return None;
            }
            self.relay_up.store(true, Ordering::Release);
        }
        Some(path.clone())
    }

    /// Back to admitting requests here (the handover failed); requests waiting to be relayed
    /// get a retryable 503.
    fn give_up(&self) {
        self.relaying.store(false, Ordering::SeqCst);
        self.answered.notify_waiters();
    }

    /// How many requests this process relayed to the new one.
    pub fn relayed(&self) -> usize {
        self.relayed.load(Ordering::Relaxed)
    }

    /// The keeper, when this process handed its sessions over.
    pub fn keeper(&self) -> Option<routing::keeper::Keeper> {
        self.keeper.lock().ok()?.take()
    }
}

/// The old process on SIGQUIT: hands every session to the new process (see the module's
/// steps). Returns without handing anything over when no new process listens or it fails:
/// then this process serves on and ends its sessions at exit, as before.
pub async fn offer(shared: &Arc<Shared>) {
    let upgrade = shared.snapshot().config.server.upgrade_socket.clone();
    let Some(stream) = find_new(&sessions_socket(&upgrade)).await else {
        tracing::warn!("no new process takes the sessions; they end with this one");
        return;
    };
    let handover = &shared.handover;
    handover.relaying.store(true, Ordering::SeqCst);
    let settled = tokio::time::timeout(ADMISSIONS, async {
        while handover.admitting.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if settled.is_err() {
        tracing::warn!("admissions still under way are left out of the handover");
    }
    let keeper_path = keeper_socket(&upgrade);
    let _ = std::fs::remove_file(&keeper_path);
    let listener = match owner_only(
        std::os::unix::net::UnixListener::bind(&keeper_path),
        &keeper_path,
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, socket = %keeper_path.display(), "cannot open the keeper's socket; the sessions stay here");
            handover.give_up();
            return;
        }
    };
    let (sessions, kept) = shared.directory.hand_over(&keeper_path);
    let n = sessions.len();
    let keeper = match routing::keeper::start(listener, keeper_path.clone(), kept, ORPHAN_GRACE) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the keeper; the sessions stay here");
            shared.directory.resume();
            handover.give_up();
            return;
        }
    };
    let offer = Offer {
        pid: std::process::id(),
        secret: hex::encode(shared.secret()),
        sessions,
    };
    match exchange(stream, &offer).await {
        Ok(accepted) => {
            tracing::info!(
                sessions = n,
                adopted = accepted.adopted,
                new_pid = accepted.pid,
                "sessions handed to the new process"
            );
            let _ = handover.relay.set(accepted);
            handover.answered.notify_waiters();
            // The new process keeps its own warm backends.
            for (_, _, provider) in shared.snapshot().providers.iter() {
                provider.close_pool();
            }
            if let Ok(mut k) = handover.keeper.lock() {
                *k = Some(keeper);
            }
        }
        Err(e) => {
            // The keeper has no adopter: it would stop the backends after its grace. It keeps
            // them for nobody instead, and this process goes on owning its sessions.
            tracing::error!(error = %e, "the new process did not take the sessions; they stay here");
            keeper.abandon();
            shared.directory.resume();
            handover.give_up();
        }
    }
}

async fn find_new(path: &Path) -> Option<UnixStream> {
    let deadline = tokio::time::Instant::now() + FIND_NEW;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Some(s),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return None,
        }
    }
}

async fn exchange(stream: UnixStream, offer: &Offer) -> Result<Accepted, String> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(offer).map_err(|e| e.to_string())?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tokio::time::timeout(ADOPTION, BufReader::new(read).read_line(&mut answer))
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer: {e}"))
}

/// The new process, while Pingora waits for the listening sockets: takes the old process's
/// sessions if it offers them. [`Reception::finish`] after the bootstrap.
pub struct Reception {
    done: std::sync::mpsc::Receiver<()>,
    stop: Arc<Notify>,
    path: PathBuf,
}

pub fn receive(shared: &Arc<Shared>) -> std::io::Result<Reception> {
    let upgrade = shared.snapshot().config.server.upgrade_socket.clone();
    let path = sessions_socket(&upgrade);
    let _ = std::fs::remove_file(&path);
    let listener = owner_only(std::os::unix::net::UnixListener::bind(&path), &path)?;
    listener.set_nonblocking(true)?;
    let (done_tx, done) = std::sync::mpsc::channel();
    let stop = Arc::new(Notify::new());
    let (shared, stopped) = (Arc::clone(shared), Arc::clone(&stop));
    keeper_runtime()?.spawn(async move {
        let Ok(listener) = UnixListener::from_std(listener) else {
            return;
        };
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    match take(&shared, stream, &upgrade).await {
                        Ok(n) => tracing::info!(sessions = n, "took the sessions of the old process"),
                        Err(e) => tracing::error!(error = %e, "the old process's sessions were not taken"),
                    }
                }
            }
            _ = stopped.notified() => {}
        }
        let _ = done_tx.send(());
    });
    Ok(Reception { done, stop, path })
}

impl Reception {
    /// After the bootstrap: the old process offers its sessions before it passes the sockets,
    /// so they are here by now, or it offers none (it was not an all-in-one of this kind).
    pub fn finish(self) {
        if self.done.try_recv().is_err() {
            self.stop.notify_one();
            let _ = self.done.recv_timeout(Duration::from_secs(1));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn take(shared: &Shared, stream: UnixStream, upgrade: &Path) -> Result<usize, String> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    let offer: Offer = serde_json::from_str(&line).map_err(|e| format!("unreadable offer: {e}"))?;
    if let Ok(secret) = hex::decode(&offer.secret) {
        shared.adopt_secret(secret);
    }
    let mut links: std::collections::HashMap<PathBuf, Option<Arc<KeeperLink>>> = Default::default();
    let snapshot = shared.snapshot();
    let mut adopted = 0;
    for h in &offer.sessions {
        let Some(addrs) = h.backend.addrs() else {
            continue;
        };
        let backend = match (&h.backend.keeper, h.backend.pid) {
            (Some(keeper), Some(pid)) => {
                let link = match links.get(keeper) {
                    Some(l) => l.clone(),
                    None => {
                        let l = KeeperLink::connect(keeper)
                            .await
                            .inspect_err(|e| tracing::warn!(error = %e, keeper = %keeper.display(), "cannot reach a keeper; its sessions end"))
                            .ok();
                        links.insert(keeper.clone(), l.clone());
                        l
                    }
                };
                let Some(link) = link.filter(|l| l.keeps(pid)) else {
                    continue;
                };
                Backend::kept(
                    &h.backend.kind,
                    addrs,
                    link,
                    pid,
                    Duration::from_millis(h.backend.stop_timeout_ms),
                )
            }
            _ => {
                let provider = snapshot
                    .runtime_names
                    .iter()
                    .position(|n| **n == *h.runtime)
                    .and_then(|i| snapshot.providers.get(i, h.version));
                let Some(BackendProvider::Static(pool)) = provider else {
                    continue;
                };
                let Some(backend) = pool.claim(&addrs) else {
                    continue;
                };
                backend
            }
        };
        if shared.directory.adopt(h, backend) {
            adopted += 1;
        }
    }
    tracing::info!(
        from = offer.pid,
        offered = offer.sessions.len(),
        adopted,
        "adopted the old process's sessions"
    );
    let accepted = Accepted {
        pid: std::process::id(),
        adopted,
        http: relay_socket(upgrade, Protocol::Http),
        mcp: relay_socket(upgrade, Protocol::Mcp),
        a2a: relay_socket(upgrade, Protocol::A2a),
    };
    let mut answer = serde_json::to_vec(&accepted).map_err(|e| e.to_string())?;
    answer.push(b'\n');
    write.write_all(&answer).await.map_err(|e| e.to_string())?;
    Ok(adopted)
}
