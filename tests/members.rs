//! `/api/v1/members` and authentication, through a real `gatehouse serve` process.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, issue_token, Api, Server};
use reqwest::Method;
use serde_json::json;
use testkit::TestDb;

#[tokio::test(flavor = "multi_thread")]
async fn the_roster_lifecycle_over_http() {
    for db in TestDb::all("members lifecycle").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);

        let (status, me) = api.get("/api/v1/me", Some(&admin)).await;
        assert_eq!((status, me["role"].as_str()), (200, Some("admin")), "{}", db.backend());

        let (status, created) = api.invite(&admin, "Ada@Example.com", "member").await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["email"], "ada@example.com");
        assert_eq!(created["status"], "pending");
        assert_eq!(api.invite(&admin, "ada@example.com", "auditor").await.0, 409);

        // Ada's first authenticated request activates her.
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        // Roles come from the members read model, which follows the log within milliseconds.
        let signed_in = eventually(Duration::from_secs(5), || async {
            let (status, me) = api.get("/api/v1/me", Some(&ada)).await;
            (status, me["role"].as_str()) == (200, Some("member"))
        })
        .await;
        assert!(signed_in, "{}", db.backend());
        let activated = eventually(Duration::from_secs(5), || async {
            api.get("/api/v1/members/ada@example.com", Some(&admin)).await.1["status"] == "active"
        })
        .await;
        assert!(activated, "{}", db.backend());

        // Role changes take effect on the next request.
        let (status, _, _) = api
            .call(Method::PATCH, "/api/v1/members/ada@example.com", Some(&admin), Some(json!({"role": "auditor"})))
            .await;
        assert_eq!(status, 204);
        let promoted = eventually(Duration::from_secs(5), || async {
            api.get("/api/v1/me", Some(&ada)).await.1["role"] == "auditor"
        })
        .await;
        assert!(promoted);

        // The last admin is protected; others can go.
        let (status, _, problem) =
            api.call(Method::DELETE, "/api/v1/members/root@example.com", Some(&admin), None).await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("last_admin")));
        let (status, _, problem) = api
            .call(Method::PATCH, "/api/v1/members/root@example.com", Some(&admin), Some(json!({"role": "member"})))
            .await;
        assert_eq!((status, problem["code"].as_str()), (409, Some("last_admin")));
        let (status, _, _) = api.call(Method::DELETE, "/api/v1/members/ada@example.com", Some(&admin), None).await;
        assert_eq!(status, 204);
        let removed =
            eventually(Duration::from_secs(5), || async { api.get("/api/v1/me", Some(&ada)).await.0 == 403 }).await;
        assert!(removed, "a removed member keeps access");

        let (status, _, problem) =
            api.call(Method::DELETE, "/api/v1/members/ghost@example.com", Some(&admin), None).await;
        assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_problem_naming_the_field_and_stores_nothing() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    // The admin's first request activates them; let that settle before taking the snapshot.
    let settled = eventually(Duration::from_secs(5), || async {
        api.member_emails(&admin).await.iter().all(|(_, _, status)| status == "active")
    })
    .await;
    assert!(settled);
    let before = api.member_emails(&admin).await;
    let cases = [
        (json!({"email": "not-an-email", "role": "member"}), 422, Some("email")),
        (json!({"email": "a@example.com", "role": "boss"}), 422, Some("role")),
        (json!({"email": "a@example.com"}), 400, None),
        (json!({"email": "a@example.com", "role": "member", "extra": 1}), 400, None),
        (json!(["not", "an", "object"]), 400, None),
    ];
    for (body, expected, field) in cases {
        let (status, headers, problem) =
            api.call(Method::POST, "/api/v1/members", Some(&admin), Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {problem}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["status"], expected);
        assert_eq!(problem["field"].as_str(), field, "{body}");
    }
    for query in ["limit=0", "limit=501", "limit=abc", "limit=-1"] {
        let (status, _, problem) = api.call(Method::GET, &format!("/api/v1/members?{query}"), Some(&admin), None).await;
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some("invalid_field"), Some("limit")),
            "{query}: {problem}"
        );
    }
    let response = api
        .http
        .post(format!("{}/api/v1/members", api.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"email\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.member_emails(&admin).await, before, "an invalid request changed the roster");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_are_missing_malformed_forged_expired_or_unsigned_get_401_with_a_challenge() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let short = issue_token(&db, "root@example.com", "admin", "1s");
    let server = Server::start(&db, &[("GATEHOUSE_AUTH_LEEWAY_SECS", "0")]);
    let api = Api::new(&server);
    assert_eq!(api.get("/api/v1/me", Some(&admin)).await.0, 200);

    let mut forged = admin.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let parts: Vec<&str> = admin.split('.').collect();
    let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let hs256 = format!("{}.{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), parts[1], parts[2]);
    let unknown_kid = format!("{}.{}.{}", b64(r#"{"alg":"ES256","typ":"JWT","kid":"other"}"#), parts[1], parts[2]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, token) in [
        ("missing", None),
        ("malformed", Some("not-a-jwt")),
        ("forged signature", Some(forged.as_str())),
        ("alg none", Some(unsigned.as_str())),
        ("HS256 confusion", Some(hs256.as_str())),
        ("unknown kid", Some(unknown_kid.as_str())),
        ("expired", Some(short.as_str())),
    ] {
        let (status, headers, problem) = api.call(Method::GET, "/api/v1/me", token, None).await;
        assert_eq!(status, 401, "{name}");
        assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"), "{name}");
        assert_eq!(problem["code"], "unauthenticated", "{name}");
    }
    // A valid token of someone who is not a member: authenticated, but 403.
    let stranger = issue_token(&db, "stranger@example.com", "member", "1h");
    let (status, _, _) = api.call(Method::DELETE, "/api/v1/members/stranger@example.com", Some(&admin), None).await;
    assert_eq!(status, 204);
    let gone =
        eventually(Duration::from_secs(5), || async { api.get("/api/v1/me", Some(&stranger)).await.0 == 403 }).await;
    assert!(gone);
}

fn b64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Every endpoint × every kind of caller.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let member = issue_token(&db, "ada@example.com", "member", "1h");
    let other = issue_token(&db, "bob@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let callers: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("member", Some(&member)),
        ("another member", Some(&other)),
        ("admin", Some(&admin)),
        ("auditor", Some(&auditor)),
    ];
    // (method, path, body, expected status for anonymous, member, another member, admin, auditor)
    let matrix: Vec<(Method, &str, Option<serde_json::Value>, [u16; 5])> = vec![
        (Method::GET, "/api/v1/me", None, [401, 200, 200, 200, 200]),
        (Method::GET, "/api/v1/members", None, [401, 403, 403, 200, 200]),
        (Method::GET, "/api/v1/members/ada@example.com", None, [401, 200, 403, 200, 200]),
        (
            Method::POST,
            "/api/v1/members",
            Some(json!({"email": "new@example.com", "role": "member"})),
            [401, 403, 403, 201, 403],
        ),
        (Method::PATCH, "/api/v1/members/bob@example.com", Some(json!({"role": "auditor"})), [401, 403, 403, 204, 403]),
        (Method::DELETE, "/api/v1/members/new@example.com", None, [401, 403, 403, 204, 403]),
        (Method::GET, "/healthz", None, [200, 200, 200, 200, 200]),
        (Method::GET, "/api/v1/openapi.json", None, [200, 200, 200, 200, 200]),
    ];
    for (method, path, body, expected) in matrix {
        for ((name, token), expected) in callers.iter().zip(expected) {
            let (status, _, response) = api.call(method.clone(), path, *token, body.clone()).await;
            assert_eq!(status, expected, "{method} {path} as {name}: {response}");
        }
    }
}

/// `token issue` runs in another process; the server must recognise the new member on their very first request,
/// before its projector has noticed the other process's commit.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_added_by_another_process_is_recognised_on_the_first_request() {
    for db in TestDb::all("first request").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[("GATEHOUSE_PROJECTOR_POLL_INTERVAL_MS", "60000")]);
        let api = Api::new(&server);
        assert_eq!(api.get("/api/v1/me", Some(&admin)).await.0, 200);
        let newcomer = issue_token(&db, "new@example.com", "auditor", "1h");
        let (status, me) = api.get("/api/v1/me", Some(&newcomer)).await;
        assert_eq!((status, me["role"].as_str()), (200, Some("auditor")), "{}: {me}", db.backend());
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn if_match_with_a_stale_etag_gets_412_and_changes_nothing() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    assert_eq!(api.invite(&admin, "ada@example.com", "member").await.0, 201);
    let etag = |headers: &reqwest::header::HeaderMap| headers["etag"].to_str().unwrap().to_string();
    let mut tries = 0;
    let first = loop {
        tries += 1;
        assert!(tries < 500, "the invitation never reached the read model");
        let (status, headers, _) = api.call(Method::GET, "/api/v1/members/ada@example.com", Some(&admin), None).await;
        if status == 200 {
            break etag(&headers);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Someone else changes Ada; the ETag the first admin holds is now stale.
    let change = |role: &'static str, tag: Option<String>| {
        let api = api.clone();
        let admin = admin.clone();
        async move {
            let mut request = api
                .http
                .patch(format!("{}/api/v1/members/ada@example.com", api.base))
                .bearer_auth(&admin)
                .json(&json!({ "role": role }));
            if let Some(tag) = tag {
                request = request.header("If-Match", tag);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    assert_eq!(change("auditor", None).await.0, 204);
    let (status, problem) = change("admin", Some(first.clone())).await;
    assert_eq!((status, problem["code"].as_str()), (412, Some("stale_version")));
    let (status, problem) = change("admin", Some("not-an-etag".into())).await;
    assert_eq!((status, problem["field"].as_str()), (422, Some("If-Match")));

    // With the current ETag the change goes through.
    let mut tries = 0;
    let current = loop {
        tries += 1;
        assert!(tries < 500, "the role change never reached the read model");
        let (_, headers, member) = api.call(Method::GET, "/api/v1/members/ada@example.com", Some(&admin), None).await;
        if member["role"] == "auditor" {
            break etag(&headers);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(current, first);
    assert_eq!(change("admin", Some(current)).await.0, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_invitation_with_an_idempotency_key_is_answered_not_executed_again() {
    for db in TestDb::all("idempotency").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let post = |key: &'static str, email: &'static str| {
            let api = api.clone();
            let admin = admin.clone();
            async move {
                let response = api
                    .http
                    .post(format!("{}/api/v1/members", api.base))
                    .bearer_auth(&admin)
                    .header("Idempotency-Key", key)
                    .json(&json!({ "email": email, "role": "member" }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let replayed = response.headers().contains_key("idempotent-replayed");
                (status, replayed, response.json::<serde_json::Value>().await.unwrap())
            }
        };
        let roster_version = || async {
            let store = db.store().await;
            let version = store::AggregateRepository::<domain::roster::Roster>::new(store.clone(), ())
                .load(domain::roster::ROSTER_ID)
                .await
                .unwrap()
                .1;
            store.close().await;
            version
        };

        let (status, replayed, first) = post("k-1", "ada@example.com").await;
        assert_eq!((status, replayed), (201, false), "{}: {first}", db.backend());
        let before_retry = roster_version().await;
        let (status, replayed, again) = post("k-1", "ada@example.com").await;
        assert_eq!((status, replayed), (201, true), "{}", db.backend());
        assert_eq!(again, first, "the retry gets the first answer");
        assert_eq!(roster_version().await, before_retry, "{}: the retry appended events", db.backend());

        let (status, _, problem) = post("k-1", "someone-else@example.com").await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("idempotency_key_reused")));

        // A refusal is remembered too.
        let (status, replayed, _) = post("k-2", "ada@example.com").await;
        assert_eq!((status, replayed), (409, false));
        let (status, replayed, problem) = post("k-2", "ada@example.com").await;
        assert_eq!((status, replayed, problem["code"].as_str()), (409, true, Some("already_member")));

        // Ten concurrent attempts with one key: one invitation.
        let before = roster_version().await;
        let attempts: Vec<_> = (0..10).map(|_| tokio::spawn(post("k-3", "bob@example.com"))).collect();
        for attempt in attempts {
            let (status, _, body) = attempt.await.unwrap();
            assert!(status == 201 || (status == 409 && body["code"] == "request_in_progress"), "{status}: {body}");
        }
        assert_eq!(roster_version().await, before + 1, "{}: exactly one invitation", db.backend());

        let long = "x".repeat(256);
        let response = api
            .http
            .post(format!("{}/api/v1/members", api.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", long)
            .json(&json!({ "email": "carol@example.com", "role": "member" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422);
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["field"], "Idempotency-Key", "{problem}");
        assert!(server.terminate().success());
    }
}

/// Verified tokens are remembered (a signature check is the costliest part of a request), but never past `exp`.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_worked_stops_working_when_it_expires() {
    let db = TestDb::sqlite();
    let short = issue_token(&db, "root@example.com", "admin", "2s");
    let server = Server::start(&db, &[("GATEHOUSE_AUTH_LEEWAY_SECS", "0")]);
    let api = Api::new(&server);
    assert_eq!(api.get("/api/v1/me", Some(&short)).await.0, 200);
    assert_eq!(api.get("/api/v1/me", Some(&short)).await.0, 200, "the remembered verification");
    let expired =
        eventually(Duration::from_secs(6), || async { api.get("/api/v1/me", Some(&short)).await.0 == 401 }).await;
    assert!(expired, "an expired token kept working");
}

/// A pending member's first request records the sign-in inside the `Caller` extractor; when the request's body
/// fails to parse, actix-web drops that extractor mid-command. Such a command used to leave an SQLite connection in
/// the pool holding the write lock, and from then on every write answered 503 after the 10 s busy timeout
/// (docs/adr/0015; seen as a CI flake in tests/publishing.rs).
#[tokio::test(flavor = "multi_thread")]
async fn first_requests_refused_for_their_body_never_stall_later_writes() {
    for db in TestDb::all("refused first requests").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let newcomers: Vec<(String, String)> = (0..10)
            .map(|n| {
                let email = format!("new{n}@example.com");
                let token = issue_token(&db, &email, "member", "1h");
                (email, token)
            })
            .collect();
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        for (_, token) in &newcomers {
            let refused = api
                .http
                .post(format!("{}/api/v1/publish-requests", api.base))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 400, "{}", db.backend());
        }
        let (status, body) = api.invite(&admin, "later@example.com", "member").await;
        assert_eq!(status, 201, "{}: {body}", db.backend());
        // Every newcomer is recorded as signed in once they make a request that gets through.
        for (_, token) in &newcomers {
            assert_eq!(api.get("/api/v1/me", Some(token)).await.0, 200, "{}", db.backend());
        }
        let all_active = eventually(Duration::from_secs(10), || async {
            let members = api.member_emails(&admin).await;
            newcomers.iter().all(|(email, _)| members.iter().any(|(e, _, status)| e == email && status == "active"))
        })
        .await;
        assert!(all_active, "{}: {:?}", db.backend(), api.member_emails(&admin).await);
    }
}

/// The `Location` of a new member names it even when the address holds characters a URL gives meaning to (`?`,
/// `#`, `/`, `%`): found by schemathesis following the link to a `?` address and reaching another path.
#[tokio::test(flavor = "multi_thread")]
async fn the_location_of_a_member_is_percent_encoded_and_leads_to_it() {
    for db in TestDb::all("member location").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let response = api
            .http
            .post(format!("{}/api/v1/members", api.base))
            .bearer_auth(&admin)
            .json(&json!({ "email": "a?b#c/d%e@example.com", "role": "member" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{}", db.backend());
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert_eq!(location, "/api/v1/members/a%3Fb%23c%2Fd%25e@example.com", "{}", db.backend());
        let found = eventually(Duration::from_secs(5), || async {
            let (status, member) = api.get(&location, Some(&admin)).await;
            status == 200 && member["email"] == "a?b#c/d%e@example.com"
        })
        .await;
        assert!(found, "{}: {location} does not lead to the member", db.backend());
    }
}
