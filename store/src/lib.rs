//! Gatehouse's event store: one interface over two backends.
//!
//! - PostgreSQL in production: writes go through postgres-es (cqrs-es 0.5, event-store mode) into the `events`
//!   table; a transaction-id column gives a global order that never skips a late commit ([`EventStore::read_global`]).
//! - An embedded SQLite file when no database URL is set, with the same semantics.
//!
//! Start with [`EventStore::open`], then [`AggregateRepository`] to run commands and [`EventStore::read_global`]
//! to follow the log. This crate knows nothing about HTTP or read models.
//!
//! **Architecture Invariant:** the event log is append-only; this crate never updates or deletes an event, and the
//! schema refuses it too.

mod cursor;
mod error;
pub mod idempotency;
mod metadata;
mod postgres;
mod repository;
mod sqlite;
mod store;

pub use cqrs_es::persist::SerializedEvent;
pub use cursor::{Cursor, InvalidCursor};
pub use error::{CommandError, StoreError};
pub use metadata::EventMetadata;
pub use repository::{AggregateRepository, BeforeAppend, Committed};
pub use sqlite::SqliteEventRepository;
pub use store::{Backend, EventStore, RecordedEvent, StoreConfig};
