//! Blueprints (`/api/v1/blueprints`) and the catalog (`/api/v1/catalog`) through a real `gatehouse serve` process,
//! on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, issue_token, send, Api, Server};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

fn registration(key: &str) -> Value {
    json!({
        "key": key,
        "display_name": format!("The {key} blueprint"),
        "description": "For tests",
        "source": {"kind": "local", "repository": "https://git.example.com/web.git", "branch": "main",
                   "preview_ports": [3000]},
    })
}

async fn register(api: &Api, token: &str, key: &str) -> (u16, Option<String>, Value) {
    send(api, Method::POST, "/api/v1/blueprints", Some(token), Some(registration(key)), None).await
}

async fn set_state(api: &Api, token: &str, key: &str, state: &str) -> (u16, Value) {
    let path = format!("/api/v1/blueprints/{key}/state");
    let (status, _, body) = send(api, Method::PUT, &path, Some(token), Some(json!({ "state": state })), None).await;
    (status, body)
}

async fn replace_acl(api: &Api, token: &str, key: &str, rules: Value) -> u16 {
    let path = format!("/api/v1/blueprints/{key}/acl");
    send(api, Method::PUT, &path, Some(token), Some(json!({ "rules": rules })), None).await.0
}

/// (key, coming_soon, launchable) of the caller's catalog.
async fn catalog(api: &Api, token: &str) -> Vec<(String, bool, bool)> {
    let (status, body) = api.get("/api/v1/catalog", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["key"].as_str().unwrap().to_string(),
                item["coming_soon"].as_bool().unwrap(),
                item["launchable"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blueprint_goes_from_registration_to_removal() {
    for db in TestDb::all("blueprint lifecycle").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let audra = issue_token(&db, "audra@example.com", "auditor", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();

        let (status, etag, created) = register(&api, &root, "web").await;
        assert_eq!(status, 201, "{backend}: {created}");
        assert_eq!(etag.as_deref(), Some("\"1\""));
        assert_eq!(created["state"], "testing");
        assert_eq!(created["details"]["source"]["branch"], "main");

        // Read back at once, ETag and all, by an admin and an auditor.
        let (status, etag, read) = send(&api, Method::GET, "/api/v1/blueprints/web", Some(&root), None, None).await;
        assert_eq!(status, 200, "{backend}: {read}");
        assert_eq!(etag.as_deref(), Some("\"1\""));
        assert_eq!(read["display_name"], "The web blueprint");
        assert_eq!(read["acl"], json!([]));
        assert_eq!(read["workspace"]["tabs"][0]["kind"], "chat");
        assert_eq!(read["registered_by"], "root@example.com");
        assert_eq!(api.get("/api/v1/blueprints/web", Some(&audra)).await.0, 200);

        // Details, state, ACL and layout change; each answer carries the new version.
        let path = "/api/v1/blueprints/web";
        let patch = json!({ "display_name": "Web app", "description": "" });
        let (status, etag, body) = send(&api, Method::PATCH, path, Some(&root), Some(patch), Some("\"1\"")).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"2\"")), "{body}");
        assert_eq!(set_state(&api, &root, "web", "enabled").await.0, 204);
        let rule = json!({"type": "domain", "value": "Example.com"});
        let (status, _, body) =
            send(&api, Method::POST, "/api/v1/blueprints/web/acl", Some(&root), Some(rule), None).await;
        assert_eq!(status, 204, "{body}");
        let layout = json!({"tabs": [{"kind": "terminal"}, {"kind": "custom", "name": "Logs", "command": "tail -f log"}],
                            "lock_layout": true});
        let (status, etag, body) =
            send(&api, Method::PUT, "/api/v1/blueprints/web/workspace", Some(&root), Some(layout), None).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"5\"")), "{body}");
        let (status, etag, read) = send(&api, Method::GET, path, Some(&root), None, None).await;
        assert_eq!((status, etag.as_deref()), (200, Some("\"5\"")), "{read}");
        assert_eq!(read["display_name"], "Web app");
        assert!(read.get("description").is_none(), "{read}");
        assert_eq!(
            read["details"]["source"]["repository"], "https://git.example.com/web.git",
            "a patch keeps the rest"
        );
        assert_eq!(read["state"], "enabled");
        assert_eq!(read["acl"], json!([{"type": "domain", "value": "example.com"}]));
        assert_eq!(read["workspace"]["tabs"][1]["name"], "Logs");
        assert_eq!(read["workspace"]["lock_layout"], true);
        assert_eq!(read["ai_providers"], json!([]));

        // Removing one rule by the query, then by the body.
        let path = "/api/v1/blueprints/web/acl?type=domain&value=example.com";
        assert_eq!(send(&api, Method::DELETE, path, Some(&root), None, None).await.0, 204);
        let rule = json!({"type": "email", "value": "ada@example.com"});
        let acl = "/api/v1/blueprints/web/acl";
        assert_eq!(send(&api, Method::POST, acl, Some(&root), Some(rule.clone()), None).await.0, 204);
        assert_eq!(send(&api, Method::DELETE, acl, Some(&root), Some(rule), None).await.0, 204);

        // A second blueprint; the list pages in key order and leaves removed ones out unless asked.
        assert_eq!(register(&api, &root, "api").await.0, 201);
        assert!(
            eventually(Duration::from_secs(5), || async {
                let (_, page) = api.get("/api/v1/blueprints?limit=1", Some(&audra)).await;
                page["items"][0]["key"] == "api" && page["next"] == "api"
            })
            .await
        );
        let (status, page) = api.get("/api/v1/blueprints?limit=1&after=api", Some(&audra)).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["items"][0]["key"], "web");
        assert!(page.get("next").is_none(), "{page}");

        let (status, _, body) = send(&api, Method::DELETE, "/api/v1/blueprints/api", Some(&root), None, None).await;
        assert_eq!(status, 204, "{body}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                let (_, page) = api.get("/api/v1/blueprints", Some(&root)).await;
                page["items"].as_array().unwrap().len() == 1
            })
            .await
        );
        let (_, page) = api.get("/api/v1/blueprints?include_removed=true", Some(&root)).await;
        assert_eq!(page["items"][0]["key"], "api");
        assert_eq!(page["items"][0]["removed"], true);
        let (status, read) = api.get("/api/v1/blueprints/api", Some(&root)).await;
        assert_eq!((status, read["removed"].as_bool()), (200, Some(true)), "a removed blueprint can still be read");

        // With an Idempotency-Key a retried registration gets the first answer, not 409.
        for attempt in 0..2 {
            let response = api
                .http
                .post(format!("{}/api/v1/blueprints", api.base))
                .bearer_auth(&root)
                .header("Idempotency-Key", "register-docs")
                .json(&registration("docs"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 201, "{backend}: attempt {attempt}");
            assert_eq!(response.headers()["location"], "/api/v1/blueprints/docs");
            assert_eq!(response.headers().contains_key("idempotent-replayed"), attempt == 1);
        }

        // The audit replay knows the blueprint type.
        let (status, replayed) = api.get("/api/v1/aggregates/blueprint/web/state", Some(&audra)).await;
        assert_eq!(status, 200, "{replayed}");
        assert_eq!(replayed["version"], 8);
        assert_eq!(replayed["state"]["state"], "enabled");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_have_their_statuses() {
    for db in TestDb::all("blueprint refusals").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();

        // 422 naming the field.
        let mut upper = registration("Web");
        let (status, _, body) =
            send(&api, Method::POST, "/api/v1/blueprints", Some(&root), Some(upper.clone()), None).await;
        assert_eq!(
            (status, code(&body), body["field"].as_str()),
            (422, "invalid_field", Some("key")),
            "{backend}: {body}"
        );
        upper["key"] = json!("web");
        upper["source"]["branch"] = json!("..bad");
        let (status, _, body) = send(&api, Method::POST, "/api/v1/blueprints", Some(&root), Some(upper), None).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("source.branch")), "{body}");

        assert_eq!(register(&api, &root, "web").await.0, 201);
        let (status, _, body) = register(&api, &root, "web").await;
        assert_eq!((status, code(&body)), (409, "blueprint_exists"), "{body}");
        let (status, body) = set_state(&api, &root, "web", "weird").await;
        assert_eq!((status, body["field"].as_str()), (422, Some("state")), "{body}");
        let acl = "/api/v1/blueprints/web/acl";
        let rule = json!({"type": "domain", "value": "*.example.com"});
        let (status, _, body) = send(&api, Method::POST, acl, Some(&root), Some(rule), None).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("acl.value")), "{body}");
        let tabs = json!({"tabs": [{"kind": "chat"}, {"kind": "chat"}]});
        let (status, _, body) =
            send(&api, Method::PUT, "/api/v1/blueprints/web/workspace", Some(&root), Some(tabs), None).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("workspace.tabs")), "{body}");

        // 404: never registered; an unknown rule.
        let (status, body) = set_state(&api, &root, "nothing", "enabled").await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
        assert_eq!(api.get("/api/v1/blueprints/nothing", Some(&root)).await.0, 404);
        let (status, _, body) = send(&api, Method::DELETE, "/api/v1/blueprints/nothing", Some(&root), None, None).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
        let rule = json!({"type": "email", "value": "ada@example.com"});
        let (status, _, body) = send(&api, Method::DELETE, acl, Some(&root), Some(rule.clone()), None).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");

        // 409: the state it has; a rule it has.
        let (status, body) = set_state(&api, &root, "web", "testing").await;
        assert_eq!((status, code(&body)), (409, "state_unchanged"), "{body}");
        assert_eq!(send(&api, Method::POST, acl, Some(&root), Some(rule.clone()), None).await.0, 204);
        let (status, _, body) = send(&api, Method::POST, acl, Some(&root), Some(rule), None).await;
        assert_eq!((status, code(&body)), (409, "duplicate_acl_rule"), "{body}");

        // 412: a stale If-Match (the blueprint is at version 2); a malformed one is 422.
        let state = "/api/v1/blueprints/web/state";
        let enable = json!({"state": "enabled"});
        let (status, _, body) = send(&api, Method::PUT, state, Some(&root), Some(enable.clone()), Some("\"1\"")).await;
        assert_eq!((status, code(&body)), (412, "stale_version"), "{body}");
        let patch = json!({"display_name": "New"});
        let (status, _, body) =
            send(&api, Method::PATCH, "/api/v1/blueprints/web", Some(&root), Some(patch), Some("\"1\"")).await;
        assert_eq!((status, code(&body)), (412, "stale_version"), "{body}");
        let (status, _, body) = send(&api, Method::PUT, state, Some(&root), Some(enable.clone()), Some("two")).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("If-Match")), "{body}");
        let (status, etag, _) = send(&api, Method::PUT, state, Some(&root), Some(enable), Some("\"2\"")).await;
        assert_eq!((status, etag.as_deref()), (204, Some("\"3\"")));

        // Removal is final, and the key is retired.
        let (status, _, _) = send(&api, Method::DELETE, "/api/v1/blueprints/web", Some(&root), None, None).await;
        assert_eq!(status, 204);
        let (status, body) = set_state(&api, &root, "web", "disabled").await;
        assert_eq!((status, code(&body)), (409, "blueprint_removed"), "{body}");
        let (status, _, body) = send(&api, Method::DELETE, "/api/v1/blueprints/web", Some(&root), None, None).await;
        assert_eq!((status, code(&body)), (409, "blueprint_removed"), "{body}");
        let (status, _, body) = register(&api, &root, "web").await;
        assert_eq!((status, code(&body)), (409, "blueprint_key_retired"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_the_callers_role() {
    for db in TestDb::all("blueprint authorization").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let audra = issue_token(&db, "audra@example.com", "auditor", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();
        assert_eq!(register(&api, &root, "web").await.0, 201);

        let rule = json!({"type": "email", "value": "x@example.com"});
        let routes: Vec<(Method, &str, Option<Value>)> = vec![
            (Method::POST, "/api/v1/blueprints", Some(registration("other"))),
            (Method::GET, "/api/v1/blueprints", None),
            (Method::GET, "/api/v1/blueprints/web", None),
            (Method::PATCH, "/api/v1/blueprints/web", Some(json!({"display_name": "W"}))),
            (Method::PUT, "/api/v1/blueprints/web/state", Some(json!({"state": "enabled"}))),
            (Method::PUT, "/api/v1/blueprints/web/acl", Some(json!({"rules": [rule.clone()]}))),
            (Method::POST, "/api/v1/blueprints/web/acl", Some(json!({"type": "domain", "value": "example.com"}))),
            (Method::DELETE, "/api/v1/blueprints/web/acl", Some(rule.clone())),
            (Method::PUT, "/api/v1/blueprints/web/workspace", Some(json!({"tabs": [{"kind": "chat"}]}))),
            (Method::DELETE, "/api/v1/blueprints/web", None),
            (Method::GET, "/api/v1/catalog", None),
        ];
        for (method, path, body) in routes {
            let read_only = method == Method::GET;
            let catalog = path == "/api/v1/catalog";
            let expected = [
                (None, 401),
                (Some(&ada), if catalog { 200 } else { 403 }),
                (Some(&audra), if read_only { 200 } else { 403 }),
            ];
            for (token, status) in expected {
                let (got, _, answer) =
                    send(&api, method.clone(), path, token.map(String::as_str), body.clone(), None).await;
                assert_eq!(got, status, "{backend}: {method} {path} as {token:?}: {answer}");
            }
            // Admins last, so the removal comes after everything else.
            let (got, _, answer) = send(&api, method.clone(), path, Some(&root), body.clone(), None).await;
            let ok = match (method.as_str(), path) {
                ("POST", "/api/v1/blueprints") => 201,
                ("GET", _) => 200,
                _ => 204,
            };
            assert_eq!(got, ok, "{backend}: {method} {path} as admin: {answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_follows_state_acl_and_removal() {
    for db in TestDb::all("blueprint catalog").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@company.com", "member", "1h");
        let bob = issue_token(&db, "bob@elsewhere.net", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let backend = db.backend();

        for key in ["beta", "gone", "off", "open", "private"] {
            assert_eq!(register(&api, &root, key).await.0, 201, "{backend}");
        }
        for key in ["gone", "open", "private"] {
            assert_eq!(set_state(&api, &root, key, "enabled").await.0, 204);
        }
        assert_eq!(set_state(&api, &root, "off", "disabled").await.0, 204);
        assert_eq!(replace_acl(&api, &root, "private", json!([{"type": "domain", "value": "company.com"}])).await, 204);
        assert_eq!(replace_acl(&api, &root, "beta", json!([{"type": "email", "value": "ada@company.com"}])).await, 204);
        let (status, _, _) = send(&api, Method::DELETE, "/api/v1/blueprints/gone", Some(&root), None, None).await;
        assert_eq!(status, 204);

        let ada_sees =
            vec![("beta".into(), true, false), ("open".into(), false, true), ("private".into(), false, true)];
        assert!(
            eventually(Duration::from_secs(5), || async { catalog(&api, &ada).await == ada_sees }).await,
            "{backend}: {:?}",
            catalog(&api, &ada).await
        );
        // Outside both ACLs: only the open one.
        assert_eq!(catalog(&api, &bob).await, vec![("open".to_string(), false, true)]);
        // Admins pass every ACL and may launch testing blueprints; disabled and removed ones are never listed.
        let root_sees =
            vec![("beta".into(), true, true), ("open".into(), false, true), ("private".into(), false, true)];
        assert_eq!(catalog(&api, &root).await, root_sees);

        // An ACL change shows on the next request once the read model has it (no stale cached catalog).
        assert_eq!(replace_acl(&api, &root, "private", json!([])).await, 204);
        let bob_sees = vec![("open".to_string(), false, true), ("private".to_string(), false, true)];
        assert!(
            eventually(Duration::from_secs(5), || async { catalog(&api, &bob).await == bob_sees }).await,
            "{backend}: {:?}",
            catalog(&api, &bob).await
        );
        assert_eq!(set_state(&api, &root, "open", "disabled").await.0, 204);
        assert!(
            eventually(Duration::from_secs(5), || async {
                catalog(&api, &bob).await == vec![("private".to_string(), false, true)]
            })
            .await
        );
    }
}
