//! The agent's MCP port: a small streamable-HTTP MCP server at `/mcp`.
//!
//! `initialize` assigns an `Mcp-Session-Id`; `tools/list` offers one tool, `echo`, and
//! `tools/call` of it returns the text with the instance and session that answered. Requests
//! without a session id are served statelessly; an unknown session id gets 404 (the client
//! must initialize again), as the MCP transport specifies. The agent remembers at most
//! [`crate::mcp_sessions::CAPACITY`] sessions, forgetting the least recently used.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::Agent;

const MCP_SESSION_ID: &str = "mcp-session-id";
const SUPPORTED_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/mcp", post(handle).get(server_stream).delete(end_session))
        .with_state(agent)
}

/// The server-to-client stream: one `notifications/message` naming the instance, then
/// keep-alive comments until the client goes away.
async fn server_stream(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let known = session_header(&headers).is_some_and(|s| {
        agent.mcp_stateless || agent.mcp_sessions.lock().is_ok_and(|mut set| set.touch(s))
    });
    if !known {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            "Mcp-Session-Id required",
        );
    }
    let hello = json!({
        "jsonrpc": "2.0",
        "method": "notifications/message",
        "params": { "level": "info", "data": { "instance": agent.instance() } },
    });
    let first = futures_util::stream::once(async move {
        Ok::<_, std::convert::Infallible>(format!("data: {hello}\n\n"))
    });
    let pings = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_secs(15)).await;
        Some((Ok(": keep-alive\n\n".to_owned()), ()))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(futures_util::StreamExt::chain(first, pings)),
    )
        .into_response()
}

async fn end_session(State(agent): State<Arc<Agent>>, headers: HeaderMap) -> Response {
    let removed = session_header(&headers)
        .and_then(|id| agent.mcp_sessions.lock().ok().map(|mut s| s.remove(id)))
        .unwrap_or(false);
    if removed {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response()
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(MCP_SESSION_ID).and_then(|v| v.to_str().ok())
}

fn accepts_both(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let has = |t: &str| {
        accept
            .split(',')
            .any(|a| a.trim().starts_with(t) || a.trim().starts_with("*/*"))
    };
    has("application/json") && has("text/event-stream")
}

async fn handle(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    if !accepts_both(&headers) {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            -32600,
            "Not Acceptable: Accept must list application/json and text/event-stream",
        );
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(StatusCode::BAD_REQUEST, Value::Null, -32700, "Parse error");
    };
    let id = msg.get("id").cloned();
    let method = msg.get("method").and_then(Value::as_str);
    let session = session_header(&headers).map(str::to_owned);

    if method != Some("initialize")
        && !agent.mcp_stateless
        && let Some(s) = &session
        && !agent.mcp_sessions.lock().is_ok_and(|mut set| set.touch(s))
    {
        return rpc_error(
            StatusCode::NOT_FOUND,
            id.unwrap_or(Value::Null),
            -32001,
            "Session not found",
        );
    }
    // Notifications and responses from the client get 202 and no body.
    let (Some(id), Some(method)) = (id, method) else {
        return StatusCode::ACCEPTED.into_response();
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let runtime_session = headers
        .get("x-amzn-bedrock-agentcore-runtime-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();

    match method {
        "initialize" => {
            let asked = params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let version = SUPPORTED_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&SUPPORTED_VERSIONS[0]);
            let new_session = crate::random_uuid().simple().to_string();
            if let Ok(mut set) = agent.mcp_sessions.lock() {
                set.insert(new_session.clone());
            }
            let result = json!({
                "protocolVersion": version,
                "capabilities": { "tools": { "listChanged": false } },
                "serverInfo": { "name": "sessiongate-agent", "version": env!("CARGO_PKG_VERSION") },
                "instructions": format!("Reference agent instance {}", agent.instance()),
            });
            let mut resp = rpc_result(id, result);
            if !agent.mcp_stateless
                && let Ok(v) = new_session.parse()
            {
                resp.headers_mut().insert(MCP_SESSION_ID, v);
            }
            resp
        }
        "ping" => rpc_result(id, json!({})),
        "tools/list" => rpc_result(id, json!({ "tools": [echo_tool()] })),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str);
            let text = params
                .pointer("/arguments/text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name != Some("echo") {
                return rpc_error(StatusCode::OK, id, -32602, "Unknown tool");
            }
            rpc_result(
                id,
                json!({
                    "content": [{ "type": "text", "text": text }],
                    "structuredContent": {
                        "text": text,
                        "instance": agent.instance(),
                        "session_id": runtime_session,
                    },
                    "isError": false,
                }),
            )
        }
        _ => rpc_error(StatusCode::OK, id, -32601, "Method not found"),
    }
}

fn echo_tool() -> Value {
    let string = json!({ "type": "string" });
    json!({
        "name": "echo",
        "description": "Echoes `text`, naming the backend instance and session that answered.",
        "inputSchema": {
            "type": "object",
            "properties": { "text": string },
            "required": ["text"],
        },
        "outputSchema": {
            "type": "object",
            "properties": { "text": string, "instance": string, "session_id": string },
            "required": ["text", "instance", "session_id"],
        },
    })
}

fn rpc_result(id: Value, result: Value) -> Response {
    axum::Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
        ),
    )
        .into_response()
}
