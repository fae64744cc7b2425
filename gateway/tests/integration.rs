//! Integration tests: the real gateway binary, real agent processes, curl and a real
//! WebSocket client, all on loopback ports chosen by the OS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod suites;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MCP_ACCEPT: &str = "Accept: application/json, text/event-stream";

fn mcp_call(gw: &Gateway, headers: &[String], body: &str) -> Response {
    let url = gw.url(gw.mcp, "/mcp");
    let mut args = vec![
        "-X",
        "POST",
        url.as_str(),
        "-H",
        "Content-Type: application/json",
        "-H",
        MCP_ACCEPT,
        "-d",
        body,
    ];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    curl(&args)
}

const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"test","version":"1"}}}"#;
const ECHO_CALL: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;

fn a2a_send(gw: &Gateway, sid: &str, text: &str) -> Response {
    let url = gw.url(gw.a2a, "/");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":"r1","method":"message/send","params":{{"message":{{"role":"user","messageId":"m1","parts":[{{"kind":"text","text":"{text}"}}]}}}}}}"#
    );
    let h = format!("{SESSION_HEADER}: {sid}");
    curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &h,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
    ])
}

#[test]
fn sessions_are_sticky_across_all_three_ports_and_never_shared() {
    let gw = Gateway::start("[limits]\nnew_sessions_per_second = 1000\n");
    let sessions: Vec<String> = (0..10).map(|i| session_id(&format!("sticky{i}"))).collect();
    let instances: Vec<(String, HashSet<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|sid| {
                let gw = &gw;
                scope.spawn(move || {
                    let mut seen = HashSet::new();
                    for round in 0..3 {
                        let r = gw.invoke(Some(sid), &format!(r#"{{"round":{round}}}"#));
                        assert_eq!(r.status, 200, "{}", r.body_text());
                        assert_eq!(r.header(SESSION_HEADER), Some(sid.as_str()));
                        let v = r.json();
                        assert_eq!(
                            v["session_id"],
                            sid.as_str(),
                            "the backend saw the session id"
                        );
                        assert_eq!(v["echo"]["round"], round);
                        seen.insert(v["instance"].as_str().unwrap().to_owned());
                    }
                    // MCP with the runtime session header reaches the same backend.
                    let h = vec![format!("{SESSION_HEADER}: {sid}")];
                    let init = mcp_call(gw, &h, INITIALIZE);
                    assert_eq!(init.status, 200, "{}", init.body_text());
                    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
                    let call = mcp_call(
                        gw,
                        &[h[0].clone(), format!("Mcp-Session-Id: {mcp_id}")],
                        ECHO_CALL,
                    );
                    let v = call.json();
                    assert_eq!(v["result"]["content"][0]["text"], "hi");
                    seen.insert(
                        v["result"]["structuredContent"]["instance"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                    // A2A too.
                    let r = a2a_send(gw, sid, "ping");
                    assert_eq!(r.status, 200, "{}", r.body_text());
                    let v = r.json();
                    assert_eq!(v["result"]["parts"][0]["text"], "ping");
                    seen.insert(
                        v["result"]["metadata"]["instance"]
                            .as_str()
                            .unwrap()
                            .to_owned(),
                    );
                    (sid.clone(), seen)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut owner: HashMap<String, String> = HashMap::new();
    for (sid, seen) in &instances {
        assert_eq!(
            seen.len(),
            1,
            "session {sid} reached several backends: {seen:?}"
        );
        let instance = seen.iter().next().unwrap();
        if let Some(other) = owner.insert(instance.clone(), sid.clone()) {
            panic!("sessions {other} and {sid} share backend {instance}");
        }
    }
    assert_eq!(gw.sessions().len(), sessions.len());
}

#[test]
fn a_request_without_a_session_id_gets_a_fresh_session_and_its_id() {
    let gw = Gateway::start("");
    let a = gw.invoke(None, "{}");
    let b = gw.invoke(None, "{}");
    let (sa, sb) = (
        a.header(SESSION_HEADER).unwrap(),
        b.header(SESSION_HEADER).unwrap(),
    );
    assert!(sa.len() >= 33 && sa != sb);
    assert_ne!(a.json()["instance"], b.json()["instance"]);
    // The minted id works like any other.
    assert_eq!(
        gw.invoke(Some(sa), "{}").json()["instance"],
        a.json()["instance"]
    );
}

#[test]
fn mcp_requests_are_routed_by_the_learned_mcp_session_id() {
    let gw = Gateway::start("");
    let init = mcp_call(&gw, &[], INITIALIZE);
    assert_eq!(init.status, 200);
    let runtime_sid = init.header(SESSION_HEADER).unwrap().to_owned();
    let mcp_id = init.header("mcp-session-id").unwrap().to_owned();
    let call = mcp_call(&gw, &[format!("Mcp-Session-Id: {mcp_id}")], ECHO_CALL);
    assert_eq!(call.status, 200);
    assert_eq!(call.header(SESSION_HEADER), Some(runtime_sid.as_str()));
    let v = call.json();
    assert_eq!(
        v["result"]["structuredContent"]["session_id"],
        runtime_sid.as_str()
    );
    // The HTTP face of the same session is the same backend.
    let http = gw.invoke(Some(&runtime_sid), "{}").json();
    assert_eq!(
        http["instance"],
        v["result"]["structuredContent"]["instance"]
    );
    // An MCP id the gateway never saw is a JSON-RPC "not found", with HTTP 200 as AgentCore does.
    let stale = mcp_call(
        &gw,
        &["Mcp-Session-Id: 0123456789abcdef".to_owned()],
        ECHO_CALL,
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.json()["error"]["code"], -32004);
    // Without the Accept the transport requires: 406 with JSON-RPC -32011, as AgentCore answers.
    let url = gw.url(gw.mcp, "/mcp");
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        "Accept: application/json",
        "-d",
        INITIALIZE,
    ]);
    assert_eq!(r.status, 406);
    assert_eq!(r.json()["error"]["code"], -32011);
}

#[test]
fn invalid_session_ids_are_refused_with_validation_exception() {
    let gw = Gateway::start("");
    let r = gw.invoke(Some("too-short"), "{}");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-amzn-ErrorType"), Some("ValidationException"));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("at least 33")
    );
    let long = "x".repeat(257);
    assert_eq!(gw.invoke(Some(&long), "{}").status, 400);
    assert!(
        gw.sessions().is_empty(),
        "a refused request creates no session"
    );
}

#[test]
fn unknown_paths_are_resource_not_found() {
    let gw = Gateway::start("");
    let r = curl(&[&gw.url(gw.http, "/nope")]);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("ResourceNotFoundException")
    );
    let r = curl(&[
        "-X",
        "POST",
        &gw.url(gw.http, "/runtimes/missing/invocations"),
        "-d",
        "{}",
    ]);
    assert_eq!(r.status, 404);
    let r = curl(&[&gw.url(gw.http, "/ping")]);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("Healthy"))
    );
}

/// `POST url` with a chunked body that `feed` writes, in the session of header `h`.
fn post_chunked(
    url: &str,
    h: &str,
    feed: impl FnOnce(&mut std::process::ChildStdin) + Send + 'static,
) -> Response {
    let args = [
        "-X",
        "POST",
        url,
        "-H",
        h,
        "-H",
        "Transfer-Encoding: chunked",
    ];
    curl_with_stdin(&[&args[..], &["--data-binary", "@-"]].concat(), feed)
}

#[test]
fn payload_cap_refuses_declared_and_chunked_bodies() {
    let gw = Gateway::start("[limits]\nmax_payload_bytes = 1000000\n");
    let sid = session_id("cap");
    // Declared too large: refused before a byte is read, and no session is created for it.
    let url = gw.url(gw.http, "/invocations");
    let h = format!("{SESSION_HEADER}: {sid}");
    let r = curl(&[
        "-X",
        "POST",
        &url,
        "-H",
        &h,
        "-H",
        "Content-Length: 1000001",
        "-d",
        "x",
    ]);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-amzn-ErrorType"), Some("ValidationException"));
    assert!(gw.sessions().is_empty());
    // Chunked, crossing the cap mid-stream.
    let r = post_chunked(&url, &h, |stdin| {
        use std::io::Write;
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..20 {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    assert_eq!(r.status, 413, "{}", r.body_text());
    // Under the cap, chunked, passes whole (a JSON document of 999 999 bytes).
    let r = post_chunked(&url, &h, |stdin| {
        use std::io::Write;
        let doc = format!(r#"{{"pad":"{}"}}"#, "a".repeat(999_989));
        let _ = stdin.write_all(doc.as_bytes());
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 999_999);
}

#[test]
fn a_large_upload_streams_through_whole() {
    let gw = Gateway::start("");
    let url = gw.url(gw.http, "/invocations");
    const SIZE: usize = 64 * 1024 * 1024;
    let r = curl_with_stdin(&["-X", "POST", &url, "--data-binary", "@-"], |stdin| {
        use std::io::Write;
        let chunk = vec![b'z'; 1024 * 1024];
        for _ in 0..SIZE / chunk.len() {
            stdin.write_all(&chunk).unwrap();
        }
    });
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["bytes"], SIZE);
}

#[test]
fn sse_events_arrive_as_they_are_produced() {
    let gw = Gateway::start("");
    let url = gw.url(gw.http, "/invocations");
    let mut child = Command::new("curl")
        .args([
            "-s",
            "-N",
            "-X",
            "POST",
            &url,
            "-d",
            r#"{"stream":4,"interval_ms":400}"#,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut arrivals = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["index"], arrivals.len());
            arrivals.push(start.elapsed());
        }
    }
    child.wait().unwrap();
    assert_eq!(arrivals.len(), 4);
    // The last event is produced ≥ 1.2 s after the first; the first must not wait for it.
    assert!(
        arrivals[3] - arrivals[0] >= Duration::from_millis(1000),
        "events were buffered: {arrivals:?}"
    );
}

#[test]
fn websocket_echoes_through_the_gateway_on_the_sessions_backend() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let gw = Gateway::start("");
    let sid = session_id("ws");
    let instance = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = format!("ws://{}/ws", gw.http)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert(SESSION_HEADER, sid.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()[SESSION_HEADER], sid.as_str());
        for text in ["hello", "world"] {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        }
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        // The open socket counts as in flight.
        let s = gw.sessions();
        assert_eq!(s[0]["inflight"], 1);
        ws.close(None).await.unwrap();
    });
    // Session id as a query parameter (browsers cannot set headers) reaches the same session.
    rt.block_on(async {
        let url = format!("ws://{}/ws?{SESSION_HEADER}={sid}", gw.http);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.send(Message::text("q")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("q"));
    });
    assert_eq!(gw.sessions().len(), 1);
    assert_eq!(gw.invoke(Some(&sid), "{}").json()["instance"], instance);
}

/// Many short WebSocket connections, each writing the moment it is open: none may be torn down
/// after its 101 (cloudflare/pingora#946, patched in vendor/pingora-proxy).
#[test]
fn websocket_tunnels_survive_a_fast_first_frame() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let gw = Gateway::start("[limits]\nmax_inflight_per_session = 64\n");
    let sid = session_id("wsfast");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let failures: usize = rt.block_on(async {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (addr, sid) = (gw.http, sid.clone());
                tokio::spawn(async move {
                    let mut failed = 0;
                    for i in 0..100 {
                        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
                        req.headers_mut()
                            .insert(SESSION_HEADER, sid.parse().unwrap());
                        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
                        let text = format!("m{i}");
                        let echoed = ws.send(Message::text(text.clone())).await.is_ok()
                            && matches!(ws.next().await, Some(Ok(m)) if m == Message::text(text));
                        failed += usize::from(!echoed);
                        let _ = ws.close(None).await;
                    }
                    failed
                })
            })
            .collect();
        let mut failed = 0;
        for t in tasks {
            failed += t.await.unwrap();
        }
        failed
    });
    assert_eq!(
        failures, 0,
        "{failures} of 400 WebSocket tunnels were torn down after 101"
    );
}

#[test]
fn active_session_limit_answers_402_with_retry_after() {
    let gw = Gateway::start("[limits]\nmax_active_sessions = 2\n");
    assert_eq!(gw.invoke(Some(&session_id("a")), "{}").status, 200);
    assert_eq!(gw.invoke(Some(&session_id("b")), "{}").status, 200);
    let r = gw.invoke(Some(&session_id("c")), "{}");
    assert_eq!(r.status, 402);
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("ServiceQuotaExceededException")
    );
    assert!(r.header("retry-after").is_some());
    let m = gw.metrics();
    assert!(
        m.contains(r#"sessiongate_rejections_total{reason="active_sessions"} 1"#),
        "{m}"
    );
}

#[test]
fn per_principal_session_limit_answers_402() {
    // Anonymous callers are counted per address: this one address is one caller.
    let gw = Gateway::start("[limits]\nmax_sessions_per_anonymous_address = 1\n");
    let sid = session_id("p");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    let r = gw.invoke(Some(&session_id("q")), "{}");
    assert_eq!(r.status, 402);
    // The existing session still works.
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
}

#[test]
fn new_session_rate_answers_429_with_retry_after() {
    let gw = Gateway::start("[limits]\nnew_sessions_per_second = 1\n");
    // Four new sessions at once: on a loaded machine two could start a second apart (and the
    // bucket refill between them), four will not all.
    let gw = &gw;
    let answers: Vec<Response> = std::thread::scope(|s| {
        let tries: Vec<_> = (0..4)
            .map(|i| s.spawn(move || gw.invoke(Some(&session_id(&format!("r{i}"))), "{}")))
            .collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 429].contains(s)),
        "{statuses:?}"
    );
    let r = answers.into_iter().find(|r| r.status == 429).unwrap();
    assert_eq!(r.header("x-amzn-ErrorType"), Some("ThrottlingException"));
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn in_flight_limit_per_session_answers_429() {
    let gw = Gateway::start("[limits]\nmax_inflight_per_session = 1\n");
    let sid = session_id("busy");
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
    std::thread::scope(|s| {
        let slow = s.spawn(|| gw.invoke(Some(&sid), r#"{"sleep_ms":1500}"#));
        assert!(eventually(
            Duration::from_secs(5),
            || gw.sessions()[0]["inflight"] == 1
        ));
        let r = gw.invoke(Some(&sid), "{}");
        assert_eq!(r.status, 429);
        assert_eq!(r.header("x-amzn-ErrorType"), Some("ThrottlingException"));
        assert_eq!(slow.join().unwrap().status, 200);
    });
    assert_eq!(gw.invoke(Some(&sid), "{}").status, 200);
}

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
fn aws_invocation_path_reaches_the_runtime() {
    let gw = Gateway::start("");
    let sid = session_id("aws");
    let url = gw.url(
        gw.http,
        "/runtimes/arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A123456789012%3Aruntime%2Fdefault/invocations?qualifier=DEFAULT",
    );
    let h = format!("{SESSION_HEADER}: {sid}");
    let r = curl(&["-X", "POST", &url, "-H", &h, "-d", r#"{"prompt":"x"}"#]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["echo"]["prompt"], "x");
    assert_eq!(
        r.json()["instance"],
        gw.invoke(Some(&sid), "{}").json()["instance"]
    );
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
fn quiet_streams_stay_open_and_the_timers_are_configurable() {
    // Defaults: a stream quiet for 3 s is not cut.
    let gw = Gateway::start("");
    let r = gw.invoke(None, r#"{"stream":2,"interval_ms":3000}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_text().matches("data: ").count(), 2);

    // A backend silent longer than request_timeout_secs: 504, and the session survives.
    let gw = Gateway::start("[limits]\nrequest_timeout_secs = 1\nstream_timeout_secs = 2\n");
    let sid = session_id("slow");
    let first = gw.invoke(Some(&sid), "{}").json()["instance"].clone();
    let r = gw.invoke(Some(&sid), r#"{"sleep_ms":2500}"#);
    assert_eq!(r.status, 504, "{}", r.body_text());
    assert_eq!(r.header("x-amzn-ErrorType"), Some("RuntimeClientError"));
    assert_eq!(gw.invoke(Some(&sid), "{}").json()["instance"], first);

    // A stream longer than stream_timeout_secs is ended.
    let started = Instant::now();
    let r = gw.invoke(Some(&sid), r#"{"stream":20,"interval_ms":400}"#);
    let events = r.body_text().matches("data: ").count();
    assert!(events < 20, "the stream ran to its end: {events} events");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn websocket_frame_limits_close_with_1009_and_1008() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let gw = Gateway::start("[limits]\nwebsocket_max_frames_per_second = 20\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let close_code = |messages: Vec<Message>| {
        let url = format!("ws://{}/ws", gw.http);
        rt.block_on(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            for m in messages {
                if ws.send(m).await.is_err() {
                    break;
                }
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Close(Some(frame))))) => return Some(frame.code),
                    Ok(Some(Ok(_))) => continue,
                    _ => return None,
                }
            }
        })
    };
    // 64 KB passes (and is echoed); 64 KB + 1 closes with 1009.
    let echoed = rt.block_on(async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http))
            .await
            .unwrap();
        ws.send(Message::binary(vec![7u8; 65_536])).await.unwrap();
        ws.next().await.unwrap().unwrap()
    });
    assert_eq!(echoed.len(), 65_536);
    assert_eq!(
        close_code(vec![Message::binary(vec![0u8; 65_537])]),
        Some(CloseCode::Size)
    );
    // 20 frames per second pass; 40 at once close with 1008.
    let burst = (0..40).map(|i| Message::text(format!("m{i}"))).collect();
    assert_eq!(close_code(burst), Some(CloseCode::Policy));
    let m = gw.metrics();
    assert!(
        m.contains("websocket_frame_too_big") && m.contains("websocket_frame_rate"),
        "{m}"
    );
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
fn mcp_sessionless_requests_and_json_rpc_error_codes() {
    // A slow sweep, so that the request finds the dead backend before the sweep does.
    let gw = Gateway::start(
        "[limits]\nmax_active_sessions = 1\n[sessions]\nsweep_interval_ms = 60000\n",
    );
    let sid = session_id("sessionless");
    // 2026-era: no Mcp-Session-Id, Mcp-Method/Mcp-Name headers; routed by the runtime session.
    let h = vec![
        format!("{SESSION_HEADER}: {sid}"),
        "Mcp-Method: tools/call".to_owned(),
        "Mcp-Name: echo".to_owned(),
    ];
    let r = mcp_call(&gw, &h, ECHO_CALL);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(
        r.json()["result"]["structuredContent"]["session_id"],
        sid.as_str()
    );
    assert!(
        r.header("mcp-session-id").is_none(),
        "no id minted for a sessionless request"
    );
    let instance = r.json()["result"]["structuredContent"]["instance"].clone();
    assert_eq!(
        mcp_call(&gw, &h, ECHO_CALL).json()["result"]["structuredContent"]["instance"],
        instance
    );

    // Quota: JSON-RPC -32003 in HTTP 200, naming the refused call (ECHO_CALL's id is 2), as
    // AgentCore does; a call with a string id gets it back as a string.
    let other = vec![format!("{SESSION_HEADER}: {}", session_id("second"))];
    let r = mcp_call(&gw, &other, ECHO_CALL);
    assert_eq!(
        (
            r.status,
            r.json()["error"]["code"].as_i64(),
            r.json()["id"].as_i64()
        ),
        (200, Some(-32003), Some(2))
    );
    let r = mcp_call(
        &gw,
        &other,
        &ECHO_CALL.replace(r#""id":2"#, r#""id":"req-001""#),
    );
    assert_eq!(r.json()["id"], "req-001");
    // An unknown Mcp-Session-Id: -32004 for the same call.
    let r = mcp_call(&gw, &["Mcp-Session-Id: unknown".to_owned()], ECHO_CALL);
    assert_eq!(
        (r.json()["error"]["code"].as_i64(), r.json()["id"].as_i64()),
        (Some(-32004), Some(2))
    );
    // A2A is JSON-RPC too: a malformed session id is refused naming the call ("r1").
    let r = a2a_send(&gw, "too-short", "hi");
    assert_eq!(
        (
            r.status,
            r.json()["error"]["code"].as_i64(),
            r.json()["id"].as_str()
        ),
        (400, Some(-32052), Some("r1"))
    );

    // A backend that died: JSON-RPC -32010 in HTTP 200.
    let pid = gw.backend_pid(&sid).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(5), || !alive(pid)));
    let r = mcp_call(&gw, &h, ECHO_CALL);
    if r.json()["error"].is_object() {
        assert_eq!(
            (r.status, r.json()["error"]["code"].as_i64()),
            (200, Some(-32010))
        );
    }
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

#[test]
fn graceful_upgrade_hands_the_sockets_over_without_a_failed_request() {
    let socket = TempDir::new();
    let socket = socket.0.join("upgrade.sock");
    let config = format!("[server]\nupgrade_socket = \"{}\"\n", socket.display());
    let mut old = Gateway::start(&config);
    let old_pid = old.pid();
    // The new process waits for the sockets; the old one hands them over on SIGQUIT.
    let mut new = Command::new(bin())
        .args(old.args())
        .arg("--upgrade")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let url = old.url(old.http, "/invocations");
    let (ok, failed) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match curl(&["-X", "POST", &url, "-d", "{}"]).status {
                    200 => ok += 1,
                    _ => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        });
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(old_pid as i32, libc::SIGQUIT) };
        // The old process drains and exits; the new one serves throughout.
        let status = old.stop_with(0);
        assert!(status.success() || status.code().is_some(), "{status:?}");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert!(ok > 10, "{ok} requests succeeded");
    assert_eq!(failed, 0, "{failed} requests failed during the upgrade");
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process is serving"
    );
    assert_eq!(curl(&["-X", "POST", &url, "-d", "{}"]).status, 200);
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    new.wait().unwrap();
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
