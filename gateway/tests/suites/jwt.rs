//! JWT runtimes against a real local OIDC issuer (discovery + JWKS, RSA and EC keys).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use crate::common::oidc::{Issuer, SigningKey};
use crate::common::*;

const AUD: &str = "sessiongate-test";

fn jwt_gateway(issuer: &Issuer, extra_runtime: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[[runtimes]]
name = "default"
[runtimes.auth]
mode = "jwt"
discovery_url = "{}"
allowed_audiences = ["{AUD}"]
jwks_min_refetch_secs = 2
{extra_runtime}
"#,
        issuer.discovery_url()
    ))
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

#[test]
fn missing_token_gets_401_with_a_resource_metadata_challenge() {
    let issuer = Issuer::start(&[&SigningKey::rsa1()]);
    let gw = jwt_gateway(&issuer, "");
    let r = gw.invoke(None, "{}");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-amzn-ErrorType"), Some("UnauthorizedException"));
    let challenge = r.header("www-authenticate").unwrap().to_owned();
    let url = format!(
        "http://{}/runtimes/default/invocations/.well-known/oauth-protected-resource",
        gw.http
    );
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{url}\""));
    // The metadata names the authorization server (RFC 9728).
    let meta = curl(&[&url]);
    assert_eq!(meta.status, 200);
    let doc = meta.json();
    assert_eq!(doc["authorization_servers"], json!([issuer.issuer()]));
    assert_eq!(
        doc["resource"],
        format!("http://{}/runtimes/default/invocations", gw.http)
    );
    // MCP clients get the same challenge on the MCP port.
    let r = mcp_call(&gw, &[], INITIALIZE);
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains(&gw.mcp.to_string())
    );
    assert!(
        gw.sessions().is_empty(),
        "no session for an unauthenticated caller"
    );
}

#[test]
fn valid_rsa_and_ec_tokens_are_accepted_and_name_their_principal() {
    let (rsa, ec) = (SigningKey::rsa1(), SigningKey::ec1());
    let issuer = Issuer::start(&[&rsa, &ec]);
    let gw = jwt_gateway(&issuer, "");
    let sid = session_id("jwt");
    let r = gw.invoke_with(
        Some(&sid),
        "{}",
        &bearer(&rsa.sign(&issuer.claims("alice", AUD, 300))),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    // The token is the gateway's: it does not reach the backend.
    assert_eq!(r.json()["session_id"], sid.as_str());
    let r = gw.invoke_with(
        Some(&sid),
        "{}",
        &bearer(&ec.sign(&issuer.claims("alice", AUD, 300))),
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    let s = gw.sessions();
    assert_eq!(s[0]["principal"], format!("jwt:{}|alice", issuer.issuer()));
    let m = gw.metrics();
    assert!(!m.contains("sessiongate_auth_failures_total"), "{m}");
}

/// alg=none, HS256 keyed with the public key, expired, not yet valid, wrong issuer, wrong
/// audience, a forged payload, garbage: all refused with 401 and a generic message, each
/// reason counted.
#[test]
fn bad_tokens_are_refused() {
    let rsa = SigningKey::rsa1();
    let issuer = Issuer::start(&[&rsa]);
    let gw = jwt_gateway(&issuer, "");
    let good = issuer.claims("mallory", AUD, 300);

    let b64 = |v: &Value| B64.encode(v.to_string());
    let none_token = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&good)
    );
    let hs_token = {
        use hmac::{Hmac, Mac};
        let public = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/rsa1.pub.pem"
        ))
        .unwrap();
        let signing_input = format!(
            "{}.{}",
            b64(&json!({"alg":"HS256","typ":"JWT","kid":"rsa-1"})),
            b64(&good)
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
        mac.update(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            B64.encode(mac.finalize().into_bytes())
        )
    };
    let mut future = good.clone();
    future["nbf"] = json!(good["iat"].as_i64().unwrap() + 3600);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("http://evil.example");
    let forged = {
        let t = rsa.sign(&good);
        let parts: Vec<&str> = t.split('.').collect();
        let mut admin = good.clone();
        admin["sub"] = json!("admin");
        format!("{}.{}.{}", parts[0], b64(&admin), parts[2])
    };
    let cases = [
        ("none", none_token),
        ("hs256-with-public-key", hs_token),
        ("expired", rsa.sign(&issuer.claims("mallory", AUD, -3600))),
        ("not-yet-valid", rsa.sign(&future)),
        ("wrong-issuer", rsa.sign(&wrong_iss)),
        (
            "wrong-audience",
            rsa.sign(&issuer.claims("mallory", "someone-else", 300)),
        ),
        ("forged-payload", forged),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (name, token) in cases {
        let r = gw.invoke_with(None, "{}", &bearer(&token));
        assert_eq!(r.status, 401, "{name}: {}", r.body_text());
        assert_eq!(
            r.json()["message"],
            "JWT bearer token is invalid or not found",
            "{name}"
        );
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{name}"
        );
    }
    assert!(gw.sessions().is_empty());
    let m = gw.metrics();
    for reason in [
        "algorithm",
        "expired",
        "not_yet_valid",
        "issuer",
        "audience",
        "bad_signature",
        "malformed",
    ] {
        assert!(
            m.contains(&format!(
                "sessiongate_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{m}"
        );
    }
}

#[test]
fn unknown_kid_storms_are_rate_limited_and_rotation_needs_no_restart() {
    let (k1, k2) = (SigningKey::rsa1(), SigningKey::rsa2());
    let issuer = Issuer::start(&[&k1]);
    let gw = jwt_gateway(&issuer, "");
    assert_eq!(
        gw.invoke_with(None, "{}", &bearer(&k1.sign(&issuer.claims("a", AUD, 300))))
            .status,
        200
    );
    let before = issuer.jwks_fetches();

    // 40 tokens naming random kids within a second: the provider sees at most one refetch.
    for i in 0..40 {
        let t = k1.sign_as(&format!("random-{i}"), &issuer.claims("a", AUD, 300));
        assert_eq!(gw.invoke_with(None, "{}", &bearer(&t)).status, 401);
    }
    let storm = issuer.jwks_fetches() - before;
    assert!(storm <= 1, "{storm} JWKS fetches for one kid storm");

    // Rotation: k2 replaces k1 at the provider. After the refetch interval, a k2 token works
    // (the unknown kid triggers one fetch) without restarting the gateway.
    issuer.set_keys(&[&k2]);
    std::thread::sleep(Duration::from_millis(2100));
    let t2 = k2.sign(&issuer.claims("b", AUD, 300));
    assert_eq!(gw.invoke_with(None, "{}", &bearer(&t2)).status, 200);

    // The provider goes down: tokens the cached keys verify keep working.
    issuer.set_down(true);
    assert_eq!(gw.invoke_with(None, "{}", &bearer(&t2)).status, 200);
    // A kid nobody has seen cannot be verified while the provider is down.
    let unknown = k2.sign_as("rsa-9", &issuer.claims("b", AUD, 300));
    assert_eq!(gw.invoke_with(None, "{}", &bearer(&unknown)).status, 401);
}

#[test]
fn a_gateway_that_never_reached_its_provider_answers_500_not_401() {
    let issuer = Issuer::start(&[&SigningKey::rsa1()]);
    issuer.set_down(true);
    let gw = jwt_gateway(&issuer, "");
    let t = SigningKey::rsa1().sign(&issuer.claims("a", AUD, 300));
    let r = gw.invoke_with(None, "{}", &bearer(&t));
    assert_eq!(r.status, 500, "{}", r.body_text());
    assert_eq!(
        r.header("x-amzn-ErrorType"),
        Some("InternalServerException")
    );
    issuer.set_down(false);
    assert_eq!(gw.invoke_with(None, "{}", &bearer(&t)).status, 200);
}

#[test]
fn sessions_belong_to_their_principal() {
    let rsa = SigningKey::rsa1();
    let issuer = Issuer::start(&[&rsa]);
    let gw = jwt_gateway(&issuer, "");
    let alice = bearer(&rsa.sign(&issuer.claims("alice", AUD, 300)));
    let bob = bearer(&rsa.sign(&issuer.claims("bob", AUD, 300)));
    let sid = session_id("owned");
    let first = gw.invoke_with(Some(&sid), "{}", &alice);
    assert_eq!(first.status, 200);

    // Bob cannot use it, stop it, or tell it from an unknown id.
    let theirs = gw.invoke_with(Some(&sid), "{}", &bob);
    let unknown = gw.post(
        "/runtimes/default/stopruntimesession",
        Some(&session_id("nobody")),
        "{}",
        &bob,
    );
    let stop = gw.post(
        "/runtimes/default/stopruntimesession",
        Some(&sid),
        "{}",
        &bob,
    );
    assert_eq!(theirs.status, 404);
    assert_eq!(stop.status, 404);
    assert_eq!(unknown.status, 404);
    assert_eq!(theirs.json(), unknown.json());
    assert_eq!(stop.json(), unknown.json());

    // Alice still has it, on the same backend.
    let again = gw.invoke_with(Some(&sid), "{}", &alice);
    assert_eq!(again.json()["instance"], first.json()["instance"]);
    assert_eq!(
        gw.post(
            "/runtimes/default/stopruntimesession",
            Some(&sid),
            "{}",
            &alice
        )
        .status,
        200
    );
}

#[test]
fn sigv4_on_a_jwt_runtime_is_a_method_mismatch() {
    let issuer = Issuer::start(&[&SigningKey::rsa1()]);
    let gw = jwt_gateway(&issuer, "");
    let sigv4 = vec![format!(
        "Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/bedrock-agentcore/aws4_request, SignedHeaders=host, Signature={}",
        "0".repeat(64)
    )];
    let r = gw.invoke_with(None, "{}", &sigv4);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-amzn-ErrorType"), Some("AccessDeniedException"));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("Authorization method mismatch")
    );
}

#[test]
fn clients_scopes_and_custom_claims_are_enforced() {
    let rsa = SigningKey::rsa1();
    let issuer = Issuer::start(&[&rsa]);
    let strict = format!(
        r#"
[[runtimes]]
name = "strict"
[runtimes.auth]
mode = "jwt"
discovery_url = "{}"
allowed_clients = ["app-1"]
allowed_scopes = ["agent:invoke"]
required_claims = [{{ name = "tenant", equals = "acme" }}, {{ name = "groups", contains_any = ["ops", "dev"] }}]
"#,
        issuer.discovery_url()
    );
    let gw = jwt_gateway(&issuer, &strict);
    let base = json!({
        "iss": issuer.issuer(), "client_id": "app-1", "scope": "openid agent:invoke",
        "tenant": "acme", "groups": ["dev"],
        "exp": issuer.claims("x", AUD, 300)["exp"],
    });
    let call = |claims: &Value| {
        gw.post(
            "/runtimes/strict/invocations",
            None,
            "{}",
            &bearer(&rsa.sign(claims)),
        )
    };
    // Cognito-style access token: client_id, no aud, no sub.
    let r = call(&base);
    assert_eq!(r.status, 200, "{}", r.body_text());
    for (key, value) in [
        ("client_id", json!("app-2")),
        ("scope", json!("openid")),
        ("tenant", json!("other")),
        ("groups", json!(["sales"])),
    ] {
        let mut c = base.clone();
        c[key] = value;
        assert_eq!(call(&c).status, 401, "{key}");
    }
    let sessions = gw.sessions();
    assert_eq!(
        sessions[0]["principal"],
        format!("jwt:{}|client:app-1", issuer.issuer())
    );
}

#[test]
fn a_browser_bearer_subprotocol_authenticates_a_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let rsa = SigningKey::rsa1();
    let issuer = Issuer::start(&[&rsa]);
    let gw = jwt_gateway(&issuer, "");
    let token = rsa.sign(&issuer.claims("carol", AUD, 300));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = format!("ws://{}/ws", gw.http)
            .into_client_request()
            .unwrap();
        let protocols = format!(
            "base64UrlBearerAuthorization.{}, base64UrlBearerAuthorization",
            B64.encode(&token)
        );
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            "base64UrlBearerAuthorization"
        );
        ws.send(Message::text("hi")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        // Without a token the upgrade is refused.
        let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http)).await;
        assert!(refused.is_err());
    });
    assert_eq!(
        gw.sessions()[0]["principal"],
        format!("jwt:{}|carol", issuer.issuer())
    );
}

#[test]
fn only_contract_and_allow_listed_headers_reach_the_backend() {
    let rsa = SigningKey::rsa1();
    let issuer = Issuer::start(&[&rsa]);
    let gw = Gateway::start(&format!(
        r#"
[limits]
requests_per_second_per_principal = 5
[[runtimes]]
name = "default"
request_header_allowlist = ["Authorization", "X-Api-Key"]
[runtimes.auth]
mode = "jwt"
discovery_url = "{}"
"#,
        issuer.discovery_url()
    ));
    let token = rsa.sign(&issuer.claims("dora", AUD, 300));
    let headers = vec![
        format!("Authorization: Bearer {token}"),
        "X-Api-Key: k-1".to_owned(),
        "Cookie: session=secret".to_owned(),
        "X-Amz-Date: 20260101T000000Z".to_owned(),
        "X-Amzn-Other: no".to_owned(),
        "X-Amzn-Bedrock-AgentCore-Runtime-Custom-Tenant: acme".to_owned(),
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
    ];
    let r = gw.invoke_with(None, r#"{"echo_headers":true}"#, &headers);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let seen = &r.json()["headers"];
    assert_eq!(
        seen["authorization"],
        format!("Bearer {token}"),
        "allow-listed on a JWT runtime"
    );
    assert_eq!(seen["x-api-key"], "k-1");
    assert_eq!(
        seen["x-amzn-bedrock-agentcore-runtime-custom-tenant"],
        "acme"
    );
    assert_eq!(
        seen["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert!(seen["x-amzn-bedrock-agentcore-runtime-request-id"].is_string());
    for gone in ["cookie", "x-amz-date", "x-amzn-other", "user-agent"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the backend");
    }
    // Five requests per second for this principal: a burst beyond that is throttled.
    let throttled = (0..8)
        .map(|_| gw.invoke_with(None, "{}", &bearer(&token)))
        .filter(|r| r.status == 429)
        .count();
    assert!(throttled >= 1, "no request was throttled");
}
