//! The terminal and preview relay: browsers on one side, workspace agents that dial out on the other, the gateway
//! in between. The wire protocols are kept free of I/O so that every rule about frames can be tested without a
//! socket; the gateway's state and rules sit on top of them, and the agent beside them.
//!
//! - [`browser`]: messages on a browser's terminal WebSocket, and the close codes the gateway uses.
//! - [`mux`]: the binary frames that carry many sessions over one agent connection, with per-session flow control.
//! - [`hub`]: the gateway's registry of connected agents and the sessions each carries (transport-free).
//! - [`gateway`]: the gateway's state and rules: agent tokens, tickets, the firewall, open sessions.
//! - [`task`]: git work the gateway asks of an agent (diff, commit, push), as JSON over a task session.
//! - [`channel`]: a session as a byte stream (`AsyncRead + AsyncWrite`), for the preview's HTTP proxy.
//! - [`preview`]: the gateway's preview sessions (one per cookie) and the preview hosts' names.
//! - [`agent`]: the workspace agent (`gatehouse agent`): dials out, runs shells in PTYs and git tasks.
//! - [`forward`]: the agent's port forwards (a preview's connections to the workspace's loopback interface).
//!
//! **API Boundary:** both protocols are contracts with code we do not deploy together (browsers, agents in
//! workspaces); change them only by adding message kinds.
//!
//! **Architecture Invariant:** `relay` knows no HTTP framework (checked by `scripts/check-layering.sh`): the
//! WebSocket endpoints and REST routes that use it are in `api`.

pub mod agent;
pub mod browser;
pub mod channel;
pub mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod git;
pub mod hub;
pub mod mux;
pub mod preview;
pub mod task;
pub mod terminal;
