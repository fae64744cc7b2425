//! The keeper: what an all-in-one process becomes after a graceful upgrade handed its sessions
//! to a new process. Its spawned backends are its children (no other process can adopt them),
//! so it stays alive to run them, and serves the new process on a Unix socket (the protocol is
//! in `provider::kept`): it stops a backend when asked, reports one that exits on its own, and
//! exits once it keeps nothing.
//!
//! A keeper nobody is connected to for `orphan_grace` (the new process died, and no later one
//! took its sessions) stops everything it keeps and exits: nothing is left running unowned.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};

use crate::directory::Session;
use crate::provider::keeper_runtime;

/// How often the keeper looks for backends that exited on their own.
const EXIT_CHECK: Duration = Duration::from_millis(250);

type Kept = Arc<Mutex<HashMap<u32, Arc<Session>>>>;

/// A running keeper.
pub struct Keeper {
    /// Yields once the keeper is done: it keeps nothing any more.
    pub done: std::sync::mpsc::Receiver<()>,
    abandon: Arc<tokio::sync::Notify>,
    stop: Arc<tokio::sync::Notify>,
}

impl Keeper {
    /// What stops every kept backend at once when notified (the keeper then exits): for
    /// SIGTERM or SIGINT to a keeping process.
    pub fn stopper(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.stop)
    }

    /// Stops keeping without stopping anything (the handover failed: the backends stay this
    /// process's, as sessions of its own directory).
    pub fn abandon(self) {
        self.abandon.notify_one();
    }
}

/// Starts keeping `sessions` (their backends' pids are the keys) on `listener`, on the keeper
/// thread.
pub fn start(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    sessions: Vec<Arc<Session>>,
    orphan_grace: Duration,
) -> std::io::Result<Keeper> {
    let kept: HashMap<u32, Arc<Session>> = sessions
        .into_iter()
        .filter_map(|s| {
            let pid = s.backend()?.handed()?.process?.0;
            Some((pid, s))
        })
        .collect();
    let (done_tx, done) = std::sync::mpsc::channel();
    let abandon = Arc::new(tokio::sync::Notify::new());
    listener.set_nonblocking(true)?;
    let runtime = keeper_runtime()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let (abandoned, stopped) = (Arc::clone(&abandon), Arc::clone(&stop));
    runtime.spawn(async move {
        let n = kept.len();
        let kept = Arc::new(Mutex::new(kept));
        match UnixListener::from_std(listener) {
            Ok(listener) => {
                tracing::info!(backends = n, socket = %path.display(), "keeping backends for the new process");
                tokio::select! {
                    _ = keep(listener, Arc::clone(&kept), orphan_grace) => {}
                    _ = abandoned.notified() => {}
                    _ = stopped.notified() => {
                        tracing::info!("stopping every kept backend");
                        stop_all(&kept).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "the keeper cannot listen; its backends stop"),
        }
        let _ = std::fs::remove_file(&path);
        let _ = done_tx.send(());
    });
    Ok(Keeper {
        done,
        abandon,
        stop,
    })
}

async fn stop_all(kept: &Kept) {
    for pid in pids(kept) {
        if let Some(b) = take(kept, pid).as_ref().and_then(|s| s.backend()) {
            b.release_now().await;
        }
    }
}

fn pids(kept: &Kept) -> Vec<u32> {
    kept.lock()
        .map(|k| k.keys().copied().collect())
        .unwrap_or_default()
}

fn take(kept: &Kept, pid: u32) -> Option<Arc<Session>> {
    kept.lock().ok()?.remove(&pid)
}

async fn keep(listener: UnixListener, kept: Kept, orphan_grace: Duration) {
    let (exits, _) = broadcast::channel::<u32>(64);
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<bool>();
    let mut connected = 0usize;
    let mut orphaned_since = Some(tokio::time::Instant::now());
    let mut tick = tokio::time::interval(EXIT_CHECK);
    loop {
        if pids(&kept).is_empty() {
            // Let the last `stopped` line reach the adopter before the process exits.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connected += 1;
                    orphaned_since = None;
                    let (kept, exits, conn_tx) = (Arc::clone(&kept), exits.subscribe(), conn_tx.clone());
                    tokio::spawn(async move {
                        serve(stream, kept, exits).await;
                        let _ = conn_tx.send(false);
                    });
                }
            }
            Some(_) = conn_rx.recv() => {
                connected = connected.saturating_sub(1);
                if connected == 0 {
                    orphaned_since = Some(tokio::time::Instant::now());
                }
            }
            _ = tick.tick() => {
                let exited: Vec<u32> = kept
                    .lock()
                    .map(|k| {
                        k.iter()
                            .filter(|(_, s)| s.backend().is_some_and(|b| b.has_exited()))
                            .map(|(pid, _)| *pid)
                            .collect()
                    })
                    .unwrap_or_default();
                for pid in exited {
                    if let Some(b) = take(&kept, pid).as_ref().and_then(|s| s.backend()) {
                        b.release_now().await;
                    }
                    let _ = exits.send(pid);
                }
                if orphaned_since.is_some_and(|t| t.elapsed() >= orphan_grace) {
                    tracing::warn!(backends = pids(&kept).len(), "no process drives the kept backends; stopping them");
                    stop_all(&kept).await;
                    return;
                }
            }
        }
    }
}

/// One adopter's connection: `alive …` first, then its `stop` lines answered and exits told.
async fn serve(stream: UnixStream, kept: Kept, mut exits: broadcast::Receiver<u32>) {
    let (read, mut write) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let alive = pids(&kept)
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let _ = out_tx.send(format!("alive {alive}\n"));
    let writer = tokio::spawn(async move {
        while let Some(line) = out_rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                let mut words = line.split_whitespace();
                let (Some("stop"), Some(Ok(pid))) = (words.next(), words.next().map(str::parse::<u32>)) else {
                    continue;
                };
                let grace: u64 = words.next().and_then(|g| g.parse().ok()).unwrap_or(0);
                let (kept, out) = (Arc::clone(&kept), out_tx.clone());
                tokio::spawn(async move {
                    // Stopped first, forgotten after: the keeper exits once it keeps nothing.
                    let session = kept.lock().ok().and_then(|k| k.get(&pid).cloned());
                    if let Some(b) = session.as_ref().and_then(|s| s.backend()) {
                        if grace == 0 { b.release_now().await } else { b.release().await }
                    }
                    take(&kept, pid);
                    let _ = out.send(format!("stopped {pid}\n"));
                });
            }
            exited = exits.recv() => match exited {
                Ok(pid) => { let _ = out_tx.send(format!("exited {pid}\n")); }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    drop(out_tx);
    let _ = writer.await;
}
