//! The shared records read whole: `/sessions` on a replica, the cluster's session count, and
//! writing a session back after Redis lost its data.

use std::time::Duration;

use super::{RedisDirectory, Unavailable};
use crate::provider::Addrs;

/// A session as `/sessions` lists it from the shared records.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub runtime: String,
    pub version: u32,
    pub principal: String,
    /// `provisioning`, `live`, `suspending` or `suspended`.
    pub state: &'static str,
    pub created_ms: u64,
    pub last_ms: u64,
    pub backend: Option<Addrs>,
    /// The backend host it runs on (`None`: a static-pool endpoint); for a suspended session,
    /// the one host that can resume it (`None`: any, the snapshot root is shared).
    pub host: Option<String>,
    /// A suspended session's snapshot bytes and when it was suspended (Unix ms).
    pub snapshot_bytes: u64,
    pub suspended_ms: u64,
    /// The replica that placed its backend.
    pub placer: Option<String>,
}

/// A session to write back after Redis lost its data.
#[derive(Debug)]
pub struct Restore<'a> {
    pub id: &'a str,
    pub incarnation: u64,
    pub runtime: &'a str,
    pub principal: &'a str,
    pub quota_key: &'a str,
    pub version: u32,
    pub created_ms: u64,
    pub last_ms: u64,
    pub idle: Duration,
    pub life: Duration,
    pub backend: &'a Addrs,
    pub slot: Option<&'a str>,
    pub mcp_ids: Vec<String>,
    /// The backend host it runs on.
    pub host: Option<&'a str>,
}

impl RedisDirectory {
    /// Writes back a session this replica knows, after Redis lost its data.
    pub async fn restore(&self, r: &Restore<'_>) -> Result<bool, Unavailable> {
        let mut inv = self.restore.key(self.key(r.id));
        inv.arg(&self.prefix)
            .arg(r.id)
            .arg(r.incarnation)
            .arg(r.runtime)
            .arg(r.principal)
            .arg(r.quota_key)
            .arg(r.version)
            .arg(r.created_ms)
            .arg(r.last_ms)
            .arg(r.idle.as_millis() as u64)
            .arg(r.life.as_millis() as u64)
            .arg(r.backend.encode())
            .arg(r.slot.unwrap_or_default())
            .arg(r.mcp_ids.join(" "))
            .arg(r.host.unwrap_or_default());
        let restored: i64 = self.run(&inv).await?;
        Ok(restored == 1)
    }

    /// Every session in the cluster (at most `max`).
    pub async fn list(&self, max: usize) -> Result<Vec<Listed>, Unavailable> {
        let mut inv = self.list.prepare_invoke();
        inv.arg(&self.prefix).arg(max);
        let reply: Vec<String> = self.run(&inv).await?;
        Ok(reply
            .chunks_exact(12)
            .map(|c| Listed {
                id: c[0].clone(),
                runtime: c[1].clone(),
                version: c[2].parse().unwrap_or(1),
                principal: c[3].clone(),
                state: match c[4].as_str() {
                    "l" => "live",
                    "s" => "suspending",
                    "z" => "suspended",
                    _ => "provisioning",
                },
                created_ms: c[5].parse().unwrap_or(0),
                last_ms: c[6].parse().unwrap_or(0),
                backend: self.addrs(&c[7]),
                host: (!c[8].is_empty()).then(|| c[8].clone()),
                snapshot_bytes: c[9].parse().unwrap_or(0),
                suspended_ms: c[10].parse().unwrap_or(0),
                placer: (!c[11].is_empty()).then(|| c[11].clone()),
            })
            .collect())
    }

    /// The number of sessions in the cluster.
    pub async fn count(&self) -> Result<usize, Unavailable> {
        self.command(redis::cmd("ZCARD").arg(format!("{}:active", self.prefix)))
            .await
    }
}
