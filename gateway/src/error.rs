//! Every way a request can fail, and how each face of the gateway says so.
//!
//! One enum for the request path and one exhaustive `match` to status + AWS error type
//! ([`GatewayError::info`]). The HTTP face answers in AWS's rest-json shape; MCP and A2A wrap
//! the same facts in JSON-RPC error objects as AgentCore does (see DESIGN.md §1b).

use auth::AuthFailure;
use bytes::Bytes;
use conf::Protocol;
use pingora::http::ResponseHeader;
use routing::face::JsonRpcId;
use routing::{Rejection, SessionIdError};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this method and path")]
    NoRoute,
    #[error("unknown runtime")]
    UnknownRuntime,
    #[error("unknown runtime endpoint")]
    UnknownEndpoint,
    #[error("invalid session id: {0}")]
    InvalidSessionId(SessionIdError),
    #[error("a session id header is required")]
    MissingSessionId,
    #[error("session not found")]
    SessionNotFound,
    /// An `Mcp-Session-Id` no live session has (never seen, or its session ended): the MCP face
    /// answers HTTP 404, on which the transport's clients start a new session.
    #[error("MCP session not found")]
    McpSessionGone,
    #[error("payload over the {limit}-byte cap")]
    PayloadTooLarge { limit: u64 },
    #[error("not admitted: {0}")]
    Rejected(Rejection),
    #[error("no backend is free for a new session")]
    PoolExhausted,
    #[error("the session is ending")]
    SessionEnding,
    #[error("the session was stopped while the request was in flight")]
    SessionStopped,
    #[error("the runtime's backend could not be started")]
    BackendStartFailed,
    #[error("the runtime does not serve this protocol")]
    ProtocolNotServed,
    #[error("the backend could not be reached")]
    BackendUnreachable,
    #[error("the backend answered {0}")]
    BackendStatus(u16),
    #[error("the backend did not answer in time")]
    BackendTimeout,
    #[error("MCP requires Accept: application/json, text/event-stream")]
    NotAcceptable,
    #[error("not authenticated: {reason}")]
    Unauthorized {
        reason: AuthFailure,
        /// RFC 9728 metadata URL for the `WWW-Authenticate` challenge.
        resource_metadata: String,
    },
    #[error("access denied: {0}")]
    AccessDenied(AuthFailure),
    #[error("authorization method mismatch")]
    MethodMismatch,
    #[error("the identity provider cannot be reached")]
    IdentityProviderUnavailable,
    #[error("the request body ended early")]
    IncompleteBody,
    #[error("WebSocket closed with {0}")]
    WebSocketLimit(u16),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A replica cannot reach the shared session directory (Redis).
    #[error("the session directory is unavailable")]
    DirectoryUnavailable,
    #[error("too many client connections")]
    TooManyConnections,
    #[error("the gateway is out of resources (descriptors, memory)")]
    GatewayExhausted,
    #[error("the request was not received in time")]
    RequestTimeout,
    #[error("malformed request")]
    MalformedRequest,
    #[error("header {name} is too large or repeated too often")]
    HeaderTooLarge { name: String },
    #[error("invalid runtime ARN")]
    InvalidArn,
    #[error("the backend stopped answering its health checks")]
    BackendUnhealthy,
    #[error("the backend switched protocols unasked")]
    BackendUpgradedUnasked,
    #[error("invalid shellId")]
    InvalidShellId,
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The session's backend is not one the gateway can run commands in (the reason says
    /// why, for the client).
    #[error("commands are not available for this session: {0}")]
    CommandsUnavailable(&'static str),
    #[error("internal error")]
    Internal,
}

/// What the client is told. `message` never carries internal detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub status: u16,
    pub error_type: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl GatewayError {
    pub fn info(&self) -> ErrorInfo {
        use GatewayError::*;
        let (status, error_type, message, retry_after_secs): (u16, &'static str, String, _) = match self {
            NoRoute => (404, "ResourceNotFoundException", "Unknown operation".into(), None),
            UnknownRuntime => (404, "ResourceNotFoundException", "Runtime not found".into(), None),
            UnknownEndpoint => (
                404,
                "ResourceNotFoundException",
                "Runtime endpoint (qualifier) not found".into(),
                None,
            ),
            InvalidSessionId(e) => (400, "ValidationException", e.to_string(), None),
            MissingSessionId => (
                400,
                "ValidationException",
                "X-Amzn-Bedrock-AgentCore-Runtime-Session-Id is required".into(),
                None,
            ),
            SessionNotFound | McpSessionGone => (
                404,
                "ResourceNotFoundException",
                "Session not found or already terminated".into(),
                None,
            ),
            PayloadTooLarge { limit } => (
                413,
                "ValidationException",
                format!("Payload exceeds the maximum size of {limit} bytes"),
                None,
            ),
            Rejected(Rejection::ActiveSessions { retry_after }) => (
                402,
                "ServiceQuotaExceededException",
                "Active session limit reached".into(),
                Some(retry_secs(*retry_after)),
            ),
            Rejected(Rejection::PrincipalSessions { retry_after }) => (
                402,
                "ServiceQuotaExceededException",
                "Active session limit reached for this caller".into(),
                Some(retry_secs(*retry_after)),
            ),
            Rejected(Rejection::SessionRate { retry_after }) => (
                429,
                "ThrottlingException",
                "Rate exceeded: too many new sessions".into(),
                Some(retry_secs(*retry_after)),
            ),
            Rejected(Rejection::PrincipalRate { retry_after }) => (
                429,
                "ThrottlingException",
                "Rate exceeded".into(),
                Some(retry_secs(*retry_after)),
            ),
            Rejected(Rejection::SessionInflight) => (
                429,
                "ThrottlingException",
                "Rate exceeded: too many concurrent requests in this session".into(),
                Some(1),
            ),
            PoolExhausted => (
                402,
                "ServiceQuotaExceededException",
                "No runtime capacity is free for a new session".into(),
                Some(5),
            ),
            SessionEnding => (
                409,
                "RetryableConflictException",
                "Session operation in progress, please retry".into(),
                Some(1),
            ),
            SessionStopped => (
                409,
                "RetryableConflictException",
                "The session was stopped while this request was in flight".into(),
                None,
            ),
            BackendStartFailed => (
                424,
                "RuntimeClientError",
                "Runtime initialization failed: the session's backend did not become healthy".into(),
                None,
            ),
            ProtocolNotServed => (
                424,
                "RuntimeClientError",
                "The runtime does not serve this protocol".into(),
                None,
            ),
            BackendUnreachable => (
                424,
                "RuntimeClientError",
                "The runtime could not be reached".into(),
                None,
            ),
            BackendTimeout => (
                504,
                "RuntimeClientError",
                "The runtime did not answer within the request timeout".into(),
                None,
            ),
            BackendStatus(code) => (
                424,
                "RuntimeClientError",
                format!("Received error ({code}) from runtime"),
                None,
            ),
            Unauthorized { .. } => (
                401,
                "UnauthorizedException",
                "JWT bearer token is invalid or not found".into(),
                None,
            ),
            AccessDenied(_) => (403, "AccessDeniedException", "Access denied".into(), None),
            MethodMismatch => (
                403,
                "AccessDeniedException",
                "Authorization method mismatch. The agent is configured for a different authorization \
                 method than what was used in your request. Check the agent's authorization \
                 configuration and ensure your request uses the matching method (OAuth or SigV4)"
                    .into(),
                None,
            ),
            IdentityProviderUnavailable => (
                500,
                "InternalServerException",
                "The identity provider cannot be reached".into(),
                Some(1),
            ),
            IncompleteBody => (
                400,
                "ValidationException",
                "The request body ended before its declared length".into(),
                None,
            ),
            NotAcceptable => (
                406,
                "ValidationException",
                "Accept Header Error - MCP protocol requires Accept header: application/json, text/event-stream"
                    .into(),
                None,
            ),
            WebSocketLimit(code) => (
                400,
                "ValidationException",
                format!("WebSocket closed with {code}"),
                None,
            ),
            ShuttingDown => (503, "ServiceUnavailableException", "The gateway is shutting down".into(), Some(1)),
            DirectoryUnavailable => (
                503,
                "ServiceUnavailableException",
                "The session directory is unavailable, please retry".into(),
                Some(1),
            ),
            TooManyConnections => (
                503,
                "ServiceUnavailableException",
                "Too many connections, please retry".into(),
                Some(1),
            ),
            GatewayExhausted => (
                503,
                "ServiceUnavailableException",
                "The gateway is temporarily out of resources, please retry".into(),
                Some(1),
            ),
            RequestTimeout => (
                408,
                "RequestTimeoutException",
                "The request was not received in time".into(),
                None,
            ),
            MalformedRequest => (
                400,
                "ValidationException",
                "Malformed HTTP request".into(),
                None,
            ),
            HeaderTooLarge { name } => (
                431,
                "ValidationException",
                format!(
                    "Header {name} exceeds {} bytes, or more than {} such headers were sent",
                    conf::MAX_ALLOWLISTED_VALUE_BYTES,
                    conf::MAX_CUSTOM_HEADERS
                ),
                None,
            ),
            InvalidCommand(message) => (400, "ValidationException", message.clone(), None),
            InvalidShellId => (
                400,
                "ValidationException",
                "shellId must be 1 to 128 characters: a letter or digit, then letters, digits, '_' or '-'".into(),
                None,
            ),
            CommandsUnavailable(why) => (400, "ValidationException", (*why).to_owned(), None),
            InvalidArn => (
                400,
                "ValidationException",
                "Invalid runtime ARN: expected arn:aws:bedrock-agentcore:REGION:ACCOUNT:runtime/NAME".into(),
                None,
            ),
            BackendUnhealthy => (
                424,
                "RuntimeClientError",
                "The runtime stopped answering health checks; the session was ended".into(),
                None,
            ),
            BackendUpgradedUnasked => (
                424,
                "RuntimeClientError",
                "The runtime answered with an invalid response".into(),
                None,
            ),
            Internal => (500, "InternalServerException", "Internal server error".into(), None),
        };
        ErrorInfo {
            status,
            error_type,
            message,
            retry_after_secs,
        }
    }

    /// A short stable name for metrics and logs.
    pub fn reason(&self) -> &'static str {
        use GatewayError::*;
        match self {
            NoRoute => "no_route",
            UnknownRuntime => "unknown_runtime",
            UnknownEndpoint => "unknown_endpoint",
            InvalidSessionId(_) => "invalid_session_id",
            MissingSessionId => "missing_session_id",
            SessionNotFound | McpSessionGone => "session_not_found",
            PayloadTooLarge { .. } => "payload_too_large",
            Rejected(r) => r.reason(),
            PoolExhausted => "pool_exhausted",
            SessionEnding => "session_ending",
            SessionStopped => "session_stopped",
            BackendStartFailed => "backend_start_failed",
            ProtocolNotServed => "protocol_not_served",
            BackendUnreachable => "backend_unreachable",
            BackendStatus(_) => "backend_status",
            BackendTimeout => "backend_timeout",
            NotAcceptable => "not_acceptable",
            Unauthorized { .. } => "unauthorized",
            AccessDenied(_) => "access_denied",
            MethodMismatch => "method_mismatch",
            IdentityProviderUnavailable => "identity_provider_unavailable",
            IncompleteBody => "incomplete_body",
            WebSocketLimit(1009) => "websocket_frame_too_big",
            WebSocketLimit(_) => "websocket_frame_rate",
            ShuttingDown => "shutting_down",
            DirectoryUnavailable => "directory_unavailable",
            TooManyConnections => "too_many_connections",
            GatewayExhausted => "gateway_exhausted",
            RequestTimeout => "request_timeout",
            MalformedRequest => "malformed_request",
            HeaderTooLarge { .. } => "header_too_large",
            InvalidArn => "invalid_arn",
            BackendUnhealthy => "backend_unhealthy",
            BackendUpgradedUnasked => "backend_upgraded_unasked",
            InvalidCommand(_) => "invalid_command",
            InvalidShellId => "invalid_shell_id",
            CommandsUnavailable(_) => "commands_unavailable",
            Internal => "internal",
        }
    }

    /// The response a client of `face` gets: header and body. On the JSON-RPC faces the error
    /// names the refused call by `rpc_id` when the gateway could read it (`null` otherwise).
    pub fn render(
        &self,
        face: Protocol,
        session_id: Option<&str>,
        rpc_id: Option<&JsonRpcId>,
    ) -> pingora::Result<(ResponseHeader, Bytes)> {
        let info = self.info();
        let (status, body) = match face {
            Protocol::Http => (info.status, json!({ "message": info.message })),
            Protocol::Mcp if *self == GatewayError::NotAcceptable => {
                (406, jsonrpc_error(-32011, &info.message, rpc_id))
            }
            Protocol::Mcp if *self == GatewayError::McpSessionGone => {
                (404, mcp_error(&info, rpc_id).1)
            }
            Protocol::Mcp => mcp_error(&info, rpc_id),
            Protocol::A2a => a2a_error(&info, rpc_id),
        };
        let body = Bytes::from(body.to_string());
        let mut h = ResponseHeader::build(status, Some(5))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("x-amzn-errortype", info.error_type)?;
        if let Some(secs) = info.retry_after_secs {
            h.insert_header("retry-after", secs.to_string())?;
        }
        if let Some(id) = session_id {
            h.insert_header(crate::headers::SESSION_ID, id)?;
        }
        if let GatewayError::Unauthorized {
            reason,
            resource_metadata,
        } = self
        {
            let mut challenge = format!("Bearer resource_metadata=\"{resource_metadata}\"");
            if *reason != AuthFailure::Missing {
                challenge.push_str(", error=\"invalid_token\"");
            }
            h.insert_header("www-authenticate", challenge)?;
        }
        Ok((h, body))
    }
}

/// `Retry-After` in whole seconds, never 0 (a client told 0 retries at once).
fn retry_secs(after: std::time::Duration) -> u64 {
    after.as_secs_f64().ceil().max(1.0) as u64
}

/// MCP: a JSON-RPC error with HTTP 200, except the statuses MCP clients act on (401, 403, 406).
fn mcp_error(info: &ErrorInfo, rpc_id: Option<&JsonRpcId>) -> (u16, serde_json::Value) {
    let code = match info.error_type {
        "UnauthorizedException" => -32001,
        "AccessDeniedException" => -32002,
        "ThrottlingException" | "ServiceQuotaExceededException" => -32003,
        "ResourceNotFoundException" => -32004,
        "ConflictException" | "RetryableConflictException" => -32005,
        "ValidationException" => -32006,
        "RuntimeClientError" => -32010,
        _ => -32603,
    };
    let status = if matches!(info.status, 401 | 403 | 406) {
        info.status
    } else {
        200
    };
    (status, jsonrpc_error(code, &info.message, rpc_id))
}

/// A2A: the real HTTP status with a JSON-RPC error body; quota errors are 429 on this face.
fn a2a_error(info: &ErrorInfo, rpc_id: Option<&JsonRpcId>) -> (u16, serde_json::Value) {
    let code = match info.error_type {
        "ResourceNotFoundException" => -32051,
        "ValidationException" => -32052,
        "ThrottlingException" | "ServiceQuotaExceededException" => -32053,
        "ConflictException" | "RetryableConflictException" => -32054,
        "RuntimeClientError" => -32055,
        _ => -32603,
    };
    let status = if info.status == 402 { 429 } else { info.status };
    (status, jsonrpc_error(code, &info.message, rpc_id))
}

fn jsonrpc_error(code: i64, message: &str, id: Option<&JsonRpcId>) -> serde_json::Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(face: Protocol, e: &GatewayError) -> (u16, serde_json::Value) {
        let (h, b) = e.render(face, None, None).unwrap();
        (h.status.as_u16(), serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn http_face_is_aws_rest_json() {
        let (h, b) = GatewayError::PayloadTooLarge { limit: 10 }
            .render(Protocol::Http, Some("s"), None)
            .unwrap();
        assert_eq!(h.status.as_u16(), 413);
        assert_eq!(h.headers["x-amzn-errortype"], "ValidationException");
        assert_eq!(h.headers[crate::headers::SESSION_ID], "s");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert!(v["message"].as_str().unwrap().contains("10 bytes"));
    }

    #[test]
    fn quota_and_throttle_carry_retry_after() {
        let (h, _) = GatewayError::Rejected(Rejection::ActiveSessions {
            retry_after: std::time::Duration::from_millis(41_200),
        })
        .render(Protocol::Http, None, None)
        .unwrap();
        assert_eq!(h.status.as_u16(), 402);
        assert_eq!(h.headers["retry-after"], "42");
        let (h, _) = GatewayError::Rejected(Rejection::SessionInflight)
            .render(Protocol::Http, None, None)
            .unwrap();
        assert_eq!(h.status.as_u16(), 429);
        assert_eq!(h.headers["retry-after"], "1");
    }

    #[test]
    fn mcp_face_uses_jsonrpc_with_200() {
        let (status, v) = body(Protocol::Mcp, &GatewayError::BackendStatus(500));
        assert_eq!(status, 200);
        assert_eq!(v["error"]["code"], -32010);
        let (status, v) = body(
            Protocol::Mcp,
            &GatewayError::Rejected(Rejection::ActiveSessions {
                retry_after: std::time::Duration::from_secs(1),
            }),
        );
        assert_eq!(status, 200);
        assert_eq!(v["error"]["code"], -32003);
        assert!(v["id"].is_null(), "no id read: null");
        let id = JsonRpcId::String("req-001".into());
        let (_, b) = GatewayError::SessionNotFound
            .render(Protocol::Mcp, None, Some(&id))
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["error"]["code"].as_i64()),
            (Some("req-001"), Some(-32004))
        );
    }

    #[test]
    fn a2a_face_keeps_status_and_maps_quota_to_429() {
        let (status, v) = body(Protocol::A2a, &GatewayError::SessionNotFound);
        assert_eq!((status, v["error"]["code"].as_i64()), (404, Some(-32051)));
        let (status, v) = body(Protocol::A2a, &GatewayError::PoolExhausted);
        assert_eq!((status, v["error"]["code"].as_i64()), (429, Some(-32053)));
    }
}
