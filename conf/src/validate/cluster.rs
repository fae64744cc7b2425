//! `[cluster]`: where sessions live.

use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::file::FileCluster;
use crate::model::{BackendSpec, Cluster, Runtime};

/// The shared secret's least length: it keys HMACs, so at least as many bytes as their output.
const MIN_SECRET_LEN: usize = 32;

/// `None` for the in-memory directory (all-in-one), the Redis settings for a replica.
pub(super) fn cluster(errs: &mut Errors, c: &FileCluster, base: &Path) -> Option<Cluster> {
    match c.directory.as_str() {
        "memory" => {
            if c.redis_url.is_some() {
                errs.push(
                    "cluster.redis_url",
                    "set, but `cluster.directory` is `memory`: say `directory = \"redis\"`",
                );
            }
            return None;
        }
        "redis" => {}
        other => {
            errs.push(
                "cluster.directory",
                format!("`{other}` is neither `memory` nor `redis`"),
            );
            return None;
        }
    }
    let url = match &c.redis_url {
        Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => u.clone(),
        Some(_) => {
            errs.push(
                "cluster.redis_url",
                "must start with `redis://` or `rediss://` (TLS)",
            );
            String::new()
        }
        None => {
            errs.push(
                "cluster.redis_url",
                "required with `directory = \"redis\"`, e.g. `redis://127.0.0.1:6379/0`",
            );
            String::new()
        }
    };
    let p = &c.key_prefix;
    if p.is_empty()
        || p.len() > 64
        || !p
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        errs.push(
            "cluster.key_prefix",
            "1–64 characters of letters, digits, `_`, `-`, `.`, `:`",
        );
    }
    if let Some(n) = &c.node_id
        && (n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_graphic()))
    {
        errs.push("cluster.node_id", "1–128 visible ASCII characters");
    }
    errs.range("cluster.redis_timeout_ms", c.redis_timeout_ms, 10, 10_000);
    errs.range(
        "cluster.redis_outage_grace_secs",
        c.redis_outage_grace_secs,
        0,
        3_600,
    );
    Some(Cluster {
        redis_url: url,
        key_prefix: c.key_prefix.clone(),
        node_id: c.node_id.clone(),
        secret: secret(errs, c.secret_file.as_deref(), base),
        redis_timeout: Duration::from_millis(c.redis_timeout_ms),
        redis_outage_grace: Duration::from_secs(c.redis_outage_grace_secs),
    })
}

fn secret(errs: &mut Errors, file: Option<&str>, base: &Path) -> Vec<u8> {
    let Some(file) = file else {
        errs.push(
            "cluster.secret_file",
            "required with `directory = \"redis\"`: every replica must share one secret",
        );
        return Vec::new();
    };
    let path = base.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.lines().next().unwrap_or_default().trim();
            if secret.len() < MIN_SECRET_LEN {
                errs.push(
                    "cluster.secret_file",
                    format!(
                        "{}: the secret (first line) must be at least {MIN_SECRET_LEN} characters",
                        path.display()
                    ),
                );
            }
            secret.as_bytes().to_vec()
        }
        Err(e) => {
            errs.push(
                "cluster.secret_file",
                format!("cannot read {}: {e}", path.display()),
            );
            Vec::new()
        }
    }
}

/// A replica reaches its sessions' backends from any machine: static pools only, until backend
/// hosts (`sessiongate host`) own the spawned ones.
pub(super) fn cluster_backends(errs: &mut Errors, runtimes: &[Option<Runtime>]) {
    for (i, r) in runtimes.iter().enumerate() {
        let Some(r) = r else { continue };
        for (j, v) in r.versions.iter().enumerate() {
            if !matches!(v.backend, BackendSpec::Static(_)) {
                errs.push(
                    format!("runtimes[{i}].versions[{j}].backend"),
                    format!(
                        "runtime `{}` spawns its backends ({}): a replica with a Redis directory \
                         serves static pools only, since a backend spawned by one replica would \
                         die with it",
                        r.name,
                        v.backend.provider_name()
                    ),
                );
            }
        }
    }
}
