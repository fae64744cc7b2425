//! A host's side of hibernation (`routing::cluster::hibernate`): it saves one of its backends
//! into a snapshot directory when the sweeping replica asks (`POST /_sessiongate/suspend`),
//! restores one when a resumed session is placed here, and reclaims the snapshot directories no
//! session record holds any more.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use conf::Suspend;
use routing::directory::hibernate::{create_dir, remove_dir};
use routing::provider::{Backend, BackendProvider};
use serde_json::{Value, json};

use super::HostState;

/// A snapshot directory younger than this is never reclaimed. Its record names it before the
/// directory is made (the sweeper marks the session, then asks the host), and forgets it only
/// after a resume removed it, so no directory in use lacks a record; the grace only keeps the
/// reclaim away from a save still being written for a session stopped meanwhile.
const RECLAIM_GRACE: Duration = Duration::from_secs(5);

fn plan<'a>(state: &'a HostState, runtime: &str) -> Option<&'a Suspend> {
    state.snapshot.config.suspend_plan(runtime)
}

/// A snapshot directory's name as the sweeper makes it (`{hash}-{ms}`): nothing that could
/// leave the runtime's root.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn snapshot_dir(state: &HostState, runtime: &str, name: &str) -> Result<PathBuf, String> {
    let plan = plan(state, runtime)
        .ok_or_else(|| format!("runtime `{runtime}` does not suspend on this host"))?;
    if !valid_name(name) {
        return Err(format!("`{name}` is not a snapshot directory name"));
    }
    Ok(plan.root.join(name))
}

/// `POST /_sessiongate/suspend {backend, session, runtime, dir}`: saves the backend into `dir`
/// under the runtime's snapshot root and lets it go. The backend leaves this host's map before
/// the save, so that neither its exit nor its session's announcement ends the session meanwhile.
pub(super) async fn suspend(state: &HostState, req: &Value) -> (u16, Value) {
    let message = |m: String| json!({ "message": m });
    let (Some(backend), Some(session), Some(runtime), Some(name)) = (
        req["backend"].as_str(),
        req["session"].as_str(),
        req["runtime"].as_str(),
        req["dir"].as_str(),
    ) else {
        return (
            400,
            message("backend, session, runtime and dir are required".into()),
        );
    };
    let dir = match snapshot_dir(state, runtime, name) {
        Ok(d) => d,
        Err(m) => return (400, message(m)),
    };
    let Some((_, placed)) = state
        .backends
        .remove_if(backend, |_, p| p.session == session)
    else {
        return (
            404,
            message(format!("no backend {backend} of session {session} here")),
        );
    };
    let started = std::time::Instant::now();
    let saved = match create_dir(&dir) {
        Ok(()) => placed.backend.suspend(&dir.join("memory.state")).await,
        Err(e) => Err(format!("{}: {e}", dir.display())),
    };
    placed.backend.release().await;
    match saved {
        Ok(bytes) => {
            tracing::info!(
                session,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "backend suspended"
            );
            let shared = plan(state, runtime).is_some_and(|p| p.shared);
            (
                200,
                json!({
                    "bytes": bytes.unwrap_or(0),
                    "memory": bytes.is_some(),
                    "host": (!shared).then_some(&state.info.id),
                }),
            )
        }
        Err(e) => {
            remove_dir(&dir);
            tracing::warn!(session, error = %e, "cannot suspend a backend");
            (500, message(e))
        }
    }
}

/// The backend of a resumed session placed here: restored from its snapshot (or placed afresh
/// when only its files were kept). The snapshot stays until the session's record says it is
/// live again (then the reclaim removes it): a placement that fails after this — its replica
/// died, or lost the placement — leaves it for the next placer.
pub(super) async fn resume(
    state: &HostState,
    provider: &BackendProvider,
    runtime: &str,
    resume: &Value,
) -> Result<Backend, String> {
    let name = resume["dir"].as_str().unwrap_or_default();
    let dir = snapshot_dir(state, runtime, name)?;
    if !dir.is_dir() {
        return Err(format!("snapshot {} is not on this host", dir.display()));
    }
    let memory = resume["memory"].as_bool().unwrap_or(false);
    let state_file = dir.join("memory.state");
    let backend = provider
        .resume(memory.then_some(state_file.as_path()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(backend)
}

/// Removes the snapshot directories under every suspending runtime's root that no session
/// record holds (ended, expired, or a save cut short), once they are a few seconds old.
pub(super) async fn reclaim(state: &HostState) {
    let mut candidates: Vec<(String, PathBuf)> = Vec::new();
    let config = &state.snapshot.config;
    for plan in config.runtimes.iter().filter_map(|r| r.suspend.as_ref()) {
        let Ok(entries) = std::fs::read_dir(&plan.root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= RECLAIM_GRACE);
            if valid_name(&name) && old {
                candidates.push((name, e.path()));
            }
        }
    }
    for chunk in candidates.chunks(256) {
        let names: Vec<String> = chunk.iter().map(|(n, _)| n.clone()).collect();
        let Ok(held) = state.redis.snapshots_held(&names).await else {
            return; // Redis unreachable or recovering: decide nothing now.
        };
        for ((name, path), held) in chunk.iter().zip(held) {
            if !held {
                tracing::info!(snapshot = name, "snapshot of an ended session reclaimed");
                remove_dir(path);
            }
        }
    }
}
