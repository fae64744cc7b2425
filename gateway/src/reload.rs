//! Config reload: on a change of the file (notify, on its directory: editors replace files by
//! renaming), on SIGHUP, and on the admin API's `POST /config/reload`.
//!
//! A reload takes a file only when it is whole and safe:
//! - **stable**: the file's size and modification time are the same over two looks 100 ms
//!   apart (an in-place writer slower than the 200 ms debounce is waited for, up to
//!   [`SETTLE_LIMIT`]); writing a new file and renaming it over the old one is the way to update
//!   it, and the only way that is atomic;
//! - **valid**: a file that does not validate — an empty or cut-short one declares no runtime
//!   and is refused — changes nothing;
//! - **no weaker authentication**: a file that would take authentication away from a runtime is
//!   refused (logged at error, `sessiongate_config_reloads_total{result="auth_downgrade"}`)
//!   unless the operator asks for it explicitly (`sessiongate reload --allow-auth-downgrade`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::state::{ReloadError, ReloadOptions, Shared};

/// Events within this window make one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait for a file that keeps changing; then it is read as it is (and validated).
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

pub struct ConfigReload {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for ConfigReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot watch SIGHUP; config reload by signal is off");
            return;
        };
        let (tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
        // Kept alive for as long as the loop runs.
        let _watcher = self
            .shared
            .config_path
            .as_deref()
            .and_then(|path| watch(path, tx));
        loop {
            let cause = tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup.recv() => "SIGHUP",
                Some(()) = changed.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while changed.try_recv().is_ok() {}
                    "file change"
                }
            };
            if let Some(path) = &self.shared.config_path {
                settle(path).await;
            }
            // Logged and counted by `reload`; the running config stays if it failed.
            let _ = reload(&self.shared, cause, ReloadOptions::default());
        }
    }
}

/// Reloads now, logs and counts the outcome.
pub fn reload(
    shared: &Shared,
    cause: &str,
    options: ReloadOptions,
) -> Result<Vec<String>, ReloadError> {
    let result = shared.reload(options);
    let label = match &result {
        Ok(notes) => {
            for n in notes {
                tracing::warn!("config reload: {n}");
            }
            tracing::info!(cause, "config reloaded");
            "ok"
        }
        Err(ReloadError::Invalid(errors)) => {
            for e in &errors.0 {
                tracing::error!(
                    cause,
                    "config reload refused, the running config stays: {e}"
                );
            }
            "error"
        }
        Err(e @ ReloadError::AuthDowngrade(_)) => {
            tracing::error!(
                cause,
                "config reload refused, the running config stays: {e}"
            );
            "auth_downgrade"
        }
    };
    metrics::counter!("sessiongate_config_reloads_total", "result" => label).increment(1);
    let refused = result.as_ref().err().map(ToString::to_string);
    if shared.config_path.is_some() {
        crate::dashboard::ConfigInfo::reloaded(
            &shared.config_info,
            shared.config_path.as_deref(),
            refused,
        );
    }
    result
}

/// Waits until `path` looks the same (size, modification time) twice in a row, 100 ms apart,
/// or [`SETTLE_LIMIT`] has passed.
async fn settle(path: &Path) {
    let look = || {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
    };
    let started = tokio::time::Instant::now();
    let mut last = look();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = look();
        if now == last || started.elapsed() >= SETTLE_LIMIT {
            return;
        }
        last = now;
    }
}

/// Watches `path`'s directory; sends on `tx` when `path` is written, created or renamed into
/// place. Reads (which the reload itself causes) are ignored.
fn watch(path: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    use notify::{RecursiveMode, Watcher};
    let name = path.file_name()?.to_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        ) && event
            .paths
            .iter()
            .any(|p| p.file_name() == Some(name.as_os_str()));
        if relevant {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::error!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
        return None;
    }
    Some(watcher)
}
