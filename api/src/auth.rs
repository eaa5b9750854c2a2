//! Authentication: every API request carries a JWT, verified here; the caller's role comes from the members read
//! model, never from the token.
//!
//! Issuers, either or both:
//! - the local development issuer ([`LocalIssuer`]): an ES256 key pair generated on first start in the data
//!   directory, whose tokens `gatehouse token issue` prints; `iss` is `gatehouse-local`, the caller is `email`;
//! - one external SSO issuer ([`SsoIssuer`]): RS256 or ES256 keys from a JWKS endpoint or from PEM public key files;
//!   `iss` is `auth_sso_issuer`, the caller is the `auth_email_claim` claim (default `email`; `sub` works too).
//!
//! [`Authenticator::verify`] reads the unverified header only for `alg` and `kid`. Only RS256 and ES256 pass (no
//! `none`, no HS*, so no HS/RS key confusion, no PS*). The key is chosen by `kid`: the local key when it matches,
//! else the SSO issuer's (a token without `kid` only when that issuer has exactly one key). The token's `alg` must
//! be the key's own (RSA: RS256, EC P-256: ES256). jwt-simple then checks the signature, `iss` (the issuer of that
//! key), `aud` (`auth_audience`), `exp` (required) and `nbf` with `auth_leeway_secs` of tolerance.
//!
//! JWKS keys ([`keys::JwksCache`]) are fetched at start (the service does not start without them), refreshed every
//! `auth_jwks_refresh_secs` by a background task, and refetched when a token names an unknown `kid`: concurrent
//! requests share one fetch, and such fetches happen at most once per `auth_jwks_min_refresh_secs`. A failed fetch
//! keeps the keys in use and logs a warning. Tokens are never logged; rejection reasons go to the debug log only.

pub mod keys;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use domain::roster::{Role, ROSTER_ID};
use domain::Email;
use futures::future::LocalBoxFuture;
use jwt_simple::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{AppState, Problem, ProblemCode};
pub use keys::JwksConfig;
use keys::{JwksCache, JwksSetupError, KeySet, Lookup, PemKeyError, VerifyingKey};

/// The issuer name of locally issued tokens.
pub const LOCAL_ISSUER: &str = "gatehouse-local";

/// Claims Gatehouse reads beyond the registered ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdentityClaims {
    /// The caller's email address.
    pub email: String,
}

/// Why a key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("local issuer key {path}: {source}")]
    Io {
        /// The key file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file holds no valid key.
    #[error("local issuer key {0} is not a valid ES256 private key")]
    Invalid(String),
}

/// The local development issuer: signs and verifies tokens with a key kept in the data directory.
pub struct LocalIssuer {
    key_pair: ES256KeyPair,
    key_id: String,
    audience: String,
}

impl LocalIssuer {
    /// Loads the key from `data_dir/local-issuer-es256.pem`, creating it (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path, audience: &str) -> Result<Self, KeyError> {
        let path = data_dir.join("local-issuer-es256.pem");
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let pem =
                    ES256KeyPair::generate().to_pem().map_err(|_| KeyError::Invalid(path.display().to_string()))?;
                write_private(&path, &pem).map_err(io)?;
                pem
            }
            Err(error) => return Err(io(error)),
        };
        let key_pair = ES256KeyPair::from_pem(&pem).map_err(|_| KeyError::Invalid(path.display().to_string()))?;
        // The key id is derived from the public key, so it changes exactly when the key does.
        let key_id = {
            let public = key_pair.public_key().to_bytes();
            let digest = jwt_simple::reexports::ct_codecs::Hex::encode_to_string(&public[1..9]).unwrap_or_default();
            format!("local-{digest}")
        };
        Ok(Self { key_pair: key_pair.with_key_id(&key_id), key_id, audience: audience.to_string() })
    }

    /// Signs a token for `email`, valid for `ttl`.
    pub fn issue(&self, email: &Email, ttl: StdDuration) -> Result<String, jwt_simple::Error> {
        let claims =
            Claims::with_custom_claims(IdentityClaims { email: email.to_string() }, Duration::from_secs(ttl.as_secs()))
                .with_issuer(LOCAL_ISSUER)
                .with_audience(&self.audience)
                .with_subject(email.as_str());
        self.key_pair.sign(claims)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

/// An external SSO issuer: the `iss` its tokens carry, its keys, and the claim naming the caller.
pub struct SsoIssuer {
    issuer: String,
    email_claim: String,
    keys: SsoKeys,
}

enum SsoKeys {
    /// PEM public key files, loaded at start.
    Static(KeySet),
    /// A JWKS endpoint, cached and refreshed.
    Jwks(Arc<JwksCache>),
}

/// Where an SSO issuer's keys come from.
#[derive(Debug, Clone)]
pub enum SsoKeySource {
    /// A JWKS endpoint.
    Jwks(JwksConfig),
    /// PEM public key files, `PATH` (key id: the file name without extension) or `PATH#KID`.
    PublicKeys(Vec<String>),
}

/// The configuration of an external SSO issuer.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// The `iss` its tokens must carry.
    pub issuer: String,
    /// Where its keys come from.
    pub keys: SsoKeySource,
    /// The claim holding the caller's email (`sub` is allowed too).
    pub email_claim: String,
}

/// Why an SSO issuer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// A PEM key file is unreadable or invalid.
    #[error(transparent)]
    PublicKey(#[from] PemKeyError),
    /// The JWKS endpoint is unusable.
    #[error(transparent)]
    Jwks(#[from] JwksSetupError),
    /// No key files were given.
    #[error("no SSO public keys given")]
    NoKeys,
}

impl SsoIssuer {
    /// Loads the PEM key files, or fetches the JWKS once: a key source that is not usable now fails here.
    pub async fn load(config: SsoConfig) -> Result<Self, SsoError> {
        let keys = match config.keys {
            SsoKeySource::PublicKeys(specs) => {
                let keys = keys::load_pem_keys(&specs)?;
                if keys.is_empty() {
                    return Err(SsoError::NoKeys);
                }
                tracing::info!(issuer = %config.issuer, keys = keys.len(), "SSO public keys loaded");
                SsoKeys::Static(keys)
            }
            SsoKeySource::Jwks(jwks) => SsoKeys::Jwks(Arc::new(JwksCache::connect(jwks).await?)),
        };
        Ok(Self { issuer: config.issuer, email_claim: config.email_claim, keys })
    }

    /// The current JWKS key set (`None` for static keys, which never change).
    fn key_set(&self) -> Option<Arc<keys::KeySet>> {
        match &self.keys {
            SsoKeys::Static(_) => None,
            SsoKeys::Jwks(cache) => Some(cache.keys().1),
        }
    }

    /// The key a token's `kid` names; an unknown `kid` causes at most one (rate-limited, shared) JWKS refresh.
    async fn key(&self, kid: Option<&str>) -> Result<Arc<VerifyingKey>, AuthFailure> {
        let cache = match &self.keys {
            SsoKeys::Static(keys) => return found(keys.find(kid), kid),
            SsoKeys::Jwks(cache) => cache,
        };
        let (fetches, keys) = cache.keys();
        match keys.find(kid) {
            Lookup::Unknown => {}
            lookup => return found(lookup, kid),
        }
        if cache.refresh_for_unknown_kid(fetches).await {
            return found(cache.keys().1.find(kid), kid);
        }
        found(Lookup::Unknown, kid)
    }
}

fn found(lookup: Lookup, kid: Option<&str>) -> Result<Arc<VerifyingKey>, AuthFailure> {
    match lookup {
        Lookup::Found(key) => Ok(key),
        Lookup::Unknown => {
            // The kid is not secret, but it is the caller's text: logged short.
            let kid: String = kid.unwrap_or_default().chars().take(64).collect();
            tracing::debug!(kid, "bearer token rejected: unknown key id");
            Err(AuthFailure::Invalid)
        }
        Lookup::Ambiguous => {
            tracing::debug!("bearer token rejected: no key id, and the issuer has several keys");
            Err(AuthFailure::Invalid)
        }
    }
}

/// Verifies bearer tokens.
pub struct Authenticator {
    local: Option<(String, ES256PublicKey)>,
    sso: Option<SsoIssuer>,
    audience: String,
    leeway: StdDuration,
    /// Tokens verified recently: token → (email, `exp` and when verified in Unix seconds, the SSO key set then).
    verified: std::sync::Mutex<lru::LruCache<String, Verified>>,
}

/// A remembered verification.
#[derive(Clone)]
struct Verified {
    email: Email,
    expires: u64,
    at: u64,
    /// The JWKS key set current when the token was verified (`None` for static keys and the local issuer); a new
    /// key set (rotation, revocation) invalidates the verification.
    keys: Option<Arc<keys::KeySet>>,
}

/// How many verified tokens are remembered.
const VERIFIED_CAPACITY: usize = 10_000;
/// How long a verification is reused: a key removed from the JWKS stops being accepted within this time.
const VERIFIED_SECS: u64 = 60;

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// Why a request is not authenticated. Details go to the log, never to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a JWT, an unsupported algorithm, an unknown key, a bad signature, or wrong claims.
    Invalid,
    /// Expired or not yet valid.
    Expired,
}

/// The algorithms any token may use; each key accepts only its own one of them.
const ALGORITHMS: [&str; 2] = ["RS256", "ES256"];

impl Authenticator {
    /// An authenticator that accepts the local issuer's tokens (when given) and the SSO issuer's (when given) for
    /// `audience`, tolerating `leeway` of clock skew.
    pub fn new(local: Option<&LocalIssuer>, sso: Option<SsoIssuer>, audience: &str, leeway: StdDuration) -> Self {
        Self {
            local: local.map(|issuer| (issuer.key_id.clone(), issuer.key_pair.public_key())),
            sso,
            audience: audience.to_string(),
            leeway,
            verified: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(VERIFIED_CAPACITY).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }

    /// The task that refreshes the SSO issuer's JWKS periodically, when there is one; spawn it, abort it to stop.
    pub fn key_refresher(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        match &self.sso.as_ref()?.keys {
            SsoKeys::Jwks(cache) => Some(cache.clone().refresh_periodically()),
            SsoKeys::Static(_) => None,
        }
    }

    /// The verified email of a bearer token.
    ///
    /// The unverified header is read only for `alg` and `kid`: the key is chosen by `kid` (the local issuer's key,
    /// else the SSO issuer's), the algorithm must be the key's own, and jwt-simple checks the signature, `iss` (that
    /// key's issuer), `aud`, `exp` and `nbf`.
    ///
    /// A signature check costs 0.2–0.4 ms of CPU (ES256, RS256), more than the rest of a typical request, so a
    /// verified token is remembered for up to a minute, never past its `exp` (with the usual leeway) and never
    /// across a change of the SSO issuer's key set: the same bytes verify the same way under the same keys.
    /// Roles are not cached: they are read on every request.
    pub async fn verify(&self, token: &str) -> Result<Email, AuthFailure> {
        let now = unix_now();
        let keys = self.sso.as_ref().and_then(SsoIssuer::key_set);
        let remembered = self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(token).cloned();
        if let Some(verified) = remembered {
            let same_keys = match (&verified.keys, &keys) {
                (Some(then), Some(now)) => Arc::ptr_eq(then, now),
                (None, _) => true,
                (Some(_), None) => false,
            };
            if same_keys
                && now <= verified.expires.saturating_add(self.leeway.as_secs())
                && now < verified.at + VERIFIED_SECS
            {
                return Ok(verified.email);
            }
        }
        let (email, expires, sso) = self.verify_uncached(token).await?;
        // The key set read before verifying: if a refresh swapped it meanwhile, the entry is stale at once and the
        // next request verifies again.
        let verified = Verified { email: email.clone(), expires, at: now, keys: if sso { keys } else { None } };
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).put(token.to_string(), verified);
        Ok(email)
    }

    /// Verifies `token` from scratch: its email, `exp` (Unix seconds), and whether the SSO issuer signed it.
    async fn verify_uncached(&self, token: &str) -> Result<(Email, u64, bool), AuthFailure> {
        let metadata = Token::decode_metadata(token).map_err(|_| AuthFailure::Invalid)?;
        let algorithm = metadata.algorithm();
        // Asymmetric algorithms only: no `none`, no HS256 signed with a public key as the secret.
        if !ALGORITHMS.contains(&algorithm) {
            tracing::debug!(alg = algorithm, "bearer token rejected: algorithm not allowed");
            return Err(AuthFailure::Invalid);
        }
        let kid = metadata.key_id();
        if let Some((local_kid, local_key)) = &self.local {
            if kid == Some(local_kid.as_str()) {
                let key = VerifyingKey::Es256(local_key.clone());
                let claims = self.check::<IdentityClaims>(&key, algorithm, token, LOCAL_ISSUER)?;
                let expires = claims.expires_at.map(|at| at.as_secs()).ok_or(AuthFailure::Invalid)?;
                return Email::parse(&claims.custom.email)
                    .map(|email| (email, expires, false))
                    .map_err(|_| AuthFailure::Invalid);
            }
        }
        let Some(sso) = &self.sso else {
            tracing::debug!("bearer token rejected: unknown key id");
            return Err(AuthFailure::Invalid);
        };
        let key = sso.key(kid).await?;
        let mut claims =
            self.check::<serde_json::Map<String, serde_json::Value>>(&key, algorithm, token, &sso.issuer)?;
        let expires = claims.expires_at.map(|at| at.as_secs()).ok_or(AuthFailure::Invalid)?;
        let email = if sso.email_claim == "sub" {
            claims.subject.take().map(serde_json::Value::String)
        } else {
            claims.custom.remove(&sso.email_claim)
        };
        let Some(serde_json::Value::String(email)) = email else {
            tracing::debug!(claim = %sso.email_claim, "bearer token rejected: no email claim");
            return Err(AuthFailure::Invalid);
        };
        // OpenID Connect's `email_verified`: an issuer that says the address is unverified (anyone could have typed
        // it) does not vouch for the identity. Issuers that leave the claim out (their addresses are their own) are
        // trusted as before; some send it as a string.
        match claims.custom.get("email_verified") {
            None | Some(serde_json::Value::Bool(true)) => {}
            Some(serde_json::Value::String(text)) if text == "true" => {}
            Some(_) => {
                tracing::debug!("bearer token rejected: email_verified is not true");
                return Err(AuthFailure::Invalid);
            }
        }
        Email::parse(&email).map(|email| (email, expires, true)).map_err(|_| {
            tracing::debug!(claim = %sso.email_claim, "bearer token rejected: the email claim is not an email address");
            AuthFailure::Invalid
        })
    }

    /// Verifies the signature with `key` (whose algorithm must be the token's), the issuer, the audience and the
    /// times; `exp` is required.
    fn check<C: serde::de::DeserializeOwned + Serialize>(
        &self,
        key: &VerifyingKey,
        algorithm: &str,
        token: &str,
        issuer: &str,
    ) -> Result<JWTClaims<C>, AuthFailure> {
        if key.algorithm() != algorithm {
            tracing::debug!(alg = algorithm, key = key.algorithm(), "bearer token rejected: not the key's algorithm");
            return Err(AuthFailure::Invalid);
        }
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([issuer.to_string()])),
            allowed_audiences: Some(HashSet::from([self.audience.clone()])),
            time_tolerance: Some(Duration::from_secs(self.leeway.as_secs())),
            ..VerificationOptions::default()
        };
        let claims = key.verify_token::<C>(token, options).map_err(|error| {
            // The reason goes to the debug log only; the caller learns no more than "invalid" or "expired".
            tracing::debug!(reason = %error, "bearer token rejected");
            match error.downcast_ref::<jwt_simple::JWTError>() {
                Some(jwt_simple::JWTError::TokenHasExpired | jwt_simple::JWTError::TokenNotValidYet) => {
                    AuthFailure::Expired
                }
                _ => AuthFailure::Invalid,
            }
        })?;
        if claims.expires_at.is_none() {
            tracing::debug!("bearer token rejected: no exp");
            return Err(AuthFailure::Invalid);
        }
        Ok(claims)
    }
}

/// A 401 with `WWW-Authenticate`.
#[derive(Debug)]
pub struct Unauthenticated(AuthFailure);

impl std::fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unauthenticated: {:?}", self.0)
    }
}

impl ResponseError for Unauthenticated {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> HttpResponse {
        let (error, detail) = match self.0 {
            AuthFailure::Missing => (None, "Send a bearer token in the Authorization header."),
            AuthFailure::Invalid => (Some("invalid_token"), "The bearer token is not valid."),
            AuthFailure::Expired => (Some("invalid_token"), "The bearer token has expired or is not valid yet."),
        };
        let challenge = match error {
            Some(error) => format!("Bearer realm=\"gatehouse\", error=\"{error}\""),
            None => "Bearer realm=\"gatehouse\"".to_string(),
        };
        let mut response =
            Problem::new(ProblemCode::Unauthenticated, "Authentication required").detail(detail).error_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The authenticated caller of a request, with their current role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who is calling.
    pub email: Email,
    /// Their role, from the members read model at the time of the request (or from the roster itself when the read
    /// model has not caught up with their invitation yet).
    pub role: Role,
}

/// The role `email` holds now (`None`: not a member): the roles cache, else the members read model, else the
/// roster (a member the read model has not caught up with). For requests that outlive their authentication, such as
/// live streams, which read it again while they run.
pub(crate) async fn role_of(state: &AppState, email: &Email) -> Result<Option<Role>, Problem> {
    if let Some(cached) = state.caches.roles.get(email.as_str()) {
        return Ok(Some(cached.role));
    }
    let member =
        state.members.get(email.as_str()).await.map_err(|error| Problem::from(store::StoreError::from(error)))?;
    if let Some(member) = member {
        return Ok(Role::parse(&member.role));
    }
    let (roster, _) = state.roster.load(ROSTER_ID).await.map_err(Problem::from)?;
    Ok(roster.member(email).map(|member| member.role))
}

impl Caller {
    /// Fails with 403 unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Problem::new(ProblemCode::Forbidden, "Forbidden").detail(format!(
                "This needs the role {}.",
                roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(" or ")
            )))
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value. The scheme is matched case-insensitively (RFC 9110
/// §11.1: `Bearer`, `bearer` and `BEARER` are one scheme) and is followed by one or more spaces or tabs; `None`
/// for another scheme or no token. What follows is the token as sent (a token with spaces inside fails
/// verification).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(rest.trim_matches([' ', '\t'])).filter(|token| !token.is_empty())
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header =
            request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).map(str::to_string);
        let client = state
            .as_ref()
            .map(|state| crate::limits::ClientKey::of_request(request, &state.gateway.limits.trusted_proxies));
        Box::pin(async move {
            let state = state.ok_or_else(|| actix_web::Error::from(Problem::internal()))?;
            let client = client.unwrap_or(crate::limits::ClientKey::Unknown);
            // An address that sent too many invalid tokens is refused before its token costs a signature check.
            state.limits.check_client(client).map_err(Problem::from)?;
            let token = header.as_deref().and_then(bearer_token).ok_or(Unauthenticated(AuthFailure::Missing))?;
            let email = state.auth.verify(token).await.map_err(|failure| {
                state.limits.record_auth_failure(client);
                Unauthenticated(failure)
            })?;
            // Before the role is read: a refused request costs no database read.
            state.limits.check_api(&email).map_err(Problem::from)?;
            if let Some(cached) = state.caches.roles.get(email.as_str()) {
                if cached.pending {
                    crate::members::record_sign_in(&state, &email).await?;
                }
                return Ok(Caller { email, role: cached.role });
            }
            let revision = state.caches.roles.revision();
            let member = state
                .members
                .get(email.as_str())
                .await
                .map_err(|error| Problem::from(store::StoreError::from(error)))?;
            if let Some(member) = member {
                let role = Role::parse(&member.role).ok_or_else(Problem::internal)?;
                let pending = member.status == "pending";
                state.caches.roles.insert(revision, member.email, crate::cache::CachedRole { role, pending });
                if pending {
                    crate::members::record_sign_in(&state, &email).await?;
                }
                return Ok(Caller { email, role });
            }
            // Not in the read model yet: it may simply not have caught up with an invitation made a moment ago
            // (by another process, say). The roster itself decides before anyone is turned away.
            let (roster, _) = state.roster.load(ROSTER_ID).await.map_err(Problem::from)?;
            let Some(member) = roster.member(&email) else {
                return Err(Problem::new(ProblemCode::NotAMember, "Not a member")
                    .detail("Ask an admin to invite you.")
                    .into());
            };
            let role = member.role;
            if member.status == domain::roster::MemberStatus::Pending {
                crate::members::record_sign_in(&state, &email).await?;
            }
            Ok(Caller { email, role })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_spaces_are_one_or_more() {
        for header in
            ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr abc", "Bearer  abc", "Bearer\tabc", "Bearer abc "]
        {
            assert_eq!(bearer_token(header), Some("abc"), "{header:?}");
        }
        for header in ["Bearer", "Bearer ", "Bearerabc", "Basic abc", "Token abc", " Bearer abc", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    use serde_json::{json, Map, Value};
    use std::sync::OnceLock;

    const ISSUER: &str = "https://sso.example.com";

    fn rsa() -> &'static RS256KeyPair {
        static KEY: OnceLock<RS256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| RS256KeyPair::generate(2048).unwrap().with_key_id("r1"))
    }

    fn ec() -> &'static ES256KeyPair {
        static KEY: OnceLock<ES256KeyPair> = OnceLock::new();
        KEY.get_or_init(|| ES256KeyPair::generate().with_key_id("e1"))
    }

    fn authenticator(email_claim: &str, local: Option<&LocalIssuer>) -> Authenticator {
        let mut keys = KeySet::default();
        keys.insert(Some("r1".into()), VerifyingKey::Rs256(Box::new(rsa().public_key())));
        keys.insert(Some("e1".into()), VerifyingKey::Es256(ec().public_key()));
        let sso = SsoIssuer { issuer: ISSUER.into(), email_claim: email_claim.into(), keys: SsoKeys::Static(keys) };
        Authenticator::new(local, Some(sso), "gatehouse", StdDuration::ZERO)
    }

    fn claims(custom: Value) -> JWTClaims<Map<String, Value>> {
        let Value::Object(custom) = custom else { panic!("claims must be an object") };
        Claims::with_custom_claims(custom, Duration::from_mins(5)).with_issuer(ISSUER).with_audience("gatehouse")
    }

    fn ada() -> JWTClaims<Map<String, Value>> {
        claims(json!({"email": "Ada@Example.com"}))
    }

    fn b64(text: &str) -> String {
        Base64UrlSafeNoPadding::encode_to_string(text).unwrap()
    }

    #[tokio::test]
    async fn rs256_and_es256_tokens_of_known_keys_are_accepted() {
        let auth = authenticator("email", None);
        let email = auth.verify(&rsa().sign(ada()).unwrap()).await.unwrap();
        assert_eq!(email.as_str(), "ada@example.com");
        assert_eq!(auth.verify(&ec().sign(ada()).unwrap()).await.unwrap().as_str(), "ada@example.com");
    }

    #[tokio::test]
    async fn a_verified_email_is_accepted_as_bool_or_text() {
        let auth = authenticator("email", None);
        for verified in [json!(true), json!("true")] {
            let token = ec().sign(claims(json!({"email": "ada@example.com", "email_verified": verified}))).unwrap();
            assert_eq!(auth.verify(&token).await.unwrap().as_str(), "ada@example.com");
        }
    }

    #[tokio::test]
    async fn the_email_comes_from_the_configured_claim() {
        let auth = authenticator("upn", None);
        let token = rsa().sign(claims(json!({"upn": "bob@example.com", "email": "mallory@example.com"}))).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap().as_str(), "bob@example.com");
        assert_eq!(auth.verify(&rsa().sign(ada()).unwrap()).await, Err(AuthFailure::Invalid), "no upn claim");

        let auth = authenticator("sub", None);
        let token = ec().sign(claims(json!({})).with_subject("carol@example.com")).unwrap();
        assert_eq!(auth.verify(&token).await.unwrap().as_str(), "carol@example.com");
    }

    #[tokio::test]
    async fn tokens_with_wrong_claims_are_rejected() {
        let auth = authenticator("email", None);
        let now = Clock::now_since_epoch();
        let mut no_exp = ada();
        no_exp.expires_at = None;
        let mut expired = ada();
        expired.expires_at = Some(now - Duration::from_mins(2));
        let cases = [
            ("wrong iss", ada().with_issuer("https://evil.example.com"), AuthFailure::Invalid),
            (
                "no iss",
                {
                    let mut c = ada();
                    c.issuer = None;
                    c
                },
                AuthFailure::Invalid,
            ),
            ("local iss", ada().with_issuer(LOCAL_ISSUER), AuthFailure::Invalid),
            ("wrong aud", ada().with_audience("someone-else"), AuthFailure::Invalid),
            ("expired", expired, AuthFailure::Expired),
            ("not yet valid", ada().invalid_before(now + Duration::from_mins(2)), AuthFailure::Expired),
            ("no exp", no_exp, AuthFailure::Invalid),
            ("no email", claims(json!({"name": "Ada"})), AuthFailure::Invalid),
            ("email not a string", claims(json!({"email": ["ada@example.com"]})), AuthFailure::Invalid),
            ("email not an email", claims(json!({"email": "ada"})), AuthFailure::Invalid),
            (
                "email unverified",
                claims(json!({"email": "ada@example.com", "email_verified": false})),
                AuthFailure::Invalid,
            ),
            (
                "email unverified as text",
                claims(json!({"email": "ada@example.com", "email_verified": "false"})),
                AuthFailure::Invalid,
            ),
            (
                "email_verified null",
                claims(json!({"email": "ada@example.com", "email_verified": null})),
                AuthFailure::Invalid,
            ),
        ];
        for (name, claims, expected) in cases {
            assert_eq!(auth.verify(&rsa().sign(claims.clone()).unwrap()).await, Err(expected), "RS256 {name}");
            assert_eq!(auth.verify(&ec().sign(claims).unwrap()).await, Err(expected), "ES256 {name}");
        }
    }

    #[tokio::test]
    async fn only_the_keys_own_asymmetric_algorithm_is_accepted() {
        let auth = authenticator("email", None);
        let valid = rsa().sign(ada()).unwrap();
        let parts: Vec<&str> = valid.split('.').collect();
        let with_header = |header: &str, signature: &str| format!("{}.{}.{signature}", b64(header), parts[1]);

        // HS256 with the RSA public key (as an attacker may find it) as the HMAC secret.
        let pem = rsa().public_key().to_pem().unwrap();
        let confused = HS256Key::from_bytes(pem.as_bytes()).with_key_id("r1").authenticate(ada()).unwrap();
        // PS256 with a genuine signature by the RSA key.
        let ps256 = PS256KeyPair::from_pem(&rsa().to_pem().unwrap()).unwrap().with_key_id("r1").sign(ada()).unwrap();
        let rs512 = RS512KeyPair::from_pem(&rsa().to_pem().unwrap()).unwrap().with_key_id("r1").sign(ada()).unwrap();
        // Genuine signatures, but the kid names a key of the other type.
        let ec_naming_rsa = ES256KeyPair::from_bytes(&ec().to_bytes()).unwrap().with_key_id("r1").sign(ada()).unwrap();
        let rsa_as = |kid: Option<&str>| {
            let key = RS256KeyPair::from_pem(&rsa().to_pem().unwrap()).unwrap();
            kid.map_or(key.clone(), |kid| key.with_key_id(kid))
        };
        let rsa_naming_ec = rsa_as(Some("e1")).sign(ada()).unwrap();
        let mut signature = parts[2].to_string();
        let middle = signature.len() / 2;
        let flipped = if &signature[middle..=middle] == "A" { "B" } else { "A" };
        signature.replace_range(middle..=middle, flipped);
        let forged = format!("{}.{}.{signature}", parts[0], parts[1]);
        let cases = [
            ("alg none", with_header(r#"{"alg":"none","kid":"r1"}"#, "")),
            ("alg none, no kid", with_header(r#"{"alg":"none"}"#, "")),
            ("HS256 with the public key", confused),
            ("PS256", ps256),
            ("RS512", rs512),
            ("ES256 token naming an RSA key", ec_naming_rsa),
            ("RS256 token naming an EC key", rsa_naming_ec),
            ("unknown kid", rsa_as(Some("r2")).sign(ada()).unwrap()),
            ("no kid, two keys", rsa_as(None).sign(ada()).unwrap()),
            ("forged signature", forged),
            ("not a JWT", "not-a-jwt".to_string()),
        ];
        for (name, token) in cases {
            assert_eq!(auth.verify(&token).await, Err(AuthFailure::Invalid), "{name}");
        }
        assert!(auth.verify(&valid).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_without_kid_is_verified_by_the_only_key() {
        let mut keys = KeySet::default();
        keys.insert(Some("e1".into()), VerifyingKey::Es256(ec().public_key()));
        let sso = SsoIssuer { issuer: ISSUER.into(), email_claim: "email".into(), keys: SsoKeys::Static(keys) };
        let auth = Authenticator::new(None, Some(sso), "gatehouse", StdDuration::ZERO);
        let no_kid = ES256KeyPair::from_bytes(&ec().to_bytes()).unwrap();
        assert!(auth.verify(&no_kid.sign(ada()).unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn local_and_sso_tokens_each_need_their_own_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalIssuer::load_or_create(dir.path(), "gatehouse").unwrap();
        let auth = authenticator("upn", Some(&local));
        let email = Email::parse("ada@example.com").unwrap();
        let local_token = local.issue(&email, StdDuration::from_secs(60)).unwrap();
        assert_eq!(auth.verify(&local_token).await.unwrap(), email, "local tokens keep the email claim");

        let local_key = ES256KeyPair::from_bytes(&local.key_pair.to_bytes()).unwrap().with_key_id(&local.key_id);
        let claiming_sso = claims(json!({"upn": "ada@example.com", "email": "ada@example.com"}));
        assert_eq!(auth.verify(&local_key.sign(claiming_sso.clone()).unwrap()).await, Err(AuthFailure::Invalid));
        let sso_claiming_local = claiming_sso.with_issuer(LOCAL_ISSUER);
        let sso_key_naming_local = ES256KeyPair::from_bytes(&ec().to_bytes()).unwrap().with_key_id(&local.key_id);
        assert_eq!(
            auth.verify(&sso_key_naming_local.sign(sso_claiming_local).unwrap()).await,
            Err(AuthFailure::Invalid)
        );

        let without_local = Authenticator::new(None, None, "gatehouse", StdDuration::ZERO);
        assert_eq!(without_local.verify(&local_token).await, Err(AuthFailure::Invalid));
    }
}
