//! File model → [`Config`], collecting every error with its key path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::file::{
    FileAdmin, FileAuth, FileAws, FileBackend, FileClaim, FileConfig, FileCredentials,
    FileEndpoint, FileRuntime,
};
use crate::model::*;
use crate::{ConfigError, ConfigErrors};

mod auth;
mod backend;
mod cluster;
mod runtime;

pub(crate) use auth::load_credentials;
use auth::*;
use backend::*;
use cluster::*;
pub(crate) use runtime::agentcore_port;
use runtime::*;

/// AgentCore's bounds for the lifecycle timeouts (we allow going below 60 s for tests).
const MAX_LIFECYCLE_SECS: u64 = 28_800;

/// Accumulates errors while the valid parts are still converted.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
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

    pub(crate) fn range(&mut self, path: &str, value: u64, lo: u64, hi: u64) -> u64 {
        if !(lo..=hi).contains(&value) {
            self.push(path, format!("{value} is outside {lo}..={hi}"));
        }
        value
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigErrors;

    /// Validates with relative paths taken from the working directory.
    fn try_from(f: FileConfig) -> Result<Self, ConfigErrors> {
        validate(f, Path::new("."))
    }
}

/// Validates `f`; relative paths in it (credentials files) are resolved against `base`, the
/// directory of the config file.
pub(crate) fn validate(f: FileConfig, base: &Path) -> Result<Config, ConfigErrors> {
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
        "limits.max_sessions_per_anonymous_address",
        lim.max_sessions_per_anonymous_address as u64,
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
    errs.range(
        "limits.request_timeout_secs",
        lim.request_timeout_secs,
        1,
        86_400,
    );
    errs.range(
        "limits.stream_timeout_secs",
        lim.stream_timeout_secs,
        1,
        86_400,
    );
    errs.range(
        "limits.websocket_max_frame_bytes",
        lim.websocket_max_frame_bytes,
        1,
        1 << 30,
    );
    errs.range(
        "limits.websocket_max_frames_per_second",
        lim.websocket_max_frames_per_second.into(),
        1,
        1_000_000,
    );
    errs.range(
        "limits.requests_per_second_per_principal",
        lim.requests_per_second_per_principal.into(),
        1,
        10_000_000,
    );
    errs.range(
        "limits.max_parked_requests",
        lim.max_parked_requests as u64,
        0,
        1_000_000,
    );
    errs.range(
        "limits.max_connections",
        lim.max_connections as u64,
        0,
        10_000_000,
    );
    errs.range(
        "limits.header_timeout_secs",
        lim.header_timeout_secs,
        1,
        600,
    );
    errs.range(
        "limits.keepalive_timeout_secs",
        lim.keepalive_timeout_secs,
        1,
        3_600,
    );
    errs.range("limits.body_timeout_secs", lim.body_timeout_secs, 1, 3_600);
    errs.range(
        "limits.min_body_bytes_per_sec",
        lim.min_body_bytes_per_sec,
        0,
        1 << 30,
    );
    let admin_protection = admin(&mut errs, &f.admin, base);
    let aws = aws(&mut errs, &f.aws);
    let cluster = cluster(&mut errs, &f.cluster, base);
    let host = host(&mut errs, &f.host);
    let identity = crate::identity::identity(&mut errs, &f.identity);
    let session_endpoints = crate::endpoints::session_endpoints(&mut errs, &f.session_endpoints);
    let resumable_streams = crate::streams::resumable_streams(&mut errs, &f.resumable_streams);

    let t = &f.telemetry;
    errs.range(
        "telemetry.export_interval_ms",
        t.export_interval_ms,
        10,
        600_000,
    );
    let otlp_traces_url = t.otlp_endpoint.as_ref().map(|e| {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            errs.push(
                "telemetry.otlp_endpoint",
                format!("`{e}` is not an http(s) URL"),
            );
        }
        if e.ends_with("/v1/traces") {
            e.clone()
        } else {
            format!("{}/v1/traces", e.trim_end_matches('/'))
        }
    });
    if t.service_name.is_empty() {
        errs.push("telemetry.service_name", "must not be empty");
    }

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
    errs.range(
        "sessions.health_check_interval_ms",
        ses.health_check_interval_ms,
        100,
        600_000,
    );
    errs.range(
        "sessions.health_check_failures",
        ses.health_check_failures.into(),
        1,
        100,
    );

    if f.runtimes.is_empty() {
        errs.push(
            "runtimes",
            "no runtime is declared: a config file needs at least one [[runtimes]] table (an \
             empty or cut-short file is refused; run without --config for the embedded default)",
        );
    }
    let mut names = HashSet::new();
    let storage_root = base.join(&f.sessions.storage_root);
    let snapshot_root = base.join(&f.sessions.snapshot_root);
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
            runtime(&mut errs, &path, r, base, (&storage_root, &snapshot_root))
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
    let mut runtimes: Vec<Runtime> = runtimes.into_iter().flatten().collect();
    for plan in runtimes.iter_mut().filter_map(|r| r.suspend.as_mut()) {
        plan.shared = f.sessions.snapshot_root_shared;
    }
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
            upgrade_socket: s.upgrade_socket.clone().into(),
        },
        limits: Limits {
            max_payload_bytes: lim.max_payload_bytes,
            max_active_sessions: lim.max_active_sessions,
            max_sessions_per_principal: lim.max_sessions_per_principal,
            max_sessions_per_anonymous_address: lim.max_sessions_per_anonymous_address,
            max_inflight_per_session: lim.max_inflight_per_session,
            new_sessions_per_second: lim.new_sessions_per_second,
            requests_per_second_per_principal: lim.requests_per_second_per_principal,
            request_timeout: Duration::from_secs(lim.request_timeout_secs),
            stream_timeout: Duration::from_secs(lim.stream_timeout_secs),
            websocket_max_frame_bytes: lim.websocket_max_frame_bytes,
            websocket_max_frames_per_second: lim.websocket_max_frames_per_second,
            max_connections: (lim.max_connections > 0).then_some(lim.max_connections),
            max_parked_requests: lim.max_parked_requests,
            header_timeout: Duration::from_secs(lim.header_timeout_secs),
            keepalive_timeout: Duration::from_secs(lim.keepalive_timeout_secs),
            body_timeout: Duration::from_secs(lim.body_timeout_secs),
            min_body_bytes_per_sec: lim.min_body_bytes_per_sec,
        },
        admin: admin_protection,
        aws,
        cluster,
        host,
        identity,
        session_endpoints,
        resumable_streams,
        telemetry: Telemetry {
            otlp_traces_url,
            service_name: t.service_name.clone(),
            export_interval: Duration::from_millis(t.export_interval_ms),
        },
        sessions: Sessions {
            idle_timeout: Duration::from_secs(ses.idle_timeout_secs),
            max_lifetime: Duration::from_secs(ses.max_lifetime_secs),
            sweep_interval: Duration::from_millis(ses.sweep_interval_ms),
            health_check_interval: Duration::from_millis(ses.health_check_interval_ms),
            health_check_failures: ses.health_check_failures,
        },
        runtimes,
        default_runtime,
    })
}

/// The admin token, read from its file (first line, trimmed; at least 16 characters).
fn admin(errs: &mut Errors, a: &FileAdmin, base: &Path) -> Admin {
    let Some(file) = &a.token_file else {
        return Admin::default();
    };
    let path = base.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                errs.push(
                    "admin.token_file",
                    format!(
                        "{}: the token (first line) must be at least 16 visible ASCII characters",
                        path.display()
                    ),
                );
            }
            Admin { token: Some(token) }
        }
        Err(e) => {
            errs.push(
                "admin.token_file",
                format!("cannot read {}: {e}", path.display()),
            );
            Admin::default()
        }
    }
}

fn aws(errs: &mut Errors, a: &FileAws) -> Aws {
    if let Some(region) = &a.region
        && !valid_region(region)
    {
        errs.push(
            "aws.region",
            format!("`{region}` is not an AWS region name"),
        );
    }
    if let Some(account) = &a.account_id
        && !(account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
    {
        errs.push("aws.account_id", format!("`{account}` is not 12 digits"));
    }
    Aws {
        region: a.region.clone(),
        account_id: a.account_id.clone(),
    }
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`: lower-case words and digits joined by `-`.
pub fn valid_region(region: &str) -> bool {
    (3..=32).contains(&region.len())
        && region.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && region.contains('-')
}
