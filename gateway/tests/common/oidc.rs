//! A local OIDC issuer for the tests: discovery document + JWKS over HTTP on a loopback port,
//! with real RSA and EC keys that a test can rotate, and counters of what was fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A signing key of the issuer.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Jwk,
}

impl SigningKey {
    fn load(kid: &str, file: &str, alg: Algorithm) -> Self {
        let pem = std::fs::read(format!("{FIXTURES}/{file}")).unwrap();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    pub fn rsa1() -> Self {
        Self::load("rsa-1", "rsa1.pem", Algorithm::RS256)
    }
    pub fn rsa2() -> Self {
        Self::load("rsa-2", "rsa2.pem", Algorithm::RS256)
    }
    pub fn ec1() -> Self {
        Self::load("ec-1", "ec1.pem", Algorithm::ES256)
    }

    /// A token with these claims, signed by this key, naming it in `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// The same, naming another `kid` in the header.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

struct IssuerState {
    base: String,
    jwks: RwLock<Value>,
    down: AtomicBool,
    discovery_fetches: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

/// The issuer; stops when dropped.
pub struct Issuer {
    state: Arc<IssuerState>,
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Issuer {
    pub fn start(keys: &[&SigningKey]) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IssuerState {
            base: format!("http://{addr}"),
            jwks: RwLock::new(Value::Null),
            down: AtomicBool::new(false),
            discovery_fetches: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(Arc::clone(&state));
        runtime.spawn(async move { axum::serve(listener, app).await });
        let issuer = Self {
            state,
            addr,
            _runtime: runtime,
        };
        issuer.set_keys(keys);
        issuer
    }

    /// The `iss` the issuer's tokens carry.
    pub fn issuer(&self) -> String {
        self.state.base.clone()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.base)
    }

    /// Publishes exactly these keys from now on.
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        let set = json!({ "keys": keys.iter().map(|k| serde_json::to_value(&k.jwk).unwrap()).collect::<Vec<_>>() });
        *self.state.jwks.write().unwrap() = set;
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Claims for `sub`, audience `aud`, expiring in `exp_in` seconds.
    pub fn claims(&self, sub: &str, aud: &str, exp_in: i64) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        json!({ "iss": self.issuer(), "sub": sub, "aud": aud, "iat": now, "exp": now + exp_in })
    }
}

async fn discovery(State(s): State<Arc<IssuerState>>) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "issuer": s.base,
        "jwks_uri": format!("{}/jwks", s.base),
        "authorization_endpoint": format!("{}/authorize", s.base),
        "token_endpoint": format!("{}/token", s.base),
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IssuerState>>) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let body = s.jwks.read().unwrap().clone();
    axum::Json(body).into_response()
}
