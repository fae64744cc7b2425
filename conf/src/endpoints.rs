//! Session endpoints (AgentCore's `allowedPorts`, October 2026): extra ports of a session's
//! backend reachable from outside, by a path under the gateway's HTTP listener or, for
//! browsers, by a host name carrying a port-scoped token. Read, checked and modelled here.
//!
//! ```toml
//! [session_endpoints]
//! domain = "sessions.example.com"   # enables the host form {port}-{token}.{domain}
//! token_ttl_secs = 900
//!
//! [[runtimes]]
//! allowed_ports = [8081, "9100-9110"]
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::validate::Errors;
use crate::{BackendSpec, RuntimeVersion};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileSessionEndpoints {
    /// The DNS suffix of the host form: a request for `{port}-{token}.{domain}` reaches the
    /// session's port the token was issued for. Wildcard DNS for it must point at the gateway's
    /// HTTP listener. Default: none (path form only).
    pub domain: Option<String>,
    /// How long a browser token is valid, seconds (60–28 800). Default 900.
    pub token_ttl_secs: u64,
}

impl Default for FileSessionEndpoints {
    fn default() -> Self {
        Self {
            domain: None,
            token_ttl_secs: 900,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEndpoints {
    /// Lower case, without a leading or trailing dot.
    pub domain: Option<String>,
    pub token_ttl: Duration,
}

pub(crate) fn session_endpoints(errs: &mut Errors, f: &FileSessionEndpoints) -> SessionEndpoints {
    let ttl = errs.range(
        "session_endpoints.token_ttl_secs",
        f.token_ttl_secs,
        60,
        28_800,
    );
    let domain = f.domain.as_ref().and_then(|d| {
        let d = d.trim_matches('.').to_ascii_lowercase();
        let valid = !d.is_empty()
            && d.len() <= 200
            && d.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            errs.push(
                "session_endpoints.domain",
                format!("`{d}` is not a DNS name (labels of letters, digits and `-`)"),
            );
        }
        valid.then_some(d)
    });
    SessionEndpoints {
        domain,
        token_ttl: Duration::from_secs(ttl),
    }
}

/// One `allowed_ports` entry as written: a port, or an inclusive range `"from-to"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FilePort {
    One(u64),
    Range(String),
}

/// The ports a runtime's sessions expose: inclusive ranges, non-overlapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedPorts(Vec<(u16, u16)>);

impl AllowedPorts {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// AgentCore's rule: 1–5 non-overlapping entries, ports in 8000–12000 but not 8443; only for
/// backends whose ports are their own (a sandbox's or guest's network, a static backend's
/// address) — a `process` backend shares the host's network, where a port is no session's.
pub(crate) fn allowed_ports(
    errs: &mut Errors,
    path: &str,
    ports: &[FilePort],
    versions: Option<&[RuntimeVersion]>,
) -> AllowedPorts {
    let key = format!("{path}.allowed_ports");
    if ports.is_empty() {
        return AllowedPorts::default();
    }
    if ports.len() > 5 {
        errs.push(&key, format!("{} entries; at most 5", ports.len()));
    }
    let mut ranges = Vec::with_capacity(ports.len());
    for p in ports {
        let range = match p {
            FilePort::One(p) => Some((*p, *p)),
            FilePort::Range(s) => s
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        };
        let valid =
            |(lo, hi): (u64, u64)| lo <= hi && (lo..=hi).all(crate::validate::agentcore_port);
        match range {
            Some(r) if valid(r) => {
                let (lo, hi) = r;
                ranges.push((lo as u16, hi as u16));
            }
            _ => errs.push(
                &key,
                format!(
                    "{p:?}: each entry is a port or a range \"from-to\" in 8000–12000, 8443 excluded"
                ),
            ),
        }
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[1].0 <= w[0].1) {
        errs.push(&key, "entries overlap");
    }
    for v in versions.unwrap_or_default() {
        if matches!(v.backend, BackendSpec::Process(_)) {
            errs.push(
                &key,
                format!(
                    "version {} is a process backend: it shares the host's network, so no port \
                     there is its session's own (use sandbox or microvm)",
                    v.number
                ),
            );
        }
    }
    AllowedPorts(ranges)
}

#[cfg(test)]
mod tests {
    use crate::parse;

    fn runtime(extra: &str, provider: &str) -> String {
        format!(
            "[[runtimes]]\nname = \"r\"\n{extra}\n[runtimes.backend]\nprovider = \"{provider}\"\n"
        )
    }

    #[test]
    fn allowed_ports_follow_agentcore_rules() {
        let c = parse(&format!(
            "[session_endpoints]\ndomain = \"Sessions.Example.com.\"\n{}",
            runtime("allowed_ports = [8081, \"9100-9110\"]", "sandbox")
        ))
        .unwrap();
        let ports = &c.runtimes[0].allowed_ports;
        assert!(ports.contains(8081) && ports.contains(9100) && ports.contains(9110));
        assert!(!ports.contains(8080) && !ports.contains(9111));
        assert_eq!(
            c.session_endpoints.domain.as_deref(),
            Some("sessions.example.com")
        );
        for (extra, provider) in [
            ("allowed_ports = [8443]", "sandbox"),
            ("allowed_ports = [\"8400-8500\"]", "microvm"),
            ("allowed_ports = [7999]", "sandbox"),
            ("allowed_ports = [\"9000-8999\"]", "sandbox"),
            ("allowed_ports = [\"9000-9010\", 9005]", "sandbox"),
            (
                "allowed_ports = [8001, 8002, 8003, 8004, 8005, 8006]",
                "sandbox",
            ),
            ("allowed_ports = [8081]", "process"),
        ] {
            let errs = parse(&runtime(extra, provider)).unwrap_err().0;
            assert!(
                errs.iter().any(|e| e.path == "runtimes[0].allowed_ports"),
                "{extra} on {provider}: {errs:?}"
            );
        }
        let errs = parse(&format!(
            "[session_endpoints]\ndomain = \"bad domain\"\n{}",
            runtime("", "sandbox")
        ))
        .unwrap_err()
        .0;
        assert!(errs.iter().any(|e| e.path == "session_endpoints.domain"));
    }
}
