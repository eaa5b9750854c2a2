//! Trust rules: admins mark a user trusted for one blueprint or for all of them, and that user's publish requests
//! are approved on submission, in the name of the system reviewer.
//!
//! One aggregate (id [`TRUST_RULES_ID`]) holds every rule so that "at most one rule per user and scope" is checked
//! atomically. Publishing asks [`TrustRules::evaluate`] before a submission and records which rule matched; the
//! dry-run endpoint asks the same function, so it answers exactly what a submission would get.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::BlueprintKey;
use crate::Email;

/// The id of the organisation's single trust rules aggregate.
pub const TRUST_RULES_ID: &str = "org";

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRule {
    /// The trusted user.
    pub email: Email,
    /// The blueprint the trust covers; `None` covers every blueprint.
    pub blueprint_key: Option<BlueprintKey>,
    /// Why the admin trusts them.
    pub description: Option<String>,
    /// The aggregate version that created it.
    pub version: u64,
}

impl TrustRule {
    /// The system reviewer's reason when this rule approves a request.
    pub fn reason(&self, rule_id: &str) -> String {
        match &self.blueprint_key {
            Some(blueprint) => format!("trust rule {rule_id}: {} is trusted for blueprint {blueprint}", self.email),
            None => format!("trust rule {rule_id}: {} is trusted for every blueprint", self.email),
        }
    }
}

/// A request to change the trust rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustCommand {
    /// Trust a user.
    Grant {
        /// A fresh id for the rule.
        rule_id: String,
        /// The user.
        email: Email,
        /// One blueprint, or `None` for all.
        blueprint_key: Option<BlueprintKey>,
        /// Why (validated, trimmed).
        description: Option<String>,
        /// The admin.
        granted_by: Email,
    },
    /// Stop trusting.
    Revoke {
        /// The rule.
        rule_id: String,
        /// The admin.
        revoked_by: Email,
    },
}

/// A change to the trust rules. **API Boundary:** stored; see the crate docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustEvent {
    /// A user became trusted.
    TrustRuleGranted {
        /// The rule.
        rule_id: String,
        /// The user.
        email: Email,
        /// One blueprint, or `None` for all.
        blueprint_key: Option<BlueprintKey>,
        /// Why.
        description: Option<String>,
        /// The admin.
        granted_by: Email,
    },
    /// A rule was revoked.
    TrustRuleRevoked {
        /// The rule.
        rule_id: String,
        /// The admin.
        revoked_by: Email,
    },
}

impl DomainEvent for TrustEvent {
    fn event_type(&self) -> String {
        match self {
            TrustEvent::TrustRuleGranted { .. } => "TrustRuleGranted",
            TrustEvent::TrustRuleRevoked { .. } => "TrustRuleRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why the trust rules refuse a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// A rule for this user and scope exists.
    #[error("{email} is already trusted for this scope by rule {rule_id}")]
    DuplicateRule {
        /// The user.
        email: Email,
        /// The existing rule.
        rule_id: String,
    },
    /// The id is taken.
    #[error("trust rule {0} already exists")]
    DuplicateId(String),
    /// No rule has this id.
    #[error("no trust rule {0}")]
    UnknownRule(String),
}

/// The organisation's trust rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrustRules {
    rules: BTreeMap<String, TrustRule>,
    version: u64,
}

impl TrustRules {
    /// The rule that trusts `email` for `blueprint_key`, if any: a rule for that blueprint wins over one for every
    /// blueprint.
    pub fn evaluate(&self, email: &Email, blueprint_key: &BlueprintKey) -> Option<(&str, &TrustRule)> {
        let mut matching = self.rules.iter().filter(|(_, rule)| {
            rule.email == *email && rule.blueprint_key.as_ref().is_none_or(|key| key == blueprint_key)
        });
        let mut best = matching.next()?;
        for candidate in matching {
            if candidate.1.blueprint_key.is_some() {
                best = candidate;
            }
        }
        Some((best.0.as_str(), best.1))
    }

    /// One rule.
    pub fn rule(&self, rule_id: &str) -> Option<&TrustRule> {
        self.rules.get(rule_id)
    }
}

impl Aggregate for TrustRules {
    const TYPE: &'static str = "trust_rules";
    type Command = TrustCommand;
    type Event = TrustEvent;
    type Error = TrustError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        match command {
            TrustCommand::Grant { rule_id, email, blueprint_key, description, granted_by } => {
                if self.rules.contains_key(&rule_id) {
                    return Err(TrustError::DuplicateId(rule_id));
                }
                if let Some((existing, _)) =
                    self.rules.iter().find(|(_, rule)| rule.email == email && rule.blueprint_key == blueprint_key)
                {
                    return Err(TrustError::DuplicateRule { email, rule_id: existing.clone() });
                }
                sink.write(
                    TrustEvent::TrustRuleGranted { rule_id, email, blueprint_key, description, granted_by },
                    self,
                )
                .await;
            }
            TrustCommand::Revoke { rule_id, revoked_by } => {
                if !self.rules.contains_key(&rule_id) {
                    return Err(TrustError::UnknownRule(rule_id));
                }
                sink.write(TrustEvent::TrustRuleRevoked { rule_id, revoked_by }, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            TrustEvent::TrustRuleGranted { rule_id, email, blueprint_key, description, .. } => {
                self.rules.insert(rule_id, TrustRule { email, blueprint_key, description, version: self.version });
            }
            TrustEvent::TrustRuleRevoked { rule_id, .. } => {
                self.rules.remove(&rule_id);
            }
        }
    }
}
