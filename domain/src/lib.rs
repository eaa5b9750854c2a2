//! Gatehouse's domain: aggregates, their commands, events and errors, and the value types they are made of.
//!
//! Everything here is pure: no database, no HTTP, no clock and no randomness.
//! Facts from the outside world (who is acting, what time it is) arrive inside commands.
//! Aggregates follow cqrs-es 0.5 (`handle(&mut self, command, services, sink)` and `apply`).
//!
//! **API Boundary:** every `event_type()` string, `event_version()` and event field is part of the stored contract.
//! Change them only through an upcaster and an ADR.

pub mod audit_access;
pub mod blueprint;
pub mod email;
pub mod firewall;
pub mod org;
pub mod portal;
pub mod publishing;
pub mod relay;
pub mod roster;
pub mod tags;
pub mod trust;
pub mod values;
pub mod workspace;

pub use email::{Email, InvalidEmail};
