//! The `microvm` provider with the guest `scripts/build-guest` makes (`make test` builds it
//! first; `SESSIONGATE_GUEST_DIR` says where). On a host without usable KVM the guests run under
//! software emulation, as they do in CI.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

fn guest_dir() -> PathBuf {
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
    let init = crate::mcp_call(&gw, &[format!("{SESSION_HEADER}: {a}")], crate::INITIALIZE);
    assert_eq!(init.status, 200, "{}", init.body_text());
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let call = crate::mcp_call(
        &gw,
        &[format!("Mcp-Session-Id: {mcp_id}")],
        crate::ECHO_CALL,
    );
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
    let a2a = crate::a2a_send(&gw, &a, "hello");
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
