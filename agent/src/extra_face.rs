//! `--extra-port`: an extra port of the agent, as an app inside a session serves besides the
//! contract's (reached through the gateway's session endpoints):
//! - `GET /ws`: a WebSocket echo;
//! - `GET /events?n=N`: N SSE events, 20 ms apart;
//! - anything else: `{"port", "instance", "method", "path", "session_id"}` (what it saw).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::Agent;

pub fn router(agent: Arc<Agent>, port: u16) -> Router {
    Router::new()
        .route("/ws", get(super::http_face::ws))
        .route("/events", get(events))
        .fallback(
            move |State(agent): State<Arc<Agent>>, req: Request| async move {
                let session = req
                    .headers()
                    .get("x-amzn-bedrock-agentcore-runtime-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                axum::Json(json!({
                    "port": port,
                    "instance": agent.instance(),
                    "method": req.method().as_str(),
                    "path": req.uri().path_and_query().map(|p| p.as_str()),
                    "session_id": session,
                }))
            },
        )
        .with_state(agent)
}

async fn events(State(agent): State<Arc<Agent>>, req: Request) -> Response {
    let n = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("n=")?.parse::<u64>().ok())
        .unwrap_or(3);
    let work = agent.work();
    let seen = json!({ "instance": agent.instance() });
    super::http_face::sse(n.min(10_000), Duration::from_millis(20), seen, work).into_response()
}
