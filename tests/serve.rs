//! `gatehouse serve` as a real process over real HTTP: endpoints, graceful shutdown, store outages.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, Server};
use testkit::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_health_readiness_metrics_and_openapi_then_stops_on_sigterm() {
    for db in TestDb::all("serve endpoints").await {
        let server = Server::start(&db, &[("GATEHOUSE_BOOTSTRAP_ADMIN", "Root@Example.com")]);
        let client = reqwest::Client::new();
        let health: serde_json::Value = client.get(server.url("/healthz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(health["status"], "ok");

        let ready = eventually(Duration::from_secs(10), || async {
            client.get(server.url("/readyz")).send().await.map(|r| r.status() == 200).unwrap_or(false)
        })
        .await;
        assert!(ready, "{}: never ready", db.backend());
        let readiness: serde_json::Value =
            client.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
        assert_eq!(readiness["backend"], db.backend());
        let projections = readiness["projections"].as_array().unwrap();
        let names: Vec<&str> = projections.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "audit_chain",
                "blueprints",
                "members",
                "publish_requests",
                "sessions",
                "tags",
                "trust_rules",
                "workspaces"
            ]
        );
        assert!(projections.iter().all(|p| p["state"] == "caught_up"), "{readiness}");

        let metrics = client.get(server.url("/metrics")).send().await.unwrap();
        assert!(metrics.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
        let metrics = metrics.text().await.unwrap();
        assert!(metrics.contains("gatehouse_projection_events_applied_total{projection=\"members\"} 1"), "{metrics}");
        assert!(metrics.contains("gatehouse_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"));

        let openapi: serde_json::Value =
            client.get(server.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
        assert_eq!(openapi["openapi"], "3.1.0");
        assert!(openapi["paths"]["/readyz"]["get"].is_object());
        // Every route the service mounts is in the document, and every operation in it is a mounted route.
        let documented = operations(&openapi);
        let mounted = routes_in_source();
        assert!(mounted.len() >= 30, "the source scan found too few routes: {mounted:?}");
        let undocumented: Vec<_> = mounted.difference(&documented).collect();
        assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
        let unmounted: Vec<_> = documented.difference(&mounted).collect();
        assert!(unmounted.is_empty(), "operations in the OpenAPI document with no handler: {unmounted:?}");
        for (method, path) in &documented {
            // Path parameters filled with a placeholder; whatever the handler answers, it must not be the
            // default service's "No route" (which would mean the handler is documented but not mounted).
            let concrete =
                path.split('/').map(|part| if part.starts_with('{') { "x" } else { part }).collect::<Vec<_>>();
            let url = server.url(&concrete.join("/"));
            let response = client.request(method.parse().unwrap(), &url).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(!body.contains("No route for"), "{method} {path} is documented but not mounted: {status} {body}");
        }

        let missing = client.get(server.url("/api/v1/nothing-here")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(problem["code"], "not_found");
        assert_eq!(problem["status"], 404);

        let status = server.terminate();
        assert!(status.success(), "{}: exit {status:?}", db.backend());
    }
}

/// The (method, path) of every operation in an OpenAPI document.
fn operations(openapi: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut all = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                all.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    all
}

/// The (method, path) of every route handler in the service's source: the actix-web route attributes
/// (`#[get("/path")]`, ...) in `api/src` and `src`. Routes are mounted only through those attributes; a route
/// registered another way (`.route(...)`, `web::resource(...)`) fails this scan, so the OpenAPI test cannot
/// silently miss it.
fn routes_in_source() -> BTreeSet<(String, String)> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    walk(&root.join("api/src"), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines() {
            let line = line.trim();
            for forbidden in [".route(", "web::resource(", "web::route("] {
                assert!(
                    !line.contains(forbidden),
                    "{}: routes are mounted with attributes only: {line}",
                    file.display()
                );
            }
            for method in ["get", "post", "put", "patch", "delete"] {
                let Some(rest) = line.strip_prefix(&format!("#[{method}(\"")) else { continue };
                let path = rest.split('"').next().unwrap();
                routes.insert((method.to_uppercase(), path.to_string()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_outage_turns_readiness_off_and_the_service_recovers_by_itself() {
    let Some(db) = TestDb::postgres("store outage").await else { return };
    let admin = common::issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_DATABASE_ACQUIRE_TIMEOUT_SECS", "1")]);
    let api = common::Api::new(&server);
    let (status, _) = api.invite(&admin, "before@example.com", "member").await;
    assert_eq!(status, 201);
    let client = reqwest::Client::new();
    let status = |path: &'static str| {
        let client = client.clone();
        let url = server.url(path);
        async move { client.get(url).send().await.map(|response| response.status().as_u16()).unwrap_or(0) }
    };
    assert!(eventually(Duration::from_secs(10), || async { status("/readyz").await == 200 }).await);

    let name = db.url.rsplit('/').next().unwrap().to_string();
    let server_url = std::env::var(testkit::POSTGRES_URL_VARIABLE).unwrap();
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&server_url).await.unwrap();
    let outage = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    sqlx::query(&outage(false)).execute(&mut connection).await.unwrap();
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .execute(&mut connection)
        .await
        .unwrap();

    assert!(
        eventually(Duration::from_secs(15), || async { status("/readyz").await == 503 }).await,
        "readiness stayed on"
    );
    let response = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(status("/healthz").await, 200, "the process itself stays alive");
    // Requests that need the store are refused with 503 and a Retry-After, not a 500.
    let (status_code, headers, problem) = api
        .call(
            reqwest::Method::POST,
            "/api/v1/members",
            Some(&admin),
            Some(serde_json::json!({"email": "during@example.com", "role": "member"})),
        )
        .await;
    assert_eq!((status_code, problem["code"].as_str()), (503, Some("store_unavailable")), "{problem}");
    assert!(headers.contains_key("retry-after"));

    sqlx::query(&outage(true)).execute(&mut connection).await.unwrap();
    assert!(eventually(Duration::from_secs(30), || async { status("/readyz").await == 200 }).await, "never recovered");
    // Nothing acknowledged before the outage was lost, and commands work again.
    let emails: Vec<_> = api.member_emails(&admin).await.into_iter().map(|(email, _, _)| email).collect();
    assert!(emails.contains(&"before@example.com".to_string()));
    assert!(!emails.contains(&"during@example.com".to_string()));
    assert_eq!(api.invite(&admin, "after@example.com", "member").await.0, 201);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_turns_readiness_off_first_and_keeps_serving_for_the_drain_delay() {
    let db = TestDb::sqlite();
    let mut server = Server::start(&db, &[("GATEHOUSE_SHUTDOWN_DRAIN_SECS", "2")]);
    let client = reqwest::Client::new();
    let status = |path: &str| {
        let request = client.get(server.url(path)).send();
        async move { request.await.map(|response| response.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(status("/readyz").await, 200);
    server.send_sigterm();
    assert!(
        eventually(Duration::from_secs(1), || async { status("/readyz").await == 503 }).await,
        "readiness stayed on"
    );
    let readiness: serde_json::Value = client.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["draining"], true);
    assert_eq!(status("/healthz").await, 200, "still serving while draining");
    assert!(server.wait(Duration::from_secs(20)).success());
}
