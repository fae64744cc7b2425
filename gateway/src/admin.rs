//! The admin listener (default `127.0.0.1:9090`).
//!
//! | request | answer |
//! |---|---|
//! | `GET /healthz` | `{"status":"ok","sessions":N,"draining":bool,"connections":N}` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /sessions` | every live session as JSON |
//! | `DELETE /sessions/{id}` | ends the session (a suspended one too: its snapshot goes): 200, or 404 if there is none |
//! | `POST /sessions/{id}/suspend` | suspends an idle session of an `on_idle = "suspend"` runtime now: 200 with its snapshot's size, 409 if it is busy, 400 if its runtime does not suspend |
//! | `POST /config/reload[?allow_auth_downgrade=true]` | reloads the config file: 200, or 422 with why it was refused |
//! | `GET /dashboard`, `/dashboard/api/…`, `GET /sessions/{id}` | the operator's dashboard ([`crate::dashboard`]) |
//!
//! With `admin.token_file` set, every request but `GET /healthz` and the dashboard's static
//! page (which holds no data: it asks for the token) must carry `Authorization: Bearer <token>`
//! (401 otherwise): backends that share the host's loopback (the `process` provider) could
//! otherwise list and end other sessions.

use std::sync::Arc;

use async_trait::async_trait;
use conf::Protocol;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::state::{ReloadOptions, Shared};

pub struct AdminApp {
    pub shared: Arc<Shared>,
}

/// The workload tokens' public keys: public, like `/healthz` (verifiers fetch them unauthenticated).
const JWKS_PATH: &str = "/.well-known/jwks.json";

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, http: &mut ServerSession) -> Response<Vec<u8>> {
        let req = http.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_owned());
        let query = req.uri.query().unwrap_or("").to_owned();
        let snapshot = self.shared.snapshot();
        if let Some(token) = &snapshot.config.admin.token
            && !(method == Method::GET
                && (matches!(path.as_str(), "/healthz" | JWKS_PATH)
                    || crate::dashboard::asset(&path).is_some()))
            && !bearer_matches(req, token)
        {
            return with_header(
                json_response(
                    StatusCode::UNAUTHORIZED,
                    json!({ "message": "admin token required" }),
                ),
                http::header::WWW_AUTHENTICATE,
                "Bearer",
            );
        }
        if let Some(refused) = crate::dashboard::refuse_browser(req) {
            return json_response(StatusCode::FORBIDDEN, json!({ "message": refused }));
        }
        if self.shared.handover.relaying() && method != Method::GET {
            // A graceful upgrade gave the sessions to the new process: changes go there.
            return with_header(
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({ "message": "this process handed its sessions to a new one (graceful upgrade); retry" }),
                ),
                http::header::RETRY_AFTER,
                "1",
            );
        }
        match (&method, path.as_str()) {
            (&Method::GET, JWKS_PATH) => match self.shared.jwks(&snapshot.config) {
                Some(keys) => json_response(StatusCode::OK, keys),
                None => json_response(
                    StatusCode::NOT_FOUND,
                    json!({ "message": "workload access tokens are off ([identity] workload_tokens)" }),
                ),
            },
            (&Method::GET, "/healthz") => json_response(
                StatusCode::OK,
                json!({
                    "status": "ok",
                    "sessions": self.session_count().await,
                    "draining": self.shared.is_draining(),
                    "connections": self.shared.connections.count(),
                    "max_connections": self.shared.connections.max(),
                }),
            ),
            (&Method::GET, "/metrics") => {
                let body = self.shared.metrics.render();
                response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    body.into_bytes(),
                )
            }
            (&Method::GET, "/sessions") => match self.shared.directory.shared() {
                None => json_response(StatusCode::OK, self.sessions()),
                Some(redis) => match redis.list(MAX_LISTED).await {
                    Ok(list) => json_response(StatusCode::OK, self.cluster_sessions(list)),
                    Err(e) => json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({ "message": e.to_string() }),
                    ),
                },
            },
            (&Method::GET, p) if crate::dashboard::asset(p).is_some() => {
                let (content_type, body) = crate::dashboard::asset(p).unwrap_or_default();
                with_header(
                    response(StatusCode::OK, content_type, body.as_bytes().to_vec()),
                    http::header::CONTENT_SECURITY_POLICY,
                    crate::dashboard::CSP,
                )
            }
            (&Method::GET, "/dashboard/api/overview") => {
                json_response(StatusCode::OK, crate::dashboard::overview(&self.shared))
            }
            (&Method::GET, "/dashboard/api/series") => {
                let seconds = routing::face::query_param(&query, "seconds")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(300);
                json_response(StatusCode::OK, self.shared.stats.series(seconds))
            }
            (&Method::GET, p) if p.starts_with("/sessions/") => {
                let id = session_id_in(p, "");
                let listed = match self.shared.directory.shared() {
                    None => self.sessions(),
                    Some(redis) => match redis.list(MAX_LISTED).await {
                        Ok(list) => self.cluster_sessions(list),
                        Err(e) => {
                            return json_response(
                                StatusCode::SERVICE_UNAVAILABLE,
                                json!({ "message": e.to_string() }),
                            );
                        }
                    },
                };
                let row = listed["sessions"]
                    .as_array()
                    .and_then(|rows| rows.iter().find(|r| r["id"] == id).cloned());
                match crate::dashboard::session_detail(&self.shared, &id, row) {
                    Some(detail) => json_response(StatusCode::OK, detail),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        json!({ "message": "Session not found" }),
                    ),
                }
            }
            (&Method::POST, "/config/reload") => {
                let options = ReloadOptions {
                    allow_auth_downgrade: routing::face::query_param(
                        &query,
                        "allow_auth_downgrade",
                    )
                    .is_some_and(|v| v == "true"),
                };
                match crate::reload::reload(&self.shared, "admin API", options) {
                    Ok(notes) => {
                        json_response(StatusCode::OK, json!({ "reloaded": true, "notes": notes }))
                    }
                    Err(e) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({ "reloaded": false, "message": e.to_string() }),
                    ),
                }
            }
            (&Method::POST, p) if p.starts_with("/sessions/") && p.ends_with("/suspend") => {
                self.suspend(&session_id_in(p, "/suspend")).await
            }
            (&Method::DELETE, p) if p.starts_with("/sessions/") => {
                self.end_session(&session_id_in(p, "")).await
            }
            _ => json_response(StatusCode::NOT_FOUND, json!({ "message": "not found" })),
        }
    }
}

/// `/sessions` on a replica lists at most this many (the shared directory's first ones).
const MAX_LISTED: usize = 10_000;

impl AdminApp {
    fn sessions(&self) -> serde_json::Value {
        let now = routing::directory::now_ms();
        let snapshot = self.shared.snapshot();
        let list: Vec<_> = self
            .shared
            .directory
            .snapshot()
            .into_iter()
            .map(|s| {
                let backend = s.backend();
                let addr = |p| backend.and_then(|b| b.addr(p)).map(|a| a.to_string());
                let busy =
                    s.traffic.last_check() == Some(routing::directory::traffic::Checked::Busy);
                let (bytes_in, bytes_out) = s.traffic.bytes();
                let provider = snapshot
                    .config
                    .runtime_index(&s.runtime)
                    .and_then(|i| snapshot.providers.get(i, s.version))
                    .map(|p| p.name());
                json!({
                    "id": s.id.as_str(),
                    "runtime": &*s.runtime,
                    "version": s.version,
                    "principal": s.principal.as_str(),
                    "state": match (backend, s.inflight()) {
                        (None, _) => "provisioning",
                        (Some(_), n) if n > 0 => "active",
                        (Some(_), _) if busy => "HealthyBusy",
                        (Some(_), _) => "idle",
                    },
                    "provider": provider,
                    "bytes_in": bytes_in,
                    "bytes_out": bytes_out,
                    "backend": backend.map(|b| b.describe()),
                    "http": addr(Protocol::Http),
                    "mcp": addr(Protocol::Mcp),
                    "a2a": addr(Protocol::A2a),
                    "inflight": s.inflight(),
                    "started_at": s.created_unix_secs(),
                    "age_secs": s.age(now).as_secs(),
                    "idle_secs": s.idle_for(now).as_secs(),
                })
            })
            .chain(crate::hibernate::listed(&self.shared))
            .collect();
        json!({ "sessions": list })
    }

    async fn suspend(&self, id: &str) -> Response<Vec<u8>> {
        use routing::directory::hibernate::Suspension;
        let Some(s) = self.shared.directory.get(id) else {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({ "message": "Session not found (or already suspended)" }),
            );
        };
        let config = &self.shared.snapshot().config;
        let suspended =
            crate::hibernate::suspend(&self.shared, config, &s, std::time::Duration::ZERO).await;
        match suspended {
            None => json_response(
                StatusCode::BAD_REQUEST,
                json!({ "message": "the session's runtime does not suspend (on_idle = \"end\")" }),
            ),
            Some(Suspension::Suspended { bytes, took }) => json_response(
                StatusCode::OK,
                json!({ "suspended": id, "snapshot_bytes": bytes, "ms": took.as_millis() as u64 }),
            ),
            Some(Suspension::NotDue) => json_response(
                StatusCode::CONFLICT,
                json!({ "message": "the session has requests in flight" }),
            ),
            Some(_) => json_response(
                StatusCode::OK,
                json!({ "ended": id, "message": "it could not be suspended and ended instead" }),
            ),
        }
    }

    async fn end_session(&self, id: &str) -> Response<Vec<u8>> {
        let stopped = self
            .shared
            .directory
            .stop_named(id, None, routing::EndReason::Stopped)
            .await;
        match stopped {
            Ok(true) => {
                metrics::counter!("sessiongate_sessions_ended_total", "reason" => "stopped")
                    .increment(1);
                json_response(StatusCode::OK, json!({ "ended": id }))
            }
            Ok(false) => json_response(
                StatusCode::NOT_FOUND,
                json!({ "message": "Session not found" }),
            ),
            Err(_) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "message": "session directory unavailable" }),
            ),
        }
    }

    /// Sessions in this gateway, or in the whole cluster on a replica (`null` when Redis cannot
    /// be reached).
    async fn session_count(&self) -> Option<usize> {
        match self.shared.directory.shared() {
            None => Some(self.shared.directory.len()),
            Some(redis) => redis.count().await.ok(),
        }
    }

    /// `/sessions` on a replica: every session of the cluster from the shared records, with
    /// what this replica knows of its own requests.
    fn cluster_sessions(&self, list: Vec<routing::cluster::Listed>) -> serde_json::Value {
        let now = routing::directory::now_ms();
        let node = self.shared.directory.shared().map(|r| r.node().to_owned());
        let list: Vec<_> = list
            .into_iter()
            .map(|l| {
                let inflight_here = self.shared.directory.get(&l.id).map_or(0, |s| s.inflight());
                let addr = |p| l.backend.as_ref().and_then(|b| b.get(p)).map(|a| a.to_string());
                json!({
                    "id": l.id,
                    "runtime": l.runtime,
                    "version": l.version,
                    "principal": l.principal,
                    "state": match l.state {
                        "live" if inflight_here > 0 => "active",
                        "live" => "idle",
                        other => other,
                    },
                    "backend": match (&l.host, &l.backend) {
                        (Some(host), _) => Some(format!("host {host}")),
                        (None, Some(_)) => Some("static".to_owned()),
                        (None, None) => None,
                    },
                    "replica": l.placer,
                    "http": addr(Protocol::Http),
                    "mcp": addr(Protocol::Mcp),
                    "a2a": addr(Protocol::A2a),
                    "inflight": inflight_here,
                    "started_at": l.created_ms / 1000,
                    "age_secs": now.saturating_sub(l.created_ms) / 1000,
                    "idle_secs": now.saturating_sub(l.last_ms) / 1000,
                    "snapshot_bytes": (l.state == "suspended").then_some(l.snapshot_bytes),
                    "suspended_secs": (l.state == "suspended").then(|| now.saturating_sub(l.suspended_ms) / 1000),
                })
            })
            .collect();
        json!({ "sessions": list, "replica": node })
    }
}

/// The session id in `/sessions/{id}{suffix}`, percent-decoded (ids may hold any visible
/// character; clients encode them in paths). Empty when there is none.
fn session_id_in(path: &str, suffix: &str) -> String {
    let raw = path
        .strip_prefix("/sessions/")
        .and_then(|p| p.strip_suffix(suffix))
        .unwrap_or_default();
    routing::face::percent_decode(raw).unwrap_or_else(|| raw.to_owned())
}

/// Compares the bearer token in constant time (the admin port may be reachable by backends).
fn bearer_matches(req: &pingora::http::RequestHeader, token: &str) -> bool {
    let Some(given) = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn with_header(
    mut r: Response<Vec<u8>>,
    name: http::HeaderName,
    value: &'static str,
) -> Response<Vec<u8>> {
    r.headers_mut()
        .insert(name, http::HeaderValue::from_static(value));
    r
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    response(status, "application/json", body.to_string().into_bytes())
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, len.into());
    r
}
