//! Previews (issue #16, ADR 0026), end to end: a real `gatehouse serve`, a real `gatehouse agent`, and a real HTTP
//! app (tests/common/preview_app.rs) on the workspace's loopback that only the agent dials. Browsers are HTTP
//! clients that reach the preview host `<workspace>--<port>.preview.localhost` at the gateway's address.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::preview_app::{self, fnv, pattern, FNV_START, SUB_RESOURCES};
use common::terminal::{mint_agent_token, setup, wait_for_workspace, Agent, Setup};
use common::{enabled_blueprint, eventually, git_repository, issue_token, launch_running, rss_kib, Api, Server};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1024 * 1024;

/// A browser holding one preview's cookie.
struct Preview {
    host: String,
    gateway: SocketAddr,
    cookie: String,
    http: reqwest::Client,
}

impl Preview {
    fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.gateway.port())
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).header("cookie", &self.cookie).send().await.unwrap()
    }

    /// A raw HTTP/1.1 connection to the gateway, for bodies streamed without buffering.
    async fn connection(&self) -> hyper::client::conn::http1::SendRequest<StreamedBody> {
        let stream = tokio::net::TcpStream::connect(self.gateway).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        sender
    }

    fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.gateway.port()))
            .header("cookie", &self.cookie)
    }
}

type StreamedBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn gateway_address(server: &Server) -> SocketAddr {
    server.base.trim_start_matches("http://").parse().unwrap()
}

/// A client that reaches every preview host at the gateway (as wildcard DNS would), following no redirect.
fn browser(server: &Server, hosts: &[&str]) -> reqwest::Client {
    let address = gateway_address(server);
    hosts
        .iter()
        .fold(reqwest::Client::builder(), |builder, host| builder.resolve(host, address))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn preview_ticket(api: &Api, token: &str, workspace: &str, port: u16) -> (u16, Value) {
    let path = format!("/api/v1/workspaces/{workspace}/tickets");
    let body = json!({"kind": "preview", "port": port});
    let (status, _, answer) = api.call(Method::POST, &path, Some(token), Some(body)).await;
    (status, answer)
}

fn host_of(workspace: &str, port: u16) -> String {
    format!("{workspace}--{port}.preview.localhost")
}

/// Takes a preview ticket and exchanges it for the cookie, as the portal's frame would.
async fn open_preview(server: &Server, api: &Api, token: &str, workspace: &str, port: u16) -> Preview {
    let (status, issued) = preview_ticket(api, token, workspace, port).await;
    assert_eq!(status, 201, "{issued}");
    let host = host_of(workspace, port);
    let exchange = issued["exchange_url"].as_str().unwrap();
    assert!(exchange.starts_with(&format!("http://{host}:")), "{exchange}");
    let http = browser(server, &[&host]);
    let ticket = issued["ticket"].as_str().unwrap();
    let answer = http.get(format!("{exchange}?ticket={ticket}")).send().await.unwrap();
    assert_eq!(answer.status(), 303);
    assert_eq!(answer.headers()["location"], "/");
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=600"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.to_ascii_lowercase().contains("domain="), "host-only: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    // A ticket is used once.
    let again = http.get(format!("{exchange}?ticket={ticket}")).send().await.unwrap();
    assert_eq!(again.status(), 401);
    Preview { host, gateway: gateway_address(server), cookie, http }
}

async fn preview_sessions(api: &Api, admin: &str) -> Vec<Value> {
    let (status, sessions) = api.get("/api/v1/sessions?kind=preview", Some(admin)).await;
    assert_eq!(status, 200, "{sessions}");
    sessions["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_is_previewed_through_the_agent() {
    for db in TestDb::all("preview an_app_is_previewed_through_the_agent").await {
        an_app_is_previewed_through_the_agent_on(db).await;
    }
}

async fn an_app_is_previewed_through_the_agent_on(db: TestDb) {
    let Setup { server, api, root, ada, agent: _agent } = setup(&db, &[]).await;
    let app = preview_app::start().await;
    let preview = open_preview(&server, &api, &ada, "ws-ada", app.port).await;

    // A page and its 50 sub-resources, fetched at once as a browser would.
    let page = preview.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    assert!(!page.headers().contains_key("x-frame-options"), "the portal's own headers are not the app's");
    let page = page.text().await.unwrap();
    let links: Vec<String> =
        page.split("src=\"").skip(1).map(|rest| rest.split('"').next().unwrap().to_string()).collect();
    assert_eq!(links.len(), SUB_RESOURCES);
    let fetched = futures::future::join_all(links.iter().map(|link| async {
        let answer = preview.get(link).await;
        (answer.status().as_u16(), answer.text().await.unwrap())
    }))
    .await;
    for (i, (status, body)) in fetched.iter().enumerate() {
        assert_eq!((*status, body.as_str()), (200, format!("resource {i}").as_str()));
    }

    // What the app is sent: no portal credential, no hop-by-hop or forged proxy header.
    let seen: Value = preview
        .http
        .get(preview.url("/headers"))
        .header("cookie", format!("{}; app=1", preview.cookie))
        .header("authorization", "Bearer portal-token")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-for", "203.0.113.66")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["cookie"], "app=1", "{seen}");
    assert!(seen.get("authorization").is_none() && seen.get("x-secret").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-host"], preview.host.as_str(), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["host"], format!("{}:{}", preview.host, preview.gateway.port()), "{seen}");
    // The app's cookies stay on its host, and it cannot overwrite the gateway's.
    let cookies = preview.get("/cookie").await;
    let set: Vec<&str> = cookies.headers().get_all("set-cookie").iter().map(|value| value.to_str().unwrap()).collect();
    assert_eq!(set, ["app=1; Path=/; HttpOnly"]);

    // Server-sent events stream through, in order.
    let events = preview.get("/sse").await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    assert_eq!(events.text().await.unwrap(), "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");

    // A WebSocket (a dev server's hot reload) through the preview.
    let stream = tokio::net::TcpStream::connect(preview.gateway).await.unwrap();
    let mut request = preview.url("/ws").replace("http://", "ws://").into_client_request().unwrap();
    request.headers_mut().insert("cookie", preview.cookie.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    socket.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::Text("hello".into()));
    let blob: Vec<u8> = (0..200_000u64).map(pattern).collect();
    socket.send(Message::Binary(blob.clone().into())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::Binary(blob.into()));
    socket.close(None).await.unwrap();

    // 100 MB each way, streamed: the gateway's memory stays bounded.
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut peak = before;
    let total = 100 * MIB;
    let mut sender = preview.connection().await;
    let download = preview
        .request("GET", &format!("/big?bytes={total}"))
        .body(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap();
    let response = sender.send_request(download).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut received, mut hash, mut expected) = (0u64, FNV_START, FNV_START);
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            let want: Vec<u8> = (received..received + data.len() as u64).map(pattern).collect();
            expected = fnv(expected, &want);
            hash = fnv(hash, data);
            received += data.len() as u64;
            if received % (8 * MIB) < data.len() as u64 {
                peak = peak.max(rss_kib(pid));
            }
        }
    }
    assert_eq!((received, hash), (total, expected));
    let chunks = futures::stream::unfold(0u64, move |sent| async move {
        (sent < total).then(|| {
            let length = (total - sent).min(64 * 1024);
            let chunk: Vec<u8> = (sent..sent + length).map(pattern).collect();
            (Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))), sent + length)
        })
    });
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
            if peak == u64::MAX {
                return peak;
            }
        }
    });
    let upload = preview.request("POST", "/upload").body(BodyExt::boxed(StreamBody::new(chunks))).unwrap();
    let mut sender = preview.connection().await;
    let response = sender.send_request(upload).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    sampler.abort();
    peak = peak.max(rss_kib(pid));
    let sent_hash = fnv(FNV_START, &(0..total).map(pattern).collect::<Vec<u8>>());
    assert_eq!(answer, format!("{total} {sent_hash:x}"));
    let grown = peak.saturating_sub(before);
    assert!(grown < 64 * 1024, "the gateway grew by {grown} KiB while 100 MiB streamed each way");

    // One session for the cookie, however many requests it served.
    let sessions = preview_sessions(&api, &root).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!((sessions[0]["kind"].as_str(), sessions[0]["port"].as_u64()), (Some("preview"), Some(app.port.into())));
    assert_eq!(sessions[0]["user"], "ada@example.com");
    assert!(sessions[0]["closed_at"].is_null(), "{:?}", sessions[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn previews_refuse_what_they_must() {
    for db in TestDb::all("preview previews_refuse_what_they_must").await {
        previews_refuse_what_they_must_on(db).await;
    }
}

async fn previews_refuse_what_they_must_on(db: TestDb) {
    let env = [("GATEHOUSE_PREVIEW_RESPONSE_TIMEOUT_SECS", "2")];
    let Setup { server, api, root, ada, mut agent } = setup(&db, &env).await;
    let bea = issue_token(&db, "bea@example.com", "member", "1h");
    let bea_agent_token = mint_agent_token(&api, &root, "ws-bea", "bea@example.com").await;
    let _bea_agent = Agent::start(&server, &bea_agent_token, "ws-bea");
    wait_for_workspace(&api, &bea, "ws-bea").await;
    let app = preview_app::start().await;

    // Tickets: a port outside the range, no port, another member's workspace.
    assert_eq!(preview_ticket(&api, &ada, "ws-ada", 80).await.0, 422);
    let path = "/api/v1/workspaces/ws-ada/tickets";
    let (status, _, answer) = api.call(Method::POST, path, Some(&ada), Some(json!({"kind": "preview"}))).await;
    assert_eq!((status, answer["code"].as_str()), (409, Some("no_dev_server")), "no dev server to default to");
    let body = json!({"kind": "terminal", "port": 3000});
    assert_eq!(api.call(Method::POST, path, Some(&ada), Some(body)).await.0, 422);
    // A port written as a float is the same whole number (JSON Schema's integer); a fraction is not.
    let body = json!({"kind": "preview", "port": f64::from(app.port)});
    assert_eq!(api.call(Method::POST, path, Some(&ada), Some(body)).await.0, 201);
    let body = json!({"kind": "preview", "port": 3000.5});
    assert!(matches!(api.call(Method::POST, path, Some(&ada), Some(body)).await.0, 400 | 422));
    assert!(matches!(preview_ticket(&api, &bea, "ws-ada", app.port).await.0, 403 | 404));

    let ada_host = host_of("ws-ada", app.port);
    let bea_host = host_of("ws-bea", app.port);
    let http = browser(&server, &[&ada_host, &bea_host, &host_of("ws-ada", 80)]);
    let port = server.base.rsplit(':').next().unwrap().to_string();
    // No cookie: a problem document, or a page for a browser.
    let answer = http.get(format!("http://{ada_host}:{port}/")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    let answer = http.get(format!("http://{ada_host}:{port}/")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert!(answer.text().await.unwrap().contains("Open this preview from the portal"));
    // Malformed HTTP from a browser, and a header larger than the gateway reads, are refused on their connection.
    for request in [
        format!("GARBAGE\r\nHost: {ada_host}\r\n\r\n").into_bytes(),
        [
            format!("GET / HTTP/1.1\r\nHost: {ada_host}\r\nX-Huge: ").into_bytes(),
            vec![b'a'; 1 << 20],
            b"\r\n\r\n".to_vec(),
        ]
        .concat(),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(gateway_address(&server)).await.unwrap();
        let _ = stream.write_all(&request).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    }

    // A port outside the range has no preview host.
    let answer = http.get(format!("http://{}:{port}/", host_of("ws-ada", 80))).send().await.unwrap();
    assert_eq!(answer.status(), 404);

    // A ticket for workspace A exchanged at B's host is refused; B's cookie does not open A.
    let (_, issued) = preview_ticket(&api, &ada, "ws-ada", app.port).await;
    let ticket = issued["ticket"].as_str().unwrap();
    let answer = http.get(format!("http://{bea_host}:{port}/__gatehouse/preview/auth?ticket={ticket}")).send().await;
    assert_eq!(answer.unwrap().status(), 401);
    let bea_preview = open_preview(&server, &api, &bea, "ws-bea", app.port).await;
    assert_eq!(bea_preview.get("/r/1").await.status(), 200);
    let stolen = http.get(format!("http://{ada_host}:{port}/r/1")).header("cookie", &bea_preview.cookie).send().await;
    assert_eq!(stolen.unwrap().status(), 401);

    // Another site's page (another preview's included: one site) cannot send requests with the cookie; navigating
    // to the preview (the portal's frame, a link) can.
    let cross_site = |site: &'static str, mode: &'static str, method: Method| {
        let request = bea_preview.http.request(method, bea_preview.url("/r/5"));
        request.header("cookie", &bea_preview.cookie).header("sec-fetch-site", site).header("sec-fetch-mode", mode)
    };
    assert_eq!(cross_site("same-site", "cors", Method::POST).send().await.unwrap().status(), 403);
    assert_eq!(cross_site("cross-site", "no-cors", Method::GET).send().await.unwrap().status(), 403);
    assert_eq!(cross_site("cross-site", "navigate", Method::POST).send().await.unwrap().status(), 403);
    assert_eq!(cross_site("same-site", "navigate", Method::GET).send().await.unwrap().status(), 200);
    assert_eq!(cross_site("same-origin", "cors", Method::GET).send().await.unwrap().status(), 200);

    // A forged X-Forwarded-Host reaches the portal, never a preview.
    let ada_preview = open_preview(&server, &api, &ada, "ws-ada", app.port).await;
    let forged = reqwest::Client::new()
        .get(format!("{}/r/1", server.base))
        .header("x-forwarded-host", format!("{ada_host}:{port}"))
        .header("cookie", &ada_preview.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
    assert_eq!(forged.headers()["content-type"], "application/problem+json");

    // The app does not answer in time: 504.
    let slow = ada_preview.get("/slow").await;
    assert_eq!(slow.status(), 504);
    assert_eq!(slow.json::<Value>().await.unwrap()["code"], "preview_timeout");
    // Nothing listens on the port: 502.
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nothing = open_preview(&server, &api, &ada, "ws-ada", closed_port).await;
    let answer = nothing.get("/").await;
    assert_eq!(answer.status(), 502);
    assert_eq!(answer.json::<Value>().await.unwrap()["code"], "preview_unreachable");

    // An app that answers garbage, or a header larger than any limit: 502, and the other previews go on.
    for answer in [b"garbage\r\n\r\n".to_vec(), [b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec(), vec![b'a'; 1 << 20]].concat()]
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bad_port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(&answer).await;
            }
        });
        let bad = open_preview(&server, &api, &ada, "ws-ada", bad_port).await;
        let refused = bad.get("/").await;
        assert_eq!(refused.status(), 502);
        assert_eq!(refused.json::<Value>().await.unwrap()["code"], "preview_unreachable");
        assert_eq!(ada_preview.get("/r/4").await.status(), 200);
    }

    // The workspace's agent is gone: 503, and the preview works again once it is back.
    agent.kill();
    let gone = eventually(Duration::from_secs(15), || async { ada_preview.get("/r/2").await.status() == 503 }).await;
    assert!(gone, "no 503 once the agent left");
    let agent_token = mint_agent_token(&api, &root, "ws-ada", "ada@example.com").await;
    let _agent = Agent::start(&server, &agent_token, "ws-ada");
    wait_for_workspace(&api, &ada, "ws-ada").await;
    assert_eq!(ada_preview.get("/r/2").await.status(), 200);

    // A firewall rule added while the preview is open blocks its next request, and ends its session.
    let body = json!({"rules": [{"action": "deny", "cidr": "127.0.0.0/8"}, {"action": "deny", "cidr": "::1/128"}],
        "default_action": "allow"});
    let (status, _, answer) = api.call(Method::PUT, "/api/v1/firewall", Some(&root), Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ada_preview.get("/r/3").await.status(), 403);
    let closed = eventually(Duration::from_secs(15), || async {
        preview_sessions(&api, &root).await.iter().any(|session| session["reason"] == "firewall")
    })
    .await;
    assert!(closed, "{:?}", preview_sessions(&api, &root).await);
    let body = json!({"rules": [], "default_action": "allow"});
    let (status, _, _) = api.call(Method::PUT, "/api/v1/firewall", Some(&root), Some(body)).await;
    assert_eq!(status, 200);
    // Its cookie is over: sign in again.
    assert_eq!(ada_preview.get("/r/3").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_launched_workspace_is_previewed_at_its_dev_servers_port() {
    for db in TestDb::all("preview a_launched_workspace_is_previewed_at_its_dev_servers_port").await {
        a_launched_workspace_is_previewed_at_its_dev_servers_port_on(db).await;
    }
}

async fn a_launched_workspace_is_previewed_at_its_dev_servers_port_on(db: TestDb) {
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let sources = tempfile::tempdir().unwrap();
    let repository = git_repository(&sources.path().join("web"), &[("README.md", "# Web\n")]);
    // The dev server is the test's app, started on the port the control plane gave it (DEV_PORT).
    let dev = "echo \"$DEV_PORT\" > .dev-port; exec sleep 600";
    enabled_blueprint(&api, &root, "web", &repository, Some(dev)).await;
    let id = launch_running(&api, &ada, "web", "My app").await;
    let (status, workspace) = api.get(&format!("/api/v1/workspaces/{id}"), Some(&ada)).await;
    assert_eq!(status, 200, "{workspace}");
    let dev_port = u16::try_from(workspace["dev_port"].as_u64().expect("a dev port")).unwrap();
    let _app = preview_app::start_on(dev_port).await;

    // No port: the dev server's.
    let path = format!("/api/v1/workspaces/{id}/tickets");
    let (status, _, issued) = api.call(Method::POST, &path, Some(&ada), Some(json!({"kind": "preview"}))).await;
    assert_eq!(status, 201, "{issued}");
    let host = host_of(&id, dev_port);
    assert!(issued["exchange_url"].as_str().unwrap().starts_with(&format!("http://{host}:")), "{issued}");
    let http = browser(&server, &[&host]);
    let exchange =
        format!("{}?ticket={}", issued["exchange_url"].as_str().unwrap(), issued["ticket"].as_str().unwrap());
    let answer = http.get(exchange).send().await.unwrap();
    assert_eq!(answer.status(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = http.get(format!("http://{host}:{}/r/7", gateway_address(&server).port())).header("cookie", cookie);
    let page = page.send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "resource 7");
    // Another member does not learn of it.
    let bea = issue_token(&db, "bea@example.com", "member", "1h");
    let (status, _, _) = api.call(Method::POST, &path, Some(&bea), Some(json!({"kind": "preview"}))).await;
    assert_eq!(status, 404);
}
