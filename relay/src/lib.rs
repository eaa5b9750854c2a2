//! The terminal and preview relay: browsers on one side, workspace agents that dial out on the other, the gateway
//! in between. This crate starts with the wire protocol, kept free of I/O so that every rule about frames can be
//! tested without a socket; the WebSocket endpoints and the agent come on top of it.
//!
//! - [`browser`]: messages on a browser's terminal WebSocket, and the close codes the gateway uses.
//! - [`mux`]: the binary frames that carry many sessions over one agent connection, with per-session flow control.
//! - [`hub`]: the gateway's registry of connected agents and the sessions each carries (transport-free).
//! - [`ws`]: the server side of WebSocket on upgraded connections, holding no buffer while idle (ADR 0011).
//! - [`agent`]: the workspace agent (`gatehouse agent`): dials out, runs shells in PTYs.
//!
//! **API Boundary:** both protocols are contracts with code we do not deploy together (browsers, agents in
//! workspaces); change them only by adding message kinds.
//!
//! **Architecture Invariant:** `relay` never depends on `api` (nor `api` on `relay`); the root package wires them.

pub mod agent;
pub mod browser;
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod mux;
pub mod ws;
