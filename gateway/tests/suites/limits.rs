//! Limits: payload caps, session quotas, rates, in-flight caps, stream timers and WebSocket frames.

use std::time::{Duration, Instant};

use crate::common::*;

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
