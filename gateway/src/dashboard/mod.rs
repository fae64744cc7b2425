//! The operator's dashboard on the admin listener: a page (HTML, CSS and JavaScript compiled
//! into the binary — nothing fetched from anywhere else) and the JSON it polls.
//!
//! | request | answer |
//! |---|---|
//! | `GET /dashboard` (and `/dashboard/app.js`, `/dashboard/app.css`) | the page |
//! | `GET /dashboard/api/overview` | runtimes, versions, providers, warm pools, endpoints and their splits; the config in force, when it was loaded, the last reload error |
//! | `GET /dashboard/api/series?seconds=N` | the last N seconds (≤ 600) of requests by status class, p50/p99 latency, sessions, placements, rejections ([`stats`]) |
//! | `GET /sessions/{id}` | one session: its row, its last requests and health checks |
//!
//! The page, like every admin request, needs the admin token when `admin.token_file` is set:
//! it asks for it once and sends it as a bearer token (kept in the tab's session storage).

pub mod stats;

use std::sync::Mutex;

use serde_json::{Value, json};

use crate::state::Shared;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page runs only its own script and style and talks only to its own origin; no other
/// site may frame it.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Why a browser's request to the admin listener is refused, if it is. Browsers say where a
/// request comes from (`Sec-Fetch-Site`); other clients (curl, Prometheus, the CLI) send nothing
/// and are not concerned. Only the dashboard's own page (same origin) or an address typed by the
/// operator may drive the admin API: a page of any other origin — an agent's page on a session
/// endpoint of this very host included — could otherwise stop sessions or reload the config. And
/// a browser must name the listener by IP address or `localhost`: a name that reaches it only by
/// DNS rebinding would make another site's page same-origin with it.
pub fn refuse_browser(req: &pingora::http::RequestHeader) -> Option<&'static str> {
    let site = req
        .headers
        .get("sec-fetch-site")?
        .to_str()
        .unwrap_or_default();
    if site != "same-origin" && site != "none" {
        return Some("the admin listener answers browsers only from its own pages");
    }
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    if name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok() {
        None
    } else {
        Some("open the dashboard by the admin listener's IP address or localhost")
    }
}

/// A static asset of the page: `(content type, body)`.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/dashboard" | "/dashboard/" => Some(("text/html; charset=utf-8", INDEX)),
        "/dashboard/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "/dashboard/app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

/// The config in force as the dashboard shows it.
#[derive(Debug, Default)]
pub struct ConfigInfo {
    /// The file as it was loaded, re-written with its secrets masked (`conf::masked`); `None`:
    /// the embedded default.
    text: Option<String>,
    loaded_ms: u64,
    /// When the last reload was refused, and why (cleared by a reload that succeeds).
    last_error: Option<(u64, String)>,
}

impl ConfigInfo {
    /// The file at `path` as loaded now (`None`: the embedded default).
    pub fn read(path: Option<&std::path::Path>) -> Self {
        let text = path.map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|text| conf::masked(&text))
                .unwrap_or_default()
        });
        Self {
            text,
            loaded_ms: routing::directory::now_ms(),
            last_error: None,
        }
    }

    /// Notes a reload's outcome.
    pub fn reloaded(cell: &Mutex<Self>, path: Option<&std::path::Path>, error: Option<String>) {
        let Ok(mut info) = cell.lock() else { return };
        match error {
            Some(e) => info.last_error = Some((routing::directory::now_ms(), e)),
            None => *info = Self::read(path),
        }
    }
}

/// `GET /dashboard/api/overview`.
pub fn overview(shared: &Shared) -> Value {
    let snapshot = shared.snapshot();
    let config = &snapshot.config;
    let runtimes: Vec<Value> = config
        .runtimes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let versions: Vec<Value> = r
                .versions
                .iter()
                .map(|v| {
                    let p = snapshot.providers.get(i, v.number);
                    json!({
                        "number": v.number,
                        "provider": p.map(|p| p.name()),
                        "warm_ready": p.map(|p| p.warm()),
                        "warm_target": p.map(|p| p.warm_target()),
                    })
                })
                .collect();
            let endpoints: Vec<Value> = r
                .endpoints
                .iter()
                .map(|e| {
                    let total: u32 = e.targets.iter().map(|(_, w)| w).sum();
                    json!({
                        "name": e.name,
                        "split": e.targets.iter().map(|(v, w)| json!({
                            "version": r.versions.get(*v).map(|v| v.number),
                            "percent": f64::from(*w) * 100.0 / f64::from(total.max(1)),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "name": r.name,
                "default": i == config.default_runtime,
                "protocol": format!("{:?}", r.protocol),
                "on_idle": if r.suspend.is_some() { "suspend" } else { "end" },
                "versions": versions,
                "endpoints": endpoints,
            })
        })
        .collect();
    let (text, loaded_ms, last_error) = match shared.config_info.lock() {
        Ok(i) => (i.text.clone(), i.loaded_ms, i.last_error.clone()),
        Err(_) => (None, 0, None),
    };
    json!({
        "runtimes": runtimes,
        "config": {
            "path": shared.config_path.as_ref().map(|p| p.display().to_string()),
            "text": text,
            "loaded_at_ms": loaded_ms,
            "last_reload_error": last_error.map(|(at, e)| json!({ "at_ms": at, "message": e })),
        },
        "replica": shared.directory.shared().map(|r| r.node().to_owned()),
        "now_ms": routing::directory::now_ms(),
    })
}

/// `GET /sessions/{id}`: the session's row, its last requests and health checks (`None`: no
/// such session here).
pub fn session_detail(shared: &Shared, id: &str, row: Option<Value>) -> Option<Value> {
    let row = row?;
    let s = shared.directory.get(id);
    let recent: Vec<Value> = s.as_ref().map_or_else(Vec::new, |s| {
        s.traffic
            .recent()
            .into_iter()
            .rev()
            .map(|e| json!({ "at_ms": e.at_ms, "route": e.route, "status": e.status, "ms": e.micros as f64 / 1000.0 }))
            .collect()
    });
    let checks: Vec<Value> = s.as_ref().map_or_else(Vec::new, |s| {
        s.traffic
            .checks()
            .into_iter()
            .rev()
            .map(|(at, c)| json!({ "at_ms": at, "outcome": c.as_str() }))
            .collect()
    });
    Some(json!({ "session": row, "requests": recent, "health_checks": checks }))
}
