//! The Redis session directory: what a replica shares with every other replica.
//!
//! A replica keeps its sessions cached in the [`crate::SessionDirectory`] it serves from; this
//! is the shared record behind the cache. A warm request never waits for Redis: only a cache
//! miss (the first request for an id on this replica), a placement, an end, an MCP id learned,
//! and a once-a-second batch of activity go to it. Every change that must be atomic across
//! replicas — create-or-join with the quotas, taking a static-pool slot, ending exactly once —
//! is one Lua script ([`scripts`]). Ends are announced on a channel so every cache drops the
//! session within milliseconds; the activity batch doubles as the check that catches an
//! announcement missed while a replica was disconnected.

pub mod auth;
mod hibernate;
mod hosts;
mod records;
mod scripts;

pub use hibernate::{Marked, Recorded, ResumeOnHost, SUSPEND_PATH, SuspendedOnHost};
pub use records::{Listed, Restore};

pub use hosts::{
    HEARTBEAT_INTERVAL, HOST_TTL, HostInfo, HostPlaceError, PLACE_PATH, PlacedOnHost, RELEASE_PATH,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::provider::Addrs;

/// What the shared record says about a session a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It exists and has a backend.
    Live(Record),
    /// It exists; another replica is placing its backend.
    Placing(Record),
    /// This replica must place its backend (a new session, or a placement whose replica died).
    Place(Record),
    NotFound,
    /// Redis lost its data and the replicas are writing back what they know: retry shortly.
    Recovering,
    /// It is being suspended: ask again shortly (then it resumes).
    Suspending,
    /// Every in-flight slot of the session is leased to other replicas' requests.
    Inflight,
    /// The cluster's active session limit: retry after this long.
    Full(Duration),
    /// The caller's session limit.
    Quota(Duration),
}

/// The part of a session record a replica caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub incarnation: u64,
    pub version: u32,
    pub created_ms: u64,
    pub last_ms: u64,
    /// Set once live.
    pub backend: Option<Addrs>,
    /// A resumed session's placement restores this snapshot.
    pub resume: Option<ResumeOnHost>,
}

/// What a request brings to [`RedisDirectory::open`].
#[derive(Debug)]
pub struct OpenArgs<'a> {
    pub id: &'a str,
    pub runtime: &'a str,
    pub principal: &'a str,
    pub quota_key: &'a str,
    pub version: u32,
    pub create: bool,
    pub max_active: usize,
    pub max_per_key: usize,
    pub idle: Duration,
    pub life: Duration,
    /// The session's in-flight limit (0: lease nothing, a lookup only).
    pub max_inflight: u32,
}

/// A session whose end is due, as the sweeper sees it.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    /// `None`: the record is gone (only its place in the active set was left).
    pub incarnation: Option<u64>,
    pub backend: Option<Addrs>,
    /// `l` live, `p` placing, `s` suspending, `z` suspended ('' gone).
    pub state: String,
    pub runtime: String,
}

/// Redis is unreachable or answered something this code did not write.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session directory unavailable: {0}")]
pub struct Unavailable(pub String);

impl From<redis::RedisError> for Unavailable {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// How long a replica may take to place a backend before another may take the placement over.
pub const PLACING_DEADLINE: Duration = Duration::from_secs(30);

pub struct RedisDirectory {
    /// Drives the connection: Pingora gives each service its own runtime, and the connection
    /// must outlive whichever called first.
    runtime: Option<tokio::runtime::Runtime>,
    /// The cluster's shared secret (relay tokens, control calls, host records).
    secret: Vec<u8>,
    /// The live backend hosts, as last read (replicas place spawned backends on them).
    hosts: std::sync::RwLock<Vec<HostInfo>>,
    client: redis::Client,
    conn: ConnectionManager,
    /// `{key_prefix}`: every key in one hash slot.
    prefix: String,
    node: String,
    timeout: Duration,
    outage_grace: Duration,
    /// When Redis last answered (Unix ms).
    last_ok_ms: AtomicU64,
    /// The epoch this replica has seen ('' none yet).
    epoch: std::sync::Mutex<String>,
    /// Woken when a request finds the data lost: the replica writes back its sessions now.
    pub recover: tokio::sync::Notify,
    open: redis::Script,
    place_slot: redis::Script,
    end: redis::Script,
    touch: redis::Script,
    lease: redis::Script,
    due: redis::Script,
    learn_mcp: redis::Script,
    restore: redis::Script,
    list: redis::Script,
    place_host: redis::Script,
    heartbeat: redis::Script,
    list_hosts: redis::Script,
    hosts_lost: redis::Script,
    still_placed: redis::Script,
    suspending: redis::Script,
    suspended: redis::Script,
    snaps_held: redis::Script,
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory")
            .field("prefix", &self.prefix)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl RedisDirectory {
    /// Connects lazily: a replica starts while Redis is down, and every call reconnects.
    pub fn new(cluster: &conf::Cluster) -> Result<Self, Unavailable> {
        let client = redis::Client::open(cluster.redis_url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cluster.redis_timeout))
            .set_response_timeout(Some(cluster.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| Unavailable(format!("cannot start the Redis client's thread: {e}")))?;
        let conn = {
            let _in = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), config)?
        };
        Ok(Self {
            runtime: Some(runtime),
            secret: cluster.secret.clone(),
            hosts: std::sync::RwLock::new(Vec::new()),
            client,
            conn,
            prefix: format!("{{{}}}", cluster.key_prefix),
            node: cluster.node_id.clone().unwrap_or_else(default_node_id),
            timeout: cluster.redis_timeout,
            outage_grace: cluster.redis_outage_grace,
            last_ok_ms: AtomicU64::new(crate::directory::now_ms()),
            epoch: std::sync::Mutex::new(String::new()),
            recover: tokio::sync::Notify::new(),
            open: scripts::script(scripts::OPEN),
            place_slot: scripts::script(scripts::PLACE_SLOT),
            end: scripts::script(scripts::END),
            touch: scripts::script(scripts::TOUCH),
            lease: scripts::script(scripts::LEASE),
            due: scripts::script(scripts::DUE),
            learn_mcp: scripts::script(scripts::LEARN_MCP),
            restore: scripts::script(scripts::RESTORE),
            list: scripts::script(scripts::LIST),
            place_host: scripts::script(scripts::PLACE_HOST),
            heartbeat: scripts::script(scripts::HEARTBEAT),
            list_hosts: scripts::script(scripts::HOSTS),
            hosts_lost: scripts::script(scripts::HOSTS_LOST),
            still_placed: scripts::script(scripts::STILL_PLACED),
            suspending: scripts::script(hibernate::SUSPENDING),
            suspended: scripts::script(hibernate::SUSPENDED),
            snaps_held: scripts::script(hibernate::SNAPS_HELD),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A record's backend addresses, with the relay token for a backend on a host.
    fn addrs(&self, s: &str) -> Option<Addrs> {
        Addrs::decode_with(s, |backend| auth::relay_token(&self.secret, backend))
    }

    fn key(&self, id: &str) -> String {
        format!("{}:s:{id}", self.prefix)
    }

    /// True while cached sessions may still be served: Redis answered within the outage grace.
    pub fn within_grace(&self) -> bool {
        let last = self.last_ok_ms.load(Ordering::Acquire);
        crate::directory::now_ms().saturating_sub(last) <= self.outage_grace.as_millis() as u64
    }

    /// Runs one script invocation with the call deadline, noting a success.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        // The outer deadline also covers a reconnect (EVALSHA, then SCRIPT LOAD + EVALSHA).
        let value = tokio::time::timeout(self.timeout * 3, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| Unavailable("Redis did not answer in time".into()))??;
        self.last_ok_ms
            .store(crate::directory::now_ms(), Ordering::Release);
        Ok(value)
    }

    /// Runs one plain command with the call deadline, noting a success.
    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        let value = tokio::time::timeout(self.timeout * 3, cmd.query_async(&mut conn))
            .await
            .map_err(|_| Unavailable("Redis did not answer in time".into()))??;
        self.last_ok_ms
            .store(crate::directory::now_ms(), Ordering::Release);
        Ok(value)
    }

    /// Create-or-join, with the cluster-wide session limits.
    pub async fn open(&self, a: &OpenArgs<'_>, incarnation: u64) -> Result<Opened, Unavailable> {
        let mut inv = self.open.key(self.key(a.id));
        inv.arg(&self.prefix)
            .arg(a.id)
            .arg(a.runtime)
            .arg(a.principal)
            .arg(a.quota_key)
            .arg(a.version)
            .arg(&self.node)
            .arg(u8::from(a.create))
            .arg(a.max_active)
            .arg(a.max_per_key)
            .arg(PLACING_DEADLINE.as_millis() as u64)
            .arg(a.idle.as_millis() as u64)
            .arg(a.life.as_millis() as u64)
            .arg(incarnation)
            .arg(self.known_epoch())
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(a.max_inflight);
        let reply: Vec<String> = self.run(&inv).await?;
        let field = |i: usize| reply.get(i).map(String::as_str).unwrap_or_default();
        let ms = |i: usize| Duration::from_millis(field(i).parse::<u64>().unwrap_or(1000));
        let record = || -> Result<Record, Unavailable> {
            let num = |i: usize| {
                field(i)
                    .parse::<u64>()
                    .map_err(|_| Unavailable(format!("malformed session record: {reply:?}")))
            };
            Ok(Record {
                incarnation: num(1)?,
                version: u32::try_from(num(2)?).unwrap_or(1),
                created_ms: num(3)?,
                last_ms: num(4)?,
                backend: self.addrs(field(5)),
                resume: (!field(6).is_empty()).then(|| ResumeOnHost {
                    dir: field(6).to_owned(),
                    memory: field(7) == "1",
                    host: (!field(8).is_empty()).then(|| field(8).to_owned()),
                }),
            })
        };
        Ok(match field(0) {
            "live" => Opened::Live(record()?),
            "placing" => Opened::Placing(record()?),
            "place" => Opened::Place(record()?),
            "full" => Opened::Full(ms(1)),
            "quota" => Opened::Quota(ms(1)),
            "inflight" => Opened::Inflight,
            "suspending" => Opened::Suspending,
            "recovering" => {
                self.recover.notify_one();
                Opened::Recovering
            }
            _ => Opened::NotFound,
        })
    }

    /// Takes a slot of a static pool for a session this replica places. `endpoints` are
    /// (endpoint key, addresses) in the order to try. `Ok(Some(i))`: endpoint `i` taken;
    /// `Ok(None)`: every one is full; `Err` with `lost = true` when the session is no longer
    /// this replica's to place.
    pub async fn place_slot(
        &self,
        id: &str,
        incarnation: u64,
        per_endpoint: u32,
        endpoints: &[(String, String)],
    ) -> Result<SlotTaken, Unavailable> {
        let mut inv = self.place_slot.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(incarnation)
            .arg(&self.node)
            .arg(per_endpoint);
        for (key, addrs) in endpoints {
            inv.arg(key).arg(addrs);
        }
        let taken: i64 = self.run(&inv).await?;
        Ok(match taken {
            -1 => SlotTaken::Full,
            i if i >= 0 => SlotTaken::Taken(i as usize),
            _ => SlotTaken::Lost,
        })
    }

    /// Ends a session everywhere, once. `incarnation` `None`: whatever incarnation; `reason` `None`:
    /// only if its idle or lifetime end is due (then the reason says which); `owner`: only if
    /// it belongs to that runtime and principal. Returns the reason it ended with.
    pub async fn end(
        &self,
        id: &str,
        incarnation: Option<u64>,
        reason: Option<&str>,
        owner: Option<(&str, &str)>,
    ) -> Result<Option<String>, Unavailable> {
        self.end_where(id, incarnation, reason, owner, None).await
    }

    /// [`RedisDirectory::end`], only if the record still names `backend` (a host ending the
    /// session of a backend that exited).
    pub async fn end_where(
        &self,
        id: &str,
        incarnation: Option<u64>,
        reason: Option<&str>,
        owner: Option<(&str, &str)>,
        backend: Option<&str>,
    ) -> Result<Option<String>, Unavailable> {
        let mut inv = self.end.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(id)
            .arg(incarnation.map(|g| g.to_string()).unwrap_or_default())
            .arg(reason.unwrap_or_default())
            .arg(owner.map_or("", |o| o.0))
            .arg(owner.map_or("", |o| o.1))
            .arg(backend.unwrap_or_default());
        let reason: String = self.run(&inv).await?;
        Ok((!reason.is_empty()).then_some(reason))
    }

    /// Sends this replica's activity: `(id, incarnation, last activity ms or 0, in-flight slots
    /// kept leased)`. Returns the epoch and, per session, the shared last activity (`None`: it
    /// is gone).
    pub async fn touch(
        &self,
        batch: &[(String, u64, u64, u32)],
    ) -> Result<(String, Vec<Option<u64>>), Unavailable> {
        let mut inv = self.touch.prepare_invoke();
        inv.arg(&self.prefix).arg(&self.node);
        for (id, incarnation, last, lease) in batch {
            inv.arg(id).arg(incarnation).arg(last).arg(lease);
        }
        let mut reply: Vec<String> = self.run(&inv).await?;
        if reply.is_empty() {
            return Err(Unavailable("empty answer to the activity batch".into()));
        }
        let epoch = reply.remove(0);
        let lasts = reply.iter().map(|v| v.parse::<u64>().ok()).collect();
        Ok((epoch, lasts))
    }

    fn known_epoch(&self) -> String {
        self.epoch.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Whether Redis lost its data since this replica last looked: the epoch it just reported
    /// differs from the one this replica knows. Sets a new epoch when there is none, and holds
    /// new sessions back for 2 s while the replicas write theirs back.
    pub async fn epoch_changed(&self, reported: &str) -> Result<bool, Unavailable> {
        let known = self.known_epoch();
        if !reported.is_empty() && reported == known {
            return Ok(false);
        }
        if !known.is_empty() {
            let _: Option<String> = self
                .command(
                    redis::cmd("SET")
                        .arg(format!("{}:recovering", self.prefix))
                        .arg("1")
                        .arg("PX")
                        .arg(2000)
                        .arg("NX"),
                )
                .await?;
        }
        let key = format!("{}:epoch", self.prefix);
        let fresh = uuid::Uuid::new_v4().simple().to_string();
        let _: Option<String> = self
            .command(redis::cmd("SET").arg(&key).arg(&fresh).arg("NX"))
            .await?;
        let now: String = self.command(redis::cmd("GET").arg(&key)).await?;
        let first = known.is_empty();
        if let Ok(mut e) = self.epoch.lock() {
            *e = now;
        }
        // The first look at start-up is no loss.
        Ok(!first)
    }

    /// The sessions whose end is due, if this replica holds the sweeper lock (`None`: another
    /// replica sweeps).
    pub async fn due(&self, lock: Duration, max: usize) -> Result<Option<Vec<Due>>, Unavailable> {
        let mut inv = self.due.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(&self.node)
            .arg(lock.as_millis() as u64)
            .arg(max);
        let reply: Vec<String> = self.run(&inv).await?;
        if reply.first().map(String::as_str) != Some("1") {
            return Ok(None);
        }
        Ok(Some(
            reply[1..]
                .chunks_exact(5)
                .map(|c| Due {
                    id: c[0].clone(),
                    incarnation: c[1].parse().ok(),
                    backend: self.addrs(&c[2]),
                    state: c[3].clone(),
                    runtime: c[4].clone(),
                })
                .collect(),
        ))
    }

    /// Grows this replica's in-flight lease on a session to `slots`, if the other replicas'
    /// leases leave room under `max`. `Ok(None)`: it is being suspended, or is suspended.
    pub async fn lease(
        &self,
        id: &str,
        incarnation: u64,
        slots: u32,
        max: u32,
    ) -> Result<Option<bool>, Unavailable> {
        let mut inv = self.lease.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(&self.node)
            .arg(incarnation)
            .arg(slots)
            .arg(max);
        let granted: i64 = self.run(&inv).await?;
        Ok((granted != -1).then_some(granted == 1))
    }

    /// Routes `mcp_id` to session `id` unless another session owns it.
    pub async fn learn_mcp_id(
        &self,
        id: &str,
        incarnation: u64,
        mcp_id: &str,
        max: usize,
    ) -> Result<bool, Unavailable> {
        let mut inv = self.learn_mcp.key(self.key(id));
        inv.arg(&self.prefix)
            .arg(id)
            .arg(incarnation)
            .arg(mcp_id)
            .arg(max);
        let routed: i64 = self.run(&inv).await?;
        Ok(routed == 1)
    }

    /// The session an `Mcp-Session-Id` routes to.
    pub async fn session_for_mcp_id(&self, mcp_id: &str) -> Result<Option<String>, Unavailable> {
        let id: Option<String> = self
            .command(redis::cmd("GET").arg(format!("{}:mcp:{mcp_id}", self.prefix)))
            .await?;
        Ok(id)
    }

    /// Claims a stop's client token (`crate::directory::stop_tokens`): `None` when this call is
    /// the first to use it (recorded `pending` until [`Self::set_token`]), else its record.
    pub async fn claim_token(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, Unavailable> {
        self.command(
            redis::cmd("SET")
                .arg(format!("{}:tok:{key}", self.prefix))
                .arg("pending")
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(ttl.as_millis() as u64),
        )
        .await
    }

    /// Records a token's outcome, or forgets it (`None`: its stop failed, a retry tries again).
    pub async fn set_token(
        &self,
        key: &str,
        value: Option<&str>,
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let key = format!("{}:tok:{key}", self.prefix);
        match value {
            Some(v) => {
                self.command(
                    redis::cmd("SET")
                        .arg(key)
                        .arg(v)
                        .arg("PX")
                        .arg(ttl.as_millis() as u64),
                )
                .await
            }
            None => self.command(redis::cmd("DEL").arg(key)).await,
        }
    }

    pub async fn token(&self, key: &str) -> Result<Option<String>, Unavailable> {
        self.command(redis::cmd("GET").arg(format!("{}:tok:{key}", self.prefix)))
            .await
    }

    /// Ends announced by any replica: `(id, incarnation)`, until the subscription breaks (then the
    /// caller resubscribes; the activity batch catches what was missed meanwhile).
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, Unavailable> {
        let mut pubsub = tokio::time::timeout(self.timeout * 4, self.client.get_async_pubsub())
            .await
            .map_err(|_| Unavailable("Redis did not answer in time".into()))??;
        pubsub.subscribe(format!("{}:ev", self.prefix)).await?;
        Ok(pubsub)
    }
}

impl Drop for RedisDirectory {
    fn drop(&mut self) {
        // Never blocks, so dropping the directory inside an async context is fine too.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The outcome of [`RedisDirectory::place_slot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotTaken {
    Taken(usize),
    Full,
    /// The session ended or another replica took its placement over.
    Lost,
}

/// Parses one end announcement: `<id> <incarnation> <reason>`.
pub fn parse_end(payload: &str) -> Option<(&str, u64, &str)> {
    let mut parts = payload.split(' ');
    let id = parts.next()?;
    let incarnation = parts.next()?.parse().ok()?;
    Some((id, incarnation, parts.next().unwrap_or("")))
}

/// `hostname-pid`: unique per process on a machine, readable in `/sessions`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}
