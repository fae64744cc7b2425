//! The response stage: what the backend's answer becomes for the client.

use conf::Protocol;
use pingora::ErrorType;
use pingora::prelude::*;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;
use crate::headers::{MCP_SESSION_ID, SESSION_ID};
use crate::state::Shared;
use auth::BEARER_SUBPROTOCOL;

/// `upstream_response_filter`: a backend that answers with an error becomes a 424
/// RuntimeClientError without its body (which may hold internal detail); an MCP backend's
/// 4xx passes through, since MCP clients act on it (404: re-initialize; 405: no GET stream).
/// An MCP `Mcp-Session-Id` is learned so later requests carrying only it find their session.
/// A stateless MCP backend assigns none: then, as AgentCore does, the gateway mints one for a
/// handshake-era request that carried none, returns it, and routes by it.
pub async fn from_backend(
    shared: &Shared,
    req: &RequestHeader,
    upgrade_requested: bool,
    upstream: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    // A 101 to a request that did not ask to upgrade would turn the client's connection into a
    // raw tunnel to the backend.
    if upstream.status == 101 && !upgrade_requested {
        ctx.error = Some(GatewayError::BackendUpgradedUnasked);
        return Error::e_explain(
            ErrorType::HTTPStatus(424),
            "backend switched protocols unasked",
        );
    }
    // The answers of a session's own port are the app's, errors included.
    if upstream.status.is_informational() || ctx.port.is_some() {
        return Ok(());
    }
    let protocol = ctx.target.map_or(Protocol::Http, |t| t.protocol);
    let status = upstream.status.as_u16();
    let mcp_client_error = protocol == Protocol::Mcp && (400..500).contains(&status);
    if status >= 400 && !mcp_client_error {
        ctx.error = Some(GatewayError::BackendStatus(status));
        return Error::e_explain(
            ErrorType::HTTPStatus(424),
            "backend answered with an error status",
        );
    }
    let Some(ticket) = ctx.ticket.as_ref().filter(|_| protocol == Protocol::Mcp) else {
        return Ok(());
    };
    match upstream.headers.get(MCP_SESSION_ID).map(|v| v.to_str()) {
        Some(Ok(id)) => {
            if !shared.directory.learn_mcp(ticket.session(), id).await {
                // Another session owns this id: routing stays with its owner.
                tracing::warn!(session = %ticket.session().id, "backend claimed an Mcp-Session-Id another session owns; ignored");
                metrics::counter!("sessiongate_mcp_id_conflicts_total").increment(1);
            }
        }
        Some(Err(_)) => {}
        None => {
            let handshake_era = !req.headers.contains_key(MCP_SESSION_ID)
                && !req.headers.contains_key("mcp-method")
                && req.method == http::Method::POST
                && upstream.status.is_success();
            if handshake_era {
                let minted = uuid::Uuid::new_v4().simple().to_string();
                // A fresh UUID: no other session can own it.
                let _ = shared.directory.learn_mcp(ticket.session(), &minted).await;
                upstream.insert_header(MCP_SESSION_ID, minted)?;
            }
        }
    }
    Ok(())
}

/// `response_filter`: the client always learns which session answered (also on a 101). A
/// WebSocket client that authenticated with the bearer subprotocol gets it chosen, as browsers
/// require one of their offered subprotocols back.
pub fn to_client(req: &RequestHeader, resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if resp.status.is_informational() && resp.status != 101 {
        return Ok(());
    }
    if resp.status == 101
        && !resp.headers.contains_key("sec-websocket-protocol")
        && offered_bearer_subprotocol(req)
    {
        resp.insert_header("sec-websocket-protocol", BEARER_SUBPROTOCOL)?;
    }
    if let Some(id) = ctx.session_id() {
        resp.insert_header(SESSION_ID, id)?;
    }
    Ok(())
}

fn offered_bearer_subprotocol(req: &RequestHeader) -> bool {
    req.headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == BEARER_SUBPROTOCOL)
}
