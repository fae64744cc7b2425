//! The one `ProxyHttp` implementation. Each hook delegates to one stage:
//!
//! | hook | stage |
//! |---|---|
//! | `request_filter` | [`request::admit`]: route, session id, admission, placement; or answer/refuse |
//! | `upstream_peer` | the backend address `admit` chose for the listener's protocol |
//! | `upstream_request_filter` | path rewrite (AWS paths) and [`headers::to_backend`] |
//! | `request_body_filter` | count body bytes against the payload cap (chunked bodies) |
//! | `upstream_response_filter` | [`response::from_backend`]: backend errors → 424, learn `Mcp-Session-Id` |
//! | `response_filter` | echo the session id to the client |
//! | `fail_to_proxy` | render the error for the listener's face; note a failed backend |
//! | `logging` | [`observe::record`]; end a session whose backend failed |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use conf::Protocol;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;
use pingora::{ErrorSource, ErrorType};
use routing::directory::EndReason;

use routing::provider::BackendAddr;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::front;
use crate::headers;
use crate::observe;
use crate::request::{self, Decision};
use crate::respond::{error_face, linger, refused_call_id, respond_error, respond_json};
use crate::response;
use crate::state::Shared;
use crate::telemetry;
use crate::ws::FrameMeter;

/// How long connecting to a backend may take before the request fails with 424.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One listener of the gateway: the shared state and the protocol face it serves.
pub struct Gateway {
    pub shared: Arc<Shared>,
    pub face: Protocol,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.shared)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let websocket = session.is_upgrade_req();
        front::head_complete(session, &ctx.snapshot.config.limits, websocket);
        let Some(_admitting) = self.shared.handover.enter() else {
            ctx.relayed = true;
            return Ok(false);
        };
        if let Some(t) = &self.shared.telemetry {
            ctx.otel = Some(t.request_span(session.req_header(), self.face.as_str()));
        }
        match request::admit(&self.shared, self.face, session, ctx).await {
            Ok(Decision::Proxy) => Ok(false),
            Ok(Decision::Answer(status, body)) => {
                respond_json(session, status, &body, ctx.session_id()).await?;
                Ok(true)
            }
            Ok(d @ (Decision::Command | Decision::Shell | Decision::Stream)) => {
                // Boxed: their state is large and rare, and would otherwise be part of (and
                // copied with) every request's future.
                let done = match d {
                    Decision::Shell => Box::pin(crate::shells::run(session, ctx)).await,
                    Decision::Stream => Box::pin(crate::resumable::run(self, session, ctx)).await,
                    _ => Box::pin(crate::commands::run(session, ctx)).await,
                };
                if let Err(e) = done {
                    respond_error(
                        session,
                        error_face(self.face, ctx),
                        &e,
                        ctx.session_id(),
                        None,
                    )
                    .await;
                    linger(session).await;
                    ctx.error = Some(e);
                }
                Ok(true)
            }
            Err(e) => {
                let rpc_id = match self.face {
                    Protocol::Mcp | Protocol::A2a => refused_call_id(session).await,
                    Protocol::Http => None,
                };
                respond_error(
                    session,
                    error_face(self.face, ctx),
                    &e,
                    ctx.session_id(),
                    rpc_id.as_ref(),
                )
                .await;
                // The connection closes after an error; read what is left of the request first,
                // or the unread bytes make the close a reset that can swallow the answer.
                linger(session).await;
                ctx.error = Some(e);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if ctx.relayed {
            let Some(path) = self.shared.handover.relay_path(self.face).await else {
                ctx.error = Some(GatewayError::ShuttingDown);
                return Error::e_explain(ErrorType::ConnectRefused, "the new process is not up");
            };
            let path = path.to_str().ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "relay socket path is not UTF-8")
            })?;
            let mut peer = HttpPeer::new_uds(path, false, String::new())?;
            peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
            peer.options.read_timeout = Some(ctx.snapshot.config.limits.stream_timeout);
            return Ok(Box::new(peer));
        }
        if let Some(peer) = crate::endpoints::peer(ctx) {
            return Ok(peer);
        }
        if std::mem::take(&mut ctx.replace_backend) {
            ctx.replaced = true;
            if let Err(e) = request::replace_backend(&self.shared, ctx).await {
                ctx.error = Some(e);
                return Error::e_explain(ErrorType::ConnectRefused, "no backend to re-place");
            }
        }
        let mut peer = match &ctx.peer {
            Some(BackendAddr::Tcp(addr)) => HttpPeer::new(*addr, false, String::new()),
            // A backend on a host: its relay; upstream_request_filter names the backend.
            Some(BackendAddr::Relay(relay)) => HttpPeer::new(relay.host, false, String::new()),
            Some(BackendAddr::Unix(path)) => {
                let path = path.to_str().ok_or_else(|| {
                    Error::explain(ErrorType::InternalError, "backend socket path is not UTF-8")
                })?;
                HttpPeer::new_uds(path, false, String::new())?
            }
            None => {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no backend was chosen",
                ));
            }
        };
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        ctx.peer_chosen = Some(std::time::Instant::now());
        peer.options.read_timeout = Some(ctx.upstream_read_timeout());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Refused before anything was sent: the backend died while its session was idle. The
        // session gets a new backend and this request goes there, once.
        let refused = matches!(
            e.etype(),
            ErrorType::ConnectRefused | ErrorType::ConnectError
        ) && !is_local_exhaustion(&e);
        if refused
            && ctx.port.is_none()
            && !ctx.replaced
            && ctx.error.is_none()
            && ctx.ticket.as_ref().is_some_and(|t| !t.session().is_ended())
        {
            ctx.replace_backend = true;
            e.set_retry(true);
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (false, Some(start)) = (reused, ctx.peer_chosen) {
            let took = start.elapsed();
            ctx.upstream_connect = Some(took);
            metrics::histogram!("sessiongate_upstream_connect_seconds").record(took.as_secs_f64());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.relayed {
            // As it came, with who sent it (a relayed request's own header passes on).
            if let Some(ip) = front::client_ip(session) {
                upstream.insert_header(crate::handover::CLIENT_HEADER, ip.to_string())?;
            }
            return Ok(());
        }
        if ctx.port.is_some() {
            crate::endpoints::to_port(upstream, ctx);
            return Ok(());
        }
        let runtime = ctx
            .route
            .and_then(|r| ctx.snapshot.config.runtimes.get(r.runtime));
        if let Some(path) = ctx
            .target
            .zip(runtime)
            .and_then(|(t, r)| t.backend_path(r))
            .filter(|p| *p != upstream.uri.path())
        {
            // AWS-style paths reach the container path (or the runtime's `protocol_path`); the
            // query (session id, custom headers for WebSocket clients) stays.
            let target = match upstream.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            if let Ok(uri) = target.parse::<http::Uri>() {
                upstream.set_uri(uri);
            }
        }
        let allowlist = runtime.map_or(&[][..], |r| r.request_header_allowlist.as_slice());
        headers::to_backend(
            upstream,
            ctx.session_id().unwrap_or_default(),
            &ctx.request_id,
            allowlist,
        );
        if let (Some(_), Some(principal), Some(runtime)) =
            (&ctx.snapshot.config.identity, &ctx.principal, runtime)
        {
            let claims = crate::identity::Claims {
                principal: principal.as_str(),
                runtime: &runtime.name,
                session: ctx.session_id().unwrap_or_default(),
                user: upstream
                    .headers
                    .get(&headers::USER_ID_NAME)
                    .and_then(|v| v.to_str().ok()),
            };
            if let Some(token) = self.shared.workload_token(&ctx.snapshot.config, &claims) {
                upstream.insert_header(crate::identity::HEADER, &*token)?;
            }
        }
        let split = runtime.filter(|r| r.endpoints.iter().any(|e| e.targets.len() > 1));
        let experiment = split.zip(ctx.ticket.as_ref()).and_then(|(r, t)| {
            let qualifier =
                routing::face::query_param(upstream.uri.query().unwrap_or(""), "qualifier");
            routing::placement::experiment(
                r,
                &ctx.snapshot.config.aws,
                qualifier,
                t.session().version,
            )
        });
        headers::experiment_baggage(
            upstream,
            experiment
                .as_ref()
                .map(|(arn, variant)| (arn.as_str(), variant.as_str())),
        );
        // With traces on, the backend's work is a child of this request's span.
        if let Some(tp) = ctx.otel.as_ref().and_then(telemetry::traceparent) {
            upstream.insert_header(headers::TRACEPARENT, tp)?;
        }
        if let Some(BackendAddr::Relay(relay)) = &ctx.peer {
            for (name, value) in relay.headers() {
                upstream.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.relayed {
            return Ok(());
        }
        if session.was_upgraded() {
            return self.websocket_frames(session, body.as_deref(), ctx).await;
        }
        if let Some(verified) = ctx.verified_body.take() {
            // The body was read and its SigV4 hash checked in the request stage; this is the
            // one call Pingora makes for a body already consumed.
            ctx.request_body_bytes = verified.len() as u64;
            *body = Some(verified);
            return Ok(());
        }
        if let Some(chunk) = body {
            ctx.request_body_bytes += chunk.len() as u64;
            let limit = ctx.snapshot.config.limits.max_payload_bytes;
            if ctx.request_body_bytes > limit {
                ctx.error = Some(GatewayError::PayloadTooLarge { limit });
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the payload cap",
                );
            }
        }
        // A body trickling in below the minimum rate holds its session as surely as a stalled
        // one (which the read timeout ends): both are a 408.
        if !end_of_stream
            && front::body_too_slow(
                ctx.started,
                ctx.request_body_bytes,
                &ctx.snapshot.config.limits,
            )
        {
            ctx.error = Some(GatewayError::RequestTimeout);
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "request body below the minimum rate",
            );
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.relayed {
            return Ok(None);
        }
        // The stream cap: checked as data flows (a silent stream is ended by the read timeout).
        if ctx.started.elapsed() > ctx.snapshot.config.limits.stream_timeout {
            ctx.stream_expired = true;
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "stream longer than stream_timeout_secs",
            );
        }
        Ok(None)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.relayed {
            return Ok(());
        }
        let upgrade_requested = session.is_upgrade_req();
        response::from_backend(
            &self.shared,
            session.req_header(),
            upgrade_requested,
            upstream,
            ctx,
        )
        .await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.relayed {
            return Ok(());
        }
        if let Some(url) = crate::endpoints::url(session, ctx) {
            upstream.insert_header(crate::endpoints::URL_HEADER, url)?;
        }
        response::to_client(session.req_header(), upstream, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let error = match &ctx.error {
            Some(known) => Some(known.clone()),
            None => classify(e, ctx),
        };
        let mut code = 0;
        if let Some(error) = error {
            if session
                .response_written()
                .is_none_or(|r| r.status.is_informational() && r.status != 101)
            {
                code = respond_error(
                    session,
                    error_face(self.face, ctx),
                    &error,
                    ctx.session_id(),
                    None,
                )
                .await;
                if matches!(error, GatewayError::PayloadTooLarge { .. }) {
                    linger(session).await;
                }
            }
            ctx.error = Some(error);
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn request_head_error(&self, e: &Error) -> Option<(ResponseHeader, Bytes)> {
        let error = match e.etype() {
            ErrorType::InvalidHTTPHeader => GatewayError::MalformedRequest,
            ErrorType::ReadError | ErrorType::ReadTimedout if front::head_deadline_passed(e) => {
                GatewayError::RequestTimeout
            }
            // An idle keep-alive connection closing, or a client gone: nobody to answer.
            _ => return None,
        };
        metrics::counter!("sessiongate_requests_refused_total", "reason" => error.reason())
            .increment(1);
        error.render(self.face.into(), None, None).ok()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.relayed {
            // The new process logs and counts it.
            return;
        }
        observe::record(self.face, session, ctx, &self.shared.stats);
        if let Some(cx) = ctx.otel.take() {
            observe::finish_span(&cx, session, ctx);
        }
        if ctx.backend_failed
            && let Some(ticket) = &ctx.ticket
        {
            // The next request with this id gets a fresh backend.
            let s = Arc::clone(ticket.session());
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                let reason = match s.backend() {
                    Some(b) if b.oom_killed() => EndReason::OutOfMemory,
                    Some(b) if b.has_exited() => EndReason::BackendExited,
                    _ => EndReason::Unhealthy,
                };
                if shared.directory.end(&s, reason).await {
                    tracing::info!(session = %s.id, reason = reason.as_str(), "session ended");
                    metrics::counter!("sessiongate_sessions_ended_total", "reason" => reason.as_str())
                        .increment(1);
                }
            });
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        // Refusals we answered on purpose, and clients that hung up, are not gateway errors.
        ctx.error.is_some() || e.esource() == &ErrorSource::Downstream
    }
}

/// What the client is told about a failure the gateway did not decide itself, and whether the
/// backend is to blame (its session then ends).
fn classify(e: &Error, ctx: &mut RequestCtx) -> Option<GatewayError> {
    let session = ctx.ticket.as_ref().map(|t| t.session());
    match e.esource() {
        // The gateway's own descriptors or memory ran out: no backend is to blame.
        _ if is_local_exhaustion(e) => Some(GatewayError::GatewayExhausted),
        // A backend that is slow is not broken: its session stays.
        ErrorSource::Upstream if matches!(e.etype(), ErrorType::ReadTimedout) => {
            Some(GatewayError::BackendTimeout)
        }
        // The health checks ended the session under this request.
        ErrorSource::Upstream
            if session.is_some_and(|s| s.end_reason() == Some(EndReason::Unhealthy)) =>
        {
            Some(GatewayError::BackendUnhealthy)
        }
        // Its session was stopped under it: the backend is gone on purpose.
        ErrorSource::Upstream if session.is_some_and(|s| s.is_ended()) => {
            Some(GatewayError::SessionStopped)
        }
        // An app port of the session failing is the app's business: the session stays.
        ErrorSource::Upstream if ctx.port.is_some() => ctx
            .port
            .as_ref()
            .map(|p| GatewayError::PortUnreachable(p.port)),
        ErrorSource::Upstream => {
            ctx.backend_failed = true;
            Some(GatewayError::BackendUnreachable)
        }
        _ if ctx.stream_expired => None,
        // A body that stopped coming, or came with broken framing.
        ErrorSource::Downstream if matches!(e.etype(), ErrorType::ReadTimedout) => {
            Some(GatewayError::RequestTimeout)
        }
        ErrorSource::Downstream if is_malformed(e) => Some(GatewayError::MalformedRequest),
        // The client went away: nobody to answer.
        ErrorSource::Downstream => None,
        ErrorSource::Internal | ErrorSource::Unset => Some(GatewayError::Internal),
    }
}

/// Broken request framing found while reading the body (bad chunk sizes, a body cut short).
fn is_malformed(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::InvalidHTTPHeader)
        || matches!(e.etype(), ErrorType::Custom(name) if *name == "InvalidChunk")
}

/// True when the error's root cause is the gateway running out of descriptors or memory.
fn is_local_exhaustion(e: &Error) -> bool {
    front::io_cause(e).is_some_and(routing::ping::is_local_exhaustion)
}

impl Gateway {
    /// The client's WebSocket frames: over a limit, the client gets a close frame (1009 or
    /// 1008) and the tunnel ends.
    async fn websocket_frames(
        &self,
        session: &mut Session,
        data: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(data) = data else { return Ok(()) };
        let limits = &ctx.snapshot.config.limits;
        if ctx.started.elapsed() > limits.stream_timeout {
            ctx.stream_expired = true;
            return Error::e_explain(
                ErrorType::ReadTimedout,
                "WebSocket longer than stream_timeout_secs",
            );
        }
        let meter = ctx.ws_meter.get_or_insert_with(|| {
            FrameMeter::new(
                limits.websocket_max_frame_bytes,
                limits.websocket_max_frames_per_second,
            )
        });
        if let Err(violation) = meter.feed(data) {
            ctx.error = Some(GatewayError::WebSocketLimit(violation.close_code()));
            let _ = session
                .write_response_body(Some(violation.close_frame()), false)
                .await;
            return Error::e_explain(ErrorType::HTTPStatus(400), "WebSocket limit exceeded");
        }
        Ok(())
    }
}
