//! Workload access tokens (`[identity] workload_tokens`): every proxied request carries, in the
//! `WorkloadAccessToken` header the bedrock-agentcore SDK reads, a short-lived JWT the gateway
//! signs — `sub` the caller's principal, the runtime, the session id, the user id when the caller
//! may name one. The agent can prove to its own tools whom it acts for without ever holding the
//! caller's credentials; they verify it against `/.well-known/jwks.json`.
//!
//! Keys are Ed25519 (`EdDSA`), one per rotation period, derived from the gateway's secret (the
//! cluster's on replicas, handed on by graceful upgrades): every replica signs with the same key
//! and serves the same key set, with no coordination. The set holds the previous, current and
//! next period's keys, so a token stays verifiable for its whole life across a rotation, and a
//! verifier's cached set already knows the next key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use conf::Identity;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The header the SDK reads the token from (`bedrock_agentcore.runtime.models`).
pub const HEADER: &str = "workloadaccesstoken";
/// How many signed tokens are kept for reuse (a session's requests share one until it is half
/// spent).
const MAX_CACHED: usize = 50_000;

/// Whom a token speaks for.
pub struct Claims<'a> {
    pub principal: &'a str,
    pub runtime: &'a str,
    pub session: &'a str,
    pub user: Option<&'a str>,
}

struct Key {
    kid: String,
    pair: Ed25519KeyPair,
}

/// Signs tokens and publishes its keys.
#[derive(Default)]
pub struct Signer {
    /// The current period's key.
    key: Mutex<Option<(u64, Arc<Key>)>>,
    /// Signed tokens by whom they speak for: (token, expiry in Unix seconds).
    tokens: DashMap<String, (Arc<str>, u64)>,
}

impl Signer {
    /// A token for `claims`, reused while more than half its life is left.
    pub fn token(
        &self,
        secret: &[u8],
        id: &Identity,
        now: u64,
        c: &Claims<'_>,
    ) -> Option<Arc<str>> {
        let cache_key = format!(
            "{}\0{}\0{}\0{}",
            c.principal,
            c.runtime,
            c.session,
            c.user.unwrap_or("")
        );
        let ttl = id.token_ttl.as_secs();
        if let Some(t) = self.tokens.get(&cache_key)
            && t.1 > now + ttl / 2
        {
            return Some(Arc::clone(&t.0));
        }
        let key = self.current(secret, id, now)?;
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": key.kid });
        let mut claims = serde_json::json!({
            "iss": id.issuer,
            "sub": c.principal,
            "aud": id.audience,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "runtime": c.runtime,
            "session_id": c.session,
        });
        if let Some(user) = c.user {
            claims["user_id"] = user.into();
        }
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let signature = key.pair.sign(signing_input.as_bytes());
        let token: Arc<str> = format!("{signing_input}.{}", B64.encode(signature.as_ref())).into();
        if self.tokens.len() >= MAX_CACHED {
            self.tokens.retain(|_, (_, exp)| *exp > now + ttl / 2);
            if self.tokens.len() >= MAX_CACHED {
                self.tokens.clear();
            }
        }
        self.tokens
            .insert(cache_key, (Arc::clone(&token), now + ttl));
        Some(token)
    }

    /// The JSON Web Key Set verifiers fetch: the previous, current and next period's keys.
    pub fn jwks(&self, secret: &[u8], id: &Identity, now: u64) -> serde_json::Value {
        let period = period(id, now);
        let keys: Vec<serde_json::Value> = [period.checked_sub(1), Some(period), Some(period + 1)]
            .into_iter()
            .flatten()
            .filter_map(|p| derive(secret, p))
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": B64.encode(k.pair.public_key().as_ref()),
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    fn current(&self, secret: &[u8], id: &Identity, now: u64) -> Option<Arc<Key>> {
        let period = period(id, now);
        let mut key = self.key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, k)) = key.as_ref()
            && *p == period
        {
            return Some(Arc::clone(k));
        }
        let fresh = Arc::new(derive(secret, period)?);
        *key = Some((period, Arc::clone(&fresh)));
        Some(fresh)
    }
}

fn period(id: &Identity, now: u64) -> u64 {
    now / id.key_rotation.max(Duration::from_secs(1)).as_secs()
}

/// The key of one rotation period: its seed an HMAC of the period under the gateway's secret.
fn derive(secret: &[u8], period: u64) -> Option<Key> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"sessiongate workload key\0");
    mac.update(&period.to_be_bytes());
    let seed = mac.finalize().into_bytes();
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).ok()?;
    let kid = hex::encode(&Sha256::digest(pair.public_key().as_ref())[..8]);
    Some(Key { kid, pair })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            issuer: "sessiongate".into(),
            audience: "tools".into(),
            token_ttl: Duration::from_secs(900),
            key_rotation: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn tokens_verify_against_the_published_keys_across_a_rotation() {
        use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
        let (signer, id) = (Signer::default(), identity());
        let claims = Claims {
            principal: "alice",
            runtime: "default",
            session: "s",
            user: Some("u-1"),
        };
        let now = 86_400 * 100 - 10; // just before a rotation
        let token = signer.token(b"secret", &id, now, &claims).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split('.').next().unwrap()).unwrap()).unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["sub"], "alice");
        assert_eq!(payload["user_id"], "u-1");
        assert_eq!(payload["exp"], now + 900);
        // After the rotation (another replica, same secret), the set still holds its key.
        let later = Signer::default().jwks(b"secret", &id, now + 600);
        let jwk = later["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("the token's key is published after the rotation");
        let public = B64.decode(jwk["x"].as_str().unwrap()).unwrap();
        UnparsedPublicKey::new(&ED25519, public)
            .verify(input.as_bytes(), &B64.decode(sig).unwrap())
            .unwrap();
        // Reused while fresh; another secret signs with other keys.
        assert_eq!(signer.token(b"secret", &id, now + 60, &claims), Some(token));
        let other = Signer::default().jwks(b"other", &id, now);
        assert_ne!(other["keys"][1]["kid"], header["kid"]);
    }
}
