//! Interactive shells (`GET /runtimes/{id}/ws/shells?shellId=…`): a WebSocket the gateway
//! answers itself, bridged to a PTY inside the session's backend (`agent::shell`).
//!
//! The request stage authenticated the upgrade as for `/ws` (SigV4 header, presigned query,
//! bearer subprotocol) and found or placed the session. Here the gateway accepts the WebSocket
//! (echoing the shell and session ids the SDK's client adopts for reconnects), then carries the
//! SDK's frames — a channel byte and its payload per binary message — to the shell's exec socket
//! as length-prefixed frames and back. For `process` backends the shells live in this process,
//! one registry per backend, killed when the backend is gone. The open WebSocket holds the
//! session in flight: it is not idle while a shell is attached.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use agent::shell::{self, FrameReader, Shells, channel, write_frame};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use routing::face::query_param;
use routing::provider::{BackendAddr, ExecAt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::headers::SESSION_ID;

const SHELL_ID: &str = "X-Amzn-Bedrock-AgentCore-Shell-Id";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the bridge may take to pass on what a departed client sent last.
const DRAIN: Duration = Duration::from_secs(5);
/// The SDK's "kicked by a new connection" close code.
const KICKED: u16 = 4000;

trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Shells of `process` backends, by the backend's pid.
static LOCAL: LazyLock<DashMap<u32, Arc<Shells>>> = LazyLock::new(DashMap::new);

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

    let exec = connect(&id, crate::commands::exec_at(ctx)?, ctx).await?;

    let mut head = ResponseHeader::build(101, Some(6)).map_err(|_| GatewayError::Internal)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut ok = head.insert_header("upgrade", "websocket").is_ok()
        && head.insert_header("connection", "Upgrade").is_ok()
        && head.insert_header("sec-websocket-accept", accept).is_ok()
        && head.insert_header(SHELL_ID, id.as_str()).is_ok()
        && ctx
            .session_id()
            .is_none_or(|sid| head.insert_header(SESSION_ID, sid).is_ok());
    if bearer_offered {
        ok &= head
            .insert_header("sec-websocket-protocol", auth::BEARER_SUBPROTOCOL)
            .is_ok();
    }
    if !ok {
        return Err(GatewayError::Internal);
    }
    if session
        .write_response_header(Box::new(head), false)
        .await
        .is_err()
    {
        return Ok(());
    }
    let (ours, theirs) = tokio::io::duplex(2 * shell::MAX_FRAME);
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(shell::MAX_FRAME + 1);
    config.max_frame_size = Some(shell::MAX_FRAME + 1);
    let ws = WebSocketStream::from_raw_socket(theirs, Role::Server, Some(config)).await;
    let mut bridge = tokio::spawn(bridge(ws, exec));
    carry(session, ours).await;
    // The client is gone: what it sent last (keystrokes, then its close) still reaches the
    // shell before the bridge lets go of it.
    if tokio::time::timeout(DRAIN, &mut bridge).await.is_err() {
        bridge.abort();
    }
    Ok(())
}

/// Attaches to shell `id` where the session's isolation is.
async fn connect(id: &str, at: ExecAt, ctx: &RequestCtx) -> Result<Box<dyn Conn>, GatewayError> {
    match at {
        ExecAt::Local(env) => {
            let pid = ctx
                .ticket
                .as_ref()
                .and_then(|t| t.session().backend())
                .and_then(|b| b.handed())
                .and_then(|h| h.process)
                .map(|(pid, _)| pid)
                .ok_or(GatewayError::Internal)?;
            let shells = Arc::clone(&*LOCAL.entry(pid).or_insert_with(|| {
                let shells = Shells::new();
                tokio::spawn(end_with_backend(pid, Arc::clone(&shells)));
                shells
            }));
            let (ours, theirs) = tokio::io::duplex(2 * shell::MAX_FRAME);
            let id = id.to_owned();
            tokio::spawn(async move {
                let _ = shells.attach(&id, &env, theirs).await;
            });
            Ok(Box::new(ours))
        }
        ExecAt::Socket(addr) => {
            let line = format!("{}\n", serde_json::json!({ "shell": id }));
            let connect = async {
                let mut s: Box<dyn Conn> = match &addr {
                    BackendAddr::Unix(path) => {
                        Box::new(tokio::net::UnixStream::connect(&**path).await?)
                    }
                    BackendAddr::Tcp(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
                    BackendAddr::Relay(_) => return Err(std::io::Error::other("not relayed")),
                };
                s.write_all(line.as_bytes()).await?;
                Ok::<_, std::io::Error>(s)
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(s)) => Ok(s),
                _ => Err(GatewayError::BackendUnreachable),
            }
        }
    }
}

/// A `process` backend's shells end with it (its session ended, or it died).
async fn end_with_backend(pid: u32, shells: Arc<Shells>) {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return;
    };
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(pid_t, 0) } != 0 {
            break;
        }
    }
    LOCAL.remove(&pid);
    shells.kill_all();
}

/// Copies the upgraded connection between Pingora's session and the in-memory WebSocket until
/// either side ends.
async fn carry(session: &mut Session, mut ours: tokio::io::DuplexStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            got = session.read_request_body() => match got {
                Ok(Some(data)) => if ours.write_all(&data).await.is_err() { break },
                _ => break,
            },
            n = ours.read(&mut buf) => match n {
                Ok(n) if n > 0 => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if session.write_response_body(Some(data), false).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = session.write_response_body(None, true).await;
}

/// WebSocket messages ↔ the shell's frames.
async fn bridge(mut ws: WebSocketStream<tokio::io::DuplexStream>, exec: Box<dyn Conn>) {
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
