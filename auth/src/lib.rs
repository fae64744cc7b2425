//! Inbound authentication.
//!
//! For now this holds [`Principal`], the identity every session is bound to. The JWT authorizer
//! and the SigV4 verifier arrive with their own issue; until then every caller is
//! [`Principal::anonymous`].

use std::fmt;
use std::sync::Arc;

/// Who made a request: the key for session ownership and per-principal limits.
///
/// Cheap to clone (one `Arc`). JWT principals will be `issuer|subject`, SigV4 ones the
/// credential's principal name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(Arc<str>);

impl Principal {
    /// The caller of a runtime whose inbound auth is `none`.
    pub fn anonymous() -> Self {
        Self(Arc::from("anonymous"))
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
