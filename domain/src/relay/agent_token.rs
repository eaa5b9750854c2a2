//! Agent tokens: one aggregate per token, id = the hex SHA-256 of the token, bound to one workspace (ADR 0013).

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::Email;

/// Commands on an agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentTokenCommand {
    /// Mint it, bound to one workspace and the facts the control plane holds about it.
    Mint {
        /// A label for people.
        name: String,
        /// The only workspace an agent with this token may serve.
        workspace: String,
        /// The workspace's discovery tags (`RDE_OWNER_EMAIL`, `RDE_DISPLAY_NAME`, `BLUEPRINT_KEY`, …): what the
        /// gateway believes about the workspace, whatever its agent announces.
        tags: BTreeMap<String, String>,
        /// The admin minting it.
        by: Email,
    },
    /// Revoke it.
    Revoke {
        /// The admin revoking it.
        by: Email,
    },
}

/// An agent token's events. **API Boundary:** stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentTokenEvent {
    /// Minted (its hash is the aggregate id).
    AgentTokenMinted {
        /// A label.
        name: String,
        /// By whom.
        by: Email,
        /// The workspace it is bound to. Tokens minted before tokens were bound have none (`None`) and are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workspace: Option<String>,
        /// The workspace's discovery tags (absent in tokens minted before: empty).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        tags: BTreeMap<String, String>,
    },
    /// Revoked.
    AgentTokenRevoked {
        /// By whom.
        by: Email,
    },
}

impl DomainEvent for AgentTokenEvent {
    fn event_type(&self) -> String {
        match self {
            AgentTokenEvent::AgentTokenMinted { .. } => "AgentTokenMinted",
            AgentTokenEvent::AgentTokenRevoked { .. } => "AgentTokenRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why an agent token command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentTokenError {
    /// Minting a token twice.
    #[error("the agent token exists already")]
    Exists,
    /// Revoking a token that was never minted.
    #[error("no such agent token")]
    NotFound,
    /// Revoking twice.
    #[error("the agent token is revoked already")]
    AlreadyRevoked,
}

/// The discovery tags an agent token carries for its workspace. An agent's own announcement of one of these is
/// never believed: a token taken from one workspace must not make its holder the owner of another.
pub const RESERVED_TAGS: [&str; 4] = ["BLUEPRINT_PROJECT_ID", "BLUEPRINT_KEY", "RDE_OWNER_EMAIL", "RDE_DISPLAY_NAME"];

/// Why an agent may not connect with a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentRefusal {
    /// Never minted, or revoked.
    #[error("the agent token is unknown or revoked")]
    Invalid,
    /// Minted before tokens were bound to a workspace: it serves none.
    #[error("the agent token is bound to no workspace (minted before tokens were bound): mint a new one")]
    Unbound,
    /// Bound to another workspace than the one announced.
    #[error("the agent token is bound to another workspace")]
    OtherWorkspace,
}

/// An agent token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentToken {
    /// Its label (None: never minted).
    pub name: Option<String>,
    /// The workspace it is bound to.
    pub workspace: Option<String>,
    /// The workspace's discovery tags.
    pub tags: BTreeMap<String, String>,
    /// Revoked.
    pub revoked: bool,
}

impl AgentToken {
    /// Whether an agent may connect with it.
    pub fn is_valid(&self) -> bool {
        self.name.is_some() && !self.revoked
    }

    /// Whether an agent announcing `workspace` may connect with it.
    pub fn admits(&self, workspace: &str) -> Result<(), AgentRefusal> {
        if !self.is_valid() {
            return Err(AgentRefusal::Invalid);
        }
        match &self.workspace {
            None => Err(AgentRefusal::Unbound),
            Some(bound) if bound != workspace => Err(AgentRefusal::OtherWorkspace),
            Some(_) => Ok(()),
        }
    }

    /// The tags a connected agent is known by: the token's discovery tags, and of the agent's own only those that
    /// are not reserved ([`RESERVED_TAGS`]).
    pub fn tags_for(&self, announced: BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut tags: BTreeMap<String, String> =
            announced.into_iter().filter(|(key, _)| !RESERVED_TAGS.contains(&key.as_str())).collect();
        tags.extend(self.tags.iter().map(|(key, value)| (key.clone(), value.clone())));
        tags
    }
}

impl Aggregate for AgentToken {
    const TYPE: &'static str = "agent_token";
    type Command = AgentTokenCommand;
    type Event = AgentTokenEvent;
    type Error = AgentTokenError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            AgentTokenCommand::Mint { name, workspace, tags, by } => {
                if self.name.is_some() {
                    return Err(AgentTokenError::Exists);
                }
                let event = AgentTokenEvent::AgentTokenMinted { name, by, workspace: Some(workspace), tags };
                sink.write(event, self).await;
            }
            AgentTokenCommand::Revoke { by } => {
                if self.name.is_none() {
                    return Err(AgentTokenError::NotFound);
                }
                if self.revoked {
                    return Err(AgentTokenError::AlreadyRevoked);
                }
                sink.write(AgentTokenEvent::AgentTokenRevoked { by }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AgentTokenEvent::AgentTokenMinted { name, workspace, tags, .. } => {
                self.name = Some(name);
                self.workspace = workspace;
                self.tags = tags;
            }
            AgentTokenEvent::AgentTokenRevoked { .. } => self.revoked = true,
        }
    }
}
