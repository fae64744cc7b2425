//! Where a backend's protocol ports are: TCP on loopback (or anywhere, for static pools) or a
//! Unix socket (a sandbox has its own network namespace; only a socket file crosses it).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use conf::{Endpoint, Protocol};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A backend's address for each protocol port it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs {
    pub http: BackendAddr,
    pub mcp: Option<BackendAddr>,
    pub a2a: Option<BackendAddr>,
}

impl Addrs {
    pub fn get(&self, protocol: Protocol) -> Option<&BackendAddr> {
        match protocol {
            Protocol::Http => Some(&self.http),
            Protocol::Mcp => self.mcp.as_ref(),
            Protocol::A2a => self.a2a.as_ref(),
        }
    }

    /// The three sockets `<dir>/{http,mcp,a2a}.sock`.
    pub fn unix_in(dir: &Path) -> Self {
        let at = |name: &str| BackendAddr::Unix(Arc::from(dir.join(name)));
        Self {
            http: at("http.sock"),
            mcp: Some(at("mcp.sock")),
            a2a: Some(at("a2a.sock")),
        }
    }
}

impl From<Endpoint> for Addrs {
    fn from(e: Endpoint) -> Self {
        Self {
            http: BackendAddr::Tcp(e.http),
            mcp: e.mcp.map(BackendAddr::Tcp),
            a2a: e.a2a.map(BackendAddr::Tcp),
        }
    }
}

impl Addrs {
    /// The shared record's form: `http mcp a2a`, `-` for a port not served. TCP only: a Unix
    /// socket is reachable on its own machine alone, so it never goes into a shared record.
    pub fn encode(&self) -> String {
        let one = |a: Option<&BackendAddr>| match a {
            Some(BackendAddr::Tcp(a)) => a.to_string(),
            _ => "-".to_owned(),
        };
        format!(
            "{} {} {}",
            one(Some(&self.http)),
            one(self.mcp.as_ref()),
            one(self.a2a.as_ref())
        )
    }

    /// The inverse of [`Addrs::encode`]; `None` for anything else (an empty field above all).
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split(' ');
        let mut next = || -> Option<Option<BackendAddr>> {
            match parts.next()? {
                "-" => Some(None),
                a => a.parse().ok().map(|a| Some(BackendAddr::Tcp(a))),
            }
        };
        let (http, mcp, a2a) = (next()??, next()?, next()?);
        Some(Self { http, mcp, a2a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_form_round_trips() {
        let a = Addrs::from(Endpoint {
            http: ([127, 0, 0, 1], 8080).into(),
            mcp: None,
            a2a: Some(([10, 0, 0, 2], 9000).into()),
        });
        assert_eq!(a.encode(), "127.0.0.1:8080 - 10.0.0.2:9000");
        assert_eq!(Addrs::decode(&a.encode()), Some(a));
        for bad in ["", "-", "- - -", "x - -", "127.0.0.1:1 -"] {
            assert_eq!(Addrs::decode(bad), None, "{bad:?}");
        }
    }
}
