//! Gatehouse's HTTP surface: the only crate that knows HTTP status codes and JSON DTOs.
//!
//! [`configure`] mounts every route on an actix-web `App`; the root package binds the listener and runs it.
//! Errors leave through [`Problem`] (RFC 9457 problem documents with stable codes). Operational endpoints
//! (`/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json`) live in [`ops`].

pub mod metrics;
pub mod ops;
mod problem;

use std::sync::Arc;

use actix_web::web;
use projections::StatusBoard;
use store::EventStore;

pub use metrics::HttpMetrics;
pub use problem::{Problem, ProblemCode};

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The event store.
    pub store: EventStore,
    /// Live projection status (for readiness).
    pub projections: StatusBoard,
    /// Every metric the service exports.
    pub registry: prometheus::Registry,
    /// Readiness is also off while the service drains for shutdown.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Mounts every route and the JSON error handlers.
pub fn configure(state: AppState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config: &mut web::ServiceConfig| {
        config
            .app_data(web::Data::new(state))
            .app_data(web::JsonConfig::default().limit(256 * 1024).error_handler(problem::json_error))
            .app_data(web::PathConfig::default().error_handler(problem::path_error))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error))
            .service(ops::healthz)
            .service(ops::readyz)
            .service(ops::metrics)
            .service(ops::openapi_document)
            .default_service(web::to(problem::not_found));
    }
}
