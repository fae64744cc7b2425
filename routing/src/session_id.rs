//! Runtime session ids: `X-Amzn-Bedrock-AgentCore-Runtime-Session-Id`.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// Shortest id AgentCore accepts.
pub const MIN_LEN: usize = 33;
/// Longest id AgentCore accepts.
pub const MAX_LEN: usize = 256;

/// A validated session id: 33–256 visible ASCII characters (`!`..=`~`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session id must be at least {MIN_LEN} characters, got {0}")]
    TooShort(usize),
    #[error("session id must be at most {MAX_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("session id must be visible ASCII characters only")]
    BadCharacter,
}

impl SessionId {
    /// Validates an id a client sent.
    pub fn parse(raw: &[u8]) -> Result<Self, SessionIdError> {
        if raw.len() < MIN_LEN {
            return Err(SessionIdError::TooShort(raw.len()));
        }
        if raw.len() > MAX_LEN {
            return Err(SessionIdError::TooLong(raw.len()));
        }
        if !raw.iter().all(|b| b.is_ascii_graphic()) {
            return Err(SessionIdError::BadCharacter);
        }
        // All bytes are ASCII, so this cannot fail; map it anyway rather than unwrap.
        let s = std::str::from_utf8(raw).map_err(|_| SessionIdError::BadCharacter)?;
        Ok(Self(Arc::from(s)))
    }

    /// A fresh id for a client that sent none: a random UUID (36 characters), as boto3 mints.
    pub fn mint() -> Self {
        Self(Arc::from(uuid::Uuid::new_v4().hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive() {
        assert_eq!(
            SessionId::parse(&[b'a'; 32]),
            Err(SessionIdError::TooShort(32))
        );
        assert!(SessionId::parse(&[b'a'; 33]).is_ok());
        assert!(SessionId::parse(&[b'~'; 256]).is_ok());
        assert_eq!(
            SessionId::parse(&[b'a'; 257]),
            Err(SessionIdError::TooLong(257))
        );
    }

    #[test]
    fn only_visible_ascii() {
        let mut id = [b'a'; 40];
        id[10] = b' ';
        assert_eq!(SessionId::parse(&id), Err(SessionIdError::BadCharacter));
        id[10] = 0xc3;
        assert_eq!(SessionId::parse(&id), Err(SessionIdError::BadCharacter));
        id[10] = b'\t';
        assert_eq!(SessionId::parse(&id), Err(SessionIdError::BadCharacter));
    }

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let a = SessionId::mint();
        let b = SessionId::mint();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str().as_bytes()).is_ok());
    }
}
