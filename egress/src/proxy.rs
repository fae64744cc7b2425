//! The HTTP proxy a session's traffic goes through.
//!
//! - `CONNECT host:port`: the destination is admitted ([`Shared::admit`]). For a host with
//!   credentials the connection is intercepted: TLS with the CA's leaf for that host, each request
//!   checked to be for it, the header added, and sent on over TLS verified against the system's
//!   trust store. Any other destination is tunnelled untouched once the ClientHello's server name
//!   (if it has one) is the host that was asked for.
//! - `GET http://host/…` (absolute form): admitted, the credentials added, forwarded.
//!
//! A refusal is a 403 whose body says why; the same reason is in the audit line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, uri::Scheme};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::meter::{Metered, Tally};
use crate::{CLIENT_DEADLINE, Ca, Io, Outcome, Shared, connect, sni, tls};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// A tunnel's buffer each way: tokio's default 8 KiB makes eight times the reads and writes of
/// a large download (loadtest/egress_throughput.py measures the tunnel against direct).
const COPY_BUFFER: usize = 64 * 1024;

/// A CONNECT the proxy terminates: requests inside it may only go to `host`.
struct Intercepted {
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
}

/// Serves one proxy connection from the session.
pub(crate) async fn serve<S: Io>(shared: Arc<Shared>, io: S) {
    let svc = service_fn(move |req| handle(shared.clone(), req));
    let _ = server()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

/// The proxy's HTTP/1 server: a request head must come within [`CLIENT_DEADLINE`], and a client
/// that shuts its write side after its request (busybox wget does) still gets its answer.
fn server() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(CLIENT_DEADLINE)
        .half_close(true);
    b
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    Ok(match *req.method() {
        Method::CONNECT => tunnel_or_intercept(shared, req).await,
        _ => forward(shared, None, req).await,
    })
}

/// A request inside an intercepted CONNECT.
async fn handle_inside(
    shared: Arc<Shared>,
    intercepted: Arc<Intercepted>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match *req.method() {
        Method::CONNECT => refuse(StatusCode::METHOD_NOT_ALLOWED, "CONNECT inside CONNECT"),
        _ => forward(shared, Some(&intercepted), req).await,
    })
}

fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("sessiongate egress: {why}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = status;
    r
}

/// `host` lower-case, without brackets or a trailing dot.
fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

async fn tunnel_or_intercept(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let Some(authority) = req.uri().authority().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT takes host:port");
    };
    let (host, port) = (bare(authority.host()), authority.port_u16().unwrap_or(443));
    let dest = format!("{host}:{port}");
    let addrs = match shared.admit(&host, port).await {
        Ok(a) => a,
        Err(why) => {
            shared.audit("connect", &dest, Outcome::refused(started, why));
            return refuse(StatusCode::FORBIDDEN, why);
        }
    };
    // A tunnel outlives the proxy connection that asked for it: it takes a slot of its own.
    let Some(slot) = shared.slot() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections from this session at once",
        );
    };
    if shared.policy.credentials_for(&host).next().is_some() {
        let ca = match Ca::get() {
            Ok(ca) => ca,
            Err(e) => {
                tracing::error!(error = %e, "egress: cannot intercept for credentials");
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    "the gateway cannot add this host's credentials",
                );
            }
        };
        let intercepted = Arc::new(Intercepted { host, port, addrs });
        let spawner = shared.clone();
        spawner.spawn(async move {
            let _slot = slot;
            let Ok(upgraded) = hyper::upgrade::on(req).await else {
                shared.audit("connect", &dest, Outcome::failed(started));
                return;
            };
            let leaf = match ca.server(&intercepted.host) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, host = %intercepted.host, "egress: cannot sign a leaf");
                    shared.audit("connect", &dest, Outcome::failed(started));
                    return;
                }
            };
            let accept = tokio_rustls::TlsAcceptor::from(leaf).accept(TokioIo::new(upgraded));
            let tls = match tokio::time::timeout(CLIENT_DEADLINE, accept).await {
                Ok(Ok(t)) => t,
                _ => {
                    let why = "the session's TLS client did not take the gateway's certificate (does it trust the gateway's CA?)";
                    shared.audit("connect", &dest, Outcome::refused(started, why));
                    return;
                }
            };
            let svc =
                service_fn(move |req| handle_inside(shared.clone(), intercepted.clone(), req));
            let _ = server().serve_connection(TokioIo::new(tls), svc).await;
        });
        return empty(StatusCode::OK);
    }
    let upstream = match connect(&addrs).await {
        Ok(s) => s,
        Err(e) => {
            shared.audit("connect", &dest, Outcome::failed(started));
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to {dest}: {e}"),
            );
        }
    };
    let spawner = shared.clone();
    spawner.spawn(async move {
        let _slot = slot;
        let outcome = match hyper::upgrade::on(req).await {
            Ok(upgraded) => tunnel(&shared, TokioIo::new(upgraded), upstream, &host, started).await,
            Err(_) => Outcome::failed(started),
        };
        shared.audit("connect", &dest, outcome);
    });
    empty(StatusCode::OK)
}

/// Relays a CONNECT tunnel both ways; a TLS handshake in it must name `host` (when it names
/// anything and `host` is a name).
async fn tunnel<S: Io>(
    shared: &Arc<Shared>,
    client: S,
    upstream: tokio::net::TcpStream,
    host: &str,
    started: Instant,
) -> Outcome {
    let check_name = host.parse::<std::net::IpAddr>().is_err();
    let (upstream, tally) = Metered::new(upstream, shared.clone());
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let mut fronted = false;
    let upward = async {
        let first = sni::first_flight(&mut cr).await?;
        // A handshake must name the host asked for, or nothing; one we cannot read is refused
        // (it could name anything).
        let named = match sni::hello(&first) {
            sni::Hello::NotTls | sni::Hello::Unnamed => true,
            sni::Hello::Named(name) => !check_name || name == host,
            sni::Hello::Unreadable => false,
        };
        if !named {
            fronted = true;
            return Err(std::io::Error::other("another server name"));
        }
        uw.write_all(&first).await?;
        tokio::io::copy_buf(&mut BufReader::with_capacity(COPY_BUFFER, &mut cr), &mut uw).await?;
        uw.shutdown().await
    };
    let downward = async {
        tokio::io::copy_buf(&mut BufReader::with_capacity(COPY_BUFFER, &mut ur), &mut cw).await?;
        cw.shutdown().await
    };
    let _ = tokio::try_join!(upward, downward);
    let (sent, received) = tally.get();
    Outcome {
        started,
        refused: fronted.then_some("the TLS handshake does not name the host asked for"),
        sent,
        received,
    }
}

/// A plain HTTP request (absolute form), or one inside an intercepted CONNECT.
async fn forward(
    shared: Arc<Shared>,
    intercepted: Option<&Intercepted>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let (host, port, addrs, kind) = match intercepted {
        Some(t) => (t.host.clone(), t.port, t.addrs.clone(), "https"),
        None => {
            let uri = req.uri();
            let tls = match uri.scheme() {
                Some(s) if *s == Scheme::HTTP => false,
                // Some clients (busybox wget) ask a proxy for https:// URLs in absolute form:
                // the proxy makes the TLS connection, verified as for an intercepted one.
                Some(s) if *s == Scheme::HTTPS => true,
                _ => {
                    return refuse(
                        StatusCode::BAD_REQUEST,
                        "this proxy takes CONNECT and absolute http(s):// URLs",
                    );
                }
            };
            let Some(authority) = uri.authority().cloned() else {
                return refuse(StatusCode::BAD_REQUEST, "an absolute URL needs a host");
            };
            let (kind, default_port) = if tls { ("https", 443) } else { ("http", 80) };
            let host = bare(authority.host());
            let port = authority.port_u16().unwrap_or(default_port);
            let dest = format!("{host}:{port}");
            match shared.admit(&host, port).await {
                Ok(addrs) => (host, port, addrs, kind),
                Err(why) => {
                    shared.audit(kind, &dest, Outcome::refused(started, why));
                    return refuse(StatusCode::FORBIDDEN, why);
                }
            }
        }
    };
    let with_credentials = kind == "https" && shared.policy.credentials_for(&host).next().is_some();
    // One Host header, naming the host the request goes to: what the policy checked is what
    // the upstream sees (a shared front end routes by it, and the credential goes with it).
    if let Err(why) = one_host(req.headers_mut(), &host, port, kind) {
        let dest = format!("{host}:{port}");
        shared.audit(kind, &dest, Outcome::refused(started, why));
        return refuse(StatusCode::MISDIRECTED_REQUEST, why);
    }
    if with_credentials
        && ["TRACE", "TRACK"]
            .iter()
            .any(|m| req.method().as_str().eq_ignore_ascii_case(m))
    {
        // It would echo the credential back to the session.
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "TRACE to a host with credentials",
        );
    }
    let dest = format!("{host}:{port}");
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    *req.uri_mut() = path;
    strip_hop_by_hop(req.headers_mut());
    // Over TLS only: a plain http:// request to a credential host goes without them.
    let credentials = shared
        .policy
        .credentials_for(&host)
        .filter(|_| with_credentials);
    for c in credentials {
        match credential(c) {
            Ok((name, value)) => {
                req.headers_mut().insert(name, value);
            }
            Err(why) => {
                tracing::error!(host = %host, header = %c.header, "egress credential unavailable: {why}");
                shared.audit(kind, &dest, Outcome::failed(started));
                return refuse(
                    StatusCode::BAD_GATEWAY,
                    "a credential for this host is unavailable",
                );
            }
        }
    }
    let stream = match connect(&addrs).await {
        Ok(s) => s,
        Err(e) => {
            shared.audit(kind, &dest, Outcome::failed(started));
            return refuse(
                StatusCode::BAD_GATEWAY,
                &format!("cannot connect to {dest}: {e}"),
            );
        }
    };
    let (stream, tally) = Metered::new(stream, shared.clone());
    let audit = Audit {
        shared: shared.clone(),
        kind,
        dest,
        tally,
        started,
    };
    let answered = if kind == "https" {
        let tls = async {
            let config = Ca::get().map_err(|e| e.to_string())?.upstream()?;
            let name = tls::server_name(&host).ok_or("not a TLS server name")?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS to {host}: {e}"))
        };
        match tls.await {
            Ok(tls) => exchange(tls, req, audit).await,
            Err(e) => {
                drop(audit);
                return refuse(StatusCode::BAD_GATEWAY, &e);
            }
        }
    } else {
        exchange(stream, req, audit).await
    };
    match answered {
        Ok(resp) => resp.map(BodyExt::boxed_unsync),
        Err(e) => refuse(StatusCode::BAD_GATEWAY, &e),
    }
}

/// The audit line of one forwarded request's connection, written when the connection ends —
/// or when the request is dropped half-way (the session hung up).
struct Audit {
    shared: Arc<Shared>,
    kind: &'static str,
    dest: String,
    tally: Arc<Tally>,
    started: Instant,
}

impl Drop for Audit {
    fn drop(&mut self) {
        let (sent, received) = self.tally.get();
        let outcome = Outcome {
            started: self.started,
            refused: None,
            sent,
            received,
        };
        self.shared.audit(self.kind, &self.dest, outcome);
    }
}

/// Sends `req` on a connection of its own; the audit line is written once the response body
/// has been read (or the connection failed).
async fn exchange<T: Io>(
    io: T,
    req: Request<Incoming>,
    audit: Audit,
) -> Result<Response<Incoming>, String> {
    let handshake = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(io))
        .await;
    let (mut sender, conn) = match handshake {
        Ok(h) => h,
        Err(e) => {
            drop(audit);
            return Err(e.to_string());
        }
    };
    let spawner = audit.shared.clone();
    spawner.spawn(async move {
        let _ = conn.await;
        drop(audit);
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// Checks the request's Host header against where it goes, and sets it (a request without one
/// gets it).
pub(crate) fn one_host(
    h: &mut http::HeaderMap,
    host: &str,
    port: u16,
    kind: &str,
) -> Result<(), crate::Refusal> {
    let mut named = h.get_all(header::HOST).iter();
    match (named.next(), named.next()) {
        (_, Some(_)) => return Err("more than one Host header"),
        (Some(v), None) => {
            let v = v.to_str().map_err(|_| "an unreadable Host header")?;
            let name = v
                .rsplit_once(':')
                .filter(|(_, p)| p.parse::<u16>().is_ok())
                .map_or(v, |(h, _)| h);
            if bare(name) != host {
                return Err("the Host header names another host than the request goes to");
            }
        }
        (None, None) => {}
    }
    let default = if kind == "https" { 443 } else { 80 };
    let bracketed = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let value = if port == default {
        bracketed
    } else {
        format!("{bracketed}:{port}")
    };
    let value = HeaderValue::from_str(&value).map_err(|_| "not a host name")?;
    h.insert(header::HOST, value);
    Ok(())
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        h.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        h.remove(name);
    }
    h.remove("proxy-connection");
    h.remove("keep-alive");
}

/// A credential's header, its value read now (so a rotated file or variable takes effect).
fn credential(c: &conf::EgressCredential) -> Result<(HeaderName, HeaderValue), &'static str> {
    let raw = match &c.value_from {
        conf::ValueFrom::Env(var) => {
            std::env::var(var).map_err(|_| "its environment variable is not set")?
        }
        conf::ValueFrom::File(path) => {
            std::fs::read_to_string(path).map_err(|_| "its file cannot be read")?
        }
    };
    let name = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| "not a header name")?;
    let mut value = HeaderValue::from_str(raw.trim_end_matches(['\r', '\n']))
        .map_err(|_| "its value is not a valid header value")?;
    value.set_sensitive(true);
    Ok((name, value))
}
