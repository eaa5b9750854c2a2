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
