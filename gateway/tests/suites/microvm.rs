//! The `microvm` provider with the guest `scripts/build-guest` makes (`make test` builds it
//! first; `SESSIONGATE_GUEST_DIR` says where). On a host without usable KVM the guests run under
//! software emulation, as they do in CI.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

pub(crate) fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("SESSIONGATE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/guest"));
    assert!(
        dir.join("vmlinux").exists() && dir.join("initrd.cpio").exists(),
        "no guest in {}: run scripts/build-guest --out {0} (make test does)",
        dir.display()
    );
    dir
}

fn config(extra: &str) -> String {
    let g = guest_dir();
    format!(
        r#"
[sessions]
sweep_interval_ms = 200

[[runtimes]]
name = "default"
[runtimes.backend]
provider = "microvm"
kernel = "{}"
initrd = "{}"
ready_timeout_ms = 180000
{extra}
"#,
        g.join("vmlinux").display(),
        g.join("initrd.cpio").display()
    )
}

fn qemu_pid(gw: &Gateway, sid: &str) -> u32 {
    gw.sessions()
        .iter()
        .find(|s| s["id"] == sid)
        .and_then(|s| {
            s["backend"]
                .as_str()?
                .strip_prefix("microvm ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no microvm session {sid}: {:?}", gw.sessions()))
}

#[test]
fn microvm_sessions_answer_from_their_own_guest_and_leave_no_qemu_behind() {
    let mut gw = Gateway::start(&config(""));
    let (a, b) = (session_id("vm-a"), session_id("vm-b"));

    // A boots the template (and is restored from it), B is restored from the same snapshot.
    let first = gw.invoke(Some(&a), r#"{"prompt": "hello"}"#);
    assert_eq!(first.status, 200, "{}", first.body_text());
    assert_eq!(first.json()["session_id"], a.as_str());
    assert_eq!(first.json()["echo"]["prompt"], "hello");
    let second = gw.invoke(Some(&b), "{}");
    assert_eq!(second.status, 200, "{}", second.body_text());
    // Clones of one snapshot, yet each drew its own id from its reseeded kernel generator.
    assert_ne!(first.json()["instance"], second.json()["instance"]);
    let (pa, pb) = (qemu_pid(&gw, &a), qemu_pid(&gw, &b));
    assert_ne!(pa, pb);
    assert!(alive(pa) && alive(pb));
    // Sticky: A's next request reaches A's guest, on every face.
    let again = gw.invoke(Some(&a), "{}");
    assert_eq!(again.json()["instance"], first.json()["instance"]);
    let init = mcp_call(&gw, &[format!("{SESSION_HEADER}: {a}")], INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let call = mcp_call(&gw, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
    assert_eq!(
        call.json()["result"]["structuredContent"]["instance"],
        first.json()["instance"]
    );
    // The guest's agent card points clients back at the gateway (AGENTCORE_RUNTIME_URL reaches
    // the agent through the kernel command line).
    let card = curl(&[
        "-H",
        &format!("{SESSION_HEADER}: {a}"),
        &gw.url(gw.a2a, "/.well-known/agent-card.json"),
    ]);
    assert_eq!(
        card.json()["url"],
        format!("http://{}/", gw.a2a),
        "{}",
        card.body_text()
    );
    let a2a = a2a_send(&gw, &a, "hello");
    assert_eq!(
        a2a.json()["result"]["metadata"]["instance"],
        first.json()["instance"]
    );
    let m = gw.metrics();
    assert!(
        m.contains("sessiongate_microvm_accel{")
            && (m.contains("accel=\"tcg\"") || m.contains("accel=\"kvm\"")),
        "{m}"
    );

    // Ending a session ends its VM.
    let r = curl(&["-X", "DELETE", &format!("http://{}/sessions/{a}", gw.admin)]);
    assert_eq!(r.status, 200);
    assert!(
        eventually(Duration::from_secs(10), || !alive(pa)),
        "qemu {pa} outlived its session"
    );
    // A guest that dies ends its session; the next request gets a fresh guest.
    unsafe { libc::kill(pb as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(10), || gw
        .metrics()
        .contains(
            r#"sessiongate_sessions_ended_total{reason="backend_exited"} 1"#
        )));
    let fresh = gw.invoke(Some(&b), "{}");
    assert_eq!(fresh.status, 200, "{}", fresh.body_text());
    let pc = qemu_pid(&gw, &b);

    let gateway_pid = gw.pid();
    gw.stop_with(libc::SIGTERM);
    assert!(
        eventually(Duration::from_secs(10), || !alive(pc)),
        "qemu {pc} outlived the gateway"
    );
    let state = std::env::temp_dir().join(format!("sessiongate-{gateway_pid}"));
    assert!(!state.exists(), "{} remains", state.display());
}

/// A runtime whose guests' agent answers network probes (`connect`, `udp`).
fn probing(extra: &str) -> String {
    config(&format!(
        "env = {{ SESSIONGATE_AGENT_NET_PROBES = \"1\" }}\n{extra}"
    ))
}

/// Asks session `sid`'s guest to try `probe` and returns what it saw.
fn probe(gw: &Gateway, sid: &str, probe: Value) -> Value {
    let r = gw.invoke(Some(sid), &probe.to_string());
    assert_eq!(r.status, 200, "{probe}: {}", r.body_text());
    let seen = r.json()["probe"].clone();
    assert!(seen.get("error").is_none(), "{probe}: {seen}");
    seen
}

fn connects(gw: &Gateway, sid: &str, addr: &str) -> Value {
    probe(gw, sid, json!({ "connect": addr }))["connect"].clone()
}

fn udp_answered(gw: &Gateway, sid: &str, addr: &str) -> Value {
    probe(gw, sid, json!({ "udp": addr }))["udp"].clone()
}

/// This host's address on its default route (not loopback), without sending anything.
fn host_address() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9").unwrap();
    s.local_addr().unwrap().ip()
}

/// A UDP echo on `ip`, answering every datagram until the test process ends.
fn udp_echo(ip: &str) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).unwrap();
    let port = s.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(b"echo", from);
        }
    });
    port
}

/// The host-side loopback port the gateway forwards to session `sid`'s guest.
fn forwarded_port(gw: &Gateway, sid: &str) -> u16 {
    let s = gw.sessions();
    let http = s
        .iter()
        .find(|s| s["id"] == sid)
        .and_then(|s| s["http"].as_str())
        .unwrap_or_else(|| panic!("no session {sid}: {s:?}"));
    http.rsplit(':').next().unwrap().parse().unwrap()
}

/// passt processes the gateway started (one per live guest with egress).
fn passts_of(gateway: u32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                // Debian's passt execs `passt.avx2` where the CPU has AVX2.
                (st.contains("(passt)") || st.contains("(passt.avx2)"))
                    && st
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        == Some(&gateway.to_string())
            })
        })
        .count()
}

/// QEMU's own user networking maps the guest's 10.0.2.2 to the host's 127.0.0.1: a guest could
/// list `/sessions` on the admin API and call another session's backend on its forwarded port.
#[test]
fn microvm_guests_reach_the_network_but_never_the_hosts_loopback() {
    let gw = Gateway::start(&probing(""));
    let (a, b) = (session_id("vm-net-a"), session_id("vm-net-b"));
    for sid in [&a, &b] {
        let r = gw.invoke(Some(sid), "{}");
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    let b_port = forwarded_port(&gw, &b);
    let udp = udp_echo("127.0.0.1");
    for target in [
        format!("10.0.2.2:{}", gw.admin.port()),
        format!("10.0.2.2:{b_port}"),
        format!("10.0.2.2:{}", gw.http.port()),
        format!("10.0.2.3:{}", gw.admin.port()),
        format!("{}:{}", host_address(), gw.admin.port()),
    ] {
        let c = connects(&gw, &a, &target);
        assert_eq!(
            c["connected"], false,
            "the host's loopback via {target}: {c}"
        );
    }
    let u = udp_answered(&gw, &a, &format!("10.0.2.2:{udp}"));
    assert_eq!(u["answered"], false, "UDP to the host's loopback: {u}");

    // Egress: the host's own non-loopback address stands in for the outside world (this
    // machine has no other); a listener on 0.0.0.0 answers there, and on 127.0.0.1 too.
    let outside = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    let c = connects(&gw, &a, &format!("{}:{port}", host_address()));
    assert_eq!(c["connected"], true, "egress to {}: {c}", host_address());
    let c = connects(&gw, &a, &format!("10.0.2.2:{port}"));
    assert_eq!(c["connected"], false, "the same listener via loopback: {c}");
    let echo = udp_echo("0.0.0.0");
    let u = udp_answered(&gw, &a, &format!("{}:{echo}", host_address()));
    assert_eq!(u["answered"], true, "UDP egress: {u}");

    // One passt per guest; each goes with its session.
    let gateway = gw.pid();
    assert_eq!(passts_of(gateway), 2, "one passt per live guest");
    for sid in [&a, &b] {
        let r = curl(&[
            "-X",
            "DELETE",
            &format!("http://{}/sessions/{sid}", gw.admin),
        ]);
        assert_eq!(r.status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || passts_of(gateway) == 0),
        "passt outlived its guest"
    );
}

#[test]
fn microvm_guests_without_egress_reach_nothing_but_their_forwarded_ports() {
    let gw = Gateway::start(&probing("egress = false"));
    let a = session_id("vm-noegress");
    let r = gw.invoke(Some(&a), r#"{"prompt": "in"}"#);
    assert_eq!(
        r.status,
        200,
        "the gateway's way in still works: {}",
        r.body_text()
    );
    assert_eq!(r.json()["echo"]["prompt"], "in");
    let outside = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = outside.local_addr().unwrap().port();
    for target in [
        format!("{}:{port}", host_address()),
        format!("10.0.2.2:{port}"),
        format!("10.0.2.2:{}", gw.admin.port()),
        format!("10.0.2.2:{}", gw.http.port()),
    ] {
        let c = connects(&gw, &a, &target);
        assert_eq!(c["connected"], false, "{target} without egress: {c}");
    }
    for ip in ["127.0.0.1", "0.0.0.0"] {
        let echo = udp_echo(ip);
        for target in [
            format!("10.0.2.2:{echo}"),
            format!("{}:{echo}", host_address()),
        ] {
            let u = udp_answered(&gw, &a, &target);
            assert_eq!(u["answered"], false, "UDP to {target} without egress: {u}");
        }
    }
    assert_eq!(passts_of(gw.pid()), 0, "no passt without egress");
}

#[test]
fn a_microvm_session_keeps_its_guest_across_a_graceful_upgrade() {
    let dir = TempDir::new();
    let old = super::upgrade::start_upgradable(&dir, &config(""));
    let old_pid = old.pid();
    let sid = session_id("vm-upgrade");
    let first = old.invoke(Some(&sid), "{}");
    assert_eq!(first.status, 200, "{}", first.body_text());
    let qemu = qemu_pid(&old, &sid);
    let new = super::upgrade::upgrade(&old.args(), &dir, 1, old_pid, || old.log());
    assert_eq!(qemu_pid(&old, &sid), qemu, "the guest moved");
    let again = old.invoke(Some(&sid), "{}");
    assert_eq!(again.status, 200, "{}", again.body_text());
    assert_eq!(again.json()["instance"], first.json()["instance"]);
    unsafe { libc::kill(new.pid() as i32, libc::SIGTERM) };
    assert!(
        eventually(Duration::from_secs(30), || !alive(qemu) && !alive(old_pid)),
        "the guest or its keeper is left:\n{}",
        old.log()
    );
}
