//! What the benchmarks share: the trivial actix server they measure against, and percentiles.

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use reqwest::header::{HeaderValue, AUTHORIZATION};

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

/// Closed-loop load: `clients` keep-alive clients GET `url` back to back; responses completing inside the window
/// count. Returns (ok per second, errors, first error, p50 ms, p99 ms).
pub async fn drive(
    url: &str,
    authorization: Option<&HeaderValue>,
    clients: usize,
    warm_up: Duration,
    window: Duration,
) -> (f64, usize, Option<String>, f64, f64) {
    let start = Instant::now() + warm_up;
    let end = start + window;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("a client");
            let url = url.to_string();
            let authorization = authorization.cloned();
            tokio::spawn(async move {
                let (mut ok, mut errors, mut first, mut latencies) = (0usize, 0usize, None, Vec::new());
                loop {
                    let began = Instant::now();
                    let mut request = client.get(&url);
                    if let Some(value) = &authorization {
                        request = request.header(AUTHORIZATION, value.clone());
                    }
                    let outcome = match request.send().await {
                        Ok(response) if response.status() == reqwest::StatusCode::OK => {
                            response.bytes().await.map(|_| ()).map_err(|error| error.to_string())
                        }
                        Ok(response) => {
                            Err(format!("{}: {}", response.status(), response.text().await.unwrap_or_default()))
                        }
                        Err(error) => Err(error.to_string()),
                    };
                    let done = Instant::now();
                    if done >= start && done < end {
                        match outcome {
                            Ok(()) => {
                                ok += 1;
                                latencies.push(done - began);
                            }
                            Err(error) => {
                                errors += 1;
                                first.get_or_insert(error);
                            }
                        }
                    }
                    if done >= end {
                        return (ok, errors, first, latencies);
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut errors, mut first, mut latencies) = (0, 0, None, Vec::new());
    for task in tasks {
        let (o, e, f, l) = task.await.expect("a load client");
        ok += o;
        errors += e;
        first = first.or(f);
        latencies.extend(l);
    }
    (ok as f64 / window.as_secs_f64(), errors, first, percentile_ms(&latencies, 0.5), percentile_ms(&latencies, 0.99))
}
