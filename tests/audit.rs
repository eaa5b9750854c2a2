//! The auditors' API through a real `gatehouse serve`: history, the global feed, state as of a point, export and
//! verification, on both backends.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, issue_token, Api, Server, Workspaces};
use cqrs_es::Aggregate;
use domain::publishing::{Publishing, PublishingEvent};
use reqwest::Method;
use serde_json::{json, Value};
use store::AggregateRepository;
use testkit::TestDb;

/// Changes a file in `token`'s running workspace `name` (launched on first use) and submits it.
async fn submit(api: &Api, fx: &Workspaces, token: &str, name: &str, subdomain: &str) -> String {
    let workspace = fx.running(token, name, "web").await;
    api.edit(&workspace);
    let body = json!({"workspace_id": workspace, "subdomain": subdomain, "message": "ship it"});
    let (status, _, created) = api.call(Method::POST, "/api/v1/publish-requests", Some(token), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_string()
}

/// Some history: requests submitted, approved, rejected, a trust rule granted. `tag` keeps workspaces and
/// subdomains of several calls apart. The approved request's delivery (a push, a moment after the approval) is
/// waited for, so that the history is complete when this returns.
async fn make_history(api: &Api, fx: &Workspaces, admin: &str, builder: &str, tag: &str) {
    let first = submit(api, fx, builder, &format!("ws-1-{tag}"), &format!("one-{tag}")).await;
    let second = submit(api, fx, builder, &format!("ws-2-{tag}"), &format!("two-{tag}")).await;
    let path = |id: &str, verb: &str| format!("/api/v1/publish-requests/{id}/{verb}");
    assert_eq!(api.call(Method::POST, &path(&first, "approve"), Some(admin), None).await.0, 200);
    let feedback = Some(json!({"reason": "not yet"}));
    assert_eq!(api.call(Method::POST, &path(&second, "reject"), Some(admin), feedback).await.0, 200);
    let rule = Some(json!({"email": format!("trusted-{tag}@example.com")}));
    assert_eq!(api.call(Method::POST, "/api/v1/trust-rules", Some(admin), rule).await.0, 201);
    submit(api, fx, builder, &format!("ws-3-{tag}"), &format!("three-{tag}")).await;
    let request = format!("/api/v1/publish-requests/{first}");
    let delivered = eventually(Duration::from_secs(30), || async {
        api.get(&request, Some(admin)).await.1["delivery"]["status"] == "pushed"
    })
    .await;
    assert!(delivered, "the approved request was not pushed: {}", api.get(&request, Some(admin)).await.1);
}

/// Every item of the feed from the start with `query`, following `next` with pages of `limit`.
async fn whole_feed(api: &Api, token: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = api.get(&format!("/api/v1/events?limit={limit}&after={after}{query}"), Some(token)).await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        if page["at_end"] == true {
            return items;
        }
        after = page["next"].as_str().unwrap().to_string();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_feed_and_state_as_of_agree_with_the_aggregates_own_replay() {
    for db in TestDb::all("audit reads").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &admin).await;
        let backend = db.backend();
        make_history(&api, &fx, &admin, &ada, "a").await;

        // One aggregate's history: consecutive sequences, paged.
        let mut history = Vec::new();
        let mut after = 0;
        loop {
            let path = format!("/api/v1/aggregates/publishing/org/events?limit=3&after={after}");
            let (status, page) = api.get(&path, Some(&auditor)).await;
            assert_eq!(status, 200, "{backend}: {page}");
            history.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next"].as_u64() {
                Some(next) => after = next,
                None => break,
            }
        }
        let sequences: Vec<u64> = history.iter().map(|event| event["sequence"].as_u64().unwrap()).collect();
        assert_eq!(sequences, (1..=history.len() as u64).collect::<Vec<_>>(), "{backend}");

        // The state as of each event equals replaying that prefix with the domain's own types, and the latest
        // equals what the aggregate repository loads from the store.
        let mut replayed = Publishing::default();
        for (n, event) in history.iter().enumerate() {
            replayed.apply(serde_json::from_value::<PublishingEvent>(event["payload"].clone()).unwrap());
            let cursor = event["cursor"].as_str().unwrap();
            let (status, state) =
                api.get(&format!("/api/v1/aggregates/publishing/org/state?at={cursor}"), Some(&auditor)).await;
            assert_eq!(status, 200, "{state}");
            assert_eq!(state["version"], n as u64 + 1);
            assert_eq!(state["state"], serde_json::to_value(&replayed).unwrap(), "{backend}: as of event {}", n + 1);
        }
        let store = db.store().await;
        let (loaded, version) = AggregateRepository::<Publishing>::new(store.clone(), ()).load("org").await.unwrap();
        let (_, latest) = api.get("/api/v1/aggregates/publishing/org/state", Some(&auditor)).await;
        assert_eq!(latest["version"], version);
        assert_eq!(latest["state"], serde_json::to_value(&loaded).unwrap());
        // As of a time: everything recorded up to the third event's time.
        let third = history[2]["recorded_at"].as_str().unwrap();
        let (_, by_time) = api
            .get(
                &format!("/api/v1/aggregates/publishing/org/state?at_time={}", third.replace('+', "%2B")),
                Some(&admin),
            )
            .await;
        assert!(by_time["version"].as_u64().unwrap() >= 3, "{by_time}");
        // Before the first event there is no state to speak of.
        let (_, empty) = api.get("/api/v1/aggregates/publishing/org/state?at=g1.0.0", Some(&auditor)).await;
        assert_eq!(empty["version"], 0);

        // The global feed: everything in order, each event once, whatever the page size; filters narrow it.
        let all = whole_feed(&api, &auditor, "", 1000).await;
        let paged = whole_feed(&api, &auditor, "", 2).await;
        let cursors = |items: &[Value]| items.iter().map(|item| item["cursor"].clone()).collect::<Vec<_>>();
        let all_cursors = cursors(&all);
        assert!(all_cursors.len() >= history.len());
        assert_eq!(cursors(&paged)[..all_cursors.len()], all_cursors[..], "{backend}");
        let publishing = whole_feed(&api, &auditor, "&aggregate_type=publishing", 1000).await;
        assert_eq!(cursors(&publishing), cursors(&history), "{backend}");
        let approvals = whole_feed(&api, &auditor, "&event_type=PublishApproved", 1000).await;
        assert_eq!(approvals.len(), 1);
        let by_ada = whole_feed(&api, &auditor, "&actor=ada@example.com&aggregate_type=publishing", 1000).await;
        assert!(by_ada.iter().all(|event| event["metadata"]["actor"] == "ada@example.com"));
        assert!(by_ada.iter().any(|event| event["event_type"] == "PublishRequested"));
        let future = whole_feed(&api, &auditor, "&from=2999-01-01T00:00:00Z", 1000).await;
        assert!(future.is_empty());
        let past = whole_feed(&api, &auditor, "&to=2000-01-01T00:00:00Z", 1000).await;
        assert!(past.is_empty());

        // Every read above was recorded, with its target.
        let recorded = eventually(Duration::from_secs(5), || async {
            let (_, page) =
                api.get("/api/v1/aggregates/audit_access/audit@example.com/events?limit=1000", Some(&admin)).await;
            page["items"].as_array().is_some_and(|items| {
                items.iter().any(|item| {
                    item["payload"]["AuditLogRead"]["target"]
                        .as_str()
                        .is_some_and(|t| t.contains("event_type=PublishApproved"))
                }) && items.iter().all(|item| item["payload"]["AuditLogRead"]["reader"] == "audit@example.com")
            })
        })
        .await;
        assert!(recorded, "{backend}");
        store.close().await;
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_audit_queries_get_problems() {
    let db = TestDb::sqlite();
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    for (path, status, field) in [
        ("/api/v1/events?after=nonsense", 422, Some("after")),
        ("/api/v1/events?limit=0", 422, Some("limit")),
        ("/api/v1/events?limit=1001", 422, Some("limit")),
        ("/api/v1/events?limit=lots", 422, Some("limit")),
        ("/api/v1/events?from=yesterday", 422, Some("from")),
        ("/api/v1/events?colour=red", 400, None),
        ("/api/v1/aggregates/roster/org/events?limit=0", 422, Some("limit")),
        ("/api/v1/aggregates/roster/org/events?after=first", 422, Some("after")),
        ("/api/v1/audit/checkpoints?limit=1001", 422, Some("limit")),
        ("/api/v1/audit/checkpoints?after=x", 422, Some("after")),
        ("/api/v1/audit/export?since=g1.x", 422, Some("since")),
        ("/api/v1/aggregates/roster/nobody/events", 404, None),
        ("/api/v1/aggregates/Bad-Type/org/events", 404, None),
        ("/api/v1/aggregates/roster/org/state?at=g1.x", 422, Some("at")),
        ("/api/v1/aggregates/nothing/org/state", 404, None),
    ] {
        let (got, problem) = api.get(path, Some(&auditor)).await;
        assert_eq!((got, problem["field"].as_str()), (status, field), "{path}: {problem}");
        assert!(problem["code"].is_string(), "{path}: {problem}");
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
    let callers: [(&str, Option<&str>); 5] = [
        ("anonymous", None),
        ("member", Some(&member)),
        ("another member", Some(&other)),
        ("admin", Some(&admin)),
        ("auditor", Some(&auditor)),
    ];
    for path in [
        "/api/v1/events",
        "/api/v1/aggregates/roster/org/events",
        "/api/v1/aggregates/roster/org/state",
        "/api/v1/audit/export",
        "/api/v1/audit/public-key",
        "/api/v1/audit/checkpoints/latest",
        "/api/v1/audit/checkpoints",
    ] {
        for ((name, token), expected) in callers.iter().zip([401, 403, 403, 200, 200]) {
            let (status, _, body) = api.call(Method::GET, path, *token, None).await;
            assert_eq!(status, expected, "GET {path} as {name}: {body}");
        }
    }
}

/// Runs `gatehouse audit …` against `db`, returning (success, stdout, stderr).
fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let output = common::gatehouse()
        .arg("audit")
        .args(args)
        .env("GATEHOUSE_DATABASE_URL", &db.url)
        .env("GATEHOUSE_DATA_DIR", &db.data_dir)
        .env("GATEHOUSE_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn http_export(api: &Api, token: &str, since: &str) -> String {
    let response = api
        .http
        .get(format!("{}/api/v1/audit/export?since={since}", api.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response.text().await.unwrap()
}

fn event_lines(export: &str) -> Vec<Value> {
    export
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["kind"] == "event")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_verify_offline_resume_from_a_cursor_and_reveal_tampering_in_the_database() {
    for db in TestDb::all("audit export").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let ada = issue_token(&db, "ada@example.com", "member", "1h");
        let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
        let server = Server::start(&db, &[("GATEHOUSE_AUDIT_CHECKPOINT_SECS", "1")]);
        let api = Api::new(&server);
        let fx = Workspaces::new(&api, &admin).await;
        let backend = db.backend();
        make_history(&api, &fx, &admin, &ada, "a").await;
        let dir = tempfile::tempdir().unwrap();

        // The key the API publishes is the key the CLI prints.
        let (_, key) = api.get("/api/v1/audit/public-key", Some(&auditor)).await;
        let public_key = key["public_key"].as_str().unwrap().to_string();
        let (ok, printed, _) = cli(&db, &["public-key"]);
        assert!(ok);
        assert_eq!(printed.trim(), public_key);

        // An HTTP export holds every event of the log once chaining caught up, and verifies offline.
        let total = db.store().await.count_events().await.unwrap();
        let complete = eventually(Duration::from_secs(10), || async {
            event_lines(&http_export(&api, &auditor, "").await).len() as u64 >= total
        })
        .await;
        assert!(complete, "{backend}");
        let first = http_export(&api, &auditor, "").await;
        let first_path = dir.path().join("first.ndjson");
        std::fs::write(&first_path, &first).unwrap();
        let (ok, out, err) = cli(&db, &["verify", "--file", first_path.to_str().unwrap(), "--public-key", &public_key]);
        assert!(ok, "{backend}: {out}{err}");
        assert!(out.starts_with("ok: "), "{out}");

        // More history, then an export that resumes after the last event of the first one, verified against the
        // first export's final checkpoint.
        submit(&api, &fx, &ada, "ws-4-a", "four-a").await;
        let last_cursor = event_lines(&first).last().unwrap()["cursor"].as_str().unwrap().to_string();
        let held = first.lines().last().unwrap().to_string();
        let held_path = dir.path().join("held.json");
        std::fs::write(&held_path, &held).unwrap();
        let resumed = eventually(Duration::from_secs(10), || async {
            event_lines(&http_export(&api, &auditor, &last_cursor).await)
                .iter()
                .any(|e| e["event_type"] == "PublishRequested")
        })
        .await;
        assert!(resumed, "{backend}");
        let second_path = dir.path().join("second.ndjson");
        let (ok, _, err) = cli(&db, &["export", "--since", &last_cursor, "--to", second_path.to_str().unwrap()]);
        assert!(ok, "{err}");
        let (ok, out, err) = cli(
            &db,
            &[
                "verify",
                "--file",
                second_path.to_str().unwrap(),
                "--public-key",
                &public_key,
                "--checkpoint",
                held_path.to_str().unwrap(),
            ],
        );
        assert!(ok, "{backend}: {out}{err}");

        // The periodic checkpoints verify too, also when nothing happens.
        let (status, latest) = api.get("/api/v1/audit/checkpoints/latest", Some(&auditor)).await;
        assert_eq!(status, 200, "{latest}");
        let latest = audit::Checkpoint::from_line(&latest.to_string()).unwrap();
        audit::PublicKey::from_hex(&public_key).unwrap().verify_checkpoint(&latest).unwrap();
        let (_, page) = api.get("/api/v1/audit/checkpoints?limit=1000", Some(&auditor)).await;
        assert!(!page["items"].as_array().unwrap().is_empty());

        // A truncated export (the tail cut after an event) fails, naming the kind of break.
        let cut: String = first.lines().take(first.lines().count() - 3).map(|line| format!("{line}\n")).collect();
        let cut_path = dir.path().join("cut.ndjson");
        std::fs::write(&cut_path, cut).unwrap();
        let (ok, _, err) = cli(&db, &["verify", "--file", cut_path.to_str().unwrap(), "--public-key", &public_key]);
        assert!(!ok);
        assert!(err.contains("truncated"), "{err}");

        // Someone with write access to the database edits a stored event, getting past the append-only trigger.
        // The chain was computed from the original, so the next export no longer verifies, and says where.
        let store = db.store().await;
        let target = event_lines(&first).iter().find(|e| e["event_type"] == "PublishRejected").unwrap()["position"]
            .as_i64()
            .unwrap();
        match store.backend() {
            store::Backend::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("ALTER TABLE events DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
                sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{PublishRejected,feedback}', '\"fine\"') WHERE position = $1")
                    .bind(target)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("ALTER TABLE events ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            store::Backend::Sqlite(pool) => {
                // One immediate transaction: SQLite's DDL is transactional, and taking the write lock up front
                // avoids a busy upgrade while the server writes.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
                let triggers: Vec<(String, String)> = sqlx::query_as(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'",
                )
                .fetch_all(&mut *tx)
                .await
                .unwrap();
                for (name, _) in &triggers {
                    sqlx::query(&format!("DROP TRIGGER {name}")).execute(&mut *tx).await.unwrap();
                }
                sqlx::query("UPDATE events SET payload = replace(payload, 'not yet', 'fine') WHERE position = ?")
                    .bind(target)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                for (_, sql) in &triggers {
                    sqlx::query(sql).execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        }
        store.close().await;
        let tampered_path = dir.path().join("tampered.ndjson");
        std::fs::write(&tampered_path, http_export(&api, &auditor, "").await).unwrap();
        let (ok, _, err) =
            cli(&db, &["verify", "--file", tampered_path.to_str().unwrap(), "--public-key", &public_key]);
        assert!(!ok, "{backend}: a tampered log verified");
        assert!(err.contains("line ") && (err.contains("edited") || err.contains("link")), "{backend}: {err}");
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_random_tamperings_of_a_real_export_are_all_detected() {
    let db = TestDb::sqlite();
    let admin = issue_token(&db, "root@example.com", "admin", "1h");
    let ada = issue_token(&db, "ada@example.com", "member", "1h");
    let auditor = issue_token(&db, "audit@example.com", "auditor", "1h");
    let server = Server::start(&db, &[]);
    let api = Api::new(&server);
    let fx = Workspaces::new(&api, &admin).await;
    for n in 0..5 {
        make_history(&api, &fx, &admin, &ada, &format!("r{n}")).await;
    }
    let total = db.store().await.count_events().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            event_lines(&http_export(&api, &auditor, "").await).len() as u64 >= total
        })
        .await
    );
    let export = http_export(&api, &auditor, "").await;
    let (_, key) = api.get("/api/v1/audit/public-key", Some(&auditor)).await;
    let key = audit::PublicKey::from_hex(key["public_key"].as_str().unwrap()).unwrap();
    let held = audit::Checkpoint::from_line(export.lines().last().unwrap()).unwrap();
    assert!(audit::verify(export.as_bytes(), &key, Some(&held), |_| {}).is_ok());

    let lines: Vec<&str> = export.lines().collect();
    let events: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains("\"kind\":\"event\"")).collect();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |bound: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as usize
    };
    for round in 0..1_000 {
        let mut tampered: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
        let what = round % 5;
        match what {
            0 => {
                // Edit one byte of a payload: a letter inside it becomes another letter.
                let line = events[next(events.len())];
                let start = tampered[line].find("\"payload\":").unwrap() + 10;
                let end = tampered[line].find(",\"metadata\"").unwrap();
                let letters: Vec<usize> =
                    (start..end).filter(|&i| tampered[line].as_bytes()[i].is_ascii_lowercase()).collect();
                let at = letters[next(letters.len())];
                let mut bytes = tampered[line].clone().into_bytes();
                bytes[at] = if bytes[at] == b'z' { b'a' } else { bytes[at] + 1 };
                tampered[line] = String::from_utf8(bytes).unwrap();
            }
            1 => {
                tampered.remove(events[next(events.len())]);
            }
            2 => {
                let copy = tampered[events[next(events.len())]].clone();
                tampered.insert(events[next(events.len())], copy);
            }
            3 => {
                let a = next(events.len());
                let b = (a + 1 + next(events.len() - 1)) % events.len();
                tampered.swap(events[a], events[b]);
            }
            _ => {
                // Drop the tail: everything after some event, the final checkpoint with it.
                tampered.truncate(events[next(events.len())] + 1);
            }
        }
        let text: String = tampered.iter().map(|line| format!("{line}\n")).collect();
        let outcome = audit::verify(text.as_bytes(), &key, Some(&held), |_| {});
        assert!(outcome.is_err(), "round {round} (mutation {what}) was not detected");
    }
    assert!(server.terminate().success());
}
