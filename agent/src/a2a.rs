//! The agent's A2A port: an agent card and JSON-RPC `message/send` / `message/stream` (SSE)
//! that echo the text.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Agent;

pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/", post(rpc))
        .route("/.well-known/agent-card.json", get(card))
        .with_state(agent)
}

async fn card(State(agent): State<Arc<Agent>>) -> Response {
    axum::Json(json!({
        "protocolVersion": "0.3.0",
        "name": "sessiongate reference agent",
        "description": "Echoes each message and names the backend instance that answered.",
        "url": agent.a2a_url,
        "preferredTransport": "JSONRPC",
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": { "streaming": true },
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{
            "id": "echo",
            "name": "Echo",
            "description": "Answers with the text it was sent.",
            "tags": ["echo", "test"],
        }],
    }))
    .into_response()
}

async fn rpc(State(agent): State<Arc<Agent>>, headers: HeaderMap, body: Bytes) -> Response {
    let _work = agent.work();
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return reply(Value::Null, Err((-32700, "Parse error")));
    };
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let method = msg.get("method").and_then(Value::as_str);
    match method {
        Some("message/send" | "message/stream") => {
            let Some(message) = msg.pointer("/params/message") else {
                return reply(id, Err((-32602, "params.message is required")));
            };
            let text: String = message
                .get("parts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            let session = headers
                .get("x-amzn-bedrock-agentcore-runtime-session-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut answer = json!({
                "kind": "message",
                "role": "agent",
                "messageId": crate::random_uuid().to_string(),
                "parts": [{ "kind": "text", "text": text }],
                "metadata": { "instance": agent.instance(), "session_id": session },
            });
            if let Some(ctx) = message.get("contextId") {
                answer["contextId"] = ctx.clone();
            }
            if method == Some("message/stream") {
                // SSE of JSON-RPC responses; a Message is the final event of its stream.
                let event = json!({ "jsonrpc": "2.0", "id": id, "result": answer });
                return (
                    [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                    format!("data: {event}\n\n"),
                )
                    .into_response();
            }
            reply(id, Ok(answer))
        }
        Some(_) => reply(id, Err((-32601, "Method not found"))),
        None => reply(id, Err((-32600, "Invalid Request"))),
    }
}

fn reply(id: Value, outcome: Result<Value, (i64, &str)>) -> Response {
    let body = match outcome {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err((code, message)) => {
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
        }
    };
    axum::Json(body).into_response()
}
