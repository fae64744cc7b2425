//! The agent's HTTP port: `POST /invocations` and `GET /ws`.
//!
//! `/invocations` echoes the JSON payload with the session id, request id and instance it saw,
//! and `count`: how many invocations this process has served (memory only).
//! Payload keys that change the answer (all optional, all combinable):
//! - `"sleep_ms": N`: wait N ms first;
//! - `"stream": N, "interval_ms": M`: answer as SSE, N `data:` events M ms apart;
//! - `"status": S`: answer with HTTP status S (to exercise error handling);
//! - `"background_ms": N`: stay `HealthyBusy` for N ms after answering;
//! - `"echo_headers": true`: include the request headers it received.
//! - `"connect": "HOST:PORT"`, `"udp": "HOST:PORT"`: only when the agent runs with
//!   `SESSIONGATE_AGENT_NET_PROBES=1` (tests of an isolation boundary turn it on): try a TCP
//!   connect, or send one datagram and wait for any answer, and report whether it worked. Off by
//!   default, because it would let any caller of the agent probe the network it sits on.
//!
//! Bodies over 1 MiB are counted, not parsed: the answer reports their size.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::Agent;

const SESSION_ID: &str = "x-amzn-bedrock-agentcore-runtime-session-id";
const REQUEST_ID: &str = "x-amzn-bedrock-agentcore-runtime-request-id";
/// Bodies up to this size are parsed and echoed; bigger ones are only counted.
const ECHO_LIMIT: usize = 1 << 20;

pub fn router(agent: Arc<Agent>, invocations_path: &str) -> Router {
    Router::new()
        .route(invocations_path, post(invocations))
        .route("/ws", get(ws))
        .with_state(agent)
}

fn header_str(headers: &HeaderMap, name: &str) -> Value {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map_or(Value::Null, |v| Value::String(v.to_owned()))
}

async fn invocations(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Body) -> Response {
    let work = agent.work();
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "body read failed" })),
            )
                .into_response();
        };
        total += chunk.len();
        if kept.len() + chunk.len() <= ECHO_LIMIT {
            kept.extend_from_slice(&chunk);
        }
    }
    let seen = json!({
        "instance": agent.instance(),
        // Held in memory only: a guest resumed from its snapshot counts on where it was.
        "count": agent.invocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        "label": agent.label,
        "session_id": header_str(&headers, SESSION_ID),
        "request_id": header_str(&headers, REQUEST_ID),
        "bytes": total,
    });
    if total > ECHO_LIMIT {
        return axum::Json(seen).into_response();
    }
    let payload: Value = match serde_json::from_slice(&kept) {
        Ok(v) => v,
        Err(e) if total > 0 => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({ "error": "Invalid JSON", "details": e.to_string() })),
            )
                .into_response();
        }
        Err(_) => Value::Null,
    };
    let number = |key: &str| payload.get(key).and_then(Value::as_u64);

    if let Some(ms) = number("sleep_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(ms) = number("background_ms") {
        let background = agent.work();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(background);
        });
    }
    if let Some(probe) = net_probes(&payload).await {
        drop(work);
        let mut answer = seen;
        answer["probe"] = probe;
        return axum::Json(answer).into_response();
    }
    if let Some(status) = number("status").and_then(|s| StatusCode::from_u16(s as u16).ok()) {
        return (
            status,
            axum::Json(json!({ "error": "status requested by the payload", "seen": seen })),
        )
            .into_response();
    }
    if let Some(events) = number("stream") {
        let interval = Duration::from_millis(number("interval_ms").unwrap_or(100));
        return sse(events, interval, seen, work);
    }
    drop(work);
    let mut answer = seen;
    if payload.get("echo_headers").and_then(Value::as_bool) == Some(true) {
        let received: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        answer["headers"] = Value::Object(received);
    }
    answer["echo"] = payload;
    axum::Json(answer).into_response()
}

/// How long a network probe waits for a connection or an answer. Generous: a guest under
/// software emulation is slow, and a refused probe is usually answered at once anyway.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The `connect` / `udp` probes, when asked for and enabled.
async fn net_probes(payload: &Value) -> Option<Value> {
    let tcp = payload.get("connect").and_then(Value::as_str);
    let udp = payload.get("udp").and_then(Value::as_str);
    if tcp.is_none() && udp.is_none() {
        return None;
    }
    if std::env::var("SESSIONGATE_AGENT_NET_PROBES").as_deref() != Ok("1") {
        return Some(json!({ "error": "network probes are off (SESSIONGATE_AGENT_NET_PROBES=1)" }));
    }
    let mut out = json!({});
    if let Some(addr) = tcp {
        let connect = tokio::net::TcpStream::connect(addr);
        out["connect"] = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
            Ok(Ok(_)) => json!({ "addr": addr, "connected": true }),
            Ok(Err(e)) => json!({ "addr": addr, "connected": false, "error": e.to_string() }),
            Err(_) => json!({ "addr": addr, "connected": false, "error": "timed out" }),
        };
    }
    if let Some(addr) = udp {
        out["udp"] = match tokio::time::timeout(PROBE_TIMEOUT, udp_exchange(addr)).await {
            Ok(Ok(reply)) => json!({ "addr": addr, "answered": true, "reply": reply }),
            Ok(Err(e)) => json!({ "addr": addr, "answered": false, "error": e.to_string() }),
            Err(_) => json!({ "addr": addr, "answered": false, "error": "timed out" }),
        };
    }
    Some(out)
}

/// Sends `probe` to `addr` and returns the first datagram that comes back.
async fn udp_exchange(addr: &str) -> std::io::Result<String> {
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    socket.connect(addr).await?;
    socket.send(b"probe").await?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `events` SSE events, `interval` apart, each `data: {"index": i, …}`. The agent stays busy
/// until the last one is sent.
pub(crate) fn sse(
    events: u64,
    interval: Duration,
    seen: Value,
    work: super::WorkGuard,
) -> Response {
    let stream = futures_util::stream::unfold((0, work), move |(i, work)| {
        let seen = seen.clone();
        async move {
            if i >= events {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let mut event = seen;
            event["index"] = i.into();
            event["of"] = events.into();
            let frame = format!("data: {event}\n\n");
            Some((Ok::<_, std::convert::Infallible>(frame), (i + 1, work)))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

pub(crate) async fn ws(State(agent): State<Arc<Agent>>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo(agent, socket))
}

/// Echoes every text and binary frame until the client closes.
async fn echo(agent: Arc<Agent>, mut socket: WebSocket) {
    let _work = agent.work();
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(t),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(frame) => {
                // Complete the closing handshake.
                let _ = socket.send(Message::Close(frame)).await;
                break;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
