//! The `process` provider: one freshly spawned backend process per session.
//!
//! The gateway reserves three loopback ports, starts the command with them substituted for
//! `{http}`, `{mcp}` and `{a2a}`, and waits until `GET /ping` answers 200.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use conf::{Endpoint, ProcessSpec};
use tokio::process::Command;

use super::child::{ChildLease, Remains, guard, wait_ready};
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
            .stderr(Stdio::inherit());
        guard(&mut cmd);
        let mut child = cmd.spawn().map_err(PlacementError::Spawn)?;
        // Dropping `child` on any early return kills it (kill_on_drop).
        let addrs = Addrs::from(endpoint);
        wait_ready(&mut child, &addrs.http, self.spec.ready_timeout).await?;
        let lease = ChildLease::new(child, self.spec.stop_timeout, Remains::default());
        tracing::debug!(pid = lease.pid(), http = %endpoint.http, "process backend ready");
        Ok(Backend {
            addrs,
            lease: Lease::Process(lease),
        })
    }
}

fn addr_or_empty(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_default()
}

/// Three free loopback ports, held at once so they differ, then let go for the child to bind.
pub(super) fn reserve_endpoint() -> std::io::Result<Endpoint> {
    let bind = || TcpListener::bind(("127.0.0.1", 0));
    let (h, m, a) = (bind()?, bind()?, bind()?);
    Ok(Endpoint {
        http: h.local_addr()?,
        mcp: Some(m.local_addr()?),
        a2a: Some(a.local_addr()?),
    })
}
