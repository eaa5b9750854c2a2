//! The `gatehouse` service: composes the crates into one binary.
//!
//! Read [`app::Application::build`] first: it opens the store, checks or applies the schema, bootstraps the first
//! admin, starts the projector and binds the HTTP listener. `main.rs` only parses the command line.

pub mod app;
pub mod checkpoints;
pub mod expiry;
pub mod settings;
pub mod telemetry;

pub use app::Application;
pub use settings::Settings;
