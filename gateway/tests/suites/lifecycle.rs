//! A session's life: backends that fail, die or hang, idle and lifetime ends, stopping, static pools.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn backend_errors_become_424_without_the_backends_body() {
    let gw = Gateway::start("");
    let r = gw.invoke(Some(&session_id("err")), r#"{"status":500}"#);
    assert_eq!(r.status, 424);
    assert_eq!(r.header("x-amzn-ErrorType"), Some("RuntimeClientError"));
    let text = r.body_text();
    assert!(!text.contains("requested"), "backend detail leaked: {text}");
    assert_eq!(r.json()["message"], "Received error (500) from runtime");
}

#[test]
fn a_dead_backend_is_replaced_by_a_fresh_one_for_the_next_request() {
    let gw = Gateway::start("[sessions]\nsweep_interval_ms = 100\n");
    let sid = session_id("dies");
    let first = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let pid = gw.backend_pid(&sid).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Whether the sweep or a failing request notices first, the session is gone soon and the
    // next request gets a new backend under the same id.
    let mut next = None;
    assert!(eventually(Duration::from_secs(10), || {
        let r = gw.invoke(Some(&sid), "{}");
        if r.status == 200 {
            next = Some(r.json()["instance"].clone());
            true
        } else {
            assert_eq!(r.status, 424, "{}", r.body_text());
            false
        }
    }));
    assert_ne!(next.unwrap(), first);
}

#[test]
fn a_backend_dying_mid_stream_ends_the_stream_and_the_session() {
    // A slow sweep, so that it is the failed stream that ends the session.
    let gw = Gateway::start("[sessions]\nsweep_interval_ms = 60000\n");
    let sid = session_id("midstream");
    let first = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let pid = gw.backend_pid(&sid).unwrap();
    let url = gw.url(gw.http, "/invocations");
    let h = format!("{SESSION_HEADER}: {sid}");
    let mut child = Command::new("curl")
        .args(["-s", "-N", "--max-time", "30", "-X", "POST", &url, "-H", &h])
        .args(["-d", r#"{"stream":100,"interval_ms":100}"#])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut events = 0;
    for line in lines.by_ref() {
        if line.unwrap().starts_with("data: ") {
            events += 1;
            if events == 2 {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                break;
            }
        }
    }
    let rest = lines
        .filter(|l| l.as_ref().is_ok_and(|l| l.starts_with("data: ")))
        .count();
    child.wait().unwrap();
    assert!(rest < 98, "the stream went on after its backend died");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the stream hung after its backend died"
    );
    assert!(eventually(Duration::from_secs(5), || gw
        .sessions()
        .is_empty()));
    let next = gw.invoke(Some(&sid), "{}");
    assert_eq!(next.status, 200);
    assert_ne!(next.json()["instance"], first);
}

#[test]
fn idle_sessions_end_and_their_process_stops() {
    let gw = Gateway::start("[sessions]\nidle_timeout_secs = 1\nsweep_interval_ms = 100\n");
    let sid = session_id("idle");
    let first = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let pid = gw.backend_pid(&sid).unwrap();
    assert!(alive(pid));
    assert!(eventually(Duration::from_secs(10), || gw
        .sessions()
        .is_empty()));
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "backend {pid} outlived its session"
    );
    let m = gw.metrics();
    assert!(
        m.contains(r#"sessiongate_sessions_ended_total{reason="idle"} 1"#),
        "{m}"
    );
    // The same id later starts a fresh session.
    let again = gw.invoke(Some(&sid), "{}");
    assert_eq!(again.status, 200);
    assert_ne!(again.json()["instance"], first);
}

#[test]
fn a_backend_reporting_healthy_busy_keeps_its_session_alive() {
    let gw = Gateway::start("[sessions]\nidle_timeout_secs = 1\nsweep_interval_ms = 100\n");
    let sid = session_id("bg");
    assert_eq!(
        gw.invoke(Some(&sid), r#"{"background_ms":3000}"#).status,
        200
    );
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(
        gw.sessions().len(),
        1,
        "ended while the backend was HealthyBusy"
    );
    assert!(eventually(Duration::from_secs(10), || gw
        .sessions()
        .is_empty()));
}

#[test]
fn max_lifetime_ends_even_a_busy_session() {
    let gw = Gateway::start(
        "[sessions]\nidle_timeout_secs = 1\nmax_lifetime_secs = 2\nsweep_interval_ms = 100\n",
    );
    let sid = session_id("old");
    assert_eq!(
        gw.invoke(Some(&sid), r#"{"background_ms":60000}"#).status,
        200
    );
    assert!(eventually(Duration::from_secs(10), || gw
        .sessions()
        .is_empty()));
    assert!(gw.metrics().contains(r#"reason="max_lifetime""#));
}

#[test]
fn admin_and_stop_runtime_session_end_sessions() {
    let gw = Gateway::start("");
    let (a, b) = (session_id("del"), session_id("stop"));
    gw.invoke(Some(&a), "{}");
    gw.invoke(Some(&b), "{}");
    let pid_a = gw.backend_pid(&a).unwrap();
    let r = curl(&["-X", "DELETE", &format!("http://{}/sessions/{a}", gw.admin)]);
    assert_eq!(r.status, 200);
    assert!(eventually(Duration::from_secs(5), || !alive(pid_a)));
    let r = curl(&["-X", "DELETE", &format!("http://{}/sessions/{a}", gw.admin)]);
    assert_eq!(r.status, 404);
    // StopRuntimeSession on the AWS face.
    let url = gw.url(gw.http, "/runtimes/default/stopruntimesession");
    let h = format!("{SESSION_HEADER}: {b}");
    let r = curl(&["-X", "POST", &url, "-H", &h, "-d", "{}"]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let r = curl(&["-X", "POST", &url, "-H", &h, "-d", "{}"]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("ResourceNotFoundException")
    );
    assert!(gw.sessions().is_empty());
}

#[test]
fn stopping_a_session_ends_its_requests_in_flight_at_once_with_a_clear_error() {
    let gw = Gateway::start("");
    let sid = session_id("stop-inflight");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let pid = gw.backend_pid(&sid).unwrap();
    let started = std::time::Instant::now();
    let slow = std::thread::scope(|s| {
        let slow = s.spawn(|| gw.invoke(Some(&sid), r#"{"sleep_ms": 20000}"#));
        assert!(eventually(Duration::from_secs(5), || gw
            .sessions()
            .iter()
            .any(|s| s["inflight"] == 1)));
        let url = gw.url(gw.http, "/runtimes/default/stopruntimesession");
        let h = format!("{SESSION_HEADER}: {sid}");
        assert_eq!(
            curl(&["-X", "POST", &url, "-H", &h, "-d", "{}"]).status,
            200
        );
        slow.join().unwrap()
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the request waited for its backend to finish"
    );
    assert_eq!(slow.status, 409, "{}", slow.body_text());
    assert_eq!(
        slow.header("x-amzn-ErrorType"),
        Some("RetryableConflictException")
    );
    assert!(slow.json()["message"].as_str().unwrap().contains("stopped"));
    assert!(!alive(pid), "the backend outlived StopRuntimeSession");
    // The same id starts a fresh session.
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    assert_ne!(gw.backend_pid(&sid), Some(pid));
}

#[test]
fn static_pool_gives_each_session_its_own_endpoint() {
    let agents = [Agent::start(), Agent::start()];
    let config = format!(
        "[[runtimes]]\nname = \"pool\"\n[runtimes.backend]\nprovider = \"static\"\nendpoints = [{}, {}]\n",
        agents[0].toml_endpoint(),
        agents[1].toml_endpoint()
    );
    let gw = Gateway::start(&config);
    let (a, b) = (session_id("s1"), session_id("s2"));
    let ia = gw.invoke(Some(&a), "{}").json()["instance"].clone();
    let ib = gw.invoke(Some(&b), "{}").json()["instance"].clone();
    assert_ne!(ia, ib);
    assert_eq!(gw.invoke(Some(&a), "{}").json()["instance"], ia);
    assert_eq!(
        a2a_send(&gw, &b, "x").json()["result"]["metadata"]["instance"],
        ib
    );
    // Both endpoints are taken: a third session waits for capacity.
    let r = gw.invoke(Some(&session_id("s3")), "{}");
    assert_eq!(r.status, 402, "{}", r.body_text());
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("ServiceQuotaExceededException")
    );
    // Ending a session frees its endpoint.
    curl(&["-X", "DELETE", &format!("http://{}/sessions/{a}", gw.admin)]);
    assert_eq!(
        gw.invoke(Some(&session_id("s4")), "{}").json()["instance"],
        ia
    );
    // Deployed runtimes are not the gateway's to stop.
    for agent in &agents {
        assert!(alive(agent.child.id()));
    }
}

#[test]
fn a_static_backend_that_stops_answering_ping_ends_its_session() {
    let mut agent = Agent::start();
    let gw = Gateway::start(&format!(
        "[sessions]\nsweep_interval_ms = 100\nhealth_check_interval_ms = 200\nhealth_check_failures = 2\n\
         [[runtimes]]\nname = \"pool\"\n[runtimes.backend]\nprovider = \"static\"\nendpoints = [{}]\n",
        agent.toml_endpoint()
    ));
    let sid = session_id("health");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    // Healthy backends keep their sessions across many checks.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(gw.sessions().len(), 1);
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(eventually(Duration::from_secs(5), || gw
        .sessions()
        .is_empty()));
    assert!(
        gw.metrics()
            .contains(r#"sessiongate_sessions_ended_total{reason="unhealthy"} 1"#)
    );
}
