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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
        let mut remains = Remains::in_dir(dir.clone());
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
        // With egress, bwrap reports its child (`--info-fd`) and waits (`--block-fd`) until
        // slirp4netns has given the new network namespace its interface.
        let handshake = if self.spec.egress {
            Some(Handshake::new().map_err(PlacementError::Isolation)?)
        } else {
            None
        };
        let confined = match &self.spec.policy {
            Some(policy) => Some((
                super::sandbox_egress::bwrap_args(policy, &dir, &self.spec.read_only)
                    .map_err(PlacementError::Isolation)?,
                egress::Gate::new(policy.clone(), &policy.runtime),
            )),
            None => None,
        };
        let (confine_args, gate) = confined.unzip();
        let mut cmd = Command::new("bwrap");
        // Not the gateway's environment: bwrap's own pid-1 process inside the sandbox keeps
        // what it was started with, and the agent can read `/proc/1/environ` (the gateway's
        // secrets, an egress credential's variable among them, would be in it).
        cmd.env_clear().env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        );
        cmd.args(self.bwrap_args(
            &state.exe,
            &dir,
            handshake.as_ref(),
            confine_args.unwrap_or_default(),
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let drop_to_nobody = state.uid == NOBODY;
        let inherit: Vec<RawFd> = handshake
            .as_ref()
            .map(Handshake::child_fds)
            .unwrap_or_default();
        // SAFETY: the closure runs in the forked child before exec; fcntl(2), write(2),
        // setgroups(2), setgid(2) and setuid(2) are async-signal-safe, and it touches no heap
        // memory (both fd lists were built before the fork).
        unsafe {
            cmd.pre_exec(move || join_then_drop(&join_fds, &inherit, drop_to_nobody));
        }
        guard(&mut cmd);
        let mut child = super::child::spawn(cmd)
            .await
            .map_err(PlacementError::Spawn)?;
        if let Some(handshake) = handshake {
            let deadline = self.spec.process.ready_timeout;
            remains.helper = tokio::time::timeout(
                deadline,
                handshake.connect(child.id().unwrap_or(0), gate.as_ref()),
            )
            .await
            .map_err(|_| PlacementError::NotReady(deadline))?
            .map_err(PlacementError::Isolation)?;
            remains.egress = gate;
        }
        let sockets = dir.join("sockets");
        let addrs = Addrs::unix_in(&sockets);
        wait_ready(&mut child, &addrs.http, self.spec.process.ready_timeout).await?;
        let storage = self.spec.process.storage.as_ref().map(|s| {
            let exec = super::BackendAddr::Unix(Arc::from(sockets.join("exec.sock")));
            super::Storage::Guest(super::storage::GuestStorage::in_sandbox(s, exec))
        });
        let lease = ChildLease::new(child, self.spec.process.stop_timeout, remains);
        tracing::debug!(pid = lease.pid(), dir = %dir.display(), "sandbox ready");
        Ok(Backend {
            addrs,
            lease: Lease::Sandbox(lease),
            storage,
        })
    }

    fn bwrap_args(
        &self,
        exe: &Path,
        dir: &Path,
        handshake: Option<&Handshake>,
        confine: Vec<OsString>,
    ) -> Vec<OsString> {
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
        if let Some(storage) = &p.storage {
            // The session's files are copied onto it (`storage::GuestStorage`): its size is the
            // quota, and the memory it takes is charged to the sandbox's cgroup.
            push(&[
                &"--size",
                &storage.quota_bytes.to_string(),
                &"--tmpfs",
                &storage.mount_path,
                &"--setenv",
                &super::storage::STORAGE_ENV,
                &storage.mount_path,
            ]);
        }
        // The policy's proxy variables, resolver and trust (sandbox_egress), after the
        // read-only binds they may cover.
        for arg in &confine {
            push(&[arg]);
        }
        if let Some(h) = handshake {
            let (info, block) = (
                h.info_w.as_raw_fd().to_string(),
                h.block_r.as_raw_fd().to_string(),
            );
            push(&[&"--info-fd", &info, &"--block-fd", &block]);
        }
        push(&[
            &"--",
            &INNER_EXE,
            &"sandbox-init",
            &"--sockets",
            &sockets,
            &"--ports",
            &self.spec.ports.all().map(|p| p.to_string()).join(","),
            &"--",
            &program,
        ]);
        a.extend(p.args.iter().map(OsString::from));
        a
    }
}

/// In the child, before exec: keep the handshake pipes open across exec, join the cgroup, then
/// give up root for `nobody`.
fn join_then_drop(
    join_fds: &[RawFd],
    inherit: &[RawFd],
    drop_to_nobody: bool,
) -> std::io::Result<()> {
    for &fd in inherit {
        // SAFETY: clears FD_CLOEXEC on a descriptor we own; no memory involved.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
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

/// The pipes of bwrap's egress handshake.
struct Handshake {
    /// bwrap writes `{"child-pid": N, …}` here.
    info_r: OwnedFd,
    info_w: OwnedFd,
    /// bwrap runs the command once a byte arrives here.
    block_r: OwnedFd,
    block_w: OwnedFd,
}

impl Handshake {
    fn new() -> std::io::Result<Self> {
        let (info_r, info_w) = pipe()?;
        let (block_r, block_w) = pipe()?;
        Ok(Self {
            info_r,
            info_w,
            block_r,
            block_w,
        })
    }

    /// The ends bwrap keeps.
    fn child_fds(&self) -> Vec<RawFd> {
        vec![self.info_w.as_raw_fd(), self.block_r.as_raw_fd()]
    }

    /// Once bwrap has started: learns its child's pid, gives that network namespace its way
    /// out, then lets bwrap run the command. The way out is the egress `gate` when the runtime
    /// has a policy (its sockets opened inside, see `sandbox_egress`); otherwise an interface
    /// from slirp4netns (its own host loopback refused). Returns the slirp4netns process, which
    /// lives as long as the sandbox (it joins the sandbox's process group, so stopping the
    /// sandbox stops it).
    async fn connect(
        self,
        bwrap_pid: u32,
        gate: Option<&egress::Gate>,
    ) -> std::io::Result<Option<tokio::process::Child>> {
        let Handshake {
            info_r,
            info_w,
            block_r,
            block_w,
        } = self;
        drop((info_w, block_r)); // bwrap's ends: ours closed, so EOF means bwrap is gone
        let info = tokio::task::spawn_blocking(move || read_until(info_r, b'}'))
            .await
            .map_err(std::io::Error::other)??;
        let pid = child_pid(&info).ok_or_else(|| {
            std::io::Error::other(format!("bwrap reported no child pid: {info:?}"))
        })?;
        // bwrap's child brings up its loopback while we read the pid; two netlink talkers on
        // one namespace at once make bwrap fail. The loopback's local route exists once its
        // address is set and the link is up.
        let loopback_up = || {
            std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie"))
                .is_ok_and(|t| t.contains("127.0.0.1"))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !loopback_up() {
            if tokio::time::Instant::now() >= deadline {
                return Err(std::io::Error::other(
                    "the sandbox's loopback did not come up",
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Some(gate) = gate {
            super::sandbox_egress::open(gate, pid).await?;
            let mut block = std::fs::File::from(block_w);
            std::io::Write::write_all(&mut block, b"1")?;
            return Ok(None);
        }
        let (ready_r, ready_w) = pipe()?;
        let mut cmd = Command::new("slirp4netns");
        cmd.args(["--configure", "--mtu=65520", "--disable-host-loopback"])
            .args(["--netns-type=path", "--ready-fd"])
            .arg(ready_w.as_raw_fd().to_string())
            .arg(format!("/proc/{pid}/ns/net"))
            .arg("tap0")
            .stdin(Stdio::null())
            // It narrates every tap fd it passes; failures show as no ready byte.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(i32::try_from(bwrap_pid).unwrap_or(0));
        let ready_fd = ready_w.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes two
        // async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(ready_fd, libc::F_SETFD, 0) != 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let slirp = super::child::spawn(cmd).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("egress needs slirp4netns (Debian: slirp4netns), or egress = false: {e}"),
            )
        })?;
        drop(ready_w);
        let ready = tokio::task::spawn_blocking(move || read_until(ready_r, b'1'))
            .await
            .map_err(std::io::Error::other)??;
        if !ready.contains(&b'1') {
            return Err(std::io::Error::other(
                "slirp4netns could not set up the sandbox's network",
            ));
        }
        let mut block = std::fs::File::from(block_w);
        std::io::Write::write_all(&mut block, b"1")?;
        Ok(Some(slirp))
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads from a pipe until `end` arrives or the writer closes it (at most 64 KB). Blocking.
fn read_until(fd: OwnedFd, end: u8) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.contains(&end) && got.len() < 65_536 {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// `"child-pid": 1234` from bwrap's info JSON.
fn child_pid(info: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(info).ok()?;
    let rest = &text[text.find("\"child-pid\"")? + "\"child-pid\"".len()..];
    let digits: String = rest
        .trim_start_matches(|c: char| c == ':' || c.is_whitespace())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bwraps_info_gives_the_child_pid() {
        let info = b"{\n    \"child-pid\": 21679,\n    \"cgroup-namespace\": 4026532182\n}\n";
        assert_eq!(child_pid(info), Some(21_679));
        assert_eq!(child_pid(b"{\"child-pid\":7}"), Some(7));
        assert_eq!(child_pid(b"{}"), None);
        assert_eq!(child_pid(b"{\"child-pid\": \"x\"}"), None);
    }

    #[test]
    fn read_until_stops_at_the_marker_or_the_end() {
        let (r, w) = pipe().unwrap();
        let mut w = std::fs::File::from(w);
        std::io::Write::write_all(&mut w, b"{\"a\":1}").unwrap();
        assert_eq!(read_until(r, b'}').unwrap(), b"{\"a\":1}");
        let (r, w) = pipe().unwrap();
        drop(w);
        assert!(
            read_until(r, b'1').unwrap().is_empty(),
            "EOF: the writer is gone"
        );
    }
}
