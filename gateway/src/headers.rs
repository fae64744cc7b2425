//! Header names of the contract, and what may reach a backend.

use auth::BEARER_SUBPROTOCOL;
use conf::MAX_ALLOWLISTED_VALUE_BYTES;
use pingora::http::RequestHeader;

pub const SESSION_ID: &str = "x-amzn-bedrock-agentcore-runtime-session-id";
pub const REQUEST_ID: &str = "x-amzn-bedrock-agentcore-runtime-request-id";
pub const MCP_SESSION_ID: &str = "mcp-session-id";
pub const TRACEPARENT: &str = "traceparent";
/// The user a caller acts for (boto3 `runtimeUserId`): passed on only for callers allowed to
/// name one, which admission checks (`crate::request`).
pub const USER_ID: &str = "x-amzn-bedrock-agentcore-runtime-user-id";
/// The same names parsed once (a `&str` key is parsed again at every lookup).
pub static USER_ID_NAME: http::HeaderName = http::HeaderName::from_static(USER_ID);
static BAGGAGE: http::HeaderName = http::HeaderName::from_static("baggage");
/// The one `x-amzn-*` trace header the contract passes on.
const AMZN_TRACE_ID: &str = "x-amzn-trace-id";
const CUSTOM_PREFIX: &str = "x-amzn-bedrock-agentcore-runtime-custom-";

/// Headers every backend request may carry: framing and upgrades, content negotiation, the MCP
/// and A2A protocol headers, and trace context. Anything else needs the runtime's allow-list.
/// (A `match`: the compiler dispatches on the length first, instead of comparing every entry.)
fn always_passed(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "content-type"
            | "content-encoding"
            | "accept"
            | "accept-encoding"
            | "expect"
            | "connection"
            | "upgrade"
            | "te"
            | "sec-websocket-key"
            | "sec-websocket-version"
            | "sec-websocket-protocol"
            | "sec-websocket-extensions"
            | MCP_SESSION_ID
            | "mcp-protocol-version"
            | "mcp-method"
            | "mcp-name"
            | "last-event-id"
            | "a2a-version"
            | "x-a2a-extensions"
            | TRACEPARENT
            | "tracestate"
            | "baggage"
            | AMZN_TRACE_ID
            | USER_ID
    )
}

/// Rewrites the request for the backend, as AgentCore does: only the contract's headers,
/// `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*` and the runtime's allow-listed headers (values up
/// to 4 KB) pass; never a credential (`Authorization` unless allow-listed on a JWT runtime,
/// SigV4 query parameters, the bearer WebSocket subprotocol), `x-amz-*` or other `x-amzn-*`.
/// Then the session id, a request id and (when the client sent none) a `traceparent` are set.
/// Hop-by-hop headers are Pingora's job (its upstream request policy).
pub fn to_backend(
    req: &mut RequestHeader,
    session_id: &str,
    request_id: &str,
    allowlist: &[String],
) {
    // The client's own session id header passes when it is exactly ours (one value): removing
    // it and inserting it again cost two map rebuilds per request.
    let ours = {
        let mut sent = req.headers.get_all(SESSION_ID).iter();
        sent.next()
            .is_some_and(|v| v.as_bytes() == session_id.as_bytes())
            && sent.next().is_none()
    };
    let drop: Vec<_> = req
        .headers
        .iter()
        .filter(|(name, value)| {
            let n = name.as_str();
            let passes = always_passed(n)
                || n.starts_with(CUSTOM_PREFIX)
                || (ours && n == SESSION_ID)
                || (allowlist.iter().any(|a| a == n) && value.len() <= MAX_ALLOWLISTED_VALUE_BYTES);
            !passes
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in drop {
        req.remove_header(&name);
    }
    strip_bearer_subprotocol(req);
    strip_presigned_query(req);
    custom_headers_from_query(req);
    // Both values are validated visible ASCII (session id) or generated hex (request id).
    if !ours {
        let _ = req.insert_header(SESSION_ID, session_id);
    }
    let _ = req.insert_header(REQUEST_ID, request_id);
    if !req.headers.contains_key(TRACEPARENT) {
        let _ = req.insert_header(TRACEPARENT, crate::ids::traceparent());
    }
}

/// The W3C baggage keys the bedrock-agentcore SDK reads a routing experiment from.
/// The headers of a request through a session endpoint: the app's own (cookies, content
/// types, origins, WebSocket negotiation) pass, the gateway's credentials never do
/// (`Authorization`, SigV4 query parameters, the bearer WebSocket subprotocol, `x-amz-*` and
/// `x-amzn-*`). Then the session id and a request id, as for invocations.
pub fn to_port(req: &mut RequestHeader, session_id: &str, request_id: &str) {
    let drop: Vec<_> = req
        .headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            n == "authorization" || n.starts_with("x-amz-") || n.starts_with("x-amzn-")
        })
        .cloned()
        .collect();
    for name in drop {
        req.remove_header(&name);
    }
    strip_bearer_subprotocol(req);
    strip_presigned_query(req);
    let _ = req.insert_header(SESSION_ID, session_id);
    let _ = req.insert_header(REQUEST_ID, request_id);
}

const EXPERIMENT_PREFIX: &str = "aws.agentcore.gateway.";
const EXPERIMENT_ARN: &str = "aws.agentcore.gateway.routing_experiment_arn";
const EXPERIMENT_VARIANT: &str = "aws.agentcore.gateway.routing_experiment_variant_name";

/// The routing experiment in the request's `baggage`: the gateway's own entries (`experiment`:
/// the splitting endpoint's ARN and the session's variant) replace whatever the client said
/// about it, so an agent never takes a client's word for which variant it is.
pub fn experiment_baggage(req: &mut RequestHeader, experiment: Option<(&str, &str)>) {
    if experiment.is_none() && !req.headers.contains_key(&BAGGAGE) {
        return;
    }
    let sent: Vec<String> = req
        .headers
        .get_all(&BAGGAGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let spoofed = sent.iter().any(|v| v.contains(EXPERIMENT_PREFIX));
    if experiment.is_none() && !spoofed {
        return;
    }
    let mut entries: Vec<String> = sent
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with(EXPERIMENT_PREFIX))
        .map(str::to_owned)
        .collect();
    if let Some((arn, variant)) = experiment {
        let enc = |v: &str| percent_encoding::utf8_percent_encode(v, BAGGAGE_VALUE).to_string();
        entries.push(format!("{EXPERIMENT_ARN}={}", enc(arn)));
        entries.push(format!("{EXPERIMENT_VARIANT}={}", enc(variant)));
    }
    req.remove_header(&BAGGAGE);
    if !entries.is_empty() {
        let _ = req.insert_header(BAGGAGE.clone(), entries.join(","));
    }
}

/// What a baggage value must percent-encode (W3C baggage: no controls, space, `"`, `,`, `;`, `\`,
/// and `%` itself).
const BAGGAGE_VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%');

/// Drops `base64UrlBearerAuthorization.<token>` (and the bare name offered beside it) from the
/// WebSocket subprotocols: they were for the gateway, which answers the handshake's choice.
fn strip_bearer_subprotocol(req: &mut RequestHeader) {
    // Every `Sec-WebSocket-Protocol` field: the token may hide in any of them (authentication
    // reads them all).
    let prefix = format!("{BEARER_SUBPROTOCOL}.");
    let offered: Vec<String> = req
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let bearer = |p: &String| p.starts_with(prefix.as_str()) || p == BEARER_SUBPROTOCOL;
    if !offered.iter().any(bearer) {
        return;
    }
    let kept: Vec<String> = offered.into_iter().filter(|p| !bearer(p)).collect();
    let kept = kept.join(", ");
    req.remove_header("sec-websocket-protocol");
    if !kept.is_empty() {
        let _ = req.insert_header("sec-websocket-protocol", kept);
    }
}

/// WebSocket clients in browsers cannot set headers: `X-Amzn-Bedrock-AgentCore-Runtime-Custom-*`
/// query parameters reach the backend as (lower-cased) headers, as AgentCore delivers them.
/// A header the client did send wins.
fn custom_headers_from_query(req: &mut RequestHeader) {
    let Some(query) = req.uri.query() else { return };
    let found: Vec<(String, String)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| {
            k.len() > CUSTOM_PREFIX.len()
                && k[..CUSTOM_PREFIX.len()].eq_ignore_ascii_case(CUSTOM_PREFIX)
        })
        .filter_map(|(k, v)| {
            let value = percent_encoding::percent_decode_str(v).decode_utf8().ok()?;
            (value.len() <= MAX_ALLOWLISTED_VALUE_BYTES)
                .then(|| (k.to_ascii_lowercase(), value.into_owned()))
        })
        .collect();
    for (name, value) in found {
        if !req.headers.contains_key(name.as_str()) {
            let _ = req.insert_header(name, value);
        }
    }
}

/// Drops the SigV4 presigned-URL parameters from the query.
fn strip_presigned_query(req: &mut RequestHeader) {
    let Some(query) = req.uri.query() else { return };
    if !query.contains("X-Amz-") {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("X-Amz-"))
        .collect();
    let path = req.uri.path();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    if let Ok(uri) = target.parse::<http::Uri>() {
        req.set_uri(uri);
    }
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
        req.insert_header("x-api-key", "k").unwrap();
        req.insert_header("cookie", "c=1").unwrap();
        req.insert_header("user-agent", "curl").unwrap();
        to_backend(&mut req, "sid", "rid", &["x-api-key".to_owned()]);
        let h = &req.headers;
        assert!(!h.contains_key("authorization"));
        assert!(!h.contains_key("x-amz-date"));
        assert!(!h.contains_key("x-amz-security-token"));
        assert_eq!(h["x-amzn-trace-id"], "Root=1");
        assert_eq!(h[SESSION_ID], "sid");
        assert_eq!(h[REQUEST_ID], "rid");
        assert_eq!(h["x-amzn-bedrock-agentcore-runtime-custom-tenant"], "acme");
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-api-key"], "k", "allow-listed");
        assert!(!h.contains_key("cookie"));
        assert!(!h.contains_key("user-agent"));
        let tp = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(tp.len(), 55, "{tp}");
    }

    #[test]
    fn the_backend_sees_exactly_one_session_id_ours() {
        for sent in [&["sid"][..], &["sid", "forged"], &["forged", "sid"], &[]] {
            let mut req = RequestHeader::build("POST", b"/invocations", None).unwrap();
            for v in sent {
                req.append_header(SESSION_ID, *v).unwrap();
            }
            to_backend(&mut req, "sid", "rid", &[]);
            let all: Vec<_> = req.headers.get_all(SESSION_ID).iter().collect();
            assert_eq!(all, ["sid"], "client sent {sent:?}");
        }
    }

    #[test]
    fn gateway_credentials_in_the_url_and_subprotocol_are_removed() {
        let mut req = RequestHeader::build(
            "GET",
            b"/ws?a=1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00&X-Amz-Credential=x",
            None,
        )
        .unwrap();
        req.insert_header(
            "sec-websocket-protocol",
            "base64UrlBearerAuthorization.dG9rZW4, base64UrlBearerAuthorization, chat",
        )
        .unwrap();
        to_backend(&mut req, "sid", "rid", &[]);
        assert_eq!(req.uri.to_string(), "/ws?a=1");
        assert_eq!(req.headers["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn custom_headers_travel_in_the_query_for_browsers() {
        let mut req = RequestHeader::build(
            "GET",
            b"/ws?X-Amzn-Bedrock-AgentCore-Runtime-Custom-Tenant=acme%20corp&other=1",
            None,
        )
        .unwrap();
        to_backend(&mut req, "sid", "rid", &[]);
        assert_eq!(
            req.headers["x-amzn-bedrock-agentcore-runtime-custom-tenant"],
            "acme corp"
        );
        assert!(!req.headers.contains_key("other"));
    }

    #[test]
    fn the_gateway_alone_names_the_routing_experiment() {
        let mut req = RequestHeader::build("POST", b"/invocations", None).unwrap();
        req.append_header(
            "baggage",
            "team=blue, aws.agentcore.gateway.routing_experiment_variant_name=forged",
        )
        .unwrap();
        experiment_baggage(&mut req, Some(("arn:x/canary", "v2")));
        assert_eq!(
            req.headers["baggage"],
            "team=blue,aws.agentcore.gateway.routing_experiment_arn=arn:x/canary,\
             aws.agentcore.gateway.routing_experiment_variant_name=v2"
        );
        let mut req = RequestHeader::build("POST", b"/invocations", None).unwrap();
        req.append_header(
            "baggage",
            "aws.agentcore.gateway.routing_experiment_arn=forged",
        )
        .unwrap();
        experiment_baggage(&mut req, None);
        assert!(!req.headers.contains_key("baggage"));
    }
}
