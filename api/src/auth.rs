//! Authentication: every API request carries a JWT, verified here; the caller's role comes from the members read
//! model, never from the token.
//!
//! Issuers: the local development issuer (an ES256 key pair generated on first start in the data directory, whose
//! tokens `gatehouse token issue` prints). External SSO issuers (JWKS, RS256/ES256) are planned.

use std::collections::HashSet;
use std::path::Path;
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

/// Verifies bearer tokens.
pub struct Authenticator {
    local: Option<(String, ES256PublicKey)>,
    audience: String,
    leeway: StdDuration,
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

impl Authenticator {
    /// An authenticator that accepts the local issuer's tokens (when given) for `audience`, tolerating `leeway` of
    /// clock skew.
    pub fn new(local: Option<&LocalIssuer>, audience: &str, leeway: StdDuration) -> Self {
        Self {
            local: local.map(|issuer| (issuer.key_id.clone(), issuer.key_pair.public_key())),
            audience: audience.to_string(),
            leeway,
        }
    }

    /// The verified email of a bearer token.
    pub fn verify(&self, token: &str) -> Result<Email, AuthFailure> {
        let metadata = Token::decode_metadata(token).map_err(|_| AuthFailure::Invalid)?;
        // Only asymmetric algorithms, and only with a key we know by id: no `none`, no HS/RS confusion.
        if metadata.algorithm() != "ES256" {
            return Err(AuthFailure::Invalid);
        }
        let Some((key_id, public_key)) = &self.local else { return Err(AuthFailure::Invalid) };
        if metadata.key_id() != Some(key_id.as_str()) {
            return Err(AuthFailure::Invalid);
        }
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([LOCAL_ISSUER.to_string()])),
            allowed_audiences: Some(HashSet::from([self.audience.clone()])),
            time_tolerance: Some(Duration::from_secs(self.leeway.as_secs())),
            ..VerificationOptions::default()
        };
        let claims = public_key.verify_token::<IdentityClaims>(token, Some(options)).map_err(|error| {
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
            return Err(AuthFailure::Invalid);
        }
        Email::parse(&claims.custom.email).map_err(|_| AuthFailure::Invalid)
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
            Problem::new(StatusCode::UNAUTHORIZED, ProblemCode::Unauthenticated, "Authentication required")
                .detail(detail)
                .error_response();
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

impl Caller {
    /// Fails with 403 unless the caller holds one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), Problem> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Problem::new(StatusCode::FORBIDDEN, ProblemCode::Forbidden, "Forbidden").detail(format!(
                "This needs the role {}.",
                roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(" or ")
            )))
        }
    }
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header =
            request.headers().get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).map(str::to_string);
        Box::pin(async move {
            let state = state.ok_or_else(|| actix_web::Error::from(Problem::internal()))?;
            let token = header
                .as_deref()
                .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .ok_or(Unauthenticated(AuthFailure::Missing))?;
            let email = state.auth.verify(token).map_err(Unauthenticated)?;
            let member = state
                .members
                .get(email.as_str())
                .await
                .map_err(|error| Problem::from(store::StoreError::from(error)))?;
            if let Some(member) = member {
                let role = Role::parse(&member.role).ok_or_else(Problem::internal)?;
                if member.status == "pending" {
                    crate::members::record_sign_in(&state, &email).await;
                }
                return Ok(Caller { email, role });
            }
            // Not in the read model yet: it may simply not have caught up with an invitation made a moment ago
            // (by another process, say). The roster itself decides before anyone is turned away.
            let (roster, _) = state.roster.load(ROSTER_ID).await.map_err(Problem::from)?;
            let Some(member) = roster.member(&email) else {
                return Err(Problem::new(StatusCode::FORBIDDEN, ProblemCode::NotAMember, "Not a member")
                    .detail("Ask an admin to invite you.")
                    .into());
            };
            let role = member.role;
            if member.status == domain::roster::MemberStatus::Pending {
                crate::members::record_sign_in(&state, &email).await;
            }
            Ok(Caller { email, role })
        })
    }
}
