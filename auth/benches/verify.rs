//! Verification cost per request: a JWT with a cached key (RS256 and ES256), and SigV4 with a
//! 1 KB body (hashing included). `cargo bench -p auth`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::jwt::JwtAuthorizer;
use auth::sigv4::{SigV4Verifier, SignedBody};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use conf::{Credential, JwtAuth, SigV4Auth};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway/tests/fixtures");
const ISSUER: &str = "https://issuer.example";

fn jwt(c: &mut Criterion) {
    let cfg = JwtAuth {
        discovery_url: format!("{ISSUER}/.well-known/openid-configuration"),
        allowed_clients: vec![],
        allowed_audiences: vec!["bench".into()],
        allowed_scopes: vec![],
        required_claims: vec![],
        leeway: Duration::from_secs(60),
        refresh_interval: Duration::from_secs(3600),
        min_refetch_interval: Duration::from_secs(10),
    };
    let keys = [
        ("rsa1.pem", Algorithm::RS256, "rsa"),
        ("ec1.pem", Algorithm::ES256, "ec"),
    ];
    let mut jwks = JwkSet { keys: vec![] };
    let mut tokens = vec![];
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for (file, alg, kid) in keys {
        let pem = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwks.keys.push(jwk);
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let claims =
            serde_json::json!({ "iss": ISSUER, "sub": "bench", "aud": "bench", "exp": exp });
        tokens.push((kid, jsonwebtoken::encode(&header, &claims, &key).unwrap()));
    }
    let authorizer = Arc::new(JwtAuthorizer::with_keys(&cfg, ISSUER, &jwks));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (kid, token) in &tokens {
        rt.block_on(authorizer.authorize(token)).unwrap();
        // The signature is checked every time (the verified-token cache is emptied first); the
        // key is cached.
        c.bench_function(&format!("jwt/verify_cached_key_{kid}"), |b| {
            b.iter_batched(
                || authorizer.forget_verified_tokens(),
                |()| rt.block_on(authorizer.authorize(black_box(token))).unwrap(),
                criterion::BatchSize::PerIteration,
            )
        });
        // The same token again: answered from the verified-token cache.
        c.bench_function(&format!("jwt/repeat_token_{kid}"), |b| {
            b.iter(|| rt.block_on(authorizer.authorize(black_box(token))).unwrap())
        });
    }
}

fn sigv4(c: &mut Criterion) {
    let (akid, secret) = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
    let verifier = SigV4Verifier::new(&SigV4Auth {
        regions: vec!["us-east-1".into()],
        credentials_file: "unused".into(),
        credentials: vec![Credential {
            access_key_id: akid.into(),
            secret_access_key: secret.into(),
            session_token: None,
            principal: "bench".into(),
        }],
        max_clock_skew: Duration::from_secs(300),
        body_memory_bytes: 1 << 20,
    });
    let body = vec![b'x'; 1024];
    let now = SystemTime::now();
    let uri = "/runtimes/default/invocations";
    let headers = [
        ("host", "gateway:8080"),
        ("content-type", "application/json"),
        (
            "x-amzn-bedrock-agentcore-runtime-session-id",
            "bench-0123456789abcdef0123456789abcdef",
        ),
    ];
    let identity = aws_credential_types::Credentials::new(akid, secret, None, None, "bench").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock-agentcore")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        uri,
        headers.iter().copied(),
        SignableBody::Bytes(&body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut request = http::Request::post(uri);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let mut request = request.body(()).unwrap();
    instructions.apply_to_request_http1x(&mut request);
    let parts = request.into_parts().0;

    c.bench_function("sigv4/verify_1kb_body", |b| {
        b.iter(|| {
            let pending = verifier.begin(black_box(&parts), now).unwrap();
            let mut held = SignedBody::new(1 << 20);
            held.push(black_box(&body)).unwrap();
            let (hash, _) = held.finish().unwrap();
            pending.verify(&hash).unwrap()
        })
    });
}

criterion_group!(verify, jwt, sigv4);
criterion_main!(verify);
