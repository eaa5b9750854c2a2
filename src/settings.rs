//! Typed settings from `GATEHOUSE_*` environment variables and an optional TOML file.
//!
//! Precedence, lowest first: built-in defaults, the TOML file (`--config PATH` or `GATEHOUSE_CONFIG`), environment
//! variables. Every key is listed in `docs/OPERATIONS.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP server binds (`GATEHOUSE_LISTEN`).
    pub listen: String,
    /// `postgres://…` or `sqlite://PATH`; unset means the embedded database in `data_dir`.
    pub database_url: Option<String>,
    /// Directory for the embedded database and local state.
    pub data_dir: PathBuf,
    /// Most pooled database connections, per pool (the event store and the read models each have one).
    pub database_max_connections: u32,
    /// Seconds a request waits for a database connection before the store counts as unavailable.
    pub database_acquire_timeout_secs: u64,
    /// Aggregates kept in each aggregate repository's in-memory cache.
    pub aggregate_cache_capacity: usize,
    /// Apply pending migrations when `serve` starts (otherwise `serve` refuses an out-of-date schema).
    pub migrate_on_start: bool,
    /// An email made admin at start-up (idempotent).
    pub bootstrap_admin: Option<String>,
    /// Most events a projector applies per transaction.
    pub projector_batch_size: usize,
    /// Milliseconds between projector polls for events written by other processes.
    pub projector_poll_interval_ms: u64,
    /// Log filter, in `tracing_subscriber::EnvFilter` syntax.
    pub log: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Seconds in-flight requests get to finish on SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// Seconds between SIGTERM turning readiness off and the listener closing, for load balancers to notice.
    pub shutdown_drain_secs: u64,
    /// Accept tokens of the local development issuer (key in `data_dir`, tokens from `gatehouse token issue`).
    pub auth_local_issuer: bool,
    /// The audience every token must name.
    pub auth_audience: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub auth_leeway_secs: u64,
    /// Admin approvals a publish request needs (at least 1).
    pub publish_approvals_required: u32,
    /// Whether approving or rejecting a publish request needs a reason.
    pub publish_require_reason: bool,
    /// Seconds a publish request may stay pending before it expires.
    pub publish_request_ttl_secs: u64,
    /// The largest patch a publish request may carry, in bytes (at most 1 MiB).
    pub publish_max_patch_bytes: usize,
    /// Seconds between sweeps that expire overdue publish requests.
    pub publish_expiry_sweep_secs: u64,
    /// How long a diff preview or a submission's commit in the workspace may take, in seconds.
    pub publish_git_timeout_secs: u64,
    /// The prefix of the branch an approved request's commit is pushed to (followed by the request's id).
    pub publish_branch_prefix: String,
    /// How long a push may take, in seconds.
    pub publish_push_timeout_secs: u64,
    /// How long a call to the Git provider's API may take, in seconds.
    pub publish_provider_timeout_secs: u64,
    /// Failed delivery attempts after which only an admin's retry continues.
    pub publish_max_attempts: u32,
    /// The wait after a delivery's first transient failure, in seconds; it doubles with each failure (at most 5
    /// minutes).
    pub publish_retry_backoff_secs: u64,
    /// How often deliveries are checked when nothing wakes the publisher, in milliseconds.
    pub publish_delivery_interval_ms: u64,
    /// The Ed25519 seed (64 hex digits) that signs audit checkpoints; unset means `data_dir/audit-ed25519.key`,
    /// created on first use.
    pub audit_signing_key_file: Option<PathBuf>,
    /// Seconds between signed audit checkpoints (signed also when no events arrived).
    pub audit_checkpoint_secs: u64,
    /// The `iss` of an external SSO issuer whose tokens are accepted (needs `auth_sso_jwks_url` or
    /// `auth_sso_public_keys`).
    pub auth_sso_issuer: Option<String>,
    /// The SSO issuer's JWKS endpoint (http or https), fetched at start and refreshed.
    pub auth_sso_jwks_url: Option<String>,
    /// Instead of a JWKS: PEM public key files (RSA or EC P-256), `PATH` (key id: the file name without extension)
    /// or `PATH#KID`. A single string is split at commas.
    #[serde(deserialize_with = "one_or_many")]
    pub auth_sso_public_keys: Vec<String>,
    /// The claim of SSO tokens holding the caller's email (local tokens always use `email`).
    pub auth_email_claim: String,
    /// Seconds between periodic JWKS refreshes.
    pub auth_jwks_refresh_secs: u64,
    /// Least seconds between two JWKS fetches caused by tokens naming an unknown key id.
    pub auth_jwks_min_refresh_secs: u64,
    /// Seconds after which an `Idempotency-Key` request that never got its answer (its process crashed) may be taken
    /// over by a retry: the retry then gets the first answer if the command committed, or runs it (ADR 0018).
    pub idempotency_takeover_secs: u64,
    /// `max-age` of the `Strict-Transport-Security` header; 0 (the default) sends none. Set it when every client
    /// reaches the service over HTTPS.
    pub http_hsts_max_age_secs: u64,
    /// The secrets key ring (ADR 0016, 0020): base64 32-byte keys separated by commas, the first encrypting
    /// (`GATEHOUSE_SECRETS_KEYS`). Fixed for the process's life; prefer `secrets_key_file`, which can be reloaded.
    pub secrets_keys: Option<String>,
    /// A key file (one base64 key per line, `#` comments, mode 0600 or 0640): reloaded on SIGHUP and before
    /// every rewrap. Unset (and no `secrets_keys`): `data_dir/secrets.key`, created on first start.
    pub secrets_key_file: Option<PathBuf>,
    /// Origins (`scheme://host[:port]`) whose pages may call the API from a browser (CORS); empty (the default)
    /// sends no CORS header at all. `*` is refused. A single string is split at commas.
    #[serde(deserialize_with = "one_or_many")]
    pub http_cors_allowed_origins: Vec<String>,
    /// Pins the API requests per minute per user (a burst of that many, then one every 60/N s; 0 is no limit).
    /// Unset (the default): the portal settings' `api_requests_per_minute` (200 until an admin changes it).
    pub rate_limit_api_per_minute: Option<u32>,
    /// Pins the workspace launches per minute per user (0 is no limit). Unset: the portal settings'
    /// `launches_per_minute` (5 until an admin changes it).
    pub rate_limit_launch_per_minute: Option<u32>,
    /// Requests per minute per client address whose bearer token fails verification, before that address is refused
    /// with 429 without its tokens being checked; 0 is no limit.
    pub rate_limit_auth_failures_per_minute: u32,
    /// Seconds a terminal ticket stays redeemable.
    pub relay_ticket_ttl_secs: u64,
    /// Origins allowed to open a browser terminal (besides requests without `Origin` and same-host origins).
    #[serde(deserialize_with = "one_or_many")]
    pub relay_allowed_origins: Vec<String>,
    /// Seconds a browser (or an agent) has to send its first message.
    pub relay_auth_timeout_secs: u64,
    /// Seconds without input or output before a session is closed (4008).
    pub relay_idle_timeout_secs: u64,
    /// Seconds a session may last at most (4009).
    pub relay_max_session_secs: u64,
    /// Largest WebSocket frame accepted from a browser or an agent, in bytes (1009).
    pub relay_max_frame_bytes: usize,
    /// Open terminal sessions one user may have at once (4029).
    pub relay_max_sessions_per_user: usize,
    /// Seconds a terminal session keeps running after its last browser's socket ended without closing it (any end
    /// but a close with code 1000), waiting for a browser to resume it; then it closes as `detach_timeout`. 0: a
    /// session closes when its last browser leaves.
    pub relay_detach_timeout_secs: u64,
    /// Output a terminal session keeps for browsers that resume it, in bytes (at least 256 KiB, the agent's window).
    pub relay_resume_buffer_bytes: usize,
    /// Output all terminal sessions together keep beyond 256 KiB each, in bytes; when it is used up, sessions keep
    /// only what their browsers have not received yet and their shells wait for their browsers.
    pub relay_resume_buffer_total_bytes: usize,
    /// The wildcard domain previews are served under: `<workspace>--<port>.<preview_domain>` must resolve to the
    /// gateway (a wildcard DNS record, and a wildcard certificate behind TLS). Best a registrable domain of its own,
    /// apart from the portal's (docs/OPERATIONS.md, "Previews"). Empty: previews are off.
    pub preview_domain: String,
    /// The lowest workspace port a preview may show.
    pub preview_min_port: u16,
    /// The highest.
    pub preview_max_port: u16,
    /// Seconds a preview cookie lasts without a request (each request renews it).
    pub preview_idle_secs: u64,
    /// Seconds a preview cookie lasts at most, however much it is used.
    pub preview_max_age_secs: u64,
    /// Seconds the app may take to start answering a preview request (then 504).
    pub preview_response_timeout_secs: u64,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when finding a client's address (terminals, the firewall,
    /// and the per-address limit of failed authentication).
    #[serde(deserialize_with = "one_or_many")]
    pub relay_trusted_proxies: Vec<String>,
    /// Where the local control plane keeps workspaces; unset: `data_dir/workspaces`.
    pub workspaces_dir: Option<PathBuf>,
    /// The `gatehouse` binary the local control plane starts as each workspace's agent; unset: this one.
    pub workspaces_agent_program: Option<PathBuf>,
    /// The URL local workspace agents dial; unset: the address `listen` bound (loopback for an unspecified one),
    /// over `http://`.
    pub workspaces_gateway_url: Option<String>,
    /// The longest a blueprint's clone may take.
    pub workspaces_clone_timeout_secs: u64,
    /// How long a started workspace's agent may take to connect before the start counts as failed.
    pub workspaces_connect_timeout_secs: u64,
    /// How often the reconciler checks every workspace (it is also woken by each request).
    pub workspaces_reconcile_interval_ms: u64,
}

/// A list, or one string split at commas (environment variables hold strings).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text.split(',').map(str::to_string).collect(),
        OneOrMany::Many(items) => items,
    };
    Ok(items.into_iter().map(|item| item.trim().to_string()).filter(|item| !item.is_empty()).collect())
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|value| !value.is_empty())
}

/// Registered claims that cannot name the caller (`sub` can).
const REGISTERED_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti", "nonce"];

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            data_dir: PathBuf::from("data"),
            database_max_connections: 16,
            database_acquire_timeout_secs: 5,
            aggregate_cache_capacity: 10_000,
            migrate_on_start: true,
            bootstrap_admin: None,
            projector_batch_size: 500,
            projector_poll_interval_ms: 200,
            log: "info,sqlx=warn".into(),
            log_format: LogFormat::Text,
            shutdown_timeout_secs: 30,
            shutdown_drain_secs: 0,
            auth_local_issuer: true,
            auth_audience: "gatehouse".into(),
            auth_leeway_secs: 60,
            publish_approvals_required: 1,
            publish_require_reason: false,
            publish_request_ttl_secs: 7 * 24 * 3600,
            publish_max_patch_bytes: 128 * 1024,
            publish_expiry_sweep_secs: 60,
            publish_git_timeout_secs: 60,
            publish_branch_prefix: "gatehouse/publish/".into(),
            publish_push_timeout_secs: 300,
            publish_provider_timeout_secs: 30,
            publish_max_attempts: 6,
            publish_retry_backoff_secs: 5,
            publish_delivery_interval_ms: 5_000,
            audit_signing_key_file: None,
            audit_checkpoint_secs: 60,
            auth_sso_issuer: None,
            auth_sso_jwks_url: None,
            auth_sso_public_keys: Vec::new(),
            auth_email_claim: "email".into(),
            auth_jwks_refresh_secs: 3600,
            auth_jwks_min_refresh_secs: 30,
            http_hsts_max_age_secs: 0,
            http_cors_allowed_origins: Vec::new(),
            rate_limit_api_per_minute: None,
            rate_limit_launch_per_minute: None,
            rate_limit_auth_failures_per_minute: 60,
            idempotency_takeover_secs: 60,
            secrets_keys: None,
            secrets_key_file: None,
            relay_ticket_ttl_secs: 30,
            relay_allowed_origins: Vec::new(),
            relay_auth_timeout_secs: 5,
            relay_idle_timeout_secs: 15 * 60,
            relay_max_session_secs: 12 * 3600,
            relay_max_frame_bytes: 1024 * 1024,
            relay_max_sessions_per_user: 20,
            relay_detach_timeout_secs: 300,
            relay_resume_buffer_bytes: 1024 * 1024,
            relay_resume_buffer_total_bytes: 256 * 1024 * 1024,
            relay_trusted_proxies: Vec::new(),
            preview_domain: "preview.localhost".into(),
            preview_min_port: 1024,
            preview_max_port: 65535,
            preview_idle_secs: 600,
            preview_max_age_secs: 12 * 3600,
            preview_response_timeout_secs: 60,
            workspaces_dir: None,
            workspaces_agent_program: None,
            workspaces_gateway_url: None,
            workspaces_clone_timeout_secs: 300,
            workspaces_connect_timeout_secs: 60,
            workspaces_reconcile_interval_ms: 2_000,
        }
    }
}

/// Environment keys that belong to other tools and are not settings.
const NOT_SETTINGS: &[&str] = &[
    "config",
    "test_database_url",
    "agent_server",
    "agent_token",
    "agent_workspace",
    "agent_shell",
    "agent_ca_file",
    "agent_dir",
    "agent_dev_command",
];

impl Settings {
    /// Loads defaults, then `file` (if any), then `GATEHOUSE_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "configuration file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment
            .merge(
                Env::prefixed("GATEHOUSE_")
                    .filter(|key| !NOT_SETTINGS.iter().any(|skip| key.as_str().eq_ignore_ascii_case(skip))),
            )
            .extract()
            .map_err(Box::new)
    }

    /// The relay's limits.
    pub fn relay(&self) -> anyhow::Result<relay::gateway::RelayLimits> {
        let trusted_proxies = self
            .relay_trusted_proxies
            .iter()
            .map(|raw| {
                domain::firewall::Cidr::parse(raw).map_err(|error| anyhow::anyhow!("relay_trusted_proxies: {error}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(relay::gateway::RelayLimits {
            trusted_proxies,
            ticket_ttl: Duration::from_secs(self.relay_ticket_ttl_secs.max(1)),
            allowed_origins: self.relay_allowed_origins.clone(),
            auth_timeout: Duration::from_secs(self.relay_auth_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(self.relay_idle_timeout_secs.max(1)),
            max_age: Duration::from_secs(self.relay_max_session_secs.max(1)),
            max_frame: self.relay_max_frame_bytes.max(relay::mux::MAX_DATA + 16),
            max_sessions_per_user: self.relay_max_sessions_per_user.max(1),
        })
    }

    /// How long terminal sessions wait for their browsers and how much output they keep.
    pub fn resume(&self) -> relay::terminal::ResumeLimits {
        relay::terminal::ResumeLimits {
            // At most a year: a deadline this far is no deadline, and the clock's arithmetic stays in range.
            detach_timeout: Duration::from_secs(self.relay_detach_timeout_secs.min(365 * 86_400)),
            buffer: self.relay_resume_buffer_bytes.max(relay::terminal::RESERVED),
            total: self.relay_resume_buffer_total_bytes,
        }
    }

    /// The preview's settings, checked: a domain of lower-case DNS labels (or none), a port range that holds a port.
    pub fn preview(&self) -> anyhow::Result<relay::preview::PreviewLimits> {
        let domain = self.preview_domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        };
        if !domain.is_empty() && (domain.len() > 180 || !domain.split('.').all(label_ok)) {
            anyhow::bail!("preview_domain: {:?} is not a domain name (labels of a-z, 0-9 and -)", self.preview_domain);
        }
        if self.preview_min_port == 0 || self.preview_min_port > self.preview_max_port {
            anyhow::bail!("preview_min_port..preview_max_port must hold at least one port, and not 0");
        }
        let seconds = |value: u64| Duration::from_secs(value.clamp(1, 365 * 86_400));
        Ok(relay::preview::PreviewLimits {
            domain,
            min_port: self.preview_min_port,
            max_port: self.preview_max_port,
            idle: seconds(self.preview_idle_secs),
            max_age: seconds(self.preview_max_age_secs),
            response_timeout: seconds(self.preview_response_timeout_secs),
        })
    }

    /// The local control plane's settings, for a gateway listening on `address`.
    pub fn local_control_plane(
        &self,
        address: std::net::SocketAddr,
    ) -> anyhow::Result<controlplane::local::LocalConfig> {
        let agent_program = match &self.workspaces_agent_program {
            Some(program) => program.clone(),
            None => std::env::current_exe()?,
        };
        let gateway_url = match non_empty(&self.workspaces_gateway_url) {
            Some(url) => url.to_string(),
            None => {
                let ip = match address.ip() {
                    std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
                    }
                    std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                        std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
                    }
                    ip => ip,
                };
                format!("http://{}", std::net::SocketAddr::new(ip, address.port()))
            }
        };
        Ok(controlplane::local::LocalConfig {
            root: self.workspaces_dir.clone().unwrap_or_else(|| self.data_dir.join("workspaces")),
            agent_program,
            gateway_url,
            clone_timeout: Duration::from_secs(self.workspaces_clone_timeout_secs.max(1)),
            stop_grace: Duration::from_secs(10),
        })
    }

    /// The reconciler's settings.
    pub fn reconciler(&self) -> controlplane::ReconcilerConfig {
        controlplane::ReconcilerConfig {
            interval: Duration::from_millis(self.workspaces_reconcile_interval_ms.max(50)),
            connect_timeout: Duration::from_secs(self.workspaces_connect_timeout_secs.max(1)),
            ..controlplane::ReconcilerConfig::default()
        }
    }

    /// The rate limits to start with: the pinned ones, else the portal settings' defaults (the stored portal
    /// settings replace those before the first request; see [`Settings::rate_limit_pins`]).
    pub fn rate_limits(&self) -> api::limits::LimitConfig {
        let defaults = domain::portal::DEFAULT_LIMITS;
        api::limits::LimitConfig {
            api_per_minute: self.rate_limit_api_per_minute.unwrap_or(defaults.api_requests_per_minute),
            launch_per_minute: self.rate_limit_launch_per_minute.unwrap_or(defaults.launches_per_minute),
            auth_failures_per_minute: self.rate_limit_auth_failures_per_minute,
        }
    }

    /// Which per-user limits the operator pinned; the others follow the portal settings.
    pub fn rate_limit_pins(&self) -> api::limits::Pins {
        api::limits::Pins { api: self.rate_limit_api_per_minute, launch: self.rate_limit_launch_per_minute }
    }

    /// The CORS origins, each checked and written as browsers send it (`Origin`).
    pub fn cors_origins(&self) -> anyhow::Result<Vec<String>> {
        let mut origins = Vec::new();
        for raw in &self.http_cors_allowed_origins {
            let origin =
                api::cors::parse_origin(raw).map_err(|error| anyhow::anyhow!("http_cors_allowed_origins: {error}"))?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(origins)
    }

    /// The store configuration these settings describe.
    pub fn store(&self) -> store::StoreConfig {
        store::StoreConfig {
            database_url: self.database_url.clone().filter(|url| !url.trim().is_empty()),
            data_dir: self.data_dir.clone(),
            max_connections: self.database_max_connections.max(1),
            acquire_timeout: Duration::from_secs(self.database_acquire_timeout_secs.max(1)),
            aggregate_cache_capacity: self.aggregate_cache_capacity.max(1),
        }
    }

    /// The local issuer, when enabled (its key is created on first use).
    pub fn local_issuer(&self) -> Result<Option<api::auth::LocalIssuer>, api::auth::KeyError> {
        if !self.auth_local_issuer {
            return Ok(None);
        }
        api::auth::LocalIssuer::load_or_create(&self.data_dir, &self.auth_audience).map(Some)
    }

    /// The key that signs audit checkpoints: the configured file, or one created in the data directory.
    pub fn audit_key(&self) -> anyhow::Result<audit::AuditKey> {
        match &self.audit_signing_key_file {
            Some(path) => audit::AuditKey::load(path)
                .map_err(|error| anyhow::anyhow!("audit signing key {}: {error}", path.display())),
            None => {
                let path = self.data_dir.join("audit-ed25519.key");
                std::fs::create_dir_all(&self.data_dir)
                    .map_err(|error| anyhow::anyhow!("data directory {}: {error}", self.data_dir.display()))?;
                audit::AuditKey::load_or_create(&path)
                    .map_err(|error| anyhow::anyhow!("audit signing key {}: {error}", path.display()))
            }
        }
    }

    /// The secrets key ring and where it came from: `secrets_keys`, else `secrets_key_file`, else
    /// `data_dir/secrets.key` (created with one new key if missing). Both set is refused: one source of truth.
    pub fn secrets_vault(&self) -> anyhow::Result<api::vault::Vault> {
        use api::vault::{KeySource, Vault};
        match (non_empty(&self.secrets_keys), &self.secrets_key_file) {
            (Some(_), Some(_)) => anyhow::bail!("set secrets_keys or secrets_key_file, not both"),
            (Some(keys), None) => {
                let ring = secrets::KeyRing::parse(keys).map_err(|error| anyhow::anyhow!("secrets_keys: {error}"))?;
                Ok(Vault::new(ring, KeySource::Configured))
            }
            (None, Some(path)) => {
                let ring =
                    secrets::KeyRing::load(path).map_err(|error| anyhow::anyhow!("secrets_key_file: {error}"))?;
                Ok(Vault::new(ring, KeySource::File(path.clone())))
            }
            (None, None) => {
                let path = self.data_dir.join("secrets.key");
                std::fs::create_dir_all(&self.data_dir)
                    .map_err(|error| anyhow::anyhow!("data directory {}: {error}", self.data_dir.display()))?;
                let ring = secrets::KeyRing::load_or_create(&path).map_err(|error| anyhow::anyhow!("{error}"))?;
                Ok(Vault::new(ring, KeySource::File(path)))
            }
        }
    }

    /// Milliseconds after which an unanswered `Idempotency-Key` claim is taken over. Must exceed the store's
    /// deadline: a first attempt's append never commits after it, so the log's answer is final by then.
    pub fn idempotency_stale_ms(&self) -> anyhow::Result<i64> {
        if self.idempotency_takeover_secs <= self.database_acquire_timeout_secs.max(1) {
            anyhow::bail!(
                "idempotency_takeover_secs ({}) must be greater than database_acquire_timeout_secs ({})",
                self.idempotency_takeover_secs,
                self.database_acquire_timeout_secs.max(1)
            );
        }
        Ok(i64::try_from(self.idempotency_takeover_secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    /// The publishing policy these settings describe.
    pub fn publish_policy(&self) -> anyhow::Result<api::publishing::PublishPolicy> {
        if self.publish_approvals_required == 0 {
            anyhow::bail!("publish_approvals_required must be at least 1");
        }
        if self.publish_request_ttl_secs == 0 {
            anyhow::bail!("publish_request_ttl_secs must be at least 1");
        }
        if self.publish_max_patch_bytes > domain::publishing::values::MAX_PATCH_BYTES {
            anyhow::bail!("publish_max_patch_bytes must be at most {}", domain::publishing::values::MAX_PATCH_BYTES);
        }
        let ttl_secs = i64::try_from(self.publish_request_ttl_secs).unwrap_or(i64::MAX).min(10 * 365 * 24 * 3600);
        Ok(api::publishing::PublishPolicy {
            approvals_required: self.publish_approvals_required,
            require_reason: self.publish_require_reason,
            ttl: chrono::Duration::seconds(ttl_secs),
            max_patch_bytes: self.publish_max_patch_bytes,
            git_timeout_secs: self.publish_git_timeout_secs.clamp(1, 3_600),
        })
    }

    /// The publisher's settings (publish delivery).
    pub fn publisher(&self) -> anyhow::Result<publisher::PublisherConfig> {
        let probe = format!("{}x", self.publish_branch_prefix);
        if !relay::git::valid_branch(&probe) || probe.len() > 200 {
            anyhow::bail!(
                "publish_branch_prefix {:?} does not make valid branch names (A-Z a-z 0-9 . _ / -, no `..`, no \
                 leading `-`, `/` or `.`)",
                self.publish_branch_prefix
            );
        }
        if self.publish_max_attempts == 0 {
            anyhow::bail!("publish_max_attempts must be at least 1");
        }
        let backoff =
            chrono::Duration::seconds(i64::try_from(self.publish_retry_backoff_secs.clamp(1, 3_600)).unwrap_or(5));
        Ok(publisher::PublisherConfig {
            interval: Duration::from_millis(self.publish_delivery_interval_ms.clamp(50, 600_000)),
            branch_prefix: self.publish_branch_prefix.clone(),
            push_timeout_secs: self.publish_push_timeout_secs.clamp(1, 3_600),
            provider_timeout: Duration::from_secs(self.publish_provider_timeout_secs.clamp(1, 600)),
            retry: domain::publishing::RetryPolicy {
                max_attempts: self.publish_max_attempts,
                first_backoff: backoff,
                max_backoff: chrono::Duration::minutes(5).max(backoff),
            },
        })
    }

    /// The external SSO issuer these settings describe, if any; a half-configured issuer is an error.
    pub fn sso_issuer(&self) -> Result<Option<api::auth::SsoConfig>, String> {
        let issuer = non_empty(&self.auth_sso_issuer);
        let jwks_url = non_empty(&self.auth_sso_jwks_url);
        let has_keys = jwks_url.is_some() || !self.auth_sso_public_keys.is_empty();
        let Some(issuer) = issuer else {
            if has_keys {
                return Err("auth_sso_jwks_url or auth_sso_public_keys is set but auth_sso_issuer is not".into());
            }
            return Ok(None);
        };
        let keys = match (jwks_url, self.auth_sso_public_keys.is_empty()) {
            (None, true) => {
                return Err(format!(
                    "auth_sso_issuer is {issuer:?} but neither auth_sso_jwks_url nor auth_sso_public_keys is set"
                ))
            }
            (Some(_), false) => return Err("set auth_sso_jwks_url or auth_sso_public_keys, not both".into()),
            (Some(url), true) => api::auth::SsoKeySource::Jwks(api::auth::JwksConfig {
                url: url.to_string(),
                refresh_interval: Duration::from_secs(self.auth_jwks_refresh_secs.max(1)),
                min_refresh_interval: Duration::from_secs(self.auth_jwks_min_refresh_secs),
                timeout: api::auth::keys::FETCH_TIMEOUT,
            }),
            (None, false) => api::auth::SsoKeySource::PublicKeys(self.auth_sso_public_keys.clone()),
        };
        let email_claim = self.auth_email_claim.trim();
        if email_claim.is_empty() || REGISTERED_CLAIMS.contains(&email_claim) {
            return Err(format!("auth_email_claim {email_claim:?} cannot hold an email address"));
        }
        Ok(Some(api::auth::SsoConfig { issuer: issuer.to_string(), keys, email_claim: email_claim.to_string() }))
    }

    /// The projector configuration these settings describe.
    pub fn projector(&self) -> projections::ProjectorConfig {
        projections::ProjectorConfig {
            batch_size: self.projector_batch_size.clamp(1, 10_000),
            poll_interval: Duration::from_millis(self.projector_poll_interval_ms.max(10)),
            ..projections::ProjectorConfig::default()
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error, whatever its size.
mod tests {
    use super::*;

    #[test]
    fn a_toml_file_overrides_defaults_and_unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gatehouse.toml", "listen = \"0.0.0.0:9000\"\nlog_format = \"json\"")?;
            let settings = Settings::load(Some(Path::new("gatehouse.toml"))).map_err(|error| *error)?;
            assert_eq!(settings.listen, "0.0.0.0:9000");
            assert_eq!(settings.log_format, LogFormat::Json);

            jail.set_env("GATEHOUSE_LISTEN", "127.0.0.1:7000");
            jail.set_env("GATEHOUSE_TEST_DATABASE_URL", "postgres://ignored");
            let settings = Settings::load(Some(Path::new("gatehouse.toml"))).map_err(|error| *error)?;
            assert_eq!(settings.listen, "127.0.0.1:7000", "the environment wins over the file");

            jail.create_file("bad.toml", "lisen = \"typo\"")?;
            assert!(Settings::load(Some(Path::new("bad.toml"))).is_err());
            jail.set_env("GATEHOUSE_LOG_FORMAT", "yaml");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn rate_limits_come_from_the_environment_and_zero_is_allowed() {
        figment::Jail::expect_with(|jail| {
            let settings = Settings::load(None).map_err(|error| *error)?;
            assert_eq!(
                settings.rate_limits(),
                api::limits::LimitConfig { api_per_minute: 200, launch_per_minute: 5, auth_failures_per_minute: 60 }
            );
            jail.set_env("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "0");
            jail.set_env("GATEHOUSE_RATE_LIMIT_LAUNCH_PER_MINUTE", "10");
            jail.set_env("GATEHOUSE_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "7");
            let settings = Settings::load(None).map_err(|error| *error)?;
            assert_eq!(
                settings.rate_limits(),
                api::limits::LimitConfig { api_per_minute: 0, launch_per_minute: 10, auth_failures_per_minute: 7 }
            );
            jail.set_env("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "-1");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn cors_origins_are_a_list_written_as_browsers_send_them_and_bad_ones_are_refused() {
        figment::Jail::expect_with(|jail| {
            assert!(Settings::load(None)
                .map_err(|error| *error)?
                .cors_origins()
                .map_err(|e| e.to_string())?
                .is_empty());
            jail.set_env(
                "GATEHOUSE_HTTP_CORS_ALLOWED_ORIGINS",
                "https://Portal.example.com, http://localhost:5173, https://portal.example.com:443",
            );
            let settings = Settings::load(None).map_err(|error| *error)?;
            assert_eq!(
                settings.cors_origins().map_err(|error| error.to_string())?,
                ["https://portal.example.com", "http://localhost:5173"]
            );
            jail.set_env("GATEHOUSE_HTTP_CORS_ALLOWED_ORIGINS", "*");
            let error = Settings::load(None).map_err(|error| *error)?.cors_origins().err().map(|e| e.to_string());
            assert!(error.is_some_and(|error| error.starts_with("http_cors_allowed_origins:")));
            jail.set_env("GATEHOUSE_HTTP_CORS_ALLOWED_ORIGINS", "https://portal.example.com/app");
            assert!(Settings::load(None).map_err(|error| *error)?.cors_origins().is_err());
            Ok(())
        });
    }

    #[test]
    fn sso_settings_need_an_issuer_and_exactly_one_key_source() {
        figment::Jail::expect_with(|jail| {
            assert!(Settings::load(None)
                .map_err(|error| *error)?
                .sso_issuer()
                .map_err(figment::Error::from)?
                .is_none());

            jail.set_env("GATEHOUSE_AUTH_SSO_ISSUER", "https://sso.example.com");
            let error = Settings::load(None).map_err(|error| *error)?.sso_issuer().err().unwrap_or_default();
            assert!(error.contains("neither auth_sso_jwks_url nor auth_sso_public_keys"), "{error}");

            jail.set_env("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", "/keys/a.pem, /keys/b.pem#b2");
            let settings = Settings::load(None).map_err(|error| *error)?;
            assert_eq!(settings.auth_sso_public_keys, ["/keys/a.pem", "/keys/b.pem#b2"]);
            let sso = settings.sso_issuer().map_err(figment::Error::from)?;
            assert!(
                matches!(sso.map(|sso| sso.keys), Some(api::auth::SsoKeySource::PublicKeys(keys)) if keys.len() == 2)
            );
            jail.set_env("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", "[/keys/a.pem]");
            assert_eq!(Settings::load(None).map_err(|error| *error)?.auth_sso_public_keys, ["/keys/a.pem"]);

            jail.set_env("GATEHOUSE_AUTH_SSO_JWKS_URL", "https://sso.example.com/jwks");
            let error = Settings::load(None).map_err(|error| *error)?.sso_issuer().err().unwrap_or_default();
            assert!(error.contains("not both"), "{error}");

            jail.set_env("GATEHOUSE_AUTH_SSO_PUBLIC_KEYS", "");
            jail.set_env("GATEHOUSE_AUTH_EMAIL_CLAIM", "upn");
            jail.set_env("GATEHOUSE_AUTH_JWKS_MIN_REFRESH_SECS", "5");
            let sso = Settings::load(None).map_err(|error| *error)?.sso_issuer().map_err(figment::Error::from)?;
            let Some(sso) = sso else { return Err("no SSO issuer".into()) };
            assert_eq!(sso.email_claim, "upn");
            assert!(
                matches!(sso.keys, api::auth::SsoKeySource::Jwks(jwks) if jwks.min_refresh_interval == Duration::from_secs(5))
            );

            jail.set_env("GATEHOUSE_AUTH_EMAIL_CLAIM", "aud");
            assert!(Settings::load(None).map_err(|error| *error)?.sso_issuer().is_err());

            jail.set_env("GATEHOUSE_AUTH_SSO_ISSUER", "");
            let error = Settings::load(None).map_err(|error| *error)?.sso_issuer().err().unwrap_or_default();
            assert!(error.contains("auth_sso_issuer is not"), "{error}");
            Ok(())
        });
    }
}
