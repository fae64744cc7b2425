//! The data plane: sessions stick to one backend across the three faces, MCP and A2A routing,
//! SSE, WebSocket, the AWS path, and the errors of a request that names no session of ours.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

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
    // An MCP id the gateway never saw: HTTP 404 (the transport's clients then re-initialise, as
    // AgentCore's stale ids do) with a JSON-RPC "not found" body.
    let stale = mcp_call(
        &gw,
        &["Mcp-Session-Id: 0123456789abcdef".to_owned()],
        ECHO_CALL,
    );
    assert_eq!(stale.status, 404);
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
    // An unknown Mcp-Session-Id: 404 with -32004 for the same call.
    let r = mcp_call(&gw, &["Mcp-Session-Id: unknown".to_owned()], ECHO_CALL);
    assert_eq!(
        (
            r.status,
            r.json()["error"]["code"].as_i64(),
            r.json()["id"].as_i64()
        ),
        (404, Some(-32004), Some(2))
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
