//! The request stage (`request_filter`): route → principal → declared-size cap → session id →
//! ownership and admission → the session's backend. Everything that can refuse a request
//! before a byte of its body is read happens here.

use std::sync::Arc;

use auth::Principal;
use conf::Protocol;
use pingora::proxy::Session;
use routing::face::query_param;
use routing::{Caller, Entry, OpenError, PlacementError, SessionId, Ticket, TicketError};

use crate::authn;
use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::headers::{MCP_SESSION_ID, SESSION_ID, USER_ID_NAME};
use crate::parking::Parking;
use crate::route::{self, RouteKind, Target};
use crate::state::{Shared, Snapshot};
use routing::EndReason;
use routing::directory::stop_tokens::{Stopped, valid_client_token};

/// What the request stage decided.
pub enum Decision {
    /// Proxy to `ctx.peer`.
    Proxy,
    /// The gateway answers by itself with this status and JSON body.
    Answer(u16, serde_json::Value),
    /// Run a command in the session's backend (`ctx.ticket`): `crate::commands`.
    Command,
    /// Open a shell in the session's backend: `crate::shells`.
    Shell,
    /// A resumable stream's invocation, or its resumption: `crate::resumable`.
    Stream,
}

pub async fn admit(
    shared: &Shared,
    face: Protocol,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Decision, GatewayError> {
    if shared.is_draining() {
        return Err(GatewayError::ShuttingDown);
    }
    let snapshot = Arc::clone(&ctx.snapshot);
    let config = &snapshot.config;
    if face == Protocol::Http
        && let Some(domain) = &config.session_endpoints.domain
        && let Some((port, token)) = crate::endpoints::host_form(session, domain)
    {
        let token = token.to_owned();
        return Box::pin(crate::endpoints::admit_host(
            shared, session, ctx, port, &token,
        ))
        .await;
    }
    let req = session.req_header();
    let route = route::route(face, &req.method, req.uri.path(), config)?;
    ctx.route = Some(route);
    let runtime_name = snapshot.runtime_name(route.runtime);
    let authenticator = &snapshot.authenticators[route.runtime];

    match route.kind {
        RouteKind::GatewayPing => {
            return Ok(Decision::Answer(
                200,
                serde_json::json!({ "status": "Healthy" }),
            ));
        }
        RouteKind::Jwks => {
            return shared
                .jwks(config)
                .map(|keys| Decision::Answer(200, keys))
                .ok_or(GatewayError::NoRoute);
        }
        RouteKind::ResourceMetadata => {
            return authn::protected_resource_metadata(authenticator, session, runtime_name)
                .map(|doc| Decision::Answer(200, doc))
                .ok_or(GatewayError::NoRoute);
        }
        RouteKind::StopSession
        | RouteKind::Proxy(_)
        | RouteKind::Command
        | RouteKind::Shell
        | RouteKind::SessionPort
        | RouteKind::EndpointToken => {}
    }
    // Cheap refusals first: nothing about the body or the credential is needed for them.
    if let RouteKind::Proxy(target) = route.kind {
        let req = session.req_header();
        if target.protocol == Protocol::Mcp && req.method == http::Method::POST && !accepts_mcp(req)
        {
            return Err(GatewayError::NotAcceptable);
        }
    }
    let limit = config.limits.max_payload_bytes;
    if declared_length(session).is_some_and(|len| len > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let req = session.req_header();
    routing::face::check_custom_headers(
        req.headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        req.uri.query(),
    )
    .map_err(|name| GatewayError::HeaderTooLarge { name })?;

    let principal = authn::authenticate(authenticator, runtime_name, limit, session, ctx).await?;
    ctx.principal = Some(principal.clone());
    user_id(session, &config.runtimes[route.runtime], &principal)?;
    let caller = if matches!(authenticator, authn::Authenticator::None) {
        Caller::anonymous(crate::front::client_ip(session))
    } else {
        Caller::authenticated(principal.clone())
    };
    // Refused for want of room: parked up to the runtime's `park_ms` (see `crate::parking`).
    let mut parking = Parking::new(config.runtimes[route.runtime].park);
    while let Err(r) = shared.directory.admission().admit_request(&caller.quota) {
        Box::pin(parking.wait(&shared.parking, GatewayError::Rejected(r))).await?;
    }

    let target = match route.kind {
        RouteKind::Proxy(t) => t,
        // A command finds (or starts) its session as an invocation does.
        RouteKind::Command => route::COMMANDS,
        RouteKind::Shell => route::SHELLS,
        RouteKind::SessionPort | RouteKind::EndpointToken => {
            return Box::pin(crate::endpoints::admit(shared, session, ctx, caller)).await;
        }
        _ => {
            let runtime = &snapshot.runtime_names[route.runtime];
            // Boxed, as every rare path: its state would otherwise grow every request's future.
            return Box::pin(stop_session(shared, session, ctx, runtime, &principal)).await;
        }
    };
    ctx.target = Some(target);

    let (id, known) = session_id(shared, session, target, runtime_name, &principal).await?;
    ctx.session_id = Some(id.clone());
    ctx.session_known = known;
    // A client-chosen id starts a session on first use; an MCP id must already be known.
    let version = new_session_version(&snapshot, session, route.runtime)?;
    let resumable = config.runtimes[route.runtime].resumable_streams
        && target.name == "invocations"
        && target.protocol == Protocol::Http;
    // A resumption continues a stream of a session that exists; it never starts one.
    let resuming = resumable && crate::resumable::last_event_id(session).is_some();
    loop {
        let create = !known && !resuming;
        let placed = match open(shared, ctx, &id, route.runtime, version, &caller, create).await {
            Ok(ticket) => place(shared, ctx, ticket, target).await,
            Err(GatewayError::SessionNotFound) if known => Err(GatewayError::McpSessionGone),
            Err(e) => Err(e),
        };
        match placed {
            Ok(()) => break,
            Err(e) => Box::pin(parking.wait(&shared.parking, e)).await?,
        }
    }
    parking.admitted();
    ctx.caller = Some(caller);
    Ok(match route.kind {
        RouteKind::Command => Decision::Command,
        RouteKind::Shell => Decision::Shell,
        _ if resumable => Decision::Stream,
        _ => Decision::Proxy,
    })
}

pub(crate) async fn open(
    shared: &Shared,
    ctx: &RequestCtx,
    id: &SessionId,
    runtime: usize,
    version: u32,
    caller: &Caller,
    create: bool,
) -> Result<Ticket, GatewayError> {
    let config = &ctx.snapshot.config;
    let r = &config.runtimes[runtime];
    shared
        .directory
        .enter(Entry {
            id,
            runtime: &ctx.snapshot.runtime_names[runtime],
            version,
            caller,
            create,
            idle: r.idle_timeout.unwrap_or(config.sessions.idle_timeout),
            life: r.max_lifetime.unwrap_or(config.sessions.max_lifetime),
        })
        .await
        .map_err(open_error)
}

pub(crate) fn open_error(e: OpenError) -> GatewayError {
    match e {
        OpenError::NotFound => GatewayError::SessionNotFound,
        OpenError::Rejected(r) => GatewayError::Rejected(r),
        OpenError::Unavailable => GatewayError::DirectoryUnavailable,
        // Still being suspended after the wait: as a session ending under the request.
        OpenError::Suspending => GatewayError::SessionEnding,
    }
}

/// The session's backend: placed now if the session is new; `ctx.peer` and `ctx.ticket` are
/// set when it is ready.
pub(crate) async fn place(
    shared: &Shared,
    ctx: &mut RequestCtx,
    ticket: Ticket,
    target: Target,
) -> Result<(), GatewayError> {
    let snapshot = Arc::clone(&ctx.snapshot);
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let id = ticket.session().id.clone();
    // A session placed under an older config whose version was since removed has its backend
    // already; one still waiting for placement cannot get one any more.
    let Some(provider) = snapshot.providers.get(runtime, ticket.session().version) else {
        // A session without a backend (a resumed one whose version a reload removed) is no
        // session: it ends, its snapshot with it.
        if ticket.session().backend().is_none() {
            shared
                .directory
                .end(ticket.session(), EndReason::PlacementFailed)
                .await;
        }
        return Err(GatewayError::SessionEnding);
    };
    let placing = std::time::Instant::now();
    let placed = ticket.backend(provider).await;
    if ticket.created && ticket.session().resumed() {
        metrics::histogram!("sessiongate_resume_duration_seconds", "provider" => provider.name())
            .record(placing.elapsed().as_secs_f64());
    }
    if ticket.created {
        shared.stats.placement(placing.elapsed());
        let result = if placed.is_ok() { "ok" } else { "error" };
        metrics::counter!("sessiongate_placements_total", "provider" => provider.name(), "result" => result)
            .increment(1);
        metrics::histogram!("sessiongate_placement_duration_seconds", "provider" => provider.name(), "result" => result)
            .record(placing.elapsed().as_secs_f64());
        if let Some(cx) = &ctx.otel {
            crate::telemetry::event(
                cx,
                "session.placement",
                vec![
                    opentelemetry::KeyValue::new("provider", provider.name()),
                    opentelemetry::KeyValue::new("result", result),
                    opentelemetry::KeyValue::new(
                        "duration_ms",
                        placing.elapsed().as_secs_f64() * 1e3,
                    ),
                ],
            );
        }
    }
    let backend = match placed {
        Ok(b) => b,
        Err(e) => {
            let error = match e {
                TicketError::Ended => GatewayError::SessionEnding,
                TicketError::Unavailable => GatewayError::DirectoryUnavailable,
                TicketError::Placement(PlacementError::PoolExhausted) => {
                    GatewayError::PoolExhausted
                }
                TicketError::Placement(e) => {
                    tracing::warn!(session = %id, error = %e, "backend placement failed");
                    GatewayError::BackendStartFailed
                }
            };
            // A session without a backend is no session: forget it so a retry starts afresh.
            if ticket.session().backend().is_none() {
                shared
                    .directory
                    .end(ticket.session(), EndReason::PlacementFailed)
                    .await;
            }
            return Err(error);
        }
    };
    ctx.peer = Some(
        backend
            .addr(target.protocol)
            .cloned()
            .ok_or(GatewayError::ProtocolNotServed)?,
    );
    ctx.ticket = Some(ticket);
    Ok(())
}

/// The session's backend refused the connection before anything was sent: the backend died
/// while the session was idle. The session is ended and the same id placed afresh, once (the
/// request then goes to the new backend). An MCP request routed by its `Mcp-Session-Id` is not
/// re-placed: that MCP session lived in the dead backend, and the client must re-initialise.
pub async fn replace_backend(shared: &Shared, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
    let (Some(old), Some(target), Some(caller)) =
        (ctx.ticket.take(), ctx.target, ctx.caller.clone())
    else {
        return Err(GatewayError::BackendUnreachable);
    };
    let session = Arc::clone(old.session());
    let reason = match session.backend() {
        Some(b) if b.oom_killed() => EndReason::OutOfMemory,
        Some(b) if b.has_exited() => EndReason::BackendExited,
        _ => EndReason::Unhealthy,
    };
    drop(old);
    if shared.directory.end(&session, reason).await {
        tracing::info!(session = %session.id, reason = reason.as_str(), "session ended: its backend refused a connection; placing a new one");
        metrics::counter!("sessiongate_sessions_ended_total", "reason" => reason.as_str())
            .increment(1);
    }
    if ctx.session_known {
        return Err(GatewayError::McpSessionGone);
    }
    // The ended session's quota reservation goes with its last reference: drop ours before
    // the new one is admitted, or a full quota would refuse the very session it replaces.
    let (id, version) = (session.id.clone(), session.version);
    drop(session);
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let ticket = open(shared, ctx, &id, runtime, version, &caller, true).await?;
    place(shared, ctx, ticket, target).await
}

/// The session id of a request, and whether it names a session that must already exist.
///
/// From the runtime session header; for WebSocket upgrades also a query parameter (browsers
/// cannot set headers); on MCP from `Mcp-Session-Id`, which the gateway learned from the
/// backend's `initialize` answer. An MCP request with neither (a `server/discover` probe, the
/// sessionless 2026 era, or the `initialize` that starts a handshake) goes to the caller's
/// implicit MCP session for the runtime, so probes and stateless calls neither spawn a backend
/// each nor share one between principals. Anything else without an id gets a new one.
async fn session_id(
    shared: &Shared,
    session: &Session,
    target: Target,
    runtime: &str,
    principal: &Principal,
) -> Result<(SessionId, bool), GatewayError> {
    let req = session.req_header();
    if let Some(v) = req.headers.get(SESSION_ID) {
        return SessionId::parse(v.as_bytes())
            .map(|id| (id, false))
            .map_err(GatewayError::InvalidSessionId);
    }
    if target.websocket
        && let Some(v) = query_param(req.uri.query().unwrap_or(""), SESSION_ID)
    {
        return SessionId::parse(v.as_bytes())
            .map(|id| (id, false))
            .map_err(GatewayError::InvalidSessionId);
    }
    if target.protocol == Protocol::Mcp
        && let Some(v) = req.headers.get(MCP_SESSION_ID)
    {
        let mcp_id = v.to_str().map_err(|_| GatewayError::McpSessionGone)?;
        return shared
            .directory
            .find_mcp_session(mcp_id)
            .await
            .map_err(open_error)?
            .map(|id| (id, true))
            .ok_or(GatewayError::McpSessionGone);
    }
    if target.protocol == Protocol::Mcp {
        return Ok((implicit_mcp_session(shared, runtime, principal), false));
    }
    Ok((SessionId::mint(), false))
}

/// The id of a principal's implicit MCP session on a runtime: stable, distinct per
/// (runtime, principal), and not computable by anyone else — an HMAC under the gateway's secret
/// — so no other caller can name it in advance and squat it.
fn implicit_mcp_session(shared: &Shared, runtime: &str, principal: &Principal) -> SessionId {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(shared.secret()) else {
        return SessionId::mint();
    };
    mac.update(runtime.as_bytes());
    mac.update(&[0]);
    mac.update(principal.as_str().as_bytes());
    let tag = mac.finalize().into_bytes();
    let id = format!("mcp-implicit-{}", hex(&tag[..16]));
    SessionId::parse(id.as_bytes()).unwrap_or_else(|_| SessionId::mint())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// StopRuntimeSession: ends the named session now (in-flight streams included).
async fn stop_session(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    runtime: &Arc<str>,
    principal: &Principal,
) -> Result<Decision, GatewayError> {
    let raw = session
        .req_header()
        .headers
        .get(SESSION_ID)
        .ok_or(GatewayError::MissingSessionId)?;
    let id = SessionId::parse(raw.as_bytes()).map_err(GatewayError::InvalidSessionId)?;
    ctx.session_id = Some(id.clone());
    let body = match ctx.verified_body.take() {
        Some(b) => b,
        None => crate::commands::read_body(session).await?,
    };
    let directory = &shared.directory;
    let stopped = match client_token(&body)? {
        Some(token) => directory
            .stop_once(id.as_str(), runtime, principal, &token, EndReason::Stopped)
            .await
            .map_err(open_error)?,
        None => {
            let found = directory
                .stop_named(
                    id.as_str(),
                    Some((&**runtime, principal)),
                    EndReason::Stopped,
                )
                .await
                .map_err(open_error)?;
            if found {
                Stopped::Yes
            } else {
                Stopped::NotFound
            }
        }
    };
    match stopped {
        Stopped::Yes => {
            metrics::counter!("sessiongate_sessions_ended_total", "reason" => "stopped")
                .increment(1);
        }
        Stopped::Replayed => {}
        Stopped::NotFound => return Err(GatewayError::SessionNotFound),
        Stopped::TokenReused => return Err(GatewayError::ClientTokenReused),
    }
    Ok(Decision::Answer(
        200,
        serde_json::json!({ "runtimeSessionId": id.as_str() }),
    ))
}

/// StopRuntimeSession's `clientToken`, if the body (empty, or a JSON object) has one.
fn client_token(body: &[u8]) -> Result<Option<String>, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "clientToken")]
        client_token: Option<String>,
    }
    let body: Body = serde_json::from_slice(body)
        .map_err(|_| GatewayError::InvalidStopRequest("The request body must be a JSON object"))?;
    match body.client_token {
        Some(t) if !valid_client_token(&t) => Err(GatewayError::InvalidStopRequest(
            "clientToken must be 33 to 256 letters, digits or inner hyphens",
        )),
        t => Ok(t),
    }
}

/// `runtimeUserId`: one visible value (1–256 characters), from a caller the runtime lets name
/// the user it acts for (`user_id_principals`, AgentCore's `InvokeAgentRuntimeForUser`).
fn user_id(
    session: &Session,
    runtime: &conf::Runtime,
    principal: &Principal,
) -> Result<(), GatewayError> {
    let mut sent = session.req_header().headers.get_all(&USER_ID_NAME).iter();
    let Some(value) = sent.next() else {
        return Ok(());
    };
    let v = value.as_bytes();
    if sent.next().is_some()
        || v.is_empty()
        || v.len() > 256
        || !v.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(GatewayError::InvalidUserId);
    }
    if !runtime.may_name_users(principal.as_str()) {
        return Err(GatewayError::UserIdNotAllowed);
    }
    Ok(())
}

/// The version a new session would start on: the endpoint named by the `qualifier` query
/// parameter (AWS face; `DEFAULT` without one) picks it, by weight when it splits.
fn new_session_version(
    snapshot: &Snapshot,
    session: &Session,
    runtime: usize,
) -> Result<u32, GatewayError> {
    let query = session.req_header().uri.query().unwrap_or("");
    let pick = crate::ids::random_u64();
    routing::placement::new_session_version(
        &snapshot.config.runtimes[runtime],
        query_param(query, "qualifier"),
        pick,
    )
    .ok_or(GatewayError::UnknownEndpoint)
}

/// MCP's streamable HTTP needs a client that takes both JSON and SSE answers.
fn accepts_mcp(req: &pingora::http::RequestHeader) -> bool {
    let mut json = false;
    let mut sse = false;
    for value in req.headers.get_all(http::header::ACCEPT) {
        for range in value.to_str().unwrap_or_default().split(',') {
            let media = range.split(';').next().unwrap_or_default().trim();
            json |= matches!(media, "application/json" | "application/*" | "*/*");
            sse |= matches!(media, "text/event-stream" | "text/*" | "*/*");
        }
    }
    json && sse
}

fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
