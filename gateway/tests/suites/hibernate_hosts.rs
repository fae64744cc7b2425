//! Hibernation in a cluster: microVM sessions on backend hosts are suspended by the replicas'
//! sweep when idle, and resumed by their next request — on any host when the snapshot root is
//! shared (even after the host that saved them died), only on their own host when it is not.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::microvm::guest_dir;
use crate::common::cluster::*;
use crate::common::*;

/// Every process's config: Redis, a microVM runtime whose idle sessions suspend after 2 s, and
/// `snapshots` as the snapshot root (`shared` or not).
fn config(redis: &Redis, secret: &Path, snapshots: &Path, shared: bool) -> String {
    let g = guest_dir();
    format!(
        r#"
[cluster]
directory = "redis"
redis_url = "{}"
secret_file = "{}"

[sessions]
snapshot_root = "{}"
snapshot_root_shared = {shared}

[[runtimes]]
name = "default"
on_idle = "suspend"
idle_timeout_secs = 2
[runtimes.backend]
provider = "microvm"
kernel = "{}"
initrd = "{}"
ready_timeout_ms = 180000
"#,
        redis.url(),
        secret.display(),
        snapshots.display(),
        g.join("vmlinux").display(),
        g.join("initrd.cpio").display()
    )
}

fn listed(gw: &Gateway, sid: &str) -> Option<Value> {
    gw.sessions().into_iter().find(|s| s["id"] == sid)
}

fn state(gw: &Gateway, sid: &str) -> Option<String> {
    listed(gw, sid).and_then(|s| s["state"].as_str().map(str::to_owned))
}

/// The host (index into `hosts`) whose relay serves `sid`.
fn host_of(gw: &Gateway, hosts: &[&Host], sid: &str) -> Option<usize> {
    let http = listed(gw, sid)?["http"].as_str()?.to_owned();
    hosts
        .iter()
        .position(|h| http.starts_with(&format!("relay:{}/", h.addr)))
}

/// The agent's answer: its in-memory count and the instance that counted.
fn counted(r: &Response) -> (u64, String) {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v = r.json();
    (v["count"].as_u64().unwrap(), instance(r))
}

fn await_suspended(gw: &Gateway, sid: &str) {
    assert!(
        eventually(Duration::from_secs(90), || state(gw, sid).as_deref()
            == Some("suspended")),
        "not suspended: {:?}",
        listed(gw, sid)
    );
}

fn snapshots_in(root: &Path) -> usize {
    snapshot_names(root).len()
}

/// The snapshot directories under `root` (the runtime `default`'s).
fn snapshot_names(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("default")).map_or_else(
        |_| Vec::new(),
        |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

#[test]
fn a_suspended_session_resumes_on_the_other_host_after_its_own_died() {
    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let snapshots = TempDir::new();
    let config = config(&redis, &secret, &snapshots.0, true);
    let mut hosts = [Host::start(&config), Host::start(&config)];
    let replicas = [Gateway::start(&config), Gateway::start(&config)];
    let sid = session_id("cluster-hibernate");
    assert_eq!(counted(&replicas[0].invoke(Some(&sid), "{}")).0, 1);
    let (count, first) = counted(&replicas[1].invoke(Some(&sid), "{}"));
    assert_eq!(count, 2);
    let refs: Vec<&Host> = hosts.iter().collect();
    let saver = host_of(&replicas[0], &refs, &sid).expect("the session runs on a host");
    // Every replica lists it, with its host and the replica that placed it.
    for r in &replicas {
        let row = listed(r, &sid).unwrap();
        assert!(
            row["backend"].as_str().unwrap().starts_with("host "),
            "{row}"
        );
        assert!(row["replica"].is_string(), "{row}");
    }

    // Idle for 2 s: the sweep suspends it; its VM ends, its snapshot is on the shared root.
    await_suspended(&replicas[1], &sid);
    let saved = snapshot_names(&snapshots.0);
    assert_eq!(saved.len(), 1);
    let row = listed(&replicas[0], &sid).unwrap();
    assert!(row["snapshot_bytes"].as_u64().unwrap() > 0, "{row}");
    assert!(hosts[saver].children().is_empty(), "its VM ended");

    // The host that saved it dies; the session does not die with it.
    hosts[saver].child.kill().unwrap();
    hosts[saver].child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(state(&replicas[0], &sid).as_deref(), Some("suspended"));

    // Its next request resumes it on the other host: the guest's memory is intact.
    let (count, instance) = counted(&replicas[0].invoke(Some(&sid), "{}"));
    assert_eq!((count, instance.as_str()), (3, first.as_str()));
    let refs: Vec<&Host> = hosts.iter().collect();
    assert_eq!(host_of(&replicas[0], &refs, &sid), Some(1 - saver));
    assert!(
        eventually(Duration::from_secs(20), || !snapshot_names(&snapshots.0)
            .contains(&saved[0])),
        "the snapshot goes once resumed"
    );
    let m = replicas[0].metrics();
    assert!(
        m.contains("sessiongate_resume_duration_seconds_count"),
        "{m}"
    );

    // Requests from both replicas racing its next resume: one VM serves them all.
    await_suspended(&replicas[0], &sid);
    let answers: Vec<(u64, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let (gw, sid) = (&replicas[i % 2], &sid);
                s.spawn(move || counted(&gw.invoke(Some(sid), "{}")))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|(_, i)| *i == first), "{answers:?}");
    let mut counts: Vec<u64> = answers.iter().map(|(c, _)| *c).collect();
    counts.sort_unstable();
    // One memory counted them all: two guests restored from the same snapshot would both have
    // counted from 3.
    assert_eq!(counts, (4..10).collect::<Vec<u64>>());
    let suspended = replicas
        .iter()
        .map(|r| r.metrics())
        .any(|m| m.contains("sessiongate_suspends_total{outcome=\"suspended\"}"));
    assert!(suspended, "suspensions counted by the sweeping replica");

    // A stop of a suspended session ends it everywhere; its snapshot is reclaimed.
    await_suspended(&replicas[1], &sid);
    let r = replicas[1].post(
        "/runtimes/default/stopruntimesession",
        Some(&sid),
        "{}",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(listed(&replicas[0], &sid).is_none());
    assert!(
        eventually(Duration::from_secs(20), || snapshots_in(&snapshots.0) == 0),
        "the snapshot of a stopped session is reclaimed"
    );
    // And its id starts a new session.
    assert_eq!(counted(&replicas[0].invoke(Some(&sid), "{}")).0, 1);
}

#[test]
fn on_host_local_roots_a_suspended_session_resumes_only_on_its_own_host() {
    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let roots = [TempDir::new(), TempDir::new()];
    // The session is placed while only the first host runs; the second joins with far more
    // room, so that any free choice would take it.
    let mut hosts = vec![Host::start(&config(&redis, &secret, &roots[0].0, false))];
    let replica = Gateway::start(&config(&redis, &secret, &roots[0].0, false));
    let sid = session_id("local-hibernate");
    let (_, first) = counted(&replica.invoke(Some(&sid), "{}"));
    let roomy = config(&redis, &secret, &roots[1].0, false) + "\n[host]\ncapacity = 512\n";
    hosts.push(Host::start(&roomy));
    let refs: Vec<&Host> = hosts.iter().collect();
    assert_eq!(host_of(&replica, &refs, &sid), Some(0));
    let other = session_id("local-other");
    assert_eq!(counted(&replica.invoke(Some(&other), "{}")).0, 1);
    assert_eq!(host_of(&replica, &refs, &other), Some(1), "a free choice");
    let home = 0;
    for round in 2..=3 {
        await_suspended(&replica, &sid);
        assert!(
            snapshots_in(&roots[home].0) >= 1,
            "saved on its own host's root"
        );
        let (count, instance) = counted(&replica.invoke(Some(&sid), "{}"));
        assert_eq!((count, instance.as_str()), (round, first.as_str()));
        assert_eq!(host_of(&replica, &refs, &sid), Some(home), "round {round}");
    }
    // Its host dies while it is suspended: it ends with it, and its id starts afresh.
    await_suspended(&replica, &sid);
    hosts[home].child.kill().unwrap();
    hosts[home].child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || listed(&replica, &sid).is_none()),
        "a suspended session of a lost host with its own root ends"
    );
    let (count, instance) = counted(&replica.invoke(Some(&sid), "{}"));
    assert_eq!(count, 1);
    assert_ne!(instance, first);
}

#[test]
fn a_suspended_session_nobody_resumes_ends_after_its_retention() {
    let redis = Redis::start();
    let secret_dir = TempDir::new();
    let secret = cluster_secret(&secret_dir);
    let snapshots = TempDir::new();
    let config = format!(
        "[cluster]\ndirectory = \"redis\"\nredis_url = \"{}\"\nsecret_file = \"{}\"\n\
         [sessions]\nsnapshot_root = \"{}\"\nsnapshot_root_shared = true\n\
         [[runtimes]]\nname = \"default\"\non_idle = \"suspend\"\nidle_timeout_secs = 1\n\
         suspend_retention_secs = 3\n[runtimes.backend]\nprovider = \"process\"\n",
        redis.url(),
        secret.display(),
        snapshots.0.display(),
    );
    let host = Host::start(&config);
    let replica = Gateway::start(&config);
    let sid = session_id("retention");
    let (_, first) = counted(&replica.invoke(Some(&sid), "{}"));
    // A process keeps only its files: suspended, its process ends; resumed, a new one starts.
    await_suspended(&replica, &sid);
    assert!(
        eventually(Duration::from_secs(5), || host.children().is_empty()),
        "its process ended"
    );
    let (count, instance) = counted(&replica.invoke(Some(&sid), "{}"));
    assert_eq!(count, 1);
    assert_ne!(instance, first);
    // Suspended again and left alone: it ends once its retention passes, counted as such.
    await_suspended(&replica, &sid);
    assert!(
        eventually(Duration::from_secs(10), || listed(&replica, &sid).is_none()),
        "still listed after its retention: {:?}",
        listed(&replica, &sid)
    );
    let m = replica.metrics();
    assert!(
        m.contains("sessiongate_sessions_ended_total{reason=\"suspend_expired\"}"),
        "{m}"
    );
    assert!(eventually(Duration::from_secs(20), || snapshots_in(
        &snapshots.0
    ) == 0));
}
