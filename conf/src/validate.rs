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

/// AgentCore's bounds for the lifecycle timeouts (we allow going below 60 s for tests).
const MAX_LIFECYCLE_SECS: u64 = 28_800;

/// Accumulates errors while the valid parts are still converted.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<ConfigError>);

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
            runtime(&mut errs, &path, r, base)
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
    let runtimes: Vec<Runtime> = runtimes.into_iter().flatten().collect();
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
            header_timeout: Duration::from_secs(lim.header_timeout_secs),
            keepalive_timeout: Duration::from_secs(lim.keepalive_timeout_secs),
            body_timeout: Duration::from_secs(lim.body_timeout_secs),
            min_body_bytes_per_sec: lim.min_body_bytes_per_sec,
        },
        admin: admin_protection,
        aws,
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

fn runtime(errs: &mut Errors, path: &str, r: &FileRuntime, base: &Path) -> Option<Runtime> {
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
    let (versions, endpoints) = versions_and_endpoints(errs, path, r, base);
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
        idle_timeout,
        max_lifetime,
        request_header_allowlist: allowlist,
        auth: auth?,
        versions: versions?,
        endpoints,
    })
}

fn versions_and_endpoints(
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
fn allowlist(errs: &mut Errors, path: &str, names: &[String]) -> Vec<String> {
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
const RESTRICTED_HEADERS: &[&str] = &[
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

fn auth(errs: &mut Errors, path: &str, a: &FileAuth, base: &Path) -> Option<InboundAuth> {
    let jwt_keys = [
        ("discovery_url", a.discovery_url.is_some()),
        ("allowed_clients", a.allowed_clients.is_some()),
        ("allowed_audiences", a.allowed_audiences.is_some()),
        ("allowed_scopes", a.allowed_scopes.is_some()),
        ("required_claims", a.required_claims.is_some()),
        ("leeway_secs", a.leeway_secs.is_some()),
        ("jwks_refresh_secs", a.jwks_refresh_secs.is_some()),
        ("jwks_min_refetch_secs", a.jwks_min_refetch_secs.is_some()),
    ];
    let sigv4_keys = [
        ("regions", a.regions.is_some()),
        ("credentials_file", a.credentials_file.is_some()),
        ("max_clock_skew_secs", a.max_clock_skew_secs.is_some()),
        ("body_memory_bytes", a.body_memory_bytes.is_some()),
    ];
    let mut foreign = |keys: &[(&str, bool)], mode: &str| {
        for (key, set) in keys {
            if *set {
                errs.push(
                    format!("{path}.{key}"),
                    format!("does not apply to auth mode `{mode}`"),
                );
            }
        }
    };
    match a.mode.as_str() {
        "none" => {
            foreign(&jwt_keys, "none");
            foreign(&sigv4_keys, "none");
            Some(InboundAuth::None)
        }
        "jwt" => {
            foreign(&sigv4_keys, "jwt");
            jwt(errs, path, a).map(InboundAuth::Jwt)
        }
        "sigv4" => {
            foreign(&jwt_keys, "sigv4");
            sigv4(errs, path, a, base).map(InboundAuth::SigV4)
        }
        other => {
            errs.push(
                format!("{path}.mode"),
                format!("`{other}` is not one of none, jwt, sigv4"),
            );
            None
        }
    }
}

fn jwt(errs: &mut Errors, path: &str, a: &FileAuth) -> Option<JwtAuth> {
    let url = match &a.discovery_url {
        None => {
            errs.push(
                format!("{path}.discovery_url"),
                "auth mode `jwt` needs a discovery_url",
            );
            None
        }
        Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
            errs.push(
                format!("{path}.discovery_url"),
                format!("`{u}` is not an http(s) URL"),
            );
            None
        }
        Some(u) if !u.ends_with("/.well-known/openid-configuration") => {
            errs.push(
                format!("{path}.discovery_url"),
                format!("`{u}` must end with /.well-known/openid-configuration"),
            );
            None
        }
        Some(u) => Some(u.clone()),
    };
    let leeway = a.leeway_secs.unwrap_or(60);
    errs.range(&format!("{path}.leeway_secs"), leeway, 0, 600);
    let refresh = a.jwks_refresh_secs.unwrap_or(300);
    errs.range(&format!("{path}.jwks_refresh_secs"), refresh, 1, 86_400);
    let refetch = a.jwks_min_refetch_secs.unwrap_or(10);
    errs.range(&format!("{path}.jwks_min_refetch_secs"), refetch, 0, 3_600);
    let rules = a
        .required_claims
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, c)| claim_rule(errs, &format!("{path}.required_claims[{i}]"), c))
        .collect();
    Some(JwtAuth {
        discovery_url: url?,
        allowed_clients: a.allowed_clients.clone().unwrap_or_default(),
        allowed_audiences: a.allowed_audiences.clone().unwrap_or_default(),
        allowed_scopes: a.allowed_scopes.clone().unwrap_or_default(),
        required_claims: rules,
        leeway: Duration::from_secs(leeway),
        refresh_interval: Duration::from_secs(refresh),
        min_refetch_interval: Duration::from_secs(refetch),
    })
}

fn claim_rule(errs: &mut Errors, path: &str, c: &FileClaim) -> Option<ClaimRule> {
    let matches = match (&c.equals, &c.contains, &c.contains_any) {
        (Some(v), None, None) => ClaimMatch::Equals(v.clone()),
        (None, Some(v), None) => ClaimMatch::Contains(v.clone()),
        (None, None, Some(v)) if !v.is_empty() => ClaimMatch::ContainsAny(v.clone()),
        _ => {
            errs.push(
                path,
                "needs exactly one of equals, contains, contains_any (non-empty)",
            );
            return None;
        }
    };
    if c.name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
        return None;
    }
    Some(ClaimRule {
        name: c.name.clone(),
        matches,
    })
}

fn sigv4(errs: &mut Errors, path: &str, a: &FileAuth, base: &Path) -> Option<SigV4Auth> {
    let regions = a
        .regions
        .clone()
        .unwrap_or_else(|| vec!["us-east-1".into()]);
    if regions.is_empty() {
        errs.push(format!("{path}.regions"), "at least one region is needed");
    }
    let skew = a.max_clock_skew_secs.unwrap_or(300);
    errs.range(&format!("{path}.max_clock_skew_secs"), skew, 1, 3_600);
    let memory = a.body_memory_bytes.unwrap_or(1 << 20);
    errs.range(&format!("{path}.body_memory_bytes"), memory, 0, 1 << 30);
    let Some(file) = &a.credentials_file else {
        errs.push(
            format!("{path}.credentials_file"),
            "auth mode `sigv4` needs a credentials_file",
        );
        return None;
    };
    let file = base.join(file);
    let credentials = load_credentials(errs, &format!("{path}.credentials_file"), &file)?;
    Some(SigV4Auth {
        regions,
        credentials_file: file,
        credentials,
        max_clock_skew: Duration::from_secs(skew),
        body_memory_bytes: usize::try_from(memory).unwrap_or(usize::MAX),
    })
}

/// Reads a credentials file; its errors are reported under `path` (the key that names it).
pub(crate) fn load_credentials(
    errs: &mut Errors,
    path: &str,
    file: &Path,
) -> Option<Vec<Credential>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errs.push(path, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let parsed: FileCredentials = match crate::parse_toml(&text) {
        Ok(p) => p,
        Err(e) => {
            for inner in e.0 {
                errs.push(path, format!("{}: {}", file.display(), inner));
            }
            return None;
        }
    };
    if parsed.credentials.is_empty() {
        errs.push(path, format!("{} holds no [[credentials]]", file.display()));
    }
    let mut ids = HashSet::new();
    for (i, c) in parsed.credentials.iter().enumerate() {
        let p = format!("{path} → credentials[{i}]");
        if c.access_key_id.is_empty()
            || c.access_key_id.len() > 128
            || !c.access_key_id.chars().all(|ch| ch.is_ascii_alphanumeric())
        {
            errs.push(
                p.clone(),
                "access_key_id must be 1 to 128 letters and digits",
            );
        }
        if c.secret_access_key.len() < 16 {
            errs.push(p.clone(), "secret_access_key is too short");
        }
        if c.principal.is_empty() {
            errs.push(p.clone(), "principal must not be empty");
        }
        if !ids.insert(c.access_key_id.as_str()) {
            errs.push(
                p,
                format!("access_key_id {} appears twice", c.access_key_id),
            );
        }
    }
    Some(
        parsed
            .credentials
            .into_iter()
            .map(|c| Credential {
                access_key_id: c.access_key_id,
                secret_access_key: c.secret_access_key,
                session_token: c.session_token,
                principal: c.principal,
            })
            .collect(),
    )
}

fn valid_runtime_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 48
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn backend(errs: &mut Errors, path: &str, b: &FileBackend, base: &Path) -> Option<BackendSpec> {
    // Keys of one provider set on another are mistakes worth reporting, not ignoring.
    let keys = [
        ("command", b.command.is_some(), "process sandbox"),
        ("args", b.args.is_some(), "process sandbox"),
        ("env", b.env.is_some(), "process sandbox microvm"),
        (
            "ready_timeout_ms",
            b.ready_timeout_ms.is_some(),
            "process sandbox microvm",
        ),
        (
            "stop_timeout_ms",
            b.stop_timeout_ms.is_some(),
            "process sandbox microvm",
        ),
        (
            "warm_pool",
            b.warm_pool.is_some(),
            "process sandbox microvm",
        ),
        ("memory_mb", b.memory_mb.is_some(), "sandbox microvm"),
        ("cpu_percent", b.cpu_percent.is_some(), "sandbox"),
        ("max_pids", b.max_pids.is_some(), "sandbox"),
        ("read_only", b.read_only.is_some(), "sandbox"),
        ("egress", b.egress.is_some(), "sandbox microvm"),
        ("kernel", b.kernel.is_some(), "microvm"),
        ("initrd", b.initrd.is_some(), "microvm"),
        ("vcpus", b.vcpus.is_some(), "microvm"),
        ("accel", b.accel.is_some(), "microvm"),
        ("snapshot", b.snapshot.is_some(), "microvm"),
        ("qemu", b.qemu.is_some(), "microvm"),
        ("endpoints", b.endpoints.is_some(), "static"),
        (
            "sessions_per_endpoint",
            b.sessions_per_endpoint.is_some(),
            "static",
        ),
    ];
    let provider = b.provider.as_str();
    if !["process", "sandbox", "microvm", "static"].contains(&provider) {
        errs.push(
            format!("{path}.provider"),
            format!("`{provider}` is not one of process, sandbox, microvm, static"),
        );
        return None;
    }
    for (key, set, applies) in keys {
        if set && !applies.split(' ').any(|p| p == provider) {
            errs.push(
                format!("{path}.{key}"),
                format!("applies to {applies}, not `{provider}`"),
            );
        }
    }
    let ms = |errs: &mut Errors, key: &str, v: Option<u64>, default: u64| {
        Duration::from_millis(errs.range(
            &format!("{path}.{key}"),
            v.unwrap_or(default),
            10,
            600_000,
        ))
    };
    let stop_timeout = Duration::from_millis(errs.range(
        &format!("{path}.stop_timeout_ms"),
        b.stop_timeout_ms.unwrap_or(2_000),
        0,
        600_000,
    ));
    let warm_pool = errs.range(
        &format!("{path}.warm_pool"),
        b.warm_pool.unwrap_or(0).into(),
        0,
        64,
    ) as usize;
    let process = |errs: &mut Errors, default_args: fn() -> Vec<String>| {
        if b.command.as_deref() == Some("") {
            errs.push(format!("{path}.command"), "must not be empty");
        }
        ProcessSpec {
            command: b.command.as_ref().map(Into::into),
            args: b.args.clone().unwrap_or_else(default_args),
            env: b.env.clone().unwrap_or_default(),
            ready_timeout: ms(errs, "ready_timeout_ms", b.ready_timeout_ms, 10_000),
            stop_timeout,
            warm_pool,
        }
    };
    match provider {
        "process" => Some(BackendSpec::Process(process(errs, default_agent_args))),
        "sandbox" => {
            let process = process(errs, || vec!["agent".to_owned()]);
            let read_only: Vec<PathBuf> = b
                .read_only
                .clone()
                .unwrap_or_else(|| {
                    ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc"]
                        .map(String::from)
                        .to_vec()
                })
                .into_iter()
                .map(PathBuf::from)
                .collect();
            for (i, p) in read_only.iter().enumerate() {
                if !p.is_absolute() {
                    errs.push(
                        format!("{path}.read_only[{i}]"),
                        format!("`{}` is not an absolute path", p.display()),
                    );
                }
            }
            Some(BackendSpec::Sandbox(SandboxSpec {
                process,
                memory_mb: errs.range(
                    &format!("{path}.memory_mb"),
                    b.memory_mb.unwrap_or(1_024),
                    16,
                    1 << 20,
                ),
                cpu_percent: errs.range(
                    &format!("{path}.cpu_percent"),
                    b.cpu_percent.unwrap_or(100).into(),
                    1,
                    25_600,
                ) as u32,
                max_pids: errs.range(
                    &format!("{path}.max_pids"),
                    b.max_pids.unwrap_or(256).into(),
                    8,
                    1 << 20,
                ) as u32,
                read_only,
                egress: b.egress.unwrap_or(true),
            }))
        }
        "microvm" => {
            let accel = match b.accel.as_deref().unwrap_or("auto") {
                "auto" => Accel::Auto,
                "kvm" => Accel::Kvm,
                "tcg" => Accel::Tcg,
                other => {
                    errs.push(
                        format!("{path}.accel"),
                        format!("`{other}` is not one of auto, kvm, tcg"),
                    );
                    Accel::Auto
                }
            };
            let env = b.env.clone().unwrap_or_default();
            for (k, v) in &env {
                // Upper case: kernel parameters are lower case, and the kernel keeps those.
                let key_ok = k.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
                    && k.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !key_ok
                    || v.is_empty()
                    || v.chars()
                        .any(|c| c.is_whitespace() || c == '"' || !c.is_ascii_graphic())
                {
                    errs.push(
                        format!("{path}.env.{k}"),
                        "goes on the guest kernel's command line: a name of upper-case letters, digits and _, and a non-empty value without spaces or quotes",
                    );
                }
            }
            let mut file = |key: &str, v: &Option<String>| {
                let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                    errs.push(
                        format!("{path}.{key}"),
                        "a microvm needs it (build one with scripts/build-guest)",
                    );
                    return None;
                };
                Some(base.join(v))
            };
            let kernel = file("kernel", &b.kernel);
            let initrd = file("initrd", &b.initrd);
            Some(BackendSpec::Microvm(MicrovmSpec {
                qemu: b.qemu.as_deref().unwrap_or("qemu-system-x86_64").into(),
                memory_mb: errs.range(
                    &format!("{path}.memory_mb"),
                    b.memory_mb.unwrap_or(256),
                    96,
                    1 << 20,
                ),
                vcpus: errs.range(&format!("{path}.vcpus"), b.vcpus.unwrap_or(1).into(), 1, 64)
                    as u32,
                accel,
                snapshot: b.snapshot.unwrap_or(true),
                egress: b.egress.unwrap_or(true),
                env,
                ready_timeout: ms(errs, "ready_timeout_ms", b.ready_timeout_ms, 120_000),
                stop_timeout,
                warm_pool,
                kernel: kernel?,
                initrd: initrd?,
            }))
        }
        _ => {
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
                return None;
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
