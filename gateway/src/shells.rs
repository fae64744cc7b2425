//! Interactive shells (`GET /runtimes/{id}/ws/shells?shellId=…`): a WebSocket the gateway
//! answers itself, bridged to a PTY inside the session's backend (`agent::shell`).
//!
//! The request stage authenticated the upgrade as for `/ws` (SigV4 header, presigned query,
//! bearer subprotocol) and found or placed the session. Here the gateway accepts the WebSocket
//! (echoing the shell and session ids the SDK's client adopts for reconnects), then carries the
//! SDK's frames — a channel byte and its payload per binary message — to the shell's exec socket
//! as length-prefixed frames and back (`crate::exec_conn` reaches it: here for `process`
//! backends, whose shells end with the backend; an exec socket; a host's relay). The open
//! WebSocket holds the session in flight: it is not idle while a shell is attached.

use std::time::Duration;

use agent::shell::{self, FrameReader, channel, write_frame};
use futures_util::{SinkExt, StreamExt};
use pingora::proxy::Session;
use routing::face::query_param;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;

const SHELL_ID: &str = "X-Amzn-Bedrock-AgentCore-Shell-Id";
/// How long the bridge may take to pass on what a departed client sent last.
const DRAIN: Duration = Duration::from_secs(5);
/// The SDK's "kicked by a new connection" close code.
const KICKED: u16 = 4000;

pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let req = session.req_header();
    let query = req.uri.query().unwrap_or("");
    let id = match query_param(query, "shellId") {
        Some(id) if shell::valid_shell_id(id) => id.to_owned(),
        Some(_) => return Err(GatewayError::InvalidShellId),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let key = req
        .headers
        .get("sec-websocket-key")
        .ok_or(GatewayError::MalformedRequest)?
        .as_bytes()
        .to_owned();
    let bearer_offered = req
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == auth::BEARER_SUBPROTOCOL);

    let line = serde_json::json!({ "shell": id }).to_string();
    let at = crate::commands::exec_at(ctx)?;
    let pid = crate::commands::backend_pid(ctx);
    let exec = crate::exec_conn::open(at, pid, line.as_bytes())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot reach the session's exec socket");
            GatewayError::BackendUnreachable
        })?;

    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut head = vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept.as_str()),
        (SHELL_ID, id.as_str()),
    ];
    if bearer_offered {
        head.push(("sec-websocket-protocol", auth::BEARER_SUBPROTOCOL));
    }
    let session_id = ctx.session_id().map(str::to_owned);
    if !crate::exec_conn::write_head(session, 101, &head, session_id.as_deref()).await? {
        return Ok(());
    }
    let (ours, theirs) = tokio::io::duplex(2 * shell::MAX_FRAME);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(shell::MAX_FRAME + 1);
    config.max_frame_size = Some(shell::MAX_FRAME + 1);
    let ws = WebSocketStream::from_raw_socket(theirs, Role::Server, Some(config)).await;
    let mut bridge = tokio::spawn(bridge(ws, exec));
    crate::exec_conn::carry(session, ours).await;
    // The client is gone: what it sent last (keystrokes, then its close) still reaches the
    // shell before the bridge lets go of it.
    if tokio::time::timeout(DRAIN, &mut bridge).await.is_err() {
        bridge.abort();
    }
    Ok(())
}

/// WebSocket messages ↔ the shell's frames.
async fn bridge(
    mut ws: WebSocketStream<tokio::io::DuplexStream>,
    exec: Box<dyn crate::exec_conn::Conn>,
) {
    let (read, mut write) = tokio::io::split(exec);
    let mut read = FrameReader::new(read);
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }))
    };
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => {
                    if write_frame(&mut write, data[0], &data[1..]).await.is_err() {
                        let _ = ws.send(close(1011, "the shell is gone")).await;
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // text, pings (answered by the codec), empty messages
            },
            frame = read.next() => match frame {
                Ok(Some((channel::KICKED, _))) => {
                    let _ = ws.send(close(KICKED, "kicked by a new connection")).await;
                    return;
                }
                Ok(Some((ch, payload))) => {
                    let mut m = Vec::with_capacity(payload.len() + 1);
                    m.push(ch);
                    m.extend_from_slice(&payload);
                    if ws.send(Message::Binary(m.into())).await.is_err() {
                        return;
                    }
                }
                // The shell ended (its exit status was the last frame), or its backend did.
                Ok(None) => {
                    let _ = ws.send(close(1000, "")).await;
                    return;
                }
                Err(_) => {
                    let _ = ws.send(close(1011, "the shell's connection broke")).await;
                    return;
                }
            },
        }
    }
}
