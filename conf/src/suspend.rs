//! Hibernation: `runtimes[].on_idle = "suspend"` keeps an idle session instead of ending it —
//! a microVM's memory and files in a snapshot, other providers' files — until its next request
//! resumes it, or its retention passes. Read, checked and modelled here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::file::FileRuntime;
use crate::validate::Errors;
use crate::{BackendSpec, RuntimeVersion};

/// How a runtime's idle sessions are suspended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspend {
    /// Where this runtime's snapshots go: `{sessions.snapshot_root}/{runtime}`.
    pub root: PathBuf,
    /// How long a suspended session waits for its next request before it ends for good.
    pub retention: Duration,
    /// Disk all of this runtime's snapshots may take; a session that would exceed it ends
    /// instead of suspending.
    pub budget_bytes: u64,
    /// The snapshot root is shared by the cluster's hosts (`sessions.snapshot_root_shared`).
    pub shared: bool,
}

pub(crate) fn suspend(
    errs: &mut Errors,
    path: &str,
    r: &FileRuntime,
    versions: Option<&[RuntimeVersion]>,
    snapshot_root: &Path,
) -> Option<Suspend> {
    let retention = errs.range(
        &format!("{path}.suspend_retention_secs"),
        r.suspend_retention_secs,
        1,
        30 * 86_400,
    );
    let budget_mb = errs.range(
        &format!("{path}.snapshot_budget_mb"),
        r.snapshot_budget_mb,
        1,
        1 << 30,
    );
    match r.on_idle.as_str() {
        "end" => return None,
        "suspend" => {}
        other => {
            errs.push(
                format!("{path}.on_idle"),
                format!("`{other}` is not one of end, suspend"),
            );
            return None;
        }
    }
    for v in versions.unwrap_or_default() {
        if matches!(v.backend, BackendSpec::Static(_)) {
            errs.push(
                format!("{path}.on_idle"),
                format!(
                    "version {} is a static pool: its backends are not the gateway's to suspend",
                    v.number
                ),
            );
        }
    }
    Some(Suspend {
        root: snapshot_root.join(&r.name),
        retention: Duration::from_secs(retention),
        budget_bytes: budget_mb << 20,
        shared: false,
    })
}

#[cfg(test)]
mod tests {
    use crate::parse;

    #[test]
    fn on_idle_suspend_is_for_backends_the_gateway_runs() {
        let c = parse(
            "[sessions]\nsnapshot_root = \"/srv/snap\"\n[[runtimes]]\nname = \"vm\"\n\
             on_idle = \"suspend\"\nsuspend_retention_secs = 600\n\
             [runtimes.backend]\nprovider = \"microvm\"\nkernel = \"/k\"\ninitrd = \"/i\"\n",
        )
        .unwrap();
        let s = c.runtimes[0].suspend.as_ref().unwrap();
        assert_eq!(s.root, std::path::Path::new("/srv/snap/vm"));
        assert_eq!(s.retention.as_secs(), 600);
        assert!(
            parse("[[runtimes]]\n").unwrap().runtimes[0]
                .suspend
                .is_none()
        );
        for (extra, provider) in [
            ("on_idle = \"pause\"", "sandbox"),
            (
                "on_idle = \"suspend\"",
                "static\"\nendpoints = [{ http = \"127.0.0.1:1\" }]\n#\"",
            ),
            (
                "on_idle = \"suspend\"\nsuspend_retention_secs = 0",
                "sandbox",
            ),
        ] {
            let text = format!(
                "[[runtimes]]\nname = \"r\"\n{extra}\n[runtimes.backend]\nprovider = \"{provider}\"\n"
            );
            let errs = parse(&text).unwrap_err().0;
            assert!(
                errs.iter().any(|e| e.path.starts_with("runtimes[0].")),
                "{extra}: {errs:?}"
            );
        }
    }
}
