//! Session endpoints' browser tokens: a random token names a grant — one port of one session,
//! for the principal that asked, until it expires. The host form of a session endpoint
//! (`{port}-{token}.{domain}`) carries the token where a browser cannot carry a credential.
//!
//! Grants are keyed by a hash of the token (a dump of the store reveals no usable token) and
//! kept until they expire: in Redis on a replica (any replica resolves any token), in a bounded
//! in-memory map in the all-in-one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{OpenError, SessionDirectory};

/// How many grants the all-in-one keeps at once; issuing more first drops expired ones, then
/// refuses (a full store is a `Rejected`-like condition, never unbounded memory).
const MAX_LOCAL_GRANTS: usize = 100_000;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointGrant {
    pub runtime: String,
    pub session: String,
    pub principal: String,
    pub port: u16,
    /// Unix seconds.
    pub expires: u64,
}

impl EndpointGrant {
    pub fn expired(&self) -> bool {
        unix_now() >= self.expires
    }
}

/// Unix seconds, on the directory's clock.
pub fn unix_now() -> u64 {
    super::now_ms() / 1000
}

/// The all-in-one's grants.
#[derive(Debug, Default)]
pub(super) struct LocalGrants {
    inner: Mutex<HashMap<String, EndpointGrant>>,
}

impl LocalGrants {
    fn put(&self, key: String, grant: EndpointGrant) -> bool {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_LOCAL_GRANTS {
            map.retain(|_, g| !g.expired());
        }
        if map.len() >= MAX_LOCAL_GRANTS {
            return false;
        }
        map.insert(key, grant);
        true
    }

    fn get(&self, key: &str) -> Option<EndpointGrant> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).filter(|g| !g.expired()).cloned()
    }
}

impl SessionDirectory {
    /// Records `grant` under `token` until it expires.
    pub async fn grant_endpoint(
        &self,
        token: &str,
        grant: &EndpointGrant,
    ) -> Result<(), OpenError> {
        let key = grant_key(token);
        let ttl = Duration::from_secs(grant.expires.saturating_sub(unix_now()).max(1));
        match &self.shared {
            Some(shared) => {
                let value = serde_json::to_string(grant).map_err(|_| OpenError::Unavailable)?;
                shared
                    .set_token(&key, Some(&value), ttl)
                    .await
                    .map_err(|_| OpenError::Unavailable)
            }
            None if self.endpoint_grants.put(key, grant.clone()) => Ok(()),
            None => Err(OpenError::Unavailable),
        }
    }

    /// The unexpired grant `token` names, if any.
    pub async fn endpoint_grant(&self, token: &str) -> Result<Option<EndpointGrant>, OpenError> {
        let key = grant_key(token);
        let grant = match &self.shared {
            Some(shared) => shared
                .token(&key)
                .await
                .map_err(|_| OpenError::Unavailable)?
                .and_then(|v| serde_json::from_str::<EndpointGrant>(&v).ok()),
            None => self.endpoint_grants.get(&key),
        };
        Ok(grant.filter(|g| !g.expired()))
    }
}

fn grant_key(token: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"session-endpoint\0");
    h.update(token.as_bytes());
    format!("ept-{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_found_by_their_token_until_they_expire() {
        let grants = LocalGrants::default();
        let grant = |expires| EndpointGrant {
            runtime: "r".into(),
            session: "s".into(),
            principal: "p".into(),
            port: 8081,
            expires,
        };
        assert!(grants.put(grant_key("t1"), grant(unix_now() + 60)));
        assert!(grants.put(grant_key("t2"), grant(unix_now() - 1)));
        assert_eq!(grants.get(&grant_key("t1")), Some(grant(unix_now() + 60)));
        assert_eq!(grants.get(&grant_key("t2")), None, "expired");
        assert_eq!(grants.get(&grant_key("t3")), None);
    }
}
