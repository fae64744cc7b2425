//! `[cluster]`: where sessions live.

use std::path::Path;
use std::time::Duration;

use super::Errors;
use crate::file::{FileCluster, FileHost};
use crate::model::{Cluster, Host};

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

/// `[host]`: checked always (it has defaults), used by `sessiongate host`.
pub(super) fn host(errs: &mut Errors, h: &FileHost) -> Host {
    let listen = errs.addr("host.listen", &h.listen);
    let advertise = match &h.advertise {
        Some(a) => errs.addr("host.advertise", a),
        None => listen,
    };
    // A wildcard `advertise` is refused when a host starts (`--advertise` may still give one):
    // replicas and hosts share one file.
    if let Some(id) = &h.id
        && (id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()))
    {
        errs.push("host.id", "1–128 visible ASCII characters");
    }
    errs.range("host.capacity", h.capacity.into(), 1, 100_000);
    let fallback = std::net::SocketAddr::from(([127, 0, 0, 1], 7070));
    Host {
        listen: listen.unwrap_or(fallback),
        advertise: advertise.unwrap_or(fallback),
        id: h.id.clone(),
        capacity: h.capacity,
    }
}
