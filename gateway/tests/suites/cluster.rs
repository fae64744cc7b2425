//! Replicas sharing a Redis session directory: a real `redis-server`, several gateway processes,
//! static agents, HAProxy in round-robin (not sticky) in front.

use std::collections::HashSet;
use std::sync::Barrier;
use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

struct Cluster {
    replicas: Vec<Gateway>,
    _agents: Vec<Agent>,
    redis: Redis,
    _secret: TempDir,
}

impl Cluster {
    /// `n` replicas over `agents` agents; `extra(i)` is replica `i`'s own TOML.
    fn start(n: usize, agents: usize, extra: impl Fn(usize) -> String) -> Self {
        let redis = Redis::start();
        let secret_dir = TempDir::new();
        let secret = cluster_secret(&secret_dir);
        let agents: Vec<Agent> = (0..agents).map(|_| Agent::start()).collect();
        let replicas = (0..n)
            .map(|i| Gateway::start(&replica_config(&redis, &secret, &agents, &extra(i))))
            .collect();
        Self {
            replicas,
            _agents: agents,
            redis,
            _secret: secret_dir,
        }
    }
}

fn stop_session(gw: &Gateway, sid: &str) -> Response {
    gw.post("/runtimes/agent/stopruntimesession", Some(sid), "{}", &[])
}

fn requests_served(gw: &Gateway) -> u64 {
    gw.metrics()
        .lines()
        .filter(|l| l.starts_with("sessiongate_requests_total{") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_sessions_requests_land_on_every_replica_and_always_reach_its_one_backend() {
    let c = Cluster::start(3, 3, |_| String::new());
    let lb = Haproxy::round_robin(&c.replicas.iter().collect::<Vec<_>>());
    let sessions: Vec<String> = (0..6).map(|i| session_id(&format!("rr{i}"))).collect();
    let mut seen = HashSet::new();
    for sid in &sessions {
        let first = instance(&lb.invoke(sid));
        seen.insert(first.clone());
        for _ in 0..8 {
            assert_eq!(instance(&lb.invoke(sid)), first, "session {sid} moved");
        }
    }
    assert!(seen.len() > 1, "sessions spread over the pool: {seen:?}");
    for (i, r) in c.replicas.iter().enumerate() {
        assert!(requests_served(r) > 5, "replica {i} served too few");
        // Any replica lists every session.
        let listed: HashSet<String> = r
            .sessions()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(sessions.iter().all(|s| listed.contains(s)), "replica {i}");
    }
    assert_eq!(c.redis.slots_taken(), 6);
}

#[test]
fn concurrent_first_requests_on_different_replicas_place_one_backend() {
    let c = Cluster::start(3, 4, |_| String::new());
    for round in 0..4 {
        let sid = session_id(&format!("race{round}"));
        let barrier = Barrier::new(9);
        let instances: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..9)
                .map(|i| {
                    let (gw, sid, barrier) = (&c.replicas[i % 3], &sid, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        instance(&gw.invoke(Some(sid), "{}"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let distinct: HashSet<_> = instances.iter().collect();
        assert_eq!(distinct.len(), 1, "round {round}: {instances:?}");
        assert_eq!(c.redis.slots_taken(), round + 1, "one slot per session");
    }
}

#[test]
fn a_stop_on_one_replica_ends_the_session_on_every_replica_at_once() {
    // One endpoint with one slot: whoever still routed the stopped id would reach it.
    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let agent = Agent::start();
    let config = replica_config(&redis, &secret, std::slice::from_ref(&agent), "")
        .replace("sessions_per_endpoint = 50", "sessions_per_endpoint = 1");
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let old = session_id("stopped");
    assert_eq!(a.invoke(Some(&old), "{}").status, 200);
    assert_eq!(b.invoke(Some(&old), "{}").status, 200, "cached on both");
    let r = stop_session(&b, &old);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(redis.slots_taken(), 0);
    // The slot goes to a new session…
    let new = session_id("new");
    assert_eq!(b.invoke(Some(&new), "{}").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    // …and replica A, which had the stopped one cached, no longer routes it: the old id is a new
    // session now, and the pool (one slot, taken) has no room for it.
    let again = a.invoke(Some(&old), "{}");
    assert_eq!(again.status, 402, "{}", again.body_text());
    assert!(again.body_text().contains("No runtime capacity"));
    // Stopping a session another principal or nobody owns is a 404 everywhere.
    assert_eq!(stop_session(&a, &session_id("nobody")).status, 404);
}

#[test]
fn idle_time_is_shared_a_session_busy_on_one_replica_lives_and_ends_once_idle_everywhere() {
    let c = Cluster::start(2, 1, |_| "[sessions]\nidle_timeout_secs = 3\n".into());
    let sid = session_id("idle");
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let first = instance(&a.invoke(Some(&sid), "{}"));
    // Busy on B only, for longer than the idle timeout: A's own view of it is idle.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(instance(&b.invoke(Some(&sid), "{}")), first);
    }
    assert!(a.sessions().iter().any(|s| s["id"] == sid.as_str()));
    // Then idle everywhere: it ends once, cluster-wide.
    assert!(
        eventually(Duration::from_secs(8), || c.redis.slots_taken() == 0),
        "the idle session did not end"
    );
    assert!(a.sessions().is_empty() && b.sessions().is_empty());
    let ended = |g: &Gateway| {
        g.metrics()
            .lines()
            .find(|l| l.starts_with("sessiongate_sessions_ended_total{reason=\"idle\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(ended(a) + ended(b), 1, "ended exactly once");
}

#[test]
fn session_limits_hold_across_replicas() {
    let c = Cluster::start(3, 1, |_| {
        "[limits]\nmax_sessions_per_anonymous_address = 2\n".into()
    });
    let ids: Vec<String> = (0..3).map(|i| session_id(&format!("quota{i}"))).collect();
    assert_eq!(c.replicas[0].invoke(Some(&ids[0]), "{}").status, 200);
    assert_eq!(c.replicas[1].invoke(Some(&ids[1]), "{}").status, 200);
    let refused = c.replicas[2].invoke(Some(&ids[2]), "{}");
    assert_eq!(refused.status, 402, "{}", refused.body_text());
    assert_eq!(
        refused.header("x-amzn-ErrorType"),
        Some("ServiceQuotaExceededException")
    );
    assert!(refused.header("retry-after").is_some());
    // Existing sessions still serve on any replica; a stop makes room on every replica.
    assert_eq!(c.replicas[2].invoke(Some(&ids[0]), "{}").status, 200);
    assert_eq!(stop_session(&c.replicas[2], &ids[1]).status, 200);
    assert_eq!(c.replicas[0].invoke(Some(&ids[2]), "{}").status, 200);
}

#[test]
fn a_replica_killed_mid_traffic_loses_no_session() {
    let c = Cluster::start(3, 3, |_| String::new());
    let lb = Haproxy::round_robin(&c.replicas.iter().collect::<Vec<_>>());
    let sessions: Vec<(String, String)> = (0..4)
        .map(|i| {
            let sid = session_id(&format!("kill{i}"));
            let first = instance(&lb.invoke(&sid));
            (sid, first)
        })
        .collect();
    let victim = c.replicas[1].pid();
    let mut failed = 0;
    for round in 0..40 {
        if round == 10 {
            unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        }
        for (sid, first) in &sessions {
            let mut r = lb.invoke(sid);
            if r.status != 200 {
                // A request in flight on the killed replica: the client's retry.
                failed += 1;
                r = lb.invoke(sid);
            }
            assert_eq!(&instance(&r), first, "session {sid} moved (round {round})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(failed <= 2, "{failed} requests needed a retry");
    assert!(!alive(victim));
}

#[test]
fn a_graceful_upgrade_of_a_replica_keeps_its_sessions_without_a_failed_request() {
    let sockets = TempDir::new();
    let socket = sockets.0.join("upgrade.sock");
    let c = Cluster::start(1, 2, |_| {
        format!("[server]\nupgrade_socket = \"{}\"\n", socket.display())
    });
    let mut old = c.replicas.into_iter().next().unwrap();
    let sid = session_id("upgrade");
    let first = instance(&old.invoke(Some(&sid), "{}"));
    let mut new = std::process::Command::new(bin())
        .args(old.args())
        .arg("--upgrade")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let url = old.url(old.http, "/invocations");
    let header = format!("{SESSION_HEADER}: {sid}");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = curl(&["-X", "POST", &url, "-H", &header, "-d", "{}"]);
                if r.status == 200 && instance(&r) == first {
                    ok += 1;
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            (ok, failed)
        });
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(old.pid() as i32, libc::SIGQUIT) };
        old.stop_with(0);
        std::thread::sleep(Duration::from_millis(600));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(ok > 10, "{ok} requests succeeded");
    assert_eq!(failed, 0, "requests failed or moved during the upgrade");
    assert_eq!(c.redis.slots_taken(), 1, "the session lives on in Redis");
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    new.wait().unwrap();
}

#[test]
fn while_redis_is_down_cached_sessions_serve_new_ones_get_503_and_all_recovers_after_an_empty_restart()
 {
    // Replica 0 serves cached sessions for 30 s of outage, replica 1 for 2 s.
    let mut c = Cluster::start(2, 2, |i| {
        let grace = if i == 0 { 30 } else { 2 };
        format!("redis_outage_grace_secs = {grace}\n")
    });
    let sid = session_id("outage");
    let first = instance(&c.replicas[0].invoke(Some(&sid), "{}"));
    assert_eq!(instance(&c.replicas[1].invoke(Some(&sid), "{}")), first);

    c.redis.kill();
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    assert_eq!(instance(&a.invoke(Some(&sid), "{}")), first, "cached");
    let refused = a.invoke(Some(&session_id("new")), "{}");
    assert_eq!(refused.status, 503, "{}", refused.body_text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.body_text().contains("session directory"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(instance(&a.invoke(Some(&sid), "{}")), first, "within grace");
    assert_eq!(
        b.invoke(Some(&sid), "{}").status,
        503,
        "past replica 1's grace"
    );

    // Redis comes back empty: the replicas write back what they know.
    c.redis.restart_empty();
    assert!(
        eventually(Duration::from_secs(10), || a
            .sessions()
            .iter()
            .any(|s| s["id"] == sid.as_str())),
        "the session was not written back"
    );
    assert_eq!(c.redis.slots_taken(), 1);
    assert_eq!(instance(&b.invoke(Some(&sid), "{}")), first);
    // New sessions wait (503) the two seconds the replicas have to write theirs back.
    let after = session_id("after");
    assert!(eventually(Duration::from_secs(5), || b
        .invoke(Some(&after), "{}")
        .status
        == 200));
}

#[test]
fn an_mcp_session_learned_on_one_replica_is_routed_by_every_replica() {
    let c = Cluster::start(3, 2, |_| String::new());
    // The implicit MCP session (no ids at all) is the same on every replica: one shared secret.
    let init = mcp_call(&c.replicas[0], &[], INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let runtime_sid = init.header(SESSION_HEADER).unwrap().to_owned();
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let mut instances = HashSet::new();
    for gw in &c.replicas {
        let call = mcp_call(gw, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
        assert_eq!(call.status, 200);
        assert_eq!(call.header(SESSION_HEADER), Some(runtime_sid.as_str()));
        let content = &call.json()["result"]["structuredContent"];
        assert_eq!(content["session_id"], runtime_sid.as_str());
        instances.insert(content["instance"].as_str().unwrap().to_owned());
        let again = mcp_call(gw, &[], INITIALIZE);
        assert_eq!(again.header(SESSION_HEADER), Some(runtime_sid.as_str()));
    }
    assert_eq!(instances.len(), 1, "{instances:?}");
    // Once the session ends, every replica tells the client to re-initialise.
    assert_eq!(stop_session(&c.replicas[1], &runtime_sid).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    for gw in &c.replicas {
        let stale = mcp_call(gw, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
        assert_eq!(
            (stale.status, stale.json()["error"]["code"].as_i64()),
            (404, Some(-32004)),
            "{}",
            stale.body_text()
        );
    }
}

#[test]
fn the_in_flight_limit_of_a_session_holds_across_replicas() {
    let c = Cluster::start(3, 1, |_| "[limits]\nmax_inflight_per_session = 2\n".into());
    let sid = session_id("inflight");
    assert_eq!(c.replicas[0].invoke(Some(&sid), "{}").status, 200);
    // Two slow requests on two replicas hold both slots…
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let slow: Vec<_> = [0, 1]
            .map(|i| {
                let (gw, sid) = (&c.replicas[i], &sid);
                s.spawn(move || gw.invoke(Some(sid), r#"{"sleep_ms": 2000}"#).status)
            })
            .into_iter()
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        // …so a third on the third replica is refused, as on one gateway.
        let third = c.replicas[2].invoke(Some(&sid), "{}");
        assert_eq!(third.status, 429, "{}", third.body_text());
        let mut all: Vec<u16> = slow.into_iter().map(|h| h.join().unwrap()).collect();
        all.push(third.status);
        all
    });
    assert_eq!(statuses, [200, 200, 429]);
    // Once they are done (and the idle replicas' leases shrink), the third replica serves it.
    assert!(eventually(Duration::from_secs(5), || c.replicas[2]
        .invoke(Some(&sid), "{}")
        .status
        == 200));
}

#[test]
fn a_record_pointing_outside_the_pool_is_never_followed() {
    let c = Cluster::start(2, 1, |_| String::new());
    let sid = session_id("forged");
    instance(&c.replicas[0].invoke(Some(&sid), "{}"));
    // Whoever can write to Redis points the session at another address (here: Redis itself).
    let key = format!("{{sessiongate}}:s:{sid}");
    let forged = format!("127.0.0.1:{} - -", c.redis.port);
    assert_eq!(c.redis.cli(&["HSET", &key, "be", &forged]), "0");
    let r = c.replicas[1].invoke(Some(&sid), "{}");
    assert_eq!(r.status, 503, "{}", r.body_text());
}

#[test]
fn a_redis_that_wants_a_password_gets_it_from_the_url_and_a_wrong_one_is_a_clear_503() {
    let redis = Redis::start_with(Some("s3cret-redis-password"));
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let agent = Agent::start();
    let config = replica_config(&redis, &secret, std::slice::from_ref(&agent), "");
    let gw = Gateway::start(&config);
    assert_eq!(gw.invoke(Some(&session_id("auth")), "{}").status, 200);
    let wrong = Gateway::start(&config.replace("s3cret-redis-password", "wrong"));
    let r = wrong.invoke(Some(&session_id("auth")), "{}");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn a_stop_replayed_on_another_replica_answers_as_the_first_and_never_ends_the_new_session() {
    let c = Cluster::start(2, 1, |_| String::new());
    let (a, b) = (&c.replicas[0], &c.replicas[1]);
    let sid = session_id("fenced");
    let body = r#"{"clientToken": "replayed-stop-0123456789abcdef0123456789"}"#;
    let stop = |gw: &Gateway| gw.post("/runtimes/agent/stopruntimesession", Some(&sid), body, &[]);
    let first = a.invoke(Some(&sid), "{}");
    assert_eq!(first.status, 200);
    assert_eq!(stop(a).status, 200);
    // The id starts a new session (on the other replica); the replay, there, ends nothing.
    let second = b.invoke(Some(&sid), "{}");
    assert_eq!(second.status, 200);
    let r = stop(b);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        b.sessions().iter().any(|s| s["id"] == sid),
        "the replayed stop ended the new session"
    );
    // Without the token, a stop ends it; a token first used for another id is a conflict.
    assert_eq!(stop_session(a, &sid).status, 200);
    let other = session_id("other");
    assert_eq!(a.invoke(Some(&other), "{}").status, 200);
    let r = a.post(
        "/runtimes/agent/stopruntimesession",
        Some(&other),
        body,
        &[],
    );
    assert_eq!(r.status, 409, "{}", r.body_text());
    assert_eq!(r.header("x-amzn-errortype"), Some("ConflictException"));
}

#[test]
fn a_session_endpoint_token_issued_by_one_replica_is_honoured_by_every_replica() {
    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let agents = [Agent::start()];
    // A static backend's extra port is its address on that port; nothing listens on 11999 here,
    // so a request the grant lets through is answered 502, one it does not is a 403.
    let config = replica_config(
        &redis,
        &secret,
        &agents,
        "[session_endpoints]\ndomain = \"sessions.test\"\n",
    )
    .replace(
        "name = \"agent\"\n",
        "name = \"agent\"\nallowed_ports = [11999]\n",
    );
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let sid = session_id("endpoint");
    assert_eq!(a.invoke(Some(&sid), "{}").status, 200);
    let issued = a.post(
        &format!("/runtimes/agent/sessions/{sid}/endpoint-tokens?port=11999"),
        None,
        "",
        &[],
    );
    assert_eq!(issued.status, 200, "{}", issued.body_text());
    let url = issued.json()["url"].as_str().unwrap().to_owned();
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let through =
        |gw: &Gateway, host: &str| curl(&[&gw.url(gw.http, "/"), "-H", &format!("Host: {host}")]);
    let r = through(&b, &host);
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(r.body_text().contains("11999"), "{}", r.body_text());
    assert!(b.sessions().iter().any(|s| s["id"] == sid));
    let forged = format!("11999-{}.sessions.test", "f".repeat(32));
    assert_eq!(through(&b, &forged).status, 403);
}
