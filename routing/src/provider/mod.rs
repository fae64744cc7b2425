//! Backend providers: where a new session's isolated backend comes from.
//!
//! | provider | a session gets | released by |
//! |---|---|---|
//! | [`StaticProvider`] | a slot of a configured endpoint (a deployed runtime) | freeing the slot |
//! | [`ProcessProvider`] | a freshly spawned process on loopback ports, ready once `/ping` is 200 | SIGTERM, then SIGKILL, to its process group |

mod process;
mod static_pool;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use process::ProcessProvider;
pub use static_pool::{SlotRegistry, StaticProvider};

use conf::{BackendSpec, Endpoint, Protocol};

/// One runtime's source of backends. An enum, not a trait object: the set is closed and the
/// placement path stays free of dynamic dispatch and boxing.
#[derive(Debug)]
pub enum BackendProvider {
    Static(StaticProvider),
    Process(ProcessProvider),
}

impl BackendProvider {
    /// `self_exe` is what a `process` runtime without `command` runs: this gateway's binary.
    /// Static pools count their sessions in `slots`, which outlives config reloads.
    pub fn new(spec: &BackendSpec, self_exe: &Path, slots: &SlotRegistry) -> Self {
        match spec {
            BackendSpec::Static(pool) => Self::Static(StaticProvider::new(pool, slots)),
            BackendSpec::Process(p) => Self::Process(ProcessProvider::new(p, self_exe)),
        }
    }

    pub const fn name(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Process(_) => "process",
        }
    }

    /// Provides a backend for a new session. Never blocks the thread; a process backend is
    /// awaited until it answers `/ping` or its ready timeout passes.
    pub async fn place(&self) -> Result<Backend, PlacementError> {
        match self {
            Self::Static(p) => p.place(),
            Self::Process(p) => p.place().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("every endpoint of the static pool is taken")]
    PoolExhausted,
    #[error("cannot reserve loopback ports: {0}")]
    Ports(std::io::Error),
    #[error("cannot spawn the backend: {0}")]
    Spawn(std::io::Error),
    #[error("the backend exited before it was ready ({0})")]
    ExitedEarly(std::process::ExitStatus),
    #[error("the backend did not answer GET /ping with 200 within {0:?}")]
    NotReady(Duration),
}

/// A session's backend: its addresses and the lease that keeps it reserved.
#[derive(Debug)]
pub struct Backend {
    pub endpoint: Endpoint,
    lease: Lease,
}

#[derive(Debug)]
enum Lease {
    Slot(static_pool::SlotLease),
    Process(process::ProcessLease),
}

impl Backend {
    /// The backend's address for one protocol port; `None` when it does not serve it.
    pub fn addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.endpoint.addr(protocol)
    }

    /// True once a process backend has exited on its own. Static endpoints never exit.
    pub fn has_exited(&self) -> bool {
        match &self.lease {
            Lease::Slot(_) => false,
            Lease::Process(p) => p.has_exited(),
        }
    }

    /// Releases the backend: frees the slot, or stops the process (SIGTERM, then SIGKILL after
    /// the stop timeout). Idempotent.
    pub async fn release(&self) {
        match &self.lease {
            Lease::Slot(s) => s.release(),
            Lease::Process(p) => p.stop().await,
        }
    }

    /// What the backend is, for logs and the admin API: `static` or `process <pid>`.
    pub fn describe(&self) -> String {
        match &self.lease {
            Lease::Slot(_) => "static".to_owned(),
            Lease::Process(p) => format!("process {}", p.pid()),
        }
    }
}
