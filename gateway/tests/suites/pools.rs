//! Warm pools and per-runtime lifecycle settings.

use std::time::Duration;

use crate::common::*;

fn warm(gw: &Gateway) -> String {
    gw.metrics()
        .lines()
        .find(|l| l.starts_with("sessiongate_warm_backends{"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_warm_pool_serves_new_sessions_from_ready_backends_and_never_reuses_one() {
    let gw = Gateway::start(
        "[sessions]\nsweep_interval_ms = 100\n\n[[runtimes]]\nname = \"default\"\n\
         [runtimes.backend]\nwarm_pool = 2\n",
    );
    assert!(
        eventually(Duration::from_secs(10), || warm(&gw).ends_with(" 2")),
        "{}",
        warm(&gw)
    );
    let pooled = children(gw.pid());
    assert_eq!(pooled.len(), 2, "{pooled:?}");

    let sid = session_id("warm");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let used = gw.backend_pid(&sid).unwrap();
    assert!(
        pooled.contains(&used),
        "{used} was not one of the warm {pooled:?}"
    );
    // The pool refills in the background…
    assert!(eventually(Duration::from_secs(10), || children(gw.pid())
        .len()
        == 3));
    // …and a backend that served a session is destroyed with it, not returned.
    let r = curl(&[
        "-X",
        "DELETE",
        &format!("http://{}/sessions/{sid}", gw.admin),
    ]);
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(5), || !alive(used)));
    let after = children(gw.pid());
    assert!(!after.contains(&used) && after.len() == 2, "{after:?}");
    let next = session_id("warm-next");
    assert_eq!(gw.invoke(Some(&next), "{}").status, 200);
    assert_ne!(gw.backend_pid(&next), Some(used));
}

#[test]
fn a_runtimes_own_idle_timeout_overrides_the_global_one() {
    let gw = Gateway::start(
        r#"
[sessions]
idle_timeout_secs = 900
sweep_interval_ms = 100

[[runtimes]]
name = "default"

[[runtimes]]
name = "brief"
idle_timeout_secs = 1
"#,
    );
    let (kept, brief) = (session_id("kept"), session_id("brief"));
    assert_eq!(gw.invoke(Some(&kept), "{}").status, 200);
    let r = gw.post("/runtimes/brief/invocations", Some(&brief), "{}", &[]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        eventually(Duration::from_secs(10), || !gw
            .sessions()
            .iter()
            .any(|s| s["id"] == brief.as_str())),
        "the brief runtime's session outlived its 1 s idle timeout"
    );
    assert!(gw.sessions().iter().any(|s| s["id"] == kept.as_str()));
}
