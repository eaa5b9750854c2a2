//! Verification keys of an external SSO issuer: JWK parsing, PEM public key files, and the JWKS cache.
//!
//! A key verifies exactly one algorithm, fixed by its type: RSA keys verify RS256, EC P-256 keys verify ES256.
//! The [`JwksCache`] fetches the issuer's JWKS at start, then every refresh interval, and once more when a token
//! names a key id it does not know (coalesced, and at most once per minimum interval). A failed fetch keeps the keys
//! in use.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Decoder};
use serde::de::DeserializeOwned;

/// The largest JWKS response accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Connect and total timeout of one JWKS fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A public key and the one algorithm it verifies.
#[derive(Clone)]
pub enum VerifyingKey {
    /// An RSA key (2048 to 4096 bits, e = 65537): RS256.
    Rs256(Box<RS256PublicKey>),
    /// An EC P-256 key: ES256.
    Es256(ES256PublicKey),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyingKey({})", self.algorithm())
    }
}

impl VerifyingKey {
    /// The JWS algorithm this key verifies.
    pub fn algorithm(&self) -> &'static str {
        match self {
            Self::Rs256(_) => "RS256",
            Self::Es256(_) => "ES256",
        }
    }

    /// An RSA or EC P-256 public key in PEM (`PUBLIC KEY`, or `RSA PUBLIC KEY` for PKCS#1).
    pub fn from_pem(pem: &str) -> Option<Self> {
        RS256PublicKey::from_pem(pem)
            .map(|key| Self::Rs256(Box::new(key)))
            .or_else(|_| ES256PublicKey::from_pem(pem).map(Self::Es256))
            .ok()
    }

    /// Verifies the token's signature with this key and its claims with `options`.
    pub fn verify_token<C: DeserializeOwned + Serialize>(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<C>, jwt_simple::Error> {
        match self {
            Self::Rs256(key) => key.verify_token::<C>(token, Some(options)),
            Self::Es256(key) => key.verify_token::<C>(token, Some(options)),
        }
    }
}

/// An issuer's keys, by key id.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
}

/// What a key id finds in a [`KeySet`].
#[derive(Debug)]
pub enum Lookup {
    /// The key to verify with.
    Found(Arc<VerifyingKey>),
    /// No key has that id (or the token names none and the set is empty).
    Unknown,
    /// The token names no key id and the set holds more than one key.
    Ambiguous,
}

impl KeySet {
    /// Adds a key; `false` (and nothing added) when another key already has this id.
    pub fn insert(&mut self, kid: Option<String>, key: VerifyingKey) -> bool {
        let key = Arc::new(key);
        if let Some(kid) = kid {
            if self.by_kid.contains_key(&kid) {
                return false;
            }
            self.by_kid.insert(kid, key.clone());
        }
        self.all.push(key);
        true
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key a token's `kid` names. A token without `kid` is accepted only when the set holds exactly one key.
    pub fn find(&self, kid: Option<&str>) -> Lookup {
        match kid {
            Some(kid) => self.by_kid.get(kid).cloned().map_or(Lookup::Unknown, Lookup::Found),
            None => match self.all.as_slice() {
                [] => Lookup::Unknown,
                [only] => Lookup::Found(only.clone()),
                _ => Lookup::Ambiguous,
            },
        }
    }
}

/// A JWK that was not taken, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Its `kid`, when it has one.
    pub kid: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

/// Why a JWKS document could not be used at all.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not a JSON object with a `keys` array.
    #[error("not a JWK set (a JSON object with a \"keys\" array): {0}")]
    Malformed(serde_json::Error),
}

#[derive(Deserialize)]
struct JwkSetDocument {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWK set: the signing keys it holds (RSA for RS256, EC P-256 for ES256), and the keys it skipped.
///
/// Skipped: keys whose `use` is not `sig` (or whose `key_ops` lack `verify`), other key types and curves, keys
/// naming another algorithm, malformed keys, and keys repeating an earlier key's id.
pub fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<SkippedKey>), JwksError> {
    let document: JwkSetDocument = serde_json::from_slice(body).map_err(JwksError::Malformed)?;
    let mut keys = KeySet::default();
    let mut skipped = Vec::new();
    for value in document.keys {
        let kid = value.get("kid").and_then(serde_json::Value::as_str).map(str::to_string);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|error| format!("malformed JWK: {error}"))
            .and_then(|jwk| parse_jwk(&jwk));
        match parsed {
            Ok(key) => {
                if !keys.insert(kid.clone(), key) {
                    skipped.push(SkippedKey { kid, reason: "repeats the key id of an earlier key".into() });
                }
            }
            Err(reason) => skipped.push(SkippedKey { kid, reason }),
        }
    }
    Ok((keys, skipped))
}

fn parse_jwk(jwk: &Jwk) -> Result<VerifyingKey, String> {
    if let Some(usage) = &jwk.usage {
        if usage != "sig" {
            return Err(format!("use is {usage:?}, not \"sig\""));
        }
    }
    if let Some(operations) = &jwk.key_ops {
        if !operations.iter().any(|operation| operation == "verify") {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let require_alg = |expected: &str| match jwk.alg.as_deref() {
        None => Ok(()),
        Some(alg) if alg == expected => Ok(()),
        Some(alg) => Err(format!("alg {alg:?} is not supported (only RS256 and ES256)")),
    };
    match jwk.kty.as_str() {
        "RSA" => {
            require_alg("RS256")?;
            let n = base64url(jwk.n.as_deref(), "n")?;
            let e = base64url(jwk.e.as_deref(), "e")?;
            RS256PublicKey::from_components(&n, &e)
                .map(|key| VerifyingKey::Rs256(Box::new(key)))
                .map_err(|error| format!("not a usable RSA public key: {error}"))
        }
        "EC" => {
            match jwk.crv.as_deref() {
                Some("P-256") => {}
                Some(crv) => return Err(format!("curve {crv:?} is not supported (only P-256)")),
                None => return Err("EC key without crv".into()),
            }
            require_alg("ES256")?;
            let x = base64url(jwk.x.as_deref(), "x")?;
            let y = base64url(jwk.y.as_deref(), "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates x and y must be 32 bytes each".into());
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ES256PublicKey::from_bytes(&point)
                .map(VerifyingKey::Es256)
                .map_err(|_| "x and y are not a point on P-256".to_string())
        }
        other => Err(format!("key type {other:?} is not supported (only RSA and EC)")),
    }
}

fn base64url(value: Option<&str>, name: &str) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing {name}"))?;
    Base64UrlSafeNoPadding::decode_to_vec(value.trim_end_matches('='), None)
        .ok()
        .filter(|bytes| !bytes.is_empty())
        .ok_or_else(|| format!("{name} is not base64url"))
}

/// Why a PEM public key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PemKeyError {
    /// The file could not be read.
    #[error("SSO public key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("SSO public key {0} is not an RSA (2048 to 4096 bits) or EC P-256 public key in PEM")]
    Invalid(String),
    /// Two files have the same key id.
    #[error("SSO public keys: the key id {0:?} is used twice")]
    DuplicateKid(String),
}

/// A PEM public key file and its key id: `PATH#KID`, or `PATH` whose key id is the file name without extension.
pub fn parse_key_spec(spec: &str) -> (PathBuf, String) {
    match spec.rsplit_once('#') {
        Some((path, kid)) if !kid.is_empty() => (PathBuf::from(path), kid.to_string()),
        _ => {
            let path = PathBuf::from(spec.trim_end_matches('#'));
            let kid = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
            (path, kid)
        }
    }
}

/// Loads PEM public key files (see [`parse_key_spec`]) into a key set.
pub fn load_pem_keys(specs: &[String]) -> Result<KeySet, PemKeyError> {
    let mut keys = KeySet::default();
    for spec in specs {
        let (path, kid) = parse_key_spec(spec);
        let key = load_pem_key(&path)?;
        if !keys.insert(Some(kid.clone()), key) {
            return Err(PemKeyError::DuplicateKid(kid));
        }
    }
    Ok(keys)
}

fn load_pem_key(path: &Path) -> Result<VerifyingKey, PemKeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read_to_string(path).map_err(|source| PemKeyError::Io { path: shown.clone(), source })?;
    VerifyingKey::from_pem(&pem).ok_or(PemKeyError::Invalid(shown))
}

/// Why fetching the JWKS failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request failed (connection, TLS, timeout).
    #[error("request failed: {}", chain(.0))]
    Request(reqwest::Error),
    /// The endpoint answered with an error status.
    #[error("the endpoint answered {0}")]
    Status(reqwest::StatusCode),
    /// The response is larger than [`MAX_JWKS_BYTES`].
    #[error("the response is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The response is not a JWK set.
    #[error(transparent)]
    Jwks(#[from] JwksError),
    /// The JWK set holds no usable signing key.
    #[error("the JWK set holds no usable RS256 or ES256 signing key{}", describe_skipped(.0))]
    NoUsableKey(Vec<SkippedKey>),
}

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn describe_skipped(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let reasons: Vec<String> =
        skipped.iter().map(|key| format!("{}: {}", key.kid.as_deref().unwrap_or("(no kid)"), key.reason)).collect();
    format!(" (skipped {})", reasons.join("; "))
}

/// Why the JWKS cache could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JwksSetupError {
    /// The URL is not an http or https URL.
    #[error("auth_sso_jwks_url {0:?} is not an http or https URL")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("cannot build the JWKS HTTP client: {}", chain(.0))]
    Client(reqwest::Error),
    /// The first fetch failed.
    #[error("cannot fetch the JWKS from {url}: {source}")]
    Fetch {
        /// The JWKS URL.
        url: String,
        /// The cause.
        source: FetchError,
    },
}

/// How a [`JwksCache`] refreshes.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The JWKS endpoint (http or https).
    pub url: String,
    /// Time between periodic refreshes.
    pub refresh_interval: Duration,
    /// Least time between two fetches caused by unknown key ids (periodic refreshes are not held back).
    pub min_refresh_interval: Duration,
    /// Connect and total timeout of one fetch.
    pub timeout: Duration,
}

/// The keys of a JWKS endpoint, cached; see the module documentation.
pub struct JwksCache {
    url: reqwest::Url,
    client: reqwest::Client,
    config: JwksConfig,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching, so concurrent requests share one fetch.
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Fetches finished so far, successful or not: a request that sees it change while it waits for the lock knows
    /// someone fetched for it.
    fetches: AtomicU64,
    /// Skipped keys already logged, so each is logged once.
    logged_skips: Mutex<HashSet<(Option<String>, String)>>,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
}

impl JwksCache {
    /// Fetches the JWKS once; fails when it cannot be fetched or holds no usable key.
    pub async fn connect(config: JwksConfig) -> Result<Self, JwksSetupError> {
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
            .ok_or_else(|| JwksSetupError::Url(config.url.clone()))?;
        if url.scheme() == "http" && !is_loopback(&url) {
            tracing::warn!(url = %url, "the JWKS is fetched over plain http; use https outside development");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .redirect(redirect_policy(url.scheme() == "https"))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(JwksSetupError::Client)?;
        let cache = Self {
            url,
            client,
            config,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            fetches: AtomicU64::new(0),
            logged_skips: Mutex::new(HashSet::new()),
        };
        let mut state = cache.refresh.lock().await;
        state.last_attempt = Some(Instant::now());
        let keys =
            cache.fetch().await.map_err(|source| JwksSetupError::Fetch { url: cache.url.to_string(), source })?;
        tracing::info!(url = %cache.url, keys = keys.len(), "JWKS fetched");
        cache.swap(keys);
        cache.fetches.fetch_add(1, Ordering::SeqCst);
        drop(state);
        Ok(cache)
    }

    /// The keys in use, and the count of finished fetches to give [`JwksCache::refresh_for_unknown_kid`] when they
    /// lack a key (read first: a fetch swaps the keys, then counts itself).
    pub fn keys(&self) -> (u64, Arc<KeySet>) {
        let fetches = self.fetches.load(Ordering::SeqCst);
        let keys = self.keys.read().map(|keys| keys.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
        (fetches, keys)
    }

    fn swap(&self, keys: KeySet) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut current) => *current = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// Called when a token names a key id missing from the keys [`JwksCache::keys`] returned with `fetches`:
    /// fetches again, unless another request fetched since (its result is shared) or the last fetch started less
    /// than the minimum interval ago. Returns whether the keys may have changed (so the caller should look again).
    pub async fn refresh_for_unknown_kid(&self, fetches: u64) -> bool {
        let mut state = self.refresh.lock().await;
        if self.fetches.load(Ordering::SeqCst) != fetches {
            return true;
        }
        if state.last_attempt.is_some_and(|last| last.elapsed() < self.config.min_refresh_interval) {
            tracing::debug!("unknown key id; the JWKS was fetched too recently to fetch again");
            return false;
        }
        self.refresh(&mut state, "unknown key id").await
    }

    /// Refreshes every refresh interval, forever (abort the task to stop it).
    pub async fn refresh_periodically(self: Arc<Self>) {
        let period = self.config.refresh_interval.max(Duration::from_secs(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let mut state = self.refresh.lock().await;
            self.refresh(&mut state, "periodic").await;
        }
    }

    async fn refresh(&self, state: &mut RefreshState, reason: &'static str) -> bool {
        state.last_attempt = Some(Instant::now());
        let refreshed = match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %self.url, reason, keys = keys.len(), "JWKS refreshed");
                self.swap(keys);
                true
            }
            Err(error) => {
                tracing::warn!(url = %self.url, reason, error = %error, "JWKS refresh failed; keeping the keys in use");
                false
            }
        };
        self.fetches.fetch_add(1, Ordering::SeqCst);
        refreshed
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(|error| FetchError::Request(error.without_url()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        if response.content_length().is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| FetchError::Request(error.without_url()))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let (keys, skipped) = parse_jwks(&body)?;
        if keys.is_empty() {
            return Err(FetchError::NoUsableKey(skipped));
        }
        self.log_skipped(skipped);
        Ok(keys)
    }

    fn log_skipped(&self, skipped: Vec<SkippedKey>) {
        let Ok(mut logged) = self.logged_skips.lock() else { return };
        if logged.len() > 1000 {
            // Bounded: an endpoint that keeps publishing new unusable keys gets them logged again, not remembered.
            logged.clear();
        }
        for key in skipped {
            if logged.insert((key.kid.clone(), key.reason.clone())) {
                tracing::debug!(kid = key.kid.as_deref().unwrap_or(""), reason = %key.reason, "JWK skipped");
            }
        }
    }
}

/// At most three redirects, and none from https to plain http.
fn redirect_policy(https: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match redirect_refusal(https, attempt.previous().len(), attempt.url().scheme()) {
            Some(reason) => attempt.error(reason),
            None => attempt.follow(),
        }
    })
}

/// Why a redirect to a `scheme` URL, after `previous` requests, is not followed.
fn redirect_refusal(https: bool, previous: usize, scheme: &str) -> Option<&'static str> {
    if previous > 3 {
        Some("too many redirects")
    } else if https && scheme != "https" {
        Some("redirected from https to plain http")
    } else {
        None
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jwt_simple::reexports::ct_codecs::Encoder;
    use serde_json::json;
    use std::sync::OnceLock;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn b64(bytes: &[u8]) -> String {
        jwt_simple::reexports::ct_codecs::Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    /// One RSA key pair per test binary: generating one takes a while.
    fn rsa() -> &'static RS256KeyPair {
        static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap())
    }

    fn rsa_jwk(key: &RS256KeyPair, kid: &str) -> serde_json::Value {
        let components = key.public_key().to_components();
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&components.n), "e": b64(&components.e)})
    }

    fn ec_jwk(key: &ES256KeyPair, kid: &str) -> serde_json::Value {
        let point = key.public_key().public_key().to_bytes_uncompressed();
        json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
    }

    fn minutes(count: u64) -> jwt_simple::prelude::Duration {
        jwt_simple::prelude::Duration::from_mins(count)
    }

    fn token_verifies(key: &VerifyingKey, token: &str) -> bool {
        key.verify_token::<NoCustomClaims>(token, VerificationOptions::default()).is_ok()
    }

    #[test]
    fn rsa_and_ec_jwks_become_keys_that_verify_their_key_pairs_tokens() {
        let ec = ES256KeyPair::generate();
        let other_ec = ES256KeyPair::generate();
        let document = json!({"keys": [rsa_jwk(rsa(), "r1"), ec_jwk(&ec, "e1")]});
        let (keys, skipped) = parse_jwks(document.to_string().as_bytes()).unwrap();
        assert_eq!((keys.len(), skipped), (2, vec![]));

        let Lookup::Found(rsa_key) = keys.find(Some("r1")) else { panic!("r1 not found") };
        assert_eq!(rsa_key.algorithm(), "RS256");
        let rsa_token = rsa().sign(Claims::create(minutes(5))).unwrap();
        assert!(token_verifies(&rsa_key, &rsa_token));

        let Lookup::Found(ec_key) = keys.find(Some("e1")) else { panic!("e1 not found") };
        assert_eq!(ec_key.algorithm(), "ES256");
        assert!(token_verifies(&ec_key, &ec.sign(Claims::create(minutes(5))).unwrap()));
        assert!(!token_verifies(&ec_key, &other_ec.sign(Claims::create(minutes(5))).unwrap()));
        assert!(!token_verifies(&ec_key, &rsa_token), "an ES256 key verified an RS256 token");

        assert!(matches!(keys.find(Some("nope")), Lookup::Unknown));
        assert!(matches!(keys.find(None), Lookup::Ambiguous), "no kid with two keys must not pick one");
    }

    #[test]
    fn a_token_without_kid_finds_the_only_key() {
        let ec = ES256KeyPair::generate();
        let mut jwk = ec_jwk(&ec, "e1");
        jwk.as_object_mut().unwrap().remove("kid");
        let (keys, _) = parse_jwks(json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert!(matches!(keys.find(None), Lookup::Found(_)));
        assert!(matches!(keys.find(Some("e1")), Lookup::Unknown));
        assert!(matches!(KeySet::default().find(None), Lookup::Unknown));
    }

    #[test]
    fn keys_that_are_not_rs256_or_es256_signing_keys_are_skipped_with_a_reason() {
        let ec = ES256KeyPair::generate();
        let with = |mut jwk: serde_json::Value, key: &str, value: serde_json::Value| {
            jwk[key] = value;
            jwk
        };
        let without = |mut jwk: serde_json::Value, key: &str| {
            jwk.as_object_mut().unwrap().remove(key);
            jwk
        };
        let point = ec.public_key().public_key().to_bytes_uncompressed();
        let cases = [
            ("enc", with(ec_jwk(&ec, "enc"), "use", json!("enc")), "use"),
            ("ops", with(ec_jwk(&ec, "ops"), "key_ops", json!(["encrypt"])), "key_ops"),
            ("oct", json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}), "key type"),
            ("okp", json!({"kty": "OKP", "kid": "okp", "crv": "Ed25519", "x": "AAAA"}), "key type"),
            ("p384", with(ec_jwk(&ec, "p384"), "crv", json!("P-384")), "curve"),
            ("nocrv", without(ec_jwk(&ec, "nocrv"), "crv"), "crv"),
            ("es384", with(ec_jwk(&ec, "es384"), "alg", json!("ES384")), "alg"),
            ("rs384", with(rsa_jwk(rsa(), "rs384"), "alg", json!("RS384")), "alg"),
            ("ps256", with(rsa_jwk(rsa(), "ps256"), "alg", json!("PS256")), "alg"),
            ("hs256", with(rsa_jwk(rsa(), "hs256"), "alg", json!("HS256")), "alg"),
            ("ec-as-rs", with(ec_jwk(&ec, "ec-as-rs"), "alg", json!("RS256")), "alg"),
            ("non", without(rsa_jwk(rsa(), "non"), "n"), "missing n"),
            ("bad-n", with(rsa_jwk(rsa(), "bad-n"), "n", json!("!!!")), "base64url"),
            ("e3", with(rsa_jwk(rsa(), "e3"), "e", json!("Aw")), "RSA"),
            ("short-x", with(ec_jwk(&ec, "short-x"), "x", json!(b64(&point[1..32]))), "32 bytes"),
            ("off-curve", with(ec_jwk(&ec, "off-curve"), "y", json!(b64(&[7u8; 32]))), "P-256"),
            ("weak", json!({"kty": "RSA", "kid": "weak", "n": b64(&[0xff; 128]), "e": "AQAB"}), "RSA"),
            ("no-kty", json!({"kid": "no-kty", "x": "AAAA"}), "malformed"),
        ];
        let keys: Vec<serde_json::Value> =
            cases.iter().map(|(_, jwk, _)| jwk.clone()).chain([ec_jwk(&ec, "good")]).collect();
        let (set, skipped) = parse_jwks(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{skipped:?}");
        assert!(matches!(set.find(Some("good")), Lookup::Found(_)));
        assert_eq!(skipped.len(), cases.len(), "{skipped:?}");
        for ((kid, _, reason), skip) in cases.iter().zip(&skipped) {
            assert_eq!(skip.kid.as_deref(), Some(*kid));
            assert!(skip.reason.contains(reason), "{kid}: {:?} should mention {reason:?}", skip.reason);
        }
    }

    #[test]
    fn a_repeated_kid_keeps_the_first_key() {
        let first = ES256KeyPair::generate();
        let second = ES256KeyPair::generate();
        let document = json!({"keys": [ec_jwk(&first, "k"), ec_jwk(&second, "k")]});
        let (keys, skipped) = parse_jwks(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(skipped[0].reason, "repeats the key id of an earlier key");
        let Lookup::Found(key) = keys.find(Some("k")) else { panic!() };
        assert!(token_verifies(&key, &first.sign(Claims::create(minutes(5))).unwrap()));
    }

    #[test]
    fn documents_that_are_not_jwk_sets_are_errors() {
        for body in [&b"not json"[..], b"[]", b"{}", b"{\"keys\": {}}"] {
            assert!(parse_jwks(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let (keys, skipped) = parse_jwks(b"{\"keys\": []}").unwrap();
        assert!(keys.is_empty() && skipped.is_empty());
    }

    #[test]
    fn key_specs_name_a_kid_or_take_the_file_stem() {
        assert_eq!(
            parse_key_spec("/etc/sso/prod-2026.pem"),
            (PathBuf::from("/etc/sso/prod-2026.pem"), "prod-2026".into())
        );
        assert_eq!(parse_key_spec("/etc/sso/a.pem#key-1"), (PathBuf::from("/etc/sso/a.pem"), "key-1".into()));
        assert_eq!(parse_key_spec("keys/b.pem#"), (PathBuf::from("keys/b.pem"), "b".into()));
    }

    #[test]
    fn pem_keys_load_by_kid_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let rsa_path = dir.path().join("rsa.pem");
        let ec_path = dir.path().join("ec.pem");
        let bad_path = dir.path().join("bad.pem");
        std::fs::write(&rsa_path, rsa().public_key().to_pem().unwrap()).unwrap();
        std::fs::write(&ec_path, ES256KeyPair::generate().public_key().to_pem().unwrap()).unwrap();
        std::fs::write(&bad_path, ES256KeyPair::generate().to_pem().unwrap()).unwrap();
        let specs = [rsa_path.display().to_string(), format!("{}#ec-key", ec_path.display())];
        let keys = load_pem_keys(&specs).unwrap();
        assert!(matches!(keys.find(Some("rsa")), Lookup::Found(key) if key.algorithm() == "RS256"));
        assert!(matches!(keys.find(Some("ec-key")), Lookup::Found(key) if key.algorithm() == "ES256"));

        let error = load_pem_keys(&[bad_path.display().to_string()]).unwrap_err().to_string();
        assert!(error.contains("bad.pem") && error.contains("not an RSA"), "{error}");
        let error = load_pem_keys(&[dir.path().join("missing.pem").display().to_string()]).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "{error}");
        let twice = [rsa_path.display().to_string(), format!("{}#rsa", ec_path.display())];
        assert!(matches!(load_pem_keys(&twice), Err(PemKeyError::DuplicateKid(kid)) if kid == "rsa"));
    }

    /// A one-response-per-connection HTTP server on loopback that counts requests.
    struct TestServer {
        url: String,
        requests: Arc<AtomicU64>,
    }

    async fn serve(response: impl Fn() -> Vec<u8> + Send + Sync + 'static, delay: Duration) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let response = Arc::new(response);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let counter = counter.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let _ = socket.write_all(&response()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        TestServer { url, requests }
    }

    fn http_response(body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    fn config(url: &str) -> JwksConfig {
        JwksConfig {
            url: url.to_string(),
            refresh_interval: Duration::from_secs(3600),
            min_refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_millis(500),
        }
    }

    fn ec_document() -> Vec<u8> {
        static KEY: OnceLock<ES256KeyPair> = OnceLock::new();
        let key = KEY.get_or_init(ES256KeyPair::generate);
        json!({"keys": [ec_jwk(key, "e1")]}).to_string().into_bytes()
    }

    #[tokio::test]
    async fn oversized_slow_or_failing_endpoints_fail_the_first_fetch() {
        let huge = serve(|| http_response(&vec![b' '; MAX_JWKS_BYTES + 1]), Duration::ZERO).await;
        let error = JwksCache::connect(config(&huge.url)).await.err().unwrap().to_string();
        assert!(error.contains("larger than"), "{error}");

        // No Content-Length: the cap applies while reading.
        let chunked = serve(
            || {
                let mut response = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
                response.extend(std::iter::repeat_n(b' ', MAX_JWKS_BYTES + 10));
                response
            },
            Duration::ZERO,
        )
        .await;
        let error = JwksCache::connect(config(&chunked.url)).await.err().unwrap().to_string();
        assert!(error.contains("larger than"), "{error}");

        let slow = serve(|| http_response(&ec_document()), Duration::from_secs(5)).await;
        let started = Instant::now();
        let error = JwksCache::connect(config(&slow.url)).await.err().unwrap().to_string();
        assert!(started.elapsed() < Duration::from_secs(3), "the timeout did not apply: {error}");

        let failing =
            serve(|| b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec(), Duration::ZERO).await;
        let error = JwksCache::connect(config(&failing.url)).await.err().unwrap().to_string();
        assert!(error.contains("503"), "{error}");

        let empty = serve(|| http_response(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#), Duration::ZERO).await;
        let error = JwksCache::connect(config(&empty.url)).await.err().unwrap().to_string();
        assert!(error.contains("no usable") && error.contains("oct"), "{error}");

        for url in ["ftp://example.com/jwks", "not a url", "file:///etc/passwd"] {
            assert!(matches!(JwksCache::connect(config(url)).await, Err(JwksSetupError::Url(_))), "{url}");
        }
    }

    #[tokio::test]
    async fn https_urls_are_fetched_over_tls() {
        // A plain TCP listener sees what the client sends first: a TLS handshake record (0x16), not HTTP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://127.0.0.1:{}/jwks", listener.local_addr().unwrap().port());
        let first_byte = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.unwrap();
            byte[0]
        });
        let error = JwksCache::connect(config(&url)).await.err().unwrap();
        assert!(matches!(error, JwksSetupError::Fetch { source: FetchError::Request(_), .. }), "{error}");
        assert_eq!(first_byte.await.unwrap(), 0x16, "the client did not start a TLS handshake");
    }

    #[tokio::test]
    async fn redirects_are_followed_but_not_to_plain_http_from_https() {
        let target = serve(|| http_response(&ec_document()), Duration::ZERO).await;
        let location = target.url.clone();
        let redirect = serve(
            move || format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n").into_bytes(),
            Duration::ZERO,
        )
        .await;
        let cache = JwksCache::connect(config(&redirect.url)).await.unwrap();
        assert_eq!(cache.keys().1.len(), 1);
        assert_eq!(target.requests.load(Ordering::SeqCst), 1);

        assert_eq!(redirect_refusal(true, 1, "http"), Some("redirected from https to plain http"));
        assert_eq!(redirect_refusal(true, 1, "https"), None);
        assert_eq!(redirect_refusal(false, 3, "https"), None);
        assert_eq!(redirect_refusal(false, 4, "http"), Some("too many redirects"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_unknown_kids_share_one_fetch_and_the_minimum_interval_holds_back_the_next() {
        let server = serve(|| http_response(&ec_document()), Duration::from_millis(200)).await;
        let mut config = config(&server.url);
        config.min_refresh_interval = Duration::from_millis(300);
        let cache = Arc::new(JwksCache::connect(config).await.unwrap());
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);

        // Right after the first fetch: held back by the minimum interval.
        assert!(!cache.refresh_for_unknown_kid(cache.keys().0).await);
        assert_eq!(server.requests.load(Ordering::SeqCst), 1);

        tokio::time::sleep(Duration::from_millis(350)).await;
        let refreshes: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let (fetches, _) = cache.keys();
                    cache.refresh_for_unknown_kid(fetches).await
                })
            })
            .collect();
        for refresh in refreshes {
            refresh.await.unwrap();
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 2, "twenty unknown kids, one fetch");
        assert!(!cache.refresh_for_unknown_kid(cache.keys().0).await);
        assert_eq!(server.requests.load(Ordering::SeqCst), 2);
        assert_eq!(cache.keys().1.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_minimum_interval_concurrent_unknown_kids_still_share_one_fetch() {
        let server = serve(|| http_response(&ec_document()), Duration::from_millis(300)).await;
        let mut config = config(&server.url);
        config.min_refresh_interval = Duration::ZERO;
        let cache = Arc::new(JwksCache::connect(config).await.unwrap());
        let refreshes: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    let (fetches, _) = cache.keys();
                    cache.refresh_for_unknown_kid(fetches).await
                })
            })
            .collect();
        for refresh in refreshes {
            assert!(refresh.await.unwrap(), "every waiter should look again");
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 2, "one fetch at start, one shared by twenty requests");
        // Later ones fetch again: nothing holds them back.
        assert!(cache.refresh_for_unknown_kid(cache.keys().0).await);
        assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    }
}
