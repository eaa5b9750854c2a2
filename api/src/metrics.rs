//! HTTP request metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and latency of HTTP requests by route pattern (never by raw path, which would leak ids).
#[derive(Clone)]
pub struct HttpMetrics {
    /// Requests by method, route and status.
    pub requests: IntCounterVec,
    /// Latency by method and route.
    pub duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("gatehouse_http_requests_total", "HTTP requests by method, route and status"),
            &["method", "route", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("gatehouse_http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["method", "route"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self { requests, duration })
    }
}
