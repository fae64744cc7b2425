//! Session endpoints (AgentCore's `allowedPorts`, October 2026): a session's backend reached
//! directly on any of its runtime's `allowed_ports` — HTTP, SSE, WebSocket — in two forms:
//!
//! - **path**: `/runtimes/{id}/sessions/{sid}/ports/{port}/…` on the HTTP listener, authenticated
//!   as an invocation is (the same principal; another one's session is not found). Invocation
//!   answers of such a runtime carry its base, `…/runtimes/{id}/sessions/{sid}`, in
//!   `X-Amzn-Bedrock-AgentCore-Runtime-Session-Endpoint-Url` (boto3's `sessionEndpointUrl`).
//! - **host**, for browsers (which cannot send a credential on a WebSocket or a link):
//!   `POST /runtimes/{id}/sessions/{sid}/endpoint-tokens?port=P` (authenticated) answers
//!   `http://P-{token}.{domain}/`; requests to that host reach port P of that session, as
//!   the principal that asked, until the token expires (`[session_endpoints]`).
//!
//! A port outside the list is refused (403) before anything is reached. The gateway reaches the
//! port through the session's exec socket (`agent::exec`'s `connect`: the isolation's own
//! loopback, wherever it runs — a sandbox, a guest, a host's relay), or for a static backend
//! at its address. The app's answers pass as they are, errors included, and its failures are
//! the app's: nothing here ends a session or re-places its backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use conf::Protocol;
use pingora::connectors::l4::Connect;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::proxy::Session;
use routing::directory::endpoint_tokens::{EndpointGrant, unix_now};
use routing::face::query_param;
use routing::provider::{BackendAddr, ExecAt};
use routing::{Caller, SessionId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::request::{self, Decision};
use crate::route::{BackendPath, Target};
use crate::state::Shared;

pub const URL_HEADER: &str = "x-amzn-bedrock-agentcore-runtime-session-endpoint-url";
/// How long reaching the port (the exec socket, then its answer) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request for one of a session's own ports.
#[derive(Debug)]
pub struct PortRequest {
    pub port: u16,
    /// The path and query on the port (path form); `None`: the client's own (host form).
    path: Option<String>,
    /// Through the exec socket; `None`: `ctx.peer` is the port itself (a static backend).
    tunnel: Option<Arc<Tunnel>>,
}

/// The host form: `Host: {port}-{token}.{domain}[:listener port]`.
pub fn host_form<'a>(session: &'a Session, domain: &str) -> Option<(u16, &'a str)> {
    let host = session.req_header().headers.get(http::header::HOST)?;
    let host = host.to_str().ok()?;
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let label = host
        .len()
        .checked_sub(domain.len() + 1)
        .filter(|&cut| host.is_char_boundary(cut) && host[cut + 1..].eq_ignore_ascii_case(domain))
        .filter(|&cut| host.as_bytes()[cut] == b'.')
        .map(|cut| &host[..cut])?;
    let (port, token) = label.split_once('-')?;
    Some((port.parse().ok()?, token))
}

/// A request in the host form: the token's grant names the runtime, session, principal and port.
pub async fn admit_host(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    port: u16,
    token: &str,
) -> Result<Decision, GatewayError> {
    let grant = shared
        .directory
        .endpoint_grant(token)
        .await
        .map_err(request::open_error)?
        .filter(|g| g.port == port)
        .ok_or(GatewayError::EndpointTokenInvalid)?;
    let snapshot = Arc::clone(&ctx.snapshot);
    let runtime = snapshot
        .config
        .runtime_index(&grant.runtime)
        .ok_or(GatewayError::UnknownRuntime)?;
    ctx.route = Some(crate::route::Route {
        runtime,
        kind: crate::route::RouteKind::SessionPort,
    });
    allowed(&snapshot.config.runtimes[runtime], port)?;
    let caller = if grant.principal == auth::Principal::anonymous().as_str() {
        Caller::anonymous(crate::front::client_ip(session))
    } else {
        Caller::authenticated(auth::Principal::new(&grant.principal))
    };
    ctx.principal = Some(caller.principal.clone());
    admit_request(shared, &caller)?;
    let id = SessionId::parse(grant.session.as_bytes()).map_err(GatewayError::InvalidSessionId)?;
    reach(shared, session, ctx, caller, id, port, None).await
}

/// A path-form request or a token request, authenticated and admitted.
pub async fn admit(
    shared: &Shared,
    session: &mut Session,
    ctx: &mut RequestCtx,
    caller: Caller,
) -> Result<Decision, GatewayError> {
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let snapshot = Arc::clone(&ctx.snapshot);
    let rt = &snapshot.config.runtimes[runtime];
    let req = session.req_header();
    let path = req.uri.path();
    // `/runtimes/{id}/sessions/{sid}/…`: the route matched that far.
    let after = path
        .splitn(5, '/')
        .nth(4)
        .and_then(|p| p.split_once('/'))
        .ok_or(GatewayError::NoRoute)?;
    let (sid, rest) = after;
    let sid = percent_encoding::percent_decode_str(sid).collect::<Vec<u8>>();
    let id = SessionId::parse(&sid).map_err(GatewayError::InvalidSessionId)?;
    let Some(ports) = rest.strip_prefix("ports/") else {
        let port = query_param(req.uri.query().unwrap_or(""), "port")
            .and_then(|p| p.parse().ok())
            .ok_or(GatewayError::InvalidEndpointRequest(
                "endpoint-tokens needs ?port= with one of the runtime's allowed_ports",
            ))?;
        return browser_url(shared, session, ctx, caller, id, port).await;
    };
    let (port, tail) = ports.split_at(ports.find('/').unwrap_or(ports.len()));
    let port: u16 = port.parse().map_err(|_| GatewayError::NoRoute)?;
    allowed(rt, port)?;
    let backend_path = match (tail, req.uri.query()) {
        ("", None) => "/".to_owned(),
        ("", Some(q)) => format!("/?{q}"),
        (t, None) => t.to_owned(),
        (t, Some(q)) => format!("{t}?{q}"),
    };
    reach(shared, session, ctx, caller, id, port, Some(backend_path)).await
}

fn allowed(runtime: &conf::Runtime, port: u16) -> Result<(), GatewayError> {
    if runtime.allowed_ports.contains(port) {
        Ok(())
    } else {
        Err(GatewayError::PortNotAllowed(port))
    }
}

fn admit_request(shared: &Shared, caller: &Caller) -> Result<(), GatewayError> {
    shared
        .directory
        .admission()
        .admit_request(&caller.quota)
        .map_err(GatewayError::Rejected)
}

/// The session (which must exist and be the caller's) and the way to its port.
async fn reach(
    shared: &Shared,
    session: &Session,
    ctx: &mut RequestCtx,
    caller: Caller,
    id: SessionId,
    port: u16,
    path: Option<String>,
) -> Result<Decision, GatewayError> {
    let target = Target {
        protocol: Protocol::Http,
        path: BackendPath::Same,
        name: "session_endpoint",
        websocket: session.is_upgrade_req(),
    };
    ctx.target = Some(target);
    ctx.session_id = Some(id.clone());
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let ticket = request::open(shared, ctx, &id, runtime, 0, &caller, false).await?;
    request::place(shared, ctx, ticket, target).await?;
    let tunnel = match crate::commands::exec_at(ctx) {
        Ok(at) => Some(Arc::new(Tunnel {
            at,
            pid: crate::commands::backend_pid(ctx),
            port,
        })),
        // A static backend: its address, on the port asked for.
        Err(_) => match ctx.peer {
            Some(BackendAddr::Tcp(a)) => {
                ctx.peer = Some(BackendAddr::Tcp(SocketAddr::new(a.ip(), port)));
                None
            }
            _ => return Err(GatewayError::Internal),
        },
    };
    ctx.port = Some(Box::new(PortRequest { port, path, tunnel }));
    ctx.caller = Some(caller);
    Ok(Decision::Proxy)
}

/// `POST …/endpoint-tokens?port=P`: a browser URL for port P of the caller's session.
async fn browser_url(
    shared: &Shared,
    session: &Session,
    ctx: &mut RequestCtx,
    caller: Caller,
    id: SessionId,
    port: u16,
) -> Result<Decision, GatewayError> {
    let runtime = ctx.route.map_or(0, |r| r.runtime);
    let snapshot = Arc::clone(&ctx.snapshot);
    allowed(&snapshot.config.runtimes[runtime], port)?;
    let settings = &snapshot.config.session_endpoints;
    let domain = settings
        .domain
        .as_deref()
        .ok_or(GatewayError::InvalidEndpointRequest(
            "browser URLs need a [session_endpoints] domain in the gateway's config",
        ))?;
    ctx.session_id = Some(id.clone());
    // The session must exist and be the caller's; looking does not keep it alive longer, nor
    // resume a suspended one (its next request through the URL will).
    let name = &snapshot.runtime_names[runtime];
    if !shared
        .directory
        .holds_suspended(&id, name, &caller.principal)
    {
        drop(request::open(shared, ctx, &id, runtime, 0, &caller, false).await?);
    }
    // The token is the credential of the host form: from the kernel's generator (122 random
    // bits), never from the per-thread sequence request ids use (predictable from its output).
    let token = uuid::Uuid::new_v4().simple().to_string();
    let expires = unix_now() + settings.token_ttl.as_secs();
    let grant = EndpointGrant {
        runtime: snapshot.runtime_names[runtime].to_string(),
        session: id.as_str().to_owned(),
        principal: caller.principal.as_str().to_owned(),
        port,
        expires,
    };
    shared
        .directory
        .grant_endpoint(&token, &grant)
        .await
        .map_err(request::open_error)?;
    // The browser reaches the gateway where this client did: the same listener port.
    let listener_port = crate::authn::base_url(session)
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .map_or(String::new(), |p| format!(":{p}"));
    Ok(Decision::Answer(
        200,
        serde_json::json!({
            "url": format!("http://{port}-{token}.{domain}{listener_port}/"),
            "port": port,
            "expiresAt": expires,
            "runtimeSessionId": id.as_str(),
        }),
    ))
}

/// The session endpoint base for an invocation answer of a runtime with `allowed_ports`.
pub fn url(session: &Session, ctx: &RequestCtx) -> Option<String> {
    let route = ctx.route?;
    let target = ctx.target?;
    if target.name != "invocations"
        || ctx.snapshot.config.runtimes[route.runtime]
            .allowed_ports
            .is_empty()
    {
        return None;
    }
    let sid = percent_encoding::utf8_percent_encode(ctx.session_id()?, SEGMENT);
    Some(format!(
        "{}/runtimes/{}/sessions/{sid}",
        crate::authn::base_url(session),
        ctx.snapshot.runtime_names[route.runtime]
    ))
}

/// What a path segment must escape.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `upstream_peer` for a request through the exec socket: a peer whose connection is the
/// tunnel, pooled only with connections to the same port of the same backend.
pub fn peer(ctx: &RequestCtx) -> Option<Box<HttpPeer>> {
    let tunnel = ctx.port.as_ref()?.tunnel.as_ref()?;
    let mut peer = HttpPeer::new(
        SocketAddr::from(([127, 0, 0, 1], tunnel.port)),
        false,
        String::new(),
    );
    peer.group_key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", tunnel.at).hash(&mut h);
        tunnel.port.hash(&mut h);
        h.finish()
    };
    peer.options.custom_l4 = Some(Arc::clone(tunnel) as _);
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.read_timeout = Some(ctx.upstream_read_timeout());
    Some(Box::new(peer))
}

/// `upstream_request_filter` for a session endpoint: the port's path, the app's headers.
pub fn to_port(upstream: &mut RequestHeader, ctx: &RequestCtx) {
    let Some(port) = &ctx.port else { return };
    if let Some(uri) = port
        .path
        .as_deref()
        .and_then(|p| p.parse::<http::Uri>().ok())
    {
        upstream.set_uri(uri);
    }
    crate::headers::to_port(
        upstream,
        ctx.session_id().unwrap_or_default(),
        &ctx.request_id,
    );
}

/// One connection to a port inside the session's isolation, through its exec socket.
#[derive(Debug)]
struct Tunnel {
    at: ExecAt,
    pid: Option<u32>,
    port: u16,
}

#[async_trait]
impl Connect for Tunnel {
    async fn connect(&self, _addr: &PeerAddr) -> pingora::Result<Stream> {
        let open = async {
            let line = format!("{{\"connect\":{}}}", self.port);
            let mut conn =
                crate::exec_conn::open(self.at.clone(), self.pid, line.as_bytes()).await?;
            // One short line; read byte by byte so nothing of the app's bytes is taken.
            let mut answer = Vec::with_capacity(64);
            let mut byte = [0u8; 1];
            while answer.len() < 512 && conn.read(&mut byte).await? == 1 && byte[0] != b'\n' {
                answer.push(byte[0]);
            }
            Ok::<_, std::io::Error>((conn, answer))
        };
        let (conn, answer) = match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                return Err(Error::because(
                    ErrorType::ConnectError,
                    "cannot reach the session's exec socket",
                    e,
                ));
            }
            Err(_) => return Error::e_explain(ErrorType::ConnectTimedout, "session port"),
        };
        if answer
            != agent::exec::CONNECTED
                .strip_suffix(b"\n")
                .unwrap_or_default()
        {
            return Error::e_explain(
                ErrorType::ConnectRefused,
                String::from_utf8_lossy(&answer).into_owned(),
            );
        }
        Ok(Stream::from(VirtualSocketStream::new(Box::new(
            TunnelSocket(conn),
        ))))
    }
}

/// The tunnel as Pingora's virtual socket.
struct TunnelSocket(Box<dyn crate::exec_conn::Conn>);

impl std::fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelSocket")
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
