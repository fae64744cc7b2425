//! File model → [`Config`], collecting every error with its key path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::file::{FileBackend, FileConfig, FileEndpoint, FileRuntime};
use crate::model::*;
use crate::{ConfigError, ConfigErrors};

/// AgentCore's bounds for the lifecycle timeouts (we allow going below 60 s for tests).
const MAX_LIFECYCLE_SECS: u64 = 28_800;

/// Accumulates errors while the valid parts are still converted.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(path, format!("`{value}` is not an IP:port address"));
                None
            }
        }
    }

    fn range(&mut self, path: &str, value: u64, lo: u64, hi: u64) -> u64 {
        if !(lo..=hi).contains(&value) {
            self.push(path, format!("{value} is outside {lo}..={hi}"));
        }
        value
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigErrors;

    fn try_from(f: FileConfig) -> Result<Self, ConfigErrors> {
        let mut errs = Errors::default();

        let l = &f.listeners;
        let listeners = [
            ("listeners.http", &l.http),
            ("listeners.mcp", &l.mcp),
            ("listeners.a2a", &l.a2a),
            ("listeners.admin", &l.admin),
        ]
        .map(|(path, v)| errs.addr(path, v));
        let mut seen = HashSet::new();
        for (name, addr) in ["http", "mcp", "a2a", "admin"].iter().zip(&listeners) {
            if let Some(a) = addr
                && a.port() != 0
                && !seen.insert(*a)
            {
                errs.push(
                    format!("listeners.{name}"),
                    format!("{a} is already used by another listener"),
                );
            }
        }

        let s = &f.server;
        errs.range("server.threads", s.threads as u64, 1, 64);
        errs.range(
            "server.shutdown_timeout_secs",
            s.shutdown_timeout_secs,
            0,
            3_600,
        );

        let lim = &f.limits;
        errs.range(
            "limits.max_payload_bytes",
            lim.max_payload_bytes,
            1,
            1 << 40,
        );
        errs.range(
            "limits.max_active_sessions",
            lim.max_active_sessions as u64,
            1,
            10_000_000,
        );
        errs.range(
            "limits.max_sessions_per_principal",
            lim.max_sessions_per_principal as u64,
            1,
            10_000_000,
        );
        errs.range(
            "limits.max_inflight_per_session",
            lim.max_inflight_per_session.into(),
            1,
            100_000,
        );
        errs.range(
            "limits.new_sessions_per_second",
            lim.new_sessions_per_second.into(),
            1,
            1_000_000,
        );

        let ses = &f.sessions;
        errs.range(
            "sessions.idle_timeout_secs",
            ses.idle_timeout_secs,
            1,
            MAX_LIFECYCLE_SECS,
        );
        errs.range(
            "sessions.max_lifetime_secs",
            ses.max_lifetime_secs,
            1,
            MAX_LIFECYCLE_SECS,
        );
        if ses.idle_timeout_secs > ses.max_lifetime_secs {
            errs.push(
                "sessions.idle_timeout_secs",
                format!(
                    "{} is longer than sessions.max_lifetime_secs ({})",
                    ses.idle_timeout_secs, ses.max_lifetime_secs
                ),
            );
        }
        errs.range(
            "sessions.sweep_interval_ms",
            ses.sweep_interval_ms,
            10,
            60_000,
        );

        if f.runtimes.is_empty() {
            errs.push("runtimes", "at least one runtime is needed");
        }
        let mut names = HashSet::new();
        let runtimes: Vec<Option<Runtime>> = f
            .runtimes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let path = format!("runtimes[{i}]");
                if !names.insert(r.name.as_str()) {
                    errs.push(
                        format!("{path}.name"),
                        format!("`{}` is declared twice", r.name),
                    );
                }
                runtime(&mut errs, &path, r)
            })
            .collect();

        let default_runtime = match &f.default_runtime {
            None => 0,
            Some(name) => f
                .runtimes
                .iter()
                .position(|r| &r.name == name)
                .unwrap_or_else(|| {
                    errs.push("default_runtime", format!("no runtime is named `{name}`"));
                    0
                }),
        };

        if !errs.0.is_empty() {
            return Err(ConfigErrors(errs.0));
        }
        let [Some(http), Some(mcp), Some(a2a), Some(admin)] = listeners else {
            unreachable!("an unparsable listener address was reported as an error")
        };
        Ok(Config {
            listeners: Listeners {
                http,
                mcp,
                a2a,
                admin,
            },
            server: Server {
                threads: s.threads,
                shutdown_timeout: Duration::from_secs(s.shutdown_timeout_secs),
                upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
            },
            limits: Limits {
                max_payload_bytes: lim.max_payload_bytes,
                max_active_sessions: lim.max_active_sessions,
                max_sessions_per_principal: lim.max_sessions_per_principal,
                max_inflight_per_session: lim.max_inflight_per_session,
                new_sessions_per_second: lim.new_sessions_per_second,
            },
            sessions: Sessions {
                idle_timeout: Duration::from_secs(ses.idle_timeout_secs),
                max_lifetime: Duration::from_secs(ses.max_lifetime_secs),
                sweep_interval: Duration::from_millis(ses.sweep_interval_ms),
            },
            runtimes: runtimes.into_iter().flatten().collect(),
            default_runtime,
        })
    }
}

fn runtime(errs: &mut Errors, path: &str, r: &FileRuntime) -> Option<Runtime> {
    if !valid_runtime_name(&r.name) {
        errs.push(
            format!("{path}.name"),
            format!("`{}` must match [a-zA-Z][a-zA-Z0-9_]{{0,47}}", r.name),
        );
    }
    let protocol = match r.protocol.as_str() {
        "http" => Some(Protocol::Http),
        "mcp" => Some(Protocol::Mcp),
        "a2a" => Some(Protocol::A2a),
        other => {
            errs.push(
                format!("{path}.protocol"),
                format!("`{other}` is not one of http, mcp, a2a"),
            );
            None
        }
    };
    let backend = backend(errs, &format!("{path}.backend"), &r.backend);
    Some(Runtime {
        name: r.name.clone(),
        protocol: protocol?,
        backend: backend?,
    })
}

fn valid_runtime_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn backend(errs: &mut Errors, path: &str, b: &FileBackend) -> Option<BackendSpec> {
    // Keys of one provider set on another are mistakes worth reporting, not ignoring.
    let process_keys = [
        ("command", b.command.is_some()),
        ("args", b.args.is_some()),
        ("env", b.env.is_some()),
        ("ready_timeout_ms", b.ready_timeout_ms.is_some()),
        ("stop_timeout_ms", b.stop_timeout_ms.is_some()),
    ];
    let static_keys = [
        ("endpoints", b.endpoints.is_some()),
        ("sessions_per_endpoint", b.sessions_per_endpoint.is_some()),
    ];
    let mut foreign = |keys: &[(&str, bool)], provider: &str| {
        for (key, set) in keys {
            if *set {
                errs.push(
                    format!("{path}.{key}"),
                    format!("applies to another provider, not `{provider}`"),
                );
            }
        }
    };
    match b.provider.as_str() {
        "process" => {
            foreign(&static_keys, "process");
            let ready = b.ready_timeout_ms.unwrap_or(10_000);
            errs.range(&format!("{path}.ready_timeout_ms"), ready, 10, 600_000);
            let stop = b.stop_timeout_ms.unwrap_or(2_000);
            errs.range(&format!("{path}.stop_timeout_ms"), stop, 0, 600_000);
            if b.command.as_deref() == Some("") {
                errs.push(format!("{path}.command"), "must not be empty");
            }
            Some(BackendSpec::Process(ProcessSpec {
                command: b.command.as_ref().map(Into::into),
                args: b.args.clone().unwrap_or_else(default_agent_args),
                env: b.env.clone().unwrap_or_default(),
                ready_timeout: Duration::from_millis(ready),
                stop_timeout: Duration::from_millis(stop),
            }))
        }
        "static" => {
            foreign(&process_keys, "static");
            let per = b.sessions_per_endpoint.unwrap_or(1);
            errs.range(
                &format!("{path}.sessions_per_endpoint"),
                per.into(),
                1,
                1_000_000,
            );
            let Some(list) = &b.endpoints else {
                errs.push(
                    format!("{path}.endpoints"),
                    "a static pool needs at least one endpoint",
                );
                return None;
            };
            if list.is_empty() {
                errs.push(
                    format!("{path}.endpoints"),
                    "a static pool needs at least one endpoint",
                );
            }
            let mut seen = HashSet::new();
            let endpoints: Vec<Option<Endpoint>> = list
                .iter()
                .enumerate()
                .map(|(i, e)| endpoint(errs, &format!("{path}.endpoints[{i}]"), e, &mut seen))
                .collect();
            Some(BackendSpec::Static(StaticPool {
                endpoints: endpoints.into_iter().collect::<Option<_>>()?,
                sessions_per_endpoint: per,
            }))
        }
        other => {
            errs.push(
                format!("{path}.provider"),
                format!("`{other}` is not one of process, static"),
            );
            None
        }
    }
}

fn endpoint(
    errs: &mut Errors,
    path: &str,
    e: &FileEndpoint,
    seen: &mut HashSet<SocketAddr>,
) -> Option<Endpoint> {
    let mut one = |key: &str, v: &str| {
        let p = format!("{path}.{key}");
        let addr = errs.addr(&p, v)?;
        if !seen.insert(addr) {
            errs.push(p, format!("{addr} appears twice in the pool"));
        }
        Some(addr)
    };
    let http = one("http", &e.http);
    let mcp = e.mcp.as_deref().map(|v| one("mcp", v));
    let a2a = e.a2a.as_deref().map(|v| one("a2a", v));
    Some(Endpoint {
        http: http?,
        mcp: mcp.map_or(Some(None), |a| a.map(Some))?,
        a2a: a2a.map_or(Some(None), |a| a.map(Some))?,
    })
}
