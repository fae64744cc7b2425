use std::time::{Duration, UNIX_EPOCH};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};

use super::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn verifier(service: &str, token: Option<&str>) -> SigV4Verifier {
    let mut v = SigV4Verifier::new(&SigV4Auth {
        regions: vec!["us-east-1".into()],
        credentials_file: "unused".into(),
        credentials: vec![Credential {
            access_key_id: AKID.into(),
            secret_access_key: SECRET.into(),
            session_token: token.map(Into::into),
            principal: "alice".into(),
        }],
        max_clock_skew: Duration::from_secs(300),
        body_memory_bytes: 1024,
    });
    v.service = service.into();
    v
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

/// The IAM ListUsers example of the AWS SigV4 documentation: a known answer, so the verifier
/// agrees with AWS, not merely with aws-sigv4.
#[test]
fn aws_documentation_vector_verifies() {
    let v = verifier("iam", None);
    let p = parts(
        "GET",
        "/?Action=ListUsers&Version=2010-05-08",
        &[
            ("host", "iam.amazonaws.com"),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("x-amz-date", "20150830T123600Z"),
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            ),
        ],
    );
    let now = parse::amz_date("20150830T123700Z").unwrap();
    let pending = v.begin(&p, now).unwrap();
    assert_eq!(
        pending.verify(EMPTY_SHA256).unwrap().as_str(),
        "sigv4:alice"
    );
    // One byte of body that was not signed: refused.
    let one = hex::encode(Sha256::digest(b"x"));
    assert_eq!(pending.verify(&one).unwrap_err(), AuthFailure::BadSignature);
}

/// Signs like an AWS SDK would (aws-sigv4 on the client side), returns the request parts.
fn signed(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
    token: Option<&str>,
    presign: Option<Duration>,
) -> Parts {
    let identity =
        aws_credential_types::Credentials::new(AKID, SECRET, token.map(Into::into), None, "t")
            .into();
    let mut settings = SigningSettings::default();
    if let Some(exp) = presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(exp);
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable_body = if presign.is_some() {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Bytes(body)
    };
    let req = SignableRequest::new(method, uri, headers.iter().copied(), signable_body).unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut request = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut request = request.body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    request.into_parts().0
}

const ARN_PATH: &str = "/runtimes/arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A123456789012%3Aruntime%2Fdefault/invocations?qualifier=DEFAULT";

#[test]
fn sdk_style_request_round_trips_and_tampering_is_refused() {
    let v = verifier(SERVICE, None);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let body = br#"{"prompt":"hi"}"#;
    let hash = hex::encode(Sha256::digest(body));
    let headers = [
        ("host", "gateway.example:8080"),
        ("content-type", "application/json"),
        (
            "x-amzn-bedrock-agentcore-runtime-session-id",
            "s-0123456789abcdef0123456789abcdef",
        ),
    ];
    let p = signed("POST", ARN_PATH, &headers, body, now, None, None);
    assert_eq!(
        v.begin(&p, now).unwrap().verify(&hash).unwrap().as_str(),
        "sigv4:alice"
    );

    // Tampered body.
    let other = hex::encode(Sha256::digest(br#"{"prompt":"ho"}"#));
    assert_eq!(
        v.begin(&p, now).unwrap().verify(&other).unwrap_err(),
        AuthFailure::BadSignature
    );
    // Tampered signed header.
    let mut t = p.clone();
    t.headers
        .insert("content-type", "text/plain".parse().unwrap());
    assert_eq!(
        v.begin(&t, now).unwrap().verify(&hash).unwrap_err(),
        AuthFailure::BadSignature
    );
    // Tampered query.
    let mut t = p.clone();
    t.uri = ARN_PATH.replace("DEFAULT", "OTHER").parse().unwrap();
    assert_eq!(
        v.begin(&t, now).unwrap().verify(&hash).unwrap_err(),
        AuthFailure::BadSignature
    );
    // An unsigned header may change.
    let mut t = p.clone();
    t.headers.insert("user-agent", "other".parse().unwrap());
    assert!(v.begin(&t, now).unwrap().verify(&hash).is_ok());
    // Replayed outside the window.
    let later = now + Duration::from_secs(301);
    assert_eq!(v.begin(&p, later).err(), Some(AuthFailure::RequestTime));
    // Wrong secret.
    let mut wrong = verifier(SERVICE, None);
    for c in wrong.keys.values_mut() {
        c.secret_access_key = "another-secret-key-0000000000000".into();
    }
    assert_eq!(
        wrong.begin(&p, now).unwrap().verify(&hash).unwrap_err(),
        AuthFailure::BadSignature
    );
}

#[test]
fn session_tokens_must_match_the_credential() {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let headers = [("host", "gw:8080")];
    let with_token = signed("GET", "/ping", &headers, b"", now, Some("TOKEN123"), None);
    let v = verifier(SERVICE, Some("TOKEN123"));
    assert!(
        v.begin(&with_token, now)
            .unwrap()
            .verify(EMPTY_SHA256)
            .is_ok()
    );
    let plain = signed("GET", "/ping", &headers, b"", now, None, None);
    assert_eq!(v.begin(&plain, now).err(), Some(AuthFailure::SessionToken));
    assert_eq!(
        verifier(SERVICE, None).begin(&with_token, now).err(),
        Some(AuthFailure::SessionToken)
    );
}

#[test]
fn presigned_websocket_url_round_trips() {
    let v = verifier(SERVICE, None);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let uri = "/runtimes/default/ws?X-Amzn-Bedrock-AgentCore-Runtime-Session-Id=s-0123456789abcdef0123456789abcdef";
    let p = signed(
        "GET",
        uri,
        &[("host", "gw:8080")],
        b"",
        now,
        None,
        Some(Duration::from_secs(300)),
    );
    assert!(p.uri.query().unwrap().contains("X-Amz-Signature="));
    assert!(v.begin(&p, now).unwrap().verify(EMPTY_SHA256).is_ok());
    // Still good within its lifetime, refused after it.
    assert!(v.begin(&p, now + Duration::from_secs(250)).is_ok());
    assert_eq!(
        v.begin(&p, now + Duration::from_secs(700)).err(),
        Some(AuthFailure::RequestTime)
    );
    // Another session id in the URL: refused.
    let mut t = p.clone();
    t.uri = p
        .uri
        .to_string()
        .replace("s-0123", "s-9999")
        .parse()
        .unwrap();
    assert_eq!(
        v.begin(&t, now).unwrap().verify(EMPTY_SHA256).unwrap_err(),
        AuthFailure::BadSignature
    );
}

#[test]
fn a_presigned_url_may_sign_the_host_without_its_port() {
    // The bedrock-agentcore SDK presigns shell URLs for the bare hostname; the request then
    // arrives with `Host: name:port`. Header-signed requests get no such leniency.
    let v = verifier(SERVICE, None);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let uri = "/runtimes/default/ws/shells?shellId=s1";
    let mut p = signed(
        "GET",
        uri,
        &[("host", "gw")],
        b"",
        now,
        None,
        Some(Duration::from_secs(300)),
    );
    p.headers.insert("host", "gw:8080".parse().unwrap());
    assert!(v.begin(&p, now).unwrap().verify(EMPTY_SHA256).is_ok());
    p.headers.insert("host", "other:8080".parse().unwrap());
    assert_eq!(
        v.begin(&p, now).unwrap().verify(EMPTY_SHA256).unwrap_err(),
        AuthFailure::BadSignature
    );
    let mut h = signed("GET", "/ping", &[("host", "gw")], b"", now, None, None);
    h.headers.insert("host", "gw:8080".parse().unwrap());
    assert_eq!(
        v.begin(&h, now).unwrap().verify(EMPTY_SHA256).unwrap_err(),
        AuthFailure::BadSignature
    );
}

#[test]
fn scope_and_key_checks() {
    let v = verifier(SERVICE, None);
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let auth = |akid: &str, region: &str, service: &str| {
        format!(
            "AWS4-HMAC-SHA256 Credential={akid}/20270115/{region}/{service}/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
            "0".repeat(64)
        )
    };
    let p = |a: String| {
        parts(
            "GET",
            "/",
            &[
                ("host", "h"),
                ("x-amz-date", "20270115T080000Z"),
                ("authorization", &a),
            ],
        )
    };
    assert_eq!(
        v.begin(&p(auth("AKIDUNKNOWN00000", "us-east-1", SERVICE)), now)
            .err(),
        Some(AuthFailure::UnknownAccessKey)
    );
    assert_eq!(
        v.begin(&p(auth(AKID, "eu-west-1", SERVICE)), now).err(),
        Some(AuthFailure::CredentialScope)
    );
    assert_eq!(
        v.begin(&p(auth(AKID, "us-east-1", "s3")), now).err(),
        Some(AuthFailure::CredentialScope)
    );
    assert_eq!(
        v.begin(&parts("GET", "/", &[("host", "h")]), now).err(),
        Some(AuthFailure::Missing)
    );
}
