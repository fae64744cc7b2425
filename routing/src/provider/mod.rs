//! Backend providers: where a new session's isolated backend comes from.
//!
//! | provider | a session gets | isolated by | reaches the host's loopback | released by |
//! |---|---|---|---|---|
//! | [`StaticProvider`] | a slot of a configured endpoint (a deployed runtime) | whatever runs it | whatever runs it | freeing the slot |
//! | [`ProcessProvider`] | a fresh process on loopback ports | nothing but the process boundary | yes: the admin API, other sessions' backends | SIGTERM, then SIGKILL, to its process group |
//! | [`SandboxProvider`] | a fresh process in its own namespaces and cgroup, reached over Unix sockets | user, pid, mount, ipc, uts, net namespaces; cgroup limits; no capabilities | no (egress: slirp4netns without host loopback; a policy: only the gateway's egress proxy) | the same, then its cgroup and scratch dir go |
//! | [`MicrovmProvider`] | a fresh QEMU microVM, booted or restored from a snapshot | a virtual machine (KVM, or software emulation) | no (egress: passt without the gateway mapping; none: restricted slirp; a policy: restricted slirp with `guestfwd`s to the egress proxy) | the same, then its state dir and passt go |
//!
//! Every spawning provider can keep a warm pool; every backend is ready only once `GET /ping`
//! answers 200.

pub mod addr;
mod cgroup;
mod child;
mod guest_net;
mod kept;
mod microvm;
mod process;
mod sandbox;
mod sandbox_egress;
mod static_pool;
pub mod storage;
mod warm;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use addr::{Addrs, BackendAddr};
pub use child::keeper_runtime;
pub use kept::KeeperLink;
pub use microvm::{MicrovmProvider, kvm_usable};
pub use process::ProcessProvider;
pub use sandbox::SandboxProvider;
pub use static_pool::{SlotRegistry, StaticProvider};

use conf::{BackendSpec, Protocol};
use warm::WarmPool;

/// How long after a warm backend is taken its replacement starts.
const REFILL_DELAY: Duration = Duration::from_millis(100);

/// One runtime version's source of backends. An enum, not a trait object: the set is closed
/// and the placement path stays free of dynamic dispatch.
#[derive(Debug)]
pub enum BackendProvider {
    Static(StaticProvider),
    Spawned(SpawnedProvider),
}

/// A provider that starts a backend per session, with its warm pool.
#[derive(Debug)]
pub struct SpawnedProvider {
    spawner: Arc<Spawner>,
    pool: Option<Arc<WarmPool>>,
}

#[derive(Debug)]
pub enum Spawner {
    Process(ProcessProvider),
    Sandbox(SandboxProvider),
    /// Boxed: its template and acceleration cells make it several times the others' size.
    Microvm(Box<MicrovmProvider>),
}

impl Spawner {
    async fn spawn(&self) -> Result<Backend, PlacementError> {
        match self {
            Self::Process(p) => p.place().await,
            Self::Sandbox(p) => p.place().await,
            Self::Microvm(p) => p.place().await,
        }
    }
}

impl BackendProvider {
    /// `self_exe` is what a runtime without `command` runs: this gateway's binary. Static pools
    /// count their sessions in `slots`, which outlives config reloads.
    pub fn new(spec: &BackendSpec, self_exe: &Path, slots: &SlotRegistry) -> Self {
        let (spawner, warm) = match spec {
            BackendSpec::Static(pool) => return Self::Static(StaticProvider::new(pool, slots)),
            BackendSpec::Process(p) => (
                Spawner::Process(ProcessProvider::new(p, self_exe)),
                p.warm_pool,
            ),
            BackendSpec::Sandbox(s) => (
                Spawner::Sandbox(SandboxProvider::new(s, self_exe)),
                s.process.warm_pool,
            ),
            BackendSpec::Microvm(m) => (
                Spawner::Microvm(Box::new(MicrovmProvider::new(m))),
                m.warm_pool,
            ),
        };
        Self::Spawned(SpawnedProvider {
            spawner: Arc::new(spawner),
            pool: (warm > 0).then(|| Arc::new(WarmPool::new(warm))),
        })
    }

    /// A backend for a session resuming from suspension: its own guest restored from `state`
    /// (a microVM snapshot), else a fresh one (its files come back as on any placement).
    pub async fn resume(&self, state: Option<&Path>) -> Result<Backend, PlacementError> {
        match (self, state) {
            (Self::Spawned(s), Some(state)) => match &*s.spawner {
                Spawner::Microvm(m) => m.resume(state).await,
                _ => self.place().await,
            },
            _ => self.place().await,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Spawned(s) => match &*s.spawner {
                Spawner::Process(_) => "process",
                Spawner::Sandbox(_) => "sandbox",
                Spawner::Microvm(_) => "microvm",
            },
        }
    }

    /// Provides a backend for a new session: a pooled one when ready, else a fresh one (awaited
    /// until it answers `/ping` or its ready timeout passes). Never blocks the thread.
    pub async fn place(&self) -> Result<Backend, PlacementError> {
        match self {
            Self::Static(p) => p.place(),
            Self::Spawned(s) => {
                if let Some(pool) = &s.pool {
                    if let Some(b) = pool.take() {
                        // The replacement starts once this session's first request is under
                        // way, not competing with it for the CPU.
                        pool.refill_after(&s.spawner, REFILL_DELAY);
                        return Ok(b);
                    }
                    pool.refill(&s.spawner);
                }
                s.spawner.spawn().await
            }
        }
    }

    /// Tops the warm pool up (the lifecycle sweep calls it on every tick).
    pub fn refill(&self) {
        if let Self::Spawned(SpawnedProvider {
            spawner,
            pool: Some(pool),
        }) = self
        {
            pool.refill(spawner);
        }
    }

    /// Destroys the warm pool's backends and starts no more (a process that handed its sessions
    /// to a new one in a graceful upgrade needs none).
    pub fn close_pool(&self) {
        if let Self::Spawned(SpawnedProvider {
            pool: Some(pool), ..
        }) = self
        {
            pool.close();
        }
    }

    /// How a microVM provider's guests run (`kvm` or `tcg`), once decided.
    pub fn accel(&self) -> Option<&'static str> {
        match self {
            Self::Spawned(s) => match &*s.spawner {
                Spawner::Microvm(m) => m.accel_in_use(),
                _ => None,
            },
            Self::Static(_) => None,
        }
    }

    /// Where a session's commands run (`InvokeAgentRuntimeCommand`), `None` when its backend
    /// is not one this gateway started (a static endpoint, a backend on another host).
    pub fn exec_at(&self, backend: &Backend) -> Option<ExecAt> {
        let Self::Spawned(s) = self else {
            return None;
        };
        let addrs = backend.addrs();
        if let BackendAddr::Relay(relay) = &addrs.http {
            // On a host: its relay reaches the backend's exec socket.
            return Some(ExecAt::Socket(BackendAddr::Relay(Arc::clone(relay))));
        }
        match (&*s.spawner, &addrs.http) {
            (Spawner::Process(p), BackendAddr::Tcp(_)) => Some(ExecAt::Local(p.env_for(
                addrs,
                match &backend.storage {
                    Some(Storage::Slot(s)) => Some(s.dir()),
                    _ => None,
                },
            ))),
            (Spawner::Sandbox(_), BackendAddr::Unix(http)) => {
                let dir = http.parent()?;
                Some(ExecAt::Socket(BackendAddr::Unix(Arc::from(
                    dir.join("exec.sock"),
                ))))
            }
            (Spawner::Microvm(_), BackendAddr::Tcp(_)) => addrs.exec.clone().map(ExecAt::Socket),
            _ => None,
        }
    }

    /// Backends ready in the warm pool.
    pub fn warm(&self) -> usize {
        match self {
            Self::Spawned(SpawnedProvider { pool: Some(p), .. }) => p.ready(),
            _ => 0,
        }
    }

    /// Backends the warm pool keeps ready.
    pub fn warm_target(&self) -> usize {
        match self {
            Self::Spawned(SpawnedProvider { pool: Some(p), .. }) => p.target(),
            _ => 0,
        }
    }
}

impl Drop for SpawnedProvider {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.close();
        }
    }
}

/// Where a session's commands run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecAt {
    /// Started by the gateway itself with the backend's environment: a `process` backend has
    /// no isolation to enter.
    Local(Vec<(String, String)>),
    /// Sent to an exec socket inside the isolation (a sandbox's `exec.sock`, a guest's
    /// forwarded port), one command per connection (`agent::exec`).
    Socket(BackendAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("every endpoint of the static pool is taken")]
    PoolExhausted,
    #[error("cannot reserve loopback ports: {0}")]
    Ports(std::io::Error),
    #[error("cannot spawn the backend: {0}")]
    Spawn(std::io::Error),
    #[error("cannot set up the backend's isolation: {0}")]
    Isolation(std::io::Error),
    #[error("the backend exited before it was ready ({0})")]
    ExitedEarly(std::process::ExitStatus),
    #[error("the backend did not answer GET /ping with 200 within {0:?}")]
    NotReady(Duration),
    #[error("the guest: {0}")]
    Guest(String),
    #[error("{0}")]
    NoHost(String),
}

/// A session's backend: its addresses and the lease that keeps it reserved.
#[derive(Debug)]
pub struct Backend {
    addrs: Addrs,
    lease: Lease,
    /// Its session storage, when the runtime has it.
    storage: Option<Storage>,
}

/// Where a backend's session storage is: a slot it sees directly, or copies in a guest.
#[derive(Debug)]
enum Storage {
    Slot(storage::Slot),
    Guest(storage::GuestStorage),
}

#[derive(Debug)]
enum Lease {
    Slot(static_pool::SlotLease),
    Process(child::ChildLease),
    Sandbox(child::ChildLease),
    Microvm(child::ChildLease),
    /// Held in the shared directory (a replica's static-pool slot): released by ending the
    /// session's record there.
    Shared,
    /// Run by an earlier process of this gateway, which keeps it since a graceful upgrade.
    Kept(&'static str, kept::KeptLease),
}

/// What a graceful upgrade hands over about a backend besides its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    /// `static`, `process`, `sandbox` or `microvm`.
    pub kind: &'static str,
    /// The backend's process and its keeper's socket (`None`: this process keeps it).
    pub process: Option<(u32, Option<std::path::PathBuf>)>,
    pub stop_timeout: Duration,
}

impl Backend {
    /// A backend whose lease the shared directory holds.
    pub fn shared(addrs: Addrs) -> Self {
        Self {
            addrs,
            lease: Lease::Shared,
            storage: None,
        }
    }

    /// A backend a keeper runs (see [`KeeperLink`]): `kind` as [`Handed::kind`] names it.
    pub fn kept(
        kind: &str,
        addrs: Addrs,
        link: Arc<KeeperLink>,
        pid: u32,
        stop_timeout: Duration,
    ) -> Self {
        let kind = match kind {
            "sandbox" => "sandbox",
            "microvm" => "microvm",
            _ => "process",
        };
        let ports = process::Ports::claim(&addrs);
        Self {
            addrs,
            lease: Lease::Kept(kind, kept::KeptLease::new(link, pid, stop_timeout, ports)),
            storage: None,
        }
    }

    /// Its addresses and lease, as a graceful upgrade hands them over.
    pub fn addrs(&self) -> &Addrs {
        &self.addrs
    }

    /// What a graceful upgrade hands over besides the addresses; `None` for a lease held in
    /// the shared directory (a replica hands nothing over).
    pub fn handed(&self) -> Option<Handed> {
        let (kind, process, stop_timeout) = match &self.lease {
            Lease::Shared => return None,
            Lease::Slot(_) => ("static", None, Duration::ZERO),
            Lease::Process(c) => ("process", Some((c.pid(), None)), c.stop_timeout()),
            Lease::Sandbox(c) => ("sandbox", Some((c.pid(), None)), c.stop_timeout()),
            Lease::Microvm(c) => ("microvm", Some((c.pid(), None)), c.stop_timeout()),
            Lease::Kept(kind, k) => (
                *kind,
                Some((k.pid, Some(k.link.path().to_owned()))),
                k.stop_timeout,
            ),
        };
        Some(Handed {
            kind,
            process,
            stop_timeout,
        })
    }

    /// Its addresses, when its lease is held in the shared directory.
    pub fn shared_addrs(&self) -> Option<&Addrs> {
        matches!(self.lease, Lease::Shared).then_some(&self.addrs)
    }

    /// The backend's address for one protocol port; `None` when it does not serve it.
    pub fn addr(&self, protocol: Protocol) -> Option<&BackendAddr> {
        self.addrs.get(protocol)
    }

    fn child(&self) -> Option<&child::ChildLease> {
        match &self.lease {
            Lease::Slot(_) | Lease::Shared | Lease::Kept(..) => None,
            Lease::Process(c) | Lease::Sandbox(c) | Lease::Microvm(c) => Some(c),
        }
    }

    /// Tells the backend which session it now serves. A microVM guest learns it over its serial
    /// port, in the background: the request does not wait (every request carries the id too).
    pub fn assign(&self, session: &str) {
        if let Lease::Sandbox(c) | Lease::Microvm(c) = &self.lease {
            c.assign_egress(session);
        }
        if let Lease::Microvm(c) = &self.lease
            && let Some(dir) = c.dir()
        {
            microvm::send_session(dir.join("serial.sock"), session.to_owned());
        }
    }

    /// Moves the session's stored files into the backend's storage slot (a runtime with
    /// session storage); a no-op otherwise.
    pub async fn check_out_storage(&self, principal: &str, session: &str) -> std::io::Result<()> {
        match &self.storage {
            Some(Storage::Slot(slot)) => slot.check_out(principal, session).await,
            Some(Storage::Guest(g)) => g.check_out(principal, session).await,
            None => Ok(()),
        }
    }

    /// True once a spawned backend has exited on its own. Static endpoints never exit.
    pub fn has_exited(&self) -> bool {
        if let Lease::Kept(_, k) = &self.lease {
            return k.has_exited();
        }
        self.child().is_some_and(child::ChildLease::has_exited)
    }

    /// True when the kernel killed the backend for exceeding its memory limit (sandboxes).
    pub fn oom_killed(&self) -> bool {
        self.child().is_some_and(child::ChildLease::oom_killed)
    }

    /// Suspends the backend of an idle session (`on_idle = "suspend"`): its session storage is
    /// copied back first; a microVM guest is then saved whole to `state` and ends — `Some`
    /// (the snapshot's size). Other backends keep only their files (`None`); [`Self::release`]
    /// ends them as usual.
    pub async fn suspend(&self, state: &Path) -> Result<Option<u64>, String> {
        if let Some(Storage::Guest(g)) = &self.storage {
            g.check_in().await;
        }
        match &self.lease {
            Lease::Microvm(c) => {
                let dir = c.dir().ok_or("the guest has no state directory")?;
                microvm::snapshot(&dir, state).await.map(Some)
            }
            Lease::Kept(..) => Err("kept by an earlier gateway process".into()),
            _ => Ok(None),
        }
    }

    /// Releases the backend: frees the slot, or stops the process (SIGTERM, then SIGKILL after
    /// the stop timeout) and removes what it leaves behind. Idempotent.
    pub async fn release(&self) {
        if let Some(Storage::Guest(g)) = &self.storage {
            g.check_in().await; // while the guest still runs
        }
        match &self.lease {
            Lease::Slot(s) => s.release(),
            Lease::Shared => {}
            Lease::Kept(_, k) => k.stop(false).await,
            Lease::Process(c) | Lease::Sandbox(c) | Lease::Microvm(c) => c.stop().await,
        }
        if let Some(Storage::Slot(slot)) = &self.storage {
            slot.check_in();
        }
    }

    /// Releases the backend without a grace period: a process is killed at once (SIGKILL).
    pub async fn release_now(&self) {
        if let Some(Storage::Guest(g)) = &self.storage {
            g.check_in().await;
        }
        match &self.lease {
            Lease::Slot(s) => s.release(),
            Lease::Shared => {}
            Lease::Kept(_, k) => k.stop(true).await,
            Lease::Process(c) | Lease::Sandbox(c) | Lease::Microvm(c) => c.kill().await,
        }
        if let Some(Storage::Slot(slot)) = &self.storage {
            slot.check_in();
        }
    }

    /// What the backend is, for logs and the admin API: `static`, `process <pid>`, ….
    pub fn describe(&self) -> String {
        match &self.lease {
            Lease::Slot(_) | Lease::Shared => "static".to_owned(),
            Lease::Process(c) => format!("process {}", c.pid()),
            Lease::Sandbox(c) => format!("sandbox {}", c.pid()),
            Lease::Microvm(c) => format!("microvm {}", c.pid()),
            Lease::Kept(kind, k) => format!("{kind} {}", k.pid),
        }
    }
}
