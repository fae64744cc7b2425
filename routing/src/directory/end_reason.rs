//! Why a session ended: the reasons, their metric names and their codes (a session keeps its
//! reason in one byte).

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Idle,
    MaxLifetime,
    BackendExited,
    /// The backend was killed for exceeding its memory limit.
    OutOfMemory,
    Unhealthy,
    PlacementFailed,
    Stopped,
    Shutdown,
    /// A config reload removed its runtime.
    RuntimeRemoved,
    /// Its backend's host stopped answering (its heartbeat expired).
    HostLost,
    /// Idle and suspended (`on_idle = "suspend"`): it lives on as a snapshot or its files.
    Suspended,
    /// Suspended, and not resumed within its retention.
    SuspendExpired,
}

impl EndReason {
    const ALL: [EndReason; 12] = [
        EndReason::Idle,
        EndReason::MaxLifetime,
        EndReason::BackendExited,
        EndReason::OutOfMemory,
        EndReason::Unhealthy,
        EndReason::PlacementFailed,
        EndReason::Stopped,
        EndReason::Shutdown,
        EndReason::RuntimeRemoved,
        EndReason::HostLost,
        EndReason::Suspended,
        EndReason::SuspendExpired,
    ];

    pub(super) fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .map_or(0, |i| i as u8 + 1)
    }

    pub(super) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// The reason [`EndReason::as_str`] names (`stopped` for anything else).
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(EndReason::Stopped)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::MaxLifetime => "max_lifetime",
            EndReason::BackendExited => "backend_exited",
            EndReason::OutOfMemory => "out_of_memory",
            EndReason::Unhealthy => "unhealthy",
            EndReason::PlacementFailed => "placement_failed",
            EndReason::Stopped => "stopped",
            EndReason::Shutdown => "shutdown",
            EndReason::RuntimeRemoved => "runtime_removed",
            EndReason::HostLost => "host_lost",
            EndReason::Suspended => "suspended",
            EndReason::SuspendExpired => "suspend_expired",
        }
    }
}
