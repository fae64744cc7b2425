//! Per-backend resource limits through cgroups: v2 where its controllers are available to us,
//! v1 where only v1 has them (as on hosts whose unified hierarchy offers just `hugetlb`).
//!
//! Each backend gets its own cgroup under the gateway's own (so accounting stays nested), with
//! a memory limit, a CFS CPU quota and a pids limit. The child joins it between fork and exec
//! (it writes `0`, "myself", to the `cgroup.procs` files the gateway opened), so not one of
//! its instructions runs unlimited. Destroying kills whatever is left inside, then removes it.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The limits of one backend.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Percent of one CPU (200 = two cores).
    pub cpu_percent: u32,
    pub max_pids: u32,
}

/// Where backends' cgroups are made.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// One directory holds every controller.
    V2 { parent: PathBuf },
    /// One directory per controller (missing ones are not limited).
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// The host's hierarchy, found once. `None`: no usable memory controller at all.
    pub fn get() -> Option<&'static Hierarchy> {
        static FOUND: OnceLock<Option<Hierarchy>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                let found = detect();
                match &found {
                    Some(h) => tracing::info!(hierarchy = ?h, "cgroups for backend limits"),
                    None => tracing::warn!(
                        "no cgroup memory controller usable: sandboxes cannot be limited"
                    ),
                }
                found
            })
            .as_ref()
    }

    pub const fn version(&self) -> u8 {
        match self {
            Hierarchy::V2 { .. } => 2,
            Hierarchy::V1 { .. } => 1,
        }
    }
}

fn detect() -> Option<Hierarchy> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    // v2, mounted alone at /sys/fs/cgroup or beside v1 at /sys/fs/cgroup/unified.
    let v2_path = own.lines().find_map(|l| l.strip_prefix("0::"));
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let Some(own_path) = v2_path else { break };
        let controllers = fs::read_to_string(Path::new(mount).join("cgroup.controllers"));
        if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
            let parent = Path::new(mount).join(own_path.trim_start_matches('/'));
            if let Some(parent) = delegate_v2(&parent) {
                return Some(Hierarchy::V2 { parent });
            }
        }
    }
    let v1 = |controller: &str| -> Option<PathBuf> {
        own.lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',').any(|c| c == controller).then(|| {
                    Path::new("/sys/fs/cgroup")
                        .join(controller)
                        .join(path.trim_start_matches('/'))
                })
            })
            .filter(|p| p.join("cgroup.procs").exists())
    };
    let memory = v1("memory")?;
    Some(Hierarchy::V1 {
        memory: Some(memory),
        cpu: v1("cpu"),
        pids: v1("pids"),
    })
}

/// Makes `dir` able to hold limited children. cgroup v2 lets a cgroup with processes of its
/// own enable no controllers for its children, so the gateway first moves itself into a
/// leaf `dir/gateway`. `None` when the controllers are not ours to enable.
fn delegate_v2(dir: &Path) -> Option<PathBuf> {
    let enable = || fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
    if enable().is_ok() {
        return Some(dir.to_owned());
    }
    let leaf = dir.join("gateway");
    fs::create_dir_all(&leaf).ok()?;
    fs::write(leaf.join("cgroup.procs"), std::process::id().to_string()).ok()?;
    enable().ok().map(|()| dir.to_owned())
}

/// One backend's cgroup (one directory per controller on v1).
#[derive(Debug)]
pub struct Cgroup {
    version: u8,
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each directory, open for the child to write itself into.
    procs: Vec<File>,
    memory: Option<PathBuf>,
}

impl Cgroup {
    /// Creates a cgroup with `limits` under the gateway's own.
    pub fn create(h: &Hierarchy, limits: Limits) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "sessiongate-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cg = Cgroup {
            version: h.version(),
            dirs: Vec::new(),
            procs: Vec::new(),
            memory: None,
        };
        let quota = u64::from(limits.cpu_percent) * 1_000;
        match h {
            Hierarchy::V2 { parent } => {
                let dir = cg.make(parent, &name)?;
                write(&dir, "memory.max", limits.memory_bytes)?;
                let _ = write(&dir, "memory.swap.max", 0); // absent without swap accounting
                write(&dir, "cpu.max", format!("{quota} 100000"))?;
                write(&dir, "pids.max", limits.max_pids)?;
                cg.memory = Some(dir);
            }
            Hierarchy::V1 { memory, cpu, pids } => {
                if let Some(parent) = memory {
                    let dir = cg.make(parent, &name)?;
                    write(&dir, "memory.limit_in_bytes", limits.memory_bytes)?;
                    // Only with swap accounting; without it there is no swap to escape to.
                    let _ = write(&dir, "memory.memsw.limit_in_bytes", limits.memory_bytes);
                    cg.memory = Some(dir);
                }
                if let Some(parent) = cpu {
                    let dir = cg.make(parent, &name)?;
                    write(&dir, "cpu.cfs_period_us", 100_000)?;
                    write(&dir, "cpu.cfs_quota_us", quota)?;
                }
                if let Some(parent) = pids {
                    let dir = cg.make(parent, &name)?;
                    write(&dir, "pids.max", limits.max_pids)?;
                }
            }
        }
        Ok(cg)
    }

    fn make(&mut self, parent: &Path, name: &str) -> std::io::Result<PathBuf> {
        let dir = parent.join(name);
        fs::create_dir(&dir)?;
        self.dirs.push(dir.clone());
        self.procs.push(
            OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?,
        );
        Ok(dir)
    }

    /// The descriptors a child writes `0` to, between fork and exec, to join.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// True once the kernel has killed a process here for exceeding the memory limit.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(dir.join(file)).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    }

    /// Kills every process left inside, then removes the cgroup. Blocking, bounded (~2 s).
    /// Dropping does the same.
    pub fn destroy(self) {
        drop(self);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.procs.clear();
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in std::mem::take(&mut self.dirs) {
            if self.version == 2 {
                let _ = fs::write(dir.join("cgroup.kill"), "1");
            }
            loop {
                let pids = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in pids
                    .lines()
                    .filter_map(|p| p.trim().parse::<libc::pid_t>().ok())
                {
                    // SAFETY: kill(2) on a pid read from the cgroup; no memory involved.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a backend's cgroup");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    }
}

fn write(dir: &Path, file: &str, value: impl ToString) -> std::io::Result<()> {
    let path = dir.join(file);
    let mut f = OpenOptions::new().write(true).open(&path)?;
    f.write_all(value.to_string().as_bytes())
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
