//! The `process` provider: one freshly spawned backend process per session.
//!
//! The gateway reserves three loopback ports, starts the command with them substituted for
//! `{http}`, `{mcp}` and `{a2a}`, and waits until `GET /ping` answers 200.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use conf::{Endpoint, ProcessSpec};
use tokio::process::Command;

use super::child::{ChildLease, Remains, guard, spawn, wait_ready};
use super::storage::{STORAGE_ENV, Slot};
use super::{Addrs, Backend, Lease, PlacementError};

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

    /// The environment the backend at `addrs` was started with: its commands run in it.
    pub fn env_for(&self, addrs: &Addrs, storage: Option<&Path>) -> Vec<(String, String)> {
        match endpoint_of(addrs) {
            Some(endpoint) => self.env(&endpoint, storage),
            None => Vec::new(),
        }
    }

    /// `env` with the backend's addresses filled in, and where its session storage is.
    fn env(&self, endpoint: &Endpoint, storage: Option<&Path>) -> Vec<(String, String)> {
        self.spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), fill(v, endpoint)))
            .chain(storage.map(|p| (STORAGE_ENV.to_owned(), p.display().to_string())))
            .collect()
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
        let ports = reserve_endpoint().map_err(PlacementError::Ports)?;
        let endpoint = ports.0;
        let storage = match &self.spec.storage {
            Some(spec) => Some(Slot::create(spec).map_err(PlacementError::Isolation)?),
            None => None,
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(self.spec.args.iter().map(|a| fill(a, &endpoint)))
            .envs(self.env(&endpoint, storage.as_ref().map(Slot::dir)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        guard(&mut cmd);
        let mut child = spawn(cmd).await.map_err(PlacementError::Spawn)?;
        // Dropping `child` on any early return kills it (kill_on_drop).
        let addrs = Addrs::from(endpoint);
        wait_ready(&mut child, &addrs.http, self.spec.ready_timeout).await?;
        let pid = child.id().unwrap_or(0);
        if listener_owner(endpoint.http.port(), pid) == Some(false) {
            // Another process (another gateway's backend) took the port between its
            // reservation and our child's bind: what answered `/ping` is not ours. Our child
            // failed to bind; end it, and the placement tries again on fresh ports.
            tracing::warn!(
                port = endpoint.http.port(),
                "a backend's port was taken by another process; placing again"
            );
            let _ = child.start_kill();
            let status = child.wait().await.map_err(PlacementError::Spawn)?;
            return Err(PlacementError::ExitedEarly(status));
        }
        let mut remains = Remains::default();
        remains.ports = Some(ports);
        let lease = ChildLease::new(child, self.spec.stop_timeout, remains);
        tracing::debug!(pid = lease.pid(), http = %endpoint.http, "process backend ready");
        Ok(Backend {
            addrs,
            lease: Lease::Process(lease),
            storage: storage.map(super::Storage::Slot),
        })
    }
}

/// `{http}`, `{mcp}` and `{a2a}` in `s` replaced by the backend's addresses.
fn fill(s: &str, endpoint: &Endpoint) -> String {
    s.replace("{http}", &endpoint.http.to_string())
        .replace("{mcp}", &addr_or_empty(endpoint.mcp))
        .replace("{a2a}", &addr_or_empty(endpoint.a2a))
}

/// The loopback endpoint of a process backend at `addrs`; `None` for other kinds of address.
fn endpoint_of(addrs: &Addrs) -> Option<Endpoint> {
    let tcp = |a: Option<&super::BackendAddr>| match a {
        Some(super::BackendAddr::Tcp(a)) => Some(*a),
        _ => None,
    };
    Some(Endpoint {
        http: tcp(Some(&addrs.http))?,
        mcp: tcp(addrs.mcp.as_ref()),
        a2a: tcp(addrs.a2a.as_ref()),
    })
}

fn addr_or_empty(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// Loopback ports handed to backends that may still use them. The kernel can give a port let go
/// by one reservation to the next `bind(0)`; two backends told the same port would answer each
/// other's readiness probes, and one session would reach another's backend.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// How many ports one reservation may look at before it gives up (all but three handed out).
const MAX_TRIES: usize = 64;

/// A backend's three loopback ports (and a microVM's exec port), not handed to any other
/// backend while this lives.
#[derive(Debug)]
pub(super) struct Ports(pub Endpoint, Option<SocketAddr>);

impl Ports {
    /// The loopback ports of a backend this process did not start (one a keeper runs since a
    /// graceful upgrade): marked handed out for as long as this lives.
    pub(super) fn claim(addrs: &super::Addrs) -> Option<Self> {
        let endpoint = endpoint_of(addrs)?;
        let exec = match &addrs.exec {
            Some(super::BackendAddr::Tcp(a)) => Some(*a),
            _ => None,
        };
        let mut out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        for a in [Some(endpoint.http), endpoint.mcp, endpoint.a2a, exec]
            .into_iter()
            .flatten()
        {
            out.insert(a.port());
        }
        Some(Self(endpoint, exec))
    }

    /// One more loopback port for this backend (a microVM's exec port), held as the others.
    pub(super) fn reserve_exec(&mut self) -> std::io::Result<SocketAddr> {
        let mut out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..MAX_TRIES {
            let addr = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?;
            if out.insert(addr.port()) {
                self.1 = Some(addr);
                return Ok(addr);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no loopback port free of other backends",
        ))
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        let mut out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        for addr in [Some(self.0.http), self.0.mcp, self.0.a2a, self.1]
            .into_iter()
            .flatten()
        {
            out.remove(&addr.port());
        }
    }
}

/// Three free loopback ports that no live backend was given, held at once so they differ,
/// then let go for the child to bind.
pub(super) fn reserve_endpoint() -> std::io::Result<Ports> {
    let mut out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::with_capacity(3);
    for _ in 0..MAX_TRIES {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        if !out.contains(&addr.port()) {
            held.push((listener, addr));
        }
        if let [(_, http), (_, mcp), (_, a2a)] = held[..] {
            for a in [http, mcp, a2a] {
                out.insert(a.port());
            }
            return Ok(Ports(
                Endpoint {
                    http,
                    mcp: Some(mcp),
                    a2a: Some(a2a),
                },
                None,
            ));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no three loopback ports free of other backends",
    ))
}

/// Whether the socket listening on 127.0.0.1:`port` belongs to process group `pgid` (a backend
/// and whatever it started); `None` when `/proc` cannot tell. Ports are reserved by binding
/// and releasing them, which other processes on the host may do at the same moment.
fn listener_owner(port: u16, pgid: u32) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let ours = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 9 && ours.iter().any(|o| o == f[1]) && f[3] == "0A").then(|| f[9].to_owned())
    })?;
    let socket = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        // Field 5 of /proc/PID/stat is the process group (after the parenthesised name).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let group = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|g| g.parse::<u32>().ok());
        if group != Some(pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()))
        {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_to_two_live_backends() {
        let live: Vec<Ports> = (0..200).map(|_| reserve_endpoint().unwrap()).collect();
        let mut seen = BTreeSet::new();
        for p in &live {
            for a in [Some(p.0.http), p.0.mcp, p.0.a2a].into_iter().flatten() {
                assert!(seen.insert(a.port()), "port {} handed out twice", a.port());
            }
        }
        let first = live[0].0.http.port();
        drop(live);
        let out = HANDED_OUT.lock().unwrap();
        assert!(
            !out.contains(&first),
            "a dropped reservation gives its ports back"
        );
    }

    #[test]
    fn a_listener_is_told_apart_from_another_process_group() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // SAFETY: getpgrp(2) cannot fail and touches no memory.
        let ours = unsafe { libc::getpgrp() } as u32;
        assert_eq!(listener_owner(port, ours), Some(true));
        assert_eq!(listener_owner(port, ours + 1_000_000), Some(false));
        drop(l);
        assert_eq!(listener_owner(port, ours), None, "nothing listens");
    }
}
