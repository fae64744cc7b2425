//! `[[runtimes]]`: names, versions and endpoints, header allow-lists.

use super::*;

pub(super) fn runtime(
    errs: &mut Errors,
    path: &str,
    r: &FileRuntime,
    base: &Path,
    (storage_root, snapshot_root): (&Path, &Path),
) -> Option<Runtime> {
    if !valid_runtime_name(&r.name) {
        errs.push(
            format!("{path}.name"),
            format!("`{}` must match [a-zA-Z][a-zA-Z0-9_]{{0,47}}", r.name),
        );
    }
    let protocol = match r.protocol.as_str() {
        "http" | "agui" => Some(Protocol::Http),
        "mcp" => Some(Protocol::Mcp),
        "a2a" => Some(Protocol::A2a),
        other => {
            errs.push(
                format!("{path}.protocol"),
                format!("`{other}` is not one of http, mcp, a2a, agui"),
            );
            None
        }
    };
    let (mut versions, endpoints) = versions_and_endpoints(errs, path, r, base);
    if let (Some(port), Some(protocol), Some(versions)) =
        (r.protocol_port, protocol, versions.as_mut())
    {
        protocol_port(errs, path, port, protocol, versions);
    }
    if r.resumable_streams && !matches!(r.protocol.as_str(), "http" | "agui") {
        errs.push(
            format!("{path}.resumable_streams"),
            "applies to http and agui runtimes (MCP resumes its streams by its own Last-Event-ID)",
        );
    }
    let suspend = crate::suspend::suspend(errs, path, r, versions.as_deref(), snapshot_root);
    let egress = crate::egress::egress(errs, path, &r.name, r.egress.as_ref(), versions.as_deref());
    if let (Some(policy), Some(versions)) = (&egress, versions.as_mut()) {
        // Each backend enforces its runtime's policy; it is part of the spec, so a reload that
        // changes it starts new backends (and warm pools) under the new one.
        let policy = std::sync::Arc::new(policy.clone());
        for v in versions.iter_mut() {
            match &mut v.backend {
                BackendSpec::Sandbox(s) => s.policy = Some(policy.clone()),
                BackendSpec::Microvm(m) => m.policy = Some(policy.clone()),
                _ => {}
            }
        }
    }
    let allowed_ports =
        crate::endpoints::allowed_ports(errs, path, &r.allowed_ports, versions.as_deref());
    let protocol_path = r
        .protocol_path
        .as_ref()
        .filter(|p| protocol_path(errs, path, p))
        .cloned();
    if let Some(storage) = filesystems(errs, path, r)
        && let Some(versions) = versions.as_mut()
    {
        for v in versions.iter_mut() {
            let number = v.number;
            let Some(slot) = v.backend.storage_mut() else {
                errs.push(
                    format!("{path}.filesystems"),
                    format!(
                        "session storage needs backends the gateway starts; version {number} is a static pool"
                    ),
                );
                continue;
            };
            *slot = Some(SessionStorage {
                root: storage_root.to_owned(),
                runtime: r.name.clone(),
                version: number,
                ..storage.clone()
            });
        }
    }
    let auth = auth(errs, &format!("{path}.auth"), &r.auth, base);
    let allowlist = allowlist(
        errs,
        &format!("{path}.request_header_allowlist"),
        &r.request_header_allowlist,
    );
    if allowlist.iter().any(|h| h == "authorization") && !matches!(auth, Some(InboundAuth::Jwt(_)))
    {
        errs.push(
            format!("{path}.request_header_allowlist"),
            "`Authorization` may be passed on only by a runtime with auth mode `jwt`",
        );
    }
    let mut lifetime = |key: &str, v: Option<u64>| {
        v.map(|v| {
            Duration::from_secs(errs.range(&format!("{path}.{key}"), v, 1, MAX_LIFECYCLE_SECS))
        })
    };
    let idle_timeout = lifetime("idle_timeout_secs", r.idle_timeout_secs);
    let max_lifetime = lifetime("max_lifetime_secs", r.max_lifetime_secs);
    Some(Runtime {
        name: r.name.clone(),
        protocol: protocol?,
        ag_ui: r.protocol == "agui",
        user_id_principals: r.user_id_principals.clone(),
        allowed_ports,
        resumable_streams: r.resumable_streams,
        suspend,
        egress,
        park: Duration::from_millis(errs.range(&format!("{path}.park_ms"), r.park_ms, 0, 60_000)),
        path: protocol_path,
        idle_timeout,
        max_lifetime,
        request_header_allowlist: allowlist,
        auth: auth?,
        versions: versions?,
        endpoints,
    })
}

/// AgentCore's rule for a port a runtime's agent serves on (`ServerPort`, `Port`): 8000–12000,
/// 8443 reserved. One place for `protocol_port` and `allowed_ports`.
pub(crate) fn agentcore_port(port: u64) -> bool {
    (8000..=12000).contains(&port) && port != 8443
}

/// `protocol_port`: AgentCore's rule (8000–12000, not 8443), for backends that listen inside an
/// isolation of their own.
fn protocol_port(
    errs: &mut Errors,
    path: &str,
    port: u16,
    protocol: Protocol,
    versions: &mut [RuntimeVersion],
) {
    if !agentcore_port(port.into()) {
        errs.push(
            format!("{path}.protocol_port"),
            format!("{port} is not in 8000–12000 (8443 excluded)"),
        );
        return;
    }
    for v in versions {
        let number = v.number;
        match v.backend.ports_mut() {
            Some(ports) => ports.set(protocol, port),
            None => errs.push(
                format!("{path}.protocol_port"),
                format!(
                    "applies to sandbox and microvm backends; version {number}'s backend is told its \
                     ports ({{http}}, {{mcp}}, {{a2a}}) or lists them (static)"
                ),
            ),
        }
    }
}

/// `protocol_path`: AgentCore's `ServerPath` (`/[A-Za-z0-9\-._~/%]*`, 1–2 048 characters).
fn protocol_path(errs: &mut Errors, path: &str, p: &str) -> bool {
    let valid = p.starts_with('/')
        && p.len() <= 2048
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/%".contains(&b));
    if !valid {
        errs.push(
            format!("{path}.protocol_path"),
            format!("`{p}` must be `/` then letters, digits, `-._~/%` (at most 2 048 characters)"),
        );
    }
    valid
}

/// `[[runtimes.filesystems]]`: at most one `session_storage` (where it lives is filled in per
/// version by the caller).
fn filesystems(errs: &mut Errors, path: &str, r: &FileRuntime) -> Option<SessionStorage> {
    let mut found = None;
    for (i, f) in r.filesystems.iter().enumerate() {
        let at = format!("{path}.filesystems[{i}]");
        if f.kind != "session_storage" {
            errs.push(
                format!("{at}.kind"),
                format!("`{}` is not `session_storage`", f.kind),
            );
            continue;
        }
        if found.is_some() {
            errs.push(at.clone(), "a runtime has at most one session storage");
            continue;
        }
        let name = f
            .mount_path
            .strip_prefix("/mnt/")
            .map(|n| n.trim_end_matches('/'));
        let valid = (6..=200).contains(&f.mount_path.len())
            && name.is_some_and(|n| {
                !n.is_empty()
                    && n != "."
                    && n != ".."
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !valid {
            errs.push(
                format!("{at}.mount_path"),
                format!(
                    "`{}` must be /mnt/<name> (one level, [a-zA-Z0-9._-], 6 to 200 characters)",
                    f.mount_path
                ),
            );
        }
        let quota_mb = errs.range(
            &format!("{at}.quota_mb"),
            f.quota_mb.unwrap_or(1_024),
            1,
            1 << 20,
        );
        let days = errs.range(
            &format!("{at}.expiry_days"),
            f.expiry_days.unwrap_or(14),
            1,
            365,
        );
        found = Some(SessionStorage {
            root: PathBuf::new(),
            runtime: String::new(),
            version: 0,
            mount_path: PathBuf::from(f.mount_path.trim_end_matches('/')),
            quota_bytes: quota_mb << 20,
            expiry: Duration::from_secs(days * 86_400),
        });
    }
    found
}

pub(super) fn versions_and_endpoints(
    errs: &mut Errors,
    path: &str,
    r: &FileRuntime,
    base: &Path,
) -> (Option<Vec<RuntimeVersion>>, Vec<RuntimeEndpoint>) {
    let mut versions: Vec<Option<RuntimeVersion>> = Vec::new();
    if r.versions.is_empty() {
        let b = r.backend.clone().unwrap_or_default();
        versions.push(
            backend(errs, &format!("{path}.backend"), &b, base)
                .map(|backend| RuntimeVersion { number: 1, backend }),
        );
    } else {
        if r.backend.is_some() {
            errs.push(
                format!("{path}.backend"),
                "give each of `versions` its backend instead",
            );
        }
        let mut seen = HashSet::new();
        for (i, v) in r.versions.iter().enumerate() {
            let p = format!("{path}.versions[{i}]");
            if !(1..=99_999).contains(&v.version) {
                errs.push(
                    format!("{p}.version"),
                    format!("{} is outside 1..=99999", v.version),
                );
            } else if !seen.insert(v.version) {
                errs.push(
                    format!("{p}.version"),
                    format!("version {} is declared twice", v.version),
                );
            }
            versions.push(
                backend(errs, &format!("{p}.backend"), &v.backend, base).map(|backend| {
                    RuntimeVersion {
                        number: v.version,
                        backend,
                    }
                }),
            );
        }
    }
    let Some(mut versions) = versions.into_iter().collect::<Option<Vec<_>>>() else {
        return (None, Vec::new());
    };
    versions.sort_by_key(|v| v.number);
    let index = |n: u32| versions.iter().position(|v| v.number == n);
    let mut endpoints = vec![RuntimeEndpoint {
        name: DEFAULT_ENDPOINT.into(),
        targets: vec![(versions.len() - 1, 1)],
    }];
    for (i, e) in r.endpoints.iter().enumerate() {
        let p = format!("{path}.endpoints[{i}]");
        if e.name == DEFAULT_ENDPOINT {
            errs.push(
                format!("{p}.name"),
                "DEFAULT is reserved: it always reaches the highest version",
            );
            continue;
        }
        if !valid_runtime_name(&e.name) {
            errs.push(
                format!("{p}.name"),
                format!("`{}` must match [a-zA-Z][a-zA-Z0-9_]{{0,47}}", e.name),
            );
        }
        if endpoints.iter().any(|x| x.name == e.name) {
            errs.push(
                format!("{p}.name"),
                format!("`{}` is declared twice", e.name),
            );
        }
        let targets = match (&e.version, &e.split) {
            (Some(v), None) => vec![(*v, 1)],
            (None, Some(split)) if !split.is_empty() => {
                split.iter().map(|s| (s.version, s.weight)).collect()
            }
            _ => {
                errs.push(p, "needs exactly one of version, split (non-empty)");
                continue;
            }
        };
        let mut resolved = Vec::new();
        for (v, w) in targets {
            match index(v) {
                Some(ix) if w > 0 => resolved.push((ix, w)),
                Some(_) => errs.push(p.clone(), format!("version {v} has weight 0")),
                None => errs.push(p.clone(), format!("version {v} is not declared")),
            }
        }
        endpoints.push(RuntimeEndpoint {
            name: e.name.clone(),
            targets: resolved,
        });
    }
    (Some(versions), endpoints)
}

/// Header names a runtime passes on: AgentCore's rules for `requestHeaderAllowlist`.
pub(super) fn allowlist(errs: &mut Errors, path: &str, names: &[String]) -> Vec<String> {
    if names.len() > MAX_ALLOWLISTED_HEADERS {
        errs.push(
            path,
            format!(
                "at most {MAX_ALLOWLISTED_HEADERS} headers, got {}",
                names.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let lower = name.to_ascii_lowercase();
        let well_formed = name.len() <= 256
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !well_formed {
            errs.push(
                p,
                format!("`{name}` is not a header name ([A-Za-z][A-Za-z0-9_-]{{0,255}})"),
            );
        } else if lower.starts_with("x-amz-")
            || (lower.starts_with("x-amzn-")
                && !lower.starts_with("x-amzn-bedrock-agentcore-runtime-custom-"))
        {
            errs.push(
                p,
                format!("`{name}`: x-amz-* and x-amzn-* headers are reserved"),
            );
        } else if RESTRICTED_HEADERS.contains(&lower.as_str()) {
            errs.push(
                p,
                format!("`{name}` is managed by the gateway and cannot be allow-listed"),
            );
        } else if !seen.insert(lower.clone()) {
            errs.push(p, format!("`{name}` is listed twice"));
        } else {
            out.push(lower);
        }
    }
    out
}

/// Headers the transport owns: passing a client's value through would break framing or let a
/// caller speak for the gateway.
pub(super) const RESTRICTED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "www-authenticate",
    "cookie",
    "set-cookie",
];

pub(super) fn valid_runtime_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use crate::*;

    #[test]
    fn session_storage_is_checked_and_reaches_each_version() {
        let c = parse(
            r#"
    [sessions]
    storage_root = "/srv/sg"
    [[runtimes]]
    name = "a"
    [[runtimes.filesystems]]
    kind = "session_storage"
    mount_path = "/mnt/data/"
    quota_mb = 10
    "#,
        )
        .unwrap();
        let BackendSpec::Process(p) = &c.runtimes[0].versions[0].backend else {
            panic!("process");
        };
        let s = p.storage.as_ref().unwrap();
        assert_eq!(
            (s.root.as_path(), s.runtime.as_str(), s.version),
            (std::path::Path::new("/srv/sg"), "a", 1)
        );
        assert_eq!(s.mount_path, std::path::Path::new("/mnt/data"));
        assert_eq!(s.quota_bytes, 10 << 20);
        assert_eq!(s.expiry, std::time::Duration::from_secs(14 * 86_400));
        // Every kind of spawned backend gets the same root (a microVM's too).
        let c = parse(
            r#"
    [sessions]
    storage_root = "/srv/sg"
    [[runtimes]]
    name = "vm"
    [runtimes.backend]
    provider = "microvm"
    kernel = "/k"
    initrd = "/i"
    [[runtimes.filesystems]]
    kind = "session_storage"
    mount_path = "/mnt/data"
    "#,
        )
        .unwrap();
        let s = c.runtimes[0].versions[0].backend.storage().unwrap();
        assert_eq!(s.root, std::path::Path::new("/srv/sg"));
        let errs = parse(
            r#"
    [[runtimes]]
    name = "a"
    [[runtimes.filesystems]]
    kind = "efs"
    mount_path = "/mnt/x"
    [[runtimes.filesystems]]
    kind = "session_storage"
    mount_path = "/data"
    expiry_days = 0
    [[runtimes]]
    name = "b"
    [runtimes.backend]
    provider = "static"
    endpoints = [{ http = "127.0.0.1:9" }]
    [[runtimes.filesystems]]
    kind = "session_storage"
    mount_path = "/mnt/a/b"
    "#,
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "runtimes[0].filesystems[0].kind",
            "runtimes[0].filesystems[1].mount_path",
            "runtimes[0].filesystems[1].expiry_days",
            "runtimes[1].filesystems[0].mount_path",
            "session storage needs backends the gateway starts",
        ] {
            assert!(errs.contains(needle), "{needle} missing from {errs}");
        }
    }
}
