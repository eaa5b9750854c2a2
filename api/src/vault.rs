//! Secrets in use (ADR 0016, 0020): the key ring the service holds, sealing values before they enter a command,
//! opening them at the moment of use, the inventory of every current secret, and online key rotation.
//!
//! - [`Vault`] holds the [`KeyRing`]. When the ring came from a key file, it can be read again without a restart
//!   ([`Vault::reload`]: on SIGHUP, before every rewrap, and by [`Vault::open`] when a ciphertext names a key this
//!   process does not hold yet, so replicas sharing a mounted key file follow a rotation by themselves). A new
//!   ring that lacks a key a current secret still uses is refused and the old ring stays.
//! - Every secret is bound (associated data) to where it is stored: [`org_binding`], [`ai_binding`].
//! - [`inventory`] lists every current secret from the aggregates (the event log, never a lagging read model);
//!   [`status`] tells which keys they use and whether each opens; [`rewrap_all`] moves them to the primary key,
//!   one event each, skipping those already there, so it is idempotent and resumable after a crash.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cqrs_es::Aggregate;
use domain::blueprint::{AiProvider, ApiKey, Blueprint, BlueprintCommand, BlueprintError, LastFour, SealedSecret};
use domain::org::{Credential, Org, OrgCommand, OrgError, BINDING_ORG, ORG_ID};
use domain::values::BlueprintKey;
use domain::Email;
use secrets::{Binding, Ciphertext, CryptoError, KeyError, KeyId, KeyRing, MissingKeys, Secret};
use serde::Serialize;
use store::{AggregateRepository, CommandError, EventMetadata, EventStore, StoreError};

use crate::{Problem, ProblemCode};

/// The most bytes a plaintext secret may have: API tokens and provider keys are far shorter (GitHub's are under
/// 300), and its ciphertext must fit a `SealedSecret` (4 KiB: 22 bytes of prefix, then base64 of the nonce, the
/// plaintext and the tag).
pub const MAX_SECRET_BYTES: usize = 3000;

/// The fewest bytes a plaintext secret may have: real tokens are longer, and with fewer its last four characters,
/// which admins are shown, would give away too much of it.
pub const MIN_SECRET_BYTES: usize = 12;

/// Least time between two reloads that a ciphertext under an unknown key causes.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where the key ring came from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A list in configuration (`GATEHOUSE_SECRETS_KEYS`): fixed for the process's life.
    Configured,
    /// A key file, read again on reload.
    File(PathBuf),
}

/// The key ring in use.
pub struct Vault {
    ring: RwLock<Arc<KeyRing>>,
    source: KeySource,
    last_reload: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("ring", &*self.ring()).field("source", &self.source).finish()
    }
}

/// Why a reload was refused; the ring in use stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The ring came from configuration, not a file.
    #[error("the secrets key ring comes from GATEHOUSE_SECRETS_KEYS and cannot be reloaded; restart to change it")]
    NotAFile,
    /// The file does not hold a valid ring.
    #[error("{0}")]
    Keys(#[from] KeyError),
    /// The new ring lacks keys that current secrets use.
    #[error("the new secrets key ring is refused: {0}")]
    MissingKeys(#[from] MissingKeys),
}

impl Vault {
    /// A vault over `ring`, which came from `source`.
    pub fn new(ring: KeyRing, source: KeySource) -> Self {
        Self { ring: RwLock::new(Arc::new(ring)), source, last_reload: Mutex::new(None) }
    }

    /// The ring in use now.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Seals a plaintext for `binding` under the primary key: the ciphertext and the last four characters, taken
    /// before sealing. `field` names the request field in a refusal.
    pub fn seal(&self, field: &'static str, plaintext: Secret, binding: &Binding) -> Result<ApiKey, Problem> {
        check_plaintext(field, &plaintext)?;
        let last_four =
            plaintext.last_four().and_then(|four| LastFour::parse(&four).ok()).ok_or_else(Problem::internal)?;
        let sealed = self.ring().encrypt(&plaintext, binding).map_err(|error| {
            tracing::error!(error.message = %error, secret = %binding, "cannot seal a secret");
            Problem::internal()
        })?;
        let sealed = SealedSecret::parse(&sealed.encode()).map_err(|_| Problem::internal())?;
        Ok(ApiKey { sealed, last_four })
    }

    /// Opens a stored secret at the moment of use. A ciphertext under a key this process does not hold makes it
    /// read its key file again first (at most once a second): another replica may have rotated already.
    pub fn open(&self, sealed: &SealedSecret, binding: &Binding) -> Result<Secret, CryptoError> {
        let ciphertext = Ciphertext::parse(sealed.expose_sealed()).map_err(|_| CryptoError::Decrypt(KeyId([0; 8])))?;
        match self.ring().decrypt(&ciphertext, binding) {
            Err(CryptoError::UnknownKey(id)) if matches!(self.source, KeySource::File(_)) => {
                let due = {
                    let mut last = self.last_reload.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let due = last.is_none_or(|at| at.elapsed() >= MIN_RELOAD_INTERVAL);
                    if due {
                        *last = Some(Instant::now());
                    }
                    due
                };
                if due {
                    if let Err(error) = self.reload_unchecked() {
                        tracing::warn!(error.message = %error, "cannot reload the secrets key ring");
                    }
                }
                self.ring().decrypt(&ciphertext, binding).map_err(|_| CryptoError::UnknownKey(id))
            }
            other => other,
        }
    }

    /// Reads the key file again and puts its ring in use, unless it lacks a key that a secret of `in_use` needs
    /// (then the ring in use stays). Returns whether the ring changed.
    pub fn reload(&self, in_use: &[StoredSecret]) -> Result<bool, ReloadError> {
        let KeySource::File(path) = &self.source else { return Err(ReloadError::NotAFile) };
        let ring = KeyRing::load(path)?;
        ring.check_in_use(key_ids(in_use))?;
        Ok(self.install(ring))
    }

    /// A reload for [`open`](Self::open): the new ring may only add keys, never lose one the current ring has.
    fn reload_unchecked(&self) -> Result<bool, ReloadError> {
        let KeySource::File(path) = &self.source else { return Err(ReloadError::NotAFile) };
        let ring = KeyRing::load(path)?;
        let current = self.ring();
        if current.key_ids().any(|id| !ring.key_ids().any(|new| new == id)) {
            // Losing keys is for a checked reload (SIGHUP, rewrap), which knows what is in use.
            return Ok(false);
        }
        Ok(self.install(ring))
    }

    fn install(&self, ring: KeyRing) -> bool {
        let mut slot = self.ring.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let same = slot.key_ids().eq(ring.key_ids());
        if !same {
            tracing::info!(primary_key_id = %ring.primary_key_id(), keys = ring.key_ids().len(), "secrets key ring reloaded");
            *slot = Arc::new(ring);
        }
        !same
    }
}

/// Refuses plaintexts the API does not store: empty, too long, or anything but printable ASCII without spaces
/// (tokens and API keys are made of those; a pasted newline or space is a mistake, not part of the token).
pub fn check_plaintext(field: &'static str, plaintext: &Secret) -> Result<(), Problem> {
    let value = plaintext.expose();
    if value.len() < MIN_SECRET_BYTES || value.len() > MAX_SECRET_BYTES || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Problem::invalid_field(
            field,
            format!("{field} is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} characters of printable ASCII without spaces"),
        ));
    }
    Ok(())
}

/// The binding of one of the organisation's credentials.
pub fn org_binding(credential: Credential) -> Binding {
    Binding::new(BINDING_ORG, Org::TYPE, ORG_ID, credential.binding_field())
}

/// The binding of a blueprint's AI provider key.
pub fn ai_binding(key: &BlueprintKey, provider: AiProvider) -> Binding {
    Binding::new(BINDING_ORG, Blueprint::TYPE, key.as_str(), format!("ai.{}.api_key", provider.as_str()))
}

/// What holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// One of the organisation's credentials.
    Org(Credential),
    /// A blueprint's AI provider key.
    Blueprint(BlueprintKey, AiProvider),
}

/// One current secret: where it is, and its ciphertext (never its plaintext).
#[derive(Debug, Clone)]
pub struct StoredSecret {
    /// What holds it.
    pub holder: Holder,
    /// Its binding.
    pub binding: Binding,
    /// Its ciphertext.
    pub sealed: SealedSecret,
}

impl StoredSecret {
    /// Its name in reports: `org/admin_api_token`, `blueprint/web/ai.anthropic.api_key`.
    pub fn name(&self) -> String {
        match &self.holder {
            Holder::Org(credential) => format!("org/{credential}"),
            Holder::Blueprint(key, provider) => format!("blueprint/{key}/ai.{}.api_key", provider.as_str()),
        }
    }

    /// The key it is under, if its ciphertext parses.
    pub fn key_id(&self) -> Option<KeyId> {
        Ciphertext::parse(self.sealed.expose_sealed()).ok().map(|ciphertext| ciphertext.key_id())
    }
}

/// The key ids `secrets` use, for [`KeyRing::check_in_use`]. A ciphertext that does not parse counts under the
/// all-zero key id, which no key has, so it is reported too.
fn key_ids(secrets: &[StoredSecret]) -> impl Iterator<Item = (Binding, KeyId)> + '_ {
    secrets.iter().map(|secret| (secret.binding.clone(), secret.key_id().unwrap_or(KeyId([0; 8]))))
}

/// Refuses a ring that lacks a key current secrets use: one line naming each missing key id and its secrets.
pub fn check_ring(ring: &KeyRing, secrets: &[StoredSecret]) -> Result<(), MissingKeys> {
    ring.check_in_use(key_ids(secrets))
}

/// The aggregates that hold secrets.
#[derive(Clone)]
pub struct Holders {
    /// The event store (to list blueprints).
    pub store: EventStore,
    /// The organisation.
    pub org: Arc<AggregateRepository<Org>>,
    /// The blueprints.
    pub blueprints: Arc<AggregateRepository<Blueprint>>,
}

/// Every current secret, read from the aggregates: the organisation's credentials and the AI keys of every
/// blueprint not removed (a removed blueprint's keys are never used again).
pub async fn inventory(holders: &Holders) -> Result<Vec<StoredSecret>, StoreError> {
    let mut secrets = Vec::new();
    let (org, _) = holders.org.load(ORG_ID).await?;
    for (credential, key) in org.credentials() {
        secrets.push(StoredSecret {
            holder: Holder::Org(credential),
            binding: org_binding(credential),
            sealed: key.sealed.clone(),
        });
    }
    for id in holders.store.aggregate_ids(Blueprint::TYPE).await? {
        let (blueprint, _) = holders.blueprints.load(&id).await?;
        let Some(key) = blueprint.key().cloned() else { continue };
        if blueprint.is_removed() {
            continue;
        }
        for settings in blueprint.ai_providers() {
            if let Some(api_key) = settings.api_key() {
                secrets.push(StoredSecret {
                    holder: Holder::Blueprint(key.clone(), settings.provider()),
                    binding: ai_binding(&key, settings.provider()),
                    sealed: api_key.sealed.clone(),
                });
            }
        }
    }
    Ok(secrets)
}

/// One key of the ring, or one missing from it, and how many current secrets use it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyUse {
    /// The key id (16 hex digits; it does not reveal the key).
    pub key_id: String,
    /// Whether it encrypts new secrets.
    pub primary: bool,
    /// Whether this process holds it.
    pub in_ring: bool,
    /// Current secrets under it.
    pub secrets: usize,
}

/// One current secret's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretState {
    /// Its name: `org/<credential>` or `blueprint/<key>/ai.<provider>.api_key`.
    pub secret: String,
    /// The key it is under (absent when its ciphertext is damaged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Whether it is under the primary key.
    pub current: bool,
    /// Whether it opened just now with the ring in use (it was decrypted and dropped, never shown).
    pub opens: bool,
}

/// Which keys current secrets use.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecretsStatus {
    /// The key new secrets are sealed under.
    pub primary_key_id: String,
    /// The ring's keys, the primary first, then key ids secrets use that the ring lacks.
    pub keys: Vec<KeyUse>,
    /// Every current secret.
    pub secrets: Vec<SecretState>,
    /// Secrets not under the primary key: what a rewrap would move.
    pub to_rewrap: usize,
}

/// What current secrets use, each opened with the ring in use to prove it still can be.
pub fn status(vault: &Vault, secrets: &[StoredSecret]) -> SecretsStatus {
    let ring = vault.ring();
    let primary = ring.primary_key_id();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut states = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key_id = secret.key_id();
        if let Some(id) = key_id {
            *counts.entry(id.to_string()).or_default() += 1;
        }
        states.push(SecretState {
            secret: secret.name(),
            key_id: key_id.map(|id| id.to_string()),
            current: key_id == Some(primary),
            opens: vault.open(&secret.sealed, &secret.binding).is_ok(),
        });
    }
    let ring_ids: Vec<String> = ring.key_ids().map(|id| id.to_string()).collect();
    let mut keys: Vec<KeyUse> = ring_ids
        .iter()
        .enumerate()
        .map(|(index, id)| KeyUse {
            key_id: id.clone(),
            primary: index == 0,
            in_ring: true,
            secrets: counts.get(id).copied().unwrap_or(0),
        })
        .collect();
    for (id, count) in &counts {
        if !ring_ids.contains(id) {
            keys.push(KeyUse { key_id: id.clone(), primary: false, in_ring: false, secrets: *count });
        }
    }
    let to_rewrap = states.iter().filter(|state| !state.current).count();
    SecretsStatus { primary_key_id: primary.to_string(), keys, secrets: states, to_rewrap }
}

/// What a rewrap did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RewrapReport {
    /// The key every secret is now under.
    pub primary_key_id: String,
    /// Secrets moved to the primary key (one event each).
    pub rewrapped: usize,
    /// Secrets already under it.
    pub already_current: usize,
    /// Secrets replaced by an admin while the rewrap ran (the new value is under the primary key already).
    pub superseded: usize,
    /// Secrets that could not be moved, by name, with the reason (no secret material in it).
    pub failed: Vec<RewrapFailure>,
}

/// A secret a rewrap could not move.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RewrapFailure {
    /// Its name.
    pub secret: String,
    /// Why.
    pub reason: String,
}

/// Moves every current secret to the primary key: each one still under an older key is decrypted and encrypted
/// again in memory and committed as its own rewrap event, which the aggregate accepts only if the stored
/// ciphertext is still the one read (so a value an admin set meanwhile is never overwritten). Secrets already
/// under the primary key are left alone, so running it again, or after a crash half-way, finishes the job.
pub async fn rewrap_all(
    vault: &Vault,
    holders: &Holders,
    by: Option<&Email>,
    metadata: &EventMetadata,
) -> Result<RewrapReport, StoreError> {
    let ring = vault.ring();
    let mut report = RewrapReport { primary_key_id: ring.primary_key_id().to_string(), ..RewrapReport::default() };
    for secret in inventory(holders).await? {
        let fail = |reason: String| RewrapFailure { secret: secret.name(), reason };
        let ciphertext = match Ciphertext::parse(secret.sealed.expose_sealed()) {
            Ok(ciphertext) => ciphertext,
            Err(error) => {
                report.failed.push(fail(format!("the stored ciphertext is damaged: {error}")));
                continue;
            }
        };
        let moved = match ring.rewrap(&ciphertext, &secret.binding) {
            Ok(None) => {
                report.already_current += 1;
                continue;
            }
            Ok(Some(moved)) => moved,
            Err(error) => {
                report.failed.push(fail(error.to_string()));
                continue;
            }
        };
        let Ok(to) = SealedSecret::parse(&moved.encode()) else {
            report.failed.push(fail("the new ciphertext is too long to store".into()));
            continue;
        };
        let from = secret.sealed.clone();
        let by = by.cloned();
        let outcome = match &secret.holder {
            Holder::Org(credential) => {
                let command = OrgCommand::RewrapCredential { credential: *credential, from, to, by };
                match holders.org.execute_retrying(ORG_ID, command, metadata, 5).await {
                    Ok(_) => Ok(true),
                    Err(CommandError::Rejected(OrgError::RewrapSuperseded(_) | OrgError::CredentialNotSet(_))) => {
                        Ok(false)
                    }
                    Err(error) => Err(error.to_string()),
                }
            }
            Holder::Blueprint(key, provider) => {
                let command = BlueprintCommand::RewrapAiKey { provider: *provider, from, to, by };
                match holders.blueprints.execute_retrying(key.as_str(), command, metadata, 5).await {
                    Ok(_) => Ok(true),
                    Err(CommandError::Rejected(
                        BlueprintError::RewrapSuperseded(_)
                        | BlueprintError::AiProviderNotConfigured(_)
                        | BlueprintError::Removed(_),
                    )) => Ok(false),
                    Err(CommandError::Store(error)) => return Err(error),
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        match outcome {
            Ok(true) => report.rewrapped += 1,
            Ok(false) => report.superseded += 1,
            Err(reason) => report.failed.push(fail(reason)),
        }
    }
    Ok(report)
}

/// A refusal of a ring, as the API reports it (no key material; key ids and secret names only).
pub fn reload_problem(error: &ReloadError) -> Problem {
    Problem::new(ProblemCode::KeyRingRefused, "The secrets key ring cannot be reloaded").detail(error.to_string())
}

/// What a response shows instead of a ciphertext.
pub const SEALED_PLACEHOLDER: &str = "[sealed]";

/// Replaces every ciphertext inside `value` (a string that parses as one) with [`SEALED_PLACEHOLDER`], for the
/// audit API's event payloads and replayed states: a response never carries secret material, encrypted or not.
pub fn redact_sealed(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(text) if text.starts_with(secrets::VERSION) && Ciphertext::parse(text).is_ok() => {
            *text = SEALED_PLACEHOLDER.to_string();
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_sealed),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(redact_sealed),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_secret_seals_into_a_sealed_secret() {
        let vault = Vault::new(
            KeyRing::parse(secrets::generate_key().expect("key").expose()).expect("ring"),
            KeySource::Configured,
        );
        let binding = ai_binding(&BlueprintKey::parse(&"k".repeat(128)).expect("key"), AiProvider::Custom);
        let longest = Secret::new("x".repeat(MAX_SECRET_BYTES));
        let sealed = vault.seal("api_key", longest, &binding).expect("fits");
        assert_eq!(sealed.last_four.as_str(), "xxxx");
        let opened = vault.open(&sealed.sealed, &binding).expect("opens");
        assert_eq!(opened.len(), MAX_SECRET_BYTES);
        for bad in [
            "x".repeat(MAX_SECRET_BYTES + 1),
            "abc".into(),
            "abc d".into(),
            "abcdefghijk".into(),
            "abcdefghijk\0".into(),
            "abcdefghijké".into(),
        ] {
            assert!(vault.seal("api_key", Secret::new(bad), &binding).is_err());
        }
    }

    #[test]
    fn redaction_replaces_ciphertexts_anywhere_and_nothing_else() {
        let ring = KeyRing::parse(secrets::generate_key().expect("key").expose()).expect("ring");
        let sealed =
            ring.encrypt(&Secret::from("qov_token_1234"), &org_binding(Credential::AdminApiToken)).expect("sealed");
        let mut value = serde_json::json!({
            "OrgCredentialSet": {"value": {"sealed": sealed.encode(), "last_four": "1234"}, "by": "a@b.c"},
            "list": [sealed.encode(), "ghs1:not-a-ciphertext"],
        });
        redact_sealed(&mut value);
        assert_eq!(
            value,
            serde_json::json!({
                "OrgCredentialSet": {"value": {"sealed": "[sealed]", "last_four": "1234"}, "by": "a@b.c"},
                "list": ["[sealed]", "ghs1:not-a-ciphertext"],
            })
        );
    }
}
