//! Portal settings (`/api/v1/portal`): branding, logos, welcome screen and limits, through a real `gatehouse serve`
//! process, on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use common::{issue_token, send, Api, Server};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
const EVIL_SVG: &str =
    "<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"><script>fetch('/api/v1/org')</script></svg>";

async fn upload(api: &Api, token: Option<&str>, variant: &str, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
    let mut request = api
        .http
        .put(format!("{}/api/v1/portal/logos/{variant}", api.base))
        .header("content-type", content_type)
        .body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn branding_welcome_and_limits_are_read_by_all_and_changed_by_admins() {
    for db in TestDb::all("portal settings").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let (status, etag, view) = send(&api, Method::GET, "/api/v1/portal", Some(&ada), None, None).await;
        assert_eq!((status, etag.as_deref()), (200, Some("\"0\"")), "{backend}: {view}");
        assert_eq!(
            view,
            json!({"branding": {"name": "Developer Portal"}, "welcome": {},
                   "limits": {"running_workspaces_per_user": 3, "launches_per_minute": 5, "api_requests_per_minute": 200},
                   "version": 0}),
            "{backend}: the defaults"
        );

        let branding = json!({"name": "  Forge ", "accent_color": "#FF0088"});
        let (status, etag, _) =
            send(&api, Method::PUT, "/api/v1/portal/branding", Some(&root), Some(branding.clone()), None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"1\"")), "{backend}");
        let (_, etag, _) = send(&api, Method::PUT, "/api/v1/portal/branding", Some(&root), Some(branding), None).await;
        assert_eq!(etag.as_deref(), Some("\"1\""), "{backend}: the same branding records nothing");
        let welcome = json!({"title": "Welcome", "description": "Build.\nShip.", "cta": "Start"});
        assert_eq!(
            send(&api, Method::PUT, "/api/v1/portal/welcome", Some(&root), Some(welcome), Some("\"1\"")).await.0,
            204
        );
        let limits =
            json!({"running_workspaces_per_user": 2, "launches_per_minute": 10, "api_requests_per_minute": 1000});
        assert_eq!(send(&api, Method::PUT, "/api/v1/portal/limits", Some(&root), Some(limits), None).await.0, 204);
        let (_, etag, view) = send(&api, Method::GET, "/api/v1/portal", Some(&ada), None, None).await;
        assert_eq!(etag.as_deref(), Some("\"3\""));
        assert_eq!(view["branding"], json!({"name": "Forge", "accent_color": "#ff0088"}), "{backend}: {view}");
        assert_eq!(view["welcome"], json!({"title": "Welcome", "description": "Build.\nShip.", "cta": "Start"}));
        assert_eq!(view["limits"]["running_workspaces_per_user"], 2);

        // Stale, invalid and refused changes record nothing.
        let (status, _, problem) =
            send(&api, Method::PUT, "/api/v1/portal/branding", Some(&root), Some(json!({})), Some("\"1\"")).await;
        assert_eq!((status, problem["code"].as_str()), (412, Some("stale_version")), "{backend}: {problem}");
        let cases = [
            ("/api/v1/portal/branding", json!({"accent_color": "ff0088"}), "accent_color"),
            ("/api/v1/portal/branding", json!({"accent_color": "#ff008"}), "accent_color"),
            ("/api/v1/portal/branding", json!({"name": " "}), "name"),
            ("/api/v1/portal/branding", json!({"name": "a\u{1b}[31m"}), "name"),
            ("/api/v1/portal/branding", json!({"name": "n".repeat(101)}), "name"),
            ("/api/v1/portal/welcome", json!({"title": "a\nb"}), "welcome.title"),
            ("/api/v1/portal/welcome", json!({"description": "d".repeat(2001)}), "welcome.description"),
            ("/api/v1/portal/welcome", json!({"cta": "\u{0}"}), "cta"),
            (
                "/api/v1/portal/limits",
                json!({"running_workspaces_per_user": 0, "launches_per_minute": 5, "api_requests_per_minute": 200}),
                "running_workspaces_per_user",
            ),
            (
                "/api/v1/portal/limits",
                json!({"running_workspaces_per_user": 3, "launches_per_minute": 5, "api_requests_per_minute": 2_000_000}),
                "api_requests_per_minute",
            ),
            (
                "/api/v1/portal/limits",
                json!({"running_workspaces_per_user": 3, "launches_per_minute": -1, "api_requests_per_minute": 200}),
                "launches_per_minute",
            ),
        ];
        for (path, body, field) in cases {
            let (status, _, problem) = send(&api, Method::PUT, path, Some(&root), Some(body.clone()), None).await;
            assert_eq!(status, 422, "{backend}: {path} {body}: {problem}");
            assert!(problem["field"].as_str().unwrap().ends_with(field), "{backend}: {path} {body}: {problem}");
        }
        let (status, ..) = send(
            &api,
            Method::PUT,
            "/api/v1/portal/limits",
            Some(&root),
            Some(json!({"running_workspaces_per_user": 3})),
            None,
        )
        .await;
        assert_eq!(status, 400, "{backend}: every limit is required");
        let (_, etag, _) = send(&api, Method::GET, "/api/v1/portal", Some(&ada), None, None).await;
        assert_eq!(etag.as_deref(), Some("\"3\""), "{backend}: nothing recorded");

        // Reset: name, colour and logos back to the defaults; the welcome screen and limits stay.
        assert_eq!(upload(&api, Some(&root), "light", "image/png", PNG.to_vec()).await.0, 204);
        assert_eq!(send(&api, Method::DELETE, "/api/v1/portal/branding", Some(&root), None, None).await.0, 204);
        let (_, _, view) = send(&api, Method::GET, "/api/v1/portal", Some(&ada), None, None).await;
        assert_eq!(view["branding"], json!({"name": "Developer Portal"}), "{backend}: {view}");
        assert_eq!(view["welcome"]["title"], "Welcome");
        let (_, etag, _) = send(&api, Method::DELETE, "/api/v1/portal/branding", Some(&root), None, None).await;
        assert_eq!(etag.as_deref(), Some("\"5\""), "{backend}: resetting defaults records nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logos_are_checked_by_their_bytes_and_served_so_that_nothing_in_them_runs() {
    for db in TestDb::all("portal logos").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let get = |variant: &str, token: &str, if_none_match: Option<String>| {
            let mut request =
                api.http.get(format!("{}/api/v1/portal/logos/{variant}", api.base)).bearer_auth(token.to_string());
            if let Some(tag) = if_none_match {
                request = request.header("If-None-Match", tag);
            }
            request.send()
        };
        assert_eq!(get("light", &ada, None).await.unwrap().status(), 404, "{backend}: none uploaded");

        assert_eq!(upload(&api, Some(&root), "light", "image/png", PNG.to_vec()).await.0, 204);
        assert_eq!(upload(&api, Some(&root), "dark", "image/svg+xml; charset=utf-8", EVIL_SVG.into()).await.0, 204);
        let response = get("dark", &ada, None).await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "image/svg+xml");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("sandbox") && csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(headers["content-disposition"].to_str().unwrap().starts_with("inline"));
        let tag = headers["etag"].to_str().unwrap().to_string();
        assert_eq!(response.bytes().await.unwrap(), EVIL_SVG.as_bytes(), "{backend}: served as uploaded");
        let cached = get("dark", &ada, Some(tag.clone())).await.unwrap();
        assert_eq!(cached.status(), 304, "{backend}: If-None-Match");
        assert!(cached.bytes().await.unwrap().is_empty());

        // Dark falls back to light once the dark one is removed.
        let (status, version_before_second_delete, _) =
            send(&api, Method::DELETE, "/api/v1/portal/logos/dark", Some(&root), None, None).await;
        assert_eq!(status, 204);
        let response = get("dark", &ada, Some(tag)).await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.headers()["content-type"].to_str().unwrap()),
            (200, "image/png")
        );
        assert_eq!(response.bytes().await.unwrap(), PNG);
        let (status, etag, _) = send(&api, Method::DELETE, "/api/v1/portal/logos/dark", Some(&root), None, None).await;
        assert_eq!((status, etag), (204, version_before_second_delete), "{backend}: removed already: nothing recorded");

        // Wrong types, lying types and oversize images.
        let mut big = PNG.to_vec();
        big.resize(256 * 1024 + 1, 0);
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("image/svg+xml", PNG.to_vec(), 415),
            ("image/png", EVIL_SVG.into(), 415),
            ("image/gif", b"GIF89a".to_vec(), 415),
            ("text/html", b"<html><svg/></html>".to_vec(), 415),
            ("image/svg+xml", b"<html><svg/></html>".to_vec(), 415),
            ("application/octet-stream", PNG.to_vec(), 415),
            ("image/png", Vec::new(), 415),
            ("image/png", big, 413),
        ];
        for (content_type, bytes, status) in cases {
            let (got, problem) = upload(&api, Some(&root), "light", content_type, bytes).await;
            assert_eq!(got, status, "{backend}: {content_type}: {problem}");
            assert_eq!(problem["status"], status, "{backend}: a problem document");
        }
        let response = api
            .http
            .put(format!("{}/api/v1/portal/logos/light", api.base))
            .bearer_auth(&root)
            .body(PNG.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 415, "{backend}: no Content-Type");
        assert_eq!(upload(&api, Some(&root), "sepia", "image/png", PNG.to_vec()).await.0, 404);
        assert_eq!(get("light", &ada, None).await.unwrap().bytes().await.unwrap(), PNG, "{backend}: unchanged");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_callers_role() {
    for db in TestDb::all("portal authorization").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let audra = issue_token(&db, "audra@example.com", "auditor", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let limits =
            json!({"running_workspaces_per_user": 4, "launches_per_minute": 5, "api_requests_per_minute": 200});
        let routes: Vec<(Method, &str, Option<Value>, u16)> = vec![
            (Method::GET, "/api/v1/portal", None, 200),
            (Method::PUT, "/api/v1/portal/branding", Some(json!({"name": "Forge"})), 204),
            (Method::PUT, "/api/v1/portal/welcome", Some(json!({"title": "Hi"})), 204),
            (Method::PUT, "/api/v1/portal/limits", Some(limits), 204),
            (Method::DELETE, "/api/v1/portal/branding", None, 204),
        ];
        for (method, path, body, ok) in routes {
            let read_only = method == Method::GET;
            for (token, status) in [
                (None, 401),
                (Some(&ada), if read_only { 200 } else { 403 }),
                (Some(&bob), if read_only { 200 } else { 403 }),
                (Some(&audra), if read_only { 200 } else { 403 }),
                (Some(&root), ok),
            ] {
                let (got, _, answer) =
                    send(&api, method.clone(), path, token.map(String::as_str), body.clone(), None).await;
                assert_eq!(got, status, "{backend}: {method} {path} as {token:?}: {answer}");
            }
        }
        // Logos: upload, read, remove.
        for (token, status) in
            [(None, 401), (Some(&ada), 403), (Some(&bob), 403), (Some(&audra), 403), (Some(&root), 204)]
        {
            let (got, _) = upload(&api, token.map(String::as_str), "light", "image/png", PNG.to_vec()).await;
            assert_eq!(got, status, "{backend}: upload as {token:?}");
        }
        for (token, status) in
            [(None, 401), (Some(&ada), 200), (Some(&bob), 200), (Some(&audra), 200), (Some(&root), 200)]
        {
            let (got, ..) =
                send(&api, Method::GET, "/api/v1/portal/logos/light", token.map(String::as_str), None, None).await;
            assert_eq!(got, status, "{backend}: read as {token:?}");
        }
        for (token, status) in
            [(None, 401), (Some(&ada), 403), (Some(&bob), 403), (Some(&audra), 403), (Some(&root), 204)]
        {
            let (got, ..) =
                send(&api, Method::DELETE, "/api/v1/portal/logos/light", token.map(String::as_str), None, None).await;
            assert_eq!(got, status, "{backend}: remove as {token:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_limit_follows_the_portal_settings_unless_settings_pin_it() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    // Not pinned: the portal's limit (200 by default) is in force, then whatever an admin sets.
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "")]);
    let api = Api::new(&server);
    let limits = json!({"running_workspaces_per_user": 3, "launches_per_minute": 5, "api_requests_per_minute": 3});
    assert_eq!(send(&api, Method::PUT, "/api/v1/portal/limits", Some(&root), Some(limits), None).await.0, 204);
    for request in 0..3 {
        assert_eq!(send(&api, Method::GET, "/api/v1/me", Some(&ada), None, None).await.0, 200, "request {request}");
    }
    let (status, _, problem) = send(&api, Method::GET, "/api/v1/me", Some(&ada), None, None).await;
    assert_eq!((status, problem["code"].as_str()), (429, Some("rate_limited")), "{problem}");
    drop(server);

    // After a restart the stored limit applies from the first request.
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "")]);
    let api = Api::new(&server);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(&api, Method::GET, "/api/v1/me", Some(&ada), None, None).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    drop(server);

    // Pinned by the operator: the portal's value is shown but not applied.
    let server = Server::start(&db, &[("GATEHOUSE_RATE_LIMIT_API_PER_MINUTE", "0")]);
    let api = Api::new(&server);
    for _ in 0..10 {
        assert_eq!(send(&api, Method::GET, "/api/v1/me", Some(&ada), None, None).await.0, 200);
    }
    let (_, _, view) = send(&api, Method::GET, "/api/v1/portal", Some(&ada), None, None).await;
    assert_eq!(view["limits"]["api_requests_per_minute"], 3);
}
