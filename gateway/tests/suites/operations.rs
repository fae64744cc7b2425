//! Running the gateway: shutdown, config errors and reloads, versions and endpoints, metrics and
//! the access log.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

#[test]
fn shutdown_stops_every_spawned_backend() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut gw = Gateway::start("");
        let pids: Vec<u32> = (0..3)
            .map(|i| {
                let sid = session_id(&format!("down{i}"));
                assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
                gw.backend_pid(&sid).unwrap()
            })
            .collect();
        let status = gw.stop_with(signal);
        assert!(status.success(), "exit {status:?} on signal {signal}");
        for pid in pids {
            assert!(!alive(pid), "backend {pid} survived signal {signal}");
        }
    }
}

#[test]
fn shutdown_lets_an_in_flight_request_finish() {
    let mut gw = Gateway::start("");
    let sid = session_id("drain");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let pid = gw.pid();
    std::thread::scope(|s| {
        let gw_ref = &gw;
        let slow = s.spawn(move || gw_ref.invoke(Some(&sid), r#"{"sleep_ms":1000}"#));
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let r = slow.join().unwrap();
        assert_eq!(
            r.status,
            200,
            "the in-flight request was cut: {}",
            r.body_text()
        );
    });
    assert!(gw.stop_with(libc::SIGTERM).success());
}

#[test]
fn broken_config_is_refused_with_its_key_path() {
    let dir = TempDir::new();
    let bad = dir.write(
        "bad.toml",
        "[sessions]\nidle_timeout_secs = 0\n[[runtimes]]\nname = \"x\"\n[runtimes.backend]\nprovider = \"vm\"\n",
    );
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sessions.idle_timeout_secs"), "{err}");
    assert!(err.contains("runtimes[0].backend.provider"), "{err}");

    let typo = dir.write("typo.toml", "[limits]\nmax_payload = 5\n");
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&typo)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits.max_payload (line 2)"), "{err}");

    // The gateway refuses to start on it, with the same report.
    let port = free_port().to_string();
    let out = Command::new(bin())
        .arg("--config")
        .arg(&bad)
        .args(["--admin", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtimes[0].backend.provider"));

    let good = dir.write(
        "good.toml",
        "[limits]\nmax_payload_bytes = 5\n[[runtimes]]\nname = \"default\"\n",
    );
    let out = Command::new(bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn versions_and_endpoints_pick_the_backend_of_new_sessions_only() {
    let version = |n: u32| {
        format!(
            "[[runtimes.versions]]\nversion = {n}\n[runtimes.versions.backend]\nargs = [\"agent\", \"--http\", \"{{http}}\", \"--mcp\", \"{{mcp}}\", \"--a2a\", \"{{a2a}}\", \"--label\", \"v{n}\"]\n"
        )
    };
    let gw = Gateway::start(&format!(
        "[limits]\nnew_sessions_per_second = 1000\n[[runtimes]]\nname = \"agent\"\n{}{}\
         [[runtimes.endpoints]]\nname = \"stable\"\nversion = 1\n\
         [[runtimes.endpoints]]\nname = \"canary\"\nsplit = [{{ version = 1, weight = 1 }}, {{ version = 2, weight = 1 }}]\n",
        version(1),
        version(2)
    ));
    let label = |path: &str, sid: &str| {
        let r = gw.post(path, Some(sid), "{}", &[]);
        assert_eq!(r.status, 200, "{path}: {}", r.body_text());
        r.json()["label"].as_str().unwrap().to_owned()
    };
    // DEFAULT (the container path, or no qualifier) is the highest version.
    assert_eq!(label("/invocations", &session_id("d")), "v2");
    assert_eq!(label("/runtimes/agent/invocations", &session_id("d")), "v2");
    // A pinned endpoint; the session stays on its version whatever qualifier comes later.
    let pinned = session_id("pinned");
    assert_eq!(
        label("/runtimes/agent/invocations?qualifier=stable", &pinned),
        "v1"
    );
    assert_eq!(label("/runtimes/agent/invocations", &pinned), "v1");
    assert_eq!(label("/invocations", &pinned), "v1");
    // A 50/50 canary sends new sessions to both.
    let seen: std::collections::HashSet<String> = (0..16)
        .map(|i| {
            label(
                "/runtimes/agent/invocations?qualifier=canary",
                &session_id(&format!("c{i}")),
            )
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    // An unknown qualifier is a missing resource.
    let r = gw.post(
        "/runtimes/agent/invocations?qualifier=nope",
        Some(&session_id("x")),
        "{}",
        &[],
    );
    assert_eq!(r.status, 404);
    let versions: Vec<_> = gw.sessions().iter().map(|s| s["version"].clone()).collect();
    assert!(versions.iter().all(|v| v == 1 || v == 2), "{versions:?}");
}

#[test]
fn config_reloads_apply_to_new_sessions_and_a_broken_file_changes_nothing() {
    let gw = Gateway::start("[limits]\nmax_active_sessions = 10\n");
    let kept = session_id("kept");
    let instance = gw.invoke(Some(&kept), "{}").json()["instance"].clone();

    // A lower quota and a new runtime.
    gw.rewrite_config(
        "[limits]\nmax_active_sessions = 1\n[[runtimes]]\nname = \"default\"\n[[runtimes]]\nname = \"extra\"\n",
    );
    gw.wait_reloads("ok", 1);
    assert_eq!(gw.invoke(Some(&session_id("new")), "{}").status, 402);
    assert_eq!(
        gw.invoke(Some(&kept), "{}").json()["instance"],
        instance,
        "the session kept its backend"
    );
    curl(&[
        "-X",
        "DELETE",
        &format!("http://{}/sessions/{kept}", gw.admin),
    ]);
    let extra = session_id("extra");
    assert_eq!(
        gw.post("/runtimes/extra/invocations", Some(&extra), "{}", &[])
            .status,
        200
    );

    // A broken file is refused with its key path; the running config stays.
    gw.rewrite_config("[limits]\nmax_active_sessions = \"many\"\n");
    gw.wait_reloads("error", 1);
    assert_eq!(
        gw.post("/runtimes/extra/invocations", Some(&extra), "{}", &[])
            .status,
        200
    );
    assert_eq!(gw.invoke(Some(&session_id("still-1")), "{}").status, 402);

    // SIGHUP reloads as well.
    gw.rewrite_config("[limits]\nmax_active_sessions = 10\n[[runtimes]]\nname = \"default\"\n");
    gw.wait_reloads("ok", 2);
    unsafe { libc::kill(gw.pid() as i32, libc::SIGHUP) };
    gw.wait_reloads("ok", 3);
    assert_eq!(gw.invoke(Some(&session_id("room-again")), "{}").status, 200);
    // The removed runtime is gone for new requests, and its idle session ends.
    assert_eq!(
        gw.post("/runtimes/extra/invocations", Some(&extra), "{}", &[])
            .status,
        404
    );
    assert!(eventually(Duration::from_secs(5), || gw
        .sessions()
        .iter()
        .all(|s| s["runtime"] != "extra")));
}

#[test]
fn metrics_have_bounded_labels_and_the_access_log_is_json_lines() {
    let gw = Gateway::start_with(
        "",
        &[
            ("RUST_LOG", "warn,sessiongate::access=info"),
            ("SESSIONGATE_LOG_FORMAT", "json"),
        ],
    );
    let sid = session_id("observed");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let m = gw.metrics();
    for want in [
        r#"sessiongate_requests_total{listener="http",runtime="default",route="invocations",status="200"} 2"#,
        "sessiongate_upstream_connect_seconds_bucket",
        r#"sessiongate_placement_duration_seconds_bucket{provider="process",result="ok""#,
        r#"sessiongate_placements_total{provider="process",result="ok"} 1"#,
    ] {
        assert!(m.contains(want), "missing {want}:\n{m}");
    }
    assert!(!m.contains(&sid), "a session id leaked into a label");
    assert!(eventually(Duration::from_secs(3), || gw
        .metrics()
        .contains(r#"sessiongate_sessions{state="idle"} 1"#)));
    let lines: Vec<serde_json::Value> = gw
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "sessiongate::access")
        // The start-up check probed every face once; those lines are not this test's.
        .filter(|v| v["fields"]["route"] == "invocations")
        .collect();
    assert_eq!(lines.len(), 2, "{}", gw.log());
    let f = &lines[0]["fields"];
    assert_eq!(f["session"], sid.as_str());
    assert_eq!(f["principal"], "anonymous");
    assert_eq!(f["status"], 200);
    assert!(f["request_id"].as_str().unwrap().len() >= 32);
    assert!(f["micros"].as_u64().is_some());
}
