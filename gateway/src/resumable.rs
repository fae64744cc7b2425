//! Resumable SSE invocations (`runtimes[].resumable_streams`).
//!
//! The gateway sends such an invocation to the backend itself (Pingora's HTTP connector, the
//! same peer and upstream headers as a proxied request) and, when the answer is an SSE stream,
//! hands it to a pump task that owns it: the pump numbers and keeps the events
//! (`crate::replay`) until the backend ends the stream, whether or not the client is still
//! there. The client tails the buffer. A client that dropped reconnects with the same session
//! id and `Last-Event-ID: {stream}.{event}` (as EventSource and the SSE client libraries do) and
//! gets the events after it, then the live rest — none lost, none twice. A non-SSE answer is
//! passed on as it is; errors as for any invocation.
//!
//! The pump holds the session in flight while the stream runs (it is not idle while its agent
//! still streams), and never longer than `stream_timeout_secs`.

use std::sync::Arc;

use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::{ProxyHttp, Session};
use routing::Ticket;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::proxy::Gateway;
use crate::replay::{Read, Replay, SessionStreams};
use crate::state::Shared;

const LAST_EVENT_ID: &str = "last-event-id";

/// `Last-Event-ID` of a resuming request: `{stream}.{event}` as this gateway numbered it.
pub fn last_event_id(session: &Session) -> Option<Result<(u64, u64), GatewayError>> {
    let v = session.req_header().headers.get(LAST_EVENT_ID)?;
    let parsed = v
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once('.'))
        .and_then(|(s, e)| Some((s.parse().ok()?, e.parse().ok()?)));
    Some(parsed.ok_or(GatewayError::StreamNotResumable(
        "Last-Event-ID must be an event id this gateway sent (`{stream}.{event}`)",
    )))
}

/// Whose streams these are: the runtime, the principal and the session id (a session id used
/// again by another caller, or on another runtime, never finds them).
fn buffer_key(ctx: &RequestCtx) -> String {
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    format!(
        "{}\0{}\0{}",
        ctx.snapshot.runtime_names[runtime],
        ctx.principal.as_ref().map_or("", |p| p.as_str()),
        ctx.session_id().unwrap_or_default()
    )
}

/// Serves a resumable invocation: a resumption, or a new one.
pub async fn run(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    match last_event_id(session) {
        Some(at) => resume(gw, session, ctx, at?).await,
        None => start(gw, session, ctx).await,
    }
}

async fn resume(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    (stream, after): (u64, u64),
) -> Result<(), GatewayError> {
    let id = buffer_key(ctx);
    let streams = &gw.shared.streams;
    let Some(replay) = streams.find(&id, stream) else {
        metrics::counter!("sessiongate_stream_resumes_total", "outcome" => "not_found")
            .increment(1);
        return Err(GatewayError::StreamNotResumable(
            "No such stream in this session any more (it ended longer ago than \
             resumable_streams.retention_secs, or ran on another gateway process)",
        ));
    };
    if streams.read_after(&replay, after) == Read::Gap {
        metrics::counter!("sessiongate_stream_resumes_total", "outcome" => "evicted").increment(1);
        return Err(GatewayError::StreamNotResumable(
            "The events after Last-Event-ID were evicted from the replay buffer \
             (resumable_streams.buffer_bytes_per_session)",
        ));
    }
    metrics::counter!("sessiongate_stream_resumes_total", "outcome" => "resumed").increment(1);
    if write_sse_head(session, ctx).await? {
        tail(&gw.shared, session, ctx, &replay, after).await;
    }
    Ok(())
}

async fn start(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    let up = send(gw, session, ctx).await?;
    let mut head = up
        .response_header()
        .cloned()
        .ok_or(GatewayError::BackendUnreachable)?;
    crate::response::from_backend(&gw.shared, session.req_header(), false, &mut head, ctx)
        .await
        .map_err(|_| ctx.error.take().unwrap_or(GatewayError::Internal))?;
    let sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    if !sse {
        return relay(session, ctx, up, head).await;
    }
    let limits = ctx.snapshot.config.resumable_streams.clone();
    let id = buffer_key(ctx);
    let (buffer, replay) = gw.shared.streams.open(&id, &limits);
    let deadline =
        tokio::time::Instant::from_std(ctx.started) + ctx.snapshot.config.limits.stream_timeout;
    let pump = Pump {
        shared: Arc::clone(&gw.shared),
        buffer,
        replay: Arc::clone(&replay),
        _ticket: ctx.ticket.take(),
        limits,
    };
    tokio::spawn(pump.run(up, deadline));
    if write_sse_head(session, ctx).await? {
        tail(&gw.shared, session, ctx, &replay, 0).await;
    }
    Ok(())
}

/// Sends the invocation to the session's backend: its head as the proxy would send it, then
/// the client's body. Returns once the backend's answer head is in.
async fn send(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<HttpSession, GatewayError> {
    let peer = gw
        .upstream_peer(session, ctx)
        .await
        .map_err(|_| ctx.error.take().unwrap_or(GatewayError::BackendUnreachable))?;
    let mut head = session.req_header().clone();
    gw.upstream_request_filter(session, &mut head, ctx)
        .await
        .map_err(|_| GatewayError::Internal)?;
    let (mut up, _) = gw
        .shared
        .connector
        .get_http_session(&*peer)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot reach the session's backend");
            ctx.backend_failed = true;
            GatewayError::BackendUnreachable
        })?;
    up.set_read_timeout(Some(ctx.upstream_read_timeout()));
    let broken = |_| GatewayError::BackendUnreachable;
    up.write_request_header(Box::new(head))
        .await
        .map_err(broken)?;
    let limit = ctx.snapshot.config.limits.max_payload_bytes;
    if let Some(body) = ctx.verified_body.take() {
        ctx.request_body_bytes = body.len() as u64;
        up.write_request_body(body, true).await.map_err(broken)?;
    } else {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    ctx.request_body_bytes += chunk.len() as u64;
                    if ctx.request_body_bytes > limit {
                        return Err(GatewayError::PayloadTooLarge { limit });
                    }
                    up.write_request_body(chunk, false).await.map_err(broken)?;
                }
                Ok(None) => break,
                Err(_) => return Err(GatewayError::IncompleteBody),
            }
        }
    }
    up.finish_request_body().await.map_err(broken)?;
    up.read_response_header().await.map_err(|e| {
        if matches!(e.etype(), pingora::ErrorType::ReadTimedout) {
            GatewayError::BackendTimeout
        } else {
            GatewayError::BackendUnreachable
        }
    })?;
    Ok(up)
}

/// A non-SSE answer: passed on as it came.
async fn relay(
    session: &mut Session,
    ctx: &RequestCtx,
    mut up: HttpSession,
    mut head: ResponseHeader,
) -> Result<(), GatewayError> {
    if let Some(id) = ctx.session_id() {
        head.insert_header(crate::headers::SESSION_ID, id)
            .map_err(|_| GatewayError::Internal)?;
    }
    if session
        .write_response_header(Box::new(head), false)
        .await
        .is_err()
    {
        return Ok(());
    }
    while let Ok(Some(chunk)) = up.read_response_body().await {
        if session
            .write_response_body(Some(chunk), false)
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    let _ = session.write_response_body(None, true).await;
    Ok(())
}

/// `200 text/event-stream`, the session id and (for a runtime with `allowed_ports`) its
/// session endpoint. `Ok(false)`: the client is gone.
async fn write_sse_head(session: &mut Session, ctx: &RequestCtx) -> Result<bool, GatewayError> {
    let url = crate::endpoints::url(session, ctx);
    let mut head = vec![
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
    ];
    if let Some(url) = url.as_deref() {
        head.push((crate::endpoints::URL_HEADER, url));
    }
    crate::exec_conn::write_head(session, 200, &head, ctx.session_id()).await
}

/// Writes the stream's events after `after` to the client, live, until the stream ends (then
/// the answer ends), the client goes, the stream cap passes, or the reader falls so far behind
/// that its next events were evicted (then the connection ends without a proper end: the
/// client sees a cut stream, and its resumption is told why).
async fn tail(
    shared: &Shared,
    session: &mut Session,
    ctx: &RequestCtx,
    replay: &Replay,
    mut after: u64,
) {
    let deadline =
        tokio::time::Instant::from_std(ctx.started) + ctx.snapshot.config.limits.stream_timeout;
    loop {
        let changed = replay.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        match shared.streams.read_after(replay, after) {
            Read::Events(events, last) => {
                for event in events {
                    if session
                        .write_response_body(Some(event), false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                after = last;
                continue;
            }
            Read::Done => {
                let _ = session.write_response_body(None, true).await;
                return;
            }
            Read::Gap => return,
            Read::Nothing => {}
        }
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Owns a stream's backend answer: reads it to its end into the replay buffer.
struct Pump {
    shared: Arc<Shared>,
    buffer: Arc<SessionStreams>,
    replay: Arc<Replay>,
    /// Holds the session in flight while its stream runs.
    _ticket: Option<Ticket>,
    limits: conf::ResumableStreams,
}

impl Pump {
    async fn run(self, mut up: HttpSession, deadline: tokio::time::Instant) {
        let streams = &self.shared.streams;
        loop {
            match tokio::time::timeout_at(deadline, up.read_response_body()).await {
                Ok(Ok(Some(chunk))) => {
                    streams.feed(&self.buffer, &self.replay, &chunk, &self.limits);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "a resumable stream's backend answer broke off");
                    break;
                }
                Err(_) => break,
            }
        }
        streams.finish(&self.buffer, &self.replay, &self.limits);
    }
}
