//! What a projection is.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::AnyConnection;
use store::RecordedEvent;

/// Turns events into rows of its own read-model tables.
///
/// `apply` runs inside the projector's transaction; it must only write the tables it declares, through the
/// physical names in `tables` (a rebuild points them at fresh copies), and must be deterministic: the same events
/// always produce the same rows.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// A stable name: the checkpoint's key and the CLI's argument.
    fn name(&self) -> &'static str;

    /// The tables this projection owns. Migrations create them; rebuilds copy their shape.
    fn tables(&self) -> &'static [&'static str];

    /// The aggregate types whose events this projection reads, if it reads only some: the projector then skips
    /// runs of other events without a transaction, moving the checkpoint past them later in one go. `None` (the
    /// default): every event matters.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Applies one event (of any aggregate type; ignore the ones that do not concern this projection).
    async fn apply(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError>;

    /// Applies a batch of events in order, inside the same transaction. The default calls [`apply`](Self::apply)
    /// for each; a projection may do better, such as one statement for the whole batch, as long as the result is
    /// the same. On failure it returns the index of the event that could not be applied.
    async fn apply_batch(
        &self,
        connection: &mut AnyConnection,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), (usize, ApplyError)> {
        for (index, event) in events.iter().enumerate() {
            self.apply(connection, tables, event).await.map_err(|error| (index, error))?;
        }
        Ok(())
    }
}

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event cannot be understood: a poison event. The projection stops until its code is fixed.
    #[error("cannot decode {event_type} v{event_version}: {reason}")]
    Decode {
        /// The stored event type.
        event_type: String,
        /// The stored event version.
        event_version: String,
        /// What was wrong.
        reason: String,
    },
    /// Writing the read model failed.
    #[error("read model write failed")]
    Database(#[from] sqlx::Error),
}

/// Logical table name → physical table name.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    renamed: HashMap<&'static str, String>,
}

impl Tables {
    /// Every table under its own name.
    pub fn live() -> Self {
        Self::default()
    }

    /// Every table of `projection` under `{name}{suffix}`.
    pub(crate) fn with_suffix(projection: &dyn Projection, suffix: &str) -> Self {
        Self { renamed: projection.tables().iter().map(|table| (*table, format!("{table}{suffix}"))).collect() }
    }

    /// The physical name of `table`.
    pub fn name<'a>(&'a self, table: &'a str) -> &'a str {
        self.renamed.get(table).map(String::as_str).unwrap_or(table)
    }
}

/// Decodes a stored payload into a domain event, or explains why it is poison.
pub(crate) fn decode<E: serde::de::DeserializeOwned>(event: &RecordedEvent) -> Result<E, ApplyError> {
    serde_json::from_value(event.payload.clone()).map_err(|error| ApplyError::Decode {
        event_type: event.event_type.clone(),
        event_version: event.event_version.clone(),
        reason: error.to_string(),
    })
}

/// A position in a list ordered by (time, id), for keyset pagination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeKey {
    /// RFC 3339.
    pub at: String,
    /// The row's id.
    pub id: String,
}

/// A time in the read models' text form: RFC 3339, UTC, microseconds (sorts as text on both backends).
pub(crate) fn rfc3339(time: &chrono::DateTime<chrono::Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A count or sequence as the read models' integer column.
pub(crate) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
