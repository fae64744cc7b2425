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
    /// A backend on a host (`sessiongate host`), reached through the host's relay.
    Relay(Arc<Relay>),
}

impl Relay {
    /// The headers a relayed request carries (the relay removes them before the backend).
    pub fn headers(&self) -> [(&'static str, &str); 3] {
        [
            (RELAY_BACKEND, &self.backend),
            (RELAY_PORT, self.port.as_str()),
            (RELAY_AUTH, &self.token),
        ]
    }
}

/// Which backend on the host a relayed request is for.
pub const RELAY_BACKEND: &str = "x-sessiongate-backend";
/// Which of its protocol ports (`http`, `mcp`, `a2a`).
pub const RELAY_PORT: &str = "x-sessiongate-port";
/// The relay token ([`crate::cluster::auth::relay_token`]).
pub const RELAY_AUTH: &str = "x-sessiongate-auth";

/// One protocol port of a backend on a host: connect to `host`, name the backend and the port,
/// prove it with the token (the relay checks it against the cluster's secret).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relay {
    pub host: SocketAddr,
    pub backend: Box<str>,
    pub port: Protocol,
    pub token: Box<str>,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => a.fmt(f),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Relay(r) => write!(f, "relay:{}/{}/{}", r.host, r.backend, r.port.as_str()),
        }
    }
}

/// A backend's address for each protocol port it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addrs {
    pub http: BackendAddr,
    pub mcp: Option<BackendAddr>,
    pub a2a: Option<BackendAddr>,
    /// Where the session's commands are sent, when the backend has an exec socket of its own
    /// that is not derived from the others (a microVM guest's forwarded port).
    pub exec: Option<BackendAddr>,
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
            exec: None,
        }
    }
}

impl From<Endpoint> for Addrs {
    fn from(e: Endpoint) -> Self {
        Self {
            http: BackendAddr::Tcp(e.http),
            mcp: e.mcp.map(BackendAddr::Tcp),
            a2a: e.a2a.map(BackendAddr::Tcp),
            exec: None,
        }
    }
}

impl Addrs {
    /// The shared record's form: `http mcp a2a`, `-` for a port not served. TCP only: a Unix
    /// socket is reachable on its own machine alone, so it never goes into a shared record.
    pub fn encode(&self) -> String {
        if let Some(r) = self.relayed() {
            let ports = format!(
                "h{}{}",
                if self.mcp.is_some() { "m" } else { "" },
                if self.a2a.is_some() { "a" } else { "" }
            );
            return format!("relay {} {} {ports}", r.host, r.backend);
        }
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

    /// A backend on a host: `relay <host> <backend> <ports>` (`h`, `m`, `a`).
    pub fn relay(host: SocketAddr, backend: &str, mcp: bool, a2a: bool, token: &str) -> Self {
        let at = |port| {
            BackendAddr::Relay(Arc::new(Relay {
                host,
                backend: backend.into(),
                port,
                token: token.into(),
            }))
        };
        Self {
            http: at(Protocol::Http),
            mcp: mcp.then(|| at(Protocol::Mcp)),
            a2a: a2a.then(|| at(Protocol::A2a)),
            exec: None,
        }
    }

    /// The relay this backend is reached through, if it lives on a host.
    pub fn relayed(&self) -> Option<&Relay> {
        match &self.http {
            BackendAddr::Relay(r) => Some(r),
            _ => None,
        }
    }

    /// The inverse of [`Addrs::encode`], with `token` for relayed backends (from the backend
    /// id); `None` for anything else (an empty field above all).
    pub fn decode_with(s: &str, token: impl Fn(&str) -> String) -> Option<Self> {
        let Some(rest) = s.strip_prefix("relay ") else {
            return Self::decode(s);
        };
        let mut parts = rest.split(' ');
        let host = parts.next()?.parse().ok()?;
        let backend = parts.next()?;
        let ports = parts.next()?;
        if backend.is_empty() || parts.next().is_some() {
            return None;
        }
        Some(Self::relay(
            host,
            backend,
            ports.contains('m'),
            ports.contains('a'),
            &token(backend),
        ))
    }

    /// The inverse of [`Addrs::encode`] for direct addresses; `None` for anything else.
    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.split(' ');
        let mut next = || -> Option<Option<BackendAddr>> {
            match parts.next()? {
                "-" => Some(None),
                a => a.parse().ok().map(|a| Some(BackendAddr::Tcp(a))),
            }
        };
        let (http, mcp, a2a) = (next()??, next()?, next()?);
        Some(Self {
            http,
            mcp,
            a2a,
            exec: None,
        })
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
        for bad in [
            "",
            "-",
            "- - -",
            "x - -",
            "127.0.0.1:1 -",
            "relay 127.0.0.1:1 b hm",
        ] {
            assert_eq!(Addrs::decode(bad), None, "{bad:?}");
        }
        let relayed = Addrs::relay(([10, 0, 0, 5], 7070).into(), "b1", true, false, "t");
        assert_eq!(relayed.encode(), "relay 10.0.0.5:7070 b1 hm");
        assert_eq!(
            Addrs::decode_with(&relayed.encode(), |b| {
                assert_eq!(b, "b1");
                "t".into()
            }),
            Some(relayed)
        );
        for bad in [
            "relay",
            "relay x b h",
            "relay 10.0.0.5:7070  h",
            "relay 10.0.0.5:7070 b h extra",
        ] {
            assert_eq!(Addrs::decode_with(bad, |_| String::new()), None, "{bad:?}");
        }
    }
}
