//! The HTTP app a preview test runs "in its workspace": a real hyper server on 127.0.0.1, which the workspace's agent
//! reaches on loopback. Routes: `/` (a page of 50 sub-resources), `/r/<n>`, `/big?bytes=<n>` (streamed), `POST
//! /upload` (counted as it streams), `/sse` (server-sent events), `/headers` (what it was sent), `/cookie` (sets
//! one with a `Domain`), `/slow` (never answers), `/ws` (a WebSocket echo).

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

pub struct App {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const SUB_RESOURCES: usize = 50;
const CHUNK: usize = 64 * 1024;

/// Starts the app on a free loopback port.
pub async fn start() -> App {
    start_on(0).await
}

/// Starts the app on `port` of the loopback interface (0: a free one).
pub async fn start_on(port: u16) -> App {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handle);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    App { port, task }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).map_err(|never| match never {}).boxed()
}

fn query(request: &Request<Incoming>, key: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == key).then(|| value.to_string())
    })
}

/// A checksum of a byte stream (FNV-1a), to compare what was sent with what arrived.
pub fn fnv(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3))
}
pub const FNV_START: u64 = 0xcbf29ce484222325;

/// The `n`th byte of a generated body.
pub fn pattern(at: u64) -> u8 {
    (at % 251) as u8
}

async fn handle(mut request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_string();
    let response = match path.as_str() {
        "/" => {
            let links: String =
                (0..SUB_RESOURCES).map(|i| format!("<img src=\"/r/{i}\">")).collect::<Vec<_>>().join("\n");
            Response::builder()
                .header("content-type", "text/html")
                .body(full(format!("<!doctype html><html><body>\n{links}\n</body></html>")))
        }
        path if path.starts_with("/r/") => Response::builder().body(full(format!("resource {}", &path[3..]))),
        "/big" => {
            let total: u64 = query(&request, "bytes").and_then(|raw| raw.parse().ok()).unwrap_or(0);
            let chunks = futures::stream::unfold(0u64, move |sent| async move {
                if sent >= total {
                    return None;
                }
                let length = (total - sent).min(CHUNK as u64);
                let chunk: Vec<u8> = (sent..sent + length).map(pattern).collect();
                Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))), sent + length))
            });
            // No Content-Length: chunked, streamed as it is made.
            Response::builder().body(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "/upload" => {
            let (mut count, mut hash) = (0u64, FNV_START);
            let body = request.body_mut();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    count += data.len() as u64;
                    hash = fnv(hash, data);
                }
            }
            Response::builder().body(full(format!("{count} {hash:x}")))
        }
        "/sse" => {
            let events = futures::stream::unfold(0u32, |n| async move {
                if n == 3 {
                    return None;
                }
                if n > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("data: event {n}\n\n")))), n + 1))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(events)))
        }
        "/headers" => {
            let mut seen = serde_json::Map::new();
            for (name, value) in request.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).to_string();
                seen.insert(name.as_str().to_string(), serde_json::Value::String(value));
            }
            Response::builder()
                .header("content-type", "application/json")
                .body(full(serde_json::Value::Object(seen).to_string()))
        }
        "/cookie" => Response::builder()
            .header("set-cookie", "app=1; Domain=.preview.localhost; Path=/; HttpOnly")
            .header("set-cookie", "gatehouse_preview=forged; Path=/")
            .body(full("cookie set")),
        "/slow" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/ws" => {
            let key = request.headers().get("sec-websocket-key").map(|key| key.as_bytes().to_vec());
            let Some(key) = key else {
                return Ok(Response::builder().status(400).body(full("not a websocket")).unwrap());
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            tokio::spawn(async move {
                let Ok(upgraded) = hyper::upgrade::on(&mut request).await else { return };
                let mut socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_close() {
                        break;
                    }
                    if (message.is_text() || message.is_binary()) && socket.send(message).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(Bytes::new()))
        }
        _ => Response::builder().status(404).body(full("no such page")),
    };
    Ok(response.unwrap())
}
