//! The publish workflow (`/api/v1/publish-requests`, `/api/v1/approvals`, `/api/v1/trust-rules`) through a real
//! `gatehouse serve` process, on both backends where it matters.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, issue_token, Api, Server, Workspaces};
use reqwest::Method;
use serde_json::{json, Value};
use testkit::TestDb;

fn submission(workspace: &str, subdomain: &str) -> Value {
    json!({
        "workspace_id": workspace,
        "subdomain": subdomain,
        "message": "First version of the dashboard",
    })
}

async fn submit(api: &Api, token: &str, workspace: &str, subdomain: &str) -> (u16, Value) {
    let body = submission(workspace, subdomain);
    let (status, _, body) = api.call(Method::POST, "/api/v1/publish-requests", Some(token), Some(body)).await;
    (status, body)
}

/// Changes a file in `workspace` (one of the server's, on this machine), then submits it: every submission needs a
/// change since the workspace's last approved publish.
async fn submit_edited(api: &Api, token: &str, workspace: &str, subdomain: &str) -> (u16, Value) {
    api.edit(workspace);
    submit(api, token, workspace, subdomain).await
}

/// Whether `id` is a commit id as git prints it: 40 lower-case hexadecimal digits.
fn is_commit_id(id: &Value) -> bool {
    id.as_str().is_some_and(|id| id.len() == 40 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The kinds of a request's history.
fn kinds(read: &Value) -> Vec<&str> {
    read["history"].as_array().unwrap().iter().map(|step| step["kind"].as_str().unwrap()).collect()
}

/// The steps the publisher may add after an approval (the push runs a moment later, asynchronously).
const DELIVERY_KINDS: [&str; 4] = ["pushed", "pull_request_opened", "failed", "retried"];

/// Submits `token`'s running workspace `name` (launched from `blueprint` on first use).
async fn submit_in(
    workspaces: &Workspaces,
    api: &Api,
    token: &str,
    name: &str,
    subdomain: &str,
    blueprint: &str,
) -> (u16, Value) {
    let workspace = workspaces.running(token, name, blueprint).await;
    submit_edited(api, token, &workspace, subdomain).await
}

async fn review(api: &Api, token: &str, id: &str, verb: &str, reason: Option<&str>) -> (u16, Value) {
    let body = reason.map(|reason| json!({ "reason": reason }));
    let path = format!("/api/v1/publish-requests/{id}/{verb}");
    let (status, _, body) = api.call(Method::POST, &path, Some(token), body).await;
    (status, body)
}

/// Ids of the approvals queue, following pagination.
async fn queue(api: &Api, token: &str, query: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/approvals?limit={limit}{query}&after={after}");
        let (status, page) = api.get(&path, Some(token)).await;
        assert_eq!(status, 200, "{page}");
        ids.extend(page["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = next.to_string(),
            None => return ids,
        }
    }
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_goes_from_submission_through_review_to_its_end() {
    for db in TestDb::all("publish lifecycle").await {
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let grace = issue_token(&db, "grace@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &root).await;
        let backend = db.backend();

        // Ada changes a file and asks to publish her workspace; the server commits the change there. The request is
        // pending and she can read it back at once, with the diff git computed.
        let adas = fx.running(&ada, "ws-ada", "web").await;
        let file = api.edit(&adas);
        let (status, created) = submit(&api, &ada, &adas, "my-app").await;
        assert_eq!(status, 201, "{backend}: {created}");
        assert_eq!(created["status"], "pending");
        assert_eq!(created["builder"], "ada@example.com");
        assert!(is_commit_id(&created["commit_id"]), "{backend}: {created}");
        let diff = &created["diff"];
        assert_eq!(
            (diff["files"].as_i64(), diff["insertions"].as_i64(), diff["deletions"].as_i64()),
            (Some(1), Some(1), Some(0)),
            "{backend}: one new file of one line: {created}"
        );
        assert!(is_commit_id(&diff["base_commit"]), "{backend}: {created}");
        assert_ne!(diff["base_commit"], created["commit_id"]);
        let id = created["id"].as_str().unwrap().to_string();
        let (status, headers, read) =
            api.call(Method::GET, &format!("/api/v1/publish-requests/{id}"), Some(&ada), None).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["commit_id"], created["commit_id"]);
        let n = file.trim_start_matches("change-").trim_end_matches(".txt");
        let patch = read["diff"]["patch"].as_str().unwrap_or_default();
        assert!(patch.contains(&file) && patch.contains(&format!("+change {n}")), "{backend}: {read}");
        assert_eq!(read["diff"]["patch_truncated"], false, "{read}");
        assert_eq!(read["blueprint_key"], "web", "the workspace's blueprint, from the control plane");
        assert_eq!(read["history"][0]["kind"], "submitted");
        assert!(headers.get("etag").is_some());
        // Another builder cannot see it, not even that it exists.
        assert_eq!(api.get(&format!("/api/v1/publish-requests/{id}"), Some(&bob)).await.0, 404);

        // It reaches the admins' queue.
        assert!(
            eventually(Duration::from_secs(5), || async { queue(&api, &root, "", 100).await == [id.clone()] }).await
        );

        // One request in flight per workspace; a subdomain belongs to one workspace.
        let (status, body) = submit(&api, &ada, &adas, "my-app").await;
        assert_eq!((status, code(&body)), (409, "request_in_flight"), "{body}");
        let (status, body) = submit_in(&fx, &api, &bob, "ws-bob", "my-app", "web").await;
        assert_eq!((status, code(&body)), (409, "subdomain_taken"), "{body}");
        // Only the owner publishes a workspace: another member does not even learn that it exists, an admin is told.
        let (status, body) = submit(&api, &bob, &adas, "bobs-app").await;
        assert_eq!((status, code(&body), body["field"].as_str()), (404, "not_found", Some("workspace_id")), "{body}");
        let (status, body) = submit(&api, &root, &adas, "roots-app").await;
        assert_eq!((status, code(&body)), (403, "not_workspace_owner"), "{body}");
        let (status, body) = submit(&api, &bob, "ws-nowhere", "bobs-app").await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
        // The client does not say which blueprint a workspace came from.
        let mut claimed = submission(&adas, "my-app");
        claimed["blueprint_key"] = json!("api");
        let (status, _, body) = api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(claimed)).await;
        assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");

        // Members cannot review; an admin approves.
        assert_eq!(review(&api, &bob, &id, "approve", None).await.0, 403);
        let (status, decided) = review(&api, &root, &id, "approve", Some("looks good")).await;
        assert_eq!((status, decided["status"].as_str()), (200, Some("approved")), "{decided}");
        let (status, body) = review(&api, &grace, &id, "reject", None).await;
        assert_eq!((status, code(&body)), (409, "request_not_pending"), "an approved request is final");
        assert!(eventually(Duration::from_secs(5), || async { queue(&api, &root, "", 100).await.is_empty() }).await);
        let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
        // The review's steps, then whatever the delivery (which runs a moment after the approval) has recorded.
        let steps = kinds(&read);
        assert_eq!(steps[..3], ["submitted", "approval", "approved"], "{read}");
        assert!(steps[3..].iter().all(|kind| DELIVERY_KINDS.contains(kind)), "{read}");
        assert_eq!(read["decided_by"], "root@example.com");
        assert_eq!(read["decision_reason"], "looks good");

        // Nothing changed since the approved commit (the server committed everything there was): there is nothing
        // to publish.
        let (status, body) = submit(&api, &ada, &adas, "my-app").await;
        assert_eq!((status, code(&body), body["field"].as_str()), (409, "no_changes", Some("workspace_id")), "{body}");

        // A new request from the published workspace, after another change; only its builder may withdraw it.
        let (status, second) = submit_in(&fx, &api, &ada, "ws-ada", "my-app", "web").await;
        assert_eq!(status, 201, "{second}");
        let second = second["id"].as_str().unwrap().to_string();
        assert_eq!(review(&api, &bob, &second, "withdraw", None).await.0, 403);
        assert_eq!(review(&api, &root, &second, "withdraw", None).await.0, 403);
        let (status, withdrawn) = review(&api, &ada, &second, "withdraw", None).await;
        assert_eq!((status, withdrawn["status"].as_str()), (200, Some("withdrawn")));
        // my-app is still Ada's (her app is live there), so Bob still cannot take it.
        assert_eq!(code(&submit_in(&fx, &api, &bob, "ws-bob", "my-app", "web").await.1), "subdomain_taken");

        // Bob's request is rejected with feedback, which he can read; the rejection frees his subdomain.
        let (status, bobs) = submit_in(&fx, &api, &bob, "ws-bob", "bobs-app", "api").await;
        assert_eq!(status, 201, "{bobs}");
        let bobs = bobs["id"].as_str().unwrap().to_string();
        let (status, decided) = review(&api, &grace, &bobs, "reject", Some("add a README")).await;
        assert_eq!((status, decided["status"].as_str()), (200, Some("rejected")));
        let rejected = eventually(Duration::from_secs(5), || async {
            let (_, read) = api.get(&format!("/api/v1/publish-requests/{bobs}"), Some(&bob)).await;
            read["status"] == "rejected" && read["decision_reason"] == "add a README"
        })
        .await;
        assert!(rejected, "{backend}");
        let (status, body) = submit_in(&fx, &api, &ada, "ws-ada-2", "bobs-app", "web").await;
        assert_eq!(status, 201, "a released subdomain can be claimed: {body}");

        // Nobody approves their own request: another admin must.
        let (_, own) = submit_in(&fx, &api, &root, "ws-root", "root-app", "web").await;
        let own = own["id"].as_str().unwrap().to_string();
        let (status, body) = review(&api, &root, &own, "approve", None).await;
        assert_eq!((status, code(&body)), (403, "self_approval"));
        assert_eq!(review(&api, &grace, &own, "approve", None).await.0, 200);

        // Builders list their own requests, newest first; admins see everything, filterable.
        let listed = eventually(Duration::from_secs(5), || async {
            let (_, mine) = api.get("/api/v1/publish-requests", Some(&bob)).await;
            mine["items"].as_array().unwrap().iter().map(|item| item["id"].clone()).collect::<Vec<_>>() == [json!(bobs)]
        })
        .await;
        assert!(listed);
        assert_eq!(api.get("/api/v1/publish-requests?builder=ada@example.com", Some(&bob)).await.0, 403);
        let (status, rejected) = api.get("/api/v1/publish-requests?status=rejected", Some(&root)).await;
        assert_eq!(status, 200);
        assert_eq!(rejected["items"].as_array().unwrap().len(), 1, "{rejected}");
        assert!(rejected["items"][0].get("history").is_none() && rejected["items"][0]["diff"].get("patch").is_none());
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trust_rules_approve_at_once_in_the_name_of_the_system_and_can_be_revoked() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;

    let rule = json!({"email": "Ada@Example.com", "blueprint_key": "web", "description": "owns the site"});
    let (status, _, created) = api.call(Method::POST, "/api/v1/trust-rules", Some(&root), Some(rule.clone())).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["email"], "ada@example.com");
    let rule_id = created["id"].as_str().unwrap().to_string();
    let (status, _, body) = api.call(Method::POST, "/api/v1/trust-rules", Some(&root), Some(rule)).await;
    assert_eq!((status, code(&body)), (409, "duplicate_trust_rule"));

    // The dry run answers what a submission would get.
    let (status, answer) =
        api.get("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=web", Some(&root)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["auto_approved"], true);
    assert_eq!(answer["rule"]["id"], rule_id.as_str());
    assert!(answer["reason"].as_str().unwrap().contains(&rule_id));
    let (_, answer) = api.get("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=api", Some(&ada)).await;
    assert_eq!(answer["auto_approved"], false, "members may ask about themselves");
    assert_eq!(
        api.get("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=web", Some(&bob)).await.0,
        403
    );
    assert_eq!(
        api.get("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=web", Some(&auditor)).await.0,
        200
    );

    // A trusted submission is approved on the spot, by the system reviewer, naming the rule.
    let (status, trusted) = submit_in(&fx, &api, &ada, "ws-ada", "ada-site", "web").await;
    assert_eq!(status, 201, "{trusted}");
    assert_eq!(trusted["status"], "approved");
    assert_eq!(trusted["decided_by"], "system");
    assert_eq!(trusted["trust_rule_id"], rule_id.as_str());
    let id = trusted["id"].as_str().unwrap();
    let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
    assert_eq!(read["history"][1]["kind"], "auto_approved", "{read}");
    assert_eq!(read["history"][1]["actor"], "system");
    assert!(read["history"][1]["reason"].as_str().unwrap().contains(&rule_id));
    // Trust for one blueprint is not trust for another.
    let (_, other) = submit_in(&fx, &api, &ada, "ws-ada-api", "ada-api", "api").await;
    assert_eq!(other["status"], "pending");

    // The rule is listed, then revoked; the next submission waits for review again.
    let listed = eventually(Duration::from_secs(5), || async {
        let (_, page) = api.get("/api/v1/trust-rules", Some(&auditor)).await;
        page["items"].as_array().is_some_and(|items| items.len() == 1 && items[0]["id"] == rule_id.as_str())
    })
    .await;
    assert!(listed);
    let path = format!("/api/v1/trust-rules/{rule_id}");
    assert_eq!(api.call(Method::DELETE, &path, Some(&ada), None).await.0, 403);
    assert_eq!(api.call(Method::DELETE, &path, Some(&root), None).await.0, 204);
    assert_eq!(api.call(Method::DELETE, &path, Some(&root), None).await.0, 404);
    let (_, answer) =
        api.get("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=web", Some(&root)).await;
    assert_eq!(answer["auto_approved"], false);
    let (_, later) = submit_in(&fx, &api, &ada, "ws-ada-2", "ada-site-2", "web").await;
    assert_eq!(later["status"], "pending", "{later}");
    // Trust for every blueprint.
    let everything = json!({"email": "bob@example.com", "blueprint_key": null});
    assert_eq!(api.call(Method::POST, "/api/v1/trust-rules", Some(&root), Some(everything)).await.0, 201);
    let (_, bobs) = submit_in(&fx, &api, &bob, "ws-bob", "bob-site", "api").await;
    assert_eq!(bobs["status"], "approved", "{bobs}");
    // A workspace that is not running cannot be published.
    let stopped = fx.running(&ada, "ws-ada-3", "web").await;
    let (status, _, body) =
        api.call(Method::POST, &format!("/api/v1/workspaces/{stopped}/stop"), Some(&ada), None).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = submit(&api, &ada, &stopped, "ada-stopped").await;
    assert_eq!((status, code(&body)), (409, "workspace_not_running"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_problem_naming_the_field_and_stores_nothing() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;

    let cases: Vec<(&str, Value, &str)> = vec![
        ("workspace_id", json!(""), "workspace_id"),
        ("workspace_id", json!("a/b"), "workspace_id"),
        ("subdomain", json!("My-App"), "subdomain"),
        ("subdomain", json!("-app"), "subdomain"),
        ("subdomain", json!("www"), "subdomain"),
        ("subdomain", json!("x".repeat(64)), "subdomain"),
        ("message", json!("   "), "message"),
        ("message", json!("x".repeat(4001)), "message"),
    ];
    for (field, value, named) in cases {
        let mut body = submission("ws-1", "my-app");
        body[field] = value;
        let (status, _, problem) = api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(body)).await;
        assert_eq!((status, problem["field"].as_str()), (422, Some(named)), "{field}: {problem}");
        assert_eq!(problem["code"], "invalid_field");
    }
    // Malformed JSON, a missing field, an unknown field, a wrong type: 400 problems. The commit and its diff are
    // the server's to make, in the workspace: a client naming either sends an unknown field.
    let with = |field: &str, value: Value| {
        let mut body = submission("ws-1", "my-app");
        body[field] = value;
        body
    };
    for body in [
        json!({"workspace_id": "ws-1"}),
        json!({"extra": 1, "workspace_id": "ws-1", "subdomain": "a", "message": "m"}),
        with("message", json!(["one", "two"])),
        with("commit_id", json!("0123456789abcdef0123456789abcdef01234567")),
        with("diff", json!({"files": 1, "insertions": 1, "deletions": 0})),
        with("diff", json!({"files": 1, "insertions": 1, "deletions": 0, "patch": "+a\n"})),
    ] {
        let (status, headers, problem) =
            api.call(Method::POST, "/api/v1/publish-requests", Some(&ada), Some(body.clone())).await;
        assert_eq!((status, code(&problem)), (400, "invalid_request"), "{body}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
    }
    let raw = api
        .http
        .post(format!("{}/api/v1/publish-requests", api.base))
        .bearer_auth(&ada)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    // Queries and paths: an invalid value is 422 naming the parameter, an unknown parameter 400.
    for (path, expected, field) in [
        ("/api/v1/approvals?limit=0", 422, Some("limit")),
        ("/api/v1/approvals?after=not-a-cursor", 422, Some("after")),
        ("/api/v1/publish-requests?status=lost", 422, Some("status")),
        ("/api/v1/publish-requests?builder=nobody", 422, Some("builder")),
        ("/api/v1/publish-requests?limit=many", 422, Some("limit")),
        ("/api/v1/trust-rules?limit=501", 422, Some("limit")),
        ("/api/v1/publish-requests?unknown=1", 400, None),
        ("/api/v1/trust-rules/evaluate?email=x&blueprint_key=web", 422, Some("email")),
        ("/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=a/b", 422, Some("blueprint_key")),
    ] {
        let (status, problem) = api.get(path, Some(&root)).await;
        assert_eq!((status, problem["field"].as_str()), (expected, field), "{path}: {problem}");
    }
    assert_eq!(api.get("/api/v1/publish-requests/00000000-0000-0000-0000-000000000000", Some(&root)).await.0, 404);
    assert_eq!(api.get("/api/v1/publish-requests/..%2F..", Some(&root)).await.0, 404);
    let (status, body) = review(&api, &root, "00000000-0000-0000-0000-000000000000", "approve", None).await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert_eq!(api.get("/api/v1/trust-rules/nope", Some(&root)).await.0, 404);
    let (status, _, problem) =
        api.call(Method::POST, "/api/v1/trust-rules", Some(&root), Some(json!({"email": "not an email"}))).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("email")));

    // A review body that is not JSON is refused rather than ignored.
    let (_, created) = submit_in(&fx, &api, &ada, "ws-ok", "ok-app", "web").await;
    let id = created["id"].as_str().unwrap();
    let raw = api
        .http
        .post(format!("{}/api/v1/publish-requests/{id}/reject", api.base))
        .bearer_auth(&root)
        .header("content-type", "application/json")
        .body("{\"reason\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let (status, _, problem) = api
        .call(Method::POST, &format!("/api/v1/publish-requests/{id}/approve"), Some(&root), Some(json!({"why": 1})))
        .await;
    assert_eq!(status, 400, "{problem}");

    // Nothing but the one valid request was stored.
    let settled = eventually(Duration::from_secs(5), || async {
        let (_, page) = api.get("/api/v1/publish-requests", Some(&root)).await;
        page["items"].as_array().is_some_and(|items| items.len() == 1 && items[0]["status"] == "pending")
    })
    .await;
    assert!(settled);
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_with_a_stale_etag_gets_412() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let grace = issue_token(&db, "grace@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[("GATEHOUSE_PUBLISH_APPROVALS_REQUIRED", "2")]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;
    let (_, created) = submit_in(&fx, &api, &ada, "ws-ada", "my-app", "web").await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/publish-requests/{id}");
    let (_, headers, _) = api.call(Method::GET, &path, Some(&root), None).await;
    let etag = headers["etag"].to_str().unwrap().to_string();

    // Grace approves first; Root's approval based on the older version is refused.
    let (status, decided) = review(&api, &grace, &id, "approve", None).await;
    assert_eq!((status, decided["status"].as_str(), decided["approvals"].as_u64()), (200, Some("pending"), Some(1)));
    let stale = api
        .http
        .post(format!("{}{path}/approve", api.base))
        .bearer_auth(&root)
        .header("If-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let problem: Value = stale.json().await.unwrap();
    assert_eq!(problem["code"], "stale_version");
    let garbage = api
        .http
        .post(format!("{}{path}/approve", api.base))
        .bearer_auth(&root)
        .header("If-Match", "W/\"abc\"")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 422);

    let current = format!("\"{}\"", decided["version"]);
    let fresh = api
        .http
        .post(format!("{}{path}/approve", api.base))
        .bearer_auth(&root)
        .header("If-Match", current)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    let decided: Value = fresh.json().await.unwrap();
    assert_eq!(decided["status"], "approved", "two approvals were required and given");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_review_policy_is_configurable() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let grace = issue_token(&db, "grace@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(
        &db,
        &[("GATEHOUSE_PUBLISH_APPROVALS_REQUIRED", "2"), ("GATEHOUSE_PUBLISH_REQUIRE_REASON", "true")],
    );
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;
    let (_, created) = submit_in(&fx, &api, &ada, "ws-ada", "my-app", "web").await;
    assert_eq!(created["approvals_required"], 2);
    let id = created["id"].as_str().unwrap().to_string();
    let (status, problem) = review(&api, &root, &id, "approve", None).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("reason")), "{problem}");
    let (status, problem) = review(&api, &root, &id, "reject", Some("   ")).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("reason")), "blank is no reason: {problem}");
    let (status, first) = review(&api, &root, &id, "approve", Some("code reviewed")).await;
    assert_eq!((status, first["status"].as_str()), (200, Some("pending")));
    let (status, again) = review(&api, &root, &id, "approve", Some("again")).await;
    assert_eq!((status, code(&again)), (409, "already_reviewed"));
    let (status, second) = review(&api, &grace, &id, "approve", Some("security reviewed")).await;
    assert_eq!((status, second["status"].as_str()), (200, Some("approved")));
    let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
    let reasons: Vec<&str> =
        read["history"].as_array().unwrap().iter().filter_map(|step| step["reason"].as_str()).collect();
    assert_eq!(reasons, ["code reviewed", "security reviewed"], "{read}");

    // Nonsense policy is refused at start-up with one clear line.
    let output = common::gatehouse()
        .arg("serve")
        .env("GATEHOUSE_DATABASE_URL", &db.url)
        .env("GATEHOUSE_DATA_DIR", &db.data_dir)
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_PUBLISH_APPROVALS_REQUIRED", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("publish_approvals_required"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_requests_expire_and_free_their_subdomain() {
    let db = TestDb::sqlite();
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let bob = issue_token(&db, "bob@example.com", "member", "1h");
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(
        &db,
        &[("GATEHOUSE_PUBLISH_REQUEST_TTL_SECS", "1"), ("GATEHOUSE_PUBLISH_EXPIRY_SWEEP_SECS", "1")],
    );
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;
    let (_, created) = submit_in(&fx, &api, &ada, "ws-ada", "my-app", "web").await;
    let id = created["id"].as_str().unwrap().to_string();
    let expired = eventually(Duration::from_secs(10), || async {
        api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await.1["status"] == "expired"
    })
    .await;
    assert!(expired);
    let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
    assert_eq!(read["history"].as_array().unwrap().last().unwrap()["kind"], "expired");
    let (status, body) = review(&api, &root, &id, "approve", None).await;
    assert_eq!((status, code(&body)), (409, "request_not_pending"));
    let (status, body) = submit_in(&fx, &api, &bob, "ws-bob", "my-app", "web").await;
    assert_eq!(status, 201, "an expired request's subdomain is free again: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_is_oldest_first_filterable_and_paginated() {
    let db = TestDb::sqlite();
    let root = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &root).await;
    let mut web = Vec::new();
    let mut all = Vec::new();
    for n in 0..7 {
        let blueprint = if n % 2 == 0 { "web" } else { "api" };
        let (status, created) = submit_in(&fx, &api, &ada, &format!("ws-{n}"), &format!("app-{n}"), blueprint).await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        if blueprint == "web" {
            web.push(id.clone());
        }
        all.push(id);
    }
    assert!(eventually(Duration::from_secs(5), || async { queue(&api, &root, "", 100).await.len() == 7 }).await);
    assert_eq!(queue(&api, &root, "", 2).await, all, "pages of two, oldest first");
    assert_eq!(queue(&api, &root, "&blueprint_key=web", 3).await, web);
    // Ada's own list: newest first, paginated.
    let (_, first) = api.get("/api/v1/publish-requests?limit=4", Some(&ada)).await;
    let next = first["next"].as_str().unwrap();
    let (_, second) = api.get(&format!("/api/v1/publish-requests?limit=4&after={next}"), Some(&ada)).await;
    let ids: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|item| item["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, all.iter().rev().cloned().collect::<Vec<_>>());
    assert!(second.get("next").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_approvals_produce_exactly_one() {
    for db in TestDb::all("fifty approvals").await {
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let admins: Vec<String> =
            (0..5).map(|n| issue_token(&db, &format!("admin{n}@example.com"), "admin", "1h")).collect();
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &admins[0]).await;
        let (_, created) = submit_in(&fx, &api, &ada, "ws-ada", "my-app", "web").await;
        let id = created["id"].as_str().unwrap().to_string();
        let attempts = (0..50).map(|n| {
            let api = api.clone();
            let token = admins[n % admins.len()].clone();
            let id = id.clone();
            tokio::spawn(async move { review(&api, &token, &id, "approve", None).await })
        });
        let outcomes: Vec<(u16, Value)> =
            futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
        let approved = outcomes.iter().filter(|(status, _)| *status == 200).count();
        let refused = outcomes.iter().filter(|(status, _)| *status == 409).count();
        assert_eq!((approved, refused), (1, 49), "{}: {outcomes:?}", db.backend());
        let settled = eventually(Duration::from_secs(5), || async {
            let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
            read["status"] == "approved"
        })
        .await;
        assert!(settled);
        let (_, read) = api.get(&format!("/api/v1/publish-requests/{id}"), Some(&ada)).await;
        let approvals = read["history"].as_array().unwrap().iter().filter(|step| step["kind"] == "approval").count();
        assert_eq!((approvals, read["approvals"].as_i64()), (1, Some(1)), "{read}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_racing_for_one_subdomain_have_exactly_one_winner() {
    for db in TestDb::all("subdomain race").await {
        let builders: Vec<String> =
            (0..8).map(|n| issue_token(&db, &format!("builder{n}@example.com"), "member", "1h")).collect();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &root).await;
        let launches = builders.iter().map(|token| fx.running(token, "racer", "web"));
        let workspaces: Vec<String> = futures::future::join_all(launches).await;
        let mut winner: Option<String> = None;
        for round in 0..3 {
            // The last round's winner withdraws, so that every builder's workspace can submit again.
            if let Some(id) = winner.take() {
                let withdrawn = withdraw_as_builder(&api, &builders, &id).await;
                assert_eq!(withdrawn, 200);
            }
            let subdomain = format!("contested-{round}");
            let attempts = builders.iter().zip(&workspaces).map(|(token, workspace)| {
                let (api, token, workspace, subdomain) =
                    (api.clone(), token.clone(), workspace.clone(), subdomain.clone());
                tokio::spawn(async move { submit_edited(&api, &token, &workspace, &subdomain).await })
            });
            let outcomes: Vec<(u16, Value)> =
                futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
            let won: Vec<&Value> = outcomes.iter().filter(|(status, _)| *status == 201).map(|(_, body)| body).collect();
            let lost =
                outcomes.iter().filter(|(status, body)| *status == 409 && code(body) == "subdomain_taken").count();
            assert_eq!((won.len(), lost), (1, builders.len() - 1), "{} round {round}: {outcomes:?}", db.backend());
            winner = Some(won[0]["id"].as_str().unwrap().to_string());
        }
        let queued = eventually(Duration::from_secs(5), || async {
            queue(&api, &root, "", 100).await == [winner.clone().unwrap()]
        })
        .await;
        assert!(queued, "exactly the last winner is queued (the others withdrew)");
    }
}

/// Withdraws request `id` as whichever of `builders` submitted it; the status.
async fn withdraw_as_builder(api: &Api, builders: &[String], id: &str) -> u16 {
    for token in builders {
        let (status, _) = review(api, token, id, "withdraw", None).await;
        if status != 403 {
            return status;
        }
    }
    403
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_submission_with_an_idempotency_key_creates_one_request() {
    for db in TestDb::all("idempotent submit").await {
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &root).await;
        let workspace = fx.running(&ada, "ws-ada", "web").await;
        let send = |key: &'static str, body: Value| {
            let api = api.clone();
            let ada = ada.clone();
            async move {
                let response = api
                    .http
                    .post(format!("{}/api/v1/publish-requests", api.base))
                    .bearer_auth(&ada)
                    .header("Idempotency-Key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let replayed = response.headers().get("idempotent-replayed").is_some();
                (status, replayed, response.json::<Value>().await.unwrap())
            }
        };
        api.edit(&workspace);
        let attempts = (0..10).map(|_| tokio::spawn(send("submit-1", submission(&workspace, "my-app"))));
        let outcomes: Vec<(u16, bool, Value)> =
            futures::future::join_all(attempts).await.into_iter().map(Result::unwrap).collect();
        let ids: std::collections::BTreeSet<String> = outcomes
            .iter()
            .filter(|(status, _, _)| *status == 201)
            .map(|(_, _, body)| body["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 1, "{}: {outcomes:?}", db.backend());
        assert!(outcomes.iter().all(|(status, _, body)| *status == 201 || code(body) == "request_in_progress"));
        let (status, replayed, again) = send("submit-1", submission(&workspace, "my-app")).await;
        assert_eq!((status, replayed), (201, true));
        assert_eq!(again["id"].as_str().unwrap(), ids.iter().next().unwrap());
        let (status, _, problem) = send("submit-1", submission(&workspace, "other-app")).await;
        assert_eq!((status, code(&problem)), (422, "idempotency_key_reused"));
        let one = eventually(Duration::from_secs(5), || async {
            api.get("/api/v1/publish-requests", Some(&ada)).await.1["items"].as_array().map(Vec::len) == Some(1)
        })
        .await;
        assert!(one);

        // A retried approval with its key gets the first answer, not a 409 for the approval it made itself.
        let id = ids.iter().next().unwrap().clone();
        let approve = || {
            api.http
                .post(format!("{}/api/v1/publish-requests/{id}/approve", api.base))
                .bearer_auth(&root)
                .header("Idempotency-Key", "approve-1")
                .send()
        };
        let first = approve().await.unwrap();
        assert_eq!(first.status(), 200);
        assert!(first.headers().get("etag").is_some());
        let again = approve().await.unwrap();
        assert_eq!(again.status(), 200, "{}", db.backend());
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let body: Value = again.json().await.unwrap();
        assert_eq!(body["status"], "approved");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let member = issue_token(&db, "ada@example.com", "member", "1h");
    let other = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &admin).await;
    // Fixtures: Ada's pending requests (one per review verb) and a trust rule.
    let mut ids = Vec::new();
    for n in 0..4 {
        let (status, created) = submit_in(&fx, &api, &member, &format!("ws-{n}"), &format!("fixture-{n}"), "web").await;
        assert_eq!(status, 201);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let (_, _, rule) =
        api.call(Method::POST, "/api/v1/trust-rules", Some(&admin), Some(json!({"email": "carol@example.com"}))).await;
    let rule = rule["id"].as_str().unwrap().to_string();
    assert!(eventually(Duration::from_secs(5), || async { queue(&api, &admin, "", 100).await.len() == 4 }).await);

    let callers: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("member", Some(&member)),
        ("another member", Some(&other)),
        ("admin", Some(&admin)),
        ("auditor", Some(&auditor)),
    ];
    let request = |n: usize| format!("/api/v1/publish-requests/{}", ids[n]);
    // Each row: (method, path, body, expected for anonymous, member (the builder), another member, admin, auditor).
    // Rows that change state are built so that only one caller's attempt can succeed.
    // Each caller who may submit does so for a running workspace of their own.
    let mut own = Vec::new();
    for (_, token) in &callers {
        own.push(match token {
            Some(token) if *token != auditor.as_str() => fx.running(token, "matrix", "web").await,
            _ => "ws-none".to_string(),
        });
    }
    // Each of those workspaces has a change to publish.
    for (workspace, (_, token)) in own.iter().zip(&callers) {
        if token.is_some_and(|token| token != auditor.as_str()) {
            api.edit(workspace);
        }
    }
    let submit_body = |n: usize| Some(submission(&own[n], &format!("matrix-{n}")));
    let matrix: Vec<(Method, String, Option<Value>, [u16; 5])> = vec![
        (Method::POST, "/api/v1/publish-requests".into(), submit_body(0), [401, 201, 201, 201, 403]),
        (Method::GET, "/api/v1/publish-requests".into(), None, [401, 200, 200, 200, 200]),
        (Method::GET, "/api/v1/approvals".into(), None, [401, 403, 403, 200, 200]),
        (Method::GET, request(0), None, [401, 200, 404, 200, 200]),
        (Method::POST, format!("{}/reject", request(1)), None, [401, 403, 403, 200, 403]),
        (Method::POST, format!("{}/approve", request(2)), None, [401, 403, 403, 200, 403]),
        (Method::POST, format!("{}/withdraw", request(3)), None, [401, 200, 403, 403, 403]),
        (Method::GET, "/api/v1/trust-rules".into(), None, [401, 403, 403, 200, 200]),
        (Method::GET, format!("/api/v1/trust-rules/{rule}"), None, [401, 403, 403, 200, 200]),
        (
            Method::GET,
            "/api/v1/trust-rules/evaluate?email=ada@example.com&blueprint_key=web".into(),
            None,
            [401, 200, 403, 200, 200],
        ),
        (
            Method::POST,
            "/api/v1/trust-rules".into(),
            Some(json!({"email": "dave@example.com", "blueprint_key": "web"})),
            [401, 403, 403, 201, 403],
        ),
        (Method::DELETE, format!("/api/v1/trust-rules/{rule}"), None, [401, 403, 403, 204, 403]),
    ];
    for (method, path, body, expected) in matrix {
        for (n, ((name, token), expected)) in callers.iter().zip(expected).enumerate() {
            // Submissions need a distinct workspace and subdomain per caller.
            let body = match (&body, method == Method::POST && path == "/api/v1/publish-requests") {
                (Some(_), true) => submit_body(n),
                (body, _) => body.clone(),
            };
            let (status, _, response) = api.call(method.clone(), &path, *token, body).await;
            assert_eq!(status, expected, "{method} {path} as {name}: {response}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_builders_never_see_a_conflict_for_unrelated_submissions() {
    for db in TestDb::all("concurrent submitters").await {
        let builders: Vec<String> =
            (0..4).map(|n| issue_token(&db, &format!("busy{n}@example.com"), "member", "1h")).collect();
        let root = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &root).await;
        let mut workspaces = Vec::new();
        for token in &builders {
            let names: Vec<String> = (0..3).map(|n| format!("busy-{n}")).collect();
            let launches = names.iter().map(|name| fx.running(token, name, "web"));
            workspaces.push(futures::future::join_all(launches).await);
        }
        // Four builders submit at once, fifteen requests each (five rounds over their three workspaces, each round
        // withdrawn before the next): every submission is decided on the one publishing aggregate.
        let runs = builders.iter().zip(workspaces).enumerate().map(|(n, (token, workspaces))| {
            let (api, token) = (api.clone(), token.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for round in 0..5 {
                    let mut submitted = Vec::new();
                    for (w, workspace) in workspaces.iter().enumerate() {
                        let subdomain = format!("app-{n}-{round}-{w}");
                        let (status, body) = submit_edited(&api, &token, workspace, &subdomain).await;
                        statuses.push((status, code(&body).to_string()));
                        submitted.extend(body["id"].as_str().map(str::to_string));
                    }
                    for id in submitted {
                        assert_eq!(review(&api, &token, &id, "withdraw", None).await.0, 200);
                    }
                }
                statuses
            })
        });
        let outcomes: Vec<(u16, String)> =
            futures::future::join_all(runs).await.into_iter().flat_map(Result::unwrap).collect();
        assert_eq!(outcomes.len(), 60);
        assert!(outcomes.iter().all(|(status, _)| *status == 201), "{}: {outcomes:?}", db.backend());
    }
}

/// Roles and queue pages are served from memory (`api::cache`); a second process sharing the database must still see
/// what the first one changed: through PostgreSQL `NOTIFY` (its projector poll is set to a minute here, so nothing
/// else could tell it in time) and, on SQLite, through its poll of the read models' revisions.
#[tokio::test(flavor = "multi_thread")]
async fn another_process_sees_role_changes_and_new_requests_despite_its_caches() {
    for db in TestDb::all("cache invalidation").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let bob = issue_token(&db, "bob@example.com", "member", "1h");
        let poll = if db.backend() == "postgres" { "60000" } else { "100" };
        let first = Server::start(&db, &[]);
        let second = Server::start(&db, &[("GATEHOUSE_PROJECTOR_POLL_INTERVAL_MS", poll)]);
        let (one, two) = (Api::new(&first), Api::new(&second));
        let fx = Workspaces::new(&one, &admin).await;

        // Fill the second process's caches: Ada's role, and the (empty) queue page.
        for _ in 0..3 {
            assert_eq!(two.get("/api/v1/me", Some(&ada)).await.1["role"], "member");
            assert_eq!(queue(&two, &admin, "", 50).await.len(), 0);
        }

        let (status, body) = submit_in(&fx, &one, &bob, "ws-cache", "cache-demo", "web").await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let listed =
            eventually(Duration::from_secs(5), || async { queue(&two, &admin, "", 50).await == [id.clone()] }).await;
        assert!(listed, "{}: the second process kept serving a stale queue page", db.backend());

        let body = json!({"role": "auditor"});
        let (status, _, _) = one.call(Method::PATCH, "/api/v1/members/ada@example.com", Some(&admin), Some(body)).await;
        assert_eq!(status, 204);
        let changed = eventually(Duration::from_secs(5), || async {
            two.get("/api/v1/me", Some(&ada)).await.1["role"] == "auditor"
        })
        .await;
        assert!(changed, "{}: the second process kept a stale role", db.backend());

        // Removal takes effect too (no member row: the cache holds nothing to serve).
        let (status, _, _) = one.call(Method::DELETE, "/api/v1/members/ada@example.com", Some(&admin), None).await;
        assert_eq!(status, 204);
        let removed =
            eventually(Duration::from_secs(5), || async { two.get("/api/v1/me", Some(&ada)).await.0 == 403 }).await;
        assert!(removed, "{}: a removed member kept access on the second process", db.backend());
        assert!(first.terminate().success());
        assert!(second.terminate().success());
    }
}
