//! The error contract (docs/API.md, "Errors"), held on every input, through a real `gatehouse serve` on both
//! backends: text holding NUL is refused before it reaches SQL (PostgreSQL cannot store it, SQLite can), JSON
//! bodies are objects, review bodies are JSON, control characters and oversized counts are refused, a wrong method
//! gets 405 with `Allow`, and the bearer scheme is read as RFC 9110 says.

#![allow(clippy::unwrap_used)]

mod common;

use common::{issue_token, Api, Server};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

fn submission(workspace: &str, subdomain: &str) -> Value {
    json!({"workspace_id": workspace, "subdomain": subdomain, "message": "First version"})
}

/// A raw request: any method, body and content type.
async fn raw(
    api: &Api,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = api.http.request(method, format!("{}{path}", api.base)).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Checks that an answer is a problem document with `status`, `code` and (when given) `field`.
#[track_caller]
fn assert_problem(
    answer: &(u16, reqwest::header::HeaderMap, Value),
    status: u16,
    code: &str,
    field: Option<&str>,
    what: &str,
) {
    let (got, headers, problem) = answer;
    assert_eq!(
        (*got, problem["code"].as_str(), problem["field"].as_str()),
        (status, Some(code), field),
        "{what}: {problem}"
    );
    assert_eq!(problem["status"], status, "{what}: {problem}");
    assert_eq!(headers["content-type"], "application/problem+json", "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_holding_nul_is_refused_naming_the_field_on_both_backends() {
    for db in TestDb::all("contract nul").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();

        // Query parameters, filters and cursors alike.
        for (path, field) in [
            ("/api/v1/members?after=%00", "after"),
            ("/api/v1/approvals?blueprint_key=a%00b", "blueprint_key"),
            ("/api/v1/approvals?after=%00", "after"),
            ("/api/v1/publish-requests?workspace_id=%00", "workspace_id"),
            ("/api/v1/publish-requests?blueprint_key=a%00", "blueprint_key"),
            ("/api/v1/trust-rules?after=a%00b", "after"),
            ("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=%00", "blueprint_key"),
            ("/api/v1/sessions?workspace=%00", "workspace"),
            ("/api/v1/sessions?user=%00", "user"),
            ("/api/v1/relay/activity?workspace=%00", "workspace"),
            ("/api/v1/relay/activity?kind=%00", "kind"),
            ("/api/v1/events?actor=%00", "actor"),
            ("/api/v1/events?aggregate_type=a%00", "aggregate_type"),
            ("/api/v1/aggregates/roster/org/state?at=%00", "at"),
            ("/api/v1/audit/export?since=%00", "since"),
            ("/api/v1/workspaces?q=a%00", "q"),
            ("/api/v1/workspaces?blueprint_key=a%00", "blueprint_key"),
            ("/api/v1/workspaces?owner=%00", "owner"),
        ] {
            let answer = raw(&api, Method::GET, path, Some(&root), None, "").await;
            assert_problem(&answer, 422, "invalid_field", Some(field), &format!("{backend} {path}"));
        }
        // Path segments.
        for (method, path, field) in [
            (Method::GET, "/api/v1/trust-rules/a%00b", "id"),
            (Method::DELETE, "/api/v1/trust-rules/a%00b", "id"),
            (Method::GET, "/api/v1/members/a%00b@example.com", "email"),
            (Method::DELETE, "/api/v1/members/a%00b@example.com", "email"),
            (Method::GET, "/api/v1/publish-requests/a%00b", "id"),
            (Method::POST, "/api/v1/publish-requests/a%00b/withdraw", "id"),
            (Method::GET, "/api/v1/aggregates/roster/a%00b/events", "aggregate_id"),
            (Method::GET, "/api/v1/aggregates/trust_rules/%00/state", "aggregate_id"),
            (Method::DELETE, "/api/v1/agent-tokens/a%00b", "id"),
            (Method::POST, "/api/v1/workspaces/a%00b/tickets", "id"),
            (Method::GET, "/api/v1/workspaces/a%00b", "id"),
            (Method::POST, "/api/v1/workspaces/a%00b/stop", "id"),
            (Method::DELETE, "/api/v1/workspaces/a%00b", "id"),
        ] {
            let answer = raw(&api, method.clone(), path, Some(&root), Some("application/json"), "{}").await;
            assert_problem(&answer, 422, "invalid_field", Some(field), &format!("{backend} {method} {path}"));
        }
        // JSON strings, at any depth.
        let mut nul_message = submission("ws-1", "my-app");
        nul_message["message"] = json!("ship\u{0}it");
        let mut nul_subdomain = submission("ws-1", "my-app");
        nul_subdomain["subdomain"] = json!("my\u{0}app");
        for (method, path, token, body, field) in [
            (Method::POST, "/api/v1/members", &root, json!({"email": "a\u{0}@example.com", "role": "member"}), "email"),
            (Method::PATCH, "/api/v1/members/ada@example.com", &root, json!({"role": "mem\u{0}ber"}), "role"),
            (Method::POST, "/api/v1/publish-requests", &ada, nul_message, "message"),
            (Method::POST, "/api/v1/publish-requests", &ada, nul_subdomain, "subdomain"),
            (
                Method::POST,
                "/api/v1/trust-rules",
                &root,
                json!({"email": "ada@example.com", "description": "x\u{0}"}),
                "description",
            ),
            (Method::POST, "/api/v1/agent-tokens", &root, json!({"workspace": "ws-1", "name": "a\u{0}b"}), "name"),
            (Method::POST, "/api/v1/workspaces/ws-1/tickets", &root, json!({"kind": "terminal\u{0}"}), "kind"),
            (Method::POST, "/api/v1/workspaces", &ada, json!({"blueprint_key": "web", "name": "a\u{0}b"}), "name"),
            (Method::PATCH, "/api/v1/workspaces/ws-1", &ada, json!({"name": "a\u{0}b"}), "name"),
            (
                Method::PUT,
                "/api/v1/firewall",
                &root,
                json!({"rules": [{"action": "deny", "cidr": "10.0.0.0/8", "description": "lab\u{0}"}], "default_action": "allow"}),
                "rules[0].description",
            ),
        ] {
            let answer = api.call(method.clone(), path, Some(token), Some(body)).await;
            assert_problem(&answer, 422, "invalid_field", Some(field), &format!("{backend} {method} {path}"));
        }
        // A review's reason, too.
        let workspaces = common::Workspaces::new(&api, &root).await;
        let workspace = workspaces.running(&ada, "contract", "web").await;
        api.edit(&workspace);
        let (status, _, created) =
            api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(submission(&workspace, "two"))).await;
        assert_eq!(status, 201, "{backend}: {created}");
        let id = created["id"].as_str().unwrap();
        for verb in ["approve", "reject"] {
            let path = format!("/api/v1/publish-requests/{id}/{verb}");
            let answer = api.call(Method::POST, &path, Some(&root), Some(json!({"reason": "no\u{0}"}))).await;
            assert_problem(&answer, 422, "invalid_field", Some("reason"), &format!("{backend} {verb}"));
        }

        // Nothing was stored, and the service still answers.
        let (status, page) = api.get("/api/v1/trust-rules", Some(&root)).await;
        assert_eq!((status, page["items"].as_array().map(Vec::len)), (200, Some(0)), "{backend}: {page}");
        let (status, firewall) = api.get("/api/v1/firewall", Some(&root)).await;
        assert_eq!((status, firewall["rules"].as_array().map(Vec::len)), (200, Some(0)), "{backend}: {firewall}");
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_are_objects_and_json_on_both_backends() {
    for db in TestDb::all("contract json bodies").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let workspaces = common::Workspaces::new(&api, &root).await;
        let workspace = workspaces.running(&ada, "contract", "web").await;
        api.edit(&workspace);
        let (status, _, created) =
            api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(submission(&workspace, "one"))).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let approve = format!("/api/v1/publish-requests/{id}/approve");
        let reject = format!("/api/v1/publish-requests/{id}/reject");

        // A positional array in place of an object is never taken for it, on any route, at any depth.
        for (method, path, token, body) in [
            (Method::POST, "/api/v1/members", &root, json!(["x@example.com", "member"])),
            (Method::PATCH, "/api/v1/members/ada@example.com", &root, json!(["auditor"])),
            (Method::POST, "/api/v1/publish-requests", &ada, json!(["ws-3", "three", "m"])),
            (Method::POST, approve.as_str(), &root, json!(["looks good"])),
            (Method::POST, reject.as_str(), &root, json!(["no"])),
            (Method::POST, "/api/v1/trust-rules", &root, json!(["ada@example.com", "web", "trusted"])),
            (Method::POST, "/api/v1/agent-tokens", &root, json!(["ws-1"])),
            (Method::POST, "/api/v1/workspaces/ws-1/tickets", &root, json!(["terminal"])),
            (Method::POST, "/api/v1/workspaces", &ada, json!(["web", "array"])),
            (Method::PATCH, &format!("/api/v1/workspaces/{workspace}"), &ada, json!(["renamed"])),
            (Method::PUT, "/api/v1/firewall", &root, json!([[], "allow"])),
            (
                Method::PUT,
                "/api/v1/firewall",
                &root,
                json!({"rules": [["deny", "10.0.0.0/8", ""]], "default_action": "deny"}),
            ),
        ] {
            let answer = api.call(method.clone(), path, Some(token), Some(body.clone())).await;
            let (status, _, problem) = &answer;
            assert_eq!(
                (*status, problem["code"].as_str()),
                (400, Some("invalid_request")),
                "{backend} {method} {path} {body}: {problem}"
            );
            assert_eq!(answer.1["content-type"], "application/problem+json");
        }
        // A repeated key is not quietly decided by its last value.
        let repeated = r#"{"email": "x@example.com", "email": "y@example.com", "role": "member"}"#;
        let answer = raw(&api, Method::POST, "/api/v1/members", Some(&root), Some("application/json"), repeated).await;
        assert_problem(&answer, 400, "invalid_request", None, &format!("{backend} repeated key"));
        let emails = api.member_emails(&root).await;
        assert!(
            emails.iter().all(|(email, _, _)| !email.ends_with("@example.com")
                || email == "root@example.com"
                || email == "ada@example.com"),
            "{backend}: {emails:?}"
        );

        // Reviews: JSON or nothing. Not text/plain (415), nor too large (a 413 problem document).
        let answer = raw(&api, Method::POST, &approve, Some(&root), Some("text/plain"), "{\"reason\": \"ok\"}").await;
        assert_problem(&answer, 415, "unsupported_media_type", None, &format!("{backend} text/plain approve"));
        let answer = raw(&api, Method::POST, &reject, Some(&root), Some("text/plain"), "because").await;
        assert_problem(&answer, 415, "unsupported_media_type", None, &format!("{backend} text/plain reject"));
        let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(70 * 1024));
        for path in [&approve, &reject] {
            let answer = raw(&api, Method::POST, path, Some(&root), Some("application/json"), big.clone()).await;
            assert_problem(&answer, 413, "payload_too_large", None, &format!("{backend} big review"));
        }
        // Other JSON routes: too large and not JSON are problems too.
        let huge = format!("{{\"email\": \"{}@example.com\", \"role\": \"member\"}}", "x".repeat(300 * 1024));
        let answer = raw(&api, Method::POST, "/api/v1/members", Some(&root), Some("application/json"), huge).await;
        assert_problem(&answer, 413, "payload_too_large", None, &format!("{backend} big invitation"));
        let answer = raw(
            &api,
            Method::POST,
            "/api/v1/members",
            Some(&root),
            Some("text/plain"),
            "{\"email\": \"x@example.com\", \"role\": \"member\"}",
        )
        .await;
        assert_problem(&answer, 415, "unsupported_media_type", None, &format!("{backend} text/plain invitation"));

        // The request is still pending: none of that was a review.
        let (status, request) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&root)).await;
        assert_eq!((status, request["status"].as_str()), (200, Some("pending")), "{backend}: {request}");
        // An empty review body is still no reason, and approves.
        let answer = raw(&api, Method::POST, &approve, Some(&root), None, "").await;
        assert_eq!(answer.0, 200, "{backend}: {}", answer.2);
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn control_characters_and_oversized_counts_are_refused_on_both_backends() {
    for db in TestDb::all("contract values").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();

        // Control characters other than newline and tab: CR as well as BEL, DEL and NEL.
        for text in ["line\rbreak", "windows\r\nline", "bell\u{7}!", "del\u{7f}!", "nel\u{85}!"] {
            let mut body = submission("ws-1", "one");
            body["message"] = json!(text);
            let answer = api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(body)).await;
            assert_problem(&answer, 422, "invalid_field", Some("message"), &format!("{backend} message {text:?}"));
        }
        let workspaces = common::Workspaces::new(&api, &root).await;
        let workspace = workspaces.running(&ada, "contract", "web").await;
        api.edit(&workspace);
        let mut body = submission(&workspace, "one");
        body["message"] = json!("two\nlines\twith a tab");
        let (status, _, created) = api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(body)).await;
        assert_eq!(status, 201, "{backend}: {created}");
        let id = created["id"].as_str().unwrap();
        for verb in ["approve", "reject"] {
            let path = format!("/api/v1/publish-requests/{id}/{verb}");
            let answer = api.call(Method::POST, &path, Some(&root), Some(json!({"reason": "fine\rby me"}))).await;
            assert_problem(&answer, 422, "invalid_field", Some("reason"), &format!("{backend} {verb} with CR"));
        }

        // Line counts are git's, counted by the server in the workspace: a client's, however large, is an unknown
        // field and refused as such, never clamped nor stored.
        let second = workspaces.running(&ada, "contract-2", "web").await;
        api.edit(&second);
        for (field, value) in [("insertions", json!(9_223_372_036_854_775_808_u64)), ("deletions", json!(u64::MAX))] {
            let mut body = submission(&second, "two");
            body["diff"] = json!({"files": 1});
            body["diff"][field] = value;
            let answer = api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(body)).await;
            assert_problem(&answer, 400, "invalid_request", None, &format!("{backend} {field}"));
        }
        let (status, _, created) =
            api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(submission(&second, "two"))).await;
        let diff = &created["diff"];
        assert_eq!(
            (status, diff["files"].as_i64(), diff["insertions"].as_i64(), diff["deletions"].as_i64()),
            (201, Some(1), Some(1), Some(0)),
            "{backend}: {created}"
        );
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_method_gets_405_with_allow_and_an_unknown_path_404() {
    for db in TestDb::all("contract methods").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        for (method, path, allow) in [
            (Method::PUT, "/api/v1/me", "GET"),
            (Method::DELETE, "/api/v1/members", "GET, POST"),
            (Method::POST, "/api/v1/members/ada@example.com", "GET, PATCH, DELETE"),
            (Method::GET, "/api/v1/publish-requests/x/approve", "POST"),
            (Method::POST, "/api/v1/firewall", "GET, PUT"),
            (Method::DELETE, "/healthz", "GET"),
            (Method::POST, "/api/v1/agent/connect", "GET"),
            // A route of its own takes only its methods, not those of `/api/v1/trust-rules/{id}`, which it matches.
            (Method::OPTIONS, "/api/v1/trust-rules/evaluate", "GET"),
        ] {
            let answer = raw(&api, method.clone(), path, Some(&root), None, "").await;
            assert_problem(&answer, 405, "method_not_allowed", None, &format!("{backend} {method} {path}"));
            assert_eq!(answer.1["allow"], allow, "{backend} {method} {path}");
        }
        let answer = raw(&api, Method::PUT, "/api/v1/nothing-here", Some(&root), None, "").await;
        assert_problem(&answer, 404, "not_found", None, &format!("{backend} unknown path"));
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_scheme_is_case_insensitive_on_both_backends() {
    for db in TestDb::all("contract bearer").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        let me = |authorization: String| {
            let api = api.clone();
            async move {
                let response = api
                    .http
                    .get(format!("{}/api/v1/me", api.base))
                    .header("authorization", authorization)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let challenge =
                    response.headers().get("www-authenticate").map(|value| value.to_str().unwrap().to_string());
                (status, challenge)
            }
        };
        // The scheme in any case, then one or more spaces or tabs.
        for authorization in [
            format!("Bearer {root}"),
            format!("bearer {root}"),
            format!("BEARER {root}"),
            format!("Bearer  {root}"),
            format!("Bearer\t{root}"),
        ] {
            assert_eq!(me(authorization.clone()).await.0, 200, "{backend}: {:?}", authorization.split(' ').next());
        }
        // Another scheme, or no token, is no token: 401 without error="invalid_token".
        for authorization in [format!("Basic {root}"), "Bearer".to_string(), format!("Bearer{root}")] {
            let (status, challenge) = me(authorization).await;
            assert_eq!((status, challenge.as_deref()), (401, Some("Bearer realm=\"gatehouse\"")), "{backend}");
        }
        // A bad token in any case of the scheme is an invalid token.
        let (status, challenge) = me("BEARER not-a-jwt".to_string()).await;
        assert_eq!(status, 401, "{backend}");
        assert!(challenge.unwrap().contains("invalid_token"), "{backend}");
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_the_security_headers_and_hsts_only_when_configured() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let invite = r#"{"email": "ada@example.com", "role": "member"}"#;
    for (method, path, token, body, status) in [
        (Method::GET, "/healthz", None, "", 200),
        (Method::GET, "/api/v1/openapi.json", None, "", 200),
        (Method::GET, "/api/v1/me", Some(root.as_str()), "", 200),
        (Method::POST, "/api/v1/members", Some(root.as_str()), invite, 201),
        (Method::POST, "/api/v1/members", Some(root.as_str()), "{not json", 400),
        (Method::GET, "/api/v1/me", None, "", 401),
        (Method::GET, "/api/v1/nothing-here", Some(root.as_str()), "", 404),
        (Method::PUT, "/api/v1/me", Some(root.as_str()), "", 405),
    ] {
        let content_type = (!body.is_empty()).then_some("application/json");
        let (got, headers, _) = raw(&api, method.clone(), path, token, content_type, body).await;
        let what = format!("{method} {path}");
        assert_eq!(got, status, "{what}");
        for (name, value) in [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ] {
            assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(value), "{what}: {name}");
        }
        assert!(headers.get("strict-transport-security").is_none(), "{what}: HSTS is off by default");
    }
    assert!(server.terminate().success());

    let server = Server::start(&db, &[("GATEHOUSE_HTTP_HSTS_MAX_AGE_SECS", "31536000")]);
    let api = Api::new(&server);
    for path in ["/healthz", "/api/v1/me"] {
        let (_, headers, _) = raw(&api, Method::GET, path, None, None, "").await;
        assert_eq!(
            headers.get("strict-transport-security").and_then(|v| v.to_str().ok()),
            Some("max-age=31536000; includeSubDomains"),
            "{path}"
        );
    }
    assert!(server.terminate().success());
}
