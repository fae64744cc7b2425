//! `sessiongate invoke`, the command-line client, against a real gateway.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn invoke(gw: &Gateway, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin())
        .arg("invoke")
        .args(args)
        .args(["--endpoint", &format!("http://{}", gw.http)])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn invoke_prints_the_answer_and_the_session() {
    let gw = Gateway::start("");
    let sid = session_id("cli");
    let out = invoke(
        &gw,
        &[
            r#"{"prompt":"hello"}"#,
            "--session-id",
            &sid,
            "--qualifier",
            "DEFAULT",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["echo"]["prompt"], "hello");
    assert_eq!(answer["session_id"], sid.as_str());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("session: {sid}")));
}

#[test]
fn invoke_streams_events_as_they_arrive() {
    let gw = Gateway::start("");
    let mut child = Command::new(bin())
        .args([
            "invoke",
            r#"{"stream":3,"interval_ms":600}"#,
            "--endpoint",
            &format!("http://{}", gw.http),
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut arrivals = vec![];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        if line.unwrap().starts_with("data: ") {
            arrivals.push(start.elapsed());
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(arrivals.len(), 3);
    assert!(
        arrivals[2] - arrivals[0] >= Duration::from_millis(1000),
        "{arrivals:?}"
    );
}

#[test]
fn invoke_fails_with_the_error_type_and_message() {
    let gw = Gateway::start("");
    let out = invoke(&gw, &["{}", "--runtime", "missing"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ResourceNotFoundException (404): Runtime not found"),
        "{err}"
    );
}

#[test]
fn invoke_signs_with_sigv4_from_the_environment() {
    let gw = Gateway::start(&format!(
        "[[runtimes]]\nname = \"default\"\n[runtimes.auth]\nmode = \"sigv4\"\ncredentials_file = \"{}/../conf/credentials.example.toml\"\n",
        env!("CARGO_MANIFEST_DIR")
    ));
    let arn = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/default";
    let good = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        ),
    ];
    let out = invoke(&gw, &[r#"{"signed":true}"#, "--runtime", arn], &good);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["echo"]["signed"],
        true
    );
    let bad = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret-0000000000"),
    ];
    let out = invoke(&gw, &["{}"], &bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException (403)"));
    let out = invoke(&gw, &["{}"], &[]);
    assert!(!out.status.success(), "unsigned requests are refused");
}
