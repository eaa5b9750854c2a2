//! Security headers on every response the service sends.
//!
//! The API answers JSON to scripts and never HTML to be rendered, so its responses forbid everything a browser might
//! otherwise do with them: sniff them into another type, frame them, load sub-resources, cache them (answers are per
//! caller and may hold a freshly minted credential), or pass the URL on as a referrer. A handler that needs another
//! value sets its own header; these are only defaults.

use actix_web::middleware::DefaultHeaders;

/// The headers as a middleware. `hsts_max_age_secs` above zero adds `Strict-Transport-Security` (only behind TLS:
/// the service itself speaks plain HTTP and is meant to sit behind a TLS-terminating proxy).
pub fn security_headers(hsts_max_age_secs: u64) -> DefaultHeaders {
    let headers = DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cache-Control", "no-store"));
    if hsts_max_age_secs > 0 {
        headers.add(("Strict-Transport-Security", format!("max-age={hsts_max_age_secs}; includeSubDomains")))
    } else {
        headers
    }
}
