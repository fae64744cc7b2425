//! What a hostile client or a misbehaving backend can try, and what it gets: sessions it cannot
//! name or take over, ARNs and headers parsed strictly, and backends that cannot turn a client
//! connection into a raw tunnel.

use serde_json::Value;

use crate::common::*;

/// A gateway whose runtime is tests/fixtures/hostile_agent.py (one process per session).
struct Hostile {
    gw: Gateway,
    _dir: TempDir,
}

impl Hostile {
    fn start(extra: &str) -> Self {
        let dir = TempDir::new();
        let script = dir.write(
            "hostile_agent.py",
            include_str!("../fixtures/hostile_agent.py"),
        );
        let gw = Gateway::start(&format!(
            r#"
{extra}
[[runtimes]]
name = "default"
[runtimes.backend]
provider = "process"
command = "/usr/bin/python3"
args = ["{}", "{{http}}", "{{mcp}}"]
"#,
            script.display()
        ));
        Self { gw, _dir: dir }
    }

    fn mcp(&self, sid: Option<&str>, mcp_id: Option<&str>, body: &Value) -> Response {
        let sid = sid.map(|s| format!("{SESSION_HEADER}: {s}"));
        let mcp_id = mcp_id.map(|m| format!("Mcp-Session-Id: {m}"));
        let headers: Vec<String> = sid.into_iter().chain(mcp_id).collect();
        mcp_call(&self.gw, &headers, &body.to_string())
    }
}

fn claim(id: &str) -> Value {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"claim": id}})
}

#[test]
fn a_backend_cannot_take_over_another_sessions_mcp_id() {
    let h = Hostile::start("");
    let (victim, attacker) = (session_id("victim"), session_id("attacker"));
    let mcp_id = "the-victims-mcp-session";
    let r = h.mcp(Some(&victim), None, &claim(mcp_id));
    assert_eq!(r.status, 200, "{}", r.body_text());
    let victim_pid = r.json()["result"]["pid"].clone();
    // The attacker's backend answers with the victim's MCP id.
    let r = h.mcp(Some(&attacker), None, &claim(mcp_id));
    assert_eq!(r.status, 200);
    let attacker_pid = r.json()["result"]["pid"].clone();
    assert_ne!(victim_pid, attacker_pid);
    // The victim's calls by MCP id still reach the victim's backend.
    let r = h.mcp(
        None,
        Some(mcp_id),
        &serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["pid"], victim_pid);
    assert_eq!(r.header(SESSION_HEADER), Some(victim.as_str()));
    assert!(
        h.gw.metrics()
            .contains("sessiongate_mcp_id_conflicts_total 1")
    );
}

#[test]
fn a_101_to_a_request_that_did_not_ask_to_upgrade_is_a_424() {
    let h = Hostile::start("");
    let sid = session_id("upgrade");
    let r = h.gw.invoke(Some(&sid), r#"{"op":"upgrade"}"#);
    assert_eq!(r.status, 424, "{}", r.body_text());
    assert_eq!(r.header("x-amzn-ErrorType"), Some("RuntimeClientError"));
    assert!(!r.body_text().contains("raw tunnel"));
    // The session and its backend are fine for an honest request.
    assert_eq!(h.gw.invoke(Some(&sid), "{}").status, 200);
}

#[test]
fn implicit_mcp_sessions_cannot_be_named_in_advance() {
    // The same anonymous caller on the same runtime: one implicit session per gateway, named
    // under that gateway's secret, so another gateway (another secret) names it differently.
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let implicit = |gw: &Gateway| {
        let r = mcp_call(gw, &[], ping);
        assert_eq!(r.status, 200, "{}", r.body_text());
        r.header(SESSION_HEADER).unwrap().to_owned()
    };
    let a = Gateway::start("");
    let b = Gateway::start("");
    let (a1, a2, b1) = (implicit(&a), implicit(&a), implicit(&b));
    assert_eq!(a1, a2, "the implicit session is stable within a gateway");
    assert_ne!(
        a1, b1,
        "the implicit session id is keyed by each gateway's secret"
    );
    let tag = a1.strip_prefix("mcp-implicit-").unwrap();
    assert_eq!(tag.len(), 32);
    assert!(tag.bytes().all(|c| c.is_ascii_hexdigit()));
}

#[test]
fn runtime_arns_are_parsed_strictly() {
    let gw = Gateway::start("[aws]\nregion = \"eu-west-1\"\naccount_id = \"123456789012\"\n");
    let invoke = |arn: &str| {
        let encoded = arn.replace(':', "%3A").replace('/', "%2F");
        gw.post(&format!("/runtimes/{encoded}/invocations"), None, "{}", &[])
    };
    let ok = invoke("arn:aws:bedrock-agentcore:eu-west-1:123456789012:runtime/default");
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    for (arn, status) in [
        ("arn:aws:s3:::runtime/default", 400),
        (
            "arn:aws:bedrock-agentcore:eu-west-1:12345:runtime/default",
            400,
        ),
        (
            "arn:aws:bedrock-agentcore:eu-west-1:123456789012:agent/default",
            400,
        ),
        (
            "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/default",
            404,
        ),
        (
            "arn:aws:bedrock-agentcore:eu-west-1:210987654321:runtime/default",
            404,
        ),
    ] {
        let r = invoke(arn);
        assert_eq!(r.status, status, "{arn}: {}", r.body_text());
        let want = if status == 400 {
            "ValidationException"
        } else {
            "ResourceNotFoundException"
        };
        assert_eq!(r.header("x-amzn-ErrorType"), Some(want), "{arn}");
    }
}

#[test]
fn custom_headers_are_capped_and_the_refusal_names_the_header() {
    let gw = Gateway::start("");
    let big = format!(
        "X-Amzn-Bedrock-AgentCore-Runtime-Custom-Big: {}",
        "x".repeat(9000)
    );
    let r = gw.invoke_with(None, "{}", &[big]);
    assert_eq!(r.status, 431, "{}", r.body_text());
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("x-amzn-bedrock-agentcore-runtime-custom-big"),
        "{}",
        r.body_text()
    );
    let many: Vec<String> = (0..21)
        .map(|i| format!("X-Amzn-Bedrock-AgentCore-Runtime-Custom-H{i}: v"))
        .collect();
    assert_eq!(gw.invoke_with(None, "{}", &many).status, 431);
    let few: Vec<String> = many[..3].to_vec();
    assert_eq!(gw.invoke_with(None, "{}", &few).status, 200);
}

#[test]
fn hop_by_hop_and_connection_nominated_headers_never_reach_the_backend() {
    // Allow-listed, so that only the hop-by-hop rules can keep X-Nominated from the backend
    // (Keep-Alive and Proxy-Connection cannot even be allow-listed).
    let gw = Gateway::start(
        "[[runtimes]]\nname = \"default\"\n\
         request_header_allowlist = [\"X-Nominated\", \"X-Kept\"]\n\
         [runtimes.backend]\nprovider = \"process\"\n",
    );
    let sid = session_id("hop-by-hop");
    let plain = gw.invoke_with(
        Some(&sid),
        r#"{"echo_headers":true}"#,
        &["X-Kept: 1".to_owned()],
    );
    assert_eq!(plain.json()["headers"]["x-kept"], "1");
    let r = gw.invoke_with(
        Some(&sid),
        r#"{"echo_headers":true}"#,
        &[
            "Connection: keep-alive, X-Nominated".to_owned(),
            "X-Nominated: secret".to_owned(),
            "X-Kept: 1".to_owned(),
            "Keep-Alive: timeout=5".to_owned(),
            "Proxy-Connection: keep-alive".to_owned(),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = &r.json()["headers"];
    for gone in ["x-nominated", "keep-alive", "proxy-connection"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the backend: {seen}"
        );
    }
    assert_eq!(seen["x-kept"], "1");
}
