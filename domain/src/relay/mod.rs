//! The terminal relay's facts: one-time tickets, agent tokens and terminal sessions, one module per aggregate.
//!
//! - [`Ticket`]: one aggregate per ticket, id = the hex SHA-256 of the ticket (the ticket itself is never stored).
//!   Redeeming is a command on it, so two racing redemptions conflict in the store and exactly one wins.
//!   A refused redemption is recorded on the aggregate of the hash presented (for an unknown ticket that aggregate
//!   holds nothing but refusals).
//! - [`AgentToken`]: one aggregate per agent token, id = the hex SHA-256 of the token, bound to one workspace and
//!   carrying its discovery tags (ADR 0013).
//! - [`TerminalSession`]: one aggregate per session, id = the session's id.
//!
//! Times arrive in commands (the domain has no clock).

mod agent_token;
mod session;
#[cfg(test)]
mod tests;
mod ticket;

pub use agent_token::{AgentRefusal, AgentToken, AgentTokenCommand, AgentTokenError, AgentTokenEvent, RESERVED_TAGS};
pub use session::{CloseReason, SessionCommand, SessionError, SessionEvent, SessionKind, TerminalSession};
pub use ticket::{RefusalReason, Ticket, TicketCommand, TicketError, TicketEvent};
