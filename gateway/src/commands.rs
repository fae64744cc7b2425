//! `InvokeAgentRuntimeCommand` (`POST /runtimes/{id}/commands`): a command run inside the
//! session's backend, its output streamed back as AWS event-stream `chunk` events.
//!
//! The request stage found or placed the session as for an invocation (same authentication,
//! ownership, quotas; a new id starts a session). Here: the body is read and checked against
//! the model's bounds, the command is started where the session's isolation is
//! ([`routing::provider::ExecAt`]: by the gateway itself for `process` backends, else on the
//! backend's exec socket), and its event stream is copied to the client as it comes, one read
//! at a time, so a slow reader slows the command down instead of filling memory. The client
//! going away closes the exec connection, which kills the command's whole process tree.

use std::time::Duration;

use agent::exec::{self, CommandRequest};
use bytes::Bytes;
use pingora::proxy::Session;
use routing::provider::ExecAt;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;

/// How long past the command's own timeout the gateway waits for its `contentStop`.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Runs the command of an admitted request. An `Err` is returned only before the answer's
/// head was written; after that a failure ends the stream with an exception event.
pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let body = match ctx.verified_body.take() {
        Some(b) => b,
        None => read_body(session).await?,
    };
    let req = CommandRequest::parse(&body).map_err(GatewayError::InvalidCommand)?;
    let exec_at = exec_at(ctx)?;
    let stream = start(&req, exec_at, backend_pid(ctx)).await?;

    let head = [
        ("content-type", exec::EVENT_STREAM),
        ("transfer-encoding", "chunked"),
    ];
    let session_id = ctx.session_id().map(str::to_owned);
    if !crate::exec_conn::write_head(session, 200, &head, session_id.as_deref()).await? {
        return Ok(());
    }
    relay(session, stream, req.timeout() + STOP_GRACE).await;
    Ok(())
}

/// The session's backend process, when this process runs it.
pub fn backend_pid(ctx: &RequestCtx) -> Option<u32> {
    ctx.ticket
        .as_ref()
        .and_then(|t| t.session().backend())
        .and_then(|b| b.handed())
        .and_then(|h| h.process)
        .map(|(pid, _)| pid)
}

/// Where this session's commands (and shells) run.
pub fn exec_at(ctx: &RequestCtx) -> Result<ExecAt, GatewayError> {
    let ticket = ctx.ticket.as_ref().ok_or(GatewayError::Internal)?;
    let session = ticket.session();
    let backend = session.backend().ok_or(GatewayError::SessionEnding)?;
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let provider = ctx
        .snapshot
        .providers
        .get(runtime, session.version)
        .ok_or(GatewayError::SessionEnding)?;
    provider
        .exec_at(backend)
        .ok_or(GatewayError::CommandsUnavailable(
            "Commands and shells run inside a session's own backend: this runtime's sessions are \
         served by static endpoints the gateway did not start (use a process, sandbox or microvm \
         provider)",
        ))
}

/// Reads a small request body (a command, a stop): at most [`exec::MAX_REQUEST_LINE`] bytes.
pub async fn read_body(session: &mut Session) -> Result<Bytes, GatewayError> {
    let limit = exec::MAX_REQUEST_LINE;
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.into()),
            Err(_) => return Err(GatewayError::IncompleteBody),
        }
    }
}

/// Starts the command and returns its event stream.
async fn start(
    req: &CommandRequest,
    at: ExecAt,
    pid: Option<u32>,
) -> Result<Box<dyn crate::exec_conn::Conn>, GatewayError> {
    let line = serde_json::to_vec(req).map_err(|_| GatewayError::Internal)?;
    crate::exec_conn::open(at, pid, &line).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot reach the session's exec socket");
        GatewayError::BackendUnreachable
    })
}

/// Copies the event stream to the client until it ends, the client goes, or `limit` passes.
async fn relay(session: &mut Session, mut stream: impl AsyncRead + Unpin, limit: Duration) {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let got = tokio::select! {
            got = stream.read(&mut buf) => got,
            // Nothing more is expected from the client: this resolves when it hangs up.
            _ = session.downstream_session.read_body_or_idle(true) => return,
            () = &mut deadline => {
                let e = exec::exception("internalServerException", "The command did not finish in time");
                let _ = session.write_response_body(Some(e), true).await;
                return;
            }
        };
        match got {
            Ok(0) => break,
            Ok(n) => {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a command's event stream broke off");
                let e =
                    exec::exception("internalServerException", "The command's output broke off");
                let _ = session.write_response_body(Some(e), true).await;
                return;
            }
        }
    }
    let _ = session.write_response_body(None, true).await;
}
