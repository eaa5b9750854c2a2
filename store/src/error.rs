//! What can go wrong in the store, classified for callers.

use cqrs_es::persist::PersistenceError;

/// A failure of the event store itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database cannot be reached now; the same call may succeed later.
    #[error("the event store is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database was migrated by a newer Gatehouse than this one.
    #[error("the database schema is at version {database}, newer than this binary's {binary}: upgrade Gatehouse")]
    SchemaTooNew {
        /// Highest migration applied to the database.
        database: i64,
        /// Highest migration this binary knows.
        binary: i64,
    },
    /// The database has not been migrated (or not fully).
    #[error("the database schema is not up to date: run `gatehouse migrate`")]
    SchemaNotMigrated,
    /// Another writer appended to the same aggregate first.
    #[error("{aggregate_type} {aggregate_id} was changed concurrently")]
    Conflict {
        /// The aggregate's type.
        aggregate_type: String,
        /// The aggregate's id.
        aggregate_id: String,
    },
    /// A stored event or value could not be decoded.
    #[error("stored data could not be decoded: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when retrying later may succeed (the database is down or overloaded).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The store did not answer a call within `limit` (the acquire timeout), waiting for a turn included.
    /// An outage-like failure for `reason`: the caller is told to retry.
    pub fn unavailable(reason: &str) -> Self {
        StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(reason.to_string())))
    }

    pub(crate) fn timed_out(limit: std::time::Duration) -> Self {
        StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the event store within {} ms", limit.as_millis()),
        )))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            // The server (or something in front of it: a load balancer, a pooler) broke the protocol, e.g. closed
            // the connection during the handshake ("unexpected response from SSLRequest: 0x00"): the connection is
            // lost, and another may work.
            | sqlx::Error::Protocol(_) => StoreError::Unavailable(error),
            // A FATAL (or PANIC) error ends the session: the server refused or dropped the connection (not accepting
            // connections, shutting down, too many clients, authentication, database gone). For a running service
            // that is an outage, whatever the code.
            sqlx::Error::Database(db)
                if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some_and(|pg| {
                    matches!(pg.severity(), sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic)
                }) =>
            {
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // PostgreSQL: admin shutdown, cannot connect now, too many connections, read-only, disk full.
                Some("57P01" | "57P02" | "57P03" | "53300" | "25006" | "53100") => StoreError::Unavailable(error),
                // SQLite: busy, locked.
                Some("5" | "6" | "517" | "262") => StoreError::Unavailable(error),
                _ => StoreError::Database(error),
            },
            _ => StoreError::Database(error),
        }
    }
}

/// Turns an error from postgres-es (or our SQLite repository, which speaks the same trait) into a [`StoreError`].
pub(crate) fn from_persistence(error: PersistenceError, aggregate_type: &str, aggregate_id: &str) -> StoreError {
    let boxed = match error {
        PersistenceError::OptimisticLockError => {
            return StoreError::Conflict {
                aggregate_type: aggregate_type.to_string(),
                aggregate_id: aggregate_id.to_string(),
            }
        }
        PersistenceError::DeserializationError(error) => return StoreError::Corrupt(error.to_string()),
        PersistenceError::ConnectionError(error) | PersistenceError::UnknownError(error) => error,
    };
    match boxed.downcast::<sqlx::Error>() {
        Ok(sqlx_error) => StoreError::from(*sqlx_error),
        Err(other) => match other.downcast::<serde_json::Error>() {
            Ok(json) => StoreError::Corrupt(json.to_string()),
            Err(other) => StoreError::Corrupt(other.to_string()),
        },
    }
}

/// Why a command did not produce committed events.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command: a domain rule would be broken.
    #[error(transparent)]
    Rejected(E),
    /// Another writer changed the aggregate between load and commit.
    #[error("the aggregate was changed concurrently")]
    Conflict,
    /// The caller expected another version (an `If-Match` that no longer holds).
    #[error("expected version {expected}, found {actual}")]
    VersionMismatch {
        /// What the caller expected.
        expected: u64,
        /// What the store holds.
        actual: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl<E: std::error::Error> From<StoreError> for CommandError<E> {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict { .. } => CommandError::Conflict,
            other => CommandError::Store(other),
        }
    }
}
