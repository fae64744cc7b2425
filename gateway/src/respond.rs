//! Answers the gateway writes itself: its errors in the shape each face's clients read (AWS
//! REST JSON, MCP's and A2A's JSON-RPC, AG-UI's SSE `RUN_ERROR`), JSON answers, and the lingering
//! read before a close. What each error *is* (status, AWS type, message) is `crate::error`'s.

use std::time::Duration;

use auth::AuthFailure;
use bytes::Bytes;
use conf::Protocol;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use routing::face::{self, JsonRpcId, MAX_ENVELOPE_BYTES};
use serde_json::json;

use crate::ctx::RequestCtx;
use crate::error::{ErrorInfo, GatewayError};
use crate::route::RouteKind;

/// How long an error answer waits for the rest of the request (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

impl GatewayError {
    /// The response a client of `face` gets: header and body. On the JSON-RPC faces the error
    /// names the refused call by `rpc_id` when the gateway could read it (`null` otherwise).
    pub fn render(
        &self,
        face: Face,
        session_id: Option<&str>,
        rpc_id: Option<&JsonRpcId>,
    ) -> pingora::Result<(ResponseHeader, Bytes)> {
        let info = self.info();
        let (status, body) = match face {
            Face::Http => (info.status, json!({ "message": info.message })),
            Face::AgUi => ag_ui_error(&info),
            Face::Mcp if *self == GatewayError::NotAcceptable => {
                (406, jsonrpc_error(-32011, &info.message, rpc_id))
            }
            Face::Mcp if *self == GatewayError::McpSessionGone => (404, mcp_error(&info, rpc_id).1),
            Face::Mcp => mcp_error(&info, rpc_id),
            Face::A2a => a2a_error(&info, rpc_id),
        };
        let (content_type, body) = match face {
            // One SSE event, as AG-UI clients read every answer to a run.
            Face::AgUi => (
                "text/event-stream",
                Bytes::from(format!("data: {body}\n\n")),
            ),
            _ => ("application/json", Bytes::from(body.to_string())),
        };
        let mut h = ResponseHeader::build(status, Some(5))?;
        h.insert_header("content-type", content_type)?;
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

/// How an error is written: by the listener's protocol, or as AG-UI's SSE `RUN_ERROR` event
/// on an AG-UI runtime's invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Http,
    AgUi,
    Mcp,
    A2a,
}

impl From<Protocol> for Face {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Http => Face::Http,
            Protocol::Mcp => Face::Mcp,
            Protocol::A2a => Face::A2a,
        }
    }
}

/// AG-UI's `RunErrorEvent`; its `code` is the AWS error type in AG-UI's style
/// (`ServiceQuotaExceededException` → `SERVICE_QUOTA_EXCEEDED`), and a quota refusal is a 429,
/// as AgentCore answers AG-UI runtimes.
fn ag_ui_error(info: &ErrorInfo) -> (u16, serde_json::Value) {
    let name = info.error_type.trim_end_matches("Exception");
    let mut code = String::with_capacity(name.len() + 4);
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            code.push('_');
        }
        code.push(c.to_ascii_uppercase());
    }
    let status = if info.status == 402 { 429 } else { info.status };
    (
        status,
        json!({ "type": "RUN_ERROR", "message": info.message, "code": code }),
    )
}

/// How this request's errors are written: by the listener's protocol, except an AG-UI
/// runtime's invocations (SSE `RUN_ERROR` events).
pub fn error_face(listener: Protocol, ctx: &RequestCtx) -> Face {
    let Some(route) = ctx.route else {
        return listener.into();
    };
    let invocation =
        matches!(route.kind, RouteKind::Proxy(t) if t.protocol == Protocol::Http && !t.websocket);
    if invocation
        && ctx
            .snapshot
            .config
            .runtimes
            .get(route.runtime)
            .is_some_and(|r| r.ag_ui)
    {
        return Face::AgUi;
    }
    listener.into()
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

/// Like nginx's lingering close: after an error answer (a 413 above all), read and drop what the
/// client is still sending, for a moment at most, so closing does not reset the connection
/// before the client has read the answer.
pub async fn linger(session: &mut Session) {
    let _ = tokio::time::timeout(LINGER, session.drain_request_body()).await;
}

/// The JSON-RPC id of a call refused before it was forwarded, read from the start of its body
/// (at most [`MAX_ENVELOPE_BYTES`], for [`LINGER`] at most) so the error names the call. Not
/// for a client waiting for `100 Continue`: it gets its error at once, with `"id": null`.
pub async fn refused_call_id(session: &mut Session) -> Option<JsonRpcId> {
    if session.is_body_empty()
        || session
            .req_header()
            .headers
            .contains_key(http::header::EXPECT)
    {
        return None;
    }
    let mut body = Vec::new();
    let read = async {
        while body.len() <= MAX_ENVELOPE_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, read).await;
    face::jsonrpc_id(&body)
}

/// Writes an error for `face`; returns the status written (0 if the client is gone).
pub async fn respond_error(
    session: &mut Session,
    face: Face,
    e: &GatewayError,
    session_id: Option<&str>,
    rpc_id: Option<&JsonRpcId>,
) -> u16 {
    let Ok((header, body)) = e.render(face, session_id, rpc_id) else {
        return 0;
    };
    let status = header.status.as_u16();
    match session.write_error_response(header, body).await {
        Ok(()) => status,
        Err(_) => 0,
    }
}

pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &serde_json::Value,
    session_id: Option<&str>,
) -> Result<()> {
    if !session.is_body_empty() {
        // The request body was not read; this connection cannot carry another request.
        session.set_keepalive(None);
    }
    let body = Bytes::from(body.to_string());
    let mut h = ResponseHeader::build(status, Some(3))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    if let Some(id) = session_id {
        h.insert_header(crate::headers::SESSION_ID, id)?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use routing::Rejection;

    fn body(face: Protocol, e: &GatewayError) -> (u16, serde_json::Value) {
        let (h, b) = e.render(face.into(), None, None).unwrap();
        (h.status.as_u16(), serde_json::from_slice(&b).unwrap())
    }

    #[test]
    fn ag_ui_errors_are_one_run_error_event() {
        let e = GatewayError::Rejected(Rejection::PrincipalSessions {
            retry_after: std::time::Duration::from_secs(3),
        });
        let (h, b) = e.render(Face::AgUi, Some("s"), None).unwrap();
        assert_eq!(h.status.as_u16(), 429, "a quota refusal is a 429 on AG-UI");
        assert_eq!(h.headers["content-type"], "text/event-stream");
        assert_eq!(h.headers["retry-after"], "3");
        let text = std::str::from_utf8(&b).unwrap();
        let event: serde_json::Value = serde_json::from_str(
            text.strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(event["type"], "RUN_ERROR");
        assert_eq!(event["code"], "SERVICE_QUOTA_EXCEEDED");
        let (_, b) = GatewayError::BackendStatus(500)
            .render(Face::AgUi, None, None)
            .unwrap();
        assert!(
            std::str::from_utf8(&b)
                .unwrap()
                .contains(r#""code":"RUNTIME_CLIENT_ERROR""#)
        );
    }

    #[test]
    fn http_face_is_aws_rest_json() {
        let (h, b) = GatewayError::PayloadTooLarge { limit: 10 }
            .render(Face::Http, Some("s"), None)
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
        .render(Face::Http, None, None)
        .unwrap();
        assert_eq!(h.status.as_u16(), 402);
        assert_eq!(h.headers["retry-after"], "42");
        let (h, _) = GatewayError::Rejected(Rejection::SessionInflight)
            .render(Face::Http, None, None)
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
            .render(Face::Mcp, None, Some(&id))
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
