//! Every way a request can fail.
//!
//! One enum for the request path and one exhaustive `match` to status + AWS error type
//! ([`GatewayError::info`]). How each face writes it — AWS's rest-json on HTTP, JSON-RPC error
//! objects on MCP and A2A as AgentCore does (see DESIGN.md §1b), SSE on AG-UI — is
//! `crate::respond`'s.

use auth::AuthFailure;
use routing::{Rejection, SessionIdError};

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
    /// StopRuntimeSession's body or its `clientToken` is malformed.
    #[error("invalid stop request: {0}")]
    InvalidStopRequest(&'static str),
    /// `runtimeUserId` from a caller not allowed to name users.
    #[error("user id not allowed")]
    UserIdNotAllowed,
    #[error("invalid user id")]
    InvalidUserId,
    /// A `clientToken` first used to stop another session id.
    #[error("client token reused")]
    ClientTokenReused,
    /// A session endpoint request for a port outside the runtime's `allowed_ports`.
    #[error("port {0} is not allowed")]
    PortNotAllowed(u16),
    /// A session endpoint's browser token that is unknown, expired, or for another port.
    #[error("invalid session endpoint token")]
    EndpointTokenInvalid,
    /// A malformed session endpoint request.
    #[error("invalid session endpoint request: {0}")]
    InvalidEndpointRequest(&'static str),
    /// A `Last-Event-ID` the gateway cannot resume from.
    #[error("stream not resumable: {0}")]
    StreamNotResumable(&'static str),
    /// The session's backend does not listen on the port asked for.
    #[error("nothing listens on port {0}")]
    PortUnreachable(u16),
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
            InvalidStopRequest(why) => (400, "ValidationException", (*why).to_owned(), None),
            UserIdNotAllowed => (
                403,
                "AccessDeniedException",
                "This caller may not act for a user (runtimeUserId): it is not among the runtime's user_id_principals".into(),
                None,
            ),
            InvalidUserId => (
                400,
                "ValidationException",
                "runtimeUserId must be one value of 1 to 256 visible characters".into(),
                None,
            ),
            ClientTokenReused => (
                409,
                "ConflictException",
                "This clientToken was already used to stop another session".into(),
                None,
            ),
            PortNotAllowed(port) => (
                403,
                "AccessDeniedException",
                format!("Port {port} is not among the runtime's allowed_ports"),
                None,
            ),
            EndpointTokenInvalid => (
                403,
                "AccessDeniedException",
                "The session endpoint token is unknown, expired, or for another port".into(),
                None,
            ),
            InvalidEndpointRequest(why) => (400, "ValidationException", (*why).to_owned(), None),
            StreamNotResumable(why) => (404, "ResourceNotFoundException", (*why).to_owned(), None),
            PortUnreachable(port) => (
                502,
                "RuntimeClientError",
                format!("Nothing in the session listens on port {port}"),
                None,
            ),
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
            InvalidStopRequest(_) => "invalid_stop_request",
            ClientTokenReused => "client_token_reused",
            UserIdNotAllowed => "user_id_not_allowed",
            PortNotAllowed(_) => "port_not_allowed",
            EndpointTokenInvalid => "endpoint_token_invalid",
            InvalidEndpointRequest(_) => "invalid_endpoint_request",
            StreamNotResumable(_) => "stream_not_resumable",
            PortUnreachable(_) => "port_unreachable",
            InvalidUserId => "invalid_user_id",
            Internal => "internal",
        }
    }
}

/// `Retry-After` in whole seconds, never 0 (a client told 0 retries at once).
fn retry_secs(after: std::time::Duration) -> u64 {
    after.as_secs_f64().ceil().max(1.0) as u64
}
