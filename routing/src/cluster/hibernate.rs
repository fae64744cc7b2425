//! Hibernation in the cluster: the shared record of a suspended session, and the control call
//! that asks a host to save one of its backends.
//!
//! The replica that sweeps decides: a live session of an `on_idle = "suspend"` runtime whose
//! idle end is due is marked `suspending` ([`SUSPENDING`]: every replica's cache drops it and
//! its requests wait), its host saves the backend into a directory under the runtime's snapshot
//! root and lets it go ([`SUSPEND_PATH`]), and the record becomes `suspended` ([`SUSPENDED`]):
//! no backend, out of the active set, in `P:suspended` until its retention passes. The next
//! request on any replica resumes it (the open script claims it, atomically, as a placement) on
//! any live host when the snapshot root is shared, or only on the host that saved it when the
//! root is that host's own. A host that dies takes nothing with it on a shared root; on a
//! host-local root its suspended sessions end with it.
//!
//! Snapshot directories are reclaimed by the hosts: one that no record holds ([`SNAPS_HELD`])
//! goes — after a stop, an expiry or a failed save (a resume removes its own).

use std::time::Duration;

use super::{RedisDirectory, Unavailable, hosts::control};
use crate::provider::Addrs;

/// The control call that suspends a backend on its host.
pub const SUSPEND_PATH: &str = "/_sessiongate/suspend";

/// How long a suspension may take (the save's own deadlines: QMP's 60 s, the file's 30 s) before
/// the sweeper ends the session instead.
const SUSPEND_DEADLINE: Duration = Duration::from_secs(120);

/// What a resumed session's placement restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeOnHost {
    /// Its snapshot directory's name under the runtime's snapshot root.
    pub dir: String,
    /// Whether the snapshot holds the guest's memory (else only its files were kept).
    pub memory: bool,
    /// The one host that can restore it (`None`: the root is shared, any host can).
    pub host: Option<String>,
}

/// A host's answer to [`SUSPEND_PATH`].
#[derive(Debug, Clone)]
pub struct SuspendedOnHost {
    pub bytes: u64,
    pub memory: bool,
    /// The host that saved it, when its snapshot root is its own (`None`: shared).
    pub host: Option<String>,
}

/// Marks a live session whose idle end is due as being suspended. KEYS[1] `P:s:<id>`; ARGV:
/// prefix, id, gen, snapshot directory name, deadline ms, now (1: whether or not its idle end
/// is due — the admin API's suspend). Returns `ok`, `end` (end it instead:
/// its lifetime is over, or an earlier suspension was cut short), or '' (not due: active again,
/// in flight somewhere, or gone).
pub const SUSPENDING: &str = r#"
local P, id = ARGV[1], ARGV[2]
local r = redis.call('HMGET', KEYS[1], 'gen', 'st', 'cr', 'last', 'idle', 'life', 'dl')
if r[1] ~= ARGV[3] then return '' end
local t = now()
if r[2] == 's' then return (tonumber(r[7]) < t) and 'end' or '' end
if r[2] ~= 'l' then return '' end
if tonumber(r[3]) + tonumber(r[6]) <= t then return 'end' end
if ARGV[6] ~= '1' and tonumber(r[4]) + tonumber(r[5]) > t then return '' end
if leased_by_others(P, KEYS[1], '', t) > 0 then return '' end
redis.call('HSET', KEYS[1], 'st', 's', 'dl', str(t + tonumber(ARGV[5])), 'snap', ARGV[4])
redis.call('HSET', P .. ':snaps', ARGV[4], id)
redis.call('ZADD', P .. ':active', t + tonumber(ARGV[5]), id)
redis.call('PUBLISH', P .. ':ev', id .. ' ' .. r[1] .. ' suspended')
return 'ok'
"#;

/// Records a suspension its host completed. KEYS[1] `P:s:<id>`; ARGV: prefix, id, gen, bytes,
/// memory (1/0), retention ms, the host that alone can resume it ('' any), the runtime's
/// snapshot budget (bytes). Returns 1, -1 when the snapshot does not fit the budget (the caller
/// ends the session), -2 when the session is no longer being suspended (stopped meanwhile).
pub const SUSPENDED: &str = r#"
local P, id = ARGV[1], ARGV[2]
local r = redis.call('HMGET', KEYS[1], 'gen', 'st', 'rt', 'qk', 'host')
if r[1] ~= ARGV[3] or r[2] ~= 's' then return -2 end
-- The budget is per disk: the runtime's on a shared root, the runtime's on each host otherwise.
local bk = (ARGV[7] ~= '') and (r[3] .. '@' .. ARGV[7]) or r[3]
local used = tonumber(redis.call('HGET', P .. ':snapbytes', bk) or '0')
if used + tonumber(ARGV[4]) > tonumber(ARGV[8]) then return -1 end
local t = now()
add_snapshot_bytes(P, bk, tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'st', 'z', 'sb', ARGV[4], 'sbk', bk, 'mem', ARGV[5], 'sd', str(t), 'ret', ARGV[6])
redis.call('HDEL', KEYS[1], 'be', 'placer')
local fields = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(fields) do
  if string.sub(f, 1, 2) == 'l:' then redis.call('HDEL', KEYS[1], f) end
end
if r[5] then redis.call('SREM', P .. ':hs:' .. r[5], id) end
if ARGV[7] ~= '' then
  -- Only its host can resume it: the session ends if that host is lost.
  redis.call('HSET', KEYS[1], 'host', ARGV[7])
  redis.call('SADD', P .. ':hs:' .. ARGV[7], id)
else
  redis.call('HDEL', KEYS[1], 'host')
end
redis.call('ZREM', P .. ':active', id)
redis.call('SREM', P .. ':q:' .. r[4], id)
redis.call('ZADD', P .. ':suspended', t + tonumber(ARGV[6]), id)
return 1
"#;

/// Which snapshot directories a record holds. ARGV: prefix, then names. Returns 1/0 per name, or
/// nothing while Redis has lost its data (decide nothing then).
pub const SNAPS_HELD: &str = r#"
if redis.call('EXISTS', ARGV[1] .. ':epoch') == 0 or redis.call('EXISTS', ARGV[1] .. ':recovering') == 1 then
  return {}
end
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HEXISTS', ARGV[1] .. ':snaps', ARGV[i])
end
return out
"#;

/// What [`RedisDirectory::mark_suspending`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Marked: save it now.
    Suspending,
    /// End it instead (its lifetime is over, or an earlier suspension was cut short).
    End,
    NotDue,
}

/// What [`RedisDirectory::record_suspended`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Suspended,
    OverBudget,
    /// Stopped while it was being saved.
    Gone,
}

impl RedisDirectory {
    /// Marks `id` (incarnation `gen`) as being suspended into snapshot directory `dir`: when its
    /// idle end is due, or `now`.
    pub async fn mark_suspending(
        &self,
        id: &str,
        gen_: u64,
        dir: &str,
        now: bool,
    ) -> Result<Marked, Unavailable> {
        let mut inv = self.suspending.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(id)
            .arg(gen_)
            .arg(dir)
            .arg(SUSPEND_DEADLINE.as_millis() as u64)
            .arg(u8::from(now));
        let answer: String = self.run(&inv).await?;
        Ok(match answer.as_str() {
            "ok" => Marked::Suspending,
            "end" => Marked::End,
            _ => Marked::NotDue,
        })
    }

    /// Records that `id`'s host saved it.
    pub async fn record_suspended(
        &self,
        id: &str,
        gen_: u64,
        saved: &SuspendedOnHost,
        retention: Duration,
        budget_bytes: u64,
    ) -> Result<Recorded, Unavailable> {
        let mut inv = self.suspended.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(id)
            .arg(gen_)
            .arg(saved.bytes)
            .arg(u8::from(saved.memory))
            .arg(retention.as_millis() as u64)
            .arg(saved.host.as_deref().unwrap_or_default())
            .arg(budget_bytes);
        let answer: i64 = self.run(&inv).await?;
        Ok(match answer {
            1 => Recorded::Suspended,
            -1 => Recorded::OverBudget,
            _ => Recorded::Gone,
        })
    }

    /// Asks the host of `backend` to save it into snapshot directory `dir` of `runtime`'s root
    /// and let it go.
    pub async fn suspend_on_host(
        &self,
        backend: &Addrs,
        id: &str,
        runtime: &str,
        dir: &str,
    ) -> Result<SuspendedOnHost, String> {
        let relay = backend.relayed().ok_or("not a backend on a host")?;
        let body = serde_json::json!({
            "backend": &*relay.backend,
            "session": id,
            "runtime": runtime,
            "dir": dir,
        });
        let answer = control(
            &self.secret,
            relay.host,
            SUSPEND_PATH,
            &body,
            SUSPEND_DEADLINE,
        )
        .await?;
        Ok(SuspendedOnHost {
            bytes: answer["bytes"]
                .as_u64()
                .ok_or("no bytes in the host's answer")?,
            memory: answer["memory"].as_bool().unwrap_or(false),
            host: answer["host"].as_str().map(str::to_owned),
        })
    }

    /// For a host's reclaim of snapshot directories: whether a record holds each of `names`.
    pub async fn snapshots_held(&self, names: &[String]) -> Result<Vec<bool>, Unavailable> {
        let mut inv = self.snaps_held.prepare_invoke();
        inv.arg(&self.prefix);
        for n in names {
            inv.arg(n);
        }
        let reply: Vec<i64> = self.run(&inv).await?;
        if reply.len() != names.len() {
            return Err(Unavailable("the session directory is recovering".into()));
        }
        Ok(reply.into_iter().map(|v| v == 1).collect())
    }
}
