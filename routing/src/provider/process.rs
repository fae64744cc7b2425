//! The `process` provider: one freshly spawned backend process per session.
//!
//! The gateway reserves three loopback ports, starts the command with them substituted for
//! `{http}`, `{mcp}` and `{a2a}`, and waits until `GET /ping` answers 200. Each child runs in
//! its own process group (a terminal's Ctrl-C reaches the gateway, which stops the children
//! in order) and carries `PR_SET_PDEATHSIG`, so even a gateway killed with SIGKILL leaves no
//! orphan behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use conf::{Endpoint, ProcessSpec};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{Backend, Lease, PlacementError};
use crate::ping::ping;

/// How many times a backend that exits before it is ready is started again (a reserved port
/// can, rarely, be taken by someone else between reservation and the child's bind).
const SPAWN_ATTEMPTS: usize = 3;

#[derive(Debug)]
pub struct ProcessProvider {
    program: PathBuf,
    spec: ProcessSpec,
}

impl ProcessProvider {
    pub fn new(spec: &ProcessSpec, self_exe: &Path) -> Self {
        Self {
            program: spec.command.clone().unwrap_or_else(|| self_exe.to_owned()),
            spec: spec.clone(),
        }
    }

    pub async fn place(&self) -> Result<Backend, PlacementError> {
        let mut last = None;
        for _ in 0..SPAWN_ATTEMPTS {
            match self.spawn_once().await {
                Err(e @ PlacementError::ExitedEarly(_)) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(PlacementError::NotReady(self.spec.ready_timeout)))
    }

    async fn spawn_once(&self) -> Result<Backend, PlacementError> {
        let endpoint = reserve_endpoint().map_err(PlacementError::Ports)?;
        let fill = |s: &str| {
            s.replace("{http}", &endpoint.http.to_string())
                .replace("{mcp}", &addr_or_empty(endpoint.mcp))
                .replace("{a2a}", &addr_or_empty(endpoint.a2a))
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(self.spec.args.iter().map(|a| fill(a)))
            .envs(self.spec.env.iter().map(|(k, v)| (k, fill(v))))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .process_group(0);
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
        let mut child = cmd.spawn().map_err(PlacementError::Spawn)?;
        let pid = child.id().unwrap_or(0);
        // Dropping `child` on any early return kills it (kill_on_drop).
        wait_ready(&mut child, endpoint.http, self.spec.ready_timeout).await?;
        tracing::debug!(pid, http = %endpoint.http, "process backend ready");
        Ok(Backend {
            endpoint,
            lease: Lease::Process(ProcessLease {
                pid,
                child: Mutex::new(Some(child)),
                stop_timeout: self.spec.stop_timeout,
            }),
        })
    }
}

fn addr_or_empty(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// Three free loopback ports, held at once so they differ, then let go for the child to bind.
fn reserve_endpoint() -> std::io::Result<Endpoint> {
    let bind = || TcpListener::bind(("127.0.0.1", 0));
    let (h, m, a) = (bind()?, bind()?, bind()?);
    Ok(Endpoint {
        http: h.local_addr()?,
        mcp: Some(m.local_addr()?),
        a2a: Some(a.local_addr()?),
    })
}

async fn wait_ready(
    child: &mut Child,
    http: SocketAddr,
    timeout: Duration,
) -> Result<(), PlacementError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PlacementError::ExitedEarly(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(PlacementError::NotReady(timeout));
        }
        if ping(http, left.min(Duration::from_secs(1))).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A running backend process. Stopped once: by `stop`, or by SIGKILL when dropped.
#[derive(Debug)]
pub(super) struct ProcessLease {
    pid: u32,
    child: Mutex<Option<Child>>,
    stop_timeout: Duration,
}

impl ProcessLease {
    pub(super) fn pid(&self) -> u32 {
        self.pid
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

    /// SIGTERM to the process group, then SIGKILL if it has not exited within the stop timeout.
    pub(super) async fn stop(&self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        let Some(mut child) = child else { return };
        if let Ok(None) = child.try_wait() {
            signal_group(self.pid, libc::SIGTERM);
            if tokio::time::timeout(self.stop_timeout, child.wait())
                .await
                .is_err()
            {
                signal_group(self.pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
        }
    }
}

impl Drop for ProcessLease {
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

fn signal_group(pid: u32, signal: libc::c_int) {
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
