//! Inbound authentication.
//!
//! Each runtime has one mode ([`conf::InboundAuth`]): `none` (every caller is
//! [`Principal::anonymous`]), `jwt` ([`jwt::JwtAuthorizer`]: OIDC discovery, a JWKS cache keyed by
//! `kid`), or `sigv4` ([`sigv4::SigV4Verifier`]: AWS Signature V4 as the AWS SDKs sign it, header
//! or presigned-query form). This crate takes plain `http` types; Pingora stays in the gateway.

#[doc(hidden)]
pub mod fuzzing;
pub mod jwt;
pub mod sigv4;

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

/// Who made a request: the key for session ownership and per-principal limits.
///
/// Cheap to clone (one `Arc`). JWT principals are `jwt:<issuer>|<subject>` (or `|client:<id>`
/// for tokens without a subject), SigV4 ones `sigv4:<principal of the access key>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

impl Principal {
    /// The caller of a runtime whose inbound auth is `none`.
    pub fn anonymous() -> Self {
        static ANONYMOUS: std::sync::LazyLock<Principal> =
            std::sync::LazyLock::new(|| Principal(Arc::from("anonymous")));
        ANONYMOUS.clone()
    }

    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.0)
    }
}

/// Why a request was not authenticated. The precise reason goes to the log and to
/// `sessiongate_auth_failures_total{reason}`; clients get a generic message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no credential")]
    Missing,
    #[error("the credential is of the other kind than the runtime accepts")]
    MethodMismatch,
    #[error("the credential is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("no signing key matches the token")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's issuer is not the provider's")]
    Issuer,
    #[error("the token's audience is not allowed")]
    Audience,
    #[error("the token's client is not allowed")]
    Client,
    #[error("the token has none of the allowed scopes")]
    Scope,
    #[error("a required claim is missing or does not match")]
    Claim,
    #[error("the identity provider cannot be reached and no cached key verifies the token")]
    ProviderUnavailable,
    #[error("unknown access key")]
    UnknownAccessKey,
    #[error("the credential scope (date, region or service) is wrong")]
    CredentialScope,
    #[error("the request time is outside the allowed clock skew, or the URL has expired")]
    RequestTime,
    #[error("the session token does not match the access key's")]
    SessionToken,
}

impl AuthFailure {
    /// A short stable name for metrics labels.
    pub const fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::MethodMismatch => "method_mismatch",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::UnknownKey => "unknown_key",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::Issuer => "issuer",
            AuthFailure::Audience => "audience",
            AuthFailure::Client => "client",
            AuthFailure::Scope => "scope",
            AuthFailure::Claim => "claim",
            AuthFailure::ProviderUnavailable => "provider_unavailable",
            AuthFailure::UnknownAccessKey => "unknown_access_key",
            AuthFailure::CredentialScope => "credential_scope",
            AuthFailure::RequestTime => "request_time",
            AuthFailure::SessionToken => "session_token",
        }
    }
}

/// The WebSocket subprotocol AgentCore accepts for browser bearer tokens:
/// `base64UrlBearerAuthorization.<base64url(token)>`, offered beside the bare name.
pub const BEARER_SUBPROTOCOL: &str = "base64UrlBearerAuthorization";

/// The credential a request presents, before any of it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    None,
    /// `Authorization: Bearer <token>`, or the bearer WebSocket subprotocol.
    Bearer(String),
    /// `Authorization: AWS4-HMAC-SHA256 …`.
    SigV4Header,
    /// `?X-Amz-Algorithm=AWS4-HMAC-SHA256&…&X-Amz-Signature=…`.
    SigV4Query,
}

impl Presented {
    pub fn of(parts: &Parts) -> Self {
        if let Some(auth) = parts.headers.get(http::header::AUTHORIZATION) {
            let auth = auth.as_bytes();
            if auth.len() > 7 && auth[..7].eq_ignore_ascii_case(b"bearer ") {
                return match std::str::from_utf8(&auth[7..]) {
                    Ok(t) => Presented::Bearer(t.trim().to_owned()),
                    Err(_) => Presented::Bearer(String::new()),
                };
            }
            if auth.starts_with(b"AWS4-") {
                return Presented::SigV4Header;
            }
            return Presented::Bearer(String::new()); // some other scheme: malformed
        }
        if parts.uri.query().is_some_and(sigv4::has_presigned_params) {
            return Presented::SigV4Query;
        }
        if let Some(token) = bearer_from_subprotocol(parts) {
            return Presented::Bearer(token);
        }
        Presented::None
    }
}

/// The token inside `Sec-WebSocket-Protocol: base64UrlBearerAuthorization.<b64url>`.
fn bearer_from_subprotocol(parts: &Parts) -> Option<String> {
    use base64::Engine;
    let decode = |b64: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
    };
    let prefix = format!("{BEARER_SUBPROTOCOL}.");
    parts
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(prefix.as_str()).map(decode))
        .map(|t| t.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)], uri: &str) -> Parts {
        let mut b = http::Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn presented_credentials() {
        assert_eq!(
            Presented::of(&parts(&[("authorization", "Bearer abc.def.ghi")], "/")),
            Presented::Bearer("abc.def.ghi".into())
        );
        assert_eq!(
            Presented::of(&parts(
                &[("authorization", "AWS4-HMAC-SHA256 Credential=x")],
                "/"
            )),
            Presented::SigV4Header
        );
        assert_eq!(
            Presented::of(&parts(
                &[],
                "/ws?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab"
            )),
            Presented::SigV4Query
        );
        // "abc.def" in base64url is YWJjLmRlZg
        assert_eq!(
            Presented::of(&parts(
                &[(
                    "sec-websocket-protocol",
                    "base64UrlBearerAuthorization.YWJjLmRlZg, base64UrlBearerAuthorization"
                )],
                "/ws"
            )),
            Presented::Bearer("abc.def".into())
        );
        assert_eq!(Presented::of(&parts(&[], "/")), Presented::None);
    }
}
