//! Backends an earlier gateway process keeps for this one after a graceful upgrade.
//!
//! A spawned backend can only be the child of the process that forked it, so a graceful upgrade
//! of the all-in-one leaves it where it is: the old process stays alive as its **keeper**
//! (`crate::handover::keeper`), and this process drives it over the keeper's Unix socket with a
//! line protocol:
//!
//! | from | line | meaning |
//! |---|---|---|
//! | keeper | `alive <pid> <pid> …` | first line: the backends it still keeps |
//! | adopter | `stop <pid> <grace ms>` | stop this backend (SIGTERM, SIGKILL after the grace) and clean up after it |
//! | keeper | `stopped <pid>` | done (also for a pid it no longer keeps) |
//! | keeper | `exited <pid>` | the backend exited on its own (and was cleaned up) |
//!
//! A closed connection means the keeper is gone, and its backends with it (parent-death signal).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

/// How long a stop may take beyond the backend's own grace before this side gives up waiting.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// One keeper: the connection to it and what it said about each backend.
#[derive(Debug)]
pub struct KeeperLink {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Pids still running there (exited or stopped ones are removed).
    alive: Mutex<HashMap<u32, ()>>,
    changed: Notify,
    closed: AtomicBool,
}

impl KeeperLink {
    /// Connects to the keeper at `path` and learns which backends it still keeps. Its lines are
    /// read on the keeper thread's runtime, which outlives Pingora's.
    pub async fn connect(path: &Path) -> std::io::Result<std::sync::Arc<Self>> {
        let stream = UnixStream::connect(path).await?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line())
            .await
            .map_err(|_| std::io::Error::other("the keeper did not say what it keeps"))??
            .unwrap_or_default();
        let alive = first
            .strip_prefix("alive")
            .ok_or_else(|| std::io::Error::other(format!("unexpected keeper greeting: {first}")))?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|p| (p, ()))
            .collect();
        let link = std::sync::Arc::new(Self {
            path: path.to_owned(),
            writer: tokio::sync::Mutex::new(write),
            alive: Mutex::new(alive),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let reader = std::sync::Arc::clone(&link);
        super::child::keeper_runtime()?.spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split_whitespace();
                if let (Some("exited" | "stopped"), Some(Ok(pid))) =
                    (words.next(), words.next().map(str::parse::<u32>))
                {
                    reader.forget(pid);
                }
            }
            reader.closed.store(true, Ordering::Release);
            reader.changed.notify_waiters();
        });
        Ok(link)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn forget(&self, pid: u32) {
        if let Ok(mut alive) = self.alive.lock() {
            alive.remove(&pid);
        }
        self.changed.notify_waiters();
    }

    /// Whether the keeper still runs `pid`.
    pub fn keeps(&self, pid: u32) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self
                .alive
                .lock()
                .map(|a| a.contains_key(&pid))
                .unwrap_or(false)
    }

    /// Asks the keeper to stop `pid` and waits until it has (or is gone).
    async fn stop(&self, pid: u32, grace: Duration) {
        if !self.keeps(pid) {
            return;
        }
        let line = format!("stop {pid} {}\n", grace.as_millis());
        if self
            .writer
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .is_err()
        {
            return;
        }
        let _ = tokio::time::timeout(grace + STOP_SLACK, async {
            loop {
                let changed = self.changed.notified();
                if !self.keeps(pid) {
                    return;
                }
                changed.await;
            }
        })
        .await;
    }
}

/// A session's backend that a keeper runs.
#[derive(Debug)]
pub(super) struct KeptLease {
    pub link: std::sync::Arc<KeeperLink>,
    pub pid: u32,
    pub stop_timeout: Duration,
    /// A process backend's loopback ports: handed to no new backend while it lives.
    pub _ports: Option<super::process::Ports>,
    released: AtomicBool,
}

impl KeptLease {
    pub fn new(
        link: std::sync::Arc<KeeperLink>,
        pid: u32,
        stop_timeout: Duration,
        ports: Option<super::process::Ports>,
    ) -> Self {
        Self {
            link,
            pid,
            stop_timeout,
            _ports: ports,
            released: AtomicBool::new(false),
        }
    }

    pub fn has_exited(&self) -> bool {
        !self.link.keeps(self.pid)
    }

    /// Stops the backend through its keeper, once.
    pub async fn stop(&self, at_once: bool) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let grace = if at_once {
            Duration::ZERO
        } else {
            self.stop_timeout
        };
        self.link.stop(self.pid, grace).await;
    }
}
