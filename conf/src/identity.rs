//! `[identity]`: what the gateway tells a backend about who it acts for — a workload access
//! token per request (a short-lived JWT the gateway signs; its keys at
//! `/.well-known/jwks.json`). Read, checked and modelled here, one place.

use std::time::Duration;

use serde::Deserialize;

use crate::validate::Errors;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileIdentity {
    /// Sign a workload access token for every proxied request (the `WorkloadAccessToken`
    /// header the bedrock-agentcore SDK reads). Default false.
    pub workload_tokens: bool,
    /// The tokens' `iss`. Default `sessiongate`.
    pub issuer: String,
    /// The tokens' `aud`. Default `sessiongate-workload`.
    pub audience: String,
    /// How long a token is valid, seconds (60–3 600). Default 900.
    pub token_ttl_secs: u64,
    /// How often the signing key changes, seconds (at least the token TTL). Default 86 400.
    pub key_rotation_secs: u64,
}

impl Default for FileIdentity {
    fn default() -> Self {
        Self {
            workload_tokens: false,
            issuer: "sessiongate".into(),
            audience: "sessiongate-workload".into(),
            token_ttl_secs: 900,
            key_rotation_secs: 86_400,
        }
    }
}

/// Workload access tokens, when the gateway signs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub audience: String,
    pub token_ttl: Duration,
    pub key_rotation: Duration,
}

pub(crate) fn identity(errs: &mut Errors, f: &FileIdentity) -> Option<Identity> {
    let ttl = errs.range("identity.token_ttl_secs", f.token_ttl_secs, 60, 3_600);
    let rotation = errs.range(
        "identity.key_rotation_secs",
        f.key_rotation_secs,
        ttl.max(600),
        365 * 86_400,
    );
    for (key, value) in [("issuer", &f.issuer), ("audience", &f.audience)] {
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            errs.push(
                format!("identity.{key}"),
                "must be 1 to 256 characters, no control characters",
            );
        }
    }
    f.workload_tokens.then(|| Identity {
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        token_ttl: Duration::from_secs(ttl),
        key_rotation: Duration::from_secs(rotation),
    })
}
