//! Deadlines and caps on client connections, proven with raw sockets: slowloris heads, idle
//! keep-alive connections, stalled and trickling bodies, connection floods, pipelining and
//! malformed framing. Every case is bounded: the deadlines here are a second or two.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;

const SHORT: &str = "
[limits]
header_timeout_secs = 1
keepalive_timeout_secs = 1
body_timeout_secs = 1
min_body_bytes_per_sec = 1000
";

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the peer closes (or 10 s pass); returns what came and how long it took.
fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

#[test]
fn a_head_that_never_ends_is_answered_408_and_closed() {
    let gw = Gateway::start(SHORT);
    // Slowloris: a header line every 300 ms, never the blank line.
    let mut slow: Vec<TcpStream> = (0..20).map(|_| connect(gw.http)).collect();
    let start = Instant::now();
    let mut closed = vec![false; slow.len()];
    while start.elapsed() < Duration::from_secs(4) && closed.contains(&false) {
        for (i, s) in slow.iter_mut().enumerate() {
            if !closed[i] {
                let line = if start.elapsed() < Duration::from_millis(100) {
                    "POST /invocations HTTP/1.1\r\n".to_owned()
                } else {
                    format!("X-Pad-{i}: {}\r\n", start.elapsed().as_millis())
                };
                closed[i] = s.write_all(line.as_bytes()).is_err();
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        // Meanwhile a normal client is served at once.
        assert_eq!(gw.invoke(None, "{}").status, 200);
    }
    for s in &mut slow {
        let (answer, _) = read_to_close(s);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("RequestTimeoutException"), "{answer:?}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "slowloris connections held for {:?}",
        start.elapsed()
    );
}

#[test]
fn the_next_head_on_a_kept_alive_connection_has_its_own_deadline() {
    let gw = Gateway::start("[limits]\nheader_timeout_secs = 1\nkeepalive_timeout_secs = 30\n");
    let mut s = connect(gw.http);
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // The second head starts, then trickles a line every 300 ms, never ending.
    let start = Instant::now();
    s.write_all(b"POST /invocations HTTP/1.1\r\n").unwrap();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(300));
        i += 1;
        if s.write_all(format!("X-Pad-{i}: {i}\r\n").as_bytes())
            .is_err()
        {
            break;
        }
    }
    let (answer, _) = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the trickling head was held for {:?}",
        start.elapsed()
    );
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    let gw = Gateway::start(SHORT);
    let mut s = connect(gw.http);
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, took) = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(took < Duration::from_secs(5), "kept open {took:?}");
    // A connection that never sends a byte is closed by the head deadline.
    let mut quiet = connect(gw.http);
    let (answer, took) = read_to_close(&mut quiet);
    assert!(
        took < Duration::from_secs(5),
        "kept open {took:?}: {answer:?}"
    );
}

#[test]
fn a_stalled_or_trickling_body_is_a_408_and_its_session_goes_idle() {
    let gw = Gateway::start(SHORT);
    let sid = session_id("stall");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let head = format!(
        "POST /invocations HTTP/1.1\r\nHost: x\r\n{SESSION_HEADER}: {sid}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    // Stalled: ten bytes, then nothing.
    let mut s = connect(gw.http);
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(b"{\"pad\":\"xx").unwrap();
    let (answer, took) = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Trickling: a byte every 200 ms never trips the gap timer, but the rate is far too low.
    let mut s = connect(gw.http);
    s.write_all(head.as_bytes()).unwrap();
    let start = Instant::now();
    let mut answered = false;
    while start.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"x").is_err() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        s.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        let readable = matches!(s.peek(&mut probe), Ok(n) if n > 0);
        s.set_nonblocking(false).unwrap();
        if readable {
            answered = true;
            break;
        }
    }
    assert!(answered, "the trickle was never cut off");
    let (answer, _) = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // The session is idle again (nothing holds it in flight) and still serves.
    assert!(eventually(Duration::from_secs(5), || {
        gw.sessions()
            .iter()
            .any(|x| x["id"] == sid.as_str() && x["inflight"] == 0)
    }));
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    assert!(
        gw.metrics()
            .contains("sessiongate_requests_total{face=\"http\",status=\"408\"}")
            || gw.metrics().contains("408"),
        "408s are counted"
    );
}

#[test]
fn connections_over_the_cap_get_503_and_the_rest_are_served() {
    let gw = Gateway::start("[limits]\nmax_connections = 8\nheader_timeout_secs = 5\n");
    // Eight idle connections take every place (the head deadline would free them in 5 s).
    let held: Vec<TcpStream> = (0..8).map(|_| connect(gw.http)).collect();
    // Accepted and counted (not a fixed pause: on a loaded machine accepts can lag).
    let counted = || curl(&[&format!("http://{}/healthz", gw.admin)]).json()["connections"] == 8;
    assert!(eventually(Duration::from_secs(5), counted));
    let mut over = connect(gw.http);
    over.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (answer, _) = read_to_close(&mut over);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("ServiceUnavailableException"), "{answer:?}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"));
    let health = curl(&[&format!("http://{}/healthz", gw.admin)]).json();
    assert_eq!(health["connections"], 8);
    assert_eq!(health["max_connections"], 8);
    drop(held);
    assert!(eventually(Duration::from_secs(5), || gw
        .invoke(None, "{}")
        .status
        == 200));
    let metrics = gw.metrics();
    assert!(
        metrics.contains("sessiongate_connections_refused_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sessiongate_max_connections 8"),
        "{metrics}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_with_their_bodies() {
    let gw = Gateway::start("");
    let sid = session_id("pipe");
    let big = format!("{{\"n\":2,\"pad\":\"{}\"}}", "p".repeat(6000));
    let bodies = [r#"{"n":1}"#.to_owned(), big, r#"{"n":3}"#.to_owned()];
    let mut wire = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let close = if i == bodies.len() - 1 {
            "Connection: close\r\n"
        } else {
            ""
        };
        wire.extend_from_slice(
            format!(
                "POST /invocations HTTP/1.1\r\nHost: x\r\n{SESSION_HEADER}: {sid}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut s = connect(gw.http);
    s.write_all(&wire).unwrap();
    let (answer, _) = read_to_close(&mut s);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer:.600}");
    let order: Vec<usize> = ["\"n\":1", "\"n\":2", "\"n\":3"]
        .iter()
        .map(|n| answer.find(n).unwrap_or_else(|| panic!("{n} missing")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(answer.contains(&format!("\"bytes\":{}", bodies[1].len())));
}

#[test]
fn malformed_requests_get_the_faces_error_shape() {
    let gw = Gateway::start("");
    let send = |addr: SocketAddr, wire: &[u8]| {
        let mut s = connect(addr);
        s.write_all(wire).unwrap();
        read_to_close(&mut s).0
    };
    // A control character in a header: Pingora's own refusal, in the face's shape.
    let bad_header = b"GET /ping HTTP/1.1\r\nHo\x01st: x\r\n\r\n";
    let http = send(gw.http, bad_header);
    assert!(http.starts_with("HTTP/1.1 400"), "{http:?}");
    assert!(http.contains("ValidationException") && http.contains("\"message\""));
    let a2a = send(gw.a2a, bad_header);
    assert!(a2a.starts_with("HTTP/1.1 400"), "{a2a:?}");
    assert!(a2a.contains("\"jsonrpc\":\"2.0\""), "{a2a:?}");
    let mcp = send(gw.mcp, bad_header);
    assert!(mcp.contains("\"jsonrpc\":\"2.0\""), "{mcp:?}");
    // Broken chunk framing.
    let chunked = send(
        gw.http,
        b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    );
    assert!(chunked.starts_with("HTTP/1.1 400"), "{chunked:?}");
    assert!(chunked.contains("Malformed HTTP request"), "{chunked:?}");
    // Two Host fields: the same value twice is one Host (the bedrock-agentcore SDK's SigV4
    // shell handshake sends that); two different values stay a 400.
    let same = send(
        gw.http,
        b"GET /ping HTTP/1.1\r\nHost: gw:1\r\nHost: gw:1\r\nConnection: close\r\n\r\n",
    );
    assert!(same.starts_with("HTTP/1.1 200"), "{same:?}");
    let differing = send(
        gw.http,
        b"GET /ping HTTP/1.1\r\nHost: gw:1\r\nHost: other:2\r\nConnection: close\r\n\r\n",
    );
    assert!(differing.starts_with("HTTP/1.1 400"), "{differing:?}");
}

#[test]
fn anonymous_callers_are_counted_per_address() {
    let gw = Gateway::start(
        "[limits]\nrequests_per_second_per_principal = 5\nmax_sessions_per_anonymous_address = 2\n\
         new_sessions_per_second = 1000\n",
    );
    // 127.0.0.1 exhausts its own bucket ...
    let statuses: Vec<u16> = (0..15).map(|_| gw.invoke(None, "{}").status).collect();
    assert!(
        statuses.contains(&429) || statuses.contains(&402),
        "{statuses:?}"
    );
    // ... and a bystander on 127.0.0.2 is not throttled by it.
    let url = gw.url(gw.http, "/ping");
    let r = curl(&["--interface", "127.0.0.2", &url]);
    assert_eq!(r.status, 200);
    let sid = session_id("bystander");
    let invoke = gw.url(gw.http, "/invocations");
    let h = format!("{SESSION_HEADER}: {sid}");
    let r = curl(&[
        "--interface",
        "127.0.0.2",
        "-X",
        "POST",
        &invoke,
        "-H",
        &h,
        "-d",
        "{}",
    ]);
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn the_anonymous_session_quota_tells_the_truth_about_when_to_retry() {
    let gw = Gateway::start(
        "[limits]\nmax_sessions_per_anonymous_address = 2\n\
         [sessions]\nidle_timeout_secs = 30\nsweep_interval_ms = 100\n",
    );
    assert_eq!(gw.invoke(None, "{}").status, 200);
    assert_eq!(gw.invoke(None, "{}").status, 200);
    let r = gw.invoke(None, "{}");
    assert_eq!(r.status, 402, "{}", r.body_text());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // The first session ends 30 s after its last request, not after some fixed guess.
    assert!((25..=31).contains(&retry), "Retry-After: {retry}");
}
