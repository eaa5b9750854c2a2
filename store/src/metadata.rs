//! Who caused an event, and as part of what.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Metadata stored with every event.
///
/// `correlation_id` ties together everything one user action caused; `causation_id` names the message (request,
/// command or event) that directly caused this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who acted: an email, or `system:<component>` for the service itself.
    pub actor: String,
    /// The id of the HTTP request (or CLI invocation) that carried the command.
    pub request_id: String,
    /// The id shared by every event one user action caused.
    pub correlation_id: String,
    /// The id of the message that caused this event.
    pub causation_id: String,
    /// When the command was handled, by the service's clock.
    pub time: DateTime<Utc>,
    /// The `Idempotency-Key` attempt that ran the command, if the request had a key: how a retry after a crash
    /// learns that the command committed (ADR 0018). A random id, never the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_attempt: Option<String>,
}

impl EventMetadata {
    /// Metadata for a new user action: request, correlation and causation ids are all the request id.
    pub fn for_request(actor: impl Into<String>, request_id: impl Into<String>) -> Self {
        let request_id = request_id.into();
        Self {
            actor: actor.into(),
            correlation_id: request_id.clone(),
            causation_id: request_id.clone(),
            request_id,
            time: Utc::now(),
            idempotency_attempt: None,
        }
    }

    /// The same metadata for a command run by an `Idempotency-Key` attempt.
    pub fn with_idempotency_attempt(mut self, attempt: Option<&str>) -> Self {
        self.idempotency_attempt = attempt.map(str::to_string);
        self
    }

    /// Metadata for something the service does by itself, such as bootstrapping.
    pub fn system(component: &str) -> Self {
        Self::for_request(format!("system:{component}"), uuid::Uuid::new_v4().to_string())
    }

    pub(crate) fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_string(), self.actor.clone()),
            ("request_id".to_string(), self.request_id.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
            ("causation_id".to_string(), self.causation_id.clone()),
            ("time".to_string(), self.time.to_rfc3339_opts(SecondsFormat::Micros, true)),
        ]);
        if let Some(attempt) = &self.idempotency_attempt {
            map.insert("idempotency_attempt".to_string(), attempt.clone());
        }
        map
    }
}
