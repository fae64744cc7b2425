//! `GET /ping`, the container contract's health probe.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::provider::BackendAddr;

/// What a backend said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// `HealthyBusy`: background work is running; the session must be kept alive.
    pub busy: bool,
    /// Unix seconds of the last status change, when the backend reported one as an integer.
    pub time_of_last_update: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(String),
    #[error("status {0}")]
    Status(u16),
}

impl PingError {
    /// The probe failed for want of the gateway's own resources (descriptors, buffers, memory),
    /// which says nothing about the backend's health.
    pub fn is_local_exhaustion(&self) -> bool {
        matches!(self, PingError::Connect(e) if is_local_exhaustion(e))
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: this process or host is out of something.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Probes `http://addr/ping` once, within `timeout`.
pub async fn ping(addr: &BackendAddr, timeout: Duration) -> Result<Health, PingError> {
    let probe = async {
        match addr {
            BackendAddr::Tcp(a) => {
                let stream = TcpStream::connect(a).await.map_err(PingError::Connect)?;
                ping_over(stream, &a.to_string(), None).await
            }
            BackendAddr::Unix(p) => {
                let stream = UnixStream::connect(p).await.map_err(PingError::Connect)?;
                ping_over(stream, "localhost", None).await
            }
            BackendAddr::Relay(r) => {
                let stream = TcpStream::connect(r.host)
                    .await
                    .map_err(PingError::Connect)?;
                ping_over(stream, &r.host.to_string(), Some(r)).await
            }
        }
    };
    tokio::time::timeout(timeout, probe)
        .await
        .map_err(|_| PingError::Timeout(timeout))?
}

async fn ping_over<S>(
    stream: S,
    host: &str,
    relay: Option<&crate::provider::addr::Relay>,
) -> Result<Health, PingError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| PingError::Http(e.to_string()))?;
    // The connection task ends by itself when the response has been read and `sender` dropped.
    tokio::spawn(conn);
    let mut req = http::Request::get("/ping").header(http::header::HOST, host);
    if let Some(r) = relay {
        for (name, value) in r.headers() {
            req = req.header(name, value);
        }
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| PingError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| PingError::Http(e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(PingError::Status(status));
    }
    // A health answer is a few dozen bytes; refuse to buffer a runaway body.
    let body = Limited::new(resp.into_body(), 16 * 1024)
        .collect()
        .await
        .map_err(|e| PingError::Http(e.to_string()))?
        .to_bytes();
    Ok(parse_health(&body))
}

/// Reads `{"status": "Healthy"|"HealthyBusy", "time_of_last_update": <unix s>}`. Anything the
/// backend sends with a 200 counts as healthy; a non-integer timestamp (the TypeScript SDK
/// sends ISO strings) is ignored rather than refused.
pub fn parse_health(body: &[u8]) -> Health {
    #[derive(serde::Deserialize)]
    struct Wire {
        status: Option<String>,
        time_of_last_update: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Wire>(body) {
        Ok(w) => Health {
            busy: w.status.as_deref() == Some("HealthyBusy"),
            time_of_last_update: w.time_of_last_update.and_then(|v| v.as_u64()),
        },
        Err(_) => Health {
            busy: false,
            time_of_last_update: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_bodies() {
        let h = parse_health(br#"{"status":"HealthyBusy","time_of_last_update":1700000000}"#);
        assert_eq!(
            h,
            Health {
                busy: true,
                time_of_last_update: Some(1_700_000_000)
            }
        );
        let h =
            parse_health(br#"{"status":"Healthy","time_of_last_update":"2026-01-01T00:00:00Z"}"#);
        assert_eq!(
            h,
            Health {
                busy: false,
                time_of_last_update: None
            }
        );
        assert!(!parse_health(b"ok").busy);
    }

    #[test]
    fn running_out_of_descriptors_is_not_the_backends_fault() {
        let emfile = PingError::Connect(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(emfile.is_local_exhaustion());
        let refused = PingError::Connect(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(!refused.is_local_exhaustion());
        assert!(!PingError::Status(500).is_local_exhaustion());
    }
}
