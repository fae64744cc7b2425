//! What the spawning providers share: a child process started in its own process group that
//! dies with the gateway, readiness by a real `GET /ping`, and a lease that stops the process
//! and then removes what it leaves behind (cgroups, scratch and socket dirs).
//!
//! Every backend (and helper) is forked from one thread that lives as long as the process: the
//! parent-death signal fires when the *thread* that forked a child ends, and Pingora's runtime
//! threads end at its shutdown — which, after a graceful upgrade, the process outlives while it
//! keeps its backends for the new one (`crate::handover`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::BackendAddr;
use super::PlacementError;
use super::cgroup::Cgroup;
use crate::ping::ping;

/// Makes `cmd` start in its own process group (a terminal's Ctrl-C reaches the gateway, which
/// stops children in order), get SIGKILL if the gateway dies (even by SIGKILL), and be killed
/// if its handle is dropped. Call it after any other `pre_exec`: a credential change clears
/// the parent-death signal, so it must be set last.
pub(super) fn guard(cmd: &mut Command) {
    cmd.kill_on_drop(true).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The runtime of the process's keeper thread: backends are forked there, and what must outlive
/// Pingora's runtimes (a kept backend's stop, the keeper's socket) runs there.
pub fn keeper_runtime() -> std::io::Result<&'static tokio::runtime::Handle> {
    static RT: OnceLock<Result<tokio::runtime::Handle, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("keeper".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    })
    .as_ref()
    .map_err(|e| std::io::Error::other(e.clone()))
}

/// Spawns `cmd` from the keeper thread (see the module's note), so that the parent-death
/// signal set by [`guard`] follows the process, not whichever runtime thread asked.
pub(super) async fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    keeper_runtime()?
        .spawn(async move { cmd.spawn() })
        .await
        .map_err(std::io::Error::other)?
}

/// Waits until `GET /ping` on `addr` answers 200, the child exits, or `timeout` passes. Each
/// try has its own short deadline (100 ms for the first 2 s, then 1 s): behind QEMU's
/// user-mode networking a connect succeeds before the guest listens, and that request then
/// hangs instead of failing.
pub(super) async fn wait_ready(
    child: &mut Child,
    addr: &BackendAddr,
    timeout: Duration,
) -> Result<(), PlacementError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PlacementError::ExitedEarly(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PlacementError::NotReady(timeout));
        }
        let per_try = if started.elapsed() < Duration::from_secs(2) {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if ping(addr, left.min(per_try)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// What outlives a backend's process until the lease removes it.
#[derive(Debug, Default)]
pub(super) struct Remains {
    pub cgroup: Option<Cgroup>,
    /// A per-backend directory (scratch space, sockets, VM state): removed whole.
    pub dir: Option<PathBuf>,
    /// A helper process of the backend's (a sandbox's `slirp4netns`): killed on drop.
    pub helper: Option<tokio::process::Child>,
    /// The loopback ports the backend was given: free for others once it is gone.
    pub ports: Option<super::process::Ports>,
    /// Its egress gate (a runtime with an egress policy): its way out ends with it.
    pub egress: Option<egress::Gate>,
}

impl Remains {
    /// Remains that are, so far, one directory.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self {
            cgroup: None,
            dir: Some(dir),
            helper: None,
            ports: None,
            egress: None,
        }
    }
}

impl Drop for Remains {
    /// Kills whatever is left in the cgroup, removes it, and removes the directory. Blocking.
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            cg.destroy();
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a backend's directory");
        }
    }
}

/// A running backend process. Stopped once: by `stop`, or by SIGKILL when dropped; its
/// remains are cleaned either way.
#[derive(Debug)]
pub(super) struct ChildLease {
    pid: u32,
    child: Mutex<Option<Child>>,
    stop_timeout: Duration,
    remains: Mutex<Option<Remains>>,
}

impl ChildLease {
    pub(super) fn new(child: Child, stop_timeout: Duration, remains: Remains) -> Self {
        Self {
            pid: child.id().unwrap_or(0),
            child: Mutex::new(Some(child)),
            stop_timeout,
            remains: Mutex::new(Some(remains)),
        }
    }

    /// Labels the backend's egress (audit lines, budget) with the session it now serves.
    pub(super) fn assign_egress(&self, session: &str) {
        if let Ok(remains) = self.remains.lock()
            && let Some(gate) = remains.as_ref().and_then(|r| r.egress.as_ref())
        {
            gate.assign(session);
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// The backend's own directory, while it lives.
    pub(super) fn dir(&self) -> Option<PathBuf> {
        self.remains
            .lock()
            .ok()
            .and_then(|r| r.as_ref().and_then(|r| r.dir.clone()))
    }

    pub(super) fn has_exited(&self) -> bool {
        let Ok(mut guard) = self.child.lock() else {
            return true;
        };
        match guard.as_mut() {
            None => true,
            Some(c) => !matches!(c.try_wait(), Ok(None)),
        }
    }

    /// What the memory cgroup says: true if the kernel killed something for exceeding it.
    pub(super) fn oom_killed(&self) -> bool {
        self.remains
            .lock()
            .ok()
            .and_then(|r| {
                r.as_ref()
                    .and_then(|r| r.cgroup.as_ref().map(Cgroup::oom_killed))
            })
            .unwrap_or(false)
    }

    /// SIGTERM to the process group, then SIGKILL if it has not exited within the stop timeout;
    /// then the remains go. Idempotent.
    pub(super) async fn stop(&self) {
        self.stop_within(self.stop_timeout).await;
    }

    /// SIGKILL to the process group at once; then the remains go. Idempotent.
    pub(super) async fn kill(&self) {
        self.stop_within(Duration::ZERO).await;
    }

    async fn stop_within(&self, grace: Duration) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child
            && let Ok(None) = child.try_wait()
        {
            if !grace.is_zero() {
                signal_group(self.pid, libc::SIGTERM);
            }
            if grace.is_zero() || tokio::time::timeout(grace, child.wait()).await.is_err() {
                signal_group(self.pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
        let remains = self.remains.lock().ok().and_then(|mut r| r.take());
        if let Some(remains) = remains {
            let _ = tokio::task::spawn_blocking(move || drop(remains)).await;
        }
    }
}

impl Drop for ChildLease {
    fn drop(&mut self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(child) = child {
            // Signal the group while the unreaped leader still pins its id, then let
            // kill_on_drop and tokio's orphan reaper finish the leader.
            signal_group(self.pid, libc::SIGKILL);
            drop(child);
        }
    }
}

pub(super) fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// The gateway's directory for backend state (`$TMPDIR/sessiongate-<pid>`): sandboxes' scratch
/// and socket dirs, microVMs' sockets and snapshot. Each backend's lease removes its own
/// subdirectory; the directory itself goes when the gateway exits normally. Mode 0711:
/// a sandbox user may pass through to its own subdirectory but list no other.
pub(super) fn state_root() -> std::io::Result<&'static Path> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        use std::os::unix::fs::DirBuilderExt;
        let root = std::env::temp_dir().join(format!("sessiongate-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(&root)
            .map_err(|e| format!("{}: {e}", root.display()))?;
        extern "C" fn remove_root() {
            if let Some(Ok(root)) = ROOT.get() {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        // SAFETY: registers a plain function; it runs once, at normal process exit.
        unsafe {
            libc::atexit(remove_root);
        }
        Ok(root)
    })
    .as_deref()
    .map_err(|e| std::io::Error::other(e.clone()))
}
