//! The `sandbox` provider: the agent in its own Linux namespaces, one sandbox per session.
//!
//! Built on bubblewrap rather than our own `clone`/`unshare` calls: it is small, audited,
//! packaged everywhere (Flatpak runs on it), and gets the fiddly parts right — pivot_root onto
//! a fresh tmpfs, read-only bind remounts, `/proc` for the new pid namespace, loopback up in
//! the new network namespace, capability dropping, `PR_SET_NO_NEW_PRIVS`, dying with its
//! parent. What we add is policy: which paths are visible, the cgroup, the scratch dir, the
//! unprivileged host identity, and the way in.
//!
//! | namespace | effect |
//! |---|---|
//! | user | no capabilities; nested user namespaces refused; host identity `nobody` when the gateway is root |
//! | mount | only `read_only` paths (read-only), a private `/tmp` (tmpfs), `/scratch` (the session's, removed at its end) |
//! | pid, ipc, uts | sees only its own processes, IPC objects and hostname |
//! | network | only loopback: the agent listens on the contract's ports 8080/8000/9000 inside, and `sessiongate sandbox-init` relays them to Unix sockets the gateway connects to |
//!
//! The cgroup (memory, CPU quota, pids) is joined between fork and exec; an agent past its
//! memory limit is OOM-killed, `sandbox-init` exits with it, and the session ends.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use conf::SandboxSpec;
use tokio::process::Command;

use super::cgroup::{Cgroup, Hierarchy, Limits};
use super::child::{ChildLease, Remains, guard, state_root, wait_ready};
use super::{Addrs, Backend, Lease, PlacementError};

/// Where the gateway's binary appears inside a sandbox (it runs `sandbox-init`, and is the
/// agent unless `command` names another).
const INNER_EXE: &str = "/run/sessiongate/sessiongate";
/// `nobody`: the host identity of sandboxes started by a root gateway.
const NOBODY: u32 = 65_534;

#[derive(Debug)]
pub struct SandboxProvider {
    spec: SandboxSpec,
    self_exe: PathBuf,
}

impl SandboxProvider {
    pub fn new(spec: &SandboxSpec, self_exe: &Path) -> Self {
        Self {
            spec: spec.clone(),
            self_exe: self_exe.to_owned(),
        }
    }

    pub async fn place(&self) -> Result<Backend, PlacementError> {
        let state = state_dir(&self.self_exe).map_err(PlacementError::Isolation)?;
        let hierarchy = Hierarchy::get().ok_or_else(|| {
            PlacementError::Isolation(std::io::Error::other(
                "no cgroup memory controller is usable, so a sandbox's limits cannot be enforced",
            ))
        })?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = state
            .root
            .join(format!("sandbox-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        // From here on, dropping `remains` removes the directory and the cgroup.
        let mut remains = Remains {
            cgroup: None,
            dir: Some(dir.clone()),
        };
        for d in [&dir, &dir.join("scratch"), &dir.join("sockets")] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .and_then(|()| chown(d, state.uid))
                .map_err(PlacementError::Isolation)?;
        }
        let cgroup = Cgroup::create(
            hierarchy,
            Limits {
                memory_bytes: self.spec.memory_mb << 20,
                cpu_percent: self.spec.cpu_percent,
                max_pids: self.spec.max_pids,
            },
        )
        .map_err(PlacementError::Isolation)?;
        let join_fds = cgroup.join_fds();
        remains.cgroup = Some(cgroup);

        let mut cmd = Command::new("bwrap");
        cmd.args(self.bwrap_args(&state.exe, &dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let uid = state.uid;
        let drop_to_nobody = uid == NOBODY;
        // SAFETY: the closure runs in the forked child before exec; write(2), setgroups(2),
        // setgid(2) and setuid(2) are async-signal-safe, and it touches no heap memory (the
        // fd list was built before the fork).
        unsafe {
            cmd.pre_exec(move || join_then_drop(&join_fds, drop_to_nobody));
        }
        guard(&mut cmd);
        let mut child = cmd.spawn().map_err(PlacementError::Spawn)?;
        let addrs = Addrs::unix_in(&dir.join("sockets"));
        wait_ready(&mut child, &addrs.http, self.spec.process.ready_timeout).await?;
        let lease = ChildLease::new(child, self.spec.process.stop_timeout, remains);
        tracing::debug!(pid = lease.pid(), dir = %dir.display(), "sandbox ready");
        Ok(Backend {
            addrs,
            lease: Lease::Sandbox(lease),
        })
    }

    fn bwrap_args(&self, exe: &Path, dir: &Path) -> Vec<OsString> {
        let sockets = dir.join("sockets");
        let mut a: Vec<OsString> = Vec::with_capacity(64);
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            a.extend(items.iter().map(|i| i.as_ref().to_owned()));
        };
        push(&[
            &"--unshare-user",
            &"--unshare-all",
            &"--disable-userns",
            &"--die-with-parent",
            &"--new-session",
            &"--cap-drop",
            &"ALL",
            &"--clearenv",
            &"--hostname",
            &"sandbox",
            // Mounts apply in order: the fresh /proc, /dev and /tmp first, so a read-only
            // path under /tmp (a venv, say) is bound on top of the tmpfs, not hidden by it.
            &"--proc",
            &"/proc",
            &"--dev",
            &"/dev",
            &"--tmpfs",
            &"/tmp",
        ]);
        for path in &self.spec.read_only {
            push(&[&"--ro-bind-try", path, path]);
        }
        let p = &self.spec.process;
        let program: PathBuf = match &p.command {
            Some(c) => {
                if c.is_absolute() {
                    push(&[&"--ro-bind-try", c, c]);
                }
                c.clone()
            }
            None => INNER_EXE.into(),
        };
        push(&[
            &"--ro-bind",
            &exe,
            &INNER_EXE,
            &"--bind",
            &dir.join("scratch"),
            &"/scratch",
            // At the same path as outside: a Unix socket's peer name is the path it was bound
            // at, and Pingora reuses a connection only if that name matches the one it dialled.
            &"--bind",
            &sockets,
            &sockets,
            &"--chdir",
            &"/scratch",
            &"--setenv",
            &"HOME",
            &"/scratch",
            &"--setenv",
            &"TMPDIR",
            &"/tmp",
            &"--setenv",
            &"PATH",
            &"/usr/local/bin:/usr/bin:/bin",
        ]);
        for (k, v) in &p.env {
            push(&[&"--setenv", k, v]);
        }
        push(&[
            &"--",
            &INNER_EXE,
            &"sandbox-init",
            &"--sockets",
            &sockets,
            &"--",
            &program,
        ]);
        a.extend(p.args.iter().map(OsString::from));
        a
    }
}

/// In the child, before exec: join the cgroup, then give up root for `nobody`.
fn join_then_drop(join_fds: &[RawFd], drop_to_nobody: bool) -> std::io::Result<()> {
    for &fd in join_fds {
        // SAFETY: writing one byte from a static buffer to an open descriptor.
        if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if drop_to_nobody {
        // SAFETY: plain credential syscalls; no memory is touched.
        let failed = unsafe {
            libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The gateway's sandbox state: a private directory, and a copy of its binary every sandbox
/// user can read (the original may sit under a home directory `nobody` cannot enter).
struct State {
    root: PathBuf,
    exe: PathBuf,
    uid: u32,
}

fn state_dir(self_exe: &Path) -> Result<&'static State, std::io::Error> {
    static STATE: OnceLock<Result<State, String>> = OnceLock::new();
    STATE
        .get_or_init(|| make_state(self_exe).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| std::io::Error::other(e.clone()))
}

fn make_state(self_exe: &Path) -> std::io::Result<State> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let uid = if euid == 0 { NOBODY } else { euid };
    let root = state_root()?.to_owned();
    let exe = root.join("sessiongate");
    if std::fs::hard_link(self_exe, &exe).is_err() {
        std::fs::copy(self_exe, &exe)?;
    }
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    Ok(State { root, exe, uid })
}

fn chown(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
}
