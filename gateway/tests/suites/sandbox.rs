//! The `sandbox` provider, proven from inside: a probe agent (tests/fixtures/probe_agent.py)
//! runs in each session's sandbox and reports what it can see and do.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// The probe agent, in a directory the sandbox's unprivileged user can read.
struct Probe {
    dir: TempDir,
}

impl Probe {
    fn new() -> Self {
        let dir = TempDir::new();
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.write("probe_agent.py", include_str!("../fixtures/probe_agent.py"));
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
        Self { dir }
    }

    fn config(&self, extra: &str) -> String {
        let dir = self.dir.0.display();
        format!(
            r#"
[sessions]
sweep_interval_ms = 100

[[runtimes]]
name = "default"
[runtimes.backend]
provider = "sandbox"
command = "/usr/bin/python3"
args = ["{dir}/probe_agent.py"]
read_only = ["/usr", "/lib", "/lib64", "/bin", "/etc", "{dir}"]
{extra}
"#
        )
    }
}

fn ask(gw: &Gateway, sid: &str, probe: Value) -> Value {
    let r = gw.invoke(Some(sid), &probe.to_string());
    assert_eq!(r.status, 200, "{probe}: {}", r.body_text());
    r.json()
}

/// The host directory of a live sandbox session (`…/sandbox-N`), from its socket address.
fn sandbox_dir(gw: &Gateway, sid: &str) -> PathBuf {
    let s = gw.sessions();
    let http = s
        .iter()
        .find(|s| s["id"] == sid)
        .and_then(|s| s["http"].as_str())
        .unwrap()
        .to_owned();
    let sock = PathBuf::from(http.strip_prefix("unix:").unwrap());
    sock.parent().unwrap().parent().unwrap().to_owned()
}

fn stop(gw: &Gateway, sid: &str) {
    let r = curl(&[
        "-X",
        "DELETE",
        &format!("http://{}/sessions/{sid}", gw.admin),
    ]);
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn sandboxed_sessions_see_only_their_own_files_processes_and_sockets() {
    let probe = Probe::new();
    let gw = Gateway::start(&probe.config("egress = false"));
    let (a, b) = (session_id("sandbox-a"), session_id("sandbox-b"));

    ask(
        &gw,
        &a,
        json!({"op": "write", "path": "/scratch/secret", "data": "A's"}),
    );
    let a_dir = sandbox_dir(&gw, &a);
    assert_eq!(
        std::fs::read_to_string(a_dir.join("scratch/secret")).unwrap(),
        "A's",
        "the scratch dir is the session's, on the host"
    );
    let me = ask(&gw, &a, json!({"op": "whoami"}));
    assert_eq!(me["hostname"], "sandbox");
    assert_eq!(me["cap_eff"], "0000000000000000", "no capabilities: {me}");
    assert_eq!(me["interfaces"], json!(["lo"]), "only loopback: {me}");

    // B: its own scratch, its own processes, none of A's sockets, no way out.
    let read = ask(&gw, &b, json!({"op": "read", "path": "/scratch/secret"}));
    assert_eq!(read["exists"], false, "{read}");
    let host_path = a_dir.join("scratch/secret");
    let read = ask(&gw, &b, json!({"op": "read", "path": host_path}));
    assert_eq!(
        read["exists"], false,
        "A's file through its host path: {read}"
    );
    let pids = ask(&gw, &b, json!({"op": "pids"}))["pids"].clone();
    let pids: Vec<u64> = serde_json::from_value(pids).unwrap();
    assert!(
        pids.len() <= 4 && pids.iter().all(|&p| p < 16),
        "B sees only its own few processes: {pids:?}"
    );
    let a_sock = a_dir.join("sockets/http.sock");
    let c = ask(&gw, &b, json!({"op": "connect_unix", "path": a_sock}));
    assert_eq!(c["connected"], false, "A's socket from B: {c}");
    let c = ask(
        &gw,
        &b,
        json!({"op": "connect_tcp", "host": "127.0.0.1", "port": gw.http.port()}),
    );
    assert_eq!(c["connected"], false, "the host's loopback from B: {c}");
    let w = gw.invoke(
        Some(&b),
        &json!({"op": "write", "path": "/usr/owned", "data": "x"}).to_string(),
    );
    assert_ne!(w.status, 200, "the root is read-only");
    assert!(!Path::new("/usr/owned").exists());
    let home = ask(&gw, &b, json!({"op": "list", "path": "/root"}));
    assert_eq!(
        home["entries"],
        Value::Null,
        "host paths not listed are absent: {home}"
    );

    // Stopping A removes its scratch space; the same id starts over empty.
    stop(&gw, &a);
    assert!(
        eventually(Duration::from_secs(5), || !a_dir.exists()),
        "{} outlived its session",
        a_dir.display()
    );
    let read = ask(&gw, &a, json!({"op": "read", "path": "/scratch/secret"}));
    assert_eq!(
        read["exists"], false,
        "a new session with the old id: {read}"
    );
}

#[test]
fn a_sandbox_past_its_memory_limit_is_killed_and_its_session_ends() {
    let probe = Probe::new();
    let gw = Gateway::start(&probe.config("memory_mb = 64"));
    let (hog, other) = (session_id("hog"), session_id("bystander"));
    ask(&gw, &other, json!({"op": "whoami"}));
    ask(&gw, &hog, json!({"op": "alloc", "mb": 8}));

    let r = gw.invoke(Some(&hog), &json!({"op": "alloc", "mb": 256}).to_string());
    assert_ne!(
        r.status,
        200,
        "256 MB in a 64 MB sandbox: {}",
        r.body_text()
    );
    assert!(
        eventually(Duration::from_secs(10), || gw.metrics().contains(
            r#"sessiongate_sessions_ended_total{reason="out_of_memory"} 1"#
        )),
        "{}",
        gw.metrics()
    );
    assert!(!gw.sessions().iter().any(|s| s["id"] == hog.as_str()));
    // Everyone else carries on, and the hog's id gets a fresh sandbox.
    ask(&gw, &other, json!({"op": "whoami"}));
    ask(&gw, &hog, json!({"op": "alloc", "mb": 8}));
}

#[test]
fn a_sandbox_cannot_start_more_than_max_pids_processes() {
    let probe = Probe::new();
    let gw = Gateway::start(&probe.config("max_pids = 16\negress = false"));
    let sid = session_id("forker");
    let out = ask(&gw, &sid, json!({"op": "spawn", "n": 40}));
    let spawned = out["spawned"].as_u64().unwrap();
    assert!(
        spawned < 16,
        "16 pids for everything, yet {spawned} children: {out}"
    );
    assert!(
        out["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{out}"
    );
    // The limit refuses new processes; it does not end the session.
    ask(&gw, &sid, json!({"op": "whoami"}));
}

/// What a gateway leaves on the host: processes running from its state dir, that dir's
/// entries, and its cgroups.
fn remains(gateway_pid: u32) -> (usize, usize, usize) {
    let state = format!("/tmp/sessiongate-{gateway_pid}");
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&state))
        })
        .count();
    let entries = std::fs::read_dir(&state)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name() != "sessiongate")
                .count()
        })
        .unwrap_or(0);
    let prefix = format!("sessiongate-{gateway_pid}-");
    let cgroups = walk_count(Path::new("/sys/fs/cgroup"), &prefix, 4);
    (procs, entries, cgroups)
}

fn walk_count(dir: &Path, prefix: &str, depth: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.filter_map(|e| e.ok()) {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_string_lossy().starts_with(prefix) {
            n += 1;
        } else if depth > 0 {
            n += walk_count(&e.path(), prefix, depth - 1);
        }
    }
    n
}

#[test]
fn sandbox_churn_leaves_nothing_behind() {
    // The reference agent (the gateway binary itself) in a sandbox, with a warm pool of 2.
    let mut gw = Gateway::start(
        "[sessions]\nsweep_interval_ms = 100\n[limits]\nnew_sessions_per_second = 1000\n\n[[runtimes]]\nname = \"default\"\n\
         [runtimes.backend]\nprovider = \"sandbox\"\nwarm_pool = 2\n",
    );
    let pid = gw.pid();
    let sessions = 120;
    std::thread::scope(|s| {
        for worker in 0..4 {
            let gw = &gw;
            s.spawn(move || {
                for i in 0..sessions / 4 {
                    let sid = session_id(&format!("churn-{worker}-{i}"));
                    let r = gw.invoke(Some(&sid), "{}");
                    assert_eq!(r.status, 200, "{}", r.body_text());
                    stop(gw, &sid);
                }
            });
        }
    });
    let m = gw.metrics();
    assert!(
        m.contains(&format!(
            "sessiongate_sessions_ended_total{{reason=\"stopped\"}} {sessions}"
        )),
        "{m}"
    );
    // What remains is the warm pool: two sandboxes, each with its dir and cgroups.
    assert!(
        eventually(Duration::from_secs(10), || {
            let (_, entries, _) = remains(pid);
            entries == 2
        }),
        "{:?}",
        remains(pid)
    );
    let (procs, _, cgroups) = remains(pid);
    assert!(procs <= 2 * 4, "only the warm pool's processes: {procs}");
    assert!(cgroups <= 2 * 3, "only the warm pool's cgroups: {cgroups}");
    gw.stop_with(libc::SIGTERM);
    assert!(
        eventually(Duration::from_secs(5), || remains(pid) == (0, 0, 0)),
        "after shutdown: {:?}",
        remains(pid)
    );
    assert!(!Path::new(&format!("/tmp/sessiongate-{pid}")).exists());
}

#[test]
fn all_three_faces_reach_a_sandboxed_reference_agent() {
    let gw = Gateway::start(
        "[[runtimes]]\nname = \"default\"\n[runtimes.backend]\nprovider = \"sandbox\"\n",
    );
    let init = mcp_call(&gw, &[], INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let sid = init.header(SESSION_HEADER).unwrap().to_owned();
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let call = mcp_call(&gw, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
    assert_eq!(call.status, 200, "{}", call.body_text());
    let instance = call.json()["result"]["structuredContent"]["instance"].clone();
    let http = gw.invoke(Some(&sid), "{}");
    assert_eq!(http.json()["instance"], instance, "one sandbox per session");
    let a2a = a2a_send(&gw, &sid, "hello");
    assert_eq!(a2a.status, 200, "{}", a2a.body_text());
    assert_eq!(a2a.json()["result"]["metadata"]["instance"], instance);
    assert!(
        gw.sessions()[0]["backend"]
            .as_str()
            .unwrap()
            .starts_with("sandbox ")
    );
}

/// This host's address on its default route (not loopback), without sending anything.
fn host_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9").unwrap();
    s.local_addr().unwrap().ip()
}

#[test]
fn a_sandbox_with_egress_reaches_the_network_but_not_the_hosts_loopback() {
    let probe = Probe::new();
    let gw = Gateway::start(&probe.config(""));
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sid = session_id("egress");
    let me = ask(&gw, &sid, json!({"op": "whoami"}));
    assert_eq!(me["interfaces"], json!(["lo", "tap0"]), "{me}");
    let out = ask(
        &gw,
        &sid,
        json!({"op": "connect_tcp", "host": host_address().to_string(), "port": port}),
    );
    assert_eq!(
        out["connected"],
        true,
        "egress to {}: {out}",
        host_address()
    );
    let lo = ask(
        &gw,
        &sid,
        json!({"op": "connect_tcp", "host": "127.0.0.1", "port": port}),
    );
    assert_eq!(lo["connected"], false, "the host's loopback: {lo}");
    let gw_lo = ask(
        &gw,
        &sid,
        json!({"op": "connect_tcp", "host": "10.0.2.2", "port": gw.admin.port()}),
    );
    assert_eq!(
        gw_lo["connected"], false,
        "the gateway's loopback admin port: {gw_lo}"
    );
    // Its network helper goes with it.
    let pid = gw.pid();
    let r = curl(&[
        "-X",
        "DELETE",
        &format!("http://{}/sessions/{sid}", gw.admin),
    ]);
    assert_eq!(r.status, 200);
    let slirps = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                    st.contains("(slirp4netns)")
                        && st
                            .rsplit(')')
                            .next()
                            .and_then(|r| r.split_whitespace().nth(1))
                            == Some(&pid.to_string())
                })
            })
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || slirps() == 0),
        "slirp4netns outlived its sandbox"
    );
}
