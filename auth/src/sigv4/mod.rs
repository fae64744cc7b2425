//! The SigV4 verifier: AWS Signature Version 4 for service `bedrock-agentcore`, as the AWS
//! SDKs sign it, in the `Authorization` header form and the presigned query form (WebSocket).
//!
//! The canonical request, string to sign and HMAC chain are aws-sigv4's: the verifier signs the
//! request again with the caller's secret, time, region and signed headers, and compares the
//! two signatures in constant time. [`SigV4Verifier::begin`] checks everything that needs no
//! body; [`PendingSignature::verify`] finishes with the body's SHA-256, so no byte of an
//! unverified body has to be forwarded ([`SignedBody`] holds it meanwhile).

mod body;
pub mod parse;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use conf::{Credential, SigV4Auth};
use http::request::Parts;
use subtle::ConstantTimeEq;

pub use body::SignedBody;
pub use parse::has_presigned_params;

use crate::{AuthFailure, Principal};

/// The signing name of Bedrock AgentCore's data plane.
pub const SERVICE: &str = "bedrock-agentcore";

/// SHA-256 of the empty body, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

pub struct SigV4Verifier {
    service: String,
    regions: Vec<String>,
    keys: HashMap<String, Credential>,
    max_clock_skew: Duration,
    /// Bodies up to this size are held in memory while their hash is checked.
    pub body_memory_bytes: usize,
}

/// A signature whose headers, scope, time and key have been checked; it still needs the body.
pub struct PendingSignature {
    method: String,
    /// Origin-form target to sign: as received; presigned: without the signature parameters.
    target: String,
    /// The signed headers with their values, as received.
    headers: Vec<(String, String)>,
    credential: Credential,
    service: String,
    region: String,
    time: SystemTime,
    client: parse::ClientSignature,
}

impl SigV4Verifier {
    pub fn new(cfg: &SigV4Auth) -> Self {
        Self {
            service: SERVICE.to_owned(),
            regions: cfg.regions.clone(),
            keys: cfg
                .credentials
                .iter()
                .map(|c| (c.access_key_id.clone(), c.clone()))
                .collect(),
            max_clock_skew: cfg.max_clock_skew,
            body_memory_bytes: cfg.body_memory_bytes,
        }
    }

    /// Checks a request's signature form, credential scope, time and access key.
    pub fn begin(&self, parts: &Parts, now: SystemTime) -> Result<PendingSignature, AuthFailure> {
        let query = parts.uri.query().unwrap_or("");
        let (client, presigned) = match parts.headers.get(http::header::AUTHORIZATION) {
            Some(h) => {
                let h = h.to_str().map_err(|_| AuthFailure::Malformed)?;
                (
                    parse::authorization_header(h).map_err(|_| AuthFailure::Malformed)?,
                    false,
                )
            }
            None if has_presigned_params(query) => (
                parse::presigned_query(query).map_err(|_| AuthFailure::Malformed)?,
                true,
            ),
            None => return Err(AuthFailure::Missing),
        };
        let scope = &client.scope;
        let credential = self
            .keys
            .get(&scope.access_key_id)
            .ok_or(AuthFailure::UnknownAccessKey)?
            .clone();
        if scope.service != self.service || !self.regions.contains(&scope.region) {
            return Err(AuthFailure::CredentialScope);
        }

        let date = match &client.presigned {
            Some(p) => p.date.clone(),
            None => header_str(parts, "x-amz-date")?.to_owned(),
        };
        let time = parse::amz_date(&date).map_err(|_| AuthFailure::Malformed)?;
        if !date.starts_with(&scope.date) {
            return Err(AuthFailure::CredentialScope);
        }
        let skew = self.max_clock_skew;
        match &client.presigned {
            // A presigned URL is good from its date (give or take the skew) until it expires.
            Some(p) if time > now + skew || time + p.expires + skew < now => {
                return Err(AuthFailure::RequestTime);
            }
            None if time > now + skew || time + skew < now => return Err(AuthFailure::RequestTime),
            _ => {}
        }

        let token = match &client.presigned {
            Some(p) => p.security_token.as_deref(),
            None => parts
                .headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok()),
        };
        let token_ok = match (token, credential.session_token.as_deref()) {
            (None, None) => true,
            (Some(t), Some(want)) => bool::from(t.as_bytes().ct_eq(want.as_bytes())),
            _ => false,
        };
        if !token_ok {
            return Err(AuthFailure::SessionToken);
        }

        // The signer needs `host` (it would panic without it), and signs exactly these headers.
        if !client.signed_headers.iter().any(|h| h == "host") {
            return Err(AuthFailure::Malformed);
        }
        let mut headers = Vec::with_capacity(client.signed_headers.len());
        for name in &client.signed_headers {
            if presigned && name == "x-amz-security-token" {
                continue;
            }
            for value in parts.headers.get_all(name.as_str()) {
                let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
                headers.push((name.clone(), value.to_owned()));
            }
        }
        if !headers.iter().any(|(n, _)| n == "host") {
            return Err(AuthFailure::Malformed);
        }
        let path = parts.uri.path();
        let target = if presigned {
            let rest: Vec<&str> = query
                .split('&')
                .filter(|p| {
                    let key = p.split('=').next().unwrap_or("");
                    !p.is_empty() && !parse::PRESIGN_PARAMS.contains(&key)
                })
                .collect();
            if rest.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", rest.join("&"))
            }
        } else {
            parts
                .uri
                .path_and_query()
                .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned())
        };
        Ok(PendingSignature {
            method: parts.method.as_str().to_owned(),
            target,
            headers,
            region: scope.region.clone(),
            service: scope.service.clone(),
            credential,
            time,
            client,
        })
    }
}

fn header_str<'p>(parts: &'p Parts, name: &str) -> Result<&'p str, AuthFailure> {
    parts
        .headers
        .get(name)
        .ok_or(AuthFailure::Malformed)?
        .to_str()
        .map_err(|_| AuthFailure::Malformed)
}

impl PendingSignature {
    /// Who the request claims to be (not to be trusted before [`Self::verify`]).
    pub fn claimed_principal(&self) -> Principal {
        Principal::new(&format!("sigv4:{}", self.credential.principal))
    }

    /// Finishes the check with the SHA-256 (hex) of the body as received. A presigned URL may
    /// sign either that hash (botocore's `SigV4QueryAuth` does) or `UNSIGNED-PAYLOAD` (what the
    /// Rust and JavaScript SDKs presign with); both are accepted, since presigned requests here
    /// are bodiless WebSocket upgrades.
    ///
    /// A presigned URL may also have been signed for the host without its port: the
    /// bedrock-agentcore SDK presigns shell URLs with the bare hostname (AWS's endpoint is on
    /// 443), so a gateway on another port accepts that form too.
    pub fn verify(&self, body_sha256_hex: &str) -> Result<Principal, AuthFailure> {
        let presigned = self.client.presigned.is_some();
        let bare_host = presigned.then(|| self.headers_with_bare_host()).flatten();
        for headers in std::iter::once(&self.headers).chain(bare_host.as_ref()) {
            let hashed = SignableBody::Precomputed(body_sha256_hex.to_owned());
            if self.signature_matches(headers, hashed)?
                || (presigned && self.signature_matches(headers, SignableBody::UnsignedPayload)?)
            {
                return Ok(self.claimed_principal());
            }
        }
        Err(AuthFailure::BadSignature)
    }

    /// The signed headers with `host: name:port` as `host: name`; `None` without a port.
    fn headers_with_bare_host(&self) -> Option<Vec<(String, String)>> {
        let (_, host) = self.headers.iter().find(|(n, _)| n == "host")?;
        let authority: http::uri::Authority = host.parse().ok()?;
        authority.port()?;
        let bare = authority.host().to_owned();
        Some(
            self.headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.clone(),
                        if n == "host" { bare.clone() } else { v.clone() },
                    )
                })
                .collect(),
        )
    }

    fn signature_matches(
        &self,
        headers: &[(String, String)],
        body: SignableBody<'_>,
    ) -> Result<bool, AuthFailure> {
        let mut settings = SigningSettings::default();
        // Sign exactly the headers the client listed, nothing more, nothing less.
        settings.excluded_headers = None;
        if let Some(p) = &self.client.presigned {
            settings.signature_location = SignatureLocation::QueryParams;
            settings.expires_in = Some(p.expires);
        }
        let identity = aws_credential_types::Credentials::new(
            &self.credential.access_key_id,
            &self.credential.secret_access_key,
            self.credential.session_token.clone(),
            None,
            "sessiongate",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time)
            .settings(settings)
            .build()
            .map_err(|_| AuthFailure::Malformed)?
            .into();
        let request = SignableRequest::new(
            &self.method,
            self.target.as_str(),
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            body,
        )
        .map_err(|_| AuthFailure::Malformed)?;
        let (_, expected) = sign(request, &params)
            .map_err(|_| AuthFailure::Malformed)?
            .into_parts();
        Ok(bool::from(
            expected.as_bytes().ct_eq(self.client.signature.as_bytes()),
        ))
    }
}

#[cfg(test)]
mod tests;
