//! The JWT authorizer (AgentCore's `customJWTAuthorizer`).
//!
//! Discovery is a plain GET of the `discovery_url` (issuer + `jwks_uri`) and of the JWKS, not the
//! openidconnect crate: a gateway that only validates tokens needs those two documents, and the
//! plain GET avoids openidconnect's dependency tree and its reqwest-0.12 lock.
//!
//! Keys are cached by `kid` and fetched again every `refresh_interval` (rotation without a
//! restart). A token with an unknown `kid` triggers one refetch, but never more than one per
//! `min_refetch_interval`, so a flood of random `kid`s cannot hammer the identity provider.
//! When the provider is down, tokens that cached keys verify keep working.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use conf::{ClaimMatch, JwtAuth};
use dashmap::DashMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{AuthFailure, Principal};

/// How long one fetch of the discovery document or the JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JwtAuthorizer {
    cfg: JwtAuth,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// When the last fetch started (successful or not): the refetch rate limit.
    last_fetch: Mutex<Option<Instant>>,
    /// One fetch at a time; callers that find one running wait for its result.
    fetching: tokio::sync::Mutex<()>,
    /// A background refresh of stale keys is running.
    background_refresh: AtomicBool,
    /// SHA-256 of verified tokens → their principal and `exp`.
    verified: DashMap<[u8; 32], (Principal, u64)>,
}

/// Verified tokens remembered at once; the cache is emptied when it fills.
const VERIFIED_CACHE_ENTRIES: usize = 16_384;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the provider published, as of one fetch.
struct KeySet {
    issuer: String,
    keys: HashMap<String, VerifyingKey>,
    fetched: Instant,
}

struct VerifyingKey {
    key: DecodingKey,
    /// The algorithms this key may verify: its JWK `alg`, or those of its type and curve.
    algorithms: Vec<Algorithm>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(String);

impl JwtAuthorizer {
    pub fn new(cfg: &JwtAuth) -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            // Discovery documents name their own URLs; following redirects would let a
            // compromised document steer the gateway anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            cfg: cfg.clone(),
            http,
            keys: RwLock::new(None),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            background_refresh: AtomicBool::new(false),
            verified: DashMap::new(),
        }
    }

    /// Installs a key set as if fetched (benchmarks and tests without an identity provider).
    #[doc(hidden)]
    pub fn with_keys(cfg: &JwtAuth, issuer: &str, jwks: &JwkSet) -> Self {
        let this = Self::new(cfg);
        let keys = usable_keys(jwks);
        if let Ok(mut k) = this.keys.write() {
            *k = Some(Arc::new(KeySet {
                issuer: issuer.to_owned(),
                keys,
                fetched: Instant::now(),
            }));
        }
        this
    }

    /// Forgets the verified-token cache (benchmarks of the signature check itself).
    #[doc(hidden)]
    pub fn forget_verified_tokens(&self) {
        self.verified.clear();
    }

    /// The issuer the tokens must carry: the discovery document's, once fetched; before that
    /// the discovery URL without its well-known suffix.
    pub fn issuer(&self) -> String {
        match self.cached() {
            Some(k) => k.issuer.clone(),
            None => self
                .cfg
                .discovery_url
                .trim_end_matches("/.well-known/openid-configuration")
                .to_owned(),
        }
    }

    pub fn allowed_scopes(&self) -> &[String] {
        &self.cfg.allowed_scopes
    }

    /// Verifies `token` and returns its principal. A token verified before is answered from a
    /// small cache (keyed by its SHA-256) until its `exp`: clients send the same token with
    /// every request, and the signature check is the expensive part.
    pub async fn authorize(self: &Arc<Self>, token: &str) -> Result<Principal, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_now();
        if let Some(hit) = self.verified.get(&digest)
            && hit.1 + self.cfg.leeway.as_secs() >= now
        {
            return Ok(hit.0.clone());
        }
        let (principal, exp) = self.verify(token).await?;
        if self.verified.len() >= VERIFIED_CACHE_ENTRIES {
            self.verified.clear();
        }
        self.verified.insert(digest, (principal.clone(), exp));
        Ok(principal)
    }

    async fn verify(self: &Arc<Self>, token: &str) -> Result<(Principal, u64), AuthFailure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
        if !is_asymmetric(header.alg) {
            // HMAC with a public key is the classic confusion attack; `none` never parses.
            return Err(AuthFailure::Algorithm);
        }
        let keys = self.keys_for(header.kid.as_deref()).await?;
        let key = find_key(&keys, header.kid.as_deref(), header.alg)?;
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthFailure::Algorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[keys.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        if self.cfg.allowed_audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.cfg.allowed_audiences);
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
                .map_err(classify)?;
        let claims = data.claims;
        self.check_claims(&claims)?;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((principal_of(&keys.issuer, &claims), exp))
    }

    fn check_claims(&self, claims: &serde_json::Map<String, Value>) -> Result<(), AuthFailure> {
        let cfg = &self.cfg;
        if !cfg.allowed_clients.is_empty() {
            let client = claims.get("client_id").and_then(Value::as_str);
            if !client.is_some_and(|c| cfg.allowed_clients.iter().any(|a| a == c)) {
                return Err(AuthFailure::Client);
            }
        }
        if !cfg.allowed_scopes.is_empty() {
            let scopes = scopes_of(claims);
            if !cfg
                .allowed_scopes
                .iter()
                .any(|s| scopes.contains(s.as_str()))
            {
                return Err(AuthFailure::Scope);
            }
        }
        for rule in &cfg.required_claims {
            let value = claims.get(&rule.name);
            let list = || {
                value
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
            };
            let ok = match &rule.matches {
                ClaimMatch::Equals(want) => value.and_then(Value::as_str) == Some(want.as_str()),
                ClaimMatch::Contains(want) => list().any(|v| v == want),
                ClaimMatch::ContainsAny(wants) => list().any(|v| wants.iter().any(|w| w == v)),
            };
            if !ok {
                return Err(AuthFailure::Claim);
            }
        }
        Ok(())
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// The key set to verify a token with `kid`: the cached one if it knows the kid and is
    /// fresh; otherwise a refetch, within the rate limit; the cached one if the fetch fails.
    async fn keys_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<KeySet>, AuthFailure> {
        let cached = self.cached();
        if let Some(k) = &cached
            && kid.is_none_or(|kid| k.keys.contains_key(kid))
        {
            if k.fetched.elapsed() >= self.cfg.refresh_interval
                && !self.background_refresh.swap(true, Ordering::AcqRel)
            {
                // Stale but usable: refresh in the background, answer from the cache now.
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = this.refresh(true).await
                        && !e.0.is_empty()
                    {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                    }
                    this.background_refresh.store(false, Ordering::Release);
                });
            }
            return Ok(Arc::clone(k));
        }
        match self.refresh(cached.is_some()).await {
            Ok(fresh) => Ok(fresh),
            Err(e) => match cached {
                Some(k) => {
                    if !e.0.is_empty() {
                        tracing::warn!(error = %e, "JWKS refresh failed; using the cached keys");
                    }
                    Ok(k)
                }
                None => {
                    tracing::warn!(error = %e, url = %self.cfg.discovery_url, "cannot fetch the signing keys");
                    Err(AuthFailure::ProviderUnavailable)
                }
            },
        }
    }

    /// Fetches discovery + JWKS unless another fetch is running (then shares its result) or
    /// one started less than `min_refetch_interval` ago while a key set is cached. An empty
    /// error means "rate-limited", not a failure.
    async fn refresh(&self, have_cache: bool) -> Result<Arc<KeySet>, FetchError> {
        let started = Instant::now();
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached()
            && k.fetched >= started
        {
            return Ok(k); // fetched by the caller we waited for
        }
        {
            let Ok(mut last) = self.last_fetch.lock() else {
                return Err(FetchError("poisoned".into()));
            };
            if have_cache && last.is_some_and(|t| t.elapsed() < self.cfg.min_refetch_interval) {
                return Err(FetchError(String::new()));
            }
            *last = Some(Instant::now());
        }
        let fresh = Arc::new(self.fetch().await?);
        if let Ok(mut k) = self.keys.write() {
            *k = Some(Arc::clone(&fresh));
        }
        Ok(fresh)
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let get = |url: &str| self.http.get(url).send();
        let discovery: Discovery = get(&self.cfg.discovery_url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| FetchError(format!("discovery: {e}")))?
            .json()
            .await
            .map_err(|e| FetchError(format!("discovery document: {e}")))?;
        let jwks: JwkSet = get(&discovery.jwks_uri)
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| FetchError(format!("jwks: {e}")))?
            .json()
            .await
            .map_err(|e| FetchError(format!("jwks document: {e}")))?;
        let keys = usable_keys(&jwks);
        tracing::info!(issuer = %discovery.issuer, keys = keys.len(), "fetched signing keys");
        Ok(KeySet {
            issuer: discovery.issuer,
            keys,
            fetched: Instant::now(),
        })
    }
}

/// The keys of a JWKS that can verify tokens, by `kid` (keys without one cannot be chosen).
fn usable_keys(jwks: &JwkSet) -> HashMap<String, VerifyingKey> {
    jwks.keys
        .iter()
        .filter_map(|jwk| Some((jwk.common.key_id.clone()?, verifying_key(jwk)?)))
        .collect()
}

/// A usable public key, with the algorithms it may verify. Symmetric (`oct`) keys are never
/// taken from a JWKS.
fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            vec![Algorithm::EdDSA]
        }
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => by_type,
        Some(declared) => {
            let declared = algorithm_of(declared)?;
            by_type.into_iter().filter(|a| *a == declared).collect()
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    (!algorithms.is_empty()).then_some(VerifyingKey { key, algorithms })
}

fn algorithm_of(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

fn is_asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The key named by `kid`; a token without `kid` may use the only key that fits its algorithm.
fn find_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k VerifyingKey, AuthFailure> {
    match kid {
        Some(kid) => keys.keys.get(kid).ok_or(AuthFailure::UnknownKey),
        None => {
            let mut fitting = keys.keys.values().filter(|k| k.algorithms.contains(&alg));
            match (fitting.next(), fitting.next()) {
                (Some(k), None) => Ok(k),
                _ => Err(AuthFailure::UnknownKey),
            }
        }
    }
}

fn classify(e: jsonwebtoken::errors::Error) -> AuthFailure {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthFailure::BadSignature,
        K::ExpiredSignature => AuthFailure::Expired,
        K::ImmatureSignature => AuthFailure::NotYetValid,
        K::InvalidIssuer => AuthFailure::Issuer,
        K::InvalidAudience => AuthFailure::Audience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthFailure::Algorithm,
        K::MissingRequiredClaim(c) if c == "aud" => AuthFailure::Audience,
        _ => AuthFailure::Malformed,
    }
}

/// `scope` (space-separated string, RFC 8693) or `scp` (list) claims.
fn scopes_of(claims: &serde_json::Map<String, Value>) -> HashSet<&str> {
    let mut out: HashSet<&str> = claims
        .get("scope")
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if let Some(list) = claims.get("scp").and_then(Value::as_array) {
        out.extend(list.iter().filter_map(Value::as_str));
    }
    out
}

/// Issuer + subject; a token without a subject (client credentials) is its client.
fn principal_of(issuer: &str, claims: &serde_json::Map<String, Value>) -> Principal {
    match (
        claims.get("sub").and_then(Value::as_str),
        claims.get("client_id").and_then(Value::as_str),
    ) {
        (Some(sub), _) => Principal::new(&format!("jwt:{issuer}|{sub}")),
        (None, Some(client)) => Principal::new(&format!("jwt:{issuer}|client:{client}")),
        (None, None) => Principal::new(&format!("jwt:{issuer}|")),
    }
}
