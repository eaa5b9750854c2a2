//! Issue #16's preview benchmark: the same HTTP app (tests/common/preview_app.rs, a hyper server on loopback)
//! reached directly and through the preview (browser → gateway → agent channel → app), measured in the same run:
//! throughput of a streamed download and upload, the latency of small requests on a keep-alive connection, and 100
//! concurrent clients.
//!
//! Run: `cargo bench --bench preview` (`-- --quick`: 32 MiB instead of 128 MiB, fewer requests). Markdown to stdout,
//! progress to stderr; docs/BENCHMARKS.md records the results.
//!
//! The gateway is a real `gatehouse serve` child process (embedded SQLite), the agent a real `gatehouse agent`.

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::preview_app;
use common::terminal::{mint_agent_token, wait_for_workspace, Agent};
use common::{issue_token, rss_kib, Api, Server};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use reqwest::Method;
use serde_json::json;
use support::percentile_ms;
use testkit::TestDb;

type Body = BoxBody<Bytes, std::io::Error>;
type Sender = hyper::client::conn::http1::SendRequest<Body>;

const MIB: usize = 1024 * 1024;

/// Where requests go: the app itself, or the preview host at the gateway with its cookie.
#[derive(Clone)]
struct Route {
    address: SocketAddr,
    host: String,
    cookie: Option<String>,
}

impl Route {
    async fn connect(&self) -> Sender {
        let stream = tokio::net::TcpStream::connect(self.address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    fn request(&self, method: &str, path: &str, body: Body) -> hyper::Request<Body> {
        let mut builder = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        if let Some(cookie) = &self.cookie {
            builder = builder.header("cookie", cookie);
        }
        builder.body(body).unwrap()
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

async fn download(route: &Route, bytes: usize) -> Duration {
    let mut sender = route.connect().await;
    let started = Instant::now();
    let response = sender.send_request(route.request("GET", &format!("/big?bytes={bytes}"), empty())).await.unwrap();
    let mut body = response.into_body();
    let mut received = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len();
        }
    }
    assert_eq!(received, bytes);
    started.elapsed()
}

async fn upload(route: &Route, bytes: usize) -> Duration {
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let chunks = futures::stream::unfold(0usize, move |sent| {
        let chunk = chunk.clone();
        async move {
            (sent < bytes).then(|| {
                let length = (bytes - sent).min(chunk.len());
                (Ok::<_, std::io::Error>(Frame::data(chunk.slice(..length))), sent + length)
            })
        }
    });
    let mut sender = route.connect().await;
    let started = Instant::now();
    let request = route.request("POST", "/upload", BodyExt::boxed(StreamBody::new(chunks)));
    let response = sender.send_request(request).await.unwrap();
    let answer = response.into_body().collect().await.unwrap().to_bytes();
    assert!(answer.starts_with(format!("{bytes} ").as_bytes()), "{answer:?}");
    started.elapsed()
}

/// `count` small requests one after another on one keep-alive connection: each one's time.
async fn small_requests(route: &Route, count: usize) -> Vec<Duration> {
    let mut sender = route.connect().await;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        sender.ready().await.unwrap();
        let started = Instant::now();
        let response = sender.send_request(route.request("GET", &format!("/r/{}", i % 50), empty())).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        samples.push(started.elapsed());
        assert!(body.starts_with(b"resource "));
    }
    samples
}

/// `clients` connections at once, each sending `each` small requests: the wall time and every request's time.
async fn concurrent(route: &Route, clients: usize, each: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let route = route.clone();
            tokio::spawn(async move { small_requests(&route, each).await })
        })
        .collect();
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    (started.elapsed(), samples)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (bytes, rounds, small, clients, each) =
        if quick { (32 * MIB, 3, 300, 100, 5) } else { (128 * MIB, 5, 1000, 100, 20) };

    eprintln!("starting the app, the gateway and the agent…");
    let app = preview_app::start().await;
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "2h");
    let ada = issue_token(&db, "ada@example.com", "member", "2h");
    let server = Server::start(&db, &[("GATEHOUSE_LOG", "warn,gatehouse=info")]);
    let api = Api::new(&server);
    let agent_token = mint_agent_token(&api, &root, "ws-bench", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-bench");
    wait_for_workspace(&api, &ada, "ws-bench").await;

    // The cookie, as a browser gets it.
    let body = json!({"kind": "preview", "port": app.port});
    let (status, _, issued) =
        api.call(Method::POST, "/api/v1/workspaces/ws-bench/tickets", Some(&ada), Some(body)).await;
    assert_eq!(status, 201, "{issued}");
    let gateway: SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let host = format!("ws-bench--{}.preview.localhost:{}", app.port, gateway.port());
    let exchange = Route { address: gateway, host: host.clone(), cookie: None };
    let mut sender = exchange.connect().await;
    let path = format!("/__gatehouse/preview/auth?ticket={}", issued["ticket"].as_str().unwrap());
    let answer = sender.send_request(exchange.request("GET", &path, empty())).await.unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let preview = Route { address: gateway, host, cookie: Some(cookie) };
    let direct = Route {
        address: SocketAddr::from(([127, 0, 0, 1], app.port)),
        host: format!("127.0.0.1:{}", app.port),
        cookie: None,
    };

    eprintln!("warming up…");
    download(&direct, 4 * MIB).await;
    download(&preview, 4 * MIB).await;
    small_requests(&direct, 50).await;
    small_requests(&preview, 50).await;

    eprintln!("throughput: {rounds} alternating rounds of {} MiB each way…", bytes / MIB);
    let pid = server.child.id();
    let rss_before = rss_kib(pid);
    let mut rss_peak = rss_before;
    let (mut down, mut up) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for _ in 0..rounds {
        down.0.push(mib_per_s(bytes, download(&direct, bytes).await));
        down.1.push(mib_per_s(bytes, download(&preview, bytes).await));
        rss_peak = rss_peak.max(rss_kib(pid));
        up.0.push(mib_per_s(bytes, upload(&direct, bytes).await));
        up.1.push(mib_per_s(bytes, upload(&preview, bytes).await));
        rss_peak = rss_peak.max(rss_kib(pid));
    }

    eprintln!("latency: {small} small requests on one connection, alternating…");
    let (mut latency_direct, mut latency_preview) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        latency_direct.extend(small_requests(&direct, small / rounds).await);
        latency_preview.extend(small_requests(&preview, small / rounds).await);
    }

    eprintln!("{clients} concurrent clients × {each} requests…");
    let (wall_direct, concurrent_direct) = concurrent(&direct, clients, each).await;
    let (wall_preview, concurrent_preview) = concurrent(&preview, clients, each).await;
    rss_peak = rss_peak.max(rss_kib(pid));

    let (down_direct, down_preview) = (median(down.0), median(down.1));
    let (up_direct, up_preview) = (median(up.0), median(up.1));
    println!("### Preview (`cargo bench --bench preview{}`)\n", if quick { " -- --quick" } else { "" });
    println!("| measure | direct to the app | through the preview | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| download, {} MiB (median of {rounds}, MiB/s) | {down_direct:.0} | {down_preview:.0} | {:.2}× |",
        bytes / MIB,
        down_preview / down_direct
    );
    println!(
        "| upload, {} MiB (median of {rounds}, MiB/s) | {up_direct:.0} | {up_preview:.0} | {:.2}× |",
        bytes / MIB,
        up_preview / up_direct
    );
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (a, b) = (percentile_ms(&latency_direct, p), percentile_ms(&latency_preview, p));
        println!(
            "| small request {name} (ms, {} sequential) | {a:.3} | {b:.3} | +{:.3} ms |",
            latency_direct.len(),
            b - a
        );
    }
    let requests = clients * each;
    println!(
        "| {clients} concurrent clients: {requests} requests (requests/s) | {:.0} | {:.0} | {:.2}× |",
        requests as f64 / wall_direct.as_secs_f64(),
        requests as f64 / wall_preview.as_secs_f64(),
        wall_direct.as_secs_f64() / wall_preview.as_secs_f64()
    );
    let (a, b) = (percentile_ms(&concurrent_direct, 0.99), percentile_ms(&concurrent_preview, 0.99));
    println!("| {clients} concurrent clients: request p99 (ms) | {a:.2} | {b:.2} | +{:.2} ms |", b - a);
    println!(
        "\nGateway RSS: {} MiB before the transfers, {} MiB at most during them.",
        rss_before / 1024,
        rss_peak / 1024
    );
}
