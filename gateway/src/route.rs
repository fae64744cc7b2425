//! Routing by (listener, method, path): which runtime, and what the backend sees.
//!
//! | listener | request | route |
//! |---|---|---|
//! | HTTP | `POST /invocations`, `GET /ws` | the default runtime's `:8080`, same path |
//! | HTTP, A2A | `GET /ping` | answered by the gateway (its own health) |
//! | HTTP, A2A | `GET /.well-known/jwks.json` | the workload access tokens' keys (`crate::identity`) |
//! | HTTP | `POST /runtimes/{id}/invocations` | runtime `{id}`: `/invocations`, `/mcp` or `/` by its protocol |
//! | HTTP | `GET /runtimes/{id}/ws` | runtime `{id}`'s `/ws` |
//! | HTTP | `GET /runtimes/{id}/invocations/.well-known/agent-card.json` | its A2A agent card |
//! | HTTP | `POST /runtimes/{id}/stopruntimesession` | StopRuntimeSession, answered by the gateway |
//! | HTTP | `POST /runtimes/{id}/commands` | InvokeAgentRuntimeCommand: run in the session's backend (`crate::commands`) |
//! | HTTP | `GET /runtimes/{id}/ws/shells` | an interactive shell in the session's backend (`crate::shells`) |
//! | HTTP | any `/runtimes/{id}/sessions/{sid}/ports/{port}/…` | the session's port `{port}`, path `/…` (`crate::endpoints`) |
//! | HTTP | `POST /runtimes/{id}/sessions/{sid}/endpoint-tokens?port=…` | a browser URL for a session's port (`crate::endpoints`) |
//! | HTTP | any, `Host: {port}-{token}.{domain}` | the port a browser token grants (`crate::endpoints`; before routing) |
//! | MCP | `POST`/`GET`/`DELETE /mcp` | the default runtime's `:8000 /mcp` |
//! | A2A | `POST /`, `GET /.well-known/agent-card.json` | the default runtime's `:9000`, same path |

use conf::{Config, Protocol, Runtime};
use http::Method;

use crate::error::GatewayError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Index of the runtime in the config.
    pub runtime: usize,
    pub kind: RouteKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Proxied to the session's backend.
    Proxy(Target),
    /// `GET /ping`: the gateway's own health.
    GatewayPing,
    /// StopRuntimeSession.
    StopSession,
    /// InvokeAgentRuntimeCommand: a command run inside the session's backend.
    Command,
    /// An interactive shell in the session's backend, over a WebSocket the gateway answers.
    Shell,
    /// RFC 9728 protected-resource metadata of a JWT runtime (no authentication needed).
    ResourceMetadata,
    /// The workload access tokens' public keys (no authentication needed).
    Jwks,
    /// A request for one of a session's own ports, through its session endpoint.
    SessionPort,
    /// A browser token for a session's port.
    EndpointToken,
}

/// Where on the backend a proxied request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    pub path: BackendPath,
    /// Metrics label.
    pub name: &'static str,
    pub websocket: bool,
}

/// The path a proxied request has on the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendPath {
    /// The client's.
    Same,
    Fixed(&'static str),
    /// Where the runtime serves its protocol: its `protocol_path`, else the contract's
    /// (`/invocations`, `/mcp`, `/`).
    Protocol,
}

impl Target {
    /// The backend path when it differs from the client's; `None` keeps it.
    pub fn backend_path<'a>(&self, runtime: &'a Runtime) -> Option<&'a str> {
        match self.path {
            BackendPath::Same => None,
            BackendPath::Fixed(p) => Some(p),
            BackendPath::Protocol => Some(
                runtime
                    .path
                    .as_deref()
                    .filter(|_| runtime.protocol == self.protocol)
                    .unwrap_or(match self.protocol {
                        Protocol::Http => "/invocations",
                        Protocol::Mcp => "/mcp",
                        Protocol::A2a => "/",
                    }),
            ),
        }
    }
}

impl Route {
    pub fn name(&self) -> &'static str {
        match self.kind {
            RouteKind::Proxy(t) => t.name,
            RouteKind::GatewayPing => "ping",
            RouteKind::StopSession => "stop_session",
            RouteKind::Command => "commands",
            RouteKind::Shell => "shells",
            RouteKind::ResourceMetadata => "resource_metadata",
            RouteKind::Jwks => "jwks",
            RouteKind::SessionPort => "session_endpoint",
            RouteKind::EndpointToken => "endpoint_token",
        }
    }
}

const fn target(protocol: Protocol, name: &'static str) -> Target {
    Target {
        protocol,
        path: BackendPath::Same,
        name,
        websocket: false,
    }
}

/// A request to where the runtime serves `protocol` (see [`BackendPath::Protocol`]).
const fn protocol_target(protocol: Protocol, name: &'static str) -> Target {
    Target {
        path: BackendPath::Protocol,
        ..target(protocol, name)
    }
}

/// What a command's session is found and placed by: the runtime's HTTP port, as invocations.
pub const COMMANDS: Target = target(Protocol::Http, "commands");

/// What a shell's session is found and placed by: a WebSocket on the runtime's HTTP port.
pub const SHELLS: Target = Target {
    websocket: true,
    ..target(Protocol::Http, "shells")
};

const WS: Target = Target {
    websocket: true,
    ..target(Protocol::Http, "ws")
};

pub fn route(
    listener: Protocol,
    method: &Method,
    path: &str,
    config: &Config,
) -> Result<Route, GatewayError> {
    let default = config.default_runtime;
    let at = |kind| {
        Ok(Route {
            runtime: default,
            kind,
        })
    };
    let proxy = |t| at(RouteKind::Proxy(t));
    if *method == Method::GET
        && let Some(id) = path
            .strip_prefix("/runtimes/")
            .and_then(|p| p.strip_suffix("/invocations/.well-known/oauth-protected-resource"))
    {
        // Served on every listener: the challenge names the listener the client used.
        let runtime = runtime_index(id, config)?;
        return Ok(Route {
            runtime,
            kind: RouteKind::ResourceMetadata,
        });
    }
    match (listener, method, path) {
        (
            _,
            &Method::GET,
            "/.well-known/oauth-protected-resource" | "/.well-known/oauth-protected-resource/mcp",
        ) => at(RouteKind::ResourceMetadata),
        (Protocol::Http, &Method::POST, "/invocations") => {
            proxy(protocol_target(Protocol::Http, "invocations"))
        }
        (Protocol::Http, &Method::GET, "/ws") => proxy(WS),
        (Protocol::Http | Protocol::A2a, &Method::GET, "/ping") => at(RouteKind::GatewayPing),
        (Protocol::Http | Protocol::A2a, &Method::GET, "/.well-known/jwks.json") => {
            at(RouteKind::Jwks)
        }
        (Protocol::Http, _, p) if p.starts_with("/runtimes/") => aws_route(method, p, config),
        (Protocol::Mcp, &Method::POST | &Method::GET | &Method::DELETE, "/mcp") => {
            proxy(protocol_target(Protocol::Mcp, "mcp"))
        }
        (Protocol::A2a, &Method::POST, "/") => proxy(protocol_target(Protocol::A2a, "a2a")),
        (Protocol::A2a, &Method::GET, "/.well-known/agent-card.json") => {
            proxy(target(Protocol::A2a, "agent_card"))
        }
        _ => Err(GatewayError::NoRoute),
    }
}

/// The AWS-compatible face: `/runtimes/{arn-or-name}/…`.
fn aws_route(method: &Method, path: &str, config: &Config) -> Result<Route, GatewayError> {
    let rest = &path["/runtimes/".len()..];
    let (id, op) = rest.split_once('/').ok_or(GatewayError::NoRoute)?;
    if let Some(session) = op.strip_prefix("sessions/") {
        let kind = match session.split_once('/') {
            Some((_, p)) if p.starts_with("ports/") => RouteKind::SessionPort,
            Some((_, "endpoint-tokens")) if *method == Method::POST => RouteKind::EndpointToken,
            _ => return Err(GatewayError::NoRoute),
        };
        let runtime = runtime_index(id, config)?;
        return Ok(Route { runtime, kind });
    }
    let kind = match (method, op) {
        (&Method::POST, "invocations" | "invocations/") => None,
        // MCP clients also GET (server stream) and DELETE (end) their endpoint URL.
        (&Method::GET | &Method::DELETE, "invocations") => None,
        (&Method::GET, "ws") => Some(RouteKind::Proxy(Target {
            path: BackendPath::Fixed("/ws"),
            ..WS
        })),
        (&Method::GET, "invocations/.well-known/agent-card.json") => {
            Some(RouteKind::Proxy(Target {
                path: BackendPath::Fixed("/.well-known/agent-card.json"),
                ..target(Protocol::A2a, "agent_card")
            }))
        }
        (&Method::POST, "stopruntimesession") => Some(RouteKind::StopSession),
        (&Method::POST, "commands") => Some(RouteKind::Command),
        (&Method::GET, "ws/shells") => Some(RouteKind::Shell),
        _ => return Err(GatewayError::NoRoute),
    };
    let runtime = runtime_index(id, config)?;
    let protocol = config.runtimes[runtime].protocol;
    if kind.is_none() && *method != Method::POST && protocol != Protocol::Mcp {
        return Err(GatewayError::NoRoute);
    }
    // InvokeAgentRuntime reaches whatever the runtime's protocol serves.
    let kind = kind.unwrap_or(RouteKind::Proxy(protocol_target(protocol, "invocations")));
    Ok(Route { runtime, kind })
}

fn runtime_index(id: &str, config: &Config) -> Result<usize, GatewayError> {
    use routing::face::RuntimeRefError;
    let name = routing::face::runtime_name(id, &config.aws).map_err(|e| match e {
        RuntimeRefError::Malformed => GatewayError::InvalidArn,
        // Another region's or account's runtime is simply not one of ours.
        RuntimeRefError::Elsewhere => GatewayError::UnknownRuntime,
    })?;
    config
        .runtime_index(&name)
        .ok_or(GatewayError::UnknownRuntime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        conf::parse(
            r#"
[[runtimes]]
name = "default"
[[runtimes]]
name = "tools"
protocol = "mcp"
"#,
        )
        .unwrap()
    }

    #[test]
    fn container_paths_reach_the_default_runtime() {
        let c = config();
        let r = route(Protocol::Http, &Method::POST, "/invocations", &c).unwrap();
        assert_eq!((r.runtime, r.name()), (0, "invocations"));
        assert!(route(Protocol::Http, &Method::GET, "/invocations", &c).is_err());
        assert_eq!(
            route(Protocol::Mcp, &Method::DELETE, "/mcp", &c)
                .unwrap()
                .name(),
            "mcp"
        );
        assert_eq!(
            route(Protocol::A2a, &Method::GET, "/ping", &c)
                .unwrap()
                .kind,
            RouteKind::GatewayPing
        );
        assert_eq!(
            route(Protocol::Mcp, &Method::POST, "/", &c),
            Err(GatewayError::NoRoute)
        );
    }

    #[test]
    fn aws_paths_pick_the_runtime_by_name_or_arn() {
        let c = config();
        let arn = "arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A123456789012%3Aruntime%2Ftools";
        let r = route(
            Protocol::Http,
            &Method::POST,
            &format!("/runtimes/{arn}/invocations"),
            &c,
        )
        .unwrap();
        assert_eq!(r.runtime, 1);
        let RouteKind::Proxy(t) = r.kind else {
            panic!()
        };
        assert_eq!(
            (t.protocol, t.backend_path(&c.runtimes[1])),
            (Protocol::Mcp, Some("/mcp"))
        );
        let r = route(Protocol::Http, &Method::GET, "/runtimes/default/ws", &c).unwrap();
        assert!(matches!(r.kind, RouteKind::Proxy(t) if t.websocket));
        assert_eq!(
            route(
                Protocol::Http,
                &Method::POST,
                "/runtimes/nope/invocations",
                &c
            ),
            Err(GatewayError::UnknownRuntime)
        );
        // Only a bedrock-agentcore runtime ARN names a runtime (an S3 ARN used to reach it).
        assert_eq!(
            route(
                Protocol::Http,
                &Method::POST,
                "/runtimes/arn%3Aaws%3As3%3A%3A%3Aruntime%2Fdefault/invocations",
                &c
            ),
            Err(GatewayError::InvalidArn)
        );
        assert_eq!(
            route(
                Protocol::Http,
                &Method::POST,
                "/runtimes/default/stopruntimesession",
                &c
            )
            .unwrap()
            .kind,
            RouteKind::StopSession
        );
    }
}
