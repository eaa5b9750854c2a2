//! Reads of the audit API, recorded as events: who read what, and when (the event's time).
//!
//! One aggregate per reader (id: their email). Recording never fails on rules; it only needs the store.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::Email;

/// Record one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRead {
    /// Who read.
    pub reader: Email,
    /// What: the route, e.g. `GET /api/v1/events`.
    pub resource: String,
    /// The path and query as asked (no secrets travel in audit URLs: they hold cursors, ids and filters).
    pub target: String,
    /// How many events the answer held (for an export: how many it started to stream, 0 if unknown).
    pub items: u64,
}

/// A read of the audit API. **API Boundary:** stored; see the crate docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAccessEvent {
    /// Someone read history.
    AuditLogRead {
        /// Who.
        reader: Email,
        /// The route.
        resource: String,
        /// The path and query.
        target: String,
        /// Events returned.
        items: u64,
    },
}

impl DomainEvent for AuditAccessEvent {
    fn event_type(&self) -> String {
        "AuditLogRead".to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Nothing can refuse a read record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreachable")]
pub struct AuditAccessError;

/// One reader's audit reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAccess {
    /// Reads recorded so far.
    pub reads: u64,
}

impl Aggregate for AuditAccess {
    const TYPE: &'static str = "audit_access";
    type Command = RecordRead;
    type Event = AuditAccessEvent;
    type Error = AuditAccessError;
    type Services = ();

    async fn handle(&mut self, command: Self::Command, _: &(), sink: &EventSink<Self>) -> Result<(), Self::Error> {
        let RecordRead { reader, resource, target, items } = command;
        sink.write(AuditAccessEvent::AuditLogRead { reader, resource, target, items }, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: Self::Event) {
        self.reads += 1;
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    #[test]
    fn every_read_is_recorded() {
        let reader = Email::parse("audit@example.com").expect("valid");
        TestFramework::<AuditAccess>::with(())
            .given(vec![AuditAccessEvent::AuditLogRead {
                reader: reader.clone(),
                resource: "GET /api/v1/events".into(),
                target: "/api/v1/events".into(),
                items: 3,
            }])
            .when(RecordRead {
                reader: reader.clone(),
                resource: "GET /api/v1/events".into(),
                target: "/api/v1/events?after=g1.0.3".into(),
                items: 0,
            })
            .then_expect_events(vec![AuditAccessEvent::AuditLogRead {
                reader,
                resource: "GET /api/v1/events".into(),
                target: "/api/v1/events?after=g1.0.3".into(),
                items: 0,
            }]);
    }
}
