//! External SSO issuers through a real `gatehouse serve`: a JWKS served by a real HTTP server on loopback (with a
//! fetch counter, key rotation and outages) or PEM public key files, and tokens signed here with jwt-simple.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{gatehouse, Api, Server};
use jwt_simple::prelude::{
    Claims, Clock, ECDSAP256KeyPairLike, ECDSAP256PublicKeyLike, ES256KeyPair, HS256Key, JWTClaims, MACLike,
    RS256KeyPair, RSAKeyPairLike, UnixTimeStamp,
};
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
use reqwest::Method;
use serde_json::{json, Map, Value};
use testkit::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://sso.example.com";
const ADMIN: &str = "ada@example.com";

type TokenClaims = JWTClaims<Map<String, Value>>;

/// One RSA key per test binary (generating one takes a moment), with kid `r1`.
fn rsa() -> &'static RS256KeyPair {
    static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
    KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap().with_key_id("r1"))
}

fn ec(kid: &str) -> ES256KeyPair {
    ES256KeyPair::generate().with_key_id(kid)
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

fn rsa_jwk(key: &RS256KeyPair, kid: &str) -> Value {
    let components = key.public_key().to_components();
    json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": b64(&components.n), "e": b64(&components.e)})
}

fn ec_jwk(key: &ES256KeyPair, kid: &str) -> Value {
    let point = key.public_key().public_key().to_bytes_uncompressed();
    json!({"kty": "EC", "crv": "P-256", "use": "sig", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..])})
}

fn claims_with(custom: Value) -> TokenClaims {
    let Value::Object(custom) = custom else { panic!("claims must be an object") };
    Claims::with_custom_claims(custom, jwt_simple::prelude::Duration::from_mins(10))
        .with_issuer(ISSUER)
        .with_audience("gatehouse")
}

fn claims() -> TokenClaims {
    claims_with(json!({ "email": ADMIN }))
}

fn now() -> UnixTimeStamp {
    Clock::now_since_epoch()
}

fn minutes(count: u64) -> UnixTimeStamp {
    jwt_simple::prelude::Duration::from_mins(count)
}

/// A JWKS endpoint on loopback: counts fetches, can publish new keys, fail with 500, or stop listening.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicU64>,
    keys: Arc<Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let fetches = Arc::new(AtomicU64::new(0));
        let keys = Arc::new(Mutex::new(keys));
        let failing = Arc::new(AtomicBool::new(false));
        let (counter, published, failure) = (fetches.clone(), keys.clone(), failing.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (counter, published, failure) = (counter.clone(), published.clone(), failure.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let response = if !request.starts_with(b"GET /.well-known/jwks.json ") {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                    } else {
                        counter.fetch_add(1, Ordering::SeqCst);
                        if failure.load(Ordering::SeqCst) {
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                .to_string()
                        } else {
                            let body = json!({ "keys": *published.lock().unwrap() }).to_string();
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                                 connection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                    };
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { url, fetches, keys, failing, accept }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Stops listening: connections are refused from now on.
    async fn stop(&self) {
        self.accept.abort();
        while !self.accept.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `gatehouse serve` trusting the SSO issuer, with `ada@example.com` as the bootstrap admin and no leeway.
fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("GATEHOUSE_BOOTSTRAP_ADMIN", ADMIN),
        ("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER),
        ("GATEHOUSE_AUTH_LEEWAY_SECS", "0"),
    ];
    all.extend_from_slice(env);
    Server::start(db, &all)
}

async fn me(api: &Api, token: &str) -> (u16, Value) {
    api.get("/api/v1/me", Some(token)).await
}

/// The request is refused as unauthenticated, with a Bearer challenge naming `invalid_token`.
async fn assert_rejected(api: &Api, name: &str, token: &str) {
    let (status, headers, problem) = api.call(Method::GET, "/api/v1/me", Some(token), None).await;
    assert_eq!(status, 401, "{name}: {problem}");
    let challenge = headers.get("www-authenticate").map(|value| value.to_str().unwrap().to_string());
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="gatehouse", error="invalid_token""#), "{name}");
    assert_eq!(problem["code"], "unauthenticated", "{name}");
}

/// No log line contains any of the tokens (or their signatures).
fn assert_no_token_logged(server: &Server, logged: &mut Vec<String>, tokens: &[&str]) {
    logged.extend(server.drain_logs());
    for token in tokens {
        let signature = token.rsplit('.').next().unwrap();
        for line in logged.iter() {
            assert!(!line.contains(token), "a token was logged: {line}");
            assert!(signature.len() < 16 || !line.contains(signature), "a signature was logged: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_and_es256_tokens_of_the_jwks_are_accepted_and_everything_else_gets_401() {
    let ec_key = ec("e1");
    let jwks = JwksServer::start(vec![rsa_jwk(rsa(), "r1"), ec_jwk(&ec_key, "e1")]).await;
    let db = TestDb::sqlite();
    let server = start(&db, &[("GATEHOUSE_AUTH_SSO_JWKS_URL", &jwks.url)]);
    let api = Api::new(&server);
    assert_eq!(jwks.fetches(), 1, "the JWKS is fetched once at start");

    let rs256 = rsa().sign(claims()).unwrap();
    let es256 = ec_key.sign(claims()).unwrap();
    for (name, token) in [("RS256", &rs256), ("ES256", &es256)] {
        let (status, body) = me(&api, token).await;
        assert_eq!(
            (status, body["email"].as_str(), body["role"].as_str()),
            (200, Some(ADMIN), Some("admin")),
            "{name}"
        );
    }

    let mut expired = claims();
    expired.expires_at = Some(now() - minutes(2));
    let mut no_exp = claims();
    no_exp.expires_at = None;
    let parts: Vec<&str> = rs256.split('.').collect();
    let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT","kid":"r1"}"#), parts[1]);
    let rsa_public_pem = rsa().public_key().to_pem().unwrap();
    let hs256_confusion =
        HS256Key::from_bytes(rsa_public_pem.as_bytes()).with_key_id("r1").authenticate(claims()).unwrap();
    let unknown_kid = ES256KeyPair::from_bytes(&ec_key.to_bytes()).unwrap().with_key_id("e9").sign(claims()).unwrap();
    let not_in_jwks = ec("e1").sign(claims()).unwrap();
    let cases = [
        ("wrong iss", rsa().sign(claims().with_issuer("https://other.example.com")).unwrap()),
        ("local iss", ec_key.sign(claims().with_issuer("gatehouse-local")).unwrap()),
        ("wrong aud", rsa().sign(claims().with_audience("another-service")).unwrap()),
        ("expired", ec_key.sign(expired).unwrap()),
        ("nbf in the future", rsa().sign(claims().invalid_before(now() + minutes(2))).unwrap()),
        ("missing exp", ec_key.sign(no_exp).unwrap()),
        ("missing email", rsa().sign(claims_with(json!({"name": "Ada"}))).unwrap()),
        ("alg none", unsigned),
        ("HS256 signed with the RSA public key", hs256_confusion),
        ("unknown kid", unknown_kid),
        ("signed by a key not in the JWKS", not_in_jwks),
    ];
    for (name, token) in &cases {
        assert_rejected(&api, name, token).await;
    }
    assert_eq!(jwks.fetches(), 1, "the unknown kid came within the minimum interval after the first fetch");

    let mut logged = Vec::new();
    let mut tokens: Vec<&str> = cases.iter().map(|(_, token)| token.as_str()).collect();
    tokens.extend([rs256.as_str(), es256.as_str()]);
    assert_no_token_logged(&server, &mut logged, &tokens);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_email_claim_is_configurable() {
    let key = ec("e1");
    let jwks = JwksServer::start(vec![ec_jwk(&key, "e1")]).await;
    let db = TestDb::sqlite();
    let server = start(&db, &[("GATEHOUSE_AUTH_SSO_JWKS_URL", &jwks.url), ("GATEHOUSE_AUTH_EMAIL_CLAIM", "upn")]);
    let api = Api::new(&server);
    let upn = key.sign(claims_with(json!({"upn": "Ada@Example.com"}))).unwrap();
    let (status, body) = me(&api, &upn).await;
    assert_eq!((status, body["email"].as_str()), (200, Some(ADMIN)));
    assert_rejected(&api, "email but no upn", &key.sign(claims()).unwrap()).await;
    assert_rejected(&api, "upn not an email", &key.sign(claims_with(json!({"upn": "ada"}))).unwrap()).await;

    // Local tokens keep their `email` claim.
    let local = common::issue_token(&db, "root@example.com", "member", "1h");
    assert_eq!(me(&api, &local).await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_fetched_once_and_a_flood_of_unknown_kids_fetches_at_most_once() {
    let old = ec("old");
    let jwks = JwksServer::start(vec![ec_jwk(&old, "old")]).await;
    let db = TestDb::sqlite();
    let server =
        start(&db, &[("GATEHOUSE_AUTH_SSO_JWKS_URL", &jwks.url), ("GATEHOUSE_AUTH_JWKS_MIN_REFRESH_SECS", "3")]);
    let api = Api::new(&server);
    let old_token = old.sign(claims()).unwrap();
    assert_eq!(me(&api, &old_token).await.0, 200);
    assert_eq!(jwks.fetches(), 1);

    // The issuer rotates: the new key replaces the old one, and tokens signed with it start arriving.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let new = ec("new");
    jwks.publish(vec![ec_jwk(&new, "new")]);
    let new_token = new.sign(claims()).unwrap();
    assert_eq!(me(&api, &new_token).await.0, 200, "a token of the newly published key");
    assert_eq!(jwks.fetches(), 2, "exactly one refetch");
    assert_eq!(me(&api, &new_token).await.0, 200);
    assert_eq!(jwks.fetches(), 2, "a known kid fetches nothing");
    assert_rejected(&api, "the retired key", &old_token).await;

    // Twenty requests with unknown kids at once, past the minimum interval: one fetch between them.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let flood = |round: u32| {
        (0..20)
            .map(|i| {
                let api = api.clone();
                let token = ES256KeyPair::from_bytes(&new.to_bytes())
                    .unwrap()
                    .with_key_id(&format!("ghost-{round}-{i}"))
                    .sign(claims())
                    .unwrap();
                tokio::spawn(async move { me(&api, &token).await.0 })
            })
            .collect::<Vec<_>>()
    };
    for request in flood(1) {
        assert_eq!(request.await.unwrap(), 401);
    }
    assert_eq!(jwks.fetches(), 3, "twenty unknown kids, one fetch");
    // And within the minimum interval, none.
    for request in flood(2) {
        assert_eq!(request.await.unwrap(), 401);
    }
    assert_eq!(jwks.fetches(), 3, "unknown kids within the minimum interval fetch nothing");
    assert_eq!(me(&api, &new_token).await.0, 200);
}

/// Waits for the warning of a failed JWKS refresh, keeping every line read in `logged`.
async fn wait_for_refresh_failure(server: &Server, logged: &mut Vec<String>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = server.drain_logs();
        let warned = fresh.iter().any(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| {
                event["level"] == "WARN" && event["message"] == "JWKS refresh failed; keeping the keys in use"
            })
        });
        logged.extend(fresh);
        if warned {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no refresh failure logged: {logged:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jwks_that_fails_or_is_down_at_a_refresh_keeps_the_old_keys() {
    let key = ec("e1");
    let jwks = JwksServer::start(vec![ec_jwk(&key, "e1")]).await;
    let db = TestDb::sqlite();
    let server = start(&db, &[("GATEHOUSE_AUTH_SSO_JWKS_URL", &jwks.url), ("GATEHOUSE_AUTH_JWKS_REFRESH_SECS", "1")]);
    let api = Api::new(&server);
    let token = key.sign(claims()).unwrap();
    assert_eq!(me(&api, &token).await.0, 200);

    // Periodic refreshes happen.
    let fetched = common::eventually(Duration::from_secs(5), || async { jwks.fetches() >= 3 }).await;
    assert!(fetched, "no periodic refresh: {} fetches", jwks.fetches());

    let mut logged = Vec::new();
    // The endpoint answers 500: the refresh fails, the keys stay.
    jwks.fail(true);
    logged.extend(server.drain_logs());
    wait_for_refresh_failure(&server, &mut logged).await;
    assert_eq!(me(&api, &token).await.0, 200, "the keys were dropped after a failed refresh");

    // The endpoint is gone (connection refused): the same.
    jwks.stop().await;
    wait_for_refresh_failure(&server, &mut logged).await;
    assert_eq!(me(&api, &token).await.0, 200, "the keys were dropped while the JWKS was down");
    assert_no_token_logged(&server, &mut logged, &[&token]);
}

#[tokio::test(flavor = "multi_thread")]
async fn static_pem_public_keys_work_without_a_jwks() {
    let db = TestDb::sqlite();
    let rsa_path = db.data_dir.join("corp-2026.pem");
    let ec_path = db.data_dir.join("ec.pem");
    std::fs::write(&rsa_path, rsa().public_key().to_pem().unwrap()).unwrap();
    let ec_key = ec("ec-key");
    std::fs::write(&ec_path, ec_key.public_key().to_pem().unwrap()).unwrap();
    let keys = format!("{},{}#ec-key", rsa_path.display(), ec_path.display());
    let server = start(&db, &[("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", &keys)]);
    let api = Api::new(&server);

    let rsa_key = RS256KeyPair::from_pem(&rsa().to_pem().unwrap()).unwrap();
    let rs256 = rsa_key.clone().with_key_id("corp-2026").sign(claims()).unwrap();
    assert_eq!(me(&api, &rs256).await.0, 200, "RS256, kid from the file name");
    assert_eq!(me(&api, &ec_key.sign(claims()).unwrap()).await.0, 200, "ES256, kid given after #");

    assert_rejected(&api, "no kid with two keys", &rsa_key.clone().sign(claims()).unwrap()).await;
    assert_rejected(&api, "unknown kid", &rsa_key.with_key_id("corp-2025").sign(claims()).unwrap()).await;
    let mut expired = claims();
    expired.expires_at = Some(now() - minutes(2));
    assert_rejected(&api, "expired", &ec_key.sign(expired).unwrap()).await;
}

fn run(env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = gatehouse();
    command.arg("serve").env("GATEHOUSE_DATA_DIR", dir.path()).env("GATEHOUSE_LISTEN", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// The process failed with exactly one line on stderr mentioning `needle`, and did not panic.
fn assert_one_line_failure(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("gatehouse: SSO token issuer: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn a_half_configured_or_unusable_sso_issuer_fails_start_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    std::fs::write(&private, ES256KeyPair::generate().to_pem().unwrap()).unwrap();
    let missing = dir.path().join("missing.pem");
    let private = private.to_str().unwrap();
    let missing = missing.to_str().unwrap();

    let output = run(&[("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER)]);
    assert_one_line_failure(&output, "neither auth_sso_jwks_url nor auth_sso_public_keys");
    let output = run(&[("GATEHOUSE_AUTH_SSO_JWKS_URL", "https://sso.example.com/jwks")]);
    assert_one_line_failure(&output, "auth_sso_issuer is not");
    let output = run(&[("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER), ("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", missing)]);
    assert_one_line_failure(&output, "missing.pem");
    let output = run(&[("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER), ("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", private)]);
    assert_one_line_failure(&output, "private.pem is not an RSA (2048 to 4096 bits) or EC P-256 public key");
    let output = run(&[("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER), ("GATEHOUSE_AUTH_SSO_JWKS_URL", "ftp://example.com/k")]);
    assert_one_line_failure(&output, "is not an http or https URL");
    // Nothing listens on port 1 of loopback: the first fetch fails, and so does the start.
    let output =
        run(&[("GATEHOUSE_AUTH_SSO_ISSUER", ISSUER), ("GATEHOUSE_AUTH_SSO_JWKS_URL", "http://127.0.0.1:1/jwks")]);
    assert_one_line_failure(&output, "cannot fetch the JWKS from http://127.0.0.1:1/jwks: request failed");
}
