//! What the benchmarks share: the trivial actix server they measure against, and percentiles.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};

/// The body of the trivial handler (and of probes that answer nothing of their own).
pub const FIXED_BODY: &str = r#"{"status":"ok","service":"trivial"}"#;

/// The `p` quantile of `samples`, in milliseconds (NaN when there are none).
pub fn percentile_ms(samples: &[Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

async fn trivial() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(FIXED_BODY)
}

/// A plain actix server whose only handler returns a small fixed JSON body: the floor.
pub fn start_trivial() -> (String, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the trivial server");
    let port = listener.local_addr().expect("the trivial server's address").port();
    let server = HttpServer::new(|| App::new().route("/trivial", web::get().to(trivial)))
        .disable_signals()
        .listen(listener)
        .expect("the trivial server listens")
        .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}
