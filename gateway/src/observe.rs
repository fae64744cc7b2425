//! Metrics and the access log, recorded once per request in `logging`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sessiongate_requests_total` | counter | listener, runtime, route, status |
//! | `sessiongate_request_duration_seconds` | histogram | listener, runtime, route |
//! | `sessiongate_upstream_connect_seconds` | histogram | |
//! | `sessiongate_placement_duration_seconds` | histogram | provider, result |
//! | `sessiongate_sessions` | gauge | state (active, idle, provisioning) |
//! | `sessiongate_auth_failures_total` | counter | reason |
//! | `sessiongate_config_reloads_total` | counter | result |
//! | `sessiongate_request_bytes_total`, `sessiongate_response_bytes_total` | counter | listener |
//! | `sessiongate_active_sessions` | gauge (set by the lifecycle sweep) | |
//! | `sessiongate_placements_total` | counter | provider, result |
//! | `sessiongate_rejections_total` | counter | reason |
//! | `sessiongate_sessions_ended_total` | counter | reason |
//! | `sessiongate_egress_connections_total` | counter (the `egress` crate) | runtime, verdict |
//! | `sessiongate_egress_bytes_total` | counter (the `egress` crate) | runtime, direction |

use std::sync::Arc;

use conf::Protocol;
use dashmap::DashMap;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pingora::proxy::Session;

use routing::directory::traffic::Exchange;

use crate::ctx::RequestCtx;
use crate::dashboard::stats::Stats;

/// Latency buckets, in seconds: 100 µs to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 60.0,
];

/// Installs the process-wide Prometheus recorder.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?)
}

/// The handles one kind of request records into, looked up in the registry once.
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Counter,
    response_bytes: Counter,
}

/// What a request's labels are: listener, runtime (index in its snapshot; `u32::MAX` for none),
/// route (its name's address: route names are static), status.
type HandleKey = (u8, u32, usize, u16);

/// The request metrics' handles of one config snapshot, by label set (a bounded set: listeners ×
/// runtimes × routes × statuses). Registering a metric hashes and compares its labels and copies
/// them: a few thousand instructions that every request paid; now the first of its kind does.
#[derive(Default)]
pub struct RequestMetrics(DashMap<HandleKey, Arc<Handles>>);

impl RequestMetrics {
    fn handles(&self, face: Protocol, ctx: &RequestCtx, status: u16) -> Arc<Handles> {
        let route = ctx.route.map_or("none", |r| r.name());
        let runtime = ctx.route.map_or(u32::MAX, |r| r.runtime as u32);
        let key = (face as u8, runtime, route.as_ptr() as usize, status);
        if let Some(h) = self.0.get(&key) {
            return Arc::clone(&h);
        }
        let listener = face.as_str();
        // Runtime names come from the config: a bounded label set (never a session or principal).
        let runtime = ctx.route.map_or("none".to_owned(), |r| {
            ctx.snapshot.runtime_name(r.runtime).to_owned()
        });
        let handles = Arc::new(Handles {
            requests: metrics::counter!("sessiongate_requests_total", "listener" => listener, "runtime" => runtime.clone(), "route" => route, "status" => status.to_string()),
            duration: metrics::histogram!("sessiongate_request_duration_seconds", "listener" => listener, "runtime" => runtime, "route" => route),
            request_bytes: metrics::counter!("sessiongate_request_bytes_total", "listener" => listener),
            response_bytes: metrics::counter!("sessiongate_response_bytes_total", "listener" => listener),
        });
        Arc::clone(self.0.entry(key).or_insert(handles).value())
    }
}

pub fn record(face: Protocol, session: &Session, ctx: &RequestCtx, stats: &Stats) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let elapsed = ctx.started.elapsed();
    let handles = ctx.snapshot.metrics.handles(face, ctx, status);
    let sent = session.body_bytes_sent() as u64;
    handles.requests.increment(1);
    handles.duration.record(elapsed.as_secs_f64());
    handles.request_bytes.increment(ctx.request_body_bytes);
    handles.response_bytes.increment(sent);
    let (listener, route) = (face.as_str(), ctx.route.map_or("none", |r| r.name()));
    if let Some(e) = &ctx.error {
        metrics::counter!("sessiongate_rejections_total", "reason" => e.reason()).increment(1);
    }
    stats.request(status, elapsed, ctx.error.as_ref().map(|e| e.reason()));
    if let Some(ticket) = &ctx.ticket {
        let exchange = Exchange {
            at_ms: routing::directory::now_ms(),
            route,
            status,
            micros: elapsed.as_micros() as u64,
        };
        ticket
            .session()
            .traffic
            .record(exchange, ctx.request_body_bytes, sent);
    }
    tracing::info!(
        target: "sessiongate::access",
        listener,
        route,
        status,
        method = %session.req_header().method,
        path = session.req_header().uri.path(),
        session = ctx.session_id().unwrap_or("-"),
        principal = ctx.principal.as_ref().map_or("-", |p| p.as_str()),
        request_id = %ctx.request_id,
        backend = ctx.peer.as_ref().map(ToString::to_string),
        micros = elapsed.as_micros() as u64,
        upstream_connect_micros = ctx.upstream_connect.map(|d| d.as_micros() as u64),
        error = ctx.error.as_ref().map(|e| e.reason()),
        "request"
    );
}

/// Ends the request's trace span with the request's outcome.
pub fn finish_span(cx: &opentelemetry::Context, session: &Session, ctx: &RequestCtx) {
    use opentelemetry::KeyValue;
    let mut attributes = vec![
        KeyValue::new("sessiongate.request_id", ctx.request_id.clone()),
        KeyValue::new("sessiongate.route", ctx.route.map_or("none", |r| r.name())),
    ];
    if let Some(r) = ctx.route {
        attributes.push(KeyValue::new(
            "sessiongate.runtime",
            ctx.snapshot.runtime_name(r.runtime).to_owned(),
        ));
    }
    if let Some(t) = &ctx.ticket {
        attributes.push(KeyValue::new("sessiongate.session.created", t.created));
        attributes.push(KeyValue::new(
            "sessiongate.session.version",
            i64::from(t.session().version),
        ));
    }
    if let Some(peer) = &ctx.peer {
        attributes.push(KeyValue::new("server.address", peer.to_string()));
    }
    if let Some(d) = ctx.upstream_connect {
        attributes.push(KeyValue::new(
            "sessiongate.upstream.connect_ms",
            d.as_secs_f64() * 1e3,
        ));
    }
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    crate::telemetry::finish(
        cx,
        attributes,
        status,
        ctx.error.as_ref().map(|e| e.reason()),
    );
}
