//! Backends that die, hang or go quiet, and a gateway pushed to its descriptor limit: what
//! clients see, and that no session is lost for the gateway's own trouble.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn a_hung_backend_with_a_request_in_flight_is_ended_by_its_health_checks() {
    let gw = Gateway::start(
        "[sessions]\nsweep_interval_ms = 100\nhealth_check_interval_ms = 200\n\
         health_check_failures = 3\n",
    );
    let sid = session_id("hung");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let pid = gw.backend_pid(&sid).unwrap();
    let waiting = {
        let url = gw.url(gw.http, "/invocations");
        let h = format!("{SESSION_HEADER}: {sid}");
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = curl(&["-X", "POST", &url, "-H", &h, "-d", r#"{"sleep_ms":60000}"#]);
            (r, start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let (r, took) = waiting.join().unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(r.status, 424, "{}", r.body_text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("health checks")
    );
    // About interval × failures (plus the ping timeouts), never the 15-minute request timeout.
    assert!(
        took < Duration::from_secs(15),
        "the request waited {took:?}"
    );
    assert!(!gw.sessions().iter().any(|s| s["id"] == sid.as_str()));
}

#[test]
fn a_backend_that_died_idle_is_replaced_without_failing_the_next_request() {
    // A slow sweep: it is the next request that finds the backend gone.
    let gw = Gateway::start("[sessions]\nsweep_interval_ms = 60000\n");
    let sid = session_id("died-idle");
    let first = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let pid = gw.backend_pid(&sid).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || !alive(pid)));
    let r = gw.invoke(Some(&sid), "{}");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header(SESSION_HEADER), Some(sid.as_str()));
    assert_ne!(r.json()["instance"], first);
}

#[test]
fn a_connection_flood_at_the_descriptor_limit_loses_no_session() {
    // 512 descriptors: the cap leaves room for backends and health checks.
    let gw = Gateway::start_with_fd_limit(
        "[sessions]\nsweep_interval_ms = 100\nhealth_check_interval_ms = 100\n",
        512,
    );
    let sids: Vec<String> = (0..3).map(|i| session_id(&format!("flood{i}"))).collect();
    let instances: Vec<_> = sids
        .iter()
        .map(|s| gw.invoke(Some(s), "{}").json()["instance"].clone())
        .collect();
    let health = curl(&[&format!("http://{}/healthz", gw.admin)]).json();
    let cap = health["max_connections"].as_u64().unwrap() as usize;
    assert!(cap < 512, "cap {cap}");
    // Hold every place, and then some: the ones over the cap are refused at once.
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..cap + 100 {
        let mut s = TcpStream::connect(gw.http).unwrap();
        let _ = s.write_all(b"GET /ping HTTP/1.1\r\n");
        flood.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    for s in &mut flood {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 12];
        if matches!(s.peek(&mut b), Ok(n) if n >= 12 && &b[..12] == b"HTTP/1.1 503") {
            refused += 1;
        }
    }
    assert!(refused >= 100, "refused {refused} of {}", flood.len());
    // The health checks kept running through it: give them a few rounds.
    std::thread::sleep(Duration::from_secs(1));
    drop(flood);
    for (sid, instance) in sids.iter().zip(&instances) {
        let r = gw.invoke(Some(sid), "{}");
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert_eq!(&r.json()["instance"], instance, "session {sid} was lost");
    }
}

#[test]
fn a_warning_repeated_per_request_is_rate_limited_with_a_summary() {
    let gw = Gateway::start_with(
        "[limits]\nnew_sessions_per_second = 1000\n\
         [[runtimes]]\nname = \"default\"\n[runtimes.backend]\nprovider = \"process\"\n\
         command = \"/bin/false\"\n",
        &[("RUST_LOG", "warn")],
    );
    for _ in 0..60 {
        assert_eq!(gw.invoke(None, "{}").status, 424);
    }
    let count = |log: &str| log.matches("backend placement failed").count();
    let log = gw.log();
    assert!(count(&log) <= 20, "{} lines", count(&log));
    assert!(count(&log) >= 1);
    assert!(
        eventually(Duration::from_secs(15), || gw
            .log()
            .contains("repeated log lines suppressed")),
        "no summary:\n{}",
        gw.log()
    );
}
