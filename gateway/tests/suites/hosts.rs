//! Backend hosts (`sessiongate host`): spawned backends live on hosts, replicas reach them
//! through each host's relay; a replica or a host may die.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

struct Topology {
    hosts: Vec<Host>,
    replicas: Vec<Gateway>,
    redis: Redis,
    _secret: TempDir,
}

impl Topology {
    fn start(hosts: usize, replicas: usize, extra: &str) -> Self {
        let redis = Redis::start();
        let secret_dir = TempDir::new();
        let secret = cluster_secret(&secret_dir);
        let config = host_config(&redis, &secret, extra);
        let hosts = (0..hosts).map(|_| Host::start(&config)).collect();
        let replicas = (0..replicas).map(|_| Gateway::start(&config)).collect();
        Self {
            hosts,
            replicas,
            redis,
            _secret: secret_dir,
        }
    }

    /// The host (index) running session `sid`, by its relay address in `/sessions`.
    fn host_of(&self, sid: &str) -> Option<usize> {
        let listed = self.replicas[0].sessions();
        let http = listed.iter().find(|s| s["id"] == sid)?["http"]
            .as_str()?
            .to_owned();
        self.hosts
            .iter()
            .position(|h| http.starts_with(&format!("relay:{}/", h.addr)))
    }
}

#[test]
fn spawned_backends_live_on_hosts_and_every_replica_reaches_them() {
    let t = Topology::start(2, 2, "");
    let mut placed: HashMap<String, (String, usize)> = HashMap::new();
    for i in 0..4 {
        let sid = session_id(&format!("hosted{i}"));
        let first = instance(&t.replicas[i % 2].invoke(Some(&sid), "{}"));
        let host = t.host_of(&sid).expect("the session runs on a host");
        placed.insert(sid, (first, host));
        // The hosts' load reaches the replicas with their next heartbeat.
        std::thread::sleep(Duration::from_millis(400));
    }
    let used: HashSet<usize> = placed.values().map(|(_, h)| *h).collect();
    assert_eq!(
        used.len(),
        2,
        "the least loaded host takes the next session: {placed:?}"
    );
    for (sid, (first, _)) in &placed {
        for r in &t.replicas {
            assert_eq!(&instance(&r.invoke(Some(sid), "{}")), first);
        }
    }
    // The backends are the hosts' children, none the replicas'.
    let on_hosts: usize = t.hosts.iter().map(|h| h.children().len()).sum();
    assert_eq!(on_hosts, 4);
    for r in &t.replicas {
        let spawned = children(r.pid());
        assert!(spawned.is_empty(), "a replica spawned {spawned:?}");
    }
    // A stop releases the backend on its host.
    let (sid, _) = placed.iter().next().unwrap();
    let r = t.replicas[1].post("/runtimes/default/stopruntimesession", Some(sid), "{}", &[]);
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || t
            .hosts
            .iter()
            .map(|h| h.children().len())
            .sum::<usize>()
            == 3),
        "the stopped session's backend was not released"
    );
}

#[test]
fn a_killed_host_s_sessions_start_afresh_on_the_other_host_within_two_seconds() {
    let mut t = Topology::start(2, 2, "");
    let mut sessions = Vec::new();
    for i in 0..4 {
        let sid = session_id(&format!("hostkill{i}"));
        let first = instance(&t.replicas[0].invoke(Some(&sid), "{}"));
        sessions.push((sid, first));
        std::thread::sleep(Duration::from_millis(400));
    }
    let victim = t.host_of(&sessions[0].0).unwrap();
    let doomed: Vec<&(String, String)> = sessions
        .iter()
        .filter(|(sid, _)| t.host_of(sid) == Some(victim))
        .collect();
    let orphans = t.hosts[victim].children();
    assert!(!orphans.is_empty());
    let killed = Instant::now();
    t.hosts[victim].child.kill().unwrap();
    t.hosts[victim].child.wait().unwrap();
    // Untouched, they end within two seconds (the host's heartbeat stops)…
    assert!(
        eventually(Duration::from_secs(2), || {
            let listed = t.replicas[1].sessions();
            doomed
                .iter()
                .all(|(sid, _)| !listed.iter().any(|s| s["id"] == sid.as_str()))
        }),
        "sessions of the dead host still listed"
    );
    assert!(killed.elapsed() < Duration::from_millis(2500));
    // …and their next request gets a fresh backend on the other host.
    for (sid, first) in &doomed {
        let r = t.replicas[1].invoke(Some(sid), "{}");
        assert_ne!(&instance(&r), first, "a new backend");
        assert_eq!(t.host_of(sid), Some(1 - victim));
    }
    // The others never noticed.
    for (sid, first) in sessions.iter().filter(|s| !doomed.contains(s)) {
        assert_eq!(&instance(&t.replicas[0].invoke(Some(sid), "{}")), first);
    }
    // No process of the dead host outlives it.
    assert!(eventually(Duration::from_secs(5), || orphans
        .iter()
        .all(|&p| !alive(p))));
    let ended = t.replicas.iter().any(|r| {
        r.metrics()
            .contains("sessiongate_sessions_ended_total{reason=\"host_lost\"}")
    });
    assert!(ended, "counted as host_lost");
}

#[test]
fn a_host_answers_only_signed_calls() {
    let t = Topology::start(1, 1, "");
    let sid = session_id("signed");
    instance(&t.replicas[0].invoke(Some(&sid), "{}"));
    let host = t.hosts[0].addr;
    let listed = t.replicas[0].sessions();
    let relay = listed[0]["http"].as_str().unwrap().to_owned();
    let backend = relay.split('/').nth(1).unwrap().to_owned();
    let url = format!("http://{host}/invocations");
    let as_relay = |auth: &str| {
        curl(&[
            "-X",
            "POST",
            &url,
            "-d",
            "{}",
            "-H",
            &format!("x-sessiongate-backend: {backend}"),
            "-H",
            "x-sessiongate-port: http",
            "-H",
            &format!("x-sessiongate-auth: {auth}"),
        ])
    };
    assert_eq!(as_relay("0000").status, 403, "a wrong relay token");
    assert_eq!(
        curl(&["-X", "POST", &url, "-d", "{}"]).status,
        403,
        "no token"
    );
    let place = format!("http://{host}/_sessiongate/place");
    let body = r#"{"session":"x","runtime":"default","version":1}"#;
    let unsigned = curl(&["-X", "POST", &place, "-d", body]);
    assert_eq!(unsigned.status, 403, "{}", unsigned.body_text());
    let forged = curl(&[
        "-X",
        "POST",
        &place,
        "-d",
        body,
        "-H",
        "x-sessiongate-auth: 1:00",
    ]);
    assert_eq!(forged.status, 403);
    assert_eq!(t.hosts[0].children().len(), 1, "nothing was placed");
}

#[test]
fn sandboxed_backends_on_a_host_answer_every_face_and_websockets_through_the_relay() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    // Sandboxes are reached over Unix sockets: only the host's relay can reach them.
    let config = host_config(&redis, &secret, "").replace(
        "name = \"default\"\n",
        "name = \"default\"\n[runtimes.backend]\nprovider = \"sandbox\"\n",
    );
    let host = Host::start(&config);
    let (a, b) = (Gateway::start(&config), Gateway::start(&config));
    let init = mcp_call(&a, &[], INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let sid = init.header(SESSION_HEADER).unwrap().to_owned();
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let call = mcp_call(&b, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
    assert_eq!(call.status, 200, "{}", call.body_text());
    let instance = call.json()["result"]["structuredContent"]["instance"].clone();
    assert_eq!(b.invoke(Some(&sid), "{}").json()["instance"], instance);
    let a2a = a2a_send(&a, &sid, "hello");
    assert_eq!(a2a.json()["result"]["metadata"]["instance"], instance);
    assert!(
        a.sessions()[0]["backend"]
            .as_str()
            .unwrap()
            .starts_with("host ")
    );
    assert!(!host.children().is_empty(), "the sandbox runs on the host");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = format!("ws://{}/ws", b.http).into_client_request().unwrap();
        req.headers_mut()
            .insert(SESSION_HEADER, sid.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        for text in ["through", "the", "relay"] {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        }
        ws.close(None).await.unwrap();
    });
}

#[test]
fn sessions_on_hosts_survive_a_redis_that_restarts_empty() {
    let mut t = Topology::start(1, 1, "");
    let sid = session_id("redis-restart");
    let first = instance(&t.replicas[0].invoke(Some(&sid), "{}"));
    let backend = t.hosts[0].children();
    assert_eq!(backend.len(), 1);
    t.redis.restart_empty();
    // The replica writes the session back, naming its host, before the host would release it.
    let listed = format!("http://{}/sessions", t.replicas[0].admin);
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = curl(&[&listed]);
            r.status == 200 && r.body_text().contains(&sid)
        }),
        "not written back"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(t.hosts[0].children(), backend, "the host kept its backend");
    assert_eq!(instance(&t.replicas[0].invoke(Some(&sid), "{}")), first);
    let key = format!("{{sessiongate}}:s:{sid}");
    assert!(!t.redis.cli(&["HGET", &key, "host"]).is_empty());
}

#[test]
fn commands_and_shells_reach_backends_on_hosts_through_the_relay() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let t = Topology::start(1, 2, "");
    let sid = session_id("hosted-exec");
    assert_eq!(t.replicas[0].invoke(Some(&sid), "{}").status, 200);
    assert!(t.host_of(&sid).is_some(), "the session runs on the host");
    // A command sent to the other replica runs in the session's backend on the host.
    let url = t.replicas[1].url(t.replicas[1].http, "/runtimes/default/commands");
    let h = format!("{SESSION_HEADER}: {sid}");
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &h,
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"command": "echo relayed-$((40+2)); echo oops >&2; exit 4"}"#,
    ]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let body = r.body_text();
    for part in [
        r#""stdout":"relayed-42\n""#,
        r#""stderr":"oops\n""#,
        r#""exitCode":4"#,
    ] {
        assert!(body.contains(part), "{part} missing from {body:?}");
    }
    // And a shell, through the same relay.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!(
            "ws://{}/runtimes/default/ws/shells?shellId=relayed",
            t.replicas[0].http
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert(SESSION_HEADER, sid.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::binary(&b"\x00echo shell-$((2+3))\n"[..]))
            .await
            .unwrap();
        let mut seen = String::new();
        while !seen.contains("shell-5\r\n") {
            let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
                .await
                .unwrap();
            if let Some(Ok(Message::Binary(b))) = m
                && b[0] == 1
            {
                seen.push_str(&String::from_utf8_lossy(&b[1..]));
            }
        }
        ws.send(Message::binary(&b"\x00exit 2\n"[..]))
            .await
            .unwrap();
        let mut status = String::new();
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m
                && b[0] == 3
            {
                status = String::from_utf8_lossy(&b[1..]).into_owned();
            }
        }
        assert!(status.contains(r#""message":"2""#), "{status}");
    });
}
