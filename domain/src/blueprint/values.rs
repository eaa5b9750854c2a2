//! The validated values a blueprint is made of. Parsing (or a checking `new`) is the only way to build them, so an
//! invalid value never reaches an event; every refusal is an [`InvalidValue`] naming the field as the API does.
//!
//! Deserialising does not check again: events were checked when they were decided, and a rule tightened later must
//! not make history unreadable.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::template::NameTemplate;
use crate::values::{identifier, line, string_value, text, InvalidValue};

/// Most characters of a display name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;
/// Most characters of a description.
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Most characters of a command (the dev server's, a custom tab's).
pub const MAX_COMMAND_CHARS: usize = 1_000;
/// Most characters of a git repository URL or path.
pub const MAX_REPOSITORY_CHARS: usize = 2_048;
/// Most bytes of a git branch name.
pub const MAX_BRANCH_CHARS: usize = 255;
/// Most characters of a shell's path.
pub const MAX_SHELL_CHARS: usize = 255;
/// Most preview ports a blueprint may name.
pub const MAX_PREVIEW_PORTS: usize = 10;
/// Most tabs a workspace layout may have.
pub const MAX_TABS: usize = 20;
/// Most characters of a custom tab's name.
pub const MAX_TAB_NAME_CHARS: usize = 40;
/// Most characters of a model name.
pub const MAX_MODEL_CHARS: usize = 200;
/// Most characters of an endpoint URL.
pub const MAX_ENDPOINT_CHARS: usize = 2_048;
/// Most bytes of a sealed secret.
pub const MAX_SEALED_SECRET_BYTES: usize = 4 * 1024;

string_value!(
    /// What people call the blueprint: one line of at most [`MAX_DISPLAY_NAME_CHARS`] characters.
    DisplayName
);
string_value!(
    /// What the blueprint is for: text of at most [`MAX_DESCRIPTION_CHARS`] characters (newlines and tabs allowed).
    Description
);
string_value!(
    /// The cluster new workspaces run on (none: the default cluster).
    ClusterName
);
string_value!(
    /// The service of the blueprint's environment that gets terminals and the preview (none: the first one).
    ServiceName
);
string_value!(
    /// Where the control plane clones a workspace from: an `https://`, `http://`, `ssh://`, `git://` or `file://`
    /// URL, `user@host:path`, or an absolute path.
    GitRepository
);
string_value!(
    /// The branch a workspace starts on.
    GitBranch
);
string_value!(
    /// A command typed into a workspace's shell: one line of at most [`MAX_COMMAND_CHARS`] characters.
    ShellCommand
);
string_value!(
    /// The absolute path of the shell terminals run.
    Shell
);
string_value!(
    /// A custom tab's label: one line of at most [`MAX_TAB_NAME_CHARS`] characters.
    TabName
);
string_value!(
    /// An AI model's name as its provider spells it (`claude-sonnet-4-20250514`, `gpt-4o`, `org/model:tag`).
    ModelName
);
string_value!(
    /// An OpenAI-compatible endpoint: an `https://` or `http://` URL.
    EndpointUrl
);
string_value!(
    /// The last four characters of an API key, shown to admins so they can tell keys apart.
    LastFour
);

impl DisplayName {
    /// One line, trimmed, 1 to [`MAX_DISPLAY_NAME_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        line("display_name", raw, MAX_DISPLAY_NAME_CHARS).map(Self)
    }
}

impl Description {
    /// Text, trimmed, 1 to [`MAX_DESCRIPTION_CHARS`] characters; newlines and tabs are the only control characters
    /// allowed. (No description is `None`, not an empty one.)
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        text("description", raw, MAX_DESCRIPTION_CHARS).map(Self)
    }
}

impl ClusterName {
    /// An identifier (1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("target_cluster", raw).map(Self)
    }
}

impl ServiceName {
    /// An identifier (1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        identifier("primary_service", raw).map(Self)
    }
}

/// Printable ASCII without spaces: what URLs, paths and names of the outside world are made of here.
fn graphic(raw: &str) -> bool {
    raw.bytes().all(|b| b.is_ascii_graphic())
}

/// A URL with its secrets gone: the user information (`https://user:token@host/…`) and the query and fragment
/// (`…?access_token=…`), which are where credentials travel in a URL.
pub fn redact_url(url: &str) -> String {
    let mut redacted = url.to_string();
    for secret in url_secrets(url) {
        redacted = redacted.replace(&secret, "[redacted]");
    }
    redacted
}

/// The parts of `url` that may hold a credential: its user information, its query and its fragment.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            secrets.push(rest[..at].to_string());
        }
        if let Some(query) = rest.find(['?', '#']) {
            secrets.push(rest[query + 1..].to_string());
        }
    }
    secrets.retain(|secret| !secret.is_empty());
    secrets
}

impl GitRepository {
    /// One of the forms named on the type, printable ASCII without spaces (percent-encode them), at most
    /// [`MAX_REPOSITORY_CHARS`] characters. Nothing that git could read as an option (a leading `-`) or as a remote
    /// helper (`ext::…`, `fd::…`, which run commands) gets through: those fit none of the forms.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "source.repository";
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(InvalidValue::new(FIELD, "must not be empty"));
        }
        if raw.len() > MAX_REPOSITORY_CHARS {
            return Err(InvalidValue::new(FIELD, format!("at most {MAX_REPOSITORY_CHARS} characters")));
        }
        if !graphic(raw) {
            return Err(InvalidValue::new(
                FIELD,
                "printable ASCII without spaces or control characters (percent-encode them)",
            ));
        }
        let url = ["https://", "http://", "ssh://", "git://", "file://"]
            .iter()
            .any(|scheme| raw.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty() && !rest.starts_with('-')));
        let path = raw.starts_with('/');
        if url || path || Self::is_scp_like(raw) {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidValue::new(
                FIELD,
                "an https://, http://, ssh://, git:// or file:// URL, user@host:path, or an absolute path",
            ))
        }
    }

    /// `user@host:path`: git's scp-like syntax, with a user, a host of letters, digits, `.` and `-`, and a path that
    /// does not start with `:` (`host::address` is a remote helper) or `-`.
    fn is_scp_like(raw: &str) -> bool {
        let Some((user_host, path)) = raw.split_once(':') else { return false };
        let Some((user, host)) = user_host.split_once('@') else { return false };
        let word = |s: &str, extra: &[u8]| {
            s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        word(user, b"._-") && word(host, b".-") && !path.is_empty() && !path.starts_with([':', '-'])
    }
}

impl GitBranch {
    /// A git branch name, restricted to `A-Z a-z 0-9 . _ / -` and at most [`MAX_BRANCH_CHARS`] characters: no
    /// component starting with `.` or ending with `.lock`, no `..` or `//`, not starting with `-` or `/`, not ending
    /// with `/` or `.` (git's `check-ref-format` rules for those characters).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "source.branch";
        if raw.is_empty() || raw.len() > MAX_BRANCH_CHARS {
            return Err(InvalidValue::new(FIELD, format!("a branch has 1 to {MAX_BRANCH_CHARS} characters")));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b)) {
            return Err(InvalidValue::new(FIELD, "a branch contains only A-Z, a-z, 0-9, '.', '_', '/' and '-'"));
        }
        let components_valid = raw.split('/').all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"));
        if raw.starts_with('-') || raw.ends_with('.') || raw.contains("..") || !components_valid {
            return Err(InvalidValue::new(FIELD, "not a valid git branch name"));
        }
        Ok(Self(raw.to_string()))
    }
}

impl ShellCommand {
    /// One line, trimmed, 1 to [`MAX_COMMAND_CHARS`] characters, no control characters. `field` names where the
    /// command came from (`source.dev_command`, `workspace.tabs.command`).
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, InvalidValue> {
        line(field, raw, MAX_COMMAND_CHARS).map(Self)
    }
}

impl Shell {
    /// An absolute path of `A-Z a-z 0-9 . _ + / -`, at most [`MAX_SHELL_CHARS`] characters, with no empty, `.` or
    /// `..` component (`/bin/bash`, `/usr/bin/zsh`).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const FIELD: &str = "source.shell";
        let valid = raw.len() <= MAX_SHELL_CHARS
            && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+/-".contains(&b))
            && raw
                .strip_prefix('/')
                .is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        if valid {
            Ok(Self(raw.to_string()))
        } else {
            Err(InvalidValue::new(
                FIELD,
                format!("an absolute path such as /bin/bash of at most {MAX_SHELL_CHARS} characters"),
            ))
        }
    }
}

impl Default for Shell {
    /// `/bin/sh`, which every POSIX system has.
    fn default() -> Self {
        Self("/bin/sh".to_string())
    }
}

/// A TCP port a workspace's app listens on: 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Port(u16);

impl Port {
    /// 1 to 65535.
    pub fn new(raw: u32) -> Result<Self, InvalidValue> {
        match u16::try_from(raw) {
            Ok(port) if port > 0 => Ok(Self(port)),
            _ => Err(InvalidValue::new("source.preview_ports", "a port is 1 to 65535")),
        }
    }

    /// The number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A blueprint whose workspaces Gatehouse runs itself (local mode, ADR 0009): cloned from git, served by an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSource {
    repository: GitRepository,
    branch: GitBranch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev_command: Option<ShellCommand>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    preview_ports: Vec<Port>,
    #[serde(default)]
    shell: Shell,
}

impl LocalSource {
    /// Checks what spans fields: at most [`MAX_PREVIEW_PORTS`] preview ports, none twice (the first is the preview
    /// panel's default).
    pub fn new(
        repository: GitRepository,
        branch: GitBranch,
        dev_command: Option<ShellCommand>,
        preview_ports: Vec<Port>,
        shell: Shell,
    ) -> Result<Self, InvalidValue> {
        const FIELD: &str = "source.preview_ports";
        if preview_ports.len() > MAX_PREVIEW_PORTS {
            return Err(InvalidValue::new(FIELD, format!("at most {MAX_PREVIEW_PORTS} ports")));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = preview_ports.iter().find(|port| !seen.insert(**port)) {
            return Err(InvalidValue::new(FIELD, format!("port {twice} is named twice")));
        }
        Ok(Self { repository, branch, dev_command, preview_ports, shell })
    }

    /// The git repository.
    pub fn repository(&self) -> &GitRepository {
        &self.repository
    }

    /// The branch.
    pub fn branch(&self) -> &GitBranch {
        &self.branch
    }

    /// The command that starts the dev server, if any.
    pub fn dev_command(&self) -> Option<&ShellCommand> {
        self.dev_command.as_ref()
    }

    /// The ports the preview may show, the default first.
    pub fn preview_ports(&self) -> &[Port] {
        &self.preview_ports
    }

    /// The shell terminals run.
    pub fn shell(&self) -> &Shell {
        &self.shell
    }
}

/// Where the control plane makes a blueprint's workspaces from. One kind today; the Qovery control plane (an
/// existing project and environment, shared/spec/portal.md §2.3) will be another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlueprintSource {
    /// Gatehouse is the control plane.
    Local(LocalSource),
}

/// How workspaces map onto control-plane projects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectMode {
    /// One project per workspace.
    #[default]
    Dedicated,
    /// Every workspace of the blueprint is an environment of one shared project.
    Shared,
}

/// How a workspace's project and environment are named (see [`NameTemplate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamingTemplates {
    /// The project's name.
    pub project: NameTemplate,
    /// The environment's name.
    pub environment: NameTemplate,
}

impl Default for NamingTemplates {
    /// `rde-{user}-{blueprint}` (the portal's own example) and `{user}-{name}` (unique within a shared project as
    /// long as a builder's workspace names are).
    fn default() -> Self {
        Self {
            project: NameTemplate::from_trusted("rde-{user}-{blueprint}"),
            environment: NameTemplate::from_trusted("{user}-{name}"),
        }
    }
}

/// What an admin sets on a blueprint's General tab, at registration and afterwards, as a whole.
///
/// Every field is a checked value and no rule spans them, so the fields are public. Fields other than the display
/// name and the source have serde defaults: an event recorded before one of them existed still reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueprintDetails {
    /// What people call it.
    pub display_name: DisplayName,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<Description>,
    /// Where workspaces come from.
    pub source: BlueprintSource,
    /// The cluster workspaces run on; `None`: the default cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_cluster: Option<ClusterName>,
    /// The service that gets terminals and the preview; `None`: the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_service: Option<ServiceName>,
    /// One project per workspace, or one for all.
    #[serde(default)]
    pub project_mode: ProjectMode,
    /// How projects and environments are named.
    #[serde(default)]
    pub naming: NamingTemplates,
}

/// One tab of a workspace's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tab {
    /// The chat (OpenCode's web UI in the workspace).
    Chat,
    /// A terminal running Claude Code.
    ClaudeCode,
    /// A shell.
    Terminal,
    /// A terminal running an admin's command.
    Custom {
        /// Its label.
        name: TabName,
        /// What it runs.
        command: ShellCommand,
    },
}

impl TabName {
    /// One line, trimmed, 1 to [`MAX_TAB_NAME_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        line("workspace.tabs.name", raw, MAX_TAB_NAME_CHARS).map(Self)
    }
}

/// How a blueprint's workspaces look: the Workspace tab, set as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkspaceConfig {
    tabs: Vec<Tab>,
    lock_layout: bool,
    preview_panel: bool,
    path_bar: bool,
    public_url: bool,
}

impl Default for WorkspaceConfig {
    /// Chat, Claude Code and a terminal; the layout unlocked, the preview panel and the path bar shown, no public URL.
    fn default() -> Self {
        Self {
            tabs: vec![Tab::Chat, Tab::ClaudeCode, Tab::Terminal],
            lock_layout: false,
            preview_panel: true,
            path_bar: true,
            public_url: false,
        }
    }
}

impl WorkspaceConfig {
    /// Checks the tabs: at most [`MAX_TABS`], each built-in tab at most once, custom tab names distinct (ignoring
    /// case), and at least one tab when the layout is locked (builders could not add one).
    pub fn new(
        tabs: Vec<Tab>,
        lock_layout: bool,
        preview_panel: bool,
        path_bar: bool,
        public_url: bool,
    ) -> Result<Self, InvalidValue> {
        if tabs.len() > MAX_TABS {
            return Err(InvalidValue::new("workspace.tabs", format!("at most {MAX_TABS} tabs")));
        }
        if lock_layout && tabs.is_empty() {
            return Err(InvalidValue::new("workspace.tabs", "a locked layout needs at least one tab"));
        }
        let mut built_in = BTreeSet::new();
        let mut names = BTreeSet::new();
        for tab in &tabs {
            let unique = match tab {
                Tab::Chat => built_in.insert("chat"),
                Tab::ClaudeCode => built_in.insert("claude_code"),
                Tab::Terminal => built_in.insert("terminal"),
                Tab::Custom { name, .. } => {
                    if !names.insert(name.as_str().to_lowercase()) {
                        return Err(InvalidValue::new(
                            "workspace.tabs.name",
                            format!("two custom tabs are named '{name}'"),
                        ));
                    }
                    true
                }
            };
            if !unique {
                return Err(InvalidValue::new("workspace.tabs", "each built-in tab appears at most once"));
            }
        }
        Ok(Self { tabs, lock_layout, preview_panel, path_bar, public_url })
    }

    /// The tabs, in order.
    pub fn tabs(&self) -> &[Tab] {
        &self.tabs
    }

    /// Builders may not add, remove or move tabs.
    pub fn lock_layout(&self) -> bool {
        self.lock_layout
    }

    /// The preview panel is shown.
    pub fn preview_panel(&self) -> bool {
        self.preview_panel
    }

    /// The path bar is shown.
    pub fn path_bar(&self) -> bool {
        self.path_bar
    }

    /// Builders may open the preview at a public URL.
    pub fn public_url(&self) -> bool {
        self.public_url
    }
}

/// An AI provider a blueprint's workspaces may use. The order is the chat's preference (shared/spec/portal.md
/// §2.17): the first enabled of Anthropic, OpenAI, Custom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiProvider {
    /// Anthropic: Claude Code, and the chat.
    Anthropic,
    /// OpenAI: the chat.
    #[serde(rename = "openai")]
    OpenAi,
    /// An OpenAI-compatible endpoint: the chat.
    Custom,
}

impl AiProvider {
    /// The stable lower-case name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AiProvider::Anthropic => "anthropic",
            AiProvider::OpenAi => "openai",
            AiProvider::Custom => "custom",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "anthropic" => Ok(AiProvider::Anthropic),
            "openai" => Ok(AiProvider::OpenAi),
            "custom" => Ok(AiProvider::Custom),
            _ => Err(InvalidValue::new("ai.provider", "one of anthropic, openai and custom")),
        }
    }
}

impl fmt::Display for AiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a workspace authenticates to the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AiAuthMode {
    /// The organisation's key, injected into the workspace.
    #[default]
    ApiKey,
    /// Each builder signs in to their own account (Anthropic only).
    UserOauth,
}

impl AiAuthMode {
    /// The stable name used in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AiAuthMode::ApiKey => "api_key",
            AiAuthMode::UserOauth => "user_oauth",
        }
    }

    /// Parses a stable name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "api_key" => Ok(AiAuthMode::ApiKey),
            "user_oauth" => Ok(AiAuthMode::UserOauth),
            _ => Err(InvalidValue::new("ai.auth_mode", "api_key or user_oauth")),
        }
    }
}

impl ModelName {
    /// Printable ASCII without spaces, 1 to [`MAX_MODEL_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > MAX_MODEL_CHARS || !graphic(raw) {
            return Err(InvalidValue::new(
                "ai.model",
                format!("1 to {MAX_MODEL_CHARS} characters of printable ASCII without spaces"),
            ));
        }
        Ok(Self(raw.to_string()))
    }
}

impl EndpointUrl {
    /// `https://` or `http://` and a host, printable ASCII without spaces, at most [`MAX_ENDPOINT_CHARS`] characters.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let raw = raw.trim();
        let rest = raw.strip_prefix("https://").or_else(|| raw.strip_prefix("http://"));
        let has_host = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with(['/', '?', '#']));
        if raw.len() > MAX_ENDPOINT_CHARS || !graphic(raw) || !has_host {
            return Err(InvalidValue::new(
                "ai.endpoint",
                format!("an https:// or http:// URL of at most {MAX_ENDPOINT_CHARS} characters"),
            ));
        }
        Ok(Self(raw.to_string()))
    }
}

impl LastFour {
    /// Exactly four characters of printable ASCII without spaces (API keys are made of those).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.len() != 4 || !graphic(raw) {
            return Err(InvalidValue::new("ai.api_key_last_four", "four printable ASCII characters"));
        }
        Ok(Self(raw.to_string()))
    }
}

/// A secret as it leaves the `secrets` crate: ciphertext (and whatever key id and nonce it carries) in one opaque
/// string. The domain never sees a plaintext secret, never opens this, and checks only its shape: 1 to
/// [`MAX_SEALED_SECRET_BYTES`] bytes of printable ASCII without spaces. Its `Debug` shows only its length, so that a
/// logged command or state shows no ciphertext either.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SealedSecret(String);

impl SealedSecret {
    /// Checks the shape.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > MAX_SEALED_SECRET_BYTES || !graphic(raw) {
            return Err(InvalidValue::new(
                "ai.api_key",
                format!("a sealed secret is 1 to {MAX_SEALED_SECRET_BYTES} bytes of printable ASCII without spaces"),
            ));
        }
        Ok(Self(raw.to_string()))
    }

    /// The sealed string, for the `secrets` crate to open.
    pub fn expose_sealed(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret(<{} bytes>)", self.0.len())
    }
}

/// A provider's API key as the blueprint keeps it: sealed, and its last four characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The sealed key.
    pub sealed: SealedSecret,
    /// Its last four characters (taken before sealing).
    pub last_four: LastFour,
}

/// What happens to a provider's stored key when its settings are set. Keys are write-only: an admin changing the
/// model does not send the key again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyChange {
    /// Keep the key stored (none, if none is).
    Keep,
    /// Store this key instead.
    Replace(ApiKey),
    /// Forget the stored key.
    Remove,
}

/// One provider's settings. `api_key` is `None` in a command's settings: the key arrives as an [`ApiKeyChange`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiProviderSettings {
    provider: AiProvider,
    enabled: bool,
    #[serde(default)]
    auth_mode: AiAuthMode,
    model: ModelName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint: Option<EndpointUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<ApiKey>,
}

impl AiProviderSettings {
    /// Checks what spans fields: only Anthropic knows `user_oauth`; the custom provider needs an endpoint and the
    /// others take none.
    pub fn new(
        provider: AiProvider,
        enabled: bool,
        auth_mode: AiAuthMode,
        model: ModelName,
        endpoint: Option<EndpointUrl>,
    ) -> Result<Self, InvalidValue> {
        if auth_mode == AiAuthMode::UserOauth && provider != AiProvider::Anthropic {
            return Err(InvalidValue::new("ai.auth_mode", format!("{provider} supports only api_key")));
        }
        match (provider, &endpoint) {
            (AiProvider::Custom, None) => {
                return Err(InvalidValue::new("ai.endpoint", "the custom provider needs an endpoint"));
            }
            (AiProvider::Anthropic | AiProvider::OpenAi, Some(_)) => {
                return Err(InvalidValue::new("ai.endpoint", format!("{provider} takes no endpoint")));
            }
            _ => {}
        }
        Ok(Self { provider, enabled, auth_mode, model, endpoint, api_key: None })
    }

    /// The provider.
    pub fn provider(&self) -> AiProvider {
        self.provider
    }

    /// Whether workspaces use it.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How workspaces authenticate.
    pub fn auth_mode(&self) -> AiAuthMode {
        self.auth_mode
    }

    /// The model.
    pub fn model(&self) -> &ModelName {
        &self.model
    }

    /// The custom provider's endpoint.
    pub fn endpoint(&self) -> Option<&EndpointUrl> {
        self.endpoint.as_ref()
    }

    /// The stored key, sealed.
    pub fn api_key(&self) -> Option<&ApiKey> {
        self.api_key.as_ref()
    }

    /// Whether workspaces need the organisation's key to use it.
    pub fn needs_api_key(&self) -> bool {
        self.enabled && self.auth_mode == AiAuthMode::ApiKey
    }

    /// These settings holding `api_key`.
    pub(crate) fn with_api_key(mut self, api_key: Option<ApiKey>) -> Self {
        self.api_key = api_key;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_information() {
        assert_eq!(redact_url("https://ada:s3cret@git.example.com/a.git"), "https://[redacted]@git.example.com/a.git");
        assert_eq!(
            redact_url("https://git.example.com/a.git?access_token=SECRET#frag"),
            "https://git.example.com/a.git?[redacted]"
        );
        assert_eq!(redact_url("http://tok3n@127.0.0.1:9/x?y"), "http://[redacted]@127.0.0.1:9/x?[redacted]");
        assert_eq!(redact_url("https://git.example.com/a@b.git"), "https://git.example.com/a@b.git");
        assert_eq!(redact_url("/srv/git/a.git"), "/srv/git/a.git");
        assert_eq!(redact_url("git@github.com:acme/a.git"), "git@github.com:acme/a.git");
    }

    fn field<T: fmt::Debug>(result: Result<T, InvalidValue>) -> &'static str {
        result.expect_err("refused").field
    }

    #[test]
    fn names_and_descriptions_are_bounded_and_name_their_field() {
        assert_eq!(DisplayName::parse("  Frontend starter ").map(String::from).as_deref(), Ok("Frontend starter"));
        assert!(DisplayName::parse(&"n".repeat(MAX_DISPLAY_NAME_CHARS)).is_ok());
        for bad in ["", "  ", "a\0b", "a\nb", "a\u{1b}[31mb", &"n".repeat(MAX_DISPLAY_NAME_CHARS + 1)] {
            assert_eq!(field(DisplayName::parse(bad)), "display_name", "{bad:?}");
        }
        assert_eq!(Description::parse("line one\n\tline two").map(String::from).as_deref(), Ok("line one\n\tline two"));
        assert!(Description::parse(&"d".repeat(MAX_DESCRIPTION_CHARS)).is_ok());
        for bad in ["", "a\0b", "a\rb", "a\u{7}b", &"d".repeat(MAX_DESCRIPTION_CHARS + 1)] {
            assert_eq!(field(Description::parse(bad)), "description", "{bad:?}");
        }
        assert!(ClusterName::parse("eu-west-3.gpu").is_ok());
        assert_eq!(field(ClusterName::parse("eu west")), "target_cluster");
        assert_eq!(field(ServiceName::parse("")), "primary_service");
    }

    #[test]
    fn repositories_are_urls_scp_paths_or_absolute_paths_and_never_options_or_helpers() {
        for good in [
            "https://github.com/acme/web.git",
            "http://git.internal/web",
            "ssh://git@github.com/acme/web.git",
            "git://git.internal/web",
            "file:///srv/git/web",
            "git@github.com:acme/web.git",
            "/srv/git/web",
            "  /srv/git/web  ",
        ] {
            assert!(GitRepository::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "web",
            "./web",
            "../web",
            "~/web",
            "-uhttps://evil",
            "--upload-pack=touch /tmp/x",
            "ext::sh -c touch% /tmp/x",
            "ext::sh",
            "fd::17",
            "host::address",
            "github.com:acme/web",
            "git@-oProxyCommand=x:y",
            "git@host:-x",
            "https://",
            "https://-x",
            "ftp://host/web",
            "/srv/my repo",
            "/srv/a\0b",
            "/srv/a\nb",
            "https://h/é",
            &format!("/{}", "a".repeat(MAX_REPOSITORY_CHARS)),
        ] {
            assert_eq!(field(GitRepository::parse(bad)), "source.repository", "{bad:?}");
        }
    }

    #[test]
    fn branches_follow_gits_ref_rules() {
        for good in ["main", "feature/login-v2", "release-1.2", "v1.0_rc"] {
            assert!(GitBranch::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-main",
            "/main",
            "main/",
            "main.",
            "a..b",
            "a//b",
            ".hidden",
            "a/.b",
            "main.lock",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a\0",
            &"b".repeat(MAX_BRANCH_CHARS + 1),
        ] {
            assert_eq!(field(GitBranch::parse(bad)), "source.branch", "{bad:?}");
        }
    }

    #[test]
    fn commands_shells_and_ports_are_checked() {
        assert!(ShellCommand::parse("source.dev_command", "npm run dev -- --port 3100").is_ok());
        assert!(ShellCommand::parse("source.dev_command", &"c".repeat(MAX_COMMAND_CHARS)).is_ok());
        for bad in ["", "npm\0run", "npm run dev\nrm -rf /", "a\tb", &"c".repeat(MAX_COMMAND_CHARS + 1)] {
            assert_eq!(field(ShellCommand::parse("workspace.tabs.command", bad)), "workspace.tabs.command", "{bad:?}");
        }
        for good in ["/bin/bash", "/usr/local/bin/zsh", "/bin/sh", "/opt/fish-3.7/bin/fish"] {
            assert!(Shell::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "bash", "/", "/bin/", "/bin//bash", "/bin/../bash", "/bin/./sh", "/bin/ba sh", "/bin/\0"] {
            assert_eq!(field(Shell::parse(bad)), "source.shell", "{bad:?}");
        }
        assert_eq!(Shell::default().as_str(), "/bin/sh");
        assert_eq!(Port::new(1).map(Port::get), Ok(1));
        assert_eq!(Port::new(65_535).map(Port::get), Ok(65_535));
        for bad in [0, 65_536, u32::MAX] {
            assert_eq!(field(Port::new(bad)), "source.preview_ports", "{bad}");
        }
    }

    #[test]
    fn preview_ports_are_few_and_distinct() {
        let source = |ports: Vec<u32>| {
            LocalSource::new(
                GitRepository::parse("/srv/git/web").expect("valid"),
                GitBranch::parse("main").expect("valid"),
                None,
                ports.into_iter().map(|p| Port::new(p).expect("valid")).collect(),
                Shell::default(),
            )
        };
        assert!(source(vec![]).is_ok());
        assert!(source((3000..3000 + MAX_PREVIEW_PORTS as u32).collect()).is_ok());
        assert_eq!(field(source((3000..3001 + MAX_PREVIEW_PORTS as u32).collect())), "source.preview_ports");
        assert_eq!(field(source(vec![3000, 8080, 3000])), "source.preview_ports");
    }

    fn custom(name: &str) -> Tab {
        Tab::Custom {
            name: TabName::parse(name).expect("valid"),
            command: ShellCommand::parse("workspace.tabs.command", "npm run dev").expect("valid"),
        }
    }

    #[test]
    fn workspace_layouts_are_bounded() {
        let default = WorkspaceConfig::default();
        assert_eq!(default.tabs(), [Tab::Chat, Tab::ClaudeCode, Tab::Terminal]);
        assert!(!default.lock_layout() && default.preview_panel() && default.path_bar() && !default.public_url());

        let mut tabs = vec![Tab::Chat, Tab::ClaudeCode, Tab::Terminal];
        tabs.extend((3..MAX_TABS).map(|i| custom(&format!("Tab {i}"))));
        assert!(WorkspaceConfig::new(tabs.clone(), true, false, false, true).is_ok());
        tabs.push(custom("one too many"));
        assert_eq!(field(WorkspaceConfig::new(tabs, false, true, true, false)), "workspace.tabs");

        assert_eq!(field(WorkspaceConfig::new(vec![Tab::Chat, Tab::Chat], false, true, true, false)), "workspace.tabs");
        assert_eq!(
            field(WorkspaceConfig::new(vec![custom("Dev Server"), custom("dev server")], false, true, true, false)),
            "workspace.tabs.name"
        );
        assert_eq!(field(WorkspaceConfig::new(vec![], true, true, true, false)), "workspace.tabs");
        assert!(WorkspaceConfig::new(vec![], false, true, true, false).is_ok(), "builders add their own tabs");

        assert!(TabName::parse(&"t".repeat(MAX_TAB_NAME_CHARS)).is_ok());
        for bad in ["", "a\0", "a\nb", &"t".repeat(MAX_TAB_NAME_CHARS + 1)] {
            assert_eq!(field(TabName::parse(bad)), "workspace.tabs.name", "{bad:?}");
        }
    }

    #[test]
    fn ai_values_are_checked() {
        assert_eq!(AiProvider::parse("openai"), Ok(AiProvider::OpenAi));
        assert_eq!(field(AiProvider::parse("OpenAI")), "ai.provider");
        assert!(AiProvider::Anthropic < AiProvider::OpenAi && AiProvider::OpenAi < AiProvider::Custom);
        for good in ["claude-sonnet-4-20250514", "gpt-4o", "accounts/fireworks/models/llama-v3:70b"] {
            assert!(ModelName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "gpt 4o", "gpt\0", &"m".repeat(MAX_MODEL_CHARS + 1)] {
            assert_eq!(field(ModelName::parse(bad)), "ai.model", "{bad:?}");
        }
        for good in ["https://llm.internal/v1", "http://localhost:8000/v1"] {
            assert!(EndpointUrl::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "llm.internal", "ftp://llm", "https://", "https:///v1", "https://a b", "https://a\0"] {
            assert_eq!(field(EndpointUrl::parse(bad)), "ai.endpoint", "{bad:?}");
        }
        assert!(LastFour::parse("x9Z-").is_ok());
        for bad in ["", "abc", "abcde", "ab d", "ab\0d", "abcé"] {
            assert_eq!(field(LastFour::parse(bad)), "ai.api_key_last_four", "{bad:?}");
        }
    }

    #[test]
    fn sealed_secrets_are_opaque_ascii_and_never_shown_by_debug() {
        let sealed = SealedSecret::parse("v1:key-2026:bm9uY2U=:Y2lwaGVydGV4dA==").expect("valid");
        assert_eq!(sealed.expose_sealed(), "v1:key-2026:bm9uY2U=:Y2lwaGVydGV4dA==");
        assert_eq!(format!("{sealed:?}"), "SealedSecret(<37 bytes>)");
        assert!(SealedSecret::parse(&"s".repeat(MAX_SEALED_SECRET_BYTES)).is_ok());
        for bad in ["", "a b", "a\0b", "a\nb", "sé", &"s".repeat(MAX_SEALED_SECRET_BYTES + 1)] {
            assert_eq!(field(SealedSecret::parse(bad)), "ai.api_key", "{bad:?}");
        }
    }

    #[test]
    fn provider_settings_check_auth_mode_and_endpoint() {
        let model = || ModelName::parse("m").expect("valid");
        let endpoint = || Some(EndpointUrl::parse("https://llm.internal/v1").expect("valid"));
        assert!(AiProviderSettings::new(AiProvider::Anthropic, true, AiAuthMode::UserOauth, model(), None).is_ok());
        assert_eq!(
            field(AiProviderSettings::new(AiProvider::OpenAi, true, AiAuthMode::UserOauth, model(), None)),
            "ai.auth_mode"
        );
        assert_eq!(
            field(AiProviderSettings::new(AiProvider::Custom, true, AiAuthMode::ApiKey, model(), None)),
            "ai.endpoint"
        );
        assert_eq!(
            field(AiProviderSettings::new(AiProvider::OpenAi, true, AiAuthMode::ApiKey, model(), endpoint())),
            "ai.endpoint"
        );
        let custom = AiProviderSettings::new(AiProvider::Custom, true, AiAuthMode::ApiKey, model(), endpoint());
        assert!(custom.is_ok_and(|settings| settings.needs_api_key() && settings.api_key().is_none()));
    }
}
