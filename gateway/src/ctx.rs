//! One request's state, from `request_filter` to `logging`: what each stage decided, for the
//! next stages and the access log.

use std::sync::Arc;
use std::time::Instant;

use auth::Principal;
use bytes::Bytes;
use routing::provider::BackendAddr;
use routing::{Caller, SessionId, Ticket};

use crate::error::GatewayError;
use crate::route::{Route, Target};
use crate::state::{InflightGuard, Shared, Snapshot};
use crate::ws::FrameMeter;

/// One request's state, from `request_filter` to `logging` (Pingora's `CTX`).
pub struct RequestCtx {
    /// The config this request runs under, from start to end.
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    pub route: Option<Route>,
    pub target: Option<Target>,
    pub session_id: Option<SessionId>,
    pub request_id: String,
    /// Set once authentication succeeded.
    pub principal: Option<Principal>,
    /// A SigV4 body read and verified in the request stage, for the proxy to send.
    pub verified_body: Option<Bytes>,
    /// Holds the session in flight; dropped with the context, after `logging`.
    pub ticket: Option<Ticket>,
    pub peer: Option<BackendAddr>,
    pub request_body_bytes: u64,
    /// The failure the client is told about, when there is one.
    pub error: Option<GatewayError>,
    /// The backend failed under this request: the session is ended after it.
    pub backend_failed: bool,
    /// The stream was ended for lasting longer than `stream_timeout_secs`.
    pub stream_expired: bool,
    /// Follows the client's WebSocket frames once the connection is upgraded.
    pub ws_meter: Option<FrameMeter>,
    /// When the backend address was handed to Pingora, and how long connecting then took.
    pub peer_chosen: Option<Instant>,
    /// The request's trace span, when traces are exported.
    pub otel: Option<opentelemetry::Context>,
    pub upstream_connect: Option<std::time::Duration>,
    /// Who is calling (set once admitted).
    pub caller: Option<Caller>,
    /// The session was found by its `Mcp-Session-Id` (it must already exist).
    pub session_known: bool,
    /// The backend refused the connection: place a new one before the retry.
    pub replace_backend: bool,
    /// A new backend was already placed for this request (only once).
    pub replaced: bool,
    /// A graceful upgrade handed the sessions to a new process: this request goes there as it
    /// came (see `crate::handover`).
    pub relayed: bool,
    /// A request for one of the session's own ports (`crate::endpoints`).
    pub port: Option<Box<crate::endpoints::PortRequest>>,
    _inflight: InflightGuard,
}

impl RequestCtx {
    pub fn new(shared: &Arc<Shared>) -> Self {
        Self {
            snapshot: shared.snapshot(),
            started: Instant::now(),
            route: None,
            target: None,
            session_id: None,
            request_id: crate::ids::request_id(),
            principal: None,
            verified_body: None,
            ticket: None,
            peer: None,
            request_body_bytes: 0,
            error: None,
            backend_failed: false,
            stream_expired: false,
            ws_meter: None,
            peer_chosen: None,
            otel: None,
            upstream_connect: None,
            caller: None,
            session_known: false,
            replace_backend: false,
            replaced: false,
            relayed: false,
            port: None,
            _inflight: InflightGuard::new(shared),
        }
    }

    /// How long the backend may stay silent on this request: no idle timer shorter than the
    /// contract's (a synchronous request may take 15 min, a WebSocket may be quiet as long as it
    /// may last).
    pub fn upstream_read_timeout(&self) -> std::time::Duration {
        let limits = &self.snapshot.config.limits;
        if self.target.is_some_and(|t| t.websocket) {
            limits.stream_timeout
        } else {
            limits.request_timeout
        }
    }

    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_ref().map(SessionId::as_str)
    }
}
