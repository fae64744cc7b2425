//! Backend hosts in the shared directory: their heartbeats, a replica's view of the live ones,
//! placing a session's backend on one (a signed control call to the host), and the sweep that
//! ends the sessions of a host gone silent.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{RedisDirectory, ResumeOnHost, Unavailable, auth};
use crate::provider::Addrs;

/// A host silent this long is lost: its sessions end (and start afresh elsewhere).
pub const HOST_TTL: Duration = Duration::from_millis(1000);
/// How often a host renews its record.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// Deadline of one control call (placing may boot a backend: up to its ready timeout).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// The control API's paths on a host.
pub const PLACE_PATH: &str = "/_sessiongate/place";
pub const RELEASE_PATH: &str = "/_sessiongate/release";

/// A live host as its (MAC-checked) record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub capacity: u32,
    pub load: u32,
}

/// A backend a host started for a session.
#[derive(Debug, Clone)]
pub struct PlacedOnHost {
    pub host: String,
    pub addrs: Addrs,
}

/// Why no host took a session.
#[derive(Debug, thiserror::Error)]
pub enum HostPlaceError {
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("no backend host could take the session: {0}")]
    NoHost(String),
    /// The session ended, or another replica took its placement over.
    #[error("the session is no longer this replica's to place")]
    Lost,
}

impl RedisDirectory {
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// A host's heartbeat: its signed record, valid for [`HOST_TTL`].
    pub async fn heartbeat(&self, host: &HostInfo) -> Result<(), Unavailable> {
        let addr = host.addr.to_string();
        let mac = auth::host_mac(&self.secret, &host.id, &addr);
        let record = format!("{addr} {} {} {mac}", host.capacity, host.load);
        let mut inv = self.heartbeat.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&host.id)
            .arg(record)
            .arg(HOST_TTL.as_millis() as u64);
        let _: i64 = self.run(&inv).await?;
        Ok(())
    }

    /// Reads the live hosts (records with a valid MAC only) and keeps them for
    /// [`RedisDirectory::knows_host`].
    pub async fn refresh_hosts(&self) -> Result<Vec<HostInfo>, Unavailable> {
        let mut inv = self.list_hosts.prepare_invoke();
        inv.arg(&self.prefix).arg(HOST_TTL.as_millis() as u64);
        let reply: Vec<String> = self.run(&inv).await?;
        let hosts: Vec<HostInfo> = reply
            .chunks_exact(2)
            .filter_map(|c| {
                let mut f = c[1].split(' ');
                let (addr, capacity, load, mac) = (f.next()?, f.next()?, f.next()?, f.next()?);
                if !auth::same(mac, &auth::host_mac(&self.secret, &c[0], addr)) {
                    tracing::error!(host = %c[0], "a host record with a wrong MAC in Redis; ignored");
                    return None;
                }
                Some(HostInfo {
                    id: c[0].clone(),
                    addr: addr.parse().ok()?,
                    capacity: capacity.parse().ok()?,
                    load: load.parse().ok()?,
                })
            })
            .collect();
        // An empty answer right after Redis restarted (hosts not heard from yet) keeps the last
        // list: the write-back of sessions on hosts needs their ids.
        if !hosts.is_empty()
            && let Ok(mut cache) = self.hosts.write()
        {
            cache.clone_from(&hosts);
        }
        Ok(hosts)
    }

    /// The id of the live host at `addr`, as last read.
    pub fn host_id_of(&self, addr: SocketAddr) -> Option<String> {
        let hosts = self.hosts.read().ok()?;
        hosts.iter().find(|h| h.addr == addr).map(|h| h.id.clone())
    }

    /// Whether `addr` is a live host's, as last read.
    pub fn knows_host(&self, addr: SocketAddr) -> bool {
        self.hosts
            .read()
            .is_ok_and(|hosts| hosts.iter().any(|h| h.addr == addr))
    }

    /// Places a session's backend on a host: the live hosts with the most free capacity first
    /// (a host refuses beyond its capacity, then the next is asked), then records it. A resumed
    /// session's snapshot is restored there — only on its own host when that host's root is not
    /// shared.
    pub async fn place_on_host(
        &self,
        id: &str,
        incarnation: u64,
        (runtime, version): (&str, u32),
        principal: &str,
        resume: Option<&ResumeOnHost>,
    ) -> Result<PlacedOnHost, HostPlaceError> {
        let mut hosts = self.refresh_hosts().await?;
        hosts.sort_by_key(|h| std::cmp::Reverse(i64::from(h.capacity) - i64::from(h.load)));
        if let Some(only) = resume.and_then(|r| r.host.as_deref()) {
            hosts.retain(|h| h.id == only);
        }
        let mut body = serde_json::json!({
            "session": id,
            "incarnation": incarnation,
            "runtime": runtime,
            "version": version,
            "principal": principal,
        });
        if let Some(r) = resume {
            body["resume"] = serde_json::json!({ "dir": r.dir, "memory": r.memory });
        }
        let mut why = String::from("no live host");
        for host in hosts {
            let answer =
                match control(&self.secret, host.addr, PLACE_PATH, &body, CONTROL_TIMEOUT).await {
                    Ok(a) => a,
                    Err(e) => {
                        why = format!("host {}: {e}", host.id);
                        continue;
                    }
                };
            let Some(backend) = answer["backend"].as_str() else {
                why = format!("host {}: no backend in its answer", host.id);
                continue;
            };
            let token = auth::relay_token(&self.secret, backend);
            let addrs = Addrs::relay(
                host.addr,
                backend,
                answer["mcp"].as_bool().unwrap_or(false),
                answer["a2a"].as_bool().unwrap_or(false),
                &token,
            );
            let mut inv = self.place_host.key(self.key(id));
            inv.arg(&self.prefix)
                .arg(incarnation)
                .arg(&self.node)
                .arg(&host.id)
                .arg(addrs.encode());
            let placed: i64 = self.run(&inv).await?;
            if placed != 1 {
                let release = serde_json::json!({ "backend": backend });
                let _ = control(
                    &self.secret,
                    host.addr,
                    RELEASE_PATH,
                    &release,
                    CONTROL_TIMEOUT,
                )
                .await;
                return Err(HostPlaceError::Lost);
            }
            return Ok(PlacedOnHost {
                host: host.id,
                addrs,
            });
        }
        Err(HostPlaceError::NoHost(why))
    }

    /// Ends the sessions of hosts silent for [`HOST_TTL`]; their ids.
    pub async fn hosts_lost(&self) -> Result<Vec<String>, Unavailable> {
        let mut inv = self.hosts_lost.prepare_invoke();
        inv.arg(&self.prefix).arg(HOST_TTL.as_millis() as u64);
        self.run(&inv).await
    }

    /// For a host: whether each `(session id, backend id)` is still placed on it.
    pub async fn still_placed(
        &self,
        host: &str,
        backends: &[(String, String)],
    ) -> Result<Vec<bool>, Unavailable> {
        let mut inv = self.still_placed.prepare_invoke();
        inv.arg(&self.prefix).arg(host);
        for (session, backend) in backends {
            inv.arg(session).arg(backend);
        }
        let reply: Vec<i64> = self.run(&inv).await?;
        if reply.len() != backends.len() {
            // Redis lost its data and the replicas are writing back: decide nothing now.
            return Err(Unavailable("the session directory is recovering".into()));
        }
        Ok(reply.into_iter().map(|v| v == 1).collect())
    }
}

/// One signed control call (`POST path` with a JSON body) to a host; its JSON answer.
pub(super) async fn control(
    secret: &[u8],
    host: SocketAddr,
    path: &str,
    body: &serde_json::Value,
    deadline: Duration,
) -> Result<serde_json::Value, String> {
    let body = Bytes::from(body.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = http::Request::post(path)
        .header(http::header::HOST, host.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            crate::provider::addr::RELAY_AUTH,
            auth::control_auth(secret, path, &body, now),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let call = async {
        let stream = tokio::net::TcpStream::connect(host)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if status.is_success() {
            Ok(answer)
        } else {
            Err(format!(
                "{status}: {}",
                answer["message"].as_str().unwrap_or("no message")
            ))
        }
    };
    tokio::time::timeout(deadline, call)
        .await
        .map_err(|_| "the control call timed out".to_owned())?
}
