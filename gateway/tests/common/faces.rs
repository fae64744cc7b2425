//! Helpers for the MCP and A2A faces, shared by the suites.

use super::*;

const MCP_ACCEPT: &str = "Accept: application/json, text/event-stream";

pub fn mcp_call(gw: &Gateway, headers: &[String], body: &str) -> Response {
    let url = gw.url(gw.mcp, "/mcp");
    let mut args = vec![
        "-X",
        "POST",
        url.as_str(),
        "-H",
        "Content-Type: application/json",
        "-H",
        MCP_ACCEPT,
        "-d",
        body,
    ];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    curl(&args)
}

pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#;

pub const ECHO_CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

pub fn a2a_send(gw: &Gateway, sid: &str, text: &str) -> Response {
    let url = gw.url(gw.a2a, "/");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"r1","method":"message/send","params":{{"message":{{"role":"user","messageId":"m1","parts":[{{"kind":"text","text":"{text}"}}]}}}}}}"#
    );
    let h = format!("{SESSION_HEADER}: {sid}");
    curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &h,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ])
}
