//! Header names of the contract, and what may reach a backend.

use pingora::http::RequestHeader;

pub const SESSION_ID: &str = "x-amzn-bedrock-agentcore-runtime-session-id";
pub const REQUEST_ID: &str = "x-amzn-bedrock-agentcore-runtime-request-id";
pub const MCP_SESSION_ID: &str = "mcp-session-id";
pub const TRACEPARENT: &str = "traceparent";
/// The one `x-amzn-*` trace header the contract passes on.
const AMZN_TRACE_ID: &str = "x-amzn-trace-id";
const CUSTOM_PREFIX: &str = "x-amzn-bedrock-agentcore-runtime-custom-";

/// Rewrites the request for the backend: drops the inbound credential and every `x-amz-*` /
/// `x-amzn-*` header except `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*` and `X-Amzn-Trace-Id`, then sets the session
/// id, the request id and (when the client sent none) a W3C `traceparent`.
/// Hop-by-hop headers are Pingora's job (its upstream request policy).
pub fn to_backend(req: &mut RequestHeader, session_id: &str, request_id: &str) {
    let drop: Vec<_> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            n == "authorization"
                || (n.starts_with("x-amz-"))
                || (n.starts_with("x-amzn-") && !n.starts_with(CUSTOM_PREFIX) && n != AMZN_TRACE_ID)
        })
        .cloned()
        .collect();
    for name in drop {
        req.remove_header(&name);
    }
    // Both values are validated visible ASCII (session id) or generated hex (request id).
    let _ = req.insert_header(SESSION_ID, session_id);
    let _ = req.insert_header(REQUEST_ID, request_id);
    if !req.headers.contains_key(TRACEPARENT) {
        let _ = req.insert_header(TRACEPARENT, new_traceparent());
    }
}

/// A fresh W3C trace context: version 00, random trace and span ids, sampled.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple();
    let span = uuid::Uuid::new_v4().as_u64_pair().1;
    format!("00-{trace}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_aws_headers_never_reach_the_backend() {
        let mut req = RequestHeader::build("POST", b"/invocations", None).unwrap();
        for (k, v) in [
            ("authorization", "Bearer t"),
            ("x-amz-date", "20260101T000000Z"),
            ("x-amz-security-token", "tok"),
            ("x-amzn-trace-id", "Root=1"),
            ("x-amzn-bedrock-agentcore-runtime-session-id", "forged"),
            ("x-amzn-bedrock-agentcore-runtime-custom-tenant", "acme"),
            ("content-type", "application/json"),
        ] {
            req.insert_header(k, v).unwrap();
        }
        to_backend(&mut req, "sid", "rid");
        let h = &req.headers;
        assert!(!h.contains_key("authorization"));
        assert!(!h.contains_key("x-amz-date"));
        assert!(!h.contains_key("x-amz-security-token"));
        assert_eq!(h["x-amzn-trace-id"], "Root=1");
        assert_eq!(h[SESSION_ID], "sid");
        assert_eq!(h[REQUEST_ID], "rid");
        assert_eq!(h["x-amzn-bedrock-agentcore-runtime-custom-tenant"], "acme");
        assert_eq!(h["content-type"], "application/json");
        let tp = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(tp.len(), 55, "{tp}");
    }
}
