//! The authentication stage: who is calling, by the runtime's inbound auth mode.
//!
//! | runtime | credential presented | result |
//! |---|---|---|
//! | `none` | anything | `anonymous` |
//! | `jwt` | bearer token (header or WebSocket subprotocol) | verified token's principal, else 401 |
//! | `jwt` | none | 401 with `WWW-Authenticate: Bearer resource_metadata="…"` |
//! | `sigv4` | `Authorization: AWS4-HMAC-SHA256` or presigned query | verified signature's principal, else 403 |
//! | `sigv4` | none | 403 |
//! | either | the other kind | 403 "Authorization method mismatch" |
//!
//! A SigV4 request's body is read here, in full, while its hash is taken (memory, then a
//! temporary file), and only a verified body is handed to the proxy: no byte of an unverified
//! body reaches a backend, and an unauthenticated request never reaches placement at all.

use std::sync::Arc;
use std::time::SystemTime;

use auth::jwt::JwtAuthorizer;
use auth::sigv4::{EMPTY_SHA256, SigV4Verifier, SignedBody};
use auth::{AuthFailure, Presented, Principal};
use conf::InboundAuth;
use pingora::proxy::Session;

use crate::ctx::RequestCtx;
use crate::error::GatewayError;

/// One runtime's authenticator.
pub enum Authenticator {
    None,
    Jwt(Arc<JwtAuthorizer>),
    SigV4(SigV4Verifier),
}

impl Authenticator {
    pub fn new(auth: &InboundAuth) -> Self {
        match auth {
            InboundAuth::None => Self::None,
            InboundAuth::Jwt(cfg) => Self::Jwt(Arc::new(JwtAuthorizer::new(cfg))),
            InboundAuth::SigV4(cfg) => Self::SigV4(SigV4Verifier::new(cfg)),
        }
    }
}

/// Authenticates the request for runtime `runtime_name`; `payload_cap` bounds a SigV4 body.
pub async fn authenticate(
    authenticator: &Authenticator,
    runtime_name: &str,
    payload_cap: u64,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Principal, GatewayError> {
    if let Authenticator::None = authenticator {
        return Ok(Principal::anonymous());
    }
    let presented = Presented::of(session.req_header());
    let result = match (authenticator, presented) {
        (Authenticator::None, _) => return Ok(Principal::anonymous()),
        (Authenticator::Jwt(_), Presented::SigV4Header | Presented::SigV4Query)
        | (Authenticator::SigV4(_), Presented::Bearer(_)) => Err(AuthFailure::MethodMismatch),
        (Authenticator::Jwt(_), Presented::None) => Err(AuthFailure::Missing),
        (Authenticator::Jwt(jwt), Presented::Bearer(token)) => jwt.authorize(&token).await,
        (Authenticator::SigV4(v), _) => sigv4(v, payload_cap, session, ctx).await?,
    };
    result.map_err(|failure| {
        tracing::info!(
            runtime = runtime_name,
            reason = failure.reason(),
            "authentication failed"
        );
        metrics::counter!("sessiongate_auth_failures_total", "reason" => failure.reason())
            .increment(1);
        match (authenticator, failure) {
            (_, AuthFailure::MethodMismatch) => GatewayError::MethodMismatch,
            (_, AuthFailure::ProviderUnavailable) => GatewayError::IdentityProviderUnavailable,
            (Authenticator::Jwt(_), reason) => GatewayError::Unauthorized {
                reason,
                resource_metadata: resource_metadata_url(session, runtime_name),
            },
            (_, reason) => GatewayError::AccessDenied(reason),
        }
    })
}

/// Checks a SigV4 signature; a request with a body has it read (bounded by the payload cap),
/// hashed and held in `ctx.verified_body` for the proxy to send once verified. The outer error
/// is a failure that is not about the credential (an oversize or broken body).
async fn sigv4(
    verifier: &SigV4Verifier,
    payload_cap: u64,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<Result<Principal, AuthFailure>, GatewayError> {
    let pending = match verifier.begin(session.req_header(), SystemTime::now()) {
        Ok(p) => p,
        Err(failure) => return Ok(Err(failure)),
    };
    if session.is_body_empty() {
        return Ok(pending.verify(EMPTY_SHA256));
    }
    let mut body = SignedBody::new(verifier.body_memory_bytes);
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| GatewayError::IncompleteBody)?
    {
        if body.len() + chunk.len() as u64 > payload_cap {
            return Err(GatewayError::PayloadTooLarge { limit: payload_cap });
        }
        body.push(&chunk).map_err(|e| {
            tracing::error!(error = %e, "cannot hold a request body for its signature check");
            GatewayError::Internal
        })?;
    }
    let (hash, bytes) = body.finish().map_err(|e| {
        tracing::error!(error = %e, "cannot map a held request body");
        GatewayError::Internal
    })?;
    let verified = pending.verify(&hash);
    if verified.is_ok() {
        ctx.verified_body = Some(bytes);
    }
    Ok(verified)
}

/// `http://<Host>/runtimes/<name>/invocations/.well-known/oauth-protected-resource`. The Host
/// header is used only when it is a plain host[:port]; anything else falls back to the
/// listener's own address, so a client cannot inject text into the challenge.
pub fn resource_metadata_url(session: &Session, runtime_name: &str) -> String {
    format!(
        "{}/runtimes/{runtime_name}/invocations/.well-known/oauth-protected-resource",
        base_url(session)
    )
}

pub fn base_url(session: &Session) -> String {
    let host = session
        .req_header()
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .map(str::to_owned)
        .or_else(|| session.server_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".into());
    format!("http://{host}")
}

/// RFC 9728 protected-resource metadata for a JWT runtime.
pub fn protected_resource_metadata(
    authenticator: &Authenticator,
    session: &Session,
    runtime_name: &str,
) -> Option<serde_json::Value> {
    let Authenticator::Jwt(jwt) = authenticator else {
        return None;
    };
    let mut doc = serde_json::json!({
        "resource": format!("{}/runtimes/{runtime_name}/invocations", base_url(session)),
        "authorization_servers": [jwt.issuer()],
        "bearer_methods_supported": ["header"],
    });
    if !jwt.allowed_scopes().is_empty() {
        doc["scopes_supported"] = jwt.allowed_scopes().into();
    }
    Some(doc)
}
