//! Idempotent `StopRuntimeSession`: its `clientToken` (boto3 fills one in when the caller gives
//! none). The first stop with a token ends the session and records the outcome; a replay of the
//! same token — a retry after a lost answer, from any replica — gets that outcome again and
//! touches nothing. So a replay arriving after the session id was used again never ends the new
//! session (the token is the fence: it names the stop it was, not whatever holds the id now).
//!
//! Tokens are keyed by runtime, principal and token (another caller's equal token is another
//! token) and kept for [`TOKEN_TTL`]: in Redis on a replica (shared by every replica), in a
//! bounded in-memory map in the all-in-one (lost with the process).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use auth::Principal;
use sha2::{Digest, Sha256};

use super::{EndReason, OpenError, SessionDirectory};

/// How long a stop's outcome is kept for replays: a session's longest life.
pub const TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);
/// How many tokens the all-in-one keeps (the oldest go first).
const MAX_LOCAL_TOKENS: usize = 100_000;
/// How long a replay waits for the first stop with its token to finish.
const PENDING_WAIT: Duration = Duration::from_secs(10);

/// What a stop with a client token comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// This call stopped the session.
    Yes,
    /// The first call with this token did.
    Replayed,
    /// There was no such session (then, or when the token was first used).
    NotFound,
    /// The token was first used to stop another session id.
    TokenReused,
}

/// A token's record: `pending` while its first stop runs, then `<0|1> <session id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Pending,
    Done { found: bool, session: String },
}

impl Record {
    fn encode(&self) -> String {
        match self {
            Record::Pending => "pending".to_owned(),
            Record::Done { found, session } => format!("{} {session}", u8::from(*found)),
        }
    }

    fn decode(s: &str) -> Self {
        match s.split_once(' ') {
            Some((found, session)) => Record::Done {
                found: found == "1",
                session: session.to_owned(),
            },
            None => Record::Pending,
        }
    }
}

/// The all-in-one's tokens: insertion order is expiry order (one TTL for all).
#[derive(Debug, Default)]
pub(super) struct LocalTokens {
    inner: Mutex<Tokens>,
}

#[derive(Debug, Default)]
struct Tokens {
    records: HashMap<String, (Record, Instant)>,
    /// When each was claimed, oldest first.
    order: VecDeque<(Instant, String)>,
}

impl LocalTokens {
    /// Claims `key` (None: this call is the first), else its record.
    fn claim(&self, key: &str) -> Option<Record> {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Tokens {
            records: map,
            order,
        } = &mut *guard;
        let now = Instant::now();
        while let Some((at, _)) = order.front() {
            if now.duration_since(*at) < TOKEN_TTL && map.len() < MAX_LOCAL_TOKENS {
                break;
            }
            if let Some((at, k)) = order.pop_front()
                && map.get(&k).is_some_and(|(_, t)| *t == at)
            {
                map.remove(&k);
            }
        }
        if let Some((record, _)) = map.get(key) {
            return Some(record.clone());
        }
        map.insert(key.to_owned(), (Record::Pending, now));
        order.push_back((now, key.to_owned()));
        None
    }

    fn get(&self, key: &str) -> Option<Record> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.records.get(key).map(|(r, _)| r.clone())
    }

    fn set(&self, key: &str, record: Option<Record>) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match record {
            Some(r) => {
                if let Some(entry) = guard.records.get_mut(key) {
                    entry.0 = r;
                }
            }
            None => {
                guard.records.remove(key);
            }
        }
    }
}

/// A valid `clientToken` (the model's `ClientToken`): 33–256 letters, digits and inner hyphens.
pub fn valid_client_token(t: &str) -> bool {
    let b = t.as_bytes();
    (33..=256).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

impl SessionDirectory {
    /// Stops session `id` of (`runtime`, `principal`) once per `token` (see the module docs).
    pub async fn stop_once(
        &self,
        id: &str,
        runtime: &str,
        principal: &Principal,
        token: &str,
        reason: EndReason,
    ) -> Result<Stopped, OpenError> {
        let key = token_key(runtime, principal, token);
        let first = match &self.shared {
            Some(shared) => shared
                .claim_token(&key, TOKEN_TTL)
                .await
                .map_err(|_| OpenError::Unavailable)?
                .map(|r| Record::decode(&r)),
            None => self.stop_tokens.claim(&key),
        };
        let record = match first {
            None => {
                let found = self
                    .stop_named(id, Some((runtime, principal)), reason)
                    .await;
                let record = found.as_ref().ok().map(|&found| Record::Done {
                    found,
                    session: id.to_owned(),
                });
                // A stop that failed leaves no record: the retry tries again.
                self.set_token(&key, record).await;
                return found.map(|f| if f { Stopped::Yes } else { Stopped::NotFound });
            }
            Some(Record::Pending) => self.await_token(&key).await?,
            Some(done) => done,
        };
        let Record::Done { found, session } = record else {
            return Err(OpenError::Unavailable);
        };
        Ok(match (session == id, found) {
            (false, _) => Stopped::TokenReused,
            (true, true) => Stopped::Replayed,
            (true, false) => Stopped::NotFound,
        })
    }

    async fn set_token(&self, key: &str, record: Option<Record>) {
        match &self.shared {
            Some(shared) => {
                let value = record.map(|r| r.encode());
                if let Err(e) = shared.set_token(key, value.as_deref(), TOKEN_TTL).await {
                    tracing::warn!(error = %e.0, "a stop's client token was not recorded");
                }
            }
            None => self.stop_tokens.set(key, record),
        }
    }

    /// Waits for the first stop with this token to record its outcome.
    async fn await_token(&self, key: &str) -> Result<Record, OpenError> {
        let deadline = tokio::time::Instant::now() + PENDING_WAIT;
        loop {
            let record = match &self.shared {
                Some(shared) => shared
                    .token(key)
                    .await
                    .map_err(|_| OpenError::Unavailable)?
                    .map(|r| Record::decode(&r)),
                None => self.stop_tokens.get(key),
            };
            match record {
                Some(Record::Pending) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some(done @ Record::Done { .. }) => return Ok(done),
                // Gone (the first stop failed) or still pending: the caller retries.
                _ => return Err(OpenError::Unavailable),
            }
        }
    }
}

fn token_key(runtime: &str, principal: &Principal, token: &str) -> String {
    let mut h = Sha256::new();
    for part in [runtime, principal.as_str(), token] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_follow_the_model() {
        let uuid = "0b7f6c84-52a5-4b7e-9a3f-2f1c5d1e9a77";
        assert!(valid_client_token(uuid));
        assert!(!valid_client_token("too-short"));
        assert!(!valid_client_token(&format!("-{uuid}")));
        assert!(!valid_client_token(&format!("{uuid}_x")));
        assert!(!valid_client_token(&"a".repeat(257)));
    }

    #[test]
    fn the_first_claim_wins_and_replays_read_its_record() {
        let t = LocalTokens::default();
        assert_eq!(t.claim("k"), None);
        assert_eq!(t.claim("k"), Some(Record::Pending));
        let done = Record::Done {
            found: true,
            session: "s".into(),
        };
        t.set("k", Some(done.clone()));
        assert_eq!(t.claim("k"), Some(done.clone()));
        assert_eq!(Record::decode(&done.encode()), done);
        t.set("k", None);
        assert_eq!(t.claim("k"), None, "a failed first stop leaves no record");
    }
}
