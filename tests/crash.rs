//! Crash safety: SIGKILL the server while clients submit commands, restart it, and check that every acknowledged
//! command is in the log and that the projections equal a fresh replay of the log.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{gatehouse, issue_token, Api, Server};
use domain::roster::{Roster, ROSTER_ID};
use domain::Email;
use store::AggregateRepository;
use testkit::TestDb;

type Row = (String, String, String, Option<String>, String, String, i64);

async fn members_table(db: &TestDb) -> Vec<Row> {
    let store = db.store().await;
    let rows = sqlx::query_as::<_, Row>(
        "SELECT email, role, status, invited_by, invited_at, updated_at, version FROM members ORDER BY email",
    )
    .fetch_all(store.read_models())
    .await
    .unwrap();
    store.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_commands_survive_sigkill_and_projections_equal_a_replay() {
    for db in TestDb::all("crash safety").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        let server = Server::start(&db, &[]);
        let api = Api::new(&server);
        let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
        let server_gone = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..8)
            .map(|client| {
                let api = api.clone();
                let admin = admin.clone();
                let acknowledged = acknowledged.clone();
                let server_gone = server_gone.clone();
                tokio::spawn(async move {
                    for n in 0.. {
                        let email = format!("user-{client}-{n}@example.com");
                        let body = serde_json::json!({ "email": email, "role": "member" });
                        let sent = api
                            .http
                            .post(format!("{}/api/v1/members", api.base))
                            .bearer_auth(&admin)
                            .json(&body)
                            .send()
                            .await;
                        match sent {
                            Ok(response) if response.status() == 201 => acknowledged.lock().unwrap().push(email),
                            Ok(_) => {}
                            Err(_) if server_gone.load(Ordering::Relaxed) => return,
                            Err(error) => panic!("request failed while the server was up: {error}"),
                        }
                    }
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acknowledged.lock().unwrap().len() < 60 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server_gone.store(true, Ordering::Relaxed);
        server.kill();
        for client in clients {
            client.await.unwrap();
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        assert!(acknowledged.len() >= 60, "{}: only {} commands acknowledged", db.backend(), acknowledged.len());

        // Every acknowledged command is in the log.
        let store = db.store().await;
        let (roster, _) = AggregateRepository::<Roster>::new(store.clone(), ()).load(ROSTER_ID).await.unwrap();
        for email in &acknowledged {
            assert!(roster.member(&Email::parse(email).unwrap()).is_some(), "{}: lost {email}", db.backend());
        }
        store.close().await;

        // After a restart the projection catches up (the server is ready only then) and agrees with the log.
        let server = Server::start(&db, &[]);
        let listed = Api::new(&server).member_emails(&admin).await;
        for email in &acknowledged {
            assert!(
                listed.iter().any(|(listed, _, _)| listed == email),
                "{}: {email} missing from the read model",
                db.backend()
            );
        }
        assert!(server.terminate().success());
        let projected = members_table(&db).await;

        // A fresh replay of the whole log produces exactly the same read model.
        let output = gatehouse()
            .args(["projections", "rebuild", "members"])
            .env("GATEHOUSE_DATABASE_URL", &db.url)
            .env("GATEHOUSE_DATA_DIR", &db.data_dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("rebuilt members"));
        assert_eq!(members_table(&db).await, projected, "{}: projection differs from a replay", db.backend());
    }
}

/// The (key, key) of every `BlueprintRegistered` event in the log: what each keyed registration committed.
async fn submitted(db: &TestDb) -> Vec<(String, String)> {
    let store = db.store().await;
    let ids: Vec<(String,)> =
        sqlx::query_as("SELECT aggregate_id FROM events WHERE event_type = 'BlueprintRegistered'")
            .fetch_all(store.read_models())
            .await
            .unwrap();
    store.close().await;
    ids.into_iter().map(|(key,)| (key.clone(), key)).collect()
}

/// Issue #17: keyed creations under load, SIGKILL, restart, retry every one of them. A creation whose command
/// committed but whose answer never left the process gets that first answer on retry, never a second execution; one
/// that never committed runs on retry; every key ends with exactly one resource. (Blueprint registrations: the same
/// `Idempotency-Key` machinery as publish submissions, without a running workspace per key.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_submissions_retried_after_sigkill_get_their_first_answer_and_never_run_twice() {
    for db in TestDb::all("idempotency crash").await {
        let admin = issue_token(&db, "root@example.com", "admin", "1h");
        // Claims are taken over after 3 s (above the 2 s store deadline) instead of a minute.
        let env = [("GATEHOUSE_DATABASE_ACQUIRE_TIMEOUT_SECS", "2"), ("GATEHOUSE_IDEMPOTENCY_TAKEOVER_SECS", "3")];
        let server = Server::start(&db, &env);
        let api = Api::new(&server);
        let body = |key: &str| {
            serde_json::json!({
                "key": key, "display_name": "Crash test",
                "source": {"kind": "local", "repository": "https://git.example.com/web.git", "branch": "main"},
            })
        };
        // key → the id of the first answer, when one arrived.
        let sent = Arc::new(Mutex::new(Vec::<(String, Option<String>)>::new()));
        let server_gone = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..16)
            .map(|client| {
                let (api, admin, sent, server_gone) = (api.clone(), admin.clone(), sent.clone(), server_gone.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        let key = format!("k{client}-{n}");
                        sent.lock().unwrap().push((key.clone(), None));
                        let response = api
                            .http
                            .post(format!("{}/api/v1/blueprints", api.base))
                            .bearer_auth(&admin)
                            .header("Idempotency-Key", &key)
                            .json(&body(&key))
                            .send()
                            .await;
                        match response {
                            Ok(response) if response.status() == 201 => {
                                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                                let id = answer["key"].as_str().map(str::to_string);
                                let mut sent = sent.lock().unwrap();
                                if let Some(entry) = sent.iter_mut().find(|(sent_key, _)| *sent_key == key) {
                                    entry.1 = id;
                                }
                            }
                            Ok(response) if !server_gone.load(Ordering::Relaxed) => {
                                panic!("{key}: {} {}", response.status(), response.text().await.unwrap_or_default())
                            }
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while sent.lock().unwrap().iter().filter(|(_, id)| id.is_some()).count() < 40
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server_gone.store(true, Ordering::Relaxed);
        server.kill();
        let killed = tokio::time::Instant::now();
        for client in clients {
            client.await.unwrap();
        }
        let sent = sent.lock().unwrap().clone();
        let committed = submitted(&db).await;
        let unanswered_but_committed: Vec<&String> = sent
            .iter()
            .filter(|(key, id)| id.is_none() && committed.iter().any(|(ws, _)| ws == key))
            .map(|(key, _)| key)
            .collect();

        let server = Server::start(&db, &env);
        let api = Api::new(&server);
        tokio::time::sleep_until(killed + Duration::from_millis(3500)).await;
        let mut replayed = 0;
        for (key, first) in &sent {
            let workspace = key.clone();
            let before = committed.iter().find(|(ws, _)| *ws == workspace).map(|(_, id)| id.clone());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let (status, headers, answer) = loop {
                let response = api
                    .http
                    .post(format!("{}/api/v1/blueprints", api.base))
                    .bearer_auth(&admin)
                    .header("Idempotency-Key", key)
                    .json(&body(key))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let answer: serde_json::Value = response.json().await.unwrap_or_default();
                if status == 409 && answer["code"] == "request_in_progress" && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                break (status, headers, answer);
            };
            assert_eq!(status, 201, "{}: retry of {key}: {answer}", db.backend());
            let id = answer["key"].as_str().unwrap().to_string();
            if let Some(first) = first {
                assert_eq!(&id, first, "{}: {key} answered with another id on retry", db.backend());
            }
            match before {
                Some(committed_id) => {
                    assert_eq!(id, committed_id, "{}: {key} committed as {committed_id}", db.backend());
                    assert_eq!(headers["idempotent-replayed"], "true", "{}: {key}", db.backend());
                    replayed += 1;
                }
                None => assert!(headers.get("idempotent-replayed").is_none(), "{}: {key} never ran", db.backend()),
            }
        }
        assert!(server.terminate().success());
        // Exactly one request per key, whatever happened to its first attempt.
        let after = submitted(&db).await;
        for (key, _) in &sent {
            let workspace = key.clone();
            let count = after.iter().filter(|(ws, _)| *ws == workspace).count();
            assert_eq!(count, 1, "{}: {key} has {count} requests", db.backend());
        }
        eprintln!(
            "{}: {} keyed registrations, {} answered before the kill, {} committed but unanswered, {replayed} replayed",
            db.backend(),
            sent.len(),
            sent.iter().filter(|(_, id)| id.is_some()).count(),
            unanswered_but_committed.len()
        );
    }
}
