//! The organisation: its name, the control plane that runs its workspaces, the Git provider that publishes them,
//! and the credentials Gatehouse uses with both ("Configure Portal", shared/spec/portal.md §2.1; ADR 0021).
//!
//! One aggregate per deployment (id [`ORG_ID`]): Gatehouse serves one organisation. Credentials are write-only and
//! arrive sealed ([`ApiKey`]: the `secrets` crate's ciphertext and the last four characters, taken before sealing);
//! the domain never sees a plaintext. Configuring is idempotent (the same profile again records nothing), and every
//! change but a key rotation's rewrap takes the version the admin last saw.

use std::collections::BTreeMap;
use std::fmt;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

pub use crate::blueprint::{ApiKey, ApiKeyChange, DisplayName, EndpointUrl, LastFour, SealedSecret};
use crate::values::InvalidValue;
use crate::Email;

/// The id of the organisation's single `org` aggregate.
pub const ORG_ID: &str = "org";

/// The `org` part of every secret binding: Gatehouse serves one organisation per deployment, and this name stays
/// the same for its lifetime (ADR 0021). A multi-tenant Gatehouse would use each organisation's id.
pub const BINDING_ORG: &str = "default";

/// What runs workspaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlPlaneKind {
    /// Gatehouse itself, on its own host (the embedded default).
    #[default]
    Local,
}

impl ControlPlaneKind {
    /// The stable name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlPlaneKind::Local => "local",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "local" => Ok(ControlPlaneKind::Local),
            _ => Err(InvalidValue::new("control_plane.kind", "local (the only control plane so far)")),
        }
    }
}

/// Where approved work is published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GitProviderKind {
    /// A repository on disk or any plain git remote: the pushed branch is the result.
    #[default]
    Local,
    /// GitHub or GitHub Enterprise (pull requests).
    Github,
    /// GitLab, hosted or self-managed (merge requests).
    Gitlab,
}

impl GitProviderKind {
    /// The stable name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GitProviderKind::Local => "local",
            GitProviderKind::Github => "github",
            GitProviderKind::Gitlab => "gitlab",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "local" => Ok(GitProviderKind::Local),
            "github" => Ok(GitProviderKind::Github),
            "gitlab" => Ok(GitProviderKind::Gitlab),
            _ => Err(InvalidValue::new("git.provider", "one of local, github and gitlab")),
        }
    }
}

/// The Git provider and, for GitHub Enterprise or self-managed GitLab, its API's base URL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitProvider {
    /// Which provider.
    pub kind: GitProviderKind,
    /// The API's base URL; `None` is the public service's (`https://api.github.com`, `https://gitlab.com/api/v4`).
    #[serde(default)]
    pub base_url: Option<EndpointUrl>,
}

impl GitProvider {
    /// A provider; a base URL for the `local` provider is refused (it has no API).
    pub fn new(kind: GitProviderKind, base_url: Option<&str>) -> Result<Self, InvalidValue> {
        let base_url = match base_url.map(str::trim).filter(|raw| !raw.is_empty()) {
            None => None,
            Some(_) if kind == GitProviderKind::Local => {
                return Err(InvalidValue::new("git.base_url", "the local provider has no API base URL"))
            }
            Some(raw) => {
                Some(EndpointUrl::parse(raw).map_err(|error| InvalidValue { field: "git.base_url", ..error })?)
            }
        };
        Ok(Self { kind, base_url })
    }
}

/// What an admin sets up: everything of the organisation but its credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgProfile {
    /// The organisation's name.
    pub name: DisplayName,
    /// What runs its workspaces.
    pub control_plane: ControlPlaneKind,
    /// Where approved work goes.
    #[serde(default)]
    pub git: GitProvider,
}

/// A credential the organisation keeps, write-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// The control plane's admin API token: Gatehouse's own client of the two-client model.
    AdminApiToken,
    /// The Git provider's token, for pushes and pull requests.
    GitToken,
}

impl Credential {
    /// Every credential, in the API's order.
    pub const ALL: [Credential; 2] = [Credential::AdminApiToken, Credential::GitToken];

    /// The stable name used in events, URLs and secret bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::AdminApiToken => "admin_api_token",
            Credential::GitToken => "git_token",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Option<Self> {
        Credential::ALL.into_iter().find(|credential| credential.as_str() == raw)
    }

    /// The field of the `org` aggregate its ciphertext is bound to (`secrets::Binding::field`).
    pub fn binding_field(self) -> String {
        format!("credentials.{}", self.as_str())
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The organisation. The default value is one nobody configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Org {
    profile: Option<OrgProfile>,
    credentials: BTreeMap<Credential, ApiKey>,
    /// How many events have been applied: what an ETag names.
    version: u64,
}

impl Org {
    /// What an admin configured; `None` until then.
    pub fn profile(&self) -> Option<&OrgProfile> {
        self.profile.as_ref()
    }

    /// One credential, sealed, if set.
    pub fn credential(&self, credential: Credential) -> Option<&ApiKey> {
        self.credentials.get(&credential)
    }

    /// Every credential set, sealed.
    pub fn credentials(&self) -> impl Iterator<Item = (Credential, &ApiKey)> {
        self.credentials.iter().map(|(credential, key)| (*credential, key))
    }

    /// The aggregate's version (0: never configured).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn check_version(&self, if_version: Option<u64>) -> Result<(), OrgError> {
        match if_version {
            Some(expected) if expected != self.version => Err(OrgError::Stale { expected, actual: self.version }),
            _ => Ok(()),
        }
    }
}

/// A request to change the organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgCommand {
    /// Set up or change the profile, and optionally the admin API token in the same step (the "Configure Portal"
    /// form). The same profile and `Keep` record nothing.
    Configure {
        /// The profile.
        profile: OrgProfile,
        /// What happens to the admin API token.
        admin_api_token: ApiKeyChange,
        /// The admin.
        by: Email,
        /// Only if the organisation is still at this version.
        if_version: Option<u64>,
    },
    /// Set or replace one credential (the organisation must be configured).
    SetCredential {
        /// Which.
        credential: Credential,
        /// Its sealed value.
        value: ApiKey,
        /// The admin.
        by: Email,
        /// Only if the organisation is still at this version.
        if_version: Option<u64>,
    },
    /// Forget one credential.
    ClearCredential {
        /// Which.
        credential: Credential,
        /// The admin.
        by: Email,
        /// Only if the organisation is still at this version.
        if_version: Option<u64>,
    },
    /// Key rotation: the same credential under the key ring's new primary key. Refused when the stored ciphertext
    /// is no longer `from` (an admin replaced it meanwhile, under the new key already), so a rewrap never
    /// overwrites a newer value. Takes no `If-Match`: the `from` check is its precondition.
    RewrapCredential {
        /// Which.
        credential: Credential,
        /// The ciphertext the rewrap read.
        from: SealedSecret,
        /// The same secret under the primary key.
        to: SealedSecret,
        /// The admin who asked, or `None` for the operator's command line.
        by: Option<Email>,
    },
}

/// What happened to the organisation. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrgEvent {
    /// An admin set up or changed the profile (the first one is the setup).
    OrgConfigured {
        /// The profile now.
        profile: OrgProfile,
        /// The admin.
        by: Email,
    },
    /// An admin set or replaced a credential: sealed, with its last four characters.
    OrgCredentialSet {
        /// Which.
        credential: Credential,
        /// The sealed value.
        value: ApiKey,
        /// The admin.
        by: Email,
    },
    /// An admin cleared a credential.
    OrgCredentialCleared {
        /// Which.
        credential: Credential,
        /// The admin.
        by: Email,
    },
    /// A key rotation re-encrypted a credential under the new primary key; the secret itself did not change.
    OrgCredentialRewrapped {
        /// Which.
        credential: Credential,
        /// The new ciphertext.
        sealed: SealedSecret,
        /// The admin who asked; `None` for the command line.
        #[serde(default)]
        by: Option<Email>,
    },
}

impl DomainEvent for OrgEvent {
    fn event_type(&self) -> String {
        match self {
            OrgEvent::OrgConfigured { .. } => "OrgConfigured",
            OrgEvent::OrgCredentialSet { .. } => "OrgCredentialSet",
            OrgEvent::OrgCredentialCleared { .. } => "OrgCredentialCleared",
            OrgEvent::OrgCredentialRewrapped { .. } => "OrgCredentialRewrapped",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why the organisation refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgError {
    /// Credentials need a configured organisation (its control plane says which are needed).
    #[error("the organisation is not configured yet")]
    NotConfigured,
    /// The organisation changed since the version the caller named.
    #[error("the organisation is at version {actual}, not {expected}")]
    Stale {
        /// The version the caller named.
        expected: u64,
        /// The organisation's version.
        actual: u64,
    },
    /// The credential is not set (a rewrap of a credential cleared meanwhile).
    #[error("the credential {0} is not set")]
    CredentialNotSet(Credential),
    /// A rewrap found another ciphertext than the one it read: the credential changed meanwhile.
    #[error("the credential {0} changed since the rewrap read it")]
    RewrapSuperseded(Credential),
}

impl Aggregate for Org {
    const TYPE: &'static str = "org";
    type Command = OrgCommand;
    type Event = OrgEvent;
    type Error = OrgError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let mut events = Vec::new();
        match command {
            OrgCommand::Configure { profile, admin_api_token, by, if_version } => {
                self.check_version(if_version)?;
                if self.profile.as_ref() != Some(&profile) {
                    events.push(OrgEvent::OrgConfigured { profile, by: by.clone() });
                }
                let credential = Credential::AdminApiToken;
                match admin_api_token {
                    ApiKeyChange::Keep => {}
                    ApiKeyChange::Replace(value) => {
                        events.push(OrgEvent::OrgCredentialSet { credential, value, by });
                    }
                    ApiKeyChange::Remove if self.credentials.contains_key(&credential) => {
                        events.push(OrgEvent::OrgCredentialCleared { credential, by });
                    }
                    ApiKeyChange::Remove => {}
                }
            }
            OrgCommand::SetCredential { credential, value, by, if_version } => {
                self.check_version(if_version)?;
                if self.profile.is_none() {
                    return Err(OrgError::NotConfigured);
                }
                events.push(OrgEvent::OrgCredentialSet { credential, value, by });
            }
            OrgCommand::ClearCredential { credential, by, if_version } => {
                self.check_version(if_version)?;
                // A credential is a fixed slot: clearing an empty one is done already (records nothing).
                if self.credentials.contains_key(&credential) {
                    events.push(OrgEvent::OrgCredentialCleared { credential, by });
                }
            }
            OrgCommand::RewrapCredential { credential, from, to, by } => {
                let current = self.credentials.get(&credential).ok_or(OrgError::CredentialNotSet(credential))?;
                if current.sealed != from {
                    return Err(OrgError::RewrapSuperseded(credential));
                }
                events.push(OrgEvent::OrgCredentialRewrapped { credential, sealed: to, by });
            }
        }
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            OrgEvent::OrgConfigured { profile, .. } => self.profile = Some(profile),
            OrgEvent::OrgCredentialSet { credential, value, .. } => {
                self.credentials.insert(credential, value);
            }
            OrgEvent::OrgCredentialCleared { credential, .. } => {
                self.credentials.remove(&credential);
            }
            OrgEvent::OrgCredentialRewrapped { credential, sealed, .. } => {
                if let Some(stored) = self.credentials.get_mut(&credential) {
                    stored.sealed = sealed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type OrgTest = TestFramework<Org>;

    fn admin() -> Email {
        Email::parse("root@example.com").expect("valid")
    }

    fn profile(name: &str) -> OrgProfile {
        OrgProfile {
            name: DisplayName::parse(name).expect("valid"),
            control_plane: ControlPlaneKind::Local,
            git: GitProvider::default(),
        }
    }

    fn key(sealed: &str, last_four: &str) -> ApiKey {
        ApiKey {
            sealed: SealedSecret::parse(sealed).expect("valid"),
            last_four: LastFour::parse(last_four).expect("valid"),
        }
    }

    fn configured() -> OrgEvent {
        OrgEvent::OrgConfigured { profile: profile("Acme"), by: admin() }
    }

    fn token_set(sealed: &str) -> OrgEvent {
        OrgEvent::OrgCredentialSet { credential: Credential::AdminApiToken, value: key(sealed, "wxyz"), by: admin() }
    }

    #[test]
    fn configuring_records_the_profile_and_the_token_together() {
        OrgTest::with(())
            .given_no_previous_events()
            .when(OrgCommand::Configure {
                profile: profile("Acme"),
                admin_api_token: ApiKeyChange::Replace(key("ghs1:a", "wxyz")),
                by: admin(),
                if_version: None,
            })
            .then_expect_events(vec![configured(), token_set("ghs1:a")]);
    }

    #[test]
    fn the_same_profile_again_records_nothing() {
        OrgTest::with(())
            .given(vec![configured()])
            .when(OrgCommand::Configure {
                profile: profile("Acme"),
                admin_api_token: ApiKeyChange::Keep,
                by: admin(),
                if_version: Some(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_stale_version_is_refused() {
        OrgTest::with(())
            .given(vec![configured()])
            .when(OrgCommand::Configure {
                profile: profile("Acme Corp"),
                admin_api_token: ApiKeyChange::Keep,
                by: admin(),
                if_version: Some(0),
            })
            .then_expect_error(OrgError::Stale { expected: 0, actual: 1 });
    }

    #[test]
    fn removing_a_token_that_is_not_set_records_nothing_when_configuring() {
        OrgTest::with(())
            .given(vec![configured()])
            .when(OrgCommand::Configure {
                profile: profile("Acme"),
                admin_api_token: ApiKeyChange::Remove,
                by: admin(),
                if_version: None,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn credentials_need_a_configured_organisation() {
        OrgTest::with(())
            .given_no_previous_events()
            .when(OrgCommand::SetCredential {
                credential: Credential::GitToken,
                value: key("ghs1:g", "abcd"),
                by: admin(),
                if_version: None,
            })
            .then_expect_error(OrgError::NotConfigured);
    }

    #[test]
    fn clearing_an_unset_credential_records_nothing() {
        OrgTest::with(())
            .given(vec![configured()])
            .when(OrgCommand::ClearCredential { credential: Credential::GitToken, by: admin(), if_version: None })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_rewrap_replaces_only_the_ciphertext_it_read() {
        OrgTest::with(())
            .given(vec![configured(), token_set("ghs1:old")])
            .when(OrgCommand::RewrapCredential {
                credential: Credential::AdminApiToken,
                from: SealedSecret::parse("ghs1:old").expect("valid"),
                to: SealedSecret::parse("ghs1:new").expect("valid"),
                by: None,
            })
            .then_expect_events(vec![OrgEvent::OrgCredentialRewrapped {
                credential: Credential::AdminApiToken,
                sealed: SealedSecret::parse("ghs1:new").expect("valid"),
                by: None,
            }]);
        OrgTest::with(())
            .given(vec![configured(), token_set("ghs1:old"), token_set("ghs1:replaced")])
            .when(OrgCommand::RewrapCredential {
                credential: Credential::AdminApiToken,
                from: SealedSecret::parse("ghs1:old").expect("valid"),
                to: SealedSecret::parse("ghs1:new").expect("valid"),
                by: None,
            })
            .then_expect_error(OrgError::RewrapSuperseded(Credential::AdminApiToken));
    }

    #[test]
    fn a_rewrap_keeps_the_last_four_and_cleared_credentials_go() {
        let mut org = Org::default();
        for event in [configured(), token_set("ghs1:old")] {
            org.apply(event);
        }
        org.apply(OrgEvent::OrgCredentialRewrapped {
            credential: Credential::AdminApiToken,
            sealed: SealedSecret::parse("ghs1:new").expect("valid"),
            by: None,
        });
        let stored = org.credential(Credential::AdminApiToken).expect("set");
        assert_eq!(stored.sealed.expose_sealed(), "ghs1:new");
        assert_eq!(stored.last_four, LastFour::parse("wxyz").expect("valid"));
        org.apply(OrgEvent::OrgCredentialCleared { credential: Credential::AdminApiToken, by: admin() });
        assert!(org.credential(Credential::AdminApiToken).is_none());
        assert_eq!(org.version(), 4);
    }

    #[test]
    fn git_providers_and_names_parse_strictly() {
        assert!(GitProvider::new(GitProviderKind::Github, Some("https://ghe.example.com/api/v3")).is_ok());
        assert_eq!(GitProvider::new(GitProviderKind::Local, Some("https://x")).unwrap_err().field, "git.base_url");
        assert_eq!(GitProvider::new(GitProviderKind::Gitlab, Some("ftp://x")).unwrap_err().field, "git.base_url");
        assert_eq!(GitProviderKind::parse("bitbucket").unwrap_err().field, "git.provider");
        assert_eq!(ControlPlaneKind::parse("qovery").unwrap_err().field, "control_plane.kind");
        assert_eq!(Credential::parse("git_token"), Some(Credential::GitToken));
        assert_eq!(Credential::parse("GIT_TOKEN"), None);
        assert_eq!(Credential::AdminApiToken.binding_field(), "credentials.admin_api_token");
    }

    #[test]
    fn stored_events_keep_their_shape() {
        let event = token_set("ghs1:abc");
        assert_eq!(event.event_type(), "OrgCredentialSet");
        let json = serde_json::to_value(&event).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({"OrgCredentialSet": {
                "credential": "admin_api_token",
                "value": {"sealed": "ghs1:abc", "last_four": "wxyz"},
                "by": "root@example.com"
            }})
        );
        let old = serde_json::json!({"OrgConfigured": {
            "profile": {"name": "Acme", "control_plane": "local"}, "by": "root@example.com"}});
        assert_eq!(serde_json::from_value::<OrgEvent>(old).expect("reads"), configured());
    }
}
